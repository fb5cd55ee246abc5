"""tomosipo conversion: with the real package when importable, and against its documented
(Z, Y, X) cone_vec form through a minimal stand-in module otherwise."""

import sys
import types

import numpy as np
import pytest
import torch

import tomoprior as tp
from tests.conftest import random_geometry
from tomoprior.geometry import tomosipo_convert


def _fake_tomosipo():
    """The documented constructor signatures, storing what they are given."""
    mod = types.ModuleType("tomosipo")

    def volume(*, shape, pos, size):  # tomosipo returns pos as a (1, 3) array
        return types.SimpleNamespace(shape=tuple(shape), pos=np.asarray(pos, dtype=float)[None, :],
                                     size=tuple(size))

    def cone_vec(*, shape, src_pos, det_pos, det_v, det_u):
        return types.SimpleNamespace(det_shape=tuple(shape), src_pos=np.asarray(src_pos), det_pos=np.asarray(det_pos),
                                     det_v=np.asarray(det_v), det_u=np.asarray(det_u))

    mod.volume, mod.cone_vec = volume, cone_vec
    return mod


def test_zyx_order_against_the_documented_form(monkeypatch, small_grid):
    monkeypatch.setitem(sys.modules, "tomosipo", _fake_tomosipo())
    geom = random_geometry(0, small_grid, shapes=((40, 48), (40, 48)), pitches=((5.0, 4.5), (4.5, 5.0)))
    vg, pg = geom.to_tomosipo()
    assert vg.shape == small_grid.shape  # (Z, Y, X) counts
    assert vg.pos[0].tolist() == list(reversed(small_grid.center))  # (z, y, x) centre
    assert vg.size == pytest.approx(small_grid.extent_mm)
    assert pg.det_shape == (40, 48)
    src0 = geom.views[0].source.numpy()
    assert pg.src_pos[0].tolist() == pytest.approx(src0[::-1].tolist())
    assert pg.det_u[1].tolist() == pytest.approx(geom.views[1].u.numpy()[::-1].tolist())
    assert pg.det_v[1].tolist() == pytest.approx(geom.views[1].v.numpy()[::-1].tolist())
    again = tp.Geometry.from_tomosipo(vg, pg)
    assert again.grid == small_grid
    assert torch.equal(again.vectors, geom.vectors)


#: Why the real-package tests may be skipped (tomosipo is not on PyPI); docs/interop.md says how to run them.
TOMOSIPO_SKIP = ("tomosipo is not on PyPI and not installed here; put a checkout on PYTHONPATH to run this "
                 "(docs/interop.md, 'tomosipo')")


def test_real_tomosipo_round_trip(small_grid):
    ts = pytest.importorskip("tomosipo", reason=TOMOSIPO_SKIP)
    geom = random_geometry(1, small_grid, shapes=((40, 48), (40, 48)), pitches=((5.0, 4.5), (4.5, 5.0)))
    vg, pg = geom.to_tomosipo()
    assert isinstance(pg, ts.geometry.ConeVectorGeometry)
    again = tp.Geometry.from_tomosipo(vg, pg)
    assert again.grid == small_grid
    assert torch.allclose(again.vectors, geom.vectors, atol=1e-9)
    # tomosipo's vector forms convert too
    assert tp.Geometry.from_tomosipo(vg.to_vec(), pg.to_vec()).grid == small_grid


def test_real_tomosipo_agrees_with_its_own_astra_export_and_projection(small_grid):
    """Independent checks: tomosipo's ASTRA dicts are our ASTRA dicts, and tomosipo's
    ``project_point`` lands on our pixel coordinates."""
    pytest.importorskip("tomosipo", reason=TOMOSIPO_SKIP)
    geom = random_geometry(2, small_grid, shapes=((40, 48), (40, 48)), pitches=((5.0, 4.5), (4.5, 5.0)))
    vg, pg = geom.to_tomosipo()
    ours_vol, ours_proj = geom.to_astra()
    theirs_vol, theirs_proj = vg.to_astra(), pg.to_astra()
    for key in ("GridRowCount", "GridColCount", "GridSliceCount"):
        assert theirs_vol[key] == ours_vol[key]
    for key, value in ours_vol["option"].items():
        assert theirs_vol["option"][key] == pytest.approx(value, abs=1e-9)
    assert (theirs_proj["DetectorRowCount"], theirs_proj["DetectorColCount"]) == (40, 48)
    assert np.allclose(theirs_proj["Vectors"], ours_proj["Vectors"], atol=1e-9)
    pts = np.random.default_rng(0).uniform(-40, 40, (5, 3))
    ours = geom.project_points(pts).numpy()  # (views, n, 2) as (col, row)
    for k, p in enumerate(pts):
        vu = pg.project_point(tuple(p[::-1]))  # (views, 2): (v, u) from the detector centre, in pixels
        assert np.allclose(vu[:, 1] + (48 - 1) / 2, ours[:, k, 0], atol=1e-7)
        assert np.allclose(vu[:, 0] + (40 - 1) / 2, ours[:, k, 1], atol=1e-7)


def test_real_tomosipo_circular_geometry_and_refusals(small_grid):
    ts = pytest.importorskip("tomosipo", reason=TOMOSIPO_SKIP)
    pg = ts.cone(angles=4, shape=(10, 12), size=(20, 24), src_orig_dist=500, src_det_dist=800)
    views = tomosipo_convert.views_from_tomosipo(pg)
    assert len(views) == 4
    assert [v.shape for v in views] == [(10, 12)] * 4
    assert views[0].pixel_pitch == pytest.approx((2.0, 2.0))
    assert float(views[0].source_to_detector) == pytest.approx(800.0)
    with pytest.raises(ValueError, match="parallel-beam"):
        tp.Geometry.from_tomosipo(ts.volume(shape=4), ts.parallel(angles=3, shape=4))
    rotated = ts.rotate(pos=0, axis=(1, 0, 0), angles=0.3) * ts.volume(shape=4).to_vec()
    with pytest.raises(ValueError, match="axis-aligned"):
        tomosipo_convert.grid_from_tomosipo(rotated)
