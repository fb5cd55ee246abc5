"""The upper cervical spine of the procedural skull (anatomy ``"v2"``): C1 to C4 below the
foramen magnum.

Each vertebra is a few :data:`~tomoprior.phantoms.skull.face.Part` shapes of facial-bone
density (mm, relative to the vault centre, scaled with ``face_scale``):

* C1 (atlas): an elliptical ring round the spinal canal (thin anterior and posterior arches)
  with two lateral masses under the occipital condyles;
* C2 (axis): a body in front of the canal, the dens rising from it into the front of the
  atlas ring, a posterior arch (half ring) and a spinous process;
* C3 and C4: a body, a posterior arch and a spinous process.

Vertebrae sit ``8 x face_scale`` mm apart, the column straight and vertical under the
foramen magnum; in infants the bodies and arches are separate ossification centres, so
they are left unjoined (cartilage, painted as the surrounding soft tissue).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .face import Part, paint_parts, part_box
from .primitives import Box
from .tissues import FACIAL

Tensor = torch.Tensor

__all__ = ["Spine", "place_spine"]


@dataclass
class Spine:
    """The vertebrae as :data:`Part` shapes, painted in order."""

    parts: list

    def box(self) -> Box:
        """Box around every part."""
        box = Box(np.full(3, np.inf), np.full(3, -np.inf))
        for pt in self.parts:
            box = box.union(part_box(pt))
        return box

    def paint(self, mat: Tensor, near: Tensor | None, q: Tensor) -> tuple[Tensor, Tensor | None]:
        """Paint the vertebrae at points ``q`` ``(N, 3)`` (those in :meth:`box`)."""
        return paint_parts(self.parts, mat, near, q)


def place_spine(y_canal: float, z_top: float, face_scale: float) -> Spine:
    """C1-C4 under the foramen magnum.

    Parameters
    ----------
    y_canal : float
        y (mm, relative to the vault centre) of the spinal canal's axis (the foramen magnum's centre).
    z_top : float
        z (mm) of the underside of the foramen magnum (the occipital condyles).
    face_scale : float
        Size relative to a one-year-old.
    """
    F = face_scale
    v = np.array
    ex, ez = v([1.0, 0.0, 0.0]), v([0.0, 0.0, 1.0])
    step = 8.0 * F
    parts: list[Part] = []
    # C1, the atlas: ring and lateral masses
    z1 = z_top - 5.0 * F
    parts.append((FACIAL, "all", "ring", v([0.0, y_canal - 1 * F, z1]), v([11.0, 12.0]) * F, 2, 1.8 * F))
    for x in (1.0, -1.0):
        parts.append((FACIAL, "all", "ell", v([x * 9.5 * F, y_canal - 4 * F, z1]), v([3.5, 5.5, 3.5]) * F))
    # C2, the axis: body, dens into the atlas ring, arch and spinous process
    z2 = z1 - step
    y_body = y_canal - 13.5 * F
    parts.append((FACIAL, "all", "ell", v([0.0, y_body, z2 - 1 * F]), v([6.5, 5.5, 5.0]) * F))
    parts.append((FACIAL, "all", "cap", v([0.0, y_body, z2 + 2 * F]), v([0.0, y_body + 1 * F, z1 + 3 * F]),
                  3.0 * F))
    for i, z in enumerate((z2, z2 - step, z2 - 2 * step)):
        if i:  # C3, C4 bodies
            parts.append((FACIAL, "all", "ell", v([0.0, y_body + 0.5 * F * i, z]), v([7.0, 5.5, 3.2]) * F))
        parts.append((FACIAL, "all", "flat", v([-8.0 * F, y_canal + 1 * F, z]), v([0.0, y_canal + 8 * F, z]),
                      ez, 2.5 * F, 1.5 * F))  # the two halves of the posterior arch
        parts.append((FACIAL, "all", "flat", v([8.0 * F, y_canal + 1 * F, z]), v([0.0, y_canal + 8 * F, z]),
                      ez, 2.5 * F, 1.5 * F))
        parts.append((FACIAL, "all", "flat", v([0.0, y_canal + 8 * F, z]),
                      v([0.0, y_canal + 14 * F, z - 2 * F]), ex, 1.6 * F, 2.2 * F))  # spinous process
    return Spine(parts)
