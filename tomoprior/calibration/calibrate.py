"""Bead-phantom calibration: detect -> match -> fit -> held-out and triangulation checks."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from ..geometry import DEFAULT_GRID, Geometry, ParametricGeometry, UnitsWarning, ViewParameters
from ..geometry.triangulation import triangulate
from .correspondence import coarse_shifts, match_points
from .design import BeadDesign, bead_design
from .detection import Detections, detect_beads
from .fit import ANGLES, FIELDS, POSE_NAMES, FitProblem, fit_geometry, rotation_from_vector
from .result import CalibrationError, CalibrationResult

__all__ = ["calibrate"]

#: Fewest matched beads per view accepted by default (9 parameters need >= 5; 8 gives a
#: meaningful residual and survives a few outliers).
MIN_BEADS = 8
#: Matching iterations (fit -> re-project -> re-match) per view.
MATCH_ITERATIONS = 8
#: Final correspondence gate: this many times the median residual length of the robust
#: single-view fit (about 6 sigma per axis for Gaussian centroid noise), but at least
#: :data:`FINAL_GATE_MIN_PX`. A blob farther than that from every predicted bead stays
#: unmatched; one closer than the floor to an occluded bead's prediction cannot be told
#: from the bead by position alone.
FINAL_GATE_MEDIANS = 5.0
FINAL_GATE_MIN_PX = 1.5


def _initial_parameters(initial_geometry) -> tuple[list, object]:
    grid = getattr(initial_geometry, "grid", None)
    if isinstance(initial_geometry, ParametricGeometry):
        return list(initial_geometry.parameters), grid
    if isinstance(initial_geometry, ViewParameters):
        return [initial_geometry], None
    if isinstance(initial_geometry, Sequence) and not isinstance(initial_geometry, (str, bytes)) and \
            initial_geometry and all(isinstance(p, ViewParameters) for p in initial_geometry):
        return list(initial_geometry), None
    if isinstance(initial_geometry, Geometry):
        raise TypeError(
            "initial_geometry is a Geometry of raw view vectors; calibration fits physical parameters. Pass a "
            "BiplanarGeometry (tp.BiplanarGeometry.from_parameters(...)) or a list of tp.ViewParameters, e.g. "
            "nominal values or those read from the DICOM tags"
        )
    raise TypeError(
        f"initial_geometry must be a ParametricGeometry (e.g. BiplanarGeometry), a ViewParameters or a list of "
        "ViewParameters, "
        f"got {type(initial_geometry).__name__}"
    )


def _is_points(x) -> bool:
    if isinstance(x, Detections):
        return True
    a = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x)
    return a.ndim == 2 and a.shape[1] == 2


def _views_input(images_or_points, params, kind, flat, detect_kwargs) -> list:
    """-> list of Detections, one per view (detecting beads in images if needed)."""
    n_views = len(params)
    x = images_or_points
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if isinstance(x, np.ndarray) and x.ndim == 3:
        items = list(x)
    elif isinstance(x, (list, tuple)):
        items = list(x)
    elif isinstance(x, np.ndarray) and x.ndim == 2 and n_views == 1:
        items = [x]
    else:
        raise ValueError(
            "images_or_points must be an array (views, rows, cols) of images, or a list (one per view) of images "
            f"(rows, cols), Detections or (n, 2) (col, row) point arrays; got {type(x).__name__} "
            f"{getattr(x, 'shape', '')}"
        )
    if len(items) != n_views:
        raise ValueError(f"got {len(items)} image(s)/point set(s) but the initial geometry has {n_views} view(s)")
    out = []
    flats = flat if isinstance(flat, (list, tuple)) else [flat] * n_views
    for i, (item, p) in enumerate(zip(items, params)):
        if isinstance(item, Detections):
            out.append(item)
            continue
        if _is_points(item):
            pts = np.asarray(item.detach().cpu() if isinstance(item, torch.Tensor) else item, dtype=np.float64)
            out.append(Detections.from_points(pts, image_shape=p.detector_shape))
            continue
        img = np.asarray(item.detach().cpu() if isinstance(item, torch.Tensor) else item)
        if img.ndim != 2:
            raise ValueError(f"view {i}: an image must be 2D (rows, cols), got shape {img.shape}")
        if tuple(img.shape) != tuple(p.detector_shape):
            raise ValueError(
                f"view {i} ({p.name!r}): image shape {tuple(img.shape)} does not match the detector shape "
                f"{tuple(p.detector_shape)} of the initial geometry; crop/bin the image or fix detector_shape "
                "and pixel_pitch (e.g. ViewParameters.binned)"
            )
        try:
            out.append(detect_beads(img, kind=kind, flat=flats[i], **(detect_kwargs or {})))
        except ValueError as exc:
            raise ValueError(f"view {i} ({p.name!r}): {exc}") from exc
    return out


def _project(params: ViewParameters, world: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return params.to_view().project_points(torch.as_tensor(world, dtype=torch.float64)).detach().numpy()


def _heldout_indices(heldout, design: BeadDesign, seed: int, min_beads: int) -> np.ndarray:
    n = len(design)
    if heldout is None or (isinstance(heldout, (int, float)) and not isinstance(heldout, bool) and heldout == 0):
        return np.zeros(0, int)
    if isinstance(heldout, float):
        if not 0.0 <= heldout < 1.0:
            raise ValueError(f"heldout as a fraction must be in [0, 1), got {heldout}")
        k = round(heldout * n)
        return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))
    if isinstance(heldout, int) and not isinstance(heldout, bool):
        if not 0 <= heldout < n:
            raise ValueError(f"heldout as a count must be in [0, {n}), got {heldout}")
        return np.sort(np.random.default_rng(seed).choice(n, size=heldout, replace=False))
    ids = list(heldout)
    unknown = [i for i in ids if i not in design.ids]
    if unknown:
        raise ValueError(f"heldout bead ids {unknown} are not in the design (ids {design.ids[0]} .. {design.ids[-1]})")
    return np.sort(np.array([design.ids.index(i) for i in ids], dtype=int))


def _fmt_points(pts: np.ndarray, limit: int = 8) -> str:
    s = ", ".join(f"({c:.1f}, {r:.1f})" for c, r in pts[:limit])
    return s + (", ..." if len(pts) > limit else "") if len(pts) else "none"


def _fit_affine(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2D transform ``dst ~ A @ [src, 1]`` (3x3 homogeneous): translation for 1 pair,
    similarity for 2-5 pairs, affine for 6 or more (least squares)."""
    t = np.eye(3)
    if len(src) == 0:
        return t
    if len(src) == 1:
        t[:2, 2] = dst[0] - src[0]
        return t
    if len(src) < 6:
        # similarity: [a -b; b a] src + (tx, ty)
        a = np.zeros((2 * len(src), 4))
        a[0::2] = np.column_stack([src[:, 0], -src[:, 1], np.ones(len(src)), np.zeros(len(src))])
        a[1::2] = np.column_stack([src[:, 1], src[:, 0], np.zeros(len(src)), np.ones(len(src))])
        (ca, cb, tx, ty), *_ = np.linalg.lstsq(a, dst.reshape(-1), rcond=None)
        t[:2] = [[ca, -cb, tx], [cb, ca, ty]]
        return t
    a = np.column_stack([src, np.ones(len(src))])
    coef, *_ = np.linalg.lstsq(a, dst, rcond=None)
    t[:2] = coef.T
    return t


