"""Epipolar consistency of two or more X-rays with their geometry (differentiable, batched).

Every plane that contains both X-ray sources of a pair of views (an *epipolar plane*) is seen
by both views: it cuts each detector along a line, and the derivative of the 3D plane
integral of the object across that plane can be computed from either image alone (Grangeat's
relation). With the right geometry the two numbers agree; a wrong geometry pairs lines of the
two images that belong to different planes, and they disagree. This is the epipolar
consistency condition of Aichert et al., "Epipolar consistency in transmission imaging"
(IEEE TMI 34(11), 2015), evaluated directly on sampled detector lines as in their
"Efficient epipolar consistency" (CT Meeting 2016) but without the precomputed Radon table.

The relation used here, derived for a flat detector with any pixel pitch, skew or tilt
--------------------------------------------------------------------------------------
Let a view have source ``s``, detector centre ``c0`` and pixel step vectors ``u``, ``v``
(mm per column / row), ``D`` the perpendicular source-to-detector distance and ``w(p)`` the
vector from ``s`` to the world position of pixel ``p = (col, row)``. For a plane with unit
normal ``n`` through ``s``, Grangeat's relation ``d/drho Rf(n, rho)|rho = n.s =
-integral over S^2 of g(s, theta) delta'(theta . n) dtheta`` (``Rf`` the plane integral of
the object, ``g`` the cone-beam line integrals) becomes, with the solid angle element
``D |u x v| / |w|^3`` per pixel and ``w . n = k (nu . p - l)``::

    d/drho Rf(n, n.s) = |u x v| / k^2 * d/dl [ integral along the line nu . p = l of I_w ]

where ``I_w(p) = I(p) D / |w(p)|`` is the line-integral image with the cone-beam (cosine)
weight, ``(alpha, beta) = (u . n, v . n)`` (mm per pixel), ``k = |(alpha, beta)|`` and
``nu = (alpha, beta) / k`` the unit normal of the line in pixel coordinates. The
``d/dl`` of the line integral is the integral of the directional derivative
``nu . grad I_w`` along the line. Both views evaluate the same ``d/drho Rf`` for the same
oriented plane, so the residual ``F_a - F_b`` is dimensionless and 0 for a consistent pair.

Planes of a pair form a pencil about the baseline (the line through the two sources),
parametrised by the angle ``kappa``: ``n(kappa) = cos(kappa) n0 + sin(kappa) e1`` with
``e1`` pointing from the baseline to the detector centre of the pair's first view and
``n0 = b x e1`` (``b`` the unit baseline), so ``kappa = 0`` is the plane through that
detector centre. The frame is fixed to the views, not to the world, so that moving the whole
setup rigidly, or the second view along the baseline, changes no plane's angle: exactly the
motions the images cannot reveal. The sampled range is the intersection of the angles whose
plane meets each detector and, when the geometry has a grid, the volume box; like
everything else here it is a differentiable function of the geometry.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

__all__ = [
    "EpipolarConsistency",
    "EpipolarPair",
    "SelfCalibrationResult",
    "epipolar_consistency",
    "line_integral_check",
    "plane_derivatives",
    "self_calibrate",
]

#: Default number of epipolar planes per pair.
DEFAULT_PLANES = 256
#: A line counts as truncated when the image, within ``border`` pixels of the detector edge
#: along it, exceeds this fraction of the image's largest value.
DEFAULT_TRUNCATION = 0.02
#: Width in pixels of the detector band checked for truncation.
DEFAULT_BORDER = 2.0
#: Default Gaussian blur (pixels) of the images before differentiation.
DEFAULT_SMOOTHING = 1.5
#: Sources closer than this (mm) count as coincident: they define no epipolar planes.
COINCIDENT_MM = 1e-3


@dataclass
class EpipolarPair:
    """Consistency of one pair of views over its epipolar planes.

    Attributes (tensors on the input device, differentiable where noted)
    -------------------------------------------------------------------
    views : (int, int)
        Indices ``(a, b)`` of the pair in the geometry.
    names : (str or None, str or None)
    kappa : Tensor ``(planes,)``, rad
        Angle of each plane about the baseline (0: the plane through view a's detector centre).
    derivative_a, derivative_b : Tensor ``(planes,)``, dimensionless
        ``d/drho`` of the object's plane integral from view a and from view b (for images in
        attenuation x mm; differentiable).
    residual : Tensor ``(planes,)``
        ``derivative_a - derivative_b`` on valid planes, 0 on masked ones (differentiable).
    valid : bool Tensor ``(planes,)``
        False where the plane's line is truncated by a detector edge in either view.
    score : 0-d Tensor
        Mean squared residual over the valid planes (differentiable; 0 for a consistent pair).
    relative : 0-d Tensor
        RMS residual over the RMS of the mean derivative, valid planes only: a scale-free
        number (about 4e-3 for exact data on a 256^2 detector, 5e-3 on 128^2).
    """

    views: tuple[int, int]
    names: tuple
    kappa: torch.Tensor
    derivative_a: torch.Tensor
    derivative_b: torch.Tensor
    residual: torch.Tensor
    valid: torch.Tensor
    score: torch.Tensor
    relative: torch.Tensor

    @property
    def n_valid(self) -> int:
        return int(self.valid.sum())

    def to_dict(self, per_plane: bool = True) -> dict:
        """Plain numbers for JSON (angles in degrees)."""
        d = {
            "views": list(self.views),
            "names": list(self.names),
            "score": float(self.score.detach()),
            "relative": float(self.relative.detach()),
            "planes": int(self.valid.numel()),
            "valid_planes": self.n_valid,
            "kappa_range_deg": [math.degrees(float(self.kappa.detach().min())),
                                math.degrees(float(self.kappa.detach().max()))],
        }
        if per_plane:
            d.update(
                kappa_deg=[math.degrees(x) for x in self.kappa.detach().cpu().double().tolist()],
                derivative_a=self.derivative_a.detach().cpu().double().tolist(),
                derivative_b=self.derivative_b.detach().cpu().double().tolist(),
                residual=self.residual.detach().cpu().double().tolist(),
                valid=self.valid.detach().cpu().tolist(),
            )
        return d


@dataclass
class EpipolarConsistency:
    """Result of :func:`epipolar_consistency`: one :class:`EpipolarPair` per pair of views.

    Attributes
    ----------
    pairs : list of EpipolarPair
    score : 0-d Tensor
        Mean of the pairs' scores (differentiable): the number to minimise in a
        self-calibration.
    relative : 0-d Tensor
        Largest relative RMS residual over the pairs (the number a verdict uses).
    """

    pairs: list[EpipolarPair] = field(default_factory=list)
    score: torch.Tensor | None = None
    relative: torch.Tensor | None = None

    def pair(self, a: int, b: int) -> EpipolarPair:
        for p in self.pairs:
            if p.views == (a, b) or p.views == (b, a):
                return p
        raise KeyError(f"no pair ({a}, {b}) in this result; pairs are {[p.views for p in self.pairs]}")

    def to_dict(self, per_plane: bool = True) -> dict:
        return {
            "score": float(self.score.detach()),
            "relative": float(self.relative.detach()),
            "pairs": [p.to_dict(per_plane) for p in self.pairs],
        }


# -- inputs -------------------------------------------------------------------------------------

def _views_and_images(images, geometry) -> tuple[list, list[torch.Tensor], torch.dtype, torch.device]:
    views = list(getattr(geometry, "views", geometry))
    if len(views) < 2:
        raise ValueError(f"epipolar consistency needs at least two views, the geometry has {len(views)}")
    for i, v in enumerate(views):
        if not hasattr(v, "vector") or not hasattr(v, "shape"):
            raise ValueError(f"geometry view {i} is a {type(v).__name__}, not a tomoprior View")
    if isinstance(images, torch.Tensor) or (hasattr(images, "__array__") and not isinstance(images, (list, tuple))):
        arr = torch.as_tensor(images)
        if arr.ndim != 3:
            raise ValueError(f"images must be (views, rows, cols) line integrals, got shape {tuple(arr.shape)}")
        ims = list(arr.unbind(0))
    elif isinstance(images, Sequence):
        ims = [torch.as_tensor(im) for im in images]
    else:
        raise ValueError(f"images must be an array (views, rows, cols) or a list of (rows, cols) arrays, got "
                         f"{type(images).__name__}")
    if len(ims) != len(views):
        raise ValueError(f"{len(ims)} image(s) for a geometry with {len(views)} views; give one per view, in order")
    dtype = views[0].vector.dtype
    for v in views[1:]:
        dtype = torch.promote_types(dtype, v.vector.dtype)
    device = views[0].vector.device
    out = []
    for i, (im, v) in enumerate(zip(ims, views)):
        if im.ndim != 2:
            raise ValueError(f"image {i} must be 2D (rows, cols), got shape {tuple(im.shape)}")
        if tuple(im.shape) != tuple(v.shape):
            raise ValueError(f"image {i} has {tuple(im.shape)} pixels but view {i} ({v.name}) has a detector of "
                             f"{tuple(v.shape)} (rows, cols); give the image of that detector or fix the geometry")
        if not im.is_floating_point():
            im = im.to(torch.float64)
        if not bool(torch.isfinite(im.detach()).all()):
            n = int((~torch.isfinite(im.detach())).sum())
            raise ValueError(f"image {i} has {n} NaN or infinite pixel(s); fix or mask them (line integrals must be "
                             "finite)")
        out.append(im.to(dtype=dtype, device=device))
    return views, out, dtype, device


# -- per-view pieces ------------------------------------------------------------------------------

def _gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(rows, cols)`` with standard deviation ``sigma`` pixels
    (edge pixels replicated, so no artificial edge appears at the detector border)."""
    if sigma <= 0:
        return image
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    im = torch.nn.functional.pad(image[None, None], (radius, radius, radius, radius), mode="replicate")
    im = torch.nn.functional.conv2d(im, kernel[None, None, None, :])
    im = torch.nn.functional.conv2d(im, kernel[None, None, :, None])
    return im[0, 0]


