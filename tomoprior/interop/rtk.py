"""RTK (Reconstruction Toolkit) circular cone-beam geometry: its nine parameters and its XML file.

RTK describes each projection of a ``ThreeDCircularProjectionGeometry`` with nine numbers
(lengths in mm, angles in degrees in the file):

========================== ==================================================================
``SourceToIsocenterDistance`` source distance from the isocenter (world origin) along the
                              detector normal (RTK's "SID")
``SourceToDetectorDistance``  source distance from the detector plane along its normal
``GantryAngle``               rotation about the world y axis
``OutOfPlaneAngle``           rotation about x
``InPlaneAngle``              rotation about z
``SourceOffsetX/Y``           source position across the beam, in the rotated frame
``ProjectionOffsetX/Y``       detector shift in its plane, in the rotated frame
========================== ==================================================================

Geometry (as RTK's ``ThreeDCircularProjectionGeometry`` builds its matrices): with the
rotation ``Q = Rz(-InPlane) Rx(-OutOfPlane) Ry(-Gantry)`` (ITK's Euler "ZXY" order) a world
point ``x`` has rotated coordinates ``q = Q x``. There the source sits at
``(SourceOffsetX, SourceOffsetY, SID)`` and the detector point with *projection
coordinates* ``(pu, pv)`` (mm, the physical coordinates of RTK's projection image) at
``(pu + ProjectionOffsetX, pv + ProjectionOffsetY, SID - SDD)``. RTK's 3x4 ``Matrix`` maps
``(x, y, z, 1)`` to ``(pu, pv, 1)`` up to a scale whose ``w`` is negative in front of the
source.

The projection image turns projection coordinates into pixels: with its ``origin``
``(ou, ov)`` mm (the physical position of pixel ``(0, 0)``), spacing = the pixel pitch and an
identity direction matrix, column ``c`` is at ``pu = ou + c * pitch_col`` and row ``r`` at
``pv = ov + r * pitch_row``. The default origin centres the image on the detector axis,
``(-(cols-1)/2 * pitch_col, -(rows-1)/2 * pitch_row)``. RTK's world is ITK's physical
space, which is patient LPS for images read from DICOM, so world coordinates pass unchanged.

So a tomoprior :class:`~tomoprior.geometry.view.View` converts exactly when its ``u`` and
``v`` are perpendicular and ``u x v`` points from the detector toward the source (true of
every view :class:`~tomoprior.geometry.parameters.ViewParameters` builds); other views are
refused with the reason. RTK's cylindrical detectors and parallel geometries are refused
when reading; collimation values are ignored (they do not move any ray).

Files are read with the standard library's expat parser with every DTD feature refused
except RTK's bare ``<!DOCTYPE RTKGEOMETRY>`` line: no internal subset, no external
identifier, no entity declarations, so no entity can expand.
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from xml.parsers import expat

import numpy as np

from .._atomic import write_text_atomic
from ..geometry.view import View

#: RTK's current geometry file version (it also reads version 2, which is compatible).
RTK_FILE_VERSION = 3
#: Largest geometry file read, bytes (a file of 100 000 projections is ~80 MB).
MAX_FILE_BYTES = 200 * 1024 * 1024
#: RTK refuses a file whose Matrix differs from its parameters by more than this (any entry).
MATRIX_TOL = 1e-3
#: |cos| between u and v above which a view's pixel axes count as not perpendicular.
ORTHO_TOL = 1e-6


@dataclass(frozen=True)
class RTKProjection:
    """The nine RTK parameters of one projection (mm and degrees, as in RTK's file)."""

    source_to_isocenter: float
    source_to_detector: float
    gantry_angle: float
    projection_offset_x: float = 0.0
    projection_offset_y: float = 0.0
    out_of_plane_angle: float = 0.0
    in_plane_angle: float = 0.0
    source_offset_x: float = 0.0
    source_offset_y: float = 0.0

    def __post_init__(self):
        for field, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise ValueError(f"RTK {_ELEMENT[field]} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"RTK {_ELEMENT[field]} must be finite, got {value!r}")
            object.__setattr__(self, field, float(value))

    def rotation(self) -> np.ndarray:
        """RTK's rotation ``Q`` (3, 3): world -> rotated frame."""
        return _euler_zxy(-math.radians(self.out_of_plane_angle), -math.radians(self.gantry_angle),
                          -math.radians(self.in_plane_angle))

    def matrix(self) -> np.ndarray:
        """RTK's 3x4 projection matrix to projection coordinates (mm), as in its ``<Matrix>``."""
        sid, sdd = self.source_to_isocenter, self.source_to_detector
        sx, sy = self.source_offset_x, self.source_offset_y
        px, py = self.projection_offset_x, self.projection_offset_y
        shift2d = np.array([[1.0, 0.0, sx - px], [0.0, 1.0, sy - py], [0.0, 0.0, 1.0]])
        magnify = np.array([[-sdd, 0.0, 0.0, 0.0], [0.0, -sdd, 0.0, 0.0], [0.0, 0.0, 1.0, -sid]])
        shift3d = np.eye(4)
        shift3d[:2, 3] = (-sx, -sy)
        rot = np.eye(4)
        rot[:3, :3] = self.rotation()
        return shift2d @ magnify @ shift3d @ rot


def _euler_zxy(ax: float, ay: float, az: float) -> np.ndarray:
    """ITK's Euler3DTransform matrix in ZXY order: ``Rz(az) @ Rx(ax) @ Ry(ay)``."""
    cx, sx, cy, sy, cz, sz = math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay), math.cos(az), math.sin(az)
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]])
    ry = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    rz = np.array([[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]])
    return rz @ rx @ ry


