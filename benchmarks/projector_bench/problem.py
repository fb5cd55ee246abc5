"""The benchmark problem: the library's default pediatric bi-planar setup at a chosen sampling, a
smooth head-like volume and random back-projection weights.

Lengths in mm; volumes ``(nz, ny, nx)`` float32 in attenuation per mm; projections
``(views, rows, cols)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812 (the usual alias)

import tomoprior as tp

# The default pediatric setup (tomoprior.geometry.default_frontal / default_lateral): a 192 mm
# field of view and a 307.2 mm detector (1536 x 0.2 mm), 1000 mm source-to-isocenter, 1500 mm
# source-to-detector. --size and --det change the sampling, not the physical setup.
FIELD_OF_VIEW_MM = 192.0
DETECTOR_WIDTH_MM = 307.2
OPERATIONS = ("forward", "back", "fwd+bwd")
#: The plain projector every backend is compared with (:mod:`.peer`).
PEER = "grid_sample"
#: Row label of the "numba" backend run with its numba kernels only (compiled kernels off).
NUMBA_JIT_ONLY = "numba-jit-only"


def build_geometry(size: int, det: int) -> tp.BiplanarGeometry:
    """A ``size^3`` grid over the 192 mm field and two ``det x det`` views (PA + lateral)."""
    spacing = FIELD_OF_VIEW_MM / size
    grid = tp.VolumeGrid(shape=(size, size, size), spacing=(spacing, spacing, spacing))
    pitch = DETECTOR_WIDTH_MM / det
    frontal = tp.geometry.default_frontal(pixel_pitch=pitch, detector_shape=(det, det))
    lateral = tp.geometry.default_lateral(pixel_pitch=pitch, detector_shape=(det, det))
    return tp.BiplanarGeometry.from_parameters(frontal, lateral, grid=grid)


def make_volume(size: int, seed: int = 0) -> torch.Tensor:
    """A smooth head-like phantom, float32 ``(size, size, size)``, attenuation per mm.

    A soft-edged skull shell (0.045/mm) around brain-like tissue (0.021/mm) with a
    low-frequency random texture and two darker ellipsoids, zero outside. Smooth on
    purpose: the projectors compared here discretise differently, and a smooth volume
    makes their agreement a test of geometry rather than of aliasing.
    """
    gen = torch.Generator().manual_seed(seed)
    axis = torch.linspace(-1.0, 1.0, size, dtype=torch.float64)
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    edge = 2.5 / size  # soft edges about a voxel wide

    def ellipsoid(cx, cy, cz, ax, ay, az):
        r = torch.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 + ((z - cz) / az) ** 2)
        return torch.sigmoid((1.0 - r) / edge)

    head = ellipsoid(0.0, 0.0, 0.02, 0.70, 0.82, 0.78)
    brain = ellipsoid(0.0, 0.0, 0.02, 0.63, 0.75, 0.71)
    texture = torch.rand((1, 1, 6, 6, 6), generator=gen, dtype=torch.float64)
    texture = F.interpolate(texture, size=(size, size, size), mode="trilinear", align_corners=True)[0, 0]
    tissue = 0.021 * (0.85 + 0.3 * texture)
    holes = ellipsoid(-0.18, 0.05, 0.1, 0.1, 0.3, 0.15) + ellipsoid(0.18, 0.05, 0.1, 0.1, 0.3, 0.15)
    vol = 0.045 * (head - brain) + brain * tissue * (1.0 - 0.6 * holes)
    return vol.to(torch.float32).contiguous()


def make_weights(geom, seed: int = 1) -> torch.Tensor:
    """Random cotangent / back-projection input ``(views, rows, cols)``, float32."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(geom.projection_shape, generator=gen, dtype=torch.float32)


def num_rays(geom) -> int:
    return sum(r * c for r, c in geom.detector_shapes)


def problem_label(size: int, det: int) -> str:
    return f"{size}^3 -> 2x{det}^2"


@dataclass
class Problem:
    """One problem size: geometry, volume ``(size,) * 3`` and weights ``(2, det, det)``."""

    size: int
    det: int
    geom: object
    volume: torch.Tensor
    weights: torch.Tensor

    @classmethod
    def build(cls, size: int, det: int) -> Problem:
        geom = build_geometry(size, det)
        return cls(size, det, geom, make_volume(size), make_weights(geom))

    @property
    def rays(self) -> int:
        return num_rays(self.geom)

    @property
    def label(self) -> str:
        return problem_label(self.size, self.det)
