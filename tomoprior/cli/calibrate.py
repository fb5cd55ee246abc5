"""``tomoprior calibrate``: calibrate a bi-planar geometry from two radiographs of a bead phantom,
judge it against QA tolerances and write a report a physicist can sign."""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import click

from .qa_common import (
    EXIT_CODES_HELP,
    QAFailed,
    check_output_folder,
    load_qa_inputs,
    qa_options,
    signoff_options,
    terminable,
    write_qa_report,
)
from .validate import PipelineFailure

DEFAULT_OUT = "tomoprior-out/calibrate"


def _per_view(text: str | None, n: int, flag: str, unit: str, *, positive: bool = False) -> list | None:
    """``"1500"`` or ``"1500,1480"`` -> one float per view (None when the flag is absent)."""
    if text is None:
        return None
    parts = [t.strip() for t in str(text).split(",")]
    try:
        vals = [float(t) for t in parts]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a number or a comma-separated list of {n} numbers ({unit})",
                                 param_hint=flag) from None
    if len(vals) == 1:
        vals = vals * n
    if len(vals) != n:
        raise click.BadParameter(f"give one value for both views or {n} comma-separated values, got {len(vals)}",
                                 param_hint=flag)
    for v in vals:
        if not math.isfinite(v) or (positive and v <= 0):
            raise click.BadParameter(f"{v!r} is not a {'positive ' if positive else ''}finite number ({unit})",
                                     param_hint=flag)
    return vals


