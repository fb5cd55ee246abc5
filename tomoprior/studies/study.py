"""A resumable, reproducible runner of the miscalibration study: does a refiner (and the
back-projection prior it is built on) survive calibration error?

A *plan* (YAML, :func:`load_plan`) names one synthetic dataset, the refiners with their
training settings and the *arms* of the study. :func:`run_study` turns it into steps (make the
data and its variants, train every refiner on the data each arm needs, evaluate every trained
run on every arm), runs the steps that are not done yet, and :func:`study_report` compares
every arm with the exact-geometry arm skull by skull (paired differences with seeded bootstrap
95 % confidence intervals, a table and a figure against the geometry error in pixels).

Arm kinds (``kind`` of an entry of ``arms``):

==============  ==========================================================  ==================
kind            test X-rays / geometry handed to the refiner                refiner trained on
==============  ==========================================================  ==================
exact           nominal geometry / the same geometry                        the base data
miscalibrated   nominal perturbed by ``perturb`` x ``scale`` (per skull     the base data
                and view, uniform +-) / the nominal geometry
calibrated      as miscalibrated / the geometry a calibration recovers      the base data
                (``bead``: the bead cage fitted from simulated bead images,
                ``exact``, ``residual``: true + a bead calibration's error)
augmented       as miscalibrated / the nominal geometry                     X-rays perturbed by
                                                                            ``train_perturb`` x
                                                                            ``train_scale``, told
                                                                            the nominal geometry
consistent      made with G' (``mismatch``: fixed parameter errors and/or   X-rays made with G',
                a pixel-pitch scale) / the nominal G                        told G
pose            head pose and motion between the exposures / the scanner's  the base data
                nominal geometry (which knows nothing of the pose)
==============  ==========================================================  ==================

Every variant of the data is a *re-exposure* of the base file's volumes (no skull is drawn
twice): same volumes, same per-skull seed (so the noise of the acquisition physics and the
directions of the perturbation draws are shared between arms: the arm at 5x is the arm at 1x
with every error five times larger), only the geometry or the pose changes. Test variants hold
the base file's test skulls in the same order, so the rows of every arm pair up.

Layout of the output folder ``DIR``::

    plan.yaml, plan.json      the plan as given and as validated (with its SHA-256)
    data/*.h5                 base dataset and its variants
    runs/<refiner>/<trainset>/seed<k>/   training run folders (last.pt, best.pt, metrics.jsonl)
    eval/<refiner>/seed<k>/<arm>.json    EvaluationResult of one arm
    done/<step>.json          done-markers, with each step's budget (wall and CPU s, steps, samples/s)
    report/report.md, report.json, figure.png

Every file is written atomically and a step's done-marker only after its outputs, so a
killed run loses at most the step it was in; training resumes from its last checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from .._atomic import write_text_atomic

__all__ = ["ARM_KINDS", "PlanError", "archive_study", "bootstrap_ci", "load_plan", "restore_study", "run_study",
           "study_report", "validate_plan"]

#: Arm kinds of a plan (see the module docstring).
ARM_KINDS = ("exact", "miscalibrated", "calibrated", "augmented", "consistent", "pose")
#: Calibration modes of a ``calibrated`` arm.
CALIBRATIONS = ("bead", "exact", "residual")
#: Metrics of the report table and the figure by default.
REPORT_METRICS = ("psnr_x2ctgan", "ssim_x2ctgan", "mae_hu", "dice_bone", "assd_mm", "proj_rel_l2")
#: Metrics of the report's figure panels and its run-to-run seed table (those in ``report.metrics``).
FIGURE_METRICS = ("psnr_x2ctgan", "dice_bone", "assd_mm")
#: The paper's stated miscalibration (uniform +- per view), the default ``perturb``.
_MISMATCH_KEYS = ("pixel_scale", "source_to_detector", "source_to_isocenter", "u0", "v0", "detector_tilt_u_deg",
                  "detector_tilt_v_deg", "detector_rotation_deg")
_DEFAULT_POSE = {"rotation_deg": 3.0, "translation_mm": 5.0}
_DEFAULT_MOTION = {"rotation_deg": 1.0, "translation_mm": 1.0}


class PlanError(ValueError):
    """A plan that cannot be run; the message names the file, the key and the fix."""


# --------------------------------------------------------------------------------------------
# the plan
def _fail(where: str, msg: str) -> PlanError:
    return PlanError(f"{where}: {msg}")


def _mapping(value, where: str, known: tuple, required: tuple = ()) -> dict:
    if not isinstance(value, Mapping):
        raise _fail(where, f"must be a mapping with keys {list(known)}, got {value!r}")
    unknown = sorted(str(k) for k in value if k not in known)
    if unknown:
        raise _fail(where, f"unknown key(s) {unknown}; known keys: {list(known)}")
    missing = [k for k in required if k not in value]
    if missing:
        raise _fail(where, f"missing key(s) {missing}")
    return dict(value)


def _int(value, where: str, lo: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise _fail(where, f"must be an integer >= {lo}, got {value!r}")
    return int(value)


def _num(value, where: str, *, positive: bool = False, nonneg: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(where, f"must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise _fail(where, f"must be > 0, got {value!r}")
    if nonneg and value < 0:
        raise _fail(where, f"must be >= 0, got {value!r}")
    return float(value)


def _perturb(value, where: str) -> dict:
    """A GeometryPerturbation as a plain dict: ``"paper"`` or a mapping of its fields (short
    keys sdd, offset, tilt, rotation, sod accepted)."""
    from ..data import GeometryPerturbation
    from ..data.drr import PERTURBATION_ALIASES

    if value == "paper":  # PAPER_MISCALIBRATION as a plan's plain dict of its non-zero fields
        from .miscalibration import PAPER_MISCALIBRATION

        return {k: v for k, v in dataclasses.asdict(PAPER_MISCALIBRATION).items() if v}
    alias = PERTURBATION_ALIASES
    fields = tuple(f.name for f in dataclasses.fields(GeometryPerturbation))
    d = _mapping(value, where, (*fields, *alias))
    out = {alias.get(k, k): _num(v, f"{where}.{k}", nonneg=True) for k, v in d.items()}
    if not any(out.values()):
        raise _fail(where, "is all zero; give at least one non-zero error (or 'paper')")
    return out


def _jitter(value, where: str) -> dict:
    d = _mapping(value, where, ("rotation_deg", "translation_mm"))
    return {k: _num(d.get(k, 0.0), f"{where}.{k}", nonneg=True) for k in ("rotation_deg", "translation_mm")}


def _realism(value, where: str):
    """The plan's realism: a preset name or a mapping of :meth:`Realism.from_dict`."""
    from ..data import Realism

    try:
        if isinstance(value, str):
            return Realism.preset(value)
        if isinstance(value, Mapping):
            return Realism.from_dict(value)
    except (ValueError, TypeError) as exc:
        raise _fail(where, str(exc)) from exc
    raise _fail(where, f"must be a preset name ('none', 'realistic') or a mapping of realism settings, got {value!r}")


def _check_mismatch(m: dict, where: str) -> dict:
    d = _mapping(m, where, _MISMATCH_KEYS)
    out = {k: _num(v, f"{where}.{k}", positive=(k == "pixel_scale")) for k, v in d.items()}
    if not out or all((v == 1.0 if k == "pixel_scale" else v == 0.0) for k, v in out.items()):
        raise _fail(where, f"gives no mismatch; set e.g. pixel_scale: 0.83 or source_to_detector: 20 "
                           f"(keys {list(_MISMATCH_KEYS)})")
    return out


def validate_plan(raw, source: str = "plan") -> dict:
    """Check a plan (the parsed YAML) and return it normalised (every default filled in).

    Raises
    ------
    PlanError
        A missing or unknown key, a value of the wrong type or range; the message names the
        key as a dotted path (``arms.paper-5x.scale``) and what it accepts.
    """
    from ..data.synthetic import available_variants
    from ..refiners import available_refiners

    top = _mapping(raw, source, ("name", "seed", "device", "data", "refiners", "evaluation", "arms", "report"),
                   ("data", "refiners", "arms"))
    plan: dict = {"name": str(top.get("name", "study")), "seed": _int(top.get("seed", 0), f"{source}: seed"),
                  "device": str(top.get("device", "cpu"))}
    if plan["device"] not in ("cpu", "auto") and not plan["device"].startswith("cuda"):
        raise _fail(f"{source}: device", f"must be 'cpu', 'auto' or 'cuda[:N]', got {plan['device']!r}")

    w = f"{source}: data"
    d = _mapping(top["data"], w, ("n", "grid", "binning", "realism", "seed", "split", "variants", "phantom"),
                 ("n", "grid"))
    data = {"n": _int(d["n"], f"{w}.n", 3), "grid": _int(d["grid"], f"{w}.grid", 8),
            "binning": _int(d.get("binning", 12), f"{w}.binning", 1), "seed": _int(d.get("seed", 0), f"{w}.seed"),
            "phantom": str(d.get("phantom", "skull"))}
    from ..data.synthetic import PHANTOMS

    if data["phantom"] not in PHANTOMS:
        raise _fail(f"{w}.phantom", f"must be one of {list(PHANTOMS)}, got {data['phantom']!r}")
    if 1536 % data["binning"]:
        raise _fail(f"{w}.binning", f"must divide the 1536-pixel detector (e.g. 12, 24, 48, 96), got {data['binning']}")
    split = d.get("split", [0.6, 0.2, 0.2])
    if not (isinstance(split, (list, tuple)) and len(split) == 3):
        raise _fail(f"{w}.split", f"must be three fractions [train, val, test], got {split!r}")
    data["split"] = [_num(x, f"{w}.split[{i}]", positive=True) for i, x in enumerate(split)]
    variants = d.get("variants")
    allowed = available_variants(data["phantom"])
    if variants is not None:
        if not isinstance(variants, (list, tuple)) or not variants or any(v not in allowed for v in variants):
            raise _fail(f"{w}.variants", f"must be a non-empty list of {list(allowed)}, got {variants!r}")
        variants = [str(v) for v in variants]
    data["variants"] = variants
    realism_raw = d.get("realism", "none")
    realism = _realism(realism_raw, f"{w}.realism")
    data["realism"] = realism_raw if isinstance(realism_raw, str) else dict(realism_raw)
    plan["data"] = data

    plan["refiners"] = _validate_refiners(top["refiners"], f"{source}: refiners", available_refiners())

    w = f"{source}: evaluation"
    e = _mapping(top.get("evaluation", {}) or {}, w, ("fit_bone_level", "bone_fit_samples", "batch", "bead_pixel_mm"))
    plan["evaluation"] = {"fit_bone_level": bool(e.get("fit_bone_level", True)),
                          "bone_fit_samples": _int(e.get("bone_fit_samples", 8), f"{w}.bone_fit_samples", 1),
                          "batch": _int(e.get("batch", 2), f"{w}.batch", 1),
                          "bead_pixel_mm": _num(e.get("bead_pixel_mm", 0.8), f"{w}.bead_pixel_mm", positive=True)}

    plan["arms"] = _validate_arms(top["arms"], f"{source}: arms", realism)
    exact = [n for n, a in plan["arms"].items() if a["kind"] == "exact"]
    for label, r in plan["refiners"].items():
        if "arms" not in r:
            continue
        w = f"{source}: refiners.{label}.arms"
        bad = [a for a in r["arms"] if a not in plan["arms"]]
        if bad:
            raise _fail(w, f"unknown arm(s) {bad}; the plan's arms: {list(plan['arms'])}")
        if not set(exact) <= set(r["arms"]):
            raise _fail(w, f"must include the exact arm {exact[0]!r}: every arm is compared with it")

    w = f"{source}: report"
    r = _mapping(top.get("report", {}) or {}, w, ("bootstrap", "metrics", "level"))
    from .evaluation import METRICS

    metrics = r.get("metrics", list(REPORT_METRICS))
    if not isinstance(metrics, (list, tuple)) or not metrics or any(m not in METRICS for m in metrics):
        raise _fail(f"{w}.metrics", f"must be a non-empty list of {list(METRICS)}, got {metrics!r}")
    level = _num(r.get("level", 0.95), f"{w}.level", positive=True)
    if level >= 1:
        raise _fail(f"{w}.level", f"must be a fraction in (0, 1), e.g. 0.95, got {level}")
    plan["report"] = {"bootstrap": _int(r.get("bootstrap", 2000), f"{w}.bootstrap", 100), "metrics": list(metrics),
                      "level": level}
    return plan


