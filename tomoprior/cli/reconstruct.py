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


@click.command()
@click.argument("more_xrays", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@click.option("--xrays", "xrays", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="X-ray images in the geometry's view order: --xrays A B (or --xrays A --xrays B).")
@click.option("--geometry", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Geometry YAML/JSON (Geometry.save) that made the X-rays; its grid is the output grid.")
@click.option("--refiner", required=True, help="Refiner name (tomoprior.refiners.available()).")
@click.option("--checkpoint", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Trained weights (e.g. run/best.pt); not needed for bp-prior.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Refiner config field without a checkpoint (YAML value), repeatable.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output .nii.gz (or .nii).")
@click.option("--png", "png_path", default=None, type=click.Path(dir_okay=False),
              help="Orthogonal-slice PNG [default: OUT with .png].")
@click.option("--image-kind", type=click.Choice(["auto", "intensity", "line-integrals"]), default="auto",
              show_default=True, help="How PNG/TIFF pixels are read (auto: intensity; .npy: line integrals).")
@click.option("--i0", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Open-beam intensity for intensity images [default: each image's maximum].")
@click.option("--device", default="cpu", show_default=True)
def reconstruct(more_xrays, xrays, geometry, refiner, checkpoint, overrides, out, png_path, image_kind, i0, device):
    """Reconstruct a volume from X-rays and their geometry with a refiner; write NIfTI + PNG.

    The NIfTI holds attenuation in 1/mm on the geometry's grid with a RAS affine (LPS grid
    converted as tomoprior.data.save_nifti does). bp-prior without a checkpoint uses
    normalization=chord (mean attenuation along each ray, 1/mm).
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
    try:
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
                raise ValueError(f"{p}: image of {im.shape} pixels does not have the aspect ratio of its detector "
                                 f"{tuple(v.shape)}; an image must span the whole detector")
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
        x = torch.from_numpy(np.stack(images))[None].to(device)
        with torch.no_grad():
            vol = model.reconstruct(x, geom)[0, 0].float().cpu()
        if not bool(torch.isfinite(vol).all()):
            raise ValueError("the refiner produced NaN or infinite values")
        save_nifti(Volume(vol, geom.grid, "mu_per_mm", {"refiner": refiner}), out)
        png = Path(png_path) if png_path else out.with_name(out.name.removesuffix(".gz").removesuffix(".nii") + ".png")
        orthogonal_slices_png(vol.numpy(), png, title=f"{refiner}: attenuation (1/mm)")
    except (ValueError, TypeError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps({"out": str(out), "png": str(png), "shape": list(vol.shape),
                           "min": float(vol.min()), "max": float(vol.max())}))
