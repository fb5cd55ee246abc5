"""The official PSCT-Net metric conventions (tomoprior.metrics.official) against closed forms
and scikit-image: 100 dB for identical slices, three-orientation slice PSNR, the SSIM planes the
official call really uses, integer truncation, and the empty-prediction pitfall."""

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from tomoprior import metrics
from tomoprior.metrics import official as off


def _shell(n: int = 24, r: float = 7.0, width: float = 1.2) -> np.ndarray:
    """A thin spherical shell of value 1 in an ``n^3`` volume: sparse, like a skull's bone window
    (most slices near the borders hold nothing)."""
    z, y, x = np.mgrid[:n, :n, :n] - (n - 1) / 2
    d = np.sqrt(z * z + y * y + x * x)
    return (np.abs(d - r) < width).astype(np.float64)


def test_identical_volumes_score_100_db_not_inf():
    t = _shell() * 1234.0
    assert off.official_psnr_3d(t, t) == 100.0
    assert off.official_slice_psnr(t, t) == {"axis0": 100.0, "axis1": 100.0, "axis2": 100.0, "mean": 100.0}
    assert off.official_ssim(t, t)["mean"] == pytest.approx(1.0, abs=1e-12)
    assert math.isinf(metrics.psnr(t, t, 2500))  # ours says inf


@pytest.mark.parametrize("offset, expected_db", [(25.0, 40.0), (250.0, 20.0), (2.5, 60.0)])
def test_constant_offset_gives_the_closed_form_in_every_orientation(offset, expected_db):
    # every slice has MSE offset^2, so every PSNR is 20 log10(2500 / offset)
    t = np.random.default_rng(1).uniform(0, 2000, (9, 10, 11))
    p = t + offset
    assert off.official_psnr_3d(p, t) == pytest.approx(expected_db, abs=1e-9)
    r = off.official_slice_psnr(p, t)
    for k in ("axis0", "axis1", "axis2", "mean"):
        assert r[k] == pytest.approx(expected_db, abs=1e-9)
    # peak 1: the same volumes / 2500
    assert off.official_psnr_3d(p / 2500, t / 2500, data_range=1.0) == pytest.approx(expected_db, abs=1e-9)


def test_empty_slices_count_100_db_per_orientation():
    # one voxel of value v at (1, 2, 3) in a (4, 5, 6) volume, prediction all zero: along each
    # axis exactly one slice differs, with MSE v^2 / (voxels per slice); the others score 100 dB
    t = np.zeros((4, 5, 6))
    v = 500.0
    t[1, 2, 3] = v
    r = off.official_slice_psnr(np.zeros_like(t), t)
    shape = t.shape
    for k in range(3):
        n_slices, per_slice = shape[k], t.size // shape[k]
        one = 20 * math.log10(2500 / math.sqrt(v * v / per_slice))
        assert r[f"axis{k}"] == pytest.approx(((n_slices - 1) * 100.0 + one) / n_slices, abs=1e-9)
    assert r["mean"] == pytest.approx((r["axis0"] + r["axis1"] + r["axis2"]) / 3, abs=1e-12)
    # ours leaves the identical slices out: only the differing axial slice counts
    assert metrics.psnr(np.zeros_like(t), t, 2500, reduction="slice") == pytest.approx(
        20 * math.log10(2500 / math.sqrt(v * v / 30)), abs=1e-9)


def test_all_zero_prediction_of_a_sparse_volume_scores_high_on_slice_psnr():
    t = _shell() * 1500.0
    zero = np.zeros_like(t)
    official_slice = off.official_slice_psnr(zero, t)["mean"]
    official_3d = off.official_psnr_3d(zero, t)
    ours_volume = metrics.psnr(zero, t, 2500)
    ours_slice = metrics.psnr(zero, t, 2500, reduction="slice")
    assert official_3d == pytest.approx(ours_volume, abs=1e-9)  # volume PSNR: same definition
    # the empty border slices (100 dB each) lift the official slice average far above both
    empty = (t.reshape(t.shape[0], -1).max(axis=1) == 0).mean()
    assert empty > 0.2
    assert official_slice > ours_volume + 15
    assert official_slice > ours_slice + 15
    # and above a prediction that has the right bone, 20 % too dark, everywhere
    assert official_slice > off.official_slice_psnr(0.8 * t + 1.0, t)["mean"]


