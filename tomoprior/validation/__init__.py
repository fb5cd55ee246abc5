"""Validation: does the model match the physics? Projector-vs-analytic comparison,
reprojection error of a geometry against calibration beads, 3D triangulation, a
sensitivity table of the calibrated parameters, reports (HTML + PNG + JSON) and the main
job pipeline (simulate -> detect -> calibrate -> validate -> report)."""

from .analytic import ProjectorComparison, compare_to_analytic
from .images import Radiograph, dicom_view_parameters, read_radiograph
from .pipeline import (
    DEFAULT_MISCALIBRATION,
    TARGETS,
    MainJobConfig,
    PipelineError,
    ValidationOutcome,
    analyse,
    format_summary,
    parameter_errors,
    run_main_job,
)
from .report import Report, outcome_report, write_report
from .reprojection import (
    ReprojectionError,
    TriangulationError,
    match_to_design,
    reprojection_error,
    rigid_align,
    triangulate,
    triangulation_error,
)
from .sensitivity import FitConditioning, SensitivityRow, fit_conditioning, head_points, sensitivity_table

__all__ = [
    "DEFAULT_MISCALIBRATION",
    "TARGETS",
    "FitConditioning",
    "MainJobConfig",
    "PipelineError",
    "ProjectorComparison",
    "Radiograph",
    "Report",
    "ReprojectionError",
    "SensitivityRow",
    "TriangulationError",
    "ValidationOutcome",
    "analyse",
    "compare_to_analytic",
    "dicom_view_parameters",
    "fit_conditioning",
    "format_summary",
    "head_points",
    "match_to_design",
    "outcome_report",
    "parameter_errors",
    "read_radiograph",
    "reprojection_error",
    "rigid_align",
    "run_main_job",
    "sensitivity_table",
    "triangulate",
    "triangulation_error",
    "write_report",
]
