"""Registry of projector backends, chosen by name (``backend="torch"``).

Backends added later (ASTRA, a compiled CPU kernel) register a factory here and every
caller of :func:`tomoprior.project` can use them without change.
"""

from __future__ import annotations

import inspect

from collections.abc import Callable
from dataclasses import dataclass

from .base import Backend


@dataclass(frozen=True)
class _Entry:
    factory: Callable[..., Backend]
    description: str
    is_available: Callable[[], bool]
    reason: Callable[[], str]


_REGISTRY: dict[str, _Entry] = {}


def register_backend(name: str, factory: Callable[..., Backend], description: str = "",
                     is_available: Callable[[], bool] | None = None, *,
                     unavailable_reason: Callable[[], str] | None = None, overwrite: bool = False) -> None:
    """Register a backend ``factory(**options) -> Backend`` under ``name``.

    ``is_available`` tells whether it can run here (e.g. needs CUDA); default always.
    ``unavailable_reason`` explains why not, for the error message.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"backend name must be a non-empty string, got {name!r}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"a projector backend named {name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[name] = _Entry(factory, description, is_available or (lambda: True),
                             unavailable_reason or (lambda: "its requirements are not met"))


def available() -> list[str]:
    """Names of the backends that can run in this environment."""
    return [name for name, entry in _REGISTRY.items() if entry.is_available()]


def registered() -> dict[str, str]:
    """All registered backends and their one-line descriptions (available here or not)."""
    return {name: entry.description for name, entry in _REGISTRY.items()}


def get_backend(backend: str | Backend = "torch", **options) -> Backend:
    """A backend instance from a name (options passed to its factory) or an instance."""
    if isinstance(backend, Backend):
        if options:
            raise ValueError("pass options when naming a backend, not together with a Backend instance")
        return backend
    if not isinstance(backend, str) or backend not in _REGISTRY:
        raise ValueError(f"unknown projector backend {backend!r}; available: {available()}")
    entry = _REGISTRY[backend]
    if not entry.is_available():
        raise ValueError(f"projector backend {backend!r} cannot run here: {entry.reason()}; "
                         f"available: {available()}")
    try:
        params = inspect.signature(entry.factory).parameters
    except (TypeError, ValueError):  # builtins without a signature: let the factory decide
        params = None
    if params is not None and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(options) - set(params))
        if unknown:
            known = sorted(k for k, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
            raise ValueError(f"backend {backend!r} takes no option(s) {unknown}; its options are {known}")
    return entry.factory(**options)


def _register_builtins() -> None:
    from .raymarch import TorchRaymarchBackend
    from .siddon import SiddonBackend

    register_backend("torch", TorchRaymarchBackend,
                     "trilinear ray marching with grid_sample (default; CPU and CUDA)", overwrite=True)
    register_backend("reference", SiddonBackend,
                     "exact voxel path lengths (Siddon); slow ground truth", overwrite=True)
    # imported lazily: only calling the factory touches astra
    from . import astra_backend

    register_backend("astra", astra_backend.AstraBackend, "ASTRA Toolbox cone_vec on CUDA (float32)",
                     is_available=astra_backend.astra_cuda_available,
                     unavailable_reason=astra_backend.unavailable_reason, overwrite=True)


_register_builtins()
