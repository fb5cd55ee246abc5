"""Anode heel effect: against SpekPy's own off-axis fluence, and the map's properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import tomoprior as tp
from tomoprior import physics as ph

from .conftest import axis_view

OFFSETS_CM = [-15.0, -7.5, 0.0, 7.5, 15.0]


@pytest.mark.parametrize(("kvp", "angle"), [(70, 12), (70, 16), (100, 12)])
def test_heel_matches_spekpy_within_one_percent(kvp, angle):
    """heel_effect on a detector at 100 cm, without the flat-panel obliquity (SpekPy has
    1/r^2 but not obliquity), against Spek(kvp, th, x, y=0, z=100) / Spek(x=0)."""
    pytest.importorskip("spekpy")
    view = axis_view(np.array(OFFSETS_CM) * 10.0, sdd_mm=1000.0)  # rows along +x = toward the cathode
    ours = ph.heel_effect(view, angle, "+v", kvp=kvp, obliquity=False)[0, :, 0].numpy()
    ref = ph.spekpy_heel_profile(OFFSETS_CM, kvp, angle, {"Al": 2.5}, 100.0)
    assert ref[2] == 1.0 and ours[2] == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(ours, ref, rtol=0.01)
    if (kvp, angle) == (70, 12):  # the published SpekPy reference point
        assert ref[0] == pytest.approx(0.76, abs=0.01)


@pytest.mark.slow
@pytest.mark.parametrize(("kvp", "angle"), [(70, 12), (70, 16), (100, 12), (50, 12), (120, 12), (80, 14), (100, 20)])
def test_heel_matches_spekpy_fine_sweep(kvp, angle):
    xs = np.arange(-15, 15.01, 2.5)
    ref = ph.spekpy_heel_profile(xs, kvp, angle)
    np.testing.assert_allclose(ph.model_heel_profile(xs, kvp, angle), ref, rtol=0.01)


def test_spekpy_model_corrects_onto_spekpy():
    """model="spekpy" reproduces SpekPy on and between its lattice directions (narrow field
    to keep the number of SpekPy runs small)."""
    pytest.importorskip("spekpy")
    offsets = np.array([-5.0, -3.75, -2.5, -1.25, 0.0, 1.25, 2.5, 3.75, 5.0])
    view = axis_view(offsets * 10.0, sdd_mm=1000.0)
    ours = ph.heel_effect(view, 12, "+v", kvp=70, model="spekpy", obliquity=False)[0, :, 0].numpy()
    on_lattice = [0, 2, 4, 6, 8]
    ref = ph.spekpy_heel_profile(offsets[on_lattice], 70, 12)
    np.testing.assert_allclose(ours[on_lattice], ref, rtol=1e-6)
    between = ph.spekpy_heel_profile(offsets[[1, 7]], 70, 12)
    np.testing.assert_allclose(ours[[1, 7]], between, rtol=1e-3)


def test_geometry_only_is_cos_cubed():
    """With no self-filtration, no anisotropy and no filter, the field is exactly cos^3 of the
    angle to the detector normal: (z/r)^2 inverse square times z/r obliquity."""
    view = tp.View((30.0, -20.0, 800.0), (0, 0, 0), (0, 4.0, 0), (4.0, 0, 0), (41, 37))
    params = ph.HeelParameters(0.0, 0.0)
    h = ph.heel_effect(view, 12, "+v", kvp=70, filtration={}, parameters=params)[0]
    w = view.pixel_positions() - view.source
    cos = 800.0 / torch.linalg.norm(w, dim=-1)
    torch.testing.assert_close(h, cos**3, rtol=1e-12, atol=0)
    h2 = ph.heel_effect(view, 12, "+v", kvp=70, filtration={}, parameters=params, obliquity=False)[0]
    torch.testing.assert_close(h2, cos**2, rtol=1e-12, atol=0)


def test_map_properties():
    view = tp.View((0.0, 0.0, 1000.0), (0, 0, 0), (0, 10.0, 0), (10.0, 0, 0), (31, 31))
    h = ph.heel_effect(view, 12, "+v", kvp=70)[0]
    assert float(h[15, 15]) == pytest.approx(1.0, abs=1e-12)  # the principal ray
    # symmetric across the anode-cathode axis
    torch.testing.assert_close(h, h.flip(1), rtol=1e-12, atol=0)
    # rises monotonically from the anode side to the centre, and the anode side is darker
    col = h[:, 15]
    assert bool((col[1:16] > col[:15]).all())
    assert float(col[0]) < 0.8 < float(col[-1])
    # reversing the anode direction mirrors the map; "+u" transposes it on this square detector
    torch.testing.assert_close(ph.heel_effect(view, 12, "-v", kvp=70)[0], h.flip(0), rtol=1e-12, atol=0)
    torch.testing.assert_close(ph.heel_effect(view, 12, "+u", kvp=70)[0], h.T, rtol=1e-12, atol=0)
    torch.testing.assert_close(ph.heel_effect(view, 12, (0.0, 1.0), kvp=70)[0], h, rtol=1e-12, atol=0)
    # a steeper anode has a weaker heel effect
    h16 = ph.heel_effect(view, 16, "+v", kvp=70)[0]
    assert float(h16[0, 15]) > float(h[0, 15])


def test_no_emission_in_the_anode_shadow():
    # tan(alpha) from -0.3 to 0.3 at 1 m; the 12 degree anode shadow starts at tan(-12 deg) = -0.21
    view = axis_view(np.linspace(-300, 300, 25), sdd_mm=1000.0)
    h = ph.heel_effect(view, 12, "+v", kvp=70)[0, :, 0]
    ta = torch.linspace(-0.3, 0.3, 25, dtype=torch.float64)
    shadow = ta <= -math.tan(math.radians(12))
    assert bool((h[shadow] == 0).all()) and bool((h[~shadow] > 0).all())


def test_interpolated_large_detector_matches_exact():
    view = tp.View((0.0, 0.0, 1500.0), (0, 0, 0), (0, 1.5, 0), (1.5, 0, 0), (200, 180))
    exact = ph.heel_effect(view, 12, "+v", kvp=80, max_grid=200)[0]
    interp = ph.heel_effect(view, 12, "+v", kvp=80, max_grid=40)[0]
    assert float((exact - interp).abs().max()) < 2e-4


def test_biplanar_geometry_and_gradients(small_geom):
    h = ph.heel_effect(small_geom, 12, "+v", kvp=70)
    assert h.shape == (2, 48, 48) and bool(torch.isfinite(h).all())
    params = tp.ViewParameters(name="f", source_to_detector=torch.tensor(1500.0, dtype=torch.float64,
                                                                        requires_grad=True),
                               detector_shape=(24, 24), pixel_pitch=12.0)
    view = params.to_view()
    out = ph.heel_effect(view, 12, "+v", kvp=70, max_grid=24)
    out.sum().backward()
    assert params.source_to_detector.grad is not None and bool(torch.isfinite(params.source_to_detector.grad))


def test_default_parameters_and_fit_are_consistent():
    p = ph.default_heel_parameters(70)
    assert p.penetration_depth_um == pytest.approx(1.171)
    assert ph.default_heel_parameters(140).penetration_depth_um > 3 * p.penetration_depth_um
    with pytest.raises(ValueError, match="depth_profile"):
        ph.default_heel_parameters(70, "gaussian")
    with pytest.raises(ValueError, match="penetration_depth_um"):
        ph.HeelParameters(-1.0)


@pytest.mark.slow
def test_fit_heel_parameters_reaches_spekpy():
    params, dev = ph.fit_heel_parameters(70, 12, depth_profile="single")
    assert dev < 0.01 and params.depth_profile == "single"


def test_heel_bad_inputs(small_geom):
    view = small_geom.views[0]
    with pytest.raises(ValueError, match="model must be one of"):
        ph.heel_effect(view, model="monte-carlo")
    with pytest.raises(ValueError, match="anode_direction must be one of"):
        ph.heel_effect(view, anode_direction="x")
    with pytest.raises(ValueError, match="no component in the detector plane"):
        ph.heel_effect(view, anode_direction=view.normal.tolist())
    with pytest.raises(ValueError, match="kvp must lie"):
        ph.heel_effect(view, kvp=10)
    with pytest.raises(ValueError, match="anode_angle_deg"):
        ph.heel_effect(view, 0.0)
    with pytest.raises(TypeError, match="View or a Geometry"):
        ph.heel_effect("frontal")
    with pytest.raises(ValueError, match="max_grid"):
        ph.heel_effect(view, max_grid=1)
