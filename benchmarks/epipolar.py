"""Epipolar consistency speed: one evaluation for two 256 x 256 views, batched vs a naive loop.

Cases (same images, same geometry, same planes):

- ``batched``: ``tomoprior.validation.epipolar_consistency`` (all planes of a pair in one
  ``grid_sample`` call per view), without autograd.
- ``batched+grad``: the same with the geometry built from ``ViewParameters`` tensors that
  require gradients, plus ``score.backward()`` (what a self-calibration step costs).
- ``naive``: a per-line Python loop in NumPy: for each plane and view, the line's samples,
  their bilinear interpolation and the sum, one line at a time (cosine weighting, blur and
  image gradients computed once per view, as any implementation would). Its derivatives are
  compared with the batched ones (``max |diff|``), so the two implementations check each
  other.

Each case runs once untimed and then ``--repeats`` times; the table gives the median and
minimum wall time, the median CPU seconds of the process (the stable number on a shared
machine) and the CPU time per wall second. Writes JSON to
``benchmarks/results/epipolar.json``.

Usage::

    python benchmarks/epipolar.py                 # about 30 s on 2 cores
    python benchmarks/epipolar.py --planes 512 --threads 1
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tomoprior as tp
from tomoprior import __version__
from tomoprior.phantoms import Ellipsoid, Phantom
from tomoprior.validation.epipolar import _plane_family, _VecView, epipolar_consistency


def naive_derivatives(image: np.ndarray, vec: np.ndarray, shape, normals: np.ndarray, smoothing: float,
                      step: float = 1.0) -> np.ndarray:
    """Plane-integral derivatives of one view, one plane at a time (the loop being measured)."""
    from scipy.ndimage import gaussian_filter

    rows, cols = shape
    s, c0, u, v = vec[0:3], vec[3:6], vec[6:9], vec[9:12]
    normal = np.cross(u, v)
    area = np.linalg.norm(normal)
    dist = abs(np.dot(c0 - s, normal / area))
    cc = np.arange(cols) - (cols - 1) / 2
    rr = np.arange(rows) - (rows - 1) / 2
    w = (c0 - s) + cc[None, :, None] * u + rr[:, None, None] * v
    radius = max(1, math.ceil(3 * smoothing))
    blurred = gaussian_filter(image, smoothing, mode="nearest", truncate=radius / smoothing) if smoothing > 0 else image
    weighted = blurred * dist / np.linalg.norm(w, axis=-1)
    g_row, g_col = np.gradient(weighted)
    out = np.zeros(len(normals))
    m = math.ceil(math.hypot(rows, cols) / step) + 1
    t = (np.arange(m) - (m - 1) / 2) * step
    for i, n in enumerate(normals):
        alpha, beta = n @ u, n @ v
        k2 = alpha * alpha + beta * beta
        k = math.sqrt(k2)
        nu = np.array([alpha, beta]) / k
        foot = np.array([(cols - 1) / 2, (rows - 1) / 2]) - (n @ (c0 - s)) / k * nu
        pc = foot[0] - t * nu[1]
        pr = foot[1] + t * nu[0]
        c0i, r0i = np.floor(pc).astype(int), np.floor(pr).astype(int)
        fc, fr = pc - c0i, pr - r0i
        total = 0.0
        for dc, dr, wgt in ((0, 0, (1 - fc) * (1 - fr)), (1, 0, fc * (1 - fr)), (0, 1, (1 - fc) * fr),
                            (1, 1, fc * fr)):
            ci, ri = c0i + dc, r0i + dr
            ok = (ci >= 0) & (ci < cols) & (ri >= 0) & (ri < rows)
            slope = nu[0] * g_col[ri[ok], ci[ok]] + nu[1] * g_row[ri[ok], ci[ok]]
            total += float((wgt[ok] * slope).sum())
        out[i] = area / k2 * total * step
    return out


def timed(fn, repeats: int) -> dict:
    fn()  # warm-up
    walls, cpus = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return {"median_s": float(np.median(walls)), "min_s": float(np.min(walls)), "cpu_s": float(np.median(cpus)),
            "cpu_per_wall": float(np.sum(cpus) / max(np.sum(walls), 1e-12))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binning", type=int, default=6, help="detector binning of the 1536^2 panel (6: 256^2)")
    ap.add_argument("--planes", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--smoothing", type=float, default=1.5)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "epipolar.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    geom = tp.BiplanarGeometry.from_parameters(binning=args.binning)
    ph = Phantom([Ellipsoid((8, -5, 6), (55, 65, 75), 0.02, angles=(0.3, 0.4, 0.2)),
                  Ellipsoid((-20, 10, -15), (15, 20, 25), 0.01, angles=(1.0, 0.2, 0.5))])
    images = ph.line_integrals(geom)
    shape = tuple(images.shape[1:])
    kw = {"n_planes": args.planes, "smoothing": args.smoothing}

    def batched():
        with torch.no_grad():
            return epipolar_consistency(images, geom, **kw)

    params = [p.replace(**{f: torch.tensor(float(getattr(p, f)), dtype=torch.float64, requires_grad=True)
                           for f in tp.ViewParameters.SCALAR_FIELDS}) for p in geom.parameters]

    def batched_grad():
        g = tp.geometry.ParametricGeometry(geom.grid, params)
        epipolar_consistency(images, g, **kw).score.backward()

    va, vb = geom.views
    _, normals = _plane_family(_VecView(va, va.vector), _VecView(vb, vb.vector),
                               torch.as_tensor(geom.grid.corners()), args.planes)
    nrm = normals.numpy()
    ims = images.numpy()
    vecs = geom.vectors.detach().numpy()

    def naive():
        return [naive_derivatives(ims[i], vecs[i], shape, nrm, args.smoothing) for i in range(2)]

    rows = {"batched": timed(batched, args.repeats), "batched+grad": timed(batched_grad, args.repeats),
            "naive": timed(naive, max(1, args.repeats // 2))}
    ref = batched().pairs[0]
    slow = naive()
    scale = float(ref.derivative_a.abs().max())
    diff = max(float(np.abs(slow[0] - ref.derivative_a.numpy()).max()),
               float(np.abs(slow[1] - ref.derivative_b.numpy()).max())) / scale

    print(f"epipolar consistency, 2 views of {shape[0]}x{shape[1]}, {args.planes} planes, "
          f"{args.threads} thread(s), smoothing {args.smoothing} px")
    print(f"{'case':<14} {'median s':>10} {'min s':>10} {'CPU s':>8} {'cpu/wall':>9} {'vs naive (CPU)':>15}")
    for name, r in rows.items():
        speed = rows["naive"]["cpu_s"] / r["cpu_s"]
        print(f"{name:<14} {r['median_s']:10.4f} {r['min_s']:10.4f} {r['cpu_s']:8.4f} {r['cpu_per_wall']:9.2f} "
              f"{speed:14.1f}x")
    print(f"naive vs batched derivatives: max |diff| / max |derivative| = {diff:.2e}")
    print(f"relative RMS residual (exact geometry): {float(ref.relative):.3e}")

    doc = {"benchmark": "epipolar", "tomoprior": __version__, "torch": torch.__version__,
           "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "machine": platform.platform(),
           "python": platform.python_version(), "threads": args.threads, "detector": list(shape),
           "planes": args.planes, "smoothing_px": args.smoothing, "cases": rows,
           "naive_vs_batched_max_rel_diff": diff, "relative_residual": float(ref.relative)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
