"""The geometry prior: X-rays (or any 2D feature maps) lifted into the volume grid through
the exact :class:`~tomoprior.Geometry`, normalised per voxel by ray coverage.

Definitions (per view ``v``, voxel centre ``x``, feature map ``F_v`` spanning the detector)
-----------------------------------------------------------------------------------------
- ``pi_v(x)``: the exact pinhole projection of ``x`` onto view ``v``'s detector
  (``View.projection_matrix``), a ``(col, row)`` pixel coordinate.
- ``m_v(x)`` (the *mask*): 1 if ``x`` lies in front of the source and ``pi_v(x)`` falls
  on the detector (``-0.5 <= col <= cols - 0.5`` and the same for rows), else 0.
- Normalised per-view volume (``normalize=True``, the default):
  ``B_v(x) = m_v(x) * F_v(pi_v(x))`` with bilinear interpolation of ``F_v`` (edge values
  held up to the detector border). Units: those of the features (e.g. attenuation x mm for
  line integrals). This is the ray-driven back-projection divided by the back-projection of
  ones, ``backproject(F)/backproject(1)``: both are sums over the rays that cross the voxel
  weighted by their intersection lengths, so for a feature map that is smooth on the scale
  of a voxel's footprint the ratio is the feature value at ``pi_v(x)`` (tested, see
  ``tests/refiners/test_prior.py``).
- Unnormalised (``normalize=False``): ``m_v(x) F_v(pi_v(x)) * V_vox * rho_v(x)`` where
  ``V_vox = sx sy sz`` and ``rho_v(x) = D_v^2 r / (A h^3)`` is the density of rays (rays
  per mm^2 across the beam) at ``x``: ``D_v`` the perpendicular source-to-detector
  distance, ``A`` the area of one feature pixel on the detector, ``r = |x - s|`` and ``h``
  the depth of ``x`` along the detector normal. This is the continuum limit of the
  ray-driven :func:`tomoprior.backproject` (units: feature units x mm).
- Fusion (``fuse="mean"``): ``prior(x) = sum_v m_v B_v / max(sum_v m_v, 1)``, the mean over
  the views that see the voxel (0 where none does).

The voxel-driven path (``mode="voxel"``) costs one bilinear lookup per voxel, view and
channel and is differentiable with respect to the features and to the view vectors (through
the projection matrix). ``mode="ray"`` computes the same quantities with the ray-driven
adjoint :func:`tomoprior.backproject` (slow; the reference).

Speed: the per-voxel detector coordinates, mask (and ray density) of a view depend only on
the view vector, the detector shape, the output grid, the feature-map size and the dtype,
so they are computed once and kept in a small cache keyed by exactly those (the vector by
its values, so a changed geometry never reuses a stale entry; at most
``_CACHE_MAX_ENTRIES`` entries and ``_CACHE_MAX_BYTES`` bytes, least recently used dropped
first). Geometries whose vectors require gradients are never cached: their coordinates are
recomputed on every call, differentiably. On the CPU the lifting then runs as numba
kernels (``_lift_kernels``: channels-last reads, all channels of a view per voxel, the
adjoint for the feature gradient) that reproduce ``grid_sample``'s arithmetic; elsewhere,
and for differentiable geometries, as one ``grid_sample`` per view over all channels.
32 channels of two 128^2 maps into 64^3 voxels, forward + backward: see
``benchmarks/feature_backprojection.py`` and docs/benchmarks.md.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - torch's own idiom

from ..geometry.geometry import Geometry
from ..geometry.grid import VolumeGrid
from ..geometry.view import View, projection_matrix_from_vector
from .base import _geometry_list

_FUSE = ("mean", "sum", "max", "min")
_MODES = ("voxel", "ray")


# -- input checks -------------------------------------------------------------------------

def _as_view_features(features, num_views: int | None = None) -> tuple[list[torch.Tensor], int, int]:
    """``(B, V, C, h, w)`` tensor or a sequence of V ``(B, C, h_v, w_v)`` -> list, B, C."""
    if isinstance(features, torch.Tensor):
        if features.ndim != 5:
            raise ValueError(
                f"features must have shape (B, V, C, h, w) (or be a list of V tensors (B, C, h, w)), "
                f"got {tuple(features.shape)}; add a channel axis with features.unsqueeze(2)"
            )
        per_view = list(features.unbind(1))
    elif isinstance(features, Sequence) and not isinstance(features, (str, bytes)):
        per_view = list(features)
        for i, f in enumerate(per_view):
            if not isinstance(f, torch.Tensor) or f.ndim != 4:
                got = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
                raise ValueError(f"features[{i}] must be a tensor (B, C, h, w), got {got}")
    else:
        raise TypeError(
            f"features must be a torch.Tensor (B, V, C, h, w) or a list of them, got {type(features).__name__}"
        )
    if not per_view:
        raise ValueError("features hold no views")
    b, c = per_view[0].shape[:2]
    for i, f in enumerate(per_view):
        if not f.is_floating_point():
            raise ValueError(f"features must be floating point, got {f.dtype} (view {i}); use .float()")
        if tuple(f.shape[:2]) != (b, c):
            raise ValueError(f"features[{i}] has (B, C) = {tuple(f.shape[:2])}, expected {(b, c)} as view 0")
        if f.device != per_view[0].device or f.dtype != per_view[0].dtype:
            raise ValueError("all views' features must share one dtype and device")
    if num_views is not None and len(per_view) != num_views:
        raise ValueError(f"features have V={len(per_view)} views but the geometry has {num_views}")
    return per_view, b, c


def _check_finite(t: torch.Tensor, name: str) -> None:
    if not t.numel():
        return
    # aminmax propagates NaN and shows +-inf, in one pass (isfinite().all() is ~20x slower on CPU)
    lo, hi = torch.aminmax(t.detach())
    if not (bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))):
        raise ValueError(f"{name} contains NaN or infinite values; clean them before building the prior")


def _resolve_grid(geoms: list[Geometry], grid: VolumeGrid | None) -> VolumeGrid:
    if grid is not None:
        if not isinstance(grid, VolumeGrid):
            raise TypeError(f"grid must be a tomoprior VolumeGrid, got {type(grid).__name__}")
        return grid
    g0 = geoms[0].grid
    for i, g in enumerate(geoms[1:], 1):
        if g.grid != g0:
            raise ValueError(
                f"geometry[{i}].grid {g.grid} differs from geometry[0].grid {g0}; per-sample volumes must share "
                "one grid: pass grid= explicitly"
            )
    return g0


# -- voxel-driven core --------------------------------------------------------------------

def _voxel_projection(view: View, grid: VolumeGrid, device, dtype=torch.float64):
    """Normalised ``grid_sample`` coordinates of every voxel centre and a visibility mask.

    Returns ``gx, gy`` (``dtype``, ``(nz, ny, nx)``) with ``-1/+1`` at the outer pixel edges of
    the detector (columns/rows ``-0.5`` and ``cols - 0.5``), differentiable in the view
    vector, and the bool mask ``front & |gx| <= 1 & |gy| <= 1`` (``front``: between the source
    and the detector plane). The projection matrix is
    built in float64; ``P @ (x, y, z, 1)`` is separable over the grid axes, so each output
    is a sum of three broadcast 1D terms.
    """
    vec = view.vector.to(device=device, dtype=torch.float64)
    rows, cols = view.shape
    P = projection_matrix_from_vector(vec, view.shape)  # (3, 4): (col, row, 1) ~ P (x, y, z, 1)
    # fold the pixel -> [-1, 1] normalisation into the matrix: g = (2 p + 1)/n - 1
    G = torch.stack([(2 * P[0] + P[2]) / cols - P[2], (2 * P[1] + P[2]) / rows - P[2], P[2]])
    s, c = vec[0:3], vec[3:6]
    G = G.to(dtype)  # projection_matrix_from_vector's sign makes den > 0 in front of the source
    x, y, z = (a.to(dtype) for a in grid.axis_coordinates(dtype=torch.float64, device=device))

    def row(i):
        return (G[i, 0] * x + G[i, 3])[None, None, :] + (G[i, 1] * y)[None, :, None] + (G[i, 2] * z)[:, None, None]

    den = row(2)
    front = den.detach() > 0
    # voxels beyond the detector plane are not on any ray from the source to a pixel (the
    # projectors' rays end at the detector): leave them out as the projectors do
    n = torch.linalg.cross(vec[6:9], vec[9:12])
    n = n / torch.linalg.norm(n)
    d_det = float(torch.dot(c - s, n).detach().abs())
    sgn = float(torch.sign(torch.dot(c - s, n).detach()))
    xd, yd, zd = (a.detach() for a in (x, y, z))
    depth = sgn * ((n[0] * xd - torch.dot(s, n)).to(dtype)[None, None, :] + (n[1] * yd)[None, :, None]
                   + (n[2] * zd)[:, None, None])
    front = front & (depth <= d_det * (1 + 1e-12))
    all_front = bool(front.all())
    safe = den if all_front else torch.where(front, den, torch.ones_like(den))
    inv = 1.0 / safe
    gx, gy = row(0) * inv, row(1) * inv
    mask = (gx.detach().abs() <= 1.0) & (gy.detach().abs() <= 1.0)
    if not all_front:
        mask &= front
        gx = torch.where(front, gx, torch.zeros_like(gx))
        gy = torch.where(front, gy, torch.zeros_like(gy))
    return gx, gy, mask


def _ray_density(view: View, grid: VolumeGrid, feature_shape, device) -> torch.Tensor:
    """``V_vox * rho(x)``: continuum value of the ray-driven back-projection of ones at every
    voxel for rays through the centres of a ``feature_shape`` pixel grid spanning the detector."""
    vec = view.vector.to(device=device, dtype=torch.float64)
    s, c, u, v = vec[0:3], vec[3:6], vec[6:9], vec[9:12]
    n = torch.linalg.cross(u, v)
    area_det = torch.linalg.norm(n)
    n_hat = n / area_det
    rows, cols = view.shape
    h, w = feature_shape
    area = area_det * (rows / h) * (cols / w)  # one feature pixel, mm^2
    dist = torch.dot(c - s, n_hat).abs()
    x, y, z = grid.axis_coordinates(dtype=torch.float64, device=device)
    dx, dy, dz = x - s[0], y - s[1], z - s[2]
    r = torch.sqrt(dx[None, None, :] ** 2 + dy[None, :, None] ** 2 + dz[:, None, None] ** 2)
    depth = (n_hat[0] * dx[None, None, :] + n_hat[1] * dy[None, :, None] + n_hat[2] * dz[:, None, None]).abs()
    sz, sy, sx = grid.spacing
    return (sx * sy * sz) * dist**2 * r / (area * depth**3)


# -- cache of per-view sampling tables ----------------------------------------------------

#: Most entries (one per view, grid, feature size, dtype, device) and bytes the cache keeps.
_CACHE_MAX_ENTRIES = 32
_CACHE_MAX_BYTES = 512 * 2**20
_CACHE: OrderedDict = OrderedDict()  # key -> (entry, nbytes), least recently used first
_CACHE_LOCK = threading.Lock()


def _clear_cache() -> None:
    """Drop every cached sampling table (tests, or to free memory)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def _cache_key(kind: str, view: View, grid: VolumeGrid, hw, dtype, device, normalize: bool) -> tuple:
    """Everything a sampling table depends on; the view vector by value (float64 bytes), so
    a geometry changed in place or rebuilt with other numbers gets its own entry. The
    feature size matters to the numba table always, to the grid_sample one only through
    the ray density (``normalize=False``)."""
    vec = view.vector.detach().to(device="cpu", dtype=torch.float64).numpy().tobytes()
    size = tuple(int(n) for n in hw) if (kind == "numba" or not normalize) else None
    return (kind, vec, tuple(view.shape), grid, size, dtype, str(device), bool(normalize))


