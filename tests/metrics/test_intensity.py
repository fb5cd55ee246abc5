"""PSNR, SSIM and MAE against closed forms and scikit-image."""

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from tomoprior import metrics


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[:20, :22, :24]
    target = np.exp(-((z - 10) ** 2 + (y - 11) ** 2 + (x - 12) ** 2) / 40.0)
    pred = target + 0.05 * rng.standard_normal(target.shape)
    return pred, target


def test_psnr_volume_matches_skimage_and_named_conventions(pair):
    pred, target = pair
    assert metrics.psnr(pred, target, data_range=1.0) == pytest.approx(
        peak_signal_noise_ratio(target, pred, data_range=1.0), rel=1e-12)
    hu_t, hu_p = target * 2000, pred * 2000
    assert metrics.psnr(hu_p, hu_t, "x2ctgan") == pytest.approx(peak_signal_noise_ratio(hu_t, hu_p, data_range=4095))
    assert metrics.psnr(hu_p, hu_t, "psctnet") == pytest.approx(peak_signal_noise_ratio(hu_t, hu_p, data_range=2500))
    # the two conventions differ by 20 log10(4095/2500) dB
    diff = metrics.psnr(hu_p, hu_t, "x2ctgan") - metrics.psnr(hu_p, hu_t, "psctnet")
    assert diff == pytest.approx(20 * math.log10(4095 / 2500))


def test_psnr_slice_average_and_torch_inputs(pair):
    pred, target = pair
    expected = np.mean([peak_signal_noise_ratio(target[k], pred[k], data_range=1.0) for k in range(20)])
    got = metrics.psnr(torch.from_numpy(pred), torch.from_numpy(target), 1.0, reduction="slice")
    assert got == pytest.approx(expected, rel=1e-12)
    # identical slices are left out, not averaged as infinity
    p2 = pred.copy()
    p2[:5] = target[:5]
    expected = np.mean([peak_signal_noise_ratio(target[k], p2[k], data_range=1.0) for k in range(5, 20)])
    assert metrics.psnr(p2, target, 1.0, reduction="slice") == pytest.approx(expected)
    assert metrics.psnr(target, target, 1.0) == math.inf


@pytest.mark.parametrize("shape", [(20, 22, 24), (13, 30, 17)])
def test_ssim_3d_matches_skimage(shape):
    rng = np.random.default_rng(1)
    target = rng.random(shape)
    from scipy.ndimage import gaussian_filter

    target = gaussian_filter(target, 2.0)
    pred = target + 0.02 * rng.standard_normal(shape)
    ref = structural_similarity(target, pred, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False)
    assert metrics.ssim(pred, target, 1.0) == pytest.approx(ref, abs=1e-10)
    assert metrics.ssim(target, target, 1.0) == pytest.approx(1.0)


def test_ssim_slice_matches_skimage(pair):
    pred, target = pair
    ref = np.mean([structural_similarity(target[k], pred[k], data_range=1.0, gaussian_weights=True, sigma=1.5,
                                         use_sample_covariance=False) for k in range(target.shape[0])])
    assert metrics.ssim(pred, target, 1.0, mode="slice") == pytest.approx(ref, abs=1e-10)


def test_mae_and_mask():
    a = np.zeros((3, 3, 3))
    b = np.ones((3, 3, 3))
    b[0] = 5
    assert metrics.mae(a, b) == pytest.approx((9 * 5 + 18) / 27)
    mask = np.zeros((3, 3, 3), bool)
    mask[1:] = True
    assert metrics.mae(a, b, mask=mask) == pytest.approx(1.0)


def test_bad_inputs_are_named():
    a = np.zeros((12, 12, 12))
    with pytest.raises(ValueError, match="data_range is required"):
        metrics.psnr(a, a, None)
    with pytest.raises(ValueError, match="not a known convention"):
        metrics.psnr(a, a, "lidc")
    with pytest.raises(ValueError, match="shape"):
        metrics.psnr(a, np.zeros((12, 12, 11)), 1.0)
    b = a.copy()
    b[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        metrics.mae(a, b)
    with pytest.raises(ValueError, match="window"):
        metrics.ssim(np.zeros((5, 30, 30)), np.zeros((5, 30, 30)), 1.0)
    with pytest.raises(ValueError, match="empty"):
        metrics.mae(a, a, mask=np.zeros_like(a, bool))


@pytest.mark.parametrize("call", [
    lambda e: metrics.psnr(e, e, 1.0),
    lambda e: metrics.mae(e, e),
    lambda e: metrics.ssim(e, e, 1.0),
    lambda e: metrics.dice(e, e, threshold=0.035),
    lambda e: metrics.assd(e, e, spacing=1.0, threshold=0.035),
    lambda e: metrics.official_scores(e, e),
], ids=["psnr", "mae", "ssim", "dice", "assd", "official_scores"])
def test_empty_volumes_are_refused_not_scored(call):
    # a mean over no voxels was NaN (psnr, mae), a Dice of nothing 1.0, official_scores a numpy
    # reduction error: every metric now names the empty input
    with pytest.raises(ValueError, match=r"empty .*at least one voxel"):
        call(np.zeros((0, 16, 16)))
