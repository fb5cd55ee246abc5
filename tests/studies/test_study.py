"""The resumable study runner (``tomoprior study``): the shipped smoke plan end to end, resume,
refusal of a changed plan, plan validation errors and the bootstrap interval."""

from __future__ import annotations

import json
import math
import shutil
import time

import numpy as np
import pytest
from click.testing import CliRunner

from tomoprior.cli.main import cli
from tomoprior.data import DatasetFile
from tomoprior.studies.plans import plan_path
from tomoprior.studies.study import (
    PlanError,
    _missing_needed,
    _step_name,
    _train_name,
    archive_study,
    bootstrap_ci,
    restore_study,
    run_study,
    study_report,
    study_steps,
    validate_plan,
)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The shipped smoke plan, run once for the module."""
    out = tmp_path_factory.mktemp("study") / "smoke"
    res = run_study(plan_path("smoke"), out, log=lambda s: None)
    return out, res


def _rows(out):
    rep = json.loads((out / "report" / "report.json").read_text())
    return {(r["refiner"], r["arm"]): r for r in rep["rows"]}, rep


def test_smoke_plan_end_to_end(smoke):
    out, res = smoke
    assert not res["stopped"] and res["steps_done"] == res["steps_total"] == len(res["ran"])
    plan = json.loads((out / "plan.json").read_text())["plan"]
    rows, rep = _rows(out)
    assert set(rows) == {(r, a) for r in plan["refiners"] for a in plan["arms"]}
    assert all(r["n"] >= 2 for r in rows.values())
    # the exact arm tells the refiner the geometry that made the X-rays
    assert all(rows[(r, "exact")]["geometry_error_px"] == 0 for r in plan["refiners"])
    # re-exposures share each skull's draws: the 5x arm's errors are the 1x arm's, five times larger
    # (the pixel error is close to linear in these small parameter errors)
    ratio = rows[("bp-prior", "paper-5x")]["geometry_error_px"] / rows[("bp-prior", "paper")]["geometry_error_px"]
    assert 4.0 < ratio < 6.0
    # the bead calibration recovers the perturbed geometry to a small fraction of a pixel
    assert rows[("bp-prior", "bead-5x")]["geometry_error_px"] < 0.1 * rows[("bp-prior", "paper-5x")][
        "geometry_error_px"]
    assert rows[("bp-prior", "pixel-0.83")]["geometry_error_px"] > 0.5
    # intervals bracket their mean; the atlas (mean volume) ignores the X-rays, so its volume
    # metrics do not change between arms at all
    for (ref, arm), r in rows.items():
        for m, ci in r["diff"].items():
            if ci["n"]:
                assert ci["lo"] <= ci["mean"] + 1e-12 and ci["mean"] <= ci["hi"] + 1e-12, (ref, arm, m)
        if ref == "atlas" and arm != "exact":
            assert r["diff"]["psnr_x2ctgan"]["mean"] == 0.0
    # a consistent pixel-scale error blurs bp-prior's back-projection: worse SSIM, tight interval
    assert rows[("bp-prior", "pixel-0.83")]["diff"]["ssim_x2ctgan"]["hi"] < 0
    # budgets: every step has wall and CPU time, PSCT-Net its optimiser steps and throughput
    steps = {b["step"]: b for b in rep["budgets"]}
    assert len(steps) == res["steps_total"] and all(b["wall_s"] > 0 and b["cpu_s"] >= 0 for b in steps.values())
    tr = steps["train/psctnet/base/seed0"]
    assert tr["steps"] == 2 and tr["samples_per_s"] > 0 and tr["train_cpu_s"] > 0
    assert (out / "report" / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report" / "report.md").read_text()
    assert "| psctnet | pose | pose |" in md and "95 % bootstrap" in md and md.count("Data: ") == 1
    assert "PARTIAL" not in md
    # the levels table: every refiner's exact arm in our conventions and the official code's
    levels = {r["refiner"]: r for r in rep["levels"]}
    assert set(levels) == set(plan["refiners"]) and "official slice PSNR" in md
    for label, r in levels.items():
        assert r["mean"]["psnr_x2ctgan"] == pytest.approx(rows[(label, "exact")]["mean"]["psnr_x2ctgan"])
        assert math.isfinite(r["mean"]["official_psnr_slice"]) and r["sd"]["official_ssim"] >= 0


def test_resume_skips_finished_steps_and_gives_the_same_report(smoke, tmp_path):
    out, res = smoke
    before = (out / "report" / "report.md").read_text(), (out / "report" / "report.json").read_text()
    again = run_study(plan_path("smoke"), out, resume=True, log=lambda s: None)
    assert again["ran"] == [] and len(again["skipped"]) == res["steps_total"]
    assert ((out / "report" / "report.md").read_text(), (out / "report" / "report.json").read_text()) == before


def test_interrupted_training_resumes_from_its_checkpoint(smoke, tmp_path):
    out, _ = smoke
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    # as if killed after the last checkpoint, before the done-marker: only that step runs again
    (copy / "done" / "train__psctnet__base__seed0.json").unlink()
    (copy / "runs" / "psctnet" / "base" / "seed0" / "best.pt").unlink()
    again = run_study(plan_path("smoke"), copy, resume=True, log=lambda s: None)
    assert again["ran"] == ["train/psctnet/base/seed0"]
    sessions = json.loads((copy / "runs" / "psctnet" / "base" / "seed0" / "study_budget.json").read_text())
    assert [s["resumed"] for s in sessions] == [False, True] and sessions[-1]["steps_at_end"] == 2


def test_an_interrupted_sitting_still_counts_in_the_training_budget(smoke, tmp_path, monkeypatch):
    import tomoprior.studies.training as training

    out, _ = smoke
    copy = tmp_path / "interrupted"
    shutil.copytree(out, copy)
    run = copy / "runs" / "psctnet" / "base" / "seed0"
    (copy / "done" / "train__psctnet__base__seed0.json").unlink()
    real = training.train

    def stopped(*args, **kwargs):  # a sitting that ends by Ctrl-C / a signal after some work
        time.sleep(0.2)
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "train", stopped)
    with pytest.raises(KeyboardInterrupt):
        run_study(plan_path("smoke"), copy, resume=True, log=lambda s: None)
    sessions = json.loads((run / "study_budget.json").read_text())
    # was lost: the budget only recorded sittings that finished
    assert len(sessions) == 2 and sessions[-1]["interrupted"] and sessions[-1]["wall_s"] >= 0.2
    monkeypatch.setattr(training, "train", real)
    run_study(plan_path("smoke"), copy, resume=True, log=lambda s: None)
    sessions = json.loads((run / "study_budget.json").read_text())
    assert [s.get("interrupted", False) for s in sessions] == [False, True, False]
    rec = json.loads((copy / "done" / "train__psctnet__base__seed0.json").read_text())
    assert rec["budget"]["sessions"] == 3
    assert rec["budget"]["train_wall_s"] == pytest.approx(sum(s["wall_s"] for s in sessions))


def test_run_order_reports_cheap_refiners_before_long_trainings(smoke):
    out, _ = smoke
    plan = json.loads((out / "plan.json").read_text())["plan"]
    order = study_steps(plan)["order"]
    # refiner by refiner in plan order: every bp-prior step before the first PSCT-Net training
    labels = [o[1] for o in order]
    assert labels == sorted(labels, key=list(plan["refiners"]).index)
    # each evaluation follows the training of its own refiner, seed and training set
    current = None
    for o in order:
        if o[0] == "train":
            current = o
        else:
            arm = plan["arms"][o[3]]
            trained_on_base = arm["kind"] not in ("consistent", "augmented")
            assert current[1] == o[1] and current[3] == o[2] and (current[2] == "base") == trained_on_base, (current, o)


def test_figure_draws_paired_differences_against_geometry_error(smoke):
    from tomoprior.studies.study import _figure_series, _load_results

    out, _ = smoke
    plan = json.loads((out / "plan.json").read_text())["plan"]
    rows, _ = _rows(out)
    res = _load_results(out, plan)
    series = _figure_series(plan, res, list(rows.values()), "exact", "dice_bone")
    # every refiner and arm but the reference (the zero line)
    assert {(s["refiner"], s["arm"]) for s in series} == {k for k in rows if k[1] != "exact"}
    for s in series:
        row = rows[(s["refiner"], s["arm"])]
        # the skull points are the paired differences the table's interval summarises
        y = [v for v in s["y"] if math.isfinite(v)]
        assert len(s["x"]) == row["n"] and len(y) == row["diff"]["dice_bone"]["n"]
        assert np.mean(y) == pytest.approx(s["mean"]) and s["mean"] == row["diff"]["dice_bone"]["mean"]
        assert np.mean(s["x"]) == pytest.approx(s["mean_x"]) and s["lo"] <= s["mean"] <= s["hi"]
    # the mean atlas ignores the X-rays: all its skull points sit on the zero line
    assert all(v == 0.0 for s in series if s["refiner"] == "atlas" for v in s["y"])


def _copy_with_two_psctnet_seeds(smoke, folder):
    """A copy of the finished smoke study (no report) whose plan record gives PSCT-Net training
    seeds 0 and 1; returns ``(copy, plan)``. Seed 1's evaluations are for the caller to add."""
    out, _ = smoke
    copy = folder
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "report")
    rec = json.loads((copy / "plan.json").read_text())
    rec["plan"]["refiners"]["psctnet"]["train"]["seeds"] = [0, 1]
    (copy / "plan.json").write_text(json.dumps(rec))
    return copy, rec["plan"]