def _validate_refiners(raw, where: str, available) -> dict:
    if not isinstance(raw, Mapping) or not raw:
        raise _fail(where, "must map a label to a refiner, e.g. {bp-prior: {refiner: bp-prior}}")
    out = {}
    for label, spec in raw.items():
        w = f"{where}.{label}"
        if not isinstance(label, str) or not label.replace("-", "").replace("_", "").isalnum():
            raise _fail(where, f"refiner label {label!r} must be letters, digits, '-' or '_' (it names folders)")
        s = _mapping(spec if spec is not None else {}, w, ("refiner", "preset", "width", "config", "train", "arms"))
        name = str(s.get("refiner", label))
        if name not in available:
            raise _fail(f"{w}.refiner", f"unknown refiner {name!r}; available: {list(available)}")
        config = s.get("config", {}) or {}
        if not isinstance(config, Mapping):
            raise _fail(f"{w}.config", f"must be a mapping of the refiner's config fields, got {config!r}")
        config = dict(config)
        if "preset" in s:
            config["preset"] = str(s["preset"])
        if "width" in s:  # fields set in config keep their value
            config = {**_width_overrides(name, config.get("preset"), _int(s["width"], f"{w}.width", 1), f"{w}.width"),
                      **config}
        t = _mapping(s.get("train", {}) or {}, f"{w}.train", ("steps", "batch", "seeds", "lr", "checkpoint_every",
                                                              "select"))
        seeds = t.get("seeds", [0])
        if not isinstance(seeds, (list, tuple)) or not seeds:
            raise _fail(f"{w}.train.seeds", f"must be a non-empty list of integers, got {seeds!r}")
        seeds = [_int(x, f"{w}.train.seeds[{i}]") for i, x in enumerate(seeds)]
        if len(set(seeds)) != len(seeds):
            raise _fail(f"{w}.train.seeds", f"has repeated seeds {seeds}")
        train = {"steps": _int(t.get("steps", 1), f"{w}.train.steps", 1),
                 "batch": _int(t.get("batch", 1), f"{w}.train.batch", 1), "seeds": seeds,
                 "lr": None if t.get("lr") is None else _num(t["lr"], f"{w}.train.lr", positive=True),
                 "checkpoint_every": _int(t.get("checkpoint_every", 50), f"{w}.train.checkpoint_every", 0),
                 "select": str(t.get("select", "dice"))}
        out[label] = {"refiner": name, "config": config, "train": train}
        if "arms" in s:  # only when given, so that plans without it keep their hash
            arms = s["arms"]
            if not isinstance(arms, (list, tuple)) or not arms or not all(isinstance(a, str) for a in arms) \
                    or len(set(arms)) != len(arms):
                raise _fail(f"{w}.arms", f"must be a non-empty list of distinct arm names, got {arms!r}")
            out[label]["arms"] = list(arms)
    _check_configs(out, where)
    return out


def _check_configs(refiners: dict, where: str) -> None:
    """Build every refiner once (tiny volume shape untouched) so a bad config field fails now."""
    from ..refiners.registry import get_class

    for label, r in refiners.items():
        cls = get_class(r["refiner"])
        fields = {f.name for f in dataclasses.fields(cls.config_class)}
        bad = sorted(k for k in r["config"] if k not in fields and k != "preset")
        if bad:
            raise _fail(f"{where}.{label}.config",
                        f"unknown field(s) {bad} of {r['refiner']}; fields: {sorted(fields)}")


def _width_overrides(refiner: str, preset, width: int, where: str) -> dict:
    """Config overrides that scale every channel width of a preset so that its stem has
    ``width`` channels (PSCT-Net: ``stem3d_width``, ``enc3d_widths``, ``stem2d_width``, ...)."""
    from ..refiners.registry import get_class

    cls = get_class(refiner).config_class
    if "stem3d_width" not in {f.name for f in dataclasses.fields(cls)} or not hasattr(cls, "preset"):
        raise _fail(where, f"width is for refiners with preset channel widths (psctnet); {refiner!r} has none; "
                           "remove width or set its config fields")
    try:
        base = cls.preset(preset or "tiny")
    except ValueError as exc:
        raise _fail(where, str(exc)) from exc
    f = width / base.stem3d_width
    out = {}
    for fld in dataclasses.fields(cls):
        if not fld.name.endswith(("_width", "_widths")):
            continue
        v = getattr(base, fld.name)
        if isinstance(v, int) and not isinstance(v, bool):
            out[fld.name] = max(1, round(v * f))
        elif isinstance(v, tuple) and v and all(isinstance(x, int) for x in v):
            out[fld.name] = [max(1, round(x * f)) for x in v]
    return out


def _validate_arms(raw, where: str, realism) -> dict:
    if not isinstance(raw, Mapping) or not raw:
        raise _fail(where, f"must map arm names to arms with a kind among {list(ARM_KINDS)}")
    out = {}
    keys = ("kind", "perturb", "scale", "calibration", "train_perturb", "train_scale", "mismatch", "pose", "motion")
    for name, spec in raw.items():
        w = f"{where}.{name}"
        if not isinstance(name, str) or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise _fail(where, f"arm name {name!r} must be letters, digits, '-', '_' or '.' (it names files)")
        s = _mapping(spec, w, keys, ("kind",))
        kind = s["kind"]
        if kind not in ARM_KINDS:
            raise _fail(f"{w}.kind", f"must be one of {list(ARM_KINDS)}, got {kind!r}")
        allowed = {"exact": (), "miscalibrated": ("perturb", "scale"),
                   "calibrated": ("perturb", "scale", "calibration"),
                   "augmented": ("perturb", "scale", "train_perturb", "train_scale"), "consistent": ("mismatch",),
                   "pose": ("pose", "motion")}[kind]
        extra = sorted(k for k in s if k != "kind" and k not in allowed)
        if extra:
            raise _fail(w, f"key(s) {extra} do not apply to a {kind!r} arm (it takes {list(allowed)})")
        arm: dict = {"kind": kind}
        if "perturb" in allowed:
            scale = _num(s.get("scale", 1.0), f"{w}.scale", positive=True)
            arm["perturb"] = {k: v * scale for k, v in _perturb(s.get("perturb", "paper"), f"{w}.perturb").items()}
        if kind == "calibrated":
            cal = s.get("calibration", "bead")
            if cal not in CALIBRATIONS:
                raise _fail(f"{w}.calibration", f"must be one of {list(CALIBRATIONS)}, got {cal!r}")
            arm["calibration"] = cal
        if kind == "augmented":
            tscale = _num(s.get("train_scale", 1.0), f"{w}.train_scale", positive=True)
            arm["train_perturb"] = {k: v * tscale for k, v in
                                    _perturb(s.get("train_perturb", s.get("perturb", "paper")),
                                             f"{w}.train_perturb").items()}
        if kind == "consistent":
            if "mismatch" not in s:
                raise _fail(w, "a 'consistent' arm needs mismatch (e.g. {pixel_scale: 0.83} or "
                               "{source_to_detector: 20, u0: 3})")
            arm["mismatch"] = _check_mismatch(s["mismatch"], f"{w}.mismatch")
        if kind == "pose":
            pose = s.get("pose", dataclasses.asdict(realism.pose) if not realism.pose.is_zero else _DEFAULT_POSE)
            motion = s.get("motion",
                           dataclasses.asdict(realism.motion) if not realism.motion.is_zero else _DEFAULT_MOTION)
            arm["pose"], arm["motion"] = _jitter(pose, f"{w}.pose"), _jitter(motion, f"{w}.motion")
            if not any(arm["pose"].values()) and not any(arm["motion"].values()):
                raise _fail(w, "pose and motion are both zero; give a non-zero head pose or motion")
        out[str(name)] = arm
    exact = [n for n, a in out.items() if a["kind"] == "exact"]
    if len(exact) != 1:
        raise _fail(where, f"need exactly one arm of kind 'exact' (the reference of every comparison), got {exact}")
    return out


