"""Registry of projector backends, chosen by name (``backend="torch"``).

A backend registers a factory returning a :class:`~tomoprior.projectors.Backend` (either
contract: the whole operator, or a :class:`~tomoprior.projectors.ChunkedBackend` built from
chunk kernels) and every caller of :func:`tomoprior.project` can use it without change. The
shared projector tests run over :func:`registered`, skipping a backend that cannot run here
with :func:`unavailable_reason`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .._deprecation import deprecated_alias
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


def available_backends() -> list[str]:
    """Names of the registered backends that can run in this environment, in registration order
    (:func:`registered` lists them all).

    >>> "reference" in available_backends()
    True
    """
    return [name for name, entry in _REGISTRY.items() if entry.is_available()]


available = deprecated_alias(available_backends, "tomoprior.projectors.available",
                             "tomoprior.projectors.available_backends")


def registered() -> dict[str, str]:
    """All registered backends and their one-line descriptions (available here or not)."""
    return {name: entry.description for name, entry in _REGISTRY.items()}


def unavailable_reason(name: str) -> str | None:
    """Why the registered backend ``name`` cannot run here, or None if it can.

    >>> unavailable_reason("reference") is None
    True

    Raises
    ------
    ValueError
        ``name`` is not registered.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown projector backend {name!r}; registered: {sorted(_REGISTRY)}")
    entry = _REGISTRY[name]
    return None if entry.is_available() else entry.reason()


#: The backend name that picks the fastest backend for the data's device.
AUTO = "auto"


def resolve_backend(backend: str | Backend = AUTO, device=None) -> str | Backend:
    """The concrete backend ``"auto"`` stands for, for tensors on ``device``.

    ``"auto"`` (the default of :func:`tomoprior.project` and friends) is ``"numba"`` for
    CPU tensors (parallel Joseph kernels, tens of times faster than ``"torch"`` on a CPU) and
    ``"torch"`` for other devices (CUDA: the same torch code runs on the GPU). Any other name
    or a :class:`Backend` instance is returned unchanged.

    >>> resolve_backend("reference")
    'reference'
    >>> resolve_backend("auto", "cpu")
    'numba'
    """
    if not (isinstance(backend, str) and backend == AUTO):
        return backend
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cpu" and "numba" in _REGISTRY and _REGISTRY["numba"].is_available():
        return "numba"
    return "torch"


def get_backend(backend: str | Backend = AUTO, device=None, **options) -> Backend:
    """A backend instance from a name (options passed to its factory) or an instance.

    ``"auto"`` resolves by ``device`` (default CPU), see :func:`resolve_backend`; it takes
    no options: name the backend to pass options (e.g. ``backend="torch", step=0.25``).
    """
    if isinstance(backend, Backend):
        if options:
            raise ValueError("pass options when naming a backend, not together with a Backend instance")
        return backend
    if isinstance(backend, str) and backend == AUTO:
        if options:
            raise ValueError(f"backend 'auto' takes no options (got {sorted(options)}); name the backend "
                             f"the options belong to, e.g. backend='torch'")
        backend = resolve_backend(backend, device)
    if not isinstance(backend, str) or backend not in _REGISTRY:
        raise ValueError(f"unknown projector backend {backend!r}; available: {available_backends()} or 'auto'")
    entry = _REGISTRY[backend]
    if not entry.is_available():
        raise ValueError(f"projector backend {backend!r} cannot run here: {entry.reason()}; "
                         f"available: {available_backends()}")
    try:
        params = inspect.signature(entry.factory).parameters
    except (TypeError, ValueError):  # builtins without a signature: let the factory decide
        params = None
    if params is not None and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(options) - set(params))
        if unknown:
            known = sorted(k for k, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
            raise ValueError(f"backend {backend!r} takes no option(s) {unknown}; its options are {known}")
    instance = entry.factory(**options)
    if not isinstance(instance, Backend):
        raise TypeError(f"the factory of projector backend {backend!r} returned a {type(instance).__name__}, "
                        "not a tomoprior.projectors.Backend")
    return instance


def _register_builtins() -> None:
    from .raymarch import TorchRaymarchBackend
    from .siddon import SiddonBackend

    register_backend("torch", TorchRaymarchBackend,
                     "trilinear ray marching with grid_sample (CPU and CUDA; 'auto' on CUDA)", overwrite=True)
    register_backend("reference", SiddonBackend,
                     "exact voxel path lengths (Siddon); slow ground truth", overwrite=True)
    from . import numba_backend

    numba_backend.register()
    # imported lazily: only calling the factory touches astra
    from . import astra_backend

    register_backend("astra", astra_backend.AstraBackend, "ASTRA Toolbox cone_vec on CUDA (float32)",
                     is_available=astra_backend.astra_cuda_available,
                     unavailable_reason=astra_backend.unavailable_reason, overwrite=True)


_register_builtins()
