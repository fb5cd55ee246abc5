"""Shared constants of tomoprior's physical units (plain numbers: importing this loads nothing).

Linear attenuation is in 1/mm and photon energy in keV throughout tomoprior.
"""

from __future__ import annotations

__all__ = ["BONE_THRESHOLD_MU", "DEFAULT_ENERGY_KEV", "EFFECTIVE_ENERGY_RANGE_KEV"]

#: Effective photon energy (keV) at which volumes are stated by default: a common effective
#: energy of a 70-80 kVp pediatric skull exposure.
DEFAULT_ENERGY_KEV = 60.0

#: Effective energies (keV) accepted where one energy stands for a whole spectrum (HU
#: conversions, the procedural skull): diagnostic CT and radiography.
EFFECTIVE_ENERGY_RANGE_KEV = (30.0, 150.0)

#: Bone threshold in linear attenuation (1/mm): a voxel is bone where ``mu > 0.035 /mm``.
#: At 60 keV that is about 700 HU, between diploe (about 0.030 /mm) and cortical bone
#: (about 0.047 /mm) of the procedural skull, well above soft tissue (0.021 /mm). The bone
#: metrics, the training's validation Dice and the PSCT-Net bone loss all use it.
BONE_THRESHOLD_MU = 0.035
