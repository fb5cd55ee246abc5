"""View frames: how a view branch's 3D feature axes map onto the CT volume's axes.

A view branch stores its 3D features in the view's own frame ``(depth, row, col)``: depth
runs along the beam (source to detector), rows along the detector's ``v`` and columns along
its ``u``. The CT volume is ``(z, y, x)`` (LPS). For the default PA frontal view the depth
axis is ``-y`` (the source is posterior), rows ``-z`` and columns ``+x``; for the left
lateral view depth is ``+x``, rows ``-z`` and columns ``+y``. These are derived from the
geometry's view vectors (each frame axis is snapped to the nearest world axis), never
hard-coded, so a right lateral or an AP frontal gets the right permutation and flips.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

#: The smallest |cosine| between a frame axis and its nearest world axis that is accepted
#: (about 37 degrees off-axis); the view frames permute axes, so oblique views cannot use them.
MIN_AXIS_COSINE = 0.8


@dataclass(frozen=True)
class ViewFrame:
    """Axis correspondence of one view.

    Attributes
    ----------
    ct_dims : (3,) ints
        For frame axis ``a`` (0 depth, 1 row, 2 col) the CT spatial axis it lies along
        (0 = z, 1 = y, 2 = x).
    flips : (3,) bools
        Whether frame index increases opposite to the world axis (so the CT index runs
        backwards along that frame axis).
    """

    ct_dims: tuple[int, int, int]
    flips: tuple[bool, bool, bool]

    @property
    def depth_axis(self) -> str:
        """World axis name of the depth (beam) axis, e.g. ``"y"`` for a frontal view."""
        return "zyx"[self.ct_dims[0]]

    def frame_shape(self, ct_shape) -> tuple[int, int, int]:
        """Spatial shape in the view frame of a CT-ordered spatial shape ``(nz, ny, nx)``."""
        return tuple(int(ct_shape[d]) for d in self.ct_dims)  # type: ignore[return-value]

    def _ct_flip_dims(self) -> list[int]:
        return [2 + self.ct_dims[a] for a in range(3) if self.flips[a]]

    def to_ct(self, t: torch.Tensor) -> torch.Tensor:
        """``(B, C, depth, row, col)`` view-frame features -> ``(B, C, z, y, x)``."""
        inverse = [0, 0, 0]
        for a, d in enumerate(self.ct_dims):
            inverse[d] = a
        out = t.permute(0, 1, *(2 + a for a in inverse))
        dims = self._ct_flip_dims()
        return out.flip(dims) if dims else out

    def to_view(self, t: torch.Tensor) -> torch.Tensor:
        """``(B, C, z, y, x)`` CT-ordered features -> ``(B, C, depth, row, col)``."""
        dims = self._ct_flip_dims()
        if dims:
            t = t.flip(dims)
        return t.permute(0, 1, *(2 + d for d in self.ct_dims))


def view_frame(view) -> ViewFrame:
    """The :class:`ViewFrame` of a tomoprior ``View`` (from its beam, ``u`` and ``v``).

    Raises
    ------
    ValueError
        If a frame axis is further than about 37 degrees (``acos(MIN_AXIS_COSINE)``) from
        every world axis, or two frame axes snap to the same world axis (an oblique view: the
        view branches, their fusion and MV3D-C permute axes and cannot represent it).
    """
    normal = view.normal.detach().double().cpu()  # toward the source
    u = view.u.detach().double().cpu()
    v = view.v.detach().double().cpu()
    axes = (-normal, v / torch.linalg.norm(v), u / torch.linalg.norm(u))
    ct_dims, flips = [], []
    for name, vec in zip(("depth (beam)", "row (v)", "column (u)"), axes):
        w = int(torch.argmax(vec.abs()))
        if float(vec.abs()[w]) < MIN_AXIS_COSINE:
            angle = math.degrees(math.acos(min(1.0, float(vec.abs()[w]))))
            raise ValueError(
                f"view {view.name or ''}: its {name} axis {[round(float(c), 4) for c in vec]} is {angle:.1f} degrees "
                f"from the nearest volume axis (limit {math.degrees(math.acos(MIN_AXIS_COSINE)):.1f}). PSCT-Net keeps "
                "each view's 3D features in a frame snapped to the volume axes (the lifting, the view fusion and "
                "MV3D-C all use it, so no config flag removes this). Express the geometry in a world frame whose "
                "axes follow the acquisition (rotate every view's source, detector, u and v by one rotation so each "
                "view is within ~37 degrees of x, y or z; the volume is then reconstructed in that frame), or use a "
                "refiner without view frames such as bp-prior"
            )
        ct_dims.append(2 - w)  # world x, y, z -> CT dims 2, 1, 0
        flips.append(bool(vec[w] < 0))
    if len(set(ct_dims)) != 3:
        raise ValueError(f"view {view.name or ''}: its depth/row/column axes do not map to three distinct world axes")
    return ViewFrame(tuple(ct_dims), tuple(flips))  # type: ignore[arg-type]
