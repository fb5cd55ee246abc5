"""Evaluation of refiners on a dataset split.

:func:`evaluate` runs a refiner over the samples of one split of a tomoprior dataset file and
scores every reconstruction against the stored volume, optionally with X-rays re-synthesised
through a perturbed geometry (the engine of :mod:`tomoprior.studies.miscalibration`).

Intensity conventions (volumes are linear attenuation in 1/mm; ``E`` = the phantom's effective
energy, 60 keV for the procedural skulls, read from each sample's provenance):

- ``HU = 1000 (mu / mu_water(E) - 1)`` (:func:`tomoprior.data.mu_to_hu`).
- **X2CT-GAN (MAX 4095)**: ``clip(HU + 1024, 0, 4095)``; PSNR over the whole volume (one MSE)
  with peak 4095; 3D SSIM with data range 4095.
- **PSCT-Net (MAX 2500)**: PSCT-Net keeps bone only (HU > 200) scaled to [0, 1]. We take the
  bone window ``b = clip(HU - 200, 0, 2500)`` (0 for everything that is not bone, a 2500-HU
  window starting at the paper's bone threshold), so PSNR with MAX 2500 on ``b`` is exactly
  PSNR with MAX 1 on the [0, 1] bone target ``b / 2500``; PSNR is slice-averaged over axial
  slices (slices empty in both volumes are left out), SSIM is 3D with data range 2500. The
  paper does not state its window's upper end in what we read: this is our choice, labelled.
- **official** (``official_*`` keys): the same bone window divided by 2500 (float32, as the
  network output), scored exactly as the public PSCT-Net test script does
  (:func:`tomoprior.metrics.official_scores`): integer truncation of ``x 2500``, slice PSNR over
  the three axes with 100 dB for identical slices, PSNR3D (100 dB when identical), 2D SSIM with a
  7 x 7 uniform window. Comparable with the paper's numbers in definition, not in data; the
  empty-slice rule lets an all-zero prediction score high (``docs/metrics.md``).
- MAE in HU (unclipped) and in 1/mm; bone Dice and surface distances (ASSD, HD95, mm, marching
  cubes at the threshold) of ``mu > bone_threshold_mu`` (0.035 /mm, about 700 HU at 60 keV);
  projection consistency = the prediction re-projected through the geometry the test X-rays
  were really made with, compared with those X-rays (relative L2 and MAE).
- A refiner whose output never reaches 0.035 /mm (a smooth back-projection, an under-trained
  network) has Dice 0 and undefined surface distances there. :func:`fit_bone_threshold` fits
  the prediction's own bone level on training samples (maximum mean Dice against the targets'
  ``mu > 0.035 /mm``), and ``evaluate(..., pred_bone_threshold_mu=...)`` scores the bone metrics
  at that level; the targets keep theirs. Results say which level each refiner used.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .._atomic import write_text_atomic
from .._threads import torch_threads
from ..data import DEFAULT_ENERGY_KEV, DatasetFile, GeometryPerturbation, TomopriorDataset, mu_to_hu, synthesize
from ..data.h5 import SPLITS
from ..geometry import Geometry, ParametricGeometry
from ..metrics import (
    DEFAULT_BONE_THRESHOLD_MU,
    dice,
    mae,
    official_scores,
    projection_consistency,
    psnr,
    ssim,
    surface_distances,
)
from ..refiners.base import Refiner, check_finite_weights, resolve_device
from ..refiners.prior import build_prior

__all__ = [
    "BONE_THRESHOLD_CANDIDATES",
    "METRICS",
    "PAIRED_METRICS",
    "EvaluationResult",
    "compare_markdown",
    "evaluate",
    "fit_atlas",
    "fit_bone_threshold",
    "fit_bp_prior",
    "geometry_error_px",
    "paired_comparison",
    "paired_markdown",
    "sample_metrics",
    "to_bone_window",
    "to_x2ctgan",
    "validation_metrics",
]

#: Metric keys, with their label and unit, in table order. ``higher`` says which way is better.
METRICS: dict[str, dict] = {
    "psnr_x2ctgan": {"label": "PSNR X2CT-GAN (MAX 4095, volume)", "unit": "dB", "higher": True},
    "psnr_psctnet": {"label": "PSNR PSCT-Net (MAX 2500, bone, slice-avg)", "unit": "dB", "higher": True},
    "ssim_x2ctgan": {"label": "SSIM 3D (HU+1024, range 4095)", "unit": "", "higher": True},
    "ssim_psctnet": {"label": "SSIM 3D (bone window, range 2500)", "unit": "", "higher": True},
    "official_psnr_slice": {"label": "official slice PSNR (PSCT-Net code, 3 axes, empty = 100 dB)", "unit": "dB",
                            "higher": True},
    "official_psnr_3d": {"label": "official PSNR3D (PSCT-Net code)", "unit": "dB", "higher": True},
    "official_ssim": {"label": "official SSIM (PSCT-Net code, 2D 7x7)", "unit": "", "higher": True},
    "mae_hu": {"label": "MAE", "unit": "HU", "higher": False},
    "mae_mu": {"label": "MAE", "unit": "1/mm", "higher": False},
    "dice_bone": {"label": "bone Dice", "unit": "", "higher": True},
    "assd_mm": {"label": "bone ASSD", "unit": "mm", "higher": False},
    "hd95_mm": {"label": "bone HD95", "unit": "mm", "higher": False},
    "proj_rel_l2": {"label": "projection rel. L2", "unit": "", "higher": False},
    "proj_mae": {"label": "projection MAE", "unit": "att. x mm", "higher": False},
}
#: Columns of the short tables (:meth:`EvaluationResult.to_markdown`).
TABLE_METRICS = ("psnr_x2ctgan", "psnr_psctnet", "official_psnr_slice", "ssim_x2ctgan", "ssim_psctnet", "official_ssim",
                 "mae_hu", "dice_bone", "assd_mm", "hd95_mm", "proj_rel_l2")


_X2CT_OFFSET, _X2CT_MAX = 1024.0, 4095.0
_BONE_HU, _BONE_WINDOW = 200.0, 2500.0


# --------------------------------------------------------------------------------------------
# intensity conventions
def to_x2ctgan(mu, energy_kev: float = DEFAULT_ENERGY_KEV) -> np.ndarray:
    """Attenuation (1/mm) -> X2CT-GAN's CT values ``clip(HU + 1024, 0, 4095)``.

    >>> float(to_x2ctgan(np.array([0.0]), 60)[0])  # air: -1000 HU
    24.0
    """
    hu = mu_to_hu(np.asarray(mu, dtype=np.float64), energy_kev)
    return np.clip(hu + _X2CT_OFFSET, 0.0, _X2CT_MAX)


def to_bone_window(mu, energy_kev: float = DEFAULT_ENERGY_KEV) -> np.ndarray:
    """Attenuation (1/mm) -> the PSCT-Net-style bone window ``clip(HU - 200, 0, 2500)`` (0 where
    HU <= 200; divide by 2500 for the [0, 1] bone target).

    >>> float(to_bone_window(np.array([0.02059]), 60)[0])  # water is not bone
    0.0
    """
    hu = mu_to_hu(np.asarray(mu, dtype=np.float64), energy_kev)
    return np.clip(hu - _BONE_HU, 0.0, _BONE_WINDOW)


# --------------------------------------------------------------------------------------------
# per-sample metrics
def _one_thread():
    """Run the metrics with one intra-op thread: SSIM is hundreds of small separable
    convolutions, which on a busy machine run 10-30x slower when torch threads contend."""
    return torch_threads(1)


def sample_metrics(prediction, target, spacing, *, xrays=None, geometry: Geometry | None = None,
                   energy_kev: float = DEFAULT_ENERGY_KEV, bone_threshold_mu: float = DEFAULT_BONE_THRESHOLD_MU,
                   surface_method: str = "mesh", pred_bone_threshold_mu: float | None = None) -> dict:
    """Every metric of :data:`METRICS` for one reconstruction.

    Parameters
    ----------
    prediction, target : array ``(nz, ny, nx)``, attenuation in 1/mm
    spacing : (sz, sy, sx) mm
    xrays : ``(views, rows, cols)`` line integrals, optional
        The X-rays the refiner was given; with ``geometry`` (the geometry that really made
        them) gives the projection-consistency metrics (NaN without).
    energy_kev : float
        Effective energy of the HU conversion.
    bone_threshold_mu : float
        Bone threshold (1/mm) of Dice and the surface distances: the target's bone is
        ``target > bone_threshold_mu``, and so is the prediction's unless
        ``pred_bone_threshold_mu`` is given.
    pred_bone_threshold_mu : float, optional
        The prediction's own bone iso-level (1/mm, positive, finite), e.g. fitted on training
        samples by :func:`fit_bone_threshold` for a refiner whose output is systematically too
        low or too high. Dice compares ``prediction > pred_bone_threshold_mu`` with ``target >
        bone_threshold_mu``, ASSD/HD95 the prediction's iso-surface at
        ``pred_bone_threshold_mu`` with the target's at ``bone_threshold_mu``. Only the bone
        metrics change; PSNR, SSIM, MAE and projection consistency never use it. None (default):
        the same level as the target (bitwise the plain computation).

    Returns
    -------
    dict of floats; PSNR is ``inf`` for identical volumes (the ``official_*`` PSNRs 100 dB, their
    convention); ASSD/HD95 are NaN when either volume has no bone (undefined), and the reason is
    in ``"notes"``.

    Raises
    ------
    ValueError
        Mismatched shapes, a non-finite prediction, a ``pred_bone_threshold_mu`` that is not a
        positive finite number.
    """
    p = np.asarray(prediction, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    if p.shape != t.shape or p.ndim != 3:
        raise ValueError(f"prediction and target must be (nz, ny, nx) of the same shape, got {p.shape} and {t.shape}")
    if not np.isfinite(p).all():
        raise ValueError("the prediction contains NaN or infinite values")
    if pred_bone_threshold_mu is not None:
        pred_bone_threshold_mu = _positive_level(pred_bone_threshold_mu, "pred_bone_threshold_mu")
    px, tx = to_x2ctgan(p, energy_kev), to_x2ctgan(t, energy_kev)
    pb, tb = to_bone_window(p, energy_kev), to_bone_window(t, energy_kev)
    out = {
        "psnr_x2ctgan": psnr(px, tx, _X2CT_MAX, reduction="volume"),
        "psnr_psctnet": psnr(pb, tb, _BONE_WINDOW, reduction="slice", axis=0),
        "ssim_x2ctgan": ssim(px, tx, _X2CT_MAX, mode="3d"),
        "ssim_psctnet": ssim(pb, tb, _BONE_WINDOW, mode="3d"),
        "mae_hu": mae(mu_to_hu(p, energy_kev), mu_to_hu(t, energy_kev)),
        "mae_mu": mae(p, t),
    }
    official = official_scores((pb / _BONE_WINDOW).astype(np.float32), (tb / _BONE_WINDOW).astype(np.float32))
    out["official_psnr_slice"] = official["psnr_avg"]
    out["official_psnr_3d"] = official["psnr_3d"]
    out["official_ssim"] = official["ssim_avg"]
    if pred_bone_threshold_mu is None:
        out["dice_bone"] = dice(p, t, threshold=bone_threshold_mu)
        p_bone, note_level = p, ""
    else:
        out["dice_bone"] = dice(p > pred_bone_threshold_mu, t > bone_threshold_mu)
        # surface_distances meshes both volumes at one level. Marching cubes only sees where
        # ``value - level`` changes sign and interpolates linearly between voxel centres, so a
        # monotone affine map of the values moves the iso-surface of level a onto that of level
        # b exactly when it maps a to b. A scaling by bone / pred does so in the interior; a
        # shift by (bone - pred) does so everywhere, including the cells against the constant
        # border padding of tomoprior.metrics.bone (``min(volume, level) - 1``, which moves with
        # a shift but not with a scaling), hence the shift. Only the bone metrics see this copy.
        p_bone = p + (float(bone_threshold_mu) - pred_bone_threshold_mu)
        note_level = f" (prediction bone level {pred_bone_threshold_mu:.6g} /mm)"
    notes = []
    try:
        sd = surface_distances(p_bone, t, spacing, threshold=bone_threshold_mu, method=surface_method)
        out["assd_mm"], out["hd95_mm"] = sd["assd"], sd["hd95"]
    except ValueError as exc:  # no bone in one volume: the distance is undefined, not zero
        out["assd_mm"] = out["hd95_mm"] = math.nan
        notes.append(f"surface distances undefined{note_level}: {exc}")
    if xrays is not None and geometry is not None:
        pc = projection_consistency(torch.as_tensor(p), xrays, geometry)
        out["proj_rel_l2"], out["proj_mae"] = pc["relative_l2"], pc["mae"]
    else:
        out["proj_rel_l2"] = out["proj_mae"] = math.nan
    out["notes"] = notes
    return out


def validation_metrics(prediction, target, data_range: float, bone_threshold: float) -> dict[str, float]:
    """The quick per-volume metrics of training's validation, in the volumes' own units:
    PSNR (dB, peak ``data_range``), 3D SSIM, MAE (1/mm) and bone Dice at ``bone_threshold``
    (1/mm; a volume pair with no bone in either counts as Dice 1). :func:`sample_metrics` is the
    full set in the published conventions (HU windows, surface distances)."""
    p, t = prediction, target
    if not bool((p > bone_threshold).any()) and not bool((t > bone_threshold).any()):
        d = 1.0
    else:
        d = float(dice(p, t, bone_threshold))
    return {"psnr": psnr(p, t, data_range), "ssim": ssim(p, t, data_range), "mae": mae(p, t), "dice": d}


def _positive_level(value, name: str) -> float:
    """``value`` as a positive finite float (1/mm), else a ValueError naming ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a positive number in 1/mm (e.g. 0.02), got {value!r}")
    val = float(value)
    if not (math.isfinite(val) and val > 0):
        raise ValueError(f"{name} must be a positive finite attenuation in 1/mm (e.g. 0.02), got {value!r}")
    return val


