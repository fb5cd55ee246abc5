"""Bad-input and fault sweep of the geometry area: geometry files, the shared YAML
loader, projectors, phantoms (analytic line integrals, rasterisation), ``tomoprior simulate``
and ``tomoprior info``.

Every case runs in a fresh folder, in a subprocess (the CLI as ``python -m tomoprior ...``,
API calls through a small wrapper that turns ValueError/TypeError into a message and exit
code 2, as a user's script would report them), and is classified as one of:

- ``correct``: exit 0 and the result checks out (only where success is the right answer);
- ``clean error``: a non-zero exit with a message and no traceback (``msg ok`` says whether
  the message is short, names the input and, where the case says so, the expected words);
- ``traceback``: a Python traceback on stderr (including raw MemoryError / RuntimeError);
- ``crash``: killed by a signal nobody sent;
- ``hang``: no end within the time limit (the process group is killed);
- ``silent wrong``: exit 0 where the input is bad or the result is wrong;
- ``files left behind``: stale temporaries, a half-written output, or a previous output
  damaged (for kill -9: still there after the next run).

It prints a table and writes JSON. To sweep another checkout (e.g. commit a228eac, before the bad-input and fault
handling)::

    git worktree add /tmp/before-geometry a228eac
    PYTHONPATH=/tmp/before-geometry python tools/sweep/geometry.py --json /tmp/sweep_geometry_before.json
    git worktree remove --force /tmp/before-geometry

The read-only and full-disk cases mount small tmpfs file systems (root only); elsewhere they
are reported as skipped.
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
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from common import CATEGORIES

PY = sys.executable
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore::DeprecationWarning")
FAST = ["--binning", "16", "--grid", "32", "--supersample", "1", "--quiet"]
MAX_MESSAGE = 2000  # characters: longer error messages are not "clear"

# -- fixtures ------------------------------------------------------------------------------------

BOMB = "\n".join(
    ["schema: tomoprior.geometry", "schema_version: 1", "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
) + "\n"

GEOMETRY = {
    "schema": "tomoprior.geometry", "schema_version": 1, "units": {"length": "mm", "angle": "deg"},
    "grid": {"shape": [32, 32, 32], "spacing": [6.0, 6.0, 6.0], "center": [0.0, 0.0, 0.0]},
    "views": [
        {"name": "frontal", "source": [0.0, -1000.0, 0.0], "detector_center": [0.0, 500.0, 0.0],
         "u": [6.0, 0.0, 0.0], "v": [0.0, 0.0, 6.0], "shape": [41, 41]},
        {"name": "lateral", "source": [-1000.0, 0.0, 0.0], "detector_center": [500.0, 0.0, 0.0],
         "u": [0.0, 6.0, 0.0], "v": [0.0, 0.0, 6.0], "shape": [41, 41]},
    ],
}

# one sphere of radius 40 mm, density 0.02/mm at the origin: the central ray of a view along +y
# whose detector plane is y = d crosses it from y = -40 to min(40, d)
SPHERE_PHANTOM = textwrap.dedent("""\
    schema: tomoprior.phantom
    schema_version: 1
    name: ball
    units: {length: mm, density: 1/mm}
    density_scale: 1.0
    shapes:
      - {type: sphere, center: [0.0, 0.0, 0.0], radius: 40.0, density: 0.02}
    """)


def _geometry(edit: Callable[[dict], None] | None = None) -> dict:
    d = json.loads(json.dumps(GEOMETRY))
    if edit is not None:
        edit(d)
    return d


def _write_yaml(path: Path, d) -> None:
    path.write_text(json.dumps(d))  # JSON is YAML: no PyYAML needed in the sweep itself


def _one_view(det_y: float, shape=(41, 41), pitch=3.0):
    """One view along +y, detector plane y = det_y, over a 96 mm box (3 mm voxels)."""
    def edit(d):
        d["grid"]["spacing"] = [3.0, 3.0, 3.0]
        d["views"] = [{"name": "frontal", "source": [0.0, -1000.0, 0.0], "detector_center": [0.0, det_y, 0.0],
                       "u": [pitch, 0.0, 0.0], "v": [0.0, 0.0, pitch], "shape": list(shape)}]
    return edit


# -- cases ---------------------------------------------------------------------------------------

@dataclasses.dataclass
class Case:
    name: str
    group: str
    expect: str  # "error" or "correct"
    argv: list | None = None  # tomoprior CLI arguments
    code: str | None = None  # API snippet (runs with `d` = the case folder, `tp` = tomoprior)
    files: dict = dataclasses.field(default_factory=dict)  # name -> str | bytes | dict (geometry)
    check: Callable[[Path, str], bool] | None = None  # exit 0: is the result right? (folder, stdout)
    words: tuple = ()  # an error message should contain these
    old_outputs: str | None = None  # subfolder pre-filled with previous outputs that must survive
    fault: str | None = None  # "ro", "full", "sigterm", "kill9"
    env: dict = dataclasses.field(default_factory=dict)
    timeout: float = 240.0


def _api(body: str) -> str:
    return textwrap.dedent("""\
        import sys, warnings
        from pathlib import Path
        warnings.simplefilter("ignore")
        import numpy as np, torch
        import tomoprior as tp
        d = Path(sys.argv[1])
        try:
        {body}
        except (ValueError, TypeError) as exc:
            print("ERROR:", type(exc).__name__, exc, file=sys.stderr)
            sys.exit(2)
        """).format(body=textwrap.indent(textwrap.dedent(body), "    "))


def _npy(path: Path):
    import numpy as np

    return np.load(path)


def _check_simulate(views: int = 2):
    def check(folder: Path, stdout: str) -> bool:
        out = folder / "out"
        summary = json.loads((out / "summary.json").read_text())
        proj, exact = _npy(out / "projections.npy"), _npy(out / "analytic.npy")
        return (proj.shape[0] == views and bool((exact > 0).any())
                and summary["projector_vs_analytic"]["median_relative_error"] < 0.25
                and not [p for p in out.iterdir() if p.name.startswith(".")])
    return check


def _check_ball(det_y: float):
    """simulate with the ball phantom: the central ray's exact integral ends at the detector."""
    def check(folder: Path, stdout: str) -> bool:
        out = folder / "out"
        exact, proj = _npy(out / "analytic.npy")[0], _npy(out / "projections.npy")[0]
        want = 0.02 * (40.0 + min(40.0, det_y))
        return abs(float(exact[20, 20]) - want) < 1e-3 and abs(float(proj[20, 20]) - want) < 0.05 * want
    return check


