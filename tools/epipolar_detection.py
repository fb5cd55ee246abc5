"""How well does the epipolar consistency check detect miscalibration and patient motion?

Measured on realistic radiographs (the ``realistic`` preset of :mod:`tomoprior.data.realism`:
quantum noise at its dose, scatter, heel effect, focal-spot and detector blur, and the
polychromatic beam when the preset has one, then flat-field and ``-log``) of procedural skulls
and of the CThead real CT, at 256^2 pixels.

What a case is
--------------
For each anatomy and *realisation* (a head pose drawn as the preset draws it, +-3 deg and
+-5 mm per axis, and one noise seed) the X-rays are made once with the TRUE geometry: the
scanner's geometry seen from the posed head (``posed_geometry``). A head pose moves both views
together, a rigid motion of the whole setup that the epipolar condition cannot see, so the
scanner's geometry is the correct one to check them against.

* **Miscalibration**: the same X-rays scored with a WRONG geometry: the scanner's geometry
  with parameter errors added (``ParametricGeometry.perturbed``), i.e. a calibration file
  that does not describe the scanner. One projection per realisation serves every error.
* **Patient motion**: new X-rays of the same realisation (same pose, same noise seed) in
  which the head moves once more between the frontal and the lateral exposure (the lateral
  view sees the moved head), scored with the scanner's geometry.
* **Calibrated**: the X-rays scored with the scanner's geometry.

The detection threshold of a column (data set, physics, smoothing) is the ``--percentile``
(default 95th) percentile of the calibrated scores of its realisations; the detection rate of
a case is the fraction of its scores above that threshold. The first row of the detection
table scores *held-out* calibrated realisations (other poses and noise seeds) against the
same threshold: it is the false-alarm rate actually reached.

Physics columns: ``realistic`` (the preset as ``tomoprior dataset make --realism realistic``
makes it) and ``corrected`` (the same without scatter and with a monochromatic beam: what an
ideal scatter and beam-hardening correction would leave; noise, heel and blur kept).

Outputs (each written atomically into ``--out``): ``epipolar_detection.json`` (every score),
``epipolar_detection.md`` (tables) and ``epipolar_detection.png`` (score against error size).

Usage::

    python tools/epipolar_detection.py                 # full run: 841 CPU s with one torch thread
    python tools/epipolar_detection.py --floor         # where the calibrated floor comes from: 82 CPU s
    python tools/epipolar_detection.py --quick --out /tmp/ecc   # a small run, about 75 CPU s
"""

from __future__ import annotations

import argparse
import dataclasses
import io
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
from tomoprior._atomic import write_bytes_atomic, write_text_atomic  # noqa: E402
from tomoprior.data import Realism, synthesize  # noqa: E402
from tomoprior.data.realism import PoseJitter, posed_geometry  # noqa: E402
from tomoprior.validation import epipolar_consistency  # noqa: E402

#: Error sizes of the score-vs-size curves (frontal view), unit and values.
CURVE_SIZES = {
    "source_to_detector": ("mm", [5.0, 10.0, 20.0, 40.0]),
    "source_to_isocenter": ("mm", [5.0, 10.0, 20.0, 40.0]),
    "u0": ("mm", [1.0, 2.0, 4.0, 8.0]),
    "v0": ("mm", [0.5, 1.0, 2.0, 4.0]),
    "detector_rotation": ("deg", [0.25, 0.5, 1.0, 2.0]),
    "detector_tilt_u": ("deg", [0.5, 1.0, 2.0, 4.0]),
    "detector_tilt_v": ("deg", [1.0, 2.0, 4.0, 8.0]),
    "primary_angle": ("deg", [1.0, 2.0, 4.0, 8.0]),
    "secondary_angle": ("deg", [0.25, 0.5, 1.0, 2.0]),
}

