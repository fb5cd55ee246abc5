"""The tomoprior HDF5 dataset format: one file, many samples (volume + X-rays + the exact
geometry + labels + provenance).

Layout (schema ``tomoprior.dataset``, version 1; ``N`` samples, every array's first axis)::

    /                     attrs: schema, schema_version, n_samples (written last: the commit
                          marker), created_utc, modified_utc, tomoprior_version, volume_units,
                          xray_kind, xray_units, compression
    /volume               (N, nz, ny, nx) float32   attenuation per mm; chunk = one sample
    /xrays                (N, V, R, C)    float32   line integrals (attenuation x mm) or counts
    /grid/spacing         (N, 3) float64            (sz, sy, sx) mm of each sample's grid
    /grid/center          (N, 3) float64            (x, y, z) mm, LPS
    /geometry             (N,) UTF-8 string         YAML of Geometry.save's schema: the geometry
                                                    the X-rays were made with (perturbed if so)
    /nominal_geometry     (N,) UTF-8 string         the geometry before calibration-error
                                                    augmentation (= /geometry without it)
    /labels/variant       (N,) UTF-8 string         e.g. "normal", "sagittal"
    /labels/age_years     (N,) float32
    /labels/normal        (N,) bool                 variant == "normal"
    /labels/cephalic_index (N,) float32             NaN when unknown
    /split                (N,) UTF-8 string         "train" | "val" | "test"
    /provenance           (N,) UTF-8 string         JSON: tomoprior version, seed, parameters,
                                                    augmentation draws, time

Crash safety: every write goes to a temporary file beside the target that is renamed over
it only after the writer closed cleanly (:mod:`tomoprior._atomic`; a temporary left by a
killed writer is removed by the next write of the same target). Appending copies the
existing file to the temporary file first and appends there. HDF5 has no journal: a crash
while modifying a file in place can corrupt its metadata (B-trees, free-space, the
superblock) and lose *all* samples, not only the new ones, so tomoprior never modifies a
dataset in place. The price is one file copy per append session (seconds for a few GB);
append many samples per session (the writer accepts any number).

Faults: the writer checks the free space before each sample and writes without a chunk
cache, so a full disk surfaces at once as :class:`~tomoprior._atomic.DiskFullError` naming
the file and the space needed (never a crash of the HDF5 library), the temporary is deleted
and any previous file is untouched. Volume and X-ray chunks carry a Fletcher-32 checksum,
so a damaged chunk is reported on read (:meth:`DatasetFile.verify` reads them all).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .._atomic import (
    DiskFullError,
    atomic_path,
    disk_free,
    disk_full_error,
    is_disk_full,
    raise_if_interrupted,
)
from .._version import __version__
from ..geometry import Geometry, VolumeGrid
from ..geometry.io import dumps as geometry_dumps
from ..geometry.io import loads as geometry_loads

SCHEMA = "tomoprior.dataset"
SCHEMA_VERSION = 1
SPLITS = ("train", "val", "test")
COMPRESSIONS = ("gzip", "lzf", "none")
#: Free space kept for HDF5 metadata and the commit on top of a sample's raw size (bytes).
SPACE_MARGIN = 1 << 18

_STR_DATASETS = ("geometry", "nominal_geometry", "labels/variant", "split", "provenance")
_REQUIRED = ("volume", "xrays", "grid/spacing", "grid/center", "labels/age_years", "labels/normal",
             "labels/cephalic_index", *_STR_DATASETS)


class DatasetFormatError(ValueError):
    """A file that is not a valid tomoprior dataset (foreign, truncated, wrong version, ...)."""


@dataclass
class Sample:
    """One dataset sample.

    Attributes
    ----------
    volume : Tensor ``(nz, ny, nx)`` float32, attenuation per mm on ``grid``
    grid : VolumeGrid
    xrays : Tensor ``(views, rows, cols)`` float32
    geometry : Geometry
        The geometry the X-rays were made with.
    labels : dict
        ``variant`` (str), ``age_years`` (float), optionally ``cephalic_index`` (float).
    provenance : dict
        JSON-serialisable: seed, parameters, augmentation draws, ...
    nominal_geometry : Geometry, optional
        The unperturbed geometry (defaults to ``geometry``).
    split : str
        ``"train"``, ``"val"`` or ``"test"``.
    """

    volume: torch.Tensor
    grid: VolumeGrid
    xrays: torch.Tensor
    geometry: Geometry
    labels: dict
    provenance: dict = field(default_factory=dict)
    nominal_geometry: Geometry | None = None
    split: str = "train"


def _str_dtype():
    import h5py

    return h5py.string_dtype(encoding="utf-8")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class DatasetWriter:
    """Write (``mode="w"``) or append to (``mode="a"``) a dataset file, atomically.

    Use as a context manager; the target appears (or is replaced) only when the block exits
    without an exception. On an exception the target is untouched and the temporary file is
    deleted.

    >>> # with DatasetWriter("skulls.h5") as w:
    >>> #     w.append(sample)

    Parameters
    ----------
    path : str or Path
    mode : {"w", "a"}
        ``"a"`` validates the existing file, copies it and appends (the file must exist).
    compression : {"gzip", "lzf", "none"}
        Per-sample chunks; gzip (level 4, with byte shuffle) is smaller, lzf faster.
    attrs : dict, optional
        Extra root attributes (numbers or strings), e.g. ``xray_kind``.
    expected_samples : int, optional
        How many samples the caller will append. With it, a disk that cannot hold them is
        reported after the first sample (from the bytes per sample so far) instead of when
        it is full.

    Raises
    ------
    DiskFullError
        (an ``OSError``, errno ``ENOSPC``) the disk cannot hold the file; the message names
        the file, the space needed and the space free.
    OSError
        The folder cannot be written.
    """

    def __init__(self, path, *, mode: str = "w", compression: str = "gzip", attrs: dict | None = None,
                 expected_samples: int | None = None):
        if mode not in ("w", "a"):
            raise ValueError(f"mode must be 'w' (new file) or 'a' (append), got {mode!r}")
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
        if expected_samples is not None and (isinstance(expected_samples, bool)
                                             or not isinstance(expected_samples, (int, np.integer))
                                             or expected_samples < 1):
            raise ValueError(f"expected_samples must be a positive integer or None, got {expected_samples!r}")
        self.path = Path(path)
        self.mode = mode
        self.compression = compression
        self.attrs = dict(attrs or {})
        self.expected_samples = None if expected_samples is None else int(expected_samples)
        self._cm = None
        self._file = None
        self._failed: BaseException | None = None
        self._start_bytes = 0
        self._appended = 0
        self.n = 0

    # -- context management ---------------------------------------------------------------
    def __enter__(self) -> DatasetWriter:
        import h5py

        if self.mode == "a":
            if not self.path.exists():
                raise FileNotFoundError(f"cannot append: {self.path} does not exist (use mode='w' to create it)")
            with DatasetFile(self.path) as existing:  # validates before we touch anything
                old = existing.attrs
            self.compression = old.get("compression", self.compression)
            for key in ("xray_kind", "xray_units", "volume_units", "realism"):
                if key in self.attrs and key in old and str(self.attrs[key]) != str(old[key]):
                    raise ValueError(f"cannot append to {self.path}: its {key} is {old[key]!r} but the new samples' is "
                                     f"{self.attrs[key]!r}; write them to another file")
            # appending copies the file first: it must fit twice
            self._require_space(self.path.stat().st_size + SPACE_MARGIN, "a copy of the file to append to")
        self._cm = atomic_path(self.path)
        tmp = self._tmp = self._cm.__enter__()
        try:
            # no chunk cache: each sample's chunks reach the disk when written, so a write
            # error (a full disk) is raised by that write, while HDF5 can still close the file;
            # buffered in the cache it would surface at close, where HDF5 cannot recover
            if self.mode == "a":
                try:
                    shutil.copyfile(self.path, tmp)
                except OSError as exc:
                    if is_disk_full(exc):
                        raise disk_full_error(self.path, exc, self.path.stat().st_size + SPACE_MARGIN) from exc
                    raise
                self._file = h5py.File(tmp, "a", rdcc_nbytes=0)
                self.n = int(self._file.attrs["n_samples"])
            else:
                self._file = h5py.File(tmp, "w", rdcc_nbytes=0)
                f = self._file
                f.attrs["schema"] = SCHEMA
                f.attrs["schema_version"] = SCHEMA_VERSION
                f.attrs["created_utc"] = _now()
                f.attrs["tomoprior_version"] = __version__
                f.attrs["compression"] = self.compression
                f.attrs["volume_units"] = "attenuation per mm"
                f.attrs.setdefault("xray_kind", "line_integrals")
            for k, v in self.attrs.items():
                self._file.attrs[k] = v
            # readers of the temporary file must not mistake it for a complete one
            self._file.attrs["n_samples"] = -1
            self._file.flush()
            self._start_bytes = _size(tmp)
        except BaseException as exc:
            self._abort(exc)
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._abort(exc)
            return
        try:
            if self._failed is not None:  # the caller caught a write error inside the block
                raise self._failed
            f = self._file
            if self.n == 0:
                raise ValueError(f"no sample was written to {self.path}; nothing to save")
            f.attrs["modified_utc"] = _now()
            f.attrs["n_samples"] = self.n  # the commit marker, written last
            try:
                f.flush()
                f.close()
                self._file = None
                with open(self._tmp, "rb+") as fh:
                    os.fsync(fh.fileno())
            except (OSError, RuntimeError) as err:
                if is_disk_full(err):
                    raise disk_full_error(self.path, err, SPACE_MARGIN) from err
                raise
        except BaseException as err:
            self._abort(err)
            raise
        self._cm.__exit__(None, None, None)

    def _abort(self, exc) -> None:
        if self._file is not None:
            # the temporary is discarded: empty it first, which frees its space, so HDF5 can
            # write the metadata it still holds when closing even on a full disk
            with contextlib.suppress(OSError):
                os.truncate(self._tmp, 0)
            try:
                self._file.close()
            except Exception:
                pass
            finally:
                self._file = None
        if self._cm is not None:
            cm, self._cm = self._cm, None
            try:
                cm.__exit__(type(exc), exc, None)
            except BaseException:
                pass

    def _require_space(self, needed: int, what: str, reason: str | None = None) -> None:
        folder = self.path.parent if str(self.path.parent) else Path(".")
        free = disk_free(folder)
        if free is not None and free < needed:
            msg = (f"not enough disk space for {self.path}: {reason or what} needs about {needed / 1e6:.1f} MB, "
                   f"{free / 1e6:.1f} MB free in {folder}. Free some space or write to another disk; any previous "
                   "file is unchanged")
            raise DiskFullError(msg)

    def _check_projection(self) -> None:
        """After a sample: will the remaining ``expected_samples`` fit, at the bytes per
        sample written so far?"""
        if self.expected_samples is None or self._appended == 0:
            return
        remaining = self.expected_samples - self._appended
        if remaining <= 0:
            return
        per = max(0, _size(self._tmp) - self._start_bytes) / self._appended
        need = int(per * remaining) + SPACE_MARGIN
        self._require_space(need, "", f"the remaining {remaining} of {self.expected_samples} samples "
                                      f"({per / 1e6:.2f} MB each so far)")

    # -- writing ----------------------------------------------------------------------------
    def append(self, sample: Sample) -> int:
        """Add one sample; returns its index. Shapes must match the file's first sample."""
        if self._file is None:
            raise RuntimeError("use DatasetWriter as a context manager (with DatasetWriter(path) as w: ...)")
        vol, xr = _check_sample(sample)
        f = self._file
        if "volume" not in f:
            self._create(vol.shape, xr.shape)
        else:
            if tuple(f["volume"].shape[1:]) != tuple(vol.shape):
                raise ValueError(f"sample volume shape {tuple(vol.shape)} differs from the file's "
                                 f"{tuple(f['volume'].shape[1:])}; one file holds one volume shape")
            if tuple(f["xrays"].shape[1:]) != tuple(xr.shape):
                raise ValueError(f"sample X-ray shape {tuple(xr.shape)} differs from the file's "
                                 f"{tuple(f['xrays'].shape[1:])}")
        nominal = sample.nominal_geometry if sample.nominal_geometry is not None else sample.geometry
        variant = str(sample.labels.get("variant", "unknown"))
        ci = sample.labels.get("cephalic_index")
        prov = {"tomoprior_version": __version__, "written_utc": _now(), **sample.provenance}
        return self._append_row({
            "volume": vol, "xrays": xr, "grid/spacing": sample.grid.spacing, "grid/center": sample.grid.center,
            "geometry": geometry_dumps(sample.geometry), "nominal_geometry": geometry_dumps(nominal),
            "labels/variant": variant, "labels/age_years": float(sample.labels.get("age_years", float("nan"))),
            "labels/normal": bool(sample.labels.get("normal", variant == "normal")),
            "labels/cephalic_index": float("nan") if ci is None else float(ci),
            "split": sample.split, "provenance": json.dumps(prov, default=_json_default),
        })

    def _append_row(self, row: dict) -> int:
        if self._failed is not None:
            raise RuntimeError(f"an earlier write to {self.path} failed ({self._failed}); leave the with block")
        raise_if_interrupted()
        raw = sum(np.asarray(v).nbytes if not isinstance(v, str) else len(v.encode()) for v in row.values())
        try:
            self._require_space(raw + SPACE_MARGIN, "one more sample")
            f = self._file
            if "volume" not in f:
                self._create(np.shape(row["volume"]), np.shape(row["xrays"]))
            i = self.n
            for name in _REQUIRED:
                f[name].resize(i + 1, axis=0)
                f[name][i] = row[name]
        except (OSError, RuntimeError) as exc:
            self._failed = exc
            if isinstance(exc, DiskFullError):
                raise
            if is_disk_full(exc):
                raise disk_full_error(self.path, exc, raw + SPACE_MARGIN) from exc
            raise OSError(f"cannot write sample {self.n} to {self.path} (temporary {self._tmp.name}): {exc}") \
                from exc
        self.n = i + 1
        self._appended += 1
        try:
            self._check_projection()
        except DiskFullError as exc:
            self._failed = exc
            raise
        return i

    def append_from(self, source: DatasetFile, i: int) -> int:
        """Copy sample ``i`` of an open :class:`DatasetFile` verbatim (no re-serialisation)."""
        if self._file is None:
            raise RuntimeError("use DatasetWriter as a context manager")
        i = source._index(i)
        if "volume" in self._file and (tuple(self._file["volume"].shape[1:]) != source.volume_shape
                                       or tuple(self._file["xrays"].shape[1:]) != source.xray_shape):
            raise ValueError(f"{source.path} holds shapes {source.volume_shape}, {source.xray_shape} that differ from "
                             f"the file being written ({tuple(self._file['volume'].shape[1:])}, "
                             f"{tuple(self._file['xrays'].shape[1:])})")
        row = {name: source._sample_array(name, i, f"sample {i}'s {name}") for name in ("volume", "xrays")}
        row.update(source._guard(f"sample {i}", lambda: {name: source._file[name][i] for name in _REQUIRED
                                                         if name not in row}))
        return self._append_row(row)

    def _create(self, vshape, xshape) -> None:
        f = self._file
        comp = {} if self.compression == "none" else (
            {"compression": "gzip", "compression_opts": 4, "shuffle": True} if self.compression == "gzip"
            else {"compression": "lzf", "shuffle": True})
        # Fletcher-32 checksums: a damaged chunk is an error on read, not silently wrong values
        f.create_dataset("volume", shape=(0, *vshape), maxshape=(None, *vshape), dtype="float32",
                         chunks=(1, *vshape), fletcher32=True, **comp)
        f.create_dataset("xrays", shape=(0, *xshape), maxshape=(None, *xshape), dtype="float32",
                         chunks=(1, *xshape), fletcher32=True, **comp)
        for name in ("grid/spacing", "grid/center"):
            f.create_dataset(name, shape=(0, 3), maxshape=(None, 3), dtype="float64", chunks=(256, 3))
        for name in ("labels/age_years", "labels/cephalic_index"):
            f.create_dataset(name, shape=(0,), maxshape=(None,), dtype="float32", chunks=(1024,))
        f.create_dataset("labels/normal", shape=(0,), maxshape=(None,), dtype=bool, chunks=(1024,))
        for name in _STR_DATASETS:
            f.create_dataset(name, shape=(0,), maxshape=(None,), dtype=_str_dtype(), chunks=(64,),
                             **({} if self.compression == "none" else {"compression": "gzip"}))


