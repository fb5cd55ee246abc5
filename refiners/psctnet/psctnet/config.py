"""One dataclass for every PSCT-Net hyper-parameter, and the size presets.

``tiny`` trains on a CPU at 64^3 in minutes; ``paper`` follows the widths of PSCT-Net
(arXiv 2606.19867) at 128^3; ``official`` follows the authors' public code wherever it
differs from our paper-derived defaults (the table in docs/refiners.md). Every module reads
its widths and flags from here, so an ablation is a config change (``PSCTNetConfig.preset("tiny", use_bim=False)``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from tomoprior.refiners.base import check_config_types
from tomoprior.units import BONE_THRESHOLD_MU

_NORMS = ("batch", "instance", "group")
_OUTPUT_ACTIVATIONS = ("clamp", "softplus", "relu", "sigmoid", "none")
_PROJ_MODES = ("drr", "axis_mean")
_MAMBA_BACKENDS = ("auto", "mambapy", "mamba_ssm")
_BPC_WIDTH_RULES = ("features", "half_stage")
_BIM_ACTIVATIONS = ("gelu", "silu")
_WEIGHT_INITS = ("default", "normal")
_DISC_CONDITIONS = ("prior", "xrays")
#: fields of the output scaling (a complete config dict without them predates it: such a network
#: predicted attenuation in 1/mm directly)
_SCALE_FIELDS = frozenset({"target_scale", "init_output_mean"})
#: fields added after the output scaling (absent from older checkpoints; their defaults are the old behaviour)
_LATER_FIELDS = frozenset({
    "w_bone", "bone_threshold",
    # the switches of the ``official`` preset (their defaults are the earlier architecture)
    "stage_dense_layers", "dense_bottleneck", "bpc_width_rule", "agp_attn_dropout", "agp_residual_norm",
    "bim_dropout", "bim_ffn_activation", "bottleneck_view_fusion", "view_skips", "decoder_skips", "head_kernel",
    "weight_init", "disc_condition", "widen_in_transition", "upsample_kernel", "view_decoder_convs",
})


@dataclass
class PSCTNetConfig:
    """PSCT-Net hyper-parameters (network, ablation flags, loss weights).

    Shapes: a network built for ``volume_shape = (nz, ny, nx)`` reconstructs exactly that
    grid; each side must be divisible by ``2 ** len(enc3d_widths)`` (the number of stride-2
    3D stages) and ``xray_size`` by ``2 ** len(enc2d_widths)``. The X-rays are resampled to
    ``xray_size x xray_size`` whatever the detector shape (features always cover the whole
    detector, so back-projection through the geometry stays exact).

    Parameters (widths are channel counts)
    ----------
    volume_shape : (nz, ny, nx)
        Output grid; must equal ``geometry.grid.shape`` at run time.
    xray_size : int
        Side in pixels the X-rays are resampled to before the 2D encoders.
    num_views : int
        Number of X-ray views (2 for PSCT-Net: frontal and lateral).
    stem3d_width, enc3d_widths
        Main 3D encoder: a ``7^3`` stem convolution to ``stem3d_width`` channels at full
        resolution, then one stride-2 stage (with a dense block) per entry.
    stem2d_width, enc2d_widths
        Per-view 2D encoders: a ``7^2`` stem, then one stride-2 dense stage per entry.
        Must have as many stages as the 3D encoder (BP-C pairs stage ``s`` of both).
    dense_layers, growth
        Layers per dense block and channels each adds.
    stage_dense_layers : tuple of int or None
        Layers of the dense block of each stage (one entry per stage, used by the 2D and the
        3D encoders alike) instead of ``dense_layers`` everywhere. The official code uses
        DenseNet-121's (6, 12, 24, 16, 6) with growth 32.
    dense_bottleneck : int
        0 (default): a dense layer is ``norm -> ReLU -> 3-conv``. ``k > 0``: DenseNet-BC
        layers ``norm -> ReLU -> 1-conv to k * growth -> norm -> ReLU -> 3-conv`` (official: 4).
    widen_in_transition : bool
        False (default): a stage's stride-2 convolution maps to the stage's width and the
        dense block works at that width. True (official, DenseNet style): the stride-2
        convolution keeps the incoming width, the dense block grows from it and its 1x1
        transition maps to the stage's width (fewer parameters in widening 2D stages).
    dec_widths : tuple or None
        Main decoder widths per up-sampling level (bottleneck side first). Default: the
        encoder widths mirrored, ending at ``stem3d_width``.
    view_widths : tuple or None
        Per-view 3D decoder widths per level (used by MV3D-C). Default: the main decoder
        widths divided by ``view_width_divisor`` (at least 8: PyTorch's CPU 3D convolution
        falls back to a ~7x slower kernel below 8 channels).
    norm : {"batch", "instance", "group"}
        Normalisation in every conv block (the paper uses batch norm).
    use_bp_prior : bool
        Feed the back-projected prior to the main 3D encoder (else it sees zeros).
    use_bpc : bool
        BP-C: back-project each view's 2D features into each stage in ``bpc_stages``.
    bpc_stages : tuple of int or None
        3D stages preceded by a BP-C connection (default: the first four, as the paper's
        "before stages 1-4"; all stages when there are four or fewer).
    bpc_width : int or None
        Channels BP-C adds before a stage (default: set by ``bpc_width_rule``).
    bpc_width_rule : {"features", "half_stage"}
        Width of BP-C when ``bpc_width`` is None: ``"features"`` that stage's 2D feature
        width; ``"half_stage"`` half the output width of the 3D stage it feeds (the official
        code's ``bp_avg_linker``).
    use_agp, agp_dim, agp_heads, agp_dropout, agp_pos_encoding, agp_pos_frequencies
        AGP-3D: per view, learned voxel queries (one per bottleneck voxel) cross-attend to
        the 2D bottleneck tokens (Linear -> dropout -> ReLU to ``agp_dim``); optional
        positional encodings from where each token and each query voxel fall on the
        detector. Without AGP, each view's bottleneck is lifted X2CT-GAN-style (1x1
        convolution, broadcast along the view's depth axis).
    agp_attn_dropout : float or None
        Dropout on the attention weights of AGP-3D (None: ``agp_dropout``; official 0).
    agp_residual_norm : bool
        Add the queries back to the attention output and LayerNorm the sum (default); the
        official ``Project2Dto3D`` returns the bare attention output.
    use_bim, bim_d_state, bim_d_conv, bim_expand, bim_ffn_ratio, bim_interslice, mamba_backend
        BiM-3D on the main bottleneck: ``x + BiSSM(LN(x))`` then ``x + FFN(LN(x))``; the
        BiSSM is one shared Mamba run forward and on the flipped sequence.
        ``bim_interslice`` adds a third (SegMamba-style) scan with the slice axis fastest.
        ``mamba_backend``: ``"auto"`` uses ``mamba_ssm`` when importable and CUDA is
        available at construction, else ``mambapy`` (same parameter names and shapes).
    bim_dropout, bim_ffn_activation
        Dropout after each linear layer of the BiM-3D FFN (default 0: none; official 0.5)
        and its activation (``"gelu"``, default, or the official ``"silu"``).
    use_mv3dc : bool
        MV3D-C: per-view 3D decoders whose features are permuted into CT axis order,
        averaged, written back and concatenated to the main decoder at every level. Off:
        the lifted view features join the main branch at the bottleneck only.
    bottleneck_view_fusion : bool
        True (default): the view features, averaged in CT order, are concatenated to the
        main bottleneck (1x1x1 fusion convolution). False (official): the main decoder starts
        from the main encoder's bottleneck alone and the views reach it through MV3D-C only;
        the bottleneck average is written back into every view branch instead. Needs the
        main encoder and MV3D-C.
    view_skips : bool
        X2CT-GAN-style skip links into every per-view 3D decoder level (official): the view's
        2D encoder features of the same scale, ``1^2 conv -> norm -> ReLU``, repeated along
        the view's depth axis, ``3^3 conv -> norm -> ReLU``, concatenated. Default off.
    decoder_skips : bool
        U-Net skips from the main 3D encoder into the main decoder (default). The official
        main decoder has none: it sees only the MV3D-C view averages.
    head_kernel : int
        Kernel side of the output convolution (odd; default 1, official 7).
    upsample_kernel : int
        Kernel side of the stride-2 transposed convolutions of every decoder (default 2,
        non-overlapping; official 3, with padding 1 and output padding 1).
    view_decoder_convs : int
        3-conv blocks per level of the per-view decoders (default 2; official 3: its
        "compress" convolution after the skip concatenation plus two).
    weight_init : {"default", "normal"}
        ``"default"``: PyTorch's initialisation. ``"normal"`` (official, pix2pix style): every
        convolution and linear weight N(0, 0.02) and bias 0 (also inside Mamba and in the
        discriminator), BatchNorm2d weights N(1, 0.02), AGP queries N(0, 1). The output head
        keeps its own initialisation either way (``init_output_mean``).
    output_activation : {"clamp", "softplus", "relu", "sigmoid", "none"}
        Applied to the head in network units (before ``target_scale``). Default
        ``"clamp"``: linear while training (every voxel passes its L1 and projection
        gradient: the head cannot die, as the ReLU head of an early 10-epoch run did with
        99.6 % of its inputs negative) and clamped to >= 0 for inference (eval mode, or
        no autograd, or :meth:`PSCTNet.reconstruct`; attenuation is non-negative).
        ``"softplus"`` is non-negative in training too but learns the empty background
        slowly (outputs near 0 need pre-activations far below 0: on one 32^3 skull, L1
        0.0036 /mm after 41 Adam steps at 1e-3, against 0.0011 after 30 with ``"clamp"``;
        all-zero 0.0027). ``"none"`` is linear in eval mode too.
    target_scale : float
        Attenuation in 1/mm per network unit: ``forward`` returns ``target_scale * head``,
        so the network works in ~[0, 1] while its output is in physical units (1/mm).
        Default 0.05 /mm, about the peak linear attenuation of cortical bone of the
        synthetic skulls (``tomoprior dataset make``: max ~0.053 /mm). Stored in the config,
        hence in every checkpoint. The losses (L1, projection, discriminator input) are
        computed in network units (volumes divided by ``target_scale``), so the paper's loss
        weights keep their balance for a [0, 1]-scaled target.
    init_output_mean : float
        Initial mean output in network units (the head's bias is set so that the untrained
        network outputs about this; its weights are drawn small). Default 0.05: the mean of
        a skull volume over a head-sized grid is a few percent of the bone peak.
    normalize_inputs : bool
        Divide each sample's X-rays and prior by their own maximum (scale invariance).
    channels_last_3d : bool
        Keep 3D activations and weights channels-last (about 10x faster 3D convolution
        backward passes on CPU at 64^3; results are the same up to float rounding).
    disc_width, disc_layers : int
        Conditional 3D PatchGAN discriminator width and number of stride-2 layers.
    disc_condition : {"prior", "xrays"}
        What the discriminator is conditioned on besides the volume: ``"prior"`` (default)
        the normalised geometry prior, 1 channel; ``"xrays"`` (official) every normalised
        X-ray spread along its rays over the grid (the per-view normalised back-projection,
        which for the official parallel, co-extensive set-up is the image repeated along
        the view's depth axis), one channel per view.
    w_adv, w_rec, w_proj : float
        Generator loss weights (LSGAN adversarial, L1 reconstruction, projection).
    w_bone, bone_threshold
        Optional bone term (not in the paper; default off): ``w_bone`` times the L1 error
        averaged over the target's bone voxels only (``target > bone_threshold``, 1/mm;
        default 0.035 /mm, the evaluation's bone threshold). Bone fills ~2 % of a 64^3 head
        grid, so the plain L1 barely sees it and a short CPU training learns blurred,
        under-bright bone; ``w_bone = 2`` weighs a bone voxel about 10x an average one.
    proj_mode : {"drr", "axis_mean"}
        ``"drr"``: L1 between ``tomoprior.project`` of output and target through the
        geometry (true DRR consistency, divided by the grid's largest extent in mm so it is
        in volume units). ``"axis_mean"``: the paper's L1 between means along the 3 axes.
    lr, betas, weight_decay
        Adam settings for :func:`psctnet.train.train_step` (paper: 2e-4, (0.5, 0.99)).
    """

    volume_shape: tuple[int, int, int] = (64, 64, 64)
    xray_size: int = 64
    num_views: int = 2
    stem3d_width: int = 8
    enc3d_widths: tuple[int, ...] = (8, 16, 32, 64)
    stem2d_width: int = 8
    enc2d_widths: tuple[int, ...] = (8, 16, 32, 64)
    dense_layers: int = 2
    growth: int = 8
    stage_dense_layers: tuple[int, ...] | None = None
    dense_bottleneck: int = 0
    widen_in_transition: bool = False
    dec_widths: tuple[int, ...] | None = None
    view_widths: tuple[int, ...] | None = None
    view_width_divisor: int = 1
    norm: str = "group"
    # BP prior and BP-C
    use_bp_prior: bool = True
    use_bpc: bool = True
    bpc_stages: tuple[int, ...] | None = None
    bpc_width: int | None = None
    bpc_width_rule: str = "features"
    # AGP-3D
    use_agp: bool = True
    agp_dim: int = 64
    agp_heads: int = 4
    agp_dropout: float = 0.1
    agp_pos_encoding: bool = True
    agp_pos_frequencies: int = 4
    agp_attn_dropout: float | None = None
    agp_residual_norm: bool = True
    # BiM-3D
    use_bim: bool = True
    bim_d_state: int = 16
    bim_d_conv: int = 4
    bim_expand: int = 2
    bim_ffn_ratio: int = 2
    bim_interslice: bool = False
    mamba_backend: str = "auto"
    bim_dropout: float = 0.0
    bim_ffn_activation: str = "gelu"
    # MV3D-C and decoders
    use_mv3dc: bool = True
    bottleneck_view_fusion: bool = True
    view_skips: bool = False
    decoder_skips: bool = True
    head_kernel: int = 1
    upsample_kernel: int = 2
    view_decoder_convs: int = 2
    weight_init: str = "default"
    # output and input scaling
    output_activation: str = "clamp"
    target_scale: float = 0.05
    init_output_mean: float = 0.05
    normalize_inputs: bool = True
    channels_last_3d: bool = True
    # discriminator
    disc_width: int = 16
    disc_layers: int = 3
    disc_condition: str = "prior"
    # losses
    w_adv: float = 0.1
    w_rec: float = 10.0
    w_proj: float = 10.0
    w_bone: float = 0.0
    bone_threshold: float = BONE_THRESHOLD_MU
    proj_mode: str = "drr"
    # optimiser
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.99)
    weight_decay: float = 0.0
    # name of the preset it came from (informational)
    preset_name: str | None = field(default=None)

    def __post_init__(self):
        # JSON/YAML round trips turn tuples into lists: accept them
        for name in (
            "volume_shape",
            "enc3d_widths",
            "enc2d_widths",
            "dec_widths",
            "view_widths",
            "bpc_stages",
            "stage_dense_layers",
            "betas",
        ):
            value = getattr(self, name)
            if isinstance(value, list):
                setattr(self, name, tuple(value))
        # types first (use_bim='banana' must not be taken as True), then values
        check_config_types(self)
        self._validate()

    # -- validation ---------------------------------------------------------------------
    def _validate(self) -> None:
        def pos_int(name):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"PSCTNetConfig.{name} must be a positive integer, got {v!r}")

        def int_tuple(name, length=None, allow_none=False):
            v = getattr(self, name)
            if v is None and allow_none:
                return
            if (
                not isinstance(v, tuple)
                or not v
                or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v)
            ):
                raise ValueError(f"PSCTNetConfig.{name} must be a non-empty tuple of positive integers, got {v!r}")
            if length is not None and len(v) != length:
                raise ValueError(f"PSCTNetConfig.{name} must have {length} entries, got {len(v)} ({v!r})")

        for name in (
            "xray_size",
            "num_views",
            "stem3d_width",
            "stem2d_width",
            "dense_layers",
            "growth",
            "agp_dim",
            "agp_heads",
            "agp_pos_frequencies",
            "view_width_divisor",
            "bim_d_state",
            "bim_d_conv",
            "bim_expand",
            "bim_ffn_ratio",
            "disc_width",
            "disc_layers",
            "view_decoder_convs",
        ):
            pos_int(name)
        if isinstance(self.upsample_kernel, bool) or self.upsample_kernel < 2:
            raise ValueError(f"PSCTNetConfig.upsample_kernel must be an integer >= 2 (2 or the official 3), "
                             f"got {self.upsample_kernel!r}")
        int_tuple("volume_shape", 3)
        int_tuple("enc3d_widths")
        stages = len(self.enc3d_widths)
        int_tuple("enc2d_widths", stages)
        int_tuple("dec_widths", stages, allow_none=True)
        int_tuple("view_widths", stages, allow_none=True)
        int_tuple("stage_dense_layers", stages, allow_none=True)
        factor = 2**stages
        if any(n % factor for n in self.volume_shape):
            raise ValueError(
                f"PSCTNetConfig.volume_shape {self.volume_shape} must be divisible by 2**{stages} = {factor} "
                "(one halving per entry of enc3d_widths); use a grid like "
                f"{tuple(factor * max(1, n // factor) for n in self.volume_shape)} "
                "or fewer stages"
            )
        if self.xray_size % factor:
            raise ValueError(f"PSCTNetConfig.xray_size {self.xray_size} must be divisible by 2**{stages} = {factor}")
        if self.bpc_stages is not None:
            if not isinstance(self.bpc_stages, tuple) or not all(
                isinstance(s, int) and not isinstance(s, bool) and 0 <= s < stages for s in self.bpc_stages
            ):
                raise ValueError(
                    f"PSCTNetConfig.bpc_stages must be a tuple of stage indices in 0..{stages - 1}, "
                    f"got {self.bpc_stages!r}"
                )
        if self.bpc_width is not None:
            pos_int("bpc_width")
        if isinstance(self.dense_bottleneck, bool) or self.dense_bottleneck < 0:
            raise ValueError(f"PSCTNetConfig.dense_bottleneck must be 0 (off) or a positive integer, "
                             f"got {self.dense_bottleneck!r}")
        if isinstance(self.head_kernel, bool) or self.head_kernel < 1 or self.head_kernel % 2 == 0:
            raise ValueError(f"PSCTNetConfig.head_kernel must be an odd positive integer (1, 3, 5, 7, ...), "
                             f"got {self.head_kernel!r}")
        if self.use_bpc and self.bpc_width is None and self.bpc_width_rule == "half_stage":
            narrow = [s for s in self.resolved_bpc_stages if self.enc3d_widths[s] < 2]
            if narrow:
                raise ValueError(f"PSCTNetConfig.bpc_width_rule 'half_stage' needs enc3d_widths >= 2 at the BP-C "
                                 f"stages, got {self.enc3d_widths!r}")
        if not self.bottleneck_view_fusion and not (self.has_main_encoder and self.use_mv3dc):
            raise ValueError(
                "PSCTNetConfig.bottleneck_view_fusion=False leaves the views only the MV3D-C path into the main "
                "decoder, which needs use_mv3dc=True and a main 3D encoder (use_bp_prior or use_bpc); "
                f"got use_mv3dc={self.use_mv3dc}, use_bp_prior={self.use_bp_prior}, use_bpc={self.use_bpc}"
            )
        if self.agp_dim % self.agp_heads:
            raise ValueError(
                f"PSCTNetConfig.agp_dim ({self.agp_dim}) must be divisible by agp_heads ({self.agp_heads})"
            )
        for name in ("agp_dropout", "agp_attn_dropout", "bim_dropout"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= v < 1.0:
                raise ValueError(f"PSCTNetConfig.{name} must be in [0, 1), got {v!r}")
        for name, allowed in (
            ("norm", _NORMS),
            ("output_activation", _OUTPUT_ACTIVATIONS),
            ("proj_mode", _PROJ_MODES),
            ("mamba_backend", _MAMBA_BACKENDS),
            ("bpc_width_rule", _BPC_WIDTH_RULES),
            ("bim_ffn_activation", _BIM_ACTIVATIONS),
            ("weight_init", _WEIGHT_INITS),
            ("disc_condition", _DISC_CONDITIONS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"PSCTNetConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("target_scale", "init_output_mean"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v < float("inf"):
                raise ValueError(f"PSCTNetConfig.{name} must be a finite number > 0, got {v!r}")
        if self.output_activation == "sigmoid" and not self.init_output_mean < 1:
            raise ValueError(
                f"PSCTNetConfig.init_output_mean must be < 1 with a sigmoid output, got {self.init_output_mean!r}"
            )
        if not 0 < self.bone_threshold < math.inf:
            raise ValueError(f"PSCTNetConfig.bone_threshold must be a finite number > 0 (1/mm), "
                             f"got {self.bone_threshold!r}")
        for name in ("w_adv", "w_rec", "w_proj", "w_bone", "lr", "weight_decay"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v >= 0 or v == float("inf"):
                raise ValueError(f"PSCTNetConfig.{name} must be a finite number >= 0, got {v!r}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"PSCTNetConfig.betas must be two numbers in [0, 1), got {self.betas!r}")

    # -- derived ------------------------------------------------------------------------
    @property
    def num_stages(self) -> int:
        return len(self.enc3d_widths)

    @property
    def bottleneck_shape(self) -> tuple[int, int, int]:
        """3D bottleneck grid ``volume_shape / 2**num_stages``."""
        f = 2**self.num_stages
        return tuple(n // f for n in self.volume_shape)  # type: ignore[return-value]

    @property
    def resolved_dec_widths(self) -> tuple[int, ...]:
        if self.dec_widths is not None:
            return self.dec_widths
        return (*reversed(self.enc3d_widths[:-1]), self.stem3d_width)

    @property
    def resolved_view_widths(self) -> tuple[int, ...]:
        if self.view_widths is not None:
            return self.view_widths
        return tuple(max(8, w // self.view_width_divisor) for w in self.resolved_dec_widths)

    @property
    def resolved_bpc_stages(self) -> tuple[int, ...]:
        if not self.use_bpc:
            return ()
        if self.bpc_stages is not None:
            return tuple(sorted(set(self.bpc_stages)))
        return tuple(range(min(self.num_stages, 4)))

    def resolved_bpc_width(self, stage: int, feature_width: int) -> int:
        """Channels BP-C adds before 3D stage ``stage`` whose 2D features have ``feature_width``."""
        if self.bpc_width is not None:
            return self.bpc_width
        if self.bpc_width_rule == "half_stage":
            return self.enc3d_widths[stage] // 2
        return feature_width

    def stage_layers(self, stage: int) -> int:
        """Dense layers of encoder stage ``stage`` (2D and 3D)."""
        return self.dense_layers if self.stage_dense_layers is None else self.stage_dense_layers[stage]

    @property
    def disc_condition_channels(self) -> int:
        """Channels of the discriminator's condition (besides the volume's one)."""
        return 1 if self.disc_condition == "prior" else self.num_views

    @property
    def has_main_encoder(self) -> bool:
        """The main 3D encoder exists when it has something geometric to encode."""
        return self.use_bp_prior or self.use_bpc

    # -- presets and serialisation ------------------------------------------------------
    @classmethod
    def preset(cls, name: str, **overrides) -> PSCTNetConfig:
        """A named preset (``"tiny"``, ``"paper"`` or ``"official"``) with optional field overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown PSCT-Net preset {name!r}; choose one of {sorted(PRESETS)}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(f"unknown PSCTNetConfig field(s) {unknown}; valid fields: {sorted(fields)}")
        values = dict(PRESETS[name])
        values.update(overrides)
        values.setdefault("preset_name", name)
        return cls(**values)

    def replace(self, **changes) -> PSCTNetConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PSCTNetConfig:
        """A config from :meth:`to_dict` output (lists for tuples accepted). A complete dict
        saved before ``target_scale`` existed gets ``target_scale = 1`` (its network output
        1/mm directly)."""
        if not isinstance(d, dict):
            raise ValueError(f"a PSCTNetConfig dict is needed, got {type(d).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(f"unknown PSCTNetConfig field(s) {unknown} in the dict")
        if "target_scale" not in d and set(d) >= fields - _SCALE_FIELDS - _LATER_FIELDS:
            # a complete config saved before target_scale existed: its network output 1/mm
            # directly, so keep that meaning (the head's init does not matter for saved weights)
            d = {**d, "target_scale": 1.0}
        return cls(**d)


#: Presets. ``tiny``: base width 8, 4 stages, 64^3 volume, 64^2 X-rays (CPU, minutes).
#: ``paper``: 128^3, 7^3 stem then 5 stride-2 dense stages 16 -> 256 channels (128^3 -> 4^3),
#: 2D encoders of the same depth (128^2 -> 4^2 = 16 tokens), AGP 256-d / 8 heads / 64 queries,
#: BiM d_state 16, d_conv 4, expand 2, batch norm, BP-C before stages 1-4.
#: ``official``: the authors' public code where it differs from the paper-derived defaults
#: (no encoder skips in the main decoder, a 7^3 head, X2CT-GAN view decoders with skip links,
#: BP-C before 3D stages 1-4 from 2D stages 0-3, the X-rays as discriminator condition, ...).
PRESETS: dict[str, dict] = {
    "tiny": dict(
        volume_shape=(64, 64, 64),
        xray_size=64,
        stem3d_width=8,
        enc3d_widths=(8, 16, 32, 64),
        stem2d_width=8,
        enc2d_widths=(8, 16, 32, 64),
        dense_layers=2,
        growth=8,
        norm="group",
        view_width_divisor=2,
        agp_dim=64,
        agp_heads=4,
        disc_width=8,
        disc_layers=3,
    ),
    "paper": dict(
        volume_shape=(128, 128, 128),
        xray_size=128,
        stem3d_width=16,
        enc3d_widths=(16, 32, 64, 128, 256),
        stem2d_width=32,
        enc2d_widths=(64, 128, 256, 512, 704),
        dense_layers=4,
        growth=16,
        norm="batch",
        agp_dim=256,
        agp_heads=8,
        agp_pos_encoding=False,
        bim_d_state=16,
        bim_d_conv=4,
        bim_expand=2,
        disc_width=64,
        disc_layers=3,
    ),
    "official": dict(
        # the architecture and training of the authors' public code (GitHub DYDevelop/PSCT-Net:
        # lib/model/nets/generator/X2CT_BP.py, class X2CT_BP with the two UNetLike_DownStep5 view
        # models; experiment/multiview2500/d2_multiview2500_BP.yml), wherever it differs from the
        # paper-derived defaults; docs/refiners.md lists every item with its source
        volume_shape=(128, 128, 128),
        xray_size=128,
        stem3d_width=16,
        enc3d_widths=(16, 32, 64, 128, 256),
        stem2d_width=64,
        enc2d_widths=(128, 256, 512, 512, 704),
        stage_dense_layers=(6, 12, 24, 16, 6),
        dense_layers=6,
        growth=32,
        dense_bottleneck=4,
        widen_in_transition=True,
        norm="batch",
        bpc_stages=(1, 2, 3, 4),
        bpc_width_rule="half_stage",
        agp_dim=256,
        agp_heads=8,
        agp_dropout=0.5,
        agp_attn_dropout=0.0,
        agp_residual_norm=False,
        agp_pos_encoding=False,
        bim_d_state=16,
        bim_d_conv=4,
        bim_expand=2,
        bim_ffn_ratio=2,
        bim_dropout=0.5,
        bim_ffn_activation="silu",
        bottleneck_view_fusion=False,
        view_skips=True,
        decoder_skips=False,
        head_kernel=7,
        upsample_kernel=3,
        view_decoder_convs=3,
        output_activation="relu",
        weight_init="normal",
        disc_width=64,
        disc_layers=3,
        disc_condition="xrays",
        w_adv=0.1,
        w_rec=10.0,
        w_proj=10.0,
        proj_mode="axis_mean",
        lr=2e-4,
        betas=(0.5, 0.99),
        weight_decay=0.0,
    ),
}