#: The calibration tolerances of the paper setup: each error is applied with both signs.
PAPER_AMOUNTS = {"source_to_detector": 10.0, "u0": 2.0, "v0": 2.0, "detector_tilt_u_deg": 1.0,
                 "detector_tilt_v_deg": 1.0}


def default_cases() -> list[dict]:
    """The rows of the detection table (see the module docstring)."""
    cases = [{"label": "calibrated (held-out poses and noise)", "kind": "heldout"}]
    names = {"source_to_detector": ("source_to_detector", "mm"), "u0": ("u0", "mm"), "v0": ("v0", "mm"),
             "detector_tilt_u_deg": ("detector_tilt_u", "deg"), "detector_tilt_v_deg": ("detector_tilt_v", "deg")}
    for key, amount in PAPER_AMOUNTS.items():
        name, unit = names[key]
        cases.append({"label": f"frontal {name} +-{amount:g} {unit}", "kind": "view", "view": "frontal",
                      "errors": [{key: amount}, {key: -amount}]})
    cases.append({"label": "random combination of all five within these, both views", "kind": "combo",
                  "amounts": dict(PAPER_AMOUNTS), "draws": 2})
    cases.append({"label": "motion, uniform +-1 deg and +-1 mm per axis (preset)", "kind": "motion",
                  "rotation_deg": 1.0, "translation_mm": 1.0})
    cases.append({"label": "motion, uniform +-3 deg and +-3 mm per axis", "kind": "motion",
                  "rotation_deg": 3.0, "translation_mm": 3.0})
    for axis, what in enumerate(("x (left-right: nodding)", "y (front-back: rolling)", "z (vertical: turning)")):
        cases.append({"label": f"motion, 2 deg about {what}", "kind": "motion_fixed",
                      "moves": [{"rotation_deg": _axis(axis, s * 2.0), "translation_mm": [0.0, 0.0, 0.0]}
                                for s in (1.0, -1.0)]})
    for axis, what in enumerate(("x (left-right)", "y (front-back)", "z (vertical)")):
        cases.append({"label": f"motion, 2 mm along {what}", "kind": "motion_fixed",
                      "moves": [{"rotation_deg": [0.0, 0.0, 0.0], "translation_mm": _axis(axis, s * 2.0)}
                                for s in (1.0, -1.0)]})
    return cases


def _axis(i: int, value: float) -> list[float]:
    out = [0.0, 0.0, 0.0]
    out[i] = float(value)
    return out


@dataclasses.dataclass
class StudyConfig:
    """What to run.

    Attributes
    ----------
    skulls : list of (age_years, variant, seed)
        Procedural skull anatomies.
    skull_grid : int
        Voxels per axis of the skull volumes (``default_grid``: a 240 mm cube).
    cthead : bool
        Include the CThead real CT.
    binning : int
        Detector binning of the 1536^2 x 0.2 mm panel (6 -> 256^2 pixels of 1.2 mm). CThead
        (an adult head) is imaged on a 430 mm panel with the same number of pixels.
    realisations, heldout : int
        Per skull: calibrated realisations (threshold and every error) and held-out ones.
    ct_realisations, ct_heldout : int
        The same for CThead (one anatomy, so more realisations).
    physics : tuple of str
        ``"realistic"`` and/or ``"corrected"``.
    smoothings : tuple of float
        Gaussian blur (pixels) of the check; the first one is used for the curves.
    percentile : float
        Percentile of the calibrated scores used as the detection threshold.
    curve_sizes : dict
        As :data:`CURVE_SIZES`; empty: no curves.
    cases : list of dict
        As :func:`default_cases`.
    heel : bool
        Keep the preset's heel effect (off only to save its spectrum computation in tests: without
        noise a flat field removes it exactly).
    seed : int
    """

    skulls: list = dataclasses.field(default_factory=lambda: [(0.25, "normal", 0), (1.0, "sagittal", 1),
                                                              (2.0, "metopic", 2), (4.0, "normal", 3),
                                                              (6.0, "unicoronal", 4)])
    skull_grid: int = 128
    cthead: bool = True
    binning: int = 6
    realisations: int = 6
    heldout: int = 4
    ct_realisations: int = 10
    ct_heldout: int = 6
    physics: tuple = ("realistic", "corrected")
    smoothings: tuple = (1.5, 3.0)
    percentile: float = 95.0
    curve_sizes: dict = dataclasses.field(default_factory=lambda: dict(CURVE_SIZES))
    cases: list = dataclasses.field(default_factory=default_cases)
    heel: bool = True
    seed: int = 0

    @classmethod
    def quick(cls) -> StudyConfig:
        """A small run (about a minute): two 64^3 skulls and CThead at 128^2 pixels."""
        return cls(skulls=[(1.0, "normal", 0), (2.0, "sagittal", 1)], skull_grid=64, binning=12, realisations=3,
                   heldout=2, ct_realisations=3, ct_heldout=2,
                   curve_sizes={k: (u, v[::3]) for k, (u, v) in CURVE_SIZES.items()})