def _weighted_gradients(image: torch.Tensor, vec: torch.Tensor, shape, smoothing: float = 0.0,
                        reach: float = DEFAULT_BORDER,
                        threshold: float = DEFAULT_TRUNCATION) -> tuple[torch.Tensor, torch.Tensor]:
    """``(stack, |u x v|)``: ``stack (3, rows, cols)`` holds d/dcol and d/drow of the blurred,
    cosine-weighted image and 1 where some pixel of the blurred image within ``reach`` exceeds
    ``threshold`` times its peak, else 0 (for the truncation test: a line whose neighbours cross a
    truncated object is not whole either)."""
    rows, cols = shape
    s, c0, u, v = vec[0:3], vec[3:6], vec[6:9], vec[9:12]
    normal = torch.linalg.cross(u, v)
    area = torch.linalg.norm(normal)
    dist = torch.abs(torch.dot(c0 - s, normal / area))
    cc = torch.arange(cols, dtype=vec.dtype, device=vec.device) - (cols - 1) / 2
    rr = torch.arange(rows, dtype=vec.dtype, device=vec.device) - (rows - 1) / 2
    w = (c0 - s) + cc[None, :, None] * u + rr[:, None, None] * v
    blurred = _gaussian_blur(image, smoothing)
    weighted = blurred * (dist / torch.linalg.norm(w, dim=-1))
    g_row, g_col = torch.gradient(weighted, dim=(0, 1))
    r = max(0, math.ceil(reach))
    with torch.no_grad():  # pixels within r of a value above the threshold, by two 1D max passes
        # on the blurred image, so that pixel noise in the background does not count as object
        level = blurred.detach().abs()
        near = (level > threshold * level.max()).to(torch.float32)[None, None]
        if r:
            near = torch.nn.functional.max_pool2d(near, (1, 2 * r + 1), stride=1, padding=(0, r))
            near = torch.nn.functional.max_pool2d(near, (2 * r + 1, 1), stride=1, padding=(r, 0))
        near = near[0, 0].to(image.dtype)
    return torch.stack([g_col, g_row, near]), area


