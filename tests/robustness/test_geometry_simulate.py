"""`tomoprior simulate` under bad input and faults: impossible sizes and geometries, a
read-only or full output folder, SIGTERM and kill -9 during the run. Each ends in a clear
message and exit code 2 (143 for SIGTERM), no traceback, the previous outputs intact and no
temporary left behind (after kill -9: removed by the next run)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import tomoprior as tp
from tests.conftest import default_sigint_in_child
from tomoprior.cli import simulate as sim
from tomoprior.cli.main import cli
from tomoprior.geometry.geometry import GeometryWarning

FAST = ["--binning", "16", "--grid", "32", "--supersample", "1", "--quiet"]
REPO = Path(tp.__file__).resolve().parents[1]


def _run(*args):
    return CliRunner().invoke(cli, ["simulate", *args])


def _geometry_file(tmp_path, det_y=500.0, shape=(40, 40), pitch=4.0, name="view", src_y=-1000.0):
    """A one-view geometry along +y over a 96 mm box: source at y = src_y, detector at y = det_y."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GeometryWarning)  # the impossible ones are the point
        geom = tp.Geometry(tp.VolumeGrid((24, 24, 24), (8.0, 8.0, 8.0)),
                           [tp.View([0.0, src_y, 0.0], [0.0, det_y, 0.0], [pitch, 0, 0], [0, 0, pitch], shape, name)])
    path = tmp_path / f"geom_{name.replace('/', '_')}_{det_y:g}.yaml"
    geom.save(path)
    return path


def _old_outputs(out: Path) -> dict[str, bytes]:
    out.mkdir(parents=True, exist_ok=True)
    files = {"summary.json": b'{"old": true}\n', "projections.npy": b"old projections", "geometry.yaml": b"old: 1\n"}
    for name, data in files.items():
        (out / name).write_bytes(data)
    return files


def _assert_unchanged(out: Path, old: dict[str, bytes]) -> None:
    assert sorted(p.name for p in out.iterdir()) == sorted(old), sorted(p.name for p in out.iterdir())
    for name, data in old.items():
        assert (out / name).read_bytes() == data


def _no_traceback(result) -> None:
    assert "Traceback" not in result.output
    # click turns clean errors into SystemExit; any other exception escaped the command
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)


# -- sizes and impossible geometries ---------------------------------------------------------------

def test_huge_detector_is_refused_at_once(tmp_path):
    geom = _geometry_file(tmp_path, shape=(10**6, 10**6), pitch=1e-4)
    out = tmp_path / "out"
    t0 = time.perf_counter()
    r = _run("--geometry", str(geom), "--out", str(out), "--quiet")
    assert r.exit_code == 2, r.output
    assert "1000000 x 1000000" in r.output and "TiB" in r.output and "bin the detector" in r.output
    assert time.perf_counter() - t0 < 120  # a guard against the old 10^12-ray loop, not a timing claim
    assert not out.exists()
    _no_traceback(r)


def test_huge_grid_is_refused_at_once(tmp_path):
    out = tmp_path / "out"
    r = _run("--binning", "16", "--grid", "5000", "--out", str(out), "--quiet")
    assert r.exit_code == 2, r.output
    assert "5000 x 5000 x 5000" in r.output and "--grid" in r.output
    assert not out.exists()
    _no_traceback(r)


@pytest.mark.parametrize("det_y, words", [(-1500.0, "behind the source"), (-400.0, "detector lies between")])
def test_views_that_cannot_see_the_volume_are_refused(tmp_path, det_y, words):
    out = tmp_path / "out"
    r = _run("--geometry", str(_geometry_file(tmp_path, det_y=det_y)), "--out", str(out), "--quiet")
    assert r.exit_code == 2, r.output
    assert words in r.output and "no ray from the source to the detector" in r.output
    assert not out.exists()
    _no_traceback(r)


def test_detector_through_the_volume_warns_and_compares_like_with_like(tmp_path):
    errors = {}
    for det_y in (500.0, 10.0):
        out = tmp_path / f"out{det_y:g}"
        path = _geometry_file(tmp_path, det_y=det_y)
        r = _run("--geometry", str(path), "--grid", "48", "--supersample", "1", "--out", str(out), "--quiet")
        assert r.exit_code == 0, r.output
        errors[det_y] = json.loads((out / "summary.json").read_text())["projector_vs_analytic"]
    assert "warning:" in r.output and "cuts through the volume box" in r.output
    # the exact integrals stop at the detector (y = 10 mm): not the whole chord through the head
    with pytest.warns(GeometryWarning, match="cuts through"):
        geom = tp.Geometry.load(out / "geometry.yaml")
    exact = np.load(out / "analytic.npy")[0]
    view = geom.views[0]
    o, d = view.pixel_rays()
    whole = tp.phantoms.load(sim.DEFAULT_PHANTOM).line_integrals_rays(o, d).numpy()
    assert float(exact.max()) > 0 and float(exact.sum()) < 0.8 * float(whole.sum())
    # and the projector, whose rays stop there too, agrees with them as well as without the cut
    assert errors[10.0]["median_relative_error"] < 2 * errors[500.0]["median_relative_error"] + 0.02, errors


# -- output folder faults ----------------------------------------------------------------------

