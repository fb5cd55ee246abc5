"""The calibration QA report: verdict first, then what a physicist files.

Layout (HTML and PDF alike): a verdict banner with the reason for every failed item; a
one-screen summary (key numbers per view against their limits and the baseline, failing
cells red) beside the sign-off fields; the verdict items; the calibrated parameters (one
row per parameter, one column per view); drift against a baseline; the inputs with their
SHA-256 and the DICOM attributes used; a per-bead table; figures of matched and unmatched
blobs and of the residuals over each radiograph; and an appendix (fit conditioning,
sensitivity, the projector check of simulations, the geometry file, solver details).

Two quantities are both called "principal point" elsewhere and are named apart here: the
**detector offset** ``(u0, v0)`` (where the central ray of the *untilted* detector meets it,
relative to the detector centre: a calibrated parameter) and the **principal point** (the
foot of the perpendicular from the source on the actual, possibly tilted, detector: derived,
:attr:`tomoprior.View.principal_point`).
"""

from __future__ import annotations

import math

import numpy as np

from .report import Cell, Figure, Report, _display, _plt, _png, map_figure, residual_figure, sensitivity_figure

__all__ = ["PARAMETER_LABELS", "failure_report", "outcome_report"]

#: Parameter -> (label for people, display unit).
PARAMETER_LABELS = {
    "source_to_detector": ("source to detector (untilted plane)", "mm"),
    "source_to_isocenter": ("source to isocenter", "mm"),
    "u0": ("detector offset u0 (central ray of the untilted detector, along columns)", "px"),
    "v0": ("detector offset v0 (central ray of the untilted detector, along rows)", "px"),
    "detector_rotation": ("detector in-plane rotation", "deg"),
    "detector_tilt_u": ("detector tilt about its row direction", "deg"),
    "detector_tilt_v": ("detector tilt about its column direction", "deg"),
    "primary_angle": ("gantry primary angle", "deg"),
    "secondary_angle": ("gantry secondary angle", "deg"),
}
_DIGITS = {"mm": 2, "px": 3, "deg": 4}
#: Short labels for the one-screen summary.
_SHORT = {"u0": "detector offset u0 (untilted detector, columns)", "v0": "detector offset v0 (untilted detector, rows)",
          "source_to_detector": "source to detector (untilted)"}


def _num(v, unit: str = "", sign: bool = False) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    d = _DIGITS.get(unit, 3)
    return f"{v:+.{d}f}" if sign else f"{v:.{d}f}"


def _limit_text(item) -> str:
    if item is None:
        return ""
    if isinstance(item.limit, bool):
        return "yes"
    return f"{'≤' if item.comparison == '<=' else '≥'} {item.limit:g}"


def _items_by_key(verdict) -> dict:
    out = {}
    for it in (verdict.items if verdict is not None else []):
        out.setdefault((it.name, it.view), it)
    return out


def _cell(text: str, item) -> Cell:
    return Cell(text, None if item is None else ("pass" if item.passed else "fail"))


def _parameter_value(p, name: str, unit: str) -> float:
    from .qa import parameter_value

    return parameter_value(p, name, unit)


def _sigma(outcome, v: int, name: str) -> float | None:
    unc = (outcome.uncertainty or [])
    return (unc[v] or {}).get(name) if v < len(unc) else None


