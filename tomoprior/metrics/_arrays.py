"""Input handling shared by the metrics: torch tensors or numpy arrays in, float64 numpy out."""

from __future__ import annotations

import numpy as np
import torch


def as_array(x, name: str, *, ndim: int | None = None, allow_bool: bool = False) -> np.ndarray:
    """``x`` (torch tensor or array-like) as a finite float64 numpy array (bool kept if allowed)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise TypeError(f"{name} must be a torch tensor or numpy array, got {type(x).__name__}") from exc
    if arr.dtype == bool and allow_bool:
        out = arr
    elif arr.dtype.kind in "biuf":
        out = arr.astype(np.float64, copy=False)
        if not np.isfinite(out).all():
            raise ValueError(f"{name} contains NaN or infinite values; metrics need finite inputs")
    else:
        raise TypeError(f"{name} must hold numbers, got dtype {arr.dtype}")
    if ndim is not None and out.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(out.shape)}")
    return out


def same_shape(a: np.ndarray, b: np.ndarray, na: str = "prediction", nb: str = "target") -> None:
    if a.shape != b.shape:
        raise ValueError(f"{na} has shape {tuple(a.shape)} but {nb} has shape {tuple(b.shape)}; they must match")
    if a.size == 0:
        # a mean over no voxels is NaN, a Dice of nothing 1: neither is a score
        raise ValueError(f"{na} and {nb} are empty (shape {tuple(a.shape)}); metrics need at least one voxel")


def spacing3(spacing) -> tuple[float, float, float]:
    """A positive finite ``(sz, sy, sx)`` spacing in mm, from a number, a triple or a VolumeGrid."""
    if hasattr(spacing, "spacing") and not isinstance(spacing, (tuple, list, np.ndarray)):
        spacing = spacing.spacing
    if np.isscalar(spacing):
        spacing = (spacing,) * 3
    s = tuple(float(v) for v in spacing)
    if len(s) != 3 or not all(np.isfinite(v) and v > 0 for v in s):
        raise ValueError(f"spacing must be three positive finite numbers (sz, sy, sx) in mm, got {spacing!r}")
    return s  # type: ignore[return-value]
