"""DRR synthesis: agrees with the projector, perturbations are recorded exactly, bad input fails."""

import math

import numpy as np
import pytest
import torch

import tomoprior as tp
from tomoprior import data


@pytest.fixture
def volume(tiny_geometry):
    return tp.phantoms.load("shepp_logan_3d_modified").rasterize(tiny_geometry.grid).float()


def test_line_integrals_match_projector(volume, tiny_geometry):
    res = data.synthesize(volume, tiny_geometry, seed=0)
    assert res.kind == "line_integrals" and res.augmentation == {}
    assert torch.allclose(res.xrays, tp.project(volume, tiny_geometry).float())
    assert res.geometry is tiny_geometry and res.xrays.dtype == torch.float32


def test_perturbation_is_bounded_recorded_and_reproducible(volume, tiny_geometry):
    pert = data.GeometryPerturbation(source_to_detector_mm=20.0, offset_mm=5.0, tilt_deg=2.0, rotation_deg=1.0)
    res = data.synthesize(volume, tiny_geometry, perturbation=pert, seed=7)
    again = data.synthesize(volume, tiny_geometry, perturbation=pert, seed=7)
    other = data.synthesize(volume, tiny_geometry, perturbation=pert, seed=8)
    assert torch.equal(res.xrays, again.xrays) and not torch.equal(res.xrays, other.xrays)
    drawn = res.augmentation["perturbation"]["drawn"]
    for d, p_nom, p in zip(drawn, tiny_geometry.parameters, res.geometry.parameters):
        assert abs(d["source_to_detector_mm"]) <= 20 and abs(d["u0_mm"]) <= 5 and abs(d["tilt_u_deg"]) <= 2
        want = float(p_nom.source_to_detector) + d["source_to_detector_mm"]
        assert float(p.source_to_detector) == pytest.approx(want)
        assert math.degrees(float(p.detector_rotation)) == pytest.approx(d["rotation_deg"])
    # the recorded geometry is exactly the one that made the X-rays; the nominal one is not
    assert torch.allclose(res.xrays, tp.project(volume, res.geometry).float())
    assert not torch.allclose(res.xrays, tp.project(volume, res.nominal_geometry).float(), atol=1e-3)
    # and it survives the geometry file format
    loaded = tp.Geometry.from_dict(res.geometry.to_dict())
    assert torch.allclose(loaded.vectors, res.geometry.vectors.double(), atol=1e-9)
    # the view moved by about the size asked for (detector offset shift of up to ~5 mm)
    shift = (res.geometry.vectors - tiny_geometry.vectors)[:, 3:6].norm(dim=1)
    assert bool((shift > 0).all()) and bool((shift < 40).all())


def test_perturbation_parse_and_validation(tiny_geometry):
    p = data.GeometryPerturbation.parse("sdd=5, offset=2,tilt_deg=0.5")
    assert p == data.GeometryPerturbation(source_to_detector_mm=5, offset_mm=2, tilt_deg=0.5)
    with pytest.raises(ValueError, match="unknown perturbation key"):
        data.GeometryPerturbation.parse("shift=3")
    with pytest.raises(ValueError, match=">= 0"):
        data.GeometryPerturbation(offset_mm=-1)
    plain = tp.Geometry(tiny_geometry.grid, tiny_geometry.views)
    with pytest.raises(TypeError, match="BiplanarGeometry"):
        data.GeometryPerturbation(offset_mm=1).sample(plain, 0)


def test_intensity_augmentation(volume, tiny_geometry):
    base = data.synthesize(volume, tiny_geometry, seed=1).xrays
    aug = data.IntensityAugmentation(gain=0.1)
    res = data.synthesize(volume, tiny_geometry, intensity=aug, seed=1)
    gains = [d["gain"] for d in res.augmentation["intensity"]["drawn"]]
    for v in range(2):
        assert 0.9 <= gains[v] <= 1.1
        assert torch.allclose(res.xrays[v], base[v] * gains[v], rtol=1e-6, atol=1e-6)
    noisy = data.synthesize(volume, tiny_geometry, intensity=data.IntensityAugmentation(noise=0.01), seed=1)
    resid = (noisy.xrays - base) / base.abs().amax(dim=(1, 2), keepdim=True)
    assert float(resid.std()) == pytest.approx(0.01, rel=0.1)


def test_volume_object_and_phantom_inputs(tmp_path, tiny_geometry):
    ph = tp.phantoms.load("shepp_logan_3d_modified")
    from_phantom = data.synthesize(ph, tiny_geometry)
    ref = tp.project(ph.rasterize(tiny_geometry.grid, supersample=2).float(), tiny_geometry)
    assert torch.allclose(from_phantom.xrays, ref.float())
    # a Volume on its own (off-centre) grid: the geometry follows the volume's grid
    grid = tp.VolumeGrid((16, 16, 16), (5.0, 5.0, 5.0), center=(10.0, -5.0, 3.0))
    hu = torch.full((16, 16, 16), -1000.0)
    hu[4:12, 4:12, 4:12] = 0.0  # a water cube
    res = data.synthesize(data.Volume(hu, grid, units="HU"), tiny_geometry)
    assert res.geometry.grid == grid
    # the central ray crosses 8 voxels x 5 mm of water at most (+ trilinear edges)
    assert float(res.xrays.max()) == pytest.approx(40 * data.mu_water(60.0), rel=0.15)


def test_bad_inputs(volume, tiny_geometry):
    bad = volume.clone()
    bad[3, 4, 5] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        data.synthesize(bad, tiny_geometry)
    with pytest.raises(ValueError, match=r"grid\.shape"):
        data.synthesize(volume[:-1], tiny_geometry)
    with pytest.raises(ValueError, match="kind"):
        data.synthesize(volume, tiny_geometry, kind="photons")
    # a geometry aimed far away from the volume
    away = [p.replace(isocenter=(0.0, 0.0, 5000.0)) for p in tiny_geometry.parameters]
    with pytest.warns(tp.GeometryWarning):
        far = tp.BiplanarGeometry(tiny_geometry.grid, away)
    with pytest.raises(ValueError, match="misses the volume"):
        data.synthesize(volume, far)


def test_radiograph_kind(volume, tiny_geometry):
    if data.drr.physics_radiograph() is None:
        with pytest.raises(ValueError, match="physics"):
            data.synthesize(volume, tiny_geometry, kind="radiograph")
        return
    res = data.synthesize(volume, tiny_geometry, kind="radiograph", seed=3,
                          physics_options={"photons_per_pixel": 1000.0})
    again = data.synthesize(volume, tiny_geometry, kind="radiograph", seed=3,
                            physics_options={"photons_per_pixel": 1000.0})
    assert res.xrays.shape == (2, 48, 48) and bool((res.xrays >= 0).all())
    assert torch.equal(res.xrays, again.xrays)
    # counts fall where the line integrals are large
    li = tp.project(volume, tiny_geometry)
    inside, outside = li > 0.5 * li.max(), li == 0
    assert float(res.xrays[inside].mean()) < float(res.xrays[outside].mean())
    np.testing.assert_array_less(0, res.xrays[outside].mean().item())
