"""How long ``import tomoprior`` and ``tomoprior --help`` take, next to ``import torch``.

Every case runs in a fresh interpreter (a subprocess), once untimed (it may compile byte
code or warm the file cache) and then ``--repeats`` times; the table reports the median,
minimum and maximum wall time in seconds. The cases:

* ``python -c "pass"``: the interpreter's own start-up, the floor of everything below;
* ``python -c "import torch"``: the price of one heavy dependency, for comparison;
* ``python -c "import tomoprior"``;
* ``python -c "import tomoprior as tp; tp.VolumeGrid"``: the first use of a lazy name;
* ``tomoprior --help`` and ``tomoprior validate --help``: the console script installed
  next to the interpreter (``python -m tomoprior`` if there is none).

One more run of each case with ``PYTHONPROFILEIMPORTTIME=1`` records which heavy
libraries (torch, numpy, scipy, numba, matplotlib, h5py) the command imported and how many
modules it imported in all; that run is not timed.

The subprocesses run in a temporary folder, so a ``tomoprior`` folder in the current
directory is never imported by accident; they inherit the environment, so
``PYTHONPATH=/path/to/other/checkout`` measures that checkout instead of the installed
one (the JSON records which ``tomoprior`` was imported). Wall times on a shared machine
vary with its load; compare runs made one after the other.

Usage::

    python benchmarks/import_time.py                       # about 1-2 min
    python benchmarks/import_time.py --repeats 3 --out /tmp/imports.json
    PYTHONPATH=/tmp/before-imports python benchmarks/import_time.py --out before.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "import_time.json"
#: Libraries whose import is what makes start-up slow; reported per case.
HEAVY = ("torch", "numpy", "scipy", "numba", "matplotlib", "h5py")


def cases(python: str) -> list[tuple[str, list[str]]]:
    """``(label, argv)`` of every timed command, for the interpreter ``python``."""
    script = Path(python).parent / "tomoprior"
    cli = [str(script)] if script.is_file() and os.access(script, os.X_OK) else [python, "-m", "tomoprior"]
    return [
        ('python -c "pass"', [python, "-c", "pass"]),
        ('python -c "import torch"', [python, "-c", "import torch"]),
        ('python -c "import tomoprior"', [python, "-c", "import tomoprior"]),
        ('python -c "import tomoprior as tp; tp.VolumeGrid"', [python, "-c", "import tomoprior as tp; tp.VolumeGrid"]),
        ("tomoprior --help", [*cli, "--help"]),
        ("tomoprior validate --help", [*cli, "validate", "--help"]),
    ]


def run_once(argv: list[str], cwd: str, env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    """Wall seconds of one run of ``argv`` and its completed process (output captured)."""
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    return time.perf_counter() - t0, proc


def imported_modules(argv: list[str], cwd: str) -> list[str]:
    """Names of the modules ``argv`` imports, from Python's ``-X importtime`` report."""
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    _, proc = run_once(argv, cwd, env)
    names = []
    for line in proc.stderr.splitlines():
        # "import time:      1234 |       5678 |     package.module"
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name and name != "imported package":
                names.append(name)
    return names


def measure(label: str, argv: list[str], repeats: int, cwd: str) -> dict:
    """Time ``argv`` ``repeats`` times after one warm-up run; raise if it fails."""
    _, proc = run_once(argv, cwd)  # warm-up: byte-code compilation, file cache
    if proc.returncode != 0:
        raise SystemExit(f"{label!r} failed with exit code {proc.returncode}:\n{proc.stderr.strip()[-2000:]}")
    times = [run_once(argv, cwd)[0] for _ in range(repeats)]
    modules = imported_modules(argv, cwd)
    top = {m.split(".")[0] for m in modules}
    return {
        "command": label,
        "argv": argv,
        "times_s": times,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "modules_imported": len(modules),
        "heavy_imported": [h for h in HEAVY if h in top],
    }


def which_tomoprior(python: str, cwd: str) -> str:
    """Where ``python`` imports ``tomoprior`` from (``__file__``), as the subprocesses see it."""
    _, proc = run_once([python, "-c", "import tomoprior; print(tomoprior.__file__)"], cwd)
    return proc.stdout.strip() if proc.returncode == 0 else f"(import failed: {proc.stderr.strip()[-300:]})"


def table(rows: list[dict]) -> str:
    """Markdown table of the results."""
    out = [
        "| command | median s | min s | max s | heavy libraries imported | modules imported |",
        "| --- | ---: | ---: | ---: | --- | ---: |",
    ]
    for r in rows:
        heavy = ", ".join(r["heavy_imported"]) or "none"
        out.append(f"| `{r['command']}` | {r['median_s']:.2f} | {r['min_s']:.2f} | {r['max_s']:.2f} | {heavy} "
                   f"| {r['modules_imported']} |")
    return "\n".join(out)


def write_json_atomic(path: Path, data: dict) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7, help="timed runs per command after one warm-up (default 7)")
    ap.add_argument("--python", default=sys.executable, help="interpreter to measure (default: this one)")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help=f"JSON output (default {DEFAULT_OUT})")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error(f"--repeats must be at least 1, got {args.repeats}")

    with tempfile.TemporaryDirectory(prefix="tomoprior-import-time-") as cwd:
        where = which_tomoprior(args.python, cwd)
        print(f"tomoprior imported from {where}")
        print(f"PYTHONPATH={os.environ.get('PYTHONPATH', '')!r}; {args.repeats} timed runs per command\n")
        rows = []
        for label, cmd in cases(args.python):
            rows.append(measure(label, cmd, args.repeats, cwd))
            print(f"  {label}: median {rows[-1]['median_s']:.2f} s", file=sys.stderr)
    print(table(rows))
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    write_json_atomic(Path(args.out), {
        "benchmark": "import_time",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": args.python,
        "python_version": platform.python_version(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average": load},
        "tomoprior_file": where,
        "pythonpath": os.environ.get("PYTHONPATH", ""),
        "repeats": args.repeats,
        "results": rows,
    })
    print(f"\nwritten {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
