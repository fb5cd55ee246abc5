"""Faults during ``tomoprior dataset make`` and ``tomoprior train``, for real:
signals to a running process (SIGTERM, SIGINT, SIGKILL), a full disk (a small tmpfs), a
read-only folder, and the rule that removes temporaries left by killed writers.

Asserted each time: a non-zero exit (128 + signal for a signal), a message and no traceback
on stderr, no stale temporary, the previous file intact, no worker process left behind.
Mounting a tmpfs needs root; those tests skip elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import default_sigint_in_child
from tomoprior import data
from tomoprior._atomic import (
    LEGACY_STALE_AGE_S,
    Terminated,
    _host_tag,
    atomic_path,
    find_stale_temporaries,
    signals_as_exceptions,
)

REPO = Path(__file__).resolve().parents[2]
SMALL = dict(grid=16, binning=96, phantom="shepp_logan", supersample=1)
MAKE = ["dataset", "make", "--phantom", "shepp_logan", "--quiet"]
LINUX = Path("/proc/self/stat").exists()


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                PYTHONUNBUFFERED="1")


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tomoprior", *args], cwd=cwd, env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=default_sigint_in_child)


def _run(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tomoprior", *args], cwd=cwd, env=_env(), text=True,
                          capture_output=True, timeout=timeout)


def _wait_for(condition, what: str, proc: subprocess.Popen | None = None, limit_s: float = 300.0) -> None:
    """Poll ``condition`` (a liveness bound, not a timing assertion)."""
    end = time.monotonic() + limit_s
    while not condition():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the process ended (exit {proc.returncode}) before {what}: {proc.stderr.read()[-2000:]}")
        if time.monotonic() > end:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.1)


def _temporaries(folder: Path, name: str) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.startswith(f".{name}."))


def _one_sample_written(folder: Path, name: str) -> bool:
    # a new temporary is a few kB (the HDF5 header); a written sample makes it grow past that
    return any(p.is_file() and p.stat().st_size > 20_000 for p in _temporaries(folder, name))


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _no_traceback(stderr: str) -> None:
    assert "Traceback" not in stderr and "Segmentation" not in stderr, stderr[-3000:]


@pytest.fixture(scope="module")
def previous(tmp_path_factory) -> Path:
    """A small valid dataset that the faulty runs must leave intact."""
    path = tmp_path_factory.mktemp("prev") / "prev.h5"
    data.generate(data.make_specs(2, seed=5, **SMALL), path)
    return path


# -- signals ---------------------------------------------------------------------------------

@pytest.mark.skipif(not LINUX, reason="reads worker processes from /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_signal_during_make_removes_the_temporary_and_stops_the_workers(tmp_path, previous, sig):
    out = tmp_path / "d.h5"
    shutil.copyfile(previous, out)
    before = out.read_bytes()
    proc = _start([*MAKE, "--n", "40", "--grid", "40", "--binning", "32", "--workers", "2", "--out", str(out)],
                  tmp_path)
    _wait_for(lambda: _one_sample_written(tmp_path, "d.h5"), "the first sample in the temporary", proc)
    workers = _children(proc.pid)
    assert workers, "the pool's worker processes"
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + sig, stderr
    assert f"interrupted by {sig.name}" in stderr and f"{out} is unchanged" in stderr
    _no_traceback(stderr)
    assert out.read_bytes() == before
    assert _temporaries(tmp_path, "d.h5") == []
    _wait_for(lambda: not any(_alive(p) for p in workers), "the workers to exit")


@pytest.mark.skipif(not LINUX, reason="reads worker processes from /proc")
def test_sigkill_during_make_workers_exit_and_the_next_run_removes_the_temporary(tmp_path, previous):
    out = tmp_path / "d.h5"
    shutil.copyfile(previous, out)
    before = out.read_bytes()
    proc = _start([*MAKE, "--n", "40", "--grid", "40", "--binning", "32", "--workers", "2", "--out", str(out)],
                  tmp_path)
    _wait_for(lambda: _one_sample_written(tmp_path, "d.h5"), "the first sample in the temporary", proc)
    workers = _children(proc.pid)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    # the workers notice that their parent is gone and exit (they would finish their sample)
    _wait_for(lambda: not any(_alive(p) for p in workers), "the orphaned workers to exit")
    left = _temporaries(tmp_path, "d.h5")
    assert len(left) == 1 and str(proc.pid) in left[0].name  # SIGKILL cannot be caught: it stays ...
    assert find_stale_temporaries(out) == left
    assert out.read_bytes() == before
    # ... until the next write of the same target removes it
    data.generate(data.make_specs(1, seed=0, **SMALL), out, mode="a")
    assert _temporaries(tmp_path, "d.h5") == []
    with data.DatasetFile(out) as ds:
        assert len(ds) == 3 and ds.verify()["ok"]


@pytest.mark.slow
def test_sigterm_during_training_saves_last_pt_and_resume_finishes(tmp_path, previous):
    pytest.importorskip("psctnet")
    h5 = tmp_path / "t.h5"
    data.generate(data.make_specs(6, seed=0, grid=16, binning=96, phantom="shepp_logan", supersample=1,
                                  fractions=(4 / 6, 1 / 6, 1 / 6)), h5)
    micro = ["--set", "xray_size=16", "--set", "enc3d_widths=[8, 8]", "--set", "enc2d_widths=[8, 8]",
             "--set", "dense_layers=1", "--set", "agp_dim=16", "--set", "agp_heads=2", "--set", "disc_layers=2",
             "--set", "disc_width=8", "--set", "bim_d_state=4"]
    args = ["train", "--refiner", "psctnet", "--preset", "tiny", "--data", str(h5), "--out", str(tmp_path / "run"),
            "--epochs", "50", "--quiet", *micro]
    proc = _start(args, tmp_path)
    _wait_for(lambda: (tmp_path / "run" / "metrics.jsonl").exists(), "the first epoch", proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "last.pt holds it" in stderr and "--resume" in stderr
    _no_traceback(stderr)
    assert [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")] == []
    from tomoprior import refiners

    step = refiners.read_checkpoint(tmp_path / "run" / "last.pt")["extra"]["step"]
    assert step >= 4
    res = _run([*args[:-len(micro) - 3], "--epochs", str(step // 4 + 1), "--quiet", *micro, "--resume"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]


# -- a full disk, for real ----------------------------------------------------------------------

@contextlib.contextmanager
def _tmpfs(path: Path, size: str, readonly: bool = False):
    if not LINUX or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root on Linux")
    path.mkdir()
    opts = f"size={size}" + (",ro" if readonly else "")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


# the probe is bypassed: the disk fills under HDF5 itself (what crashed with a segfault)
_NO_PROBE = ("import sys; import tomoprior.data.h5 as h; h.disk_free = lambda folder: 10**12; "
             "from tomoprior.cli.main import main; sys.exit(main(sys.argv[1:]))")


@pytest.mark.parametrize("probe", [pytest.param(True, marks=pytest.mark.slow), False])  # True: also in-process
def test_full_disk_is_a_clean_error_not_a_crash(tmp_path, previous, probe):
    with _tmpfs(tmp_path / "small", "256k") as disk:
        out = disk / "d.h5"
        shutil.copyfile(previous, out)
        before = out.read_bytes()
        args = [*MAKE, "--n", "8", "--grid", "32", "--binning", "32", "--out", str(out)]
        if probe:
            res = _run(args, tmp_path)
        else:
            res = subprocess.run([sys.executable, "-c", _NO_PROBE, *args], cwd=tmp_path, env=_env(), text=True,
                                 capture_output=True, timeout=300)
        assert res.returncode == 2, (res.returncode, res.stderr[-3000:])
        _no_traceback(res.stderr)
        assert str(out) in res.stderr and ("disk is full" in res.stderr or "not enough disk space" in res.stderr)
        assert out.read_bytes() == before
        assert sorted(p.name for p in disk.iterdir()) == ["d.h5"]


@pytest.mark.slow
def test_read_only_folder_for_real(tmp_path, previous):
    if os.geteuid() == 0:
        ctx = _tmpfs(tmp_path / "ro", "64k", readonly=True)
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        ctx = contextlib.nullcontext(ro)
    with ctx as ro:
        res = _run([*MAKE, "--n", "1", "--grid", "16", "--binning", "96", "--out", str(ro / "d.h5")], tmp_path)
        assert res.returncode == 2 and "cannot write to the --out folder" in res.stderr, res.stderr
        _no_traceback(res.stderr)
        res = _run(["train", "--refiner", "bp-prior", "--data", str(previous), "--out", str(ro / "run")], tmp_path)
        assert res.returncode == 2 and str(ro / "run") in res.stderr, res.stderr
        _no_traceback(res.stderr)
        assert list(ro.iterdir()) == []


# -- the stale-temporary rule -------------------------------------------------------------------

def _dead_pid() -> int:
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(p.stdout)


def test_only_our_temporaries_of_dead_writers_are_removed(tmp_path):
    target = tmp_path / "d.h5"
    host, dead = _host_tag(), _dead_pid()
    old = time.time() - 2 * LEGACY_STALE_AGE_S
    files = {
        "dead writer": f".d.h5.{dead}-{host}-abcd_123.h5",
        "dead writer, dask shards": f".d.h5.{dead}-{host}-x1y2z3w4.shards",
        "live writer (this process)": f".d.h5.{os.getpid()}-{host}-abcd1234.h5",
        "live writer (the parent)": f".d.h5.{os.getppid()}-{host}-abcd1234.h5",
        "another machine": f".d.h5.{dead}-{'0' * 6 if host != '0' * 6 else '1' * 6}-abcd1234.h5",
        "another target": f".e.h5.{dead}-{host}-abcd1234.h5",
        "not our pattern": f".d.h5.{dead}-{host}-short.h5",
        "a user's file": ".d.h5.backup",
        "legacy, old": ".d.h5.k2j3h4l5.h5",
        "legacy, recent": ".d.h5.a1b2c3d4.h5",
        "legacy, other suffix": ".d.h5.q1w2e3r4.tmp",
    }
    for key, name in files.items():
        p = tmp_path / name
        if key.endswith("shards"):
            p.mkdir()
            (p / "shard-000000000.h5").write_bytes(b"x" * 10)
        else:
            p.write_bytes(b"x" * 10)
        if key.startswith("legacy") and key != "legacy, recent":
            os.utime(p, (old, old))
    expect = {"dead writer", "dead writer, dask shards"}
    if LINUX and os.geteuid() == 0:  # /proc shows every process's open files: legacy files can be judged
        expect.add("legacy, old")
    assert {p.name for p in find_stale_temporaries(target)} == {files[k] for k in expect}
    # an old legacy temporary that a process still has open is kept
    if "legacy, old" in expect:
        with open(tmp_path / files["legacy, old"], "rb"):
            assert tmp_path / files["legacy, old"] not in find_stale_temporaries(target)
    # the next atomic write of the target removes exactly those
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert {p.name for p in tmp_path.iterdir()} == {"d.h5"} | {files[k] for k in files if k not in expect}


def test_sigterm_inside_a_write_removes_the_temporary(tmp_path):
    target = tmp_path / "x.txt"
    target.write_text("old")
    with pytest.raises(Terminated) as err:
        with signals_as_exceptions(), atomic_path(target) as tmp:
            tmp.write_text("new")
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10_000):  # the handler runs between bytecodes
                pass
    assert err.value.signum == signal.SIGTERM
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.txt"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the previous handler is back


def test_a_signal_swallowed_by_a_finaliser_still_stops_the_commit(tmp_path, monkeypatch):
    """A handler's exception raised inside ``__del__`` is lost (Python would print "Exception
    ignored in ... Traceback"); the recorded signal still keeps the write from being committed,
    is raised when the block ends, and nothing is printed about the lost one."""
    printed = []
    monkeypatch.setattr(sys, "unraisablehook", printed.append)
    target = tmp_path / "x.txt"
    target.write_text("old")

    class Finaliser:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10_000):  # the handler runs here, inside __del__
                pass

    with pytest.raises(Terminated):
        with signals_as_exceptions(), atomic_path(target) as tmp:
            tmp.write_text("new")
            Finaliser()  # made and collected at once; its exception is swallowed
            tmp.write_text("newer")  # the block goes on ...
    assert target.read_text() == "old"  # ... but nothing is committed
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]
    assert printed == []  # no "Exception ignored in ..." traceback on stderr


def _swallowing_library_call(signum):
    """A third-party call with a bare ``except:`` (as SpekPy has) that receives the signal."""
    try:
        os.kill(os.getpid(), signum)
        for _ in range(100_000):  # the handler raises here ...
            pass
    except:  # noqa: E722 - ... and the library swallows it, as some do
        return None
    return 1.0


@pytest.fixture
def default_sigint():
    """Python's own Ctrl-C handler for the test: a background job (nohup, CI runners) inherits
    SIGINT ignored, and signals_as_exceptions then rightly leaves it alone."""
    saved = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, saved)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_swallowed_by_a_library_is_still_reported(signum, default_sigint):
    """The run goes on with a damaged result and fails later for another reason: the block
    reports the signal (exit 130 / 143 in the CLI), not the consequence; a block that ends
    normally after a swallowed signal raises it too."""
    expected = KeyboardInterrupt if signum == signal.SIGINT else Terminated
    with pytest.raises(expected):
        with signals_as_exceptions():
            value = _swallowing_library_call(signum)
            if value is None:
                raise ValueError("found 0 beads")  # the damage, seen downstream
    with pytest.raises(expected):
        with signals_as_exceptions():
            _swallowing_library_call(signum)
    with signals_as_exceptions():  # a clean block afterwards: nothing pending
        pass
