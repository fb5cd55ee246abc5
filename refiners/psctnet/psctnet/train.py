"""One optimisation step of PSCT-Net (generator and conditional PatchGAN discriminator),
outside the training loop: the same update as ``tomoprior train`` runs (it calls
:class:`psctnet.hooks.PSCTNetHooks`), for notebooks and tests::

    net = PSCTNet(preset="tiny"); disc = PatchDiscriminator3D.from_config(net.config)
    opt_g, opt_d = make_optimizers(net, disc)
    stats = train_step(net, disc, opt_g, opt_d, xrays, target, geometry)
"""

from __future__ import annotations

import torch
from tomoprior.refiners import build_prior
from tomoprior.refiners.hooks import Batch, StepContext

from .hooks import PSCTNetHooks
from .losses import PatchDiscriminator3D


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
    if target.ndim != 5 or target.shape[1] != 1:
        raise ValueError(f"target must have shape (B, 1, nz, ny, nx), got {tuple(target.shape)}")
    if prior is None:
        with torch.no_grad():
            prior = build_prior(xrays, geometry)
    aux = {"discriminator": discriminator} if discriminator is not None else {}
    optimizers = {"generator": opt_g}
    if opt_d is not None:
        optimizers["discriminator"] = opt_d
    ctx = StepContext(model=model, forward=model, aux=aux, aux_forward=aux, optimizers=optimizers)
    batch = Batch(xrays=xrays, target=target, geometry=geometry, prior=prior, index=[],
                  target_projections=target_projections)
    stats = PSCTNetHooks().training_step(ctx, batch)
    stats["g_total"] = stats.pop("loss")
    return stats
