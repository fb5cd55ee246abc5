"""Sensitivity table and fit conditioning against closed forms and finite differences."""

import math

import numpy as np
import pytest
import torch

import tomoprior as tp
from tomoprior.validation.sensitivity import (
    REFERENCE_PX,
    fit_conditioning,
    head_points,
    parameter_jacobian,
    sensitivity_table,
)


def _rows(params, points=None, steps=None):
    kw = {} if steps is None else {"steps": steps}
    return {(r.view, r.parameter): r for r in sensitivity_table(params, points, **kw)}


def test_head_points_fill_a_ball():
    p = head_points(150.0, 10.0, center=(1.0, 2.0, 3.0))
    r = np.linalg.norm(p - [1.0, 2.0, 3.0], axis=1)
    assert r.max() <= 75.0 + 1e-9 and r.max() > 70.0
    # volume fraction of a ball in its cube: pi/6
    assert len(p) == pytest.approx(math.pi / 6 * 15**3, rel=0.1)
    with pytest.raises(ValueError, match="diameter_mm"):
        head_points(-1.0)


def test_detector_offset_and_distances_match_closed_forms():
    pitch = 0.2
    p = tp.ViewParameters(name="pa", pixel_pitch=pitch, detector_shape=(1536, 1536))
    pts = head_points(150.0, 15.0)
    rows = _rows(p, pts)
    assert rows[("pa", "u0")].mean_px == pytest.approx(1.0, abs=1e-9)
    assert rows[("pa", "v0")].max_px == pytest.approx(1.0, abs=1e-9)
    # PA view, beam along -y, source at y = +1000: image offset = SDD * lateral / depth
    lateral = np.hypot(pts[:, 0], pts[:, 2])
    depth = 1000.0 - pts[:, 1]
    sdd_shift = lateral / depth / pitch  # d(offset)/d(SDD) * 1 mm, px
    assert rows[("pa", "source_to_detector")].mean_px == pytest.approx(sdd_shift.mean(), rel=1e-6)
    assert rows[("pa", "source_to_detector")].max_px == pytest.approx(sdd_shift.max(), rel=1e-6)
    # source-to-isocenter +1 mm moves source AND detector back by 1 mm: depth + 1 mm
    sod_shift = 1500.0 * lateral * (1 / depth - 1 / (depth + 1.0)) / pitch
    assert rows[("pa", "source_to_isocenter")].mean_px == pytest.approx(sod_shift.mean(), rel=1e-6)
    # in-plane rotation about the detector centre by 0.1 deg: chord 2 r sin(theta / 2)
    r_px = 1500.0 * lateral / depth / pitch
    rot = 2 * r_px * math.sin(math.radians(0.1) / 2)
    assert rows[("pa", "detector_rotation")].mean_px == pytest.approx(rot.mean(), rel=1e-6)


def test_linearised_values_agree_and_jacobian_matches_finite_differences():
    p = tp.geometry.default_lateral(detector_tilt_u=0.02, u0=3.0)
    pts = head_points(150.0, 25.0)
    for r in sensitivity_table(p, pts):
        # a 1 deg tilt on an already tilted detector has a visible second-order term
        rel = 0.05 if "tilt" in r.parameter else 0.01
        assert r.linear_mean_px == pytest.approx(r.mean_px, rel=rel), r.parameter
    names = ["source_to_detector", "detector_tilt_v", "primary_angle", "isocenter_z"]
    J = parameter_jacobian(p, pts, names).numpy()
    eps = {"source_to_detector": 1e-3, "detector_tilt_v": 1e-6, "primary_angle": 1e-6, "isocenter_z": 1e-3}
    from tomoprior.validation.sensitivity import _perturbed

    for k, n in enumerate(names):
        hi = _perturbed(p, n, eps[n]).to_view().project_points(pts).numpy()
        lo = _perturbed(p, n, -eps[n]).to_view().project_points(pts).numpy()
        fd = (hi - lo) / (2 * eps[n])
        assert np.allclose(J[:, :, k], fd, rtol=1e-5, atol=1e-6 * np.abs(fd).max()), n


