"""What every projector backend provides, and the autograd glue shared by all of them.

A backend splits each view's pixels into chunks (so peak memory is bounded) and supplies
two chunk kernels written in plain torch:

* ``chunk_forward(volume, vector, plan, chunk) -> (B, rays)`` line integrals of one chunk,
  differentiable with respect to the view ``vector`` (12,) by ordinary autograd;
* ``chunk_adjoint(cotangent, vector, plan, chunk, out)`` the exact transpose of
  ``chunk_forward`` in the volume, accumulated into ``out``.

From these, :class:`ProjectFunction` and :class:`BackprojectFunction` build a pair of
autograd functions that are each other's derivative in the volume / projection argument,
so ``project`` and ``backproject`` are differentiable to any order in those arguments.
Gradients with respect to the view vectors use the identity
``d/dvec <w, P(vec)^T y> = d/dvec <P(vec) w, y>``, evaluated chunk by chunk with autograd,
so neither needs the whole sample grid in memory at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..geometry.grid import VolumeGrid


@dataclass
class ViewPlan:
    """Per-view work list: which pixels are traced, in which chunks, with any per-ray data."""

    view_index: int
    shape: tuple[int, int]
    offset: int  # index of this view's first pixel in the flat (all views) pixel axis
    chunks: list = field(default_factory=list)


class Backend:
    """Base class of projector backends.

    Subclasses set :attr:`name`, validate their options in ``__init__`` and implement
    :meth:`plan_view`, :meth:`chunk_forward` and :meth:`chunk_adjoint`.
    """

    name = "base"
    #: Whether the backend's kernels support gradients with respect to the view vectors.
    supports_vector_grad = True

    def __init__(self, **options):
        if options:
            raise ValueError(f"backend {self.name!r} takes no option(s) {sorted(options)}")

    # -- to implement ---------------------------------------------------------------------
    def plan_view(self, grid: VolumeGrid, shape: tuple[int, int], vector: torch.Tensor) -> list:
        raise NotImplementedError

    def chunk_forward(self, volume: torch.Tensor, grid: VolumeGrid, shape, vector: torch.Tensor, chunk) -> torch.Tensor:
        raise NotImplementedError

    def chunk_adjoint(self, cotangent: torch.Tensor, grid: VolumeGrid, shape, vector: torch.Tensor, chunk,
                      out: torch.Tensor) -> None:
        raise NotImplementedError

    def describe(self) -> dict:
        """Settings that change the numbers (recorded in reports and benchmarks)."""
        return {"backend": self.name}

    #: Bytes of planning data per detector pixel of the largest view (per-pixel ray
    #: arrays built at once for a whole view) and per pixel of all views (kept chunk lists).
    plan_bytes_per_view_pixel = 320
    plan_bytes_per_pixel = 24

    def chunk_memory(self, batch: int, itemsize: int) -> int:
        """Bytes of working memory of one chunk (samples, coordinates, gathered values)."""
        return 256 * 2**20

    def memory_estimate(self, grid: VolumeGrid, shapes, batch: int, itemsize: int, *, adjoint: bool) -> int:
        """Estimated peak bytes of one :meth:`forward` (or :meth:`adjoint` if ``adjoint``) call.

        Counts the result, a contiguous copy of the input, the planning arrays and the
        chunk temporaries; :func:`~tomoprior.project` refuses a call that cannot fit
        before it allocates anything. Subclasses with other memory use override it.
        """
        pixels = sum(int(r) * int(c) for r, c in shapes)
        largest = max(int(r) * int(c) for r, c in shapes)
        voxels = grid.num_voxels
        data = batch * (pixels + voxels) * itemsize
        plan = self.plan_bytes_per_view_pixel * largest + self.plan_bytes_per_pixel * pixels
        return data + plan + self.chunk_memory(batch, itemsize)

    # -- drivers (shared) -----------------------------------------------------------------
    def plans(self, grid: VolumeGrid, shapes, vectors: torch.Tensor) -> list[ViewPlan]:
        plans, offset = [], 0
        with torch.no_grad():
            for i, shape in enumerate(shapes):
                plans.append(ViewPlan(i, shape, offset, self.plan_view(grid, shape, vectors[i].detach())))
                offset += shape[0] * shape[1]
        return plans

    def forward(self, volume, grid, shapes, vectors, progress=None) -> torch.Tensor:
        """All views' line integrals, ``(B, total_pixels)``; no autograd."""
        total = sum(r * c for r, c in shapes)
        out = volume.new_zeros((volume.shape[0], total))
        with torch.no_grad():
            for plan in self.plans(grid, shapes, vectors):
                vec = vectors[plan.view_index].detach()
                for chunk in plan.chunks:
                    vals = self.chunk_forward(volume, grid, plan.shape, vec, chunk)
                    out[:, plan.offset + chunk.pixels] = vals.to(out.dtype)
                    if progress is not None:
                        progress.update(1)
        return out

    def adjoint(self, projections, grid, shapes, vectors, progress=None) -> torch.Tensor:
        """Back-projection ``(B, total_pixels) -> (B, nz, ny, nx)``; no autograd."""
        out = projections.new_zeros((projections.shape[0], *grid.shape))
        with torch.no_grad():
            for plan in self.plans(grid, shapes, vectors):
                vec = vectors[plan.view_index].detach()
                for chunk in plan.chunks:
                    cot = projections[:, plan.offset + chunk.pixels]
                    self.chunk_adjoint(cot, grid, plan.shape, vec, chunk, out)
                    if progress is not None:
                        progress.update(1)
        return out

    def vector_grad(self, volume, cotangent, grid, shapes, vectors) -> torch.Tensor:
        """``d/dvectors <P(vectors) volume, cotangent>``, shape ``(views, 12)``."""
        if not self.supports_vector_grad:
            raise RuntimeError(f"backend {self.name!r} cannot differentiate with respect to the view vectors")
        grads = torch.zeros_like(vectors)
        volume = volume.detach()
        cotangent = cotangent.detach()
        for plan in self.plans(grid, shapes, vectors):
            for chunk in plan.chunks:
                with torch.enable_grad():
                    vec = vectors[plan.view_index].detach().requires_grad_(True)
                    vals = self.chunk_forward(volume, grid, plan.shape, vec, chunk)
                    cot = cotangent[:, plan.offset + chunk.pixels].to(vals.dtype)
                    (g,) = torch.autograd.grad((vals * cot).sum(), vec, allow_unused=True)
                if g is not None:
                    grads[plan.view_index] += g.to(grads.dtype)
        return grads

    def num_chunks(self, grid, shapes, vectors) -> int:
        return sum(len(p.chunks) for p in self.plans(grid, shapes, vectors))


