"""Atomic file writes: write to a temporary file in the target folder, then rename.

A reader never sees a half-written file, and an exception while writing leaves any
previous file untouched.

Temporary files are named ``.NAME.PID-HOST-RANDOM SUFFIX`` (hidden, beside the target
``NAME``; ``PID`` is the writing process, ``HOST`` six hex digits of a hash of its host
name). A process killed with SIGKILL cannot delete its temporary, so the next atomic write
of the same target removes the temporaries whose writer is provably gone
(:func:`find_stale_temporaries` explains the rule). SIGTERM and SIGINT are turned into
exceptions by :func:`signals_as_exceptions`, so a ``with atomic_path(...)`` block unwinds and
deletes its temporary.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

#: Characters of the random part ``tempfile.mkstemp`` draws (8 of them).
_RANDOM = r"[a-z0-9_]{8}"
#: Temporaries of an older tomoprior (no writer PID in the name) are removed only when no
#: process has them open and they were last modified at least this long ago (seconds).
LEGACY_STALE_AGE_S = 3600.0


class DiskFullError(OSError):
    """The disk (or quota) filled up while writing; ``errno`` is ``ENOSPC``. The message
    names the file, the space needed and the space free."""

    def __init__(self, message: str):
        super().__init__(message)
        self.errno = errno.ENOSPC


class NotWritableError(OSError):
    """The output folder cannot be written (read-only file system, no permission); ``errno``
    is the system's (``EROFS``, ``EACCES``, ...)."""

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.errno = code


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM (or SIGHUP) inside :func:`signals_as_exceptions`.

    A ``BaseException`` like ``KeyboardInterrupt``, so ``except Exception`` does not swallow
    it; ``signum`` is the signal number (exit with ``128 + signum``).
    """

    def __init__(self, signum: int):
        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = signum


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:6]


def temporary_prefix(target) -> str:
    """Prefix of this process's temporaries of ``target``: ``.NAME.PID-HOST-``."""
    return f".{Path(target).name}.{os.getpid()}-{_host_tag()}-"


def disk_free(folder) -> int | None:
    """Free bytes for an unprivileged writer in ``folder`` (None if unknown)."""
    try:
        return int(shutil.disk_usage(folder).free)
    except OSError:
        return None


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (an OSError, or h5py's RuntimeError wrapping one) reports a full disk
    or an exceeded quota."""
    codes = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}
    if isinstance(exc, OSError) and exc.errno in codes:
        return True
    text = str(exc)
    return any(f"errno = {c}," in text or f"[Errno {c}]" in text for c in codes) or "No space left" in text


def disk_full_error(path, exc: BaseException | None = None, needed: int | None = None) -> DiskFullError:
    """A :class:`DiskFullError` naming ``path``, the space ``needed`` (bytes, if known) and
    the space free in its folder (raise it ``from exc``, the low-level error)."""
    path = Path(path)
    free = disk_free(path.parent if str(path.parent) else ".")
    parts = [f"cannot write {path}: the disk is full"]
    if needed is not None:
        parts.append(f"it needs about {_mb(needed)}")
    if free is not None:
        parts.append(f"{_mb(free)} free in {path.parent}")
    return DiskFullError("; ".join(parts) + ". Free some space or write to another disk; any previous file is "
                                            "unchanged")


def check_writable(folder, *, what: str = "output") -> Path:
    """Check that files can be created in ``folder`` by creating and removing one.

    Raises :class:`NotWritableError` (read-only file system, permission denied) or
    ``ValueError`` (the folder does not exist or is a file) naming the folder and the fix.
    Testing by writing, not by ``os.access``, gives the true answer for root, ACLs and
    read-only mounts.
    """
    folder = Path(folder) if str(folder) else Path(".")
    if not folder.exists():
        raise ValueError(f"the {what} folder {folder} does not exist; create it first")
    if not folder.is_dir():
        raise ValueError(f"the {what} folder {folder} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=temporary_prefix(folder / "write-test"), suffix=".probe", dir=folder)
    except OSError as exc:
        raise NotWritableError(f"cannot write to the {what} folder {folder} ({exc.strerror or exc}); choose a "
                               "writable folder or fix its permissions", exc.errno) from exc
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return folder


# -- stale temporaries -------------------------------------------------------------------------

def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name == "nt":  # os.kill(pid, 0) is not a probe on Windows: assume alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _open_anywhere(path: Path) -> bool | None:
    """Whether any process of this host has ``path`` open (Linux ``/proc``); None if unknown."""
    proc = Path("/proc")
    if not (proc / "self" / "fd").is_dir():
        return None
    try:
        st = path.stat()
    except OSError:
        return False
    key = (st.st_dev, st.st_ino)
    for pid_dir in proc.iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            fds = list((pid_dir / "fd").iterdir())
        except OSError:  # gone, or another user's process we may not inspect
            if not os.access(pid_dir / "fd", os.R_OK) and pid_dir.exists():
                return None  # cannot see every process: do not claim nobody has it open
            continue
        for fd in fds:
            try:
                s = fd.stat()
            except OSError:
                continue
            if (s.st_dev, s.st_ino) == key:
                return True
    return False


def find_stale_temporaries(target) -> list[Path]:
    """Temporaries of ``target`` left by writers that no longer run.

    The rule (only files in ``target``'s folder whose name has our temporary pattern for
    exactly this target are ever considered):

    * ``.NAME.PID-HOST-XXXXXXXX*`` (this version): stale when ``HOST`` is this machine and no
      process ``PID`` exists. A live process with that PID (even an unrelated one that reused
      the number) keeps the file; a temporary from another machine (a shared folder) is kept.
    * ``.NAME.XXXXXXXX.SUFFIX`` (older tomoprior, no PID): stale when the target's suffix
      matches, no process on this machine has it open (Linux ``/proc``; elsewhere never) and
      it was last modified at least :data:`LEGACY_STALE_AGE_S` ago.
    """
    target = Path(target)
    folder = target.parent if str(target.parent) else Path(".")
    name = re.escape(target.name)
    new = re.compile(rf"^\.{name}\.(\d+)-([0-9a-f]{{6}})-{_RANDOM}.*$")
    legacy = re.compile(rf"^\.{name}\.{_RANDOM}{re.escape(target.suffix)}$")
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    host = _host_tag()
    stale = []
    for p in entries:
        m = new.match(p.name)
        if m:
            if m.group(2) == host and not _pid_alive(int(m.group(1))):
                stale.append(p)
            continue
        if legacy.match(p.name) and p.is_file():
            try:
                age = time.time() - p.stat().st_mtime
            except OSError:
                continue
            if age >= LEGACY_STALE_AGE_S and _open_anywhere(p) is False:
                stale.append(p)
    return sorted(stale)


def remove_stale_temporaries(target) -> list[tuple[Path, int]]:
    """Delete :func:`find_stale_temporaries` of ``target``; returns ``(path, bytes)`` of each
    removed one. Files that vanish meanwhile or cannot be removed are skipped."""
    removed = []
    for p in find_stale_temporaries(target):
        try:
            size = p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        except OSError:
            continue
        removed.append((p, size))
    return removed


# -- atomic writes ---------------------------------------------------------------------------

@contextlib.contextmanager
def atomic_path(path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    The temporary file keeps the target's suffix (some writers choose the format by it).
    Stale temporaries of the same target (:func:`find_stale_temporaries`) are removed first.
    """
    target = Path(path)
    if target.exists() and target.is_dir():
        raise ValueError(f"{target} is a directory; give a file path")
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.exists():
        raise ValueError(f"the folder {folder} does not exist; create it first")
    remove_stale_temporaries(target)
    try:
        fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(target),
                                   suffix=suffix if suffix is not None else target.suffix, dir=folder)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(target, exc) from exc
        raise type(exc)(exc.errno, f"cannot write {target}: {exc.strerror or exc} in the folder {folder}; "
                                   "choose a writable folder or fix its permissions") from exc
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        raise_if_interrupted()  # never commit a write that a signal asked to stop
        # mkstemp creates 0600 files; give the result the permissions a plain open() would
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())


