"""Projectors against exact line integrals: the 3D Shepp-Logan head rasterised at 128^3,
projected through randomly miscalibrated bi-planar views (detector and isocenter
offsets up to 10 mm, detector tilts up to 3 degrees, in-plane rotation), every backend in the
registry (``tests/conftest.py::BACKENDS``; one that cannot run here is skipped with the reason).

The target: median relative error over rays crossing the head
<= 1 %. What remains is the rasterisation's partial-volume error at the skull's edges,
so the 95th percentile is larger; it is bounded loosely to catch gross errors.
"""

import dataclasses
import math

import numpy as np
import pytest
import torch

import tomoprior as tp
from tests.conftest import BACKENDS
from tomoprior.validation import compare_to_analytic

#: The volume's dtype per backend: float64 (the rasterised reference's own) unless the backend
#: computes in float32 anyway; numba runs its everyday float32 path (float64 is tested in
#: tests/projectors).
DTYPES = {"numba": torch.float32}


def _dtype(backend: str) -> torch.dtype:
    if backend in DTYPES:
        return DTYPES[backend]
    return torch.float64 if tp.projectors.get_backend(backend).native_float64 else torch.float32


def _miscalibrated(rng: np.random.Generator, base: tp.ViewParameters) -> tp.ViewParameters:
    rad = math.radians
    return dataclasses.replace(
        base,
        u0=rng.uniform(-10, 10),
        v0=rng.uniform(-10, 10),
        detector_rotation=float(base.detector_rotation) + rad(rng.uniform(-3, 3)),
        detector_tilt_u=rad(rng.uniform(-3, 3)),
        detector_tilt_v=rad(rng.uniform(-3, 3)),
        primary_angle=float(base.primary_angle) + rad(rng.uniform(-5, 5)),
        secondary_angle=float(base.secondary_angle) + rad(rng.uniform(-5, 5)),
        source_to_detector=float(base.source_to_detector) + rng.uniform(-30, 30),
        source_to_isocenter=float(base.source_to_isocenter) + rng.uniform(-30, 30),
        isocenter=tuple(rng.uniform(-5, 5, 3)),
    )


@pytest.fixture(scope="module")
def setup():
    grid = tp.VolumeGrid((128, 128, 128), (1.5, 1.5, 1.5))
    phantom = tp.phantoms.Phantom.load("shepp_logan_3d_modified")
    # 4^3 sub-samples per voxel: the voxel averages the piecewise-constant "reference" model assumes
    volume = phantom.rasterize(grid, supersample=4, dtype=torch.float64)
    cases = []
    for seed in (0, 1):
        rng = np.random.default_rng(seed)
        nominal = tp.BiplanarGeometry.from_parameters(grid=grid, binning=8)
        frontal, lateral = (_miscalibrated(rng, p) for p in nominal.parameters)
        geom = tp.BiplanarGeometry.from_parameters(frontal, lateral, grid)
        cases.append((geom, phantom.line_integrals(geom)))
    return phantom, volume, cases


@pytest.mark.parametrize("backend", BACKENDS)
def test_shepp_logan_at_128_cubed_matches_exact_line_integrals(setup, backend):
    phantom, volume, cases = setup
    for geom, analytic in cases:
        vol = volume.to(_dtype(backend))
        cmp = compare_to_analytic(phantom, geom, backend, volume=vol, analytic=analytic)
        assert cmp.median_relative_error <= 0.01, (backend, cmp.to_dict())
        assert cmp.p95_relative_error <= 0.15, (backend, cmp.to_dict())
        for v in cmp.per_view:
            assert v["rays_crossing"] > 10_000  # the head fills a good part of each detector
