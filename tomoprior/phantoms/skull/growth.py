"""Age curves and tissue attenuation for the procedural pediatric skull.

Every curve is a function of age in years over ``[0, 6]``; values between the tabulated ages
are interpolated linearly. The tables are the project's reading of the cited sources, rounded;
they describe a typical child, not a clinical reference (see ``docs/skull.md``).

Sources
-------
- Head circumference: WHO Child Growth Standards, head circumference-for-age, medians of
  boys and girls averaged (0-5 years); 6 years continued with the Nellhaus (1968) composite
  curve. Values read from the published tables and rounded to 0.1 cm.
  Sex: the mean curve times the cube root of the sex's share of the normative intracranial
  volume (below), which puts boys 1.6 % above and girls 1.6 % below the mean at one year, as
  the WHO sex-specific medians are.
- Bone thickness (frontal, parietal, occipital), cephalic index and intracranial volume:
  the normative model of Porras et al., "Data-driven normative reference of pediatric
  cranial bone development" (2,068 head CTs, 0-10 years), shipped in
  :mod:`tomoprior.phantoms.skull.norms`, by sex or the mean of both.
- Fontanelle and suture closure: posterior fontanelle closed by 2-3 months, anterior
  fontanelle by 18-24 months (median about 14 months, Duc & Largo 1986); metopic suture
  fuses between 3 and 9 months (Vu et al. 2001; Weinzweig et al. 2003). Anterior fontanelle
  at birth about 2 cm (mean of length and width, Popich & Smith 1972).
- Attenuation: the shipped NIST table of :mod:`tomoprior.units` (xraylib's ``CS_Total`` of
  the NIST/ICRP compounds: coherent + incoherent + photoelectric), read through
  :data:`MATERIALS`. :func:`attenuation_to_hu` and :func:`hu_to_attenuation` are
  :func:`tomoprior.units.mu_to_hu` and :func:`tomoprior.units.hu_to_mu`.
"""

from __future__ import annotations

import math

import numpy as np

from ... import units
from ...units import DEFAULT_ENERGY_KEV, EFFECTIVE_ENERGY_RANGE_KEV
from ...units import hu_to_mu as hu_to_attenuation
from ...units import mu_to_hu as attenuation_to_hu
from . import norms

__all__ = [
    "DEFAULT_ENERGY_KEV",
    "MATERIALS",
    "anterior_fontanelle_mm",
    "attenuation_to_hu",
    "bone_mineral_fraction",
    "bone_thickness_mm",
    "cephalic_index",
    "diploe_fraction",
    "extra_axial_csf_mm",
    "face_scale",
    "head_circumference_cm",
    "hu_to_attenuation",
    "intracranial_volume_ml",
    "linear_attenuation",
    "metopic_open_fraction",
    "posterior_fontanelle_mm",
    "suture_width_mm",
    "vault_thickness_mm",
    "vault_thickness_v1_mm",
]

#: Ages (years) covered by the curves.
AGE_RANGE = (0.0, 6.0)

# WHO head circumference-for-age medians (boys and girls averaged), cm; 6 y from Nellhaus.
_HC_AGE_Y = np.array([0, 1, 2, 3, 4, 6, 9, 12, 18, 24, 36, 48, 60, 72], dtype=float) / 12.0
_HC_CM = np.array([34.2, 36.9, 38.7, 40.0, 41.1, 42.8, 44.4, 45.5, 46.8, 47.8, 49.0, 49.8, 50.3, 50.8])

# anatomy v1's parietal vault thickness (outer table to inner table), mm: rounded readings of
# CT studies (Li, Park, Liu et al., "A statistical skull geometry model for children 0-3 years
# old", PLoS One 2015; Margulies & Thibault, J Biomech Eng 2000, about 1 mm in newborns),
# thicker than the CT norms above 1 year
_V1_THICK_AGE_Y = np.array([0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0])
_V1_THICK_MM = np.array([1.2, 1.7, 2.3, 3.0, 3.5, 3.9, 4.6])

# facial skeleton size relative to a 1-year-old (the face grows faster than the vault)
_FACE_AGE_Y = np.array([0.0, 0.5, 1.0, 2.0, 4.0, 6.0])
_FACE_SCALE = np.array([0.78, 0.92, 1.0, 1.1, 1.24, 1.34])

#: The skull's base materials -> (material of the shipped NIST table, density in g/cm^3):
#: liquid water and the ICRP compositions, soft tissue at ICRP's 1.03 g/cm^3.
MATERIALS: dict[str, tuple[str, float]] = {
    "water": ("water", 1.0),
    "soft": ("soft_tissue_icrp", 1.03),
    "brain": ("brain", 1.03),
    "adipose": ("adipose", 0.92),
    "bone": ("cortical_bone", 1.85),
}


def _age(age_years: float) -> float:
    a = float(age_years)
    if not (AGE_RANGE[0] <= a <= AGE_RANGE[1]):
        raise ValueError(f"age_years must be in [0, 6] years, got {age_years!r}")
    return a


def head_circumference_cm(age_years: float, sex: str | None = None) -> float:
    """Median head circumference (cm, over the scalp) at ``age_years`` (0-6).

    ``sex`` ``"female"`` or ``"male"`` scales the mean of both sexes by the cube root of the
    sex's intracranial volume over the mean of both (:func:`intracranial_volume_ml`).

    Examples
    --------
    >>> head_circumference_cm(0.0), head_circumference_cm(1.0)
    (34.2, 45.5)
    >>> round(head_circumference_cm(1.0, "male"), 1), round(head_circumference_cm(1.0, "female"), 1)
    (46.2, 44.8)
    """
    a = _age(age_years)
    hc = float(np.interp(a, _HC_AGE_Y, _HC_CM))
    if sex is not None:
        hc *= (intracranial_volume_ml(a, sex) / intracranial_volume_ml(a)) ** (1.0 / 3.0)
    return round(hc, 6)


