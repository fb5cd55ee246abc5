"""Beer-Lambert attenuation: monochromatic and polychromatic.

Monochromatic: ``I = I0 exp(-p)`` with ``p = integral of mu dl`` (dimensionless; mu in 1/mm,
lengths in mm), the unit of tomoprior projections.

Polychromatic, for a beam with normalised photon spectrum ``w(E)`` (``sum_E w(E) = 1``)
crossing materials ``m`` over path lengths ``L_m`` (mm, at the material's nominal density or
as density-scaled equivalent lengths)::

    I = I0 * sum_E w(E) exp(-sum_m mu_m(E) L_m)

for a photon-counting detector (``weighting="photon"``), or with ``w(E) E / sum w E`` for
an energy-integrating one (``weighting="energy"``). Everything is torch and differentiable
in the line integrals / path lengths (and in the spectrum fluence).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from ..units import linear_attenuation, material
from .spectrum import Spectrum

_WEIGHTINGS = ("photon", "energy")


def _as_tensor(x, name: str) -> Tensor:
    if isinstance(x, Tensor):
        t = x if x.is_floating_point() else x.to(torch.float64)
    else:
        try:
            t = torch.as_tensor(x, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"{name} must be a tensor or array of numbers, got {type(x).__name__}") from exc
    if not bool(torch.isfinite(t.detach()).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


def _check_i0(i0) -> None:
    if isinstance(i0, Tensor):
        if not bool(torch.isfinite(i0.detach()).all()) or bool((i0.detach() < 0).any()):
            raise ValueError("i0 must be finite and >= 0")
    elif isinstance(i0, bool) or not isinstance(i0, (int, float)) or not i0 >= 0 or i0 == float("inf"):
        raise ValueError(f"i0 must be a finite number >= 0 (photons per pixel) or a tensor, got {i0!r}")


def transmission(line_integral) -> Tensor:
    """``exp(-p)``: the transmitted fraction for line integrals ``p`` (any shape, dimensionless)."""
    return torch.exp(-_as_tensor(line_integral, "line_integral"))


def monochromatic_intensity(line_integral, i0=1.0) -> Tensor:
    """Monochromatic Beer-Lambert ``I0 * exp(-p)``.

    Parameters
    ----------
    line_integral : Tensor (...)
        Line integrals of the linear attenuation (1/mm x mm, dimensionless), e.g. the output
        of :func:`tomoprior.project` ``(views, rows, cols)``.
    i0 : float or Tensor broadcastable to ``line_integral``
        Unattenuated intensity (e.g. expected photons per pixel, or a flat field).

    Returns
    -------
    Tensor, the broadcast shape; differentiable in both arguments.

    Examples
    --------
    >>> import torch
    >>> round(float(monochromatic_intensity(torch.tensor(1.0), 1000.0)), 3)  # 1000 / e
    367.879
    """
    _check_i0(i0)
    return i0 * transmission(line_integral)


def _spectral_weights(spectrum: Spectrum, weighting: str) -> tuple[Tensor, Tensor]:
    if not isinstance(spectrum, Spectrum):
        raise TypeError(f"spectrum must be a tomoprior.physics.Spectrum (see physics.spectrum()), got "
                        f"{type(spectrum).__name__}")
    if weighting not in _WEIGHTINGS:
        raise ValueError(f"weighting must be one of {_WEIGHTINGS}, got {weighting!r}")
    w = spectrum.weights
    if weighting == "energy":
        w = w * spectrum.energies_keV
        w = w / w.sum()
    return spectrum.energies_keV, w


def _check_paths(path_lengths) -> dict[str, Tensor]:
    if not isinstance(path_lengths, Mapping) or not path_lengths:
        raise TypeError("path_lengths must be a non-empty dict of material name -> path length tensor in mm, "
                        "e.g. {'soft_tissue': L_tissue, 'cortical_bone': L_bone}")
    out = {}
    for name, value in path_lengths.items():
        key = material(name).name  # raises ValueError listing the materials
        t = _as_tensor(value, f"path_lengths[{name!r}]")
        out[key] = out[key] + t if key in out else t
    shapes = {tuple(t.shape) for t in out.values()}
    try:
        torch.broadcast_shapes(*shapes)
    except RuntimeError as exc:
        raise ValueError(f"path length tensors must have broadcastable shapes, got {sorted(shapes)}") from exc
    return out


def polychromatic_intensity(path_lengths: Mapping[str, Tensor], spectrum: Spectrum, i0=1.0, *,
                            weighting: str = "photon", densities: Mapping[str, float] | None = None) -> Tensor:
    """Polychromatic Beer-Lambert through several materials.

    ``I = I0 * sum_E w(E) exp(-sum_m mu_m(E) L_m)`` with ``w`` the normalised spectrum.

    Parameters
    ----------
    path_lengths : dict of str -> Tensor (...)
        Per material (a name from :func:`tomoprior.physics.materials`), the path length in
        mm along each ray at the nominal density (equivalently the line integral of the
        material's volume fraction or relative density). All broadcastable to one shape.
    spectrum : Spectrum
        The beam; only its normalised shape matters.
    i0 : float or Tensor
        Unattenuated intensity (what ``I`` is when every path length is zero).
    weighting : {"photon", "energy"}
        ``"photon"`` counts photons (what Poisson noise acts on); ``"energy"`` weights each
        photon by its energy (an energy-integrating detector).
    densities : dict of str -> float, optional
        Override the nominal density (g/cm^3) of some materials.

    Returns
    -------
    Tensor of the broadcast shape; dtype float64 unless the inputs are float32.
    Differentiable in the path lengths and ``i0``.

    Raises
    ------
    ValueError, TypeError
        Unknown material (lists the known ones), non-finite values, a wrong spectrum type.
    """
    _check_i0(i0)
    paths = _check_paths(path_lengths)
    energies, w = _spectral_weights(spectrum, weighting)
    dtype = torch.promote_types(next(iter(paths.values())).dtype, torch.float32)
    device = next(iter(paths.values())).device
    energies = energies.to(dtype=dtype, device=device)
    w = w.to(dtype=dtype, device=device)
    densities = dict(densities or {})
    mus = {m: linear_attenuation(m, energies, density=densities.get(m)) for m in paths}
    shape = torch.broadcast_shapes(*(t.shape for t in paths.values()))
    flat = {m: t.to(dtype).expand(shape).reshape(-1) for m, t in paths.items()}
    n = max(1, math.prod(shape))
    # energies in blocks: memory stays at a few million values whatever the number of bins,
    # and each block is one batched exp instead of a Python step per energy
    block = max(1, min(energies.numel(), (1 << 22) // n))
    out = None
    for k0 in range(0, energies.numel(), block):
        k1 = min(k0 + block, energies.numel())
        optical = sum(mus[m][k0:k1, None] * flat[m][None, :] for m in flat)  # (energies, rays)
        term = w[k0:k1] @ torch.exp(-optical)
        out = term if out is None else out + term
    return i0 * out.reshape(shape)


def effective_energy(spectrum: Spectrum, material_name: str = "water", thickness_mm: float = 0.0, *,
                     weighting: str = "photon") -> float:
    """The monochromatic energy (keV) that attenuates like the spectrum in a material.

    Solves ``mu(E_eff) = -log(T) / t`` with ``T`` the polychromatic transmission of
    ``thickness_mm`` of the material; for ``thickness_mm = 0`` the limit is used,
    ``mu(E_eff) = sum_E w(E) mu(E)`` (the spectrum-averaged attenuation). Bisection over the
    spectrum's energy range; ``mu`` must be monotone there (no absorption edge inside).

    Returns
    -------
    float, keV
    """
    energies, w = _spectral_weights(spectrum, weighting)
    t = float(thickness_mm)
    if not t >= 0 or t == float("inf"):
        raise ValueError(f"thickness_mm must be a finite number >= 0, got {thickness_mm!r}")
    e = energies.detach().double().cpu()
    w = w.detach().double().cpu()
    mu = linear_attenuation(material_name, e)
    target = float((w * mu).sum()) if t == 0 else float(-torch.log((w * torch.exp(-mu * t)).sum()) / t)
    lo, hi = float(e.min()), float(e.max())
    if e.numel() == 1:
        return lo

    def mu_at(x: float) -> float:
        return float(linear_attenuation(material_name, x))

    if not (mu_at(hi) * (1 - 1e-12) <= target <= mu_at(lo) * (1 + 1e-12)):
        raise ValueError(f"no energy in [{lo:g}, {hi:g}] keV attenuates like the spectrum in {material_name!r}")
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if mu_at(mid) > target else (lo, mid)
    return 0.5 * (lo + hi)


def attenuation_volume(fractions: Mapping[str, Tensor], energy_keV: float, *,
                       densities: Mapping[str, float] | None = None) -> Tensor:
    """Linear attenuation volume (1/mm) at one energy from material fraction volumes.

    ``mu(x) = sum_m f_m(x) mu_m(E)``, with ``f_m`` the volume fraction (or relative density)
    of material ``m`` in each voxel, shape ``(nz, ny, nx)`` (any common shape).
    """
    paths = _check_paths(fractions)
    densities = dict(densities or {})
    out = None
    for m, f in paths.items():
        term = f * linear_attenuation(m, float(energy_keV), density=densities.get(m)).to(f)
        out = term if out is None else out + term
    return out


def decompose_attenuation(mu, energy_keV: float, *, materials: tuple[str, str] = ("soft_tissue", "cortical_bone")
                          ) -> dict[str, Tensor]:
    """Split a linear attenuation volume (1/mm, at one energy) into two material fraction volumes.

    The inverse of :func:`attenuation_volume` for a two-material model: each voxel is read as
    a mix of a light material (default ``soft_tissue``) and a dense one (default
    ``cortical_bone``), so that the volume can be imaged with a polychromatic beam (bone
    hardens the beam more than soft tissue does). With ``mu_l``, ``mu_d`` the two materials'
    attenuation at ``energy_keV``:

    - ``mu <= mu_l`` (air, fat, tissue): light material at relative density ``mu / mu_l``;
    - ``mu_l < mu < mu_d``: a mix, dense fraction ``f = (mu - mu_l) / (mu_d - mu_l)``,
      light fraction ``1 - f`` (cancellous bone, partial-volume bone edges);
    - ``mu >= mu_d``: dense material at relative density ``mu / mu_d`` (metal included).

    ``attenuation_volume(decompose_attenuation(mu, E), E)`` returns ``mu`` (to rounding); at
    other energies the mix follows each material's own energy dependence. Negative values are
    clamped to 0.

    Parameters
    ----------
    mu : Tensor, any shape (typically ``(nz, ny, nx)``)
        Linear attenuation in 1/mm at ``energy_keV``; finite.
    energy_keV : float
        The energy the volume's attenuation refers to (tomoprior volumes: 60 keV).
    materials : (light, dense)
        Names from :func:`tomoprior.units.materials`; the light one must attenuate less.

    Returns
    -------
    dict ``{light: fraction, dense: fraction}``, tensors of ``mu``'s shape and dtype
    (relative densities: path lengths in mm after projection).
    """
    t = _as_tensor(mu, "mu")  # NaN or inf: a ValueError naming mu
    if not isinstance(materials, (tuple, list)) or len(materials) != 2:
        raise ValueError(f"materials must be a pair (light, dense) of material names, got {materials!r}")
    light, dense = (material(m).name for m in materials)  # raises ValueError listing the materials
    e = float(energy_keV)
    mu_l = float(linear_attenuation(light, e))
    mu_d = float(linear_attenuation(dense, e))
    if not mu_l < mu_d:
        raise ValueError(f"materials must be (light, dense): {light} attenuates {mu_l:.4g}/mm and {dense} "
                         f"{mu_d:.4g}/mm at {e:g} keV; swap them")
    t = t.clamp(min=0.0)
    f_dense = torch.where(t >= mu_d, t / mu_d, ((t - mu_l) / (mu_d - mu_l)).clamp(0.0, 1.0))
    f_light = torch.where(t <= mu_l, t / mu_l, 1.0 - f_dense.clamp(max=1.0))
    return {light: f_light, dense: f_dense}
