"""Losses: DRR projection consistency through the geometry, LSGAN terms, the weighted
generator loss, the conditional PatchGAN discriminator, and one training step."""

from __future__ import annotations

import pytest
import tomoprior as tp
import torch

from psctnet import PatchDiscriminator3D, PSCTNet, PSCTNetConfig, generator_loss, projection_loss
from psctnet.losses import bone_loss, lsgan_discriminator_loss, lsgan_generator_loss


def _target(n=16, shift=0):
    """An asymmetric ellipsoid-ish blob on an n^3 grid, (1, 1, n, n, n)."""
    z, y, x = torch.meshgrid(*(torch.linspace(-1, 1, n),) * 3, indexing="ij")
    inside = ((x - 0.3) / 0.4) ** 2 + ((y + 0.1) / 0.3) ** 2 + (z / 0.5) ** 2 < 1
    vol = inside.float()[None, None]
    return torch.roll(vol, shift, dims=-1) if shift else vol


def test_projection_loss_zero_for_target_and_matches_tp_project(geom16):
    t = _target()
    assert float(projection_loss(t, t, geom16)) == 0.0
    assert float(projection_loss(t, t, geom16, mode="axis_mean")) == 0.0
    other = _target(shift=3)
    got = projection_loss(other, t, geom16)
    want = (tp.project(other, geom16) - tp.project(t, geom16)).abs().mean() / 192.0  # grid extent 192 mm
    torch.testing.assert_close(got, want)
    assert float(got) > 0
    # a shift along the frontal beam (y) barely changes the frontal DRR (cone-beam magnification
    # only) but moves the blob on the lateral one, so L_proj sees it
    along_y = torch.roll(t, 2, dims=-2)
    p_t, p_y = tp.project(t, geom16), tp.project(along_y, geom16)
    lateral_change = float((p_y[0, 0, 1] - p_t[0, 0, 1]).abs().sum())
    frontal_change = float((p_y[0, 0, 0] - p_t[0, 0, 0]).abs().sum())  # only magnification changes
    assert lateral_change > 3 * frontal_change > 0
    assert float(projection_loss(along_y, t, geom16)) > 0


def test_projection_loss_gradient_reaches_the_volume(geom16):
    out = _target(shift=2).requires_grad_()
    projection_loss(out, _target(), geom16).backward()
    assert out.grad is not None and float(out.grad.abs().sum()) > 0


def test_lsgan_terms():
    ones, zeros = torch.ones(2, 1, 3, 3, 3), torch.zeros(2, 1, 3, 3, 3)
    assert float(lsgan_generator_loss(ones)) == 0.0
    assert float(lsgan_generator_loss(zeros)) == 1.0
    assert float(lsgan_discriminator_loss(ones, zeros)) == 0.0  # perfect discriminator
    assert float(lsgan_discriminator_loss(zeros, ones)) == 1.0
    assert float(lsgan_discriminator_loss(0.5 * ones, 0.5 * ones)) == pytest.approx(0.25)


def test_generator_loss_is_the_weighted_sum(geom16):
    cfg = PSCTNetConfig.preset(
        "tiny", volume_shape=(16, 16, 16), xray_size=16, enc3d_widths=(8, 16, 16), enc2d_widths=(8, 8, 16)
    )
    assert (cfg.w_adv, cfg.w_rec, cfg.w_proj) == (0.1, 10.0, 10.0)
    torch.manual_seed(0)
    disc = PatchDiscriminator3D.from_config(cfg)
    t, out = _target(), _target(shift=2) * 0.8
    prior = torch.rand_like(t)
    losses = generator_loss(out, t, geom16, cfg, disc, prior)
    k = 1.0 / cfg.target_scale  # the losses are taken in network units (volume / target_scale)
    rec = (out - t).abs().mean() * k
    proj = projection_loss(out, t, geom16) * k
    adv = ((disc(out * k, prior) - 1) ** 2).mean()
    torch.testing.assert_close(losses["total"], 0.1 * adv + 10 * rec + 10 * proj)
    torch.testing.assert_close(losses["rec"], rec)
    self_loss = generator_loss(t, t, geom16, cfg.replace(w_adv=0.0))
    assert float(self_loss["total"]) == 0.0 and float(self_loss["proj"]) == 0.0


