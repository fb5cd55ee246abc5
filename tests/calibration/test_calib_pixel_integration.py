"""Pixel integration of bead shadows (``bead_line_integrals(..., subsamples=s)``).

Reference: a detector with ``s`` times finer pixels (same centre and extent), exact line
integrals from :meth:`Phantom.line_integrals` at its pixel centres, averaged in intensity over
each ``s x s`` block. Its ray positions are exactly the sub-sample rays of the coarse pixels,
so the two must agree to rounding; a much finer reference shows the convergence.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tomoprior as tp
from tomoprior.calibration import bead_line_integrals, bead_radiographs
from tomoprior.phantoms import Cylinder, Phantom, Sphere


def _fine(view: tp.View, s: int) -> tp.View:
    """The same detector with pixels ``s`` times smaller along both axes."""
    return tp.View(source=view.source, detector_center=view.detector_center, u=view.u / s, v=view.v / s,
                   shape=(view.rows * s, view.cols * s))


def _reference(ph: Phantom, view: tp.View, s: int) -> np.ndarray:
    """``-log`` of the ``s x s`` block mean of ``exp(-p)`` on the finer detector, ``(rows, cols)``."""
    fine = ph.line_integrals(tp.Geometry(tp.geometry.DEFAULT_GRID, [_fine(view, s)]))[0].numpy()
    t = np.exp(-fine).reshape(view.rows, s, view.cols, s).mean(axis=(1, 3))
    return -np.log(t)


@pytest.fixture(scope="module")
def setup():
    """A 24 x 20 detector of 0.4 mm pixels around a 1.5 mm steel bead (shadow ~6 px across),
    its detector offset (u0, v0) chosen so the shadow centre falls at an off-grid position."""
    bead = Sphere(center=(12.0, -20.0, 30.0), radius=0.75, density=0.94, label="bead")
    params = tp.geometry.default_frontal(pixel_pitch=0.4, detector_shape=(24, 20))
    c, r = params.to_view().project_points(bead.center[None]).numpy()[0]
    params = params.replace(u0=-(c - 9.5) * 0.4 + 0.137, v0=-(r - 11.5) * 0.4 - 0.071)
    view = params.to_view().detach().to(torch.float64)
    return bead, view


def _geom(view):
    return tp.Geometry(tp.geometry.DEFAULT_GRID, [view])


@pytest.mark.parametrize("s", [2, 3, 4])
def test_one_bead_equals_block_averaged_finer_detector(setup, s):
    bead, view = setup
    ph = Phantom([bead])
    got = bead_line_integrals(ph, _geom(view), subsamples=s)[0].numpy()
    ref = _reference(ph, view, s)
    assert ref.max() > 1.0  # the shadow is inside
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)
    # and it really differs from centre sampling at the edge pixels
    centre = bead_line_integrals(ph, _geom(view))[0].numpy()
    assert np.abs(got - centre).max() > 0.05


def test_converges_to_the_area_integral(setup):
    """s = 4 is within 0.03 of a 32 x 32 sub-sampled reference everywhere (measured 0.016;
    centre sampling 0.18, s = 2 0.065): edge pixels converge like the sub-sample spacing."""
    bead, view = setup
    ph = Phantom([bead])
    ref = _reference(ph, view, 32)
    got4 = bead_line_integrals(ph, _geom(view), subsamples=4)[0].numpy()
    got1 = bead_line_integrals(ph, _geom(view), subsamples=1)[0].numpy()
    assert np.abs(got4 - ref).max() < 0.03
    assert np.abs(got1 - ref).max() > 0.1
    # the attenuated "mass" (sum of 1 - transmission) is conserved much better
    mass = (1 - np.exp(-ref)).sum()
    assert abs((1 - np.exp(-got4)).sum() - mass) < 2e-3 * mass  # measured 8e-4


def test_flat_regions_and_other_shapes_at_pixel_centres(setup):
    """Off the bead shadow the result is exactly the centre-sampled one (the support is not
    sub-sampled); on it, support(centre) - log(mean exp(-bead(sub)))."""
    bead, view = setup
    support = Cylinder(center=(0.0, 0.0, 0.0), radius=90.0, height=160.0, density=0.00094, label="support")
    ph = Phantom([support, bead])
    s = 3
    got = bead_line_integrals(ph, _geom(view), subsamples=s)[0].numpy()
    centre = bead_line_integrals(ph, _geom(view))[0].numpy()
    p_support = Phantom([support]).line_integrals(_geom(view))[0].numpy()
    assert p_support.min() > 0.05
    np.testing.assert_allclose(got, p_support + _reference(Phantom([bead]), view, s), rtol=0, atol=1e-12)
    off_shadow = _reference(Phantom([bead]), view, s) == 0
    assert off_shadow.sum() > 200
    assert np.array_equal(got[off_shadow], centre[off_shadow])


def test_overlapping_beads_combine_before_the_exponential(setup):
    """Two beads whose shadows (and windows) overlap, plus a distant third one: per-sub-sample
    sums, not a sum of separately integrated shadows."""
    bead, view = setup
    other = Sphere(center=(12.3, -15.0, 30.4), radius=0.6, density=0.94, label="bead2")
    far = Sphere(center=(10.2, -20.0, 33.0), radius=0.5, density=0.94, label="bead3")
    ph = Phantom([bead, other, far])
    s = 3
    got = bead_line_integrals(ph, _geom(view), subsamples=s)[0].numpy()
    ref = _reference(ph, view, s)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)
    separate = sum(_reference(Phantom([b]), view, s) for b in (bead, other, far))
    assert np.abs(separate - ref).max() > 1e-3  # the overlap matters


def test_subsamples_one_is_centre_sampling(setup):
    bead, view = setup
    ph = Phantom([bead])
    exact = ph.line_integrals(_geom(view))
    assert torch.equal(bead_line_integrals(ph, _geom(view), subsamples=1), bead_line_integrals(ph, _geom(view)))
    assert torch.allclose(bead_line_integrals(ph, _geom(view), subsamples=1), exact, atol=1e-12)


def test_banding_keeps_the_result(setup, monkeypatch):
    """A tiny band budget (one row at a time) gives the same numbers."""
    import tomoprior.calibration.simulate as sim

    bead, view = setup
    ph = Phantom([bead])
    full = bead_line_integrals(ph, _geom(view), subsamples=3)
    monkeypatch.setattr(sim, "_BAND_SUBSAMPLES", 1)
    assert torch.equal(bead_line_integrals(ph, _geom(view), subsamples=3), full)


def test_bead_radiographs_accepts_subsamples(setup):
    bead, view = setup
    ph = Phantom([bead])
    p = bead_line_integrals(ph, _geom(view), subsamples=2)
    a = bead_radiographs(ph, _geom(view), photons_per_pixel=500.0, seed=4, subsamples=2)
    b = bead_radiographs(ph, _geom(view), photons_per_pixel=500.0, seed=4, line_integrals=p)
    assert torch.equal(a, b)


@pytest.mark.parametrize("bad", [0, -2, 2.0, 1.5, "4", None, True])
def test_bad_subsamples(setup, bad):
    bead, view = setup
    with pytest.raises(ValueError, match="subsamples"):
        bead_line_integrals(Phantom([bead]), _geom(view), subsamples=bad)
    with pytest.raises(ValueError, match="subsamples"):
        bead_radiographs(Phantom([bead]), _geom(view), subsamples=bad)
