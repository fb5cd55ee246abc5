"""Calibration / validation reports: one self-contained HTML file, the PNG figures and a
JSON of every number, written atomically.

The report folder is built in a hidden staging folder beside the target and moved into
place only when every file is complete (``report.html`` last), so an error never leaves a
half-written report and a reader never sees a mix of two runs' figures and numbers.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import html
import importlib.metadata
import io
import json
import math
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._atomic import write_bytes_atomic, write_text_atomic

__all__ = ["Figure", "Report", "outcome_report", "software_versions", "write_report"]

#: Packages whose versions every report records.
VERSIONED = ("tomoprior", "numpy", "scipy", "torch", "matplotlib", "spekpy", "xraylib", "pydicom", "scikit-image")


def software_versions() -> dict:
    """Versions of Python, the platform and the packages a result depends on."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    if out.get("tomoprior") is None:
        from .._version import __version__

        out["tomoprior"] = __version__
    return out


@dataclass
class Figure:
    """A rendered figure: file name (``.png``), caption and PNG bytes."""

    filename: str
    caption: str
    png: bytes


@dataclass
class Report:
    """Everything a report shows.

    Attributes
    ----------
    title : str
    summary : list of (label, value) pairs
        Shown first, as a two-column table.
    tables : list of (heading, list of dict)
        Each list of dict becomes a table (keys = columns, first row's order).
    figures : list of Figure
    numbers : dict
        The JSON document (every number of the run); ``software`` and ``created_utc`` are
        added on writing.
    texts : list of (heading, str)
        Preformatted text sections (e.g. the geometry YAML).
    notes : list of str
        Free-text remarks (e.g. a fit that did not converge).
    """

    title: str
    summary: list = field(default_factory=list)
    tables: list = field(default_factory=list)
    figures: list = field(default_factory=list)
    numbers: dict = field(default_factory=dict)
    texts: list = field(default_factory=list)
    notes: list = field(default_factory=list)


# -- JSON ---------------------------------------------------------------------------------

def _jsonable(x):
    """Plain JSON types; NaN/inf become None (strict JSON has no NaN)."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if hasattr(x, "detach") and hasattr(x, "tolist"):  # torch tensor
        return _jsonable(x.detach().cpu().tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        f = float(x)
        return f if math.isfinite(f) else None
    if x is None or isinstance(x, str):
        return x
    if hasattr(x, "to_dict"):
        return _jsonable(x.to_dict())
    return str(x)


# -- HTML ---------------------------------------------------------------------------------

def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if not math.isfinite(f):
            return "-"
        if f == 0:
            return "0"
        a = abs(f)
        return f"{f:.3g}" if (a < 1e-3 or a >= 1e5) else (f"{f:.4f}" if a < 1 else f"{f:.3f}")
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v)
    return html.escape(str(v))


def _table(rows: list) -> str:
    if not rows:
        return "<p><em>(empty)</em></p>"
    cols = list(rows[0].keys())
    for r in rows[1:]:
        cols += [k for k in r if k not in cols]
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = []
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            cls = ' class="bad"' if v is False else ""
            cells.append(f"<td{cls}>{_fmt(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222;
line-height:1.4;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:right}th{background:#f2f2f2}
td:first-child,th:first-child{text-align:left}td.bad{background:#fdd;font-weight:bold}
figure{margin:1em 0;display:inline-block;max-width:100%}figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:.85em;color:#555;max-width:900px}pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:.8em}
.note{background:#fff6d6;border-left:4px solid #e0b000;padding:.5em .8em}
"""


def render_html(report: Report, numbers: dict) -> str:
    """The self-contained HTML page (figures inlined as base64 PNG, no external assets)."""
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(report.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(report.title)}</h1>",
        f"<p>Created {html.escape(numbers.get('created_utc', ''))} with tomoprior "
        f"{html.escape(str(numbers.get('software', {}).get('tomoprior')))}. Lengths in mm, angles in degrees, "
        "image positions in detector pixels. Every number is also in <code>report.json</code>.</p>",
    ]
    for note in report.notes:
        parts.append(f"<p class='note'>{html.escape(note)}</p>")
    if report.summary:
        parts.append("<h2>Summary</h2>")
        parts.append(_table([{"quantity": k, "value": v} for k, v in report.summary]))
    for heading, rows in report.tables:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts.append(_table(rows))
    if report.figures:
        parts.append("<h2>Figures</h2>")
    for fig in report.figures:
        b64 = base64.b64encode(fig.png).decode("ascii")
        parts.append(
            f"<figure><img alt='{html.escape(fig.caption)}' src='data:image/png;base64,{b64}'>"
            f"<figcaption><b>{html.escape(fig.filename)}</b>: {html.escape(fig.caption)}</figcaption></figure>"
        )
    for heading, text in report.texts:
        parts.append(f"<h2>{html.escape(heading)}</h2><pre>{html.escape(text)}</pre>")
    sw = numbers.get("software", {})
    parts.append("<h2>Software</h2>")
    parts.append(_table([{"package": k, "version": v} for k, v in sw.items()]))
    parts.append("</body></html>\n")
    return "\n".join(parts)