def _check_printed(predicate: Callable[[str], bool]):
    return lambda folder, stdout: predicate(stdout)


def _cases() -> list[Case]:
    cases: list[Case] = []
    add = cases.append
    g = "geometry file"
    sim = ["simulate", "--geometry", "g.yaml", "--grid", "32", "--supersample", "1", "--quiet", "--out", "out"]
    load = _api("tp.Geometry.load(d / 'g.yaml'); print('LOADED')")
    load_json = _api("tp.Geometry.load(d / 'g.json'); print('LOADED')")

    add(Case("alias bomb (simulate --geometry)", g, "error", sim, files={"g.yaml": BOMB}, words=("g.yaml", "alias")))
    add(Case("alias bomb (Geometry.load)", g, "error", code=load, files={"g.yaml": BOMB}, words=("alias",)))
    add(Case("random bytes .yaml", g, "error", sim, files={"g.yaml": bytes(range(256)) * 8}, words=("g.yaml",)))
    add(Case("PNG bytes named .yaml", g, "error", sim, files={"g.yaml": b"\x89PNG\r\n\x1a\n" + bytes(300)},
             words=("g.yaml",)))
    add(Case("latin-1 (non-UTF-8) YAML", g, "error", sim, files={"g.yaml": "schema: g\xe9om\n".encode("latin-1")},
             words=("g.yaml", "UTF-8")))
    add(Case("empty file", g, "error", sim, files={"g.yaml": ""}, words=("g.yaml",)))
    add(Case("folder given as geometry", g, "error", sim, files={"g.yaml/": None}))
    add(Case("missing grid.spacing", g, "error", code=load,
             files={"g.yaml": _geometry(lambda d: d["grid"].pop("spacing"))}, words=("spacing",)))
    add(Case("schema_version: true", g, "error", code=load,
             files={"g.yaml": _geometry(lambda d: d.update(schema_version=True))}, words=("schema_version",)))
    add(Case("spacing as text '123'", g, "error", code=load,
             files={"g.yaml": _geometry(lambda d: d["grid"].update(spacing="123"))}, words=("spacing",)))
    add(Case("bool in spacing", g, "error", code=load,
             files={"g.yaml": _geometry(lambda d: d["grid"].update(spacing=[True, 1, 1]))}, words=("spacing",)))
    add(Case("NaN source (YAML .nan)", g, "error", sim,
             files={"g.yaml": json.dumps(_geometry()).replace("-1000.0", ".nan", 1)}, words=("source",)))
    add(Case("inf spacing (YAML .inf)", g, "error", sim,
             files={"g.yaml": json.dumps(_geometry()).replace("[6.0, 6.0, 6.0]", "[.inf, 6.0, 6.0]", 1)},
             words=("spacing",)))
    add(Case("source at 1e300 mm", g, "error", sim,
             files={"g.yaml": _geometry(lambda d: d["views"][0].update(source=[0.0, -1e300, 0.0]))},
             words=("source",)))
    add(Case("shape as text", g, "error", sim,
             files={"g.yaml": _geometry(lambda d: d["views"][0].update(shape="abc"))}, words=("shape",)))
    add(Case("views missing", g, "error", sim, files={"g.yaml": _geometry(lambda d: d.pop("views"))},
             words=("views",)))
    add(Case("views empty", g, "error", sim, files={"g.yaml": _geometry(lambda d: d.update(views=[]))},
             words=("views",)))
    add(Case("mixed-type unknown keys", g, "error", code=load,
             files={"g.yaml": "{" + json.dumps(_geometry())[1:-1] + ", 1: x, zz: y}"}, words=("unknown",)))
    add(Case("JSON with NaN", g, "error", code=load_json,
             files={"g.json": json.dumps(_geometry(lambda d: d["views"][0].update(source=[float("nan"), 0, 0])))},
             words=("g.json",)))
    add(Case("JSON nested 100000 deep", g, "error", code=load_json, files={"g.json": "[" * 100000 + "]" * 100000},
             words=("g.json",)))
    add(Case("integer with 6000 digits", g, "error", code=load,
             files={"g.yaml": json.dumps(_geometry()).replace("[41, 41]", "[" + "9" * 6000 + ", 41]", 1)},
             words=("g.yaml",)))
    add(Case("50 kB string in a field", g, "error", code=load,
             files={"g.yaml": _geometry(lambda d: d["views"][0].update(shape="x" * 50_000))}, words=("shape",)))
    add(Case("view name '../../escaped' (files stay in --out)", g, "correct", sim,
             files={"g.yaml": _geometry(lambda d: d["views"][0].update(name="../../escaped"))},
             check=lambda f, s: not list(f.parent.glob("*escaped*")) and not list(f.glob("*escaped*"))
             and len(list((f / "out").glob("preview_*.png"))) == 2))
    add(Case("valid geometry file (control)", g, "correct", sim, files={"g.yaml": _geometry()},
             check=_check_simulate()))

    s = "sizes"
    huge = {"g.yaml": _geometry(_one_view(500.0, shape=(10**6, 10**6), pitch=1e-4))}
    add(Case("simulate, 10^6 x 10^6 detector", s, "error", sim, files=huge, words=("TiB", "bin"), timeout=180))
    add(Case("simulate --grid 5000", s, "error", ["simulate", "--binning", "16", "--grid", "5000", "--supersample",
                                                   "1", "--quiet", "--out", "out"], words=("5000", "grid")))
    add(Case("geometry file grid 20000^3", s, "error", ["simulate", "--geometry", "g.yaml", "--quiet", "--out", "out"],
             files={"g.yaml": _geometry(lambda d: d["grid"].update(shape=[20000] * 3, spacing=[0.01] * 3))},
             words=("grid",)))
    for backend in ("numba", "torch", "reference"):
        add(Case(f"project, 10^6 x 10^6 detector ({backend})", s, "error", code=_api(f"""
            g = tp.Geometry.load(d / 'g.yaml')
            tp.project(torch.zeros(g.grid.shape), g, backend='{backend}')"""), files=huge, words=("TiB",),
            timeout=120))
    add(Case("backproject, 10^6 x 10^6 detector", s, "error", code=_api("""
        g = tp.Geometry.load(d / 'g.yaml')
        tp.backproject(torch.zeros(1, 1, 1).expand(1, 10**6, 10**6), g)"""), files=huge, words=("TiB",), timeout=120))
    add(Case("rasterize on 5000^3", s, "error", code=_api("""
        ph = tp.phantoms.load('shepp_logan_3d_modified')
        ph.rasterize(tp.VolumeGrid((5000, 5000, 5000), (0.04, 0.04, 0.04)))"""), words=("5000",)))
    add(Case("line_integrals, 10^6 x 10^6 detector", s, "error", code=_api("""
        ph = tp.phantoms.load('shepp_logan_3d_modified')
        ph.line_integrals(tp.Geometry.load(d / 'g.yaml'))"""), files=huge, words=("bin",), timeout=120))

    i = "impossible geometry"
    ball = ["simulate", "--geometry", "g.yaml", "--phantom", "ball.yaml", "--supersample", "2", "--quiet",
            "--out", "out"]
    add(Case("simulate, detector between source and volume", i, "error", ball,
             files={"g.yaml": _geometry(_one_view(-500.0)), "ball.yaml": SPHERE_PHANTOM}, words=("detector",)))
    add(Case("simulate, detector plane through the volume", i, "correct", ball,
             files={"g.yaml": _geometry(_one_view(0.0)), "ball.yaml": SPHERE_PHANTOM}, check=_check_ball(0.0)))
    add(Case("simulate, detector plane at y = 20 mm", i, "correct", ball,
             files={"g.yaml": _geometry(_one_view(20.0)), "ball.yaml": SPHERE_PHANTOM}, check=_check_ball(20.0)))
    add(Case("simulate, detector behind the source", i, "error", ball,
             files={"g.yaml": _geometry(_one_view(-1500.0)), "ball.yaml": SPHERE_PHANTOM}, words=("source",)))
    for backend in ("numba", "torch", "reference"):
        add(Case(f"project, detector through the volume ({backend})", i, "correct", code=_api(f"""
            ph = tp.phantoms.load(d / 'ball.yaml')
            g = tp.Geometry.load(d / 'g.yaml')
            p = tp.project(ph.rasterize(g.grid, supersample=2, dtype=torch.float64), g, backend='{backend}')
            print('CENTRE', float(p[0, 20, 20]))"""),
            files={"g.yaml": _geometry(_one_view(0.0)), "ball.yaml": SPHERE_PHANTOM},
            check=_check_printed(lambda out: abs(float(out.split("CENTRE")[1]) - 0.8) < 0.04)))
    add(Case("project, detector between source and volume", i, "correct", code=_api("""
        ph = tp.phantoms.load(d / 'ball.yaml')
        g = tp.Geometry.load(d / 'g.yaml')
        print('MAX', float(tp.project(ph.rasterize(g.grid), g).abs().max()))"""),
        files={"g.yaml": _geometry(_one_view(-500.0)), "ball.yaml": SPHERE_PHANTOM},
        check=_check_printed(lambda out: float(out.split("MAX")[1]) == 0.0)))
    add(Case("line_integrals, detector behind the source", i, "correct", code=_api("""
        ph = tp.phantoms.load(d / 'ball.yaml')
        print('MAX', float(ph.line_integrals(tp.Geometry.load(d / 'g.yaml')).abs().max()))"""),
        files={"g.yaml": _geometry(_one_view(-1500.0)), "ball.yaml": SPHERE_PHANTOM},
        check=_check_printed(lambda out: float(out.split("MAX")[1]) == 0.0)))

    o = "overflow / non-finite"
    for backend in ("numba", "torch"):
        add(Case(f"project 1e37 float32 volume ({backend})", o, "error", code=_api(f"""
            g = tp.BiplanarGeometry.from_parameters(binning=16, grid=tp.VolumeGrid((32, 32, 32), (6, 6, 6)))
            p = tp.project(torch.full((32, 32, 32), 1e37), g, backend='{backend}')
            print('FINITE', bool(torch.isfinite(p).all()))"""), words=("overflow", "float64")))
    add(Case("backproject 3e38 float32 projections", o, "error", code=_api("""
        g = tp.BiplanarGeometry.from_parameters(binning=16, grid=tp.VolumeGrid((32, 32, 32), (6, 6, 6)))
        v = tp.backproject(torch.full((2, 96, 96), 3e38), g)
        print('FINITE', bool(torch.isfinite(v).all()))"""), words=("overflow",)))
    add(Case("project NaN volume", o, "error", code=_api("""
        g = tp.BiplanarGeometry.from_parameters(binning=16, grid=tp.VolumeGrid((32, 32, 32), (6, 6, 6)))
        v = torch.zeros(32, 32, 32); v[1, 2, 3] = float('nan')
        tp.project(v, g)"""), words=("NaN",)))
    add(Case("project 1e37 as float64 (control)", o, "correct", code=_api("""
        g = tp.BiplanarGeometry.from_parameters(binning=16, grid=tp.VolumeGrid((32, 32, 32), (6, 6, 6)))
        p = tp.project(torch.full((32, 32, 32), 1e37, dtype=torch.float64), g)
        print('FINITE', bool(torch.isfinite(p).all()))"""),
        check=_check_printed(lambda out: "FINITE True" in out)))

    p = "projector input"
    add(Case("project int64 volume", p, "error", code=_api("""
        g = tp.BiplanarGeometry.from_parameters(binning=16, grid=tp.VolumeGrid((32, 32, 32), (6, 6, 6)))
        tp.project(torch.zeros(32, 32, 32, dtype=torch.int64), g)"""), words=("volume",)))
    add(Case("project wrong shape", p, "error", code=_api("""
        g = tp.BiplanarGeometry.from_parameters(binning=16, grid=tp.VolumeGrid((32, 32, 32), (6, 6, 6)))
        tp.project(torch.zeros(31, 32, 32), g)"""), words=("shape",)))
    add(Case("View with u parallel to v", p, "error", code=_api("""
        tp.View([0, -1000, 0], [0, 500, 0], [1, 0, 0], [2, 0, 0], (10, 10))"""), words=("parallel",)))
    add(Case("View with source at 1e300", p, "error", code=_api("""
        g = tp.Geometry(tp.VolumeGrid((8, 8, 8), (4, 4, 4)), [tp.View([0, -1e300, 0], [0, 500, 0], [1, 0, 0],
                        [0, 0, 1], (10, 10))])
        p = tp.project(torch.ones(8, 8, 8), g)
        print('FINITE', bool(torch.isfinite(p).all()))"""), words=("source",)))
    add(Case("grid spacing 1e306 x 1000 voxels", p, "error", code=_api("""
        print(tp.VolumeGrid((1000, 8, 8), (1e306, 1, 1)).extent_mm)"""), words=("grid",)))

    w = "output folder faults"
    add(Case("simulate --out read-only file system", w, "error", ["simulate", *FAST, "--out", "mnt/out"],
             fault="ro", words=("Read-only",)))
    add(Case("simulate --out on a full disk", w, "error", ["simulate", *FAST, "--out", "mnt/out"], fault="full",
             words=("space",)))
    add(Case("simulate, ENOSPC injected during the writes", w, "error",
             code=textwrap.dedent("""\
                import errno, sys
                import numpy as np
                real = np.save
                def full(file, arr, *a, **k):
                    raise OSError(errno.ENOSPC, 'No space left on device')
                np.save = full
                from tomoprior.cli.main import main
                sys.exit(main(['simulate', '--binning', '16', '--grid', '32', '--supersample', '1', '--quiet',
                               '--out', sys.argv[1] + '/out']))
                """), old_outputs="out", words=("space",)))
    add(Case("simulate --out is a file", w, "error", ["simulate", *FAST, "--out", "afile"],
             files={"afile": "keep me"}, check=None))
    add(Case("simulate over previous outputs (control)", w, "correct", ["simulate", *FAST, "--out", "out"],
             old_outputs="out", check=lambda f, s: json.loads((f / "out" / "summary.json").read_text())
             .get("phantom") == "shepp_logan_3d_modified" and not [x for x in (f / "out").iterdir()
                                                                  if x.name.startswith(".")]))
    add(Case("SIGTERM during simulate", w, "error", ["simulate", "--binning", "8", "--grid", "48", "--backend",
                                                      "reference", "--supersample", "1", "--quiet", "--out", "out"],
             old_outputs="out", fault="sigterm"))
    add(Case("kill -9 during the writes, then rerun", w, "error", ["simulate", "--binning", "8", "--grid", "48",
                                                                   "--supersample", "1", "--quiet", "--out", "out"],
             old_outputs="out", fault="kill9"))

    n = "phantom files / info"
    bad_dir = {"phantoms/bomb.yaml": BOMB.replace("tomoprior.geometry", "tomoprior.phantom"),
               "phantoms/latin.yaml": "schema: tomoprior.phantom\nname: caf\xe9\n".encode("latin-1"),
               "phantoms/binary.yaml": bytes(range(256)) * 4, "phantoms/folder.yaml/": None}
    add(Case("info with broken files on TOMOPRIOR_PHANTOM_PATH", n, "correct", ["info"], files=bad_dir,
             env={"TOMOPRIOR_PHANTOM_PATH": "phantoms"},
             check=_check_printed(lambda out: "shepp_logan_3d_modified" in out)))
    add(Case("simulate --phantom alias bomb", n, "error", ["simulate", *FAST, "--phantom", "phantoms/bomb.yaml",
                                                            "--out", "out"], files=bad_dir, words=("bomb.yaml",)))
    add(Case("simulate --phantom non-UTF-8 file", n, "error", ["simulate", *FAST, "--phantom", "phantoms/latin.yaml",
                                                                "--out", "out"], files=bad_dir, words=("latin.yaml",)))
    add(Case("simulate --phantom binary file", n, "error", ["simulate", *FAST, "--phantom", "phantoms/binary.yaml",
                                                             "--out", "out"], files=bad_dir, words=("binary.yaml",)))
    add(Case("simulate --phantom a folder", n, "error", ["simulate", *FAST, "--phantom", "phantoms/folder.yaml",
                                                          "--out", "out"], files=bad_dir, words=("folder.yaml",)))
    return cases


