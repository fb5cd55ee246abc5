"""PSCT-Net's training hooks for ``tomoprior train`` (:mod:`tomoprior.studies.training`).

The generic loop finds ``training_hooks`` here (``<package>.hooks``); :func:`psctnet.train.train_step`
runs the same step outside the loop. The update: an LSGAN discriminator step on
``(target, c)`` vs ``(output.detach(), c)`` (``c`` = :meth:`PSCTNet.discriminator_condition`:
the normalised prior, or the X-rays spread over the grid), then the generator step on
``w_adv L_adv + w_rec L1 + w_proj L_proj``. It also runs under DistributedDataParallel:

- the forward passes go through the DDP wrappers (``ctx.forward``, ``ctx.aux_forward``), the
  config is read from the bare model;
- the discriminator scores real and fake volumes in *one* call on the concatenated batch
  (DDP allows one forward per backward; its norm layers are per-sample, instance or group,
  so this equals two separate calls);
- the adversarial term of the generator uses the bare discriminator with frozen parameters,
  so DDP's gradient reducer of the discriminator is not armed by the generator's backward.
"""

from __future__ import annotations

import torch
from tomoprior.refiners.hooks import Batch, StepContext, TrainingHooks

from .losses import PatchDiscriminator3D, generator_loss, lsgan_discriminator_loss


class PSCTNetHooks(TrainingHooks):
    """Generator + conditional PatchGAN discriminator (omitted when ``w_adv == 0``)."""

    def build_aux(self, model):
        if model.config.w_adv <= 0:
            return {}
        return {"discriminator": PatchDiscriminator3D.from_config(model.config)}

    def make_optimizers(self, model, aux, lr, betas, weight_decay):
        opts = {"generator": torch.optim.Adam(model.parameters(), lr=lr, betas=betas, weight_decay=weight_decay)}
        if "discriminator" in aux:
            opts["discriminator"] = torch.optim.Adam(aux["discriminator"].parameters(), lr=lr, betas=betas)
        return opts

    def training_step(self, ctx: StepContext, batch: Batch) -> dict[str, float]:
        model, cfg = ctx.model, ctx.model.config
        disc = ctx.aux.get("discriminator")
        use_adv = disc is not None and cfg.w_adv > 0
        cond = model.discriminator_condition(batch.xrays, batch.geometry, batch.prior) if use_adv else batch.prior

        ctx.forward.train()
        output = ctx.forward(batch.xrays, batch.geometry, batch.prior)

        d_loss = float("nan")
        if use_adv:
            d_fwd = ctx.aux_forward["discriminator"]
            d_fwd.train()
            opt_d = ctx.optimizers["discriminator"]
            opt_d.zero_grad(set_to_none=True)
            n = batch.target.shape[0]
            vols = torch.cat([batch.target, output.detach()]) / cfg.target_scale  # network units
            scores = d_fwd(vols, torch.cat([cond, cond]))
            loss_d = lsgan_discriminator_loss(scores[:n], scores[n:])
            loss_d.backward()
            opt_d.step()
            d_loss = float(loss_d.detach())
            for p in disc.parameters():
                p.requires_grad_(False)
        opt_g = ctx.optimizers["generator"]
        try:
            opt_g.zero_grad(set_to_none=True)
            losses = generator_loss(output, batch.target, batch.geometry, cfg, disc if use_adv else None, cond,
                                    batch.target_projections)
            losses["total"].backward()
            opt_g.step()
        finally:
            if use_adv:
                for p in disc.parameters():
                    p.requires_grad_(True)
        return {
            "loss": float(losses["total"].detach()),
            "adv": float(losses["adv"]),
            "rec": float(losses["rec"]),
            "proj": float(losses["proj"]),
            "bone": float(losses["bone"]),
            "d_loss": d_loss,
        }


#: What :func:`tomoprior.refiners.hooks.find_hooks` looks up.
training_hooks = PSCTNetHooks
