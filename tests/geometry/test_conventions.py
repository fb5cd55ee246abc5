"""Pixel and voxel centres, and exact point projection onto tilted, offset detectors."""

import math
import warnings

import numpy as np
import pytest
import torch

import tomoprior as tp
from tests.conftest import random_geometry


def test_voxel_centres_follow_design_formula():
    grid = tp.VolumeGrid(shape=(3, 4, 5), spacing=(3.0, 2.0, 1.0), center=(10.0, -20.0, 30.0))
    centres = grid.voxel_centers()
    assert centres.shape == (3, 4, 5, 3)
    for k, j, i in [(0, 0, 0), (2, 3, 4), (1, 2, 0)]:
        expected = (10.0 + (i - 2.0) * 1.0, -20.0 + (j - 1.5) * 2.0, 30.0 + (k - 1.0) * 3.0)
        assert centres[k, j, i].tolist() == pytest.approx(expected)
        assert grid.voxel_center(k, j, i) == pytest.approx(expected)
    # the grid centre is the mean of the voxel centres; the bounds are half a voxel out
    assert centres.reshape(-1, 3).mean(0).tolist() == pytest.approx([10.0, -20.0, 30.0])
    lo, hi = grid.bounds()
    assert lo == pytest.approx((10 - 2.5, -20 - 4.0, 30 - 4.5))
    assert hi == pytest.approx((10 + 2.5, -20 + 4.0, 30 + 4.5))
    # affine (i, j, k) -> (x, y, z) and world_to_index are inverse
    a = grid.affine()
    assert (a @ np.array([4, 3, 2, 1.0]))[:3] == pytest.approx(centres[2, 3, 4].numpy())
    assert grid.world_to_index(centres[2, 3, 4]).tolist() == pytest.approx([2, 3, 4])


def test_pixel_centres_follow_design_formula():
    view = tp.View(source=(0, 500, 0), detector_center=(1, -300, 2), u=(0.5, 0, 0), v=(0, 0, -0.25), shape=(4, 6))
    pos = view.pixel_positions()
    assert pos.shape == (4, 6, 3)
    for r, c in [(0, 0), (3, 5), (1, 4)]:
        expected = np.array([1, -300, 2]) + (c - 2.5) * np.array([0.5, 0, 0]) + (r - 1.5) * np.array([0, 0, -0.25])
        assert pos[r, c].numpy() == pytest.approx(expected)
    # pixel (0,0) -> (0,1) is u, (0,0) -> (1,0) is v
    assert (pos[0, 1] - pos[0, 0]).tolist() == pytest.approx([0.5, 0, 0])
    assert (pos[1, 0] - pos[0, 0]).tolist() == pytest.approx([0, 0, -0.25])
    assert view.pixel_pitch == pytest.approx((0.25, 0.5))
    origins, dirs = view.pixel_rays()
    assert torch.allclose(origins + dirs, pos)


def _intersect_numpy(view: tp.View, x: np.ndarray) -> np.ndarray:
    """Independent reference: solve s + t (x - s) = c + a u + b v by a 3x3 linear solve."""
    vec = view.vector.detach().numpy()
    s, c, u, v = vec[0:3], vec[3:6], vec[6:9], vec[9:12]
    out = []
    for p in x:
        a, b, _t = np.linalg.solve(np.stack([u, v, -(p - s)], axis=1), s - c)
        out.append([a + (view.cols - 1) / 2, b + (view.rows - 1) / 2])
    return np.array(out)


@pytest.mark.parametrize("seed", range(5))
def test_project_points_matches_ray_plane_intersection(seed):
    grid = tp.VolumeGrid((8, 8, 8), (20, 20, 20))
    geom = random_geometry(seed, grid, offsets_mm=10.0, tilt_deg=3.0, rotation_deg=10.0)
    rng = np.random.default_rng(100 + seed)
    pts = rng.uniform(-80, 80, size=(50, 3))
    proj = geom.project_points(pts)
    assert proj.shape == (2, 50, 2)
    for i, view in enumerate(geom.views):
        assert proj[i].numpy() == pytest.approx(_intersect_numpy(view, pts), abs=1e-8)
        # and the detector point of those pixel coordinates is on the source->point line
        det = view.pixel_positions(proj[i, :, 1], proj[i, :, 0]).numpy()
        s = view.source.numpy()
        cross = np.cross(det - s, pts - s)
        assert np.abs(cross).max() / np.linalg.norm(det - s, axis=1).max() < 1e-9
        # the projection matrix gives the same pixels
        hom = np.c_[pts, np.ones(len(pts))] @ view.projection_matrix().numpy().T
        assert hom[:, :2] / hom[:, 2:] == pytest.approx(proj[i].numpy(), abs=1e-8)