# -- data ----------------------------------------------------------------------------------------

def _anatomies(cfg: StudyConfig):
    """Yield ``(dataset, name, volume, grid, nominal geometry)``: ``volume`` a tensor on ``grid``."""
    from tomoprior.phantoms.skull import default_grid, make_skull

    base = tp.BiplanarGeometry.from_parameters(binning=cfg.binning)
    for age, variant, seed in cfg.skulls:
        grid = default_grid(shape=cfg.skull_grid)
        vol = make_skull(age_years=float(age), variant=variant, seed=int(seed)).rasterize(grid, supersample=2)
        yield "skulls", f"skull {age:g} y {variant} seed {seed}", vol, grid, base.with_grid(grid)
    if cfg.cthead:
        ct = tp.data.real_ct("cthead")
        vol = _without_head_holder(ct.data)
        rows, _ = base.parameters[0].detector_shape
        # an adult head does not fit the pediatric 307 mm panel: a 430 mm panel, same pixel count
        params = [p.replace(pixel_pitch=430.0 / rows) for p in base.parameters]
        geom = tp.BiplanarGeometry(ct.grid, params).aimed_at(ct.grid)
        yield "CThead", "cthead", vol, ct.grid, geom


def _without_head_holder(data: torch.Tensor) -> torch.Tensor:
    """CThead with the voxels outside the head set to air: the largest connected region above
    half the attenuation of water (holes filled, grown by 2 voxels). Removes most of the head
    holder behind the head, which would otherwise leave the lateral detector (truncation)."""
    from scipy import ndimage

    d = data.detach().cpu().numpy()
    labels, n = ndimage.label(d > 0.5 * 0.0206)  # water at 60 keV: 0.0206 /mm
    if n == 0:
        return data
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    keep = ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))
    keep = ndimage.binary_dilation(keep, iterations=2)
    return torch.from_numpy(np.where(keep, d, 0.0).astype(np.float32))


def _realism(physics: str, geometry, heel: bool = True) -> Realism:
    """The realism of a physics column on the scanner geometry ``geometry``, pose and motion off
    (this tool draws them) and the heel map precomputed (it belongs to the tube and detector)."""
    from tomoprior.physics import heel_map

    preset = Realism.preset("realistic")
    rs = preset.radiograph
    changes = {"pose": PoseJitter(), "motion": PoseJitter()}
    if physics == "corrected":
        rs = rs.replace(scatter=None)
        if getattr(preset, "materials", None) is not None:
            changes["materials"] = None
    elif physics != "realistic":
        raise ValueError(f"physics must be 'realistic' or 'corrected', got {physics!r}")
    if not heel:
        rs = rs.replace(heel=None)
    heel = heel_map(geometry, rs) if rs.heel not in (None, False) else None
    if heel is not None:
        rs = rs.replace(heel=heel)
    return dataclasses.replace(preset, radiograph=rs, **changes)


