"""Bad-input and fault sweep of the refiners area: checkpoints, refiner configs,
``tomoprior reconstruct`` and ``tomoprior evaluate``.

Every case runs in a fresh folder, in a subprocess (the CLI as ``python -m tomoprior ...``, API
calls through a small wrapper), and is classified as one of:

- ``correct``: exit 0 and the result checks out (only cases where success is the right answer);
- ``clean error``: a non-zero exit with a message and no traceback (``message_ok`` says whether
  it names what the case expects: the input and the fix);
- ``traceback``: a Python traceback on stderr;
- ``crash``: killed by a signal nobody sent;
- ``hang``: no end within the time limit;
- ``silent wrong``: exit 0 where the input is bad or the result is wrong;
- ``files left behind``: stale temporaries, half of a file pair, or a damaged previous file.

It prints a table and writes JSON. To sweep another checkout (e.g. commit a228eac, before the bad-input and fault
handling)::

    git worktree add /tmp/before-refiners a228eac
    PYTHONPATH=/tmp/before-refiners python tools/sweep/refiners.py --json /tmp/sweep_before.json
    git worktree remove --force /tmp/before-refiners

Every ``PYTHONPATH`` entry that holds ``refiners/psctnet`` also puts that plugin first on the
path, so the old plugin (and its demo weights) is swept with the old library.
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


def _env() -> dict:
    env = dict(os.environ)
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    extra = [str(Path(p) / "refiners" / "psctnet") for p in parts if (Path(p) / "refiners" / "psctnet").is_dir()]
    env["PYTHONPATH"] = os.pathsep.join([*parts, *extra])
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONWARNINGS"] = "ignore::DeprecationWarning"
    return env


ENV = _env()
PY = sys.executable

# -- fixtures (made with the code under test) ------------------------------------------------------

SETUP = textwrap.dedent(r"""
    import sys, json, struct, zipfile, io
    from pathlib import Path
    import numpy as np, torch
    import tomoprior as tp
    from tomoprior import data, refiners
    out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
    # a small case: 16^3 grid, two 48^2 views, line integrals of a cube
    geom = tp.BiplanarGeometry.from_parameters(binning=32, grid=tp.VolumeGrid((16, 16, 16), (12, 12, 12)))
    geom.save(out / "geom.yaml")
    vol = torch.zeros(16, 16, 16); vol[4:12, 4:12, 4:12] = 0.02
    xr = tp.project(vol, geom).numpy()
    np.save(out / "v0.npy", xr[0]); np.save(out / "v1.npy", xr[1])
    np.save(out / "neg.npy", -xr[0]); np.save(out / "cplx.npy", xr[0].astype(np.complex64))
    np.save(out / "boolimg.npy", xr[0] > 0.1); np.save(out / "nan.npy", np.where(xr[0] > 1, np.nan, xr[0]))
    np.save(out / "cube3d.npy", xr); np.save(out / "huge.npy", xr[0] * 1e6)
    np.save(out / "obj.npy", np.array([1, "a"], dtype=object), allow_pickle=True)
    np.save(out / "s0.npy", xr[0][::2, ::2]); np.save(out / "s1.npy", xr[1][::2, ::2])
    (out / "empty.npy").write_bytes(b""); (out / "empty.png").write_bytes(b"")
    (out / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    (out / "garbage.yaml").write_text("grid: [1, 2\nviews: {")
    from PIL import Image
    counts = np.round(60000 * np.exp(-xr)).astype(np.uint16)
    Image.fromarray(counts[0]).save(out / "i0.png"); Image.fromarray(counts[1]).save(out / "i1.png")
    rgb = np.repeat((counts[0] // 256).astype(np.uint8)[..., None], 3, axis=2)
    Image.fromarray(rgb).save(out / "rgb0.png")
    # a dataset for evaluate
    specs = data.make_specs(4, seed=3, grid=16, binning=48, variants=["normal", "sagittal"],
                            fractions=(0.5, 0.0, 0.5), supersample=1)
    data.generate(specs, out / "tiny.h5")
    # checkpoints derived from the shipped demo weights, edited as a user or a bad disk would
    import psctnet
    demo = psctnet.PSCTNet.demo_checkpoint()
    raw = demo.read_bytes()
    seal = getattr(refiners, "seal_checkpoint", lambda ck: ck)  # checksums, where the code under test has them
    def edited(name, fn, sealed=False):
        ck = torch.load(demo, weights_only=False)
        fn(ck)
        torch.save(seal(ck) if sealed else ck, out / name)
    def format1(ck):  # as tomoprior wrote checkpoints before the checksums
        ck["format_version"] = 1
        ck.pop("weights_sha256", None), ck.pop("config_sha256", None)
    flipped = bytearray(raw)
    for info in zipfile.ZipFile(io.BytesIO(raw)).infolist():
        if "/data/" in info.filename and info.file_size >= 8:
            n, m = struct.unpack("<HH", flipped[info.header_offset + 26:info.header_offset + 30])
            s = info.header_offset + 30 + n + m + 4
            flipped[s:s + 4] = bytes(b ^ 0xFF for b in flipped[s:s + 4])
    (out / "flipped.pt").write_bytes(bytes(flipped))
    (out / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    (out / "zero.pt").write_bytes(b"")
    (out / "random.pt").write_bytes(bytes((i * 7919) % 256 for i in range(4096)))
    torch.save([1, 2, 3], out / "foreign.pt")
    # edits that damage a file (not re-sealed) and checkpoints another writer could have made (sealed)
    edited("no_output_scale.pt", lambda ck: ck["state_dict"].pop("output_scale"))
    edited("no_output_scale_v1.pt", lambda ck: (format1(ck), ck["state_dict"].pop("output_scale")))
    edited("missing_key.pt", lambda ck: ck["state_dict"].pop("head.bias"), sealed=True)
    edited("unexpected_key.pt", lambda ck: ck["state_dict"].__setitem__("extra.weight", torch.zeros(3)), sealed=True)
    edited("shape.pt", lambda ck: ck["state_dict"].__setitem__("head.weight", torch.zeros(2, 2)), sealed=True)
    edited("future.pt", lambda ck: ck.__setitem__("format_version", 99))
    edited("version_str.pt", lambda ck: ck.__setitem__("format_version", "2"))
    edited("banana_cfg.pt", lambda ck: ck["config"].__setitem__("use_bim", "banana"), sealed=True)
    def nan(ck):
        ck["state_dict"]["head.weight"] = torch.full_like(ck["state_dict"]["head.weight"], float("nan"))
    edited("nan_weights.pt", nan, sealed=True)
    # NaN weights of a network for the 16^3 dataset (evaluate)
    net = psctnet.PSCTNet(preset="tiny", volume_shape=(16, 16, 16), xray_size=16, enc3d_widths=(8, 8),
                          enc2d_widths=(8, 8), dense_layers=1, agp_dim=16, agp_heads=2, bim_d_state=4)
    ck = net.checkpoint_dict()
    ck["state_dict"]["stem3d.0.weight"] = torch.full_like(ck["state_dict"]["stem3d.0.weight"], float("nan"))
    torch.save(seal(ck), out / "nan16.pt")  # a diverged training, saved without a check
    net.save_checkpoint(out / "good16.pt")
    raw16 = bytearray((out / "good16.pt").read_bytes())
    for info in zipfile.ZipFile(io.BytesIO(bytes(raw16))).infolist():
        if "/data/" in info.filename and info.file_size >= 8:
            n, m = struct.unpack("<HH", raw16[info.header_offset + 26:info.header_offset + 30])
            s = info.header_offset + 30 + n + m
            raw16[s:s + 4] = bytes(b ^ 0xFF for b in raw16[s:s + 4])
    (out / "flipped16.pt").write_bytes(bytes(raw16))
    ok = refiners.load("bp-prior", normalization="chord", gain=1.1)
    ok.save_checkpoint(out / "bp.pt")
    print(json.dumps({"demo": str(demo)}))
""")

# API calls: ``result`` is what the call returned (summarised); ValueError/TypeError -> exit 2.
API = textwrap.dedent(r"""
    import sys, json, warnings
    warnings.simplefilter("ignore")
    code = sys.argv[1]
    ns = {}
    try:
        exec(code, ns)
    except (ValueError, TypeError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(ns.get("result"), default=str))
""")

# Injections run before ``tomoprior.cli.main``: argv[1] is a marker file, argv[2] the injection.
INJECT = textwrap.dedent(r"""
    import sys, time, errno
    from pathlib import Path
    marker, how = Path(sys.argv[1]), sys.argv[2]
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    savefig = Figure.savefig
    def slow_savefig(self, *a, **k):
        savefig(self, *a, **k)
        marker.write_text("writing")
        time.sleep(300)
    def failing_savefig(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    if how == "pause-png":
        Figure.savefig = slow_savefig
    elif how == "fail-png":
        Figure.savefig = failing_savefig
    elif how == "pause-eval":
        import tomoprior.studies.evaluation as ev
        run = ev._run_refiner
        def slow(*a, **k):
            out = run(*a, **k)
            marker.write_text("running")
            time.sleep(300)
            return out
        ev._run_refiner = slow
    from tomoprior.cli.main import main
    sys.exit(main(sys.argv[3:]))
""")


@dataclasses.dataclass
class Case:
    name: str
    group: str
    argv: list | None = None          # tomoprior CLI arguments ({F} = fixtures, {W} = work folder)
    api: str | None = None            # Python code for the API wrapper
    expect: str = "error"             # "error" or "success"
    words: tuple = ()                 # the error message must name these
    outputs: tuple = ()               # files that must appear together (success) or not at all (error)
    previous: bool = False            # make the outputs first; they must survive the case intact
    inject: str | None = None         # "pause-png", "fail-png", "pause-eval"
    signal: str | None = None         # "TERM" or "KILL" once the injection pauses
    check: str | None = None          # extra success check (see _check)
    mount: str | None = None          # "ro" or "full": the work folder's "out" is a tmpfs
    timeout: float = 240.0


def _cases() -> list[Case]:
    g, a, b = "{F}/geom.yaml", "{F}/v0.npy", "{F}/v1.npy"
    rec = ["reconstruct", "--geometry", g, "--refiner", "bp-prior", "--out", "{W}/out/v.nii.gz"]
    pair = ("out/v.nii.gz", "out/v.png")
    demo = ["reconstruct", "--demo", "--out", "{W}/out/d.nii.gz"]
    demo_pair = ("out/d.nii.gz", "out/d.png", "out/d_phantom.png")
    ev = ["evaluate", "--data", "{F}/tiny.h5", "--quiet"]
    cases = [
        # checkpoints
        Case("ckpt: 4 bytes flipped in every tensor (demo)", "checkpoint", [*demo, "--checkpoint", "{F}/flipped.pt"],
             words=("flipped.pt",), outputs=demo_pair),
        Case("ckpt: no output_scale in the state dict", "checkpoint",
             [*demo, "--checkpoint", "{F}/no_output_scale.pt"], words=("no_output_scale.pt",), outputs=demo_pair),
        Case("ckpt: format-1 file without output_scale", "checkpoint",
             [*demo, "--checkpoint", "{F}/no_output_scale_v1.pt"], words=("no_output_scale_v1.pt", "output_scale"),
             outputs=demo_pair),
        Case("ckpt: a state_dict key missing", "checkpoint", [*demo, "--checkpoint", "{F}/missing_key.pt"],
             words=("missing_key.pt", "head.bias"), outputs=demo_pair),
        Case("ckpt: an unexpected state_dict key", "checkpoint", [*demo, "--checkpoint", "{F}/unexpected_key.pt"],
             words=("unexpected_key.pt", "extra.weight"), outputs=demo_pair),
        Case("ckpt: a tensor of another shape", "checkpoint", [*demo, "--checkpoint", "{F}/shape.pt"],
             words=("shape.pt", "head.weight"), outputs=demo_pair),
        Case("ckpt: truncated to half", "checkpoint", [*demo, "--checkpoint", "{F}/truncated.pt"],
             words=("truncated.pt", "truncated"), outputs=demo_pair),
        Case("ckpt: zero bytes", "checkpoint", [*demo, "--checkpoint", "{F}/zero.pt"],
             words=("zero.pt", "empty"), outputs=demo_pair),
        Case("ckpt: random bytes", "checkpoint", [*demo, "--checkpoint", "{F}/random.pt"], words=("random.pt",),
             outputs=demo_pair),
        Case("ckpt: a torch file that is no checkpoint", "checkpoint", [*demo, "--checkpoint", "{F}/foreign.pt"],
             words=("foreign.pt", "not a tomoprior refiner checkpoint"), outputs=demo_pair),
        Case("ckpt: format_version 99", "checkpoint", [*demo, "--checkpoint", "{F}/future.pt"],
             words=("future.pt", "upgrade tomoprior"), outputs=demo_pair),
        Case("ckpt: format_version '2' (a string)", "checkpoint", [*demo, "--checkpoint", "{F}/version_str.pt"],
             words=("version_str.pt",), outputs=demo_pair),
        Case("ckpt: config use_bim='banana'", "checkpoint", [*demo, "--checkpoint", "{F}/banana_cfg.pt"],
             words=("banana_cfg.pt", "use_bim"), outputs=demo_pair),
        Case("ckpt: NaN weights", "checkpoint", [*demo, "--checkpoint", "{F}/nan_weights.pt"],
             words=("nan_weights.pt", "not finite", "head.weight"), outputs=demo_pair),
        Case("ckpt API: from_checkpoint(flipped)", "checkpoint",
             api="from tomoprior.refiners import Refiner\nRefiner.from_checkpoint('{F}/flipped.pt')\nresult='loaded'",
             words=("flipped.pt",)),
        Case("ckpt API: from_checkpoint(missing key)", "checkpoint",
             api="from tomoprior.refiners import Refiner\nRefiner.from_checkpoint('{F}/missing_key.pt')\n"
                 "result='loaded'", words=("missing_key.pt", "head.bias")),
        Case("ckpt: the shipped demo weights", "checkpoint", [*demo], expect="success", outputs=demo_pair,
             check="demo-psnr"),
        # config types
        Case("config: --set use_bim=banana", "config",
             ["reconstruct", "--demo", "--refiner", "psctnet", "--set", "use_bim=banana", "--out", "{W}/out/d.nii.gz"],
             words=("use_bim", "banana"), outputs=demo_pair),
        Case("config: --set enc3d_widths=banana", "config",
             ["reconstruct", "--demo", "--refiner", "psctnet", "--set", "enc3d_widths=banana", "--out",
              "{W}/out/d.nii.gz"], words=("enc3d_widths",), outputs=demo_pair),
        Case("config: --set clamp_min=banana (bp-prior)", "config", [*rec, a, b, "--set", "clamp_min=banana"],
             words=("clamp_min", "banana"), outputs=pair),
        Case("config API: load('psctnet', use_bim='banana')", "config",
             api="from tomoprior import refiners\nm = refiners.load('psctnet', use_bim='banana')\n"
                 "result = m.config.use_bim", words=("use_bim", "banana")),
        Case("config API: PSCTNetConfig(xray_size='64')", "config",
             api="from psctnet import PSCTNetConfig\nresult = PSCTNetConfig(xray_size='64').xray_size",
             words=("xray_size",)),
        Case("config API: BPPriorConfig(normalization=3)", "config",
             api="from tomoprior.refiners import BPPriorConfig\nresult = BPPriorConfig(normalization=3).normalization",
             words=("normalization",)),
        Case("config API: load('bp-prior', clamp_min=nan)", "config",
             api="from tomoprior import refiners\nresult = refiners.load('bp-prior', clamp_min=float('nan'))"
                 ".config.clamp_min", words=("clamp_min",)),
        # devices
        Case("device: reconstruct --device cuda", "device", [*rec, a, b, "--device", "cuda"],
             words=("--device", "cuda"), outputs=pair),
        Case("device: reconstruct --device banana", "device", [*rec, a, b, "--device", "banana"],
             words=("banana",), outputs=pair),
        Case("device: evaluate --device cuda", "device", [*ev, "--refiner", "bp-prior", "--device", "cuda"],
             words=("cuda",)),
        Case("device API: evaluate(device='cuda')", "device",
             api="from tomoprior import refiners\nfrom tomoprior.studies.evaluation import evaluate\n"
                 "result = evaluate(refiners.load('bp-prior'), '{F}/tiny.h5', device='cuda').label",
             words=("cuda",)),
        # reconstruct inputs
        Case("reconstruct: corrupt PNG", "reconstruct", [*rec, "{F}/corrupt.png", "{F}/i1.png"],
             words=("corrupt.png",), outputs=pair),
        Case("reconstruct: zero-byte PNG", "reconstruct", [*rec, "{F}/empty.png", "{F}/i1.png"],
             words=("empty.png",), outputs=pair),
        Case("reconstruct: zero-byte .npy", "reconstruct", [*rec, "{F}/empty.npy", b], words=("empty.npy",),
             outputs=pair),
        Case("reconstruct: negative line integrals", "reconstruct", [*rec, "{F}/neg.npy", b], words=("neg.npy",),
             outputs=pair),
        Case("reconstruct: complex image", "reconstruct", [*rec, "{F}/cplx.npy", b], words=("cplx.npy",),
             outputs=pair),
        Case("reconstruct: boolean image", "reconstruct", [*rec, "{F}/boolimg.npy", b], words=("boolimg.npy",),
             outputs=pair),
        Case("reconstruct: NaN pixels", "reconstruct", [*rec, "{F}/nan.npy", b], words=("nan.npy",), outputs=pair),
        Case("reconstruct: 3D array", "reconstruct", [*rec, "{F}/cube3d.npy", b], words=("cube3d.npy",),
             outputs=pair),
        Case("reconstruct: object array", "reconstruct", [*rec, "{F}/obj.npy", b], words=("obj.npy",),
             outputs=pair),
        Case("reconstruct: line integrals x 1e6", "reconstruct", [*rec, "{F}/huge.npy", b], words=("huge.npy",),
             outputs=pair),
        Case("reconstruct: 24^2 images for a 48^2 detector", "reconstruct", [*rec, "{F}/s0.npy", "{F}/s1.npy"],
             words=("s0.npy", "--resample"), outputs=pair),
        Case("reconstruct: 24^2 images with --resample", "reconstruct",
             [*rec, "{F}/s0.npy", "{F}/s1.npy", "--resample"], expect="success", outputs=pair),
        Case("reconstruct: good .npy", "reconstruct", [*rec, a, b], expect="success", outputs=pair,
             check="nifti-close"),
        Case("reconstruct: 16-bit intensity PNGs", "reconstruct", [*rec, "{F}/i0.png", "{F}/i1.png", "--i0", "60000"],
             expect="success", outputs=pair, check="nifti-close"),
        Case("reconstruct: RGB PNG", "reconstruct", [*rec, "{F}/rgb0.png", "{F}/i1.png"], expect="success",
             outputs=pair),
        Case("reconstruct: --i0 below the brightest pixel", "reconstruct",
             [*rec, "{F}/i0.png", "{F}/i1.png", "--i0", "100"], words=("i0.png", "--i0"), outputs=pair),
        Case("reconstruct: garbage geometry file", "reconstruct",
             ["reconstruct", "--geometry", "{F}/garbage.yaml", "--refiner", "bp-prior", "--out", "{W}/out/v.nii.gz",
              a, b], words=("garbage.yaml",), outputs=pair),
        Case("reconstruct: existing --out", "reconstruct", [*rec, a, b], previous=True, words=("--overwrite",),
             outputs=pair),
        Case("reconstruct: existing --out with --overwrite", "reconstruct", [*rec, a, b, "--overwrite"],
             previous=True, expect="success", outputs=pair, check="nifti-close"),
        # faults while writing
        Case("fault: PNG write fails (ENOSPC injected)", "fault", [*rec, a, b], inject="fail-png",
             words=("disk is full",), outputs=pair),
        Case("fault: read-only output folder", "fault", [*rec, a, b], mount="ro", words=("out",), outputs=pair),
        Case("fault: full disk (4 KiB tmpfs)", "fault", [*rec, a, b], mount="full", words=("disk is full",),
             outputs=pair),
        Case("fault: SIGTERM while writing", "fault", [*rec, a, b, "--overwrite"], previous=True, inject="pause-png",
             signal="TERM", outputs=pair),
        Case("fault: kill -9 while writing, then run again", "fault", [*rec, a, b, "--overwrite"], previous=True,
             inject="pause-png", signal="KILL", outputs=pair),
        # evaluate
        Case("evaluate: --groups banana", "evaluate", [*ev, "--refiner", "bp-prior", "--groups", "banana"],
             words=("banana", "valid groups")),
        Case("evaluate: read-only --out", "evaluate", [*ev, "--refiner", "bp-prior", "--out", "{W}/out/res"],
             mount="ro", words=("out",)),
        Case("evaluate: --out is a file", "evaluate", [*ev, "--refiner", "bp-prior", "--out", "{F}/v0.npy"],
             words=("v0.npy",)),
        Case("evaluate: NaN weights", "evaluate", [*ev, "--refiner", "psctnet", "--checkpoint", "{F}/nan16.pt"],
             words=("nan16.pt", "not finite")),
        Case("evaluate: damaged checkpoint", "evaluate", [*ev, "--refiner", "psctnet", "--checkpoint",
                                                          "{F}/flipped16.pt"], words=("flipped16.pt",)),
        Case("evaluate: SIGTERM during the run", "evaluate",
             [*ev, "--refiner", "bp-prior", "--no-fit-bp-prior", "--out", "{W}/out/res"], inject="pause-eval",
             signal="TERM"),
        Case("evaluate: good checkpoint", "evaluate",
             [*ev, "--refiner", "bp-prior", "--checkpoint", "{F}/bp.pt", "--out", "{W}/out/res"], expect="success",
             check="eval-json"),
    ]
    return cases


# -- running and classifying --------------------------------------------------------------------------

def _has_overwrite() -> bool:
    """Whether the code under test has ``reconstruct --overwrite`` (before the fault handling it
    overwrote existing outputs silently, so the fault cases run without the flag there)."""
    r = subprocess.run([PY, "-m", "tomoprior", "reconstruct", "--help"], capture_output=True, text=True, env=ENV)
    return "--overwrite" in r.stdout


HAS_OVERWRITE = True


def _fill(items, fix: Path, work: Path):
    items = [x for x in items if HAS_OVERWRITE or x != "--overwrite"]
    return [str(x).replace("{F}", str(fix)).replace("{W}", str(work)) for x in items]


def _hidden(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*"))


def _check(kind: str | None, work: Path, fix: Path, stdout: str) -> tuple[bool, str]:
    if kind is None:
        return True, ""
    if kind == "demo-psnr":
        try:
            psnr = json.loads(stdout.strip().splitlines()[-1])["metrics"]["psnr_x2ctgan"]
        except (ValueError, KeyError, IndexError):
            return False, "no metrics printed"
        return abs(psnr - 31.93) < 0.02, f"PSNR {psnr} dB"
    if kind == "nifti-close":
        code = ("import sys, numpy as np, torch, nibabel as nib, tomoprior as tp\n"
                "from tomoprior import refiners\n"
                f"g = tp.Geometry.load('{fix}/geom.yaml')\n"
                f"x = torch.from_numpy(np.stack([np.load('{fix}/v0.npy'), np.load('{fix}/v1.npy')]))[None]\n"
                "e = refiners.load('bp-prior', normalization='chord').reconstruct(x, g)[0, 0].numpy()\n"
                f"v = np.asarray(nib.load('{work}/out/v.nii.gz').dataobj).transpose(2, 1, 0)\n"
                "print(float(np.abs(v - e).max() / np.abs(e).max()))")
        r = subprocess.run([PY, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
        try:
            rel = float(r.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return False, r.stderr[-300:]
        return rel < 0.05, f"relative difference to the reference {rel:.3g}"
    if kind == "eval-json":
        files = list((work / "out" / "res").glob("*.json"))
        return bool(files), f"{len(files)} JSON files"
    raise ValueError(kind)


def run_case(case: Case, fix: Path, root: Path) -> dict:
    work = Path(tempfile.mkdtemp(prefix="case-", dir=root))
    (work / "out").mkdir()
    mounted = False
    if case.mount:
        mounted = mount_tmpfs(work / "out", "ro,size=4k" if case.mount == "ro" else "size=4k")
        if not mounted:
            return {"name": case.name, "group": case.group, "category": "skipped", "note": "cannot mount a tmpfs"}
    try:
        return _run(case, fix, work)
    finally:
        if mounted:
            subprocess.run(["umount", str(work / "out")], check=False)


def _run(case: Case, fix: Path, work: Path) -> dict:
    previous = {}
    if case.previous:
        subprocess.run([PY, "-m", "tomoprior", *_fill([a for a in case.argv if a != "--overwrite"], fix, work)],
                       capture_output=True, env=ENV, timeout=case.timeout)
        previous = {p: (work / p).read_bytes() for p in case.outputs if (work / p).exists()}
    if case.api is not None:
        cmd = [PY, "-c", API, case.api.replace("{F}", str(fix))]
    elif case.inject:
        cmd = [PY, "-c", INJECT, str(work / "marker"), case.inject, *_fill(case.argv, fix, work)]
    else:
        cmd = [PY, "-m", "tomoprior", *_fill(case.argv, fix, work)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    sent = None
    if case.signal:
        deadline = time.monotonic() + case.timeout
        while time.monotonic() < deadline and proc.poll() is None and not (work / "marker").exists():
            time.sleep(0.1)
        if proc.poll() is None and (work / "marker").exists():
            sent = getattr(signal, f"SIG{case.signal}")
            time.sleep(0.2)
            proc.send_signal(sent)
    try:
        stdout, stderr = proc.communicate(timeout=case.timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        return record(case, "hang", None, stdout, stderr, t0, note=f"no end after {case.timeout:.0f} s")
    rc = proc.returncode
    note = ""
    if case.signal == "KILL" and sent is not None:  # run again: the next write must clean up
        again = subprocess.run([PY, "-m", "tomoprior", *_fill(case.argv, fix, work)], capture_output=True,
                               text=True, env=ENV, timeout=case.timeout)
        note = f"killed (rc {rc}); re-run rc {again.returncode}"
        stderr += again.stderr
        rc_eff = again.returncode
    else:
        rc_eff = rc
    left = [h for h in _hidden(work) if h.startswith("out/")]  # temporaries beside the outputs
    present = [p for p in case.outputs if (work / p).exists()]
    damaged = [str(p) for p, data in previous.items() if case.expect == "error"  # a failed run keeps them as they were
               and (not (work / p).exists() or (work / p).read_bytes() != data)]
    expected_signal = sent is not None and (rc == -sent or rc == 128 + sent)
    if rc is not None and rc < 0 and not expected_signal:
        return record(case, "crash", rc, stdout, stderr, t0, note=f"signal {-rc}")
    if "Traceback (most recent call last)" in stderr:
        return record(case, "traceback", rc, stdout, stderr, t0, leftovers=left + damaged)
    if left or damaged:
        return record(case, "files left behind", rc, stdout, stderr, t0, leftovers=left + damaged, note=note)
    if case.signal == "KILL":
        return record(case, "correct" if rc_eff == 0 else "clean error", rc, stdout, stderr, t0, note=note)
    if case.expect == "error" and rc_eff == 0:
        return record(case, "silent wrong", rc, stdout, stderr, t0, note="exit 0 on bad input")
    ok_pair = (len(present) in (0, len(case.outputs))) if case.outputs else True
    if case.expect == "error" and case.signal is None and not case.previous:
        ok_pair = not present  # a failed run writes nothing
    if not ok_pair:
        return record(case, "files left behind", rc, stdout, stderr, t0, note=f"outputs present: {present}")
    if case.expect == "error":
        text = stdout + stderr
        return record(case, "clean error", rc, stdout, stderr, t0,
                       message_ok=all(w in text for w in case.words), note=note)
    if rc_eff != 0:
        return record(case, "clean error", rc, stdout, stderr, t0, note="expected success")
    good, why = _check(case.check, work, fix, stdout)
    if case.outputs and len(present) != len(case.outputs):
        good, why = False, f"missing outputs {sorted(set(case.outputs) - set(present))}"
    return record(case, "correct" if good else "silent wrong", rc, stdout, stderr, t0, note=why)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=Path("sweep_refiners.json"), help="where to write the results")
    ap.add_argument("--only", default=None, help="run the cases whose name contains this text")
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="sweep-refiners-"))
    try:
        fix = root / "fixtures"
        r = subprocess.run([PY, "-c", SETUP, str(fix)], capture_output=True, text=True, env=ENV, timeout=900)
        if r.returncode != 0:
            print(r.stderr, file=sys.stderr)
            return 2
        import tomoprior

        probe = subprocess.run([PY, "-c", "import tomoprior, psctnet; print(tomoprior.__file__, psctnet.__file__)"],
                               capture_output=True, text=True, env=ENV)
        global HAS_OVERWRITE
        HAS_OVERWRITE = _has_overwrite()
        results = []
        for case in _cases():
            if args.only and args.only not in case.name:
                continue
            res = run_case(case, fix, root)
            results.append(res)
            print(f"{res['category']:<18} {res['name']}  {res.get('note', '')}", flush=True)
        notes = [] if HAS_OVERWRITE else ["reconstruct has no --overwrite here: the cases run without it"]
        report(results, f"{probe.stdout.strip()}  (this script: {Path(tomoprior.__file__).parent})", args.json, notes)
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
