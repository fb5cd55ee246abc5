"""The :class:`Refiner` contract: a ``torch.nn.Module`` that turns X-rays, their exact
geometry and the geometry prior into a volume, with one config dataclass and checkpoints."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import numbers
import types
import typing
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from .._atomic import atomic_path
from .._version import __version__
from ..geometry.geometry import Geometry

#: Written into every checkpoint; bump when the layout of the checkpoint dict changes.
CHECKPOINT_FORMAT = "tomoprior-refiner"
#: 2: adds ``weights_sha256`` (the state dict) and ``config_sha256`` (name + config), verified
#: on every read. 1: no checksums (read with a :class:`CheckpointWarning` when the file's zip
#: records pass their CRC-32 check, see :func:`read_checkpoint`).
CHECKPOINT_VERSION = 2


class CheckpointError(ValueError):
    """A file that is not a usable refiner checkpoint: missing, truncated, damaged (checksum
    mismatch), of a newer format, or not matching the refiner it names. The message names the
    file, what is wrong and the fix."""


class CheckpointWarning(UserWarning):
    """A checkpoint was loaded but could not be fully verified (format 1, no checksums)."""


class ConfigTypeError(TypeError, ValueError):
    """A refiner config field holds a value of the wrong type (e.g. ``use_bim='banana'``).
    Both a ``TypeError`` and a ``ValueError``, so callers catching either see it."""


@dataclasses.dataclass
class RefinerConfig:
    """Base class of refiner configs (hyper-parameters in one dataclass). Empty on purpose:
    subclass it (``@dataclass class MyConfig(RefinerConfig): width: int = 32``)."""


class Refiner(torch.nn.Module):
    """Base class of every refiner (built-in or plugin).

    Subclasses set two class attributes and implement :meth:`forward`:

    ``name``
        The registry name, e.g. ``"psctnet"`` (lower case, digits, ``-`` and ``_``).
    ``config_class``
        A dataclass type holding every hyper-parameter; the instance lives at ``self.config``.

    Parameters
    ----------
    config : config_class instance, optional
        The full configuration. If omitted it is built from ``**overrides``.
    **overrides
        Config fields, e.g. ``Refiner(width=16)``; with ``config`` given they replace its
        fields (``dataclasses.replace``).

    Raises
    ------
    TypeError
        ``config`` is not an instance of ``config_class``.
    ValueError
        An override names no field of ``config_class`` (the message lists the fields).
    ConfigTypeError (a TypeError and a ValueError)
        A field's value does not have its annotated type (:func:`check_config_types`).

    Notes
    -----
    Shapes of :meth:`forward` (B = batch, V = views):

    - ``xrays``: ``(B, V, H, W)`` or ``(B, V, C, H, W)``, line integrals (attenuation x mm)
      or whatever image the refiner was trained on, one detector image per view.
    - ``geometry``: one :class:`~tomoprior.Geometry` shared by the batch, or a list of B.
    - ``prior``: ``(B, 1, nz, ny, nx)`` from :func:`~tomoprior.refiners.build_prior` on
      ``geometry.grid``.
    - returns ``(B, 1, nz, ny, nx)`` on ``geometry.grid``.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type] = RefinerConfig

    def __init__(self, config: Any = None, **overrides):
        super().__init__()
        cls = type(self)
        if not (isinstance(cls.config_class, type) and dataclasses.is_dataclass(cls.config_class)):
            raise TypeError(f"{cls.__name__}.config_class must be a dataclass type, got {cls.config_class!r}")
        fields = [f.name for f in dataclasses.fields(cls.config_class)]
        unknown = sorted(set(overrides) - set(fields))
        if unknown:
            raise ValueError(
                f"{cls.__name__} ({cls.name!r}) has no config field(s) {unknown}; "
                f"{cls.config_class.__name__} fields are {fields}"
            )
        if config is None:
            config = cls.config_class(**overrides)
        elif isinstance(config, dict):
            config = _config_from_dict(cls, config)
            config = dataclasses.replace(config, **overrides) if overrides else config
        elif isinstance(config, cls.config_class):
            config = dataclasses.replace(config, **overrides) if overrides else config
        else:
            raise TypeError(
                f"config must be a {cls.config_class.__name__} (or a dict of its fields), got {type(config).__name__}"
            )
        check_config_types(config)
        self.config = config

    # -- the contract ---------------------------------------------------------------------
    def forward(self, xrays: torch.Tensor, geometry, prior: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError(f"{type(self).__name__} must implement forward(xrays, geometry, prior)")

    def reconstruct(self, xrays: torch.Tensor, geometry, *, prior: torch.Tensor | None = None) -> torch.Tensor:
        """Build the geometry prior (unless given) and run :meth:`forward`.

        ``xrays`` may also be unbatched ``(V, H, W)``; the result is then ``(1, nz, ny, nx)``.
        """
        from .prior import build_prior

        unbatched = isinstance(xrays, torch.Tensor) and xrays.ndim == 3
        x = xrays[None] if unbatched else xrays
        if prior is None:
            prior = build_prior(x, geometry)
        out = self(x, geometry, prior)
        return out[0] if unbatched else out

    @staticmethod
    def check_inputs(xrays, geometry, prior) -> tuple[int, int]:
        """Validate the shapes of :meth:`forward` inputs; return ``(B, V)``.

        Raises ``ValueError`` naming the argument and the expected shape.
        """
        if not isinstance(xrays, torch.Tensor) or xrays.ndim not in (4, 5):
            got = tuple(xrays.shape) if isinstance(xrays, torch.Tensor) else type(xrays).__name__
            raise ValueError(f"xrays must be a tensor (B, V, H, W) or (B, V, C, H, W), got {got}")
        b, v = xrays.shape[:2]
        if b == 0:
            raise ValueError(f"xrays have an empty batch (B=0, shape {tuple(xrays.shape)}): pass at least one sample")
        geoms = _geometry_list(geometry, b)
        for i, g in enumerate(geoms):
            if g.num_views != v:
                raise ValueError(f"geometry[{i}] has {g.num_views} views but xrays have V={v}")
        grid = geoms[0].grid
        want = (b, 1, *grid.shape)
        if not isinstance(prior, torch.Tensor) or tuple(prior.shape) != want:
            got = tuple(prior.shape) if isinstance(prior, torch.Tensor) else type(prior).__name__
            raise ValueError(f"prior must have shape {want} (B, 1, nz, ny, nx) on geometry.grid, got {got}")
        return b, v

    # -- checkpoints ----------------------------------------------------------------------
    def checkpoint_dict(self, **extra) -> dict:
        """The dict :meth:`save_checkpoint` writes: format and version, name, class, config,
        state_dict, their SHA-256 checksums (``weights_sha256``, ``config_sha256``), the
        tomoprior version and ``extra``."""
        payload = {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "name": type(self).name,
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "config": dataclasses.asdict(self.config),
            "state_dict": self.state_dict(),
            "tomoprior_version": __version__,
            "extra": dict(extra),
        }
        return seal_checkpoint(payload)

    def save_checkpoint(self, path, **extra) -> Path:
        """Write ``name``, ``config``, ``state_dict`` (with their SHA-256 checksums), the
        tomoprior version and ``extra`` (e.g. ``epoch=3, optimizer=opt.state_dict()``) to
        ``path`` atomically (torch.save). ``extra`` must hold tensors, numbers, strings and
        containers of them (checkpoints are read back with ``weights_only=True``). Returns the
        path.

        Raises
        ------
        ValueError
            Non-finite (NaN/inf) parameters: such a checkpoint could never be used, so it is
            refused instead of overwriting a good one.
        OSError
            The folder is not writable or the disk is full (any previous file is untouched).
        """
        check_finite_weights(self, f"{type(self).__name__} ({type(self).name!r})")
        return write_checkpoint(self.checkpoint_dict(**extra), path)

    @classmethod
    def demo_checkpoint(cls) -> Path | None:
        """Path of small pretrained weights shipped with the refiner's package for demos
        (``tomoprior reconstruct --demo``, ``--checkpoint demo``), or None (the default:
        no shipped weights). A plugin overrides this to point at its package data."""
        return None

    @classmethod
    def from_checkpoint(cls, path, map_location="cpu", *, strict: bool = True) -> Refiner:
        """Rebuild a refiner from :meth:`save_checkpoint` output.

        On the base class the refiner type is looked up by the stored ``name`` in the
        registry (built-ins, :func:`register` ed and installed plugins); on a subclass the
        stored name must match ``cls.name``. The checkpoint's ``extra`` dict is attached as
        ``refiner.checkpoint_extra``.

        Raises
        ------
        CheckpointError (a ValueError)
            Everything :func:`read_checkpoint` refuses, a config that does not build the
            refiner, weights that do not fit it (missing or unexpected keys, other shapes,
            listed by name; with ``strict=False`` only shapes must agree) and non-finite
            weights.
        """
        path = Path(path)
        ckpt = read_checkpoint(path, map_location=map_location)
        name = ckpt["name"]
        if cls is Refiner:
            from .registry import get_class

            try:
                target = get_class(name)
            except ImportError as exc:  # RefinerPluginError: the plugin of this checkpoint is broken
                raise CheckpointError(f"{path}: {exc}") from exc
        else:
            if name != cls.name:
                raise CheckpointError(f"{path} holds a {name!r} refiner, not {cls.name!r}; use Refiner.from_checkpoint")
            target = cls
        try:
            model = target(_config_from_dict(target, ckpt["config"], where=str(path)))
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: its config does not build a {name!r} refiner: {exc}") from exc
        load_weights(model, ckpt["state_dict"], where=str(path), strict=strict)
        model.checkpoint_extra = ckpt.get("extra", {})
        return model

    def extra_repr(self) -> str:
        return f"name={type(self).name!r}, config={self.config!r}"


# -- checksums -------------------------------------------------------------------------------

def weights_sha256(state_dict: dict) -> str:
    """SHA-256 (hex) of a state dict in a canonical form: for each key in sorted order, the
    key, the dtype and shape, then the tensor's bytes in C order (little-endian as stored by
    ``torch.save`` on every common platform). The memory layout (e.g. channels-last) and the
    device do not change it; any changed value, dtype, shape or key does."""
    h = hashlib.sha256()
    for key in sorted(state_dict, key=str):
        value = state_dict[key]
        h.update(str(key).encode() + b"\0")
        if isinstance(value, torch.Tensor):
            t = value.detach()
            if t.layout != torch.strided:
                t = t.to_dense()
            if t.is_quantized:
                t = t.dequantize()
            t = t.to("cpu").contiguous()
            h.update(f"tensor|{t.dtype}|{tuple(t.shape)}".encode() + b"\0")
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
        else:  # extra state of a module: numbers, strings, containers
            h.update(f"{type(value).__name__}|{_canonical_json(value)}".encode() + b"\0")
    return h.hexdigest()


def config_sha256(name: str, config: dict) -> str:
    """SHA-256 (hex) of the refiner name and its config dict as canonical JSON (sorted keys,
    tuples as lists)."""
    return hashlib.sha256(_canonical_json({"name": name, "config": config}).encode()).hexdigest()


def _canonical_json(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=repr, allow_nan=True)


def seal_checkpoint(payload: dict) -> dict:
    """Set ``format_version`` to the current version and (re)compute ``weights_sha256`` and
    ``config_sha256`` of a checkpoint dict (in place; returns it). Use it after editing a
    checkpoint dict on purpose; :func:`write_checkpoint` calls it."""
    if not isinstance(payload, dict) or not isinstance(payload.get("state_dict"), dict) \
            or not isinstance(payload.get("config"), dict):
        raise ValueError("a checkpoint dict needs 'name', a 'config' dict and a 'state_dict' dict")
    payload["format"] = CHECKPOINT_FORMAT
    payload["format_version"] = CHECKPOINT_VERSION
    payload["weights_sha256"] = weights_sha256(payload["state_dict"])
    payload["config_sha256"] = config_sha256(payload.get("name"), payload["config"])
    return payload


def write_checkpoint(payload: dict, path) -> Path:
    """Seal (:func:`seal_checkpoint`) and write a checkpoint dict to ``path`` atomically: a
    reader never sees half a file; if writing fails (full disk, killed process) any previous
    file at ``path`` is untouched. Returns the path."""
    path = Path(path)
    seal_checkpoint(payload)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def upgrade_checkpoint(src, dst) -> Path:
    """Rewrite a format-1 checkpoint (no checksums) as the current format, keeping its name,
    config, weights and ``extra``. ``src`` must pass :func:`read_checkpoint` (for format 1:
    its zip records' CRC-32 check). ``dst`` may equal ``src`` (written atomically)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CheckpointWarning)
        ckpt = read_checkpoint(src)
    return write_checkpoint(dict(ckpt), dst)


def verify_zip_records(path) -> bool:
    """Check the CRC-32 of every record of a zip-format ``torch.save`` file (``torch.load``
    itself does not). Returns False for a file that is not a zip archive (the legacy torch
    format: nothing to check), True when every record verifies.

    Raises
    ------
    CheckpointError
        A record whose bytes changed after writing, or a truncated/damaged archive.
    """
    path = Path(path)
    try:
        is_zip = zipfile.is_zipfile(path)
    except zipfile.BadZipFile as exc:  # its end records themselves damaged (e.g. "span multiple disks")
        raise CheckpointError(f"{path} is damaged (its zip end records do not read: {exc}); copy it again or use "
                              "another checkpoint") from None
    if not is_zip:
        with open(path, "rb") as fh:
            if fh.read(4) == b"PK\x03\x04":  # a zip archive without its directory: cut short
                raise CheckpointError(f"{path} is truncated (a zip archive whose end is missing: an interrupted "
                                      "copy, download or write); copy it again or use another checkpoint")
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                with zf.open(info) as fh:
                    crc = 0
                    while block := fh.read(1 << 20):
                        crc = zlib.crc32(block, crc)
    except zipfile.BadZipFile as exc:
        raise CheckpointError(
            f"{path} is damaged: {exc} (bytes changed after it was written: a bad copy, download or disk); "
            "copy or download it again"
        ) from exc
    except Exception as exc:  # EOFError, OSError, zlib.error, UnicodeDecodeError of a damaged name, ...
        raise CheckpointError(f"{path} is truncated or damaged ({type(exc).__name__}: {exc}); copy it again") from exc
    return True


# -- reading ---------------------------------------------------------------------------------

def read_checkpoint(path, map_location="cpu") -> dict:
    """Load and verify a refiner checkpoint dict (see :meth:`Refiner.save_checkpoint`).

    Verification: the zip records' CRC-32 (any byte changed on disk or in transit), then for
    format 2 the SHA-256 of the weights and of the name + config against those stored in
    the file. Format-1 files (written before the checksums) are read with a
    :class:`CheckpointWarning` when their CRC-32 check passes; rewrite them with
    :func:`upgrade_checkpoint`.

    Raises
    ------
    CheckpointError (a ValueError)
        Missing, empty, truncated or damaged file, not a torch file, not a tomoprior refiner
        checkpoint, a newer format version, missing entries, a checksum mismatch.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist (check the path; runs of `tomoprior train` "
                              "write RUN/best.pt and RUN/last.pt)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file (give the .pt file, e.g. RUN/best.pt)")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read: {exc}") from exc
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): an interrupted copy or write; copy it again "
                              "or use another checkpoint")
    is_zip = verify_zip_records(path)
    try:
        # weights_only: a checkpoint is data (tensors, numbers, strings, containers), never code
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which
        if not is_zip:  # torch.save has written zip archives since torch 1.6; refiner checkpoints always are
            with open(path, "rb") as fh:
                head = fh.read(16)
            raise CheckpointError(
                f"{path} is not a readable torch checkpoint: torch.save writes a zip archive and this file is none "
                f"(it begins {head!r}); give the .pt file a training run wrote (RUN/best.pt or RUN/last.pt)"
            ) from exc
        # torch's own text may advise weights_only=False, i.e. running code from the file: not ours to suggest
        detail = (str(exc).splitlines()[0] if str(exc) else "").split(" Re-running `torch.load`")[0]
        raise CheckpointError(
            f"{path} is not a readable torch checkpoint (loaded with weights_only=True, which refuses code): "
            f"{type(exc).__name__}: {detail}; it may be damaged or a checkpoint of another program"
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a tomoprior refiner checkpoint (no format={CHECKPOINT_FORMAT!r} entry); "
                              "checkpoints are written by Refiner.save_checkpoint and `tomoprior train`")
    version = ckpt.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path} has an invalid checkpoint format_version {version!r} (expected an integer "
                              f"1..{CHECKPOINT_VERSION}); the file was not written by tomoprior or was edited")
    if version > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version}, newer than this tomoprior "
            f"({__version__}) reads ({CHECKPOINT_VERSION}); upgrade tomoprior"
        )
    for key, kind in (("name", str), ("config", dict), ("state_dict", dict)):
        if key not in ckpt:
            raise CheckpointError(f"{path} is missing the {key!r} entry; it is not a complete refiner checkpoint")
        if not isinstance(ckpt[key], kind):
            raise CheckpointError(f"{path}: the {key!r} entry must be a {kind.__name__}, got "
                                  f"{type(ckpt[key]).__name__}; the file was not written by tomoprior or was edited")
    if "extra" in ckpt and not isinstance(ckpt["extra"], dict):
        raise CheckpointError(f"{path}: the 'extra' entry must be a dict, got {type(ckpt['extra']).__name__}")
    if version >= 2:
        _verify_checksums(ckpt, path)
    else:
        how = ("its zip records passed their CRC-32 check" if is_zip else
               "it is in the legacy (non-zip) torch format, so its bytes could not be verified at all")
        warnings.warn(
            f"{path} is a format-1 refiner checkpoint without weight checksums; {how}. Rewrite it with "
            f"tomoprior.refiners.upgrade_checkpoint({str(path)!r}, NEW_PATH) to add them",
            CheckpointWarning, stacklevel=2,
        )
    return ckpt