def test_report_shows_the_run_to_run_spread_of_two_training_seeds(smoke, tmp_path):
    # a second PSCT-Net seed: the first one's evaluations, every skull 1 dB better in the exact arm only
    copy, _ = _copy_with_two_psctnet_seeds(smoke, tmp_path / "seeds")
    shutil.copytree(copy / "eval" / "psctnet" / "seed0", copy / "eval" / "psctnet" / "seed1")
    exact = copy / "eval" / "psctnet" / "seed1" / "exact.json"
    doc = json.loads(exact.read_text())
    for s in doc["per_sample"]:
        s["psnr_x2ctgan"] += 1.0
    exact.write_text(json.dumps(doc))
    md = study_report(copy, figure=False, partial=True).read_text()
    _, rep = _rows(copy)
    spread = {(r["refiner"], r["arm"], r["metric"]): r for r in rep["seed_spread"]}
    # only the refiner with two seeds; its exact-arm level per seed, 1 dB apart
    assert {k[0] for k in spread} == {"psctnet"}
    lvl = spread[("psctnet", "exact", "psnr_x2ctgan")]
    assert lvl["seeds"] == [0, 1] and lvl["per_seed"][1] - lvl["per_seed"][0] == pytest.approx(1.0)
    assert lvl["spread"] == pytest.approx(1.0)
    # other arms: the paired difference to exact per seed; seed 1's is 1 dB lower (its exact is higher)
    d = spread[("psctnet", "paper", "psnr_x2ctgan")]
    assert d["per_seed"][0] - d["per_seed"][1] == pytest.approx(1.0)
    # Dice untouched: both seeds equal
    assert spread[("psctnet", "paper", "dice_bone")]["spread"] == pytest.approx(0.0, abs=1e-12)
    assert "Training seeds, run to run" in md and "| psctnet | exact | PSNR" in md