def load_plan(path) -> tuple[dict, str]:
    """Read and validate a plan file; returns ``(plan, text)``."""
    from .._yaml import load_yaml

    p = Path(path)
    if not p.is_file():
        raise PlanError(f"plan file {p} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PlanError(f"plan file {p} is not UTF-8 text ({exc.reason} at byte {exc.start}); give the YAML plan "
                        "file, saved as UTF-8") from None
    except OSError as exc:
        raise PlanError(f"plan file {p} cannot be read ({exc.strerror or exc}); check its permissions") from None
    raw = load_yaml(text, what=f"plan {p}")
    return validate_plan(raw, str(p)), text


def plan_hash(plan: dict) -> str:
    """SHA-256 of the validated plan (canonical JSON): comments and key order do not count."""
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# steps
def _recipe_name(prefix: str, recipe: dict) -> str:
    return f"{prefix}-{hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:8]}"


def _test_recipe(arm: dict) -> dict:
    kind = arm["kind"]
    if kind == "exact":
        return {}
    if kind in ("miscalibrated", "calibrated", "augmented"):
        return {"perturb": arm["perturb"]}
    if kind == "consistent":
        return {"mismatch": arm["mismatch"]}
    return {"pose": arm["pose"], "motion": arm["motion"]}


def _train_recipe(arm: dict) -> dict | None:
    if arm["kind"] == "augmented":
        return {"perturb": arm["train_perturb"]}
    if arm["kind"] == "consistent":
        return {"mismatch": arm["mismatch"]}
    return None


def _test_name(arm: dict) -> str:
    r = _test_recipe(arm)
    return "test-exact" if not r else _recipe_name("test", r)


def _train_name(arm: dict) -> str:
    r = _train_recipe(arm)
    return "base" if r is None else _recipe_name("train", r)


class _Budget:
    """Wall and CPU seconds of a block (``with _Budget() as b: ...; b.record``)."""

    def __enter__(self):
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.record = {"wall_s": time.perf_counter() - self.t0, "cpu_s": time.process_time() - self.c0}
        return False


def _marker(out: Path, step: str) -> Path:
    """The done-marker of step ``step`` (e.g. ``train/psctnet/base/seed0``) in study folder ``out``."""
    return out / "done" / f"{step.replace('/', '__')}.json"


def _step_name(item: tuple) -> str:
    """The step name of an ``order`` item of :func:`study_steps`."""
    kind, label, a, b = item
    return f"train/{label}/{a}/seed{b}" if kind == "train" else f"eval/{label}/seed{a}/{b}"


class _Runner:
    def __init__(self, plan: dict, out: Path, log: Callable[[str], None]):
        self.plan, self.out, self.log = plan, out, log
        self.ran: list[str] = []
        self.skipped: list[str] = []

    def marker(self, step: str) -> Path:
        return _marker(self.out, step)

    def done(self, step: str) -> dict | None:
        p = self.marker(step)
        return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None

    def step(self, step: str, fn: Callable[[], dict]) -> dict:
        rec = self.done(step)
        if rec is not None:
            self.skipped.append(step)
            return rec
        self.log(f"[study] {step} ...")
        with _Budget() as b:
            info = fn() or {}
        rec = {"step": step, "budget": {**b.record, **info.pop("budget", {})}, **info}
        self.marker(step).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.marker(step), json.dumps(rec, indent=1, sort_keys=True) + "\n")
        self.ran.append(step)
        self.log(f"[study] {step} done ({rec['budget']['wall_s']:.1f} s wall, {rec['budget']['cpu_s']:.1f} s CPU)")
        return rec

    # -- data ---------------------------------------------------------------------------------
    def realism(self, extra: dict | None = None):
        from ..data import PoseJitter

        r = _realism(self.plan["data"]["realism"], "data.realism")
        r = dataclasses.replace(r, pose=PoseJitter(), motion=PoseJitter())  # pose belongs to the pose arm
        if extra:
            r = dataclasses.replace(r, pose=PoseJitter(**extra["pose"]), motion=PoseJitter(**extra["motion"]))
        return r

    def make_base(self) -> dict:
        from ..data import generate, make_specs

        d = self.plan["data"]
        realism = self.realism()
        specs = make_specs(d["n"], seed=d["seed"], grid=d["grid"], binning=d["binning"], variants=d["variants"],
                           phantom=d["phantom"], fractions=tuple(d["split"]),
                           realism=None if realism.is_none else realism)
        splits = [s.split for s in specs]
        for need in ("train", "val", "test"):
            if need not in splits:
                raise PlanError(f"data: {d['n']} samples with split {d['split']} give no {need!r} sample; raise n or "
                                "the fraction")
        path = self.out / "data" / "base.h5"
        path.parent.mkdir(parents=True, exist_ok=True)
        generate(specs, path)
        return {"outputs": [str(path.relative_to(self.out))], "n": len(specs),
                "splits": {s: splits.count(s) for s in ("train", "val", "test")}}

    def reexpose(self, name: str, recipe: dict, splits: tuple, told_in_geometry: bool) -> dict:
        """A variant of the base file: its ``splits`` rows re-exposed per ``recipe``."""
        from .._threads import torch_threads
        from ..data import DatasetFile, DatasetWriter, GeometryPerturbation, Sample, synthesize

        base = self.out / "data" / "base.h5"
        path = self.out / "data" / f"{name}.h5"
        pert = GeometryPerturbation(**recipe["perturb"]) if "perturb" in recipe else None
        realism = self.realism(recipe if "pose" in recipe else None)
        import torch

        with DatasetFile(base) as ds:
            all_splits = ds.splits()
            rows = [i for i, s in enumerate(all_splits) if s in splits]
            with DatasetWriter(path, attrs={"xray_kind": "line_integrals", "xray_units": "attenuation x mm",
                                            "phantom": self.plan["data"]["phantom"], "study_variant": name},
                               expected_samples=len(rows)) as wr, torch_threads(1), torch.no_grad():
                for i in rows:
                    prov = ds.provenance(i)
                    seed = int(prov["spec"]["seed"])
                    vol = torch.from_numpy(ds.volume(i))
                    nominal = ds.geometry(i, nominal=True)
                    made_with = _apply_mismatch(nominal, recipe["mismatch"]) if "mismatch" in recipe else nominal
                    res = synthesize(vol, made_with, perturbation=pert, seed=seed,
                                     realism=None if realism.is_none else realism)
                    prov = {**prov, "study_variant": {"name": name, "recipe": recipe, "base_row": i,
                                                      "augmentation": res.augmentation}}
                    if told_in_geometry:  # training reads /geometry: store what the refiner is told
                        geom, nom = nominal, nominal
                        prov["study_variant"]["xrays_made_with"] = "see recipe (geometry stored = nominal, told)"
                    else:  # evaluation: /geometry the truth, /nominal_geometry what the refiner is told
                        geom, nom = res.geometry, nominal
                    wr.append(Sample(volume=vol, grid=ds.grid(i), xrays=res.xrays, geometry=geom,
                                     labels=ds.labels(i), provenance=prov, nominal_geometry=nom, split=all_splits[i]))
        return {"outputs": [str(path.relative_to(self.out))], "n": len(rows), "recipe": recipe}

    # -- training -----------------------------------------------------------------------------
    def train(self, label: str, trainset: str, seed: int) -> dict:
        from .evaluation import fit_bone_threshold
        from .training import TrainConfig, train

        r = self.plan["refiners"][label]
        t = r["train"]
        data = self.out / "data" / f"{trainset}.h5"
        run = self.out / "runs" / label / trainset / f"seed{seed}"
        from ..data import DatasetFile

        with DatasetFile(data) as ds:
            n_train = ds.splits().count("train")
        per_epoch = math.ceil(n_train / t["batch"])
        epochs = max(1, math.ceil(t["steps"] / per_epoch))
        cfg = TrainConfig(data=str(data), refiner=r["refiner"], refiner_config=copy.deepcopy(r["config"]),
                          out=str(run), epochs=epochs, batch_size=t["batch"], lr=t["lr"], seed=seed,
                          save_every=t["checkpoint_every"], device=self.plan["device"], progress=False,
                          select=t["select"])
        sessions_path = run / "study_budget.json"
        sessions = json.loads(sessions_path.read_text()) if sessions_path.is_file() else []
        resume = (run / "last.pt").is_file()
        try:
            with _Budget() as b:
                summary = train(cfg, resume=resume)
        except BaseException:
            # an interrupted sitting (signal, Ctrl-C, error) still cost its time: record it, so that
            # the training's budget sums every sitting (its steps are in last.pt, which the next
            # sitting resumes from); only a kill that Python cannot catch leaves a sitting out
            sessions.append({**b.record, "resumed": resume, "interrupted": True})
            write_text_atomic(sessions_path, json.dumps(sessions, indent=1) + "\n")
            raise
        sessions.append({**b.record, "resumed": resume, "steps_at_end": summary["steps"]})
        write_text_atomic(sessions_path, json.dumps(sessions, indent=1) + "\n")
        ckpt = run / "best.pt" if (run / "best.pt").is_file() else run / "last.pt"
        level = None
        bone_fit = None
        if self.plan["evaluation"]["fit_bone_level"]:
            from ..refiners.base import Refiner

            with _Budget() as fb:
                fit = fit_bone_threshold(Refiner.from_checkpoint(ckpt), data, "train",
                                         max_samples=self.plan["evaluation"]["bone_fit_samples"],
                                         device=self.plan["device"])
            level = fit["threshold_mu"]
            bone_fit = {"threshold_mu": level, "dice": fit["dice"], "dice_at_default": fit["dice_at_default"],
                        "n_samples": fit["n_samples"], "note": fit["note"],
                        **{f"fit_{k}": v for k, v in fb.record.items()}}
        train_budget = {"train_wall_s": sum(s["wall_s"] for s in sessions),
                        "train_cpu_s": sum(s["cpu_s"] for s in sessions), "sessions": len(sessions),
                        "steps": summary["steps"], "epochs": summary["epochs"],
                        "samples_per_s": summary["samples_per_s"],
                        "batch": t["batch"], "n_train": n_train}
        return {"outputs": [str(run.relative_to(self.out))], "checkpoint": str(ckpt.relative_to(self.out)),
                "pred_bone_threshold_mu": level, "bone_fit": bone_fit, "budget": train_budget,
                "best": _plain(summary.get("best"))}

    # -- evaluation ---------------------------------------------------------------------------
    def bead_calibrator(self, upsample: int):
        """:func:`bead_cage_calibrator`, remembered per true geometry and seed: every refiner of
        an arm is handed the same calibrated geometry, computed once per process."""
        from ..geometry.io import dumps as geometry_dumps
        from .miscalibration import bead_cage_calibrator

        fit = bead_cage_calibrator(upsample=upsample)
        cache = self.__dict__.setdefault("_bead_cache", {})

        def calibrate_cached(true, nominal, seed):
            key = (geometry_dumps(true), geometry_dumps(nominal), tuple(seed), upsample)
            if key not in cache:
                cache[key] = fit(true, nominal, seed)
            return cache[key]

        calibrate_cached.__name__ = fit.__name__
        return calibrate_cached

    def evaluate(self, label: str, seed: int, arm_name: str, train_rec: dict) -> dict:
        from ..refiners.base import Refiner
        from .evaluation import evaluate
        from .miscalibration import CALIBRATION_RESIDUAL

        arm = self.plan["arms"][arm_name]
        kw: dict = {"geometry_override": "nominal"}
        # the bead cage's 1.5 mm beads want detector pixels of about 0.8 mm (evaluation.bead_pixel_mm):
        # read the bead images out that much finer than the X-rays (0.2 mm native pixels x binning)
        upsample = max(1, math.ceil(0.2 * self.plan["data"]["binning"] / self.plan["evaluation"]["bead_pixel_mm"]))
        if arm["kind"] == "exact":
            kw = {"geometry_override": None}
        elif arm["kind"] == "calibrated":
            kw = {"bead": {"geometry_override": self.bead_calibrator(upsample)},
                  "exact": {"geometry_override": "true"},
                  "residual": {"geometry_override": None, "calibration_error": CALIBRATION_RESIDUAL},
                  }[arm["calibration"]]
        ckpt = self.out / train_rec["checkpoint"]
        refiner = Refiner.from_checkpoint(ckpt)
        data = self.out / "data" / f"{_test_name(arm)}.h5"
        res = evaluate(refiner, data, "test", seed=self.plan["seed"], label=f"{label} seed{seed} {arm_name}",
                       checkpoint=str(ckpt.relative_to(self.out)), batch_size=self.plan["evaluation"]["batch"],
                       device=self.plan["device"], pred_bone_threshold_mu=train_rec["pred_bone_threshold_mu"], **kw)
        res.dataset = str(data.relative_to(self.out))
        path = self.out / "eval" / label / f"seed{seed}" / f"{arm_name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        res.save(path)
        return {"outputs": [str(path.relative_to(self.out))], "n": len(res.per_sample),
                "budget": {"refiner_s": float(sum(s["refiner_seconds"] for s in res.per_sample))}}


