"""Calibration QA: tolerances, a PASS/FAIL verdict per item, per view and overall.

A calibration run is accepted only when every item of its verdict passes. Items are plain
records a script can read without parsing prose (``name``, ``view``, ``value``, ``unit``,
``limit``, ``comparison``, ``pass``, ``reason``); the command-line tools turn the verdict
into their exit code (0 PASS, 1 FAIL).

Tolerance file (``--tolerances qa.yaml``)
----------------------------------------
YAML; every key is optional (a missing key keeps its default, ``null`` switches that check
off); every value carries its unit, so a file cannot be misread::

    schema: tomoprior.qa-tolerances      # optional, but if present it must say this
    schema_version: 1
    heldout_rms: 0.1 px                  # RMS of the held-out beads' reprojection error
    triangulation_rms: 0.2 mm            # 3D error of beads triangulated from both views
    fit_residual_max: 0.5 px             # largest residual of a fitted bead, per view
    beads_matched: 60 %                  # design beads matched, per view (a minimum)
    heldout_rejected: 10 %               # held-out beads rejected as mismatches (a maximum)
    uncertainty:                         # fitted 1-sigma, per view
      source_to_detector: 1 mm
      u0: 0.2 px                         # u0/v0 accept px or a length (mm, um)
      detector_rotation: 0.01 deg        # angles accept deg, rad, mrad, arcmin
    change_from_start:                   # |calibrated - starting geometry|, per view
      source_to_detector: 50 mm
    error_vs_truth:                      # simulations only (tomoprior validate)
      source_to_detector: 1 mm
    drift:                               # against --baseline: fails when |delta| exceeds the
      z: 3                               # limit AND |delta| / combined sigma exceeds z
      source_to_detector: 2 mm

Parameter keys are the :class:`~tomoprior.geometry.ViewParameters` fields:
``primary_angle``, ``secondary_angle``, ``source_to_isocenter``, ``source_to_detector``,
``u0``, ``v0`` (the detector offset: where the central ray of the untilted detector meets
it, relative to the detector centre), ``detector_rotation``, ``detector_tilt_u``,
``detector_tilt_v``. Units: lengths ``mm``, ``cm``, ``m``, ``um``; angles ``deg``, ``rad``,
``mrad``, ``arcmin``; pixels ``px``; fractions ``%``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..geometry.parameters import ViewParameters

__all__ = [
    "DEFAULT_TOLERANCES",
    "PARAMETERS",
    "Quantity",
    "Tolerances",
    "Verdict",
    "VerdictItem",
    "baseline_deltas",
    "load_baseline",
    "parameter_value",
]

SCHEMA = "tomoprior.qa-tolerances"
SCHEMA_VERSION = 1

#: The calibrated parameters of a view, in ViewParameters order.
PARAMETERS = ViewParameters.SCALAR_FIELDS
_ANGLES = set(ViewParameters.ANGLE_FIELDS)
_OFFSETS = {"u0", "v0"}

#: unit -> (dimension, factor to the dimension's base unit: mm, deg, px, fraction, 1)
_UNITS = {
    "mm": ("length", 1.0), "cm": ("length", 10.0), "m": ("length", 1000.0), "um": ("length", 1e-3),
    "µm": ("length", 1e-3),
    "deg": ("angle", 1.0), "rad": ("angle", 180.0 / math.pi), "mrad": ("angle", 0.18 / math.pi),
    "arcmin": ("angle", 1.0 / 60.0),
    "px": ("pixel", 1.0),
    "%": ("fraction", 0.01),
    "": ("number", 1.0),
}
_BASE = {"length": "mm", "angle": "deg", "pixel": "px", "fraction": "%", "number": ""}
_DIM_WORDS = {"length": "a length (mm, cm, m, um)", "angle": "an angle (deg, rad, mrad, arcmin)",
              "pixel": "pixels (px)", "fraction": "a percentage (%)", "number": "a plain number"}


@dataclass(frozen=True)
class Quantity:
    """A number with its unit, as written in a tolerance file (``0.1 px``, ``1 mm``, ``60 %``)."""

    value: float
    unit: str

    @property
    def dimension(self) -> str:
        return _UNITS[self.unit][0]

    def to(self, unit: str) -> float:
        """The value in ``unit`` (same dimension)."""
        dim, f = _UNITS[self.unit]
        dim2, f2 = _UNITS[unit]
        if dim != dim2:
            raise ValueError(f"cannot convert {self} to {unit!r}")
        return self.value * f / f2

    def __str__(self) -> str:
        return f"{self.value:g} {self.unit}".strip()


_QTY = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([A-Za-zµ%]*)\s*$")


def _parse_quantity(raw, where: str, allowed: tuple) -> Quantity | None:
    """``"0.1 px"`` -> Quantity, checked against the allowed dimensions; ``None`` stays None."""
    if raw is None:
        return None
    if isinstance(raw, bool):
        raise ValueError(f"{where}: expected a number with a unit, e.g. '1 mm', got {raw!r}")
    if isinstance(raw, (int, float)):
        if "number" in allowed:
            return _finite_nonneg(Quantity(float(raw), ""), where)
        example = {"length": "1 mm", "angle": "0.1 deg", "pixel": "0.1 px", "fraction": "60 %"}[allowed[0]]
        raise ValueError(f"{where}: {raw!r} has no unit; write it with its unit, e.g. '{example}' "
                         f"({' or '.join(_DIM_WORDS[a] for a in allowed)})")
    if not isinstance(raw, str):
        raise ValueError(f"{where}: expected a number with a unit such as '1 mm', got a {type(raw).__name__}")
    m = _QTY.match(raw)
    if not m:
        raise ValueError(f"{where}: cannot read {raw[:60]!r}; write a number and a unit, e.g. '0.1 px' or '1 mm'")
    number, unit = float(m.group(1)), m.group(2)
    if unit not in _UNITS:
        raise ValueError(f"{where}: unknown unit {unit!r}; use one of mm, cm, m, um, deg, rad, mrad, arcmin, px, %")
    dim = _UNITS[unit][0]
    if dim not in allowed:
        raise ValueError(f"{where}: {raw!r} is {_DIM_WORDS[dim]}, but this limit is "
                         f"{' or '.join(_DIM_WORDS[a] for a in allowed)}")
    return _finite_nonneg(Quantity(number, unit), where)


def _finite_nonneg(q: Quantity, where: str) -> Quantity:
    if not math.isfinite(q.value) or q.value < 0:
        raise ValueError(f"{where}: a limit must be a finite number >= 0, got {q}")
    return q


def _param_dims(name: str) -> tuple:
    if name in _ANGLES:
        return ("angle",)
    if name in _OFFSETS:
        return ("pixel", "length")
    return ("length",)


#: Scalar limits: key -> (allowed dimensions, comparison, default, label)
_SCALARS = {
    "heldout_rms": (("pixel",), "<=", "0.1 px", "held-out reprojection RMS"),
    "triangulation_rms": (("length",), "<=", "0.2 mm", "3D triangulation RMS"),
    "fit_residual_max": (("pixel",), "<=", "0.5 px", "largest fit residual"),
    "beads_matched": (("fraction",), ">=", "60 %", "design beads matched"),
    "heldout_rejected": (("fraction",), "<=", "10 %", "held-out beads rejected as mismatches"),
}

#: The calibration targets per parameter (simulated images, ~0.1 px centroid noise).
_TARGETS = {
    "source_to_isocenter": "1 mm", "source_to_detector": "1 mm", "u0": "0.2 px", "v0": "0.2 px",
    "detector_rotation": "0.01 deg", "detector_tilt_u": "0.1 deg", "detector_tilt_v": "0.1 deg",
}

#: Per-parameter groups: group -> (comparison, defaults, label). Defaults: the targets the
#: calibration meets on the built-in setup (uncertainty, error_vs_truth); a plausibility bound
#: for the change from the starting geometry (a physicist's nominal values are not off by
#: more); drift limits a little above twice the 1-sigma of a good calibration.
_GROUPS = {
    "uncertainty": ("<=", _TARGETS, "1-sigma uncertainty"),
    "change_from_start": ("<=", {
        "primary_angle": "5 deg", "secondary_angle": "5 deg", "source_to_isocenter": "50 mm",
        "source_to_detector": "50 mm", "u0": "20 mm", "v0": "20 mm", "detector_rotation": "5 deg",
        "detector_tilt_u": "5 deg", "detector_tilt_v": "5 deg",
    }, "change from the starting geometry"),
    "error_vs_truth": ("<=", _TARGETS, "error against the truth"),
    "drift": ("<=", {
        "primary_angle": "0.05 deg", "secondary_angle": "0.05 deg", "source_to_isocenter": "2 mm",
        "source_to_detector": "2 mm", "u0": "0.5 px", "v0": "0.5 px", "detector_rotation": "0.02 deg",
        "detector_tilt_u": "0.2 deg", "detector_tilt_v": "0.2 deg",
    }, "drift from the baseline"),
}
_DRIFT_Z_DEFAULT = 3.0


@dataclass
class Tolerances:
    """QA limits (see the module docstring for the file format).

    Attributes
    ----------
    scalars : dict
        ``heldout_rms``, ``triangulation_rms``, ``fit_residual_max``, ``beads_matched``,
        ``heldout_rejected`` -> Quantity or None (check off).
    groups : dict
        ``uncertainty``, ``change_from_start``, ``error_vs_truth``, ``drift`` -> dict of
        parameter name -> Quantity or None.
    drift_z : float or None
        Significance a drift must also reach (|delta| / combined 1-sigma) to fail.
    source : str
        Where the limits came from (a file path or "built-in defaults").
    """

    scalars: dict = field(default_factory=dict)
    groups: dict = field(default_factory=dict)
    drift_z: float | None = _DRIFT_Z_DEFAULT
    source: str = "built-in defaults"

    @classmethod
    def default(cls) -> Tolerances:
        """Today's targets (held-out 0.1 px, triangulation 0.2 mm, ...)."""
        scal = {k: _parse_quantity(d, k, dims) for k, (dims, _, d, _) in _SCALARS.items()}
        groups = {g: {p: (_parse_quantity(defaults[p], f"{g}.{p}", _param_dims(p)) if p in defaults else None)
                      for p in PARAMETERS} for g, (_, defaults, _) in _GROUPS.items()}
        return cls(scal, groups, _DRIFT_Z_DEFAULT, "built-in defaults")

    @classmethod
    def from_dict(cls, d, where: str = "tolerances") -> Tolerances:
        """Defaults overridden by ``d`` (the parsed YAML), every key and unit checked."""
        if d is None:
            d = {}
        if not isinstance(d, dict):
            raise ValueError(f"{where}: the file must hold a mapping of limits (e.g. 'heldout_rms: 0.1 px'), "
                             f"got {type(d).__name__}")
        out = cls.default()
        out.source = where
        schema = d.get("schema", SCHEMA)
        if schema != SCHEMA:
            raise ValueError(f"{where}: schema is {str(schema)[:60]!r}; a tolerance file says {SCHEMA!r}")
        version = d.get("schema_version", SCHEMA_VERSION)
        if isinstance(version, bool) or version != SCHEMA_VERSION:
            raise ValueError(f"{where}: schema_version {str(version)[:20]!r} is not supported (this tomoprior "
                             f"reads {SCHEMA_VERSION})")
        known = set(_SCALARS) | set(_GROUPS) | {"schema", "schema_version"}
        unknown = sorted(str(k) for k in d if k not in known)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(known - {'schema'})}")
        for k, (dims, _, _, _) in _SCALARS.items():
            if k in d:
                out.scalars[k] = _parse_quantity(d[k], f"{where}: {k}", dims)
        for g in _GROUPS:
            if g not in d:
                continue
            sub = d[g]
            if sub is None:  # the whole group off
                out.groups[g] = dict.fromkeys(PARAMETERS)
                if g == "drift":
                    out.drift_z = None
                continue
            if not isinstance(sub, dict):
                raise ValueError(f"{where}: {g} must be a mapping of parameter -> limit, got {type(sub).__name__}")
            allowed = set(PARAMETERS) | ({"z"} if g == "drift" else set())
            bad = sorted(str(k) for k in sub if k not in allowed)
            if bad:
                raise ValueError(f"{where}: {g} has unknown parameter(s) {bad}; use {sorted(allowed)}")
            for p, raw in sub.items():
                if p == "z":
                    q = _parse_quantity(raw, f"{where}: drift.z", ("number",))
                    out.drift_z = None if q is None else q.value
                else:
                    out.groups[g][p] = _parse_quantity(raw, f"{where}: {g}.{p}", _param_dims(p))
        return out

    @classmethod
    def load(cls, path) -> Tolerances:
        """Read a tolerance YAML file (see the module docstring)."""
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"tolerance file {p} does not exist")
        return cls.from_dict(_load_yaml(p, "tolerance file"), where=str(p))

    def to_dict(self) -> dict:
        """The limits as written in a file (value with unit; None = off)."""
        d = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION}
        for k in _SCALARS:
            q = self.scalars.get(k)
            d[k] = None if q is None else str(q)
        for g in _GROUPS:
            # every parameter written, None where the check is off, so the file reads back the same
            d[g] = {p: (None if q is None else str(q)) for p, q in self.groups[g].items()}
        d["drift"]["z"] = self.drift_z
        return d

    def scalar(self, key: str) -> Quantity | None:
        return self.scalars.get(key)

    def param(self, group: str, name: str) -> Quantity | None:
        return self.groups.get(group, {}).get(name)