def test_discriminator_shape_and_conditioning():
    torch.manual_seed(0)
    disc = PatchDiscriminator3D(width=8, layers=3, norm="group")
    v, p = torch.rand(2, 1, 32, 32, 32), torch.rand(2, 1, 32, 32, 32)
    s = disc(v, p)
    assert s.shape == (2, 1, 4, 4, 4)  # three stride-2 layers: 32 -> 4 patches per side
    with torch.no_grad():
        assert float((disc(v, torch.zeros_like(p)) - s).abs().max()) > 0  # the prior is an input
    with pytest.raises(ValueError, match="same shape"):
        disc(v, p[:, :, :16])


def test_train_step_updates_both_networks(geom16):
    from psctnet.train import make_optimizers, train_step

    torch.manual_seed(0)
    net = PSCTNet(
        preset="tiny",
        volume_shape=(16, 16, 16),
        xray_size=16,
        enc3d_widths=(8, 16, 16),
        enc2d_widths=(8, 8, 16),
        view_widths=(8, 8, 8),
        dense_layers=1,
        agp_dim=16,
        agp_heads=2,
    )
    disc = PatchDiscriminator3D(width=4, layers=2, norm="group")
    opt_g, opt_d = make_optimizers(net, disc)
    assert opt_g.defaults["lr"] == 2e-4 and opt_g.defaults["betas"] == (0.5, 0.99)
    target = _target()
    xrays = tp.project(target[0, 0], geom16)[None]  # (1, 2, rows, cols) line integrals
    g0 = [p.detach().clone() for p in net.parameters()]
    d0 = [p.detach().clone() for p in disc.parameters()]
    stats = train_step(net, disc, opt_g, opt_d, xrays, target, geom16)
    assert set(stats) == {"g_total", "adv", "rec", "proj", "bone", "d_loss"}
    assert stats["bone"] == 0.0  # w_bone is 0 by default (the paper's loss)
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())
    assert any(not torch.equal(a, b) for a, b in zip(g0, net.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(d0, disc.parameters()))
    assert all(p.requires_grad for p in disc.parameters())  # re-enabled after the generator step


def test_projection_loss_per_sample_geometries(geom16):
    t = torch.cat([_target(), _target(shift=1)])
    o = torch.cat([_target(shift=2), _target(shift=3)])
    got = projection_loss(o, t, [geom16, geom16])
    torch.testing.assert_close(got, projection_loss(o, t, geom16))
    with pytest.raises(ValueError, match="geometries"):
        projection_loss(o, t, [geom16])


def test_bone_loss_averages_over_target_bone_only():
    t = torch.zeros(2, 1, 4, 4, 4)
    t[0, 0, 0, 0, :2] = 0.05  # two bone voxels in sample 0, none in sample 1
    out = t.clone()
    out[0, 0, 0, 0, 0] = 0.03  # error 0.02 on one of the two bone voxels
    out[0, 0, 3, 3, 3] = 0.5  # a false positive outside the target's bone: not this term's business
    out[1] += 0.01
    assert float(bone_loss(out, t, 0.035)) == pytest.approx(0.01)  # (0.02 + 0) / 2, sample 1 has no bone
    assert float(bone_loss(t, t, 0.035)) == 0.0
    assert float(bone_loss(out[1:], t[1:], 0.035)) == 0.0  # a batch without bone contributes nothing
    with pytest.raises(ValueError, match="same shape"):
        bone_loss(out, t[:1], 0.035)


def test_generator_loss_adds_the_weighted_bone_term(geom16):
    cfg = PSCTNetConfig.preset(
        "tiny", volume_shape=(16, 16, 16), xray_size=16, enc3d_widths=(8, 16, 16), enc2d_widths=(8, 8, 16)
    )
    assert cfg.w_bone == 0.0  # off by default: the paper's loss
    t = _target() * 0.05
    out = _target(shift=2) * 0.04
    base = generator_loss(out, t, geom16, cfg.replace(w_adv=0.0))
    with_bone = generator_loss(out, t, geom16, cfg.replace(w_adv=0.0, w_bone=2.0))
    expected = bone_loss(out, t, cfg.bone_threshold) / cfg.target_scale
    assert float(base["bone"]) == 0.0 and float(expected) > 0
    torch.testing.assert_close(with_bone["bone"], expected)
    torch.testing.assert_close(with_bone["total"], base["total"] + 2.0 * expected)
    with pytest.raises(ValueError, match="w_bone"):
        cfg.replace(w_bone=-1.0)
    with pytest.raises(ValueError, match="bone_threshold"):
        cfg.replace(bone_threshold=0.0)
