"""The ``"numba"`` backend (Joseph projector in parallel numba kernels).

Adjointness, agreement with the exact reference, determinism across thread counts,
batches and dtypes, gradients (volume: exact; view vectors: the torch backend's), and
degenerate grids.
"""

import math
import multiprocessing
import os

import numba
import numpy as np
import pytest
import torch

import tomoprior as tp
from tests.conftest import random_geometry, random_parameters
from tomoprior.projectors import numba_backend


def _blob(grid: tp.VolumeGrid, dtype=torch.float64) -> torch.Tensor:
    """A smooth, asymmetric object filling most of the grid."""
    c = grid.voxel_centers().to(dtype)
    ext = torch.tensor([e / 2 for e in reversed(grid.extent_mm)], dtype=dtype)  # (x, y, z) half-extents
    centre = torch.tensor(grid.center, dtype=dtype)
    d = (c - centre) / ext
    r2 = (d[..., 0] - 0.1) ** 2 + (d[..., 1] / 0.9) ** 2 + (d[..., 2] / 0.8 + 0.05) ** 2
    return torch.exp(-3.0 * r2) * (1 + 0.3 * torch.tanh(2 * d[..., 0]))


def _dot_gap(geom, x, ys, backend="numba"):
    px = tp.project(x, geom, backend=backend)
    pty = tp.backproject(ys, geom, backend=backend)
    if isinstance(px, torch.Tensor):
        px = tuple(px)
    lhs = sum(float((a * b).sum()) for a, b in zip(px, ys))
    rhs = float((x * pty).sum())
    return lhs, rhs


def _tiny_geometry():
    grid = tp.VolumeGrid((5, 6, 4), (10.0, 9.0, 11.0), center=(2.0, -1.0, 3.0))
    views = []
    for i, angle in enumerate((0.1, 1.6)):
        p = tp.ViewParameters(name=f"v{i}", primary_angle=angle, secondary_angle=0.05, source_to_isocenter=400.0,
                              source_to_detector=650.0, u0=0.7 - i, detector_tilt_u=0.03, detector_rotation=0.1,
                              pixel_pitch=(18.0, 16.0), detector_shape=(4, 5))
        views.append(p.to_view())
    return tp.Geometry(grid, views)


def test_registered_and_described():
    assert "numba" in tp.projectors.available_backends()
    be = tp.projectors.get_backend("numba")
    assert isinstance(be, numba_backend.NumbaBackend)
    assert be.describe()["backend"] == "numba"
    with pytest.raises(ValueError, match=r"takes no option\(s\) \['step'\]"):
        tp.projectors.get_backend("numba", step=0.5)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_backproject_is_the_adjoint_of_project(small_grid, seed):
    geom = random_geometry(seed, small_grid)  # miscalibrated, two different detector shapes
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(small_grid.shape, dtype=torch.float64, generator=gen)
    ys = [torch.rand(v.shape, dtype=torch.float64, generator=gen) for v in geom.views]
    lhs, rhs = _dot_gap(geom, x, ys)
    assert lhs > 0
    assert abs(lhs - rhs) / abs(lhs) < 1e-10, (lhs, rhs)


def test_rays_start_at_the_source():
    # Geometry refuses a source inside the volume box, so drive the backend directly: only
    # the part of each ray beyond the source counts, and the adjoint still holds
    grid = tp.VolumeGrid((10, 12, 14), (5.0, 5.0, 5.0))
    be = numba_backend.NumbaBackend()
    vectors = torch.tensor([[3.0, 10.0, -4.0, 0.0, -300.0, 0.0, 4.0, 0.0, 0.0, 0.0, 0.0, -4.0]], dtype=torch.float64)
    shapes = [(20, 22)]
    x = torch.rand(1, *grid.shape, dtype=torch.float64)
    y = torch.rand(1, 20 * 22, dtype=torch.float64)
    lhs = float((be.forward(x, grid, shapes, vectors) * y).sum())
    rhs = float((x * be.adjoint(y, grid, shapes, vectors)).sum())
    assert abs(lhs - rhs) / abs(lhs) < 1e-10
    # constant volume, a ray straight down -y from y = 10 mm: the voxel-centre planes
    # y = 7.5, 2.5, ..., -27.5 lie beyond the source: 8 planes x 5 mm
    straight = torch.tensor([[2.5, 10.0, 2.5, 2.5, -300.0, 2.5, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0]], dtype=torch.float64)
    p = be.forward(torch.ones(1, *grid.shape, dtype=torch.float64), grid, [(1, 1)], straight)
    assert float(p[0, 0]) == pytest.approx(40.0, rel=1e-12)


