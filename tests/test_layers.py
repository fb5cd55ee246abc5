"""The layers of tomoprior import downward only, as a dependency graph.

Each layer has a rank; a layer may import its own and lower-ranked layers only. Layers of the
same rank are siblings and must not import each other: the refiner contract and calibration
sit side by side, and what uses both (training, evaluation, the miscalibration study) lives
in ``studies`` above them.
"""

import ast
from pathlib import Path

import pytest

import tomoprior

#: layer -> rank (bottom 0); equal ranks are siblings
RANKS = {
    "units": 0,
    "geometry": 1,
    "phantoms": 2,
    "projectors": 3,
    "interop": 4,
    "physics": 5,
    "metrics": 6,
    "data": 7,
    "refiners": 8,
    "calibration": 8,
    "validation": 9,
    "studies": 10,
    "cli": 11,
}
LAYERS = list(RANKS)
ROOT = Path(tomoprior.__file__).parent


def _allowed(layer: str) -> set[str]:
    """What ``layer`` may import: itself and every layer of a strictly lower rank."""
    return {layer} | {other for other, r in RANKS.items() if r < RANKS[layer]}


def _files(layer: str) -> list[Path]:
    folder, module = ROOT / layer, ROOT / f"{layer}.py"
    if folder.is_dir():
        return sorted(folder.rglob("*.py"))
    if module.is_file():
        return [module]
    return []


def _imported_layers(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    rel_parts = path.relative_to(ROOT).parts  # e.g. ("projectors", "api.py")
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(rel_parts[:-1])[: len(rel_parts) - node.level]
                target = [*base, *(node.module.split(".") if node.module else [])]
                names = [target[0]] if target else [a.name for a in node.names]
            elif node.module and node.module.startswith("tomoprior."):
                names = [node.module.split(".")[1]]
            else:
                continue
            found.update(n for n in names if n in LAYERS)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "tomoprior" and len(parts) > 1 and parts[1] in LAYERS:
                    found.add(parts[1])
    return found


@pytest.mark.parametrize("layer", LAYERS)
def test_layer_imports_only_lower_layers(layer):
    files = _files(layer)
    if layer == "units" and not files:
        pytest.skip("no units module yet")
    assert files, f"layer {layer} is missing"
    for path in files:
        bad = _imported_layers(path) - _allowed(layer)
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}, not below {layer} in the layer graph"


def test_siblings_do_not_import_each_other():
    assert RANKS["refiners"] == RANKS["calibration"]
    assert "calibration" not in _allowed("refiners") and "refiners" not in _allowed("calibration")
    assert {"refiners", "calibration"} <= _allowed("studies")


def test_every_subpackage_is_a_layer():
    packages = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages <= set(LAYERS), f"subpackages without a place in the layer graph: {sorted(packages - set(LAYERS))}"


def test_the_checker_sees_relative_imports(tmp_path):
    # guard against a checker that passes because it parses nothing
    assert "projectors" in _imported_layers(ROOT / "validation" / "analytic.py")
    assert "geometry" in _imported_layers(ROOT / "projectors" / "api.py")


def _cross_layer_private_imports(path: Path, source: str | None = None) -> list[str]:
    """``from <other layer>... import _name`` or imports of another layer's ``_module``.

    The top-level helpers ``tomoprior._atomic``, ``_yaml``, ``_memory`` and ``_threads`` are
    shared by every layer on purpose and are not a layer's private names."""
    tree = ast.parse(path.read_text() if source is None else source, filename=str(path))
    rel_parts = path.relative_to(ROOT).parts
    own = rel_parts[0].removesuffix(".py")
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            target = [*list(rel_parts[:-1])[: len(rel_parts) - node.level],
                      *(node.module.split(".") if node.module else [])]
        elif node.module and node.module.startswith("tomoprior."):
            target = node.module.split(".")[1:]
        else:
            continue
        if not target or target[0] not in LAYERS or target[0] == own:
            continue
        if any(part.startswith("_") for part in target[1:]):
            found.append(".".join(target))
        found += [f"{'.'.join(target)}.{a.name}" for a in node.names if a.name.startswith("_")]
    return found


def test_no_private_names_imported_across_layers():
    bad = {str(p.relative_to(ROOT)): names for layer in LAYERS for p in _files(layer)
           if (names := _cross_layer_private_imports(p))}
    assert not bad, f"private names imported from another layer (make them public or move them): {bad}"


def test_the_private_import_checker_finds_one():
    # a module that would sit in cli/ (never written: the checker parses the given source)
    source = ("from ..geometry.view import _something\nfrom ..projectors._hidden import x\n"
              "from ..cli.qa_common import _own_layer_is_fine\nfrom .._atomic import atomic_path\n")
    found = _cross_layer_private_imports(ROOT / "cli" / "probe.py", source)
    assert found == ["geometry.view._something", "projectors._hidden"]
