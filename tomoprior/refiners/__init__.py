"""Refiners: the :class:`Refiner` contract, the registry over the ``tomoprior.refiners``
entry points (plus the built-ins ``bp-prior`` and ``atlas``), and the geometry prior handed to refiners
(X-rays or 2D feature maps lifted into the volume through the exact geometry, normalised
by ray coverage), and the training hooks a plugin may provide. Training, evaluation and the
miscalibration study use this contract from :mod:`tomoprior.studies`. See ``docs/refiners.md``.

    from tomoprior import refiners
    refiners.available_refiners()               # ['atlas', 'bp-prior', 'psctnet', ...]
    model = refiners.load("bp-prior")
    prior = refiners.build_prior(xrays, geom)   # (B, 1, nz, ny, nx)
    volume = model(xrays, geom, prior)          # (B, 1, nz, ny, nx)
"""

from .atlas import Atlas, AtlasConfig
from .base import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    CheckpointError,
    CheckpointWarning,
    ConfigTypeError,
    Refiner,
    RefinerConfig,
    check_config_types,
    check_finite_weights,
    config_sha256,
    read_checkpoint,
    resolve_device,
    seal_checkpoint,
    upgrade_checkpoint,
    verify_zip_records,
    weights_sha256,
    write_checkpoint,
)
from .bp_prior import BPPrior, BPPriorConfig
from .consistency import ConsistencyReport, check_prior_consistency
from .hooks import Batch, StepContext, TrainingHooks, find_hooks
from .prior import GeometryPrior, backproject_features, build_prior, fuse_views, ray_chord_lengths
from .registry import (
    ENTRY_POINT_GROUP,
    RefinerPluginError,
    available_refiners,
    get_class,
    load,
    register,
    unregister,
)
from .registry import available as available  # deprecated alias of available_refiners

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "ENTRY_POINT_GROUP",
    "Atlas",
    "AtlasConfig",
    "BPPrior",
    "BPPriorConfig",
    "Batch",
    "CheckpointError",
    "CheckpointWarning",
    "ConfigTypeError",
    "ConsistencyReport",
    "GeometryPrior",
    "Refiner",
    "RefinerConfig",
    "RefinerPluginError",
    "StepContext",
    "TrainingHooks",
    "available_refiners",
    "backproject_features",
    "build_prior",
    "check_config_types",
    "check_finite_weights",
    "check_prior_consistency",
    "config_sha256",
    "find_hooks",
    "fuse_views",
    "get_class",
    "load",
    "ray_chord_lengths",
    "read_checkpoint",
    "register",
    "resolve_device",
    "seal_checkpoint",
    "unregister",
    "upgrade_checkpoint",
    "verify_zip_records",
    "weights_sha256",
    "write_checkpoint",
]