def _size(path) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (np.ndarray, torch.Tensor)):
        return np.asarray(o.detach().cpu() if isinstance(o, torch.Tensor) else o).tolist()
    if isinstance(o, (tuple, set)):
        return list(o)
    return repr(o)


def _check_sample(sample: Sample):
    if not isinstance(sample, Sample):
        raise TypeError(f"expected a tomoprior.data.Sample, got {type(sample).__name__}")
    if not isinstance(sample.grid, VolumeGrid):
        raise TypeError(f"sample.grid must be a VolumeGrid, got {type(sample.grid).__name__}")
    if not isinstance(sample.geometry, Geometry):
        raise TypeError(f"sample.geometry must be a Geometry, got {type(sample.geometry).__name__}")
    vol = torch.as_tensor(sample.volume).detach().to(torch.float32).cpu().numpy()
    xr = torch.as_tensor(sample.xrays).detach().to(torch.float32).cpu().numpy()
    if vol.ndim != 3 or tuple(vol.shape) != tuple(sample.grid.shape):
        raise ValueError(f"sample.volume has shape {vol.shape}, expected the grid shape {sample.grid.shape}")
    if xr.ndim != 3:
        raise ValueError(f"sample.xrays must be (views, rows, cols), got shape {xr.shape}")
    if tuple(xr.shape) != tuple(sample.geometry.projection_shape):
        raise ValueError(f"sample.xrays has shape {xr.shape} but the geometry projects to "
                         f"{sample.geometry.projection_shape}")
    if sample.geometry.grid != sample.grid:
        raise ValueError(f"sample.geometry.grid {sample.geometry.grid} differs from sample.grid {sample.grid}")
    for name, arr in (("volume", vol), ("xrays", xr)):
        if not np.isfinite(arr).all():
            raise ValueError(f"sample.{name} contains NaN or infinite values; refusing to write it")
    if sample.split not in SPLITS:
        raise ValueError(f"sample.split must be one of {SPLITS}, got {sample.split!r}")
    if not isinstance(sample.labels, dict):
        raise TypeError("sample.labels must be a dict (variant, age_years, ...)")
    return vol, xr