def _apply(t: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ t[:2, :2].T + t[:2, 2]


def _match_view(params, world, det, gate0, max_nfev):
    """Correspondence for one view; returns (fitted params, design_idx, det_idx).

    1. coarse translation, then a 2D similarity/affine alignment of the predicted bead
       images to the detections, re-matched until stable (absorbs scale, in-plane rotation
       and shear errors of the initial geometry without touching the 3D parameters);
    2. fit the view's parameters (phantom pose fixed) to the matches, re-project, re-match
       with a gate shrinking to 6x the residual RMS, until the matches stop changing.
    """
    pts = det.positions
    pred0 = _project(params, world)
    ok = np.all(np.isfinite(pred0), axis=1)
    pred0 = np.where(ok[:, None], pred0, np.nan)
    best = None
    for shift, _ in coarse_shifts(pred0, pts, 2.0 * gate0, k=6):
        t = np.eye(3)
        t[:2, 2] = shift
        prev = None
        for _ in range(MATCH_ITERATIONS):
            di, dj = match_points(_apply(t, pred0), pts, gate0)
            key = (tuple(di), tuple(dj))
            if key == prev:
                break
            prev = key
            t = _fit_affine(pred0[di], pts[dj])
        r = _apply(t, pred0[di]) - pts[dj]
        score = (len(di), -float(np.sqrt(np.mean(r**2))) if len(di) else 0.0)
        if best is None or score > best[0]:
            best = (score, di, dj)
    di, dj = best[1], best[2]
    cur, gate, prev = params, gate0, None
    for _ in range(MATCH_ITERATIONS):
        if len(di) < 5:
            break
        fields = FIELDS if len(di) >= 8 else ("u0", "v0", "detector_rotation", "source_to_detector")
        # prior toward the initial geometry and a robust (Cauchy, 1 px) loss: a partial or
        # partly wrong early match must not bend the geometry
        obs = [(di, pts[dj])]
        prob = FitProblem.build([params], world, obs, fit_fields=fields).with_matching_prior()
        start = FitProblem.build([cur], world, obs, fit_fields=fields).x0()
        out = fit_geometry(prob, max_nfev=max_nfev, tol=1e-8, loss="cauchy", f_scale=1.0, x0=start)
        cur = out.parameters[0]
        r = np.concatenate(out.residuals)
        pred = _project(cur, world)
        if len(fields) == len(FIELDS):
            # gate from a robust scale of the residual lengths (their median): wrong matches
            # (a stray blob next to an occluded bead) have large residuals under the robust
            # fit and must not widen the gate that would let them stay matched
            med = float(np.median(np.hypot(r[:, 0], r[:, 1]))) if r.size else 0.0
            gate = float(min(gate0, max(FINAL_GATE_MEDIANS * med, FINAL_GATE_MIN_PX)))
        di, dj = match_points(pred, pts, gate)
        key = (tuple(di), tuple(dj))
        if key == prev:
            break
        prev = key
    return cur, di, dj


@dataclass(frozen=True)
class _FitSetup:
    """What every joint fit of one calibration shares: the start parameters per view, the
    bead design, the gauge, the fitted fields, the initial phantom pose (6,) and the budget."""

    start: list
    design: BeadDesign
    gauge: str
    fit_fields: Sequence[str] | None
    pose0: np.ndarray
    max_nfev: int

    def problem(self, obs) -> FitProblem:
        """The least-squares problem for ``obs`` (per view: design indices, ``(k, 2)`` px)."""
        return FitProblem.build(self.start, self.design.positions, obs, gauge=self.gauge, fit_fields=self.fit_fields,
                                pose=self.pose0)


class _JointFit(NamedTuple):
    problem: FitProblem
    outcome: object
    obs: list
    limit_px: float
    rejected: list


class _HeldOut(NamedTuple):
    """Held-out prediction errors per view: residuals ``(m_v, 2)`` px, their bead ids, and the
    ids of held-out beads whose match lies beyond the outlier limit (not counted)."""

    residuals: list
    ids: list
    rejected: list


def _joint_fit(setup: _FitSetup, obs, outlier_sigma, min_beads) -> _JointFit:
    """Joint least-squares fit of all views plus one round of outlier rejection.

    Returns ``(problem, outcome, inlier observations, limit_px, rejected)``: ``limit_px`` is
    the residual length beyond which a match counts as an outlier (the same limit is applied
    to held-out beads, so every statistic is computed over one inlier set) and
    ``rejected[v]`` the design indices dropped from view ``v``.
    """
    problem = setup.problem(obs)
    outcome = fit_geometry(problem, max_nfev=setup.max_nfev)
    lengths = [np.hypot(r[:, 0], r[:, 1]) for r in outcome.residuals]
    limit = outlier_limit(outcome.sigma, outlier_sigma)
    rejected = [idx[ln > limit] for (idx, _), ln in zip(obs, lengths)]
    if any(len(r) for r in rejected):
        obs = [(idx[ln <= limit], pts[ln <= limit]) for (idx, pts), ln in zip(obs, lengths)]
        for i, (idx, _) in enumerate(obs):
            if len(idx) < min_beads:
                raise CalibrationError(
                    f"view {i}: only {len(idx)} beads remain after rejecting residuals > {limit:.2f} px; need "
                    f"{min_beads}. The correspondence or the detections are probably wrong", view=i,
                    matched=len(idx), needed=min_beads,
                )
        problem = setup.problem(obs)
        outcome = fit_geometry(problem, x0=outcome.x, max_nfev=setup.max_nfev)
    return _JointFit(problem, outcome, obs, limit, rejected)


def outlier_limit(sigma_px: float, outlier_sigma: float) -> float:
    """Residual length (px) beyond which a match is an outlier: ``outlier_sigma`` residual
    sigmas of a 2D residual vector (``sqrt(2) sigma`` per bead), at least 1 px."""
    return max(outlier_sigma * float(sigma_px) * math.sqrt(2), 1.0)


def _uncertainty(outcome, problem, params) -> tuple[list, np.ndarray]:
    std = np.sqrt(np.clip(np.diag(outcome.covariance), 0, None))
    std = np.where(np.isnan(np.diag(outcome.covariance)), np.inf, std)
    per_view = []
    for i, p in enumerate(params):
        u = {}
        for f in FIELDS:
            key = f + "_deg" if f in ANGLES else f
            if (i, f) in outcome.names:
                val = float(std[outcome.names.index((i, f))])
                u[key] = math.degrees(val) if f in ANGLES else val
            else:
                u[key] = 0.0
        pr, pc = p.to_view().pixel_pitch
        u["u0_px"] = u["u0"] / pc
        u["v0_px"] = u["v0"] / pr
        per_view.append(u)
    pose_std = np.zeros(6)
    for k, n in enumerate(POSE_NAMES):
        if (-1, n) in outcome.names:
            pose_std[k] = std[outcome.names.index((-1, n))]
    return per_view, pose_std


def calibrate(
    images_or_points,
    phantom,
    initial_geometry,
    *,
    heldout: float | int | Sequence[str] | None = 0.2,
    seed: int = 0,
    kfold: int | None = None,
    gauge: str = "phantom",
    kind: str = "raw",
    flat=None,
    detect_kwargs: dict | None = None,
    fit_fields: Sequence[str] | None = None,
    phantom_pose=None,
    min_beads: int = MIN_BEADS,
    gate_px: float | None = None,
    max_nfev: int = 200,
    outlier_sigma: float = 5.0,
) -> CalibrationResult:
    """Calibrate the geometry of one or more views from images (or points) of a bead phantom.

    Parameters
    ----------
    images_or_points : array ``(views, rows, cols)``, or list per view of images ``(rows, cols)``,
        :class:`Detections` or ``(n, 2)`` arrays of detected ``(col, row)`` pixels.
    phantom : str, Phantom or BeadDesign
        The bead phantom, e.g. ``"bead_cage"``.
    initial_geometry : ParametricGeometry (e.g. BiplanarGeometry), ViewParameters or list of ViewParameters
        Nominal or DICOM-derived parameters; the fit starts here and the correspondence uses
        it (errors of tens of mm in the distances, several mm of detector offset and
        a few degrees of rotation/tilt are fine).
    heldout : float, int or list of bead ids
        Beads left out of the fit (in every view) to measure the prediction error: a fraction
        of the design, a count, or explicit ids. Default 0.2.
    seed : int
        Seed of the held-out draw (and of the fold assignment).
    kfold : int, optional
        If given (>= 2), ``heldout`` is ignored: the final fit uses every matched bead and
        the held-out residuals are k-fold cross-validated (each bead predicted by a fit
        without its fold), which uses all the data for the geometry at k extra fits' cost.
    gauge : {"phantom", "view0"}
        ``"phantom"``: the phantom's design frame (placed by ``phantom_pose``) is the world
        frame; 9 parameters per view are fitted. ``"view0"``: the phantom pose (6 DOF) is
        fitted and the first view's gantry angles, source-to-isocenter distance, detector
        rotation and tilts are held at their initial values. See :mod:`.fit`.
    kind, flat, detect_kwargs
        Passed to :func:`detect_beads` for images.
    fit_fields : sequence of str, optional
        Subset of :attr:`ViewParameters.SCALAR_FIELDS` to fit (default all nine).
    phantom_pose : (6,), optional
        Initial (fixed for ``gauge="phantom"``) pose: rotation vector (rad) and translation (mm).
    min_beads : int
        Fewest matched beads per view (default 8).
    gate_px : float, optional
        Correspondence gate in pixels for the first match; default 0.45 times the smallest
        distance between predicted bead images (so no detection can be ambiguous).
    max_nfev : int
        Function evaluations allowed to the final least-squares fit.
    outlier_sigma : float
        Matched beads with a residual beyond this many residual sigmas (and > 1 px) are
        dropped once and the fit repeated.

    Returns
    -------
    CalibrationResult

    Raises
    ------
    ValueError
        Too few beads detected or matched in a view (the message says how many and where),
        image/geometry shape mismatch, NaN pixels, unknown phantom (available ones listed).
    TypeError
        An initial geometry without physical parameters.
    """
    with warnings.catch_warnings():
        # fitted values are numbers, not typed angles: a wild fit (wrong images) may hold
        # large tilts, and the QA verdict reports that; no units warning for it
        warnings.simplefilter("ignore", UnitsWarning)
        return _calibrate(images_or_points, phantom, initial_geometry, heldout=heldout, seed=seed, kfold=kfold,
                          gauge=gauge, kind=kind, flat=flat, detect_kwargs=detect_kwargs, fit_fields=fit_fields,
                          phantom_pose=phantom_pose, min_beads=min_beads, gate_px=gate_px, max_nfev=max_nfev,
                          outlier_sigma=outlier_sigma)


def _calibrate(images_or_points, phantom, initial_geometry, *, heldout, seed, kfold, gauge, kind, flat, detect_kwargs,
               fit_fields, phantom_pose, min_beads, gate_px, max_nfev, outlier_sigma) -> CalibrationResult:
    """The steps of :func:`calibrate`: inputs, correspondence per view, joint fit with outlier
    rejection, held-out prediction errors, triangulation check, result."""
    params, grid = _initial_parameters(initial_geometry)
    design = bead_design(phantom)
    if isinstance(min_beads, bool) or not isinstance(min_beads, int) or min_beads < 5:
        raise ValueError(f"min_beads must be an integer >= 5 (9 parameters per view), got {min_beads!r}")
    dets = _views_input(images_or_points, params, kind, flat, detect_kwargs)
    pose0 = np.zeros(6) if phantom_pose is None else np.asarray(phantom_pose, dtype=np.float64).reshape(6)
    world = (design.positions @ rotation_from_vector(torch.as_tensor(pose0[:3])).numpy().T) + pose0[3:]
    train_mask = _train_mask(design, heldout, seed, kfold, min_beads)
    matched = [_match_one_view(i, p, det, design, world, train_mask, min_beads, gate_px)
               for i, (p, det) in enumerate(zip(params, dets))]

    # -- joint fit on the training beads -------------------------------------------------------
    setup = _FitSetup(_fit_start(matched, params, gauge), design, gauge, fit_fields, pose0, max_nfev)
    obs = [(di[train_mask[di]], det.positions[dj[train_mask[di]]]) for (_, di, dj), det in zip(matched, dets)]
    fit = _joint_fit(setup, obs, outlier_sigma, min_beads)
    world_fit = fit.problem.world_points(torch.as_tensor(fit.outcome.pose)).detach().numpy()

    # -- held-out prediction errors over one inlier set ---------------------------------------
    inliers = _inlier_matches(matched, fit.obs, train_mask)
    if kfold:
        held = _kfold_heldout(setup, fit, kfold, seed, len(params))
    else:
        held = _split_heldout(fit, inliers, dets, train_mask, design, world_fit)
    tri_rms, tri_err = _triangulation_check(fit.outcome.parameters, inliers, dets, design, world_fit)
    return _assemble_result(setup, params, grid, dets, fit, world_fit, held, inliers, tri_rms, tri_err)


def _train_mask(design: BeadDesign, heldout, seed: int, kfold, min_beads: int) -> np.ndarray:
    """Boolean mask ``(len(design),)`` of the beads the fit may use (False: held out). With
    ``kfold`` every bead is fitted (the folds give the held-out errors)."""
    if kfold is not None:
        if isinstance(kfold, bool) or not isinstance(kfold, int) or not 2 <= kfold <= len(design):
            raise ValueError(f"kfold must be an integer in [2, {len(design)}], got {kfold!r}")
        heldout = 0
    held = _heldout_indices(heldout, design, seed, min_beads)
    train_mask = np.ones(len(design), bool)
    train_mask[held] = False
    if train_mask.sum() < min_beads:
        raise ValueError(f"only {int(train_mask.sum())} beads left for the fit after holding out {len(held)}; "
                         "hold out fewer")
    return train_mask


def _match_one_view(i, p, det, design, world, train_mask, min_beads, gate_px):
    """Correspondence of view ``i`` (parameters ``p``, detections ``det``) with the design beads
    placed at ``world`` (mm): ``(view parameters fitted to the matches, design_idx, det_idx)``.
    Raises :class:`CalibrationError` when too few beads are detected or matched."""
    where = f"view {i} ({p.name!r})"
    if len(det) < min_beads:
        raise CalibrationError(
            f"{where}: found only {len(det)} bead(s) (need >= {min_beads} of the {len(design)} in "
            f"{design.name!r}) at (col, row) px: {_fmt_points(det.positions)}. Check exposure, kind='raw' vs "
            "'line_integrals', expected_radius_px or the detection threshold", view=i, view_name=p.name,
            matched=0, detected=len(det), needed=min_beads,
        )
    pred = _project(p, world)
    finite = pred[np.all(np.isfinite(pred), axis=1)]
    if len(finite) < 2:
        raise ValueError(f"{where}: the design beads do not project onto the detector with the initial geometry")
    dd = np.linalg.norm(finite[:, None] - finite[None], axis=-1) + np.eye(len(finite)) * 1e9
    gate0 = float(gate_px) if gate_px is not None else max(0.45 * float(dd.min()), 2.0)
    p_fit, di, dj = _match_view(p, world, det, gate0, 50)
    n_train = int(train_mask[di].sum())
    if n_train < min_beads:
        raise CalibrationError(
            f"{where}: only {len(di)} of {len(det)} detected beads could be matched to the design "
            f"({n_train} for the fit; need >= {min_beads}). Detected at (col, row) px: "
            f"{_fmt_points(det.positions)}. Check the initial geometry (angles, distances, detector offset) "
            "and the phantom name", view=i, view_name=p.name, matched=len(di), detected=len(det), needed=min_beads,
        )
    return p_fit, di, dj


def _fit_start(matched, params, gauge: str) -> list:
    """Start parameters of the joint fit: each view's single-view fit; with ``gauge="view0"``
    view 0's frame-defining fields keep the user's initial values."""
    start = [m[0] for m in matched]
    if gauge == "view0":
        start[0] = start[0].replace(**{f: getattr(params[0], f) for f in
                                       ("primary_angle", "secondary_angle", "source_to_isocenter",
                                        "detector_rotation", "detector_tilt_u", "detector_tilt_v")})
    return start


def _inlier_matches(matched, obs, train_mask) -> list:
    """One inlier set for every statistic: the fit's inliers plus the held-out matches (the
    held-out ones beyond the outlier limit are dropped later by :func:`_split_heldout`: a
    held-out bead matched to a stray blob must not count as a geometry error, nor enter the
    triangulation). Per view ``(design_idx, det_idx)``."""
    inliers = []
    for (_, di, dj), (idx_fit, _) in zip(matched, obs):
        keep = np.isin(di, idx_fit) | ~train_mask[di]
        inliers.append((di[keep], dj[keep]))
    return inliers


def _kfold_heldout(setup: _FitSetup, fit: _JointFit, kfold: int, seed: int, n_views: int) -> _HeldOut:
    """k-fold cross-validation: each fold is predicted by a fit that never saw it."""
    design, obs = setup.design, fit.obs
    folds = np.random.default_rng(seed).permutation(len(design)) % kfold
    h_res = [np.zeros((0, 2)) for _ in range(n_views)]
    h_ids = [() for _ in range(n_views)]
    h_rejected = [() for _ in range(n_views)]
    for f in range(kfold):
        keep = [folds[idx] != f for idx, _ in obs]
        obs_f = [(idx[k], pts[k]) for (idx, pts), k in zip(obs, keep)]
        if any(len(idx) < 5 for idx, _ in obs_f):
            raise ValueError(f"kfold={kfold} leaves fewer than 5 beads in a view for fold {f}; use fewer folds")
        prob_f = setup.problem(obs_f)
        out_f = fit_geometry(prob_f, x0=fit.outcome.x, max_nfev=setup.max_nfev)
        w_f = prob_f.world_points(torch.as_tensor(out_f.pose)).detach().numpy()
        for v, ((idx, pts), k) in enumerate(zip(obs, keep)):
            pred = _project(out_f.parameters[v], w_f[idx[~k]])
            h_res[v] = np.concatenate([h_res[v], pred - pts[~k]])
            h_ids[v] = h_ids[v] + tuple(design.ids[j] for j in idx[~k])
    return _HeldOut(h_res, h_ids, h_rejected)


def _split_heldout(fit: _JointFit, inliers: list, dets, train_mask, design: BeadDesign, world_fit) -> _HeldOut:
    """Prediction errors of the held-out beads under the joint fit. Held-out matches beyond
    the fit's outlier limit are reported as rejected and removed from ``inliers`` (in place)."""
    fitted = fit.outcome.parameters
    h_res, h_ids, h_rejected = [], [], []
    for v, ((di, dj), det) in enumerate(zip(inliers, dets)):
        hm = ~train_mask[di]
        r = _project(fitted[v], world_fit[di[hm]]) - det.positions[dj[hm]]
        ok = np.hypot(r[:, 0], r[:, 1]) <= fit.limit_px
        h_res.append(r[ok])
        h_ids.append(tuple(design.ids[k] for k in di[hm][ok]))
        h_rejected.append(tuple(design.ids[k] for k in di[hm][~ok]))
        drop = np.isin(di, di[hm][~ok])
        inliers[v] = (di[~drop], dj[~drop])
    return _HeldOut(h_res, h_ids, h_rejected)


def _triangulation_check(fitted, inliers, dets, design: BeadDesign, world_fit) -> tuple[float, dict]:
    """Triangulate the inlier beads matched in at least two views with the fitted geometry:
    ``(RMS 3D error in mm, {bead id: error in mm})`` against the design placed by the fitted
    pose; ``(nan, {})`` for one view or no bead seen twice."""
    tri_err: dict = {}
    tri_rms = float("nan")
    if len(fitted) >= 2:
        table = np.full((len(fitted), len(design), 2), np.nan)
        for v, ((di, dj), det) in enumerate(zip(inliers, dets)):
            table[v, di] = det.positions[dj]
        seen = np.sum(np.all(np.isfinite(table), axis=2), axis=0) >= 2
        if seen.any():
            xyz = triangulate(fitted, [t[seen] for t in table])
            err = np.linalg.norm(xyz - world_fit[seen], axis=1)
            tri_err = {design.ids[k]: float(e) for k, e in zip(np.flatnonzero(seen), err)}
            tri_rms = float(np.sqrt(np.mean(err**2)))
    return tri_rms, tri_err


def _residual_summary(residuals: list, heldout_residuals: list) -> dict:
    """RMS residual length over all views and per view, largest per view, and the held-out
    RMS (NaN without held-out beads); all in pixels."""
    all_r = np.concatenate(residuals)
    hr = np.concatenate(heldout_residuals) if heldout_residuals else np.zeros((0, 2))
    return {
        "rms_px": float(np.sqrt(np.mean(np.sum(all_r**2, axis=1)))),
        "rms_per_view": [float(np.sqrt(np.mean(np.sum(r**2, axis=1)))) for r in residuals],
        "max_px": [float(np.hypot(r[:, 0], r[:, 1]).max()) for r in residuals],
        "heldout_rms_px": float(np.sqrt(np.mean(np.sum(hr**2, axis=1)))) if len(hr) else float("nan"),
    }


def _assemble_result(setup: _FitSetup, params, grid, dets, fit: _JointFit, world_fit, held: _HeldOut,
                     inliers, tri_rms: float, tri_err: dict) -> CalibrationResult:
    """Gather the fit, its uncertainty and every check into a :class:`CalibrationResult`."""
    design, outcome = setup.design, fit.outcome
    fitted = outcome.parameters
    residuals = list(outcome.residuals)
    uncertainty, pose_std = _uncertainty(outcome, fit.problem, fitted)
    grid = grid if grid is not None else DEFAULT_GRID
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        geometry = ParametricGeometry.of(grid, fitted)
    return CalibrationResult(
        geometry=geometry, parameters=fitted, uncertainty=uncertainty, residuals=residuals,
        residual_ids=[tuple(design.ids[k] for k in idx) for idx, _ in fit.obs], heldout_residuals=held.residuals,
        heldout_ids=held.ids, **_residual_summary(residuals, held.residuals), triangulation_rms_mm=tri_rms,
        triangulation_errors_mm=tri_err, pose=outcome.pose, pose_uncertainty=pose_std, gauge=setup.gauge,
        converged=outcome.converged, message=outcome.message,
        sigma_px=outcome.sigma, condition_number=outcome.condition, covariance=outcome.covariance,
        parameter_names=[f"view{i}.{f}" if i >= 0 else f for i, f in outcome.names], detections=dets,
        phantom=design.name, nfev=outcome.nfev, initial_parameters=list(params), n_design=len(design),
        matches=[(design_index.copy(), detection_index.copy()) for design_index, detection_index in inliers],
        rejected_ids=[tuple(design.ids[k] for k in r) for r in fit.rejected], heldout_rejected_ids=held.rejected,
        outlier_limit_px=fit.limit_px, design_ids=tuple(design.ids), solver_message=outcome.solver_message,
        world_points=world_fit,
    )
