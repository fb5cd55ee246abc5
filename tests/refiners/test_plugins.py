"""Entry-point discovery: install the dummy plugin distribution into a temporary folder and
find it from a fresh interpreter (the real environment is never touched)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import tomoprior

HERE = Path(__file__).parent
REPO = Path(tomoprior.__file__).resolve().parent.parent

PROBE = r"""
import json, torch
import tomoprior as tp
from tomoprior import refiners
out = {"available": refiners.available_refiners()}
model = refiners.load("dummy", scale=3.0)
geom = tp.BiplanarGeometry.from_parameters(binning=16, grid=tp.VolumeGrid((8, 8, 8), (12, 12, 12)))
xrays = torch.ones(1, 2, 96, 96)
prior = refiners.build_prior(xrays, geom)
vol = model(xrays, geom, prior)
out["type"] = type(model).__module__ + "." + type(model).__name__
out["scale"] = model.config.scale
out["max_abs_err"] = float((vol - 3.0 * prior).abs().max())
model.save_checkpoint("ckpt.pt", epoch=7)
again = refiners.Refiner.from_checkpoint("ckpt.pt")
out["reloaded"] = [type(again).__name__, again.config.scale, again.checkpoint_extra["epoch"]]
for name in ("dummy-broken", "dummy-not-a-refiner", "no-such-refiner"):
    try:
        refiners.load(name)
    except Exception as exc:
        out[name] = [type(exc).__name__, str(exc), type(exc.__cause__).__name__ if exc.__cause__ else None]
print("JSON" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    pytest.importorskip("setuptools")
    work = tmp_path_factory.mktemp("plugin")
    src = work / "src"
    shutil.copytree(HERE / "dummy_plugin", src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = work / "site"
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
           "--disable-pip-version-check", "--target", str(site), str(src)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert any(p.name.endswith(".dist-info") for p in site.iterdir())
    return site


@pytest.fixture(scope="module")
def probe(plugin_site, tmp_path_factory) -> dict:
    """Run the probe once in a fresh interpreter that has the plugin's site folder on its path."""
    cwd = tmp_path_factory.mktemp("probe")
    site = plugin_site
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO)])
    env["OMP_NUM_THREADS"] = "1"
    res = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, cwd=cwd, env=env)
    assert res.returncode == 0, res.stderr
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("JSON"))
    return json.loads(line[4:])


def test_installed_plugin_is_discovered_loaded_and_checkpointed(probe):
    out = probe
    assert {"bp-prior", "dummy", "dummy-broken", "dummy-not-a-refiner"} <= set(out["available"])
    assert out["type"] == "dummy_refiner.DummyRefiner"
    assert out["scale"] == 3.0
    assert out["max_abs_err"] < 1e-6
    assert out["reloaded"] == ["DummyRefiner", 3.0, 7]


def test_broken_plugins_give_errors_naming_plugin_and_cause(probe):
    out = probe
    kind, msg, cause = out["dummy-broken"]
    assert kind == "RefinerPluginError"
    assert "'dummy-broken'" in msg and "tomoprior-dummy-refiner" in msg
    assert "tomoprior_dependency_that_does_not_exist" in msg and cause == "ModuleNotFoundError"
    kind, msg, _ = out["dummy-not-a-refiner"]
    assert kind == "RefinerPluginError" and "not a subclass" in msg
    kind, msg, _ = out["no-such-refiner"]
    assert kind == "ValueError" and "installed:" in msg and "'dummy'" in msg and "'bp-prior'" in msg


def test_plugin_is_not_visible_without_its_site_folder():
    # the install above went to a temporary folder only
    from tomoprior import refiners

    assert "dummy" not in refiners.available_refiners()