# -- running -------------------------------------------------------------------------------------

OLD = {"summary.json": b'{"old": true}\n', "projections.npy": b"old projections", "geometry.yaml": b"old: 1\n"}


def _prepare(case: Case, folder: Path) -> None:
    for name, content in case.files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, dict):
            _write_yaml(path, content)
        else:
            path.write_text(content)
    if case.old_outputs:
        out = folder / case.old_outputs
        out.mkdir(parents=True, exist_ok=True)
        for name, data in OLD.items():
            (out / name).write_bytes(data)


def _mount(folder: Path, options: str) -> bool:
    mnt = folder / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)], capture_output=True)
    return done.returncode == 0


def _leftovers(folder: Path, case: Case) -> list[str]:
    """Stale temporaries anywhere in the case folder, damaged previous outputs."""
    found = []
    for p in folder.rglob("*"):
        if p.name.startswith(".") or ".tmp" in p.name or p.name.startswith("tmp"):
            found.append(str(p.relative_to(folder)))
    if case.old_outputs:
        out = folder / case.old_outputs
        changed = [n for n, data in OLD.items() if not (out / n).exists() or (out / n).read_bytes() != data]
        complete = _complete_new_set(out) and all((out / n).read_bytes() != data for n, data in OLD.items())
        if changed and not complete:
            found += [f"{case.old_outputs}/{n} (previous output replaced by a partial set)" for n in changed]
    return found