def _summary_rows(outcome) -> list:
    """One row per key quantity; columns per view, 'both views', limit (cells red on FAIL)."""
    verdict = outcome.verdict
    items = _items_by_key(verdict)
    names = outcome.names
    res = outcome.result
    rows = []

    def row(label, unit, per_view, overall=None, item_name=None, limit_item=None):
        r = {"quantity": label, "unit": unit}
        for v, nm in enumerate(names):
            it = items.get((item_name, nm)) if item_name else None
            r[nm] = _cell(per_view[v] if per_view else "", it)
        it_all = items.get((item_name, None)) if item_name else None
        r["both views"] = _cell(overall or "", it_all)
        lim = limit_item or it_all or next((items.get((item_name, nm)) for nm in names
                                            if items.get((item_name, nm))), None)
        r["limit"] = _limit_text(lim)
        rows.append(r)

    if verdict is not None:
        row("geometry fit converged", "", None, "yes" if res.converged else "NO", "fit_converged")
        if ("view_order", None) in items:
            it = items[("view_order", None)]
            row("images in the right order (frontal, lateral)", "", None, "yes" if it.passed else "NO (swapped?)",
                "view_order")
    n_design = len(outcome.design_positions)
    matched = [int(np.isfinite(m).all(axis=1).sum()) for m in outcome.matched]
    row("design beads matched", "%", [f"{100 * k / n_design:.0f} ({k}/{n_design})" for k in matched], None,
        "beads_matched")
    held = [v.rms_heldout_px for v in outcome.reprojection.views]
    row("held-out reprojection RMS", "px", [_num(h, "px") for h in held], _num(getattr(res, "heldout_rms_px", None),
                                                                               "px"), "heldout_rms")
    row("largest fit residual", "px", [_num(m, "px") for m in getattr(res, "max_px", [None] * len(names))], None,
        "fit_residual_max")
    tri = getattr(res, "triangulation_rms_mm", None)
    if len(names) >= 2:
        row("3D triangulation RMS", "mm", None, "-" if tri is None else f"{tri:.3f}", "triangulation_rms")
    for f in ("source_to_detector", "source_to_isocenter", "u0", "v0", "detector_rotation", "detector_tilt_u",
              "detector_tilt_v", "primary_angle", "secondary_angle"):
        label, unit = PARAMETER_LABELS[f]
        vals = []
        worst = None
        for v, (nm, p) in enumerate(zip(names, outcome.calibrated_parameters)):
            s = _sigma(outcome, v, f)
            vals.append(f"{_num(_parameter_value(p, f, unit), unit)} ± {_num(s, unit)}" if s is not None else
                        _num(_parameter_value(p, f, unit), unit))
            for grp in ("uncertainty", "change_from_start", "error_vs_truth", "drift"):
                it = items.get((f"{grp}.{f}", nm))
                if it is not None and (worst is None or (worst.passed and not it.passed)):
                    worst = it
        r = {"quantity": _SHORT.get(f, label) + " ± 1-sigma", "unit": unit}
        for v, nm in enumerate(names):
            bad = [items.get((f"{g}.{f}", nm)) for g in ("uncertainty", "change_from_start", "error_vs_truth",
                                                          "drift")]
            bad = [b for b in bad if b is not None]
            state = None if not bad else ("fail" if any(not b.passed for b in bad) else "pass")
            r[nm] = Cell(vals[v], state)
        r["both views"] = ""
        unc_item = next((items.get((f"uncertainty.{f}", nm)) for nm in names
                         if items.get((f"uncertainty.{f}", nm))), None)
        r["limit"] = f"1-sigma {_limit_text(unc_item)}" if unc_item else ""
        rows.append(r)
    return rows


def _verdict_rows(verdict, items=None) -> list:
    rows = []
    for it in (verdict.items if items is None else items):
        val = it.value
        if isinstance(val, bool):
            vtxt = "yes" if val else "no"
        elif val is None:
            vtxt = "not measured"
        else:
            vtxt = f"{val:.4g}"
        rows.append({"check": it.name, "view": it.view or "both", "value": vtxt, "unit": it.unit,
                     "limit": _limit_text(it), "result": Cell("PASS" if it.passed else "FAIL",
                                                              "pass" if it.passed else "fail"),
                     "reason": it.reason or ""})
    return rows