def test_constant_volume_gives_chord_lengths():
    grid = tp.VolumeGrid((20, 20, 20), (5.0, 5.0, 5.0))
    view = tp.View(source=(0, 800, 0), detector_center=(0, -400, 0), u=(1, 0, 0), v=(0, 0, -1), shape=(3, 3))
    p = tp.project(torch.ones(grid.shape, dtype=torch.float64), tp.Geometry(grid, [view]), backend="numba")
    # Joseph: 20 planes x 5 mm for a ray along an axis, exactly
    assert float(p[0, 1, 1]) == pytest.approx(100.0, rel=1e-12)
    # an oblique ray through the faces normal to its dominant axis: exactly the chord length
    oblique = tp.View(source=(300, 800, 150), detector_center=(-150, -400, -75), u=(1, 0, 0), v=(0, 0, -1),
                      shape=(1, 1))
    direction = torch.tensor([-450.0, -1200.0, -225.0], dtype=torch.float64)
    chord = 100.0 * float(direction.norm() / direction[1].abs())
    q = tp.project(torch.ones(grid.shape, dtype=torch.float64), tp.Geometry(grid, [oblique]), backend="numba")
    assert float(q.flatten()[0]) == pytest.approx(chord, rel=1e-9)


def test_rays_missing_the_volume_give_zero():
    grid = tp.VolumeGrid((8, 8, 8), (2.0, 2.0, 2.0))
    view = tp.View(source=(0, 500, 0), detector_center=(0, -500, 0), u=(5, 0, 0), v=(0, 0, -5), shape=(11, 11))
    p = tp.project(torch.ones(grid.shape, dtype=torch.float64), tp.Geometry(grid, [view]), backend="numba")
    assert float(p[0, 0, 0]) == 0.0 and float(p[0, 5, 5]) > 0


def _rel_l2(ours, ref) -> float:
    if isinstance(ref, torch.Tensor):
        return float(torch.linalg.norm(ours - ref) / torch.linalg.norm(ref))
    num = sum(float(torch.linalg.norm(a - b)) ** 2 for a, b in zip(ours, ref))
    return (num / sum(float(torch.linalg.norm(b)) ** 2 for b in ref)) ** 0.5


# The reference models the volume as piecewise constant, this backend (and "torch") as its
# linear interpolant: they agree to the discretisation error, which needs a volume smooth
# on the voxel scale and more voxels than the tiny grids of the other tests.
@pytest.mark.parametrize("seed", [0, 1])
def test_agrees_with_the_exact_reference_on_a_smooth_volume(seed):
    grid = tp.VolumeGrid((48, 44, 40), (4.0, 4.4, 4.8), center=(3.0, -2.0, 5.0))
    geom = random_geometry(seed, grid)
    x = _blob(grid)
    assert _rel_l2(tp.project(x, geom, backend="numba"), tp.project(x, geom, backend="reference")) < 1e-2


