"""Noise, blur, flat-field and log correction."""

from __future__ import annotations

import math

import pytest
import torch

import tomoprior as tp
from tomoprior import physics as ph


def test_poisson_mean_variance_and_seed():
    lam = torch.full((2, 200, 200), 100.0, dtype=torch.float64)
    a = ph.poisson_noise(lam, seed=1)
    assert a.shape == lam.shape and a.dtype == torch.float64
    assert float(a.mean()) == pytest.approx(100.0, rel=0.005)  # sd of the mean is 0.0125 %... x 40 margin
    assert float(a.var()) == pytest.approx(100.0, rel=0.03)  # variance = mean for Poisson
    assert bool((a == a.round()).all()) and bool((a >= 0).all())
    torch.testing.assert_close(ph.poisson_noise(lam, seed=1), a)
    assert not torch.equal(ph.poisson_noise(lam, seed=2), a)
    g = torch.Generator().manual_seed(1)
    torch.testing.assert_close(ph.poisson_noise(lam, generator=g), a)
    b = ph.poisson_noise(lam, seed=3, electronic_sigma=5.0)
    assert float(b.var()) == pytest.approx(125.0, rel=0.03)  # variances add: 100 + 5^2


def test_poisson_bad_inputs():
    with pytest.raises(ValueError, match=">= 0"):
        ph.poisson_noise(torch.tensor([-1.0]))
    with pytest.raises(ValueError, match="NaN"):
        ph.poisson_noise(torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match="either seed or generator"):
        ph.poisson_noise(torch.ones(2), seed=1, generator=torch.Generator())
    with pytest.raises(ValueError, match="electronic_sigma"):
        ph.poisson_noise(torch.ones(2), electronic_sigma=-1.0)
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        ph.poisson_noise([1.0, 2.0])


@pytest.mark.parametrize("kind", ["gaussian", "box"])
def test_blur_conserves_counts_and_keeps_flat_fields_flat(kind):
    img = torch.zeros(2, 40, 50, dtype=torch.float64)
    img[0, 20, 25] = 1000.0
    img[1, 18:22, 30:33] = 7.0  # kernels (<= 13 px half-width) stay inside the image
    out = ph.blur(img, [(1.7, 2.3), (3.0, 0.5)], kind)
    torch.testing.assert_close(out.sum(dim=(1, 2)), img.sum(dim=(1, 2)), rtol=1e-12, atol=0)
    assert float(out[0, 20, 25]) < 1000.0
    flat = torch.full((1, 20, 20), 3.0, dtype=torch.float64)
    torch.testing.assert_close(ph.blur(flat, 2.5, kind), flat, rtol=1e-12, atol=0)
    torch.testing.assert_close(ph.blur(img, 0.0, kind), img)


def _spread(img: torch.Tensor) -> float:
    """Standard deviation along rows of a 2-D point response."""
    r = torch.arange(img.shape[0], dtype=img.dtype)[:, None]
    w = img / img.sum()
    m = (w * r).sum()
    return float(((w * (r - m) ** 2).sum()).sqrt())


def test_gaussian_kernel_width_is_sigma():
    img = torch.zeros(81, 81, dtype=torch.float64)
    img[40, 40] = 1.0
    for sigma in (1.0, 2.5, 4.0):
        # pixel integration adds 1/12 px^2 to the variance
        assert _spread(ph.detector_blur(img, sigma)) == pytest.approx(math.sqrt(sigma**2 + 1 / 12), rel=1e-3)


def _view_at(sod: float, sdd: float = 1500.0, pitch: float = 0.2) -> tp.Geometry:
    grid = tp.VolumeGrid((8, 8, 8), (4.0, 4.0, 4.0))
    p = tp.ViewParameters(source_to_isocenter=sod, source_to_detector=sdd, detector_shape=(61, 61), pixel_pitch=pitch)
    return tp.Geometry(grid, [p.to_view()])


