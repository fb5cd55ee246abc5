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
    "epipolar_consistency",
    "line_integral_check",
    "plane_derivatives",
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
