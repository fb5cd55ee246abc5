"""``tomoprior validate`` (the main job) and ``tomoprior calibrate`` on synthetic images,
including DICOM radiographs written with pydicom, and their bad-input behaviour."""

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

import tomoprior as tp
from tomoprior.cli.calibrate import calibrate
from tomoprior.cli.validate import validate
from tomoprior.validation import pipeline as pl
from tomoprior.validation.images import dicom_view_parameters, read_radiograph

from .conftest import write_dicom as _write_dicom

# -- reading images --------------------------------------------------------------------------

def test_dicom_geometry_tags_become_initial_parameters(tmp_path):
    img = np.random.default_rng(0).integers(100, 4000, (64, 80)).astype(np.uint16)
    path = tmp_path / "lat.dcm"
    _write_dicom(path, img, sdd=1480.0, sod=990.0, spacing=(0.15, 0.16), primary=90.0, secondary=-3.0)
    r = read_radiograph(path, name="lateral")
    assert np.array_equal(r.image, img.astype(float)) and r.missing_tags == ()
    p = r.parameters
    assert p.name == "lateral" and p.detector_shape == (64, 80) and p.pixel_pitch == (0.15, 0.16)
    # DX: Distance Source to Patient is to the patient support, not the isocenter: not used
    assert p.source_to_detector == pytest.approx(1480.0) and p.source_to_isocenter == pytest.approx(1000.0)
    assert r.modality == "DX" and any("not to the isocenter" in t for t in r.tags_used)
    assert math.degrees(p.primary_angle) == pytest.approx(90.0)
    assert math.degrees(p.secondary_angle) == pytest.approx(-3.0)
    assert len(r.sha256) == 64
    # XA defines it as the distance to the isocenter; DX with a magnification factor uses that
    _write_dicom(tmp_path / "xa.dcm", img, sdd=1480.0, sod=990.0, modality="XA")
    assert read_radiograph(tmp_path / "xa.dcm").parameters.source_to_isocenter == pytest.approx(990.0)
    _write_dicom(tmp_path / "emf.dcm", img, sdd=1480.0, sod=990.0, extra={"EstimatedRadiographicMagnificationFactor":
                                                                           "1.6"})
    emf = read_radiograph(tmp_path / "emf.dcm")
    assert emf.parameters.source_to_isocenter == pytest.approx(1480.0 / 1.6)
    assert any("(0018,1114)" in t for t in emf.tags_used)
    # MONOCHROME1 (high = dark) is inverted so that beads stay dark in raw images
    _write_dicom(tmp_path / "m1.dcm", img, monochrome="MONOCHROME1")
    inv = read_radiograph(tmp_path / "m1.dcm").image
    assert np.allclose(inv, img.max() + img.min() - img.astype(float))
    # missing geometry attributes: nominal values and a warning that names them
    _write_dicom(tmp_path / "bare.dcm", img, tags=False)
    with pytest.warns(UserWarning, match=r"DistanceSourceToDetector \(0018,1110\)"):
        bare = read_radiograph(tmp_path / "bare.dcm")
    assert bare.parameters.source_to_detector == 1500.0 and len(bare.missing_tags) == 5


def test_dicom_inconsistent_distances_are_rejected():
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.Modality = "XA"
    ds.DistanceSourceToDetector, ds.DistanceSourceToPatient = 900.0, 1000.0
    with pytest.raises(ValueError, match=r"not smaller than source-to-detector"):
        dicom_view_parameters(ds)
    # a corrupt value read leniently from a file (pydicom refuses it on assignment)
    from types import SimpleNamespace

    with pytest.raises(ValueError, match=r"DistanceSourceToPatient \(0018,1111\) is not a valid number"):
        dicom_view_parameters(SimpleNamespace(DistanceSourceToPatient="abc"))


def test_png_tiff_npy_round_trip_and_bad_pixels(tmp_path):
    import tifffile
    from PIL import Image

    img = np.random.default_rng(1).integers(0, 65535, (40, 50)).astype(np.uint16)
    Image.fromarray(img).save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "a.tif", img)
    np.save(tmp_path / "a.npy", img.astype(np.float32))
    for name in ("a.png", "a.tif", "a.npy"):
        r = read_radiograph(tmp_path / name)
        assert np.array_equal(r.image, img.astype(float)) and r.parameters is None, name
    bad = img.astype(float)
    bad[3, 7] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(ValueError, match=r"1 non-finite .* \(row, col\) \[\(3, 7\)\]"):
        read_radiograph(tmp_path / "nan.npy")
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"junk\.png: cannot read the image"):
        read_radiograph(tmp_path / "junk.png")
    with pytest.raises(ValueError, match="does not exist"):
        read_radiograph(tmp_path / "missing.npy")
    np.save(tmp_path / "vol.npy", np.zeros((4, 40, 50)))
    with pytest.raises(ValueError, match="must be a 2D"):
        read_radiograph(tmp_path / "vol.npy")
    (tmp_path / "a.bmp").write_bytes(b"x")
    with pytest.raises(ValueError, match="unknown image format"):
        read_radiograph(tmp_path / "a.bmp")


