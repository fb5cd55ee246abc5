"""tomosipo conversion: with the real package when importable, and against its documented
(Z, Y, X) cone_vec form through a minimal stand-in module otherwise."""

import sys
import types

import numpy as np
import pytest
import torch

import tomoprior as tp
from tests.conftest import random_geometry


def _fake_tomosipo():
    """The documented constructor signatures, storing what they are given."""
    mod = types.ModuleType("tomosipo")

    def volume(*, shape, pos, size):
        return types.SimpleNamespace(shape=tuple(shape), pos=tuple(pos), size=tuple(size))

    def cone_vec(*, shape, src_pos, det_pos, det_v, det_u):
        return types.SimpleNamespace(det_shape=tuple(shape), src_pos=np.asarray(src_pos), det_pos=np.asarray(det_pos),
                                     det_v=np.asarray(det_v), det_u=np.asarray(det_u))

    mod.volume, mod.cone_vec = volume, cone_vec
    return mod


def test_zyx_order_against_the_documented_form(monkeypatch, small_grid):
    monkeypatch.setitem(sys.modules, "tomosipo", _fake_tomosipo())
    geom = random_geometry(0, small_grid, shapes=((20, 30), (20, 30)))
    vg, pg = geom.to_tomosipo()
    assert vg.shape == small_grid.shape  # (Z, Y, X) counts
    assert vg.pos == tuple(reversed(small_grid.center))  # (z, y, x) centre
    assert vg.size == pytest.approx(small_grid.extent_mm)
    assert pg.det_shape == (20, 30)
    src0 = geom.views[0].source.numpy()
    assert pg.src_pos[0].tolist() == pytest.approx(src0[::-1].tolist())
    assert pg.det_u[1].tolist() == pytest.approx(geom.views[1].u.numpy()[::-1].tolist())
    assert pg.det_v[1].tolist() == pytest.approx(geom.views[1].v.numpy()[::-1].tolist())
    again = tp.Geometry.from_tomosipo(vg, pg)
    assert again.grid == small_grid
    assert torch.equal(again.vectors, geom.vectors)


def test_real_tomosipo_round_trip(small_grid):
    ts = pytest.importorskip("tomosipo", reason="tomosipo is not on PyPI and not installed here")
    geom = random_geometry(1, small_grid, shapes=((20, 30), (20, 30)))
    vg, pg = geom.to_tomosipo()
    assert isinstance(pg, ts.geometry.ConeVectorGeometry)
    again = tp.Geometry.from_tomosipo(vg, pg)
    assert again.grid == small_grid
    assert torch.allclose(again.vectors, geom.vectors, atol=1e-9)
