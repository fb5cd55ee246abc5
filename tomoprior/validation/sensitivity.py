"""How far the image of a head-sized volume moves when one calibrated parameter is off.

For each continuous field of :class:`~tomoprior.geometry.ViewParameters` (and the
isocenter offset), the table gives the mean and maximum pixel displacement of the
projections of points filling a 150 mm sphere, for a stated parameter error. The
displacement is the exact difference of :meth:`View.project_points` before and after the
change; the linearised value ``|J * step|`` from the autograd Jacobian is reported beside it
as a check. :func:`fit_conditioning` uses the same Jacobian over a bead design to give the
predicted parameter uncertainty and the conditioning of the per-view fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..geometry.parameters import ViewParameters

__all__ = [
    "DEFAULT_STEPS",
    "REFERENCE_PX",
    "FitConditioning",
    "SensitivityRow",
    "fit_conditioning",
    "head_points",
    "parameter_jacobian",
    "sensitivity_table",
]

#: Parameter error per row of the table: (parameter, step, unit shown, step in code units).
#: ``px`` steps of the detector offset (u0, v0) are one detector pixel of the view.
DEFAULT_STEPS = (
    ("u0", 1.0, "px"),
    ("v0", 1.0, "px"),
    ("source_to_isocenter", 1.0, "mm"),
    ("source_to_detector", 1.0, "mm"),
    ("detector_rotation", 0.1, "deg"),
    ("detector_tilt_u", 1.0, "deg"),
    ("detector_tilt_v", 1.0, "deg"),
    ("primary_angle", 0.1, "deg"),
    ("secondary_angle", 0.1, "deg"),
    ("isocenter_x", 1.0, "mm"),
    ("isocenter_y", 1.0, "mm"),
    ("isocenter_z", 1.0, "mm"),
)

#: Published mean displacements (px) over a head-sized volume at 0.15 mm pixels for a simulated
#: AP + lateral pair, for the step sizes of :data:`DEFAULT_STEPS`.
REFERENCE_PX = {
    "u0": 1.0, "v0": 1.0, "detector_rotation": 0.73, "source_to_isocenter": 0.42,
    "source_to_detector": 0.28, "detector_tilt_u": 0.2, "detector_tilt_v": 0.2,
}
#: Pixel pitch (mm) at which :data:`REFERENCE_PX` were computed.
REFERENCE_PITCH_MM = 0.15

#: Parameters the per-view calibration fits (the 9 DOF of a view).
VIEW_DOF = ("primary_angle", "secondary_angle", "source_to_isocenter", "source_to_detector", "u0", "v0",
            "detector_rotation", "detector_tilt_u", "detector_tilt_v")


def head_points(diameter_mm: float = 150.0, spacing_mm: float = 10.0, center=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Points of a regular grid filling a ball: a stand-in for a head.

    Parameters
    ----------
    diameter_mm : float
        Ball diameter (default 150 mm, an adult-sized head; the pediatric default is smaller,
        so the numbers are an upper estimate for children).
    spacing_mm : float
        Grid spacing.
    center : (x, y, z), mm

    Returns
    -------
    ndarray ``(n, 3)``, mm

    Examples
    --------
    >>> p = head_points(100.0, 10.0)
    >>> bool((np.linalg.norm(p, axis=1) <= 50.0).all()), len(p) > 400
    (True, True)
    """
    if not (diameter_mm > 0 and spacing_mm > 0):
        raise ValueError(f"diameter_mm and spacing_mm must be > 0, got {diameter_mm}, {spacing_mm}")
    r = diameter_mm / 2
    k = math.floor(r / spacing_mm)
    ax = np.arange(-k, k + 1) * spacing_mm
    g = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), axis=-1).reshape(-1, 3)
    g = g[np.linalg.norm(g, axis=1) <= r + 1e-9]
    return g + np.asarray(center, dtype=np.float64)


def _split(name: str) -> tuple[str, int | None]:
    if name.startswith("isocenter_"):
        return "isocenter", "xyz".index(name[-1])
    return name, None


def _step_in_code_units(params: ViewParameters, name: str, step: float, unit: str) -> float:
    if unit == "deg":
        return math.radians(step)
    if unit == "px":
        pr, pc = params.pitch
        return step * (pc if name == "u0" else pr)
    if unit == "mm":
        return step
    raise ValueError(f"unknown unit {unit!r} for {name}; use 'mm', 'deg' or 'px'")


