"""Conversion between tomoprior geometries and ASTRA Toolbox geometry dicts.

This module knows ASTRA's dict layout but never imports ``astra``: the dicts it makes are
what ``astra.create_vol_geom`` and ``astra.create_proj_geom('cone_vec', ...)`` return, so
they can be handed to ASTRA directly, and dicts from ASTRA can be read back.

Conventions (identical, so the conversion is exact):

* ``View`` = one ``cone_vec`` row ``(srcX, srcY, srcZ, dX, dY, dZ, uX, uY, uZ, vX, vY, vZ)``;
  ASTRA puts detector pixel ``(row, col)`` at ``d + (col - cols/2 + 0.5) u + (row - rows/2 + 0.5) v``,
  which is our ``detector_center + (c - (cols-1)/2) u + (r - (rows-1)/2) v``.
* Volume: ASTRA's 3D volume array is ``(slices, rows, cols)`` = ``(nz, ny, nx)`` like ours,
  x along columns, y along rows, z along slices, each increasing with the index; the
  window ``WindowMin/MaxX/Y/Z`` is the voxel box.
* Projection data: ASTRA's 3D projection array is ``(det_rows, views, det_cols)``; ours is
  ``(views, rows, cols)``. Use :func:`projections_to_astra` / :func:`projections_from_astra`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .grid import VolumeGrid
from .view import View

_WINDOW_KEYS = ("WindowMinX", "WindowMaxX", "WindowMinY", "WindowMaxY", "WindowMinZ", "WindowMaxZ")


def grid_to_astra(grid: VolumeGrid) -> dict:
    """ASTRA 3D ``vol_geom`` dict of a :class:`VolumeGrid`."""
    (x0, y0, z0), (x1, y1, z1) = grid.bounds()
    nz, ny, nx = grid.shape
    return {
        "GridRowCount": ny,
        "GridColCount": nx,
        "GridSliceCount": nz,
        "option": {
            "WindowMinX": x0, "WindowMaxX": x1,
            "WindowMinY": y0, "WindowMaxY": y1,
            "WindowMinZ": z0, "WindowMaxZ": z1,
        },
    }


def grid_from_astra(vol_geom: dict) -> VolumeGrid:
    """:class:`VolumeGrid` of an ASTRA 3D ``vol_geom`` dict."""
    if not isinstance(vol_geom, dict):
        raise ValueError(f"vol_geom must be an ASTRA volume geometry dict, got {type(vol_geom).__name__}")
    for key in ("GridRowCount", "GridColCount", "GridSliceCount"):
        if key not in vol_geom:
            raise ValueError(f"vol_geom is missing {key!r}; is it a 3D ASTRA volume geometry?")
    ny, nx, nz = (int(vol_geom[k]) for k in ("GridRowCount", "GridColCount", "GridSliceCount"))
    opt = vol_geom.get("option", {})
    defaults = {"WindowMinX": -nx / 2, "WindowMaxX": nx / 2, "WindowMinY": -ny / 2, "WindowMaxY": ny / 2,
                "WindowMinZ": -nz / 2, "WindowMaxZ": nz / 2}
    w = {k: float(opt.get(k, defaults[k])) for k in _WINDOW_KEYS}
    spacing = ((w["WindowMaxZ"] - w["WindowMinZ"]) / nz, (w["WindowMaxY"] - w["WindowMinY"]) / ny,
               (w["WindowMaxX"] - w["WindowMinX"]) / nx)
    center = ((w["WindowMaxX"] + w["WindowMinX"]) / 2, (w["WindowMaxY"] + w["WindowMinY"]) / 2,
              (w["WindowMaxZ"] + w["WindowMinZ"]) / 2)
    return VolumeGrid(shape=(nz, ny, nx), spacing=spacing, center=center)


def views_to_astra(views: Sequence[View]) -> dict:
    """ASTRA ``cone_vec`` ``proj_geom`` dict of views that share one detector shape."""
    shapes = {v.shape for v in views}
    if len(shapes) != 1:
        raise ValueError(
            f"ASTRA's cone_vec geometry needs one detector shape for all views, got {sorted(shapes)}; "
            "convert each group of equal-shaped views separately"
        )
    rows, cols = views[0].shape
    vectors = np.stack([v.vector.detach().double().cpu().numpy() for v in views])
    return {"type": "cone_vec", "DetectorRowCount": rows, "DetectorColCount": cols, "Vectors": vectors}


def views_from_astra(proj_geom: dict, names: Sequence[str] | None = None) -> list[View]:
    """Views of an ASTRA ``cone_vec`` ``proj_geom`` dict."""
    if not isinstance(proj_geom, dict):
        raise ValueError(f"proj_geom must be an ASTRA projection geometry dict, got {type(proj_geom).__name__}")
    if proj_geom.get("type") != "cone_vec":
        raise ValueError(
            f"proj_geom type must be 'cone_vec', got {proj_geom.get('type')!r}; convert other ASTRA geometries "
            "with astra.geom_2vec first"
        )
    for key in ("DetectorRowCount", "DetectorColCount", "Vectors"):
        if key not in proj_geom:
            raise ValueError(f"proj_geom is missing {key!r}")
    vectors = np.asarray(proj_geom["Vectors"], dtype=np.float64)
    if vectors.ndim != 2 or vectors.shape[1] != 12:
        raise ValueError(f"proj_geom['Vectors'] must have shape (views, 12), got {vectors.shape}")
    if names is not None and len(names) != len(vectors):
        raise ValueError(f"names has {len(names)} entries for {len(vectors)} views")
    shape = (int(proj_geom["DetectorRowCount"]), int(proj_geom["DetectorColCount"]))
    return [View.from_vector(vec, shape, name=None if names is None else names[i]) for i, vec in enumerate(vectors)]


def geometry_to_astra(geom) -> tuple[dict, dict]:
    return grid_to_astra(geom.grid), views_to_astra(geom.views)


def geometry_from_astra(vol_geom: dict, proj_geom: dict, names: Sequence[str] | None = None):
    from .geometry import Geometry

    return Geometry(grid_from_astra(vol_geom), views_from_astra(proj_geom, names=names))


def projections_to_astra(projections) -> np.ndarray:
    """``(views, rows, cols)`` -> ASTRA's ``(rows, views, cols)`` (a contiguous copy)."""
    arr = np.asarray(projections)
    if arr.ndim != 3:
        raise ValueError(f"projections must have shape (views, rows, cols), got {arr.shape}")
    return np.ascontiguousarray(arr.transpose(1, 0, 2))


def projections_from_astra(data) -> np.ndarray:
    """ASTRA's ``(rows, views, cols)`` -> ``(views, rows, cols)`` (a contiguous copy)."""
    arr = np.asarray(data)
    if arr.ndim != 3:
        raise ValueError(f"ASTRA projection data must have shape (rows, views, cols), got {arr.shape}")
    return np.ascontiguousarray(arr.transpose(1, 0, 2))
