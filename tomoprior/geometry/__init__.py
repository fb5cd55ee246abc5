"""Geometry: voxel grids, views (source + detector), geometries and their calibrated
parametrisation, point projection, ASTRA conversion and file I/O. All lengths in mm."""

from .astra_convert import projections_from_astra, projections_to_astra
from .geometry import (
    DEFAULT_GRID,
    BiplanarGeometry,
    Geometry,
    GeometryWarning,
    isocenter_pixel_size,
    magnification_at,
)
from .grid import VolumeGrid
from .parameters import UnitsWarning, ViewParameters, default_frontal, default_lateral, read_view_parameters
from .view import View

__all__ = [
    "DEFAULT_GRID",
    "BiplanarGeometry",
    "Geometry",
    "GeometryWarning",
    "UnitsWarning",
    "View",
    "ViewParameters",
    "VolumeGrid",
    "default_frontal",
    "default_lateral",
    "isocenter_pixel_size",
    "magnification_at",
    "projections_from_astra",
    "projections_to_astra",
    "read_view_parameters",
]