def _pitch_origin(shape, pixel_pitch, origin) -> tuple[tuple[int, int], float, float, float, float]:
    from ..geometry.pinhole import as_detector_shape, as_pixel_pitch

    rows, cols = as_detector_shape(shape)
    pr, pc = as_pixel_pitch(pixel_pitch)
    if origin is None:
        ou, ov = -(cols - 1) / 2 * pc, -(rows - 1) / 2 * pr
    else:
        arr = np.asarray(origin, dtype=np.float64).reshape(-1)
        if arr.shape != (2,) or not np.isfinite(arr).all():
            raise ValueError(f"origin must be the projection image origin (x, y) in mm, two finite numbers, got "
                             f"{origin!r}")
        ou, ov = float(arr[0]), float(arr[1])
    return (rows, cols), pr, pc, ou, ov


def view_from_rtk(projection: RTKProjection, shape, pixel_pitch, *, origin=None, name: str | None = None) -> View:
    """The :class:`View` of one RTK projection.

    Parameters
    ----------
    projection : RTKProjection
    shape : (rows, cols)
        Size of RTK's projection image in pixels.
    pixel_pitch : float or (row, col)
        Its spacing in mm.
    origin : (x, y), optional
        Its origin in mm (physical position of pixel ``(0, 0)``); default centred.
    """
    (rows, cols), pr, pc, ou, ov = _pitch_origin(shape, pixel_pitch, origin)
    p = projection
    if not p.source_to_detector > 0:
        raise ValueError(f"SourceToDetectorDistance is {p.source_to_detector}: RTK uses 0 for a parallel geometry; "
                         "tomoprior views are cone beam and need a positive distance")
    qt = p.rotation().T  # rotated frame -> world
    source = qt @ np.array([p.source_offset_x, p.source_offset_y, p.source_to_isocenter])
    center = qt @ np.array([ou + (cols - 1) / 2 * pc + p.projection_offset_x,
                            ov + (rows - 1) / 2 * pr + p.projection_offset_y,
                            p.source_to_isocenter - p.source_to_detector])
    return View(source, center, qt[:, 0] * pc, qt[:, 1] * pr, (rows, cols), name=name)


def rtk_from_view(view: View, *, origin=None) -> RTKProjection:
    """The RTK parameters of a view (see the module notes for which views convert).

    Raises
    ------
    ValueError
        ``u`` and ``v`` not perpendicular, ``u x v`` pointing away from the source (a
        mirrored detector frame RTK cannot hold). At an out-of-plane angle of +-90 deg (a
        beam along world y, where RTK's gantry and in-plane rotations coincide) the in-plane
        angle is set to 0.
    """
    label = f"view {view.name!r}" if view.name else "view"
    _, pr, pc, ou, ov = _pitch_origin(view.shape, view.pixel_pitch, origin)
    s, c, u, v = (t.detach().cpu().double().numpy() for t in (view.source, view.detector_center, view.u, view.v))
    ex, ey = u / np.linalg.norm(u), v / np.linalg.norm(v)
    cos_uv = float(ex @ ey)
    if abs(cos_uv) > ORTHO_TOL:
        raise ValueError(f"{label}: u and v meet at {math.degrees(math.acos(cos_uv)):.6f} deg; RTK's detector has "
                         "perpendicular rows and columns, so this view cannot be written for RTK")
    ez = np.cross(ex, ey)
    if (s - c) @ ez <= 0:
        raise ValueError(f"{label}: u x v points away from the source, so its image is mirrored with respect to "
                         "RTK's detector frame (where u x v points to the source); mirror the image columns "
                         "(View with u -> -u) before converting")
    q = np.stack([ex, ey, ez])  # world -> rotated frame
    # q = Rz(az) Rx(ax) Ry(ay): row 2 is (-cos ax sin ay, sin ax, cos ax cos ay)
    ax = math.atan2(q[2, 1], math.hypot(q[2, 0], q[2, 2]))
    if math.hypot(q[2, 0], q[2, 2]) > 1e-9:
        ay = math.atan2(-q[2, 0], q[2, 2])
        az = math.atan2(-q[0, 1], q[1, 1])
    else:  # out-of-plane angle +-90 deg (e.g. a beam along world y): only ay + az or ay - az is defined
        az = 0.0
        ay = math.atan2(q[0, 2], q[0, 0])
    if np.abs(_euler_zxy(ax, ay, az) - q).max() > 1e-9:  # pragma: no cover - guards the algebra
        raise ValueError(f"{label}: could not express its detector orientation in RTK's angles")
    sid = float(ez @ s)
    return RTKProjection(
        source_to_isocenter=sid,
        source_to_detector=float(ez @ (s - c)),
        gantry_angle=math.degrees(-ay) % 360.0,
        projection_offset_x=float(ex @ c - ou - (view.cols - 1) / 2 * pc),
        projection_offset_y=float(ey @ c - ov - (view.rows - 1) / 2 * pr),
        out_of_plane_angle=math.degrees(-ax) % 360.0,
        in_plane_angle=math.degrees(-az) % 360.0,
        source_offset_x=float(ex @ s),
        source_offset_y=float(ey @ s),
    )