def _cached(key: tuple, make):
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
            return hit[0]
    entry, nbytes = make()
    with _CACHE_LOCK:
        _CACHE[key] = (entry, nbytes)
        _CACHE.move_to_end(key)
        total = sum(n for _, n in _CACHE.values())
        while len(_CACHE) > _CACHE_MAX_ENTRIES or (total > _CACHE_MAX_BYTES and len(_CACHE) > 1):
            _, (_, n) = _CACHE.popitem(last=False)
            total -= n
    return entry


def _grid_entry(view: View, grid: VolumeGrid, hw, dtype, device, normalize: bool):
    """``grid_sample`` grid ``(1, nz, ny*nx, 2)``, bool mask ``(nz, ny, nx)`` and the factor
    ``(nz, ny, nx)`` the sampled volume is multiplied by (mask, times the ray density when
    unnormalised), all in ``dtype`` (float32 coordinates unless ``dtype`` is float64 or the
    view vector requires gradients)."""
    work = torch.float64 if (dtype == torch.float64 or view.vector.requires_grad) else dtype
    gx, gy, mask = _voxel_projection(view, grid, device, work)
    nz, ny, nx = grid.shape
    sample_grid = torch.stack((gx, gy), dim=-1).reshape(1, nz, ny * nx, 2).to(dtype)
    m = mask.to(dtype)
    if not normalize:
        m = m * _ray_density(view, grid, hw, device).to(dtype)
    return sample_grid, mask, m