def test_project_points_of_a_pixel_returns_that_pixel():
    geom = random_geometry(3, tp.VolumeGrid((8, 8, 8), (20, 20, 20)))
    view = geom.views[0]
    rows = torch.tensor([0.0, 7.0, 20.5, 39.0])
    cols = torch.tensor([0.0, 47.0, 3.25, 11.0])
    pos = view.pixel_positions(rows, cols)
    half = 0.5 * (pos + view.source)  # a point between source and detector
    for pts in (pos, half):
        pc = view.project_points(pts)
        assert pc[:, 0].tolist() == pytest.approx(cols.tolist(), abs=1e-8)
        assert pc[:, 1].tolist() == pytest.approx(rows.tolist(), abs=1e-8)


def test_detector_offset_in_pixels():
    p = tp.ViewParameters(u0=3.0, v0=-2.0, pixel_pitch=(0.5, 0.25), detector_shape=(100, 200))
    view = p.to_view()
    col, row = view.principal_point.tolist()
    assert col == pytest.approx(99.5 + 3.0 / 0.25)
    assert row == pytest.approx(49.5 - 2.0 / 0.5)
    # the isocenter lies on the central ray, so it projects to the principal point (the untilted
    # detector's principal point is its centre shifted by the detector offset)
    iso = view.project_points([[0.0, 0.0, 0.0]])[0]
    assert iso.tolist() == pytest.approx([col, row])
    assert float(view.source_to_detector) == pytest.approx(1500.0)


def test_points_behind_the_source_have_no_image():
    view = tp.ViewParameters(detector_shape=(10, 10)).to_view()
    with pytest.warns(UserWarning, match="behind the source"):
        out = view.project_points([[0.0, 0.0, 0.0], [0.0, 2000.0, 0.0]])
    assert torch.isfinite(out[0]).all()
    assert torch.isnan(out[1]).all()


def test_points_with_nan_coordinates_are_refused_not_called_behind_the_source():
    # were projected to NaN with the warning "lie on or behind the source plane"
    geom = tp.BiplanarGeometry.from_parameters(binning=16)
    pts = torch.zeros(7, 3)
    pts[2, 1] = float("nan")
    pts[5, 0] = float("inf")
    with pytest.raises(ValueError, match=r"NaN or infinite coordinates in 2 point\(s\) \(rows 2, 5\)"):
        geom.project_points(pts)
    with pytest.raises(ValueError, match="NaN or infinite"):
        geom.frontal.project_points(pts.numpy())
    assert torch.isfinite(geom.project_points(pts[:2])).all()


