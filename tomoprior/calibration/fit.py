"""Least-squares geometry fit of bead correspondences: per-view 9 DOF plus an optional
phantom pose, with an autograd (forward-mode) Jacobian through
``ViewParameters -> View -> project_points``.

Parameter vector: for each view, its free fields among
:attr:`ViewParameters.SCALAR_FIELDS` (angles in radians, lengths in mm), then, if the pose
is free, the phantom pose ``(w_x, w_y, w_z, t_x, t_y, t_z)``: world point
``X = R(w) X_design + t`` with ``R(w)`` the rotation by ``|w|`` radians about ``w``.

Gauge: a rigid motion of phantom and all views together leaves every image unchanged, so
the pose and the 9 parameters of every view cannot all be free. ``gauge="phantom"`` fixes
the pose (the phantom's design frame is the world frame; 9 free parameters per view);
``gauge="view0"`` frees the pose and fixes the first view's source position and detector
orientation (its two gantry angles, source-to-isocenter distance, detector rotation and
tilts) at their initial values.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from scipy.optimize import least_squares

from .._threads import torch_threads
from ..geometry import ViewParameters
from ..geometry.parameters import UnitsWarning
from ..geometry.view import projection_matrix_from_vector

__all__ = ["GAUGES", "FitOutcome", "FitProblem", "fit_geometry", "rotation_from_vector"]

FIELDS = ViewParameters.SCALAR_FIELDS
ANGLES = set(ViewParameters.ANGLE_FIELDS)
GAUGES = ("phantom", "view0")
VIEW0_FIXED = ("primary_angle", "secondary_angle", "source_to_isocenter", "detector_rotation",
               "detector_tilt_u", "detector_tilt_v")
POSE_NAMES = ("pose_rx", "pose_ry", "pose_rz", "pose_tx", "pose_ty", "pose_tz")


def _num(value) -> float:
    """A ViewParameters field as a Python float, without a float32 round trip."""
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)


def rotation_from_vector(w: torch.Tensor) -> torch.Tensor:
    """Rodrigues: the rotation by ``|w|`` rad about ``w`` (3,), smooth at ``w = 0``."""
    theta2 = (w * w).sum()
    zero = torch.zeros((), dtype=w.dtype)
    k = torch.stack([torch.stack([zero, -w[2], w[1]]), torch.stack([w[2], zero, -w[0]]),
                     torch.stack([-w[1], w[0], zero])])
    small = float(theta2.detach()) < 1e-12
    if small:
        a, b = 1.0 - theta2 / 6.0, 0.5 - theta2 / 24.0
    else:
        theta = torch.sqrt(theta2)
        a, b = torch.sin(theta) / theta, (1.0 - torch.cos(theta)) / theta2
    return torch.eye(3, dtype=w.dtype) + a * k + b * (k @ k)


@dataclass
class FitProblem:
    """Observations and parametrisation of a geometry fit.

    Attributes
    ----------
    initial : list of ViewParameters
    design : ndarray ``(n_beads, 3)`` mm
    observations : list (per view) of ``(bead_index (k,), points (k, 2))`` pixel ``(col, row)``
    free : list (per view) of tuple of field names that are fitted
    fit_pose : bool
    pose0 : ndarray (6,)
    """

    initial: list
    design: np.ndarray
    observations: list
    free: list
    fit_pose: bool
    pose0: np.ndarray
    prior_sigma: np.ndarray | None = None  # optional weak prior toward x0, one sigma per entry

    #: Prior sigmas used while matching (keeps degenerate subsets, e.g. one ring, in place).
    MATCHING_PRIOR: ClassVar[dict] = {"source_to_isocenter": 30.0, "source_to_detector": 30.0, "u0": 10.0, "v0": 10.0}
    MATCHING_PRIOR_ANGLE = math.radians(3.0)

    def with_matching_prior(self) -> FitProblem:
        sig = np.array([self.MATCHING_PRIOR.get(f, self.MATCHING_PRIOR_ANGLE) for _, f in self.names()])
        return dataclasses.replace(self, prior_sigma=sig)

    @classmethod
    def build(cls, initial, design, observations, gauge="phantom", fit_fields=None, pose=None) -> FitProblem:
        if gauge not in GAUGES:
            raise ValueError(f"gauge must be one of {GAUGES}, got {gauge!r}")
        fields = tuple(FIELDS) if fit_fields is None else tuple(fit_fields)
        bad = [f for f in fields if f not in FIELDS]
        if bad:
            raise ValueError(f"fit_fields has unknown name(s) {bad}; choose from {list(FIELDS)}")
        free = []
        for i in range(len(initial)):
            if gauge == "view0" and i == 0:
                free.append(tuple(f for f in fields if f not in VIEW0_FIXED))
            else:
                free.append(fields)
        pose0 = np.zeros(6) if pose is None else np.asarray(pose, dtype=np.float64).reshape(6)
        return cls(list(initial), np.asarray(design, dtype=np.float64), list(observations), free,
                   gauge == "view0", pose0)

    # -- vector <-> parameters ------------------------------------------------------------
    def names(self) -> list:
        out = [(i, f) for i, fr in enumerate(self.free) for f in fr]
        if self.fit_pose:
            out += [(-1, n) for n in POSE_NAMES]
        return out

    def x0(self) -> np.ndarray:
        vals = [_num(getattr(p, f)) for p, fr in zip(self.initial, self.free) for f in fr]
        if self.fit_pose:
            vals += list(self.pose0)
        return np.array(vals, dtype=np.float64)

    def unpack(self, x):
        """``x`` (tensor) -> (list of ViewParameters with tensor fields, pose (6,) tensor)."""
        params, k = [], 0
        for p, fr in zip(self.initial, self.free):
            changes = {f: x[k + j] for j, f in enumerate(fr)}
            k += len(fr)
            params.append(p.replace(**changes))
        pose = x[k:k + 6] if self.fit_pose else torch.as_tensor(self.pose0, dtype=x.dtype)
        return params, pose

    def parameters_at(self, x: np.ndarray) -> tuple[list, np.ndarray]:
        """Plain-float ViewParameters and pose at ``x``."""
        params, pose = self.unpack(torch.as_tensor(x, dtype=torch.float64))
        out = [p.replace(**{f: _num(getattr(p, f)) for f in FIELDS}) for p in params]
        return out, pose.detach().numpy().copy()

    # -- model ----------------------------------------------------------------------------
    def world_points(self, pose: torch.Tensor, design=None) -> torch.Tensor:
        d = torch.as_tensor(self.design if design is None else design, dtype=pose.dtype)
        return d @ rotation_from_vector(pose[:3]).T + pose[3:6]

    def predict(self, x: torch.Tensor) -> list:
        """Per view ``(k, 2)`` predicted pixels of the observed beads."""
        params, pose = self.unpack(x)
        world = self.world_points(pose)
        out = []
        for p, (idx, _) in zip(params, self.observations):
            view = p.to_view()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out.append(view.project_points(world[torch.as_tensor(idx, dtype=torch.long)]))
        return out

    def residual_tensor(self, x: torch.Tensor) -> torch.Tensor:
        preds = self.predict(x)
        parts = [(pr - torch.as_tensor(obs, dtype=pr.dtype)).reshape(-1)
                 for pr, (_, obs) in zip(preds, self.observations)]
        return torch.cat(parts)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Loose physical bounds: distances within a factor 2 of the start, angles +-90 deg
        around it; they only keep a bad start from wandering into invalid geometries."""
        x0 = self.x0()
        lo, hi = np.full_like(x0, -np.inf), np.full_like(x0, np.inf)
        for k, (_, f) in enumerate(self.names()):
            if f in ("source_to_isocenter", "source_to_detector"):
                lo[k], hi[k] = 0.5 * x0[k], 2.0 * x0[k]
            elif f in ANGLES:
                lo[k], hi[k] = x0[k] - math.pi / 2, x0[k] + math.pi / 2
        return lo, hi

    def residuals(self, x: np.ndarray) -> np.ndarray:
        try:
            r = self.residual_tensor(torch.as_tensor(x, dtype=torch.float64)).detach().numpy()
        except ValueError:  # an invalid geometry (e.g. source on the detector): far from any fit
            r = np.full(sum(2 * len(i) for i, _ in self.observations), 1e6)
        if self.prior_sigma is not None:
            r = np.concatenate([r, (np.asarray(x) - self.x0()) / self.prior_sigma])
        # a point behind a source gives NaN: make it a large, finite residual
        return np.where(np.isfinite(r), r, 1e6)

    def jacobian(self, x: np.ndarray) -> np.ndarray:
        """Autograd Jacobian ``(m, len(x))`` of :meth:`residuals`, by the chain rule.

        ``d residuals / d x = d residuals / d (view vectors, pose) @ d (view vectors, pose) / d x``:
        the first factor in closed form through the view's 3x4 projection matrix ``P``
        (pixel = ``(P0.X / P2.X, P1.X / P2.X)``; ``dP / d vector`` by autograd), the second
        by reverse-mode AD through ``ViewParameters.to_view`` (12 backward passes per view).
        A finite-difference test checks the product.
        """
        xt = torch.as_tensor(x, dtype=torch.float64)
        n_x = xt.numel()
        pose_cols = slice(n_x - 6, n_x) if self.fit_pose else None
        pose = xt[n_x - 6:] if self.fit_pose else torch.as_tensor(self.pose0, dtype=torch.float64)
        blocks, k = [], 0
        for p, fr, (idx, _obs) in zip(self.initial, self.free, self.observations):
            xv = xt[k:k + len(fr)].clone().requires_grad_(True)
            cols = slice(k, k + len(fr))
            k += len(fr)
            view = p.replace(**{f: xv[j] for j, f in enumerate(fr)}).to_view()
            vec = view.vector
            jv = torch.zeros(12, len(fr), dtype=torch.float64)
            if len(fr):
                for i in range(12):
                    if vec.requires_grad:
                        g = torch.autograd.grad(vec[i], xv, retain_graph=True, allow_unused=True)[0]
                        if g is not None:
                            jv[i] = g
            vec0 = vec.detach()
            # pixel = (P0.X / P2.X, P1.X / P2.X) with P the 3x4 projection matrix of the view
            jp = torch.autograd.functional.jacobian(
                lambda v, shape=view.shape: projection_matrix_from_vector(v, shape).reshape(-1), vec0)  # (12, 12)
            pm = projection_matrix_from_vector(vec0, view.shape)
            rot = rotation_from_vector(pose[:3].detach())
            design = torch.as_tensor(self.design[idx], dtype=torch.float64).reshape(-1, 3)
            world = design @ rot.T + pose[3:6].detach()
            xh = torch.cat([world, torch.ones(len(world), 1, dtype=torch.float64)], dim=1)
            h = xh @ pm.T
            col, row = h[:, 0] / h[:, 2], h[:, 1] / h[:, 2]
            n = len(world)
            d_dp = torch.zeros(n, 2, 3, 4, dtype=torch.float64)  # d(col,row) / d P
            d_dp[:, 0, 0] = xh / h[:, 2:3]
            d_dp[:, 0, 2] = -col[:, None] * xh / h[:, 2:3]
            d_dp[:, 1, 1] = xh / h[:, 2:3]
            d_dp[:, 1, 2] = -row[:, None] * xh / h[:, 2:3]
            jr_vec = d_dp.reshape(2 * n, 12) @ jp  # (2n, 12)
            jr = jr_vec
            if self.fit_pose:
                d_dx = torch.stack([(pm[0, :3] - col[:, None] * pm[2, :3]) / h[:, 2:3],
                                    (pm[1, :3] - row[:, None] * pm[2, :3]) / h[:, 2:3]], dim=1)  # (n, 2, 3)
                jrot = torch.autograd.functional.jacobian(rotation_from_vector, pose[:3].detach())  # (3, 3, 3)
                dx_dw = torch.einsum("abk,nb->nak", jrot, design)  # (n, 3, 3)
                d_pose = torch.cat([torch.einsum("nij,njk->nik", d_dx, dx_dw), d_dx], dim=2)  # (n, 2, 6)
                jr = torch.cat([jr_vec, d_pose.reshape(2 * n, 6)], dim=1)
            block = torch.zeros(2 * n, n_x, dtype=torch.float64)
            block[:, cols] = jr[:, :12] @ jv
            if pose_cols is not None:
                block[:, pose_cols] = jr[:, 12:]
            blocks.append(block)
        j = torch.cat(blocks, dim=0).numpy()
        j = np.where(np.isfinite(j), j, 0.0)
        if self.prior_sigma is not None:
            j = np.vstack([j, np.diag(1.0 / self.prior_sigma)])
        return j


