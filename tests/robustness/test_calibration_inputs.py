"""Calibration QA under bad input and faults: generated tolerance documents, radiograph files
and DICOM headers; an unwritable report folder; SIGTERM during a run; a report staging
folder left by ``kill -9``."""

from __future__ import annotations

import errno
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import default_sigint_in_child
from tomoprior.validation import qa
from tomoprior.validation.images import dicom_geometry, read_radiograph

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

_keys = st.sampled_from(["heldout_rms", "triangulation_rms", "fit_residual_max", "beads_matched",
                         "heldout_rejected", "uncertainty", "change_from_start", "drift", "schema",
                         "schema_version", "bogus", "u0"])
_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(allow_nan=True, allow_infinity=True),
              st.text(max_size=12), st.sampled_from(["0.1 px", "1 mm", "3 deg", "60 %", "2", "-1 mm", "nan px",
                                                     "1e999 mm", "0.2 furlong", "px", "5 rad"])),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(
        st.sampled_from(["source_to_detector", "u0", "z", "detector_tilt_u", "sdd", "primary_angle"]), inner,
        max_size=3)),
    max_leaves=8,
)


@SETTINGS
@given(st.one_of(st.dictionaries(_keys, _values, max_size=5), _values))
def test_any_tolerance_document_is_read_or_refused_with_a_value_error(doc):
    try:
        t = qa.Tolerances.from_dict(doc, where="qa.yaml")
    except ValueError as exc:
        assert str(exc).startswith("qa.yaml"), exc
        assert len(str(exc)) < 600
        return
    # what was accepted is usable: finite, non-negative limits that write back the same
    for q in list(t.scalars.values()) + [q for g in t.groups.values() for q in g.values()]:
        assert q is None or (math.isfinite(q.value) and q.value >= 0)
    assert qa.Tolerances.from_dict(t.to_dict()).to_dict() == t.to_dict()


@SETTINGS
@given(data=st.binary(max_size=2000), suffix=st.sampled_from([".npy", ".png", ".tif", ".dcm", ".raw"]))
def test_random_bytes_as_a_radiograph_are_a_clear_error(tmp_path, data, suffix):
    path = Path(tempfile.mkdtemp(dir=tmp_path)) / f"image{suffix}"
    path.write_bytes(data)
    with pytest.raises(ValueError) as info:
        read_radiograph(path)
    assert "image" in str(info.value) and len(str(info.value)) < 800


@SETTINGS
@given(shape=st.one_of(st.tuples(st.integers(0, 40)), st.tuples(st.integers(0, 40), st.integers(0, 40)),
                       st.tuples(st.integers(1, 4), st.integers(1, 20), st.integers(1, 20))),
       dtype=st.sampled_from(["uint8", "uint16", "float32", "float64", "complex64", "bool", "int64"]),
       fill=st.sampled_from(["random", "constant", "nan", "inf"]))
def test_generated_npy_images_read_or_refuse(tmp_path, shape, dtype, fill):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 200, size=shape).astype(dtype) if fill == "random" else np.ones(shape, dtype=dtype)
    if fill in ("nan", "inf") and np.issubdtype(a.dtype, np.floating) and a.size:
        a.flat[0] = np.nan if fill == "nan" else np.inf
    path = Path(tempfile.mkdtemp(dir=tmp_path)) / "img.npy"
    np.save(path, a)
    try:
        r = read_radiograph(path)
    except ValueError as exc:
        assert "img.npy" in str(exc)
        return
    assert r.image.ndim == 2 and np.isfinite(r.image).all() and min(r.image.shape) >= 8
    assert r.image.max() > r.image.min()


_dicom_values = st.one_of(st.none(), st.just(""), st.floats(allow_nan=True, allow_infinity=True),
                          st.integers(-10**6, 10**6), st.text(max_size=8), st.lists(st.floats(), max_size=3))


@SETTINGS
@given(sdd=_dicom_values, sod=_dicom_values, spacing=_dicom_values, primary=_dicom_values,
       secondary=_dicom_values, modality=st.sampled_from(["DX", "XA", "CR", "RF", "", None]))
def test_generated_dicom_geometry_headers(sdd, sod, spacing, primary, secondary, modality):
    from types import SimpleNamespace

    ds = SimpleNamespace(Rows=64, Columns=64, Modality=modality, DistanceSourceToDetector=sdd,
                         DistanceSourceToPatient=sod, ImagerPixelSpacing=spacing, PositionerPrimaryAngle=primary,
                         PositionerSecondaryAngle=secondary)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            geo = dicom_geometry(ds, name="lateral")
        except ValueError as exc:
            assert "DICOM view 'lateral'" in str(exc) and len(str(exc)) < 600
            return
    p = geo["parameters"]
    assert 0 < float(p.source_to_isocenter) < float(p.source_to_detector)
    assert all(math.isfinite(x) for x in p.to_dict()["detector_offset"])
    assert len(geo["used"]) >= 5


# -- faults -------------------------------------------------------------------------------------

def test_unwritable_report_folder_is_refused_before_any_work(monkeypatch, tmp_path):
    from tomoprior.cli import qa_common
    from tomoprior.cli.validate import validate

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(qa_common.tempfile, "mkstemp", denied)
    monkeypatch.setattr("tomoprior.validation.pipeline.run_main_job",
                        lambda *a, **k: pytest.fail("the pipeline ran before the folder was checked"))
    r = CliRunner().invoke(validate, ["--out", str(tmp_path / "rep"), "--quiet"])
    assert r.exit_code == 2 and "cannot write the report" in r.output and "Permission denied" in r.output
    assert not (tmp_path / "rep").exists()


def test_stale_staging_of_a_killed_run_is_removed(tmp_path):
    from tomoprior._atomic import _host_tag
    from tomoprior.validation.report import Report, write_report

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".rep.{dead.pid}-{_host_tag()}-abcd1234"
    (stale / "sub").mkdir(parents=True)
    (stale / "report.json").write_text("{}")
    live = tmp_path / f".rep.{os.getpid()}-{_host_tag()}-zzzz9999"  # this process: kept
    live.mkdir()
    write_report(Report(title="t"), tmp_path / "rep")
    assert not stale.exists() and live.exists() and (tmp_path / "rep" / "report.html").exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_validate_leaves_nothing(tmp_path, sig):
    out = tmp_path / "rep"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "tomoprior", "validate", "--out", str(out), "--binning", "6"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=default_sigint_in_child)
    # wait until the run is under way (its first progress line), then terminate it
    deadline = time.time() + 120
    line = ""
    while time.time() < deadline and "simulate" not in line:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:  # finished before the signal arrived (very fast machine): nothing to test
        pytest.skip("validate finished before the signal")
    assert proc.returncode == 128 + sig, err
    assert ("terminated by SIGTERM" if sig == signal.SIGTERM else "interrupted (SIGINT)") in err
    assert "Traceback" not in err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
