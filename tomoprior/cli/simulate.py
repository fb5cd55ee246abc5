"""``tomoprior simulate``: phantom + geometry -> projections, previews and the geometry file.

Failure behaviour: bad options or input files, a job larger than the available memory, a
view that does not see the volume, or an output folder that cannot be written end in a
one-paragraph message and exit code 2, before any heavy work where possible. Outputs are
written into a private staging folder inside ``--out`` and moved into place only when all
of them are complete, so a failure, Ctrl-C or SIGTERM leaves the previous outputs as they
were and no temporary behind; after ``kill -9`` the staging folder left behind is removed
by the next run.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:  # numpy and torch load inside the commands, so `--help` stays fast
    import numpy as np

DEFAULT_PHANTOM = "shepp_logan_3d_modified"
DEFAULT_OUT = "tomoprior-out/simulate"
#: Prefix of the staging folder inside ``--out`` (followed by the pid of its owner).
STAGING_PREFIX = ".simulate-"


class SimulateFailure(click.ClickException):
    """Bad input, a job that cannot run here, or outputs that cannot be written: exit code 2."""

    exit_code = 2


def _load_geometry(path: str | None, binning: int, grid_size: int | None):
    from ..geometry import BiplanarGeometry, Geometry

    if path is None:
        geom = BiplanarGeometry.from_parameters(binning=binning)
    else:
        if binning != 4:
            raise click.BadParameter("--binning applies to the built-in geometry only; omit it with --geometry",
                                     param_hint="--binning")
        try:
            geom = Geometry.load(path)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--geometry") from exc
    if grid_size is not None:
        try:
            geom = geom.with_grid(geom.grid.with_shape((grid_size,) * 3, keep="extent"))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--grid") from exc
    return geom


def _check_views_see_volume(geom) -> None:
    """Every view must see the volume: an empty view cannot be compared with the exact integrals."""
    from ..geometry.geometry import volume_relation

    reasons = {
        "behind_source": "the volume lies behind the source",
        "beyond_detector": "the detector lies between the source and the volume",
        "misses": "the volume's image falls outside the detector",
    }
    for i, view in enumerate(geom.views):
        relation = volume_relation(view, geom.grid)
        if relation in reasons:
            raise SimulateFailure(
                f"view {i} ({view.name or 'unnamed'}): no ray from the source to the detector crosses the volume "
                f"({reasons[relation]}); fix the geometry (source, detector_center) so the volume lies between "
                "the source and the detector")


def _check_job_memory(geom, backend) -> None:
    """The whole job's peak memory, checked before the first stage starts."""
    from .._memory import check_memory

    pixels = sum(r * c for r, c in geom.detector_shapes)
    voxels = geom.grid.num_voxels
    # rasterisation (float64 + float32), the projector's own needs, the exact integrals
    # (float64), float32 copies for the files and their stacked arrays
    need = (12 * voxels + backend.memory_estimate(geom.grid, geom.detector_shapes, 1, 4, adjoint=False)
            + (16 + 16) * pixels)
    (rows, cols), n = geom.detector_shapes[0], geom.num_views
    nz, ny, nx = geom.grid.shape
    check_memory(need, f"simulating {n} view(s) of {rows} x {cols} pixels from a {nz} x {ny} x {nx} grid",
                 "bin the detector (--binning, or fewer pixels in the geometry file) or use a smaller --grid")


def _safe_name(name: str | None, i: int) -> str:
    """A view name usable in a file name (no separators, no dot-files)."""
    text = re.sub(r"[^A-Za-z0-9_-]+", "_", name or f"view{i}").strip("_")[:40]
    return text or f"view{i}"