@dataclass
class FitOutcome:
    x: np.ndarray
    parameters: list
    pose: np.ndarray
    residuals: list  # per view (k, 2)
    covariance: np.ndarray
    sigma: float
    converged: bool
    message: str
    nfev: int
    condition: float
    names: list
    solver_message: str = ""


def single_thread():
    """Run torch on one intra-op thread: the fit works on tensors of a few hundred numbers,
    where thread synchronisation costs more than it saves (4x slower on 2 busy cores)."""
    return torch_threads(1)


def fit_geometry(problem: FitProblem, *, max_nfev: int = 200, x0: np.ndarray | None = None,
                 loss: str = "linear", tol: float = 1e-12, f_scale: float = 1.0) -> FitOutcome:
    """Solve the fit with SciPy's trust-region least squares and estimate the covariance.

    The covariance is ``s^2 (J^T J)^-1`` with ``s^2 = sum r^2 / (m - p)`` from the residuals
    (pixels) at the solution; a rank-deficient ``J`` (gauge not fixed, too few beads) gives
    ``inf`` variances for the unobservable directions and a large condition number.
    """
    x0 = problem.x0() if x0 is None else x0
    m = sum(2 * len(idx) for idx, _ in problem.observations)
    if m <= len(x0):
        raise ValueError(
            f"{m // 2} bead observations give {m} equations for {len(x0)} unknowns; need more matched beads"
        )
    lo, hi = problem.bounds()
    x0 = np.clip(x0, lo, hi)
    with np.errstate(all="ignore"), single_thread():
        sol = least_squares(problem.residuals, x0, jac=problem.jacobian, method="trf", x_scale="jac", bounds=(lo, hi),
                            max_nfev=max_nfev, loss=loss, f_scale=f_scale, xtol=tol, ftol=tol, gtol=min(1e-8, tol))
    x = sol.x
    with single_thread():
        r = problem.residuals(x)[:m]
        jac = problem.jacobian(x)
    dof = max(m - len(x), 1)
    sigma = float(math.sqrt(float(r @ r) / dof))
    jtj = jac.T @ jac
    # scale columns so the condition number reflects geometry, not units
    scale = np.sqrt(np.maximum(np.diag(jtj), 1e-300))
    jn = jtj / np.outer(scale, scale)
    s = np.linalg.svd(jn, compute_uv=False)
    cond = float(s[0] / s[-1]) if s[-1] > 0 else float("inf")
    if cond < 1e13:
        cov = sigma**2 * np.linalg.inv(jn) / np.outer(scale, scale)
    else:
        cov = sigma**2 * np.linalg.pinv(jn, rcond=1e-13) / np.outer(scale, scale)
        w, v = np.linalg.eigh(jn)
        null = v[:, w < 1e-13 * w.max()]
        cov[np.abs(null).sum(1) > 1e-6, :] = np.inf
    with warnings.catch_warnings():
        # a wild intermediate fit (wrong images) may hold large angles: the QA verdict reports it
        warnings.simplefilter("ignore", UnitsWarning)
        params, pose = problem.parameters_at(x)
    preds = problem.predict(torch.as_tensor(x, dtype=torch.float64))
    res = [(pr.detach().numpy() - obs) for pr, (_, obs) in zip(preds, problem.observations)]
    converged = bool(sol.success and sol.status > 0 and np.all(np.isfinite(r)) and float(np.abs(r).max()) < 1e5)
    if converged:
        message = f"the fit converged after {sol.nfev} evaluations: {_STATUS_WORDS.get(sol.status, 'it stopped')}"
    elif sol.status == 0:
        message = (f"the fit did NOT converge: it stopped at the limit of {sol.nfev} evaluations; the result is the "
                   "best estimate found, check its residuals")
    else:
        message = (f"the fit did NOT converge after {sol.nfev} evaluations (residuals not finite or huge); the "
                   "result is the best estimate found, check its residuals")
    return FitOutcome(x, params, pose, res, cov, sigma, converged, message, int(sol.nfev), cond, problem.names(),
                      str(sol.message))


#: SciPy least_squares termination status -> plain words.
_STATUS_WORDS = {
    1: "the gradient vanished (a minimum of the reprojection error)",
    2: "further steps no longer reduce the reprojection error",
    3: "the parameters stopped changing",
    4: "the parameters stopped changing and further steps no longer reduce the reprojection error",
}
