"""Reconstruction metrics: PSNR (volume or slice-averaged, with named data-range conventions),
3D and slice-wise SSIM, MAE, bone Dice, bone surface distances in mm (ASSD, HD95) and
projection consistency; the same quantities computed exactly as the public PSCT-Net evaluation
does (``official_*``, :mod:`.official`). Inputs are torch tensors or numpy arrays ``(nz, ny, nx)``."""

from .bone import DEFAULT_BONE_THRESHOLD_MU, assd, bone_mask, dice, hd95, surface_distances
from .intensity import DATA_RANGES, PSNR_MAX_PSCTNET, PSNR_MAX_X2CTGAN, mae, psnr, resolve_data_range, ssim
from .official import (
    EMPTY_SLICE_PSNR_DB,
    OFFICIAL_PEAK,
    official_cosine_similarity,
    official_mae,
    official_mse,
    official_psnr_3d,
    official_scores,
    official_slice_psnr,
    official_ssim,
)
from .projection import projection_consistency

__all__ = [
    "DATA_RANGES",
    "DEFAULT_BONE_THRESHOLD_MU",
    "EMPTY_SLICE_PSNR_DB",
    "OFFICIAL_PEAK",
    "PSNR_MAX_PSCTNET",
    "PSNR_MAX_X2CTGAN",
    "assd",
    "bone_mask",
    "dice",
    "hd95",
    "mae",
    "official_cosine_similarity",
    "official_mae",
    "official_mse",
    "official_psnr_3d",
    "official_scores",
    "official_slice_psnr",
    "official_ssim",
    "projection_consistency",
    "psnr",
    "resolve_data_range",
    "ssim",
    "surface_distances",
]
