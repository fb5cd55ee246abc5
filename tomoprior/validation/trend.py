"""Calibration QA over time: collect past ``report.json`` files and plot their trend.

A physicist repeating the bead-phantom calibration (weekly, after a service visit) wants to
see whether the geometry drifts before a single run fails. :func:`collect_reports` reads
the QA reports written by ``tomoprior calibrate`` / ``tomoprior validate`` (a folder
searched recursively, or explicit files) and orders them by acquisition date;
:func:`trend_report` writes, atomically, one figure per view (each calibrated parameter
over time, 1-sigma error bars, a tolerance band), one figure of the held-out reprojection
RMS and the 3D triangulation RMS against their limits, a self-contained ``trend.html`` and
``trend.json``.

Units: lengths in mm, angles in degrees, the detector offsets ``u0``/``v0`` and the
reprojection RMS in detector pixels (px), the triangulation RMS in mm.

The tolerance band of a parameter is the first (oldest) run's value +- the ``drift`` limit
of the QA tolerances. A run outside it is marked; unlike the drift check of a QA verdict
(which also requires |change| / combined 1-sigma > z), the band is the limit alone, so it
flags a slow drift early.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..geometry.parameters import ViewParameters
from .qa import PARAMETERS, Quantity, Tolerances, parameter_value
from .report import Cell, Figure, Report, _plt, _png, write_report

__all__ = [
    "ReportSkipped",
    "TrendRecord",
    "TrendWarning",
    "ViewRecord",
    "collect_reports",
    "date_label",
    "drift_band",
    "parse_date",
    "read_record",
    "trend_report",
]

SCHEMA = "tomoprior.qa-trend"
SCHEMA_VERSION = 1
#: Largest report.json read (bytes); a real one is a few hundred kB.
MAX_REPORT_BYTES = 64 * 1024 * 1024

_ANGLES = set(ViewParameters.ANGLE_FIELDS)
_OFFSETS = {"u0", "v0"}
#: Parameter -> (short panel title, display unit).
LABELS = {
    "source_to_detector": ("source to detector", "mm"),
    "source_to_isocenter": ("source to isocenter", "mm"),
    "u0": ("detector offset u0", "px"),
    "v0": ("detector offset v0", "px"),
    "detector_rotation": ("detector in-plane rotation", "deg"),
    "detector_tilt_u": ("detector tilt u", "deg"),
    "detector_tilt_v": ("detector tilt v", "deg"),
    "primary_angle": ("gantry primary angle", "deg"),
    "secondary_angle": ("gantry secondary angle", "deg"),
}


class TrendWarning(UserWarning):
    """Something in a report was read with a fallback (e.g. an unreadable acquisition date)."""


class ReportSkipped(TrendWarning):
    """A file given to (or found by) :func:`collect_reports` is not a readable tomoprior QA report."""


@dataclass
class ViewRecord:
    """One view of one run.

    Attributes
    ----------
    name : str
    values : dict
        Parameter -> calibrated value in display units (mm, deg, px for u0/v0).
    sigma : dict
        Parameter -> 1-sigma in the same unit, or None when the report has none.
    heldout_rms_px : float or None
        Held-out reprojection RMS of this view (px).
    pixel_pitch : (float, float)
        ``(row, col)`` pitch in mm (converts a u0/v0 limit given as a length to px).
    """

    name: str
    values: dict
    sigma: dict
    heldout_rms_px: float | None = None
    pixel_pitch: tuple = (1.0, 1.0)

    def to_dict(self) -> dict:
        return {"name": self.name, "values": dict(self.values), "sigma": dict(self.sigma),
                "units": {p: LABELS[p][1] for p in self.values}, "heldout_rms_px": self.heldout_rms_px,
                "pixel_pitch_mm": list(self.pixel_pitch)}


@dataclass
class TrendRecord:
    """One past QA run read from its ``report.json``.

    Attributes
    ----------
    date : datetime.datetime
        When the run was acquired (timezone-aware; a date without a time is midnight UTC).
    date_source : str
        ``"acquisition_date"`` (sign-off), ``"created_utc"`` (when the report was written) or
        ``"file modified"``.
    path : Path
        The ``report.json``.
    verdict : str or None
        ``"PASS"``, ``"FAIL"`` or None when the report holds no verdict.
    views : list of ViewRecord
        Empty for a calibration that could not be fitted.
    heldout_rms_px : float or None
        Held-out reprojection RMS over all views (px).
    triangulation_rms_mm : float or None
        RMS 3D error of the beads triangulated from the views (mm).
    tolerances : dict or None
        The report's ``verdict.tolerances`` as written (values with units).
    created_utc : str or None
    system : str or None
        The X-ray system from the sign-off (serial number, else system name), if recorded.
    """

    date: _dt.datetime
    date_source: str
    path: Path
    verdict: str | None
    views: list = field(default_factory=list)
    heldout_rms_px: float | None = None
    triangulation_rms_mm: float | None = None
    tolerances: dict | None = None
    created_utc: str | None = None
    system: str | None = None

    def view(self, name: str) -> ViewRecord | None:
        return next((v for v in self.views if v.name == name), None)

    def to_dict(self) -> dict:
        return {"date": self.date.isoformat(), "date_source": self.date_source, "path": str(self.path),
                "verdict": self.verdict, "heldout_rms_px": self.heldout_rms_px,
                "triangulation_rms_mm": self.triangulation_rms_mm, "created_utc": self.created_utc,
                "system": self.system, "views": [v.to_dict() for v in self.views]}


# -- reading ----------------------------------------------------------------------------------

def collect_reports(folder_or_paths) -> list[TrendRecord]:
    """Read every QA ``report.json`` given or found, oldest first.

    Parameters
    ----------
    folder_or_paths : str, Path or sequence of them
        Folders (searched recursively for files named ``report.json``, hidden folders such as
        a report's staging folder skipped) and/or explicit JSON files.

    Returns
    -------
    list of TrendRecord
        Ordered by ``signoff.acquisition_date`` when the report has one (``2026-12-02``,
        DICOM ``20261202`` or an ISO date-time), else by ``created_utc``, then by path.
        Empty when nothing readable was found.

    Warns
    -----
    ReportSkipped
        For each file that is not a readable tomoprior QA report (named, with the reason).
    TrendWarning
        An acquisition date that cannot be read (the creation time is used), or reports
        from different X-ray systems (sign-off serial number or system name).

    Raises
    ------
    ValueError
        A path that does not exist, or that is neither a folder nor a file.
    """
    if isinstance(folder_or_paths, (str, os.PathLike)):
        folder_or_paths = [folder_or_paths]
    files: list[Path] = []
    for raw in folder_or_paths:
        p = Path(raw)
        if p.is_dir():
            files += _find_reports(p)
        elif p.is_file():
            files.append(p)
        elif p.exists():
            raise ValueError(f"{p} is neither a folder nor a file; give report folders or report.json files")
        else:
            raise ValueError(f"{p} does not exist; give report folders or report.json files")
    seen, records = set(), []
    for f in files:
        key = f.resolve()
        if key in seen:
            continue
        seen.add(key)
        try:
            records.append(read_record(f))
        except ValueError as exc:
            warnings.warn(f"skipped {f}: {exc}", ReportSkipped, stacklevel=2)
        except (TypeError, KeyError, IndexError, AttributeError) as exc:  # a damaged report: skip, never crash
            warnings.warn(f"skipped {f}: unexpected content ({type(exc).__name__}: {str(exc)[:120]})", ReportSkipped,
                          stacklevel=2)
    records.sort(key=lambda r: (r.date, r.created_utc or "", str(r.path)))
    systems = sorted({r.system for r in records if r.system})
    if len(systems) > 1:
        warnings.warn(f"the reports come from {len(systems)} different X-ray systems ({', '.join(systems[:5])}); "
                      "a trend compares one system with itself", TrendWarning, stacklevel=2)
    return records


def _find_reports(folder: Path) -> list[Path]:
    out = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if "report.json" in names:
            out.append(Path(root) / "report.json")
    return out


def read_record(path) -> TrendRecord:
    """One :class:`TrendRecord` from a QA ``report.json``.

    Raises
    ------
    ValueError
        Unreadable, not JSON, or not a tomoprior QA report (the message says which).
    """
    from .._yaml import load_json

    path = Path(path)
    d = load_json(path, what="report", max_bytes=MAX_REPORT_BYTES)
    if not isinstance(d, dict):
        raise ValueError("not a tomoprior QA report (the JSON is not an object)")
    verdict = d.get("verdict")
    cal = d.get("calibration_result")
    has_verdict = isinstance(verdict, dict) and verdict.get("verdict") in ("PASS", "FAIL")
    has_cal = isinstance(cal, dict) and cal.get("schema") == "tomoprior.calibration"
    if not (has_verdict or has_cal):
        raise ValueError("not a tomoprior QA report (no 'verdict' block and no 'calibration_result'); "
                         "give the report.json of tomoprior calibrate or validate")
    verdict = verdict if isinstance(verdict, dict) else {}
    items = [i for i in verdict.get("items") or [] if isinstance(i, dict)]
    summary = d.get("summary") if isinstance(d.get("summary"), dict) else {}
    cal = cal if has_cal else {}
    date, source = _record_date(d, path)
    views = _views(d, cal, items, path)
    held = _item_value(items, "heldout_rms", None)
    if held is None:
        held = _number(cal.get("heldout_rms_px", summary.get("heldout_rms_px")))
    tri = _number(cal.get("triangulation_rms_mm", summary.get("triangulation_rms_mm")))
    if tri is None:
        tri = _item_value(items, "triangulation_rms", None)
    tol = verdict.get("tolerances")
    signoff = d.get("signoff") if isinstance(d.get("signoff"), dict) else {}
    system = next((str(signoff[k]) for k in ("serial", "system") if signoff.get(k) not in (None, "")), None)
    return TrendRecord(date=date, date_source=source, path=path, verdict=verdict.get("verdict"), views=views,
                       heldout_rms_px=held, triangulation_rms_mm=tri,
                       tolerances=tol if isinstance(tol, dict) else None,
                       created_utc=d.get("created_utc") if isinstance(d.get("created_utc"), str) else None,
                       system=system)


def _number(x) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _item_value(items: list, name: str, view: str | None) -> float | None:
    for it in items:
        if it.get("name") == name and it.get("view") == view:
            return _number(it.get("value"))
    return None


_DICOM_DATE = re.compile(r"^\s*(\d{4})(\d{2})(\d{2})\s*$")


def parse_date(text) -> _dt.datetime | None:
    """A date or date-time as written in a report, timezone-aware (UTC when none is given).

    Accepts ISO 8601 (``2026-12-02``, ``2026-12-02T09:30:00+01:00``) and the DICOM DA form
    ``20261202``; returns None for anything else.

    Examples
    --------
    >>> parse_date("20261202").isoformat()
    '2026-12-02T00:00:00+00:00'
    """
    if isinstance(text, (_dt.datetime, _dt.date)):
        text = text.isoformat()
    if not isinstance(text, str) or not text.strip():
        return None
    m = _DICOM_DATE.match(text)
    try:
        if m:
            t = _dt.datetime(int(m.group(1)), int(m.group(2)), int(m.group(3)))
        else:
            t = _dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=_dt.timezone.utc)


def _record_date(d: dict, path: Path) -> tuple[_dt.datetime, str]:
    signoff = d.get("signoff") if isinstance(d.get("signoff"), dict) else {}
    acq = signoff.get("acquisition_date")
    t = parse_date(acq)
    if t is not None:
        return t, "acquisition_date"
    if acq not in (None, ""):
        warnings.warn(f"{path}: cannot read the acquisition date {str(acq)[:40]!r} (write 2026-12-02 or "
                      "20261202); ordered by the report's creation time instead", TrendWarning, stacklevel=4)
    t = parse_date(d.get("created_utc"))
    if t is not None:
        return t, "created_utc"
    return (_dt.datetime.fromtimestamp(path.stat().st_mtime, tz=_dt.timezone.utc), "file modified")


def _views(d: dict, cal: dict, items: list, path: Path) -> list[ViewRecord]:
    """Per-view parameters (display units), 1-sigma and held-out RMS."""
    raw_views = cal.get("views") if isinstance(cal.get("views"), list) else []
    params_raw = [v.get("parameters") if isinstance(v, dict) else None for v in raw_views]
    unc_raw = [v.get("uncertainty") if isinstance(v, dict) else None for v in raw_views]
    top_unc = d.get("uncertainty") if isinstance(d.get("uncertainty"), list) else []
    if not params_raw and isinstance(d.get("calibrated_parameters"), list):  # older / reduced reports
        params_raw = list(d["calibrated_parameters"])
        unc_raw = [None] * len(params_raw)
    reproj = d.get("reprojection") if isinstance(d.get("reprojection"), dict) else {}
    rviews = [v for v in reproj.get("views") or [] if isinstance(v, dict)] if isinstance(reproj.get("views"), list) \
        else []
    out = []
    for i, raw in enumerate(params_raw):
        where = f"calibration_result.views[{i}].parameters"
        if not isinstance(raw, dict):
            raise ValueError(f"{where} is missing")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # angle-unit hints are for people typing parameters, not for files
            p = ViewParameters.from_dict(raw, where=where)
        name = str(p.name) if p.name else f"view {i}"
        values = {f: parameter_value(p, f, LABELS[f][1]) for f in PARAMETERS}
        pr, pc = (float(x) for x in raw.get("pixel_pitch", (1.0, 1.0)))
        unc = unc_raw[i] if i < len(unc_raw) and isinstance(unc_raw[i], dict) else None
        if unc is not None:
            sigma = {f: _sigma_from_result(unc, f, (pr, pc)) for f in PARAMETERS}
        else:
            top = top_unc[i] if i < len(top_unc) and isinstance(top_unc[i], dict) else {}
            sigma = {f: _number(top.get(f)) for f in PARAMETERS}  # already in display units
        held = _item_value(items, "heldout_rms", name)
        if held is None:
            rv = next((v for v in rviews if v.get("name") == name), None)
            held = _number(rv.get("rms_heldout_px")) if rv else None
        if held is None and i < len(raw_views) and isinstance(raw_views[i], dict):
            held = _rms(raw_views[i].get("heldout_residuals_px"))
        out.append(ViewRecord(name, values, sigma, held, (pr, pc)))
    return out


def _sigma_from_result(unc: dict, name: str, pitch: tuple) -> float | None:
    """1-sigma from a CalibrationResult view's ``uncertainty`` (``*_deg``, ``u0_px``, mm) in display units."""
    if name in _ANGLES:
        return _number(unc.get(f"{name}_deg"))
    if name in _OFFSETS:
        s = _number(unc.get(f"{name}_px"))
        if s is None and _number(unc.get(name)) is not None:
            s = _number(unc.get(name)) / (pitch[1] if name == "u0" else pitch[0])
        return s
    return _number(unc.get(name))


def _rms(residuals) -> float | None:
    try:
        r = np.asarray(residuals, dtype=np.float64).reshape(-1, 2)
    except (TypeError, ValueError):
        return None
    r = r[np.isfinite(r).all(axis=1)]
    return float(np.sqrt(np.mean(np.sum(r**2, axis=1)))) if len(r) else None


# -- tolerance bands --------------------------------------------------------------------------

def _tolerances_of(records: list, given: Tolerances | None) -> Tolerances:
    """The given limits, else the newest report's ``verdict.tolerances``, else the defaults."""
    if given is not None:
        return given
    for r in reversed(records):
        if r.tolerances is not None:
            try:
                return Tolerances.from_dict(r.tolerances, where=f"{r.path}: verdict.tolerances")
            except ValueError as exc:
                warnings.warn(f"{r.path}: its tolerances cannot be read ({exc}); trying an older report",
                              TrendWarning, stacklevel=3)
    return Tolerances.default()


def drift_band(limit: Quantity | None, name: str, pixel_pitch=(1.0, 1.0)) -> float | None:
    """Half-width of the tolerance band of ``name`` in its display unit (mm, deg, px).

    ``pixel_pitch`` ``(row, col)`` in mm converts a ``u0``/``v0`` limit given as a length.
    """
    if limit is None:
        return None
    unit = LABELS[name][1]
    if name in _OFFSETS and limit.dimension == "length":
        return limit.to("mm") / (pixel_pitch[1] if name == "u0" else pixel_pitch[0])
    return limit.to(unit)


def _view_names(records: list) -> list[str]:
    return list(dict.fromkeys(v.name for r in records for v in r.views))


def _bands(records: list, tol: Tolerances) -> dict:
    """View -> parameter -> band (centre = first run with that view, half-width, unit)."""
    out = {}
    for name in _view_names(records):
        first = next(r for r in records if r.view(name) is not None)
        fv = first.view(name)
        out[name] = {}
        for f in PARAMETERS:
            half = drift_band(tol.param("drift", f), f, fv.pixel_pitch)
            c = fv.values[f]
            out[name][f] = {"center": c, "half_width": half, "unit": LABELS[f][1], "baseline": str(first.path),
                            "lower": None if half is None else c - half, "upper": None if half is None else c + half}
    return out


def _outside(value: float, band: dict) -> bool:
    h = band["half_width"]
    return h is not None and abs(value - band["center"]) > h * (1 + 1e-9) + 1e-12


# -- figures ----------------------------------------------------------------------------------

_PASS_COLOR, _FAIL_COLOR, _BAND_COLOR, _OUT_COLOR = "#1f4e9c", "#d01818", "#2e8b2e", "#ff8c00"


def _date_axis(ax, dates: list, label: bool = True) -> None:
    """Dates with the year on every tick (a QA log spans years); times when the runs share a day."""
    import matplotlib.dates as mdates

    span = (max(dates) - min(dates)) if dates else _dt.timedelta(0)
    fmt = ("%Y-%m-%d" if span >= _dt.timedelta(days=2) or span == _dt.timedelta(0) else
           "%m-%d %H:%M" if span >= _dt.timedelta(minutes=30) else "%H:%M:%S")
    # one run: its day and the days either side (an automatic locator would tick hours)
    ax.xaxis.set_major_locator(mdates.DayLocator(tz=_dt.timezone.utc) if span == _dt.timedelta(0) else
                               mdates.AutoDateLocator(minticks=2, maxticks=5))
    ax.xaxis.set_major_formatter(mdates.DateFormatter(fmt, tz=_dt.timezone.utc))
    if dates:
        pad = span * 0.08 if span > _dt.timedelta(0) else _dt.timedelta(days=1)
        ax.set_xlim(min(dates) - pad, max(dates) + pad)
    ax.tick_params(axis="x", labelsize=7, labelrotation=25)
    for t in ax.get_xticklabels():
        t.set_horizontalalignment("right")
    if label:
        ax.set_xlabel("date (UTC)" if fmt == "%Y-%m-%d" else f"time (UTC) on {min(dates):%Y-%m-%d}"
                      + (" and after" if max(dates).date() != min(dates).date() else ""), fontsize=8)


def _legend_handles(with_band: bool, outside_label: str = "outside the tolerance band"):
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    h = [Line2D([], [], marker="o", ls="", color=_PASS_COLOR, label="run: QA PASS"),
         Line2D([], [], marker="s", ls="", color=_FAIL_COLOR, label="run: QA FAIL"),
         Line2D([], [], marker="o", ls="", ms=12, mfc="none", mec=_OUT_COLOR, mew=2,
                label=outside_label)]
    if with_band:
        h += [Patch(color=_BAND_COLOR, alpha=0.18, label="tolerance band: first run ± drift limit"),
              Line2D([], [], color=_BAND_COLOR, ls="--", label="first run (baseline)")]
    return h


def _points(ax, dates, values, sigmas, verdicts, outside) -> None:
    """Markers with 1-sigma error bars: PASS blue circles, FAIL red squares, outside band ringed."""
    ax.plot(dates, values, "-", color="#888888", lw=0.8, zorder=1)
    for fail in (False, True):
        idx = [k for k, v in enumerate(verdicts) if (v == "FAIL") == fail]
        if not idx:
            continue
        err = [sigmas[k] if sigmas[k] is not None else 0.0 for k in idx]
        ax.errorbar([dates[k] for k in idx], [values[k] for k in idx], yerr=err if any(err) else None,
                    fmt="s" if fail else "o", color=_FAIL_COLOR if fail else _PASS_COLOR, ms=5, capsize=3,
                    elinewidth=1, zorder=3)
    ring = [k for k, o in enumerate(outside) if o]
    if ring:
        ax.plot([dates[k] for k in ring], [values[k] for k in ring], "o", ms=12, mfc="none", mec=_OUT_COLOR, mew=2,
                zorder=4)


def _view_figure(records: list, name: str, bands: dict, outside: dict) -> bytes:
    plt = _plt()
    fig, axes = plt.subplots(3, 3, figsize=(12.5, 9.6), dpi=100)
    rows = [r for r in records if r.view(name) is not None]
    dates = [r.date for r in rows]
    order = ("source_to_detector", "source_to_isocenter", "primary_angle", "u0", "v0", "secondary_angle",
             "detector_rotation", "detector_tilt_u", "detector_tilt_v")
    for ax, f in zip(axes.ravel(), order):
        label, unit = LABELS[f]
        vals = [r.view(name).values[f] for r in rows]
        sig = [r.view(name).sigma.get(f) for r in rows]
        band = bands[f]
        if band["half_width"] is not None:
            ax.axhspan(band["lower"], band["upper"], color=_BAND_COLOR, alpha=0.18, lw=0, zorder=0)
        ax.axhline(band["center"], color=_BAND_COLOR, ls="--", lw=1, zorder=0)
        _points(ax, dates, vals, sig, [r.verdict for r in rows], [outside.get((str(r.path), f), False) for r in rows])
        title = f"{label} ({unit})"
        if band["half_width"] is not None:
            title += f"\nband ± {band['half_width']:.3g} {unit}"
        ax.set_title(title, fontsize=9)
        ax.set_ylabel(unit, fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        ax.ticklabel_format(axis="y", useOffset=False, style="plain")
        ax.grid(alpha=0.3)
        _date_axis(ax, dates, label=f in order[6:])
        # keep the band in view, but let a far outlier stretch the axis
        lo = min([*vals, band["lower"] if band["lower"] is not None else band["center"]])
        hi = max([*vals, band["upper"] if band["upper"] is not None else band["center"]])
        s_max = max([s for s in sig if s is not None] or [0.0])
        pad = max((hi - lo) * 0.12, s_max * 1.2, 1e-6 * max(abs(hi), 1.0))
        ax.set_ylim(lo - pad, hi + pad)
    fig.suptitle(f"view {name}: calibrated parameters over {len(rows)} run(s), error bars 1-sigma",
                 fontsize=11)
    fig.legend(handles=_legend_handles(True), loc="lower center", ncol=5, fontsize=8, frameon=False)
    # a fixed layout: tight_layout costs more than drawing the figure
    fig.subplots_adjust(left=0.065, right=0.985, bottom=0.12, top=0.9, wspace=0.25, hspace=0.62)
    return _png(fig)


def _rms_figure(records: list, tol: Tolerances) -> bytes:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.6), dpi=100)
    dates = [r.date for r in records]
    names = _view_names(records)
    colors = ("#7b3fa0", "#8c6d1f", "#0f8b8d", "#c71585", "#556b2f")  # none red (FAIL) or green (band)
    panels = (
        (axes[0], "held-out reprojection RMS", "px", "heldout_rms", [r.heldout_rms_px for r in records]),
        (axes[1], "3D triangulation RMS", "mm", "triangulation_rms", [r.triangulation_rms_mm for r in records]),
    )
    for ax, label, unit, key, vals in panels:
        q = tol.scalar(key)
        lim = None if q is None else q.to(unit)
        if key == "heldout_rms":
            for k, nm in enumerate(names):
                pts = [(r.date, r.view(nm).heldout_rms_px) for r in records
                       if r.view(nm) is not None and r.view(nm).heldout_rms_px is not None]
                if pts:
                    ax.plot(*zip(*pts), "-^", ms=4, lw=1, alpha=0.8, color=colors[k % len(colors)],
                            label=f"view {nm}")
        ok = [(r, v) for r, v in zip(records, vals) if v is not None]
        if ok:
            ax.plot([r.date for r, _ in ok], [v for _, v in ok], "-", color="#444444", lw=1.2,
                    label="all views" if key == "heldout_rms" else None)
            _points(ax, [r.date for r, _ in ok], [v for _, v in ok], [None] * len(ok), [r.verdict for r, _ in ok],
                    [lim is not None and v > lim for _, v in ok])
        unfitted = [r.date for r in records if r.verdict == "FAIL" and not r.views]  # FAIL without numbers
        for k, t in enumerate(unfitted):
            ax.axvline(t, color=_FAIL_COLOR, ls=":", lw=1.2, label="run not fitted (FAIL)" if k == 0 else None)
        if lim is not None:
            ax.axhline(lim, color=_FAIL_COLOR, ls="--", lw=1.2, label=f"limit {lim:g} {unit}")
        top = max([v for v in vals if v is not None] + ([lim] if lim is not None else []) + [1e-9])
        ax.set_ylim(0, top * 1.25)
        ax.set_title(f"{label} ({unit})", fontsize=10)
        ax.set_ylabel(f"{label} ({unit})", fontsize=8)
        ax.grid(alpha=0.3)
        _date_axis(ax, dates)
        handles, _ = ax.get_legend_handles_labels()
        if handles:
            ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"reprojection and triangulation error over {len(records)} run(s)", fontsize=11)
    fig.legend(handles=_legend_handles(False, "above the limit"), loc="lower center", ncol=3,
               fontsize=8, frameon=False)
    fig.subplots_adjust(left=0.06, right=0.985, bottom=0.2, top=0.85, wspace=0.18)
    return _png(fig)