DEFAULT_TOLERANCES = Tolerances.default()


# -- parameter values in display units --------------------------------------------------------

def _pitch(p: ViewParameters) -> tuple[float, float]:
    return tuple(float(torch.as_tensor(x)) for x in p.to_dict()["pixel_pitch"])


def parameter_value(p: ViewParameters, name: str, unit: str) -> float:
    """Parameter ``name`` of ``p`` in ``unit`` (mm/cm/..., deg/rad/..., px for u0/v0)."""
    v = float(torch.as_tensor(getattr(p, name)).detach())
    dim = _UNITS[unit][0]
    if name in _ANGLES:
        return Quantity(math.degrees(v), "deg").to(unit)
    if dim == "pixel":
        if name not in _OFFSETS:
            raise ValueError(f"{name} cannot be expressed in pixels")
        pr, pc = _pitch(p)
        return v / (pc if name == "u0" else pr)
    return Quantity(v, "mm").to(unit)


def _sigma_in(p: ViewParameters, unc: dict, name: str, unit: str) -> float | None:
    """1-sigma of ``name`` from a CalibrationResult.uncertainty dict, in ``unit``."""
    if not unc:
        return None
    if name in _ANGLES:
        s = unc.get(f"{name}_deg")
        return None if s is None else Quantity(float(s), "deg").to(unit)
    if _UNITS[unit][0] == "pixel":
        s = unc.get(f"{name}_px")
        return None if s is None else float(s)
    s = unc.get(name)
    return None if s is None else Quantity(float(s), "mm").to(unit)


