"""QA tolerances, the verdict items, baselines and the statistics under occlusion with strays."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

import tomoprior as tp
from tomoprior.calibration import bead_design, calibrate
from tomoprior.validation import qa

from ..calibration.conftest import noisy_points, true_and_initial


@pytest.fixture(scope="module")
def cage():
    return bead_design("bead_cage")


@pytest.fixture(scope="module")
def run(cage):
    true, init = true_and_initial(3)
    res = calibrate(noisy_points(true, cage.positions, 0.05, 3), "bead_cage", init, heldout=0.2, seed=3)
    return true, init, res


# -- tolerance files ---------------------------------------------------------------------------

def test_defaults_are_the_targets():
    t = qa.Tolerances.default()
    assert str(t.scalar("heldout_rms")) == "0.1 px" and str(t.scalar("triangulation_rms")) == "0.2 mm"
    assert t.param("uncertainty", "source_to_detector").to("mm") == 1.0
    assert t.param("error_vs_truth", "u0").to("px") == 0.2
    d = t.to_dict()
    assert d["heldout_rms"] == "0.1 px" and d["drift"]["z"] == 3.0
    assert qa.Tolerances.from_dict(d).to_dict() == d  # the written form reads back


def test_units_convert_and_null_switches_a_check_off():
    t = qa.Tolerances.from_dict({"triangulation_rms": "0.03 cm", "heldout_rms": None,
                                 "uncertainty": {"detector_rotation": "0.5 mrad", "u0": "10 um"},
                                 "beads_matched": "75 %", "drift": {"z": 2}})
    assert t.scalar("triangulation_rms").to("mm") == pytest.approx(0.3)
    assert t.scalar("heldout_rms") is None
    assert t.param("uncertainty", "detector_rotation").to("deg") == pytest.approx(math.degrees(0.5e-3))
    assert t.param("uncertainty", "u0").to("mm") == pytest.approx(0.01)
    assert t.scalar("beads_matched").to("%") == 75 and t.drift_z == 2
    assert t.param("uncertainty", "source_to_detector").to("mm") == 1.0  # untouched keys keep defaults


@pytest.mark.parametrize("doc, message", [
    ({"heldout_rmss": "0.1 px"}, r"unknown key\(s\) \['heldout_rmss'\]"),
    ({"heldout_rms": "0.1 mm"}, r"heldout_rms: '0.1 mm' is a length .* pixels \(px\)"),
    ({"heldout_rms": 0.1}, r"heldout_rms: 0.1 has no unit; .* '0.1 px'"),
    ({"triangulation_rms": "0.2 furlong"}, r"unknown unit 'furlong'"),
    ({"triangulation_rms": "-1 mm"}, r"finite number >= 0"),
    ({"uncertainty": {"source_to_detector": "1 deg"}}, r"uncertainty.source_to_detector: '1 deg' is an angle"),
    ({"uncertainty": {"sdd": "1 mm"}}, r"uncertainty has unknown parameter\(s\) \['sdd'\]"),
    ({"drift": {"z": "three"}}, r"drift.z"),
    ({"schema": "tomoprior.geometry"}, r"a tolerance file says 'tomoprior.qa-tolerances'"),
    ({"schema_version": True}, r"schema_version 'True' is not supported"),
    (["heldout_rms"], r"must hold a mapping"),
])
def test_bad_tolerance_files_name_the_key(doc, message):
    with pytest.raises(ValueError, match=message):
        qa.Tolerances.from_dict(doc, where="qa.yaml")


def test_tolerance_file_on_disk(tmp_path):
    p = tmp_path / "qa.yaml"
    p.write_text("schema: tomoprior.qa-tolerances\nschema_version: 1\nheldout_rms: 0.15 px\n")
    t = qa.Tolerances.load(p)
    assert t.scalar("heldout_rms").value == 0.15 and t.source == str(p)
    with pytest.raises(ValueError, match="does not exist"):
        qa.Tolerances.load(tmp_path / "missing.yaml")
    (tmp_path / "bin.yaml").write_bytes(b"\x00\x01\x02binary")
    with pytest.raises(ValueError, match=r"bin\.yaml"):
        qa.Tolerances.load(tmp_path / "bin.yaml")


# -- verdict ------------------------------------------------------------------------------------

def test_verdict_items_are_plain_records(run):
    true, _, res = run
    v = qa.evaluate(res, truth=true)
    assert v.passed, v.reasons
    d = v.to_dict()
    assert d["verdict"] == "PASS" and d["pass"] is True and d["views"] == {"frontal": "PASS", "lateral": "PASS"}
    keys = {"name", "view", "value", "unit", "limit", "comparison", "pass", "reason", "group"}
    for item in d["items"]:
        assert keys <= set(item), item
        # no units or targets inside names
        assert not any(u in item["name"] for u in ("_px", "_mm", "_deg", "target", "limit"))
    names = {(i["name"], i["view"]) for i in d["items"]}
    assert ("heldout_rms", None) in names and ("heldout_rms", "frontal") in names
    assert ("beads_matched", "lateral") in names and ("triangulation_rms", None) in names
    assert ("error_vs_truth.source_to_detector", "frontal") in names
    json.dumps(d, allow_nan=False)


def test_each_limit_can_fail_and_says_why(run):
    _, _, res = run
    tight = qa.Tolerances.from_dict({"heldout_rms": "0.001 px", "uncertainty": {"source_to_detector": "0.01 mm"},
                                     "change_from_start": {"u0": "0.1 mm"}})
    v = qa.evaluate(res, tolerances=tight)
    assert not v.passed and v.label == "FAIL"
    failed = {(i.name, i.view) for i in v.failed}
    assert ("heldout_rms", None) in failed and ("uncertainty.source_to_detector", "frontal") in failed
    u0 = next(i for i in v.items if i.name == "change_from_start.u0" and i.view == "frontal")
    # a detector-offset limit given in mm is checked (and reported) in pixels of that view
    assert u0.unit == "px" and u0.limit == pytest.approx(0.1 / 0.2) and not u0.passed
    assert "moved from the starting geometry" in u0.reason
    assert any("held-out reprojection RMS" in r and "exceeds the limit 0.001 px" in r for r in v.reasons)


def test_too_few_matched_beads_fail_with_where(cage):
    true, init = true_and_initial(1)
    pts = noisy_points(true, cage.positions, 0.05, 1)
    keep = np.arange(len(cage)) < 22  # 22 of 50 beads seen in the frontal view
    res = calibrate([pts[0][keep], pts[1]], "bead_cage", init, heldout=0.2, seed=1)
    v = qa.evaluate(res)
    item = next(i for i in v.items if i.name == "beads_matched" and i.view == "frontal")
    assert not item.passed and item.value == pytest.approx(44.0) and item.extra["matched"] == 22
    assert "22 of 50 design beads matched" in item.reason and "bead_22" in item.reason
    assert "expected within columns" in item.reason
    assert next(i for i in v.items if i.name == "beads_matched" and i.view == "lateral").passed


# -- statistics that stay true -----------------------------------------------------------------

def _truth_error(res, true, cage):
    e = [p.to_view().project_points(cage.positions).numpy() - q.to_view().project_points(cage.positions).numpy()
         for p, q in zip(res.parameters, true)]
    return float(np.sqrt(np.mean(np.sum(np.concatenate(e) ** 2, axis=1))))


@pytest.mark.parametrize("n_missing", [4, 8, 12])
def test_occluded_beads_with_strays_next_to_them(cage, n_missing):
    """Strays 2-6 px from occluded beads were matched before (held-out RMS 1.8-2.1 px, true 0.03)."""
    true, init = true_and_initial(n_missing)
    pts = noisy_points(true, cage.positions, 0.05, n_missing)
    rng = np.random.default_rng(50 + n_missing)
    inputs, present = [], []
    for v in range(2):
        miss = rng.choice(len(cage), size=n_missing, replace=False)
        keep = np.setdiff1d(np.arange(len(cage)), miss)
        exact = true[v].to_view().project_points(cage.positions[miss]).numpy()
        ang, rad = rng.uniform(0, 2 * np.pi, n_missing), rng.uniform(2.0, 6.0, n_missing)
        strays = exact + np.c_[np.cos(ang) * rad, np.sin(ang) * rad]
        allp = np.concatenate([pts[v][keep], strays])
        inputs.append(allp[rng.permutation(len(allp))])
        present.append({cage.ids[k] for k in keep})
    res = calibrate(inputs, "bead_cage", init, heldout=0.2, seed=n_missing)
    for v in range(2):
        assert set(res.residual_ids[v]) | set(res.heldout_ids[v]) == present[v]  # no stray matched
        # the report's inlier set is the statistics' set
        assert {cage.ids[k] for k in res.matches[v][0]} == present[v]
    truth = _truth_error(res, true, cage)
    assert truth < 0.05
    # held-out RMS = geometric error + sqrt(2) x noise: about 0.07 px here, far from the strays' 2-6 px
    assert res.heldout_rms_px < 0.12 and res.triangulation_rms_mm < 0.05
    assert qa.evaluate(res).passed


def test_heldout_mismatch_is_rejected_with_the_fit_limit(cage):
    """A held-out bead's blob replaced by a blob 1.2 px away (inside the matching floor) is
    matched, then rejected by the fit's own outlier limit, and counted."""
    true, init = true_and_initial(2)
    pts = noisy_points(true, cage.positions, 0.02, 2)
    res0 = calibrate(pts, "bead_cage", init, heldout=0.2, seed=2)
    bead = res0.heldout_ids[0][0]
    k = cage.ids.index(bead)
    moved = [p.copy() for p in pts]
    moved[0][k] += [1.2, 0.0]
    res = calibrate(moved, "bead_cage", init, heldout=0.2, seed=2)
    assert res.outlier_limit_px == pytest.approx(1.0)
    assert bead in res.heldout_rejected_ids[0] and bead not in res.heldout_ids[0]
    assert bead not in res.triangulation_errors_mm
    assert res.heldout_rms_px < 0.1
    item = next(i for i in qa.evaluate(res).items if i.name == "heldout_rejected" and i.view == "frontal")
    assert item.value == pytest.approx(100 / 10) and item.passed  # 1 of 10: at the default 10 % limit


