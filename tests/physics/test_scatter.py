"""Object scatter (convolution model) and RadiographSettings, the options object of radiograph."""

from __future__ import annotations

import warnings

import pytest
import torch

from tomoprior import physics as ph
from tomoprior.phantoms import Phantom, Sphere
from tomoprior.units import mu_water

MU60 = mu_water(60.0)


@pytest.fixture
def phantom() -> Phantom:
    return Phantom([Sphere((0, 0, 0), 50.0, 0.02), Sphere((10, 5, -5), 8.0, 0.05)], name="two_spheres")


def test_uniform_slab_scatter_to_primary_equals_the_model_spr(small_geom):
    view = small_geom.views[0]
    model = ph.ScatterModel(spr=0.8, reference_mm=130.0, kernel_fwhm_mm=37.0)
    for thickness in (65.0, 130.0, 195.0):
        p = torch.full(view.shape, MU60 * thickness, dtype=torch.float64)
        primary = 1000.0 * torch.exp(-p)
        s = ph.scatter_image(primary, p, view, model)
        torch.testing.assert_close(s / primary, torch.full_like(p, 0.8 * thickness / 130.0), rtol=1e-9, atol=1e-12)


def test_slab_in_a_radiograph_gives_the_stated_spr(small_geom):
    # a water slab filling the grid; a narrow kernel stays inside its shadow around the centre
    vol = torch.full(small_geom.grid.shape, MU60, dtype=torch.float64)
    model = ph.ScatterModel(spr=1.0, reference_mm=130.0, kernel_fwhm_mm=10.0)
    out = ph.radiograph(vol, small_geom, ph.RadiographSettings(noise=False, scatter=model), return_all=True)
    r, c = 24, 24
    for i in range(2):
        t = float(out["line_integrals"][i, r, c]) / MU60
        spr = float(out["scatter"][i, r, c] / out["primary"][i, r, c])
        assert spr == pytest.approx(t / 130.0, rel=0.02)
        assert 110.0 < t < 140.0  # the slab is 128 mm thick along the central ray
    # the scatter is added to the primary: total = primary + scatter where nothing else blurs
    torch.testing.assert_close(out["expected"], out["primary"] + out["scatter"])


def test_scatter_is_smooth_and_lowers_the_measured_line_integrals(small_geom, phantom):
    base = ph.RadiographSettings(noise=False)
    off = ph.radiograph(phantom, small_geom, base, return_all=True)
    on = ph.radiograph(phantom, small_geom, base.replace(scatter=ph.ScatterModel()), return_all=True)
    s = on["scatter"]
    assert float(s.min()) >= 0 and float(s.max()) > 0
    # smooth: its steepest pixel step is far below the primary's (the sphere edges)
    step = lambda x: float((x[..., 1:] - x[..., :-1]).abs().max())  # noqa: E731
    assert step(s) < 0.05 * step(on["primary"])
    # scatter raises the counts, so -log(raw / flat) underestimates the line integrals
    p_off = ph.log_transform(off["raw"], off["flat"])
    p_on = ph.log_transform(on["raw"], on["flat"])
    assert bool((p_on <= p_off + 1e-12).all()) and float((p_off - p_on).max()) > 0.05


def test_scatter_off_gives_identical_images(small_geom, phantom):
    base = ph.RadiographSettings(photons_per_pixel=700.0)
    a = ph.radiograph(phantom, small_geom, base, seed=3)
    b = ph.radiograph(phantom, small_geom, base.replace(scatter=None), seed=3)
    c = ph.radiograph(phantom, small_geom, base.replace(scatter=ph.ScatterModel(spr=0.0)), seed=3)
    assert torch.equal(a, b) and torch.equal(a, c)


