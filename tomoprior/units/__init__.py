"""Units: the bottom layer. Attenuation of materials at an energy (the shipped NIST table),
Hounsfield-unit conversions and shared constants such as the bone threshold.

Imports nothing from tomoprior. The constants are plain numbers and load nothing (the CLI
reads them while building ``--help``); the functions load numpy, torch and the table on
first use (PEP 562).

>>> from tomoprior.units import BONE_THRESHOLD_MU, linear_attenuation, mu_to_hu
>>> round(float(linear_attenuation("water", 60.0)), 5), BONE_THRESHOLD_MU
(0.02059, 0.035)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .constants import BONE_THRESHOLD_MU, DEFAULT_ENERGY_KEV, EFFECTIVE_ENERGY_RANGE_KEV

#: Names imported on first access -> the submodule that defines them.
_NAMES = {
    "ALIASES": "attenuation",
    "ENERGY_RANGE_KEV": "attenuation",
    "MaterialData": "attenuation",
    "linear_attenuation": "attenuation",
    "mass_attenuation": "attenuation",
    "mass_energy_absorption": "attenuation",
    "material": "attenuation",
    "materials": "attenuation",
    "table_source": "attenuation",
    "hu_to_mu": "hounsfield",
    "mu_to_hu": "hounsfield",
    "mu_water": "hounsfield",
}

__all__ = [
    "ALIASES",
    "BONE_THRESHOLD_MU",
    "DEFAULT_ENERGY_KEV",
    "EFFECTIVE_ENERGY_RANGE_KEV",
    "ENERGY_RANGE_KEV",
    "MaterialData",
    "hu_to_mu",
    "linear_attenuation",
    "mass_attenuation",
    "mass_energy_absorption",
    "material",
    "materials",
    "mu_to_hu",
    "mu_water",
    "table_source",
]

if TYPE_CHECKING:  # what static tools see; at run time __getattr__ below does the same lazily
    from .attenuation import (
        ALIASES,
        ENERGY_RANGE_KEV,
        MaterialData,
        linear_attenuation,
        mass_attenuation,
        mass_energy_absorption,
        material,
        materials,
        table_source,
    )
    from .hounsfield import hu_to_mu, mu_to_hu, mu_water


def __getattr__(name: str):
    """Import a function or table name on first access and cache it in the module."""
    if name not in _NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
    globals()[name] = value  # later lookups are ordinary attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