def _parameter_rows(outcome) -> list:
    """Calibrated parameters: a row per parameter, value and 1-sigma per view; starting values."""
    rows = []
    names = outcome.names
    initial = list(getattr(outcome.result, "initial_parameters", []) or [])
    for f, (label, unit) in PARAMETER_LABELS.items():
        r = {"parameter": label, "unit": unit}
        for v, (nm, p) in enumerate(zip(names, outcome.calibrated_parameters)):
            r[f"{nm}"] = _num(_parameter_value(p, f, unit), unit)
            r[f"{nm} 1-sigma"] = _num(_sigma(outcome, v, f), unit)
            if v < len(initial):
                r[f"{nm} start"] = _num(_parameter_value(initial[v], f, unit), unit)
        rows.append(r)
    # the derived principal point (foot of the perpendicular from the source), for comparison
    r = {"parameter": "principal point (foot of the perpendicular from the source on the tilted detector), "
                      "offset from the detector centre, col / row", "unit": "px"}
    for nm, p in zip(names, outcome.calibrated_parameters):
        view = p.to_view()
        pp = view.principal_point.detach().double().numpy()
        rows_, cols_ = view.shape
        r[nm] = f"{pp[0] - (cols_ - 1) / 2:+.3f} / {pp[1] - (rows_ - 1) / 2:+.3f}"
        r[f"{nm} 1-sigma"] = ""
    rows.append(r)
    return rows


def _truth_rows(outcome) -> list:
    rows = []
    by = {}
    for t in outcome.parameter_table or []:
        by.setdefault(t["parameter"], {})[t["view"]] = t
    items = _items_by_key(outcome.verdict)
    for f, (label, unit) in PARAMETER_LABELS.items():
        if f not in by:
            continue
        r = {"parameter": label, "unit": unit}
        for nm in outcome.names:
            t = by[f].get(nm)
            if t is None:
                continue
            it = items.get((f"error_vs_truth.{f}", nm))
            r[f"{nm} start error"] = _num(t["nominal_error"], unit, sign=True)
            r[f"{nm} calibrated error"] = _cell(_num(t["error"], unit, sign=True), it)
            r[f"{nm} 1-sigma"] = _num(t["sd"], unit)
        lim = next((items.get((f"error_vs_truth.{f}", nm)) for nm in outcome.names
                    if items.get((f"error_vs_truth.{f}", nm))), None)
        r["limit"] = _limit_text(lim)
        rows.append(r)
    return rows


def _drift_rows(outcome) -> list:
    items = _items_by_key(outcome.verdict)
    rows = []
    for d in outcome.baseline_rows:
        label, _ = PARAMETER_LABELS[d["parameter"]]
        it = items.get((f"drift.{d['parameter']}", d["view"]))
        rows.append({"view": d["view"], "parameter": label, "unit": d["unit"],
                     "now": _num(d["current"], d["unit"]), "baseline": _num(d["baseline"], d["unit"]),
                     "change": _cell(_num(d["delta"], d["unit"], sign=True), it),
                     "z (change / combined 1-sigma)": "-" if d["z"] is None else f"{d['z']:+.2f}",
                     "limit": _limit_text(it)})
    return rows


def _bead_rows(outcome) -> list:
    """Per design bead and view: its role (fit, held out, rejected, not matched) and residual."""
    res = outcome.result
    ids = list(getattr(res, "design_ids", ()) or [f"bead {k}" for k in range(len(outcome.design_positions))])
    fit_ids = [set(x) for x in (getattr(res, "residual_ids", None) or [()] * len(outcome.names))]
    held_ids = [set(x) for x in (getattr(res, "heldout_ids", None) or [()] * len(outcome.names))]
    rej = [set(x) for x in (getattr(res, "rejected_ids", None) or [()] * len(outcome.names))]
    hrej = [set(x) for x in (getattr(res, "heldout_rejected_ids", None) or [()] * len(outcome.names))]
    tri = getattr(res, "triangulation_errors_mm", {}) or {}
    rows = []
    for k, b in enumerate(ids):
        r = {"bead": b}
        for v, nm in enumerate(outcome.names):
            rv = outcome.reprojection.views[v]
            if b in fit_ids[v]:
                role = "fit"
            elif b in held_ids[v]:
                role = "held out"
            elif b in rej[v]:
                role = "rejected (fit outlier)"
            elif b in hrej[v]:
                role = "rejected (held-out mismatch)"
            else:
                role = "not matched"
            length = float(np.hypot(*rv.residuals[k])) if np.isfinite(rv.residuals[k]).all() else None
            r[f"{nm} role"] = Cell(role, "fail" if role.startswith("rejected") else None)
            r[f"{nm} residual px"] = _num(length, "px")
        e = tri.get(b)
        r["triangulation error mm"] = "-" if e is None else f"{e:.3f}"
        rows.append(r)
    return rows


