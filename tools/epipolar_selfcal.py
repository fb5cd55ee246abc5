"""Epipolar self-calibration against bead calibration, from the same miscalibrated start.

For each anatomy (a procedural 1-year skull on the default grid, and the CThead real CT aimed
at its volume centre with a 430 mm panel) and each physics (``exact`` line integrals, and
``realistic`` radiographs: the ``realistic`` preset of :mod:`tomoprior.data.realism` with head
pose and motion off, i.e. dose, 70 kVp polychromatic beam through soft tissue and bone,
scatter, heel effect, focal-spot and detector blur, then flat-field and ``-log``; and
``corrected``: the same without scatter and with a monochromatic beam, what ideal scatter and
beam-hardening corrections would leave: noise, heel and blur), the two
X-rays (256^2 pixels) are made once with the TRUE geometry. Then, for a few random draws, a
miscalibrated START geometry is made by adding errors of the size a mechanical setup has
(source-to-detector +-10 mm, detector offset u0 and v0 +-2 mm, detector rotation and both tilts
+-1 deg, uniform):

* draws ``lateral``: errors in the lateral view only (the frontal view, the gauge of the
  self-calibration, is right);
* draw ``both``: errors in both views (the self-calibration holds the frontal view, so its
  errors stay; only the relative geometry can be restored).

Each start is refined

* by :func:`tomoprior.validation.self_calibrate` on the anatomy's X-rays (defaults: the
  lateral view's v0, source-to-detector, rotation, angulation and tilt_u; 1 deg prior on the
  angles), and
* by bead calibration (:func:`tomoprior.calibration.calibrate`, phantom gauge) on simulated
  radiographs of ``bead_cage`` taken with the same true geometry (768^2 pixels of the same
  panel, 1000 photons per pixel, Poisson noise), from the same start.

Reported per parameter: the error (estimate minus truth) of the start, of the self-calibration
and of the bead calibration (lengths mm, angles degrees); per case the reprojection error of
3D points filling a 150 mm ball about the isocenter (every 30 mm: 123 points), in pixels of the
256^2 detector, and the relative epipolar residual (truth, start, self-calibrated).

Outputs (written atomically into ``--out``): ``epipolar_selfcal.json`` and
``epipolar_selfcal.md``.

Usage::

    python tools/epipolar_selfcal.py                      # 2 anatomies x 3 physics x 5 draws, ~3 CPU min
    python tools/epipolar_selfcal.py --quick --out /tmp/sc  # skull, exact, 2 draws
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import tomoprior as tp  # noqa: E402
import tomoprior.calibration as cal  # noqa: E402
from tomoprior._atomic import write_text_atomic  # noqa: E402
from tomoprior.data import Realism, synthesize  # noqa: E402
from tomoprior.data.realism import PoseJitter  # noqa: E402
from tomoprior.validation import epipolar_consistency, self_calibrate  # noqa: E402
from tomoprior.validation.sensitivity import head_points  # noqa: E402

#: Error sizes of a draw (uniform in +-size): lengths mm, angles degrees.
ERRORS = {"source_to_detector": 10.0, "u0": 2.0, "v0": 2.0, "detector_rotation_deg": 1.0,
          "detector_tilt_u_deg": 1.0, "detector_tilt_v_deg": 1.0}
#: Parameters compared with the truth.
REPORTED = ("source_to_detector", "v0", "u0", "detector_rotation", "secondary_angle", "detector_tilt_u",
            "detector_tilt_v")
ANGLES = set(tp.ViewParameters.ANGLE_FIELDS)
BINNING = 6  # 256^2 pixels for the self-calibration
BEAD_FACTOR = 3  # bead images: 3x finer pixels of the same panel (768^2)


def _value(p, f) -> float:
    x = float(torch.as_tensor(getattr(p, f)).detach())
    return math.degrees(x) if f in ANGLES else x


def _anatomies(names):
    """Yield ``(name, volume, grid, true geometry)``."""
    base = tp.BiplanarGeometry.from_parameters(binning=BINNING)
    if "skull" in names:
        from tomoprior.phantoms.skull import default_grid, make_skull

        grid = default_grid(128)
        vol = make_skull(age_years=1.0, seed=0).rasterize(grid, supersample=2)
        yield "skull 1 y", vol, grid, base.with_grid(grid)
    if "cthead" in names:
        ct = tp.data.real_ct("cthead")
        rows = base.parameters[0].detector_shape[0]
        # an adult head does not fit the pediatric 307 mm panel: a 430 mm panel, same pixel count
        params = [p.replace(pixel_pitch=430.0 / rows) for p in base.parameters]
        geom = tp.BiplanarGeometry.from_parameters(params[0], params[1], grid=ct.grid, isocenter="volume")
        yield "CThead", _head_only(ct.data), ct.grid, geom


def _head_only(data: torch.Tensor) -> torch.Tensor:
    """The CT with everything outside the largest body above half water's attenuation set to air
    (drops the head holder, which would leave the lateral detector and truncate its lines)."""
    from scipy import ndimage

    d = data.detach().cpu().numpy()
    labels, n = ndimage.label(d > 0.5 * 0.0206)  # water at 60 keV: 0.0206 /mm
    if n == 0:
        return data
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    keep = ndimage.binary_dilation(ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes))), iterations=2)
    return torch.from_numpy(np.where(keep, d, 0.0).astype(np.float32))


def _images(physics, vol, grid, geom, seed) -> torch.Tensor:
    with torch.no_grad():
        if physics == "exact":
            return tp.project(vol, geom).double()
        preset = Realism.preset("realistic")
        realism = dataclasses.replace(preset, pose=PoseJitter(), motion=PoseJitter())
        if physics == "corrected":  # what ideal scatter and beam-hardening corrections would leave
            realism = dataclasses.replace(realism, radiograph=realism.radiograph.replace(scatter=None),
                                          materials=None)
        return synthesize(vol, geom, grid=grid, realism=realism, seed=seed).xrays.double()


def _draws(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        def draw():
            return {name: float(rng.uniform(-1.0, 1.0) * size) for name, size in ERRORS.items()}
        kind = "both" if (k == n - 1 and n > 1) else "lateral"
        out.append({"kind": kind, "errors": {"frontal": draw() if kind == "both" else {}, "lateral": draw()}})
    return out


def _reprojection_px(true_geom, est_params, points: np.ndarray) -> list[float]:
    """RMS reprojection error per view, pixels, of ``points`` through ``est_params`` vs the truth."""
    est = tp.BiplanarGeometry(true_geom.grid, est_params)
    pts = torch.as_tensor(points, dtype=torch.float64)
    with torch.no_grad():
        a = true_geom.project_points(pts)
        b = est.project_points(pts)
    d = torch.linalg.norm(a - b, dim=-1)  # (views, points)
    return [float(torch.sqrt((x ** 2).mean())) for x in d]


def _bead_calibration(true_geom, start_geom, seed: int) -> tuple[list, dict]:
    """Bead calibration from ``start_geom`` on bead radiographs taken with ``true_geom``.

    The bead phantom sits at the isocenter, so both geometries are moved to an isocenter at the
    origin (the phantom frame) and the fitted parameters moved back."""
    iso = tuple(float(x) for x in torch.as_tensor(true_geom.parameters[0].isocenter))

    def fine(p):
        pr, pc = p.pitch
        rows, cols = p.detector_shape
        return p.replace(isocenter=(0.0, 0.0, 0.0), pixel_pitch=(pr / BEAD_FACTOR, pc / BEAD_FACTOR),
                         detector_shape=(rows * BEAD_FACTOR, cols * BEAD_FACTOR))

    truth = tp.BiplanarGeometry(tp.geometry.DEFAULT_GRID, [fine(p) for p in true_geom.parameters])
    t0 = time.process_time()
    images = cal.bead_radiographs("bead_cage", truth, photons_per_pixel=1000.0, seed=seed)
    res = cal.calibrate(images, "bead_cage", [fine(p) for p in start_geom.parameters], kind="raw", flat=1000.0,
                        heldout=0.2, seed=0)
    back = [p.replace(isocenter=iso, pixel_pitch=q.pixel_pitch, detector_shape=q.detector_shape)
            for p, q in zip(res.parameters, true_geom.parameters)]
    info = {"fit_rms_px": float(res.rms_px), "heldout_rms_px": float(res.heldout_rms_px),
            "matched": [len(m) for m in res.residuals],
            "cpu_s": time.process_time() - t0}
    return back, info


def run(anatomies, physics_list, n_draws: int, seed: int, log=print) -> dict:
    draws = _draws(n_draws, seed)
    cases = []
    for name, vol, grid, true_geom in anatomies:
        iso = np.asarray(torch.as_tensor(true_geom.parameters[0].isocenter), dtype=np.float64)
        points = head_points(150.0, 30.0, center=tuple(iso))
        starts = [true_geom.perturbed(d["errors"]) for d in draws]
        beads = []
        for k, start in enumerate(starts):
            est, info = _bead_calibration(true_geom, start, seed=1000 + k)
            beads.append((est, info))
            log(f"{name} draw {k}: bead calibration, fit RMS {info['fit_rms_px']:.3f} px ({info['cpu_s']:.0f} CPU s)")
        for physics in physics_list:
            t0 = time.process_time()
            xr = _images(physics, vol, grid, true_geom, seed=seed)
            floor = float(epipolar_consistency(xr, true_geom, n_planes=128).relative)
            log(f"{name}, {physics}: images {tuple(xr.shape)} in {time.process_time() - t0:.0f} CPU s; relative "
                f"residual with the true geometry {floor:.2e}")
            for k, (d, start) in enumerate(zip(draws, starts)):
                t0 = time.process_time()
                r = self_calibrate(xr, start)
                cpu = time.process_time() - t0
                bead_params, bead_info = beads[k]
                params = {}
                for v, view in enumerate(("frontal", "lateral")):
                    for f in REPORTED:
                        t = _value(true_geom.parameters[v], f)
                        params[f"{view}.{f}"] = {
                            "unit": "deg" if f in ANGLES else "mm", "true": t,
                            "start_error": _value(start.parameters[v], f) - t,
                            "selfcal_error": _value(r.parameters[v], f) - t,
                            "bead_error": _value(bead_params[v], f) - t}
                case = {
                    "anatomy": name, "physics": physics, "draw": k, "kind": d["kind"], "errors": d["errors"],
                    "relative_true": floor, "relative_start": r.relative_before, "relative_selfcal": r.relative_after,
                    "iterations": r.iterations, "evaluations": r.evaluations, "selfcal_cpu_s": cpu,
                    "reprojection_px": {"start": _reprojection_px(true_geom, start.parameters, points),
                                        "selfcal": _reprojection_px(true_geom, r.parameters, points),
                                        "bead": _reprojection_px(true_geom, bead_params, points)},
                    "pixel_pitch_mm": true_geom.parameters[0].pitch[0], "points": len(points),
                    "bead": bead_info, "parameters": params}
                cases.append(case)
                rp = case["reprojection_px"]
                log(f"  draw {k} ({d['kind']}): relative {r.relative_before:.2e} -> {r.relative_after:.2e} "
                    f"({r.iterations} it, {cpu:.0f} CPU s); reprojection px (F, L) start "
                    f"{rp['start'][0]:.2f}, {rp['start'][1]:.2f}; self-cal {rp['selfcal'][0]:.2f}, "
                    f"{rp['selfcal'][1]:.2f}; beads {rp['bead'][0]:.3f}, {rp['bead'][1]:.3f}")
    return {"schema": "tomoprior.epipolar-selfcal", "schema_version": 1, "seed": seed,
            "error_sizes": ERRORS, "binning": BINNING, "bead_pixels_per_selfcal_pixel": BEAD_FACTOR,
            "cases": cases}


def _rms(xs) -> float:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return math.sqrt(sum(x * x for x in xs) / len(xs)) if xs else math.nan


def markdown(result: dict) -> str:
    cases = result["cases"]
    lines = ["# Epipolar self-calibration vs bead calibration", "",
             "Generated by `python tools/epipolar_selfcal.py`. Errors are estimate minus truth, RMS over the "
             "draws (lengths mm, angles deg).", ""]
    order = {"exact": 0, "corrected": 1, "realistic": 2}
    groups = sorted({(c["anatomy"], c["physics"]) for c in cases}, key=lambda g: (g[0] != "skull 1 y", order[g[1]]))
    lat = [c for c in cases if c["kind"] == "lateral"]
    if lat:
        n = len({c["draw"] for c in lat})
        lines += [f"## Errors in the lateral view only ({n} draws): lateral-view parameters", "",
                  "| parameter | start | " + " | ".join(f"self-cal {a}, {p}" for a, p in groups) + " | beads |",
                  "| --- | --- | " + " | ".join("---" for _ in groups) + " | --- |"]
        for f in REPORTED:
            key = f"lateral.{f}"
            first = [c for c in lat if (c["anatomy"], c["physics"]) == groups[0]]
            unit = first[0]["parameters"][key]["unit"]
            start = _rms(c["parameters"][key]["start_error"] for c in first)
            cols = [_rms(c["parameters"][key]["selfcal_error"] for c in lat if (c["anatomy"], c["physics"]) == g)
                    for g in groups]
            bead = _rms(c["parameters"][key]["bead_error"] for c in lat)
            lines.append(f"| {f} ({unit}) | {start:.3f} | " + " | ".join(f"{x:.3f}" for x in cols)
                         + f" | {bead:.3f} |")
        lines.append("")
    lines += ["## Per case: relative residual and reprojection error", "",
              "Reprojection: RMS over 123 points of a 150 mm ball about the isocenter, pixels of the 256^2 "
              "detector (1.2 mm for the skull panel, 1.68 mm for the CThead panel), frontal / lateral.", "",
              "| anatomy | physics | draw | errors in | relative: true / start / self-cal | iterations | "
              "reprojection start | self-cal | beads |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in sorted(cases, key=lambda c: (c["anatomy"] != "skull 1 y", order[c["physics"]], c["draw"])):
        rp = c["reprojection_px"]
        lines.append(f"| {c['anatomy']} | {c['physics']} | {c['draw']} | {c['kind']} | {c['relative_true']:.2e} / "
                     f"{c['relative_start']:.2e} / {c['relative_selfcal']:.2e} | {c['iterations']} | "
                     f"{rp['start'][0]:.2f} / {rp['start'][1]:.2f} | {rp['selfcal'][0]:.2f} / {rp['selfcal'][1]:.2f} | "
                     f"{rp['bead'][0]:.3f} / {rp['bead'][1]:.3f} |")
    both = [c for c in cases if c["kind"] == "both"]
    if both:
        lines += ["", "## Errors in both views: the frontal view's errors after self-calibration", "",
                  "| anatomy | physics | " + " | ".join(f"frontal {f}" for f in ("source_to_detector", "v0", "u0"))
                  + " | lateral v0 | lateral source_to_detector |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for c in sorted(both, key=lambda c: (c["anatomy"] != "skull 1 y", order[c["physics"]])):
            p = c["parameters"]

            def pair(key, p=p):
                return f"{p[key]['start_error']:+.2f} -> {p[key]['selfcal_error']:+.2f}"

            lines.append(f"| {c['anatomy']} | {c['physics']} | "
                         + " | ".join(pair("frontal." + f) for f in ("source_to_detector", "v0", "u0"))
                         + f" | {p['lateral.v0']['start_error']:+.2f} -> {p['lateral.v0']['selfcal_error']:+.2f}"
                         + f" | {p['lateral.source_to_detector']['start_error']:+.2f} -> "
                           f"{p['lateral.source_to_detector']['selfcal_error']:+.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tomoprior-out/epipolar-selfcal", help="output folder")
    ap.add_argument("--draws", type=int, default=5, help="random starts per case (the last has errors in both views)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--anatomy", nargs="+", default=["skull", "cthead"], choices=["skull", "cthead"])
    ap.add_argument("--physics", nargs="+", default=["exact", "corrected", "realistic"],
                    choices=["exact", "corrected", "realistic"])
    ap.add_argument("--quick", action="store_true", help="skull, exact, 2 draws")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared machine)")
    args = ap.parse_args(argv)
    if args.draws < 1:
        ap.error("--draws must be >= 1")
    torch.set_num_threads(args.threads)
    if args.quick:
        args.anatomy, args.physics, args.draws = ["skull"], ["exact"], 2
    t0 = time.process_time()
    result = run(_anatomies(args.anatomy), args.physics, args.draws, args.seed)
    result["cpu_s"] = time.process_time() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "epipolar_selfcal.json", json.dumps(result, indent=1, allow_nan=True))
    md = markdown(result)
    write_text_atomic(out / "epipolar_selfcal.md", md)
    print(md)
    print(f"wrote {out / 'epipolar_selfcal.json'} and {out / 'epipolar_selfcal.md'} ({result['cpu_s']:.0f} CPU s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
