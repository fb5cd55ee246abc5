"""``tomoprior validate`` (the main job) and ``tomoprior calibrate`` on synthetic images,
including DICOM radiographs written with pydicom, and their bad-input behaviour."""

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

import tomoprior as tp
from tomoprior.calibration import bead_radiographs
from tomoprior.cli.calibrate import calibrate
from tomoprior.cli.validate import validate
from tomoprior.validation import pipeline as pl
from tomoprior.validation.images import dicom_view_parameters, read_radiograph


def _write_dicom(path, image, *, sdd=1500.0, sod=1000.0, spacing=(0.8, 0.8), primary=0.0, secondary=0.0,
                 monochrome="MONOCHROME2", tags=True):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = image.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = monochrome
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    if tags:
        ds.DistanceSourceToDetector = f"{sdd:.2f}"
        ds.DistanceSourceToPatient = f"{sod:.2f}"
        ds.ImagerPixelSpacing = [f"{spacing[0]:g}", f"{spacing[1]:g}"]
        ds.PositionerPrimaryAngle = f"{primary:g}"
        ds.PositionerSecondaryAngle = f"{secondary:g}"
    ds.PixelData = np.ascontiguousarray(image.astype(np.uint16)).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


@pytest.fixture
def light_checks(monkeypatch):
    """The sensitivity / conditioning / projector-map checks on a tiny grid (they are tested in
    tests/validation; here only the command-line flow matters)."""
    real = pl.add_checks
    monkeypatch.setattr(pl, "add_checks", lambda outcome, **kw: real(outcome, max_pixels=48, grid_size=24))


@pytest.fixture(scope="module")
def beads_only(tmp_path_factory):
    """The bead cage without its foam support, as a phantom file: the beads (all calibration
    uses) at a fraction of the simulation cost (the support is evaluated on every pixel)."""
    from tomoprior.phantoms import Phantom, Sphere

    cage = Phantom.load("bead_cage")
    path = tmp_path_factory.mktemp("phantom") / "cage_beads_only.yaml"
    beads = Phantom([s for s in cage.shapes if isinstance(s, Sphere)], name="cage_beads_only",
                    density_scale=cage.density_scale)
    beads.save(path)
    return path


@pytest.fixture(scope="module")
def bead_images(tmp_path_factory, beads_only):
    """Frontal as DICOM (raw counts), lateral as .npy, from a miscalibrated geometry at 384^2 x 0.8 mm."""
    folder = tmp_path_factory.mktemp("beads")
    nominal, true = pl.main_job_geometries(pl.MainJobConfig(binning=4))
    counts = bead_radiographs(tp.phantoms.Phantom.load(beads_only), true, photons_per_pixel=3000.0, seed=1).numpy()
    dcm = folder / "frontal.dcm"
    _write_dicom(dcm, counts[0])
    npy = folder / "lateral.npy"
    np.save(npy, counts[1])
    return folder, dcm, npy, nominal, true, counts


# -- reading images --------------------------------------------------------------------------

def test_dicom_geometry_tags_become_initial_parameters(tmp_path):
    img = np.random.default_rng(0).integers(100, 4000, (64, 80)).astype(np.uint16)
    path = tmp_path / "lat.dcm"
    _write_dicom(path, img, sdd=1480.0, sod=990.0, spacing=(0.15, 0.16), primary=90.0, secondary=-3.0)
    r = read_radiograph(path, name="lateral")
    assert np.array_equal(r.image, img.astype(float)) and r.missing_tags == ()
    p = r.parameters
    assert p.name == "lateral" and p.detector_shape == (64, 80) and p.pixel_pitch == (0.15, 0.16)
    assert p.source_to_detector == pytest.approx(1480.0) and p.source_to_isocenter == pytest.approx(990.0)
    assert math.degrees(p.primary_angle) == pytest.approx(90.0)
    assert math.degrees(p.secondary_angle) == pytest.approx(-3.0)
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

def test_calibrate_dicom_and_npy_recovers_the_geometry(bead_images, tmp_path, light_checks, monkeypatch):
    _, dcm, npy, _, true, _ = bead_images
    out = tmp_path / "cal"
    real, results = pl.run_calibration, []
    monkeypatch.setattr(pl, "run_calibration", lambda *a, **k: results.append(real(*a, **k)) or results[-1])
    r = CliRunner().invoke(calibrate, ["--images", str(dcm), str(npy), "--phantom", "bead_cage", "--out", str(out)])
    assert r.exit_code == 0, r.output
    _CACHE["result"] = results[0]
    assert "frontal: DICOM attributes" in r.output and "lateral: built-in pediatric setup, binning 4" in r.output
    assert "fit RMS px" in r.output and f"report: {out / 'report.html'}" in r.output
    geom = tp.Geometry.load(out / "geometry.yaml")
    for est, t in zip(geom.parameters, true.parameters):
        # 0.8 mm pixels, 3000 photons: distances to a few mm, principal point to a fraction of a pixel
        assert abs(est.source_to_detector - t.source_to_detector) < 5.0
        assert abs(est.u0 - t.u0) / 0.8 < 0.2
        assert abs(math.degrees(est.detector_rotation - t.detector_rotation)) < 0.02
    data = json.loads((out / "report.json").read_text())
    assert data["calibration_result"]["converged"] is True
    assert data["triangulation"]["aligned"] is True and data["triangulation"]["rms_mm"] < 0.3
    assert data["reprojection"]["rms_px"] < 0.3
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4  # residuals x2, projector error, sensitivity
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
    blank = np.random.default_rng(0).poisson(3000.0, (384, 384)).astype(float)
    np.save(tmp_path / "blank.npy", blank)
    r = call("--images", str(tmp_path / "blank.npy"), str(npy), "--phantom", "bead_cage")
    assert r.exit_code == 2 and "view 'frontal': found 0 bead(s)" in r.output
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


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
    assert r.exit_code == 2
    assert "DID NOT CONVERGE" in r.output and "did not converge; the best fit is in the report" in r.output
    assert "maximum number of function evaluations" in (out / "report.html").read_text()
    assert json.loads((out / "report.json").read_text())["summary"]["fit converged"] is False


# -- tomoprior validate ------------------------------------------------------------------------

def test_validate_main_job_small(tmp_path, light_checks, beads_only):
    out = tmp_path / "val"
    r = CliRunner().invoke(validate, ["--binning", "4", "--photons", "3000", "--phantom", str(beads_only), "--out",
                                      str(out), "--quiet"])
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
    assert {f.name for f in out.glob("*.png")} == {"residuals_0_frontal.png", "residuals_1_lateral.png",
                                                    "heel_effect.png", "projector_error.png", "sensitivity.png"}
    assert tp.Geometry.load(out / "geometry.yaml").num_views == 2


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