# -- verdict ----------------------------------------------------------------------------------

@dataclass
class VerdictItem:
    """One checked quantity.

    ``value`` and ``limit`` are in ``unit``; ``comparison`` is ``"<="`` (value must not exceed
    the limit), ``">="`` or ``"=="`` (for yes/no checks, ``value`` and ``limit`` are booleans).
    ``view`` is None for whole-calibration items. ``reason`` says in words why a failed item
    failed (None when it passed).
    """

    name: str
    value: float | bool | None
    unit: str
    limit: float | bool | None
    comparison: str
    passed: bool
    view: str | None = None
    reason: str | None = None
    group: str = "statistics"
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = {"name": self.name, "view": self.view, "value": _plain(self.value), "unit": self.unit,
             "limit": _plain(self.limit), "comparison": self.comparison, "pass": bool(self.passed),
             "reason": self.reason, "group": self.group}
        d.update({k: _plain(v) for k, v in self.extra.items()})
        return d


def _plain(v):
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, float, np.floating, np.integer)):
        f = float(v)
        return f if math.isfinite(f) else None
    return v


@dataclass
class Verdict:
    """The QA verdict of one calibration: items, per-view and overall PASS/FAIL."""

    items: list = field(default_factory=list)
    views: list = field(default_factory=list)
    tolerances: Tolerances = field(default_factory=Tolerances.default)
    notes: list = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.items) and all(i.passed for i in self.items)

    @property
    def label(self) -> str:
        return "PASS" if self.passed else "FAIL"

    def view_passed(self, view: str) -> bool:
        return all(i.passed for i in self.items if i.view == view)

    #: Order in which failed items are told: root causes first.
    PRIORITY = ("sanity", "statistics", "plausibility", "truth", "drift", "uncertainty")

    @property
    def failed(self) -> list:
        """Failed items, the likely root causes first (swapped views, beads, then statistics ...)."""
        order = {g: k for k, g in enumerate(self.PRIORITY)}
        bad = [i for i in self.items if not i.passed]
        return sorted(bad, key=lambda i: (order.get(i.group, len(order)), i.name != "view_order"))

    @property
    def reasons(self) -> list:
        return [i.reason or f"{i.name} failed" for i in self.failed]

    def add(self, item: VerdictItem) -> VerdictItem:
        self.items.append(item)
        return item

    def to_dict(self) -> dict:
        return {
            "verdict": self.label,
            "pass": self.passed,
            "views": {v: ("PASS" if self.view_passed(v) else "FAIL") for v in self.views},
            "reasons": self.reasons,
            "items": [i.to_dict() for i in self.items],
            "tolerances": self.tolerances.to_dict(),
            "tolerances_source": self.tolerances.source,
            "notes": list(self.notes),
        }

    def summary_lines(self, limit: int = 10) -> list[str]:
        """Console lines: the verdict and the reasons of (at most ``limit``) failed items."""
        lines = [f"QA verdict: {self.label}" + "".join(
            f"  {v}: {'PASS' if self.view_passed(v) else 'FAIL'}" for v in self.views)]
        reasons = self.reasons
        lines += [f"  FAIL: {r}" for r in reasons[:limit]]
        if len(reasons) > limit:
            lines.append(f"  ... and {len(reasons) - limit} more failed item(s): see the report")
        return lines


