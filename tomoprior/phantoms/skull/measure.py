"""Measurements of the skull: shape indices of a rasterised skull (cephalic index, vault
asymmetry, frontal width) and the craniometric measures of the analytic model that the
pediatric norms tabulate (bone thickness by bone, cephalic index, intracranial volume)."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage

from ...geometry.grid import VolumeGrid
from .primitives import fibonacci_sphere
from .tissues import BRAIN
from .vault import BONES, bone_plane_normals, bone_weights

__all__ = ["base_in_cavity_mm3", "cavity_volume_mm3", "cranial_measures", "mean_bone_thickness",
           "measure_shape_indices"]


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


def cranial_measures(skull, n_directions: int = 4000) -> dict:
    """The measures of :mod:`tomoprior.phantoms.skull.norms`, taken on the analytic model.

    Parameters
    ----------
    skull : Skull
        The skull to measure.
    n_directions : int
        Directions from the vault centre (a Fibonacci lattice on the sphere, ``>= 500``);
        4000 resolve the means to about 0.01 mm and 1 mL.

    Returns
    -------
    dict
        ``frontal_thickness_mm``, ``parietal_thickness_mm``, ``occipital_thickness_mm``: mean
        bone thickness over each bone, measured along the outer table's normal (from the
        outer table to the inner table) and averaged over the bone's outer surface area.
        The bones are delimited by the planes through the vault centre and the suture
        landmarks (coronal: bregma-pterion; lambdoid: lambda-asterion; squamosal:
        pterion-asterion): frontal in front of the coronal planes, above the squamosal
        plane and the nasion; parietal between the coronal and lambdoid planes above the
        squamosal plane; occipital behind the lambdoid planes, above the skull base
        (directions with ``u_z > -0.5``). Sutures and fontanelles are gaps in the bone, not
        thinner bone, so the shell is measured through them.
        ``cephalic_index``: ``100 x`` maximum width / maximum length of the outer table
        (:meth:`Skull.cephalic_index`). ``intracranial_volume_ml``: volume (mL) inside the
        inner table (the cranial cavity with its CSF and ventricles) less the petrous
        ridges and clivus that rise into it.
    """
    if isinstance(n_directions, bool) or not isinstance(n_directions, (int, np.integer)) or n_directions < 500:
        raise ValueError(f"n_directions must be an integer >= 500, got {n_directions!r}")
    from .model import _eval_threads

    with torch.no_grad(), _eval_threads():
        vault = skull._vault
        u = torch.as_tensor(fibonacci_sphere(int(n_directions)), dtype=torch.float64)
        out = mean_bone_thickness(vault, u)
        out["cephalic_index"] = float(vault.shape.extents()["cephalic_index"])
        cavity = cavity_volume_mm3(vault, u)[0] - base_in_cavity_mm3(vault, skull._base)
        out["intracranial_volume_ml"] = cavity / 1000.0
    return out


def _inner(vault, q: torch.Tensor) -> torch.Tensor:
    """``d + t``: < 0 inside the inner table at points ``q`` ``(N, 3)`` (relative to the centre)."""
    d, _, uq, _ = vault.shape.sdf(q)
    return d + vault.thickness(uq)


def mean_bone_thickness(vault, u: torch.Tensor, iterations: int = 30) -> dict:
    """Mean thickness (mm) of each bone of a :class:`~tomoprior.phantoms.skull.vault.Vault`
    along the outer table's normal, averaged over its outer surface, sampled in unit
    directions ``u`` ``(N, 3)`` (float64) from the centre; keys ``"<bone>_thickness_mm"``
    (see :func:`cranial_measures` for the bones' limits)."""
    sh = vault.shape
    R = sh.surface_radius(u)
    p = R[:, None] * u
    h = 0.05
    grad = torch.stack([(sh.sdf(p + h * e)[0] - sh.sdf(p - h * e)[0]) / (2 * h)
                        for e in torch.eye(3, dtype=u.dtype)], -1)
    n = grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-9)
    t0 = vault.thickness(u)
    lo, hi = torch.zeros_like(R), 3.0 * t0
    for _ in range(iterations):  # the inner table along the inward normal
        mid = 0.5 * (lo + hi)
        inside = _inner(vault, p - mid[:, None] * n) < 0
        hi = torch.where(inside, mid, hi)
        lo = torch.where(inside, lo, mid)
    t = 0.5 * (lo + hi)
    area = R**2 / (u * n).sum(-1).clamp_min(0.2)  # surface area per solid angle
    planes = bone_plane_normals(vault.landmarks)
    w = bone_weights(u, planes)
    left = (u[:, 0] >= 0)[:, None]
    nq = [torch.as_tensor(v, dtype=u.dtype) for v in planes["squamosal"]]
    above_squama = torch.where(left, u * nq[0], u * nq[1]).sum(-1) > 0
    regions = {
        "frontal": (w["frontal"] > 0.5) & above_squama & (u[:, 2] > float(vault.landmarks["nasion"][2])),
        "parietal": (w["parietal"] > 0.5) & above_squama,
        "occipital": (w["occipital"] > 0.5) & (u[:, 2] > -0.5),
    }
    out = {}
    for bone in BONES:
        m = regions[bone]
        out[f"{bone}_thickness_mm"] = float((t[m] * area[m]).sum() / area[m].sum())
    return out


def cavity_volume_mm3(vault, u: torch.Tensor, iterations: int = 30) -> tuple[float, float]:
    """Volume (mm^3) inside the inner table of a vault and the part of it above the centre.

    The cavity is star-shaped about the centre, so its volume is the full solid angle times
    the mean of ``r^3 / 3`` over uniformly spread unit directions ``u`` ``(N, 3)`` (float64),
    ``r`` the inner table's radius (bisection, ``iterations`` halvings)."""
    hi = vault.shape.surface_radius(u)
    lo = torch.zeros_like(hi)
    t = vault.thickness(u)  # constant along each ray
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        inside = vault.shape.sdf(mid[:, None] * u)[0] + t < 0
        lo = torch.where(inside, mid, lo)
        hi = torch.where(inside, hi, mid)
    v = 4.0 * math.pi * (0.5 * (lo + hi)) ** 3 / 3.0 / u.shape[0]
    return float(v.sum()), float(v[u[:, 2] > 0].sum())


def base_in_cavity_mm3(vault, base, step: float = 1.5) -> float:
    """Volume (mm^3) of the skull-base bone of ``base`` (a
    :class:`~tomoprior.phantoms.skull.face.SkullBase`: petrous bone, clivus, and in anatomy v2
    the sphenoid and the other base parts) painted inside the vault's inner table, counted on
    a lattice of ``step`` mm."""
    box = base.box()
    axes = [torch.arange(float(lo) + step / 2, float(hi), step, dtype=torch.float64) for lo, hi in zip(box.lo, box.hi)]
    q = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    total = 0
    for i in range(0, q.shape[0], 1 << 18):
        c = q[i : i + (1 << 18)]
        d, _, uq, _ = vault.shape.sdf(c)
        inner = d + vault.thickness(uq) < 0
        mat = base.dense_bone(torch.full((c.shape[0],), BRAIN, dtype=torch.int64), None, c, d)[0]
        total += int((inner & (mat != BRAIN)).sum())
    return total * step**3
