"""2D -> 3D connections: BP-C (geometric back-projection of feature maps), AGP-3D (learned
voxel queries attending to the view's 2D tokens) and the X2CT-GAN-style broadcast lift
used when AGP-3D is switched off."""

from __future__ import annotations

import math

import torch
from tomoprior.refiners import build_prior
from torch import nn

from .axes import ViewFrame
from .blocks import ConvNormAct


class BPC(nn.Module):
    """BP-C: back-project each view's 2D features through the geometry onto a (coarser)
    grid, average the views, then ``3^3 conv -> norm -> ReLU``.

    ``forward(feats (B, V, C, h, w), geometry, grid) -> (B, cout, *grid.shape)``. The
    feature maps cover the whole detector of each view, whatever ``h, w``.
    """

    def __init__(self, cin: int, cout: int, norm: str):
        super().__init__()
        self.conv = ConvNormAct(3, cin, cout, 3, norm=norm)

    def forward(self, feats: torch.Tensor, geometry, grid, layout=None) -> torch.Tensor:
        # the mean over the views that see each voxel, (B, C, nz, ny, nx): on CPU in one pass of the
        # lifting kernels, bitwise fuse_views(*backproject_features(..., return_mask=True), "mean")
        fused = build_prior(feats, geometry, grid=grid)
        return self.conv(fused if layout is None else layout(fused))


def fourier_features(coords: torch.Tensor, frequencies: int) -> torch.Tensor:
    """``(..., k)`` coordinates in about [-1, 1] -> ``(..., 2 k F)`` sines and cosines at
    frequencies ``pi * 2^f``, f = 0..F-1."""
    scales = math.pi * 2.0 ** torch.arange(frequencies, dtype=coords.dtype, device=coords.device)
    arg = coords[..., None] * scales  # (..., k, F)
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1).flatten(-2)


def detector_coords_of_points(view, xyz: torch.Tensor) -> torch.Tensor:
    """Normalised detector coordinates ``(n, 2)`` in [-1, 1] (``(u, v)`` = (col, row),
    pixel-edge convention, like ``grid_sample(align_corners=False)``) of world points
    ``(n, 3)`` mm."""
    pix = view.project_points(xyz.to(view.dtype)).to(torch.float32)
    rows, cols = view.shape
    return torch.stack([(2 * pix[:, 0] + 1) / cols - 1, (2 * pix[:, 1] + 1) / rows - 1], dim=-1)


class AGP3D(nn.Module):
    """AGP-3D for one view: learned voxel queries (one per 3D bottleneck voxel, in the view
    frame) cross-attend, multi-head, to the view's 2D bottleneck tokens.

    Tokens: ``(B, C2, hb, wb)`` -> ``hb*wb`` tokens -> Linear(C2, dim) -> dropout -> ReLU.
    ``attn_dropout`` (None: ``dropout``) drops attention weights; with ``residual_norm`` the
    queries are added back to the attention output and the sum LayerNormed (without it, as in
    the official ``Project2Dto3D``, the attention output is returned as is).
    With ``pos_encoding``, a shared MLP of Fourier features of the detector coordinate is
    added to every token (its cell centre) and every query (where its voxel centre
    projects), so the attention can use where a voxel falls on the X-ray.

    ``forward(tokens2d, frame_shape, query_uv (Q, 2) or None) -> (B, dim, *frame_shape)``
    with ``Q = prod(frame_shape) = n_queries``.
    """

    def __init__(
        self,
        c2d: int,
        dim: int,
        heads: int,
        n_queries: int,
        dropout: float,
        pos_encoding: bool,
        frequencies: int,
        attn_dropout: float | None = None,
        residual_norm: bool = True,
    ):
        super().__init__()
        self.token_proj = nn.Sequential(nn.Linear(c2d, dim), nn.Dropout(dropout), nn.ReLU(inplace=True))
        self.queries = nn.Parameter(torch.randn(n_queries, dim) * 0.02)
        self.attn = nn.MultiheadAttention(
            dim, heads, dropout=dropout if attn_dropout is None else attn_dropout, batch_first=True
        )
        self.residual_norm = residual_norm
        if residual_norm:
            self.norm = nn.LayerNorm(dim)
        self.pos_encoding = pos_encoding
        self.frequencies = frequencies
        if pos_encoding:
            self.pos_mlp = nn.Sequential(nn.Linear(4 * frequencies, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))

    def forward(self, tokens2d: torch.Tensor, frame_shape, query_uv: torch.Tensor | None = None) -> torch.Tensor:
        if math.prod(frame_shape) != self.queries.shape[0]:
            raise ValueError(
                f"AGP3D has {self.queries.shape[0]} queries, the frame shape {tuple(frame_shape)} needs "
                f"{math.prod(frame_shape)}"
            )
        b, _, h, w = tokens2d.shape
        tokens = self.token_proj(tokens2d.flatten(2).transpose(1, 2))  # (B, h*w, dim)
        queries = self.queries.unsqueeze(0).expand(b, -1, -1)
        if self.pos_encoding:
            if query_uv is None:
                raise ValueError("AGP3D with pos_encoding needs the detector coordinates of the query voxels")
            dev, dt = tokens.device, tokens.dtype
            cu = (2 * torch.arange(w, device=dev, dtype=dt) + 1) / w - 1
            cv = (2 * torch.arange(h, device=dev, dtype=dt) + 1) / h - 1
            vv, uu = torch.meshgrid(cv, cu, indexing="ij")
            token_uv = torch.stack([uu, vv], dim=-1).reshape(h * w, 2)
            tokens = tokens + self.pos_mlp(fourier_features(token_uv, self.frequencies))
            queries = queries + self.pos_mlp(fourier_features(query_uv.to(dev, dt), self.frequencies))
        out, _ = self.attn(queries, tokens, tokens, need_weights=False)
        if self.residual_norm:
            out = self.norm(out + queries)
        return out.transpose(1, 2).reshape(b, -1, *frame_shape)


