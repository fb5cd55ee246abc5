"""Spectra (SpekPy) and mono-/polychromatic Beer-Lambert."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tomoprior import physics as ph


@pytest.fixture(scope="module")
def spec70() -> ph.Spectrum:
    return ph.spectrum(70, 12, {"Al": 2.5})


def test_spectrum_against_spekpy(spec70):
    spekpy = pytest.importorskip("spekpy")
    s = spekpy.Spek(kvp=70, th=12)
    s.filter("Al", 2.5)
    assert float(spec70.mean_energy) == pytest.approx(s.get_emean(), rel=1e-3)
    assert float(spec70.total_fluence) == pytest.approx(s.get_flu(), rel=1e-3)
    # HVL from our attenuation table and NIST mu_en of air vs SpekPy's own
    assert spec70.hvl() == pytest.approx(s.get_hvl1(), rel=0.02)
    assert float(spec70.energies_keV.max()) < 70 and float(spec70.energies_keV.min()) >= 1.0


def test_spectrum_normalisation_and_hardening(spec70):
    n = spec70.normalized()
    assert float((n.fluence * n.bin_width_keV).sum()) == pytest.approx(1.0, abs=1e-12)
    assert float(spec70.weights.sum()) == pytest.approx(1.0, abs=1e-12)
    assert float(ph.spectrum(70, 12, {"Al": 2.5}, normalize=True).total_fluence) == pytest.approx(1.0)
    harder = ph.spectrum(70, 12, {"Al": 2.5, "Cu": 0.2})
    assert float(harder.mean_energy) > float(spec70.mean_energy) + 2
    assert harder.hvl() > spec70.hvl()
    assert float(ph.spectrum(100, 12).mean_energy) > float(spec70.mean_energy)


def test_spectrum_bad_inputs():
    with pytest.raises(ValueError, match="kvp must lie"):
        ph.spectrum(500)
    with pytest.raises(TypeError, match="kvp must be a number"):
        ph.spectrum("70")
    with pytest.raises(ValueError, match="anode_angle_deg"):
        ph.spectrum(70, 80)
    with pytest.raises(ValueError, match=r"filtration\['Al'\]"):
        ph.spectrum(70, 12, {"Al": -1})
    with pytest.raises(ValueError, match="SpekPy does not know"):
        ph.spectrum(70, 12, {"Kryptonite": 1.0})


def test_mono_equals_poly_with_monoenergetic_spectrum():
    torch.manual_seed(0)
    L_t = torch.rand(5, 7, dtype=torch.float64) * 150
    L_b = torch.rand(5, 7, dtype=torch.float64) * 10
    for e in (30.0, 60.0, 90.0):
        mono_p = ph.linear_attenuation("soft_tissue", e) * L_t + ph.linear_attenuation("cortical_bone", e) * L_b
        mono = ph.monochromatic_intensity(mono_p, 1000.0)
        poly = ph.polychromatic_intensity({"soft_tissue": L_t, "cortical_bone": L_b}, ph.Spectrum.monoenergetic(e),
                                          1000.0)
        torch.testing.assert_close(poly, mono, rtol=1e-12, atol=0)
        # energy weighting does not matter for one energy either
        poly_e = ph.polychromatic_intensity({"soft_tissue": L_t, "cortical_bone": L_b},
                                            ph.Spectrum.monoenergetic(e), 1000.0, weighting="energy")
        torch.testing.assert_close(poly_e, mono, rtol=1e-12, atol=0)


def test_poly_against_explicit_sum(spec70):
    L = torch.tensor([0.0, 10.0, 50.0, 200.0], dtype=torch.float64)
    got = ph.polychromatic_intensity({"water": L}, spec70)
    e = spec70.energies_keV.numpy()
    w = spec70.fluence.numpy() / spec70.fluence.numpy().sum()
    mu = np.array([float(ph.linear_attenuation("water", x)) for x in e])
    want = [(w * np.exp(-mu * x)).sum() for x in L.numpy()]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10)
    assert float(got[0]) == pytest.approx(1.0)


def test_beam_hardening_effective_energy(spec70):
    e0 = ph.effective_energy(spec70, "water", 0.0)
    e100 = ph.effective_energy(spec70, "water", 100.0)
    assert e100 > e0 + 3  # the beam hardens through 10 cm of water
    # the definition: mono attenuation at E_eff equals the polychromatic one
    t = ph.polychromatic_intensity({"water": torch.tensor(100.0, dtype=torch.float64)}, spec70)
    assert float(ph.linear_attenuation("water", e100)) * 100 == pytest.approx(-math.log(float(t)), rel=1e-6)
    assert ph.effective_energy(ph.Spectrum.monoenergetic(55.0), "water", 30.0) == pytest.approx(55.0, abs=1e-6)


def test_gradcheck_beer_lambert(spec70):
    small = ph.Spectrum(spec70.energies_keV[::20].clone(), spec70.fluence[::20].clone(), 10.0)
    L1 = (torch.rand(3, 2, dtype=torch.float64) * 20).requires_grad_()
    L2 = (torch.rand(3, 2, dtype=torch.float64) * 3).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: ph.polychromatic_intensity({"water": a, "steel": b}, small, 100.0),
                                    (L1, L2))
    p = torch.rand(4, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: ph.monochromatic_intensity(x, 50.0), (p,))


def test_attenuation_volume():
    f = torch.zeros(2, 3, 4, dtype=torch.float64)
    f[0] = 1.0
    mu = ph.attenuation_volume({"water": f, "cortical_bone": 1 - f}, 60.0)
    assert float(mu[0, 0, 0]) == pytest.approx(float(ph.linear_attenuation("water", 60.0)))
    assert float(mu[1, 0, 0]) == pytest.approx(float(ph.linear_attenuation("cortical_bone", 60.0)))


def test_beer_lambert_bad_inputs(spec70):
    with pytest.raises(ValueError, match="NaN"):
        ph.monochromatic_intensity(torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match="i0"):
        ph.monochromatic_intensity(torch.tensor([1.0]), -5.0)
    with pytest.raises(ValueError, match="unknown material"):
        ph.polychromatic_intensity({"kryptonite": torch.ones(2)}, spec70)
    with pytest.raises(TypeError, match="path_lengths must be a non-empty dict"):
        ph.polychromatic_intensity(torch.ones(2), spec70)
    with pytest.raises(TypeError, match="spectrum must be"):
        ph.polychromatic_intensity({"water": torch.ones(2)}, "70 kV")
    with pytest.raises(ValueError, match="weighting"):
        ph.polychromatic_intensity({"water": torch.ones(2)}, spec70, weighting="dose")
    with pytest.raises(ValueError, match="broadcastable"):
        ph.polychromatic_intensity({"water": torch.ones(2), "steel": torch.ones(3)}, spec70)


def test_decompose_attenuation_inverts_attenuation_volume_and_names_its_errors():
    from tomoprior.physics import attenuation_volume, decompose_attenuation
    from tomoprior.units import linear_attenuation

    mu = torch.linspace(-0.01, 0.2, 301, dtype=torch.float64)  # below air to metal-like
    f = decompose_attenuation(mu, 60.0)
    assert set(f) == {"soft_tissue", "cortical_bone"}
    torch.testing.assert_close(attenuation_volume(f, 60.0), mu.clamp(min=0.0), atol=1e-12, rtol=0)
    soft, bone = f["soft_tissue"], f["cortical_bone"]
    assert (soft >= 0).all() and (bone >= 0).all() and (soft <= 1 + 1e-12).all()
    mu_soft = float(linear_attenuation("soft_tissue", 60.0))
    assert (bone[mu <= mu_soft] == 0).all()  # no bone in tissue or air
    # at another energy the mix follows each material: bone gains more attenuation at 40 keV
    ratio_bone = float(linear_attenuation("cortical_bone", 40.0) / linear_attenuation("cortical_bone", 60.0))
    ratio_soft = float(linear_attenuation("soft_tissue", 40.0) / linear_attenuation("soft_tissue", 60.0))
    dense = torch.tensor([0.0574], dtype=torch.float64)
    at40 = float(attenuation_volume(decompose_attenuation(dense, 60.0), 40.0) / dense)
    assert at40 == pytest.approx(ratio_bone, rel=1e-2)
    assert ratio_bone > ratio_soft * 1.3
    with pytest.raises(ValueError, match="mu contains NaN"):
        decompose_attenuation(torch.tensor([0.02, float("nan")]), 60.0)
    with pytest.raises(ValueError, match="swap them"):
        decompose_attenuation(mu, 60.0, materials=("cortical_bone", "soft_tissue"))
    with pytest.raises(ValueError, match="pair"):
        decompose_attenuation(mu, 60.0, materials=("water",))
    with pytest.raises(ValueError, match="unobtainium"):
        decompose_attenuation(mu, 60.0, materials=("water", "unobtainium"))
