"""Speed (and peak memory) of tomoprior's projectors next to two peers, on CPU.

What is timed, for every registered tomoprior backend and for the peers:

* ``forward``   ``tp.project(volume, geom)``: 2 views of line integrals;
* ``back``      ``tp.backproject(w, geom)``: the adjoint. The peers have no adjoint of
  their own, so for them this is autograd's backward pass of a forward projection that
  was built (untimed) just before: ``out.backward(w)``;
* ``fwd+bwd``   ``loss = (tp.project(vol, geom) * w).sum(); loss.backward()`` with
  ``vol.requires_grad``: one training step's worth of projector work.

Peers, in the same run and on the same volume and geometry:

* ``grid_sample``: the plain projector anyone would write first, defined below: every
  pixel ray is sampled at a fixed number of points spread uniformly between the source-
  and detector-side ends of the volume's bounding sphere (no per-ray clipping), all at
  once (in big chunks) through one trilinear ``torch.nn.functional.grid_sample``, and
  summed times the step. Samples per mm are the same as tomoprior's default (half-voxel
  steps). Its gradients are autograd's.
* DiffDRR (optional, ``pip install diffdrr``): its ``siddon`` and ``trilinear`` renderers,
  run in this interpreter if ``import diffdrr`` works, otherwise in another interpreter
  given by ``--diffdrr-python`` (DiffDRR pulls a newer torch, so it usually lives in its
  own virtual environment; see ``benchmarks/README.md``).

Each case runs once untimed (warm-up), then ``--repeats`` times; the table shows the
median and the minimum. A case whose warm-up shows it would take longer than
``--budget`` seconds gets fewer repeats, and a tomoprior backend whose forward projection
of the full problem would take longer than a third of the budget (the exact Siddon
``reference``, on big problems) is run on a smaller detector; the table says so, and the
throughput columns (rays per second) stay comparable.

Peak memory is the growth of the resident set during one run of the case, measured in a
fresh subprocess per case after a warm-up on a tiny problem, with glibc told to return
freed memory to the system (Linux ``/proc``; skipped elsewhere, or with ``--no-memory``).

The table gives throughput ratios against ``grid_sample``, DiffDRR's Siddon renderer and
its trilinear renderer, and ``cpu/wall`` (process CPU seconds per wall second: how many
threads were busy; on a shared machine, how much of the time the call got a core). For
the fast ``"numba"`` backend (``--numba-repeats`` timed calls) it also reports issue 3's
targets (forward <= 0.05 s, back-projection <= 0.1 s, forward + backward <= 0.25 s on
128^3 -> 2 x 256^2, and >= 100x DiffDRR's Siddon renderer), the ray-table set-up paid
once per new geometry, the first call in a fresh process (compiling, and with the disk
cache), and a 1- vs 2-thread run in fresh processes with a bitwise comparison of the
results (``--no-numba-extras`` skips the last two).

Usage::

    python benchmarks/projectors.py                       # 128^3 -> 2 x 256^2, 2 threads
    python benchmarks/projectors.py --quick               # smoke test, a few seconds
    python benchmarks/projectors.py --diffdrr-python /path/to/venv-diffdrr/bin/python
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as _dt
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the usual alias)

import tomoprior as tp

# The pediatric setup of DESIGN.md: a 192 mm field of view and a 307.2 mm detector
# (1536 x 0.2 mm), 1000 mm source-to-isocenter, 1500 mm source-to-detector. --size and
# --det change the sampling, not the physical setup.
FIELD_OF_VIEW_MM = 192.0
DETECTOR_WIDTH_MM = 307.2
OPERATIONS = ("forward", "back", "fwd+bwd")
PEER = "grid_sample"
RESULT_MARKER = "BENCHMARK_RESULT "
SCHEMA_VERSION = 1
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "projectors.json"


# ---------------------------------------------------------------------------------------
# The problem
# ---------------------------------------------------------------------------------------
def build_geometry(size: int, det: int) -> tp.BiplanarGeometry:
    """A ``size^3`` grid over the 192 mm field and two ``det x det`` views (PA + lateral)."""
    spacing = FIELD_OF_VIEW_MM / size
    grid = tp.VolumeGrid(shape=(size, size, size), spacing=(spacing, spacing, spacing))
    pitch = DETECTOR_WIDTH_MM / det
    frontal = tp.geometry.default_frontal(pixel_pitch=pitch, detector_shape=(det, det))
    lateral = tp.geometry.default_lateral(pixel_pitch=pitch, detector_shape=(det, det))
    return tp.BiplanarGeometry.from_parameters(frontal, lateral, grid=grid)


def make_volume(size: int, seed: int = 0) -> torch.Tensor:
    """A smooth head-like phantom, float32 ``(size, size, size)``, attenuation per mm.

    A soft-edged skull shell (0.045/mm) around brain-like tissue (0.021/mm) with a
    low-frequency random texture and two darker ellipsoids, zero outside. Smooth on
    purpose: the projectors compared here discretise differently, and a smooth volume
    makes their agreement a test of geometry rather than of aliasing.
    """
    gen = torch.Generator().manual_seed(seed)
    axis = torch.linspace(-1.0, 1.0, size, dtype=torch.float64)
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    edge = 2.5 / size  # soft edges about a voxel wide

    def ellipsoid(cx, cy, cz, ax, ay, az):
        r = torch.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 + ((z - cz) / az) ** 2)
        return torch.sigmoid((1.0 - r) / edge)

    head = ellipsoid(0.0, 0.0, 0.02, 0.70, 0.82, 0.78)
    brain = ellipsoid(0.0, 0.0, 0.02, 0.63, 0.75, 0.71)
    texture = torch.rand((1, 1, 6, 6, 6), generator=gen, dtype=torch.float64)
    texture = F.interpolate(texture, size=(size, size, size), mode="trilinear", align_corners=True)[0, 0]
    tissue = 0.021 * (0.85 + 0.3 * texture)
    holes = ellipsoid(-0.18, 0.05, 0.1, 0.1, 0.3, 0.15) + ellipsoid(0.18, 0.05, 0.1, 0.1, 0.3, 0.15)
    vol = 0.045 * (head - brain) + brain * tissue * (1.0 - 0.6 * holes)
    return vol.to(torch.float32).contiguous()


def make_weights(geom, seed: int = 1) -> torch.Tensor:
    """Random cotangent / back-projection input ``(views, rows, cols)``, float32."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(geom.projection_shape, generator=gen, dtype=torch.float32)


