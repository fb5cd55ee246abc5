"""Robustness of refiner checkpoints and configs, property-based.

Every damaged, truncated, edited or foreign checkpoint must either be refused with a
``CheckpointError`` (a ValueError) naming the file, or load weights identical to those that
were saved; never a traceback of another type, never silently different weights. Every config
field given a value of the wrong type must be refused naming the field and the value, never
stored (``use_bim='banana'`` was stored and taken as True).
"""

from __future__ import annotations

import dataclasses
import io
import math
import struct
import warnings
import zipfile

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tomoprior import refiners
from tomoprior.refiners import (
    BPPriorConfig,
    CheckpointError,
    CheckpointWarning,
    ConfigTypeError,
    Refiner,
    read_checkpoint,
    write_checkpoint,
)

psctnet = pytest.importorskip("psctnet")
PSCTNet, PSCTNetConfig = psctnet.PSCTNet, psctnet.PSCTNetConfig

#: A PSCT-Net small enough to build in a fraction of a second (16^3, two stages).
SMALL = dict(volume_shape=(16, 16, 16), xray_size=16, enc3d_widths=(8, 8), enc2d_widths=(8, 8), dense_layers=1,
             agp_dim=16, agp_heads=2, bim_d_state=4, growth=4)
FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@dataclasses.dataclass(frozen=True, repr=False)
class Saved:
    path: object
    raw: bytes
    state: dict
    config: object
    payload: dict

    def __repr__(self) -> str:
        return f"Saved({self.path})"


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Saved:
    torch.manual_seed(0)
    net = PSCTNet(preset="tiny", **SMALL)
    path = tmp_path_factory.mktemp("ckpt") / "small.pt"
    net.save_checkpoint(path, epoch=1)
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return Saved(path, path.read_bytes(), state, net.config, net.checkpoint_dict(epoch=1))


def _load(path):
    """The model, or the CheckpointError (which must name the file)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CheckpointWarning)
            return Refiner.from_checkpoint(path)
    except CheckpointError as exc:
        assert str(path) in str(exc), str(exc)
        return exc


def _same_weights(model, state: dict) -> bool:
    got = model.state_dict()
    return set(got) == set(state) and all(torch.equal(got[k], state[k]) for k in state)


def _structure_offsets(raw: bytes) -> list[int]:
    """Byte offsets of the zip structure (local headers, central directory, end record)."""
    zf = zipfile.ZipFile(io.BytesIO(raw))
    out = []
    for info in zf.infolist():
        start = info.header_offset
        n, m = struct.unpack("<HH", raw[start + 26:start + 30])
        out += range(start, start + 30 + n + m)
    out += range(zf.start_dir, len(raw))  # central directory and end record
    return sorted(set(out))


# -- byte flips and truncation -------------------------------------------------------------------

@FAST
@given(data=st.data())
def test_random_byte_flips_are_refused_or_harmless(saved, data, tmp_path):
    raw = bytearray(saved.raw)
    anywhere = st.integers(0, len(raw) - 1)
    structure = st.sampled_from(_structure_offsets(saved.raw))
    flips = data.draw(st.lists(st.tuples(st.one_of(anywhere, structure), st.integers(1, 255)), min_size=1,
                               max_size=6), label="flips")
    for pos, mask in flips:
        raw[pos] ^= mask
    path = tmp_path / "flipped.pt"
    path.write_bytes(bytes(raw))
    got = _load(path)
    if not isinstance(got, CheckpointError):  # the flips hit bytes nobody reads: same weights
        assert _same_weights(got, saved.state) and got.config == saved.config


def test_a_damaged_zip64_locator_is_refused_not_raised(saved, tmp_path):
    """Hypothesis's find: a flip in the ZIP64 end locator's disk number made zipfile.is_zipfile
    itself raise BadZipFile ("zipfiles that span multiple disks") past the checkpoint reader."""
    raw = bytearray(saved.raw)
    at = raw.rfind(b"PK\x06\x07")
    assert at > 0  # torch writes ZIP64 end records
    raw[at + 4] ^= 0x01  # the locator's "disk with the ZIP64 end record" field
    path = tmp_path / "locator.pt"
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="damaged"):
        Refiner.from_checkpoint(path)


def test_four_bytes_flipped_in_every_tensor_record_are_refused(saved, tmp_path):
    """The sweep's case (the demo weights loaded and gave 18.9 dB instead of 31.9 dB)."""
    raw = bytearray(saved.raw)
    zf = zipfile.ZipFile(io.BytesIO(saved.raw))
    records = [i for i in zf.infolist() if "/data/" in i.filename and i.file_size >= 4]
    assert len(records) > 10
    for info in records:
        n, m = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
        start = info.header_offset + 30 + n + m
        raw[start:start + 4] = bytes(b ^ 0x5A for b in raw[start:start + 4])
    path = tmp_path / "flipped.pt"
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"CRC|damaged"):
        Refiner.from_checkpoint(path)
    # the SHA-256 catches a changed weight even when the zip records are rewritten consistently
    payload = dict(saved.payload)
    payload["state_dict"] = {k: v.clone() for k, v in saved.payload["state_dict"].items()}
    w = payload["state_dict"]["head.weight"]
    w.view(-1)[0] = w.view(-1)[0] + 1.0
    torch.save(payload, tmp_path / "edited.pt")  # fresh CRCs, stale SHA-256
    with pytest.raises(CheckpointError, match="weights do not match their SHA-256"):
        Refiner.from_checkpoint(tmp_path / "edited.pt")