def test_legacy_keywords_still_work_and_warn(small_geom, phantom):
    with pytest.warns(DeprecationWarning, match="RadiographSettings"):
        old = ph.radiograph(phantom, small_geom, photons_per_pixel=500.0, heel=True, kvp=80, focal_spot_mm=1.0,
                            detector_blur_px=0.7, seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        new = ph.radiograph(phantom, small_geom, ph.RadiographSettings(photons_per_pixel=500.0, heel=True, kvp=80,
                                                                       focal_spot_mm=1.0, detector_blur_px=0.7),
                            seed=4)
    assert torch.equal(old, new)
    with pytest.raises(TypeError, match="not both"):
        ph.radiograph(phantom, small_geom, ph.RadiographSettings(), photons_per_pixel=5.0)
    with pytest.raises(TypeError, match="unexpected keyword"):
        ph.radiograph(phantom, small_geom, photon_per_pixel=5.0)
    with pytest.raises(TypeError, match="RadiographSettings"):
        ph.radiograph(phantom, small_geom, {"photons_per_pixel": 5.0})


def test_noise_variance_follows_the_dose(small_geom):
    vol = torch.zeros(small_geom.grid.shape, dtype=torch.float64)
    var = {}
    for dose in (200.0, 800.0):
        raw = ph.radiograph(vol, small_geom, ph.RadiographSettings(photons_per_pixel=dose), seed=1)
        assert float(raw.mean()) == pytest.approx(dose, rel=0.01)
        assert float(raw.var()) == pytest.approx(dose, rel=0.1)  # Poisson: variance = mean
        var[dose] = float((raw / dose).var())  # relative (flat-field corrected) noise
    assert var[200.0] / var[800.0] == pytest.approx(4.0, rel=0.15)


def test_heel_gradient_runs_along_the_anode_cathode_axis(small_geom):
    vol = torch.zeros(small_geom.grid.shape, dtype=torch.float64)
    flat = ph.radiograph(vol, small_geom, ph.RadiographSettings(noise=False, heel=True, kvp=70.0,
                                                                 anode_direction="+v"), return_all=True)["flat"][0]
    rows, cols = flat.mean(dim=1), flat.mean(dim=0)
    # inverse square and obliquity are symmetric about the centre; the heel effect is not:
    # along v (rows, the anode-cathode axis) the two halves differ, along u (cols) they agree
    half = len(rows) // 2
    asym_rows = float((rows[:half].sum() - rows.flip(0)[:half].sum()).abs() / rows[:half].sum())
    asym_cols = float((cols[:half].sum() - cols.flip(0)[:half].sum()).abs() / cols[:half].sum())
    assert asym_rows > 0.05 and asym_cols < 1e-6
    # flipping the anode-cathode axis mirrors the field
    flipped = ph.radiograph(vol, small_geom, ph.RadiographSettings(noise=False, heel=True, kvp=70.0,
                                                                    anode_direction="-v"), return_all=True)["flat"][0]
    torch.testing.assert_close(flipped, flat.flip(0), rtol=1e-6, atol=1e-9)


def test_blur_reduces_edge_sharpness(small_geom):
    box = Phantom([Sphere((0, 0, 0), 40.0, 0.05)], name="ball")
    sharp = ph.radiograph(box, small_geom, ph.RadiographSettings(noise=False))
    edge = lambda x: float((x[..., 1:] - x[..., :-1]).abs().max())  # noqa: E731
    for kw in ({"focal_spot_mm": 20.0}, {"detector_blur_px": 1.5}):
        blurred = ph.radiograph(box, small_geom, ph.RadiographSettings(noise=False, **kw))
        assert edge(blurred) < 0.8 * edge(sharp)
        assert float(blurred.sum()) == pytest.approx(float(sharp.sum()), rel=1e-3)  # counts kept


def test_settings_check_their_values():
    with pytest.raises(ValueError, match="photons_per_pixel"):
        ph.RadiographSettings(photons_per_pixel=-5.0)
    with pytest.raises(ValueError, match="focal_spot_mm"):
        ph.RadiographSettings(focal_spot_mm=float("nan"))
    with pytest.raises(ValueError, match="detector_blur_px"):
        ph.RadiographSettings(detector_blur_px=(1.0, -1.0))
    with pytest.raises(ValueError, match="unknown radiograph setting"):
        ph.RadiographSettings.from_dict({"photons": 5})
    with pytest.raises(ValueError, match="unknown scatter setting"):
        ph.RadiographSettings.from_dict({"scatter": {"ratio": 1.0}})
    with pytest.raises(ValueError, match=r"ScatterModel\.spr"):
        ph.ScatterModel(spr=-0.1)
    with pytest.raises(ValueError, match="kernel"):
        ph.ScatterModel(kernel="lorentzian")
    s = ph.RadiographSettings.from_dict({"photons_per_pixel": 3000, "kvp": 70, "filtration": {"Al": 2.5},
                                         "heel": 12, "scatter": True, "detector_blur_px": [0.5, 0.7]})
    assert s.scatter == ph.ScatterModel() and s.detector_blur_px == (0.5, 0.7)
    assert ph.RadiographSettings.from_dict(s.to_dict()).to_dict() == s.to_dict()


def test_scatter_kernel_is_normalised_and_radial():
    k = ph.scatter_kernel((4.0, 2.0))
    assert float(k.sum()) == pytest.approx(1.0)
    assert k.shape == (2 * 12 + 1, 2 * 6 + 1)
    torch.testing.assert_close(k, k.flip(0).flip(1))
    # half maximum at one half-FWHM from the centre along each axis (in mm: a circle)
    assert float(k[12 + 2, 6] / k[12, 6]) == pytest.approx(0.5, rel=1e-9)
    assert float(k[12, 6 + 1] / k[12, 6]) == pytest.approx(0.5, rel=1e-9)
