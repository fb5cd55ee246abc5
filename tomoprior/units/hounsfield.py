"""Hounsfield units and linear attenuation at an effective energy.

``HU = 1000 (mu / mu_water(E) - 1)`` and its inverse ``mu = mu_water(E) (1 + HU / 1000)``
(clipped at 0: nothing attenuates less than vacuum), with ``mu_water(E)`` the linear
attenuation of liquid water (1 g/cm^3) from the shipped NIST table
(:func:`tomoprior.units.linear_attenuation`) and ``mu_air`` taken as 0 (air's 2e-5 /mm is
below the precision of these conversions). This is the usual effective-energy approximation:
it treats every tissue as water of a different density, so bone is somewhat
under-attenuating at low energies; state the energy with every result.

Units: ``mu`` in 1/mm, energy in keV (within :data:`EFFECTIVE_ENERGY_RANGE_KEV`).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from .attenuation import linear_attenuation
from .constants import DEFAULT_ENERGY_KEV, EFFECTIVE_ENERGY_RANGE_KEV

__all__ = ["hu_to_mu", "mu_to_hu", "mu_water"]


@functools.lru_cache(maxsize=64)
def _water(energy_kev: float) -> float:
    return float(linear_attenuation("water", energy_kev, dtype=torch.float64))


def mu_water(energy_kev: float = DEFAULT_ENERGY_KEV) -> float:
    """Linear attenuation of liquid water (1/mm) at ``energy_kev`` (30-150 keV).

    Raises
    ------
    TypeError
        ``energy_kev`` is not a number.
    ValueError
        ``energy_kev`` is outside :data:`EFFECTIVE_ENERGY_RANGE_KEV` (or NaN).

    Examples
    --------
    >>> round(mu_water(60.0), 5)
    0.02059
    """
    try:
        e = float(energy_kev)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"energy_kev must be a number in keV, got {energy_kev!r}") from exc
    lo, hi = EFFECTIVE_ENERGY_RANGE_KEV
    if not (lo <= e <= hi):
        raise ValueError(f"energy_kev must lie in [{lo:g}, {hi:g}] keV (effective energies), got {e}")
    return _water(e)


def hu_to_mu(hu, energy_kev: float = DEFAULT_ENERGY_KEV):
    """Hounsfield units -> linear attenuation (1/mm) at an effective energy.

    ``mu = mu_water(E) (1 + HU/1000)``, clipped at 0 (air is -1000 HU). A tensor gives a
    tensor of the same dtype; anything else a float64 array (a numpy scalar for a number).

    Examples
    --------
    >>> float(hu_to_mu(0.0)) == mu_water(60.0), float(hu_to_mu(-1000.0)), float(hu_to_mu(-1500.0))
    (True, 0.0, 0.0)
    """
    mw = mu_water(energy_kev)
    if isinstance(hu, torch.Tensor):
        return (mw * (1.0 + hu / 1000.0)).clamp_min(0.0)
    return np.clip(mw * (1.0 + np.asarray(hu, dtype=np.float64) / 1000.0), 0.0, None)


def mu_to_hu(mu, energy_kev: float = DEFAULT_ENERGY_KEV):
    """Linear attenuation (1/mm) -> Hounsfield units: ``HU = 1000 (mu / mu_water(E) - 1)``.

    The inverse of :func:`hu_to_mu` above air (no clipping): exactly -1000 at ``mu = 0`` and
    0 at water. Works on floats, numpy arrays and torch tensors (same type out).

    Examples
    --------
    >>> mu_to_hu(0.0), mu_to_hu(mu_water(60.0)), round(mu_to_hu(0.035))
    (-1000.0, 0.0, 700)
    """
    return 1000.0 * (mu / mu_water(energy_kev) - 1.0)