def _kappa_of(points: torch.Tensor, s: torch.Tensor, n0: torch.Tensor, e1: torch.Tensor) -> tuple:
    """Plane angle through each point ``(k, 3)`` and whether the point lies ahead of the baseline."""
    d = points - s
    ahead = d @ e1
    return torch.atan2(-(d @ n0), ahead), ahead


def _detector_corners(vec: torch.Tensor, shape) -> torch.Tensor:
    rows, cols = shape
    c0, u, v = vec[3:6], vec[6:9], vec[9:12]
    out = []
    # the outermost pixel centres: every sampled plane then crosses the sampled image
    for a in (-(cols - 1) / 2, (cols - 1) / 2):
        for b in (-(rows - 1) / 2, (rows - 1) / 2):
            out.append(c0 + a * u + b * v)
    return torch.stack(out)


def _plane_family(va, vb, box_corners: torch.Tensor | None, n_planes: int):
    """``(kappa (P,), normals (P, 3))`` of the pencil of planes about the baseline, clipped to
    the angles that meet both detectors and the box (differentiable in the view vectors)."""
    vec_a, vec_b = va.vector, vb.vector
    sa, sb = vec_a[0:3], vec_b[0:3]
    base = sb - sa
    length = torch.linalg.norm(base)
    if float(length.detach()) < COINCIDENT_MM:
        raise ValueError(f"views {va.name!r} and {vb.name!r} have coincident sources ({float(length.detach()):.3g} mm "
                         "apart): two X-rays from one focal spot define no epipolar planes; check the geometry")
    b = base / length
    # kappa = 0 is the plane through the detector centre of view a: a frame fixed to view a, so a
    # rigid motion of the whole setup, or view b sliding along the baseline, leaves every plane's
    # angle unchanged (those motions are invisible to the images, see the docs)
    q = vec_a[3:6] - sa
    q = q - torch.dot(q, b) * b
    if float(torch.linalg.norm(q.detach())) < 1e-9 * float(length.detach()):
        raise ValueError(f"the source of view {vb.name!r} lies on the central ray of view {va.name!r}: the baseline "
                         "points at the detector, every epipolar line passes through one point; not supported")
    e1 = q / torch.linalg.norm(q)
    n0 = torch.linalg.cross(b, e1)
    lo = torch.full((), -math.pi / 2 + 1e-3, dtype=sa.dtype, device=sa.device)
    hi = -lo
    bounds = [_detector_corners(vec_a, va.shape), _detector_corners(vec_b, vb.shape)]
    if box_corners is not None:
        bounds.append(box_corners)
    for pts in bounds:
        k, ahead = _kappa_of(pts, sa, n0, e1)
        if bool((ahead.detach() > 0).all()):  # else the baseline crosses it: every plane meets it
            lo = torch.maximum(lo, k.min())
            hi = torch.minimum(hi, k.max())
    if not float(hi.detach()) > float(lo.detach()):
        raise ValueError(f"no epipolar plane of views {va.name!r} and {vb.name!r} meets both detectors and the volume; "
                         "the views do not overlap (check the geometry and its grid)")
    frac = (torch.arange(n_planes, dtype=sa.dtype, device=sa.device) + 0.5) / n_planes
    kappa = lo + frac * (hi - lo)
    normals = torch.cos(kappa)[:, None] * n0 + torch.sin(kappa)[:, None] * e1
    return kappa, normals


