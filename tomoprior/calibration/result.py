"""The outcome of a calibration: fitted geometry, uncertainties, residuals, checks."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from .._atomic import write_text_atomic

__all__ = ["CalibrationError", "CalibrationResult"]


class CalibrationError(ValueError):
    """The calibration ran on readable input but cannot produce a trustworthy fit: too few
    beads detected or matched in a view, or too few left after outlier rejection.

    A QA run reports this as FAIL (exit code 1), not as bad input. The message says how many
    beads were found and where; the attributes give the same for programs.

    Attributes
    ----------
    view : int or None
        Index of the view that failed.
    view_name : str or None
    matched, detected, needed : int or None
        Beads matched to the design, blobs detected, and the minimum needed, in that view.
    """

    def __init__(self, message: str, *, view: int | None = None, view_name: str | None = None,
                 matched: int | None = None, detected: int | None = None, needed: int | None = None):
        super().__init__(message)
        self.view, self.view_name = view, view_name
        self.matched, self.detected, self.needed = matched, detected, needed


def _f(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


@dataclass
class CalibrationResult:
    """Calibrated geometry with its uncertainty and quality measures.

    Attributes
    ----------
    geometry : Geometry
        Fitted geometry (a :class:`~tomoprior.geometry.ParametricGeometry`; a
        :class:`~tomoprior.BiplanarGeometry` for two views), expressed in the gauge's world
        frame (``gauge="phantom"``: the phantom's design frame).
    parameters : list of ViewParameters
        Fitted physical parameters per view (angles in radians in code).
    uncertainty : list of dict
        Per view, the 1-sigma uncertainty of every fitted parameter in physical units:
        ``primary_angle_deg``, ``secondary_angle_deg``, ``source_to_isocenter`` (mm),
        ``source_to_detector`` (mm), ``u0``/``v0`` (mm), ``u0_px``/``v0_px`` (pixels),
        ``detector_rotation_deg``, ``detector_tilt_u_deg``, ``detector_tilt_v_deg``. Fixed
        parameters have 0; unobservable ones ``inf``.
    residuals : list of ndarray ``(k_v, 2)``
        Predicted minus detected ``(col, row)`` pixels of the fitted beads of each view.
    residual_ids : list of tuple of str
        Bead ids of the rows of :attr:`residuals`.
    heldout_residuals, heldout_ids : like residuals, for the held-out beads (not fitted).
    rms_px : float
        RMS length of the fit residual vectors over all views (pixels).
    rms_per_view : list of float
    max_px : list of float
        Largest residual length per view.
    heldout_rms_px : float
        RMS length of the held-out residual vectors (pixels); NaN without held-out beads.
        It contains the detection noise of the held-out beads (about ``sqrt(2) sigma`` per
        bead for ``sigma`` per axis) plus the geometric prediction error.
    triangulation_rms_mm : float
        RMS 3D distance between beads triangulated from their detections with the fitted
        geometry and their design positions placed by the fitted pose (beads seen in at
        least two views). NaN for a single view.
    triangulation_errors_mm : dict
        Bead id -> 3D error (mm).
    pose : ndarray (6,)
        Phantom pose ``(rx, ry, rz)`` rotation vector (rad) and ``(tx, ty, tz)`` (mm).
    pose_uncertainty : ndarray (6,)
    gauge : str
    converged : bool
    message : str
    sigma_px : float
        Residual standard deviation per coordinate, ``sqrt(sum r^2 / (m - p))``.
    condition_number : float
        Of the column-scaled normal matrix (large = weakly observable parameters).
    covariance : ndarray ``(p, p)``, parameter_names : list
        In the fit's internal units (radians, mm).
    detections : list of Detections
    phantom : str
    nfev : int
        Function evaluations of the final fit.
    initial_parameters : list of ViewParameters
        The starting geometry the fit began from (for the plausibility check).
    n_design : int
        Beads in the phantom design.
    matches : list of (ndarray, ndarray)
        Per view, the final inlier correspondence: design bead indices and the indices of the
        detections (rows of ``detections[v].positions``) they were matched to. Fit, held-out
        and triangulation statistics are all computed over exactly these pairs.
    rejected_ids : list of tuple of str
        Per view, beads matched at first but dropped by the fit's outlier rejection.
    heldout_rejected_ids : list of tuple of str
        Per view, held-out beads whose residual exceeded the same outlier limit (a wrong
        match, e.g. a stray blob next to an occluded bead); excluded from every statistic.
    outlier_limit_px : float
        The residual length beyond which a match is an outlier.
    design_ids : tuple of str
        Bead ids of the design, in design order (indices of :attr:`matches`).
    solver_message : str
        The least-squares solver's own termination message (:attr:`message` says it in words).
    world_points : ndarray ``(n_design, 3)`` mm, optional
        The design beads placed by the fitted pose (the world frame of :attr:`geometry`).
    """

    geometry: object
    parameters: list
    uncertainty: list
    residuals: list
    residual_ids: list
    heldout_residuals: list
    heldout_ids: list
    rms_px: float
    rms_per_view: list
    max_px: list
    heldout_rms_px: float
    triangulation_rms_mm: float
    triangulation_errors_mm: dict
    pose: np.ndarray
    pose_uncertainty: np.ndarray
    gauge: str
    converged: bool
    message: str
    sigma_px: float
    condition_number: float
    covariance: np.ndarray
    parameter_names: list
    detections: list = field(default_factory=list)
    phantom: str = ""
    nfev: int = 0
    initial_parameters: list = field(default_factory=list)
    n_design: int = 0
    matches: list = field(default_factory=list)
    rejected_ids: list = field(default_factory=list)
    heldout_rejected_ids: list = field(default_factory=list)
    outlier_limit_px: float = float("nan")
    design_ids: tuple = ()
    solver_message: str = ""
    world_points: np.ndarray | None = None

    @property
    def heldout_geometric_rms_px(self) -> float:
        """Held-out prediction error with the detection noise removed (pixels).

        ``sqrt(max(heldout_rms_px^2 - 2 sigma_px^2, 0))``: a held-out residual vector is the
        geometric prediction error plus the bead's own detection noise (``sigma_px`` per
        coordinate, estimated from the fit residuals). Unbiased for the squared error but
        noisy with few held-out beads: for 20 held-out vectors and 0.1 px noise it scatters
        by ~0.05 px (bead_cage, 10 seeds: RMS 0.074 px vs 0.054 px against the truth).
        """
        h, s = self.heldout_rms_px, self.sigma_px
        if not (math.isfinite(h) and math.isfinite(s)):
            return float("nan")
        return math.sqrt(max(h * h - 2.0 * s * s, 0.0))

    def summary(self) -> str:
        """A few lines for a terminal."""
        lines = [
            f"calibration ({self.phantom}, gauge={self.gauge}): {'converged' if self.converged else 'NOT converged'}",
            f"  fit RMS {self.rms_px:.3f} px, held-out RMS {self.heldout_rms_px:.3f} px "
            f"(noise removed {self.heldout_geometric_rms_px:.3f} px), "
            f"triangulation RMS {self.triangulation_rms_mm:.3f} mm",
        ]
        for p, u in zip(self.parameters, self.uncertainty):
            d = p.to_dict()
            lines.append(
                f"  {d['name']}: source_to_isocenter {d['source_to_isocenter']:.2f} "
                f"+- {u['source_to_isocenter']:.2f} mm, "
                f"source_to_detector {d['source_to_detector']:.2f} +- {u['source_to_detector']:.2f} mm, "
                f"detector offset ({d['detector_offset'][0]:.3f}, {d['detector_offset'][1]:.3f}) mm, "
                f"rotation {d['detector_rotation_deg']:.4f} +- {u['detector_rotation_deg']:.4f} deg"
            )
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"CalibrationResult(views={len(self.parameters)}, rms_px={self.rms_px:.4f}, "
                f"heldout_rms_px={self.heldout_rms_px:.4f}, triangulation_rms_mm={self.triangulation_rms_mm:.4f}, "
                f"converged={self.converged})")

    def to_dict(self) -> dict:
        """Every number as plain Python (lengths mm, angles degrees, pixels)."""
        views = []
        for i, p in enumerate(self.parameters):
            views.append({
                "parameters": p.to_dict(),
                "uncertainty": {k: _f(v) for k, v in self.uncertainty[i].items()},
                "rms_px": _f(self.rms_per_view[i]),
                "max_px": _f(self.max_px[i]),
                "residuals_px": np.asarray(self.residuals[i]).tolist(),
                "residual_ids": list(self.residual_ids[i]),
                "heldout_residuals_px": np.asarray(self.heldout_residuals[i]).tolist(),
                "heldout_ids": list(self.heldout_ids[i]),
                "n_detections": len(self.detections[i]) if self.detections else None,
                "rejected_ids": list(self.rejected_ids[i]) if self.rejected_ids else [],
                "heldout_rejected_ids": list(self.heldout_rejected_ids[i]) if self.heldout_rejected_ids else [],
                "initial_parameters": (self.initial_parameters[i].to_dict()
                                       if len(self.initial_parameters) > i else None),
            })
        return {
            "schema": "tomoprior.calibration",
            "schema_version": 1,
            "phantom": self.phantom,
            "gauge": self.gauge,
            "converged": bool(self.converged),
            "message": self.message,
            "solver_message": self.solver_message,
            "n_design": int(self.n_design),
            "outlier_limit_px": _f(self.outlier_limit_px),
            "rms_px": _f(self.rms_px),
            "heldout_rms_px": _f(self.heldout_rms_px),
            "heldout_geometric_rms_px": _f(self.heldout_geometric_rms_px),
            "triangulation_rms_mm": _f(self.triangulation_rms_mm),
            "triangulation_errors_mm": {k: _f(v) for k, v in self.triangulation_errors_mm.items()},
            "sigma_px": _f(self.sigma_px),
            "condition_number": _f(self.condition_number),
            "function_evaluations": int(self.nfev),
            "pose": {
                "rotation_vector_deg": [math.degrees(float(v)) for v in self.pose[:3]],
                "translation_mm": [float(v) for v in self.pose[3:]],
                "rotation_vector_deg_uncertainty": [_f(math.degrees(float(v))) for v in self.pose_uncertainty[:3]],
                "translation_mm_uncertainty": [_f(v) for v in self.pose_uncertainty[3:]],
            },
            "views": views,
            "geometry": self.geometry.to_dict(),
        }

    def save(self, path) -> Path:
        """Write :meth:`to_dict` atomically as JSON (``.json``) or YAML (``.yaml``/``.yml``)."""
        target = Path(path)
        data = self.to_dict()
        if target.suffix.lower() == ".json":
            text = json.dumps(data, indent=1)
        elif target.suffix.lower() in (".yaml", ".yml"):
            text = yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=120)
        else:
            raise ValueError(f"calibration results are saved as .json or .yaml, got {target.name!r}")
        write_text_atomic(target, text)
        return target

    @staticmethod
    def load_parameters(path) -> list:
        """Read the fitted ViewParameters back from a saved result file."""
        from ..geometry.parameters import read_view_parameters

        params, _, kind = read_view_parameters(path)
        if kind != "calibration result":
            raise ValueError(f"{path} is not a tomoprior calibration result (it is a {kind})")
        return params