def _check(verdict: Verdict, name: str, value, limit: Quantity | None, comparison: str, *, unit: str | None = None,
           view: str | None = None, label: str = "", group: str = "statistics", hint: str = "",
           extra: dict | None = None) -> VerdictItem | None:
    """Add one numeric item if its limit is set; a value that is missing (None/NaN) fails."""
    if limit is None:
        return None
    unit = limit.unit if unit is None else unit
    lim = limit.to(unit) if unit else limit.value
    v = None if value is None or (isinstance(value, float) and not math.isfinite(value)) else float(value)
    where = f"{view}: " if view else ""
    if v is None:
        ok, reason = False, f"{where}{label or name} was not measured{hint}"
    else:
        ok = v <= lim + 1e-12 * max(abs(lim), 1.0) if comparison == "<=" else v >= lim - 1e-12 * max(abs(lim), 1.0)
        word = "exceeds" if comparison == "<=" else "is below"
        reason = None if ok else f"{where}{label or name} {_num(v)} {unit} {word} the limit {_num(lim)} {unit}{hint}"
    return verdict.add(VerdictItem(name, v, unit, lim, comparison, ok, view, reason, group, extra or {}))


def _num(x: float) -> str:
    a = abs(x)
    if a == 0:
        return "0"
    if a >= 100:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.3g}"
    return f"{x:.2g}" if a < 0.01 else f"{x:.3f}".rstrip("0")


