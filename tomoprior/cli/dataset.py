"""``tomoprior dataset``: make a synthetic skull dataset (``make``) and summarise one (``info``).

Exit codes: 0 success; 1 ``info --verify`` found NaN/inf or invalid entries; 2 bad usage, an
unreadable input or an unwritable output (read-only folder, full disk); 128 + N when
stopped by signal N (SIGINT 130, SIGTERM 143) -- then no output file was written or changed.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import click


class DataError(click.ClickException):
    """Bad usage, unreadable input or unwritable output: message on stderr, exit code 2."""

    exit_code = 2


class BadData(click.ClickException):
    """The command ran but the data fails its check (``info --verify``): exit code 1."""

    exit_code = 1


def interrupted(signum: int, message: str) -> click.exceptions.Exit:
    """Report a stop by signal ``signum`` on stderr; returns the exit (code 128 + signum) to raise."""
    click.echo(f"interrupted by {signal.Signals(signum).name}: {message}", err=True)
    return click.exceptions.Exit(128 + int(signum))


def prepare_output_file(out, what: str = "--out") -> None:
    """Before any work: ``out``'s folder exists and is writable, ``out`` is not a folder, and
    temporaries of ``out`` left by a killed run are removed (noted on stderr)."""
    from .._atomic import check_writable, remove_stale_temporaries

    out = Path(out)
    if out.is_dir():
        raise DataError(f"{what} {out} is a folder; give a file path such as {out / 'data.h5'}")
    try:
        check_writable(out.parent, what=f"{what}")
    except (OSError, ValueError) as exc:
        raise DataError(str(exc)) from exc
    for p, size in remove_stale_temporaries(out):
        shown = f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.0f} kB"
        click.echo(f"note: removed {p.name} ({shown}), a temporary of {out.name} left by an interrupted run",
                   err=True)

VARIANTS_HELP = ("comma-separated variants (default: all of the phantom's: normal, sagittal, metopic, unicoronal, "
                 "bicoronal, lambdoid for the skull)")


@click.group()
def dataset() -> None:
    """Synthetic datasets: procedural pediatric skulls, bi-planar X-rays, exact geometry (HDF5)."""


def _floats(text: str, n: int, hint: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(x) for x in text.split(","))
    except ValueError as exc:
        raise click.BadParameter(f"expected {n} comma-separated numbers, got {text!r}", param_hint=hint) from exc
    if len(vals) != n:
        raise click.BadParameter(f"expected {n} comma-separated numbers, got {text!r}", param_hint=hint)
    return vals


@dataset.command()
@click.option("--n", "n", required=True, type=click.IntRange(min=1), help="Number of samples.")
@click.option("--grid", default=64, show_default=True, type=click.IntRange(min=8), help="Voxels per axis.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output .h5 file (written atomically).")
@click.option("--seed", default=0, show_default=True, type=int, help="Dataset seed (anatomy, ages, split).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="Processes generating samples in parallel (the result does not depend on it).")
@click.option("--engine", type=click.Choice(["pool", "dask"]), default="pool", show_default=True,
              help="Process pool, or Dask (local processes scheduler; shards merged at the end).")
@click.option("--binning", default=12, show_default=True, type=click.IntRange(min=1),
              help="Detector binning of the 1536^2 x 0.2 mm panel (12 -> 128^2 pixels of 2.4 mm).")
@click.option("--variants", default=None, help=VARIANTS_HELP)
@click.option("--phantom", type=click.Choice(["skull", "shepp_logan"]), default="skull", show_default=True)
@click.option("--ages", default="0.0833,2.0", show_default=True, help="Age range in years, 'min,max'.")
@click.option("--kind", type=click.Choice(["line_integrals", "radiograph"]), default="line_integrals",
              show_default=True, help="X-rays as line integrals or raw counts through tomoprior.physics.")
@click.option("--photons", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Radiographs: unattenuated photons per pixel (default physics': 1000).")
@click.option("--heel", "heel_deg", default=None, type=click.FloatRange(min=1, max=30),
              help="Radiographs: anode heel effect with this anode angle in degrees (default: none).")
@click.option("--realism", "realism_text", default="none", show_default=True, metavar="none|realistic|FILE.yaml",
              help="Realistic X-rays: head pose, head motion between the two exposures, a polychromatic beam through "
                   "soft tissue and bone, heel effect, focal-spot and detector blur, scatter and quantum noise, then "
                   "flat-field and -log (docs/data.md). 'none' keeps noise-free line integrals; a YAML file sets each "
                   "effect (keys preset, radiograph, photons_per_mm2, pose, motion, materials).")
@click.option("--perturb", default=None,
              help="Calibration-error augmentation, e.g. 'sdd=5,offset=2,tilt=0.5,rotation=0.5' (mm / deg, "
                   "uniform +-).")
@click.option("--intensity", default=None, help="Intensity augmentation, e.g. 'gain=0.05,offset=0.01,noise=0.01'.")
@click.option("--split", "fractions", default="0.8,0.1,0.1", show_default=True, help="train,val,test fractions.")
@click.option("--compression", type=click.Choice(["gzip", "lzf", "none"]), default="gzip", show_default=True)
@click.option("--append", is_flag=True, help="Append to an existing file (indices and seeds continue).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--skull-anatomy", type=click.Choice(["v1", "v2"]), default="v2", show_default=True,
              help="Model version of the procedural skull: v2, or v1 (the first model, which the PSCT-Net demo "
                   "weights were trained on; docs/skull.md).")
def make(n, grid, out, seed, workers, engine, binning, variants, phantom, ages, kind, photons, heel_deg, realism_text,
         perturb, intensity, fractions, compression, append, quiet, skull_anatomy):
    """Generate N samples into OUT: volume, frontal + lateral X-rays, geometry, labels, provenance."""
    from ..data import (
        DatasetFile,
        GeometryPerturbation,
        IntensityAugmentation,
        Realism,
        generate,
        generate_dask,
        make_specs,
    )

    try:
        realism = Realism.parse(realism_text)
    except (ValueError, TypeError) as exc:
        raise click.BadParameter(str(exc), param_hint="--realism") from exc

    try:
        pert = GeometryPerturbation.parse(perturb) if perturb else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--perturb") from exc
    try:
        inten = None
        if intensity:
            kv = dict(p.split("=", 1) for p in intensity.split(",") if p.strip())
            inten = IntensityAugmentation(**{k.strip(): float(v) for k, v in kv.items()})
    except (ValueError, TypeError) as exc:
        raise click.BadParameter(f"{exc}; use keys gain, offset, noise", param_hint="--intensity") from exc
    physics = {}
    if photons is not None:
        physics["photons_per_pixel"] = photons
    if heel_deg is not None:
        physics["heel"] = heel_deg
    if physics and kind != "radiograph":
        raise click.BadParameter("--photons and --heel apply to --kind radiograph", param_hint="--kind")
    if physics and realism.radiograph is not None:
        raise click.BadParameter("--photons and --heel conflict with the physics of --realism; set the dose and "
                                 "the heel in the realism YAML (photons_per_mm2, radiograph.heel)",
                                 param_hint="--realism")
    start = 0
    if append:
        if engine == "dask":
            raise click.BadParameter("--append works with --engine pool", param_hint="--engine")
        try:
            with DatasetFile(out) as existing:
                start = len(existing)
        except (ValueError, OSError) as exc:
            raise click.BadParameter(str(exc), param_hint="--out") from exc
    prepare_output_file(out)
    if not append and Path(out).exists():
        click.echo(f"note: {out} exists and will be replaced when the new file is complete", err=True)
    try:
        specs = make_specs(
            n, seed=seed, grid=grid, binning=binning, phantom=phantom, kind=kind, perturbation=pert, intensity=inten,
            variants=[v.strip() for v in variants.split(",")] if variants else None,
            age_range=_floats(ages, 2, "--ages"), fractions=_floats(fractions, 3, "--split"), start=start,
            physics=physics or None, realism=realism, skull_anatomy=skull_anatomy,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    from .._atomic import Terminated, signals_as_exceptions

    t0 = time.perf_counter()
    kept = f"{out} is unchanged" if Path(out).exists() else f"{out} was not written"
    try:
        with signals_as_exceptions():
            if engine == "dask":
                generate_dask(specs, out, scheduler="processes" if workers > 1 else "synchronous",
                              partitions=max(workers, 1) * 2, compression=compression, num_workers=workers)
            else:
                generate(specs, out, workers=workers, mode="a" if append else "w", compression=compression,
                         progress=not quiet)
    except KeyboardInterrupt:
        raise interrupted(signal.SIGINT, f"{kept}; no temporary file left") from None
    except Terminated as exc:
        raise interrupted(exc.signum, f"{kept}; no temporary file left") from None
    except (ValueError, OSError) as exc:
        raise DataError(f"{exc}" if str(out) in str(exc) else f"{out}: {exc}") from exc
    dt = time.perf_counter() - t0
    size = Path(out).stat().st_size
    click.echo(f"wrote {n} samples to {out} in {dt:.1f} s ({n / dt:.2f} samples/s, {size / 1e6:.2f} MB, "
               f"{size / 1e3 / (start + n):.1f} kB per sample)")


@dataset.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--verify", is_flag=True,
              help="Read every chunk of every sample: report NaN/inf values (exit 1) and unreadable or damaged "
                   "chunks (exit 2).")
def info(file, as_json, verify):
    """Summarise a dataset FILE: schema, counts per split and variant, shapes and sizes."""
    from ..data import DatasetFile

    report = None
    try:
        with DatasetFile(file) as ds:
            s = ds.summary()
            if verify:
                report = ds.verify()
    except (ValueError, OSError) as exc:
        raise DataError(str(exc)) from exc
    if report is not None:
        s["verify"] = report
    if as_json:
        click.echo(json.dumps(s, indent=2, default=str))
        _verify_exit(report, file, quiet=True)
        return
    a = s["attrs"]
    click.echo(f"{s['path']}: {s['schema']}, {s['n_samples']} samples, written by tomoprior "
               f"{a.get('tomoprior_version')} ({a.get('created_utc')})")
    click.echo(f"volume {tuple(s['volume_shape'])} float32 ({a.get('volume_units')}); X-rays "
               f"{tuple(s['xray_shape'])} float32 ({a.get('xray_kind')}); compression {a.get('compression')}")
    if s["age_years"]:
        click.echo(f"ages {s['age_years'][0]:.2f}-{s['age_years'][1]:.2f} years")
    click.echo(f"file {s['file_bytes'] / 1e6:.2f} MB, {s['bytes_per_sample'] / 1e3:.1f} kB per sample "
               f"(raw {s['raw_bytes_per_sample'] / 1e3:.1f} kB)")
    click.echo(f"{'variant':<12} {'train':>6} {'val':>6} {'test':>6} {'total':>6}")
    for v, c in sorted(s["per_variant"].items()):
        click.echo(f"{v:<12} {c['train']:>6} {c['val']:>6} {c['test']:>6} {sum(c.values()):>6}")
    p = s["per_split"]
    click.echo(f"{'all':<12} {p['train']:>6} {p['val']:>6} {p['test']:>6} {s['n_samples']:>6}")
    if report is None:
        click.echo("values not checked (--verify reads every sample and reports NaN, inf and damaged chunks)")
    _verify_exit(report, file, quiet=False)


def _verify_exit(report: dict | None, file, quiet: bool) -> None:
    """Print the verification (unless ``quiet``) and raise the exit it calls for."""
    if report is None:
        return
    if not quiet:
        for r in report["unreadable"]:
            click.echo(f"unreadable: {r['error']}")
        for r in report["nonfinite"]:
            click.echo(f"not finite: sample {r['sample']} /{r['array']}: {r['nan']} NaN, {r['inf']} inf")
        for r in report["invalid"]:
            click.echo(f"invalid: {r['error']}")
        if report["ok"]:
            click.echo(f"verified: read all {report['n_samples']} samples; every value is finite and every entry "
                       "parses")
    if report["unreadable"]:
        raise DataError(f"{file}: {len(report['unreadable'])} chunk(s) or entries cannot be read (damaged file); "
                        "regenerate it or copy it again from a good source")
    if not report["ok"]:
        n = len({r["sample"] for r in report["nonfinite"] + report["invalid"]})
        raise BadData(f"{file}: {n} sample(s) hold NaN/inf values or invalid entries (listed above); "
                      "regenerate them or leave them out")