def _plain(o):
    from .evaluation import _json_safe

    return json.loads(json.dumps(_json_safe(o))) if o is not None else None


def _apply_mismatch(geometry, mismatch: dict):
    """``geometry`` with the same parameter errors on every view and/or its pixel pitch
    scaled by ``pixel_scale`` (the detector then covers ``pixel_scale`` times the field)."""
    deltas = {k: v for k, v in mismatch.items() if k != "pixel_scale"}
    g = geometry.perturbed([deltas] * len(geometry.parameters)) if deltas else geometry
    s = mismatch.get("pixel_scale", 1.0)
    if s != 1.0:
        params = []
        for p in g.parameters:
            pr, pc = p.pitch
            params.append(p.replace(pixel_pitch=(pr * s, pc * s)))
        g = g.with_parameters(params)
    return g


def _plan_record(path: Path) -> dict:
    """A study's ``plan.json`` (``{"sha256", "plan", ...}``), or :class:`PlanError` naming the
    file if it does not parse or lacks those fields (a truncated or hand-edited file)."""
    try:
        rec = json.loads(Path(path).read_text(encoding="utf-8"))
        if not (isinstance(rec, dict) and isinstance(rec["sha256"], str) and isinstance(rec["plan"], dict)):
            raise TypeError("not an object with a 'sha256' string and a 'plan' object")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise PlanError(f"{path} is damaged ({type(exc).__name__}: {exc}); it records the study's plan: restore it "
                        "from a copy or a ledger (`tomoprior study restore`), or start the study in a new folder"
                        ) from None
    return rec


def _check_out(out: Path, plan: dict, text: str, resume: bool) -> None:
    """Refuse a folder that holds another study, or a changed plan; record the plan."""
    rec_path = out / "plan.json"
    h = plan_hash(plan)
    if rec_path.is_file():
        old = _plan_record(rec_path)
        if old["sha256"] != h:
            changed = sorted(_diff_keys(old["plan"], plan))
            raise PlanError(f"{out} holds a study of another plan (sha256 {old['sha256'][:12]}..., this plan "
                            f"{h[:12]}...; changed: {', '.join(changed) or 'values'}). Its results would mix two "
                            f"plans: run the changed plan with another --out, or restore the plan in "
                            f"{out / 'plan.yaml'}")
        if not resume:
            raise PlanError(f"{out} already holds this study; pass --resume to continue it (finished steps are "
                            "skipped), or choose another --out")
        return
    if out.exists() and any(out.iterdir()):
        raise PlanError(f"{out} is not empty and holds no study (no plan.json); choose an empty or new --out")
    from .._atomic import check_writable

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PlanError(f"--out {out} cannot be made ({exc.strerror or exc}); choose a folder you can write to"
                        ) from None
    try:
        check_writable(out, what="--out")
    except (OSError, ValueError) as exc:
        raise PlanError(str(exc)) from None
    from .._version import __version__

    write_text_atomic(out / "plan.yaml", text)
    # not key-sorted: the report keeps the plan's order of refiners and arms
    write_text_atomic(rec_path, json.dumps({"sha256": h, "tomoprior": __version__, "plan": plan}, indent=1) + "\n")