def test_focal_spot_width_scales_with_magnification_minus_one():
    assert ph.focal_spot_blur_mm(0.6, 1.5) == pytest.approx(0.3)  # the textbook example
    g15, g20 = _view_at(1000.0), _view_at(750.0)  # M = 1.5 and M = 2 at the isocenter
    (w15,) = ph.focal_spot_widths_px(g15, 0.6, kind="box")
    (w20,) = ph.focal_spot_widths_px(g20, 0.6, kind="box")
    assert w15[0] == pytest.approx(0.3 / 0.2) and w20[0] == pytest.approx(0.6 / 0.2)
    (s15,) = ph.focal_spot_widths_px(g15, 0.6)
    assert s15[0] == pytest.approx(1.5 / ph.detector.FWHM_PER_SIGMA)
    # the measured spread of a point follows (M - 1) too
    img = torch.zeros(1, 61, 61, dtype=torch.float64)
    img[0, 30, 30] = 1.0
    sp15 = _spread(ph.focal_spot_blur(img, g15, 1.2)[0])
    sp20 = _spread(ph.focal_spot_blur(img, g20, 1.2)[0])
    want15 = math.sqrt((1.2 * 0.5 / 0.2 / ph.detector.FWHM_PER_SIGMA) ** 2 + 1 / 12)
    want20 = math.sqrt((1.2 * 1.0 / 0.2 / ph.detector.FWHM_PER_SIGMA) ** 2 + 1 / 12)
    assert sp15 == pytest.approx(want15, rel=1e-3) and sp20 == pytest.approx(want20, rel=1e-3)
    # object plane closer to the detector -> smaller magnification -> less blur
    (near,) = ph.focal_spot_widths_px(g15, 0.6, object_point=(0.0, -200.0, 0.0))
    assert near[0] < s15[0]


def test_blur_is_differentiable():
    x = torch.rand(1, 6, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ph.blur(t, (1.2, 0.7)), (x,))
    assert torch.autograd.gradcheck(lambda t: ph.blur(t, 1.6, "box"), (x,))


def test_flat_field_and_log_recover_line_integrals():
    p = torch.rand(2, 9, 11, dtype=torch.float64) * 4
    flat = 1000.0 * (0.7 + 0.3 * torch.rand(2, 9, 11, dtype=torch.float64))
    dark = torch.full((2, 9, 11), 12.0, dtype=torch.float64)
    raw = flat * torch.exp(-p) + dark
    torch.testing.assert_close(ph.log_transform(raw, flat + dark, dark), p, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ph.flat_field_correct(raw, flat + dark, dark), torch.exp(-p), rtol=1e-12, atol=0)


def test_log_of_zero_counts_is_floored():
    raw = torch.tensor([[0.0, 0.2, 5.0]], dtype=torch.float64)
    out = ph.log_transform(raw, 1000.0)
    assert bool(torch.isfinite(out).all())
    assert float(out[0, 0]) == pytest.approx(math.log(1000.0 / ph.DEFAULT_COUNT_FLOOR))
    assert float(out[0, 1]) == float(out[0, 0])
    assert float(out[0, 2]) == pytest.approx(math.log(200.0))
    assert float(ph.log_transform(raw, 1000.0, floor=0.1)[0, 0]) == pytest.approx(math.log(1e4))


def test_detector_bad_inputs():
    with pytest.raises(ValueError, match="kind must be one of"):
        ph.blur(torch.ones(3, 3), 1.0, "airy")
    with pytest.raises(ValueError, match=">= 0 pixels"):
        ph.blur(torch.ones(3, 3), -1.0)
    with pytest.raises(ValueError, match="entries for 2 views"):
        ph.blur(torch.ones(2, 3, 3), [(1, 1), (1, 1), (1, 1)])
    with pytest.raises(ValueError, match="shape"):
        ph.blur(torch.ones(3), 1.0)
    with pytest.raises(ValueError, match="magnification must be >= 1"):
        ph.focal_spot_blur_mm(0.6, 0.5)
    with pytest.raises(ValueError, match="floor"):
        ph.log_transform(torch.ones(2, 2), 10.0, floor=0.0)
    with pytest.raises(ValueError, match="broadcast"):
        ph.flat_field_correct(torch.ones(2, 3, 3), torch.ones(4, 4))
    with pytest.raises(ValueError, match="object_point"):
        ph.focal_spot_widths_px(_view_at(1000.0).views[0], 0.6)