def _unit_for(limit: Quantity | None, name: str) -> str:
    if limit is not None:
        return limit.unit
    return "deg" if name in _ANGLES else ("px" if name in _OFFSETS else "mm")


def evaluate(result, *, tolerances: Tolerances | None = None, names: Sequence[str] | None = None,
             truth: Sequence[ViewParameters] | None = None, baseline=None) -> Verdict:
    """The QA verdict of a :class:`~tomoprior.calibration.CalibrationResult`.

    Parameters
    ----------
    result : CalibrationResult
    tolerances : Tolerances, optional
        Default :meth:`Tolerances.default`.
    names : sequence of str, optional
        View names (default the result's parameter names).
    truth : sequence of ViewParameters, optional
        The true parameters of a simulation: adds the ``error_vs_truth`` items.
    baseline : Baseline, optional
        A previous calibration (:func:`load_baseline`): adds the ``drift`` items.

    Returns
    -------
    Verdict
    """
    tol = tolerances or Tolerances.default()
    params = list(result.parameters)
    names = list(names) if names is not None else [p.name for p in params]
    verdict = Verdict(views=names, tolerances=tol)
    # -- the fit itself ----------------------------------------------------------------------
    conv = bool(result.converged)
    verdict.add(VerdictItem("fit_converged", conv, "", True, "==", conv, None,
                            None if conv else f"the geometry fit did not converge: {result.message}", "sanity"))
    _check_beads_matched(verdict, result, tol, names)
    _check_reprojection(verdict, result, tol, names, n_views=len(params))
    _check_parameters(verdict, result, tol, names, truth)
    if baseline is not None:
        _check_drift(verdict, result, tol, names, baseline)
    return verdict


