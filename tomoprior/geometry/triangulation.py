"""Triangulation: 3D points from their pixel images in two or more views."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .geometry import Geometry
from .grid import VolumeGrid
from .parameters import ViewParameters
from .view import View

__all__ = ["triangulate"]


def _as_geometry(views) -> Geometry:
    if isinstance(views, Geometry):
        return views
    if isinstance(views, (View, ViewParameters)):
        views = [views]
    if not isinstance(views, Sequence) or not views:
        raise ValueError("triangulate needs a Geometry or a sequence of View / ViewParameters (two or more)")
    out = []
    for i, v in enumerate(views):
        if isinstance(v, ViewParameters):
            v = v.to_view()
        if not isinstance(v, View):
            raise ValueError(f"views[{i}] must be a View or ViewParameters, got {type(v).__name__}")
        out.append(v.detach().to(torch.float64))
    import warnings

    # the grid plays no part in triangulation: a tiny one, so no source can sit inside it
    grid = VolumeGrid(shape=(1, 1, 1), spacing=(1e-3, 1e-3, 1e-3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Geometry(grid, out)


def _as_observed(observed, n_views: int) -> list[np.ndarray]:
    if isinstance(observed, (np.ndarray, torch.Tensor)) and np.ndim(observed) == 3:
        observed = list(observed)
    if len(observed) != n_views:
        raise ValueError(f"observed has {len(observed)} view(s) but there are {n_views} views")
    out = []
    n = None
    for i, o in enumerate(observed):
        a = o.detach().cpu().numpy() if isinstance(o, torch.Tensor) else np.asarray(o, dtype=np.float64)
        a = np.asarray(a, dtype=np.float64)
        if a.ndim != 2 or a.shape[1] != 2 or (n is not None and a.shape[0] != n):
            raise ValueError(f"observed[{i}] must have shape (n, 2) (col, row), the same n in every view; "
                             f"got {a.shape}")
        n = a.shape[0]
        out.append(a)
    return out


def triangulate(views, observed, *, refine: bool = True) -> np.ndarray:
    """3D points from their images in two or more views.

    Linear (DLT) triangulation from the views' projection matrices, then (``refine``)
    Gauss-Newton on the pixel reprojection error with exact ``project_points``.

    Parameters
    ----------
    views : Geometry, or sequence of View or ViewParameters
    observed : sequence of array-like ``(n, 2)``, one per view
        ``(col, row)`` of the same n points in each view; NaN where not seen.

    Returns
    -------
    ndarray ``(n, 3)``
        World ``(x, y, z)`` in mm; NaN for points seen in fewer than two views.
    """
    geometry = _as_geometry(views)
    P = geometry.projection_matrices().detach().cpu().double().numpy()
    obs = _as_observed(observed, geometry.num_views)
    n = obs[0].shape[0]
    out = np.full((n, 3), np.nan)
    for k in range(n):
        rows = []
        for Pi, o in zip(P, obs):
            c, r = o[k]
            if np.isfinite(c) and np.isfinite(r):
                # normalise each view's rows so views with long vectors don't dominate
                a1, a2 = c * Pi[2] - Pi[0], r * Pi[2] - Pi[1]
                rows += [a1 / np.linalg.norm(a1[:3]), a2 / np.linalg.norm(a2[:3])]
        if len(rows) < 4:
            continue
        _, _, vt = np.linalg.svd(np.asarray(rows))
        X = vt[-1]
        if abs(X[3]) < 1e-300:
            continue
        out[k] = X[:3] / X[3]
    if refine:
        out = _refine(geometry, obs, out)
    return out


def _refine(geometry: Geometry, obs: list[np.ndarray], X0: np.ndarray, iterations: int = 5) -> np.ndarray:
    ok = np.isfinite(X0).all(axis=1)
    if not ok.any():
        return X0
    X = torch.as_tensor(X0[ok], dtype=torch.float64)
    o = torch.as_tensor(np.stack([a[ok] for a in obs]), dtype=torch.float64)  # (views, m, 2)
    seen = torch.isfinite(o).all(dim=-1)
    o = torch.nan_to_num(o)

    for _ in range(iterations):
        Xr = X.clone().requires_grad_(True)
        pred = geometry.project_points(Xr)  # (views, m, 2)
        r = torch.where(seen[..., None], pred - o, torch.zeros_like(pred))
        # each point's residuals depend on that point only, so the gradient of a sum over
        # points gives every point's own Jacobian row at once (block-diagonal normal equations)
        J = torch.zeros(X.shape[0], r.shape[0] * 2, 3, dtype=torch.float64)
        for vi in range(r.shape[0]):
            for ax in range(2):
                g, = torch.autograd.grad(r[vi, :, ax].sum(), Xr, retain_graph=True)
                J[:, vi * 2 + ax, :] = g
        rv = r.detach().permute(1, 0, 2).reshape(X.shape[0], -1)
        JtJ = J.transpose(1, 2) @ J
        Jtr = (J.transpose(1, 2) @ rv[..., None])[..., 0]
        step = torch.linalg.solve(JtJ + 1e-12 * torch.eye(3, dtype=torch.float64), Jtr)
        X = X - step
        if float(step.abs().max()) < 1e-9:
            break
    out = X0.copy()
    out[ok] = X.numpy()
    return out


