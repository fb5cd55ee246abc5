"""Speed (and peak memory) of tomoprior's projectors next to two peers, on CPU.

What is timed, for every registered tomoprior backend and for the peers:

* ``forward``   ``tp.project(volume, geom)``: 2 views of line integrals;
* ``back``      ``tp.backproject(w, geom)``: the adjoint. The peers have no adjoint of
  their own, so for them this is autograd's backward pass of a forward projection that
  was built (untimed) just before: ``out.backward(w)``;
* ``fwd+bwd``   ``loss = (tp.project(vol, geom) * w).sum(); loss.backward()`` with
  ``vol.requires_grad``: one training step's worth of projector work.

Peers, in the same run and on the same volume and geometry:

* ``grid_sample``: the plain projector anyone would write first (``projector_bench/peer.py``): every
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
the fast ``"numba"`` backend (``--numba-repeats`` timed calls) it also reports the fast-backend
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
import datetime as _dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from projector_bench.bound import l1_bound

# the parts live in the projector_bench package next to this file; benchmarks/scaling.py
# uses them through this module (bench.Problem, bench.time_case, ...)
from projector_bench.children import (
    RESULT_MARKER,
    first_call_child,
    measure_first_call,
    measure_memory,
    measure_threads,
    memory_child,
    threads_child,
)
from projector_bench.diffdrr_peer import run_diffdrr
from projector_bench.peer import grid_sample_project, sphere_sampling
from projector_bench.problem import (  # noqa: F401
    DETECTOR_WIDTH_MM,
    FIELD_OF_VIEW_MM,
    NUMBA_JIT_ONLY,
    OPERATIONS,
    PEER,
    Problem,
)
from projector_bench.report import (
    finish_rows,
    format_numba_info,
    format_table,
    format_targets,
    machine_info,
    relative_l2,
    target_report,
    write_json_atomic,
)
from projector_bench.timing import (
    numba_backend_samples,
    numba_setup_times,
    plan_backend_problem,
    time_case,
    torch_backend_samples,
)

import tomoprior as tp

SCHEMA_VERSION = 1
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "projectors.json"


# ---------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------
MODELS = {"numba": "joseph", NUMBA_JIT_ONLY: "joseph", "torch": "trilinear", "reference": "siddon", PEER: "trilinear",
          "diffdrr-trilinear": "trilinear", "diffdrr-siddon": "siddon"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=None, help="volume is size^3 voxels over 192 mm (default 128)")
    p.add_argument("--det", type=int, default=None, help="each of the 2 views is det x det pixels over 307.2 mm "
                   "(default 256)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--loads-per-cycle", type=float, default=3.0,
                   help="L1 loads per cycle per core for the bound column (3 on Zen 4 / Golden Cove; default 3)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per case after one warm-up (default 5)")
    p.add_argument("--backends", default=None,
                   help="comma-separated tomoprior backends (default: all of tp.projectors.available_backends())")
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
            or not args.loads_per_cycle > 0
            or args.budget <= 0):
        p.error("--size must be >= 2; --det, --threads, --repeats and --numba-repeats >= 1; --budget > 0")
    return args


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
    # the per-core bound of any Joseph implementation, measured now on this machine, so that the
    # table says on every run how far each projector is from it (projector_bench/bound.py)
    bound = l1_bound(loads_per_cycle=args.loads_per_cycle)
    available = tp.projectors.available_backends()
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
        repeats = args.numba_repeats if impl in ("numba", NUMBA_JIT_ONLY) else args.repeats
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
        if name == "numba":
            from tomoprior.projectors.numba_backend import compiled_kernels

            lib, numba_info["kernels"] = compiled_kernels()
            if lib is not None:  # the same backend with its numba kernels only, for the ratio
                add_rows(NUMBA_JIT_ONLY, p, reduced=det != prob.det, extra={"samples": samples})
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

    finish_rows(rows, bound["samples_per_core_s"])
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
    print(f"Msamples/core-s: volume samples per CPU second (all threads' CPU time); of bound: that against "
          f"the per-core L1 load bound of a Joseph sample,\n{bound['samples_per_core_s'] / 1e6:.0f} M/s = clock "
          f"{bound['clock_ghz_estimate']:.2f} GHz (dependent-add chain, {bound['fadd_latency_cycles']:g} cycles) x "
          f"{bound['loads_per_cycle']:g} loads/cycle / 4 loads per sample (benchmarks/hardware.py for the other "
          "resources).")
    print("cpu/wall: process CPU seconds per wall second of a call (median): about the threads kept busy; "
          "below\nthe thread count on a shared machine when the process waited for a core.")
    for key, value in agreement.items():
        print(f"agreement of forward projections, relative L2: {key}: {value:.2e}")
    if targets:
        print(format_targets(targets))
    if numba_info:
        print(format_numba_info(numba_info))
    compiled_vs_jit = {}
    by_key = {(r["impl"], r["op"]): r for r in rows}
    for op in OPERATIONS:
        a, b = by_key.get(("numba", op)), by_key.get((NUMBA_JIT_ONLY, op))
        if a and b and a["median_s"] and b["median_s"]:
            compiled_vs_jit[op] = b["median_s"] / a["median_s"]
    if compiled_vs_jit:
        print("numba backend, compiled kernels vs its numba kernels (same run, medians): "
              + ", ".join(f"{op} {x:.2f}x" for op, x in compiled_vs_jit.items()))
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
        "bound": bound,
        "results": rows,
        "agreement_relative_l2": agreement,
        "targets": targets,
        "numba": numba_info,
        "compiled_vs_numba_kernels": compiled_vs_jit,
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
