"""Attenuation data: shipped table against NIST numbers and against xraylib itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tomoprior import physics as ph

# NIST XCOM / Hubbell & Seltzer, total attenuation with coherent scattering, cm^2/g
NIST = [
    ("water", 60.0, 0.2059),
    ("water", 100.0, 0.1707),
    ("aluminium", 60.0, 0.2778),
    ("iron", 60.0, 1.205),
    ("lead", 100.0, 5.549),
    ("air", 40.0, 0.2485),
]


@pytest.mark.parametrize(("name", "energy", "value"), NIST)
def test_against_nist_numbers(name, energy, value):
    assert float(ph.mass_attenuation(name, energy)) == pytest.approx(value, rel=0.01)


def test_water_linear_attenuation_per_mm():
    # 0.2059 cm^2/g * 1 g/cm^3 = 0.2059 /cm = 0.02059 /mm
    assert float(ph.linear_attenuation("water", 60.0)) == pytest.approx(0.02059, rel=2e-3)
    # density override scales linearly
    assert float(ph.linear_attenuation("water", 60.0, density=2.0)) == pytest.approx(
        2 * float(ph.linear_attenuation("water", 60.0)), rel=1e-12)


def test_required_materials_present():
    names = set(ph.materials())
    for m in ["water", "soft_tissue", "brain", "cortical_bone", "air", "aluminium", "steel", "iron", "tungsten",
              "tantalum"]:
        assert m in names


def test_against_xraylib_directly():
    xrl = pytest.importorskip("xraylib")
    rng = np.random.default_rng(0)
    energies = np.exp(rng.uniform(np.log(12.0), np.log(150.0), 25))
    checks = {"water": "Water, Liquid", "cortical_bone": "Bone, Cortical (ICRP)", "brain": "Brain (ICRP)",
              "soft_tissue": "Tissue, Soft (ICRU four-component)"}
    for name, nist in checks.items():
        ours = ph.mass_attenuation(name, energies).numpy()
        ref = np.array([xrl.CS_Total_CP(nist, float(e)) for e in energies])
        np.testing.assert_allclose(ours, ref, rtol=5e-3)
    for name, z in {"tungsten": 74, "tantalum": 73, "aluminium": 13, "iron": 26}.items():
        e = energies[np.abs(energies - xrl.EdgeEnergy(z, xrl.K_SHELL)) > 1.0]
        np.testing.assert_allclose(ph.mass_attenuation(name, e).numpy(),
                                   [xrl.CS_Total(z, float(x)) for x in e], rtol=5e-3)


def test_absorption_edge_is_sharp():
    below, above = ph.mass_attenuation("tungsten", torch.tensor([69.4, 69.6], dtype=torch.float64))
    assert float(above / below) > 4.0  # the tungsten K-edge jump is ~4.4
    edge = ph.mass_attenuation("tungsten", 69.525)  # exactly at the edge: the value above it
    assert float(edge) == pytest.approx(float(above), rel=0.02)


def test_shapes_dtypes_and_gradient():
    e = torch.linspace(20, 120, 12, dtype=torch.float64).reshape(3, 4).requires_grad_()
    mu = ph.linear_attenuation("soft_tissue", e)
    assert mu.shape == (3, 4) and mu.dtype == torch.float64
    mu.sum().backward()
    assert bool((e.grad < 0).all())  # attenuation falls with energy (no edge here)
    assert ph.linear_attenuation("water", torch.tensor(60.0)).dtype == torch.float32


def test_aliases_and_unknown_material():
    assert float(ph.mass_attenuation("Al", 60.0)) == float(ph.mass_attenuation("aluminium", 60.0))
    assert float(ph.mass_attenuation("bone", 60.0)) == float(ph.mass_attenuation("cortical_bone", 60.0))
    with pytest.raises(ValueError, match=r"unknown material 'unobtainium'.*water"):
        ph.linear_attenuation("unobtainium", 60.0)
    with pytest.raises(TypeError, match="material must be a name"):
        ph.linear_attenuation(3, 60.0)


def test_bad_energies_and_density():
    with pytest.raises(ValueError, match="tabulated range"):
        ph.linear_attenuation("water", 500.0)
    with pytest.raises(ValueError, match="tabulated range"):
        ph.linear_attenuation("water", 0.5)
    with pytest.raises(ValueError, match="NaN"):
        ph.linear_attenuation("water", float("nan"))
    with pytest.raises(ValueError, match="density"):
        ph.linear_attenuation("water", 60.0, density=-1.0)
    with pytest.raises(ValueError, match="air and water only"):
        ph.mass_energy_absorption("steel", 60.0)