def _verify_checksums(ckpt: dict, path: Path) -> None:
    for key in ("weights_sha256", "config_sha256"):
        if not isinstance(ckpt.get(key), str):
            raise CheckpointError(f"{path} (format {ckpt['format_version']}) has no {key!r} checksum; the file was "
                                  "edited or not written by tomoprior: re-save it with Refiner.save_checkpoint")
    if weights_sha256(ckpt["state_dict"]) != ckpt["weights_sha256"]:
        raise CheckpointError(
            f"{path}: the weights do not match their SHA-256 checksum (the file was damaged or edited after it was "
            "written); copy it again from its source, or use another checkpoint (e.g. RUN/last.pt or an earlier run)"
        )
    if config_sha256(ckpt["name"], ckpt["config"]) != ckpt["config_sha256"]:
        raise CheckpointError(
            f"{path}: the refiner name and config do not match their SHA-256 checksum (the file was damaged or "
            "edited after it was written); copy it again, or, if the edit was deliberate, rewrite it with "
            "tomoprior.refiners.write_checkpoint(ckpt, path)"
        )


def load_weights(model: torch.nn.Module, state_dict: dict, *, where: str = "state_dict", strict: bool = True) -> None:
    """``model.load_state_dict(state_dict)`` with errors that list what does not fit.

    Raises
    ------
    CheckpointError (a ValueError)
        A value that is not a tensor, tensors whose shape differs from the model's, and (with
        ``strict``) missing or unexpected keys, each listed by name; non-finite weights.
    """
    own = model.state_dict()
    bad_type = sorted(k for k, v in state_dict.items()
                      if not isinstance(v, torch.Tensor) and not str(k).endswith("_extra_state"))
    if bad_type:
        raise CheckpointError(f"{where}: state_dict entries {_few(bad_type)} are not tensors; the file was not "
                              "written by Refiner.save_checkpoint or was edited")
    shapes = sorted(f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state_dict.items()
                    if k in own and isinstance(v, torch.Tensor) and isinstance(own[k], torch.Tensor)
                    and tuple(v.shape) != tuple(own[k].shape))
    if shapes:
        raise CheckpointError(f"{where}: {len(shapes)} weight tensor(s) have another shape than the "
                              f"{type(model).__name__} its config builds ({_few(shapes)}); the weights belong to "
                              "another architecture or version of the refiner")
    try:
        result = model.load_state_dict(state_dict, strict=False)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{where}: the weights do not load into {type(model).__name__}: "
                              f"{str(exc).strip()}") from exc
    if strict and (result.missing_keys or result.unexpected_keys):
        parts = []
        if result.missing_keys:
            parts.append(f"missing {len(result.missing_keys)} key(s) {_few(result.missing_keys)}")
        if result.unexpected_keys:
            parts.append(f"{len(result.unexpected_keys)} unexpected key(s) {_few(result.unexpected_keys)}")
        raise CheckpointError(
            f"{where}: the weights do not fit the {type(model).__name__} its config builds: {'; '.join(parts)}. "
            "The file is incomplete or belongs to another version of the refiner (Refiner.from_checkpoint(..., "
            "strict=False) loads what fits)"
        )
    check_finite_weights(model, where)


