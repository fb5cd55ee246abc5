"""Calibrated parametrisation of a view: physical C-arm / radiography quantities -> View.

A :class:`ViewParameters` holds the quantities a physicist measures or calibrates, and
:meth:`ViewParameters.to_view` turns them into the ``View`` vectors with torch operations
only, so gradients flow from e.g. ``source_to_detector`` through the view into the
projectors (pose refinement, calibration by autograd).

Construction (all lengths mm, angles rad in code, degrees in files)
-------------------------------------------------------------------
1. Gantry rotation ``R = Rz(primary_angle) @ Rx(-secondary_angle)``. At zero angles the
   beam runs along -y (posterior -> anterior): the source is behind the patient (+y) and
   the detector in front, a PA projection. ``primary_angle`` follows DICOM's Positioner
   Primary Angle (0018,1510): positive toward LAO, i.e. the detector swings toward the
   patient's left (+x); +90 deg is a left lateral (detector on the left, source on the
   right). ``secondary_angle`` follows DICOM's Positioner Secondary Angle (0018,1511):
   positive toward cranial, the detector swings toward +z.
2. Beam axis ``b = R (0, -1, 0)``, detector axes ``e_u = R (1, 0, 0)`` (columns toward the
   patient's left on a PA image, as radiographs are read) and ``e_v = R (0, 0, -1)`` (rows
   toward the feet). ``e_u x e_v`` points back to the source.
3. ``source = isocenter - source_to_isocenter * b``; the central ray meets the untilted
   detector at ``c = source + source_to_detector * b``; the detector centre is
   ``c - u0 * e_u - v0 * e_v``, so ``(u0, v0)``, the **detector offset**, places ``c``
   ``(u0, v0)`` mm from the detector centre, i.e. at pixel
   ``((cols-1)/2 + u0/pitch_col, (rows-1)/2 + v0/pitch_row)``.
4. The detector then turns about its own centre by ``Rd = A(n, detector_rotation) @
   A(e_u, detector_tilt_u) @ A(e_v, detector_tilt_v)`` where ``A(axis, angle)`` is a
   right-handed rotation and ``n = e_u x e_v``: ``detector_rotation`` is the in-plane
   rotation (counter-clockwise as seen from the source), ``detector_tilt_u`` turns the
   detector about its row direction (the v axis leaves the plane), ``detector_tilt_v``
   about its column direction. ``u = pitch_col * Rd e_u`` and ``v = pitch_row * Rd e_v``.

So ``source_to_detector``, ``u0`` and ``v0`` describe the untilted detector; a tilt pivots
about the detector centre. Two points are easily confused and are named apart throughout
tomoprior: the **detector offset** ``(u0, v0)`` (a calibrated parameter: where the central
ray of the *untilted* detector meets it) and the **principal point**
(:attr:`View.principal_point`: the foot of the perpendicular from the source on the actual,
possibly tilted, detector, derived from the view). Without tilts they coincide; a 1 degree
tilt at 1500 mm moves the principal point by about 26 mm. :attr:`View.source_to_detector`
is the perpendicular distance to the tilted plane.

Per view this is 9 degrees of freedom (source: two angles and ``source_to_isocenter``;
detector position: ``source_to_detector``, ``u0``, ``v0``; detector angles: rotation and
two tilts) plus the shared ``isocenter``.
"""

from __future__ import annotations

import contextvars
import dataclasses
import math
from dataclasses import dataclass, field

import torch

from ._tensor import DEFAULT_DTYPE, as_positive_int_pair, as_vector3, pair_of_scalars, scalar_tensor
from .rotations import axis_angle_matrix, rotation_x, rotation_z
from .view import View

Number = float | torch.Tensor

