"""Shape primitives of the procedural skull: smooth Boolean operations, approximate signed
distances to ellipsoids and capsules, axis-aligned boxes, and point sets on the sphere.

Every distance is in mm. Points are torch tensors ``(N, 3)`` as ``(x, y, z)`` (world LPS or
relative to the vault centre, as the caller chooses); parameters (centres, semi-axes,
rotations) are numpy arrays or sequences in the same frame. A signed distance is negative
inside the shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

Tensor = torch.Tensor

__all__ = [
    "Box",
    "capsule_box",
    "capsule_sdf",
    "crossings",
    "ellipsoid_box",
    "ellipsoid_sdf",
    "fibonacci_sphere",
    "flat_capsule_sdf",
    "ring_sdf",
    "smax",
    "smin",
    "tapered_capsule_sdf",
    "unit",
]


def unit(v) -> np.ndarray:
    """``v`` (any 3-vector) scaled to unit length, as float64."""
    v = np.asarray(v, dtype=float)
    return v / np.linalg.norm(v)


def smin(a: Tensor, b: Tensor, k: float) -> Tensor:
    """Polynomial smooth minimum of two distances (exact min where ``|a - b| >= k``, mm)."""
    h = (0.5 + 0.5 * (b - a) / k).clamp(0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def smax(a: Tensor, b: Tensor, k: float) -> Tensor:
    """Polynomial smooth maximum (smooth intersection of two shapes), see :func:`smin`."""
    return -smin(-a, -b, k)


def ellipsoid_sdf(p: Tensor, center, semi, rot=None) -> Tensor:
    """Approximate signed distance (mm) from points ``p`` ``(N, 3)`` to an ellipsoid.

    Exact on the surface and along the axes. ``center`` (3,) and ``semi`` (3,) semi-axes in
    mm; ``rot`` an optional (3, 3) rotation whose columns are the local axes in world.
    Returns ``(N,)``.
    """
    q = p - torch.as_tensor(center, dtype=p.dtype)
    if rot is not None:
        q = q @ torch.as_tensor(rot, dtype=p.dtype)  # world -> local: R^T q (row vectors)
    r = torch.as_tensor(semi, dtype=p.dtype)
    k0 = (q / r).norm(dim=-1)
    k1 = (q / (r * r)).norm(dim=-1).clamp_min(1e-9)
    # at the very centre the formula gives 0; the distance there is the smallest semi-axis
    return torch.where(k0 > 1e-6, k0 * (k0 - 1.0) / k1, -r.min())


def capsule_sdf(p: Tensor, a, b, radius: float) -> Tensor:
    """Signed distance (mm) from points ``p`` ``(N, 3)`` to the capsule of ``radius`` mm
    around the segment from ``a`` to ``b`` (3,); returns ``(N,)``."""
    a_t = torch.as_tensor(a, dtype=p.dtype)
    ab = torch.as_tensor(b, dtype=p.dtype) - a_t
    ap = p - a_t
    h = ((ap @ ab) / float(ab @ ab)).clamp(0.0, 1.0)
    return (ap - h[:, None] * ab).norm(dim=-1) - radius


@dataclass
class Box:
    """Axis-aligned box with corners ``lo`` and ``hi`` (3,) as ``(x, y, z)`` mm."""

    lo: np.ndarray
    hi: np.ndarray

    def mask(self, p: Tensor) -> Tensor:
        """Boolean ``(N,)``: which points ``p`` ``(N, 3)`` lie in the box (faces included)."""
        lo = torch.as_tensor(self.lo, dtype=p.dtype)
        hi = torch.as_tensor(self.hi, dtype=p.dtype)
        return ((p >= lo) & (p <= hi)).all(dim=-1)

    def union(self, other: Box) -> Box:
        """The smallest box holding both."""
        return Box(np.minimum(self.lo, other.lo), np.maximum(self.hi, other.hi))

    def shifted(self, offset, margin: float = 0.0) -> Box:
        """The box moved by ``offset`` (3,) mm and grown by ``margin`` mm on every side."""
        return Box(self.lo + offset - margin, self.hi + offset + margin)


def ellipsoid_box(center, semi, rot=None, margin=0.0) -> Box:
    """Bounding box of an ellipsoid (see :func:`ellipsoid_sdf`), grown by ``margin`` mm."""
    c = np.asarray(center, float)
    s = np.asarray(semi, float)
    ext = s if rot is None else np.sqrt((np.asarray(rot) ** 2) @ (s**2))
    return Box(c - ext - margin, c + ext + margin)


def capsule_box(a, b, radius, margin=0.0) -> Box:
    """Bounding box of a capsule (see :func:`capsule_sdf`), grown by ``margin`` mm."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    return Box(np.minimum(a, b) - radius - margin, np.maximum(a, b) + radius + margin)


