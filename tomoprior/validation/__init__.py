"""Validation: does the model match the physics? Projector-vs-analytic comparison here;
reprojection error against calibration beads and reports build on it."""

from .analytic import ProjectorComparison, compare_to_analytic

__all__ = ["ProjectorComparison", "compare_to_analytic"]
