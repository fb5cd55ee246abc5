"""The console script: --version, info, simulate (small and fast settings)."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

import tomoprior as tp
from tomoprior.cli.main import cli, main


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert tp.__version__ in result.output


def test_info_lists_backends_and_phantoms():
    result = CliRunner().invoke(cli, ["info", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["backends"]["torch"]["available"] and data["backends"]["reference"]["available"]
    assert "shepp_logan_3d_modified" in data["phantoms"]
    assert data["packages"]["torch"]
    text = CliRunner().invoke(cli, ["info"])
    assert text.exit_code == 0 and "projector backends" in text.output


def test_simulate_writes_consistent_outputs(tmp_path):
    out = tmp_path / "sim"
    result = CliRunner().invoke(
        cli, ["simulate", "--binning", "16", "--grid", "48", "--supersample", "1", "--out", str(out), "--quiet"]
    )
    assert result.exit_code == 0, result.output
    geom = tp.Geometry.load(out / "geometry.yaml")
    assert isinstance(geom, tp.BiplanarGeometry) and geom.grid.shape == (48, 48, 48)
    proj = np.load(out / "projections.npy")
    exact = np.load(out / "analytic.npy")
    assert proj.shape == exact.shape == (2, 96, 96) and proj.dtype == np.float32
    summary = json.loads((out / "summary.json").read_text())
    cmp = summary["projector_vs_analytic"]
    # a coarse 48^3 grid still agrees with the exact integrals to a few percent
    assert cmp["median_relative_error"] < 0.05
    assert np.median(np.abs(proj - exact)[exact > 1e-3] / exact[exact > 1e-3]) == pytest.approx(
        cmp["median_relative_error"], rel=1e-3)
    assert len(list(out.glob("preview_*.png"))) == 2
    import h5py

    with h5py.File(out / "projections.h5") as f:
        assert f.attrs["schema"] == "tomoprior.simulation"
        assert np.array_equal(f["views/0/projection"][()], proj[0])
        assert tp.geometry.io.loads(f.attrs["geometry_yaml"]).grid == geom.grid
    assert not list(out.glob(".*"))  # no temporary files left


def test_simulate_bad_input_is_a_clear_usage_error(tmp_path):
    r = CliRunner().invoke(cli, ["simulate", "--phantom", "no_such_phantom", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "no_such_phantom" in r.output and "shepp_logan_3d" in r.output
    r = CliRunner().invoke(cli, ["simulate", "--geometry", str(tmp_path / "missing.yaml"), "--out", str(tmp_path)])
    assert r.exit_code == 2 and "does not exist" in r.output
    r = CliRunner().invoke(cli, ["simulate", "--backend", "magic", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "available" in r.output
    assert main(["--version"]) == 0