def _complete_new_set(out: Path) -> bool:
    try:
        summary = json.loads((out / "summary.json").read_text())
        return "files" in summary and all((out / n).exists() for n in ("geometry.yaml", "projections.npy"))
    except (OSError, ValueError):
        return False


def _start(case: Case, folder: Path):
    env = dict(ENV, **{k: str(folder / v) if k == "TOMOPRIOR_PHANTOM_PATH" else v for k, v in case.env.items()})
    if case.argv is not None:
        cmd = [PY, "-m", "tomoprior", *case.argv]
    else:
        script = folder / "case.py"
        script.write_text(case.code)
        cmd = [PY, str(script), str(folder)]
    return subprocess.Popen(cmd, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)


def _signal_during(proc, folder: Path, case: Case, sig) -> None:
    """Send ``sig`` while the outputs are being computed (SIGTERM) or written (kill -9)."""
    out = folder / "out"
    geometry_mtime = (out / "geometry.yaml").stat().st_mtime_ns

    def writing() -> bool:
        staging = [p for p in out.iterdir() if p.name.startswith(".simulate-")] if out.exists() else []
        if case.fault == "sigterm":
            return bool(staging) or len(list(out.iterdir())) > len(OLD)
        if any((s / "geometry.yaml").exists() for s in staging):
            return True
        g = out / "geometry.yaml"
        return g.exists() and g.stat().st_mtime_ns != geometry_mtime
    deadline = time.monotonic() + case.timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if writing():
            proc.send_signal(sig)
            return
        time.sleep(0.002)


