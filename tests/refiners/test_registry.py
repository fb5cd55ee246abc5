"""In-process registry, the Refiner base class and checkpoints."""

import dataclasses

import pytest
import torch

import tomoprior as tp
from tomoprior import refiners
from tomoprior.refiners import BPPrior, Refiner, RefinerConfig, available_refiners, load, register, unregister


@dataclasses.dataclass
class TinyConfig(RefinerConfig):
    width: int = 3
    gain: float = 1.5


class Tiny(Refiner):
    name = "test-tiny"
    config_class = TinyConfig

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        self.conv = torch.nn.Conv3d(1, self.config.width, 1)
        self.out = torch.nn.Conv3d(self.config.width, 1, 1)

    def forward(self, xrays, geometry, prior):
        self.check_inputs(xrays, geometry, prior)
        return self.config.gain * self.out(self.conv(prior))


@pytest.fixture
def tiny():
    register(Tiny)
    yield Tiny
    unregister("test-tiny")


@pytest.fixture(scope="module")
def small_geom():
    return tp.BiplanarGeometry.from_parameters(binning=16, grid=tp.VolumeGrid((8, 8, 8), (12, 12, 12)))


def test_builtin_listed_and_loadable():
    assert "bp-prior" in available_refiners()
    model = load("bp-prior", gain=2.0)
    assert isinstance(model, BPPrior) and model.config.gain == 2.0


def test_unknown_name_lists_installed():
    with pytest.raises(ValueError, match=r"unknown refiner 'nope'; installed: \[.*'bp-prior'"):
        load("nope")


@pytest.mark.parametrize("name", ["runs/psctnet/best.pt", "model.ckpt", "C:\\runs\\best"])
def test_a_checkpoint_path_given_as_a_name_points_to_from_checkpoint(name):
    with pytest.raises(ValueError, match=r"looks like a file, not a refiner name .*Refiner\.from_checkpoint"):
        load(name)


def test_register_load_and_unregister(tiny):
    assert "test-tiny" in available_refiners()
    model = load("test-tiny", width=5)
    assert isinstance(model, Tiny) and model.conv.out_channels == 5
    # a config instance plus overrides
    model = load("test-tiny", TinyConfig(width=2), gain=4.0)
    assert model.config == TinyConfig(width=2, gain=4.0)


def test_register_rejects_bad_classes(tiny):
    with pytest.raises(ValueError, match="built-in"):
        register(type("X", (BPPrior,), {}))
    with pytest.raises(ValueError, match="already registered"):
        register(type("Tiny2", (Tiny,), {}))
    with pytest.raises(TypeError, match="not a subclass"):
        register(int)
    with pytest.raises(ValueError, match="name"):
        register(type("NoName", (Refiner,), {"config_class": TinyConfig}))
    with pytest.raises(TypeError, match="dataclass"):
        register(type("BadCfg", (Refiner,), {"name": "bad-cfg", "config_class": dict}))
    with pytest.raises(ValueError, match="was not registered"):
        unregister("never")


def test_unknown_config_field_is_named(tiny):
    with pytest.raises(ValueError, match=r"no config field\(s\) \['widht'\].*width"):
        load("test-tiny", widht=4)
    with pytest.raises(TypeError, match="TinyConfig"):
        Tiny(config=3)


def test_check_inputs_messages(small_geom):
    prior = torch.zeros(1, 1, 8, 8, 8)
    xr = torch.zeros(1, 2, 96, 96)
    assert Refiner.check_inputs(xr, small_geom, prior) == (1, 2)
    with pytest.raises(ValueError, match="xrays must be"):
        Refiner.check_inputs(torch.zeros(2, 96, 96), small_geom, prior)
    with pytest.raises(ValueError, match="has 2 views but xrays have V=3"):
        Refiner.check_inputs(torch.zeros(1, 3, 96, 96), small_geom, prior)
    with pytest.raises(ValueError, match=r"prior must have shape \(1, 1, 8, 8, 8\)"):
        Refiner.check_inputs(xr, small_geom, prior[:, :, :4])
    with pytest.raises(ValueError, match="list of 1 Geometries but the batch has B=2"):
        Refiner.check_inputs(torch.zeros(2, 2, 96, 96), [small_geom], torch.zeros(2, 1, 8, 8, 8))


def test_checkpoint_round_trip(tiny, tmp_path, small_geom):
    torch.manual_seed(0)
    model = load("test-tiny", width=4, gain=0.5)
    path = model.save_checkpoint(tmp_path / "tiny.pt", epoch=3, note="hello")
    assert path.is_file() and not list(tmp_path.glob(".tiny.pt.*"))  # no temporary left behind
    xr = torch.rand(1, 2, 96, 96)
    prior = refiners.build_prior(xr, small_geom)
    for again in (Refiner.from_checkpoint(path), Tiny.from_checkpoint(path)):
        assert type(again) is Tiny and again.config == model.config
        assert again.checkpoint_extra == {"epoch": 3, "note": "hello"}
        torch.testing.assert_close(again(xr, small_geom, prior), model(xr, small_geom, prior), rtol=0, atol=0)
    raw = refiners.read_checkpoint(path)
    assert raw["name"] == "test-tiny" and raw["tomoprior_version"] == tp.__version__
    with pytest.raises(ValueError, match="holds a 'test-tiny' refiner, not 'bp-prior'"):
        BPPrior.from_checkpoint(path)