def test_agrees_with_the_reference_on_a_biplanar_geometry():
    grid = tp.VolumeGrid((64, 64, 64), (3.0, 3.0, 3.0))
    geom = tp.BiplanarGeometry.from_parameters(grid=grid, binning=12)
    x = _blob(grid)
    assert _rel_l2(tp.project(x, geom, backend="numba"), tp.project(x, geom, backend="reference")) < 1e-2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_the_torch_backend(seed):
    # two interpolating models of the same volume: Joseph's bilinear samples on voxel planes
    # and trilinear samples every half voxel
    grid = tp.VolumeGrid((48, 44, 40), (4.0, 4.4, 4.8), center=(3.0, -2.0, 5.0))
    geom = random_geometry(seed, grid)
    x = _blob(grid)
    assert _rel_l2(tp.project(x, geom, backend="numba"), tp.project(x, geom, backend="torch")) < 1e-3
    ys = [torch.rand(v.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) for v in geom.views]
    assert _rel_l2(tp.backproject(ys, geom, backend="numba"), tp.backproject(ys, geom, backend="torch")) < 3e-2


def test_thread_count_does_not_change_results(small_grid):
    geom = random_geometry(7, small_grid, shapes=((30, 30), (30, 30)), pitches=((3, 3), (3, 3)))
    x = torch.rand(small_grid.shape)
    y = torch.rand(2, 30, 30)
    old = torch.get_num_threads()
    results = {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results[threads] = (tp.project(x, geom, backend="numba"), tp.backproject(y, geom, backend="numba"))
            if threads > 1:  # one thread runs the serial kernels, without numba's thread pool
                assert numba.get_num_threads() == min(threads, numba.config.NUMBA_NUM_THREADS)
    finally:
        torch.set_num_threads(old)
    (p1, b1), (p2, b2) = results[1], results[2]
    assert float((p1 - p2).abs().max()) <= 1e-6 * float(p1.abs().max())
    assert float((b1 - b2).abs().max()) <= 1e-6 * float(b1.abs().max())
    # by construction (each voxel sums its rays in one fixed order), even bitwise
    assert torch.equal(p1, p2) and torch.equal(b1, b2)


def test_batch_dimensions_and_ragged_views(small_grid):
    geom = random_geometry(3, small_grid)
    x = torch.rand(2, 3, *small_grid.shape, dtype=torch.float64)
    out = tp.project(x, geom, backend="numba")
    assert isinstance(out, tuple) and out[0].shape == (2, 3, 40, 48) and out[1].shape == (2, 3, 44, 36)
    single = tp.project(x[1, 2], geom, backend="numba")
    for a, b in zip(out, single):
        assert torch.equal(a[1, 2], b)
    back = tp.backproject(out, geom, backend="numba")
    assert back.shape == (2, 3, *small_grid.shape)
    assert torch.allclose(back[1, 2], tp.backproject(single, geom, backend="numba"), rtol=1e-12, atol=1e-12)


def test_float32_matches_float64(small_grid):
    geom = random_geometry(4, small_grid, shapes=((30, 30), (30, 30)), pitches=((3, 3), (3, 3)))
    x = torch.rand(small_grid.shape, dtype=torch.float64)
    p64 = tp.project(x, geom, backend="numba")
    p32 = tp.project(x.float(), geom, backend="numba")
    assert p32.dtype == torch.float32 and p64.dtype == torch.float64
    assert float((p32.double() - p64).abs().max()) < 1e-5 * float(p64.abs().max())
    b64 = tp.backproject(p64, geom, backend="numba")
    b32 = tp.backproject(p64.float(), geom, backend="numba")
    assert b32.dtype == torch.float32
    assert float((b32.double() - b64).abs().max()) < 1e-5 * float(b64.abs().max())


def test_new_geometry_is_not_served_from_the_ray_table_of_the_last(small_grid):
    g1 = random_geometry(8, small_grid, shapes=((20, 20), (20, 20)), pitches=((5, 5), (5, 5)))
    g2 = random_geometry(9, small_grid, shapes=((20, 20), (20, 20)), pitches=((5, 5), (5, 5)))
    x = torch.rand(small_grid.shape, dtype=torch.float64)
    a1, a2 = tp.project(x, g1, backend="numba"), tp.project(x, g2, backend="numba")
    numba_backend._LAST_TABLE.clear()
    assert torch.equal(tp.project(x, g1, backend="numba"), a1)
    assert not torch.allclose(a1, a2)


def test_gradcheck_wrt_volume_and_projections():
    geom = _tiny_geometry()
    x = torch.rand(geom.grid.shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: tp.project(v, geom, backend="numba"), (x,), eps=1e-6, atol=1e-8)
    y = torch.rand(2, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p: tp.backproject(p, geom, backend="numba"), (y,), eps=1e-6, atol=1e-8)
    assert torch.autograd.gradgradcheck(lambda v: tp.project(v, geom, backend="numba") ** 2, (x,), eps=1e-6,
                                        atol=1e-7)


def _vector_geometry(geom0, vecs):
    return tp.Geometry(geom0.grid, [tp.View.from_vector(vecs[i], v.shape) for i, v in enumerate(geom0.views)])


def test_vector_gradient_is_the_torch_backends():
    geom0 = random_geometry(2, tp.VolumeGrid((16, 18, 20), (6.0, 5.5, 5.0)), shapes=((24, 24), (24, 24)),
                            pitches=((5, 5), (5, 5)))
    x = _blob(geom0.grid)
    w = torch.rand(2, 24, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grads = {}
    for backend in ("numba", "torch"):
        vecs = geom0.vectors.clone().requires_grad_(True)
        loss = (tp.project(x, _vector_geometry(geom0, vecs), backend=backend) * w).sum()
        (grads[backend],) = torch.autograd.grad(loss, vecs)
    assert float(grads["torch"].abs().max()) > 0
    assert torch.allclose(grads["numba"], grads["torch"], rtol=1e-12, atol=1e-12)
    # through the back-projection too (adjoint identity)
    vecs = geom0.vectors.clone().requires_grad_(True)
    (g,) = torch.autograd.grad((tp.backproject(w, _vector_geometry(geom0, vecs), backend="numba") * x).sum(), vecs)
    assert torch.allclose(g, grads["torch"], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name, value, h", [("source_to_detector", 1500.0, 0.5), ("u0", 2.0, 0.05),
                                            ("detector_tilt_u", math.radians(1.0), 1e-4)])
def test_vector_gradient_approximates_finite_differences_of_this_backend(name, value, h):
    # the fallback gradient is the trilinear model's; this model's finite differences agree closely
    grid = tp.VolumeGrid((24, 24, 24), (6.0, 6.0, 6.0))
    vol = _blob(grid)
    weights = torch.rand(1, 20, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def loss(v):
        p = tp.ViewParameters(u0=-3.0, detector_tilt_v=math.radians(0.5), pixel_pitch=(12.0, 11.0),
                              detector_shape=(20, 24)).replace(**{name: v})
        return (tp.project(vol, tp.Geometry(grid, [p.to_view()]), backend="numba") * weights).sum()

    x = torch.tensor(value, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(loss(x), x)
    with torch.no_grad():
        up, down = (loss(torch.tensor(value + s * h, dtype=torch.float64)) for s in (1, -1))
        fd = float(up - down) / (2 * h)
    assert abs(fd) > 1e-3
    assert float(g) == pytest.approx(fd, rel=0.05), (float(g), fd)


@pytest.mark.parametrize("shape", [(1, 14, 16), (12, 1, 16), (12, 14, 1)])
def test_single_voxel_axes(shape):
    grid = tp.VolumeGrid(shape, (9.0, 8.0, 7.0), center=(3.0, -2.0, 5.0))
    geom = random_geometry(11, grid, shapes=((30, 32), (30, 32)), pitches=((4, 4), (4, 4)))
    x = torch.rand(shape, dtype=torch.float64)
    p = tp.project(x, geom, backend="numba")
    assert p.shape == (2, 30, 32) and bool(torch.isfinite(p).all()) and float(p.abs().max()) > 0
    y = torch.rand(2, 30, 32, dtype=torch.float64)
    lhs, rhs = _dot_gap(geom, x, y)
    assert abs(lhs - rhs) / abs(lhs) < 1e-10
    # the slab is constant across its one voxel: close to the exact voxel model
    ref = tp.project(x, geom, backend="reference")
    assert float(torch.linalg.norm(p - ref) / torch.linalg.norm(ref)) < 0.2


def test_single_voxel_slab_along_the_ray_gives_its_thickness():
    grid = tp.VolumeGrid((6, 1, 6), (4.0, 3.0, 4.0))
    view = tp.View(source=(0, 800, 0), detector_center=(0, -400, 0), u=(1, 0, 0), v=(0, 0, -1), shape=(3, 3))
    p = tp.project(torch.ones(grid.shape, dtype=torch.float64), tp.Geometry(grid, [view]), backend="numba")
    assert float(p[0, 1, 1]) == pytest.approx(3.0, rel=1e-12)


def test_progress_bar_and_empty_batch(small_grid):
    pytest.importorskip("tqdm")
    geom = random_geometry(0, small_grid)
    x = torch.rand(small_grid.shape)
    plain = tp.project(x, geom, backend="numba")
    with_bar = tp.project(x, geom, backend="numba", progress=True)
    for a, b in zip(plain, with_bar):
        assert torch.equal(a, b)
    empty = tp.project(torch.zeros(0, *small_grid.shape), geom, backend="numba")
    assert empty[0].shape == (0, 40, 48)


def _project_in_child(args):
    x, geom = args
    torch.set_num_threads(2)  # asks for the parallel kernels: must fall back, not crash
    return tp.project(x, geom, backend="numba")


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs the fork start method")
def test_runs_in_a_process_forked_after_parallel_use(small_grid):
    # e.g. DataLoader workers: GNU OpenMP cannot start in a child forked after the parent
    # used it, and numba would terminate the child; the backend runs serially there instead
    geom = random_geometry(1, small_grid, shapes=((20, 20), (20, 20)), pitches=((5, 5), (5, 5)))
    x = torch.rand(small_grid.shape)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        here = tp.project(x, geom, backend="numba")  # parallel kernels in this process first
    finally:
        torch.set_num_threads(old)
    with multiprocessing.get_context("fork").Pool(1) as pool:
        there = pool.map_async(_project_in_child, [(x, geom)]).get(timeout=120)[0]
    assert torch.equal(here, there)


# -- the optional compiled forward kernels (tomoprior/projectors/_joseph.c) ------------------

def _compiled_or_skip():
    lib, why = numba_backend.compiled_kernels()
    if lib is None:
        pytest.skip(f"compiled kernels not in use here: {why}")
    return lib


def test_compiled_kernels_are_built_where_ci_installs():
    # CI installs with the README's command on a machine with GCC 12 (x86-64): the extension
    # must have been built there, and used unless the CPU lacks the SIMD it needs, or the
    # tests below would silently skip
    import importlib.util

    if os.environ.get("CI", "").lower() != "true":
        pytest.skip("checked in CI only (other machines may lack a C compiler)")
    assert importlib.util.find_spec("tomoprior.projectors._joseph") is not None, \
        "setup.py did not build tomoprior/projectors/_joseph.c"
    lib, why = numba_backend.compiled_kernels()
    assert lib is not None or "without SIMD gathers for this CPU" in why, why


def _wide_fan_geometry(grid):
    # source close to the box and a wide detector (rays up to ~55 degrees off the central
    # one): rays of one view, even of one detector row, differ in their dominant axis
    rng = np.random.default_rng(3)
    views = [random_parameters(rng, f"v{i}", a, shape=(37, 41), pitch=(18.0, 18.0), source_to_isocenter=130.0,
                               source_to_detector=270.0).to_view() for i, a in enumerate((0.0, 33.0, 90.0))]
    return tp.Geometry(grid, views)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", ["random", "random-batch", "wide-fan", "offset-box", "single-voxel-axis",
                                  "untilted"])
def test_compiled_kernels_are_bitwise_the_numba_kernels(monkeypatch, dtype, case):
    _compiled_or_skip()
    gen = torch.Generator().manual_seed(5)
    if case == "single-voxel-axis":
        grid = tp.VolumeGrid((12, 1, 16), (9.0, 6.0, 7.0), center=(3.0, -2.0, 5.0))
    elif case == "offset-box":  # most rays meet the box's faces: many edge samples, misses
        grid = tp.VolumeGrid((20, 18, 22), (7.0, 8.0, 6.0), center=(60.0, -45.0, 30.0))
    else:
        grid = tp.VolumeGrid((12, 14, 16), (9.0, 8.0, 7.0), center=(3.0, -2.0, 5.0))
    if case == "untilted":  # rows parallel to the planes: float32 takes the contiguous-load path
        grid = tp.VolumeGrid((40, 36, 44), (5.0, 5.5, 4.5), center=(3.0, -2.0, 5.0))
        geom = tp.BiplanarGeometry.from_parameters(binning=16, grid=grid)
    elif case == "wide-fan":
        geom = _wide_fan_geometry(grid)
    else:
        geom = random_geometry(11, grid)
    lib = numba_backend.compiled_kernels()[0]
    groups_before = lib.tp_joseph_bundle_groups()
    batch = (3,) if case == "random-batch" else ()
    x = torch.randn(*batch, *grid.shape, generator=gen, dtype=dtype)
    ys = [torch.randn(*batch, *v.shape, generator=gen, dtype=dtype) for v in geom.views]
    ys[0][..., 3:5, :] = 0.0  # rays with nothing to back-project are skipped: still the same result
    old = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            monkeypatch.setenv(numba_backend.COMPILED_ENV, "0")
            ref, ref_back = tp.project(x, geom, backend="numba"), tp.backproject(ys, geom, backend="numba")
            monkeypatch.setenv(numba_backend.COMPILED_ENV, "all")  # the compiled back-projection too
            got, back = tp.project(x, geom, backend="numba"), tp.backproject(ys, geom, backend="numba")
            for a, b in zip(got, ref):
                assert a.dtype == dtype and torch.equal(a, b), (case, threads)
            assert back.dtype == dtype and torch.equal(back, ref_back), (case, threads)
    finally:
        torch.set_num_threads(old)
    took_bundles = lib.tp_joseph_bundle_groups() > groups_before
    if case == "untilted" and dtype == torch.float32 and lib.tp_joseph_simd_level() >= 4:
        assert took_bundles  # the case is what it claims: the AVX-512 contiguous-load path ran
    if dtype == torch.float64:
        assert not took_bundles
    if case == "wide-fan":  # the case is what it claims: rays of several dominant axes
        table = next(iter(numba_backend._LAST_TABLE.values()))
        assert sum(g.size > 0 for g in table.groups) >= 2
    if case == "offset-box":
        table = next(iter(numba_backend._LAST_TABLE.values()))
        assert (table.rp[:, numba_backend._K0] > table.rp[:, numba_backend._K1]).any()  # rays that miss


def test_compiled_forward_without_the_transposed_copy(monkeypatch, small_grid):
    # volumes above TRANSPOSED_COPY_MAX_BYTES: rays along x gather from the volume itself
    _compiled_or_skip()
    monkeypatch.setenv(numba_backend.COMPILED_ENV, "all")  # compiled at this small size too
    geom = random_geometry(13, small_grid)
    x = torch.randn(small_grid.shape, generator=torch.Generator().manual_seed(1))
    with_copy = tp.project(x, geom, backend="numba")
    monkeypatch.setattr(numba_backend, "TRANSPOSED_COPY_MAX_BYTES", 0)
    without = tp.project(x, geom, backend="numba")
    monkeypatch.setenv(numba_backend.COMPILED_ENV, "0")
    ref = tp.project(x, geom, backend="numba")
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(with_copy, without, ref))


