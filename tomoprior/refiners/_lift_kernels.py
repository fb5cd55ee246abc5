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
channels that is stored transposed into the channels-first output. The adjoint gives each
thread a slab of channels (no two threads write the same element) with its own channels-last
``(h*w, slab width)`` accumulator.
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
    """Slabs ``src (slabs, pixels + pad, width)`` (slab ``s`` holds the flattened channels
    ``bounds[s]..bounds[s+1]``) -> ``dst (batch, channels, pixels)``, ignoring the pad rows."""
    npix = dst.shape[2]
    nc = dst.shape[1]
    for s in range(src.shape[0]):
        for p0 in range(0, npix, block):
            p1 = min(npix, p0 + block)
            for k in range(bounds[s], bounds[s + 1]):
                row = dst[k // nc, k % nc, p0:p1]
                col = src[s, p0:p1, k - bounds[s]]
                for i in range(p1 - p0):
                    row[i] = col[i]


@njit(fastmath=False, cache=True, nogil=True)
def _forward_range(feat, off, fx, fy, scale, one, dy, out, j0, j1, block):
    o1 = one[0]
    nb, per = out.shape[0], out.shape[1]
    nc = feat.shape[1]
    tile = np.empty((block, nc), dtype=feat.dtype)
    for b0 in range(j0, j1, block):
        b1 = min(j1, b0 + block)
        for j in range(b0, b1):
            ax = fx[j]
            ay = fy[j]
            ex = o1 - ax
            sy = o1 - ay
            a = sy * ex
            b = sy * ax
            c2 = ay * ex
            d = ay * ax
            sc = scale[j]
            p = off[j]
            r0 = feat[p]
            r1 = feat[p + 1]
            r2 = feat[p + dy]
            r3 = feat[p + dy + 1]
            t = tile[j - b0]
            for c in range(nc):
                t[c] = _fma(r3[c], d, _fma(r2[c], c2, _fma(r1[c], b, r0[c] * a))) * sc
        m = b1 - b0
        for bi in range(nb):  # tile (voxels, channels) -> out (batch, channels, voxels)
            for c in range(per):
                o = out[bi, c, b0:b1]
                col = tile[:m, bi * per + c]
                for i in range(m):
                    o[i] = col[i]


@njit(fastmath=False, cache=True, nogil=True)
def _forward_range_mean(feats, offs, fxs, fys, scales, one, dys, count, out, j0, j1, block):
    """The views' mean for the voxels ``j0 <= j < j1`` in one pass: per tile of voxels every view
    is interpolated and added in view order (``((v0 + v1) + v2) ...``, each term rounded as
    :func:`_forward_range` rounds it), and the sum divided by ``count`` as the tile is stored
    transposed into ``out (batch, channels, voxels)``: the output is written once, not once per
    view; bitwise ``fuse_views(..., "mean")`` of the per-view volumes :func:`_forward_range` makes."""
    o1 = one[0]
    nb, per = out.shape[0], out.shape[1]
    nc = feats[0].shape[1]
    tile = np.empty((block, nc), dtype=feats[0].dtype)
    for b0 in range(j0, j1, block):
        b1 = min(j1, b0 + block)
        for v in range(len(offs)):
            feat, off, fx, fy, sv, dy = feats[v], offs[v], fxs[v], fys[v], scales[v], dys[v]
            for j in range(b0, b1):
                ax = fx[j]
                ay = fy[j]
                ex = o1 - ax
                sy = o1 - ay
                a = sy * ex
                b = sy * ax
                c2 = ay * ex
                d = ay * ax
                sc = sv[j]
                p = off[j]
                r0 = feat[p]
                r1 = feat[p + 1]
                r2 = feat[p + dy]
                r3 = feat[p + dy + 1]
                t = tile[j - b0]
                if v == 0:
                    for c in range(nc):
                        t[c] = _fma(r3[c], d, _fma(r2[c], c2, _fma(r1[c], b, r0[c] * a))) * sc
                else:
                    for c in range(nc):
                        t[c] = t[c] + _fma(r3[c], d, _fma(r2[c], c2, _fma(r1[c], b, r0[c] * a))) * sc
        m = b1 - b0
        cn = count[b0:b1]
        for bi in range(nb):
            for c in range(per):
                o = out[bi, c, b0:b1]
                col = tile[:m, bi * per + c]
                for i in range(m):
                    o[i] = col[i] / cn[i]


@njit(fastmath=False, cache=True, nogil=True)
def _scatter_block(t, off, fx, fy, o1, dy, b0, b1, grad, factor, scaled):
    """Add ``t (voxels b0..b1, channels)`` into the four pixels of each voxel of ``grad
    (pixels, channels)`` with its bilinear weights, voxel by voxel (all four corners of a voxel
    before the next voxel: neighbouring voxels often share their pixels, and four independent
    read-modify-write streams keep the core busy where one pixel after another would wait for
    the previous voxel's store). With ``scaled``, voxel ``i``'s row is first multiplied by
    ``factor[b0 + i]`` (rounded, as if stored), which saves a pass over the tile."""
    nc = t.shape[1]
    for j in range(b0, b1):
        i = j - b0
        ax = fx[j]
        ay = fy[j]
        ex = o1 - ax
        sy = o1 - ay
        w0 = sy * ex
        w1 = sy * ax
        w2 = ay * ex
        w3 = ay * ax
        p = off[j]
        g0 = grad[p]
        g1 = grad[p + 1]
        g2 = grad[p + dy]
        g3 = grad[p + dy + 1]
        ti = t[i]
        if scaled:
            f = factor[j]
            for c in range(nc):
                v = ti[c] * f
                g0[c] += v * w0
                g1[c] += v * w1
                g2[c] += v * w2
                g3[c] += v * w3
        else:
            for c in range(nc):
                v = ti[c]
                g0[c] += v * w0
                g1[c] += v * w1
                g2[c] += v * w2
                g3[c] += v * w3


@njit(cache=True, nogil=True)
def _tile(block, nc, dtype):
    """The adjoint kernels' scratch: a voxels x channels tile."""
    return np.empty((block, nc), dtype=dtype)


@njit(fastmath=False, cache=True, nogil=True)
def _adjoint_slab(g, off, fx, fy, scale, one, dy, block, grad, c0, c1):
    o1 = one[0]
    n = off.shape[0]
    per = g.shape[1]
    t = _tile(block, c1 - c0, g.dtype)
    for b0 in range(0, n, block):
        b1 = min(n, b0 + block)
        m = b1 - b0
        sc = scale[b0:b1]
        for k in range(c0, c1):  # g (batch, channels, voxels) -> t (voxels, channels), times the factor
            gk = g[k // per, k % per, b0:b1]
            col = t[:m, k - c0]
            for i in range(m):
                col[i] = gk[i] * sc[i]
        _scatter_block(t, off, fx, fy, o1, dy, b0, b1, grad, scale, False)


@njit(fastmath=False, cache=True, nogil=True)
def _adjoint_slab_mean(g, offs, fxs, fys, scales, one, dys, count, block, grads, c0, c1):
    """The transpose of the views' mean for every view at once (tuples of the views' tables
    and accumulators): the gradient block is read, transposed and divided by the count once,
    then each view's factor applied and scattered; each view's sums as in :func:`_adjoint_slab`."""
    o1 = one[0]
    n = offs[0].shape[0]
    nc = c1 - c0
    per = g.shape[1]
    gd = _tile(block, nc, g.dtype)
    for b0 in range(0, n, block):
        b1 = min(n, b0 + block)
        m = b1 - b0
        cn = count[b0:b1]
        for k in range(c0, c1):  # g (batch, channels, voxels) -> gd (voxels, channels) / count
            gk = g[k // per, k % per, b0:b1]
            col = gd[:m, k - c0]
            for i in range(m):
                col[i] = gk[i] / cn[i]
        for v in range(len(offs)):  # each view's factor applied as its scatter reads the row
            _scatter_block(gd, offs[v], fxs[v], fys[v], o1, dys[v], b0, b1, grads[v], scales[v], True)


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


def _run(calls, threads: int) -> None:
    if threads <= 1 or len(calls) <= 1:
        for fn, args in calls:
            fn(*args)
        return
    futures = [_pool(threads).submit(fn, *args) for fn, args in calls]
    for f in futures:
        f.result()


def forward(feat, off, fx, fy, scale, one, dy, out, block, threads: int) -> None:
    """``feat (h*w + w + 1, B*C)`` channels-last (padded) -> ``out (B, C, N)``: ``threads``
    contiguous voxel ranges, each in tiles of ``block`` voxels."""
    n = off.shape[0]
    parts = max(1, min(threads, n // block))
    bounds = [n * k // parts for k in range(parts + 1)]
    _run([(_forward_range, (feat, off, fx, fy, scale, one, dy, out, bounds[k], bounds[k + 1], block))
          for k in range(parts)], threads)


def forward_mean(feats, offs, fxs, fys, scales, one, dys, count, out, block, threads: int) -> None:
    """The views' mean ``out (B, C, N)`` from every view's channels-last (padded) map ``feats[v]``
    and table, in one pass (:func:`_forward_range_mean`): ``threads`` contiguous voxel ranges."""
    n = offs[0].shape[0]
    parts = max(1, min(threads, n // block))
    bounds = [n * k // parts for k in range(parts + 1)]
    _run([(_forward_range_mean, (feats, offs, fxs, fys, scales, one, dys, count, out, bounds[k], bounds[k + 1],
                                 block)) for k in range(parts)], threads)


def adjoint(g, off, fx, fy, scale, one, dy, block, rows: int, threads: int):
    """``g (B, C, N)`` -> the channels-last gradient of the (padded) map, ``rows`` pixels, as
    slabs ``(slabs, rows, width)`` of flattened channels ``bounds[s]..bounds[s+1]``: one thread
    per slab (no two threads write the same element; each element's sum in the same order
    whatever the thread count). Returns ``(slabs, bounds)``; :func:`channels_first` unpacks them."""
    nbc = g.shape[0] * g.shape[1]
    parts = max(1, min(threads, nbc))
    bounds = np.array([nbc * k // parts for k in range(parts + 1)], dtype=np.int64)
    width = int(np.max(np.diff(bounds)))
    acc = np.zeros((parts, rows, width), dtype=g.dtype)
    _run([(_adjoint_slab, (g, off, fx, fy, scale, one, dy, block, acc[k], int(bounds[k]),
                           int(bounds[k + 1]))) for k in range(parts)], threads)
    return acc, bounds


def adjoint_mean(g, offs, fxs, fys, scales, one, dys, count, block, rows, threads: int):
    """``g (B, C, N)``, the gradient of the views' mean -> per view the channels-last gradient of
    its (padded) map, as :func:`adjoint` gives it (``(slabs, rows[v], width)`` per view, and the
    slab bounds), in one pass over ``g``. ``offs, fxs, fys, scales``: tuples of the views' tables;
    ``dys``: tuple of the maps' widths; ``rows``: tuple of the padded pixel counts."""
    nbc = g.shape[0] * g.shape[1]
    parts = max(1, min(threads, nbc))
    bounds = np.array([nbc * k // parts for k in range(parts + 1)], dtype=np.int64)
    width = int(np.max(np.diff(bounds)))
    accs = tuple(np.zeros((parts, r, width), dtype=g.dtype) for r in rows)
    _run([(_adjoint_slab_mean, (g, offs, fxs, fys, scales, one, dys, count, block,
                                tuple(a[k] for a in accs), int(bounds[k]), int(bounds[k + 1])))
          for k in range(parts)], threads)
    return accs, bounds
