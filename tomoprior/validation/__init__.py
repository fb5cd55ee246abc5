"""Validation: does the model match the physics? Projector-vs-analytic comparison,
reprojection error of a geometry against calibration beads, 3D triangulation, a
sensitivity table of the calibrated parameters, the epipolar consistency of X-rays with their
geometry, the calibration QA verdict (tolerances,
baselines, trends), reports (HTML + PDF + PNG + JSON) and the main job pipeline
(simulate -> detect -> calibrate -> judge -> report)."""

from . import qa
from .analytic import ProjectorComparison, compare_to_analytic
from .epipolar import EpipolarConsistency, EpipolarPair, SelfCalibrationResult, epipolar_consistency, self_calibrate
from .images import Radiograph, dicom_view_parameters, read_radiograph
from .pipeline import (
    DEFAULT_MISCALIBRATION,
    TARGETS,
    MainJobConfig,
    PipelineError,
    ValidationOutcome,
    analyse,
    check_distinct_views,
    format_summary,
    judge,
    parameter_errors,
    run_main_job,
)
from .qa import Tolerances, Verdict, VerdictItem, load_baseline
from .report import Report, outcome_report, write_report
from .reprojection import (
    ReprojectionError,
    TriangulationError,
    match_to_design,
    reprojection_error,
    rigid_align,
    triangulation_error,
)
from .sensitivity import FitConditioning, SensitivityRow, fit_conditioning, head_points, sensitivity_table
from .trend import collect_reports, trend_report

__all__ = [
    "DEFAULT_MISCALIBRATION",
    "TARGETS",
    "EpipolarConsistency",
    "EpipolarPair",
    "FitConditioning",
    "MainJobConfig",
    "PipelineError",
    "ProjectorComparison",
    "Radiograph",
    "Report",
    "ReprojectionError",
    "SelfCalibrationResult",
    "SensitivityRow",
    "Tolerances",
    "TriangulationError",
    "ValidationOutcome",
    "Verdict",
    "VerdictItem",
    "analyse",
    "check_distinct_views",
    "collect_reports",
    "compare_to_analytic",
    "dicom_view_parameters",
    "epipolar_consistency",
    "fit_conditioning",
    "format_summary",
    "head_points",
    "judge",
    "load_baseline",
    "match_to_design",
    "outcome_report",
    "parameter_errors",
    "qa",
    "read_radiograph",
    "reprojection_error",
    "rigid_align",
    "run_main_job",
    "self_calibrate",
    "sensitivity_table",
    "trend_report",
    "triangulation_error",
    "write_report",
]
