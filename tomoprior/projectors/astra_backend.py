"""Backend ``"astra"`` (3D cone-beam on CUDA) and ASTRA's 2D fan-beam CPU projector for
cross-validation. This is the only module of tomoprior that imports ``astra``.

3D: ASTRA's ``cone_vec`` projectors run on CUDA only. Without a GPU, ``astra.use_cuda()``
is False and calling ASTRA's 3D functions kills the process with a floating-point
exception instead of raising, so this backend refuses to start (a clear ``ValueError``
naming the ``"torch"`` backend) before any 3D call is made.

With CUDA, forward and back-projection go through ``astra.experimental.direct_FP3D`` /
``direct_BP3D``, which accept CUDA tensors through DLPack without copies. ASTRA computes
in float32; float64 input is cast. ASTRA's back-projector is its own matched operator
(not guaranteed bit-exact adjoint to its forward); gradients with respect to the volume
use it. Gradients with respect to the view vectors are taken from the ``"torch"`` backend's
trilinear model (ASTRA has none).

2D: :func:`fanbeam_line_integrals` runs ASTRA's CPU ``line_fanflat`` projector (exact
intersection lengths of a line with the pixels) on a ``fanflat_vec`` geometry. The test
suite uses it to cross-validate our cone-beam model in its central plane.
"""

from __future__ import annotations

import numpy as np
import torch

from ..geometry.grid import VolumeGrid
from .base import Backend

_CUDA_HINT = (
    "ASTRA's 3D cone-beam projectors need a CUDA GPU, and astra.use_cuda() is False here "
    "(calling them anyway kills the process); use backend='torch' (CPU or CUDA) instead"
)


def _astra():
    import astra

    return astra


def astra_importable() -> bool:
    try:
        _astra()
    except Exception:  # ImportError, or a broken binary install
        return False
    return True


def astra_cuda_available() -> bool:
    """Whether ASTRA can run its CUDA (3D) code here; False if ASTRA is not installed."""
    if not astra_importable():
        return False
    try:
        return bool(_astra().use_cuda())
    except Exception:
        return False


def unavailable_reason() -> str:
    if not astra_importable():
        return "astra-toolbox is not installed (pip install 'tomoprior[astra]')"
    return _CUDA_HINT