def test_partial_report_of_an_unfinished_study(smoke, tmp_path):
    out, _ = smoke
    full, _ = _rows(out)
    copy = tmp_path / "partial"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "report")
    # as if PSCT-Net had not been evaluated yet and the atlas had stopped before its pose arm
    for marker in [*(copy / "done").glob("eval__psctnet__*"), copy / "done" / "eval__atlas__seed0__pose.json"]:
        marker.unlink()
    shutil.rmtree(copy / "eval" / "psctnet")
    (copy / "eval" / "atlas" / "seed0" / "pose.json").unlink()
    with pytest.raises(PlanError, match="--partial"):
        study_report(copy, figure=False)
    md = study_report(copy, figure=False, partial=True).read_text()
    rows, rep = _rows(copy)
    assert "**PARTIAL:" in md and "`eval/atlas/seed0/pose`" in md
    assert not any(r == "psctnet" for r, _ in rows) and ("atlas", "pose") not in rows and ("atlas", "paper") in rows
    assert rep["status"]["done"] < rep["status"]["total"]
    # what is there is reported exactly as in the finished study
    for key, r in rows.items():
        assert r["diff"] == full[key]["diff"] and r["seeds"] == [0]
    # nothing to compare yet: a clear error, also for --partial
    for f in (copy / "eval").rglob("exact.json"):
        f.unlink()
    with pytest.raises(PlanError, match="nothing to compare"):
        study_report(copy, figure=False, partial=True)


def test_changed_plan_and_reused_folder_are_refused(smoke, tmp_path):
    out, _ = smoke
    with pytest.raises(PlanError, match="already holds this study; pass --resume"):
        run_study(plan_path("smoke"), out, log=lambda s: None)
    changed = tmp_path / "changed.yaml"
    changed.write_text(plan_path("smoke").read_text().replace("  n: 8", "  n: 9"))
    with pytest.raises(PlanError, match=r"another plan .*changed: data\.n"):
        run_study(changed, out, resume=True, log=lambda s: None)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("x")
    with pytest.raises(PlanError, match="not empty and holds no study"):
        run_study(plan_path("smoke"), tmp_path / "busy", log=lambda s: None)


