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

``import tomoprior`` loads none of the layers: each name below is imported on first use
(PEP 562), so ``import tomoprior`` and ``tomoprior --help`` stay fast while torch, numba
and scipy load only when a layer that needs them is touched. ``from tomoprior import X``
and ``tp.X`` work as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._version import __version__

#: Layers reachable as ``tomoprior.<name>``, imported on first access.
_SUBPACKAGES = ("calibration", "data", "geometry", "metrics", "phantoms", "physics", "projectors", "refiners",
                "validation")
#: Re-exported names -> the layer that defines them.
_NAMES = {
    "BiplanarGeometry": "geometry",
    "Geometry": "geometry",
    "GeometryWarning": "geometry",
    "View": "geometry",
    "ViewParameters": "geometry",
    "VolumeGrid": "geometry",
    "backproject": "projectors",
    "project": "projectors",
}

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

if TYPE_CHECKING:  # what static tools see; at run time __getattr__ below does the same lazily
    from . import calibration, data, geometry, metrics, phantoms, physics, projectors, refiners, validation
    from .geometry import BiplanarGeometry, Geometry, GeometryWarning, View, ViewParameters, VolumeGrid
    from .projectors import backproject, project


def __getattr__(name: str):
    """Import a layer or a re-exported name on first access and cache it in the module."""
    if name in _SUBPACKAGES:
        value = importlib.import_module(f"{__name__}.{name}")
    elif name in _NAMES:
        value = getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later lookups are ordinary attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