#: Default pediatric bi-planar skull setup. Where the numbers come from:
#: - source-to-isocenter 1000 mm and source-to-detector 1500 mm (magnification 1.5): a
#:   typical skull radiography / bi-planar setup; PSCT-Net's DRRs use 1500 mm to the
#:   detector (arXiv 2606.19867), X2CT-GAN's 541/949 mm (Ying et al., CVPR 2019).
#: - 0.2 mm pixel pitch: within the 0.076-0.175 mm (native) to 0.2 mm (binned 2x2) range of
#:   clinical flat panels.
#: - 1536 x 1536 pixels at 0.2 mm = 307 mm detector, i.e. 205 mm at the isocenter: covers a
#:   24-month-old head (length ~170 mm, width ~140 mm) with margin in both views.
DEFAULT_SOURCE_TO_ISOCENTER = 1000.0
DEFAULT_SOURCE_TO_DETECTOR = 1500.0
DEFAULT_PIXEL_PITCH = 0.2
DEFAULT_DETECTOR_SHAPE = (1536, 1536)


def _zero() -> float:
    return 0.0


class UnitsWarning(UserWarning):
    """An angle given to :class:`ViewParameters` looks like degrees typed into a radian field."""


#: Detector rotation/tilt beyond this (degrees) draws a :class:`UnitsWarning` (a calibrated
#: detector is rarely off by more than a few degrees; 0.3 meant as degrees is 17 degrees).
DETECTOR_ANGLE_WARN_DEG = 10.0
#: Gantry angles beyond one turn (radians) draw a :class:`UnitsWarning` (90 meant as degrees).
GANTRY_ANGLE_WARN_RAD = 2 * math.pi + 1e-9


#: The angle fields a :meth:`ViewParameters.replace` in progress changes (None: all, as in the
#: constructor): a copy warns about what it was given, not again about fields it kept.
_WARN_FIELDS: contextvars.ContextVar[frozenset | None] = contextvars.ContextVar("_WARN_FIELDS", default=None)


def _warn_suspect_angles(p: ViewParameters) -> None:
    """Warn when a plain-number angle field is probably in degrees (tensors come from code: skipped)."""
    import warnings

    only = _WARN_FIELDS.get()
    for f in p.ANGLE_FIELDS:
        if only is not None and f not in only:
            continue
        v = getattr(p, f)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        deg = math.degrees(v)
        if f in ("primary_angle", "secondary_angle"):
            suspect = abs(v) > GANTRY_ANGLE_WARN_RAD
        else:
            # a quarter-turned detector (portrait/landscape) is legitimate
            quarter = abs(deg / 90.0 - round(deg / 90.0)) * 90.0 < 1.0
            suspect = abs(deg) > DETECTOR_ANGLE_WARN_DEG and not quarter
        if suspect:
            warnings.warn(
                f"ViewParameters({p.name!r}).{f} = {v:g} rad is {deg:.1f} deg. Angles are in radians in code; if "
                f"you meant {v:g} degrees, pass math.radians({v:g}) or use {f}_deg={v:g} with "
                "ViewParameters.from_degrees(...) or .replace(...)", UnitsWarning, stacklevel=4,
            )