def _plan(**changes):
    p = {"data": {"n": 6, "grid": 16, "binning": 96}, "refiners": {"bp-prior": {}},
         "arms": {"exact": {"kind": "exact"}}}
    for path, value in changes.items():
        node = p
        keys = path.split("__")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return p


@pytest.mark.parametrize("changes, message", [
    ({"colour": 1}, r"unknown key\(s\) \['colour'\]"),
    ({"data__binning": 7}, r"data\.binning: must divide"),
    ({"data__phantom": "teapot"}, r"data\.phantom: must be one of"),
    ({"data__n": "many"}, r"data\.n: must be an integer"),
    ({"data__realism": "photoreal"}, r"data\.realism: unknown realism preset"),
    ({"refiners__bp-prior": {"refiner": "nope"}}, r"refiners\.bp-prior\.refiner: unknown refiner 'nope'"),
    ({"refiners__bp-prior": {"width": 8}}, r"refiners\.bp-prior\.width: width is for refiners"),
    ({"refiners__bp-prior": {"config": {"gian": 1}}}, r"refiners\.bp-prior\.config: unknown field\(s\) \['gian'\]"),
    ({"refiners__bp-prior": {"train": {"seeds": []}}}, r"refiners\.bp-prior\.train\.seeds: must be a non-empty"),
    ({"arms__bad": {"kind": "wobbly"}}, r"arms\.bad\.kind: must be one of"),
    ({"arms__bad": {"kind": "miscalibrated", "scale": -1}}, r"arms\.bad\.scale: must be > 0"),
    ({"arms__bad": {"kind": "miscalibrated", "perturb": {"sdd": 0}}}, r"arms\.bad\.perturb: is all zero"),
    ({"arms__bad": {"kind": "exact", "scale": 2}}, r"arms\.bad: key\(s\) \['scale'\] do not apply"),
    ({"arms__bad": {"kind": "consistent"}}, r"arms\.bad: a 'consistent' arm needs mismatch"),
    ({"arms__bad": {"kind": "consistent", "mismatch": {"pitch": 2}}}, r"arms\.bad\.mismatch: unknown key"),
    ({"arms__bad": {"kind": "calibrated", "calibration": "magic"}}, r"arms\.bad\.calibration: must be one of"),
    ({"arms__exact": {"kind": "pose"}}, r"arms: need exactly one arm of kind 'exact'"),
    ({"report__metrics": ["psnr"]}, r"report\.metrics: must be a non-empty list"),
    ({"refiners__bp-prior": {"arms": ["exact", "nope"]}}, r"refiners\.bp-prior\.arms: unknown arm\(s\) \['nope'\]"),
    ({"arms__5x": {"kind": "miscalibrated", "scale": 5}, "refiners__bp-prior": {"arms": ["5x"]}},
     r"refiners\.bp-prior\.arms: must include the exact arm 'exact'"),
    ({"refiners__bp-prior": {"arms": "exact"}}, r"refiners\.bp-prior\.arms: must be a non-empty list"),
])
def test_bad_plans_name_the_key(changes, message):
    with pytest.raises(PlanError, match=message):
        validate_plan(_plan(**changes), "p.yaml")


def test_defaults_of_a_minimal_plan():
    p = validate_plan(_plan(**{"arms__5x": {"kind": "miscalibrated", "scale": 5}}))
    assert p["arms"]["5x"]["perturb"] == {"source_to_detector_mm": 50.0, "offset_mm": 10.0, "tilt_deg": 5.0}
    assert p["refiners"]["bp-prior"]["train"]["seeds"] == [0] and p["report"]["level"] == 0.95


def test_seed_major_order_and_refiner_arm_lists():
    arms = {"exact": {"kind": "exact"}, "5x": {"kind": "miscalibrated", "scale": 5},
            "px": {"kind": "consistent", "mismatch": {"pixel_scale": 0.9}}}
    two = {"refiner": "bp-prior", "train": {"seeds": [3, 4]}, "arms": ["exact", "5x"]}
    p = validate_plan(_plan(arms=arms, refiners={"bp-prior": {}, "two": two}))
    assert "arms" not in p["refiners"]["bp-prior"]  # absent unless given: older plans keep their hash
    order = study_steps(p)["order"]
    # every refiner's first seed before any second seed; `two` trains once per seed (base only)
    assert order.index(("train", "two", "base", 4)) > max(i for i, o in enumerate(order) if o[1] == "bp-prior")
    assert [o for o in order if o[1] == "two"] == [
        ("train", "two", "base", 3), ("eval", "two", 3, "exact"), ("eval", "two", 3, "5x"),
        ("train", "two", "base", 4), ("eval", "two", 4, "exact"), ("eval", "two", 4, "5x")]
    assert sum(o[0] == "train" for o in order if o[1] == "bp-prior") == 2  # base and the consistent set