def _perturbed(params: ViewParameters, name: str, delta) -> ViewParameters:
    field, axis = _split(name)
    if field not in ViewParameters.SCALAR_FIELDS and field != "isocenter":
        raise ValueError(
            f"unknown parameter {name!r}; choose from {list(ViewParameters.SCALAR_FIELDS)} or isocenter_x/y/z"
        )
    if axis is None:
        return params.replace(**{field: getattr(params, field) + delta})
    iso = params.isocenter
    if not isinstance(iso, torch.Tensor):
        iso = torch.as_tensor(iso, dtype=torch.float64)
    e = torch.zeros(3, dtype=torch.float64)
    e[axis] = 1.0
    return params.replace(isocenter=iso + delta * e)


def parameter_jacobian(params: ViewParameters, points, names=VIEW_DOF) -> torch.Tensor:
    """Autograd Jacobian of the pixel coordinates of ``points`` w.r.t. view parameters.

    Parameters
    ----------
    params : ViewParameters
    points : array-like ``(n, 3)``, mm
    names : sequence of str
        Parameter names (fields of ViewParameters or ``isocenter_x/y/z``), in code units
        (mm, rad).

    Returns
    -------
    Tensor ``(n, 2, len(names))``
        ``d (col, row) / d parameter``, px per mm or px per rad.
    """
    pts = torch.as_tensor(np.asarray(points, dtype=np.float64))

    def f(theta):
        p = params
        for i, name in enumerate(names):
            p = _perturbed(p, name, theta[i])
        return p.to_view().project_points(pts)

    # Columns by the double-backward trick: g(w) = J^T w is linear in w, so d g_k / d w is
    # column k of J. Two reverse passes per parameter, no forward-mode AD (whose first use
    # pulls in torch._dynamo, several seconds of import).
    theta = torch.zeros(len(names), dtype=torch.float64, requires_grad=True)
    y = f(theta)
    w = torch.zeros_like(y, requires_grad=True)
    (g,) = torch.autograd.grad(y, theta, w, create_graph=True)
    cols = []
    for k in range(len(names)):
        if not g[k].requires_grad:  # the images do not depend on this parameter
            cols.append(torch.zeros_like(y))
            continue
        (col,) = torch.autograd.grad(g[k], w, retain_graph=True, allow_unused=True)
        cols.append(torch.zeros_like(y) if col is None else col.detach())
    return torch.stack(cols, dim=-1)


@dataclass
class SensitivityRow:
    """One line of the sensitivity table (displacements in pixels of that view)."""

    view: str
    parameter: str
    step: float
    unit: str
    mean_px: float
    max_px: float
    linear_mean_px: float
    mean_mm: float
    reference_px: float | None
    reference_at_pitch_px: float | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def sensitivity_table(parameters, points=None, steps=DEFAULT_STEPS) -> list[SensitivityRow]:
    """Image displacement caused by each parameter error, per view.

    Parameters
    ----------
    parameters : ViewParameters or sequence of them
        The views (e.g. ``BiplanarGeometry.parameters``).
    points : array-like ``(n, 3)``, optional
        World points, mm. Default :func:`head_points` (a 150 mm ball at the isocenter).
    steps : sequence of ``(parameter, step, unit)``
        Unit ``"mm"``, ``"deg"`` or ``"px"`` (one pixel of the view, detector offset only).

    Returns
    -------
    list of SensitivityRow
        ``mean_px`` / ``max_px``: mean and maximum over the points of the exact displacement
        ``|project(p + step) - project(p)|``; ``linear_mean_px``: the same from the autograd
        Jacobian; ``mean_mm``: ``mean_px`` times the view's mean pixel pitch; ``reference_px``:
        the published value (at 0.15 mm pixels) when there is one; ``reference_at_pitch_px``: that
        value converted to this view's pixel pitch (detector-offset rows unchanged).

    Examples
    --------
    >>> import tomoprior as tp
    >>> rows = sensitivity_table(tp.ViewParameters(name="pa"), steps=[("u0", 1.0, "px")])
    >>> round(rows[0].mean_px, 9), round(rows[0].max_px, 9)
    (1.0, 1.0)
    """
    if isinstance(parameters, ViewParameters):
        parameters = [parameters]
    pts = head_points() if points is None else np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points must have shape (n, 3) in mm, got {pts.shape}")
    rows = []
    for vi, p in enumerate(parameters):
        if not isinstance(p, ViewParameters):
            raise ValueError(f"parameters[{vi}] must be ViewParameters, got {type(p).__name__}")
        view = p.to_view()
        base = view.project_points(torch.as_tensor(pts)).detach()
        names = [s[0] for s in steps]
        deltas = [_step_in_code_units(p, n, s, u) for n, s, u in steps]
        J = parameter_jacobian(p, pts, names).detach()  # (n, 2, k)
        pitch = float(np.mean(view.pixel_pitch))
        for k, ((name, step, unit), delta) in enumerate(zip(steps, deltas)):
            moved = _perturbed(p, name, delta).to_view().project_points(torch.as_tensor(pts)).detach()
            d = torch.linalg.norm(moved - base, dim=-1)
            lin = torch.linalg.norm(J[:, :, k] * delta, dim=-1)
            ref = REFERENCE_PX.get(name)
            ref_here = None if ref is None else (ref if unit == "px" else ref * REFERENCE_PITCH_MM / pitch)
            rows.append(SensitivityRow(
                view=p.name, parameter=name, step=float(step), unit=unit, mean_px=float(d.mean()),
                max_px=float(d.max()), linear_mean_px=float(lin.mean()), mean_mm=float(d.mean()) * pitch,
                reference_px=ref, reference_at_pitch_px=ref_here,
            ))
    return rows