def _physics_settings(physics: str) -> dict:
    preset = Realism.preset("realistic")
    d = preset.to_dict()
    d["pose"] = dataclasses.asdict(preset.pose)
    d["motion"] = "drawn by this tool per case"
    if physics == "corrected":
        d["radiograph"]["scatter"] = None
        if "materials" in d:
            d["materials"] = None
    return d


def _seed(*keys) -> int:
    return int(np.random.SeedSequence([abs(int(k)) for k in keys]).generate_state(1)[0])


def _score(images, geometry, smoothing: float) -> float:
    with torch.no_grad():
        return float(epipolar_consistency(images, geometry, smoothing=smoothing).relative)


def _images(vol, grid, geometry, realism, seed: int) -> torch.Tensor:
    with torch.no_grad():
        return synthesize(vol, geometry, grid=grid, realism=realism, seed=seed).xrays


# -- the study -----------------------------------------------------------------------------------

def run_study(cfg: StudyConfig, log=None) -> dict:
    """Run the study; returns plain data (the JSON written by :func:`write_outputs`).

    Keys: ``config``, ``columns`` (one per data set x physics x smoothing: ``threshold``,
    ``calibrated`` scores, ``detection`` per case label: ``scores``, ``rate``, ``n``),
    ``curves`` (data set x physics -> parameter -> list of ``{size, scores}``, size 0 the
    calibrated scores, smoothing ``smoothings[0]``), ``physics`` (settings), ``cpu_seconds``.
    """
    log = log or (lambda msg: None)
    t_cpu = time.process_time()
    if not cfg.smoothings:
        raise ValueError("smoothings must hold at least one blur width in pixels")
    if not (0 < cfg.percentile < 100):
        raise ValueError(f"percentile must be in (0, 100), got {cfg.percentile}")
    pose_size = Realism.preset("realistic").pose
    cols: dict = {}
    curves: dict = {}

    def col(ds, ph, sm):
        return cols.setdefault((ds, ph, sm), {"calibrated": [], "heldout": [], "cases": {}})

    for ia, (ds, name, vol, grid, nominal) in enumerate(_anatomies(cfg)):
        n_real = cfg.ct_realisations if ds == "CThead" else cfg.realisations
        n_held = cfg.ct_heldout if ds == "CThead" else cfg.heldout
        for ph in cfg.physics:
            realism = _realism(ph, nominal, cfg.heel)
            cur = curves.setdefault((ds, ph), {})
            for r in range(n_real + n_held):
                rng = np.random.default_rng(_seed(cfg.seed, ia, r, 1))
                pose = pose_size.draw(rng)
                noise_seed = _seed(cfg.seed, ia, r, 2)
                true = posed_geometry(nominal, pose)
                images = _images(vol, grid, true, realism, noise_seed)
                if r >= n_real:  # held-out: only the calibrated score
                    for sm in cfg.smoothings:
                        col(ds, ph, sm)["heldout"].append(_score(images, nominal, sm))
                    continue
                for sm in cfg.smoothings:
                    col(ds, ph, sm)["calibrated"].append(_score(images, nominal, sm))
                sm0 = cfg.smoothings[0]
                for param, (unit, sizes) in cfg.curve_sizes.items():
                    key = param + ("_deg" if unit == "deg" else "")
                    rows = cur.setdefault(param, {"unit": unit, "sizes": [0.0, *sizes],
                                                  "scores": [[] for _ in range(len(sizes) + 1)]})
                    rows["scores"][0].append(col(ds, ph, sm0)["calibrated"][-1])
                    for j, size in enumerate(sizes):
                        rows["scores"][j + 1].append(_score(images, nominal.perturbed({"frontal": {key: size}}), sm0))
                for ic, case in enumerate(cfg.cases):
                    scored = _case_scores(case, cfg, vol, grid, nominal, realism, images, pose, noise_seed,
                                          _seed(cfg.seed, ia, r, 3, ic))
                    for sm, vals in scored.items():
                        col(ds, ph, sm)["cases"].setdefault(case["label"], []).extend(vals)
            log(f"{name}, {ph}: {n_real} + {n_held} realisations, {time.process_time() - t_cpu:.0f} CPU s so far")
    out_cols = []
    for (ds, ph, sm), c in cols.items():
        thr = float(np.percentile(c["calibrated"], cfg.percentile))
        det = {}
        for case in cfg.cases:
            vals = c["heldout"] if case["kind"] == "heldout" else c["cases"].get(case["label"], [])
            arr = np.asarray(vals, dtype=float)
            # a score that cannot be computed (no valid plane) is not a detection
            det[case["label"]] = {"scores": [float(v) for v in arr], "n": int(arr.size),
                                  "rate": float(np.mean(np.nan_to_num(arr, nan=-np.inf) > thr)) if arr.size else
                                  float("nan"),
                                  "median": float(np.nanmedian(arr)) if arr.size else float("nan")}
        out_cols.append({"dataset": ds, "physics": ph, "smoothing": sm, "threshold": thr,
                         "calibrated": [float(v) for v in c["calibrated"]],
                         "calibrated_median": float(np.median(c["calibrated"])), "detection": det})
    out_curves = [{"dataset": ds, "physics": ph, "smoothing": cfg.smoothings[0], "parameters": v}
                  for (ds, ph), v in curves.items()]
    cfg_d = dataclasses.asdict(cfg)
    return {"config": cfg_d, "columns": out_cols, "curves": out_curves,
            "physics": {ph: _physics_settings(ph) for ph in cfg.physics},
            "cpu_seconds": time.process_time() - t_cpu, "torch_threads": torch.get_num_threads()}


