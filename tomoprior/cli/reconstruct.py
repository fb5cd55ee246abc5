"""``tomoprior reconstruct``: X-rays + their geometry + a refiner -> a NIfTI volume and a PNG
of orthogonal slices (see ``docs/training.md``).

Input images, one per view in the geometry's view order:

- ``.npy``: line integrals (attenuation x mm), a 2D float array ``(rows, cols)``, used as is.
- ``.png``, ``.tif``/``.tiff``: transmitted intensities (``--image-kind intensity``, the
  default), converted to line integrals ``p = -ln(max(I, 1e-6 I0) / I0)`` with ``I0`` the
  unattenuated intensity (``--i0``; default: the image's own maximum, i.e. it assumes some
  pixel saw the open beam). RGB(A) images are averaged to grey. With
  ``--image-kind line-integrals`` the pixel values are used as line integrals directly
  (e.g. a 32-bit float TIFF).
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

_IMAGE_SUFFIXES = (".png", ".tif", ".tiff")


def read_xray(path, *, image_kind: str = "auto", i0: float | None = None) -> np.ndarray:
    """One view as line integrals ``(rows, cols)`` float32 from .npy / PNG / TIFF (see module doc).

    ``image_kind``: ``"auto"`` (.npy: line integrals; PNG/TIFF: intensities), ``"intensity"``
    or ``"line-integrals"``; ``i0``: open-beam intensity for intensities (default: the maximum).
    """
    if image_kind not in ("auto", "intensity", "line-integrals"):
        raise ValueError(f"image_kind must be 'auto', 'intensity' or 'line-integrals', got {image_kind!r}")
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
        kind = "line-integrals" if image_kind == "auto" else image_kind
    elif suffix in _IMAGE_SUFFIXES:
        import skimage.io

        arr = skimage.io.imread(str(path))
        if arr.ndim == 3 and arr.shape[-1] in (3, 4):
            arr = arr[..., :3].astype(np.float64).mean(axis=-1)
        kind = "intensity" if image_kind == "auto" else image_kind
    else:
        raise ValueError(f"{path}: unsupported X-ray format {suffix!r}; use .npy (line integrals), .png or .tif")
    arr = np.asarray(arr)
    if arr.ndim != 2:
        raise ValueError(f"{path}: expected a 2D image (rows, cols), got shape {arr.shape}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{path}: contains NaN or infinite values")
    if kind == "intensity":
        ref = float(arr.max()) if i0 is None else float(i0)
        if not ref > 0:
            raise ValueError(f"{path}: the open-beam intensity I0 must be positive (got {ref}); pass --i0")
        arr = -np.log(np.maximum(arr, 1e-6 * ref) / ref)
    return arr.astype(np.float32)


def orthogonal_slices_png(volume: np.ndarray, path, *, title: str = "") -> None:
    """Write the three central orthogonal slices of ``volume (nz, ny, nx)`` side by side
    (axial, coronal, sagittal; LPS array order, so image left = patient right) atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .._atomic import atomic_path

    nz, ny, nx = volume.shape
    vmax = float(np.percentile(volume, 99.9)) or 1.0
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.2))
    for ax, (img, name) in zip(axes, [(volume[nz // 2], "axial (z)"), (volume[:, ny // 2, :], "coronal (y)"),
                                      (volume[:, :, nx // 2], "sagittal (x)")]):
        ax.imshow(img, cmap="gray", vmin=0, vmax=vmax, origin="lower" if name != "axial (z)" else "upper")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


DEMO_HELP = ("Reconstruct the built-in procedural skull phantom instead of files: its two X-rays are simulated "
             "exactly as `tomoprior dataset make --grid 64` makes training data, the refiner (default psctnet) uses "
             "its shipped demo weights, and the metrics against the phantom are printed.")


def resolve_checkpoint(refiner: str, checkpoint: str | None):
    """``checkpoint`` as a path; ``"demo"`` means the refiner's shipped demo weights
    (:meth:`Refiner.demo_checkpoint`). Raises ValueError naming the fix when there are none."""
    from .. import refiners

    if checkpoint is None or checkpoint != "demo":
        if checkpoint is not None and not Path(checkpoint).is_file():
            raise ValueError(f"--checkpoint {checkpoint}: no such file (or use --checkpoint demo for shipped weights)")
        return checkpoint
    cls = refiners.get_class(refiner)
    path = cls.demo_checkpoint()
    if path is None:
        raise ValueError(f"the {refiner!r} refiner ships no demo weights; train one with `tomoprior train` and pass "
                         "--checkpoint RUN/best.pt")
    return str(path)


def demo_sample(*, variant: str = "normal", age_years: float = 1.0, seed: int = 0, grid: int = 64) -> dict:
    """The built-in demo case: one procedural skull and its frontal + lateral line integrals,
    made by the same code as ``tomoprior dataset make`` (``tomoprior.data.synthetic``).

    Returns ``{"volume": (nz, ny, nx) 1/mm tensor, "xrays": (2, rows, cols) tensor, "geometry":
    Geometry, "spacing": (sz, sy, sx) mm, "labels": dict}``.
    """
    from ..data.synthetic import SampleSpec, available_variants, generate_sample, sample_seed

    allowed = available_variants("skull")
    if variant not in allowed:
        raise ValueError(f"--demo-variant must be one of {allowed}, got {variant!r}")
    if not 0 <= age_years <= 18:
        raise ValueError(f"--demo-age must be in [0, 18] years, got {age_years!r}")
    spec = SampleSpec(index=0, seed=sample_seed(seed, 0), variant=variant, age_years=float(age_years), split="test",
                      grid=grid)
    s = generate_sample(spec)
    return {"volume": s.volume, "xrays": s.xrays, "geometry": s.geometry, "spacing": s.grid.spacing,
            "labels": s.labels}


@click.command()
@click.argument("more_xrays", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@click.option("--xrays", "xrays", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="X-ray images in the geometry's view order: --xrays A B (or --xrays A --xrays B).")
@click.option("--geometry", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Geometry YAML/JSON (Geometry.save) that made the X-rays; its grid is the output grid.")
@click.option("--refiner", default=None,
              help="Refiner name (tomoprior.refiners.available()); with --demo the default is psctnet.")
@click.option("--checkpoint", default=None,
              help="Trained weights (e.g. run/best.pt), or 'demo' for the refiner's shipped demo weights; "
                   "not needed for bp-prior.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Refiner config field without a checkpoint (YAML value), repeatable.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output .nii.gz (or .nii).")
@click.option("--png", "png_path", default=None, type=click.Path(dir_okay=False),
              help="Orthogonal-slice PNG [default: OUT with .png].")
@click.option("--image-kind", type=click.Choice(["auto", "intensity", "line-integrals"]), default="auto",
              show_default=True, help="How PNG/TIFF pixels are read (auto: intensity; .npy: line integrals).")
@click.option("--i0", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Open-beam intensity for intensity images [default: each image's maximum].")
@click.option("--demo", is_flag=True, help=DEMO_HELP)
@click.option("--demo-variant", default="normal", show_default=True,
              help="Skull variant of --demo (normal, sagittal, metopic, unicoronal, bicoronal, lambdoid).")
@click.option("--demo-age", default=1.0, show_default=True, type=float, help="Age in years of the --demo skull.")
@click.option("--demo-seed", default=0, show_default=True, type=int, help="Anatomy seed of the --demo skull.")
@click.option("--device", default="cpu", show_default=True)
def reconstruct(more_xrays, xrays, geometry, refiner, checkpoint, overrides, out, png_path, image_kind, i0, demo,
                demo_variant, demo_age, demo_seed, device):
    """Reconstruct a volume from X-rays and their geometry with a refiner; write NIfTI + PNG.

    The NIfTI holds attenuation in 1/mm on the geometry's grid with a RAS affine (LPS grid
    converted as tomoprior.data.save_nifti does). bp-prior without a checkpoint uses
    normalization=chord (mean attenuation along each ray, 1/mm).

    Out of the box: ``tomoprior reconstruct --demo --out demo.nii.gz`` (PSCT-Net with its
    shipped weights on the built-in skull phantom; prints PSNR/SSIM/Dice against it).
    """
    import torch

    from .. import refiners
    from ..data import Volume, save_nifti
    from ..geometry.geometry import Geometry
    from .train import _parse_set

    paths = list(xrays) + list(more_xrays)
    out = Path(out)
    if not (out.name.endswith(".nii.gz") or out.name.endswith(".nii")):
        raise click.BadParameter(f"the output must end in .nii.gz or .nii, got {out.name}", param_hint="--out")
    if not out.parent.exists():
        raise click.BadParameter(f"the folder {out.parent} does not exist", param_hint="--out")
    truth = None
    try:
        if demo:
            if paths or geometry is not None:
                raise ValueError("--demo simulates its own X-rays and geometry; drop --xrays/--geometry (or --demo)")
            refiner = refiner or "psctnet"
            if checkpoint is None and refiner != "bp-prior" and not overrides:
                checkpoint = "demo"
            case = demo_sample(variant=demo_variant, age_years=demo_age, seed=demo_seed)
            geom, truth = case["geometry"], case["volume"]
            x = case["xrays"][None].to(torch.float32)
        else:
            if refiner is None:
                raise ValueError("--refiner is required (e.g. --refiner bp-prior), or run --demo")
            if geometry is None:
                raise ValueError("--geometry is required: the geometry that made the X-rays (or run --demo)")
            geom = Geometry.load(geometry)
            if len(paths) != geom.num_views:
                raise ValueError(f"the geometry has {geom.num_views} views but {len(paths)} X-ray file(s) were given; "
                                 "give one per view, in the geometry's view order")
            images = [read_xray(p, image_kind=image_kind, i0=i0) for p in paths]
            shapes = {im.shape for im in images}
            if len(shapes) != 1:
                raise ValueError(f"the X-rays have different shapes {sorted(shapes)}; resample them to one size")
            for p, im, v in zip(paths, images, geom.views):
                ar_img, ar_det = im.shape[1] / im.shape[0], v.shape[1] / v.shape[0]
                if abs(ar_img / ar_det - 1) > 0.01:
                    raise ValueError(f"{p}: image of {im.shape} pixels does not have the aspect ratio of its "
                                     f"detector {tuple(v.shape)}; an image must span the whole detector")
            x = torch.from_numpy(np.stack(images))[None]
        checkpoint = resolve_checkpoint(refiner, checkpoint)
        if checkpoint is not None:
            if overrides:
                raise ValueError("--set applies without --checkpoint (the checkpoint holds the config)")
            model = refiners.Refiner.from_checkpoint(checkpoint, map_location=device)
            if model.name != refiner:
                raise ValueError(f"{checkpoint} holds a {model.name!r} refiner, not {refiner!r}")
        else:
            cfg = _parse_set(overrides)
            if refiner == "bp-prior":
                cfg.setdefault("normalization", "chord")
            model = refiners.load(refiner, **cfg)
            if any(p.requires_grad for p in model.parameters()):
                click.echo(f"warning: {refiner} has trainable parameters but no --checkpoint was given; "
                           "using untrained weights", err=True)
        model = model.to(device).eval()
        with torch.no_grad():
            vol = model.reconstruct(x.to(device), geom)[0, 0].float().cpu()
        if not bool(torch.isfinite(vol).all()):
            raise ValueError("the refiner produced NaN or infinite values")
        save_nifti(Volume(vol, geom.grid, "mu_per_mm", {"refiner": refiner}), out)
        png = Path(png_path) if png_path else out.with_name(out.name.removesuffix(".gz").removesuffix(".nii") + ".png")
        orthogonal_slices_png(vol.numpy(), png, title=f"{refiner}: attenuation (1/mm)")
        report = {"out": str(out), "png": str(png), "shape": list(vol.shape), "min": float(vol.min()),
                  "max": float(vol.max()), "refiner": refiner, "checkpoint": checkpoint}
        if truth is not None:
            report.update(_demo_report(vol, truth, case, png))
    except (ValueError, TypeError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(report))


def _demo_report(vol, truth, case, png: Path) -> dict:
    """Metrics of a --demo reconstruction against the phantom, and a PNG of the phantom."""
    from ..refiners.evaluation import sample_metrics

    t = truth.double().numpy()
    m = sample_metrics(vol.double().numpy(), t, case["spacing"], xrays=case["xrays"], geometry=case["geometry"])
    truth_png = png.with_name(png.stem + "_phantom.png")
    orthogonal_slices_png(t, truth_png, title=f"phantom ({case['labels']['variant']}, "
                                              f"{case['labels']['age_years']:.1f} y): attenuation (1/mm)")
    keys = ("psnr_x2ctgan", "psnr_psctnet", "ssim_x2ctgan", "mae_hu", "dice_bone", "assd_mm", "hd95_mm",
            "proj_rel_l2")
    return {"phantom": {k: case["labels"][k] for k in ("variant", "age_years")}, "phantom_png": str(truth_png),
            "metrics": {k: (None if m[k] != m[k] else round(float(m[k]), 4)) for k in keys}}
