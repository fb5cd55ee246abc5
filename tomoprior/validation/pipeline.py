"""The main job: simulate -> detect -> calibrate -> validate -> report.

:func:`run_main_job` builds the pediatric bi-planar setup, applies a stated, realistic
miscalibration (:data:`DEFAULT_MISCALIBRATION`) to get the TRUE geometry, simulates raw
radiographs of a bead phantom through it (heel effect, focal-spot and detector blur,
Poisson noise), detects the beads, calibrates starting from the NOMINAL geometry, and
validates the result against the truth (parameter errors versus their uncertainty and the
calibration targets of :data:`TARGETS`, fit / held-out reprojection error, 3D triangulation). :func:`analyse`
does the truth-free part for real images (``tomoprior calibrate``).

Only the thin functions :func:`simulate_radiographs`, :func:`detect` and
:func:`run_calibration` talk to :mod:`tomoprior.physics` and :mod:`tomoprior.calibration`.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..geometry.geometry import BiplanarGeometry, Geometry, ParametricGeometry
from ..geometry.parameters import UnitsWarning, ViewParameters
from .reprojection import match_to_design, reprojection_error, triangulation_error

__all__ = [
    "DEFAULT_MISCALIBRATION",
    "TARGETS",
    "MainJobConfig",
    "PipelineError",
    "ValidationOutcome",
    "analyse",
    "apply_miscalibration",
    "check_distinct_views",
    "expected_counts",
    "judge",
    "parameter_errors",
    "run_main_job",
]


class PipelineError(ValueError):
    """A stage of the pipeline cannot go on (too few beads, bad images, ...); the message says why."""


#: True minus nominal parameters of the simulated setup (mm, degrees, detector offset u0/v0 in mm).
#: Magnitudes typical of an uncalibrated clinical bi-planar / C-arm room: source-to-detector
#: off by ~1 cm (tape-measured or read from a mis-set detector), source-to-isocenter by
#: several mm, detector offset by 1-2 mm (detector mounting), in-plane rotation a few
#: tenths of a degree, tilts up to 1 degree and gantry angles off by about half a degree.
DEFAULT_MISCALIBRATION = {
    "frontal": {
        "source_to_detector": 12.0, "source_to_isocenter": -6.0, "u0": 1.5, "v0": -0.8,
        "detector_rotation_deg": 0.4, "detector_tilt_u_deg": 1.0, "detector_tilt_v_deg": -0.5,
        "primary_angle_deg": 0.5, "secondary_angle_deg": -0.3,
    },
    "lateral": {
        "source_to_detector": -9.0, "source_to_isocenter": 5.0, "u0": -1.2, "v0": 1.0,
        "detector_rotation_deg": -0.3, "detector_tilt_u_deg": -0.6, "detector_tilt_v_deg": 0.8,
        "primary_angle_deg": -0.7, "secondary_angle_deg": 0.4,
    },
}

#: Calibration targets (simulated images, ~0.1 px centroid noise): parameter -> (bound, unit).
TARGETS = {
    "heldout_rms_px": (0.1, "px"),
    "triangulation_rms_mm": (0.2, "mm"),
    "source_to_detector": (1.0, "mm"),
    "source_to_isocenter": (1.0, "mm"),
    "u0": (0.2, "px"),
    "v0": (0.2, "px"),
    "detector_rotation": (0.01, "deg"),
    "detector_tilt_u": (0.1, "deg"),
    "detector_tilt_v": (0.1, "deg"),
}



def apply_miscalibration(params: ViewParameters, deltas: dict) -> ViewParameters:
    """``params`` with the given errors added: :meth:`ViewParameters.perturbed` with the keys of
    :data:`DEFAULT_MISCALIBRATION` (lengths in mm, ``_deg`` angles in degrees).

    Examples
    --------
    >>> p = apply_miscalibration(ViewParameters(), {"source_to_detector": 12.0, "detector_tilt_u_deg": 1.0})
    >>> p.source_to_detector, round(math.degrees(p.detector_tilt_u), 9)
    (1512.0, 1.0)
    """
    return params.perturbed(**{k: float(v) for k, v in deltas.items()})


# -- parameter comparison ----------------------------------------------------------------------

#: Parameters compared with the truth, their display unit and conversion from code units.
_COMPARED = (
    ("source_to_isocenter", "mm"), ("source_to_detector", "mm"), ("u0", "px"), ("v0", "px"),
    ("detector_rotation", "deg"), ("detector_tilt_u", "deg"), ("detector_tilt_v", "deg"),
    ("primary_angle", "deg"), ("secondary_angle", "deg"),
)


def _value(p: ViewParameters, name: str, unit: str) -> float:
    v = float(torch.as_tensor(getattr(p, name)).detach())
    if unit == "deg":
        return math.degrees(v)
    if unit == "px":
        pr, pc = p.pitch
        return v / (pc if name == "u0" else pr)
    return v


def parameter_errors(estimated: Sequence[ViewParameters], true: Sequence[ViewParameters],
                     nominal: Sequence[ViewParameters] | None = None, uncertainty: Sequence[dict] | None = None,
                     ) -> list[dict]:
    """Per view and parameter: true, nominal, estimated value, error, 1-sigma, target.

    Detector offset (u0, v0) in pixels of the view, angles in degrees, distances in mm.
    ``uncertainty[i]`` maps parameter name -> 1-sigma in those display units (optional).
    """
    rows = []
    for i, (e, t) in enumerate(zip(estimated, true)):
        for name, unit in _COMPARED:
            tv, ev = _value(t, name, unit), _value(e, name, unit)
            nv = _value(nominal[i], name, unit) if nominal is not None else None
            sd = None if uncertainty is None else (uncertainty[i] or {}).get(name)
            err = ev - tv
            target = TARGETS.get(name)
            rows.append({
                "view": e.name or f"view{i}", "parameter": name, "unit": unit, "true": tv, "nominal": nv,
                "estimated": ev, "error": err, "sd": sd,
                "error_over_sd": (abs(err) / sd) if sd else None,
                "nominal_error": (nv - tv) if nv is not None else None,
                "target": target[0] if target else None,
                "meets_target": (abs(err) <= target[0]) if target else None,
            })
    return rows


# -- thin adapters to physics and calibration ---------------------------------------------------

def expected_counts(line_integrals: torch.Tensor, geometry: Geometry, config: MainJobConfig,
                    heel: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Noise-free counts per view ``(rows, cols)`` from line integrals ``(views, rows, cols)``.

    The steps of :func:`tomoprior.physics.radiograph` before the noise, in its order: a
    flat field of ``config.photons`` counts shaped by the heel-effect field ``heel`` (same
    shape as the line integrals, or None) times ``exp(-p)``, then focal-spot blur and
    detector blur.
    """
    from .. import physics

    p = line_integrals
    out = []
    for i, view in enumerate(geometry.views):
        flat = torch.full(view.shape, float(config.photons), dtype=p.dtype)
        if heel is not None:
            flat = flat * heel[i]
        img = flat * torch.exp(-p[i])
        if config.focal_spot_mm:
            img = physics.focal_spot_blur(img[None], Geometry(geometry.grid, [view]), config.focal_spot_mm)[0]
        if config.detector_blur_px:
            img = physics.detector_blur(img[None], config.detector_blur_px)[0]
        out.append(img.detach())
    return out


