"""ODL interop: linearity and adjointness in ODL's inner products, and an ODL solver run."""

import re

import numpy as np
import pytest

import tomoprior as tp

odl = pytest.importorskip("odl", reason="odl is not installed (pip install 'tomoprior[odl]')")
from tomoprior.interop.odl import ProjectionOperator, grid_space  # noqa: E402


@pytest.fixture
def geom():
    grid = tp.VolumeGrid((16, 18, 20), (6.0, 5.0, 4.5), center=(2.0, -3.0, 1.0))
    return tp.BiplanarGeometry.from_parameters(binning=32, grid=grid)


def test_domain_is_the_grid_box(geom):
    space = grid_space(geom.grid)
    assert space.shape == (16, 18, 20)
    assert space.cell_sides.tolist() == pytest.approx([6.0, 5.0, 4.5])
    lo, hi = geom.grid.bounds()
    assert space.min_pt.tolist() == pytest.approx([lo[2], lo[1], lo[0]])
    assert space.max_pt.tolist() == pytest.approx([hi[2], hi[1], hi[0]])


def test_linearity_and_adjointness_in_odl_inner_products(geom):
    A = ProjectionOperator(geom, dtype="float64")
    rng = np.random.default_rng(0)
    x1, x2 = (A.domain.element(rng.random(A.domain.shape)) for _ in range(2))
    y = A.range.element(rng.random(A.range.shape))
    a, b = 1.7, -0.4
    lhs = A(a * x1 + b * x2)
    rhs = a * A(x1) + b * A(x2)
    assert (lhs - rhs).norm() <= 1e-10 * rhs.norm()
    ip_range = A(x1).inner(y)
    ip_domain = x1.inner(A.adjoint(y))
    assert ip_range == pytest.approx(ip_domain, rel=1e-8)
    assert A.adjoint.adjoint is A


def test_odl_diagnostics_pass(geom, capsys):
    A = ProjectionOperator(geom, dtype="float64")
    tester = odl.diagnostics.OperatorTest(A, verbose=True)
    tester.linear()
    tester.adjoint()
    out = capsys.readouterr().out
    assert out.count("Completed all test cases") == 3, out
    assert "failed" not in out.lower(), out
    ratio = float(re.search(r"\(x, A\^T y\) / \(Ax, y\) = (\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)", out).group(1))
    assert ratio == pytest.approx(1.0, abs=1e-8)


def test_conjugate_gradient_normal_reduces_the_residual(geom):
    A = ProjectionOperator(geom, dtype="float32")
    phantom = tp.phantoms.Phantom.load("shepp_logan_3d_modified")
    truth = A.domain.element(phantom.rasterize(geom.grid, supersample=1).numpy())
    data = A(truth)
    x = A.domain.zero()
    r0 = (A(x) - data).norm()
    odl.solvers.conjugate_gradient_normal(A, x, data, niter=10)
    r1 = (A(x) - data).norm()
    assert r1 < 0.2 * r0
