"""DiffDRR camera <-> View: round trips always; DiffDRR's own rays, point projection and
rendering when DiffDRR is importable (it is an optional peer, not a dependency)."""

import types

import numpy as np
import pytest
import torch

import tomoprior as tp
from tests.conftest import random_geometry
from tomoprior.interop import diffdrr as td

DIFFDRR_SKIP = "DiffDRR is not installed (pip install diffdrr; it pulls its own torch build)"


def _apply(m, pts):
    return pts @ m[:3, :3].T + m[:3, 3]


@pytest.mark.parametrize("orientation", ["AP", "PA", None])
def test_round_trip(orientation, small_grid):
    world = td.diffdrr_world_from_lps(small_grid)
    for seed in range(3):
        for view in random_geometry(seed, small_grid).views:
            cam = td.to_diffdrr(view, orientation=orientation, world_from_lps=world)
            assert (cam.height, cam.width) == view.shape
            assert (cam.dely, cam.delx) == pytest.approx(view.pixel_pitch)
            assert cam.sdd == pytest.approx(float(view.source_to_detector))
            again = td.from_diffdrr(cam.pose, orientation=orientation, world_from_lps=world, name=view.name,
                                    **cam.intrinsics())
            assert again.name == view.name
            assert float((again.vector - view.vector).abs().max()) < 1e-9  # mm


def test_documented_camera_model(small_grid):
    """Pixel (r, c) sits at pose @ reorient @ (+-delx (c - (W-1)/2) + x0, -dely (r - (H-1)/2) + y0, sdd)."""
    view = random_geometry(7, small_grid).views[1]
    world = td.diffdrr_world_from_lps(small_grid)
    cam = td.to_diffdrr(view, world_from_lps=world)
    # LPS -> RAS is a half turn about z (no mirror): tomoprior's u x v points to the source, which in
    # DiffDRR's camera is reverse_x_axis=False
    assert cam.reverse_x_axis is False
    m = cam.pose @ td.ORIENTATIONS["AP"]
    r, c = np.meshgrid(np.arange(cam.height), np.arange(cam.width), indexing="ij")
    cam_pts = np.stack([cam.delx * (c - (cam.width - 1) / 2) + cam.x0, -cam.dely * (r - (cam.height - 1) / 2) + cam.y0,
                        np.full(r.shape, cam.sdd)], axis=-1)
    want = _apply(m, cam_pts.reshape(-1, 3))
    ours = _apply(world, view.pixel_positions().reshape(-1, 3).numpy())
    assert np.abs(want - ours).max() < 1e-9
    assert np.abs(m[:3, 3] - _apply(world, view.source.numpy()[None])[0]).max() < 1e-9
    R, translation = cam.rotation_translation()
    assert np.allclose(R @ translation, cam.pose[:3, 3])


def test_refusals(small_grid):
    frontal = tp.BiplanarGeometry.from_parameters(binning=8).frontal
    with pytest.raises(ValueError, match="reverse_x_axis"):
        td.to_diffdrr(frontal, reverse_x_axis=True)
    mirrored = tp.View(frontal.source, frontal.detector_center, -frontal.u, frontal.v, frontal.shape)
    assert td.to_diffdrr(mirrored).reverse_x_axis is True
    skewed = tp.View(frontal.source, frontal.detector_center, frontal.u + 0.05 * frontal.v, frontal.v, frontal.shape)
    with pytest.raises(ValueError, match="perpendicular"):
        td.to_diffdrr(skewed)
    with pytest.raises(ValueError, match="orientation"):
        td.to_diffdrr(frontal, orientation="LR")
    with pytest.raises(ValueError, match="rigid"):
        td.from_diffdrr(2 * np.eye(4), sdd=1000.0, height=4, width=4, delx=1.0)
    with pytest.raises(ValueError, match="sdd"):
        td.from_diffdrr(np.eye(4), sdd=-5.0, height=4, width=4, delx=1.0)
    with pytest.raises(ValueError, match="pixel_pitch"):
        td.from_diffdrr(np.eye(4), sdd=1000.0, height=4, width=4, delx=0.0)


def _detector(cam, orientation):
    from diffdrr.detector import Detector

    return Detector(cam.sdd, cam.height, cam.width, cam.delx, cam.dely, cam.x0, cam.y0,
                    torch.as_tensor(td.ORIENTATIONS[orientation]), reverse_x_axis=cam.reverse_x_axis)


@pytest.mark.parametrize("orientation", ["AP", "PA", None])
def test_against_diffdrr_rays_and_point_projection(orientation, small_grid):
    pytest.importorskip("diffdrr.drr", reason=DIFFDRR_SKIP)
    from diffdrr.drr import DRR
    from diffdrr.pose import RigidTransform

    world = td.diffdrr_world_from_lps(small_grid)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # DiffDRR builds its detector in the default dtype
    try:
        for view in random_geometry(11, small_grid).views:
            cam = td.to_diffdrr(view, orientation=orientation, world_from_lps=world)
            det = _detector(cam, orientation)
            pose = RigidTransform(torch.as_tensor(cam.pose)[None])
            source, target = det(pose, None)
            assert np.abs(target[0].numpy() - _apply(world, view.pixel_positions().reshape(-1, 3).numpy())).max() < 1e-9
            assert np.abs(source[0, 0].numpy() - _apply(world, view.source.numpy()[None])[0]).max() < 1e-9
            pts = np.random.default_rng(0).uniform(-50, 50, (30, 3))
            theirs = DRR.perspective_projection(types.SimpleNamespace(detector=det), pose,
                                                torch.as_tensor(_apply(world, pts))[None])[0].numpy()
            assert np.abs(theirs - 0.5 - view.project_points(pts).numpy()).max() < 1e-9  # DiffDRR px = ours + 0.5
    finally:
        torch.set_default_dtype(default)


def test_diffdrr_renders_what_tomoprior_projects():
    """DiffDRR's Siddon DRR of a volume equals tomoprior's exact (reference) projection of it."""
    pytest.importorskip("diffdrr.drr", reason=DIFFDRR_SKIP)
    from diffdrr.drr import DRR
    from diffdrr.pose import RigidTransform
    from torchio import ScalarImage, Subject

    grid = tp.VolumeGrid((10, 12, 14), (6.0, 5.0, 4.0), (3.0, -2.0, 5.0))
    density = np.random.default_rng(0).uniform(0, 0.1, grid.shape)
    density[4, 7, 3] = density[2, 3, 10] = 1.0
    geom = tp.BiplanarGeometry.from_parameters(binning=32, grid=grid)
    world = td.diffdrr_world_from_lps(grid)
    affine = world @ grid.affine()  # (i, j, k) -> DiffDRR world: RAS, centred as read(center_volume=True) does
    image = ScalarImage(tensor=torch.as_tensor(density).permute(2, 1, 0)[None].float(), affine=affine)
    subject = Subject(volume=image, density=image, mask=None, orientation="AP", fiducials=None,
                      reorient=torch.as_tensor(td.ORIENTATIONS["AP"], dtype=torch.float32))
    ours = tp.project(torch.as_tensor(density), geom, backend="reference").numpy()
    for k, view in enumerate(geom.views):
        cam = td.to_diffdrr(view, world_from_lps=world)
        drr = DRR(subject, **cam.intrinsics(), renderer="siddon")
        theirs = drr(RigidTransform(torch.as_tensor(cam.pose, dtype=torch.float32)[None])).detach().double().numpy()
        assert np.abs(theirs[0, 0] - ours[k]).max() < 1e-5 * ours[k].max() + 1e-4  # float32 rendering
