"""ASTRA: the 3D backend refuses to run without CUDA (instead of killing the process), and
ASTRA's 2D fan-beam CPU projector cross-validates our cone-beam model in its central plane."""

import math

import numpy as np
import pytest
import torch

import tomoprior as tp

astra = pytest.importorskip("astra", reason="astra-toolbox is not installed (pip install 'tomoprior[astra]')")
from tomoprior.projectors import astra_backend  # noqa: E402

HAS_CUDA = astra_backend.astra_cuda_available()


@pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA: the refusal path does not apply")
def test_astra_3d_without_cuda_raises_a_clear_error():
    grid = tp.VolumeGrid((8, 8, 8), (2, 2, 2))
    geom = tp.BiplanarGeometry.from_parameters(binning=64, grid=grid)
    with pytest.raises(ValueError, match=r"need a CUDA GPU.*use backend='torch'"):
        tp.project(torch.zeros(grid.shape), geom, backend="astra")
    assert "astra" not in tp.projectors.available_backends()
    assert "astra" in tp.projectors.registered()


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="ASTRA's 3D cone-beam projectors need a CUDA GPU; none here")
def test_astra_3d_matches_torch_backend_on_cuda():  # pragma: no cover - needs a GPU
    grid = tp.VolumeGrid((64, 64, 64), (3, 3, 3))
    geom = tp.BiplanarGeometry.from_parameters(binning=8, grid=grid)
    ph = tp.phantoms.Phantom.load("shepp_logan_3d_modified")
    vol = ph.rasterize(grid, supersample=2).cuda()
    a = tp.project(vol, geom, backend="astra")
    t = tp.project(vol, geom, backend="torch")
    assert float(torch.linalg.norm(a - t) / torch.linalg.norm(t)) < 0.02
    y = torch.rand_like(a)
    x = torch.rand_like(vol)
    lhs = float((tp.project(x, geom, backend="astra") * y).sum())
    rhs = float((x * tp.backproject(y, geom, backend="astra")).sum())
    assert abs(lhs - rhs) / lhs < 1e-2


def _fan_setup(seed: int, rows: int = 5, cols: int = 96):
    """Views whose central detector row lies in the z = 0 plane through the source."""
    rng = np.random.default_rng(seed)
    views, fan = [], []
    for angle in rng.uniform(0, 2 * math.pi, 6):
        sod, sdd = rng.uniform(300, 500), rng.uniform(600, 800)
        b = np.array([math.cos(angle), math.sin(angle), 0.0])  # beam direction
        e_u = np.array([-b[1], b[0], 0.0])
        tilt = math.radians(rng.uniform(-8, 8))  # detector turned within the plane of the fan
        u_dir = math.cos(tilt) * e_u + math.sin(tilt) * b
        source = -sod * b + rng.uniform(-5, 5, 3) * np.array([1, 1, 0])
        det = source + sdd * b + rng.uniform(-15, 15) * e_u
        pitch = rng.uniform(1.6, 2.2)
        u = pitch * u_dir
        v = np.array([0.0, 0.0, -1.5])
        views.append(tp.View(source, det, u, v, shape=(rows, cols)))
        fan.append([source[0], source[1], det[0], det[1], u[0], u[1]])
    return views, np.array(fan)


def _extruded(image: np.ndarray, nz: int) -> torch.Tensor:
    return torch.from_numpy(np.repeat(image[None], nz, axis=0)).double()


def test_reference_backend_equals_astra_fanbeam_exactly():
    # both are exact intersection lengths on pixel-constant images: they must agree to rounding.
    # (square pixels: ASTRA's 2D line kernel scales non-square pixels by the x pitch)
    ny, nx, nz = 40, 48, 9
    grid = tp.VolumeGrid((nz, ny, nx), (5.0, 2.0, 2.0), center=(3.0, -4.0, 0.0))
    image = np.random.default_rng(0).random((ny, nx))
    views, fan = _fan_setup(0)
    geom = tp.Geometry(grid, views)
    ours = tp.project(_extruded(image, nz), geom, backend="reference")[:, 2, :].numpy()  # central row
    ref = astra_backend.fanbeam_line_integrals(image, (2.0, 2.0), (3.0, -4.0), fan, det_count=96)
    assert ours.shape == ref.shape == (6, 96)
    assert float(ref.max()) > 10
    # ASTRA computes in float32
    err = np.abs(ours - ref) / np.abs(ref).max()
    assert np.median(err) < 1e-6
    assert err.max() < 1e-4


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_interpolating_backends_match_astra_fanbeam_within_one_percent(backend):
    if backend not in tp.projectors.available_backends():
        pytest.skip(f"backend {backend!r} is not installed here")
    ny, nx, nz = 96, 96, 9
    grid = tp.VolumeGrid((nz, ny, nx), (4.0, 2.0, 2.0))
    yy, xx = np.meshgrid((np.arange(ny) - 47.5) * 2.0, (np.arange(nx) - 47.5) * 2.0, indexing="ij")
    # a smooth, asymmetric 2D object (ellipses with soft edges) constant along z
    image = 1.0 / (1 + np.exp(((xx / 60) ** 2 + (yy / 75) ** 2 - 1) * 12))
    image += 0.5 / (1 + np.exp((((xx - 20) / 18) ** 2 + ((yy + 15) / 30) ** 2 - 1) * 8))
    views, fan = _fan_setup(1)
    geom = tp.Geometry(grid, views)
    ours = tp.project(_extruded(image, nz), geom, backend=backend)[:, 2, :].numpy()
    ref = astra_backend.fanbeam_line_integrals(image, (2.0, 2.0), (0.0, 0.0), fan, det_count=96)
    crossing = ref > 1e-3 * ref.max()
    rel = np.abs(ours - ref)[crossing] / ref[crossing]
    assert np.median(rel) < 0.01
    assert np.linalg.norm(ours - ref) / np.linalg.norm(ref) < 0.01
