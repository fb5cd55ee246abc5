"""Feature back-projection speed: C-channel feature maps of two views lifted into a voxel grid.

What the learned refiners call for the back-projection prior and for BP-C feature lifting:
``tomoprior.refiners.backproject_features(features (B, V, C, h, w), geometry)`` ->
``(B, V, C, nz, ny, nx)``. Cases, on the same features and geometry in the same run:

- ``tomoprior``: ``backproject_features`` as shipped (voxel mode, normalised), with its
  per-geometry sampling tables already cached (every call after the first for a geometry).
- ``tomoprior cold``: the same call right after the cache was cleared (what the first call
  for a new geometry costs; a training set with one geometry per sample pays this always).
- ``grid_sample cached``: the plain implementation written in this script: the
  per-voxel detector coordinates and visibility mask of every view computed once (with
  ``Geometry.project_points``), then per call one ``torch.nn.functional.grid_sample`` per view
  over all channels, times the mask.
- ``tp.backproject``: the library's ray-driven adjoint (``"numba"`` backend), all channels
  as its batch, per view, at the feature maps' resolution; unnormalised, so a different
  operator with the same cost structure (the slow reference path ``mode="ray"`` divides it
  by the back-projection of ones).

And the prior itself, the views' mean (what ``build_prior``, ``GeometryPrior`` and PSCT-Net's
BP-C compute), ``(B, C, nz, ny, nx)``:

- ``prior fused``: ``GeometryPrior()(features, geometry)`` as shipped: on CPU the lifting
  kernels add the views into one output and divide by the count of views (no per-view volumes);
- ``prior lift+fuse``: ``fuse_views(*backproject_features(..., return_mask=True), "mean")``,
  the same result bit for bit through the per-view volumes (the path before 2026-12-04).

Operations: ``forward`` (under ``torch.no_grad()``) and ``fwd+bwd`` (the forward with
``features.requires_grad`` and ``volumes.backward(w)`` with a fixed ``w``: the gradient with
respect to the feature maps, as in training). float32.

Each case runs once untimed and then ``--repeats`` times; the table gives the median and
minimum wall time, the median CPU seconds of the process (``time.process_time``: user +
system, all threads; the stabler number on a shared, loaded machine) and CPU per wall second, for 1 and 2 threads
(``torch.set_num_threads``; tomoprior's numba kernels follow it). It also prints how closely
``tomoprior`` and ``grid_sample cached`` agree (forward and gradient). Writes JSON
(atomically) to ``benchmarks/results/feature_backprojection.json``.

Usage::

    python benchmarks/feature_backprojection.py            # 32 ch 64^3 <- 2 x 128^2, and 64 ch 128^3 <- 2 x 256^2
    python benchmarks/feature_backprojection.py --quick    # the small problem only, 1 thread count
    PYTHONPATH=/path/to/other/checkout python benchmarks/feature_backprojection.py   # time that checkout
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
import torch
import torch.nn.functional as F  # noqa: N812 - torch's own idiom

# appended, not inserted: a checkout on PYTHONPATH (or an installed tomoprior) is the one timed
sys.path.append(str(Path(__file__).resolve().parents[1]))

import tomoprior as tp
from tomoprior import __version__
from tomoprior.refiners import GeometryPrior, backproject_features, fuse_views

# -- the plain grid_sample implementation -----------------------------------------------------

def voxel_coordinates(geom, h: int, w: int, dtype=torch.float32):
    """Per view: ``grid_sample`` grid ``(1, nz, ny*nx, 2)`` (``-1/+1`` at the outer pixel edges of
    an ``h x w`` map spanning the detector) and the 0/1 mask of voxels in front of the source
    whose centre projects onto the detector, from ``Geometry.project_points``."""
    grid = geom.grid
    nz, ny, nx = grid.shape
    centres = grid.voxel_centers().reshape(-1, 3).double()
    pix = geom.project_points(centres)  # (V, N, 2): (col, row) detector pixels
    out = []
    for v, view in enumerate(geom.views):
        rows, cols = view.shape
        col, row = pix[v, :, 0], pix[v, :, 1]
        vec = view.vector.double()
        s = vec[0:3]
        n = torch.linalg.cross(vec[6:9], vec[9:12])
        front = ((centres - s) @ n) * ((vec[3:6] - s) @ n) > 0  # same side of the source as the detector
        depth = ((centres - s) @ n) / ((vec[3:6] - s) @ n)
        mask = front & (depth <= 1.0) & (col >= -0.5) & (col <= cols - 0.5) & (row >= -0.5) & (row <= rows - 0.5)
        gx = (2 * col + 1) / cols - 1
        gy = (2 * row + 1) / rows - 1
        sample = torch.stack((gx, gy), dim=-1).reshape(1, nz, ny * nx, 2).to(dtype)
        out.append((sample, mask.reshape(grid.shape).to(dtype)))
    return out


def grid_sample_lift(features: torch.Tensor, coords) -> torch.Tensor:
    """``features (B, V, C, h, w)`` -> ``(B, V, C, nz, ny, nx)``: one grid_sample per view over all channels."""
    b, _, ch, h, w = features.shape
    vols = []
    for v, (sample, mask) in enumerate(coords):
        vol = F.grid_sample(features[:, v].reshape(1, b * ch, h, w), sample, mode="bilinear",
                            padding_mode="border", align_corners=False)
        vols.append(vol.reshape(b, ch, *mask.shape) * mask)
    return torch.stack(vols, dim=1)


def ray_backproject(features: torch.Tensor, geom) -> torch.Tensor:
    """``tp.backproject`` per view at the features' resolution, channels as its batch."""
    b, _, ch, h, w = features.shape
    vols = []
    for v, view in enumerate(geom.views):
        rows, cols = view.shape
        rebinned = tp.View(view.source, view.detector_center, view.u * (cols / w), view.v * (rows / h), (h, w))
        one = tp.Geometry(geom.grid, [rebinned])
        vols.append(tp.backproject(features[:, v].reshape(b * ch, 1, h, w), one).reshape(b, ch, *geom.grid.shape))
    return torch.stack(vols, dim=1)


