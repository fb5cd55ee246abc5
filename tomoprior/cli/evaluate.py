"""``tomoprior evaluate``: score refiners on a dataset split, compare several in one run, and the
miscalibration study (nominal-correct / miscalibrated / calibrated).

Refiner specifications (``--refiner`` with ``--checkpoint``/``--config``, and each ``--compare``
entry ``LABEL=SPEC``):

- ``NAME``                       built from its default config (``refiners.load``)
- ``NAME:key=value;key=value``   built with these config fields (values parsed as YAML scalars)
- ``path/to/ckpt.pt``            ``Refiner.from_checkpoint`` (the refiner named in the file)
- ``NAME@path/to/ckpt.pt``       the same, insisting the checkpoint holds a ``NAME`` refiner

``bp-prior`` without an explicit ``normalization`` is evaluated as the chord-normalised prior
(mean attenuation along each ray, 1/mm) with ``gain``/``offset`` fitted by least squares on the
train split (``--no-fit-bp-prior`` keeps the config as given).

``atlas`` without a checkpoint is built from every volume of the train split (the mean, or with
``atlas:mode=nearest`` the nearest training volumes), as ``tomoprior train --refiner atlas`` does.

``--fit-bone-threshold`` gives every refiner its own bone level for the prediction (the targets
keep ``mu > 0.035 /mm``): the level maximising its mean bone Dice on ``--fit-samples`` samples of
the train split (``tomoprior.studies.evaluation.fit_bone_threshold``, after any bp-prior fit).
Dice, ASSD and HD95 are then reported at that level; the table rows say which level each
refiner used and the fits (level, train Dice, Dice curve) are in the JSON files.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import click

CALIBRATIONS = ("residual", "exact", "bead")


class EvaluateError(click.ClickException):
    """Bad usage, unreadable input (data, checkpoints) or an unwritable ``--out``: exit code 2."""

    exit_code = 2


# --------------------------------------------------------------------------------------------
def _parse_value(text: str):
    from .._yaml import load_yaml

    try:
        return load_yaml(text, what="value")
    except ValueError:
        return text


def _parse_config(items, hint: str) -> dict:
    out = {}
    for item in items:
        for part in filter(None, (p.strip() for p in item.split(";"))):
            if "=" not in part:
                raise click.BadParameter(f"{part!r} must be key=value (e.g. use_bim=false)", param_hint=hint)
            k, v = (s.strip() for s in part.split("=", 1))
            out[k] = _parse_value(v)
    return out


def build_refiner(spec: str, *, checkpoint=None, config: dict | None = None, hint: str = "--refiner"):
    """Build or load a refiner from a CLI specification (see the module docstring).

    Returns ``(refiner, checkpoint_path_or_None)``; errors are ``click.BadParameter`` with the
    reason (unknown name listing the installed ones, a checkpoint of another refiner, ...).
    """
    from ..refiners import CheckpointWarning, Refiner, RefinerPluginError, available_refiners, load

    name, ckpt, cfg = spec.strip(), checkpoint, dict(config or {})
    if "@" in name:
        name, ckpt = (s.strip() for s in name.split("@", 1))
    elif ":" in name and not Path(name).exists():
        name, rest = name.split(":", 1)
        cfg.update(_parse_config([rest], hint))
    elif ckpt is None and (Path(name).is_file() or name.endswith((".pt", ".pth", ".ckpt"))):
        name, ckpt = None, name
    try:
        if ckpt is not None:
            if cfg:
                raise click.BadParameter("config fields cannot be combined with a checkpoint (the checkpoint holds "
                                         "the config)", param_hint=hint)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", CheckpointWarning)
                model = Refiner.from_checkpoint(ckpt)
            for w in caught:
                click.echo(f"warning: {w.message}", err=True)
            if name is not None and type(model).name != name:
                raise click.BadParameter(f"{ckpt} holds a {type(model).name!r} refiner, not {name!r}; pass "
                                         f"--refiner {type(model).name} or another checkpoint", param_hint=hint)
            return model, str(ckpt)
        if name not in available_refiners():
            raise click.BadParameter(f"unknown refiner {name!r}; installed: {', '.join(available_refiners())}",
                                     param_hint=hint)
        return load(name, **cfg), None
    except (ValueError, TypeError, RefinerPluginError) as exc:
        raise click.BadParameter(str(exc), param_hint=hint) from exc


def _compare_specs(values) -> list[tuple[str, str]]:
    out = []
    for value in values:
        for part in filter(None, (p.strip() for p in value.split(","))):
            if "=" not in part.split(":", 1)[0].split("@", 1)[0]:
                raise click.BadParameter(f"{part!r} must be LABEL=SPEC, e.g. 'no-bim=run_nobim/best.pt' or "
                                         "'bp-ray=bp-prior:normalization=ray'", param_hint="--compare")
            label, spec = (s.strip() for s in part.split("=", 1))
            if not label or not spec:
                raise click.BadParameter(f"{part!r}: empty label or spec", param_hint="--compare")
            out.append((label, spec))
    labels = [lbl for lbl, _ in out]
    if len(set(labels)) != len(labels):
        raise click.BadParameter(f"labels must be unique, got {labels}", param_hint="--compare")
    return out


def _prepare_bp_prior(model, explicit_cfg: dict, data, fit: bool, max_fit: int, echo) -> None:
    from ..refiners.bp_prior import BPPrior
    from ..studies.evaluation import fit_bp_prior

    if not isinstance(model, BPPrior) or getattr(model, "checkpoint_extra", None) is not None:
        return
    if "normalization" not in explicit_cfg:
        model.config.normalization = "chord"
    if "clamp_min" not in explicit_cfg:
        model.config.clamp_min = 0.0
    if fit and not ({"gain", "offset"} & set(explicit_cfg)):
        try:
            fit_bp_prior(model, data, "train", max_samples=max_fit)
        except ValueError as exc:
            raise EvaluateError(f"fitting bp-prior on the train split: {exc}") from exc
        echo(f"bp-prior: normalization={model.config.normalization}, gain={model.config.gain:.4f}, "
             f"offset={model.config.offset:.5f} /mm fitted on up to {max_fit} train samples")


def _prepare_atlas(model, data, echo) -> None:
    """An ``atlas`` given without a checkpoint (empty) is built from the train split."""
    from ..refiners.atlas import Atlas
    from ..studies.evaluation import fit_atlas

    if not isinstance(model, Atlas) or getattr(model, "checkpoint_extra", None) is not None or model.config.num_cases:
        return
    t0 = time.perf_counter()
    try:
        fit_atlas(model, data, "train")
    except ValueError as exc:
        raise EvaluateError(f"building the atlas from the train split: {exc}") from exc
    echo(f"atlas: mode={model.config.mode}, built from the {model.config.num_cases} train volumes in "
         f"{time.perf_counter() - t0:.1f} s")


@dataclass(frozen=True)
class EvaluateOptions:
    """The options of ``tomoprior evaluate``, one field per command-line option (see its
    ``--help``); ``data`` and ``refiner_spec`` are required, the rest have the CLI defaults."""

    data: str
    refiner_spec: str
    checkpoint: str | None = None
    config_items: tuple[str, ...] = ()
    label: str | None = None
    split: str = "test"
    compare: tuple[str, ...] = ()
    out: str | None = None
    miscalibration: str | None = None
    calibrations: str = "residual"
    fit_bp_prior: bool = True
    fit_bone_threshold: bool = False
    fit_samples: int = 16
    batch_size: int = 2
    device: str = "cpu"
    seed: int = 0
    max_samples: int | None = None
    output_to_mu: float | None = None
    groups: str = "all,normal,craniosynostosis"
    paired_label: str | None = None
    quiet: bool = False

    def common(self) -> dict:
        """Keyword arguments shared by every evaluation and study of the run."""
        return {"batch_size": self.batch_size, "device": self.device, "seed": self.seed,
                "max_samples": self.max_samples, "output_to_mu": self.output_to_mu}


@click.command()
@click.option("--data", "data", required=True, type=click.Path(dir_okay=False), help="Dataset file (.h5).")
@click.option("--refiner", "refiner_spec", required=True,
              help="Refiner name (or NAME:key=v;..., a checkpoint path, NAME@checkpoint).")
@click.option("--checkpoint", default=None, type=click.Path(dir_okay=False), help="Weights for --refiner.")
@click.option("--config", "config_items", multiple=True, help="Config field of --refiner, key=value (repeatable).")
@click.option("--label", default=None, help="Display name of --refiner (default: its name).")
@click.option("--split", default="test", show_default=True, type=click.Choice(["train", "val", "test"]))
@click.option("--compare", "compare", multiple=True,
              help="More refiners in the same run: LABEL=SPEC[,LABEL=SPEC...] (repeatable).")
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Folder for the JSON and Markdown results.")
@click.option("--miscalibration", default=None,
              help="Also run the miscalibration study: 'paper' (sdd=10,offset=2,tilt=1) or sizes like "
                   "'sdd=10,offset=2,tilt=1' (mm / deg, uniform +- per view).")
@click.option("--calibration", "calibrations", default="residual", show_default=True,
              help="Calibrated arm(s), comma-separated: residual (true geometry + SDD 1 mm, 0.2 px, 0.1 deg "
                   "residual error), exact (true geometry), bead (fit the bead cage with tomoprior.calibration).")
@click.option("--fit-bp-prior/--no-fit-bp-prior", default=True, show_default=True,
              help="Fit bp-prior's gain/offset on the train split (chord normalisation) unless given.")
@click.option("--fit-bone-threshold", is_flag=True,
              help="Score each refiner's bone (Dice, ASSD, HD95) at its own prediction level, fitted for the "
                   "best mean Dice on --fit-samples train samples (targets keep 0.035 /mm).")
@click.option("--fit-samples", default=16, show_default=True, type=click.IntRange(min=1),
              help="Train samples used to fit bp-prior (and the bone levels with --fit-bone-threshold).")
@click.option("--batch-size", default=2, show_default=True, type=click.IntRange(min=1))
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the perturbation draws.")
@click.option("--max-samples", default=None, type=click.IntRange(min=1), help="Evaluate only this many samples.")
@click.option("--output-to-mu", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Factor turning the refiners' outputs into 1/mm (default: from the checkpoint, else 1).")
@click.option("--groups", default="all,normal,craniosynostosis", show_default=True,
              help="Groups shown in the comparison tables (all, normal, craniosynostosis, variant:NAME).")
@click.option("--paired", "paired_label", default=None,
              help="Label of one refiner to compare skull by skull with every other one (mean and median "
                   "difference, fraction of skulls where it is better, Wilcoxon signed-rank p).")
@click.option("--quiet", is_flag=True, help="Only the tables.")
def evaluate(**options):
    """Evaluate refiners on a dataset split: PSNR (X2CT-GAN MAX 4095 and PSCT-Net MAX 2500), 3D SSIM,
    MAE, bone Dice, ASSD/HD95 (mm), projection consistency; normal vs craniosynostosis.

    Exit codes: 0 evaluated; 2 bad usage, unreadable data or checkpoint, non-finite weights or
    outputs, or an unwritable --out (checked before any evaluation).
    """
    from .._atomic import Terminated, signals_as_exceptions

    try:
        with signals_as_exceptions():
            _evaluate(EvaluateOptions(**options))
    except Terminated as exc:
        click.echo(f"tomoprior evaluate: {exc}; result files already written are complete, the others were not "
                   "written", err=True)
        sys.exit(128 + exc.signum)


def _evaluate(opts: EvaluateOptions) -> None:
    """Check every option, load the refiners, score each (bone-level fit, evaluation,
    miscalibration study), then print and write the tables and JSON files."""
    echo = (lambda *a, **k: None) if opts.quiet else (lambda msg: click.echo(msg, err=True))
    plan = _plan(opts)
    run = _Run(opts, plan, echo, {"dataset": str(opts.data), "split": opts.split, "refiners": {},
                                  "miscalibration": {}})
    models = [_load_refiner(opts, entry, echo) for entry in plan.entries]
    if opts.fit_bone_threshold:
        run.summary["bone_threshold_fits"] = {}
    for lbl, model, ckpt_path in models:
        run.score(lbl, model, ckpt_path)
    text = run.markdown()
    click.echo(text)
    if plan.out_dir is not None:
        _save(text, plan.out_dir / "results.md")
        _save(json.dumps(run.summary, indent=1) + "\n", plan.out_dir / "evaluation.json")
        echo(f"wrote {plan.out_dir}/results.md, evaluation.json and one JSON per refiner/study")


# -- option checks (all before any evaluation) ------------------------------------------------

@dataclass
class _Plan:
    """The checked options: groups of the tables, refiners to evaluate ``(label, spec,
    checkpoint, config, option)``, the miscalibration (or None), calibrated arms, result folder."""

    groups: list[str]
    entries: list[tuple]
    perturbation: object | None
    calibrations: list[str]
    out_dir: Path | None


def _plan(opts: EvaluateOptions) -> _Plan:
    """Check the options in the order of the command line's help; errors are ``click.BadParameter``."""
    from ..refiners import resolve_device

    try:
        resolve_device(opts.device, option="--device")
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--device") from exc
    groups = _check_groups(opts.groups)
    _check_splits(opts)
    entries = _refiner_entries(opts)
    pert = _perturbation(opts.miscalibration) if opts.miscalibration else None
    cal_modes = [c.strip() for c in opts.calibrations.split(",") if c.strip()]
    bad = [c for c in cal_modes if c not in CALIBRATIONS]
    if bad or not cal_modes:
        raise click.BadParameter(f"unknown calibration(s) {bad}; use {', '.join(CALIBRATIONS)}",
                                 param_hint="--calibration")
    out_dir = Path(opts.out) if opts.out else None
    if out_dir is not None:  # before any evaluation: a run must not fail at its end for want of a folder
        _prepare_out(out_dir)
    return _Plan(groups, entries, pert, cal_modes, out_dir)


