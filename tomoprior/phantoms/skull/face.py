"""The face and the skull base of the procedural skull, placed from the fitted vault.

The face is orbits (bony walls, orbital fat, globes), maxilla, palate, nasal cavity, the
mandible, zygomatic arches and nasal bones, with its soft tissue (a face ellipsoid and the
nose). The skull base is the petrous ridges and the clivus (dense bone) and the foramen
magnum. Everything is an ellipsoid, a capsule or one of the swept shapes of
:mod:`.primitives`, placed from the vault's landmarks and half-axes and scaled with the
face's age (``face_scale``, 1 at one year). Coordinates are relative to the vault centre
(mm, LPS axes).

Anatomy ``"v1"`` (the first model) has capsules for the mandible and petrous ridges and a
sharp step under the anterior cranial fossa. Anatomy ``"v2"`` adds, as :data:`Part` lists
painted in order:

* the mandible as a U-shaped body of vertical elliptical cross-section (about 13 x 5 mm at
  one year) swept along a parabola from gonion to gonion, plate-like rami up to ellipsoidal
  condyles in front of the ear, and coronoid processes; deciduous tooth crowns (dense) along
  both alveolar arches, five per quadrant;
* orbit rims (elliptical rings of bone round each orbit's opening), the piriform nasal
  aperture and small maxillary sinuses cut into the maxilla;
* a rounded sphenoid ridge (the anterior fossa floor blends into the middle fossa over
  about 10 mm instead of a right-angle step), the lesser sphenoid wings along it, the
  sphenoid body with the sella turcica, a flat clivus sloping from the dorsum sellae to the
  front of the foramen magnum, petrous pyramids (tapered: thin apex, thick base at the ear),
  mastoid processes (growing with age) and the occipital condyles.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch

from .primitives import (
    Box,
    capsule_box,
    capsule_sdf,
    ellipsoid_box,
    ellipsoid_sdf,
    flat_capsule_sdf,
    ring_sdf,
    smin,
    tapered_capsule_sdf,
)
from .tissues import AIR, BRAIN, DENSE, DIPLOE, EYE, FACIAL, FAT, SOFT, TABLE
from .variants import VariantShape
from .vault import VaultShape

Tensor = torch.Tensor

__all__ = ["Face", "Part", "SkullBase", "part_box", "part_sdf", "place_face", "place_skull_base"]

#: A shape painted with a material: ``(material index, rule, kind, *parameters)``. ``rule`` is
#: ``"all"`` (paint everywhere), ``"bone"`` (only where the point is already bone: cuts such
#: as sinuses) or ``"cavity"`` (only inside the vault's outer table). ``kind`` and its
#: parameters (mm, relative to the vault centre): ``"ell"`` centre, semi-axes;
#: ``"cap"`` a, b, radius; ``"taper"`` a, b, radius at a, radius at b; ``"flat"`` a, b, wide
#: direction, half-width along it, half-thickness; ``"ring"`` centre, (2,) radii, normal axis,
#: tube radius (see :mod:`.primitives`).
Part = tuple


def part_sdf(q: Tensor, part: Part) -> Tensor:
    """Signed distance (mm, ``(N,)``) from points ``q`` ``(N, 3)`` to a :data:`Part`'s shape."""
    kind, args = part[2], part[3:]
    if kind == "ell":
        return ellipsoid_sdf(q, *args)
    if kind == "cap":
        return capsule_sdf(q, *args)
    if kind == "taper":
        return tapered_capsule_sdf(q, *args)
    if kind == "flat":
        return flat_capsule_sdf(q, *args)
    if kind == "ring":
        return ring_sdf(q, *args)
    raise ValueError(f"unknown part kind {kind!r}")


def part_box(part: Part) -> Box:
    """Bounding box of a :data:`Part`'s shape."""
    kind, args = part[2], part[3:]
    if kind == "ell":
        return ellipsoid_box(*args)
    if kind in ("cap", "taper", "flat"):
        r = max(args[2:]) if kind != "flat" else max(args[3], args[4])
        return capsule_box(args[0], args[1], r)
    c, radii, axis, tube = args
    ext = np.full(3, tube, dtype=float)
    ext[[k for k in range(3) if k != axis]] += np.asarray(radii, float)
    return Box(np.asarray(c, float) - ext, np.asarray(c, float) + ext)


