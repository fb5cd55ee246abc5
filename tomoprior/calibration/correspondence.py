"""Correspondence between detected bead shadows and the beads of a phantom design.

Given predicted pixel positions of the design beads (from an initial geometry) and the
detections of one view:

1. Coarse translation: every pairing (design bead i, detection j) proposes the shift
   ``det_j - pred_i``; the shifts that bring the most predictions within ``gate_px`` of a
   detection are kept as candidates. This absorbs detector-offset and isocenter errors of
   many pixels without any bead being special. Each candidate is then grown by a 2D
   similarity/affine alignment (ICP-like, in :func:`tomoprior.calibration.calibrate`) and
   the candidate that ends with the most matches wins, so a shift by one bead spacing of a
   regular design (rings, helix) loses to the true one.
2. Assignment: the Hungarian algorithm (``scipy.optimize.linear_sum_assignment``) on the
   distances between shifted predictions and detections, with pairs farther than the gate
   forbidden, so missing beads and spurious blobs stay unmatched.

The caller then fits the geometry, re-projects and re-matches with a tighter gate
(:func:`tomoprior.calibration.calibrate` does this until the matches stop changing).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

__all__ = ["coarse_shift", "coarse_shifts", "match_points"]


def coarse_shifts(predicted: np.ndarray, detected: np.ndarray, gate_px: float, k: int = 8,
                  max_shift_px: float | None = None) -> list:
    """Candidate translations ``(dc, dr)`` (pixels) that align predictions with detections.

    Every pairing (design bead i, detection j) proposes the shift ``det_j - pred_i``; a
    shift scores the number of shifted predictions within ``gate_px`` of a detection.

    Parameters
    ----------
    predicted : ndarray ``(n, 2)``
        Design beads projected with the initial geometry, ``(col, row)`` px (NaN rows ignored).
    detected : ndarray ``(m, 2)``
    gate_px : float
        Inlier distance in pixels.
    k : int
        Number of distinct candidates returned (best first; ties: smaller shift first).
    max_shift_px : float, optional
        Largest shift considered.

    Returns
    -------
    list of (shift ndarray (2,), inliers int)
        Candidates at least ``gate_px`` apart, each refined to the mean offset of its inliers.
    """
    pred = predicted[np.all(np.isfinite(predicted), axis=1)]
    if len(pred) == 0 or len(detected) == 0:
        return [(np.zeros(2), 0)]
    tree = cKDTree(detected)
    shifts = (detected[None, :, :] - pred[:, None, :]).reshape(-1, 2)
    shifts = np.concatenate([np.zeros((1, 2)), shifts])
    if max_shift_px is not None:
        shifts = shifts[np.hypot(shifts[:, 0], shifts[:, 1]) <= max_shift_px]
    counts = np.zeros(len(shifts), dtype=int)
    chunk = max(1, 200000 // max(len(pred), 1))
    for s0 in range(0, len(shifts), chunk):
        sh = shifts[s0:s0 + chunk]
        d, _ = tree.query((pred[None, :, :] + sh[:, None, :]).reshape(-1, 2), distance_upper_bound=gate_px)
        counts[s0:s0 + chunk] = np.isfinite(d).reshape(len(sh), len(pred)).sum(1)
    order = np.lexsort((np.hypot(shifts[:, 0], shifts[:, 1]), -counts))
    out = []
    for i in order:
        if counts[i] == 0 or len(out) >= k:
            break
        d, j = tree.query(pred + shifts[i], distance_upper_bound=gate_px)
        ok = np.isfinite(d)
        refined = np.mean(detected[j[ok]] - pred[ok], axis=0)
        if all(np.hypot(*(refined - s)) >= gate_px for s, _ in out):
            out.append((refined, int(counts[i])))
    return out or [(np.zeros(2), 0)]


def coarse_shift(predicted: np.ndarray, detected: np.ndarray, gate_px: float, max_shift_px: float | None = None):
    """The best candidate of :func:`coarse_shifts`: ``(shift (2,), inliers)``."""
    return coarse_shifts(predicted, detected, gate_px, k=1, max_shift_px=max_shift_px)[0]


def match_points(predicted: np.ndarray, detected: np.ndarray, gate_px: float):
    """Gated one-to-one assignment of predictions to detections (Hungarian algorithm).

    Parameters
    ----------
    predicted : ndarray ``(n, 2)``
        ``(col, row)`` px; NaN rows never match.
    detected : ndarray ``(m, 2)``
    gate_px : float
        Largest allowed distance of a matched pair.

    Returns
    -------
    design_index, detection_index : ndarray of int, same length ``k``
        Matched pairs, sorted by design index.
    """
    if len(predicted) == 0 or len(detected) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    d = np.linalg.norm(predicted[:, None, :] - detected[None, :, :], axis=-1)
    d = np.where(np.isfinite(d), d, np.inf)
    big = 1e9
    cost = np.where(d <= gate_px, d, big)
    rows, cols = linear_sum_assignment(cost)
    ok = cost[rows, cols] < big
    rows, cols = rows[ok], cols[ok]
    order = np.argsort(rows)
    return rows[order].astype(int), cols[order].astype(int)
