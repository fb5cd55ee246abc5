"""One optimisation step of PSCT-Net (generator and conditional PatchGAN discriminator).

The full training loop (data sets, epochs, linear decay, checkpoints, DDP) belongs to
``tomoprior train``; this module gives it the model-specific step::

    net = PSCTNet(preset="tiny"); disc = PatchDiscriminator3D.from_config(net.config)
    opt_g, opt_d = make_optimizers(net, disc)
    stats = train_step(net, disc, opt_g, opt_d, xrays, target, geometry)
"""

from __future__ import annotations

import torch
from tomoprior.refiners import build_prior

from .losses import PatchDiscriminator3D, generator_loss, lsgan_discriminator_loss


def make_optimizers(model, discriminator: PatchDiscriminator3D | None = None):
    """Adam for the generator (and the discriminator) with ``config.lr`` and ``config.betas``
    (paper: 2e-4, (0.5, 0.99)). Returns ``(opt_g, opt_d)``; ``opt_d`` is None without a
    discriminator."""
    cfg = model.config
    opt_g = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    opt_d = None
    if discriminator is not None:
        opt_d = torch.optim.Adam(discriminator.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
    return opt_g, opt_d


def train_step(
    model,
    discriminator,
    opt_g,
    opt_d,
    xrays: torch.Tensor,
    target: torch.Tensor,
    geometry,
    *,
    prior: torch.Tensor | None = None,
    target_projections: torch.Tensor | None = None,
) -> dict[str, float]:
    """One generator step (and one discriminator step when a discriminator is given).

    Parameters
    ----------
    model : PSCTNet
    discriminator : PatchDiscriminator3D or None
        None (or ``config.w_adv == 0``) trains the generator on ``L_rec`` and ``L_proj`` only.
    opt_g, opt_d : torch optimisers (see :func:`make_optimizers`)
    xrays : ``(B, V, H, W)`` line integrals; target : ``(B, 1, nz, ny, nx)``
    geometry : the Geometry that made the X-rays
    prior : ``(B, 1, nz, ny, nx)``, optional (default ``build_prior(xrays, geometry)``)
    target_projections : ``(B, 1, V, rows, cols)``, optional (default: projected here)

    Returns
    -------
    dict of floats: ``g_total, adv, rec, proj`` and ``d_loss`` (NaN without discriminator).
    """
    cfg = model.config
    if target.ndim != 5 or target.shape[1] != 1:
        raise ValueError(f"target must have shape (B, 1, nz, ny, nx), got {tuple(target.shape)}")
    if prior is None:
        with torch.no_grad():
            prior = build_prior(xrays, geometry)
    use_adv = discriminator is not None and cfg.w_adv > 0
    # the discriminator is conditioned on the normalised prior, like the generator's input
    cond = model._scale(prior) if cfg.normalize_inputs else prior

    model.train()
    output = model(xrays, geometry, prior)

    d_loss = float("nan")
    if use_adv:
        discriminator.train()
        opt_d.zero_grad(set_to_none=True)
        k = 1.0 / cfg.target_scale  # the discriminator sees volumes in network units
        loss_d = lsgan_discriminator_loss(discriminator(target * k, cond), discriminator(output.detach() * k, cond))
        loss_d.backward()
        opt_d.step()
        d_loss = float(loss_d.detach())
        for p in discriminator.parameters():
            p.requires_grad_(False)
    try:
        opt_g.zero_grad(set_to_none=True)
        losses = generator_loss(
            output, target, geometry, cfg, discriminator if use_adv else None, cond, target_projections
        )
        losses["total"].backward()
        opt_g.step()
    finally:
        if use_adv:
            for p in discriminator.parameters():
                p.requires_grad_(True)
    return {
        "g_total": float(losses["total"].detach()),
        "adv": float(losses["adv"]),
        "rec": float(losses["rec"]),
        "proj": float(losses["proj"]),
        "bone": float(losses["bone"]),
        "d_loss": d_loss,
    }