def test_read_only_output_folder_is_a_clear_error(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(sim.tempfile, "mkdtemp", refuse)
    out = tmp_path / "ro" / "out"
    r = _run(*FAST, "--out", str(out))
    assert r.exit_code == 2, r.output
    assert f"cannot write to --out {out}" in r.output and "Read-only file system" in r.output
    assert not out.exists()  # the folder it created is removed again
    _no_traceback(r)


def test_output_path_that_is_a_file(tmp_path):
    target = tmp_path / "file"
    target.write_text("keep")
    r = _run(*FAST, "--out", str(target))
    assert r.exit_code == 2 and target.read_text() == "keep"


@pytest.mark.parametrize("stage", ["_save_npy", "_save_h5", "_save_preview"])
def test_disk_full_during_the_writes_keeps_the_previous_outputs(tmp_path, monkeypatch, stage):
    out = tmp_path / "out"
    old = _old_outputs(out)
    real = getattr(sim, stage)

    def half_then_full(path, *args, **kwargs):
        Path(path).write_bytes(b"half")  # a partial file, as a real ENOSPC leaves one
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sim, stage, half_then_full)
    r = _run(*FAST, "--out", str(out))
    assert r.exit_code == 2, r.output
    assert "No space left on device" in r.output and str(out) in r.output
    _assert_unchanged(out, old)  # no staging folder, no half-written file, old files intact
    _no_traceback(r)
    monkeypatch.setattr(sim, stage, real)
    r = _run(*FAST, "--out", str(out))
    assert r.exit_code == 0, r.output
    assert json.loads((out / "summary.json").read_text())["phantom"] == "shepp_logan_3d_modified"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_free_space_is_checked_before_the_work(tmp_path, monkeypatch):
    out = tmp_path / "out"
    old = _old_outputs(out)

    class Tiny:
        free = 1000

    monkeypatch.setattr(sim.shutil, "disk_usage", lambda path: Tiny)
    r = _run(*FAST, "--out", str(out))
    assert r.exit_code == 2 and "the outputs need about" in r.output and "1000 B is free" in r.output
    _assert_unchanged(out, old)


def test_view_names_cannot_escape_the_output_folder(tmp_path):
    out = tmp_path / "deep" / "out"
    r = _run("--geometry", str(_geometry_file(tmp_path, name="../../escaped")), "--supersample", "1",
             "--out", str(out), "--quiet")
    assert r.exit_code == 0, r.output
    assert [p.name for p in out.glob("preview_*.png")] == ["preview_0_escaped.png"]
    assert not list(tmp_path.rglob("*escaped*.png"))[1:]


def test_stale_staging_of_a_dead_run_is_removed_and_a_live_one_kept(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = out / f"{sim.STAGING_PREFIX}{dead.pid}-abc123"
    stale.mkdir()
    (stale / "projections.npy").write_bytes(b"half")
    live = out / f"{sim.STAGING_PREFIX}{os.getppid()}-xyz789"
    live.mkdir()
    r = _run(*FAST, "--out", str(out))
    assert r.exit_code == 0, r.output
    assert not stale.exists() and live.exists()


# -- signals (real processes) ---------------------------------------------------------------------

def _start(out: Path, backend: str):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-m", "tomoprior", "simulate", "--binning", "8", "--grid", "48",
                             "--backend", backend, "--supersample", "1", "--quiet", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
                            preexec_fn=default_sigint_in_child)


def _wait_for(predicate, proc, limit_s=300.0):
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and proc.poll() is None:
        if predicate():
            return True
        time.sleep(0.005)
    return False


def _staging(out: Path) -> list[Path]:
    return [p for p in out.iterdir() if p.name.startswith(sim.STAGING_PREFIX)] if out.exists() else []


def test_sigterm_during_the_run_leaves_the_previous_outputs(tmp_path):
    out = tmp_path / "out"
    old = _old_outputs(out)
    proc = _start(out, "reference")  # slow enough to be caught in the middle
    assert _wait_for(lambda: bool(_staging(out)), proc), proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    _assert_unchanged(out, old)


@pytest.mark.slow
def test_kill_9_during_the_writes_then_the_next_run_cleans_up(tmp_path):
    out = tmp_path / "out"
    old = _old_outputs(out)
    proc = _start(out, "numba")
    # the first output written into the staging folder: the write stage has begun
    assert _wait_for(lambda: any((s / "geometry.yaml").exists() for s in _staging(out)), proc), proc.communicate()
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    # every file under its final name is either the old one or a complete new one
    for name, data in old.items():
        now = (out / name).read_bytes()
        if now != data:
            assert name != "summary.json" or json.loads(now)["files"]
            if name.endswith(".npy"):
                assert np.load(out / name).shape[0] == 2
    r = _run(*FAST, "--out", str(out))
    assert r.exit_code == 0, r.output
    assert not _staging(out)


# -- real file systems (root only: a small tmpfs, mounted read-only or nearly full) ---------------

def _mount(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.parametrize("options, words", [("ro,size=1m", "Read-only file system"),
                                            ("size=64k", "No space left on device")])
def test_real_read_only_and_full_file_systems(tmp_path, options, words):
    mnt = tmp_path / "mnt"
    if not _mount(mnt, options):
        pytest.skip("needs root and tmpfs mounts")
    try:
        out = mnt / "out"
        r = _run(*FAST, "--out", str(out))
        assert r.exit_code == 2, r.output
        assert words in r.output
        _no_traceback(r)
        assert not out.exists() or not list(out.iterdir())
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
