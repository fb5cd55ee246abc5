"""Conditional 3D PatchGAN discriminator and the PSCT-Net losses.

Generator: ``L = w_adv L_adv + w_rec L_rec + w_proj L_proj`` with the LSGAN adversarial
term ``mean((D(G, prior) - 1)^2)``, ``L_rec = mean|G - T|`` and

* ``proj_mode="drr"`` (default): ``L_proj = mean|P G - P T| / L``, ``P = tomoprior.project``
  through the acquisition geometry (true DRR consistency) and ``L`` the grid's largest
  extent in mm, so ``L_proj`` is in volume units like ``L_rec``;
* ``proj_mode="axis_mean"``: the paper's variant, L1 between the means along z, y and x.

Discriminator (LSGAN): ``0.5 mean((D(T, c) - 1)^2) + 0.5 mean(D(G, c)^2)`` with the condition
``c`` the normalised prior (default) or the X-rays spread over the grid
(``disc_condition="xrays"``, the official code's choice; :meth:`PSCTNet.discriminator_condition`).
"""

from __future__ import annotations

import tomoprior
import torch
import torch.nn.functional as F  # noqa: N812 - torch's own idiom
from tomoprior.units import BONE_THRESHOLD_MU
from torch import nn

from .blocks import init_normal_, norm_layer
from .config import PSCTNetConfig