@dataclass
class OperatorSpec:
    """Everything the autograd functions need besides the tensors."""

    backend: Backend
    grid: VolumeGrid
    shapes: list
    progress: object = None


class ProjectFunction(torch.autograd.Function):
    """``(B, nz, ny, nx), (V, 12) -> (B, total_pixels)``."""

    @staticmethod
    def forward(ctx, volume, vectors, spec: OperatorSpec):
        ctx.spec = spec
        ctx.save_for_backward(volume, vectors)
        return spec.backend.forward(volume, spec.grid, spec.shapes, vectors, spec.progress)

    @staticmethod
    def backward(ctx, grad_out):
        volume, vectors = ctx.saved_tensors
        spec = OperatorSpec(ctx.spec.backend, ctx.spec.grid, ctx.spec.shapes)
        grad_volume = grad_vectors = None
        if ctx.needs_input_grad[0]:
            grad_volume = BackprojectFunction.apply(grad_out, vectors.detach(), spec)
        if ctx.needs_input_grad[1]:
            grad_vectors = spec.backend.vector_grad(volume, grad_out, spec.grid, spec.shapes, vectors)
        return grad_volume, grad_vectors, None


class BackprojectFunction(torch.autograd.Function):
    """``(B, total_pixels), (V, 12) -> (B, nz, ny, nx)``: the exact adjoint of :class:`ProjectFunction`."""

    @staticmethod
    def forward(ctx, projections, vectors, spec: OperatorSpec):
        ctx.spec = spec
        ctx.save_for_backward(projections, vectors)
        return spec.backend.adjoint(projections, spec.grid, spec.shapes, vectors, spec.progress)

    @staticmethod
    def backward(ctx, grad_out):
        projections, vectors = ctx.saved_tensors
        spec = OperatorSpec(ctx.spec.backend, ctx.spec.grid, ctx.spec.shapes)
        grad_proj = grad_vectors = None
        if ctx.needs_input_grad[0]:
            grad_proj = ProjectFunction.apply(grad_out, vectors.detach(), spec)
        if ctx.needs_input_grad[1]:
            # <w, P(v)^T y> = <P(v) w, y>: same derivative in v as a forward projection of w
            grad_vectors = spec.backend.vector_grad(grad_out, projections, spec.grid, spec.shapes, vectors)
        return grad_proj, grad_vectors, None