def _input_rows(inputs: dict) -> list:
    rows = []
    for f in inputs.get("files", []):
        rows.append({"file": f["path"], "modality": f.get("modality") or "-",
                     "pixels (rows x cols)": " x ".join(str(x) for x in f.get("shape", [])),
                     "SHA-256": f.get("sha256") or "-"})
    return rows


def blob_figure(images, detections, outcome_or_none, names, *, title: str = "") -> bytes:
    """Matched and unmatched blobs over each radiograph (one panel per view)."""
    plt = _plt()
    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(5.4 * n, 5.8), dpi=100, squeeze=False)
    for v, ax in enumerate(axes[0]):
        img = _display(images[v])
        lo, hi = np.percentile(img, [1, 99.5])
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
        det = np.asarray(getattr(detections[v], "positions", detections[v]) if detections else np.zeros((0, 2)),
                         dtype=np.float64).reshape(-1, 2)
        used = np.zeros(len(det), bool)
        if outcome_or_none is not None:
            out = outcome_or_none
            res = out.result
            ids = list(getattr(res, "design_ids", ()) or [])
            held = set((getattr(res, "heldout_ids", None) or [()] * n)[v])
            m = out.matched[v]
            pred = out.reprojection.views[v].predicted
            for k in range(len(m)):
                if np.isfinite(m[k]).all():
                    d = np.hypot(*(det - m[k]).T) if len(det) else np.array([])
                    if d.size:
                        used[int(np.argmin(d))] = True
            fit_mask = np.array([np.isfinite(m[k]).all() and (ids[k] not in held if ids else True)
                                 for k in range(len(m))])
            held_mask = np.array([np.isfinite(m[k]).all() and bool(ids) and ids[k] in held for k in range(len(m))])
            miss = ~np.isfinite(m).all(axis=1) & np.isfinite(pred).all(axis=1)
            if fit_mask.any():
                ax.plot(m[fit_mask, 0], m[fit_mask, 1], "o", ms=7, mfc="none", mec="#20d020", mew=1.2,
                        label=f"matched, fitted ({int(fit_mask.sum())})")
            if held_mask.any():
                ax.plot(m[held_mask, 0], m[held_mask, 1], "o", ms=7, mfc="none", mec="#30c0ff", mew=1.2,
                        label=f"matched, held out ({int(held_mask.sum())})")
            if miss.any():
                ax.plot(pred[miss, 0], pred[miss, 1], "+", ms=9, color="#ff60ff", mew=1.4,
                        label=f"design bead not matched, predicted ({int(miss.sum())})")
        stray = det[~used]
        if len(stray):
            ax.plot(stray[:, 0], stray[:, 1], "s", ms=8, mfc="none", mec="#ff3030", mew=1.4,
                    label=f"blob not matched to a bead ({len(stray)})")
        rows, cols = np.asarray(images[v]).shape
        ax.set_xlim(-0.5, cols - 0.5)
        ax.set_ylim(rows - 0.5, -0.5)
        ax.set_title(f"{names[v]}: {len(det)} blobs detected", fontsize=9)
        ax.set_xlabel("column (px)")
        ax.set_ylabel("row (px)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right", fontsize=7, framealpha=0.85)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)


