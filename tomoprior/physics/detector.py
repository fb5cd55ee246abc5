"""Source and detector effects: photon noise, focal-spot and detector blur, flat-field and
log correction.

All images are ``(views, rows, cols)`` (or ``(rows, cols)``) torch tensors of counts or
intensities. Blurs are separable convolutions with kernels that sum to 1 and edge
replication, so total counts are kept wherever the image border is flat, and they are
differentiable. Noise draws from a seeded :class:`torch.Generator`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812 - torch's own idiom
from torch import Tensor

#: FWHM of a Gaussian in units of its standard deviation, 2 sqrt(2 ln 2).
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))

#: Counts below this are raised to it before a logarithm (half a photon), see :func:`log_transform`.
DEFAULT_COUNT_FLOOR = 0.5

_KERNELS = ("gaussian", "box")


def _images(x, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (views, rows, cols) or (rows, cols), "
                        f"got {type(x).__name__}")
    if x.ndim not in (2, 3):
        raise ValueError(f"{name} must have shape (views, rows, cols) or (rows, cols), got {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.to(torch.float64)
    if not bool(torch.isfinite(x.detach()).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def _generator(seed, generator, device) -> torch.Generator | None:
    if generator is not None and seed is not None:
        raise ValueError("give either seed or generator, not both")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        return generator
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def poisson_noise(expected: Tensor, *, seed: int | None = None, generator: torch.Generator | None = None,
                  electronic_sigma: float = 0.0) -> Tensor:
    """Photon-count noise: a Poisson draw per pixel, plus optional Gaussian electronic noise.

    Parameters
    ----------
    expected : Tensor (...)
        Expected photon counts per pixel (>= 0).
    seed : int, optional
        Seed of a fresh :class:`torch.Generator` (reproducible images). Or pass ``generator``.
    electronic_sigma : float
        Standard deviation of additive Gaussian read-out noise, in counts (default 0). The
        result can then be negative, as raw detector values can before dark correction.

    Returns
    -------
    Tensor, same shape and dtype as ``expected``: noisy counts (float). Not differentiable
    (a sample); use the expected counts for gradient-based work.
    """
    if not isinstance(expected, Tensor):
        raise TypeError(f"expected must be a torch.Tensor of expected counts, got {type(expected).__name__}")
    lam = expected.detach()
    if not lam.is_floating_point():
        lam = lam.to(torch.float64)
    if not bool(torch.isfinite(lam).all()):
        raise ValueError("expected counts contain NaN or infinite values")
    if bool((lam < 0).any()):
        raise ValueError(f"expected counts must be >= 0, min is {float(lam.min()):g}")
    if isinstance(electronic_sigma, bool) or not isinstance(electronic_sigma, (int, float)) \
            or not electronic_sigma >= 0 or not math.isfinite(electronic_sigma):
        raise ValueError(f"electronic_sigma must be a finite number >= 0 (counts), got {electronic_sigma!r}")
    g = _generator(seed, generator, lam.device)
    out = torch.poisson(lam, generator=g)
    if electronic_sigma > 0:
        out = out + electronic_sigma * torch.randn(lam.shape, generator=g, dtype=lam.dtype, device=lam.device)
    return out


def _kernel_1d(width_px: float, kind: str, dtype, device) -> Tensor:
    """Taps of a 1-D blur integrated over unit pixels; sums to 1.

    ``gaussian``: ``width_px`` is the standard deviation. ``box``: ``width_px`` is the full
    width of a uniform kernel. Width 0 is the identity.
    """
    if width_px <= 0:
        return torch.ones(1, dtype=dtype, device=device)
    if kind == "gaussian":
        half = max(1, math.ceil(4.0 * width_px + 0.5))
        k = torch.arange(-half, half + 1, dtype=torch.float64)
        s = width_px * math.sqrt(2.0)
        taps = 0.5 * (torch.erf((k + 0.5) / s) - torch.erf((k - 0.5) / s))
    else:
        half = math.ceil(width_px / 2.0 + 0.5)
        k = torch.arange(-half, half + 1, dtype=torch.float64)
        lo = torch.clamp(k - 0.5, min=-width_px / 2.0)
        hi = torch.clamp(k + 0.5, max=width_px / 2.0)
        taps = torch.clamp(hi - lo, min=0.0)
    taps = taps / taps.sum()
    return taps.to(dtype=dtype, device=device)


def blur(images: Tensor, width_px, kind: str = "gaussian") -> Tensor:
    """Separable blur of images with a per-view kernel width.

    Parameters
    ----------
    images : Tensor (views, rows, cols) or (rows, cols)
    width_px : float, (row, col) pair, or sequence of pairs (one per view)
        Gaussian standard deviation (``kind="gaussian"``) or box full width
        (``kind="box"``), in pixels along rows and columns.
    kind : {"gaussian", "box"}

    Returns
    -------
    Tensor, same shape. Kernels sum to 1 and the border is replicated, so a flat image
    stays flat and counts are conserved where the border is flat. Differentiable.
    """
    if kind not in _KERNELS:
        raise ValueError(f"kind must be one of {_KERNELS}, got {kind!r}")
    x = _images(images, "images")
    squeeze = x.ndim == 2
    if squeeze:
        x = x[None]
    widths = _per_view_widths(width_px, x.shape[0])
    out = []
    for i, (wr, wc) in enumerate(widths):
        img = x[i][None, None]
        kr = _kernel_1d(wr, kind, x.dtype, x.device)
        kc = _kernel_1d(wc, kind, x.dtype, x.device)
        pr, pc = kr.numel() // 2, kc.numel() // 2
        if pr:
            img = F.conv2d(F.pad(img, (0, 0, pr, pr), mode="replicate"), kr.view(1, 1, -1, 1))
        if pc:
            img = F.conv2d(F.pad(img, (pc, pc, 0, 0), mode="replicate"), kc.view(1, 1, 1, -1))
        out.append(img[0, 0])
    y = torch.stack(out)
    return y[0] if squeeze else y


def _per_view_widths(width_px, n: int) -> list[tuple[float, float]]:
    def one(w) -> tuple[float, float]:
        if isinstance(w, (int, float)) and not isinstance(w, bool):
            pair = (float(w), float(w))
        else:
            try:
                pair = tuple(float(v) for v in w)
            except TypeError as exc:
                raise TypeError(f"width_px must be a number, a (row, col) pair or one pair per view, got {w!r}") \
                    from exc
            if len(pair) != 2:
                raise ValueError(f"width_px pairs must be (row, col), got {w!r}")
        if not all(math.isfinite(v) and v >= 0 for v in pair):
            raise ValueError(f"blur widths must be finite and >= 0 pixels, got {w!r}")
        return pair

    if isinstance(width_px, Tensor):
        width_px = width_px.detach().cpu().tolist()
    if isinstance(width_px, (int, float)) and not isinstance(width_px, bool):
        return [one(width_px)] * n
    items = list(width_px)
    if len(items) == 2 and all(isinstance(v, (int, float)) for v in items):
        return [one(items)] * n
    if len(items) != n:
        raise ValueError(f"width_px has {len(items)} entries for {n} views")
    return [one(w) for w in items]


def focal_spot_blur_mm(focal_spot_mm: float, magnification: float) -> float:
    """Width in mm, on the detector, of the focal-spot penumbra of an object at magnification ``M``:
    ``focal_spot_mm * (M - 1)``. E.g. 0.6 mm at M = 1.5 -> 0.3 mm."""
    f, m = float(focal_spot_mm), float(magnification)
    if not (math.isfinite(f) and f >= 0):
        raise ValueError(f"focal_spot_mm must be a finite number >= 0, got {focal_spot_mm!r}")
    if not (math.isfinite(m) and m >= 1):
        raise ValueError(f"magnification must be >= 1 (source-to-detector over source-to-object), "
                         f"got {magnification!r}")
    return f * (m - 1.0)


def focal_spot_widths_px(geom, focal_spot_mm: float, object_point=None, kind: str = "gaussian") \
        -> list[tuple[float, float]]:
    """Per view, the focal-spot blur kernel width in detector pixels ``(rows, cols)``.

    The object plane is the plane through ``object_point`` (default: the centre of
    ``geom.grid``, normally the isocenter) parallel to the detector; its magnification is
    ``M = source_to_detector / source_to_object`` along the detector normal. The penumbra
    width on the detector is ``focal_spot_mm * (M - 1)``: for ``kind="box"`` the full width
    of a uniform kernel; for ``kind="gaussian"`` the FWHM (nominal focal-spot sizes are
    FWHM-like), so ``sigma = width / 2.3548``. Pixels: divided by the row / column pitch.
    """
    if kind not in _KERNELS:
        raise ValueError(f"kind must be one of {_KERNELS}, got {kind!r}")
    views = list(geom.views) if hasattr(geom, "views") else [geom]
    if object_point is None:
        if not hasattr(geom, "grid"):
            raise ValueError("give object_point (x, y, z) in mm when passing a single View")
        object_point = geom.grid.center
    out = []
    for v in views:
        m = float(v.magnification(torch.as_tensor(object_point, dtype=v.dtype, device=v.device)).detach())
        width = focal_spot_blur_mm(focal_spot_mm, m)
        if kind == "gaussian":
            width = width / FWHM_PER_SIGMA
        pr, pc = v.pixel_pitch
        out.append((width / pr, width / pc))
    return out


def focal_spot_blur(images: Tensor, geom, focal_spot_mm: float, *, object_point=None,
                    kind: str = "gaussian") -> Tensor:
    """Blur projections by the focal spot's penumbra at the object plane (see
    :func:`focal_spot_widths_px`). A shift-invariant approximation: objects at other depths
    have other magnifications and so other blur widths."""
    return blur(images, focal_spot_widths_px(geom, focal_spot_mm, object_point, kind), kind)


def detector_blur(images: Tensor, sigma_px) -> Tensor:
    """Gaussian detector blur (scintillator spread / pixel cross-talk), ``sigma_px`` = standard
    deviation in pixels (number or ``(row, col)``)."""
    return blur(images, sigma_px, "gaussian")


def _floor(floor) -> float:
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not floor > 0 or not math.isfinite(floor):
        raise ValueError(f"floor must be a finite number > 0 (counts), got {floor!r}")
    return float(floor)


def flat_field_correct(raw: Tensor, flat, dark=None, *, floor: float = DEFAULT_COUNT_FLOOR) -> Tensor:
    """Flat- and dark-field correction ``(raw - dark) / (flat - dark)``.

    ``flat`` (open-beam image, same geometry) and ``dark`` (no-beam image) broadcast to
    ``raw``; both differences are clipped below at ``floor`` counts (default 0.5) so that a
    zero or negative count never divides by zero or gives a negative transmission.
    """
    fl = _floor(floor)
    r = _images(raw, "raw")
    f = flat if isinstance(flat, Tensor) else torch.as_tensor(flat, dtype=r.dtype, device=r.device)
    if not bool(torch.isfinite(f.detach()).all()):
        raise ValueError("flat contains NaN or infinite values")
    d = torch.zeros((), dtype=r.dtype, device=r.device) if dark is None else (
        dark if isinstance(dark, Tensor) else torch.as_tensor(dark, dtype=r.dtype, device=r.device))
    if not bool(torch.isfinite(d.detach()).all()):
        raise ValueError("dark contains NaN or infinite values")
    try:
        torch.broadcast_shapes(r.shape, f.shape, d.shape)
    except RuntimeError as exc:
        raise ValueError(f"flat {tuple(f.shape)} and dark {tuple(d.shape)} must broadcast to raw {tuple(r.shape)}") \
            from exc
    return torch.clamp(r - d, min=fl) / torch.clamp(f - d, min=fl)


def log_transform(raw: Tensor, flat, dark=None, *, floor: float = DEFAULT_COUNT_FLOOR) -> Tensor:
    """Line integrals from raw counts: ``-log((raw - dark) / (flat - dark))``.

    Counts below ``floor`` (default 0.5 photon) are raised to it first, so a pixel that
    recorded zero photons gives the finite value ``log((flat - dark) / 0.5)`` instead of
    infinity; such pixels carry almost no information, and the floor bounds their bias. In
    the noise-free limit this inverts ``raw = flat * exp(-p) + dark`` exactly wherever
    ``flat * exp(-p) >= floor``.
    """
    return -torch.log(flat_field_correct(raw, flat, dark, floor=floor))
