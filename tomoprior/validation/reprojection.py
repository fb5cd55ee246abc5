"""Reprojection error of a geometry against detected beads, correspondence by nearest
prediction, and bi-planar 3D triangulation.

Conventions: pixel coordinates are ``(col, row)`` as returned by
:meth:`tomoprior.Geometry.project_points`; world points are ``(x, y, z)`` in mm. A bead
that was not detected in a view has ``NaN`` observed coordinates in that view; every
statistic ignores it and counts it as missing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..calibration.correspondence import match_points
from ..geometry.geometry import Geometry
from ..geometry.triangulation import triangulate

__all__ = [
    "ReprojectionError",
    "TriangulationError",
    "ViewReprojection",
    "match_to_design",
    "reprojection_error",
    "rigid_align",
    "triangulation_error",
]


def _as_points(xyz, name: str = "points") -> np.ndarray:
    arr = xyz.detach().cpu().numpy() if isinstance(xyz, torch.Tensor) else np.asarray(xyz, dtype=np.float64)
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"{name} must have shape (n, 3) world (x, y, z) in mm, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains non-finite coordinates")
    return arr


def _as_observed(observed, geometry: Geometry, n: int) -> list[np.ndarray]:
    if isinstance(observed, (np.ndarray, torch.Tensor)) and np.ndim(observed) == 3:
        observed = list(observed)
    if not isinstance(observed, Sequence) and not isinstance(observed, list):
        raise ValueError("observed must be a sequence with one (n, 2) array of (col, row) per view")
    if len(observed) != geometry.num_views:
        raise ValueError(f"observed has {len(observed)} view(s) but the geometry has {geometry.num_views}")
    out = []
    for i, o in enumerate(observed):
        a = o.detach().cpu().numpy() if isinstance(o, torch.Tensor) else np.asarray(o, dtype=np.float64)
        a = np.asarray(a, dtype=np.float64)
        if a.shape != (n, 2):
            raise ValueError(
                f"observed[{i}] must have shape ({n}, 2) (col, row) per design bead, NaN when not detected; "
                f"got {a.shape}"
            )
        out.append(a)
    return out


@dataclass
class ViewReprojection:
    """Reprojection statistics of one view (pixels).

    Attributes
    ----------
    name : str
    observed, predicted : ndarray ``(n, 2)``
        Detected and projected ``(col, row)`` per design bead (NaN where not detected).
    residuals : ndarray ``(n, 2)``
        ``observed - predicted``, px.
    rms_px, max_px, mean_px : float
        Over detected beads of the residual lengths ``|r|``; ``rms = sqrt(mean |r|^2)``.
    rms_heldout_px : float or None
        The same RMS restricted to held-out beads, when a held-out mask was given.
    n_detected, n_heldout : int
    """

    name: str
    observed: np.ndarray
    predicted: np.ndarray
    residuals: np.ndarray
    rms_px: float
    max_px: float
    mean_px: float
    n_detected: int
    rms_heldout_px: float | None = None
    n_heldout: int = 0
    heldout: np.ndarray | None = None

    def to_dict(self, vectors: bool = True) -> dict:
        d = {
            "name": self.name, "rms_px": self.rms_px, "max_px": self.max_px, "mean_px": self.mean_px,
            "n_detected": self.n_detected, "rms_heldout_px": self.rms_heldout_px, "n_heldout": self.n_heldout,
        }
        if vectors:
            d["observed"] = _nan_to_none(self.observed)
            d["predicted"] = _nan_to_none(self.predicted)
            d["residuals"] = _nan_to_none(self.residuals)
            if self.heldout is not None:
                d["heldout"] = [bool(x) for x in self.heldout]
        return d


@dataclass
class ReprojectionError:
    """Reprojection error of a geometry against observed beads, per view and overall."""

    views: list[ViewReprojection] = field(default_factory=list)

    @property
    def rms_px(self) -> float:
        r = np.concatenate([v.residuals for v in self.views])
        return _rms(r)

    @property
    def max_px(self) -> float:
        return max((v.max_px for v in self.views if v.n_detected), default=math.nan)

    def to_dict(self, vectors: bool = True) -> dict:
        return {"rms_px": self.rms_px, "max_px": self.max_px, "views": [v.to_dict(vectors) for v in self.views]}


def _nan_to_none(a: np.ndarray) -> list:
    return [[None if not np.isfinite(x) else float(x) for x in row] for row in np.asarray(a)]


def _rms(r: np.ndarray) -> float:
    ok = np.isfinite(r).all(axis=1)
    if not ok.any():
        return math.nan
    return float(np.sqrt(np.mean(np.sum(r[ok] ** 2, axis=1))))


def reprojection_error(geometry: Geometry, points, observed, *, heldout=None) -> ReprojectionError:
    """Reprojection error of ``geometry`` for known 3D beads and their detected images.

    Parameters
    ----------
    geometry : Geometry
    points : array-like ``(n, 3)``
        Bead centres in the world frame, mm (the phantom design after its pose).
    observed : sequence of array-like ``(n, 2)``, one per view
        Detected ``(col, row)`` of each design bead, NaN where the bead was not detected.
    heldout : array-like of bool ``(n,)`` or one per view, optional
        Beads left out of the fit; their RMS is reported separately.

    Returns
    -------
    ReprojectionError

    Examples
    --------
    >>> import tomoprior as tp
    >>> g = tp.BiplanarGeometry.from_parameters(binning=8)
    >>> pts = [[0.0, 0.0, 0.0], [10.0, -5.0, 20.0]]
    >>> obs = g.project_points(pts).numpy() + [0.3, 0.4]
    >>> round(reprojection_error(g, pts, obs).rms_px, 6)
    0.5
    """
    pts = _as_points(points)
    obs = _as_observed(observed, geometry, len(pts))
    pred = geometry.project_points(torch.as_tensor(pts)).detach().cpu().numpy()
    held = None
    if heldout is not None:
        h = np.asarray(heldout, dtype=bool)
        held = [h] * geometry.num_views if h.ndim == 1 else list(h)
        for m in held:
            if np.shape(m) != (len(pts),):
                raise ValueError(f"heldout must have shape ({len(pts)},) (one flag per bead), got {np.shape(m)}")
    views = []
    for i, (view, o, p) in enumerate(zip(geometry.views, obs, pred)):
        r = o - p
        ok = np.isfinite(r).all(axis=1)
        lengths = np.linalg.norm(r[ok], axis=1)
        vr = ViewReprojection(
            name=view.name or f"view{i}", observed=o, predicted=p, residuals=r,
            rms_px=_rms(r), max_px=float(lengths.max()) if ok.any() else math.nan,
            mean_px=float(lengths.mean()) if ok.any() else math.nan, n_detected=int(ok.sum()),
        )
        if held is not None:
            hm = held[i] & ok
            vr.heldout = held[i]
            vr.n_heldout = int(hm.sum())
            vr.rms_heldout_px = _rms(r[hm]) if hm.any() else None
        views.append(vr)
    return ReprojectionError(views)


def match_to_design(predicted, detected, max_distance_px: float = 5.0) -> np.ndarray:
    """Assign detected blobs to design beads by their predicted images.

    One-to-one assignment minimising the total distance (Hungarian algorithm), keeping only
    pairs closer than ``max_distance_px``; spurious blobs and missing beads are allowed.

    Parameters
    ----------
    predicted : array-like ``(n, 2)``
        Projected ``(col, row)`` of the design beads (NaN rows are never matched).
    detected : array-like ``(m, 2)``
        Detected blob centres ``(col, row)``.
    max_distance_px : float
        Gate, px.

    Returns
    -------
    ndarray ``(n, 2)``
        The matched detection per design bead, NaN where none matched.

    Examples
    --------
    >>> match_to_design([[0, 0], [10, 10]], [[10.2, 9.9], [50, 50]]).tolist()
    [[nan, nan], [10.2, 9.9]]
    """
    pred = np.asarray(predicted, dtype=np.float64).reshape(-1, 2)
    det = np.asarray(detected, dtype=np.float64).reshape(-1, 2)
    if not max_distance_px > 0:
        raise ValueError(f"max_distance_px must be > 0, got {max_distance_px}")
    out = np.full_like(pred, np.nan)
    det = det[np.isfinite(det).all(axis=1)]
    # the calibration's gated assignment, so the report and the fit pair beads the same way
    rows, cols = match_points(pred, det, max_distance_px)
    out[rows] = det[cols]
    return out


def rigid_align(source, target) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares rigid transform (Kabsch) taking ``source`` onto ``target``.

    Parameters
    ----------
    source, target : array-like ``(n, 3)``, n >= 3, rows with NaN ignored

    Returns
    -------
    R : ndarray ``(3, 3)``, t : ndarray ``(3,)``, aligned : ndarray ``(n, 3)``
        ``aligned = source @ R.T + t``.
    """
    s = np.asarray(source, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    ok = np.isfinite(s).all(axis=1) & np.isfinite(t).all(axis=1)
    if ok.sum() < 3:
        raise ValueError(f"rigid alignment needs at least 3 common points, got {int(ok.sum())}")
    cs, ct = s[ok].mean(axis=0), t[ok].mean(axis=0)
    H = (s[ok] - cs).T @ (t[ok] - ct)
    U, _, Vt = np.linalg.svd(H)
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(Vt.T @ U.T))])
    R = Vt.T @ D @ U.T
    tt = ct - R @ cs
    return R, tt, s @ R.T + tt


