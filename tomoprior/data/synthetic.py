"""Synthetic dataset generation: procedural skulls (or a Shepp-Logan head) -> bi-planar
X-rays -> an HDF5 dataset, in parallel across processes or on a Dask cluster.

Determinism: :func:`make_specs` draws every random choice of a sample (age, per-sample
seed, split) in the parent from ``(seed, index)``, and :func:`generate_sample` is a pure
function of its :class:`SampleSpec` that runs single-threaded. So the file's content does
not depend on the number of workers or on the engine (pool, Dask, serial).
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .._atomic import temporary_prefix
from ..geometry import DEFAULT_GRID, BiplanarGeometry, VolumeGrid
from .dataset import assign_splits
from .drr import GeometryPerturbation, IntensityAugmentation, synthesize
from .h5 import DatasetWriter, Sample, merge
from .realism import Realism

PHANTOMS = ("skull", "shepp_logan")
#: Ages of the PedSkull cohort (1-24 months), in years.
DEFAULT_AGE_RANGE = (1.0 / 12.0, 2.0)
#: 1536 / 12 = 128 pixels of 2.4 mm per view (1.6 mm at the isocenter).
DEFAULT_BINNING = 12


def skull_module():
    """``tomoprior.phantoms.skull`` if installed, else None."""
    try:
        from ..phantoms import skull
    except ImportError:
        return None
    return skull


def available_variants(phantom: str = "skull") -> tuple[str, ...]:
    if phantom == "shepp_logan":
        return ("normal",)
    mod = skull_module()
    return tuple(mod.VARIANTS) if mod is not None else ()


@dataclass(frozen=True)
class SampleSpec:
    """Everything that determines one sample (picklable; sent to workers).

    ``seed`` is the sample's own seed (anatomy, perturbation, noise), derived from the dataset
    seed and ``index``; ``grid`` is the voxel count per axis.
    """

    index: int
    seed: int
    variant: str
    age_years: float
    split: str
    grid: int = 64
    binning: int = DEFAULT_BINNING
    phantom: str = "skull"
    kind: str = "line_integrals"
    perturbation: tuple = ()  # GeometryPerturbation fields as (key, value) pairs
    intensity: tuple = ()
    backend: str = "auto"
    supersample: int = 2
    physics: tuple = ()  # keyword arguments of tomoprior.physics.radiograph as (key, value) pairs
    realism: str = ""  # Realism.to_json() (pose, motion, acquisition physics); "" = none
    skull_anatomy: str = "v2"  # model version of the procedural skull (tomoprior.phantoms.skull.ANATOMY_VERSIONS)


def sample_seed(seed: int, index: int) -> int:
    """The per-sample seed: a 63-bit integer from ``SeedSequence(seed, spawn_key=(index,))``."""
    return int(np.random.SeedSequence(int(seed), spawn_key=(int(index),)).generate_state(2, np.uint64)[0] >> 1)


def make_specs(n: int, *, seed: int = 0, grid: int = 64, binning: int = DEFAULT_BINNING,
               variants: Sequence[str] | None = None, age_range=DEFAULT_AGE_RANGE, phantom: str = "skull",
               kind: str = "line_integrals", perturbation: GeometryPerturbation | None = None,
               intensity: IntensityAugmentation | None = None, fractions=(0.8, 0.1, 0.1), start: int = 0,
               backend: str = "auto", supersample: int = 2, physics: dict | None = None,
               realism: Realism | None = None, skull_anatomy: str = "v2") -> list[SampleSpec]:
    """Specs of samples ``start .. start + n - 1``.

    Variants cycle through ``variants`` in order (balanced classes); ages are uniform in
    ``age_range`` (years); the split is :func:`assign_splits` of the block. ``physics`` holds
    keyword arguments of ``tomoprior.physics.radiograph`` for ``kind="radiograph"`` (e.g.
    ``photons_per_pixel``, ``heel``, ``focal_spot_mm``); numbers, strings and booleans only.
    ``realism`` (:class:`~tomoprior.data.Realism`) adds head pose, motion between the exposures
    and the acquisition physics to every sample (None or ``Realism.preset("none")``: off).
    ``skull_anatomy`` is the procedural skull's model version (``"v2"``, or ``"v1"``: the
    first model, e.g. to regenerate data that older weights were trained on).
    """
    if skull_anatomy not in ("v1", "v2"):
        raise ValueError(f"skull_anatomy must be 'v1' or 'v2' (the procedural skull's model version), "
                         f"got {skull_anatomy!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if phantom not in PHANTOMS:
        raise ValueError(f"phantom must be one of {PHANTOMS}, got {phantom!r}")
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 8:
        raise ValueError(f"grid must be an integer >= 8 (voxels per axis), got {grid!r}")
    if isinstance(binning, bool) or not isinstance(binning, int) or binning < 1 or 1536 % binning:
        raise ValueError(f"binning must be a positive divisor of the 1536-pixel detector (e.g. 4, 6, 8, 12, 16, 24, "
                         f"32), got {binning!r}")
    allowed = available_variants(phantom)
    if phantom == "skull" and not allowed:
        raise ValueError("the procedural skull phantom (tomoprior.phantoms.skull) is not available in this "
                         "installation; use phantom='shepp_logan'")
    variants = tuple(allowed if variants is None else variants)
    if not variants:
        raise ValueError("variants must name at least one variant")
    bad = [v for v in variants if v not in allowed]
    if bad:
        raise ValueError(f"unknown variant(s) {bad} for the {phantom} phantom; choose from {allowed}")
    lo, hi = (float(a) for a in age_range)
    if not (0 <= lo <= hi <= 18):
        raise ValueError(f"age_range must be (min, max) years with 0 <= min <= max <= 18, got {age_range!r}")
    if kind not in ("line_integrals", "radiograph"):
        raise ValueError(f"kind must be 'line_integrals' or 'radiograph', got {kind!r}")
    if realism is not None and not isinstance(realism, Realism):
        raise ValueError(f"realism must be a tomoprior.data.Realism or None, got {type(realism).__name__}")
    realism_json = "" if realism is None or realism.is_none else realism.to_json()
    physics = dict(physics or {})
    if physics and realism is not None and realism.radiograph is not None:
        raise ValueError("give the acquisition either as realism.radiograph or as physics options, not both")
    if physics and kind != "radiograph":
        raise ValueError("physics options apply to kind='radiograph' only")
    for k, v in physics.items():
        if not isinstance(v, (int, float, str, bool)):
            raise ValueError(f"physics option {k} must be a number, string or bool (it is stored with the sample), "
                             f"got {type(v).__name__}")
    splits = assign_splits(n, seed, fractions, start=start)
    specs = []
    for k in range(n):
        i = start + k
        s = sample_seed(seed, i)
        age = float(np.random.default_rng([s, 1]).uniform(lo, hi))
        specs.append(SampleSpec(
            index=i, seed=s, variant=variants[i % len(variants)], age_years=age, split=splits[k], grid=grid,
            binning=binning, phantom=phantom, kind=kind,
            perturbation=tuple(asdict(perturbation).items()) if perturbation is not None else (),
            intensity=tuple(asdict(intensity).items()) if intensity is not None else (),
            backend=backend, supersample=supersample, physics=tuple(sorted(physics.items())),
            realism=realism_json, skull_anatomy=skull_anatomy,
        ))
    return specs


_THREADS_LOCK = threading.Lock()
_THREADS_STATE = {"depth": 0, "saved": 1}


@contextlib.contextmanager
def _single_thread():
    """torch runs single-threaded inside: parallelism is across samples, and one thread per
    sample keeps sums bit-reproducible. Re-entrant and safe when several threads generate at
    once (Dask's threads scheduler): the last one out restores the previous setting."""
    with _THREADS_LOCK:
        if _THREADS_STATE["depth"] == 0:
            _THREADS_STATE["saved"] = torch.get_num_threads()
            torch.set_num_threads(1)
        _THREADS_STATE["depth"] += 1
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _THREADS_STATE["depth"] -= 1
            if _THREADS_STATE["depth"] == 0:
                torch.set_num_threads(_THREADS_STATE["saved"])


def sample_grid(spec: SampleSpec) -> VolumeGrid:
    if spec.phantom == "skull":
        mod = skull_module()
        if mod is None:
            raise ValueError("the procedural skull phantom is not available; use phantom='shepp_logan'")
        return mod.default_grid(shape=spec.grid)
    return DEFAULT_GRID.with_shape((spec.grid,) * 3, keep="extent")


def _phantom(spec: SampleSpec):
    """The phantom object and its label/provenance extras."""
    if spec.phantom == "skull":
        mod = skull_module()
        skull = mod.make_skull(age_years=spec.age_years, variant=spec.variant, seed=spec.seed,
                               anatomy=spec.skull_anatomy)
        extra = {}
        with contextlib.suppress(Exception):
            extra["cephalic_index"] = float(skull.cephalic_index())
        params = {}
        with contextlib.suppress(Exception):
            params = skull.to_dict()
        return skull, extra, params
    from ..phantoms import Phantom

    # a child-sized Shepp-Logan head, scaled with age (about +-8 %) and shifted by a few mm
    rng = np.random.default_rng([spec.seed, 2])
    scale = 0.92 + 0.16 * min(spec.age_years / 2.0, 1.0)
    offset = rng.uniform(-3.0, 3.0, 3)
    ph = Phantom.load("shepp_logan_3d_modified").scaled(scale).translated(tuple(offset))
    return ph, {}, {"scale": scale, "offset_mm": offset.tolist()}


def generate_sample(spec: SampleSpec) -> Sample:
    """Make one sample (volume, X-rays, geometry, labels, provenance) from its spec."""
    t0, c0 = time.perf_counter(), time.process_time()
    with _single_thread(), torch.no_grad():
        grid = sample_grid(spec)
        geom = BiplanarGeometry.from_parameters(grid=grid, binning=spec.binning)
        phantom, extra, params = _phantom(spec)
        volume = phantom.rasterize(grid, supersample=spec.supersample)
        volume = torch.as_tensor(volume).to(torch.float32)
        pert = GeometryPerturbation(**dict(spec.perturbation)) if spec.perturbation else None
        inten = IntensityAugmentation(**dict(spec.intensity)) if spec.intensity else None
        realism = Realism.from_json(spec.realism) if spec.realism else None
        drr = synthesize(volume, geom, kind=spec.kind, perturbation=pert, intensity=inten, seed=spec.seed,
                         backend=spec.backend, physics_options=dict(spec.physics) or None, realism=realism)
    labels = {"variant": spec.variant, "age_years": spec.age_years, "normal": spec.variant == "normal", **extra}
    prov = {"spec": asdict(spec), "phantom_parameters": params, "augmentation": drr.augmentation,
            "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
            "made_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return Sample(volume=volume, grid=grid, xrays=drr.xrays, geometry=drr.geometry, labels=labels, provenance=prov,
                  nominal_geometry=drr.nominal_geometry, split=spec.split)


def _init_worker(parent_pid: int | None = None) -> None:
    """Initialise a pool worker: one torch thread; Ctrl-C is the parent's to handle (it stops
    the pool); and the worker dies with its parent, even a parent killed by SIGKILL."""
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if parent_pid is None:
        return
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            # PR_SET_PDEATHSIG = 1: the kernel sends SIGTERM when the parent dies
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True, name="tomoprior-parent-watch").start()