# -- the report -------------------------------------------------------------------------------

def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "view"


def date_label(r: TrendRecord) -> str:
    """``2026-03-01`` for a date without a time, else date and time; ``*`` when not the acquisition date."""
    midnight = r.date.time() == _dt.time(0) and r.date.utcoffset() == _dt.timedelta(0)
    text = r.date.strftime("%Y-%m-%d" if midnight else "%Y-%m-%d %H:%M %Z").strip()
    return text if r.date_source == "acquisition_date" else f"{text} *"


def _fmt(v, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def trend_report(records: list, out_dir, tolerances: Tolerances | None = None) -> Path:
    """Write the trend of past QA runs to ``out_dir``: PNG figures, ``trend.html``, ``trend.json``.

    Parameters
    ----------
    records : list of TrendRecord
        From :func:`collect_reports` (oldest first; re-sorted by date here).
    out_dir : str or Path
        Folder (created if missing); files of the same names are replaced atomically, a
        previous trend's figures that this one does not write are removed.
    tolerances : Tolerances, optional
        Limits for the bands and limit lines; default the newest report's
        ``verdict.tolerances`` (else the built-in defaults).

    Returns
    -------
    Path
        ``trend.html``.

    Raises
    ------
    ValueError
        No records, or ``out_dir`` is a file.
    OSError
        The folder cannot be written.
    """
    records = sorted(records, key=lambda r: (r.date, r.created_utc or "", str(r.path)))
    if not records:
        raise ValueError("no QA report to plot: give folders holding report.json files written by tomoprior "
                         "calibrate or validate")
    tol = _tolerances_of(records, tolerances)
    bands = _bands(records, tol)
    outside, flagged = _outside_bands(records, bands)
    figures = _trend_figures(records, bands, outside, tol)
    notes = ["Every number of this page is in trend.json. Dates marked * are when the report was written "
             "(the report has no acquisition date)."]
    if len(records) == 1:
        notes.insert(0, "Only one report: no trend yet. The band around its values shows where the next runs must "
                        "stay.")
    tables = [("Runs (oldest first)", _run_rows(records, outside, tol))]
    if flagged:
        tables.append(("Values outside their tolerance band (first run ± drift limit)", [
            {"date": x["date_label"], "view": x["view"], "parameter": LABELS[x["parameter"]][0],
             "unit": x["unit"], "value": f"{x['value']:.4f}", "change": Cell(f"{x['change']:+.4g}", "fail"),
             "limit": f"± {x['limit']:.4g}", "report": x["path"]} for x in flagged]))
    numbers = {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION,
        "units": {"length": "mm", "angle": "deg", "u0_v0": "px", "heldout_rms": "px", "triangulation_rms": "mm"},
        "runs": [r.to_dict() for r in records],
        "tolerances": tol.to_dict(), "tolerances_source": tol.source,
        "bands": bands, "outside_band": flagged,
    }
    report = Report(title="tomoprior calibration QA trend", summary=_trend_summary(records, bands, flagged, tol),
                    tables=tables, figures=figures, numbers=numbers, notes=notes,
                    appendix=[("Tolerance bands (first run ± drift limit)", _band_rows(records, bands))],
                    figure_heading="Trends")
    return write_report(report, out_dir, html_name="trend.html", json_name="trend.json")


def _outside_bands(records: list, bands: dict) -> tuple[dict, list[dict]]:
    """Values outside their tolerance band: ``{(view, report path, parameter): True}`` and one
    row per such value (date, view, parameter, value, band centre, change, limit, unit)."""
    outside, flagged = {}, []
    for r in records:
        for v in r.views:
            for f in PARAMETERS:
                if _outside(v.values[f], bands[v.name][f]):
                    outside[(v.name, str(r.path), f)] = True
                    b = bands[v.name][f]
                    flagged.append({"date": r.date.isoformat(), "date_label": date_label(r), "path": str(r.path),
                                    "view": v.name, "parameter": f,
                                    "value": v.values[f], "baseline": b["center"],
                                    "change": v.values[f] - b["center"], "limit": b["half_width"], "unit": b["unit"]})
    return outside, flagged


def _trend_figures(records: list, bands: dict, outside: dict, tol: Tolerances) -> list:
    """One parameter figure per view, then the RMS figure."""
    figures = []
    for i, name in enumerate(bands):
        out_v = {(p, f): True for (vn, p, f) in outside if vn == name}
        figures.append(Figure(f"trend_{i}_{_safe(name)}.png",
                              f"View {name}: each calibrated parameter over time (mm, deg, px), error bars = "
                              "1-sigma of the fit; green band = the first run's value ± the drift limit; red "
                              "squares = runs whose QA failed; orange rings = values outside the band.",
                              _view_figure(records, name, bands[name], out_v)))
    figures.append(Figure("rms_trend.png",
                          "Held-out reprojection RMS (px; overall and per view) and 3D triangulation RMS (mm) over "
                          "time; dashed red line = the QA limit; red squares = runs whose QA failed.",
                          _rms_figure(records, tol)))
    return figures


def _run_rows(records: list, outside: dict, tol: Tolerances) -> list[dict]:
    """The runs table: date, verdict, views, system, RMS values (flagged beyond their QA
    limits), count of values outside their band, report path."""
    held_lim = tol.scalar("heldout_rms")
    tri_lim = tol.scalar("triangulation_rms")
    table = []
    for r in records:
        n_out = sum(1 for (_, p, _) in outside if p == str(r.path))
        held_fail = held_lim is not None and r.heldout_rms_px is not None and r.heldout_rms_px > held_lim.to("px")
        tri_fail = tri_lim is not None and r.triangulation_rms_mm is not None and \
            r.triangulation_rms_mm > tri_lim.to("mm")
        table.append({
            "date": date_label(r),
            "verdict": Cell(r.verdict or "-", None if r.verdict is None else ("pass" if r.verdict == "PASS" else
                                                                              "fail")),
            "views": ", ".join(v.name for v in r.views) or "(not fitted)",
            **({"system": r.system or "-"} if any(x.system for x in records) else {}),
            "held-out RMS (px)": Cell(_fmt(r.heldout_rms_px), "fail" if held_fail else None),
            "triangulation RMS (mm)": Cell(_fmt(r.triangulation_rms_mm), "fail" if tri_fail else None),
            "values outside the band": Cell(n_out, "fail" if n_out else None),
            "report": str(r.path),
        })
    return table


def _band_rows(records: list, bands: dict) -> list[dict]:
    """Appendix rows: each view's parameter band (first run ± limit) and the newest value."""
    band_rows = []
    for name, per in bands.items():
        for f, b in per.items():
            band_rows.append({"view": name, "parameter": f"{LABELS[f][0]}", "unit": b["unit"],
                              "first run": f"{b['center']:.4f}",
                              "± limit": "-" if b["half_width"] is None else f"{b['half_width']:.4g}",
                              "newest": next((f"{r.view(name).values[f]:.4f}" for r in reversed(records)
                                              if r.view(name) is not None), "-")})
    return band_rows


def _trend_summary(records: list, bands: dict, flagged: list, tol: Tolerances) -> list:
    """Summary rows: runs, dates, verdict counts, views, values outside bands, tolerances."""
    held_lim = tol.scalar("heldout_rms")
    tri_lim = tol.scalar("triangulation_rms")
    span = f"{records[0].date:%Y-%m-%d} to {records[-1].date:%Y-%m-%d}"
    summary = [("runs", len(records)), ("dates", span),
               ("QA PASS / FAIL", f"{sum(r.verdict == 'PASS' for r in records)} / "
                                  f"{sum(r.verdict == 'FAIL' for r in records)}"),
               ("views", ", ".join(bands) or "-"),
               ("values outside their tolerance band", len(flagged)),
               ("tolerances from", tol.source),
               ("held-out RMS limit", "-" if held_lim is None else str(held_lim)),
               ("triangulation RMS limit", "-" if tri_lim is None else str(tri_lim))]
    return summary
