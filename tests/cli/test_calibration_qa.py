"""``tomoprior calibrate`` as a QA tool: the exit code means the verdict, failed calibrations are
never written under the accepted name, and bad input (or a bad output folder) writes nothing."""

from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

import tomoprior as tp
from tomoprior.calibration import bead_design
from tomoprior.cli.calibrate import calibrate
from tomoprior.validation import pipeline as pl

from .conftest import write_dicom

#: Limits for 0.8 mm pixels (binning 4): the built-in targets are for 0.4 mm.
COARSE = """
uncertainty: {source_to_isocenter: 3 mm, source_to_detector: 4 mm, detector_tilt_u: 0.2 deg, detector_tilt_v: 0.2 deg}
"""


def _run(*args):
    return CliRunner().invoke(calibrate, [*map(str, args), "--quiet", "--no-pdf"])


@pytest.fixture(scope="module")
def qa_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("qa") / "coarse.yaml"
    p.write_text(COARSE)
    return p


@pytest.fixture(scope="module")
def first_pass(bead_images, qa_file, tmp_path_factory):
    """One passing calibration (reused as a baseline and as the folder a later FAIL lands in)."""
    dcm, npy = bead_images[1:3]
    out = tmp_path_factory.mktemp("pass") / "cal"
    r = _run("--images", dcm, npy, "--phantom", "bead_cage", "--out", out, "--tolerances", qa_file)
    assert r.exit_code == 0, r.output
    return out


def test_swapped_views_fail_with_the_diagnosis(bead_images, qa_file, first_pass, tmp_path):
    # images without geometry tags take the starting geometry by position: frontal first
    npy, counts = bead_images[2], bead_images[5]
    np.save(tmp_path / "frontal.npy", counts[0])
    out = first_pass.parent / "swapped"
    r = _run("--images", npy, tmp_path / "frontal.npy", "--phantom", "bead_cage", "--out", out, "--tolerances",
             qa_file)
    assert r.exit_code == 1, r.output
    assert "frontal and lateral appear swapped" in r.output and "QA verdict: FAIL" in r.output
    data = json.loads((out / "report.json").read_text())
    v = data["verdict"]
    assert v["verdict"] == "FAIL" and v["pass"] is False
    order = next(i for i in v["items"] if i["name"] == "view_order")
    assert order["pass"] is False and "appear swapped" in order["reason"]
    assert order["beads_matched_swapped"] > order["beads_matched_given"]
    assert not (out / "geometry.yaml").exists() and (out / "geometry.FAILED.yaml").exists()
    assert "QA FAIL" in (out / "report.html").read_text()


def test_a_fail_in_a_folder_that_held_a_pass_removes_the_accepted_geometry(bead_images, qa_file, first_pass):
    dcm, npy = bead_images[1:3]
    assert (first_pass / "geometry.yaml").exists()
    strict = first_pass.parent / "strict.yaml"
    strict.write_text("heldout_rms: 0.001 px\n")
    r = _run("--images", dcm, npy, "--phantom", "bead_cage", "--out", first_pass, "--tolerances", strict)
    assert r.exit_code == 1 and "held-out reprojection RMS" in r.output and "exceeds the limit 0.001 px" in r.output
    assert not (first_pass / "geometry.yaml").exists() and (first_pass / "geometry.FAILED.yaml").exists()
    # and back: a PASS removes the failed geometry
    r = _run("--images", dcm, npy, "--phantom", "bead_cage", "--out", first_pass, "--tolerances", qa_file)
    assert r.exit_code == 0, r.output
    assert (first_pass / "geometry.yaml").exists() and not (first_pass / "geometry.FAILED.yaml").exists()