def simulate_radiographs(phantom, geometry: Geometry, config: MainJobConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """Raw counts ``(views, rows, cols)`` and the heel-effect field (same shape, or None).

    The chain of :func:`tomoprior.physics.radiograph` for a monochromatic phantom (heel-shaped
    flat field times ``exp(-p)`` integrated over each pixel's area, focal-spot blur, detector
    blur, Poisson noise: :func:`expected_counts`, then the noise; the same functions in the
    same order, checked equal in the tests), fed with exact line integrals from
    :func:`tomoprior.calibration.bead_line_integrals`, which evaluates each bead only around
    its shadow: ``physics.radiograph(phantom, ...)`` evaluates every bead over the whole
    detector, about 50 times slower for a 50-bead cage.
    """
    from .. import physics
    from ..calibration import bead_line_integrals

    p = bead_line_integrals(phantom, geometry, subsamples=config.pixel_subsamples)
    heel = None
    if config.anode_angle_deg is not None:
        heel = torch.as_tensor(physics.heel_effect(geometry, config.anode_angle_deg, kvp=config.kvp)).to(p.dtype)
    gen = torch.Generator()
    gen.manual_seed(int(config.seed))
    raw = [physics.poisson_noise(img, generator=gen) for img in expected_counts(p, geometry, config, heel)]
    counts = torch.stack(raw).cpu().numpy().astype(np.float64)
    return counts, (None if heel is None else heel.cpu().numpy())


def detect(images: Sequence[np.ndarray], names: Sequence[str], design_positions: np.ndarray,
           min_beads: int = 8, **options) -> list:
    """Detected beads per view (:class:`tomoprior.calibration.Detections`, ``.positions`` ``(m, 2)`` col, row).

    Raises
    ------
    PipelineError
        Fewer than ``min_beads`` blobs in a view (says how many and where they are).
    """
    from ..calibration import detect_beads

    out = []
    for img, name in zip(images, names):
        det = detect_beads(img, **options)
        pos = np.asarray(getattr(det, "positions", det), dtype=np.float64).reshape(-1, 2)
        if len(pos) < min_beads:
            where = ("none found" if len(pos) == 0 else
                     f"at (col, row) {np.round(pos, 1).tolist()}" if len(pos) <= 8 else
                     f"within columns {pos[:, 0].min():.0f}-{pos[:, 0].max():.0f}, rows "
                     f"{pos[:, 1].min():.0f}-{pos[:, 1].max():.0f}")
            raise PipelineError(
                f"view {name!r}: found {len(pos)} bead(s) ({where}) but the phantom has {len(design_positions)} and "
                f"calibration needs at least {min_beads}; check that the phantom is in the field of view, the "
                "exposure (beads must stand out of the noise) and that the image is not inverted"
            )
        out.append(det)
    return out


def _positions(det) -> np.ndarray:
    return np.asarray(getattr(det, "positions", det), dtype=np.float64).reshape(-1, 2)


def run_calibration(points_or_images, phantom, initial: Geometry, *, heldout: float, seed: int):
    """``tomoprior.calibration.calibrate`` (the fit itself)."""
    from ..calibration import calibrate

    return calibrate(points_or_images, phantom, initial, heldout=heldout, seed=seed)


def _result_parameters(result) -> list[ViewParameters]:
    params = getattr(result, "parameters", None)
    if params is not None and not isinstance(params, dict) and all(isinstance(p, ViewParameters) for p in params):
        return list(params)
    geom = getattr(result, "geometry", None)
    if isinstance(geom, ParametricGeometry):
        return list(geom.parameters)
    if params is not None and all(isinstance(p, dict) for p in params):
        return [ViewParameters.from_dict(p, f"result.parameters[{i}]") for i, p in enumerate(params)]
    raise PipelineError(f"the calibration result has no per-view ViewParameters (got {type(params).__name__})")


def _result_uncertainty(result, params: Sequence[ViewParameters]) -> list[dict] | None:
    """Per view: parameter -> 1-sigma in display units (mm, deg, px)."""
    unc = getattr(result, "uncertainty", None)
    if unc is None:
        return None
    if isinstance(unc, dict):  # keyed by view name
        unc = [unc.get(p.name, {}) for p in params]
    out = []
    for p, u in zip(params, unc):
        if isinstance(u, ViewParameters):
            u = {n: abs(float(torch.as_tensor(getattr(u, n)))) for n in ViewParameters.SCALAR_FIELDS}
            code_units = True
        else:
            u = dict(u or {})
            code_units = False
        d = {}
        for name, unit in _COMPARED:
            key = next((k for k in (name, f"{name}_deg", f"{name}_mm", f"{name}_px") if k in u), None)
            if key is None:
                continue
            v = float(u[key])
            if unit == "deg" and code_units:
                v = math.degrees(v)
            if unit == "px" and not key.endswith("_px"):
                pr, pc = p.pitch
                v = v / (pc if name == "u0" else pr)
            d[name] = v
        out.append(d)
    return out


# -- analysis ---------------------------------------------------------------------------------------

@dataclass
class ValidationOutcome:
    """Everything measured by one run (the report's content)."""

    names: list
    images: list
    detections: list
    design_positions: np.ndarray
    matched: list
    calibrated: Geometry
    calibrated_parameters: list
    reprojection: object
    reprojection_nominal: object | None
    triangulation: object | None
    result: object
    uncertainty: list | None
    parameter_table: list | None = None
    reprojection_true: object | None = None
    heel: np.ndarray | None = None
    projector_map: dict | None = None
    sensitivity: list = field(default_factory=list)
    conditioning: list = field(default_factory=list)
    config: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    heldout_masks: list | None = None
    verdict: object | None = None
    baseline: object | None = None
    baseline_rows: list = field(default_factory=list)
    inputs: list = field(default_factory=list)
    signoff: dict = field(default_factory=dict)
    initial_source: list = field(default_factory=list)

    @property
    def converged(self) -> bool:
        return bool(getattr(self.result, "converged", True))


def _heldout_masks(result, n: int, views: int, design_ids=None):
    """Per view, a boolean mask of the design beads the calibration held out (None if unknown)."""
    ids = getattr(result, "heldout_ids", None)
    if ids is not None and design_ids is not None:
        index = {b: k for k, b in enumerate(design_ids)}
        masks = []
        for view_ids in list(ids)[:views]:
            m = np.zeros(n, bool)
            m[[index[b] for b in view_ids if b in index]] = True
            masks.append(m)
        if len(masks) == views:
            # a bead held out of the fit is held out in every view, detected or not
            union = np.logical_or.reduce(masks)
            return [union] * views
    return None


def analyse(images, detections, result, design_positions, names, *, initial: Geometry | None = None,
            true_parameters: Sequence[ViewParameters] | None = None, true_geometry: Geometry | None = None,
            design_ids: Sequence[str] | None = None, match_px: float = 5.0) -> ValidationOutcome:
    """Validate a calibration against the detected beads (and the truth when known).

    Parameters
    ----------
    images : sequence of ndarray ``(rows, cols)``
    detections : sequence of ndarray ``(m, 2)``
        Detected blob centres (col, row) per view.
    result : CalibrationResult
    design_positions : ndarray ``(n, 3)``
        Bead centres in the phantom frame, mm.
    names : sequence of str
    design_ids : sequence of str, optional
        Bead ids in design order (to recognise the calibration's held-out beads).
    initial : Geometry, optional
        The starting (nominal) geometry, for the before/after comparison.
    true_parameters, true_geometry : optional
        The truth of a simulation.
    match_px : float
        Gate for assigning detections to design beads by the calibrated projections.
    """
    design_positions = np.asarray(design_positions, dtype=np.float64)
    geom = getattr(result, "geometry", None)
    if not isinstance(geom, Geometry):
        raise PipelineError(f"the calibration result has no Geometry (got {type(geom).__name__})")
    if not isinstance(geom, ParametricGeometry):  # keep the parameters (saved in geometry.yaml)
        geom = geom.detach()
    params = _result_parameters(result)
    pred = geom.project_points(torch.as_tensor(design_positions)).detach().numpy()
    detections = [_positions(d) for d in detections]
    calib_matches = getattr(result, "matches", None)
    if calib_matches and len(calib_matches) == len(detections):
        # the calibration's own inlier correspondence: every table and figure of the report
        # then uses exactly the beads the fit, held-out and triangulation statistics used
        matched = []
        for (di, dj), d in zip(calib_matches, detections):
            m = np.full((len(design_positions), 2), np.nan)
            m[np.asarray(di, int)] = d[np.asarray(dj, int)]
            matched.append(m)
    else:
        matched = [match_to_design(p, d, match_px) for p, d in zip(pred, detections)]
    masks = _heldout_masks(result, len(design_positions), geom.num_views, design_ids)
    rep = reprojection_error(geom, design_positions, matched, heldout=masks)
    rep_nominal = reprojection_error(initial, design_positions, matched) if initial is not None else None
    rep_true = reprojection_error(true_geometry, design_positions, matched) if true_geometry is not None else None
    tri = None
    if geom.num_views >= 2 and sum(np.isfinite(m).all(axis=1).sum() > 0 for m in matched) >= 2:
        tri = triangulation_error(geom, matched, design_positions, align=true_geometry is None)
    unc = _result_uncertainty(result, params)
    table = None
    if true_parameters is not None:
        nominal = list(initial.parameters) if isinstance(initial, ParametricGeometry) else None
        table = parameter_errors(params, true_parameters, nominal, unc)
    notes = []
    if not getattr(result, "converged", True):
        notes.append(f"The calibration fit did NOT converge ({getattr(result, 'message', 'no message')}); "
                     "the best parameters found and their residuals are reported.")
    for name, m, d in zip(names, matched, detections):
        nm = int(np.isfinite(m).all(axis=1).sum())
        if nm < len(design_positions):
            notes.append(f"view {name!r}: {nm} of {len(design_positions)} design beads matched "
                         f"({len(d)} blobs detected, {len(d) - nm} unmatched).")
    return ValidationOutcome(
        names=list(names), images=list(images), detections=list(detections), design_positions=design_positions,
        matched=matched, calibrated=geom, calibrated_parameters=params, reprojection=rep,
        reprojection_nominal=rep_nominal, reprojection_true=rep_true, triangulation=tri, result=result,
        uncertainty=unc, parameter_table=table, notes=notes, heldout_masks=masks,
    )


#: Projector check of the main job: grid, sub-samples per voxel, detector pixels (longer side),
#: rays counted (integral above this fraction of the maximum) and the target median error.
PROJECTOR_CHECK = {"grid_size": 96, "supersample": 4, "max_pixels": 192, "crossing_fraction": 0.05,
                   "target_median": 0.01}


def add_checks(outcome: ValidationOutcome, *, analytic_phantom: str | None = "shepp_logan_3d_modified",
               max_pixels: int = PROJECTOR_CHECK["max_pixels"], grid_size: int = PROJECTOR_CHECK["grid_size"],
               supersample: int = PROJECTOR_CHECK["supersample"], sigma_px: float | None = None) -> None:
    """Sensitivity table, fit conditioning and the projector-vs-analytic check (in place).

    The projector check rasterises ``analytic_phantom`` on a ``grid_size``^3 grid over the
    default volume (``supersample``^3 sub-samples per voxel: the voxel average the projector
    assumes) and compares the default projector with the exact line integrals under the
    calibrated geometry, on a detector binned to about ``max_pixels``, over the rays through
    the object (integral above 5 % of the maximum). At 96^3 it measures the projector (median
    about 0.2 %) rather than the voxel staircase of a coarse grid. ``analytic_phantom=None``
    leaves it out (real-image reports).

    ``sigma_px``: centroid noise per axis for the predicted uncertainties; default the
    calibration's residual sigma (``result.sigma_px``), else 0.1 px.
    """
    from ..geometry.geometry import DEFAULT_GRID
    from .sensitivity import fit_conditioning, sensitivity_table

    if sigma_px is None:
        s = getattr(outcome.result, "sigma_px", None)
        sigma_px = float(s) if isinstance(s, (int, float)) and math.isfinite(s) and s > 0 else 0.1
    with warnings.catch_warnings():
        # perturbing fitted values is not typing angles (a wild fit is the verdict's business)
        warnings.simplefilter("ignore", UnitsWarning)
        outcome.sensitivity = [r.to_dict() for r in sensitivity_table(outcome.calibrated_parameters)]
        outcome.conditioning = [fit_conditioning(p, outcome.design_positions, sigma_px).to_dict()
                                for p in outcome.calibrated_parameters]
    if analytic_phantom:
        from ..phantoms import load as load_phantom
        from .analytic import compare_to_analytic

        coarse = [_coarse(p, max_pixels) for p in outcome.calibrated_parameters]
        grid = DEFAULT_GRID.with_shape((grid_size,) * 3, keep="extent")
        geom = Geometry(grid, [p.to_view() for p in coarse])
        ph = load_phantom(analytic_phantom)
        vol = ph.rasterize(grid, supersample=supersample, dtype=torch.float32)
        analytic = ph.line_integrals(geom)
        from ..projectors import project

        with torch.no_grad():
            proj = project(vol, geom, "auto")
        cmp = compare_to_analytic(ph, geom, "auto", volume=vol, analytic=analytic, projections=proj,
                                  crossing_fraction=PROJECTOR_CHECK["crossing_fraction"])
        outcome.projector_map = {
            "phantom": ph.name, "grid": grid.to_dict(), "comparison": cmp.to_dict(),
            "analytic": [a.detach().double().cpu().numpy() for a in analytic],
            "projected": [p.detach().double().cpu().numpy() for p in proj],
            "detector": [list(v.shape) for v in geom.views], "supersample": supersample,
            "target_median": PROJECTOR_CHECK["target_median"],
        }


def _coarse(p: ViewParameters, max_pixels: int) -> ViewParameters:
    """The same view read out with about ``max_pixels`` along its longer side."""
    rows, cols = p.detector_shape
    f = max(1, math.ceil(max(rows, cols) / max_pixels))
    pr, pc = p.pitch
    return p.replace(pixel_pitch=(pr * f, pc * f), detector_shape=(max(rows // f, 1), max(cols // f, 1)))


# -- the main job ---------------------------------------------------------------------------

@dataclass
class MainJobConfig:
    """Settings of :func:`run_main_job` (defaults: the shipped main job).

    Attributes
    ----------
    phantom : str
        Bead phantom name or YAML path.
    photons : float
        Unattenuated counts per (binned) pixel at the detector centre.
    seed : int
        Seed of the noise and of the held-out bead choice.
    binning : int
        Detector binning of the 1536^2 x 0.2 mm default panel (2: 768^2 x 0.4 mm).
    kvp : float
        Tube voltage for the spectrum and the heel effect.
    anode_angle_deg : float or None
        Anode angle (None: no heel effect).
    focal_spot_mm, detector_blur_px : float
    pixel_subsamples : int
        Each detector pixel integrates the intensity over ``s x s`` sub-pixel rays through the
        beads (default 4). Sampling at pixel centres (1) biases the calibrated
        source-to-detector distance by about +0.7 mm (31 of 32 errors positive over 16 seeds);
        4 removes about 92 % of that bias (docs/calibration.md).
    heldout : float
        Fraction of beads held out of the fit.
    miscalibration : dict
        True minus nominal per view (see :data:`DEFAULT_MISCALIBRATION`).
    analytic_phantom : str or None
        Phantom of the projector-vs-analytic map (None: skip it).
    """

    phantom: str = "bead_cage"
    photons: float = 1000.0
    seed: int = 0
    binning: int = 2
    kvp: float = 70.0
    anode_angle_deg: float | None = 12.0
    focal_spot_mm: float = 0.6
    detector_blur_px: float = 0.5
    pixel_subsamples: int = 4
    heldout: float = 0.2
    miscalibration: dict = field(default_factory=lambda: {k: dict(v) for k, v in DEFAULT_MISCALIBRATION.items()})
    analytic_phantom: str | None = "shepp_logan_3d_modified"
    min_beads: int = 8

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def main_job_geometries(config: MainJobConfig) -> tuple[BiplanarGeometry, BiplanarGeometry]:
    """``(nominal, true)`` bi-planar geometries of the main job."""
    nominal = BiplanarGeometry.from_parameters(binning=config.binning)
    mis = config.miscalibration
    unknown = set(mis) - {"frontal", "lateral"}
    if unknown:
        raise ValueError(f"miscalibration has unknown view(s) {sorted(unknown)}; use 'frontal' and 'lateral'")
    true = nominal.perturbed(mis)
    return nominal, true


#: Smallest bead image (diameter in detector pixels) the main job's detection is run on: at
#: binning 6 the cage's 1.5 mm beads span 1.9 pixels and are all found, at binning 8 (1.4
#: pixels) none is.
MIN_BEAD_IMAGE_PX = 1.75


def check_beads_resolved(design, geometry: BiplanarGeometry, binning: int) -> None:
    """Refuse a detector binning whose pixels are too coarse to see the phantom's beads.

    The smallest bead's image diameter is ``2 r M / pitch`` (magnification ``M`` = source-to-
    detector / source-to-isocenter); below :data:`MIN_BEAD_IMAGE_PX` pixels detection finds
    nothing and the run would fail later with "found 0 beads". Raises ``ValueError`` naming the
    size and the coarsest binning that works.
    """
    r = float(np.min(design.radii))
    worst, panel = None, None
    for p in geometry.parameters:
        pitch = max(np.atleast_1d(np.asarray(p.pixel_pitch, dtype=float)))
        px = 2.0 * r * (p.source_to_detector / p.source_to_isocenter) / pitch
        worst = px if worst is None else min(worst, px)
        panel = tuple(int(n) * binning for n in p.detector_shape)
    if worst is None or worst >= MIN_BEAD_IMAGE_PX:
        return
    native = worst * binning  # image diameter in unbinned panel pixels
    ok = [b for b in range(1, binning) if all(n % b == 0 for n in panel) and native / b >= MIN_BEAD_IMAGE_PX]
    fix = f"use --binning {max(ok)} or finer" if ok else "use finer pixels"
    raise ValueError(f"at binning {binning} the phantom's smallest beads ({2 * r:g} mm) image to {worst:.2f} pixels; "
                     f"bead detection needs at least {MIN_BEAD_IMAGE_PX:g}: {fix}")


def run_main_job(config: MainJobConfig | None = None, *, progress: Callable[[str], None] | None = None,
                 tolerances=None, baseline=None) -> ValidationOutcome:
    """Simulate, detect, calibrate from the nominal geometry and validate against the truth.

    Raises
    ------
    PipelineError or ValueError
        Unknown phantom, too few beads detected, bad configuration.
    """
    from ..calibration import bead_design
    from ..phantoms import load as load_phantom

    config = config or MainJobConfig()
    say = progress or (lambda s: None)
    timings = {}
    t0 = time.perf_counter()
    phantom = load_phantom(config.phantom)
    design = bead_design(phantom)
    nominal, true = main_job_geometries(config)
    check_beads_resolved(design, nominal, config.binning)
    timings["setup"] = time.perf_counter() - t0

    say("simulate")
    t0 = time.perf_counter()
    counts, heel = simulate_radiographs(phantom, true, config)
    timings["simulate"] = time.perf_counter() - t0

    say("detect")
    t0 = time.perf_counter()
    names = [p.name for p in nominal.parameters]
    detections = detect(list(counts), names, design.positions, config.min_beads)
    timings["detect"] = time.perf_counter() - t0

    say("calibrate")
    t0 = time.perf_counter()
    result = run_calibration(detections, phantom, nominal, heldout=config.heldout, seed=config.seed)
    timings["calibrate"] = time.perf_counter() - t0

    say("validate")
    t0 = time.perf_counter()
    outcome = analyse(list(counts), detections, result, design.positions, names, initial=nominal,
                      true_parameters=list(true.parameters), true_geometry=true, design_ids=design.ids)
    outcome.heel = heel
    judge(outcome, tolerances=tolerances, baseline=baseline, truth=list(true.parameters), detections=detections,
          phantom=phantom, initial=nominal, heldout=config.heldout, seed=config.seed)
    add_checks(outcome, analytic_phantom=config.analytic_phantom)
    timings["validate"] = time.perf_counter() - t0
    outcome.timings = timings
    outcome.config = config.to_dict()
    outcome.config["true_parameters"] = [p.to_dict() for p in true.parameters]
    outcome.config["nominal_parameters"] = [p.to_dict() for p in nominal.parameters]
    return outcome


# -- QA gates ------------------------------------------------------------------------------------

def check_distinct_views(images: Sequence[np.ndarray], detections: Sequence, names: Sequence[str],
                         paths: Sequence[str] | None = None, *, coincide_px: float = 1.0,
                         max_fraction: float = 0.8) -> None:
    """Refuse the same radiograph (or two shots of the same view) given as different views.

    Raises
    ------
    PipelineError
        Two images with identical pixels, or whose bead patterns coincide (more than
        ``max_fraction`` of the blobs of the smaller set within ``coincide_px`` of a blob of
        the other image): two views of one phantom from different directions never do.
    """
    from scipy.spatial import cKDTree

    label = [f"{n!r}" + (f" ({p})" if p else "") for n, p in zip(names, paths or [None] * len(names))]
    for a in range(len(images)):
        for b in range(a + 1, len(images)):
            ia, ib = np.asarray(images[a]), np.asarray(images[b])
            if ia.shape == ib.shape and np.array_equal(ia, ib):
                raise PipelineError(
                    f"views {label[a]} and {label[b]} are the same image (identical pixels); give the frontal and "
                    "the lateral radiograph of the phantom"
                )
            pa, pb = _positions(detections[a]), _positions(detections[b])
            if len(pa) == 0 or len(pb) == 0:
                continue
            small, big = (pa, pb) if len(pa) <= len(pb) else (pb, pa)
            d, _ = cKDTree(big).query(small, distance_upper_bound=coincide_px)
            frac = float(np.isfinite(d).mean())
            if frac > max_fraction:
                raise PipelineError(
                    f"views {label[a]} and {label[b]} show the same bead pattern ({int(np.isfinite(d).sum())} of "
                    f"{len(small)} blobs coincide within {coincide_px:g} px): the same view was given twice. Give one "
                    "frontal and one lateral radiograph"
                )


def judge(outcome: ValidationOutcome, *, tolerances=None, baseline=None, truth=None, detections=None, phantom=None,
          initial=None, heldout: float = 0.2, seed: int = 0):
    """The QA verdict of a pipeline outcome (stored in ``outcome.verdict``, also returned).

    Adds the ``view_order`` check when a two-view calibration fails: the calibration is
    repeated with the two images exchanged, and if that fits (it passes the statistics and
    sanity checks the given order failed, or halves the held-out error while matching more
    beads), the verdict says that frontal and lateral appear swapped.
    """
    from . import qa

    tol = tolerances or qa.Tolerances.default()
    res = outcome.result
    verdict = qa.evaluate(res, tolerances=tol, names=outcome.names, truth=truth, baseline=baseline)
    if baseline is not None:
        outcome.baseline = baseline
        outcome.baseline_rows = qa.baseline_deltas(res, baseline, tol, outcome.names)
    if (not verdict.passed and detections is not None and phantom is not None and initial is not None
            and len(outcome.names) == 2):
        item = _view_order_item(verdict, res, detections, phantom, initial, tol, outcome.names, heldout, seed)
        if item is not None:
            verdict.items.insert(1, item)
    outcome.verdict = verdict
    return verdict


def _view_order_item(verdict, res, detections, phantom, initial, tol, names, heldout, seed):
    from . import qa

    try:
        swapped = run_calibration(list(detections)[::-1], phantom, initial, heldout=heldout, seed=seed)
    except ValueError:
        return qa.VerdictItem("view_order", True, "", True, "==", True, None, None, "sanity",
                              {"detail": "with the images exchanged the calibration fails outright"})
    v2 = qa.evaluate(swapped, tolerances=tol, names=names)
    core = ("statistics", "sanity", "plausibility")
    swapped_ok = all(i.passed for i in v2.items if i.group in core)
    given_ok = all(i.passed for i in verdict.items if i.group in core)
    n_given = sum(len(m[0]) for m in (res.matches or []))
    n_swapped = sum(len(m[0]) for m in (swapped.matches or []))
    h_given, h_swapped = float(res.heldout_rms_px), float(swapped.heldout_rms_px)
    better = (math.isfinite(h_swapped) and (not math.isfinite(h_given) or h_swapped < 0.5 * h_given)
              and n_swapped > n_given)
    detail = {"heldout_rms_given_px": h_given, "heldout_rms_swapped_px": h_swapped,
              "beads_matched_given": n_given, "beads_matched_swapped": n_swapped}
    if (swapped_ok and not given_ok) or better:
        n_all = 2 * len(res.design_ids or ()) or "all"
        reason = (f"{names[0]} and {names[1]} appear swapped: with the two images exchanged {n_swapped} of {n_all} "
                  f"bead images match (as given: {n_given}) and the held-out RMS is {h_swapped:.3f} px (as given: "
                  f"{h_given:.3g} px). Give the images in the order {names[0]}, {names[1]}")
        return qa.VerdictItem("view_order", False, "", True, "==", False, None, reason, "sanity", detail)
    return qa.VerdictItem("view_order", True, "", True, "==", True, None, None, "sanity", detail)


def format_summary(outcome: ValidationOutcome) -> str:
    """Plain-text summary table (what ``tomoprior validate`` prints)."""
    rep, tri, res = outcome.reprojection, outcome.triangulation, outcome.result
    lines = []
    conv = "converged" if outcome.converged else "DID NOT CONVERGE"
    lines.append(f"calibration {conv}: {getattr(res, 'message', '')}".rstrip(": "))
    head = f"{'view':<10} {'beads':>7} {'fit RMS px':>11} {'held-out px':>12} {'max px':>8}"
    if outcome.reprojection_nominal is not None:
        head += f" {'nominal px':>11}"
    if outcome.reprojection_true is not None:
        head += f" {'truth px':>9}"
    lines.append(head)
    for i, v in enumerate(rep.views):
        fit_mask = ~v.heldout if v.heldout is not None else np.ones(len(v.residuals), bool)
        fit_rms = _rms_rows(v.residuals[fit_mask])
        held = "-" if v.rms_heldout_px is None else f"{v.rms_heldout_px:.3f}"
        line = (f"{v.name:<10} {v.n_detected:>3}/{len(v.residuals):<3} {fit_rms:>11.3f} {held:>12} "
                f"{v.max_px:>8.3f}")
        if outcome.reprojection_nominal is not None:
            line += f" {outcome.reprojection_nominal.views[i].rms_px:>11.2f}"
        if outcome.reprojection_true is not None:
            line += f" {outcome.reprojection_true.views[i].rms_px:>9.3f}"
        lines.append(line)
    held_all = getattr(res, "heldout_rms_px", None)
    tgt = TARGETS["heldout_rms_px"][0]
    if held_all is not None and np.ndim(held_all) == 0 and math.isfinite(float(held_all)):
        ok = "meets" if float(held_all) <= tgt else "MISSES"
        lines.append(f"held-out RMS (calibrate): {float(held_all):.3f} px  (target <= {tgt} px: {ok})")
    if tri is not None:
        t = TARGETS["triangulation_rms_mm"][0]
        ok = "meets" if tri.rms_mm <= t else "MISSES"
        how = "after rigid alignment to the design" if tri.aligned else "in the phantom frame"
        lines.append(f"3D triangulation RMS {tri.rms_mm:.3f} mm, max {tri.max_mm:.3f} mm over {tri.n} beads "
                     f"({how}; target <= {t} mm: {ok})")
    if not outcome.parameter_table:
        lines.append("")
        lines.append("calibrated parameters (+- 1-sigma; detector offset u0/v0 in px, angles in deg)")
        for i, p in enumerate(outcome.calibrated_parameters):
            sd = (outcome.uncertainty or [{}] * (i + 1))[i] or {}
            vals = []
            for name, unit in _COMPARED:
                s = sd.get(name)
                digits = {"mm": 2, "px": 3, "deg": 4}[unit]
                vals.append(f"{name} {_value(p, name, unit):.{digits}f}" + ("" if s is None else f" +- {s:.{digits}f}"))
            lines.append(f"  {p.name}: " + ", ".join(vals))
    if outcome.parameter_table:
        lines.append("")
        lines.append("parameter errors against the truth (nominal err = nominal - true; calib err = calibrated - true)")
        lines.append(f"{'parameter':<26} {'view':<8} {'nominal err':>12} {'calib err':>10} {'1-sigma':>9} "
                     f"{'target':>8}  ok")
        for r in outcome.parameter_table:
            sd = "-" if r["sd"] is None else f"{r['sd']:.4f}"
            tg = "-" if r["target"] is None else f"{r['target']:g}"
            ok = {True: "yes", False: "NO", None: ""}[r["meets_target"]]
            ne = "-" if r["nominal_error"] is None else f"{r['nominal_error']:+.3f}"
            lines.append(f"{r['parameter'] + ' (' + r['unit'] + ')':<26} {r['view']:<8} {ne:>12} "
                         f"{r['error']:>+10.4f} {sd:>9} {tg:>8}  {ok}")
    for note in outcome.notes:
        lines.append(f"note: {note}")
    if outcome.baseline_rows:
        lines.append("")
        lines.append(f"drift against the baseline {getattr(outcome.baseline, 'source', '')} "
                     "(delta = now - baseline; z = delta / combined 1-sigma)")
        for r in outcome.baseline_rows:
            z = "-" if r["z"] is None else f"{r['z']:+.1f}"
            lines.append(f"  {r['view']:<8} {r['parameter'] + ' (' + r['unit'] + ')':<26} {r['delta']:>+10.4f}  z {z}")
    if outcome.verdict is not None:
        lines.append("")
        lines += outcome.verdict.summary_lines()
    return "\n".join(lines)


def _rms_rows(r: np.ndarray) -> float:
    ok = np.isfinite(r).all(axis=1)
    return float(np.sqrt(np.mean(np.sum(r[ok] ** 2, axis=1)))) if ok.any() else math.nan
