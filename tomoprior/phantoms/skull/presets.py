"""Skull presets: YAML files (schema ``tomoprior.skull``) in the repository's ``phantoms/``.

A preset file::

    schema: tomoprior.skull
    schema_version: 1
    name: skull_1y_normal
    description: ...
    parameters: {age_years: 1.0, variant: normal, cephalic_index: null, seed: 0, side: left}
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ..._atomic import write_text_atomic
from ..phantom import find, names_with_schema
from .model import Skull
from .parameters import SkullParameters

__all__ = ["PRESET_SCHEMA", "PRESET_SCHEMA_VERSION", "available_presets", "load_preset", "preset_parameters",
           "save_preset"]

#: ``schema`` value of a skull preset file.
PRESET_SCHEMA = "tomoprior.skull"
#: Newest preset version this code reads and the one it writes.
PRESET_SCHEMA_VERSION = 1
_KEYS = ("schema", "schema_version", "name", "description", "parameters")


def available_presets() -> list[str]:
    """Names of the skull presets on the phantom search path, sorted.

    Examples
    --------
    >>> "skull_1y_normal" in available_presets()
    True
    """
    return names_with_schema(PRESET_SCHEMA)


def preset_parameters(name_or_path) -> SkullParameters:
    """The :class:`SkullParameters` of a preset (by name, e.g. ``"skull_1y_sagittal"``, or path).

    Raises
    ------
    ValueError
        Unknown name (the message lists the presets), a file of another schema, a newer
        schema version, unknown keys or invalid parameters.
    """
    try:
        path = find(name_or_path)
    except ValueError as exc:
        raise ValueError(f"{exc}. Skull presets: {', '.join(available_presets()) or '(none)'}") from None
    from ..._yaml import load_yaml

    data = load_yaml(Path(path), what="skull preset")
    if not isinstance(data, dict) or data.get("schema") != PRESET_SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path}: not a skull preset (schema {PRESET_SCHEMA!r} expected, found {found!r})")
    version = data.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= PRESET_SCHEMA_VERSION:
        raise ValueError(f"{path}: schema_version must be an integer 1..{PRESET_SCHEMA_VERSION}, got {version!r}")
    unknown = sorted(set(data) - set(_KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; allowed: {list(_KEYS)}")
    return SkullParameters.from_dict(data.get("parameters"), where=f"{path}: parameters")


def load_preset(name_or_path) -> Skull:
    """Build the :class:`Skull` of a preset.

    Examples
    --------
    >>> load_preset("skull_1y_normal").parameters.variant
    'normal'
    """
    return Skull(preset_parameters(name_or_path))


def save_preset(parameters: SkullParameters, path, name: str | None = None, description: str = "") -> Path:
    """Write ``parameters`` as a preset YAML file (atomically); returns the path."""
    if not isinstance(parameters, SkullParameters):
        raise ValueError(f"parameters must be a SkullParameters, got {type(parameters).__name__}")
    target = Path(path)
    doc = {
        "schema": PRESET_SCHEMA,
        "schema_version": PRESET_SCHEMA_VERSION,
        "name": name or target.stem,
        "description": description,
        "parameters": parameters.to_dict(),
    }
    write_text_atomic(target, yaml.safe_dump(doc, sort_keys=False, width=100))
    return target
