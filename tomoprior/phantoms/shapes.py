"""Analytic convex shapes with exact line integrals: ellipsoids, spheres and finite cylinders.

Every shape is a solid of constant density placed in the world frame (patient LPS, mm) by a
centre and a rotation. The rotation's columns are the shape's own axes written in world
coordinates, so a point ``x`` has local coordinates ``R^T (x - center)``.

Rotations may be given as Euler angles ``(phi, theta, psi)`` in radians, intrinsic z-x'-z''
(the classical "x-convention")::

    R = Rz(phi) @ Rx(theta) @ Rz(psi)

i.e. turn the shape by ``psi`` about its own z axis, then by ``theta`` about world x, then by
``phi`` about world z; every turn is right-handed (counter-clockwise looking down the axis).
With ``theta = psi = 0`` the first semi-axis points along ``(cos phi, sin phi, 0)``: this is
the rotation angle of the Kak & Slaney ellipsoid tables. Files store the angles in degrees
(``angles_deg``).

All computations are torch operations, vectorised over rays or points and differentiable in
the ray and shape parameters wherever the result is smooth; rays that miss a shape give an
exact 0 and a zero (never NaN) gradient.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .._yaml import brief

Tensor = torch.Tensor

#: Tolerance on ``R^T R = I`` and ``det R = 1`` when a rotation matrix is given.
ROTATION_TOL = 1e-6

__all__ = ["Cylinder", "Ellipsoid", "Shape", "Sphere", "euler_zxz_matrix", "shape_from_dict"]


# -- parameter conversion -------------------------------------------------------------------


def _tensor(value, name: str, shape: tuple[int, ...]) -> Tensor:
    """``value`` as a finite floating tensor of ``shape``.

    Floating tensors keep dtype, device and autograd history (so shape parameters can be
    optimised); anything else becomes a float64 CPU tensor.
    """
    if isinstance(value, Tensor):
        t = value if value.is_floating_point() else value.to(torch.float64)
    else:
        try:
            t = torch.as_tensor(value, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(f"{name} must be {_describe(shape)}, got {brief(value)}") from exc
    if tuple(t.shape) != shape:
        if t.numel() == 1 and shape == ():
            t = t.reshape(())
        else:
            raise ValueError(f"{name} must be {_describe(shape)}, got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t.detach()).all()):
        raise ValueError(f"{name} must be finite, got {brief(t.detach().tolist())}")
    return t


def _describe(shape: tuple[int, ...]) -> str:
    if shape == ():
        return "a number"
    if len(shape) == 1:
        return f"{shape[0]} numbers"
    return "a " + "x".join(str(n) for n in shape) + " matrix"


def _positive(t: Tensor, name: str) -> Tensor:
    flat = t.detach().reshape(-1)
    for i, v in enumerate(flat.tolist()):
        if not v > 0:
            label = name if t.ndim == 0 else f"{name}[{i}]"
            raise ValueError(f"{label} must be > 0, got {brief(v)}")
    return t


def _rotation_z(angle: Tensor) -> Tensor:
    c, s = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(c), torch.zeros_like(c)
    return torch.stack([torch.stack([c, -s, zero]), torch.stack([s, c, zero]), torch.stack([zero, zero, one])])


def _rotation_x(angle: Tensor) -> Tensor:
    c, s = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(c), torch.zeros_like(c)
    return torch.stack([torch.stack([one, zero, zero]), torch.stack([zero, c, -s]), torch.stack([zero, s, c])])


def euler_zxz_matrix(angles) -> Tensor:
    """Rotation matrix of intrinsic z-x'-z'' Euler angles.

    Parameters
    ----------
    angles : array-like or Tensor, shape ``(3,)``
        ``(phi, theta, psi)`` in radians.

    Returns
    -------
    Tensor, shape ``(3, 3)``
        ``Rz(phi) @ Rx(theta) @ Rz(psi)``; its columns are the rotated x, y and z axes.
        Differentiable in ``angles``; float64 unless ``angles`` is a floating tensor.

    Examples
    --------
    >>> import math
    >>> R = euler_zxz_matrix([math.pi / 2, 0.0, 0.0])
    >>> [round(float(v), 6) + 0.0 for v in R[:, 0]]   # first axis turned from +x to +y
    [0.0, 1.0, 0.0]
    """
    a = _tensor(angles, "angles", (3,))
    return _rotation_z(a[0]) @ _rotation_x(a[1]) @ _rotation_z(a[2])


def _check_rotation(R: Tensor, name: str) -> Tensor:
    Rd = R.detach().double()
    eye = torch.eye(3, dtype=Rd.dtype, device=Rd.device)
    err = float((Rd.T @ Rd - eye).abs().max())
    det = float(torch.linalg.det(Rd))
    if err > ROTATION_TOL or abs(det - 1.0) > ROTATION_TOL:
        raise ValueError(
            f"{name} must be a proper rotation matrix (orthonormal columns, determinant +1); "
            f"got max |R^T R - I| = {err:.3g} and det = {det:.6g}"
        )
    return R


def _orientation(angles, rotation, owner: str) -> tuple[Tensor | None, Tensor]:
    """Resolve ``angles`` / ``rotation`` into ``(angles or None, rotation matrix)``."""
    if angles is not None and rotation is not None:
        raise ValueError(f"{owner}: give either angles or rotation, not both")
    if rotation is not None:
        R = _check_rotation(_tensor(rotation, f"{owner}.rotation", (3, 3)), f"{owner}.rotation")
        return None, R
    if angles is None:
        angles = (0.0, 0.0, 0.0)
    a = _tensor(angles, f"{owner}.angles", (3,))
    return a, euler_zxz_matrix(a)


def _basis_from_axis(axis: Tensor) -> Tensor:
    """A rotation whose third column is the unit ``axis`` (the other two are any completion).

    The helper vector is the world axis least aligned with ``axis``, so the completion is
    well conditioned and deterministic.
    """
    w = axis / torch.linalg.norm(axis)
    helper = torch.zeros_like(w)
    helper[int(torch.argmin(w.detach().abs()))] = 1.0
    u = torch.linalg.cross(helper, w)
    u = u / torch.linalg.norm(u)
    v = torch.linalg.cross(w, u)
    return torch.stack([u, v, w], dim=1)


def _safe(mask: Tensor, value: Tensor, fill: float = 1.0) -> Tensor:
    """``value`` where ``mask``, else ``fill``: keeps the unused branch of a ``torch.where``
    finite so no NaN leaks into gradients."""
    return torch.where(mask, value, torch.full_like(value, fill))


def _float_list(t: Tensor) -> list[float]:
    return [float(v) for v in t.detach().cpu().double().reshape(-1)]


# -- base class -----------------------------------------------------------------------------


class Shape:
    """A solid, convex body of constant density in the world frame (mm).

    Subclasses define the body in their local frame; this class handles placement
    (``center``, ``rotation``), broadcasting, dtype and device.

    Attributes
    ----------
    center : Tensor ``(3,)``
        World position ``(x, y, z)`` in mm of the shape's centre.
    rotation : Tensor ``(3, 3)``
        Columns are the shape's local x, y, z axes in world coordinates.
    angles : Tensor ``(3,)`` or None
        Euler angles ``(phi, theta, psi)`` in radians (z-x'-z'') if the rotation came from
        angles, else None.
    density : Tensor ``()``
        Value inside the shape (e.g. linear attenuation in 1/mm); may be negative, as in
        the Shepp-Logan phantom where shapes add.
    label : str or None
        A free-text name such as ``"skull"``.
    material : str or None
        Optional material name such as ``"steel"`` or ``"pmma"`` (metadata for physics
        models; ``density`` stays the value used for line integrals).
    """

    kind: str = "shape"

    def __init__(self, center, density, angles=None, rotation=None, label: str | None = None,
                 material: str | None = None):
        owner = type(self).__name__
        self.center = _tensor(center, f"{owner}.center", (3,))
        self.density = _tensor(density, f"{owner}.density", ())
        self.angles, self.rotation = _orientation(angles, rotation, owner)
        if label is not None and not isinstance(label, str):
            raise ValueError(f"{owner}.label must be a string, got {brief(label)}")
        self.label = label
        if material is not None and (not isinstance(material, str) or not material):
            raise ValueError(f"{owner}.material must be a non-empty string such as 'steel', got {brief(material)}")
        self.material = material

    # -- frames ------------------------------------------------------------------------------
    def _frame(self, dtype: torch.dtype, device) -> tuple[Tensor, Tensor]:
        return self.center.to(dtype=dtype, device=device), self.rotation.to(dtype=dtype, device=device)

    @staticmethod
    def _working_dtype(*tensors: Tensor) -> torch.dtype:
        dtype = torch.float64 if not tensors[0].is_floating_point() else tensors[0].dtype
        for t in tensors[1:]:
            dtype = torch.promote_types(dtype, t.dtype if t.is_floating_point() else torch.float64)
        return dtype

    def _as_rays(self, origins, directions) -> tuple[Tensor, Tensor]:
        """Rays as local-frame tensors ``(p, d)``, broadcast against each other."""
        o = origins if isinstance(origins, Tensor) else torch.as_tensor(origins, dtype=torch.float64)
        d = directions if isinstance(directions, Tensor) else torch.as_tensor(directions, dtype=torch.float64)
        if o.shape[-1:] != (3,) or d.shape[-1:] != (3,):
            raise ValueError(
                f"origins and directions must have shape (..., 3), got {tuple(o.shape)} and {tuple(d.shape)}"
            )
        dtype = self._working_dtype(o, d, self.center, self.rotation)
        device = o.device
        o, d = o.to(dtype=dtype, device=device), d.to(dtype=dtype, device=device)
        c, R = self._frame(dtype, device)
        # row-vector form of R^T (x - c): local coordinates along the shape's own axes
        return (o - c) @ R, d @ R

    def to_local(self, points) -> Tensor:
        """Local coordinates ``R^T (points - center)`` of world points ``(..., 3)`` in mm."""
        p = points if isinstance(points, Tensor) else torch.as_tensor(points, dtype=torch.float64)
        if p.shape[-1:] != (3,):
            raise ValueError(f"points must have shape (..., 3) world (x, y, z) in mm, got {tuple(p.shape)}")
        dtype = self._working_dtype(p, self.center, self.rotation)
        c, R = self._frame(dtype, p.device)
        return (p.to(dtype) - c) @ R

    # -- the interface every shape implements -------------------------------------------------
    def contains(self, points) -> Tensor:
        """Whether world points ``(..., 3)`` (mm) lie inside the shape (boundary included).

        Returns
        -------
        Tensor of bool, shape ``(...)``
        """
        return self._contains_local(self.to_local(points))

    def interval(self, origins, directions) -> tuple[Tensor, Tensor]:
        """Entry and exit parameters of the rays ``origin + t * direction`` (t over all reals).

        Parameters
        ----------
        origins, directions : array-like or Tensor, shape ``(..., 3)``
            Broadcastable world points and direction vectors (any non-zero length), mm.

        Returns
        -------
        (t_in, t_out) : Tensors, shape ``(...)``
            The ray is inside the shape for ``t_in <= t <= t_out``. A ray that misses has
            ``t_in > t_out`` (``+inf`` and ``-inf``). Convexity makes this one interval.
        """
        p, d = self._as_rays(origins, directions)
        return self._interval_local(p, d)

    def path_lengths(self, origins, directions) -> Tensor:
        """Length in mm of the chord each ray ``origin + t * direction`` cuts through the shape.

        The whole line counts (``t`` from ``-inf`` to ``inf``), so the result does not depend
        on the length or sign of ``directions``.

        Parameters
        ----------
        origins, directions : array-like or Tensor, shape ``(..., 3)``
            Broadcastable world points and direction vectors in mm.

        Returns
        -------
        Tensor, shape ``(...)``
            Chord lengths in mm; exactly 0 for rays that miss (or have zero direction).
        """
        p, d = self._as_rays(origins, directions)
        return self._path_lengths_local(p, d)

    def segment_lengths(self, origins, directions) -> Tensor:
        """Length in mm of the part of the segment ``origin + t * direction``, ``0 <= t <= 1``,
        inside the shape: an X-ray from its source (``origin``) to a detector pixel
        (``origin + direction``). Nothing behind the source or beyond the pixel counts.

        Parameters
        ----------
        origins, directions : array-like or Tensor, shape ``(..., 3)``
            Broadcastable world points (sources) and vectors from them to the segment ends
            (pixels), mm.

        Returns
        -------
        Tensor, shape ``(...)``
            Lengths in mm; equal to :meth:`path_lengths` (to the last bits) whenever the
            whole chord lies within the segment, the usual case.

        Examples
        --------
        >>> s = Sphere(center=(0, 0, 0), radius=5.0)
        >>> float(s.segment_lengths([0.0, 0.0, -50.0], [0.0, 0.0, 100.0]))   # the whole chord
        10.0
        >>> round(float(s.segment_lengths([0.0, 0.0, -50.0], [0.0, 0.0, 52.0])), 9)   # ends at z = 2
        7.0
        >>> float(s.segment_lengths([0.0, 0.0, -50.0], [0.0, 0.0, -100.0]))  # points away
        0.0
        """
        p, d = self._as_rays(origins, directions)
        chord = self._path_lengths_local(p, d)
        t_in, t_out = self._interval_local(p, d)
        d2 = (d * d).sum(-1)
        hit = (t_out > t_in) & (d2 > 0)
        whole = hit & (t_in >= 0) & (t_out <= 1)
        lo = torch.clamp(_safe(hit, t_in, 0.0), min=0.0)
        hi = torch.clamp(_safe(hit, t_out, 0.0), max=1.0)
        part = hit & ~whole & (hi > lo)
        clipped = _safe(part, hi - lo, 0.0) * torch.sqrt(_safe(part, d2))
        zero = torch.zeros_like(chord)
        return torch.where(whole, chord, torch.where(part, clipped, zero))

    def line_integrals(self, origins, directions) -> Tensor:
        """Exact line integrals ``density * chord length`` of rays, shape ``(...)``.

        Units: density unit times mm (e.g. dimensionless for 1/mm). See :meth:`path_lengths`
        for the arguments.
        """
        lengths = self.path_lengths(origins, directions)
        return self.density.to(dtype=lengths.dtype, device=lengths.device) * lengths

    def bounding_box(self) -> tuple[Tensor, Tensor]:
        """Tight axis-aligned box ``(lo, hi)``, each ``(3,)`` world ``(x, y, z)`` in mm."""
        half = self._half_extent()
        return self.center - half, self.center + half

    # -- subclass hooks ----------------------------------------------------------------------
    def _contains_local(self, q: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _interval_local(self, p: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover
        raise NotImplementedError

    def _path_lengths_local(self, p: Tensor, d: Tensor) -> Tensor:
        t_in, t_out = self._interval_local(p, d)
        d2 = (d * d).sum(-1)
        # a zero direction is no ray: its "interval" is the whole line or nothing
        hit = (t_out > t_in) & (d2 > 0)
        span = _safe(hit, t_out - t_in, 0.0)
        return torch.where(hit, span * torch.sqrt(_safe(hit, d2)), torch.zeros_like(span))

    def _half_extent(self) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def volume(self) -> Tensor:  # pragma: no cover - abstract
        """Analytic volume in mm^3 (0-d tensor)."""
        raise NotImplementedError

    # -- editing -----------------------------------------------------------------------------
    def _orientation_kwargs(self) -> dict:
        return {"angles": self.angles} if self.angles is not None else {"rotation": self.rotation}

    def translated(self, offset) -> Shape:  # pragma: no cover - abstract
        """A copy moved by ``offset`` ``(3,)`` mm."""
        raise NotImplementedError

    def scaled(self, factor: float) -> Shape:  # pragma: no cover - abstract
        """A copy with centre and sizes multiplied by ``factor`` (> 0): scaling about the origin."""
        raise NotImplementedError

    def with_density(self, density) -> Shape:  # pragma: no cover - abstract
        """A copy with another density."""
        raise NotImplementedError

    # -- serialisation -----------------------------------------------------------------------
    def _common_dict(self) -> dict:
        d: dict = {"type": self.kind}
        if self.label is not None:
            d["label"] = self.label
        if self.material is not None:
            d["material"] = self.material
        d["center"] = _float_list(self.center)
        return d

    def _orientation_dict(self) -> dict:
        if self.angles is not None:
            # rounding hides the last-bit noise of degrees -> radians -> degrees
            return {"angles_deg": [round(math.degrees(a), 12) + 0.0 for a in _float_list(self.angles)]}
        return {"rotation": [_float_list(row) for row in self.rotation]}

    def to_dict(self) -> dict:  # pragma: no cover - abstract
        """Plain-Python description (the ``shapes[i]`` entry of a phantom file)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v}" for k, v in self.to_dict().items() if k != "type")
        return f"{type(self).__name__}({fields})"


