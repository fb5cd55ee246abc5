"""``tomoprior check-geometry``: are these X-rays consistent with this geometry?

The epipolar consistency of every pair of views (:func:`tomoprior.validation.epipolar_consistency`)
needs no phantom and no beads: the X-rays of any object and the geometry they are said to be
taken with. Prints per pair the relative RMS residual against a tolerance and a verdict,
writes ``epipolar.json`` (per-plane derivatives and residuals) and ``epipolar_residuals.png``.

Exit codes: 0 every pair within the tolerance (PASS); 1 a pair exceeds it (FAIL; the report is
written); 2 bad usage or unreadable input (nothing written).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import click

from .qa_common import QAFailed

DEFAULT_OUT = "tomoprior-out/check-geometry"
#: Default largest relative RMS residual of a pair. Exact simulated data give 4e-3 to 1e-2
#: (256^2 to 64^2 pixels); 0.5 mm of detector offset across the epipolar lines, 5 mm of
#: source-to-detector distance or 0.5 deg of gantry angulation give 1.6e-2 to 2.3e-2.
#: Real images (noise, scatter, beam hardening) raise the floor: set the tolerance from a
#: known-good acquisition of the system.
DEFAULT_TOLERANCE = 0.02


class CheckGeometryError(click.ClickException):
    """Bad usage or unreadable input: exit code 2, nothing written."""

    exit_code = 2


def _load_geometry(path: str):
    """A Geometry from a geometry file, or from a view-parameters / calibration file."""
    from ..geometry import Geometry, ParametricGeometry, read_view_parameters
    from ..geometry.geometry import DEFAULT_GRID

    try:
        return Geometry.load(path)
    except (ValueError, TypeError, KeyError, OSError) as first:
        try:
            params, grid, _ = read_view_parameters(path)
        except ValueError:
            raise ValueError(f"--geometry {path}: {first}") from first
        return ParametricGeometry.of(grid if grid is not None else DEFAULT_GRID, params)


def _read_images(paths, geom, image_kind, i0, note):

    import numpy as np

    from ..validation.epipolar import line_integral_check
    from .reconstruct import read_view_xrays

    images = []
    for v, (p, view, im) in enumerate(zip(paths, geom.views, read_view_xrays(paths, geom, image_kind, i0, note,
                                                                            hint=" (--xrays A B)"))):
        if tuple(im.shape) != tuple(view.shape):
            raise ValueError(f"{p}: image of {im.shape} pixels, but view {v} ({view.name}) of the geometry has a "
                             f"detector of {tuple(view.shape)} (rows, cols); give the image of that detector, or the "
                             "geometry of this image")
        raw = np.load(p, allow_pickle=False) if Path(p).suffix.lower() == ".npy" else None
        why = line_integral_check(raw if raw is not None and raw.ndim == 2 else im)
        if why is not None and (raw is not None or image_kind == "line-integrals"):
            raise ValueError(f"{p}: these look like intensities, not line integrals: {why}. Epipolar consistency "
                             "needs line integrals (pass a PNG/TIFF of intensities with --image-kind intensity, or "
                             "convert the array)")
        images.append(im.astype(np.float64))
    return np.stack(images) if len({im.shape for im in images}) == 1 else images


def _plot(result, tolerance: float) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    pairs = result.pairs
    fig, axes = plt.subplots(2, len(pairs), figsize=(5.5 * len(pairs), 5.5), squeeze=False, sharex="col")
    try:
        for j, p in enumerate(pairs):
            k = np.degrees(p.kappa.detach().cpu().double().numpy())
            fa = p.derivative_a.detach().cpu().double().numpy()
            fb = p.derivative_b.detach().cpu().double().numpy()
            res = fa - fb
            valid = p.valid.detach().cpu().numpy()
            na, nb = (n if n else f"view {i}" for n, i in zip(p.names, p.views))
            top, bottom = axes[0, j], axes[1, j]
            top.plot(k, fa, lw=1.2, label=f"from {na}")
            top.plot(k, fb, lw=1.2, ls="--", label=f"from {nb}")
            top.set_ylabel("d/drho plane integral")
            top.legend(fontsize=8)
            rel = float(p.relative.detach())
            verdict = "PASS" if rel <= tolerance else "FAIL"
            top.set_title(f"{na} / {nb}: relative RMS {rel:.2e} (tol {tolerance:.2e}) {verdict}", fontsize=9)
            bottom.plot(k[valid], res[valid], ".", ms=3, color="C3", label="residual (valid planes)")
            if (~valid).any():
                bottom.plot(k[~valid], res[~valid], "x", ms=3, color="0.6", label="truncated (not scored)")
            bottom.axhline(0.0, color="k", lw=0.5)
            bottom.set_xlabel("plane angle kappa about the baseline (deg)")
            bottom.set_ylabel("residual")
            bottom.legend(fontsize=8)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, dpi=100, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)


@click.command("check-geometry")
@click.argument("more_xrays", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@click.option("--xrays", "xrays", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="X-ray images in the geometry's view order: --xrays A B (or --xrays A --xrays B).")
@click.option("--geometry", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Geometry YAML/JSON (Geometry.save), view-parameters or calibration file of the X-rays.")
@click.option("--tolerance", default=DEFAULT_TOLERANCE, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Largest relative RMS residual of a pair that passes.")
@click.option("--planes", "n_planes", default=256, show_default=True, type=click.IntRange(min=8),
              help="Epipolar planes per pair.")
@click.option("--smoothing", default=1.5, show_default=True, type=click.FloatRange(min=0),
              help="Gaussian blur (pixels) of the images before the derivative.")
@click.option("--image-kind", type=click.Choice(["auto", "intensity", "line-integrals"]), default="auto",
              show_default=True, help="How pixels are read (auto: .npy line integrals, PNG/TIFF intensities).")
@click.option("--i0", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Open-beam intensity for intensity images [default: each image's maximum].")
@click.option("--out", "out_dir", default=DEFAULT_OUT, show_default=True, type=click.Path(file_okay=False),
              help="Folder for epipolar.json and epipolar_residuals.png.")
def check_geometry(more_xrays, xrays, geometry, tolerance, n_planes, smoothing, image_kind, i0, out_dir):
    """Check that X-rays are consistent with their geometry (epipolar consistency).

    For every pair of views, planes through both X-ray sources are sampled; the derivative of
    the object's plane integral computed from either image must agree. Prints per pair the
    relative RMS residual and the verdict against --tolerance.

    Exit codes: 0 PASS; 1 a pair FAILS the tolerance (report written); 2 bad usage or
    unreadable input, e.g. coincident sources, an image that does not fit its detector, NaN
    pixels, or intensities given as line integrals (nothing written).
    """
    from .._atomic import write_bytes_atomic, write_text_atomic
    from .qa_common import check_output_folder

    def note(msg):
        click.echo(msg, err=True)

    paths = list(xrays) + list(more_xrays)
    if len(paths) < 2:
        raise click.UsageError("give at least two X-rays: --xrays A B")
    out = Path(out_dir)
    try:
        check_output_folder(out)
    except click.ClickException as exc:
        raise CheckGeometryError(exc.message) from exc
    try:
        import torch

        from ..validation.epipolar import epipolar_consistency

        geom = _load_geometry(geometry)
        images = _read_images(paths, geom, image_kind, i0, note)
        with torch.no_grad():
            result = epipolar_consistency(images, geom.detach(), n_planes=n_planes, smoothing=smoothing)
    except (ValueError, TypeError) as exc:
        raise CheckGeometryError(str(exc)) from exc
    failed, unchecked = [], []
    click.echo(f"epipolar consistency of {len(paths)} X-rays with {geometry} ({n_planes} planes per pair)")
    click.echo(f"{'pair':<28} {'valid planes':>12} {'relative RMS':>13}  verdict")
    for p in result.pairs:
        rel = float(p.relative)
        name = " / ".join(n if n else f"view {i}" for n, i in zip(p.names, p.views))
        if p.n_valid == 0:
            status = "UNCHECKED"
            unchecked.append(name)
        elif math.isfinite(rel) and rel <= tolerance:
            status = "PASS"
        else:
            status = "FAIL"
            failed.append(name)
        shown = f"{rel:13.3e}" if math.isfinite(rel) else f"{'n/a':>13}"
        click.echo(f"{name:<28} {p.n_valid:>6}/{p.valid.numel():<5} {shown}  {status}")
        if status == "UNCHECKED":
            note(f"warning: every plane of {name} is truncated (the object leaves a detector along every line); "
                 "nothing could be compared")
    verdict = "FAIL" if failed or unchecked else "PASS"  # what could not be checked does not pass
    doc = {
        "schema": "tomoprior.epipolar-check",
        "schema_version": 1,
        "verdict": verdict,
        "tolerance": tolerance,
        "relative_max": float(result.relative),
        "settings": {"planes": n_planes, "smoothing_px": smoothing, "image_kind": image_kind},
        "inputs": {"xrays": [str(p) for p in paths], "geometry": str(geometry)},
        "unchecked_pairs": unchecked,
        **result.to_dict(per_plane=True),
    }
    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / "epipolar.json", out / "epipolar_residuals.png"
    write_text_atomic(json_path, json.dumps(doc, indent=1, allow_nan=True))
    write_bytes_atomic(png_path, _plot(result, tolerance))
    click.echo(f"verdict: {verdict} (tolerance {tolerance:g} relative RMS)")
    click.echo(f"report: {json_path}, {png_path}")
    if failed or unchecked:
        why = []
        if failed:
            why.append(f"the X-rays are not consistent with the geometry for {', '.join(failed)}: check the "
                       "calibration (or the view order of --xrays)")
        if unchecked:
            why.append(f"consistency could not be checked for {', '.join(unchecked)}: every epipolar plane is "
                       "truncated (the object reaches a detector edge along every line), so there is nothing to "
                       "compare; image an object that lies inside both detectors along some lines")
        raise QAFailed("; ".join(why))