@FAST
@given(cut=st.integers(0, 10**9))
def test_truncated_files_are_refused(saved, cut, tmp_path):
    n = cut % len(saved.raw)
    path = tmp_path / "cut.pt"
    path.write_bytes(saved.raw[:n])
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    assert str(path) in str(info.value)
    if n == 0:
        assert "empty (0 bytes)" in str(info.value)


# -- edited checkpoint dicts --------------------------------------------------------------------

@FAST
@given(data=st.data())
def test_missing_and_unexpected_keys_are_listed(saved, data, tmp_path):
    keys = sorted(saved.state)
    drop = data.draw(st.sets(st.sampled_from(keys), max_size=3), label="drop")
    extra = data.draw(st.sets(st.from_regex(r"[a-z]{1,6}\.(weight|bias)", fullmatch=True), max_size=2),
                      label="extra")
    extra -= set(keys)
    payload = dict(saved.payload)
    sd = {k: v for k, v in saved.payload["state_dict"].items() if k not in drop}
    sd.update({k: torch.zeros(3) for k in extra})
    payload["state_dict"] = sd
    path = tmp_path / "edited.pt"
    write_checkpoint(payload, path)  # a deliberate edit: checksums recomputed
    if not drop and not extra:
        assert _same_weights(Refiner.from_checkpoint(path), saved.state)
        return
    with pytest.raises(CheckpointError) as info:
        Refiner.from_checkpoint(path)
    msg = str(info.value)
    assert str(path) in msg
    for k in sorted(drop)[:5]:
        assert repr(k) in msg
    for k in sorted(extra)[:5]:
        assert repr(k) in msg
    if "output_scale" not in drop:  # strict=False loads what fits (output_scale is the config's)
        model = Refiner.from_checkpoint(path, strict=False)
        own = model.state_dict()
        assert all(torch.equal(own[k], saved.state[k]) for k in saved.state if k not in drop)


def test_shape_mismatch_and_non_tensor_values_are_named(saved, tmp_path):
    payload = dict(saved.payload)
    payload["state_dict"] = dict(saved.payload["state_dict"], **{"head.weight": torch.zeros(2, 2)})
    write_checkpoint(payload, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match=r"head\.weight: file \(2, 2\) vs model"):
        Refiner.from_checkpoint(tmp_path / "shape.pt")
    payload["state_dict"] = dict(saved.payload["state_dict"], **{"head.bias": "0.1"})
    write_checkpoint(payload, tmp_path / "type.pt")
    with pytest.raises(CheckpointError, match=r"\['head\.bias'\] are not tensors"):
        Refiner.from_checkpoint(tmp_path / "type.pt")