def _check_beads_matched(verdict: Verdict, result, tol: Tolerances, names: list) -> None:
    """Items ``beads_matched``: the percentage of design beads matched in each view."""
    n_design = int(getattr(result, "n_design", 0) or 0)
    matches = getattr(result, "matches", None) or []
    lim = tol.scalar("beads_matched")
    design_ids = list(getattr(result, "design_ids", ()) or ())
    if lim is not None and n_design and matches:
        for v, (name, (di, _)) in enumerate(zip(names, matches)):
            frac = 100.0 * len(di) / n_design
            missing = [design_ids[k] for k in range(n_design) if k not in set(np.asarray(di).tolist())]
            hint = ""
            if frac < lim.to("%"):
                hint = (f" ({len(di)} of {n_design} design beads matched; unmatched: "
                        f"{', '.join(missing[:12])}{', ...' if len(missing) > 12 else ''}"
                        f"{_where_missing(result, v, missing)})")
            _check(verdict, "beads_matched", frac, lim, ">=", unit="%", view=name, label="design beads matched",
                   group="sanity", hint=hint, extra={"matched": len(di), "design": n_design})


def _check_reprojection(verdict: Verdict, result, tol: Tolerances, names: list, n_views: int) -> None:
    """Items of the reprojection statistics: held-out RMS (all and per view), held-out beads
    rejected as mismatches, largest fit residual, 3D triangulation RMS (two views or more)."""
    held_ids = list(getattr(result, "heldout_ids", []) or [])
    n_held = sum(len(h) for h in held_ids)
    nothing_held = " (no beads were held out; hold some out or switch heldout_rms off)" if n_held == 0 else ""
    _check(verdict, "heldout_rms", result.heldout_rms_px, tol.scalar("heldout_rms"), "<=",
           label="held-out reprojection RMS", hint=nothing_held)
    for name, h in zip(names, result.heldout_residuals):
        if len(h):
            rms = float(np.sqrt(np.mean(np.sum(np.asarray(h) ** 2, axis=1))))
            _check(verdict, "heldout_rms", rms, tol.scalar("heldout_rms"), "<=", view=name,
                   label="held-out reprojection RMS")
    rej = list(getattr(result, "heldout_rejected_ids", []) or [])
    lim = tol.scalar("heldout_rejected")
    if lim is not None and rej:
        for name, r, h in zip(names, rej, held_ids):
            total = len(r) + len(h)
            if total:
                hint = (f" ({len(r)} of {total} held-out beads farther than {result.outlier_limit_px:.2f} px from "
                        f"their prediction: {', '.join(r[:8])})") if r else ""
                _check(verdict, "heldout_rejected", 100.0 * len(r) / total, lim, "<=", unit="%", view=name,
                       label="held-out beads rejected as mismatches", hint=hint)
    for name, mx in zip(names, result.max_px):
        _check(verdict, "fit_residual_max", mx, tol.scalar("fit_residual_max"), "<=", view=name,
               label="largest fit residual")
    if n_views >= 2:
        _check(verdict, "triangulation_rms", result.triangulation_rms_mm, tol.scalar("triangulation_rms"), "<=",
               label="3D triangulation RMS")