def run_case(case: Case, root: Path) -> dict:
    folder = Path(tempfile.mkdtemp(dir=root, prefix="case-"))
    _prepare(case, folder)
    mounted = False
    if case.fault in ("ro", "full"):
        mounted = _mount(folder, "ro,size=1m" if case.fault == "ro" else "size=100k")
        if not mounted:
            return {"case": case.name, "group": case.group, "outcome": "skipped", "detail": "needs root (tmpfs)"}
    t0 = time.monotonic()
    sent = None
    try:
        proc = _start(case, folder)
        if case.fault in ("sigterm", "kill9"):
            sent = signal.SIGTERM if case.fault == "sigterm" else signal.SIGKILL
            _signal_during(proc, folder, case, sent)
        try:
            stdout, stderr = proc.communicate(timeout=max(1.0, case.timeout - (time.monotonic() - t0)))
            hang = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            hang = True
        seconds = time.monotonic() - t0
        stdout, stderr = stdout.decode(errors="replace"), stderr.decode(errors="replace")
        rc = proc.returncode
        rerun = None
        damaged: list[str] = []
        if case.fault == "kill9" and not hang:
            # right after the kill: every output under its final name is the old one or part of a
            # complete new set (a mix of new and old files is a damaged previous result)
            damaged = [x for x in _leftovers(folder, case) if "previous output" in x]
            # kill -9 cannot clean up; the next run must (and the previous outputs must be whole)
            again = subprocess.run([PY, "-m", "tomoprior", "simulate", *FAST, "--out", "out"], cwd=folder, env=ENV,
                                   capture_output=True, timeout=case.timeout)
            rerun = again.returncode
        left = damaged + _leftovers(folder, case)
    finally:
        if mounted:
            subprocess.run(["umount", str(folder / "mnt")], capture_output=True)
    message = (stderr.strip().splitlines() or [""])[-1] if rc else ""
    long_message = len(stderr) > MAX_MESSAGE
    if hang:
        outcome = "hang"
    elif rc is not None and rc < 0 and (sent is None or -rc != sent):
        outcome = "crash"
    elif "Traceback (most recent call last)" in stderr:
        outcome = "traceback"
    elif left:
        outcome = "files left behind"
    elif rc != 0:
        outcome = "clean error"
    elif case.expect == "error" and case.fault != "kill9":
        outcome = "silent wrong"
    else:
        try:
            ok = case.check(folder, stdout) if case.check is not None else True
        except Exception as exc:  # a missing or malformed output is a wrong result
            ok = False
            message = f"check failed: {exc!r}"[:200]
        outcome = "correct" if ok else "silent wrong"
    if case.fault == "kill9" and outcome in ("clean error", "correct", "silent wrong") and not left:
        outcome = "clean error" if rerun == 0 else "files left behind"
    msg_ok = None
    if outcome == "clean error" and case.fault not in ("sigterm", "kill9"):
        msg_ok = (not long_message and bool(message)
                  and all(w.lower() in stderr.lower() for w in case.words))
    shutil.rmtree(folder, ignore_errors=True)
    return {"case": case.name, "group": case.group, "expect": case.expect, "outcome": outcome, "exit": rc,
            "seconds": round(seconds, 1), "message": message[:300], "message_chars": len(stderr),
            "msg_ok": msg_ok, "left_behind": left[:5]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", default="sweep_geometry.json", help="where to write the results")
    ap.add_argument("-k", default=None, help="only cases whose name contains this text")
    args = ap.parse_args(argv)
    cases = [c for c in _cases() if args.k is None or args.k in c.name]
    root = Path(tempfile.mkdtemp(prefix="sweep-geometry-"))
    results = []
    try:
        for case in cases:
            res = run_case(case, root)
            results.append(res)
            print(f"{res['outcome']:<18} {res.get('seconds', 0):>6}s  {case.group:<22} {case.name}"
                  + (f"   [msg ok: {res['msg_ok']}]" if res.get("msg_ok") is not None else ""), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    counts = Counter(r["outcome"] for r in results)
    print("\noutcome             cases")
    for cat in (*CATEGORIES, "skipped"):
        if counts.get(cat) or cat in CATEGORIES:
            print(f"{cat:<18} {counts.get(cat, 0):>6}")
    print(f"{'total':<18} {len(results):>6}")
    unclear = sum(1 for r in results if r.get("msg_ok") is False)
    print(f"clean errors whose message misses the input/fix or is over {MAX_MESSAGE} chars: {unclear}")
    Path(args.json).write_text(json.dumps({"counts": dict(counts), "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
