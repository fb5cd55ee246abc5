"""Conversion of user input (lists, numpy arrays, tensors) into validated torch tensors.

Geometry keeps its numbers as torch tensors so that gradients can flow from physical
parameters through views into the projectors. Plain numbers become float64 CPU tensors;
floating tensors keep their dtype, device and autograd history.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from .._yaml import brief

DEFAULT_DTYPE = torch.float64


def _plain_numbers(value, name: str, what: str) -> None:
    """Refuse strings, booleans and other non-numbers inside a list or tuple of numbers
    (numpy and ``float()`` would quietly turn ``"1.5"`` or ``True`` into numbers)."""
    if isinstance(value, (str, bytes)):
        raise ValueError(f"{name} must be {what}, got the text {brief(value)}")
    if isinstance(value, (list, tuple)):
        for i, x in enumerate(value):
            if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
                raise ValueError(f"{name}[{i}] must be a number, got {brief(x)}; {name} must be {what}")


def as_vector3(value, name: str) -> torch.Tensor:
    """Return ``value`` as a finite floating tensor of shape ``(3,)``.

    Raises
    ------
    ValueError
        If the value does not have three components or is not finite; the message
        names the field ``name``.
    """
    if isinstance(value, torch.Tensor):
        t = value if value.is_floating_point() else value.to(DEFAULT_DTYPE)
    else:
        _plain_numbers(value, name, "three numbers (x, y, z) in mm")
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"{name} must be three numbers (x, y, z) in mm, got {brief(value)}") from exc
        t = torch.as_tensor(arr, dtype=DEFAULT_DTYPE)
    if t.shape != (3,):
        raise ValueError(
            f"{name} must have exactly three components (x, y, z), got shape {tuple(t.shape)}"
        )
    if not bool(torch.isfinite(t.detach()).all()):
        raise ValueError(f"{name} contains non-finite values: {brief(t.detach().tolist())}; give finite "
                         "numbers in mm")
    return t


def as_positive_int_pair(value, name: str) -> tuple[int, int]:
    """Return ``value`` as a pair of positive Python ints (e.g. a detector or grid shape)."""
    if isinstance(value, (str, bytes, dict)):
        raise ValueError(f"{name} must be a pair of positive integers, got {brief(value)}")
    try:
        items = tuple(value)
    except TypeError as exc:
        raise ValueError(f"{name} must be a pair of positive integers, got {brief(value)}") from exc
    if len(items) != 2:
        raise ValueError(f"{name} must be a pair of positive integers, got {brief(value)}")
    return tuple(_positive_int(x, f"{name}[{i}]") for i, x in enumerate(items))  # type: ignore[return-value]


def as_positive_int_triple(value, name: str) -> tuple[int, int, int]:
    if isinstance(value, (str, bytes, dict)):
        raise ValueError(f"{name} must be three positive integers (nz, ny, nx), got {brief(value)}")
    try:
        items = tuple(value)
    except TypeError as exc:
        raise ValueError(f"{name} must be three positive integers, got {brief(value)}") from exc
    if len(items) != 3:
        raise ValueError(f"{name} must be three positive integers (nz, ny, nx), got {brief(value)}")
    return tuple(_positive_int(x, f"{name}[{i}]") for i, x in enumerate(items))  # type: ignore[return-value]


#: Largest voxel or pixel count accepted along one axis (far beyond any real detector or
#: grid; it keeps sizes and their products exact in float64 and int64 arithmetic).
MAX_AXIS_SIZE = 2**31 - 1


def _positive_int(x, name: str) -> int:
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
        if isinstance(x, (float, np.floating)) and float(x).is_integer():
            x = int(x)
        else:
            raise ValueError(f"{name} must be a positive integer, got {brief(x)}")
    if int(x) <= 0:
        raise ValueError(f"{name} must be a positive integer, got {brief(x)}")
    if int(x) > MAX_AXIS_SIZE:
        raise ValueError(f"{name} = {int(x):.3g} is larger than any real grid or detector ({MAX_AXIS_SIZE} at most); "
                         "check the number")
    return int(x)


def as_positive_float_triple(value, name: str) -> tuple[float, float, float]:
    _plain_numbers(value, name, "three positive numbers (sz, sy, sx) in mm")
    try:
        items = tuple(float(v) for v in value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"{name} must be three positive numbers in mm, got {brief(value)}") from exc
    if len(items) != 3:
        raise ValueError(f"{name} must be three positive numbers (sz, sy, sx) in mm, got {brief(value)}")
    for i, v in enumerate(items):
        if not math.isfinite(v) or v <= 0:
            raise ValueError(f"{name}[{i}] must be a positive finite length in mm, got {v!r}")
    return items  # type: ignore[return-value]


def as_finite_float_triple(value, name: str) -> tuple[float, float, float]:
    _plain_numbers(value, name, "three numbers (x, y, z) in mm")
    try:
        items = tuple(float(v) for v in value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"{name} must be three numbers in mm, got {brief(value)}") from exc
    if len(items) != 3:
        raise ValueError(f"{name} must be three numbers (x, y, z) in mm, got {brief(value)}")
    for i, v in enumerate(items):
        if not math.isfinite(v):
            raise ValueError(f"{name}[{i}] must be finite, got {v!r}")
    return items  # type: ignore[return-value]


def scalar_tensor(value, name: str, *, like: torch.Tensor | None = None) -> torch.Tensor:
    """Return a finite 0-d floating tensor (keeps autograd history of tensors)."""
    if isinstance(value, torch.Tensor):
        t = value if value.is_floating_point() else value.to(DEFAULT_DTYPE)
        if t.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got shape {tuple(t.shape)}")
        t = t.reshape(())
    else:
        if isinstance(value, (str, bytes, bool)):
            raise ValueError(f"{name} must be a number, got {brief(value)}")
        try:
            t = torch.tensor(float(value), dtype=DEFAULT_DTYPE)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"{name} must be a number, got {brief(value)}") from exc
    if not bool(torch.isfinite(t.detach())):
        raise ValueError(f"{name} must be finite, got {float(t.detach())!r}")
    if like is not None:
        t = t.to(device=like.device)
    return t


def pair_of_scalars(value, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(value, torch.Tensor):
        if value.numel() == 1:
            t = scalar_tensor(value, name)
            return t, t
        if value.shape != (2,):
            raise ValueError(f"{name} must be one number or a pair, got shape {tuple(value.shape)}")
        return scalar_tensor(value[0], f"{name}[0]"), scalar_tensor(value[1], f"{name}[1]")
    if isinstance(value, (int, float, np.floating, np.integer)):
        t = scalar_tensor(value, name)
        return t, t
    if isinstance(value, Sequence) or isinstance(value, np.ndarray):
        if len(value) != 2:
            raise ValueError(f"{name} must be one number or a pair, got {brief(value)}")
        return scalar_tensor(value[0], f"{name}[0]"), scalar_tensor(value[1], f"{name}[1]")
    raise ValueError(f"{name} must be one number or a pair, got {brief(value)}")


def common_float_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """Promote the floating dtypes of ``tensors`` (float64 wins)."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype
