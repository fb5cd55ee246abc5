"""PSCT-Net: geometry-prior reconstruction of a volume from (two) X-rays.

Data flow (``S`` = number of stages, shapes for batch ``B`` and ``V`` views)::

    xrays (B, V, H, W) --resample--> (B, V, X, X) --per-view 2D encoder--> f_v,s  (s = 0..S)
    prior (B, 1, nz, ny, nx) --7^3 stem--> h_0
        for s in 0..S-1:  [BP-C: back-project f_{.,s} onto the grid / 2^s, average views,
                           conv-norm-ReLU, concatenate]  --stride-2 dense stage--> h_{s+1}
    h_S --BiM-3D--> b                                      (main bottleneck, grid / 2^S)
    f_v,S --AGP-3D (or broadcast lift)--> g_v in view frame (depth, row, col)
    MV3D-C at the bottleneck and at every decoder level: avg_v to_ct(g_v) -> concatenated
        to the main stream, written back into every view branch (to_view)
    main decoder (U-Net skips from the encoder) --1^3 conv--> volume (B, 1, nz, ny, nx)

The ``official`` preset rewires this as the authors' code does: no bottleneck fusion (the
bottleneck average is only written back into the view branches), view decoders with
X2CT-GAN skip links from their 2D encoder (``view_skips``), a main decoder without encoder
skips that sees the views through MV3D-C only, and a 7^3 head.

Only the main branch's output is supervised (as in the paper).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812 - torch's own idiom
from tomoprior import Geometry
from tomoprior.refiners import Refiner, backproject_features, build_prior
from torch import nn

from .axes import ViewFrame, view_frame
from .blocks import ConvNormAct, DownStage, Encoder2D, UpStage3D, cat_channels, init_normal_
from .config import PSCTNetConfig
from .lifting import AGP3D, BPC, BroadcastLift, ViewSkip, detector_coords_of_points, frame_voxel_world
from .mamba import BiM3D


def _channels_last_input(module, args):
    """Forward pre-hook: feed 3D convolutions channels-last inputs (PyTorch's CPU kernels for
    that layout are several times faster, above all in the backward pass)."""
    x = args[0]
    if x.shape[1] > 1 and not x.is_contiguous(memory_format=torch.channels_last_3d):
        return (x.contiguous(memory_format=torch.channels_last_3d), *args[1:])
    return None


class PSCTNet(Refiner):
    """PSCT-Net refiner (arXiv 2606.19867, re-implemented from the paper's description).

    Parameters
    ----------
    config : PSCTNetConfig or dict, optional
        All hyper-parameters; default the ``tiny`` preset.
    preset : str, optional
        Start from a named preset (``"tiny"``, ``"paper"`` or ``"official"``) instead; ``**overrides``
        then replace single fields (e.g. ``use_bim=False``).

    Shapes
    ------
    ``forward(xrays (B, V, H, W), geometry, prior (B, 1, nz, ny, nx) or None)`` ->
    ``(B, 1, nz, ny, nx)`` on ``geometry.grid`` (which must have ``config.volume_shape``).
    ``geometry`` may be a list of B geometries (e.g. per-sample calibrations) sharing the
    grid and the axis assignment of their views.

    Examples
    --------
    >>> net = PSCTNet(preset="tiny", volume_shape=(32, 32, 32))
    >>> net.config.num_stages
    4
    """

    name = "psctnet"
    config_class = PSCTNetConfig

    #: File name of the shipped demo weights inside ``psctnet/weights`` (see :meth:`demo_checkpoint`).
    DEMO_WEIGHTS = "psctnet_tiny_demo.pt"

    @classmethod
    def demo_checkpoint(cls) -> Path | None:
        """The small ``tiny``-preset checkpoint shipped with the plugin (64^3 grid of 3.75 mm,
        two 128^2 views of 2.4 mm pixels: the geometry of ``tomoprior dataset make --grid 64``),
        trained by ``tomoprior train``; its ``checkpoint_extra["provenance"]`` records the
        training and data commands, seeds and validation metrics. None if it is missing."""
        path = Path(__file__).parent / "weights" / cls.DEMO_WEIGHTS
        return path if path.is_file() else None

    def __init__(self, config: PSCTNetConfig | dict | None = None, *, preset: str | None = None, **overrides):
        if config is not None and preset is not None:
            raise ValueError("give either config or preset, not both")
        if config is None:
            config = PSCTNetConfig.preset(preset or "tiny", **overrides)
            overrides = {}
        elif isinstance(config, dict):
            config = PSCTNetConfig.from_dict({**config, **overrides})
            overrides = {}
        super().__init__(config, **overrides)  # the base class validates the type and applies overrides
        cfg = self.config
        S = cfg.num_stages
        norm = cfg.norm

        # per-view 2D encoders
        layers = tuple(cfg.stage_layers(s) for s in range(S))
        self.encoders2d = nn.ModuleList(
            Encoder2D(
                cfg.stem2d_width, cfg.enc2d_widths, layers, cfg.growth, norm, cfg.dense_bottleneck,
                cfg.widen_in_transition,
            )
            for _ in range(cfg.num_views)
        )
        widths2d = (cfg.stem2d_width, *cfg.enc2d_widths)  # channels of f_s, s = 0..S

        # main 3D encoder with BP-C
        self.bpc = nn.ModuleDict()
        if cfg.has_main_encoder:
            self.stem3d = ConvNormAct(3, 1, cfg.stem3d_width, kernel=7, norm=norm)
            chans = (cfg.stem3d_width, *cfg.enc3d_widths)
            stages = []
            for s in range(S):
                extra = 0
                if s in cfg.resolved_bpc_stages:
                    extra = cfg.resolved_bpc_width(s, widths2d[s])
                    self.bpc[str(s)] = BPC(widths2d[s], extra, norm)
                stages.append(
                    DownStage(
                        3, chans[s] + extra, chans[s + 1], layers[s], cfg.growth, norm, cfg.dense_bottleneck,
                        cfg.widen_in_transition,
                    )
                )
            self.stages3d = nn.ModuleList(stages)

        # 2D bottleneck -> 3D view branches
        n_queries = 1
        for n in cfg.bottleneck_shape:
            n_queries *= n
        if cfg.use_agp:
            self.lifts = nn.ModuleList(
                AGP3D(
                    widths2d[-1],
                    cfg.agp_dim,
                    cfg.agp_heads,
                    n_queries,
                    cfg.agp_dropout,
                    cfg.agp_pos_encoding,
                    cfg.agp_pos_frequencies,
                    cfg.agp_attn_dropout,
                    cfg.agp_residual_norm,
                )
                for _ in range(cfg.num_views)
            )
        else:
            self.lifts = nn.ModuleList(BroadcastLift(widths2d[-1], cfg.agp_dim) for _ in range(cfg.num_views))

        # bottleneck fusion and BiM-3D
        cb = cfg.enc3d_widths[-1]
        if cfg.bottleneck_view_fusion:
            self.bottleneck_fuse = ConvNormAct(
                3, (cb if cfg.has_main_encoder else 0) + cfg.agp_dim, cb, kernel=1, norm=norm
            )
        if cfg.use_bim:
            self.bim = BiM3D(
                cb,
                cfg.bim_d_state,
                cfg.bim_d_conv,
                cfg.bim_expand,
                cfg.bim_ffn_ratio,
                cfg.bim_interslice,
                cfg.mamba_backend,
                cfg.bim_dropout,
                cfg.bim_ffn_activation,
            )

        # per-view 3D decoders (MV3D-C) and the main decoder
        dec, vw = cfg.resolved_dec_widths, cfg.resolved_view_widths
        if cfg.use_mv3dc:
            view_extra = vw if cfg.view_skips else (0,) * S
            self.view_decoders = nn.ModuleList(
                nn.ModuleList(
                    UpStage3D(
                        (cfg.agp_dim, *vw)[lv], view_extra[lv], vw[lv], norm, cfg.upsample_kernel,
                        cfg.view_decoder_convs,
                    )
                    for lv in range(S)
                )
                for _ in range(cfg.num_views)
            )
            if cfg.view_skips:  # decoder level lv works at grid / 2^(S-1-lv): 2D features f_{S-1-lv}
                self.view_skip_links = nn.ModuleList(
                    nn.ModuleList(ViewSkip(widths2d[S - 1 - lv], vw[lv], norm) for lv in range(S))
                    for _ in range(cfg.num_views)
                )
        with_skips = cfg.has_main_encoder and cfg.decoder_skips
        skips = (*reversed(cfg.enc3d_widths[:-1]), cfg.stem3d_width) if with_skips else (0,) * S
        self.decoder = nn.ModuleList(
            UpStage3D((cb, *dec)[lv], skips[lv] + (vw[lv] if cfg.use_mv3dc else 0), dec[lv], norm, cfg.upsample_kernel)
            for lv in range(S)
        )
        self.head = nn.Conv3d(dec[-1], 1, cfg.head_kernel, padding=cfg.head_kernel // 2)
        if cfg.weight_init == "normal":
            init_normal_(self)
            with torch.no_grad():
                for lift in self.lifts:
                    if isinstance(lift, AGP3D):
                        lift.queries.normal_(0.0, 1.0)  # the official voxel queries: torch.randn
        self._init_head()
        # target_scale also travels in the state dict: a state dict without it predates the
        # output scaling (its network output 1/mm directly; see _legacy_scale_hook)
        self.register_buffer("output_scale", torch.tensor(float(cfg.target_scale)))
        self._register_load_state_dict_pre_hook(self._legacy_scale_hook)
        if cfg.channels_last_3d:
            for m in self.modules():
                if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)):
                    m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last_3d)
                    m.register_forward_pre_hook(_channels_last_input)

    # -- helpers ------------------------------------------------------------------------
    def _init_head(self) -> None:
        """Small head weights (std ``0.5 / sqrt(fan_in)``, half PyTorch's default scale: the
        output varies by a fraction of its mean, and gradients still reach the body at
        full strength) and a bias that puts the untrained output at
        ``config.init_output_mean`` network units (about the target's mean), so training
        starts at the right scale instead of 10-20x too bright (as it did before the
        output scaling, with PyTorch's default head initialisation)."""
        cfg = self.config
        m = float(cfg.init_output_mean)
        if cfg.output_activation == "softplus":
            bias = math.log(math.expm1(m))  # softplus^-1
        elif cfg.output_activation == "sigmoid":
            bias = math.log(m / (1.0 - m))
        else:  # clamp, relu, none
            bias = m
        with torch.no_grad():
            fan_in = self.head.weight[0].numel()  # in_channels x kernel volume
            nn.init.normal_(self.head.weight, std=0.5 / math.sqrt(fan_in))
            self.head.bias.fill_(bias)

    def _legacy_scale_hook(self, state_dict, prefix, *args, **kwargs):
        """Keep ``output_scale`` equal to ``config.target_scale`` (the config is authoritative).

        A state dict without ``output_scale`` predates the output scaling (its network output
        1/mm directly); it is accepted only when the config says so too (``target_scale == 1``,
        which :meth:`PSCTNetConfig.from_dict` sets for such old configs). Otherwise the key
        stays missing, and a strict load reports it instead of silently rescaling the output
        by ``1 / target_scale`` (20x at the default 0.05).
        """
        key = prefix + "output_scale"
        if key not in state_dict and float(self.config.target_scale) != 1.0:
            return
        state_dict[key] = torch.tensor(float(self.config.target_scale))

    def head_activation(self, pre: torch.Tensor) -> torch.Tensor:
        """The output activation on the head's pre-activations (network units)."""
        act = self.config.output_activation
        if act == "clamp":  # linear while training, clamped to >= 0 for inference
            return pre if (self.training and torch.is_grad_enabled()) else pre.clamp_min(0.0)
        if act == "softplus":
            return F.softplus(pre)
        if act == "relu":
            return F.relu(pre)
        if act == "sigmoid":
            return torch.sigmoid(pre)
        return pre

    def _check_inputs(self, xrays, geometry, prior) -> list:
        """Validate the inputs; return the per-sample list of geometries."""
        cfg = self.config
        if not isinstance(xrays, torch.Tensor) or xrays.ndim not in (4, 5) or not xrays.is_floating_point():
            got = tuple(xrays.shape) if isinstance(xrays, torch.Tensor) else type(xrays).__name__
            raise ValueError(f"xrays must be a float tensor (B, V, H, W) (or (B, V, 1, H, W)), got {got}")
        if xrays.ndim == 5 and xrays.shape[2] != 1:
            raise ValueError(f"PSCT-Net takes one channel per view, got xrays of shape {tuple(xrays.shape)}")
        geoms = geometry if isinstance(geometry, (list, tuple)) else [geometry] * xrays.shape[0]
        if len(geoms) != xrays.shape[0] or not all(isinstance(g, Geometry) for g in geoms):
            raise ValueError(
                "geometry must be a tomoprior Geometry or a list of one Geometry per sample "
                f"(batch {xrays.shape[0]}), got {type(geometry).__name__}"
            )
        for g in geoms:
            if xrays.shape[1] != cfg.num_views or g.num_views != cfg.num_views:
                raise ValueError(
                    f"PSCT-Net was built for {cfg.num_views} views; got xrays with {xrays.shape[1]} and a geometry "
                    f"with {g.num_views}"
                )
            if tuple(g.grid.shape) != tuple(cfg.volume_shape):
                raise ValueError(
                    f"geometry.grid.shape {g.grid.shape} differs from the network's volume_shape "
                    f"{cfg.volume_shape}; use geometry.with_grid(geometry.grid.with_shape(volume_shape)) or build "
                    "the network for this grid"
                )
            if g.grid != geoms[0].grid:
                raise ValueError("all geometries of a batch must share one grid")
        if prior is not None:
            want = (xrays.shape[0], 1, *cfg.volume_shape)
            if not isinstance(prior, torch.Tensor) or tuple(prior.shape) != want:
                got = tuple(prior.shape) if isinstance(prior, torch.Tensor) else type(prior).__name__
                raise ValueError(f"prior must have shape {want} (B, 1, nz, ny, nx), got {got}")
        if not bool(torch.isfinite(xrays).all()):
            raise ValueError("xrays contain NaN or infinite values")
        return geoms

    def _cl(self, t: torch.Tensor) -> torch.Tensor:
        """3D activations in channels-last layout when configured (much faster CPU backward)."""
        return t.contiguous(memory_format=torch.channels_last_3d) if self.config.channels_last_3d else t

    @staticmethod
    def _scale(x: torch.Tensor) -> torch.Tensor:
        peak = x.detach().abs().flatten(1).amax(dim=1).clamp_min(1e-6)
        return x / peak.view(-1, *([1] * (x.ndim - 1)))

    def _prepare_xrays(self, xrays: torch.Tensor) -> torch.Tensor:
        """``(B, V, H, W)`` X-rays -> the 2D encoders' input ``(B, V, X, X)``: divided by their
        per-sample peak (``normalize_inputs``), resampled to ``xray_size``."""
        cfg = self.config
        x2d = self._scale(xrays) if cfg.normalize_inputs else xrays
        if x2d.shape[-2:] != (cfg.xray_size, cfg.xray_size):
            x2d = F.interpolate(
                x2d, size=(cfg.xray_size, cfg.xray_size), mode="area" if x2d.shape[-1] >= cfg.xray_size else "bilinear"
            )
        return x2d

    def discriminator_condition(self, xrays: torch.Tensor, geometry, prior: torch.Tensor | None = None):
        """What the discriminator sees besides the volume, ``(B, C, nz, ny, nx)`` (no gradient).

        ``config.disc_condition == "prior"``: the prior (``build_prior`` if None), divided by
        its per-sample peak with ``normalize_inputs``; C = 1. ``"xrays"`` (the official code's
        condition): each view's network input (:meth:`_prepare_xrays`) spread along its rays
        over the grid by the normalised back-projection through ``geometry`` (zero where the
        view does not see a voxel); C = number of views, in the order of the views.
        """
        cfg = self.config
        if xrays.ndim == 5:
            xrays = xrays[:, :, 0]
        with torch.no_grad():
            if cfg.disc_condition == "prior":
                if prior is None:
                    prior = build_prior(xrays, geometry)
                return self._scale(prior) if cfg.normalize_inputs else prior
            x2d = self._prepare_xrays(xrays)
            vols = backproject_features(x2d.unsqueeze(2), geometry, normalize=True)  # (B, V, 1, nz, ny, nx)
            return vols[:, :, 0]

    def frames(self, geometry) -> list[ViewFrame]:
        """The view frames (axis permutation and flips) of every view of ``geometry`` (or of a
        list of geometries, which must agree)."""
        geoms = geometry if isinstance(geometry, (list, tuple)) else [geometry]
        frames = [view_frame(v) for v in geoms[0].views]
        for g in geoms[1:]:
            if [view_frame(v) for v in g.views] != frames:
                raise ValueError("the geometries of a batch map their views to different CT axes; batch them apart")
        return frames

    # -- forward ------------------------------------------------------------------------
    def forward(self, xrays: torch.Tensor, geometry, prior: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruct ``(B, 1, nz, ny, nx)`` in 1/mm from ``xrays (B, V, H, W)`` (line
        integrals) and the geometry that made them; ``prior`` defaults to
        ``build_prior(xrays, geometry)``. The network itself predicts in units of
        ``config.target_scale`` (~[0, 1]); the X-rays and the prior are divided by their
        per-sample peak (``normalize_inputs``)."""
        cfg = self.config
        geoms = self._check_inputs(xrays, geometry, prior)
        if xrays.ndim == 5:
            xrays = xrays[:, :, 0]
        S = cfg.num_stages
        B = xrays.shape[0]
        frames = self.frames(geoms)
        grid = geoms[0].grid

        x2d = self._prepare_xrays(xrays)
        feats = [enc(x2d[:, v : v + 1]) for v, enc in enumerate(self.encoders2d)]  # [view][scale]

        # main 3D encoder with BP-C
        skips = []
        h = None
        if cfg.has_main_encoder:
            if cfg.use_bp_prior:
                if prior is None:
                    prior = build_prior(xrays, geometry)
                inp = self._scale(prior) if cfg.normalize_inputs else prior
            else:
                inp = xrays.new_zeros(B, 1, *cfg.volume_shape)
            h = self.stem3d(self._cl(inp))
            skips.append(h)
            for s, stage in enumerate(self.stages3d):
                if str(s) in self.bpc:
                    g = grid.with_shape(tuple(n // 2**s for n in grid.shape))
                    f = torch.stack([feats[v][s] for v in range(cfg.num_views)], dim=1)
                    h = cat_channels([h, self.bpc[str(s)](f, geometry, g, self._cl)])
                h = stage(h)
                skips.append(h)

        # view branches at the bottleneck
        grid_b = grid.with_shape(cfg.bottleneck_shape)
        views = []
        for v, lift in enumerate(self.lifts):
            fshape = frames[v].frame_shape(cfg.bottleneck_shape)
            uv = None
            if cfg.use_agp and cfg.agp_pos_encoding:
                world = frame_voxel_world(frames[v], grid_b)
                if isinstance(geometry, (list, tuple)):  # per-sample geometries: (B, Q, 2)
                    uv = torch.stack([detector_coords_of_points(g.views[v], world) for g in geoms])
                else:
                    uv = detector_coords_of_points(geometry.views[v], world)
                uv = uv.to(xrays.device)
            views.append(self._cl(lift(feats[v][-1], fshape, uv)))
        fused = self._cl(self._fuse(views, frames))

        if h is not None:
            if cfg.use_bim:
                h = self.bim(h)
            if cfg.bottleneck_view_fusion:
                b = self.bottleneck_fuse(cat_channels([h, fused]))
            else:  # official: the views meet only each other here (MV3D-C write-back)
                b = h
                views = [self._cl(fr.to_view(fused)) for fr in frames]
        else:
            b = self.bottleneck_fuse(fused)
            if cfg.use_bim:
                b = self.bim(b)

        # decoders with MV3D-C
        x = b
        for level, up in enumerate(self.decoder):
            extras = []
            if cfg.has_main_encoder and cfg.decoder_skips:
                extras.append(skips[S - 1 - level])
            if cfg.use_mv3dc:
                if cfg.view_skips:
                    j = S - 1 - level  # this level's grid is volume_shape / 2^j, the scale of f_j
                    level_shape = tuple(n // 2**j for n in cfg.volume_shape)
                    links = [
                        [self.view_skip_links[v][level](feats[v][j], frames[v].frame_shape(level_shape), self._cl)]
                        for v in range(cfg.num_views)
                    ]
                else:
                    links = [[] for _ in range(cfg.num_views)]
                views = [dec[level](g, lk) for dec, g, lk in zip(self.view_decoders, views, links)]
                avg = self._cl(self._fuse(views, frames))
                views = [self._cl(fr.to_view(avg)) for fr in frames]  # written back into every branch
                extras.append(avg)
            x = up(x, extras)
        return self.head_activation(self.head(x)) * cfg.target_scale

    def reconstruct(self, xrays: torch.Tensor, geometry, *, prior: torch.Tensor | None = None) -> torch.Tensor:
        """Inference (see :meth:`Refiner.reconstruct`); with the ``"clamp"`` head the result
        is clamped to >= 0 whatever the module's train/eval mode."""
        out = super().reconstruct(xrays, geometry, prior=prior)
        return out.clamp_min(0.0) if self.config.output_activation == "clamp" else out

    @staticmethod
    def _fuse(views: list[torch.Tensor], frames: list[ViewFrame]) -> torch.Tensor:
        """MV3D-C fusion: view-frame features -> CT axis order -> average over views."""
        return torch.stack([fr.to_ct(g) for fr, g in zip(frames, views)], dim=0).mean(dim=0)

    def num_parameters(self, trainable_only: bool = True) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
