"""Training hooks: the part of the refiner contract that training needs.

The training loop (:mod:`tomoprior.studies.training`) knows nothing about a particular
network; what is model-specific (extra modules such as a GAN discriminator, the optimisers,
the loss and the update) comes from a refiner's *training hooks*, found in this order:

1. a ``training_hooks`` attribute of the refiner class (a :class:`TrainingHooks` subclass or
   instance);
2. a ``hooks`` module beside the refiner's top-level package (``psctnet.hooks`` for
   ``psctnet.PSCTNet``) exposing ``training_hooks`` (a class or an instance);
3. :class:`TrainingHooks` itself: one Adam over all parameters, L1 loss to the target.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch
from torch import nn

from ..geometry.geometry import Geometry
from .base import Refiner

__all__ = ["Batch", "StepContext", "TrainingHooks", "find_hooks"]


@dataclass
class Batch:
    """One training or validation batch.

    ``xrays`` ``(B, V, H, W)`` line integrals; ``target`` ``(B, 1, nz, ny, nx)`` attenuation per
    mm; ``geometry`` one :class:`Geometry` when every sample shares it, else a list of B;
    ``prior`` ``(B, 1, nz, ny, nx)`` from :func:`build_prior`; ``index`` rows in the file;
    ``target_projections`` ``(B, 1, V, rows, cols)``, optional precomputed projections of the
    targets (a loss may project them itself when None).
    """

    xrays: torch.Tensor
    target: torch.Tensor
    geometry: Geometry | list
    prior: torch.Tensor
    index: list[int]
    target_projections: torch.Tensor | None = None


@dataclass
class StepContext:
    """What a training step works with.

    ``model`` is the bare refiner (read its ``config`` here); ``forward`` is what to *call* for
    the forward pass (the DistributedDataParallel wrapper under torchrun, else ``model``).
    ``aux`` / ``aux_forward``: the same for auxiliary modules (e.g. a discriminator).
    """

    model: Refiner
    forward: nn.Module
    aux: dict[str, nn.Module]
    aux_forward: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    step: int = 0
    epoch: int = 0


class TrainingHooks:
    """The model-specific part of training. The default: L1 to the target, one Adam.

    Subclass and override any of the three methods; expose the subclass as
    ``RefinerClass.training_hooks`` or as ``training_hooks`` in ``<package>.hooks``.
    """

    def build_aux(self, model: Refiner) -> dict[str, nn.Module]:
        """Auxiliary trainable modules saved with the checkpoint (e.g. ``{"discriminator": D}``)."""
        return {}

    def make_optimizers(self, model: Refiner, aux: dict[str, nn.Module], lr: float, betas: tuple[float, float],
                        weight_decay: float) -> dict[str, torch.optim.Optimizer]:
        """Named optimisers; each gets its own LR schedule."""
        return {"model": torch.optim.Adam(model.parameters(), lr=lr, betas=betas, weight_decay=weight_decay)}

    def training_step(self, ctx: StepContext, batch: Batch) -> dict[str, float]:
        """One update; return scalar statistics (``"loss"`` is shown in the progress bar)."""
        opt = ctx.optimizers["model"]
        ctx.forward.train()
        opt.zero_grad(set_to_none=True)
        out = ctx.forward(batch.xrays, batch.geometry, batch.prior)
        loss = torch.nn.functional.l1_loss(out, batch.target)
        loss.backward()
        opt.step()
        return {"loss": float(loss.detach())}


def find_hooks(model: Refiner) -> TrainingHooks:
    """The training hooks of ``model`` (see the module docstring for the search order)."""
    cls = type(model)
    hooks = getattr(cls, "training_hooks", None)
    if hooks is None:
        package = cls.__module__.split(".")[0]
        if package != "tomoprior":
            try:
                mod = importlib.import_module(f"{package}.hooks")
            except ModuleNotFoundError as exc:
                if exc.name not in (package, f"{package}.hooks"):  # the hooks module itself fails to import
                    raise
                mod = None
            hooks = getattr(mod, "training_hooks", None) if mod is not None else None
    if hooks is None:
        return TrainingHooks()
    if isinstance(hooks, type):
        hooks = hooks()
    for name in ("build_aux", "make_optimizers", "training_step"):
        if not callable(getattr(hooks, name, None)):
            raise TypeError(f"training hooks {type(hooks).__name__} of {cls.__name__} lack a callable {name}()")
    return hooks
