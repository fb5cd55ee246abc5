"""Geometry fit internals: autograd Jacobian vs finite differences, exact recovery, gauge."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import tomoprior as tp
from tomoprior.calibration.fit import FitProblem, fit_geometry, rotation_from_vector


def _problem(cage, gauge):
    params = [tp.geometry.default_frontal(u0=1.0, detector_tilt_u=0.01),
              tp.geometry.default_lateral(v0=-2.0, detector_rotation=0.02)]
    obs = [(np.arange(0, 50, 2), p.to_view().project_points(cage.positions[::2]).numpy() + 0.3) for p in params]
    return FitProblem.build(params, cage.positions, obs, gauge=gauge, pose=[0.01, -0.02, 0.03, 1.0, 2.0, 3.0])


@pytest.mark.parametrize("gauge", ["phantom", "view0"])
def test_jacobian_matches_finite_differences(cage, gauge):
    prob = _problem(cage, gauge)
    x = prob.x0()
    jac = prob.jacobian(x)
    fd = np.zeros_like(jac)
    for i in range(len(x)):
        h = 1e-6 * max(1.0, abs(x[i]))
        e = np.zeros_like(x)
        e[i] = h
        fd[:, i] = (prob.residuals(x + e) - prob.residuals(x - e)) / (2 * h)
    assert np.abs(jac - fd).max() <= 1e-6 * np.abs(jac).max()
    assert jac.shape == (100, 18 if gauge == "phantom" else 18 - 6 + 6)


def test_rotation_from_vector_is_a_rotation():
    w = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
    r = rotation_from_vector(w)
    assert torch.allclose(r.T @ r, torch.eye(3, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(r @ w, w, atol=1e-12)  # the axis is fixed
    assert math.isclose(float(torch.arccos((torch.trace(r) - 1) / 2)), float(w.norm()), rel_tol=1e-12)
    assert torch.equal(rotation_from_vector(torch.zeros(3, dtype=torch.float64)), torch.eye(3, dtype=torch.float64))


def test_exact_points_recover_the_true_parameters(cage):
    true = [tp.geometry.default_frontal(source_to_isocenter=1004.0, source_to_detector=1490.0, u0=1.5, v0=-0.7,
                                        detector_rotation=0.006, detector_tilt_u=0.012, detector_tilt_v=-0.01),
            tp.geometry.default_lateral(source_to_detector=1510.0, u0=-2.0, detector_tilt_v=0.015)]
    start = [p.replace(source_to_isocenter=p.source_to_isocenter + 15.0, source_to_detector=p.source_to_detector - 12.0,
                       u0=p.u0 + 3.0, detector_tilt_u=p.detector_tilt_u + 0.03) for p in true]
    idx = np.arange(len(cage))
    obs = [(idx, p.to_view().project_points(cage.positions).numpy()) for p in true]
    out = fit_geometry(FitProblem.build(start, cage.positions, obs))
    assert out.converged
    assert max(np.abs(r).max() for r in out.residuals) < 1e-6
    for fitted, ref in zip(out.parameters, true):
        for f in tp.ViewParameters.SCALAR_FIELDS:
            assert abs(float(getattr(fitted, f)) - float(getattr(ref, f))) < 1e-5, f


def test_unfixed_gauge_is_reported_as_unobservable(cage):
    """Freeing the pose AND every view parameter leaves a 6-dimensional null space."""
    params = [tp.geometry.default_frontal(), tp.geometry.default_lateral()]
    obs = [(np.arange(len(cage)), p.to_view().project_points(cage.positions).numpy()) for p in params]
    prob = FitProblem.build(params, cage.positions, obs, gauge="phantom")
    prob.fit_pose = True  # deliberately break the gauge
    jac = prob.jacobian(prob.x0())
    s = np.linalg.svd(jac / np.linalg.norm(jac, axis=0), compute_uv=False)
    assert np.sum(s < 1e-6 * s[0]) == 6
    # with a gauge fixed, full rank
    for gauge in ("phantom", "view0"):
        p2 = FitProblem.build(params, cage.positions, obs, gauge=gauge)
        j2 = p2.jacobian(p2.x0())
        s2 = np.linalg.svd(j2 / np.linalg.norm(j2, axis=0), compute_uv=False)
        assert s2[-1] > 1e-6 * s2[0]


def test_bad_fit_options():
    with pytest.raises(ValueError, match="gauge"):
        FitProblem.build([tp.geometry.default_frontal()], np.zeros((6, 3)), [], gauge="world")
    with pytest.raises(ValueError, match="fit_fields"):
        FitProblem.build([tp.geometry.default_frontal()], np.zeros((6, 3)), [], fit_fields=["sid"])