# -- timing -------------------------------------------------------------------------------------

def timed(fn, repeats: int, setup=None) -> dict:
    if setup is not None:
        setup()
    fn()  # warm-up (compiles the numba kernels on the very first call of a process)
    walls, cpus = [], []
    for _ in range(repeats):
        if setup is not None:
            setup()
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return {"median_s": float(np.median(walls)), "min_s": float(np.min(walls)), "cpu_s": float(np.median(cpus)),
            "cpu_per_wall": float(np.sum(cpus) / max(np.sum(walls), 1e-12)), "repeats": repeats,
            "wall_s": [float(x) for x in walls], "cpus_s": [float(x) for x in cpus]}


def problem(channels: int, size: int, det: int, batch: int = 1):
    """``size^3`` voxels over a 192 mm field of view, two ``det x det`` views of the library's
    default bi-planar setup (1536 x 1536 panel binned), ``channels``-channel maps at the
    detector's resolution."""
    if 1536 % det:
        raise SystemExit(f"--det must divide 1536 (the default panel), got {det}")
    grid = tp.VolumeGrid((size, size, size), (192.0 / size,) * 3)
    geom = tp.BiplanarGeometry.from_parameters(binning=1536 // det, grid=grid)
    gen = torch.Generator().manual_seed(0)
    feats = torch.rand(batch, 2, channels, det, det, generator=gen)
    w = torch.rand(batch, 2, channels, size, size, size, generator=gen)
    return geom, feats, w


def run_problem(channels: int, size: int, det: int, threads_list, repeats: int, ray_repeats: int,
                with_ray: bool) -> dict:
    from tomoprior.refiners import prior as prior_module

    geom, feats, w = problem(channels, size, det)
    clear = getattr(prior_module, "_clear_cache", None)
    coords = voxel_coordinates(geom, det, det)
    cases = {
        "tomoprior": lambda x: backproject_features(x, geom),
        "tomoprior cold": lambda x: backproject_features(x, geom),
        "grid_sample cached": lambda x: grid_sample_lift(x, coords),
    }
    if with_ray:
        cases["tp.backproject"] = lambda x: ray_backproject(x, geom)
    cases["prior fused"] = lambda x: GeometryPrior()(x, geom)
    cases["prior lift+fuse"] = lambda x: fuse_views(*backproject_features(x, geom, return_mask=True), "mean")
    w_prior = w[:, 0].contiguous()  # (B, C, *grid): the gradient of the fused prior
    results = {}
    for threads in threads_list:
        torch.set_num_threads(threads)
        for name, fn in cases.items():
            setup = clear if (name == "tomoprior cold" and clear is not None) else None
            if name == "tomoprior cold" and clear is None:
                continue  # a checkout without the cache: "tomoprior" is already the cold call
            reps = ray_repeats if name in ("tp.backproject", "tomoprior cold") else repeats

            def forward(fn=fn):
                with torch.no_grad():
                    fn(feats)

            wt_case = w_prior if name.startswith("prior") else w

            def fwd_bwd(fn=fn, wt=wt_case):
                x = feats.clone().requires_grad_(True)
                fn(x).backward(wt)

            for op, body in (("forward", forward), ("fwd+bwd", fwd_bwd)):
                r = timed(body, reps, setup)
                results[f"{name}|{op}|{threads}"] = {"case": name, "op": op, "threads": threads, **r}
                print(f"  {name:<22} {op:<8} {threads} thr  median {r['median_s'] * 1e3:9.1f} ms  "
                      f"min {r['min_s'] * 1e3:9.1f} ms  CPU {r['cpu_s'] * 1e3:9.1f} ms  cpu/wall "
                      f"{r['cpu_per_wall']:4.2f}", flush=True)
    # agreement of the shipped path with the plain one (forward and feature gradient)
    x1 = feats.clone().requires_grad_(True)
    x2 = feats.clone().requires_grad_(True)
    a = backproject_features(x1, geom)
    b = grid_sample_lift(x2, coords)
    a.backward(w)
    b.backward(w)
    a, b = a.detach(), b.detach()
    agree = {"forward_max_abs_diff_rel": float((a - b).abs().max() / b.abs().max()),
             "grad_max_abs_diff_rel": float((x1.grad - x2.grad).abs().max() / x2.grad.abs().max())}
    print(f"  tomoprior vs grid_sample cached: forward max|diff|/max = {agree['forward_max_abs_diff_rel']:.2e}, "
          f"gradient {agree['grad_max_abs_diff_rel']:.2e}")
    return {"channels": channels, "grid": [size] * 3, "detector": [det, det], "views": 2, "batch": 1,
            "output_mb": 2 * channels * size**3 * 4 / 2**20, "cases": results, "agreement": agree}


def table(res: dict, threads_list) -> str:
    """Markdown table: one row per case and operation, the thread counts side by side."""
    cases = res["cases"]
    head = "| case | op | " + " | ".join(f"{t} thr median ms (min) | {t} thr CPU ms" for t in threads_list) + " |"
    sep = "|" + " --- |" * (2 + 2 * len(threads_list))
    lines = [head, sep]
    names = []
    for r in cases.values():
        if (r["case"], r["op"]) not in names:
            names.append((r["case"], r["op"]))
    for name, op in names:
        cells = []
        for t in threads_list:
            r = cases.get(f"{name}|{op}|{t}")
            cells += ([f"{r['median_s'] * 1e3:.1f} ({r['min_s'] * 1e3:.1f})", f"{r['cpu_s'] * 1e3:.1f}"] if r
                      else ["-", "-"])
        lines.append(f"| {name} | {op} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_json_atomic(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(doc, indent=1) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--channels", type=int, default=32, help="channels of the small problem")
    ap.add_argument("--size", type=int, default=64, help="small problem: size^3 voxels")
    ap.add_argument("--det", type=int, default=128, help="small problem: two det x det feature maps")
    ap.add_argument("--large", default="64,128,256",
                    help="channels,size,det of the larger problem; 'none' to skip (64,128,256: ~1 GiB output)")
    ap.add_argument("--threads", default="1,2", help="thread counts, comma separated")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--slow-repeats", type=int, default=3, help="repeats of tp.backproject and tomoprior cold")
    ap.add_argument("--no-ray", action="store_true", help="skip tp.backproject")
    ap.add_argument("--quick", action="store_true", help="small problem only, 2 threads, 3 repeats")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "feature_backprojection.json"))
    args = ap.parse_args(argv)
    threads_list = [int(t) for t in args.threads.split(",")]
    problems = [(args.channels, args.size, args.det)]
    if args.quick:
        threads_list, args.repeats, args.slow_repeats = [2], 3, 1
    elif args.large.lower() != "none":
        problems.append(tuple(int(x) for x in args.large.split(",")))

    import tomoprior.refiners.prior as prior_module

    doc = {"benchmark": "feature_backprojection", "tomoprior": __version__, "tomoprior_path": tp.__file__,
           "has_table_cache": hasattr(prior_module, "_clear_cache"), "torch": torch.__version__,
           "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "machine": platform.platform(),
           "cpu_count": os.cpu_count(), "load_average_start": list(os.getloadavg()),
           "python": platform.python_version(), "dtype": "float32", "threads": threads_list, "problems": []}
    for ch, size, det in problems:
        print(f"{ch} channels, {size}^3 voxels <- 2 x {det}^2 feature maps "
              f"(output {2 * ch * size**3 * 4 / 2**20:.0f} MiB), tomoprior from {tp.__file__}", flush=True)
        res = run_problem(ch, size, det, threads_list, args.repeats, args.slow_repeats, not args.no_ray)
        doc["problems"].append(res)
        print()
        print(table(res, threads_list))
        print()
    doc["load_average_end"] = list(os.getloadavg())
    write_json_atomic(Path(args.out), doc)
    print(f"wrote {args.out} (load average {doc['load_average_start'][0]:.1f} at start, "
          f"{doc['load_average_end'][0]:.1f} at end, {os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