def _diff_keys(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{prefix}{k}")
            else:
                out += _diff_keys(a[k], b[k], f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def study_steps(plan: dict) -> dict:
    """The steps of a plan: ``{"data": [(name, recipe, splits, told)], "order": [("train", label,
    trainset, seed) or ("eval", label, seed, arm)]}``.

    ``order`` is the run order after the data: the first training seed of every refiner (in plan
    order), then the second, ...; within one, training set by training set, each training followed
    by the evaluations of the arms it serves. So the cheap refiners listed first are reported
    before a long training starts, one whole seed of the study comes before the next, and a
    partial report (:func:`study_report` with ``partial=True``) is made of whole trainings."""
    data = []
    seen = set()
    used = {a for label in plan["refiners"] for a in refiner_arms(plan, label)}
    for arm in (a for n, a in plan["arms"].items() if n in used):
        tn, tr = _test_name(arm), _test_recipe(arm)
        if tn not in seen:
            seen.add(tn)
            data.append((tn, tr, ("test",), False))
        rn, rr = _train_name(arm), _train_recipe(arm)
        if rr is not None and rn not in seen:
            seen.add(rn)
            data.append((rn, rr, ("train", "val"), True))
    order = []
    for k in range(max(len(r["train"]["seeds"]) for r in plan["refiners"].values())):
        for label, r in plan["refiners"].items():
            if k >= len(r["train"]["seeds"]):
                continue
            seed = r["train"]["seeds"][k]
            arms = refiner_arms(plan, label)
            for ts in dict.fromkeys(_train_name(plan["arms"][a]) for a in arms):
                order.append(("train", label, ts, seed))
                order += [("eval", label, seed, a) for a in arms if _train_name(plan["arms"][a]) == ts]
    return {"data": data, "order": order}


def refiner_arms(plan: dict, label: str) -> list[str]:
    """The arms refiner ``label`` is evaluated on (its ``arms`` list, default every arm), in plan order."""
    want = plan["refiners"][label].get("arms")
    return [a for a in plan["arms"] if want is None or a in want]


def run_study(plan_path, out, *, resume: bool = False, log: Callable[[str], None] = print,
              stop_after: int | None = None, threads: int | None = 1, only: Sequence[str] | None = None) -> dict:
    """Run (or continue) the study of ``plan_path`` in the folder ``out``; then write the report.

    Parameters
    ----------
    plan_path : str or Path
        The plan (YAML; :func:`validate_plan`).
    out : str or Path
        The study folder (see the module docstring). A new or empty folder, or with ``resume``
        one that holds the same plan.
    resume : bool
        Continue a study: finished steps (done-marker present) are skipped, an interrupted
        training resumes from its ``last.pt``.
    threads : int or None
        torch intra-op threads while the study runs (default 1: on a shared machine more
        threads than free cores make small 3D convolutions many times slower; None: leave
        torch's setting). Results do not depend on it beyond floating-point summation order.
    stop_after : int, optional
        Stop after this many steps have run in this call (for measuring throughput; the study
        can be continued with ``resume``).
    only : sequence of str, optional
        Run only the training and evaluation steps whose names match one of these shell-style
        patterns (``fnmatch``, e.g. ``"train/agnostic/base/seed1"``, ``"eval/agnostic/seed1/*"``),
        in plan order; the data steps run as always. The rest stays for a later ``resume``:
        to bring a cheaper or more informative part of a long study forward. A selected
        evaluation whose training is neither done nor selected is refused.

    Returns
    -------
    dict with ``ran`` and ``skipped`` (step names), ``report`` (path of report.md or None when
    stopped early) and ``stopped``.

    Raises
    ------
    PlanError
        A bad plan, a folder holding another plan or another study without ``resume``.
    """
    from .._threads import torch_threads

    plan, text = load_plan(plan_path)
    only = _check_only(plan, only)
    out = Path(out)
    _check_out(out, plan, text, resume)
    with torch_threads(threads):
        return _run(plan, out, log, stop_after, only)


def _check_only(plan: dict, only) -> tuple[str, ...] | None:
    """The ``only`` patterns as a tuple, after checking that each matches at least one training
    or evaluation step of ``plan`` (whether a selected evaluation's training is done or selected
    is checked when the study runs)."""
    if only is None:
        return None
    if isinstance(only, str):
        only = [only]
    names = [_step_name(item) for item in study_steps(plan)["order"]]
    for pat in only:
        if not isinstance(pat, str) or not pat.strip():
            raise PlanError(f"--only needs a step name or pattern, got {pat!r}")
        if not any(fnmatch.fnmatchcase(n, pat) for n in names):
            raise PlanError(f"--only {pat!r} matches no step of plan {plan['name']!r}; its steps are named like "
                            f"{names[0]!r} and {names[-1]!r} (`tomoprior study report DIR --partial` lists the "
                            "missing ones)")
    return tuple(only)


def _training_evals(plan: dict, label: str, trainset: str, seed: int) -> list[str]:
    """Step names of the evaluations that read training ``(label, trainset, seed)``."""
    return [_step_name(("eval", label, seed, a)) for a in refiner_arms(plan, label)
            if _train_name(plan["arms"][a]) == trainset]


def _missing_needed(plan: dict, out: Path, steps: dict) -> list[str]:
    """Done steps whose outputs are gone but still needed: the data files and training
    checkpoints that steps not yet done read (a study folder restored from a ledger, see
    :func:`archive_study`, holds the results but not the data; a finished training whose
    evaluations are all done needs no checkpoint). Their done-markers are stale."""
    def done(step):
        p = _marker(out, step)
        return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None

    stale, need_data = [], set()
    trains = [it for it in steps["order"] if it[0] == "train"]
    for item in trains:
        _, label, trainset, seed = item
        pending = [e for e in _training_evals(plan, label, trainset, seed) if done(e) is None]
        rec = done(_step_name(item))
        if rec is not None and pending and not (out / rec["checkpoint"]).is_file():
            stale.append(_step_name(item))
            rec = None
        if rec is None:
            need_data.add(trainset)
        for e in pending:
            need_data.add(_test_name(plan["arms"][e.rsplit("/", 1)[1]]))
    if any(not (out / "data" / f"{n}.h5").is_file() for n in need_data - {"base"}):
        need_data.add("base")  # a variant is made by re-exposing the base file's volumes
    for name in ["base", *(d[0] for d in steps["data"])]:
        if name in need_data and done(f"data/{name}") is not None and not (out / "data" / f"{name}.h5").is_file():
            stale.append(f"data/{name}")
    return stale


def _data_digest(out: Path, rec: dict) -> dict:
    """``{"content_sha256": ...}`` of a data step's output file (:meth:`DatasetFile.content_sha256`)."""
    from ..data import DatasetFile

    with DatasetFile(out / rec["outputs"][0]) as ds:
        return {"content_sha256": ds.content_sha256()}


def _backfill_digests(rn: _Runner, names: list[str]) -> None:
    """Add the content digest to done data steps that ran before it was recorded (and whose
    file is here), so that a later re-make elsewhere can be checked against it."""
    for name in names:
        step = f"data/{name}"
        rec = rn.done(step)
        if rec is not None and "content_sha256" not in rec and (rn.out / "data" / f"{name}.h5").is_file():
            rec.update(_data_digest(rn.out, rec))
            rec["content_sha256_added_later"] = True
            write_text_atomic(rn.marker(step), json.dumps(rec, indent=1, sort_keys=True) + "\n")


def _run(plan: dict, out: Path, log, stop_after, only: tuple[str, ...] | None = None) -> dict:
    rn = _Runner(plan, out, log)
    steps = study_steps(plan)
    previous = {}
    for step in _missing_needed(plan, out, steps):
        previous[step] = rn.done(step)
        what = "data file" if step.startswith("data/") else "checkpoint"
        log(f"[study] {step}: done before, but its {what} is missing and still needed; running it again")
        rn.marker(step).unlink()

    def budget_left() -> bool:
        return stop_after is None or len(rn.ran) < stop_after

    def make_data(step, fn):
        def run():
            info = fn()
            info.update(_data_digest(out, info))
            old = (previous.get(step) or {}).get("content_sha256")
            if old is not None:
                info["reproduced"] = old == info["content_sha256"]
                if not info["reproduced"]:
                    log(f"[study] WARNING: {step} made again holds other data than before (content SHA-256 "
                        f"{info['content_sha256'][:12]}... vs {old[:12]}...): results already in the folder come "
                        "from the earlier data; a training interrupted on it cannot resume")
            return info
        return rn.step(step, run)

    _backfill_digests(rn, ["base", *(d[0] for d in steps["data"])])
    make_data("data/base", rn.make_base)
    for name, recipe, splits, told in steps["data"]:
        if not budget_left():
            break
        make_data(f"data/{name}", lambda n=name, r=recipe, s=splits, t=told: rn.reexpose(n, r, s, t))

    def selected(name: str) -> bool:
        return only is None or any(fnmatch.fnmatchcase(name, pat) for pat in only)

    train_recs = {}
    for item in steps["order"]:
        if not budget_left():
            break
        kind, label, a, b = item
        name = _step_name(item)
        if kind == "train":
            train_recs[(label, a, b)] = (rn.step(name, lambda x=label, y=a, z=b: rn.train(x, y, z))
                                         if selected(name) else rn.done(name))
            continue
        if not selected(name):
            continue
        trainset = _train_name(plan["arms"][b])
        tr = train_recs[(label, trainset, a)]
        if tr is None and rn.done(name) is None:
            need = _step_name(("train", label, trainset, a))
            raise PlanError(f"{name} evaluates the training {need}, which is not done and not selected by --only; "
                            f"add --only {need!r} (or run it first)")
        rn.step(name, lambda x=label, y=a, z=b, t=tr: rn.evaluate(x, y, z, t))
    status = _status(out, plan, steps)
    report = None if status["missing"] else study_report(out)
    return {"ran": rn.ran, "skipped": rn.skipped, "report": str(report) if report else None,
            "stopped": bool(status["missing"]), "steps_done": status["done"], "steps_total": status["total"]}


# --------------------------------------------------------------------------------------------
# ledger: the part of a study folder that version control can hold
#: Files of a study folder a ledger keeps (glob patterns relative to the folder): the plan, the
#: done-markers with their budgets, every evaluation, the training logs and the report.
LEDGER_PATTERNS = ("plan.yaml", "plan.json", "done/*.json", "eval/*/*/*.json", "runs/*/*/*/study_budget.json",
                   "runs/*/*/*/metrics.jsonl", "runs/*/*/*/config.json", "report/report.md", "report/report.json",
                   "report/figure.png")
LEDGER_MANIFEST = "ledger.json"


def _ledger_checkpoints(plan: dict, out: Path) -> list[str]:
    """Checkpoints a ledger must carry so that no training is repeated: ``last.pt`` and
    ``best.pt`` of a training that is under way (no done-marker yet; ``best.pt`` holds the best
    validation epoch so far, which the resumed run may not beat) and the checkpoint a finished
    training's evaluations read while one of them is not done."""
    steps = study_steps(plan)
    keep = []
    for item in (it for it in steps["order"] if it[0] == "train"):
        _, label, trainset, seed = item
        marker = _marker(out, _step_name(item))
        run = Path("runs") / label / trainset / f"seed{seed}"
        if not marker.is_file():  # under way: the state to resume and the best epoch so far
            keep += [str(run / f) for f in ("last.pt", "best.pt") if (out / run / f).is_file()]
            continue
        ckpt = json.loads(marker.read_text(encoding="utf-8"))["checkpoint"]
        evals_left = any(not _marker(out, e).is_file() for e in _training_evals(plan, label, trainset, seed))
        if evals_left and (out / ckpt).is_file():
            keep.append(ckpt)
    return keep


def archive_study(out, ledger, *, checkpoints: bool = True) -> dict:
    """Copy the small part of study folder ``out`` into the folder ``ledger``, which version
    control can hold: the plan, done-markers (with every step's budget), evaluations, training
    logs and the report (:data:`LEDGER_PATTERNS`), and with ``checkpoints`` the checkpoints
    still needed (``last.pt`` and ``best.pt`` of a training under way, the checkpoint of a
    finished training with evaluations left; about 11 MB each at the referee plan's widths). The data files are
    left out: the plan makes them again (:func:`run_study` re-makes a missing data file that a
    remaining step needs, and a restored training resumes on it by its content digest).

    The ledger mirrors the folder: run it again to bring it up to date; files the folder no
    longer has (a checkpoint no longer needed) are removed from it. Every file is written
    atomically; ``ledger.json`` lists the files with their sizes and SHA-256 and the steps done.

    Returns the manifest (dict).
    """
    import shutil

    from .._atomic import atomic_path
    from .training import file_sha256

    out, ledger = Path(out), Path(ledger)
    if not (out / "plan.json").is_file():
        raise PlanError(f"{out} holds no study (no plan.json); give the folder of `tomoprior study run --out`")
    if ledger.resolve() == out.resolve() or out.resolve() in ledger.resolve().parents:
        raise PlanError(f"the ledger {ledger} must lie outside the study folder {out}")
    rec = _plan_record(out / "plan.json")
    plan = rec["plan"]
    files = sorted({str(p.relative_to(out)) for pat in LEDGER_PATTERNS for p in out.glob(pat) if p.is_file()})
    if checkpoints:
        files += _ledger_checkpoints(plan, out)
    ledger.mkdir(parents=True, exist_ok=True)
    if (ledger / "plan.json").is_file():
        theirs = _plan_record(ledger / "plan.json")["sha256"]
        if theirs != rec["sha256"]:
            raise PlanError(f"the ledger {ledger} holds another plan's study; give an empty or new folder")
    manifest_files = {}
    for rel in files:
        src, dst = out / rel, ledger / rel
        digest = file_sha256(src)
        if not (dst.is_file() and file_sha256(dst) == digest):
            dst.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(dst) as tmp:
                shutil.copyfile(src, tmp)
        manifest_files[rel] = {"bytes": src.stat().st_size, "sha256": digest}
    # what the folder no longer has goes (other files, e.g. a README of the ledger, stay)
    for pat in (*LEDGER_PATTERNS, "runs/*/*/*/*.pt"):
        for p in ledger.glob(pat):
            if p.is_file() and str(p.relative_to(ledger)) not in manifest_files:
                p.unlink()
    status = _status(out, plan)
    manifest = {"plan_sha256": rec["sha256"],
                "steps_done": status["done"], "steps_total": status["total"], "missing": status["missing"],
                "checkpoints": [f for f in files if f.endswith(".pt")], "files": manifest_files}
    write_text_atomic(ledger / LEDGER_MANIFEST, json.dumps(manifest, indent=1) + "\n")
    return manifest


def restore_study(ledger, out) -> dict:
    """Fill study folder ``out`` from ``ledger`` (made by :func:`archive_study`), so that
    ``tomoprior study run PLAN --out OUT --resume`` continues the study: steps done are skipped,
    a training under way resumes from its checkpoint, and the data files the remaining steps
    need are made again from the plan.

    ``out`` must be new, empty, or hold the same plan; files it has already are kept (never
    overwritten by the ledger's, which may be older). Every file is checked against the
    manifest's SHA-256 first. Returns ``{"copied": [...], "kept": [...]}``.
    """
    import shutil

    from .._atomic import atomic_path
    from .training import file_sha256

    ledger, out = Path(ledger), Path(out)
    mpath = ledger / LEDGER_MANIFEST
    if not mpath.is_file():
        raise PlanError(f"{ledger} is not a study ledger (no {LEDGER_MANIFEST}); make one with "
                        "`tomoprior study archive FOLDER LEDGER`")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
        files = {str(rel): str(meta["sha256"]) for rel, meta in manifest["files"].items()}
        int(manifest["steps_done"]), int(manifest["steps_total"]), str(manifest["plan_sha256"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise PlanError(f"{mpath} is not a ledger manifest ({type(exc).__name__}: {exc}); the ledger is damaged: "
                        "make it again with `tomoprior study archive FOLDER LEDGER`") from None
    for rel, sha in files.items():
        p = ledger / rel
        if not p.is_file() or file_sha256(p) != sha:
            raise PlanError(f"the ledger file {p} is missing or differs from its manifest entry (SHA-256 "
                            f"{sha[:12]}...); the ledger is damaged")
    if (out / "plan.json").is_file():
        mine = _plan_record(out / "plan.json")["sha256"]
        if mine != manifest["plan_sha256"]:
            raise PlanError(f"{out} holds another plan's study; restore into an empty or new folder")
    elif out.exists() and any(out.iterdir()):
        raise PlanError(f"{out} is not empty and holds no study; restore into an empty or new folder")
    copied, kept = [], []
    for rel in manifest["files"]:
        dst = out / rel
        if dst.exists():
            kept.append(rel)
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(dst) as tmp:
            shutil.copyfile(ledger / rel, tmp)
        copied.append(rel)
    return {"copied": copied, "kept": kept, "steps_done": manifest["steps_done"],
            "steps_total": manifest["steps_total"]}


# --------------------------------------------------------------------------------------------
# report
def bootstrap_ci(values, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean of ``values`` with a percentile bootstrap confidence interval.

    Resamples the values with replacement ``n_boot`` times (``numpy.random.default_rng(seed)``)
    and takes the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the resampled means.
    Non-finite values are dropped (counted in ``n_undefined``).

    Returns
    -------
    dict ``mean``, ``lo``, ``hi`` (NaN when no value is defined; ``lo = hi = mean`` for one
    value), ``n``, ``n_undefined``.
    """
    arr = np.asarray(list(values), dtype=np.float64)
    ok = arr[np.isfinite(arr)]
    n = int(ok.size)
    if n == 0:
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan, "n": 0, "n_undefined": int(arr.size)}
    mean = float(ok.mean())
    if n == 1:
        return {"mean": mean, "lo": mean, "hi": mean, "n": 1, "n_undefined": int(arr.size - 1)}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(int(n_boot), n))
    means = ok[idx].mean(axis=1)
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [a, 1.0 - a])
    return {"mean": mean, "lo": float(lo), "hi": float(hi), "n": n, "n_undefined": int(arr.size - n)}


def _load_results(out: Path, plan: dict, partial: bool = False) -> dict:
    """``{(refiner, arm): {row: [per-seed records, each with "_seed"]}}`` from the evaluation
    files. ``partial``: skip the files that do not exist yet (and pairs with none) instead of
    refusing."""
    from .evaluation import EvaluationResult

    res = {}
    for label, r in plan["refiners"].items():
        for arm in refiner_arms(plan, label):
            per = {}
            for seed in r["train"]["seeds"]:
                p = out / "eval" / label / f"seed{seed}" / f"{arm}.json"
                if not p.is_file():
                    if partial:
                        continue
                    raise PlanError(f"{p} is missing: the study is not finished; continue it with "
                                    f"`tomoprior study run PLAN --out {out} --resume`, or report what is done "
                                    "with `tomoprior study report --partial`")
                for s in EvaluationResult.load(p).per_sample:
                    per.setdefault(s["index"], []).append({**s, "_seed": seed})
            if per:
                res[(label, arm)] = per
    return res


def _seed_mean(records: list[dict], key: str, seeds=None) -> float:
    vals = [float(s.get(key, math.nan)) for s in records if seeds is None or s["_seed"] in seeds]
    vals = [v for v in vals if math.isfinite(v)]
    return float(np.mean(vals)) if vals else math.nan


def _seeds(per: dict) -> list[int]:
    """The training seeds present in ``{row: [records]}``."""
    return sorted({s["_seed"] for records in per.values() for s in records})


def _paired(cur: list[dict], ref: list[dict], key: str) -> float:
    """Paired difference of one skull: the mean over the training seeds evaluated in both arms
    (every seed once the study is finished) of arm minus reference."""
    common = {s["_seed"] for s in cur} & {s["_seed"] for s in ref}
    return _seed_mean(cur, key, common) - _seed_mean(ref, key, common) if common else math.nan


def study_report(out, *, figure: bool = True, partial: bool = False) -> Path:
    """Write ``report/report.md``, ``report.json`` and ``figure.png`` of a finished study.

    For each refiner and arm, per test skull: the metric averaged over the refiner's training
    seeds, minus the same skull's value in the exact-geometry arm; the mean of these paired
    differences with a seeded bootstrap confidence interval over skulls (:func:`bootstrap_ci`,
    ``report.bootstrap`` resamples, ``report.level``). Returns the path of ``report.md``.

    ``partial=True`` reports a study that is still running: the refiners, seeds and arms whose
    evaluations exist (differences paired over the seeds present in both arms), with the number
    of steps done and the steps missing named at the top of ``report.md``; the file says PARTIAL.
    Without it an unfinished study is refused (:class:`PlanError`).
    """
    out = Path(out)
    if not (out / "plan.json").is_file():
        raise PlanError(f"{out} is not a study folder (no plan.json): give the --out folder of "
                        "`tomoprior study run`")
    rec = _plan_record(out / "plan.json")
    plan = rec["plan"]
    res = _load_results(out, plan, partial)
    ref_arm = next(n for n, a in plan["arms"].items() if a["kind"] == "exact")
    status = _status(out, plan)
    if not any(arm == ref_arm for _, arm in res):
        raise PlanError(f"no refiner of {out} has its '{ref_arm}' arm evaluated yet: nothing to compare "
                        f"({status['done']}/{status['total']} steps done)")
    rows = _rows(plan, res, ref_arm, "all")
    levels = _levels(plan, res, ref_arm)
    seed_spread = _seed_spread(plan, res, ref_arm)
    # normal and craniosynostosis skulls separately when the test skulls hold both
    first = next(per for (label, arm), per in res.items() if arm == ref_arm)
    normal = {i: bool(records[0]["normal"]) for i, records in first.items()}
    groups = {}
    if 0 < sum(normal.values()) < len(normal):
        for g, want in (("normal", True), ("craniosynostosis", False)):
            keep = {i for i, x in normal.items() if x == want}
            sub = {k: {i: v for i, v in per.items() if i in keep} for k, per in res.items()}
            groups[g] = _rows(plan, sub, ref_arm, g)
    qa_rows = _qa_rows(plan, res, ref_arm)
    pairs = _refiner_pairs(plan, res, ref_arm)
    budgets = _budgets(out)
    report_dir = out / "report"
    report_dir.mkdir(exist_ok=True)
    from .evaluation import _json_safe

    write_text_atomic(report_dir / "report.json", json.dumps(_json_safe({"plan_sha256": rec["sha256"], "rows": rows,
                                                                          "groups": groups, "budgets": budgets,
                                                                          "status": status, "levels": levels,
                                                                          "seed_spread": seed_spread,
                                                                          "qa_passed": qa_rows,
                                                                          "refiner_pairs": pairs}),
                                                               indent=1, sort_keys=True) + "\n")
    md = _markdown(plan, rec["sha256"], rows, budgets, ref_arm, groups, status, levels, seed_spread, qa_rows,
                   pairs)
    path = report_dir / "report.md"
    write_text_atomic(path, md)
    if figure:
        _figure(plan, res, rows, ref_arm, report_dir / "figure.png")
    return path


#: Columns of the levels table: our conventions and the official PSCT-Net code's, side by side.
LEVEL_METRICS = ("psnr_x2ctgan", "psnr_psctnet", "official_psnr_slice", "official_psnr_3d", "ssim_x2ctgan",
                 "official_ssim", "mae_hu", "dice_bone", "assd_mm", "proj_rel_l2")


def _levels(plan: dict, res: dict, ref_arm: str) -> list[dict]:
    """Per refiner, the reference arm's metrics in both conventions (:data:`LEVEL_METRICS`):
    mean and sample standard deviation over the test skulls of the per-skull seed means."""
    out = []
    for label in plan["refiners"]:
        per = res.get((label, ref_arm))
        if per is None:
            continue
        row = {"refiner": label, "n": len(per), "seeds": _seeds(per),
               "mean": {}, "sd": {}}
        for m in LEVEL_METRICS:
            vals = np.array([_seed_mean(v, m) for v in per.values()], dtype=float)
            vals = vals[np.isfinite(vals)]
            row["mean"][m] = float(vals.mean()) if vals.size else math.nan
            row["sd"][m] = float(vals.std(ddof=1)) if vals.size > 1 else math.nan
        out.append(row)
    return out


def _seed_spread(plan: dict, res: dict, ref_arm: str) -> list[dict]:
    """Run-to-run spread of the refiners evaluated with two or more training seeds: per refiner,
    arm and metric of :data:`FIGURE_METRICS` (those reported), one value per seed, ``ref_arm``:
    the level (mean over test skulls), other arms: the mean paired difference to ``ref_arm``
    (skulls evaluated in both with that seed); ``spread`` = max - min over the seeds."""
    metrics = [m for m in FIGURE_METRICS if m in plan["report"]["metrics"]]
    out = []
    for label in plan["refiners"]:
        ref = res.get((label, ref_arm))
        if ref is None or len(_seeds(ref)) < 2:
            continue
        for arm in plan["arms"]:
            cur = res.get((label, arm))
            if cur is None:
                continue
            seeds = _seeds(cur)
            for m in metrics:
                per_seed = []
                for sd in seeds:
                    vals = []
                    for i, records in cur.items():
                        v = _seed_mean(records, m, {sd})
                        if arm != ref_arm:
                            v = v - _seed_mean(ref.get(i, []), m, {sd})
                        if math.isfinite(v):
                            vals.append(v)
                    per_seed.append(float(np.mean(vals)) if vals else math.nan)
                finite = [v for v in per_seed if math.isfinite(v)]
                out.append({"refiner": label, "arm": arm, "metric": m, "seeds": seeds, "per_seed": per_seed,
                            "spread": max(finite) - min(finite) if len(finite) > 1 else math.nan})
    return out


def _seed_table(spread: list[dict], ref_arm: str) -> list[str]:
    from .evaluation import _col

    width = max(len(r["seeds"]) for r in spread)
    lines = ["| refiner | arm | metric | " + " | ".join(f"seed #{k + 1}" for k in range(width)) + " | spread |",
             "|" + " --- |" * (4 + width)]
    for r in spread:
        nd = _decimals(r["metric"])
        sign = "" if r["arm"] == ref_arm else "+"
        cells = [f"{v:{sign}.{nd}f} (seed {sd})" if math.isfinite(v) else "n/a"
                 for sd, v in zip(r["seeds"], r["per_seed"])] + [""] * (width - len(r["seeds"]))
        what = _col(r["metric"]) if r["arm"] == ref_arm else f"Δ {_col(r['metric'])}"
        spread_cell = f"{r['spread']:.{nd}f}" if math.isfinite(r["spread"]) else "n/a"
        lines.append(f"| {r['refiner']} | {r['arm']} | {what} | " + " | ".join(cells) + f" | {spread_cell} |")
    return lines


def _levels_table(levels: list[dict]) -> list[str]:
    from .evaluation import _col

    lines = ["| refiner | n | seeds | " + " | ".join(_col(m) for m in LEVEL_METRICS) + " |",
             "|" + " --- |" * (3 + len(LEVEL_METRICS))]
    for r in levels:
        cells = []
        for m in LEVEL_METRICS:
            mu, sd = r["mean"][m], r["sd"][m]
            nd = _decimals(m)
            cells.append("n/a" if not math.isfinite(mu) else f"{mu:.{nd}f}" + ("" if not math.isfinite(sd)
                                                                               else f" ± {sd:.{nd}f}"))
        lines.append(f"| {r['refiner']} | {r['n']} | {','.join(str(x) for x in r['seeds'])} | "
                     + " | ".join(cells) + " |")
    return lines


def _status(out: Path, plan: dict, steps: dict | None = None) -> dict:
    """Steps of the plan done and missing (by their done-markers), in run order."""
    steps = steps or study_steps(plan)
    names = ["data/base", *(f"data/{d[0]}" for d in steps["data"]), *map(_step_name, steps["order"])]
    missing = [n for n in names if not _marker(out, n).is_file()]
    return {"done": len(names) - len(missing), "total": len(names), "missing": missing}


def _rows(plan: dict, res: dict, ref_arm: str, group: str) -> list[dict]:
    """One row per refiner and arm: mean metrics, mean geometry error and the paired
    differences to ``ref_arm`` with bootstrap intervals (skulls of ``res``)."""
    rep, metrics = plan["report"], plan["report"]["metrics"]
    rows = []
    for label in plan["refiners"]:
        ref = res.get((label, ref_arm))
        if ref is None:  # a partial report before this refiner's reference arm
            continue
        for arm in plan["arms"]:
            cur = res.get((label, arm))
            if cur is None:
                continue
            row = {"refiner": label, "arm": arm, "kind": plan["arms"][arm]["kind"], "group": group, "n": len(cur),
                   "seeds": _seeds(cur),
                   "geometry_error_px": float(np.mean([_seed_mean(v, "geometry_error_px") for v in cur.values()])),
                   "mean": {}, "diff": {}}
            for k, m in enumerate(metrics):
                vals = [_seed_mean(v, m) for v in cur.values()]
                row["mean"][m] = float(np.mean([v for v in vals if math.isfinite(v)])) \
                    if any(math.isfinite(v) for v in vals) else math.nan
                if arm == ref_arm:
                    continue
                d = [_paired(cur[i], ref[i], m) for i in sorted(cur) if i in ref]
                row["diff"][m] = bootstrap_ci(d, n_boot=rep["bootstrap"], seed=plan["seed"] * 1000 + k,
                                              level=rep["level"])
            rows.append(row)
    return rows


def _refiner_pairs(plan: dict, res: dict, ref_arm: str) -> list[dict]:
    """The refiners against each other in ``ref_arm``: per test skull, refiner ``a``'s metric (mean
    over its training seeds) minus refiner ``b``'s, with a bootstrap interval over the skulls both
    evaluated. ``a``: each learned refiner (trained for more than one step), in plan order; ``b``:
    every other refiner, except a learned one already compared the other way round."""
    rep, metrics = plan["report"], plan["report"]["metrics"]
    present = [label for label in plan["refiners"] if (label, ref_arm) in res]
    learned = [label for label in present if plan["refiners"][label]["train"]["steps"] > 1]
    out = []
    for a in learned:
        for b in present:
            if b == a or (b in learned and learned.index(b) < learned.index(a)):
                continue
            ra, rb = res[(a, ref_arm)], res[(b, ref_arm)]
            common = [i for i in sorted(ra) if i in rb]
            row = {"a": a, "b": b, "arm": ref_arm, "n": len(common), "seeds_a": _seeds(ra), "seeds_b": _seeds(rb),
                   "diff": {}}
            for k, m in enumerate(metrics):
                d = [_seed_mean(ra[i], m) - _seed_mean(rb[i], m) for i in common]
                row["diff"][m] = bootstrap_ci(d, n_boot=rep["bootstrap"], seed=plan["seed"] * 1000 + 500 + k,
                                              level=rep["level"])
            out.append(row)
    return out


def _budgets(out: Path) -> list[dict]:
    recs = []
    for p in sorted((out / "done").glob("*.json")):
        r = json.loads(p.read_text(encoding="utf-8"))
        recs.append({"step": r["step"], **r["budget"]})
    return recs


def _decimals(metric: str) -> int:
    """Decimals shown for ``metric`` in the report's tables."""
    return 3 if metric.startswith(("ssim", "official_ssim", "dice", "proj")) else 2


def _fmt_ci(ci: dict, metric: str) -> str:
    if ci["n"] == 0:
        return "n/a"
    nd = _decimals(metric)
    return f"{ci['mean']:+.{nd}f} [{ci['lo']:+.{nd}f}, {ci['hi']:+.{nd}f}]"


def _diff_table(rows: list[dict], metrics, ref_arm: str) -> list[str]:
    from .evaluation import _col

    lines = ["| refiner | arm | kind | n | seeds | geometry error (px) | "
             + " | ".join(f"Δ {_col(m)}" for m in metrics) + " |", "|" + " --- |" * (6 + len(metrics))]
    for r in rows:
        cells = ["(reference)" if r["arm"] == ref_arm else _fmt_ci(r["diff"][m], m) for m in metrics]
        seeds = ",".join(str(x) for x in r.get("seeds", []))
        lines.append(f"| {r['refiner']} | {r['arm']} | {r['kind']} | {r['n']} | {seeds} | "
                     f"{r['geometry_error_px']:.2f} | " + " | ".join(cells) + " |")
    return lines


def _qa_passed(records: list[dict]) -> bool | None:
    """Did the calibration behind a skull's records pass its QA (every seed's record; None
    when the records carry no QA verdict)?"""
    got = [r.get("geometry_info", {}).get("qa", {}).get("passed") for r in records]
    return None if any(g is None for g in got) else all(got)


def _qa_rows(plan: dict, res: dict, ref_arm: str) -> list[dict]:
    """The calibrated arms again over the skulls whose calibration passed its QA
    (:func:`~tomoprior.studies.miscalibration.calibration_qa`; what a site would use: a
    calibration that fails QA is repeated, not used), with the number of skulls QA rejected
    (``n_rejected``) and the rejected skulls' mean geometry error. Arms whose records carry no
    QA verdict (evaluated before it was recorded) are left out."""
    out = []
    for (label, arm), per in res.items():
        if plan["arms"][arm]["kind"] != "calibrated" or (label, ref_arm) not in res:
            continue
        verdicts = {i: _qa_passed(v) for i, v in per.items()}
        if any(v is None for v in verdicts.values()):
            continue
        keep = {i: v for i, v in per.items() if verdicts[i]}
        rejected = [i for i, ok in verdicts.items() if not ok]
        if not keep:  # every calibration rejected: nothing to compare
            continue
        for r in _rows(plan, {(label, ref_arm): res[(label, ref_arm)], (label, arm): keep}, ref_arm, "QA passed"):
            if r["arm"] == arm:
                r["n_rejected"] = len(rejected)
                r["rejected_geometry_error_px"] = (float(np.mean([_seed_mean(per[i], "geometry_error_px")
                                                                  for i in rejected])) if rejected else None)
                out.append(r)
    return out


def _markdown(plan: dict, sha: str, rows: list[dict], budgets: list[dict], ref_arm: str, groups: dict,
              status: dict | None = None, levels: list[dict] | None = None,
              seed_spread: list[dict] | None = None, qa_rows: list[dict] | None = None,
              pairs: list[dict] | None = None) -> str:
    from .evaluation import _col

    metrics = plan["report"]["metrics"]
    lvl = round(100 * plan["report"]["level"])
    d = plan["data"]
    lines = [f"# Study `{plan['name']}` (plan sha256 {sha[:12]})", ""]
    if status and status["missing"]:
        miss = status["missing"]
        lines += [f"**PARTIAL: {status['done']} of {status['total']} steps done.** Rows exist only for the refiners, "
                  "arms and training seeds evaluated so far (column `seeds`); differences are paired over the seeds "
                  f"evaluated in both arms. Missing ({len(miss)}): " + ", ".join(f"`{m}`" for m in miss[:12])
                  + (f", ... ({len(miss) - 12} more)" if len(miss) > 12 else "") + ".", ""]
    lines += [f"Data: {d['n']} skulls at {d['grid']}^3, binning {d['binning']}, realism "
              f"{d['realism'] if isinstance(d['realism'], str) else 'custom'}, seed {d['seed']}. Paired differences "
              f"arm - `{ref_arm}` per test skull (metric averaged over training seeds), mean and {lvl} % bootstrap "
              f"interval ({plan['report']['bootstrap']} resamples over skulls, seeded).", ""]
    if levels:
        lines += [f"Levels in the `{ref_arm}` arm, our metrics next to the official PSCT-Net code's (mean ± sd over "
                  "test skulls; docs/metrics.md):", "", *_levels_table(levels), ""]
    if pairs:
        lines += [f"The refiners against each other in the `{ref_arm}` arm: per test skull, the first refiner's metric "
                  f"minus the second's (each averaged over its training seeds), mean and {lvl} % bootstrap interval:",
                  "", "| refiners | n | seeds | " + " | ".join(f"Δ {_col(m)}" for m in metrics) + " |",
                  "|" + " --- |" * (3 + len(metrics))]
        for r in pairs:
            seeds = ",".join(map(str, r["seeds_a"])) + " / " + ",".join(map(str, r["seeds_b"]))
            lines.append(f"| {r['a']} - {r['b']} | {r['n']} | {seeds} | "
                         + " | ".join(_fmt_ci(r["diff"][m], m) for m in metrics) + " |")
        lines += [""]
    if levels:
        lines += ["Differences to the exact arm:", ""]
    lines += _diff_table(rows, metrics, ref_arm)
    for g, grows in groups.items():
        lines += ["", f"{g.capitalize()} skulls only:", "", *_diff_table(grows, metrics, ref_arm)]
    if qa_rows:
        rej = "; ".join(f"{r['refiner']} {r['arm']}: {r['n_rejected']}" + (
            f" (their geometry error {r['rejected_geometry_error_px']:.2f} px)" if r["n_rejected"] else "")
            for r in qa_rows)
        lines += ["", "Calibrated arms, only the skulls whose calibration passed its QA (a calibration that fails "
                  "QA is repeated at a site, not used; limits: `miscalibration.STUDY_QA_LIMITS`). Rejected by QA: "
                  f"{rej}.", "", *_diff_table(qa_rows, metrics, ref_arm)]
    if seed_spread:
        lines += ["", f"Training seeds, run to run: per seed, the `{ref_arm}` arm's level and the other arms' mean "
                  f"difference to it (skulls of that seed); spread = max - min over the seeds:", "",
                  *_seed_table(seed_spread, ref_arm)]
    lines += ["", "Means per arm (all skulls):", "", "| refiner | arm | " + " | ".join(_col(m) for m in metrics) + " |",
              "|" + " --- |" * (2 + len(metrics))]
    for r in rows:
        lines.append(f"| {r['refiner']} | {r['arm']} | " + " | ".join(
            "n/a" if not math.isfinite(r["mean"][m]) else f"{r['mean'][m]:.3f}" for m in metrics) + " |")
    lines += ["", "Budget per step (wall and CPU seconds of this process; training: optimiser steps and samples/s, "
              "summed over sessions when resumed):", "", "| step | wall (s) | CPU (s) | steps | samples/s |",
              "| --- | --- | --- | --- | --- |"]
    for b in budgets:
        sps = b.get("samples_per_s")
        lines.append(f"| {b['step']} | {b['wall_s']:.1f} | {b['cpu_s']:.1f} | {b.get('steps', '')} | "
                     f"{'' if sps is None else f'{sps:.2f}'} |")
    tot_w = sum(b["wall_s"] for b in budgets)
    tot_c = sum(b["cpu_s"] for b in budgets)
    lines += ["", f"Total: {tot_w:.0f} s wall, {tot_c:.0f} s CPU.", "",
              "![paired differences against geometry error](figure.png)", ""]
    return "\n".join(lines)


def _figure_series(plan: dict, res: dict, rows: list[dict], ref_arm: str, metric: str) -> list[dict]:
    """What the figure draws for one metric: per refiner and non-reference arm, the test skulls'
    geometry errors ``x`` (px) and paired differences ``y`` to ``ref_arm`` (seed means, skulls in
    both arms), and the arm's mean geometry error ``mean_x`` with the mean difference and its
    bootstrap interval (``mean``, ``lo``, ``hi``, ``n`` skulls) from the report's ``rows``;
    ``seeds``: the training seeds the arm is evaluated with so far, ``partial``: fewer than the
    refiner's best-covered arm (a study under way: such an arm's mean is not yet comparable)."""
    out = []
    for label in plan["refiners"]:
        ref = res.get((label, ref_arm))
        if ref is None:
            continue
        most = max(len(_seeds(per)) for (lab, _), per in res.items() if lab == label)
        for arm in plan["arms"]:
            cur = res.get((label, arm))
            if arm == ref_arm or cur is None:
                continue
            common = [i for i in sorted(cur) if i in ref]
            seeds = _seeds(cur)
            row = next(r for r in rows if r["refiner"] == label and r["arm"] == arm)
            ci = row["diff"].get(metric, {"n": 0, "mean": math.nan, "lo": math.nan, "hi": math.nan})
            out.append({"refiner": label, "arm": arm,
                        "x": [_seed_mean(cur[i], "geometry_error_px") for i in common],
                        "y": [_paired(cur[i], ref[i], metric) for i in common],
                        "mean_x": row["geometry_error_px"], "n": ci["n"], "mean": ci["mean"], "lo": ci["lo"],
                        "hi": ci["hi"], "seeds": seeds, "partial": len(seeds) < most})
    return out


def _figure(plan: dict, res: dict, rows: list[dict], ref_arm: str, path: Path) -> None:
    """Paired differences to the reference arm against the geometry error in pixels.

    One panel per metric of :data:`FIGURE_METRICS`; colour = refiner, marker = arm. Small faint
    points: one test skull (its seed-mean difference at its own geometry error); large points
    with bars: the arm's mean difference and bootstrap interval (``rows``) at the arm's mean
    geometry error, nudged sideways per refiner so that refiners sharing an arm do not hide
    each other; hollow large points: arms evaluated with fewer training seeds than the
    refiner's others (a partial study). The reference arm is the zero line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from .._atomic import atomic_path
    from .evaluation import _col

    panels = [m for m in FIGURE_METRICS if m in plan["report"]["metrics"]] or list(plan["report"]["metrics"][:3])
    arms = [a for a in plan["arms"] if a != ref_arm]
    refiners = list(plan["refiners"])
    markers = "osD^v<>P*Xhd"
    colors = plt.get_cmap("tab10")
    nudge = {label: 1.09 ** (ri - (len(refiners) - 1) / 2) for ri, label in enumerate(refiners)}
    any_partial = False
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels) + 2.8, 4.4), layout="constrained",
                             squeeze=False)
    for ax, m in zip(axes[0], panels):
        ax.axhline(0.0, color="0.3", lw=0.8)
        skull_y, bar_y, all_x = [], [0.0], [0.1]
        for sr in _figure_series(plan, res, rows, ref_arm, m):
            style = {"marker": markers[arms.index(sr["arm"]) % len(markers)],
                     "color": colors(refiners.index(sr["refiner"]) % 10)}
            ax.scatter(sr["x"], sr["y"], s=7, alpha=0.18, linewidths=0, **style)
            skull_y += [v for v in sr["y"] if math.isfinite(v)]
            all_x += [v for v in sr["x"] if math.isfinite(v)]
            if sr["n"]:
                bar_y += [sr["lo"], sr["hi"]]
                hollow = {"mfc": "white", "mec": style["color"], "mew": 1.4} if sr["partial"] else {}
                ax.errorbar([sr["mean_x"] * nudge[sr["refiner"]]], [sr["mean"]],
                            yerr=[[sr["mean"] - sr["lo"]], [sr["hi"] - sr["mean"]]],
                            **({"ms": 7, "mec": "k", "mew": 0.6} | hollow),
                            elinewidth=1.2, capsize=2, linestyle="", zorder=3, **style)
                any_partial = any_partial or sr["partial"]
        # the axis shows every interval and the central 95 % of the skulls; the rest are counted
        if skull_y:
            lo = min(min(bar_y), float(np.percentile(skull_y, 2.5)))
            hi = max(max(bar_y), float(np.percentile(skull_y, 97.5)))
            pad = 0.08 * (hi - lo) or 1e-3
            ax.set_ylim(lo - pad, hi + pad)
            outside = sum(not lo - pad <= v <= hi + pad for v in skull_y)
            if outside:
                ax.text(0.99, 0.01, f"{outside} skull points beyond the axis", transform=ax.transAxes,
                        ha="right", va="bottom", fontsize=7, color="0.35")
        ax.set_xscale("symlog", linthresh=0.1)
        ax.set_xlim(0, 1.6 * max(all_x))
        ax.set_xlabel("geometry error told vs true (px, mean over views)")
        ax.set_ylabel(f"Δ {_col(m)} vs {ref_arm}")
        ax.grid(alpha=0.3)

    def handle(marker, color, label):
        return Line2D([], [], linestyle="", marker=marker, color=color, label=label)

    ref_handles = [handle("o", colors(ri % 10), label) for ri, label in enumerate(refiners)
                   if (label, ref_arm) in res]
    arm_handles = [handle(markers[ai % len(markers)], "0.35", f"{arm} ({plan['arms'][arm]['kind']})")
                   for ai, arm in enumerate(arms) if any((label, arm) in res for label in refiners)]
    if any_partial:
        arm_handles.append(Line2D([], [], linestyle="", marker="o", color="0.35", mfc="white", mew=1.4,
                                  label="hollow: fewer training seeds\nthan the refiner's other arms"))
    fig.legend(handles=ref_handles + arm_handles, loc="outside right upper", fontsize=7,
               title="refiner (colour), arm (marker)", title_fontsize=7)
    fig.suptitle(f"{plan['name']}: paired difference to the {ref_arm} arm per test skull (faint) and mean with "
                 f"{plan['report']['level']:.0%} bootstrap interval (large)", fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