# -- writing ------------------------------------------------------------------------------

def write_report(report: Report, out_dir, *, html_name: str = "report.html", json_name: str = "report.json",
                 extra_files: dict | None = None) -> Path:
    """Write ``report.html`` (self-contained), every figure as PNG and ``report.json``.

    Parameters
    ----------
    report : Report
    out_dir : str or Path
        Target folder (created with its parents if missing). Files of the same names are
        replaced; other files in it are left alone.
    extra_files : dict of str -> str or bytes, optional
        More files to write with the report (e.g. ``{"geometry.yaml": text}``).

    Returns
    -------
    Path
        The HTML file.

    Raises
    ------
    ValueError
        ``out_dir`` exists and is a file, or a file name is not a plain name.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"report folder {out} exists and is a file; give a folder path")
    names = [f.filename for f in report.figures] + list(extra_files or {}) + [html_name, json_name]
    for n in names:
        if Path(n).name != n or n.startswith("."):
            raise ValueError(f"report file name {n!r} must be a plain file name")
    if len(set(names)) != len(names):
        raise ValueError(f"report file names must be unique, got {names}")
    out.parent.mkdir(parents=True, exist_ok=True)
    numbers = dict(report.numbers)
    numbers.setdefault("created_utc", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    numbers.setdefault("software", software_versions())
    numbers["figures"] = {f.filename: f.caption for f in report.figures}
    numbers = _jsonable(numbers)
    json_text = json.dumps(numbers, indent=2, allow_nan=False) + "\n"
    html_text = render_html(report, numbers)

    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        for fig in report.figures:
            write_bytes_atomic(stage / fig.filename, fig.png)
        for name, content in (extra_files or {}).items():
            if isinstance(content, bytes):
                write_bytes_atomic(stage / name, content)
            else:
                write_text_atomic(stage / name, content)
        write_text_atomic(stage / json_name, json_text)
        write_text_atomic(stage / html_name, html_text)
        if not out.exists():
            os.chmod(stage, 0o777 & ~_umask())
            os.replace(stage, out)
        else:
            # move file by file (each rename is atomic), the HTML index last
            order = [n for n in names if n != html_name] + [html_name]
            for n in order:
                os.replace(stage / n, out / n)
            stage.rmdir()
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(stage)
        raise
    return out / html_name


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- figures ------------------------------------------------------------------------------

def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    plt.close(fig)
    return buf.getvalue()


def _nice_scale(values: np.ndarray) -> float:
    """A round reference length near the 90th percentile of ``values`` (> 0)."""
    v = values[np.isfinite(values)]
    ref = float(np.percentile(v, 90)) if v.size else 1.0
    if not ref > 0:
        ref = 1.0
    e = math.floor(math.log10(ref))
    for m in (1, 2, 5, 10):
        if m * 10**e >= ref:
            return m * 10**e
    return 10 ** (e + 1)


def residual_figure(image: np.ndarray, observed: np.ndarray, residuals: np.ndarray, *, title: str,
                    heldout: np.ndarray | None = None, magnify: float | None = None) -> tuple[bytes, float]:
    """Residual vectors (observed - predicted), magnified, over the radiograph.

    Parameters
    ----------
    image : ndarray ``(rows, cols)``
        Display image (e.g. ``-log`` of the normalised counts).
    observed, residuals : ndarray ``(n, 2)``
        ``(col, row)`` of detected beads and residuals in px (NaN rows are skipped).
    heldout : ndarray of bool ``(n,)``, optional
        Held-out beads are drawn in another colour.
    magnify : float, optional
        Arrow magnification; default: the 90th-percentile residual is drawn as 6 % of the width.

    Returns
    -------
    (png bytes, magnification used)
    """
    plt = _plt()
    rows, cols = image.shape
    ok = np.isfinite(observed).all(axis=1) & np.isfinite(residuals).all(axis=1)
    lengths = np.linalg.norm(residuals[ok], axis=1) if ok.any() else np.array([1.0])
    ref = _nice_scale(lengths)
    if magnify is None:
        magnify = 0.06 * cols / ref
    fig, ax = plt.subplots(figsize=(6.0, 6.0 * rows / cols + 0.5), dpi=110)
    lo, hi = np.percentile(image, [1, 99.5])
    ax.imshow(image, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
    held = np.zeros(len(observed), bool) if heldout is None else np.asarray(heldout, bool)
    for mask, color, label in ((ok & ~held, "#ff3030", "fit beads"), (ok & held, "#30c0ff", "held-out beads")):
        if mask.any():
            o, r = observed[mask], residuals[mask] * magnify
            ax.quiver(o[:, 0], o[:, 1], r[:, 0], r[:, 1], angles="xy", scale_units="xy", scale=1.0, color=color,
                      width=0.004, label=label)
            ax.plot(o[:, 0], o[:, 1], "o", ms=3, mfc="none", mec=color)
    # scale bar: a reference residual length, drawn magnified
    x0, y0 = 0.05 * cols, 0.94 * rows
    ax.plot([x0, x0 + ref * magnify], [y0, y0], color="yellow", lw=3)
    ax.text(x0, y0 - 0.02 * rows, f"{ref:g} px residual (arrows x{magnify:.0f})", color="yellow", fontsize=8)
    ax.set_xlim(-0.5, cols - 0.5)
    ax.set_ylim(rows - 0.5, -0.5)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("column (px)")
    ax.set_ylabel("row (px)")
    if ok.any():
        ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    return _png(fig), float(magnify)


def map_figure(maps, titles, *, suptitle: str, cmap: str = "viridis", label: str = "",
               symmetric: bool = False) -> bytes:
    """Side-by-side colour maps of 2D arrays (one per view) with colour bars."""
    plt = _plt()
    n = len(maps)
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 4.4), dpi=100, squeeze=False)
    for ax, m, t in zip(axes[0], maps, titles):
        m = np.asarray(m, dtype=np.float64)
        if symmetric:
            a = float(np.nanpercentile(np.abs(m), 99.5)) or 1.0
            im = ax.imshow(m, cmap=cmap, vmin=-a, vmax=a)
        else:
            im = ax.imshow(m, cmap=cmap)
        ax.set_title(t, fontsize=9)
        ax.set_xlabel("column (px)")
        ax.set_ylabel("row (px)")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=label)
    fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return _png(fig)


def sensitivity_figure(rows: list) -> bytes:
    """Bar chart of the mean image displacement per parameter error (first view's rows)."""
    plt = _plt()
    views = list(dict.fromkeys(r["view"] for r in rows))
    params = list(dict.fromkeys(r["parameter"] for r in rows))
    fig, ax = plt.subplots(figsize=(8, 3.8), dpi=100)
    width = 0.8 / max(len(views), 1)
    x = np.arange(len(params))
    for i, v in enumerate(views):
        vals = [next((r["mean_px"] for r in rows if r["view"] == v and r["parameter"] == p), np.nan) for p in params]
        ax.bar(x + i * width, vals, width, label=v)
    refs = [next((r.get("reference_at_pitch_px") for r in rows if r["parameter"] == p), None) for p in params]
    for xi, ref in zip(x, refs):
        if ref is not None:
            ax.plot([xi - 0.1, xi + 0.8], [ref, ref], "k--", lw=1)
    labels = [f"{p}\n+{next(r['step'] for r in rows if r['parameter'] == p):g} "
              f"{next(r['unit'] for r in rows if r['parameter'] == p)}" for p in params]
    ax.set_xticks(x + 0.4 - width / 2, labels, rotation=60, ha="right", fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("mean displacement (px)")
    ax.set_title("Image displacement over a 150 mm ball per parameter error\n(dashed: published values converted "
                 "from 0.15 mm to this pixel pitch)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


# -- the calibration / validation report of a pipeline run ------------------------------------

def _display(img: np.ndarray) -> np.ndarray:
    """``-log`` of counts normalised by a bright level (for display only)."""
    img = np.asarray(img, dtype=np.float64)
    if img.min() >= 0:
        flat = max(float(np.percentile(img, 99)), 1e-12)
        return -np.log(np.clip(img, 1e-3 * flat, None) / flat)
    return img


def outcome_report(outcome, title: str = "tomoprior calibration and validation report") -> tuple[Report, dict]:
    """Turn a :class:`~tomoprior.validation.pipeline.ValidationOutcome` into a report.

    Returns
    -------
    (Report, extra_files)
        ``extra_files`` holds ``geometry.yaml`` (the calibrated geometry).
    """
    from ..geometry.io import dumps
    from .pipeline import TARGETS

    rep, tri, res = outcome.reprojection, outcome.triangulation, outcome.result
    rms_fit = getattr(res, "rms_px", None)
    rms_held = getattr(res, "heldout_rms_px", None)
    summary = [
        ("views", ", ".join(outcome.names)),
        ("beads in the design", len(outcome.design_positions)),
        ("fit converged", bool(getattr(res, "converged", True))),
        ("calibration message", getattr(res, "message", "")),
        ("reprojection RMS, all matched beads (px)", rep.rms_px),
        ("reprojection max (px)", rep.max_px),
        ("fit RMS reported by calibrate (px)", rms_fit),
        (f"held-out RMS reported by calibrate (px; target <= {TARGETS['heldout_rms_px'][0]})", rms_held),
        ("fit condition number reported by calibrate (column-scaled)", getattr(res, "condition_number", None)),
        ("residual sigma per coordinate reported by calibrate (px)", getattr(res, "sigma_px", None)),
    ]
    if tri is not None:
        summary.append((f"3D triangulation RMS (mm; target <= {TARGETS['triangulation_rms_mm'][0]})"
                        + ("" if not tri.aligned else ", after rigid alignment to the design"), tri.rms_mm))
        summary.append(("3D triangulation max (mm)", tri.max_mm))
    if outcome.reprojection_nominal is not None:
        summary.append(("reprojection RMS with the nominal (starting) geometry (px)",
                        outcome.reprojection_nominal.rms_px))
    if outcome.reprojection_true is not None:
        summary.append(("reprojection RMS with the TRUE geometry: detection noise floor (px)",
                        outcome.reprojection_true.rms_px))
    for k, v in outcome.timings.items():
        summary.append((f"time: {k} (s)", v))

    per_view = []
    for i, v in enumerate(rep.views):
        row = {"view": v.name, "beads matched": v.n_detected, "RMS px": v.rms_px, "mean px": v.mean_px,
               "max px": v.max_px, "held-out RMS px": v.rms_heldout_px, "held-out beads": v.n_heldout}
        if outcome.reprojection_nominal is not None:
            row["RMS px, nominal geometry"] = outcome.reprojection_nominal.views[i].rms_px
        if outcome.reprojection_true is not None:
            row["RMS px, true geometry"] = outcome.reprojection_true.views[i].rms_px
        per_view.append(row)
    params_rows = []
    for i, p in enumerate(outcome.calibrated_parameters):
        d = p.to_dict()
        sd = (outcome.uncertainty or [{}] * len(outcome.calibrated_parameters))[i] or {}
        params_rows.append({
            "view": d["name"], "primary deg": d["primary_angle_deg"], "+-": sd.get("primary_angle"),
            "secondary deg": d["secondary_angle_deg"], "+- ": sd.get("secondary_angle"),
            "source-isocenter mm": d["source_to_isocenter"], "+-  ": sd.get("source_to_isocenter"),
            "source-detector mm": d["source_to_detector"], "+-   ": sd.get("source_to_detector"),
            "u0 mm": d["principal_point"][0], "u0 +- px": sd.get("u0"),
            "v0 mm": d["principal_point"][1], "v0 +- px": sd.get("v0"),
            "rotation deg": d["detector_rotation_deg"], "+-    ": sd.get("detector_rotation"),
            "tilt u deg": d["detector_tilt_deg"][0], "+-     ": sd.get("detector_tilt_u"),
            "tilt v deg": d["detector_tilt_deg"][1], "+-      ": sd.get("detector_tilt_v"),
        })
    tables = [("Reprojection error per view", per_view), ("Calibrated parameters (1-sigma from the fit)", params_rows)]
    if outcome.parameter_table:
        tables.append(("Parameter errors against the TRUE geometry (principal point in px, angles in deg)",
                       outcome.parameter_table))
    if outcome.conditioning:
        tables.append((f"Fit conditioning: predicted 1-sigma of the 9 parameters per view for centroid noise "
                       f"{outcome.conditioning[0]['sigma_px']:.3f} px per axis (phantom frame fixed)", [
            {"view": c["view"], "condition number": c["condition_number"],
             "most correlated pair": f"{c['max_abs_correlation'][1]} / {c['max_abs_correlation'][2]}",
             "|correlation|": c["max_abs_correlation"][0],
             **{f"sd {k}": v for k, v in c["predicted_sd"].items()}} for c in outcome.conditioning]))
    if outcome.sensitivity:
        tables.append(("Sensitivity: image displacement over a 150 mm ball for a parameter error",
                       [{k: r.get(k) for k in ("view", "parameter", "step", "unit", "mean_px", "max_px",
                                               "linear_mean_px", "mean_mm", "reference_px", "reference_at_pitch_px")}
                        for r in outcome.sensitivity]))
    pm = outcome.projector_map
    if pm is not None:
        tables.append((f"Projector vs exact line integrals ({pm['phantom']}, grid {pm['grid']['shape']})",
                       [{"view": s["view"], "median relative error": s["median_relative_error"],
                         "p95 relative error": s["p95_relative_error"], "relative L2": s["relative_l2_error"]}
                        for s in pm["comparison"]["per_view"]]))

    figures = []
    for i, v in enumerate(rep.views):
        png, mag = residual_figure(
            _display(outcome.images[i]), v.observed, v.residuals, heldout=v.heldout,
            title=f"{v.name}: residuals (detected - calibrated projection), RMS {v.rms_px:.3f} px")
        figures.append(Figure(f"residuals_{i}_{v.name}.png",
                              f"Residual vectors of view {v.name} over its radiograph (-log display), "
                              f"magnified x{mag:.0f}; yellow bar: scale. Red: fit beads, blue: held-out.", png))
    if outcome.heel is not None:
        figures.append(Figure("heel_effect.png", "Anode heel effect: relative intensity over each detector "
                              "(1 = no heel effect), as simulated.",
                              map_figure(list(outcome.heel), outcome.names, suptitle="anode heel effect",
                                         label="relative intensity")))
    if pm is not None:
        err = [p - a for p, a in zip(pm["projected"], pm["analytic"])]
        figures.append(Figure("projector_error.png",
                              f"Projector (torch backend, {pm['grid']['shape']} grid) minus exact line integrals of "
                              f"{pm['phantom']} under the calibrated geometry (coarse detector).",
                              map_figure(err, outcome.names, suptitle="projector - analytic", cmap="RdBu_r",
                                         label="line integral error", symmetric=True)))
    if outcome.sensitivity:
        figures.append(Figure("sensitivity.png", "Mean image displacement per parameter error; dashed lines: "
                              "published values (0.15 mm pixels) converted to this pixel pitch.",
                              sensitivity_figure(outcome.sensitivity)))

    geometry_yaml = dumps(outcome.calibrated, "yaml")
    numbers = {
        "summary": dict(summary),
        "config": outcome.config,
        "reprojection": rep.to_dict(),
        "reprojection_nominal": (outcome.reprojection_nominal.to_dict(vectors=False)
                                 if outcome.reprojection_nominal else None),
        "reprojection_true": outcome.reprojection_true.to_dict(vectors=False) if outcome.reprojection_true else None,
        "triangulation": tri.to_dict() if tri is not None else None,
        "calibrated_parameters": [p.to_dict() for p in outcome.calibrated_parameters],
        "uncertainty": outcome.uncertainty,
        "parameter_errors": outcome.parameter_table,
        "targets": {k: {"bound": b, "unit": u} for k, (b, u) in TARGETS.items()},
        "fit_conditioning": outcome.conditioning,
        "sensitivity": outcome.sensitivity,
        "projector_vs_analytic": (None if pm is None else
                                  {k: pm[k] for k in ("phantom", "grid", "comparison", "detector")}),
        "heel_effect": None if outcome.heel is None else {
            "min": float(np.min(outcome.heel)), "max": float(np.max(outcome.heel)),
            "per_view_range": [[float(h.min()), float(h.max())] for h in outcome.heel]},
        "detections": [np.asarray(d).tolist() for d in outcome.detections],
        "design_positions_mm": outcome.design_positions.tolist(),
        "calibration_result": _result_dict(res),
        "timings_s": outcome.timings,
        "notes": outcome.notes,
        "geometry_yaml": geometry_yaml,
    }
    report = Report(title=title, summary=summary, tables=tables, figures=figures, numbers=numbers,
                    texts=[("Calibrated geometry (geometry.yaml)", geometry_yaml)], notes=list(outcome.notes))
    return report, {"geometry.yaml": geometry_yaml}


def _result_dict(res) -> dict | None:
    fn = getattr(res, "to_dict", None)
    if fn is None:
        return None
    try:
        return fn()
    except Exception as exc:  # a report must not fail on a result's serialisation
        return {"error": f"to_dict failed: {type(exc).__name__}: {exc}"}