def _check_parameters(verdict: Verdict, result, tol: Tolerances, names: list, truth) -> None:
    """Per-parameter items: 1-sigma uncertainty, change from the starting geometry and, for a
    simulation (``truth``), the error against the true parameters."""
    params = list(result.parameters)
    initial = list(getattr(result, "initial_parameters", []) or [])
    for v, (name, p) in enumerate(zip(names, params)):
        unc = result.uncertainty[v] if v < len(result.uncertainty) else {}
        for f in PARAMETERS:
            lim = _in_pixels(tol.param("uncertainty", f), p, f)
            if lim is not None:
                s = _sigma_in(p, unc, f, lim.unit)
                if s is not None and s > 0:  # 0 = held fixed by the gauge: nothing to check
                    _check(verdict, f"uncertainty.{f}", s, lim, "<=", view=name, group="uncertainty",
                           label=f"1-sigma of {f}")
            lim = _in_pixels(tol.param("change_from_start", f), p, f)
            if lim is not None and v < len(initial):
                d = parameter_value(p, f, lim.unit) - parameter_value(initial[v], f, lim.unit)
                _check(verdict, f"change_from_start.{f}", abs(d), lim, "<=", view=name, group="plausibility",
                       label=f"{f} moved from the starting geometry by",
                       hint="; the starting geometry or the image assignment is probably wrong",
                       extra={"signed": d})
            if truth is not None:
                lim = _in_pixels(tol.param("error_vs_truth", f), p, f)
                if lim is not None:
                    e = parameter_value(p, f, lim.unit) - parameter_value(truth[v], f, lim.unit)
                    _check(verdict, f"error_vs_truth.{f}", abs(e), lim, "<=", view=name, group="truth",
                           label=f"error of {f} against the truth", extra={"signed": e})


def _check_drift(verdict: Verdict, result, tol: Tolerances, names: list, baseline) -> None:
    """Items ``drift.*``: parameter changes against a baseline calibration that are both beyond
    the limit and significant (``|z| > tol.drift_z``)."""
    params = list(result.parameters)
    for row in baseline_deltas(result, baseline, tol, names):
        lim = _in_pixels(tol.param("drift", row["parameter"]), params[names.index(row["view"])],
                         row["parameter"])
        if lim is None:
            continue
        z = row["z"]
        big = abs(row["delta"]) > lim.to(row["unit"]) + 1e-12
        significant = tol.drift_z is None or z is None or abs(z) > tol.drift_z
        ok = not (big and significant)
        reason = None if ok else (
            f"{row['view']}: {row['parameter']} drifted by {row['delta']:+.3g} {row['unit']} from the baseline "
            f"(limit {_num(lim.to(row['unit']))} {row['unit']}"
            + (f", z = {z:+.1f}" if z is not None else "") + ")")
        verdict.add(VerdictItem(f"drift.{row['parameter']}", abs(row["delta"]), row["unit"],
                                lim.to(row["unit"]), "<=", ok, row["view"], reason, "drift",
                                {"signed": row["delta"], "z": z, "z_limit": tol.drift_z}))


def _in_pixels(limit: Quantity | None, p: ViewParameters, name: str) -> Quantity | None:
    """A detector-offset limit given as a length, converted to pixels of this view: every
    u0/v0 number of a report is in pixels, whatever unit the tolerance file used."""
    if limit is None or name not in _OFFSETS or limit.dimension != "length":
        return limit
    pr, pc = _pitch(p)
    return Quantity(limit.to("mm") / (pc if name == "u0" else pr), "px")


def _where_missing(result, v: int, missing_ids: list) -> str:
    """Where the unmatched beads were expected in view ``v`` (bounding box of the predictions)."""
    try:
        ids = list(result.design_ids)
        idx = [ids.index(b) for b in missing_ids]
        if not idx:
            return ""
        world = getattr(result, "world_points", None)
        if world is None:
            return ""
        pts = result.parameters[v].to_view().project_points(torch.as_tensor(world[idx])).detach().numpy()
        return (f"; expected within columns {pts[:, 0].min():.0f}-{pts[:, 0].max():.0f}, rows "
                f"{pts[:, 1].min():.0f}-{pts[:, 1].max():.0f}")
    except Exception:  # a hint must never break the verdict
        return ""


# -- baselines --------------------------------------------------------------------------------

