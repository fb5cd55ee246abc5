"""Evaluation of refiners: metric aggregation against independent numpy computations, the
normal / craniosynostosis split, the miscalibration arms, the CLI and its errors."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy import stats

from tomoprior import data, refiners
from tomoprior.cli.evaluate import evaluate as evaluate_cmd
from tomoprior.data import DatasetFile, GeometryPerturbation, mu_to_hu
from tomoprior.refiners import Refiner
from tomoprior.studies.evaluation import (
    METRICS,
    EvaluationResult,
    evaluate,
    fit_bp_prior,
    paired_comparison,
    paired_markdown,
    sample_metrics,
    to_bone_window,
    to_x2ctgan,
)
from tomoprior.studies.miscalibration import CALIBRATION_RESIDUAL, miscalibration_study


# ---------------------------------------------------------------------------------------------
# a tiny dataset (16^3 voxels, 32^2-pixel views) and three test refiners
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "tiny.h5"
    specs = data.make_specs(6, seed=3, grid=16, binning=48, variants=["normal", "sagittal", "metopic"],
                            fractions=(0.5, 0.0, 0.5), supersample=1)
    data.generate(specs, path)
    return path


@dataclasses.dataclass
class _Empty:
    value: float = 0.02


class ConstantRefiner(Refiner):
    """Returns ``value`` (1/mm) everywhere; records what it was given."""

    name = "test-constant"
    config_class = _Empty

    def __init__(self, config=None, **kw):
        super().__init__(config, **kw)
        self.seen = []

    def forward(self, xrays, geometry, prior):
        b, _ = self.check_inputs(xrays, geometry, prior)
        geoms = geometry if isinstance(geometry, list) else [geometry] * b
        self.seen += [(x.clone(), g) for x, g in zip(xrays, geoms)]
        return torch.full_like(prior, self.config.value)


class OracleRefiner(Refiner):
    """Returns the stored volume whose stored X-rays it is given (looked up by their bytes)."""

    name = "test-oracle"
    config_class = _Empty

    def __init__(self, lookup, **kw):
        super().__init__(None, **kw)
        self.lookup = lookup

    def forward(self, xrays, geometry, prior):
        vols = [torch.from_numpy(self.lookup[x.numpy().astype(np.float32).tobytes()]) for x in xrays]
        return torch.stack(vols)[:, None].to(prior.dtype)


def _read(path, split="test"):
    with DatasetFile(path) as ds:
        idx = [i for i, s in enumerate(ds.splits()) if s == split]
        return {i: (ds.volume(i), ds.xrays(i), ds.labels(i), ds.grid(i)) for i in idx}


# ---------------------------------------------------------------------------------------------
def test_conventions_against_hand_values():
    mw = data.mu_water(60.0)
    mu = np.array([0.0, mw, 2 * mw, 10 * mw])  # -1000, 0, 1000, 9000 HU
    assert np.allclose(to_x2ctgan(mu, 60), [24.0, 1024.0, 2024.0, 4095.0])
    assert np.allclose(to_bone_window(mu, 60), [0.0, 0.0, 800.0, 2500.0])


def test_exact_prediction_gives_infinite_psnr_and_perfect_bone(tiny):
    vol, _, _, grid = next(iter(_read(tiny).values()))
    m = sample_metrics(vol, vol, grid.spacing)
    assert m["psnr_x2ctgan"] == math.inf and m["psnr_psctnet"] == math.inf
    assert m["ssim_x2ctgan"] == pytest.approx(1.0) and m["ssim_psctnet"] == pytest.approx(1.0)
    assert m["dice_bone"] == 1.0 and m["assd_mm"] == 0.0 and m["hd95_mm"] == 0.0 and m["mae_hu"] == 0.0


def test_oracle_refiner_through_evaluate(tiny):
    samples = _read(tiny)
    lookup = {x.astype(np.float32).tobytes(): v for v, x, _, _ in samples.values()}
    res = evaluate(OracleRefiner(lookup), tiny, "test", batch_size=2)
    assert len(res.per_sample) == len(samples)
    agg = res.aggregates["all"]
    assert agg["psnr_x2ctgan"]["mean"] == math.inf and agg["dice_bone"]["mean"] == 1.0
    assert agg["assd_mm"]["mean"] == 0.0 and agg["mae_mu"]["mean"] == 0.0
    # the stored X-rays are the projections of the stored volumes (up to the projector's accuracy)
    assert agg["proj_rel_l2"]["mean"] < 0.05
    d = res.to_dict()
    assert d["aggregates"]["all"]["psnr_x2ctgan"]["mean"] == "inf"
    json.dumps(d, allow_nan=False)


def test_constant_refiner_matches_independent_numbers(tiny):
    c = 0.02
    samples = _read(tiny)
    res = evaluate(ConstantRefiner(value=c), tiny, "test", batch_size=3)
    got = {s["index"]: s for s in res.per_sample}
    assert set(got) == set(samples)
    mw = data.mu_water(60.0)
    for i, (vol, _, labels, _) in samples.items():
        t = vol.astype(np.float64)
        hu_t, hu_p = 1000 * (t / mw - 1), 1000 * (c / mw - 1)
        x_t, x_p = np.clip(hu_t + 1024, 0, 4095), np.clip(hu_p + 1024, 0, 4095)
        want = 10 * np.log10(4095.0**2 / np.mean((x_p - x_t) ** 2))
        assert got[i]["psnr_x2ctgan"] == pytest.approx(want, rel=1e-6)  # the constant is float32
        b_t = np.clip(hu_t - 200, 0, 2500)  # the constant is below the bone window: prediction 0
        per_slice = [10 * np.log10(2500.0**2 / np.mean(b**2)) for b in b_t if np.any(b)]
        assert got[i]["psnr_psctnet"] == pytest.approx(np.mean(per_slice), rel=1e-6)
        assert got[i]["mae_hu"] == pytest.approx(np.mean(np.abs(hu_p - hu_t)), rel=1e-6)
        assert got[i]["dice_bone"] == 0.0 and math.isnan(got[i]["assd_mm"])  # no bone predicted
        assert got[i]["variant"] == labels["variant"]
    vals = [s["psnr_x2ctgan"] for s in res.per_sample]
    agg = res.aggregates["all"]["psnr_x2ctgan"]
    assert agg["mean"] == pytest.approx(np.mean(vals)) and agg["std"] == pytest.approx(np.std(vals, ddof=1))
    assert res.aggregates["all"]["assd_mm"]["n_undefined"] == len(vals)
    # groups: normal vs craniosynostosis follow the labels in the file
    n_normal = sum(bool(v[2]["normal"]) for v in samples.values())
    assert res.aggregates["normal"]["n_samples"] == n_normal
    assert res.aggregates["craniosynostosis"]["n_samples"] == len(samples) - n_normal
    normal_vals = [s["mae_hu"] for s in res.per_sample if s["normal"]]
    if normal_vals:
        assert res.aggregates["normal"]["mae_hu"]["mean"] == pytest.approx(np.mean(normal_vals))
    assert "| craniosynostosis |" in res.to_markdown()


def test_save_is_atomic_and_round_trips(tiny, tmp_path, monkeypatch):
    res = evaluate(ConstantRefiner(), tiny, "test", max_samples=1)
    out = res.save(tmp_path / "r.json")
    back = EvaluationResult.load(out)
    assert back.per_sample[0]["psnr_x2ctgan"] == res.per_sample[0]["psnr_x2ctgan"]
    assert back.aggregates["all"]["mae_hu"]["mean"] == pytest.approx(res.aggregates["all"]["mae_hu"]["mean"])
    before = out.read_text()
    import tomoprior._atomic as atomic

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", boom)
    with pytest.raises(OSError):
        dataclasses.replace(res, label="other").save(out)
    assert out.read_text() == before  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary left behind


def test_perturbation_changes_xrays_not_volumes(tiny):
    stored = _read(tiny)
    plain = ConstantRefiner()
    base = evaluate(plain, tiny, "test")
    pert = GeometryPerturbation(source_to_detector_mm=10, offset_mm=2, tilt_deg=1)
    rec = ConstantRefiner()
    mis = evaluate(rec, tiny, "test", perturbation=pert, geometry_override="nominal", seed=7)
    with DatasetFile(tiny) as ds:
        for (x, g), s in zip(rec.seen, mis.per_sample):
            i = s["index"]
            assert not torch.allclose(x, torch.from_numpy(stored[i][1]))  # X-rays re-synthesised
            assert torch.allclose(g.vectors, ds.geometry(i, nominal=True).vectors)  # refiner got nominal
            drawn = s["perturbation"]
            assert len(drawn) == 2 and all(abs(d["source_to_detector_mm"]) <= 10 for d in drawn)
            assert s["geometry_error_px"] > 0
    # the intensity metrics depend only on the volumes and the prediction: unchanged
    for a, b in zip(base.per_sample, mis.per_sample):
        assert a["psnr_x2ctgan"] == b["psnr_x2ctgan"] and a["ssim_psctnet"] == b["ssim_psctnet"]
    # same seed -> same draws; the exact calibrated arm hands over the true geometry
    exact = evaluate(ConstantRefiner(), tiny, "test", perturbation=pert, seed=7)
    assert [s["perturbation"] for s in exact.per_sample] == [s["perturbation"] for s in mis.per_sample]
    assert all(s["geometry_error_px"] < 1e-6 for s in exact.per_sample)


def test_miscalibration_study_arms(tiny, tmp_path):
    model = fit_bp_prior(refiners.load("bp-prior", normalization="chord", clamp_min=0.0), tiny, max_samples=2)
    assert model.config.gain > 0
    st = miscalibration_study(model, tiny, "test", calibration=["residual", "exact"], seed=1)
    assert list(st.arms) == ["nominal-correct", "miscalibrated", "calibrated (residual)", "calibrated (exact)"]
    err = {k: v.aggregates["all"]["geometry_error_px"]["mean"] for k, v in st.arms.items()}
    assert err["nominal-correct"] < 1e-6 and err["calibrated (exact)"] < 1e-6
    assert 0 < err["calibrated (residual)"] < err["miscalibrated"]
    assert "| miscalibrated |" in st.to_markdown()
    again = type(st).load(st.save(tmp_path / "st.json"))
    assert list(again.arms) == list(st.arms) and again.to_markdown() == st.to_markdown()
    assert CALIBRATION_RESIDUAL["offset_px"] == 0.2
    with pytest.raises(ValueError, match="non-zero"):
        miscalibration_study(model, tiny, perturbation=GeometryPerturbation())


# ---------------------------------------------------------------------------------------------
def test_cli_writes_tables_and_json(tiny, tmp_path):
    out = tmp_path / "out"
    r = CliRunner().invoke(evaluate_cmd, ["--data", str(tiny), "--refiner", "bp-prior", "--fit-samples", "2",
                                          "--compare", "raw=bp-prior:normalization=ray;gain=1.0", "--out", str(out),
                                          "--miscalibration", "sdd=10,offset=2,tilt=1", "--calibration", "exact",
                                          "--quiet"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert "| bp-prior |" in r.output and "| raw |" in r.output and "| miscalibrated |" in r.output
    summary = json.loads((out / "evaluation.json").read_text())
    assert set(summary["refiners"]) == {"bp-prior", "raw"}
    res = json.loads((out / "bp-prior.json").read_text())
    assert res["refiner"]["config"]["normalization"] == "chord" and res["split"] == "test"
    raw = json.loads((out / "raw.json").read_text())
    assert raw["refiner"]["config"]["gain"] == 1.0 and raw["refiner"]["config"]["normalization"] == "ray"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries


def test_cli_checkpoint_and_bad_inputs(tiny, tmp_path):
    ckpt = refiners.load("bp-prior", normalization="chord", gain=1.1).save_checkpoint(tmp_path / "bp.pt")
    run = lambda *args: CliRunner().invoke(evaluate_cmd, ["--data", str(tiny), *args, "--quiet"])  # noqa: E731
    ok = run("--refiner", "bp-prior", "--checkpoint", str(ckpt), "--max-samples", "1")
    assert ok.exit_code == 0, ok.output
    r = run("--refiner", "no-such-refiner")
    assert r.exit_code != 0 and "unknown refiner 'no-such-refiner'" in r.output and "bp-prior" in r.output
    r = run("--refiner", "bp-prior", "--split", "val")
    assert r.exit_code != 0 and "no sample in split 'val'" in r.output
    r = run("--refiner", "psctnet", "--checkpoint", str(ckpt))
    assert r.exit_code != 0 and "holds a 'bp-prior' refiner, not 'psctnet'" in r.output
    r = run("--refiner", "bp-prior", "--compare", "nolabel")
    assert r.exit_code != 0 and "LABEL=SPEC" in r.output
    r = run("--refiner", "bp-prior", "--miscalibration", "sdd=oops")
    assert r.exit_code != 0 and "--miscalibration" in r.output
    r = CliRunner().invoke(evaluate_cmd, ["--data", str(tmp_path / "missing.h5"), "--refiner", "bp-prior"])
    assert r.exit_code != 0 and "missing.h5" in r.output


def test_api_errors(tiny):
    with pytest.raises(TypeError, match="Refiner"):
        evaluate(torch.nn.Identity(), tiny)
    with pytest.raises(ValueError, match="no sample in split 'val'"):
        evaluate(ConstantRefiner(), tiny, "val")
    with pytest.raises(ValueError, match="does not exist"):
        evaluate(ConstantRefiner(), "/nonexistent/x.h5")
    with pytest.raises(ValueError, match="geometry_override"):
        evaluate(ConstantRefiner(), tiny, geometry_override="calibrated")
    with pytest.raises(ValueError, match="calibration_error"):
        evaluate(ConstantRefiner(), tiny, geometry_override="nominal", calibration_error=CALIBRATION_RESIDUAL)
    with pytest.raises(TypeError, match="fit_bp_prior"):
        fit_bp_prior(ConstantRefiner(), tiny)


def test_hu_helper_consistency():
    # the conventions use the data layer's HU conversion
    assert to_x2ctgan(np.array([0.03]), 60)[0] == pytest.approx(np.clip(mu_to_hu(0.03, 60) + 1024, 0, 4095))


def test_bead_calibrator_recovers_the_true_geometry(tiny):
    from tomoprior.studies.evaluation import geometry_error_px
    from tomoprior.studies.miscalibration import PAPER_MISCALIBRATION, bead_cage_calibrator

    with DatasetFile(tiny) as ds:
        nominal = ds.geometry(0, nominal=True)
    true, _ = PAPER_MISCALIBRATION.sample(nominal, 5)
    fitted, info = bead_cage_calibrator(upsample=12)(true, nominal, [0, 0, 2])  # 9.6 mm pixels -> 0.8 mm
    assert fitted.grid == true.grid and fitted.views[0].shape == true.views[0].shape
    before = geometry_error_px(nominal, true)["mean_px"]
    after = geometry_error_px(fitted, true)["mean_px"]
    assert after < 0.05 < before  # in pixels of the 9.6 mm test detector
    # the QA verdict a physicist would see, without the truth: the fit itself passes
    qa = info["qa"]
    assert qa["passed"] is True and qa["failed"] == [] and qa["bead_pixel_mm"] == pytest.approx(0.8)
    assert 0 < qa["heldout_rms_px"] < 0.5 and qa["fit_residual_max_px"] < 1.0


def test_a_calibrator_may_hand_back_what_it_knows_per_sample(tiny):
    def told(true, nominal, seed):
        return nominal, {"qa": {"passed": seed[-1] == 2, "seed": list(seed)}}

    res = evaluate(ConstantRefiner(), tiny, geometry_override=told)
    assert all(s["geometry_info"]["qa"]["passed"] is True for s in res.per_sample)
    assert "geometry_info" not in evaluate(ConstantRefiner(), tiny, geometry_override="nominal").per_sample[0]
    with pytest.raises(TypeError, match=r"Geometry or \(Geometry, info dict\)"):
        evaluate(ConstantRefiner(), tiny, geometry_override=lambda t, n, s: (n, "not a dict"))


def test_bead_calibrator_passes_a_wild_fit_on_without_a_units_warning(tiny, monkeypatch):
    """A failed calibration may fit tilts of 10-15 degrees; re-reading those fitted numbers must
    not warn "did you mean degrees?" (they were never typed)."""
    import math
    import types
    import warnings

    import tomoprior.calibration as cal
    from tomoprior.geometry import UnitsWarning
    from tomoprior.studies.miscalibration import bead_cage_calibrator

    with DatasetFile(tiny) as ds:
        nominal = ds.geometry(0, nominal=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnitsWarning)
        wild = [p.replace(detector_tilt_v=math.radians(-15.0)) for p in nominal.parameters]

    def fake_calibrate(images, phantom, initial, **kw):
        return types.SimpleNamespace(parameters=wild)

    import tomoprior.studies.miscalibration as mis

    monkeypatch.setattr(cal, "calibrate", fake_calibrate)
    monkeypatch.setattr(cal, "bead_line_integrals", lambda phantom, geom: torch.zeros(1))
    monkeypatch.setattr(mis, "calibration_qa", lambda res, params: {})
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnitsWarning)
        told, _ = bead_cage_calibrator(upsample=1)(nominal, nominal, [0, 0, 2])
    assert math.degrees(told.parameters[0].detector_tilt_v) == pytest.approx(-15.0)


def test_paired_differences(tiny):
    st = miscalibration_study(ConstantRefiner(value=0.03), tiny, "test", calibration="exact")
    d = st.differences()
    # a constant prediction does not depend on the X-rays: every intensity difference is 0
    assert d["miscalibrated"]["mae_hu"]["mean"] == 0.0 and d["calibrated"]["psnr_x2ctgan"]["mean"] == 0.0
    # but its re-projection is compared with X-rays made by another geometry
    assert d["miscalibrated"]["proj_rel_l2"]["n"] == len(st.arms["miscalibrated"].per_sample)
    assert "| miscalibrated |" in st.differences_markdown()
    with pytest.raises(ValueError, match="reference"):
        st.differences(reference="nope")


def test_paired_comparison_against_scipy_and_direction(tiny):
    good = evaluate(refiners.load("bp-prior", normalization="chord"), tiny, label="chord")
    bad = evaluate(ConstantRefiner(value=0.03), tiny, label="const")
    pc = paired_comparison(good, bad)
    n = len(good.per_sample)
    for m in ("psnr_x2ctgan", "mae_hu", "ssim_x2ctgan"):
        a = np.array([s[m] for s in good.per_sample])
        b = np.array([s[m] for s in bad.per_sample])
        r = pc[m]
        assert r["n"] == n and r["mean_diff"] == pytest.approx((a - b).mean())
        assert r["se"] == pytest.approx((a - b).std(ddof=1) / np.sqrt(n))
        assert r["p"] == pytest.approx(stats.wilcoxon(a, b).pvalue)
        higher = METRICS[m]["higher"]
        assert r["a_better"] == pytest.approx(np.mean((a - b) > 0 if higher else (a - b) < 0))
    # MAE: lower is better, so "better" flips with the sign of the difference
    assert (pc["mae_hu"]["mean_diff"] < 0) == (pc["mae_hu"]["a_better"] > 0.5)
    # undefined surface distances (no bone) drop out of the pairs instead of poisoning them
    assert pc["assd_mm"]["n"] == 0 and np.isnan(pc["assd_mm"]["mean_diff"])
    # the reverse comparison mirrors the differences
    back = paired_comparison(bad, good)
    assert back["psnr_x2ctgan"]["mean_diff"] == pytest.approx(-pc["psnr_x2ctgan"]["mean_diff"])
    md = paired_markdown(good, bad)
    assert "| chord - const |" in md and "Wilcoxon p" in md
    with pytest.raises(ValueError, match="different samples"):
        paired_comparison(good, evaluate(ConstantRefiner(), tiny, max_samples=1))
    with pytest.raises(ValueError, match="unknown metric"):
        paired_comparison(good, bad, metrics=("psnr",))


def test_cli_paired_table(tiny, tmp_path):
    r = CliRunner().invoke(evaluate_cmd, ["--data", str(tiny), "--refiner", "bp-prior", "--fit-samples", "2",
                                          "--compare", "raw=bp-prior:normalization=ray", "--paired", "bp-prior",
                                          "--out", str(tmp_path / "o"), "--quiet"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert "paired per-skull comparisons of bp-prior" in r.output and "| bp-prior - raw |" in r.output
    summary = json.loads((tmp_path / "o" / "evaluation.json").read_text())
    assert set(summary["paired"]) == {"raw"} and summary["paired"]["raw"]["psnr_x2ctgan"]["n"] == 3
    r = CliRunner().invoke(evaluate_cmd, ["--data", str(tiny), "--refiner", "bp-prior", "--paired", "nope"])
    assert r.exit_code != 0 and "--paired" in r.output
