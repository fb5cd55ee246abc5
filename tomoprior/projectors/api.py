"""``project`` and ``backproject``: the public, differentiable projector calls.

They validate the input, check the memory estimate and call the backend through the autograd
functions of :mod:`~tomoprior.projectors.base`: only the whole-operator :class:`Backend`
contract (``forward``, ``adjoint``, ``vector_grad``, ``memory_estimate``, ``progress_steps``),
whatever the backend's kernels are.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .._memory import InsufficientMemoryError, check_memory
from ..geometry.geometry import Geometry
from .base import Backend, BackprojectFunction, OperatorSpec, ProjectFunction
from .registry import get_backend

_FLOATS = (torch.float32, torch.float64)
_FLOAT_NAMES = ("torch.float32", "torch.float64", "float32", "float64")
_SIZE_FIX = ("bin the detector (fewer, larger pixels: ViewParameters.binned or --binning), use a coarser grid "
             "or fewer views, or process the batch in parts")


def _job(geometry: Geometry, batch: int, dtype, be: Backend, adjoint: bool) -> str:
    """Plain-words description of a projection job, for error messages."""
    nz, ny, nx = geometry.grid.shape
    shapes = geometry.detector_shapes
    if len(set(shapes)) == 1:
        det = f"{len(shapes)} view(s) of {shapes[0][0]} x {shapes[0][1]} pixels"
    else:
        det = f"{len(shapes)} views of up to {max(r * c for r, c in shapes)} pixels"
    verb, prep = ("back-projecting", "from") if adjoint else ("projecting", "into")
    kind = str(dtype).replace("torch.", "")
    return f"{verb} a {nz} x {ny} x {nx} volume {prep} {det} ({kind}, batch {batch}, backend {be.name})"


def _check_size(geometry: Geometry, batch: int, dtype, be: Backend, adjoint: bool) -> None:
    itemsize = torch.finfo(dtype).bits // 8
    need = be.memory_estimate(geometry.grid, geometry.detector_shapes, max(batch, 1), itemsize, adjoint=adjoint)
    check_memory(need, _job(geometry, batch, dtype, be, adjoint), _SIZE_FIX)


def _run(fn, geometry: Geometry, batch: int, dtype, be: Backend, adjoint: bool):
    """Call ``fn()``; an allocation failure the estimate did not foresee becomes a clear error."""
    try:
        return fn()
    except InsufficientMemoryError:
        raise
    except MemoryError:
        pass
    except RuntimeError as exc:
        text = str(exc).lower()
        if "alloc" not in text and "out of memory" not in text:
            raise
    raise InsufficientMemoryError(
        f"{_job(geometry, batch, dtype, be, adjoint)} ran out of memory; {_SIZE_FIX}", 0, 0) from None


def _check_overflow(out: torch.Tensor, source: torch.Tensor, what: str) -> None:
    """Finite input but non-finite output: the sums overflowed the dtype. Say so instead of
    handing back ``inf``."""
    if not out.numel():
        return
    lo, hi = torch.aminmax(out.detach())
    if bool(torch.isfinite(lo) & torch.isfinite(hi)):
        return
    peak = float(source.detach().abs().max()) if source.numel() else 0.0
    kind = str(out.dtype).replace("torch.", "")
    fix = ("compute in float64 (.double()) or rescale the input" if out.dtype == torch.float32
           else "rescale the input")
    raise ValueError(f"{what} overflowed {kind} (the input is finite, largest |value| {peak:.3g}, but the sums "
                     f"exceed {torch.finfo(out.dtype).max:.3g}); {fix}")


def _check_geometry(geometry) -> Geometry:
    if not isinstance(geometry, Geometry):
        raise ValueError(f"geometry must be a tomoprior Geometry, got {type(geometry).__name__}")
    return geometry


def _as_float_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if x.dtype not in _FLOATS:
        raise ValueError(f"{name} must be float32 or float64, got {x.dtype}; convert with .float() or .double()")
    if x.numel():
        # min and max propagate NaN and carry +-inf: a check without a full-size temporary
        lo, hi = torch.aminmax(x.detach())
        if not bool(torch.isfinite(lo) & torch.isfinite(hi)):
            raise ValueError(f"{name} contains NaN or infinite values; replace them (e.g. torch.nan_to_num) "
                             "before passing it")
    return x


def _progress(enabled: bool, total: int, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="chunk", leave=False)


def _vectors(geometry: Geometry, device) -> torch.Tensor:
    vec = geometry.vectors.to(device=device)
    return vec if vec.dtype == torch.float64 else vec.to(torch.float64)


def project(volume, geometry: Geometry, backend: str | Backend = "auto", *, progress: bool = False,
            **options):
    """Forward-project (digitally reconstructed radiographs as line integrals).

    Parameters
    ----------
    volume : Tensor, shape ``(..., nz, ny, nx)``, float32 or float64
        Attenuation per mm on ``geometry.grid``; leading batch dimensions are allowed.
    geometry : Geometry
        Grid and views. Gradients flow into the view vectors if they require grad (e.g.
        views built from :class:`~tomoprior.geometry.ViewParameters` holding tensors).
    backend : str or Backend
        ``"auto"`` (default): ``"numba"`` for CPU tensors, ``"torch"`` on other devices
        (see :func:`tomoprior.projectors.resolve_backend`). Or a name:
        ``"numba"`` (Joseph's method, parallel CPU kernels), ``"torch"`` (trilinear ray
        marching, CPU and CUDA), ``"reference"`` (exact Siddon path lengths, slow),
        ``"astra"`` (CUDA only), any name in :func:`tomoprior.projectors.available_backends`.
        The backends model the volume slightly differently (piecewise-trilinear vs
        bilinear-per-plane vs piecewise-constant voxels): use the same backend for a
        projection and its adjoint.
    progress : bool
        Show a progress bar over chunks.
    **options
        Backend options, e.g. ``step=0.5`` (fraction of a voxel) and ``chunk_samples`` for
        ``"torch"``.

    Returns
    -------
    Tensor, shape ``(..., views, rows, cols)``
        Line integrals (attenuation x mm), same dtype and device as ``volume``. If the views
        have different detector shapes, a tuple of per-view tensors ``(..., rows_i, cols_i)``.

    Raises
    ------
    ValueError
        Wrong types, shapes or dtypes, NaN or infinite input, or sums that overflow the
        dtype (compute in float64 or rescale); the message names the argument.
    InsufficientMemoryError (a ValueError and a MemoryError)
        The job needs more memory than is available (estimated before allocating; see
        :mod:`tomoprior._memory` for the ``TOMOPRIOR_MEMORY_LIMIT`` override); the message
        gives the number and how to need less.

    Examples
    --------
    >>> import torch, tomoprior as tp
    >>> geom = tp.BiplanarGeometry.from_parameters(binning=16, grid=tp.VolumeGrid((32, 32, 32), (6, 6, 6)))
    >>> tp.project(torch.ones(32, 32, 32), geom).shape
    torch.Size([2, 96, 96])
    """
    geometry = _check_geometry(geometry)
    volume = _as_float_tensor(volume, "volume")
    grid = geometry.grid
    if volume.ndim < 3 or tuple(volume.shape[-3:]) != grid.shape:
        raise ValueError(
            f"volume must have shape (..., {grid.nz}, {grid.ny}, {grid.nx}) to match geometry.grid, "
            f"got {tuple(volume.shape)}"
        )
    be = get_backend(backend, volume.device, **options)
    lead = volume.shape[:-3]
    batch = int(np.prod(lead)) if len(lead) else 1
    _check_size(geometry, batch, volume.dtype, be, adjoint=False)
    vol = volume.reshape(-1, *grid.shape).contiguous()
    vectors = _vectors(geometry, vol.device)
    shapes = geometry.detector_shapes
    bar = _progress(progress, be.progress_steps(grid, shapes, vectors) if progress else 0, f"project ({be.name})")
    try:
        flat = _run(lambda: ProjectFunction.apply(vol, vectors, OperatorSpec(be, grid, shapes, bar)),
                    geometry, batch, volume.dtype, be, adjoint=False)
    finally:
        if bar is not None:
            bar.close()
    _check_overflow(flat, vol, "the projection")
    return _split_views(flat, lead, shapes, geometry.uniform_detector)


def backproject(projections, geometry: Geometry, backend: str | Backend = "auto", *, progress: bool = False,
                **options) -> torch.Tensor:
    """Back-project: the exact adjoint (transpose) of :func:`project` with the same settings.

    Parameters
    ----------
    projections : Tensor ``(..., views, rows, cols)`` or sequence of per-view ``(..., rows_i, cols_i)``
        Values per pixel (e.g. line integrals or gradients with respect to them).
    geometry, backend, progress, **options
        As for :func:`project`; use the same to get the adjoint of the same operator.

    Returns
    -------
    Tensor, shape ``(..., nz, ny, nx)``
        ``P^T y``, so that ``<P x, y> = <x, P^T y>``. Units: projection units x mm. This is
        not normalised by ray coverage (see the refiners' geometry prior for that).

    Raises
    ------
    ValueError, InsufficientMemoryError
        As for :func:`project`.
    """
    geometry = _check_geometry(geometry)
    shapes = geometry.detector_shapes
    peek = _peek(projections)
    if peek is not None:  # size check before the inputs are validated and joined (which copies them)
        batch, dtype, device = peek
        _check_size(geometry, batch, dtype, get_backend(backend, device, **options), adjoint=True)
    flat, lead = _join_views(projections, shapes, geometry.uniform_detector)
    be = get_backend(backend, flat.device, **options)
    batch = flat.shape[0]
    _check_size(geometry, batch, flat.dtype, be, adjoint=True)
    vectors = _vectors(geometry, flat.device)
    bar = _progress(progress, be.progress_steps(geometry.grid, shapes, vectors) if progress else 0,
                    f"backproject ({be.name})")
    try:
        vol = _run(lambda: BackprojectFunction.apply(flat, vectors, OperatorSpec(be, geometry.grid, shapes, bar)),
                   geometry, batch, flat.dtype, be, adjoint=True)
    finally:
        if bar is not None:
            bar.close()
    _check_overflow(vol, flat, "the back-projection")
    return vol.reshape(*lead, *geometry.grid.shape)


def _peek(projections):
    """``(batch, dtype, device)`` of projections that look valid, without touching their data;
    None otherwise (the full validation then explains what is wrong)."""
    first, per_view = projections, False
    if not isinstance(projections, (np.ndarray, torch.Tensor)):
        if not isinstance(projections, Sequence) or not projections:
            return None
        first, per_view = projections[0], True
    if not isinstance(first, (np.ndarray, torch.Tensor)) or str(first.dtype) not in _FLOAT_NAMES:
        return None
    lead = first.shape[:-2] if per_view else first.shape[:-3]
    dtype = torch.float64 if str(first.dtype).endswith("64") else torch.float32
    device = first.device if isinstance(first, torch.Tensor) else torch.device("cpu")
    return (int(np.prod(lead)) if len(lead) else 1), dtype, device


def _split_views(flat: torch.Tensor, lead, shapes, uniform: bool):
    if uniform:
        return flat.reshape(*lead, len(shapes), *shapes[0])
    out, offset = [], 0
    for r, c in shapes:
        out.append(flat[:, offset:offset + r * c].reshape(*lead, r, c))
        offset += r * c
    return tuple(out)


def _join_views(projections, shapes, uniform: bool):
    if isinstance(projections, (np.ndarray, torch.Tensor)):
        p = _as_float_tensor(projections, "projections")
        if not uniform:
            raise ValueError(
                f"views have different detector shapes {shapes}; pass projections as a sequence of per-view "
                "tensors (..., rows_i, cols_i)"
            )
        v, (r, c) = len(shapes), shapes[0]
        if p.ndim < 3 or tuple(p.shape[-3:]) != (v, r, c):
            raise ValueError(f"projections must have shape (..., {v}, {r}, {c}) to match the geometry, "
                             f"got {tuple(p.shape)}")
        lead = p.shape[:-3]
        return p.reshape(-1, v * r * c).contiguous(), lead
    if isinstance(projections, Sequence):
        if len(projections) != len(shapes):
            raise ValueError(f"projections has {len(projections)} views but the geometry has {len(shapes)}")
        parts, lead = [], None
        for i, (p, (r, c)) in enumerate(zip(projections, shapes)):
            p = _as_float_tensor(p, f"projections[{i}]")
            if p.ndim < 2 or tuple(p.shape[-2:]) != (r, c):
                raise ValueError(f"projections[{i}] must have shape (..., {r}, {c}), got {tuple(p.shape)}")
            if lead is None:
                lead = p.shape[:-2]
            elif p.shape[:-2] != lead:
                raise ValueError(f"projections[{i}] has batch shape {tuple(p.shape[:-2])}, expected {tuple(lead)}")
            parts.append(p.reshape(-1, r * c))
        dtype = parts[0].dtype
        for p in parts[1:]:
            dtype = torch.promote_types(dtype, p.dtype)
        return torch.cat([p.to(dtype) for p in parts], dim=1).contiguous(), lead
    raise ValueError(f"projections must be a tensor, an array or a sequence of per-view tensors, "
                     f"got {type(projections).__name__}")