def _case_scores(case, cfg, vol, grid, nominal, realism, images, pose, noise_seed, case_seed) -> dict:
    """Scores of one case on one realisation, per smoothing (a list each)."""
    kind = case["kind"]
    out = {sm: [] for sm in cfg.smoothings}
    if kind == "heldout":
        return out
    if kind in ("view", "combo"):
        if kind == "view":
            geoms = [nominal.perturbed({case["view"]: e}) for e in case["errors"]]
        else:
            rng = np.random.default_rng(case_seed)
            geoms = []
            for _ in range(int(case.get("draws", 1))):
                per_view = [{k: float(rng.uniform(-a, a)) for k, a in case["amounts"].items()}
                            for _ in nominal.parameters]
                geoms.append(nominal.perturbed(per_view))
        for g in geoms:
            for sm in cfg.smoothings:
                out[sm].append(_score(images, g, sm))
        return out
    if kind == "motion":
        rng = np.random.default_rng(case_seed)
        moves = [PoseJitter(case["rotation_deg"], case["translation_mm"]).draw(rng)]
    elif kind == "motion_fixed":
        moves = case["moves"]
    else:
        raise ValueError(f"unknown case kind {kind!r}; use heldout, view, combo, motion or motion_fixed")
    for m in moves:
        moved = _images(vol, grid, posed_geometry(nominal, pose, m), realism, noise_seed)
        for sm in cfg.smoothings:
            out[sm].append(_score(moved, nominal, sm))
    return out


# -- where the calibrated floor comes from ------------------------------------------------------

#: Effects of the realistic preset one at a time, and all but one (``floor_ablation``).
FLOOR_VARIANTS = ("line integrals (no physics)", "noise", "scatter", "polychromatic beam", "heel effect",
                  "focal spot and detector blur", "all but scatter", "all but polychromatic", "realistic (all)")


