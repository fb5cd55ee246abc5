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

Modules
-------
:mod:`.primitives` (smooth Booleans, ellipsoid and capsule distances, boxes),
:mod:`.variants` (each craniosynostosis as data), :mod:`.vault` (shape, size fit, sutures,
fontanelles, shell and cavity), :mod:`.face` (face and skull base), :mod:`.tissues`
(materials, labels, attenuation); this module builds a :class:`Skull` from them and evaluates
and rasterises it.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from ..._threads import torch_threads
from ...geometry.grid import VolumeGrid
from . import growth
from .face import place_face, place_skull_base
from .measure import base_in_cavity_mm3, cavity_volume_mm3, cranial_measures, mean_bone_thickness
from .parameters import DEFAULT_CEPHALIC_INDEX, SUTURES, SkullParameters
from .primitives import Box, crossings, ellipsoid_box, ellipsoid_sdf, fibonacci_sphere, smin, unit
from .spine import place_spine
from .tissues import AIR, BRAIN, LABELS, MATERIAL_LABELS, MATERIALS, SOFT, material_attenuation
from .variants import VARIANT_SHAPES
from .vault import BONES, Vault, VaultShape, _landmarks_and_ridges, fit_size, make_fontanelles, make_sutures

Tensor = torch.Tensor

__all__ = ["ANATOMY_VERSIONS", "LABELS", "MATERIALS", "MATERIAL_LABELS", "Skull", "default_grid", "make_skull"]

#: Versions of the anatomy: ``"v1"`` is the first model (flat skull base with a step under the
#: anterior fossa, capsule face and mandible, no spine, uniform tissues, sutures as plain
#: gaps), kept so that weights trained on it (the PSCT-Net demo weights) are evaluated on
#: the skull they were trained on; ``"v2"`` (the default) adds the sloped skull base,
#: petrous pyramids, mastoids, a U-shaped mandible, orbit rims, the upper cervical spine,
#: soft tissue and brain texture and sutures with thinned margins (docs/skull.md).
ANATOMY_VERSIONS = ("v1", "v2")

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

#: Tissue texture (anatomy v2): relative standard deviation of the attenuation of soft tissue
#: and of brain (a sum of :data:`TEXTURE_WAVES` plane waves of 10-40 mm wavelength), and its
#: clip (the texture never moves a value by more than this fraction).
TEXTURE_STD = 0.01
TEXTURE_CLIP = 0.03
TEXTURE_WAVES = 8


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