def check_finite_weights(model: torch.nn.Module, where: str) -> None:
    """Raise ``CheckpointError`` (a ValueError) naming ``where`` (a file or refiner) and the
    first tensors when a parameter holds NaN or infinity, or a floating buffer holds NaN
    (buffers may hold infinities on purpose, e.g. attention masks)."""
    bad = [n for n, p in model.named_parameters() if p.is_floating_point() and not bool(torch.isfinite(p).all())]
    bad += [n for n, b in model.named_buffers() if b.is_floating_point() and bool(torch.isnan(b).any())]
    if bad:
        raise CheckpointError(
            f"{where}: the weights are not finite: {len(bad)} tensor(s) hold NaN or infinity ({_few(bad)}); the "
            "training diverged or the file is damaged. Use an earlier checkpoint (e.g. RUN/best.pt) or retrain "
            "with a lower --lr"
        )


def _few(items, n: int = 5) -> str:
    items = list(items)
    shown = ", ".join(repr(i) if not isinstance(i, str) or ":" not in i else i for i in items[:n])
    return f"[{shown}{', ...' if len(items) > n else ''}]"


# -- config types ----------------------------------------------------------------------------

def check_config_types(config) -> None:
    """Check every field of a refiner config dataclass against its annotation.

    Understood annotations: ``bool``, ``int`` (not bool), ``float`` (int or float, not bool),
    ``str``, ``None``, unions (``X | None``), ``tuple[X, ...]``, ``tuple[X, Y]`` (a list is
    accepted for a tuple: JSON/YAML round trips), ``list[X]``, ``dict``, ``Literal[...]`` and
    plain classes. Fields with other or unresolvable annotations are not checked.

    Raises
    ------
    ConfigTypeError (a TypeError and a ValueError)
        Naming the field, the value and the expected type, e.g.
        ``PSCTNetConfig.use_bim must be a bool (true or false), got 'banana' (str)``.
    """
    cls = type(config)
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"a config dataclass instance is needed, got {cls.__name__}")
    hints = _type_hints(cls)
    for f in dataclasses.fields(config):
        hint = hints.get(f.name)
        if hint is None:
            continue
        value = getattr(config, f.name)
        ok = _matches(value, hint)
        if ok is False:
            raise ConfigTypeError(f"{cls.__name__}.{f.name} must be {_describe_type(hint)}, got {value!r} "
                                  f"({type(value).__name__})")


