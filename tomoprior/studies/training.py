"""A refiner-agnostic training loop: epochs over a tomoprior HDF5 dataset, Adam with a
constant-then-linear learning-rate decay, validation metrics per epoch, atomic checkpoints
that resume bit-for-bit, seeded determinism and DistributedDataParallel (``torchrun``).

The loop knows nothing about a particular network. What is model-specific (extra modules
such as a GAN discriminator, the optimisers, the loss and the update) comes from
*training hooks* (:class:`tomoprior.refiners.hooks.TrainingHooks`, part of the plugin
contract), found in this order:

1. a ``training_hooks`` attribute of the refiner class (a ``TrainingHooks`` subclass or
   instance);
2. a ``hooks`` module beside the refiner's top-level package (``psctnet.hooks`` for
   ``psctnet.PSCTNet``) exposing ``training_hooks`` (a class or an instance);
3. :class:`TrainingHooks` itself: one Adam over all parameters, L1 loss to the target.

A refiner without trainable parameters is "trained" in one pass over the training split
(streamed, so any size) when it has a ``fit_closed_form(batches) -> dict`` method (the
built-in ``atlas``: it gets every training :class:`Batch` and returns entries for the
training record) or a ``fit_level`` method (the built-in ``bp-prior``: a closed-form
least-squares fit of its ``gain`` and ``offset``); any other refiner without trainable
parameters is rejected with a ``ValueError``.

Usage::

    from tomoprior.studies.training import TrainConfig, train
    cfg = TrainConfig(data="skulls.h5", refiner="psctnet", refiner_config={"preset": "tiny"},
                      epochs=10, batch_size=2, out="run/")
    summary = train(cfg)           # writes run/last.pt, run/best.pt, run/metrics.jsonl

See ``docs/training.md`` for the checkpoint format and the resume semantics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._atomic import atomic_path, write_text_atomic
from ..geometry.geometry import Geometry
from ..refiners.base import Refiner, read_checkpoint
from ..refiners.hooks import Batch, StepContext, find_hooks

#: Version of the training-state layout inside ``checkpoint["extra"]``.
TRAIN_STATE_VERSION = 1
PAPER_LR = 2e-4
PAPER_BETAS = (0.5, 0.99)


# -- configuration ---------------------------------------------------------------------------

#: Validation metrics that can pick ``best.pt``: +1 higher is better, -1 lower is better.
SELECT_METRICS = {"psnr": 1, "ssim": 1, "mae": -1, "dice": 1}


def is_better(record: dict, best: dict | None, select: str = "psnr") -> bool:
    """Whether the epoch ``record`` beats ``best`` in the validation metric ``select``."""
    key = f"val_{select}"
    if key not in record or record[key] is None:
        return False
    if best is None or best.get(key) is None:
        return True
    return SELECT_METRICS[select] * (record[key] - best[key]) > 0


@dataclass
class TrainConfig:
    """Every setting of a training run (stored in each checkpoint).

    Parameters
    ----------
    data : str
        HDF5 dataset (``tomoprior dataset make``); its ``train`` split trains, ``val`` validates.
    refiner : str
        Registry name (``tomoprior.refiners.available_refiners()``).
    refiner_config : dict
        Config fields of the refiner (``{"preset": "tiny", "volume_shape": [32, 32, 32]}``
        for PSCT-Net). A ``volume_shape`` field the user does not set is taken from the data.
    out : str
        Run folder: ``last.pt``, ``best.pt``, ``metrics.jsonl``, ``config.json``.
    epochs : int
        Passes over the training split.
    batch_size : int
        Samples per optimiser step *per process* (the global batch is ``batch_size * world_size``).
    max_steps : int or None
        Stop after this many optimiser steps in total (also sets the length of the LR schedule).
    lr, betas, weight_decay
        Adam settings; ``None`` takes the refiner config's ``lr``/``betas``/``weight_decay`` if it
        has them, else the paper's 2e-4 and (0.5, 0.99), weight decay 0.
    decay_start : float in [0, 1]
        Fraction of the total steps with a constant learning rate; then it decays linearly to
        ``lr_end`` x lr at the last step (PSCT-Net / pix2pix: 0.5). 1.0 = constant.
    lr_end : float
        Final learning rate as a fraction of the initial one.
    seed : int
        Seeds the model initialisation, the data order (a function of seed and epoch only) and
        every random number the step draws (dropout); restored on resume.
    workers : int
        DataLoader worker processes (the data order and results do not depend on it).
    data_range : float or "auto"
        Peak value for PSNR and SSIM in the volumes' units (attenuation per mm); ``"auto"``: the
        largest voxel value of the validation targets, resolved once and stored.
    save_every : int
        Also write ``last.pt`` every this many steps inside an epoch (0: at epoch ends only).
    deterministic : bool
        ``torch.use_deterministic_algorithms(True, warn_only=True)`` and no cuDNN benchmark.
    device : str
        ``"auto"`` (CUDA when available, the local rank's GPU under torchrun), ``"cpu"``, ``"cuda"``.
    progress : bool
        tqdm progress bars (rank 0 only).
    select : {"psnr", "ssim", "mae", "dice"}
        Validation metric that picks ``best.pt`` (higher PSNR / SSIM / bone Dice, lower MAE;
        ties go to the later epoch only if strictly better). ``"dice"`` rewards bone: PSNR
        and MAE are dominated by air and soft tissue, so a checkpoint with blurred, faint
        bone can win them.
    bone_threshold : float
        Bone threshold in 1/mm for the validation Dice (default 0.035 /mm, about 700 HU at
        60 keV; the same as ``tomoprior evaluate``).
    """

    data: str
    refiner: str = "psctnet"
    refiner_config: dict = field(default_factory=dict)
    out: str = "run"
    epochs: int = 1
    batch_size: int = 1
    max_steps: int | None = None
    lr: float | None = None
    betas: tuple[float, float] | None = None
    weight_decay: float | None = None
    decay_start: float = 0.5
    lr_end: float = 0.0
    seed: int = 0
    workers: int = 0
    data_range: float | str = "auto"
    save_every: int = 0
    deterministic: bool = True
    device: str = "auto"
    progress: bool = True
    select: str = "psnr"
    bone_threshold: float = 0.035

    def __post_init__(self):
        if not isinstance(self.refiner_config, dict):
            raise TypeError(f"refiner_config must be a dict of config fields, got {type(self.refiner_config).__name__}")
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 1):
            raise ValueError(f"max_steps must be a positive integer or None, got {self.max_steps!r}")
        if not isinstance(self.workers, int) or self.workers < 0:
            raise ValueError(f"workers must be an integer >= 0, got {self.workers!r}")
        if not isinstance(self.save_every, int) or self.save_every < 0:
            raise ValueError(f"save_every must be an integer >= 0 (0: at epoch ends only), got {self.save_every!r}")
        if not 0.0 <= float(self.decay_start) <= 1.0:
            raise ValueError(f"decay_start must be a fraction in [0, 1], got {self.decay_start!r}")
        if not 0.0 <= float(self.lr_end) <= 1.0:
            raise ValueError(f"lr_end must be a fraction in [0, 1] of the initial learning rate, got {self.lr_end!r}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be positive and finite, got {self.lr!r}")
        if self.betas is not None:
            b = tuple(float(x) for x in self.betas)
            if len(b) != 2 or not all(0.0 <= x < 1.0 for x in b):
                raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
            self.betas = b
        if isinstance(self.data_range, str):
            if self.data_range != "auto":
                raise ValueError(f"data_range must be a positive number or 'auto', got {self.data_range!r}")
        elif not (math.isfinite(float(self.data_range)) and float(self.data_range) > 0):
            raise ValueError(f"data_range must be positive and finite, got {self.data_range!r}")
        if self.select not in SELECT_METRICS:
            raise ValueError(f"select must be one of {tuple(SELECT_METRICS)} (the validation metric that picks "
                             f"best.pt), got {self.select!r}")
        if not (isinstance(self.bone_threshold, (int, float)) and math.isfinite(self.bone_threshold)
                and self.bone_threshold > 0):
            raise ValueError(f"bone_threshold must be a positive number in 1/mm (e.g. 0.035), "
                             f"got {self.bone_threshold!r}")
        if not (isinstance(self.device, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device)):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if d["betas"] is not None:
            d["betas"] = list(d["betas"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"TrainConfig has no field(s) {unknown}; fields are {sorted(names)}")
        d = dict(d)
        if d.get("betas") is not None:
            d["betas"] = tuple(d["betas"])
        return cls(**d)


# -- learning-rate schedule ----------------------------------------------------------------------

def lr_factor(step: int, total_steps: int, decay_start: float = 0.5, lr_end: float = 0.0) -> float:
    """Learning-rate multiplier for optimiser step ``step`` (0-based) of ``total_steps``.

    1 for the first ``ceil(decay_start * total_steps)`` steps, then a linear decay that would
    reach ``lr_end`` one step after the last (so no step is wasted at a zero rate), as in
    pix2pix / PSCT-Net (constant for the first half of training, then linear to zero).

    >>> [round(lr_factor(s, 4), 3) for s in range(4)]
    [1.0, 1.0, 0.667, 0.333]
    >>> [round(lr_factor(s, 6, decay_start=0.5, lr_end=0.5), 3) for s in range(6)]
    [1.0, 1.0, 1.0, 0.875, 0.75, 0.625]
    """
    start = math.ceil(decay_start * total_steps)
    if step < start:
        return 1.0
    frac = min(1.0, (step - start + 1) / (total_steps - start + 1))
    return 1.0 - frac * (1.0 - lr_end)


# -- reproducibility -------------------------------------------------------------------------

def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch; optionally ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        # CUBLAS needs this for deterministic matmuls on CUDA; harmless on CPU
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def get_rng_state() -> dict:
    """Python, NumPy, torch (and CUDA) RNG states as checkpoint-safe data (no pickled objects)."""
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "python": [*py_state, py_version],
        "python_gauss": py_gauss,
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[-1], tuple(py[:-1]), state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_worker(worker_id: int) -> None:
    # DataLoader seeds torch per worker from its generator; derive NumPy and random from it
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


@dataclass(frozen=True)
class DataIdentity:
    """What a training run records of its data file: the SHA-256 of the file's bytes and of
    its content (:meth:`tomoprior.data.DatasetFile.content_sha256`, which leaves out write
    times and provenance). A run resumes on a file whose bytes or whose content match, so a
    study folder restored on another machine, its data made again from the same plan, can
    continue a training (checkpoints without a content digest need the same bytes)."""

    file: str
    content: str

    @classmethod
    def of(cls, path) -> DataIdentity:
        from ..data import DatasetFile

        with DatasetFile(path) as ds:
            content = ds.content_sha256()
        return cls(file=file_sha256(path), content=content)

    def matches(self, extra: dict) -> bool:
        """True when a checkpoint's ``extra`` names this data (same bytes or same content)."""
        return extra.get("data_sha256") == self.file or extra.get("data_content_sha256") == self.content


def file_sha256(path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file (the data file's identity in checkpoints)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


# -- distributed -------------------------------------------------------------------------------

@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return torch.distributed.is_available() and torch.distributed.is_initialized()


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (``RANK``/``WORLD_SIZE``/``MASTER_ADDR``...).

    Without those variables (a plain ``tomoprior train``) this is a no-op returning rank 0 of 1.
    The backend is NCCL when training on CUDA, else gloo.
    """
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return DistInfo()
    dist = torch.distributed
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local, False)
    use_cuda = torch.cuda.is_available() and device != "cpu"
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistInfo(rank, world, local, True)


def _resolve_device(device: str, dist: DistInfo) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available; use device='cpu' or 'auto' (--device)")
    if device == "cuda":
        return torch.device("cuda", dist.local_rank)
    return torch.device(device)


# -- data ------------------------------------------------------------------------------------

class EpochSampler(torch.utils.data.Sampler):
    """Shuffled indices that depend only on ``(seed, epoch)``, split between ranks.

    The permutation is padded by wrapping around so every rank gets the same number of
    samples (as ``DistributedSampler`` does); rank ``r`` takes positions ``r, r + W, ...``.
    ``start`` skips the first samples of this rank's share (resume inside an epoch).
    """

    def __init__(self, n: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1, start: int = 0,
                 shuffle: bool = True):
        if n < 1:
            raise ValueError("the split is empty; make a dataset with more samples or other split fractions")
        g = torch.Generator().manual_seed(int(seed) * 100_003 + int(epoch))
        perm = torch.randperm(n, generator=g).tolist() if shuffle else list(range(n))
        per_rank = math.ceil(n / world_size)
        perm = (perm * math.ceil(per_rank * world_size / n))[: per_rank * world_size]
        self.indices = perm[rank::world_size][start:]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _collate(items: list[dict]) -> dict:
    from ..data import TomopriorDataset

    return TomopriorDataset.collate(items)


def _same_geometry(geoms: list[Geometry]) -> bool:
    g0 = geoms[0]
    v0 = g0.vectors
    return all(g.grid == g0.grid and g.detector_shapes == g0.detector_shapes and torch.equal(g.vectors, v0)
               for g in geoms[1:])


def make_batch(raw: dict, device: torch.device) -> Batch:
    """A :class:`Batch` (with the prior built through the exact geometries) from a collated
    :class:`~tomoprior.data.TomopriorDataset` batch (``geometry_as="object"``)."""
    from ..refiners.prior import build_prior

    xrays = raw["xrays"].to(device=device, dtype=torch.float32)
    target = raw["volume"].to(device=device, dtype=torch.float32)[:, None]
    geoms = list(raw["geometry"])
    geometry = geoms[0] if _same_geometry(geoms) else geoms
    with torch.no_grad():
        prior = build_prior(xrays, geometry)
    return Batch(xrays, target, geometry, prior, [int(i) for i in raw["index"]])


def _loader(ds, sampler, batch_size: int, workers: int, seed: int, epoch: int):
    g = torch.Generator().manual_seed(int(seed) * 7919 + int(epoch))
    return torch.utils.data.DataLoader(
        ds, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=_collate,
        worker_init_fn=_seed_worker, generator=g, persistent_workers=False,
    )


# -- evaluation ------------------------------------------------------------------------------

@torch.no_grad()
def evaluate(model: Refiner, dataset, data_range: float, *, batch_size: int = 1, device="cpu",
             workers: int = 0, progress: bool = False, bone_threshold: float = 0.035) -> dict[str, float]:
    """Mean PSNR (dB), 3D SSIM, MAE (1/mm) and bone Dice of ``model`` over ``dataset`` (a
    ``TomopriorDataset(..., geometry_as="object")``), per volume then averaged.

    ``data_range`` is the PSNR/SSIM peak in the volumes' units (attenuation per mm);
    ``bone_threshold`` (1/mm) defines bone for the Dice (a sample without bone in either
    volume counts as Dice 1 if both are empty, else 0).
    """
    from .evaluation import validation_metrics

    was_training = model.training
    model.eval()
    sums = {"psnr": 0.0, "ssim": 0.0, "mae": 0.0, "dice": 0.0}
    n = 0
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                         collate_fn=_collate)
    it = loader
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(loader, desc="val", leave=False, dynamic_ncols=True)
    try:
        for raw in _clean_loader_errors(it):
            b = make_batch(raw, torch.device(device))
            out = model(b.xrays, b.geometry, b.prior).float().cpu()
            tgt = b.target.cpu()
            for i in range(out.shape[0]):
                for k, v in validation_metrics(out[i, 0], tgt[i, 0], data_range, bone_threshold).items():
                    sums[k] += v
                n += 1
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("the validation split is empty; make a dataset with a val split (--split)")
    return {k: v / n for k, v in sums.items()} | {"n": n}


def _auto_data_range(dataset) -> float:
    peak = 0.0
    for i in range(len(dataset)):
        peak = max(peak, float(dataset[i]["volume"].max()))
    if not peak > 0:
        raise ValueError("data_range='auto' found no positive voxel in the validation targets; give data_range")
    return peak


# -- the loop --------------------------------------------------------------------------------

def build_model(cfg: TrainConfig, volume_shape: tuple[int, int, int]) -> Refiner:
    """The refiner named by ``cfg.refiner`` with ``cfg.refiner_config``; a ``volume_shape``
    config field not given is set to the data's grid."""
    from ..refiners.registry import get_class

    cls = get_class(cfg.refiner)
    rc = dict(cfg.refiner_config)
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    if "volume_shape" in fields and "volume_shape" not in rc:
        rc["volume_shape"] = tuple(int(n) for n in volume_shape)
    for k, v in list(rc.items()):
        if isinstance(v, list):
            rc[k] = tuple(v)
    return cls(**rc)


def _adam_settings(cfg: TrainConfig, model: Refiner) -> tuple[float, tuple[float, float], float]:
    rc = model.config
    lr = cfg.lr if cfg.lr is not None else float(getattr(rc, "lr", PAPER_LR))
    betas = cfg.betas if cfg.betas is not None else tuple(float(b) for b in getattr(rc, "betas", PAPER_BETAS))
    wd = cfg.weight_decay if cfg.weight_decay is not None else float(getattr(rc, "weight_decay", 0.0))
    return lr, betas, wd


class _JsonlLog:
    """``metrics.jsonl``: rewritten atomically from the full history at every record, so it
    always matches the last checkpoint (a resumed run drops records the checkpoint lacks)."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, records: list[dict]) -> None:
        write_text_atomic(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


class TrainingDivergedError(FloatingPointError):
    """The training loss or the weights became NaN or infinite (too high a learning rate,
    usually). ``last.pt`` keeps the last finite state; nothing non-finite is saved."""


def train(cfg: TrainConfig, *, resume: bool = False, should_stop=None) -> dict[str, Any]:
    """Train ``cfg.refiner`` on ``cfg.data``; see :class:`TrainConfig` and ``docs/training.md``.

    Parameters
    ----------
    cfg : TrainConfig
    resume : bool
        Continue from ``<out>/last.pt`` (which must exist and come from the same data file);
        the continued run gives the same weights and the same logged metrics as an
        uninterrupted one. Without ``resume``, an existing ``last.pt`` in ``out`` is an error
        (never overwritten silently).
    should_stop : callable, optional
        Polled after every optimiser step; when it returns True the loop writes ``last.pt``
        (exactly resumable) and returns with ``stopped=True`` (``tomoprior train`` sets it on
        SIGTERM / Ctrl-C).

    Returns
    -------
    dict with ``history`` (one record per epoch), ``best``, ``steps``, ``samples_per_s``,
    ``out`` (the run folder), ``last``/``best_path`` checkpoint paths and ``stopped``.

    Raises
    ------
    ValueError
        Bad configuration or data: no ``train`` or no ``val`` samples (the iterative loop
        needs validation to choose ``best.pt``), a sample with NaN/inf values (named), a
        refiner that cannot run on the data's volume and detector sizes (checked by one
        forward pass before training; the message says what fits).
    TrainingDivergedError
        The loss or the weights stopped being finite.
    OSError
        The run folder cannot be written or the disk is full (``DiskFullError``).
    """
    from ..data import TomopriorDataset

    data_path = Path(cfg.data)
    if not data_path.is_file():
        raise ValueError(f"data file {data_path} does not exist; make one with `tomoprior dataset make`")
    out = Path(cfg.out)
    last_path, best_path = out / "last.pt", out / "best.pt"
    created_out = False

    dist = init_distributed(cfg.device)
    try:
        device = _resolve_device(cfg.device, dist)
        # the data first: a bad file should not leave an empty run folder behind
        train_ds = TomopriorDataset(data_path, split="train", geometry_as="object")
        val_ds = TomopriorDataset(data_path, split="val", geometry_as="object")
        if len(train_ds) == 0:
            raise ValueError(f"{data_path} has no 'train' samples; make the dataset with a train fraction "
                             "(`tomoprior dataset make --split 0.8,0.1,0.1`)")
        if dist.is_main:
            created_out = _make_run_folder(out)
            _check_run_folder(out, last_path, resume)
        _barrier(dist)

        ckpt = read_checkpoint(last_path) if resume else None
        data_hash = DataIdentity.of(data_path)
        if ckpt is not None:
            cfg = _resumed_config(cfg, ckpt, data_path, data_hash, last_path, out)
        seed_everything(cfg.seed, cfg.deterministic)
        if cfg.data_range == "auto":
            cfg = dataclasses.replace(cfg, data_range=_auto_data_range(val_ds) if len(val_ds) else 1.0)

        model = build_model(cfg, train_ds.volume_shape).to(device)
        if not any(p.requires_grad for p in model.parameters()):
            if _closed_form_fit(model) is not None:
                return _fit_closed_form(cfg, model, train_ds, val_ds, data_hash, dist, device)
            raise ValueError(
                f"refiner {cfg.refiner!r} has no trainable parameters and no fit_closed_form() or fit_level() "
                "method: there is nothing to train; use it directly (`tomoprior reconstruct --refiner ...`)")
        if len(val_ds) == 0:
            # best.pt is chosen on the validation metric; without validation it would be
            # missing or arbitrary, and the run's quality unknown
            raise ValueError(
                f"{data_path} has no 'val' samples: training needs a validation split to report its quality and "
                f"choose best.pt. Make the dataset with a val fraction (`tomoprior dataset make --split "
                f"0.8,0.1,0.1`; with few samples, a fraction that rounds to at least one) or append samples")

        opt = _optimisation(cfg, model, len(train_ds), dist, device)
        prog = _restore_progress(ckpt, model, opt, dist) if ckpt is not None else _Progress()
        check_fits(cfg, model, train_ds, data_path, dist.world_size, device)
        loop = _EpochLoop.start(cfg, model, opt, prog, dist, device, train_ds, val_ds,
                                _RunState(cfg, model, opt.aux, opt.optimizers, opt.schedulers, data_hash, dist,
                                          last_path, best_path), should_stop)
        loop.run(prog)
        return {"history": prog.history, "best": prog.best, "steps": prog.step, "epochs": prog.epoch,
                "samples_per_s": prog.n_samples / prog.t_train if prog.t_train > 0 else None, "out": str(out),
                "last": str(last_path), "best_path": str(best_path) if best_path.exists() else None,
                "stopped": prog.stopped}
    except BaseException:
        if created_out:  # a run that failed before writing anything leaves no empty folder
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    finally:
        if dist.initialized_here:
            torch.distributed.destroy_process_group()


# -- steps of train() ------------------------------------------------------------------------

def _make_run_folder(out: Path) -> bool:
    """Create the run folder if needed; True when it was created here (removed again if the
    run fails before writing anything)."""
    from .._atomic import NotWritableError

    if out.exists() and not out.is_dir():
        raise ValueError(f"the run folder {out} is a file; give a folder (--out)")
    if out.exists():
        return False
    try:
        out.mkdir(parents=True)
    except OSError as exc:
        raise NotWritableError(f"cannot create the run folder {out} ({exc.strerror or exc}); choose a "
                               "writable --out", exc.errno) from exc
    return True


def _check_run_folder(out: Path, last_path: Path, resume: bool) -> None:
    """The run folder is writable and holds a ``last.pt`` exactly when resuming."""
    from .._atomic import check_writable

    check_writable(out, what="run (--out)")
    if last_path.exists() and not resume:
        raise ValueError(f"{last_path} exists; pass resume=True (--resume) to continue it, or another out")
    if resume and not last_path.exists():
        raise ValueError(f"resume requested but {last_path} does not exist")


def _resumed_config(cfg: TrainConfig, ckpt: dict, data_path: Path, data_hash: DataIdentity, last_path: Path,
                    out: Path) -> TrainConfig:
    """The configuration of a resumed run: the checkpoint's, but for the stop point, workers
    and progress bars. Refuses a checkpoint not written by this loop or trained on other data."""
    extra = ckpt["extra"]
    if extra.get("train_state_version") != TRAIN_STATE_VERSION:
        raise ValueError(f"{last_path} was not written by tomoprior's training loop (no train state)")
    saved = TrainConfig.from_dict(extra["train_config"])
    if not data_hash.matches(extra):
        content = extra.get("data_content_sha256")
        theirs = f"content SHA-256 {content[:12]}..." if content else f"file SHA-256 {extra['data_sha256'][:12]}..."
        raise ValueError(
            f"{data_path} differs from the data file {last_path} was trained on ({theirs}; this file: content "
            f"{data_hash.content[:12]}..., file {data_hash.file[:12]}...); resume with the same data (a file made "
            "again from the same specifications by the same code holds the same content)")
    # the run's identity comes from the checkpoint; only the stop point, workers and
    # progress bars may change on resume
    return dataclasses.replace(saved, epochs=cfg.epochs, max_steps=cfg.max_steps, workers=cfg.workers,
                               progress=cfg.progress, out=str(out), data=str(data_path))


@dataclass
class _Optimisation:
    """The model-specific training pieces (from the refiner's training hooks) and the step budget."""

    hooks: Any
    aux: dict
    lr: float
    optimizers: dict
    schedulers: dict
    per_epoch: int  # optimiser steps per epoch on this rank
    total: int      # steps this run may take (max_steps or the whole schedule)


def _optimisation(cfg: TrainConfig, model: Refiner, n_train: int, dist: DistInfo, device) -> _Optimisation:
    """Hooks, auxiliary modules, optimisers and learning-rate schedulers of a run."""
    hooks = find_hooks(model)
    aux = {k: m.to(device) for k, m in hooks.build_aux(model).items()}
    lr, betas, wd = _adam_settings(cfg, model)
    optimizers = hooks.make_optimizers(model, aux, lr, betas, wd)

    per_epoch = math.ceil(math.ceil(n_train / dist.world_size) / cfg.batch_size)
    # the LR schedule spans all epochs; max_steps only stops early (a time budget), so a run
    # stopped by max_steps and resumed follows the same schedule as an uninterrupted one
    sched_total = per_epoch * cfg.epochs
    total = sched_total if cfg.max_steps is None else min(cfg.max_steps, sched_total)
    schedulers = {
        k: torch.optim.lr_scheduler.LambdaLR(
            o, lambda s, _t=sched_total: lr_factor(s, _t, cfg.decay_start, cfg.lr_end))
        for k, o in optimizers.items()
    }
    return _Optimisation(hooks, aux, lr, optimizers, schedulers, per_epoch, total)


@dataclass
class _Progress:
    """Where a run stands: completed steps and epochs, steps of the unfinished epoch, the
    per-epoch records, the best one, the unfinished epoch's statistic sums, throughput."""

    step: int = 0
    epoch: int = 0
    in_epoch: int = 0
    history: list = field(default_factory=list)
    best: dict | None = None
    running: dict = field(default_factory=dict)
    n_run: int = 0
    t_train: float = 0.0
    n_samples: int = 0
    stopped: bool = False


def _restore_progress(ckpt: dict, model: Refiner, opt: _Optimisation, dist: DistInfo) -> _Progress:
    """Load the weights, optimiser/scheduler/auxiliary states and this rank's RNG state from a
    training checkpoint and return the run's progress at that point."""
    extra = ckpt["extra"]
    model.load_state_dict(ckpt["state_dict"])
    for k, m in opt.aux.items():
        m.load_state_dict(extra["aux"][k])
    for k, o in opt.optimizers.items():
        o.load_state_dict(extra["optimizers"][k])
    for k, s in opt.schedulers.items():
        s.load_state_dict(extra["schedulers"][k])
    prog = _Progress(step=int(extra["step"]), epoch=int(extra["epoch"]), in_epoch=int(extra["step_in_epoch"]),
                     history=json.loads(extra["history"]),
                     best=json.loads(extra["best"]) if extra.get("best") else None)
    if prog.in_epoch and extra.get("epoch_running"):  # the unfinished epoch's statistics so far
        saved_run = json.loads(extra["epoch_running"])
        prog.running, prog.n_run = {k: float(v) for k, v in saved_run["sums"].items()}, int(saved_run["n"])
    set_rng_state(extra["rng"][dist.rank] if dist.rank < len(extra["rng"]) else extra["rng"][0])
    return prog


@dataclass
class _EpochLoop:
    """The epoch loop of :func:`train`: optimiser steps, then per epoch the validation
    metrics, ``best.pt`` selection, ``last.pt`` and ``metrics.jsonl``."""

    cfg: TrainConfig
    model: Refiner
    opt: _Optimisation
    ctx: StepContext
    dist: DistInfo
    device: torch.device
    train_ds: Any
    val_ds: Any
    state: _RunState
    log: _JsonlLog
    should_stop: Any

    @classmethod
    def start(cls, cfg, model, opt, prog, dist, device, train_ds, val_ds, state, should_stop) -> _EpochLoop:
        """Wrap the modules for DistributedDataParallel when distributed, write ``config.json``
        and the resumed history (main process)."""
        forward, aux_forward = model, dict(opt.aux)
        if dist.enabled:
            forward = _ddp(model, device)
            aux_forward = {k: _ddp(m, device) for k, m in opt.aux.items()}
        ctx = StepContext(model, forward, opt.aux, aux_forward, opt.optimizers, prog.step, prog.epoch)
        log = _JsonlLog(Path(cfg.out) / "metrics.jsonl")
        if dist.is_main:
            write_text_atomic(Path(cfg.out) / "config.json",
                              json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n")
            if prog.history:
                log.write(prog.history)
        return cls(cfg, model, opt, ctx, dist, device, train_ds, val_ds, state, log, should_stop)

    @property
    def progress(self) -> bool:
        return self.cfg.progress and self.dist.is_main

    def _stop_requested(self) -> bool:
        return self.should_stop is not None and self.should_stop()

    def run(self, prog: _Progress) -> None:
        """Train until the last epoch, ``max_steps`` or a stop request (``prog`` is updated)."""
        while prog.epoch < self.cfg.epochs and prog.step < self.opt.total:
            if not self._train_epoch(prog):
                break
            if self._finish_epoch(prog):
                break

    def _train_epoch(self, prog: _Progress) -> bool:
        """The optimiser steps of one epoch (from ``prog.in_epoch`` on). False when the epoch
        was cut short by ``max_steps`` or a stop request (``last.pt`` is written then)."""
        cfg, dist, opt = self.cfg, self.dist, self.opt
        sampler = EpochSampler(len(self.train_ds), cfg.seed, prog.epoch, dist.rank, dist.world_size,
                               start=prog.in_epoch * cfg.batch_size)
        loader = _loader(self.train_ds, sampler, cfg.batch_size, cfg.workers, cfg.seed, prog.epoch)
        bar = _bar(self.progress, opt.per_epoch, prog.in_epoch, f"epoch {prog.epoch + 1}/{cfg.epochs}")
        t_epoch = time.perf_counter()  # throughput includes data loading and the prior
        for raw in _clean_loader_errors(loader):
            if prog.step >= opt.total:
                break
            batch = make_batch(raw, self.device)
            self.ctx.step, self.ctx.epoch = prog.step, prog.epoch
            stats = opt.hooks.training_step(self.ctx, batch)
            for s in opt.schedulers.values():
                s.step()
            prog.n_samples += batch.xrays.shape[0] * dist.world_size
            _check_diverged(stats, self.model, opt.aux, cfg, opt.lr, prog.step, prog.epoch, batch.index)
            prog.step += 1
            prog.in_epoch += 1
            prog.n_run += 1
            for k, v in stats.items():
                prog.running[k] = prog.running.get(k, 0.0) + v
            if bar is not None:
                bar.set_postfix({k: f"{v:.4g}" for k, v in stats.items() if math.isfinite(v)}, refresh=False)
                bar.update(1)
            if self._stop_requested() and prog.in_epoch < opt.per_epoch:
                prog.stopped = True
                break
            if cfg.save_every and prog.step % cfg.save_every == 0 and prog.in_epoch < opt.per_epoch:
                self.state.save(prog.step, prog.epoch, prog.in_epoch, prog.history, prog.best,
                                running=(prog.running, prog.n_run))
        prog.t_train += time.perf_counter() - t_epoch
        if bar is not None:
            bar.close()
        if prog.in_epoch < opt.per_epoch:  # stopped by max_steps or should_stop inside the epoch
            self.state.save(prog.step, prog.epoch, prog.in_epoch, prog.history, prog.best,
                            running=(prog.running, prog.n_run))
            return False
        return True

    def _finish_epoch(self, prog: _Progress) -> bool:
        """Log the completed epoch (training means, validation metrics), pick ``best.pt``, save.
        True when a stop was requested before the last epoch."""
        cfg = self.cfg
        prog.epoch += 1
        prog.in_epoch = 0
        record = self._epoch_record(prog)
        prog.running, prog.n_run = {}, 0
        if self.dist.is_main and len(self.val_ds):
            metrics = evaluate(self.model, self.val_ds, float(cfg.data_range), batch_size=cfg.batch_size,
                               device=self.device, progress=self.progress, bone_threshold=float(cfg.bone_threshold))
            record.update({f"val_{k}": v for k, v in metrics.items()})
            record["data_range"] = float(cfg.data_range)
        record["time_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        prog.history.append(record)
        is_best = is_better(record, prog.best, cfg.select)
        if is_best:
            prog.best = record
        self.state.save(prog.step, prog.epoch, 0, prog.history, prog.best, best_too=is_best)
        if self.dist.is_main:
            self.log.write(prog.history)
        if self._stop_requested() and prog.epoch < cfg.epochs and prog.step < self.opt.total:
            prog.stopped = True
            return True
        return False

    def _epoch_record(self, prog: _Progress) -> dict:
        """Epoch, step, learning rate, the epoch's mean training statistics and throughput."""
        schedulers = self.opt.schedulers
        record = {"epoch": prog.epoch, "step": prog.step, "lr": schedulers[next(iter(schedulers))].get_last_lr()[0]}
        record.update({f"train_{k}": v / max(1, prog.n_run) for k, v in prog.running.items()})
        record["samples_per_s"] = prog.n_samples / prog.t_train if prog.t_train > 0 else None
        return record


def _check_diverged(stats: dict, model, aux: dict, cfg: TrainConfig, lr: float, step: int, epoch: int,
                    index: list[int]) -> None:
    """Raise :class:`TrainingDivergedError` when a statistic of the step (but a GAN's
    discriminator loss) or a weight is NaN or infinite."""
    bad = [k for k, v in stats.items() if not math.isfinite(v) and k != "d_loss"]
    what = f"the training loss ({', '.join(f'{k}={stats[k]}' for k in bad)})" if bad else None
    if what is None:
        for name, module in (("the refiner", model), *((f"the {k}", m) for k, m in aux.items())):
            if any(p.is_floating_point() and not bool(torch.isfinite(p).all()) for p in module.parameters()):
                what = f"the weights of {name}"
                break
    if what is None:
        return
    raise TrainingDivergedError(
        f"training diverged at step {step + 1} (epoch {epoch + 1}, samples {index} of {cfg.data}): {what} became NaN "
        f"or infinite with learning rate {lr:g}. Lower the learning rate (--lr; the refiner's default is "
        f"{_default_lr(cfg):g}); the data were checked and are finite. Nothing non-finite was saved")


def _default_lr(cfg: TrainConfig) -> float:
    return float(cfg.refiner_config.get("lr", PAPER_LR)) if isinstance(cfg.refiner_config, dict) else PAPER_LR


def _clean_loader_errors(loader):
    """Iterate ``loader``; a :class:`DatasetFormatError` raised in a DataLoader worker
    process arrives with the worker's traceback pasted into its message: keep the message."""
    from ..data import DatasetFormatError

    it = iter(loader)
    while True:
        try:
            raw = next(it)
        except StopIteration:
            return
        except DatasetFormatError as exc:
            text = str(exc)
            if "Traceback (most recent call last)" not in text:
                raise
            last = [line for line in text.strip().splitlines() if line.strip()][-1]
            msg = last.split(": ", 1)[1] if last.split(": ", 1)[0].endswith("Error") else last
            raise DatasetFormatError(msg) from None
        yield raw


def check_fits(cfg: TrainConfig, model: Refiner, train_ds, data_path, world_size: int = 1,
               device="cpu") -> None:
    """Check, before training, that the refiner runs on the data's volume and detector sizes.

    One forward pass in training mode on the smallest batch the epoch will hold (batch-norm
    layers need more than one value per channel there), with every buffer and RNG state
    restored afterwards, so the run is unchanged. Raises ``ValueError`` naming the refiner,
    its preset, the data's shapes and what would fit.
    """
    rc = model.config
    vshape, xshape = tuple(train_ds.volume_shape), tuple(train_ds.xray_shape)
    preset = cfg.refiner_config.get("preset") if isinstance(cfg.refiner_config, dict) else None
    who = f"refiner {cfg.refiner!r}" + (f" with preset {preset!r}" if preset else "")
    want = getattr(rc, "volume_shape", None)
    if want is not None and tuple(int(n) for n in want) != vshape:
        raise ValueError(f"{who} is configured for volumes {tuple(want)} but {data_path} holds {vshape}; drop the "
                         "volume_shape setting (it is taken from the data) or make data on that grid "
                         f"(`tomoprior dataset make --grid {int(want[0])}`)")
    n_local = math.ceil(len(train_ds) / world_size)
    size = min(cfg.batch_size, n_local % cfg.batch_size or cfg.batch_size)
    batch = make_batch(_collate([train_ds[i] for i in range(size)]), torch.device(device))
    buffers = {k: b.detach().clone() for k, b in model.named_buffers()}
    rng = get_rng_state()
    was_training = model.training
    try:
        model.train()
        with torch.no_grad():
            out = model(batch.xrays, batch.geometry, batch.prior)
    except (RuntimeError, ValueError, TypeError) as exc:
        hint = ""
        if "more than 1 value per channel" in str(exc):
            hint = _batchnorm_hint(rc, vshape, size)
        raise ValueError(f"{who} cannot train on {data_path}: volumes {vshape}, X-rays {xshape} (views, rows, "
                         f"cols), batches of {size}: {_first_line(exc)}.{hint}") from exc
    finally:
        with torch.no_grad():
            for k, b in model.named_buffers():
                b.copy_(buffers[k])
        set_rng_state(rng)
        model.train(was_training)
    if tuple(out.shape) != tuple(batch.target.shape):
        raise ValueError(f"{who} returns volumes of shape {tuple(out.shape)} for targets of shape "
                         f"{tuple(batch.target.shape)} from {data_path}; its volume_shape must match the data")


def _batchnorm_hint(rc, vshape, batch: int) -> str:
    bottleneck = getattr(rc, "bottleneck_shape", None)
    text = " A batch-norm layer sees a single value per channel: the network shrinks these volumes"
    if bottleneck is not None:
        text += f" to a {'x'.join(str(n) for n in bottleneck)} bottleneck"
        factor = max(1, vshape[0] // max(1, int(bottleneck[0])))
        grid = 2 * factor
        text += (f". Use a dataset with at least {grid} voxels per axis (`tomoprior dataset make --grid {grid}`), "
                 "a preset made for small grids (--preset tiny)")
    else:
        text += ". Use a dataset on a larger grid, a smaller network"
    text += (f", or a larger --batch-size (now {batch} in the smallest batch; the last batch of an epoch holds the "
             "remainder)")
    return text


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class _RunState:
    """Writes ``last.pt`` (and ``best.pt``) from the main process, gathering every rank's RNG state."""

    def __init__(self, cfg, model, aux, optimizers, schedulers, data_hash, dist, last_path, best_path):
        self.cfg, self.model, self.aux = cfg, model, aux
        self.optimizers, self.schedulers = optimizers, schedulers
        self.data_hash, self.dist = data_hash, dist
        self.last_path, self.best_path = last_path, best_path

    def save(self, step, epoch, in_epoch, history, best, best_too: bool = False, running=None) -> None:
        """Write ``last.pt`` (and ``best.pt`` if ``best_too``). ``running`` = ``(sums, n)``: the
        unfinished epoch's statistic sums and step count, so a resumed run logs the same
        epoch means as an uninterrupted one."""
        rng = [get_rng_state()]
        if self.dist.enabled and self.dist.world_size > 1:
            gathered: list = [None] * self.dist.world_size
            torch.distributed.all_gather_object(gathered, rng[0])
            rng = gathered
        if self.dist.is_main:
            extra = {
                "train_state_version": TRAIN_STATE_VERSION,
                "train_config": self.cfg.to_dict(),
                "data_sha256": self.data_hash.file,
                "data_content_sha256": self.data_hash.content,
                "epoch": epoch,               # completed epochs
                "step": step,                 # completed optimiser steps
                "step_in_epoch": in_epoch,    # steps done in the unfinished epoch
                "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
                "aux": {k: m.state_dict() for k, m in self.aux.items()},
                "rng": rng,
                "world_size": self.dist.world_size,
                "history": json.dumps(history),
                "best": json.dumps(best) if best else "",
                # repr-exact floats: the resumed epoch's mean is bit-identical
                "epoch_running": json.dumps({"sums": running[0], "n": running[1]}) if running and in_epoch else "",
            }
            self._write(self.last_path, extra)
            if best_too:
                self._write(self.best_path, extra)
        _barrier(self.dist)

    def _write(self, path: Path, extra: dict) -> None:
        from .._atomic import DiskFullError, disk_full_error, is_disk_full

        try:
            self.model.save_checkpoint(path, **extra)
        except DiskFullError:
            raise
        except (OSError, RuntimeError) as exc:  # torch.save reports a failed write as RuntimeError
            if isinstance(exc, RuntimeError) and "write" not in str(exc).lower():
                raise
            if is_disk_full(exc) or _disk_nearly_full(path):
                raise disk_full_error(path, exc) from exc
            raise OSError(f"cannot write the checkpoint {path}: {_first_line(exc)}; the previous one is "
                          "unchanged") from exc


def _disk_nearly_full(path: Path, below: int = 16 << 20) -> bool:
    from .._atomic import disk_free

    free = disk_free(path.parent)
    return free is not None and free < below


#: ``extra`` entries of a training checkpoint kept by :func:`export_weights` (the rest is
#: resume state: optimisers, schedulers, the discriminator, RNG states).
EXPORT_KEEP = ("train_config", "data_sha256", "data_content_sha256", "epoch", "step", "best", "history",
               "world_size")


def export_weights(checkpoint, out, *, provenance: dict | None = None, keep=EXPORT_KEEP) -> Path:
    """Write a weights-only copy of a training checkpoint for inference or shipping.

    Keeps the refiner's name, config and weights and the ``extra`` entries in ``keep``
    (training config, data hash, epoch, step, validation history); drops what only resuming
    needs (optimiser and scheduler states, auxiliary networks such as a discriminator, RNG
    states), which is most of the file. ``provenance`` (JSON-like: strings, numbers, lists,
    dicts) is stored as ``extra["provenance"]``, e.g. the training and data commands. The
    copy loads with :meth:`Refiner.from_checkpoint`; it cannot be resumed. Written atomically.

    Returns the output path.
    """
    from ..refiners.base import read_checkpoint

    src = read_checkpoint(checkpoint)
    if provenance is not None:
        try:
            json.dumps(provenance)
        except TypeError as exc:
            raise ValueError(f"provenance must be JSON-serialisable (strings, numbers, lists, dicts): {exc}") from exc
    out = Path(out)
    if out.resolve() == Path(checkpoint).resolve():
        raise ValueError("out must differ from checkpoint (export writes a new, smaller file)")
    extra = {k: v for k, v in src.get("extra", {}).items() if k in tuple(keep)}
    if provenance is not None:
        extra["provenance"] = json.loads(json.dumps(provenance))  # plain containers only (weights_only loads)
    payload = {k: v for k, v in src.items() if k != "extra"}
    payload["extra"] = extra
    payload["state_dict"] = {k: v.detach().clone().contiguous() for k, v in src["state_dict"].items()}
    with atomic_path(out) as tmp:
        torch.save(payload, tmp)
    return out


def _barrier(dist: DistInfo) -> None:
    if dist.enabled and dist.world_size > 1:
        torch.distributed.barrier()


def _ddp(module: nn.Module, device: torch.device) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    if not any(p.requires_grad for p in module.parameters()):
        return module
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def _bar(enabled: bool, total: int, initial: int, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, file=sys.stderr)


# -- refiners without trainable parameters -----------------------------------------------------

def _closed_form_fit(model) -> str | None:
    """Which one-pass fit a refiner without trainable parameters offers: ``"fit_closed_form"``
    (takes training batches, returns record entries), ``"fit_level"`` (bp-prior's gain and
    offset) or None."""
    for name in ("fit_closed_form", "fit_level"):
        if callable(getattr(model, name, None)):
            return name
    return None


@torch.no_grad()
def _fit_closed_form(cfg, model, train_ds, val_ds, data_hash, dist, device) -> dict:
    """One pass over the training split, in file order: ``model.fit_closed_form(batches)``
    (the ``atlas``: it gets every :class:`Batch` and returns entries for the record), or for
    ``bp-prior`` the least-squares ``gain``, ``offset`` of ``target ~ gain * base + offset``
    over every voxel (:meth:`BPPrior.fit_level`, batch by batch)."""
    c = model.config
    how = _closed_form_fit(model)
    if how is None:
        raise ValueError(f"refiner {cfg.refiner!r} has no trainable parameters and no fit_closed_form() or "
                         "fit_level() to fit it")
    loader = _loader(train_ds, EpochSampler(len(train_ds), cfg.seed, 0, shuffle=False), cfg.batch_size,
                     cfg.workers, cfg.seed, 0)
    t0 = time.perf_counter()

    def batches():
        for raw in _clean_loader_errors(loader):
            yield make_batch(raw, device)

    if how == "fit_closed_form":
        fitted = dict(model.fit_closed_form(batches()))
    else:
        model.fit_level((b.xrays, b.geometry, b.target) for b in batches())
        fitted = {"gain": c.gain, "offset": c.offset}
    elapsed = time.perf_counter() - t0
    record = {"epoch": 1, "step": 0, "fit": "closed_form", **fitted,
              "samples_per_s": len(train_ds) / elapsed if elapsed > 0 else None}
    if len(val_ds):
        record.update({f"val_{k}": v for k, v in evaluate(model, val_ds, float(cfg.data_range),
                                                           batch_size=cfg.batch_size, device=device).items()})
        record["data_range"] = float(cfg.data_range)
    record["time_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out = Path(cfg.out)
    if dist.is_main:
        extra = {"train_state_version": TRAIN_STATE_VERSION, "train_config": cfg.to_dict(),
                 "data_sha256": data_hash.file, "data_content_sha256": data_hash.content,
                 "epoch": 1, "step": 0, "step_in_epoch": 0,
                 "optimizers": {}, "schedulers": {}, "aux": {}, "rng": [get_rng_state()],
                 "world_size": dist.world_size, "history": json.dumps([record]), "best": json.dumps(record)}
        for p in (out / "last.pt", out / "best.pt"):
            model.save_checkpoint(p, **extra)
        write_text_atomic(out / "config.json", json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n")
        _JsonlLog(out / "metrics.jsonl").write([record])
    return {"history": [record], "best": record, "steps": 0, "epochs": 1, "samples_per_s": record["samples_per_s"],
            "out": str(out), "last": str(out / "last.pt"), "best_path": str(out / "best.pt")}

