"""DiffDRR as the side-by-side peer: in this interpreter when ``import diffdrr`` works, else
in the one given by ``--diffdrr-python``, where :mod:`.diffdrr_worker` runs as a script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from . import diffdrr_worker
from .children import parse_result
from .peer import sphere_sampling
from .problem import Problem


def diffdrr_in_process() -> bool:
    try:
        import diffdrr  # noqa: F401
    except Exception:  # any import failure (missing, broken torch ABI, ...) means "not here"
        return False
    return True


def run_diffdrr(prob: Problem, args, renderers: list[str], workdir: Path, memory: bool) -> dict:
    """DiffDRR's timings; ``{"status": "ok" | "skipped" | "failed", ...}``."""
    sampling = sphere_sampling(prob.geom.grid)
    np.save(workdir / "volume.npy", prob.volume.numpy())
    np.save(workdir / "weights.npy", prob.weights.numpy())
    base = {
        "volume": str(workdir / "volume.npy"), "weights": str(workdir / "weights.npy"),
        "spacing_xyz": list(prob.geom.grid.spacing_xyz), "center_xyz": list(prob.geom.grid.center),
        "views": [{"source": v.source.tolist(), "detector_center": v.detector_center.tolist(),
                   "u": v.u.tolist(), "v": v.v.tolist(), "shape": list(v.shape)} for v in prob.geom.views],
        # the same samples per mm as the grid_sample peer, over the renderer's own ray span
        "n_points": sampling.count, "threads": args.threads, "repeats": args.repeats,
        "budget": args.budget, "image_prefix": str(workdir / "diffdrr-"), "memory": memory,
    }
    if diffdrr_in_process():
        try:
            out = diffdrr_worker.run_diffdrr(dict(base, renderers=renderers, memory=False))
        except Exception as exc:  # report, keep the rest of the benchmark
            return {"status": "failed", "reason": f"{type(exc).__name__}: {exc}", "where": "in-process"}
        out.update(status="ok", where="in-process", python=sys.executable)
        out["notes"].append("peak memory not measured in-process")
        return out
    python = args.diffdrr_python or os.environ.get("TOMOPRIOR_DIFFDRR_PYTHON")
    if not python:
        return {"status": "skipped",
                "reason": "diffdrr is not importable here; pass --diffdrr-python PATH (see benchmarks/README.md)"}
    # run a copy in the work folder: the child's script folder (first on its sys.path) then
    # holds nothing that could shadow the packages of the DiffDRR environment
    snippet = workdir / "diffdrr_worker.py"
    shutil.copyfile(diffdrr_worker.__file__, snippet)
    # one process per renderer when measuring memory, so each starts from a clean peak
    groups = [[r] for r in renderers] if memory else [renderers]
    merged: dict = {"status": "ok", "where": "subprocess", "python": python, "results": [], "notes": []}
    for group in groups:
        cfg_path = workdir / f"diffdrr_{'_'.join(group)}.json"
        cfg_path.write_text(json.dumps(dict(base, renderers=group)), encoding="utf-8")
        try:
            proc = subprocess.run([python, str(snippet), str(cfg_path)], capture_output=True, text=True,
                                  timeout=args.diffdrr_timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return {"status": "failed", "reason": f"{type(exc).__name__}: {exc}", "python": python}
        got = parse_result(proc)
        if "error" in got:
            return {"status": "failed", "reason": got["error"], "python": python}
        merged["results"].extend(got["results"])
        merged["notes"].extend(n for n in got["notes"] if n not in merged["notes"])
        for key in ("version", "torch", "threads"):
            merged[key] = got[key]
    return merged