def test_baseline_drift(bead_images, qa_file, first_pass, tmp_path):
    dcm, npy = bead_images[1:3]
    # the same images against their own earlier report: no drift
    r = _run("--images", dcm, npy, "--phantom", "bead_cage", "--out", tmp_path / "again", "--tolerances", qa_file,
             "--baseline", first_pass / "report.json")
    assert r.exit_code == 0, r.output
    data = json.loads((tmp_path / "again" / "report.json").read_text())
    drift = [i for i in data["verdict"]["items"] if i["name"].startswith("drift.")]
    assert len(drift) == 18 and all(i["pass"] and abs(i["signed"]) < 1e-6 for i in drift)
    assert data["baseline"]["source"].endswith("report.json") and len(data["baseline"]["deltas"]) == 18
    # a baseline whose frontal source-to-detector was 8 mm shorter: FAIL on drift
    geom = tp.Geometry.load(first_pass / "geometry.yaml")
    p0 = geom.parameters[0]
    old = tp.BiplanarGeometry(geom.grid, [p0.replace(source_to_detector=p0.source_to_detector - 8.0),
                                          geom.parameters[1]])
    old.save(tmp_path / "old.yaml")
    r = _run("--images", dcm, npy, "--phantom", "bead_cage", "--out", tmp_path / "drift", "--tolerances", qa_file,
             "--baseline", tmp_path / "old.yaml")
    assert r.exit_code == 1 and "source_to_detector drifted by +8" in r.output


def test_dicom_view_without_angles_is_refused_then_accepted_with_flags(bead_images, qa_file, tmp_path):
    dcm, counts = bead_images[1], bead_images[5]
    lat = tmp_path / "lateral_noangles.dcm"
    write_dicom(lat, counts[1], angles=False)
    r = _run("--images", dcm, lat, "--phantom", "bead_cage", "--out", tmp_path / "x", "--tolerances", qa_file)
    assert r.exit_code == 2 and "PositionerPrimaryAngle" in r.output and "--primary-angles" in r.output
    assert "--initial" in r.output and not (tmp_path / "x").exists()
    r = _run("--images", dcm, lat, "--phantom", "bead_cage", "--out", tmp_path / "y", "--tolerances", qa_file,
             "--primary-angles", "0,90", "--secondary-angles", "0,0")
    assert r.exit_code == 0, r.output
    data = json.loads((tmp_path / "y" / "report.json").read_text())
    assert any("from the command line: primary_angle, secondary_angle" in s for s in data["starting_geometry_source"])
    tags = {t["path"]: t["tags"] for t in data["dicom_tags"]}
    assert any("DistanceSourceToDetector (0018,1110)" in line for line in tags[str(lat)])


def test_same_image_twice_is_refused(bead_images, tmp_path):
    npy, counts = bead_images[2], bead_images[5]
    r = _run("--images", npy, npy, "--phantom", "bead_cage", "--out", tmp_path / "a")
    assert r.exit_code == 2 and "same image (identical pixels)" in r.output
    # a second exposure of the same view (new noise): the same bead pattern
    again = np.random.default_rng(9).poisson(np.clip(counts[1], 0, None)).astype(float)
    np.save(tmp_path / "again.npy", again)
    r = _run("--images", npy, tmp_path / "again.npy", "--phantom", "bead_cage", "--out", tmp_path / "a")
    assert r.exit_code == 2 and "show the same bead pattern" in r.output
    assert not (tmp_path / "a").exists()


def _occlude(image, centres, rng, strays):
    """Paint over bead shadows with flat-field noise and add small dark blobs (strays)."""
    img = image.copy()
    rows, cols = np.mgrid[0:img.shape[0], 0:img.shape[1]]
    flat = float(np.median(img))
    for c, r in centres:
        disc = (cols - c) ** 2 + (rows - r) ** 2 <= 6.0**2
        img[disc] = rng.poisson(flat, int(disc.sum()))
    for c, r in strays:
        d2 = (cols - c) ** 2 + (rows - r) ** 2
        img = img * np.exp(-0.5 * np.exp(-d2 / (2 * 1.2**2)))
    return np.round(img)


