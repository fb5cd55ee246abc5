"""What ``tomoprior calibrate`` and ``tomoprior validate`` share: QA options, exit codes,
the output-folder check and the report writer that names the geometry by the verdict."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

import click

EXIT_CODES_HELP = (
    "Exit codes: 0 = the calibration PASSES every QA tolerance (report written, geometry.yaml written); "
    "1 = it ran but FAILS a tolerance or a sanity check (report written with the reasons, the geometry only as "
    "geometry.FAILED.yaml); 2 = bad usage or unreadable input (nothing written)."
)


class QAFailed(click.ClickException):
    """The QA ran and the calibration fails it: exit code 1 (the report says why)."""

    exit_code = 1

    def format_message(self) -> str:
        return self.message


class OutputError(click.ClickException):
    """The output folder cannot be written: exit code 2, nothing left behind."""

    exit_code = 2


def terminable(f):
    """Run a command with SIGTERM/SIGHUP turned into an exception: the report's staging folder
    is removed on the way out, nothing half-written stays, and the exit code is 128 + signal
    (also for Ctrl-C: 130, so an interrupted run never reads as a failed calibration, 1)."""
    import functools
    import signal
    import sys

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        from .._atomic import Terminated, signals_as_exceptions

        try:
            with signals_as_exceptions():
                return f(*args, **kwargs)
        except Terminated as exc:
            click.echo(f"tomoprior: {exc}; no report was written", err=True)
            sys.exit(128 + exc.signum)
        except KeyboardInterrupt:
            # not click's "Aborted!" with exit 1, which would read as a failed calibration
            click.echo("tomoprior: interrupted (SIGINT); no report was written", err=True)
            sys.exit(128 + signal.SIGINT)

    return wrapper


def qa_options(f):
    """``--tolerances``, ``--baseline`` and ``--pdf/--no-pdf``."""
    f = click.option("--pdf/--no-pdf", default=True, show_default=True,
                     help="Also write report.pdf (the same report, for filing).")(f)
    f = click.option("--baseline", "baseline_path", type=click.Path(dir_okay=False), default=None,
                     help="A previous report.json, calibration result or geometry file: per-parameter drift "
                          "with z-scores and a drift check.")(f)
    f = click.option("--tolerances", "tolerances_path", type=click.Path(dir_okay=False), default=None,
                     help="QA tolerance YAML (values with units, e.g. 'heldout_rms: 0.1 px'; see "
                          "docs/calibration_qa.md). Default: the built-in targets.")(f)
    return f


def signoff_options(f):
    """Sign-off fields for the report (DICOM values are used where a flag is absent)."""
    for name, hlp in reversed((
        ("--site", "Site / institution (default: DICOM InstitutionName)."),
        ("--system", "X-ray system (default: DICOM ManufacturerModelName or StationName)."),
        ("--serial", "System serial number (default: DICOM DeviceSerialNumber)."),
        ("--operator", "Who acquired the images (default: DICOM OperatorsName)."),
        ("--phantom-serial", "Serial number of the bead phantom."),
        ("--acquisition-date", "Acquisition date, e.g. 2026-12-02 (default: DICOM AcquisitionDate)."),
        ("--kvp", "Tube voltage in kV (default: DICOM KVP)."),
    )):
        f = click.option(name, default=None, help=hlp)(f)
    return f


def load_qa_inputs(tolerances_path, baseline_path):
    """``(Tolerances, Baseline or None)``; bad files are usage errors (exit 2)."""
    from ..validation import qa

    try:
        tol = qa.Tolerances.load(tolerances_path) if tolerances_path else qa.Tolerances.default()
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--tolerances") from exc
    try:
        base = qa.load_baseline(baseline_path) if baseline_path else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--baseline") from exc
    return tol, base


def check_output_folder(out: Path) -> None:
    """Fail fast (exit 2) when ``out`` cannot hold a report: a file in the way, a parent that
    cannot be created, or a folder without write permission. Creates nothing that stays."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} exists and is a file; give a folder path")
    probe_dir = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    try:
        fd, name = tempfile.mkstemp(prefix=".tomoprior-write-check-", dir=probe_dir)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise OutputError(f"cannot write the report to {out}: {exc.strerror or exc} (in {probe_dir}); choose "
                          "another --out folder") from exc


def write_qa_report(outcome, out: Path, title: str, *, failure: str | None = None, images=None, names=None,
                    detections=None, radiographs=None, pdf: bool = True, signoff: dict | None = None,
                    tolerances=None) -> Path:
    """Write the report folder (atomically) and return the HTML path.

    The calibrated geometry is written as ``geometry.yaml`` on PASS and as
    ``geometry.FAILED.yaml`` on FAIL; the other name is removed if an earlier run left it in
    the folder, so the folder never holds an accepted geometry beside a failing report.
    """
    from ..validation.report import failure_report, outcome_report, pdf_bytes, write_report

    info = _inputs(radiographs, signoff)
    if outcome is None:
        report, extra = failure_report(title, failure or "the calibration failed", images=images, names=names,
                                       detections=detections, inputs=info, tolerances=tolerances)
        passed = False
    else:
        report, extra = outcome_report(outcome, title=title, inputs=info)
        passed = bool(outcome.verdict is None or outcome.verdict.passed)
    if pdf:
        extra["report.pdf"] = pdf_bytes(report)
    try:
        html = write_report(report, out, extra_files=extra)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            why = "the disk is full"
        else:
            why = exc.strerror or str(exc)
        raise OutputError(f"cannot write the report to {out}: {why}; nothing was written (free space or choose "
                          "another --out)") from exc
    stale = out / ("geometry.FAILED.yaml" if passed else "geometry.yaml")
    if ("geometry.yaml" in extra or "geometry.FAILED.yaml" in extra or not passed) and stale.exists():
        with contextlib.suppress(OSError):
            stale.unlink()
    return html


def _inputs(radiographs, signoff: dict | None) -> dict:
    """Input files with SHA-256 and the sign-off fields (flags first, then DICOM values)."""
    files, fields, tags = [], {}, []
    for r in radiographs or []:
        files.append({"view": getattr(r, "name", None), "path": str(r.path), "sha256": getattr(r, "sha256", ""),
                      "modality": getattr(r, "modality", None), "shape": list(r.shape)})
        for k, v in (getattr(r, "signoff", None) or {}).items():
            fields.setdefault(k, v)
        if getattr(r, "tags_used", None):
            tags.append({"path": str(r.path), "tags": list(r.tags_used)})
    fields.update({k: v for k, v in (signoff or {}).items() if v is not None})
    return {"files": files, "signoff": fields, "dicom_tags": tags}
