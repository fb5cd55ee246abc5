"""End to end: simulated raw radiographs of the bead cage -> detect -> match -> fit."""

from __future__ import annotations

import numpy as np
import pytest

import tomoprior as tp
from tomoprior.calibration import bead_design, bead_line_integrals, bead_radiographs, calibrate

from .conftest import true_and_initial

PITCH = 0.3
SHAPE = (832, 832)


def _binned(params):
    return [p.replace(pixel_pitch=PITCH, detector_shape=SHAPE) for p in params]


def _check(res, true, design):
    assert res.converged, res.message
    assert all(len(d) >= 45 for d in res.detections)
    assert all(len(r) + len(h) >= 45 for r, h in zip(res.residuals, res.heldout_residuals))
    # held-out beads: fitted vs true projections (noise free), in pixels
    errs = []
    for v, (p, q) in enumerate(zip(res.parameters, true)):
        idx = [design.ids.index(i) for i in res.heldout_ids[v]]
        errs.append(p.to_view().project_points(design.positions[idx]).numpy()
                    - q.to_view().project_points(design.positions[idx]).numpy())
    e = np.concatenate(errs)
    assert np.sqrt(np.mean(np.sum(e**2, axis=1))) <= 0.1
    assert res.triangulation_rms_mm <= 0.2
    for p, q, u in zip(res.parameters, true, res.uncertainty):
        assert abs(p.source_to_detector - q.source_to_detector) <= 4 * u["source_to_detector"]
        assert abs(p.u0 - q.u0) / PITCH <= 0.2 and abs(p.v0 - q.v0) / PITCH <= 0.2


def test_end_to_end_from_raw_images():
    true, init = true_and_initial(3)
    true, init = _binned(true), _binned(init)
    geom = tp.BiplanarGeometry(tp.geometry.DEFAULT_GRID, true)
    phantom = tp.phantoms.load("bead_cage")
    images = bead_radiographs(phantom, geom, photons_per_pixel=1000.0, seed=11)
    res = calibrate(images, phantom, init, kind="raw", flat=1000.0, heldout=0.2, seed=0)
    _check(res, true, bead_design(phantom))
    # detection precision shows in the fit residual: well below 0.1 px per axis here
    assert res.sigma_px < 0.1


@pytest.mark.slow
def test_end_to_end_with_physics_radiograph():
    """Heel effect, focal-spot blur and Poisson noise from tomoprior.physics (slow: exact
    line integrals of every shape over the full detectors)."""
    physics = pytest.importorskip("tomoprior.physics")
    if not hasattr(physics, "radiograph"):
        pytest.skip("tomoprior.physics.radiograph is not available")
    true, init = true_and_initial(6)
    true, init = _binned(true), _binned(init)
    geom = tp.BiplanarGeometry(tp.geometry.DEFAULT_GRID, true)
    phantom = tp.phantoms.load("bead_cage")
    images = physics.radiograph(phantom, geom, photons_per_pixel=1000.0, heel=True, focal_spot_mm=0.6, seed=3)
    res = calibrate(images, phantom, init, kind="raw", heldout=0.2, seed=0)
    _check(res, true, bead_design(phantom))


def test_fast_simulation_matches_exact_integrals_near_a_bead():
    """bead_line_integrals evaluates beads only near their shadows: check a window centred
    on one bead's shadow (several shadows overlap the window edges) against the exact sum."""
    ph = tp.phantoms.load("bead_cage")
    small = ph._replace([s for s in ph.shapes if (s.label or "").startswith("bead")][:12])
    params = tp.geometry.default_frontal(pixel_pitch=0.5, detector_shape=(48, 48))
    c, r = params.to_view().project_points(small[5].center[None]).numpy()[0]
    params = params.replace(u0=-(c - 23.5) * 0.5 + 0.13, v0=-(r - 23.5) * 0.5 - 0.21)
    geom = tp.Geometry(tp.geometry.DEFAULT_GRID, [params.to_view()])
    exact = small.line_integrals(geom).numpy()
    assert exact.max() > 1.0  # the bead's shadow is in the window
    assert np.allclose(bead_line_integrals(small, geom).numpy(), exact, atol=1e-12)
