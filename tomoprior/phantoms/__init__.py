"""Phantoms: analytic shapes (ellipsoids, spheres, cylinders) with exact cone-beam line
integrals, rasterisation onto voxel grids, and phantom files (YAML) loaded by name from the
repository's ``phantoms/`` folder, e.g. the 3D Shepp-Logan head sized for a child."""

from . import skull
from .phantom import ENV_VAR, SCHEMA, SCHEMA_VERSION, Phantom, available_phantoms, find, load, search_path
from .phantom import available as available  # deprecated alias of available_phantoms
from .shapes import Cylinder, Ellipsoid, Shape, Sphere, euler_zxz_matrix, shape_from_dict
from .skull import Skull, SkullParameters, make_skull

__all__ = [
    "ENV_VAR",
    "SCHEMA",
    "SCHEMA_VERSION",
    "Cylinder",
    "Ellipsoid",
    "Phantom",
    "Shape",
    "Skull",
    "SkullParameters",
    "Sphere",
    "available_phantoms",
    "euler_zxz_matrix",
    "find",
    "load",
    "make_skull",
    "search_path",
    "shape_from_dict",
    "skull",
]