def test_default_biplanar_setup_is_pa_frontal_and_left_lateral():
    geom = tp.BiplanarGeometry.from_parameters()
    f, lat = geom.frontal, geom.lateral
    assert f.source.tolist() == pytest.approx([0, 1000, 0])  # posterior: PA
    assert f.detector_center.tolist() == pytest.approx([0, -500, 0], abs=1e-9)
    assert lat.source.tolist() == pytest.approx([-1000, 0, 0], abs=1e-9)  # source right, detector left
    assert lat.detector_center.tolist() == pytest.approx([500, 0, 0], abs=1e-9)
    assert f.shape == (1536, 1536) and f.pixel_pitch == pytest.approx((0.2, 0.2))
    # frontal image: columns toward the patient's left, rows toward the feet
    assert f.u.tolist() == pytest.approx([0.2, 0, 0], abs=1e-12)
    assert f.v.tolist() == pytest.approx([0, 0, -0.2], abs=1e-12)
    # normal points back to the source; magnification 1.5 at the isocenter
    for view in geom.views:
        assert float(torch.dot(view.normal, view.source - view.detector_center)) > 0
        assert tp.geometry.magnification_at(view) == pytest.approx(1.5)
        assert tp.geometry.isocenter_pixel_size(view) == pytest.approx((0.2 / 1.5, 0.2 / 1.5))
    # a 24-month head (about 170 x 140 x 150 mm) fits in both views
    head = np.array([[sx * 70, sy * 85, sz * 75] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    pix = geom.project_points(head)
    assert float(pix.min()) > 0 and float(pix.max()) < 1535


def test_secondary_angle_is_cranial_positive_and_primary_is_lao_positive():
    cra = tp.ViewParameters(secondary_angle=math.radians(20)).to_view()
    assert float(cra.detector_center[2]) > 0  # detector swings toward the head
    lao = tp.ViewParameters(primary_angle=math.radians(30)).to_view()
    assert float(lao.detector_center[0]) > 0  # detector swings toward the patient's left


def test_detector_rotation_and_tilts():
    base = tp.ViewParameters(detector_shape=(10, 10)).to_view()
    rot = tp.ViewParameters(detector_shape=(10, 10), detector_rotation=math.radians(7)).to_view()
    # in-plane: same normal, u turned by 7 degrees, centre fixed
    assert torch.allclose(rot.normal, base.normal)
    cosang = torch.dot(rot.u, base.u) / (rot.u.norm() * base.u.norm())
    assert math.degrees(math.acos(float(cosang))) == pytest.approx(7.0)
    assert torch.allclose(rot.detector_center, base.detector_center)
    tilt = tp.ViewParameters(detector_shape=(10, 10), detector_tilt_u=math.radians(2)).to_view()
    # tilt about u keeps u, turns the normal by 2 degrees
    assert torch.allclose(tilt.u, base.u)
    ang = math.degrees(math.acos(float(torch.dot(tilt.normal, base.normal))))
    assert ang == pytest.approx(2.0)
    tilt_v = tp.ViewParameters(detector_shape=(10, 10), detector_tilt_v=math.radians(-1.5)).to_view()
    assert torch.allclose(tilt_v.v, base.v)
    assert math.degrees(math.acos(float(torch.dot(tilt_v.normal, base.normal)))) == pytest.approx(1.5)


def test_parameters_to_view_is_differentiable():
    sod = torch.tensor(1000.0, dtype=torch.float64, requires_grad=True)
    sdd = torch.tensor(1500.0, dtype=torch.float64, requires_grad=True)
    view = tp.ViewParameters(source_to_isocenter=sod, source_to_detector=sdd, detector_shape=(4, 4)).to_view()
    (g,) = torch.autograd.grad(view.source[1], sod)
    assert float(g) == pytest.approx(1.0)  # source = iso + sod * (0, 1, 0)
    (g,) = torch.autograd.grad(view.detector_center[1], sdd)
    assert float(g) == pytest.approx(-1.0)


def test_binning():
    p = tp.ViewParameters(detector_shape=(1536, 1536), pixel_pitch=0.2).binned(4)
    assert p.detector_shape == (384, 384)
    assert p.to_view().pixel_pitch == pytest.approx((0.8, 0.8))
    with pytest.raises(ValueError, match="does not divide"):
        p.binned(5)
    # the view-vector twin gives the same view as binning the parameters
    full = tp.ViewParameters(detector_shape=(1536, 1536), pixel_pitch=0.2, u0=1.5, detector_tilt_u=0.01)
    a, b = full.to_view().binned(4), full.binned(4).to_view()
    assert a.shape == b.shape == (384, 384)
    torch.testing.assert_close(a.vector, b.vector)
    with pytest.raises(ValueError, match="does not divide"):
        a.binned(5)
    with pytest.raises(ValueError, match="positive integer"):
        a.binned(0)


def test_view_vector_is_astra_cone_vec_row():
    view = tp.View(source=(1, 2, 3), detector_center=(4, 5, 6), u=(7, 8, 9), v=(1, 0, 0), shape=(2, 2))
    assert view.vector.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 0, 0]
    again = tp.View.from_vector(view.vector, view.shape)
    assert torch.equal(again.vector, view.vector)


def test_missing_view_warns():
    grid = tp.VolumeGrid((8, 8, 8), (1, 1, 1))
    # the detector looks away from the volume (volume is behind the source)
    view = tp.View(source=(0, 100, 0), detector_center=(0, 200, 0), u=(1, 0, 0), v=(0, 0, -1), shape=(8, 8))
    with pytest.warns(tp.GeometryWarning, match="no ray"):
        tp.Geometry(grid, [view])
    # far off to the side
    view = tp.View(source=(0, 100, 0), detector_center=(5000, -100, 0), u=(1, 0, 0), v=(0, 0, -1), shape=(8, 8))
    with pytest.warns(tp.GeometryWarning, match="no ray"):
        tp.Geometry(grid, [view])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tp.BiplanarGeometry.from_parameters(binning=16)  # the default sees the volume
