"""Calibration: bead-phantom geometry calibration.

Bead detection (-log, local background, thresholded intensity-weighted centroid), correspondence
with a phantom design from an initial geometry (gated Hungarian assignment, iterated), and a
bi-planar least-squares fit of the 9 physical parameters per view (optionally plus the phantom
pose) with covariance, held-out beads and 3D triangulation error. See ``docs/calibration.md``.
"""

from .calibrate import calibrate
from .correspondence import coarse_shift, coarse_shifts, match_points
from .design import BeadDesign, bead_design
from .detection import Detections, detect_beads, to_line_integrals
from .fit import GAUGES, FitProblem, fit_geometry
from .result import CalibrationError, CalibrationResult
from .simulate import bead_line_integrals, bead_radiographs

__all__ = [
    "GAUGES",
    "BeadDesign",
    "CalibrationError",
    "CalibrationResult",
    "Detections",
    "FitProblem",
    "bead_design",
    "bead_line_integrals",
    "bead_radiographs",
    "calibrate",
    "coarse_shift",
    "coarse_shifts",
    "detect_beads",
    "fit_geometry",
    "match_points",
    "to_line_integrals",
]