def _floor_realism(variant: str, geometry) -> Realism | None:
    """The realism of one :data:`FLOOR_VARIANTS` entry (None: noise-free line integrals, or the
    preset has no polychromatic beam for the variants that need one)."""
    from tomoprior.physics import heel_map

    preset = Realism.preset("realistic")
    rs = preset.radiograph
    mats = getattr(preset, "materials", None)
    off = {"noise": False, "scatter": None, "heel": None, "focal_spot_mm": 0.0, "detector_blur_px": 0.0}
    one = {"noise": {"noise": True}, "scatter": {"scatter": rs.scatter}, "heel effect": {"heel": rs.heel},
           "focal spot and detector blur": {"focal_spot_mm": rs.focal_spot_mm,
                                            "detector_blur_px": rs.detector_blur_px}}
    if variant == "line integrals (no physics)":
        return None
    if variant in one:
        rs, m = rs.replace(**{**off, **one[variant]}), None
    elif variant == "polychromatic beam":
        rs, m = rs.replace(**off), mats
    elif variant == "all but scatter":
        rs, m = rs.replace(scatter=None), mats
    elif variant == "all but polychromatic":
        m = None
    elif variant == "realistic (all)":
        m = mats
    else:
        raise ValueError(f"unknown floor variant {variant!r}; use one of {FLOOR_VARIANTS}")
    if variant in ("polychromatic beam", "all but scatter") and mats is None:
        return None
    if rs.heel not in (None, False):
        rs = rs.replace(heel=heel_map(geometry, rs))
    changes = {"pose": PoseJitter(), "motion": PoseJitter()}
    if hasattr(preset, "materials"):
        changes["materials"] = m
    return dataclasses.replace(preset, radiograph=rs, **changes)


def floor_ablation(cfg: StudyConfig, realisations: int = 2, log=None) -> dict:
    """Calibrated scores of each :data:`FLOOR_VARIANTS` entry, on every anatomy of ``cfg`` and
    its first ``realisations`` poses and noise seeds (the same as :func:`run_study`'s)."""
    log = log or (lambda msg: None)
    t_cpu = time.process_time()
    pose_size = Realism.preset("realistic").pose
    has_poly = getattr(Realism.preset("realistic"), "materials", None) is not None
    rows = []
    for ia, (ds, name, vol, grid, nominal) in enumerate(_anatomies(cfg)):
        for variant in FLOOR_VARIANTS:
            if not has_poly and variant in ("polychromatic beam", "all but scatter"):
                continue
            realism = _floor_realism(variant, nominal)
            scores = {sm: [] for sm in cfg.smoothings}
            for r in range(realisations):
                pose = pose_size.draw(np.random.default_rng(_seed(cfg.seed, ia, r, 1)))
                images = _images(vol, grid, posed_geometry(nominal, pose), realism, _seed(cfg.seed, ia, r, 2))
                for sm in cfg.smoothings:
                    scores[sm].append(_score(images, nominal, sm))
            for sm, v in scores.items():
                rows.append({"dataset": ds, "anatomy": name, "variant": variant, "smoothing": sm, "scores": v})
        log(f"floor: {name} done, {time.process_time() - t_cpu:.0f} CPU s so far")
    return {"config": dataclasses.asdict(cfg), "realisations": realisations, "rows": rows,
            "cpu_seconds": time.process_time() - t_cpu, "torch_threads": torch.get_num_threads()}


def markdown_floor(result: dict) -> str:
    """Median calibrated score per effect, data set and smoothing [smallest-largest]."""
    keys = sorted({(r["dataset"], r["smoothing"]) for r in result["rows"]},
                  key=lambda k: ({"skulls": 0, "CThead": 1}.get(k[0], 9), k[1]))
    variants = [v for v in FLOOR_VARIANTS if any(r["variant"] == v for r in result["rows"])]
    lines = [f"Calibrated relative score per effect (median [smallest-largest] over anatomies and "
             f"{result['realisations']} poses / noise seeds each)", "",
             "| effect | " + " | ".join(f"{d}, {s:g} px" for d, s in keys) + " |", "| --- |" + " --- |" * len(keys)]
    for v in variants:
        cells = []
        for d, s in keys:
            vals = [x for r in result["rows"] if (r["dataset"], r["smoothing"], r["variant"]) == (d, s, v)
                    for x in r["scores"]]
            cells.append(f"{np.median(vals):.3f} [{min(vals):.3f}-{max(vals):.3f}]")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"CPU time {result['cpu_seconds']:.0f} s ({result['torch_threads']} torch thread(s)).")
    return "\n".join(lines) + "\n"


