"""How projector time and memory grow with the problem: 64^3 .. 256^3 volumes, CPU.

For each volume size ``N`` (default 64, 96, 128, 192, 256) the field of view stays the
192 mm of the pediatric setup and the two views (PA + lateral) get ``2N x 2N`` pixels
over the same 307.2 mm detector (128^2 .. 512^2): voxels and pixels shrink together, so
rays grow as ``N^2`` and planes crossed per ray as ``N``, samples as ``N^3``.

Timed, exactly as in ``benchmarks/projectors.py`` (one warm-up, then ``--repeats`` runs,
wall and process CPU seconds), for the ``"numba"`` backend at every size (its compiled
kernels when they are built), the same backend on its numba kernels (row label
``numba-jit-only``, compiled kernels switched off; ``--jit-only-sizes``, by default every
size when there are compiled kernels to compare with) and the ``"torch"`` backend at a few
(``--torch-sizes``): ``forward`` (``tp.project``), ``back``
(``tp.backproject``) and ``fwd+bwd`` (autograd of ``(project(vol) * w).sum()`` wrt the
volume).

Also recorded per case:

* samples: the volume samples the backend evaluates, from its own plan (``numba``: one
  bilinear sample per ray and voxel plane of its dominant axis; ``torch``: trilinear
  samples at half-voxel steps, padding included);
* peak extra memory: growth of the resident set during one call, in a fresh process per
  case (after a warm-up on a tiny problem), and the same minus the call's outputs
  (projections, back-projection or gradient), i.e. the working memory the fast-backend
  target "<= 1 GiB beyond inputs and outputs" is about.

A straight line ``time = a + b * samples`` is fitted (least squares, per backend and
operation, on the medians) and its quality reported (R^2, worst relative residual). The
script prints a table, writes JSON (atomically) and plots time against samples, the cost
per sample and the peak extra memory against the volume size.

Usage::

    python benchmarks/scaling.py                          # about 10-20 min on 2 cores
    python benchmarks/scaling.py --sizes 64,96 --torch-sizes 64 --no-memory   # quick look
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the helpers of projectors.py (problem, timing, memory children)

import projectors as bench  # noqa: E402
from projector_bench.timing import prepare  # noqa: E402

import tomoprior as tp  # noqa: E402
from tomoprior._atomic import atomic_path  # noqa: E402

#: Implementations timed, in table and legend order: the numba backend as installed (its
#: compiled kernels when built), the same backend on its numba kernels, the torch backend.
IMPLS = ("numba", bench.NUMBA_JIT_ONLY, "torch")
DEFAULT_OUT = HERE / "results" / "scaling.json"
DEFAULT_FIGURE = HERE.parent / "docs" / "figures" / "projector_scaling.png"
BYTES_PER_GIB = 2**30


def count_samples(impl: str, geom) -> int | None:
    """Volume samples one forward projection of ``impl`` evaluates (None if unknown)."""
    if impl == "numba":
        got = bench.numba_backend_samples(geom)
    elif impl == "torch":
        got = bench.torch_backend_samples(geom)
    else:
        return None
    return got and got["evaluated"]


def output_bytes(op: str, prob: bench.Problem) -> int:
    """Bytes of what one call returns: projections (forward), a volume (back), and for
    fwd+bwd the projections plus the volume gradient (float32)."""
    proj = prob.rays * 4
    vol = prob.volume.numel() * 4
    return {"forward": proj, "back": vol, "fwd+bwd": proj + vol}[op]


def fit_line(x, y) -> dict:
    """Least-squares ``y = a + b x``; R^2 and the largest relative residual."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if len(x) < 2:
        return {"a": None, "b": None, "r2": None, "max_rel_residual": None}
    design = np.stack([np.ones_like(x), x], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, y, rcond=None)
    pred = a + b * x
    ss_res = float(np.sum((y - pred) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2)) or 1.0
    return {"a": float(a), "b": float(b), "r2": 1.0 - ss_res / ss_tot,
            "max_rel_residual": float(np.max(np.abs(y - pred) / y)),
            "ns_per_sample": float(b) * 1e9, "samples_per_s": 1.0 / float(b) if b > 0 else None}


