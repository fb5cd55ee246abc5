"""Bead detection: precision against exact projected centres, conventions, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import tomoprior as tp
import tomoprior.calibration
from tomoprior.calibration import bead_design, bead_line_integrals, detect_beads


@pytest.fixture(scope="module")
def roi():
    """A 400 x 400 detector of 0.2 mm pixels (magnification 1.5) that sees ~8 cage beads
    whole, with exact line integrals (support body included)."""
    params = tp.geometry.default_frontal(pixel_pitch=0.2, detector_shape=(400, 400), u0=-90.0, v0=84.0)
    geom = tp.Geometry(tp.geometry.DEFAULT_GRID, [params.to_view()])
    ph = tp.phantoms.load("bead_cage")
    p = bead_line_integrals(ph, geom)[0]
    d = bead_design(ph)
    true = geom.project_points(d.positions)[0].numpy()
    inside = np.all((true > 25) & (true < 375), axis=1)
    assert inside.sum() >= 8
    return p, true[inside], geom


def _match(found, true):
    dist = np.linalg.norm(found[:, None] - true[None], axis=-1)
    j = dist.argmin(0)
    assert np.all(dist[j, np.arange(len(true))] < 1.0), "a bead was not detected"
    return found[j] - true


def test_fast_simulation_equals_phantom_line_integrals():
    params = tp.geometry.default_frontal().binned(16)
    geom = tp.Geometry(tp.geometry.DEFAULT_GRID, [params.to_view()])
    full = tp.phantoms.load("bead_two_ring")
    ph = full._replace(full.shapes[:8])  # support tube (two cylinders) and six beads
    fast = bead_line_integrals(ph, geom)
    assert torch.allclose(fast, ph.line_integrals(geom), atol=1e-12)


def test_precision_at_1000_photons(roi):
    p, true, _ = roi
    gen = torch.Generator().manual_seed(1)
    errors = []
    for _ in range(12):
        counts = torch.poisson(1000.0 * torch.exp(-p), generator=gen)
        det = detect_beads(counts, kind="raw", flat=1000.0)
        errors.append(_match(det.positions, true))
    e = np.array(errors)  # (seeds, beads, 2)
    precision = e.std(axis=0, ddof=1).mean(axis=0)  # 1 sigma per axis, mean over beads
    assert np.all(precision <= 0.05), precision
    # the detector's own precision estimate is of the right size
    assert 0.5 < det.sigma.mean() / precision.mean() < 2.0
    assert np.all(np.abs(e.mean(axis=0)) < 0.05)


def test_noise_free_centroid_matches_projected_centre(roi):
    """Sampling plus perspective bias of the shadow centroid (noise free) is small."""
    p, true, _ = roi
    det = detect_beads(p, kind="line_integrals")
    e = _match(det.positions, true)
    assert np.abs(e).max() < 0.05
    assert np.sqrt(np.mean(e**2)) < 0.025
    # radius of the beads' shadows: 0.75 mm bead, magnification ~1.5, 0.2 mm pixels -> ~5.6 px
    j = np.linalg.norm(det.positions[:, None] - true[None], axis=-1).argmin(0)
    assert np.all(np.abs(det.radius[j] - 0.75 * 1.5 / 0.2) < 0.8)


def test_local_background_removes_gradients(roi):
    p, true, _ = roi
    rows, cols = p.shape
    r, c = np.mgrid[0:rows, 0:cols]
    ramp = 0.4 + 0.002 * c - 0.0015 * r + 0.2 * np.sin(r / 60.0)
    det = detect_beads(p.numpy() + ramp, kind="line_integrals")
    assert np.abs(_match(det.positions, true)).max() < 0.05


def test_positions_are_col_row():
    img = np.zeros((64, 96))
    rr, cc = np.mgrid[0:64, 0:96]
    img += 1.0 * np.clip(1 - ((cc - 70.3) ** 2 + (rr - 20.6) ** 2) / 16.0, 0, None) ** 0.5
    det = detect_beads(img, kind="line_integrals", expected_radius_px=4.0, min_snr=0)
    assert len(det) == 1
    assert np.allclose(det.positions[0], [70.3, 20.6], atol=0.05)


def test_bad_images_raise_clear_errors():
    img = np.full((64, 64), 1000.0)
    img[10, 12] = np.nan
    with pytest.raises(ValueError, match=r"1 NaN .*row 10, col 12"):
        detect_beads(img)
    with pytest.raises(ValueError, match="2D"):
        detect_beads(np.zeros((2, 64, 64)))
    with pytest.raises(ValueError, match="kind"):
        detect_beads(np.ones((64, 64)), kind="log")
    with pytest.raises(ValueError, match="negative"):
        detect_beads(-np.ones((64, 64)))
    with pytest.raises(ValueError, match="expected_radius_px"):
        detect_beads(np.ones((64, 64)), expected_radius_px=-1)
    with pytest.raises(TypeError):
        detect_beads(np.array([["a"] * 10] * 10))


def test_raw_counts_and_normalised_intensities_agree(roi):
    p, true, _ = roi
    counts = torch.poisson(1000.0 * torch.exp(-p), generator=torch.Generator().manual_seed(5)).numpy()
    a = detect_beads(counts)
    b = detect_beads(counts / 1000.0 * 0.37)  # same image as normalised intensities, no flat given
    assert len(a) == len(b) >= len(true)
    assert np.allclose(a.positions, b.positions, atol=1e-9)
    with pytest.raises(ValueError, match="all zero"):
        detect_beads(np.zeros((32, 32)))


def test_empty_image_gives_no_detections():
    rng = np.random.default_rng(0)
    det = detect_beads(rng.poisson(1000.0, (128, 128)).astype(float))
    assert len(det) == 0 and det.positions.shape == (0, 2)
    assert math.isfinite(det.noise)