def _banner(verdict, shown: int = 6) -> dict:
    reasons = verdict.reasons
    if len(reasons) > shown:
        reasons = [*reasons[:shown], f"... and {len(reasons) - shown} more failed item(s): see 'Failed QA items' below"]
    return {"label": verdict.label, "views": {v: ("PASS" if verdict.view_passed(v) else "FAIL")
                                              for v in verdict.views},
            "reasons": reasons,
            "text": (" every QA item is within its tolerance" if verdict.passed else
                     f" {len(verdict.failed)} QA item(s) fail; the geometry is NOT accepted")}


def _signoff_rows(inputs: dict, phantom: str) -> list:
    s = dict(inputs.get("signoff") or {})
    order = [("site", "site"), ("system", "X-ray system"), ("manufacturer", "manufacturer"),
             ("serial", "system serial number"), ("operator", "operator"), ("acquisition_date", "acquisition date"),
             ("kvp", "tube voltage (kV)"), ("phantom_serial", "phantom serial number")]
    rows = [("phantom", phantom)]
    rows += [(label, s.get(k, "")) for k, label in order]
    return rows


def outcome_report(outcome, title: str = "tomoprior calibration QA report", inputs: dict | None = None
                   ) -> tuple[Report, dict]:
    """Turn a :class:`~tomoprior.validation.pipeline.ValidationOutcome` into the QA report.

    Returns
    -------
    (Report, extra_files)
        ``extra_files`` holds the calibrated geometry as ``geometry.yaml`` when the verdict
        passes (or there is no verdict), else as ``geometry.FAILED.yaml``.
    """
    inputs = inputs or {"files": [], "signoff": {}, "dicom_tags": []}
    verdict = outcome.verdict
    phantom = getattr(outcome.result, "phantom", "") or str(outcome.config.get("phantom", ""))
    tables = _outcome_tables(outcome, inputs)
    figures = _outcome_figures(outcome)
    appendix, figures_app = _outcome_appendix(outcome)
    figures += figures_app
    geometry_name, geometry_yaml = _geometry_file(outcome, passed=verdict is None or verdict.passed)
    numbers = _outcome_numbers(outcome, inputs, phantom, geometry_name, geometry_yaml)
    banner = _banner(verdict) if verdict is not None else None
    report = Report(title=title, summary=_summary_rows(outcome), tables=tables, figures=figures, numbers=numbers,
                    texts=[(f"Calibrated geometry ({geometry_name})", geometry_yaml)],
                    notes=[] if verdict is not None else list(outcome.notes),
                    banner=banner, signoff=_signoff_rows(inputs, phantom), appendix=appendix)
    return report, {geometry_name: geometry_yaml}


def _outcome_tables(outcome, inputs: dict) -> list:
    """The report's main tables: failed items, calibrated parameters, errors against the truth,
    drift against a baseline, reprojection per view, input files, starting geometry."""
    rep, verdict = outcome.reprojection, outcome.verdict
    tables = []
    if verdict is not None and verdict.failed:
        tables.append(("Failed QA items (root causes first)", _verdict_rows(verdict, verdict.failed)))
    tables.append(("Calibrated parameters (value, 1-sigma from the fit, starting value)", _parameter_rows(outcome)))
    if outcome.parameter_table:
        tables.append(("Errors against the TRUE geometry of the simulation (start error = starting - true; "
                       "calibrated error = calibrated - true)", _truth_rows(outcome)))
    if outcome.baseline_rows:
        tables.append((f"Drift against the baseline {getattr(outcome.baseline, 'source', '')}", _drift_rows(outcome)))
    per_view = []
    for i, v in enumerate(rep.views):
        row = {"view": v.name, "beads matched": v.n_detected, "fit + held-out RMS px": _num(v.rms_px, "px"),
               "held-out RMS px": _num(v.rms_heldout_px, "px"), "held-out beads": v.n_heldout,
               "largest px": _num(v.max_px, "px")}
        if outcome.reprojection_nominal is not None:
            row["RMS px, starting geometry"] = _num(outcome.reprojection_nominal.views[i].rms_px, "px")
        if outcome.reprojection_true is not None:
            row["RMS px, true geometry (noise floor)"] = _num(outcome.reprojection_true.views[i].rms_px, "px")
        per_view.append(row)
    tables.append(("Reprojection error per view", per_view))
    inp = _input_rows(inputs)
    if inp:
        tables.append(("Input files", inp))
    start = [{"view": s.split(":", 1)[0], "starting geometry from": s.split(":", 1)[1].strip() if ":" in s else s}
             for s in (outcome.initial_source or [])]
    if start:
        tables.append(("Starting geometry and the DICOM attributes used", start))
    return tables