def test_ssim_uses_the_planes_of_the_official_call():
    rng = np.random.default_rng(2)
    t = rng.uniform(0, 2500, (9, 10, 12))
    p = np.clip(t + rng.normal(0, 300, t.shape), 0, 2500)
    r = off.official_ssim(p, t)

    def sk(a, b):  # scikit-image's default 2D SSIM (uniform 7x7 window, sample covariance)
        return structural_similarity(a, b, data_range=2500.0)

    s_k = np.mean([sk(p[:, :, k], t[:, :, k]) for k in range(t.shape[2])])
    s_kt = np.mean([sk(p[:, :, k].T, t[:, :, k].T) for k in range(t.shape[2])])
    s_j = np.mean([sk(p[:, j, :], t[:, j, :]) for j in range(t.shape[1])])
    s_i = np.mean([sk(p[i], t[i]) for i in range(t.shape[0])])
    assert r["ssim1"] == pytest.approx(s_kt, abs=1e-12)
    assert r["ssim2"] == pytest.approx(s_k, abs=1e-12)
    assert r["ssim3"] == pytest.approx(s_j, abs=1e-12)
    assert r["mean"] == pytest.approx((s_kt + s_k + s_j) / 3, abs=1e-12)
    assert abs(r["mean"] - (s_i + s_j + s_k) / 3) > 1e-4  # the axial slices are not used


def test_ssim_of_constant_volumes_is_the_luminance_term():
    a, b = 1000.0, 1200.0
    c1 = (0.01 * 2500) ** 2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    r = off.official_ssim(np.full((8, 8, 8), b), np.full((8, 8, 8), a))
    for k in ("ssim1", "ssim2", "ssim3", "mean"):
        assert r[k] == pytest.approx(expected, abs=1e-12)


def test_official_scores_clip_truncate_and_report_everything():
    t = np.zeros((8, 8, 8))
    t[2:6, 2:6, 2:6] = 1000 / 2500
    # below one integer unit above the target, and above 1 where the target is 1: after the
    # official clipping and truncation the prediction equals the target
    p = t + 0.9 / 2500
    p[0, 0, 0], t[0, 0, 0] = 1.7, 1.0
    s = off.official_scores(p, t)
    assert s["mae0"] == pytest.approx((0.9 / 2500) * (t.size - 1) / t.size, rel=1e-9)
    assert s["mae"] == 0 and s["mse"] == 0
    assert s["psnr_3d"] == s["psnr_avg"] == s["psnr_1"] == 100.0
    assert s["ssim_avg"] == pytest.approx(1.0, abs=1e-12)
    assert set(s) == {"mae0", "mse0", "mae", "mse", "psnr_3d", "psnr_1", "psnr_2", "psnr_3", "psnr_avg",
                      "ssim_1", "ssim_2", "ssim_3", "ssim_avg"}
    # a whole number of units: 10 units everywhere -> 20 log10(250) dB, MAE 10
    q = off.official_scores(torch.as_tensor(t * 0 + 10.5 / 2500), torch.as_tensor(t * 0))
    assert q["mae"] == 10 and q["psnr_3d"] == pytest.approx(20 * math.log10(250), abs=1e-9)
    assert q["psnr_avg"] == pytest.approx(q["psnr_3d"], abs=1e-9)


def test_mae_mse_cosine():
    t = _shell(12) + 0.5
    assert off.official_mae(t + 2, t) == pytest.approx(2.0) and off.official_mse(t + 2, t) == pytest.approx(4.0)
    assert off.official_cosine_similarity(3 * t, t) == pytest.approx(1.0)
    a = np.zeros((2, 2, 2))
    b = np.zeros((2, 2, 2))
    a[0, 0, 0], b[1, 1, 1] = 1.0, 2.0
    assert off.official_cosine_similarity(a, b) == 0.0
    assert off.official_cosine_similarity(a + b, b) == pytest.approx(2 / math.sqrt(5))
    with pytest.raises(ValueError, match="all zero"):
        off.official_cosine_similarity(np.zeros((2, 2, 2)), b)