# -- baselines ----------------------------------------------------------------------------------

def test_baseline_deltas_and_drift(run, tmp_path):
    _, _, res = run
    res.save(tmp_path / "cal.json")
    base = qa.load_baseline(tmp_path / "cal.json")
    rows = qa.baseline_deltas(res, base)
    assert len(rows) == 18 and all(abs(r["delta"]) < 1e-9 for r in rows)
    sdd = next(r for r in rows if r["parameter"] == "source_to_detector" and r["view"] == "frontal")
    assert sdd["sigma_current"] == pytest.approx(res.uncertainty[0]["source_to_detector"])
    assert qa.evaluate(res, baseline=base).passed
    # a baseline 5 mm away in source-to-detector: significant and beyond the 2 mm drift limit
    shifted = [res.parameters[0].replace(source_to_detector=res.parameters[0].source_to_detector - 5.0),
               res.parameters[1]]
    geom = tp.BiplanarGeometry(tp.geometry.DEFAULT_GRID, shifted)
    geom.save(tmp_path / "old.yaml")
    old = qa.load_baseline(tmp_path / "old.yaml")
    v = qa.evaluate(res, baseline=old)
    item = next(i for i in v.items if i.name == "drift.source_to_detector" and i.view == "frontal")
    assert not item.passed and item.extra["signed"] == pytest.approx(5.0) and item.extra["z"] > 3
    assert "drifted by +5" in item.reason
    # a geometry baseline has no uncertainty: z uses the current one alone
    z = item.extra["z"]
    assert z == pytest.approx(5.0 / res.uncertainty[0]["source_to_detector"], rel=1e-6)
    with pytest.raises(ValueError, match="does not exist"):
        qa.load_baseline(tmp_path / "nope.json")
    (tmp_path / "x.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="mapping"):
        qa.load_baseline(tmp_path / "x.json")


# -- starting geometry files and units ------------------------------------------------------------

def test_parameters_only_file_and_calibration_results_load(run, tmp_path):
    _, _, res = run
    p = tmp_path / "start.yaml"
    p.write_text("schema: tomoprior.view-parameters\nschema_version: 1\nviews:\n"
                 "  - {name: frontal, primary_angle_deg: 0, source_to_isocenter: 990, source_to_detector: 1490,"
                 " pixel_pitch: 0.4, detector_shape: [768, 768]}\n"
                 "  - {name: lateral, primary_angle_deg: 90, pixel_pitch: 0.4, detector_shape: [768, 768]}\n")
    params, grid, kind = tp.geometry.read_view_parameters(p)
    assert kind == "view-parameters file" and grid is None
    assert params[0].source_to_detector == 1490 and math.degrees(params[1].primary_angle) == pytest.approx(90)
    res.save(tmp_path / "cal.yaml")
    params, grid, kind = tp.geometry.read_view_parameters(tmp_path / "cal.yaml")
    assert kind == "calibration result" and grid is not None
    assert params[0].source_to_detector == pytest.approx(float(res.parameters[0].source_to_detector))
    # Geometry.load reads every file tomoprior writes with a geometry in it
    g = tp.Geometry.load(tmp_path / "cal.yaml")
    assert isinstance(g, tp.BiplanarGeometry) and g.parameters[0].name == res.parameters[0].name
    g = tp.Geometry.load(p)
    assert isinstance(g, tp.BiplanarGeometry) and g.parameters[0].source_to_detector == 1490
    report = {"verdict": {"pass": False, "reasons": ["frontal and lateral appear swapped"]},
              "calibration_result": res.to_dict()}
    (tmp_path / "report.json").write_text(json.dumps(report))
    with pytest.raises(ValueError, match=r"calibration FAILED .*frontal and lateral appear swapped"):
        tp.Geometry.load(tmp_path / "report.json")
    report["verdict"] = {"pass": True}
    (tmp_path / "report.json").write_text(json.dumps(report))
    assert tp.Geometry.load(tmp_path / "report.json").num_views == 2
    p.write_text("schema: tomoprior.view-parameters\nviews:\n  - {name: f, source_to_detektor: 1500}\n")
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['source_to_detektor'\]"):
        tp.geometry.read_view_parameters(p)


def test_angles_that_look_like_degrees_warn():
    p = tp.ViewParameters()
    with pytest.warns(tp.geometry.UnitsWarning, match=r"detector_rotation = 0.3 rad is 17.2 deg.*math.radians\(0.3\)"):
        p.replace(detector_rotation=0.3)
    with pytest.warns(tp.geometry.UnitsWarning, match=r"primary_angle = 90 rad"):
        tp.ViewParameters(primary_angle=90)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q = p.replace(detector_rotation_deg=0.3, primary_angle_deg=90)  # degree names: no warning
        p.replace(detector_rotation=math.pi / 2)  # a quarter-turned detector is legitimate
        p.replace(detector_tilt_u=0.02)
    assert math.degrees(q.detector_rotation) == pytest.approx(0.3)
    assert tp.ViewParameters.from_degrees(detector_tilt_v_deg=1.0).detector_tilt_v == pytest.approx(math.radians(1))
    with pytest.raises(ValueError, match="not both"):
        p.replace(detector_rotation=0.1, detector_rotation_deg=0.1)
    # a copy warns about what it is given, not again about the suspect angle it keeps
    with pytest.warns(tp.geometry.UnitsWarning):
        odd = p.replace(detector_rotation=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        odd.replace(source_to_detector=1490.0).perturbed(u0=1.0)
    with pytest.warns(tp.geometry.UnitsWarning, match="primary_angle = 90 rad"):
        odd.replace(primary_angle=90)


def test_detector_offset_is_named_apart_from_the_principal_point():
    p = tp.ViewParameters(u0=2.0, v0=-1.0, detector_tilt_u=math.radians(1.0))
    d = p.to_dict()
    assert d["detector_offset"] == [2.0, -1.0] and "principal_point" not in d
    # files written before the rename still load; both names at once are refused
    old = {k: v for k, v in d.items() if k != "detector_offset"} | {"principal_point": [2.0, -1.0]}
    assert tp.ViewParameters.from_dict(old).u0 == 2.0
    with pytest.raises(ValueError, match="both detector_offset and principal_point"):
        tp.ViewParameters.from_dict(d | {"principal_point": [0.0, 0.0]})
    # the principal point of the tilted detector is elsewhere (about 1500 tan 1 deg = 26 mm)
    view = p.to_view()
    rows, cols = view.shape
    pp = view.principal_point.detach().numpy()
    offset_mm = np.hypot(pp[0] - (cols - 1) / 2, pp[1] - (rows - 1) / 2) * 0.2
    assert 20 < offset_mm < 32
