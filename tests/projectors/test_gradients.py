"""Gradients: gradcheck in the volume, and finite differences in physical view parameters, for
every backend in the registry (the ``backend`` fixture of ``tests/conftest.py``). A backend is
held to what it declares (``exact_adjoint``, ``native_float64``, ``supports_vector_grad``)."""

import math

import pytest
import torch

import tomoprior as tp


def _tiny_geometry():
    grid = tp.VolumeGrid((5, 6, 4), (10.0, 9.0, 11.0), center=(2.0, -1.0, 3.0))
    rng = torch.Generator().manual_seed(0)
    views = []
    for i, angle in enumerate((0.1, 1.6)):
        p = tp.ViewParameters(
            name=f"v{i}", primary_angle=angle, secondary_angle=0.05,
            source_to_isocenter=400.0, source_to_detector=650.0,
            u0=float(torch.rand(1, generator=rng)) * 4 - 2, detector_tilt_u=0.03, detector_rotation=0.1,
            pixel_pitch=(18.0, 16.0), detector_shape=(4, 5),
        )
        views.append(p.to_view())
    return tp.Geometry(grid, views)


def _needs_float64_adjoint(backend: str) -> None:
    be = tp.projectors.get_backend(backend)
    if not (be.exact_adjoint and be.native_float64):
        pytest.skip(f"backend {backend!r} computes in float32 or has no exact adjoint: gradcheck does not apply")


def _needs_vector_grad(backend: str) -> None:
    if not tp.projectors.get_backend(backend).supports_vector_grad:
        pytest.skip(f"backend {backend!r} has no gradient with respect to the view vectors")


def test_gradcheck_project_wrt_volume(backend):
    _needs_float64_adjoint(backend)
    geom = _tiny_geometry()
    x = torch.rand(geom.grid.shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: tp.project(v, geom, backend=backend), (x,), eps=1e-6, atol=1e-8)


def test_gradcheck_backproject_wrt_projections(backend):
    _needs_float64_adjoint(backend)
    geom = _tiny_geometry()
    y = torch.rand(2, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p: tp.backproject(p, geom, backend=backend), (y,), eps=1e-6, atol=1e-8)


def test_second_order_gradients_exist(backend):
    # project and backproject are each other's derivative, so double backward works
    _needs_float64_adjoint(backend)
    geom = _tiny_geometry()
    x = torch.rand(geom.grid.shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda v: tp.project(v, geom, backend=backend) ** 2, (x,), eps=1e-6,
                                        atol=1e-7)


def _blob_volume(grid: tp.VolumeGrid) -> torch.Tensor:
    # a smooth, asymmetric object: gradients in the geometry are then well defined
    c = grid.voxel_centers()
    r2 = ((c[..., 0] - 12) / 40) ** 2 + ((c[..., 1] + 8) / 55) ** 2 + ((c[..., 2] - 5) / 35) ** 2
    return torch.exp(-2.0 * r2) * (1 + 0.3 * torch.tanh(c[..., 0] / 20))


#: Known tighter bounds than the contract's 5 % (Siddon and Joseph are only piecewise smooth
#: in the geometry; the trilinear "torch" model is smooth).
FD_RTOL = {"torch": 0.01}

PARAMS = {
    "source_to_detector": (1500.0, 0.5),
    "u0": (2.0, 0.05),
    "detector_tilt_u": (math.radians(1.0), 1e-4),
    "source_to_isocenter": (1000.0, 0.5),
}


@pytest.mark.parametrize("name", list(PARAMS))
def test_finite_differences_in_view_parameters_match_autograd(backend, name):
    _needs_vector_grad(backend)
    grid = tp.VolumeGrid((24, 24, 24), (6.0, 6.0, 6.0))
    vol = _blob_volume(grid)
    weights = torch.rand(1, 20, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    value, h = PARAMS[name]

    def loss(x):
        p = tp.ViewParameters(u0=-3.0, detector_tilt_v=math.radians(0.5), pixel_pitch=(12.0, 11.0),
                              detector_shape=(20, 24)).replace(**{name: x})
        return (tp.project(vol, tp.Geometry(grid, [p.to_view()]), backend=backend) * weights).sum()

    x = torch.tensor(value, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(loss(x), x)
    with torch.no_grad():
        fd = (loss(torch.tensor(value + h, dtype=torch.float64)) - loss(torch.tensor(value - h, dtype=torch.float64)))
        fd = float(fd) / (2 * h)
    assert abs(fd) > 1e-3  # the parameter matters
    assert float(g) == pytest.approx(fd, rel=FD_RTOL.get(backend, 0.05)), (float(g), fd)


def test_gradients_flow_to_view_vectors_through_backproject(backend):
    _needs_vector_grad(backend)
    geom0 = _tiny_geometry()
    vecs = geom0.vectors.clone().requires_grad_(True)
    geom = tp.Geometry(geom0.grid, [tp.View.from_vector(vecs[i], v.shape) for i, v in enumerate(geom0.views)])
    y = torch.rand(2, 4, 5, dtype=torch.float64)
    w = torch.rand(geom.grid.shape, dtype=torch.float64)
    (g,) = torch.autograd.grad((tp.backproject(y, geom, backend=backend) * w).sum(), vecs)
    # same as the derivative of <P w, y>, by the adjoint identity
    vecs2 = geom0.vectors.clone().requires_grad_(True)
    geom2 = tp.Geometry(geom0.grid, [tp.View.from_vector(vecs2[i], v.shape) for i, v in enumerate(geom0.views)])
    (g2,) = torch.autograd.grad((tp.project(w, geom2, backend=backend) * y).sum(), vecs2)
    assert float(g.abs().max()) > 0
    assert torch.allclose(g, g2, rtol=1e-10, atol=1e-12)
