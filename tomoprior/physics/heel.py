"""Anode heel effect: the primary-beam intensity field over a flat detector.

Tube frame (as SpekPy's): the reference axis is the **principal ray**, the perpendicular from
the focal spot onto the detector plane (length ``z`` = source-to-detector distance). For a
pixel at ``w = pixel - source``: ``x = w . a`` along the anode-cathode axis ``a`` (a unit
vector in the detector plane pointing **toward the cathode**), ``y = w . b`` across it
(``b = n x a``), ``z = w . (-n)``; ``tan(alpha) = x / z``, ``tan(beta) = y / z``,
``r = |w|``. The take-off angle of the ray from the anode surface is ``a + alpha`` in the
``x-z`` plane (``a`` = anode angle; ``alpha = th > 0`` toward the cathode).

The intensity field is the product of three factors, each 1 on the principal ray::

    heel(pixel) = emission(alpha, beta) * (z / r)^2 * (z / r)
                  [tube]                  [inverse square] [flat-panel obliquity]

so the purely geometric part is ``cos^3(gamma)``, ``gamma`` the angle between the ray and the
detector normal: ``1/r^2`` relative to the principal ray is ``cos^2(gamma)``, and a flat pixel
tilted by ``gamma`` to the ray intercepts ``cos(gamma)`` of the fluence. SpekPy's off-axis
fluence includes the ``1/r^2`` factor but not the obliquity.

``emission`` is the photon fluence per solid angle relative to the central axis, photon
weighted over the central-axis spectrum ``w(E)`` (SpekPy)::

    emission = A * sum_E w(E) S_E * exp(-tau(E) (r/z - 1))

- ``exp(-tau(E) (r/z - 1))``: the longer oblique path through flat added filtration
  (``tau = sum mu t`` on the axis), as SpekPy does;
- ``S_E``: anode self-filtration. With ``d`` the mean electron penetration depth measured
  along the electron beam (perpendicular depth ``d cos a``) and the escape-path factor
  ``f = r / (x cos a + z sin a)`` (``= 1/sin(a + alpha)`` in the ``x-z`` plane),
  ``depth_profile="single"`` is the textbook formula
  ``S_E = exp(-mu_W(E) d cos(a) [f - 1/sin(a)])``, and ``depth_profile="exponential"``
  (default) averages it over an exponential depth distribution of mean ``d``:
  ``S_E = (1 + mu_W d cos(a) / sin(a)) / (1 + mu_W d cos(a) f)``. No emission where
  ``a + alpha <= 0`` (the anode's shadow).
- ``A = 1 + kappa x / r``: the anisotropy of bremsstrahlung emission (SpekPy's ``casim``
  model emits less toward the cathode side, ``kappa < 0``).

``d`` and ``kappa`` default to smooth functions of kVp fitted once to SpekPy's own off-axis
fluence (``Spek(kvp, th, x=, y=0, z=100)``); :func:`fit_heel_parameters` refits them for a
given tube. ``model="spekpy"`` instead corrects that model by SpekPy itself on a lattice of
directions.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - torch's own idiom
from torch import Tensor

from ..geometry.view import View
from ..units import linear_attenuation
from .spectrum import (
    Spectrum,
    _check_angle,
    _check_filtration,
    _check_kvp,
    _spekpy_fluence_on_the_fly,
    spectrum,
    spekpy_fluence,
)

_MODELS = ("self-filtration", "spekpy")
_PROFILES = ("exponential", "single")
_MAX_ELEMENTS = 1 << 22  # energies x directions evaluated per chunk

# Least-squares fits to SpekPy 2.5.4's full model (casim; Spek(kvp, th, x=, y=0, z=100) with
# 2.5 mm Al) at x = -15..15 cm every 2.5 cm, 40-150 kVp; anode angles 10-20 deg for
# "exponential", 12-16 deg for "single" (docs/physics.md has the table of deviations).
_DEFAULTS = {
    # profile: (d at 70 kVp in um, power of kVp, kappa)
    "exponential": (1.171, 1.943, -0.162),
    "single": (0.751, 1.728, -0.069),
}


@dataclass(frozen=True)
class HeelParameters:
    """Parameters of the self-filtration heel model.

    Attributes
    ----------
    penetration_depth_um : float
        Mean electron penetration depth ``d`` in micrometres of tungsten, measured along the
        electron beam (the perpendicular depth below the anode surface is ``d cos a``).
    emission_anisotropy : float
        ``kappa`` in ``A = 1 + kappa x / r`` (dimensionless; 0 = isotropic).
    depth_profile : {"exponential", "single"}
    """

    penetration_depth_um: float
    emission_anisotropy: float = 0.0
    depth_profile: str = "exponential"

    def __post_init__(self):
        if self.depth_profile not in _PROFILES:
            raise ValueError(f"depth_profile must be one of {_PROFILES}, got {self.depth_profile!r}")
        d = self.penetration_depth_um
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not math.isfinite(d) or d < 0:
            raise ValueError(f"penetration_depth_um must be a finite number >= 0 (micrometres), got {d!r}")
        k = self.emission_anisotropy
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not math.isfinite(k) or abs(k) >= 1:
            raise ValueError(f"emission_anisotropy must be a number in (-1, 1), got {k!r}")


def default_heel_parameters(kvp: float, depth_profile: str = "exponential") -> HeelParameters:
    """Parameters fitted to SpekPy: ``d = d70 (kVp / 70)^p`` micrometres and a constant
    ``kappa`` (see the module docstring and docs/physics.md for the fit)."""
    if depth_profile not in _PROFILES:
        raise ValueError(f"depth_profile must be one of {_PROFILES}, got {depth_profile!r}")
    d70, p, kappa = _DEFAULTS[depth_profile]
    return HeelParameters(d70 * (_check_kvp(kvp) / 70.0) ** p, kappa, depth_profile)


def angular_emission(tan_alpha: Tensor, tan_beta: Tensor, spec: Spectrum, anode_angle_deg: float,
                     parameters: HeelParameters) -> Tensor:
    """Relative photon fluence per solid angle emitted in direction ``(tan alpha, tan beta)``.

    Parameters
    ----------
    tan_alpha, tan_beta : Tensor, same shape
        Direction in the tube frame: ``x / z`` along the anode-cathode axis (+ toward the
        cathode) and ``y / z`` across it.
    spec : Spectrum
        Central-axis spectrum (its ``filter_optical_depth`` sets the filter obliquity term).
    anode_angle_deg : float
    parameters : HeelParameters

    Returns
    -------
    Tensor, same shape: 1 on the axis, 0 in the anode's shadow; no inverse square.
    """
    a = math.radians(_check_angle(anode_angle_deg))
    if not isinstance(spec, Spectrum):
        raise TypeError(f"spec must be a tomoprior.physics.Spectrum, got {type(spec).__name__}")
    ta = tan_alpha if isinstance(tan_alpha, Tensor) else torch.as_tensor(tan_alpha, dtype=torch.float64)
    tb = tan_beta if isinstance(tan_beta, Tensor) else torch.as_tensor(tan_beta, dtype=torch.float64)
    if not bool(torch.isfinite(ta.detach()).all()) or not bool(torch.isfinite(tb.detach()).all()):
        raise ValueError("tan_alpha and tan_beta must be finite")
    ta, tb = torch.broadcast_tensors(ta, tb)
    dtype = torch.promote_types(ta.dtype, torch.float32)
    ta, tb = ta.to(dtype), tb.to(dtype)
    rz = torch.sqrt(1.0 + ta * ta + tb * tb)  # r / z
    denom = ta * math.cos(a) + math.sin(a)  # (x cos a + z sin a) / z
    valid = denom > 0
    f = rz / torch.where(valid, denom, torch.ones_like(denom))
    f0 = 1.0 / math.sin(a)
    e = spec.energies_keV.to(dtype=dtype, device=ta.device)
    w = spec.weights.to(dtype=dtype, device=ta.device)
    tau = spec.filter_optical_depth.to(dtype=dtype, device=ta.device)
    mu_w = linear_attenuation("tungsten", e.detach().clamp(min=1.0)).to(dtype=dtype, device=ta.device)  # 1/mm
    d_perp = parameters.penetration_depth_um * 1e-3 * math.cos(a)  # mm
    flat_f, flat_rz = f.reshape(-1), rz.reshape(-1)
    parts = []
    step = max(1, _MAX_ELEMENTS // max(1, e.numel()))
    # energies x directions at once, in chunks of directions: few large kernels
    for i in range(0, flat_f.numel(), step):
        fc, rc = flat_f[i:i + step][None, :], flat_rz[i:i + step][None, :]
        if parameters.depth_profile == "single":
            sf = torch.exp(-mu_w[:, None] * d_perp * (fc - f0))
        else:
            sf = (1.0 + mu_w[:, None] * d_perp * f0) / (1.0 + mu_w[:, None] * d_perp * fc)
        parts.append((w[:, None] * sf * torch.exp(-tau[:, None] * (rc - 1.0))).sum(0))
    total = torch.cat(parts).reshape(ta.shape) if parts else torch.zeros_like(ta)
    anis = 1.0 + parameters.emission_anisotropy * ta / rz
    return torch.where(valid, anis * total, torch.zeros_like(total))


# -- directions on a detector ---------------------------------------------------------------
def _anode_axis(view: View, direction) -> Tensor:
    """Unit vector in the detector plane pointing from the anode toward the cathode."""
    n = view.normal
    eu = view.u / torch.linalg.norm(view.u)
    ev = view.v / torch.linalg.norm(view.v)
    if isinstance(direction, str):
        table = {"+v": ev, "v": ev, "-v": -ev, "+u": eu, "u": eu, "-u": -eu}
        if direction not in table:
            raise ValueError(f"anode_direction must be one of {sorted(table)} (the detector axis pointing toward "
                             f"the cathode), a (cu, cv) pair in detector axes or a world 3-vector, got {direction!r}")
        a = table[direction]
    else:
        vec = torch.as_tensor(direction, dtype=view.dtype, device=view.device).reshape(-1)
        if not bool(torch.isfinite(vec).all()):
            raise ValueError(f"anode_direction must be finite, got {direction!r}")
        if vec.numel() == 2:
            a = vec[0] * eu + vec[1] * ev
        elif vec.numel() == 3:
            a = vec
        else:
            raise ValueError(f"anode_direction must have 2 (detector axes) or 3 (world) components, got {direction!r}")
    a = a - torch.dot(a, n) * n
    norm = torch.linalg.norm(a)
    if not float(norm.detach()) > 1e-9:
        raise ValueError(f"anode_direction {direction!r} has no component in the detector plane")
    return a / norm


def tube_coordinates(view: View, anode_direction="+v", rows=None, cols=None) -> tuple[Tensor, Tensor, Tensor]:
    """``(x, y, z)`` in mm of pixel positions in the tube frame of one view.

    ``x`` toward the cathode along the anode-cathode axis, ``y`` across it, ``z`` along the
    principal ray (``z`` = source-to-detector distance for every pixel of a flat detector).
    Shapes as :meth:`View.pixel_positions` (``(rows, cols)`` for the full detector).
    """
    n = view.normal
    a = _anode_axis(view, anode_direction)
    b = torch.linalg.cross(n, a)
    basis = torch.stack([a, b, -n])  # (3, 3): rows x, y, z axes
    w0 = basis @ (view.detector_center - view.source)  # (3,) tube coordinates of the detector centre
    du, dv = basis @ view.u, basis @ view.v  # (3,) per column / per row
    dtype, device = view.dtype, view.device
    if rows is None and cols is None:
        # planar detector: coordinates are affine in (row, col); build them from 1-D parts
        # instead of a (rows, cols, 3) array
        c = torch.arange(view.cols, dtype=dtype, device=device) - (view.cols - 1) / 2
        r = torch.arange(view.rows, dtype=dtype, device=device) - (view.rows - 1) / 2
        return tuple(w0[k] + r[:, None] * dv[k] + c[None, :] * du[k] for k in range(3))
    if rows is None or cols is None:
        raise ValueError("give both rows and cols pixel coordinates, or neither for the full detector")
    r = torch.as_tensor(rows, dtype=dtype, device=device) - (view.rows - 1) / 2
    c = torch.as_tensor(cols, dtype=dtype, device=device) - (view.cols - 1) / 2
    return tuple(w0[k] + r * dv[k] + c * du[k] for k in range(3))


def _views(view_or_geometry) -> list[View]:
    if isinstance(view_or_geometry, View):
        return [view_or_geometry]
    views = getattr(view_or_geometry, "views", None)
    if views is None:
        raise TypeError(f"view_or_geometry must be a View or a Geometry, got {type(view_or_geometry).__name__}")
    return list(views)


def _directions(anode_direction, n: int) -> list:
    if isinstance(anode_direction, (list, tuple)) and len(anode_direction) == n and n > 1 and all(
            isinstance(d, (str, list, tuple, Tensor, np.ndarray)) for d in anode_direction):
        return list(anode_direction)
    return [anode_direction] * n


# -- SpekPy correction lattice ----------------------------------------------------------------
_LATTICE_STEP_X = 0.025  # tan(alpha) step of SpekPy's full-model samples (2.5 cm at 1 m)
_LATTICE_STEP_Y = 0.0125


@functools.lru_cache(maxsize=32)
def _spekpy_correction(kvp: float, angle: float, filt: tuple, parameters: HeelParameters, ia0: int, ia1: int,
                       ib0: int, ib1: int) -> np.ndarray:
    """SpekPy emission / model emission on the lattice ``ta = i * 0.025``, ``tb = j * 0.0125``.

    SpekPy's emission: its full model ``Spek(x=100 ta, y=0, z=100)`` along the anode-cathode
    axis times the transverse dependence of its fast on-the-fly update, with ``1/r^2``
    removed. Returns ``(nb, na)`` ratios (1 where either emission is zero).
    """
    ta = np.arange(ia0, ia1 + 1) * _LATTICE_STEP_X
    tb = np.arange(ib0, ib1 + 1) * _LATTICE_STEP_Y
    fl = dict(filt)
    z = 100.0
    f0 = spekpy_fluence(kvp, angle, fl, 0.0, 0.0, z)
    axis = np.array([spekpy_fluence(kvp, angle, fl, z * t, 0.0, z) / f0 * (1 + t * t) for t in ta])
    o0 = _spekpy_fluence_on_the_fly(kvp, angle, filt, 0.5, 0.0, 0.0, z)
    otf = np.array([[_spekpy_fluence_on_the_fly(kvp, angle, filt, 0.5, z * t, z * s, z) / o0 * (1 + t * t + s * s)
                     for t in ta] for s in tb])
    with np.errstate(invalid="ignore", divide="ignore"):
        ref = axis[None, :] * otf / otf[np.argmin(np.abs(tb))][None, :]
        spec = spectrum(kvp, angle, fl)
        TB, TA = np.meshgrid(tb, ta, indexing="ij")
        model = angular_emission(torch.as_tensor(TA), torch.as_tensor(TB), spec, angle, parameters).numpy()
        ratio = np.where((model > 1e-6) & np.isfinite(ref) & (ref > 0), ref / model, 1.0)
    return ratio


def _spekpy_factor(ta: Tensor, tb: Tensor, kvp, angle, filt, parameters) -> Tensor:
    tad, tbd = ta.detach(), tb.detach()
    ia0 = math.floor(float(tad.min()) / _LATTICE_STEP_X) - 1
    ia1 = math.ceil(float(tad.max()) / _LATTICE_STEP_X) + 1
    ib0 = math.floor(float(tbd.abs().max()) / _LATTICE_STEP_Y) + 1
    ratio = torch.as_tensor(_spekpy_correction(kvp, angle, filt, parameters, ia0, ia1, -ib0, ib0),
                            dtype=ta.dtype, device=ta.device)
    # grid_sample coordinates in [-1, 1] spanning the lattice end points
    gx = 2.0 * (tad / _LATTICE_STEP_X - ia0) / (ia1 - ia0) - 1.0
    gy = 2.0 * (tbd / _LATTICE_STEP_Y + ib0) / (2 * ib0) - 1.0
    grid = torch.stack([gx, gy], dim=-1).reshape(1, 1, -1, 2)
    out = F.grid_sample(ratio[None, None], grid, mode="bilinear", align_corners=True)
    return out.reshape(ta.shape)


# -- public -----------------------------------------------------------------------------------
def heel_effect(view_or_geometry, anode_angle_deg: float = 12.0, anode_direction="+v", *, kvp: float = 70.0,
                filtration: Mapping[str, float] | None = None, model: str = "self-filtration",
                parameters: HeelParameters | None = None, depth_profile: str = "exponential",
                inverse_square: bool = True, obliquity: bool = True, max_grid: int = 128):
    """Heel-effect intensity field over the detector(s), 1.0 on the principal ray.

    Parameters
    ----------
    view_or_geometry : View or Geometry
    anode_angle_deg : float
        Anode angle ``a`` in degrees (1-45; typical 7-20).
    anode_direction : str, (cu, cv) or (x, y, z), or one per view
        Direction in the detector plane pointing from the anode toward the **cathode**
        (intensity rises that way). ``"+v"`` (default) = toward increasing row index (for
        the default PA view: toward the patient's feet, so the anode is at the top of the
        image); ``"-v"``, ``"+u"``, ``"-u"``; a pair of components along the detector's unit
        ``u`` and ``v`` axes; or a world vector (projected onto the detector plane).
    kvp : float
        Tube potential in kV (sets the spectrum and the penetration depth).
    filtration : dict, optional
        Added filtration (SpekPy names, mm); default ``{"Al": 2.5}``.
    model : {"self-filtration", "spekpy"}
        ``"self-filtration"``: the analytic model of the module docstring (fast).
        ``"spekpy"``: that model times a correction sampled from SpekPy itself on a lattice
        of directions (its full model along the anode-cathode axis every 0.025 in
        ``tan alpha``); about one SpekPy run (~0.5 s) per lattice column, cached.
    parameters : HeelParameters, optional
        Override ``d`` and ``kappa`` (default :func:`default_heel_parameters` for ``kvp``).
    depth_profile : {"exponential", "single"}
        Used when ``parameters`` is not given.
    inverse_square, obliquity : bool
        Include ``(z/r)^2`` and the flat-panel ``z/r`` factors (both default True).
    max_grid : int
        The (smooth) emission factor is evaluated on at most ``max_grid`` x ``max_grid``
        detector points and bilinearly interpolated (the geometric factors are exact per
        pixel; the interpolation error is ~1e-5 except right at the anode-shadow edge);
        detectors no larger than that are evaluated at every pixel.

    Returns
    -------
    Tensor ``(views, rows, cols)`` (a tuple of ``(rows, cols)`` tensors if detector shapes
    differ), dimensionless, in the views' dtype; differentiable in the view vectors.

    Raises
    ------
    ValueError, TypeError
        Unknown model or direction, out-of-range kVp or angle, a direction normal to the
        detector, a non-View input.

    Examples
    --------
    >>> import tomoprior as tp
    >>> view = tp.View((0, 0, 1000.0), (0, 0, 0), (0, 3.0, 0), (3.0, 0, 0), (101, 101))
    >>> h = heel_effect(view, 12.0, "+v", kvp=70)
    >>> round(float(h[0, 50, 50]), 6), bool(h[0, 0, 50] < 1 < h[0, 75, 50])
    (1.0, True)
    """
    if model not in _MODELS:
        raise ValueError(f"model must be one of {_MODELS}, got {model!r}")
    angle = _check_angle(anode_angle_deg)
    k = _check_kvp(kvp)
    filt = _check_filtration({"Al": 2.5} if filtration is None else filtration)
    if parameters is None:
        parameters = default_heel_parameters(k, depth_profile)
    elif not isinstance(parameters, HeelParameters):
        raise TypeError(f"parameters must be a HeelParameters, got {type(parameters).__name__}")
    if isinstance(max_grid, bool) or not isinstance(max_grid, int) or max_grid < 2:
        raise ValueError(f"max_grid must be an int >= 2, got {max_grid!r}")
    views = _views(view_or_geometry)
    directions = _directions(anode_direction, len(views))
    spec = spectrum(k, angle, dict(filt))
    maps = []
    for view, direction in zip(views, directions):
        rows, cols = view.shape
        x, y, z = tube_coordinates(view, direction)
        rz = torch.sqrt(x * x + y * y + z * z) / z
        geometric = torch.ones_like(rz)
        if inverse_square:
            geometric = geometric / rz**2
        if obliquity:
            geometric = geometric / rz
        nr, nc = min(rows, max_grid), min(cols, max_grid)
        if (nr, nc) == (rows, cols):
            ta, tb = x / z, y / z
        else:
            r = torch.linspace(0, rows - 1, nr, dtype=view.dtype, device=view.device)
            c = torch.linspace(0, cols - 1, nc, dtype=view.dtype, device=view.device)
            rr, cc = torch.meshgrid(r, c, indexing="ij")
            xs, ys, zs = tube_coordinates(view, direction, rr, cc)
            ta, tb = xs / zs, ys / zs
        emission = angular_emission(ta, tb, spec, angle, parameters)
        if model == "spekpy":
            emission = emission * _spekpy_factor(ta, tb, k, angle, filt, parameters)
        if emission.shape != (rows, cols):
            emission = F.interpolate(emission[None, None], size=(rows, cols), mode="bilinear",
                                     align_corners=True)[0, 0]
        maps.append(emission.to(geometric.dtype) * geometric)
    if len({tuple(m.shape) for m in maps}) == 1:
        return torch.stack(maps)
    return tuple(maps)


def spekpy_heel_profile(offsets_cm: Sequence[float], kvp: float = 70.0, anode_angle_deg: float = 12.0,
                        filtration: Mapping[str, float] | None = None, z_cm: float = 100.0, *,
                        on_the_fly: bool = False) -> np.ndarray:
    """SpekPy's relative fluence at ``x = offsets_cm`` (y = 0) along the anode-cathode axis,
    ``F(x) / F(0)``, including ``1/r^2`` (SpekPy's quantity). One SpekPy run per point
    unless ``on_the_fly``."""
    f0 = spekpy_fluence(kvp, anode_angle_deg, filtration, 0.0, 0.0, z_cm, on_the_fly=on_the_fly)
    return np.array([spekpy_fluence(kvp, anode_angle_deg, filtration, float(x), 0.0, z_cm, on_the_fly=on_the_fly)
                     for x in offsets_cm]) / f0


def model_heel_profile(offsets_cm: Sequence[float], kvp: float = 70.0, anode_angle_deg: float = 12.0,
                       filtration: Mapping[str, float] | None = None, z_cm: float = 100.0, *,
                       parameters: HeelParameters | None = None, depth_profile: str = "exponential") -> np.ndarray:
    """The self-filtration model's ``emission * (z/r)^2`` at ``x = offsets_cm`` (y = 0): the
    same quantity as :func:`spekpy_heel_profile`."""
    k, a = _check_kvp(kvp), _check_angle(anode_angle_deg)
    filt = _check_filtration({"Al": 2.5} if filtration is None else filtration)
    params = parameters if parameters is not None else default_heel_parameters(k, depth_profile)
    ta = torch.as_tensor(np.asarray(offsets_cm, dtype=np.float64) / float(z_cm))
    e = angular_emission(ta, torch.zeros_like(ta), spectrum(k, a, dict(filt)), a, params)
    return (e / (1.0 + ta * ta)).numpy()


def fit_heel_parameters(kvp: float = 70.0, anode_angle_deg: float = 12.0,
                        filtration: Mapping[str, float] | None = None, *, depth_profile: str = "exponential",
                        offsets_cm: Sequence[float] = (-15, -10, -5, 5, 10, 15), z_cm: float = 100.0,
                        fit_anisotropy: bool = True) -> tuple[HeelParameters, float]:
    """Fit ``d`` (and ``kappa``) of the self-filtration model to SpekPy's full-model off-axis
    fluence at ``offsets_cm`` along the anode-cathode axis (least squares on relative error).

    Returns
    -------
    (HeelParameters, max relative deviation at the fitted points)
    """
    from scipy.optimize import least_squares

    if depth_profile not in _PROFILES:
        raise ValueError(f"depth_profile must be one of {_PROFILES}, got {depth_profile!r}")
    k, a = _check_kvp(kvp), _check_angle(anode_angle_deg)
    filt = _check_filtration({"Al": 2.5} if filtration is None else filtration)
    xs = np.asarray(offsets_cm, dtype=np.float64)
    ref = spekpy_heel_profile(xs, k, a, dict(filt), z_cm)
    ok = ref > 0
    if ok.sum() < 2:
        raise ValueError("SpekPy gives no emission at the chosen offsets; choose offsets inside the field")
    start = default_heel_parameters(k, depth_profile)

    def resid(p):
        kappa = p[1] if fit_anisotropy else 0.0
        params = HeelParameters(float(p[0]), float(kappa), depth_profile)
        return model_heel_profile(xs[ok], k, a, dict(filt), z_cm, parameters=params) / ref[ok] - 1.0

    x0 = [start.penetration_depth_um, start.emission_anisotropy if fit_anisotropy else 0.0]
    sol = least_squares(resid, x0, bounds=([1e-4, -0.9], [100.0, 0.9]))
    params = HeelParameters(float(sol.x[0]), float(sol.x[1]) if fit_anisotropy else 0.0, depth_profile)
    return params, float(np.abs(sol.fun).max())
