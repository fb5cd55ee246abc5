"""Safe reading of the YAML and JSON documents users hand to tomoprior.

Every reader of a user file (geometry, phantom, QA tolerances, ...) goes through
:func:`load_yaml` (or :func:`load_json`), so a hostile or broken file always ends in one
:class:`DocumentError` (a ``ValueError``) that names the file and says what to fix, never
in a traceback, a hang or a huge allocation:

* files larger than ``max_bytes`` (default 16 MiB), directories, devices and FIFOs are
  refused before anything is read;
* binary or non-UTF-8 input is refused with the offending byte and its offset;
* YAML aliases may not expand the document beyond ``max_nodes`` nodes (default 100,000):
  a few hundred bytes of nested aliases ("billion laughs") would otherwise stand for 10^9
  values, harmless while shared but enormous as soon as something prints or copies them;
  self-referencing aliases and nesting deeper than ``max_depth`` (default 100) are refused;
* parser messages and any value quoted in a message are cut to :data:`QUOTE_LIMIT`
  characters (see :func:`brief`).

Only plain data comes back (YAML's safe schema: dict, list, str, int, float, bool, None,
dates); nothing in a file can create other Python objects.
"""

from __future__ import annotations

import json
import os
import reprlib
import stat
from pathlib import Path

import yaml

#: Largest file (bytes) the loaders read.
MAX_BYTES = 16 * 1024 * 1024
#: Largest number of nodes (scalars, lists, mappings) a YAML document may expand to,
#: counting every use of an alias in full.
MAX_NODES = 100_000
#: Deepest nesting of lists and mappings accepted.
MAX_DEPTH = 100
#: Longest text (characters) of a value or parser message quoted in an error message.
QUOTE_LIMIT = 200

__all__ = ["MAX_BYTES", "MAX_DEPTH", "MAX_NODES", "QUOTE_LIMIT", "DocumentError", "brief", "cap_message",
           "load_json", "load_yaml"]

_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class DocumentError(ValueError):
    """A user document that cannot be read; the message names the file and the fix.

    Attributes
    ----------
    source : str
        The file path, or ``"<text>"`` for text passed directly.
    """

    def __init__(self, message: str, source: str):
        super().__init__(message)
        self.source = source


