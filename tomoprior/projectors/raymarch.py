"""Backend ``"torch"``: ray-driven trilinear ray marching with ``grid_sample``.

Model
-----
The volume is the trilinear interpolant of the voxel values at the voxel centres, zero
beyond the outermost centres (it falls linearly to zero over the half voxel outside the
box edge). Each ray is sampled on a lattice of step ``step * min(spacing)`` mm anchored
at the point of the ray closest to the grid centre, restricted to the support of the
interpolant (the box grown by half a voxel) and to the segment from the source to the
pixel (nothing behind the source or beyond the detector counts), and the line integral is
the sum of the samples times the step (midpoint rule).

Anchoring the lattice at a smooth function of the geometry (and not at the entry point)
keeps the projection continuous in the view vectors: a sample that enters or leaves the
support does so where the interpolant is zero (except where a detector cuts through the
volume, a geometry that :class:`~tomoprior.Geometry` warns about). Gradients with respect to the source and
detector vectors are therefore meaningful, which calibration and pose refinement need.

Axes with a single voxel are the exception: there the interpolant is constant across the
slab and the support is the slab itself (thickness one voxel).

Memory
------
Work is done in chunks of rays holding at most ``chunk_samples`` samples. Peak extra
memory per chunk is about ``chunk_samples * (12 + 8 * B)`` bytes in float32 (sample
coordinates plus sampled values for a batch of ``B`` volumes; twice for float64), plus,
for back-projection, ``min(threads, 4)`` volume-sized accumulation buffers. The default
``chunk_samples = 2**22`` keeps this near 100 MB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812 - torch's own idiom

from ..geometry.grid import VolumeGrid
from .chunked import ChunkedBackend

DEFAULT_STEP = 0.5
DEFAULT_CHUNK_SAMPLES = 2**22
#: Upper bound on per-thread accumulation buffers in the adjoint.
MAX_ADJOINT_SPLITS = 4


@dataclass
class _Chunk:
    pixels: torch.Tensor  # (R,) long: flat pixel indices within the view
    k_first: torch.Tensor  # (R,) float64: lattice index of each ray's first sample
    count: torch.Tensor  # (R,) long: samples per ray
    max_count: int
    clipped: bool = False  # some ray ends at its pixel inside the support: mask samples past it


def _grid_constants(grid: VolumeGrid, device):
    """Centre, support half-widths and the world->grid_sample normalisation, in (x, y, z)."""
    center = torch.tensor(grid.center, dtype=torch.float64, device=device)
    n = torch.tensor(grid.shape_xyz, dtype=torch.float64, device=device)
    sp = torch.tensor(grid.spacing_xyz, dtype=torch.float64, device=device)
    # support of the zero-extended trilinear interpolant: (n + 1)/2 voxels from the centre;
    # a single-voxel axis is a constant slab of half-width 1/2 voxel
    half_support = torch.where(n > 1, (n + 1) / 2 * sp, sp / 2)
    # grid_sample(align_corners=True): -1 and +1 are the first and last voxel centres
    inv_half = torch.where(n > 1, 2.0 / ((n - 1).clamp(min=1) * sp), torch.zeros_like(sp))
    return center, half_support, inv_half


def _pixel_rays(shape, vector: torch.Tensor, pixels: torch.Tensor | None):
    """Source ``(3,)``, unit directions ``(R, 3)`` and source-to-pixel lengths ``(R,)`` (mm) of
    the given flat pixel indices (all pixels if None). A ray is the segment from the source
    (t = 0) to its pixel (t = length): nothing behind the source or beyond the detector counts."""
    rows, cols = shape
    s, c, u, v = vector[0:3], vector[3:6], vector[6:9], vector[9:12]
    if pixels is None:
        pixels = torch.arange(rows * cols, device=vector.device)
    r = torch.div(pixels, cols, rounding_mode="floor").to(vector.dtype)
    cc = (pixels % cols).to(vector.dtype)
    p = c + (cc - (cols - 1) / 2)[:, None] * u + (r - (rows - 1) / 2)[:, None] * v
    d = p - s
    length = torch.linalg.norm(d, dim=1)
    return s, d / length[:, None], length


def _slab_interval(s, e, lo, hi, t_max=None):
    """Parametric interval ``[t0, t1]`` of the unit rays ``s + t e`` inside the box ``[lo, hi]``,
    with ``0 <= t0`` (the source) and, if given, ``t1 <= t_max`` ``(R,)`` (the pixel)."""
    zero = e == 0
    safe = torch.where(zero, torch.ones_like(e), e)
    ta = (lo - s) / safe
    tb = (hi - s) / safe
    inside = (s > lo) & (s < hi)
    big = torch.full_like(ta, math.inf)
    tmin_ax = torch.where(zero, torch.where(inside, -big, big), torch.minimum(ta, tb))
    tmax_ax = torch.where(zero, torch.where(inside, big, -big), torch.maximum(ta, tb))
    t0 = tmin_ax.max(dim=-1).values.clamp(min=0.0)
    t1 = tmax_ax.min(dim=-1).values
    if t_max is not None:
        t1 = torch.minimum(t1, t_max)
    return t0, t1


class TorchRaymarchBackend(ChunkedBackend):
    """Trilinear ray marching in pure torch (CPU and CUDA, float32 and float64): a
    :class:`~tomoprior.projectors.ChunkedBackend` (per-chunk ``grid_sample`` kernels).

    Parameters
    ----------
    step : float
        Sampling step along each ray as a fraction of the smallest voxel spacing
        (default 0.5: half a voxel).
    chunk_samples : int
        Upper bound on the samples held in memory at once (default 2**22).
    """

    name = "torch"

    def __init__(self, step: float = DEFAULT_STEP, chunk_samples: int = DEFAULT_CHUNK_SAMPLES):
        try:
            step = float(step)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"step must be a positive number (fraction of a voxel), got {step!r}") from exc
        if not (math.isfinite(step) and step > 0):
            raise ValueError(f"step must be a positive number (fraction of a voxel), got {step!r}")
        if isinstance(chunk_samples, bool) or not isinstance(chunk_samples, int) or chunk_samples < 1:
            raise ValueError(f"chunk_samples must be a positive integer, got {chunk_samples!r}")
        self.step = step
        self.chunk_samples = chunk_samples

    def describe(self) -> dict:
        return {"backend": self.name, "step_voxels": self.step, "chunk_samples": self.chunk_samples}

    def chunk_memory(self, batch, itemsize):
        # coordinates, sampled values (and their gradients in the adjoint), a mask
        return self.chunk_samples * (3 * itemsize + 3 * batch * itemsize + 16)

    def memory_estimate(self, grid, shapes, batch, itemsize, *, adjoint):
        """Base estimate plus the per-thread volume buffers of the adjoint."""
        est = super().memory_estimate(grid, shapes, batch, itemsize, adjoint=adjoint)
        if adjoint:
            est += MAX_ADJOINT_SPLITS * batch * grid.num_voxels * itemsize
        return est

    def step_mm(self, grid: VolumeGrid) -> float:
        return self.step * min(grid.spacing)

    # -- planning (no autograd) ---------------------------------------------------------
    def plan_view(self, grid, shape, vector):
        vec = vector.to(torch.float64)
        device = vec.device
        center, half, _ = _grid_constants(grid, device)
        s, e, length = _pixel_rays(shape, vec, None)
        t0, t_box = _slab_interval(s, e, center - half, center + half)
        t1 = torch.minimum(t_box, length)
        cut = length < t_box  # the detector lies inside the support: the ray stops at its pixel
        dt = self.step_mm(grid)
        tc = e @ (center - s)
        k_first = torch.ceil((t0 - tc) / dt)
        k_last = torch.floor((t1 - tc) / dt)
        count = (k_last - k_first + 1).clamp(min=0)
        hit = count > 0
        pixels = torch.nonzero(hit).flatten()
        if pixels.numel() == 0:
            return []
        counts = count[pixels].long()
        firsts = k_first[pixels]
        cuts = cut[pixels]
        max_count = int(counts.max())
        per_chunk = max(1, self.chunk_samples // max_count)
        chunks = []
        for start in range(0, pixels.numel(), per_chunk):
            sl = slice(start, start + per_chunk)
            c = counts[sl]
            chunks.append(_Chunk(pixels[sl], firsts[sl], c, int(c.max()), bool(cuts[sl].any())))
        return chunks

    # -- kernels ------------------------------------------------------------------------
    def _sample_grid(self, grid, shape, vector, chunk, dtype):
        """grid_sample coordinates ``(R, K, 3)``, the step (mm) and a validity mask ``(R, K)`` or None."""
        vec = vector.to(torch.float64)
        center, _, inv_half = _grid_constants(grid, vec.device)
        s, e, _ = _pixel_rays(shape, vec, chunk.pixels)
        dt = self.step_mm(grid)
        tc = e @ (center - s)
        start = s + (tc + chunk.k_first * dt)[:, None] * e
        a = ((start - center) * inv_half).to(dtype)
        b = (e * (dt * inv_half)).to(dtype)
        j = torch.arange(chunk.max_count, device=vec.device, dtype=dtype)
        coords = torch.addcmul(a[:, None, :], j[None, :, None], b[:, None, :])
        if min(grid.shape) > 1 and not chunk.clipped:
            # samples past a ray's last one lie outside the interpolant's support, where
            # grid_sample returns exactly zero (and zero gradients): no mask is needed
            # (unless a ray stops at its pixel inside the support)
            return coords, dt, None
        mask = (j[None, :] < chunk.count[:, None]).to(dtype)
        return coords, dt, mask

    def chunk_forward(self, volume, grid, shape, vector, chunk):
        coords, dt, mask = self._sample_grid(grid, shape, vector, chunk, volume.dtype)
        r, k = coords.shape[:2]
        vol = volume.unsqueeze(0)  # (1, B, nz, ny, nx): the batch rides in the channel axis
        samples = F.grid_sample(vol, coords.view(1, r, k, 1, 3), mode="bilinear", padding_mode="zeros",
                                align_corners=True)[0, :, :, :, 0]
        if mask is not None:
            samples = samples * mask
        return samples.sum(-1) * dt

    def chunk_adjoint(self, cotangent, grid, shape, vector, chunk, out):
        with torch.no_grad():
            coords, dt, mask = self._sample_grid(grid, shape, vector, chunk, out.dtype)
            r, k = coords.shape[:2]
            b = out.shape[0]
            grad_samples = (cotangent.to(out.dtype) * dt)[:, :, None].expand(b, r, k)  # (B, R, K)
            if mask is not None:
                grad_samples = grad_samples * mask
            # grid_sample's CPU kernel parallelises over its batch axis only: split the rays
            # into per-thread groups, each scattering into its own volume buffer
            splits = max(1, min(torch.get_num_threads(), MAX_ADJOINT_SPLITS, r))
            if out.device.type != "cpu":
                splits = 1
            pad = (-r) % splits
            if pad:
                coords = torch.cat([coords, coords.new_zeros(pad, k, 3)])
                grad_samples = torch.cat([grad_samples, grad_samples.new_zeros(b, pad, k)], dim=1)
            rs = (r + pad) // splits
            grid5 = coords.view(splits, rs, k, 1, 3)
            go = grad_samples.view(b, splits, rs, k).permute(1, 0, 2, 3).unsqueeze(-1).contiguous()
            dummy = out.new_zeros(()).expand(splits, b, *out.shape[1:])
            grad_in, _ = torch.ops.aten.grid_sampler_3d_backward(
                go, dummy, grid5, 0, 0, True, [True, False]
            )
            out += grad_in.sum(0)
