"""Fixtures for the PSCT-Net tests: small default bi-planar geometries."""

from __future__ import annotations

import pytest
import tomoprior as tp
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Small convolutions gain nothing from intra-op threads, and on a shared 2-core machine
    OpenMP spin-waiting made these tests up to 20x slower with 2 threads than with 1."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_geometry(n: int, binning: int = 32) -> tp.BiplanarGeometry:
    """Default PA frontal + left lateral views (binned) over an n^3 grid of 192 mm."""
    grid = tp.VolumeGrid((n, n, n), (192.0 / n,) * 3)
    return tp.BiplanarGeometry.from_parameters(grid=grid, binning=binning)


@pytest.fixture(scope="session")
def geom16():
    return make_geometry(16)


@pytest.fixture(scope="session")
def geom32():
    return make_geometry(32)


@pytest.fixture(scope="session")
def geom64():
    return make_geometry(64)
