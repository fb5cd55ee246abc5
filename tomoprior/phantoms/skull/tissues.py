"""Materials and tissue labels of the procedural skull, and their attenuation at an energy.

The model assigns each point one of :data:`MATERIALS` (an index into that tuple, int64); each
material has a label of :data:`LABELS` (coarser: the tables, diploe, facial and petrous bone
are all ``"bone"``) and a linear attenuation in 1/mm that depends on the energy and, for
bone, on the child's age (mineralisation).
"""

from __future__ import annotations

from . import growth

__all__ = [
    "AIR", "BRAIN", "CSF", "DENSE", "DIPLOE", "EYE", "FACIAL", "FAT", "LABELS", "MATERIALS", "MATERIAL_LABELS",
    "SOFT", "SUTURE", "TABLE", "material_attenuation",
]

#: Tissue labels of :meth:`Skull.label_map`.
LABELS = {"air": 0, "soft_tissue": 1, "brain_csf": 2, "bone": 3, "suture": 4, "eye": 5}
#: Materials of the model (finer than labels: each has its own attenuation).
MATERIALS = (
    "air", "soft_tissue", "brain", "csf", "cortical_bone", "diploe", "suture", "facial_bone", "dense_bone",
    "orbital_fat", "eye",
)
(AIR, SOFT, BRAIN, CSF, TABLE, DIPLOE, SUTURE, FACIAL, DENSE, FAT, EYE) = range(len(MATERIALS))
#: Label of each material.
MATERIAL_LABELS = (0, 1, 2, 2, 3, 3, 4, 3, 3, 1, 5)


def material_attenuation(energy_kev: float, age_years: float) -> dict[str, float]:
    """Linear attenuation (1/mm) of every material of :data:`MATERIALS` (same order).

    Bone is a mixture by volume of adult cortical bone and soft tissue whose bone fraction is
    :func:`~tomoprior.phantoms.skull.growth.bone_mineral_fraction` of ``age_years`` for the
    vault tables, 35 % of that for the diploe, 80 % for the face and 15 points more (at most
    1) for the dense petrous bone and clivus. Sutures are soft tissue; CSF and the globes water.

    Parameters
    ----------
    energy_kev : float
        Photon energy in keV (30-150).
    age_years : float
        Age in years (0-6).
    """
    mu = {m: growth.linear_attenuation(m, energy_kev) for m in growth.MATERIALS}
    m = growth.bone_mineral_fraction(age_years)

    def bone(f):
        return f * mu["bone"] + (1.0 - f) * mu["soft"]

    return {
        "air": 0.0,
        "soft_tissue": mu["soft"],
        "brain": mu["brain"],
        "csf": mu["water"],
        "cortical_bone": bone(m),
        "diploe": bone(0.35 * m),
        "suture": mu["soft"],
        "facial_bone": bone(0.8 * m),
        "dense_bone": bone(min(1.0, m + 0.15)),
        "orbital_fat": mu["adipose"],
        "eye": mu["water"],
    }