# -- the XML file -------------------------------------------------------------------------

_FIELDS = {  # RTK element name (case-insensitive, as RTK compares) -> RTKProjection field
    "sourcetoisocenterdistance": "source_to_isocenter",
    "sourcetodetectordistance": "source_to_detector",
    "gantryangle": "gantry_angle",
    "angle": "gantry_angle",  # RTK still reads this older name
    "projectionoffsetx": "projection_offset_x",
    "projectionoffsety": "projection_offset_y",
    "outofplaneangle": "out_of_plane_angle",
    "inplaneangle": "in_plane_angle",
    "sourceoffsetx": "source_offset_x",
    "sourceoffsety": "source_offset_y",
}
_ELEMENT = {  # field -> element written
    "source_to_isocenter": "SourceToIsocenterDistance",
    "source_to_detector": "SourceToDetectorDistance",
    "gantry_angle": "GantryAngle",
    "projection_offset_x": "ProjectionOffsetX",
    "projection_offset_y": "ProjectionOffsetY",
    "out_of_plane_angle": "OutOfPlaneAngle",
    "in_plane_angle": "InPlaneAngle",
    "source_offset_x": "SourceOffsetX",
    "source_offset_y": "SourceOffsetY",
}
_IGNORED = {"collimationuinf", "collimationusup", "collimationvinf", "collimationvsup"}


class _RefusedError(Exception):
    pass


def _safe_parse(data: bytes, where: str) -> ET.Element:
    parser = expat.ParserCreate()
    builder = ET.TreeBuilder()

    def doctype(name, system_id, public_id, has_internal_subset):
        if system_id or public_id or has_internal_subset:
            raise _RefusedError(f"its DOCTYPE {name!r} has an external identifier or an internal subset")

    def entity(*args):
        raise _RefusedError("it declares an entity")

    def external(*args):
        raise _RefusedError("it refers to an external entity")

    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    parser.StartDoctypeDeclHandler = doctype
    parser.EntityDeclHandler = entity
    parser.UnparsedEntityDeclHandler = entity
    parser.ExternalEntityRefHandler = external
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    try:
        parser.Parse(data, True)
        return builder.close()
    except _RefusedError as exc:
        raise ValueError(f"{where}: refused: {exc}; an RTK geometry file needs no DTD features") from None
    except expat.ExpatError as exc:
        raise ValueError(f"{where} is not well-formed XML: {exc}") from None