def brief(value, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)`` cut to at most ``limit`` characters, for error messages.

    Long lists, deep nesting and long strings are abbreviated while the text is built
    (:mod:`reprlib`), so quoting a huge or self-referencing value costs almost nothing.

    Examples
    --------
    >>> brief(list(range(1000)), limit=40)
    '[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11...'
    >>> brief("x" * 10)
    "'xxxxxxxxxx'"
    """
    r = reprlib.Repr()
    r.maxlevel = 4
    r.maxlist = r.maxtuple = r.maxdict = r.maxset = r.maxfrozenset = r.maxdeque = r.maxarray = 12
    r.maxstring = r.maxother = max(limit, 8)
    r.maxlong = 40
    try:
        text = r.repr(value)
    except Exception:  # a broken __repr__ must not hide the real error
        text = f"<{type(value).__name__}>"
    if len(text) > limit:
        text = text[: max(limit - 3, 0)] + "..."
    return text


def cap_message(text: str, limit: int = 3 * QUOTE_LIMIT) -> str:
    """``text`` shortened to about ``limit`` characters by cutting its middle, so that the
    start (what is wrong, with the file and field) and the end (the fix) survive a long
    quoted value.

    >>> cap_message("a" * 50 + "b" * 50, limit=20)
    'aaaaaaaaaaa ... bbbbbbb'
    """
    if len(text) <= limit:
        return text
    head = limit // 2 + 1
    tail = limit - head - 2
    return f"{text[:head]} ... {text[len(text) - tail:]}"


def _cut(text: str, limit: int = QUOTE_LIMIT) -> str:
    text = " ".join(str(text).split()).replace(' in "<unicode string>",', " at")
    if "integer string conversion" in text:  # Python's own hint (set_int_max_str_digits) is no fix for a file
        text = "an integer has thousands of digits"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read(source, what: str, max_bytes: int, fmt: str) -> tuple[str, str]:
    """``(text, label)`` of a path (``os.PathLike``), ``bytes`` or ``str`` source."""
    if isinstance(source, os.PathLike):
        path = Path(source)
        label = str(path)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise DocumentError(f"{what} {label} does not exist; check the path", label) from None
        except OSError as exc:
            raise DocumentError(f"{what} {label} cannot be read ({exc.strerror}); check the path and "
                                "its permissions", label) from None
        if stat.S_ISDIR(st.st_mode):
            raise DocumentError(f"{what} {label} is a folder; give the path of a {fmt} file", label)
        if not stat.S_ISREG(st.st_mode):
            raise DocumentError(f"{what} {label} is not a regular file; give the path of a {fmt} file", label)
        if st.st_size > max_bytes:
            raise DocumentError(f"{what} {label} is {st.st_size:,} bytes, more than the {max_bytes:,} a {fmt} "
                                "file may have; is it the right file?", label)
        try:
            with open(path, "rb") as fh:
                data = fh.read(max_bytes + 1)
        except OSError as exc:
            raise DocumentError(f"{what} {label} cannot be read ({exc.strerror}); check its permissions",
                                label) from None
    elif isinstance(source, (bytes, bytearray, memoryview)):
        label, data = "<text>", bytes(source)
    elif isinstance(source, str):
        label = "<text>"
        if len(source) > max_bytes:
            raise DocumentError(f"{what} text is {len(source):,} characters, more than {max_bytes:,}", label)
        if "\x00" in source:
            raise DocumentError(f"{what} text contains NUL characters; is it binary data?", label)
        return source, label
    else:
        raise TypeError(f"{what}: expected a path (pathlib.Path) or the document text, got {type(source).__name__}")
    if len(data) > max_bytes:
        raise DocumentError(f"{what} {label} is more than {max_bytes:,} bytes; is it the right file?", label)
    if b"\x00" in data:
        raise DocumentError(f"{what} {label} contains NUL bytes: it is a binary file, not {fmt} text; "
                            f"give a {fmt} file", label)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DocumentError(
            f"{what} {label} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            f"is it a binary file? save it as UTF-8 {fmt}", label) from None
    return text, label


def _children(node) -> list:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_expansion(root, what: str, label: str, max_nodes: int, max_depth: int) -> None:
    """Refuse a composed YAML node graph that expands to more than ``max_nodes`` nodes,
    refers to itself or nests deeper than ``max_depth``. Iterative: no recursion limit."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    shared = False  # a node reached twice: the document uses aliases
    stack = [(root, 0, False)]
    while stack:
        node, depth, finished = stack.pop()
        key = id(node)
        if finished:
            open_nodes.discard(key)
            total = 1 + sum(sizes[id(c)] for c in _children(node))
            if total > max_nodes:
                if shared:
                    raise DocumentError(
                        f"{what} {label}: its YAML aliases (&name / *name) expand to more than {max_nodes:,} "
                        "values; write the values out or remove the aliases", label)
                raise DocumentError(f"{what} {label} holds more than {max_nodes:,} values; is it the right file?",
                                    label)
            sizes[key] = total
            continue
        if key in sizes:
            shared = True
            continue
        if key in open_nodes:
            raise DocumentError(f"{what} {label}: a YAML alias refers to a list or mapping that contains it "
                                "(a cycle); remove the alias", label)
        if depth > max_depth:
            raise DocumentError(f"{what} {label}: lists/mappings are nested more than {max_depth} deep; "
                                "is it the right file?", label)
        open_nodes.add(key)
        stack.append((node, depth, True))
        for c in _children(node):
            if id(c) in sizes:
                shared = True
            else:
                stack.append((c, depth + 1, False))


