"""Backend ``"reference"``: exact radiological path lengths (Siddon's method), vectorised.

Model: the volume is piecewise constant on its voxels (zero outside the box). The line
integral of a ray is the sum over the voxels it crosses of (voxel value) x (length of the
ray inside that voxel). For each ray the parameters where it crosses every x, y and z
voxel plane are computed, clipped to the part of the ray inside the box and between the
source and the pixel, and sorted; each
pair of consecutive crossings bounds one voxel segment, found from its midpoint.

This is slow (it holds ``nx + ny + nz + 3`` crossings per ray) but exact for the voxel
model, which makes it the ground truth other backends are tested against. The adjoint
scatters ``cotangent x length`` into the same voxels (``index_add_``), so it is exactly
the transpose. Gradients with respect to the view vectors flow through the crossing
parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .chunked import ChunkedBackend
from .raymarch import _pixel_rays, _slab_interval

DEFAULT_CHUNK_ENTRIES = 2**20


@dataclass
class _Chunk:
    pixels: torch.Tensor


class SiddonBackend(ChunkedBackend):
    """Exact voxel path lengths (Siddon), a :class:`~tomoprior.projectors.ChunkedBackend`.

    Parameters: ``chunk_entries`` (crossings held at once).
    """

    name = "reference"

    def __init__(self, chunk_entries: int = DEFAULT_CHUNK_ENTRIES):
        if isinstance(chunk_entries, bool) or not isinstance(chunk_entries, int) or chunk_entries < 1:
            raise ValueError(f"chunk_entries must be a positive integer, got {chunk_entries!r}")
        self.chunk_entries = chunk_entries

    def describe(self) -> dict:
        return {"backend": self.name, "model": "piecewise-constant voxels, exact path lengths"}

    def chunk_memory(self, batch, itemsize):
        # about 20 float64 / int64 arrays of the crossings, plus the gathered values
        return self.chunk_entries * (160 + 16 * batch)

    @staticmethod
    def _box(grid, device):
        lo_t, hi_t = grid.bounds()
        lo = torch.tensor(lo_t, dtype=torch.float64, device=device)
        hi = torch.tensor(hi_t, dtype=torch.float64, device=device)
        return lo, hi

    def plan_view(self, grid, shape, vector):
        vec = vector.to(torch.float64)
        lo, hi = self._box(grid, vec.device)
        s, e, length = _pixel_rays(shape, vec, None)
        t0, t1 = _slab_interval(s, e, lo, hi, length)
        pixels = torch.nonzero(t1 > t0).flatten()
        per_ray = sum(grid.shape) + 3
        per_chunk = max(1, self.chunk_entries // per_ray)
        return [_Chunk(pixels[i:i + per_chunk]) for i in range(0, pixels.numel(), per_chunk)]

    def _segments(self, grid, shape, vector, chunk):
        """Flat voxel indices ``(R, M)`` and segment lengths ``(R, M)`` (mm) of a chunk."""
        vec = vector.to(torch.float64)
        device = vec.device
        lo, hi = self._box(grid, device)
        s, e, length = _pixel_rays(shape, vec, chunk.pixels)
        t0, t1 = _slab_interval(s, e, lo, hi, length)
        t1 = torch.maximum(t1, t0)
        nx, ny, nz = grid.shape_xyz
        crossings = [t0[:, None], t1[:, None]]
        for axis, n in enumerate((nx, ny, nz)):
            sp = grid.spacing_xyz[axis]
            planes = lo[axis] + sp * torch.arange(n + 1, dtype=torch.float64, device=device)
            ea = e[:, axis:axis + 1]
            zero = ea == 0
            safe = torch.where(zero, torch.ones_like(ea), ea)
            t = (planes[None, :] - s[None, axis:axis + 1]) / safe
            t = torch.where(zero, t1[:, None].expand_as(t), t)
            crossings.append(torch.minimum(torch.maximum(t, t0[:, None]), t1[:, None]))
        t_all = torch.cat(crossings, dim=1)
        t_sorted, _ = torch.sort(t_all, dim=1)
        lengths = t_sorted[:, 1:] - t_sorted[:, :-1]
        mid = 0.5 * (t_sorted[:, 1:] + t_sorted[:, :-1]).detach()
        pos = s.detach()[None, None, :] + mid[..., None] * e.detach()[:, None, :]
        spacing = torch.tensor(grid.spacing_xyz, dtype=torch.float64, device=device)
        n_xyz = torch.tensor((nx, ny, nz), device=device)
        idx = torch.floor((pos - lo) / spacing).long()
        idx = torch.minimum(torch.maximum(idx, torch.zeros_like(idx)), n_xyz - 1)
        flat = (idx[..., 2] * ny + idx[..., 1]) * nx + idx[..., 0]
        return flat, lengths

    def chunk_forward(self, volume, grid, shape, vector, chunk):
        flat, lengths = self._segments(grid, shape, vector, chunk)
        b = volume.shape[0]
        vals = volume.reshape(b, -1)[:, flat.reshape(-1)].reshape(b, *flat.shape)
        return (vals.to(lengths.dtype) * lengths).sum(-1).to(volume.dtype)

    def chunk_adjoint(self, cotangent, grid, shape, vector, chunk, out):
        with torch.no_grad():
            flat, lengths = self._segments(grid, shape, vector, chunk)
            b = out.shape[0]
            contrib = cotangent.to(torch.float64)[:, :, None] * lengths
            acc = out.view(b, -1)
            acc.index_add_(1, flat.reshape(-1), contrib.reshape(b, -1).to(out.dtype))
