"""Reprojection error, correspondence, triangulation and rigid alignment."""

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

import tomoprior as tp
from tomoprior.geometry import triangulate
from tomoprior.validation.reprojection import (
    match_to_design,
    reprojection_error,
    rigid_align,
    triangulation_error,
)


@pytest.fixture
def tilted_geometry():
    f = tp.ViewParameters(name="frontal", source_to_isocenter=980.0, source_to_detector=1490.0, u0=2.0, v0=-1.0,
                          detector_rotation=math.radians(1.0), detector_tilt_u=math.radians(2.0),
                          detector_tilt_v=math.radians(-1.5), pixel_pitch=0.4, detector_shape=(768, 768))
    lat = tp.ViewParameters(name="lateral", primary_angle=math.radians(91.0), secondary_angle=math.radians(-2.0),
                            source_to_isocenter=1010.0, source_to_detector=1515.0, pixel_pitch=0.4,
                            detector_shape=(768, 768))
    return tp.BiplanarGeometry.from_parameters(f, lat)


@pytest.fixture
def beads():
    rng = np.random.default_rng(3)
    return rng.uniform(-60, 60, (30, 3))


def test_reprojection_error_statistics_are_exact(tilted_geometry, beads):
    pred = tilted_geometry.project_points(beads).numpy()
    offsets = np.zeros_like(pred)
    offsets[0, :, 0] = 0.3  # frontal: every residual (0.3, 0.4) -> length 0.5
    offsets[0, :, 1] = 0.4
    offsets[1, ::2, 0] = 1.0  # lateral: half the beads at 1 px, half at 0
    obs = pred + offsets
    obs[1, 5] = np.nan  # bead 5 (0 px residual) not detected in the lateral view
    held = np.zeros(len(beads), bool)
    held[:3] = True
    rep = reprojection_error(tilted_geometry, beads, obs, heldout=held)
    fr, la = rep.views
    assert fr.name == "frontal" and fr.n_detected == 30 and la.n_detected == 29
    assert fr.rms_px == pytest.approx(0.5, abs=1e-9) and fr.max_px == pytest.approx(0.5, abs=1e-9)
    assert np.allclose(fr.residuals, offsets[0], atol=1e-9)
    # lateral: 15 beads at 1 px, 14 at 0 px (bead 5 missing)
    assert la.rms_px == pytest.approx(math.sqrt(15 / 29), abs=1e-9)
    assert la.mean_px == pytest.approx(15 / 29, abs=1e-9) and la.max_px == pytest.approx(1.0, abs=1e-9)
    assert la.n_heldout == 3 and la.rms_heldout_px == pytest.approx(math.sqrt(2 / 3), abs=1e-9)  # beads 0, 2 at 1 px
    d = rep.to_dict()
    assert d["views"][1]["residuals"][5] == [None, None]
    assert rep.rms_px == pytest.approx(math.sqrt((30 * 0.25 + 15) / 59), abs=1e-9)


def test_reprojection_error_rejects_bad_shapes(tilted_geometry, beads):
    pred = tilted_geometry.project_points(beads).numpy()
    with pytest.raises(ValueError, match="observed has 1 view"):
        reprojection_error(tilted_geometry, beads, [pred[0]])
    with pytest.raises(ValueError, match=r"observed\[1\] must have shape \(30, 2\)"):
        reprojection_error(tilted_geometry, beads, [pred[0], pred[1][:5]])
    with pytest.raises(ValueError, match="points must have shape"):
        reprojection_error(tilted_geometry, beads[:, :2], pred)