def _type_hints(cls) -> dict:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # a local name in a string annotation: resolve field by field
        import sys

        ns = vars(sys.modules.get(cls.__module__, types.ModuleType("x")))
        out = {}
        for f in dataclasses.fields(cls):
            ann = f.type
            if isinstance(ann, str):
                try:
                    ann = eval(ann, dict(ns), {})  # the class's own annotation text, as get_type_hints does
                except Exception:
                    continue
            out[f.name] = ann
        return out


def _matches(value, hint) -> bool | None:
    """True/False whether ``value`` fits ``hint``; None when the hint is not understood."""
    if hint is Any or hint is typing.Any:
        return True
    if hint is type(None) or hint is None:
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        results = [_matches(value, a) for a in args]
        if any(r is True for r in results):
            return True
        return None if any(r is None for r in results) else False
    if origin is typing.Literal:
        return value in args
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            results = [_matches(v, args[0]) for v in value]
        elif args:
            if len(value) != len(args):
                return False
            results = [_matches(v, a) for v, a in zip(value, args)]
        else:
            return True
        return False if any(r is False for r in results) else True
    if origin in (list, Sequence):
        if not isinstance(value, (list, tuple)):
            return False
        results = [_matches(v, args[0]) for v in value] if args else []
        return False if any(r is False for r in results) else True
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return None


