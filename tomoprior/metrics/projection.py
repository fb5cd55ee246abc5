"""Projection consistency: re-project a reconstruction through the acquisition geometry and
compare with the X-rays it was reconstructed from."""

from __future__ import annotations

import numpy as np
import torch

from ..geometry.geometry import Geometry
from ..projectors import project


def projection_consistency(volume, xrays, geometry: Geometry, *, backend: str = "auto", **options) -> dict:
    """How well ``volume`` explains the measured line integrals ``xrays`` under ``geometry``.

    Parameters
    ----------
    volume : Tensor or ndarray, shape ``(nz, ny, nx)``, attenuation per mm on ``geometry.grid``
    xrays : Tensor or ndarray, shape ``(views, rows, cols)``
        Line integrals (attenuation x mm), e.g. ``-log(I / I0)`` of flat-fielded radiographs.
    geometry : Geometry
        The geometry the X-rays were acquired (or synthesised) with.
    backend : str
        Projector backend ("auto": numba on CPU, torch on CUDA), passed to :func:`tomoprior.project` with ``**options``.

    Returns
    -------
    dict
        ``mae`` and ``rmse`` (attenuation x mm), ``relative_l2`` (``||P v - p|| / ||p||``),
        ``per_view_mae`` (list), and ``reprojection`` (the re-projected tensor).
    """
    if not isinstance(geometry, Geometry):
        raise TypeError(f"geometry must be a tomoprior Geometry, got {type(geometry).__name__}")
    vol = torch.as_tensor(np.asarray(volume) if not isinstance(volume, torch.Tensor) else volume)
    if vol.dtype not in (torch.float32, torch.float64):
        vol = vol.to(torch.float64)
    if tuple(vol.shape) != tuple(geometry.grid.shape):
        raise ValueError(f"volume has shape {tuple(vol.shape)} but geometry.grid.shape is {geometry.grid.shape}")
    meas = torch.as_tensor(np.asarray(xrays) if not isinstance(xrays, torch.Tensor) else xrays).to(torch.float64)
    expected = geometry.projection_shape
    if tuple(meas.shape) != tuple(expected):
        raise ValueError(f"xrays have shape {tuple(meas.shape)} but the geometry projects to {expected} "
                         "(views, rows, cols)")
    if not bool(torch.isfinite(meas).all()):
        raise ValueError("xrays contain NaN or infinite values")
    with torch.no_grad():
        rep = project(vol.detach(), geometry, backend=backend, **options).to(torch.float64)
    diff = rep - meas
    norm = float(meas.norm())
    return {
        "mae": float(diff.abs().mean()),
        "rmse": float(diff.square().mean().sqrt()),
        "relative_l2": float(diff.norm()) / norm if norm > 0 else float("inf"),
        "per_view_mae": [float(d.abs().mean()) for d in diff],
        "reprojection": rep,
    }
