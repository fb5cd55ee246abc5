"""Parameters of the procedural pediatric skull: a small validated, frozen dataclass."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from ...units import EFFECTIVE_ENERGY_RANGE_KEV
from .growth import AGE_RANGE

__all__ = ["CI_RANGE", "DEFAULT_CEPHALIC_INDEX", "SEXES", "SIDES", "SUTURES", "VARIANTS", "SkullParameters",
           "fused_sutures"]

#: Skull variants: normal and the five single-suture (or bicoronal) craniosynostoses.
VARIANTS = ("normal", "sagittal", "metopic", "unicoronal", "bicoronal", "lambdoid")
#: Side of a unilateral synostosis (patient's side: "left" is world +x in LPS).
SIDES = ("left", "right")
#: Sexes of the growth curves (``None`` in :class:`SkullParameters`: the mean of the two).
SEXES = ("female", "male")
#: Sutures of the model (coronal and lambdoid in left and right halves).
SUTURES = ("metopic", "sagittal", "coronal_left", "coronal_right", "lambdoid_left", "lambdoid_right")
#: Accepted cephalic index range (100 x maximum width / maximum length of the vault).
CI_RANGE = (55.0, 110.0)
#: Cephalic index of each variant when none is given: scaphocephaly below about 70;
#: brachycephaly above about 90. The normal skull of anatomy v2 follows the normative curve of
#: its age and sex instead (:func:`tomoprior.phantoms.skull.growth.cephalic_index`, 83 at 3
#: months to 80 at 6 years); the entry ``"normal"`` is anatomy v1's.
DEFAULT_CEPHALIC_INDEX = {
    "normal": 79.0,
    "sagittal": 66.0,
    "metopic": 81.0,
    "unicoronal": 84.0,
    "bicoronal": 94.0,
    "lambdoid": 82.0,
}


def fused_sutures(variant: str, side: str = "left") -> tuple[str, ...]:
    """Sutures fused (bone instead of a gap) in a variant, e.g. ``("coronal_left",)``."""
    return {
        "normal": (),
        "sagittal": ("sagittal",),
        "metopic": ("metopic",),
        "unicoronal": (f"coronal_{side}",),
        "bicoronal": ("coronal_left", "coronal_right"),
        "lambdoid": (f"lambdoid_{side}",),
    }[variant]


@dataclass(frozen=True)
class SkullParameters:
    """Everything that defines one procedural skull.

    Parameters
    ----------
    age_years : float
        Age in years, ``0 <= age <= 6``: sets head size (WHO head circumference median),
        intracranial volume, bone thickness and cephalic index (pediatric CT norms; anatomy v1:
        a rounded literature thickness curve), diploe, mineralisation, suture width and
        fontanelle closure.
    variant : str
        One of :data:`VARIANTS`: ``"normal"``, ``"sagittal"`` (scaphocephaly), ``"metopic"``
        (trigonocephaly), ``"unicoronal"`` (anterior plagiocephaly), ``"bicoronal"``
        (brachycephaly), ``"lambdoid"`` (posterior plagiocephaly).
    cephalic_index : float or None
        Target cephalic index of the vault (outer table), ``55-110``. ``None``: for the normal
        skull the normative index of its age and sex (anatomy v2), for a craniosynostosis the
        variant's default (:data:`DEFAULT_CEPHALIC_INDEX`), plus a seeded jitter (sd 2).
    seed : int or None
        Seed of the anatomical variation (size, index, thickness, shape harmonics, fontanelle
        size and closure age). ``None``: the mean anatomy, no variation.
    side : str
        ``"left"`` or ``"right"``: the fused side of a unicoronal or lambdoid synostosis.
    variation : float
        Scale of the seeded variation, ``0-3`` (0 = mean anatomy, 1 = typical).
    energy_kev : float
        Effective energy (keV, 30-150) at which attenuation is stated. Default 60.
    head_circumference_cm : float or None
        Overrides the growth-curve head circumference (cm, 25-60).
    sex : str or None
        ``"female"`` or ``"male"``: the sex of the growth curves (head size, intracranial
        volume, bone thickness, cephalic index). ``None``: the mean of the two. Anatomy v1
        (the first model) has no sex and refuses one.

    Raises
    ------
    ValueError
        Any parameter outside its range or of the wrong type; the message names it and lists
        the valid choices.

    Examples
    --------
    >>> p = SkullParameters(age_years=0.5, variant="sagittal")
    >>> p.variant, p.side
    ('sagittal', 'left')
    >>> SkullParameters(variant="plagio")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: variant must be one of 'normal', 'sagittal', 'metopic', ..., 'lambdoid'; got 'plagio'
    """

    age_years: float = 1.0
    variant: str = "normal"
    cephalic_index: float | None = None
    seed: int | None = 0
    side: str = "left"
    variation: float = 1.0
    energy_kev: float = 60.0
    head_circumference_cm: float | None = None
    sex: str | None = None

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, "age_years", _real(self.age_years, "age_years", *AGE_RANGE, "years"))
        if not isinstance(self.variant, str) or self.variant not in VARIANTS:
            valid = ", ".join(repr(v) for v in VARIANTS)
            raise ValueError(f"variant must be one of {valid}; got {self.variant!r}")
        if self.cephalic_index is not None:
            set_(self, "cephalic_index", _real(self.cephalic_index, "cephalic_index", *CI_RANGE, ""))
        if self.seed is not None:
            if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
                if hasattr(self.seed, "__index__") and not isinstance(self.seed, bool) and int(self.seed) >= 0:
                    set_(self, "seed", int(self.seed))
                else:
                    raise ValueError(f"seed must be a non-negative integer or None, got {self.seed!r}")
        if not isinstance(self.side, str) or self.side not in SIDES:
            raise ValueError(f"side must be 'left' or 'right' (the patient's side), got {self.side!r}")
        set_(self, "variation", _real(self.variation, "variation", 0.0, 3.0, ""))
        set_(self, "energy_kev", _real(self.energy_kev, "energy_kev", *EFFECTIVE_ENERGY_RANGE_KEV, "keV"))
        if self.sex is not None and (not isinstance(self.sex, str) or self.sex not in SEXES):
            raise ValueError(f"sex must be 'female', 'male' or None (the mean of both), got {self.sex!r}")
        if self.head_circumference_cm is not None:
            set_(self, "head_circumference_cm", _real(self.head_circumference_cm, "head_circumference_cm", 25.0, 60.0,
                                                      "cm"))

    @property
    def fused_sutures(self) -> tuple[str, ...]:
        """Names (from :data:`SUTURES`) of the sutures this variant fuses."""
        return fused_sutures(self.variant, self.side)

    def to_dict(self) -> dict:
        """Plain ``dict`` of the fields (YAML/JSON friendly); ``sex`` only when set, so the
        files of sex-neutral skulls read as they did before the field existed."""
        out = asdict(self)
        if out["sex"] is None:
            del out["sex"]
        return out

    @classmethod
    def from_dict(cls, data: dict, where: str = "parameters") -> SkullParameters:
        """Build from a mapping; unknown keys raise ``ValueError`` listing the known ones."""
        if not isinstance(data, dict):
            raise ValueError(f"{where} must be a mapping of skull parameters, got {data!r}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"{where} has unknown key(s) {unknown}; allowed: {known}")
        try:
            return cls(**data)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from exc


def _real(value, name: str, lo: float, hi: float, unit: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a number, got {value!r}") from exc
    if not math.isfinite(v) or not (lo <= v <= hi):
        u = f" {unit}" if unit else ""
        raise ValueError(f"{name} must be in [{lo:g}, {hi:g}]{u}, got {value!r}")
    return v