@dataclass
class FitConditioning:
    """Conditioning of a per-view 9-DOF fit to a bead design (phantom frame fixed).

    Attributes
    ----------
    view : str
    parameters : list of str
        The fitted parameters, in the order of the matrices.
    condition_number : float
        Ratio of the largest to the smallest singular value of the Jacobian with each
        column scaled to unit norm (scale-free; large means nearly redundant parameters).
    singular_values : list of float
        Of the column-scaled Jacobian.
    predicted_sd : dict
        Predicted 1-sigma uncertainty per parameter for centroid noise ``sigma_px`` per axis
        (mm for lengths, deg for angles).
    correlation : list of list of float
        Parameter correlation matrix from ``(J^T J)^-1``.
    max_abs_correlation : tuple
        ``(|rho|, name_a, name_b)`` of the most correlated pair.
    sigma_px : float
    n_points : int
    """

    view: str
    parameters: list
    condition_number: float
    singular_values: list
    predicted_sd: dict
    correlation: list
    max_abs_correlation: tuple
    sigma_px: float
    n_points: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def fit_conditioning(params: ViewParameters, points, sigma_px: float = 0.1, names=VIEW_DOF) -> FitConditioning:
    """Predicted uncertainty and conditioning of fitting ``names`` of one view to beads.

    Parameters
    ----------
    params : ViewParameters
        The view at which to linearise.
    points : array-like ``(n, 3)``
        Bead centres in the world frame, mm (only those seen by the view matter).
    sigma_px : float
        Centroid noise per axis, px.
    names : sequence of str

    Returns
    -------
    FitConditioning
    """
    pts = np.asarray(points, dtype=np.float64)
    J = parameter_jacobian(params, pts, names).detach().numpy().reshape(-1, len(names))
    ok = np.isfinite(J).all(axis=1)
    J = J[ok]
    norms = np.linalg.norm(J, axis=0)
    norms[norms == 0] = 1.0
    s = np.linalg.svd(J / norms, compute_uv=False)
    cond = float(s[0] / s[-1]) if s[-1] > 0 else math.inf
    cov = sigma_px**2 * np.linalg.pinv(J.T @ J)
    sd = np.sqrt(np.clip(np.diag(cov), 0, None))
    corr = cov / np.outer(sd, sd).clip(min=1e-300)
    iu = np.triu_indices(len(names), 1)
    k = int(np.argmax(np.abs(corr[iu])))
    pair = (float(abs(corr[iu][k])), names[iu[0][k]], names[iu[1][k]])
    shown = {n: (math.degrees(v) if n in ViewParameters.ANGLE_FIELDS else float(v)) for n, v in zip(names, sd)}
    return FitConditioning(
        view=params.name, parameters=list(names), condition_number=cond, singular_values=[float(x) for x in s],
        predicted_sd=shown, correlation=[[float(x) for x in r] for r in corr], max_abs_correlation=pair,
        sigma_px=float(sigma_px), n_points=int(ok.sum() // 2),
    )