def num_rays(geom) -> int:
    return sum(r * c for r, c in geom.detector_shapes)


def problem_label(size: int, det: int) -> str:
    return f"{size}^3 -> 2x{det}^2"


# ---------------------------------------------------------------------------------------
# The plain grid_sample peer
# ---------------------------------------------------------------------------------------
def _view_rays(view) -> tuple[torch.Tensor, torch.Tensor]:
    """Source ``(3,)`` and unit directions ``(rows*cols, 3)`` (float64) of every pixel of a view."""
    s = view.source.detach().double()
    c = view.detector_center.detach().double()
    u = view.u.detach().double()
    v = view.v.detach().double()
    rows, cols = view.shape
    rr = torch.arange(rows, dtype=torch.float64) - (rows - 1) / 2
    cc = torch.arange(cols, dtype=torch.float64) - (cols - 1) / 2
    pixels = c + rr[:, None, None] * v + cc[None, :, None] * u  # (rows, cols, 3)
    d = pixels.reshape(-1, 3) - s
    return s, d / torch.linalg.norm(d, dim=1, keepdim=True)


@dataclass(frozen=True)
class SphereSampling:
    """Fixed sampling of the peer: ``count`` points over the bounding sphere's diameter."""

    radius: float  # mm
    count: int
    step: float  # mm, = 2 radius / (count - 1)


def sphere_sampling(grid, step_voxels: float = 0.5) -> SphereSampling:
    radius = 0.5 * math.sqrt(sum(e * e for e in grid.extent_mm))
    target = step_voxels * min(grid.spacing)
    count = math.ceil(2 * radius / target) + 1
    return SphereSampling(radius, count, 2 * radius / (count - 1))


def grid_sample_project(volume: torch.Tensor, geom, step_voxels: float = 0.5,
                        chunk_samples: int = 2**23) -> torch.Tensor:
    """The naive peer: trilinear ``grid_sample`` on a fixed lattice per ray.

    Shapes: ``(nz, ny, nx)`` float32 -> ``(views, rows, cols)`` line integrals (mm x 1/mm).
    Differentiable in ``volume`` by autograd. ``chunk_samples`` only bounds the memory of
    the coordinates in one ``grid_sample`` call.
    """
    grid = geom.grid
    if min(grid.shape) < 2:
        raise ValueError("the grid_sample peer needs at least two voxels along every axis")
    sampling = sphere_sampling(grid, step_voxels)
    center = torch.tensor(grid.center, dtype=torch.float64)
    n = torch.tensor(grid.shape_xyz, dtype=torch.float64)
    sp = torch.tensor(grid.spacing_xyz, dtype=torch.float64)
    to_unit = 2.0 / ((n - 1) * sp)  # world offset from the centre -> grid_sample coordinate
    fractions = torch.linspace(0.0, 1.0, sampling.count, dtype=volume.dtype)
    vol5 = volume[None, None]
    per_chunk = max(1, chunk_samples // sampling.count)
    images = []
    for view in geom.views:
        s, e = _view_rays(view)
        t_mid = e @ (center - s)  # the ray's point nearest the sphere's centre
        near = s + (t_mid - sampling.radius)[:, None] * e
        far = s + (t_mid + sampling.radius)[:, None] * e
        a = ((near - center) * to_unit).to(volume.dtype)
        b = ((far - near) * to_unit).to(volume.dtype)
        parts = []
        for start in range(0, a.shape[0], per_chunk):
            aa, bb = a[start:start + per_chunk], b[start:start + per_chunk]
            coords = aa[:, None, :] + fractions[None, :, None] * bb[:, None, :]  # (R, K, 3)
            samples = F.grid_sample(vol5, coords[None, :, :, None, :], mode="bilinear",
                                    padding_mode="zeros", align_corners=True)
            parts.append(samples[0, 0, :, :, 0].sum(-1) * sampling.step)
        images.append(torch.cat(parts).reshape(view.shape))
    return torch.stack(images)


# ---------------------------------------------------------------------------------------
# Cases: what is timed
# ---------------------------------------------------------------------------------------
@dataclass
class Problem:
    size: int
    det: int
    geom: object
    volume: torch.Tensor
    weights: torch.Tensor

    @classmethod
    def build(cls, size: int, det: int) -> Problem:
        geom = build_geometry(size, det)
        return cls(size, det, geom, make_volume(size), make_weights(geom))

    @property
    def rays(self) -> int:
        return num_rays(self.geom)

    @property
    def label(self) -> str:
        return problem_label(self.size, self.det)


def prepare(impl: str, op: str, prob: Problem):
    """Untimed set-up for one run of a case; returns the zero-argument call to time."""
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


# ---------------------------------------------------------------------------------------
# The "numba" backend in fresh processes: first call (compilation) and thread counts
# ---------------------------------------------------------------------------------------
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
            cmd = [sys.executable, os.path.abspath(__file__), "--numba-child", f"first-call:{impl}",
                   "--size", str(size), "--det", str(det), "--threads", str(threads)]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                                      env=dict(_child_env(), **extra))
            except subprocess.TimeoutExpired:
                results[label] = {"error": "timed out"}
                continue
            results[label] = _parse_result(proc)
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
            cmd = [sys.executable, os.path.abspath(__file__), "--numba-child", f"threads:{impl}:{save}",
                   "--size", str(size), "--det", str(det), "--threads", str(n),
                   "--repeats", str(repeats), "--budget", str(budget)]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=_child_env())
            except subprocess.TimeoutExpired:
                out["runs"][n] = {"error": "timed out"}
                continue
            got = _parse_result(proc)
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