def compute_fits(rows: list[dict], max_size: int) -> dict:
    """``{(impl, op): fit}``: :func:`fit_line` of median wall time (and of minima and CPU time)
    against samples over the sizes up to ``max_size``."""
    fits = {}
    for impl in IMPLS:
        for op in bench.OPERATIONS:
            sel = [r for r in rows if r["impl"] == impl and r["op"] == op and r["samples"] and r["size"] <= max_size]
            if sel:
                fit = fit_line([r["samples"] for r in sel], [r["median_s"] for r in sel])
                fit_min = fit_line([r["samples"] for r in sel], [r["min_s"] for r in sel])
                fit_cpu = fit_line([r["samples"] for r in sel], [r["median_cpu_s"] for r in sel])
                fits[(impl, op)] = dict(fit, on_minima=fit_min, on_cpu=fit_cpu, sizes=[r["size"] for r in sel])
    return fits


def replot(args) -> int:
    """Refit and redraw an earlier run's results (``--replot``)."""
    try:
        payload = json.loads(Path(args.replot).read_text(encoding="utf-8"))
        rows = payload["results"]
        threads = payload["settings"]["threads"]
        if not rows or not all({"impl", "op", "size", "samples", "median_s"} <= set(r) for r in rows):
            raise ValueError("its 'results' rows lack impl/op/size/samples/median_s")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"error: --replot {args.replot}: not a results file of this script ({exc}); run "
              f"`python benchmarks/scaling.py` to make one", file=sys.stderr)
        return 2
    fits = compute_fits(rows, args.fit_max_size)
    payload["fits"] = {f"{impl}:{op}": fit for (impl, op), fit in fits.items()}
    payload["settings"]["fit_max_size"] = args.fit_max_size
    bench.write_json_atomic(Path(args.out), payload)
    print(f"wrote {args.out}")
    if args.figure:
        plot(rows, fits, args.figure, threads,
             compiled=payload.get("machine", {}).get("compiled_kernels", True) is not False)
        print(f"wrote {args.figure}")
    return 0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="64,96,128,192,256", help="volume sizes N (N^3 voxels, 2 x (2N)^2 pixels)")
    p.add_argument("--torch-sizes", default="64,96,128", help="sizes at which the 'torch' backend is timed too "
                   "('' for none)")
    p.add_argument("--jit-only-sizes", default=None,
                   help="sizes at which the numba backend is timed again with its compiled kernels turned off "
                        f"(impl '{bench.NUMBA_JIT_ONLY}'; default: every --sizes when the compiled kernels are in "
                        "use, else none; '' for none)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--repeats", type=int, default=7, help="timed runs per numba case after one warm-up (default 7)")
    p.add_argument("--torch-repeats", type=int, default=3, help="timed runs per torch case (default 3)")
    p.add_argument("--budget", type=float, default=60.0, help="seconds one case's timed runs may take (default 60)")
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                   help="peak memory in a fresh process per case (default on; Linux only)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="JSON results (default benchmarks/results/scaling.json)")
    p.add_argument("--fit-max-size", type=int, default=256,
                   help="fit the straight lines on sizes up to this N only (default 256: beyond, the volume "
                        "leaves the cache and the cost per sample grows; see the ns-per-sample panel)")
    p.add_argument("--replot", metavar="JSON", default=None,
                   help="no timing: recompute the fits and redraw --figure from the results of an earlier run "
                        "(written back to --out)")
    p.add_argument("--figure", default=str(DEFAULT_FIGURE),
                   help="PNG plot (default docs/figures/projector_scaling.png; '' for none)")
    args = p.parse_args(argv)
    try:
        args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
        args.torch_sizes = [int(s) for s in args.torch_sizes.split(",") if s.strip()]
        if args.jit_only_sizes is None:
            from tomoprior.projectors.numba_backend import compiled_kernels

            args.jit_only_sizes = list(args.sizes) if compiled_kernels()[0] is not None else []
        else:
            args.jit_only_sizes = [int(s) for s in args.jit_only_sizes.split(",") if s.strip()]
    except ValueError:
        p.error("--sizes, --torch-sizes and --jit-only-sizes are comma-separated integers, e.g. 64,96,128")
    if set(args.jit_only_sizes) - set(args.sizes):
        p.error("--jit-only-sizes must be among --sizes (the comparison is made at the same sizes)")
    if not args.sizes or min(args.sizes + args.torch_sizes or [2]) < 2:
        p.error("--sizes needs at least one size, and every size must be >= 2")
    if args.fit_max_size < 2:
        p.error(f"--fit-max-size must be a volume size >= 2, got {args.fit_max_size}")
    if args.threads < 1 or args.repeats < 1 or args.torch_repeats < 1 or args.budget <= 0:
        p.error("--threads, --repeats and --torch-repeats must be >= 1 and --budget > 0")
    return args


