"""Geometry files under hostile edits: random and malformed YAML/JSON documents, wrong types,
NaN/inf, huge numbers, missing and unknown fields. Every file either loads into a valid
geometry or raises one ValueError that names the file and the field, never anything else."""

from __future__ import annotations

import copy
import json
import math
import warnings

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tomoprior as tp
from tomoprior._yaml import QUOTE_LIMIT

GOOD = tp.BiplanarGeometry.from_parameters(binning=32).to_dict()
PLAIN = tp.Geometry(tp.VolumeGrid((8, 8, 8), (2.0, 2.0, 2.0)),
                    tp.BiplanarGeometry.from_parameters(binning=32).views).to_dict()
# file size limit of messages: the quoted value is capped, the rest is a sentence and the path
MAX_MESSAGE = 3 * QUOTE_LIMIT + 400


def _write(tmp_path, d, suffix=".yaml", name="g"):
    path = tmp_path / f"{name}{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(d, allow_nan=True))
    else:
        path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def _load(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tp.Geometry.load(path)


def test_missing_grid_spacing_is_an_error_not_1_mm(tmp_path):
    d = copy.deepcopy(PLAIN)
    del d["grid"]["spacing"]
    with pytest.raises(ValueError, match=r"grid\.spacing is missing.*mm") as info:
        _load(_write(tmp_path, d))
    assert "g.yaml" in str(info.value)


def test_missing_grid_center_keeps_its_documented_default(tmp_path):
    d = copy.deepcopy(PLAIN)
    del d["grid"]["center"]
    assert _load(_write(tmp_path, d)).grid.center == (0.0, 0.0, 0.0)


@pytest.mark.parametrize("version", [True, False, 1.0, "1", [1], None, 2])
def test_schema_version_must_be_the_integer_1(tmp_path, version):
    d = copy.deepcopy(PLAIN)
    d["schema_version"] = version
    with pytest.raises(ValueError, match="schema_version"):
        _load(_write(tmp_path, d))


@pytest.mark.parametrize("data", [bytes(range(256)) * 4, b"\x89PNG\r\n\x1a\n" + bytes(100), b"\xfe\xff\x00s\x00c",
                                  "grid: ¬".encode("latin-1")])
@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_random_bytes_and_binary_files_name_the_file(tmp_path, data, suffix):
    path = tmp_path / f"junk{suffix}"
    path.write_bytes(data)
    with pytest.raises(ValueError) as info:
        _load(path)
    assert str(path) in str(info.value)
    assert len(str(info.value)) < MAX_MESSAGE


def test_alias_bomb_geometry_is_refused(tmp_path):
    lines = ["schema: tomoprior.geometry", "schema_version: 1", "a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="alias") as info:
        _load(path)
    assert str(path) in str(info.value) and len(str(info.value)) < MAX_MESSAGE


@pytest.mark.parametrize("field, value, words", [
    (("grid", "spacing"), "123", "text"),
    (("grid", "spacing"), [True, 1.0, 1.0], r"grid\.spacing\[0\] must be a number"),
    (("grid", "shape"), [1e12, 4, 4], "larger than any real grid"),
    (("grid", "center"), [1e300, 0, 0], "beyond"),
    (("views", 0, "source"), ["1", "2", "3"], r"views\[0\]\.source\[0\] must be a number"),
    (("views", 0, "source"), [1e300, 0, 0], r"views\[0\].*source.*beyond"),
    (("views", 0, "u"), [0, 0, 0], "zero length"),
    (("views", 0, "name"), ["x"] * 1000, r"views\[0\]\.name must be a string"),
    (("views", 0, "shape"), "ab", "pair of positive integers"),
])
def test_wrong_types_and_absurd_numbers_name_the_field(tmp_path, field, value, words):
    d = copy.deepcopy(PLAIN)
    node = d
    for key in field[:-1]:
        node = node[key]
    node[field[-1]] = value
    with pytest.raises(ValueError, match=words) as info:
        _load(_write(tmp_path, d))
    assert len(str(info.value)) < MAX_MESSAGE


def test_a_huge_plain_document_is_refused_without_blaming_aliases(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text("schema: tomoprior.geometry\nviews: [" + "0, " * 200_000 + "]\n")
    with pytest.raises(ValueError, match="more than 100,000 values") as info:
        _load(path)
    assert "alias" not in str(info.value)


def test_mixed_type_unknown_keys_do_not_crash_the_message(tmp_path):
    d = copy.deepcopy(PLAIN)
    d[1] = "x"
    d["zz"] = "y"
    d["views"][0][2.5] = 1
    with pytest.raises(ValueError, match="unknown top-level field"):
        _load(_write(tmp_path, d))


# -- property-based ------------------------------------------------------------------------------

_bad_value = st.one_of(
    st.none(), st.booleans(), st.integers(-10**30, 10**30), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20), st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=5),
    st.lists(st.integers(-5, 10**12), max_size=4), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.just([[1, 2], [3]]), st.just("x" * 5000), st.just([0.0] * 5000),
)


def _paths(d, prefix=()):
    """Every (path) to a value inside the document: dict keys and list indices."""
    yield prefix
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            yield from _paths(v, (*prefix, i))


_ALL_PATHS = {name: [p for p in _paths(doc) if p] for name, doc in (("good", GOOD), ("plain", PLAIN))}


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(base=st.sampled_from(["good", "plain"]), data=st.data(), action=st.sampled_from(["set", "delete", "add"]),
       value=_bad_value, suffix=st.sampled_from([".yaml", ".json"]))
def test_mutated_geometry_files_load_or_name_the_problem(tmp_path, base, data, action, value, suffix):
    doc = copy.deepcopy(GOOD if base == "good" else PLAIN)
    path = data.draw(st.sampled_from(_ALL_PATHS[base]))
    node = doc
    for key in path[:-1]:
        node = node[key]
    if action == "set":
        node[path[-1]] = value
    elif action == "delete":
        del node[path[-1]]
    elif isinstance(node, dict):
        node["extra_field"] = value
    else:
        node.append(value)
    file = _write(tmp_path, doc, suffix)
    try:
        geom = _load(file)
    except ValueError as exc:
        text = str(exc)
        assert str(file) in text, text
        assert len(text) < MAX_MESSAGE, len(text)
        assert "Traceback" not in text
        return
    # it loaded: it must be a usable geometry
    assert bool(torch.isfinite(geom.vectors).all())
    assert all(math.isfinite(x) and x > 0 for x in geom.grid.spacing)
    assert all(isinstance(n, int) and n > 0 for n in geom.grid.shape)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=25,
)


@settings(max_examples=150, deadline=None)
@given(doc=_json)
def test_random_documents_are_refused_with_a_value_error(doc):
    with pytest.raises(ValueError):
        tp.Geometry.from_dict(doc)


@settings(max_examples=150, deadline=None)
@given(grid=st.dictionaries(st.sampled_from(["shape", "spacing", "center", "other"]), _bad_value, max_size=4))
def test_random_grids_are_refused_or_valid(grid):
    d = copy.deepcopy(PLAIN)
    d["grid"] = grid
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            geom = tp.Geometry.from_dict(d)
    except ValueError as exc:
        assert "grid" in str(exc) and len(str(exc)) < MAX_MESSAGE
        return
    assert geom.grid.num_voxels > 0


@settings(max_examples=100, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("{}[]:,-&*! \n\t'\"#|>?%0123456789.eE+abcxyz")), max_size=200))
def test_random_yaml_text_is_refused_with_a_value_error(text):
    with pytest.raises(ValueError):
        tp.geometry.io.loads(text, "yaml")
