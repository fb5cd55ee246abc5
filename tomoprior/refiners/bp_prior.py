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
        return self.fit_level([(xrays, geometry, targets)], fit_offset=fit_offset)

    @torch.no_grad()
    def fit_level(self, samples, *, fit_offset: bool = True) -> BPPrior:
        """Least-squares ``gain`` (and ``offset``) of ``target ~ gain * base + offset`` over every
        voxel of a stream of samples: the one bp-prior fit (``calibrate``, ``tomoprior train``
        and ``tomoprior evaluate --fit-bp-prior`` all use it).

        Parameters
        ----------
        samples : iterable of (xrays, geometry, targets) or of (base, targets)
            ``xrays`` ``(B, V, H, W)`` with their geometry and ``targets`` ``(B, 1, nz, ny, nx)``
            (1/mm); or already computed base outputs (``gain = 1``, ``offset = 0``, no clamp)
            with their targets. The normal equations are accumulated in float64 sample by
            sample, so the stream may be any length.
        fit_offset : bool
            Fit the offset too (else it is 0).

        Returns
        -------
        self, with ``config.gain`` / ``config.offset`` updated.

        Raises
        ------
        ValueError
            No samples, mismatched sizes, or a base output that is constant (no gain to fit).
        """
        cfg = self.config
        saved = (cfg.gain, cfg.offset, cfg.clamp_min)
        cfg.gain, cfg.offset, cfg.clamp_min = 1.0, 0.0, None
        sums = torch.zeros(5, dtype=torch.float64)  # sum b, sum t, sum bb, sum bt, n
        try:
            for item in samples:
                if len(item) == 3:
                    xrays, geometry, targets = item
                    base = self.reconstruct(torch.as_tensor(xrays), geometry)
                else:
                    base, targets = item
                b = torch.as_tensor(base).double().flatten()
                t = torch.as_tensor(targets).double().flatten()
                if t.numel() != b.numel():
                    raise ValueError(f"targets must have the output's shape (B, 1, nz, ny, nx): {t.numel()} vs "
                                     f"{b.numel()} values")
                sums += torch.stack([b.sum(), t.sum(), (b * b).sum(), (b * t).sum(),
                                     torch.tensor(float(b.numel()), dtype=torch.float64)])
        finally:
            cfg.gain, cfg.offset, cfg.clamp_min = saved
        sb, st, sbb, sbt, n = (float(x) for x in sums)
        if n == 0:
            raise ValueError("fit_level got no samples")
        if fit_offset:
            det = n * sbb - sb * sb
            if not det > 1e-12 * max(n * sbb, 1e-300):
                raise ValueError("the prior is constant over the fitting samples; cannot fit a gain")
            gain = (n * sbt - sb * st) / det
            offset = (st - gain * sb) / n
        else:
            if not sbb > 0:
                raise ValueError("the prior is zero over the fitting samples; cannot fit a gain")
            gain, offset = sbt / sbb, 0.0
        cfg.gain, cfg.offset = float(gain), float(offset)
        return self
