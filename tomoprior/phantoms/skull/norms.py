"""Normative pediatric cranial measurements by age and sex (shipped tables).

The tables come from the normative model of Porras et al., "Data-driven normative reference
of pediatric cranial bone development" (built from 2,068 head CT scans of children aged
0-10 years; MIT licence, see ``data/pediatric_cranial_norms/``): the model's average, per
0.1 year and per sex, of the frontal, parietal and occipital bone thickness (mm, each the
mean over that bone), the cephalic index and the intracranial volume (mL). Values between
the tabulated ages are interpolated linearly; ``sex=None`` gives the mean of the two sexes.

>>> from tomoprior.phantoms.skull.norms import cranial_norms
>>> n = cranial_norms(1.0, "female")
>>> n["parietal_thickness_mm"], n["cephalic_index"], n["intracranial_volume_ml"]
(1.83, 81.4, 829.14)
>>> round(cranial_norms(1.0)["cephalic_index"], 2)
81.79
"""

from __future__ import annotations

import csv
import functools
from importlib import resources

import numpy as np

__all__ = ["MEASURES", "NORM_AGE_RANGE", "SEXES", "cranial_norms", "norm_curve"]

#: Sexes of the tables (``None`` in the functions below: the mean of the two).
SEXES = ("female", "male")
#: Ages (years) the tables cover.
NORM_AGE_RANGE = (0.0, 10.0)
#: Measure name -> (file, column prefix, unit).
MEASURES = {
    "frontal_thickness_mm": ("BoneThickness.csv", "Frontal bone", "mm"),
    "parietal_thickness_mm": ("BoneThickness.csv", "Parietal bone", "mm"),
    "occipital_thickness_mm": ("BoneThickness.csv", "Occipital bone", "mm"),
    "cephalic_index": ("CI.csv", "CI", ""),
    "intracranial_volume_ml": ("ICV.csv", "ICV", "mL"),
}
_FOLDER = ("data", "pediatric_cranial_norms")


@functools.cache
def _table(filename: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Ages (years) and the columns (by header) of one shipped CSV."""
    ref = resources.files(__package__).joinpath(*_FOLDER, filename)
    with ref.open("r", encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], [r for r in rows[1:] if r]
    data = np.array(body, dtype=float)
    if data.shape[1] != len(header) or not np.all(np.diff(data[:, 0]) > 0):
        raise RuntimeError(f"the shipped norm table {filename} is damaged (columns or ages out of order)")
    return data[:, 0], {h: data[:, i] for i, h in enumerate(header) if i}


def _check(measure: str, age_years, sex) -> np.ndarray:
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {', '.join(MEASURES)}; got {measure!r}")
    if sex is not None and sex not in SEXES:
        raise ValueError(f"sex must be 'female', 'male' or None (the mean of both), got {sex!r}")
    a = np.asarray(age_years, dtype=float)
    lo, hi = NORM_AGE_RANGE
    if not np.all(np.isfinite(a)) or np.any(a < lo) or np.any(a > hi):
        raise ValueError(f"age_years must be in [{lo:g}, {hi:g}] years (the range of the norm tables), "
                         f"got {age_years!r}")
    return a


def norm_curve(measure: str, age_years, sex: str | None = None):
    """One normative measure at ``age_years`` (float or array, 0-10 years).

    Parameters
    ----------
    measure : str
        One of :data:`MEASURES`.
    age_years : float or array-like
        Age(s) in years.
    sex : {"female", "male"} or None
        ``None``: the mean of the female and male curves.

    Returns
    -------
    float or ndarray
        Linearly interpolated between the tabulated ages (every 0.1 year); the unit is that
        of :data:`MEASURES` (mm, none, mL).

    Raises
    ------
    ValueError
        Unknown measure or sex, or an age outside 0-10 years.
    """
    a = _check(measure, age_years, sex)
    filename, prefix, _ = MEASURES[measure]
    ages, cols = _table(filename)
    values = []
    for s in SEXES if sex is None else (sex,):
        (col,) = (v for k, v in cols.items() if k.startswith(f"{prefix} {s}"))
        values.append(np.interp(a, ages, col))
    out = np.mean(values, axis=0)
    return float(out) if out.ndim == 0 else out


def cranial_norms(age_years: float, sex: str | None = None) -> dict[str, float]:
    """Every measure of :data:`MEASURES` at one age (years, 0-10) for ``sex`` (or the mean of both)."""
    return {m: round(float(norm_curve(m, age_years, sex)), 6) for m in MEASURES}
