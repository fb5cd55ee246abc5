"""tomoprior's projector as an ODL operator (``odl.Operator`` with ``.adjoint``).

The domain is ``odl.uniform_discr`` over the :class:`~tomoprior.VolumeGrid` box, axes in
array order ``(z, y, x)``; the range is ``odl.rn((views, rows, cols))``. ODL's domain
inner product is weighted by the cell volume ``sz * sy * sx``, the range's is the plain
sum, so the ODL adjoint is ``backproject(y) / cell_volume``: then
``<A x, y>_range == <x, A^* y>_domain`` holds in ODL's own inner products, which its
solvers and ``odl.diagnostics`` rely on.

Example
-------
>>> import odl, tomoprior as tp
>>> from tomoprior.interop.odl import ProjectionOperator
>>> geom = tp.BiplanarGeometry.from_parameters(binning=32, grid=tp.VolumeGrid((16, 16, 16), (12, 12, 12)))
>>> A = ProjectionOperator(geom)
>>> A.domain.shape, A.range.shape
((16, 16, 16), (2, 48, 48))
"""

from __future__ import annotations

import numpy as np
import odl
import torch

from ..geometry.geometry import Geometry
from ..geometry.grid import VolumeGrid
from ..projectors import backproject, get_backend, project


def grid_space(grid: VolumeGrid, dtype: str = "float32") -> odl.DiscretizedSpace:
    """``odl.uniform_discr`` over the voxel box of ``grid``, axes ``(z, y, x)``."""
    (x0, y0, z0), (x1, y1, z1) = grid.bounds()
    return odl.uniform_discr([z0, y0, x0], [z1, y1, x1], grid.shape, dtype=dtype)


class ProjectionOperator(odl.Operator):
    """Forward projection ``A: volume -> (views, rows, cols)`` for ODL solvers.

    Parameters
    ----------
    geometry : Geometry
        Its views must share one detector shape (ODL range is one array).
    backend : str
        tomoprior projector backend (default ``"auto"``: ``"numba"`` on CPU, ``"torch"`` on CUDA).
    dtype : str
        ``"float32"`` (default) or ``"float64"``.
    **options
        Backend options.
    """

    def __init__(self, geometry: Geometry, backend: str = "auto", dtype: str = "float32", **options):
        if not isinstance(geometry, Geometry):
            raise ValueError(f"geometry must be a tomoprior Geometry, got {type(geometry).__name__}")
        if dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        self.geometry = geometry
        self.backend = get_backend(backend, **options)
        self._torch_dtype = torch.float32 if dtype == "float32" else torch.float64
        domain = grid_space(geometry.grid, dtype)
        rng = odl.rn(geometry.projection_shape, dtype=dtype)
        super().__init__(domain=domain, range=rng, linear=True)

    def _call(self, x):
        vol = torch.from_numpy(np.ascontiguousarray(x.asarray(), dtype=np.dtype(self.range.dtype)))
        with torch.no_grad():
            return project(vol, self.geometry, self.backend).numpy()

    @property
    def adjoint(self) -> odl.Operator:
        return _BackprojectionOperator(self)


class _BackprojectionOperator(odl.Operator):
    def __init__(self, forward: ProjectionOperator):
        self._forward = forward
        self._cell_volume = float(np.prod(forward.geometry.grid.spacing))
        super().__init__(domain=forward.range, range=forward.domain, linear=True)

    def _call(self, y):
        proj = torch.from_numpy(np.ascontiguousarray(y.asarray(), dtype=np.dtype(self.domain.dtype)))
        with torch.no_grad():
            vol = backproject(proj, self._forward.geometry, self._forward.backend)
        return (vol / self._cell_volume).numpy()

    @property
    def adjoint(self) -> ProjectionOperator:
        return self._forward