def initial_geometry(radiographs, initial_path: str | None, names, overrides: dict | None = None):
    """The starting geometry and where each part of it came from.

    Order: ``--initial`` file (a geometry with parameters, a parameters-only file or an earlier
    calibration result), else the DICOM attributes, else the built-in pediatric setup binned to
    the image size; then the command-line overrides (``source_to_detector``,
    ``source_to_isocenter``, ``pixel_pitch``, ``primary_angle_deg``, ``secondary_angle_deg``:
    one value per view).

    Returns
    -------
    (BiplanarGeometry, list of str)
        The starting geometry and one line per view saying where its values came from.

    Raises
    ------
    ValueError
        Image shapes that disagree with the geometry's detectors, a DICOM view without its
        positioner angles (and no angle flags), or no usable starting point.
    """
    from ..geometry import BiplanarGeometry
    from ..geometry.parameters import DEFAULT_DETECTOR_SHAPE, default_frontal, default_lateral, read_view_parameters

    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    n = len(radiographs)
    if n != 2:
        raise ValueError(f"two radiographs (frontal, lateral) are expected, got {n}")
    shapes = [r.shape for r in radiographs]
    grid = BiplanarGeometry.from_parameters().grid
    sources = []
    if initial_path is not None:
        params, file_grid, kind = read_view_parameters(initial_path)
        if len(params) != n:
            raise ValueError(f"--initial {initial_path} has {len(params)} view(s) but {n} images were given")
        grid = file_grid or grid
        params = [p.replace(name=nm) for p, nm in zip(params, names)]
        sources = [f"{nm}: --initial {initial_path} ({kind})" for nm in names]
    else:
        params = []
        defaults = [default_frontal(name=names[0]), default_lateral(name=names[1])]
        angle_flags = "primary_angle_deg" in overrides and "secondary_angle_deg" in overrides
        for r, p, nm in zip(radiographs, defaults, names):
            if r.parameters is not None:
                lost = [t for t in r.missing_tags if t.startswith("Positioner")]
                if lost and not angle_flags:
                    raise ValueError(
                        f"{r.path} ({nm}, DICOM {r.modality or ''}) has no {' or '.join(lost)} "
                        "(0018,1510/1511): without them the view would silently start as a frontal view. Give the "
                        "angles with --primary-angles 0,90 --secondary-angles 0,0 (degrees, frontal then lateral) or "
                        "a starting geometry with --initial geometry.yaml"
                    )
                params.append(r.parameters.replace(name=nm))
                sources.append(f"{nm}: DICOM attributes ({'; '.join(r.tags_used)})")
                continue
            rows, cols = r.shape
            full = DEFAULT_DETECTOR_SHAPE
            if "pixel_pitch" in overrides:
                params.append(p.replace(detector_shape=(rows, cols)))
                sources.append(f"{nm}: built-in pediatric setup, {rows} x {cols} pixels")
                continue
            if rows != cols or full[0] % rows or rows > full[0]:
                raise ValueError(
                    f"image {r.path} ({rows} x {cols} pixels) carries no geometry and does not match the built-in "
                    f"{full[0]} x {full[1]} x 0.2 mm panel (or a binning of it); give the pixel pitch with "
                    "--pixel-pitch (mm) and the distances with --source-to-detector/--source-to-isocenter, or a "
                    "starting geometry with --initial geometry.yaml"
                )
            params.append(p.binned(full[0] // rows))
            sources.append(f"{nm}: built-in pediatric setup, binning {full[0] // rows}")
    changed = []
    for key, field in (("source_to_detector", "source_to_detector"), ("source_to_isocenter", "source_to_isocenter"),
                       ("pixel_pitch", "pixel_pitch")):
        if key in overrides:
            params = [p.replace(**{field: v}) for p, v in zip(params, overrides[key])]
            changed.append(key)
    for key, field in (("primary_angle_deg", "primary_angle"), ("secondary_angle_deg", "secondary_angle")):
        if key in overrides:
            params = [p.replace(**{field: math.radians(v)}) for p, v in zip(params, overrides[key])]
            changed.append(field)
    if changed:
        sources = [s + f"; from the command line: {', '.join(changed)}" for s in sources]
    for i, (p, s, r) in enumerate(zip(params, shapes, radiographs)):
        if tuple(p.detector_shape) != tuple(s):
            raise ValueError(f"image {r.path} is {s[0]} x {s[1]} pixels but view {i} ({p.name}) of the starting "
                             f"geometry has a {p.detector_shape[0]} x {p.detector_shape[1]} detector; give matching "
                             "images and geometry")
    for p in params:
        sod, sdd = float(p.source_to_isocenter), float(p.source_to_detector)
        if sod >= sdd:
            raise ValueError(f"view {p.name}: source-to-isocenter {sod:g} mm is not smaller than source-to-detector "
                             f"{sdd:g} mm; check --source-to-isocenter / --source-to-detector")
    return BiplanarGeometry(grid, params), sources


@click.command(epilog=EXIT_CODES_HELP)
@click.option("--images", nargs=2, required=True, type=click.Path(dir_okay=False),
              help="The two radiographs, frontal then lateral: .npy, .png/.tif (16-bit) or DICOM.")
@click.option("--phantom", required=True, help="Bead phantom name (bead_cage, bead_two_ring, bead_helix) or YAML path.")
@click.option("--initial", "initial_path", type=click.Path(dir_okay=False), default=None,
              help="Starting geometry: a geometry YAML with parameters, a parameters-only YAML "
                   "(schema tomoprior.view-parameters) or an earlier calibration result / report.json. "
                   "Default: DICOM attributes, else the built-in setup.")
@click.option("--source-to-detector", "sdd", default=None, metavar="MM[,MM]",
              help="Starting source-to-detector distance in mm (one value, or frontal,lateral).")
@click.option("--source-to-isocenter", "sod", default=None, metavar="MM[,MM]",
              help="Starting source-to-isocenter distance in mm (one value, or frontal,lateral).")
@click.option("--pixel-pitch", "pitch", default=None, metavar="MM[,MM]",
              help="Detector pixel pitch in mm (one value, or frontal,lateral); with it any image size is accepted.")
@click.option("--primary-angles", "primary", default=None, metavar="DEG,DEG",
              help="Positioner primary angles in degrees, frontal,lateral (e.g. 0,90).")
@click.option("--secondary-angles", "secondary", default=None, metavar="DEG,DEG",
              help="Positioner secondary angles in degrees, frontal,lateral (e.g. 0,0).")
@click.option("--out", "out_dir", default=DEFAULT_OUT, show_default=True, type=click.Path(file_okay=False),
              help="Report folder (created if missing).")
@click.option("--kind", type=click.Choice(["raw", "line_integrals"]), default="raw", show_default=True,
              help="raw: pixel values are intensities (beads dark); line_integrals: already -log (beads bright).")
@click.option("--names", nargs=2, default=("frontal", "lateral"), show_default=True, help="View names.")
@click.option("--heldout", default=0.2, show_default=True, type=click.FloatRange(0.0, 0.5),
              help="Fraction of beads held out of the fit.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the held-out bead choice.")
@qa_options
@signoff_options
@click.option("--quiet", is_flag=True, help="Only the summary table, the verdict and the report path.")
@terminable
def calibrate(images, phantom, initial_path, sdd, sod, pitch, primary, secondary, out_dir, kind, names, heldout, seed,
              tolerances_path, baseline_path, pdf, site, system, serial, operator, phantom_serial, acquisition_date,
              kvp, quiet):
    """Calibrate the geometry from two radiographs of a bead phantom, judge it and write a report.

    The starting geometry comes from --initial, else the DICOM attributes (each read as its
    modality's IOD defines it; the report lists the tags used), else the built-in setup; the
    --source-to-detector, --source-to-isocenter, --pixel-pitch and angle flags override it.
    A DICOM view without its positioner angles is refused unless the angle flags are given.

    Writes report.html (self-contained), report.pdf, the PNG figures, report.json (with a
    `verdict` block) and, on PASS, the calibrated geometry.yaml. On FAIL the geometry is
    written as geometry.FAILED.yaml instead (and a geometry.yaml left in the folder by an
    earlier run is removed), so a failed calibration is never picked up as accepted.
    """
    from ..calibration import CalibrationError
    from ..validation.pipeline import PipelineError, format_summary

    t0 = time.perf_counter()

    def progress(stage: str) -> None:
        if not quiet:
            click.echo(f"[{time.perf_counter() - t0:6.1f} s] {stage}", err=True)

    out = Path(out_dir)
    tolerances, baseline = load_qa_inputs(tolerances_path, baseline_path)
    check_output_folder(out)
    overrides = _overrides(sdd, sod, pitch, primary, secondary)
    title = f"tomoprior calibrate: {', '.join(images)}"
    done: dict = {}  # what the pipeline produced before a failure: radiographs, detections
    try:
        outcome, geom0, sources = _run_pipeline(images, names, phantom, initial_path, overrides, (kind, heldout, seed),
                                                (tolerances, baseline), progress, quiet, done)
    except CalibrationError as exc:
        radiographs = done["radiographs"]
        html = write_qa_report(None, out, title, failure=str(exc),
                               images=[r.image for r in radiographs], names=list(names),
                               detections=done.get("detections"), radiographs=radiographs, pdf=pdf,
                               signoff=_signoff(site, system, serial, operator, phantom_serial, acquisition_date, kvp),
                               tolerances=tolerances)
        click.echo(f"QA verdict: FAIL\n  FAIL: {exc}")
        click.echo(f"report: {html}")
        raise QAFailed("the calibration FAILS its QA: " + str(exc).split(". ")[0]) from exc
    except (PipelineError, ValueError, TypeError) as exc:
        raise PipelineFailure(str(exc)) from exc
    outcome.initial_source = sources
    outcome.config = {"images": list(images), "phantom": phantom, "initial": sources, "kind": kind,
                      "heldout": heldout, "seed": seed, "initial_geometry": geom0.to_dict()}
    progress("report")
    html = write_qa_report(outcome, out, title, radiographs=done["radiographs"],
                           pdf=pdf, signoff=_signoff(site, system, serial, operator, phantom_serial,
                                                     acquisition_date, kvp))
    click.echo(format_summary(outcome))
    click.echo(f"report: {html}")
    if not outcome.verdict.passed:
        raise QAFailed(f"the calibration FAILS its QA ({len(outcome.verdict.failed)} item(s)); the geometry was "
                       f"written as {out / 'geometry.FAILED.yaml'}, not as geometry.yaml")


def _overrides(sdd, sod, pitch, primary, secondary) -> dict:
    """The starting-geometry values given on the command line (None where not given), per view."""
    overrides = {
        "source_to_detector": _per_view(sdd, 2, "--source-to-detector", "mm", positive=True),
        "source_to_isocenter": _per_view(sod, 2, "--source-to-isocenter", "mm", positive=True),
        "pixel_pitch": _per_view(pitch, 2, "--pixel-pitch", "mm", positive=True),
        "primary_angle_deg": _per_view(primary, 2, "--primary-angles", "deg"),
        "secondary_angle_deg": _per_view(secondary, 2, "--secondary-angles", "deg"),
    }
    if (overrides["primary_angle_deg"] is None) != (overrides["secondary_angle_deg"] is None):
        raise click.UsageError("give --primary-angles and --secondary-angles together")
    return overrides


def _run_pipeline(images, names, phantom, initial_path, overrides, fit: tuple, qa: tuple, progress, quiet,
                  done: dict):
    """Read the radiographs, build the starting geometry, detect, calibrate and judge:
    ``(outcome, starting geometry, its sources)``. ``fit = (kind, heldout, seed)``, ``qa =
    (tolerances, baseline)``; ``done`` receives ``radiographs`` and ``detections`` as soon as
    they exist, for the failure report."""
    from ..calibration import CalibrationError, bead_design
    from ..phantoms import load as load_phantom
    from ..validation.images import read_radiograph
    from ..validation.pipeline import (
        PipelineError,
        add_checks,
        analyse,
        check_distinct_views,
        detect,
        judge,
        run_calibration,
    )

    kind, heldout, seed = fit
    tolerances, baseline = qa
    progress("read images")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        radiographs = [read_radiograph(p, name=n) for p, n in zip(images, names)]
    done["radiographs"] = radiographs
    for w in caught:
        click.echo(f"warning: {w.message}", err=True)
    ph = load_phantom(phantom)
    design = bead_design(ph)
    geom0, sources = initial_geometry(radiographs, initial_path, names, overrides)
    if not quiet:
        click.echo("starting geometry:\n" + "\n".join(f"  {s}" for s in sources))
    imgs = [r.image for r in radiographs]
    progress("detect")
    try:
        detections = detect(imgs, list(names), design.positions, kind=kind)
    except PipelineError as exc:  # readable images, too few beads: the QA ran and fails
        raise CalibrationError(str(exc)) from exc
    done["detections"] = detections
    check_distinct_views(imgs, detections, list(names), list(images))
    progress("calibrate")
    result = run_calibration(detections, ph, geom0, heldout=heldout, seed=seed)
    progress("validate")
    outcome = analyse(imgs, detections, result, design.positions, list(names), initial=geom0,
                      design_ids=design.ids)
    judge(outcome, tolerances=tolerances, baseline=baseline, detections=detections, phantom=ph, initial=geom0,
          heldout=heldout, seed=seed)
    # the projector check measures the projector, not these images: left out of real-image reports
    add_checks(outcome, analytic_phantom=None)
    return outcome, geom0, sources


def _signoff(site, system, serial, operator, phantom_serial, acquisition_date, kvp) -> dict:
    return {k: v for k, v in {"site": site, "system": system, "serial": serial, "operator": operator,
                              "phantom_serial": phantom_serial, "acquisition_date": acquisition_date,
                              "kvp": kvp}.items() if v is not None}
