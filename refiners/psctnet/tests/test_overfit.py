"""Slow sanity check: the tiny architecture (at 32^3, so that two CPU minutes hold ~100
steps at the paper's learning rate) fits one Shepp-Logan sample with the full loss (LSGAN +
L1 + DRR projection, Adam 2e-4, betas 0.5/0.99): the losses fall."""

from __future__ import annotations

import time

import pytest
import tomoprior as tp
import torch
from tomoprior.refiners import build_prior

from psctnet import PatchDiscriminator3D, PSCTNet
from psctnet.train import make_optimizers, train_step


@pytest.mark.slow
def test_tiny_overfits_one_shepp_logan_sample(geom32):
    geom = geom32
    torch.manual_seed(0)
    volume = tp.phantoms.Phantom.load("shepp_logan_3d_modified").rasterize(geom.grid, supersample=1).float()
    xrays = tp.project(volume, geom)[None]  # (1, 2, 48, 48) line integrals
    target = (volume / volume.max())[None, None]  # (1, 1, 32, 32, 32) in [0, 1] (target_scale=1)
    prior = build_prior(xrays, geom)
    target_proj = tp.project(target, geom)
    net = PSCTNet(preset="tiny", volume_shape=(32, 32, 32), xray_size=32, agp_dropout=0.0, target_scale=1.0)
    disc = PatchDiscriminator3D.from_config(net.config)
    opt_g, opt_d = make_optimizers(net, disc)
    history = []
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 120.0:
        history.append(
            train_step(net, disc, opt_g, opt_d, xrays, target, geom, prior=prior, target_projections=target_proj)
        )
    elapsed = time.perf_counter() - t0
    steps = len(history)
    first = {k: sum(h[k] for h in history[:3]) / 3 for k in ("g_total", "rec", "proj")}
    last = {k: sum(h[k] for h in history[-3:]) / 3 for k in ("g_total", "rec", "proj")}
    print(f"\noverfit: {steps} steps in {elapsed:.0f} s ({elapsed / steps:.2f} s/step)")
    for k in first:
        print(f"  {k}: first 3 steps {first[k]:.4f} -> last 3 steps {last[k]:.4f}")
    assert steps >= 20
    assert last["rec"] < 0.75 * first["rec"]
    assert last["proj"] < 0.4 * first["proj"]
    assert last["g_total"] < 0.6 * first["g_total"]
