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

from .._atomic import remove_stale_temporaries, temporary_prefix, write_bytes_atomic, write_text_atomic

__all__ = ["Cell", "Figure", "Report", "failure_report", "outcome_report", "pdf_bytes", "software_versions",
           "write_report"]

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
    banner : dict, optional
        The verdict shown first: ``{"label": "PASS" | "FAIL", "views": {name: label},
        "reasons": [str]}``.
    signoff : list of (label, value)
        Sign-off fields (site, system, operator, ...), shown beside the summary with blank
        signature lines.
    appendix : list of (heading, list of dict)
        Tables shown after the figures under "Appendix".
    """

    title: str
    summary: list = field(default_factory=list)
    tables: list = field(default_factory=list)
    figures: list = field(default_factory=list)
    numbers: dict = field(default_factory=dict)
    texts: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    banner: dict | None = None
    signoff: list = field(default_factory=list)
    appendix: list = field(default_factory=list)
    figure_heading: str = "Figures"


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


@dataclass(frozen=True)
class Cell:
    """A table cell with a state: ``"fail"`` is drawn red, ``"pass"`` green, None plain."""

    value: object
    state: str | None = None

    def __str__(self) -> str:
        return _plain_text(self.value)


def _plain_text(v) -> str:
    """Cell text without HTML escaping (for the PDF)."""
    if isinstance(v, Cell):
        return _plain_text(v.value)
    return html.unescape(_fmt(v))


def _columns(rows: list) -> list:
    cols = list(rows[0].keys())
    for r in rows[1:]:
        cols += [k for k in r if k not in cols]
    return cols


def _table(rows: list) -> str:
    if not rows:
        return "<p><em>(empty)</em></p>"
    cols = _columns(rows)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = []
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            state = v.state if isinstance(v, Cell) else ("fail" if v is False else None)
            text = _fmt(v.value if isinstance(v, Cell) else v)
            classes = {"fail": ["bad"], "pass": ["good"]}.get(state, []) + (["long"] if len(text) > 40 else [])
            cls = f' class="{" ".join(classes)}"' if classes else ""
            cells.append(f"<td{cls}>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<div class='wrap'><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222;
line-height:1.4;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:right}th{background:#f2f2f2}
td:first-child,th:first-child{text-align:left}td.bad{background:#f8c8c8;color:#900;font-weight:bold}
td.good{color:#185c18}th{white-space:normal;vertical-align:bottom}td{white-space:nowrap}
td.long{white-space:normal;min-width:16em;text-align:left}.wrap{overflow-x:auto;max-width:100%}
.banner{padding:.7em 1em;border-radius:6px;font-size:1.15em;margin:.8em 0;border:2px solid}
.banner.pass{background:#e3f4e3;border-color:#2e8b2e;color:#185c18}
.banner.fail{background:#fbe1e1;border-color:#c02020;color:#7a0c0c}
.banner b.big{font-size:1.6em;margin-right:.6em}.banner ul{margin:.4em 0 0 1.2em;padding:0;font-size:.85em}
.chip{display:inline-block;padding:.05em .5em;margin-left:.4em;border-radius:3px;font-size:.8em;color:#fff}
.chip.pass{background:#2e8b2e}.chip.fail{background:#c02020}
.grid{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}.sign td{min-width:12em}
@media print{.wrap{overflow:visible}h2{break-after:avoid}}
figure{margin:1em 0;display:inline-block;max-width:100%}figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:.85em;color:#555;max-width:900px}pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:.8em}
.note{background:#fff6d6;border-left:4px solid #e0b000;padding:.5em .8em}
"""