def _outcome_figures(outcome) -> list:
    """The report's main figures: detected blobs, residual vectors per view, heel effect."""
    rep = outcome.reprojection
    figures = [Figure("blobs.png", "Detected blobs over each radiograph (-log display): green = matched and "
                      "fitted, blue = matched and held out, magenta + = design bead with no blob (predicted "
                      "position), red square = blob matched to no bead.",
                      blob_figure(outcome.images, outcome.detections, outcome, outcome.names))]
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
    return figures


def _calibration_details(outcome) -> list[dict]:
    """Appendix rows: the solver's messages and numbers, the report's own triangulation, timings."""
    res, tri = outcome.result, outcome.triangulation
    details = [
        {"item": "calibration", "value": getattr(res, "message", "")},
        {"item": "solver's own message", "value": getattr(res, "solver_message", "")},
        {"item": "function evaluations", "value": getattr(res, "nfev", None)},
        {"item": "residual sigma per coordinate (px)", "value": _num(getattr(res, "sigma_px", None), "px")},
        {"item": "condition number (column-scaled)", "value": f"{getattr(res, 'condition_number', float('nan')):.3g}"},
        {"item": "outlier limit (px)", "value": _num(getattr(res, "outlier_limit_px", None), "px")},
        {"item": "gauge", "value": getattr(res, "gauge", "")},
    ]
    if tri is not None:
        details.append({"item": "triangulation (report's own, " + ("after rigid alignment to the design)" if
                                                                    tri.aligned else "in the phantom frame)"),
                        "value": f"RMS {tri.rms_mm:.3f} mm, max {tri.max_mm:.3f} mm over {tri.n} beads"})
    for k, v in outcome.timings.items():
        details.append({"item": f"time: {k} (s)", "value": f"{v:.2f}"})
    return details


def _outcome_appendix(outcome) -> tuple[list, list]:
    """The appendix tables (every QA item, beads, calibration details, conditioning,
    sensitivity, projector check) and the appendix figures."""
    verdict = outcome.verdict
    appendix, figures_app = [], []
    details = _calibration_details(outcome)
    if verdict is not None:
        appendix.append(("All QA items (every check, its value and its limit)", _verdict_rows(verdict)))
    appendix.append(("Beads (role in each view, residual length, 3D triangulation error)", _bead_rows(outcome)))
    appendix.append(("Calibration details", details))
    if outcome.conditioning:
        appendix.append((f"Fit conditioning: predicted 1-sigma per view for centroid noise "
                         f"{outcome.conditioning[0]['sigma_px']:.3f} px per axis (phantom frame fixed)", [
            {"view": c["view"], "condition number": f"{c['condition_number']:.3g}",
             "most correlated pair": f"{c['max_abs_correlation'][1]} / {c['max_abs_correlation'][2]}",
             "|correlation|": f"{c['max_abs_correlation'][0]:.3f}",
             **{f"1-sigma {k}": f"{v:.3g}" for k, v in c["predicted_sd"].items()}} for c in outcome.conditioning]))
    if outcome.sensitivity:
        appendix.append(("Sensitivity: mean image displacement over a 150 mm ball for a parameter error",
                         [{"view": r["view"], "parameter": r["parameter"], "error": f"{r['step']:g} {r['unit']}",
                           "mean px": _num(r["mean_px"], "px"), "max px": _num(r["max_px"], "px"),
                           "published px (at this pitch)": _num(r.get("reference_at_pitch_px"), "px")}
                          for r in outcome.sensitivity]))
        figures_app.append(Figure("sensitivity.png", "Mean image displacement per parameter error; dashed lines: "
                                  "published values (0.15 mm pixels) converted to this pixel pitch.",
                                  sensitivity_figure(outcome.sensitivity)))
    if outcome.projector_map is not None:
        table, figure = _projector_check(outcome.projector_map, outcome.names)
        appendix.append(table)
        figures_app.append(figure)
    return appendix, figures_app


