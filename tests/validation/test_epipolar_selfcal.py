"""Epipolar self-calibration: a miscalibrated view recovered from exact ellipsoid X-rays alone,
the gauge and prior bookkeeping, and clear errors for bad input."""

from __future__ import annotations

import math

import pytest
import torch

import tomoprior as tp
from tomoprior.phantoms import Ellipsoid, Phantom
from tomoprior.validation.epipolar import (
    DEFAULT_SELF_CALIBRATION_FIELDS,
    SelfCalibrationResult,
    epipolar_consistency,
    self_calibrate,
)

BIG = Ellipsoid((8, -5, 6), (55, 65, 75), 0.02, angles=(0.3, 0.4, 0.2))
SMALL = Ellipsoid((-20, 10, -15), (15, 20, 25), 0.01, angles=(1.0, 0.2, 0.5))


@pytest.fixture(autouse=True)
def one_thread():
    """Small images: torch's thread pool costs more than it gains on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def geom():
    return tp.BiplanarGeometry.from_parameters(binning=24)  # 64 x 64 pixels of 4.8 mm


@pytest.fixture(scope="module")
def images(geom):
    return Phantom([BIG, SMALL]).line_integrals(geom)


def test_recovers_v0_and_source_to_detector_of_the_second_view(geom, images):
    start = geom.perturbed({"lateral": {"v0": 1.5, "source_to_detector": 10.0}})
    r = self_calibrate(images, start, n_planes=64)
    assert isinstance(r, SelfCalibrationResult)
    lat = r.parameters[1]
    v0_err, sdd_err = abs(float(lat.v0)), abs(float(lat.source_to_detector) - 1500.0)
    assert v0_err < 1.5 / 5, v0_err  # measured about 0.03 mm
    assert sdd_err < 10.0 / 5, sdd_err  # measured about 0.6 mm
    # the reference view is the gauge: untouched; the default set refined in the other view
    assert r.reference == 0 and r.free == [(1, f) for f in DEFAULT_SELF_CALIBRATION_FIELDS]
    # the angles carry the stated 1 deg prior, v0 and the distance none
    assert r.prior == {"lateral.detector_rotation": 1.0, "lateral.secondary_angle": 1.0,
                       "lateral.detector_tilt_u": 1.0}
    for f in tp.ViewParameters.SCALAR_FIELDS:
        assert float(getattr(r.parameters[0], f)) == float(getattr(start.parameters[0], f))
    assert r.relative_after < r.relative_before / 3
    truth_floor = float(epipolar_consistency(images, geom, n_planes=64).relative)
    assert r.relative_after < 1.5 * truth_floor
    assert r.objective_after < r.objective_before and r.iterations >= 1
    v = r.values["lateral.source_to_detector"]
    assert v["unit"] == "mm" and v["start"] == pytest.approx(1510.0) and v["refined"] == pytest.approx(
        float(lat.source_to_detector))
    assert r.values["lateral.detector_rotation"]["unit"] == "deg"
    # the refined geometry is a plain geometry of the same class and grid
    assert isinstance(r.geometry, tp.BiplanarGeometry) and r.geometry.grid == geom.grid
    assert not r.geometry.vectors.requires_grad
    assert "lateral.v0" in r.summary() and r.to_dict()["values"]["lateral.v0"]["unit"] == "mm"


def test_explicit_parameters_and_priors(geom, images):
    start = geom.perturbed({"frontal": {"v0": 1.0}})
    # a mapping names exactly what is refined, here the frontal view's v0; a prior pulls to the start
    free = self_calibrate(images, start, {"frontal": ["v0"]}, n_planes=32, max_iterations=15, prior={})
    held = self_calibrate(images, start, {0: ["v0"]}, n_planes=32, max_iterations=15, prior={"v0": 0.01},
                          residual_scale=0.01)
    assert free.reference is None and free.free == [(0, "v0")] and free.prior == {}
    assert abs(float(free.parameters[0].v0)) < 0.3
    assert held.prior == {"frontal.v0": 0.01}
    assert abs(float(held.parameters[0].v0) - 1.0) < 0.1  # a 0.01 mm prior keeps it near its start
    # a weakly observed field refined through a list gets the default prior
    r = self_calibrate(images, geom, ["u0"], n_planes=32, max_iterations=3)
    assert r.prior == {"lateral.u0": 2.0}


def test_bad_input_gives_clear_errors(geom, images):
    with pytest.raises(ValueError, match=r"unknown parameter name.*v00"):
        self_calibrate(images, geom, ["v00"])
    with pytest.raises(ValueError, match="plain name"):
        self_calibrate(images, geom, ["detector_rotation_deg"])
    with pytest.raises(ValueError, match="unknown view 'side'"):
        self_calibrate(images, geom, {"side": ["v0"]})
    with pytest.raises(ValueError, match="view index 2 out of range"):
        self_calibrate(images, geom, {2: ["v0"]})
    with pytest.raises(ValueError, match="no parameter to refine"):
        self_calibrate(images, geom, [])
    with pytest.raises(ValueError, match="reference must be a view index"):
        self_calibrate(images, geom, reference=5)
    with pytest.raises(ValueError, match="leave reference unset"):
        self_calibrate(images, geom, {"lateral": ["v0"]}, reference=0)
    with pytest.raises(ValueError, match="ParametricGeometry"):
        self_calibrate(images, tp.geometry.Geometry(geom.grid, geom.views))
    with pytest.raises(ValueError, match="residual_scale"):
        self_calibrate(images, geom, residual_scale=0.0)
    with pytest.raises(ValueError, match="max_iterations"):
        self_calibrate(images, geom, max_iterations=0)
    with pytest.raises(ValueError, match=r"prior\['v0'\]"):
        self_calibrate(images, geom, prior={"v0": -1.0})
    with pytest.raises(ValueError, match="prior: unknown parameter"):
        self_calibrate(images, geom, prior={"magnification": 1.0})
    bad = images.clone()
    bad[0, 3, 4] = math.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        self_calibrate(bad, geom)
    with pytest.raises(ValueError, match="1 image"):
        self_calibrate(images[:1], geom)
    with pytest.raises(ValueError, match=r"no valid epipolar plane|no signal"):
        self_calibrate(torch.zeros_like(images), geom, n_planes=16)
