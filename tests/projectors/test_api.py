"""Input checking, the backend registry and the operator object."""

import numpy as np
import pytest
import torch

import tomoprior as tp
from tests.conftest import random_geometry
from tomoprior.projectors import Backend, TorchRaymarchBackend


@pytest.fixture
def geom(small_grid):
    return random_geometry(0, small_grid, shapes=((20, 20), (20, 20)), pitches=((5, 5), (5, 5)))


def test_bad_volumes_raise_clear_errors(geom):
    with pytest.raises(ValueError, match=r"volume must have shape \(\.\.\., 12, 14, 16\)"):
        tp.project(torch.zeros(12, 16, 14), geom)
    with pytest.raises(ValueError, match="volume must be float32 or float64"):
        tp.project(torch.zeros(12, 14, 16, dtype=torch.int32), geom)
    for value in (float("nan"), float("inf"), -float("inf")):
        bad = torch.zeros(12, 14, 16)
        bad[3, 4, 5] = value
        with pytest.raises(ValueError, match="volume contains NaN or infinite values"):
            tp.project(bad, geom)
        with pytest.raises(ValueError, match="projections contains NaN or infinite values"):
            y = torch.zeros(2, 20, 20)
            y[1, 7, 3] = value
            tp.backproject(y, geom)
    with pytest.raises(ValueError, match=r"volume must be a torch\.Tensor or numpy array"):
        tp.project([[1.0]], geom)
    with pytest.raises(ValueError, match="geometry must be a tomoprior Geometry"):
        tp.project(torch.zeros(12, 14, 16), "geometry.yaml")


def test_bad_projections_raise_clear_errors(geom, small_grid):
    with pytest.raises(ValueError, match=r"projections must have shape \(\.\.\., 2, 20, 20\)"):
        tp.backproject(torch.zeros(3, 20, 20), geom)
    with pytest.raises(ValueError, match="projections has 1 views but the geometry has 2"):
        tp.backproject([torch.zeros(20, 20)], geom)
    ragged = random_geometry(0, small_grid)
    with pytest.raises(ValueError, match="different detector shapes"):
        tp.backproject(torch.zeros(2, 40, 48), ragged)


def test_unknown_backend_and_options(geom):
    x = torch.zeros(12, 14, 16)
    expected = r"unknown projector backend 'cuda-magic'; available: \['torch', 'reference', 'numba'\] or 'auto'"
    with pytest.raises(ValueError, match=expected):
        tp.project(x, geom, backend="cuda-magic")
    with pytest.raises(ValueError, match="step must be a positive number"):
        tp.project(x, geom, backend="torch", step=0)
    with pytest.raises(ValueError, match="chunk_samples must be a positive integer"):
        tp.project(x, geom, backend="torch", chunk_samples=-1)
    with pytest.raises(ValueError, match="backend 'auto' takes no options"):
        tp.project(x, geom, step=0.5)
    with pytest.raises(ValueError, match=r"takes no option\(s\) \['step'\]"):
        tp.project(x, geom, backend="reference", step=0.5)


def test_numpy_input_and_backend_instances(geom):
    x = np.random.default_rng(0).random((12, 14, 16))
    a = tp.project(x, geom, backend="torch")
    b = tp.project(torch.from_numpy(x), geom, backend=TorchRaymarchBackend(step=0.5))
    assert torch.equal(a, b)


def test_registry_accepts_new_backends(geom):
    class Doubled(TorchRaymarchBackend):
        name = "doubled-test"

        def chunk_forward(self, volume, grid, shape, vector, chunk):
            return 2 * super().chunk_forward(volume, grid, shape, vector, chunk)

        def chunk_adjoint(self, cotangent, grid, shape, vector, chunk, out):
            super().chunk_adjoint(2 * cotangent, grid, shape, vector, chunk, out)

    tp.projectors.register_backend("doubled-test", Doubled, "test backend")
    try:
        assert "doubled-test" in tp.projectors.available_backends()
        x = torch.rand(12, 14, 16, dtype=torch.float64)
        assert torch.allclose(tp.project(x, geom, backend="doubled-test"), 2 * tp.project(x, geom, backend="torch"))
        with pytest.raises(ValueError, match="already registered"):
            tp.projectors.register_backend("doubled-test", Doubled)
    finally:
        tp.projectors.registry._REGISTRY.pop("doubled-test")
    assert isinstance(tp.projectors.get_backend("torch"), Backend)


def test_projector_operator_and_transpose(geom):
    P = tp.projectors.Projector(geom, backend="torch", step=0.5)
    assert P.domain_shape == (12, 14, 16) and P.range_shape == (2, 20, 20)
    x = torch.rand(P.domain_shape, dtype=torch.float64)
    y = torch.rand(P.range_shape, dtype=torch.float64)
    assert float((P(x) * y).sum()) == pytest.approx(float((x * P.T(y)).sum()), rel=1e-10)
    assert P.T.T is P


def test_auto_backend_is_numba_on_cpu(geom):
    assert tp.projectors.resolve_backend("auto", "cpu") == "numba"
    assert tp.projectors.resolve_backend("auto", "cuda") == "torch"  # resolving needs no GPU
    assert tp.projectors.resolve_backend("reference", "cpu") == "reference"
    x = torch.rand(12, 14, 16, dtype=torch.float64)
    assert torch.equal(tp.project(x, geom), tp.project(x, geom, backend="numba"))
    assert tp.projectors.Projector(geom).backend.name == "numba"


def test_progress_bar_runs(geom, capsys):
    x = torch.rand(12, 14, 16)
    assert torch.equal(tp.project(x, geom, progress=True), tp.project(x, geom))


def test_view_missing_the_volume_projects_to_zero(small_grid):
    view = tp.View(source=(0, 900, 0), detector_center=(4000, -400, 0), u=(1, 0, 0), v=(0, 0, -1), shape=(6, 6))
    with pytest.warns(tp.GeometryWarning):
        g = tp.Geometry(small_grid, [view])
    assert float(tp.project(torch.ones(small_grid.shape), g).abs().max()) == 0.0