def _number(el: ET.Element, where: str) -> float:
    text = (el.text or "").strip()
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where}: <{el.tag}> must hold one number, got {text[:40]!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{where}: <{el.tag}> is {text!r}; give a finite number")
    return value


def parse_rtk_geometry(data: bytes | str, where: str = "RTK geometry") -> list[RTKProjection]:
    """The projections of an RTK ``ThreeDCircularGeometry`` XML document.

    Values outside ``<Projection>`` elements apply to all that follow, and values inside one
    also carry on to later projections until set again (both as RTK's reader does). A
    ``<Matrix>`` is checked against the parameters with RTK's tolerance (``1e-3`` per entry).
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    root = _safe_parse(data, where)
    if root.tag != "RTKThreeDCircularGeometry":
        raise ValueError(f"{where}: the root element is <{root.tag}>, not <RTKThreeDCircularGeometry>")
    version = root.get("version")
    if version not in ("2", "3"):
        raise ValueError(f"{where}: version {version!r}; RTK reads versions 2 and 3 of this format")
    state = {f: 0.0 for f in _ELEMENT}
    out: list[RTKProjection] = []

    def apply(el: ET.Element, here: str) -> None:
        key = el.tag.lower()
        if key in _FIELDS:
            state[_FIELDS[key]] = _number(el, here)
        elif key == "radiuscylindricaldetector":
            if _number(el, here) != 0.0:
                raise ValueError(f"{here}: a cylindrical detector (RadiusCylindricalDetector != 0); tomoprior views "
                                 "are flat")
        elif key in _IGNORED:
            _number(el, here)

    for el in root:
        if el.tag.lower() != "projection":
            apply(el, where)
            continue
        here = f"{where}, projection {len(out)}"
        matrix = None
        for child in el:
            if child.tag.lower() == "matrix":
                try:
                    matrix = np.array([float(x) for x in (child.text or "").split()])
                except ValueError:
                    raise ValueError(f"{here}: <Matrix> must hold 12 numbers") from None
                if matrix.shape != (12,) or not np.isfinite(matrix).all():
                    raise ValueError(f"{here}: <Matrix> must hold 12 finite numbers, got {matrix.size}")
            else:
                apply(child, here)
        proj = RTKProjection(**state)
        if not proj.source_to_detector > 0:
            raise ValueError(f"{here}: SourceToDetectorDistance is {proj.source_to_detector}; 0 (or missing) means "
                             "a parallel geometry, which tomoprior does not model")
        if matrix is not None:
            diff = float(np.abs(matrix.reshape(3, 4) - proj.matrix()).max())
            if diff > MATRIX_TOL:
                raise ValueError(f"{here}: <Matrix> and the parameters disagree by up to {diff:.4g} (RTK allows "
                                 f"{MATRIX_TOL:g}); the file is inconsistent")
        out.append(proj)
    if not out:
        raise ValueError(f"{where} has no <Projection>")
    return out


def read_rtk_geometry(path, shape, pixel_pitch, *, origin=None, names: Sequence[str] | None = None) -> list[View]:
    """Views of an RTK geometry file (``rtk.ThreeDCircularProjectionGeometryXMLFileWriter`` output).

    ``shape``, ``pixel_pitch`` and ``origin`` describe RTK's projection image (the file has
    no pixel information); see :func:`view_from_rtk`.
    """
    path = Path(path)
    try:
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            raise ValueError(f"{path} is {size / 1e6:.0f} MB, more than an RTK geometry file can sensibly be "
                             f"({MAX_FILE_BYTES / 1e6:.0f} MB)")
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read RTK geometry {path}: {exc.strerror or exc}") from None
    projections = parse_rtk_geometry(data, str(path))
    if names is not None and len(names) != len(projections):
        raise ValueError(f"names has {len(names)} entries for {len(projections)} projections in {path}")
    return [view_from_rtk(p, shape, pixel_pitch, origin=origin, name=None if names is None else names[i])
            for i, p in enumerate(projections)]


def format_rtk_geometry(projections: Sequence[RTKProjection]) -> str:
    """RTK's XML text for these projections (every parameter and the Matrix per projection)."""
    lines = ['<?xml version="1.0"?>', "<!DOCTYPE RTKGEOMETRY>",
             f'<RTKThreeDCircularGeometry version="{RTK_FILE_VERSION}">']
    for p in projections:
        lines.append("  <Projection>")
        for field, value in asdict(p).items():
            lines.append(f"    <{_ELEMENT[field]}>{float(value)!r}</{_ELEMENT[field]}>")
        lines.append("    <Matrix>")
        for row in p.matrix():
            lines.append("      " + " ".join(repr(float(x)) for x in row))
        lines.append("    </Matrix>")
        lines.append("  </Projection>")
    lines.append("</RTKThreeDCircularGeometry>")
    return "\n".join(lines) + "\n"


def write_rtk_geometry(views: Sequence[View], path, *, origin=None) -> list[RTKProjection]:
    """Write views as an RTK geometry file (atomically) and return their RTK parameters.

    The views must share one detector shape and pitch (RTK's projections are one image
    stack); ``origin`` is that image's origin (default centred).
    """
    views = list(views.views if hasattr(views, "views") else views)
    if not views:
        raise ValueError("no views to write")
    kinds = {(v.shape, tuple(round(x, 9) for x in v.pixel_pitch)) for v in views}
    if len(kinds) != 1:
        raise ValueError(f"RTK's projections share one image geometry; these views have shapes/pitches "
                         f"{sorted(kinds)}")
    projections = [rtk_from_view(v, origin=origin) for v in views]
    write_text_atomic(Path(path), format_rtk_geometry(projections))
    return projections
