"""``tomoprior reconstruct``: X-rays + their geometry + a refiner -> a NIfTI volume and a PNG
of orthogonal slices (see ``docs/training.md``).

Input images, one per view in the geometry's view order:

- ``.npy``: line integrals (attenuation x mm), a 2D real array ``(rows, cols)``, used as is.
- ``.png``, ``.tif``/``.tiff``: transmitted intensities (``--image-kind intensity``, the
  default), converted to line integrals ``p = -ln(max(I, 1e-6 I0) / I0)`` with ``I0`` the
  unattenuated intensity (``--i0``; default: the image's own maximum, i.e. it assumes some
  pixel saw the open beam). RGB(A) images are averaged to grey. With
  ``--image-kind line-integrals`` the pixel values are used as line integrals directly
  (e.g. a 32-bit float TIFF).

Each image must have its view's detector shape (``--resample`` resamples it, with a note) and
hold plausible line integrals: finite, not below ``-1 %`` of the image's largest magnitude
(negative values mean the sign or the ``I0`` is wrong), at most :data:`MAX_LINE_INTEGRAL`.

Consistency check: with two or more views, the epipolar consistency of the X-rays with the
geometry (:func:`tomoprior.validation.epipolar_consistency`) is computed before reconstructing.
A worst-pair relative residual above ``--consistency-tolerance`` prints a ``warning:`` line
(the run continues): the geometry probably does not describe these X-rays. Images that look
like intensities, or a pair that cannot be compared, give a ``note:`` instead;
``--no-consistency-check`` skips it. The JSON report carries the number
(``epipolar_relative``, null when not checked).

Outputs: the NIfTI, its PNG (and with ``--demo`` the phantom's PNG) are written together or
not at all (temporaries beside the targets, renamed at the end); existing files are refused
unless ``--overwrite``. Errors exit with code 2 and one message naming the input and the fix.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import sys
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:  # numpy loads inside the functions, so `--help` stays fast
    import numpy as np

_IMAGE_SUFFIXES = (".png", ".tif", ".tiff")
#: Largest accepted line integral (attenuation x mm): exp(-1000) is far below any detector's
#: dynamic range, so larger values are not line integrals (raw counts, wrong units).
MAX_LINE_INTEGRAL = 1000.0
#: Default ``--consistency-tolerance``: the largest worst-pair relative epipolar residual that
#: passes silently. Measured with the true geometry at 256^2 pixels: exact line integrals 7e-3
#: (1-year skull) and 1.4e-2 (CThead); the ``realistic`` radiograph preset, whose scatter (no
#: grid, scatter-to-primary 1) and polychromatic beam are not corrected, 0.19 and 0.22, and 9e-3
#: for the skull when scatter and beam hardening are removed. So the default sits above
#: uncorrected clinical-like data and catches gross mismatches there (skull, realistic: lateral
#: v0 +5 mm 0.46, a frontal image upside down 0.83), not millimetre errors. For scatter-corrected
#: data set it from a known-good acquisition (e.g. 0.03): then millimetre errors show (exact
#: skull: v0 +3 mm 0.30, swapped views 0.26, source-to-detector +30 mm 0.15).
#: ``tomoprior check-geometry`` uses 0.02, for clean data.
DEFAULT_CONSISTENCY_TOLERANCE = 0.3
#: Images are averaged down to at most this many pixels per side for the consistency check
#: (the geometry binned alike): the check needs the shape of the object, not its fine detail.
CONSISTENCY_MAX_PIXELS = 512
#: Negative line integrals down to this fraction of the image's largest magnitude are noise
#: (e.g. a noisy open-beam pixel brighter than I0) and are kept; below it the input is refused.
NEGATIVE_TOLERANCE = 0.01


class ReconstructError(click.ClickException):
    """Bad usage, unreadable input or an output that cannot be written: exit code 2."""

    exit_code = 2


def _load_pixels(path: Path) -> np.ndarray:
    """The raw pixel array of ``path`` (.npy, .png, .tif/.tiff); ValueError naming the file
    for anything unreadable (empty, truncated, not the format its suffix says)."""
    import numpy as np

    suffix = path.suffix.lower()
    if suffix not in (".npy", *_IMAGE_SUFFIXES):
        raise ValueError(f"{path}: unsupported X-ray format {suffix!r}; use .npy (line integrals), .png or .tif")
    if not path.exists():
        raise ValueError(f"{path}: no such file")
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give an image file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes); an interrupted copy or export? write the image again")
    fix = {".npy": "save it with numpy.save(path, array) (a 2D real array)",
           ".png": "export it again as a PNG (8/16-bit grey)",
           ".tif": "export it again as a TIFF (grey, integer or float)",
           ".tiff": "export it again as a TIFF (grey, integer or float)"}[suffix]
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix == ".png":
            from PIL import Image

            with Image.open(path) as im:
                if im.mode == "P":  # palette: look the colours up
                    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                im.load()
                return np.asarray(im)
        import tifffile

        return tifffile.imread(path)
    except Exception as exc:  # readers raise many types (EOFError, OSError, SyntaxError, ...) for bad files
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise ValueError(f"{path}: cannot read the {suffix} file ({type(exc).__name__}: {detail}); it is truncated, "
                         f"damaged or not a {suffix} file: {fix}") from exc


def read_xray(path, *, image_kind: str = "auto", i0: float | None = None) -> np.ndarray:
    """One view as line integrals ``(rows, cols)`` float32 from .npy / PNG / TIFF (see module doc).

    ``image_kind``: ``"auto"`` (.npy: line integrals; PNG/TIFF: intensities), ``"intensity"``
    or ``"line-integrals"``; ``i0``: open-beam intensity for intensities (default: the maximum).

    Raises
    ------
    ValueError
        Naming the file and the fix: unreadable, not 2D, not real numbers, non-finite pixels,
        a non-positive or non-finite ``I0``, line integrals below ``-1 %`` of the image's peak
        (wrong sign or ``I0`` too small) or above :data:`MAX_LINE_INTEGRAL`.
    """
    import numpy as np

    if image_kind not in ("auto", "intensity", "line-integrals"):
        raise ValueError(f"image_kind must be 'auto', 'intensity' or 'line-integrals', got {image_kind!r}")
    if i0 is not None and (isinstance(i0, bool) or not isinstance(i0, (int, float, np.number))
                           or not np.isfinite(i0) or not i0 > 0):
        raise ValueError(f"i0 (the open-beam intensity, --i0) must be a finite number > 0, got {i0!r}")
    path = Path(path)
    arr = np.asarray(_load_pixels(path))
    suffix = path.suffix.lower()
    kind = image_kind if image_kind != "auto" else ("line-integrals" if suffix == ".npy" else "intensity")
    if arr.dtype.kind not in "iuf":
        what = {"b": "boolean", "c": "complex", "O": "Python objects", "U": "text", "S": "bytes",
                "V": "structured records", "M": "dates", "m": "time spans"}.get(arr.dtype.kind, str(arr.dtype))
        raise ValueError(f"{path}: pixel type {arr.dtype} ({what}) is not an X-ray image; give real numbers "
                         "(integers or floats)")
    if suffix != ".npy" and arr.ndim == 3 and arr.shape[-1] in (2, 3, 4):
        # grey + alpha, RGB, RGBA: average the colour channels, drop alpha
        arr = arr[..., :1] if arr.shape[-1] == 2 else arr[..., :3]
        arr = arr.astype(np.float64).mean(axis=-1)
    if arr.ndim != 2:
        raise ValueError(f"{path}: expected a 2D image (rows, cols), got shape {arr.shape}")
    if min(arr.shape) < 2:
        raise ValueError(f"{path}: an image of {arr.shape} pixels cannot be an X-ray; give the whole detector image")
    integer_npy = suffix == ".npy" and arr.dtype.kind in "iu" and kind == "line-integrals"
    arr = arr.astype(np.float64)
    bad = ~np.isfinite(arr)
    if bad.any():
        rr, cc = np.nonzero(bad)
        where = [(int(r), int(c)) for r, c in zip(rr[:3], cc[:3])]
        raise ValueError(f"{path}: {int(bad.sum())} pixel(s) are NaN or infinite, e.g. at (row, col) {where}; fix "
                         "or mask them before reconstructing")
    ref = None
    if kind == "intensity":
        ref = float(arr.max()) if i0 is None else float(i0)
        if not ref > 0:
            raise ValueError(f"{path}: the open-beam intensity I0 must be positive (the image's maximum is {ref:g}); "
                             "is this an image of intensities? pass --i0, or --image-kind line-integrals")
        if float(arr.min()) < -NEGATIVE_TOLERANCE * ref:
            raise ValueError(f"{path}: intensities down to {float(arr.min()):g} (I0 {ref:g}); transmitted intensities "
                             "are >= 0: subtract the dark image correctly, or pass --image-kind line-integrals")
        arr = -np.log(np.maximum(arr, 1e-6 * ref) / ref)
    elif integer_npy:
        warnings.warn(f"{path}: integer pixel values read as line integrals; if they are detector counts, pass "
                      "--image-kind intensity", UserWarning, stacklevel=2)
    peak = float(np.abs(arr).max())
    low = float(arr.min())
    if low < -NEGATIVE_TOLERANCE * peak:
        n = int((arr < -NEGATIVE_TOLERANCE * peak).sum())
        if kind == "intensity":
            raise ValueError(f"{path}: {n} pixel(s) are brighter than the open-beam intensity I0 = {ref:g} (line "
                             f"integrals down to {low:.3g}); give the open-beam intensity (at least the brightest "
                             "pixel) with --i0, or omit --i0")
        raise ValueError(f"{path}: {n} line integral(s) are negative (down to {low:.3g}; largest magnitude "
                         f"{peak:.3g}); line integrals (attenuation x mm) are >= 0. Was the sign flipped (log(I/I0) "
                         "instead of -log(I/I0))? Or are these intensities? Then pass --image-kind intensity")
    if float(arr.max()) > MAX_LINE_INTEGRAL:
        raise ValueError(f"{path}: line integrals up to {float(arr.max()):.3g}, above {MAX_LINE_INTEGRAL:g} "
                         "(attenuation x mm); these are not line integrals (raw detector counts? pass --image-kind "
                         "intensity) or not in 1/mm x mm")
    if peak == 0.0:
        warnings.warn(f"{path}: the image holds no attenuation at all (every line integral is 0)", UserWarning,
                      stacklevel=2)
    return arr.astype(np.float32)


def _render_slices_png(volume: np.ndarray, path, *, title: str = "") -> None:
    """Render the three central orthogonal slices of ``volume (nz, ny, nx)`` to ``path`` (PNG)."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nz, ny, nx = volume.shape
    vmax = float(np.percentile(volume, 99.9)) or 1.0
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.2))
    try:
        for ax, (img, name) in zip(axes, [(volume[nz // 2], "axial (z)"), (volume[:, ny // 2, :], "coronal (y)"),
                                          (volume[:, :, nx // 2], "sagittal (x)")]):
            ax.imshow(img, cmap="gray", vmin=0, vmax=vmax, origin="lower" if name != "axial (z)" else "upper")
            ax.set_title(name, fontsize=9)
            ax.axis("off")
        if title:
            fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=100, format="png")
    finally:
        plt.close(fig)


def _nifti_image(volume: np.ndarray, grid):
    """``volume (nz, ny, nx)`` on ``grid`` as a NIfTI image with the RAS affine, sform and
    qform code 1, as :func:`tomoprior.data.save_nifti` writes it."""
    import nibabel as nib
    import numpy as np

    arr = np.ascontiguousarray(volume.transpose(2, 1, 0)).astype(np.float32)  # (nz, ny, nx) -> (x, y, z)
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ grid.affine()  # LPS -> RAS
    img = nib.Nifti1Image(arr, ras)
    img.set_sform(ras, code=1)
    img.set_qform(ras, code=1)
    return img


class _Outputs:
    """Files written together or not at all.

    :meth:`stage` gives a hidden temporary beside each target (named as
    :mod:`tomoprior._atomic` names them, so a later write removes it if this process is
    killed); :meth:`commit` renames all of them onto their targets with SIGTERM/SIGINT/SIGHUP
    held back, and on a failed rename moves the already renamed ones back (or removes them
    when there was no previous file). Leaving the ``with`` block without a commit deletes the
    temporaries: previous files stay untouched.
    """

    def __init__(self):
        self.staged: list[tuple[Path, Path]] = []

    def __enter__(self):
        return self

    def stage(self, target: Path, suffix: str) -> Path:
        from .._atomic import remove_stale_temporaries, temporary_prefix

        remove_stale_temporaries(target)
        fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(target), suffix=suffix, dir=target.parent)
        os.close(fd)
        self.staged.append((Path(tmp), target))
        return Path(tmp)

    def commit(self) -> None:
        from .._atomic import temporary_prefix

        blocked = {signal.SIGTERM, signal.SIGINT, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])}
        can_block = hasattr(signal, "pthread_sigmask")
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, blocked) if can_block else None
        umask = os.umask(0)
        os.umask(umask)
        backups: dict[Path, Path] = {}  # target -> hard link to its previous file
        done: list[Path] = []  # targets already replaced
        try:
            for tmp, target in self.staged:
                os.chmod(tmp, 0o666 & ~umask)
                if target.exists():
                    backup = target.parent / f"{temporary_prefix(target)}{secrets.token_hex(4)}.previous"
                    with contextlib.suppress(OSError):  # no hard links here: no way back for this one
                        os.link(target, backup)
                        backups[target] = backup
                os.replace(tmp, target)
                done.append(target)
        except BaseException:
            for target in reversed(done):
                with contextlib.suppress(OSError):
                    if target in backups:
                        os.replace(backups.pop(target), target)
                    else:
                        target.unlink()
            raise
        finally:
            for backup in backups.values():
                with contextlib.suppress(OSError):
                    backup.unlink()
            self.staged = [(t, g) for t, g in self.staged if t.exists()]
            if can_block:
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

    def __exit__(self, *exc):
        for tmp, _ in self.staged:
            with contextlib.suppress(OSError):
                tmp.unlink()
        self.staged = []
        return False


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


#: Skull model version of ``--demo``: the one the shipped demo weights were trained on.
DEMO_SKULL_ANATOMY = "v1"


def demo_sample(*, variant: str = "normal", age_years: float = 1.0, seed: int = 0, grid: int = 64) -> dict:
    """The built-in demo case: one procedural skull and its frontal + lateral line integrals,
    made by the same code as ``tomoprior dataset make`` (``tomoprior.data.synthetic``).
    The skull is the model version the shipped demo weights were trained on (``anatomy="v1"``,
    see ``tomoprior.phantoms.skull.ANATOMY_VERSIONS``), so their metrics are those of the
    data they know.

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
                      grid=grid, skull_anatomy=DEMO_SKULL_ANATOMY)
    s = generate_sample(spec)
    return {"volume": s.volume, "xrays": s.xrays, "geometry": s.geometry, "spacing": s.grid.spacing,
            "labels": s.labels}


def _resample(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``image`` resampled to ``shape`` (area averaging when shrinking, bilinear when growing;
    pixel edges aligned: the image spans the same detector area)."""
    import numpy as np
    import torch
    import torch.nn.functional as F  # noqa: N812 - torch's own idiom

    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    shrink = shape[0] <= image.shape[0] and shape[1] <= image.shape[1]
    out = F.interpolate(t, size=tuple(shape), mode="area") if shrink else \
        F.interpolate(t, size=tuple(shape), mode="bilinear", align_corners=False)
    return out[0, 0].numpy()


def read_view_xrays(paths, geom, image_kind, i0, note, hint: str = "") -> list:
    """One image per view of ``geom`` from ``paths`` (in view order), read with :func:`read_xray`.

    The reader's warnings are passed to ``note`` as ``"warning: ..."`` lines; a count that does
    not match the geometry's views is a ValueError (``hint`` is appended to its message). The
    shapes are the callers' to check: reconstruct may resample, check-geometry refuses.
    """
    if len(paths) != geom.num_views:
        raise ValueError(f"the geometry has {geom.num_views} views but {len(paths)} X-ray file(s) were given; "
                         f"give one per view, in the geometry's view order{hint}")
    images = []
    for p in paths:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            images.append(read_xray(p, image_kind=image_kind, i0=i0))
        for w in caught:
            note(f"warning: {w.message}")
    return images


def _read_inputs(paths, geometry_path, image_kind, i0, resample, note) -> tuple:
    """Geometry and X-rays ``(1, V, rows, cols)`` float32 tensor from the files (ValueError on bad input)."""
    import numpy as np
    import torch

    from ..geometry.geometry import Geometry

    try:
        geom = Geometry.load(geometry_path)
    except (ValueError, TypeError, KeyError, OSError) as exc:
        raise ValueError(f"--geometry {geometry_path}: {exc}") from exc
    images = []
    for v, (p, view, im) in enumerate(zip(paths, geom.views, read_view_xrays(paths, geom, image_kind, i0, note))):
        det = tuple(int(n) for n in view.shape)
        if im.shape != det:
            ar_img, ar_det = im.shape[1] / im.shape[0], det[1] / det[0]
            if abs(ar_img / ar_det - 1) > 0.01:
                raise ValueError(f"{p}: image of {im.shape} pixels does not have the aspect ratio of its detector "
                                 f"{det} (view {v} of {geometry_path}); an image must span the whole detector")
            if not resample:
                raise ValueError(f"{p}: image of {im.shape} pixels, but view {v} of {geometry_path} has a detector of "
                                 f"{det} pixels; resample the image to the detector, or pass --resample to let "
                                 "tomoprior do it")
            note(f"note: {p}: resampled from {im.shape} to the detector's {det} pixels (--resample)")
            im = _resample(im, det)
        images.append(im)
    return geom, torch.from_numpy(np.stack(images))[None]


def consistency_check(images, geom, tolerance: float, note) -> float | None:
    """Worst-pair relative epipolar residual of ``images (views, rows, cols)`` (line integrals)
    with ``geom``, or None when it cannot be computed; ``note`` gets a ``warning:`` line above
    ``tolerance`` and a ``note:`` line when the check is skipped. Never raises for the data.

    Images larger than :data:`CONSISTENCY_MAX_PIXELS` per side are averaged down by an integer
    factor that divides both sides, with the detector's pixel vectors scaled alike (the same
    detector, coarser pixels).
    """
    import math

    import torch

    from ..geometry import Geometry
    from ..validation.epipolar import epipolar_consistency, line_integral_check

    if geom.num_views < 2:
        return None
    skip = "note: epipolar consistency of the X-rays with the geometry not checked: "
    ims = [torch.as_tensor(im).detach().to(torch.float64) for im in images]
    for v, im in enumerate(ims):
        why = line_integral_check(im)
        if why is not None:
            note(f"{skip}view {v} does not look like line integrals ({why})")
            return None
    try:
        views = []
        for v, (view, im) in enumerate(zip(geom.views, ims)):
            rows, cols = im.shape
            f = math.ceil(max(rows, cols) / CONSISTENCY_MAX_PIXELS)
            while f > 1 and (rows % f or cols % f):
                f -= 1
            view = view.detach().to(dtype=torch.float64)
            if f > 1:
                ims[v] = torch.nn.functional.avg_pool2d(im[None, None], f)[0, 0]
                view = view.binned(f)
            views.append(view)
        with torch.no_grad():
            result = epipolar_consistency(ims, Geometry(geom.grid, views))
        rel = float(result.relative)
    except (ValueError, RuntimeError) as exc:
        note(f"{skip}{exc}")
        return None
    if not math.isfinite(rel):
        note(f"{skip}every epipolar plane of a pair is truncated (the object leaves a detector along every line)")
        return None
    worst = max(result.pairs, key=lambda p: float(p.relative) if math.isfinite(float(p.relative)) else -1.0)
    pair = " / ".join(n if n else f"view {i}" for n, i in zip(worst.names, worst.views))
    if rel > tolerance:
        note(f"warning: the X-rays do not fit the geometry: relative epipolar residual {rel:.3g} of {pair} exceeds "
             f"--consistency-tolerance {tolerance:g}. The geometry probably does not describe these X-rays "
             "(miscalibration, another system's geometry file, views in the wrong order, patient motion between "
             "the exposures); the reconstruction will be degraded. Check with `tomoprior check-geometry`; "
             "continuing")
    return rel


def _output_paths(out: str, png_path: str | None, demo: bool) -> dict[str, Path]:
    """The files this run writes: ``{"nifti", "png"[, "phantom_png"]}`` (ValueError on a bad name)."""
    out_p = Path(out)
    if not (out_p.name.endswith(".nii.gz") or out_p.name.endswith(".nii")) or out_p.name in (".nii", ".nii.gz"):
        raise click.BadParameter(f"the output must end in .nii.gz or .nii, got {out_p.name!r}", param_hint="--out")
    png = Path(png_path) if png_path else out_p.with_name(out_p.name.removesuffix(".gz").removesuffix(".nii") + ".png")
    if png.suffix.lower() != ".png":
        raise click.BadParameter(f"the slice image must end in .png, got {png.name!r}", param_hint="--png")
    paths = {"nifti": out_p, "png": png}
    if demo:
        paths["phantom_png"] = png.with_name(png.stem + "_phantom.png")
    if len({p.resolve() for p in paths.values()}) != len(paths):
        raise click.BadParameter(f"--out and --png name the same file(s): {sorted(str(p) for p in paths.values())}",
                                 param_hint="--png")
    return paths


def _check_outputs(paths: dict[str, Path], overwrite: bool) -> None:
    """Folders exist and are writable; targets are not folders; existing files need --overwrite."""
    from .._atomic import check_writable

    for key, p in paths.items():
        hint = "--out" if key == "nifti" else "--png"
        if p.is_dir():
            raise click.BadParameter(f"{p} is a folder; give a file name", param_hint=hint)
        try:
            check_writable(p.parent, what="output")
        except (ValueError, OSError) as exc:
            raise click.BadParameter(str(exc), param_hint=hint) from exc
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise click.BadParameter(f"{', '.join(existing)} already exist(s); pass --overwrite to replace, or choose "
                                 "another --out", param_hint="--out")


@click.command()
@click.argument("more_xrays", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@click.option("--xrays", "xrays", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="X-ray images in the geometry's view order: --xrays A B (or --xrays A --xrays B).")
@click.option("--geometry", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Geometry YAML/JSON (Geometry.save) that made the X-rays; its grid is the output grid.")
@click.option("--refiner", default=None,
              help="Refiner name (tomoprior.refiners.available_refiners()); with --demo the default is psctnet.")
@click.option("--checkpoint", default=None,
              help="Trained weights (e.g. run/best.pt), or 'demo' for the refiner's shipped demo weights; "
                   "not needed for bp-prior.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Refiner config field without a checkpoint (YAML value), repeatable.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output .nii.gz (or .nii).")
@click.option("--png", "png_path", default=None, type=click.Path(dir_okay=False),
              help="Orthogonal-slice PNG [default: OUT with .png].")
@click.option("--overwrite", is_flag=True, help="Replace existing output files (refused otherwise).")
@click.option("--image-kind", type=click.Choice(["auto", "intensity", "line-integrals"]), default="auto",
              show_default=True, help="How PNG/TIFF pixels are read (auto: intensity; .npy: line integrals).")
@click.option("--i0", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Open-beam intensity for intensity images [default: each image's maximum].")
@click.option("--resample", is_flag=True,
              help="Resample images whose pixel count differs from their view's detector (same aspect ratio) to "
                   "the detector; without it such images are refused.")
@click.option("--consistency-tolerance", default=DEFAULT_CONSISTENCY_TOLERANCE, show_default=True,
              type=click.FloatRange(min=0, min_open=True),
              help="Warn (and continue) when the worst pair's relative epipolar residual of the X-rays with the "
                   "geometry exceeds this (with >= 2 views). The default allows for uncorrected scatter and beam "
                   "hardening (about 0.2 with the right geometry); for corrected data about 0.03 catches "
                   "millimetre errors.")
@click.option("--no-consistency-check", is_flag=True,
              help="Skip the epipolar consistency check of the X-rays with the geometry.")
@click.option("--demo", is_flag=True, help=DEMO_HELP)
@click.option("--demo-variant", default="normal", show_default=True,
              help="Skull variant of --demo (normal, sagittal, metopic, unicoronal, bicoronal, lambdoid).")
@click.option("--demo-age", default=1.0, show_default=True, type=float, help="Age in years of the --demo skull.")
@click.option("--demo-seed", default=0, show_default=True, type=int, help="Anatomy seed of the --demo skull.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
def reconstruct(more_xrays, xrays, geometry, refiner, checkpoint, overrides, out, png_path, overwrite, image_kind, i0,
                resample, consistency_tolerance, no_consistency_check, demo, demo_variant, demo_age, demo_seed,
                device):
    """Reconstruct a volume from X-rays and their geometry with a refiner; write NIfTI + PNG.

    The NIfTI holds attenuation in 1/mm on the geometry's grid with a RAS affine (LPS grid
    converted as tomoprior.data.save_nifti does). bp-prior without a checkpoint uses
    normalization=chord (mean attenuation along each ray, 1/mm).

    Out of the box: ``tomoprior reconstruct --demo --out demo.nii.gz`` (PSCT-Net with its
    shipped weights on the built-in skull phantom; prints PSNR/SSIM/Dice against it).

    With two or more views the X-rays are first checked against the geometry (epipolar
    consistency, as tomoprior check-geometry does): a relative residual above
    --consistency-tolerance prints a warning on stderr and the run continues.

    Exit codes: 0 written; 2 bad usage, unreadable input or unwritable output (nothing is
    written then, and existing files are untouched).
    """
    from .._atomic import Terminated, signals_as_exceptions

    try:
        with signals_as_exceptions():
            report = _run(more_xrays, xrays, geometry, refiner, checkpoint, overrides, out, png_path, overwrite,
                          image_kind, i0, resample, demo, demo_variant, demo_age, demo_seed, device,
                          consistency_tolerance=None if no_consistency_check else consistency_tolerance)
    except Terminated as exc:
        click.echo(f"tomoprior reconstruct: {exc}; nothing was written", err=True)
        sys.exit(128 + exc.signum)
    click.echo(json.dumps(report))


def _run(more_xrays, xrays, geometry, refiner, checkpoint, overrides, out, png_path, overwrite, image_kind, i0,
         resample, demo, demo_variant, demo_age, demo_seed, device, consistency_tolerance=None) -> dict:
    import torch

    from .. import refiners
    from .._atomic import disk_full_error, is_disk_full
    from .train import _parse_set

    def note(msg):
        click.echo(msg, err=True)

    try:
        dev = refiners.resolve_device(device, option="--device")
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--device") from exc
    paths = list(xrays) + list(more_xrays)
    outputs = _output_paths(out, png_path, demo)
    _check_outputs(outputs, overwrite)
    truth = case = consistency = None
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
            geom, x = _read_inputs(paths, geometry, image_kind, i0, resample, note)
            if consistency_tolerance is not None:
                consistency = consistency_check(x[0], geom, consistency_tolerance, note)
        checkpoint = resolve_checkpoint(refiner, checkpoint)
        if checkpoint is not None:
            if overrides:
                raise ValueError("--set applies without --checkpoint (the checkpoint holds the config)")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", refiners.CheckpointWarning)
                model = refiners.Refiner.from_checkpoint(checkpoint, map_location="cpu")
            for w in caught:
                note(f"warning: {w.message}")
            if model.name != refiner:
                raise ValueError(f"{checkpoint} holds a {model.name!r} refiner, not {refiner!r}; pass --refiner "
                                 f"{model.name}")
        else:
            cfg = _parse_set(overrides)
            if refiner == "bp-prior":
                cfg.setdefault("normalization", "chord")
            model = refiners.load(refiner, **cfg)
            if any(p.requires_grad for p in model.parameters()):
                note(f"warning: {refiner} has trainable parameters but no --checkpoint was given; using untrained "
                     "weights")
        model = model.to(dev).eval()
        with torch.no_grad():
            vol = model.reconstruct(x.to(dev), geom)[0, 0].float().cpu()
        if not bool(torch.isfinite(vol).all()):
            raise ValueError(f"the refiner {refiner!r} produced NaN or infinite values from these inputs "
                             f"({int((~torch.isfinite(vol)).sum())} voxels); nothing was written")
    except click.ClickException:
        raise
    except (ValueError, TypeError, ImportError) as exc:  # ImportError: RefinerPluginError of a broken plugin
        raise ReconstructError(str(exc)) from exc

    volume = vol.numpy()
    report = {"out": str(outputs["nifti"]), "png": str(outputs["png"]), "shape": list(vol.shape),
              "min": float(vol.min()), "max": float(vol.max()), "refiner": refiner, "checkpoint": checkpoint,
              "epipolar_relative": consistency}
    if truth is not None:
        report.update(_demo_metrics(vol, truth, case))
        report["phantom_png"] = str(outputs["phantom_png"])
    target = outputs["nifti"]
    try:
        with _Outputs() as staged:
            nii = staged.stage(target, ".nii.gz" if target.name.endswith(".gz") else ".nii")
            _nifti_image(volume, geom.grid).to_filename(str(nii))
            target = outputs["png"]
            _render_slices_png(volume, staged.stage(target, ".png"), title=f"{refiner}: attenuation (1/mm)")
            if truth is not None:
                target = outputs["phantom_png"]
                _render_slices_png(truth.double().numpy(), staged.stage(target, ".png"),
                                   title=f"phantom ({case['labels']['variant']}, {case['labels']['age_years']:.1f} y): "
                                         "attenuation (1/mm)")
            target = outputs["nifti"]
            staged.commit()
    except OSError as exc:
        if is_disk_full(exc):
            raise ReconstructError(str(disk_full_error(target, exc))) from exc
        raise ReconstructError(f"cannot write {target}: {exc.strerror or exc}; nothing was written (choose a "
                               "writable folder)") from exc
    except Exception as exc:  # a writer's own error (nibabel, matplotlib): still nothing half-written
        raise ReconstructError(f"writing {target} failed ({type(exc).__name__}: {exc}); nothing was written") from exc
    return report


def _demo_metrics(vol, truth, case) -> dict:
    """Metrics of a --demo reconstruction against the phantom."""
    from ..studies.evaluation import sample_metrics

    t = truth.double().numpy()
    m = sample_metrics(vol.double().numpy(), t, case["spacing"], xrays=case["xrays"], geometry=case["geometry"])
    keys = ("psnr_x2ctgan", "psnr_psctnet", "ssim_x2ctgan", "mae_hu", "dice_bone", "assd_mm", "hd95_mm",
            "proj_rel_l2")
    return {"phantom": {k: case["labels"][k] for k in ("variant", "age_years")},
            "metrics": {k: (None if m[k] != m[k] else round(float(m[k]), 4)) for k in keys}}
