"""``check_refiner``: every installed refiner (built-ins, psctnet, an installed third-party
plugin) passes the refiner contract, and each check catches the flaw it is there for."""

import dataclasses
import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tomoprior as tp
from tomoprior import refiners
from tomoprior.refiners.testing import CHECKS, RefinerContractError, check_refiner, tiny_geometry

HERE = Path(__file__).parent

#: Small builds of refiners whose defaults are large or tied to another grid (the checks run
#: on tiny_geometry(): 16^3 voxels, two 48 x 48 views). Any other refiner runs as installed.
SMALL = {
    "psctnet": dict(preset="tiny", volume_shape=(16, 16, 16), xray_size=16, stem3d_width=8, enc3d_widths=(8, 16, 16),
                    stem2d_width=8, enc2d_widths=(8, 8, 16), view_widths=(8, 8, 8), dense_layers=1, growth=8,
                    agp_dim=16, agp_heads=2),
}


@pytest.fixture
def one_thread():
    """Tiny convolutions gain nothing from a second thread on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", refiners.available_refiners())
def test_every_installed_refiner_honours_the_contract(name, one_thread):
    report = check_refiner(name, overrides=SMALL.get(name))
    assert report.passed, str(report)
    assert [(c.name, c.status) for c in report.checks] == [(name, "pass") for name in CHECKS], str(report)


def test_psctnet_is_among_the_checked_refiners():
    # the plugin of this repository is installed in the development environment
    assert "psctnet" in refiners.available_refiners()


@pytest.fixture
def dummy_plugin_installed(tmp_path):
    """The dummy plugin distribution installed into a temporary folder put on ``sys.path`` for
    this test only (its entry points are then visible to ``refiners.available_refiners()``)."""
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    shutil.copytree(HERE / "dummy_plugin", src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = tmp_path / "site"
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
           "--disable-pip-version-check", "--target", str(site), str(src)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    try:
        yield site
    finally:
        sys.path.remove(str(site))
        for mod in [m for m in sys.modules if m == "dummy_refiner" or m.startswith("dummy_refiner.")]:
            del sys.modules[mod]
        importlib.invalidate_caches()


def test_an_installed_third_party_plugin_is_checked_like_the_built_ins(dummy_plugin_installed, one_thread):
    assert "dummy" in refiners.available_refiners()
    report = check_refiner("dummy")
    assert report.passed, str(report)
    assert "dummy_refiner.DummyRefiner" in report["loads"].message
    assert "1 of 1 trainable tensors" in report["gradients"].message
    # a plugin that fails to import: the report says why, the other checks are skipped
    broken = check_refiner("dummy-broken", raise_on_failure=False)
    assert [c.name for c in broken.failures] == ["loads"]
    assert "RefinerPluginError" in broken["loads"].message and "tomoprior_dependency_that_does_not_exist" in \
        broken["loads"].message
    assert {c.status for c in broken.checks[1:]} == {"skip"}


# -- each check catches its flaw ---------------------------------------------------------------

@dataclasses.dataclass
class FlawedConfig:
    flaw: str = "none"


class Flawed(refiners.Refiner):
    """A small refiner (a 1x1x1 convolution of the prior) with one chosen breach of the contract."""

    name = "flawed-test"
    config_class = FlawedConfig

    def __init__(self, config=None, **overrides):
        if overrides.get("flaw") == "swallows_unknown_fields":
            overrides = {"flaw": overrides["flaw"]}
        super().__init__(config, **overrides)
        self.head = torch.nn.Conv3d(1, 1, 1)
        # state outside the config and the state dict: rebuilding from either loses it
        self.register_buffer("hidden", 1 + torch.rand(()), persistent=False)

    def forward(self, xrays, geometry, prior):
        flaw = self.config.flaw
        if flaw != "no_input_check":
            self.check_inputs(xrays, geometry, prior)
        out = self.head(prior)
        if flaw == "wrong_shape":
            out = out[:, :, 1:]
        elif flaw == "float64":
            out = out.double()
        elif flaw == "nan":
            out = out * float("nan")
        elif flaw == "mutates_input":
            xrays.mul_(2)
        elif flaw == "random_in_eval":
            out = out + 1e-3 * torch.rand_like(out)
        elif flaw == "detached":
            out = out.detach().requires_grad_(self.training)
        elif flaw == "hidden_state":
            out = out * self.hidden
        elif flaw == "geometry_list" and isinstance(geometry, list):
            out = 2 * out
        return out


FLAWS = {
    "none": set(),
    "wrong_shape": {"forward"},
    "float64": {"forward"},
    "nan": {"forward", "gradients"},
    "mutates_input": {"inputs_unchanged"},
    "random_in_eval": {"deterministic_eval", "geometry_list", "reconstruct", "config_round_trip",
                       "checkpoint_round_trip"},
    "no_input_check": {"rejects_bad_input"},
    "detached": {"gradients"},
    "hidden_state": {"config_round_trip", "checkpoint_round_trip"},
    "geometry_list": {"geometry_list"},
    "swallows_unknown_fields": {"unknown_config_field"},
}


@pytest.mark.parametrize("flaw", list(FLAWS))
def test_each_check_catches_its_flaw(flaw, one_thread):
    report = check_refiner(Flawed, overrides={"flaw": flaw}, geometry=tiny_geometry(8, 64), raise_on_failure=False)
    assert {c.name for c in report.failures} == FLAWS[flaw], str(report)
    assert report.passed == (flaw == "none")
    assert "not registered" in report["loads"].message  # checked with Flawed.from_checkpoint
    if flaw in ("wrong_shape", "float64", "nan"):  # everything that needs a valid output is skipped
        assert report["config_round_trip"].status == "skip"


def test_failures_raise_with_the_report_and_messages_say_what_was_seen(one_thread):
    with pytest.raises(RefinerContractError, match="fails check") as info:
        check_refiner(Flawed, overrides={"flaw": "wrong_shape"}, geometry=tiny_geometry(8, 64))
    report = info.value.report
    assert report.refiner == "flawed-test"
    assert "output shape (2, 1, 7, 8, 8), expected (B, 1, nz, ny, nx) = (2, 1, 8, 8, 8)" in report["forward"].message
    assert "FAIL  forward" in str(info.value)
    assert report.to_dict()["passed"] is False


def test_an_instance_is_checked_on_a_copy_and_the_random_state_is_kept(one_thread):
    model = Flawed()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    check_refiner(model, geometry=tiny_geometry(8, 64))
    assert model.training and all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


def test_bad_arguments_are_usage_errors_not_findings():
    with pytest.raises(ValueError, match="batch must be an integer >= 2"):
        check_refiner("bp-prior", batch=1)
    with pytest.raises(ValueError, match="not with an instance"):
        check_refiner(Flawed(), overrides={"flaw": "nan"})
    geom = tiny_geometry(8, 64)
    v = geom.views[1]
    coarse = tp.View(v.source, v.detector_center, 2 * v.u, 2 * v.v, shape=(v.shape[0] // 2, v.shape[1] // 2))
    ragged = tp.Geometry(geom.grid, [geom.views[0], coarse])
    with pytest.raises(ValueError, match="share one detector shape"):
        check_refiner("bp-prior", geometry=ragged)
    report = check_refiner("no-such-refiner", raise_on_failure=False)
    message = report.failures[0].message
    assert report.failures[0].name == "loads" and "not in tomoprior.refiners.available_refiners()" in message
