"""``import tomoprior`` and ``tomoprior --help`` load no heavy library and no layer.

Checked by what a fresh interpreter has in ``sys.modules`` afterwards, not by timing (the
times are measured by ``benchmarks/import_time.py``).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import tomoprior
from tomoprior.cli.main import COMMANDS, cli

HEAVY = ("torch", "numpy", "scipy", "numba", "matplotlib", "h5py")
LAYERS = ("calibration", "data", "geometry", "metrics", "phantoms", "physics", "projectors", "refiners",
          "validation", "studies", "interop")


def _loaded_after(code: str, cwd) -> dict:
    """Run ``code`` in a fresh interpreter; the heavy libraries and tomoprior layers it loaded."""
    probe = (f"{code}\nimport json, sys\n"
             f"mods = set(sys.modules)\n"
             f"print(json.dumps({{'heavy': sorted(m for m in {HEAVY!r} if m in mods),"
             f" 'layers': sorted(m for m in {LAYERS!r} if 'tomoprior.' + m in mods)}}))")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_tomoprior_loads_nothing_heavy(tmp_path):
    assert _loaded_after("import tomoprior; tomoprior.__version__", tmp_path) == {"heavy": [], "layers": []}


def test_help_of_every_command_loads_nothing_heavy(tmp_path):
    calls = [["--help"], ["--version"], *([name, "--help"] for name in COMMANDS), ["dataset", "make", "--help"]]
    code = ("import contextlib, io\nfrom tomoprior.cli.main import main\n"
            f"for argv in {calls!r}:\n"
            "    with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "        rc = main(argv)\n"
            "    assert rc == 0, (argv, rc)\n"
            "    assert 'Usage' in out.getvalue() or argv == ['--version'], argv")
    assert _loaded_after(code, tmp_path) == {"heavy": [], "layers": []}


def test_python_dash_m_runs_the_cli(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tomoprior", "--version"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and tomoprior.__version__ in proc.stdout


def test_public_names_resolve_lazily():
    import tomoprior.geometry as geometry
    import tomoprior.projectors as projectors

    assert tomoprior.VolumeGrid is geometry.VolumeGrid and tomoprior.project is projectors.project
    assert tomoprior.validation.__name__ == "tomoprior.validation"
    assert set(tomoprior.__all__) <= set(dir(tomoprior))
    for name in tomoprior.__all__:
        assert getattr(tomoprior, name) is not None, name
    from tomoprior import BiplanarGeometry, backproject, calibration  # noqa: F401 - the import is the test

    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        tomoprior.no_such_name  # noqa: B018 - the access is the test


def test_every_command_is_listed_and_resolves():
    assert set(COMMANDS) == {"calibrate", "check-geometry", "dataset", "evaluate", "info", "reconstruct", "simulate",
                             "study", "train", "trend", "validate"}
    with cli.make_context("tomoprior", ["--help"], resilient_parsing=True) as ctx:
        assert cli.list_commands(ctx) == sorted(COMMANDS)
        for name in COMMANDS:
            assert cli.get_command(ctx, name).name == name
        assert cli.get_command(ctx, "no-such-command") is None
