"""Measure how pixel integration of the bead shadows changes the main job's calibration errors.

The main validation job (``tomoprior validate``) simulates its bead images with line integrals
sampled at pixel centres. A real detector pixel integrates intensity over its area; this
script re-runs the main-job chain with ``bead_line_integrals(..., subsamples=s)`` (s x s rays
per pixel, averaged in intensity) for several ``s`` and noise seeds and reports, per view, the
errors of the fitted source-to-detector and source-to-isocenter distances against the truth
(mean, RMS and largest magnitude over seeds, mm) and the held-out reprojection RMS (px).

The physics steps are those of ``tomoprior.validation.pipeline.simulate_radiographs``, in the
same order (heel-shaped flat field times ``exp(-p)``, focal-spot blur, detector blur, Poisson
noise from one generator seeded with the seed, drawn view after view); only the line
integrals differ. Detection is ``detect_beads`` with its defaults and calibration is
``calibrate(detections, phantom, nominal, heldout=config.heldout, seed=seed)``, as in the
main job. Everything but the noise and the held-out draw is independent of the seed, so the
noiseless images are computed once per (variant, s).

Variants (``--variants``): ``full`` (the main job's 0.6 mm focal spot and 0.5 px detector
blur), ``no-focal``, ``no-blur``, ``sharp`` (neither blur).

Usage::

    python tools/measure_pixel_integration.py --seeds 8 --subsamples 1 2 4 \\
        --variants full sharp --out pixel_integration.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np
import torch

from tomoprior import physics
from tomoprior.calibration import bead_line_integrals, calibrate, detect_beads
from tomoprior.phantoms import load as load_phantom
from tomoprior.validation.pipeline import MainJobConfig, expected_counts, main_job_geometries, parameter_errors

VARIANTS = {
    "full": {},
    "no-focal": {"focal_spot_mm": 0.0},
    "no-blur": {"detector_blur_px": 0.0},
    "sharp": {"focal_spot_mm": 0.0, "detector_blur_px": 0.0},
}
PARAMS = ("source_to_detector", "source_to_isocenter")


def noisy(expected: list[torch.Tensor], seed: int) -> list[np.ndarray]:
    gen = torch.Generator()
    gen.manual_seed(int(seed))
    return [physics.poisson_noise(img, generator=gen).cpu().numpy().astype(np.float64) for img in expected]


def one_run(expected, phantom, nominal, true, config, seed) -> dict:
    images = noisy(expected, seed)
    t0 = time.perf_counter()
    detections = [detect_beads(img) for img in images]
    result = calibrate(detections, phantom, nominal, heldout=config.heldout, seed=seed)
    fit_s = time.perf_counter() - t0
    rows = parameter_errors(result.parameters, list(true.parameters))
    errors = {f"{r['view']}.{r['parameter']}": r["error"] for r in rows}
    held = getattr(result, "heldout_rms_px", None)
    return {"seed": seed, "errors": errors, "heldout_rms_px": None if held is None else float(held),
            "n_detected": [len(np.asarray(getattr(d, "positions", d)).reshape(-1, 2)) for d in detections],
            "detect_calibrate_s": fit_s}


def summarise(runs: list[dict], key: str) -> dict:
    e = np.array([r["errors"][key] for r in runs if "errors" in r], dtype=np.float64)
    if e.size == 0:
        return {"n": 0}
    return {"n": int(e.size), "mean": float(e.mean()), "rms": float(np.sqrt(np.mean(e ** 2))),
            "max_abs": float(np.abs(e).max()), "min": float(e.min()), "max": float(e.max()),
            "n_positive": int((e > 0).sum())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=8, help="number of noise seeds 0..N-1 (default 8)")
    ap.add_argument("--subsamples", type=int, nargs="+", default=[1, 2, 4], help="s values (default 1 2 4)")
    ap.add_argument("--variants", nargs="+", default=["full"], choices=sorted(VARIANTS),
                    help="physics variants (default: full)")
    ap.add_argument("--out", default=None, help="write the results as JSON to this path")
    args = ap.parse_args(argv)
    if args.seeds < 1 or any(s < 1 for s in args.subsamples):
        ap.error("--seeds and --subsamples must be positive")

    torch.set_num_threads(1)
    base = MainJobConfig()
    phantom = load_phantom(base.phantom)
    nominal, true = main_job_geometries(base)
    names = [p.name for p in nominal.parameters]
    heel = None
    if base.anode_angle_deg is not None:
        heel = torch.as_tensor(physics.heel_effect(true, base.anode_angle_deg, kvp=base.kvp)).to(torch.float64)

    report = {"config": {k: v for k, v in base.to_dict().items() if k != "miscalibration"},
              "miscalibration": base.miscalibration, "seeds": args.seeds, "detector": list(true.projection_shape),
              "timings_s": {}, "results": []}
    line_integrals = {}
    for s in args.subsamples:
        t0 = time.perf_counter()
        line_integrals[s] = bead_line_integrals(phantom, true, subsamples=s)
        report["timings_s"][f"line_integrals_s{s}"] = time.perf_counter() - t0
    for variant in args.variants:
        config = MainJobConfig(**VARIANTS[variant])
        for s in args.subsamples:
            t0 = time.perf_counter()
            expected = expected_counts(line_integrals[s], true, config, heel)
            report["timings_s"][f"physics_{variant}_s{s}"] = time.perf_counter() - t0
            runs = []
            for seed in range(args.seeds):
                try:
                    runs.append(one_run(expected, phantom, nominal, true, config, seed))
                except Exception as exc:  # a failed calibration is a result too
                    runs.append({"seed": seed, "failure": f"{type(exc).__name__}: {exc}"})
                print(f"  {variant} s={s} seed={seed} done", file=sys.stderr, flush=True)
            summary = {f"{v}.{p}": summarise(runs, f"{v}.{p}") for v in names for p in PARAMS}
            held = [r["heldout_rms_px"] for r in runs if r.get("heldout_rms_px") is not None]
            summary["heldout_rms_px"] = {"mean": float(np.mean(held)) if held else math.nan,
                                         "max": float(np.max(held)) if held else math.nan}
            report["results"].append({"variant": variant, "subsamples": s, "summary": summary, "runs": runs})

    print(f"main job: {true.projection_shape[1]}x{true.projection_shape[2]} px, {args.seeds} seeds; "
          "errors = calibrated - true (mm)")
    print(f"{'variant':<9} {'s':>2} {'view':<8} {'parameter':<20} {'mean':>8} {'RMS':>7} {'max|e|':>7} "
          f"{'min':>7} {'max':>7} {'#>0':>4}   held-out px (mean/max)")
    for res in report["results"]:
        held = res["summary"]["heldout_rms_px"]
        for v in names:
            for p in PARAMS:
                m = res["summary"][f"{v}.{p}"]
                if not m.get("n"):
                    print(f"{res['variant']:<9} {res['subsamples']:>2} {v:<8} {p:<20} (no successful run)")
                    continue
                print(f"{res['variant']:<9} {res['subsamples']:>2} {v:<8} {p:<20} {m['mean']:>+8.3f} {m['rms']:>7.3f} "
                      f"{m['max_abs']:>7.3f} {m['min']:>+7.3f} {m['max']:>+7.3f} {m['n_positive']:>2}/{m['n']:<2}"
                      f"  {held['mean']:.4f}/{held['max']:.4f}")
        fails = [r for r in res["runs"] if "failure" in r]
        for r in fails:
            print(f"  failed: seed {r['seed']}: {r['failure']}")
    print("timings (s): " + ", ".join(f"{k} {v:.2f}" for k, v in report["timings_s"].items()))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