def _projector_check(pm: dict, names) -> tuple[tuple, Figure]:
    """Appendix table and figure of the projector against the phantom's exact line integrals."""
    cmp = pm["comparison"]
    target = pm.get("target_median", 0.01)
    table = (f"Projector check: {cmp['backend'].get('name', '')} projector of the rasterised "
             f"{pm['phantom']} ({pm['grid']['shape'][0]}^3 grid, {pm.get('supersample', 2)}^3 sub-samples "
             f"per voxel) against its exact line integrals under the calibrated geometry, rays through "
             f"the head (target: median <= {100 * target:g} %). The 95th percentile is the phantom's "
             "sharp edges resampled on voxels, not the projector.",
             [{"view": s["view"], "median relative error": f"{100 * s['median_relative_error']:.3f} %",
               "95th percentile": f"{100 * s['p95_relative_error']:.2f} %",
               "relative L2": f"{100 * s['relative_l2_error']:.2f} %",
               "meets target": Cell("yes" if s["median_relative_error"] <= target else "NO",
                                    "pass" if s["median_relative_error"] <= target else "fail")}
              for s in cmp["per_view"]])
    err = [p - a for p, a in zip(pm["projected"], pm["analytic"])]
    figure = Figure("projector_error.png",
                    f"Projector minus exact line integrals of {pm['phantom']} under the calibrated "
                    "geometry (coarse detector); the error sits on the phantom's edges.",
                    map_figure(err, names, suptitle="projector - analytic", cmap="RdBu_r",
                               label="line integral error", symmetric=True))
    return table, figure


def _geometry_file(outcome, passed: bool) -> tuple[str, str]:
    """``(file name, YAML text)`` of the calibrated geometry; a failed QA gets a warning header
    and the name ``geometry.FAILED.yaml``."""
    from ..geometry.io import dumps

    geometry_yaml = dumps(outcome.calibrated, "yaml")
    geometry_name = "geometry.yaml" if passed else "geometry.FAILED.yaml"
    if not passed:
        geometry_yaml = ("# FAILED CALIBRATION: this geometry did not pass its QA (see report.html / report.json).\n"
                         "# Do not use it for reconstruction.\n") + geometry_yaml
    return geometry_name, geometry_yaml


