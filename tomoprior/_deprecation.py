"""Deprecated aliases: an old public name that keeps working for one release and says what
replaces it.

Shared by every layer (like ``_atomic`` and ``_yaml``); imports nothing from tomoprior.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)


def deprecated_alias(func: F, old: str, new: str) -> F:
    """``func`` under its old name ``old``: same arguments and result, plus a
    ``DeprecationWarning`` on every call that names the replacement ``new``.

    ``old`` and ``new`` are the dotted public names (``"tomoprior.x.old"``), as a user would
    write them.

    Examples
    --------
    >>> import warnings
    >>> def double(x):
    ...     return 2 * x
    >>> twice = deprecated_alias(double, "pkg.twice", "pkg.double")
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     twice(3)
    6
    >>> str(caught[0].message)
    'pkg.twice() is deprecated and will be removed in the next release; use pkg.double() instead'
    """

    @functools.wraps(func)
    def alias(*args, **kwargs):
        warnings.warn(f"{old}() is deprecated and will be removed in the next release; use {new}() instead",
                      DeprecationWarning, stacklevel=2)
        return func(*args, **kwargs)

    alias.__name__ = alias.__qualname__ = old.rsplit(".", 1)[-1]
    alias.__doc__ = f"Deprecated alias of :func:`{new}` (removed in the next release)."
    return alias  # type: ignore[return-value]