# -- tomoprior calibrate -----------------------------------------------------------------------

#: Limits for 0.8 mm pixels (binning 4): the built-in targets are for 0.4 mm.
COARSE_TOLERANCES = """
heldout_rms: 0.1 px
uncertainty: {source_to_isocenter: 3 mm, source_to_detector: 4 mm, detector_tilt_u: 0.2 deg, detector_tilt_v: 0.2 deg}
error_vs_truth: {source_to_isocenter: 4 mm, source_to_detector: 6 mm, detector_tilt_u: 0.4 deg,
                 detector_tilt_v: 0.4 deg, detector_rotation: 0.03 deg}
"""


def test_calibrate_dicom_and_npy_recovers_the_geometry(bead_images, tmp_path, light_checks, monkeypatch):
    _, dcm, npy, _, true, _ = bead_images
    out = tmp_path / "cal"
    real, results = pl.run_calibration, []
    monkeypatch.setattr(pl, "run_calibration", lambda *a, **k: results.append(real(*a, **k)) or results[-1])
    (tmp_path / "qa.yaml").write_text(COARSE_TOLERANCES)
    r = CliRunner().invoke(calibrate, ["--images", str(dcm), str(npy), "--phantom", "bead_cage", "--out", str(out),
                                       "--tolerances", str(tmp_path / "qa.yaml"), "--site", "Test clinic"])
    assert r.exit_code == 0, r.output
    _CACHE["result"] = results[0]
    assert "frontal: DICOM attributes" in r.output and "lateral: built-in pediatric setup, binning 4" in r.output
    assert "fit RMS px" in r.output and f"report: {out / 'report.html'}" in r.output
    assert "QA verdict: PASS" in r.output
    geom = tp.Geometry.load(out / "geometry.yaml")
    for est, t in zip(geom.parameters, true.parameters):
        # 0.8 mm pixels, 3000 photons: distances to a few mm, detector offset to a fraction of a pixel
        assert abs(est.source_to_detector - t.source_to_detector) < 5.0
        assert abs(est.u0 - t.u0) / 0.8 < 0.2
        assert abs(math.degrees(est.detector_rotation - t.detector_rotation)) < 0.02
    data = json.loads((out / "report.json").read_text())
    assert data["calibration_result"]["converged"] is True
    assert data["triangulation"]["aligned"] is True and data["triangulation"]["rms_mm"] < 0.3
    assert data["reprojection"]["rms_px"] < 0.3
    assert data["verdict"]["verdict"] == "PASS" and data["verdict"]["tolerances_source"].endswith("qa.yaml")
    assert data["signoff"]["site"] == "Test clinic" and len(data["inputs"]) == 2
    assert {f["sha256"] for f in data["inputs"]} and all(len(f["sha256"]) == 64 for f in data["inputs"])
    html = (out / "report.html").read_text()
    # blobs, residuals x2, sensitivity; no projector check for real images
    assert html.count("data:image/png;base64,") == 4 and "Projector check" not in html
    assert (out / "report.pdf").read_bytes().startswith(b"%PDF")
    assert not (out / "geometry.FAILED.yaml").exists()
    assert not list(out.glob(".*")) and not list(tmp_path.glob(".*"))


def test_calibrate_bad_inputs_exit_2_and_write_nothing(bead_images, tmp_path):
    _, dcm, npy, nominal, _, counts = bead_images
    out = tmp_path / "never"
    run = CliRunner().invoke

    def call(*args):
        return run(calibrate, [*args, "--out", str(out), "--quiet"])

    r = call("--images", str(dcm), str(npy), "--phantom", "no_such_cage")
    assert r.exit_code == 2 and "unknown phantom 'no_such_cage'" in r.output and "bead_cage" in r.output
    bad = counts[1].copy()
    bad[10, 20] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    r = call("--images", str(dcm), str(tmp_path / "nan.npy"), "--phantom", "bead_cage")
    assert r.exit_code == 2 and "non-finite" in r.output and "(10, 20)" in r.output
    (tmp_path / "junk.png").write_bytes(b"\x89PNG garbage")
    r = call("--images", str(dcm), str(tmp_path / "junk.png"), "--phantom", "bead_cage")
    assert r.exit_code == 2 and "cannot read the image" in r.output
    np.save(tmp_path / "small.npy", counts[1][:200, :200])
    r = call("--images", str(npy), str(tmp_path / "small.npy"), "--phantom", "bead_cage")
    assert r.exit_code == 2 and "--initial" in r.output
    nominal.save(tmp_path / "g.yaml")
    r = call("--images", str(npy), str(tmp_path / "small.npy"), "--phantom", "bead_cage", "--initial",
             str(tmp_path / "g.yaml"))
    assert r.exit_code == 2 and "200 x 200 pixels" in r.output and "384 x 384" in r.output
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    # readable images without enough beads: the QA ran and FAILS (exit 1) with a report, no geometry
    blank = np.random.default_rng(0).poisson(3000.0, (384, 384)).astype(float)
    np.save(tmp_path / "blank.npy", blank)
    r = call("--images", str(tmp_path / "blank.npy"), str(npy), "--phantom", "bead_cage")
    assert r.exit_code == 1 and "view 'frontal': found 0 bead(s)" in r.output and "QA verdict: FAIL" in r.output
    data = json.loads((out / "report.json").read_text())
    assert data["verdict"]["verdict"] == "FAIL" and "found 0 bead(s)" in data["verdict"]["reasons"][0]
    assert not list(out.glob("geometry*.yaml")) and (out / "blobs.png").exists()