@dataclass
class ViewParameters:
    """Physical parameters of one view; :meth:`to_view` is the differentiable map to a View.

    Every continuous field accepts a Python number or a 0-d torch tensor (possibly with
    ``requires_grad``). See the module docstring for the exact construction.

    Parameters
    ----------
    name : str
        View label, e.g. ``"frontal"``.
    primary_angle : float, rad
        Gantry rotation about the patient's long axis (+z); positive toward LAO.
    secondary_angle : float, rad
        Cranial (+) / caudal (-) angulation.
    source_to_isocenter : float, mm
        Distance from the focal spot to the isocenter (RTK's "SID"; radiography's SOD).
    source_to_detector : float, mm
        Distance from the focal spot to the (untilted) detector plane (radiography's "SID",
        source-to-image distance; RTK's SDD).
    u0, v0 : float, mm
        Detector offset: where the central ray meets the untilted detector, relative to the
        detector centre, along the column (u0) and row (v0) directions. Not the principal
        point of a tilted detector (:attr:`View.principal_point`).
    detector_rotation : float, rad
        In-plane rotation of the detector about its normal.
    detector_tilt_u, detector_tilt_v : float, rad
        Out-of-plane tilts about the detector's u (row) and v (column) directions.
    pixel_pitch : float or (row_pitch, col_pitch), mm
        Stored as the ``(row, col)`` pair (a single number means a square pixel).
    detector_shape : (rows, cols)
    isocenter : (x, y, z), mm
        World position of the point the views are aimed at.

    Examples
    --------
    >>> p = ViewParameters(name="frontal", pixel_pitch=0.8, detector_shape=(384, 384))
    >>> view = p.to_view()
    >>> [round(float(x), 6) for x in view.source]
    [0.0, 1000.0, 0.0]
    """

    name: str = "view"
    primary_angle: Number = field(default_factory=_zero)
    secondary_angle: Number = field(default_factory=_zero)
    source_to_isocenter: Number = DEFAULT_SOURCE_TO_ISOCENTER
    source_to_detector: Number = DEFAULT_SOURCE_TO_DETECTOR
    u0: Number = field(default_factory=_zero)
    v0: Number = field(default_factory=_zero)
    detector_rotation: Number = field(default_factory=_zero)
    detector_tilt_u: Number = field(default_factory=_zero)
    detector_tilt_v: Number = field(default_factory=_zero)
    pixel_pitch: Number | tuple = DEFAULT_PIXEL_PITCH
    detector_shape: tuple[int, int] = DEFAULT_DETECTOR_SHAPE
    isocenter: tuple | torch.Tensor = (0.0, 0.0, 0.0)

    #: Continuous scalar fields, in the order used by :meth:`to_dict` and calibration.
    SCALAR_FIELDS = (
        "primary_angle", "secondary_angle", "source_to_isocenter", "source_to_detector",
        "u0", "v0", "detector_rotation", "detector_tilt_u", "detector_tilt_v",
    )
    ANGLE_FIELDS = ("primary_angle", "secondary_angle", "detector_rotation", "detector_tilt_u", "detector_tilt_v")

    def __post_init__(self):
        where = f"ViewParameters({self.name!r})"
        for f in self.SCALAR_FIELDS:
            scalar_tensor(getattr(self, f), f"{where}.{f}")  # validates finiteness
        sod = float(scalar_tensor(self.source_to_isocenter, "source_to_isocenter").detach())
        sdd = float(scalar_tensor(self.source_to_detector, "source_to_detector").detach())
        if sod <= 0:
            raise ValueError(f"{where}.source_to_isocenter must be > 0 mm, got {sod}")
        if sdd <= 0:
            raise ValueError(f"{where}.source_to_detector must be > 0 mm, got {sdd}")
        pr, pc = pair_of_scalars(self.pixel_pitch, f"{where}.pixel_pitch")
        if not (float(pr.detach()) > 0 and float(pc.detach()) > 0):
            raise ValueError(f"{where}.pixel_pitch must be > 0 mm, got {self.pixel_pitch!r}")
        # always a (row, col) pair: one square pitch given as a number is stored as (p, p)
        pp = self.pixel_pitch
        self.pixel_pitch = tuple(pp) if isinstance(pp, (tuple, list)) else (pp, pp)
        self.detector_shape = as_positive_int_pair(self.detector_shape, f"{where}.detector_shape")
        as_vector3(self.isocenter, f"{where}.isocenter")
        _warn_suspect_angles(self)

    @classmethod
    def from_degrees(cls, **fields) -> ViewParameters:
        """Construct with angles in degrees: ``primary_angle_deg``, ``secondary_angle_deg``,
        ``detector_rotation_deg``, ``detector_tilt_u_deg``, ``detector_tilt_v_deg`` (the other
        fields as in the constructor).

        Examples
        --------
        >>> p = ViewParameters.from_degrees(name="lateral", primary_angle_deg=90, detector_rotation_deg=0.3)
        >>> round(p.primary_angle, 6), round(math.degrees(p.detector_rotation), 6)
        (1.570796, 0.3)
        """
        return cls(**_degrees_to_radians(fields))
    # -- the differentiable map -----------------------------------------------------------
    def to_view(self, dtype: torch.dtype | None = None, device=None) -> View:
        """Build the :class:`View` (differentiable in every continuous field)."""
        vals = {f: scalar_tensor(getattr(self, f), f) for f in self.SCALAR_FIELDS}
        pr, pc = pair_of_scalars(self.pixel_pitch, "pixel_pitch")
        iso = as_vector3(self.isocenter, "isocenter")
        if dtype is None:
            dtype = DEFAULT_DTYPE
            for t in (*vals.values(), pr, pc, iso):
                dtype = torch.promote_types(dtype, t.dtype)
        if device is None:
            device = iso.device
        vals = {k: v.to(dtype=dtype, device=device) for k, v in vals.items()}
        pr, pc, iso = (t.to(dtype=dtype, device=device) for t in (pr, pc, iso))

        def vec(*xs):
            return torch.tensor(xs, dtype=dtype, device=device)

        rot = rotation_z(vals["primary_angle"]) @ rotation_x(-vals["secondary_angle"])
        beam = rot @ vec(0.0, -1.0, 0.0)
        e_u = rot @ vec(1.0, 0.0, 0.0)
        e_v = rot @ vec(0.0, 0.0, -1.0)
        source = iso - vals["source_to_isocenter"] * beam
        principal = source + vals["source_to_detector"] * beam
        center = principal - vals["u0"] * e_u - vals["v0"] * e_v
        normal = torch.linalg.cross(e_u, e_v)
        rd = (
            axis_angle_matrix(normal, vals["detector_rotation"])
            @ axis_angle_matrix(e_u, vals["detector_tilt_u"])
            @ axis_angle_matrix(e_v, vals["detector_tilt_v"])
        )
        u = pc * (rd @ e_u)
        v = pr * (rd @ e_v)
        return View(source, center, u, v, self.detector_shape, name=self.name)

    # -- conveniences ---------------------------------------------------------------------
    @property
    def magnification(self) -> float:
        """Nominal magnification at the isocenter, ``source_to_detector / source_to_isocenter``."""
        return float(scalar_tensor(self.source_to_detector, "source_to_detector").detach()) / float(
            scalar_tensor(self.source_to_isocenter, "source_to_isocenter").detach()
        )

    @property
    def pixel_size_at_isocenter(self) -> tuple[float, float]:
        """``(row, col)`` pixel pitch projected to the isocenter plane, mm."""
        pr, pc = pair_of_scalars(self.pixel_pitch, "pixel_pitch")
        m = self.magnification
        return (float(pr.detach()) / m, float(pc.detach()) / m)

    def replace(self, **changes) -> ViewParameters:
        """A copy with some fields changed (``dataclasses.replace``).

        Angles may be given in degrees with the ``_deg`` names (``detector_rotation_deg=0.3``);
        the plain names take radians.
        """
        changes = _degrees_to_radians(changes)
        token = _WARN_FIELDS.set(frozenset(changes))
        try:
            return dataclasses.replace(self, **changes)
        finally:
            _WARN_FIELDS.reset(token)

    @property
    def pitch(self) -> tuple[float, float]:
        """``(row, col)`` pixel pitch in mm as plain floats."""
        return (_as_float(self.pixel_pitch[0]), _as_float(self.pixel_pitch[1]))

    def perturbed(self, **deltas) -> ViewParameters:
        """A copy with errors added to fields: the one way tomoprior writes a miscalibration.

        Keyword names are the scalar fields (lengths in mm, angles in radians) or their
        ``_deg`` forms for angles in degrees: ``p.perturbed(source_to_detector=12.0,
        detector_tilt_u_deg=1.0)``. Tensors keep their autograd graph.

        Examples
        --------
        >>> p = ViewParameters().perturbed(source_to_detector=12.0, detector_tilt_u_deg=1.0)
        >>> p.source_to_detector, round(math.degrees(p.detector_tilt_u), 9)
        (1512.0, 1.0)
        """
        deltas = _degrees_to_radians(deltas)
        unknown = sorted(set(deltas) - set(self.SCALAR_FIELDS))
        if unknown:
            raise ValueError(f"perturbed: unknown parameter(s) {unknown}; use {list(self.SCALAR_FIELDS)} (angles also "
                             "as NAME_deg in degrees)")
        return self.replace(**{f: getattr(self, f) + d for f, d in deltas.items()})

    def binned(self, factor: int) -> ViewParameters:
        """The same detector read out with ``factor x factor`` binning (pitch x factor)."""
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise ValueError(f"binning factor must be a positive integer, got {factor!r}")
        rows, cols = self.detector_shape
        if rows % factor or cols % factor:
            raise ValueError(
                f"binning factor {factor} does not divide the detector shape {self.detector_shape}; "
                "choose a divisor of both"
            )
        pr, pc = pair_of_scalars(self.pixel_pitch, "pixel_pitch")
        return self.replace(pixel_pitch=(pr * factor, pc * factor), detector_shape=(rows // factor, cols // factor))

    def to_dict(self) -> dict:
        """Plain-number dict for files: lengths in mm, angles in degrees (``*_deg`` keys)."""
        def num(x):
            return float(scalar_tensor(x, "value").detach())

        pr, pc = pair_of_scalars(self.pixel_pitch, "pixel_pitch")
        iso = as_vector3(self.isocenter, "isocenter").detach()
        return {
            "name": self.name,
            "primary_angle_deg": math.degrees(num(self.primary_angle)),
            "secondary_angle_deg": math.degrees(num(self.secondary_angle)),
            "source_to_isocenter": num(self.source_to_isocenter),
            "source_to_detector": num(self.source_to_detector),
            "detector_offset": [num(self.u0), num(self.v0)],
            "detector_rotation_deg": math.degrees(num(self.detector_rotation)),
            "detector_tilt_deg": [math.degrees(num(self.detector_tilt_u)), math.degrees(num(self.detector_tilt_v))],
            "pixel_pitch": [float(pr.detach()), float(pc.detach())],
            "detector_shape": list(self.detector_shape),
            "isocenter": [float(x) for x in iso],
        }

    @classmethod
    def from_dict(cls, d: dict, where: str = "parameters") -> ViewParameters:
        """Inverse of :meth:`to_dict` (degrees in, radians stored)."""
        if not isinstance(d, dict):
            raise ValueError(f"{where} must be a mapping, got {type(d).__name__}")
        allowed = {
            "name", "primary_angle_deg", "secondary_angle_deg", "source_to_isocenter", "source_to_detector",
            "detector_offset", "principal_point", "detector_rotation_deg", "detector_tilt_deg", "pixel_pitch",
            "detector_shape",
            "isocenter",
        }
        unknown = set(d) - allowed
        if unknown:
            raise ValueError(f"{where} has unknown field(s) {sorted(unknown)}; expected a subset of {sorted(allowed)}")

        def num(key, default):
            val = d.get(key, default)
            try:
                out = float(val)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{where}.{key} must be a number, got {val!r}") from exc
            if not math.isfinite(out):
                raise ValueError(f"{where}.{key} must be finite, got {val!r}")
            return out

        def pair(key, default):
            val = d.get(key, default)
            if isinstance(val, (int, float)):
                val = [val, val]
            if not isinstance(val, (list, tuple)) or len(val) != 2:
                raise ValueError(f"{where}.{key} must be a pair of numbers, got {val!r}")
            out = []
            for i, x in enumerate(val):
                try:
                    f = float(x)
                except (TypeError, ValueError) as exc:
                    raise ValueError(f"{where}.{key}[{i}] must be a number, got {x!r}") from exc
                if not math.isfinite(f):
                    raise ValueError(f"{where}.{key}[{i}] must be finite, got {x!r}")
                out.append(f)
            return out

        if "detector_offset" in d and "principal_point" in d:
            raise ValueError(f"{where} has both detector_offset and principal_point (its older name); keep "
                             "detector_offset")
        # files written before the rename call the detector offset "principal_point"
        u0, v0 = pair("detector_offset" if "detector_offset" in d else "principal_point", [0.0, 0.0])
        tu, tv = pair("detector_tilt_deg", [0.0, 0.0])
        name = d.get("name", "view")
        if not isinstance(name, str):
            raise ValueError(f"{where}.name must be a string, got {name!r}")
        return cls(
            name=name,
            primary_angle=math.radians(num("primary_angle_deg", 0.0)),
            secondary_angle=math.radians(num("secondary_angle_deg", 0.0)),
            source_to_isocenter=num("source_to_isocenter", DEFAULT_SOURCE_TO_ISOCENTER),
            source_to_detector=num("source_to_detector", DEFAULT_SOURCE_TO_DETECTOR),
            u0=u0,
            v0=v0,
            detector_rotation=math.radians(num("detector_rotation_deg", 0.0)),
            detector_tilt_u=math.radians(tu),
            detector_tilt_v=math.radians(tv),
            pixel_pitch=tuple(pair("pixel_pitch", [DEFAULT_PIXEL_PITCH, DEFAULT_PIXEL_PITCH])),
            detector_shape=as_positive_int_pair(d.get("detector_shape", DEFAULT_DETECTOR_SHAPE),
                                                f"{where}.detector_shape"),
            isocenter=tuple(as_vector3(d.get("isocenter", [0.0, 0.0, 0.0]), f"{where}.isocenter").tolist()),
        )

    def __repr__(self) -> str:
        d = self.to_dict()
        return (
            f"ViewParameters(name={d['name']!r}, primary={d['primary_angle_deg']:.3f} deg, "
            f"secondary={d['secondary_angle_deg']:.3f} deg, source_to_isocenter={d['source_to_isocenter']:.2f} mm, "
            f"source_to_detector={d['source_to_detector']:.2f} mm, detector_offset={d['detector_offset']} mm, "
            f"rotation={d['detector_rotation_deg']:.3f} deg, tilts={d['detector_tilt_deg']} deg, "
            f"pitch={d['pixel_pitch']} mm, shape={tuple(d['detector_shape'])})"
        )


def _as_float(x) -> float:
    return float(x.detach()) if isinstance(x, torch.Tensor) else float(x)


def _degrees_to_radians(fields: dict) -> dict:
    out = dict(fields)
    for f in ViewParameters.ANGLE_FIELDS:
        key = f + "_deg"
        if key in out:
            if f in out:
                raise ValueError(f"give {f} (radians) or {key} (degrees), not both")
            val = out.pop(key)
            out[f] = val * (math.pi / 180.0) if isinstance(val, torch.Tensor) else math.radians(float(val))
    return out


def default_frontal(**changes) -> ViewParameters:
    """The default PA frontal view of the pediatric skull setup (source posterior)."""
    return ViewParameters(name="frontal", primary_angle=0.0).replace(**changes)


def default_lateral(**changes) -> ViewParameters:
    """The default left-lateral view (primary angle +90 deg: detector at the patient's left)."""
    return ViewParameters(name="lateral", primary_angle=math.pi / 2).replace(**changes)


VIEW_PARAMETERS_SCHEMA = "tomoprior.view-parameters"


def read_view_parameters(path) -> tuple[list[ViewParameters], object | None, str]:
    """Physical view parameters from a file, whichever tomoprior file holds them.

    Accepts a parameters-only file (``schema: tomoprior.view-parameters``, a ``views`` list
    of :meth:`ViewParameters.to_dict` entries: angles in degrees, lengths in mm, and an
    optional ``grid``), a calibration result written by
    :meth:`tomoprior.calibration.CalibrationResult.save`, a QA ``report.json``, or a
    geometry file whose views carry ``parameters``. A minimal parameters-only file::

        schema: tomoprior.view-parameters
        schema_version: 1
        views:
          - {name: frontal, primary_angle_deg: 0, source_to_isocenter: 1000, source_to_detector: 1500,
             pixel_pitch: 0.4, detector_shape: [768, 768]}
          - {name: lateral, primary_angle_deg: 90, source_to_isocenter: 1000, source_to_detector: 1500,
             pixel_pitch: 0.4, detector_shape: [768, 768]}

    Parameters
    ----------
    path : str or Path
        ``.yaml``, ``.yml`` or ``.json``.

    Returns
    -------
    (list of ViewParameters, VolumeGrid or None, str)
        The parameters per view, the grid if the file gives one, and what kind of file it was.

    Raises
    ------
    ValueError
        Missing or unreadable file, a file of another kind, or bad fields (named).
    """
    import json
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p} does not exist; give a geometry, view-parameters or calibration file")
    if p.suffix.lower() not in (".yaml", ".yml", ".json"):
        raise ValueError(f"{p}: parameter files end in .yaml, .yml or .json")
    if p.suffix.lower() == ".json":
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{p}: cannot read it as JSON ({str(exc)[:200]})") from exc
    else:
        from .._yaml import load_yaml

        d = load_yaml(p, what="parameter file")
    return parameters_from_document(d, str(p))


def parameters_from_document(d, where: str) -> tuple[list[ViewParameters], object | None, str]:
    """:func:`read_view_parameters` on an already parsed document (``where`` names it in errors)."""
    from .grid import VolumeGrid

    p = where
    if not isinstance(d, dict):
        raise ValueError(f"{p}: expected a mapping at the top level, got {type(d).__name__}")
    if isinstance(d.get("calibration_result"), dict):  # a QA report.json
        d = d["calibration_result"]
    schema = d.get("schema")
    grid = None
    if schema == "tomoprior.calibration":
        views = d.get("views")
        if not isinstance(views, list) or not views:
            raise ValueError(f"{p}: the calibration result has no views")
        params = [ViewParameters.from_dict((v or {}).get("parameters"), where=f"{p}: views[{i}].parameters")
                  for i, v in enumerate(views)]
        geo = d.get("geometry")
        if isinstance(geo, dict) and isinstance(geo.get("grid"), dict):
            grid = VolumeGrid.from_dict(geo["grid"], f"{p}: geometry.grid")
        return params, grid, "calibration result"
    if schema == "tomoprior.geometry":
        raw = d.get("parameters")
        if not isinstance(raw, list) or not raw:
            raise ValueError(f"{p}: this geometry file has view vectors but no physical 'parameters'; calibration "
                             "needs parameters (write them as a tomoprior.view-parameters file)")
        params = [ViewParameters.from_dict(v, where=f"{p}: parameters[{i}]") for i, v in enumerate(raw)]
        if isinstance(d.get("grid"), dict):
            grid = VolumeGrid.from_dict(d["grid"], f"{p}: grid")
        return params, grid, "geometry file"
    if schema != VIEW_PARAMETERS_SCHEMA:
        raise ValueError(f"{p}: schema {str(schema)[:60]!r} is not a tomoprior geometry, view-parameters or "
                         f"calibration file; a parameters-only file starts with 'schema: {VIEW_PARAMETERS_SCHEMA}'")
    version = d.get("schema_version", 1)
    if isinstance(version, bool) or version != 1:
        raise ValueError(f"{p}: schema_version {str(version)[:20]!r} is not supported (this tomoprior reads 1)")
    unknown = sorted(str(k) for k in d if k not in ("schema", "schema_version", "units", "grid", "views"))
    if unknown:
        raise ValueError(f"{p}: unknown top-level field(s) {unknown}; expected schema, schema_version, units, "
                         "grid, views")
    units = d.get("units") or {}
    if not isinstance(units, dict) or units.get("length", "mm") != "mm" or units.get("angle", "deg") != "deg":
        raise ValueError(f"{p}: units must be {{length: mm, angle: deg}}, got {str(units)[:80]}")
    views = d.get("views")
    if not isinstance(views, list) or not views:
        raise ValueError(f"{p}: 'views' must be a non-empty list of view parameters")
    params = [ViewParameters.from_dict(v, where=f"{p}: views[{i}]") for i, v in enumerate(views)]
    if d.get("grid") is not None:
        grid = VolumeGrid.from_dict(d["grid"], f"{p}: grid")
    return params, grid, "view-parameters file"
