"""The simulate -> detect -> calibrate -> validate pipeline and its analysis of a result."""

import math
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

import tomoprior as tp
from tomoprior.calibration import bead_design
from tomoprior.validation import pipeline as pl
from tomoprior.validation.pipeline import (
    DEFAULT_MISCALIBRATION,
    MainJobConfig,
    PipelineError,
    analyse,
    apply_miscalibration,
    format_summary,
    main_job_geometries,
    parameter_errors,
)


@dataclass
class FakeResult:
    """Just the attributes ``analyse`` reads from a CalibrationResult."""

    geometry: object
    parameters: list
    uncertainty: list
    heldout_ids: list = field(default_factory=list)
    rms_px: float = 0.1
    heldout_rms_px: float = 0.1
    converged: bool = True
    message: str = "fake"

    def to_dict(self):
        return {"rms_px": self.rms_px}


def test_apply_miscalibration_and_geometries():
    cfg = MainJobConfig(binning=8)
    nominal, true = main_job_geometries(cfg)
    for n, t in zip(nominal.parameters, true.parameters):
        d = DEFAULT_MISCALIBRATION[n.name]
        assert t.source_to_detector - n.source_to_detector == pytest.approx(d["source_to_detector"])
        assert t.u0 - n.u0 == pytest.approx(d["u0"])
        assert math.degrees(t.detector_tilt_u - n.detector_tilt_u) == pytest.approx(d["detector_tilt_u_deg"])
        assert t.detector_shape == (192, 192)
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['sdd'\]"):
        apply_miscalibration(nominal.parameters[0], {"sdd": 1.0})
    with pytest.raises(ValueError, match="unknown view"):
        main_job_geometries(MainJobConfig(miscalibration={"oblique": {}}))


def test_parameter_errors_units_and_targets():
    t = tp.ViewParameters(name="pa", pixel_pitch=0.4, detector_shape=(768, 768))
    e = t.replace(source_to_detector=t.source_to_detector + 0.5, u0=0.2, detector_rotation=math.radians(0.02))
    rows = {r["parameter"]: r for r in parameter_errors([e], [t], [t], [{"u0": 0.05, "source_to_detector": 0.25}])}
    assert rows["source_to_detector"]["error"] == pytest.approx(0.5) and rows["source_to_detector"]["meets_target"]
    assert rows["source_to_detector"]["error_over_sd"] == pytest.approx(2.0)
    assert rows["u0"]["unit"] == "px" and rows["u0"]["error"] == pytest.approx(0.5)  # 0.2 mm / 0.4 mm
    assert rows["u0"]["meets_target"] is False  # target 0.2 px
    rot = rows["detector_rotation"]
    assert rot["error"] == pytest.approx(0.02) and rot["meets_target"] is False
    assert rows["primary_angle"]["target"] is None and rows["primary_angle"]["meets_target"] is None


def test_result_uncertainty_reads_the_calibration_keys():
    p = tp.ViewParameters(name="pa", pixel_pitch=0.4)
    unc = {"source_to_detector": 0.5, "u0": 0.04, "u0_px": 0.1, "v0": 0.08, "detector_rotation_deg": 0.003,
           "primary_angle_deg": 0.01}
    (d,) = pl._result_uncertainty(type("R", (), {"uncertainty": [unc]})(), [p])
    assert d["source_to_detector"] == 0.5 and d["u0"] == pytest.approx(0.1) and d["v0"] == pytest.approx(0.2)
    assert d["detector_rotation"] == 0.003 and d["primary_angle"] == 0.01


@pytest.fixture(scope="module")
def synthetic():
    """True geometry, detections = exact projections + 0.1 px noise, a calibrated geometry slightly off."""
    nominal, true = main_job_geometries(MainJobConfig(binning=4))
    design = bead_design("bead_cage")
    rng = np.random.default_rng(5)
    exact = true.project_points(design.positions).numpy()
    dets = [e + rng.normal(0, 0.1, e.shape) for e in exact]
    dets[1] = np.concatenate([dets[1][3:], [[5.0, 5.0]]])  # lateral: 3 beads missed, one spurious blob
    return nominal, true, design, dets


def test_analyse_against_truth(synthetic):
    nominal, true, design, dets = synthetic
    off = true.parameters[0].replace(source_to_detector=true.parameters[0].source_to_detector + 2.0)
    cal = tp.BiplanarGeometry(true.grid, [off, true.parameters[1]])
    held = [design.ids[:10], design.ids[:10]]
    res = FakeResult(cal, list(cal.parameters), [{"source_to_detector": 1.0}, {}], held)
    images = [np.ones((384, 384)), np.ones((384, 384))]
    out = analyse(images, dets, res, design.positions, ["frontal", "lateral"], initial=nominal,
                  true_parameters=list(true.parameters), true_geometry=true, design_ids=design.ids)
    lat = out.reprojection.views[1]
    assert lat.n_detected == 47 and np.isnan(out.matched[1][:3]).all()
    # with the true geometry the residuals are the added noise: RMS ~ 0.1 * sqrt(2)
    assert out.reprojection_true.views[1].rms_px == pytest.approx(0.1 * math.sqrt(2), rel=0.25)
    assert out.reprojection_nominal.rms_px > 1.0  # the nominal geometry is visibly off
    assert lat.n_heldout == 7 and out.heldout_masks[0][:10].all() and not out.heldout_masks[0][10:].any()
    rows = {(r["view"], r["parameter"]): r for r in out.parameter_table}
    assert rows[("frontal", "source_to_detector")]["error"] == pytest.approx(2.0)
    assert rows[("frontal", "source_to_detector")]["error_over_sd"] == pytest.approx(2.0)
    assert rows[("frontal", "source_to_detector")]["meets_target"] is False
    assert rows[("lateral", "u0")]["error"] == pytest.approx(0.0, abs=1e-9)
    assert rows[("frontal", "source_to_detector")]["nominal_error"] == pytest.approx(-12.0)
    # 3D: the 2 mm source-to-detector error is visible in triangulation (phantom frame)
    assert out.triangulation.n == 47 and out.triangulation.rms_mm > 0.05
    text = format_summary(out)
    assert "frontal" in text and "source_to_detector (mm)" in text and "NO" in text
    assert "view 'lateral': 47 of 50 design beads matched" in text


