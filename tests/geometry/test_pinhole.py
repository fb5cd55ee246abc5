"""3x4 projection matrices and K [R | t]: round trips, the sign rule, and refusals."""

import math

import numpy as np
import pytest
import torch

import tomoprior as tp
from tests.conftest import random_geometry


def _points(seed, n=200, spread=90.0):
    return np.random.default_rng(seed).uniform(-spread, spread, (n, 3))


@pytest.mark.parametrize("seed", range(6))
def test_view_to_matrix_to_view_round_trip(seed, small_grid):
    geom = random_geometry(seed, small_grid)
    for view in geom.views:
        P = view.projection_matrix()
        again = tp.View.from_projection_matrix(P, view.shape, view.pixel_pitch)
        assert float((again.vector - view.vector).abs().max()) < 1e-8  # mm
        pts = _points(seed)
        assert float((again.project_points(pts) - view.project_points(pts)).abs().max()) < 1e-9  # px
        # any positive scale, and the opposite sign when told so
        scaled = tp.View.from_projection_matrix(P.numpy() * 3.7e-4, view.shape, view.pixel_pitch)
        assert torch.allclose(scaled.vector, view.vector, atol=1e-8)
        negated = tp.View.from_projection_matrix(-P, view.shape, view.pixel_pitch, w_sign=-1)
        assert torch.allclose(negated.vector, view.vector, atol=1e-8)


def test_sign_of_w_marks_the_detector_side(small_grid):
    geom = random_geometry(3, small_grid)
    for view in geom.views:
        P = view.projection_matrix().numpy()
        centre = np.r_[small_grid.center, 1.0]
        behind = np.r_[2 * view.source.numpy() - np.asarray(small_grid.center), 1.0]  # mirror through the source
        assert P[2] @ centre > 0 > P[2] @ behind
        # read with the wrong sign: same pixels, detector mirrored through the source
        wrong = tp.View.from_projection_matrix(-P, view.shape, view.pixel_pitch)
        assert torch.allclose(wrong.source, view.source, atol=1e-8)
        assert torch.allclose(wrong.detector_center - wrong.source, view.source - view.detector_center, atol=1e-8)


def test_krt_factors(small_grid):
    frontal = tp.BiplanarGeometry.from_parameters(binning=8).frontal
    K, R, t = frontal.krt()
    sdd = float(frontal.source_to_detector)
    pr, pc = frontal.pixel_pitch
    assert torch.allclose(R @ R.T, torch.eye(3, dtype=torch.float64), atol=1e-12)
    assert float(torch.linalg.det(R)) == pytest.approx(1.0)
    assert float(K[1, 1]) == pytest.approx(sdd / pr)
    assert float(K[0, 0]) == pytest.approx(-sdd / pc)  # PA radiographs are mirrored w.r.t. the source's view
    assert float(K[0, 1]) == pytest.approx(0.0, abs=1e-9)
    assert (float(K[0, 2]), float(K[1, 2])) == pytest.approx(tuple(frontal.principal_point.tolist()))
    # third row of R is the beam direction, t = -R s
    beam = (frontal.detector_center - frontal.source) / torch.linalg.norm(frontal.detector_center - frontal.source)
    assert torch.allclose(R[2], beam, atol=1e-12)
    assert torch.allclose(t, -R @ frontal.source, atol=1e-9)
    for view in random_geometry(5, small_grid).views:
        K, R, t = view.krt()
        again = tp.View.from_krt(K, R, t, view.shape, view.pixel_pitch, name=view.name)
        assert again.name == view.name
        assert float((again.vector - view.vector).abs().max()) < 1e-8
        assert float(K[0, 1].abs()) < 1e-9 * float(K[1, 1])  # a tilted flat detector still has zero skew


def test_from_krt_of_an_opencv_camera():
    """A textbook camera: pixels from K [R | t] equal the view's (col, row)."""
    f, cx, cy = 1200.0, 255.5, 191.5
    K = np.array([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]])
    a = math.radians(25.0)
    R = np.array([[math.cos(a), 0.0, -math.sin(a)], [0.0, 1.0, 0.0], [math.sin(a), 0.0, math.cos(a)]])
    t = np.array([5.0, -3.0, 900.0])
    view = tp.View.from_krt(K, R, t, (384, 512), 0.25)
    pts = _points(1, spread=60.0)
    cam = pts @ R.T + t
    want = np.c_[f * cam[:, 0] / cam[:, 2] + cx, f * cam[:, 1] / cam[:, 2] + cy]
    assert np.abs(view.project_points(pts).numpy() - want).max() < 1e-9
    assert float(view.source_to_detector) == pytest.approx(f * 0.25)
    assert view.pixel_pitch == pytest.approx((0.25, 0.25))


def test_refusals_say_what_is_wrong():
    view = tp.BiplanarGeometry.from_parameters(binning=8).lateral
    P = view.projection_matrix().numpy()
    with pytest.raises(ValueError, match="aspect ratio"):
        tp.View.from_projection_matrix(P, view.shape, (0.8, 1.0))
    skewed = P.copy()
    skewed[0] += 0.05 * P[1]  # shears columns along rows
    with pytest.raises(ValueError, match="skewed pixels"):
        tp.View.from_projection_matrix(skewed, view.shape, view.pixel_pitch)
    affine = P.copy()
    affine[2, :3] = 0.0
    affine[2, 3] = 1.0
    with pytest.raises(ValueError, match=r"zero row|singular"):
        tp.View.from_projection_matrix(affine, view.shape, view.pixel_pitch)
    flat = P.copy()
    flat[2, :3] = P[0, :3] + P[1, :3]
    with pytest.raises(ValueError, match="singular"):
        tp.View.from_projection_matrix(flat, view.shape, view.pixel_pitch)
    for bad in (P[:2], np.full((3, 4), np.nan), "P"):
        with pytest.raises(ValueError, match="P"):
            tp.View.from_projection_matrix(bad, view.shape, view.pixel_pitch)
    with pytest.raises(ValueError, match="pixel_pitch"):
        tp.View.from_projection_matrix(P, view.shape, -1.0)
    K, R, t = view.krt()
    with pytest.raises(ValueError, match="reflection"):
        tp.View.from_krt(K, -R, t, view.shape, view.pixel_pitch)
    with pytest.raises(ValueError, match="not a rotation"):
        tp.View.from_krt(K, 2 * R, t, view.shape, view.pixel_pitch)
    with pytest.raises(ValueError, match="upper triangular"):
        tp.View.from_krt(K.T, R, t, view.shape, view.pixel_pitch)
