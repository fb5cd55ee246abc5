"""Projection consistency: zero for the volume that made the X-rays, grows with errors."""

import pytest
import torch

import tomoprior as tp
from tomoprior import metrics


def test_projection_consistency():
    grid = tp.VolumeGrid((24, 24, 24), (6.0, 6.0, 6.0))
    geom = tp.BiplanarGeometry.from_parameters(grid=grid, binning=32)
    vol = tp.phantoms.load("shepp_logan_3d_modified").rasterize(grid).double()
    xr = tp.project(vol, geom)
    ok = metrics.projection_consistency(vol, xr, geom)
    assert ok["mae"] < 1e-9 and ok["relative_l2"] < 1e-9
    bad = metrics.projection_consistency(vol * 1.1, xr, geom)
    assert bad["relative_l2"] == pytest.approx(0.1, rel=1e-6)
    assert len(bad["per_view_mae"]) == 2
    with pytest.raises(ValueError, match="projects to"):
        metrics.projection_consistency(vol, xr[:1], geom)
    with pytest.raises(ValueError, match=r"grid\.shape"):
        metrics.projection_consistency(torch.zeros(3, 3, 3), xr, geom)