def test_non_finite_weights_are_named_with_the_file(saved, tmp_path):
    payload = dict(saved.payload)
    bad = saved.payload["state_dict"]["head.weight"].clone()
    bad.view(-1)[0] = float("nan")
    payload["state_dict"] = dict(saved.payload["state_dict"], **{"head.weight": bad})
    path = tmp_path / "nan.pt"
    write_checkpoint(payload, path)  # what an unchecked writer could produce
    with pytest.raises(CheckpointError, match=r"nan\.pt: the weights are not finite.*'head\.weight'"):
        Refiner.from_checkpoint(path)
    net = Refiner.from_checkpoint(saved.path)
    with torch.no_grad():
        net.head.weight.fill_(float("inf"))
    before = saved.path.read_bytes()
    with pytest.raises(CheckpointError, match="not finite"):
        net.save_checkpoint(saved.path)  # refused, and the good file is untouched
    assert saved.path.read_bytes() == before


@settings(max_examples=40, deadline=None)
@given(version=st.one_of(st.integers(-3, 10), st.text(max_size=4), st.floats(), st.booleans(), st.none()))
def test_format_versions(saved, version, tmp_path_factory):
    payload = dict(saved.payload, format_version=version)
    path = tmp_path_factory.mktemp("v") / "v.pt"
    torch.save(payload, path)  # not sealed: the version as written
    if type(version) is int and version == 2:
        assert _same_weights(Refiner.from_checkpoint(path), saved.state)
    elif type(version) is int and version == 1:  # format 1 has no checksums: a warning, CRC-checked
        with pytest.warns(CheckpointWarning, match="upgrade_checkpoint"):
            model = Refiner.from_checkpoint(path)
        assert _same_weights(model, saved.state)
    elif type(version) is int and version > 2:
        with pytest.raises(CheckpointError, match="newer than this tomoprior"):
            read_checkpoint(path)
    else:
        with pytest.raises(CheckpointError, match="invalid checkpoint format_version"):
            read_checkpoint(path)


json_like = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5)),
                         lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=4), c,
                                                                                       max_size=3)), max_leaves=8)


@settings(max_examples=30, deadline=None)
@given(obj=json_like)
def test_foreign_torch_files_are_not_checkpoints(obj, tmp_path_factory):
    path = tmp_path_factory.mktemp("f") / "foreign.pt"
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match="not a tomoprior refiner checkpoint"):
        read_checkpoint(path)


def test_format_1_files_upgrade_to_identical_weights(saved, tmp_path):
    old = dict(saved.payload, format_version=1)
    del old["weights_sha256"], old["config_sha256"]
    torch.save(old, tmp_path / "old.pt")
    new = refiners.upgrade_checkpoint(tmp_path / "old.pt", tmp_path / "new.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointWarning)  # the upgraded file verifies: no warning
        model = Refiner.from_checkpoint(new)
    assert _same_weights(model, saved.state) and model.checkpoint_extra == {"epoch": 1}
    assert read_checkpoint(new)["format_version"] == refiners.CHECKPOINT_VERSION


# -- config field types ---------------------------------------------------------------------------

def _kind(cls, name: str) -> str:
    """The type a field must hold, from its default (written out here, independent of the
    annotations the library checks)."""
    special = {"dec_widths": "ints|None", "view_widths": "ints|None", "bpc_stages": "ints|None",
               "bpc_width": "int|None", "preset_name": "str|None", "clamp_min": "float|None",
               "stage_dense_layers": "ints|None", "agp_attn_dropout": "float|None"}
    if name in special:
        return special[name]
    default = {f.name: f.default for f in dataclasses.fields(cls)}[name]
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, float):
        return "float"
    if isinstance(default, str):
        return "str"
    if isinstance(default, tuple):
        return {"betas": "floats2", "volume_shape": "ints3"}.get(name, "ints")
    raise AssertionError(name)