# -- ellipsoid and sphere -------------------------------------------------------------------


class Ellipsoid(Shape):
    """A solid ellipsoid ``|R^T (x - center) / semi_axes|^2 <= 1``.

    Parameters
    ----------
    center : (3,)
        World position ``(x, y, z)`` in mm.
    semi_axes : (3,)
        Semi-axis lengths ``(a, b, c)`` in mm along the local x, y, z axes; all > 0.
    density : float, optional
        Value inside (e.g. attenuation in 1/mm). Default 1.
    angles : (3,), optional
        Euler angles ``(phi, theta, psi)`` in radians, intrinsic z-x'-z''
        (``R = Rz(phi) Rx(theta) Rz(psi)``). Default: no rotation.
    rotation : (3, 3), optional
        Rotation matrix instead of ``angles``; its columns are the local axes in world
        coordinates.
    label : str, optional
    material : str, optional
        Material name (e.g. ``"steel"``), metadata for physics models.

    Raises
    ------
    ValueError
        Non-finite values, a semi-axis <= 0, both ``angles`` and ``rotation``, or a
        ``rotation`` that is not a proper rotation; the message names the field.

    Notes
    -----
    With ``p = R^T (s - c) / (a, b, c)`` and ``D = R^T d / (a, b, c)`` the ray ``s + t d`` is
    the unit-sphere ray ``p + t D``. If ``m`` is the squared distance of that ray from the
    origin, the chord is ``2 |d| sqrt(1 - m) / |D|`` for ``m < 1`` and 0 otherwise. This is
    the textbook ``2 |d| sqrt(b^2 - a q) / a`` (``a = D.D``, ``b = D.p``, ``q = p.p - 1``),
    rewritten so that no large numbers cancel when the source is far from a small ellipsoid.

    Examples
    --------
    >>> e = Ellipsoid(center=(0, 0, 0), semi_axes=(10, 20, 30), density=0.02)
    >>> float(e.path_lengths([0.0, -100.0, 0.0], [0.0, 1.0, 0.0]))   # through the centre along y
    40.0
    >>> round(float(e.line_integrals([0.0, -100.0, 0.0], [0.0, 1.0, 0.0])), 6)
    0.8
    """

    kind = "ellipsoid"

    def __init__(self, center, semi_axes, density=1.0, *, angles=None, rotation=None, label: str | None = None,
                 material: str | None = None):
        super().__init__(center, density, angles=angles, rotation=rotation, label=label, material=material)
        owner = type(self).__name__
        self.semi_axes = _positive(_tensor(semi_axes, f"{owner}.semi_axes", (3,)), f"{owner}.semi_axes")

    def _scale(self, ref: Tensor) -> Tensor:
        return self.semi_axes.to(dtype=ref.dtype, device=ref.device)

    def _contains_local(self, q: Tensor) -> Tensor:
        u = q / self._scale(q)
        return (u * u).sum(-1) <= 1.0

    def _unit_sphere_ray(self, p: Tensor, d: Tensor):
        s = self._scale(p)
        P, D = p / s, d / s
        dd = (D * D).sum(-1)
        moving = dd > 0
        dd_safe = _safe(moving, dd)
        # parameter of the point closest to the centre, and the squared distance there
        t_mid = -(P * D).sum(-1) / dd_safe
        perp = P + t_mid[..., None] * D
        m = (perp * perp).sum(-1)
        hit = moving & (m < 1.0)
        return t_mid, m, dd_safe, hit

    def _interval_local(self, p: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
        t_mid, m, dd_safe, hit = self._unit_sphere_ray(p, d)
        half = torch.sqrt(_safe(hit, 1.0 - m) / dd_safe)
        inf = torch.full_like(t_mid, math.inf)
        return torch.where(hit, t_mid - half, inf), torch.where(hit, t_mid + half, -inf)

    def _path_lengths_local(self, p: Tensor, d: Tensor) -> Tensor:
        _, m, dd_safe, hit = self._unit_sphere_ray(p, d)
        d2 = (d * d).sum(-1)
        chord = 2.0 * torch.sqrt(_safe(hit, 1.0 - m)) * torch.sqrt(_safe(hit, d2) / dd_safe)
        return torch.where(hit, chord, torch.zeros_like(chord))

    def _half_extent(self) -> Tensor:
        # support function of the ellipsoid along each world axis: |R_i. * semi_axes|
        return torch.sqrt(((self.rotation * self.semi_axes) ** 2).sum(-1))

    def volume(self) -> Tensor:
        """Analytic volume ``4/3 pi a b c`` in mm^3 (0-d tensor)."""
        return 4.0 / 3.0 * math.pi * self.semi_axes.prod()

    def translated(self, offset) -> Ellipsoid:
        off = _tensor(offset, "offset", (3,))
        return Ellipsoid(
            self.center + off.to(self.center),
            self.semi_axes,
            self.density,
            label=self.label,
            material=self.material,
            **self._orientation_kwargs(),
        )

    def scaled(self, factor: float) -> Ellipsoid:
        f = _positive(_tensor(factor, "factor", ()), "factor")
        return Ellipsoid(
            self.center * f, self.semi_axes * f, self.density, label=self.label, material=self.material,
            **self._orientation_kwargs(),
        )

    def with_density(self, density) -> Ellipsoid:
        return Ellipsoid(self.center, self.semi_axes, density, label=self.label, material=self.material,
                         **self._orientation_kwargs())

    def to_dict(self) -> dict:
        d = self._common_dict()
        d["semi_axes"] = _float_list(self.semi_axes)
        d.update(self._orientation_dict())
        d["density"] = float(self.density.detach())
        return d


class Sphere(Ellipsoid):
    """A solid ball: an :class:`Ellipsoid` with three equal semi-axes and no rotation.

    Parameters
    ----------
    center : (3,)
        World position ``(x, y, z)`` in mm.
    radius : float
        Radius in mm, > 0.
    density : float, optional
        Value inside. Default 1.
    label : str, optional
    material : str, optional
        Material name (e.g. ``"steel"``), metadata for physics models.

    Examples
    --------
    >>> s = Sphere(center=(0, 0, 0), radius=5.0)
    >>> float(s.path_lengths([3.0, 0.0, -50.0], [0.0, 0.0, 2.0]))   # 2 sqrt(5^2 - 3^2)
    8.0
    """

    kind = "sphere"

    def __init__(self, center, radius, density=1.0, *, label: str | None = None, material: str | None = None):
        r = _positive(_tensor(radius, "Sphere.radius", ()), "Sphere.radius")
        super().__init__(center, r.expand(3), density, label=label, material=material)

    @property
    def radius(self) -> Tensor:
        """Radius in mm (0-d tensor)."""
        return self.semi_axes[0]

    def translated(self, offset) -> Sphere:
        off = _tensor(offset, "offset", (3,))
        return Sphere(self.center + off.to(self.center), self.radius, self.density, label=self.label,
                      material=self.material)

    def scaled(self, factor: float) -> Sphere:
        f = _positive(_tensor(factor, "factor", ()), "factor")
        return Sphere(self.center * f, self.radius * f, self.density, label=self.label, material=self.material)

    def with_density(self, density) -> Sphere:
        return Sphere(self.center, self.radius, density, label=self.label, material=self.material)

    def to_dict(self) -> dict:
        d = self._common_dict()
        d["radius"] = float(self.radius.detach())
        d["density"] = float(self.density.detach())
        return d


# -- cylinder -------------------------------------------------------------------------------


class Cylinder(Shape):
    """A finite solid cylinder, circular or elliptic, closed by two flat caps.

    In its local frame the cylinder is ``(x/a)^2 + (y/b)^2 <= 1`` and ``|z| <= height/2``:
    the local z axis is the cylinder axis and ``center`` is the midpoint of the axis.

    Parameters
    ----------
    center : (3,)
        World position ``(x, y, z)`` in mm of the midpoint between the caps.
    radius : float or (a, b)
        Radius in mm, or the two semi-axes of an elliptic cross-section along the local
        x and y axes; all > 0.
    height : float
        Distance between the caps in mm, > 0.
    density : float, optional
        Value inside. Default 1.
    axis : (3,), optional
        Direction of the cylinder axis in world coordinates (any length > 0). Fixes the
        orientation of a circular cylinder. Default: world z if neither ``axis``,
        ``angles`` nor ``rotation`` is given.
    angles : (3,), optional
        Euler angles ``(phi, theta, psi)`` in radians (z-x'-z'', see the module notes);
        the cylinder axis is the third column of the resulting rotation. Needed (or
        ``rotation``) to orient an elliptic cross-section.
    rotation : (3, 3), optional
        Rotation matrix; its columns are the local x, y, z (= axis) directions.
    label : str, optional
    material : str, optional
        Material name (e.g. ``"steel"``), metadata for physics models.

    Raises
    ------
    ValueError
        Non-positive radius or height, a zero ``axis``, more than one of ``axis``,
        ``angles``, ``rotation``, or an elliptic cross-section oriented by ``axis`` only.

    Examples
    --------
    >>> c = Cylinder(center=(0, 0, 0), radius=10.0, height=40.0, axis=(0, 0, 1))
    >>> float(c.path_lengths([0.0, 0.0, -100.0], [0.0, 0.0, 1.0]))   # along the axis
    40.0
    >>> float(c.path_lengths([-100.0, 0.0, 5.0], [1.0, 0.0, 0.0]))   # across it
    20.0
    """

    kind = "cylinder"

    def __init__(
        self, center, radius, height, density=1.0, *, axis=None, angles=None, rotation=None, label: str | None = None,
        material: str | None = None,
    ):
        owner = type(self).__name__
        if axis is not None and (angles is not None or rotation is not None):
            raise ValueError(f"{owner}: give one of axis, angles or rotation")
        r = radius if isinstance(radius, Tensor) else torch.as_tensor(radius, dtype=torch.float64)
        self.circular = r.numel() == 1
        if self.circular:
            r = _positive(_tensor(r, f"{owner}.radius", ()), f"{owner}.radius").expand(2)
        else:
            r = _positive(_tensor(r, f"{owner}.radius", (2,)), f"{owner}.radius")
        self.radii = r
        self.height = _positive(_tensor(height, f"{owner}.height", ()), f"{owner}.height")
        self.axis = None
        if axis is not None:
            if not self.circular:
                raise ValueError(
                    f"{owner}: an elliptic cross-section needs angles or rotation to orient it; axis fixes "
                    "only the cylinder axis"
                )
            a = _tensor(axis, f"{owner}.axis", (3,))
            if not float(torch.linalg.norm(a.detach())) > 0:
                raise ValueError(f"{owner}.axis must be a non-zero vector, got {a.detach().tolist()}")
            # keep the axis as given, so files round-trip without renormalisation noise
            self.axis = a
            rotation = _basis_from_axis(a)
        super().__init__(center, density, angles=angles, rotation=rotation, label=label, material=material)

    @property
    def radius(self):
        """Radius in mm (0-d tensor) of a circular cylinder, else the pair ``(a, b)``."""
        return self.radii[0] if self.circular else self.radii

    @property
    def direction(self) -> Tensor:
        """Unit axis direction in world coordinates ``(3,)`` (third column of ``rotation``)."""
        return self.rotation[:, 2]

    def _contains_local(self, q: Tensor) -> Tensor:
        r = self.radii.to(dtype=q.dtype, device=q.device)
        u = q[..., :2] / r
        return ((u * u).sum(-1) <= 1.0) & (q[..., 2].abs() <= self.height.to(q) / 2)

    def _interval_local(self, p: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
        inf = torch.full(p.shape[:-1], math.inf, dtype=p.dtype, device=p.device)
        r = self.radii.to(dtype=p.dtype, device=p.device)
        half_h = self.height.to(p) / 2
        # infinite (elliptic) cylinder: a 2D unit-circle problem in the scaled cross-section
        P, D = p[..., :2] / r, d[..., :2] / r
        dd = (D * D).sum(-1)
        along_axis = dd == 0
        dd_safe = _safe(~along_axis, dd)
        t_mid = -(P * D).sum(-1) / dd_safe
        perp = P + t_mid[..., None] * D
        m = (perp * perp).sum(-1)
        inside = m < 1.0
        half = torch.sqrt(_safe(inside & ~along_axis, 1.0 - m) / dd_safe)
        side_in = torch.where(along_axis, torch.where(inside, -inf, inf), torch.where(inside, t_mid - half, inf))
        side_out = torch.where(along_axis, torch.where(inside, inf, -inf), torch.where(inside, t_mid + half, -inf))
        # slab between the caps
        dz, pz = d[..., 2], p[..., 2]
        flat = dz == 0
        dz_safe = _safe(~flat, dz)
        ta, tb = (-half_h - pz) / dz_safe, (half_h - pz) / dz_safe
        in_slab = pz.abs() <= half_h
        slab_in = torch.where(flat, torch.where(in_slab, -inf, inf), torch.minimum(ta, tb))
        slab_out = torch.where(flat, torch.where(in_slab, inf, -inf), torch.maximum(ta, tb))
        return torch.maximum(side_in, slab_in), torch.minimum(side_out, slab_out)

    def _half_extent(self) -> Tensor:
        R = self.rotation
        disc = torch.sqrt((R[:, 0] * self.radii[0]) ** 2 + (R[:, 1] * self.radii[1]) ** 2)
        return disc + R[:, 2].abs() * self.height / 2

    def volume(self) -> Tensor:
        """Analytic volume ``pi a b height`` in mm^3 (0-d tensor)."""
        return math.pi * self.radii[0] * self.radii[1] * self.height

    def _copy(self, center, radii, height, density) -> Cylinder:
        radius = radii[0] if self.circular else radii
        if self.axis is not None:
            return Cylinder(center, radius, height, density, axis=self.axis, label=self.label, material=self.material)
        return Cylinder(center, radius, height, density, label=self.label, material=self.material,
                        **self._orientation_kwargs())

    def translated(self, offset) -> Cylinder:
        off = _tensor(offset, "offset", (3,))
        return self._copy(self.center + off.to(self.center), self.radii, self.height, self.density)

    def scaled(self, factor: float) -> Cylinder:
        f = _positive(_tensor(factor, "factor", ()), "factor")
        return self._copy(self.center * f, self.radii * f, self.height * f, self.density)

    def with_density(self, density) -> Cylinder:
        return self._copy(self.center, self.radii, self.height, density)

    def to_dict(self) -> dict:
        d = self._common_dict()
        d["radius"] = float(self.radii[0].detach()) if self.circular else _float_list(self.radii)
        d["height"] = float(self.height.detach())
        if self.axis is not None:
            d["axis"] = _float_list(self.axis)
        else:
            d.update(self._orientation_dict())
        d["density"] = float(self.density.detach())
        return d


# -- dictionaries ---------------------------------------------------------------------------

#: Keys of each shape entry in a phantom file, by ``type``.
SHAPE_KEYS: dict[str, tuple[set[str], set[str]]] = {
    # type: (required keys, optional keys)
    "ellipsoid": ({"center", "semi_axes", "density"}, {"label", "material", "angles_deg", "rotation"}),
    "sphere": ({"center", "radius", "density"}, {"label", "material"}),
    "cylinder": ({"center", "radius", "height", "density"}, {"label", "material", "axis", "angles_deg", "rotation"}),
}


def _number(value, field: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{field} must be a number, got {brief(value)}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{field} must be finite, got {brief(value)}")
    if positive and not v > 0:
        raise ValueError(f"{field} must be > 0, got {brief(value)}")
    return v


def _numbers(value, n: int, field: str, *, positive: bool = False, what: str = "numbers") -> list[float]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"{field} must be a list of {n} {what}, got {brief(value)}")
    if len(value) != n:
        raise ValueError(f"{field} must have {n} entries ({what}), got {len(value)}")
    return [_number(v, f"{field}[{i}]", positive=positive) for i, v in enumerate(value)]


def shape_from_dict(d: dict, where: str = "shape") -> Shape:
    """Build a shape from its phantom-file entry, validating every field.

    Parameters
    ----------
    d : dict
        ``{"type": "ellipsoid" | "sphere" | "cylinder", ...}`` as written by
        :meth:`Shape.to_dict`: lengths in mm, angles in degrees (``angles_deg``,
        z-x'-z'' Euler angles), ``rotation`` as a 3x3 nested list, ``axis`` for cylinders.
    where : str
        Name of this entry used in error messages, e.g. ``"shapes[3]"``.

    Returns
    -------
    Shape

    Raises
    ------
    ValueError
        Unknown type or keys, missing keys, wrong lengths, non-finite numbers, non-positive
        sizes or bad rotations; the message names the field, e.g.
        ``shapes[3].semi_axes[1] must be > 0``.
    """
    if not isinstance(d, dict):
        raise ValueError(f"{where} must be a mapping with a type, got {type(d).__name__}")
    kind = d.get("type")
    if not isinstance(kind, str) or kind not in SHAPE_KEYS:
        raise ValueError(f"{where}.type must be one of {sorted(SHAPE_KEYS)}, got {brief(kind)}")
    required, optional = SHAPE_KEYS[kind]
    unknown = set(d) - required - optional - {"type"}
    if unknown:
        raise ValueError(
            f"{where} ({kind}) has unknown key(s) {brief(sorted(map(str, unknown)))}; "
            f"allowed: {sorted(required | optional)}"
        )
    missing = required - set(d)
    if missing:
        raise ValueError(f"{where} ({kind}) is missing {sorted(missing)}")
    label = d.get("label")
    if label is not None and not isinstance(label, str):
        raise ValueError(f"{where}.label must be a string, got {brief(label)}")
    material = d.get("material")
    if material is not None and (not isinstance(material, str) or not material):
        raise ValueError(f"{where}.material must be a non-empty string such as 'steel', got {brief(material)}")
    center = _numbers(d["center"], 3, f"{where}.center", what="numbers x, y, z in mm")
    density = _number(d["density"], f"{where}.density")
    orientation = _orientation_from_dict(d, where)
    if kind == "ellipsoid":
        semi = _numbers(d["semi_axes"], 3, f"{where}.semi_axes", positive=True, what="lengths in mm")
        return Ellipsoid(center, semi, density, label=label, material=material, **orientation)
    if kind == "sphere":
        return Sphere(center, _number(d["radius"], f"{where}.radius", positive=True), density, label=label,
                      material=material)
    radius = d["radius"]
    if isinstance(radius, Sequence) and not isinstance(radius, (str, bytes)):
        radius = _numbers(radius, 2, f"{where}.radius", positive=True, what="semi-axes in mm")
        if "axis" in d:
            raise ValueError(f"{where}: an elliptic cylinder (radius [a, b]) needs angles_deg or rotation, not axis")
    else:
        radius = _number(radius, f"{where}.radius", positive=True)
    height = _number(d["height"], f"{where}.height", positive=True)
    return Cylinder(center, radius, height, density, label=label, material=material, **orientation)


def _orientation_from_dict(d: dict, where: str) -> dict:
    given = [k for k in ("axis", "angles_deg", "rotation") if k in d]
    if len(given) > 1:
        raise ValueError(f"{where}: give only one of {given}")
    if "angles_deg" in d:
        deg = _numbers(d["angles_deg"], 3, f"{where}.angles_deg", what="Euler angles phi, theta, psi in degrees")
        return {"angles": [math.radians(a) for a in deg]}
    if "rotation" in d:
        rows = d["rotation"]
        if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence) or len(rows) != 3:
            raise ValueError(f"{where}.rotation must be a 3x3 nested list, got {brief(rows)}")
        R = [_numbers(row, 3, f"{where}.rotation[{i}]") for i, row in enumerate(rows)]
        _check_rotation(torch.tensor(R, dtype=torch.float64), f"{where}.rotation")
        return {"rotation": R}
    if "axis" in d:
        axis = _numbers(d["axis"], 3, f"{where}.axis", what="direction components")
        if not any(a != 0 for a in axis):
            raise ValueError(f"{where}.axis must be a non-zero vector, got {axis}")
        return {"axis": axis}
    return {}
