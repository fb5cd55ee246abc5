"""``RadiographSettings``: every physical choice of :func:`tomoprior.physics.radiograph` in one
small, frozen, documented object (the acquisition: dose, beam, tube, blur, noise, scatter).

>>> s = RadiographSettings(photons_per_pixel=2000.0, kvp=70.0, heel=True, scatter=ScatterModel())
>>> s.replace(photons_per_pixel=500.0).photons_per_pixel
500.0
>>> RadiographSettings.from_dict({"kvp": 70, "scatter": {"spr": 0.8}}).scatter.spr
0.8
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace

from torch import Tensor

from .scatter import ScatterModel
from .spectrum import Spectrum

_FOCAL_KERNELS = ("gaussian", "box")
_WEIGHTINGS = ("photon", "energy")


def _number(name: str, v, *, lo: float = 0.0, strict: bool = False, optional: bool = False):
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
            or (v <= lo if strict else v < lo):
        op = ">" if strict else ">="
        raise ValueError(f"RadiographSettings.{name} must be a finite number {op} {lo:g}, got {v!r}")
    return float(v)


@dataclass(frozen=True)
class RadiographSettings:
    """The acquisition of a simulated radiograph (units: mm, kV, degrees, counts).

    Parameters
    ----------
    photons_per_pixel : float
        Dose: expected unattenuated photons per pixel on the principal ray (> 0); the flat
        field is this times the heel map. Quantum noise variance equals the expected count.
    kvp : float, optional
        Tube potential (kV): the spectrum of polychromatic images and of the heel model
        (70 kV for the heel when None).
    filtration : dict, optional
        Added filtration ``{material: mm}`` (e.g. ``{"Al": 2.5}``) of the spectrum / heel model.
    heel : None, bool, float, dict or Tensor
        Anode heel effect: None/False off; True defaults; a number is the anode angle (deg);
        a dict holds :func:`~tomoprior.physics.heel_effect` keywords; a tensor
        ``(views, rows, cols)`` is the map itself.
    anode_angle_deg : float
        Anode angle (deg) of the spectrum and of ``heel=True``. Default 12.
    anode_direction : str or sequence
        Anode-cathode axis on the detector (``"+v"``, ``"-u"``, ... or one per view).
    focal_spot_mm : float
        Nominal focal-spot size (mm, >= 0); penumbra ``f (M - 1)`` at ``object_point``.
    focal_spot_kernel : {"gaussian", "box"}
    object_point : (3,), optional
        Plane of the focal-spot blur (default the grid centre).
    detector_blur_px : float or (row, col)
        Gaussian detector blur, standard deviation in pixels (>= 0).
    noise : bool
        Poisson photon noise (plus ``electronic_noise``); False gives expected counts.
    electronic_noise : float
        Standard deviation of additive Gaussian read noise, counts (>= 0).
    scatter : ScatterModel, optional
        Object scatter (:class:`~tomoprior.physics.ScatterModel`); None: no scatter.
    spectrum : Spectrum, optional
        Beam spectrum of polychromatic images (default built from ``kvp``).
    weighting : {"photon", "energy"}
        Polychromatic detector weighting.
    polychromatic : bool, optional
        Default: polychromatic exactly when the input is a material dict.
    densities, material_map : dict, optional
        Polychromatic options (see :func:`~tomoprior.physics.radiograph`).
    projector_options : dict, optional
        Extra keywords of :func:`tomoprior.project` for volumes.
    """

    photons_per_pixel: float = 1000.0
    kvp: float | None = None
    filtration: Mapping[str, float] | None = None
    heel: object = None
    anode_angle_deg: float = 12.0
    anode_direction: object = "+v"
    focal_spot_mm: float = 0.0
    focal_spot_kernel: str = "gaussian"
    object_point: object = None
    detector_blur_px: object = 0.0
    noise: bool = True
    electronic_noise: float = 0.0
    scatter: ScatterModel | None = None
    spectrum: Spectrum | None = None
    weighting: str = "photon"
    polychromatic: bool | None = None
    densities: Mapping[str, float] | None = field(default=None)
    material_map: Mapping[str, str | None] | None = field(default=None)
    projector_options: Mapping | None = field(default=None)

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, "photons_per_pixel", _number("photons_per_pixel", self.photons_per_pixel, strict=True))
        set_(self, "kvp", _number("kvp", self.kvp, strict=True, optional=True))
        set_(self, "anode_angle_deg", _number("anode_angle_deg", self.anode_angle_deg, strict=True))
        set_(self, "focal_spot_mm", _number("focal_spot_mm", self.focal_spot_mm))
        set_(self, "electronic_noise", _number("electronic_noise", self.electronic_noise))
        b = self.detector_blur_px
        if isinstance(b, (list, tuple)):
            if len(b) != 2:
                raise ValueError(f"RadiographSettings.detector_blur_px must be a number or (row, col), got {b!r}")
            set_(self, "detector_blur_px", tuple(_number("detector_blur_px", x) for x in b))
        else:
            set_(self, "detector_blur_px", _number("detector_blur_px", b))
        if not isinstance(self.noise, bool):
            raise TypeError(f"RadiographSettings.noise must be True or False, got {self.noise!r}")
        if self.polychromatic is not None and not isinstance(self.polychromatic, bool):
            raise TypeError(f"RadiographSettings.polychromatic must be True, False or None, got {self.polychromatic!r}")
        if self.focal_spot_kernel not in _FOCAL_KERNELS:
            raise ValueError(f"RadiographSettings.focal_spot_kernel must be one of {_FOCAL_KERNELS}, "
                             f"got {self.focal_spot_kernel!r}")
        if self.weighting not in _WEIGHTINGS:
            raise ValueError(f"RadiographSettings.weighting must be one of {_WEIGHTINGS}, got {self.weighting!r}")
        if self.scatter is not None and not isinstance(self.scatter, ScatterModel):
            raise TypeError("RadiographSettings.scatter must be a ScatterModel or None (use "
                            f"RadiographSettings.from_dict for a mapping), got {type(self.scatter).__name__}")
        if self.spectrum is not None and not isinstance(self.spectrum, Spectrum):
            raise TypeError("RadiographSettings.spectrum must be a Spectrum or None, got "
                            f"{type(self.spectrum).__name__}")
        h = self.heel
        if not (h is None or isinstance(h, (bool, Mapping, Tensor)) or
                (isinstance(h, (int, float)) and math.isfinite(h) and h > 0)):
            raise TypeError("RadiographSettings.heel must be None/False (no heel effect), True (defaults), an anode "
                            "angle in degrees (> 0), a dict of heel_effect keyword arguments, or a (views, rows, cols) "
                            f"tensor; got {h!r}")
        if self.filtration is not None and not isinstance(self.filtration, Mapping):
            raise TypeError(f"RadiographSettings.filtration must be a dict {{material: mm}}, got {self.filtration!r}")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def replace(self, **changes) -> RadiographSettings:
        """A copy with ``changes`` (checked like the constructor)."""
        unknown = sorted(set(changes) - set(self.field_names()))
        if unknown:
            raise TypeError(f"unknown radiograph setting(s) {unknown}; known: {list(self.field_names())}")
        return replace(self, **changes)

    @classmethod
    def from_dict(cls, d: Mapping) -> RadiographSettings:
        """From plain data (a YAML mapping): ``scatter`` may be a mapping of
        :class:`ScatterModel` fields, True (the default model) or None/False. Unknown keys are a
        ValueError naming the known ones; ``spectrum`` cannot be given this way (use ``kvp``)."""
        if not isinstance(d, Mapping):
            raise ValueError(f"radiograph settings must be a mapping of {list(cls.field_names())}, got {d!r}")
        known = set(cls.field_names()) - {"spectrum"}
        unknown = sorted(set(d) - known - ({"spectrum"} if d.get("spectrum") is None else set()))
        if unknown:
            raise ValueError(f"unknown radiograph setting(s) {unknown}; known: {sorted(known)}")
        kw = {k: v for k, v in d.items() if k != "spectrum"}
        sc = kw.get("scatter")
        if sc is True:
            kw["scatter"] = ScatterModel()
        elif sc is False:
            kw["scatter"] = None
        elif isinstance(sc, Mapping):
            kw["scatter"] = ScatterModel.from_dict(dict(sc))
        if isinstance(kw.get("detector_blur_px"), list):
            kw["detector_blur_px"] = tuple(kw["detector_blur_px"])
        try:
            return cls(**kw)
        except TypeError as exc:
            raise ValueError(str(exc)) from exc

    def to_dict(self) -> dict:
        """Plain JSON/YAML data (a tensor heel map or a spectrum is summarised by its shape/kVp);
        ``from_dict(to_dict())`` round-trips every setting given as plain data."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, ScatterModel):
                v = v.to_dict()
            elif isinstance(v, Tensor):
                v = f"tensor{tuple(v.shape)}"
            elif isinstance(v, Spectrum):
                v = f"Spectrum({getattr(v, 'kvp', '?')} kVp)"
            elif isinstance(v, Mapping):
                v = {str(k): (x if isinstance(x, (int, float, str, bool, type(None))) else repr(x))
                     for k, x in v.items()}
            elif isinstance(v, tuple):
                v = list(v)
            elif not isinstance(v, (int, float, str, bool, type(None), list)):
                v = repr(v)
            out[f.name] = v
        return out
