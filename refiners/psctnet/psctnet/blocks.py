"""Convolution blocks shared by the encoders and decoders (2D and 3D): conv + norm + ReLU,
dense blocks (DenseNet-style concatenation) and the stride-2 dense stage."""

from __future__ import annotations

import math

import torch
from torch import nn


def norm_layer(kind: str, channels: int, dims: int) -> nn.Module:
    """A normalisation layer over ``channels`` for ``dims``-D feature maps (2 or 3)."""
    if kind == "batch":
        return (nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d)(channels)
    if kind == "instance":
        return (nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm3d)(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(math.gcd(4, channels), channels)
    raise ValueError(f"norm must be 'batch', 'instance' or 'group', got {kind!r}")


def conv_layer(dims: int, cin: int, cout: int, kernel: int, stride: int = 1, bias: bool = False) -> nn.Module:
    conv = nn.Conv2d if dims == 2 else nn.Conv3d
    return conv(
        cin, cout, kernel, stride=stride, padding=kernel // 2 if kernel % 2 else (kernel - stride) // 2, bias=bias
    )


def cat_channels(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate along channels, keeping the channels-last 3D layout of the first tensor
    (``torch.cat`` of mixed layouts returns the default one, whose CPU convolutions are slow)."""
    out = torch.cat(tensors, dim=1)
    first = tensors[0]
    if first.ndim == 5 and first.shape[1] > 1 and first.is_contiguous(memory_format=torch.channels_last_3d):
        out = out.contiguous(memory_format=torch.channels_last_3d)
    return out


class ConvNormAct(nn.Sequential):
    """``conv(k) -> norm -> ReLU``; shape ``(B, cin, *S) -> (B, cout, *S / stride)``."""

    def __init__(self, dims: int, cin: int, cout: int, kernel: int = 3, stride: int = 1, norm: str = "instance"):
        super().__init__(
            conv_layer(dims, cin, cout, kernel, stride), norm_layer(norm, cout, dims), nn.ReLU(inplace=True)
        )


class DenseBlock(nn.Module):
    """Dense block: each of ``layers`` layers (norm -> ReLU -> 3-conv) adds ``growth``
    channels computed from all previous ones; a 1-conv transition maps the concatenation
    to ``cout``. With ``bottleneck = k > 0`` each layer is DenseNet-BC's
    ``norm -> ReLU -> 1-conv (k * growth) -> norm -> ReLU -> 3-conv``.
    Shape ``(B, cin, *S) -> (B, cout, *S)``."""

    def __init__(self, dims: int, cin: int, cout: int, layers: int, growth: int, norm: str, bottleneck: int = 0):
        super().__init__()
        self.layers = nn.ModuleList()
        c = cin
        for _ in range(layers):
            if bottleneck:
                inner = bottleneck * growth
                layer = nn.Sequential(
                    norm_layer(norm, c, dims), nn.ReLU(inplace=False), conv_layer(dims, c, inner, 1),
                    norm_layer(norm, inner, dims), nn.ReLU(inplace=True), conv_layer(dims, inner, growth, 3),
                )
            else:
                layer = nn.Sequential(norm_layer(norm, c, dims), nn.ReLU(inplace=False), conv_layer(dims, c, growth, 3))
            self.layers.append(layer)
            c += growth
        self.transition = ConvNormAct(dims, c, cout, kernel=1, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for layer in self.layers:
            feats.append(layer(cat_channels(feats)))
        return self.transition(cat_channels(feats))


class DownStage(nn.Module):
    """One encoder stage: stride-2 3-conv (halves every spatial side) then a dense block.
    The stride-2 convolution maps ``cin`` to ``cout`` channels, or, with
    ``widen_in_transition`` (DenseNet style, as the official code), keeps ``cin`` and the
    dense block's transition maps to ``cout``. Shape ``(B, cin, *S) -> (B, cout, *S/2)``."""

    def __init__(
        self, dims: int, cin: int, cout: int, layers: int, growth: int, norm: str, bottleneck: int = 0,
        widen_in_transition: bool = False,
    ):
        super().__init__()
        mid = cin if widen_in_transition else cout
        self.down = ConvNormAct(dims, cin, mid, kernel=3, stride=2, norm=norm)
        self.dense = DenseBlock(dims, mid, cout, layers, growth, norm, bottleneck)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(self.down(x))


class UpStage3D(nn.Module):
    """One decoder level: 2x transposed convolution (``up_kernel^3``, stride 2: 2 = no
    overlap, 3 as the official code), concatenation with ``extra`` feature maps at the new
    resolution, then ``convs`` 3-conv blocks (the first takes the concatenation).
    ``(B, cin, *S) -> (B, cout, *2S)``."""

    def __init__(self, cin: int, extra: int, cout: int, norm: str, up_kernel: int = 2, convs: int = 2):
        super().__init__()
        k = up_kernel
        self.up = nn.Sequential(
            nn.ConvTranspose3d(cin, cout, k, stride=2, padding=(k - 1) // 2, output_padding=k % 2, bias=False),
            norm_layer(norm, cout, 3),
            nn.ReLU(inplace=True),
        )
        self.fuse = nn.Sequential(
            ConvNormAct(3, cout + extra, cout, 3, norm=norm),
            *(ConvNormAct(3, cout, cout, 3, norm=norm) for _ in range(convs - 1)),
        )

    def forward(self, x: torch.Tensor, extras: list[torch.Tensor]) -> torch.Tensor:
        channels_last = x.is_contiguous(memory_format=torch.channels_last_3d) and x.shape[1] > 1
        x = self.up(x)
        if channels_last:  # the transposed convolution returns the default layout: keep the fast one
            x = x.contiguous(memory_format=torch.channels_last_3d)
        if extras:
            x = cat_channels([x, *extras])
        return self.fuse(x)


class Encoder2D(nn.Module):
    """Per-view 2D encoder: ``7^2`` stem then one stride-2 dense stage per width.

    ``forward(x (B, 1, H, W)) -> [f_0 (B, stem, H, W), f_1 (B, w_0, H/2, W/2), ...,
    f_S (B, w_{S-1}, H/2^S, W/2^S)]`` (``f_s`` pairs with 3D stage ``s``; ``f_S`` is the
    bottleneck). ``layers``: dense layers per stage, one int for all or one per stage;
    ``bottleneck``: see :class:`DenseBlock`; ``widen_in_transition``: see :class:`DownStage`.
    """

    def __init__(
        self, stem: int, widths: tuple[int, ...], layers: int | tuple[int, ...], growth: int, norm: str,
        bottleneck: int = 0, widen_in_transition: bool = False,
    ):
        super().__init__()
        self.stem = ConvNormAct(2, 1, stem, kernel=7, norm=norm)
        chans = (stem, *widths)
        per_stage = (layers,) * len(widths) if isinstance(layers, int) else tuple(layers)
        self.stages = nn.ModuleList(
            DownStage(2, chans[i], chans[i + 1], per_stage[i], growth, norm, bottleneck, widen_in_transition)
            for i in range(len(widths))
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [self.stem(x)]
        for stage in self.stages:
            feats.append(stage(feats[-1]))
        return feats


def init_normal_(module: nn.Module, std: float = 0.02) -> None:
    """pix2pix-style initialisation, as the official PSCT-Net code initialises its generator
    and discriminator: every convolution (1D/2D/3D, transposed too) and linear weight drawn
    from N(0, ``std``), their biases 0; BatchNorm2d weights N(1, ``std``), biases 0. Modules
    inside ``module`` (Mamba's projections and 1D convolution, the attention's output
    projection) are included; other parameters (Mamba's ``A_log`` and ``D``, attention
    in-projections, LayerNorms, 3D batch norms) keep their initialisation."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
                nn.init.normal_(m.weight, 0.0, std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, std)
                nn.init.zeros_(m.bias)