def _check_groups(groups: str) -> list[str]:
    from ..studies.evaluation import check_group

    group_list = [g.strip() for g in groups.split(",") if g.strip()]
    if not group_list:
        raise click.BadParameter("give at least one group (all, normal, craniosynostosis, variant:NAME)",
                                 param_hint="--groups")
    try:
        return [check_group(g) for g in group_list]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--groups") from exc


def _check_splits(opts: EvaluateOptions) -> None:
    """The data file opens and holds the evaluated split (and a train split to fit bone levels on)."""
    from ..data import DatasetFile

    data, split = opts.data, opts.split
    try:
        with DatasetFile(data) as ds:
            counts = {s: ds.splits().count(s) for s in ("train", "val", "test")}
    except (ValueError, OSError) as exc:
        raise click.BadParameter(str(exc), param_hint="--data") from exc
    if counts[split] == 0:
        raise click.BadParameter(f"{data} has no sample in split {split!r} (samples per split: {counts})",
                                 param_hint="--split")
    if opts.fit_bone_threshold and counts["train"] == 0:
        raise click.BadParameter(f"{data} has no train sample to fit the bone levels on (samples per split: "
                                 f"{counts})", param_hint="--fit-bone-threshold")
    if opts.fit_bone_threshold and split == "train":
        click.echo("warning: --fit-bone-threshold fits the bone levels on the train split, which is the split "
                   "evaluated here: the bone metrics are optimistic", err=True)


