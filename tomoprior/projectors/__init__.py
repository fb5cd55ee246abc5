"""Projectors: differentiable forward projection (``project``) and its exact adjoint
(``backproject``) over a registry of backends (``"torch"``, ``"reference"``, ...)."""

from .api import backproject, project
from .base import Backend
from .operator import Projector
from .raymarch import TorchRaymarchBackend
from .registry import available, get_backend, register_backend, registered
from .siddon import SiddonBackend

__all__ = [
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
]