class PatchDiscriminator3D(nn.Module):
    """Conditional 3D PatchGAN: ``(volume, condition)`` concatenated -> a map of patch scores.

    ``layers`` stride-2 ``4^3`` convolutions (``width``, doubling, capped at 8 ``width``),
    LeakyReLU 0.2, normalisation after all but the first, then a stride-1 ``3^3`` layer and
    a 1-channel ``3^3`` output. ``in_channels`` = 1 (volume) + the condition's channels.
    Shape ``(B, 1, nz, ny, nx), (B, in_channels - 1, nz, ny, nx) -> (B, 1, pz, py, px)``.
    """

    def __init__(self, width: int = 64, layers: int = 3, norm: str = "instance", in_channels: int = 2):
        super().__init__()
        mods: list[nn.Module] = [nn.Conv3d(in_channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        c = width
        for i in range(1, layers):
            c2 = min(width * 2**i, 8 * width)
            mods += [
                nn.Conv3d(c, c2, 4, stride=2, padding=1, bias=False),
                norm_layer(norm, c2, 3),
                nn.LeakyReLU(0.2, True),
            ]
            c = c2
        c2 = min(c * 2, 8 * width)
        mods += [
            nn.Conv3d(c, c2, 3, stride=1, padding=1, bias=False),
            norm_layer(norm, c2, 3),
            nn.LeakyReLU(0.2, True),
            nn.Conv3d(c2, 1, 3, stride=1, padding=1),
        ]
        self.net = nn.Sequential(*mods)

    @classmethod
    def from_config(cls, config: PSCTNetConfig) -> PatchDiscriminator3D:
        """The discriminator of ``config``: ``disc_width``, ``disc_layers``, one input channel
        for the volume plus ``config.disc_condition_channels``; instance norm where the
        generator uses batch norm (real and fake are scored in one call, so per-sample
        statistics keep them apart); ``weight_init="normal"`` initialises it N(0, 0.02)."""
        disc = cls(
            config.disc_width,
            config.disc_layers,
            "instance" if config.norm == "batch" else config.norm,
            in_channels=1 + config.disc_condition_channels,
        )
        if getattr(config, "weight_init", "default") == "normal":
            init_normal_(disc)
        return disc

    @property
    def in_channels(self) -> int:
        return self.net[0].in_channels

    def forward(self, volume: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        want = self.in_channels - 1
        if (
            volume.ndim != 5
            or volume.shape[1] != 1
            or condition.ndim != 5
            or condition.shape[0] != volume.shape[0]
            or condition.shape[1] != want
            or condition.shape[2:] != volume.shape[2:]
        ):
            raise ValueError(
                f"volume {tuple(volume.shape)} and condition {tuple(condition.shape)} must have the same shape apart "
                f"from the channels: (B, 1, nz, ny, nx) and (B, {want}, nz, ny, nx)"
            )
        return self.net(torch.cat([volume, condition], dim=1))


def lsgan_generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    return (fake_scores - 1).square().mean()


def lsgan_discriminator_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((real_scores - 1).square().mean() + fake_scores.square().mean())


def projection_loss(
    output: torch.Tensor,
    target: torch.Tensor,
    geometry,
    mode: str = "drr",
    target_projections: torch.Tensor | None = None,
) -> torch.Tensor:
    """L1 projection consistency between ``output`` and ``target`` ``(B, 1, nz, ny, nx)``.

    ``mode="drr"``: ``mean|project(output) - project(target)|`` through ``geometry`` (one
    Geometry, or a list of one per sample), divided
    by the grid's largest extent (mm). ``target_projections`` (``(B, 1, V, rows, cols)``,
    line integrals) may be passed to skip projecting the target again.
    ``mode="axis_mean"``: mean over |difference of means| along each of the 3 axes.
    """
    if output.shape != target.shape:
        raise ValueError(f"output {tuple(output.shape)} and target {tuple(target.shape)} must have the same shape")
    if mode == "axis_mean":
        return sum(F.l1_loss(output.mean(dim=d), target.mean(dim=d)) for d in (-3, -2, -1)) / 3
    if mode != "drr":
        raise ValueError(f"mode must be 'drr' or 'axis_mean', got {mode!r}")
    if isinstance(geometry, (list, tuple)):  # one geometry per sample
        if len(geometry) != output.shape[0]:
            raise ValueError(f"got {len(geometry)} geometries for a batch of {output.shape[0]}")

        def project(vol):
            return torch.cat([tomoprior.project(vol[i : i + 1], g) for i, g in enumerate(geometry)])

        scale = max(geometry[0].grid.extent_mm)
    else:

        def project(vol):
            return tomoprior.project(vol, geometry)

        scale = max(geometry.grid.extent_mm)
    p_out = project(output)
    if target_projections is None:
        with torch.no_grad():
            target_projections = project(target)
    elif target_projections.shape != p_out.shape:
        raise ValueError(
            f"target_projections must have shape {tuple(p_out.shape)}, got {tuple(target_projections.shape)}"
        )
    return F.l1_loss(p_out, target_projections) / scale


def generator_loss(
    output: torch.Tensor,
    target: torch.Tensor,
    geometry,
    config: PSCTNetConfig,
    discriminator: nn.Module | None = None,
    prior: torch.Tensor | None = None,
    target_projections: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """``{"total", "adv", "rec", "proj", "bone"}`` for the generator.

    ``output`` and ``target`` are in 1/mm; ``rec`` and ``proj`` are reported and weighted
    in network units (divided by ``config.target_scale``) and the discriminator sees
    ``output / target_scale``, so for a target scaled to ~[0, 1] the paper's weights
    (0.1, 10, 10) keep their meaning.

    ``adv`` is zero (and not weighted in) when no ``discriminator`` is given or
    ``config.w_adv == 0``; then ``prior`` is not needed. ``prior`` is the discriminator's
    condition (:meth:`PSCTNet.discriminator_condition`: the normalised prior, or the X-rays
    spread over the grid with ``disc_condition="xrays"``). ``bone`` (weighted by
    ``config.w_bone``, default 0) is :func:`bone_loss`.
    """
    k = 1.0 / float(getattr(config, "target_scale", 1.0))  # 1/mm -> network units
    rec = F.l1_loss(output, target) * k
    zero = output.new_zeros(())
    proj = (
        projection_loss(output, target, geometry, config.proj_mode, target_projections) * k
        if config.w_proj > 0
        else zero
    )
    w_bone = float(getattr(config, "w_bone", 0.0))
    bone_threshold = float(getattr(config, "bone_threshold", BONE_THRESHOLD_MU))
    bone = bone_loss(output, target, bone_threshold) * k if w_bone > 0 else zero
    adv = zero
    if discriminator is not None and config.w_adv > 0:
        if prior is None:
            raise ValueError("the adversarial loss needs the condition of the discriminator (prior=...; see "
                             "PSCTNet.discriminator_condition)")
        adv = lsgan_generator_loss(discriminator(output * k, prior))
    total = config.w_adv * adv + config.w_rec * rec + config.w_proj * proj + w_bone * bone
    return {"total": total, "adv": adv.detach(), "rec": rec.detach(), "proj": proj.detach(), "bone": bone.detach()}


def bone_loss(output: torch.Tensor, target: torch.Tensor, threshold: float) -> torch.Tensor:
    """Mean ``|output - target|`` over the target's bone voxels (``target > threshold``).

    Averaged per sample over that sample's bone voxels, then over the samples that have
    bone (a batch without bone gives 0). Same units as ``output``.
    """
    if output.shape != target.shape:
        raise ValueError(f"output {tuple(output.shape)} and target {tuple(target.shape)} must have the same shape")
    mask = (target > threshold).to(output.dtype)
    dims = tuple(range(1, output.ndim))
    count = mask.sum(dim=dims)
    err = ((output - target).abs() * mask).sum(dim=dims)
    has = count > 0
    if not bool(has.any()):
        return output.new_zeros(())
    return (err[has] / count[has]).mean()
