"""Realistic radiographs for datasets: the acquisition physics, the head's pose, and its motion
between the two exposures, as one settings object (:class:`Realism`) read from a preset name
or a YAML file.

What a sample with realism goes through (each step on/off, its size in the provenance):

1. **Pose** (:class:`PoseJitter` ``pose``): the head sits rotated by angles drawn uniformly in
   ``[-rotation_deg, +rotation_deg]`` about x, y and z (LPS, about the grid centre) and shifted
   by ``[-translation_mm, +translation_mm]`` per axis. Moving the head by a rigid transform
   ``T`` is the same as moving every view by ``T^-1`` with the head fixed, so the volume stays
   exact (no resampling) and the views are transformed instead: the sample's ``/geometry`` is
   the geometry *relative to the head* and ``/nominal_geometry`` the scanner's, as for the
   calibration-error augmentation.
2. **Motion** (``motion``): one more rigid movement, drawn the same way, between the first
   (frontal) and the later exposures: views ``1..`` see the moved head, view 0 does not.
3. **Physics** (``radiograph``, a :class:`~tomoprior.physics.RadiographSettings`): heel
   effect, focal-spot and detector blur, scatter, quantum noise at a dose given per mm^2 of
   detector (``photons_per_mm2``, converted to the dataset's pixel size), then flat-field
   and ``-log``: the stored X-rays are line integrals again, as a network sees them after the
   standard correction (``kind="radiograph"`` keeps the raw counts instead).

The attenuation volumes hold one energy (60 keV). Without ``materials`` the beam is
monochromatic and ``kvp`` only sets the heel model's spectrum. With ``materials`` (the
``realistic`` preset) each voxel is split into soft tissue and cortical bone with the same
60 keV attenuation and the image is formed energy by energy through the ``kvp`` spectrum, so
bone hardens the beam as it does in a real radiograph.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..geometry import Geometry, View
from ..physics.scatter import ScatterModel
from ..physics.settings import RadiographSettings

#: Names accepted by :meth:`Realism.preset` (``tomoprior dataset make --realism``).
PRESETS = ("none", "realistic")

#: Detected photons per mm^2 of the unattenuated beam at the detector in the ``realistic`` preset.
#: 5 uGy of detector air kerma (a low pediatric exposure; adult digital radiography aims at
#: about 2.5 uGy behind the patient) times 2.3e4 photons per mm^2 per uGy (fluence per air
#: kerma at 40 keV, about the mean energy of a 70 kVp, 2.5 mm Al beam: 1 / (E mu_en/rho of
#: air)), times a detective quantum efficiency of 0.45 (CsI flat panel): about 5e4.
REALISTIC_PHOTONS_PER_MM2 = 5.0e4

#: The two materials a volume is split into for a polychromatic beam (``Realism.materials``).
DEFAULT_MATERIALS = ("soft_tissue", "cortical_bone")


@dataclass(frozen=True)
class PoseJitter:
    """Size of a random rigid movement of the head: each angle (about x, y, z, degrees) and
    each shift (x, y, z, mm) uniform in ``[-value, +value]``. Zero is off."""

    rotation_deg: float = 0.0
    translation_mm: float = 0.0

    def __post_init__(self):
        for k, v in asdict(self).items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{k} must be a finite number >= 0, got {v!r}")
            object.__setattr__(self, k, float(v))
        if self.rotation_deg > 45:
            raise ValueError(f"rotation_deg must be <= 45 degrees (a head pose, not a view change), "
                             f"got {self.rotation_deg}")

    @property
    def is_zero(self) -> bool:
        return self.rotation_deg == 0 and self.translation_mm == 0

    def draw(self, rng: np.random.Generator) -> dict:
        """``{"rotation_deg": [rx, ry, rz], "translation_mm": [tx, ty, tz]}`` (always drawn, so
        the random stream does not depend on which sizes are zero)."""
        a = rng.uniform(-1.0, 1.0, 3) * self.rotation_deg
        t = rng.uniform(-1.0, 1.0, 3) * self.translation_mm
        return {"rotation_deg": [float(x) for x in a], "translation_mm": [float(x) for x in t]}

    @classmethod
    def from_dict(cls, d, what: str) -> PoseJitter:
        if d is None or d is False:
            return cls()
        if not isinstance(d, Mapping):
            raise ValueError(f"{what} must be a mapping with rotation_deg and translation_mm, got {d!r}")
        unknown = sorted(set(d) - {"rotation_deg", "translation_mm"})
        if unknown:
            raise ValueError(f"unknown {what} setting(s) {unknown}; known: ['rotation_deg', 'translation_mm']")
        try:
            return cls(**d)
        except ValueError as exc:
            raise ValueError(f"{what}.{exc}") from None


def rotation_matrix(angles_deg) -> np.ndarray:
    """``Rz(c) Ry(b) Rx(a)`` for angles ``(a, b, c)`` in degrees about the x, y, z axes (3, 3)."""
    a, b, c = np.radians(np.asarray(angles_deg, dtype=np.float64))
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def move_head(point_mm, drawn: dict, center_mm) -> np.ndarray:
    """Where the head point ``point_mm`` (n, 3) goes when the head moves by ``drawn``
    (rotation about ``center_mm``, then shift): ``R (x - c) + c + t``."""
    r = rotation_matrix(drawn["rotation_deg"])
    c = np.asarray(center_mm, dtype=np.float64)
    return (np.asarray(point_mm, dtype=np.float64) - c) @ r.T + c + np.asarray(drawn["translation_mm"])


def _view_in_head_frame(view: View, r: np.ndarray, t: np.ndarray, c: np.ndarray) -> View:
    """The view seen from a head moved by ``x -> R (x - c) + c + t``: points map by the
    inverse ``R^T (x - c - t) + c``, direction vectors by ``R^T``."""
    rt = torch.as_tensor(r.T, dtype=view.dtype, device=view.device)
    cc = torch.as_tensor(c, dtype=view.dtype, device=view.device)
    tt = torch.as_tensor(t, dtype=view.dtype, device=view.device)
    return View(source=rt @ (view.source - cc - tt) + cc, detector_center=rt @ (view.detector_center - cc - tt) + cc,
                u=rt @ view.u, v=rt @ view.v, shape=view.shape, name=view.name)


def posed_geometry(geometry: Geometry, pose: dict | None, motion: dict | None = None) -> Geometry:
    """The geometry relative to a head moved by ``pose`` (all views) and then by ``motion``
    (views ``1..``), both about the grid centre (dicts as :meth:`PoseJitter.draw` returns)."""
    c = np.asarray(geometry.grid.center, dtype=np.float64)
    views = []
    for i, view in enumerate(geometry.views):
        r, t = np.eye(3), np.zeros(3)
        for d in (pose, motion if i >= 1 else None):
            if d is None:
                continue
            # compose x -> R2 (R1 (x - c) + c + t1 - c) + c + t2 = R2 R1 (x - c) + c + (R2 t1 + t2)
            r2 = rotation_matrix(d["rotation_deg"])
            r, t = r2 @ r, r2 @ t + np.asarray(d["translation_mm"], dtype=np.float64)
        views.append(_view_in_head_frame(view, r, t, c))
    return Geometry(geometry.grid, views)


@dataclass(frozen=True)
class Realism:
    """Settings of realistic radiographs for a dataset (see the module docstring).

    Parameters
    ----------
    radiograph : RadiographSettings, optional
        Acquisition physics; None keeps noise-free monochromatic line integrals.
    photons_per_mm2 : float, optional
        Dose as detected unattenuated photons per mm^2 at the detector; sets
        ``radiograph.photons_per_pixel`` from each view's pixel area. None: use
        ``radiograph.photons_per_pixel`` as given.
    pose : PoseJitter
        Per-sample head pose.
    motion : PoseJitter
        Head movement between the first and the later exposures.
    materials : (light, dense) material names, optional
        Image the volume with a polychromatic beam (the spectrum of ``radiograph.kvp`` and
        ``filtration``): each voxel's attenuation at 60 keV is split into a light and a dense
        material (:func:`tomoprior.physics.decompose_attenuation`, default pair
        ``("soft_tissue", "cortical_bone")``), their path lengths are projected and the beam is
        attenuated energy by energy, so bone hardens it (beam hardening, cupping). None: the
        monochromatic 60 keV line integrals. Needs ``radiograph`` with ``kvp``.
    """

    radiograph: RadiographSettings | None = None
    photons_per_mm2: float | None = None
    pose: PoseJitter = field(default_factory=PoseJitter)
    motion: PoseJitter = field(default_factory=PoseJitter)
    materials: tuple[str, str] | None = None

    def __post_init__(self):
        if self.radiograph is not None and not isinstance(self.radiograph, RadiographSettings):
            raise TypeError(f"radiograph must be a RadiographSettings or None, got {type(self.radiograph).__name__}")
        if self.photons_per_mm2 is not None:
            v = self.photons_per_mm2
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"photons_per_mm2 (dose) must be a finite number > 0, got {v!r}")
            object.__setattr__(self, "photons_per_mm2", float(v))
        for k in ("pose", "motion"):
            if not isinstance(getattr(self, k), PoseJitter):
                raise TypeError(f"{k} must be a PoseJitter, got {type(getattr(self, k)).__name__}")
        if self.materials is not None:
            from ..units import material

            m = self.materials
            if isinstance(m, str) or not isinstance(m, (tuple, list)) or len(m) != 2:
                raise ValueError(f"materials must be a pair [light, dense] of material names (e.g. "
                                 f"[soft_tissue, cortical_bone]) or null, got {m!r}")
            object.__setattr__(self, "materials", tuple(material(str(x)).name for x in m))
            if self.radiograph is None or (self.radiograph.kvp is None and self.radiograph.spectrum is None):
                raise ValueError("materials (a polychromatic beam) needs radiograph settings with kvp; add e.g. "
                                 "radiograph: {kvp: 70} or set materials: null")

    @property
    def is_none(self) -> bool:
        return self.radiograph is None and self.pose.is_zero and self.motion.is_zero

    @classmethod
    def preset(cls, name: str) -> Realism:
        """``"none"`` (today's noise-free line integrals) or ``"realistic"``:

        =================  ===========================  ================================================
        effect             default                      source
        =================  ===========================  ================================================
        dose               5e4 photons/mm^2 detected    5 uGy at the detector, 2.3e4 /mm^2/uGy, DQE 0.45
        spectrum / heel    70 kVp, 2.5 mm Al, 12 deg    typical infant skull technique; SpekPy heel
        materials          soft tissue + cortical bone  polychromatic beam through the decomposed volume
        focal spot         0.6 mm                       a common small focal spot
        detector blur      0.1 pixel (sigma)            CsI scintillator spread, ~0.2 mm
        scatter            SPR 1.0 at 130 mm water,     ScatterModel (Love and Kruger kernel;
                           37 mm exponential kernel     Fritz and Jones pediatric no-grid SPR range)
        pose               +-3 deg, +-5 mm per axis     assumed positioning spread of infants
        motion             +-1 deg, +-1 mm per axis     assumed movement between the two exposures
        =================  ===========================  ================================================
        """
        if name == "none":
            return cls()
        if name == "realistic":
            return cls(
                radiograph=RadiographSettings(kvp=70.0, filtration={"Al": 2.5}, heel=True, anode_angle_deg=12.0,
                                              focal_spot_mm=0.6, detector_blur_px=0.1, noise=True,
                                              scatter=ScatterModel()),
                photons_per_mm2=REALISTIC_PHOTONS_PER_MM2,
                pose=PoseJitter(rotation_deg=3.0, translation_mm=5.0),
                motion=PoseJitter(rotation_deg=1.0, translation_mm=1.0),
                materials=DEFAULT_MATERIALS,
            )
        raise ValueError(f"unknown realism preset {name!r}; choose from {PRESETS} or give a YAML file")

    @classmethod
    def from_dict(cls, d: Mapping) -> Realism:
        """From plain data (YAML): keys ``preset`` (start from a preset, default none),
        ``radiograph`` (fields of RadiographSettings, merged over the preset's; null: off),
        ``photons_per_mm2``, ``pose`` and ``motion`` (``rotation_deg``, ``translation_mm``).
        Unknown keys are a ValueError naming the known ones."""
        if not isinstance(d, Mapping):
            raise ValueError(f"realism settings must be a mapping, got {d!r}")
        known = {"preset", "radiograph", "photons_per_mm2", "pose", "motion", "materials"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown realism setting(s) {unknown}; known: {sorted(known)}")
        base = cls.preset(d.get("preset", "none"))
        rad = base.radiograph
        if "radiograph" in d:
            r = d["radiograph"]
            if r is None or r is False:
                rad = None
            else:
                merged = {k: v for k, v in (rad.to_dict() if rad is not None else {}).items()
                          if not (k == "spectrum" and v is None)}
                if not isinstance(r, Mapping):
                    raise ValueError(f"radiograph must be a mapping of RadiographSettings fields, got {r!r}")
                merged.update(r)
                rad = RadiographSettings.from_dict(merged)
        ppm = d.get("photons_per_mm2", base.photons_per_mm2)
        pose = PoseJitter.from_dict(d["pose"], "pose") if "pose" in d else base.pose
        motion = PoseJitter.from_dict(d["motion"], "motion") if "motion" in d else base.motion
        mats = d["materials"] if "materials" in d else base.materials
        if rad is None and "materials" not in d:
            mats = None  # radiograph switched off: the preset's polychromatic beam goes with it
        return cls(radiograph=rad, photons_per_mm2=ppm, pose=pose, motion=motion, materials=mats)

    @classmethod
    def load(cls, path) -> Realism:
        """Read a YAML file of :meth:`from_dict`'s keys (through the project's guarded loader)."""
        from .._yaml import load_yaml

        p = Path(path)
        d = load_yaml(p, what="realism file")  # a DocumentError (ValueError) names the file
        try:
            return cls.from_dict(d)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{p}: {exc}") from exc

    @classmethod
    def parse(cls, text: str) -> Realism:
        """A preset name or the path of a YAML file (the CLI's ``--realism``)."""
        if text in PRESETS:
            return cls.preset(text)
        if text.endswith((".yaml", ".yml")) or Path(text).exists():
            return cls.load(text)
        raise ValueError(f"--realism must be one of {PRESETS} or a YAML file, got {text!r}")

    def to_dict(self) -> dict:
        return {"radiograph": None if self.radiograph is None else self.radiograph.to_dict(),
                "photons_per_mm2": self.photons_per_mm2, "pose": asdict(self.pose), "motion": asdict(self.motion),
                "materials": None if self.materials is None else list(self.materials)}

    def to_json(self) -> str:
        """Canonical JSON (sorted keys): stored in a sample's spec; :meth:`from_json` inverts it."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Realism:
        return cls.from_dict(json.loads(text)) if text else cls()

    def settings_for(self, geometry: Geometry) -> RadiographSettings | None:
        """The radiograph settings with the dose converted to photons per pixel of ``geometry``'s
        first view (all views of a dataset share the detector)."""
        if self.radiograph is None:
            return None
        if self.photons_per_mm2 is None:
            return self.radiograph
        v = geometry.views[0]
        area = float(v.u.detach().double().norm() * v.v.detach().double().norm())
        return self.radiograph.replace(photons_per_pixel=self.photons_per_mm2 * area)