def test_occluded_beads_and_strays_in_images(bead_images, qa_file, tmp_path):
    """8 beads hidden per view and a stray blob 3-5 px from each: the statistics stay true."""
    true, counts = bead_images[4], bead_images[5]
    design = bead_design("bead_cage")
    rng = np.random.default_rng(4)
    imgs = []
    for v in range(2):
        miss = rng.choice(len(design), size=8, replace=False)
        pts = true.views[v].project_points(design.positions[miss]).numpy()
        ang = rng.uniform(0, 2 * np.pi, 8)
        rad = rng.uniform(3.0, 5.0, 8)
        imgs.append(_occlude(counts[v], pts, rng, pts + np.c_[np.cos(ang) * rad, np.sin(ang) * rad]))
    np.save(tmp_path / "f.npy", imgs[0])
    np.save(tmp_path / "l.npy", imgs[1])
    r = _run("--images", tmp_path / "f.npy", tmp_path / "l.npy", "--phantom", "bead_cage", "--out",
             tmp_path / "occ", "--tolerances", qa_file)
    assert r.exit_code == 0, r.output
    data = json.loads((tmp_path / "occ" / "report.json").read_text())
    res = data["calibration_result"]
    assert [len(v["residual_ids"]) + len(v["heldout_ids"]) for v in res["views"]] == [42, 42]
    assert res["heldout_rms_px"] < 0.15 and res["triangulation_rms_mm"] < 0.2
    # each view reports its strays as blobs matched to no bead
    assert all(len(d) == 50 for d in data["detections"])
    item = {(i["name"], i["view"]): i for i in data["verdict"]["items"]}
    assert item[("beads_matched", "frontal")]["value"] == pytest.approx(84.0)


def test_bad_tolerance_file_and_bad_output_folder_write_nothing(bead_images, tmp_path):
    dcm, npy = bead_images[1:3]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"heldout_rms": "0.1 mm"}))
    r = _run("--images", dcm, npy, "--phantom", "bead_cage", "--out", tmp_path / "o", "--tolerances", bad)
    assert r.exit_code == 2 and "'0.1 mm' is a length" in r.output and "--tolerances" in r.output
    bad.write_text("heldout_rms: 0.1 px\nheld_out: 3 px\n")
    r = _run("--images", dcm, npy, "--phantom", "bead_cage", "--out", tmp_path / "o", "--tolerances", bad)
    assert r.exit_code == 2 and "unknown key(s) ['held_out']" in r.output
    assert not (tmp_path / "o").exists()
    # a file where the folder should be
    (tmp_path / "file").write_text("x")
    r = _run("--images", dcm, npy, "--phantom", "bead_cage", "--out", tmp_path / "file")
    assert r.exit_code == 2 and "is a file" in r.output
    if os.geteuid() != 0:  # root ignores permissions
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        r = _run("--images", dcm, npy, "--phantom", "bead_cage", "--out", ro / "rep")
        assert r.exit_code == 2 and "cannot write the report" in r.output
        ro.chmod(0o700)


def test_full_disk_while_writing_leaves_no_half_written_report(bead_images, qa_file, tmp_path, monkeypatch,
                                                               light_checks):
    dcm, npy = bead_images[1:3]
    from tomoprior.validation import report as report_mod

    real = report_mod.write_bytes_atomic
    calls = {"n": 0}

    def full(path, data):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(report_mod, "write_bytes_atomic", full)
    cached = {}
    real_cal = pl.run_calibration
    monkeypatch.setattr(pl, "run_calibration", lambda *a, **k: cached.setdefault("r", real_cal(*a, **k)))
    out = tmp_path / "rep"
    r = _run("--images", dcm, npy, "--phantom", "bead_cage", "--out", out, "--tolerances", qa_file)
    assert r.exit_code == 2 and "the disk is full" in r.output and "nothing was written" in r.output
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert "Traceback" not in r.output
