"""Generate ``tomoprior/units/data/attenuation.npz`` from xraylib (run once, by a maintainer).

The shipped table lets :mod:`tomoprior.units.attenuation` work without xraylib at run
time. For every material it stores the total mass attenuation coefficient **with coherent
(Rayleigh) scattering**, ``mu/rho`` in cm^2/g, on a log-spaced energy grid from 1 to 200 keV
plus both sides of every absorption edge of the material's elements in that range, and the
nominal density in g/cm^3. Compounds and tissues use xraylib's copy of the NIST compound
database (ICRU Report 44 / ICRP compositions, as in NIST XCOM and Hubbell & Seltzer's
tables); elements use xraylib's cross sections; stainless steel is a mixture by mass
fraction (AISI 304). For air and water it also stores the mass energy-absorption coefficient
``mu_en/rho`` (cm^2/g, for air kerma and half-value layers) from the NIST tables that SpekPy
ships.

Usage::

    python tools/make_attenuation_tables.py [--out tomoprior/units/data/attenuation.npz]

Requires ``xraylib`` (an optional extra of tomoprior, not a run-time dependency) and SpekPy.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "tomoprior" / "physics" / "data" / "attenuation.npz"

E_MIN_KEV, E_MAX_KEV, N_GRID = 1.0, 200.0, 161

# name -> (kind, spec, density g/cm^3 or None for the database value, description)
#   kind "nist": spec = xraylib NIST compound name
#   kind "element": spec = atomic number
#   kind "mixture": spec = {Z: mass fraction}
MATERIALS: dict[str, tuple[str, object, float | None, str]] = {
    "water": ("nist", "Water, Liquid", None, "liquid water (NIST)"),
    "soft_tissue": ("nist", "Tissue, Soft (ICRU four-component)", None, "soft tissue, ICRU four-component"),
    "soft_tissue_icrp": ("nist", "Tissue, Soft (ICRP)", None, "soft tissue, ICRP"),
    "brain": ("nist", "Brain (ICRP)", None, "brain, ICRP"),
    "muscle": ("nist", "Muscle, Skeletal", None, "skeletal muscle, ICRP"),
    "adipose": ("nist", "Adipose Tissue (ICRP)", None, "adipose tissue, ICRP"),
    "blood": ("nist", "Blood (ICRP)", None, "blood, ICRP"),
    "lung": ("nist", "Lung (ICRP)", None, "lung, ICRP (density of inflated tissue)"),
    "cortical_bone": ("nist", "Bone, Cortical (ICRP)", None, "cortical bone, ICRP"),
    "compact_bone": ("nist", "Bone, Compact (ICRU)", None, "compact bone, ICRU"),
    "air": ("nist", "Air, Dry (near sea level)", None, "dry air near sea level"),
    "pmma": ("nist", "Polymethyl Methacralate (Lucite, Perspex)", None, "PMMA (Lucite, Perspex)"),
    "beryllium": ("element", 4, None, "beryllium (tube windows)"),
    "aluminium": ("element", 13, None, "aluminium (filters)"),
    "iron": ("element", 26, None, "iron"),
    "steel": ("mixture", {26: 0.695, 24: 0.19, 28: 0.095, 25: 0.02}, 8.0,
              "stainless steel AISI 304 (Fe 69.5, Cr 19, Ni 9.5, Mn 2 % by mass)"),
    "copper": ("element", 29, None, "copper (filters)"),
    "tantalum": ("element", 73, None, "tantalum (beads)"),
    "tungsten": ("element", 74, None, "tungsten (anode, beads)"),
    "lead": ("element", 82, None, "lead (shielding)"),
}


def _edges(xrl, elements) -> list[float]:
    shells = [xrl.K_SHELL, xrl.L1_SHELL, xrl.L2_SHELL, xrl.L3_SHELL,
              xrl.M1_SHELL, xrl.M2_SHELL, xrl.M3_SHELL, xrl.M4_SHELL, xrl.M5_SHELL]
    out = set()
    for z in elements:
        for sh in shells:
            try:
                e = xrl.EdgeEnergy(int(z), sh)
            except ValueError:
                continue
            if E_MIN_KEV < e < E_MAX_KEV:
                out.add(round(float(e), 6))
    return sorted(out)


def _material(xrl, name: str):
    kind, spec, density, _ = MATERIALS[name]
    if kind == "nist":
        data = xrl.GetCompoundDataNISTByName(spec)
        fractions = dict(zip(data["Elements"], data["massFractions"]))
        density = data["density"] if density is None else density
    elif kind == "element":
        fractions = {int(spec): 1.0}
        density = xrl.ElementDensity(int(spec)) if density is None else density
    else:
        total = sum(spec.values())
        fractions = {int(z): w / total for z, w in spec.items()}

    def mass_atten(e: float) -> float:
        return float(sum(w * xrl.CS_Total(int(z), e) for z, w in fractions.items()))

    grid = np.geomspace(E_MIN_KEV, E_MAX_KEV, N_GRID)
    edges = _edges(xrl, fractions)
    energies, values = [], []
    points = sorted([(float(e), 0) for e in grid] + [(e, -1) for e in edges] + [(e, +1) for e in edges])
    for e, side in points:
        if side == 0 and any(abs(e - ed) < 1e-9 for ed in edges):
            continue
        probe = e * (1.0 + side * 2e-4)  # xraylib places its jumps within ~1e-5 of EdgeEnergy
        energies.append(e)
        values.append(mass_atten(probe))
    return np.asarray(energies), np.asarray(values), float(density), fractions


def _mass_energy_absorption(name: str, energies: np.ndarray) -> np.ndarray | None:
    """NIST (Hubbell & Seltzer) mu_en/rho of air and water as shipped with SpekPy.

    xraylib's CS_Energy differs from the NIST tables by up to ~50 % around 20-40 keV for
    air, so it is not used; other materials get no mu_en table.
    """
    import spekpy

    s = spekpy.Spek(kvp=70, th=12)
    if name == "air":
        return np.asarray(s.muen_air_data.get_muen_over_rho_air(energies), dtype=np.float64)
    if name == "water":
        return np.asarray(s.muen_water_data.get_muen_over_rho_water(energies), dtype=np.float64)
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    try:
        import xraylib as xrl
    except ImportError:
        print("xraylib is required to regenerate the tables: pip install xraylib", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    from tomoprior._atomic import atomic_path

    arrays: dict[str, np.ndarray] = {}
    import spekpy

    meta = {"source": f"xraylib {xrl.__version__}: CS_Total (total with coherent scattering) and the NIST "
                      f"compound database, edges from EdgeEnergy; mu_en/rho of air and water: NIST (Hubbell & "
                      f"Seltzer) as shipped with SpekPy {spekpy.__version__}",
            "units": {"energy": "keV", "mass_attenuation": "cm^2/g", "mass_energy_absorption": "cm^2/g",
                      "density": "g/cm^3"},
            "materials": {}}
    for name in MATERIALS:
        e, mu, rho, fr = _material(xrl, name)
        arrays[f"energy_keV/{name}"] = e
        arrays[f"mass_attenuation/{name}"] = mu
        mu_en = _mass_energy_absorption(name, e)
        if mu_en is not None:
            arrays[f"mass_energy_absorption/{name}"] = mu_en
        meta["materials"][name] = {"density": rho, "description": MATERIALS[name][3],
                                   "xraylib": MATERIALS[name][1] if MATERIALS[name][0] == "nist" else None,
                                   "mass_fractions": {str(z): round(float(w), 6) for z, w in fr.items()}}
        print(f"{name:18s} rho={rho:7.4f}  points={e.size:4d}  mu/rho(60 keV)={np.interp(60.0, e, mu):.5g} cm^2/g")
    arrays["metadata_json"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    with atomic_path(args.out) as tmp:
        tmp.write_bytes(buf.getvalue())
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.1f} kB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