def _outcome_numbers(outcome, inputs: dict, phantom: str, geometry_name: str, geometry_yaml: str) -> dict:
    """Everything of the run for ``report.json``: verdict, summary, inputs, configuration, fit
    results and checks, detections, timings."""
    from .report import _result_dict

    rep, tri, res, verdict = outcome.reprojection, outcome.triangulation, outcome.result, outcome.verdict
    pm = outcome.projector_map
    summary_numbers = {
        "views": list(outcome.names),
        "beads_in_design": len(outcome.design_positions),
        "fit_converged": bool(getattr(res, "converged", True)),
        "calibration_message": getattr(res, "message", ""),
        "reprojection_rms_px": rep.rms_px,
        "reprojection_max_px": rep.max_px,
        "fit_rms_px": getattr(res, "rms_px", None),
        "heldout_rms_px": getattr(res, "heldout_rms_px", None),
        "triangulation_rms_mm": getattr(res, "triangulation_rms_mm", None),
        "condition_number": getattr(res, "condition_number", None),
        "sigma_px": getattr(res, "sigma_px", None),
        "starting_geometry_rms_px": (outcome.reprojection_nominal.rms_px
                                     if outcome.reprojection_nominal is not None else None),
        "true_geometry_rms_px": outcome.reprojection_true.rms_px if outcome.reprojection_true is not None else None,
        "geometry_file": geometry_name,
    }
    return {
        "verdict": verdict.to_dict() if verdict is not None else None,
        "summary": summary_numbers,
        "signoff": {"phantom": phantom, **(inputs.get("signoff") or {})},
        "inputs": inputs.get("files", []),
        "dicom_tags": inputs.get("dicom_tags", []),
        "starting_geometry_source": list(outcome.initial_source or []),
        "config": outcome.config,
        "reprojection": rep.to_dict(),
        "reprojection_nominal": (outcome.reprojection_nominal.to_dict(vectors=False)
                                 if outcome.reprojection_nominal else None),
        "reprojection_true": outcome.reprojection_true.to_dict(vectors=False) if outcome.reprojection_true else None,
        "triangulation": tri.to_dict() if tri is not None else None,
        "calibrated_parameters": [p.to_dict() for p in outcome.calibrated_parameters],
        "uncertainty": outcome.uncertainty,
        "parameter_errors": outcome.parameter_table,
        "baseline": None if outcome.baseline is None else {
            "source": outcome.baseline.source, "created_utc": outcome.baseline.created,
            "verdict": outcome.baseline.verdict, "deltas": outcome.baseline_rows},
        "fit_conditioning": outcome.conditioning,
        "sensitivity": outcome.sensitivity,
        "projector_vs_analytic": (None if pm is None else
                                  {k: pm[k] for k in ("phantom", "grid", "comparison", "detector", "supersample",
                                                      "target_median") if k in pm}),
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


def failure_report(title: str, reason: str, *, images=None, names=None, detections=None, inputs=None,
                   tolerances=None) -> tuple[Report, dict]:
    """The report of a calibration that could not be fitted (too few beads found or matched)."""
    inputs = inputs or {"files": [], "signoff": {}, "dicom_tags": []}
    names = list(names or [])
    banner = {"label": "FAIL", "views": {}, "reasons": [reason],
              "text": " the calibration could not be fitted; no geometry was written"}
    figures = []
    if images is not None:
        dets = detections if detections is not None else [np.zeros((0, 2)) for _ in images]
        figures.append(Figure("blobs.png", "Blobs detected over each radiograph (-log display); red squares: "
                              "blobs (none could be matched to enough beads).",
                              blob_figure(images, dets, None, names or [f"view {i}" for i in range(len(images))])))
    counts = [{"view": nm, "blobs detected": len(np.asarray(getattr(d, "positions", d)).reshape(-1, 2))}
              for nm, d in zip(names, detections or [])]
    item = {"name": "calibration_fitted", "view": None, "value": False, "unit": "", "limit": True,
            "comparison": "==", "pass": False, "reason": reason, "group": "sanity"}
    numbers = {
        "verdict": {"verdict": "FAIL", "pass": False, "views": {}, "reasons": [reason], "items": [item],
                    "tolerances": None if tolerances is None else tolerances.to_dict(),
                    "tolerances_source": None if tolerances is None else tolerances.source, "notes": []},
        "summary": {"views": names, "geometry_file": None},
        "signoff": dict(inputs.get("signoff") or {}),
        "inputs": inputs.get("files", []),
        "detections": [np.asarray(getattr(d, "positions", d)).reshape(-1, 2).tolist() for d in (detections or [])],
    }
    tables = []
    if counts:
        tables.append(("Blobs detected", counts))
    inp = _input_rows(inputs)
    if inp:
        tables.append(("Input files", inp))
    report = Report(title=title, tables=tables, figures=figures, numbers=numbers, banner=banner,
                    signoff=_signoff_rows(inputs, ""))
    return report, {}