def _refiner_entries(opts: EvaluateOptions) -> list[tuple]:
    """``(label, spec, checkpoint, config, option)`` of --refiner and each --compare entry."""
    main_cfg = _parse_config(opts.config_items, "--config")
    spec = opts.refiner_spec
    entries = [(opts.label or spec.split(":")[0].split("@")[0], spec, opts.checkpoint, main_cfg, "--refiner")]
    entries += [(lbl, s, None, {}, "--compare") for lbl, s in _compare_specs(opts.compare)]
    if len({e[0] for e in entries}) != len(entries):
        raise click.BadParameter("the --compare labels must differ from each other and from --label",
                                 param_hint="--compare")
    if opts.paired_label is not None and opts.paired_label not in {e[0] for e in entries}:
        raise click.BadParameter(f"{opts.paired_label!r} is not one of the evaluated labels "
                                 f"{[e[0] for e in entries]}", param_hint="--paired")
    return entries


def _perturbation(text: str):
    from ..data import GeometryPerturbation
    from ..studies.miscalibration import PAPER_MISCALIBRATION

    try:
        pert = PAPER_MISCALIBRATION if text.strip() == "paper" else GeometryPerturbation.parse(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--miscalibration") from exc
    if pert.is_zero:
        raise click.BadParameter("the miscalibration is zero", param_hint="--miscalibration")
    return pert


def _prepare_out(out_dir: Path) -> None:
    from .._atomic import check_writable

    if out_dir.exists() and not out_dir.is_dir():
        raise click.BadParameter(f"{out_dir} is a file; give a folder for the results", param_hint="--out")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        check_writable(out_dir, what="--out")
    except (OSError, ValueError) as exc:
        raise click.BadParameter(f"cannot write results to {out_dir}: {getattr(exc, 'strerror', None) or exc}; "
                                 "choose a writable folder", param_hint="--out") from exc


# -- the run ------------------------------------------------------------------------------------

def _save(obj, path: Path) -> None:
    """Write a result object (its ``save``) or a text, atomically; a failure is an :class:`EvaluateError`."""
    from .._atomic import disk_full_error, is_disk_full, write_text_atomic

    try:
        obj.save(path) if not isinstance(obj, str) else write_text_atomic(path, obj)
    except OSError as exc:
        if is_disk_full(exc):
            raise EvaluateError(str(disk_full_error(path, exc))) from exc
        raise EvaluateError(f"cannot write {path}: {exc.strerror or exc}; the files written before it are "
                            "complete, this one was not written") from exc


def _load_refiner(opts: EvaluateOptions, entry: tuple, echo) -> tuple:
    """Build or load one refiner (fitting bp-prior's level if asked): ``(label, model, checkpoint path)``."""
    lbl, spec, ckpt, cfg, hint = entry
    explicit = dict(cfg)
    if ":" in spec and "@" not in spec and not Path(spec).exists():
        explicit.update(_parse_config([spec.split(":", 1)[1]], hint))
    model, ckpt_path = build_refiner(spec, checkpoint=ckpt, config=cfg, hint=hint)
    _prepare_bp_prior(model, explicit, opts.data, opts.fit_bp_prior, opts.fit_samples, echo)
    _prepare_atlas(model, opts.data, echo)
    n_params = sum(p.numel() for p in model.parameters())
    if ckpt_path is None and n_params:
        click.echo(f"warning: {lbl!r} has {n_params} parameters but no checkpoint: its weights are untrained "
                   "(random); pass NAME@checkpoint.pt", err=True)
    return lbl, model, ckpt_path


@dataclass
class _Run:
    """Results gathered over the refiners: evaluations, miscalibration studies, bone-level
    fits, table row labels, and the ``evaluation.json`` summary."""

    opts: EvaluateOptions
    plan: _Plan
    echo: Callable
    summary: dict
    results: dict = field(default_factory=dict)
    studies: dict = field(default_factory=dict)
    fits: dict = field(default_factory=dict)    # label -> fit_bone_threshold result
    shown: dict = field(default_factory=dict)   # label -> row label of the tables

    def score(self, lbl: str, model, ckpt_path) -> None:
        """Fit the bone level (if asked), evaluate, and run the miscalibration study (if asked)."""
        level = None
        if self.opts.fit_bone_threshold:
            fit = self._fit_bone_level(lbl, model)
            self.fits[lbl], level = fit, fit["threshold_mu"]
            self.summary["bone_threshold_fits"][lbl] = fit
        self.shown[lbl] = _row_label(lbl, self.fits.get(lbl))
        self._evaluate(lbl, model, ckpt_path, level)
        if self.plan.perturbation is not None:
            self._study(lbl, model, ckpt_path, level)

    def _fit_bone_level(self, lbl: str, model) -> dict:
        from ..studies.evaluation import fit_bone_threshold

        opts = self.opts
        t0 = time.perf_counter()
        try:
            fit = fit_bone_threshold(model, opts.data, "train", max_samples=opts.fit_samples,
                                     output_to_mu=opts.output_to_mu, batch_size=opts.batch_size, device=opts.device)
        except (ValueError, TypeError) as exc:
            raise EvaluateError(f"fitting the bone level of {lbl!r} on the train split: {exc}") from exc
        self.echo(f"{lbl}: prediction bone level {fit['threshold_mu']:.4g} /mm (train Dice {fit['dice']:.3f}; "
                  f"{fit['dice_at_default']:.3f} at {fit['bone_threshold_mu']:g} /mm) fitted on {fit['n_samples']} "
                  f"train samples in {time.perf_counter() - t0:.1f} s" + (f"; {fit['note']}" if fit["note"] else ""))
        return fit

    def _evaluate(self, lbl: str, model, ckpt_path, level) -> None:
        from ..studies.evaluation import evaluate as run_evaluate

        t0 = time.perf_counter()
        try:
            res = run_evaluate(model, self.opts.data, self.opts.split, label=lbl, checkpoint=ckpt_path,
                               pred_bone_threshold_mu=level, **self.opts.common())
        except (ValueError, TypeError) as exc:
            raise EvaluateError(f"evaluating {lbl!r}: {exc}") from exc
        self.echo(f"{lbl}: {len(res.per_sample)} samples in {time.perf_counter() - t0:.1f} s")
        if lbl in self.fits:
            res.settings["bone_threshold_fit"] = self.fits[lbl]
        self.results[lbl] = res
        if self.plan.out_dir is not None:
            _save(res, self.plan.out_dir / f"{_safe(lbl)}.json")
            self.summary["refiners"][lbl] = f"{_safe(lbl)}.json"

    def _study(self, lbl: str, model, ckpt_path, level) -> None:
        from ..studies.miscalibration import bead_cage_calibrator, miscalibration_study

        cal = [bead_cage_calibrator() if mode == "bead" else mode for mode in self.plan.calibrations]
        t0 = time.perf_counter()
        try:
            st = miscalibration_study(model, self.opts.data, self.opts.split, perturbation=self.plan.perturbation,
                                      calibration=cal, label=lbl, checkpoint=ckpt_path, pred_bone_threshold_mu=level,
                                      **self.opts.common())
        except (ValueError, TypeError) as exc:
            raise EvaluateError(f"miscalibration study of {lbl!r}: {exc}") from exc
        self.echo(f"{lbl}: miscalibration study in {time.perf_counter() - t0:.1f} s")
        if lbl in self.fits:
            for arm in st.arms.values():
                arm.settings["bone_threshold_fit"] = self.fits[lbl]
        self.studies[lbl] = st
        if self.plan.out_dir is not None:
            name = f"miscalibration_{_safe(lbl)}.json"
            _save(st, self.plan.out_dir / name)
            self.summary["miscalibration"][lbl] = name

    def markdown(self) -> str:
        """``results.md``: bone-level fits, one comparison table per group, the paired
        comparisons (also added to the summary) and the miscalibration studies."""
        from ..studies.evaluation import compare_markdown, paired_comparison, paired_markdown

        opts, results, groups = self.opts, self.results, self.plan.groups
        md = [f"# tomoprior evaluate: `{opts.data}`, split `{opts.split}`", ""]
        if self.fits:
            md += _fits_markdown(self.fits)
        shown_results = {self.shown[lbl]: res for lbl, res in results.items()}
        for g in groups:
            md += [f"## {g}", "", compare_markdown(shown_results, group=g)]
        paired_label = opts.paired_label
        if paired_label is not None:
            self.summary["paired"] = {}
            md += [f"## paired per-skull comparisons of {paired_label} (same skulls; a minus b)", ""]
            for other, res in results.items():
                if other == paired_label:
                    continue
                md += [paired_markdown(results[paired_label], res)]
                self.summary["paired"][other] = paired_comparison(results[paired_label], res)
        if self.studies:
            md += [f"## miscalibration study ({_pert_text(self.plan.perturbation)}; refiner given the nominal "
                   "geometry)", ""]
            for lbl, st in self.studies.items():
                md += [f"### {self.shown[lbl]}; calibrated: {st.calibration}", ""]
                for g in groups:
                    md += [f"{g}:", "", st.to_markdown(group=g)]
                md += ["paired differences to nominal-correct (same skulls), all:", "", st.differences_markdown()]
        return "\n".join(md)


def _row_label(label: str, fit: dict | None) -> str:
    """Table row name: the label, plus the prediction's bone level when it was fitted."""
    if fit is None:
        return label
    if fit["note"]:
        return f"{label} (bone > {fit['threshold_mu']:.4g} /mm, fit found no bone: default kept)"
    return f"{label} (bone > {fit['threshold_mu']:.4g} /mm, fitted)"


def _fits_markdown(fits: dict) -> list[str]:
    """The fitted prediction bone levels as a Markdown section (lines)."""
    target = {f["bone_threshold_mu"] for f in fits.values()}
    lines = ["## bone levels (fitted on the train split)", "",
             f"Dice, ASSD and HD95 compare each prediction's `mu > level` with the targets' "
             f"`mu > {', '.join(f'{t:g}' for t in sorted(target))} /mm`; the level of each refiner maximises its "
             "mean bone Dice on the train samples (never the evaluated split). The other metrics use no level.", "",
             "| refiner | prediction bone level (1/mm) | train Dice at it | train Dice at the target level | "
             "train samples | note |",
             "| --- | --- | --- | --- | --- | --- |"]
    for lbl, f in fits.items():
        lines.append(f"| {lbl} | {f['threshold_mu']:.4g} | {f['dice']:.3f} | {f['dice_at_default']:.3f} | "
                     f"{f['n_samples']} | {f['note'] or ''} |")
    return [*lines, ""]


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


def _pert_text(p) -> str:
    return (f"source-to-detector ±{p.source_to_detector_mm:g} mm, detector offset ±{p.offset_mm:g} mm, "
            f"tilts ±{p.tilt_deg:g} deg" + (f", in-plane rotation ±{p.rotation_deg:g} deg" if p.rotation_deg else "")
            + (f", source-to-isocenter ±{p.source_to_isocenter_mm:g} mm" if p.source_to_isocenter_mm else ""))
