"""Shared fixtures: grids, calibrated random geometries, helpers."""

from __future__ import annotations

import math
import signal

import numpy as np
import pytest
import torch

import tomoprior as tp


def registry_backends() -> list:
    """Every registered projector backend as a pytest parameter (in registration order); one
    that cannot run here (e.g. ``astra`` without CUDA) is skipped with the registry's reason.
    A newly registered backend is therefore run through the shared tests automatically."""
    params = []
    for name in tp.projectors.registered():
        reason = tp.projectors.unavailable_reason(name)
        marks = [pytest.mark.skip(reason=f"projector backend {name!r} cannot run here: {reason}")] if reason else []
        params.append(pytest.param(name, marks=marks, id=name))
    return params


#: The shared projector tests run over these (see :func:`registry_backends`).
BACKENDS = registry_backends()


def random_parameters(rng: np.random.Generator, name: str, primary_deg: float, *, shape=(40, 48),
                      pitch=(3.0, 2.5), offsets_mm=10.0, tilt_deg=3.0, rotation_deg=5.0,
                      source_to_isocenter=None, source_to_detector=None) -> tp.ViewParameters:
    """A miscalibrated view: detector and isocenter offsets up to ``offsets_mm``,
    tilts up to ``tilt_deg``, in-plane rotation up to ``rotation_deg``."""
    sod = source_to_isocenter if source_to_isocenter is not None else rng.uniform(700, 1100)
    sdd = source_to_detector if source_to_detector is not None else sod * rng.uniform(1.3, 1.7)
    return tp.ViewParameters(
        name=name,
        primary_angle=math.radians(primary_deg + rng.uniform(-10, 10)),
        secondary_angle=math.radians(rng.uniform(-8, 8)),
        source_to_isocenter=sod,
        source_to_detector=sdd,
        u0=rng.uniform(-offsets_mm, offsets_mm),
        v0=rng.uniform(-offsets_mm, offsets_mm),
        detector_rotation=math.radians(rng.uniform(-rotation_deg, rotation_deg)),
        detector_tilt_u=math.radians(rng.uniform(-tilt_deg, tilt_deg)),
        detector_tilt_v=math.radians(rng.uniform(-tilt_deg, tilt_deg)),
        pixel_pitch=pitch,
        detector_shape=shape,
        isocenter=tuple(rng.uniform(-offsets_mm / 2, offsets_mm / 2, 3)),
    )


def random_geometry(seed: int, grid: tp.VolumeGrid, *, shapes=((40, 48), (44, 36)), pitches=((3.0, 2.5), (2.8, 3.2)),
                    **kw) -> tp.Geometry:
    """Two (or more) randomly miscalibrated views, possibly of different detector shapes."""
    rng = np.random.default_rng(seed)
    views = []
    for i, (shape, pitch) in enumerate(zip(shapes, pitches)):
        views.append(random_parameters(rng, f"view{i}", 90.0 * i, shape=shape, pitch=pitch, **kw).to_view())
    return tp.Geometry(grid, views)


@pytest.fixture
def small_grid() -> tp.VolumeGrid:
    # anisotropic and off-centre on purpose: catches axis-order mistakes
    return tp.VolumeGrid(shape=(12, 14, 16), spacing=(9.0, 8.0, 7.0), center=(3.0, -2.0, 5.0))


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def default_sigint_in_child() -> None:
    """``preexec_fn`` for subprocesses that a test interrupts with SIGINT: Ctrl-C back to its
    default, which a background job (nohup, some CI runners) inherits as ignored; Python then
    installs its KeyboardInterrupt handler in the child."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
