"""MV3D-C orientation: each view branch's (depth, row, col) axes land on the right CT axes,
checked with an asymmetric blob against positions computed directly from the view vectors."""

from __future__ import annotations

import math

import pytest
import tomoprior as tp
import torch

from psctnet.axes import view_frame
from psctnet.lifting import detector_coords_of_points, frame_voxel_world


def _geometry(primaries_deg, n=16):
    grid = tp.VolumeGrid((n, n, n), (192.0 / n,) * 3)
    params = [tp.ViewParameters(name=f"p{a}", primary_angle=math.radians(a)).binned(32) for a in primaries_deg]
    return tp.Geometry(grid, [p.to_view() for p in params])


def _blob_volume(n, k, j, i):
    vol = torch.zeros(1, 1, n, n, n)
    vol[0, 0, k, j, i] = 1.0
    return vol


def _expected_frame_index(view, grid, xyz):
    """Frame index (depth, row, col) of a world point, from the view vectors alone: the grid
    is cubic and centred, so index = centre + (p . axis) / spacing along beam, v and u."""
    n = grid.shape[0]
    h = grid.spacing[0]
    beam = -view.normal.double()
    v = view.v.double() / torch.linalg.norm(view.v.double())
    u = view.u.double() / torch.linalg.norm(view.u.double())
    p = torch.tensor(xyz, dtype=torch.float64) - torch.tensor(grid.center, dtype=torch.float64)
    return tuple(round((n - 1) / 2 + float(p @ a) / h) for a in (beam, v, u))


def test_default_biplanar_depth_axes(geom32):
    frontal, lateral = (view_frame(v) for v in geom32.views)
    assert frontal.depth_axis == "y"  # PA frontal: the beam runs along y (posterior -> anterior)
    assert lateral.depth_axis == "x"  # left lateral: the beam runs along x (right -> left)
    # rows run to the feet (-z) in both; columns along +x (frontal) and +y (lateral)
    assert frontal.ct_dims == (1, 0, 2) and frontal.flips == (True, True, False)
    assert lateral.ct_dims == (2, 0, 1) and lateral.flips == (False, True, False)


@pytest.mark.parametrize("primaries", [(0, 90), (180, -90), (0, -90, 90, 180)])
def test_asymmetric_blob_lands_on_the_right_axes(primaries):
    n = 16
    geom = _geometry(primaries, n)
    k, j, i = 3, 12, 5  # off-centre in z, y and x by different amounts
    vol = _blob_volume(n, k, j, i)
    xyz = geom.grid.voxel_center(k, j, i)
    for view in geom.views:
        frame = view_frame(view)
        in_view = frame.to_view(vol)
        got = tuple(int(t) for t in torch.nonzero(in_view[0, 0])[0])
        assert got == _expected_frame_index(view, geom.grid, xyz), view.name
        # the blob's detector column/row order agrees: its projection lies on the side the
        # frame's col/row index says (relative to the grid centre's projection)
        pc = geom.project_points([xyz, geom.grid.center])[geom.views.index(view)]
        _, r, c = got
        assert (pc[0, 0] - pc[1, 0]) * (c - (n - 1) / 2) > 0
        assert (pc[0, 1] - pc[1, 1]) * (r - (n - 1) / 2) > 0
        # round trip
        torch.testing.assert_close(frame.to_ct(in_view), vol)


def test_views_agree_after_fusion():
    """A blob seen in each view branch (placed where that view says) fuses back to one blob."""
    n = 16
    geom = _geometry((0, 90), n)
    k, j, i = 2, 9, 13
    xyz = geom.grid.voxel_center(k, j, i)
    fused = torch.zeros(1, 1, n, n, n)
    for view in geom.views:
        branch = torch.zeros(1, 1, n, n, n)
        branch[(0, 0, *_expected_frame_index(view, geom.grid, xyz))] = 1.0
        fused += view_frame(view).to_ct(branch) / 2
    assert float(fused[0, 0, k, j, i]) == 1.0 and float(fused.sum()) == 1.0


def test_non_cubic_frame_shapes(geom32):
    frontal, lateral = (view_frame(v) for v in geom32.views)
    assert frontal.frame_shape((4, 5, 6)) == (5, 4, 6)
    assert lateral.frame_shape((4, 5, 6)) == (6, 4, 5)
    t = torch.randn(2, 3, 4, 5, 6)
    for fr in (frontal, lateral):
        assert fr.to_view(t).shape[2:] == fr.frame_shape((4, 5, 6))
        torch.testing.assert_close(fr.to_ct(fr.to_view(t)), t)


def test_oblique_view_is_rejected():
    geom = _geometry((0, 45))
    with pytest.raises(ValueError, match=r"45\.0 degrees from the nearest volume axis.*no config flag") as info:
        view_frame(geom.views[1])
    assert "use_mv3dc" not in str(info.value)  # the flag does not lift the restriction: never suggest it
    # 30 degrees off the axes is accepted and snaps to the nearest axis
    assert view_frame(_geometry((0, 60)).views[1]).depth_axis == view_frame(_geometry((0, 90)).views[1]).depth_axis


def test_agp_query_positions_project_where_the_voxels_are(geom32):
    grid = geom32.grid.with_shape((4, 4, 4))
    for view in geom32.views:
        frame = view_frame(view)
        world = frame_voxel_world(frame, grid)  # (64, 3) in the view frame's raster order
        uv = detector_coords_of_points(view, world).reshape(4, 4, 4, 2)  # (depth, row, col, uv)
        # within one view frame, u grows with the col index and v with the row index
        assert bool((uv[:, :, 1:, 0] > uv[:, :, :-1, 0]).all())
        assert bool((uv[:, 1:, :, 1] > uv[:, :-1, :, 1]).all())
        # and the centre of the grid (the isocenter) projects to the detector centre
        centre = detector_coords_of_points(view, torch.zeros(1, 3, dtype=torch.float64))
        assert float(centre.abs().max()) < 1e-6
