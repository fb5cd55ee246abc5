"""Backend ``"numba"``: Joseph's ray-driven projector as parallel numba kernels (CPU).

Model
-----
Joseph (1982), for cone beams. Each ray ``source + t (pixel - source)``, ``0 <= t <= 1``, is
written in voxel-index coordinates (voxel centres at integers) and assigned its
*dominant axis* ``a``: the axis along which it advances most voxels per unit length. The
ray crosses every voxel-centre plane ``k = 0 .. n_a - 1`` of that axis once; in each plane
the volume is interpolated bilinearly in the two other axes (zero beyond the outermost
voxel centres, so it falls linearly to zero over the half voxel outside the box), and the
line integral is

    sum_k  bilinear_k(ray at plane k) * dl,      dl = |pixel - source| / |d_a|

with ``dl`` the length of ray between two consecutive planes (``d_a``: the ray direction's
component along ``a`` in voxels). A ray entering and leaving through the faces normal to
``a`` gets exactly the box length for a constant volume. Axes with a single voxel are
special as in the ``"torch"`` backend: across such an axis the volume is constant over the
slab (one voxel thick) and zero outside.

Compared with the ``"torch"`` backend (trilinear samples every half voxel), this takes one
bilinear sample (4 voxel reads) per voxel plane instead of two trilinear samples (16
reads), and the line integral is continuous in the geometry as long as no ray changes its
dominant axis.

Kernels
-------
* ray set-up (parallel over rays): dominant axis, the two in-plane coordinates as affine
  functions of the plane index, ``dl``, and the range of planes where the ray meets the
  interpolant's support and lies between the source and the pixel;
* forward (parallel over blocks of detector rows, dynamically scheduled): one ray at a
  time, plane by plane; neighbouring rays of a row read neighbouring voxels, so a block
  works from cache;
* back-projection, the exact transpose of the forward (same samples, same weights):
  rays grouped by dominant axis; each thread owns a contiguous range of planes of that
  axis and scatters every ray's samples in its planes only. Since a sample in plane ``k``
  writes to plane ``k`` only, no two threads write the same voxel: there is no race, no
  per-thread volume buffer and no extra memory, and every voxel sums its contributions in
  the same ray order whatever the thread count, so results are bitwise identical across
  thread counts.

Ray geometry is set up in float64; along the ray the two in-plane coordinates advance in
exact 32.32 fixed point; interpolation runs in the volume's dtype and each ray's sum is
accumulated in float64. Volumes and projections are read and written in their own dtype
(float32 or float64; numba compiles one specialisation per dtype). Samples whose taps
all lie inside the grid (nearly all) run a loop without bounds checks; the few at the
edges run a checked one. The per-ray table of the last geometry is kept, so a forward
projection and its backward pass (or the iterations of a solver) set it up once.

Compiled kernels: where the optional C extension ``tomoprior.projectors._joseph`` was built at
install (``setup.py``; it needs a C compiler, and uses SIMD gathers on x86-64 with AVX2 or
AVX-512, GCC >= 12), the forward projection runs there instead (:func:`compiled_kernels`;
``tomoprior info`` says which). It computes the same samples with the same arithmetic in the
same order, so the results are **bitwise identical** to the numba kernels, and faster: it
walks the rays of a detector row plane by plane, 8 or 16 rays in the lanes of one vector
(their four taps gathered; for float32 on AVX-512, rows nearly parallel to the voxel planes'
rows, as on an untilted or slightly tilted detector, take them from contiguous loads and
permutes instead); rays along x read a transposed copy of the volume (one extra volume of
memory). Measured at 2 threads: 2-6x the numba kernel at 128^3-512^3 on AMD Zen 4, 1.1-2.3x on
Zen 5. The extension also has a back-projection (the numba kernel's ray-by-ray order, which
fixes each voxel's summation order, with one ray's inner samples in SIMD lanes and their
scatters), bitwise identical too, but it did not beat the numba kernel at 2 threads (0.8-1.6x on
Zen 4, 0.5-0.7x on Zen 5), so by default the back-projection runs the numba kernel.
``TOMOPRIOR_COMPILED_KERNELS``: ``auto`` (default), ``all`` (both directions compiled), ``0``
(numba kernels only). The compiled kernels use their own POSIX threads
(``torch.get_num_threads()``).

Threads: ``torch.get_num_threads()`` (capped at ``numba.config.NUMBA_NUM_THREADS``), read
on every call. With one thread, serial copies of the kernels run without numba's thread
pool; so they do in a process forked after its parent ran the parallel kernels on numba's
GNU OpenMP layer (its default unless ``tbb`` is installed), e.g. ``DataLoader`` workers,
where OpenMP cannot start and numba would terminate the process.

Gradients
---------
With respect to the volume (and the projections): through :func:`~tomoprior.backproject`
/ :func:`~tomoprior.project` of this backend, i.e. exact for this model.

**With respect to the view vectors (source, detector centre, u, v) the kernels give no
gradient; the backend falls back to the ``"torch"`` backend's autograd gradient** (the
derivative of the trilinear half-voxel ray-marching model, a close approximation of the
derivative of this model, not its exact derivative: expect agreement with finite
differences of this backend to a few percent, and a mismatch wherever a ray changes its
dominant axis, where this model is discontinuous). That path runs in plain torch and is
as slow as the ``"torch"`` backend.

Performance
-----------
2 cores (AMD EPYC VM), 2 threads, float32, a 128^3 volume into two 256 x 256 views:
forward 0.026 s, back-projection 0.03 s, forward + backward 0.058 s, about 40x the
``"torch"`` backend (numba kernels). The compiled kernels, same-run ratios on a loaded 2-core
Xeon VM (docs/benchmarks.md): forward 3.1x (one thread) and 2.0x (two threads),
back-projection 1.0-1.4x, forward + backward 1.35-1.55x the numba kernels. Time is linear
in rays x planes (numba kernels: 0.45-0.6 billion samples/s); a 256^3 volume into two
512 x 512 views takes 0.26 s / 0.23 s / 0.5 s, and the only extra memory is the ray table
(about 100 bytes per detector pixel, 50 MB there; the compiled forward adds a transposed
copy of the volume, up to 1 GiB, when rays run along x).

Compilation
-----------
The kernels are compiled on first use: about 5 s for the first call, 10 s in all for
both dtypes and the serial and parallel variants (2 cores). They are cached on disk
(``cache=True``: ``__pycache__`` next to this file, or numba's user cache directory if
that is read-only), so later processes load them in about 0.3 s.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from ..geometry.grid import VolumeGrid
from .base import Backend

try:  # numba is a required dependency: a failing import is a broken installation, say so
    import numba
    from numba import njit, prange
except ImportError as err:  # pragma: no cover - only on a broken installation
    raise ImportError(f"tomoprior's CPU projector needs numba, a required dependency, and `import numba` failed "
                      f"({err}); reinstall it with: pip install --force-reinstall 'numba>=0.59'") from err


#: Detector pixels (rays) per work item of the forward kernel (dynamically scheduled).
FORWARD_BLOCK = 256
#: Largest volume (bytes, all batch items) for which the compiled forward makes the transposed
#: copy that rays along x read (beyond it they gather from the volume itself: slower, no copy).
TRANSPOSED_COPY_MAX_BYTES = 1 << 30
#: In ``auto`` mode the compiled forward projection runs for volumes (all batch items) of at
#: least this many voxels; smaller ones take the numba kernel, which was as fast or faster below
#: about 96^3 (2 threads, AMD Zen 5: compiled 0.5-0.95x at 64^3 -> 2 x 128^2, 0.94-0.96x at 80^3,
#: 1.1-1.2x at 96^3, 1.3x at 128^3; the compiled call's fixed costs, its threads and the transposed
#: copy, dominate small problems). ``all`` uses the compiled kernels at every size.
COMPILED_FORWARD_MIN_VOXELS = 96 ** 3
#: Plane ranges per thread in the back-projection (balanced by sample counts). Every range
#: costs a pass over all the rays of its view, which more ranges per thread (for dynamic load
#: balance) did not earn back: at 128^3 -> 2 x 256^2, 2 threads, 2 per thread took 8 % longer
#: than 1 on an idle machine and 28 % longer with both cores busy (docs/benchmarks.md).
ADJOINT_PARTS_PER_THREAD = 1

# In-plane coordinates are stepped in 32.32 fixed point: integer steps are exact, so the
# back-projection recomputes bit for bit the sample positions and interpolation fractions
# of the forward projection (whatever part of a ray it starts from), the step needs no
# multiplication, and floor / fraction are a shift and a mask.
_FRAC_BITS = 32
_ONE = float(1 << _FRAC_BITS)
_MASK = (1 << _FRAC_BITS) - 1
_INV_ONE = 1.0 / _ONE

# Columns of the per-ray integer table built by _setup_ray.
_AXIS, _K0, _K1, _P, _DP, _Q, _DQ, _LO, _HI = range(9)
_RAY_COLUMNS = 10
#: The interface version of the compiled kernels (``_joseph.c``'s ABI_VERSION) this code calls.
_ABI_VERSION = 4


# -- kernels ------------------------------------------------------------------------------

@njit(cache=True)
def _axis_layout(a, nx, ny, nz):
    """Strides ``(s_a, s_b, s_c)`` and sizes ``(n_b, n_c)`` of the in-plane axes ``b``, ``c`` for
    dominant axis ``a`` (0: x, 1: y, 2: z); ``c`` is the one with the smaller memory stride."""
    if a == 0:
        return 1, nx * ny, nx, nz, ny
    if a == 1:
        return nx, nx * ny, 1, nz, nx
    return nx * ny, nx, 1, ny, nx


@njit(cache=True)
def _edge_taps(p_fix, n):
    """Taps ``(i0, w0, i1, w1)`` at fixed-point index coordinate ``p_fix`` on an axis of ``n``
    voxels: linear interpolation between voxel centres, zero beyond the outermost ones (a
    constant slab of half-width 1/2 if ``n == 1``). Taps outside the axis get weight 0 and a
    valid index. Used where a sample is not strictly inside the grid (rare)."""
    i = p_fix >> _FRAC_BITS
    f = (p_fix & _MASK) * _INV_ONE
    if n == 1:
        p = i + f
        if -0.5 <= p <= 0.5:
            return 0, 1.0, 0, 0.0
        return 0, 0.0, 0, 0.0
    w0 = 1.0 - f
    w1 = f
    i0 = i
    i1 = i + 1
    if i0 < 0 or i0 >= n:
        i0 = 0
        w0 = 0.0
    if i1 < 0 or i1 >= n:
        i1 = 0
        w1 = 0.0
    return i0, w0, i1, w1


@njit(cache=True)
def _plane_range(p0, dp, n, kmin, kmax):
    """Narrow ``[kmin, kmax]`` (floats) to the planes ``k`` where ``p0 + k dp`` may meet the
    support of the interpolant on an axis of ``n`` voxels (one plane of slack each side:
    the samples themselves decide)."""
    if n > 1:
        lo, hi = -1.0, float(n)
    else:
        lo, hi = -0.5, 0.5
    if dp == 0.0:
        if lo - 1e-9 <= p0 <= hi + 1e-9:
            return kmin, kmax
        return 1.0, 0.0
    t1 = (lo - p0) / dp
    t2 = (hi - p0) / dp
    return max(kmin, math.floor(min(t1, t2)) - 1.0), min(kmax, math.ceil(max(t1, t2)) + 1.0)


@njit(cache=True)
def _inside(p, dp, lim, count):
    """Sample offsets ``[lo, hi)`` within ``[0, count)`` where ``0 <= p + m dp < lim`` (exact
    integer arithmetic on fixed-point coordinates): where both interpolation taps along
    this axis are inside the grid."""
    if dp == 0:
        if 0 <= p < lim:
            return 0, count
        return 0, 0
    if dp > 0:
        lo = -(p // dp)
        hi = (lim - 1 - p) // dp + 1
    else:
        lo = (p - lim) // (-dp) + 1
        hi = p // (-dp) + 1
    lo = min(max(lo, 0), count)
    hi = min(max(hi, lo), count)
    return lo, hi


@njit(fastmath=False, cache=True)
def _setup_ray(vectors, rows, cols, offsets, origin, spacing, nxyz, rp, dl, ray):
    """Per-ray constants of pixel ray ``ray`` (flat pixel order over all views).

    ``rp[ray] = (axis, k0, k1, P, dP, Q, dQ, lo, hi, 0)``: dominant axis; first and last plane
    that may contribute (``k0 > k1``: the ray misses); the in-plane index coordinates at plane
    ``k0`` and their steps per plane, in 32.32 fixed point, for the slower (``P``) and the
    faster (``Q``) in-plane axis; the samples ``k0 + lo <= k < k0 + hi`` have all four taps
    inside the grid (no bounds checks needed). ``dl[ray]``: ray length (mm) between
    consecutive planes.
    """
    nviews = vectors.shape[0]
    view = 0
    while view + 1 < nviews and ray >= offsets[view + 1]:
        view += 1
    local = ray - offsets[view]
    r = local // cols[view]
    c = local - r * cols[view]
    cu = c - 0.5 * (cols[view] - 1)
    rv = r - 0.5 * (rows[view] - 1)
    # source and direction in voxel-index units (voxel centres at integers), x, y, z
    sx = vectors[view, 0]
    sy = vectors[view, 1]
    sz = vectors[view, 2]
    ex = vectors[view, 3] + cu * vectors[view, 6] + rv * vectors[view, 9] - sx
    ey = vectors[view, 4] + cu * vectors[view, 7] + rv * vectors[view, 10] - sy
    ez = vectors[view, 5] + cu * vectors[view, 8] + rv * vectors[view, 11] - sz
    length = math.sqrt(ex * ex + ey * ey + ez * ez)
    s_i = ((sx - origin[0]) / spacing[0], (sy - origin[1]) / spacing[1], (sz - origin[2]) / spacing[2])
    d_i = (ex / spacing[0], ey / spacing[1], ez / spacing[2])
    a = 0
    if abs(d_i[1]) > abs(d_i[a]):
        a = 1
    if abs(d_i[2]) > abs(d_i[a]):
        a = 2
    for j in range(_RAY_COLUMNS):
        rp[ray, j] = 0
    rp[ray, _AXIS] = a
    rp[ray, _K1] = -1
    dl[ray] = 0.0
    da = d_i[a]
    if da == 0.0:
        return
    if a == 0:
        b, cc = 2, 1
    elif a == 1:
        b, cc = 2, 0
    else:
        b, cc = 1, 0
    dp = d_i[b] / da
    dq = d_i[cc] / da
    p0 = s_i[b] - s_i[a] * dp
    q0 = s_i[cc] - s_i[a] * dq
    kmin = 0.0
    kmax = float(nxyz[a] - 1)
    # the ray is the segment from the source to its pixel: only planes between them count
    # (nothing behind the source, nothing beyond the detector)
    if da > 0:
        kmin = max(kmin, math.ceil(s_i[a]))
        kmax = min(kmax, math.floor(s_i[a] + da))
    else:
        kmax = min(kmax, math.floor(s_i[a]))
        kmin = max(kmin, math.ceil(s_i[a] + da))
    kmin, kmax = _plane_range(p0, dp, nxyz[b], kmin, kmax)
    kmin, kmax = _plane_range(q0, dq, nxyz[cc], kmin, kmax)
    if kmin > kmax:
        return
    count = int(kmax) - int(kmin) + 1
    k0 = int(kmin)
    p_fix = math.floor((p0 + kmin * dp) * _ONE + 0.5)
    dp_fix = math.floor(dp * _ONE + 0.5)
    q_fix = math.floor((q0 + kmin * dq) * _ONE + 0.5)
    dq_fix = math.floor(dq * _ONE + 0.5)
    # samples whose four taps are all inside the grid: offsets [lo, hi) from k0
    lo_p, hi_p = _inside(p_fix, dp_fix, (nxyz[b] - 1) << _FRAC_BITS, count)
    lo_q, hi_q = _inside(q_fix, dq_fix, (nxyz[cc] - 1) << _FRAC_BITS, count)
    lo = max(lo_p, lo_q)
    rp[ray, _K0] = k0
    rp[ray, _K1] = k0 + count - 1
    rp[ray, _P] = p_fix
    rp[ray, _DP] = dp_fix
    rp[ray, _Q] = q_fix
    rp[ray, _DQ] = dq_fix
    rp[ray, _LO] = lo
    rp[ray, _HI] = max(lo, min(hi_p, hi_q))
    dl[ray] = length / abs(da)


@njit(parallel=True, fastmath=False, cache=True)
def _setup_rays_parallel(vectors, rows, cols, offsets, origin, spacing, nxyz, rp, dl):
    """:func:`_setup_ray` for every ray, in parallel."""
    for ray in prange(rp.shape[0]):
        _setup_ray(vectors, rows, cols, offsets, origin, spacing, nxyz, rp, dl, ray)


@njit(fastmath=False, cache=True)
def _setup_rays_serial(vectors, rows, cols, offsets, origin, spacing, nxyz, rp, dl):
    """:func:`_setup_ray` for every ray, in this thread (no threading layer involved)."""
    for ray in range(rp.shape[0]):
        _setup_ray(vectors, rows, cols, offsets, origin, spacing, nxyz, rp, dl, ray)


@njit(cache=True)
def _gather_inner(vb, p, dp, q, dq, kb, sa, sb, sc, m0, m1):
    """Sum of the bilinear samples ``m0 <= m < m1`` of a ray, all taps inside (no checks).

    Interpolation runs in the volume's dtype (float32 is ~10 % faster than converting every
    tap to float64); the sum over the ray is accumulated in float64.
    """
    real = vb.dtype.type
    inv = real(_INV_ONE)
    p += m0 * dp
    q += m0 * dq
    kb += m0 * sa
    usb = np.uint64(sb)
    usc = np.uint64(sc)
    usbc = usb + usc
    acc = 0.0
    for _ in range(m1 - m0):
        fp = real(p & _MASK) * inv
        fq = real(q & _MASK) * inv
        # unsigned indices: no negative-index wraparound code in the hot loop
        idx = np.uint64(kb + (p >> _FRAC_BITS) * sb + (q >> _FRAC_BITS) * sc)
        v00 = vb[idx]
        v10 = vb[idx + usb]
        lo = v00 + fq * (vb[idx + usc] - v00)
        hi = v10 + fq * (vb[idx + usbc] - v10)
        acc += lo + fp * (hi - lo)
        p += dp
        q += dq
        kb += sa
    return acc


@njit(cache=True)
def _gather_edge(vb, p, dp, q, dq, kb, sa, sb, sc, nb, nc, m0, m1):
    """As :func:`_gather_inner` for samples with taps outside the grid (zero there)."""
    p += m0 * dp
    q += m0 * dq
    kb += m0 * sa
    acc = 0.0
    for _ in range(m1 - m0):
        i0, w0, i1, w1 = _edge_taps(p, nb)
        j0, u0, j1, u1 = _edge_taps(q, nc)
        acc += (w0 * (u0 * vb[kb + i0 * sb + j0 * sc] + u1 * vb[kb + i0 * sb + j1 * sc])
                + w1 * (u0 * vb[kb + i1 * sb + j0 * sc] + u1 * vb[kb + i1 * sb + j1 * sc]))
        p += dp
        q += dq
        kb += sa
    return acc


@njit(cache=True)
def _scatter_inner(ob, c, p, dp, q, dq, kb, sa, sb, sc, m0, m1):
    """Transpose of :func:`_gather_inner`: add ``c * weight`` to the taps of samples
    ``m0 <= m < m1`` (arithmetic in the dtype of ``ob``)."""
    real = ob.dtype.type
    inv = real(_INV_ONE)
    one = real(1.0)
    c = real(c)
    p += m0 * dp
    q += m0 * dq
    kb += m0 * sa
    usb = np.uint64(sb)
    usc = np.uint64(sc)
    usbc = usb + usc
    for _ in range(m1 - m0):
        fp = real(p & _MASK) * inv
        fq = real(q & _MASK) * inv
        idx = np.uint64(kb + (p >> _FRAC_BITS) * sb + (q >> _FRAC_BITS) * sc)
        cf = c * fp
        cp = c - cf
        gq = one - fq
        ob[idx] += cp * gq
        ob[idx + usc] += cp * fq
        ob[idx + usb] += cf * gq
        ob[idx + usbc] += cf * fq
        p += dp
        q += dq
        kb += sa


@njit(cache=True)
def _scatter_edge(ob, c, p, dp, q, dq, kb, sa, sb, sc, nb, nc, m0, m1):
    """Transpose of :func:`_gather_edge`."""
    p += m0 * dp
    q += m0 * dq
    kb += m0 * sa
    for _ in range(m1 - m0):
        i0, w0, i1, w1 = _edge_taps(p, nb)
        j0, u0, j1, u1 = _edge_taps(q, nc)
        ob[kb + i0 * sb + j0 * sc] += c * (w0 * u0)
        ob[kb + i0 * sb + j1 * sc] += c * (w0 * u1)
        ob[kb + i1 * sb + j0 * sc] += c * (w1 * u0)
        ob[kb + i1 * sb + j1 * sc] += c * (w1 * u1)
        p += dp
        q += dq
        kb += sa


@njit(fastmath=False, cache=True)
def _forward_rays(vol, rp, dl, nxyz, out, r0, r1):
    """``out[b, ray] = dl * sum_k bilinear(vol[b], plane k, ray)`` for the rays ``r0 <= ray < r1``,
    one ray at a time, plane by plane. ``vol``: ``(B, nvox)`` C-contiguous (x fastest)."""
    nbatch = vol.shape[0]
    nx, ny, nz = nxyz[0], nxyz[1], nxyz[2]
    for ray in range(r0, r1):
        k0 = rp[ray, _K0]
        count = rp[ray, _K1] - k0 + 1
        if count <= 0:
            for bi in range(nbatch):
                out[bi, ray] = 0.0
            continue
        sa, sb, sc, nb, nc = _axis_layout(rp[ray, _AXIS], nx, ny, nz)
        p, dp, q, dq = rp[ray, _P], rp[ray, _DP], rp[ray, _Q], rp[ray, _DQ]
        kb = k0 * sa
        lo, hi = rp[ray, _LO], rp[ray, _HI]
        for bi in range(nbatch):
            vb = vol[bi]
            acc = _gather_edge(vb, p, dp, q, dq, kb, sa, sb, sc, nb, nc, 0, lo)
            acc += _gather_inner(vb, p, dp, q, dq, kb, sa, sb, sc, lo, hi)
            acc += _gather_edge(vb, p, dp, q, dq, kb, sa, sb, sc, nb, nc, hi, count)
            out[bi, ray] = acc * dl[ray]


@njit(parallel=True, fastmath=False, cache=True)
def _forward_parallel(vol, rp, dl, nxyz, out, block):
    """:func:`_forward_rays` over blocks of ``block`` consecutive rays (a detector row) in
    parallel: neighbouring rays read neighbouring voxels, so a block works from cache."""
    nrays = rp.shape[0]
    for blk in prange((nrays + block - 1) // block):
        _forward_rays(vol, rp, dl, nxyz, out, blk * block, min(nrays, (blk + 1) * block))


@njit(fastmath=False, cache=True)
def _forward_serial(vol, rp, dl, nxyz, out):
    """:func:`_forward_rays` over all rays in this thread."""
    _forward_rays(vol, rp, dl, nxyz, out, 0, rp.shape[0])


@njit(fastmath=False, cache=True)
def _adjoint_planes(proj, rays, a, rp, dl, nxyz, ka, kz, out):
    """Add ``proj[b, ray] * dl * weight`` of the samples in the planes ``ka <= k < kz`` of the
    rays ``rays`` (all of dominant axis ``a``) into ``out`` ``(B, nvox)``: the transpose of
    :func:`_forward_rays` restricted to those planes, which it alone writes."""
    nbatch = proj.shape[0]
    nx, ny, nz = nxyz[0], nxyz[1], nxyz[2]
    sa, sb, sc, nb, nc = _axis_layout(a, nx, ny, nz)
    for t in range(rays.shape[0]):
        ray = rays[t]
        k0 = rp[ray, _K0]
        count = rp[ray, _K1] - k0 + 1
        # this range's samples of the ray: offsets [m0, m1)
        m0 = max(ka - k0, 0)
        m1 = min(kz - k0, count)
        if m0 >= m1:
            continue
        p, dp, q, dq = rp[ray, _P], rp[ray, _DP], rp[ray, _Q], rp[ray, _DQ]
        kb = k0 * sa
        lo = min(max(rp[ray, _LO], m0), m1)
        hi = min(max(rp[ray, _HI], lo), m1)
        for bi in range(nbatch):
            c = proj[bi, ray] * dl[ray]
            if c == 0.0:
                continue
            ob = out[bi]
            _scatter_edge(ob, c, p, dp, q, dq, kb, sa, sb, sc, nb, nc, m0, lo)
            _scatter_inner(ob, c, p, dp, q, dq, kb, sa, sb, sc, lo, hi)
            _scatter_edge(ob, c, p, dp, q, dq, kb, sa, sb, sc, nb, nc, hi, m1)


@njit(parallel=True, fastmath=False, cache=True)
def _adjoint_parallel(proj, rays, a, rp, dl, nxyz, bounds, out):
    """:func:`_adjoint_planes` for the plane ranges ``[bounds[w], bounds[w + 1])`` in parallel.

    A sample in plane ``k`` writes to plane ``k`` only, so no two work items write the same
    voxel, and every voxel adds its contributions in the order of ``rays`` whatever
    ``bounds`` and the thread count: no race, no per-thread buffers, bitwise reproducible.
    """
    for w in prange(bounds.shape[0] - 1):
        _adjoint_planes(proj, rays, a, rp, dl, nxyz, bounds[w], bounds[w + 1], out)


@njit(fastmath=False, cache=True)
def _adjoint_serial(proj, rays, a, rp, dl, nxyz, out):
    """:func:`_adjoint_planes` for all planes in this thread."""
    _adjoint_planes(proj, rays, a, rp, dl, nxyz, 0, nxyz[a], out)


@njit(cache=True)
def _plane_bounds(rp, rays, a, na, parts):
    """Split the planes of axis ``a`` into ``parts`` contiguous ranges of about equal sample
    counts (load balance of the back-projection); returns the ``parts + 1`` boundaries."""
    work = np.zeros(na + 1, np.int64)
    for t in range(rays.shape[0]):
        work[rp[rays[t], _K0]] += 1
        work[rp[rays[t], _K1] + 1] -= 1
    total = 0
    running = 0
    for k in range(na):
        running += work[k]
        work[k] = running
        total += running
    bounds = np.empty(parts + 1, np.int64)
    bounds[0] = 0
    j = 1
    acc = 0
    for k in range(na):
        acc += work[k]
        while j < parts and acc * parts >= j * total:
            bounds[j] = k + 1
            j += 1
    while j <= parts:
        bounds[j] = na
        j += 1
    return bounds


# -- backend ------------------------------------------------------------------------------

@dataclass(frozen=True)
class _RayTable:
    """Per-ray constants of one geometry (see :func:`_setup_ray`) and the rays that hit,
    grouped by dominant axis."""

    nxyz: np.ndarray  # (3,) int64: nx, ny, nz
    rp: np.ndarray  # (rays, _RAY_COLUMNS) int64
    dl: np.ndarray  # (rays,) float64, mm
    groups: tuple  # per axis x, y, z: int64 indices of the hitting rays of that dominant axis


#: Bytes per ray of the table and its set-up temporaries (rp: 80, dl: 8, groups: 8, masks).
_TABLE_BYTES_PER_RAY = 112

# The last geometry's table: a forward followed by its backward (or an iterative solver)
# sets it up once. It holds about 100 bytes per detector pixel.
_LAST_TABLE: dict = {}


def _ray_table(grid: VolumeGrid, shapes, vectors: torch.Tensor, threads: int) -> _RayTable:
    """The ray table of a geometry (``vectors``: ``(views, 12)``), from the cache if it is the last one."""
    vec = np.ascontiguousarray(vectors.detach().to(device="cpu", dtype=torch.float64).numpy())
    key = (grid, tuple(tuple(int(n) for n in s) for s in shapes), vec.tobytes())
    table = _LAST_TABLE.get(key)
    if table is not None:
        return table
    rows = np.array([s[0] for s in shapes], dtype=np.int64)
    cols = np.array([s[1] for s in shapes], dtype=np.int64)
    counts = rows * cols
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    nxyz = np.array(grid.shape_xyz, dtype=np.int64)
    spacing = np.array(grid.spacing_xyz, dtype=np.float64)
    origin = np.array(grid.center, dtype=np.float64) - 0.5 * (nxyz - 1) * spacing
    total = int(counts.sum())
    rp = np.empty((total, _RAY_COLUMNS), dtype=np.int64)
    dl = np.empty(total, dtype=np.float64)
    if threads > 1:
        _setup_rays_parallel(vec, rows, cols, offsets, origin, spacing, nxyz, rp, dl)
    else:
        _setup_rays_serial(vec, rows, cols, offsets, origin, spacing, nxyz, rp, dl)
    hit = rp[:, _K0] <= rp[:, _K1]
    groups = tuple(np.flatnonzero(hit & (rp[:, _AXIS] == a)) for a in range(3))
    table = _RayTable(nxyz, rp, dl, groups)
    _LAST_TABLE.clear()
    _LAST_TABLE[key] = table
    return table


# pid of the process that first ran the parallel kernels (see _threads)
_PARALLEL_PID: int | None = None


def _threads() -> int:
    """Threads for this call: ``torch.get_num_threads()``, capped at numba's pool size.

    One thread means the serial kernels, which never touch numba's threading layer. That
    is also the answer in a process forked after its parent ran the parallel kernels on
    numba's GNU OpenMP layer (the default without ``tbb`` installed): OpenMP cannot run in
    such a child and numba would terminate it, e.g. in ``DataLoader`` workers.
    """
    global _PARALLEL_PID
    n = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    if n == 1:
        return 1
    pid = os.getpid()
    if _PARALLEL_PID is None:
        _PARALLEL_PID = pid
    elif _PARALLEL_PID != pid and _layer_is_openmp():
        return 1
    numba.set_num_threads(n)
    return n


def _layer_is_openmp() -> bool:
    try:
        return numba.threading_layer() == "omp"
    except ValueError:  # no parallel kernel has run in this process image
        return False


#: Environment variable choosing the kernels where the compiled ones are installed (the results
#: are the same bit for bit): ``auto`` (default, also ``1``): compiled forward projection, numba
#: back-projection; ``all``: both compiled; ``0`` (or ``off``): numba kernels only.
COMPILED_ENV = "TOMOPRIOR_COMPILED_KERNELS"
_COMPILED_MODES = {"": "auto", "1": "auto", "auto": "auto", "all": "all", "0": "off", "off": "off"}
#: Why ``auto`` back-projects with the numba kernels (measured at 2 threads, 128^3 -> 2 x 256^2
#: up to 512^3 -> 2 x 1024^2, docs/benchmarks.md).
_ADJOINT_AUTO = ("numba kernels for the back-projection: the compiled one ran at 0.5-0.7x their speed on AMD "
                 f"Zen 5 and 0.8-1.6x on Zen 4 at 2 threads ({COMPILED_ENV}=all uses it)")


def _compiled_mode() -> str:
    raw = os.environ.get(COMPILED_ENV, "").strip().lower()
    if raw not in _COMPILED_MODES:
        raise ValueError(f"{COMPILED_ENV}={raw!r} is not a kernel choice: use auto (the default: compiled forward, "
                         "numba back-projection), all (both compiled) or 0 (numba kernels only)")
    return _COMPILED_MODES[raw]

#: ``(library or None, reason)`` once loaded (see :func:`compiled_kernels`).
_COMPILED: list = []


def _load_compiled():
    """Load ``_joseph`` (the optional C kernels) with ctypes: ``(library, reason)``."""
    import ctypes
    import importlib.util

    try:
        spec = importlib.util.find_spec(f"{__package__}._joseph")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin or spec.origin in ("built-in", "frozen"):
        return None, ("not built: the optional C extension tomoprior/projectors/_joseph.c was not compiled at "
                      "install (no C compiler?); reinstall with one (pip install -e . or pip install tomoprior) "
                      "for about 2x faster forward projections")
    try:
        lib = ctypes.CDLL(spec.origin)
    except OSError as err:
        return None, f"cannot be loaded ({err})"
    if lib.tp_joseph_abi_version() != _ABI_VERSION:
        return None, (f"stale build (ABI {lib.tp_joseph_abi_version()}, this code needs {_ABI_VERSION}): "
                      "reinstall tomoprior to rebuild it")
    level = int(lib.tp_joseph_simd_level())
    if level < 3:
        return None, ("built, but without SIMD gathers for this CPU (needs x86-64 with AVX2 and GCC >= 12), "
                      "where it is slower than the numba kernels")
    ptr, i64 = ctypes.c_void_p, ctypes.c_int64
    for name in ("tp_joseph_forward_f32", "tp_joseph_forward_f64"):
        fn = getattr(lib, name)
        fn.argtypes = [ptr, ptr, i64, i64, ptr, i64, ptr, ptr, ptr, i64, i64]
        fn.restype = ctypes.c_int
    lib.tp_joseph_bundle_groups.restype = ctypes.c_int64
    lib.tp_joseph_set_bundle_off.argtypes = [ctypes.c_int]
    for name in ("tp_joseph_adjoint_f32", "tp_joseph_adjoint_f64"):
        fn = getattr(lib, name)
        fn.argtypes = [ptr, i64, i64, ptr, i64, i64, ptr, ptr, ptr, ptr, i64, ptr, i64, i64]
        fn.restype = ctypes.c_int
    isa = {4: "x86-64-v4, AVX-512", 3: "x86-64-v3, AVX2"}[level]
    return lib, f"C with SIMD ({isa})"


def compiled_kernels(direction: str = "forward"):
    """The compiled kernels in use for ``direction`` (``"forward"`` or ``"adjoint"``, the
    back-projection), or ``None``: ``(library or None, description)``.

    The optional C extension ``tomoprior.projectors._joseph`` (built at install when a C
    compiler is present) has both directions in SIMD lanes, bitwise identical to the numba
    kernels (see the module docstring). By default (``TOMOPRIOR_COMPILED_KERNELS`` unset or
    ``auto``) the forward projection runs compiled for volumes of
    :data:`COMPILED_FORWARD_MIN_VOXELS` voxels and more (1.1-2.3x the numba kernel at
    128^3-512^3 on AMD Zen 5, 2-6x on Zen 4; smaller volumes take the numba kernel, which is
    as fast there) and the back-projection runs the numba kernel, which the compiled one did
    not beat at 2 threads; ``all`` runs both compiled at every size, ``0`` neither. This
    function names the library for ``direction``; the size rule applies per call.
    """
    if direction not in ("forward", "adjoint"):
        raise ValueError(f"direction must be 'forward' or 'adjoint', got {direction!r}")
    if not _COMPILED:
        _COMPILED.append(_load_compiled())
    lib, reason = _COMPILED[0]
    mode = _compiled_mode()
    if mode == "off":
        return None, f"turned off by {COMPILED_ENV}=0"
    if lib is not None and direction == "adjoint" and mode == "auto":
        return None, _ADJOINT_AUTO
    return lib, reason


def _forward_kernels(voxels: int):
    """The compiled library for a forward projection of ``voxels`` voxels (all batch items),
    or ``None`` for the numba kernel: :func:`compiled_kernels`, and in ``auto`` mode only from
    :data:`COMPILED_FORWARD_MIN_VOXELS` on."""
    lib, _ = compiled_kernels()
    if lib is not None and voxels < COMPILED_FORWARD_MIN_VOXELS and _compiled_mode() == "auto":
        return None
    return lib


class NumbaBackend(Backend):
    """Joseph's projector (bilinear in each voxel plane) as parallel numba CPU kernels: a
    whole-operator :class:`~tomoprior.projectors.Backend` (one progress step per call: the
    kernels run all views at once).

    Fast on CPU, float32 and float64, any batch size; the back-projection is the exact
    transpose of the forward and bitwise identical across thread counts. Threads:
    ``torch.get_num_threads()``. Tensors on other devices are copied to the CPU and the
    results copied back. No options.

    The gradient with respect to the view vectors is **not** this model's: it comes from
    the ``"torch"`` backend (trilinear ray marching at half-voxel steps), a close
    approximation, and runs at that backend's speed; see the module docstring.

    First use compiles the kernels (about 5 s; cached on disk for later processes).

    Examples
    --------
    >>> import torch, tomoprior as tp
    >>> from tomoprior.projectors.numba_backend import NumbaBackend
    >>> geom = tp.BiplanarGeometry.from_parameters(binning=16, grid=tp.VolumeGrid((32, 32, 32), (6, 6, 6)))
    >>> tp.project(torch.ones(32, 32, 32), geom, backend=NumbaBackend()).shape
    torch.Size([2, 96, 96])
    """

    name = "numba"
    #: A gradient is provided, but it is the "torch" backend's (see :meth:`vector_grad`).
    supports_vector_grad = True

    def __init__(self, **options):
        super().__init__(**options)  # no options: a clear error for any

    def describe(self) -> dict:
        lib, kernels = compiled_kernels()
        back, why = compiled_kernels("adjoint")
        if lib is None:
            text = f"numba (compiled kernels: {kernels})"
        else:
            small = ("" if _compiled_mode() == "all" else
                     f" from {COMPILED_FORWARD_MIN_VOXELS:,} voxels on (numba kernels below)")
            text = f"forward: {kernels}{small}; back-projection: " + (kernels if back is not None else why)
        return {"backend": self.name, "model": "Joseph: bilinear in each voxel plane of the dominant axis",
                "kernels": text,
                "vector_grad": "torch backend (trilinear ray marching, step 0.5)"}

    def memory_estimate(self, grid, shapes, batch, itemsize, *, adjoint):
        """Result and input copy plus the ray table (about 110 bytes per detector pixel), and
        for the compiled forward kernels a transposed copy of the volume."""
        pixels = sum(int(r) * int(c) for r, c in shapes)
        copy = batch * grid.num_voxels * itemsize
        compiled = not adjoint and _forward_kernels(batch * grid.num_voxels) is not None
        extra = copy if compiled and copy <= TRANSPOSED_COPY_MAX_BYTES else 0
        return batch * (pixels + grid.num_voxels) * itemsize + _TABLE_BYTES_PER_RAY * pixels + extra

    def forward(self, volume, grid, shapes, vectors, progress=None) -> torch.Tensor:
        """All views' line integrals, ``(B, nz, ny, nx) -> (B, total_pixels)``; no autograd."""
        threads = _threads()
        table = _ray_table(grid, shapes, vectors, threads)
        vol = volume.detach().to("cpu").reshape(volume.shape[0], grid.num_voxels).contiguous()
        out = torch.empty((vol.shape[0], table.rp.shape[0]), dtype=vol.dtype)
        v, o = vol.numpy(), out.numpy()
        lib = _forward_kernels(vol.numel())
        if lib is not None and vol.dtype in (torch.float32, torch.float64) and v.size and o.size:
            fn = lib.tp_joseph_forward_f32 if vol.dtype == torch.float32 else lib.tp_joseph_forward_f64
            # its own POSIX threads (not numba's pool): also safe in forked DataLoader workers
            workers = max(1, torch.get_num_threads())
            # rays along x (a lateral view) read a copy with y fastest (the kernel fills it), so
            # that the rays of one detector row, which fan out along y, read neighbouring floats
            nx, ny = int(table.nxyz[0]), int(table.nxyz[1])
            small = vol.numel() * vol.element_size() <= TRANSPOSED_COPY_MAX_BYTES
            vol_t = torch.empty_like(vol) if table.groups[0].size and min(nx, ny) > 1 and small else None
            rc = fn(v.ctypes.data, None if vol_t is None else vol_t.data_ptr(), v.shape[0], v.shape[1],
                    table.rp.ctypes.data, table.rp.shape[0], table.dl.ctypes.data, table.nxyz.ctypes.data,
                    o.ctypes.data, FORWARD_BLOCK, workers)
            if rc != 0:
                raise MemoryError(f"the compiled forward projector could not allocate its scratch memory "
                                  f"({workers} threads x {FORWARD_BLOCK} rays); free memory, or set "
                                  f"{COMPILED_ENV}=0 to use the numba kernels")
        elif threads > 1:
            old = numba.set_parallel_chunksize(1)  # dynamic scheduling: rays differ in cost
            try:
                _forward_parallel(v, table.rp, table.dl, table.nxyz, o, FORWARD_BLOCK)
            finally:
                numba.set_parallel_chunksize(old)
        else:
            _forward_serial(v, table.rp, table.dl, table.nxyz, o)
        if progress is not None:
            progress.update(1)
        return out.to(volume.device)

    def adjoint(self, projections, grid, shapes, vectors, progress=None) -> torch.Tensor:
        """Back-projection ``(B, total_pixels) -> (B, nz, ny, nx)``, the transpose of :meth:`forward`."""
        threads = _threads()
        table = _ray_table(grid, shapes, vectors, threads)
        proj = projections.detach().to("cpu").contiguous()
        out = torch.zeros((proj.shape[0], grid.num_voxels), dtype=proj.dtype)
        p, o = proj.numpy(), out.numpy()
        lib, _ = compiled_kernels("adjoint")
        compiled = lib is not None and proj.dtype in (torch.float32, torch.float64)
        workers = max(1, torch.get_num_threads())
        for a, rays in enumerate(table.groups):
            if not rays.size or not proj.shape[0]:
                continue
            if compiled:
                na = int(table.nxyz[a])
                parts = min(na, workers * ADJOINT_PARTS_PER_THREAD)
                bounds = _plane_bounds(table.rp, rays, a, na, parts)
                fn = lib.tp_joseph_adjoint_f32 if proj.dtype == torch.float32 else lib.tp_joseph_adjoint_f64
                fn(p.ctypes.data, p.shape[0], p.shape[1], rays.ctypes.data, rays.size, a, table.rp.ctypes.data,
                   table.dl.ctypes.data, table.nxyz.ctypes.data, bounds.ctypes.data, parts, o.ctypes.data,
                   o.shape[1], workers)
            elif threads > 1:
                na = int(table.nxyz[a])
                bounds = _plane_bounds(table.rp, rays, a, na, min(na, threads * ADJOINT_PARTS_PER_THREAD))
                old = numba.set_parallel_chunksize(1)
                try:
                    _adjoint_parallel(p, rays, a, table.rp, table.dl, table.nxyz, bounds, o)
                finally:
                    numba.set_parallel_chunksize(old)
            else:
                _adjoint_serial(p, rays, a, table.rp, table.dl, table.nxyz, o)
        if progress is not None:
            progress.update(1)
        return out.reshape(proj.shape[0], *grid.shape).to(projections.device)

    def vector_grad(self, volume, cotangent, grid, shapes, vectors) -> torch.Tensor:
        """``d/dvectors <P(vectors) volume, cotangent>``, ``(views, 12)``.

        **Computed by the "torch" backend** (its trilinear half-voxel ray-marching model,
        with autograd): these kernels have no derivative in the geometry. It approximates
        the derivative of this backend's projection closely (a few percent) and costs what
        that backend costs.
        """
        from .raymarch import TorchRaymarchBackend

        return TorchRaymarchBackend().vector_grad(volume, cotangent, grid, shapes, vectors)


def register() -> None:
    """Register this backend as ``"numba"``."""
    from .registry import register_backend

    register_backend("numba", NumbaBackend,
                     "Joseph projector as parallel numba CPU kernels (fast; 'auto' on CPU)",
                     overwrite=True)
