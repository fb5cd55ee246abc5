"""Geometry files: YAML or JSON with a schema name and version.

Layout (lengths in mm; angles, where present, in degrees)::

    schema: tomoprior.geometry
    schema_version: 1
    units: {length: mm, angle: deg}
    grid: {shape: [nz, ny, nx], spacing: [sz, sy, sx], center: [x, y, z]}
    views:
      - {name: frontal, source: [x, y, z], detector_center: [x, y, z],
         u: [x, y, z], v: [x, y, z], shape: [rows, cols]}
    parameters:            # optional: the physical description of a ParametricGeometry
      - {name: frontal, primary_angle_deg: 0.0, source_to_isocenter: 1000.0, ...}

``grid.shape`` and ``grid.spacing`` are required (a voxel size is never guessed);
``grid.center`` defaults to the origin. Files are read through :mod:`tomoprior._yaml`
(size, alias, nesting and encoding limits), and every error names the file and the field.

The view vectors are authoritative. When ``parameters`` are present, loading rebuilds
the views from them and checks they agree with the stored vectors (to 1e-6 mm), so a file
edited by hand cannot silently disagree with itself.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from .._atomic import write_text_atomic
from .._yaml import DocumentError, brief, cap_message, load_json, load_yaml
from .grid import VolumeGrid
from .parameters import ViewParameters
from .view import View

SCHEMA = "tomoprior.geometry"
SCHEMA_VERSION = 1
_TOP_KEYS = {"schema", "schema_version", "units", "grid", "views", "parameters"}
_CONSISTENCY_TOL_MM = 1e-6


def geometry_to_dict(geom) -> dict:
    from .geometry import ParametricGeometry

    d = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "units": {"length": "mm", "angle": "deg"},
        "grid": geom.grid.to_dict(),
        "views": [v.to_dict() for v in geom.views],
    }
    if isinstance(geom, ParametricGeometry):
        d["parameters"] = [p.to_dict() for p in geom.parameters]
    return d


def geometry_from_dict(d: dict):
    """Build a :class:`Geometry` (a :class:`ParametricGeometry`, :class:`BiplanarGeometry` for two views,
    when the file has parameters) from a file's content.

    Raises
    ------
    ValueError
        A wrong schema or version, unknown or missing fields, wrong types, non-finite or
        absurd numbers; the message names the field (``views[1].source``) and quotes at
        most a few hundred characters of the offending value.
    """
    from .geometry import Geometry, ParametricGeometry

    if not isinstance(d, dict):
        raise ValueError(f"a geometry file must hold a mapping at the top level, got {type(d).__name__}")
    other = _other_document(d)
    if other is not None:
        return other
    if d.get("schema") != SCHEMA:
        raise ValueError(f"schema must be {SCHEMA!r}, got {brief(d.get('schema'))}; is this a tomoprior geometry file?")
    version = d.get("schema_version")
    # bool is an int in Python: `schema_version: true` must not pass for 1
    if isinstance(version, bool) or not isinstance(version, int) or version != SCHEMA_VERSION:
        raise ValueError(
            f"schema_version {brief(version)} is not supported (this tomoprior reads version {SCHEMA_VERSION}); "
            "upgrade tomoprior or re-export the file"
        )
    unknown = set(d) - _TOP_KEYS
    if unknown:
        raise ValueError(f"unknown top-level field(s) {brief(sorted(map(str, unknown)))}; expected {sorted(_TOP_KEYS)}")
    units = d.get("units", {"length": "mm"})
    if not isinstance(units, dict) or units.get("length", "mm") != "mm":
        raise ValueError(f"units.length must be 'mm', got {brief(units)}")
    if units.get("angle", "deg") != "deg":
        raise ValueError(f"units.angle must be 'deg', got {brief(units.get('angle'))}")
    if "grid" not in d:
        raise ValueError("grid is missing (shape, spacing, center)")
    grid = VolumeGrid.from_dict(d["grid"], "grid")
    raw_views = d.get("views")
    if not isinstance(raw_views, list) or not raw_views:
        raise ValueError(f"views must be a non-empty list of views, got {brief(raw_views)}")
    views = [View.from_dict(v, f"views[{i}]") for i, v in enumerate(raw_views)]
    if "parameters" not in d or d["parameters"] is None:
        return Geometry(grid, views)
    raw_params = d["parameters"]
    if not isinstance(raw_params, list):
        raise ValueError("parameters must be a list with one entry per view")
    if len(raw_params) != len(views):
        raise ValueError(f"parameters has {len(raw_params)} entries but views has {len(views)}")
    params = [ViewParameters.from_dict(p, f"parameters[{i}]") for i, p in enumerate(raw_params)]
    for i, (p, v) in enumerate(zip(params, views)):
        rebuilt = p.to_view()
        if rebuilt.shape != v.shape:
            raise ValueError(f"parameters[{i}].detector_shape {rebuilt.shape} disagrees with "
                             f"views[{i}].shape {v.shape}")
        diff = float((rebuilt.vector.detach() - v.vector.detach().to(rebuilt.dtype)).abs().max())
        if not math.isfinite(diff) or diff > _CONSISTENCY_TOL_MM:
            raise ValueError(
                f"parameters[{i}] and views[{i}] disagree by {diff:.3g} mm; edit one and regenerate the other "
                "(or delete 'parameters' to keep the vectors)"
            )
    return ParametricGeometry.of(grid, params)


def _other_document(d: dict):
    """The geometry held by a calibration result, a QA report or a parameters-only file (None
    for anything else): ``Geometry.load`` reads every file tomoprior writes with a geometry."""
    from .geometry import ParametricGeometry
    from .grid import VolumeGrid
    from .parameters import VIEW_PARAMETERS_SCHEMA, parameters_from_document

    if isinstance(d.get("calibration_result"), dict) and "verdict" in d:  # a QA report.json
        verdict = d.get("verdict") or {}
        if isinstance(verdict, dict) and verdict.get("pass") is False:
            reasons = "; ".join(str(r) for r in (verdict.get("reasons") or [])[:3])
            raise ValueError(f"this QA report's calibration FAILED ({brief(reasons)}); its geometry is not accepted. "
                             "Recalibrate, or load geometry.FAILED.yaml explicitly if you must inspect it")
        d = d["calibration_result"]
    if d.get("schema") == "tomoprior.calibration":  # CalibrationResult.save
        if not isinstance(d.get("geometry"), dict):
            raise ValueError("the calibration result has no 'geometry' entry")
        return geometry_from_dict(d["geometry"])
    if d.get("schema") == VIEW_PARAMETERS_SCHEMA:
        params, grid, _ = parameters_from_document(d, "parameters file")
        if grid is None:
            from .geometry import DEFAULT_GRID

            grid = DEFAULT_GRID
        if not isinstance(grid, VolumeGrid):
            raise ValueError("parameters file: bad grid")
        return ParametricGeometry.of(grid, params)
    return None


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return "yaml"
    if suffix == ".json":
        return "json"
    raise ValueError(f"geometry files end in .yaml, .yml or .json, got {brief(path.name)}; rename the file")


def dumps(geom, fmt: str = "yaml") -> str:
    """The file text of ``geom`` as YAML or JSON."""
    d = geometry_to_dict(geom)
    if fmt == "yaml":
        return yaml.safe_dump(d, sort_keys=False, default_flow_style=None, width=120)
    if fmt == "json":
        return json.dumps(d, indent=2) + "\n"
    raise ValueError(f"fmt must be 'yaml' or 'json', got {fmt!r}")


def loads(text: str, fmt: str = "yaml", *, source: str | None = None):
    """Parse geometry file text (YAML or JSON).

    ``source`` (e.g. the file path) prefixes error messages. Raises ValueError (with the
    field or the parser's complaint) for anything that is not a valid geometry.
    """
    if fmt not in ("yaml", "json"):
        raise ValueError(f"fmt must be 'yaml' or 'json', got {brief(fmt)}")
    what = f"geometry {fmt.upper()}" if source is None else "geometry file"
    try:
        d = load_yaml(text, what=what) if fmt == "yaml" else load_json(text, what=what)
    except DocumentError as exc:
        if source is None:
            raise
        raise ValueError(str(exc).replace("<text>", source, 1)) from None
    try:
        return geometry_from_dict(d)
    except ValueError as exc:
        if source is None:
            raise ValueError(cap_message(str(exc))) from None
        raise ValueError(cap_message(f"geometry file {source}: {exc}")) from None


def save_geometry(geom, path) -> None:
    path = Path(path)
    write_text_atomic(path, dumps(geom, _format_of(path)))


def load_geometry(path):
    """Read a geometry file (``.yaml``/``.yml``/``.json``); errors name the file and the field."""
    path = Path(path)
    fmt = _format_of(path)
    what = "geometry file"
    d = load_yaml(path, what=what) if fmt == "yaml" else load_json(path, what=what)
    try:
        return geometry_from_dict(d)
    except ValueError as exc:
        raise ValueError(cap_message(f"geometry file {path}: {exc}")) from None
