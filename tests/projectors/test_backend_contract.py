"""The two backend contracts (``tomoprior/projectors/base.py``): every registered backend honours
the whole-operator one, and a backend with only ``forward`` and ``adjoint`` is a complete,
differentiable projector."""

import pytest
import torch

import tomoprior as tp
from tests.conftest import random_geometry
from tomoprior.projectors import Backend, ChunkedBackend


class _Steps:
    """A progress bar stand-in that counts its updates."""

    def __init__(self):
        self.n = 0

    def update(self, k):
        self.n += k


def test_backend_honours_the_whole_operator_contract(backend, small_grid):
    be = tp.projectors.get_backend(backend)
    assert isinstance(be, Backend)
    assert be.name == backend and be.describe()["backend"] == backend
    geom = random_geometry(1, small_grid)  # two views of different detector shapes
    shapes, vectors = geom.detector_shapes, geom.vectors.double()
    total = sum(r * c for r, c in shapes)
    x = torch.rand(2, *small_grid.shape, generator=torch.Generator().manual_seed(0))
    steps = be.progress_steps(small_grid, shapes, vectors)
    assert isinstance(steps, int) and steps >= 1

    bar = _Steps()
    out = be.forward(x, small_grid, shapes, vectors, bar)
    assert out.shape == (2, total) and out.dtype == x.dtype and out.device == x.device
    assert not out.requires_grad and bool(torch.isfinite(out).all()) and float(out.abs().max()) > 0
    assert bar.n == steps

    bar = _Steps()
    back = be.adjoint(out, small_grid, shapes, vectors, bar)
    assert back.shape == (2, *small_grid.shape) and back.dtype == x.dtype and not back.requires_grad
    assert bar.n == steps

    for adjoint in (False, True):
        est = be.memory_estimate(small_grid, shapes, 2, 4, adjoint=adjoint)
        assert isinstance(est, int) and est >= 2 * (total + small_grid.num_voxels) * 4  # result + input copy

    if be.supports_vector_grad:
        g = be.vector_grad(x.double(), out.double(), small_grid, shapes, vectors)
        assert g.shape == (2, 12) and bool(torch.isfinite(g).all()) and float(g.abs().max()) > 0
    else:
        with pytest.raises(RuntimeError, match="cannot differentiate"):
            be.vector_grad(x.double(), out.double(), small_grid, shapes, vectors)


def test_builtin_backends_sit_on_the_contract_their_kernels_need():
    kinds = {name: isinstance(tp.projectors.get_backend(name), ChunkedBackend)
             for name in ("numba", "torch", "reference")}
    assert kinds == {"numba": False, "torch": True, "reference": True}
    from tomoprior.projectors.astra_backend import AstraBackend

    assert issubclass(AstraBackend, Backend) and not issubclass(AstraBackend, ChunkedBackend)


class _MatrixBackend(Backend):
    """A whole-operator backend with two methods: a dense system matrix ``(pixels, voxels)``."""

    name = "matrix-test"

    def __init__(self, matrix: torch.Tensor):
        super().__init__()
        self.matrix = matrix

    def forward(self, volume, grid, shapes, vectors, progress=None):
        return volume.reshape(volume.shape[0], -1) @ self.matrix.T.to(volume.dtype)

    def adjoint(self, projections, grid, shapes, vectors, progress=None):
        return (projections @ self.matrix.to(projections.dtype)).reshape(projections.shape[0], *grid.shape)


def test_a_backend_with_only_forward_and_adjoint_is_a_differentiable_projector():
    grid = tp.VolumeGrid((4, 5, 6), (20.0, 18.0, 16.0))
    geom = random_geometry(2, grid, shapes=((5, 6), (5, 6)), pitches=((16.0, 16.0), (16.0, 16.0)))
    eye = torch.eye(grid.num_voxels, dtype=torch.float64).reshape(-1, *grid.shape)
    matrix = tp.project(eye, geom, backend="reference").reshape(grid.num_voxels, -1).T.contiguous()
    assert float(matrix.abs().max()) > 0
    be = _MatrixBackend(matrix)
    x = torch.rand(grid.shape, dtype=torch.float64, requires_grad=True)
    assert torch.allclose(tp.project(x, geom, backend=be), tp.project(x, geom, backend="reference"), rtol=1e-12,
                          atol=1e-12)
    # the autograd glue needs nothing else: derivatives of any order in the volume and projections
    assert torch.autograd.gradcheck(lambda v: tp.project(v, geom, backend=be), (x,))
    assert torch.autograd.gradgradcheck(lambda v: tp.project(v, geom, backend=be) ** 2, (x,))
    y = torch.rand(2, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p: tp.backproject(p, geom, backend=be), (y,))
    # defaults of the contract: one progress step, a memory estimate, no view-vector gradient
    assert tp.project(x, geom, backend=be, progress=True).shape == (2, 5, 6)
    vecs = geom.vectors.clone().requires_grad_(True)
    moved = tp.Geometry(grid, [tp.View.from_vector(vecs[i], v.shape) for i, v in enumerate(geom.views)])
    with pytest.raises(RuntimeError, match="'matrix-test' cannot differentiate with respect to the view vectors"):
        tp.project(x.detach(), moved, backend=be).sum().backward()


def test_chunk_kernels_on_the_whole_operator_base_are_refused_with_the_fix():
    with pytest.raises(TypeError, match=r"subclass tomoprior\.projectors\.ChunkedBackend"):
        class OldStyle(Backend):  # the contract before the split
            def chunk_forward(self, volume, grid, shape, vector, chunk):
                return volume

    class Chunked(ChunkedBackend):  # the same kernels on the chunked contract are fine
        def chunk_forward(self, volume, grid, shape, vector, chunk):
            return volume

    assert Chunked.forward is ChunkedBackend.forward


def test_registry_reports_why_a_backend_cannot_run_and_refuses_non_backends():
    assert tp.projectors.unavailable_reason("reference") is None
    for name in tp.projectors.registered():
        reason = tp.projectors.unavailable_reason(name)
        assert (reason is None) == (name in tp.projectors.available_backends())
        assert reason is None or reason.strip()
    with pytest.raises(ValueError, match="unknown projector backend 'no-such'"):
        tp.projectors.unavailable_reason("no-such")
    tp.projectors.register_backend("not-a-backend-test", lambda: object(), "test")
    try:
        with pytest.raises(TypeError, match=r"returned a object, not a tomoprior\.projectors\.Backend"):
            tp.projectors.get_backend("not-a-backend-test")
    finally:
        tp.projectors.registry._REGISTRY.pop("not-a-backend-test")
