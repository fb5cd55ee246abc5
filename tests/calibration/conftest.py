"""Fixtures and simulation helpers for the calibration tests."""

from __future__ import annotations

import math

import numpy as np
import pytest

import tomoprior as tp
import tomoprior.calibration


def deg(x: float) -> float:
    return math.radians(x)


def true_and_initial(seed: int):
    """A 'true' bi-planar setup (small realistic deviations from nominal) and a
    miscalibrated initial guess: distances off by 10-20 mm, detector offset by 2-5 mm,
    tilts by 1-2 deg, in-plane rotation and gantry angle by 0.5-1 deg."""
    rng = np.random.default_rng(100 + seed)

    def true_view(base, primary):
        return base(
            source_to_isocenter=1000 + rng.uniform(-5, 5), source_to_detector=1500 + rng.uniform(-10, 10),
            u0=rng.uniform(-2, 2), v0=rng.uniform(-2, 2), detector_rotation=deg(rng.uniform(-0.5, 0.5)),
            detector_tilt_u=deg(rng.uniform(-1, 1)), detector_tilt_v=deg(rng.uniform(-1, 1)),
            primary_angle=deg(primary + rng.uniform(-0.5, 0.5)), secondary_angle=deg(rng.uniform(-0.5, 0.5)),
        )

    true = [true_view(tp.geometry.default_frontal, 0.0), true_view(tp.geometry.default_lateral, 90.0)]

    def sign():
        return float(rng.choice([-1.0, 1.0]))

    def miscalibrate(p):
        return p.replace(
            source_to_isocenter=p.source_to_isocenter + sign() * rng.uniform(10, 20),
            source_to_detector=p.source_to_detector + sign() * rng.uniform(10, 20),
            u0=p.u0 + sign() * rng.uniform(2, 5), v0=p.v0 + sign() * rng.uniform(2, 5),
            detector_tilt_u=p.detector_tilt_u + sign() * deg(rng.uniform(1, 2)),
            detector_tilt_v=p.detector_tilt_v + sign() * deg(rng.uniform(1, 2)),
            detector_rotation=p.detector_rotation + sign() * deg(rng.uniform(0.5, 1)),
            primary_angle=p.primary_angle + sign() * deg(rng.uniform(0.5, 1)),
        )

    return true, [miscalibrate(p) for p in true]


def noisy_points(params, positions, sigma: float, seed: int):
    rng = np.random.default_rng(seed)
    return [p.to_view().project_points(positions).numpy() + rng.normal(0.0, sigma, (len(positions), 2))
            for p in params]




@pytest.fixture(scope="session")
def cage():
    return tomoprior.calibration.bead_design("bead_cage")