def _sample_view(feat: torch.Tensor, view: View, grid: VolumeGrid,
                 normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One view with ``grid_sample``: ``feat (B, C, h, w)`` -> volumes ``(B, C, nz, ny, nx)`` and
    mask ``(nz, ny, nx)`` (the path for other devices and for differentiable geometries)."""
    b, ch, h, w = feat.shape
    out_dtype = feat.dtype
    if feat.dtype in (torch.float16, torch.bfloat16):
        # half-precision sampling coordinates would be off by up to a pixel: sample in float32
        feat = feat.float()
    # float32 coordinates are exact to ~1e-4 pixel; keep float64 when the features are float64
    # or the geometry carries gradients (pose refinement wants the precise derivative)
    if view.vector.requires_grad:  # differentiable geometry: never cached
        sample_grid, mask, m = _grid_entry(view, grid, (h, w), feat.dtype, feat.device, normalize)
    else:
        key = _cache_key("grid", view, grid, (h, w), feat.dtype, feat.device, normalize)

        def make():
            entry = _grid_entry(view, grid, (h, w), feat.dtype, feat.device, normalize)
            return entry, sum(t.numel() * t.element_size() for t in entry)

        sample_grid, mask, m = _cached(key, make)
    # grid_sample with align_corners=False maps -1/+1 to the outer pixel edges of any (h, w):
    # a feature map of any resolution spans exactly the detector (-0.5 .. cols-0.5).
    vol = F.grid_sample(feat.reshape(1, b * ch, h, w), sample_grid, mode="bilinear", padding_mode="border",
                        align_corners=False)
    vol = vol.reshape(b, ch, *grid.shape)
    return (vol * m).to(out_dtype), mask


# -- CPU path: numba kernels on cached tables ----------------------------------------------

class _Table:
    """Per-voxel upper-left pixel index, fractions and factor of one view (see ``_lift_kernels``)."""

    def __init__(self, view: View, grid: VolumeGrid, hw, dtype, normalize: bool):
        from . import _lift_kernels as lk

        h, w = (int(n) for n in hw)
        gx, gy, mask = _voxel_projection(view, grid, "cpu", dtype)
        scale = mask.to(dtype)
        if not normalize:
            scale = scale * _ray_density(view, grid, (h, w), "cpu").to(dtype)
        n = grid.num_voxels
        npd = _numpy_dtype(dtype)
        self.off = np.empty(n, dtype=np.int32)
        self.fx = np.empty(n, dtype=npd)
        self.fy = np.empty(n, dtype=npd)
        consts = np.array([w / 2, h / 2, w - 1, h - 1, 0.5, 1.0, 0.0], dtype=npd)
        lk.build_table(gx.reshape(-1).contiguous().numpy(), gy.reshape(-1).contiguous().numpy(), h, w, consts,
                      self.off, self.fx, self.fy)
        self.scale = scale.reshape(-1).contiguous().numpy()
        self.one = np.ones(1, dtype=npd)
        self.dy = w  # the next row's pixel; past the map, neighbours land in the w + 1 padding pixels
        self.mask = mask
        self.hw = (h, w)
        self.nbytes = self.off.nbytes + self.fx.nbytes + self.fy.nbytes + self.scale.nbytes + mask.numel()


def _table(view: View, grid: VolumeGrid, hw, dtype, normalize: bool) -> _Table:
    key = _cache_key("numba", view, grid, hw, dtype, "cpu", normalize)

    def make():
        t = _Table(view, grid, hw, dtype, normalize)
        return t, t.nbytes

    return _cached(key, make)


def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    return torch.empty(0, dtype=dtype).numpy().dtype


#: Voxels per tile of the forward kernel (tile: voxels x channels, transposed into the output).
_FORWARD_BLOCK = 64
#: Pixels per block of the channels-first <-> channels-last copies.
_COPY_BLOCK = 64
#: Voxels per tile of the adjoint kernel.
_ADJOINT_BLOCK = 256
#: Below this many voxel x channel values per call the kernels run on the calling thread:
#: handing work to other threads costs more than it saves (and much more on a loaded machine).
_PARALLEL_MIN_WORK = 1 << 18


def _kernel_threads(work: int) -> int:
    """``torch.get_num_threads()``, or 1 for small calls."""
    return 1 if work < _PARALLEL_MIN_WORK else max(1, torch.get_num_threads())


def _group_counts(tables) -> tuple:
    """How many of the views ``tables`` see each voxel, ``(N,)`` (at least 1), and that count as
    the lifting kernels apply it (``_lift_kernels.count_factor``); computed once per combination
    of tables and kept on the first one (a few per table at most; the other tables are held by
    weak references, so the memo keeps no table alive that the cache has dropped)."""
    import weakref

    from . import _lift_kernels as lk

    memo = tables[0].__dict__.setdefault("_counts", {})
    key = tuple(id(t) for t in tables)
    hit = memo.get(key)
    if hit is not None and all(ref() is t for ref, t in zip(hit[0], tables)):  # the same live objects
        return hit[1]
    dtype = tables[0].fx.dtype
    count = np.sum([t.mask.reshape(-1).numpy() for t in tables], axis=0, dtype=dtype)
    count = torch.from_numpy(np.maximum(count, dtype.type(1)))
    if len(memo) >= 4:
        memo.clear()
    memo[key] = (tuple(weakref.ref(t) for t in tables), (count, lk.count_factor(count.numpy())))
    return memo[key][1]


class _Plan:
    """Which table lifts which samples of which view: ``groups`` is a list of
    ``(b0, b1, tables per view)`` (one group for a geometry shared by the batch)."""

    def __init__(self, groups, batch: int, channels: int, grid: VolumeGrid, dtype):
        self.groups, self.batch, self.channels, self.grid, self.dtype = groups, batch, channels, grid, dtype
        self.num_views = len(groups[0][2])

    def view_counts(self) -> list[torch.Tensor]:
        """Per group, ``(N,)`` in the work dtype: how many views see each voxel, at least 1
        (``fuse_views``' "mean" denominator)."""
        return [_group_counts(tables)[0] for _, _, tables in self.groups]

    def count_factors(self) -> list:
        """Per group, the count of views as the lifting kernels apply it (``count_factor``)."""
        return [_group_counts(tables)[1] for _, _, tables in self.groups]

    def forward(self, feats, mean: bool = False) -> torch.Tensor:
        """``(B, V, C, *grid)`` per-view volumes, or with ``mean`` their mean over the views that
        see each voxel, ``(B, C, *grid)``, bitwise ``fuse_views(..., "mean")`` of the former:
        the views are added in order into one output and divided by the count of views."""
        from . import _lift_kernels as lk

        ch = self.channels
        n = self.grid.num_voxels
        threads = _kernel_threads(n * ch * self.batch)
        # numpy allocates big arrays on transparent huge pages where the system allows it
        # (Linux, "madvise" mode): first touching 64 MB then costs ~500 page faults, not ~16000
        shape = (self.batch, ch, n) if mean else (self.batch, self.num_views, ch, n)
        o = np.empty(shape, dtype=_numpy_dtype(self.dtype))
        out = torch.from_numpy(o)
        srcs = []
        for f in feats:
            h, w = f.shape[-2:]
            srcs.append((f.detach().reshape(self.batch, ch, h * w).numpy(), h, w))
        for (b0, b1, tables), counts in zip(self.groups, self.count_factors() if mean else [None] * len(self.groups)):
            # channels-last copies, with w + 1 zero pixels after each map (see _lift_kernels)
            cls = [np.empty((h * w + w + 1, (b1 - b0) * ch), dtype=o.dtype) for _, h, w in srcs]
            finite = lk.channels_last_maps([src[b0:b1] for src, _, _ in srcs], cls, _COPY_BLOCK, threads)
            for v, ok in enumerate(finite):
                if not ok:
                    raise ValueError(f"features (view {v}) contains NaN or infinite values; clean them before "
                                     "building the prior")
            if mean:  # every view added into one tile, divided by the count, stored once
                lk.forward_mean(tuple(cls), tuple(t.off for t in tables), tuple(t.fx for t in tables),
                                tuple(t.fy for t in tables), tuple(t.scale for t in tables), tables[0].one,
                                tuple(int(t.dy) for t in tables), counts, o[b0:b1], _FORWARD_BLOCK, threads)
            else:
                for v, (cl, t) in enumerate(zip(cls, tables)):
                    lk.forward(cl, t.off, t.fx, t.fy, t.scale, t.one, t.dy, o[b0:b1, v], _FORWARD_BLOCK,
                               threads)
        if mean:
            return out.reshape(self.batch, ch, *self.grid.shape)
        return out.reshape(self.batch, self.num_views, ch, *self.grid.shape)

    def adjoint(self, grad: torch.Tensor, mean: bool = False) -> list[torch.Tensor]:
        """The transpose of :meth:`forward` (with the same ``mean``): per view ``(B, C, h, w)``."""
        from . import _lift_kernels as lk

        ch = self.channels
        threads = _kernel_threads(self.grid.num_voxels * ch * self.batch)
        hws = [t.hw for t in self.groups[0][2]]
        gfns = [np.empty((self.batch, ch, h * w), dtype=_numpy_dtype(self.dtype)) for h, w in hws]
        if mean:  # every view back-projects the same gradient, divided by the count of views: one pass
            g = grad.detach().to(self.dtype).reshape(self.batch, ch, self.grid.num_voxels).numpy()
            for (b0, b1, tables), counts in zip(self.groups, self.count_factors()):
                accs, bounds = lk.adjoint_mean(
                    g[b0:b1], tuple(t.off for t in tables), tuple(t.fx for t in tables),
                    tuple(t.fy for t in tables), tuple(t.scale for t in tables), tables[0].one,
                    tuple(int(t.dy) for t in tables), counts, _ADJOINT_BLOCK,
                    tuple(h * w + w + 1 for h, w in hws), threads)
                lk.channels_first_maps(accs, bounds, [gfn[b0:b1] for gfn in gfns], _COPY_BLOCK, threads)
        else:
            g = grad.detach().to(self.dtype).reshape(self.batch, self.num_views, ch, self.grid.num_voxels).numpy()
            for v, (h, w) in enumerate(hws):
                for b0, b1, tables in self.groups:
                    t = tables[v]
                    slabs, bounds = lk.adjoint(g[b0:b1, v], t.off, t.fx, t.fy, t.scale, t.one, t.dy,
                                               _ADJOINT_BLOCK, h * w + w + 1, threads)
                    lk.channels_first(slabs, bounds, gfns[v][b0:b1], _COPY_BLOCK)
        return [torch.from_numpy(gfn).reshape(self.batch, ch, h, w) for gfn, (h, w) in zip(gfns, hws)]


class _Lift(torch.autograd.Function):
    """Features of every view -> ``(B, V, C, nz, ny, nx)``, or with ``mean`` their mean over the
    views that see each voxel, ``(B, C, nz, ny, nx)``, in one pass (:meth:`_Plan.forward`);
    linear, its backward is :class:`_LiftAdjoint`."""

    @staticmethod
    def forward(ctx, plan, mean, *feats):
        ctx.plan, ctx.mean = plan, mean
        return plan.forward(feats, mean=mean)

    @staticmethod
    def backward(ctx, grad):
        return (None, None, *_LiftAdjoint.apply(ctx.plan, ctx.mean, grad))


class _LiftAdjoint(torch.autograd.Function):
    """The transpose of :class:`_Lift` (so gradients of any order exist)."""

    @staticmethod
    def forward(ctx, plan, mean, grad):
        ctx.plan, ctx.mean = plan, mean
        return tuple(plan.adjoint(grad, mean=mean))

    @staticmethod
    def backward(ctx, *grads):
        plan = ctx.plan
        full = []
        for v, gv in enumerate(grads):
            if gv is None:
                h, w = plan.groups[0][2][v].hw
                gv = torch.zeros((plan.batch, plan.channels, h, w), dtype=plan.dtype)
            full.append(gv)
        return None, None, _Lift.apply(plan, ctx.mean, *full)


def _use_kernels(per_view: list[torch.Tensor], geoms: list[Geometry]) -> bool:
    """The numba path: CPU features of a float dtype and geometries without gradients."""
    if any(f.device.type != "cpu" for f in per_view):
        return False
    if per_view[0].dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        return False
    return not any(view.vector.requires_grad for g in geoms for view in g.views)


def _lift_cpu(per_view, geoms, shared: bool, grid: VolumeGrid, normalize: bool, batch: int, channels: int,
                  return_mask: bool, mean: bool = False):
    """The numba kernels: per-view volumes (and masks), or with ``mean`` (float32 / float64
    features only) the views' mean, ``(B, C, *grid)``, bitwise ``fuse_views(..., "mean")``."""
    out_dtype = per_view[0].dtype
    work = torch.float64 if out_dtype == torch.float64 else torch.float32
    feats = [f if f.dtype == work else f.to(work) for f in per_view]
    spans = [(0, batch, geoms[0])] if shared else [(i, i + 1, geoms[i]) for i in range(batch)]
    groups = [(b0, b1, [_table(view, grid, f.shape[-2:], work, normalize) for view, f in zip(g.views, feats)])
              for b0, b1, g in spans]
    plan = _Plan(groups, batch, channels, grid, work)
    if mean:
        return _Lift.apply(plan, True, *feats), None
    vols = _Lift.apply(plan, False, *feats)
    if vols.dtype != out_dtype:
        vols = vols.to(out_dtype)
    if not return_mask:
        return vols, None
    masks = []
    for b0, b1, tables in groups:
        masks.append(torch.stack([t.mask.to(out_dtype).expand(b1 - b0, 1, *grid.shape) for t in tables], dim=1))
    return vols, (torch.cat(masks, dim=0) if len(masks) > 1 else masks[0])


def _ray_view(feat: torch.Tensor, view: View, grid: VolumeGrid, normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference path: the ray-driven adjoint ``tomoprior.backproject`` of one view at the
    features' resolution, divided by the back-projection of ones when ``normalize``."""
    from ..projectors import backproject

    b, ch, h, w = feat.shape
    rows, cols = view.shape
    rebinned = View(view.source, view.detector_center, view.u * (cols / w), view.v * (rows / h), (h, w),
                    name=view.name)
    geom = Geometry(grid, [rebinned])
    bp = backproject(feat.reshape(b * ch, 1, h, w), geom).reshape(b, ch, *grid.shape)
    ones = backproject(torch.ones(1, h, w, dtype=feat.dtype, device=feat.device), geom.detach())
    mask = ones > 1e-6 * ones.max().clamp_min(1e-30)
    if normalize:
        bp = torch.where(mask, bp / torch.where(mask, ones, torch.ones_like(ones)), torch.zeros_like(bp))
    return bp, mask


def backproject_features(features, geometry, *, normalize: bool = True, mode: str = "voxel",
                         grid: VolumeGrid | None = None, return_mask: bool = False):
    """Lift per-view 2D feature maps into per-view volumes through the exact geometry.

    Parameters
    ----------
    features : Tensor ``(B, V, C, h, w)`` or list of V tensors ``(B, C, h_v, w_v)``
        Any channel count, any resolution: a feature map's pixel grid spans the full detector
        of its view (pixel ``(i, j)`` of an ``h x w`` map covers detector rows
        ``i*rows/h .. (i+1)*rows/h``), so encoder features at 1/2, 1/4, ... resolution are
        placed exactly.
    geometry : Geometry or list of B Geometries
        The views must match the V feature maps in order.
    normalize : bool
        True (default): per-voxel ray-coverage normalisation, i.e. the sampled feature value
        (units of the features); False: weighted by ray density like ``tomoprior.backproject``
        (units of the features x mm). See the module docstring for the exact formulas.
    mode : {"voxel", "ray"}
        ``"voxel"`` (default, fast): project voxel centres, bilinear ``grid_sample``.
        ``"ray"``: ray-driven ``tomoprior.backproject`` (reference, slow).
    grid : VolumeGrid, optional
        Output grid instead of ``geometry.grid`` (e.g. a coarser grid for encoder stages).
    return_mask : bool
        Also return the coverage mask.

    Returns
    -------
    volumes : Tensor ``(B, V, C, nz, ny, nx)``
        Zero where a view does not see the voxel. Dtype and device of the features.
    mask : Tensor ``(B, V, 1, nz, ny, nx)``, only if ``return_mask``
        1 where the view sees the voxel (voxel mode: the voxel centre projects onto the
        detector; ray mode: the back-projection of ones is positive), else 0.

    Examples
    --------
    >>> import torch, tomoprior as tp
    >>> from tomoprior.refiners import backproject_features
    >>> geom = tp.BiplanarGeometry.from_parameters(binning=16, grid=tp.VolumeGrid((16, 16, 16), (8, 8, 8)))
    >>> feats = torch.ones(2, 2, 5, 24, 24)          # B=2, V=2, C=5 at 1/4 of 96 x 96 pixels
    >>> backproject_features(feats, geom).shape
    torch.Size([2, 2, 5, 16, 16, 16])
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    per_view, geoms, b, out_grid, shared = _parse_lift(features, geometry, grid)
    if mode == "voxel" and _use_kernels(per_view, geoms):
        volumes, mask = _lift_cpu(per_view, geoms, shared, out_grid, normalize, b, per_view[0].shape[1],
                                      return_mask)  # checks the features are finite
        return (volumes, mask) if return_mask else volumes
    for i, f in enumerate(per_view):
        _check_finite(f, f"features (view {i})")
    one = _ray_view if mode == "ray" else _sample_view
    samples = [slice(0, b)] if shared else [slice(i, i + 1) for i in range(b)]
    vols, masks = [], []
    for sl in samples:
        geom = geoms[sl.start]
        vs, ms = [], []
        for v, view in enumerate(geom.views):
            vol, mask = one(per_view[v][sl], view, out_grid, normalize)
            vs.append(vol)
            if return_mask:
                ms.append(mask.to(vol.dtype).expand(vol.shape[0], 1, *out_grid.shape))
        vols.append(torch.stack(vs, dim=1))
        if return_mask:
            masks.append(torch.stack(ms, dim=1))
    volumes = torch.cat(vols, dim=0) if len(vols) > 1 else vols[0]
    if not return_mask:
        return volumes
    return volumes, (torch.cat(masks, dim=0) if len(masks) > 1 else masks[0])


def _parse_lift(features, geometry, grid):
    """Checked ``(per-view features, geometries, batch, output grid, shared geometry?)``."""
    if isinstance(features, torch.Tensor):
        batch = features.shape[0] if features.ndim == 5 else None
    elif isinstance(features, Sequence) and len(features) and isinstance(features[0], torch.Tensor):
        batch = features[0].shape[0]
    else:
        batch = None
    if batch is None:
        _as_view_features(features)  # raises the descriptive error
    if batch == 0:
        raise ValueError("features have an empty batch (B=0, shape "
                         f"{tuple(features.shape if isinstance(features, torch.Tensor) else features[0].shape)}): "
                         "there is nothing to lift; pass at least one sample")
    geoms = _geometry_list(geometry, batch)
    per_view, b, _ = _as_view_features(features, geoms[0].num_views)
    for i, g in enumerate(geoms):
        if g.num_views != len(per_view):
            raise ValueError(f"geometry[{i}] has {g.num_views} views but features have V={len(per_view)}")
    out_grid = _resolve_grid(geoms, grid)
    return per_view, geoms, b, out_grid, all(g is geoms[0] for g in geoms)


def _lift_and_fuse(features, geometry, *, fuse: str, normalize: bool, mode: str, grid) -> torch.Tensor:
    """``fuse_views(*backproject_features(..., return_mask=True), fuse)``; for ``"mean"`` on the
    CPU kernels (float32 / float64 features, voxel mode) in one pass that adds the views into one
    output and divides by the count of views, bitwise the same result, without the per-view
    volumes (at 32 channels, 64^3 from two 128^2 maps: forward + backward about 5x faster than
    lifting, then fusing)."""
    if fuse == "mean" and mode == "voxel":
        per_view, geoms, b, out_grid, shared = _parse_lift(features, geometry, grid)
        if _use_kernels(per_view, geoms) and per_view[0].dtype in (torch.float32, torch.float64):
            return _lift_cpu(per_view, geoms, shared, out_grid, normalize, b, per_view[0].shape[1], False,
                             mean=True)[0]
    vols, mask = backproject_features(features, geometry, normalize=normalize, mode=mode, grid=grid,
                                      return_mask=True)
    return fuse_views(vols, mask, fuse)


def fuse_views(volumes: torch.Tensor, mask: torch.Tensor, fuse: str = "mean") -> torch.Tensor:
    """Fuse per-view volumes over the views that see each voxel.

    Parameters
    ----------
    volumes : Tensor ``(B, V, C, nz, ny, nx)``
    mask : Tensor ``(B, V, 1, nz, ny, nx)`` of 0/1 (from ``backproject_features(..., return_mask=True)``)
    fuse : {"mean", "sum", "max", "min"}
        ``mean``: ``sum_v m_v B_v / max(sum_v m_v, 1)``; ``sum``: ``sum_v m_v B_v``; ``max`` /
        ``min``: over the views with ``m_v = 1``. Voxels no view sees are 0.

    Returns
    -------
    Tensor ``(B, C, nz, ny, nx)``
    """
    if fuse not in _FUSE:
        raise ValueError(f"fuse must be one of {_FUSE}, got {fuse!r}")
    if volumes.ndim != 6 or mask.ndim != 6 or mask.shape[:2] != volumes.shape[:2] or mask.shape[2] != 1:
        raise ValueError(
            f"volumes must be (B, V, C, nz, ny, nx) and mask (B, V, 1, nz, ny, nx), got {tuple(volumes.shape)} "
            f"and {tuple(mask.shape)}"
        )
    if fuse in ("mean", "sum"):
        total = (volumes * mask).sum(dim=1)
        if fuse == "sum":
            return total
        return total / mask.sum(dim=1).clamp_min(1.0)
    seen = mask > 0
    fill = float("-inf") if fuse == "max" else float("inf")
    masked = torch.where(seen, volumes, torch.full_like(volumes, fill))
    red = masked.amax(dim=1) if fuse == "max" else masked.amin(dim=1)
    return torch.where(seen.any(dim=1), red, torch.zeros_like(red))


def ray_chord_lengths(view: View, grid: VolumeGrid, shape=None, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """Length in mm of the ray through each pixel centre inside the grid's voxel box.

    Parameters
    ----------
    view : View
    grid : VolumeGrid
    shape : (h, w), optional
        A pixel grid spanning the detector (default the detector's own ``(rows, cols)``).

    Returns
    -------
    Tensor ``(h, w)``, 0 for rays that miss the box.
    """
    rows, cols = view.shape
    h, w = view.shape if shape is None else shape
    dev = view.device if device is None else device
    vec = view.vector.detach().to(dtype=torch.float64, device=dev)
    s, c, u, v = vec[0:3], vec[3:6], vec[6:9], vec[9:12]
    # centres of an (h, w) pixel grid spanning the detector, in detector pixel coordinates
    cc = (torch.arange(w, dtype=torch.float64, device=dev) + 0.5) * (cols / w) - 0.5
    rr = (torch.arange(h, dtype=torch.float64, device=dev) + 0.5) * (rows / h) - 0.5
    p = (c + (cc[None, :, None] - (cols - 1) / 2) * u + (rr[:, None, None] - (rows - 1) / 2) * v)
    d = p - s  # (h, w, 3)
    lo, hi = (torch.tensor(b, dtype=torch.float64, device=dev) for b in grid.bounds())
    with torch.no_grad():
        inv = 1.0 / torch.where(d == 0, torch.full_like(d, 1e-300), d)
        t1, t2 = (lo - s) * inv, (hi - s) * inv
        tmin = torch.minimum(t1, t2).amax(dim=-1).clamp_min(0.0)
        tmax = torch.maximum(t1, t2).amin(dim=-1)
        length = (tmax - tmin).clamp_min(0.0) * torch.linalg.norm(d, dim=-1)
    return length.to(dtype)


def build_prior(xrays, geometry, *, fuse: str = "mean", grid: VolumeGrid | None = None, mode: str = "voxel",
                divide_by_chord: bool = False) -> torch.Tensor:
    """The geometry prior: ray-coverage normalised back-projection of the X-rays, fused over views.

    Parameters
    ----------
    xrays : Tensor ``(B, V, H, W)`` or ``(B, V, C, H, W)`` (or a list of V ``(B, C, H_v, W_v)``)
        One image per view, typically line integrals (attenuation x mm), any resolution
        spanning each detector.
    geometry : Geometry or list of B Geometries
        The geometry that made (or calibrated) the X-rays.
    fuse : {"mean", "sum", "max", "min"}
        Fusion over the views that see each voxel (see :func:`fuse_views`); default mean.
    grid : VolumeGrid, optional
        Output grid (default ``geometry.grid``).
    mode : {"voxel", "ray"}
        As in :func:`backproject_features`.
    divide_by_chord : bool
        Divide each pixel by the length (mm) of its ray inside the grid box before lifting, so
        line integrals become the mean attenuation along the ray (1/mm); rays missing the box
        give 0.

    Returns
    -------
    Tensor ``(B, 1, nz, ny, nx)`` (``(B, C, ...)`` for ``C``-channel input): at each voxel the
    mean over the views that see it of the X-ray value at the voxel's projection, i.e.
    ``mean_v backproject_v(x)/backproject_v(1)`` (module docstring). Units of the X-rays
    (1/mm with ``divide_by_chord``).

    Examples
    --------
    >>> import torch, tomoprior as tp
    >>> from tomoprior.refiners import build_prior
    >>> geom = tp.BiplanarGeometry.from_parameters(binning=16, grid=tp.VolumeGrid((16, 16, 16), (8, 8, 8)))
    >>> prior = build_prior(torch.full((1, 2, 96, 96), 3.0), geom)
    >>> prior.shape, float(prior[0, 0, 8, 8, 8])
    (torch.Size([1, 1, 16, 16, 16]), 3.0)
    """
    if isinstance(xrays, torch.Tensor):
        if xrays.ndim == 4:
            feats = xrays.unsqueeze(2)
        elif xrays.ndim == 5:
            feats = xrays
        else:
            raise ValueError(f"xrays must have shape (B, V, H, W) or (B, V, C, H, W), got {tuple(xrays.shape)}")
        if xrays.shape[0] == 0:
            raise ValueError(f"xrays have an empty batch (B=0, shape {tuple(xrays.shape)}): pass at least one sample")
    else:
        feats = xrays
    if divide_by_chord:
        per_view, b, _ = _as_view_features(feats)
        geoms = _geometry_list(geometry, b)
        out_grid = _resolve_grid(geoms, grid)
        divided = []
        for v, f in enumerate(per_view):
            rows_b = []
            for i in range(b):
                chord = ray_chord_lengths(geoms[i].views[v], out_grid, f.shape[-2:], dtype=f.dtype, device=f.device)
                safe = torch.where(chord > 0, chord, torch.ones_like(chord))
                rows_b.append(torch.where(chord > 0, f[i] / safe, torch.zeros_like(f[i])))
            divided.append(torch.stack(rows_b))
        feats = divided
    if fuse not in _FUSE:
        raise ValueError(f"fuse must be one of {_FUSE}, got {fuse!r}")
    return _lift_and_fuse(feats, geometry, fuse=fuse, normalize=True, mode=mode, grid=grid)


class GeometryPrior(torch.nn.Module):
    """:func:`backproject_features` + :func:`fuse_views` as a module (no parameters), for
    use inside networks (e.g. PSCT-Net's BP-I prior and BP-C feature lifting).

    Parameters
    ----------
    fuse : {"mean", "sum", "max", "min"}
    grid : VolumeGrid, optional
        Fixed output grid (e.g. a coarser encoder-stage grid); default ``geometry.grid``.
    normalize, mode
        As in :func:`backproject_features`.

    ``forward(features, geometry)``: features ``(B, V, C, h, w)`` (or X-rays ``(B, V, H, W)``)
    -> ``(B, C, nz, ny, nx)`` (``(B, 1, ...)`` for X-rays). ``per_view(features, geometry)``
    returns ``(volumes, mask)`` unfused.

    Examples
    --------
    >>> import torch, tomoprior as tp
    >>> from tomoprior.refiners import GeometryPrior
    >>> geom = tp.BiplanarGeometry.from_parameters(binning=16, grid=tp.VolumeGrid((16, 16, 16), (8, 8, 8)))
    >>> lift = GeometryPrior(grid=geom.grid.with_shape((8, 8, 8)))
    >>> lift(torch.ones(1, 2, 4, 48, 48), geom).shape
    torch.Size([1, 4, 8, 8, 8])
    """

    def __init__(self, fuse: str = "mean", grid: VolumeGrid | None = None, *, normalize: bool = True,
                 mode: str = "voxel"):
        super().__init__()
        if fuse not in _FUSE:
            raise ValueError(f"fuse must be one of {_FUSE}, got {fuse!r}")
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        if grid is not None and not isinstance(grid, VolumeGrid):
            raise TypeError(f"grid must be a tomoprior VolumeGrid, got {type(grid).__name__}")
        self.fuse, self.grid, self.normalize, self.mode = fuse, grid, normalize, mode

    def per_view(self, features, geometry):
        if isinstance(features, torch.Tensor) and features.ndim == 4:
            features = features.unsqueeze(2)
        return backproject_features(features, geometry, normalize=self.normalize, mode=self.mode, grid=self.grid,
                                    return_mask=True)

    def forward(self, features, geometry) -> torch.Tensor:
        if isinstance(features, torch.Tensor) and features.ndim == 4:
            features = features.unsqueeze(2)
        return _lift_and_fuse(features, geometry, fuse=self.fuse, normalize=self.normalize, mode=self.mode,
                              grid=self.grid)

    def extra_repr(self) -> str:
        return f"fuse={self.fuse!r}, grid={self.grid}, normalize={self.normalize}, mode={self.mode!r}"


__all__ = ["GeometryPrior", "backproject_features", "build_prior", "fuse_views", "ray_chord_lengths"]
