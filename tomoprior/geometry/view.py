"""One X-ray shot: a point source and a flat, possibly tilted, pixel detector."""

from __future__ import annotations

import warnings

import torch

from .._yaml import brief
from ._tensor import as_positive_int_pair, as_vector3, common_float_dtype

#: Relative tolerance below which u and v count as parallel (|u_hat x v_hat| < this).
PARALLEL_TOL = 1e-9
#: Distance in mm below which the source counts as lying on the detector plane.
ON_PLANE_TOL_MM = 1e-6
#: Largest coordinate or vector component accepted, mm (1000 km): larger numbers are typos
#: and would overflow the ray arithmetic.
MAX_COORD_MM = 1e9


class View:
    """One X-ray shot in the world frame (patient LPS, mm), ASTRA ``cone_vec`` compatible.

    Parameters
    ----------
    source : (3,)
        Focal spot position ``(x, y, z)`` in mm.
    detector_center : (3,)
        World position of the detector centre, i.e. of the pixel coordinate
        ``((cols-1)/2, (rows-1)/2)``. For even sizes this is a pixel corner.
    u : (3,)
        World vector from pixel ``(0, 0)`` to pixel ``(0, 1)`` (the next column); its length
        is the column pitch in mm.
    v : (3,)
        World vector from pixel ``(0, 0)`` to pixel ``(1, 0)`` (the next row); its length is
        the row pitch in mm.
    shape : (rows, cols)
        Detector size in pixels.
    name : str, optional
        A label such as ``"frontal"``; kept in files and reports.

    Notes
    -----
    Pixel ``(r, c)`` has its centre at
    ``detector_center + (c - (cols-1)/2) * u + (r - (rows-1)/2) * v``; the 12 numbers
    ``(source, detector_center, u, v)`` are exactly one row of ASTRA's ``cone_vec``.

    The vectors are kept as torch tensors. Numbers and numpy arrays become float64 CPU
    tensors; floating tensors keep their dtype, device and autograd history, so a view
    built from differentiable physical parameters passes gradients on to the projectors.

    Raises
    ------
    ValueError
        Non-finite values, a non-positive shape or pitch, ``u`` parallel to ``v``, or the
        source lying on the detector plane. The message names the field.
    """

    def __init__(self, source, detector_center, u, v, shape, name: str | None = None):
        if name is not None and not isinstance(name, str):
            raise ValueError(f"view name must be a string, got {brief(name)}")
        label = f"view {brief(name, 60)}" if name else "view"
        s = as_vector3(source, f"{label}: source")
        c = as_vector3(detector_center, f"{label}: detector_center")
        uu = as_vector3(u, f"{label}: u")
        vv = as_vector3(v, f"{label}: v")
        self.shape = as_positive_int_pair(shape, f"{label}: shape (rows, cols)")
        self.name = name
        dtype = common_float_dtype(s, c, uu, vv)
        device = s.device
        self.source, self.detector_center, self.u, self.v = (
            t.to(dtype=dtype, device=device) for t in (s, c, uu, vv)
        )
        self._validate(label)

    def _validate(self, label: str) -> None:
        for field, t in (("source", self.source), ("detector_center", self.detector_center), ("u", self.u),
                         ("v", self.v)):
            big = float(t.detach().double().abs().max())
            if big > MAX_COORD_MM:
                raise ValueError(f"{label}: {field} has a component of {big:.3g} mm, beyond the {MAX_COORD_MM:.0e} mm "
                                 "a geometry may use; check the units (millimetres) and the number")
        u = self.u.detach().double()
        v = self.v.detach().double()
        nu, nv = torch.linalg.norm(u), torch.linalg.norm(v)
        if not nu > 0:
            raise ValueError(f"{label}: u has zero length; its length is the column pixel pitch in mm and must be > 0")
        if not nv > 0:
            raise ValueError(f"{label}: v has zero length; its length is the row pixel pitch in mm and must be > 0")
        cross = torch.linalg.cross(u / nu, v / nv)
        if torch.linalg.norm(cross) < PARALLEL_TOL:
            raise ValueError(
                f"{label}: u and v are parallel ({u.tolist()} vs {v.tolist()}); they must span the detector plane"
            )
        n = cross / torch.linalg.norm(cross)
        dist = torch.dot(self.source.detach().double() - self.detector_center.detach().double(), n).abs()
        if dist < ON_PLANE_TOL_MM:
            raise ValueError(
                f"{label}: the source lies on the detector plane (distance {float(dist):.3g} mm); "
                "move source or detector_center so that the source is in front of the detector"
            )

    # -- basic properties ---------------------------------------------------------------
    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def cols(self) -> int:
        return self.shape[1]

    @property
    def num_pixels(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.source.dtype

    @property
    def device(self) -> torch.device:
        return self.source.device

    @property
    def pixel_pitch(self) -> tuple[float, float]:
        """``(row pitch, column pitch)`` = ``(|v|, |u|)`` in mm."""
        return (float(torch.linalg.norm(self.v.detach())), float(torch.linalg.norm(self.u.detach())))

    @property
    def vector(self) -> torch.Tensor:
        """The 12-vector ``(source, detector_center, u, v)``: one ASTRA ``cone_vec`` row."""
        return torch.cat([self.source, self.detector_center, self.u, self.v])

    @property
    def normal(self) -> torch.Tensor:
        """Unit detector normal, oriented from the detector plane toward the source."""
        n = torch.linalg.cross(self.u, self.v)
        n = n / torch.linalg.norm(n)
        side = torch.dot(self.source - self.detector_center, n)
        return torch.where(side >= 0, n, -n)

    @property
    def source_to_detector(self) -> torch.Tensor:
        """Perpendicular distance in mm from the source to the detector plane (0-d tensor)."""
        return torch.dot(self.source - self.detector_center, self.normal)

    @property
    def principal_point(self) -> torch.Tensor:
        """Pixel coordinate ``(col, row)`` of the foot of the perpendicular from the source."""
        return self.project_points(self.source[None, :] - self.normal[None, :] * 0.5 * self.source_to_detector)[0]

    def magnification(self, point) -> torch.Tensor:
        """Geometric magnification (source-to-detector over source-to-point, both along the
        detector normal) of world points ``(..., 3)``."""
        p = torch.as_tensor(point, dtype=self.dtype, device=self.device)
        depth = torch.sum((self.source - p) * self.normal, dim=-1)
        return self.source_to_detector / depth

    # -- pixels and rays ----------------------------------------------------------------
    def pixel_positions(self, rows=None, cols=None) -> torch.Tensor:
        """World positions (mm) of pixel coordinates.

        Parameters
        ----------
        rows, cols : array-like, optional
            Pixel coordinates (fractions allowed) of the same shape. If both are omitted,
            every pixel centre of the detector is returned.

        Returns
        -------
        Tensor, shape ``(rows, cols, 3)`` for the full detector, else ``(*rows.shape, 3)``.
        """
        r, c = self._pixel_grid(rows, cols)
        off_c = (c - (self.cols - 1) / 2)[..., None]
        off_r = (r - (self.rows - 1) / 2)[..., None]
        return self.detector_center + off_c * self.u + off_r * self.v

    def pixel_rays(self, rows=None, cols=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The ray through pixel coordinates: ``(origins, directions)``.

        ``origins`` is the source broadcast to the pixel shape and ``directions`` is
        ``pixel_position - source`` (not normalised), so ``origin + t * direction`` runs from
        the source (t = 0) to the pixel (t = 1). Shapes are those of :meth:`pixel_positions`.
        """
        p = self.pixel_positions(rows, cols)
        d = p - self.source
        return self.source.expand_as(p), d

    def _pixel_grid(self, rows, cols):
        dtype, device = self.dtype, self.device
        if rows is None and cols is None:
            r = torch.arange(self.rows, dtype=dtype, device=device)
            c = torch.arange(self.cols, dtype=dtype, device=device)
            return torch.meshgrid(r, c, indexing="ij")
        if rows is None or cols is None:
            raise ValueError("give both rows and cols pixel coordinates, or neither for the full detector")
        r = torch.as_tensor(rows, dtype=dtype, device=device)
        c = torch.as_tensor(cols, dtype=dtype, device=device)
        if r.shape != c.shape:
            raise ValueError(f"rows and cols must have the same shape, got {tuple(r.shape)} and {tuple(c.shape)}")
        return r, c

    def project_points(self, xyz) -> torch.Tensor:
        """Exact pinhole projection of world points onto this (possibly tilted) detector.

        Parameters
        ----------
        xyz : array-like, shape ``(n, 3)``
            World points ``(x, y, z)`` in mm.

        Returns
        -------
        Tensor, shape ``(n, 2)``
            Pixel coordinates ``(col, row)``; integers are pixel centres. Points on the
            source plane (parallel to the detector) or behind the source have no image and
            give NaN, with a warning.
        """
        return _project_points(self.vector, self.shape, xyz, warn=True)

    def projection_matrix(self) -> torch.Tensor:
        """3x4 pinhole matrix ``P`` with ``(col, row, 1) ~ P @ (x, y, z, 1)`` (homogeneous).

        World points in mm, pixels ``(col, row)`` with integers at pixel centres. The sign
        is fixed: ``w = P[2] @ (x, y, z, 1) > 0`` exactly for points on the detector side of
        the source. Inverse: :meth:`from_projection_matrix`; factors: :meth:`krt`.
        """
        return projection_matrix_from_vector(self.vector, self.shape)

    def krt(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Intrinsics and pose ``(K, R, t)`` with ``P ~ K @ [R | t]`` (float64 tensors, detached).

        ``K = [[fx, skew, cx], [0, fy, cy], [0, 0, 1]]`` in pixels (``(cx, cy)`` is the
        principal point in tomoprior pixel coordinates; ``fy = source_to_detector / row pitch``
        > 0; ``|fx| = source_to_detector / column pitch`` and ``fx < 0`` for a mirrored
        image, as tomoprior's PA/lateral radiographs are). ``R`` ``(3, 3)`` is a proper
        rotation world -> camera whose third row is the beam direction (source toward
        detector, along the detector normal) and second row the row direction;
        ``t = -R @ source`` ``(3,)`` mm. A tilted detector is still a zero-skew pinhole: the
        tilt shows as the principal point (foot of the perpendicular from the source) moving
        away from the detector centre. See :mod:`tomoprior.geometry.pinhole`.
        """
        from .pinhole import view_krt

        return view_krt(self)

    @classmethod
    def from_projection_matrix(cls, P, shape, pixel_pitch, *, w_sign: int = 1, rtol: float = 1e-3,
                               name: str | None = None) -> View:
        """The view whose pinhole projection is ``P``.

        Parameters
        ----------
        P : array-like ``(3, 4)``
            ``(col, row, 1) ~ P @ (x, y, z, 1)``, world LPS mm to tomoprior pixel coordinates
            (integers at pixel centres). Any non-zero scale.
        shape : (rows, cols)
            Detector size in pixels.
        pixel_pitch : float or (row, col)
            Pixel size in mm. ``P`` fixes the detector only up to a scaling about the source;
            the pitch fixes that scale, and ``P``'s pixel aspect ratio must agree with it.
        w_sign : {+1, -1}
            Sign of ``w = P[2] @ (x, y, z, 1)`` for points the detector sees: +1 for
            tomoprior and OpenCV-style ``K [R | t]`` with ``K[2, 2] > 0``, -1 for RTK's
            matrices. ``P`` and ``-P`` map every point to the same pixel; the sign decides on
            which side of the source the detector lies.
        rtol : float
            Relative tolerance of the aspect-ratio and perpendicular-axes checks.

        Raises
        ------
        ValueError
            ``P`` is not a finite 3x4 matrix; its left 3x3 block is singular (source at
            infinity); its pixel axes are not perpendicular (skew); or its pixel aspect ratio
            disagrees with ``pixel_pitch``. The message gives the numbers.

        Examples
        --------
        >>> import tomoprior as tp
        >>> view = tp.BiplanarGeometry.from_parameters(binning=8).frontal
        >>> again = tp.View.from_projection_matrix(view.projection_matrix(), view.shape, view.pixel_pitch)
        >>> bool((again.vector - view.vector).abs().max() < 1e-6)
        True
        """
        from .pinhole import view_from_projection_matrix

        return view_from_projection_matrix(P, shape, pixel_pitch, w_sign=w_sign, rtol=rtol, name=name)

    @classmethod
    def from_krt(cls, K, R, t, shape, pixel_pitch, *, rtol: float = 1e-3, name: str | None = None) -> View:
        """The view of a camera ``P = K @ [R | t]`` (OpenCV convention: ``R`` a proper rotation
        world -> camera, camera looking along +z, ``K[2, 2] > 0``); pixels are tomoprior's
        ``(col, row)`` (subtract 0.5 from ``cx``, ``cy`` of a camera whose pixel centres are
        at half-integers). See :meth:`krt` and :meth:`from_projection_matrix`."""
        from .pinhole import projection_matrix_from_krt, view_from_projection_matrix

        return view_from_projection_matrix(projection_matrix_from_krt(K, R, t), shape, pixel_pitch, rtol=rtol,
                                           name=name)

    # -- conversions --------------------------------------------------------------------
    def to(self, dtype=None, device=None) -> View:
        """A copy with tensors moved to ``dtype`` / ``device`` (autograd history kept)."""
        return View(
            *(t.to(dtype=dtype or self.dtype, device=device or self.device) for t in
              (self.source, self.detector_center, self.u, self.v)),
            shape=self.shape,
            name=self.name,
        )

    def detach(self) -> View:
        return View(self.source.detach(), self.detector_center.detach(), self.u.detach(), self.v.detach(),
                    self.shape, self.name)

    def binned(self, factor: int) -> View:
        """The same detector read out with ``factor x factor`` binning: pixel vectors times
        ``factor``, shape divided by it, source and detector centre unchanged (the view-vector
        twin of :meth:`ViewParameters.binned`). ValueError unless ``factor`` is a positive
        integer dividing both sides."""
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise ValueError(f"binning factor must be a positive integer, got {factor!r}")
        rows, cols = self.shape
        if rows % factor or cols % factor:
            raise ValueError(f"binning factor {factor} does not divide the detector shape {self.shape}; "
                             "choose a divisor of both")
        return View(self.source, self.detector_center, self.u * factor, self.v * factor,
                    (rows // factor, cols // factor), self.name)

    @classmethod
    def from_vector(cls, vector, shape, name: str | None = None) -> View:
        """Build a view from a 12-vector ``(source, detector_center, u, v)`` (ASTRA ``cone_vec`` row)."""
        vec = vector if isinstance(vector, torch.Tensor) else torch.as_tensor(vector, dtype=torch.float64)
        if vec.shape != (12,):
            raise ValueError("a view vector has 12 numbers (source, detector_center, u, v), "
                             f"got shape {tuple(vec.shape)}")
        return cls(vec[0:3], vec[3:6], vec[6:9], vec[9:12], shape, name)

    def to_dict(self) -> dict:
        d = {}
        if self.name is not None:
            d["name"] = self.name
        d.update(
            source=[float(x) for x in self.source.detach().cpu().double()],
            detector_center=[float(x) for x in self.detector_center.detach().cpu().double()],
            u=[float(x) for x in self.u.detach().cpu().double()],
            v=[float(x) for x in self.v.detach().cpu().double()],
            shape=list(self.shape),
        )
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "view") -> View:
        if not isinstance(d, dict):
            raise ValueError(f"{where} must be a mapping, got {type(d).__name__}")
        allowed = {"name", "source", "detector_center", "u", "v", "shape"}
        unknown = set(d) - allowed
        if unknown:
            raise ValueError(f"{where} has unknown field(s) {brief(sorted(map(str, unknown)))}; "
                             f"expected {sorted(allowed)}")
        for key in ("source", "detector_center", "u", "v", "shape"):
            if key not in d:
                raise ValueError(f"{where}.{key} is missing")
        name = d.get("name")
        if name is not None and not isinstance(name, str):
            raise ValueError(f"{where}.name must be a string, got {brief(name)}")
        args = (
            as_vector3(d["source"], f"{where}.source"),
            as_vector3(d["detector_center"], f"{where}.detector_center"),
            as_vector3(d["u"], f"{where}.u"),
            as_vector3(d["v"], f"{where}.v"),
            as_positive_int_pair(d["shape"], f"{where}.shape"),
        )
        try:
            return cls(*args, name=name)
        except ValueError as exc:  # checks of the whole view: say which entry of the file
            raise ValueError(f"{where}: {exc}") from None

    def __repr__(self) -> str:
        s = [round(float(x), 3) for x in self.source.detach()]
        c = [round(float(x), 3) for x in self.detector_center.detach()]
        pr, pc = self.pixel_pitch
        return (
            f"View(name={self.name!r}, source={s}, detector_center={c}, shape={self.shape}, "
            f"pitch=({pr:.4g}, {pc:.4g}) mm, source_to_detector={float(self.source_to_detector.detach()):.2f} mm)"
        )


# -- pure functions on view vectors (shared by View and Geometry) -------------------------

def projection_matrix_from_vector(vector: torch.Tensor, shape) -> torch.Tensor:
    """3x4 homogeneous projection matrix of one view vector ``(12,)``.

    Solving ``s + t (x - s) = c + a u + b v`` for the detector coordinates ``(a, b)`` gives,
    with the detector normal ``n = u x v``, ``a = ((x - s) . (v x (c - s))) / ((x - s) . n)``
    and ``b = ((x - s) . ((c - s) x u)) / ((x - s) . n)``. Columns and rows are then
    ``a + (cols-1)/2`` and ``b + (rows-1)/2``. The matrix is multiplied by the sign of
    ``(c - s) . n`` so that its third row gives ``w > 0`` exactly for points on the detector
    side of the source, whichever way ``u x v`` points.
    """
    s, c, u, v = vector[0:3], vector[3:6], vector[6:9], vector[9:12]
    rows, cols = shape
    n = torch.linalg.cross(u, v)
    w = c - s
    a_row = torch.linalg.cross(v, w)
    b_row = torch.linalg.cross(w, u)
    # homogeneous rows acting on (x - s); fold the translation by -s into the 4th column
    num_a = torch.cat([a_row, -torch.dot(a_row, s)[None]])
    num_b = torch.cat([b_row, -torch.dot(b_row, s)[None]])
    den = torch.cat([n, -torch.dot(n, s)[None]])
    p_col = num_a + (cols - 1) / 2 * den
    p_row = num_b + (rows - 1) / 2 * den
    side = torch.sign(torch.dot(w, n)).detach()  # never 0: View refuses a source on the detector plane
    return torch.stack([p_col, p_row, den]) * side


def _project_points(vector: torch.Tensor, shape, xyz, warn: bool = True) -> torch.Tensor:
    p = xyz if isinstance(xyz, torch.Tensor) else torch.as_tensor(xyz, dtype=torch.float64)
    p = p.to(dtype=torch.promote_types(p.dtype if p.is_floating_point() else torch.float64, vector.dtype),
             device=vector.device)
    if p.ndim != 2 or p.shape[-1] != 3:
        raise ValueError(f"xyz must have shape (n, 3) world (x, y, z) in mm, got {tuple(p.shape)}")
    nonfinite = torch.nonzero(~torch.isfinite(p.detach()).all(dim=1)).flatten()
    if nonfinite.numel():
        rows = nonfinite[:5].tolist() + (["..."] if nonfinite.numel() > 5 else [])
        raise ValueError(f"xyz has NaN or infinite coordinates in {nonfinite.numel()} point(s) (rows "
                         f"{', '.join(map(str, rows))}); pass finite world points in mm, e.g. "
                         "xyz[torch.isfinite(xyz).all(dim=1)]")
    vec = vector.to(p.dtype)
    s, c, u, v = vec[0:3], vec[3:6], vec[6:9], vec[9:12]
    n = torch.linalg.cross(u, v)
    w = c - s
    d = p - s
    den = d @ n
    a = d @ torch.linalg.cross(v, w) / den
    b = d @ torch.linalg.cross(w, u) / den
    # t = (w . n) / (d . n) is where the ray from s through p meets the plane; only t > 0
    # (point in front of the source, on the detector side) has an image.
    t = torch.dot(w, n) / den
    bad = ~(t > 0) | ~torch.isfinite(t)
    out = torch.stack([a + (shape[1] - 1) / 2, b + (shape[0] - 1) / 2], dim=-1)
    if bool(bad.any()):
        if warn:
            warnings.warn(
                f"{int(bad.sum())} point(s) lie on or behind the source plane and have no image; "
                "their pixel coordinates are NaN",
                stacklevel=3,
            )
        out = torch.where(bad[:, None], torch.full_like(out, float("nan")), out)
    return out
