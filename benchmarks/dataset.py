"""Dataset generation speed and file size: samples/s at 64^3 and 128^3, 1 and 2 workers.

For each grid size and worker count this generates ``n`` samples exactly as
``tomoprior dataset make`` does (procedural skull if installed, else the Shepp-Logan head;
frontal + lateral line integrals at binning 12 = 128 x 128 pixels; gzip), into a temporary
file, and reports wall time, samples/s (including process start-up for the pool, which a
long run amortises; ``steady`` excludes the first sample of each worker), the time per
sample spent inside a worker (wall and CPU: on a shared machine the CPU seconds are the
stable number, ``1 / CPU s`` is the rate one idle core reaches), and the file size per
sample. Prints a table and writes JSON to ``benchmarks/results/dataset.json``.

Usage::

    python benchmarks/dataset.py                  # about 2-4 min on 2 cores
    python benchmarks/dataset.py --grids 64 --n 8 --workers 1
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tomoprior import __version__
from tomoprior.data import DatasetFile, generate, generate_dask, make_specs
from tomoprior.data.synthetic import skull_module


def run(grid: int, n: int, workers: int, engine: str, phantom: str, binning: int, compression: str) -> dict:
    specs = make_specs(n, seed=123, grid=grid, binning=binning, phantom=phantom)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.h5"
        t0, c0 = time.perf_counter(), time.process_time()
        if engine == "dask":
            generate_dask(specs, out, partitions=workers * 2, compression=compression, num_workers=workers,
                          scheduler="processes" if workers > 1 else "synchronous")
        else:
            generate(specs, out, workers=workers, compression=compression)
        wall, main_cpu = time.perf_counter() - t0, time.process_time() - c0
        size = out.stat().st_size
        with DatasetFile(out) as ds:
            per_sample = [ds.provenance(i)["seconds"] for i in range(len(ds))]
            cpu = [ds.provenance(i)["cpu_seconds"] for i in range(len(ds))]
            raw = ds.summary()["raw_bytes_per_sample"]
    return {
        "grid": grid, "n": n, "workers": workers, "engine": engine, "phantom": phantom, "binning": binning,
        "compression": compression, "wall_s": wall, "samples_per_s": n / wall,
        "worker_s_per_sample_median": float(np.median(per_sample)),
        "steady_samples_per_s": workers / float(np.median(per_sample)),
        "cpu_s_per_sample_median": float(np.median(cpu)),
        # the parent's CPU time per sample: compression + writing (+ the samples themselves when workers=1)
        "main_cpu_s_per_sample": main_cpu / n,
        "file_bytes": size, "bytes_per_sample": size / n, "raw_bytes_per_sample": raw,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grids", default="64,128", help="comma-separated grid sizes")
    ap.add_argument("--n", type=int, default=None, help="samples per run (default 8 at 64^3, 4 at 128^3)")
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    ap.add_argument("--engines", default="pool", help="pool and/or dask")
    ap.add_argument("--binning", type=int, default=12)
    ap.add_argument("--compression", default="gzip", choices=["gzip", "lzf", "none"])
    ap.add_argument("--phantom", default=None, choices=["skull", "shepp_logan"])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "dataset.json"))
    args = ap.parse_args(argv)
    phantom = args.phantom or ("skull" if skull_module() is not None else "shepp_logan")
    rows = []
    for grid in (int(g) for g in args.grids.split(",")):
        n = args.n or (8 if grid <= 64 else 4)
        for engine in args.engines.split(","):
            for w in (int(x) for x in args.workers.split(",")):
                r = run(grid, n, w, engine, phantom, args.binning, args.compression)
                rows.append(r)
                print(f"{grid:>4}^3 {engine:>5} workers={w}: {r['samples_per_s']:.3f} samples/s "
                      f"(steady {r['steady_samples_per_s']:.3f}), {r['bytes_per_sample'] / 1e3:.0f} kB/sample",
                      flush=True)
    print()
    print(f"{'grid':>6} {'engine':>6} {'workers':>7} {'n':>3} {'wall s':>8} {'samples/s':>10} {'steady/s':>9} "
          f"{'s/sample':>9} {'CPU s/smp':>9} {'main CPU':>8} {'kB/sample':>10} {'raw kB':>8}")
    for r in rows:
        print(f"{r['grid']:>5}^3 {r['engine']:>6} {r['workers']:>7} {r['n']:>3} {r['wall_s']:>8.1f} "
              f"{r['samples_per_s']:>10.3f} {r['steady_samples_per_s']:>9.3f} {r['worker_s_per_sample_median']:>9.2f} "
              f"{r['cpu_s_per_sample_median']:>9.2f} {r['main_cpu_s_per_sample']:>8.2f} "
              f"{r['bytes_per_sample'] / 1e3:>10.0f} {r['raw_bytes_per_sample'] / 1e3:>8.0f}")
    print(f"(load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; wall-clock rates "
          "scale with the share of the CPUs this process gets)")
    result = {
        "benchmark": "dataset generation", "tomoprior_version": __version__,
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"cpus": os.cpu_count(), "load_average_1min_at_end": os.getloadavg()[0],
                    "platform": platform.platform(), "python": platform.python_version()},
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    from tomoprior._atomic import write_text_atomic

    write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