# -- reading ---------------------------------------------------------------------------------

class DatasetFile:
    """Read and validate a dataset file. Opening checks the schema name and version, the
    commit marker and the shape of every array; reads raise :class:`DatasetFormatError` on a
    damaged file.

    Parameters
    ----------
    path : str or Path

    Examples
    --------
    >>> # with DatasetFile("skulls.h5") as ds:
    >>> #     sample = ds.read(0); ds.summary()
    """

    def __init__(self, path):
        import h5py

        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"dataset file {self.path} does not exist")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise DatasetFormatError(
                f"{self.path}: not a readable HDF5 file (truncated, still being written, or not HDF5): {exc}"
            ) from exc
        try:
            self._validate()
        except BaseException:
            self._file.close()
            raise

    def _validate(self) -> None:
        import h5py

        f, p = self._file, self.path
        try:
            schema = f.attrs.get("schema")
            if isinstance(schema, bytes):
                schema = schema.decode()
            if schema != SCHEMA:
                raise DatasetFormatError(f"{p}: not a tomoprior dataset (root attribute schema={schema!r}, expected "
                                         f"{SCHEMA!r})")
            raw_version = f.attrs.get("schema_version")
            version = _attr_int(raw_version)
            if version != SCHEMA_VERSION:
                shown = version if version is not None else repr(raw_version)
                raise DatasetFormatError(f"{p}: schema_version {shown} is not supported (this tomoprior reads "
                                         f"version {SCHEMA_VERSION}); upgrade tomoprior or regenerate the file")
            raw_n = f.attrs.get("n_samples")
            n = _attr_int(raw_n)
            if raw_n is not None and n is None:
                raise DatasetFormatError(f"{p}: n_samples must be an integer, got {raw_n!r}; the file is damaged")
            if n is None or n < 0:
                raise DatasetFormatError(f"{p}: n_samples is missing or negative: the file was not closed cleanly "
                                         "(an interrupted write); regenerate it")
            missing = [name for name in _REQUIRED if name not in f]
            if missing:
                raise DatasetFormatError(f"{p}: missing dataset(s) {missing}; the file is incomplete or foreign")
            for name in _REQUIRED:
                if not isinstance(f[name], h5py.Dataset) or f[name].ndim < 1:
                    raise DatasetFormatError(f"{p}: /{name} must be an array with one entry per sample, got "
                                             f"{f[name]!r}")
                if f[name].shape[0] != n:
                    raise DatasetFormatError(f"{p}: /{name} has {f[name].shape[0]} entries but n_samples is {n}")
            if f["volume"].ndim != 4 or f["xrays"].ndim != 4:
                raise DatasetFormatError(f"{p}: /volume must be (N, nz, ny, nx) and /xrays (N, views, rows, cols); got "
                                         f"{f['volume'].shape} and {f['xrays'].shape}")
            for name in ("volume", "xrays"):
                if f[name].dtype != np.float32:
                    raise DatasetFormatError(f"{p}: /{name} must be float32, got dtype {f[name].dtype}")
            for name in ("grid/spacing", "grid/center", "labels/age_years", "labels/cephalic_index"):
                if f[name].dtype.kind != "f":
                    raise DatasetFormatError(f"{p}: /{name} must hold floating-point numbers, got dtype "
                                             f"{f[name].dtype}")
            if min(f["volume"].shape[1:]) < 1 or min(f["xrays"].shape[1:]) < 1:
                raise DatasetFormatError(f"{p}: empty volume or X-ray shape {f['volume'].shape[1:]}, "
                                         f"{f['xrays'].shape[1:]}")
            for name in ("grid/spacing", "grid/center"):
                if f[name].shape != (n, 3):
                    raise DatasetFormatError(f"{p}: /{name} must be ({n}, 3), got {f[name].shape}")
            for name in ("labels/age_years", "labels/normal", "labels/cephalic_index", *_STR_DATASETS):
                if f[name].ndim != 1:
                    raise DatasetFormatError(f"{p}: /{name} must be 1D, got shape {f[name].shape}")
            splits = set(self._strings("split"))
            if not splits <= set(SPLITS):
                raise DatasetFormatError(f"{p}: /split holds {sorted(splits - set(SPLITS))}, expected {SPLITS}")
            self.n = n
            self.volume_shape = tuple(int(s) for s in f["volume"].shape[1:])
            self.xray_shape = tuple(int(s) for s in f["xrays"].shape[1:])
        except DatasetFormatError:
            raise
        except (OSError, RuntimeError, KeyError, IndexError, TypeError, ValueError, AttributeError,
                ArithmeticError) as exc:
            raise DatasetFormatError(f"{p}: damaged or foreign file ({type(exc).__name__}: {_first_line(exc)})") \
                from exc

    # -- basics --------------------------------------------------------------------------
    def __enter__(self) -> DatasetFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __len__(self) -> int:
        return self.n

    @property
    def attrs(self) -> dict:
        return {k: (v.decode() if isinstance(v, bytes) else (v.item() if hasattr(v, "item") else v))
                for k, v in self._file.attrs.items()}

    def _strings(self, name: str) -> list[str]:
        return [_text(s) for s in self._file[name][()]]

    def content_sha256(self) -> str:
        """Hex SHA-256 of what the file *holds*: every array (volumes, X-rays, grids, both
        geometries, labels, splits) by name, dtype, shape and value, in a fixed order.

        Unlike the SHA-256 of the file's bytes it leaves out what differs between two writes
        of the same samples: the creation and modification times, the ``/provenance`` records
        (which carry the time and the tomoprior version of the write), the compression and
        the HDF5 layout. So a data file made again from the same specifications with the
        same code on another machine has the same content digest (and another file digest).
        Reads every sample once (seconds per GB, decompression included).
        """
        import h5py

        h = hashlib.sha256(b"tomoprior.dataset content v1\0")
        names: list[str] = []
        self._file.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        for name in sorted(n for n in names if n != "provenance"):
            ds = self._file[name]
            h.update(f"{name}\0{ds.shape}\0".encode())
            if ds.dtype.kind == "O" or h5py.check_string_dtype(ds.dtype) is not None:
                h.update(b"str\0")
                for s in self._guard(f"/{name}", lambda d=ds: d[()]):
                    t = _text(s).encode("utf-8")
                    h.update(len(t).to_bytes(8, "little") + t)
                continue
            dt = ds.dtype.newbyteorder("<")  # one byte order whatever the file's or the machine's
            h.update(f"{dt.str}\0".encode())
            rows = range(ds.shape[0]) if ds.ndim and ds.shape[0] and ds.size > (1 << 20) else [None]
            for i in rows:
                if name in ("volume", "xrays") and i is not None:
                    a = self._sample_array(name, i, f"sample {i}'s {name}")
                else:
                    a = self._guard(f"/{name}", lambda d=ds, k=i: d[()] if k is None else d[k])
                h.update(np.ascontiguousarray(a, dtype=dt).tobytes())
        return h.hexdigest()

    def _sample_array(self, name: str, i: int, what: str) -> np.ndarray:
        """Row ``i`` of the per-sample array ``name`` ("volume" or "xrays"), after checking that
        the file's chunk index holds that row's chunk, stored with all its filters.

        HDF5 returns the fill value (zeros) for a chunk its index does not list, and skips the
        filters (the Fletcher-32 checksum among them) a chunk's filter mask names: a damaged
        index entry would hand on zeros or undecoded bytes as data, silently. One chunk holds
        one sample (the writer's layout); arrays of other layouts are read as they are.
        """
        ds = self._file[name]

        def read():
            info_of = getattr(ds.id, "get_chunk_info_by_coord", None)  # h5py >= 3 on HDF5 >= 1.10.5
            if info_of is not None and ds.chunks is not None and ds.chunks[0] == 1:
                info = info_of((i,) + (0,) * (ds.ndim - 1))
                if info.byte_offset is None or info.filter_mask != 0:
                    why = ("is missing from the file's chunk index" if info.byte_offset is None
                           else f"is marked to skip its filters (mask {info.filter_mask}), checksum included")
                    raise DatasetFormatError(
                        f"{self.path}: cannot read {what}: its stored chunk {why}; the file is damaged "
                        "(reading on would give zeros or undecoded bytes): regenerate it or leave the sample out "
                        "(`tomoprior dataset info --verify FILE` lists every bad sample)")
            return ds[i]

        return self._guard(what, read)

    def _guard(self, what: str, fn):
        if self._file is None:
            raise ValueError(f"{self.path} is closed; open it again with DatasetFile(path)")
        try:
            return fn()
        except DatasetFormatError:
            raise
        except (OSError, RuntimeError, KeyError, IndexError, TypeError, ValueError, AttributeError,
                ArithmeticError) as exc:
            raise DatasetFormatError(f"{self.path}: cannot read {what} (the file is truncated or damaged): "
                                     f"{_first_line(exc)}") from exc

    def _index(self, i: int) -> int:
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"sample index must be an integer, got {i!r}")
        if not -self.n <= int(i) < self.n:
            raise IndexError(f"sample index {i} out of range for {self.n} samples")
        return int(i) % self.n

    # -- per-sample reads -------------------------------------------------------------------
    def splits(self) -> list[str]:
        return self._guard("/split", lambda: self._strings("split"))

    def variants(self) -> list[str]:
        return self._guard("/labels/variant", lambda: self._strings("labels/variant"))

    def grid(self, i: int) -> VolumeGrid:
        i = self._index(i)
        sp, c = self._guard("the grid", lambda: (self._file["grid/spacing"][i], self._file["grid/center"][i]))
        try:
            return VolumeGrid(shape=self.volume_shape, spacing=tuple(float(x) for x in sp),
                              center=tuple(float(x) for x in c))
        except (ValueError, TypeError) as exc:
            raise DatasetFormatError(f"{self.path}: sample {i} has an invalid grid (spacing {tuple(sp)}, center "
                                     f"{tuple(c)}): {exc}") from exc

    def geometry_text(self, i: int, nominal: bool = False) -> str:
        i = self._index(i)
        name = "nominal_geometry" if nominal else "geometry"
        return self._guard(f"/{name}", lambda: _text(self._file[name][i]))

    def geometry(self, i: int, nominal: bool = False) -> Geometry:
        """The geometry of sample ``i`` (validated by the geometry schema)."""
        text = self.geometry_text(i, nominal)
        try:
            g = geometry_loads(text)
        except Exception as exc:  # any failure to parse stored text means a damaged file
            raise DatasetFormatError(f"{self.path}: sample {i} has an invalid geometry: {_first_line(exc)}") from exc
        if g.grid.shape != self.volume_shape or g.projection_shape != self.xray_shape:
            raise DatasetFormatError(f"{self.path}: sample {i}'s geometry (grid {g.grid.shape}, projections "
                                     f"{g.projection_shape}) does not match the arrays {self.volume_shape}, "
                                     f"{self.xray_shape}")
        return g

    def volume(self, i: int) -> np.ndarray:
        """Sample ``i``'s volume ``(nz, ny, nx)`` float32, as stored (not checked for NaN:
        see :meth:`read`, :meth:`verify`)."""
        i = self._index(i)
        return self._sample_array("volume", i, f"sample {i}'s volume")

    def xrays(self, i: int) -> np.ndarray:
        """Sample ``i``'s X-rays ``(views, rows, cols)`` float32, as stored."""
        i = self._index(i)
        return self._sample_array("xrays", i, f"sample {i}'s X-rays")

    def check_finite(self, i: int, arrays: dict[str, np.ndarray]) -> None:
        """Raise :class:`DatasetFormatError` naming the file and sample ``i`` when one of
        ``arrays`` (name -> array) holds NaN or infinity."""
        for name, a in arrays.items():
            bad = _nonfinite(a)
            if bad:
                raise DatasetFormatError(
                    f"{self.path}: sample {i}'s {name} holds {bad['nan']} NaN and {bad['inf']} infinite value(s); "
                    "the data is damaged, not the model: regenerate the file or leave the sample out "
                    "(`tomoprior dataset info --verify FILE` lists every bad sample)")

    def labels(self, i: int) -> dict:
        i = self._index(i)
        f = self._file

        def read():
            ci = float(f["labels/cephalic_index"][i])
            return {"variant": _text(f["labels/variant"][i]),
                    "age_years": float(f["labels/age_years"][i]),
                    "normal": bool(f["labels/normal"][i]),
                    "cephalic_index": None if np.isnan(ci) else ci}

        return self._guard("labels", read)

    def provenance(self, i: int) -> dict:
        i = self._index(i)
        s = self._guard("/provenance", lambda: _text(self._file["provenance"][i]))
        try:
            d = json.loads(s)
        except ValueError as exc:
            raise DatasetFormatError(f"{self.path}: sample {i}'s /provenance is not valid JSON: {exc}") from exc
        if not isinstance(d, dict):
            raise DatasetFormatError(f"{self.path}: sample {i}'s /provenance must be a JSON object, got "
                                     f"{type(d).__name__}")
        return d

    def read(self, i: int) -> Sample:
        """Sample ``i`` with every part validated (NaN or infinite values are an error)."""
        i = self._index(i)
        geom = self.geometry(i)
        grid = self.grid(i)
        if geom.grid != grid:
            raise DatasetFormatError(f"{self.path}: sample {i}'s geometry grid {geom.grid} differs from /grid {grid}")
        split = self._guard("/split", lambda: _text(self._file["split"][i]))
        vol, xr = self.volume(i), self.xrays(i)
        self.check_finite(i, {"volume": vol, "X-rays": xr})
        return Sample(volume=torch.from_numpy(vol), grid=grid, xrays=torch.from_numpy(xr),
                      geometry=geom, labels=self.labels(i), provenance=self.provenance(i),
                      nominal_geometry=self.geometry(i, nominal=True),
                      split=split)

    def summary(self) -> dict:
        """Counts per split and variant, shapes, sizes and schema, for ``tomoprior dataset info``."""
        splits, variants = self.splits(), self.variants()
        ages = self._guard("ages", lambda: self._file["labels/age_years"][()])
        per_split = {s: splits.count(s) for s in SPLITS}
        per_variant: dict[str, dict[str, int]] = {}
        for v, s in zip(variants, splits):
            per_variant.setdefault(v, {k: 0 for k in SPLITS})[s] += 1
        size = self.path.stat().st_size
        attrs = self.attrs
        return {
            "path": str(self.path),
            "schema": f"{attrs['schema']} v{attrs['schema_version']}",
            "n_samples": self.n,
            "per_split": per_split,
            "per_variant": per_variant,
            "volume_shape": list(self.volume_shape),
            "xray_shape": list(self.xray_shape),
            "age_years": [float(np.nanmin(ages)), float(np.nanmax(ages))] if self.n else None,
            "file_bytes": size,
            "bytes_per_sample": size / max(self.n, 1),
            "raw_bytes_per_sample": 4 * (int(np.prod(self.volume_shape)) + int(np.prod(self.xray_shape))),
            "attrs": attrs,
        }


    def verify(self, *, geometry: bool = True, progress=None) -> dict:
        """Read every chunk of every sample and report what is wrong, per sample.

        Parameters
        ----------
        geometry : bool
            Also parse every sample's geometries (about 30 ms each).
        progress : callable, optional
            Called with the sample index after each sample.

        Returns
        -------
        dict with ``path``, ``n_samples``, ``unreadable`` (list of ``{"sample", "array",
        "error"}``: a chunk that cannot be read or fails its checksum), ``nonfinite`` (list of
        ``{"sample", "array", "nan", "inf"}``), ``invalid`` (list of ``{"sample", "what",
        "error"}``: labels, grid or geometry that do not parse), and ``ok`` (nothing wrong).
        """
        unreadable, nonfinite, invalid = [], [], []
        f = self._file
        for name in ("grid/spacing", "grid/center", "labels/age_years", "labels/normal", "labels/cephalic_index",
                     *_STR_DATASETS):
            try:
                self._guard(f"/{name}", lambda name=name: f[name][()])
            except DatasetFormatError as exc:
                unreadable.append({"sample": None, "array": name, "error": str(exc)})
        for i in range(self.n):
            for name, label in (("volume", "volume"), ("xrays", "X-rays")):
                try:
                    a = self._sample_array(name, i, f"sample {i}'s {label}")
                except DatasetFormatError as exc:
                    unreadable.append({"sample": i, "array": name, "error": str(exc)})
                    continue
                bad = _nonfinite(a)
                if bad:
                    nonfinite.append({"sample": i, "array": name, **bad})
            checks = [("grid", self.grid), ("labels", self.labels), ("provenance", self.provenance)]
            if geometry:
                checks += [("geometry", self.geometry), ("nominal geometry", lambda j: self.geometry(j, True))]
            for what, fn in checks:
                try:
                    fn(i)
                except DatasetFormatError as exc:
                    if isinstance(exc.__cause__, OSError):  # the bytes could not be read
                        unreadable.append({"sample": i, "array": what, "error": str(exc)})
                    else:  # read, but not valid
                        invalid.append({"sample": i, "what": what, "error": str(exc)})
            if progress is not None:
                progress(i)
        return {"path": str(self.path), "n_samples": self.n, "unreadable": unreadable, "nonfinite": nonfinite,
                "invalid": invalid, "ok": not (unreadable or nonfinite or invalid)}


