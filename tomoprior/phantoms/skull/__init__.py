"""Procedural pediatric skull phantoms: normal anatomy from 0 to 6 years and the five
craniosynostoses (sagittal, metopic, unicoronal, bicoronal, lambdoid), built from implicit
functions and rasterised on any grid; presets in the repository's ``phantoms/`` folder.

>>> from tomoprior.phantoms.skull import make_skull, default_grid
>>> skull = make_skull(age_years=1.0, variant="normal", seed=0)
>>> vol = skull.rasterize(default_grid(32), supersample=1)
>>> tuple(vol.shape), vol.dtype
((32, 32, 32), torch.float32)
"""

from .growth import (
    DEFAULT_ENERGY_KEV,
    attenuation_to_hu,
    head_circumference_cm,
    hu_to_attenuation,
    linear_attenuation,
    vault_thickness_mm,
)
from .measure import measure_shape_indices
from .model import DEFAULT_FOV_MM, LABELS, MATERIALS, Skull, default_grid, make_skull
from .parameters import CI_RANGE, DEFAULT_CEPHALIC_INDEX, SIDES, SUTURES, VARIANTS, SkullParameters, fused_sutures
from .presets import PRESET_SCHEMA, available_presets, load_preset, preset_parameters, save_preset

__all__ = [
    "CI_RANGE",
    "DEFAULT_CEPHALIC_INDEX",
    "DEFAULT_ENERGY_KEV",
    "DEFAULT_FOV_MM",
    "LABELS",
    "MATERIALS",
    "PRESET_SCHEMA",
    "SIDES",
    "SUTURES",
    "VARIANTS",
    "Skull",
    "SkullParameters",
    "attenuation_to_hu",
    "available_presets",
    "default_grid",
    "fused_sutures",
    "head_circumference_cm",
    "hu_to_attenuation",
    "linear_attenuation",
    "load_preset",
    "make_skull",
    "measure_shape_indices",
    "preset_parameters",
    "save_preset",
    "vault_thickness_mm",
]
