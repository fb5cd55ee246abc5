"""PSCT-Net: shapes, gradients to every submodule, ablations, sizes, checkpoints, registry."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import time

import pytest
import torch

from psctnet import PSCTNet, PSCTNetConfig


def _xrays(geom, batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows, cols = geom.views[0].shape
    return torch.rand(batch, geom.num_views, rows, cols, generator=g) * 5.0


def _tiny32(**overrides):
    """The tiny preset's architecture over a 32^3 grid (32^2 X-rays)."""
    torch.manual_seed(0)
    return PSCTNet(preset="tiny", volume_shape=(32, 32, 32), xray_size=32, **overrides)


MICRO = dict(
    volume_shape=(16, 16, 16),
    xray_size=16,
    stem3d_width=8,
    enc3d_widths=(8, 16, 16),
    stem2d_width=8,
    enc2d_widths=(8, 8, 16),
    view_widths=(8, 8, 8),
    dense_layers=1,
    growth=8,
    agp_dim=16,
    agp_heads=2,
)


def _micro(**overrides):
    """Every module of the tiny preset at a smaller size (16^3, 3 stages): fast tests."""
    torch.manual_seed(0)
    return PSCTNet(preset="tiny", **{**MICRO, **overrides})


def test_forward_shape_tiny_32(geom32):
    net = _tiny32().eval()
    with torch.no_grad():
        out = net(_xrays(geom32, batch=2), geom32)
    assert out.shape == (2, 1, 32, 32, 32)
    assert bool(torch.isfinite(out).all()) and float(out.min()) >= 0.0  # clamped in eval mode


def test_forward_shape_tiny_64(geom64):
    torch.manual_seed(0)
    net = PSCTNet(preset="tiny")
    with torch.no_grad():
        out = net(_xrays(geom64), geom64)
    assert out.shape == (1, 1, 64, 64, 64) and bool(torch.isfinite(out).all())


@pytest.mark.slow
def test_tiny_64_forward_backward_timing(geom64):
    torch.manual_seed(0)
    net = PSCTNet(preset="tiny")
    x = _xrays(geom64, batch=2)
    for _ in range(2):  # the first pass pays one-off allocation and kernel selection
        t0 = time.perf_counter()
        out = net(x, geom64)
        t1 = time.perf_counter()
        out.mean().backward()
        t2 = time.perf_counter()
    print(f"tiny 64^3, B=2, 2 views: forward {t1 - t0:.2f} s, backward {t2 - t1:.2f} s")
    assert out.shape == (2, 1, 64, 64, 64)


def test_prior_argument_is_used(geom16):
    from tomoprior.refiners import build_prior

    net = _micro().eval()
    x = _xrays(geom16)
    prior = build_prior(x, geom16)
    with torch.no_grad():
        a = net(x, geom16, prior)
        b = net(x, geom16)  # built internally, identical
        c = net(x, geom16, prior.flip(-1))
    torch.testing.assert_close(a, b)
    assert float((a - c).abs().max()) > 0


def test_gradients_reach_every_submodule(geom16):
    net = _micro(output_activation="none", agp_dropout=0.0, bim_interslice=True)
    out = net(_xrays(geom16, batch=2), geom16)
    (out * torch.randn_like(out)).sum().backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None or float(p.grad.abs().sum()) == 0.0]
    assert missing == []
    # every leaf module with parameters is reached
    for name, mod in net.named_modules():
        own = list(mod.parameters(recurse=False))
        if own:
            assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in own), name


ABLATIONS = {
    "full": {},
    "no_bp_prior": {"use_bp_prior": False},
    "no_bpc": {"use_bpc": False},
    "geometry_agnostic": {"use_bp_prior": False, "use_bpc": False, "agp_pos_encoding": False},
    "no_agp": {"use_agp": False},
    "no_bim": {"use_bim": False},
    "no_mv3dc": {"use_mv3dc": False},
    "agp_no_pos": {"agp_pos_encoding": False},
    "interslice": {"bim_interslice": True},
    "batch_norm": {"norm": "batch"},
    "instance_norm": {"norm": "instance"},
    "no_channels_last": {"channels_last_3d": False},
    "nothing": {"use_bp_prior": False, "use_bpc": False, "use_agp": False, "use_bim": False, "use_mv3dc": False},
}


@pytest.mark.parametrize("name", list(ABLATIONS))
def test_ablation_builds_and_runs(geom16, name):
    net = _micro(**ABLATIONS[name])
    out = net(_xrays(geom16, batch=2), geom16)
    assert out.shape == (2, 1, 16, 16, 16) and bool(torch.isfinite(out).all())
    out.sum().backward()
    cfg = net.config
    assert hasattr(net, "stem3d") == (cfg.use_bp_prior or cfg.use_bpc)
    assert (len(net.bpc) > 0) == cfg.use_bpc
    assert hasattr(net, "bim") == cfg.use_bim
    assert hasattr(net, "view_decoders") == cfg.use_mv3dc
    assert type(net.lifts[0]).__name__ == ("AGP3D" if cfg.use_agp else "BroadcastLift")


def test_channels_last_layout_does_not_change_results(geom16):
    x = _xrays(geom16)
    a = _micro(channels_last_3d=True).eval()
    b = _micro(channels_last_3d=False).eval()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(a(x, geom16), b(x, geom16), rtol=1e-4, atol=1e-5)