@dataclass
class Baseline:
    """A previous calibration to compare with: parameters, 1-sigma (may be missing), source."""

    parameters: list
    uncertainty: list
    source: str
    created: str | None = None
    verdict: str | None = None


def load_baseline(path) -> Baseline:
    """Read a previous calibration: a QA ``report.json``, a calibration result (``.json``/``.yaml``
    written by :meth:`CalibrationResult.save`) or a geometry file with parameters.

    Raises
    ------
    ValueError
        Missing or unreadable file, or a file without per-view parameters.
    """
    import json

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"baseline {p} does not exist; give a previous report.json, a calibration result or a "
                         "geometry file with parameters")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"baseline {p}: cannot read it ({exc})") from exc
    if p.suffix.lower() == ".json":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"baseline {p}: not valid JSON ({exc})") from exc
    else:
        d = _load_yaml(p, "baseline")
    if not isinstance(d, dict):
        raise ValueError(f"baseline {p}: expected a mapping at the top level")
    created = d.get("created_utc")
    verdict = (d.get("verdict") or {}).get("verdict") if isinstance(d.get("verdict"), dict) else None
    if "calibration_result" in d and isinstance(d["calibration_result"], dict):  # a QA report.json
        d = d["calibration_result"]
    if d.get("schema") == "tomoprior.calibration":
        views = d.get("views") or []
        params = [ViewParameters.from_dict(v["parameters"], where=f"{p}: views[{i}].parameters")
                  for i, v in enumerate(views)]
        unc = [dict(v.get("uncertainty") or {}) for v in views]
        return Baseline(params, unc, str(p), created, verdict)
    if d.get("schema") == "tomoprior.geometry":
        raw = d.get("parameters")
        if not raw:
            raise ValueError(f"baseline {p}: the geometry file has no 'parameters' (physical view parameters); a "
                             "baseline needs them")
        params = [ViewParameters.from_dict(v, where=f"{p}: parameters[{i}]") for i, v in enumerate(raw)]
        return Baseline(params, [{} for _ in params], str(p), created, verdict)
    raise ValueError(f"baseline {p}: not a tomoprior report.json, calibration result or geometry file")


def baseline_deltas(result, baseline: Baseline, tolerances: Tolerances | None = None,
                    names: Sequence[str] | None = None) -> list[dict]:
    """Per view and parameter: current, baseline, delta and z = delta / sqrt(s1^2 + s2^2).

    Views are paired by name when the names agree, else by order. Units: the drift limit's
    unit (default mm, deg, px for u0/v0). ``z`` is None when neither side has an uncertainty.
    """
    tol = tolerances or Tolerances.default()
    params = list(result.parameters)
    names = list(names) if names is not None else [p.name for p in params]
    base_names = [p.name for p in baseline.parameters]
    rows = []
    if len(baseline.parameters) != len(params):
        raise ValueError(f"baseline {baseline.source} has {len(baseline.parameters)} view(s), this calibration "
                         f"{len(params)}")
    for v, (name, p) in enumerate(zip(names, params)):
        b = base_names.index(p.name) if sorted(base_names) == sorted(p.name for p in params) else v
        bp, bu = baseline.parameters[b], baseline.uncertainty[b] if b < len(baseline.uncertainty) else {}
        unc = result.uncertainty[v] if v < len(result.uncertainty) else {}
        for f in PARAMETERS:
            unit = "px" if f in _OFFSETS else _unit_for(tol.param("drift", f), f)
            cur, old = parameter_value(p, f, unit), parameter_value(bp, f, unit)
            s1, s2 = _sigma_in(p, unc, f, unit), _sigma_in(bp, bu, f, unit)
            var = sum(s * s for s in (s1, s2) if s is not None and math.isfinite(s))
            z = (cur - old) / math.sqrt(var) if var > 0 else None
            rows.append({"view": name, "parameter": f, "unit": unit, "current": cur, "baseline": old,
                         "delta": cur - old, "sigma_current": s1, "sigma_baseline": s2, "z": z})
    return rows


def _load_yaml(path: Path, what: str):
    """Parse a small YAML file with the project's guarded loader."""
    from .._yaml import load_yaml

    return load_yaml(path, what=what)
