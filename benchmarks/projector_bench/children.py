"""Measurements in fresh processes: the numba backend's first call (compiling, then from the
disk cache), its 1- vs 2-thread runs with a bitwise comparison, and the peak memory of each
case. Every child is ``python benchmarks/projectors.py`` with an internal option
(``--numba-child``, ``--memory-case``); it prints one line ``BENCHMARK_RESULT {json}``.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import tomoprior as tp

from .diffdrr_worker import RESULT_MARKER
from .problem import OPERATIONS, Problem
from .timing import prepare, time_case

#: The benchmark's command line, which runs the children.
SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "projectors.py")
#: The repository root, put first on the children's ``PYTHONPATH``.
_ROOT = str(Path(__file__).resolve().parents[2])


def first_call_child(impl: str, size: int, det: int) -> dict:
    """Run in a fresh process: wall seconds of the first forward, back-projection and
    forward + backward of ``impl`` (JIT compilation or loading compiled code from the disk
    cache, plus the ray set-up), then of a second, warm forward projection."""
    t0 = time.perf_counter()
    prob = Problem.build(size, det)
    out = {"build_problem_s": time.perf_counter() - t0}
    for op in OPERATIONS:
        run = prepare(impl, op, prob)
        t0 = time.perf_counter()
        run()
        out[f"first_{op}_s"] = time.perf_counter() - t0
    run = prepare(impl, "forward", prob)
    t0 = time.perf_counter()
    run()
    out["warm_forward_s"] = time.perf_counter() - t0
    return out


def measure_first_call(impl: str, size: int, det: int, threads: int) -> dict:
    """First-call times of ``impl`` in two fresh processes: one with an empty numba cache
    directory (``NUMBA_CACHE_DIR``: everything is compiled) and one with the normal cache
    (compiled kernels loaded from disk, what every run after the first sees)."""
    results = {}
    with tempfile.TemporaryDirectory(prefix="tomoprior-numba-cache-") as cache:
        for label, extra in (("compile", {"NUMBA_CACHE_DIR": cache}), ("disk_cache", {})):
            cmd = [sys.executable, SCRIPT, "--numba-child", f"first-call:{impl}",
                   "--size", str(size), "--det", str(det), "--threads", str(threads)]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                                      env=dict(_child_env(), **extra))
            except subprocess.TimeoutExpired:
                results[label] = {"error": "timed out"}
                continue
            results[label] = parse_result(proc)
    return results


def threads_child(impl: str, size: int, det: int, repeats: int, budget: float, save: str) -> dict:
    """Run in a fresh process (``torch.set_num_threads`` already set): save the forward
    projection, back-projection and volume gradient of ``impl`` to ``save`` (.npz) and time
    the three operations."""
    prob = Problem.build(size, det)
    fwd = tp.project(prob.volume, prob.geom, backend=impl)
    back = tp.backproject(prob.weights, prob.geom, backend=impl)
    leaf = prob.volume.detach().clone().requires_grad_(True)
    (tp.project(leaf, prob.geom, backend=impl) * prob.weights).sum().backward()
    np.savez(save, forward=fwd.numpy(), back=back.numpy(), grad=leaf.grad.numpy())
    timings = {op: time_case(impl, op, prob, repeats, budget) for op in OPERATIONS}
    return {"threads": torch.get_num_threads(), "timings": timings}


def measure_threads(impl: str, size: int, det: int, thread_counts, repeats: int, budget: float) -> dict:
    """Results and timings of ``impl`` with each thread count, each in a fresh process;
    compares every array against the first thread count's (bitwise and max relative)."""
    out: dict = {"thread_counts": list(thread_counts), "runs": {}, "comparison": {}}
    with tempfile.TemporaryDirectory(prefix="tomoprior-threads-") as tmp:
        arrays = {}
        for n in thread_counts:
            save = os.path.join(tmp, f"threads{n}.npz")
            cmd = [sys.executable, SCRIPT, "--numba-child", f"threads:{impl}:{save}",
                   "--size", str(size), "--det", str(det), "--threads", str(n),
                   "--repeats", str(repeats), "--budget", str(budget)]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=_child_env())
            except subprocess.TimeoutExpired:
                out["runs"][n] = {"error": "timed out"}
                continue
            got = parse_result(proc)
            out["runs"][n] = got
            if "error" not in got:
                with np.load(save) as z:
                    arrays[n] = {k: z[k] for k in z.files}
        base = thread_counts[0]
        for n in thread_counts[1:]:
            if base not in arrays or n not in arrays:
                continue
            cmp = {}
            for key in arrays[base]:
                a, b = arrays[base][key].astype(np.float64), arrays[n][key].astype(np.float64)
                scale = float(np.max(np.abs(a))) or 1.0
                cmp[key] = {"bitwise_equal": bool(np.array_equal(arrays[base][key], arrays[n][key])),
                            "max_abs_diff": float(np.max(np.abs(a - b))),
                            "max_diff_rel_to_max": float(np.max(np.abs(a - b))) / scale}
            out["comparison"][f"{base} vs {n}"] = cmp
    return out


def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's resident-set high-water mark (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _release_free_memory() -> None:
    """Return the allocator's free memory to the system (glibc ``malloc_trim``), so memory
    the call reuses from earlier temporaries counts as growth too (without this, a call
    that fits into freed heap memory shows no growth at all)."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def memory_child(impl: str, op: str, size: int, det: int) -> dict:
    """Run in a fresh process: resident-set growth (MB) during one run of the case."""
    # a one-time warm-up on a tiny problem first: loading compiled numba kernels and torch's
    # lazy initialisation are per-process costs, not the per-call memory measured here
    tiny = Problem.build(8, 8)
    prepare(impl, op, tiny)()
    del tiny
    prob = Problem.build(size, det)
    run = prepare(impl, op, prob)
    _release_free_memory()
    if not _reset_peak_rss():
        return {"peak_extra_mb": None, "error": "cannot reset the peak RSS (/proc/self/clear_refs)"}
    before = _status_kb("VmRSS")
    run()
    peak = _status_kb("VmHWM")
    if before is None or peak is None:
        return {"peak_extra_mb": None, "error": "no /proc/self/status"}
    return {"peak_extra_mb": max(0.0, (peak - before) / 1024.0)}


def measure_memory(impl: str, op: str, size: int, det: int, threads: int) -> dict:
    """Peak memory of one run of the case in a fresh process (:func:`memory_child`)."""
    cmd = [sys.executable, SCRIPT, "--memory-case", f"{impl}:{op}",
           "--size", str(size), "--det", str(det), "--threads", str(threads)]
    try:
        # large blocks straight from mmap and back to the system when freed: a call's
        # allocations then show in the resident set instead of reusing freed heap memory
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                              env=dict(_child_env(), MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072"))
    except subprocess.TimeoutExpired:
        return {"peak_extra_mb": None, "error": "timed out"}
    return parse_result(proc)


def _child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = _ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def parse_result(proc: subprocess.CompletedProcess) -> dict:
    """The child's ``BENCHMARK_RESULT`` JSON, or ``{"error": ...}`` with its exit code and last lines."""
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    return {"error": f"exit code {proc.returncode}: " + " | ".join(tail)}