def test_compiled_forward_keeps_the_adjoint_identity(monkeypatch, small_grid):
    _compiled_or_skip()
    monkeypatch.setenv(numba_backend.COMPILED_ENV, "all")
    geom = random_geometry(12, small_grid)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(small_grid.shape, generator=gen, dtype=torch.float64)
    ys = [torch.randn(v.shape, generator=gen, dtype=torch.float64) for v in geom.views]
    lhs = sum(float((p * y).sum()) for p, y in zip(tp.project(x, geom, backend="numba"), ys))
    rhs = float((x * tp.backproject(ys, geom, backend="numba")).sum())
    assert abs(lhs - rhs) <= 1e-12 * max(abs(lhs), abs(rhs))


def test_auto_runs_the_compiled_forward_only_from_the_size_threshold_on(monkeypatch, small_grid):
    _compiled_or_skip()
    monkeypatch.delenv(numba_backend.COMPILED_ENV, raising=False)
    calls = []
    for name in ("_forward_parallel", "_forward_serial"):
        real = getattr(numba_backend, name)
        monkeypatch.setattr(numba_backend, name, lambda *a, _real=real, _n=name: (calls.append(_n), _real(*a))[1])
    geom = random_geometry(14, small_grid)
    x = torch.randn((2, *small_grid.shape), generator=torch.Generator().manual_seed(2))
    n = x.numel()
    be = numba_backend.NumbaBackend()
    monkeypatch.setattr(numba_backend, "COMPILED_FORWARD_MIN_VOXELS", n + 1)  # just below: numba kernel
    small = tp.project(x, geom, backend="numba")
    assert calls and "numba kernels below" in be.describe()["kernels"]
    est_small = be.memory_estimate(small_grid, [v.shape for v in geom.views], 2, 4, adjoint=False)
    calls.clear()
    monkeypatch.setattr(numba_backend, "COMPILED_FORWARD_MIN_VOXELS", n)  # at the threshold: compiled
    big = tp.project(x, geom, backend="numba")
    assert not calls
    # the compiled kernel's transposed copy counts in the estimate only where it runs
    assert be.memory_estimate(small_grid, [v.shape for v in geom.views], 2, 4, adjoint=False) == est_small + n * 4
    assert all(torch.equal(a, b) for a, b in zip(small, big))
    monkeypatch.setattr(numba_backend, "COMPILED_FORWARD_MIN_VOXELS", n + 1)
    monkeypatch.setenv(numba_backend.COMPILED_ENV, "all")  # all: compiled at every size
    tp.project(x, geom, backend="numba")
    assert not calls


