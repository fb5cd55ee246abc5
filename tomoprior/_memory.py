"""Memory budget: refuse a job that cannot fit before allocating, with the number and the fix.

A detector of 10^6 x 10^6 pixels or a 5000^3 grid is a valid description but needs
terabytes. Rather than letting the allocator fail deep inside torch (a traceback), or the
operating system swap and kill the process, the code that allocates large arrays first
estimates what it needs and calls :func:`check_memory`, which compares the estimate with
the memory available to this process:

* ``TOMOPRIOR_MEMORY_LIMIT`` if set: bytes with an optional unit (``"8GiB"``, ``"500MB"``,
  ``"2e9"``); ``"off"`` (or ``"none"``, ``"0"``) disables the check;
* else ``MemAvailable`` of ``/proc/meminfo`` (Linux), else ``psutil`` if installed, else
  ``os.sysconf`` free physical pages; if none can be read, nothing is refused.
"""

from __future__ import annotations

import os
import re

#: Environment variable overriding the memory available to tomoprior (see the module notes).
ENV_VAR = "TOMOPRIOR_MEMORY_LIMIT"

_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}

__all__ = ["ENV_VAR", "InsufficientMemoryError", "available_memory", "check_memory", "format_bytes"]


class InsufficientMemoryError(ValueError, MemoryError):
    """A job needs more memory than this machine has available.

    Both a ``ValueError`` (the input is too large: command-line tools exit with code 2)
    and a ``MemoryError`` (code that already handles allocation failures still works).

    Attributes
    ----------
    needed, available : int
        Bytes.
    """

    def __init__(self, message: str, needed: int, available: int):
        super().__init__(message)
        self.needed = needed
        self.available = available


def format_bytes(n: float) -> str:
    """``n`` bytes in binary units, e.g. ``"73 TiB"``, ``"1.5 GiB"``.

    >>> format_bytes(80 * 2**40), format_bytes(1536 * 2**20), format_bytes(12)
    ('80 TiB', '1.5 GiB', '12 B')
    """
    n = float(n)
    for unit, size in (("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            value = n / size
            return f"{value:.0f} {unit}" if value >= 10 or value.is_integer() else f"{value:.1f} {unit}"
    return f"{n:.0f} B"


def _parse_limit(text: str) -> int | None:
    t = text.strip().lower()
    if t in ("off", "none", "0", ""):
        return None
    m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)", t)
    if not m or m.group(2) not in _UNITS:
        raise ValueError(f"{ENV_VAR}={text!r} is not a memory size; write e.g. 8GiB, 500MB or off")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def _system_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil  # optional

        return int(psutil.virtual_memory().available)
    except Exception:  # not installed, or no answer on this platform
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


def available_memory() -> int | None:
    """Bytes this process may allocate (see the module notes), or None for "no limit known"."""
    override = os.environ.get(ENV_VAR)
    if override is not None:
        return _parse_limit(override)
    return _system_available()


def check_memory(needed: float, what: str, fix: str) -> None:
    """Raise :class:`InsufficientMemoryError` if ``needed`` bytes exceed the available memory.

    Parameters
    ----------
    needed : float
        Estimated peak bytes of the job (arrays plus temporaries).
    what : str
        What needs it, e.g. ``"the projections of 2 views of 1000000 x 1000000 pixels (float32)"``.
    fix : str
        How to need less, e.g. ``"bin the detector"``.

    Examples
    --------
    >>> import os
    >>> os.environ[ENV_VAR] = "1GiB"
    >>> check_memory(2**40, "a test array", "use less")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    tomoprior._memory.InsufficientMemoryError: a test array needs 1 TiB of memory; 1 GiB is available ...
    >>> del os.environ[ENV_VAR]
    """
    avail = available_memory()
    if avail is None or needed <= avail:
        return
    source = ENV_VAR if os.environ.get(ENV_VAR) is not None else f"this machine; override with {ENV_VAR}"
    raise InsufficientMemoryError(
        f"{what} needs {format_bytes(needed)} of memory; {format_bytes(avail)} is available ({source}); {fix}",
        int(min(needed, 2**63 - 1)), avail)