# -- outputs -------------------------------------------------------------------------------------

def _columns_sorted(result: dict) -> list[dict]:
    order = {"skulls": 0, "CThead": 1}
    ph_order = {"realistic": 0, "corrected": 1}
    return sorted(result["columns"], key=lambda c: (order.get(c["dataset"], 9), ph_order.get(c["physics"], 9),
                                                     c["smoothing"]))


def markdown(result: dict) -> str:
    """The detection table, the thresholds and the curves as markdown."""
    cfg = result["config"]
    cols = _columns_sorted(result)
    head = [f"{c['dataset']}, {c['physics']}, {c['smoothing']:g} px" for c in cols]
    lines = [f"Detection rate at the {cfg['percentile']:g}th percentile of the calibrated scores "
             "(fraction of cases above it; n per column in brackets)", "",
             "| case | " + " | ".join(head) + " |", "| --- |" + " --- |" * len(cols)]
    lines.append("| threshold (relative RMS residual) | " + " | ".join(f"{c['threshold']:.3f}" for c in cols) + " |")
    lines.append("| calibrated median | " + " | ".join(f"{c['calibrated_median']:.3f}" for c in cols) + " |")
    for case in cfg["cases"]:
        cells = []
        for c in cols:
            d = c["detection"][case["label"]]
            cells.append(f"{100 * d['rate']:.0f} % ({d['n']})" if d["n"] else "-")
        lines.append(f"| {case['label']} | " + " | ".join(cells) + " |")
    lines += ["", f"Median relative score per error of the frontal view (smoothing {cfg['smoothings'][0]:g} px; "
              "10th-90th percentile in brackets)", ""]
    for cur in result["curves"]:
        lines += [f"{cur['dataset']}, {cur['physics']}:", "", "| parameter | " +
                  " | ".join(["0"] + [f"step {i}" for i in range(1, 1 + max(len(p['sizes']) - 1
                                                                                for p in cur['parameters'].values()))])
                  + " |", "| --- |" + " --- |" * (1 + max(len(p["sizes"]) - 1 for p in cur["parameters"].values()))]
        for param, p in cur["parameters"].items():
            cells = []
            for size, sc in zip(p["sizes"], p["scores"]):
                lo, med, hi = np.percentile(sc, [10, 50, 90])
                cells.append(f"{size:g} {p['unit']}: {med:.3f} [{lo:.3f}-{hi:.3f}]" if size else
                             f"{med:.3f} [{lo:.3f}-{hi:.3f}]")
            lines.append(f"| {param} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append(f"CPU time {result['cpu_seconds']:.0f} s ({result['torch_threads']} torch thread(s)).")
    return "\n".join(lines) + "\n"


def figure_png(result: dict) -> bytes:
    """Score against error size per parameter (median and 10th-90th percentile band), with the
    thresholds of the first smoothing as dashed lines. PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sm0 = result["config"]["smoothings"][0]
    thr = {(c["dataset"], c["physics"]): c["threshold"] for c in result["columns"] if c["smoothing"] == sm0}
    params = list(result["curves"][0]["parameters"]) if result["curves"] else []
    ncol = 3
    nrow = max(1, math.ceil(len(params) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(11, 2.9 * nrow + 0.6), squeeze=False)
    style = {("skulls", "realistic"): ("C0", "-"), ("CThead", "realistic"): ("C3", "-"),
             ("skulls", "corrected"): ("C0", ":"), ("CThead", "corrected"): ("C3", ":")}
    for ax, param in zip(axes.flat, params):
        for cur in result["curves"]:
            key = (cur["dataset"], cur["physics"])
            color, ls = style.get(key, ("k", "-"))
            p = cur["parameters"][param]
            x = np.asarray(p["sizes"])
            q = np.array([np.percentile(s, [10, 50, 90]) for s in p["scores"]])
            ax.plot(x, q[:, 1], marker="o", ms=3, color=color, ls=ls, label=f"{key[0]}, {key[1]}")
            ax.fill_between(x, q[:, 0], q[:, 2], color=color, alpha=0.12 if ls == "-" else 0.06)
            if key in thr:
                ax.axhline(thr[key], color=color, ls="--", lw=0.8)
        ax.set_yscale("log")
        ax.set_title(f"frontal {param}", fontsize=9)
        ax.set_xlabel(f"error ({cur['parameters'][param]['unit']})", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[:, 0]:
        ax.set_ylabel("relative RMS residual", fontsize=8)
    for ax in list(axes.flat)[len(params):]:
        ax.axis("off")
    if params:
        axes.flat[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"Epipolar score vs one error of the frontal view: median and 10-90 % band over anatomies, "
                 f"poses and noise; dashed: {result['config']['percentile']:g}th percentile of the calibrated "
                 f"scores (smoothing {sm0:g} px)", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def write_outputs(result: dict, out: Path, figure: bool = True) -> list[Path]:
    """Write the JSON, the markdown and (``figure``) the PNG atomically into folder ``out``."""
    out = Path(out)
    if not out.is_dir():
        raise ValueError(f"--out {out} is not a folder; create it first")
    paths = [out / "epipolar_detection.json", out / "epipolar_detection.md"]
    write_text_atomic(paths[0], json.dumps(result, indent=1, default=str) + "\n")
    write_text_atomic(paths[1], markdown(result))
    if figure:
        paths.append(out / "epipolar_detection.png")
        write_bytes_atomic(paths[2], figure_png(result))
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a small run (2 skulls at 64^3, 128^2 pixels, 3 poses)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "figures",
                    help="output folder for epipolar_detection.{json,md,png} (default docs/figures)")
    ap.add_argument("--percentile", type=float, default=95.0,
                    help="percentile of the calibrated scores used as threshold (default 95)")
    ap.add_argument("--no-cthead", action="store_true", help="skip the CThead real CT")
    ap.add_argument("--floor", action="store_true",
                    help="instead of the study: the calibrated score with each effect of the realistic preset alone "
                         "and all but one (writes epipolar_detection_floor.{json,md})")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads < 1:
        ap.error(f"--threads must be >= 1, got {args.threads}")
    if not (0 < args.percentile < 100):
        ap.error(f"--percentile must be in (0, 100), got {args.percentile}")
    if not args.out.is_dir():
        ap.error(f"--out {args.out} is not an existing folder; create it first")
    torch.set_num_threads(args.threads)
    cfg = StudyConfig.quick() if args.quick else StudyConfig()
    cfg.percentile, cfg.seed, cfg.cthead = args.percentile, args.seed, not args.no_cthead

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    command = "python tools/epipolar_detection.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.floor:
        result = floor_ablation(cfg, log=log)
        result["command"] = command
        text = markdown_floor(result)
        for name, content in (("epipolar_detection_floor.json", json.dumps(result, indent=1) + "\n"),
                              ("epipolar_detection_floor.md", text)):
            write_text_atomic(args.out / name, content)
            print(f"wrote {args.out / name}")
        print(text)
        return 0
    result = run_study(cfg, log=log)
    result["command"] = command
    for p in write_outputs(result, args.out):
        print(f"wrote {p}")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
