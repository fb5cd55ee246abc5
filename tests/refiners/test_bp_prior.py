"""The built-in ``bp-prior`` refiner."""

import math

import pytest
import torch

import tomoprior as tp
from tomoprior.refiners import BPPrior, BPPriorConfig, Refiner, build_prior, load


@pytest.fixture(scope="module")
def case():
    grid = tp.VolumeGrid((24, 24, 24), (8.0, 8.0, 8.0))
    geom = tp.BiplanarGeometry.from_parameters(binning=12, grid=grid)  # 128 x 128 pixels of 2.4 mm
    phantom = tp.phantoms.Phantom([tp.phantoms.Sphere((10.0, -20.0, 5.0), 50.0, 0.02),
                                   tp.phantoms.Ellipsoid((-20.0, 25.0, -10.0), (30.0, 20.0, 40.0), 0.01)])
    xrays = phantom.line_integrals(geom).float()[None]  # (1, 2, 128, 128)
    return geom, xrays, phantom.rasterize(grid).float()[None, None]


def test_default_is_the_prior(case):
    geom, xrays, _ = case
    model = load("bp-prior")
    assert list(model.parameters()) == []
    prior = build_prior(xrays, geom)
    torch.testing.assert_close(model(xrays, geom, prior), prior, rtol=0, atol=0)


def test_calibrate_recovers_an_affine_map(case):
    geom, xrays, _ = case
    prior = build_prior(xrays, geom)
    model = load("bp-prior").calibrate(xrays, geom, 2.5 * prior - 0.3)
    assert math.isclose(model.config.gain, 2.5, rel_tol=1e-5)
    assert math.isclose(model.config.offset, -0.3, abs_tol=1e-5)
    torch.testing.assert_close(model(xrays, geom, prior), 2.5 * prior - 0.3, atol=1e-5, rtol=1e-5)


def test_calibrated_baseline_beats_the_raw_prior_on_the_target(case):
    """Against the true volume the least-squares affine map can only lower the error."""
    geom, xrays, target = case
    prior = build_prior(xrays, geom, divide_by_chord=True)
    model = load("bp-prior", normalization="chord")
    raw = (model(xrays, geom, prior) - target).square().mean()
    model.calibrate(xrays, geom, target)
    fitted = (model(xrays, geom, prior) - target).square().mean()
    assert fitted < raw


def test_chord_normalisation_gives_attenuation_units(case):
    geom, _, _ = case
    mu = 0.015
    drr = tp.project(torch.full(geom.grid.shape, mu), geom)[None]
    out = load("bp-prior", normalization="chord").reconstruct(drr[0], geom)
    inner = out[0, 3:-3, 3:-3, 3:-3]
    assert (inner - mu).abs().max() < 0.02 * mu


def test_clamp_and_checkpoint(case, tmp_path):
    geom, xrays, _ = case
    model = load("bp-prior", offset=-1e3, clamp_min=0.0)
    assert float(model.reconstruct(xrays[0], geom).max()) == 0.0
    model.save_checkpoint(tmp_path / "bp.pt")
    again = Refiner.from_checkpoint(tmp_path / "bp.pt")
    assert isinstance(again, BPPrior) and again.config == model.config


def test_config_validation():
    with pytest.raises(ValueError, match="normalization must be one of"):
        BPPriorConfig(normalization="mean")
    with pytest.raises(ValueError, match="gain must be a finite number"):
        BPPriorConfig(gain=float("nan"))
