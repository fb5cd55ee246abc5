"""Aiming a parametric geometry at an off-centre volume, and how much of a volume a view sees."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import tomoprior as tp
from tomoprior.geometry import volume_coverage

OFF_CENTRE = tp.VolumeGrid((40, 50, 50), (3.0, 3.0, 3.0), center=(110.0, -95.0, -60.0))


def test_isocenter_volume_aims_both_views_at_the_grid_centre():
    g = tp.BiplanarGeometry.from_parameters(grid=OFF_CENTRE, binning=16, isocenter="volume")
    for p in g.parameters:
        assert torch.as_tensor(p.isocenter).tolist() == pytest.approx([110.0, -95.0, -60.0])
    # the grid centre is on both central rays: it projects to the detector centre
    rows, cols = g.views[0].shape
    assert g.project_points([OFF_CENTRE.center])[:, 0].numpy() == pytest.approx(
        np.array([[(cols - 1) / 2, (rows - 1) / 2]] * 2), abs=1e-9)
    assert g.coverage() == pytest.approx((1.0, 1.0))
    # the geometry moved rigidly: distances are those of the defaults
    nominal = tp.BiplanarGeometry.from_parameters(binning=16)
    for a, b in zip(g.views, nominal.views):
        assert float(torch.linalg.norm(a.detector_center - a.source)) == pytest.approx(
            float(torch.linalg.norm(b.detector_center - b.source)))
        assert torch.allclose(a.source - b.source, torch.tensor([110.0, -95.0, -60.0], dtype=a.source.dtype))


def test_aimed_at_equals_isocenter_volume_and_keeps_the_calibration():
    calibrated = tp.BiplanarGeometry.from_parameters(binning=16).perturbed(
        {"frontal": {"u0": 2.0, "detector_tilt_u_deg": 0.5}, "lateral": {"source_to_detector": 7.0}})
    with pytest.warns(tp.GeometryWarning, match="only"):
        calibrated.with_grid(OFF_CENTRE).warn_if_partly_seen()  # with_grid itself does not check
    aimed = calibrated.aimed_at(OFF_CENTRE)
    assert isinstance(aimed, tp.BiplanarGeometry) and aimed.grid == OFF_CENTRE
    assert float(aimed.parameters[0].u0) == 2.0 and float(aimed.parameters[1].source_to_detector) == 1507.0
    by_option = tp.BiplanarGeometry.from_parameters(*calibrated.parameters, grid=OFF_CENTRE, isocenter="volume")
    assert torch.allclose(aimed.vectors, by_option.vectors)
    explicit = tp.BiplanarGeometry.from_parameters(grid=OFF_CENTRE, binning=16, isocenter=(110.0, -95.0, -60.0))
    assert torch.allclose(explicit.vectors, tp.BiplanarGeometry.from_parameters(
        grid=OFF_CENTRE, binning=16, isocenter="volume").vectors)


def test_unaimed_off_centre_volume_warns_with_the_fix():
    with pytest.warns(tp.GeometryWarning, match=r"views\[0\] \(frontal\): only \d+% of the volume box .*"
                                                  r"isocenter='volume'.*aimed_at"):
        g = tp.BiplanarGeometry.from_parameters(grid=OFF_CENTRE, binning=16)
    assert min(g.coverage()) < 0.5
    # a centred grid of the same size is fully seen and does not warn
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        centred = tp.BiplanarGeometry.from_parameters(grid=tp.VolumeGrid((40, 50, 50), (3.0, 3.0, 3.0)), binning=16)
    assert min(centred.coverage()) == 1.0


def test_bad_isocenter_arguments():
    with pytest.raises(ValueError, match="isocenter must be 'volume' or"):
        tp.BiplanarGeometry.from_parameters(grid=OFF_CENTRE, isocenter="grid")
    with pytest.raises(ValueError, match="isocenter"):
        tp.BiplanarGeometry.from_parameters(grid=OFF_CENTRE, isocenter=(1.0, 2.0))
    with pytest.raises(ValueError, match="aimed_at: grid must be a VolumeGrid"):
        tp.BiplanarGeometry.from_parameters(binning=16).aimed_at((0.0, 0.0, 0.0))


def test_volume_coverage_of_a_box_straddling_the_detector_edge():
    g = tp.BiplanarGeometry.from_parameters(binning=16)
    frontal = g.views[0]
    # the frontal detector's field at the isocenter plane: 307.2 mm / 1.5 = 204.8 mm, edge at x = 102.4
    half_in = tp.VolumeGrid((10, 10, 10), (4.0, 4.0, 4.0), center=(102.4, 0.0, 0.0))
    assert volume_coverage(frontal, half_in, samples=20) == pytest.approx(0.5, abs=0.06)
    inside = tp.VolumeGrid((10, 10, 10), (4.0, 4.0, 4.0))
    assert volume_coverage(frontal, inside) == 1.0
    outside = tp.VolumeGrid((10, 10, 10), (4.0, 4.0, 4.0), center=(300.0, 0.0, 0.0))
    assert volume_coverage(frontal, outside) == 0.0
    with pytest.raises(ValueError, match="samples must be a positive integer"):
        volume_coverage(frontal, inside, samples=0)
