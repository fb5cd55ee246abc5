"""The layers of DESIGN.md import downward only (cli -> ... -> geometry)."""

import ast
from pathlib import Path

import pytest

import tomoprior

# bottom to top, as in DESIGN.md
LAYERS = ["geometry", "phantoms", "projectors", "interop", "physics", "metrics", "data", "refiners", "calibration",
          "validation", "cli"]
ROOT = Path(tomoprior.__file__).parent


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
    allowed = set(LAYERS[: LAYERS.index(layer) + 1])
    folder = ROOT / layer
    assert folder.is_dir(), f"layer {layer} is missing"
    for path in folder.rglob("*.py"):
        bad = _imported_layers(path) - allowed
        assert not bad, f"{path.relative_to(ROOT)} imports higher layer(s) {sorted(bad)}"


def test_the_checker_sees_relative_imports(tmp_path):
    # guard against a checker that passes because it parses nothing
    assert "projectors" in _imported_layers(ROOT / "validation" / "analytic.py")
    assert "geometry" in _imported_layers(ROOT / "projectors" / "api.py")
