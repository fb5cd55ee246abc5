"""Differentiable rotations (torch), used by the calibrated parametrisation."""

from __future__ import annotations

import torch


def axis_angle_matrix(axis: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """3x3 rotation matrix turning by ``angle`` (rad, right-handed) about the unit ``axis`` (3,).

    Rodrigues' formula; differentiable in both arguments.
    """
    axis = axis / torch.linalg.norm(axis)
    x, y, z = axis[0], axis[1], axis[2]
    zero = torch.zeros_like(x)
    k = torch.stack([
        torch.stack([zero, -z, y]),
        torch.stack([z, zero, -x]),
        torch.stack([-y, x, zero]),
    ])
    eye = torch.eye(3, dtype=axis.dtype, device=axis.device)
    angle = angle.to(axis.dtype)
    return eye + torch.sin(angle) * k + (1 - torch.cos(angle)) * (k @ k)


def rotation_x(angle: torch.Tensor) -> torch.Tensor:
    """Rotation by ``angle`` (rad) about the world x axis."""
    c, s = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(c), torch.zeros_like(c)
    return torch.stack([
        torch.stack([one, zero, zero]),
        torch.stack([zero, c, -s]),
        torch.stack([zero, s, c]),
    ])


def rotation_z(angle: torch.Tensor) -> torch.Tensor:
    """Rotation by ``angle`` (rad) about the world z axis."""
    c, s = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(c), torch.zeros_like(c)
    return torch.stack([
        torch.stack([c, -s, zero]),
        torch.stack([s, c, zero]),
        torch.stack([zero, zero, one]),
    ])
