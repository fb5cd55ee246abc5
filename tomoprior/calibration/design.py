"""Bead designs: the calibration-relevant content of a bead phantom.

A bead phantom (``phantoms/bead_*.yaml``) is an ordinary :class:`~tomoprior.phantoms.Phantom`
whose beads are spheres labelled ``bead*`` (e.g. ``bead_07``); the label is the bead's id.
Everything else in the file (support bodies) is ignored by calibration but present in the
simulated images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..phantoms import Phantom, Sphere
from ..phantoms import load as load_phantom

__all__ = ["BeadDesign", "bead_design"]


@dataclass(frozen=True)
class BeadDesign:
    """Nominal bead positions of a calibration phantom, in the phantom's design frame.

    Attributes
    ----------
    positions : ndarray ``(n, 3)`` float64
        Bead centres ``(x, y, z)`` in mm.
    radii : ndarray ``(n,)`` float64
        Bead radii in mm.
    ids : tuple of str, length n
        Bead labels from the phantom file (``"bead_00"`` ...).
    densities : ndarray ``(n,)`` float64
        Bead densities (linear attenuation, the phantom's density unit, scale applied).
    materials : tuple of (str or None)
    name : str
        Phantom name.
    """

    positions: np.ndarray
    radii: np.ndarray
    ids: tuple
    densities: np.ndarray
    materials: tuple
    name: str = "phantom"

    def __len__(self) -> int:
        return int(self.positions.shape[0])

    def subset(self, index) -> BeadDesign:
        """The beads at integer positions ``index`` (array-like of int)."""
        idx = np.asarray(index, dtype=int)
        return BeadDesign(self.positions[idx], self.radii[idx], tuple(self.ids[i] for i in idx),
                          self.densities[idx], tuple(self.materials[i] for i in idx), self.name)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "ids": list(self.ids),
            "positions_mm": self.positions.tolist(),
            "radii_mm": self.radii.tolist(),
        }


def bead_design(phantom) -> BeadDesign:
    """Extract the beads of a bead phantom.

    Parameters
    ----------
    phantom : Phantom, BeadDesign, str or os.PathLike
        A phantom, a phantom name such as ``"bead_cage"`` (see
        :func:`tomoprior.phantoms.available_phantoms`) or a path to a phantom YAML file. Beads are the
        :class:`~tomoprior.phantoms.Sphere` shapes whose label starts with ``"bead"``.

    Returns
    -------
    BeadDesign
        Positions ``(n, 3)`` mm, radii ``(n,)`` mm and ids, in file order.

    Raises
    ------
    ValueError
        Unknown phantom name (the message lists the available ones), or a phantom with fewer
        than 6 beads (a 9-parameter view fit needs at least 5 points; 6 gives redundancy).

    Examples
    --------
    >>> d = bead_design("bead_cage")
    >>> len(d), d.positions.shape, float(d.radii[0]), d.ids[0]
    (50, (50, 3), 0.75, 'bead_00')
    """
    if isinstance(phantom, BeadDesign):
        return phantom
    if not isinstance(phantom, Phantom):
        phantom = load_phantom(phantom)
    beads = [s for s in phantom.shapes if isinstance(s, Sphere) and (s.label or "").lower().startswith("bead")]
    if len(beads) < 6:
        raise ValueError(
            f"phantom {phantom.name!r} has {len(beads)} bead(s) (spheres labelled 'bead*'); calibration needs "
            "at least 6. Use a bead phantom such as 'bead_cage', 'bead_two_ring' or 'bead_helix'"
        )
    ids = tuple(s.label for s in beads)
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"phantom {phantom.name!r} has duplicate bead labels {dup}; bead labels are ids")
    pos = np.array([s.center.detach().double().cpu().numpy() for s in beads], dtype=np.float64)
    radii = np.array([float(s.radius.detach()) for s in beads], dtype=np.float64)
    dens = np.array([float(s.density.detach()) * phantom.density_scale for s in beads], dtype=np.float64)
    mats = tuple(getattr(s, "material", None) for s in beads)
    return BeadDesign(pos, radii, ids, dens, mats, phantom.name)
