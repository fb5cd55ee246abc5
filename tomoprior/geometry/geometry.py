"""A volume grid plus an ordered list of views; the calibrated bi-planar special case."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch

from .grid import VolumeGrid
from .parameters import ViewParameters, default_frontal, default_lateral
from .view import View, _project_points, projection_matrix_from_vector


class GeometryWarning(UserWarning):
    """A geometry that is valid but probably not what was meant (e.g. a view misses the volume)."""


#: A view that sees less than this fraction of the volume box warns (most of the volume would
#: be cut off its X-ray).
COVERAGE_WARN_FRACTION = 0.5

#: Default grid of the pediatric setup: 128^3 voxels of 1.5 mm (192 mm field of view),
#: enough for heads up to about two years of age.
DEFAULT_GRID = VolumeGrid(shape=(128, 128, 128), spacing=(1.5, 1.5, 1.5), center=(0.0, 0.0, 0.0))


class Geometry:
    """A :class:`VolumeGrid` plus an ordered list of :class:`View` s.

    Parameters
    ----------
    grid : VolumeGrid
    views : sequence of View
        At least one. Views may differ in detector shape and pixel pitch.

    Raises
    ------
    ValueError
        If a source lies inside the volume box, or the inputs have the wrong types.

    Warns
    -----
    GeometryWarning
        If no ray of a view passes through the volume box (it lies behind the source,
        beyond the detector, or outside the cone), or if a detector plane cuts through the
        box. Rays run from the source to the pixel only, in every projector and in the
        phantoms' exact line integrals, so nothing beyond a detector is ever projected.
        How much of the box each view sees is :meth:`coverage`; :meth:`warn_if_partly_seen`
        warns when it is less than half (e.g. a real CT placed off-centre in scanner
        coordinates, see :meth:`ParametricGeometry.aimed_at`).

    Examples
    --------
    >>> import tomoprior as tp
    >>> geom = tp.BiplanarGeometry.from_parameters(binning=8)
    >>> geom.project_points([[0.0, 0.0, 0.0]]).shape
    torch.Size([2, 1, 2])
    """

    def __init__(self, grid: VolumeGrid, views: Sequence[View]):
        if not isinstance(grid, VolumeGrid):
            raise ValueError(f"grid must be a tomoprior VolumeGrid, got {type(grid).__name__}")
        if isinstance(views, View):
            views = [views]
        views = tuple(views)
        if not views:
            raise ValueError("views must contain at least one View")
        for i, v in enumerate(views):
            if not isinstance(v, View):
                raise ValueError(f"views[{i}] must be a tomoprior View, got {type(v).__name__}")
        self.grid = grid
        self.views = views
        self._validate()

    def _validate(self) -> None:
        lo, hi = (np.asarray(b) for b in self.grid.bounds())
        for i, view in enumerate(self.views):
            label = f"views[{i}]" + (f" ({view.name})" if view.name else "")
            s = view.source.detach().double().cpu().numpy()
            if np.all(s > lo) and np.all(s < hi):
                raise ValueError(
                    f"{label}: the source {s.tolist()} lies inside the volume box {lo.tolist()}..{hi.tolist()} mm; "
                    "an X-ray source must be outside the reconstructed volume"
                )
            relation = volume_relation(view, self.grid)
            box = f"{lo.tolist()}..{hi.tolist()} mm"
            message = {
                "behind_source": f"the volume box {box} lies behind the source (on the side away from the "
                                 "detector): no ray reaches it and its projection will be all zeros",
                "beyond_detector": f"the detector lies between the source and the volume box {box}: rays end at "
                                   "the detector, none reaches the volume and its projection will be all zeros; "
                                   "move the detector behind the volume",
                "cut_by_detector": f"the detector plane cuts through the volume box {box}: rays end at the "
                                   "detector, so the part of the volume beyond it is not projected; move the "
                                   "detector behind the volume",
                "misses": f"no ray of this view passes through the volume box {box}; its projection will be "
                          "all zeros",
            }.get(relation)
            if message is not None:
                warnings.warn(f"{label}: {message}", GeometryWarning, stacklevel=3)

    def warn_if_partly_seen(self, fraction: float = COVERAGE_WARN_FRACTION, stacklevel: int = 2) -> tuple[float, ...]:
        """Warn (:class:`GeometryWarning`) for every view that sees less than ``fraction`` of the
        volume box (but some of it: a view that sees none already warned when the geometry was
        made). Called where a volume's own grid meets a geometry, e.g.
        :meth:`BiplanarGeometry.from_parameters` with ``grid=``. Returns :meth:`coverage`."""
        seen = self.coverage()
        lo, hi = self.grid.bounds()
        for i, (view, f) in enumerate(zip(self.views, seen)):
            if f >= fraction or volume_relation(view, self.grid) != "sees":
                continue
            label = f"views[{i}]" + (f" ({view.name})" if view.name else "")
            centre = [round(float(c), 1) for c in self.grid.center]
            box = f"{[round(float(x), 1) for x in lo]}..{[round(float(x), 1) for x in hi]} mm"
            warnings.warn(f"{label}: only {f:.0%} of the volume box {box} (centre {centre} mm) projects onto the "
                          "detector; the rest is cut off its X-ray. Aim the views at the volume "
                          "(BiplanarGeometry.from_parameters(..., grid=grid, isocenter='volume') or "
                          "geometry.aimed_at(grid)), move the volume (grid.center) or use a larger detector",
                          GeometryWarning, stacklevel=stacklevel + 1)
        return seen

    def coverage(self) -> tuple[float, ...]:
        """Per view, the fraction of the volume box whose rays reach the detector (see
        :func:`volume_coverage`)."""
        return tuple(volume_coverage(v, self.grid) for v in self.views)

    # -- basic properties ---------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.views)

    def __iter__(self):
        return iter(self.views)

    def __getitem__(self, index) -> View:
        return self.views[index]

    @property
    def num_views(self) -> int:
        return len(self.views)

    @property
    def names(self) -> list[str | None]:
        return [v.name for v in self.views]

    @property
    def detector_shapes(self) -> list[tuple[int, int]]:
        return [v.shape for v in self.views]

    @property
    def uniform_detector(self) -> bool:
        """True when every view has the same detector shape (projections stack into one array)."""
        return len(set(self.detector_shapes)) == 1

    @property
    def projection_shape(self) -> tuple[int, int, int]:
        """``(views, rows, cols)``; requires a uniform detector shape."""
        if not self.uniform_detector:
            raise ValueError(
                f"views have different detector shapes {self.detector_shapes}; projections are a tuple of "
                "per-view arrays, not one (views, rows, cols) array"
            )
        return (len(self.views), *self.views[0].shape)

    @property
    def vectors(self) -> torch.Tensor:
        """``(views, 12)`` stacked view vectors (ASTRA ``cone_vec`` rows), differentiable."""
        dtype = self.views[0].dtype
        for v in self.views[1:]:
            dtype = torch.promote_types(dtype, v.dtype)
        device = self.views[0].device
        return torch.stack([v.vector.to(dtype=dtype, device=device) for v in self.views])

    @property
    def requires_grad(self) -> bool:
        return any(v.vector.requires_grad for v in self.views)

    # -- points and matrices ------------------------------------------------------------
    def project_points(self, xyz) -> torch.Tensor:
        """Project world points into every view.

        Parameters
        ----------
        xyz : array-like, shape ``(n, 3)``
            World ``(x, y, z)`` in mm.

        Returns
        -------
        Tensor, shape ``(views, n, 2)``
            Pixel coordinates ``(col, row)`` (integer values at pixel centres). NaN (with a
            warning) for points on or behind a view's source plane.
        """
        return torch.stack([_project_points(v.vector, v.shape, xyz) for v in self.views])

    def projection_matrices(self) -> torch.Tensor:
        """``(views, 3, 4)`` homogeneous projection matrices: ``(col, row, 1) ~ P (x, y, z, 1)``."""
        return torch.stack([projection_matrix_from_vector(v.vector, v.shape) for v in self.views])

    # -- conversions --------------------------------------------------------------------
    def to(self, dtype=None, device=None) -> Geometry:
        return Geometry(self.grid, [v.to(dtype=dtype, device=device) for v in self.views])

    def detach(self) -> Geometry:
        return Geometry(self.grid, [v.detach() for v in self.views])

    def with_grid(self, grid: VolumeGrid) -> Geometry:
        """The same views over another voxel grid."""
        return Geometry(grid, self.views)

    def to_astra(self) -> tuple[dict, dict]:
        """ASTRA ``(vol_geom, proj_geom)`` dicts; see :mod:`tomoprior.geometry.astra_convert`."""
        from .astra_convert import geometry_to_astra

        return geometry_to_astra(self)

    @classmethod
    def from_astra(cls, vol_geom: dict, proj_geom: dict, names: Sequence[str] | None = None) -> Geometry:
        """Build a geometry from ASTRA ``vol_geom`` and ``cone_vec`` ``proj_geom`` dicts."""
        from .astra_convert import geometry_from_astra

        return geometry_from_astra(vol_geom, proj_geom, names=names)

    def to_tomosipo(self) -> tuple:
        """tomosipo ``(volume, cone_vec)`` geometries (needs tomosipo installed)."""
        from .tomosipo_convert import to_tomosipo

        return to_tomosipo(self)

    @classmethod
    def from_tomosipo(cls, vg, pg, names: Sequence[str] | None = None) -> Geometry:
        """Build a geometry from tomosipo volume and ``cone_vec`` projection geometries."""
        from .tomosipo_convert import from_tomosipo

        return from_tomosipo(vg, pg, names=names)

    def to_dict(self) -> dict:
        from .io import geometry_to_dict

        return geometry_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Geometry:
        from .io import geometry_from_dict

        return geometry_from_dict(d)

    def save(self, path) -> None:
        """Write the geometry to ``path`` (``.yaml``/``.yml`` or ``.json``), atomically."""
        from .io import save_geometry

        save_geometry(self, path)

    @classmethod
    def load(cls, path) -> Geometry:
        """Read a geometry written by :meth:`save` (YAML or JSON, by extension)."""
        from .io import load_geometry

        return load_geometry(path)

    def __repr__(self) -> str:
        views = ",\n  ".join(repr(v) for v in self.views)
        return f"{type(self).__name__}(grid={self.grid},\n  {views})"


class ParametricGeometry(Geometry):
    """A geometry built from physical parameters: any number of views, each a
    :class:`ViewParameters` (9 degrees of freedom plus the shared isocenter).

    The :attr:`parameters` are kept, so the geometry is saved with its physical description,
    rebuilt from it, refined by calibration or perturbed (:meth:`perturbed`). Code that needs
    physical parameters tests ``isinstance(g, ParametricGeometry)``; the bi-planar case is
    the thin specialisation :class:`BiplanarGeometry`.

    Parameters
    ----------
    grid : VolumeGrid
    parameters : sequence of ViewParameters
        At least one.
    """

    def __init__(self, grid: VolumeGrid, parameters: Sequence[ViewParameters]):
        if isinstance(parameters, ViewParameters):
            parameters = [parameters]
        parameters = tuple(parameters)
        if not parameters:
            raise ValueError("a ParametricGeometry needs at least one ViewParameters")
        for i, p in enumerate(parameters):
            if not isinstance(p, ViewParameters):
                raise ValueError(f"parameters[{i}] must be ViewParameters, got {type(p).__name__}")
        self.parameters = parameters
        super().__init__(grid, [p.to_view() for p in parameters])

    @classmethod
    def of(cls, grid: VolumeGrid, parameters: Sequence[ViewParameters]) -> ParametricGeometry:
        """The most specific class for these parameters: a :class:`BiplanarGeometry` for two
        views, else a :class:`ParametricGeometry`."""
        parameters = tuple(parameters)
        return BiplanarGeometry(grid, parameters) if len(parameters) == 2 else ParametricGeometry(grid, parameters)

    def with_grid(self, grid: VolumeGrid) -> ParametricGeometry:
        return type(self)(grid, self.parameters)

    def aimed_at(self, grid: VolumeGrid | None = None) -> ParametricGeometry:
        """The same views moved so that their shared isocenter is the centre of ``grid``.

        Real CTs sit where the scanner put them (e.g. a volume centred at (101, -101, -69) mm),
        while a geometry's isocenter is at the origin unless set: without aiming, most of
        such a volume falls outside the detectors. Moving the isocenter moves every source and
        detector rigidly (the calibrated angles, distances and detector offsets are kept).

        Parameters
        ----------
        grid : VolumeGrid, optional
            The volume to aim at; also becomes the geometry's grid. Default: the current grid.

        Examples
        --------
        >>> from tomoprior.geometry import VolumeGrid
        >>> grid = VolumeGrid((32, 32, 32), (4.0, 4.0, 4.0), center=(100.0, -100.0, -70.0))
        >>> g = BiplanarGeometry.from_parameters(binning=8).aimed_at(grid)
        >>> [float(x) for x in g.parameters[0].isocenter], [round(c, 2) for c in g.coverage()]
        ([100.0, -100.0, -70.0], [1.0, 1.0])
        """
        grid = self.grid if grid is None else grid
        if not isinstance(grid, VolumeGrid):
            raise ValueError(f"aimed_at: grid must be a VolumeGrid, got {type(grid).__name__}")
        iso = tuple(float(c) for c in grid.center)
        return type(self)(grid, [p.replace(isocenter=iso) for p in self.parameters])

    def with_parameters(self, parameters: Sequence[ViewParameters]) -> ParametricGeometry:
        """The same grid with other view parameters (e.g. calibrated ones)."""
        return ParametricGeometry.of(self.grid, parameters)

    def perturbed(self, deltas) -> ParametricGeometry:
        """A miscalibrated copy: parameter errors added view by view.

        Parameters
        ----------
        deltas : dict or sequence of dict
            Per view (a list in view order, or a dict keyed by view name) a mapping of
            parameter -> error, as :meth:`ViewParameters.perturbed` takes it (``_deg`` names
            for angles in degrees). Views not named are unchanged.

        Examples
        --------
        >>> g = BiplanarGeometry.from_parameters(binning=8)
        >>> t = g.perturbed({"frontal": {"source_to_detector": 12.0, "detector_tilt_u_deg": 1.0}})
        >>> float(t.parameters[0].source_to_detector), float(t.parameters[1].source_to_detector)
        (1512.0, 1500.0)
        """
        if isinstance(deltas, dict):
            names = [p.name for p in self.parameters]
            unknown = sorted(set(deltas) - set(names))
            if unknown:
                raise ValueError(f"perturbed: unknown view name(s) {unknown}; the views are {names}")
            per_view = [deltas.get(n) or {} for n in names]
        else:
            per_view = list(deltas)
            if len(per_view) != len(self.parameters):
                raise ValueError(f"perturbed: {len(per_view)} sets of errors for {len(self.parameters)} views")
        return type(self)(self.grid, [p.perturbed(**d) for p, d in zip(self.parameters, per_view)])

    def to(self, dtype=None, device=None) -> Geometry:
        return Geometry(self.grid, [v.to(dtype=dtype, device=device) for v in self.views])


class BiplanarGeometry(ParametricGeometry):
    """The calibrated two-view case (frontal + lateral): a :class:`ParametricGeometry` with
    exactly two views and the pediatric defaults of :meth:`from_parameters`."""

    def __init__(self, grid: VolumeGrid, parameters: Sequence[ViewParameters]):
        parameters = tuple(parameters)
        if len(parameters) != 2:
            raise ValueError(f"a BiplanarGeometry has exactly two views (frontal, lateral), got {len(parameters)}; "
                             "use ParametricGeometry for another number of views")
        super().__init__(grid, parameters)

    @classmethod
    def from_parameters(
        cls,
        frontal: ViewParameters | None = None,
        lateral: ViewParameters | None = None,
        grid: VolumeGrid | None = None,
        *,
        binning: int = 1,
        isocenter=None,
    ) -> BiplanarGeometry:
        """A bi-planar geometry; defaults are the pediatric skull setup.

        Parameters
        ----------
        frontal, lateral : ViewParameters, optional
            Default: PA frontal and left lateral, source-to-isocenter 1000 mm,
            source-to-detector 1500 mm (magnification 1.5), 1536 x 1536 pixels of 0.2 mm
            (see :mod:`tomoprior.geometry.parameters` for where these come from).
        grid : VolumeGrid, optional
            Default 128^3 voxels of 1.5 mm centred on the isocenter. A view that sees less
            than half of a given grid's box warns (:meth:`warn_if_partly_seen`).
        binning : int
            Detector binning applied to both views (e.g. 4 -> 384 x 384 pixels of 0.8 mm),
            convenient for fast simulation.
        isocenter : "volume" or (x, y, z) mm, optional
            Where both views aim, replacing the views' own isocenter: ``"volume"`` is the
            centre of ``grid`` (as :meth:`aimed_at`), for real CTs that sit off-centre in
            scanner coordinates. Default: the views' isocenter (the origin for the defaults).

        Examples
        --------
        >>> from tomoprior.geometry import VolumeGrid
        >>> ct = VolumeGrid((93, 64, 64), (1.5, 3.2, 3.2), center=(100.8, -100.8, -69.0))
        >>> g = BiplanarGeometry.from_parameters(grid=ct, binning=8, isocenter="volume")
        >>> [round(c, 2) for c in g.coverage()]
        [1.0, 1.0]
        """
        frontal = default_frontal() if frontal is None else frontal
        lateral = default_lateral() if lateral is None else lateral
        if binning != 1:
            frontal, lateral = frontal.binned(binning), lateral.binned(binning)
        given_grid = grid is not None
        grid = DEFAULT_GRID if grid is None else grid
        if isocenter is not None:
            if isinstance(isocenter, str):
                if isocenter != "volume":
                    raise ValueError(f"isocenter must be 'volume' or (x, y, z) in mm, got {isocenter!r}")
                if not isinstance(grid, VolumeGrid):
                    raise ValueError(f"grid must be a tomoprior VolumeGrid, got {type(grid).__name__}")
                isocenter = tuple(float(c) for c in grid.center)
            frontal, lateral = frontal.replace(isocenter=isocenter), lateral.replace(isocenter=isocenter)
        geometry = cls(grid, (frontal, lateral))
        if given_grid:
            geometry.warn_if_partly_seen(stacklevel=2)
        return geometry

    @property
    def frontal(self) -> View:
        return self.views[0]

    @property
    def lateral(self) -> View:
        return self.views[1]


def volume_relation(view: View, grid: VolumeGrid) -> str:
    """Where the volume box lies for one view; rays run from the source to the detector only.

    Returns
    -------
    str
        ``"sees"``: some ray may cross the box (conservative); ``"behind_source"``: the box
        is entirely on the side of the source away from the detector; ``"beyond_detector"``:
        entirely beyond the detector plane; ``"cut_by_detector"``: the detector plane passes
        through the box (the part beyond it is not projected); ``"misses"``: the box is in
        front of the detector but its image falls outside the detector.
    """
    return _relation(view, grid.corners())


def volume_coverage(view: View, grid: VolumeGrid, samples: int = 8) -> float:
    """The fraction of the volume box that ``view`` sees: whose rays from the source reach the
    detector, in front of the source and before the detector plane.

    Estimated on a ``samples^3`` lattice of points at the centres of equal cells of the box
    (default 512 points; exact to about ``1/samples`` of the box along each axis).

    Returns
    -------
    float in [0, 1]
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive integer, got {samples!r}")
    lo, hi = (np.asarray(b, dtype=np.float64) for b in grid.bounds())
    t = (np.arange(samples) + 0.5) / samples
    axes = [lo[a] + t * (hi[a] - lo[a]) for a in range(3)]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    vec = view.vector.detach().double().cpu()
    s, c = vec[0:3].numpy(), vec[3:6].numpy()
    n = np.cross(vec[6:9].numpy(), vec[9:12].numpy())
    n = n / np.linalg.norm(n)
    toward_det = n if np.dot(c - s, n) > 0 else -n
    depth = (pts - s) @ toward_det
    in_slab = (depth > 0) & (depth < float(np.dot(c - s, toward_det)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pix = _project_points(vec, view.shape, torch.as_tensor(pts), warn=False).numpy()
    rows, cols = view.shape
    on_detector = ((pix[:, 0] >= -0.5) & (pix[:, 0] <= cols - 0.5) & (pix[:, 1] >= -0.5) & (pix[:, 1] <= rows - 0.5))
    return float(np.count_nonzero(in_slab & on_detector)) / len(pts)


def view_sees_box(view: View, corners) -> bool:
    """Whether some ray of ``view`` (source to pixel) may pass through the box with the given
    corners ``(8, 3)`` mm (e.g. ``grid.corners()``); conservative."""
    return _relation(view, np.asarray(corners, dtype=np.float64)) in ("sees", "cut_by_detector")


def _relation(view: View, corners: np.ndarray) -> str:
    vec = view.vector.detach().double().cpu()
    s, c = vec[0:3].numpy(), vec[3:6].numpy()
    n = np.cross(vec[6:9].numpy(), vec[9:12].numpy())
    n = n / np.linalg.norm(n)
    toward_det = n if np.dot(c - s, n) > 0 else -n
    det_depth = float(np.dot(c - s, toward_det))
    depth = (corners - s) @ toward_det
    if np.all(depth <= 0):
        return "behind_source"
    if np.all(depth >= det_depth):
        return "beyond_detector"
    if np.any(depth > det_depth):
        return "cut_by_detector"
    if np.any(depth <= 0):
        # the box straddles the source plane: its image is unbounded, assume it is seen
        return "sees"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pix = _project_points(vec, view.shape, torch.as_tensor(corners), warn=False).numpy()
    rows, cols = view.shape
    cmin, rmin = pix.min(axis=0)
    cmax, rmax = pix.max(axis=0)
    if cmax >= -0.5 and cmin <= cols - 0.5 and rmax >= -0.5 and rmin <= rows - 0.5:
        return "sees"
    return "misses"


def magnification_at(view: View, point=(0.0, 0.0, 0.0)) -> float:
    """Magnification of ``view`` at a world point (default the origin)."""
    return float(view.magnification(torch.as_tensor(point, dtype=view.dtype)).detach())


def isocenter_pixel_size(view: View, point=(0.0, 0.0, 0.0)) -> tuple[float, float]:
    """``(row, col)`` pixel size back-projected to the plane through ``point``, mm.

    This is the number that must agree between the projector that made a set of DRRs and
    the back-projector that lifts them (PSCT-Net's public code: ~1.0 vs ~0.83 mm).
    """
    m = magnification_at(view, point)
    pr, pc = view.pixel_pitch
    return (pr / m, pc / m)


__all__ = [
    "COVERAGE_WARN_FRACTION",
    "DEFAULT_GRID",
    "BiplanarGeometry",
    "Geometry",
    "GeometryWarning",
    "ParametricGeometry",
    "isocenter_pixel_size",
    "magnification_at",
    "view_sees_box",
    "volume_coverage",
    "volume_relation",
]

