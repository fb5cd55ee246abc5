"""The face and the skull base of the procedural skull, placed from the fitted vault.

The face is orbits (bony walls, orbital fat, globes), maxilla, palate, nasal cavity, the
mandible, zygomatic arches and nasal bones (capsules), with its soft tissue (a face
ellipsoid and the nose). The skull base is the petrous ridges and the clivus (dense bone)
and the foramen magnum. Everything is an ellipsoid or a capsule placed from the vault's
landmarks and half-axes and scaled with the face's age (``face_scale``, 1 at one year).
Coordinates are relative to the vault centre (mm, LPS axes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .primitives import Box, capsule_box, capsule_sdf, ellipsoid_box, ellipsoid_sdf, smin
from .tissues import AIR, BRAIN, DENSE, EYE, FACIAL, FAT, SOFT
from .variants import VariantShape
from .vault import VaultShape

Tensor = torch.Tensor

__all__ = ["Face", "SkullBase", "place_face", "place_skull_base"]


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
        return mat, ds, near

    def skin_box(self) -> Box:
        """Box around the face's soft tissue (skin, nose and 4 mm around the capsules)."""
        box = ellipsoid_box(*self.skin).union(ellipsoid_box(*self.nose))
        for a_, b_, r_ in self.capsules:
            box = box.union(capsule_box(a_, b_, r_ + 4.0))
        return box

    def region_box(self) -> Box:
        """Box around everything :meth:`materials` paints (soft tissue and bone)."""
        box = self.skin_box()
        for o, semi in self.orbits:
            box = box.union(ellipsoid_box(o, semi, margin=self.orbit_wall))
        return box.union(ellipsoid_box(*self.maxilla)).union(ellipsoid_box(*self.palate))


def place_face(shape: VaultShape, landmarks: dict, face_scale: float, age_years: float, variant: VariantShape,
               side: str) -> tuple[Face, dict]:
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
    floor = (z_floor, y_orb + 0.6 * o_semi[1], 4.0 * F)

    chin = np.array([0.0, nasion[1] + 9 * F, z_orb - 46 * F])
    caps = []
    for x in (1.0, -1.0):
        mid = np.array([x * 19 * F, nasion[1] + 26 * F, z_orb - 44 * F])
        gon = np.array([x * 28 * F, y_ear - 12 * F, z_orb - 38 * F])
        con = np.array([x * 30 * F, y_ear - 6 * F, z_ear])
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
    return face, {"floor": floor, "y_ear": y_ear, "z_ear": z_ear}


@dataclass
class SkullBase:
    """Petrous ridges and clivus (capsules ``(a (3,), b (3,), radius)``) and the foramen
    magnum ``((x, y) centre, (x, y) semi-axes, z of its top)``, mm relative to the vault centre."""

    petrous: list
    clivus: tuple
    foramen: tuple

    def capsules(self) -> list:
        """The dense-bone capsules: both petrous ridges and the clivus."""
        return [*self.petrous, self.clivus]

    def box(self) -> Box:
        """Box around the dense-bone capsules."""
        box = Box(np.full(3, np.inf), np.full(3, -np.inf))
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
        db = torch.stack([capsule_sdf(q, a_, b_, r_) for a_, b_, r_ in self.capsules()]).amin(0)
        mat = torch.where((db < 0) & (d < 0), DENSE, mat)
        if near is not None:
            near = torch.minimum(near, db.abs())
        return mat, near


def place_skull_base(shape: VaultShape, face_scale: float, y_ear: float, z_ear: float) -> SkullBase:
    """Place the skull base on the vault floor (``shape`` with its anterior fossa set),
    relative to the ear position ``(y_ear, z_ear)`` mm from :func:`place_face`."""
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
    return SkullBase(petrous=petrous, clivus=clivus, foramen=(np.array([0.0, y_fm]), fm_semi, z_ear + 5 * F))