_CACHE = {}


def test_calibrate_non_convergence_is_reported(bead_images, tmp_path, monkeypatch, light_checks):
    import copy

    _, dcm, npy, _, _, _ = bead_images
    real = pl.run_calibration

    def stalled(*args, **kwargs):
        # reuse the fit of the test above when it ran (saves a calibration)
        res = copy.copy(_CACHE["result"]) if "result" in _CACHE else real(*args, **kwargs)
        res.converged = False
        res.message = "maximum number of function evaluations exceeded"
        return res

    monkeypatch.setattr(pl, "run_calibration", stalled)
    out = tmp_path / "cal"
    r = CliRunner().invoke(calibrate, ["--images", str(dcm), str(npy), "--phantom", "bead_cage", "--out", str(out),
                                       "--quiet"])
    assert r.exit_code == 1
    assert "DID NOT CONVERGE" in r.output and "the geometry fit did not converge" in r.output
    assert "maximum number of function evaluations" in (out / "report.html").read_text()
    data = json.loads((out / "report.json").read_text())
    assert data["summary"]["fit_converged"] is False
    item = next(i for i in data["verdict"]["items"] if i["name"] == "fit_converged")
    assert item["pass"] is False and item["value"] is False
    assert (out / "geometry.FAILED.yaml").exists() and not (out / "geometry.yaml").exists()
    assert "FAILED CALIBRATION" in (out / "geometry.FAILED.yaml").read_text()


# -- tomoprior validate ------------------------------------------------------------------------

def test_validate_main_job_small(tmp_path, light_checks, beads_only):
    out = tmp_path / "val"
    (tmp_path / "qa.yaml").write_text(COARSE_TOLERANCES)
    r = CliRunner().invoke(validate, ["--binning", "4", "--photons", "3000", "--phantom", str(beads_only), "--out",
                                      str(out), "--quiet", "--no-pdf", "--tolerances", str(tmp_path / "qa.yaml")])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert any(line.startswith("frontal ") for line in lines) and any(line.startswith("lateral ") for line in lines)
    assert "3D triangulation RMS" in r.output and "source_to_detector (mm)" in r.output
    data = json.loads((out / "report.json").read_text())
    # the printed table and the JSON agree
    rows = {(p["view"], p["parameter"]): p for p in data["parameter_errors"]}
    sdd = rows[("frontal", "source_to_detector")]
    assert f"{sdd['error']:+.4f}" in r.output
    assert sdd["nominal_error"] == pytest.approx(-12.0)
    # calibration from the nominal start removes most of the miscalibration
    assert abs(sdd["error"]) < 4.0 and abs(rows[("lateral", "u0")]["error"]) < 0.3
    assert data["reprojection_nominal"]["rms_px"] > 5 * data["reprojection"]["rms_px"]
    assert data["triangulation"]["rms_mm"] < 0.3 and data["triangulation"]["aligned"] is False
    assert data["heel_effect"]["min"] < 0.95 < data["heel_effect"]["max"] + 0.1
    assert data["projector_vs_analytic"]["comparison"]["median_relative_error"] < 0.1
    assert {f.name for f in out.glob("*.png")} == {"blobs.png", "residuals_0_frontal.png", "residuals_1_lateral.png",
                                                    "heel_effect.png", "projector_error.png", "sensitivity.png"}
    assert tp.Geometry.load(out / "geometry.yaml").num_views == 2
    items = {(i["name"], i["view"]): i for i in data["verdict"]["items"]}
    sdd = items[("error_vs_truth.source_to_detector", "frontal")]
    assert sdd["unit"] == "mm" and sdd["limit"] == 6.0 and sdd["pass"] is True
    assert sdd["value"] == pytest.approx(abs(data["parameter_errors"][1]["error"]))
    assert not (out / "report.pdf").exists()


def test_validate_bad_options_exit_2_and_write_nothing(tmp_path):
    out = tmp_path / "val"
    r = CliRunner().invoke(validate, ["--phantom", "nope", "--out", str(out), "--quiet"])
    assert r.exit_code == 2 and "unknown phantom 'nope'" in r.output and "bead_two_ring" in r.output
    r = CliRunner().invoke(validate, ["--phantom", "shepp_logan_3d", "--out", str(out), "--quiet"])
    assert r.exit_code == 2 and "0 bead(s)" in r.output
    r = CliRunner().invoke(validate, ["--binning", "5", "--out", str(out), "--quiet"])
    assert r.exit_code == 2 and "does not divide" in r.output
    r = CliRunner().invoke(validate, ["--photons", "0", "--out", str(out)])
    assert r.exit_code == 2
    assert not out.exists()