class BroadcastLift(nn.Module):
    """X2CT-GAN-style lift (used when AGP-3D is off): 1x1 conv on the 2D bottleneck,
    resample to the view frame's ``(row, col)`` size, repeat along depth.
    ``(B, C2, hb, wb) -> (B, dim, *frame_shape)``. Knows nothing of the geometry."""

    def __init__(self, c2d: int, dim: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(c2d, dim, 1), nn.ReLU(inplace=True))

    def forward(self, tokens2d: torch.Tensor, frame_shape, query_uv: torch.Tensor | None = None) -> torch.Tensor:
        d, r, c = frame_shape
        x = self.proj(tokens2d)
        if x.shape[-2:] != (r, c):
            x = nn.functional.interpolate(x, size=(r, c), mode="bilinear", align_corners=False)
        return x.unsqueeze(2).expand(-1, -1, d, -1, -1).contiguous()


class ViewSkip(nn.Module):
    """X2CT-GAN-style 2D -> 3D skip link of a per-view decoder level: ``1^2 conv -> norm ->
    ReLU`` on the view's 2D encoder features, resampled to the frame's ``(row, col)`` size,
    repeated along the view's depth axis, then ``3^3 conv -> norm -> ReLU``.
    ``(B, c2d, h, w) -> (B, cout, *frame_shape)``. Knows nothing of the geometry (as in the
    official code's ``Dimension_UpsampleCutBlock``)."""

    def __init__(self, c2d: int, cout: int, norm: str):
        super().__init__()
        self.compress = ConvNormAct(2, c2d, cout, kernel=1, norm=norm)
        self.conv = ConvNormAct(3, cout, cout, 3, norm=norm)

    def forward(self, feats2d: torch.Tensor, frame_shape, layout=None) -> torch.Tensor:
        d, r, c = frame_shape
        x = self.compress(feats2d)
        if x.shape[-2:] != (r, c):
            x = nn.functional.interpolate(x, size=(r, c), mode="bilinear", align_corners=False)
        x = x.unsqueeze(2).expand(-1, -1, d, -1, -1).contiguous()
        return self.conv(x if layout is None else layout(x))


def frame_voxel_world(frame: ViewFrame, grid) -> torch.Tensor:
    """World centres (mm) of the voxels of ``grid`` listed in the view frame's raster order
    ``(depth, row, col)``: shape ``(nz*ny*nx, 3)``, float64."""
    centers = grid.voxel_centers(dtype=torch.float64)  # (nz, ny, nx, 3)
    as_channels = centers.permute(3, 0, 1, 2).unsqueeze(0)  # (1, 3, nz, ny, nx)
    return frame.to_view(as_channels)[0].reshape(3, -1).T.contiguous()
