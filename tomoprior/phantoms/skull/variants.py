"""The skull variants as data: how each craniosynostosis deforms the normal vault and face.

A premature fusion stops growth across the fused suture and the skull grows more along it and
elsewhere (compensatory growth). The model expresses that with four ingredients of the vault
shape (:class:`~tomoprior.phantoms.skull.vault.VaultShape`):

- **bulges**: ``(direction, relative amplitude, width)``: the outer-table radius grows by
  ``amplitude * exp((u . direction - 1) / width)`` (``width`` in units of ``1 - cos`` of the
  angle from ``direction``): frontal and occipital bossing, temporal bulging;
- **ridges**: ``(suture, height mm, width mm)``: a keel along the fused suture;
- **planes**: ``(outward normal, fraction of the base radius)``: a flattening (forehead,
  occiput) at that fraction of the unflattened radius along the normal;
- **taper** (trigonocephalic narrowing of the forehead) and the height above the centre
  (``height_up``, a fraction of the mean half-axis; turribrachycephaly raises it).

and two of the face: the interorbital distance (hypotelorism of the metopic synostosis) and
the raised orbit on the fused side of a unicoronal synostosis (the harlequin orbit).

Directions are written for a fusion on the patient's left (world +x in LPS); a unilateral
variant on the right mirrors them (x -> -x), and ``{side}`` in a suture name becomes the side.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .primitives import unit

__all__ = ["VARIANT_SHAPES", "VariantShape"]


@dataclass(frozen=True)
class VariantShape:
    """How one variant deforms the normal skull (see the module docstring for the meaning).

    Directions are 3-tuples (any length) for a left-sided fusion; lengths in mm.
    """

    bulges: tuple = ()  # ((x, y, z), relative amplitude, width in 1 - cos)
    ridges: tuple = ()  # (suture name, may hold "{side}"; height mm; width mm)
    planes: tuple = ()  # ((x, y, z) outward normal, fraction of the base radius)
    taper: float = 0.0  # trigonocephalic narrowing of the forehead (relative)
    height_up: float = 0.86  # vault height above its centre / mean half-axis
    unilateral: bool = False  # mirror the directions for a right-sided fusion
    interorbital_scale: float = 1.0  # distance between the orbit centres / normal
    orbit_lift: float = 0.0  # rise of the fused side's orbit, mm at the size of a 1-year-old's face

    def _direction(self, v, side_sign: float) -> np.ndarray:
        x, y, z = v
        if self.unilateral and x:  # mirror; a zero stays +0.0 so the numbers are those of the left side
            x = x * side_sign
        return unit([x, y, z])

    def bulge_list(self, side: str) -> list:
        """``[(unit direction (3,), amplitude, width), ...]`` for a fusion on ``side``."""
        s = 1.0 if side == "left" else -1.0
        return [(self._direction(d, s), amp, width) for d, amp, width in self.bulges]

    def plane_list(self, side: str) -> list:
        """``[(unit outward normal (3,), fraction), ...]`` for a fusion on ``side``."""
        s = 1.0 if side == "left" else -1.0
        return [(self._direction(n, s), frac) for n, frac in self.planes]

    def ridge_list(self, side: str) -> list:
        """``[(suture name, height mm, width mm), ...]`` for a fusion on ``side``."""
        return [(name.format(side=side), height, width) for name, height, width in self.ridges]


#: The deformation of each variant of :data:`~tomoprior.phantoms.skull.VARIANTS`.
VARIANT_SHAPES: dict[str, VariantShape] = {
    "normal": VariantShape(),
    # scaphocephaly: long and narrow; frontal bossing and an occipital bullet, a sagittal keel
    "sagittal": VariantShape(
        bulges=(((0.0, -0.75, 0.65), 0.05, 0.12), ((0.0, 1.0, -0.15), 0.06, 0.08)),
        ridges=(("sagittal", 2.0, 6.0),),
    ),
    # trigonocephaly: a narrow triangular forehead with a metopic keel, wide behind; hypotelorism
    "metopic": VariantShape(
        taper=0.30,
        ridges=(("metopic", 3.5, 7.0),),
        bulges=(((0.6, 0.55, 0.4), 0.035, 0.12), ((-0.6, 0.55, 0.4), 0.035, 0.12)),
        interorbital_scale=0.8,
    ),
    # anterior plagiocephaly: the forehead flat on the fused side, bossing on the other, the
    # fused side's orbit raised
    "unicoronal": VariantShape(
        planes=(((0.6, -0.8, 0.1), 0.82),),
        bulges=(((-0.5, -0.8, 0.35), 0.05, 0.10), ((0.0, 0.2, 1.0), 0.02, 0.2)),
        ridges=(("coronal_{side}", 1.5, 6.0),),
        unilateral=True,
        orbit_lift=3.5,
    ),
    # brachycephaly (turribrachycephaly): short, wide and tall with a flat forehead
    "bicoronal": VariantShape(
        height_up=0.98,
        planes=(((0.0, -1.0, 0.2), 0.86),),
        bulges=(((1.0, -0.2, 0.55), 0.03, 0.12), ((-1.0, -0.2, 0.55), 0.03, 0.12)),
        ridges=(("coronal_left", 1.5, 6.0), ("coronal_right", 1.5, 6.0)),
    ),
    # posterior plagiocephaly: the occiput flat on the fused side, a mastoid bulge below it and
    # parietal bossing on the other side
    "lambdoid": VariantShape(
        planes=(((0.55, 0.85, -0.05), 0.86),),
        bulges=(((0.6, 0.45, -0.65), 0.06, 0.08), ((-0.65, 0.45, 0.45), 0.04, 0.12)),
        ridges=(("lambdoid_{side}", 1.5, 6.0),),
        unilateral=True,
    ),
}
