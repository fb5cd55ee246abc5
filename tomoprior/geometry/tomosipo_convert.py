"""Conversion to and from tomosipo geometries (only when tomosipo is importable).

tomosipo is not on the package index, so it is never required. Its documented forms:
``ts.volume(shape=(Z, Y, X), pos=(z, y, x), size=(z, y, x))`` (centre and extent) and
``ts.cone_vec(shape=(rows, cols), src_pos, det_pos, det_v, det_u)`` with every vector in
``(Z, Y, X)`` order, ``det_pos`` the detector centre and ``det_u`` / ``det_v`` the pixel
vectors along columns / rows. Ours are ``(x, y, z)`` vectors with the same meaning, so the
conversion reverses each vector and nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .grid import VolumeGrid
from .view import View


def _ts():
    try:
        import tomosipo
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "tomosipo is not installed (it is not on PyPI; install it from its repository) - "
            "tomoprior's own geometry, ASTRA dicts and files work without it"
        ) from exc
    return tomosipo


def to_tomosipo(geom) -> tuple:
    """``(volume geometry, cone_vec projection geometry)`` of a tomoprior Geometry."""
    ts = _ts()
    shapes = {v.shape for v in geom.views}
    if len(shapes) != 1:
        raise ValueError(f"tomosipo's cone_vec needs one detector shape for all views, got {sorted(shapes)}")
    grid = geom.grid
    vg = ts.volume(shape=grid.shape, pos=tuple(reversed(grid.center)), size=grid.extent_mm)
    vec = geom.vectors.detach().double().cpu().numpy()
    zyx = vec.reshape(-1, 4, 3)[:, :, ::-1]
    pg = ts.cone_vec(shape=geom.views[0].shape, src_pos=zyx[:, 0].copy(), det_pos=zyx[:, 1].copy(),
                     det_v=zyx[:, 3].copy(), det_u=zyx[:, 2].copy())
    return vg, pg


def from_tomosipo(vg, pg, names: Sequence[str] | None = None):
    """A tomoprior Geometry from tomosipo volume and ``cone_vec`` geometries."""
    from .geometry import Geometry

    shape = tuple(int(n) for n in vg.shape)
    size = np.asarray(vg.size, dtype=np.float64)
    pos = np.asarray(vg.pos, dtype=np.float64)
    grid = VolumeGrid(shape=shape, spacing=tuple(size / np.asarray(shape)), center=tuple(pos[::-1]))
    for attr in ("src_pos", "det_pos", "det_u", "det_v"):
        if not hasattr(pg, attr):
            raise ValueError(f"pg has no {attr!r}; convert it to a cone_vec geometry first (pg.to_vec())")
    src, det = np.asarray(pg.src_pos, float), np.asarray(pg.det_pos, float)
    du, dv = np.asarray(pg.det_u, float), np.asarray(pg.det_v, float)
    n = len(src)
    if names is not None and len(names) != n:
        raise ValueError(f"names has {len(names)} entries for {n} views")
    det_shape = tuple(int(s) for s in pg.det_shape)
    views = [
        View(src[i, ::-1].copy(), det[i, ::-1].copy(), du[i, ::-1].copy(), dv[i, ::-1].copy(), det_shape,
             name=None if names is None else names[i])
        for i in range(n)
    ]
    return Geometry(grid, views)
