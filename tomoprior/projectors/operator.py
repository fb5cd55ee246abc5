"""A projector as an operator object: fixed geometry and backend, ``P(x)`` and ``P.T(y)``."""

from __future__ import annotations

import torch

from .api import backproject, project
from .registry import get_backend


class Projector:
    """The linear operator ``P`` of a geometry and backend, with its adjoint ``P.T``.

    Parameters
    ----------
    geometry : Geometry
    backend : str or Backend
        ``"auto"`` (default: ``"numba"`` for CPU tensors, ``"torch"`` on other devices,
        chosen per call by the tensor's device) or any name of
        :func:`tomoprior.projectors.available_backends`.
    **options
        Backend options (e.g. ``step`` for ``"torch"``).

    Examples
    --------
    >>> import torch, tomoprior as tp
    >>> geom = tp.BiplanarGeometry.from_parameters(binning=16, grid=tp.VolumeGrid((32, 32, 32), (6, 6, 6)))
    >>> P = tp.projectors.Projector(geom)
    >>> P.domain_shape, P.range_shape
    ((32, 32, 32), (2, 96, 96))
    >>> P.T(P(torch.ones(P.domain_shape))).shape
    torch.Size([32, 32, 32])
    """

    def __init__(self, geometry, backend="auto", **options):
        self.geometry = geometry
        self._auto = isinstance(backend, str) and backend == "auto"
        #: the backend instance (for ``"auto"``: the one CPU tensors use)
        self.backend = get_backend(backend, **options)

    def _backend_for(self, tensor):
        if self._auto and isinstance(tensor, torch.Tensor) and tensor.device.type != "cpu":
            return get_backend("auto", tensor.device)
        return self.backend

    @property
    def domain_shape(self) -> tuple[int, int, int]:
        return self.geometry.grid.shape

    @property
    def range_shape(self) -> tuple[int, int, int]:
        return self.geometry.projection_shape

    def __call__(self, volume):
        return project(volume, self.geometry, self._backend_for(volume))

    def adjoint(self, projections):
        return backproject(projections, self.geometry, self._backend_for(projections))

    @property
    def T(self) -> _Adjoint:  # noqa: N802 - mathematical notation
        return _Adjoint(self)

    def __repr__(self) -> str:
        return f"Projector(backend={self.backend.describe()}, domain={self.domain_shape})"


class _Adjoint:
    def __init__(self, op: Projector):
        self._op = op

    def __call__(self, projections):
        return self._op.adjoint(projections)

    @property
    def T(self) -> Projector:  # noqa: N802
        return self._op