def write_bytes_atomic(path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


# -- signals -----------------------------------------------------------------------------------

#: The signal received inside :func:`signals_as_exceptions` (None: none yet).
_PENDING: dict = {"signum": None}


def raise_if_interrupted() -> None:
    """Raise again the signal received inside :func:`signals_as_exceptions`, if any.

    A handler's exception is lost when the signal lands while Python runs a ``__del__`` or
    a weakref callback ("Exception ignored in ..."); :func:`atomic_path` calls this before
    it commits a file, so a write that received the signal is never committed, and long
    writers call it between items to stop early.
    """
    signum = _PENDING["signum"]
    if signum is None:
        return
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


@contextlib.contextmanager
def signals_as_exceptions(signals=None) -> Iterator[None]:
    """Inside the block, SIGTERM (and SIGHUP) raise :class:`Terminated` in the main thread
    and SIGINT raises ``KeyboardInterrupt`` (unless SIGINT is ignored, as in a background
    job), so ``with`` blocks unwind and temporaries are deleted; the signal is also recorded
    for :func:`raise_if_interrupted`. Outside the main thread this does nothing. The previous
    handlers are restored.
    """
    if signals is None:
        signals = (signal.SIGTERM, getattr(signal, "SIGHUP", None), signal.SIGINT)
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        _PENDING["signum"] = signum
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Terminated(signum)

    previous_hook = sys.unraisablehook

    def unraisable(info):
        # The handler's exception raised inside a finaliser or weakref callback cannot
        # propagate; Python would print it as "Exception ignored in ... Traceback". It is
        # recorded and raised again when the block ends, so say nothing here.
        if isinstance(info.exc_value, (Terminated, KeyboardInterrupt)) and _PENDING["signum"] is not None:
            return
        previous_hook(info)

    saved = {}
    try:
        sys.unraisablehook = unraisable
        for s in signals:
            if s is None:
                continue
            if s == signal.SIGINT and signal.getsignal(s) is not signal.default_int_handler:
                continue  # ignored (background job) or handled by the caller: leave it
            saved[s] = signal.signal(s, handler)
        try:
            yield
        except (Terminated, KeyboardInterrupt):
            raise
        except BaseException:
            # A library swallowed the signal's exception (SpekPy has bare ``except:``) and the
            # run then failed from the damage (e.g. an empty image): report the signal, which
            # is what happened, not its consequence.
            raise_if_interrupted()
            raise
        # the block ended normally although a signal arrived and was swallowed on the way
        raise_if_interrupted()
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
        sys.unraisablehook = previous_hook
        _PENDING["signum"] = None
