"""Photon attenuation of materials: mass and linear attenuation coefficients versus energy.

The numbers come from a small table shipped with the package
(``tomoprior/units/data/attenuation.npz``), made once from xraylib's cross sections and
its copy of the NIST compound database by ``tools/make_attenuation_tables.py``; xraylib is
not needed at run time. Coefficients are **total with coherent scattering** (as NIST XCOM's
"total attenuation with coherent scattering"), tabulated from 1 to 200 keV with both sides of
every absorption edge, and interpolated log-log (linear in ``log E`` vs ``log mu``), which is
how the NIST tables are meant to be read. This is the one attenuation table of tomoprior:
the physics, the HU conversions and the procedural skull all read it.

Units: energies in keV; mass attenuation ``mu/rho`` in cm^2/g; density in g/cm^3; linear
attenuation in **1/mm** (the unit of tomoprior volumes), i.e. ``mu/rho * rho / 10``.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "ALIASES",
    "ENERGY_RANGE_KEV",
    "MaterialData",
    "linear_attenuation",
    "mass_attenuation",
    "mass_energy_absorption",
    "material",
    "materials",
    "table_source",
]

#: Energy range covered by the shipped table, keV.
ENERGY_RANGE_KEV = (1.0, 200.0)

#: Convenience aliases accepted wherever a material name is (lower case).
ALIASES = {
    "h2o": "water",
    "tissue": "soft_tissue",
    "soft tissue": "soft_tissue",
    "bone": "cortical_bone",
    "al": "aluminium",
    "aluminum": "aluminium",
    "fe": "iron",
    "cu": "copper",
    "w": "tungsten",
    "ta": "tantalum",
    "pb": "lead",
    "be": "beryllium",
    "stainless_steel": "steel",
    "perspex": "pmma",
    "lucite": "pmma",
}


@dataclass(frozen=True)
class MaterialData:
    """Tabulated data of one material.

    Attributes
    ----------
    name : str
    description : str
    density : float
        Nominal density in g/cm^3 (the NIST/xraylib value unless stated).
    energy_keV : ndarray (n,)
        Tabulation energies, increasing; an absorption edge appears twice (below, above).
    mass_attenuation : ndarray (n,)
        ``mu/rho`` in cm^2/g (total, with coherent scattering).
    mass_energy_absorption : ndarray (n,) or None
        ``mu_en/rho`` in cm^2/g (NIST, air and water only).
    """

    name: str
    description: str
    density: float
    energy_keV: np.ndarray  # noqa: N815 - the unit reads as written
    mass_attenuation: np.ndarray
    mass_energy_absorption: np.ndarray | None


@functools.lru_cache(maxsize=1)
def _table() -> tuple[dict[str, MaterialData], dict]:
    ref = resources.files("tomoprior.units").joinpath("data", "attenuation.npz")
    with resources.as_file(ref) as path, np.load(path) as z:
        meta = json.loads(bytes(z["metadata_json"]).decode("utf-8"))
        out = {}
        for name, info in meta["materials"].items():
            out[name] = MaterialData(
                name=name,
                description=info["description"],
                density=float(info["density"]),
                energy_keV=np.array(z[f"energy_keV/{name}"], dtype=np.float64),
                mass_attenuation=np.array(z[f"mass_attenuation/{name}"], dtype=np.float64),
                mass_energy_absorption=(np.array(z[f"mass_energy_absorption/{name}"], dtype=np.float64)
                                        if f"mass_energy_absorption/{name}" in z.files else None),
            )
    return out, meta


def materials() -> list[str]:
    """Names of the tabulated materials (sorted)."""
    return sorted(_table()[0])


def table_source() -> str:
    """Where the shipped numbers come from (xraylib version and functions)."""
    return str(_table()[1]["source"])


def material(name: str) -> MaterialData:
    """The tabulated data of a material by name (case-insensitive; aliases such as ``"Al"``,
    ``"bone"``, ``"W"`` accepted).

    Raises
    ------
    ValueError
        Unknown name; the message lists the available materials.
    TypeError
        ``name`` is not a string.
    """
    if not isinstance(name, str):
        raise TypeError(f"material must be a name (str), got {type(name).__name__}; choose from {materials()}")
    key = name.strip().lower()
    key = ALIASES.get(key, key).replace(" ", "_").replace("-", "_")
    table = _table()[0]
    if key not in table:
        raise ValueError(
            f"unknown material {name!r}; available: {', '.join(materials())} "
            f"(aliases: {', '.join(sorted(ALIASES))})"
        )
    return table[key]


def _energy_tensor(energy_keV, dtype=None, device=None) -> Tensor:
    if isinstance(energy_keV, Tensor):
        e = energy_keV
        if not e.is_floating_point():
            e = e.to(torch.float64)
        if dtype is not None:
            e = e.to(dtype)
        if device is not None:
            e = e.to(device)
    else:
        try:
            e = torch.as_tensor(np.asarray(energy_keV, dtype=np.float64), device=device)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"energy_keV must be a number, array or tensor in keV, got {energy_keV!r}") from exc
        if dtype is not None:
            e = e.to(dtype)
    ed = e.detach()
    if not bool(torch.isfinite(ed).all()):
        raise ValueError("energy_keV contains NaN or infinite values")
    lo, hi = ENERGY_RANGE_KEV
    if ed.numel() and (float(ed.min()) < lo or float(ed.max()) > hi):
        raise ValueError(
            f"energy_keV must lie in the tabulated range [{lo:g}, {hi:g}] keV, got "
            f"[{float(ed.min()):g}, {float(ed.max()):g}]"
        )
    return e


def _loglog(x_tab: np.ndarray, y_tab: np.ndarray, e: Tensor) -> Tensor:
    """Log-log interpolation; at an edge energy (tabulated twice) the value above the edge."""
    lx = torch.as_tensor(np.log(x_tab), dtype=e.dtype, device=e.device)
    ly = torch.as_tensor(np.log(y_tab), dtype=e.dtype, device=e.device)
    le = torch.log(e)
    i = torch.searchsorted(lx, le.detach().contiguous(), right=True).clamp(1, lx.numel() - 1)
    x0, x1, y0, y1 = lx[i - 1], lx[i], ly[i - 1], ly[i]
    t = (le - x0) / (x1 - x0)
    return torch.exp(y0 + t * (y1 - y0))


def mass_attenuation(material_name: str, energy_keV, *, dtype=None, device=None) -> Tensor:
    """Mass attenuation coefficient ``mu/rho`` (cm^2/g), total with coherent scattering.

    Parameters
    ----------
    material_name : str
        A name from :func:`materials` (or an alias).
    energy_keV : float, array or Tensor, any shape
        Photon energies in keV within [1, 200]. A tensor keeps its dtype/device and its
        autograd history (the result is differentiable in energy).

    Returns
    -------
    Tensor, same shape as ``energy_keV`` (float64 unless a float tensor was given)

    Examples
    --------
    >>> round(float(mass_attenuation("water", 60.0)), 4)   # NIST XCOM: 0.2059 cm^2/g
    0.2059
    """
    m = material(material_name)
    e = _energy_tensor(energy_keV, dtype, device)
    return _loglog(m.energy_keV, m.mass_attenuation, e)


def mass_energy_absorption(material_name: str, energy_keV, *, dtype=None, device=None) -> Tensor:
    """Mass energy-absorption coefficient ``mu_en/rho`` (cm^2/g) of ``"air"`` or ``"water"``
    (NIST, Hubbell & Seltzer); shapes as :func:`mass_attenuation`."""
    m = material(material_name)
    if m.mass_energy_absorption is None:
        raise ValueError(f"mu_en/rho is tabulated for air and water only, not {m.name!r}")
    e = _energy_tensor(energy_keV, dtype, device)
    return _loglog(m.energy_keV, m.mass_energy_absorption, e)


def linear_attenuation(material_name: str, energy_keV, *, density: float | None = None, dtype=None,
                       device=None) -> Tensor:
    """Linear attenuation coefficient ``mu`` in **1/mm** (the unit of tomoprior volumes).

    Parameters
    ----------
    material_name : str
        A name from :func:`materials` (or an alias), e.g. ``"water"``, ``"cortical_bone"``,
        ``"steel"``, ``"tungsten"``.
    energy_keV : float, array or Tensor, any shape
        Photon energies in keV, within [1, 200].
    density : float, optional
        Density in g/cm^3; default the material's nominal density (``material(name).density``).

    Returns
    -------
    Tensor, same shape as ``energy_keV``
        ``mu/rho * rho / 10`` in 1/mm.

    Raises
    ------
    ValueError
        Unknown material (the message lists the available ones), energies outside the table,
        a non-positive density.

    Examples
    --------
    >>> round(float(linear_attenuation("water", 60.0)), 5)    # 1/mm
    0.02059
    """
    m = material(material_name)
    rho = m.density if density is None else density
    if not isinstance(rho, (int, float)) or isinstance(rho, bool) or not np.isfinite(rho) or rho <= 0:
        raise ValueError(f"density must be a positive number in g/cm^3, got {density!r}")
    return mass_attenuation(m.name, energy_keV, dtype=dtype, device=device) * (rho / 10.0)
