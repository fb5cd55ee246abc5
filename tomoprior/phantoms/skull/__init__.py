"""Procedural pediatric skull phantoms: normal anatomy from 0 to 6 years and the five
craniosynostoses (sagittal, metopic, unicoronal, bicoronal, lambdoid), built from implicit
functions and rasterised on any grid; presets in the repository's ``phantoms/`` folder. The
normal skull's bone thickness, cephalic index and intracranial volume follow pediatric CT
norms by age and sex (:mod:`.norms`), measured by :func:`cranial_measures`.

>>> from tomoprior.phantoms.skull import make_skull, default_grid
>>> skull = make_skull(age_years=1.0, variant="normal", seed=0)
>>> vol = skull.rasterize(default_grid(32), supersample=1)
>>> tuple(vol.shape), vol.dtype
((32, 32, 32), torch.float32)
"""

from .growth import (
    DEFAULT_ENERGY_KEV,
    attenuation_to_hu,
    bone_thickness_mm,
    head_circumference_cm,
    hu_to_attenuation,
    linear_attenuation,
    vault_thickness_mm,
)
from .measure import cranial_measures, measure_shape_indices
from .model import DEFAULT_FOV_MM, LABELS, MATERIALS, Skull, default_grid, make_skull
from .norms import cranial_norms
from .parameters import (
    CI_RANGE,
    DEFAULT_CEPHALIC_INDEX,
    SEXES,
    SIDES,
    SUTURES,
    VARIANTS,
    SkullParameters,
    fused_sutures,
)
from .presets import PRESET_SCHEMA, available_presets, load_preset, preset_parameters, save_preset

__all__ = [
    "CI_RANGE",
    "DEFAULT_CEPHALIC_INDEX",
    "DEFAULT_ENERGY_KEV",
    "DEFAULT_FOV_MM",
    "LABELS",
    "MATERIALS",
    "PRESET_SCHEMA",
    "SEXES",
    "SIDES",
    "SUTURES",
    "VARIANTS",
    "Skull",
    "SkullParameters",
    "attenuation_to_hu",
    "available_presets",
    "bone_thickness_mm",
    "cranial_measures",
    "cranial_norms",
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