def test_agp_uses_tokens_and_positions():
    from psctnet.lifting import AGP3D

    torch.manual_seed(0)
    agp = AGP3D(c2d=8, dim=16, heads=4, n_queries=8, dropout=0.0, pos_encoding=True, frequencies=2).eval()
    tokens = torch.randn(2, 8, 4, 4)
    uv = torch.rand(8, 2) * 2 - 1
    with torch.no_grad():
        out = agp(tokens, (2, 2, 2), uv)
        assert out.shape == (2, 16, 2, 2, 2)
        assert float((agp(tokens.flip(-1), (2, 2, 2), uv) - out).abs().max()) > 1e-4  # token layout matters
        assert float((agp(tokens, (2, 2, 2), -uv) - out).abs().max()) > 1e-4  # where voxels project matters
    with pytest.raises(ValueError, match="queries"):
        agp(tokens, (2, 2, 3), uv)


def test_geometry_agnostic_ignores_the_prior(geom16):
    net = _micro(**ABLATIONS["geometry_agnostic"]).eval()
    x = _xrays(geom16)
    with torch.no_grad():
        a = net(x, geom16, torch.zeros(1, 1, 16, 16, 16))
        b = net(x, geom16, torch.rand(1, 1, 16, 16, 16))
    torch.testing.assert_close(a, b)


def test_parameter_counts():
    tiny = PSCTNet(preset="tiny")
    paper = PSCTNet(preset="paper")  # constructed, never run at 128^3 in tests
    nt, np_ = tiny.num_parameters(), paper.num_parameters()
    print(f"parameters: tiny {nt:,}  paper {np_:,}")
    assert 2e5 < nt < 3e6
    assert 1e7 < np_ < 1e8
    cfg = paper.config
    assert cfg.volume_shape == (128, 128, 128) and cfg.bottleneck_shape == (4, 4, 4)
    assert cfg.enc3d_widths[0] == 16 and cfg.enc3d_widths[-1] == 256 and cfg.num_stages == 5
    assert paper.lifts[0].queries.shape == (64, 256) and paper.lifts[0].attn.num_heads == 8
    assert paper.bim.ssm.mamba.A_log.shape == (512, 16)  # d_inner = 2 * 256, d_state 16
    assert paper.bim.ssm.mamba.conv1d.weight.shape[-1] == 4
    assert paper.stem3d[0].kernel_size == (7, 7, 7)


def test_checkpoint_round_trip(tmp_path, geom16):
    net = _micro(bim_interslice=True).eval()
    x = _xrays(geom16)
    with torch.no_grad():
        before = net(x, geom16)
    path = net.save_checkpoint(tmp_path / "psct.pt", epoch=3)
    loaded = PSCTNet.from_checkpoint(path).eval()
    assert loaded.config == net.config
    assert loaded.checkpoint_extra == {"epoch": 3}
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, geom16), before)


def test_config_round_trip_and_validation():
    cfg = PSCTNetConfig.preset("tiny", use_bim=False)
    d = dataclasses.asdict(cfg)
    d = {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}  # as after JSON
    assert PSCTNetConfig.from_dict(d) == cfg
    with pytest.raises(ValueError, match="divisible"):
        PSCTNetConfig.preset("tiny", volume_shape=(60, 64, 64))
    with pytest.raises(ValueError, match="unknown PSCT-Net preset"):
        PSCTNetConfig.preset("huge")
    with pytest.raises(ValueError, match="agp_heads"):
        PSCTNetConfig.preset("tiny", agp_dim=30, agp_heads=4)
    with pytest.raises(ValueError, match="norm"):
        PSCTNetConfig.preset("tiny", norm="layer")


def test_bad_inputs_raise(geom16, geom32):
    net = _micro()
    with pytest.raises(ValueError, match="volume_shape"):
        net(_xrays(geom32), geom32)
    with pytest.raises(ValueError, match="views"):
        net(_xrays(geom16)[:, :1], geom16)
    with pytest.raises(ValueError, match="prior"):
        net(_xrays(geom16), geom16, torch.zeros(1, 1, 8, 8, 8))
    bad = _xrays(geom16)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        net(bad, geom16)


def test_entry_point_and_registry():
    eps = importlib.metadata.entry_points(group="tomoprior.refiners")
    found = {ep.name: ep.value for ep in eps}
    assert found.get("psctnet") == "psctnet:PSCTNet"
    registry = pytest.importorskip("tomoprior.refiners.registry")
    assert "psctnet" in registry.available_refiners()
    net = registry.load("psctnet", preset="tiny", use_bim=False)
    assert isinstance(net, PSCTNet) and net.config.use_bim is False and net.config.preset_name == "tiny"


def test_per_sample_geometries(geom16):
    """A list of B geometries (e.g. per-sample calibrations) gives each sample its own prior."""
    import math

    import tomoprior as tp

    shifted = tp.BiplanarGeometry.from_parameters(
        tp.ViewParameters(name="frontal", u0=8.0).binned(32),
        tp.ViewParameters(name="lateral", primary_angle=math.pi / 2).binned(32),
        grid=geom16.grid,
    )
    net = _micro().eval()
    x = _xrays(geom16).expand(2, -1, -1, -1).contiguous()
    with torch.no_grad():
        both = net(x, [geom16, shifted])
        a = net(x[:1], geom16)
        b = net(x[:1], shifted)
    torch.testing.assert_close(both[:1], a, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(both[1:], b, rtol=1e-4, atol=1e-5)
    assert float((a - b).abs().max()) > 0