def test_default_setup_at_published_pitch_is_close_to_published_values():
    # published mean displacements for a head-sized volume at 0.15 mm pixels (REFERENCE_PX)
    params = [tp.geometry.default_frontal(pixel_pitch=0.15), tp.geometry.default_lateral(pixel_pitch=0.15)]
    rows = _rows(params)
    for name, ref in REFERENCE_PX.items():
        for view in ("frontal", "lateral"):
            got = rows[(view, name)].mean_px
            assert got == pytest.approx(ref, rel=0.3), (view, name, got, ref)
    # ordering as published: tilt is the least observable, detector offset the most
    f = {n: rows[("frontal", n)].mean_px for n in REFERENCE_PX}
    assert f["detector_tilt_u"] < f["source_to_detector"] < f["source_to_isocenter"] < f["detector_rotation"] < f["u0"]


def test_unknown_parameter_and_bad_points_raise():
    with pytest.raises(ValueError, match="unknown parameter 'focal_length'"):
        sensitivity_table(tp.ViewParameters(), steps=[("focal_length", 1.0, "mm")])
    with pytest.raises(ValueError, match="unknown unit"):
        sensitivity_table(tp.ViewParameters(), steps=[("u0", 1.0, "furlong")])
    with pytest.raises(ValueError, match=r"points must have shape \(n, 3\)"):
        sensitivity_table(tp.ViewParameters(), np.zeros((5, 2)))


def test_fit_conditioning_covariance_matches_finite_difference_jacobian():
    rng = np.random.default_rng(2)
    pts = rng.uniform(-60, 60, (40, 3))
    p = tp.geometry.default_frontal(pixel_pitch=0.4, detector_shape=(768, 768))
    c = fit_conditioning(p, pts, sigma_px=0.1)
    from tomoprior.validation.sensitivity import VIEW_DOF, _perturbed

    cols = []
    for n in VIEW_DOF:
        e = 1e-6 if n in tp.ViewParameters.ANGLE_FIELDS else 1e-3
        hi = _perturbed(p, n, e).to_view().project_points(pts).numpy().ravel()
        lo = _perturbed(p, n, -e).to_view().project_points(pts).numpy().ravel()
        cols.append((hi - lo) / (2 * e))
    J = np.stack(cols, axis=1)
    sd = np.sqrt(np.diag(0.01 * np.linalg.inv(J.T @ J)))
    for n, s in zip(VIEW_DOF, sd):
        expect = math.degrees(s) if n in tp.ViewParameters.ANGLE_FIELDS else s
        assert c.predicted_sd[n] == pytest.approx(expect, rel=1e-3), n
    assert c.n_points == 40 and c.condition_number > 1
    # source-to-isocenter and source-to-detector are the correlated pair: both mostly scale the
    # magnification, so the fit trades one against the other
    assert {c.max_abs_correlation[1], c.max_abs_correlation[2]} == {"source_to_isocenter", "source_to_detector"}
    assert np.allclose(np.diag(c.correlation), 1.0)


def test_jacobian_is_differentiable_through_tensor_parameters():
    p = tp.ViewParameters(source_to_detector=torch.tensor(1500.0, dtype=torch.float64))
    J = parameter_jacobian(p, [[10.0, 0.0, 5.0]], ["source_to_detector"])
    # d col / d SDD = x / depth / pitch for the PA view
    assert float(J[0, 0, 0]) == pytest.approx(10.0 / 1000.0 / 0.2, rel=1e-9)


def test_reference_is_converted_to_the_view_pitch():
    steps = [("u0", 1.0, "px"), ("source_to_detector", 1.0, "mm")]
    rows = _rows(tp.ViewParameters(name="pa", pixel_pitch=0.3), steps=steps)
    assert rows[("pa", "u0")].reference_at_pitch_px == 1.0
    assert rows[("pa", "source_to_detector")].reference_at_pitch_px == pytest.approx(0.28 * 0.15 / 0.3)