def geometry_error_px(assumed: Geometry, true: Geometry, *, points_per_axis: int = 8) -> dict:
    """How far the assumed geometry puts points of the volume from where the true one does.

    Points: a ``points_per_axis^3`` lattice filling the true grid's box. For each view, the
    distance in detector pixels between the two projections of each point.

    Returns
    -------
    dict ``mean_px`` (over views and points), ``max_px``, ``per_view_mean_px`` (list)
    """
    if assumed.num_views != true.num_views:
        raise ValueError(f"assumed geometry has {assumed.num_views} views, the true one {true.num_views}")
    lo, hi = (np.asarray(b, dtype=np.float64) for b in true.grid.bounds())
    axes = [np.linspace(lo[k] + (hi[k] - lo[k]) / (2 * points_per_axis),
                        hi[k] - (hi[k] - lo[k]) / (2 * points_per_axis), points_per_axis) for k in range(3)]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    pts_t = torch.as_tensor(pts)
    with torch.no_grad():
        a = assumed.project_points(pts_t).detach().to(torch.float64)
        b = true.project_points(pts_t).detach().to(torch.float64)
    d = (a - b).norm(dim=-1)  # (views, n)
    return {"mean_px": float(d.mean()), "max_px": float(d.max()), "per_view_mean_px": [float(x) for x in d.mean(1)]}


