"""What this CPU can do, and how close the ``"numba"`` projector gets to it.

Measures, with small numba / torch kernels (single-thread numbers use process CPU time,
which a shared machine perturbs far less than wall time; two-thread numbers are wall
time and are only as good as the machine is idle):

1. ``clock``: a chain of dependent float64 additions (each waits for the previous one).
   Its rate is the latency bound of any loop that accumulates in strict order, as the
   projector's ray sums do; times the add latency (``--fadd-latency``, 3 cycles on AMD
   Zen 2-4 and Intel since Skylake) it estimates the clock.
2. ``flops``: float32 matrix products (torch, 1 and 2 threads): the usable vector peak.
3. ``bandwidth``: a STREAM-like triad ``a = b + s * c`` in float32 over working sets from
   L1- to DRAM-sized (1 and 2 threads), bytes counted as STREAM does (12 per element).
4. ``gather``: the Joseph sample with no locality at all: a bilinear footprint (4 reads,
   2 cache lines) at random positions of an 8 MB (128^3 float32) and a 64 MB volume.
5. ``kernel``: the ``"numba"`` backend's forward projection on volumes of 16^3 .. 256^3
   (64 kB .. 64 MB) over the same field of view, 1 thread: samples per CPU second, to see
   whether the kernel slows down when the volume leaves a cache level.
6. ``joseph``: the inner loop of a Joseph projector on synthetic rays through a 128^3
   volume, as the backend runs it (one ray at a time, float64 sum in order) and with four
   rays interleaved and float32 sums (independent dependency chains): what reordering
   alone gains.

From these it derives per-core bounds on Joseph samples per second (see ``bounds()``) and
the fraction of them that the backend reaches on the benchmark problem (128^3 -> 2 x
256^2). Prints a summary and writes JSON.

Usage::

    python benchmarks/hardware.py            # about 1-2 min
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import statistics
import sys
import time
from pathlib import Path

import numba
import numpy as np
import torch
from numba import njit, prange

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import projectors as bench  # noqa: E402
from projector_bench.bound import dependent_add_rate  # noqa: E402

import tomoprior as tp  # noqa: E402

DEFAULT_OUT = HERE / "results" / "hardware.json"


def best_cpu(fn, repeats: int) -> tuple[float, float]:
    """(min, median) process CPU seconds of ``fn()`` over ``repeats`` runs (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        c0 = time.process_time()
        fn()
        times.append(time.process_time() - c0)
    return min(times), statistics.median(times)


def best_wall(fn, repeats: int) -> tuple[float, float]:
    """(min, median) wall seconds of ``fn()`` over ``repeats`` runs (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


# -- 1. dependent additions ---------------------------------------------------------------
def measure_clock(repeats: int, latency: float) -> dict:
    # the same chain as the projector table's bound column (projector_bench/bound.py)
    rate, median_rate = dependent_add_rate(repeats, 50_000_000)
    return {"dependent_fadds_per_s": rate, "median_rate": median_rate, "fadd_latency_cycles": latency,
            "clock_ghz_estimate": rate * latency / 1e9}


# -- 2. matrix products -------------------------------------------------------------------
def measure_flops(repeats: int) -> dict:
    out = {}
    n = 1024
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        timer = best_cpu if threads == 1 else best_wall
        lo, med = timer(lambda: torch.mm(a, b), repeats)
        out[f"threads_{threads}"] = {"gflops": 2 * n**3 / lo / 1e9, "median_gflops": 2 * n**3 / med / 1e9,
                                     "timer": "cpu" if threads == 1 else "wall"}
    torch.set_num_threads(2)
    return out


# -- 3. triad -----------------------------------------------------------------------------
@njit(cache=True, fastmath=True)
def _triad_serial(a, b, c, s, reps):
    for _ in range(reps):
        for i in range(a.shape[0]):
            a[i] = b[i] + s * c[i]


@njit(cache=True, fastmath=True, parallel=True)
def _triad_parallel(a, b, c, s, reps, parts):
    n = a.shape[0]
    for p in prange(parts):  # each thread keeps its own slice (stays in its own caches)
        lo = p * n // parts
        hi = (p + 1) * n // parts
        _triad_serial(a[lo:hi], b[lo:hi], c[lo:hi], s, reps)


def measure_bandwidth(repeats: int) -> dict:
    out = {}
    for label, total_bytes in (("L1 (24 kB)", 24 * 1024), ("L2 (768 kB)", 768 * 1024),
                               ("L3 (8 MB)", 8 * 2**20), ("DRAM (384 MB)", 384 * 2**20)):
        n = total_bytes // 12
        a, b, c = (np.random.rand(n).astype(np.float32) for _ in range(3))
        reps = max(1, int(2e8 // n))  # about 2.4 GB moved per measurement
        moved = 12.0 * n * reps
        entry = {"working_set_bytes": 12 * n}
        lo, med = best_cpu(lambda a=a, b=b, c=c, reps=reps: _triad_serial(a, b, c, np.float32(1.5), reps), repeats)
        entry["threads_1_gb_s"] = moved / lo / 1e9
        entry["threads_1_median_gb_s"] = moved / med / 1e9
        numba.set_num_threads(2)
        lo, med = best_wall(lambda a=a, b=b, c=c, reps=reps: _triad_parallel(a, b, c, np.float32(1.5), reps, 2),
                            repeats)
        entry["threads_2_gb_s"] = moved / lo / 1e9
        entry["threads_2_median_gb_s"] = moved / med / 1e9
        out[label] = entry
    return out


# -- 4. random bilinear footprints ----------------------------------------------------------
@njit(cache=True)
def _random_bilinear(vol, idx, fx, fy, stride, reps):
    acc = 0.0
    for _ in range(reps):
        for i in range(idx.shape[0]):
            j = idx[i]
            v00 = vol[j]
            v01 = vol[j + 1]
            v10 = vol[j + stride]
            v11 = vol[j + stride + 1]
            lo = v00 + fx[i] * (v01 - v00)
            hi = v10 + fx[i] * (v11 - v10)
            acc += lo + fy[i] * (hi - lo)
    return acc


def measure_gather(repeats: int) -> dict:
    out = {}
    rng = np.random.default_rng(0)
    for label, n in (("128^3 (8 MB)", 128), ("256^3 (64 MB)", 256)):
        vol = rng.random(n**3, dtype=np.float32)
        m = 1 << 20
        idx = rng.integers(0, n**3 - n - 2, size=m).astype(np.int64)
        fx = rng.random(m, dtype=np.float32)
        fy = rng.random(m, dtype=np.float32)
        lo, med = best_cpu(lambda vol=vol, idx=idx, fx=fx, fy=fy, n=n: _random_bilinear(vol, idx, fx, fy, n, 4),
                           repeats)
        out[label] = {"samples_per_s": m * 4 / lo, "median_samples_per_s": m * 4 / med}
    return out


# -- 5. the backend on volumes of growing size ------------------------------------------
def measure_kernel_sweep(repeats: int) -> dict:
    """The numba backend's serial forward kernel alone (no API overhead, ray table built
    beforehand), 1 thread, CPU time, on ``N^3`` volumes into two ``2N x 2N`` views (the
    scaling benchmark's ray density: about 1.2 rays per voxel column), repeated so each
    measurement takes at least ~50 ms."""
    from tomoprior.projectors import numba_backend as nb

    out = {}
    for size in (16, 32, 64, 128, 256):
        prob = bench.Problem.build(size, 2 * size)
        geom = prob.geom
        table = nb._ray_table(geom.grid, geom.detector_shapes, geom.vectors.detach().double(), 1)
        samples = int(np.maximum(table.rp[:, nb._K1] - table.rp[:, nb._K0] + 1, 0).sum())
        vol = prob.volume.reshape(1, -1).numpy()
        res = np.empty((1, table.rp.shape[0]), np.float32)
        reps = max(1, int(2e7 // max(samples, 1)))

        def run(vol=vol, table=table, res=res, reps=reps):
            for _ in range(reps):
                nb._forward_serial(vol, table.rp, table.dl, table.nxyz, res)

        lo, med = best_cpu(run, repeats)
        out[f"{size}^3"] = {"volume_bytes": 4 * size**3, "detector": 2 * size, "samples": samples, "reps": reps,
                            "samples_per_cpu_s": samples * reps / lo, "median_samples_per_cpu_s": samples * reps / med}
    return out


# -- 6. the Joseph inner loop, as run and reordered ---------------------------------------
_FRAC = 32
_MASKV = (1 << 32) - 1
_INV = 1.0 / float(1 << 32)


def _synthetic_rays(n: int, rays_per_side: int):
    """Rays through an ``n^3`` volume, dominant axis z, fixed-point in-plane positions and
    steps (like the backend's ray table), ordered row by row as a detector would be."""
    one = float(1 << _FRAC)
    u = np.linspace(0.5, n - 2.5, rays_per_side)
    p0, q0 = np.meshgrid(u, u, indexing="ij")
    rng = np.random.default_rng(1)
    dp = 0.1 * (p0 - n / 2) / n + 0.001 * rng.standard_normal(p0.shape)  # a gentle cone
    dq = 0.1 * (q0 - n / 2) / n
    # keep every sample inside: start so the ray stays in [0, n - 2] over n planes
    p0 = np.clip(p0 - dp * n / 2, 0.1, n - 2.1)
    q0 = np.clip(q0 - dq * n / 2, 0.1, n - 2.1)
    dp = np.clip(dp, -p0 / n, (n - 2.01 - p0) / n)
    dq = np.clip(dq, -q0 / n, (n - 2.01 - q0) / n)
    table = np.stack([np.floor(p0 * one), np.floor(dp * one), np.floor(q0 * one), np.floor(dq * one)],
                     axis=-1).reshape(-1, 4).astype(np.int64)
    return table


@njit(cache=True)
def _joseph_as_run(vol, table, n):
    """One ray at a time, float32 interpolation, float64 sum in order (the backend's loop)."""
    out = np.empty(table.shape[0])
    sb = n
    sa = n * n
    inv = np.float32(_INV)
    for r in range(table.shape[0]):
        p, dp, q, dq = table[r, 0], table[r, 1], table[r, 2], table[r, 3]
        kb = 0
        acc = 0.0
        for _ in range(n):
            fp = np.float32(p & _MASKV) * inv
            fq = np.float32(q & _MASKV) * inv
            idx = np.uint64(kb + (p >> _FRAC) * sb + (q >> _FRAC))
            v00 = vol[idx]
            v10 = vol[idx + np.uint64(sb)]
            lo = v00 + fq * (vol[idx + np.uint64(1)] - v00)
            hi = v10 + fq * (vol[idx + np.uint64(sb + 1)] - v10)
            acc += lo + fp * (hi - lo)
            p += dp
            q += dq
            kb += sa
        out[r] = acc
    return out


@njit(cache=True, fastmath=True)
def _joseph_interleaved(vol, table, n):
    """Four neighbouring rays per pass, float32 sums: four independent dependency chains."""
    out = np.empty(table.shape[0])
    sb = n
    sa = n * n
    inv = np.float32(_INV)
    for r0 in range(0, table.shape[0] - 3, 4):
        p = table[r0:r0 + 4, 0].copy()
        dp = table[r0:r0 + 4, 1].copy()
        q = table[r0:r0 + 4, 2].copy()
        dq = table[r0:r0 + 4, 3].copy()
        acc = np.zeros(4, np.float32)
        kb = 0
        for _ in range(n):
            for j in range(4):
                fp = np.float32(p[j] & _MASKV) * inv
                fq = np.float32(q[j] & _MASKV) * inv
                idx = kb + (p[j] >> _FRAC) * sb + (q[j] >> _FRAC)
                v00 = vol[idx]
                v10 = vol[idx + sb]
                lo = v00 + fq * (vol[idx + 1] - v00)
                hi = v10 + fq * (vol[idx + sb + 1] - v10)
                acc[j] += lo + fp * (hi - lo)
                p[j] += dp[j]
                q[j] += dq[j]
            kb += sa
        for j in range(4):
            out[r0 + j] = acc[j]
    return out


@njit(cache=True, fastmath=True)
def _joseph_plane_major(vol, table, n, block):
    """``block`` neighbouring rays advanced together plane by plane (inner loop over rays,
    independent iterations: the compiler may vectorise it), float32 sums."""
    out = np.empty(table.shape[0])
    sb = n
    sa = n * n
    inv = np.float32(_INV)
    nr = table.shape[0]
    p = np.empty(block, np.int64)
    q = np.empty(block, np.int64)
    acc = np.empty(block, np.float32)
    for r0 in range(0, nr, block):
        m = min(block, nr - r0)
        for j in range(m):
            p[j] = table[r0 + j, 0]
            q[j] = table[r0 + j, 2]
            acc[j] = 0.0
        kb = 0
        for _ in range(n):
            for j in range(m):
                fp = np.float32(p[j] & _MASKV) * inv
                fq = np.float32(q[j] & _MASKV) * inv
                idx = kb + (p[j] >> _FRAC) * sb + (q[j] >> _FRAC)
                v00 = vol[idx]
                v10 = vol[idx + sb]
                lo = v00 + fq * (vol[idx + 1] - v00)
                hi = v10 + fq * (vol[idx + sb + 1] - v10)
                acc[j] += lo + fp * (hi - lo)
                p[j] += table[r0 + j, 1]
                q[j] += table[r0 + j, 3]
            kb += sa
        for j in range(m):
            out[r0 + j] = acc[j]
    return out


def measure_joseph(repeats: int) -> dict:
    n = 128
    vol = np.random.default_rng(2).random(n**3, dtype=np.float32)
    table = _synthetic_rays(n, 256)
    samples = table.shape[0] * n
    a = _joseph_as_run(vol, table, n)
    b = _joseph_interleaved(vol, table, n)
    rel = float(np.max(np.abs(a - b)) / np.max(np.abs(a)))
    lo1, med1 = best_cpu(lambda: _joseph_as_run(vol, table, n), repeats)
    lo4, med4 = best_cpu(lambda: _joseph_interleaved(vol, table, n), repeats)
    c = _joseph_plane_major(vol, table, n, 64)
    rel = max(rel, float(np.max(np.abs(a - c)) / np.max(np.abs(a))))
    lo64, med64 = best_cpu(lambda: _joseph_plane_major(vol, table, n, 64), repeats)
    return {"samples": samples, "as_run_samples_per_s": samples / lo1, "as_run_median": samples / med1,
            "interleaved_samples_per_s": samples / lo4, "interleaved_median": samples / med4,
            "plane_major_samples_per_s": samples / lo64, "plane_major_median": samples / med64,
            "max_rel_difference": rel}


# -- bounds -------------------------------------------------------------------------------
def bounds(res: dict, loads_per_cycle: float) -> dict:
    """Per-core upper bounds on Joseph samples per second, one per resource.

    * ``l1_load_ports``: 4 element loads per sample, at most ``loads_per_cycle`` per cycle
      (3 on Zen 4 and Golden Cove) with every load an L1 hit: ``clock * loads_per_cycle / 4``.
      This is the bound for any implementation, scalar or gather-vectorised (gathers are
      executed as element loads), as long as neighbouring rays keep the footprint in L1.
    * ``strict_sum_latency``: the backend sums each ray in float64 in order, one ray at a
      time: one dependent add per sample, i.e. the measured dependent-add rate.
    * ``l3_bandwidth`` / ``dram_bandwidth``: if every sample brought one new 64-byte line
      (no reuse between neighbouring rays; the 4 taps are 2 lines, one usually shared with
      the previous plane's sample of the neighbouring ray): triad bandwidth / 64 B.
    * ``random_footprint``: measured rate of bilinear footprints at random positions of an
      8 MB volume (no locality at all): the worst case, not a bound.
    * ``flops``: about 10 float32 flops per sample against the matmul rate (not binding).
    """
    clock = res["clock"]["clock_ghz_estimate"] * 1e9
    bw = res["bandwidth"]
    return {
        "l1_load_ports": clock * loads_per_cycle / 4.0,
        "strict_sum_latency": res["clock"]["dependent_fadds_per_s"],
        "l3_bandwidth_one_line_per_sample": bw["L3 (8 MB)"]["threads_1_gb_s"] * 1e9 / 64.0,
        "dram_bandwidth_one_line_per_sample": bw["DRAM (384 MB)"]["threads_1_gb_s"] * 1e9 / 64.0,
        "random_footprint_8mb": res["gather"]["128^3 (8 MB)"]["samples_per_s"],
        "flops_10_per_sample": res["flops"]["threads_1"]["gflops"] * 1e9 / 10.0,
        "loads_per_cycle_assumed": loads_per_cycle,
    }


def measure_problem(repeats: int) -> dict:
    """The backend on the benchmark problem, 128^3 -> 2 x 256^2: samples per CPU second
    with 1 thread, and per wall second with 2 (contended on a shared machine)."""
    prob = bench.Problem.build(128, 256)
    samples = bench.numba_backend_samples(prob.geom)["evaluated"]
    out = {"samples": samples}
    torch.set_num_threads(1)
    lo, med = best_cpu(lambda: tp.project(prob.volume, prob.geom, backend="numba"), repeats)
    out["threads_1_cpu_s"] = {"min": lo, "median": med, "samples_per_s": samples / lo}
    torch.set_num_threads(2)
    lo, med = best_wall(lambda: tp.project(prob.volume, prob.geom, backend="numba"), repeats)
    out["threads_2_wall_s"] = {"min": lo, "median": med, "samples_per_s": samples / lo}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=7, help="runs per measurement (the best is kept; default 7)")
    p.add_argument("--fadd-latency", type=float, default=3.0, help="float64 add latency in cycles (default 3)")
    p.add_argument("--loads-per-cycle", type=float, default=3.0, help="L1 loads per cycle per core (default 3)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="JSON results (default benchmarks/results/hardware.json)")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.fadd_latency <= 0 or args.loads_per_cycle <= 0:
        p.error("--repeats must be >= 1; --fadd-latency and --loads-per-cycle > 0")
    torch.set_num_threads(2)
    load_before = os.getloadavg()
    started = time.perf_counter()
    res: dict = {"machine": bench.machine_info(2)}
    steps = (("clock", lambda: measure_clock(args.repeats, args.fadd_latency)),
             ("flops", lambda: measure_flops(args.repeats)),
             ("bandwidth", lambda: measure_bandwidth(args.repeats)),
             ("gather", lambda: measure_gather(args.repeats)),
             ("kernel", lambda: measure_kernel_sweep(args.repeats)),
             ("joseph", lambda: measure_joseph(args.repeats)),
             ("problem", lambda: measure_problem(args.repeats)))
    for name, fn in steps:
        print(f"  {name} ...", flush=True)
        res[name] = fn()
    res["bounds"] = bounds(res, args.loads_per_cycle)
    load_after = os.getloadavg()
    res["load_average"] = {"before": list(load_before), "after": list(load_after)}
    res["elapsed_s"] = time.perf_counter() - started
    res["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")

    c = res["clock"]
    print(f"dependent float64 adds: {c['dependent_fadds_per_s'] / 1e9:.2f} G/s -> clock about "
          f"{c['clock_ghz_estimate']:.2f} GHz at {args.fadd_latency:g} cycles latency")
    for k, v in res["flops"].items():
        print(f"float32 matmul 1024^2, {k.replace('_', ' ')}: {v['gflops']:.0f} GFLOP/s ({v['timer']} time)")
    for k, v in res["bandwidth"].items():
        print(f"triad {k:<14}: 1 thread {v['threads_1_gb_s']:6.1f} GB/s, 2 threads {v['threads_2_gb_s']:6.1f} GB/s "
              f"(medians {v['threads_1_median_gb_s']:.1f} / {v['threads_2_median_gb_s']:.1f})")
    for k, v in res["gather"].items():
        print(f"random bilinear footprints in {k}: {v['samples_per_s'] / 1e6:.0f} M/s per core")
    for k, v in res["kernel"].items():
        print(f"numba forward, volume {k:<6} ({v['volume_bytes'] / 2**20:7.2f} MB), 1 thread: "
              f"{v['samples_per_cpu_s'] / 1e6:.0f} Msamples per CPU second")
    j = res["joseph"]
    print(f"Joseph inner loop, 128^3 synthetic rays, 1 core: as run {j['as_run_samples_per_s'] / 1e6:.0f} M/s, "
          f"4 rays interleaved {j['interleaved_samples_per_s'] / 1e6:.0f} M/s, 64 rays plane-major "
          f"{j['plane_major_samples_per_s'] / 1e6:.0f} M/s (max rel difference {j['max_rel_difference']:.1e})")
    b = res["bounds"]
    pr = res["problem"]
    per_core = pr["threads_1_cpu_s"]["samples_per_s"]
    print(f"benchmark problem 128^3 -> 2x256^2: {pr['samples']:,} samples; 1 thread {per_core / 1e6:.0f} M/s per "
          f"CPU second; 2 threads {pr['threads_2_wall_s']['samples_per_s'] / 1e6:.0f} M/s wall (best of "
          f"{args.repeats})")
    print("per-core bounds (samples/s) and the fraction the backend reaches with 1 thread:")
    for k, v in b.items():
        if k == "loads_per_cycle_assumed":
            continue
        print(f"  {k:<36} {v / 1e6:8.0f} M/s   reached {100 * per_core / v:5.1f} %")
    print(f"load average before {' '.join(f'{x:.2f}' for x in load_before)}, after "
          f"{' '.join(f'{x:.2f}' for x in load_after)}; {res['elapsed_s']:.0f} s")
    bench.write_json_atomic(Path(args.out), res)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
