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


def test_console_script_asks_for_huge_pages_unless_the_user_chose(monkeypatch):
    from tomoprior.cli.main import HUGE_PAGES_ENV, use_huge_pages

    env = {}
    assert use_huge_pages(env) and env == {HUGE_PAGES_ENV: "1"}
    env = {HUGE_PAGES_ENV: "0"}
    assert not use_huge_pages(env) and env == {HUGE_PAGES_ENV: "0"}
    monkeypatch.delenv(HUGE_PAGES_ENV, raising=False)
    assert main(["--version"]) == 0
    import os

    assert os.environ[HUGE_PAGES_ENV] == "1"


def test_huge_pages_back_large_tensors_when_the_kernel_allows(tmp_path):
    """The mechanism on this machine: after use_huge_pages() a fresh 64 MiB tensor lies in
    transparent huge pages (torch reads the variable at its first large allocation)."""
    import subprocess
    import sys
    from pathlib import Path

    mode = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not mode.is_file() or "[never]" in mode.read_text():
        pytest.skip("transparent huge pages are unavailable or off in this kernel")
    code = ("import re, torch\n"
            "from tomoprior.cli.main import use_huge_pages\n"
            "use_huge_pages()\n"
            "x = torch.empty(16 * 2**20); x.fill_(1.0)\n"
            "kb = int(re.search(r'AnonHugePages:\\s+(\\d+)', open('/proc/self/smaps_rollup').read()).group(1))\n"
            "print(kb)\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split()[-1]) >= 32 * 1024  # at least half of the 64 MiB in 2 MiB pages


def test_console_script_lets_idle_openmp_threads_sleep_unless_the_user_chose():
    """use_passive_omp_wait sets OMP_WAIT_POLICY=PASSIVE only where it is unset, and the console
    script does so before torch loads (OpenMP reads it then): checked in fresh interpreters."""
    import os
    import subprocess
    import sys

    from tomoprior.cli.main import OMP_WAIT_ENV, use_passive_omp_wait

    env: dict = {}
    assert use_passive_omp_wait(env) == "PASSIVE" and env == {OMP_WAIT_ENV: "PASSIVE"}
    env = {OMP_WAIT_ENV: "ACTIVE"}
    assert use_passive_omp_wait(env) == "ACTIVE" and env == {OMP_WAIT_ENV: "ACTIVE"}
    base = {k: v for k, v in os.environ.items() if k != OMP_WAIT_ENV}
    code = ("import sys\n"
            "from tomoprior.cli.main import main\n"
            "assert 'torch' not in sys.modules, 'torch loaded before the console script could set the policy'\n"
            "sys.argv = ['tomoprior', 'info', '--json']\n"
            "main()\n")
    for extra, expected in (({}, "PASSIVE"), ({OMP_WAIT_ENV: "ACTIVE"}, "ACTIVE")):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**base, **extra},
                             timeout=300)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["omp_wait_policy"] == expected


def test_info_lists_backends_and_phantoms():
    result = CliRunner().invoke(cli, ["info", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["backends"]["torch"]["available"] and data["backends"]["reference"]["available"]
    assert "shepp_logan_3d_modified" in data["phantoms"]
    assert data["packages"]["torch"] and set(data["huge_pages"]) == {"THP_MEM_ALLOC_ENABLE", "kernel"}
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
