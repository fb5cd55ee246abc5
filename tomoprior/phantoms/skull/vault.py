"""The cranial vault of the procedural skull: its shape, landmarks, sutures, fontanelles,
bone shell and cranial cavity.

All coordinates here are relative to the vault centre ``c0`` (mm, LPS axes). The outer table
lies at radius ``R(u)`` along unit direction ``u`` (:class:`VaultShape`); the signed radial
distance ``d = |p| - R(u)`` (cut by the flattening planes and the anterior cranial fossa) is
the vault's implicit function: bone for ``-t(u) < d <= 0`` (:meth:`Vault.thickness`), the
cranial cavity below. Sutures are planes through the centre limited to the wedge between two
landmark directions, fontanelles kites around bregma and lambda (:meth:`Vault.shell`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .primitives import ellipsoid_sdf, fibonacci_sphere, smax, unit
from .tissues import BRAIN, CSF, DIPLOE, SUTURE, TABLE

Tensor = torch.Tensor

__all__ = ["BONES", "LANDMARK_DIRECTIONS", "SUTURE_LANDMARKS", "Fontanelle", "Suture", "Vault", "VaultShape",
           "bone_plane_normals", "bone_weights", "fit_size", "make_fontanelles", "make_sutures"]

#: Directions of the vault landmarks on the unit sphere, before the sphere is stretched to the
#: vault's half-axes (bregma 25 deg in front of the vertex, lambda 65 deg behind it, nasion
#: 14 deg below the horizontal).
LANDMARK_DIRECTIONS = {
    "bregma": unit([0.0, -math.sin(math.radians(25)), math.cos(math.radians(25))]),
    "lambda": unit([0.0, math.sin(math.radians(65)), math.cos(math.radians(65))]),
    "nasion": unit([0.0, -math.cos(math.radians(14)), -math.sin(math.radians(14))]),
    "pterion_left": unit([0.80, -0.50, -0.15]),
    "pterion_right": unit([-0.80, -0.50, -0.15]),
    "asterion_left": unit([0.62, 0.62, -0.35]),
    "asterion_right": unit([-0.62, 0.62, -0.35]),
}
#: The two landmarks each suture runs between.
SUTURE_LANDMARKS = {
    "metopic": ("nasion", "bregma"),
    "sagittal": ("bregma", "lambda"),
    "coronal_left": ("bregma", "pterion_left"),
    "coronal_right": ("bregma", "pterion_right"),
    "lambdoid_left": ("lambda", "asterion_left"),
    "lambdoid_right": ("lambda", "asterion_right"),
}
_EX = np.array([1.0, 0.0, 0.0])


@dataclass
class VaultShape:
    """Outer-table radius ``R(u)`` about the vault centre (all lengths mm)."""

    a: float  # half width
    b: float  # half length
    c_up: float  # height above the centre
    c_down: float  # depth below the centre
    egg: float = 0.05  # relative widening toward the back
    taper: float = 0.0  # trigonocephalic narrowing of the forehead
    taper_start: float = 0.15
    harmonics: np.ndarray = field(default_factory=lambda: np.zeros(9))
    bulges: list = field(default_factory=list)  # (direction, relative amplitude, width in 1 - cos)
    ridges: list = field(default_factory=list)  # (plane normal, wedge tests n x A and B x n, height, width mm)
    planes: list = field(default_factory=list)  # (outward normal, fraction of the base radius)
    plane_smooth: float = 8.0
    floor: tuple | None = None  # anterior cranial fossa: (z, y of the sphenoid ridge, smoothing)

    def base_radius(self, u: Tensor) -> Tensor:
        """Radius (mm) of the egg-shaped ellipsoid along unit directions ``u`` ``(N, 3)``."""
        ux, uy, uz = u.unbind(-1)
        a = self.a * (1.0 + self.egg * uy)
        if self.taper:
            a = a * (1.0 - self.taper * ((-uy - self.taper_start) / (1.0 - self.taper_start)).clamp(0.0, 1.0) ** 1.3)
        c = torch.where(uz > 0, torch.full_like(uz, self.c_up), torch.full_like(uz, self.c_down))
        return torch.rsqrt((ux / a) ** 2 + (uy / self.b) ** 2 + (uz / c) ** 2)

    def radius(self, u: Tensor) -> Tensor:
        """``R(u)`` (mm): the base radius times the harmonics and bulges, plus the ridges."""
        ux, uy, uz = u.unbind(-1)
        R = self.base_radius(u)
        h = self.harmonics
        if np.any(h):
            basis = (ux, uy, uz, ux * uy, uy * uz, ux * uz, ux * ux - uy * uy, 3 * uz * uz - 1, uy * (5 * uz * uz - 1))
            f = sum(float(c) * t for c, t in zip(h, basis) if c)
            R = R * (1.0 + f)
        if self.bulges:
            f = 0.0
            for d, amp, width in self.bulges:
                f = f + amp * torch.exp((u @ torch.as_tensor(d, dtype=u.dtype) - 1.0) / width)
            R = R * (1.0 + f)
        for n, wa, wb, height, width in self.ridges:
            dist = R * (u @ n.to(u.dtype))
            inside = torch.minimum(u @ wa.to(u.dtype), u @ wb.to(u.dtype))
            R = R + height * torch.exp(-((dist / width) ** 2)) * torch.sigmoid(inside / 0.04)
        return R

    def sdf(self, rel: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Implicit function of the outer table at points ``rel`` (relative to the centre).

        Returns ``(d, d_envelope, u, r)``: ``d`` < 0 inside the vault (radial distance to
        ``R(u)``, intersected with the flattening planes and the cut under the anterior
        cranial fossa, each an exact plane distance); ``d_envelope`` is the same without the
        fossa cut (the scalp follows it); ``u`` the unit directions and ``r`` the radii.
        """
        r = rel.norm(dim=-1)
        u = rel / r.clamp_min(1e-6)[:, None]
        # the centre itself has no direction: any unit vector will do
        u = torch.where((r > 1e-6)[:, None], u, torch.tensor([0.0, 0.0, 1.0], dtype=rel.dtype))
        d, env = self._cut(rel, r - self.radius(u))
        return d, env, u, r

    def _cut(self, rel: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
        """Apply the flattening planes and the anterior fossa cut to the radial distance ``d``."""
        for n, frac in self.planes:
            N = torch.as_tensor(n, dtype=rel.dtype)
            dist = frac * float(self.base_radius(N[None])[0])
            d = smax(d, rel @ N - dist, self.plane_smooth)
        env = d
        if self.floor is not None:
            zf, yr, k = self.floor
            qz = rel[:, 2] - zf
            qy = rel[:, 1] - yr
            outside = torch.sqrt(qz.clamp_min(0) ** 2 + qy.clamp_min(0) ** 2) + torch.maximum(qz, qy).clamp_max(0)
            d = smax(d, -outside, k)
        return d, env

    def surface_radius(self, u: Tensor, envelope: bool = False, iterations: int = 20) -> Tensor:
        """Radius of the outer table along unit directions ``u`` (bisection of :meth:`sdf`);
        with ``envelope`` the surface the scalp follows (no cut under the anterior fossa)."""
        R = self.radius(u)
        if not self.planes and (self.floor is None or envelope):
            return R
        which = 1 if envelope else 0
        lo, hi = 0.25 * R, R + 0.5
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            inside = self._cut(mid[:, None] * u, mid - R)[which] < 0
            lo = torch.where(inside, mid, lo)
            hi = torch.where(inside, hi, mid)
        return 0.5 * (lo + hi)

    def z_below(self, xy) -> np.ndarray:
        """z (mm, relative to the vault centre) of the outer table below each ``(x, y)`` ``(n, 2)``."""
        xy_t = torch.as_tensor(np.asarray(xy, dtype=float))
        lo = torch.full((xy_t.shape[0],), -3.0 * self.c_down, dtype=torch.float64)  # outside
        hi = torch.zeros_like(lo)  # inside
        for _ in range(30):
            mid = 0.5 * (lo + hi)
            inside = self.sdf(torch.cat([xy_t, mid[:, None]], -1))[0] < 0
            hi = torch.where(inside, mid, hi)
            lo = torch.where(inside, lo, mid)
        return (0.5 * (lo + hi)).numpy()

    def extents(self, n: int = 8000) -> dict:
        """Extents of the outer table above the skull base (directions with ``u_z > -0.5``):
        ``cephalic_index``, ``width_mm``, ``length_mm``, ``height_mm`` and the corners ``lo``,
        ``hi`` (3,) relative to the centre."""
        u = torch.as_tensor(fibonacci_sphere(n), dtype=torch.float64)
        u = u[u[:, 2] > -0.5]
        pts = (self.surface_radius(u)[:, None] * u).numpy()
        lo, hi = pts.min(0), pts.max(0)
        width, length = hi[0] - lo[0], hi[1] - lo[1]
        return {"cephalic_index": 100.0 * width / length, "width_mm": width, "length_mm": length,
                "height_mm": hi[2] - lo[2], "lo": lo, "hi": hi}

    def circumference(self, scalp_mm: float, n: int = 720) -> float:
        """Head circumference (mm) over a scalp of ``scalp_mm`` in the plane of the centre."""
        th = torch.linspace(0.0, 2 * math.pi, n + 1, dtype=torch.float64)[:-1]
        u = torch.stack([torch.cos(th), torch.sin(th), torch.zeros_like(th)], -1)
        r = self.surface_radius(u, envelope=True) + scalp_mm
        pts = r[:, None] * u
        return float((pts - pts.roll(1, 0)).norm(dim=-1).sum())


def _landmarks_and_ridges(shape: VaultShape, ridge_spec: list) -> dict[str, np.ndarray]:
    """Landmark directions on the current shape; sets the shape's ridges (fused sutures' keels)."""
    scale = np.array([shape.a, shape.b, shape.c_up])
    lm = {}
    for k, q in LANDMARK_DIRECTIONS.items():
        sc = scale.copy()
        if q[2] < 0:
            sc[2] = shape.c_down
        lm[k] = unit(q * sc)
    resolved = []
    for name, height, width in ridge_spec:
        A, B = (lm[k] for k in SUTURE_LANDMARKS[name])
        n = unit(np.cross(A, B))  # the suture's plane through the centre (x = 0 for the midline ones)
        resolved.append((torch.as_tensor(n), torch.as_tensor(np.cross(n, A)), torch.as_tensor(np.cross(B, n)),
                         height, width))
    shape.ridges = resolved
    return lm


def fit_size(shape: VaultShape, ridge_spec: list, height: tuple[float, float], circumference_mm: float,
             cephalic_index: float, scalp_mm: float) -> dict[str, np.ndarray]:
    """Scale ``shape`` (in place) so that the scalp circumference and the cephalic index hit
    their targets.

    Parameters
    ----------
    shape : VaultShape
        Its half-axes are overwritten; its other fields are kept.
    ridge_spec : list of (suture name, height mm, width mm)
        Keels along fused sutures; placed on the fitted shape.
    height : (float, float)
        Height above and depth below the centre as fractions of the mean half-axis.
    circumference_mm, cephalic_index, scalp_mm : float
        Targets (head circumference over the scalp, mm; ``100 width / length``) and the scalp
        thickness (mm).

    Returns
    -------
    dict
        Unit landmark directions (3,) on the fitted shape, by name (:data:`LANDMARK_DIRECTIONS`).
    """
    hu, hd = height
    a, b = 60.0, 75.0
    for _ in range(6):
        mean = 0.5 * (a + b)
        shape.a, shape.b, shape.c_up, shape.c_down = a, b, hu * mean, hd * mean
        _landmarks_and_ridges(shape, ridge_spec)
        ci = shape.extents()["cephalic_index"]
        a *= cephalic_index / ci
        shape.a = a
        _landmarks_and_ridges(shape, ridge_spec)
        hc = shape.circumference(scalp_mm)
        a *= circumference_mm / hc
        b *= circumference_mm / hc
    mean = 0.5 * (a + b)
    shape.a, shape.b, shape.c_up, shape.c_down = a, b, hu * mean, hd * mean
    return _landmarks_and_ridges(shape, ridge_spec)


@dataclass
class Suture:
    """A suture: the band ``|normal . p| < width / 2`` between two landmark directions."""

    name: str
    normal: np.ndarray  # unit normal of the plane through the vault centre
    start: np.ndarray  # unit direction of the first landmark
    end: np.ndarray  # unit direction of the second landmark
    width: float  # mm; 0 = fused

    @property
    def wedge_normal(self) -> np.ndarray:
        return unit(np.cross(self.start, self.end))


@dataclass
class Fontanelle:
    """A fontanelle: a kite of fibrous tissue in the vault around a landmark."""

    name: str
    direction: np.ndarray  # unit direction of its centre from the vault centre
    e_sag: np.ndarray  # tangent toward posterior
    e_lat: np.ndarray  # tangent toward left
    front: float  # half-diagonals, mm
    back: float
    lateral: float


def make_sutures(landmarks: dict, names, fused, width_mm: float, metopic_width_mm: float) -> dict[str, Suture]:
    """The sutures ``names`` between their landmarks (unit directions by name); a suture in
    ``fused`` has width 0. The midline sutures lie in the plane ``x = 0``."""
    out = {}
    for name in names:
        a_dir, b_dir = (landmarks[k] for k in SUTURE_LANDMARKS[name])
        n = _EX if name in ("metopic", "sagittal") else unit(np.cross(a_dir, b_dir))
        width = metopic_width_mm if name == "metopic" else width_mm
        out[name] = Suture(name, n, a_dir, b_dir, 0.0 if name in fused else width)
    return out


def make_fontanelles(landmarks: dict, anterior: tuple[float, float], posterior: tuple[float, float],
                     size: float) -> list[Fontanelle]:
    """The open fontanelles around bregma and lambda.

    ``anterior`` and ``posterior`` are the half-diagonals (sagittal, transverse) in mm of a
    typical child's fontanelles (0 once closed), ``size`` this child's relative size. The
    anterior fontanelle reaches further forward (1.25 x) than back (0.8 x), the posterior
    one further back. A fontanelle under 0.05 mm is left out.
    """
    out = []
    for name, key, (hs, hl), front, back in (
        ("anterior", "bregma", anterior, 1.25, 0.8),
        ("posterior", "lambda", posterior, 0.7, 0.9),
    ):
        if hs * size > 0.05:
            d = landmarks[key]
            e_sag = unit(np.cross(d, _EX))
            out.append(Fontanelle(name, d, e_sag, _EX, front * hs * size, back * hs * size, hl * size))
    return out


@dataclass
class Vault:
    """The fitted vault: shape, bone shell with sutures and fontanelles, cranial cavity.

    Lengths in mm; points relative to the vault centre.
    """

    shape: VaultShape
    landmarks: dict  # unit directions (3,) by name
    thickness_mm: float  # parietal thickness; :meth:`thickness` varies it over the vault
    diploe_fraction: float
    csf_mm: float
    sutures: dict  # name -> Suture
    fontanelles: list
    ventricles: list  # (centre (3,), semi-axes (3,)) of the lateral ventricles
    #: frontal, parietal and occipital thickness (mm, along the ray; :meth:`thickness`);
    #: ``None``: ``thickness_mm`` everywhere
    bone_thickness_mm: dict | None = None
    #: width (mm) of the thinned bone margins along open sutures and round fontanelles: the
    #: bone tapers from full thickness to :data:`MARGIN_MIN_FRACTION` of it at the gap (fibrous
    #: tissue in its place, from the inner table out); 0 = plain gaps (anatomy v1)
    suture_margin_mm: float = 0.0

    def __post_init__(self):
        self.bone_planes = bone_plane_normals(self.landmarks)

    def thickness(self, u: Tensor) -> Tensor:
        """Bone thickness (mm, along the ray from the centre) in unit directions ``u``
        ``(N, 3)``.

        Each bone (frontal in front of the coronal sutures, parietal, occipital behind the
        lambdoid sutures; :func:`bone_weights`) has its own thickness, blended over about
        10 degrees across the sutures; the temporal squama is thinner (down to 0.65 x at the
        side) and the skull base thicker (up to 1.4 x). Without ``bone_thickness_mm`` (anatomy
        v1) ``thickness_mm`` is scaled up to 1.15 x at the forehead and 1.3 x at the occiput.
        """
        ux, uy, uz = u.unbind(-1)
        if not self.bone_thickness_mm:  # anatomy v1: one thickness, thicker at the front and occiput
            f = (
                1.0
                + 0.15 * (-uy).clamp_min(0.0) ** 2
                + 0.30 * torch.exp((0.8 * uy - 0.6 * uz - 1.0) / 0.12)
                - 0.35 * torch.exp((ux.abs() - 1.0) / 0.06)
                + 0.40 * ((-uz - 0.5) / 0.5).clamp(0.0, 1.0)
            )
            return self.thickness_mm * f.clamp_min(0.5)
        w = bone_weights(u, self.bone_planes, sharpness=0.08)
        t = sum(self.bone_thickness_mm[k] * w[k] for k in BONES)
        f = 1.0 - 0.35 * torch.exp((ux.abs() - 1.0) / 0.06) + 0.40 * ((-uz - 0.5) / 0.5).clamp(0.0, 1.0)
        return t * f

    def shell(self, mat: Tensor, near: Tensor | None, rel: Tensor, d: Tensor, t: Tensor, u: Tensor,
              r: Tensor) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
        """Paint the bone shell into the material indices ``mat`` ``(N,)``: tables, diploe,
        then the open sutures and fontanelles.

        ``rel`` ``(N, 3)`` points, ``(d, u, r)`` from :meth:`VaultShape.sdf` and ``t`` from
        :meth:`thickness`; ``near`` (distance to the nearest interface, mm) is lowered where a
        shell interface is closer, or ``None`` when not wanted. Returns ``(mat, near, shell,
        shell_sdf)``: the shell mask and a signed distance to the shell (> 0 outside).
        """
        shell = (d <= 0) & (d > -t)
        mat = torch.where(shell, TABLE, mat)
        if self.diploe_fraction > 0:
            t_table = t * (1.0 - self.diploe_fraction) / 2.0
            dip = (d < -t_table) & (d > -(t - t_table))
            mat = torch.where(dip, DIPLOE, mat)
            if near is not None:
                near = torch.minimum(near, torch.minimum((d + t_table).abs(), (d + t - t_table).abs()))
        shell_sdf = (d + t / 2).abs() - t / 2  # > 0 outside the shell
        for sut in self.sutures.values():
            if sut.width <= 0:
                continue
            n = torch.as_tensor(sut.normal, dtype=rel.dtype)
            # (A x u) . W = u . (W x A) and (u x B) . W = u . (B x W): inside the wedge A..B
            extent = torch.minimum(u @ torch.as_tensor(np.cross(sut.wedge_normal, sut.start), dtype=rel.dtype),
                                   u @ torch.as_tensor(np.cross(sut.end, sut.wedge_normal), dtype=rel.dtype))
            band = torch.maximum((rel @ n).abs() - sut.width / 2, -r * extent)
            mat = torch.where(shell & (band < 0), SUTURE, mat)
            if self.suture_margin_mm > 0:
                mat = self._thin_margin(mat, shell, band, d, t, near)
            if near is not None:
                near = torch.minimum(near, torch.maximum(band.abs(), shell_sdf))
        for f in self.fontanelles:
            s_ = rel @ torch.as_tensor(f.e_sag, dtype=rel.dtype)
            l_ = rel @ torch.as_tensor(f.e_lat, dtype=rel.dtype)
            hs = torch.where(s_ < 0, torch.full_like(s_, f.front), torch.full_like(s_, f.back))
            dia = (s_.abs() / hs + l_.abs() / f.lateral - 1.0) / torch.sqrt(1.0 / hs**2 + 1.0 / f.lateral**2)
            dia = torch.where(u @ torch.as_tensor(f.direction, dtype=rel.dtype) > 0.7, dia, torch.full_like(dia, 1e3))
            mat = torch.where(shell & (dia < 0), SUTURE, mat)
            if self.suture_margin_mm > 0:
                mat = self._thin_margin(mat, shell, dia, d, t, near)
            if near is not None:
                near = torch.minimum(near, torch.maximum(dia.abs(), shell_sdf))
        return mat, near, shell, shell_sdf

    def _thin_margin(self, mat: Tensor, shell: Tensor, gap: Tensor, d: Tensor, t: Tensor,
                     near: Tensor | None) -> Tensor:
        """Thin the bone within :attr:`suture_margin_mm` of a gap (``gap`` < 0 inside it, mm):
        below the local bone depth ``t x (f + (1 - f) gap / margin)`` the shell is fibrous
        tissue. ``near`` is lowered in place at the tapered surface."""
        m = self.suture_margin_mm
        # only shell points near the gap (and, for ``near``, a mm either side) are worked on
        idx = (shell & (gap >= -1.0) & (gap < m + 1.0)).nonzero().squeeze(-1)
        if not idx.numel():
            return mat
        g = gap[idx]
        frac = MARGIN_MIN_FRACTION + (1.0 - MARGIN_MIN_FRACTION) * (g / m).clamp(0.0, 1.0)
        inner = d[idx] + t[idx] * frac  # < 0 below the thinned inner surface
        mat = mat.clone()
        mat[idx] = torch.where((g >= 0) & (g < m) & (inner < 0), SUTURE, mat[idx])
        if near is not None:
            near[idx] = torch.minimum(near[idx], inner.abs())
        return mat

    def cavity(self, mat: Tensor, near: Tensor | None, rel: Tensor, d: Tensor,
               t: Tensor) -> tuple[Tensor, Tensor | None]:
        """Paint the cranial cavity: CSF under the inner table, brain below it, CSF in the
        ventricles (arguments as :meth:`shell`). Returns ``(mat, near)``."""
        cavity = d <= -t
        brain = d <= -(t + self.csf_mm)
        mat = torch.where(cavity, torch.where(brain, BRAIN, CSF), mat)
        if near is not None:
            near = torch.minimum(near, (d + t + self.csf_mm).abs())
        for c, semi in self.ventricles:
            dv = ellipsoid_sdf(rel, c, semi)
            mat = torch.where(brain & (dv < 0), CSF, mat)
            if near is not None:
                near = torch.minimum(near, dv.abs())
        return mat, near

    def points(self, directions: np.ndarray, depth: float) -> np.ndarray:
        """Points ``(n, 3)`` (mm, relative to the centre) at ``depth`` (fraction of the
        thickness below the outer table) along unit ``directions`` ``(n, 3)``."""
        u = torch.as_tensor(directions)
        radius = self.shape.surface_radius(u) - depth * self.thickness(u)
        return (radius[:, None] * u).numpy()


#: Thinnest bone (fraction of the local thickness) at the edge of an open suture or fontanelle
#: when :attr:`Vault.suture_margin_mm` > 0.
MARGIN_MIN_FRACTION = 0.35

#: Bones whose mean thickness :meth:`Vault.bone_regions` delimits.
BONES = ("frontal", "parietal", "occipital")


def _side_plane(a: np.ndarray, b: np.ndarray, toward: np.ndarray) -> np.ndarray:
    """Unit normal of the plane through the vault centre and directions ``a``, ``b``, pointing
    to the side of ``toward``."""
    n = unit(np.cross(a, b))
    return n if n @ toward > 0 else -n


def bone_plane_normals(landmarks: dict) -> dict[str, np.ndarray]:
    """Normals ``(2, 3)`` (left, right) of the planes through the vault centre that bound the
    bones: ``"coronal"`` (bregma-pterion, pointing to the front), ``"lambdoid"``
    (lambda-asterion, pointing to the back) and ``"squamosal"`` (pterion-asterion, pointing
    up). Landmarks are unit directions (3,) by name."""
    out = {"coronal": [], "lambdoid": [], "squamosal": []}
    for side in ("left", "right"):
        out["coronal"].append(_side_plane(landmarks["bregma"], landmarks[f"pterion_{side}"], landmarks["nasion"]))
        out["lambdoid"].append(_side_plane(landmarks["lambda"], landmarks[f"asterion_{side}"], np.array([0, 1.0, 0])))
        out["squamosal"].append(_side_plane(landmarks[f"pterion_{side}"], landmarks[f"asterion_{side}"],
                                            np.array([0, 0, 1.0])))
    return {k: np.stack(v) for k, v in out.items()}


def bone_weights(u: Tensor, planes: dict[str, np.ndarray], sharpness: float = 0.0) -> dict[str, Tensor]:
    """How much each direction ``u`` ``(N, 3)`` belongs to the frontal, parietal and occipital
    bones (weights summing to 1 over the vault above the skull base).

    The frontal bone lies in front of the coronal planes, the occipital behind the lambdoid
    planes, the parietal between them (the left or right plane by the sign of ``u_x``).
    ``sharpness`` 0 gives hard 0/1 membership; > 0 a logistic blend whose width (in ``u .
    normal``) is ``sharpness``. The squamosal plane (the parietal bone's lower edge) is not
    used here: below it the temporal squama takes the parietal weight.
    """
    left = (u[:, 0] >= 0)[:, None]

    def side(n):
        nl, nr = (torch.as_tensor(v, dtype=u.dtype) for v in n)
        s = torch.where(left, u * nl, u * nr).sum(-1)
        return (s > 0).to(u.dtype) if sharpness <= 0 else torch.sigmoid(s / sharpness)

    front = side(planes["coronal"])
    back = side(planes["lambdoid"]) * (1.0 - front)
    return {"frontal": front, "parietal": (1.0 - front - back).clamp_min(0.0), "occipital": back}
