"""Pinhole-camera forms of a view: the 3x4 projection matrix ``P`` and its ``K [R | t]`` factors.

A :class:`~tomoprior.geometry.view.View` with a flat detector is a pinhole camera: the
source is the centre of projection and the detector the image plane. Pixel coordinates are
tomoprior's ``(col, row)``, integers at pixel centres, so ``(col, row, 1) ~ P (x, y, z, 1)``
with world points in patient LPS millimetres.

Conventions of the matrices read and written here
-------------------------------------------------

* ``P`` is defined up to a scale, but its **sign** is kept meaningful: the third homogeneous
  coordinate ``w = P[2] . (x, y, z, 1)`` is positive for points on the detector side of the
  source (those the detector can see), as for an OpenCV / Hartley-Zisserman camera with
  ``K[2, 2] > 0``. :meth:`View.projection_matrix` returns ``P`` in this form. Tools with the
  opposite sign (RTK's matrices have ``w < 0`` in front of the source) are read with
  ``w_sign=-1``. ``P`` and ``-P`` give the same pixel for every point; the sign is the only
  thing that tells on which side of the source the detector lies.
* ``K [R | t]``: ``R`` is a proper rotation (``det R = +1``) from world to camera axes,
  camera ``z`` points from the source toward the detector (the beam direction) and camera
  ``y`` runs along the detector rows (the direction of increasing row index), ``t = -R s``
  with ``s`` the source. ``K = [[fx, skew, cx], [0, fy, cy], [0, 0, 1]]`` in pixels with
  ``fy > 0``. ``fx < 0`` marks a *mirrored* image: columns run the other way than seen
  from the source, which is how radiographs are displayed (tomoprior's PA views are
  mirrored in this sense). ``|fx| = source_to_detector / column pitch`` and
  ``fy = source_to_detector / row pitch``.

The decomposition is an RQ factorisation ``P[:, :3] = K R`` done by Gram-Schmidt from the
bottom row, with the signs fixed by the rules above (Hartley and Zisserman, *Multiple View
Geometry*, section 6.2).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .._yaml import brief
from ._tensor import as_positive_int_pair

#: Default relative tolerance for the checks that ``P`` came from a flat detector with the
#: given pixel pitch (aspect ratio) and perpendicular pixel axes (cosine of the axis angle).
DEFAULT_RTOL = 1e-3


def _as_matrix(value, shape: tuple[int, int], name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().double().numpy()
    if isinstance(value, (str, bytes)):
        raise ValueError(f"{name} must be an array of numbers of shape {shape}, got the text {brief(value)}")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be an array of numbers of shape {shape}, got {brief(value)}") from exc
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains non-finite values: {brief(arr.tolist())}")
    return arr


def as_pixel_pitch(pixel_pitch) -> tuple[float, float]:
    """``(row pitch, column pitch)`` in mm from a number or a pair; ValueError names the fix."""
    if isinstance(pixel_pitch, (str, bytes, bool)) or pixel_pitch is None:
        raise ValueError(f"pixel_pitch must be a number or (row, col) numbers in mm, got {brief(pixel_pitch)}")
    arr = np.asarray(pixel_pitch, dtype=np.float64).reshape(-1)
    if arr.size == 1:
        arr = np.repeat(arr, 2)
    if arr.size != 2 or not np.isfinite(arr).all() or not (arr > 0).all():
        raise ValueError(f"pixel_pitch must be a positive number or (row, col) positive numbers in mm, "
                         f"got {brief(pixel_pitch)}")
    return float(arr[0]), float(arr[1])


def decompose_projection_matrix(P, *, w_sign: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Factor a finite pinhole camera ``P ~ K [R | -R s]``.

    Parameters
    ----------
    P : array-like ``(3, 4)``
        Projection matrix to tomoprior pixel coordinates ``(col, row)``.
    w_sign : {+1, -1}
        Sign of ``w = P[2] . (x, 1)`` for points in front of the source (see the module notes).

    Returns
    -------
    K : ndarray ``(3, 3)``
        Upper triangular, ``K[2, 2] = 1``, ``K[1, 1] > 0``; pixels.
    R : ndarray ``(3, 3)``
        Rotation world -> camera, ``det R = +1``, third row the beam direction.
    source : ndarray ``(3,)``
        Centre of projection (world mm).

    Raises
    ------
    ValueError
        ``P`` is not finite, or its left 3x3 block is singular (an affine or parallel-beam
        camera has no point source), or its rows are degenerate.
    """
    if w_sign not in (1, -1):
        raise ValueError(f"w_sign must be +1 or -1, got {brief(w_sign)}")
    P = _as_matrix(P, (3, 4), "P") * w_sign
    M = P[:, :3]
    norms = np.linalg.norm(M, axis=1)
    if not (norms > 0).all():
        raise ValueError(f"P's left 3x3 block has a zero row {np.flatnonzero(norms == 0).tolist()}; a pinhole camera "
                         "needs three independent rows")
    det = np.linalg.det(M / norms[:, None])
    if abs(det) < 1e-12:
        raise ValueError(
            "P's left 3x3 block is singular (normalised determinant "
            f"{det:.3g}): that is an affine or parallel-beam camera with its source at infinity; a View needs a "
            "point source at a finite distance"
        )
    source = -np.linalg.solve(M, P[:, 3])
    r3 = M[2] / norms[2]
    m2 = M[1] - (M[1] @ r3) * r3
    r2 = m2 / np.linalg.norm(m2)
    r1 = np.cross(r2, r3)
    R = np.stack([r1, r2, r3])
    K = M @ R.T
    K = K / K[2, 2]
    K[1, 0] = K[2, 0] = K[2, 1] = 0.0  # zero by construction; clear the round-off
    return K, R, source


