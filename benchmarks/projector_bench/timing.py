"""What is timed and how: the call of each case, warm-up then timed repeats, the samples
each backend evaluates, the numba ray-table set-up, and the smaller detector of a backend
too slow for the budget. Times in seconds (wall, and process CPU).
"""

from __future__ import annotations

import math
import os
import time

import numpy as np
import torch

import tomoprior as tp
from tomoprior.projectors.numba_backend import COMPILED_ENV  # its switch: compiled (C, SIMD) or numba kernels

from .peer import grid_sample_project
from .problem import NUMBA_JIT_ONLY, PEER, Problem, build_geometry, num_rays


def prepare(impl: str, op: str, prob: Problem):
    """Untimed set-up for one run of a case; returns the zero-argument call to time."""
    if impl == NUMBA_JIT_ONLY:  # the "numba" backend with its compiled kernels turned off
        inner = prepare("numba", op, prob)

        def run():
            old = os.environ.get(COMPILED_ENV)
            os.environ[COMPILED_ENV] = "0"
            try:
                return inner()
            finally:
                if old is None:
                    del os.environ[COMPILED_ENV]
                else:
                    os.environ[COMPILED_ENV] = old
        return run
    vol, geom, w = prob.volume, prob.geom, prob.weights
    if impl == PEER:
        if op == "forward":
            def run():
                with torch.no_grad():
                    return grid_sample_project(vol, geom)
            return run
        if op == "back":
            leaf = vol.detach().clone().requires_grad_(True)
            out = grid_sample_project(leaf, geom)
            return lambda: out.backward(w)
        leaf = vol.detach().clone().requires_grad_(True)

        def run():
            loss = (grid_sample_project(leaf, geom) * w).sum()
            loss.backward()
        return run
    if op == "forward":
        return lambda: tp.project(vol, geom, backend=impl)
    if op == "back":
        return lambda: tp.backproject(w, geom, backend=impl)
    leaf = vol.detach().clone().requires_grad_(True)

    def run():
        loss = (tp.project(leaf, geom, backend=impl) * w).sum()
        loss.backward()
    return run


def time_case(impl: str, op: str, prob: Problem, repeats: int, budget: float) -> dict:
    """Warm-up once, then up to ``repeats`` timed runs (fewer if they would exceed ``budget`` s)."""
    run = prepare(impl, op, prob)
    t0 = time.perf_counter()
    run()
    warmup = time.perf_counter() - t0
    del run
    planned = repeats
    if warmup * repeats > budget:
        planned = max(1, min(repeats, int(budget // max(warmup, 1e-9))))
    times, cpu = [], []
    for _ in range(planned):
        run = prepare(impl, op, prob)
        c0 = time.process_time()
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        del run
    return {"times_s": times, "cpu_s": cpu, "warmup_s": warmup, "repeats": planned,
            "repeats_reduced": planned < repeats}


def torch_backend_samples(geom) -> dict | None:
    """Samples the ``"torch"`` backend evaluates for this geometry (from its chunk plan)."""
    try:
        be = tp.projectors.get_backend("torch")
        plans = be.plans(geom.grid, geom.detector_shapes, geom.vectors.detach().double())
        useful = sum(int(c.count.sum()) for p in plans for c in p.chunks)
        evaluated = sum(int(c.pixels.numel()) * int(c.max_count) for p in plans for c in p.chunks)
    except (AttributeError, TypeError):  # the backend's internals changed: report nothing
        return None
    return {"useful": useful, "evaluated": evaluated}


def numba_backend_samples(geom) -> dict | None:
    """Samples (ray x voxel-plane pairs) the ``"numba"`` backend evaluates, from its ray table.

    ``evaluated``: bilinear samples summed over all rays (the planes each ray may meet, one
    plane of slack each side included); ``interior``: those with all four taps inside the
    grid (the unchecked fast loop); ``hit_rays``: rays that meet the volume.
    """
    try:
        from tomoprior.projectors import numba_backend as nb

        table = nb._ray_table(geom.grid, geom.detector_shapes, geom.vectors.detach().double(), 1)
        count = np.maximum(table.rp[:, nb._K1] - table.rp[:, nb._K0] + 1, 0)
        interior = np.where(count > 0, np.maximum(table.rp[:, nb._HI] - table.rp[:, nb._LO], 0), 0)
    except (ImportError, AttributeError, TypeError, ValueError):  # internals changed: report nothing
        return None
    return {"evaluated": int(count.sum()), "interior": int(interior.sum()), "hit_rays": int((count > 0).sum())}


def numba_setup_times(prob: Problem, repeats: int) -> list[float] | None:
    """Seconds to build the ``"numba"`` backend's per-ray table of ``prob``'s geometry.

    The backend keeps the table of the last geometry, so the repeated timings of the main
    table exclude it; a new geometry (e.g. every step of a pose optimisation) pays it once
    per call. Timed directly, with the backend's cache cleared before each run.
    """
    try:
        from tomoprior.projectors import numba_backend as nb

        threads = nb._threads()
        args = (prob.geom.grid, prob.geom.detector_shapes, prob.geom.vectors.detach().double(), threads)
        nb._LAST_TABLE.clear()
        nb._ray_table(*args)  # warm-up (compiles the set-up kernel if needed)
        times = []
        for _ in range(repeats):
            nb._LAST_TABLE.clear()
            t0 = time.perf_counter()
            nb._ray_table(*args)
            times.append(time.perf_counter() - t0)
    except (ImportError, AttributeError, TypeError, ValueError):
        return None
    return times


def plan_backend_problem(name: str, prob: Problem, budget: float) -> tuple[int, dict]:
    """Detector size at which backend ``name`` fits the budget: the full one unless a probe
    forward projection on a 4x smaller detector (after a warm-up call on a tiny problem;
    the faster of two calls) predicts ``> budget / 3`` s for the full one."""
    probe_det = max(8, prob.det // 4)
    if probe_det >= prob.det:
        return prob.det, {}
    tiny = Problem.build(8, 8)  # one-time costs first (numba compiles or loads its kernels)
    tp.project(tiny.volume, tiny.geom, backend=name)
    small = build_geometry(prob.size, probe_det)
    took = math.inf
    for _ in range(2):  # the second call sees what the timed calls see (e.g. numba's cached ray table)
        t0 = time.perf_counter()
        tp.project(prob.volume, small, backend=name)
        took = min(took, time.perf_counter() - t0)
    if took < 0.05:  # too fast to extrapolate from (fixed per-call costs dominate): no need
        return prob.det, {}
    rate = num_rays(small) / took
    det = prob.det
    while det > probe_det and 2 * det * det / rate > budget / 3:
        det //= 2
    return det, {"probe_rays_per_s": rate, "estimated_full_forward_s": prob.rays / rate}
