"""Robustness of the HDF5 dataset reader, property-based.

Every truncated, bit-flipped, random, re-typed, re-shaped or NaN-holding dataset file must
either read back exactly what was written or be refused with a ``DatasetFormatError`` (a
ValueError) whose message names the file; never another exception type, never a crash, never
NaN handed on silently. ``DatasetFile.verify`` must report every damaged sample.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tomoprior as tp
from tomoprior import data
from tomoprior.data.h5 import _REQUIRED

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
N = 3


class Good:
    """A valid file, its bytes and what it holds (a plain class: a short repr in reports)."""

    def __init__(self, path: Path, raw: bytes, volumes: tuple, xrays: tuple):
        self.path, self.raw, self.volumes, self.xrays = path, raw, volumes, xrays

    def __repr__(self) -> str:
        return f"Good({self.path.name})"


def _sample(geom, k, split="train"):
    g = torch.Generator().manual_seed(k)
    vol = torch.rand(geom.grid.shape, generator=g) * 0.05
    return data.Sample(volume=vol, grid=geom.grid, xrays=tp.project(vol, geom).float(), geometry=geom,
                       labels={"variant": "normal", "age_years": 0.5 + k}, provenance={"seed": k}, split=split)


@pytest.fixture(scope="module", params=["gzip", "none"])
def good(request, tmp_path_factory) -> Good:
    geom = tp.BiplanarGeometry.from_parameters(grid=tp.VolumeGrid((8, 8, 8), (24.0, 24.0, 24.0)), binning=96)
    path = tmp_path_factory.mktemp("h5") / f"good_{request.param}.h5"
    samples = [_sample(geom, k, ("train", "val", "test")[k]) for k in range(N)]
    with data.DatasetWriter(path, compression=request.param) as w:
        for s in samples:
            w.append(s)
    return Good(path, path.read_bytes(), tuple(s.volume.numpy() for s in samples),
                tuple(s.xrays.numpy() for s in samples))


def _read_everything(path: Path) -> list:
    """Open, read every sample through every reader API, summarise and verify."""
    with data.DatasetFile(path) as ds:
        samples = [ds.read(i) for i in range(len(ds))]
        ds.summary()
        report = ds.verify(geometry=False)  # read() parsed the geometries
    items = [data.TomopriorDataset(path)[i] for i in range(len(samples))]
    return [samples, report, items]


def _assert_clean(path: Path, good: Good) -> str:
    """The file reads back exactly as written, or is refused naming the file. Returns which."""
    try:
        samples, report, items = _read_everything(path)
    except data.DatasetFormatError as exc:
        assert str(path) in str(exc), str(exc)
        assert "Traceback" not in str(exc)
        return "refused"
    # accepted: then it must be the data that was written, and verify must agree it is fine
    assert report["ok"], report
    assert len(samples) == N
    for i, s in enumerate(samples):
        assert np.array_equal(s.volume.numpy(), good.volumes[i]), f"sample {i}: silently different volume"
        assert np.array_equal(s.xrays.numpy(), good.xrays[i]), f"sample {i}: silently different X-rays"
        assert torch.equal(items[i]["volume"], s.volume)
    return "accepted"


def _scratch(good: Good, name: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="fuzz-", dir=good.path.parent))
    return folder / name


@FAST
@given(cut=st.floats(0.0, 0.999))
def test_truncated_files_are_refused_naming_the_file(good, cut):
    path = _scratch(good, "trunc.h5")
    path.write_bytes(good.raw[: int(cut * len(good.raw))])
    assert _assert_clean(path, good) == "refused"


@FAST
@given(flips=st.lists(st.tuples(st.floats(0.0, 0.9999), st.integers(1, 255)), min_size=1, max_size=8))
def test_flipped_bytes_are_refused_or_harmless(good, flips):
    raw = bytearray(good.raw)
    for where, mask in flips:
        raw[int(where * len(raw))] ^= mask
    path = _scratch(good, "flipped.h5")
    path.write_bytes(bytes(raw))
    _assert_clean(path, good)


@FAST
@given(blob=st.binary(max_size=4096), hdf5_signature=st.booleans())
def test_random_bytes_are_refused(good, blob, hdf5_signature):
    path = _scratch(good, "random.h5")
    path.write_bytes((b"\x89HDF\r\n\x1a\n" if hdf5_signature else b"") + blob)
    assert _assert_clean(path, good) == "refused"


TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=60)
ATTR_VALUES = st.one_of(st.none(), st.integers(-5, 10), st.floats(allow_nan=True), TEXT,
                        st.just("tomoprior.dataset"), st.binary(max_size=8).filter(lambda b: b"\x00" not in b),
                        st.lists(st.integers(0, 3), min_size=2, max_size=3))


@FAST
@given(attr=st.sampled_from(["schema", "schema_version", "n_samples"]), value=ATTR_VALUES)
def test_wrong_schema_version_or_count_is_refused_or_harmless(good, attr, value):
    path = _scratch(good, "attrs.h5")
    path.write_bytes(good.raw)
    with h5py.File(path, "a") as f:
        if value is None:
            del f.attrs[attr]
        else:
            f.attrs[attr] = np.asarray(value) if isinstance(value, list) else value
    _assert_clean(path, good)


REPLACEMENTS = st.one_of(
    st.tuples(st.just("delete"), st.just(None)),
    st.tuples(st.just("shape"), st.lists(st.integers(0, 4), min_size=0, max_size=5)),
    st.tuples(st.just("dtype"), st.sampled_from(["int8", "float64", "bool", "S4", "str"])),
    st.tuples(st.just("rows"), st.integers(0, 5)),
)


@FAST
@given(name=st.sampled_from(list(_REQUIRED)), change=REPLACEMENTS)
def test_wrong_datasets_are_refused_or_harmless(good, name, change):
    """Any required dataset deleted, re-shaped, re-typed or given another number of rows."""
    path = _scratch(good, "schema.h5")
    path.write_bytes(good.raw)
    kind, arg = change
    with h5py.File(path, "a") as f:
        old = f[name][()]
        del f[name]
        if kind == "shape":
            f.create_dataset(name, data=np.zeros(arg, dtype="float32"))
        elif kind == "dtype":
            if arg == "str":
                f.create_dataset(name, data=np.array(["x"] * N, dtype=object), dtype=h5py.string_dtype())
            else:  # the same values in another type
                with np.errstate(invalid="ignore"):  # NaN labels cast to integers
                    f.create_dataset(name, data=old.astype(arg) if old.dtype.kind != "O" else np.zeros(N, arg))
        elif kind == "rows":
            rows = np.resize(old, (arg, *np.shape(old)[1:])) if arg else np.zeros((0, *np.shape(old)[1:]),
                                                                                   old.dtype)
            f.create_dataset(name, data=rows)
    _assert_clean(path, good)


@FAST
@given(sample=st.integers(0, N - 1), array=st.sampled_from(["volume", "xrays"]),
       value=st.sampled_from([np.nan, np.inf, -np.inf]), where=st.floats(0.0, 0.9999))
def test_non_finite_values_are_reported_naming_the_sample(good, sample, array, value, where):
    path = _scratch(good, "nan.h5")
    path.write_bytes(good.raw)
    with h5py.File(path, "a") as f:
        a = f[array][sample]
        a.flat[int(where * a.size)] = value
        f[array][sample] = a
    with data.DatasetFile(path) as ds:
        report = ds.verify()
        assert [(r["sample"], r["array"]) for r in report["nonfinite"]] == [(sample, array)]
        assert not report["ok"] and not report["unreadable"]
        with pytest.raises(data.DatasetFormatError, match=rf"sample {sample}'s"):
            ds.read(sample)
        ds.read((sample + 1) % N)  # the others still read
    ds = data.TomopriorDataset(path)
    with pytest.raises(data.DatasetFormatError, match=str(path)):
        ds[ds.indices.index(sample)]


@FAST
@given(what=st.sampled_from(["geometry", "nominal_geometry", "provenance", "labels/variant"]),
       text=st.one_of(TEXT, st.sampled_from(["{}", "[1, 2]", "null", "schema: x", "- - -", "{'a': [}", "1e999"])),
       sample=st.integers(0, N - 1))
def test_damaged_text_entries_are_refused_naming_the_file(good, what, text, sample):
    path = _scratch(good, "text.h5")
    path.write_bytes(good.raw)
    with h5py.File(path, "a") as f:
        f[what][sample] = text
    _assert_clean(path, good) if what != "labels/variant" else _read_everything(path)


def test_a_damaged_chunk_is_reported_not_read_as_wrong_numbers(good):
    """Chunks carry checksums: corrupting the bytes of one sample's volume is an error on
    read and in verify, whatever the compression."""
    path = _scratch(good, "chunk.h5")
    path.write_bytes(good.raw)
    with h5py.File(path, "r") as f:
        info = f["volume"].id.get_chunk_info(1)
        assert f["volume"].fletcher32
    raw = bytearray(good.raw)
    for k in range(info.byte_offset + 16, info.byte_offset + 48):
        raw[k] ^= 0xA5
    path.write_bytes(bytes(raw))
    with data.DatasetFile(path) as ds:
        report = ds.verify()
        assert [(r["sample"], r["array"]) for r in report["unreadable"]] == [(1, "volume")]
        with pytest.raises(data.DatasetFormatError, match="sample 1's volume"):
            ds.volume(1)
        assert np.array_equal(ds.volume(0), good.volumes[0])


def test_a_row_missing_from_the_chunk_index_is_refused_not_read_as_zeros(good):
    """Regression (found by the bit-flip test above): one flipped bit in a chunk's index key
    moved it to another coordinate, so HDF5 read sample 2's X-rays as the fill value, all zeros,
    with no error. The state is made here through HDF5 itself: a row whose chunk the index does
    not list. (A chunk whose filter mask skips filters: test_a_chunk_stored_without_its_filters_is_refused.)"""
    path = _scratch(good, "index.h5")
    path.write_bytes(good.raw)
    with h5py.File(path, "a") as f:
        old = f["xrays"]
        rows = old[:2]
        kw = {"chunks": old.chunks, "fletcher32": old.fletcher32, "compression": old.compression,
              "maxshape": old.maxshape}
        shape, dtype = old.shape, old.dtype
        del f["xrays"]
        new = f.create_dataset("xrays", shape=shape, dtype=dtype, **kw)
        new[:2] = rows  # row 2 never written: not in the chunk index
    with pytest.raises(data.DatasetFormatError, match=r"sample 2's X-rays: its stored chunk (is missing|is marked)"):
        with data.DatasetFile(path) as ds:
            ds.read(2)
    with data.DatasetFile(path) as ds:
        report = ds.verify(geometry=False)
        assert [(e["sample"], e["array"]) for e in report["unreadable"]] == [(2, "xrays")] and not report["ok"]
        ds.read(1)  # the other samples still read


def test_a_chunk_stored_without_its_filters_is_refused(good):
    """A chunk whose filter mask says its filters (decompression, the Fletcher-32 checksum) were
    not applied is handed on by HDF5 as raw bytes, unchecked: the reader refuses it, in read and
    in verify. Made through HDF5's direct chunk write with a nonzero mask (h5py >= 3 on HDF5 >=
    1.10.5 store it)."""
    path = _scratch(good, "mask.h5")
    path.write_bytes(good.raw)
    with h5py.File(path, "a") as f:
        ds = f["xrays"]
        if ds.chunks is None or ds.chunks[0] != 1 or not hasattr(ds.id, "get_chunk_info_by_coord"):
            pytest.skip("this h5py / HDF5 has no per-chunk index access: the reader cannot check masks either")
        row = np.ascontiguousarray(ds[2])
        ds.id.write_direct_chunk((2,) + (0,) * (ds.ndim - 1), row.tobytes(), filter_mask=0b11)
        assert ds.id.get_chunk_info_by_coord((2,) + (0,) * (ds.ndim - 1)).filter_mask == 0b11
    with data.DatasetFile(path) as ds:
        with pytest.raises(data.DatasetFormatError, match=r"sample 2's X-rays: its stored chunk is marked to skip"):
            ds.read(2)
        report = ds.verify(geometry=False)
        assert [(e["sample"], e["array"]) for e in report["unreadable"]] == [(2, "xrays")] and not report["ok"]
        ds.read(1)
