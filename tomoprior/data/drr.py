"""DRR synthesis: a volume and a geometry -> bi-planar X-rays, with calibration-error and
intensity augmentation.

The X-rays are either line integrals (``kind="line_integrals"``, attenuation x mm, through
:func:`tomoprior.project`) or raw detector counts (``kind="radiograph"``, through
``tomoprior.physics.radiograph`` when the physics layer provides it: polychromatic spectrum,
heel effect, blur, Poisson noise).

Calibration-error augmentation (:class:`GeometryPerturbation`) perturbs the *physical*
parameters of each view of a :class:`~tomoprior.geometry.ParametricGeometry` and rebuilds the
views through :class:`~tomoprior.geometry.ViewParameters`, so the exact perturbed geometry is
known and recorded: X-rays are made with the perturbed geometry, and a dataset stores both
that geometry and the nominal one the reconstruction will assume.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..geometry import Geometry, GeometryWarning, ParametricGeometry, VolumeGrid
from ..geometry.geometry import view_sees_box
from ..projectors import project
from ..units import DEFAULT_ENERGY_KEV
from .realism import Realism, posed_geometry
from .volumes import Volume, check_volume

#: Short names of :class:`GeometryPerturbation` fields, accepted by :meth:`GeometryPerturbation.parse`
#: (the CLI's ``--perturb``) and by study plans.
PERTURBATION_ALIASES = {"sdd": "source_to_detector_mm", "offset": "offset_mm", "tilt": "tilt_deg",
                        "rotation": "rotation_deg", "sod": "source_to_isocenter_mm"}


@dataclass(frozen=True)
class GeometryPerturbation:
    """Size of the calibration errors to simulate; each is drawn independently per view,
    uniformly in ``[-value, +value]``.

    Parameters
    ----------
    source_to_detector_mm : float
        Error of the source-to-detector distance.
    offset_mm : float
        Error of the detector offset ``(u0, v0)`` (where the central ray of the untilted
        detector meets it), each component.
    tilt_deg : float
        Out-of-plane detector tilts (both axes).
    rotation_deg : float
        In-plane detector rotation.
    source_to_isocenter_mm : float
        Error of the source-to-isocenter distance (default 0).
    """

    source_to_detector_mm: float = 0.0
    offset_mm: float = 0.0
    tilt_deg: float = 0.0
    rotation_deg: float = 0.0
    source_to_isocenter_mm: float = 0.0

    def __post_init__(self):
        for k, v in asdict(self).items():
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
                raise ValueError(f"GeometryPerturbation.{k} must be a finite number >= 0, got {v!r}")

    @property
    def is_zero(self) -> bool:
        return all(v == 0 for v in asdict(self).values())

    @classmethod
    def parse(cls, text: str) -> GeometryPerturbation:
        """From ``"source_to_detector_mm=5,offset_mm=2,tilt_deg=0.5,rotation_deg=0.5"``
        (the CLI's ``--perturb``); short keys ``sdd``, ``offset``, ``tilt``, ``rotation``, ``sod``."""
        alias = PERTURBATION_ALIASES
        fields = set(asdict(cls()))
        out = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            if "=" not in part:
                raise ValueError(f"perturbation {part!r} must be key=value, e.g. offset_mm=2")
            k, v = (s.strip() for s in part.split("=", 1))
            k = alias.get(k, k)
            if k not in fields:
                raise ValueError(f"unknown perturbation key {k!r}; use {sorted(fields)} or {sorted(alias)}")
            try:
                out[k] = float(v)
            except ValueError as exc:
                raise ValueError(f"perturbation {k} must be a number, got {v!r}") from exc
        return cls(**out)

    def sample(self, geometry: ParametricGeometry, seed) -> tuple[ParametricGeometry, list[dict]]:
        """The perturbed geometry and the per-view errors actually drawn.

        The errors are added to each view's :class:`ViewParameters` by
        :meth:`ParametricGeometry.perturbed` and the views rebuilt from them.
        """
        if not isinstance(geometry, ParametricGeometry):
            raise TypeError(
                "geometry perturbation needs a geometry built from ViewParameters (a ParametricGeometry such as "
                "BiplanarGeometry) so that the perturbed geometry is physical and recordable; got "
                f"{type(geometry).__name__}"
            )
        rng = np.random.default_rng(seed)
        drawn = []
        for _ in geometry.parameters:
            u = lambda a: float(rng.uniform(-a, a)) if a > 0 else 0.0  # noqa: E731
            drawn.append({
                "source_to_detector_mm": u(self.source_to_detector_mm),
                "source_to_isocenter_mm": u(self.source_to_isocenter_mm),
                "u0_mm": u(self.offset_mm),
                "v0_mm": u(self.offset_mm),
                "tilt_u_deg": u(self.tilt_deg),
                "tilt_v_deg": u(self.tilt_deg),
                "rotation_deg": u(self.rotation_deg),
            })
        deltas = [{"source_to_detector": d["source_to_detector_mm"], "source_to_isocenter": d["source_to_isocenter_mm"],
                   "u0": d["u0_mm"], "v0": d["v0_mm"], "detector_tilt_u_deg": d["tilt_u_deg"],
                   "detector_tilt_v_deg": d["tilt_v_deg"], "detector_rotation_deg": d["rotation_deg"]}
                  for d in drawn]
        return geometry.perturbed(deltas), drawn


@dataclass(frozen=True)
class IntensityAugmentation:
    """Intensity augmentation of the X-rays, drawn per view.

    ``x -> gain * x + offset + noise``, with ``gain`` uniform in ``[1 - gain, 1 + gain]``,
    ``offset`` uniform in ``[-offset, offset]`` times the view's maximum, and Gaussian
    noise of standard deviation ``noise`` times the view's maximum. For line integrals a
    gain models an effective-energy error, an offset a flat-field error. Radiograph counts
    are kept non-negative.
    """

    gain: float = 0.0
    offset: float = 0.0
    noise: float = 0.0

    def __post_init__(self):
        for k, v in asdict(self).items():
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
                raise ValueError(f"IntensityAugmentation.{k} must be a finite number >= 0, got {v!r}")
        if self.gain >= 1:
            raise ValueError(f"IntensityAugmentation.gain must be < 1 (a relative range), got {self.gain}")

    @property
    def is_zero(self) -> bool:
        return all(v == 0 for v in asdict(self).values())

    def apply(self, xrays: torch.Tensor, seed, *, nonnegative: bool = False) -> tuple[torch.Tensor, list[dict]]:
        """Augmented copy of ``xrays`` ``(views, rows, cols)`` and the per-view draws."""
        ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
        s_torch, s_np = ss.spawn(2)
        gen = torch.Generator().manual_seed(int(s_torch.generate_state(1)[0]))
        rng = np.random.default_rng(s_np)
        out, drawn = [], []
        for img in xrays:
            peak = float(img.abs().max()) or 1.0
            g = 1.0 + float(rng.uniform(-self.gain, self.gain)) if self.gain else 1.0
            o = float(rng.uniform(-self.offset, self.offset)) * peak if self.offset else 0.0
            y = img * g + o
            if self.noise:
                y = y + self.noise * peak * torch.randn(img.shape, generator=gen, dtype=img.dtype)
            if nonnegative:
                y = y.clamp_min(0)
            out.append(y)
            drawn.append({"gain": g, "offset": o, "noise_std": self.noise * peak})
        return torch.stack(out), drawn


@dataclass
class DRRResult:
    """X-rays and the exact geometry they were made with.

    Attributes
    ----------
    xrays : Tensor ``(views, rows, cols)`` float32
        Line integrals (attenuation x mm) or raw counts (``kind``).
    geometry : Geometry
        The geometry actually used (perturbed, if a perturbation was requested).
    nominal_geometry : Geometry
        The geometry before perturbation (what a reconstruction would assume).
    kind : str
    augmentation : dict
        The perturbation and intensity draws, for provenance.
    """

    xrays: torch.Tensor
    geometry: Geometry
    nominal_geometry: Geometry
    kind: str
    augmentation: dict


def physics_radiograph():
    """``tomoprior.physics.radiograph`` if the physics layer provides it, else None."""
    try:
        from ..physics import radiograph
    except ImportError:
        return None
    return radiograph


def check_views_see_volume(geometry: Geometry) -> None:
    """Raise ValueError if some view of ``geometry`` misses the volume box entirely."""
    corners = geometry.grid.corners()
    for i, view in enumerate(geometry.views):
        if not view_sees_box(view, corners):
            lo, hi = geometry.grid.bounds()
            raise ValueError(
                f"view {i} ({view.name}) misses the volume box {list(lo)}..{list(hi)} mm: its X-ray would be empty. "
                "Check the geometry (isocenter, angles, detector offset) or the volume's grid.center"
            )


_HEEL_CACHE: dict = {}


def _heel_map(geometry: Geometry, settings) -> torch.Tensor:
    """The heel map ``(views, rows, cols)`` of ``settings.heel`` on ``geometry``, cached per geometry
    and tube settings (a dataset without calibration-error augmentation has one)."""
    from ..physics import heel_map

    key = (geometry.vectors.detach().double().cpu().numpy().tobytes(), tuple(v.shape for v in geometry.views),
           repr(settings.heel), settings.kvp, repr(settings.filtration), settings.anode_angle_deg,
           repr(settings.anode_direction))
    hit = _HEEL_CACHE.get(key)
    if hit is None:
        hit = heel_map(geometry, settings)
        if len(_HEEL_CACHE) >= 8:
            _HEEL_CACHE.pop(next(iter(_HEEL_CACHE)))
        _HEEL_CACHE[key] = hit
    return hit


def synthesize(volume, geometry: Geometry, *, grid: VolumeGrid | None = None, kind: str = "line_integrals",
               perturbation: GeometryPerturbation | None = None, intensity: IntensityAugmentation | None = None,
               seed=None, backend: str = "auto", physics_options: dict | None = None,
               realism: Realism | None = None) -> DRRResult:
    """Make the X-rays of a volume.

    Parameters
    ----------
    volume : Volume, Tensor ``(nz, ny, nx)`` or a phantom with ``rasterize``
        Linear attenuation per mm. A :class:`Volume` brings its own grid (HU is converted at
        its default energy; convert explicitly with :meth:`Volume.to_mu` to choose).
    geometry : Geometry
        Views; its grid is replaced by the volume's grid (``grid`` argument or the Volume's).
    kind : {"line_integrals", "radiograph"}
        ``"radiograph"`` needs ``tomoprior.physics.radiograph`` (``physics_options`` are passed
        to it, e.g. ``photons_per_pixel``, ``kvp``).
    perturbation : GeometryPerturbation, optional
        Calibration errors to simulate (needs a ParametricGeometry).
    intensity : IntensityAugmentation, optional
    seed : int or SeedSequence-compatible
        Seeds the perturbation, the intensity augmentation and the physics noise.
    backend : str
        Projector backend for line integrals.
    realism : Realism, optional
        Head pose, motion between the exposures and acquisition physics (see
        :mod:`tomoprior.data.realism`). With physics, ``kind="line_integrals"`` stores
        ``-log(raw / flat)`` of the simulated radiograph, ``kind="radiograph"`` the raw counts.
        Every draw and setting goes into ``augmentation`` (``pose``, ``motion``, ``physics``).

    Returns
    -------
    DRRResult

    Raises
    ------
    ValueError
        Non-finite voxels, a grid mismatch, a view that misses the volume, an unknown kind.

    Warns
    -----
    GeometryWarning
        When the volume brings its own grid (a :class:`Volume`, or ``grid=``) and a view sees
        less than half of it, e.g. a real CT off-centre in scanner coordinates: aim the
        geometry at it first (``geometry.aimed_at(volume.grid)``).
    """
    if kind not in ("line_integrals", "radiograph"):
        raise ValueError(f"kind must be 'line_integrals' or 'radiograph', got {kind!r}")
    if realism is not None and not isinstance(realism, Realism):
        raise TypeError(f"realism must be a tomoprior.data.Realism or None, got {type(realism).__name__}")
    if realism is not None and realism.radiograph is not None and physics_options:
        raise ValueError("give the acquisition either as realism.radiograph or as physics_options, not both")
    if not isinstance(geometry, Geometry):
        raise TypeError(f"geometry must be a tomoprior Geometry, got {type(geometry).__name__}")
    if isinstance(volume, Volume):
        vol = volume.to_mu()
        grid = vol.grid if grid is None else grid
        data = vol.data
    elif hasattr(volume, "rasterize") and not isinstance(volume, (torch.Tensor, np.ndarray)):
        grid = geometry.grid if grid is None else grid
        data = volume.rasterize(grid, supersample=2)
    else:
        grid = geometry.grid if grid is None else grid
        data = volume
    data = check_volume(data, grid)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GeometryWarning)  # we raise a clear error below instead
        nominal = geometry.with_grid(grid) if geometry.grid != grid else geometry
        ss = np.random.SeedSequence(seed)
        # a fourth child for the pose: the first three (and so every existing dataset) are unchanged
        s_geom, s_int, s_phys, s_pose = ss.spawn(4)
        aug: dict = {}
        used = nominal
        if perturbation is not None and not perturbation.is_zero:
            used, drawn = perturbation.sample(nominal, s_geom)
            aug["perturbation"] = {"size": asdict(perturbation), "drawn": drawn}
        scanner = used  # the scanner's geometry (perturbed, not posed): tube and detector move together
        if realism is not None and not (realism.pose.is_zero and realism.motion.is_zero):
            rng = np.random.default_rng(s_pose)
            pose, motion = realism.pose.draw(rng), realism.motion.draw(rng)
            center = [float(x) for x in used.grid.center]
            used = posed_geometry(used, None if realism.pose.is_zero else pose,
                                  None if realism.motion.is_zero else motion)
            if not realism.pose.is_zero:
                aug["pose"] = {"size": asdict(realism.pose), "drawn": pose, "center_mm": center,
                               "applies_to_views": list(range(used.num_views))}
            if not realism.motion.is_zero:
                aug["motion"] = {"size": asdict(realism.motion), "drawn": motion, "center_mm": center,
                                 "applies_to_views": list(range(1, used.num_views))}
    check_views_see_volume(used)
    if nominal is not geometry:  # the volume brought its own grid: warn if the views see little of it
        nominal.warn_if_partly_seen(stacklevel=2)
    settings = realism.settings_for(used) if realism is not None else None
    if settings is not None:
        from ..physics import log_transform, radiograph

        recorded = settings.to_dict()
        if settings.heel is not None and settings.heel is not False and not isinstance(settings.heel, torch.Tensor):
            # the flat field belongs to the tube and detector, which a head pose does not move
            settings = settings.replace(heel=_heel_map(scanner, settings))
        imaged = data
        if realism.materials is not None:  # polychromatic: the 60 keV volume split into two materials
            from ..physics import decompose_attenuation

            imaged = decompose_attenuation(data, DEFAULT_ENERGY_KEV, materials=realism.materials)
        with torch.no_grad():
            out = radiograph(imaged, used, settings, seed=int(s_phys.generate_state(1)[0]), backend=backend,
                             return_all=True)
            if isinstance(out["raw"], (tuple, list)):
                raise ValueError("views with different detector shapes are not supported by the dataset pipeline")
            xr = out["raw"] if kind == "radiograph" else log_transform(out["raw"], out["flat"])
        aug["physics"] = {**recorded, "photons_per_mm2": realism.photons_per_mm2,
                          "materials": None if realism.materials is None else list(realism.materials),
                          "volume_energy_kev": DEFAULT_ENERGY_KEV,
                          "stored": "raw counts" if kind == "radiograph" else "-log(raw / flat)"}
    elif kind == "line_integrals":
        with torch.no_grad():
            xr = project(data, used, backend=backend)
    else:
        radiograph = physics_radiograph()
        if radiograph is None:
            raise ValueError("kind='radiograph' needs tomoprior.physics.radiograph, which this installation lacks; "
                             "use kind='line_integrals'")
        opts = dict(physics_options or {})
        opts.setdefault("seed", int(s_phys.generate_state(1)[0]))
        opts.setdefault("backend", backend)
        settings_kw = {k: v for k, v in opts.items() if k not in ("seed", "backend", "return_all")}
        from ..physics import RadiographSettings

        with torch.no_grad():
            xr = radiograph(data, used, RadiographSettings(**settings_kw), seed=opts["seed"], backend=opts["backend"])
        aug["physics"] = {k: (v if isinstance(v, (int, float, str, bool, type(None))) else repr(v))
                          for k, v in opts.items()}
    if isinstance(xr, (tuple, list)):
        raise ValueError("views with different detector shapes are not supported by the dataset pipeline")
    xr = torch.as_tensor(xr).to(torch.float32)
    if intensity is not None and not intensity.is_zero:
        xr, drawn = intensity.apply(xr, s_int, nonnegative=(kind == "radiograph"))
        aug["intensity"] = {"size": asdict(intensity), "drawn": drawn}
    if not bool(torch.isfinite(xr).all()):
        raise ValueError("the synthesised X-rays contain non-finite values; check the volume and physics options")
    return DRRResult(xr, used, nominal, kind, aug)
