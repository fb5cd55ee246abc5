"""The units layer: one attenuation table for physics, HU conversions and the skull; HU
conversions exact at air and water; one bone threshold; the constants load nothing heavy."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources

import numpy as np
import pytest
import torch

import tomoprior as tp
from tomoprior import units
from tomoprior.phantoms.skull import growth, make_skull


def test_constants_load_no_heavy_library(tmp_path):
    code = ("import sys, json\nimport tomoprior.units as u\nassert u.BONE_THRESHOLD_MU == 0.035\n"
            "print(json.dumps(sorted(m for m in ('torch', 'numpy') if m in sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_shipped_table_is_small_and_loads_without_xraylib(monkeypatch):
    ref = resources.files("tomoprior.units").joinpath("data", "attenuation.npz")
    with resources.as_file(ref) as path:
        assert path.stat().st_size < 200_000
    monkeypatch.setitem(sys.modules, "xraylib", None)  # any import of xraylib would now fail
    units.attenuation._table.cache_clear()
    assert float(units.linear_attenuation("water", 60.0)) == pytest.approx(0.02059, rel=2e-3)
    assert "xraylib" in units.table_source()


def test_physics_data_and_skull_read_the_one_table():
    assert tp.physics.linear_attenuation is units.linear_attenuation
    assert tp.physics.material is units.material
    assert tp.data.mu_water is units.mu_water and tp.data.hu_to_mu is units.hu_to_mu
    assert tp.data.mu_to_hu is units.mu_to_hu
    for e in (30.0, 45.0, 60.0, 75.0, 150.0):
        mw = float(units.linear_attenuation("water", e))
        assert units.mu_water(e) == mw
        for key, (name, density) in growth.MATERIALS.items():
            assert growth.linear_attenuation(key, e) == float(units.linear_attenuation(name, e, density=density)), key
    # the skull's water-like materials are the table's water: CSF and the globes
    skull = make_skull(age_years=1.0, seed=None)
    assert skull.attenuation["csf"] == skull.attenuation["eye"] == units.mu_water(60.0)
    # the ICRP soft tissue at ICRP's density (the table's nominal density is 1.0 g/cm^3)
    assert skull.attenuation["soft_tissue"] == pytest.approx(
        1.03 * float(units.linear_attenuation("soft_tissue_icrp", 60.0)), rel=1e-12)


def test_hu_conversions_exact_at_air_and_water_and_inverse():
    for e in (30.0, 60.0, 150.0):
        mw = units.mu_water(e)
        assert units.mu_to_hu(0.0, e) == -1000.0 and units.mu_to_hu(mw, e) == 0.0
        assert float(units.hu_to_mu(0.0, e)) == mw and float(units.hu_to_mu(-1000.0, e)) == 0.0
    hu = np.array([-1000.0, -500.0, 0.0, 700.0, 2500.0])
    assert np.allclose(units.mu_to_hu(units.hu_to_mu(hu, 70.0), 70.0), hu, rtol=0, atol=1e-9)
    # below air is clipped (nothing attenuates less than vacuum)
    assert float(units.hu_to_mu(-1200.0)) == 0.0
    t = torch.tensor([-1200.0, 0.0, 1000.0], dtype=torch.float32)
    mu = units.hu_to_mu(t)
    assert mu.dtype == torch.float32 and mu.tolist() == pytest.approx([0.0, units.mu_water(), 2 * units.mu_water()])
    assert units.mu_to_hu(mu).dtype == torch.float32
    # the skull's HU are the same conversion
    assert growth.attenuation_to_hu is units.mu_to_hu and growth.hu_to_attenuation is units.hu_to_mu


def test_mu_water_rejects_bad_energies():
    with pytest.raises(TypeError, match="number in keV"):
        units.mu_water("sixty")
    for bad in (10.0, 200.0, float("nan")):
        with pytest.raises(ValueError, match=r"\[30, 150\] keV"):
            units.mu_water(bad)


def test_bone_threshold_is_one_constant():
    assert units.BONE_THRESHOLD_MU == 0.035
    assert tp.metrics.bone.DEFAULT_BONE_THRESHOLD_MU is units.BONE_THRESHOLD_MU
    # about 700 HU at the default 60 keV, between the skull's diploe and its vault tables
    assert units.mu_to_hu(units.BONE_THRESHOLD_MU) == pytest.approx(700.0, abs=1.0)
    mu = make_skull(age_years=1.0, seed=None).attenuation
    assert mu["diploe"] < units.BONE_THRESHOLD_MU < mu["cortical_bone"]
    psctnet = pytest.importorskip("psctnet")
    assert psctnet.PSCTNetConfig().bone_threshold == units.BONE_THRESHOLD_MU
