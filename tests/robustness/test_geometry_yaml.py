"""The shared safe YAML/JSON loader (tomoprior._yaml): hostile documents end in one clear
DocumentError naming the file, quickly and without a large allocation."""

from __future__ import annotations

import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tomoprior._yaml import QUOTE_LIMIT, DocumentError, brief, load_json, load_yaml

# 342 bytes standing for 10^9 strings once the aliases are expanded
BOMB = "\n".join(
    [f"a: &a [{', '.join(['lol'] * 9)}]"]
    + [f"{n}: &{n} [{', '.join(['*' + p] * 9)}]" for p, n in zip("abcdefgh", "bcdefghi")]
) + "\n"


def test_alias_bomb_is_refused_quickly_with_a_short_message(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    tracemalloc.start()
    try:
        with pytest.raises(DocumentError) as info:
            load_yaml(path, what="geometry file")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    msg = str(info.value)
    assert str(path) in msg and "alias" in msg and "geometry file" in msg
    assert len(msg) < 400
    assert peak < 20 * 2**20  # the expanded document (10^9 values) is never built
    assert info.value.source == str(path)


def test_moderate_aliases_still_work():
    data = load_yaml("base: &b [1.0, 2.0, 3.0]\ncopy: *b\n", what="example")
    assert data == {"base": [1.0, 2.0, 3.0], "copy": [1.0, 2.0, 3.0]}


def test_cyclic_alias_is_refused():
    with pytest.raises(DocumentError, match="cycle"):
        load_yaml("a: &a [1, *a]\n", what="phantom file")


@pytest.mark.parametrize("data, words", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
    (b"grid: \xff\xfe shape", "not UTF-8"),
])
def test_binary_and_non_utf8_files_are_named(tmp_path, data, words):
    path = tmp_path / "g.yaml"
    path.write_bytes(data)
    with pytest.raises(DocumentError, match=words) as info:
        load_yaml(path, what="geometry file")
    assert str(path) in str(info.value)


def test_folder_missing_file_and_oversized_file(tmp_path):
    with pytest.raises(DocumentError, match="folder"):
        load_yaml(tmp_path, what="geometry file")
    with pytest.raises(DocumentError, match="does not exist"):
        load_yaml(tmp_path / "missing.yaml", what="geometry file")
    big = tmp_path / "big.yaml"
    big.write_text("a: 1\n" * 1000)
    with pytest.raises(DocumentError, match="more than the 100 a YAML file"):
        load_yaml(big, what="geometry file", max_bytes=100)


def test_deep_nesting_and_huge_integers():
    block = "".join("  " * i + "-\n" for i in range(150))  # block style: 150 nested lists
    with pytest.raises(DocumentError, match="nest"):
        load_yaml(block, what="x")
    with pytest.raises(DocumentError, match="nest"):
        load_yaml("[" * 3000 + "]" * 3000, what="x")
    with pytest.raises(DocumentError, match="nested"):
        load_json("[" * 3000 + "]" * 3000, what="x")
    with pytest.raises(DocumentError, match="thousands of digits") as info:
        load_yaml("n: " + "9" * 6000, what="x")
    assert "set_int_max_str_digits" not in str(info.value)


def test_parser_messages_are_capped():
    with pytest.raises(DocumentError) as info:
        load_yaml("x: '" + "y" * 50_000, what="geometry file")
    assert len(str(info.value)) < 2 * QUOTE_LIMIT + 100


def test_json_refuses_nan_and_infinity():
    with pytest.raises(DocumentError, match="NaN"):
        load_json('{"a": NaN}', what="geometry file")
    with pytest.raises(DocumentError, match="Infinity"):
        load_json('{"a": -Infinity}', what="geometry file")


def test_brief_never_builds_a_huge_repr():
    nested: list = []
    for _ in range(30):
        nested = [nested] * 10  # 10^30 leaves when printed in full
    assert len(brief(nested)) <= QUOTE_LIMIT
    cyclic: list = [1]
    cyclic.append(cyclic)
    assert len(brief(cyclic)) <= QUOTE_LIMIT


def test_wrong_source_type_is_a_type_error():
    with pytest.raises(TypeError, match="path"):
        load_yaml(12, what="geometry file")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_random_bytes_give_data_or_a_document_error(data):
    try:
        load_yaml(data, what="geometry file")
    except DocumentError as exc:
        assert str(exc).startswith("geometry file <text>")
        assert len(str(exc)) < 2 * QUOTE_LIMIT + 200


_yaml_token = st.sampled_from(["a:", " ", "\n", "- ", "[", "]", "{", "}", ",", "&x ", "*x", "'", '"', "1e999", ".nan",
                               "!!python/object:os.system", "!!binary", "? ", "---", "|", ">", "#", "\t", "%YAML 1.1"])


@settings(max_examples=200, deadline=None)
@given(st.lists(_yaml_token, max_size=40).map("".join))
def test_random_yaml_fragments_give_data_or_a_document_error(text):
    try:
        load_yaml(text, what="phantom file")
    except DocumentError as exc:
        assert "phantom file" in str(exc)
