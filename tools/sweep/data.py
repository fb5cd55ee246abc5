"""Bad-input and fault sweep of the data area: ``tomoprior dataset make``,
``tomoprior dataset info``, ``tomoprior train`` and the HDF5 dataset API.

Each case runs in its own folder, in a subprocess (the CLI as ``python -m tomoprior ...``, API
calls as small ``python -c`` scripts), and gets one outcome:

- ``correct``: success where success is right and the result checks out, or a signal handled
  as documented (exit 128 + N, a message, nothing left behind);
- ``clean error``: the expected non-zero exit (or exception type) with a message and no
  traceback; ``message_ok`` says whether the message names the input and the fix;
- ``traceback``: a Python traceback (on stderr, or an unexpected exception type from the API);
- ``crash``: ended by a signal it did not handle (a segfault, or killed by the SIGTERM we sent
  without cleaning up);
- ``hang``: no end within the time limit;
- ``silent wrong``: exit 0 where the input is bad, or a wrong result (NaN handed on, a resumed
  run logging another loss, a damaged chunk reported as fine);
- ``files left behind``: stale temporaries, a changed previous file, worker processes still
  running after their parent died.

A full disk and a read-only folder are small tmpfs mounts (root only; skipped otherwise). It
prints a table and writes JSON. To sweep the code before the bad-input and fault handling (commit
a228eac)::

    git worktree add /tmp/before-data a228eac
    PYTHONPATH=/tmp/before-data .venv/bin/python tools/sweep/data.py --json /tmp/sweep_data_before.json
    git worktree remove --force /tmp/before-data
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from common import mount_tmpfs, record, report

PY = sys.executable


def _env() -> dict:
    env = dict(os.environ)
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    plugins = [str(Path(p) / "refiners" / "psctnet") for p in parts if (Path(p) / "refiners" / "psctnet").is_dir()]
    env["PYTHONPATH"] = os.pathsep.join([*parts, *plugins])
    env["PYTHONWARNINGS"] = "ignore"
    env["PYTHONUNBUFFERED"] = "1"
    return env


ENV = _env()

# -- fixtures, made by the code under test ---------------------------------------------------------

SETUP = textwrap.dedent(r"""
    import sys
    from pathlib import Path
    import h5py, numpy as np
    from tomoprior import data
    F = Path(sys.argv[1]); F.mkdir(parents=True, exist_ok=True)
    S = dict(phantom="shepp_logan", supersample=1)
    data.generate(data.make_specs(5, seed=1, grid=16, binning=96, fractions=(0.6, 0.2, 0.2), **S), F / "small.h5")
    data.generate(data.make_specs(6, seed=0, grid=16, binning=96, fractions=(4/6, 1/6, 1/6), **S), F / "t6.h5")
    data.generate(data.make_specs(6, seed=0, grid=32, binning=48, fractions=(4/6, 1/6, 1/6), **S), F / "t32.h5")
    data.generate(data.make_specs(3, seed=0, grid=16, binning=96, fractions=(1.0, 0.0, 0.0), **S), F / "noval.h5")
    data.generate(data.make_specs(3, seed=2, grid=16, binning=96, **S), F / "plain.h5", compression="none")
    raw = (F / "small.h5").read_bytes()
    (F / "trunc.h5").write_bytes(raw[: len(raw) // 2])
    (F / "random.h5").write_bytes(np.random.default_rng(0).bytes(5000))
    with h5py.File(F / "foreign.h5", "w") as f:
        f["x"] = np.zeros(3)

    def edited(name, src, fn):
        (F / name).write_bytes((F / src).read_bytes())
        with h5py.File(F / name, "a") as f:
            fn(f)

    def put(f, name, i, where, value):
        a = f[name][i]; a[where] = value; f[name][i] = a

    def train_rows(f):
        return [i for i, s in enumerate(f["split"][()]) if s.decode() == "train"]

    edited("v99.h5", "small.h5", lambda f: f.attrs.__setitem__("schema_version", 99))
    edited("vinf.h5", "small.h5", lambda f: f.attrs.__setitem__("schema_version", float("inf")))
    def scalar(f):
        del f["volume"]; f["volume"] = 1.0
    edited("scalar.h5", "small.h5", scalar)
    edited("infx.h5", "small.h5", lambda f: put(f, "xrays", 2, (0, 1, 1), np.inf))
    edited("nanvol.h5", "small.h5", lambda f: put(f, "volume", 1, (3, 3, 3), np.nan))
    edited("nan_t6.h5", "t6.h5", lambda f: put(f, "volume", train_rows(f)[2], (5, 6, 7), np.nan))
    # a damaged compressed chunk: sample 3's volume
    raw = bytearray((F / "small.h5").read_bytes())
    with h5py.File(F / "small.h5") as f:
        info = f["volume"].id.get_chunk_info(3)
    for k in range(info.byte_offset + 16, info.byte_offset + 48):
        raw[k] ^= 0x5A
    (F / "chunk.h5").write_bytes(bytes(raw))
    # a stored geometry that is not UTF-8 any more (uncompressed file: patch its bytes)
    raw = bytearray((F / "plain.h5").read_bytes())
    at = raw.find(b"tomoprior.geometry")
    raw[at] = 0xFF
    (F / "badutf.h5").write_bytes(bytes(raw))
""")

# an API call, reported as one JSON line: what it returned or raised
API = textwrap.dedent(r"""
    import json, sys, traceback
    from pathlib import Path
    F, W = Path(sys.argv[1]), Path(sys.argv[2])
    out = {"exc": None, "msg": "", "result": None}
    try:
        exec(sys.argv[3])
    except Exception as exc:
        out["exc"] = [c.__name__ for c in type(exc).__mro__]
        out["msg"] = str(exc)
        out["tb"] = traceback.format_exc()[-1500:]
    print("RESULT " + json.dumps(out, default=str))
""")

# the CLI with the free-space probe switched off: the disk fills under HDF5 itself
NO_PROBE = ("import sys; import tomoprior.data.h5 as h; h.disk_free = lambda folder: 10**12; "
            "from tomoprior.cli.main import main; sys.exit(main(sys.argv[1:]))")

MICRO = ["--set", "xray_size=16", "--set", "enc3d_widths=[8, 8]", "--set", "enc2d_widths=[8, 8]",
         "--set", "dense_layers=1", "--set", "agp_dim=16", "--set", "agp_heads=2", "--set", "disc_layers=2",
         "--set", "disc_width=8", "--set", "bim_d_state=4"]


@dataclasses.dataclass
class Case:
    name: str
    group: str
    argv: list | None = None       # CLI arguments; {F} fixtures folder, {W} the case's folder
    api: str | None = None         # Python statements for API (they set out["result"])
    expect: str = "error"          # "error", "success" or "signal"
    code: int = 2                  # the right exit code of an error
    words: tuple = ()              # what the message must name
    previous: str | None = None    # fixture copied to {W}/out/d.h5 first; must stay intact
    mount: str | None = None       # "full" or "ro": {W}/out is a small tmpfs
    signal: str | None = None      # "TERM", "INT" or "KILL", sent once `ready` holds
    ready: str = "temp"            # "temp": a sample in the temporary; "ckpt": {W}/run/last.pt exists
    check: str | None = None       # extra check of a success (see _check)
    probe_off: bool = False        # run the CLI with the free-space probe switched off
    timeout: float = 300.0


def _cases() -> list[Case]:
    mk = ["dataset", "make", "--phantom", "shepp_logan", "--quiet", "--grid", "16", "--binning", "96"]
    out = ["--out", "{W}/out/d.h5"]
    tr = ["train", "--refiner", "psctnet", "--preset", "tiny", "--epochs", "1", "--quiet", *MICRO]
    c = [
        Case("make: valid (control)", "make", [*mk, "--n", "2", *out], expect="success", check="h5:2"),
        Case("make: --n 0", "make", [*mk, "--n", "0", *out], words=("--n",)),
        Case("make: --grid 7", "make", [*mk, "--n", "1", *out, "--grid", "7"], words=("--grid",)),
        Case("make: --binning 7", "make", [*mk, "--n", "1", *out, "--binning", "7"], words=("binning",)),
        Case("make: --ages 2,1", "make", [*mk, "--n", "1", *out, "--ages", "2,1"], words=("age",)),
        Case("make: --split 0.5,0.5", "make", [*mk, "--n", "1", *out, "--split", "0.5,0.5"], words=("--split",)),
        Case("make: --perturb zz=1", "make", [*mk, "--n", "1", *out, "--perturb", "zz=1"], words=("zz",)),
        Case("make: --intensity gain", "make", [*mk, "--n", "1", *out, "--intensity", "gain"],
             words=("--intensity",)),
        Case("make: --variants bogus", "make", [*mk, "--n", "1", *out, "--variants", "bogus"], words=("bogus",)),
        Case("make: --photons without --kind radiograph", "make", [*mk, "--n", "1", *out, "--photons", "5"],
             words=("--kind",)),
        Case("make: --append to a missing file", "make", [*mk, "--n", "1", *out, "--append"], words=("d.h5",)),
        Case("make: --append to random bytes", "make", [*mk, "--n", "1", *out, "--append"], previous="random.h5",
             words=("d.h5",)),
        Case("make: --out is a folder", "make", [*mk, "--n", "1", "--out", "{W}/out"], words=("out",)),
        Case("make: --out in a missing folder", "make", [*mk, "--n", "1", "--out", "{W}/nope/d.h5"],
             words=("nope", "does not exist")),
        Case("make: read-only folder", "make", [*mk, "--n", "1", *out], mount="ro", words=("out", "writable")),
        Case("make: full disk", "make", [*mk, "--n", "8", "--grid", "32", "--binning", "32", *out], mount="full",
             previous="small.h5", words=("d.h5", "disk")),
        Case("make: full disk under HDF5 (probe off)", "make", [*mk, "--n", "8", "--grid", "32", "--binning", "32",
                                                                *out], mount="full", previous="small.h5",
             probe_off=True, words=("d.h5", "disk")),
        Case("make: SIGTERM mid-write, 2 workers", "make", [*mk, "--n", "40", "--grid", "40", "--binning", "32",
                                                            "--workers", "2", *out], expect="signal", signal="TERM",
             previous="small.h5"),
        Case("make: SIGINT mid-write, 2 workers", "make", [*mk, "--n", "40", "--grid", "40", "--binning", "32",
                                                           "--workers", "2", *out], expect="signal", signal="INT",
             previous="small.h5"),
        Case("make: kill -9 mid-write, 2 workers, then again", "make",
             [*mk, "--n", "40", "--grid", "40", "--binning", "32", "--workers", "2", *out], expect="signal",
             signal="KILL", previous="small.h5"),
        Case("info: valid (control)", "info", ["dataset", "info", "{F}/small.h5"], expect="success"),
        Case("info: missing file", "info", ["dataset", "info", "{W}/none.h5"], words=("none.h5",)),
        Case("info: random bytes", "info", ["dataset", "info", "{F}/random.h5"], words=("random.h5",)),
        Case("info: truncated file", "info", ["dataset", "info", "{F}/trunc.h5"], words=("trunc.h5",)),
        Case("info: foreign HDF5", "info", ["dataset", "info", "{F}/foreign.h5"], words=("foreign.h5",)),
        Case("info: schema_version 99", "info", ["dataset", "info", "{F}/v99.h5"], words=("schema_version",)),
        Case("info: schema_version inf", "info", ["dataset", "info", "{F}/vinf.h5"], words=("schema_version",)),
        Case("info: scalar /volume", "info", ["dataset", "info", "{F}/scalar.h5"], words=("volume",)),
        Case("info --verify: valid (control)", "info", ["dataset", "info", "{F}/small.h5", "--verify"],
             expect="success"),
        Case("info --verify: inf in X-rays", "info", ["dataset", "info", "{F}/infx.h5", "--verify"], code=1,
             words=("sample 2", "inf")),
        Case("info --verify: NaN in a volume", "info", ["dataset", "info", "{F}/nanvol.h5", "--verify"], code=1,
             words=("sample 1", "NaN")),
        Case("info --verify: damaged chunk", "info", ["dataset", "info", "{F}/chunk.h5", "--verify"],
             words=("sample 3", "cannot be read")),
        Case("api: read every sample of byte-flipped files", "api", api=FLIPS, expect="success"),
        Case("api: DatasetFile.read of a NaN sample", "api",
             api="from tomoprior import data\nwith data.DatasetFile(F / 'nanvol.h5') as ds:\n"
                 "    s = ds.read(1); out['result'] = bool(s.volume.isnan().any())",
             words=("nanvol.h5", "sample 1")),
        Case("api: TomopriorDataset item of a NaN sample", "api",
             api="from tomoprior import data\nd = data.TomopriorDataset(F / 'nanvol.h5')\n"
                 "out['result'] = bool(d[1]['volume'].isnan().any())", words=("nanvol.h5", "sample 1")),
        Case("api: DatasetFile, schema_version inf", "api",
             api="from tomoprior import data\ndata.DatasetFile(F / 'vinf.h5')", words=("vinf.h5",)),
        Case("api: DatasetFile, scalar /volume", "api",
             api="from tomoprior import data\ndata.DatasetFile(F / 'scalar.h5')", words=("scalar.h5",)),
        Case("api: DatasetFile.read, geometry not UTF-8", "api",
             api="from tomoprior import data\nwith data.DatasetFile(F / 'badutf.h5') as ds:\n"
                 "    [ds.read(i) for i in range(len(ds))]", words=("badutf.h5",)),
        Case("api: DatasetWriter, ENOSPC from HDF5", "api", api=ENOSPC, previous="small.h5",
             words=("d.h5", "disk is full")),
        Case("train: valid bp-prior (control)", "train",
             ["train", "--refiner", "bp-prior", "--data", "{F}/small.h5", "--out", "{W}/run", "--quiet"],
             expect="success", check="best"),
        Case("train: no validation samples", "train", [*tr, "--data", "{F}/noval.h5", "--out", "{W}/run"],
             words=("val", "--split")),
        Case("train: --lr 1e30", "train", [*tr, "--data", "{F}/t6.h5", "--out", "{W}/run", "--lr", "1e30"], code=1,
             words=("--lr", "diverged")),
        Case("train: --preset paper on 32^3 data", "train",
             ["train", "--refiner", "psctnet", "--preset", "paper", "--data", "{F}/t32.h5", "--out", "{W}/run",
              "--epochs", "1", "--quiet"], words=("paper", "--grid 64")),
        Case("train: NaN in a training volume", "train", [*tr, "--data", "{F}/nan_t6.h5", "--out", "{W}/run"],
             words=("nan_t6.h5", "sample", "NaN")),
        Case("train: truncated data", "train", [*tr, "--data", "{F}/trunc.h5", "--out", "{W}/run"],
             words=("trunc.h5",)),
        Case("train: --out is a file", "train", [*tr, "--data", "{F}/t6.h5", "--out", "{F}/small.h5"],
             words=("small.h5",)),
        Case("train: read-only --out", "train", [*tr, "--data", "{F}/t6.h5", "--out", "{W}/out/run"], mount="ro",
             words=("run", "writable")),
        Case("train: --device cuda:x", "train", [*tr, "--data", "{F}/t6.h5", "--out", "{W}/run", "--device",
                                                 "cuda:x"], words=("device",)),
        Case("train: kill -9 mid-epoch, --resume: logged loss", "train",
             ["train", "--refiner", "psctnet", "--preset", "tiny", "--quiet", *MICRO, "--data", "{F}/t6.h5",
              "--epochs", "2", "--save-every", "1"], expect="signal", signal="KILL", ready="ckpt", check="resume"),
        Case("train: SIGTERM mid-epoch", "train",
             ["train", "--refiner", "psctnet", "--preset", "tiny", "--quiet", *MICRO, "--data", "{F}/t6.h5",
              "--epochs", "50", "--out", "{W}/run"], expect="signal", signal="TERM", ready="ckpt0"),
    ]
    return c


FLIPS = textwrap.dedent(r"""
    import numpy as np
    from tomoprior import data
    raw = (F / "small.h5").read_bytes()
    with data.DatasetFile(F / "small.h5") as ds:
        ref = [ds.volume(i) for i in range(len(ds))]
    tally = {"refused": 0, "same": 0, "different": 0, "other": []}
    for seed in range(30):
        rng = np.random.default_rng(seed)
        b = bytearray(raw)
        for k in rng.integers(0, len(b), 4):
            b[k] ^= int(rng.integers(1, 256))
        p = W / f"flip{seed}.h5"
        p.write_bytes(bytes(b))
        try:
            with data.DatasetFile(p) as ds:
                got = [ds.read(i).volume.numpy() for i in range(len(ds))]
            same = len(got) == len(ref) and all(np.array_equal(a, r) for a, r in zip(got, ref))
            tally["same" if same else "different"] += 1
        except ValueError as exc:
            if str(p) in str(exc):
                tally["refused"] += 1
            else:
                tally["other"].append("ValueError without the file name: " + str(exc)[:100])
        except Exception as exc:
            tally["other"].append(f"{type(exc).__name__}: {str(exc)[:100]}")
        p.unlink()
    out["result"] = tally
""")

ENOSPC = textwrap.dedent(r"""
    import errno, h5py
    from tomoprior import data
    real = h5py.Dataset.__setitem__
    n = {"v": 0}
    def setitem(self, key, value):
        if self.name == "/volume":
            n["v"] += 1
            if n["v"] == 2:
                raise OSError(errno.ENOSPC, "Can't synchronously write data (file write failed: errno = 28, "
                                            "error message = 'No space left on device')")
        return real(self, key, value)
    h5py.Dataset.__setitem__ = setitem
    data.generate(data.make_specs(3, seed=0, grid=16, binning=96, phantom="shepp_logan", supersample=1),
                  W / "out" / "d.h5")
""")


# -- running one case --------------------------------------------------------------------------------

def _fill(args, fix: Path, work: Path) -> list[str]:
    return [a.replace("{F}", str(fix)).replace("{W}", str(work)) for a in args]


def _temporaries(work: Path) -> list[str]:
    return sorted(str(p.relative_to(work)) for p in work.rglob(".*") if not p.name.startswith(".nfs"))


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            pass
    return kids


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _ready(case: Case, work: Path) -> bool:
    if case.ready == "temp":
        return any(p.is_file() and p.stat().st_size > 20_000 for p in (work / "out").glob(".d.h5.*"))
    if case.ready == "ckpt0":
        return (work / "run" / "metrics.jsonl").exists()
    return (work / "run" / "last.pt").exists()


def run_case(case: Case, fix: Path, root: Path) -> dict:
    work = Path(tempfile.mkdtemp(prefix="case-", dir=root))
    (work / "out").mkdir()
    mounted = False
    if case.mount:
        mounted = mount_tmpfs(work / "out", "ro,size=64k" if case.mount == "ro" else "size=256k")
        if not mounted:
            return {"name": case.name, "group": case.group, "category": "skipped", "note": "cannot mount a tmpfs"}
    try:
        return _run(case, fix, work)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(work / "out")], check=False)


def _run(case: Case, fix: Path, work: Path) -> dict:
    before = None
    if case.previous:
        shutil.copyfile(fix / case.previous, work / "out" / "d.h5")
        before = (work / "out" / "d.h5").read_bytes()
    argv = _fill(case.argv or [], fix, work)
    if case.check == "resume":
        argv += ["--out", str(work / "run")]
    if case.api is not None:
        cmd = [PY, "-c", API, str(fix), str(work), case.api]
    elif case.probe_off:
        cmd = [PY, "-c", NO_PROBE, *argv]
    else:
        cmd = [PY, "-m", "tomoprior", *argv]
    t0 = time.perf_counter()
    # a sweep started in the background inherits an ignored SIGINT: give the case the default back
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=work,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    sent, workers, orphans = None, [], []
    if case.signal:
        end = time.monotonic() + case.timeout
        while time.monotonic() < end and proc.poll() is None and not _ready(case, work):
            time.sleep(0.1)
        if proc.poll() is None:
            workers = _children(proc.pid)
            sent = getattr(signal, f"SIG{case.signal}")
            proc.send_signal(sent)
    try:
        stdout, stderr = proc.communicate(timeout=case.timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        return record(case, "hang", None, stdout, stderr, t0, note=f"no end after {case.timeout:.0f} s")
    rc = proc.returncode
    if workers:  # pool workers must not outlive their parent for long
        end = time.monotonic() + 5.0
        while time.monotonic() < end and any(_alive(p) for p in workers if p != proc.pid):
            time.sleep(0.1)
        orphans = [p for p in workers if _alive(p)]
        for p in orphans:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
    if case.signal:
        return _signal_outcome(case, fix, work, argv, rc, sent, stdout, stderr, t0, before, orphans)
    damaged = ["out/d.h5 changed"] if before is not None and (
        not (work / "out" / "d.h5").exists() or (work / "out" / "d.h5").read_bytes() != before) else []
    left = _temporaries(work) + damaged
    if rc is not None and rc < 0:
        return record(case, "crash", rc, stdout, stderr, t0, note=f"signal {-rc}")
    if case.api is not None:
        return _api_outcome(case, rc, stdout, stderr, t0, left)
    if "Traceback (most recent call last)" in stderr:
        return record(case, "traceback", rc, stdout, stderr, t0, leftovers=left)
    if rc in (139, 134, 136):  # a shell-style crash code
        return record(case, "crash", rc, stdout, stderr, t0)
    if left:
        return record(case, "files left behind", rc, stdout, stderr, t0, leftovers=left)
    if case.expect == "error":
        no_verify = "No such option" in stderr and "--verify" in stderr
        if rc == 0 and "--verify" in argv:
            return record(case, "silent wrong", rc, stdout, stderr, t0, note="exit 0: the bad data is not reported")
        if rc == 2 and no_verify:  # a CLI without --verify: what does plain info say?
            again = subprocess.run([PY, "-m", "tomoprior", *[a for a in argv if a != "--verify"]], capture_output=True,
                                   text=True, env=ENV, cwd=work, timeout=case.timeout)
            if again.returncode == 0:
                return record(case, "silent wrong", again.returncode, again.stdout, again.stderr, t0,
                               note="no --verify; plain info exits 0 and reports nothing")
            stdout, stderr, rc = again.stdout, again.stderr, again.returncode
        if rc == 0:
            silent = case.name.startswith("train: no validation") and not (work / "run" / "best.pt").exists()
            return record(case, "silent wrong", rc, stdout, stderr, t0,
                           note="exit 0 without best.pt or validation" if silent else "exit 0 on bad input")
        text = stdout + stderr
        ok = rc == case.code and all(w in text for w in case.words)
        return record(case, "clean error", rc, stdout, stderr, t0, message_ok=ok,
                       note="" if rc == case.code else f"exit {rc}, expected {case.code}")
    if rc == 2 and "No such option" in stderr and "--verify" in stderr:  # a CLI without --verify
        again = subprocess.run([PY, "-m", "tomoprior", *[a for a in argv if a != "--verify"]], capture_output=True,
                               text=True, env=ENV, cwd=work, timeout=case.timeout)
        stdout, stderr, rc = again.stdout, again.stderr, again.returncode
    if rc != 0:
        return record(case, "clean error", rc, stdout, stderr, t0, note="expected success")
    good, why = _check(case.check, work, fix)
    return record(case, "correct" if good else "silent wrong", rc, stdout, stderr, t0, note=why)


def _api_outcome(case, rc, stdout, stderr, t0, left) -> dict:
    line = next((x for x in stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        return record(case, "crash" if rc else "traceback", rc, stdout, stderr, t0, note="no result line")
    res = json.loads(line[7:])
    if left:
        return record(case, "files left behind", rc, stdout, stderr, t0, leftovers=left)
    if case.expect == "success":  # the byte-flip tally
        t = res["result"] or {}
        if res["exc"] or t.get("other"):
            return record(case, "traceback", rc, stdout, stderr, t0, note=str(t.get("other") or res["msg"])[:300])
        if t.get("different"):
            return record(case, "silent wrong", rc, stdout, stderr, t0, note=f"{t}")
        return record(case, "correct", rc, stdout, stderr, t0, note=f"{t}")
    if res["exc"] is None:
        return record(case, "silent wrong", rc, stdout, stderr, t0, note=f"returned {res['result']!r}")
    expected = "OSError" if "ENOSPC" in case.name else "ValueError"
    if expected not in res["exc"]:
        return record(case, "traceback", rc, stdout, res.get("tb", ""), t0,
                       note=f"{res['exc'][0]}: {res['msg'][:200]}")
    ok = all(w in res["msg"] for w in case.words)
    return record(case, "clean error", rc, stdout, res["msg"], t0, message_ok=ok, note=f"{res['exc'][0]}")


def _signal_outcome(case, fix, work, argv, rc, sent, stdout, stderr, t0, before, orphans) -> dict:
    if sent is None:
        return record(case, "hang" if rc is None else "clean error", rc, stdout, stderr, t0,
                       note="ended before the signal could be sent")
    notes = []
    if case.signal == "KILL":
        if case.check == "resume":
            return _resume_outcome(case, fix, work, argv, rc, stdout, stderr, t0)
        again = subprocess.run([PY, "-m", "tomoprior", *argv], capture_output=True, text=True, env=ENV, cwd=work,
                               timeout=case.timeout)
        notes.append(f"killed; the next run exits {again.returncode}")
        stderr_all = stderr + again.stderr
        left = _temporaries(work)
        if orphans:
            return record(case, "files left behind", rc, stdout, stderr_all, t0, leftovers=left,
                           note=f"{len(orphans)} worker(s) alive 5 s after their parent was killed")
        if left:
            return record(case, "files left behind", rc, stdout, stderr_all, t0, leftovers=left,
                           note="the next run left the killed run's temporary")
        if "Traceback" in again.stderr:
            return record(case, "traceback", again.returncode, again.stdout, again.stderr, t0)
        return record(case, "correct" if again.returncode == 0 else "clean error", rc, stdout, stderr_all, t0,
                       note="; ".join(notes))
    left = _temporaries(work)
    if before is not None and (work / "out" / "d.h5").read_bytes() != before:
        left.append("out/d.h5 changed")
    if "Traceback (most recent call last)" in stderr:
        return record(case, "traceback", rc, stdout, stderr, t0, leftovers=left)
    if orphans:
        return record(case, "files left behind", rc, stdout, stderr, t0, leftovers=left,
                       note=f"{len(orphans)} worker(s) alive 5 s after the parent ended")
    if left:
        return record(case, "files left behind", rc, stdout, stderr, t0, leftovers=left)
    if rc == -sent:
        return record(case, "crash", rc, stdout, stderr, t0, note=f"died of SIG{case.signal} without handling it")
    handled = rc == 128 + sent and "interrupted" in stderr
    if case.ready == "ckpt0" and handled and not (work / "run" / "last.pt").exists():
        handled = False
    return record(case, "correct" if handled else "clean error", rc, stdout, stderr, t0,
                   message_ok=handled, note="" if handled else f"exit {rc}")


def _resume_outcome(case, fix, work, argv, rc, stdout, stderr, t0) -> dict:
    """Resume the killed run; its logged epoch losses must equal an uninterrupted run's."""
    again = subprocess.run([PY, "-m", "tomoprior", *argv, "--resume"], capture_output=True, text=True, env=ENV,
                           cwd=work, timeout=case.timeout)
    straight_argv = [a if a != str(work / "run") else str(work / "straight") for a in argv]
    straight = subprocess.run([PY, "-m", "tomoprior", *straight_argv], capture_output=True, text=True, env=ENV,
                              cwd=work, timeout=case.timeout)
    if again.returncode or straight.returncode:
        cat = "traceback" if "Traceback" in again.stderr + straight.stderr else "clean error"
        return record(case, cat, again.returncode, again.stdout, again.stderr + straight.stderr, t0,
                       note="resume or the reference run failed")
    left = _temporaries(work)

    def losses(run):
        return [json.loads(x).get("train_loss") for x in (work / run / "metrics.jsonl").read_text().splitlines()]

    a, b = losses("run"), losses("straight")
    if left:
        return record(case, "files left behind", rc, stdout, stderr, t0, leftovers=left)
    return record(case, "correct" if a == b else "silent wrong", rc, stdout, stderr, t0,
                   note=f"epoch train_loss resumed {a} vs uninterrupted {b}")


def _check(kind: str | None, work: Path, fix: Path) -> tuple[bool, str]:
    if kind is None:
        return True, ""
    if kind.startswith("h5:"):
        code = ("import sys; from tomoprior import data\nwith data.DatasetFile(sys.argv[1]) as ds:\n"
                "    import numpy as np; assert len(ds) == int(sys.argv[2])\n"
                "    assert all(np.isfinite(ds.volume(i)).all() for i in range(len(ds)))")
        r = subprocess.run([PY, "-c", code, str(work / "out" / "d.h5"), kind[3:]], capture_output=True, text=True,
                           env=ENV)
        return r.returncode == 0, r.stderr[-200:]
    if kind == "best":
        return (work / "run" / "best.pt").is_file(), "best.pt written"
    return False, f"unknown check {kind}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=Path("sweep_data.json"), help="where to write the results")
    ap.add_argument("--only", default=None, help="run only the cases whose name contains this text")
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="sweep-data-"))
    try:
        fix = root / "fixtures"
        r = subprocess.run([PY, "-c", SETUP, str(fix)], capture_output=True, text=True, env=ENV, timeout=900)
        if r.returncode:
            print(r.stderr, file=sys.stderr)
            return 2
        code = subprocess.run([PY, "-c", "import tomoprior; print(tomoprior.__file__)"], capture_output=True,
                              text=True, env=ENV).stdout.strip()
        results = []
        for case in _cases():
            if args.only and args.only not in case.name:
                continue
            res = run_case(case, fix, root)
            results.append(res)
            flag = "" if res.get("message_ok") in (None, True) else " (message misses the input or the fix)"
            print(f"{res['category']:<18} {res['name']}{flag}  {res.get('note', '')}"[:220], flush=True)
        report(results, code, args.json)
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
