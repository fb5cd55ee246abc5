"""Shape indices of a rasterised skull: cephalic index, vault asymmetry, frontal width."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage

from ...geometry.grid import VolumeGrid

__all__ = ["measure_shape_indices"]


def measure_shape_indices(mask, grid: VolumeGrid) -> dict:
    """Craniometric indices measured on a bone mask, as a clinician measures them on CT.

    Parameters
    ----------
    mask : bool Tensor or ndarray, shape ``(nz, ny, nx)``
        Bone voxels (e.g. :meth:`Skull.bone_mask`).
    grid : VolumeGrid
        The mask's grid (spacing in mm).

    Returns
    -------
    dict
        Every axial slice is reduced to its cranial cross-section: the largest connected
        region of its bone with holes filled (separate facial bones drop out).
        ``length_mm`` (largest antero-posterior extent of a cross-section, voxel edge to
        edge), ``width_mm`` (largest left-right extent), ``cephalic_index``
        (``100 width / length``), ``cvai`` (cranial vault asymmetry index, %: the two
        diagonals at +-30 deg from the midline through the centroid of the longest
        cross-section, ``100 |D1 - D2| / max``), ``frontal_ratio`` (left-right extent at 20 %
        of the length from the front over the cross-section's width, both in the longest
        cross-section; trigonocephaly lowers it) and ``slice_z_mm`` (world z of that slice).

    Raises
    ------
    ValueError
        Shape mismatch or an empty mask.
    """
    if not isinstance(grid, VolumeGrid):
        raise ValueError(f"grid must be a VolumeGrid, got {type(grid).__name__}")
    m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    m = m.astype(bool)
    if m.shape != tuple(grid.shape):
        raise ValueError(f"mask shape {m.shape} does not match grid.shape {tuple(grid.shape)}")
    if not m.any():
        raise ValueError("the mask has no bone voxels; nothing to measure")
    _, sy, sx = grid.spacing
    x, y, z = (c.numpy() for c in grid.axis_coordinates(dtype=torch.float64))
    # per axial slice: the cranial cross-section = largest connected region of the slice's
    # bone with its holes filled (drops separate facial bones, keeps the vault outline)
    regions, lengths, widths, areas = [], [], [], []
    for sl in m:
        reg = _largest_filled_region(sl)
        regions.append(reg)
        lengths.append(_extent(reg.any(axis=1)) * sy)
        widths.append(_extent(reg.any(axis=0)) * sx)
        areas.append(int(reg.sum()))
    lengths, widths = np.array(lengths), np.array(widths)
    k = max(range(len(regions)), key=lambda i: (lengths[i], areas[i]))
    sl = regions[k]  # (ny, nx)
    jj, ii = np.nonzero(sl)
    yc, xc = float(y[jj].mean()), float(x[ii].mean())
    diags = []
    step = 0.25 * min(sx, sy)
    t = np.arange(-400.0, 400.0, step)
    for sign in (1.0, -1.0):
        d = np.array([sign * math.sin(math.radians(30)), math.cos(math.radians(30))])
        i = np.rint((xc + t * d[0] - x[0]) / sx).astype(int)
        j = np.rint((yc + t * d[1] - y[0]) / sy).astype(int)
        ok = (i >= 0) & (i < len(x)) & (j >= 0) & (j < len(y))
        hit = np.zeros_like(ok)
        hit[ok] = sl[j[ok], i[ok]]
        th = t[hit]
        diags.append(th.max() - th.min() + step if th.size else float("nan"))
    rows = np.nonzero(sl.any(axis=1))[0]
    y_row = y[rows[0]] - sy / 2 + 0.2 * lengths[k]
    j = int(np.clip(np.rint((y_row - y[0]) / sy), 0, len(y) - 1))
    return {
        "length_mm": float(lengths.max()),
        "width_mm": float(widths.max()),
        "cephalic_index": float(100.0 * widths.max() / lengths.max()),
        "cvai": float(100.0 * abs(diags[0] - diags[1]) / max(diags)),
        "frontal_ratio": float(_extent(sl[j]) / _extent(sl.any(axis=0))),
        "slice_z_mm": float(z[k]),
    }


def _largest_filled_region(sl: np.ndarray) -> np.ndarray:
    if not sl.any():
        return sl
    filled = ndimage.binary_fill_holes(sl)
    lab, n = ndimage.label(filled)
    if n <= 1:
        return filled
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


def _extent(row: np.ndarray) -> int:
    idx = np.nonzero(row)[0]
    return int(idx[-1] - idx[0] + 1) if idx.size else 0