def test_bad_inputs_raise_clear_errors():
    t = np.zeros((8, 8, 8))
    with pytest.raises(ValueError, match="shape"):
        off.official_slice_psnr(t, np.zeros((8, 8, 9)))
    with pytest.raises(ValueError, match="3 dimensions"):
        off.official_psnr_3d(np.zeros((8, 8)), np.zeros((8, 8)))
    with pytest.raises(ValueError, match="NaN"):
        off.official_slice_psnr(t + np.nan, t)
    with pytest.raises(ValueError, match="data_range"):
        off.official_psnr_3d(t, t, data_range=0)
    with pytest.raises(ValueError, match="7 x 7"):
        off.official_ssim(np.zeros((8, 6, 8)), np.zeros((8, 6, 8)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        off.official_scores(t, t + 2.0)
    with pytest.raises(ValueError, match="NaN"):
        off.official_scores(t, t * np.nan)


def _head(n: int = 16) -> np.ndarray:
    """A water ball with a bone shell (1/mm at 60 keV): bone only in the middle slices."""
    z, y, x = np.mgrid[:n, :n, :n] - (n - 1) / 2
    d = np.sqrt(z * z + y * y + x * x)
    mu = np.where(d < 5.5, 0.0206, 0.0)
    return np.where(np.abs(d - 4.5) < 1.0, 0.047, mu)


def test_evaluation_reports_the_official_metrics_next_to_ours():
    from tomoprior.studies.evaluation import TABLE_METRICS, EvaluationResult, sample_metrics, to_bone_window

    head = _head()
    water = np.where(head > 0, 0.0206, 0.0)  # the head without its bone: an empty bone window
    m = sample_metrics(water, head, (1.0, 1.0, 1.0), surface_method="voxel")
    o = off.official_scores(np.zeros(head.shape, np.float32), (to_bone_window(head) / 2500).astype(np.float32))
    assert m["official_psnr_slice"] == pytest.approx(o["psnr_avg"], abs=1e-12)
    assert m["official_psnr_3d"] == pytest.approx(o["psnr_3d"], abs=1e-12)
    assert m["official_ssim"] == pytest.approx(o["ssim_avg"], abs=1e-12)
    assert m["official_psnr_slice"] > m["psnr_psctnet"] + 10  # the empty slices' 100 dB
    assert {"official_psnr_slice", "official_ssim"} <= set(TABLE_METRICS)
    rec = {k: v for k, v in m.items() if k != "notes"}
    res = EvaluationResult("water", {"name": "x"}, "d.h5", "test", {}, [{**rec, "variant": "normal", "normal": True}])
    assert "official slice PSNR" in res.to_markdown()
    assert res.metric("official_psnr_slice") == pytest.approx(m["official_psnr_slice"])
    # a result saved before the official metrics existed still loads; they count as undefined
    old = [{k: v for k, v in rec.items() if not k.startswith("official")} | {"variant": "normal", "normal": True}]
    old_res = EvaluationResult("old", {"name": "x"}, "d.h5", "test", {}, old)
    agg = old_res.aggregates["all"]
    assert agg["official_ssim"]["n"] == 0 and agg["official_ssim"]["n_undefined"] == 1
    assert agg["psnr_x2ctgan"]["n"] == 1
    from tomoprior.studies.miscalibration import MiscalibrationResult

    old[0]["index"] = 0
    study = MiscalibrationResult({"nominal-correct": old_res, "miscalibrated": old_res}, {}, "none")
    diff = study.differences()["miscalibrated"]
    assert diff["psnr_x2ctgan"]["mean"] == 0.0 and diff["official_psnr_slice"]["n_undefined"] == 1
    assert "official slice PSNR" in study.differences_markdown()