def bone_thickness_mm(age_years: float, sex: str | None = None) -> dict[str, float]:
    """Normative mean thickness (mm, outer to inner table) of the ``"frontal"``,
    ``"parietal"`` and ``"occipital"`` bones at ``age_years`` (0-6) for ``sex`` (``None``:
    the mean of both sexes).

    Examples
    --------
    >>> bone_thickness_mm(1.0, "female")
    {'frontal': 2.04, 'parietal': 1.83, 'occipital': 1.88}
    """
    a = _age(age_years)
    return {b: float(norms.norm_curve(f"{b}_thickness_mm", a, sex)) for b in ("frontal", "parietal", "occipital")}


def vault_thickness_mm(age_years: float, sex: str | None = None) -> float:
    """Normative parietal bone thickness (mm, outer to inner table) at ``age_years`` (0-6)."""
    return bone_thickness_mm(age_years, sex)["parietal"]


def vault_thickness_v1_mm(age_years: float) -> float:
    """Anatomy v1's parietal vault thickness (mm) at ``age_years`` (0-6): the first model's
    rounded literature curve, kept so that v1 skulls stay what they were."""
    return float(np.interp(_age(age_years), _V1_THICK_AGE_Y, _V1_THICK_MM))


def cephalic_index(age_years: float, sex: str | None = None) -> float:
    """Normative cephalic index (100 x maximum width / maximum length) at ``age_years`` (0-6)."""
    return float(norms.norm_curve("cephalic_index", _age(age_years), sex))


def intracranial_volume_ml(age_years: float, sex: str | None = None) -> float:
    """Normative intracranial volume (mL) at ``age_years`` (0-6)."""
    return float(norms.norm_curve("intracranial_volume_ml", _age(age_years), sex))


def face_scale(age_years: float) -> float:
    """Size of the facial skeleton relative to a 1-year-old's (dimensionless)."""
    return float(np.interp(_age(age_years), _FACE_AGE_Y, _FACE_SCALE))


def diploe_fraction(age_years: float) -> float:
    """Fraction of the vault thickness that is diploe (cancellous bone between the tables).

    The newborn vault is a single (unilaminar) plate; the diploe appears during the second
    year and the three-layer structure is established by about 4 years.
    """
    a = _age(age_years)
    return 0.45 * min(max((a - 1.0) / 3.0, 0.0), 1.0)


def bone_mineral_fraction(age_years: float) -> float:
    """Volume fraction of adult cortical bone (ICRP) in the vault tables, the rest soft tissue.

    Infant cranial bone is less mineralised: 0.55 at birth rising to about 0.84 at 6 years,
    which puts the vault at about 0.041-0.052 /mm at 60 keV.
    """
    a = _age(age_years)
    return 0.55 + 0.30 * (1.0 - math.exp(-a / 2.0))


def suture_width_mm(age_years: float) -> float:
    """Width of a patent (open) suture, mm: about 2.5 mm at birth narrowing to 0.8 mm."""
    a = _age(age_years)
    return 0.8 + 1.7 * math.exp(-a / 0.8)


def metopic_open_fraction(age_years: float) -> float:
    """1 while the metopic suture is fully open (< 3 months), 0 once fused (> 9 months)."""
    a = _age(age_years)
    return min(max((0.75 - a) / 0.5, 0.0), 1.0)


def anterior_fontanelle_mm(age_years: float, closure_years: float = 1.75) -> tuple[float, float]:
    """Half-diagonals (sagittal, transverse) of the anterior fontanelle, mm; (0, 0) once closed.

    About 25 x 20 mm at birth, shrinking to closure at ``closure_years`` (18-24 months).
    """
    a = _age(age_years)
    f = max(1.0 - a / closure_years, 0.0) ** 0.8
    return 12.5 * f, 10.0 * f


def posterior_fontanelle_mm(age_years: float, closure_years: float = 0.2) -> tuple[float, float]:
    """Half-diagonals (sagittal, transverse) of the posterior fontanelle, mm; closes by 2-3 months."""
    a = _age(age_years)
    f = max(1.0 - a / closure_years, 0.0)
    return 6.0 * f, 7.0 * f


def extra_axial_csf_mm(age_years: float) -> float:
    """Thickness of the CSF layer between the inner table and the brain, mm."""
    a = _age(age_years)
    return 1.5 + 1.5 * math.exp(-a / 1.5)


def linear_attenuation(material: str, energy_kev: float = DEFAULT_ENERGY_KEV) -> float:
    """Linear attenuation (1/mm) of a material of :data:`MATERIALS` at ``energy_kev`` (30-150).

    The NIST table of :func:`tomoprior.units.linear_attenuation` at the material's density.

    Examples
    --------
    >>> round(linear_attenuation("water", 60.0), 5)
    0.02059
    """
    if material not in MATERIALS:
        raise ValueError(f"unknown material {material!r}; known: {sorted(MATERIALS)}")
    e = float(energy_kev)
    lo, hi = EFFECTIVE_ENERGY_RANGE_KEV
    if not (lo <= e <= hi):
        raise ValueError(f"energy_kev must be in [{lo:g}, {hi:g}] keV, got {energy_kev!r}")
    name, density = MATERIALS[material]
    return float(units.linear_attenuation(name, e, density=density))
