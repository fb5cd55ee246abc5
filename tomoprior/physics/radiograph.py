"""``radiograph``: line integrals -> a realistic raw X-ray image (expected or noisy counts).

The chain, per view::

    line integrals p           tp.project(volume) or phantom.line_integrals (exact)
    transmission T             exp(-p) (monochromatic) or sum_E w(E) exp(-sum_m mu_m(E) L_m)
    flat field  I0             photons_per_pixel * heel map (1.0 without heel)
    primary     I0 * T         -> focal-spot blur
    scatter     S              convolution of I0 T * SPR(p) with a broad kernel (optional)
    expected    blur(I0 T) + S -> detector blur
    raw                        Poisson(expected) (+ Gaussian electronic noise)

``-log(raw / flat)`` (see :func:`tomoprior.physics.log_transform`) gives back ``p`` in the
noise-free, blur-free, scatter-free monochromatic case. Every acquisition choice is one field of
:class:`~tomoprior.physics.RadiographSettings`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from ..geometry.geometry import Geometry
from ..phantoms.phantom import Phantom
from ..projectors.api import project
from .beer_lambert import polychromatic_intensity
from .detector import detector_blur, focal_spot_blur, poisson_noise
from .heel import heel_effect
from .scatter import scatter_image
from .settings import RadiographSettings
from .spectrum import spectrum as _make_spectrum


def _per_view(x, n: int) -> list[Tensor]:
    if isinstance(x, tuple):
        return list(x)
    if x.ndim == 2:
        x = x[None]
    if x.shape[0] != n:
        raise ValueError(f"expected {n} views, got an array of shape {tuple(x.shape)}")
    return [x[i] for i in range(n)]


def _line_integrals(obj, geom: Geometry, backend, projector_options: dict, what: str) -> list[Tensor]:
    n = geom.num_views
    if isinstance(obj, Phantom):
        return _per_view(obj.line_integrals(geom), n)
    if isinstance(obj, np.ndarray):
        obj = torch.from_numpy(obj)
    if isinstance(obj, Tensor):
        if obj.ndim != 3:
            raise ValueError(f"{what} must be a volume of shape (nz, ny, nx) = {geom.grid.shape}, got "
                             f"{tuple(obj.shape)}")
        if tuple(obj.shape) != tuple(geom.grid.shape):
            raise ValueError(f"{what} has shape {tuple(obj.shape)} but geom.grid.shape is {geom.grid.shape}; "
                             "rasterize onto geom.grid or pass a geometry with the volume's grid")
        if backend is not None:
            projector_options = {**projector_options, "backend": backend}
        return _per_view(project(obj, geom, **projector_options), n)
    raise TypeError(f"{what} must be a volume tensor (nz, ny, nx) in 1/mm, a tomoprior.phantoms.Phantom, or a dict "
                    f"of material name -> fraction volume / Phantom; got {type(obj).__name__}")


def phantom_path_lengths(phantom: Phantom, geom: Geometry, *, material_map: Mapping[str, str | None] | None = None,
                         rows_per_chunk: int = 256):
    """Per-material path lengths (mm) through an analytic phantom whose shapes name materials.

    Each shape contributes its exact chord length (between the source and the pixel) to the
    material ``shape.material`` (or ``material_map[shape.material]`` /
    ``material_map[shape.label]``; map to ``None`` to
    leave a shape out, e.g. a foam support). Shapes add, as their densities do, so nested
    shapes count twice; the relative density of every shape is 1 (nominal density).

    Returns
    -------
    dict of material -> Tensor ``(views, rows, cols)`` float64 (tuple of per-view tensors if
    detector shapes differ), differentiable in the view vectors.

    Raises
    ------
    ValueError
        A shape without a material and no mapping, or an unknown material (lists the known).
    """
    from ..units import material as _material

    if not isinstance(phantom, Phantom):
        raise TypeError(f"phantom must be a tomoprior.phantoms.Phantom, got {type(phantom).__name__}")
    mapping = dict(material_map or {})
    groups: dict[str, list] = {}
    for i, shape in enumerate(phantom.shapes):
        mat = getattr(shape, "material", None)
        label = shape.label
        if label is not None and label in mapping:
            target = mapping[label]
        elif mat is not None and mat in mapping:
            target = mapping[mat]
        elif mat is not None:
            target = mat
        else:
            raise ValueError(f"shape {i} ({label or type(shape).__name__}) of phantom {phantom.name!r} has no "
                             "material; give material_map={label: material} or use a material dict input")
        if target is None:
            continue
        groups.setdefault(_material(target).name, []).append(shape)
    if not groups:
        raise ValueError("no shape of the phantom maps to a material")
    out: dict[str, list[Tensor]] = {m: [] for m in groups}
    for view in geom.views:
        rows, cols = view.shape
        parts: dict[str, list[Tensor]] = {m: [] for m in groups}
        for r0 in range(0, rows, rows_per_chunk):
            r1 = min(rows, r0 + rows_per_chunk)
            rr, cc = torch.meshgrid(torch.arange(r0, r1, dtype=view.dtype, device=view.device),
                                    torch.arange(cols, dtype=view.dtype, device=view.device), indexing="ij")
            o, d = view.pixel_rays(rr, cc)
            for m, shapes in groups.items():
                parts[m].append(sum(sh.segment_lengths(o, d).to(torch.float64) for sh in shapes))
        for m in groups:
            out[m].append(torch.cat(parts[m], dim=0))
    same = len({v.shape for v in geom.views}) == 1
    return {m: (torch.stack(v) if same else tuple(v)) for m, v in out.items()}


def _heel_maps(heel, geom: Geometry, kvp, filtration, anode_angle_deg, anode_direction) -> list[Tensor] | None:
    if heel is None or heel is False:
        return None
    n = geom.num_views
    if isinstance(heel, Tensor):
        maps = _per_view(heel, n)
        for m, v in zip(maps, geom.views):
            if tuple(m.shape) != tuple(v.shape):
                raise ValueError(f"heel map of shape {tuple(m.shape)} does not match detector {v.shape}")
            if not bool(torch.isfinite(m.detach()).all()) or bool((m.detach() < 0).any()):
                raise ValueError("heel map must be finite and >= 0")
        return maps
    kw = {"anode_angle_deg": anode_angle_deg, "anode_direction": anode_direction,
          "kvp": 70.0 if kvp is None else kvp, "filtration": filtration}
    if heel is True:
        pass
    elif isinstance(heel, (int, float)) and not isinstance(heel, bool):
        kw["anode_angle_deg"] = float(heel)
    elif isinstance(heel, Mapping):
        kw.update(heel)
    else:
        raise TypeError("heel must be None/False (no heel effect), True (defaults), an anode angle in degrees, a dict "
                        f"of heel_effect keyword arguments, or a (views, rows, cols) tensor; got {type(heel).__name__}")
    return _per_view(heel_effect(geom, **kw), n)


def heel_map(geom: Geometry, settings: RadiographSettings) -> Tensor | None:
    """The heel-effect flat-field map ``(views, rows, cols)`` that :func:`radiograph` uses for
    ``settings`` on ``geom`` (relative intensity, 1 = no heel effect), or None when
    ``settings.heel`` is off. Precompute it to reuse it as ``settings.replace(heel=map)``: the
    map belongs to the tube and detector, so it does not change when only the object moves."""
    if not isinstance(settings, RadiographSettings):
        raise TypeError(f"settings must be a RadiographSettings, got {type(settings).__name__}")
    maps = _heel_maps(settings.heel, geom, settings.kvp, settings.filtration, settings.anode_angle_deg,
                      settings.anode_direction)
    if maps is None:
        return None
    return torch.stack(maps) if len({tuple(m.shape) for m in maps}) == 1 else tuple(maps)


def radiograph(volume_or_phantom, geom: Geometry, settings: RadiographSettings | None = None, *,
               seed: int | None = None, backend: str | None = None, return_all: bool = False, **legacy):
    """Simulate raw X-ray images (counts) from a volume or an analytic phantom.

    Parameters
    ----------
    volume_or_phantom : Tensor (nz, ny, nx), Phantom, or dict
        - a volume of **linear attenuation in 1/mm** on ``geom.grid``, projected with
          :func:`tomoprior.project` (``backend``); monochromatic;
        - a :class:`~tomoprior.phantoms.Phantom` whose densities are linear attenuation in
          1/mm: exact line integrals; monochromatic;
        - a dict ``{material: fraction}`` (material names of
          :func:`tomoprior.physics.materials`), each value a volume or Phantom of the
          material's **volume fraction** (or density relative to nominal, 1 = pure
          material). Its line integrals are path lengths in mm; the image is
          **polychromatic** and needs ``settings.kvp`` (or ``settings.spectrum``);
        - with ``settings.polychromatic=True``, a Phantom whose shapes name their
          ``material``: per material path lengths from :func:`phantom_path_lengths`
          (``settings.material_map`` renames or drops materials), polychromatic.
    geom : Geometry
    settings : RadiographSettings, optional
        The acquisition: dose (``photons_per_pixel``), beam (``kvp``, ``filtration``,
        ``spectrum``), heel effect, focal-spot and detector blur, noise, scatter (see
        :class:`~tomoprior.physics.RadiographSettings` for every field, its unit and default).
        Default ``RadiographSettings()``: 1000 photons per pixel, Poisson noise, nothing else.
    seed : int, optional
        Seed of the noise generator (reproducible images).
    backend : str, optional
        Projector backend for volumes (default: :func:`tomoprior.project`'s default).
    return_all : bool
        Return a dict instead of the raw image.
    **legacy
        Deprecated: the fields of ``RadiographSettings`` as loose keywords (the former
        signature, e.g. ``photons_per_pixel=500.0, heel=True``). They still work and emit a
        ``DeprecationWarning``; they cannot be combined with ``settings``.

    The chain per view: flat field ``I0 = photons_per_pixel * heel``; primary ``I0 T``; scatter
    from the primary and the line integrals (:func:`~tomoprior.physics.scatter_image`); the
    primary blurred by the focal spot, plus scatter; then detector blur; then noise. The flat
    field (open beam) is blurred alike and holds no scatter.

    Returns
    -------
    Tensor ``(views, rows, cols)``: raw counts (float; noisy if ``settings.noise``). A tuple of
    per-view tensors when detector shapes differ. With ``return_all``: dict with ``raw``,
    ``expected`` (noise-free counts after blur, scatter included), ``flat`` (noise-free
    open-beam counts, blurred alike), ``heel`` (map or None), ``line_integrals``
    (monochromatic ``p``, or the polychromatic ``-log T`` before blur), ``transmission``,
    ``primary`` (``I0 T`` before blur), ``scatter`` (scatter counts, or None), ``spectrum`` (or
    None), ``path_lengths`` (dict, polychromatic only), ``settings``.

    Notes
    -----
    Limits: detector energy response (beyond ``weighting``), lag and the spectral change of
    the beam across the heel field are not modelled (the heel map scales the intensity only);
    the focal-spot blur is shift-invariant at one object plane; scatter is a single-kernel
    convolution model (see :mod:`tomoprior.physics.scatter`).

    Examples
    --------
    >>> import torch, tomoprior as tp
    >>> from tomoprior.physics import RadiographSettings
    >>> geom = tp.BiplanarGeometry.from_parameters(binning=32, grid=tp.VolumeGrid((16, 16, 16), (8, 8, 8)))
    >>> raw = radiograph(torch.full((16, 16, 16), 0.002), geom, RadiographSettings(photons_per_pixel=500.0), seed=0)
    >>> raw.shape
    torch.Size([2, 48, 48])
    """
    if legacy:
        if settings is not None:
            raise TypeError(f"give either settings= or the deprecated loose keywords {sorted(legacy)}, not both")
        unknown = sorted(set(legacy) - set(RadiographSettings.field_names()))
        if unknown:
            raise TypeError(f"radiograph() got unexpected keyword argument(s) {unknown}; the acquisition settings are "
                            f"{list(RadiographSettings.field_names())}")
        warnings.warn("passing acquisition settings to radiograph() as loose keywords is deprecated; pass "
                      f"settings=RadiographSettings({', '.join(f'{k}=...' for k in sorted(legacy))})",
                      DeprecationWarning, stacklevel=2)
        settings = RadiographSettings(**legacy)
    elif settings is None:
        settings = RadiographSettings()
    elif not isinstance(settings, RadiographSettings):
        raise TypeError(f"settings must be a RadiographSettings, got {type(settings).__name__}")
    s = settings
    if not isinstance(geom, Geometry):
        raise TypeError(f"geom must be a tomoprior Geometry, got {type(geom).__name__}")
    opts = dict(s.projector_options or {})
    n = geom.num_views
    spec = s.spectrum
    polychromatic = s.polychromatic
    paths = None
    is_dict = isinstance(volume_or_phantom, Mapping)
    if polychromatic is None:
        polychromatic = is_dict
    if is_dict and not polychromatic:
        raise ValueError("a material dict input is polychromatic; drop polychromatic=False or pass one volume in 1/mm")
    if polychromatic and not is_dict and not isinstance(volume_or_phantom, Phantom):
        raise ValueError("polychromatic=True needs material-labelled input: a dict {material: fraction volume} or a "
                         "Phantom whose shapes have a material")
    if polychromatic:
        if spec is None:
            if s.kvp is None:
                raise ValueError("a polychromatic (material-labelled) input needs kvp "
                                 "(RadiographSettings.kvp, or .spectrum)")
            spec = _make_spectrum(s.kvp, s.anode_angle_deg, s.filtration)
        if is_dict:
            if not volume_or_phantom:
                raise ValueError("the material dict is empty; give e.g. {'soft_tissue': tissue_fraction}")
            paths = {m: _line_integrals(v, geom, backend, opts, f"volume_or_phantom[{m!r}]")
                     for m, v in volume_or_phantom.items()}
        else:
            paths = {m: _per_view(v, n) for m, v in
                     phantom_path_lengths(volume_or_phantom, geom, material_map=s.material_map).items()}
        trans = [polychromatic_intensity({m: paths[m][i] for m in paths}, spec, 1.0, weighting=s.weighting,
                                         densities=s.densities) for i in range(n)]
        p = [-torch.log(t.clamp(min=torch.finfo(t.dtype).tiny)) for t in trans]
    else:
        p = _line_integrals(volume_or_phantom, geom, backend, opts, "volume_or_phantom")
        trans = [torch.exp(-q) for q in p]
    heel_maps = _heel_maps(s.heel, geom, s.kvp, s.filtration, s.anode_angle_deg, s.anode_direction)
    flats, expected, primaries, scatters = [], [], [], []
    for i, view in enumerate(geom.views):
        flat = torch.full(view.shape, s.photons_per_pixel, dtype=trans[i].dtype, device=trans[i].device)
        if heel_maps is not None:
            flat = flat * heel_maps[i].to(flat)
        primary = flat * trans[i]
        img = primary
        if s.focal_spot_mm:
            plane = geom.grid.center if s.object_point is None else s.object_point
            img = focal_spot_blur(img[None], view, s.focal_spot_mm, object_point=plane, kind=s.focal_spot_kernel)[0]
        if s.scatter is not None:
            sc = scatter_image(primary, p[i].to(primary), view, s.scatter)
            img = img + sc
            scatters.append(sc)
        if s.detector_blur_px:
            img = detector_blur(img[None], s.detector_blur_px)[0]
            flat = detector_blur(flat[None], s.detector_blur_px)[0]
        flats.append(flat)
        primaries.append(primary)
        expected.append(img)
    if s.noise:
        gen = None
        if seed is not None:
            gen = torch.Generator(device=expected[0].device)
            gen.manual_seed(int(seed))
        raw = [poisson_noise(e.detach(), generator=gen, electronic_sigma=s.electronic_noise) for e in expected]
    else:
        raw = expected

    def pack(xs):
        if xs is None:
            return None
        return torch.stack(xs) if len({tuple(x.shape) for x in xs}) == 1 else tuple(xs)

    if not return_all:
        return pack(raw)
    return {
        "raw": pack(raw),
        "expected": pack(expected),
        "flat": pack(flats),
        "heel": pack(heel_maps),
        "line_integrals": pack(p),
        "transmission": pack(trans),
        "primary": pack(primaries),
        "scatter": pack(scatters) if scatters else None,
        "settings": s,
        "spectrum": spec,
        "path_lengths": None if paths is None else {m: pack(v) for m, v in paths.items()},
    }