def test_match_to_design_handles_permutation_spurious_and_missing():
    rng = np.random.default_rng(0)
    pred = rng.uniform(0, 500, (20, 2))
    det = pred + rng.normal(0, 0.5, pred.shape)
    keep = np.ones(20, bool)
    keep[[4, 11]] = False  # two beads not detected
    blobs = np.concatenate([det[keep], [[1000.0, 1000.0], [-50.0, 3.0]]])  # plus two spurious blobs
    blobs = blobs[rng.permutation(len(blobs))]
    m = match_to_design(pred, blobs, max_distance_px=4.0)
    assert np.isnan(m[[4, 11]]).all()
    assert np.allclose(m[keep], det[keep])
    with pytest.raises(ValueError, match="max_distance_px"):
        match_to_design(pred, blobs, 0.0)


def test_triangulation_recovers_points_exactly(tilted_geometry, beads):
    obs = tilted_geometry.project_points(beads).numpy()
    X = triangulate(tilted_geometry, obs)
    assert np.abs(X - beads).max() < 1e-6
    obs[0, 2] = np.nan  # seen in one view only -> no 3D point
    X = triangulate(tilted_geometry, obs)
    assert np.isnan(X[2]).all() and np.isfinite(X[3]).all()


def test_triangulation_with_noise_is_the_least_squares_point(tilted_geometry, beads):
    rng = np.random.default_rng(1)
    obs = tilted_geometry.project_points(beads).numpy() + rng.normal(0, 0.1, (2, len(beads), 2))
    X = triangulate(tilted_geometry, obs)
    # the refined point minimises the reprojection error: nudging it increases the error
    def cost(x):
        return float(((tilted_geometry.project_points(x).numpy() - obs) ** 2).sum())
    base = cost(X)
    for axis in range(3):
        for sign in (-1, 1):
            Y = X.copy()
            Y[:, axis] += sign * 1e-3
            assert cost(Y) > base
    # 0.1 px noise at 0.4 mm pixels and magnification 1.5 -> a few hundredths of a mm
    err = np.linalg.norm(X - beads, axis=1)
    assert 0.005 < np.sqrt(np.mean(err**2)) < 0.1


def test_rigid_align_matches_scipy(beads):
    R_true = Rotation.from_euler("zyx", [10, -5, 3], degrees=True).as_matrix()
    t_true = np.array([3.0, -2.0, 7.0])
    target = beads @ R_true.T + t_true
    R, t, aligned = rigid_align(beads, target)
    assert np.allclose(R, R_true, atol=1e-10) and np.allclose(t, t_true, atol=1e-9)
    assert np.allclose(aligned, target, atol=1e-9)
    rot, _ = Rotation.align_vectors(target - target.mean(0), beads - beads.mean(0))
    assert np.allclose(rot.as_matrix(), R, atol=1e-9)
    with pytest.raises(ValueError, match="at least 3"):
        rigid_align(beads[:2], target[:2])


def test_triangulation_error_aligned_and_unaligned(tilted_geometry, beads):
    obs = tilted_geometry.project_points(beads).numpy()
    shifted = beads + np.array([1.0, 0.0, 0.0])  # design known only up to pose
    te = triangulation_error(tilted_geometry, obs, shifted)
    assert te.aligned and te.rms_mm < 1e-6 and te.n == len(beads)
    assert te.rms_unaligned_mm == pytest.approx(1.0, abs=1e-6)
    te = triangulation_error(tilted_geometry, obs, shifted, align=False)
    assert te.rms_mm == pytest.approx(1.0, abs=1e-6)
    # a wrong geometry (source-to-detector off by 15 mm in one view) shows up in 3D
    wrong = tp.BiplanarGeometry(tilted_geometry.grid, [tilted_geometry.parameters[0].replace(
        source_to_detector=tilted_geometry.parameters[0].source_to_detector + 15.0), tilted_geometry.parameters[1]])
    assert triangulation_error(wrong, obs, beads).rms_mm > 0.1


def test_projection_jacobian_sanity(tilted_geometry):
    # triangulate relies on project_points accepting float64 tensors with autograd
    x = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    tilted_geometry.project_points(x).sum().backward()
    assert torch.isfinite(x.grad).all()