def _line_derivatives(stack: torch.Tensor, area: torch.Tensor, vec: torch.Tensor, shape, normals: torch.Tensor,
                      step: float, border: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(F (P,), truncated (P,))``: plane-integral derivatives from one view for planes
    through its source with the given unit ``normals (P, 3)``."""
    rows, cols = shape
    s, c0, u, v = vec[0:3], vec[3:6], vec[6:9], vec[9:12]
    alpha, beta = normals @ u, normals @ v
    k2 = alpha * alpha + beta * beta
    k = torch.sqrt(k2)
    nu = torch.stack([alpha, beta], dim=-1) / k[:, None]  # (P, 2) (col, row)
    g0 = normals @ (c0 - s)  # value of w . n at the detector centre
    centre = torch.tensor([(cols - 1) / 2, (rows - 1) / 2], dtype=vec.dtype, device=vec.device)
    foot = centre - (g0 / k)[:, None] * nu
    tang = torch.stack([-nu[:, 1], nu[:, 0]], dim=-1)
    half = math.hypot(rows, cols) / 2
    m = math.ceil(2 * half / step) + 1
    t = (torch.arange(m, dtype=vec.dtype, device=vec.device) - (m - 1) / 2) * step
    pts = foot[:, None, :] + t[None, :, None] * tang[:, None, :]  # (P, M, 2) pixel (col, row)
    # grid_sample's align_corners=True maps pixel centre 0 to -1 and the last to +1
    scale = torch.tensor([2 / max(cols - 1, 1), 2 / max(rows - 1, 1)], dtype=vec.dtype, device=vec.device)
    grid = (pts * scale - 1.0)[None]
    samp = torch.nn.functional.grid_sample(stack[None], grid, mode="bilinear", padding_mode="zeros",
                                           align_corners=True)[0]  # (3, P, M)
    slope = nu[:, 0, None] * samp[0] + nu[:, 1, None] * samp[1]
    deriv = (area / k2) * slope.sum(-1) * step
    with torch.no_grad():
        pc, pr = pts[..., 0], pts[..., 1]
        edge_dist = torch.minimum(torch.minimum(pc, cols - 1 - pc), torch.minimum(pr, rows - 1 - pr))
        inside = edge_dist >= 0
        near_edge = inside & (edge_dist < border)
        hot = samp[2] > 0
        truncated = (near_edge & hot).any(-1) | ~inside.any(-1)
    return deriv, truncated


# -- the public functions ------------------------------------------------------------------------

def epipolar_consistency(images, geometry, *, n_planes: int = DEFAULT_PLANES, step: float = 1.0,
                         pairs: Sequence[tuple[int, int]] | None = None, truncation: float = DEFAULT_TRUNCATION,
                         border: float = DEFAULT_BORDER,
                         smoothing: float = DEFAULT_SMOOTHING) -> EpipolarConsistency:
    """Epipolar consistency of line-integral images with their geometry.

    For each pair of views, ``n_planes`` planes through both sources are sampled; for each,
    the derivative of the object's plane integral is computed from either image (see the
    module docstring for the relation) and the two are compared.

    Parameters
    ----------
    images : Tensor or array ``(views, rows, cols)``, or a list of ``(rows, cols)``
        Line integrals (attenuation x mm, i.e. ``-log(I / I0)``), one per view, each of its
        view's detector shape. Intensities are wrong input (the relation is linear in the
        line integrals).
    geometry : Geometry (or a sequence of View)
        The geometry to check. Its view vectors may carry autograd history (e.g. built from
        :class:`~tomoprior.geometry.ViewParameters` with tensor fields): the scores are then
        differentiable in those parameters. Its ``grid`` bounds the planes sampled.
    n_planes : int
        Planes per pair, spread evenly over the angles whose plane meets both detectors and
        the volume box.
    step : float
        Sample step along each detector line, pixels.
    pairs : sequence of (int, int), optional
        Which pairs; default every pair ``a < b``.
    truncation : float
        A plane is dropped (``valid`` False) when, in either view, its line carries (near) more
        than this fraction of the image's peak within ``border`` pixels of the detector
        edge (the object leaves the detector along it, so its plane integral is not seen
        whole), or when its line misses a detector.
    border : float
        Width of the edge band, pixels. The test uses the image's largest value within
        ``3 * smoothing + 1`` pixels of each point, so a line next to a truncated object (whose
        derivative sees it through the blur) is dropped too.
    smoothing : float
        Standard deviation, pixels, of a Gaussian blur applied to each image before its
        derivative is taken. Sharp object edges sampled on a pixel grid alias into a
        plane-to-plane jitter of the derivatives; a blur of about 1.5 pixels lowers that
        floor about fourfold (exact ellipsoid data, 256^2 pixels: relative residual 1.5e-2
        unblurred, 4.0e-3 at 1.5 px) while keeping the sensitivity to the geometry. 0 turns
        it off.

    Returns
    -------
    EpipolarConsistency
        Per pair: plane angles, both derivatives, residuals, the validity mask, the score
        (mean squared residual) and the relative RMS residual.

    Raises
    ------
    ValueError
        Fewer than two views, an image count or shape that does not match the geometry,
        non-finite pixels, coincident sources, views whose planes do not overlap.

    Examples
    --------
    >>> import tomoprior as tp
    >>> from tomoprior.phantoms import Ellipsoid, Phantom
    >>> geom = tp.BiplanarGeometry.from_parameters(binning=24)     # 64 x 64 pixels of 4.8 mm
    >>> ph = Phantom([Ellipsoid((5, -3, 4), (50, 60, 70), 0.02)])
    >>> ecc = epipolar_consistency(ph.line_integrals(geom), geom, n_planes=32)
    >>> float(ecc.relative) < 0.02
    True
    """
    if isinstance(n_planes, bool) or not isinstance(n_planes, int) or n_planes < 1:
        raise ValueError(f"n_planes must be a positive integer, got {n_planes!r}")
    if not (isinstance(step, (int, float)) and math.isfinite(step) and step > 0):
        raise ValueError(f"step must be a positive number of pixels, got {step!r}")
    if not (isinstance(truncation, (int, float)) and math.isfinite(truncation) and truncation >= 0):
        raise ValueError(f"truncation must be a fraction >= 0 of the image peak, got {truncation!r}")
    if not (isinstance(border, (int, float)) and math.isfinite(border) and border >= 0):
        raise ValueError(f"border must be a number of pixels >= 0, got {border!r}")
    if not (isinstance(smoothing, (int, float)) and math.isfinite(smoothing) and smoothing >= 0):
        raise ValueError(f"smoothing must be a Gaussian sigma >= 0 in pixels, got {smoothing!r}")
    views, ims, dtype, device = _views_and_images(images, geometry)
    grid = getattr(geometry, "grid", None)
    box = torch.as_tensor(grid.corners(), dtype=dtype, device=device) if grid is not None else None
    if pairs is None:
        pairs = [(a, b) for a in range(len(views)) for b in range(a + 1, len(views))]
    pairs = [tuple(p) for p in pairs]
    for p in pairs:
        if len(p) != 2 or not all(isinstance(i, int) and 0 <= i < len(views) for i in p) or p[0] == p[1]:
            raise ValueError(f"pairs must hold two different view indices in 0..{len(views) - 1}, got {p!r}")
    vecs = [v.vector.to(dtype=dtype, device=device) for v in views]
    cache: dict[int, tuple] = {}
    reach = 3.0 * smoothing + 1.0  # the blur and the derivative carry an edge this far

    def per_view(i):
        if i not in cache:
            cache[i] = _weighted_gradients(ims[i], vecs[i], views[i].shape, float(smoothing), reach, truncation)
        return cache[i]

    results = []
    for a, b in pairs:
        va, vb = _VecView(views[a], vecs[a]), _VecView(views[b], vecs[b])
        kappa, normals = _plane_family(va, vb, box, n_planes)
        fa, ta = _line_derivatives(*per_view(a), vecs[a], views[a].shape, normals, step, border)
        fb, tb = _line_derivatives(*per_view(b), vecs[b], views[b].shape, normals, step, border)
        valid = ~(ta | tb)
        res = torch.where(valid, fa - fb, torch.zeros_like(fa))
        nv = valid.sum().clamp(min=1)
        score = (res * res).sum() / nv
        mean = torch.where(valid, 0.5 * (fa + fb), torch.zeros_like(fa))
        signal = (mean * mean).sum() / nv
        relative = torch.sqrt(score) / torch.sqrt(signal).clamp(min=torch.finfo(dtype).tiny)
        if not bool(valid.any()):
            relative = torch.full_like(relative, math.nan)
        results.append(EpipolarPair((a, b), (views[a].name, views[b].name), kappa, fa, fb, res, valid, score,
                                    relative))
    score = torch.stack([p.score for p in results]).mean()
    relative = torch.stack([p.relative for p in results]).max()
    return EpipolarConsistency(results, score, relative)


class _VecView:
    """A view's name, shape and (possibly re-typed) vector."""

    def __init__(self, view, vector):
        self.name, self.shape, self.vector = view.name, view.shape, vector


