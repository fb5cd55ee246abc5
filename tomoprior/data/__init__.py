"""Data: volumes from NIfTI / DICOM CT (HU -> attenuation), DRR synthesis with calibration-
error and intensity augmentation and optional realism (head pose and motion, and radiograph
physics through ``tomoprior.physics``), the HDF5 dataset format, a lazy torch ``Dataset`` and
parallel (process pool or Dask) synthetic dataset generation, and the shipped real head CTs
(:func:`real_ct`, :func:`real_cts`). The HU conversions are those of :mod:`tomoprior.units`,
re-exported."""

from ..units import DEFAULT_ENERGY_KEV, hu_to_mu, mu_to_hu, mu_water
from .dataset import TomopriorDataset, assign_splits
from .drr import DRRResult, GeometryPerturbation, IntensityAugmentation, check_views_see_volume, synthesize
from .h5 import SCHEMA, SCHEMA_VERSION, DatasetFile, DatasetFormatError, DatasetWriter, Sample, merge
from .real import REAL_CT_DIR, real_ct, real_cts
from .realism import PoseJitter, Realism
from .synthetic import SampleSpec, generate, generate_dask, generate_sample, make_specs, sample_seed
from .volumes import (
    STORED_HU_OFFSET,
    Volume,
    VolumeWarning,
    detect_hu_offset,
    load_dicom_series,
    load_nifti,
    read_nifti,
    save_nifti,
    volume_from_affine,
)

__all__ = [
    "DEFAULT_ENERGY_KEV",
    "REAL_CT_DIR",
    "SCHEMA",
    "SCHEMA_VERSION",
    "STORED_HU_OFFSET",
    "DRRResult",
    "DatasetFile",
    "DatasetFormatError",
    "DatasetWriter",
    "GeometryPerturbation",
    "IntensityAugmentation",
    "PoseJitter",
    "Realism",
    "Sample",
    "SampleSpec",
    "TomopriorDataset",
    "Volume",
    "VolumeWarning",
    "assign_splits",
    "check_views_see_volume",
    "detect_hu_offset",
    "generate",
    "generate_dask",
    "generate_sample",
    "hu_to_mu",
    "load_dicom_series",
    "load_nifti",
    "make_specs",
    "merge",
    "mu_to_hu",
    "mu_water",
    "read_nifti",
    "real_ct",
    "real_cts",
    "sample_seed",
    "save_nifti",
    "synthesize",
    "volume_from_affine",
]