def test_bootstrap_interval_on_a_known_case():
    rng = np.random.default_rng(3)
    x = rng.normal(2.0, 1.0, 400)
    ci = bootstrap_ci(x, n_boot=4000, seed=1)
    se = 1.0 / math.sqrt(400)
    assert ci["lo"] < 2.0 < ci["hi"] or abs(ci["mean"] - 2.0) > 2 * se  # true mean inside (this draw: yes)
    assert ci["lo"] < ci["mean"] < ci["hi"]
    assert ci["hi"] - ci["lo"] == pytest.approx(2 * 1.96 * x.std(ddof=1) / math.sqrt(400), rel=0.15)
    assert bootstrap_ci(x, n_boot=4000, seed=1) == ci  # seeded
    assert bootstrap_ci([0.5] * 7) == {"mean": 0.5, "lo": 0.5, "hi": 0.5, "n": 7, "n_undefined": 0}
    one = bootstrap_ci([1.0, math.nan])
    assert (one["mean"], one["lo"], one["hi"], one["n"], one["n_undefined"]) == (1.0, 1.0, 1.0, 1, 1)
    assert math.isnan(bootstrap_ci([math.nan])["mean"])


def test_cli_report_and_bad_plan(smoke, tmp_path):
    out, _ = smoke
    r = CliRunner().invoke(cli, ["study", "report", str(out), "--no-figure"])
    assert r.exit_code == 0 and "| bp-prior | paper-5x | miscalibrated |" in r.output
    r = CliRunner().invoke(cli, ["study", "report", str(tmp_path), "--partial"])
    assert r.exit_code == 2 and "is not a study folder (no plan.json)" in r.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {n: 6, grid: 16}\nrefiners: {bp-prior: {}}\narms: {exact: {kind: exact, tilt: 1}}\n")
    r = CliRunner().invoke(cli, ["study", "run", str(bad), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "arms.exact: unknown key(s) ['tilt']" in r.output
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00plan")
    r = CliRunner().invoke(cli, ["study", "run", str(binary), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and f"plan file {binary} is not UTF-8 text" in r.output, r.output
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    r = CliRunner().invoke(cli, ["study", "run", str(plan_path("smoke")), "--out", str(blocker / "sub")])
    assert r.exit_code == 2 and f"--out {blocker / 'sub'} cannot be made" in r.output, r.output


def _eval_records(folder, label):
    """Per-skull results of a refiner's evaluations, without their timings."""
    return {p.relative_to(folder).as_posix(): [{k: v for k, v in r.items() if not k.endswith("seconds")}
                                               for r in json.loads(p.read_text())["per_sample"]]
            for p in sorted((folder / "eval" / label).rglob("*.json"))}


def test_ledger_of_a_finished_study_restores_without_recomputing(smoke, tmp_path):
    """The ledger (plan, markers, evaluations, logs, report; no data, no checkpoint once every
    evaluation is done) restores into a folder that a resumed run finds finished."""
    out, res = smoke
    ledger = tmp_path / "ledger"
    man = archive_study(out, ledger)
    files = {p.relative_to(ledger).as_posix() for p in ledger.rglob("*") if p.is_file()}
    assert not any(f.endswith((".h5", ".pt")) for f in files) and man["checkpoints"] == []
    assert "done/data__base.json" in files and "eval/psctnet/seed0/exact.json" in files
    assert man["steps_done"] == man["steps_total"] == res["steps_total"]
    assert files == {*man["files"], "ledger.json"}
    # archiving again changes nothing; a README beside the files survives it
    (ledger / "README.md").write_text("the referee study\n")
    assert archive_study(out, ledger) == man and (ledger / "README.md").is_file()

    back = tmp_path / "back"
    restored = restore_study(ledger, back)
    assert len(restored["copied"]) == len(man["files"]) and restored["kept"] == []
    again = run_study(plan_path("smoke"), back, resume=True, log=lambda s: None)
    assert again["ran"] == [] and not again["stopped"]
    assert not list(back.rglob("*.h5"))  # nothing needed the data
    assert json.loads((back / "report" / "report.json").read_text())["rows"] == \
        json.loads((out / "report" / "report.json").read_text())["rows"]


def test_ledger_carries_a_training_under_way_to_a_new_machine(smoke, tmp_path):
    """As if the machine were lost while PSCT-Net trained: the ledger carries its last.pt, the
    restored run makes the data it needs again (same content digest), resumes the training on
    it and ends with the same evaluations as the uninterrupted study."""
    out, _ = smoke
    work = tmp_path / "work"
    shutil.copytree(out, work)
    plan = json.loads((out / "plan.json").read_text())["plan"]
    base_arms = [a for a in plan["arms"] if _train_name(plan["arms"][a]) == "base"]
    for arm in base_arms:
        (work / "done" / f"eval__psctnet__seed0__{arm}.json").unlink()
        (work / "eval" / "psctnet" / "seed0" / f"{arm}.json").unlink()
    (work / "done" / "train__psctnet__base__seed0.json").unlink()
    ledger = tmp_path / "ledger"
    man = archive_study(work, ledger)
    # the state to resume and the best epoch so far (a resumed run may not beat it)
    assert man["checkpoints"] == ["runs/psctnet/base/seed0/last.pt", "runs/psctnet/base/seed0/best.pt"]
    assert not list(ledger.rglob("*.h5"))

    back = tmp_path / "back"
    restore_study(ledger, back)
    logs = []
    again = run_study(plan_path("smoke"), back, resume=True, log=logs.append)
    assert not again["stopped"]
    base = json.loads((back / "done" / "data__base.json").read_text())
    assert again["ran"][0] == "data/base" and "train/psctnet/base/seed0" in again["ran"]
    assert any("data/base: done before, but its data file is missing" in s for s in logs)
    with DatasetFile(out / "data" / "base.h5") as ds:
        assert base["content_sha256"] == ds.content_sha256()
    assert base["reproduced"] is True  # the original run recorded the digest the re-make matches
    sessions = json.loads((back / "runs" / "psctnet" / "base" / "seed0" / "study_budget.json").read_text())
    assert sessions[-1]["resumed"] is True
    assert _eval_records(back, "psctnet") == _eval_records(out, "psctnet")
    # only the data PSCT-Net's arms need was made again: bp-prior and the atlas were done
    assert not any(s.startswith(("eval/bp-prior", "eval/atlas")) for s in again["ran"])

    # a finished training whose checkpoint is lost while an evaluation is left is trained again
    lost = tmp_path / "lost"
    shutil.copytree(back, lost)
    for f in (lost / "runs" / "psctnet" / "base" / "seed0").glob("*.pt"):
        f.unlink()
    (lost / "done" / "eval__psctnet__seed0__pose.json").unlink()
    steps = study_steps(json.loads((lost / "plan.json").read_text())["plan"])
    assert _missing_needed(json.loads((lost / "plan.json").read_text())["plan"], lost, steps) == \
        ["train/psctnet/base/seed0"]


def test_cli_archive_and_restore_refuse_what_would_mix_studies(smoke, tmp_path):
    out, _ = smoke
    ledger = tmp_path / "ledger"
    r = CliRunner().invoke(cli, ["study", "archive", str(out), str(ledger)])
    assert r.exit_code == 0 and "0 checkpoint(s)" in r.output, r.output
    r = CliRunner().invoke(cli, ["study", "restore", str(ledger), "--out", str(tmp_path / "b")])
    assert r.exit_code == 0 and "--resume" in r.output, r.output
    # a folder of another plan, a damaged ledger, a folder that is no study
    other = tmp_path / "other"
    other.mkdir()
    (other / "plan.json").write_text(json.dumps({"sha256": "0" * 64, "plan": {}}))
    r = CliRunner().invoke(cli, ["study", "restore", str(ledger), "--out", str(other)])
    assert r.exit_code == 2 and "another plan" in r.output
    victim = next(ledger.glob("eval/*/*/*.json"))
    victim.write_text(victim.read_text() + " ")
    r = CliRunner().invoke(cli, ["study", "restore", str(ledger), "--out", str(tmp_path / "c")])
    assert r.exit_code == 2 and "damaged" in r.output and not (tmp_path / "c").exists()
    (ledger / "ledger.json").write_text('{"files": []}')
    r = CliRunner().invoke(cli, ["study", "restore", str(ledger), "--out", str(tmp_path / "d")])
    assert r.exit_code == 2 and "not a ledger manifest" in r.output, r.output
    r = CliRunner().invoke(cli, ["study", "archive", str(tmp_path), str(tmp_path / "l2")])
    assert r.exit_code == 2 and "no plan.json" in r.output


def test_report_compares_the_learned_refiners_with_every_other_refiner(smoke):
    """The exact arm's refiner-against-refiner table: per skull a's seed mean minus b's, the
    mean of those differences, for each learned refiner against every other one."""
    out, _ = smoke
    _, rep = _rows(out)
    pairs = {(r["a"], r["b"]): r for r in rep["refiner_pairs"]}
    assert set(pairs) == {("psctnet", "bp-prior"), ("psctnet", "atlas")}
    per = {}
    for label in ("psctnet", "atlas"):
        ev = json.loads((out / "eval" / label / "seed0" / "exact.json").read_text())
        per[label] = {s["index"]: s for s in ev["per_sample"]}
    for m in ("psnr_x2ctgan", "dice_bone"):
        d = [per["psctnet"][i][m] - per["atlas"][i][m] for i in sorted(per["psctnet"])]
        ci = pairs[("psctnet", "atlas")]["diff"][m]
        assert ci["n"] == len(d) and abs(ci["mean"] - float(np.mean(d))) < 1e-9 and ci["lo"] <= ci["mean"] <= ci["hi"]
    md = (out / "report" / "report.md").read_text()
    assert "| psctnet - atlas |" in md and "against each other" in md


def test_a_damaged_plan_record_is_named_not_a_traceback(smoke, tmp_path):
    """plan.json records which plan a folder (or a ledger) holds: truncated or edited, every
    command that reads it stops with exit code 2 and names the file, in the folder and in a
    ledger alike."""
    out, _ = smoke
    ledger = tmp_path / "ledger"
    assert CliRunner().invoke(cli, ["study", "archive", str(out), str(ledger)]).exit_code == 0
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    for damage in ('{"sha256": "ab', '{"plan": {}}', '[1, 2]'):
        (copy / "plan.json").write_text(damage)
        for args in (["study", "report", str(copy), "--partial", "--no-figure"],
                     ["study", "archive", str(copy), str(tmp_path / "l2")],
                     ["study", "run", str(plan_path("smoke")), "--out", str(copy), "--resume"],
                     ["study", "restore", str(ledger), "--out", str(copy)]):
            r = CliRunner().invoke(cli, args)
            assert r.exit_code == 2 and f"{copy / 'plan.json'} is damaged" in r.output, (args, r.output)
    (ledger / "plan.json").write_text("{")
    r = CliRunner().invoke(cli, ["study", "archive", str(out), str(ledger)])
    assert r.exit_code == 2 and f"{ledger / 'plan.json'} is damaged" in r.output, r.output


def test_resume_adds_the_content_digest_to_data_made_before_it_was_recorded(smoke, tmp_path):
    out, _ = smoke
    copy = tmp_path / "old"
    shutil.copytree(out, copy)
    marker = copy / "done" / "data__base.json"
    rec = json.loads(marker.read_text())
    digest = rec.pop("content_sha256")
    marker.write_text(json.dumps(rec))
    assert run_study(plan_path("smoke"), copy, resume=True, log=lambda s: None)["ran"] == []
    rec = json.loads(marker.read_text())
    assert rec["content_sha256"] == digest and rec["content_sha256_added_later"] is True


def test_report_repeats_calibrated_arms_over_the_calibrations_that_pass_qa(smoke, tmp_path):
    """Every bead calibration carries its QA verdict; the report shows the calibrated arms again
    without the skulls whose calibration QA rejected (a site repeats such a calibration)."""
    out, _ = smoke
    rows, rep = _rows(out)
    qa = {(r["refiner"], r["arm"]): r for r in rep["qa_passed"]}
    plan = json.loads((out / "plan.json").read_text())["plan"]
    calibrated = {(r, a) for (r, a) in rows if plan["arms"][a]["kind"] == "calibrated"}
    assert calibrated and set(qa) == calibrated
    for key, r in qa.items():
        assert r["n"] + r["n_rejected"] == rows[key]["n"]
    # one calibration rejected: that skull leaves the QA rows (and only those)
    copy = tmp_path / "qa"
    shutil.copytree(out, copy)
    label, arm = sorted(calibrated)[0]
    path = copy / "eval" / label / "seed0" / f"{arm}.json"
    ev = json.loads(path.read_text())
    ev["per_sample"][0]["geometry_info"]["qa"].update(passed=False, failed=["heldout_rms"])
    path.write_text(json.dumps(ev))
    md = study_report(copy, figure=False).read_text()
    rows2, rep2 = _rows(copy)
    r = next(x for x in rep2["qa_passed"] if (x["refiner"], x["arm"]) == (label, arm))
    assert r["n_rejected"] == qa[(label, arm)]["n_rejected"] + 1 and r["n"] == qa[(label, arm)]["n"] - 1
    assert rows2[(label, arm)]["n"] == rows[(label, arm)]["n"]
    assert f"{label} {arm}: {r['n_rejected']} (their geometry error" in md and "passed its QA" in md


def test_figure_marks_arms_with_fewer_training_seeds_as_partial(smoke, tmp_path):
    from tomoprior.studies.study import _figure_series, _load_results

    copy, plan = _copy_with_two_psctnet_seeds(smoke, tmp_path / "partial-seeds")
    # seed 1 evaluated in the exact arm and one other arm only (a study under way)
    arms = sorted(p.stem for p in (copy / "eval" / "psctnet" / "seed0").glob("*.json"))
    other = next(a for a in arms if a != "exact")
    (copy / "eval" / "psctnet" / "seed1").mkdir(parents=True)
    for arm in ("exact", other):
        shutil.copy(copy / "eval" / "psctnet" / "seed0" / f"{arm}.json", copy / "eval" / "psctnet" / "seed1")
    study_report(copy, figure=True, partial=True)
    assert (copy / "report" / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows, _ = _rows(copy)
    series = _figure_series(plan, _load_results(copy, plan, partial=True), list(rows.values()), "exact",
                            "dice_bone")
    flags = {(s["refiner"], s["arm"]): (s["seeds"], s["partial"]) for s in series}
    assert flags[("psctnet", other)] == ([0, 1], False)
    assert all(v == ([0], True) for (lab, arm), v in flags.items() if lab == "psctnet" and arm != other)
    # refiners with one seed throughout are never partial
    assert not any(p for (lab, _), (_, p) in flags.items() if lab != "psctnet")


def test_only_runs_the_selected_steps_and_leaves_the_rest_for_resume(smoke, tmp_path):
    out, _ = smoke
    copy = tmp_path / "only"
    shutil.copytree(out, copy)
    plan = json.loads((copy / "plan.json").read_text())["plan"]
    names = [_step_name(item) for item in study_steps(plan)["order"]]
    evals = [n for n in names if n.startswith("eval/")]
    bp, other = next(n for n in evals if "/bp-prior/" in n), next(n for n in evals if "/bp-prior/" not in n)
    for n in (bp, other):
        (copy / "done" / (n.replace("/", "__") + ".json")).unlink()
    res = run_study(plan_path("smoke"), copy, resume=True, log=lambda s: None, only=["eval/bp-prior/*"])
    # the selected evaluation ran, the other stays missing; no report of an unfinished study
    assert res["ran"] == [bp] and res["stopped"] and res["steps_done"] == res["steps_total"] - 1
    # a later plain resume finishes it
    rest = run_study(plan_path("smoke"), copy, resume=True, log=lambda s: None)
    assert rest["ran"] == [other] and not rest["stopped"]


def test_only_refuses_a_pattern_matching_nothing_and_an_evaluation_without_its_training(smoke, tmp_path):
    out, _ = smoke
    copy = tmp_path / "only-bad"
    shutil.copytree(out, copy)
    with pytest.raises(PlanError, match=r"--only 'eval/nosuch/\*' matches no step of plan"):
        run_study(plan_path("smoke"), copy, resume=True, log=lambda s: None, only=["eval/nosuch/*"])
    plan = json.loads((copy / "plan.json").read_text())["plan"]
    train = next(_step_name(it) for it in study_steps(plan)["order"] if it[0] == "train")
    label = train.split("/")[1]
    # its training and one of its evaluations not done (a done evaluation needs no training)
    first_eval = next(_step_name(it) for it in study_steps(plan)["order"]
                      if it[0] == "eval" and it[1] == label and it[2] == int(train.rsplit("seed", 1)[1]))
    for n in (train, first_eval):
        (copy / "done" / (n.replace("/", "__") + ".json")).unlink()
    with pytest.raises(PlanError, match=f"evaluates the training {train}, which is not done"):
        run_study(plan_path("smoke"), copy, resume=True, log=lambda s: None, only=[f"eval/{label}/*"])
    # the CLI: exit 2 with the message
    r = CliRunner().invoke(cli, ["study", "run", str(plan_path("smoke")), "--out", str(copy), "--resume",
                                 "--only", "nothing/*"])
    assert r.exit_code == 2 and "matches no step" in r.output
