"""``tomoprior dataset`` and ``tomoprior train`` on bad input and faults, in process.

Every outcome is either a success with a valid file, or a clear message with exit code 2
(bad usage, unreadable input, unwritable output, full disk) or 1 (the run failed: ``info
--verify`` found bad values, training diverged); never a traceback, never a half-written or
left-over file, never a changed previous file. Faults are injected (a full disk through the
free-space probe or an ``ENOSPC`` from HDF5's write, a read-only folder through ``EROFS``);
``test_data_faults.py`` does the same with real signals, mounts and processes.
"""

from __future__ import annotations

import errno
import json
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tomoprior import data
from tomoprior.cli.dataset import dataset as dataset_cli
from tomoprior.cli.train import train as train_cli

SMALL = ["--grid", "16", "--binning", "96", "--phantom", "shepp_logan", "--quiet"]
FAST = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _clean_failure(res, code: int, *words: str) -> str:
    """``res`` failed with ``code`` and a message (no traceback) containing ``words``."""
    assert res.exit_code == code, (res.exit_code, res.output, res.exception)
    assert isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    for w in words:
        assert w in res.output, (w, res.output)
    return res.output


def _leftovers(folder: Path, keep=()) -> list[str]:
    return sorted(p.name for p in Path(folder).iterdir() if p.name not in keep)


@pytest.fixture(scope="module")
def small_h5(tmp_path_factory) -> Path:
    """5 Shepp-Logan heads, 16^3, 3 train / 1 val / 1 test."""
    path = tmp_path_factory.mktemp("cli") / "small.h5"
    data.generate(data.make_specs(5, seed=1, grid=16, binning=96, phantom="shepp_logan", supersample=1,
                                  fractions=(0.6, 0.2, 0.2)), path)
    return path


# -- dataset make: bad options, generated ------------------------------------------------------

OPTION_VALUES = {
    "--n": ["0", "-3", "1", "2", "x"],
    "--grid": ["-1", "0", "7", "8", "16", "1.5"],
    "--binning": ["0", "7", "96", "128", "5000"],
    "--ages": ["0.1,1.5", "", "1", "1,2,3", "a,b", "-1,2", "2,1", "nan,1", "inf,inf", "0,30"],
    "--split": ["0.8,0.1,0.1", "1,0,0", "0.5,0.5", "-1,1,1", "nan,0,1", "a,b,c", "0.2,0.2,0.2"],
    "--perturb": ["offset=1", "zz=1", "offset", "offset=abc", "offset=nan", "offset=-2", "tilt=1e9", ""],
    "--intensity": ["gain=0.05", "gain=abc", "x=1", "gain", "noise=-1", "gain=nan", "gain=2"],
    "--variants": ["normal", "sagittal", "", "normal,,normal", "bogus"],
    "--compression": ["gzip", "lzf", "none", "zip"],
    "--kind": ["line_integrals", "radiograph", "counts"],
    "--photons": ["500", "0", "-1", "nan", "abc"],
    "--heel": ["12", "0", "45", "abc"],
    "--seed": ["0", "-5", "1e3", "99999999999999999999"],
}


@FAST
@given(chosen=st.dictionaries(st.sampled_from(sorted(OPTION_VALUES)), st.integers(0, 99), max_size=5))
def test_make_with_generated_options_succeeds_or_fails_cleanly(tmp_path, chosen):
    out_dir = Path(tempfile.mkdtemp(dir=tmp_path))
    out = out_dir / "d.h5"
    args = ["make", "--out", str(out), "--grid", "16", "--binning", "96", "--phantom", "shepp_logan", "--n", "1",
            "--quiet"]
    for opt, k in chosen.items():
        values = OPTION_VALUES[opt]
        args += [opt, values[k % len(values)]]
    res = CliRunner().invoke(dataset_cli, args)
    if res.exit_code == 0:
        with data.DatasetFile(out) as ds:
            assert ds.verify()["ok"] and len(ds) >= 1
        assert _leftovers(out_dir) == ["d.h5"]
    else:
        _clean_failure(res, 2, "Error")
        assert _leftovers(out_dir) == []


# -- dataset make: unwritable output, full disk --------------------------------------------------

