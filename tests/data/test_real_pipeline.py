"""The real pipeline end to end on the shipped headsq CT (examples/real_ct_pipeline.py): realistic
X-rays of a real head on a miscalibrated system, bead calibration of that system, and
reconstruction with bp-prior and the demo PSCT-Net on the true, calibrated and nominal
geometries. About 30 s of CPU."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "real_ct_pipeline.py"


@pytest.fixture(scope="module")
def pipeline():
    spec = importlib.util.spec_from_file_location("real_ct_pipeline", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def report(pipeline):
    return pipeline.run("headsq", bead_pitch_mm=0.8, bead_shape=(384, 384), in_distribution=False,
                        surface_method="voxel")


def test_bead_calibration_recovers_the_system_the_head_was_imaged_on(report):
    for view, err in report["calibration"]["errors"].items():
        nominal = report["calibration"]["nominal_errors"][view]
        assert abs(err["u0_mm"]) < 0.05 and abs(err["v0_mm"]) < 0.05, (view, err)
        assert abs(err["source_to_detector_mm"]) < 4.0 < abs(nominal["source_to_detector_mm"]), (view, err)
        assert abs(err["detector_tilt_u_deg"]) < 0.1 < abs(nominal["detector_tilt_u_deg"]), (view, err)
    rep = report["reprojection_error_px"]
    assert rep["true"] == 0.0
    assert rep["bead-calibrated"] < 0.05 < 1.0 < rep["nominal"]


def test_reconstructions_follow_the_geometry_and_are_scored(report):
    rec = report["reconstructions"]
    assert set(rec) == {f"{r} / {g} geometry" for r in ("bp-prior", "psctnet") for g in ("true", "bead-calibrated",
                                                                                         "nominal")}
    for name, m in rec.items():
        assert all(math.isfinite(v) for v in m.values()), (name, m)
    for refiner in ("bp-prior", "psctnet"):
        calibrated = rec[f"{refiner} / bead-calibrated geometry"]["vs_true_geometry_rel_l2"]
        nominal = rec[f"{refiner} / nominal geometry"]["vs_true_geometry_rel_l2"]
        # the calibrated geometry's output is close to the true geometry's; the nominal one's is not
        assert calibrated < 0.2 * nominal and nominal > 0.02, (refiner, calibrated, nominal)
    # the prior made with the true geometry re-projects onto the (realistic) X-rays better than
    # the one made with the nominal geometry
    assert rec["bp-prior / true geometry"]["proj_rel_l2"] < rec["bp-prior / nominal geometry"]["proj_rel_l2"]
    volumes = report["_volumes"]
    assert volumes["CT (resampled)"].shape == (64, 64, 64)
    assert volumes["CT (resampled)"].max() > 0.04  # bone at 60 keV survived the resampling
