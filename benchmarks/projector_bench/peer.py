"""The plain ``grid_sample`` peer: the projector anyone would write first.

Every pixel ray is sampled at a fixed number of points spread uniformly between the source-
and detector-side ends of the volume's bounding sphere (no per-ray clipping), all at once
(in big chunks) through one trilinear ``torch.nn.functional.grid_sample``, and summed times
the step. Samples per mm are the same as tomoprior's default (half-voxel steps). Its
gradients are autograd's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812 (the usual alias)


def _view_rays(view) -> tuple[torch.Tensor, torch.Tensor]:
    """Source ``(3,)`` and unit directions ``(rows*cols, 3)`` (float64) of every pixel of a view."""
    s = view.source.detach().double()
    c = view.detector_center.detach().double()
    u = view.u.detach().double()
    v = view.v.detach().double()
    rows, cols = view.shape
    rr = torch.arange(rows, dtype=torch.float64) - (rows - 1) / 2
    cc = torch.arange(cols, dtype=torch.float64) - (cols - 1) / 2
    pixels = c + rr[:, None, None] * v + cc[None, :, None] * u  # (rows, cols, 3)
    d = pixels.reshape(-1, 3) - s
    return s, d / torch.linalg.norm(d, dim=1, keepdim=True)


@dataclass(frozen=True)
class SphereSampling:
    """Fixed sampling of the peer: ``count`` points over the bounding sphere's diameter."""

    radius: float  # mm
    count: int
    step: float  # mm, = 2 radius / (count - 1)


def sphere_sampling(grid, step_voxels: float = 0.5) -> SphereSampling:
    radius = 0.5 * math.sqrt(sum(e * e for e in grid.extent_mm))
    target = step_voxels * min(grid.spacing)
    count = math.ceil(2 * radius / target) + 1
    return SphereSampling(radius, count, 2 * radius / (count - 1))


def grid_sample_project(volume: torch.Tensor, geom, step_voxels: float = 0.5,
                        chunk_samples: int = 2**23) -> torch.Tensor:
    """The naive peer: trilinear ``grid_sample`` on a fixed lattice per ray.

    Shapes: ``(nz, ny, nx)`` float32 -> ``(views, rows, cols)`` line integrals (mm x 1/mm).
    Differentiable in ``volume`` by autograd. ``chunk_samples`` only bounds the memory of
    the coordinates in one ``grid_sample`` call.
    """
    grid = geom.grid
    if min(grid.shape) < 2:
        raise ValueError("the grid_sample peer needs at least two voxels along every axis")
    sampling = sphere_sampling(grid, step_voxels)
    center = torch.tensor(grid.center, dtype=torch.float64)
    n = torch.tensor(grid.shape_xyz, dtype=torch.float64)
    sp = torch.tensor(grid.spacing_xyz, dtype=torch.float64)
    to_unit = 2.0 / ((n - 1) * sp)  # world offset from the centre -> grid_sample coordinate
    fractions = torch.linspace(0.0, 1.0, sampling.count, dtype=volume.dtype)
    vol5 = volume[None, None]
    per_chunk = max(1, chunk_samples // sampling.count)
    images = []
    for view in geom.views:
        s, e = _view_rays(view)
        t_mid = e @ (center - s)  # the ray's point nearest the sphere's centre
        near = s + (t_mid - sampling.radius)[:, None] * e
        far = s + (t_mid + sampling.radius)[:, None] * e
        a = ((near - center) * to_unit).to(volume.dtype)
        b = ((far - near) * to_unit).to(volume.dtype)
        parts = []
        for start in range(0, a.shape[0], per_chunk):
            aa, bb = a[start:start + per_chunk], b[start:start + per_chunk]
            coords = aa[:, None, :] + fractions[None, :, None] * bb[:, None, :]  # (R, K, 3)
            samples = F.grid_sample(vol5, coords[None, :, :, None, :], mode="bilinear",
                                    padding_mode="zeros", align_corners=True)
            parts.append(samples[0, 0, :, :, 0].sum(-1) * sampling.step)
        images.append(torch.cat(parts).reshape(view.shape))
    return torch.stack(images)
