"""``tomoprior simulate``: phantom + geometry -> projections, previews and the geometry file."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
import numpy as np
import torch

from .._atomic import atomic_path, write_text_atomic

DEFAULT_PHANTOM = "shepp_logan_3d_modified"
DEFAULT_OUT = "tomoprior-out/simulate"


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
        geom = geom.with_grid(geom.grid.with_shape((grid_size,) * 3, keep="extent"))
    return geom


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        np.save(tmp, arr)


def _save_h5(path: Path, projections, analytic, geometry_yaml: str, names) -> None:
    import h5py

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
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
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
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
              help="Projector backend: auto (numba on CPU when installed, else torch), numba, torch, reference.")
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
    geometry as YAML and a summary.json, all atomically.
    """
    from tqdm.auto import tqdm

    from ..geometry.io import dumps
    from ..phantoms import Phantom
    from ..projectors import get_backend, project
    from ..validation import compare_to_analytic

    if threads is not None:
        torch.set_num_threads(threads)
    try:
        ph = Phantom.load(phantom)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--phantom") from exc
    geom = _load_geometry(geometry_path, binning, grid_size)
    try:
        be = get_backend(backend)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--backend") from exc
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    stages = tqdm(total=4, desc="simulate", disable=quiet, unit="step")
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
    write_text_atomic(out / "geometry.yaml", geometry_yaml)
    files["geometry"] = str(out / "geometry.yaml")
    if fmt in ("npy", "both"):
        if geom.uniform_detector:
            _save_npy(out / "projections.npy", np.stack(projections).astype(np.float32))
            _save_npy(out / "analytic.npy", np.stack(analytic_np))
            files["projections_npy"] = str(out / "projections.npy")
            files["analytic_npy"] = str(out / "analytic.npy")
        else:
            for i, (p, a) in enumerate(zip(projections, analytic_np)):
                _save_npy(out / f"projections_view{i}.npy", p.astype(np.float32))
                _save_npy(out / f"analytic_view{i}.npy", a)
            files["projections_npy"] = str(out / "projections_view*.npy")
    if fmt in ("h5", "both"):
        _save_h5(out / "projections.h5", projections, analytic_np, geometry_yaml, geom.names)
        files["projections_h5"] = str(out / "projections.h5")
    previews = []
    for i, (view, p) in enumerate(zip(geom.views, projections)):
        name = view.name or f"view{i}"
        png = out / f"preview_{i}_{name}.png"
        _save_preview(png, p, f"{ph.name}: {name} ({be.name} projector)", view.pixel_pitch)
        previews.append(str(png))
    files["previews"] = previews
    summary = {
        "phantom": ph.name,
        "grid": geom.grid.to_dict(),
        "views": [{"name": v.name, "shape": list(v.shape), "pixel_pitch_mm": list(v.pixel_pitch)} for v in geom.views],
        "projector_vs_analytic": cmp.to_dict(),
        "seconds": {"rasterise": t_raster, "analytic": t_analytic, "project": t_project},
        "files": files,
    }
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    stages.update(1)
    stages.close()

    click.echo(f"phantom {ph.name} on grid {geom.grid.shape} x {geom.grid.spacing} mm; backend {be.name}")
    click.echo(f"{'view':<10} {'detector':>11} {'pitch mm':>9} {'median rel err':>15} {'p95 rel err':>12}")
    for v, s in zip(geom.views, cmp.per_view):
        click.echo(f"{(v.name or '-'):<10} {v.shape[0]:>5}x{v.shape[1]:<5} {v.pixel_pitch[1]:>9.3f} "
                   f"{s['median_relative_error']:>15.2e} {s['p95_relative_error']:>12.2e}")
    click.echo(f"projection {t_project:.2f} s, rasterisation {t_raster:.2f} s, "
               f"analytic {t_analytic:.2f} s")
    click.echo(f"wrote {out}/ (geometry.yaml, projections, previews, summary.json)")


def _as_views(x):
    return tuple(x) if isinstance(x, torch.Tensor) else x

