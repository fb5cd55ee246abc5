"""Refiner registry: built-ins, in-process :func:`register` and installed plugins found through
the entry-point group ``tomoprior.refiners`` (``importlib.metadata``).

A plugin distribution declares, in its ``pyproject.toml``::

    [project.entry-points."tomoprior.refiners"]
    myrefiner = "my_package.model:MyRefiner"

and the object it points to must be a :class:`~tomoprior.refiners.Refiner` subclass whose
``name`` equals the entry-point name. Nothing is imported until the refiner is loaded.
"""

from __future__ import annotations

import re
import warnings
from importlib import metadata

from .._deprecation import deprecated_alias
from .base import Refiner

#: The entry-point group plugins declare.
ENTRY_POINT_GROUP = "tomoprior.refiners"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-.]*$")

_BUILTINS: dict[str, type[Refiner]] = {}
_REGISTERED: dict[str, type[Refiner]] = {}


class RefinerPluginError(ImportError):
    """An installed refiner plugin failed to import or does not honour the Refiner contract.
    The message names the plugin, its entry point and distribution, and the cause."""


def _validate_class(cls, name: str | None, where: str) -> str:
    if not (isinstance(cls, type) and issubclass(cls, Refiner)):
        raise TypeError(f"{where}: {cls!r} is not a subclass of tomoprior.refiners.Refiner")
    cls_name = getattr(cls, "name", "")
    if name is None:
        name = cls_name
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"{where}: refiner name {name!r} is invalid; use lower-case letters, digits, '-', '_' or '.' "
            "(set the class attribute `name`)"
        )
    if cls_name != name:
        raise ValueError(f"{where}: {cls.__name__}.name is {cls_name!r} but it is registered as {name!r}")
    import dataclasses

    if not (isinstance(cls.config_class, type) and dataclasses.is_dataclass(cls.config_class)):
        raise TypeError(f"{where}: {cls.__name__}.config_class must be a dataclass type, got {cls.config_class!r}")
    return name


def register(cls=None, *, name: str | None = None, overwrite: bool = False):
    """Register a :class:`Refiner` subclass in this process (also usable as a decorator).

    Parameters
    ----------
    cls : type
        A ``Refiner`` subclass with class attributes ``name`` and ``config_class``.
    name : str, optional
        Must equal ``cls.name`` if given (kept for explicitness).
    overwrite : bool
        Replace an earlier in-process registration of the same name. Built-in names can
        never be replaced.

    Returns
    -------
    The class itself, so ``@register`` leaves the decorated class unchanged.

    Examples
    --------
    >>> import dataclasses, torch
    >>> from tomoprior.refiners import Refiner, register, load, unregister
    >>> @dataclasses.dataclass
    ... class Cfg:
    ...     gain: float = 2.0
    >>> @register
    ... class Doubler(Refiner):
    ...     name = "doctest-doubler"
    ...     config_class = Cfg
    ...     def forward(self, xrays, geometry, prior):
    ...         return self.config.gain * prior
    >>> load("doctest-doubler", gain=3.0).config
    Cfg(gain=3.0)
    >>> unregister("doctest-doubler")
    """
    if cls is None:
        return lambda c: register(c, name=name, overwrite=overwrite)
    key = _validate_class(cls, name, "register()")
    if key in _BUILTINS:
        raise ValueError(f"register(): {key!r} is a built-in refiner and cannot be replaced; choose another name")
    if key in _REGISTERED and _REGISTERED[key] is not cls and not overwrite:
        raise ValueError(
            f"register(): a refiner named {key!r} is already registered ({_REGISTERED[key].__qualname__}); "
            "pass overwrite=True to replace it"
        )
    _REGISTERED[key] = cls
    return cls


def unregister(name: str) -> None:
    """Remove an in-process registration (built-ins and installed plugins stay)."""
    if name not in _REGISTERED:
        raise ValueError(
            f"unregister(): {name!r} was not registered in this process; registered: {sorted(_REGISTERED)}"
        )
    del _REGISTERED[name]


def _builtin(cls):
    _BUILTINS[_validate_class(cls, None, "built-in")] = cls
    return cls


def _entry_points() -> dict[str, metadata.EntryPoint]:
    found: dict[str, metadata.EntryPoint] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in found and found[ep.name].value != ep.value:
            warnings.warn(
                f"two installed distributions declare the refiner {ep.name!r} "
                f"({_describe(found[ep.name])} and {_describe(ep)}); using the first",
                stacklevel=3,
            )
            continue
        found.setdefault(ep.name, ep)
    return found


def _describe(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    origin = f" from distribution {dist.metadata['Name']} {dist.version}" if dist is not None else ""
    return f"entry point '{ep.name} = {ep.value}'{origin}"


def available_refiners() -> list[str]:
    """Sorted names of every loadable refiner: built-ins (``bp-prior``), in-process
    registrations and installed plugins (entry-point group ``tomoprior.refiners``).
    Plugins are not imported by this call."""
    return sorted(set(_BUILTINS) | set(_REGISTERED) | set(_entry_points()))


available = deprecated_alias(available_refiners, "tomoprior.refiners.available",
                             "tomoprior.refiners.available_refiners")


def get_class(name: str) -> type[Refiner]:
    """The :class:`Refiner` subclass registered under ``name`` (imports a plugin if needed).

    Raises
    ------
    ValueError
        Unknown name; the message lists the installed refiners.
    RefinerPluginError
        The plugin's entry point fails to import or is not a proper Refiner subclass.
    """
    if not isinstance(name, str):
        raise TypeError(f"refiner name must be a string, got {type(name).__name__}")
    if name in _BUILTINS:
        return _BUILTINS[name]
    if name in _REGISTERED:
        return _REGISTERED[name]
    eps = _entry_points()
    if name not in eps:
        if name.endswith((".pt", ".pth", ".ckpt")) or "/" in name or "\\" in name:
            raise ValueError(
                f"{name!r} looks like a file, not a refiner name ({available_refiners()}): to read trained "
                "weights use tomoprior.refiners.Refiner.from_checkpoint(path)"
            )
        raise ValueError(
            f"unknown refiner {name!r}; installed: {available_refiners()}. A plugin registers itself in the "
            f"entry-point group {ENTRY_POINT_GROUP!r} of its distribution (see docs/refiners.md)"
        )
    ep = eps[name]
    try:
        obj = ep.load()
    except Exception as exc:
        raise RefinerPluginError(
            f"refiner plugin {name!r} ({_describe(ep)}) failed to import: {type(exc).__name__}: {exc}"
        ) from exc
    try:
        _validate_class(obj, name, f"refiner plugin {name!r} ({_describe(ep)})")
    except (TypeError, ValueError) as exc:
        raise RefinerPluginError(str(exc)) from exc
    return obj


def load(name: str, config=None, **overrides) -> Refiner:
    """Build the refiner ``name`` with its config.

    Parameters
    ----------
    name : str
        One of :func:`available_refiners`.
    config : config dataclass instance or dict, optional
        Full configuration; default ``config_class()``.
    **overrides
        Config fields, e.g. ``load("psctnet", preset="tiny")``.

    Returns
    -------
    Refiner
        A fresh (untrained) module; use ``Refiner.from_checkpoint`` for trained weights.

    Examples
    --------
    >>> from tomoprior import refiners
    >>> "bp-prior" in refiners.available_refiners()
    True
    >>> refiners.load("bp-prior").name
    'bp-prior'
    """
    return get_class(name)(config, **overrides)
