"""radiograph: volume / phantom -> raw counts, and its return-everything form."""

from __future__ import annotations

import math

import pytest
import torch

import tomoprior as tp
from tomoprior import physics as ph
from tomoprior.phantoms import Phantom, Sphere


@pytest.fixture
def phantom() -> Phantom:
    return Phantom([Sphere((0, 0, 0), 50.0, 0.02), Sphere((10, 5, -5), 8.0, 0.05, material="steel")],
                   name="two_spheres")


def test_noise_free_phantom_is_beer_lambert(small_geom, phantom):
    out = ph.radiograph(phantom, small_geom, ph.RadiographSettings(photons_per_pixel=800.0, noise=False),
                        return_all=True)
    p = phantom.line_integrals(small_geom)
    torch.testing.assert_close(out["line_integrals"], p)
    torch.testing.assert_close(out["raw"], 800.0 * torch.exp(-p))
    torch.testing.assert_close(out["flat"], torch.full_like(p, 800.0))
    assert out["heel"] is None and out["spectrum"] is None and out["path_lengths"] is None
    # flat-field + log transform gives back the line integrals in the noise-free limit
    torch.testing.assert_close(ph.log_transform(out["raw"], out["flat"]), p, rtol=1e-10, atol=1e-10)


def test_volume_input_uses_the_projector(small_geom, phantom):
    vol = phantom.rasterize(small_geom.grid, supersample=2, dtype=torch.float64)
    raw = ph.radiograph(vol, small_geom, ph.RadiographSettings(noise=False))
    torch.testing.assert_close(raw, 1000.0 * torch.exp(-tp.project(vol, small_geom)))
    ref = ph.radiograph(vol, small_geom, ph.RadiographSettings(noise=False), backend="reference")
    torch.testing.assert_close(ref, 1000.0 * torch.exp(-tp.project(vol, small_geom, backend="reference")))


def test_noise_is_poisson_and_seeded(small_geom, phantom):
    a = ph.radiograph(phantom, small_geom, ph.RadiographSettings(photons_per_pixel=1000.0), seed=7)
    b = ph.radiograph(phantom, small_geom, ph.RadiographSettings(photons_per_pixel=1000.0), seed=7)
    c = ph.radiograph(phantom, small_geom, ph.RadiographSettings(photons_per_pixel=1000.0), seed=8)
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)
    assert a.shape == (2, 48, 48) and bool((a == a.round()).all())
    expected = ph.radiograph(phantom, small_geom, ph.RadiographSettings(photons_per_pixel=1000.0, noise=False))
    z = (a - expected) / expected.sqrt()  # standardised residuals ~ N(0, 1)
    assert abs(float(z.mean())) < 0.1 and float(z.std()) == pytest.approx(1.0, abs=0.1)


def test_heel_focal_spot_and_detector_blur(small_geom, phantom):
    out = ph.radiograph(phantom, small_geom, ph.RadiographSettings(heel=True, kvp=80, noise=False), return_all=True)
    heel = ph.heel_effect(small_geom, 12.0, "+v", kvp=80)
    torch.testing.assert_close(out["heel"], heel)
    torch.testing.assert_close(out["flat"], 1000.0 * heel)
    torch.testing.assert_close(ph.log_transform(out["raw"], out["flat"]), out["line_integrals"], rtol=1e-9,
                               atol=1e-9)
    # a number is the anode angle; a tensor is used as given
    out16 = ph.radiograph(phantom, small_geom, ph.RadiographSettings(heel=16.0, noise=False), return_all=True)
    torch.testing.assert_close(out16["heel"], ph.heel_effect(small_geom, 16.0, kvp=70))
    custom = torch.full((2, 48, 48), 0.5, dtype=torch.float64)
    torch.testing.assert_close(ph.radiograph(phantom, small_geom, ph.RadiographSettings(heel=custom, noise=False)),
                               500.0 * torch.exp(-out["line_integrals"]))
    # blur keeps the total counts of a view whose border is flat
    sharp = ph.radiograph(phantom, small_geom, ph.RadiographSettings(noise=False))
    blurred = ph.radiograph(phantom, small_geom,
                            ph.RadiographSettings(noise=False, focal_spot_mm=20.0, detector_blur_px=1.0))
    torch.testing.assert_close(blurred.sum(dim=(1, 2)), sharp.sum(dim=(1, 2)), rtol=1e-9, atol=0)
    assert float((blurred - sharp).abs().max()) > 1.0


