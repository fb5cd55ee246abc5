"""tomoprior: calibrated bi-planar / N-view cone-beam geometry, differentiable projectors
in PyTorch, phantoms that prove the model, and a slot for learned reconstruction refiners.

The most used names live here::

    import tomoprior as tp
    grid = tp.VolumeGrid(shape=(nz, ny, nx), spacing=(sz, sy, sx), center=(0, 0, 0))
    geom = tp.BiplanarGeometry.from_parameters()
    drr = tp.project(volume, geom)            # (..., views, rows, cols), autograd
    bp = tp.backproject(drr, geom)            # exact adjoint of project

Units: millimetres; angles in radians in code, degrees in files. World frame: patient
LPS (x left, y posterior, z superior). Volumes are ``(nz, ny, nx)``.
"""

from . import calibration, data, geometry, metrics, phantoms, physics, projectors, refiners, validation
from ._version import __version__
from .geometry import (
    BiplanarGeometry,
    Geometry,
    GeometryWarning,
    View,
    ViewParameters,
    VolumeGrid,
)
from .projectors import backproject, project

__all__ = [
    "BiplanarGeometry",
    "Geometry",
    "GeometryWarning",
    "View",
    "ViewParameters",
    "VolumeGrid",
    "__version__",
    "backproject",
    "calibration",
    "data",
    "geometry",
    "metrics",
    "phantoms",
    "physics",
    "project",
    "projectors",
    "refiners",
    "validation",
]