@dataclass
class TriangulationError:
    """3D error of beads triangulated from the views, mm.

    Attributes
    ----------
    points : ndarray ``(n, 3)``
        Triangulated bead centres (NaN where seen in fewer than two views).
    errors_mm : ndarray ``(n,)``
        Distance to the reference position, after the rigid alignment when ``aligned``.
    rms_mm, max_mm : float
    rms_unaligned_mm : float or None
        Error without alignment (meaningful when the reference positions are in the same
        world frame as the geometry, e.g. a simulation with a known phantom pose).
    n : int
        Beads triangulated.
    """

    points: np.ndarray
    errors_mm: np.ndarray
    rms_mm: float
    max_mm: float
    rms_unaligned_mm: float | None
    n: int
    aligned: bool

    def to_dict(self) -> dict:
        return {
            "rms_mm": self.rms_mm, "max_mm": self.max_mm, "rms_unaligned_mm": self.rms_unaligned_mm,
            "n": self.n, "aligned": self.aligned,
            "errors_mm": [None if not np.isfinite(e) else float(e) for e in self.errors_mm],
        }


def triangulation_error(geometry: Geometry, observed, reference_points, *, align: bool = True) -> TriangulationError:
    """Triangulate beads from their detected images and compare with the design.

    The design positions are known only up to the phantom's pose on real systems, so the
    default compares after the best rigid alignment (6 DOF, no scale: a scale error of
    the geometry stays visible).

    Parameters
    ----------
    geometry : Geometry
        Two or more views.
    observed : sequence of array-like ``(n, 2)``
        Detected ``(col, row)`` per design bead and view (NaN where missing).
    reference_points : array-like ``(n, 3)``
        Design bead centres (world frame of the simulation, or phantom frame), mm.
    align : bool
        Rigidly align the triangulated points to the reference first.
    """
    ref = _as_points(reference_points, "reference_points")
    X = triangulate(geometry, observed)
    ok = np.isfinite(X).all(axis=1)
    err_raw = np.linalg.norm(X - ref, axis=1)
    rms_raw = float(np.sqrt(np.mean(err_raw[ok] ** 2))) if ok.any() else math.nan
    if align and ok.sum() >= 3:
        _, _, Xa = rigid_align(X, ref)
        err = np.linalg.norm(Xa - ref, axis=1)
    else:
        err = err_raw
    rms = float(np.sqrt(np.mean(err[ok] ** 2))) if ok.any() else math.nan
    return TriangulationError(
        points=X, errors_mm=np.where(ok, err, np.nan), rms_mm=rms,
        max_mm=float(err[ok].max()) if ok.any() else math.nan, rms_unaligned_mm=rms_raw, n=int(ok.sum()),
        aligned=bool(align and ok.sum() >= 3),
    )