def make_skull(parameters: SkullParameters | None = None, *, anatomy: str = "v2", **kwargs) -> Skull:
    """Build a :class:`Skull` from :class:`SkullParameters` or from their fields as keywords.

    ``anatomy`` is the model version (:data:`ANATOMY_VERSIONS`).

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
    return Skull(parameters, anatomy=anatomy)


@functools.cache
def _fit_directions() -> Tensor:
    """Directions (a Fibonacci lattice, float64 ``(1000, 3)``) on which the thickness and volume are fitted."""
    return torch.as_tensor(fibonacci_sphere(1000), dtype=torch.float64)


def _fit_thickness(vault: Vault, target: dict, iterations: int = 2) -> None:
    """Scale each bone's thickness along the ray (``vault.bone_thickness_mm``, in place) so that
    its mean thickness along the surface normal (what CT measures) is ``target[bone]`` (mm):
    the ray from the centre crosses the shell obliquely where the surface is not
    perpendicular to it (most at the occiput)."""
    u = _fit_directions()
    for _ in range(iterations):
        got = mean_bone_thickness(vault, u, iterations=10)
        for bone in BONES:
            vault.bone_thickness_mm[bone] *= target[bone] / got[f"{bone}_thickness_mm"]


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
    anatomy : str
        Model version, ``"v2"`` (default) or ``"v1"`` (:data:`ANATOMY_VERSIONS`).

    Notes
    -----
    Attenuation is linear attenuation in 1/mm at ``parameters.energy_kev`` (default 60 keV):
    soft tissue 0.0209, brain 0.0213, CSF 0.0206, vault tables about 0.041 (newborn) to 0.052
    (6 years), diploe, facial and petrous bone in between and above; see :attr:`attenuation`.
    Labels: :data:`LABELS`.
    """

    def __init__(self, parameters: SkullParameters, anatomy: str = "v2"):
        if anatomy not in ANATOMY_VERSIONS:
            raise ValueError(f"anatomy must be one of {ANATOMY_VERSIONS} (model version), got {anatomy!r}")
        #: model version (:data:`ANATOMY_VERSIONS`)
        self.anatomy = anatomy
        if not isinstance(parameters, SkullParameters):
            raise ValueError(f"parameters must be a SkullParameters, got {type(parameters).__name__}")
        self.parameters = parameters
        with torch.no_grad(), _eval_threads():
            self._build()

    # -- construction ---------------------------------------------------------------------
    def _build(self) -> None:
        p = self.parameters
        age = p.age_years
        rng = np.random.default_rng(p.seed) if p.seed is not None else None
        v = p.variation if rng is not None else 0.0

        def z(n=None):  # clipped standard normal, scaled by the variation
            if rng is None:
                return 0.0 if n is None else np.zeros(n)
            return np.clip(rng.standard_normal(n), -2.0, 2.0) * v

        # the draws keep their order: a seed gives the same anatomy in every version
        z_hc, z_ci, z_t, z_font, z_close, z_face = z(), z(), z(), z(), z(), z()
        harm = z(9) * np.array([0.005, 0.012, 0.010, 0.005, 0.012, 0.005, 0.010, 0.010, 0.008])

        # anatomy v2 follows the pediatric CT norms (bone thickness, cephalic index, volume)
        normative = self.anatomy != "v1"
        if not normative and p.sex is not None:
            raise ValueError(f"sex={p.sex!r} needs anatomy 'v2' (the normative growth curves by sex); anatomy 'v1' "
                             "is the first, sex-neutral model: leave sex None")
        self.head_circumference_target_cm = (
            p.head_circumference_cm if p.head_circumference_cm is not None
            else growth.head_circumference_cm(age, p.sex) * (1.0 + 0.03 * z_hc)
        )
        ci = (growth.cephalic_index(age, p.sex) if normative and p.variant == "normal"
              else DEFAULT_CEPHALIC_INDEX[p.variant])
        self.cephalic_index_target = (
            p.cephalic_index if p.cephalic_index is not None else float(np.clip(ci + 2.0 * z_ci, 56.0, 109.0))
        )
        self.scalp_mm = 4.0
        #: mean thickness (mm, along the surface normal) of the frontal, parietal and occipital
        #: bones; ``None`` in anatomy v1 (one thickness, :attr:`thickness_mm`)
        self.bone_thickness_mm = None
        if normative:
            bones = growth.bone_thickness_mm(age, p.sex)
            self.bone_thickness_mm = {k: float(v * (1.0 + 0.08 * z_t)) for k, v in bones.items()}
            self.thickness_mm = self.bone_thickness_mm["parietal"]
        else:
            self.thickness_mm = growth.vault_thickness_v1_mm(age) * (1.0 + 0.08 * z_t)
        self.diploe_fraction = growth.diploe_fraction(age)
        self.csf_mm = growth.extra_axial_csf_mm(age)
        self.suture_width_mm = growth.suture_width_mm(age)
        self.face_scale = growth.face_scale(age) * (1.0 + 0.03 * z_face)
        self._set_materials(p.energy_kev, age)

        # vault: base ellipsoid deformed by the variant, scaled to the targets
        variant = VARIANT_SHAPES[p.variant]
        shape = VaultShape(a=60.0, b=75.0, c_up=60.0, c_down=45.0, harmonics=harm, taper=variant.taper,
                           bulges=variant.bulge_list(p.side), planes=variant.plane_list(p.side))
        if self.anatomy != "v1":
            # the posterior cranial fossa dips below the middle fossa toward the foramen magnum
            shape.bulges = [*shape.bulges, (unit([0.0, 0.5, -0.87]), 0.22, 0.15)]
        ridges = variant.ridge_list(p.side)
        landmarks = fit_size(shape, ridges, (variant.height_up, 0.62), self.head_circumference_target_cm * 10.0,
                             self.cephalic_index_target, self.scalp_mm)

        # face under the nasion; its orbit roofs set the anterior cranial fossa; the skull base on that floor
        self._face, levels = place_face(shape, landmarks, self.face_scale, age, variant, p.side, self.anatomy)
        shape.floor = levels["floor"]
        self._base = place_skull_base(shape, self.face_scale, levels["y_ear"], levels["z_ear"], self.anatomy, age)

        # the normal vault's height above the centre holds the normative intracranial volume
        # (scaled with the head size); a craniosynostosis keeps its designed proportions
        self.intracranial_volume_target_ml = None
        self._ray_thickness = dict(self.bone_thickness_mm) if normative else None
        if normative and p.variant == "normal":
            hc_median = growth.head_circumference_cm(age, p.sex)
            self.intracranial_volume_target_ml = (growth.intracranial_volume_ml(age, p.sex)
                                                  * (self.head_circumference_target_cm / hc_median) ** 3)
            landmarks = self._fit_height(shape, landmarks, ridges)

        # sutures and fontanelles on the fitted shape
        w = self.suture_width_mm
        sutures = make_sutures(landmarks, SUTURES, set(p.fused_sutures), w, w * growth.metopic_open_fraction(age))
        close_a = float(np.clip(1.75 + 0.2 * z_close, 1.5, 2.0))
        self.fontanelle_closure_years = {"anterior": close_a, "posterior": 0.2}
        fontanelles = make_fontanelles(landmarks, growth.anterior_fontanelle_mm(age, close_a),
                                       growth.posterior_fontanelle_mm(age, 0.2), 1.0 + 0.2 * z_font)
        ventricles = [
            (np.array([x * 0.13 * shape.a, 0.05 * shape.b, 0.12 * shape.c_up]),
             np.array([0.07 * shape.a, 0.38 * shape.b, 0.1 * shape.c_up]))
            for x in (1.0, -1.0)
        ]
        self._vault = Vault(shape, landmarks, self.thickness_mm, self.diploe_fraction, self.csf_mm, sutures,
                            fontanelles, ventricles, self._ray_thickness)
        if self.anatomy != "v1":  # bone edges thinned over twice the gap's width along open sutures and fontanelles
            self._vault.suture_margin_mm = 2.0 * self.suture_width_mm
        if normative:
            _fit_thickness(self._vault, self.bone_thickness_mm, iterations=1 if p.variant == "normal" else 2)
        self._spine = None
        if self.anatomy != "v1":
            y_fm = float(self._base.foramen[0][1])
            self._spine = place_spine(y_fm, float(shape.z_below([(0.0, y_fm)])[0]), self.face_scale)
        self._texture = self._make_texture(rng) if self.anatomy != "v1" else None
        self._place_head(levels["y_ear"], levels["z_ear"])

    def _make_texture(self, rng) -> tuple[Tensor, Tensor, Tensor] | None:
        """Plane waves of the tissue texture (own generator, so the anatomy's draws keep their
        order): ``(wave vectors (2, K, 3) 1/mm, phases (2, K), textured-material weights
        (materials, 2))`` for soft tissue and brain; ``None`` without a seed."""
        if self.parameters.seed is None:
            return None
        g = np.random.default_rng([int(self.parameters.seed), 0x7E7])
        k = TEXTURE_WAVES
        dirs = g.standard_normal((2, k, 3))
        dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
        wavelength = g.uniform(10.0, 40.0, (2, k, 1))
        kvec = torch.as_tensor(2 * math.pi * dirs / wavelength, dtype=_DTYPE)
        phase = torch.as_tensor(g.uniform(0, 2 * math.pi, (2, k)), dtype=_DTYPE)
        which = torch.zeros(len(MATERIALS), 2, dtype=_DTYPE)
        which[SOFT, 0] = 1.0
        which[BRAIN, 1] = 1.0
        return kvec, phase, which

    def _texture_factors(self, rel: Tensor) -> Tensor | None:
        """Relative texture ``(N, 2)`` (soft tissue, brain) at points ``rel`` relative to ``c0``."""
        if self._texture is None:
            return None
        kvec, phase, _ = self._texture
        amp = TEXTURE_STD * math.sqrt(2.0 / kvec.shape[1])
        waves = torch.cos(torch.einsum("nc,tkc->ntk", rel, kvec) + phase).sum(-1) * amp
        return waves.clamp(-TEXTURE_CLIP, TEXTURE_CLIP)

    def _fit_height(self, shape: VaultShape, landmarks: dict, ridges: list, iterations: int = 2) -> dict:
        """Scale the vault's height above its centre (``shape.c_up``, in place) until the
        cranial cavity (less the skull base rising into it) holds
        :attr:`intracranial_volume_target_ml`; returns the landmarks on the new shape.

        The head circumference and cephalic index are measured in and near the plane of
        the centre, so this leaves them as :func:`fit_size` set them; only the dome and the
        landmarks on it (bregma, lambda) move.
        """
        target = self.intracranial_volume_target_ml * 1000.0
        u = _fit_directions()
        ray_thickness = self._ray_thickness
        for i in range(iterations):
            vault = Vault(shape, landmarks, self.thickness_mm, self.diploe_fraction, self.csf_mm, {}, [], [],
                          ray_thickness)
            if i == 0:  # the dome's height hardly changes the thickness along the rays
                _fit_thickness(vault, self.bone_thickness_mm, iterations=1)
                base = base_in_cavity_mm3(vault, self._base, step=2.0)
            total, upper = cavity_volume_mm3(vault, u, iterations=14)
            # the part above the centre grows in proportion to the height
            shape.c_up *= float(np.clip(1.0 + (target - (total - base)) / upper, 0.7, 1.4))
            landmarks = _landmarks_and_ridges(shape, ridges)
        return landmarks

    def _set_materials(self, energy: float, age: float) -> None:
        values = material_attenuation(energy, age)
        #: attenuation (1/mm) of each material at the stated energy
        self.attenuation = values
        self._mu = torch.tensor([values[k] for k in MATERIALS], dtype=_DTYPE)
        self._mat_label = torch.tensor(MATERIAL_LABELS, dtype=torch.uint8)
        self._is_bone = (self._mat_label == LABELS["bone"]).to(_DTYPE)

    def _place_head(self, y_ear: float, z_ear: float) -> None:
        """Neck stub, head centre ``c0`` (the head's box centred on the isocenter) and the
        world boxes that limit where the face and the skull base are evaluated."""
        sh = self._vault.shape
        F = self.face_scale
        # bounding boxes (vault centre at the origin for now), then centre the head on the isocenter
        vault = sh.extents()
        lo = vault["lo"] - self.scalp_mm
        hi = vault["hi"] + self.scalp_mm
        face_box = self._face.skin_box()
        head = Box(np.minimum(lo, face_box.lo), np.maximum(hi, face_box.hi))
        # include the vault bottom (skull base below the equator)
        u = torch.as_tensor(fibonacci_sphere(8000), dtype=torch.float64)
        pts = (sh.surface_radius(u, envelope=True)[:, None] * u).numpy()
        head = head.union(Box(pts.min(0) - self.scalp_mm, pts.max(0) + self.scalp_mm))
        # a neck stub from the ear level to 15 mm below the chin (the grid holds it)
        z_top, z_bot = z_ear, head.lo[2] - 15.0
        self._neck = (np.array([0.0, y_ear + 10 * F, 0.5 * (z_top + z_bot)]),
                      np.array([0.42 * sh.a, 0.42 * sh.b, 0.5 * (z_top - z_bot)]))
        self.c0 = -(head.lo + head.hi) / 2.0
        self._head_box = head.shifted(self.c0)
        self._skin_box = self._head_box.union(ellipsoid_box(*self._neck).shifted(self.c0))
        self._face_box = self._face.region_box().shifted(self.c0, 12.0)
        self._base_box = self._base.box().shifted(self.c0, 2.0)
        self._spine_box = self._spine.box().shifted(self.c0, 2.0) if self._spine is not None else None

    # -- evaluation -----------------------------------------------------------------------
    def _evaluate(self, pts: Tensor, need_near: bool = False) -> tuple[Tensor, Tensor | None]:
        """Material index (int64) at world points ``(N, 3)`` and, if asked, the distance (mm)
        to the nearest interface (an estimate, used to decide where to supersample).

        Later layers overwrite earlier ones: skin, face, vault shell (tables, diploe,
        sutures, fontanelles), foramen magnum, cranial cavity, skull base.
        """
        vault = self._vault
        c0 = torch.as_tensor(self.c0, dtype=pts.dtype)
        rel = pts - c0
        d, env, u, r = vault.shape.sdf(rel)
        t = vault.thickness(u)
        near = None

        # soft tissue envelope (head, neck, and in the face box the face)
        d_skin = smin(env - self.scalp_mm, ellipsoid_sdf(rel, *self._neck), 10.0)
        mat = torch.where(d_skin < 0, SOFT, AIR)
        idx_face = self._face_box.mask(pts).nonzero().squeeze(-1)
        if need_near:
            near = torch.minimum(d.abs(), (d + t).abs())
        if idx_face.numel():
            mat_f, ds_f, near_f = self._face.materials(rel[idx_face], d_skin[idx_face], need_near)
            mat[idx_face] = mat_f
            d_skin[idx_face] = ds_f
            if need_near:
                near[idx_face] = torch.minimum(near[idx_face], near_f)
        if need_near:
            near = torch.minimum(near, d_skin.abs())

        mat, near, shell, shell_sdf = vault.shell(mat, near, rel, d, t, u, r)
        mat, near = self._base.foramen_magnum(mat, near, rel, shell, shell_sdf)
        mat, near = vault.cavity(mat, near, rel, d, t)
        # skull base structures over the cavity
        idx_b = self._base_box.mask(pts).nonzero().squeeze(-1)
        if idx_b.numel():
            near_b = near[idx_b] if need_near else None
            mat[idx_b], near_b = self._base.dense_bone(mat[idx_b], near_b, rel[idx_b], d[idx_b])
            if need_near:
                near[idx_b] = near_b
        if self._spine_box is not None:
            idx_s = self._spine_box.mask(pts).nonzero().squeeze(-1)
            if idx_s.numel():
                near_s = near[idx_s] if need_near else None
                mat[idx_s], near_s = self._spine.paint(mat[idx_s], near_s, rel[idx_s])
                if need_near:
                    near[idx_s] = near_s
        return mat, near

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
        return self.c0 + self._vault.points(d / norm, depth)


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
        """Linear attenuation (1/mm, float32) at world points ``(..., 3)`` (x, y, z mm),
        with the tissue texture (anatomy v2)."""
        mat = self._materials_at(points)
        val = self._mu[mat]
        if self._texture is not None:
            rel = self._points(points).reshape(-1, 3) - torch.as_tensor(self.c0, dtype=_DTYPE)
            with torch.no_grad():
                tex = (self._texture_factors(rel) * self._texture[2][mat.reshape(-1)]).sum(-1)
            val = val * (1.0 + tex.reshape(val.shape))
        return val

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
        out = self._rasterize_table(grid, k, self._mu, texture=True)
        if hu:
            out = growth.attenuation_to_hu(out, self.parameters.energy_kev)
        return out.to(device=device, dtype=dtype)

    def _rasterize_table(self, grid: VolumeGrid, k: int, table: Tensor, texture: bool = False) -> Tensor:
        """Voxel means of ``table[material]`` (refined where an interface is near); with
        ``texture`` soft tissue and brain carry the tissue texture (at the same samples)."""
        texture = texture and self._texture is not None
        c0 = torch.as_tensor(self.c0, dtype=_DTYPE)
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
                if texture:  # value x (1 + texture of its tissue); (N, 2) per tissue, zero off soft tissue and brain
                    tw = table[:, None] * self._texture[2]  # (materials, 2)
                    tex = torch.zeros(pts.shape[0], 2, dtype=_DTYPE)
                    it = (self._texture[2].sum(-1) > 0)[mat].nonzero().squeeze(-1)
                    tex[it] = self._texture_factors(pts[it] - c0)
                    val = val + (tw[mat] * tex).sum(-1)
                if k > 1:
                    idx = (near < REFINE_SAFETY * half_diag).nonzero().squeeze(-1)
                    step = max(1, CHUNK_POINTS // sub.shape[0])
                    for i in range(0, idx.numel(), step):
                        j = idx[i : i + step]
                        sp = (pts[j][:, None, :] + sub[None]).reshape(-1, 3)
                        sm = self._evaluate(sp)[0]
                        val[j] = table[sm].reshape(-1, sub.shape[0]).mean(-1)
                        if texture:  # at each sub-sample, so refined voxels are exact sub-sample means
                            ts = torch.zeros(sp.shape[0], 2, dtype=_DTYPE)
                            it = (self._texture[2].sum(-1) > 0)[sm].nonzero().squeeze(-1)
                            ts[it] = self._texture_factors(sp[it] - c0)
                            val[j] += (tw[sm] * ts).sum(-1).reshape(-1, sub.shape[0]).mean(-1)
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
            return float(self._vault.shape.extents()["cephalic_index"])

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
        ext = self._vault.shape.extents()
        sh = self._vault.shape

        def radius(v):
            return float(sh.surface_radius(torch.as_tensor(unit(v), dtype=torch.float64)[None])[0])

        t30 = math.radians(30)
        d1 = radius([math.sin(t30), -math.cos(t30), 0]) + radius([-math.sin(t30), math.cos(t30), 0])
        d2 = radius([-math.sin(t30), -math.cos(t30), 0]) + radius([math.sin(t30), math.cos(t30), 0])
        # frontal width in the plane of the vault centre
        th = torch.linspace(0, 2 * math.pi, 3601, dtype=torch.float64)[:-1]
        u = torch.stack([torch.cos(th), torch.sin(th), torch.zeros_like(th)], -1)
        pts = (sh.surface_radius(u)[:, None] * u).numpy()
        y_front, y_back = pts[:, 1].min(), pts[:, 1].max()
        y_f = y_front + 0.2 * (y_back - y_front)
        xs = crossings(pts[:, 0], pts[:, 1], y_f)
        frontal = (max(xs) - min(xs)) if len(xs) >= 2 else float("nan")
        return {
            "cephalic_index": float(ext["cephalic_index"]),
            "cvai": 100.0 * abs(d1 - d2) / max(d1, d2),
            "frontal_ratio": float(frontal / (pts[:, 0].max() - pts[:, 0].min())),
            "width_mm": float(ext["width_mm"]),
            "length_mm": float(ext["length_mm"]),
            "height_mm": float(ext["height_mm"]),
            "head_circumference_cm": self._vault.shape.circumference(self.scalp_mm) / 10.0,
        }

    def cranial_measures(self, n_directions: int = 4000) -> dict:
        """The measures the pediatric norms tabulate, taken on the analytic model: mean frontal,
        parietal and occipital bone thickness (mm, along the surface normal), cephalic index
        and intracranial volume (mL); see :func:`tomoprior.phantoms.skull.measure.cranial_measures`
        and, for the norms, :func:`tomoprior.phantoms.skull.norms.cranial_norms`."""
        return cranial_measures(self, n_directions)

    # -- geometry and metadata ------------------------------------------------------------------
    @property
    def landmarks(self) -> dict[str, np.ndarray]:
        """World positions (mm) of vault landmarks on the outer table: nasion, bregma, lambda,
        pterion and asterion (left/right), and the vault centre ``"center"``."""
        out = {"center": self.c0.copy()}
        for k, d in self._vault.landmarks.items():
            out[k] = self.c0 + float(self._vault.shape.surface_radius(torch.as_tensor(d)[None])[0]) * d
        return out

    @property
    def suture_planes(self) -> dict[str, tuple[np.ndarray, float]]:
        """Each suture's plane through the vault centre: ``name -> (unit normal, width mm)``.

        The suture is the band ``|normal . (p - landmarks["center"])| < width / 2`` through
        the vault between its two landmarks; ``width == 0`` for a fused (or, for the
        metopic suture after about 9 months, physiologically closed) suture.
        """
        return {k: (s.normal.copy(), float(s.width)) for k, s in self._vault.sutures.items()}

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
        sut = self._vault.sutures[name]
        a, b = sut.start, sut.end
        ang = math.acos(float(np.clip(a @ b, -1, 1)))
        f = np.linspace(start, stop, n)[:, None]
        dirs = (np.sin((1 - f) * ang) * a + np.sin(f * ang) * b) / math.sin(ang)
        return self.vault_points(dirs, depth)

    def to_dict(self) -> dict:
        """Parameters and derived anatomy (plain Python types; YAML/JSON friendly)."""
        ind = self.shape_indices()
        out = {
            "parameters": self.parameters.to_dict(),
            "fused_sutures": list(self.parameters.fused_sutures),
            "head_circumference_cm": round(ind["head_circumference_cm"], 3),
            "cephalic_index": round(ind["cephalic_index"], 3),
            "cvai": round(ind["cvai"], 3),
            "frontal_ratio": round(ind["frontal_ratio"], 4),
            "vault_mm": {k: round(ind[k], 3) for k in ("width_mm", "length_mm", "height_mm")},
            "vault_thickness_mm": round(self.thickness_mm, 4),
            "diploe_fraction": round(self.diploe_fraction, 4),
            "suture_width_mm": {k: round(s.width, 4) for k, s in self._vault.sutures.items()},
            "fontanelles_mm": {
                f.name: [round(f.front + f.back, 3), round(2 * f.lateral, 3)] for f in self._vault.fontanelles
            },
            "fontanelle_closure_years": dict(self.fontanelle_closure_years),
            "energy_kev": self.parameters.energy_kev,
            "attenuation_per_mm": {k: round(v, 6) for k, v in self.attenuation.items()},
            "labels": dict(LABELS),
            "landmarks_mm": {k: [round(float(c), 3) for c in v] for k, v in self.landmarks.items()},
        }
        if self.bone_thickness_mm is not None:
            out["bone_thickness_mm"] = {k: round(v, 4) for k, v in self.bone_thickness_mm.items()}
            out["intracranial_volume_target_ml"] = (None if self.intracranial_volume_target_ml is None
                                                    else round(self.intracranial_volume_target_ml, 2))
        return out

    def __repr__(self) -> str:
        p = self.parameters
        return (f"Skull(age_years={p.age_years:g}, variant={p.variant!r}, side={p.side!r}, seed={p.seed}, "
                f"cephalic_index={self.cephalic_index():.1f})")


def _check_grid_and_k(grid, supersample) -> int:
    if not isinstance(grid, VolumeGrid):
        raise ValueError(f"grid must be a VolumeGrid (e.g. default_grid(64)), got {type(grid).__name__}")
    if isinstance(supersample, bool) or not isinstance(supersample, (int, np.integer)) or supersample < 1:
        raise ValueError(
            f"supersample must be a positive integer (sub-samples per voxel and axis), got {supersample!r}"
        )
    return int(supersample)
