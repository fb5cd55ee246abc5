"""The procedural pediatric skull: implicit anatomy evaluated at points, rasterised on grids.

Geometry
--------
World frame LPS in mm (x to the patient's Left, y Posterior, z Superior); the centre of the
head's bounding box (cranium and face, without the neck stub) is at the origin.

The cranial vault is star-shaped about its centre ``c0``: its outer table lies at radius
``R(u)`` in direction ``u``, where ``R`` is an ellipsoid (different upper and lower heights,
slightly egg-shaped) multiplied by smooth low-order harmonics (seeded variation) and bulges
(compensatory bossing), plus ridges along fused sutures, and smoothly cut by planes
(flattened forehead or occiput, anterior cranial fossa floor). The radial distance
``d = |p - c0| - R(u)`` is the implicit function of the vault: scalp for
``0 < d < scalp``, bone for ``-t(u) < d <= 0`` (outer table, diploe, inner table), CSF and
then brain inside. Thicknesses are measured along the ray from ``c0``.

Sutures are planes through ``c0`` (so the ray construction keeps them planar) limited to
the wedge between two landmark directions (nasion, bregma, lambda, pterion, asterion); a
suture is a band ``|n . (p - c0)| < w / 2`` of fibrous tissue through the bone shell.
Fontanelles are kite/diamond regions around bregma and lambda. A fused suture is simply not
cut out (bone) and carries a small ridge.

The face (orbits with walls and globes, maxilla, palate, nasal cavity, zygomatic arches,
nasal bones, mandible), skull-base structures (petrous ridges, clivus, foramen magnum) and
the soft tissue envelope are ellipsoids and capsules placed from the vault's landmarks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..._threads import torch_threads
from ...geometry.grid import VolumeGrid
from . import growth
from .parameters import DEFAULT_CEPHALIC_INDEX, SUTURES, SkullParameters

Tensor = torch.Tensor

__all__ = ["LABELS", "MATERIALS", "MATERIAL_LABELS", "Skull", "default_grid", "make_skull"]

#: Tissue labels of :meth:`Skull.label_map`.
LABELS = {"air": 0, "soft_tissue": 1, "brain_csf": 2, "bone": 3, "suture": 4, "eye": 5}
#: Materials of the model (finer than labels: each has its own attenuation).
MATERIALS = (
    "air", "soft_tissue", "brain", "csf", "cortical_bone", "diploe", "suture", "facial_bone", "dense_bone",
    "orbital_fat", "eye",
)
(AIR, SOFT, BRAIN, CSF, TABLE, DIPLOE, SUTURE, FACIAL, DENSE, FAT, EYE) = range(len(MATERIALS))
#: Label of each material.
MATERIAL_LABELS = (0, 1, 2, 2, 3, 3, 4, 3, 3, 1, 5)

#: Field of view (mm) of :func:`default_grid`: holds any head the parameters allow (6 years,
#: cephalic index 55-110, maximal variation) with a margin.
DEFAULT_FOV_MM = 240.0
#: Points evaluated at once (bounds temporaries to some tens of MB).
CHUNK_POINTS = 1 << 18
#: A voxel is supersampled when an implicit function is within this many half-diagonals of
#: zero at its centre (radial distances overestimate true distances on oblique surfaces).
REFINE_SAFETY = 1.6

#: torch intra-op threads used while evaluating the model (``None``: leave torch's setting).
#: The evaluation is a long chain of cheap element-wise operations on chunks of points; on
#: small shared CPUs thread synchronisation costs more than it gains (64^3 at supersample 2:
#: 0.2 s with one thread, 1.9 s with two on a busy 2-core machine), and data pipelines
#: parallelise over processes anyway. The previous setting is restored after each call.
EVAL_THREADS: int | None = 1

_DTYPE = torch.float32


def _eval_threads():
    return torch_threads(EVAL_THREADS)


def default_grid(shape: int = 64, fov_mm: float = DEFAULT_FOV_MM) -> VolumeGrid:
    """A cubic, isotropic grid centred at the isocenter that holds every skull of the model.

    Parameters
    ----------
    shape : int
        Voxels per axis (``>= 8``).
    fov_mm : float
        Edge length of the cube in mm (default :data:`DEFAULT_FOV_MM`).

    Returns
    -------
    VolumeGrid
        ``shape = (n, n, n)``, spacing ``fov_mm / n`` mm, centre ``(0, 0, 0)``.

    Examples
    --------
    >>> g = default_grid(64)
    >>> g.shape, g.spacing
    ((64, 64, 64), (3.75, 3.75, 3.75))
    """
    if isinstance(shape, bool) or not isinstance(shape, (int, np.integer)) or shape < 8:
        raise ValueError(f"shape must be an integer >= 8 (voxels per axis of a cubic grid), got {shape!r}")
    if isinstance(fov_mm, bool) or not isinstance(fov_mm, (int, float)) or not (math.isfinite(fov_mm) and fov_mm > 0):
        raise ValueError(f"fov_mm must be a positive number of millimetres, got {fov_mm!r}")
    s = float(fov_mm) / int(shape)
    return VolumeGrid(shape=(int(shape),) * 3, spacing=(s, s, s), center=(0.0, 0.0, 0.0))


def make_skull(parameters: SkullParameters | None = None, **kwargs) -> Skull:
    """Build a :class:`Skull` from :class:`SkullParameters` or from their fields as keywords.

    Examples
    --------
    >>> skull = make_skull(age_years=1.0, variant="sagittal", seed=3)
    >>> skull.cephalic_index() < 70
    True
    """
    if parameters is not None and kwargs:
        raise ValueError("give either a SkullParameters or keyword fields, not both")
    if parameters is None:
        parameters = SkullParameters(**kwargs)
    elif not isinstance(parameters, SkullParameters):
        raise ValueError(f"parameters must be a SkullParameters, got {type(parameters).__name__}")
    return Skull(parameters)


# -- small implicit-function helpers ------------------------------------------------------


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    return v / np.linalg.norm(v)


def _smin(a: Tensor, b: Tensor, k: float) -> Tensor:
    """Polynomial smooth minimum (exact min where ``|a - b| >= k``)."""
    h = (0.5 + 0.5 * (b - a) / k).clamp(0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def _smax(a: Tensor, b: Tensor, k: float) -> Tensor:
    return -_smin(-a, -b, k)


def _ellipsoid_sdf(p: Tensor, center, semi, rot=None) -> Tensor:
    """Approximate signed distance (mm) to an ellipsoid (exact on the surface and axes)."""
    q = p - torch.as_tensor(center, dtype=p.dtype)
    if rot is not None:
        q = q @ torch.as_tensor(rot, dtype=p.dtype)  # world -> local: R^T q (row vectors)
    r = torch.as_tensor(semi, dtype=p.dtype)
    k0 = (q / r).norm(dim=-1)
    k1 = (q / (r * r)).norm(dim=-1).clamp_min(1e-9)
    # at the very centre the formula gives 0; the distance there is the smallest semi-axis
    return torch.where(k0 > 1e-6, k0 * (k0 - 1.0) / k1, -r.min())


def _capsule_sdf(p: Tensor, a, b, radius: float) -> Tensor:
    a_t = torch.as_tensor(a, dtype=p.dtype)
    ab = torch.as_tensor(b, dtype=p.dtype) - a_t
    ap = p - a_t
    h = ((ap @ ab) / float(ab @ ab)).clamp(0.0, 1.0)
    return (ap - h[:, None] * ab).norm(dim=-1) - radius


@dataclass
class _Box:
    lo: np.ndarray
    hi: np.ndarray

    def mask(self, p: Tensor) -> Tensor:
        lo = torch.as_tensor(self.lo, dtype=p.dtype)
        hi = torch.as_tensor(self.hi, dtype=p.dtype)
        return ((p >= lo) & (p <= hi)).all(dim=-1)

    def union(self, other: _Box) -> _Box:
        return _Box(np.minimum(self.lo, other.lo), np.maximum(self.hi, other.hi))


def _ellipsoid_box(center, semi, rot=None, margin=0.0) -> _Box:
    c = np.asarray(center, float)
    s = np.asarray(semi, float)
    ext = s if rot is None else np.sqrt((np.asarray(rot) ** 2) @ (s**2))
    return _Box(c - ext - margin, c + ext + margin)


def _capsule_box(a, b, radius, margin=0.0) -> _Box:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return _Box(np.minimum(a, b) - radius - margin, np.maximum(a, b) + radius + margin)


def _fibonacci_sphere(n: int) -> np.ndarray:
    i = np.arange(n) + 0.5
    z = 1.0 - 2.0 * i / n
    phi = math.pi * (1.0 + math.sqrt(5.0)) * i
    rho = np.sqrt(1.0 - z * z)
    return np.stack([rho * np.cos(phi), rho * np.sin(phi), z], axis=-1)


# -- the vault shape ----------------------------------------------------------------------


@dataclass
class _VaultShape:
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
        ux, uy, uz = u.unbind(-1)
        a = self.a * (1.0 + self.egg * uy)
        if self.taper:
            a = a * (1.0 - self.taper * ((-uy - self.taper_start) / (1.0 - self.taper_start)).clamp(0.0, 1.0) ** 1.3)
        c = torch.where(uz > 0, torch.full_like(uz, self.c_up), torch.full_like(uz, self.c_down))
        return torch.rsqrt((ux / a) ** 2 + (uy / self.b) ** 2 + (uz / c) ** 2)

    def radius(self, u: Tensor) -> Tensor:
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
            d = _smax(d, rel @ N - dist, self.plane_smooth)
        env = d
        if self.floor is not None:
            zf, yr, k = self.floor
            qz = rel[:, 2] - zf
            qy = rel[:, 1] - yr
            outside = torch.sqrt(qz.clamp_min(0) ** 2 + qy.clamp_min(0) ** 2) + torch.maximum(qz, qy).clamp_max(0)
            d = _smax(d, -outside, k)
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


@dataclass
class _Suture:
    name: str
    normal: np.ndarray  # unit normal of the plane through the vault centre
    start: np.ndarray  # unit direction of the first landmark
    end: np.ndarray  # unit direction of the second landmark
    width: float  # mm; 0 = fused

    @property
    def wedge_normal(self) -> np.ndarray:
        return _unit(np.cross(self.start, self.end))


@dataclass
class _Fontanelle:
    name: str
    direction: np.ndarray  # unit direction of its centre from the vault centre
    e_sag: np.ndarray  # tangent toward posterior
    e_lat: np.ndarray  # tangent toward left
    front: float  # half-diagonals, mm
    back: float
    lateral: float


def _slabs(grid: VolumeGrid):
    """Voxel centres of ``grid`` in z-slabs of at most :data:`CHUNK_POINTS` points (at least one
    plane): yields ``(z0, z1, points)`` with ``points`` ``((z1 - z0) ny nx, 3)`` as ``(x, y, z)`` mm."""
    x, y, z = (c.to(_DTYPE) for c in grid.axis_coordinates(dtype=torch.float64))
    nz, ny, nx = grid.shape
    slab = max(1, CHUNK_POINTS // (ny * nx))
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    for z0 in range(0, nz, slab):
        z1 = min(nz, z0 + slab)
        m = z1 - z0
        pts = torch.stack([xx.expand(m, ny, nx), yy.expand(m, ny, nx), z[z0:z1, None, None].expand(m, ny, nx)], -1)
        yield z0, z1, pts.reshape(-1, 3)


class Skull:
    """A procedural pediatric skull (normal or craniosynostosis) defined by implicit functions.

    Build it with :func:`make_skull`. Evaluate it at points (:meth:`values`, :meth:`labels`)
    or on a grid (:meth:`rasterize`, :meth:`label_map`, :meth:`bone_mask`); measure it
    (:meth:`cephalic_index`, :meth:`shape_indices`).

    Parameters
    ----------
    parameters : SkullParameters

    Notes
    -----
    Attenuation is linear attenuation in 1/mm at ``parameters.energy_kev`` (default 60 keV):
    soft tissue 0.0209, brain 0.0213, CSF 0.0206, vault tables about 0.041 (newborn) to 0.052
    (6 years), diploe, facial and petrous bone in between and above; see :attr:`attenuation`.
    Labels: :data:`LABELS`.
    """

    def __init__(self, parameters: SkullParameters):
        if not isinstance(parameters, SkullParameters):
            raise ValueError(f"parameters must be a SkullParameters, got {type(parameters).__name__}")
        self.parameters = parameters
        with torch.no_grad(), _eval_threads():
            self._build()

    # -- construction ---------------------------------------------------------------------
    def _build(self) -> None:
        p = self.parameters
        age, variant, side = p.age_years, p.variant, p.side
        s = 1.0 if side == "left" else -1.0
        rng = np.random.default_rng(p.seed) if p.seed is not None else None
        v = p.variation if rng is not None else 0.0

        def z(n=None):  # clipped standard normal, scaled by the variation
            if rng is None:
                return 0.0 if n is None else np.zeros(n)
            return np.clip(rng.standard_normal(n), -2.0, 2.0) * v

        z_hc, z_ci, z_t, z_font, z_close, z_face = z(), z(), z(), z(), z(), z()
        harm = z(9) * np.array([0.005, 0.012, 0.010, 0.005, 0.012, 0.005, 0.010, 0.010, 0.008])

        self.head_circumference_target_cm = (
            p.head_circumference_cm if p.head_circumference_cm is not None
            else growth.head_circumference_cm(age) * (1.0 + 0.03 * z_hc)
        )
        self.cephalic_index_target = (
            p.cephalic_index if p.cephalic_index is not None
            else float(np.clip(DEFAULT_CEPHALIC_INDEX[variant] + 2.0 * z_ci, 56.0, 109.0))
        )
        self.scalp_mm = 4.0
        self.thickness_mm = growth.vault_thickness_mm(age) * (1.0 + 0.08 * z_t)
        self.diploe_fraction = growth.diploe_fraction(age)
        self.csf_mm = growth.extra_axial_csf_mm(age)
        self.suture_width_mm = growth.suture_width_mm(age)
        self.face_scale = growth.face_scale(age) * (1.0 + 0.03 * z_face)
        self._materials(p.energy_kev, age)

        # vault: base ellipsoid, then the variant's compensatory shape
        height_up, height_down = 0.86, 0.62
        shape = _VaultShape(a=60.0, b=75.0, c_up=60.0, c_down=45.0, harmonics=harm)
        B = _unit([0.0, -math.sin(math.radians(25)), math.cos(math.radians(25))])  # bregma (normalised)
        L = _unit([0.0, math.sin(math.radians(65)), math.cos(math.radians(65))])  # lambda
        if variant == "sagittal":
            shape.bulges += [(_unit([0, -0.75, 0.65]), 0.05, 0.12), (_unit([0, 1.0, -0.15]), 0.06, 0.08)]
            shape.ridges.append(("sagittal", 2.0, 6.0))
        elif variant == "metopic":
            shape.taper = 0.30
            shape.ridges.append(("metopic", 3.5, 7.0))
            shape.bulges += [(_unit([x, 0.55, 0.4]), 0.035, 0.12) for x in (0.6, -0.6)]
        elif variant == "unicoronal":
            shape.planes.append((_unit([0.6 * s, -0.8, 0.1]), 0.82))
            shape.bulges += [(_unit([-0.5 * s, -0.8, 0.35]), 0.05, 0.10), (_unit([0.0, 0.2, 1.0]), 0.02, 0.2)]
            shape.ridges.append((f"coronal_{side}", 1.5, 6.0))
        elif variant == "bicoronal":
            height_up = 0.98  # turribrachycephaly
            shape.planes.append((_unit([0.0, -1.0, 0.2]), 0.86))
            shape.bulges += [(_unit([x, -0.2, 0.55]), 0.03, 0.12) for x in (1, -1)]
            shape.ridges += [("coronal_left", 1.5, 6.0), ("coronal_right", 1.5, 6.0)]
        elif variant == "lambdoid":
            shape.planes.append((_unit([0.55 * s, 0.85, -0.05]), 0.86))
            shape.bulges += [(_unit([0.6 * s, 0.45, -0.65]), 0.06, 0.08), (_unit([-0.65 * s, 0.45, 0.45]), 0.04, 0.12)]
            shape.ridges.append((f"lambdoid_{side}", 1.5, 6.0))
        self._shape = shape
        self._height = (height_up, height_down)
        self._landmark_q = {
            "bregma": B,
            "lambda": L,
            "nasion": _unit([0.0, -math.cos(math.radians(14)), -math.sin(math.radians(14))]),
            "pterion_left": _unit([0.80, -0.50, -0.15]),
            "pterion_right": _unit([-0.80, -0.50, -0.15]),
            "asterion_left": _unit([0.62, 0.62, -0.35]),
            "asterion_right": _unit([-0.62, 0.62, -0.35]),
        }
        self._fit_size()

        # sutures and fontanelles on the fitted shape
        fused = set(p.fused_sutures)
        lm = self._landmark_dirs
        w = self.suture_width_mm
        metopic_w = w * growth.metopic_open_fraction(age)
        ex = np.array([1.0, 0.0, 0.0])
        spec = {
            "metopic": (ex, lm["nasion"], lm["bregma"], metopic_w),
            "sagittal": (ex, lm["bregma"], lm["lambda"], w),
            "coronal_left": (None, lm["bregma"], lm["pterion_left"], w),
            "coronal_right": (None, lm["bregma"], lm["pterion_right"], w),
            "lambdoid_left": (None, lm["lambda"], lm["asterion_left"], w),
            "lambdoid_right": (None, lm["lambda"], lm["asterion_right"], w),
        }
        self._sutures: dict[str, _Suture] = {}
        for name in SUTURES:
            n, a_dir, b_dir, width = spec[name]
            if n is None:
                n = _unit(np.cross(a_dir, b_dir))
            self._sutures[name] = _Suture(name, n, a_dir, b_dir, 0.0 if name in fused else width)
        close_a = float(np.clip(1.75 + 0.2 * z_close, 1.5, 2.0))
        size_f = 1.0 + 0.2 * z_font
        af = growth.anterior_fontanelle_mm(age, close_a)
        pf = growth.posterior_fontanelle_mm(age, 0.2)
        self.fontanelle_closure_years = {"anterior": close_a, "posterior": 0.2}
        self._fontanelles = []
        for name, key, (hs, hl), front, back in (
            ("anterior", "bregma", af, 1.25, 0.8),
            ("posterior", "lambda", pf, 0.7, 0.9),
        ):
            if hs * size_f > 0.05:
                d = lm[key]
                e_sag = _unit(np.cross(d, ex))
                self._fontanelles.append(
                    _Fontanelle(name, d, e_sag, ex, front * hs * size_f, back * hs * size_f, hl * size_f)
                )
        self._place_face_and_base()

    def _materials(self, energy: float, age: float) -> None:
        mu = {m: growth.linear_attenuation(m, energy) for m in growth.MATERIALS}
        m = growth.bone_mineral_fraction(age)

        def bone(f):
            return f * mu["bone"] + (1.0 - f) * mu["soft"]

        values = {
            "air": 0.0,
            "soft_tissue": mu["soft"],
            "brain": mu["brain"],
            "csf": mu["water"],
            "cortical_bone": bone(m),
            "diploe": bone(0.35 * m),
            "suture": mu["soft"],
            "facial_bone": bone(0.8 * m),
            "dense_bone": bone(min(1.0, m + 0.15)),
            "orbital_fat": mu["adipose"],
            "eye": mu["water"],
        }
        #: attenuation (1/mm) of each material at the stated energy
        self.attenuation = values
        self._mu = torch.tensor([values[k] for k in MATERIALS], dtype=_DTYPE)
        self._mat_label = torch.tensor(MATERIAL_LABELS, dtype=torch.uint8)
        self._is_bone = (self._mat_label == LABELS["bone"]).to(_DTYPE)

    def _fit_size(self) -> None:
        """Scale the vault so that the scalp circumference and the cephalic index hit their targets."""
        shape = self._shape
        hu, hd = self._height
        hc_target = self.head_circumference_target_cm * 10.0
        ci_target = self.cephalic_index_target
        a, b = 60.0, 75.0
        for _ in range(6):
            mean = 0.5 * (a + b)
            shape.a, shape.b, shape.c_up, shape.c_down = a, b, hu * mean, hd * mean
            self._resolve_ridges()
            ci = self._vault_extents()["cephalic_index"]
            a *= ci_target / ci
            shape.a = a
            self._resolve_ridges()
            hc = self._circumference()
            a *= hc_target / hc
            b *= hc_target / hc
        mean = 0.5 * (a + b)
        shape.a, shape.b, shape.c_up, shape.c_down = a, b, hu * mean, hd * mean
        self._resolve_ridges()

    def _resolve_ridges(self) -> None:
        """Landmark directions on the current shape, and the fused-suture ridges' planes."""
        sh = self._shape
        scale = np.array([sh.a, sh.b, sh.c_up])
        lm = {}
        for k, q in self._landmark_q.items():
            sc = scale.copy()
            if q[2] < 0:
                sc[2] = sh.c_down
            lm[k] = _unit(q * sc)
        self._landmark_dirs = lm
        ends = {
            "metopic": ("nasion", "bregma"),
            "sagittal": ("bregma", "lambda"),
            "coronal_left": ("bregma", "pterion_left"),
            "coronal_right": ("bregma", "pterion_right"),
            "lambdoid_left": ("lambda", "asterion_left"),
            "lambdoid_right": ("lambda", "asterion_right"),
        }
        if not hasattr(self, "_ridge_spec"):
            self._ridge_spec = list(sh.ridges)
        resolved = []
        for name, height, width in self._ridge_spec:
            A, B = (lm[k] for k in ends[name])
            n = _unit(np.cross(A, B))  # the suture's plane through the centre (x = 0 for the midline ones)
            resolved.append((torch.as_tensor(n), torch.as_tensor(np.cross(n, A)), torch.as_tensor(np.cross(B, n)),
                             height, width))
        sh.ridges = resolved

    def _vault_extents(self, n: int = 8000) -> dict:
        u = torch.as_tensor(_fibonacci_sphere(n), dtype=torch.float64)
        u = u[u[:, 2] > -0.5]
        pts = (self._shape.surface_radius(u)[:, None] * u).numpy()
        lo, hi = pts.min(0), pts.max(0)
        width, length = hi[0] - lo[0], hi[1] - lo[1]
        return {"cephalic_index": 100.0 * width / length, "width_mm": width, "length_mm": length,
                "height_mm": hi[2] - lo[2], "lo": lo, "hi": hi}

    def _circumference(self, n: int = 720) -> float:
        th = torch.linspace(0.0, 2 * math.pi, n + 1, dtype=torch.float64)[:-1]
        u = torch.stack([torch.cos(th), torch.sin(th), torch.zeros_like(th)], -1)
        r = self._shape.surface_radius(u, envelope=True) + self.scalp_mm
        pts = r[:, None] * u
        return float((pts - pts.roll(1, 0)).norm(dim=-1).sum())

    def _place_face_and_base(self) -> None:
        sh = self._shape
        F = self.face_scale
        p = self.parameters
        s = 1.0 if p.side == "left" else -1.0
        lm = self._landmark_dirs
        radii = sh.surface_radius(torch.as_tensor(np.stack(list(lm.values()))))
        R = dict(zip(lm, radii.tolist()))
        nasion = R["nasion"] * lm["nasion"]
        ipd = 42.0 * F**0.6 * (0.8 if p.variant == "metopic" else 1.0)  # distance between orbit centres
        o_semi = np.array([12.0, 15.0, 10.5]) * F**0.7
        y_orb = nasion[1] + 0.95 * o_semi[1]
        z_orb = nasion[2] - 9.0 * F
        lift = 3.5 * F if p.variant == "unicoronal" else 0.0  # harlequin orbit on the fused side
        # keep the orbit roofs (the anterior cranial fossa floor) below the vault centre
        z_orb = min(z_orb, -(0.14 * sh.c_down + 1.5 * F) - o_semi[2] - lift)
        orbits = [np.array([x * ipd / 2, y_orb, z_orb + (lift if x == s else 0.0)]) for x in (1.0, -1.0)]
        r_eye = 8.5 + 2.5 * (1.0 - math.exp(-p.age_years / 1.0))
        globes = [o + np.array([0.0, -(o_semi[1] - r_eye - 1.5), 0.0]) for o in orbits]
        z_ear = z_orb - o_semi[2]  # Frankfurt horizontal: porion level with orbitale
        y_ear = 0.03 * sh.b
        x_ear = 0.78 * sh.a

        # anterior cranial fossa floor: a plane just above the orbit roofs
        # (horizontal, from the front back to the sphenoid ridge over the orbit apices)
        z_floor = max(o[2] + o_semi[2] for o in orbits) + 1.0 * F
        sh.floor = (z_floor, y_orb + 0.6 * o_semi[1], 4.0 * F)

        self._orbits = [(o, o_semi) for o in orbits]
        self._globes = [(g, r_eye) for g in globes]
        self._orbit_wall = 1.4 * F
        self._maxilla = (np.array([0.0, nasion[1] + 15 * F, z_orb - 19 * F]), np.array([24.0, 17.0, 14.0]) * F)
        self._palate = (np.array([0.0, nasion[1] + 24 * F, z_orb - 30 * F]), np.array([14.0, 17.0, 2.5]) * F)
        self._nasal_cavity = (np.array([0.0, nasion[1] + 17 * F, z_orb - 14 * F]), np.array([7.5, 17.0, 13.0]) * F)
        chin = np.array([0.0, nasion[1] + 9 * F, z_orb - 46 * F])
        mand = [chin]
        caps = []
        for x in (1.0, -1.0):
            mid = np.array([x * 19 * F, nasion[1] + 26 * F, z_orb - 44 * F])
            gon = np.array([x * 28 * F, y_ear - 12 * F, z_orb - 38 * F])
            con = np.array([x * 30 * F, y_ear - 6 * F, z_ear])
            caps += [(chin, mid, 4.2 * F), (mid, gon, 4.0 * F), (gon, con, 3.3 * F)]
            zyg0 = np.array([x * (ipd / 2 + 13 * F), nasion[1] + 12 * F, z_orb - 10 * F])
            zyg1 = np.array([x * min(x_ear - 4, ipd / 2 + 33 * F), y_ear - 12 * F, z_ear - 1 * F])
            caps.append((zyg0, zyg1, 2.6 * F))
            mand.append(gon)
        caps.append((nasion + np.array([0.0, 1.0, -1.0]), nasion + np.array([0.0, -5.0 * F, -13.0 * F]), 2.0 * F))
        self._face_capsules = caps
        self._mandible_points = mand
        # skull base: petrous ridges, clivus, foramen magnum
        self._petrous = []
        y_fm = y_ear + 18 * F
        fm_semi = np.array([9.0, 11.0]) * F
        for x in (1.0, -1.0):
            ends = [(x * 0.62 * sh.a, y_ear + 8 * F), (x * 0.16 * sh.a, y_ear - 12 * F)]
            zs = self._floor_z(ends)
            a_pt = np.array([*ends[0], zs[0] + 3.0 * F])
            b_pt = np.array([*ends[1], zs[1] + 5.0 * F])
            self._petrous.append((a_pt, b_pt, 5.5 * F))
        ends = [(0.0, y_ear - 14 * F), (0.0, y_fm - fm_semi[1] - 3 * F)]
        zs = self._floor_z(ends)
        self._clivus = (np.array([*ends[0], zs[0] + 12 * F]), np.array([*ends[1], zs[1] + 3 * F]), 5.0 * F)
        self._foramen = (np.array([0.0, y_fm]), fm_semi, z_ear + 5 * F)
        # soft tissue envelope
        self._face_skin = (np.array([0.0, nasion[1] + 23 * F, z_orb - 22 * F]),
                           np.array([0.5 * sh.a + 8 * F, 32.0 * F, 37.0 * F]))
        self._nose = (np.array([0.0, nasion[1] - 3 * F, z_orb - 13 * F]), np.array([8.0, 9.0, 12.0]) * F)
        self._ventricles = [
            (np.array([x * 0.13 * sh.a, 0.05 * sh.b, 0.12 * sh.c_up]),
             np.array([0.07 * sh.a, 0.38 * sh.b, 0.1 * sh.c_up]))
            for x in (1.0, -1.0)
        ]
        # bounding boxes (vault centre at the origin for now), then centre the head on the isocenter
        vault = self._vault_extents()
        lo = vault["lo"] - self.scalp_mm
        hi = vault["hi"] + self.scalp_mm
        face_box = _ellipsoid_box(*self._face_skin).union(_ellipsoid_box(*self._nose))
        for a_, b_, r_ in caps:
            face_box = face_box.union(_capsule_box(a_, b_, r_ + 4.0))
        head = _Box(np.minimum(lo, face_box.lo), np.maximum(hi, face_box.hi))
        # include the vault bottom (skull base below the equator)
        u = torch.as_tensor(_fibonacci_sphere(8000), dtype=torch.float64)
        pts = (self._shape.surface_radius(u, envelope=True)[:, None] * u).numpy()
        head = head.union(_Box(pts.min(0) - self.scalp_mm, pts.max(0) + self.scalp_mm))
        # a neck stub from the ear level to 15 mm below the chin (the grid holds it)
        z_top, z_bot = z_ear, head.lo[2] - 15.0
        self._neck = (np.array([0.0, y_ear + 10 * F, 0.5 * (z_top + z_bot)]),
                      np.array([0.42 * sh.a, 0.42 * sh.b, 0.5 * (z_top - z_bot)]))
        self.c0 = -(head.lo + head.hi) / 2.0
        self._head_box = _Box(head.lo + self.c0, head.hi + self.c0)
        neck_box = _ellipsoid_box(*self._neck)
        self._skin_box = self._head_box.union(_Box(neck_box.lo + self.c0, neck_box.hi + self.c0))
        margin = 12.0
        fb = face_box
        for o, semi in self._orbits:
            fb = fb.union(_ellipsoid_box(o, semi, margin=self._orbit_wall))
        fb = fb.union(_ellipsoid_box(*self._maxilla)).union(_ellipsoid_box(*self._palate))
        self._face_box = _Box(fb.lo + self.c0 - margin, fb.hi + self.c0 + margin)
        base = _Box(np.full(3, np.inf), np.full(3, -np.inf))
        for a_, b_, r_ in [*self._petrous, self._clivus]:
            base = base.union(_capsule_box(a_, b_, r_))
        self._base_box = _Box(base.lo + self.c0 - 2.0, base.hi + self.c0 + 2.0)

    # -- evaluation -----------------------------------------------------------------------
    def _evaluate(self, pts: Tensor, need_near: bool = False) -> tuple[Tensor, Tensor | None]:
        """Material index (int64) at world points ``(N, 3)`` and, if asked, the distance (mm)
        to the nearest interface (an estimate, used to decide where to supersample)."""
        sh = self._shape
        c0 = torch.as_tensor(self.c0, dtype=pts.dtype)
        rel = pts - c0
        d, env, u, r = sh.sdf(rel)
        t = self._thickness(u)
        near = None

        # soft tissue envelope (head, neck, and in the face box the face)
        d_skin = _smin(env - self.scalp_mm, _ellipsoid_sdf(rel, *self._neck), 10.0)
        mat = torch.where(d_skin < 0, SOFT, AIR)
        face = self._face_box.mask(pts)
        idx_face = face.nonzero().squeeze(-1)
        if need_near:
            near = torch.minimum(d.abs(), (d + t).abs())
        if idx_face.numel():
            q = rel[idx_face]
            mat_f, ds_f, near_f = self._face(q, d_skin[idx_face], need_near)
            mat[idx_face] = mat_f
            d_skin[idx_face] = ds_f
            if need_near:
                near[idx_face] = torch.minimum(near[idx_face], near_f)
        if need_near:
            near = torch.minimum(near, d_skin.abs())

        # vault shell: tables, diploe, sutures, fontanelles
        shell = (d <= 0) & (d > -t)
        mat = torch.where(shell, TABLE, mat)
        if self.diploe_fraction > 0:
            t_table = t * (1.0 - self.diploe_fraction) / 2.0
            dip = (d < -t_table) & (d > -(t - t_table))
            mat = torch.where(dip, DIPLOE, mat)
            if need_near:
                near = torch.minimum(near, torch.minimum((d + t_table).abs(), (d + t - t_table).abs()))
        shell_sdf = (d + t / 2).abs() - t / 2  # > 0 outside the shell
        for sut in self._sutures.values():
            if sut.width <= 0:
                continue
            n = torch.as_tensor(sut.normal, dtype=pts.dtype)
            # (A x u) . W = u . (W x A) and (u x B) . W = u . (B x W): inside the wedge A..B
            extent = torch.minimum(u @ torch.as_tensor(np.cross(sut.wedge_normal, sut.start), dtype=pts.dtype),
                                   u @ torch.as_tensor(np.cross(sut.end, sut.wedge_normal), dtype=pts.dtype))
            band = torch.maximum((rel @ n).abs() - sut.width / 2, -r * extent)
            mat = torch.where(shell & (band < 0), SUTURE, mat)
            if need_near:
                near = torch.minimum(near, torch.maximum(band.abs(), shell_sdf))
        for f in self._fontanelles:
            s_ = rel @ torch.as_tensor(f.e_sag, dtype=pts.dtype)
            l_ = rel @ torch.as_tensor(f.e_lat, dtype=pts.dtype)
            hs = torch.where(s_ < 0, torch.full_like(s_, f.front), torch.full_like(s_, f.back))
            dia = (s_.abs() / hs + l_.abs() / f.lateral - 1.0) / torch.sqrt(1.0 / hs**2 + 1.0 / f.lateral**2)
            dia = torch.where(u @ torch.as_tensor(f.direction, dtype=pts.dtype) > 0.7, dia, torch.full_like(dia, 1e3))
            mat = torch.where(shell & (dia < 0), SUTURE, mat)
            if need_near:
                near = torch.minimum(near, torch.maximum(dia.abs(), shell_sdf))
        # foramen magnum: a vertical hole through the skull base
        (fy_c, (fx, fy), fz) = self._foramen[0][1], self._foramen[1], self._foramen[2]
        ell = torch.sqrt((rel[:, 0] / fx) ** 2 + ((rel[:, 1] - fy_c) / fy) ** 2)
        fm = (ell - 1.0) * min(fx, fy)
        low = rel[:, 2] < fz
        mat = torch.where(shell & low & (fm < 0), BRAIN, mat)
        if need_near:
            near = torch.minimum(near, torch.where(low, torch.maximum(fm.abs(), shell_sdf), near))

        # cranial cavity: CSF, brain, ventricles
        cavity = d <= -t
        brain = d <= -(t + self.csf_mm)
        mat = torch.where(cavity, torch.where(brain, BRAIN, CSF), mat)
        if need_near:
            near = torch.minimum(near, (d + t + self.csf_mm).abs())
        for c, semi in self._ventricles:
            dv = _ellipsoid_sdf(rel, c, semi)
            mat = torch.where(brain & (dv < 0), CSF, mat)
            if need_near:
                near = torch.minimum(near, dv.abs())
        # skull base structures over the cavity
        base = self._base_box.mask(pts)
        idx_b = base.nonzero().squeeze(-1)
        if idx_b.numel():
            q = rel[idx_b]
            db = torch.stack([_capsule_sdf(q, a_, b_, r_) for a_, b_, r_ in [*self._petrous, self._clivus]]).amin(0)
            sub = mat[idx_b]
            sub = torch.where((db < 0) & (d[idx_b] < 0), DENSE, sub)
            mat[idx_b] = sub
            if need_near:
                near[idx_b] = torch.minimum(near[idx_b], db.abs())
        return mat, near

    def _face(self, q: Tensor, d_skin: Tensor, need_near: bool):
        """Materials of the face region (points relative to the vault centre)."""
        near = torch.full_like(d_skin, 1e3) if need_near else None

        def upd(dist):
            nonlocal near
            if need_near:
                near = torch.minimum(near, dist.abs())

        ds = _smin(d_skin, _ellipsoid_sdf(q, *self._face_skin), 12.0)
        dn = _ellipsoid_sdf(q, *self._nose)
        ds = _smin(ds, dn, 4.0)
        caps = torch.stack([_capsule_sdf(q, a_, b_, r_) for a_, b_, r_ in self._face_capsules]).amin(0)
        ds = _smin(ds, caps - 5.0, 6.0)
        mat = torch.where(ds < 0, SOFT, AIR)
        dm = _ellipsoid_sdf(q, *self._maxilla)
        dp = _ellipsoid_sdf(q, *self._palate)
        dnc = _ellipsoid_sdf(q, *self._nasal_cavity)
        for dist in (dm, dp, dnc):
            upd(dist)
        mat = torch.where((dm < 0) | (dp < 0), FACIAL, mat)
        mat = torch.where((dnc < 0) & (dp >= 0), AIR, mat)
        for (o, semi), (g, rg) in zip(self._orbits, self._globes):
            do = _ellipsoid_sdf(q, o, semi)
            opening = (q[:, 1] - float(o[1])) < -0.55 * float(semi[1])
            wall = (do >= 0) & (do < self._orbit_wall) & ~opening
            mat = torch.where(wall, FACIAL, mat)
            mat = torch.where(do < 0, FAT, mat)
            dg = (q - torch.as_tensor(g, dtype=q.dtype)).norm(dim=-1) - rg
            mat = torch.where(dg < 0, EYE, mat)
            upd(do)
            upd(do - self._orbit_wall)
            upd(dg)
        mat = torch.where(caps < 0, FACIAL, mat)
        upd(caps)
        upd(ds)
        return mat, ds, near

    def _floor_z(self, xy) -> np.ndarray:
        """z (relative to the vault centre) of the outer table below each ``(x, y)``."""
        xy_t = torch.as_tensor(np.asarray(xy, dtype=float))
        lo = torch.full((xy_t.shape[0],), -3.0 * self._shape.c_down, dtype=torch.float64)  # outside
        hi = torch.zeros_like(lo)  # inside
        for _ in range(30):
            mid = 0.5 * (lo + hi)
            inside = self._shape.sdf(torch.cat([xy_t, mid[:, None]], -1))[0] < 0
            hi = torch.where(inside, mid, hi)
            lo = torch.where(inside, lo, mid)
        return (0.5 * (lo + hi)).numpy()

    def vault_points(self, directions, depth: float = 0.5) -> np.ndarray:
        """World points (mm) inside the vault's bone along directions from the vault centre.

        Parameters
        ----------
        directions : array-like, shape ``(n, 3)``
            Directions (any length) from :attr:`landmarks` ``["center"]``.
        depth : float
            Fraction of the local vault thickness below the outer table (0 = outer surface,
            0.5 = mid-thickness, 1 = inner surface).

        Returns
        -------
        ndarray, shape ``(n, 3)``
        """
        d = np.asarray(directions, dtype=np.float64).reshape(-1, 3)
        norm = np.linalg.norm(d, axis=1, keepdims=True)
        if not np.all(np.isfinite(d)) or np.any(norm == 0):
            raise ValueError("directions must be finite, non-zero 3-vectors")
        if not 0.0 <= depth <= 1.0:
            raise ValueError(f"depth must be in [0, 1] (fraction of the vault thickness), got {depth!r}")
        u = torch.as_tensor(d / norm)
        radius = self._shape.surface_radius(u) - depth * self._thickness(u)
        return self.c0 + (radius[:, None] * u).numpy()

    def _thickness(self, u: Tensor) -> Tensor:
        ux, uy, uz = u.unbind(-1)
        f = (
            1.0
            + 0.15 * (-uy).clamp_min(0.0) ** 2
            + 0.30 * torch.exp((0.8 * uy - 0.6 * uz - 1.0) / 0.12)
            - 0.35 * torch.exp((ux.abs() - 1.0) / 0.06)
            + 0.40 * ((-uz - 0.5) / 0.5).clamp(0.0, 1.0)
        )
        return self.thickness_mm * f.clamp_min(0.5)

    # -- public evaluation ------------------------------------------------------------------
    def _points(self, points) -> Tensor:
        p = points if isinstance(points, Tensor) else torch.as_tensor(np.asarray(points, dtype=np.float64))
        if p.shape[-1:] != (3,):
            raise ValueError(f"points must have shape (..., 3) (world x, y, z in mm), got {tuple(p.shape)}")
        p = p.detach().to("cpu", _DTYPE)
        if not bool(torch.isfinite(p).all()):
            raise ValueError("points must be finite")
        return p

    def _materials_at(self, points) -> Tensor:
        p = self._points(points)
        flat = p.reshape(-1, 3)
        out = torch.empty(flat.shape[0], dtype=torch.int64)
        with torch.no_grad(), _eval_threads():
            for i in range(0, flat.shape[0], CHUNK_POINTS):
                out[i : i + CHUNK_POINTS] = self._evaluate(flat[i : i + CHUNK_POINTS])[0]
        return out.reshape(p.shape[:-1])

    def values(self, points) -> Tensor:
        """Linear attenuation (1/mm, float32) at world points ``(..., 3)`` (x, y, z mm)."""
        return self._mu[self._materials_at(points)]

    def labels(self, points) -> Tensor:
        """Tissue labels (uint8, :data:`LABELS`) at world points ``(..., 3)``."""
        return self._mat_label[self._materials_at(points)]

    def rasterize(self, grid: VolumeGrid, supersample: int = 2, dtype: torch.dtype = torch.float32, device=None,
                  hu: bool = False) -> Tensor:
        """The skull's linear attenuation on a voxel grid.

        Every voxel gets the value at its centre; where an interface passes within about a
        voxel of the centre, the mean over ``supersample^3`` regular sub-samples (at
        ``(m + 1/2)/k - 1/2`` voxel sizes from the centre along each axis) instead, so thin
        bone, sutures and edges get their partial-volume value. Work is done in z-slabs.

        Parameters
        ----------
        grid : VolumeGrid
            Any grid (world LPS mm); :func:`default_grid` holds every skull.
        supersample : int
            Sub-samples per voxel and axis, ``>= 1`` (1 = centre values only).
        dtype, device : optional
            Output dtype (float) and device.
        hu : bool
            Return Hounsfield units instead of attenuation.

        Returns
        -------
        Tensor, shape ``(nz, ny, nx)``
            Linear attenuation in 1/mm at ``parameters.energy_kev`` (or HU).

        Raises
        ------
        ValueError
            ``grid`` is not a VolumeGrid or ``supersample`` not a positive integer.
        """
        k = _check_grid_and_k(grid, supersample)
        out = self._rasterize_table(grid, k, self._mu)
        if hu:
            out = growth.attenuation_to_hu(out, self.parameters.energy_kev)
        return out.to(device=device, dtype=dtype)

    def _rasterize_table(self, grid: VolumeGrid, k: int, table: Tensor) -> Tensor:
        """Voxel means of ``table[material]`` (refined where an interface is near)."""
        _, ny, nx = grid.shape
        sz, sy, sx = grid.spacing
        half_diag = 0.5 * math.sqrt(sx * sx + sy * sy + sz * sz)
        out = torch.empty(grid.shape, dtype=_DTYPE)
        off = (torch.arange(k, dtype=_DTYPE) + 0.5) / k - 0.5
        oz, oy, ox = torch.meshgrid(off * sz, off * sy, off * sx, indexing="ij")
        sub = torch.stack([ox.reshape(-1), oy.reshape(-1), oz.reshape(-1)], -1)  # (k^3, 3)
        with torch.no_grad(), _eval_threads():
            for z0, z1, pts in _slabs(grid):
                m = z1 - z0
                mat, near = self._evaluate(pts, need_near=k > 1)
                val = table[mat]
                if k > 1:
                    idx = (near < REFINE_SAFETY * half_diag).nonzero().squeeze(-1)
                    step = max(1, CHUNK_POINTS // sub.shape[0])
                    for i in range(0, idx.numel(), step):
                        j = idx[i : i + step]
                        sp = (pts[j][:, None, :] + sub[None]).reshape(-1, 3)
                        sm = self._evaluate(sp)[0]
                        val[j] = table[sm].reshape(-1, sub.shape[0]).mean(-1)
                out[z0:z1] = val.reshape(m, ny, nx)
        return out

    def label_map(self, grid: VolumeGrid) -> Tensor:
        """Tissue labels (uint8, :data:`LABELS`) at the voxel centres of ``grid``, ``(nz, ny, nx)``."""
        _check_grid_and_k(grid, 1)
        _, ny, nx = grid.shape
        out = torch.empty(grid.shape, dtype=torch.uint8)
        with torch.no_grad(), _eval_threads():
            for z0, z1, pts in _slabs(grid):
                out[z0:z1] = self._mat_label[self._evaluate(pts)[0]].reshape(z1 - z0, ny, nx)
        return out


    def bone_fraction(self, grid: VolumeGrid, supersample: int = 2) -> Tensor:
        """Fraction (float32, 0-1) of each voxel's sub-samples that are bone, ``(nz, ny, nx)``."""
        k = _check_grid_and_k(grid, supersample)
        return self._rasterize_table(grid, k, self._is_bone)

    def bone_mask(self, grid: VolumeGrid, supersample: int = 2, min_fraction: float = 0.25) -> Tensor:
        """Boolean ``(nz, ny, nx)``: voxels at least ``min_fraction`` bone (of ``supersample^3``
        sub-samples). With ``supersample=1`` and ``min_fraction`` in (0, 1]: voxel centres in
        bone, i.e. ``label_map(grid) == LABELS["bone"]``.

        The default keeps the thin infant vault a closed shell on coarse grids (a 2 mm vault
        sampled only at the centres of 3.75 mm voxels has holes); open sutures narrower than
        a quarter voxel do not show in such a mask.
        """
        if not (isinstance(min_fraction, (int, float)) and 0.0 < min_fraction <= 1.0):
            raise ValueError(f"min_fraction must be in (0, 1], got {min_fraction!r}")
        return self.bone_fraction(grid, supersample) >= min_fraction - 1e-6

    # -- measurements -----------------------------------------------------------------------
    def cephalic_index(self) -> float:
        """Cephalic index of the vault's outer table: ``100 x max width / max length``.

        Measured on the implicit surface (directions above the skull base), not a raster.
        """
        with torch.no_grad(), _eval_threads():
            return float(self._vault_extents()["cephalic_index"])

    def shape_indices(self) -> dict:
        """Shape indices of the outer table (see :func:`tomoprior.phantoms.skull.measure_shape_indices`
        for the same on a raster): cephalic index, cranial vault asymmetry index (CVAI, %, the
        difference of the two diagonals at +-30 deg from the midline over the longer), frontal
        width ratio (width at 20 % of the length from the front / maximum width), width,
        length and height (mm) and head circumference (cm, over the scalp, in the plane of the
        vault centre)."""
        with torch.no_grad(), _eval_threads():
            return self._shape_indices()

    def _shape_indices(self) -> dict:
        ext = self._vault_extents()
        sh = self._shape

        def radius(v):
            return float(sh.surface_radius(torch.as_tensor(_unit(v), dtype=torch.float64)[None])[0])

        t30 = math.radians(30)
        d1 = radius([math.sin(t30), -math.cos(t30), 0]) + radius([-math.sin(t30), math.cos(t30), 0])
        d2 = radius([-math.sin(t30), -math.cos(t30), 0]) + radius([math.sin(t30), math.cos(t30), 0])
        # frontal width in the plane of the vault centre
        th = torch.linspace(0, 2 * math.pi, 3601, dtype=torch.float64)[:-1]
        u = torch.stack([torch.cos(th), torch.sin(th), torch.zeros_like(th)], -1)
        pts = (sh.surface_radius(u)[:, None] * u).numpy()
        y_front, y_back = pts[:, 1].min(), pts[:, 1].max()
        y_f = y_front + 0.2 * (y_back - y_front)
        xs = _crossings(pts[:, 0], pts[:, 1], y_f)
        frontal = (max(xs) - min(xs)) if len(xs) >= 2 else float("nan")
        return {
            "cephalic_index": float(ext["cephalic_index"]),
            "cvai": 100.0 * abs(d1 - d2) / max(d1, d2),
            "frontal_ratio": float(frontal / (pts[:, 0].max() - pts[:, 0].min())),
            "width_mm": float(ext["width_mm"]),
            "length_mm": float(ext["length_mm"]),
            "height_mm": float(ext["height_mm"]),
            "head_circumference_cm": self._circumference() / 10.0,
        }

    # -- geometry and metadata ------------------------------------------------------------------
    @property
    def landmarks(self) -> dict[str, np.ndarray]:
        """World positions (mm) of vault landmarks on the outer table: nasion, bregma, lambda,
        pterion and asterion (left/right), and the vault centre ``"center"``."""
        out = {"center": self.c0.copy()}
        for k, d in self._landmark_dirs.items():
            out[k] = self.c0 + float(self._shape.surface_radius(torch.as_tensor(d)[None])[0]) * d
        return out

    @property
    def suture_planes(self) -> dict[str, tuple[np.ndarray, float]]:
        """Each suture's plane through the vault centre: ``name -> (unit normal, width mm)``.

        The suture is the band ``|normal . (p - landmarks["center"])| < width / 2`` through
        the vault between its two landmarks; ``width == 0`` for a fused (or, for the
        metopic suture after about 9 months, physiologically closed) suture.
        """
        return {k: (s.normal.copy(), float(s.width)) for k, s in self._sutures.items()}

    def bounding_box(self, include_neck: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """World ``(lo, hi)`` corners (mm, ``(x, y, z)``) of a box around the head's skin."""
        b = self._skin_box if include_neck else self._head_box
        return b.lo.copy(), b.hi.copy()

    def suture_points(self, name: str, n: int = 33, depth: float = 0.5, start: float = 0.1,
                      stop: float = 0.9) -> np.ndarray:
        """Points ``(n, 3)`` (world mm) along a suture's midline inside the bone shell.

        ``depth`` is the fraction of the vault thickness below the outer table (0.5 = middle).
        The points run from ``start`` to ``stop`` (fractions of the arc between the suture's
        two landmarks, e.g. bregma to lambda), so the fontanelles at the ends can be left
        out. Works for fused sutures too (the same curve, where the normal skull has its gap).
        """
        if name not in SUTURES:
            raise ValueError(f"unknown suture {name!r}; valid: {', '.join(SUTURES)}")
        if not (0.0 <= start <= stop <= 1.0) or not (0.0 <= depth <= 1.0):
            raise ValueError(f"need 0 <= start <= stop <= 1 and 0 <= depth <= 1, got {start}, {stop}, {depth}")
        sut = self._sutures[name]
        a, b = sut.start, sut.end
        ang = math.acos(float(np.clip(a @ b, -1, 1)))
        f = np.linspace(start, stop, n)[:, None]
        dirs = (np.sin((1 - f) * ang) * a + np.sin(f * ang) * b) / math.sin(ang)
        return self.vault_points(dirs, depth)

    def to_dict(self) -> dict:
        """Parameters and derived anatomy (plain Python types; YAML/JSON friendly)."""
        ind = self.shape_indices()
        return {
            "parameters": self.parameters.to_dict(),
            "fused_sutures": list(self.parameters.fused_sutures),
            "head_circumference_cm": round(ind["head_circumference_cm"], 3),
            "cephalic_index": round(ind["cephalic_index"], 3),
            "cvai": round(ind["cvai"], 3),
            "frontal_ratio": round(ind["frontal_ratio"], 4),
            "vault_mm": {k: round(ind[k], 3) for k in ("width_mm", "length_mm", "height_mm")},
            "vault_thickness_mm": round(self.thickness_mm, 4),
            "diploe_fraction": round(self.diploe_fraction, 4),
            "suture_width_mm": {k: round(s.width, 4) for k, s in self._sutures.items()},
            "fontanelles_mm": {
                f.name: [round(f.front + f.back, 3), round(2 * f.lateral, 3)] for f in self._fontanelles
            },
            "fontanelle_closure_years": dict(self.fontanelle_closure_years),
            "energy_kev": self.parameters.energy_kev,
            "attenuation_per_mm": {k: round(v, 6) for k, v in self.attenuation.items()},
            "labels": dict(LABELS),
            "landmarks_mm": {k: [round(float(c), 3) for c in v] for k, v in self.landmarks.items()},
        }

    def __repr__(self) -> str:
        p = self.parameters
        return (f"Skull(age_years={p.age_years:g}, variant={p.variant!r}, side={p.side!r}, seed={p.seed}, "
                f"cephalic_index={self.cephalic_index():.1f})")


def _crossings(x: np.ndarray, y: np.ndarray, y0: float) -> list[float]:
    """x where the closed polygon (x, y) crosses the line y = y0."""
    out = []
    x1, y1 = np.roll(x, -1), np.roll(y, -1)
    for xa, ya, xb, yb in zip(x, y, x1, y1):
        if (ya - y0) * (yb - y0) <= 0 and ya != yb:
            out.append(xa + (y0 - ya) * (xb - xa) / (yb - ya))
    return out


def _check_grid_and_k(grid, supersample) -> int:
    if not isinstance(grid, VolumeGrid):
        raise ValueError(f"grid must be a VolumeGrid (e.g. default_grid(64)), got {type(grid).__name__}")
    if isinstance(supersample, bool) or not isinstance(supersample, (int, np.integer)) or supersample < 1:
        raise ValueError(
            f"supersample must be a positive integer (sub-samples per voxel and axis), got {supersample!r}"
        )
    return int(supersample)