def _describe_type(hint) -> str:
    if hint is type(None) or hint is None:
        return "None"
    simple = {bool: "a bool (true or false)", int: "an integer", float: "a number", str: "a string"}
    if hint in simple:
        return simple[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        return " or ".join(_describe_type(a) for a in args)
    if origin is typing.Literal:
        return f"one of {list(args)}"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a tuple/list of {_plural(args[0])}"
        if args:
            return f"a tuple/list of {len(args)} values ({', '.join(_describe_type(a) for a in args)})"
        return "a tuple"
    if origin in (list, Sequence):
        return f"a list of {_plural(args[0])}" if args else "a list"
    if origin is dict or hint is dict:
        return "a dict"
    return f"a {getattr(hint, '__name__', str(hint))}"


def _plural(hint) -> str:
    return {bool: "bools", int: "integers", float: "numbers", str: "strings"}.get(hint, _describe_type(hint))


def _config_from_dict(cls, d: dict, where: str = "config"):
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    unknown = sorted(set(d) - fields)
    if unknown:
        raise ValueError(
            f"{where}: {cls.config_class.__name__} has no field(s) {unknown} (fields: {sorted(fields)}); "
            "was it written by another version of the refiner?"
        )
    from_dict = getattr(cls.config_class, "from_dict", None)
    # a config's own from_dict may know older layouts (e.g. PSCTNetConfig before target_scale)
    config = from_dict(dict(d)) if callable(from_dict) else cls.config_class(**d)
    check_config_types(config)
    return config


def _geometry_list(geometry, batch: int) -> list[Geometry]:
    """One Geometry shared by the batch, or a sequence of ``batch`` Geometries -> list."""
    if isinstance(geometry, Geometry):
        return [geometry] * batch
    if isinstance(geometry, Sequence) and not isinstance(geometry, (str, bytes)):
        geoms = list(geometry)
        if len(geoms) != batch:
            raise ValueError(f"geometry is a list of {len(geoms)} Geometries but the batch has B={batch}")
        for i, g in enumerate(geoms):
            if not isinstance(g, Geometry):
                raise TypeError(f"geometry[{i}] must be a tomoprior Geometry, got {type(g).__name__}")
        return geoms
    raise TypeError(f"geometry must be a tomoprior Geometry or a list of B Geometries, got {type(geometry).__name__}")


# -- devices ---------------------------------------------------------------------------------

def resolve_device(device="cpu", *, option: str = "device") -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``, ``"auto"`` (CUDA when available, else
    the CPU) or a ``torch.device`` -> a ``torch.device`` that exists on this machine.

    Raises
    ------
    ValueError
        Naming ``option`` (e.g. ``--device``) and the fix: not a device name, CUDA (or the
        GPU index) not available, MPS not available.
    """
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str):
        text = device.strip().lower()
        if text == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            dev = torch.device(text)
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"{option} {device!r} is not a device; use cpu, cuda, cuda:N or auto") from exc
    else:
        raise ValueError(f"{option} must be a device name such as 'cpu' or 'cuda', got {type(device).__name__}")
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{option} {device!s}: CUDA is not available on this machine (no GPU, or a CPU-only "
                             "torch build); use cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{option} {device!s}: there are only {torch.cuda.device_count()} CUDA device(s) "
                             f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
        return dev
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"{option} {device!s}: Apple MPS is not available on this machine; use cpu")
        return dev
    raise ValueError(f"{option} {device!s}: refiners run on cpu, cuda[:N] or mps, not {dev.type!r}")
