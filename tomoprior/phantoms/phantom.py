"""Phantoms: ordered collections of analytic shapes with exact line integrals, rasterisation
and a YAML file format.

A phantom's value at a point is the sum of the densities of the shapes containing it, times
the phantom's ``density_scale``; its line integrals are the sums of the shapes' line
integrals. Phantom files live in the repository's top-level ``phantoms/`` folder, ship inside
the package as ``tomoprior/phantoms/library`` (see :data:`PACKAGE_PHANTOM_DIR`) and are loaded
by name (``Phantom.load("shepp_logan_3d_modified")``) or by path.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from importlib import resources
from pathlib import Path

import torch
import yaml

from .._atomic import write_text_atomic
from .._deprecation import deprecated_alias
from .._memory import check_memory
from .._yaml import DocumentError, brief, load_yaml
from ..geometry.grid import VolumeGrid
from ..geometry.view import View
from .shapes import Shape, _number, shape_from_dict

Tensor = torch.Tensor

#: ``schema`` value of a phantom file.
SCHEMA = "tomoprior.phantom"
#: Newest phantom file version this code reads and the one it writes.
SCHEMA_VERSION = 1
#: Environment variable with extra phantom folders (``os.pathsep``-separated), searched first.
ENV_VAR = "TOMOPRIOR_PHANTOM_PATH"
#: The shipped phantom folder, package data ``tomoprior/phantoms/library``. The repository's
#: top-level ``phantoms/`` is the source of truth: in a checkout (and an editable install)
#: ``library`` is a symbolic link to it, and building a wheel copies its files into the
#: package, so a non-editable install finds them too. Resolved, so in a checkout messages name
#: ``phantoms/`` itself.
PACKAGE_PHANTOM_DIR = Path(str(resources.files(__package__).joinpath("library"))).resolve()
#: Rays per chunk in line-integral evaluation: bounds the temporaries of every shape
#: (about 10 arrays of ``chunk x 3`` float64 numbers, ~30 MB) whatever the detector size.
DEFAULT_CHUNK_RAYS = 1 << 17
#: Elements per temporary array in rasterisation (~32 MB in float64).
RASTER_CHUNK_ELEMENTS = 1 << 22

TOP_LEVEL_KEYS = ("schema", "schema_version", "name", "description", "reference", "units", "density_scale", "shapes")
UNIT_KEYS = ("length", "density")

__all__ = ["ENV_VAR", "SCHEMA", "SCHEMA_VERSION", "Phantom", "available_phantoms", "find", "load", "search_path"]


class Phantom:
    """An ordered list of analytic shapes whose densities add, plus metadata.

    Parameters
    ----------
    shapes : iterable of Shape
        Ellipsoids, spheres, cylinders (see :mod:`tomoprior.phantoms.shapes`), in mm.
    name : str, optional
        Short identifier, e.g. ``"shepp_logan_3d_modified"``.
    description : str, optional
        Free text: what the phantom is, how it was sized, what its densities mean.
    density_unit : str, optional
        Unit of the (scaled) densities, default ``"1/mm"`` (linear attenuation), so that
        line integrals are dimensionless and match projections in ``attenuation * mm``.
    density_scale : float, optional
        Factor applied to every shape density (> 0). Files keep the literature's relative
        densities in the shapes and the physical calibration here. Default 1.
    reference : str, optional
        Citation of the source of the shapes.

    Raises
    ------
    ValueError
        A shape that is not a :class:`~tomoprior.phantoms.shapes.Shape`, a non-positive or
        non-finite ``density_scale``, or non-string metadata.

    Examples
    --------
    >>> from tomoprior.phantoms import Ellipsoid, Sphere
    >>> ph = Phantom([Ellipsoid((0, 0, 0), (40, 50, 45), 1.0), Sphere((0, 20, 0), 5.0, 0.5)],
    ...              density_scale=0.02)
    >>> # along y through both centres: 0.02 * (1.0 * 100 mm + 0.5 * 10 mm)
    >>> round(float(ph.line_integrals_rays([0.0, -100.0, 0.0], [0.0, 1.0, 0.0])), 9)
    2.1
    """

    def __init__(
        self,
        shapes: Iterable[Shape],
        name: str = "phantom",
        description: str = "",
        density_unit: str = "1/mm",
        density_scale: float = 1.0,
        reference: str = "",
    ):
        self.shapes: tuple[Shape, ...] = tuple(shapes)
        for i, s in enumerate(self.shapes):
            if not isinstance(s, Shape):
                raise ValueError(f"shapes[{i}] must be a Shape (Ellipsoid, Sphere, Cylinder), got {type(s).__name__}")
        for field, value in (
            ("name", name),
            ("description", description),
            ("density_unit", density_unit),
            ("reference", reference),
        ):
            if not isinstance(value, str):
                raise ValueError(f"{field} must be a string, got {brief(value)}")
        self.name = name
        self.description = description
        self.density_unit = density_unit
        self.reference = reference
        self.density_scale = _number(density_scale, "density_scale", positive=True)

    # -- container ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.shapes)

    def __iter__(self) -> Iterator[Shape]:
        return iter(self.shapes)

    def __getitem__(self, index: int) -> Shape:
        return self.shapes[index]

    def __repr__(self) -> str:
        return (
            f"Phantom(name={self.name!r}, shapes={len(self.shapes)}, density_scale={self.density_scale:g}, "
            f"density_unit={self.density_unit!r})"
        )

    def _densities(self) -> list[float]:
        return [self.density_scale * float(s.density.detach()) for s in self.shapes]

    # -- evaluation --------------------------------------------------------------------------
    def values(self, points) -> Tensor:
        """The phantom's value at world points.

        Parameters
        ----------
        points : array-like or Tensor, shape ``(..., 3)``
            World ``(x, y, z)`` in mm.

        Returns
        -------
        Tensor, shape ``(...)``, float64
            ``density_scale * sum of the densities of the shapes containing each point``,
            in ``density_unit``.
        """
        p = points if isinstance(points, Tensor) else torch.as_tensor(points, dtype=torch.float64)
        out = torch.zeros(p.shape[:-1], dtype=torch.float64, device=p.device)
        for s, rho in zip(self.shapes, self._densities()):
            out = out + rho * s.contains(p).to(out.dtype)
        return out

    def line_integrals_rays(self, origins, directions, chunk_size: int = DEFAULT_CHUNK_RAYS, *,
                            segment: bool = False) -> Tensor:
        """Exact line integrals along arbitrary rays: whole lines (``t`` over all reals) or,
        with ``segment=True``, the segments ``origin + t * direction``, ``0 <= t <= 1``.

        Parameters
        ----------
        origins, directions : array-like or Tensor, shape ``(..., 3)``
            Broadcastable world points and direction vectors in mm; for whole lines the
            length of a direction does not matter, for segments it is the segment.
        chunk_size : int, optional
            Rays evaluated at once (bounds memory).
        segment : bool, optional
            Integrate from the origin (an X-ray source) to ``origin + direction`` (its
            detector pixel) only. Default False: the whole line.

        Returns
        -------
        Tensor, shape ``(...)``
            ``sum_shapes density_scale * density * chord length``, in ``density_unit * mm``;
            float64 unless the inputs are of a wider type. Differentiable in the rays and in
            tensor-valued shape parameters.
        """
        o = origins if isinstance(origins, Tensor) else torch.as_tensor(origins, dtype=torch.float64)
        d = directions if isinstance(directions, Tensor) else torch.as_tensor(directions, dtype=torch.float64)
        if o.shape[-1:] != (3,) or d.shape[-1:] != (3,):
            raise ValueError(
                f"origins and directions must have shape (..., 3), got {tuple(o.shape)} and {tuple(d.shape)}"
            )
        batch = torch.broadcast_shapes(o.shape[:-1], d.shape[:-1])
        n = math.prod(batch)
        if n <= chunk_size:
            return self._sum_rays(o, d, batch, segment)
        o = o.expand(*batch, 3).reshape(n, 3)
        d = d.expand(*batch, 3).reshape(n, 3)
        parts = [
            self._sum_rays(o[i : i + chunk_size], d[i : i + chunk_size], (min(chunk_size, n - i),), segment)
            for i in range(0, n, chunk_size)
        ]
        return torch.cat(parts).reshape(batch)

    def _sum_rays(self, o: Tensor, d: Tensor, batch, segment: bool = False) -> Tensor:
        dtype = torch.promote_types(torch.promote_types(o.dtype, d.dtype), torch.float64)
        total = torch.zeros(batch, dtype=dtype, device=o.device)
        for s in self.shapes:
            if segment:
                lengths = s.segment_lengths(o, d)
                term = s.density.to(dtype=lengths.dtype, device=lengths.device) * lengths
            else:
                term = s.line_integrals(o, d)
            total = total + self.density_scale * term
        return total

    def line_integrals(self, geom, views=None, chunk_size: int = DEFAULT_CHUNK_RAYS) -> Tensor | tuple[Tensor, ...]:
        """Exact line integrals of the phantom for every pixel of a geometry's views.

        Parameters
        ----------
        geom : Geometry or any object with ``.views``
            Its views provide ``pixel_rays(rows, cols)`` and ``shape = (rows, cols)``.
        views : int or sequence of int or View, optional
            Which views, by index into ``geom.views`` or as View objects. Default: all.
        chunk_size : int, optional
            Pixels evaluated at once (whole detector rows); memory stays bounded for large
            detectors (1536 x 1536) and many shapes.

        Returns
        -------
        Tensor ``(views, rows, cols)`` or tuple of Tensors ``(rows, cols)``
            Line integrals in ``density_unit * mm`` (dimensionless for 1/mm) along the ray
            from the source to each pixel centre (nothing behind the source or beyond the
            detector counts, as in the projectors), float64. A tuple when the selected views
            have different detector shapes. Differentiable in the view vectors.

        Raises
        ------
        ValueError
            A view index out of range.
        InsufficientMemoryError (a ValueError)
            The detectors are too large for the available memory (checked before the work
            starts; the message says how much is needed).
        """
        selected = self._select_views(geom, views)
        pixels = sum(int(v.shape[0]) * int(v.shape[1]) for v in selected)
        # the images (float64) and their stacked copy, plus about 20 (chunk, 3) float64 temporaries
        check_memory(2 * 8 * pixels + 20 * 3 * 8 * DEFAULT_CHUNK_RAYS,
                     f"the exact line integrals of {len(selected)} view(s) with {pixels:,} pixels in all (float64)",
                     "bin the detector (fewer, larger pixels) or select fewer views")
        images = [self._view_integrals(v, chunk_size) for v in selected]
        if len({tuple(im.shape) for im in images}) == 1:
            return torch.stack(images)
        return tuple(images)

    @staticmethod
    def _select_views(geom, views) -> list:
        all_views = tuple(geom.views)
        if views is None:
            return list(all_views)
        if isinstance(views, int) or isinstance(views, View):
            views = [views]
        chosen = []
        for item in views:
            if isinstance(item, bool):
                raise ValueError(f"views must be indices or View objects, got {brief(item)}")
            if isinstance(item, int):
                if not -len(all_views) <= item < len(all_views):
                    raise ValueError(f"views index {item} is out of range for a geometry with {len(all_views)} views")
                chosen.append(all_views[item])
            elif hasattr(item, "pixel_rays"):
                chosen.append(item)
            else:
                raise ValueError(f"views must be indices or View objects, got {brief(item)}")
        return chosen

    def _view_integrals(self, view, chunk_size: int) -> Tensor:
        rows, cols = view.shape
        dtype = getattr(view, "dtype", torch.float64)
        device = getattr(view, "device", None)
        step = max(1, chunk_size // cols)
        col_index = torch.arange(cols, dtype=dtype, device=device)
        parts = []
        for r0 in range(0, rows, step):
            r1 = min(rows, r0 + step)
            r = torch.arange(r0, r1, dtype=dtype, device=device)[:, None].expand(r1 - r0, cols)
            c = col_index[None, :].expand(r1 - r0, cols)
            origins, directions = view.pixel_rays(rows=r, cols=c)
            parts.append(self.line_integrals_rays(origins, directions, chunk_size=max(chunk_size, cols),
                                                  segment=True))
        return torch.cat(parts, dim=0)

    # -- rasterisation -----------------------------------------------------------------------
    def rasterize(
        self, grid: VolumeGrid, supersample: int = 1, dtype: torch.dtype = torch.float32, device=None
    ) -> Tensor:
        """Sample the phantom on a voxel grid.

        Each voxel gets the mean of the phantom's value over ``supersample^3`` regularly
        spaced sub-samples: along each axis at ``(m + 1/2) / k - 1/2`` voxel sizes from the
        voxel centre, ``m = 0 .. k-1``. With ``k = 1`` that is the value at the voxel centre
        (``VolumeGrid`` convention: voxel ``(k, j, i)`` centred at
        ``center + ((i - (nx-1)/2) sx, (j - (ny-1)/2) sy, (k - (nz-1)/2) sz)``).

        Parameters
        ----------
        grid : VolumeGrid
            Shape ``(nz, ny, nx)``, spacing ``(sz, sy, sx)`` mm, centre ``(x, y, z)`` mm.
        supersample : int, optional
            Sub-samples per voxel along each axis, ``k >= 1``. Default 1.
        dtype : torch.dtype, optional
            Output dtype; accumulation is float64. Default float32.
        device : torch.device or str, optional
            Output device. Default CPU.

        Returns
        -------
        Tensor, shape ``(nz, ny, nx)``
            Values in ``density_unit``. Not differentiable in the shape parameters.

        Raises
        ------
        ValueError
            ``supersample`` is not a positive integer, ``grid`` or ``dtype`` has the wrong type.
        InsufficientMemoryError (a ValueError)
            The grid is too large for the available memory (checked before allocating).

        Notes
        -----
        The sub-samples of a voxel row along x are points on a line; every shape is convex,
        so the sub-samples inside it are one run of consecutive indices found from the exact
        entry and exit parameters of that line (:meth:`Shape.interval`). Counting them per
        voxel costs one operation per voxel per sub-sample line instead of one ``contains``
        test per sub-sample, and only voxels in the shape's bounding box are visited. Work
        is chunked over z-slices (and y-rows) so a 256^3 grid at ``supersample=3`` needs a
        few hundred MB at most.
        """
        k = _check_supersample(supersample)
        if not isinstance(grid, VolumeGrid):
            raise ValueError(f"grid must be a tomoprior VolumeGrid, got {type(grid).__name__}")
        if dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            raise ValueError(f"dtype must be a torch floating dtype such as torch.float32, got {brief(dtype)}")
        itemsize = torch.finfo(dtype).bits // 8
        nz, ny, nx = grid.shape
        check_memory(grid.num_voxels * (8 + itemsize) + 16 * 8 * RASTER_CHUNK_ELEMENTS,
                     f"rasterising the phantom on a {nz} x {ny} x {nx} grid (float64 accumulation, "
                     f"{str(dtype).replace('torch.', '')} result)",
                     "use a smaller grid (fewer voxels, e.g. a smaller --grid) or a coarser spacing")
        out = torch.zeros(grid.shape, dtype=torch.float64, device=device)
        with torch.no_grad():
            for shape, rho in zip(self.shapes, self._densities()):
                if rho != 0.0:
                    _rasterize_shape(out, shape, rho, grid, k)
        return out.to(dtype)

    # -- geometry of the phantom -------------------------------------------------------------
    def bounding_box(self) -> tuple[Tensor, Tensor]:
        """Axis-aligned box ``(lo, hi)`` (each ``(3,)``, world ``(x, y, z)`` mm) around all shapes.

        Raises
        ------
        ValueError
            The phantom has no shapes.
        """
        if not self.shapes:
            raise ValueError("an empty phantom has no bounding box")
        boxes = [s.bounding_box() for s in self.shapes]
        lo = torch.stack([b[0].detach().double().cpu() for b in boxes]).amin(0)
        hi = torch.stack([b[1].detach().double().cpu() for b in boxes]).amax(0)
        return lo, hi

    def _replace(self, shapes=None, **changes) -> Phantom:
        kw = {
            "name": self.name,
            "description": self.description,
            "density_unit": self.density_unit,
            "density_scale": self.density_scale,
            "reference": self.reference,
        }
        kw.update(changes)
        return Phantom(self.shapes if shapes is None else shapes, **kw)

    def scaled(self, factor: float) -> Phantom:
        """A copy with every centre and size multiplied by ``factor`` (> 0), i.e. scaled about
        the world origin. Densities are unchanged, so line integrals scale by ``factor``."""
        return self._replace([s.scaled(factor) for s in self.shapes])

    def translated(self, offset) -> Phantom:
        """A copy moved by ``offset`` = ``(x, y, z)`` mm."""
        return self._replace([s.translated(offset) for s in self.shapes])

    def with_density_scale(self, density_scale: float) -> Phantom:
        """A copy with another ``density_scale`` (> 0)."""
        return self._replace(density_scale=_number(density_scale, "density_scale", positive=True))

    # -- files -------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The phantom as plain Python (the content of a phantom file, schema version 1)."""
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "description": self.description,
            "reference": self.reference,
            "units": {"length": "mm", "density": self.density_unit},
            "density_scale": self.density_scale,
            "shapes": [s.to_dict() for s in self.shapes],
        }

    @classmethod
    def from_dict(cls, d: dict, where: str = "phantom", default_name: str = "phantom") -> Phantom:
        """Build a phantom from its file content, validating every field.

        Parameters
        ----------
        d : dict
            Keys: ``schema`` (``"tomoprior.phantom"``), ``schema_version`` (1), ``shapes``
            (non-empty list, see :func:`~tomoprior.phantoms.shapes.shape_from_dict`), and
            optionally ``name``, ``description``, ``reference`` (strings), ``units``
            (``{length: mm, density: <unit>}``) and ``density_scale`` (number > 0).
        where : str, optional
            Prefix for error messages, e.g. the file path.
        default_name : str, optional
            Name used when ``d`` has none.

        Returns
        -------
        Phantom

        Raises
        ------
        ValueError
            Wrong schema or version, unknown or missing keys, or any invalid field; the
            message names it, e.g. ``shapes[3].semi_axes[1] must be > 0``.
        """
        pre = f"{where}: "
        if not isinstance(d, dict):
            raise ValueError(
                f"{pre}a phantom must be a mapping with schema, schema_version and shapes, got {type(d).__name__}"
            )
        unknown = set(d) - set(TOP_LEVEL_KEYS)
        if unknown:
            raise ValueError(f"{pre}unknown key(s) {brief(sorted(map(str, unknown)))}; allowed: {list(TOP_LEVEL_KEYS)}")
        if d.get("schema") != SCHEMA:
            raise ValueError(f"{pre}schema must be {SCHEMA!r}, got {brief(d.get('schema'))}")
        version = d.get("schema_version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError(f"{pre}schema_version must be a positive integer, got {brief(version)}")
        if version > SCHEMA_VERSION:
            raise ValueError(
                f"{pre}schema_version {version} is newer than this tomoprior reads "
                f"({SCHEMA_VERSION}); upgrade tomoprior"
            )
        meta = {}
        for key in ("name", "description", "reference"):
            value = d.get(key, default_name if key == "name" else "")
            if not isinstance(value, str):
                raise ValueError(f"{pre}{key} must be a string, got {brief(value)}")
            meta[key] = value
        if not meta["name"]:
            raise ValueError(f"{pre}name must not be empty")
        density_unit = _parse_units(d.get("units", {"length": "mm", "density": "1/mm"}), pre)
        density_scale = _number(d.get("density_scale", 1.0), f"{pre}density_scale", positive=True)
        shapes = d.get("shapes")
        if not isinstance(shapes, list) or not shapes:
            raise ValueError(f"{pre}shapes must be a non-empty list of shapes, got {brief(shapes)}")
        built = [shape_from_dict(s, where=f"{pre}shapes[{i}]") for i, s in enumerate(shapes)]
        return cls(built, density_unit=density_unit, density_scale=density_scale, **meta)

    def save(self, path) -> Path:
        """Write the phantom as a YAML file (atomically) and return its path."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, allow_unicode=True, width=100)
        target = Path(path)
        write_text_atomic(target, text)
        return target

    @classmethod
    def load(cls, name_or_path, density_scale: float | None = None) -> Phantom:
        """Load a phantom by name or from a YAML file.

        Parameters
        ----------
        name_or_path : str or os.PathLike
            A bare name such as ``"shepp_logan_3d_modified"`` is looked up as
            ``<folder>/<name>.yaml`` (or ``.yml``) in the folders of ``TOMOPRIOR_PHANTOM_PATH``
            (``os.pathsep``-separated), then the shipped phantoms (:data:`PACKAGE_PHANTOM_DIR`,
            the repository's top-level ``phantoms/``). A path
            (contains a separator or ends in ``.yaml``/``.yml``) is read directly.
        density_scale : float, optional
            Overrides the file's ``density_scale`` (> 0).

        Returns
        -------
        Phantom

        Raises
        ------
        ValueError
            Unknown name (the message lists the available ones), missing file, invalid YAML
            or invalid content (the message names the field).

        Examples
        --------
        >>> ph = Phantom.load("shepp_logan_3d_modified")
        >>> len(ph), ph.density_scale, ph.density_unit
        (10, 0.1, '1/mm')
        """
        path = find(name_or_path)
        data = load_yaml(path, what="phantom file")
        phantom = cls.from_dict(data, where=str(path), default_name=path.stem)
        if density_scale is not None:
            phantom = phantom.with_density_scale(density_scale)
        return phantom


# -- helpers --------------------------------------------------------------------------------


def _parse_units(units, pre: str) -> str:
    if not isinstance(units, dict):
        raise ValueError(f"{pre}units must be a mapping {{length: mm, density: <unit>}}, got {brief(units)}")
    unknown = set(units) - set(UNIT_KEYS)
    if unknown:
        raise ValueError(f"{pre}units has unknown key(s) {brief(sorted(map(str, unknown)))}; "
                         f"allowed: {list(UNIT_KEYS)}")
    length = units.get("length", "mm")
    if length != "mm":
        raise ValueError(f"{pre}units.length must be 'mm' (tomoprior works in millimetres), got {brief(length)}")
    density = units.get("density", "1/mm")
    if not isinstance(density, str) or not density:
        raise ValueError(f"{pre}units.density must be a non-empty string such as '1/mm', got {brief(density)}")
    return density


def _check_supersample(supersample) -> int:
    if isinstance(supersample, bool) or not isinstance(supersample, int):
        if hasattr(supersample, "__index__") and not isinstance(supersample, bool):
            supersample = int(supersample.__index__())
        else:
            raise ValueError(
                f"supersample must be a positive integer (sub-samples per voxel and axis), got {brief(supersample)}"
            )
    if supersample < 1:
        raise ValueError(f"supersample must be a positive integer (sub-samples per voxel and axis), got {supersample}")
    return supersample


def _index_range(centres: Tensor, spacing: float, lo: float, hi: float) -> tuple[int, int] | None:
    """Half-open index range of the voxels along one axis whose extent meets ``[lo, hi]``."""
    hit = torch.nonzero((centres + spacing / 2 >= lo) & (centres - spacing / 2 <= hi)).flatten()
    if hit.numel() == 0:
        return None
    return int(hit[0]), int(hit[-1]) + 1


def _rasterize_shape(out: Tensor, shape: Shape, rho: float, grid, k: int) -> None:
    """Add ``rho * (fraction of each voxel's k^3 sub-samples inside shape)`` to ``out``."""
    sz, sy, sx = (float(s) for s in grid.spacing)
    x, y, z = grid.axis_coordinates(dtype=torch.float64)
    lo, hi = (t.detach().double().cpu().tolist() for t in shape.bounding_box())
    ranges = [_index_range(c, s, a, b) for c, s, a, b in zip((x, y, z), (sx, sy, sz), lo, hi)]
    if any(r is None for r in ranges):
        return
    (i0, i1), (j0, j1), (k0, k1) = ranges
    nx_r, ny_r = i1 - i0, j1 - j0
    offsets = (torch.arange(k, dtype=torch.float64) + 0.5) / k - 0.5
    x_first = float(x[i0]) + float(offsets[0]) * sx  # first sub-sample along each x line
    n_sub = nx_r * k
    # sub-sample index at voxel boundaries: voxel i holds sub-samples [i k, (i+1) k)
    bounds = torch.arange(nx_r + 1, dtype=torch.float64) * k
    step = torch.tensor([sx / k, 0.0, 0.0], dtype=torch.float64)  # t counts sub-samples
    line_cost = k * k * (nx_r + 1)
    y_rows = max(1, min(ny_r, RASTER_CHUNK_ELEMENTS // line_cost))
    z_slices = max(1, RASTER_CHUNK_ELEMENTS // (line_cost * y_rows)) if y_rows == ny_r else 1
    for c0 in range(k0, k1, z_slices):
        c1 = min(k1, c0 + z_slices)
        zs = (z[c0:c1, None] + offsets * sz).reshape(-1)
        for r0 in range(j0, j1, y_rows):
            r1 = min(j1, r0 + y_rows)
            ys = (y[r0:r1, None] + offsets * sy).reshape(-1)
            origins = torch.stack(
                [
                    torch.full((zs.numel(), ys.numel()), x_first, dtype=torch.float64),
                    ys[None, :].expand(zs.numel(), -1),
                    zs[:, None].expand(-1, ys.numel()),
                ],
                dim=-1,
            )
            t_in, t_out = shape.interval(origins, step)
            first = torch.ceil(t_in).clamp(0, n_sub)
            last = torch.floor(t_out).clamp(-1, n_sub - 1)
            n_in = (last - first + 1).clamp(min=0)
            # inside sub-samples before each boundary, then per-voxel counts by differencing
            before = torch.minimum((bounds - first[..., None]).clamp(min=0), n_in[..., None])
            counts = before[..., 1:] - before[..., :-1]
            counts = counts.reshape(c1 - c0, k, r1 - r0, k, nx_r).sum(dim=(1, 3))
            out[c0:c1, r0:r1, i0:i1] += (rho / k**3) * counts.to(out.device)


# -- finding phantom files ------------------------------------------------------------------


def search_path() -> list[Path]:
    """Folders searched for phantom files by name, in order.

    ``TOMOPRIOR_PHANTOM_PATH`` entries first, then the phantoms shipped with the package
    (:data:`PACKAGE_PHANTOM_DIR`: the repository's top-level ``phantoms/``, or its copy in an
    installed wheel). Only existing folders are listed.
    """
    folders = [Path(p).expanduser() for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p.strip()]
    folders.append(PACKAGE_PHANTOM_DIR)
    seen, out = set(), []
    for f in folders:
        key = f.resolve() if f.exists() else f
        if f.is_dir() and key not in seen:
            seen.add(key)
            out.append(f)
    return out


def _candidates() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in search_path():
        try:
            entries = sorted(folder.iterdir())
        except OSError:
            continue  # an unreadable folder on the search path holds no phantoms for us
        for path in entries:
            if path.suffix in (".yaml", ".yml") and path.is_file():
                found.setdefault(path.stem, path)  # earlier folders win
    return found


def available_phantoms() -> list[str]:
    """Names of the phantom files (``schema: tomoprior.phantom``) on the search path, sorted.

    Other YAML files in the same folders (bead phantoms, skull presets) are not listed.

    Examples
    --------
    >>> {"shepp_logan_3d", "shepp_logan_3d_modified"} <= set(available_phantoms())
    True
    """
    return names_with_schema(SCHEMA)


available = deprecated_alias(available_phantoms, "tomoprior.phantoms.available",
                             "tomoprior.phantoms.available_phantoms")


def names_with_schema(schema: str) -> list[str]:
    """Names of the YAML files on the phantom search path whose ``schema`` field is ``schema``."""
    names = []
    for name, path in _candidates().items():
        try:
            data = load_yaml(path, what="phantom file")
        except DocumentError:
            continue  # unreadable files are reported when loaded by name, not here
        if isinstance(data, dict) and data.get("schema") == schema:
            names.append(name)
    return sorted(names)


def find(name_or_path) -> Path:
    """Resolve a phantom name or path to an existing file.

    Raises
    ------
    ValueError
        The file does not exist, or the name is unknown (the message lists available names).
    """
    if isinstance(name_or_path, os.PathLike) or (
        isinstance(name_or_path, str)
        and ("/" in name_or_path or os.sep in name_or_path or name_or_path.endswith((".yaml", ".yml")))
    ):
        path = Path(name_or_path).expanduser()
        if path.is_dir():
            raise ValueError(f"phantom file {path} is a folder; give the path of a phantom .yaml file")
        if not path.is_file():
            raise ValueError(f"phantom file {path} does not exist; give a phantom name (see `tomoprior info`) "
                             "or the path of a phantom .yaml file")
        return path
    if not isinstance(name_or_path, str) or not name_or_path:
        raise ValueError(f"a phantom is given by name or path, got {brief(name_or_path)}")
    path = _candidates().get(name_or_path)
    if path is None:
        folders = ", ".join(str(f) for f in search_path()) or "(none exist)"
        missing = "" if PACKAGE_PHANTOM_DIR.is_dir() else (
            f" The shipped phantom folder {PACKAGE_PHANTOM_DIR} is missing: reinstall tomoprior, or (a checkout "
            f"without symbolic links) set {ENV_VAR} to the repository's phantoms/ folder."
        )
        raise ValueError(
            f"unknown phantom {brief(name_or_path)}; available: {', '.join(available_phantoms()) or '(none)'}. "
            f"Searched {folders}; add folders with {ENV_VAR} or give a path to a .yaml file.{missing}"
        )
    return path


def load(name_or_path, density_scale: float | None = None) -> Phantom:
    """Shorthand for :meth:`Phantom.load`."""
    return Phantom.load(name_or_path, density_scale=density_scale)