def fibonacci_sphere(n: int) -> np.ndarray:
    """``n`` nearly uniformly spread unit vectors ``(n, 3)`` (a Fibonacci lattice)."""
    i = np.arange(n) + 0.5
    z = 1.0 - 2.0 * i / n
    phi = math.pi * (1.0 + math.sqrt(5.0)) * i
    rho = np.sqrt(1.0 - z * z)
    return np.stack([rho * np.cos(phi), rho * np.sin(phi), z], axis=-1)


def crossings(x: np.ndarray, y: np.ndarray, y0: float) -> list[float]:
    """x (mm) where the closed polygon with vertices ``(x, y)`` crosses the line ``y = y0``."""
    out = []
    x1, y1 = np.roll(x, -1), np.roll(y, -1)
    for xa, ya, xb, yb in zip(x, y, x1, y1):
        if (ya - y0) * (yb - y0) <= 0 and ya != yb:
            out.append(xa + (y0 - ya) * (xb - xa) / (yb - ya))
    return out


def tapered_capsule_sdf(p: Tensor, a, b, ra: float, rb: float) -> Tensor:
    """Approximate signed distance (mm) from points ``p`` ``(N, 3)`` to a capsule around the
    segment ``a`` -> ``b`` (3,) whose radius goes linearly from ``ra`` to ``rb`` mm (a rounded
    cone; exact for ``ra == rb``, a slight overestimate on the flanks of a steep taper)."""
    a_t = torch.as_tensor(a, dtype=p.dtype)
    ab = torch.as_tensor(b, dtype=p.dtype) - a_t
    ap = p - a_t
    h = ((ap @ ab) / float(ab @ ab)).clamp(0.0, 1.0)
    return (ap - h[:, None] * ab).norm(dim=-1) - (ra + (rb - ra) * h)


def flat_capsule_sdf(p: Tensor, a, b, wide, r_wide: float, r_thin: float) -> Tensor:
    """Approximate signed distance (mm) to a segment ``a`` -> ``b`` (3,) swept with an
    elliptical cross-section: half-width ``r_wide`` mm along ``wide`` (3,) (projected
    perpendicular to the segment) and ``r_thin`` mm across it (a plate or a bar of bone).
    Exact on the surface; scaled by the smaller half-width elsewhere. Returns ``(N,)``."""
    a_np, b_np = np.asarray(a, float), np.asarray(b, float)
    ab_np = b_np - a_np
    axis = ab_np / np.linalg.norm(ab_np)
    w = np.asarray(wide, float) - (np.asarray(wide, float) @ axis) * axis
    w = w / np.linalg.norm(w)
    a_t = torch.as_tensor(a_np, dtype=p.dtype)
    ab = torch.as_tensor(ab_np, dtype=p.dtype)
    ap = p - a_t
    h = ((ap @ ab) / float(ab_np @ ab_np)).clamp(0.0, 1.0)
    q = ap - h[:, None] * ab
    qw = q @ torch.as_tensor(w, dtype=p.dtype)
    qt = (q.square().sum(-1) - qw.square()).clamp_min(0.0).sqrt()
    return (torch.sqrt((qw / r_wide) ** 2 + (qt / r_thin) ** 2) - 1.0) * min(r_wide, r_thin)


def ring_sdf(p: Tensor, center, radii, normal_axis: int, tube: float) -> Tensor:
    """Approximate signed distance (mm) to an elliptical ring (a torus of tube radius ``tube``
    mm) centred at ``center`` (3,), lying in the plane perpendicular to the world axis
    ``normal_axis`` (0 x, 1 y, 2 z) with in-plane semi-axes ``radii`` (2,) mm (in the order
    of the two remaining axes). Returns ``(N,)``."""
    q = p - torch.as_tensor(center, dtype=p.dtype)
    i, j = [k for k in range(3) if k != normal_axis]
    ri, rj = float(radii[0]), float(radii[1])
    e = torch.sqrt((q[:, i] / ri) ** 2 + (q[:, j] / rj) ** 2)
    radial = (e - 1.0) * min(ri, rj)
    return torch.sqrt(radial**2 + q[:, normal_axis] ** 2) - tube
