"""Projectors: differentiable forward projection (``project``) and its exact adjoint
(``backproject``) over a registry of backends (``"numba"``, ``"torch"``, ``"reference"``,
``"astra"``); ``"auto"``, the default, picks the fastest one for the data's device."""

from .api import backproject, project
from .base import Backend
from .operator import Projector
from .raymarch import TorchRaymarchBackend
from .registry import AUTO, available, get_backend, register_backend, registered, resolve_backend
from .siddon import SiddonBackend

__all__ = [
    "AUTO",
    "Backend",
    "Projector",
    "SiddonBackend",
    "TorchRaymarchBackend",
    "available",
    "backproject",
    "get_backend",
    "project",
    "register_backend",
    "registered",
    "resolve_backend",
]