def paint_parts(parts: list, mat: Tensor, near: Tensor | None, q: Tensor,
                inside_vault: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """Paint ``parts`` (:data:`Part`) in order over ``mat`` at points ``q`` ``(N, 3)``;
    ``inside_vault`` (bool ``(N,)``) serves the ``"cavity"`` rule. Returns ``(mat, near)``."""
    mat = mat.clone()
    if near is not None:
        near = near.clone()
    for part in parts:
        material, rule = part[0], part[1]
        # only the points in the part's box (grown by the refinement reach) are evaluated;
        # z first (one comparison pair over all points), then x and y over those
        box = part_box(part)
        lo, hi = box.lo - 6.0, box.hi + 6.0
        z = q[:, 2]
        idx = ((z >= float(lo[2])) & (z <= float(hi[2]))).nonzero().squeeze(-1)
        if idx.numel():
            xy = q[idx, :2]
            keep = ((xy[:, 0] >= float(lo[0])) & (xy[:, 0] <= float(hi[0])) & (xy[:, 1] >= float(lo[1]))
                    & (xy[:, 1] <= float(hi[1])))
            idx = idx[keep]
        if not idx.numel():
            continue
        dist = part_sdf(q[idx], part)
        hit = dist < 0
        m = mat[idx]
        if rule == "bone":
            hit = hit & ((m == FACIAL) | (m == DENSE) | (m == TABLE) | (m == DIPLOE))
        elif rule == "cavity":
            hit = hit & inside_vault[idx]
        mat[idx] = torch.where(hit, material, m)
        if near is not None:
            near[idx] = torch.minimum(near[idx], dist.abs())
    return mat, near


@dataclass
class Face:
    """The facial skeleton and soft tissue (ellipsoids as ``(centre (3,), semi-axes (3,))``,
    capsules as ``(a (3,), b (3,), radius)``, mm, relative to the vault centre)."""

    orbits: list  # ellipsoids of the orbital cavities
    globes: list  # (centre (3,), radius) of the eyes
    orbit_wall: float  # thickness of the orbits' bony walls
    maxilla: tuple
    palate: tuple
    nasal_cavity: tuple
    capsules: list  # mandible, zygomatic arches, nasal bones
    skin: tuple  # soft tissue of the face
    nose: tuple
    parts: list = None  # anatomy v2: mandible, orbit rims, aperture, sinuses (Part), painted last
    skin_parts: int = 0  # the first skin_parts of parts are bone the soft tissue wraps (the mandible)

    def materials(self, q: Tensor, d_skin: Tensor, need_near: bool) -> tuple[Tensor, Tensor, Tensor | None]:
        """Materials of the face region at points ``q`` ``(N, 3)``.

        ``d_skin`` ``(N,)`` is the signed distance (mm) to the head's skin without the face.
        Returns ``(material indices (N,) int64, signed distance to the skin with the face,
        distance to the nearest facial interface or None)``.
        """
        near = torch.full_like(d_skin, 1e3) if need_near else None

        def upd(dist):
            nonlocal near
            if need_near:
                near = torch.minimum(near, dist.abs())

        ds = smin(d_skin, ellipsoid_sdf(q, *self.skin), 12.0)
        dn = ellipsoid_sdf(q, *self.nose)
        ds = smin(ds, dn, 4.0)
        caps = torch.stack([capsule_sdf(q, a_, b_, r_) for a_, b_, r_ in self.capsules]).amin(0)
        ds = smin(ds, caps - 5.0, 6.0)
        if self.skin_parts:
            wrap = torch.stack([part_sdf(q, pt) for pt in self.parts[: self.skin_parts]]).amin(0)
            ds = smin(ds, wrap - 5.0, 6.0)
        mat = torch.where(ds < 0, SOFT, AIR)
        dm = ellipsoid_sdf(q, *self.maxilla)
        dp = ellipsoid_sdf(q, *self.palate)
        dnc = ellipsoid_sdf(q, *self.nasal_cavity)
        for dist in (dm, dp, dnc):
            upd(dist)
        mat = torch.where((dm < 0) | (dp < 0), FACIAL, mat)
        mat = torch.where((dnc < 0) & (dp >= 0), AIR, mat)
        for (o, semi), (g, rg) in zip(self.orbits, self.globes):
            do = ellipsoid_sdf(q, o, semi)
            opening = (q[:, 1] - float(o[1])) < -0.55 * float(semi[1])
            wall = (do >= 0) & (do < self.orbit_wall) & ~opening
            mat = torch.where(wall, FACIAL, mat)
            mat = torch.where(do < 0, FAT, mat)
            dg = (q - torch.as_tensor(g, dtype=q.dtype)).norm(dim=-1) - rg
            mat = torch.where(dg < 0, EYE, mat)
            upd(do)
            upd(do - self.orbit_wall)
            upd(dg)
        mat = torch.where(caps < 0, FACIAL, mat)
        upd(caps)
        upd(ds)
        if self.parts:
            mat, near = paint_parts(self.parts, mat, near, q)
        return mat, ds, near

    def skin_box(self) -> Box:
        """Box around the face's soft tissue (skin, nose and 4 mm around the capsules)."""
        box = ellipsoid_box(*self.skin).union(ellipsoid_box(*self.nose))
        for a_, b_, r_ in self.capsules:
            box = box.union(capsule_box(a_, b_, r_ + 4.0))
        for pt in (self.parts or [])[: self.skin_parts]:
            b = part_box(pt)
            box = box.union(Box(b.lo - 5.0, b.hi + 5.0))
        return box

    def region_box(self) -> Box:
        """Box around everything :meth:`materials` paints (soft tissue and bone)."""
        box = self.skin_box()
        for o, semi in self.orbits:
            box = box.union(ellipsoid_box(o, semi, margin=self.orbit_wall))
        for pt in self.parts or []:
            box = box.union(part_box(pt))
        return box.union(ellipsoid_box(*self.maxilla)).union(ellipsoid_box(*self.palate))


def place_face(shape: VaultShape, landmarks: dict, face_scale: float, age_years: float, variant: VariantShape,
               side: str, anatomy: str = "v2") -> tuple[Face, dict]:
    """Place the face under the vault's nasion.

    Parameters
    ----------
    shape : VaultShape
        The fitted vault, before its anterior cranial fossa (``shape.floor``) is set.
    landmarks : dict
        Unit landmark directions (3,) on ``shape``.
    face_scale : float
        Size of the face relative to a 1-year-old's.
    age_years : float
        Age (the globes grow from 8.5 to 11 mm radius).
    variant, side
        The variant's face changes (interorbital distance, raised orbit on the fused side).
    anatomy : str
        Model version (``"v1"`` or ``"v2"``, see the module notes).

    Returns
    -------
    face : Face
    levels : dict
        ``floor``: the anterior cranial fossa ``(z of its floor, y of the sphenoid ridge,
        smoothing)`` mm for ``shape.floor``; ``y_ear``, ``z_ear``: the ear (porion) position.
    """
    F = face_scale
    s = 1.0 if side == "left" else -1.0
    radii = shape.surface_radius(torch.as_tensor(np.stack(list(landmarks.values()))))
    R = dict(zip(landmarks, radii.tolist()))
    nasion = R["nasion"] * landmarks["nasion"]
    ipd = 42.0 * F**0.6 * variant.interorbital_scale  # distance between orbit centres
    o_semi = np.array([12.0, 15.0, 10.5]) * F**0.7
    y_orb = nasion[1] + 0.95 * o_semi[1]
    z_orb = nasion[2] - 9.0 * F
    lift = variant.orbit_lift * F  # harlequin orbit on the fused side
    # keep the orbit roofs (the anterior cranial fossa floor) below the vault centre
    z_orb = min(z_orb, -(0.14 * shape.c_down + 1.5 * F) - o_semi[2] - lift)
    orbits = [np.array([x * ipd / 2, y_orb, z_orb + (lift if x == s else 0.0)]) for x in (1.0, -1.0)]
    r_eye = 8.5 + 2.5 * (1.0 - math.exp(-age_years / 1.0))
    globes = [o + np.array([0.0, -(o_semi[1] - r_eye - 1.5), 0.0]) for o in orbits]
    z_ear = z_orb - o_semi[2]  # Frankfurt horizontal: porion level with orbitale
    y_ear = 0.03 * shape.b
    x_ear = 0.78 * shape.a
    # anterior cranial fossa floor: a plane just above the orbit roofs
    # (horizontal, from the front back to the sphenoid ridge over the orbit apices)
    z_floor = max(o[2] + o_semi[2] for o in orbits) + 1.0 * F
    # v2: the sphenoid ridge is rounded over about 10 mm (v1: a near right-angle step)
    floor = (z_floor, y_orb + 0.6 * o_semi[1], (4.0 if anatomy == "v1" else 10.0) * F)

    chin = np.array([0.0, nasion[1] + 9 * F, z_orb - 46 * F])
    caps = []
    for x in (1.0, -1.0):
        mid = np.array([x * 19 * F, nasion[1] + 26 * F, z_orb - 44 * F])
        gon = np.array([x * 28 * F, y_ear - 12 * F, z_orb - 38 * F])
        con = np.array([x * 30 * F, y_ear - 6 * F, z_ear])
        if anatomy == "v1":
            caps += [(chin, mid, 4.2 * F), (mid, gon, 4.0 * F), (gon, con, 3.3 * F)]  # mandible
        zyg0 = np.array([x * (ipd / 2 + 13 * F), nasion[1] + 12 * F, z_orb - 10 * F])
        zyg1 = np.array([x * min(x_ear - 4, ipd / 2 + 33 * F), y_ear - 12 * F, z_ear - 1 * F])
        caps.append((zyg0, zyg1, 2.6 * F))  # zygomatic arch
    caps.append((nasion + np.array([0.0, 1.0, -1.0]), nasion + np.array([0.0, -5.0 * F, -13.0 * F]), 2.0 * F))
    face = Face(
        orbits=[(o, o_semi) for o in orbits],
        globes=[(g, r_eye) for g in globes],
        orbit_wall=1.4 * F,
        maxilla=(np.array([0.0, nasion[1] + 15 * F, z_orb - 19 * F]), np.array([24.0, 17.0, 14.0]) * F),
        palate=(np.array([0.0, nasion[1] + 24 * F, z_orb - 30 * F]), np.array([14.0, 17.0, 2.5]) * F),
        nasal_cavity=(np.array([0.0, nasion[1] + 17 * F, z_orb - 14 * F]), np.array([7.5, 17.0, 13.0]) * F),
        capsules=caps,
        skin=(np.array([0.0, nasion[1] + 23 * F, z_orb - 22 * F]),
              np.array([0.5 * shape.a + 8 * F, 32.0 * F, 37.0 * F])),
        nose=(np.array([0.0, nasion[1] - 3 * F, z_orb - 13 * F]), np.array([8.0, 9.0, 12.0]) * F),
    )
    if anatomy != "v1":
        face.parts, face.skin_parts = _face_parts_v2(face, nasion, chin, y_ear, z_ear, z_orb, o_semi, F)
    return face, {"floor": floor, "y_ear": y_ear, "z_ear": z_ear}


def _face_parts_v2(face: Face, nasion, chin, y_ear, z_ear, z_orb, o_semi, F) -> tuple[list, int]:
    """Mandible (U-shaped body, rami, condyles, coronoids), then orbit rims, nasal aperture and
    maxillary sinuses; returns ``(parts, number of mandible parts)``."""
    ez, ey = np.array([0.0, 0.0, 1.0]), np.array([0.0, 1.0, 0.0])
    mand = []
    body_h, body_t = 6.5 * F, 2.6 * F  # half-height and half-thickness of the mandibular body
    for x in (1.0, -1.0):
        gon = np.array([x * 27 * F, y_ear - 13 * F, z_orb - 37 * F])
        con = np.array([x * 30 * F, y_ear - 5 * F, z_ear - 1 * F])
        # the body: a parabola in the horizontal plane from the chin to the gonial angle
        pts = []
        for t in np.linspace(0.0, 1.0, 5):
            pts.append(np.array([x * 27 * F * t, chin[1] + (gon[1] - chin[1]) * t**2 * 1.0,
                                 chin[2] + (gon[2] - chin[2]) * t + 3.0 * F]))
        for a_, b_ in itertools.pairwise(pts):
            mand.append((FACIAL, "all", "flat", a_, b_, ez, body_h, body_t))
        # ramus: a plate (wide front to back) from the angle up to the condylar neck
        mand.append((FACIAL, "all", "flat", gon + np.array([0, -2 * F, 2 * F]), con - np.array([0, 0, 4 * F]),
                     ey, 5.5 * F, 2.0 * F))
        mand.append((FACIAL, "all", "ell", con, np.array([4.5, 3.0, 3.2]) * F))  # condyle
        cor0 = gon + np.array([0.0, -7 * F, 8 * F])
        mand.append((FACIAL, "all", "flat", cor0, np.array([x * 27 * F, y_ear - 19 * F, z_ear - 4 * F]),
                     ey, 3.0 * F, 1.6 * F))  # coronoid process
    parts = list(mand)
    for o, semi in face.orbits:
        c = np.array([o[0], o[1] - 0.55 * semi[1], o[2]])
        parts.append((FACIAL, "all", "ring", c, np.array([semi[0] * 0.86, semi[2] * 0.86]), 1, 2.0 * F))
    cm = face.maxilla[0]
    parts.append((AIR, "bone", "ell", np.array([0.0, nasion[1] + 2 * F, z_orb - 16 * F]),
                  np.array([6.5, 7.0, 9.5]) * F))  # piriform aperture, opening the nasal cavity forward
    for x in (1.0, -1.0):
        parts.append((AIR, "bone", "ell", np.array([x * 13 * F, cm[1] - 1 * F, cm[2] + 2 * F]),
                      np.array([5.5, 7.0, 5.0]) * F))  # maxillary sinus
    # deciduous tooth crowns (dense enamel) along the alveolar arches, five per quadrant
    pc, ps = face.palate
    for x in (1.0, -1.0):
        for i, t in enumerate(np.linspace(0.12, 0.62, 5)):
            size = np.array([1.6, 1.8, 2.0]) * F * (1.0 + 0.25 * i)  # incisors small, molars larger
            low = np.array([x * 27 * F * t, chin[1] + (y_ear - 13 * F - chin[1]) * t**2,
                            chin[2] + 3.0 * F + (z_orb - 37 * F - chin[2]) * t + 0.45 * body_h])
            parts.append((DENSE, "all", "ell", low, size))
            up = np.array([x * (4.0 + 16.0 * t) * F, pc[1] - ps[1] * (0.9 - 1.2 * t), pc[2] - ps[2] - 1.0 * F])
            parts.append((DENSE, "all", "ell", up, size))
    return parts, len(mand)


@dataclass
class SkullBase:
    """Petrous ridges and clivus (capsules ``(a (3,), b (3,), radius)``) and the foramen
    magnum ``((x, y) centre, (x, y) semi-axes, z of its top)``, mm relative to the vault centre."""

    petrous: list
    clivus: tuple
    foramen: tuple
    parts: list = None  # anatomy v2 (Part): replaces the capsules

    def capsules(self) -> list:
        """The dense-bone capsules: both petrous ridges and the clivus (anatomy v1)."""
        return [*self.petrous, self.clivus]

    def box(self) -> Box:
        """Box around the skull-base bone."""
        box = Box(np.full(3, np.inf), np.full(3, -np.inf))
        if self.parts:
            for pt in self.parts:
                box = box.union(part_box(pt))
            return box
        for a_, b_, r_ in self.capsules():
            box = box.union(capsule_box(a_, b_, r_))
        return box

    def foramen_magnum(self, mat: Tensor, near: Tensor | None, rel: Tensor, shell: Tensor,
                       shell_sdf: Tensor) -> tuple[Tensor, Tensor | None]:
        """Cut the foramen magnum (a vertical hole, filled with brain) through the bone
        ``shell`` at points ``rel`` ``(N, 3)``; see :meth:`Vault.shell`. Returns ``(mat, near)``."""
        (fy_c, (fx, fy), fz) = self.foramen[0][1], self.foramen[1], self.foramen[2]
        ell = torch.sqrt((rel[:, 0] / fx) ** 2 + ((rel[:, 1] - fy_c) / fy) ** 2)
        fm = (ell - 1.0) * min(fx, fy)
        low = rel[:, 2] < fz
        mat = torch.where(shell & low & (fm < 0), BRAIN, mat)
        if near is not None:
            near = torch.minimum(near, torch.where(low, torch.maximum(fm.abs(), shell_sdf), near))
        return mat, near

    def dense_bone(self, mat: Tensor, near: Tensor | None, q: Tensor, d: Tensor) -> tuple[Tensor, Tensor | None]:
        """Paint the petrous ridges and clivus inside the vault (``d < 0``) at points ``q``
        ``(M, 3)`` (the points in :meth:`box`). Returns ``(mat, near)`` of those points."""
        if self.parts:
            return paint_parts(self.parts, mat, near, q, d < 0)
        db = torch.stack([capsule_sdf(q, a_, b_, r_) for a_, b_, r_ in self.capsules()]).amin(0)
        mat = torch.where((db < 0) & (d < 0), DENSE, mat)
        if near is not None:
            near = torch.minimum(near, db.abs())
        return mat, near


def place_skull_base(shape: VaultShape, face_scale: float, y_ear: float, z_ear: float, anatomy: str = "v2",
                     age_years: float = 1.0) -> SkullBase:
    """Place the skull base on the vault floor (``shape`` with its anterior fossa set),
    relative to the ear position ``(y_ear, z_ear)`` mm from :func:`place_face`; ``anatomy``
    the model version, ``age_years`` the age (the mastoids grow)."""
    F = face_scale
    petrous = []
    y_fm = y_ear + 18 * F
    fm_semi = np.array([9.0, 11.0]) * F
    for x in (1.0, -1.0):
        ends = [(x * 0.62 * shape.a, y_ear + 8 * F), (x * 0.16 * shape.a, y_ear - 12 * F)]
        zs = shape.z_below(ends)
        a_pt = np.array([*ends[0], zs[0] + 3.0 * F])
        b_pt = np.array([*ends[1], zs[1] + 5.0 * F])
        petrous.append((a_pt, b_pt, 5.5 * F))
    ends = [(0.0, y_ear - 14 * F), (0.0, y_fm - fm_semi[1] - 3 * F)]
    zs = shape.z_below(ends)
    clivus = (np.array([*ends[0], zs[0] + 12 * F]), np.array([*ends[1], zs[1] + 3 * F]), 5.0 * F)
    base = SkullBase(petrous=petrous, clivus=clivus, foramen=(np.array([0.0, y_fm]), fm_semi, z_ear + 5 * F))
    if anatomy != "v1":
        base.parts = _base_parts_v2(shape, base, F, y_ear, z_ear, age_years)
    return base


def _base_parts_v2(shape: VaultShape, base: SkullBase, F: float, y_ear: float, z_ear: float,
                   age_years: float) -> list:
    """Sphenoid (lesser wings, body, sella), clivus, petrous pyramids, mastoids, occipital condyles."""
    ex, ey = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    z_floor, y_ridge, _ = shape.floor
    y_fm = float(base.foramen[0][1])
    fm_y = float(base.foramen[1][1])
    parts = []
    for x in (1.0, -1.0):  # lesser wings: thin plates along the sphenoid ridge, sweeping back laterally
        parts.append((FACIAL, "all", "flat", np.array([x * 5 * F, y_ridge - 1 * F, z_floor - 0.5 * F]),
                      np.array([x * 0.5 * shape.a, y_ridge + 5 * F, z_floor + 0.5 * F]), ey, 3.5 * F, 1.3 * F))
    # sphenoid body behind the ridge, its top hollowed by the sella turcica (pituitary)
    y_sella = y_ridge + 0.45 * (y_fm - fm_y - y_ridge)
    z_sella = z_floor - 6 * F
    parts.append((FACIAL, "cavity", "ell", np.array([0.0, y_sella - 2 * F, z_sella - 4 * F]),
                  np.array([9.0, 9.0, 7.0]) * F))
    # clivus: a plate wide across, sloping from the dorsum sellae down to the foramen magnum
    z_fm = float(shape.z_below([(0.0, y_fm - fm_y - 2 * F)])[0])
    top = np.array([0.0, y_sella + 4 * F, z_sella + 2 * F])
    bottom = np.array([0.0, y_fm - fm_y - 2 * F, z_fm + 3.5 * F])
    parts.append((DENSE, "cavity", "flat", top, bottom, ex, 7.0 * F, 3.0 * F))
    parts.append((BRAIN, "cavity", "ell", np.array([0.0, y_sella, z_sella + 1.5 * F]), np.array([4.5, 4.0, 3.5]) * F))
    for a_, b_, r_ in base.petrous:  # pyramids: thick base at the ear, thin apex by the clivus
        parts.append((DENSE, "cavity", "taper", a_, b_, 1.25 * r_, 0.6 * r_))
    m = 0.6 + 0.4 * min(age_years, 6.0) / 6.0  # the mastoid process grows through childhood
    for x in (1.0, -1.0):
        a_pt = base.petrous[0 if x > 0 else 1][0]
        parts.append((FACIAL, "all", "ell", np.array([x * (abs(a_pt[0]) + 1 * F), y_ear + 9 * F, z_ear - 5 * F]),
                      np.array([5.0, 7.0, 8.0]) * F * m))  # mastoid
        parts.append((FACIAL, "all", "ell", np.array([x * 8 * F, y_fm - 3 * F, z_fm - 1.5 * F]),
                      np.array([3.5, 6.0, 3.0]) * F))  # occipital condyle
    return parts