def format_table(rows: list[dict]) -> str:
    head = ["backend", "operation", "problem", "runs", "samples (M)", "median s", "min s", "max s", "cpu/wall",
            "Msamples/s", "peak extra MB", "minus outputs MB"]

    def num(x, fmt):
        return "-" if x is None else format(x, fmt)

    body = [[r["impl"], r["op"], r["problem"], str(r["repeats"]), num(r["samples"] and r["samples"] / 1e6, ".1f"),
             num(r["median_s"], ".4f"), num(r["min_s"], ".4f"), num(r["max_s"], ".4f"), num(r["cpu_per_wall"], ".2f"),
             num(r["samples_per_s"] and r["samples_per_s"] / 1e6, ".0f"), num(r.get("peak_extra_mb"), ".0f"),
             num(r.get("working_mb"), ".0f")] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    right = set(range(3, len(head)))

    def line(cells):
        return "| " + " | ".join(c.rjust(w) if i in right else c.ljust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if i in right else ("-" * (w + 2)) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(head), rule, *(line(b) for b in body)])


def _log_axis(ax, xlabel: str, ylabel: str, title: str) -> None:
    """The style both panels share: log y, small labels and title, a light grid."""
    ax.set_yscale("log")
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(True, which="both", lw=0.3, alpha=0.5)


#: Plot style per implementation: marker, filled, line style, legend name.
STYLE = {"numba": ("o", True, "-", "compiled"), bench.NUMBA_JIT_ONLY: ("^", False, ":", "numba kernels"),
         "torch": ("s", False, "--", "torch")}


def _style(impl: str, compiled: bool):
    marker, filled, ls, name = STYLE.get(impl, ("x", True, "-", impl))
    if impl == "numba" and not compiled:
        name = "numba"  # the backend ran its numba kernels: no compiled kernels were built
    return marker, filled, ls, name


