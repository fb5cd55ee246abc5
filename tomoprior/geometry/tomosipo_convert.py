"""Conversion to and from tomosipo geometries (only when tomosipo is importable).

tomosipo is not on the package index, so it is never required. Its forms:
``ts.volume(shape=(Z, Y, X), pos=(z, y, x), size=(z, y, x))`` (centre and extent) and
``ts.cone_vec(shape=(rows, cols), src_pos, det_pos, det_v, det_u)`` with every vector in
``(Z, Y, X)`` order, ``det_pos`` the detector centre and ``det_u`` / ``det_v`` the pixel
vectors along columns / rows. Ours are ``(x, y, z)`` vectors with the same meaning, so the
conversion reverses each vector and nothing else. tomosipo's own ASTRA export of the same
objects gives ASTRA's ``cone_vec`` rows, which are our view vectors: the tests check both.

tomosipo returns its volume position as an array of shape ``(1, 3)`` and its vector
geometries as ``(views, 3)`` arrays; :func:`from_tomosipo` accepts the plain geometries
(``ts.volume``, ``ts.cone``) and their vector forms (``.to_vec()``) as long as the volume
is axis-aligned, as a tomoprior grid is.
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


def _rows(value, name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"tomosipo {name} must be (Z, Y, X) vectors of shape (n, 3), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"tomosipo {name} contains non-finite values")
    return arr


def grid_from_tomosipo(vg) -> VolumeGrid:
    """:class:`VolumeGrid` of a tomosipo volume geometry (``ts.volume`` or its ``.to_vec()``)."""
    if not hasattr(vg, "to_vec") and all(hasattr(vg, a) for a in ("pos", "size", "shape")):
        # the plain (pos, size, shape) form, e.g. a stand-in object
        shape = tuple(int(n) for n in vg.shape)
        pos = _rows(vg.pos, "volume pos")
        size = np.asarray(vg.size, dtype=np.float64).reshape(-1)
        if len(pos) != 1 or size.shape != (3,) or len(shape) != 3:
            raise ValueError("vg must describe one volume: pos (z, y, x), size (z, y, x) and shape (Z, Y, X)")
        return VolumeGrid(shape=shape, spacing=tuple(float(x) for x in size / np.asarray(shape)),
                          center=tuple(float(x) for x in pos[0][::-1]))
    vv = vg.to_vec() if hasattr(vg, "to_vec") else vg
    for attr in ("pos", "w", "v", "u", "shape"):
        if not hasattr(vv, attr):
            raise ValueError(f"vg has no {attr!r}: give a tomosipo volume geometry (ts.volume(...)), "
                             f"got {type(vg).__name__}")
    pos = _rows(vv.pos, "volume pos")
    axes = [_rows(getattr(vv, a), f"volume {a}") for a in ("w", "v", "u")]
    if len(pos) != 1 or any(len(a) != 1 for a in axes):
        raise ValueError(f"vg describes {len(pos)} volumes (a moving volume); a tomoprior grid is one volume")
    spacing = []
    for k, (a, label) in enumerate(zip(axes, "zyx")):
        vec = a[0]
        off = np.delete(np.abs(vec), k).max()
        if vec[k] <= 0 or off > 1e-9 * np.abs(vec).max():
            raise ValueError(f"the tomosipo volume's {label} axis is {vec.tolist()} (Z, Y, X); a tomoprior grid is "
                             "axis-aligned with positive spacing, so rotated or mirrored volumes cannot be converted")
        spacing.append(float(vec[k]))
    shape = tuple(int(n) for n in vv.shape)
    return VolumeGrid(shape=shape, spacing=tuple(spacing), center=tuple(float(x) for x in pos[0][::-1]))


def views_from_tomosipo(pg, names: Sequence[str] | None = None) -> list[View]:
    """Views of a tomosipo cone-beam projection geometry (``ts.cone`` or ``ts.cone_vec``)."""
    if hasattr(pg, "is_cone") and not pg.is_cone:
        raise ValueError("pg is a parallel-beam geometry; tomoprior views have a point source (cone beam)")
    if hasattr(pg, "to_vec") and not hasattr(pg, "src_pos"):
        pg = pg.to_vec()
    for attr in ("src_pos", "det_pos", "det_u", "det_v", "det_shape"):
        if not hasattr(pg, attr):
            raise ValueError(f"pg has no {attr!r}: give a tomosipo cone or cone_vec geometry, got {type(pg).__name__}")
    src, det = _rows(pg.src_pos, "src_pos"), _rows(pg.det_pos, "det_pos")
    du, dv = _rows(pg.det_u, "det_u"), _rows(pg.det_v, "det_v")
    n = len(src)
    if not len(det) == len(du) == len(dv) == n:
        raise ValueError(f"tomosipo vectors disagree on the number of views: src_pos {n}, det_pos {len(det)}, "
                         f"det_u {len(du)}, det_v {len(dv)}")
    if names is not None and len(names) != n:
        raise ValueError(f"names has {len(names)} entries for {n} views")
    det_shape = tuple(int(s) for s in pg.det_shape)
    return [
        View(src[i, ::-1].copy(), det[i, ::-1].copy(), du[i, ::-1].copy(), dv[i, ::-1].copy(), det_shape,
             name=None if names is None else names[i])
        for i in range(n)
    ]


def from_tomosipo(vg, pg, names: Sequence[str] | None = None):
    """A tomoprior Geometry from tomosipo volume and cone-beam projection geometries."""
    from .geometry import Geometry

    return Geometry(grid_from_tomosipo(vg), views_from_tomosipo(pg, names=names))
