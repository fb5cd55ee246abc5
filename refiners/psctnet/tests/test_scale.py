"""Output scale of PSCT-Net: the network predicts in units of
``config.target_scale`` (~[0, 1]) and returns 1/mm; the untrained output is of the target's
order of magnitude and its output layer is not dead; a short fit beats the all-zero volume."""

from __future__ import annotations

import math
import time

import pytest
import tomoprior as tp
import torch
import torch.nn.functional as F  # noqa: N812 - torch's own idiom
from tomoprior.phantoms.skull.model import default_grid, make_skull
from tomoprior.refiners import CheckpointError, CheckpointWarning, build_prior

from psctnet import PSCTNet, PSCTNetConfig
from psctnet.train import make_optimizers, train_step


@pytest.fixture(scope="module")
def skull32():
    """One synthetic skull (attenuation in 1/mm) on a 32^3 grid, its two X-rays, geometry."""
    grid = default_grid(32)
    geom = tp.BiplanarGeometry.from_parameters(grid=grid, binning=32)
    volume = make_skull(age_years=1.0, seed=3).rasterize(grid, supersample=1).float()
    xrays = tp.project(volume, geom)[None]  # (1, 2, rows, cols) line integrals
    return geom, volume[None, None], xrays


def _net(**overrides):
    torch.manual_seed(0)
    return PSCTNet(preset="tiny", volume_shape=(32, 32, 32), xray_size=32, agp_dropout=0.0, **overrides)


def test_skull_sample_is_in_the_expected_range(skull32):
    _, target, xrays = skull32
    assert 0.03 < float(target.max()) < 0.08  # bone ~0.05 /mm: the default target_scale
    assert 0.0 <= float(target.min())
    assert 1.0 < float(xrays.max()) < 30.0  # head line integrals


def test_untrained_output_has_the_target_scale_and_a_live_head(skull32):
    geom, target, xrays = skull32
    net = _net().eval()
    pre = {}
    net.head.register_forward_hook(lambda m, i, o: pre.__setitem__("head", o.detach()))
    with torch.no_grad():
        out = net(xrays, geom)
    assert out.shape == target.shape
    assert float(out.min()) >= 0.0  # attenuation is non-negative
    # mean within a factor 5 of the target's mean, peak below 2x the bone peak (before the
    # output scaling an untrained network started 10-20x too bright)
    ratio = float(out.mean()) / float(target.mean())
    assert 0.2 < ratio < 5.0, ratio
    assert float(out.max()) < 2.0 * float(target.max())
    # live output layer: the head is linear while training (clamp default), so every voxel
    # passes its gradient; its pre-activations vary (the network is not a constant)
    assert net.config.output_activation == "clamp"
    assert float(pre["head"].std()) > 0.01
    net.train()
    out_train = net(xrays, geom)
    out_train.sum().backward()
    # d(sum out)/d(bias) = target_scale per voxel: no voxel is cut off
    assert float(net.head.weight.grad.abs().sum()) > 0.0
    assert math.isclose(float(net.head.bias.grad), net.config.target_scale * out_train.numel(), rel_tol=1e-4)
    assert float((pre["head"] < 0).float().mean()) > 0.1  # some negative: training sees them, eval clamps
    torch.testing.assert_close(out, out_train.detach().clamp_min(0.0), rtol=1e-4, atol=1e-7)

