"""Geometry: voxel grids, views (source + detector), geometries and their calibrated
parametrisation, point projection, ASTRA conversion and file I/O. All lengths in mm."""

from .astra_convert import projections_from_astra, projections_to_astra
from .geometry import (
    DEFAULT_GRID,
    BiplanarGeometry,
    Geometry,
    GeometryWarning,
    ParametricGeometry,
    isocenter_pixel_size,
    magnification_at,
    view_sees_box,
    volume_coverage,
    volume_relation,
)
from .grid import VolumeGrid
from .parameters import UnitsWarning, ViewParameters, default_frontal, default_lateral, read_view_parameters
from .triangulation import triangulate
from .view import View, projection_matrix_from_vector

__all__ = [
    "DEFAULT_GRID",
    "BiplanarGeometry",
    "Geometry",
    "GeometryWarning",
    "ParametricGeometry",
    "UnitsWarning",
    "View",
    "ViewParameters",
    "VolumeGrid",
    "default_frontal",
    "default_lateral",
    "isocenter_pixel_size",
    "magnification_at",
    "projection_matrix_from_vector",
    "projections_from_astra",
    "projections_to_astra",
    "read_view_parameters",
    "triangulate",
    "view_sees_box",
    "volume_coverage",
    "volume_relation",
]
