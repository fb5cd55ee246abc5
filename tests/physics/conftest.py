"""Fixtures for the physics tests: small geometries, and single-threaded torch.

The test machine runs many jobs on two cores; torch's intra-op threads then spend more time
waiting for each other than computing on the small tensors used here.
"""

from __future__ import annotations

import pytest
import torch

import tomoprior as tp


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def small_geom() -> tp.Geometry:
    """The default bi-planar geometry read out 32 x 32 binned (48 x 48 pixels of 6.4 mm) with a
    16^3 grid of 8 mm voxels."""
    return tp.BiplanarGeometry.from_parameters(binning=32, grid=tp.VolumeGrid((16, 16, 16), (8.0, 8.0, 8.0)))


def axis_view(offsets_mm, sdd_mm: float = 1000.0, cols: int = 1, pitch_u: float = 10.0) -> tp.View:
    """A detector at ``sdd_mm`` from a source on the z axis whose rows sit at ``offsets_mm``
    along +x (the detector's v axis); equally spaced offsets symmetric about 0 required."""
    import numpy as np

    off = np.asarray(offsets_mm, dtype=float)
    step = float(off[1] - off[0])
    assert np.allclose(np.diff(off), step) and abs(off[0] + off[-1]) < 1e-9
    return tp.View(source=(0.0, 0.0, sdd_mm), detector_center=(0.0, 0.0, 0.0), u=(0.0, pitch_u, 0.0),
                   v=(step, 0.0, 0.0), shape=(len(off), cols))
