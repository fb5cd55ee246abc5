"""The Mamba mixer used by BiM-3D, a naive selective-scan reference, and BiM-3D itself.

Backends. ``mamba_ssm.Mamba`` (CUDA kernels) is used when it imports and CUDA is available
at construction; otherwise ``mambapy.mamba.MambaBlock`` (pure PyTorch, parallel scan).
Both hold the same parameters under the same names and shapes, so a state dict moves
between them unchanged (``d_inner = expand * d_model``, ``dt_rank = ceil(d_model / 16)``):

=================  ==================================  ================================
name               shape                               role
=================  ==================================  ================================
in_proj.weight     (2 d_inner, d_model)                x and gate z (no bias)
conv1d.weight      (d_inner, 1, d_conv)                causal depthwise conv
conv1d.bias        (d_inner,)
x_proj.weight      (dt_rank + 2 d_state, d_inner)      -> (dt, B, C) in that order
dt_proj.weight     (d_inner, dt_rank)                  dt = softplus(dt_proj(dt))
dt_proj.bias       (d_inner,)
A_log              (d_inner, d_state)                  A = -exp(A_log)
D                  (d_inner,)                          skip term D x
out_proj.weight    (d_model, d_inner)                  (no bias)
=================  ==================================  ================================

The recurrence both compute (per channel ``d`` and state ``n``):
``h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t``, ``y_t = C_t . h_t + D x_t``, then
``out = out_proj(y * silu(z))``. :func:`selective_scan_sequential` and
:func:`mamba_block_reference` spell this out step by step; the tests check mambapy's
parallel scan and whole block against them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812 - torch's own idiom
from torch import nn

#: The parameter names and shapes of ``mamba_ssm.Mamba`` (as functions of the sizes);
#: ``tests/test_mamba.py`` checks the mambapy block against this table.
MAMBA_SSM_PARAMETERS = {
    "in_proj.weight": lambda d, di, n, r, k: (2 * di, d),
    "conv1d.weight": lambda d, di, n, r, k: (di, 1, k),
    "conv1d.bias": lambda d, di, n, r, k: (di,),
    "x_proj.weight": lambda d, di, n, r, k: (r + 2 * n, di),
    "dt_proj.weight": lambda d, di, n, r, k: (di, r),
    "dt_proj.bias": lambda d, di, n, r, k: (di,),
    "A_log": lambda d, di, n, r, k: (di, n),
    "D": lambda d, di, n, r, k: (di,),
    "out_proj.weight": lambda d, di, n, r, k: (d, di),
}


def mamba_ssm_available() -> bool:
    """Whether the CUDA ``mamba_ssm`` package imports (it cannot without CUDA)."""
    try:
        import mamba_ssm  # noqa: F401
    except Exception:  # ImportError, or its CUDA extension failing to load
        return False
    return True


def make_mamba(d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, backend: str = "auto") -> nn.Module:
    """A Mamba mixer ``(B, L, d_model) -> (B, L, d_model)``.

    Parameters
    ----------
    backend : {"auto", "mambapy", "mamba_ssm"}
        ``"auto"``: ``mamba_ssm.Mamba`` if it imports and CUDA is available, else mambapy.

    Raises
    ------
    ValueError
        If ``backend="mamba_ssm"`` is asked for and it cannot be imported.
    """
    if backend not in ("auto", "mambapy", "mamba_ssm"):
        raise ValueError(f"backend must be 'auto', 'mambapy' or 'mamba_ssm', got {backend!r}")
    use_ssm = backend == "mamba_ssm" or (backend == "auto" and torch.cuda.is_available() and mamba_ssm_available())
    if use_ssm:
        if not mamba_ssm_available():
            raise ValueError("mamba_backend='mamba_ssm' needs the mamba-ssm package with CUDA; use 'mambapy' on CPU")
        from mamba_ssm import Mamba

        return Mamba(d_model=d_model, d_state=d_state, d_conv=d_conv, expand=expand)
    from mambapy.mamba import MambaBlock, MambaConfig

    return MambaBlock(MambaConfig(d_model=d_model, n_layers=1, d_state=d_state, d_conv=d_conv, expand_factor=expand))


def selective_scan_sequential(x, delta, A, B, C, D):
    """Naive sequential selective scan (one time step per loop iteration).

    Shapes: ``x, delta (b, L, d)``, ``A (d, n)``, ``B, C (b, L, n)``, ``D (d,)`` ->
    ``y (b, L, d)`` with ``h_t = exp(delta_t A) h_{t-1} + delta_t B_t x_t`` (``h_0 = 0``) and
    ``y_t = C_t . h_t + D x_t``.
    """
    b, L, d = x.shape
    n = A.shape[1]
    h = x.new_zeros(b, d, n)
    ys = []
    for t in range(L):
        dt = delta[:, t, :, None]  # (b, d, 1)
        h = torch.exp(dt * A) * h + dt * B[:, t, None, :] * x[:, t, :, None]
        ys.append((h * C[:, t, None, :]).sum(-1) + D * x[:, t])
    return torch.stack(ys, dim=1)


def mamba_block_reference(params: dict, x: torch.Tensor, d_state: int, d_conv: int) -> torch.Tensor:
    """A Mamba block's forward pass from its state dict (mamba_ssm names), step by step.

    ``x (b, L, d_model) -> (b, L, d_model)``; uses :func:`selective_scan_sequential`.
    """
    L = x.shape[1]
    xz = x @ params["in_proj.weight"].T
    xi, z = xz.chunk(2, dim=-1)
    d_inner = xi.shape[-1]
    # causal depthwise convolution: output t sees inputs t-k+1..t
    xp = F.pad(xi.transpose(1, 2), (d_conv - 1, 0))
    xc = F.conv1d(xp, params["conv1d.weight"], params["conv1d.bias"], groups=d_inner)[..., :L].transpose(1, 2)
    xc = F.silu(xc)
    dbc = xc @ params["x_proj.weight"].T
    rank = dbc.shape[-1] - 2 * d_state
    dt, Bm, Cm = torch.split(dbc, [rank, d_state, d_state], dim=-1)
    delta = F.softplus(dt @ params["dt_proj.weight"].T + params["dt_proj.bias"])
    A = -torch.exp(params["A_log"])
    y = selective_scan_sequential(xc, delta, A, Bm, Cm, params["D"])
    return (y * F.silu(z)) @ params["out_proj.weight"].T


class BiSSM(nn.Module):
    """One shared Mamba run on the sequence and on its flip; the flipped output is flipped
    back and the two are summed. With ``interslice`` (SegMamba-style) a third scan runs
    over the tokens re-ordered with the slice (depth) axis fastest.

    ``forward(x (B, L, d), spatial=(D, H, W) or None) -> (B, L, d)``.
    """

    def __init__(
        self, d_model: int, d_state: int, d_conv: int, expand: int, interslice: bool = False, backend: str = "auto"
    ):
        super().__init__()
        self.mamba = make_mamba(d_model, d_state, d_conv, expand, backend)
        self.interslice = interslice

    def forward(self, x: torch.Tensor, spatial: tuple[int, int, int] | None = None) -> torch.Tensor:
        b = x.shape[0]
        # run both directions as one batch through the shared weights
        both = self.mamba(torch.cat([x, x.flip(1)], dim=0))
        out = both[:b] + both[b:].flip(1)
        if self.interslice:
            if spatial is None:
                raise ValueError("BiSSM(interslice=True) needs the spatial shape (D, H, W) of the token grid")
            D, H, W = spatial
            c = x.shape[-1]
            xs = x.reshape(b, D, H, W, c).permute(0, 2, 3, 1, 4).reshape(b, D * H * W, c)
            ys = self.mamba(xs).reshape(b, H, W, D, c).permute(0, 3, 1, 2, 4).reshape(b, D * H * W, c)
            out = out + ys
        return out


class BiM3D(nn.Module):
    """BiM-3D on a 3D feature map: raster-order tokens, ``x + BiSSM(LN(x))``, then
    ``x + FFN(LN(x))`` with ``FFN = Linear -> act -> [dropout] -> Linear -> [dropout]``
    (``activation`` "gelu" or "silu"; the dropouts only when ``dropout > 0``).
    Shape ``(B, C, D, H, W) -> (B, C, D, H, W)``."""

    def __init__(
        self,
        channels: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        ffn_ratio: int = 2,
        interslice: bool = False,
        backend: str = "auto",
        dropout: float = 0.0,
        activation: str = "gelu",
    ):
        super().__init__()
        if activation not in ("gelu", "silu"):
            raise ValueError(f"BiM3D activation must be 'gelu' or 'silu', got {activation!r}")
        self.norm1 = nn.LayerNorm(channels)
        self.ssm = BiSSM(channels, d_state, d_conv, expand, interslice, backend)
        self.norm2 = nn.LayerNorm(channels)
        hidden = ffn_ratio * channels
        mods: list[nn.Module] = [nn.Linear(channels, hidden), nn.GELU() if activation == "gelu" else nn.SiLU()]
        if dropout > 0:
            mods.append(nn.Dropout(dropout))
        mods.append(nn.Linear(hidden, channels))
        if dropout > 0:
            mods.append(nn.Dropout(dropout))
        self.ffn = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, d, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)  # (B, D*H*W, C), raster order (x fastest)
        t = t + self.ssm(self.norm1(t), (d, h, w))
        t = t + self.ffn(self.norm2(t))
        return t.transpose(1, 2).reshape(b, c, d, h, w)


def dt_rank(d_model: int) -> int:
    """Mamba's default ``dt_rank = ceil(d_model / 16)``."""
    return math.ceil(d_model / 16)