def plot(rows: list[dict], fits: dict, path: str, threads: int = 2, compiled: bool = True) -> None:
    """Log-log time against samples with the fitted lines, the cost per sample and the peak
    extra memory against the volume size; a small PNG written atomically. ``compiled``: the
    ``numba`` rows ran the compiled kernels (legend 'compiled', else 'numba')."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12.0, 3.9), dpi=100)
    colors = {"forward": "tab:blue", "back": "tab:orange", "fwd+bwd": "tab:green"}
    sizes = sorted({r["size"] for r in rows})

    def size_axis(ax):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.minorticks_off()

    ax = axes[1]  # cost per sample against size: flat while the volume stays in the cache
    for (impl, op) in fits:
        m, filled, ls, name = _style(impl, compiled)
        sel = [r for r in rows if r["impl"] == impl and r["op"] == op and r["samples"]]
        ax.plot([r["size"] for r in sel], [1e9 * r["median_cpu_s"] / r["samples"] for r in sel],
                marker=m, color=colors[op], ms=4, lw=0.8, ls=ls, mfc=colors[op] if filled else "none",
                label=f"{name} {op}")
    size_axis(ax)
    _log_axis(ax, "volume size N (N$^3$ voxels into 2 x (2N)$^2$ pixels)", "process CPU ns per sample (median)",
              "cost per sample")
    ax = axes[2]  # peak extra memory of one call in a fresh process
    drawn = False
    for (impl, op) in fits:
        m, filled, ls, name = _style(impl, compiled)
        sel = [r for r in rows if r["impl"] == impl and r["op"] == op and r.get("peak_extra_mb") is not None]
        if sel:
            drawn = True
            ax.plot([r["size"] for r in sel], [max(r["peak_extra_mb"], 1.0) for r in sel], marker=m, color=colors[op],
                    ms=4, lw=0.8, ls=ls, mfc=colors[op] if filled else "none", label=f"{name} {op}")
    out_sizes = [n for n in sizes if n >= sizes[0]]
    ref, = ax.plot(out_sizes, [4 * n**3 / 2**20 for n in out_sizes], color="0.5", lw=0.8, ls="-.",
                   label="one float32 N$^3$ volume")
    size_axis(ax)
    _log_axis(ax, "volume size N", "MB (resident-set growth during one call)",
              "peak extra memory (fresh process per call)" if drawn else "peak extra memory (not measured)")
    ax.legend(handles=[ref], fontsize=6, loc="upper left")  # markers and colours: the left panel's legend
    ax = axes[0]  # wall time against samples, with the straight lines fitted on the cache-resident sizes
    for (impl, op), fit in fits.items():
        m, filled, ls, name = _style(impl, compiled)
        sel = [r for r in rows if r["impl"] == impl and r["op"] == op and r["samples"]]
        if not sel:
            continue
        x = np.array([r["samples"] for r in sel], dtype=float)
        y = np.array([r["median_s"] for r in sel])
        err = [y - np.array([r["min_s"] for r in sel]), np.array([r["max_s"] for r in sel]) - y]
        ax.errorbar(x, y, yerr=err, fmt=m, color=colors[op], ms=4, capsize=2, lw=0.8,
                    mfc=colors[op] if filled else "none", label=f"{name} {op}")
        if fit["b"] is not None and fit["b"] > 0:  # over the fitted sizes, where the line is positive
            xf = np.array([r["samples"] for r in sel if r["size"] in fit.get("sizes", [])], dtype=float)
            xs = np.geomspace(xf.min(), xf.max(), 50) if xf.size else np.array([])
            ys = fit["a"] + fit["b"] * xs
            ax.plot(xs[ys > 0], ys[ys > 0], color=colors[op], lw=0.8, ls=ls)
    for r in rows:
        if r["impl"] == "numba" and r["op"] == "forward":
            ax.annotate(f"{r['size']}$^3$", (r["samples"], r["median_s"]), textcoords="offset points",
                        xytext=(-4, 6), fontsize=7, ha="right")
    ax.set_xscale("log")
    _log_axis(ax, "samples per projection (rays x planes)", "seconds per call",
              "wall time (median; bars min-max; lines: fits)")
    axes[0].legend(fontsize=6, ncol=2, loc="upper left")
    lo, hi = sizes[0], sizes[-1]
    fig.suptitle(f"tomoprior projectors, CPU, {threads} thread(s): {lo}$^3$ -> 2x{2 * lo}$^2$ .. {hi}$^3$ -> "
                 f"2x{2 * hi}$^2$; lines: fits a + b samples", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.replot:
        return replot(args)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    load_before = os.getloadavg()
    machine = bench.machine_info(args.threads)
    print(f"tomoprior {tp.__version__} projector scaling, {args.threads} thread(s); machine {machine['cpu']}, "
          f"load average {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}", flush=True)
    warm = bench.Problem.build(8, 8)
    for impl in ("numba", bench.NUMBA_JIT_ONLY, "torch"):
        prepare(impl, "forward", warm)()  # compile / load the kernels first

    rows: list[dict] = []
    sizes = sorted(set(args.sizes) | set(args.torch_sizes))
    for size in sizes:
        det = 2 * size
        prob = bench.Problem.build(size, det)
        impls = [i for i, wanted in (("numba", size in args.sizes), (bench.NUMBA_JIT_ONLY, size in args.jit_only_sizes),
                                     ("torch", size in args.torch_sizes)) if wanted]
        for impl in impls:
            samples = count_samples("numba" if impl == bench.NUMBA_JIT_ONLY else impl, prob.geom)
            repeats = args.torch_repeats if impl == "torch" else args.repeats
            for op in bench.OPERATIONS:
                print(f"  {impl:<6} {op:<8} {prob.label:<18} ...", end="", flush=True)
                res = bench.time_case(impl, op, prob, repeats, args.budget)
                times = res["times_s"]
                row = dict(res, impl=impl, op=op, size=size, det=det, problem=prob.label, rays=prob.rays,
                           samples=samples, output_mb=output_bytes(op, prob) / 2**20,
                           median_s=statistics.median(times), min_s=min(times), max_s=max(times))
                row["cpu_per_wall"] = statistics.median(c / t for c, t in zip(res["cpu_s"], times) if t > 0)
                row["median_cpu_s"] = statistics.median(res["cpu_s"])
                row["samples_per_s"] = samples / row["median_s"] if samples else None
                print(f" median {row['median_s']:.4f} s (min {row['min_s']:.4f}, max {row['max_s']:.4f})", flush=True)
                rows.append(row)
        del prob

    if args.memory:
        print("  peak memory (one fresh process per case) ...", flush=True)
        for row in rows:
            got = bench.measure_memory(row["impl"], row["op"], row["size"], row["det"], args.threads)
            row["peak_extra_mb"] = got.get("peak_extra_mb")
            if got.get("error"):
                row["memory_error"] = got["error"]
            if row["peak_extra_mb"] is not None:
                row["working_mb"] = max(0.0, row["peak_extra_mb"] - row["output_mb"])

    fits = compute_fits(rows, args.fit_max_size)

    table = format_table(rows)
    load_after = os.getloadavg()
    elapsed = time.perf_counter() - started
    print()
    print(table)
    print()
    print("samples: volume samples one forward projection evaluates (rays x planes crossed for numba); "
          "peak extra MB:\nresident-set growth during one call in a fresh process; minus outputs: the same "
          "less the call's\noutputs (projections, back-projection, gradient), i.e. working memory.")
    print("fit time = a + b * samples (least squares on the medians of wall time and of process CPU time;\n"
          "CPU time is far less disturbed by other processes on a shared machine):")
    for (impl, op), fit in fits.items():
        if fit["b"] is None:
            continue
        for label, f in (("wall", fit), ("cpu ", fit["on_cpu"])):
            rate = "-" if not f["samples_per_s"] else f"{f['samples_per_s'] / 1e6:.0f}"
            print(f"  {impl:<6} {op:<8} {label}: a = {f['a'] * 1e3:7.2f} ms, b = {f['ns_per_sample']:.3f} ns/sample "
                  f"({rate} Msamples/s), R^2 = {f['r2']:.4f}, worst residual "
                  f"{100 * f['max_rel_residual']:.0f} % (sizes {fit['sizes']})")
    big = [r for r in rows if r["impl"] == "numba" and r["size"] >= 256 and r.get("working_mb") is not None]
    for r in big:
        ok = r["working_mb"] * 2**20 <= BYTES_PER_GIB
        print(f"  {r['problem']} numba {r['op']}: {r['peak_extra_mb']:.0f} MB peak extra, "
              f"{r['working_mb']:.0f} MB beyond outputs: {'within' if ok else 'OVER'} the 1 GiB limit")
    print(f"load average (1, 5, 15 min) before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
          f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}; total {elapsed:.0f} s")

    payload = {
        "schema": 1,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": [Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)],
        "machine": machine,
        "settings": {"sizes": args.sizes, "torch_sizes": args.torch_sizes, "jit_only_sizes": args.jit_only_sizes,
                     "threads": args.threads,
                     "fit_max_size": args.fit_max_size,
                     "repeats": args.repeats, "torch_repeats": args.torch_repeats, "budget_s": args.budget,
                     "memory": args.memory, "field_of_view_mm": bench.FIELD_OF_VIEW_MM,
                     "detector_width_mm": bench.DETECTOR_WIDTH_MM, "dtype": "float32"},
        "results": rows,
        "fits": {f"{impl}:{op}": fit for (impl, op), fit in fits.items()},
        "load_average": {"before": list(load_before), "after": list(load_after)},
        "elapsed_s": elapsed,
        "table": table,
    }
    bench.write_json_atomic(Path(args.out), payload)
    print(f"wrote {args.out}")
    if args.figure:
        plot(rows, fits, args.figure, args.threads, compiled=machine.get("compiled_kernels", True) is not False)
        print(f"wrote {args.figure} ({os.path.getsize(args.figure) / 1024:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
