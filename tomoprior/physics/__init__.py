"""Physics: X-ray spectra (SpekPy), attenuation data (the shipped NIST/xraylib table of
:mod:`tomoprior.units`, re-exported here), mono- and polychromatic Beer-Lambert, the anode
heel effect, photon noise, focal-spot and detector blur, flat-field and log correction, and
:func:`radiograph`, which turns a volume or an analytic phantom into a realistic raw image
(its acquisition in one :class:`RadiographSettings`, object scatter by :class:`ScatterModel`).
Sits above ``projectors`` and below ``data``.

Units: mm, keV, linear attenuation in 1/mm, angles in degrees at this API (anode angle).
"""

from ..units import (
    ENERGY_RANGE_KEV,
    MaterialData,
    linear_attenuation,
    mass_attenuation,
    mass_energy_absorption,
    material,
    materials,
    table_source,
)
from .beer_lambert import (
    attenuation_volume,
    decompose_attenuation,
    effective_energy,
    monochromatic_intensity,
    polychromatic_intensity,
    transmission,
)
from .detector import (
    DEFAULT_COUNT_FLOOR,
    blur,
    detector_blur,
    flat_field_correct,
    focal_spot_blur,
    focal_spot_blur_mm,
    focal_spot_widths_px,
    log_transform,
    poisson_noise,
)
from .heel import (
    HeelParameters,
    angular_emission,
    default_heel_parameters,
    fit_heel_parameters,
    heel_effect,
    model_heel_profile,
    spekpy_heel_profile,
    tube_coordinates,
)
from .radiograph import heel_map, phantom_path_lengths, radiograph
from .scatter import ScatterModel, scatter_image, scatter_kernel
from .settings import RadiographSettings
from .spectrum import Spectrum, spectrum, spekpy_fluence

__all__ = [
    "DEFAULT_COUNT_FLOOR",
    "ENERGY_RANGE_KEV",
    "HeelParameters",
    "MaterialData",
    "RadiographSettings",
    "ScatterModel",
    "Spectrum",
    "angular_emission",
    "attenuation_volume",
    "blur",
    "decompose_attenuation",
    "default_heel_parameters",
    "detector_blur",
    "effective_energy",
    "fit_heel_parameters",
    "flat_field_correct",
    "focal_spot_blur",
    "focal_spot_blur_mm",
    "focal_spot_widths_px",
    "heel_effect",
    "heel_map",
    "linear_attenuation",
    "log_transform",
    "mass_attenuation",
    "mass_energy_absorption",
    "material",
    "materials",
    "model_heel_profile",
    "monochromatic_intensity",
    "phantom_path_lengths",
    "poisson_noise",
    "polychromatic_intensity",
    "radiograph",
    "scatter_image",
    "scatter_kernel",
    "spectrum",
    "spekpy_fluence",
    "spekpy_heel_profile",
    "table_source",
    "transmission",
    "tube_coordinates",
]
