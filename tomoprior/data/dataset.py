"""``TomopriorDataset``: a lazy ``torch.utils.data.Dataset`` over a dataset file.

The file is validated once when the dataset is built, then opened lazily in each process
that reads from it (h5py file handles must not cross a fork or a pickle), so it is safe with
``DataLoader(num_workers > 0)`` under both ``fork`` and ``spawn``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .h5 import SPLITS, DatasetFile


def assign_splits(n: int, seed: int, fractions=(0.8, 0.1, 0.1), *, start: int = 0) -> list[str]:
    """Deterministic train/val/test labels for ``n`` samples from a seed.

    A random permutation (``numpy.random.default_rng([seed, start])``) of the samples; the
    first ``round(fractions[0] n)`` are ``train``, the next ``round(fractions[1] n)`` ``val``,
    the rest ``test``. ``start`` (the index of the first sample) keeps appended blocks
    independent of earlier ones.

    >>> assign_splits(10, seed=0).count("train")
    8
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    fr = np.asarray(fractions, dtype=np.float64)
    if fr.shape != (3,) or np.any(fr < 0) or not np.isclose(fr.sum(), 1.0):
        raise ValueError("fractions must be three non-negative numbers (train, val, test) summing to 1, "
                         f"got {fractions!r}")
    perm = np.random.default_rng([int(seed), int(start)]).permutation(n)
    n_train = round(fr[0] * n)
    n_val = min(round(fr[1] * n), n - n_train)
    labels = np.empty(n, dtype=object)
    labels[perm[:n_train]] = "train"
    labels[perm[n_train:n_train + n_val]] = "val"
    labels[perm[n_train + n_val:]] = "test"
    return labels.tolist()


class TomopriorDataset(Dataset):
    """Samples of a tomoprior dataset file as dicts of tensors.

    Parameters
    ----------
    path : str or Path
    split : {"train", "val", "test"} or None
        Keep only this split (None: all samples).
    split_seed : int, optional
        Re-split the file with :func:`assign_splits` (``fractions``) instead of using the
        split stored in it.
    geometry_as : {"yaml", "object"}
        ``"yaml"`` (default): ``item["geometry"]`` is the YAML text, which the default collate
        turns into a list of strings; ``"object"``: a :class:`~tomoprior.geometry.Geometry`,
        batch with ``collate_fn=TomopriorDataset.collate``.
    transform : callable, optional
        Applied to each item dict.
    check_finite : bool
        Raise :class:`~tomoprior.data.DatasetFormatError` naming the file and the sample when
        its volume or X-rays hold NaN or infinity (default), instead of handing them on.

    Items
    -----
    ``volume`` (nz, ny, nx) float32 attenuation per mm; ``xrays`` (views, rows, cols) float32;
    ``vectors`` (views, 12) float64 (ASTRA ``cone_vec`` rows of the geometry used);
    ``spacing`` (3,) and ``center`` (3,) float64 mm; ``age_years`` float32; ``normal`` bool;
    ``variant`` str; ``index`` int (row in the file); ``geometry``.
    """

    def __init__(self, path, split: str | None = None, *, split_seed: int | None = None, fractions=(0.8, 0.1, 0.1),
                 geometry_as: str = "yaml", transform=None, check_finite: bool = True):
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
        if geometry_as not in ("yaml", "object"):
            raise ValueError(f"geometry_as must be 'yaml' or 'object', got {geometry_as!r}")
        self.path = Path(path)
        self.split = split
        self.geometry_as = geometry_as
        self.transform = transform
        self.check_finite = bool(check_finite)
        with DatasetFile(self.path) as ds:  # validate once, up front, in the parent process
            splits = ds.splits() if split_seed is None else assign_splits(len(ds), split_seed, fractions)
            self.variants = ds.variants()
            self.volume_shape, self.xray_shape = ds.volume_shape, ds.xray_shape
        self.indices = [i for i, s in enumerate(splits) if split is None or s == split]
        self._ds: DatasetFile | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def _file(self) -> DatasetFile:
        # one handle per process: a handle inherited through fork is not safe to use
        if self._ds is None or self._pid != os.getpid():
            self._ds = DatasetFile(self.path)
            self._pid = os.getpid()
        return self._ds

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_ds"] = None
        state["_pid"] = None
        return state

    def __getitem__(self, idx: int) -> dict:
        if not -len(self) <= idx < len(self):
            raise IndexError(f"index {idx} out of range for {len(self)} samples")
        i = self.indices[idx]
        ds = self._file()
        geom = ds.geometry(i)
        grid = ds.grid(i)
        labels = ds.labels(i)
        volume, xrays = ds.volume(i), ds.xrays(i)
        if self.check_finite:
            ds.check_finite(i, {"volume": volume, "X-rays": xrays})
        item = {
            "volume": torch.from_numpy(volume),
            "xrays": torch.from_numpy(xrays),
            "vectors": geom.vectors.detach().to(torch.float64),
            "spacing": torch.tensor(grid.spacing, dtype=torch.float64),
            "center": torch.tensor(grid.center, dtype=torch.float64),
            "age_years": torch.tensor(labels["age_years"], dtype=torch.float32),
            "normal": torch.tensor(labels["normal"]),
            "variant": labels["variant"],
            "index": i,
            "geometry": geom if self.geometry_as == "object" else ds.geometry_text(i),
        }
        return self.transform(item) if self.transform is not None else item

    @staticmethod
    def collate(batch: list[dict]) -> dict:
        """Default collation, except ``geometry`` stays a list (of Geometry objects or texts)."""
        from torch.utils.data import default_collate

        geoms = [b["geometry"] for b in batch]
        rest = default_collate([{k: v for k, v in b.items() if k != "geometry"} for b in batch])
        rest["geometry"] = geoms
        return rest

    def close(self) -> None:
        if self._ds is not None:
            self._ds.close()
            self._ds = None
