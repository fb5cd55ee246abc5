"""Dot-product (adjoint) test and batch/dtype behaviour, for every backend in the registry
(the ``backend`` fixture of ``tests/conftest.py``)."""

import pytest
import torch

import tomoprior as tp
from tests.conftest import random_geometry

#: Known tighter bounds than the contract's; any other backend is held to the contract.
CHORD_RTOL = {"reference": 1e-9}  # exact path lengths


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_backproject_is_the_adjoint_of_project(backend, small_grid, seed):
    # the contract: exact to rounding, or 1 % for a backend that declares a matched (not exact) adjoint
    tol = 1e-6 if tp.projectors.get_backend(backend).exact_adjoint else 1e-2
    geom = random_geometry(seed, small_grid)  # two views of different detector shapes
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(small_grid.shape, dtype=torch.float64, generator=gen)
    y = [torch.rand(v.shape, dtype=torch.float64, generator=gen) for v in geom.views]
    px = tp.project(x, geom, backend=backend)
    pty = tp.backproject(y, geom, backend=backend)
    lhs = sum(float((a * b).sum()) for a, b in zip(px, y))
    rhs = float((x * pty).sum())
    assert lhs > 0
    assert abs(lhs - rhs) / abs(lhs) < tol, (lhs, rhs)


def test_torch_backend_adjoint_holds_for_fine_and_coarse_steps(small_grid):
    geom = random_geometry(5, small_grid, shapes=((24, 24), (24, 24)), pitches=((3, 3), (3, 3)))
    x = torch.rand(small_grid.shape, dtype=torch.float64)
    y = torch.rand(2, 24, 24, dtype=torch.float64)
    for step in (0.13, 0.5, 1.7):
        lhs = float((tp.project(x, geom, backend="torch", step=step, chunk_samples=500) * y).sum())
        rhs = float((x * tp.backproject(y, geom, backend="torch", step=step, chunk_samples=500)).sum())
        assert abs(lhs - rhs) / lhs < 1e-10


def test_batch_dimensions_and_ragged_views(backend, small_grid):
    geom = random_geometry(3, small_grid)
    x = torch.rand(2, 3, *small_grid.shape, dtype=torch.float64)
    out = tp.project(x, geom, backend=backend)
    assert isinstance(out, tuple) and len(out) == 2
    assert out[0].shape == (2, 3, 40, 48) and out[1].shape == (2, 3, 44, 36)
    single = tp.project(x[1, 2], geom, backend=backend)
    for a, b in zip(out, single):
        assert torch.allclose(a[1, 2], b, rtol=1e-12, atol=1e-12)
    back = tp.backproject(out, geom, backend=backend)
    assert back.shape == (2, 3, *small_grid.shape)
    assert torch.allclose(back[1, 2], tp.backproject(single, geom, backend=backend), rtol=1e-12, atol=1e-10)


def test_uniform_views_stack_and_float32_matches_float64(backend, small_grid):
    geom = random_geometry(4, small_grid, shapes=((30, 30), (30, 30)), pitches=((3, 3), (3, 3)))
    x = torch.rand(small_grid.shape, dtype=torch.float64)
    p64 = tp.project(x, geom, backend=backend)
    p32 = tp.project(x.float(), geom, backend=backend)
    assert p64.shape == (2, 30, 30) and p64.dtype == torch.float64 and p32.dtype == torch.float32
    assert float((p32.double() - p64).abs().max()) < 1e-4 * float(p64.abs().max())
    b64 = tp.backproject(p64, geom, backend=backend)
    b32 = tp.backproject(p64.float(), geom, backend=backend)
    assert b32.dtype == torch.float32
    assert float((b32.double() - b64).abs().max()) < 1e-4 * float(b64.abs().max())


def test_chunking_does_not_change_results(small_grid):
    geom = random_geometry(6, small_grid)
    x = torch.rand(small_grid.shape, dtype=torch.float64)
    ref = tp.project(x, geom, backend="torch")
    tiny = tp.project(x, geom, backend="torch", chunk_samples=7)
    for a, b in zip(ref, tiny):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)
    ref_s = tp.project(x, geom, backend="reference")
    tiny_s = tp.project(x, geom, backend="reference", chunk_entries=50)
    for a, b in zip(ref_s, tiny_s):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


def test_thread_count_does_not_change_results(small_grid):
    geom = random_geometry(7, small_grid, shapes=((30, 30), (30, 30)), pitches=((3, 3), (3, 3)))
    y = torch.rand(2, 30, 30)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = tp.backproject(y, geom)
        torch.set_num_threads(2)
        two = tp.backproject(y, geom)
    finally:
        torch.set_num_threads(old)
    assert float((one - two).abs().max()) <= 1e-6 * float(one.abs().max())


def test_constant_volume_gives_chord_lengths(backend):
    # a unit-density box: the line integral of the central ray is the box length along it
    grid = tp.VolumeGrid((20, 20, 20), (5.0, 5.0, 5.0))
    view = tp.View(source=(0, 800, 0), detector_center=(0, -400, 0), u=(1, 0, 0), v=(0, 0, -1), shape=(3, 3))
    geom = tp.Geometry(grid, [view])
    p = tp.project(torch.ones(grid.shape, dtype=torch.float64), geom, backend=backend)
    # reference: exactly the 100 mm box; interpolating backends: the interpolant's support is half
    # a voxel longer at each end but falls linearly to zero there, so the integral is again 100 mm
    assert float(p[0, 1, 1]) == pytest.approx(100.0, rel=CHORD_RTOL.get(backend, 1e-3))