def _fits(kind: str, value) -> bool:
    def num(v, integer):
        return not isinstance(v, bool) and isinstance(v, int if integer else (int, float))
    base, _, opt = kind.partition("|")
    if opt and value is None:
        return True
    if base == "bool":
        return isinstance(value, bool)
    if base in ("int", "float"):
        return num(value, base == "int")
    if base == "str":
        return isinstance(value, str)
    if base in ("ints", "ints3"):
        return isinstance(value, (tuple, list)) and all(num(v, True) for v in value) and (
            base == "ints" or len(value) == 3)
    if base == "floats2":
        return isinstance(value, (tuple, list)) and len(value) == 2 and all(num(v, False) for v in value)
    raise AssertionError(kind)


values = st.one_of(st.booleans(), st.integers(-3, 70), st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from(["banana", "", "true", "group", "clamp", "auto", "drr"]), st.none(),
                   st.lists(st.integers(0, 70), max_size=4), st.tuples(st.floats(0, 1), st.floats(0, 1)),
                   st.lists(st.text(max_size=2), min_size=1, max_size=2))


@settings(max_examples=150, deadline=None)
@given(field=st.sampled_from([f.name for f in dataclasses.fields(PSCTNetConfig)]), value=values)
def test_psctnet_config_fields_keep_their_types(field, value):
    kind = _kind(PSCTNetConfig, field)
    try:
        cfg = PSCTNetConfig.preset("tiny", **{field: value})
    except ConfigTypeError as exc:
        assert not _fits(kind, value), f"{field}={value!r} has the right type but was refused: {exc}"
        # a list given for a tuple field is stored (and shown) as a tuple
        shown = repr(tuple(value)) if isinstance(value, list) and kind.startswith(("ints", "floats")) else repr(value)
        assert f"PSCTNetConfig.{field} must be" in str(exc) and shown in str(exc)
        return
    except ValueError as exc:  # right type, wrong value: still a clear message about the config
        assert _fits(kind, value), f"{field}={value!r} is a wrong type but not a ConfigTypeError: {exc}"
        assert "PSCTNetConfig." in str(exc)
        return
    assert _fits(kind, value), f"{field}={value!r} was accepted"
    stored = getattr(cfg, field)
    assert stored == (tuple(value) if isinstance(value, list) else value) or (
        isinstance(value, float) and math.isnan(value) and math.isnan(stored))


@settings(max_examples=60, deadline=None)
@given(field=st.sampled_from(["normalization", "gain", "offset", "clamp_min"]), value=values)
def test_bp_prior_config_fields_keep_their_types(field, value):
    kind = _kind(BPPriorConfig, field)
    try:
        model = refiners.load("bp-prior", **{field: value})  # what --set / NAME:key=value do
    except ConfigTypeError as exc:
        assert not _fits(kind, value)
        assert f"BPPriorConfig.{field} must be" in str(exc) and repr(value) in str(exc)
        return
    except ValueError as exc:
        assert _fits(kind, value) and f"BPPriorConfig.{field}" in str(exc)
        return
    assert _fits(kind, value) and getattr(model.config, field) == value


def test_banana_is_not_true():
    with pytest.raises(ConfigTypeError, match=r"PSCTNetConfig\.use_bim must be a bool \(true or false\), "
                                              r"got 'banana' \(str\)"):
        refiners.load("psctnet", use_bim="banana")
    with pytest.raises(ConfigTypeError, match="use_bim"):
        PSCTNetConfig(use_bim="banana")
    cfg = PSCTNetConfig.preset("tiny")
    cfg.use_bim = "banana"  # set after construction: the refiner checks again
    with pytest.raises(ConfigTypeError, match="use_bim"):
        PSCTNet(cfg)


def test_checkpoint_with_a_wrongly_typed_config_names_the_file_and_field(saved, tmp_path):
    payload = dict(saved.payload)
    payload["config"] = dict(saved.payload["config"], use_bim="banana")
    write_checkpoint(payload, tmp_path / "typed.pt")
    with pytest.raises(CheckpointError, match=r"typed\.pt: its config does not build.*use_bim must be a bool"):
        Refiner.from_checkpoint(tmp_path / "typed.pt")