def view_from_projection_matrix(P, shape, pixel_pitch, *, w_sign: int = 1, rtol: float = DEFAULT_RTOL,
                                name: str | None = None):
    """The :class:`View` of a 3x4 pinhole projection matrix (see :meth:`View.from_projection_matrix`)."""
    from .view import View

    rows, cols = as_detector_shape(shape)
    pr, pc = as_pixel_pitch(pixel_pitch)
    if not (isinstance(rtol, (int, float)) and math.isfinite(rtol) and rtol > 0):
        raise ValueError(f"rtol must be a positive number, got {brief(rtol)}")
    K, R, s = decompose_projection_matrix(P, w_sign=w_sign)
    fx, sk, cx, fy, cy = K[0, 0], K[0, 1], K[0, 2], K[1, 1], K[1, 2]
    # Camera-frame detector vectors per unit source-to-detector distance d: the detector
    # point of pixel (col, row) is d * (((col - cx) - sk (row - cy) / fy) / fx, (row - cy) / fy, 1).
    u1 = np.array([1.0 / fx, 0.0, 0.0])
    v1 = np.array([-sk / (fx * fy), 1.0 / fy, 0.0])
    cos_axes = float(u1 @ v1 / (np.linalg.norm(u1) * np.linalg.norm(v1)))
    if abs(cos_axes) > rtol:
        raise ValueError(
            f"P has skewed pixels: its column and row axes meet at {math.degrees(math.acos(cos_axes)):.4f} deg, not "
            f"90 (K[0, 1] = {sk:.4g} px against fx = {fx:.4g} px), beyond rtol={rtol:g}; a flat-panel detector has "
            "perpendicular rows and columns. Fit P with zero skew, or raise rtol if the skew is noise"
        )
    d_col = pc / np.linalg.norm(u1)
    d_row = pr / np.linalg.norm(v1)
    if abs(d_col / d_row - 1.0) > rtol:
        raise ValueError(
            f"P's pixel aspect ratio does not match pixel_pitch: P has |fx| / fy = {abs(fx) / fy:.6g}, so column "
            f"pitch / row pitch = {d_row / d_col * pc / pr:.6g}, but pixel_pitch (row, col) = ({pr:g}, {pc:g}) mm "
            f"gives {pc / pr:.6g} (source-to-detector {d_col:.4g} mm from the columns vs {d_row:.4g} mm from the "
            f"rows, rtol={rtol:g}). Give this detector's pitch, e.g. pixel_pitch=({pr:g}, {pc * d_row / d_col:.6g})"
        )
    d = math.sqrt(d_col * d_row)
    r0, c0 = (rows - 1) / 2, (cols - 1) / 2
    center_cam = d * np.array([((c0 - cx) - sk * (r0 - cy) / fy) / fx, (r0 - cy) / fy, 1.0])
    Rt = R.T
    return View(s, s + Rt @ center_cam, Rt @ (d * u1), Rt @ (d * v1), (rows, cols), name=name)


def view_krt(view) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(K, R, t)`` of a view; see :meth:`View.krt`."""
    K, R, s = decompose_projection_matrix(view.projection_matrix().detach().cpu().double().numpy())
    t = -R @ s
    return tuple(torch.as_tensor(a, dtype=torch.float64) for a in (K, R, t))  # type: ignore[return-value]


def projection_matrix_from_krt(K, R, t) -> np.ndarray:
    """``P = K [R | t]`` after checking ``K`` (upper triangular, ``K[2, 2] > 0``) and ``R``
    (a proper rotation) and normalising ``K[2, 2]`` to 1."""
    K = _as_matrix(K, (3, 3), "K")
    R = _as_matrix(R, (3, 3), "R")
    t = _as_matrix(t, (3,), "t")
    scale = np.abs(K).max()
    low = np.abs(K[[1, 2, 2], [0, 0, 1]]).max()
    if low > 1e-9 * scale:
        raise ValueError(f"K must be upper triangular (intrinsics [[fx, skew, cx], [0, fy, cy], [0, 0, 1]]); its "
                         f"entries below the diagonal reach {low:.3g}")
    if not K[2, 2] > 0:
        raise ValueError(f"K[2, 2] must be positive (the camera looks along +z, as in OpenCV), got {K[2, 2]:.4g}")
    orth = np.abs(R @ R.T - np.eye(3)).max()
    if orth > 1e-6:
        raise ValueError(f"R is not a rotation matrix: R R^T differs from the identity by {orth:.3g}")
    if np.linalg.det(R) < 0:
        raise ValueError("R is a reflection (det R = -1); give a proper rotation and put the mirror in K as a "
                         "negative fx")
    return (K / K[2, 2]) @ np.concatenate([R, t[:, None]], axis=1)


def as_detector_shape(shape) -> tuple[int, int]:
    """``(rows, cols)`` as two positive ints; ValueError names the parameter otherwise."""
    return as_positive_int_pair(shape, "shape (rows, cols)")