def plane_derivatives(image, view, normals, *, smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Derivative of the plane integral from one image, for planes through the view's source.

    Parameters
    ----------
    image : Tensor ``(rows, cols)``
        Line integrals of the view.
    view : View
    normals : Tensor ``(planes, 3)``
        Unit plane normals; every plane passes through ``view.source``.
    smoothing : float
        Gaussian blur of the image, pixels (see :func:`epipolar_consistency`).

    Returns
    -------
    (Tensor ``(planes,)``, bool Tensor ``(planes,)``)
        ``d/drho`` of the plane integral along ``+normal`` (dimensionless for line
        integrals in attenuation x mm) and whether the line is truncated.
    """
    vec = view.vector
    im = torch.as_tensor(image).to(dtype=vec.dtype, device=vec.device)
    n = torch.as_tensor(normals).to(dtype=vec.dtype, device=vec.device)
    stack, area = _weighted_gradients(im, vec, view.shape, float(smoothing), 3.0 * smoothing + 1.0)
    return _line_derivatives(stack, area, vec, view.shape, n, 1.0, DEFAULT_BORDER)


def line_integral_check(image) -> str | None:
    """Why ``image`` does not look like line integrals (e.g. intensities), or None.

    Intensity images (transmitted counts or normalised transmission) differ from line
    integrals (``-log(I / I0)``) in ways that are cheap to test: the open-beam background of
    a transmission image is its maximum, so most pixels sit near the peak (values mostly near
    1 after normalisation), and raw counts are integers with a large maximum. Line integrals
    are 0 in the background, so most pixels sit near the minimum.
    """
    t = torch.as_tensor(image).detach().double()
    if t.numel() == 0:
        return "the image is empty"
    lo, hi = float(t.min()), float(t.max())
    if hi <= lo:
        return None
    integer = bool((t == torch.round(t)).all())
    if integer and hi > 255:
        return (f"the pixels are integers up to {hi:.0f}: raw detector counts, not line integrals; convert with "
                "p = -ln(I / I0)")
    frac_high = float((t > lo + 0.9 * (hi - lo)).double().mean())
    frac_low = float((t < lo + 0.1 * (hi - lo)).double().mean())
    near_one = float(((t - 1.0).abs() < 0.05).double().mean())
    if near_one > 0.3 and hi <= 1.05 and lo >= 0:
        return (f"{100 * near_one:.0f} % of the pixels are within 5 % of 1 and none exceeds 1.05: a normalised "
                "transmission image I / I0, not line integrals; convert with p = -ln(I / I0)")
    if frac_high > 0.3 and frac_high > 2 * frac_low:
        return (f"{100 * frac_high:.0f} % of the pixels sit near the image's maximum (the open-beam background of "
                "an intensity image), not near its minimum; convert intensities with p = -ln(I / I0)")
    return None


# -- self-calibration ------------------------------------------------------------------------------

#: Parameters refined by default in every view but the reference: the ones a bi-planar pair
#: determines well and jointly. Across the epipolar lines the detector offset ``v0`` and the
#: source-to-detector distance show at a fraction of a millimetre; the in-plane rotation, the
#: gantry angulation and the tilt about the rows turn the lines. Held by default: ``u0`` (it
#: slides the lines along themselves and trades against rotation and angulation),
#: ``source_to_isocenter`` and ``primary_angle`` (they move the source along or nearly along the
#: baseline, which the images cannot see), ``detector_tilt_v`` (practically invisible).
DEFAULT_SELF_CALIBRATION_FIELDS = ("v0", "source_to_detector", "detector_rotation", "secondary_angle",
                                   "detector_tilt_u")
#: One-sigma prior (mm for lengths, degrees for angles) toward the starting value, applied to a
#: parameter of this field when it is refined; ``v0`` and ``source_to_detector`` get none. The
#: angles are observable but weakly: 1 deg of rotation, angulation or tilt changes the relative
#: residual by 4e-3 to 6e-3, about the discretisation floor of exact 256^2 images, so without a
#: prior they wander by a degree on the floor's jitter. One degree is the size of a mechanical
#: tolerance of a detector mount.
DEFAULT_SELF_CALIBRATION_PRIOR = {"u0": 2.0, "source_to_isocenter": 10.0, "primary_angle": 1.0,
                                  "detector_tilt_v": 1.0, "detector_rotation": 1.0, "secondary_angle": 1.0,
                                  "detector_tilt_u": 1.0}
#: Optimisation step scale per field (mm or degrees): the variables the optimiser sees are the
#: changes divided by these, so that one unit is a typical calibration error of each.
_STEP_SCALE = {"primary_angle": 1.0, "secondary_angle": 1.0, "source_to_isocenter": 10.0,
               "source_to_detector": 10.0, "u0": 1.0, "v0": 1.0, "detector_rotation": 1.0,
               "detector_tilt_u": 1.0, "detector_tilt_v": 1.0}


@dataclass
class SelfCalibrationResult:
    """Result of :func:`self_calibrate`.

    Attributes
    ----------
    geometry : ParametricGeometry
        The refined geometry (plain numbers, no autograd), on the input's grid.
    parameters, start : list of ViewParameters
        Refined and starting parameters per view.
    free : list of (int, str)
        The refined parameters as ``(view index, field)``; every other parameter was held.
    values : dict
        Per refined parameter, keyed ``"view name.field"``: ``start``, ``refined`` and
        ``change`` in mm (lengths) or degrees (angles), and ``unit``.
    relative_before, relative_after : float
        Largest relative RMS residual of a pair (as :attr:`EpipolarConsistency.relative`) at
        the start and at the result.
    score_before, score_after : float
        Mean squared residual (:attr:`EpipolarConsistency.score`) at the start and result.
    objective_before, objective_after : float
        The minimised objective: sum over pairs of (relative residual / ``residual_scale``)^2
        plus the prior's sum of squared sigmas.
    iterations, evaluations : int
        L-BFGS iterations and objective evaluations (each one forward and backward pass).
    converged : bool
        The optimiser stopped on its tolerances before ``max_iterations``.
    reference : int or None
        The view held whole (the gauge), or None when the refined set was given explicitly.
    prior : dict
        ``"view name.field" -> sigma`` (mm or degrees) of the refined parameters that had a prior.
    residual_scale : float
    """

    geometry: object
    parameters: list
    start: list
    free: list
    values: dict
    relative_before: float
    relative_after: float
    score_before: float
    score_after: float
    objective_before: float
    objective_after: float
    iterations: int
    evaluations: int
    converged: bool
    reference: int | None
    prior: dict
    residual_scale: float

    def to_dict(self) -> dict:
        """Plain numbers for JSON (lengths mm, angles degrees)."""
        return {
            "values": self.values,
            "free": [[i, f] for i, f in self.free],
            "relative_before": self.relative_before,
            "relative_after": self.relative_after,
            "score_before": self.score_before,
            "score_after": self.score_after,
            "objective_before": self.objective_before,
            "objective_after": self.objective_after,
            "iterations": self.iterations,
            "evaluations": self.evaluations,
            "converged": self.converged,
            "reference": self.reference,
            "prior": self.prior,
            "residual_scale": self.residual_scale,
            "parameters": [p.to_dict() for p in self.parameters],
        }

    def summary(self) -> str:
        lines = [f"epipolar self-calibration: relative residual {self.relative_before:.3e} -> "
                 f"{self.relative_after:.3e} in {self.iterations} iterations ({self.evaluations} evaluations"
                 f"{'' if self.converged else ', not converged'})"]
        for key, v in self.values.items():
            lines.append(f"  {key:<32} {v['start']:>10.4f} -> {v['refined']:>10.4f} {v['unit']:<3} "
                         f"(change {v['change']:+.4f})")
        return "\n".join(lines)


def _free_parameters(parameters, names: list, reference: int | None) -> tuple[list, int | None]:
    """``[(view index, field), ...]`` from the ``parameters`` argument of :func:`self_calibrate`."""
    fields = set(_STEP_SCALE)

    def check_fields(fs, where):
        if isinstance(fs, str) or not isinstance(fs, (Sequence, set, frozenset)):
            raise ValueError(f"{where} must be a list of parameter names, got {fs!r}")
        bad = sorted({f for f in fs if f not in fields}, key=str)
        if bad:
            hint = " (use the plain name: angles are refined in radians internally and reported in degrees)" \
                if any(isinstance(f, str) and f.endswith("_deg") for f in bad) else ""
            raise ValueError(f"unknown parameter name(s) {bad} in {where}; choose from "
                             f"{list(DEFAULT_SELF_CALIBRATION_FIELDS)} (default) or {sorted(fields)}{hint}")
        return list(dict.fromkeys(fs))

    if parameters is None or (isinstance(parameters, (list, tuple)) and all(isinstance(f, str) for f in parameters)):
        fs = check_fields(DEFAULT_SELF_CALIBRATION_FIELDS if parameters is None else parameters, "parameters")
        ref = 0 if reference is None else reference
        free = [(i, f) for i in range(len(names)) if i != ref for f in fs]
    elif isinstance(parameters, dict):
        if reference is not None:
            raise ValueError("reference applies to a list of parameter names; with a mapping view -> parameters the "
                             "mapping says what is refined in every view (leave reference unset)")
        ref = None
        free = []
        for key, fs in parameters.items():
            if isinstance(key, bool):
                raise ValueError(f"parameters: view key {key!r} is neither a view name nor an index")
            if isinstance(key, int):
                if not 0 <= key < len(names):
                    raise ValueError(f"parameters: view index {key} out of range 0..{len(names) - 1}")
                i = key
            elif key in names:
                i = names.index(key)
            else:
                raise ValueError(f"parameters: unknown view {key!r}; the views are {names} (or give indices)")
            free += [(i, f) for f in check_fields(fs, f"parameters[{key!r}]")]
    else:
        raise ValueError("parameters must be None (the default set), a list of parameter names (refined in every "
                         "view but the reference) or a mapping {view name or index: [names]}, got "
                         f"{type(parameters).__name__}")
    if not free:
        raise ValueError("no parameter to refine: name at least one (e.g. parameters=['v0', 'source_to_detector'])")
    if len(set(free)) != len(free):
        raise ValueError("parameters name a view's parameter twice")
    return free, ref


def self_calibrate(images, geometry, parameters=None, *, reference: int | None = None, prior: dict | None = None,
                   residual_scale: float = 0.01, max_iterations: int = 60, n_planes: int = 128,
                   smoothing: float = DEFAULT_SMOOTHING, truncation: float = DEFAULT_TRUNCATION,
                   border: float = DEFAULT_BORDER) -> SelfCalibrationResult:
    """Refine view parameters so that the X-rays become epipolar-consistent with their geometry.

    The objective is the sum over pairs of ``(relative RMS residual / residual_scale)^2``
    (the relative residual with the signal of the starting geometry as its denominator, so the
    objective is a smooth function of the parameters), plus ``((x - x_start) / sigma)^2``
    for every refined parameter with a prior, minimised by L-BFGS with the exact gradient of
    :func:`epipolar_consistency` through :class:`~tomoprior.geometry.ViewParameters`.

    **Gauge.** The images fix the views only relative to each other: a rigid motion of the
    whole setup and a shift of a view along the line through both sources change nothing,
    and in a bi-planar pair a common change of both views (both ``v0`` together, both
    source-to-detector distances together) changes next to nothing. So by default one view
    (``reference``, view 0) is held whole and the other views refine
    :data:`DEFAULT_SELF_CALIBRATION_FIELDS`: ``v0``, ``source_to_detector``,
    ``detector_rotation``, ``secondary_angle``, ``detector_tilt_u``. Errors of the reference
    view are then absorbed by the others: the result is the right *relative* geometry, whose
    per-parameter values match the truth only when the reference view is right.

    Parameters
    ----------
    images : Tensor or array ``(views, rows, cols)``, or list of ``(rows, cols)``
        Line integrals (attenuation x mm), one per view, as for :func:`epipolar_consistency`.
    geometry : ParametricGeometry
        The starting geometry, with physical parameters (e.g. a BiplanarGeometry).
    parameters : None, list of str, or dict
        What to refine. None: :data:`DEFAULT_SELF_CALIBRATION_FIELDS` in every view but the
        reference. A list of field names (of ``ViewParameters.SCALAR_FIELDS``): those in every
        view but the reference. A mapping ``{view name or index: [field names]}``: exactly
        those (then the gauge is the caller's: refine at most the 11 observable combinations,
        and give weak ones a prior).
    reference : int, optional
        The view held whole with a list of names (default 0).
    prior : dict, optional
        ``field -> sigma`` one-sigma prior toward the start, mm for lengths and degrees for
        angles, for the refined parameters of that field in every view. Default
        :data:`DEFAULT_SELF_CALIBRATION_PRIOR` (``u0`` 2 mm, ``source_to_isocenter`` 10 mm,
        ``primary_angle`` and ``detector_tilt_v`` 1 deg: the weakly observed parameters, when
        refined). ``{}`` turns priors off.
    residual_scale : float
        The relative residual that weighs as much as a one-sigma prior deviation (default
        0.01; exact data have a floor of about 4e-3 at 256^2 pixels, realistic radiographs
        1e-2 to 3e-2).
    max_iterations : int
        L-BFGS iterations (strong Wolfe line search; each iteration one to a few evaluations
        of about 0.1-0.3 CPU s at 256^2 pixels and 128 planes).
    n_planes, smoothing, truncation, border
        As for :func:`epipolar_consistency` (default 128 planes per pair).

    Returns
    -------
    SelfCalibrationResult
        Refined geometry and parameters, per-parameter start/refined values, residuals and
        objective before and after, iterations.

    Raises
    ------
    ValueError
        A geometry without physical parameters, unknown parameter or view names, an empty
        set, a bad ``reference``, ``prior``, ``residual_scale`` or ``max_iterations``, and
        every input error of :func:`epipolar_consistency` (non-finite pixels, shapes, ...).

    Examples
    --------
    >>> import tomoprior as tp
    >>> from tomoprior.phantoms import Ellipsoid, Phantom
    >>> true = tp.BiplanarGeometry.from_parameters(binning=24)
    >>> xr = Phantom([Ellipsoid((5, -3, 4), (50, 60, 70), 0.02)]).line_integrals(true)
    >>> start = true.perturbed({"lateral": {"v0": 1.0}})
    >>> r = self_calibrate(xr, start, ["v0"], n_planes=64)
    >>> abs(float(r.parameters[1].v0)) < 0.2
    True
    """
    from ..geometry import ParametricGeometry

    if not isinstance(geometry, ParametricGeometry):
        raise ValueError(f"self-calibration refines physical view parameters: give a ParametricGeometry (e.g. "
                         f"BiplanarGeometry or Geometry built from ViewParameters), got {type(geometry).__name__}")
    names = [p.name for p in geometry.parameters]
    if len(names) < 2:
        raise ValueError(f"self-calibration needs at least two views, the geometry has {len(names)}")
    if reference is not None and (isinstance(reference, bool) or not isinstance(reference, int)
                                  or not 0 <= reference < len(names)):
        raise ValueError(f"reference must be a view index in 0..{len(names) - 1}, got {reference!r}")
    if not (isinstance(residual_scale, (int, float)) and not isinstance(residual_scale, bool)
            and math.isfinite(residual_scale) and residual_scale > 0):
        raise ValueError(f"residual_scale must be a positive relative residual (e.g. 0.01), got {residual_scale!r}")
    if isinstance(max_iterations, bool) or not isinstance(max_iterations, int) or max_iterations < 1:
        raise ValueError(f"max_iterations must be a positive integer, got {max_iterations!r}")
    free, ref = _free_parameters(parameters, names, reference)
    prior = dict(DEFAULT_SELF_CALIBRATION_PRIOR if prior is None else prior)
    if not isinstance(prior, dict):
        raise ValueError(f"prior must be a mapping field -> sigma (mm or degrees), got {prior!r}")
    for f, s in prior.items():
        if f not in _STEP_SCALE:
            raise ValueError(f"prior: unknown parameter {f!r}; choose from {sorted(_STEP_SCALE)}")
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s <= 0:
            raise ValueError(f"prior[{f!r}] must be a positive sigma in mm or degrees, got {s!r}")

    def detached(p):
        return p.replace(**{f: float(torch.as_tensor(getattr(p, f)).detach()) for f in p.SCALAR_FIELDS})

    start = [detached(p) for p in geometry.parameters]
    grid = geometry.grid
    kw = dict(n_planes=n_planes, smoothing=smoothing, truncation=truncation, border=border)
    # checks the images once (shapes, finiteness) and gives the starting numbers
    with torch.no_grad():
        first = epipolar_consistency(images, ParametricGeometry(grid, start), **kw)
    ims = [im.detach() for im in _views_and_images(images, ParametricGeometry(grid, start))[1]]
    dtype = torch.float64
    ims = [im.to(dtype) for im in ims]
    signal0 = [max(float(p.score.detach()) / max(float(p.relative.detach()), 1e-300) ** 2, 1e-300)
               if math.isfinite(float(p.relative.detach())) and float(p.relative.detach()) > 0 else None
               for p in first.pairs]
    if any(s is None for s in signal0):
        raise ValueError("a pair of views has no valid epipolar plane (every line truncated) or no signal: nothing to "
                         "calibrate on; check that the object is inside both detectors")

    angle_fields = set(type(start[0]).ANGLE_FIELDS)

    def radians(f):
        return f in angle_fields

    unit = [math.radians(_STEP_SCALE[f]) if radians(f) else _STEP_SCALE[f] for _, f in free]
    sig = []
    for _, f in free:
        s = prior.get(f)
        sig.append(None if s is None else (math.radians(s) if radians(f) else float(s)))

    def build(x):
        per_view: list[dict] = [{} for _ in start]
        for k, (i, f) in enumerate(free):
            per_view[i][f] = getattr(start[i], f) + x[k] * unit[k]
        return [p.replace(**d) if d else p for p, d in zip(start, per_view)]

    def objective(x, **extra):
        g = ParametricGeometry(grid, build(x))
        ecc = epipolar_consistency(ims, g, **{**kw, **extra})
        data = sum(p.score / (s * residual_scale ** 2) for p, s in zip(ecc.pairs, signal0))
        reg = sum(((x[k] * unit[k]) / s) ** 2 for k, s in enumerate(sig) if s is not None)
        return data + reg, ecc

    x = torch.zeros(len(free), dtype=dtype, requires_grad=True)
    with torch.no_grad():
        obj0 = float(objective(x)[0])
    best = {"obj": obj0, "x": x.detach().clone()}
    opt = torch.optim.LBFGS([x], lr=1.0, max_iter=max_iterations, max_eval=int(max_iterations * 2.5),
                            tolerance_grad=1e-5, tolerance_change=1e-6, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        try:
            loss, _ = objective(x)
        except ValueError:  # a trial step left the views without common planes: reject it
            return torch.tensor(1e30, dtype=dtype)
        if not bool(torch.isfinite(loss.detach())):
            return torch.tensor(1e30, dtype=dtype)
        loss.backward()
        if float(loss.detach()) < best["obj"]:
            best.update(obj=float(loss.detach()), x=x.detach().clone())
        return loss

    opt.step(closure)
    state = opt.state[opt.param_groups[0]["params"][0]]
    iterations, evaluations = int(state.get("n_iter", 0)), int(state.get("func_evals", 0))
    xb = best["x"]
    refined = [detached(p) for p in build(xb)]
    result_geom = ParametricGeometry.of(grid, refined)
    with torch.no_grad():
        after = epipolar_consistency(ims, result_geom, **kw)
    values = {}
    for i, f in free:
        a, b = float(getattr(start[i], f)), float(getattr(refined[i], f))
        if radians(f):
            a, b = math.degrees(a), math.degrees(b)
        values[f"{names[i]}.{f}"] = {"start": a, "refined": b, "change": b - a, "unit": "deg" if radians(f) else "mm"}
    return SelfCalibrationResult(
        geometry=result_geom, parameters=refined, start=start, free=free, values=values,
        relative_before=float(first.relative), relative_after=float(after.relative),
        score_before=float(first.score), score_after=float(after.score), objective_before=obj0,
        objective_after=best["obj"], iterations=iterations, evaluations=evaluations,
        converged=iterations < max_iterations, reference=ref,
        prior={f"{names[i]}.{f}": prior[f] for i, f in free if f in prior}, residual_scale=float(residual_scale))