def _check_disk_space(staging: Path, out: Path, geom, fmt: str) -> None:
    """Refuse before the work when the outputs clearly cannot fit on the disk of ``out``."""
    pixels = sum(r * c for r, c in geom.detector_shapes)
    copies = {"npy": 2, "h5": 2, "both": 4}[fmt]  # projections + analytic, float32 (h5: at worst uncompressed)
    need = copies * 4 * pixels + geom.num_views * 2**20 + 2**16  # previews and text files
    try:
        free = shutil.disk_usage(staging).free
    except OSError:
        return
    if free < need:
        from .._memory import format_bytes

        raise OSError(errno.ENOSPC, f"No space left on device: the outputs need about {format_bytes(need)}, "
                                    f"{format_bytes(free)} is free")


def _remove_stale_staging(out: Path) -> None:
    """Staging folders of runs that died (kill -9, power loss): their pid no longer runs."""
    with contextlib.suppress(OSError):
        for entry in out.iterdir():
            m = re.fullmatch(re.escape(STAGING_PREFIX) + r"(\d+)-\w+", entry.name)
            if not m or not entry.is_dir():
                continue
            pid = int(m.group(1))
            if pid != os.getpid() and not _pid_alive(pid):
                shutil.rmtree(entry, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _prepare_out(out: Path) -> tuple[Path, bool]:
    """Create ``out`` if needed and a staging folder in it: ``(staging, created_out)``.

    Doing this before any work turns a read-only, full or mistyped output folder into an
    immediate, clear error.
    """
    if out.exists() and not out.is_dir():
        raise SimulateFailure(f"--out {out} is a file; give a folder")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        _remove_stale_staging(out)
        staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=out))
    except OSError as exc:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()
        raise SimulateFailure(f"cannot write to --out {out}: {exc.strerror or exc}; choose a writable folder "
                              "(or free space on its disk)") from None
    return staging, created


@contextlib.contextmanager
def _sigterm_as_exit():
    """Turn SIGTERM into SystemExit(143) so clean-up runs (the default handler kills at once)."""
    def handler(signum, frame):
        raise SystemExit(128 + signal.SIGTERM)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _save_npy(path: Path, arr: np.ndarray) -> None:
    import numpy as np

    with open(path, "wb") as fh:
        np.save(fh, arr)
        fh.flush()
        os.fsync(fh.fileno())


def _save_h5(path: Path, projections, analytic, geometry_yaml: str, names) -> None:
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["schema"] = "tomoprior.simulation"
        f.attrs["schema_version"] = 1
        f.attrs["units"] = "line integrals, attenuation x mm"
        f.attrs["geometry_yaml"] = geometry_yaml
        for i, name in enumerate(names):
            g = f.create_group(f"views/{i}")
            g.attrs["name"] = name or f"view{i}"
            g.create_dataset("projection", data=projections[i], compression="gzip", shuffle=True)
            g.create_dataset("analytic", data=analytic[i], compression="gzip", shuffle=True)


def _save_preview(path: Path, image: np.ndarray, title: str, pitch) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    rows, cols = image.shape
    fig, ax = plt.subplots(figsize=(5.2, 5.2 * rows / cols + 0.4), dpi=110)
    extent = (0, cols * pitch[1], rows * pitch[0], 0)
    im = ax.imshow(image, cmap="gray", extent=extent)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("detector u (mm)")
    ax.set_ylabel("detector v (mm)")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="line integral")
    fig.tight_layout()
    try:
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


@click.command()
@click.option("--phantom", default=DEFAULT_PHANTOM, show_default=True,
              help="Phantom name (see `tomoprior info`) or path to a phantom YAML file.")
@click.option("--geometry", "geometry_path", type=click.Path(dir_okay=False), default=None,
              help="Geometry YAML/JSON. Default: the built-in pediatric bi-planar setup.")
@click.option("--binning", default=4, show_default=True, type=click.IntRange(min=1),
              help="Detector binning of the built-in geometry (4: 384 x 384 pixels of 0.8 mm).")
@click.option("--grid", "grid_size", default=None, type=click.IntRange(min=2),
              help="Voxels per axis over the geometry's volume box (default: the geometry's grid, 128).")