def test_backend_and_info_say_which_kernels_run(monkeypatch):
    from tomoprior.cli.info import collect_info

    monkeypatch.delenv(numba_backend.COMPILED_ENV, raising=False)
    lib, _ = numba_backend.compiled_kernels()
    described = numba_backend.NumbaBackend().describe()["kernels"]
    info = collect_info()["cpu_projector_kernels"]
    assert info["compiled"] == (lib is not None)
    assert ("SIMD" in described) == (lib is not None)
    # by default the back-projection runs the numba kernel (the compiled one was not faster)
    assert numba_backend.compiled_kernels("adjoint")[0] is None and info["back_projection_compiled"] is False
    if lib is not None:
        assert "back-projection: numba kernels" in described
        monkeypatch.setenv(numba_backend.COMPILED_ENV, "all")
        assert numba_backend.compiled_kernels("adjoint")[0] is lib
        assert collect_info()["cpu_projector_kernels"]["back_projection_compiled"] is True
    monkeypatch.setenv(numba_backend.COMPILED_ENV, "fast")
    with pytest.raises(ValueError, match="TOMOPRIOR_COMPILED_KERNELS='fast' is not a kernel choice"):
        numba_backend.compiled_kernels()
    with pytest.raises(ValueError, match="direction must be"):
        numba_backend.compiled_kernels("backward")
    monkeypatch.setenv(numba_backend.COMPILED_ENV, "0")
    assert numba_backend.compiled_kernels()[0] is None
    assert "TOMOPRIOR_COMPILED_KERNELS=0" in numba_backend.NumbaBackend().describe()["kernels"]
    assert collect_info()["cpu_projector_kernels"]["compiled"] is False