def render_html(report: Report, numbers: dict, json_name: str = "report.json") -> str:
    """The self-contained HTML page (figures inlined as base64 PNG, no external assets)."""
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(report.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(report.title)}</h1>",
        f"<p>Created {html.escape(numbers.get('created_utc', ''))} with tomoprior "
        f"{html.escape(str(numbers.get('software', {}).get('tomoprior')))}. Lengths in mm, angles in degrees, "
        f"image positions in detector pixels. Every number is also in <code>{html.escape(json_name)}</code>.</p>",
    ]
    if report.banner:
        parts.append(_banner_html(report.banner))
    for note in report.notes:
        parts.append(f"<p class='note'>{html.escape(note)}</p>")
    if report.summary or report.signoff:
        parts.append("<div class='grid'>")
        if report.summary:
            rows = report.summary if isinstance(report.summary[0], dict) else \
                [{"quantity": k, "value": v} for k, v in report.summary]
            parts.append("<div><h2>Summary</h2>" + _table(rows) + "</div>")
        if report.signoff:
            sign = [{"field": k, "value": v} for k, v in report.signoff]
            sign += [{"field": "reviewed by (name, signature)", "value": ""}, {"field": "date", "value": ""}]
            parts.append("<div class='sign'><h2>Sign-off</h2>" + _table(sign) + "</div>")
        parts.append("</div>")
    for heading, rows in report.tables:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts.append(_table(rows))
    if report.figures:
        parts.append(f"<h2>{html.escape(report.figure_heading)}</h2>")
    for fig in report.figures:
        b64 = base64.b64encode(fig.png).decode("ascii")
        parts.append(
            f"<figure><img alt='{html.escape(fig.caption)}' src='data:image/png;base64,{b64}'>"
            f"<figcaption><b>{html.escape(fig.filename)}</b>: {html.escape(fig.caption)}</figcaption></figure>"
        )
    if report.appendix:
        parts.append("<h2 style='border-bottom:3px double #999'>Appendix</h2>")
    for heading, rows in report.appendix:
        parts.append(f"<h3>{html.escape(heading)}</h3>")
        parts.append(_table(rows))
    for heading, text in report.texts:
        parts.append(f"<h3>{html.escape(heading)}</h3><pre>{html.escape(text)}</pre>")
    sw = numbers.get("software", {})
    parts.append("<h2>Software</h2>")
    parts.append(_table([{"package": k, "version": v} for k, v in sw.items()]))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _banner_html(b: dict) -> str:
    label = str(b.get("label", ""))
    cls = "pass" if label == "PASS" else "fail"
    chips = "".join(f"<span class='chip {'pass' if v == 'PASS' else 'fail'}'>{html.escape(str(k))}: "
                    f"{html.escape(str(v))}</span>" for k, v in (b.get("views") or {}).items())
    text = html.escape(str(b.get("text", "")))
    reasons = "".join(f"<li>{html.escape(str(r))}</li>" for r in b.get("reasons") or [])
    return (f"<div class='banner {cls}'><b class='big'>QA {html.escape(label)}</b>{text}{chips}"
            + (f"<ul>{reasons}</ul>" if reasons else "") + "</div>")


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
    numbers["files"] = sorted(names)
    numbers = _jsonable(numbers)
    json_text = json.dumps(numbers, indent=2, allow_nan=False) + "\n"
    html_text = render_html(report, numbers, json_name)

    # a staging folder named like every tomoprior temporary (.NAME.PID-HOST-XXXXXXXX), so
    # one left by a killed run (kill -9) is recognised and removed by the next run
    remove_stale_temporaries(out)
    stage = Path(tempfile.mkdtemp(prefix=temporary_prefix(out), dir=out.parent))
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
            stale = _previous_report_files(out / json_name) - set(names)
            # move file by file (each rename is atomic), the HTML index last
            order = [n for n in names if n != html_name] + [html_name]
            for n in order:
                os.replace(stage / n, out / n)
            stage.rmdir()
            # files the previous report in this folder wrote and this one does not (its figures,
            # a geometry file under the other verdict's name): a reader must not mix two runs
            for n in stale:
                with contextlib.suppress(OSError):
                    (out / n).unlink()
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(stage)
        raise
    return out / html_name


def _previous_report_files(json_path: Path) -> set:
    """Plain file names a previous report recorded in its JSON (figures, extra files)."""
    try:
        old = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    if not isinstance(old, dict):
        return set()
    names = set()
    for key in ("figures", "files"):
        val = old.get(key)
        if isinstance(val, dict):
            names |= {str(k) for k in val}
        elif isinstance(val, list):
            names |= {str(k) for k in val}
    return {n for n in names if Path(n).name == n and not n.startswith(".")}


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


def outcome_report(outcome, title: str = "tomoprior calibration QA report", inputs: dict | None = None):
    """The QA report of a pipeline outcome: see :func:`tomoprior.validation.calibration_report.outcome_report`."""
    from .calibration_report import outcome_report as _outcome_report

    return _outcome_report(outcome, title=title, inputs=inputs)


def failure_report(title: str, reason: str, **kw):
    """The report of a calibration that could not be fitted: see
    :func:`tomoprior.validation.calibration_report.failure_report`."""
    from .calibration_report import failure_report as _failure_report

    return _failure_report(title, reason, **kw)


def pdf_bytes(report: Report) -> bytes:
    """The report as a PDF (matplotlib only): see :func:`tomoprior.validation.pdf.render_pdf`."""
    from .pdf import render_pdf

    return render_pdf(report)


def _result_dict(res) -> dict | None:
    fn = getattr(res, "to_dict", None)
    if fn is None:
        return None
    try:
        return fn()
    except Exception as exc:  # a report must not fail on a result's serialisation
        return {"error": f"to_dict failed: {type(exc).__name__}: {exc}"}
