"""Studies: what is built on top of the refiner contract and calibration together.

- :mod:`.training`: the refiner-agnostic training loop (``tomoprior train``).
- :mod:`.evaluation`: metrics of refiners on a dataset split in the published conventions,
  tables and paired statistics (``tomoprior evaluate``).
- :mod:`.miscalibration`: the miscalibration study (how much a geometry error costs a
  reconstruction and how much calibrating recovers), with a real bead-cage calibration arm.
- :mod:`.study`: the resumable runner of the whole study from a plan file, with training,
  data variants and bootstrap intervals (``tomoprior study``).

This layer sits above :mod:`tomoprior.refiners` and :mod:`tomoprior.calibration` (which do not
import each other) and below the command line.
"""

from .evaluation import (
    METRICS,
    PAIRED_METRICS,
    EvaluationResult,
    compare_markdown,
    evaluate,
    fit_bone_threshold,
    fit_bp_prior,
    geometry_error_px,
    paired_comparison,
    paired_markdown,
    sample_metrics,
)
from .miscalibration import (
    CALIBRATION_RESIDUAL,
    PAPER_MISCALIBRATION,
    MiscalibrationResult,
    bead_cage_calibrator,
    miscalibration_study,
)
from .training import TrainConfig, TrainingDivergedError, export_weights, train

__all__ = [
    "CALIBRATION_RESIDUAL",
    "METRICS",
    "PAIRED_METRICS",
    "PAPER_MISCALIBRATION",
    "EvaluationResult",
    "MiscalibrationResult",
    "TrainConfig",
    "TrainingDivergedError",
    "bead_cage_calibrator",
    "compare_markdown",
    "evaluate",
    "export_weights",
    "fit_bone_threshold",
    "fit_bp_prior",
    "geometry_error_px",
    "miscalibration_study",
    "paired_comparison",
    "paired_markdown",
    "sample_metrics",
    "train",
]
