"""X-ray tube spectra from SpekPy, as torch tensors.

:func:`spectrum` wraps SpekPy (Poludniowski et al., Med. Phys. 2021; its default ``casim``
physics model) for a tungsten reflection target. A :class:`Spectrum` holds photon fluence
per keV in energy bins, plus what the heel-effect model needs: the anode angle and the
optical depth ``mu(E) t`` of the added filtration.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ..units import ENERGY_RANGE_KEV, mass_energy_absorption

#: kVp range accepted by :func:`spectrum` (SpekPy's tungsten model is validated over about 30-150 kV).
KVP_RANGE = (20.0, 150.0)


@dataclass(frozen=True)
class Spectrum:
    """A photon spectrum in energy bins.

    Attributes
    ----------
    energies_keV : Tensor (E,)
        Bin centres in keV, increasing.
    fluence : Tensor (E,)
        Photon fluence per keV in each bin. From :func:`spectrum`: photons / (cm^2 keV mAs)
        on the central axis at 100 cm (SpekPy's unit); after :meth:`normalized`, it sums to
        1 over the bins when multiplied by ``bin_width_keV`` (a probability density per keV).
    bin_width_keV : float
        Width of every bin, keV.
    kvp : float or None
        Tube potential, kV (None for a spectrum not made by SpekPy).
    anode_angle_deg : float or None
        Anode angle in degrees.
    filtration : dict
        Added filtration, SpekPy material name -> thickness in mm.
    filter_optical_depth : Tensor (E,)
        ``sum_f mu_f(E) t_f`` of the added filtration on the central axis (dimensionless);
        an off-axis ray crosses it ``1/cos`` times longer. Zeros when there is none.
    is_normalized : bool
        Whether :attr:`fluence` is normalised.
    """

    energies_keV: Tensor  # noqa: N815 - the unit reads as written
    fluence: Tensor
    bin_width_keV: float  # noqa: N815
    kvp: float | None = None
    anode_angle_deg: float | None = None
    filtration: dict = field(default_factory=dict)
    filter_optical_depth: Tensor | None = None
    is_normalized: bool = False

    def __post_init__(self):
        e, f = self.energies_keV, self.fluence
        if not isinstance(e, Tensor) or not isinstance(f, Tensor):
            raise TypeError("energies_keV and fluence must be torch tensors")
        if e.ndim != 1 or f.shape != e.shape or e.numel() == 0:
            raise ValueError(f"energies_keV and fluence must be 1-D of equal length, got {tuple(e.shape)} and "
                             f"{tuple(f.shape)}")
        if not bool(torch.isfinite(f.detach()).all()) or bool((f.detach() < 0).any()):
            raise ValueError("fluence must be finite and >= 0")
        if float(f.detach().sum()) <= 0:
            raise ValueError("fluence is zero in every bin")
        if self.filter_optical_depth is None:
            object.__setattr__(self, "filter_optical_depth", torch.zeros_like(e))

    # -- derived numbers ---------------------------------------------------------------
    @property
    def weights(self) -> Tensor:
        """Fraction of photons in each bin, ``fluence * dE / sum``; shape (E,), sums to 1."""
        w = self.fluence * self.bin_width_keV
        return w / w.sum()

    @property
    def total_fluence(self) -> Tensor:
        """``sum fluence * dE``: photons / (cm^2 mAs) at 100 cm for a SpekPy spectrum (0-d)."""
        return (self.fluence * self.bin_width_keV).sum()

    @property
    def mean_energy(self) -> Tensor:
        """Fluence-weighted mean photon energy in keV (0-d tensor)."""
        return (self.weights * self.energies_keV).sum()

    def normalized(self) -> Spectrum:
        """A copy whose fluence integrates to 1 over energy (``sum fluence * dE = 1``)."""
        return Spectrum(self.energies_keV, self.fluence / self.total_fluence, self.bin_width_keV, self.kvp,
                        self.anode_angle_deg, dict(self.filtration), self.filter_optical_depth, True)

    def to(self, dtype=None, device=None) -> Spectrum:
        def mv(t):
            return t.to(dtype=dtype or t.dtype, device=device or t.device)

        return Spectrum(mv(self.energies_keV), mv(self.fluence), self.bin_width_keV, self.kvp,
                        self.anode_angle_deg, dict(self.filtration), mv(self.filter_optical_depth), self.is_normalized)

    def hvl(self, material_name: str = "aluminium") -> float:
        """First half-value layer in mm of ``material_name``, by air kerma.

        Air kerma is ``sum_E fluence(E) E mu_en,air(E)/rho``; the HVL is the thickness ``t``
        with ``sum_E w(E) exp(-mu(E) t) = 0.5 sum_E w(E)`` (narrow beam), solved by bisection.
        """
        from ..units import linear_attenuation

        e = self.energies_keV.detach().double().cpu()
        w = (self.fluence.detach().double().cpu() * e * mass_energy_absorption("air", e)).numpy()
        mu = linear_attenuation(material_name, e).numpy()
        total = w.sum()

        def ratio(t):
            return float((w * np.exp(-mu * t)).sum() / total)

        lo, hi = 0.0, 1.0
        while ratio(hi) > 0.5:
            hi *= 2.0
            if hi > 1e6:
                raise ValueError(f"no half-value layer of {material_name} below 1 km: is the spectrum empty?")
        for _ in range(100):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if ratio(mid) > 0.5 else (lo, mid)
        return 0.5 * (lo + hi)

    @classmethod
    def monoenergetic(cls, energy_keV: float, *, dtype=torch.float64, device=None) -> Spectrum:
        """A single-bin spectrum at ``energy_keV`` (fluence 1 per keV in a 1 keV bin)."""
        e = float(energy_keV)
        lo, hi = ENERGY_RANGE_KEV
        if not lo <= e <= hi:
            raise ValueError(f"energy_keV must lie in [{lo:g}, {hi:g}] keV, got {energy_keV!r}")
        return cls(torch.tensor([e], dtype=dtype, device=device), torch.ones(1, dtype=dtype, device=device), 1.0)

    def __repr__(self) -> str:
        return (f"Spectrum(kvp={self.kvp}, anode_angle_deg={self.anode_angle_deg}, filtration={self.filtration}, "
                f"bins={self.energies_keV.numel()}, mean_energy={float(self.mean_energy):.2f} keV)")


def _check_kvp(kvp) -> float:
    if isinstance(kvp, bool) or not isinstance(kvp, (int, float, np.floating, np.integer)):
        raise TypeError(f"kvp must be a number (tube potential in kV), got {kvp!r}")
    k = float(kvp)
    if not (KVP_RANGE[0] <= k <= KVP_RANGE[1]):
        raise ValueError(f"kvp must lie in [{KVP_RANGE[0]:g}, {KVP_RANGE[1]:g}] kV, got {kvp!r}")
    return k


def _check_angle(angle) -> float:
    if isinstance(angle, bool) or not isinstance(angle, (int, float, np.floating, np.integer)):
        raise TypeError(f"anode_angle_deg must be a number in degrees, got {angle!r}")
    a = float(angle)
    if not 1.0 <= a <= 45.0:
        raise ValueError(f"anode_angle_deg must lie in [1, 45] degrees (typical 7-20), got {angle!r}")
    return a


def _check_filtration(filtration) -> tuple[tuple[str, float], ...]:
    if filtration is None:
        return ()
    if not isinstance(filtration, Mapping):
        raise TypeError(f"filtration must be a dict of SpekPy material name -> thickness in mm, e.g. "
                        f"{{'Al': 2.5}}, got {filtration!r}")
    out = []
    for name, t in filtration.items():
        if not isinstance(name, str):
            raise TypeError(f"filtration keys must be material names, got {name!r}")
        if isinstance(t, bool) or not isinstance(t, (int, float, np.floating, np.integer)) or not math.isfinite(t) \
                or t < 0:
            raise ValueError(f"filtration[{name!r}] must be a thickness >= 0 in mm, got {t!r}")
        out.append((name, float(t)))
    return tuple(out)


def _spek(kvp: float, angle: float, filtration: tuple, dk: float, x_cm: float = 0.0, y_cm: float = 0.0,
          z_cm: float = 100.0):
    """A SpekPy ``Spek`` object with the filtration applied (SpekPy's model for that take-off angle)."""
    import spekpy

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SpekPy warns "zero emission" beyond the anode shadow
        s = spekpy.Spek(kvp=kvp, th=angle, dk=dk, x=x_cm, y=y_cm, z=z_cm)
    for name, t in filtration:
        try:
            s.filter(name, t)
        except Exception as exc:  # SpekPy raises bare Exceptions for unknown materials
            raise ValueError(f"SpekPy does not know the filter material {name!r}: {exc}") from exc
    return s


@functools.lru_cache(maxsize=16)
def _central_spek(kvp: float, angle: float, filtration: tuple, dk: float):
    return _spek(kvp, angle, filtration, dk)


@functools.lru_cache(maxsize=256)
def _spekpy_spectrum(kvp: float, angle: float, filtration: tuple, dk: float, x_cm: float = 0.0, y_cm: float = 0.0,
                     z_cm: float = 100.0):
    """(energies keV, fluence per keV, filter optical depth) from ``Spek(kvp, th, x=, y=, z=)``."""
    s = _spek(kvp, angle, filtration, dk, x_cm, y_cm, z_cm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        k, f = s.get_spectrum()
    mut = getattr(getattr(s.state, "filtration", None), "mut_fil", None)
    tau = np.asarray(sum(mut), dtype=np.float64).reshape(-1) if mut else np.zeros_like(k)
    if tau.shape != k.shape:  # defensive: SpekPy internals changed
        tau = np.zeros_like(k)
    return np.asarray(k, dtype=np.float64), np.asarray(f, dtype=np.float64), tau


def _spekpy_fluence_on_the_fly(kvp: float, angle: float, filtration: tuple, dk: float, x_cm: float, y_cm: float,
                               z_cm: float) -> float:
    s = _central_spek(kvp, angle, filtration, dk)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, f = s.get_spectrum(x=x_cm, y=y_cm, z=z_cm)
    return float(np.sum(f) * dk)


def spectrum(kvp: float, anode_angle_deg: float = 12.0, filtration: Mapping[str, float] | None = None, *,
             energy_bin_keV: float = 0.5, normalize: bool = False, dtype: torch.dtype = torch.float64,
             device=None) -> Spectrum:
    """Central-axis photon spectrum of a tungsten-anode tube (SpekPy).

    Parameters
    ----------
    kvp : float
        Tube potential in kV, within [20, 150].
    anode_angle_deg : float
        Anode (target) angle in degrees, default 12.
    filtration : dict, optional
        Added filtration as SpekPy material name -> thickness in **mm**; default
        ``{"Al": 2.5}`` (a typical total filtration for diagnostic radiography). Pass ``{}``
        for none.
    energy_bin_keV : float
        Bin width in keV (SpekPy's ``dk``), default 0.5.
    normalize : bool
        Return :meth:`Spectrum.normalized` (fluence integrating to 1).

    Returns
    -------
    Spectrum
        Energies (E,) in keV (bin centres) and fluence (E,) in photons / (cm^2 keV mAs) at
        100 cm on the central axis (or normalised).

    Raises
    ------
    ValueError, TypeError
        kVp or angle out of range, malformed filtration, a filter SpekPy does not know.

    Examples
    --------
    >>> s = spectrum(70, 12, {"Al": 2.5})
    >>> 38 < float(s.mean_energy) < 41     # keV
    True
    """
    k = _check_kvp(kvp)
    a = _check_angle(anode_angle_deg)
    filt = _check_filtration({"Al": 2.5} if filtration is None else filtration)
    dk = float(energy_bin_keV)
    if not 0.05 <= dk <= 5.0:
        raise ValueError(f"energy_bin_keV must lie in [0.05, 5] keV, got {energy_bin_keV!r}")
    e, f, tau = _spekpy_spectrum(k, a, filt, dk)
    keep = e >= ENERGY_RANGE_KEV[0]
    s = Spectrum(torch.as_tensor(e[keep], dtype=dtype, device=device), torch.as_tensor(f[keep], dtype=dtype,
                 device=device), dk, k, a, dict(filt), torch.as_tensor(tau[keep], dtype=dtype, device=device))
    return s.normalized() if normalize else s


def spekpy_fluence(kvp: float, anode_angle_deg: float, filtration: Mapping[str, float] | None, x_cm: float,
                   y_cm: float = 0.0, z_cm: float = 100.0, *, on_the_fly: bool = False) -> float:
    """SpekPy's total photon fluence (photons / (cm^2 mAs)) at ``(x, y, z)`` cm.

    ``x`` runs along the anode-cathode axis (+ toward the cathode), ``y`` across it, ``z`` is
    the focus-to-detector distance. SpekPy includes the inverse square law (``1/r^2``) and the
    longer oblique path through the filtration, not the obliquity of a flat detector.

    ``on_the_fly=False`` (default) builds ``Spek(kvp, th, x=, y=, z=)``: SpekPy's full model,
    whose bremsstrahlung emission is recomputed for the take-off angle. ``on_the_fly=True``
    builds the central model once and calls ``get_spectrum(x=, y=, z=)``, which updates the
    self-filtration and filter paths but keeps the central-axis emission anisotropy (faster,
    up to ~2.5 % different at 15 cm off-axis, 70 kVp, 12 degrees).
    """
    filt = _check_filtration({"Al": 2.5} if filtration is None else filtration)
    k, a = _check_kvp(kvp), _check_angle(anode_angle_deg)
    if on_the_fly:
        return _spekpy_fluence_on_the_fly(k, a, filt, 0.5, float(x_cm), float(y_cm), float(z_cm))
    _, f, _ = _spekpy_spectrum(k, a, filt, 0.5, float(x_cm), float(y_cm), float(z_cm))
    return float(f.sum() * 0.5)
