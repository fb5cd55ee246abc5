"""Per-refiner prediction bone levels: ``sample_metrics(pred_bone_threshold_mu=...)`` against
independent numpy / scikit-image computations, ``fit_bone_threshold`` on scaled copies of the
truth, the errors, and ``tomoprior evaluate --fit-bone-threshold`` end to end."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy import ndimage
from scipy.spatial import cKDTree

from tomoprior import data
from tomoprior.cli.evaluate import evaluate as evaluate_cmd
from tomoprior.data import DatasetFile
from tomoprior.metrics import DEFAULT_BONE_THRESHOLD_MU, dice, surface_distances
from tomoprior.refiners import Refiner
from tomoprior.studies.evaluation import (
    BONE_THRESHOLD_CANDIDATES,
    _dice_curve,
    evaluate,
    fit_bone_threshold,
    sample_metrics,
)

T0 = DEFAULT_BONE_THRESHOLD_MU
STEP = float(BONE_THRESHOLD_CANDIDATES[1] / BONE_THRESHOLD_CANDIDATES[0])  # ratio of neighbouring candidates


# ---------------------------------------------------------------------------------------------
# 4 skulls of 32^3 voxels (64^2-pixel views), supersampled so that voxel values near the bone
# threshold are nearly continuous (partial volume): 2 train, 2 test
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("bone") / "tiny.h5"
    specs = data.make_specs(4, seed=3, grid=32, binning=24, variants=["normal", "sagittal"],
                            fractions=(0.5, 0.0, 0.5), supersample=2)
    data.generate(specs, path)
    return path


@pytest.fixture(scope="module")
def samples(tiny):
    with DatasetFile(tiny) as ds:
        return [(ds.volume(i).astype(np.float64), ds.xrays(i), tuple(ds.grid(i).spacing), s)
                for i, s in enumerate(ds.splits())]


@dataclasses.dataclass
class _Scale:
    scale: float = 1.0


class ScaledOracle(Refiner):
    """Returns ``scale`` x the stored volume whose stored X-rays it is given."""

    name = "test-scaled-oracle"
    config_class = _Scale

    def __init__(self, lookup, **kw):
        super().__init__(None, **kw)
        self.lookup = lookup

    def forward(self, xrays, geometry, prior):
        vols = [torch.from_numpy(self.lookup[x.numpy().astype(np.float32).tobytes()]) for x in xrays]
        return self.config.scale * torch.stack(vols)[:, None].to(prior.dtype)


class Zero(Refiner):
    name = "test-zero"
    config_class = _Scale

    def forward(self, xrays, geometry, prior):
        return torch.zeros_like(prior)


def _oracle(samples, scale):
    return ScaledOracle({x.astype(np.float32).tobytes(): v for v, x, _, _ in samples}, scale=scale)


def _smooth(vol, factor):
    """A plausible imperfect reconstruction: blurred and scaled."""
    return factor * ndimage.gaussian_filter(vol, 0.6)


def _reference_assd(pred, level_pred, target, level_target, spacing):
    """ASSD between the marching-cubes surfaces of two volumes at their own levels, computed
    directly with scikit-image (padding as tomoprior.metrics.bone: a constant below the level)."""
    from skimage.measure import marching_cubes

    def pts(v, level):
        padded = np.pad(v, 1, constant_values=min(v.min(), level) - 1.0)
        return marching_cubes(padded, level=level, spacing=spacing)[0]

    a, b = pts(pred, level_pred), pts(target, level_target)
    d_ab, d_ba = cKDTree(b).query(a)[0], cKDTree(a).query(b)[0]
    return (d_ab.sum() + d_ba.sum()) / (d_ab.size + d_ba.size)


# ---------------------------------------------------------------------------------------------
def test_default_level_is_the_plain_computation(samples):
    vol, _, sp, _ = samples[0]
    pred = _smooth(vol, 1.3)
    m = sample_metrics(pred, vol, sp)
    assert m["dice_bone"] == dice(pred, vol, threshold=T0)  # bitwise
    sd = surface_distances(pred, vol, sp, threshold=T0)
    assert m["assd_mm"] == sd["assd"] and m["hd95_mm"] == sd["hd95"]
    same = sample_metrics(pred, vol, sp, pred_bone_threshold_mu=None)
    assert {k: v for k, v in same.items() if k != "notes"} == {k: v for k, v in m.items() if k != "notes"}
    # stating the target's level explicitly gives the same numbers (the shift is 0)
    explicit = sample_metrics(pred, vol, sp, pred_bone_threshold_mu=T0)
    assert explicit["dice_bone"] == m["dice_bone"] and explicit["assd_mm"] == m["assd_mm"]


def test_half_scaled_prediction_is_perfect_at_half_the_level(samples):
    vol, _, sp, _ = samples[0]
    pred = 0.5 * vol
    plain = sample_metrics(pred, vol, sp)
    assert plain["dice_bone"] == 0.0 and math.isnan(plain["assd_mm"])  # never reaches 0.035 /mm
    m = sample_metrics(pred, vol, sp, pred_bone_threshold_mu=0.5 * T0)
    assert m["dice_bone"] == 1.0
    # marching cubes interpolates in float32: the shifted copy agrees to ~1e-6 mm (voxels 7.5 mm)
    assert m["assd_mm"] < 1e-4 and m["hd95_mm"] < 1e-4
    # the non-bone metrics do not depend on the level
    for k in ("psnr_x2ctgan", "ssim_psctnet", "mae_hu"):
        assert m[k] == plain[k]


def test_own_level_matches_independent_reference(samples):
    vol, _, sp, _ = samples[1]
    pred, level = _smooth(vol, 0.7), 0.02
    m = sample_metrics(pred, vol, sp, pred_bone_threshold_mu=level)
    a, b = pred > level, vol > T0
    assert m["dice_bone"] == pytest.approx(2 * (a & b).sum() / (a.sum() + b.sum()), abs=1e-15)
    assert 0.0 < m["dice_bone"] < 1.0
    ref = _reference_assd(pred, level, vol, T0, sp)
    assert ref > 1.0 and m["assd_mm"] == pytest.approx(ref, abs=1e-4)  # float32 marching cubes
    # a prediction with no voxel above its level: undefined distances, explained
    low = sample_metrics(0.1 * vol, vol, sp, pred_bone_threshold_mu=0.03)
    assert math.isnan(low["assd_mm"]) and "prediction bone level 0.03" in low["notes"][0]


def test_dice_curve_matches_metrics_dice(samples):
    vol, _, _, _ = samples[2]
    pred = _smooth(vol, 0.8)
    levels = np.array([0.001, 0.01, 0.02, 0.025, 0.03, 0.05, 0.5])
    curve = _dice_curve(pred, vol > T0, levels)
    want = [dice(pred > t, vol > T0) for t in levels]
    assert np.allclose(curve, want, rtol=0, atol=1e-15)
    assert curve[-1] == 0.0  # nothing above 0.5 /mm
    empty = np.zeros((4, 4, 4))  # no bone in either: perfect agreement, as metrics.dice
    assert _dice_curve(empty, empty > T0, np.array([0.01]))[0] == dice(empty, empty, threshold=0.01) == 1.0


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [0.6, 0.35])
def test_fit_recovers_the_scaling(tiny, samples, scale):
    fit = fit_bone_threshold(_oracle(samples, scale), tiny, "train")
    assert fit["split"] == "train" and fit["n_samples"] == 2
    assert fit["indices"] == [i for i, s in enumerate(s[3] for s in samples) if s == "train"]
    ratio = fit["threshold_mu"] / (scale * T0)
    assert 1 / STEP <= ratio <= STEP  # within one candidate spacing of the true level
    assert fit["dice"] > 0.9 and fit["dice_at_default"] == 0.0 and fit["note"] is None
    levels = [t for t, _ in fit["curve"]]
    assert len(levels) == len(BONE_THRESHOLD_CANDIDATES) + 1 and T0 in levels and levels == sorted(levels)
    assert max(d for _, d in fit["curve"]) == fit["dice"]
    # the train Dice agrees with evaluate at that level on the same samples
    res = evaluate(_oracle(samples, scale), tiny, "train", pred_bone_threshold_mu=fit["threshold_mu"])
    assert res.aggregates["all"]["dice_bone"]["mean"] == pytest.approx(fit["dice"], abs=1e-12)
    assert res.settings["pred_bone_threshold_mu"] == fit["threshold_mu"]
    assert "prediction bone = mu > " in res.settings["bone_levels"]
    assert "prediction bone" in res.to_markdown()
    # on a fine grid of candidates the fit finds the exact level: Dice 1 on both train samples
    fine = fit_bone_threshold(_oracle(samples, scale), tiny, thresholds=scale * np.linspace(0.03, 0.04, 201))
    assert fine["dice"] == 1.0 and abs(fine["threshold_mu"] / scale - T0) < 5e-4


def test_fit_ties_and_no_bone(tiny, samples):
    # on these train skulls every level in [0.03475, 0.03500] /mm separates bone exactly: several
    # candidates reach Dice 1, and the one closest to the target's level wins
    exact = fit_bone_threshold(_oracle(samples, 1.0), tiny, thresholds=[0.01, 0.0348, 0.0349, 0.05])
    assert exact["threshold_mu"] == T0 and exact["dice"] == 1.0 and exact["dice_at_default"] == 1.0
    assert [t for t, _ in exact["curve"]] == [0.01, 0.0348, 0.0349, T0, 0.05]
    assert [d for _, d in exact["curve"]][1:4] == [1.0, 1.0, 1.0]
    half = fit_bone_threshold(_oracle(samples, 0.5), tiny, thresholds=[0.01, 0.0174, 0.01745, 0.05])
    assert half["threshold_mu"] == 0.01745 and half["dice"] == 1.0 and dict(half["curve"])[0.0174] == 1.0
    none = fit_bone_threshold(Zero(), tiny, max_samples=1)
    assert none["threshold_mu"] == T0 and none["dice"] == 0.0 and "no candidate level" in none["note"]
    assert none["n_samples"] == 1


def test_errors(tiny, samples):
    vol, _, sp, _ = samples[0]
    for bad in (0.0, -0.01, math.nan, math.inf, "0.02", True):
        with pytest.raises(ValueError, match="pred_bone_threshold_mu"):
            sample_metrics(vol, vol, sp, pred_bone_threshold_mu=bad)
    with pytest.raises(ValueError, match="pred_bone_threshold_mu"):
        evaluate(Zero(), tiny, pred_bone_threshold_mu=-1.0)
    with pytest.raises(ValueError, match="'train' or 'val'"):
        fit_bone_threshold(Zero(), tiny, "test")
    with pytest.raises(ValueError, match="no sample in split 'val'"):
        fit_bone_threshold(Zero(), tiny, "val")
    for bad in ([], [[0.01, 0.02]], [0.01, -0.02], [0.01, math.nan], "abc"):
        with pytest.raises(ValueError, match="thresholds"):
            fit_bone_threshold(Zero(), tiny, thresholds=bad)
    with pytest.raises(ValueError, match="bone_threshold_mu"):
        fit_bone_threshold(Zero(), tiny, bone_threshold_mu=0.0)
    with pytest.raises(ValueError, match="max_samples"):
        fit_bone_threshold(Zero(), tiny, max_samples=0)
    with pytest.raises(ValueError, match="batch_size"):
        fit_bone_threshold(Zero(), tiny, batch_size=0)
    with pytest.raises(TypeError, match="Refiner"):
        fit_bone_threshold(torch.nn.Identity(), tiny)


# ---------------------------------------------------------------------------------------------
def test_cli_fit_bone_threshold(tiny, tmp_path):
    out = tmp_path / "out"
    r = CliRunner().invoke(evaluate_cmd, ["--data", str(tiny), "--refiner", "bp-prior", "--fit-samples", "2",
                                          "--compare", "raw=bp-prior:normalization=ray;gain=0.001",
                                          "--fit-bone-threshold", "--groups", "all", "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    summary = json.loads((out / "evaluation.json").read_text())
    fits = summary["bone_threshold_fits"]
    assert set(fits) == {"bp-prior", "raw"}
    for lbl, fit in fits.items():
        res = json.loads((out / f"{lbl}.json").read_text())
        level = fit["threshold_mu"]
        assert res["settings"]["pred_bone_threshold_mu"] == level and res["settings"]["bone_threshold_fit"] == fit
        assert fit["split"] == "train" and fit["n_samples"] == 2 and len(fit["curve"]) == 61
        assert f"| {lbl} (bone > {level:.4g} /mm, fitted) |" in r.output
        assert f"| {lbl} | {level:.4g} |" in r.output  # the fits table
        assert fit["dice"] >= fit["dice_at_default"]
    # the smooth prior never reaches 0.035 /mm; at its own level it has bone and surface distances
    bp = json.loads((out / "bp-prior.json").read_text())
    assert fits["bp-prior"]["threshold_mu"] < T0 and fits["bp-prior"]["dice"] > 0
    assert bp["aggregates"]["all"]["dice_bone"]["mean"] > 0 and bp["aggregates"]["all"]["assd_mm"]["n"] == 2
    # without the flag: one shared level, no fits
    r = CliRunner().invoke(evaluate_cmd, ["--data", str(tiny), "--refiner", "bp-prior", "--fit-samples", "2",
                                          "--max-samples", "1", "--groups", "all", "--out", str(tmp_path / "plain"),
                                          "--quiet"])
    assert r.exit_code == 0, r.output
    assert "bone_threshold_fits" not in json.loads((tmp_path / "plain" / "evaluation.json").read_text())
    assert "| bp-prior | 1 |" in r.output and "fitted" not in r.output
