"""Projectors: differentiable forward projection (``project``) and its exact adjoint
(``backproject``) over a registry of backends (``"numba"``, ``"torch"``, ``"reference"``,
``"astra"``); ``"auto"``, the default, picks the fastest one for the data's device.

A backend is a :class:`Backend` (the whole operator: ``forward``, ``adjoint``, optionally
``vector_grad``) or a :class:`ChunkedBackend` (a ``Backend`` built from per-chunk torch
kernels); see :mod:`tomoprior.projectors.base`.
"""

from .api import backproject, project
from .base import Backend
from .chunked import ChunkedBackend
from .operator import Projector
from .raymarch import TorchRaymarchBackend
from .registry import (
    AUTO,
    available_backends,
    get_backend,
    register_backend,
    registered,
    resolve_backend,
    unavailable_reason,
)
from .registry import available as available  # deprecated alias of available_backends
from .siddon import SiddonBackend

__all__ = [
    "AUTO",
    "Backend",
    "ChunkedBackend",
    "Projector",
    "SiddonBackend",
    "TorchRaymarchBackend",
    "available_backends",
    "backproject",
    "get_backend",
    "project",
    "register_backend",
    "registered",
    "resolve_backend",
    "unavailable_reason",
]
