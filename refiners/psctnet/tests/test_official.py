"""The ``official`` preset: the switches that make PSCT-Net follow the authors' public code
(GitHub DYDevelop/PSCT-Net, ``X2CT_BP``) build what they claim, run forward and backward,
leave the default architecture alone, and round-trip through configs and checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from tomoprior.refiners.testing import check_refiner

from psctnet import PatchDiscriminator3D, PSCTNet, PSCTNetConfig
from psctnet.blocks import DenseBlock
from psctnet.lifting import AGP3D, ViewSkip
from psctnet.train import make_optimizers, train_step

#: the official preset's switches at a size that runs in a second (16^3, 3 stages)
MICRO = dict(
    volume_shape=(16, 16, 16),
    xray_size=16,
    stem3d_width=8,
    enc3d_widths=(8, 16, 16),
    stem2d_width=8,
    enc2d_widths=(8, 8, 16),
    stage_dense_layers=(1, 2, 1),
    growth=4,
    dense_bottleneck=2,
    agp_dim=16,
    agp_heads=2,
    bpc_stages=(1, 2),  # the official "3D stages 1..S-1", S = 3 here
    bim_d_state=4,
    disc_width=8,
)


def _micro(**overrides):
    torch.manual_seed(0)
    return PSCTNet(preset="official", **{**MICRO, **overrides})


def _xrays(geom, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, geom.num_views, *geom.views[0].shape, generator=g) * 5.0


def _in_channels(module: torch.nn.Module) -> int:
    return next(m for m in module.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))).in_channels


def test_official_preset_sets_the_official_code_values():
    cfg = PSCTNetConfig.preset("official")
    assert cfg.preset_name == "official"
    assert cfg.resolved_bpc_stages == (1, 2, 3, 4) and cfg.bpc_width_rule == "half_stage"
    assert (cfg.agp_dropout, cfg.agp_attn_dropout, cfg.agp_residual_norm) == (0.5, 0.0, False)
    assert (cfg.bim_dropout, cfg.bim_ffn_activation) == (0.5, "silu")
    assert not cfg.decoder_skips and cfg.view_skips and not cfg.bottleneck_view_fusion and cfg.head_kernel == 7
    assert cfg.disc_condition == "xrays" and cfg.disc_condition_channels == 2
    assert (cfg.w_adv, cfg.w_rec, cfg.w_proj, cfg.proj_mode) == (0.1, 10.0, 10.0, "axis_mean")
    assert (cfg.lr, cfg.betas, cfg.weight_decay) == (2e-4, (0.5, 0.99), 0.0)
    # the defaults are untouched by the preset's switches
    default = PSCTNetConfig()
    assert default.decoder_skips and not default.view_skips and default.bottleneck_view_fusion
    assert (default.head_kernel, default.agp_dropout, default.disc_condition) == (1, 0.1, "prior")
    assert default.resolved_bpc_stages == (0, 1, 2, 3)


def test_official_preset_at_full_size_has_the_official_channel_counts():
    """At 128^3 every connection has the width of the official X2CT_BP (5 stages, 2D widths
    64 -> 128-256-512-512-704, 3D 16 -> 16-32-64-128-256, decoder 128-64-32-16-16)."""
    torch.manual_seed(0)
    net = PSCTNet(preset="official")
    # BP-C before 3D stages 1-4 from 2D stage i-1 (f_i: 128, 256, 512, 512 channels), each adding
    # half the stage's output width (the official bp_avg_linker), so stage i takes w_{i-1} + w_i / 2
    assert sorted(net.bpc) == ["1", "2", "3", "4"]
    assert [_in_channels(net.bpc[str(s)]) for s in (1, 2, 3, 4)] == [128, 256, 512, 512]
    assert [net.bpc[str(s)].conv[0].out_channels for s in (1, 2, 3, 4)] == [16, 32, 64, 128]
    assert [_in_channels(st) for st in net.stages3d] == [16, 32, 64, 128, 256]
    # DenseNet-121 blocks (6, 12, 24, 16, 6 layers of growth 32 with a 4x bottleneck)
    dense = [m for m in net.stages3d.modules() if isinstance(m, DenseBlock)]
    assert [len(d.layers) for d in dense] == [6, 12, 24, 16, 6]
    assert dense[0].layers[0][2].out_channels == 4 * 32 and dense[0].layers[0][5].out_channels == 32
    # AGP: 16 tokens of 704 -> 256-d, 64 voxel queries, no residual/LayerNorm; no bottleneck fusion
    agp = net.lifts[0]
    assert isinstance(agp, AGP3D) and agp.token_proj[0].in_features == 704 and agp.queries.shape == (64, 256)
    assert not hasattr(agp, "norm") and not hasattr(net, "bottleneck_fuse")
    assert agp.token_proj[1].p == 0.5 and agp.attn.dropout == 0.0
    # main decoder: upsampled stream + the MV3D-C view average only (official compress convs 2c -> c)
    assert [_in_channels(up.fuse) for up in net.decoder] == [256, 128, 64, 32, 32]
    # view decoders: upsampled view + the X2CT-GAN skip link of the same scale
    links = net.view_skip_links[0]
    assert [_in_channels(lk.compress) for lk in links] == [512, 512, 256, 128, 64]
    assert [lk.conv[0].out_channels for lk in links] == [128, 64, 32, 16, 16]
    assert [_in_channels(up.fuse) for up in net.view_decoders[0]] == [256, 128, 64, 32, 32]
    assert net.head.kernel_size == (7, 7, 7) and net.head.in_channels == 16
    ffn = net.bim.ffn
    assert isinstance(ffn[1], torch.nn.SiLU) and [m.p for m in ffn if isinstance(m, torch.nn.Dropout)] == [0.5, 0.5]
    assert PatchDiscriminator3D.from_config(net.config).in_channels == 3  # volume + two X-rays
    # DenseNet-style stages: the stride-2 convolution keeps the width, the transition widens
    assert [st.down[0].out_channels for st in net.encoders2d[0].stages] == [64, 128, 256, 512, 512]
    up = net.decoder[0].up[0]
    assert up.kernel_size == (3, 3, 3) and up.padding == (1, 1, 1) and up.output_padding == (1, 1, 1)
    assert [len(lv.fuse) for lv in net.view_decoders[0]] == [3] * 5 and [len(lv.fuse) for lv in net.decoder] == [2] * 5
    # The official X2CT_BP generator, built from the authors' repository with the experiment's
    # settings (UNetLike_DownStep5 view models, batch norm, decoder_block_list [1, 1, 1, 1, 1, 0],
    # mamba_ssm.Mamba replaced by the same-shaped mambapy block), has 55,894,890 parameters
    # (10,978 in the unsupervised output heads of its view branches, which we do not build);
    # this build has 56,851,169: the 1x1 transition we keep after the last 2D stage (2 x 0.50 M)
    # and a few convolution biases apart, the same.
    total = net.num_parameters()
    transition = sum(p.numel() for enc in net.encoders2d for p in enc.stages[-1].dense.transition.parameters())
    assert abs(total - transition - 55_894_890) < 50_000, (total, transition)


def test_default_architecture_keeps_encoder_skips_and_no_view_links():
    torch.manual_seed(0)
    official = _micro()
    default = PSCTNet(preset="tiny", **{k: v for k, v in MICRO.items() if k not in ("bpc_stages",)})
    dec = default.config.resolved_dec_widths  # (16, 8, 8)
    vw = default.config.resolved_view_widths
    skips = (16, 8, 8)  # main encoder widths mirrored, ending at the 3D stem
    assert [_in_channels(up.fuse) for up in default.decoder] == [d + s + v for d, s, v in zip(dec, skips, vw)]
    ovw = official.config.resolved_view_widths
    assert [_in_channels(up.fuse) for up in official.decoder] == [d + v for d, v in zip(dec, ovw)]
    assert not hasattr(default, "view_skip_links") and hasattr(default, "bottleneck_fuse")
    assert all(isinstance(lk, ViewSkip) for lk in official.view_skip_links[1])
    assert default.head.kernel_size == (1, 1, 1) and official.head.kernel_size == (7, 7, 7)
    assert PatchDiscriminator3D.from_config(default.config).in_channels == 2  # volume + prior


def test_official_micro_trains_one_step_with_gradients_everywhere(geom16):
    net = _micro()
    xrays = _xrays(geom16)
    out = net(xrays, geom16)
    assert out.shape == (2, 1, 16, 16, 16) and bool(torch.isfinite(out).all())
    out.mean().backward()
    for name in ("encoders2d", "stem3d", "stages3d", "bpc", "lifts", "bim", "view_decoders", "view_skip_links",
                 "decoder", "head"):
        grads = [p.grad for p in getattr(net, name).parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads), f"{name}: parameters without a gradient"
        assert all(bool(torch.isfinite(g).all()) for g in grads)
        assert any(float(g.abs().sum()) > 0 for g in grads), f"{name}: all gradients zero"
    net.zero_grad()
    disc = PatchDiscriminator3D.from_config(net.config)
    opt_g, opt_d = make_optimizers(net, disc)
    target = torch.rand(2, 1, 16, 16, 16) * 0.05
    before = [p.detach().clone() for p in disc.parameters()]
    stats = train_step(net, disc, opt_g, opt_d, xrays, target, geom16)
    assert all(v == v and abs(v) < float("inf") for v in stats.values()), stats
    assert stats["adv"] > 0 and stats["d_loss"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, disc.parameters()))  # the discriminator stepped


def test_xray_condition_has_one_channel_per_view_and_follows_its_view(geom16):
    net = _micro().eval()
    xrays = _xrays(geom16, batch=1)
    cond = net.discriminator_condition(xrays, geom16)
    assert cond.shape == (1, 2, 16, 16, 16) and bool(torch.isfinite(cond).all())
    assert float(cond.min()) >= 0 and 0.2 < float(cond.max()) <= 1.0  # the normalised X-rays' range
    changed = xrays.clone()
    changed[:, 0] = changed[:, 0].flip(-1)  # another frontal image, same lateral one
    cond2 = net.discriminator_condition(changed, geom16)
    assert not torch.allclose(cond2[:, 0], cond[:, 0]) and torch.equal(cond2[:, 1], cond[:, 1])
    # the default condition is the normalised prior, one channel
    tiny = PSCTNet(preset="tiny", **{k: v for k, v in MICRO.items() if k != "bpc_stages"})
    assert tiny.discriminator_condition(xrays, geom16).shape == (1, 1, 16, 16, 16)
    disc = PatchDiscriminator3D.from_config(net.config)
    with pytest.raises(ValueError, match="condition"):
        disc(torch.zeros(1, 1, 16, 16, 16), torch.zeros(1, 1, 16, 16, 16))


def test_normal_init_is_the_official_one_and_keeps_the_output_scale(geom16):
    net = _micro()
    # the untrained 7^3 head starts near init_output_mean (its weights scale with the whole fan-in:
    # scaled by the channels alone, the first 32^3 run started 40x too bright)
    with torch.no_grad():
        mean = float(net(_xrays(geom16), geom16).mean()) / net.config.target_scale
    assert 0.3 * net.config.init_output_mean < mean < 3 * net.config.init_output_mean, mean
    w = torch.cat([m.weight.detach().flatten() for m in net.stages3d.modules() if isinstance(m, torch.nn.Conv3d)])
    assert 0.015 < float(w.std()) < 0.025 and abs(float(w.mean())) < 0.005
    assert 0.8 < float(net.lifts[0].queries.detach().std()) < 1.2
    assert float(net.head.bias.detach()) == pytest.approx(net.config.init_output_mean)
    disc = PatchDiscriminator3D.from_config(net.config)
    assert 0.015 < float(disc.net[0].weight.detach().std()) < 0.025


def test_official_config_round_trips_through_json_and_checkpoints(tmp_path, geom16):
    cfg = PSCTNetConfig.preset("official", **MICRO)
    again = PSCTNetConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    # a config saved before these switches existed keeps the earlier architecture
    old = {k: v for k, v in PSCTNetConfig().to_dict().items() if k not in (
        "view_skips", "decoder_skips", "head_kernel", "disc_condition", "bottleneck_view_fusion", "weight_init")}
    assert PSCTNetConfig.from_dict(old) == PSCTNetConfig()
    net = _micro().eval()
    with torch.no_grad():
        net.head.weight.add_(0.01)
    path = tmp_path / "official.pt"
    net.save_checkpoint(path)
    back = PSCTNet.from_checkpoint(path).eval()
    assert back.config == net.config
    xrays = _xrays(geom16, batch=1)
    with torch.no_grad():
        assert torch.equal(back(xrays, geom16), net(xrays, geom16))


def test_official_micro_honours_the_refiner_contract():
    check_refiner("psctnet", overrides={"preset": "official", **MICRO})


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(head_kernel=4), "head_kernel"),
        (dict(bpc_width_rule="quarter"), "bpc_width_rule"),
        (dict(agp_attn_dropout=1.0), "agp_attn_dropout"),
        (dict(bim_dropout=-0.1), "bim_dropout"),
        (dict(bim_ffn_activation="tanh"), "bim_ffn_activation"),
        (dict(disc_condition="both"), "disc_condition"),
        (dict(weight_init="xavier"), "weight_init"),
        (dict(stage_dense_layers=(1, 1)), "stage_dense_layers"),
        (dict(dense_bottleneck=-1), "dense_bottleneck"),
        (dict(use_mv3dc=False), "bottleneck_view_fusion"),
        (dict(bpc_stages=(1, 2, 3)), "bpc_stages"),
        (dict(upsample_kernel=1), "upsample_kernel"),
        (dict(view_decoder_convs=0), "view_decoder_convs"),
    ],
)
def test_official_switches_are_validated(bad, match):
    with pytest.raises(ValueError, match=match):
        PSCTNetConfig.preset("official", **{**MICRO, **bad})