class _Foreign:
    """An object a checkpoint must not hold: unpickling it would import and run this module's code."""


def test_checkpoint_errors(tmp_path, tiny):
    with pytest.raises(ValueError, match="does not exist"):
        Refiner.from_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"not a readable torch checkpoint: torch\.save writes a zip archive"):
        Refiner.from_checkpoint(bad)
    code = tmp_path / "code.pt"  # a zip checkpoint holding an object of a class: refused, and no advice to run it
    torch.save({"weights": _Foreign()}, code)
    with pytest.raises(ValueError, match="weights_only=True, which refuses code") as err:
        Refiner.from_checkpoint(code)
    assert "Re-running" not in str(err.value) and "weights_only` set to `False`" not in str(err.value)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="not a tomoprior refiner checkpoint"):
        Refiner.from_checkpoint(other)
    model = load("test-tiny")
    ckpt = model.checkpoint_dict()
    ckpt["config"]["depth"] = 7
    future = tmp_path / "future.pt"
    torch.save(ckpt, future)  # edited without re-sealing: the config checksum catches it
    with pytest.raises(refiners.CheckpointError, match="name and config do not match their SHA-256"):
        Refiner.from_checkpoint(future)
    refiners.write_checkpoint(ckpt, future)  # a deliberate edit, sealed: the unknown field is named
    with pytest.raises(ValueError, match=r"no field\(s\) \['depth'\]"):
        Refiner.from_checkpoint(future)
    ckpt = model.checkpoint_dict()
    ckpt["name"] = "unknown-refiner"
    lost = tmp_path / "lost.pt"
    refiners.write_checkpoint(ckpt, lost)
    with pytest.raises(ValueError, match="unknown refiner 'unknown-refiner'"):
        Refiner.from_checkpoint(lost)


def test_reconstruct_builds_the_prior(small_geom):
    xr = torch.rand(2, 96, 96)
    out = load("bp-prior").reconstruct(xr, small_geom)
    torch.testing.assert_close(out, refiners.build_prior(xr[None], small_geom)[0])


def test_config_types_of_plugin_configs():
    """Every refiner's config is type-checked from its annotations (plugins too)."""
    import typing

    @dataclasses.dataclass
    class Cfg:
        width: int = 3
        gain: float = 1.5
        name: str = "x"
        flag: bool = True
        sizes: tuple[int, ...] = (1, 2)
        pair: tuple[float, float] = (0.5, 0.9)
        maybe: int | None = None
        mode: typing.Literal["a", "b"] = "a"
        anything: typing.Any = None

    class Plug(Refiner):
        name = "test-typed"
        config_class = Cfg

        def forward(self, xrays, geometry, prior):
            return prior

    ok = Plug(width=4, gain=2, sizes=[3, 4], maybe=5, mode="b", anything=object())  # int for float, list for tuple
    assert ok.config.gain == 2 and ok.config.sizes == [3, 4]
    for field, value, expected in [("width", 4.0, "an integer"), ("width", True, "an integer"),
                                   ("gain", "1.5", "a number"), ("flag", "banana", "a bool (true or false)"),
                                   ("name", 3, "a string"), ("sizes", (1, "2"), "a tuple/list of integers"),
                                   ("pair", (1.0,), "a tuple/list of 2 values (a number, a number)"),
                                   ("maybe", 2.5, "an integer or None"),
                                   ("mode", "c", "one of ['a', 'b']")]:
        with pytest.raises(refiners.ConfigTypeError) as info:
            Plug(**{field: value})
        assert f"Cfg.{field} must be {expected}, got {value!r} ({type(value).__name__})" in str(info.value)
        assert isinstance(info.value, TypeError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:7"])
def test_resolve_device_names_the_missing_gpu(device):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ValueError, match=rf"--device {device}: CUDA is not available .* use cpu"):
        refiners.resolve_device(device, option="--device")


def test_resolve_device_accepts_cpu_and_auto_and_refuses_nonsense():
    assert refiners.resolve_device("cpu") == torch.device("cpu")
    assert refiners.resolve_device(" CPU ") == torch.device("cpu")
    assert refiners.resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert refiners.resolve_device(torch.device("cpu")) == torch.device("cpu")
    for bad in ("banana", "", "cuda:x", "gpu"):
        with pytest.raises(ValueError, match="is not a device"):
            refiners.resolve_device(bad)
    with pytest.raises(ValueError, match="refiners run on cpu, cuda"):
        refiners.resolve_device("meta")
    with pytest.raises(ValueError, match="device name"):
        refiners.resolve_device(3)
