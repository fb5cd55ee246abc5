"""numba CPU kernels of the voxel-driven feature lifting in :mod:`tomoprior.refiners.prior`.

A lifting table holds, per voxel ``j`` (flattened ``(nz, ny, nx)`` order) of one view and
one feature-map size ``(h, w)``: the flat index ``off[j]`` of the upper-left of the four
pixels bilinear interpolation reads, the fractions ``fx[j], fy[j]`` towards the next column
and row, and a per-voxel factor ``scale[j]`` (the visibility mask, times the ray density
for unnormalised lifting). The forward kernel computes, for every channel ``c``::

    out[c, j] = (F[c, p] e s + F[c, p+1] w s + F[c, p+W] e n + F[c, p+W+1] w n) * scale[j]

with ``w = fx, e = 1 - w, n = fy, s = 1 - n, p = off[j]``; the adjoint kernel scatters
``g[c, j] * scale[j]`` back with the same four weights. The arithmetic is the one of
``torch.nn.functional.grid_sample(mode="bilinear", padding_mode="border",
align_corners=False)`` on x86 CPUs (pixel coordinate ``(g + 1) * W/2 - 0.5`` as one fused
multiply-add, clamped to ``[0, W-1]``; the four products summed left to right with fused
multiply-adds), so the forward results equal that path bit for bit on the builds we measured and
otherwise to a rounding of the last bit. The adjoint adds each voxel's four corners before the
next voxel's (not in ``grid_sample``'s backward order, corner by corner over a SIMD vector of
voxels, which ties up the core on neighbouring voxels that share pixels; the sums agree to
rounding), in the same order whatever the thread count, so it is deterministic.

Layouts: the forward reads the features channels-last, ``(h*w, channels)``, so the four
reads of a voxel are contiguous vectors over the channels, and writes a tile of voxels x
channels that is stored transposed into the channels-first output. The adjoint transposes a
block of the incoming gradient into such a tile (in 8 x 8 sub-tiles) and scatters its rows;
its work is split into a fixed number of voxel ranges (:data:`ADJOINT_PARTS`) times as many
slabs of channels as the threads allow, each task with its own channels-last ``(h*w, slab
width)`` accumulator (no two tasks write the same element); the ranges' accumulators are
added in order when they are unpacked, so every sum has the same order whatever the thread count.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from llvmlite import ir
from numba import njit
from numba.extending import intrinsic


@intrinsic
def _fma(typingctx, a, b, c):
    """``a * b + c`` with one rounding (LLVM's ``llvm.fma``), for float32 or float64."""
    sig = a(a, b, c)

    def codegen(context, builder, signature, args):
        ty = args[0].type
        fn = builder.module.declare_intrinsic("llvm.fma", [ty], ir.FunctionType(ty, [ty, ty, ty]))
        return builder.call(fn, args)

    return sig, codegen


@njit(fastmath=False, cache=True)
def build_table(gx, gy, h, w, consts, off, fx, fy):
    """Normalised ``grid_sample`` coordinates ``gx, gy`` (``-1/+1`` at the outer pixel edges)
    -> flat upper-left pixel index and fractions, with ``grid_sample``'s border clamping.

    A coordinate clamped onto the last column (row) has fraction 0 towards a column (row)
    that does not exist; the kernels read and write such neighbours in ``w + 1`` padding
    pixels after the map (zeros), so the weight-0 term changes nothing. ``consts`` holds
    ``(W/2, H/2, W-1, H-1, 0.5, 1, 0)`` in the dtype of ``gx``.
    """
    sx, sy, xmax, ymax, half, o1, zero = consts[0], consts[1], consts[2], consts[3], consts[4], consts[5], consts[6]
    for j in range(gx.shape[0]):
        x = _fma(gx[j] + o1, sx, -half)
        y = _fma(gy[j] + o1, sy, -half)
        x = min(xmax, max(zero, x))  # clamp to [0, W-1]
        y = min(ymax, max(zero, y))
        x0 = np.floor(x)
        y0 = np.floor(y)
        off[j] = int(y0) * w + int(x0)
        fx[j] = x - x0
        fy[j] = y - y0


@njit(fastmath=False, cache=True, nogil=True)
def channels_last(src, dst, block):
    """``src (batch, channels, pixels)`` (any strides) -> ``dst (pixels + pad, batch*channels)``,
    the ``pad`` rows after the map set to 0, in blocks of ``block`` pixels (so the strided
    writes stay in cache); True if all values are finite."""
    ok = True
    npix = src.shape[2]
    nc = src.shape[1]
    for p in range(npix, dst.shape[0]):
        for k in range(dst.shape[1]):
            dst[p, k] = 0
    for p0 in range(0, npix, block):
        p1 = min(npix, p0 + block)
        for b in range(src.shape[0]):
            for c in range(nc):
                k = b * nc + c
                row = src[b, c]
                for p in range(p0, p1):
                    v = row[p]
                    dst[p, k] = v
                    ok &= np.isfinite(v)
    return ok


@njit(fastmath=False, cache=True, nogil=True)
def channels_first(src, bounds, dst, block):
    """Accumulators ``src (parts, slabs, pixels + pad, width)`` (slab ``s`` holds the flattened
    channels ``bounds[s]..bounds[s+1]``; the parts are the adjoint's voxel ranges) -> ``dst
    (batch, channels, pixels)``, the parts added in order (``(p0 + p1) + ...``), the pad rows
    ignored."""
    npix = dst.shape[2]
    nc = dst.shape[1]
    nparts = src.shape[0]
    for s in range(src.shape[1]):
        for p0 in range(0, npix, block):
            p1 = min(npix, p0 + block)
            for k in range(bounds[s], bounds[s + 1]):
                row = dst[k // nc, k % nc, p0:p1]
                col = src[0, s, p0:p1, k - bounds[s]]
                for i in range(p1 - p0):
                    row[i] = col[i]
                for h in range(1, nparts):
                    col = src[h, s, p0:p1, k - bounds[s]]
                    for i in range(p1 - p0):
                        row[i] += col[i]


@njit(fastmath=False, cache=True, nogil=True)
def _store_tile(tile, m, out, b0, vec, mode):
    """``out[b, c, b0 + i] = tile[i, b * channels + c]`` for ``i < m`` (``out (batch, channels,
    voxels)``), times ``vec[b0 + i]`` (``mode`` 1) or divided by it (``mode`` 2): a channel at a
    time, contiguous stores from the cached tile."""
    nb, per = out.shape[0], out.shape[1]
    for bi in range(nb):
        for c in range(per):
            o = out[bi, c, b0:b0 + m]
            col = tile[:m, bi * per + c]
            if mode == 0:
                for i in range(m):
                    o[i] = col[i]
            elif mode == 1:
                for i in range(m):
                    o[i] = col[i] * vec[b0 + i]
            else:
                for i in range(m):
                    o[i] = col[i] / vec[b0 + i]


@njit(fastmath=False, cache=True, nogil=True)
def _load_rows(src, s0, d0, dst, rows, cols, v0):
    """``dst[r, d0 + c] = src[s0 + c, v0 + r]`` for ``r < rows, c < cols``, in 8 x 8 sub-tiles
    (which the compiler turns into register shuffles: row by row, every store would touch
    another cache line of the tile; about 1.5x faster on AMD Zen 5)."""
    r8 = rows - rows % 8
    c8 = cols - cols % 8
    for r0 in range(0, r8, 8):
        for c0 in range(0, c8, 8):
            for r in range(8):
                for c in range(8):
                    dst[r0 + r, d0 + c0 + c] = src[s0 + c0 + c, v0 + r0 + r]
    for c in range(cols):  # the ragged edges
        for r in range(0 if c >= c8 else r8, rows):
            dst[r, d0 + c] = src[s0 + c, v0 + r]


@njit(fastmath=False, cache=True, nogil=True)
def _load_tile(g, c0, c1, b0, b1, tile):
    """The flattened channels ``c0 <= k < c1`` of ``g (batch, channels, voxels)``, voxels ``b0 <=
    j < b1``, transposed into ``tile (voxels, channels)``: ``tile[j - b0, k - c0] = g[k //
    channels, k % channels, j]``."""
    per = g.shape[1]
    for bi in range(c0 // per, (c1 + per - 1) // per):
        k0 = max(c0, bi * per)
        k1 = min(c1, bi * per + per)
        _load_rows(g[bi], k0 - bi * per, k0 - c0, tile, b1 - b0, k1 - k0, b0)


@njit(fastmath=False, cache=True, nogil=True, inline="always")
def _weights(ax, ay, o1):
    """The bilinear weights of the upper-left, upper-right, lower-left and lower-right pixel
    for the fractions ``ax`` (towards the next column) and ``ay`` (row)."""
    ex = o1 - ax
    sy = o1 - ay
    return sy * ex, sy * ax, ay * ex, ay * ax


@njit(fastmath=False, cache=True, nogil=True)
def _interp_block(feat, off, fx, fy, scale, o1, dy, b0, b1, tile, add):
    """Row ``j - b0`` of ``tile`` = voxel ``j``'s bilinear sample of every channel of ``feat``
    times ``scale[j]`` (``b0 <= j < b1``), or that added to the row (``add``)."""
    nc = feat.shape[1]
    for j in range(b0, b1):
        a, b, c2, d = _weights(fx[j], fy[j], o1)
        sc = scale[j]
        p = off[j]
        r0 = feat[p]
        r1 = feat[p + 1]
        r2 = feat[p + dy]
        r3 = feat[p + dy + 1]
        t = tile[j - b0]
        if add:
            for c in range(nc):
                t[c] = t[c] + _fma(r3[c], d, _fma(r2[c], c2, _fma(r1[c], b, r0[c] * a))) * sc
        else:
            for c in range(nc):
                t[c] = _fma(r3[c], d, _fma(r2[c], c2, _fma(r1[c], b, r0[c] * a))) * sc


@njit(fastmath=False, cache=True, nogil=True)
def _forward_range_mean(feats, offs, fxs, fys, scales, one, dys, count, mode, out, j0, j1, block):
    """The views' mean for the voxels ``j0 <= j < j1`` in one pass: per tile of voxels every view
    is interpolated and added in view order (``((v0 + v1) + v2) ...``), and the sum divided by
    the count of views as the tile is stored transposed into ``out (batch, channels, voxels)``:
    the output is written once, not once per view; bitwise ``fuse_views(..., "mean")`` of the
    per-view volumes. ``count, mode``: :func:`count_factor`'s (the reciprocal count and 1, or the
    count and 2); one view with ``mode`` 0 (``count`` not read) is the plain lift of that view."""
    tile = np.empty((block, feats[0].shape[1]), dtype=feats[0].dtype)
    for b0 in range(j0, j1, block):
        b1 = min(j1, b0 + block)
        for v in range(len(offs)):
            _interp_block(feats[v], offs[v], fxs[v], fys[v], scales[v], one[0], dys[v], b0, b1, tile, v > 0)
        _store_tile(tile, b1 - b0, out, b0, count, mode)


@njit(fastmath=False, cache=True, nogil=True)
def _scatter_block(t, off, fx, fy, o1, dy, b0, b1, grad, factor, vec, mode):
    """Add ``t (voxels b0..b1, channels)`` into the four pixels of each voxel of ``grad
    (pixels, channels)`` with its bilinear weights, voxel by voxel (all four corners of a voxel
    before the next voxel: neighbouring voxels often share their pixels, and four independent
    read-modify-write streams keep the core busy where one pixel after another would wait for
    the previous voxel's store). Voxel ``j``'s row is first multiplied by ``vec[j]`` (``mode``
    1) or divided by it (``mode`` 2), then multiplied by ``factor[j]``, each product rounded
    (as if stored): ``((t * vec) * factor) * weight``."""
    nc = t.shape[1]
    for j in range(b0, b1):
        i = j - b0
        w0, w1, w2, w3 = _weights(fx[j], fy[j], o1)
        p = off[j]
        g0 = grad[p]
        g1 = grad[p + 1]
        g2 = grad[p + dy]
        g3 = grad[p + dy + 1]
        ti = t[i]
        f = factor[j]
        r = vec[j]
        if mode == 0:
            for c in range(nc):
                v = ti[c] * f
                g0[c] += v * w0
                g1[c] += v * w1
                g2[c] += v * w2
                g3[c] += v * w3
        elif mode == 1:
            for c in range(nc):
                v = (ti[c] * r) * f
                g0[c] += v * w0
                g1[c] += v * w1
                g2[c] += v * w2
                g3[c] += v * w3
        else:
            for c in range(nc):
                v = (ti[c] / r) * f
                g0[c] += v * w0
                g1[c] += v * w1
                g2[c] += v * w2
                g3[c] += v * w3


@njit(fastmath=False, cache=True, nogil=True)
def _adjoint_slab_mean(g, offs, fxs, fys, scales, one, dys, count, mode, block, grads, c0, c1, j0, j1):
    """The transpose of the views' mean for every view at once (tuples of the views' tables
    and accumulators): a block of the gradient is read and transposed once, then scattered into
    every view, each row divided by the count of views (``count, mode`` as in
    :func:`_forward_range_mean`) and multiplied by the view's factor as the scatter reads it.
    One view with ``mode`` 0 is the plain adjoint of that view's lift: flattened channels
    ``c0..c1`` of ``g (batch, channels, voxels)``, voxels ``j0 <= j < j1``, scattered into
    ``grads[0] (pixels + pad, c1 - c0)``."""
    o1 = one[0]
    gd = np.empty((block, c1 - c0), dtype=g.dtype)
    for b0 in range(j0, j1, block):
        b1 = min(j1, b0 + block)
        _load_tile(g, c0, c1, b0, b1, gd)
        for v in range(len(offs)):
            _scatter_block(gd, offs[v], fxs[v], fys[v], o1, dys[v], b0, b1, grads[v], scales[v], count, mode)


# -- dispatch -----------------------------------------------------------------------------------
# The kernels release the GIL and run on a small pool of Python threads: no OpenMP runtime of
# numba's (whose idle threads spin, competing with torch's for the cores, and which cannot
# start in a process forked after its parent used it, e.g. DataLoader workers), and every
# element is computed by the same serial code whatever the thread count.

_POOLS: dict = {}  # (pid, threads) -> ThreadPoolExecutor
_POOL_LOCK = threading.Lock()


def _pool(threads: int) -> ThreadPoolExecutor:
    """A pool of this process (a forked child makes its own: the parent's threads are gone);
    one per thread count, never shut down while another caller might still submit to it."""
    key = (os.getpid(), threads)
    with _POOL_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tomoprior-lift")
        return pool


def _run(calls, threads: int) -> list:
    """``[fn(*args) for fn, args in calls]``, on the pool when ``threads > 1``."""
    if threads <= 1 or len(calls) <= 1:
        return [fn(*args) for fn, args in calls]
    futures = [_pool(threads).submit(fn, *args) for fn, args in calls]
    return [f.result() for f in futures]


def channels_last_maps(srcs, dsts, block, threads: int) -> list[bool]:
    """:func:`channels_last` of several maps (one task each): per map, True if all finite."""
    return _run([(channels_last, (src, dst, block)) for src, dst in zip(srcs, dsts)], threads)


def channels_first_maps(srcs, bounds, dsts, block, threads: int) -> None:
    """:func:`channels_first` of several maps' accumulators (one task each)."""
    _run([(channels_first, (src, bounds, dst, block)) for src, dst in zip(srcs, dsts)], threads)


def count_factor(count):
    """The count of views per voxel ``(N,)`` as the kernels apply it: ``(1 / count, 1)`` (multiply)
    when every count is a power of two, where the product equals the quotient bit for bit and
    costs a fraction of a division, else ``(count, 2)`` (divide)."""
    mant, _ = np.frexp(count)
    if np.all(mant == 0.5):
        return (np.ones(1, dtype=count.dtype) / count).astype(count.dtype), 1
    return count, 2


def _ranges(n: int, parts: int) -> list[int]:
    return [n * k // parts for k in range(parts + 1)]


def forward(feat, off, fx, fy, scale, one, dy, out, block, threads: int) -> None:
    """``feat (h*w + w + 1, B*C)`` channels-last (padded) -> ``out (B, C, N)``: the one-view case
    of :func:`forward_mean` (no division)."""
    forward_mean((feat,), (off,), (fx,), (fy,), (scale,), one, (dy,), (scale, 0), out, block, threads)


def forward_mean(feats, offs, fxs, fys, scales, one, dys, counts, out, block, threads: int) -> None:
    """The views' mean ``out (B, C, N)`` from every view's channels-last (padded) map ``feats[v]``
    and table, in one pass (:func:`_forward_range_mean`): ``threads`` contiguous voxel ranges.
    ``counts``: :func:`count_factor` of the count of views per voxel."""
    n = offs[0].shape[0]
    bounds = _ranges(n, max(1, min(threads, n // block)))
    vec, mode = counts
    _run([(_forward_range_mean, (feats, offs, fxs, fys, scales, one, dys, vec, mode, out, bounds[k],
                                 bounds[k + 1], block)) for k in range(len(bounds) - 1)], threads)


#: The adjoint's voxel ranges, whatever the thread count: each has its own accumulator, and the
#: ranges' sums are added in order by :func:`channels_first`. Splitting the voxels (rather than
#: only the channels) gives each thread all channels of half the voxels, so the per-voxel work
#: (weights, addresses) is not done twice; a fixed split keeps every sum's order, so the result,
#: independent of the thread count.
ADJOINT_PARTS = 2


def _adjoint_units(nbc: int, n: int, threads: int):
    """Voxel ranges (``ADJOINT_PARTS``) x channel slabs (as many as the threads allow)."""
    parts = max(1, min(ADJOINT_PARTS, n))
    slabs = max(1, min(threads // parts, nbc))
    return _ranges(n, parts), np.array(_ranges(nbc, slabs), dtype=np.int64)


def adjoint(g, off, fx, fy, scale, one, dy, block, rows: int, threads: int):
    """``g (B, C, N)`` -> the channels-last gradient of the (padded) map, ``rows`` pixels, as
    accumulators ``(parts, slabs, rows, width)``: voxel range ``h`` (of :data:`ADJOINT_PARTS`)
    and flattened channels ``bounds[s]..bounds[s+1]``, one task per (range, slab) (no two
    tasks write the same element; each element's sum in the same order whatever the thread
    count). Returns ``(acc, bounds)``; :func:`channels_first` adds and unpacks them. The
    one-view case of :func:`adjoint_mean` (no division)."""
    accs, bounds = adjoint_mean(g, (off,), (fx,), (fy,), (scale,), one, (dy,), (scale, 0), block, (rows,), threads)
    return accs[0], bounds


def adjoint_mean(g, offs, fxs, fys, scales, one, dys, counts, block, rows, threads: int):
    """``g (B, C, N)``, the gradient of the views' mean -> per view the channels-last gradient of
    its (padded) map, as :func:`adjoint` gives it (``(parts, slabs, rows[v], width)`` per view,
    and the slab bounds), in one pass over ``g``. ``offs, fxs, fys, scales``: tuples of the
    views' tables; ``dys``: tuple of the maps' widths; ``counts``: :func:`count_factor` of the
    count of views per voxel; ``rows``: tuple of the padded pixel counts."""
    nbc, n = g.shape[0] * g.shape[1], g.shape[2]
    vb, bounds = _adjoint_units(nbc, n, threads)
    width = int(np.max(np.diff(bounds)))
    accs = tuple(np.zeros((len(vb) - 1, len(bounds) - 1, r, width), dtype=g.dtype) for r in rows)
    vec, mode = counts
    _run([(_adjoint_slab_mean, (g, offs, fxs, fys, scales, one, dys, vec, mode, block, tuple(a[h, k] for a in accs),
                                int(bounds[k]), int(bounds[k + 1]), vb[h], vb[h + 1]))
          for h in range(len(vb) - 1) for k in range(len(bounds) - 1)], threads)
    return accs, bounds