# ---------------------------------------------------------------------------------------
# Peak memory, one fresh subprocess per case
# ---------------------------------------------------------------------------------------
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
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-case", f"{impl}:{op}",
           "--size", str(size), "--det", str(det), "--threads", str(threads)]
    try:
        # large blocks straight from mmap and back to the system when freed: a call's
        # allocations then show in the resident set instead of reusing freed heap memory
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                              env=dict(_child_env(), MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072"))
    except subprocess.TimeoutExpired:
        return {"peak_extra_mb": None, "error": "timed out"}
    return _parse_result(proc)


def _child_env() -> dict:
    env = dict(os.environ)
    here = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _parse_result(proc: subprocess.CompletedProcess) -> dict:
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    return {"error": f"exit code {proc.returncode}: " + " | ".join(tail)}


# ---------------------------------------------------------------------------------------
# DiffDRR
# ---------------------------------------------------------------------------------------
# Self-contained: runs in whichever interpreter has diffdrr (this one or --diffdrr-python).
# The geometry is handed over as tomoprior's View vectors and turned into DiffDRR's camera
# here: DRR(subject, sdd, height, delx, width, dely, reverse_x_axis=False) puts the source
# at the camera origin and pixel (r, c) at ((c - (W-1)/2) delx, -(r - (H-1)/2) dely, sdd);
# a pose matrix [R | t] maps that into the world, so t = source and the columns of R are
# the unit u, -v and beam directions. The subject comes from diffdrr.data.read() on a
# torchio ScalarImage whose affine maps voxel indices to the same world millimetres.
DIFFDRR_SNIPPET = r'''
import json, statistics, sys, time

RESULT_MARKER = "BENCHMARK_RESULT "


def _status_kb(key):
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None


def _reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def run_diffdrr(cfg):
    import numpy as np
    import torch
    import torchio
    import diffdrr
    from diffdrr.data import read
    from diffdrr.drr import DRR
    from diffdrr.pose import RigidTransform

    torch.set_num_threads(cfg["threads"])
    vol = np.load(cfg["volume"]).astype(np.float32)  # (nz, ny, nx)
    weights = torch.from_numpy(np.load(cfg["weights"]).astype(np.float32))  # (views, rows, cols)
    nz, ny, nx = vol.shape
    sx, sy, sz = cfg["spacing_xyz"]
    cx, cy, cz = cfg["center_xyz"]
    # torchio wants (channels, x, y, z) and an affine from those indices to world mm
    data = torch.from_numpy(vol).permute(2, 1, 0).contiguous()[None]
    affine = np.eye(4)
    affine[:3, :3] = np.diag([sx, sy, sz])
    affine[:3, 3] = [cx - (nx - 1) / 2 * sx, cy - (ny - 1) / 2 * sy, cz - (nz - 1) / 2 * sz]
    subject = read(torchio.ScalarImage(tensor=data, affine=affine), orientation=None, center_volume=False)

    mats, sdds, notes = [], [], []
    rows, cols = cfg["views"][0]["shape"]
    pitch_u = pitch_v = None
    for view in cfg["views"]:
        s, c, u, v = (np.asarray(view[k], dtype=np.float64) for k in ("source", "detector_center", "u", "v"))
        if tuple(view["shape"]) != (rows, cols):
            raise ValueError("DiffDRR renders all poses of one DRR on the same detector")
        pitch_u, pitch_v = float(np.linalg.norm(u)), float(np.linalg.norm(v))
        eu, ev = u / pitch_u, v / pitch_v
        beam = -np.cross(eu, ev)
        beam /= np.linalg.norm(beam)
        sdd = float((c - s) @ beam)
        offset = (c - s) - sdd * beam
        if np.linalg.norm(offset) > 1e-6 * sdd:
            notes.append("principal point off the detector centre: not mapped to DiffDRR")
        sdds.append(sdd)
        m = np.eye(4)
        m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = eu, -ev, beam, s
        mats.append(m)
    if max(sdds) - min(sdds) > 1e-6 * max(sdds):
        raise ValueError("DiffDRR renders all poses of one DRR with one source-to-detector distance")
    pose = RigidTransform(torch.tensor(np.stack(mats), dtype=torch.float32))
    cotangent = weights[:, None]  # DiffDRR images are (poses, 1, rows, cols)
    density = data[0].clone()  # our attenuation per mm, not read()'s HU -> [0, 1] density

    out = {"version": diffdrr.__version__, "torch": torch.__version__, "threads": torch.get_num_threads(),
           "notes": notes, "results": []}
    for renderer in cfg["renderers"]:
        drr = DRR(subject, sdd=sdds[0], height=rows, width=cols, delx=pitch_u, dely=pitch_v,
                  reverse_x_axis=False, renderer=renderer)
        drr.density = density.clone()
        kwargs = {"n_points": cfg["n_points"]} if renderer == "trilinear" else {}

        def forward():
            with torch.no_grad():
                return drr(pose, **kwargs)

        def prepare(op):
            drr.density = density.clone()
            if op == "forward":
                return forward
            drr.density.requires_grad_(True)
            if op == "back":
                img = drr(pose, **kwargs)
                return lambda: img.backward(cotangent)

            def step():
                loss = (drr(pose, **kwargs) * cotangent).sum()
                loss.backward()
            return step

        with torch.no_grad():
            image = drr(pose, **kwargs)[:, 0].numpy()
        np.save(cfg["image_prefix"] + renderer + ".npy", image)
        for op in ("forward", "back", "fwd+bwd"):
            run = prepare(op)
            measured = cfg["memory"] and _reset_peak()
            before = _status_kb("VmRSS")
            t0 = time.perf_counter()
            run()
            warmup = time.perf_counter() - t0
            peak = _status_kb("VmHWM")
            del run
            repeats = cfg["repeats"]
            planned = repeats
            if warmup * repeats > cfg["budget"]:
                planned = max(1, min(repeats, int(cfg["budget"] // max(warmup, 1e-9))))
            times, cpu = [], []
            for _ in range(planned):
                run = prepare(op)
                c0 = time.process_time()
                t0 = time.perf_counter()
                run()
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
                del run
            samples = None
            n_rays = len(cfg["views"]) * rows * cols
            if renderer == "trilinear":
                samples = n_rays * cfg["n_points"]
            elif renderer == "siddon":
                samples = n_rays * (nx + ny + nz + 2)  # one sample per pair of plane crossings
            out["results"].append({
                "impl": "diffdrr-" + renderer, "op": op, "times_s": times, "cpu_s": cpu, "warmup_s": warmup,
                "repeats": planned, "repeats_reduced": planned < repeats, "samples": samples,
                "peak_extra_mb": max(0.0, (peak - before) / 1024.0) if measured and peak and before else None,
            })
    return out


if __name__ == "__main__":
    with open(sys.argv[1]) as fh:
        config = json.load(fh)
    print(RESULT_MARKER + json.dumps(run_diffdrr(config)), flush=True)
'''


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
        namespace: dict = {"__name__": "diffdrr_benchmark"}
        exec(compile(DIFFDRR_SNIPPET, "diffdrr_snippet", "exec"), namespace)
        try:
            out = namespace["run_diffdrr"](dict(base, renderers=renderers, memory=False))
        except Exception as exc:  # report, keep the rest of the benchmark
            return {"status": "failed", "reason": f"{type(exc).__name__}: {exc}", "where": "in-process"}
        out.update(status="ok", where="in-process", python=sys.executable)
        out["notes"].append("peak memory not measured in-process")
        return out
    python = args.diffdrr_python or os.environ.get("TOMOPRIOR_DIFFDRR_PYTHON")
    if not python:
        return {"status": "skipped",
                "reason": "diffdrr is not importable here; pass --diffdrr-python PATH (see benchmarks/README.md)"}
    snippet = workdir / "diffdrr_snippet.py"
    snippet.write_text(DIFFDRR_SNIPPET, encoding="utf-8")
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
        got = _parse_result(proc)
        if "error" in got:
            return {"status": "failed", "reason": got["error"], "python": python}
        merged["results"].extend(got["results"])
        merged["notes"].extend(n for n in got["notes"] if n not in merged["notes"])
        for key in ("version", "torch", "threads"):
            merged[key] = got[key]
    return merged


# ---------------------------------------------------------------------------------------
# Machine, table, JSON
# ---------------------------------------------------------------------------------------
def machine_info(threads: int) -> dict:
    cpu = platform.processor() or platform.machine()
    cpuinfo: dict = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if not key and cpuinfo:
                    break  # first processor only
                cpuinfo.setdefault(key, value.strip())
    except OSError:
        pass
    cpu = cpuinfo.get("model name", cpu)
    # virtual machines often report a bare "AMD EPYC": family/model name the generation
    family = {k: cpuinfo[k] for k in ("vendor_id", "cpu family", "model") if k in cpuinfo}
    simd = [f for f in ("avx2", "avx512f", "fma") if f in cpuinfo.get("flags", "").split()]
    mem_gib = None
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            mem_gib = round(int(fh.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu": cpu, "cpu_id": family, "simd": simd, "logical_cpus": os.cpu_count(), "usable_cpus": usable,
        "memory_gib": mem_gib,
        "os": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
        "tomoprior": tp.__version__, "threads": threads, "torch_threads": torch.get_num_threads(),
    }


def _median(xs):
    return statistics.median(xs) if xs else None


def finish_rows(rows: list[dict]) -> None:
    """Add medians, throughput and the ratios against the peers (by rays per second)."""
    for row in rows:
        row["median_s"] = _median(row["times_s"])
        row["min_s"] = min(row["times_s"]) if row["times_s"] else None
        med = row["median_s"]
        row["rays_per_s"] = row["rays"] / med if med else None
        row["samples_per_s"] = row["samples"] / med if med and row.get("samples") else None
        cpu = row.get("cpu_s")
        row["cpu_per_wall"] = (_median([c / t for c, t in zip(cpu, row["times_s"]) if t > 0])
                               if cpu else None)
    by_key = {(r["impl"], r["op"]): r for r in rows}
    for row in rows:
        row["speedup_vs_grid_sample"] = _ratio(row, by_key.get((PEER, row["op"])))
        row["speedup_vs_diffdrr_siddon"] = _ratio(row, by_key.get(("diffdrr-siddon", row["op"])))
        row["speedup_vs_diffdrr_trilinear"] = _ratio(row, by_key.get(("diffdrr-trilinear", row["op"])))


def _ratio(row, other):
    if other is None or not row.get("rays_per_s") or not other.get("rays_per_s"):
        return None
    return row["rays_per_s"] / other["rays_per_s"]


def format_table(rows: list[dict]) -> str:
    head = ["implementation", "operation", "problem", "runs", "median s", "min s", "cpu/wall", "Mrays/s",
            "Msamples/s", "peak extra MB", "vs grid_sample", "vs DiffDRR Siddon", "vs DiffDRR trilinear"]

    def num(x, fmt):
        return "-" if x is None else format(x, fmt)

    def ratio(x):
        return "-" if x is None else format(x, ".1f" if x >= 10 else ".2f") + "x"

    def runs(row):
        note = " (fewer)" if row["repeats_reduced"] else ""
        return f"{row['repeats']}{note}"

    body = []
    for r in rows:
        problem = r["problem"] + (" (reduced)" if r.get("problem_reduced") else "")
        body.append([
            r["impl"], r["op"], problem, runs(r), num(r["median_s"], ".3f"), num(r["min_s"], ".3f"),
            num(r.get("cpu_per_wall"), ".2f"),
            num(r["rays_per_s"] and r["rays_per_s"] / 1e6, ".3f"),
            num(r["samples_per_s"] and r["samples_per_s"] / 1e6, ".1f"),
            num(r.get("peak_extra_mb"), ".0f"),
            ratio(r["speedup_vs_grid_sample"]), ratio(r["speedup_vs_diffdrr_siddon"]),
            ratio(r["speedup_vs_diffdrr_trilinear"]),
        ])
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    right = set(range(3, len(head)))

    def line(cells):
        return "| " + " | ".join(c.rjust(w) if i in right else c.ljust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if i in right else ("-" * (w + 2))
                          for i, w in enumerate(widths)) + "|"
    return "\n".join([line(head), rule, *(line(b) for b in body)])


#: Issue 3's targets for the fast CPU backend: median seconds on 128^3 -> 2 x 256^2,
#: float32, 2 threads, and the speed-up over DiffDRR's Siddon renderer in the same run.
TARGETS_S = {"forward": 0.05, "back": 0.10, "fwd+bwd": 0.25}
TARGET_VS_DIFFDRR_SIDDON = 100.0
TARGET_PROBLEM = (128, 256)


def target_report(rows: list[dict], impl: str, problem: tuple[int, int], threads: int) -> dict:
    """``impl``'s medians and minima against :data:`TARGETS_S` and the DiffDRR Siddon ratio."""
    by_op = {r["op"]: r for r in rows if r["impl"] == impl and not r.get("problem_reduced")}
    siddon = {r["op"]: r for r in rows if r["impl"] == "diffdrr-siddon"}
    report = {"impl": impl, "applies": problem == TARGET_PROBLEM and threads == 2, "ops": {}}
    for op, limit in TARGETS_S.items():
        row = by_op.get(op)
        if row is None:
            continue
        entry = {"median_s": row["median_s"], "min_s": row["min_s"], "target_s": limit,
                 "meets_target": row["median_s"] <= limit}
        if op in siddon:
            entry["vs_diffdrr_siddon_median"] = siddon[op]["median_s"] / row["median_s"]
            entry["vs_diffdrr_siddon_min"] = siddon[op]["min_s"] / row["min_s"]
            entry["meets_diffdrr_target"] = entry["vs_diffdrr_siddon_median"] >= TARGET_VS_DIFFDRR_SIDDON
        report["ops"][op] = entry
    return report


def format_targets(report: dict) -> str:
    lines = [f"targets of issue 3 for '{report['impl']}'"
             + ("" if report["applies"] else " (defined for 128^3 -> 2x256^2, 2 threads: not this run)") + ":"]
    for op, e in report["ops"].items():
        text = (f"  {op:<8} median {e['median_s']:.4f} s (min {e['min_s']:.4f}) vs target <= {e['target_s']:.2f} s: "
                f"{'met' if e['meets_target'] else 'NOT met'}")
        if "vs_diffdrr_siddon_median" in e:
            text += (f"; {e['vs_diffdrr_siddon_median']:.0f}x DiffDRR Siddon by medians "
                     f"({e['vs_diffdrr_siddon_min']:.0f}x by minima), target >= {TARGET_VS_DIFFDRR_SIDDON:.0f}x: "
                     f"{'met' if e['meets_diffdrr_target'] else 'NOT met'}")
        lines.append(text)
    return "\n".join(lines)


def format_numba_info(info: dict) -> str:
    """The 'numba' details: samples, ray set-up, first call, thread counts."""
    lines = []
    sam = info.get("samples")
    if sam:
        lines.append(f"numba samples: {sam['evaluated']:,} bilinear samples ({sam['interior']:,} with all taps "
                     f"inside), {sam['hit_rays']:,} rays hit the volume")
    setup = info.get("ray_setup_s")
    if setup:
        lines.append(f"numba ray table set-up, once per new geometry (not in the table): median "
                     f"{statistics.median(setup):.4f} s, min {min(setup):.4f} s")
    for label, got in (info.get("first_call") or {}).items():
        what = "compiling (empty NUMBA_CACHE_DIR)" if label == "compile" else "kernels from the disk cache"
        if "error" in got:
            lines.append(f"numba first call, {what}: failed: {got['error']}")
            continue
        lines.append(f"numba first call in a fresh process, {what}: forward {got['first_forward_s']:.2f} s, "
                     f"then back {got['first_back_s']:.2f} s, fwd+bwd {got['first_fwd+bwd_s']:.2f} s; "
                     f"a second forward {got['warm_forward_s']:.3f} s")
    thr = info.get("threads")
    if thr:
        for n, got in thr["runs"].items():
            if "error" in got:
                lines.append(f"numba with {n} thread(s): failed: {got['error']}")
                continue
            meds = ", ".join(f"{op} {statistics.median(t['times_s']):.4f} s" for op, t in got["timings"].items())
            lines.append(f"numba with {n} thread(s) (fresh process, medians): {meds}")
        for pair, cmp in thr["comparison"].items():
            parts = []
            for key, c in cmp.items():
                parts.append(f"{key} " + ("bitwise equal" if c["bitwise_equal"]
                                          else f"max diff {c['max_diff_rel_to_max']:.1e} of max"))
            lines.append(f"numba results, threads {pair}: " + ", ".join(parts))
    return "\n".join(lines)


def write_json_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give what open() would
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def relative_l2(a, b) -> float:
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


# ---------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------
MODELS = {"numba": "joseph", "torch": "trilinear", "reference": "siddon", PEER: "trilinear",
          "diffdrr-trilinear": "trilinear", "diffdrr-siddon": "siddon"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=None, help="volume is size^3 voxels over 192 mm (default 128)")
    p.add_argument("--det", type=int, default=None, help="each of the 2 views is det x det pixels over 307.2 mm "
                   "(default 256)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per case after one warm-up (default 5)")
    p.add_argument("--backends", default=None,
                   help="comma-separated tomoprior backends (default: all of tp.projectors.available())")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds one case's timed runs may take before repeats are cut (default 30)")
    p.add_argument("--out", default=str(DEFAULT_OUT),
                   help="JSON results, written atomically (default benchmarks/results/projectors.json)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 48^3 -> 2 x 64^2, 1 repeat, no memory measurement")
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=None,
                   help="measure peak memory in a subprocess per case (default: on, off with --quick)")
    p.add_argument("--diffdrr-python", default=None,
                   help="interpreter that has diffdrr, if this one has not (env TOMOPRIOR_DIFFDRR_PYTHON)")
    p.add_argument("--diffdrr-renderers", default="siddon,trilinear", help="DiffDRR renderers to time")
    p.add_argument("--diffdrr-timeout", type=float, default=1200.0, help="seconds for each DiffDRR subprocess")
    p.add_argument("--no-diffdrr", action="store_true", help="do not run DiffDRR even if it is available")
    p.add_argument("--no-grid-sample", action="store_true", help="do not run the grid_sample peer")
    p.add_argument("--numba-repeats", type=int, default=None,
                   help="timed runs per case of the fast 'numba' backend (default 20, 3 with --quick)")
    p.add_argument("--numba-extras", action=argparse.BooleanOptionalAction, default=None,
                   help="numba first-call (compile) times and the 1- vs 2-thread comparison, each in fresh "
                        "processes (default: on, off with --quick)")
    p.add_argument("--memory-case", default=None, help=argparse.SUPPRESS)  # internal: one memory child
    p.add_argument("--numba-child", default=None, help=argparse.SUPPRESS)  # internal: first-call / threads
    args = p.parse_args(argv)
    quick = args.quick
    for name, full, small in (("size", 128, 48), ("det", 256, 64), ("repeats", 5, 1), ("budget", 30.0, 5.0)):
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    if args.memory is None:
        args.memory = not quick
    if args.numba_extras is None:
        args.numba_extras = not quick
    if args.numba_repeats is None:
        args.numba_repeats = 3 if quick else 20
    if (args.size < 2 or args.det < 1 or args.threads < 1 or args.repeats < 1 or args.numba_repeats < 1
            or args.budget <= 0):
        p.error("--size must be >= 2; --det, --threads, --repeats and --numba-repeats >= 1; --budget > 0")
    return args


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


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)  # once, before any parallel work (changing it later is unreliable)

    if args.memory_case:
        impl, op = args.memory_case.split(":")
        print(RESULT_MARKER + json.dumps(memory_child(impl, op, args.size, args.det)), flush=True)
        return 0
    if args.numba_child:
        kind, impl, *rest = args.numba_child.split(":", 2)
        if kind == "first-call":
            got = first_call_child(impl, args.size, args.det)
        else:
            got = threads_child(impl, args.size, args.det, args.numba_repeats, args.budget, rest[0])
        print(RESULT_MARKER + json.dumps(got), flush=True)
        return 0

    started = time.perf_counter()
    load_before = os.getloadavg()
    machine = machine_info(args.threads)
    available = tp.projectors.available()
    backends = available if args.backends is None else [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in available]
    if unknown:
        print(f"error: backend(s) {unknown} not available here; available: {available}", file=sys.stderr)
        return 2

    prob = Problem.build(args.size, args.det)
    print(f"tomoprior {tp.__version__} projector benchmark: {prob.label} "
          f"({prob.geom.grid.spacing[0]:.3g} mm voxels, {DETECTOR_WIDTH_MM / args.det:.3g} mm pixels), "
          f"{args.threads} thread(s), {args.repeats} repeat(s) after one warm-up")
    cpu_id = " ".join(f"{k} {v}" for k, v in machine["cpu_id"].items())
    print(f"machine: {machine['cpu']} ({cpu_id}), {machine['usable_cpus']} usable CPUs, {machine['memory_gib']} GiB, "
          f"torch {machine['torch']}, python {machine['python']}", flush=True)

    sampling = sphere_sampling(prob.geom.grid)
    rows: list[dict] = []
    problems: dict[int, Problem] = {prob.det: prob}
    notes: list[str] = []

    def add_rows(impl, p, reduced=False, extra=None):
        repeats = args.numba_repeats if impl == "numba" else args.repeats
        for op in OPERATIONS:
            print(f"  {impl:<18} {op:<8} on {p.label} ...", end="", flush=True)
            res = time_case(impl, op, p, repeats, args.budget)
            print(f" median {statistics.median(res['times_s']):.3f} s", flush=True)
            rows.append(dict(res, impl=impl, op=op, model=MODELS.get(impl, "trilinear"), problem=p.label,
                             size=p.size, det=p.det, rays=p.rays, problem_reduced=reduced, **(extra or {})))

    forwards = {}
    numba_info: dict = {}
    for name in backends:
        det, probe = plan_backend_problem(name, prob, args.budget) if name != "torch" else (prob.det, {})
        if det != prob.det:
            problems.setdefault(det, Problem.build(args.size, det))
            notes.append(f"{name}: run on {problems[det].label} instead of {prob.label}: a probe predicted "
                         f"{probe['estimated_full_forward_s']:.1f} s per full forward projection")
        p = problems[det]
        samples = None
        if name == "torch":
            counted = torch_backend_samples(p.geom)
            samples = counted and counted["evaluated"]
        elif name == "numba":
            counted = numba_backend_samples(p.geom)
            samples = counted and counted["evaluated"]
            numba_info["samples"] = counted
        add_rows(name, p, reduced=det != prob.det, extra={"samples": samples, "probe": probe or None})
        if det == prob.det:
            forwards[name] = tp.project(prob.volume, prob.geom, backend=name)
        if name == "numba":
            setup = numba_setup_times(p, args.numba_repeats)
            numba_info["ray_setup_s"] = setup
            if setup:
                print(f"  numba ray table set-up (paid once per new geometry): median "
                      f"{statistics.median(setup):.4f} s, min {min(setup):.4f} s", flush=True)

    if not args.no_grid_sample:
        add_rows(PEER, prob, extra={"samples": prob.rays * sampling.count,
                                    "samples_per_ray": sampling.count, "step_mm": sampling.step})
        with torch.no_grad():
            forwards[PEER] = grid_sample_project(prob.volume, prob.geom)

    diffdrr: dict = {"status": "skipped", "reason": "--no-diffdrr"}
    with tempfile.TemporaryDirectory(prefix="tomoprior-bench-") as tmp:
        if not args.no_diffdrr:
            renderers = [r.strip() for r in args.diffdrr_renderers.split(",") if r.strip()]
            print(f"  DiffDRR ({', '.join(renderers)}) ...", flush=True)
            diffdrr = run_diffdrr(prob, args, renderers, Path(tmp), args.memory)
            if diffdrr["status"] == "ok":
                for res in diffdrr["results"]:
                    rows.append(dict(res, model=MODELS[res["impl"]], problem=prob.label, size=prob.size,
                                     det=prob.det, rays=prob.rays, problem_reduced=False))
                    print(f"  {res['impl']:<18} {res['op']:<8} median {statistics.median(res['times_s']):.3f} s")
                for r in renderers:
                    image = Path(tmp) / f"diffdrr-{r}.npy"
                    if image.exists():
                        forwards[f"diffdrr-{r}"] = torch.from_numpy(np.load(image))
                diffdrr["results"] = "see results"
            else:
                print(f"  DiffDRR {diffdrr['status']}: {diffdrr['reason']}", flush=True)

    if args.memory:
        print("  peak memory (one subprocess per case) ...", flush=True)
        for row in rows:
            if row["impl"].startswith("diffdrr-"):
                continue
            got = measure_memory(row["impl"], row["op"], row["size"], row["det"], args.threads)
            row["peak_extra_mb"] = got.get("peak_extra_mb")
            if got.get("error"):
                row["memory_error"] = got["error"]

    if "numba" in backends and args.numba_extras:
        print("  numba first call (fresh processes: compiling, then from the disk cache) ...", flush=True)
        numba_info["first_call"] = measure_first_call("numba", prob.size, prob.det, args.threads)
        counts = sorted({1, args.threads})
        if len(counts) == 1:
            counts = [1, 2]
        print(f"  numba with {' and '.join(map(str, counts))} thread(s) (fresh processes) ...", flush=True)
        numba_info["threads"] = measure_threads("numba", prob.size, prob.det, counts,
                                                max(3, args.numba_repeats // 2), args.budget)

    # relative L2 differences of the forward projections: every one against the torch
    # backend, and the two exact (Siddon) implementations against each other
    agreement = {}
    if "torch" in forwards:
        for name, image in forwards.items():
            if name != "torch":
                agreement[f"{name} vs torch"] = relative_l2(image, forwards["torch"])
    if "reference" in forwards and "diffdrr-siddon" in forwards:
        agreement["diffdrr-siddon vs reference"] = relative_l2(forwards["diffdrr-siddon"], forwards["reference"])

    finish_rows(rows)
    table = format_table(rows)
    targets = (target_report(rows, "numba", (prob.size, prob.det), args.threads)
               if "numba" in backends else None)
    load_after = os.getloadavg()
    elapsed = time.perf_counter() - started
    print()
    print(table)
    print()
    print("median/min: wall seconds of one call; Mrays/s: pixel rays (2 views x det^2, misses included) per "
          "second;\nMsamples/s: volume samples per second where the sample count is known; peak extra MB: "
          "resident-set growth\nduring one call (fresh process); vs X: throughput ratio, > 1 means faster than X "
          "(DiffDRR: its renderer\nof the same model, trilinear or siddon). 'back' of grid_sample and DiffDRR is "
          "autograd's backward pass alone.")
    print("cpu/wall: process CPU seconds per wall second of a call (median): about the threads kept busy; "
          "below\nthe thread count on a shared machine when the process waited for a core.")
    for key, value in agreement.items():
        print(f"agreement of forward projections, relative L2: {key}: {value:.2e}")
    if targets:
        print(format_targets(targets))
    if numba_info:
        print(format_numba_info(numba_info))
    print(f"load average (1, 5, 15 min) before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
          f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    for note in notes:
        print(f"note: {note}")
    if diffdrr["status"] != "ok":
        print(f"DiffDRR {diffdrr['status']}: {diffdrr['reason']}")
    else:
        print(f"DiffDRR {diffdrr['version']} (torch {diffdrr['torch']}, {diffdrr['threads']} threads, "
              f"{diffdrr['where']}); trilinear renderer with n_points={sampling.count}")
    print(f"total benchmark time {elapsed:.0f} s")

    payload = {
        "schema": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": [Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)],
        "machine": machine,
        "problem": {
            "volume_shape": list(prob.geom.grid.shape), "spacing_mm": list(prob.geom.grid.spacing),
            "views": len(prob.geom.views), "detector_shape": [args.det, args.det],
            "pixel_pitch_mm": DETECTOR_WIDTH_MM / args.det, "source_to_isocenter_mm": 1000.0,
            "source_to_detector_mm": 1500.0, "rays": prob.rays, "dtype": "float32",
        },
        "settings": {"repeats": args.repeats, "numba_repeats": args.numba_repeats, "budget_s": args.budget,
                     "threads": args.threads,
                     "memory": args.memory, "backends": backends,
                     "grid_sample_peer": {"samples_per_ray": sampling.count, "step_mm": sampling.step,
                                          "sphere_radius_mm": sampling.radius}},
        "results": rows,
        "agreement_relative_l2": agreement,
        "targets": targets,
        "numba": numba_info,
        "load_average": {"before": list(load_before), "after": list(load_after)},
        "diffdrr": diffdrr,
        "notes": notes,
        "elapsed_s": elapsed,
        "table": table,
    }
    write_json_atomic(Path(args.out), payload)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
