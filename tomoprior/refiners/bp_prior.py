"""Built-in refiner ``bp-prior``: no learning, the geometry prior itself (optionally with an
affine calibration ``gain * prior + offset``). The baseline every learned refiner must beat."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .base import Refiner, check_config_types
from .prior import build_prior
from .registry import _builtin

_NORMALIZATIONS = ("ray", "chord")


@dataclass
class BPPriorConfig:
    """Configuration of ``bp-prior``.

    Attributes
    ----------
    normalization : {"ray", "chord"}
        ``"ray"``: return the prior as given (normalised per-view averaged back-projection,
        units of the X-rays). ``"chord"``: rebuild it from the X-rays after dividing each
        pixel by its ray's length inside the grid box (mean attenuation along the ray, 1/mm).
    gain, offset : float
        Output ``gain * prior + offset``; identity by default. :meth:`BPPrior.calibrate`
        fits them by least squares on training pairs.
    clamp_min : float or None
        Lower bound applied to the output (e.g. 0 for non-negative targets); None: none.
    """

    normalization: str = "ray"
    gain: float = 1.0
    offset: float = 0.0
    clamp_min: float | None = None

    def __post_init__(self):
        check_config_types(self)
        if self.normalization not in _NORMALIZATIONS:
            raise ValueError(f"BPPriorConfig.normalization must be one of {_NORMALIZATIONS}, "
                             f"got {self.normalization!r}")
        for key in ("gain", "offset", "clamp_min"):
            val = getattr(self, key)
            if val is not None and not math.isfinite(val):
                raise ValueError(f"BPPriorConfig.{key} must be a finite number, got {val!r}")


@_builtin
class BPPrior(Refiner):
    """``bp-prior``: ``gain * prior + offset`` (see :class:`BPPriorConfig`).

    Shapes: xrays ``(B, V, H, W)``; prior ``(B, 1, nz, ny, nx)``; returns ``(B, 1, nz, ny, nx)``.
    """

    name = "bp-prior"
    config_class = BPPriorConfig

    def forward(self, xrays, geometry, prior):
        if self.config.normalization == "chord":
            grid = geometry.grid if hasattr(geometry, "grid") else geometry[0].grid
            prior = build_prior(xrays, geometry, grid=grid, divide_by_chord=True)
        self.check_inputs(xrays, geometry, prior)
        out = self.config.gain * prior + self.config.offset
        if self.config.clamp_min is not None:
            out = out.clamp_min(self.config.clamp_min)
        return out

    @torch.no_grad()
    def calibrate(self, xrays, geometry, targets, *, fit_offset: bool = True) -> BPPrior:
        """Fit ``gain`` (and ``offset``) by least squares so the output best matches ``targets``
        ``(B, 1, nz, ny, nx)`` over all voxels; updates ``self.config`` and returns self."""
        cfg = self.config
        saved = (cfg.gain, cfg.offset, cfg.clamp_min)
        cfg.gain, cfg.offset, cfg.clamp_min = 1.0, 0.0, None
        try:
            base = self.reconstruct(xrays, geometry).double().flatten()
        finally:
            cfg.gain, cfg.offset, cfg.clamp_min = saved
        t = torch.as_tensor(targets).double().flatten()
        if t.numel() != base.numel():
            raise ValueError(
                f"targets must have the output's shape (B, 1, nz, ny, nx): {t.numel()} vs {base.numel()} values"
            )
        cols = [base, torch.ones_like(base)] if fit_offset else [base]
        A = torch.stack(cols, dim=1)
        sol = torch.linalg.lstsq(A, t[:, None]).solution[:, 0]
        cfg.gain = float(sol[0])
        cfg.offset = float(sol[1]) if fit_offset else 0.0
        return self