def test_output_is_in_physical_units(skull32):
    geom, _, xrays = skull32
    a = _net().eval()
    b = _net(target_scale=0.1).eval()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(b(xrays, geom), 2.0 * a(xrays, geom), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("act", ["clamp", "softplus", "sigmoid", "relu", "none"])
def test_head_init_gives_init_output_mean(act):
    net = PSCTNet(preset="tiny", volume_shape=(16, 16, 16), xray_size=16, enc3d_widths=(8, 16),
                  enc2d_widths=(8, 16), output_activation=act, init_output_mean=0.1)
    y = net.head_activation(net.head.bias.detach())
    assert math.isclose(float(y), 0.1, rel_tol=1e-6)


def test_scale_fields_are_validated_and_saved(tmp_path):
    for bad in (0.0, -0.05, float("inf"), True, "0.05"):
        with pytest.raises(ValueError, match="target_scale"):
            PSCTNetConfig.preset("tiny", target_scale=bad)
    with pytest.raises(ValueError, match="init_output_mean"):
        PSCTNetConfig.preset("tiny", init_output_mean=0.0)
    with pytest.raises(ValueError, match="init_output_mean"):
        PSCTNetConfig.preset("tiny", output_activation="sigmoid", init_output_mean=1.0)
    cfg = PSCTNetConfig.preset("tiny", target_scale=0.04)
    assert PSCTNetConfig.from_dict(cfg.to_dict()).target_scale == 0.04
    assert PSCTNetConfig().target_scale == 0.05 and PSCTNetConfig().output_activation == "clamp"


@pytest.mark.slow
def test_short_fit_beats_the_all_zero_volume(skull32):
    """~45 s of Adam (1e-3, L1 + DRR projection, no GAN) on one skull: the L1 error (1/mm)
    falls well below that of an all-zero volume and of the untrained network (measured:
    0.0012 after 31 steps against 0.0027 all-zero and 0.0036 untrained)."""
    geom, target, xrays = skull32
    net = _net()
    opt_g, _ = make_optimizers(net)
    for g in opt_g.param_groups:
        g["lr"] = 1e-3
    prior = build_prior(xrays, geom)
    target_proj = tp.project(target, geom)
    zero_l1 = float(target.abs().mean())
    with torch.no_grad():
        start_l1 = float(F.l1_loss(net.eval()(xrays, geom, prior), target))
    t0, steps = time.perf_counter(), 0
    while time.perf_counter() - t0 < 45.0 or steps < 30:
        train_step(net, None, opt_g, None, xrays, target, geom, prior=prior, target_projections=target_proj)
        steps += 1
    with torch.no_grad():
        end_l1 = float(F.l1_loss(net.eval()(xrays, geom, prior), target))
    print(f"\nfit: {steps} steps, L1 untrained {start_l1:.5f}, fitted {end_l1:.5f}, all-zero {zero_l1:.5f} 1/mm")
    assert end_l1 < 0.5 * zero_l1
    assert end_l1 < 0.5 * start_l1


def test_configs_saved_before_target_scale_keep_their_meaning():
    old = PSCTNetConfig.preset("tiny", output_activation="relu").to_dict()
    del old["target_scale"], old["init_output_mean"]
    assert PSCTNetConfig.from_dict(old).target_scale == 1.0  # the old network output 1/mm
    assert PSCTNetConfig.from_dict({"use_bim": False}).target_scale == 0.05  # partial dicts: default


def test_clamp_head_is_linear_only_while_training(skull32):
    geom, _, xrays = skull32
    net = _net()
    with torch.no_grad():
        b = net.head.bias.detach().clone()
        net.head.bias.fill_(-0.05)  # push part of the volume below zero
        inferred = net(xrays, geom)  # train mode, but no autograd: inference
    train_out = net(xrays, geom)
    assert float(train_out.detach().min()) < 0.0  # the loss sees (and penalises) negative values
    assert float(inferred.min()) >= 0.0
    assert float(net.reconstruct(xrays, geom).detach().min()) >= 0.0  # even in train mode with autograd
    torch.testing.assert_close(inferred, train_out.detach().clamp_min(0.0), rtol=1e-4, atol=1e-7)
    with torch.no_grad():
        net.head.bias.copy_(b)


def test_checkpoints_saved_before_target_scale_load_with_scale_one(tmp_path, skull32):
    geom, _, xrays = skull32
    net = _net(output_activation="relu").eval()
    path = net.save_checkpoint(tmp_path / "new.pt")
    assert PSCTNet.from_checkpoint(path).config.target_scale == 0.05
    ckpt = torch.load(path, weights_only=False)
    del ckpt["config"]["target_scale"], ckpt["config"]["init_output_mean"], ckpt["state_dict"]["output_scale"]
    # what tomoprior wrote then: checkpoint format 1, no checksums
    ckpt["format_version"] = 1
    del ckpt["weights_sha256"], ckpt["config_sha256"]
    torch.save(ckpt, tmp_path / "old.pt")
    with pytest.warns(CheckpointWarning, match="format-1"):
        old = PSCTNet.from_checkpoint(tmp_path / "old.pt").eval()
    assert old.config.target_scale == 1.0
    with torch.no_grad():
        torch.testing.assert_close(old(xrays, geom), net(xrays, geom) / 0.05, rtol=1e-4, atol=1e-6)


def test_missing_output_scale_with_a_scaled_config_is_an_error_not_a_legacy_file(tmp_path):
    """A state dict without ``output_scale`` but a config with ``target_scale`` is
    damaged, not old: it used to load as a legacy file and give outputs 20x too large."""
    net = _net()
    ckpt = net.checkpoint_dict()
    del ckpt["state_dict"]["output_scale"]
    ckpt["format_version"] = 1
    del ckpt["weights_sha256"], ckpt["config_sha256"]
    torch.save(ckpt, tmp_path / "cut.pt")
    with pytest.warns(CheckpointWarning), pytest.raises(CheckpointError, match=r"missing 1 key.*'output_scale'"):
        PSCTNet.from_checkpoint(tmp_path / "cut.pt")
    # the same edit on a current (checksummed) file is caught by the weights' SHA-256
    ckpt = net.checkpoint_dict()
    del ckpt["state_dict"]["output_scale"]
    torch.save(ckpt, tmp_path / "cut2.pt")
    with pytest.raises(CheckpointError, match="weights do not match their SHA-256"):
        PSCTNet.from_checkpoint(tmp_path / "cut2.pt")
    # and an explicit load_state_dict does not rescale silently either
    sd = net.state_dict()
    del sd["output_scale"]
    with pytest.raises(RuntimeError, match="output_scale"):
        _net().load_state_dict(sd)