def _refuse_mkstemp_in(monkeypatch, folder: Path, code: int = errno.EROFS) -> None:
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kw):
        if dir is not None and Path(dir).resolve() == folder.resolve():
            raise OSError(code, "Read-only file system" if code == errno.EROFS else "Permission denied", str(dir))
        return real(*args, dir=dir, **kw)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def test_make_into_a_read_only_folder_is_refused_before_any_work(tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    _refuse_mkstemp_in(monkeypatch, ro)
    called = []
    monkeypatch.setattr(data, "generate", lambda *a, **k: called.append(1))
    res = CliRunner().invoke(dataset_cli, ["make", "--n", "2", "--out", str(ro / "d.h5"), *SMALL])
    _clean_failure(res, 2, str(ro), "Read-only file system", "writable folder")
    assert called == [] and _leftovers(ro) == []
    res = CliRunner().invoke(dataset_cli, ["make", "--n", "2", "--out", str(tmp_path / "nope" / "d.h5"), *SMALL])
    _clean_failure(res, 2, "does not exist")
    res = CliRunner().invoke(dataset_cli, ["make", "--n", "2", "--out", str(tmp_path), *SMALL])
    _clean_failure(res, 2)


@pytest.mark.parametrize("how", ["free-space probe", "HDF5 write", "projection"])
def test_make_onto_a_full_disk_is_a_clean_error_and_keeps_the_old_file(small_h5, tmp_path, monkeypatch, how):
    from tomoprior.data import h5 as h5mod

    out = tmp_path / "d.h5"
    out.write_bytes(small_h5.read_bytes())
    before = out.read_bytes()
    if how == "free-space probe":
        monkeypatch.setattr(h5mod, "disk_free", lambda folder: 10_000)
    elif how == "projection":  # room for one sample, not for 40: said after the first one
        monkeypatch.setattr(h5mod, "disk_free", lambda folder: 600_000)
    else:  # the probe sees room, the disk fills up under HDF5 (another writer, a quota)
        real = h5py.Dataset.__setitem__
        count = {"volume": 0}

        def setitem(self, key, value):
            if self.name == "/volume":
                count["volume"] += 1
                if count["volume"] == 2:
                    raise OSError(errno.ENOSPC, "Can't synchronously write data (file write failed: errno = 28, "
                                                "error message = 'No space left on device')")
            return real(self, key, value)

        monkeypatch.setattr(h5py.Dataset, "__setitem__", setitem)
    n = "40" if how == "projection" else "3"
    res = CliRunner().invoke(dataset_cli, ["make", "--n", n, "--out", str(out), *SMALL])
    msg = _clean_failure(res, 2, str(out), "Free some space")
    assert ("disk is full" in msg) or ("not enough disk space" in msg)
    if how == "projection":
        assert "remaining 39 of 40 samples" in msg
    assert out.read_bytes() == before
    assert _leftovers(tmp_path) == ["d.h5"]


def test_append_that_does_not_fit_twice_is_refused(small_h5, tmp_path, monkeypatch):
    from tomoprior.data import h5 as h5mod

    out = tmp_path / "d.h5"
    out.write_bytes(small_h5.read_bytes())
    monkeypatch.setattr(h5mod, "disk_free", lambda folder: out.stat().st_size // 2)
    res = CliRunner().invoke(dataset_cli, ["make", "--n", "1", "--out", str(out), "--append", *SMALL])
    _clean_failure(res, 2, "a copy of the file to append to", "MB free")
    assert out.read_bytes() == small_h5.read_bytes() and _leftovers(tmp_path) == ["d.h5"]


def test_stale_temporaries_of_the_target_are_removed_and_reported(small_h5, tmp_path):
    import subprocess
    import sys

    from tomoprior._atomic import _host_tag

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = tmp_path / f".d.h5.{pid}-{_host_tag()}-abcd1234.h5"
    stale.write_bytes(b"\0" * 5000)
    other = tmp_path / f".e.h5.{pid}-{_host_tag()}-abcd1234.h5"  # another target's: not ours to judge
    other.write_bytes(b"x")
    res = CliRunner().invoke(dataset_cli, ["make", "--n", "1", "--out", str(tmp_path / "d.h5"), *SMALL])
    assert res.exit_code == 0, res.output
    assert f"removed {stale.name}" in res.output
    assert _leftovers(tmp_path) == sorted(["d.h5", other.name])


# -- dataset info --verify -------------------------------------------------------------------

def test_info_verify_exit_codes(small_h5, tmp_path):
    res = CliRunner().invoke(dataset_cli, ["info", str(small_h5), "--verify"])
    assert res.exit_code == 0 and "verified: read all 5 samples" in res.output
    nan = tmp_path / "nan.h5"
    nan.write_bytes(small_h5.read_bytes())
    with h5py.File(nan, "a") as f:
        x = f["xrays"][2]
        x[0, 1, 1] = np.inf
        f["xrays"][2] = x
    res = CliRunner().invoke(dataset_cli, ["info", str(nan), "--verify"])
    _clean_failure(res, 1, "sample 2 /xrays: 0 NaN, 1 inf", "1 sample(s) hold NaN/inf")
    res = CliRunner().invoke(dataset_cli, ["info", str(nan), "--verify", "--json"])
    assert res.exit_code == 1
    report = json.loads(res.output[: res.output.rindex("}") + 1])["verify"]
    assert report["nonfinite"] == [{"sample": 2, "array": "xrays", "nan": 0, "inf": 1}]
    # a damaged chunk: unreadable, exit 2
    broken = tmp_path / "broken.h5"
    raw = bytearray(small_h5.read_bytes())
    with h5py.File(small_h5) as f:
        info = f["xrays"].id.get_chunk_info(4)
    for k in range(info.byte_offset + 8, info.byte_offset + 40):
        raw[k] ^= 0x3C
    broken.write_bytes(bytes(raw))
    res = CliRunner().invoke(dataset_cli, ["info", str(broken)])
    assert res.exit_code == 0 and "values not checked" in res.output  # the summary alone reads no chunk
    res = CliRunner().invoke(dataset_cli, ["info", str(broken), "--verify"])
    _clean_failure(res, 2, "sample 4's X-rays", "cannot be read")
    for bad in (tmp_path / "missing.h5", tmp_path):
        _clean_failure(CliRunner().invoke(dataset_cli, ["info", str(bad)]), 2)


# -- tomoprior train ---------------------------------------------------------------------------

def test_train_without_validation_samples_exits_2(tmp_path):
    pytest.importorskip("psctnet")
    path = tmp_path / "noval.h5"
    data.generate(data.make_specs(2, seed=0, grid=16, binning=96, phantom="shepp_logan", supersample=1,
                                  fractions=(1.0, 0.0, 0.0)), path)
    res = CliRunner().invoke(train_cli, ["--data", str(path), "--out", str(tmp_path / "run"), "--quiet"])
    _clean_failure(res, 2, "no 'val' samples", "--split")
    assert not (tmp_path / "run").exists()


def test_train_diverging_exits_1_naming_the_learning_rate(small_h5, tmp_path):
    pytest.importorskip("psctnet")
    micro = ["--set", "xray_size=16", "--set", "enc3d_widths=[8, 8]", "--set", "enc2d_widths=[8, 8]",
             "--set", "dense_layers=1", "--set", "agp_dim=16", "--set", "agp_heads=2", "--set", "disc_layers=2",
             "--set", "disc_width=8", "--set", "bim_d_state=4"]
    res = CliRunner().invoke(train_cli, ["--refiner", "psctnet", "--preset", "tiny", "--data", str(small_h5), "--out",
                                         str(tmp_path / "run"), "--epochs", "1", "--lr", "1e30", "--quiet", *micro])
    _clean_failure(res, 1, "training diverged", "--lr", "1e+30")
    assert not (tmp_path / "run" / "last.pt").exists()


def test_train_into_an_unwritable_folder_exits_2(small_h5, tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    _refuse_mkstemp_in(monkeypatch, ro, errno.EACCES)
    res = CliRunner().invoke(train_cli, ["--refiner", "bp-prior", "--data", str(small_h5), "--out", str(ro),
                                         "--quiet"])
    _clean_failure(res, 2, str(ro), "Permission denied")
    assert _leftovers(ro) == []
    a_file = tmp_path / "f"
    a_file.write_text("")
    _clean_failure(CliRunner().invoke(train_cli, ["--refiner", "bp-prior", "--data", str(small_h5), "--out",
                                                  str(a_file), "--quiet"]), 2, "is a file")


def test_train_on_damaged_data_names_the_file(small_h5, tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(small_h5.read_bytes()[:3000])
    res = CliRunner().invoke(train_cli, ["--refiner", "bp-prior", "--data", str(junk), "--out", str(tmp_path / "r"),
                                         "--quiet"])
    _clean_failure(res, 2, str(junk))
    assert not (tmp_path / "r").exists()


TRAIN_OPTIONS = {
    "--lr": ["1e-3", "0", "-1", "nan", "inf", "abc"],
    "--betas": ["0.5,0.99", "0.5", "1,1", "a,b", "-0.1,0.5", "0.5,0.99,0.1"],
    "--data-range": ["auto", "0", "-1", "nan", "inf", "x", "0.05"],
    "--epochs": ["1", "0", "-2", "x"],
    "--batch-size": ["1", "0", "4", "x"],
    "--decay-start": ["0.5", "2", "-1", "nan"],
    "--bone-threshold": ["0.035", "0", "nan", "-1"],
    "--select": ["psnr", "loss", "dice"],
    "--device": ["cpu", "auto", "tpu", "cuda:x"],
    "--set": ["gain=1.5", "nonsense=1", "gain=[", "gain", "=1", "gain=abc", "clamp_min=nan"],
}


@FAST
@given(chosen=st.dictionaries(st.sampled_from(sorted(TRAIN_OPTIONS)), st.integers(0, 99), max_size=4))
def test_train_with_generated_options_succeeds_or_fails_cleanly(small_h5, tmp_path, chosen):
    out = Path(tempfile.mkdtemp(dir=tmp_path)) / "run"
    args = ["--refiner", "bp-prior", "--data", str(small_h5), "--out", str(out), "--quiet"]
    for opt, k in chosen.items():
        values = TRAIN_OPTIONS[opt]
        args += [opt, values[k % len(values)]]
    res = CliRunner().invoke(train_cli, args)
    if res.exit_code == 0:
        summary = json.loads(res.output.strip().splitlines()[-1])
        assert all(np.isfinite(v) for v in summary["best"].values())
        assert (out / "best.pt").is_file()
    else:
        _clean_failure(res, 2, "Error")
        assert not out.exists() or not list(out.glob("*.pt"))
