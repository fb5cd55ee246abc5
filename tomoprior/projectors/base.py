"""The projector backend contract, and the autograd glue that is all :func:`tomoprior.project` uses.

Two contracts, one for each way of writing a backend:

:class:`Backend` (this module): the **whole operator**. It is all that
:func:`~tomoprior.project`, :func:`~tomoprior.backproject` and the autograd functions below
call. A backend implements two methods, as ODL's backends do, plus optional ones:

* ``forward(volume, grid, shapes, vectors, progress=None) -> (B, total_pixels)``: line
  integrals of ``volume`` ``(B, nz, ny, nx)`` (contiguous, float32 or float64, any device)
  through every view; ``vectors`` ``(V, 12)`` float64 on the volume's device, one
  ``(source, detector_center, u, v)`` row per view; ``shapes`` the V ``(rows, cols)``. The
  pixel axis runs view by view, each view row major. Same dtype and device as ``volume``.
* ``adjoint(projections, grid, shapes, vectors, progress=None) -> (B, nz, ny, nx)``: the
  transpose of ``forward`` (exactly, to rounding, unless :attr:`Backend.exact_adjoint` is False).
* ``vector_grad(volume, cotangent, grid, shapes, vectors) -> (V, 12)`` (optional):
  ``d/dvectors <forward(volume), cotangent>``; set :attr:`Backend.supports_vector_grad`.
* ``describe() -> dict``, ``memory_estimate(...) -> int`` and ``progress_steps(...) -> int``
  have working defaults.

None of them records autograd history: the functions below wire them into autograd, so
every backend is differentiable to any order in the volume and the projections.

:class:`~tomoprior.projectors.chunked.ChunkedBackend` (module ``chunked``), a
:class:`Backend`: the **chunked** contract. It implements the methods above from three
per-chunk torch kernels (``plan_view``, ``chunk_forward``, ``chunk_adjoint``), with
gradients in the view vectors from autograd through ``chunk_forward``.

=============  ==================================  ========================================
backend        contract                            kernels
=============  ==================================  ========================================
``numba``      :class:`Backend`                    parallel numba CPU kernels (Joseph)
``astra``      :class:`Backend`                    ASTRA's CUDA ``cone_vec`` projectors
``torch``      :class:`~.chunked.ChunkedBackend`   ``grid_sample`` ray marching per chunk
``reference``  :class:`~.chunked.ChunkedBackend`   Siddon path lengths per chunk
=============  ==================================  ========================================

A new backend registers a factory with :func:`~tomoprior.projectors.register_backend`; the
shared tests in ``tests/projectors/`` and ``tests/validation/test_projector_accuracy.py``
then run over it automatically (they are parametrised over the registry).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..geometry.grid import VolumeGrid


class Backend:
    """A projector backend: the whole operator (see the module docstring).

    Subclasses set :attr:`name`, validate their options in ``__init__`` (raise
    ``ValueError`` naming a bad option) and implement :meth:`forward` and :meth:`adjoint`;
    :meth:`vector_grad` if they can differentiate with respect to the view vectors. A
    backend made of per-chunk torch kernels subclasses
    :class:`~tomoprior.projectors.chunked.ChunkedBackend` instead.
    """

    name = "base"
    #: Whether :meth:`vector_grad` is implemented (gradients with respect to the view vectors).
    supports_vector_grad = False
    #: Whether :meth:`adjoint` is the exact transpose of :meth:`forward` (to rounding): the
    #: dot-product test holds to 1e-6 in float64. False for a matched but separate
    #: back-projector (ASTRA's).
    exact_adjoint = True
    #: Whether float64 input is computed in float64 (False: the backend computes in float32
    #: whatever the input, so float64 checks such as ``gradcheck`` do not apply).
    native_float64 = True

    def __init__(self, **options):
        if options:
            raise ValueError(f"backend {self.name!r} takes no option(s) {sorted(options)}")

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # the contract before the split: chunk kernels on Backend itself. Say what to do now.
        if "chunk_forward" in vars(cls) and cls.forward is Backend.forward:
            raise TypeError(f"{cls.__name__} defines chunk kernels but subclasses Backend (the whole-operator "
                            "contract: forward/adjoint); subclass tomoprior.projectors.ChunkedBackend to have "
                            "forward/adjoint built from chunk_forward/chunk_adjoint")

    # -- the contract ---------------------------------------------------------------------
    def forward(self, volume: torch.Tensor, grid: VolumeGrid, shapes, vectors: torch.Tensor,
                progress=None) -> torch.Tensor:
        """Line integrals of all views, ``(B, nz, ny, nx) -> (B, total_pixels)``; no autograd.

        ``progress``, if given, has ``update(n)``; call it for :meth:`progress_steps` steps in all.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement forward(volume, grid, shapes, vectors, "
                                  "progress=None)")

    def adjoint(self, projections: torch.Tensor, grid: VolumeGrid, shapes, vectors: torch.Tensor,
                progress=None) -> torch.Tensor:
        """Back-projection ``(B, total_pixels) -> (B, nz, ny, nx)``, the transpose of :meth:`forward`;
        no autograd."""
        raise NotImplementedError(f"{type(self).__name__} must implement adjoint(projections, grid, shapes, "
                                  "vectors, progress=None)")

    def vector_grad(self, volume: torch.Tensor, cotangent: torch.Tensor, grid: VolumeGrid, shapes,
                    vectors: torch.Tensor) -> torch.Tensor:
        """``d/dvectors <forward(volume), cotangent>``, shape ``(views, 12)``.

        Raises
        ------
        RuntimeError
            The backend has no gradient with respect to the view vectors (the default).
        """
        raise RuntimeError(f"backend {self.name!r} cannot differentiate with respect to the view vectors")

    def describe(self) -> dict:
        """Settings that change the numbers (recorded in reports and benchmarks)."""
        return {"backend": self.name}

    def memory_estimate(self, grid: VolumeGrid, shapes, batch: int, itemsize: int, *, adjoint: bool) -> int:
        """Estimated peak bytes of one :meth:`forward` (or :meth:`adjoint` if ``adjoint``) call.

        :func:`~tomoprior.project` refuses a call that cannot fit before it allocates
        anything. The default counts the result and a contiguous copy of the input;
        backends with working memory add theirs.
        """
        pixels = sum(int(r) * int(c) for r, c in shapes)
        return batch * (pixels + grid.num_voxels) * itemsize

    def progress_steps(self, grid: VolumeGrid, shapes, vectors: torch.Tensor) -> int:
        """How many ``progress.update(1)`` calls one :meth:`forward` or :meth:`adjoint` makes."""
        return 1


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
