"""``tomoprior trend``: plot past calibration QA reports over time (PNG + HTML + JSON)."""

from __future__ import annotations

import errno
import warnings
from pathlib import Path

import click

from .qa_common import OutputError, check_output_folder

EXIT_CODES = ("Exit codes: 0 = the trend was written (whatever the runs' verdicts); 2 = bad usage, a path that does "
              "not exist, no readable QA report, an unreadable tolerance file or an output folder that cannot be "
              "written (nothing written).")


class TrendInputError(click.ClickException):
    """No readable report or a bad path: message on stderr, exit code 2."""

    exit_code = 2


@click.command(epilog=EXIT_CODES)
@click.argument("reports", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for trend.html, trend.json and the PNG figures (created if missing; files of the same "
                   "names are replaced atomically).")
@click.option("--tolerances", "tolerances_path", type=click.Path(dir_okay=False), default=None,
              help="QA tolerance YAML for the bands and limit lines (values with units, e.g. "
                   "'drift: {source_to_detector: 2 mm}'). Default: the newest report's own tolerances.")
def trend(reports, out_dir, tolerances_path):
    """Plot each calibrated parameter and the held-out RMS of past QA runs over time.

    REPORTS are folders (searched recursively for report.json) or report.json files written
    by `tomoprior calibrate` or `tomoprior validate`. Runs are ordered by their acquisition
    date (else by when the report was written). Writes, to --out: one figure per view with
    every parameter over time (mm, deg, px; error bars 1-sigma; band = first run +- the drift
    limit), one figure of the held-out reprojection RMS (px) and the 3D triangulation RMS (mm)
    against their limits, trend.html (self-contained) and trend.json. Files that are not QA
    reports are skipped with a warning.
    """
    from ..validation import qa
    from ..validation.trend import TrendWarning, collect_reports, trend_report

    tol = None
    if tolerances_path:
        try:
            tol = qa.Tolerances.load(tolerances_path)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--tolerances") from exc
    check_output_folder(out_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TrendWarning)
        try:
            records = collect_reports(list(reports))
        except ValueError as exc:
            raise TrendInputError(str(exc)) from exc
        for w in caught:
            if issubclass(w.category, TrendWarning):
                click.echo(f"warning: {w.message}", err=True)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        caught.clear()
        if not records:
            raise TrendInputError("no readable tomoprior QA report in " + ", ".join(str(r) for r in reports)
                                  + "; give folders holding report.json files written by tomoprior calibrate or "
                                    "validate")
        try:
            html = trend_report(records, out_dir, tolerances=tol)
        except ValueError as exc:
            raise TrendInputError(str(exc)) from exc
        except OSError as exc:
            why = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
            raise OutputError(f"cannot write the trend to {out_dir}: {why}; nothing was written") from exc
        for w in caught:
            if issubclass(w.category, TrendWarning):
                click.echo(f"warning: {w.message}", err=True)
    click.echo(_table(records))
    click.echo(f"trend: {html}")


def _table(records) -> str:
    """One line per run: date, verdict, held-out RMS (px), triangulation RMS (mm), report path."""
    from ..validation.trend import date_label

    rows = [("date", "verdict", "held-out px", "triang. mm", "report")]
    for r in records:
        rows.append((date_label(r), r.verdict or "-",
                     "-" if r.heldout_rms_px is None else f"{r.heldout_rms_px:.3f}",
                     "-" if r.triangulation_rms_mm is None else f"{r.triangulation_rms_mm:.3f}", str(r.path)))
    widths = [max(len(row[k]) for row in rows) for k in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4] for row in rows]
    if any(r.date_source != "acquisition_date" for r in records):
        lines.append("* no acquisition date in the report: the date it was written")
    return "\n".join(lines)