class AstraBackend(Backend):
    """ASTRA Toolbox ``cone_vec`` projectors on CUDA (float32): a whole-operator
    :class:`~tomoprior.projectors.Backend` (one progress step per detector shape)."""

    name = "astra"
    #: The view-vector gradient is the "torch" backend's (see :meth:`vector_grad`).
    supports_vector_grad = True
    #: ASTRA's back-projector is matched to its forward projector, not its exact transpose.
    exact_adjoint = False
    #: ASTRA computes in float32 whatever the input dtype.
    native_float64 = False

    def __init__(self):
        if not astra_cuda_available():
            raise ValueError(f"projector backend 'astra' cannot run here: {unavailable_reason()}")

    def describe(self) -> dict:
        return {"backend": self.name, "model": "ASTRA cuda3d cone_vec (float32)",
                "astra": getattr(_astra(), "__version__", "?")}

    def progress_steps(self, grid, shapes, vectors) -> int:
        return len(set(shapes))

    def memory_estimate(self, grid, shapes, batch, itemsize, *, adjoint):
        """The result and input copy plus ASTRA's float32 copies of one volume and of the
        largest group of same-shape views (one batch item at a time)."""
        groups = self._groups(shapes)
        staging = 4 * (grid.num_voxels + max(len(idx) * r * c for (r, c), idx in groups.items()))
        return super().memory_estimate(grid, shapes, batch, itemsize, adjoint=adjoint) + staging

    # ASTRA needs one detector shape per geometry: group views by shape
    @staticmethod
    def _groups(shapes):
        groups: dict = {}
        for i, s in enumerate(shapes):
            groups.setdefault(tuple(s), []).append(i)
        return groups

    @staticmethod
    def _offsets(shapes):
        out, off = [], 0
        for r, c in shapes:
            out.append(off)
            off += r * c
        return out

    def _projector(self, grid: VolumeGrid, shape, vectors: np.ndarray):
        from ..geometry.astra_convert import grid_to_astra

        astra = _astra()
        proj_geom = astra.create_proj_geom("cone_vec", shape[0], shape[1], vectors)
        return astra.create_projector("cuda3d", proj_geom, grid_to_astra(grid))

    @staticmethod
    def _check_clipping(grid: VolumeGrid, shapes, vectors) -> None:
        """ASTRA integrates whole lines through the volume; tomoprior's rays end at the
        detector. Refuse geometries where that differs, before any ASTRA call."""
        from ..geometry.geometry import volume_relation
        from ..geometry.view import View

        for i, shape in enumerate(shapes):
            view = View.from_vector(vectors[i].detach().double().cpu(), shape)
            if volume_relation(view, grid) in ("cut_by_detector", "beyond_detector", "behind_source"):
                raise ValueError(f"view {i}: the volume is not entirely between the source and the detector; "
                                 "ASTRA would integrate beyond the detector or behind the source. Use "
                                 "backend='numba' or 'torch' (rays end at the detector) or move the detector")

    def forward(self, volume, grid, shapes, vectors, progress=None):
        self._check_clipping(grid, shapes, vectors)
        astra = _astra()
        total = sum(r * c for r, c in shapes)
        out = volume.new_zeros((volume.shape[0], total))
        offsets = self._offsets(shapes)
        vec_np = vectors.detach().double().cpu().numpy()
        for shape, idx in self._groups(shapes).items():
            pid = self._projector(grid, shape, vec_np[idx])
            try:
                for b in range(volume.shape[0]):
                    vol = volume[b].detach().to(torch.float32).contiguous()
                    proj = torch.zeros((shape[0], len(idx), shape[1]), dtype=torch.float32, device=volume.device)
                    astra.experimental.direct_FP3D(pid, vol, proj)
                    for j, view in enumerate(idx):
                        n = shape[0] * shape[1]
                        out[b, offsets[view]:offsets[view] + n] = proj[:, j, :].reshape(-1).to(out.dtype)
            finally:
                astra.projector3d.delete(pid)
            if progress is not None:
                progress.update(1)
        return out

    def adjoint(self, projections, grid, shapes, vectors, progress=None):
        self._check_clipping(grid, shapes, vectors)
        astra = _astra()
        out = projections.new_zeros((projections.shape[0], *grid.shape))
        offsets = self._offsets(shapes)
        vec_np = vectors.detach().double().cpu().numpy()
        for shape, idx in self._groups(shapes).items():
            pid = self._projector(grid, shape, vec_np[idx])
            try:
                for b in range(projections.shape[0]):
                    n = shape[0] * shape[1]
                    proj = torch.stack(
                        [projections[b, offsets[v]:offsets[v] + n].reshape(shape) for v in idx], dim=1
                    ).to(torch.float32).contiguous()
                    vol = torch.zeros(grid.shape, dtype=torch.float32, device=projections.device)
                    astra.experimental.direct_BP3D(pid, vol, proj)
                    out[b] += vol.to(out.dtype)
            finally:
                astra.projector3d.delete(pid)
            if progress is not None:
                progress.update(1)
        return out

    def vector_grad(self, volume, cotangent, grid, shapes, vectors):
        """``d/dvectors <P(vectors) volume, cotangent>`` of the ``"torch"`` backend's model
        (ASTRA has no derivative in the geometry)."""
        from .raymarch import TorchRaymarchBackend

        return TorchRaymarchBackend().vector_grad(volume, cotangent, grid, shapes, vectors)


def fanbeam_line_integrals(image: np.ndarray, spacing_yx: tuple[float, float], center_xy: tuple[float, float],
                           views: np.ndarray, det_count: int, projector: str = "line_fanflat") -> np.ndarray:
    """ASTRA's 2D fan-beam (``fanflat_vec``) projection of an image, on the CPU.

    Parameters
    ----------
    image : ndarray ``(ny, nx)``
        In tomoprior's orientation: row ``j`` at ``y = center_y + (j - (ny-1)/2) sy`` (y grows
        with the row index; ASTRA's 2D rows run the other way, which is handled here).
    spacing_yx : (sy, sx) mm
    center_xy : (x, y) mm of the image centre.
    views : ndarray ``(V, 6)``
        ``fanflat_vec`` rows ``(srcX, srcY, dX, dY, uX, uY)``: source, detector centre, and
        the vector between neighbouring detector pixels, in mm.
    det_count : int
        Detector pixels per view.
    projector : str
        ASTRA CPU projector type; ``"line_fanflat"`` weights pixels by exact intersection length.

    Returns
    -------
    ndarray ``(V, det_count)``
        Line integrals in image units x mm.
    """
    astra = _astra()
    img = np.ascontiguousarray(np.asarray(image, dtype=np.float32)[::-1, :])
    ny, nx = img.shape
    sy, sx = spacing_yx
    cx, cy = center_xy
    vol_geom = astra.create_vol_geom(ny, nx, cx - nx * sx / 2, cx + nx * sx / 2, cy - ny * sy / 2, cy + ny * sy / 2)
    proj_geom = astra.create_proj_geom("fanflat_vec", det_count, np.asarray(views, dtype=np.float64))
    pid = astra.create_projector(projector, proj_geom, vol_geom)
    try:
        sid, sino = astra.create_sino(img, pid)
        astra.data2d.delete(sid)
    finally:
        astra.projector.delete(pid)
    return np.asarray(sino, dtype=np.float64)
