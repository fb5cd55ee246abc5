"""The chunked backend contract: a whole operator built from per-chunk torch kernels.

A :class:`ChunkedBackend` is a :class:`~tomoprior.projectors.base.Backend` (the
whole-operator contract that :func:`tomoprior.project` talks to) whose ``forward``,
``adjoint`` and ``vector_grad`` are written once, here, in terms of three smaller methods a
subclass supplies. Each view's pixels are split into chunks, so peak memory is bounded by
one chunk's work whatever the detector size:

* ``plan_view(grid, shape, vector) -> list`` the chunks of one view (any objects with a
  ``pixels`` attribute: a ``(R,)`` long tensor of flat pixel indices within the view, row
  major), computed once per call without autograd;
* ``chunk_forward(volume, grid, shape, vector, chunk) -> (B, R)`` line integrals of one
  chunk's rays, in plain torch, differentiable with respect to the view ``vector`` (12,)
  by ordinary autograd (that is where :meth:`ChunkedBackend.vector_grad` comes from);
* ``chunk_adjoint(cotangent, grid, shape, vector, chunk, out)`` the exact transpose of
  ``chunk_forward`` in the volume: adds ``chunk_forward``'s transpose applied to the
  ``(B, R)`` cotangent into ``out`` ``(B, nz, ny, nx)`` in place.

Built-in chunked backends: ``"torch"`` (:class:`~tomoprior.projectors.raymarch.TorchRaymarchBackend`)
and ``"reference"`` (:class:`~tomoprior.projectors.siddon.SiddonBackend`). A backend with
its own whole-operator kernels (``"numba"``, ``"astra"``) subclasses
:class:`~tomoprior.projectors.base.Backend` directly instead.

Gradients with respect to the view vectors use the identity
``d/dvec <w, P(vec)^T y> = d/dvec <P(vec) w, y>``, evaluated chunk by chunk with autograd,
so neither needs the whole sample grid in memory at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..geometry.grid import VolumeGrid
from .base import Backend


@dataclass
class ViewPlan:
    """Per-view work list: which pixels are traced, in which chunks, with any per-ray data."""

    view_index: int
    shape: tuple[int, int]
    offset: int  # index of this view's first pixel in the flat (all views) pixel axis
    chunks: list = field(default_factory=list)


class ChunkedBackend(Backend):
    """A :class:`Backend` implemented from per-chunk kernels (see the module docstring).

    Subclasses set :attr:`name`, validate their options in ``__init__`` and implement
    :meth:`plan_view`, :meth:`chunk_forward` and :meth:`chunk_adjoint`; they may refine
    :meth:`chunk_memory` and the planning sizes for :meth:`memory_estimate`.
    """

    #: Gradients in the view vectors come from autograd through :meth:`chunk_forward`.
    supports_vector_grad = True

    #: Bytes of planning data per detector pixel of the largest view (per-pixel ray
    #: arrays built at once for a whole view) and per pixel of all views (kept chunk lists).
    plan_bytes_per_view_pixel = 320
    plan_bytes_per_pixel = 24

    # -- to implement ---------------------------------------------------------------------
    def plan_view(self, grid: VolumeGrid, shape: tuple[int, int], vector: torch.Tensor) -> list:
        """The chunks of one view: objects with a ``pixels`` ``(R,)`` long tensor (no autograd)."""
        raise NotImplementedError(f"{type(self).__name__} must implement plan_view(grid, shape, vector)")

    def chunk_forward(self, volume: torch.Tensor, grid: VolumeGrid, shape, vector: torch.Tensor, chunk) -> torch.Tensor:
        """Line integrals ``(B, R)`` of one chunk's rays through ``volume`` ``(B, nz, ny, nx)``;
        differentiable in ``vector`` ``(12,)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement chunk_forward(volume, grid, shape, "
                                  "vector, chunk)")

    def chunk_adjoint(self, cotangent: torch.Tensor, grid: VolumeGrid, shape, vector: torch.Tensor, chunk,
                      out: torch.Tensor) -> None:
        """Add the transpose of :meth:`chunk_forward` applied to ``cotangent`` ``(B, R)`` into
        ``out`` ``(B, nz, ny, nx)``, in place."""
        raise NotImplementedError(f"{type(self).__name__} must implement chunk_adjoint(cotangent, grid, shape, "
                                  "vector, chunk, out)")

    def chunk_memory(self, batch: int, itemsize: int) -> int:
        """Bytes of working memory of one chunk (samples, coordinates, gathered values)."""
        return 256 * 2**20

    # -- the whole-operator contract, from the chunk kernels -------------------------------
    def memory_estimate(self, grid: VolumeGrid, shapes, batch: int, itemsize: int, *, adjoint: bool) -> int:
        """The result and input copy (:meth:`Backend.memory_estimate`), the planning arrays
        and one chunk's temporaries. Subclasses with other memory use extend it."""
        pixels = sum(int(r) * int(c) for r, c in shapes)
        largest = max(int(r) * int(c) for r, c in shapes)
        data = super().memory_estimate(grid, shapes, batch, itemsize, adjoint=adjoint)
        plan = self.plan_bytes_per_view_pixel * largest + self.plan_bytes_per_pixel * pixels
        return data + plan + self.chunk_memory(batch, itemsize)

    def plans(self, grid: VolumeGrid, shapes, vectors: torch.Tensor) -> list[ViewPlan]:
        """The :class:`ViewPlan` of every view, in order (no autograd)."""
        plans, offset = [], 0
        with torch.no_grad():
            for i, shape in enumerate(shapes):
                plans.append(ViewPlan(i, shape, offset, self.plan_view(grid, shape, vectors[i].detach())))
                offset += shape[0] * shape[1]
        return plans

    def forward(self, volume, grid, shapes, vectors, progress=None) -> torch.Tensor:
        """All views' line integrals, ``(B, nz, ny, nx) -> (B, total_pixels)``, chunk by chunk."""
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
        """Back-projection ``(B, total_pixels) -> (B, nz, ny, nx)``, chunk by chunk."""
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
        """``d/dvectors <P(vectors) volume, cotangent>``, ``(views, 12)``: autograd through
        :meth:`chunk_forward`, one chunk at a time."""
        if not self.supports_vector_grad:
            return super().vector_grad(volume, cotangent, grid, shapes, vectors)
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
        """Chunks of all views (the planning runs once for this count)."""
        return sum(len(p.chunks) for p in self.plans(grid, shapes, vectors))

    def progress_steps(self, grid, shapes, vectors) -> int:
        """One progress step per chunk."""
        return self.num_chunks(grid, shapes, vectors)
