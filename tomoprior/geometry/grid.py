"""The voxel grid a volume lives on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .._yaml import brief
from ._tensor import as_finite_float_triple, as_positive_float_triple, as_positive_int_triple

#: Largest extent or centre coordinate of a grid, mm (1000 km): larger numbers are typos
#: and would overflow the ray arithmetic.
MAX_EXTENT_MM = 1e9


@dataclass(frozen=True)
class VolumeGrid:
    """A regular voxel grid in the world frame (patient LPS, millimetres).

    The array order is ``(nz, ny, nx)`` and so are ``shape`` and ``spacing``; ``center``
    is a world position and is written ``(x, y, z)``. Voxel ``(k, j, i)`` has its centre at::

        center + ((i - (nx-1)/2) * sx, (j - (ny-1)/2) * sy, (k - (nz-1)/2) * sz)

    Index rule: voxel indices are always given in array order ``(k, j, i)`` (z, y, x index),
    as in ``volume[k, j, i]``: :meth:`voxel_center`, :meth:`world_to_index`,
    :meth:`array_affine`. The single exception is :meth:`affine`, the NIfTI-style
    ``(i, j, k)`` matrix handed to NIfTI writers; world points are always ``(x, y, z)``.

    Parameters
    ----------
    shape : (nz, ny, nx)
        Number of voxels along z, y and x. Positive integers.
    spacing : (sz, sy, sx), optional
        Voxel size in mm along z, y and x. Default 1 mm isotropic.
    center : (x, y, z), optional
        World position in mm of the grid centre. Default: the origin (isocenter).

    Examples
    --------
    >>> grid = VolumeGrid(shape=(64, 64, 64), spacing=(2.0, 2.0, 2.0))
    >>> grid.extent_mm
    (128.0, 128.0, 128.0)
    >>> grid.voxel_center(0, 0, 0)
    (-63.0, -63.0, -63.0)
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    center: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self):
        object.__setattr__(self, "shape", as_positive_int_triple(self.shape, "grid.shape"))
        object.__setattr__(self, "spacing", as_positive_float_triple(self.spacing, "grid.spacing"))
        object.__setattr__(self, "center", as_finite_float_triple(self.center, "grid.center"))
        for i, (n, sp) in enumerate(zip(self.shape, self.spacing)):
            if n * sp > MAX_EXTENT_MM:
                raise ValueError(f"grid: axis {'zyx'[i]} spans {n} x {sp:.4g} mm = {n * sp:.3g} mm, beyond the "
                                 f"{MAX_EXTENT_MM:.0e} mm a grid may span; check the units (millimetres)")
        for i, c in enumerate(self.center):
            if abs(c) > MAX_EXTENT_MM:
                raise ValueError(f"grid.center[{i}] = {c:.3g} mm is beyond the {MAX_EXTENT_MM:.0e} mm a geometry "
                                 "may use; check the units (millimetres)")

    # -- sizes ------------------------------------------------------------------------
    @property
    def nz(self) -> int:
        return self.shape[0]

    @property
    def ny(self) -> int:
        return self.shape[1]

    @property
    def nx(self) -> int:
        return self.shape[2]

    @property
    def num_voxels(self) -> int:
        return self.shape[0] * self.shape[1] * self.shape[2]

    @property
    def extent_mm(self) -> tuple[float, float, float]:
        """Physical size ``(Lz, Ly, Lx)`` in mm of the box the voxels tile."""
        return tuple(n * s for n, s in zip(self.shape, self.spacing))  # type: ignore[return-value]

    @property
    def spacing_xyz(self) -> tuple[float, float, float]:
        """Voxel size in world order ``(sx, sy, sz)``."""
        return (self.spacing[2], self.spacing[1], self.spacing[0])

    @property
    def shape_xyz(self) -> tuple[int, int, int]:
        """Voxel counts in world order ``(nx, ny, nz)``."""
        return (self.shape[2], self.shape[1], self.shape[0])

    def bounds(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """World ``(x, y, z)`` minimum and maximum corners of the voxel box (voxel edges), mm."""
        lo = tuple(c - n * s / 2 for c, n, s in zip(self.center, self.shape_xyz, self.spacing_xyz))
        hi = tuple(c + n * s / 2 for c, n, s in zip(self.center, self.shape_xyz, self.spacing_xyz))
        return lo, hi  # type: ignore[return-value]

    def corners(self) -> np.ndarray:
        """The eight corners of the voxel box, ``(8, 3)`` world ``(x, y, z)`` mm."""
        lo, hi = self.bounds()
        return np.array(
            [[(lo, hi)[a][0], (lo, hi)[b][1], (lo, hi)[c][2]] for a in (0, 1) for b in (0, 1) for c in (0, 1)],
            dtype=np.float64,
        )

    def contains(self, xyz) -> bool | np.ndarray:
        """Whether world points ``(..., 3)`` lie inside the voxel box (edges included)."""
        p = np.asarray(xyz, dtype=np.float64)
        lo, hi = self.bounds()
        return np.all((p >= np.asarray(lo)) & (p <= np.asarray(hi)), axis=-1)

    # -- coordinates ------------------------------------------------------------------
    def voxel_center(self, k, j, i) -> tuple[float, float, float]:
        """World ``(x, y, z)`` in mm of the centre of voxel ``(k, j, i)`` (floats allowed)."""
        sz, sy, sx = self.spacing
        nz, ny, nx = self.shape
        cx, cy, cz = self.center
        return (
            cx + (i - (nx - 1) / 2) * sx,
            cy + (j - (ny - 1) / 2) * sy,
            cz + (k - (nz - 1) / 2) * sz,
        )

    def axis_coordinates(self, dtype=torch.float64, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """1D world coordinates (mm) of voxel centres along x, y and z: ``(nx,), (ny,), (nz,)``."""
        out = []
        for n, s, c in zip(self.shape_xyz, self.spacing_xyz, self.center):
            out.append(c + (torch.arange(n, dtype=dtype, device=device) - (n - 1) / 2) * s)
        return tuple(out)  # type: ignore[return-value]

    def voxel_centers(self, dtype=torch.float64, device=None) -> torch.Tensor:
        """World positions of all voxel centres, shape ``(nz, ny, nx, 3)`` as ``(x, y, z)`` mm."""
        x, y, z = self.axis_coordinates(dtype=dtype, device=device)
        zz, yy, xx = torch.meshgrid(z, y, x, indexing="ij")
        return torch.stack((xx, yy, zz), dim=-1)

    def world_to_index(self, xyz) -> torch.Tensor:
        """Continuous voxel indices ``(k, j, i)`` of world points ``(..., 3)`` (x, y, z)."""
        p = torch.as_tensor(xyz, dtype=torch.float64)
        c = torch.tensor(self.center, dtype=p.dtype, device=p.device)
        s = torch.tensor(self.spacing_xyz, dtype=p.dtype, device=p.device)
        n = torch.tensor(self.shape_xyz, dtype=p.dtype, device=p.device)
        ijk = (p - c) / s + (n - 1) / 2
        return ijk.flip(-1)

    def affine(self) -> np.ndarray:
        """4x4 NIfTI-style matrix mapping ``(i, j, k, 1)`` to world ``(x, y, z, 1)`` (LPS mm).

        The one place tomoprior writes voxel indices in ``(i, j, k)`` = (x, y, z) index order:
        this is the matrix NIfTI files and nibabel expect next to an array stored as
        ``(nx, ny, nz)`` (i.e. ``volume.transpose()``; NIfTI's RAS frame also needs
        ``diag(-1, -1, 1, 1) @ affine``). Everywhere else indices are in array order
        ``(k, j, i)``; :meth:`array_affine` is this matrix in that order.
        """
        a = np.eye(4)
        a[0, 0], a[1, 1], a[2, 2] = self.spacing_xyz
        origin = self.voxel_center(0, 0, 0)
        a[:3, 3] = origin
        return a

    def array_affine(self) -> np.ndarray:
        """4x4 matrix mapping array-order indices ``(k, j, i, 1)`` to world ``(x, y, z, 1)`` mm.

        ``array_affine() @ (k, j, i, 1)`` equals ``voxel_center(k, j, i)`` (and the inverse of
        :meth:`world_to_index`): the same index order as ``volume[k, j, i]`` on a
        ``(nz, ny, nx)`` array. :meth:`affine` is the NIfTI ``(i, j, k)`` form.
        """
        a = np.zeros((4, 4))
        a[3, 3] = 1.0
        sx, sy, sz = self.spacing_xyz
        a[0, 2], a[1, 1], a[2, 0] = sx, sy, sz
        a[:3, 3] = self.voxel_center(0, 0, 0)
        return a

    # -- serialisation ----------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "spacing": list(self.spacing), "center": list(self.center)}

    @classmethod
    def from_dict(cls, d: dict, where: str = "grid") -> VolumeGrid:
        """A grid from its file form ``{shape, spacing, center}``.

        ``shape`` and ``spacing`` are required (a voxel size is never guessed); ``center``
        defaults to the origin (the isocenter), as the file format documents.

        Raises
        ------
        ValueError
            A missing or unknown field or a bad value; the message names it (``where.field``).
        """
        if not isinstance(d, dict):
            raise ValueError(f"{where} must be a mapping with shape, spacing and center, got {type(d).__name__}")
        unknown = set(d) - {"shape", "spacing", "center"}
        if unknown:
            raise ValueError(f"{where} has unknown field(s) {brief(sorted(map(str, unknown)))}; "
                             "expected shape, spacing, center")
        if "shape" not in d:
            raise ValueError(f"{where}.shape is missing (three positive integers nz, ny, nx)")
        if "spacing" not in d:
            raise ValueError(f"{where}.spacing is missing: add the voxel size in mm as [sz, sy, sx], "
                             "e.g. spacing: [1.5, 1.5, 1.5]")
        return cls(
            shape=as_positive_int_triple(d["shape"], f"{where}.shape"),
            spacing=as_positive_float_triple(d["spacing"], f"{where}.spacing"),
            center=as_finite_float_triple(d.get("center", (0.0, 0.0, 0.0)), f"{where}.center"),
        )

    def with_shape(self, shape, keep: str = "extent") -> VolumeGrid:
        """A grid with another voxel count over the same box (``keep='extent'``) or with the
        same spacing (``keep='spacing'``)."""
        shape = as_positive_int_triple(shape, "shape")
        if keep == "extent":
            spacing = tuple(e / n for e, n in zip(self.extent_mm, shape))
        elif keep == "spacing":
            spacing = self.spacing
        else:
            raise ValueError(f"keep must be 'extent' or 'spacing', got {keep!r}")
        return VolumeGrid(shape=shape, spacing=spacing, center=self.center)