@click.option("--backend", default="auto", show_default=True,
              help="Projector backend: auto (numba on CPU, torch on CUDA), numba, torch, reference.")
@click.option("--supersample", default=2, show_default=True, type=click.IntRange(min=1),
              help="Sub-samples per voxel and axis when rasterising the phantom.")
@click.option("--format", "fmt", type=click.Choice(["npy", "h5", "both"]), default="both", show_default=True)
@click.option("--out", "out_dir", default=DEFAULT_OUT, show_default=True, type=click.Path(file_okay=False),
              help="Output folder (created if missing).")
@click.option("--threads", default=None, type=click.IntRange(min=1), help="torch CPU threads (default: torch's).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def simulate(phantom, geometry_path, binning, grid_size, backend, supersample, fmt, out_dir, threads, quiet):
    """Project a phantom through a geometry and check the projector against exact line integrals.

    Writes projections (.npy and/or .h5, views x rows x cols, line integrals in
    attenuation x mm), the exact analytic line integrals, a PNG preview per view, the
    geometry as YAML and a summary.json. All are written to a staging folder first and
    moved into --out together at the end: a failure or an interruption leaves --out as it
    was. Exit code 2 for bad input, a job too large for this machine or an output folder
    that cannot be written.
    """
    import torch

    from ..phantoms import Phantom
    from ..projectors import get_backend

    if threads is not None:
        torch.set_num_threads(threads)
    try:
        ph = Phantom.load(phantom)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--phantom") from exc
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        geom = _load_geometry(geometry_path, binning, grid_size)
    for w in caught:
        click.echo(f"warning: {w.message}", err=True)
    try:
        be = get_backend(backend)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--backend") from exc
    _check_views_see_volume(geom)
    try:
        _check_job_memory(geom, be)
    except ValueError as exc:
        raise SimulateFailure(str(exc)) from None

    out = Path(out_dir)
    with _sigterm_as_exit():
        staging, created = _prepare_out(out)
        try:
            try:
                _check_disk_space(staging, out, geom, fmt)
                cmp, seconds = _simulate_into(staging, out, ph, geom, be, supersample, fmt, quiet)
                _publish(staging, out)
            except OSError as exc:
                reason = exc.strerror or str(exc)
                if exc.errno is None and "requested and" in reason:  # numpy's report of a short write
                    reason = f"No space left on device ({reason})"
                raise SimulateFailure(
                    f"cannot write the outputs to {out}: {reason}; free space or choose another --out "
                    "(nothing was changed there)") from None
            except ValueError as exc:  # too large, overflow, a view that misses the phantom, ...
                raise SimulateFailure(str(exc)) from None
        except BaseException as exc:
            shutil.rmtree(staging, ignore_errors=True)
            if created:
                with contextlib.suppress(OSError):
                    out.rmdir()  # only if empty: never remove anything else
            if isinstance(exc, (SystemExit, KeyboardInterrupt)):
                click.echo(f"simulate: interrupted; {out} is unchanged", err=True)
            raise
        shutil.rmtree(staging, ignore_errors=True)

    click.echo(f"phantom {ph.name} on grid {geom.grid.shape} x {geom.grid.spacing} mm; backend {be.name}")
    click.echo(f"{'view':<10} {'detector':>11} {'pitch mm':>9} {'median rel err':>15} {'p95 rel err':>12}")
    for v, st in zip(geom.views, cmp.per_view):
        click.echo(f"{(v.name or '-'):<10} {v.shape[0]:>5}x{v.shape[1]:<5} {v.pixel_pitch[1]:>9.3f} "
                   f"{st['median_relative_error']:>15.2e} {st['p95_relative_error']:>12.2e}")
    click.echo(f"projection {seconds['project']:.2f} s, rasterisation {seconds['rasterise']:.2f} s, "
               f"analytic {seconds['analytic']:.2f} s")
    click.echo(f"wrote {out}/ (geometry.yaml, projections, previews, summary.json)")


def _simulate_into(staging: Path, out: Path, ph, geom, be, supersample: int, fmt: str, quiet: bool):
    """Run the stages and write every output into ``staging``; ``(comparison, seconds)``."""
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from ..geometry.io import dumps
    from ..projectors import project
    from ..validation import compare_to_analytic

    stages = tqdm(total=4, desc="simulate", disable=quiet, unit="step")
    try:
        t0 = time.perf_counter()
        stages.set_postfix_str("rasterise")
        volume = ph.rasterize(geom.grid, supersample=supersample, dtype=torch.float32)
        t_raster = time.perf_counter() - t0
        stages.update(1)

        stages.set_postfix_str("analytic")
        t0 = time.perf_counter()
        analytic = ph.line_integrals(geom)
        t_analytic = time.perf_counter() - t0
        stages.update(1)

        stages.set_postfix_str(f"project ({be.name})")
        t0 = time.perf_counter()
        with torch.no_grad():
            projected = project(volume, geom, be, progress=not quiet)
        t_project = time.perf_counter() - t0
        cmp = compare_to_analytic(ph, geom, be, volume=volume, analytic=analytic, projections=projected)
        projections = tuple(p.cpu().numpy() for p in _as_views(projected))
        stages.update(1)

        stages.set_postfix_str("write")
        analytic_np = tuple(a.cpu().numpy().astype(np.float32) for a in _as_views(analytic))
        geometry_yaml = dumps(geom, "yaml")
        files = {}
        _write_text(staging / "geometry.yaml", geometry_yaml)
        files["geometry"] = str(out / "geometry.yaml")
        if fmt in ("npy", "both"):
            if geom.uniform_detector:
                _save_npy(staging / "projections.npy", np.stack(projections).astype(np.float32))
                _save_npy(staging / "analytic.npy", np.stack(analytic_np))
                files["projections_npy"] = str(out / "projections.npy")
                files["analytic_npy"] = str(out / "analytic.npy")
            else:
                for i, (p, a) in enumerate(zip(projections, analytic_np)):
                    _save_npy(staging / f"projections_view{i}.npy", p.astype(np.float32))
                    _save_npy(staging / f"analytic_view{i}.npy", a)
                files["projections_npy"] = str(out / "projections_view*.npy")
        if fmt in ("h5", "both"):
            _save_h5(staging / "projections.h5", projections, analytic_np, geometry_yaml, geom.names)
            files["projections_h5"] = str(out / "projections.h5")
        previews = []
        for i, (view, p) in enumerate(zip(geom.views, projections)):
            name = _safe_name(view.name, i)
            png = f"preview_{i}_{name}.png"
            _save_preview(staging / png, p, f"{ph.name}: {name} ({be.name} projector)", view.pixel_pitch)
            previews.append(str(out / png))
        files["previews"] = previews
        seconds = {"rasterise": t_raster, "analytic": t_analytic, "project": t_project}
        summary = {
            "phantom": ph.name,
            "grid": geom.grid.to_dict(),
            "views": [{"name": v.name, "shape": list(v.shape), "pixel_pitch_mm": list(v.pixel_pitch)}
                      for v in geom.views],
            "projector_vs_analytic": cmp.to_dict(),
            "seconds": seconds,
            "files": files,
        }
        _write_text(staging / "summary.json", json.dumps(summary, indent=2) + "\n")
        stages.update(1)
    finally:
        stages.close()
    return cmp, seconds


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _publish(staging: Path, out: Path) -> None:
    """Move the complete outputs from ``staging`` into ``out`` (same file system: renames,
    each atomic); summary.json last, so its presence marks a complete set."""
    names = sorted(p.name for p in staging.iterdir())
    names.sort(key=lambda n: n == "summary.json")
    for name in names:
        target = out / name
        if target.is_dir():
            raise OSError(errno.EISDIR, f"{target} is a folder in the way of an output file")
        os.replace(staging / name, target)


def _as_views(x):
    import torch

    return tuple(x) if isinstance(x, torch.Tensor) else x