def _nonfinite(a: np.ndarray) -> dict | None:
    """``{"nan": count, "inf": count}`` of a float array, or None when all values are finite."""
    a = np.asarray(a)
    if a.dtype.kind != "f" or np.isfinite(a).all():
        return None
    return {"nan": int(np.isnan(a).sum()), "inf": int(np.isinf(a).sum())}


def _attr_int(v) -> int | None:
    """An integer attribute (a Python or NumPy integer, possibly a one-element array), else None."""
    if isinstance(v, np.ndarray) and v.size == 1:
        v = v.reshape(()).item() if v.dtype.kind in "iu" else None
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        return None
    return int(v)


def _text(s) -> str:
    """A stored string entry as text (h5py gives bytes for variable-length UTF-8)."""
    return s.decode("utf-8") if isinstance(s, bytes) else str(s)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def merge(inputs, out, *, compression: str | None = None) -> Path:
    """Concatenate dataset files (e.g. the shards written by Dask workers) into ``out``,
    atomically, keeping the order of ``inputs``."""
    inputs = [Path(p) for p in inputs]
    if not inputs:
        raise ValueError("merge needs at least one input file")
    with DatasetFile(inputs[0]) as first:
        attrs = {k: v for k, v in first.attrs.items()
                 if k not in ("n_samples", "schema", "schema_version", "created_utc", "modified_utc")}
    comp = compression or attrs.pop("compression", "gzip")
    attrs.pop("compression", None)
    with DatasetWriter(out, compression=comp, attrs=attrs) as w:
        for p in inputs:
            with DatasetFile(p) as ds:
                for i in range(len(ds)):
                    w.append_from(ds, i)
    return Path(out)