# --------------------------------------------------------------------------------------------
# aggregation and the result object
def _aggregate(values: Sequence[float]) -> dict:
    """mean, sample std (ddof 1; 0 for one value), n (defined values) and n_undefined (NaN)."""
    arr = np.asarray([v for v in values], dtype=np.float64)
    defined = arr[~np.isnan(arr)]
    n = int(defined.size)
    if n == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0, "n_undefined": int(arr.size)}
    if np.isinf(defined).any():
        mean = float(defined.mean())  # inf when any value is +inf (identical volumes)
        std = math.nan if n > 1 else 0.0
    else:
        mean = float(defined.mean())
        std = float(defined.std(ddof=1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "n": n, "n_undefined": int(arr.size - n)}


#: The groups of every result; ``variant:NAME`` (NAME a skull variant) adds one per variant.
GROUPS = ("all", "normal", "craniosynostosis")


def check_group(group) -> str:
    """``group`` if it names a group of the results (``all``, ``normal``, ``craniosynostosis``
    or ``variant:NAME`` with NAME a skull variant); else ``ValueError`` listing the valid ones.
    A valid variant group with no sample in a result shows as ``n = 0``."""
    from ..data.synthetic import available_variants

    variants = available_variants("skull")
    valid = [*GROUPS, *(f"variant:{v}" for v in variants)]
    if isinstance(group, str) and group.strip() in valid:
        return group.strip()
    raise ValueError(f"unknown group {group!r}; valid groups: {', '.join(valid)}")


def _groups(per_sample: list[dict]) -> dict[str, list[dict]]:
    groups = {"all": per_sample,
              "normal": [s for s in per_sample if s["normal"]],
              "craniosynostosis": [s for s in per_sample if not s["normal"]]}
    for v in sorted({s["variant"] for s in per_sample}):
        groups[f"variant:{v}"] = [s for s in per_sample if s["variant"] == v]
    return groups


def _json_safe(o):
    if isinstance(o, float):
        if math.isnan(o):
            return None
        if math.isinf(o):
            return "inf" if o > 0 else "-inf"
        return o
    if isinstance(o, Mapping):
        return {str(k): _json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_json_safe(v) for v in o]
    if isinstance(o, (np.floating, np.integer, np.bool_)):
        return _json_safe(o.item())
    return o


def _fmt(agg: dict, key: str) -> str:
    m, s, n = agg["mean"], agg["std"], agg["n"]
    if n == 0:
        return "n/a"
    digits = 3 if key.startswith(("ssim", "official_ssim", "dice", "proj")) else (4 if key == "mae_mu" else 2)
    if math.isinf(m):
        return "inf"
    text = f"{m:.{digits}f}"
    if n > 1 and math.isfinite(s):
        text += f" ± {s:.{digits}f}"
    if agg.get("n_undefined"):
        text += f" ({agg['n_undefined']} undef.)"
    return text


def _fmt_signed(agg: dict, key: str) -> str:
    if agg["n"] == 0:
        return "n/a"
    digits = 3 if key.startswith(("ssim", "official_ssim", "dice", "proj")) else (4 if key == "mae_mu" else 2)
    text = f"{agg['mean']:+.{digits}f}"
    if agg["n"] > 1 and math.isfinite(agg["std"]):
        text += f" ± {agg['std']:.{digits}f}"
    return text


@dataclasses.dataclass
class EvaluationResult:
    """Per-sample and aggregated metrics of one refiner on one split (see :data:`METRICS`).

    Attributes
    ----------
    label : str
        Display name (e.g. ``"psctnet"`` or ``"psctnet -BiM"``).
    refiner : dict
        ``name``, ``config`` (dict) and ``checkpoint`` (path or None).
    dataset : str
        Path of the dataset file.
    split : str
    settings : dict
        What was evaluated: X-ray source, geometry given to the refiner, perturbation sizes,
        seed, energy, bone threshold, conventions.
    per_sample : list of dict
        ``index``, ``variant``, ``normal``, ``age_years``, every metric, ``geometry_error_px``
        and ``geometry_error`` (assumed vs true geometry, px), ``perturbation`` (the drawn
        errors per view, or None), ``refiner_seconds`` (refiner time per sample), ``notes``.
    aggregates : dict
        group (``all``, ``normal``, ``craniosynostosis``, ``variant:<name>``) -> metric ->
        ``{mean, std, n, n_undefined}``; std is the sample standard deviation (ddof 1).
    """

    label: str
    refiner: dict
    dataset: str
    split: str
    settings: dict
    per_sample: list
    aggregates: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not self.aggregates:
            self.aggregates = self.compute_aggregates(self.per_sample)

    @staticmethod
    def compute_aggregates(per_sample: list[dict]) -> dict:
        out = {}
        for g, samples in _groups(per_sample).items():
            # a metric missing from a sample (a file written before it existed) counts as undefined
            out[g] = {k: _aggregate([s.get(k, math.nan) for s in samples]) for k in (*METRICS, "geometry_error_px")}
            out[g]["n_samples"] = len(samples)
        return out

    def metric(self, key: str, group: str = "all") -> float:
        """Mean of ``key`` over ``group``."""
        check_group(group)
        if key not in self.aggregates.get(group, {}):
            raise ValueError(f"no metric {key!r} in group {group!r}; groups: {sorted(self.aggregates)}, "
                             f"metrics: {list(METRICS)}")
        return self.aggregates[group][key]["mean"]

    def to_dict(self) -> dict:
        """JSON-ready dict (``inf`` as the string ``"inf"``, NaN as null)."""
        return _json_safe({
            "label": self.label, "refiner": self.refiner, "dataset": self.dataset, "split": self.split,
            "settings": self.settings, "metrics": METRICS, "aggregates": self.aggregates,
            "per_sample": self.per_sample,
        })

    def save(self, path) -> Path:
        """Write :meth:`to_dict` as JSON, atomically. Returns the path."""
        path = Path(path)
        write_text_atomic(path, json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n")
        return path

    @classmethod
    def load(cls, path) -> EvaluationResult:
        """Read a file written by :meth:`save` (the aggregates are recomputed from the samples)."""
        return cls._from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    @classmethod
    def _from_dict(cls, d: dict) -> EvaluationResult:
        def back(v):
            if v is None:
                return math.nan
            if v in ("inf", "-inf"):
                return float(v)
            return v
        per = [{k: (back(v) if k in METRICS or k == "geometry_error_px" else v) for k, v in s.items()}
               for s in d["per_sample"]]
        return cls(d["label"], d["refiner"], d["dataset"], d["split"], d["settings"], per)

    def to_markdown(self, metrics: Sequence[str] = TABLE_METRICS) -> str:
        """A table: rows = groups (all, normal, craniosynostosis, each variant), mean ± std."""
        head = "| group | n | " + " | ".join(_col(k) for k in metrics) + " |"
        levels = self.settings.get("pred_bone_threshold_mu")
        levels = f"; {self.settings.get('bone_levels', '')}" if levels is not None else ""
        lines = [f"**{self.label}** on `{self.dataset}` split `{self.split}` "
                 f"({self.settings.get('description', '')}{levels})", "", head,
                 "|" + " --- |" * (len(metrics) + 2)]
        for g, aggs in self.aggregates.items():
            if aggs["n_samples"] == 0:
                lines.append(f"| {g} | 0 | " + " | ".join("–" for _ in metrics) + " |")
                continue
            lines.append(f"| {g} | {aggs['n_samples']} | " + " | ".join(_fmt(aggs[k], k) for k in metrics) + " |")
        return "\n".join(lines) + "\n"


def _col(key: str) -> str:
    info = METRICS.get(key, {"label": key, "unit": ""})
    return info["label"] + (f" ({info['unit']})" if info["unit"] else "")


def compare_markdown(results: Mapping[str, EvaluationResult] | Sequence[EvaluationResult], *, group: str = "all",
                     metrics: Sequence[str] = TABLE_METRICS, row_header: str = "refiner") -> str:
    """One table, one row per result (its label or the mapping key), for one group
    (:func:`check_group`; an unknown group is a ``ValueError``, not an empty table)."""
    group = check_group(group)
    items = list(results.items()) if isinstance(results, Mapping) else [(r.label, r) for r in results]
    lines = [f"| {row_header} | n | " + " | ".join(_col(k) for k in metrics) + " |",
             "|" + " --- |" * (len(metrics) + 2)]
    for name, r in items:
        aggs = r.aggregates.get(group)
        if not aggs or aggs["n_samples"] == 0:
            lines.append(f"| {name} | 0 | " + " | ".join("–" for _ in metrics) + " |")
            continue
        lines.append(f"| {name} | {aggs['n_samples']} | " + " | ".join(_fmt(aggs[k], k) for k in metrics) + " |")
    return "\n".join(lines) + "\n"


PAIRED_METRICS = ("psnr_x2ctgan", "ssim_x2ctgan", "mae_hu", "dice_bone", "assd_mm", "hd95_mm", "proj_rel_l2")


def paired_comparison(a: EvaluationResult, b: EvaluationResult, *, metrics: Sequence[str] = PAIRED_METRICS,
                      group: str = "all") -> dict[str, dict]:
    """Paired per-sample comparison of two results on the same samples (``a`` minus ``b``).

    For each metric: ``n`` (samples where both values are finite; undefined surface
    distances drop out), ``mean_diff`` and its standard error ``se`` (ddof 1), ``median_diff``,
    ``a_better`` (fraction of those samples where ``a`` is strictly better, by the metric's
    direction in :data:`METRICS`), and ``p`` of the two-sided Wilcoxon signed-rank test
    (``scipy.stats.wilcoxon``; NaN for fewer than 2 pairs or all differences zero). Samples are
    matched by dataset index; ``group`` as in the aggregates (``all``, ``normal``, ...).

    Raises
    ------
    ValueError
        If the two results do not hold the same samples, or a metric is unknown.
    """
    from scipy import stats

    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {list(METRICS)}")
    group = check_group(group)
    ga, gb = _groups(a.per_sample).get(group, []), _groups(b.per_sample).get(group, [])
    ia, ib = {r["index"]: r for r in ga}, {r["index"]: r for r in gb}
    if set(ia) != set(ib):
        raise ValueError(f"{a.label!r} and {b.label!r} were evaluated on different samples of group {group!r}; "
                         "a paired comparison needs the same split and samples")
    keys = sorted(ia)
    out: dict[str, dict] = {}
    for m in metrics:
        va = np.array([float(ia[k][m]) for k in keys])
        vb = np.array([float(ib[k][m]) for k in keys])
        ok = np.isfinite(va) & np.isfinite(vb)
        d = va[ok] - vb[ok]
        n = int(d.size)
        sign = 1.0 if METRICS[m]["higher"] else -1.0
        p = math.nan
        if n >= 2 and np.any(d != 0):
            p = float(stats.wilcoxon(va[ok], vb[ok]).pvalue)
        out[m] = {"n": n, "mean_diff": float(d.mean()) if n else math.nan,
                  "se": float(d.std(ddof=1) / math.sqrt(n)) if n >= 2 else math.nan,
                  "median_diff": float(np.median(d)) if n else math.nan,
                  "a_better": float(np.mean(sign * d > 0)) if n else math.nan, "p": p}
    return out


def paired_markdown(a: EvaluationResult, b: EvaluationResult, *, metrics: Sequence[str] = PAIRED_METRICS,
                    group: str = "all") -> str:
    """:func:`paired_comparison` as a Markdown table (one row per metric)."""
    pc = paired_comparison(a, b, metrics=metrics, group=group)
    lines = [f"| {a.label} - {b.label} | n | mean ± SE | median | {a.label} better in | Wilcoxon p |",
             "| --- | --- | --- | --- | --- | --- |"]
    for m, r in pc.items():
        nd = 3 if "ssim" in m or "dice" in m or "proj" in m else 2
        unit = f" ({METRICS[m]['unit']})" if METRICS[m]["unit"] else ""
        p = "n/a" if not math.isfinite(r["p"]) else f"{r['p']:.2g}"
        lines.append(f"| {_col(m).split(' (')[0]}{unit} | {r['n']} | {r['mean_diff']:+.{nd}f} ± {r['se']:.{nd}f} | "
                     f"{r['median_diff']:+.{nd}f} | {100 * r['a_better']:.0f} % | {p} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# data access
def _open_split(dataset_or_path, split: str | None) -> tuple[Path, list[int]]:
    if isinstance(dataset_or_path, TomopriorDataset):
        return dataset_or_path.path, list(dataset_or_path.indices)
    if not isinstance(dataset_or_path, (str, Path)):
        raise TypeError(f"dataset_or_path must be a path to a tomoprior dataset file or a TomopriorDataset, got "
                        f"{type(dataset_or_path).__name__}")
    path = Path(dataset_or_path)
    if not path.is_file():
        raise ValueError(f"dataset file {path} does not exist; make one with `tomoprior dataset make`")
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    with DatasetFile(path) as ds:
        splits = ds.splits()
    idx = [i for i, s in enumerate(splits) if split is None or s == split]
    if not idx:
        counts = {s: splits.count(s) for s in SPLITS}
        raise ValueError(f"{path} has no sample in split {split!r} (samples per split: {counts}); "
                         "choose another --split or regenerate the dataset with other --split fractions")
    return path, idx


def _energy(ds: DatasetFile, i: int, default: float) -> float:
    try:
        prov = ds.provenance(i)
    except Exception:  # provenance is informative; a missing one falls back to the default energy
        return default
    e = (prov.get("phantom_parameters") or {}).get("energy_kev")
    return float(e) if isinstance(e, (int, float)) and e > 0 else default


def _sample_seed(seed: int, index: int, stream: int) -> list[int]:
    """Entropy of one sample's draws: stream 0 the test-geometry perturbation, 1 the residual
    calibration error, 2 a calibration callable."""
    return [int(seed), int(index), int(stream)]


def _residual_perturbation(geometry: ParametricGeometry, size: Mapping) -> GeometryPerturbation:
    pitch = min(x for p in geometry.parameters for x in p.pitch)
    return GeometryPerturbation(source_to_detector_mm=float(size.get("source_to_detector_mm", 0.0)),
                                offset_mm=float(size.get("offset_px", 0.0)) * pitch,
                                tilt_deg=float(size.get("tilt_deg", 0.0)),
                                rotation_deg=float(size.get("rotation_deg", 0.0)))


def _output_to_mu(refiner: Refiner, output_to_mu: float | None) -> float:
    if output_to_mu is not None:
        val = float(output_to_mu)
    else:
        extra = getattr(refiner, "checkpoint_extra", None) or {}
        val = 1.0
        for key in ("output_to_mu", "output_scale_to_mu"):
            if key in extra:
                val = float(extra[key])
                break
        else:
            if "target_scale" in extra:  # targets were multiplied by it for training
                val = 1.0 / float(extra["target_scale"])
    if not (math.isfinite(val) and val > 0):
        raise ValueError(f"output_to_mu must be a positive finite factor, got {val!r}")
    return val


def _describe_refiner(refiner: Refiner, checkpoint) -> dict:
    cfg = refiner.config
    cfg_d = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else {}
    extra = getattr(refiner, "checkpoint_extra", None) or {}
    return {"name": type(refiner).name, "config": _json_safe(cfg_d),
            "checkpoint": str(checkpoint) if checkpoint else None,
            "checkpoint_extra": _json_safe({k: v for k, v in extra.items() if isinstance(v, (int, float, str, bool))})}


# --------------------------------------------------------------------------------------------
# evaluation
GeometryChoice = str | Geometry | Callable | None


def evaluate(refiner: Refiner, dataset_or_path, split: str = "test", *, geometry_override: GeometryChoice = None,
             perturbation: GeometryPerturbation | None = None, calibration_error=None, batch_size: int = 2,
             device="cpu", seed: int = 0, label: str | None = None, checkpoint=None, energy_kev: float | None = None,
             bone_threshold_mu: float = DEFAULT_BONE_THRESHOLD_MU, output_to_mu: float | None = None,
             max_samples: int | None = None, resynthesize: bool = False, progress: bool = False,
             pred_bone_threshold_mu: float | None = None) -> EvaluationResult:
    """Run ``refiner`` on every sample of ``split`` and score it (see the module docstring).

    Parameters
    ----------
    refiner : Refiner
        Built (``refiners.load``) or loaded (``Refiner.from_checkpoint``); put in eval mode.
    dataset_or_path : str, Path or TomopriorDataset
        A tomoprior dataset file (``split`` selects the samples) or a dataset object (its own
        split/indices are used).
    split : {"train", "val", "test"}
    geometry_override : None, "true", "nominal", Geometry or callable
        The geometry handed to the refiner (and used for its prior). None / ``"true"``: the
        geometry the test X-rays were really made with. ``"nominal"``: the sample's stored
        nominal geometry (the X-rays may come from a perturbed one). A Geometry: that one for
        every sample (its grid must match the volumes). A callable
        ``f(true_geometry, nominal_geometry, seed) -> Geometry`` (``seed`` a list of ints,
        entropy for ``numpy.random.default_rng``, per sample), e.g. a calibration procedure;
        it may return ``(Geometry, info)`` with a JSON-like ``info`` dict (e.g. the
        calibration's QA verdict), stored in the sample's record as ``geometry_info``.
    perturbation : GeometryPerturbation, optional
        Re-synthesise the test X-rays from the stored volumes with the sample's nominal
        geometry perturbed by these sizes (uniform +-, per view; seeded by ``seed`` and the
        sample index, so every call with the same seed sees the same X-rays). The volumes
        are never changed.
    calibration_error : GeometryPerturbation or dict, optional
        Only with ``geometry_override`` None/"true": hand the refiner the true geometry plus a
        residual error of these sizes (a dict like
        :data:`tomoprior.studies.miscalibration.CALIBRATION_RESIDUAL` gives the
        offset in detector pixels), as a calibration of that accuracy would.
    batch_size : int
        Samples per refiner call (one geometry per sample).
    device : str or torch.device
        ``"cpu"``, ``"cuda[:N]"``, ``"auto"`` (:func:`~tomoprior.refiners.resolve_device`: an
        unavailable device is a ``ValueError`` naming it, before any work).
    seed : int
        Seed of the perturbation and residual-error draws.
    label : str, optional
        Display name (default: the refiner's registry name).
    checkpoint : str or Path, optional
        Recorded in the result (where the weights came from).
    energy_kev : float, optional
        Energy of the HU conversion; default: the phantom's (provenance), else 60 keV.
    bone_threshold_mu : float
        Bone threshold in 1/mm (Dice, ASSD, HD95) of the targets, and of the predictions unless
        ``pred_bone_threshold_mu`` is given.
    pred_bone_threshold_mu : float, optional
        The predictions' own bone iso-level in 1/mm (see :func:`sample_metrics`), typically
        ``fit_bone_threshold(refiner, path, "train")["threshold_mu"]``: fitted on training
        samples, never on the split evaluated here. Recorded in ``settings``.
    output_to_mu : float, optional
        Factor turning the refiner's output into 1/mm; default: from the checkpoint's
        ``extra`` (``output_to_mu``, or ``1 / target_scale``), else 1.
    max_samples : int, optional
        Evaluate only the first ``max_samples`` samples of the split (quick looks).
    resynthesize : bool
        Without a perturbation, re-project the stored volumes with the stored geometry instead
        of using the stored X-rays (so every arm of a study uses the same projector).
    progress : bool
        Print one line per batch.

    Returns
    -------
    EvaluationResult

    Raises
    ------
    TypeError, ValueError
        A refiner that is not a :class:`Refiner`, a missing file or empty split, a geometry
        whose grid does not match the volumes, a non-finite or wrongly shaped output, an
        unavailable ``device``, non-finite weights (``CheckpointError``, naming ``checkpoint``).
    """
    _check_evaluate_args(refiner, batch_size, perturbation, geometry_override, calibration_error)
    if pred_bone_threshold_mu is not None:
        pred_bone_threshold_mu = _positive_level(pred_bone_threshold_mu, "pred_bone_threshold_mu")
    refiner, path, indices, scale, device = _prepare_run(refiner, dataset_or_path, split, max_samples, output_to_mu,
                                                         device, checkpoint)

    setting = _Setting(geometry_override, perturbation, calibration_error, seed, energy_kev, resynthesize)
    t_start = time.perf_counter()
    per_sample = _score_samples(refiner, path, indices, device, scale, batch_size, setting,
                                (bone_threshold_mu, pred_bone_threshold_mu), progress)
    settings = _evaluation_settings(setting, bone_threshold_mu, pred_bone_threshold_mu, scale)
    settings.update({"device": str(device), "batch_size": batch_size, "n_samples": len(per_sample),
                     "wall_seconds": time.perf_counter() - t_start})
    return EvaluationResult(label or type(refiner).name, _describe_refiner(refiner, checkpoint), str(path),
                            split if not isinstance(dataset_or_path, TomopriorDataset) else str(dataset_or_path.split),
                            settings, per_sample)


class _Setting(NamedTuple):
    """How the samples of an evaluation are prepared (the arguments of :func:`_prepare`
    after the sample): geometry given to the refiner, X-ray perturbation, residual
    calibration error, seed, HU energy (keV), re-synthesis of unperturbed X-rays."""

    geometry_override: GeometryChoice
    perturbation: GeometryPerturbation | None
    calibration_error: object
    seed: int
    energy_kev: float | None
    resynthesize: bool


def _check_evaluate_args(refiner, batch_size, perturbation, geometry_override, calibration_error) -> None:
    """Type and value checks of :func:`evaluate`'s arguments, before any file is opened."""
    if not isinstance(refiner, Refiner):
        raise TypeError(f"refiner must be a tomoprior Refiner (refiners.load(name) or Refiner.from_checkpoint(path)), "
                        f"got {type(refiner).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if perturbation is not None and not isinstance(perturbation, GeometryPerturbation):
        raise TypeError("perturbation must be a tomoprior.data.GeometryPerturbation, "
                        f"got {type(perturbation).__name__}")
    if isinstance(geometry_override, str) and geometry_override not in ("true", "nominal"):
        raise ValueError(f"geometry_override must be None, 'true', 'nominal', a Geometry or a callable, "
                         f"got {geometry_override!r}")
    if geometry_override is not None and not isinstance(geometry_override, (str, Geometry)) \
            and not callable(geometry_override):
        raise TypeError(f"geometry_override must be None, 'true', 'nominal', a Geometry or a callable, "
                        f"got {type(geometry_override).__name__}")
    if calibration_error is not None and geometry_override not in (None, "true"):
        raise ValueError("calibration_error adds a residual error to the true geometry; it cannot be combined "
                         f"with geometry_override={geometry_override!r}")


def _score_samples(refiner: Refiner, path, indices, device, scale: float, batch_size: int, setting: _Setting,
                   bone_levels: tuple, progress: bool) -> list[dict]:
    """Run the refiner batch by batch over the samples ``indices`` of ``path`` and score each
    prediction (:func:`sample_metrics` at ``bone_levels = (target level, prediction level)``):
    one record per sample."""
    bone_threshold_mu, pred_bone_threshold_mu = bone_levels
    per_sample: list[dict] = []
    with DatasetFile(path) as ds:
        for start in range(0, len(indices), batch_size):
            batch = indices[start:start + batch_size]
            items = [_prepare(ds, i, *setting) for i in batch]
            t0 = time.perf_counter()
            pred = _run_refiner(refiner, items, device, scale)
            dt = (time.perf_counter() - t0) / len(items)
            for it, p in zip(items, pred):
                with _one_thread():
                    m = sample_metrics(p, it["volume"], it["spacing"], xrays=it["xrays"], geometry=it["true"],
                                       energy_kev=it["energy_kev"], bone_threshold_mu=bone_threshold_mu,
                                       pred_bone_threshold_mu=pred_bone_threshold_mu)
                rec = {"index": it["index"], "variant": it["variant"], "normal": it["normal"],
                       "age_years": it["age_years"], **m, "geometry_error_px": it["geometry_error"]["mean_px"],
                       "geometry_error": it["geometry_error"], "perturbation": it["drawn"],
                       "refiner_seconds": dt}
                if it["info"] is not None:
                    rec["geometry_info"] = _json_safe(it["info"])
                per_sample.append(rec)
            if progress:
                print(f"  {type(refiner).name}: {len(per_sample)}/{len(indices)} samples", flush=True)
    return per_sample


def _evaluation_settings(setting: _Setting, bone_threshold_mu: float, pred_bone_threshold_mu, scale: float) -> dict:
    """The ``settings`` of an :class:`EvaluationResult`: what the refiner was given, the
    perturbation and residual error, bone levels, output scaling and metric conventions
    (the caller adds device, batch size, sample count and wall time)."""
    go, perturbation, calibration_error = setting.geometry_override, setting.perturbation, setting.calibration_error
    return {
        "description": _describe_setting(go, perturbation, calibration_error, setting.resynthesize),
        "xrays": "re-synthesised" if (perturbation is not None or setting.resynthesize) else "stored",
        "geometry_given_to_refiner": _override_name(go, calibration_error),
        "perturbation": dataclasses.asdict(perturbation) if perturbation is not None else None,
        "calibration_error": (dict(calibration_error) if isinstance(calibration_error, Mapping) else
                              dataclasses.asdict(calibration_error) if calibration_error is not None else None),
        "seed": setting.seed, "bone_threshold_mu": bone_threshold_mu, "pred_bone_threshold_mu": pred_bone_threshold_mu,
        "bone_levels": _bone_levels_text(bone_threshold_mu, pred_bone_threshold_mu), "output_to_mu": scale,
        "energy_kev": setting.energy_kev if setting.energy_kev is not None else "from provenance (default 60)",
        "conventions": {
            "x2ctgan": "clip(HU + 1024, 0, 4095), PSNR over the volume with MAX 4095, 3D SSIM range 4095",
            "psctnet": "bone window clip(HU - 200, 0, 2500) (= 2500 x the [0, 1] bone target), PSNR slice-averaged "
                       "over axial slices with MAX 2500, 3D SSIM range 2500",
            "hu": "HU = 1000 (mu / mu_water(E) - 1)",
            "std": "sample standard deviation (ddof 1)",
        },
    }


def _prepare_run(refiner: Refiner, dataset_or_path, split, max_samples, output_to_mu, device, checkpoint) -> tuple:
    """What evaluate and fit_bone_threshold both start from: ``(refiner on device in eval mode,
    dataset path, sample indices (at most max_samples), output-to-mu scale, device)``."""
    path, indices = _open_split(dataset_or_path, split)
    if max_samples is not None:
        _check_max_samples(max_samples)
        indices = indices[:max_samples]
    scale = _output_to_mu(refiner, output_to_mu)
    device = resolve_device(device)
    check_finite_weights(refiner, _refiner_where(refiner, checkpoint))
    return refiner.to(device).eval(), path, indices, scale, device


def _refiner_where(refiner: Refiner, checkpoint) -> str:
    """How an error names a refiner: its name and, when known, its checkpoint file."""
    where = f"refiner {type(refiner).name!r}"
    return f"{where} (checkpoint {checkpoint})" if checkpoint else where


def _check_max_samples(max_samples) -> None:
    if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1:
        raise ValueError(f"max_samples must be a positive integer, got {max_samples!r}")


def _run_refiner(refiner: Refiner, items: list[dict], device: torch.device, scale: float) -> np.ndarray:
    """The refiner's reconstructions of a batch of :func:`_prepare` items, in 1/mm, float64
    ``(B, nz, ny, nx)`` on the CPU; checks the output's shape and finiteness."""
    xr = torch.stack([it["xrays"] for it in items]).to(device)
    geoms = [it["assumed"] for it in items]
    geom_arg = geoms[0] if len(geoms) == 1 else geoms
    with torch.no_grad():
        prior = build_prior(xr, geom_arg)
        out = refiner(xr, geom_arg, prior)
    want = (len(items), 1, *items[0]["volume"].shape)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"refiner {type(refiner).name!r} returned {got}, expected {want} (B, 1, nz, ny, nx) "
                         "on the dataset's grid; was it built for another volume shape?")
    if not bool(torch.isfinite(out).all()):
        batch = [it["index"] for it in items]
        raise ValueError(f"refiner {type(refiner).name!r} returned NaN or infinite voxels for samples {batch}")
    return (out[:, 0].detach().to("cpu", torch.float64) * scale).numpy()


def _bone_levels_text(bone_threshold_mu: float, pred_bone_threshold_mu: float | None) -> str:
    if pred_bone_threshold_mu is None:
        return (f"bone = mu > {bone_threshold_mu:g} /mm in both the prediction and the target "
                "(Dice, ASSD, HD95)")
    return (f"prediction bone = mu > {pred_bone_threshold_mu:.6g} /mm (its own iso-level), target bone = "
            f"mu > {bone_threshold_mu:g} /mm (Dice, ASSD, HD95); the other metrics do not use a threshold")


def _override_name(go, cal) -> str:
    if go is None or go == "true":
        return "true (the geometry that made the X-rays)" + (" + residual calibration error" if cal is not None else "")
    if isinstance(go, str):
        return go
    if isinstance(go, Geometry):
        return "a fixed Geometry"
    return getattr(go, "__name__", type(go).__name__)


def _describe_setting(go, pert, cal, resynth) -> str:
    xr = "stored X-rays" if pert is None and not resynth else (
        "X-rays re-synthesised with the nominal geometry" if pert is None or pert.is_zero else
        "X-rays re-synthesised with a perturbed geometry")
    return f"{xr}; refiner given {_override_name(go, cal)}"


def _prepare(ds: DatasetFile, i: int, go, pert, cal, seed, energy_kev, resynth) -> dict:
    vol = ds.volume(i)
    grid = ds.grid(i)
    stored = ds.geometry(i)
    nominal = ds.geometry(i, nominal=True)
    labels = ds.labels(i)
    drawn = info = None
    if pert is not None or resynth:
        base = nominal if pert is not None else stored
        res = synthesize(torch.from_numpy(vol), base, perturbation=pert, seed=_sample_seed(seed, i, 0))
        xrays, true = res.xrays, res.geometry
        drawn = res.augmentation.get("perturbation", {}).get("drawn")
    else:
        xrays, true = torch.from_numpy(ds.xrays(i)), stored
    if go is None or go == "true":
        assumed = true
        if cal is not None:
            if not isinstance(true, ParametricGeometry):
                raise ValueError("calibration_error needs geometries with physical parameters (ParametricGeometry)")
            size = _residual_perturbation(true, cal) if isinstance(cal, Mapping) else cal
            assumed, _ = size.sample(true, _sample_seed(seed, i, 1))
    elif go == "nominal":
        assumed = nominal
    elif isinstance(go, Geometry):
        assumed = go
    else:
        assumed = go(true, nominal, _sample_seed(seed, i, 2))
        if isinstance(assumed, tuple) and len(assumed) == 2 and isinstance(assumed[1], Mapping):
            assumed, info = assumed[0], dict(assumed[1])
        if not isinstance(assumed, Geometry):
            raise TypeError(f"geometry_override callable must return a Geometry or (Geometry, info dict), got "
                            f"{type(assumed).__name__}")
    if assumed.grid != grid:
        if tuple(assumed.grid.shape) != tuple(grid.shape):
            raise ValueError(f"the geometry given to the refiner has grid shape {assumed.grid.shape} but sample {i}'s "
                             f"volume is {grid.shape}")
        assumed = assumed.with_grid(grid)
    if assumed.num_views != xrays.shape[0]:
        raise ValueError(f"the geometry given to the refiner has {assumed.num_views} views, "
                         f"the X-rays {xrays.shape[0]}")
    return {"index": i, "volume": vol.astype(np.float64), "spacing": tuple(grid.spacing), "xrays": xrays.float(),
            "true": true, "assumed": assumed, "nominal": nominal, "drawn": drawn, "info": info,
            "geometry_error": geometry_error_px(assumed, true),
            "energy_kev": energy_kev if energy_kev is not None else _energy(ds, i, DEFAULT_ENERGY_KEV),
            "variant": labels["variant"], "normal": bool(labels["normal"]), "age_years": float(labels["age_years"])}


# --------------------------------------------------------------------------------------------
def fit_bp_prior(refiner, dataset_or_path, split: str = "train", *, max_samples: int | None = 16,
                 fit_offset: bool = True):
    """Fit ``bp-prior``'s ``gain`` and ``offset`` by least squares over all voxels of (up to
    ``max_samples``) samples of ``split`` against the stored volumes (1/mm):
    :meth:`BPPrior.fit_level` over the dataset. Updates and returns the refiner.

    Use it with ``normalization="chord"`` so the prior is already in 1/mm (mean attenuation
    along each ray) and the fit is a small correction; the fitted values are in the config.
    """
    from ..refiners.bp_prior import BPPrior

    if not isinstance(refiner, BPPrior):
        raise TypeError(f"fit_bp_prior fits the built-in bp-prior, got {type(refiner).__name__}")
    path, indices = _open_split(dataset_or_path, split)
    if max_samples is not None:
        indices = indices[:max_samples]

    def samples():
        with DatasetFile(path) as ds:
            for i in indices:
                yield torch.from_numpy(ds.xrays(i)), ds.geometry(i), torch.from_numpy(ds.volume(i))

    return refiner.fit_level(samples(), fit_offset=fit_offset)


def fit_atlas(refiner, dataset_or_path, split: str = "train", *, max_samples: int | None = None):
    """Build the built-in ``atlas`` from the stored volumes (1/mm) of ``split`` (every sample,
    or the first ``max_samples``), one sample at a time: :meth:`Atlas.fit_closed_form` over
    the dataset, the same fit as ``tomoprior train --refiner atlas`` (which reads the same
    samples in the same order). Updates and returns the refiner; ``case_index`` holds the
    samples' rows in the file.
    """
    from ..refiners.atlas import Atlas
    from ..refiners.hooks import Batch

    if not isinstance(refiner, Atlas):
        raise TypeError(f"fit_atlas fits the built-in atlas, got {type(refiner).__name__}")
    if max_samples is not None:
        _check_max_samples(max_samples)
    path, indices = _open_split(dataset_or_path, split)
    indices = indices[:max_samples] if max_samples is not None else indices

    def samples():
        with DatasetFile(path) as ds:
            for i in indices:
                xrays = torch.from_numpy(ds.xrays(i)).float()[None]
                volume = torch.from_numpy(ds.volume(i)).float()[None, None]
                yield Batch(xrays, volume, ds.geometry(i), None, [i])

    refiner.fit_closed_form(samples())
    return refiner


# --------------------------------------------------------------------------------------------
#: Default candidate prediction bone levels of :func:`fit_bone_threshold` (1/mm): 60 levels
#: geometrically spaced from 0.002 to 0.08 /mm (about 6.5 % apart), to which the target
#: threshold itself is added.
BONE_THRESHOLD_CANDIDATES = np.geomspace(0.002, 0.08, 60)
_DICE_TIE = 1e-12


def _dice_curve(pred: np.ndarray, target_bone: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Dice of ``pred > t`` against the boolean ``target_bone`` for every ``t`` of
    ``thresholds`` (sorted ascending), by counting with sorted values instead of thresholding
    the volume once per level. Two empty masks give 1, as :func:`tomoprior.metrics.dice`."""
    flat = np.sort(pred, axis=None)
    in_bone = np.sort(pred[target_bone], axis=None)
    n_pred = flat.size - np.searchsorted(flat, thresholds, side="right")  # |pred > t|
    n_both = in_bone.size - np.searchsorted(in_bone, thresholds, side="right")  # |pred > t and target bone|
    total = n_pred + in_bone.size
    return np.where(total > 0, 2.0 * n_both / np.maximum(total, 1), 1.0)


def fit_bone_threshold(refiner: Refiner, dataset_or_path, split: str = "train", *, max_samples: int | None = 16,
                       thresholds=None, bone_threshold_mu: float = DEFAULT_BONE_THRESHOLD_MU,
                       output_to_mu: float | None = None, batch_size: int = 1, device="cpu") -> dict:
    """The prediction bone level (1/mm) that maximises a refiner's mean bone Dice on training samples.

    A smooth or under-trained reconstruction may never reach the bone threshold of the targets
    (0.035 /mm): its Dice is then 0 and its surface distances undefined at that level, though
    its bone may be in the right place. Giving each refiner its own iso-level for the prediction
    (the targets keep ``bone_threshold_mu``) makes the bone metrics comparable; fit it here on
    the ``train`` split and pass ``result["threshold_mu"]`` as ``pred_bone_threshold_mu`` to
    :func:`evaluate` on the test split. Never fit it on the split you report.

    The refiner is run as :func:`evaluate` runs it with the defaults: the stored X-rays, the
    geometry that made them (for the refiner and its prior), ``output_to_mu`` applied. For each
    candidate level ``t`` the Dice of ``prediction > t`` against ``target > bone_threshold_mu``
    is averaged over the samples.

    Parameters
    ----------
    refiner : Refiner
    dataset_or_path : str, Path or TomopriorDataset
        A tomoprior dataset file (``split`` selects the samples) or a dataset object (its own
        samples are used).
    split : {"train", "val"}
        Where to fit (default ``"train"``). ``"test"`` is refused: the level would be tuned on
        the data being reported.
    max_samples : int or None
        Use the first ``max_samples`` samples of the split (None: all).
    thresholds : sequence of float, optional
        Candidate prediction levels in 1/mm (positive, finite); default
        :data:`BONE_THRESHOLD_CANDIDATES` (60 geometric levels, 0.002-0.08 /mm).
        ``bone_threshold_mu`` is always added.
    bone_threshold_mu : float
        The targets' bone threshold in 1/mm.
    output_to_mu : float, optional
        Factor turning the refiner's output into 1/mm (as in :func:`evaluate`).
    batch_size : int
        Samples per refiner call.
    device : str or torch.device
        ``"cpu"``, ``"cuda[:N]"``, ``"auto"`` (:func:`~tomoprior.refiners.resolve_device`: an
        unavailable device is a ``ValueError`` naming it, before any work).

    Returns
    -------
    dict
        ``threshold_mu`` (the best level, 1/mm), ``dice`` (mean train Dice at it),
        ``dice_at_default`` (mean Dice at ``bone_threshold_mu``), ``bone_threshold_mu`` (the
        targets' level), ``split``, ``n_samples``, ``indices`` (the samples used), ``curve``
        (list of ``(threshold_mu, mean_dice)``, ascending), ``note`` (None, or why the default
        was kept). Ties (within 1e-12) go to the level closest to ``bone_threshold_mu``; when
        no candidate gives any overlap (mean Dice 0 at every level) ``threshold_mu`` is
        ``bone_threshold_mu`` and ``note`` says so.

    Raises
    ------
    TypeError, ValueError
        Not a Refiner, a missing file or empty split, bad ``thresholds``, ``max_samples``,
        ``batch_size`` or ``bone_threshold_mu``, a wrongly shaped or non-finite output, an
        unavailable ``device``, non-finite weights.
    """
    if not isinstance(refiner, Refiner):
        raise TypeError(f"refiner must be a tomoprior Refiner (refiners.load(name) or Refiner.from_checkpoint(path)), "
                        f"got {type(refiner).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    t0 = _positive_level(bone_threshold_mu, "bone_threshold_mu")
    cand = _candidate_levels(thresholds, t0)
    fit_split = dataset_or_path.split if isinstance(dataset_or_path, TomopriorDataset) else split
    if fit_split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val' (a dataset object: of that split), got {fit_split!r}: a "
                         "bone level fitted on the test samples would tune the metric on the data being reported")
    refiner, path, indices, scale, device = _prepare_run(refiner, dataset_or_path, split, max_samples, output_to_mu,
                                                         device, None)

    total = np.zeros(cand.size)
    with DatasetFile(path) as ds:
        for start in range(0, len(indices), batch_size):
            items = [_prepare(ds, i, None, None, None, 0, DEFAULT_ENERGY_KEV, False)
                     for i in indices[start:start + batch_size]]
            pred = _run_refiner(refiner, items, device, scale)
            for it, p in zip(items, pred):
                total += _dice_curve(p, it["volume"] > t0, cand)
    mean = total / len(indices)
    k0 = int(np.flatnonzero(cand == t0)[0])
    k, note = _best_level(cand, mean, k0, f"{len(indices)} {split} samples")
    return {"threshold_mu": float(cand[k]), "dice": float(mean[k]), "dice_at_default": float(mean[k0]),
            "bone_threshold_mu": t0, "split": fit_split, "n_samples": len(indices),
            "indices": [int(i) for i in indices],
            "curve": [(float(t), float(d)) for t, d in zip(cand, mean)], "note": note}


def _candidate_levels(thresholds, t0: float) -> np.ndarray:
    """Sorted unique candidate prediction levels (1/mm) with the target level ``t0`` included;
    ``thresholds`` None gives :data:`BONE_THRESHOLD_CANDIDATES`."""
    if thresholds is None:
        cand = BONE_THRESHOLD_CANDIDATES
    else:
        try:
            cand = np.asarray(thresholds, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"thresholds must be a sequence of levels in 1/mm, got {thresholds!r}") from exc
        if cand.ndim != 1 or cand.size == 0:
            raise ValueError(f"thresholds must be a non-empty 1-D sequence of levels in 1/mm, got shape {cand.shape}")
        if not (np.isfinite(cand).all() and (cand > 0).all()):
            raise ValueError("thresholds must be positive finite levels in 1/mm, got "
                             f"{[float(c) for c in cand if not (math.isfinite(c) and c > 0)]}")
    return np.unique(np.append(cand, t0))  # sorted, the target level exactly included


def _best_level(cand: np.ndarray, mean: np.ndarray, k0: int, samples: str) -> tuple[int, str | None]:
    """Index of the level with the best mean Dice (ties within :data:`_DICE_TIE` go to the one
    closest to the target level ``cand[k0]``) and a note; without any overlap the target level
    is kept and the note says so (``samples`` names what was averaged)."""
    t0 = cand[k0]
    best_dice = float(mean.max())
    if best_dice <= 0.0:
        return k0, (f"no candidate level between {cand[0]:.4g} and {cand[-1]:.4g} /mm gives any overlap with the "
                    f"targets' bone on {samples}; kept {t0:g} /mm")
    ties = np.flatnonzero(mean >= best_dice - _DICE_TIE)
    return int(ties[np.argmin(np.abs(cand[ties] - t0))]), None