def test_polychromatic_material_dict(small_geom):
    grid = small_geom.grid
    tissue = Phantom([Sphere((0, 0, 0), 50.0, 1.0)])
    bone = Phantom([Sphere((0, 0, 0), 20.0, 1.0)])
    e = 60.0
    mono = ph.Spectrum.monoenergetic(e)
    out = ph.radiograph({"soft_tissue": tissue, "cortical_bone": bone}, small_geom,
                        ph.RadiographSettings(spectrum=mono, noise=False), return_all=True)
    p = (tissue.line_integrals(small_geom) * ph.linear_attenuation("soft_tissue", e)
         + bone.line_integrals(small_geom) * ph.linear_attenuation("cortical_bone", e))
    torch.testing.assert_close(out["line_integrals"], p, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(out["raw"], 1000.0 * torch.exp(-p), rtol=1e-9, atol=1e-9)
    assert set(out["path_lengths"]) == {"soft_tissue", "cortical_bone"}
    # volumes of fractions are projected; a real spectrum hardens: -log T / L falls with L
    vol = tissue.rasterize(grid, supersample=2, dtype=torch.float64)
    poly = ph.radiograph({"water": vol}, small_geom, ph.RadiographSettings(kvp=70, noise=False), return_all=True)
    L = poly["path_lengths"]["water"]
    inside = L > 20
    ratio = poly["line_integrals"][inside] / L[inside]
    thick, thin = ratio[L[inside].argmax()], ratio[L[inside].argmin()]
    assert float(thick) < float(thin)


def test_polychromatic_phantom_with_materials(small_geom, phantom):
    steel = Phantom([s for s in phantom if s.material == "steel"])
    out = ph.radiograph(steel, small_geom, ph.RadiographSettings(kvp=70, polychromatic=True, noise=False),
                        return_all=True)
    paths = ph.phantom_path_lengths(steel, small_geom)
    torch.testing.assert_close(out["path_lengths"]["steel"], paths["steel"])
    assert float(paths["steel"].max()) == pytest.approx(16.0, rel=0.02)  # the diameter, nearly centred rays
    assert float(out["raw"].min()) < 1000.0 * math.exp(-0.5)
    # a shape without a material is named through material_map (by label), or dropped with None
    labelled = Phantom([Sphere((0, 0, 0), 50.0, 0.02, label="body"), *steel.shapes])
    both = ph.phantom_path_lengths(labelled, small_geom, material_map={"body": "soft_tissue"})
    assert set(both) == {"soft_tissue", "steel"}
    assert float(both["soft_tissue"].max()) == pytest.approx(100.0, rel=0.02)
    only = ph.phantom_path_lengths(labelled, small_geom, material_map={"body": None})
    assert set(only) == {"steel"}


def test_radiograph_bad_inputs(small_geom, phantom):
    vol = torch.zeros(16, 16, 16)
    with pytest.raises(ValueError, match="needs kvp"):
        ph.radiograph({"water": vol}, small_geom)
    with pytest.raises(ValueError, match=r"geom\.grid\.shape"):
        ph.radiograph(torch.zeros(8, 8, 8), small_geom)
    with pytest.raises(ValueError, match="photons_per_pixel"):
        ph.radiograph(vol, small_geom, ph.RadiographSettings(photons_per_pixel=0.0))
    with pytest.raises(ValueError, match="polychromatic=True needs material-labelled input"):
        ph.radiograph(vol, small_geom, ph.RadiographSettings(kvp=70, polychromatic=True))
    with pytest.raises(ValueError, match="has no material"):
        ph.radiograph(phantom, small_geom, ph.RadiographSettings(kvp=70, polychromatic=True))
    with pytest.raises(ValueError, match="unknown material"):
        ph.radiograph({"kryptonite": vol}, small_geom, ph.RadiographSettings(kvp=70))
    with pytest.raises(TypeError, match="volume tensor"):
        ph.radiograph("head.nii", small_geom)
    with pytest.raises(TypeError, match="Geometry"):
        ph.radiograph(vol, small_geom.views[0])
    with pytest.raises(TypeError, match="heel must be"):
        ph.radiograph(vol, small_geom, ph.RadiographSettings(heel="yes"))
    with pytest.raises(ValueError, match="contains NaN"):
        ph.radiograph(torch.full((16, 16, 16), float("nan")), small_geom)