def _watch_parent(parent_pid: int, interval_s: float = 1.0) -> None:
    # portable fallback of PR_SET_PDEATHSIG: an orphan is re-parented, so its parent PID changes
    while True:
        time.sleep(interval_s)
        if os.getppid() != parent_pid:
            os._exit(1)


def iter_samples(specs: Sequence[SampleSpec], workers: int = 1) -> Iterable[Sample]:
    """Samples in spec order, made in this process (``workers <= 1``) or by a pool of
    ``workers`` spawned processes (spawn: safe with torch and h5py, same on every OS).

    Close the iterator (``contextlib.closing``) to stop the pool at once when the consumer
    fails; workers also exit when this process dies."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be a non-negative integer, got {workers!r}")
    if workers <= 1 or len(specs) <= 1:
        for spec in specs:
            yield generate_sample(spec)
        return
    ctx = mp.get_context("spawn")
    with ctx.Pool(min(workers, len(specs)), initializer=_init_worker, initargs=(os.getpid(),)) as pool:
        yield from pool.imap(generate_sample, specs, chunksize=1)


def generate(specs: Sequence[SampleSpec], out, *, workers: int = 1, mode: str = "w", compression: str = "gzip",
             progress: bool = False) -> Path:
    """Generate ``specs`` into the dataset file ``out`` (atomically; ``mode="a"`` appends).

    Returns the path. Nothing is written if any sample fails, the disk fills up
    (:class:`~tomoprior._atomic.DiskFullError`) or the process is interrupted; the worker
    processes stop with it.
    """
    specs = list(specs)
    if not specs:
        raise ValueError("no sample to generate")
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(specs), desc="samples", unit="sample")
    attrs = {"xray_kind": specs[0].kind,
             "xray_units": "attenuation x mm" if specs[0].kind == "line_integrals" else "raw detector counts",
             "phantom": specs[0].phantom, "realism": specs[0].realism or "none"}
    try:
        with DatasetWriter(out, mode=mode, compression=compression, attrs=attrs, expected_samples=len(specs)) as w, \
                contextlib.closing(iter_samples(specs, workers)) as samples:
            for sample in samples:
                w.append(sample)
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return Path(out)


def _write_shard(specs: list[SampleSpec], folder: str, compression: str) -> str:
    specs = list(specs)
    path = Path(folder) / f"shard-{specs[0].index:09d}.h5"
    generate(specs, path, workers=1, compression=compression)
    return str(path)


def generate_dask(specs: Sequence[SampleSpec], out, *, partitions: int | None = None, scheduler: str = "processes",
                  compression: str = "gzip", shard_dir=None, num_workers: int | None = None) -> Path:
    """The same generation on Dask: each partition of specs becomes one shard file (written
    by whichever worker runs it, atomically), and the shards are merged into ``out`` in index
    order. With ``dask.distributed`` (a ``Client`` connected to a cluster) the same graph runs
    across machines; then ``shard_dir`` must be a folder every worker can write to.

    Parameters
    ----------
    partitions : int, optional
        Number of shards (default: about 10 samples per shard).
    scheduler : str
        Dask scheduler for ``compute`` (``"processes"``, ``"threads"``, ``"synchronous"``, or
        ignored when a distributed Client is active and ``scheduler=None``).
    num_workers : int, optional
        Workers of the local ``processes``/``threads`` scheduler (default: Dask's, the CPU count).
    """
    import dask.bag as db

    specs = list(specs)
    if not specs:
        raise ValueError("no sample to generate")
    parts = partitions or max(1, math.ceil(len(specs) / 10))
    with contextlib.ExitStack() as stack:
        # named like an atomic temporary of ``out``: removed as stale if this process is killed
        folder = shard_dir or stack.enter_context(tempfile.TemporaryDirectory(
            prefix=temporary_prefix(out), suffix=".shards", dir=Path(out).parent))
        bag = db.from_sequence(specs, npartitions=min(parts, len(specs)))
        shards = bag.map_partitions(lambda ss: [_write_shard(ss, str(folder), compression)])
        kw = {"num_workers": num_workers} if num_workers and scheduler in ("processes", "threads") else {}
        paths = shards.compute(scheduler=scheduler, **kw) if scheduler else shards.compute()
        paths = sorted(paths)  # shard names carry the first index: index order
        merge(paths, out, compression=compression)
        if shard_dir is not None:
            for p in paths:
                Path(p).unlink(missing_ok=True)
    return Path(out)