def test_analyse_reports_non_convergence(synthetic):
    _, true, design, dets = synthetic
    res = FakeResult(true, list(true.parameters), [{}, {}], converged=False, message="max iterations")
    out = analyse([np.ones((384, 384))] * 2, dets, res, design.positions, ["frontal", "lateral"])
    assert not out.converged and "did NOT converge (max iterations)" in out.notes[0]
    assert "DID NOT CONVERGE" in format_summary(out)
    with pytest.raises(PipelineError, match="no Geometry"):
        analyse([], dets, FakeResult(None, [], []), design.positions, ["a", "b"])


def test_detect_too_few_beads_says_how_many_and_where():
    img = np.full((64, 64), 1000.0)
    img[30:33, 40:43] = 200.0  # one dark blob (a bead shadow in raw counts)
    rng = np.random.default_rng(0)
    img = rng.poisson(img).astype(float)
    with pytest.raises(PipelineError, match=r"view 'frontal': found 1 bead\(s\) \(at \(col, row\) \[\[41"):
        pl.detect([img], ["frontal"], np.zeros((50, 3)))


def test_add_checks_fills_sensitivity_conditioning_and_projector_map(synthetic):
    _, true, design, dets = synthetic
    res = FakeResult(true, list(true.parameters), [{}, {}])
    out = analyse([np.ones((384, 384))] * 2, dets, res, design.positions, ["frontal", "lateral"])
    pl.add_checks(out, max_pixels=64, grid_size=32)
    assert {r["parameter"] for r in out.sensitivity} >= {"u0", "source_to_detector", "detector_tilt_u"}
    assert len(out.conditioning) == 2 and out.conditioning[0]["condition_number"] > 1
    cmp = out.projector_map["comparison"]
    assert cmp["median_relative_error"] < 0.1 and len(out.projector_map["analytic"]) == 2
    assert out.projector_map["analytic"][0].shape == (64, 64)


def test_simulation_chain_equals_physics_radiograph():
    # simulate_radiographs feeds fast exact bead line integrals into the physics chain; it must
    # give the image tomoprior.physics.radiograph gives for the same phantom and settings
    from tomoprior import physics
    from tomoprior.phantoms import Cylinder, Phantom, Sphere

    ph = Phantom([Cylinder((0, 0, 0), 40.0, 80.0, 0.002, axis=(0, 0, 1)),
                  Sphere((5.0, 3.0, -4.0), 2.0, 0.9, label="bead_0"), Sphere((-20.0, 10.0, 15.0), 2.0, 0.9,
                                                                              label="bead_1")])
    geom = tp.BiplanarGeometry.from_parameters(binning=32)
    # physics.radiograph samples at pixel centres: compare with the centre-sampled chain (the
    # main job's pixel-area integration is tested in tests/calibration/test_calib_pixel_integration.py)
    cfg = MainJobConfig(photons=500.0, seed=3, focal_spot_mm=0.6, detector_blur_px=0.7, pixel_subsamples=1)
    counts, heel = pl.simulate_radiographs(ph, geom, cfg)
    settings = physics.RadiographSettings(photons_per_pixel=500.0, kvp=cfg.kvp, heel=torch.as_tensor(heel),
                                          focal_spot_mm=0.6, detector_blur_px=0.7, noise=True)
    ref = physics.radiograph(ph, geom, settings, seed=3).numpy()
    assert counts.shape == ref.shape == (2, 48, 48)
    assert np.mean(counts == ref) > 0.999
    expected_heel = physics.heel_effect(geom, cfg.anode_angle_deg, kvp=cfg.kvp).numpy()
    assert np.allclose(heel, expected_heel)


def test_a_binning_too_coarse_for_the_beads_is_refused_before_any_work():
    from tomoprior.validation.pipeline import check_beads_resolved, run_main_job

    design = bead_design(tp.phantoms.load("bead_cage"))  # 1.5 mm beads, magnification 1.5
    for binning in (1, 2, 6):  # 2.25 mm images over 0.2 .. 1.2 mm pixels: 11 .. 1.9 pixels
        check_beads_resolved(design, main_job_geometries(MainJobConfig(binning=binning))[0], binning)
    with pytest.raises(ValueError, match=r"1\.41 pixels.*use --binning 6 or finer"):
        run_main_job(MainJobConfig(binning=8))  # would otherwise find no bead and fail in detection