def load_yaml(source, *, what: str, max_bytes: int = MAX_BYTES, max_nodes: int = MAX_NODES,
              max_depth: int = MAX_DEPTH):
    """Parse one YAML document safely.

    Parameters
    ----------
    source : pathlib.Path (or any os.PathLike), str or bytes
        A path is read as a file; a ``str`` or ``bytes`` is the document text itself.
    what : str
        What the document is, for messages, e.g. ``"geometry file"``: errors read
        ``"geometry file g.yaml: ..."``.
    max_bytes, max_nodes, max_depth : int, optional
        Limits on the file size, on the number of values after alias expansion and on the
        nesting depth (defaults :data:`MAX_BYTES`, :data:`MAX_NODES`, :data:`MAX_DEPTH`).

    Returns
    -------
    dict, list, str, int, float, bool, datetime or None
        The document's plain data (None for an empty document).

    Raises
    ------
    DocumentError (a ValueError)
        Missing, unreadable, oversized, binary or non-UTF-8 file; invalid YAML; several
        documents; aliases expanding beyond ``max_nodes``; cyclic aliases; too deep nesting.
        The message names ``what`` and the file.
    TypeError
        ``source`` is neither a path nor text.

    Examples
    --------
    >>> load_yaml("grid: {shape: [4, 4, 4]}", what="geometry")
    {'grid': {'shape': [4, 4, 4]}}
    >>> load_yaml("a: &x [1, 2]\\nb: *x", what="example")
    {'a': [1, 2], 'b': [1, 2]}
    """
    text, label = _read(source, what, max_bytes, "YAML")
    loader = _SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.YAMLError as exc:
            raise DocumentError(f"{what} {label} is not valid YAML: {_cut(exc)}; fix the line it names",
                                label) from None
        except RecursionError:
            raise DocumentError(f"{what} {label}: lists/mappings are nested too deeply; is it the right file?",
                                label) from None
        if node is None:
            return None
        _check_expansion(node, what, label, max_nodes, max_depth)
        try:
            return loader.construct_document(node)
        except yaml.YAMLError as exc:
            raise DocumentError(f"{what} {label}: {_cut(exc)}", label) from None
        except (ValueError, OverflowError, TypeError, RecursionError) as exc:
            # e.g. an integer with more digits than Python converts, an impossible date
            raise DocumentError(f"{what} {label}: a value cannot be read ({_cut(exc)}); fix it", label) from None
    finally:
        loader.dispose()


def load_json(source, *, what: str, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH):
    """Parse one JSON document safely (same sources, limits and errors as :func:`load_yaml`).

    ``NaN`` and ``Infinity`` (not JSON, though Python's ``json`` writes them) are refused.

    Examples
    --------
    >>> load_json('{"shape": [4, 4, 4]}', what="geometry")
    {'shape': [4, 4, 4]}
    """
    text, label = _read(source, what, max_bytes, "JSON")

    def _constant(name):
        raise ValueError(f"{name} is not a JSON number; write a finite number")

    try:
        data = json.loads(text, parse_constant=_constant)
    except json.JSONDecodeError as exc:
        raise DocumentError(f"{what} {label} is not valid JSON: {_cut(exc)}; fix the place it names",
                            label) from None
    except RecursionError:
        raise DocumentError(f"{what} {label}: lists/objects are nested too deeply; is it the right file?",
                            label) from None
    except ValueError as exc:  # NaN/Infinity, or an integer with too many digits
        raise DocumentError(f"{what} {label}: {_cut(exc)}", label) from None
    _check_depth(data, what, label, max_depth)
    return data


def _check_depth(data, what: str, label: str, max_depth: int) -> None:
    stack = [(data, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > max_depth:
            raise DocumentError(f"{what} {label}: lists/objects are nested more than {max_depth} deep; "
                                "is it the right file?", label)
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
