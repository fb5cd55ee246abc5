"""``tomoprior calibrate``: calibrate a bi-planar geometry from two radiographs of a bead phantom."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import click

from .validate import PipelineFailure, write_outcome_report

DEFAULT_OUT = "tomoprior-out/calibrate"


def initial_geometry(radiographs, initial_path: str | None, names):
    """The starting geometry: ``--initial`` file, else DICOM attributes, else the built-in setup.

    Raises
    ------
    ValueError
        Image shapes that disagree with the geometry's detectors, or no usable starting point.
    """
    from ..geometry import BiplanarGeometry, Geometry
    from ..geometry.parameters import DEFAULT_DETECTOR_SHAPE, default_frontal, default_lateral

    shapes = [r.shape for r in radiographs]
    if initial_path is not None:
        geom = Geometry.load(initial_path)
        if geom.num_views != len(radiographs):
            raise ValueError(f"--initial {initial_path} has {geom.num_views} view(s) but {len(radiographs)} images "
                             "were given")
        for i, (v, s, r) in enumerate(zip(geom.views, shapes, radiographs)):
            if tuple(v.shape) != tuple(s):
                raise ValueError(f"image {r.path} is {s[0]} x {s[1]} pixels but view {i} ({v.name}) of {initial_path} "
                                 f"has a {v.shape[0]} x {v.shape[1]} detector; give matching images and geometry")
        return geom, f"--initial {initial_path}"
    if all(r.parameters is not None for r in radiographs):
        params = [r.parameters.replace(name=n) for r, n in zip(radiographs, names)]
        return BiplanarGeometry(BiplanarGeometry.from_parameters().grid, params), "DICOM attributes"
    # built-in setup, binned to the image size when it divides the 1536^2 panel
    if len(radiographs) != 2:
        raise ValueError(f"without --initial, two radiographs (frontal, lateral) are expected, got {len(radiographs)}")
    defaults = [default_frontal(name=names[0]), default_lateral(name=names[1])]
    out, sources = [], []
    for r, p in zip(radiographs, defaults):
        rows, cols = r.shape
        full = DEFAULT_DETECTOR_SHAPE
        if r.parameters is not None:
            out.append(r.parameters.replace(name=p.name))
            sources.append(f"{p.name}: DICOM attributes")
            continue
        if rows != cols or full[0] % rows or rows > full[0]:
            raise ValueError(
                f"image {r.path} ({rows} x {cols} pixels) carries no geometry and does not match the built-in "
                f"{full[0]} x {full[1]} x 0.2 mm panel (or a binning of it); give the starting geometry with "
                "--initial geometry.yaml (see `tomoprior simulate` for an example file)"
            )
        out.append(p.binned(full[0] // rows))
        sources.append(f"{p.name}: built-in pediatric setup, binning {full[0] // rows}")
    return BiplanarGeometry(BiplanarGeometry.from_parameters().grid, out), "; ".join(sources)


@click.command()
@click.option("--images", nargs=2, required=True, type=click.Path(dir_okay=False),
              help="The two radiographs (frontal, lateral): .npy, .png/.tif (16-bit) or DICOM.")
@click.option("--phantom", required=True, help="Bead phantom name (bead_cage, bead_two_ring, bead_helix) or YAML path.")
@click.option("--initial", "initial_path", type=click.Path(dir_okay=False), default=None,
              help="Starting geometry (YAML/JSON). Default: DICOM attributes, else the built-in setup.")
@click.option("--out", "out_dir", default=DEFAULT_OUT, show_default=True, type=click.Path(file_okay=False),
              help="Report folder (created if missing).")
@click.option("--kind", type=click.Choice(["raw", "line_integrals"]), default="raw", show_default=True,
              help="raw: pixel values are intensities (beads dark); line_integrals: already -log (beads bright).")
@click.option("--names", nargs=2, default=("frontal", "lateral"), show_default=True, help="View names.")
@click.option("--heldout", default=0.2, show_default=True, type=click.FloatRange(0.0, 0.5),
              help="Fraction of beads held out of the fit.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the held-out bead choice.")
@click.option("--quiet", is_flag=True, help="Only the summary table and the report path.")
def calibrate(images, phantom, initial_path, out_dir, kind, names, heldout, seed, quiet):
    """Calibrate the geometry from two radiographs of a bead phantom and write a report.

    Reads DICOM Distance Source to Detector (0018,1110), Distance Source to Patient
    (0018,1111), Imager Pixel Spacing (0018,1164) and the positioner angles (0018,1510/1511)
    into the starting geometry. Writes report.html (self-contained), the PNG figures,
    report.json and the calibrated geometry.yaml to --out.
    """
    from ..calibration import bead_design
    from ..phantoms import load as load_phantom
    from ..validation.images import read_radiograph
    from ..validation.pipeline import PipelineError, add_checks, analyse, detect, format_summary, run_calibration

    t0 = time.perf_counter()

    def progress(stage: str) -> None:
        if not quiet:
            click.echo(f"[{time.perf_counter() - t0:6.1f} s] {stage}", err=True)

    try:
        progress("read images")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            radiographs = [read_radiograph(p, name=n) for p, n in zip(images, names)]
        for w in caught:
            if not quiet:
                click.echo(f"warning: {w.message}", err=True)
        ph = load_phantom(phantom)
        design = bead_design(ph)
        geom0, source = initial_geometry(radiographs, initial_path, names)
        if not quiet:
            click.echo(f"starting geometry: {source}")
        progress("detect")
        detections = detect([r.image for r in radiographs], list(names), design.positions, kind=kind)
        progress("calibrate")
        result = run_calibration(detections, ph, geom0, heldout=heldout, seed=seed)
        progress("validate")
        outcome = analyse([r.image for r in radiographs], detections, result, design.positions, list(names),
                          initial=geom0, design_ids=design.ids)
        add_checks(outcome)
        outcome.config = {"images": list(images), "phantom": phantom, "initial": source, "kind": kind,
                          "heldout": heldout, "seed": seed, "initial_geometry": geom0.to_dict()}
        progress("report")
        html = write_outcome_report(outcome, Path(out_dir), f"tomoprior calibrate: {', '.join(images)}")
    except (PipelineError, ValueError, TypeError) as exc:
        raise PipelineFailure(str(exc)) from exc
    click.echo(format_summary(outcome))
    click.echo(f"report: {html}")
    if not outcome.converged:
        raise PipelineFailure(f"the calibration did not converge; the best fit is in the report {html}")
