/*
 * Compiled kernels of the "numba" backend's Joseph projector (tomoprior.projectors.numba_backend).
 *
 * They compute exactly what the numba kernels compute -- the same samples, the same
 * arithmetic in the same order, so the results are bitwise identical -- but walk the rays
 * of a block (a detector row) plane by plane instead of ray by ray, so the compiler can
 * run neighbouring rays in SIMD lanes (gathers of the four bilinear taps). The per-ray
 * table (axis, plane range, 32.32 fixed-point in-plane coordinates, ...) is built by the
 * numba code; its layout is described in numba_backend._setup_ray.
 *
 * Forward: rays[r0, r1) in blocks of `block`, blocks handed out to `nthreads` POSIX threads
 * (dynamic scheduling; a block's result does not depend on which thread computes it).
 * Back-projection (adjoint): work items are plane ranges of one dominant axis, each written
 * by one thread only; every voxel receives its contributions in ray order, as in the numba
 * kernel, so the result is also independent of the thread count.
 *
 * The module is loaded with ctypes (no Python objects cross the boundary; ctypes releases
 * the GIL during the call). PyInit__joseph exists only so that setuptools can build and
 * install it as an extension module. If it is missing or fails to build, the numba kernels
 * run instead.
 *
 * Build flags: no fast-math and no FMA contraction (bitwise agreement with numba); the hot
 * loops are cloned for x86-64-v4 (AVX-512) and x86-64-v3 (AVX2) and picked at load time.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#define FRAC_BITS 32
#define FRAC_MASK ((((int64_t)1) << FRAC_BITS) - 1)
#define INV_ONE (1.0 / 4294967296.0)

/* columns of the per-ray table (numba_backend._AXIS ... _HI, padded to 10) */
enum { C_AXIS, C_K0, C_K1, C_P, C_DP, C_Q, C_DQ, C_LO, C_HI, C_PAD, NCOL };

#define ABI_VERSION 4

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && __GNUC__ >= 12
#define HOT_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define HOT_CLONES
#endif

#if defined(_OPENMP) || defined(__GNUC__) || defined(__clang__)
#define SIMD_LOOP _Pragma("omp simd")
#else
#define SIMD_LOOP
#endif

int tp_joseph_abi_version(void) { return ABI_VERSION; }

/* 1: never use the AVX-512 contiguous-load path (for comparisons with the portable sweep). */
static int tp_bundle_off = 0;
void tp_joseph_set_bundle_off(int off) { tp_bundle_off = off; }
/* groups of rays run through the contiguous-load path since the library was loaded (tests). */
static int64_t tp_bundle_count = 0;
int64_t tp_joseph_bundle_groups(void) { return __atomic_load_n(&tp_bundle_count, __ATOMIC_RELAXED); }

/* The SIMD level the hot loops run at on this CPU: 4 (x86-64-v4: AVX-512), 3 (x86-64-v3:
 * AVX2), 0 (the compiler's baseline: no gathers, slower than the numba kernels, which the
 * Python side then prefers). */
int tp_joseph_simd_level(void) {
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && __GNUC__ >= 12
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4")) return 4;
    if (__builtin_cpu_supports("x86-64-v3")) return 3;
#endif
    return 0;
}

static void axis_layout(int64_t a, const int64_t *nxyz, int64_t *sa, int64_t *sb, int64_t *sc, int64_t *nb,
                        int64_t *nc) {
    int64_t nx = nxyz[0], ny = nxyz[1], nz = nxyz[2];
    if (a == 0) {
        *sa = 1; *sb = nx * ny; *sc = nx; *nb = nz; *nc = ny;
    } else if (a == 1) {
        *sa = nx; *sb = nx * ny; *sc = 1; *nb = nz; *nc = nx;
    } else {
        *sa = nx * ny; *sb = nx; *sc = 1; *nb = ny; *nc = nx;
    }
}

/* numba_backend._edge_taps */
static inline void edge_taps(int64_t pf, int64_t n, int64_t *i0, double *w0, int64_t *i1, double *w1) {
    int64_t i = pf >> FRAC_BITS;
    double f = (double)(pf & FRAC_MASK) * INV_ONE;
    if (n == 1) {
        double p = (double)i + f;
        *i0 = 0; *i1 = 0; *w1 = 0.0;
        *w0 = (-0.5 <= p && p <= 0.5) ? 1.0 : 0.0;
        return;
    }
    *w0 = 1.0 - f; *w1 = f; *i0 = i; *i1 = i + 1;
    if (*i0 < 0 || *i0 >= n) { *i0 = 0; *w0 = 0.0; }
    if (*i1 < 0 || *i1 >= n) { *i1 = 0; *w1 = 0.0; }
}

/* Scratch of one thread: a block's rays as arrays (structure of arrays). */
typedef struct {
    int64_t *ray, *pp, *dp, *qq, *dq, *klo, *khi;
    double *acc;
    void *buffer;
} Scratch;

static int scratch_alloc(Scratch *s, int64_t n) {
    size_t words = 8 * (size_t)n;
    s->buffer = malloc(words * 8);
    if (!s->buffer) return -1;
    int64_t *w = (int64_t *)s->buffer;
    s->ray = w; s->pp = w + n; s->dp = w + 2 * n; s->qq = w + 3 * n; s->dq = w + 4 * n;
    s->klo = w + 5 * n; s->khi = w + 6 * n; s->acc = (double *)(w + 7 * n);
    return 0;
}


/* ----------------------------------------------------------------------------------------
 * The forward sweep for float32 with AVX-512 intrinsics, for in-plane axes where the faster
 * one is contiguous (sc == 1): 16 rays of a block advance through the planes together, their
 * positions and float64 sums held in registers. Where the lanes' taps all lie in one pair of
 * rows (the same slow index p >> 32: every row of an untilted detector) within 32 columns,
 * the taps come from four contiguous loads and in-register permutes instead of four
 * gathers. The arithmetic is the sweep's, operation for operation, so the results are the
 * same bit for bit. Returns 0 (the caller runs the portable sweep) where AVX-512 is absent.
 * -------------------------------------------------------------------------------------- */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && __GNUC__ >= 12
#include <immintrin.h>
#define HAVE_BUNDLE 1
#define AVX512 __attribute__((target("avx512f,avx512dq,avx512vl,avx512bw")))

static int avx512_level = -1;

static int have_avx512(void) {
    if (avx512_level < 0) {
        __builtin_cpu_init();
        avx512_level = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                       __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw");
    }
    return avx512_level;
}

AVX512 static inline __m512 cvt_frac(__m512i lo, __m512i hi, __m512 inv) {
    const __m512i mask = _mm512_set1_epi64(FRAC_MASK);
    __m256 a = _mm512_cvtepi64_ps(_mm512_and_si512(lo, mask));
    __m256 b = _mm512_cvtepi64_ps(_mm512_and_si512(hi, mask));
    return _mm512_mul_ps(_mm512_insertf32x8(_mm512_castps256_ps512(a), b, 1), inv);
}

/* Whether the lanes' coordinates c_t(k) = c[t] + (k - kfirst) dc[t] keep one order (increasing or
 * decreasing in t) and stay less than `span` apart (32.32 fixed point) over planes k0 .. k1 - 1:
 * both hold everywhere if they hold at the two ends, the coordinates being linear in k. */
static int lanes_ordered(const int64_t *c, const int64_t *dc, int64_t lanes, int64_t kfirst, int64_t k0,
                         int64_t k1, int64_t span) {
    int dir = 0;
    for (int e = 0; e < 2; e++) {
        const int64_t k = e ? k1 - 1 : k0;
        const int64_t first = c[0] + (k - kfirst) * dc[0], last = c[lanes - 1] + (k - kfirst) * dc[lanes - 1];
        const int d = last >= first ? 1 : -1;
        if (dir && d != dir && first != last) return 0;
        if (first != last) dir = d;
        if ((last >= first ? last - first : first - last) >= span) return 0;
        for (int64_t t = 1; t < lanes; t++) {
            const int64_t u = c[t - 1] + (k - kfirst) * dc[t - 1], v = c[t] + (k - kfirst) * dc[t];
            if ((last >= first) ? (u > v) : (u < v)) return 0;
        }
    }
    return 1;
}

/* 16 (or fewer) rays of a block whose coordinates keep their order from lane to lane, the slow
 * one (p) spanning less than one voxel and the fast one (q) at most 30 columns (the rays of a
 * detector row nearly parallel to the planes' fast axis: any row of an untilted detector, and
 * of a detector tilted or rotated by a few degrees): they march through the planes with
 * positions and float64 sums in registers; each plane's taps come from the two or three voxel
 * rows the lanes touch, by contiguous (masked) loads and in-register permutes instead of
 * gathers. The arithmetic is the portable sweep's, operation for operation. Returns 0 without
 * touching anything for rays that do not qualify. */
AVX512 static int bundle16_f32(const float *vb, const int64_t *pp, const int64_t *dp, const int64_t *qq,
                               const int64_t *dq, const int64_t *klo, const int64_t *khi, double *acc,
                               int64_t lanes, int64_t kfirst, int64_t sa, int64_t sb, int64_t nc) {
    int64_t k0 = INT64_MAX, k1 = INT64_MIN;
    for (int64_t t = 0; t < lanes; t++) {
        if (khi[t] > klo[t]) {
            if (klo[t] < k0) k0 = klo[t];
            if (khi[t] > k1) k1 = khi[t];
        }
    }
    if (k0 >= k1) return 1;  /* no inner samples: nothing to add */
    if (!lanes_ordered(pp, dp, lanes, kfirst, k0, k1, (int64_t)1 << FRAC_BITS) ||
        !lanes_ordered(qq, dq, lanes, kfirst, k0, k1, (int64_t)31 << FRAC_BITS))
        return 0;
    const int64_t last = lanes - 1;
    const __mmask8 v0 = (__mmask8)(lanes >= 8 ? 0xFF : (1u << lanes) - 1);
    const __mmask8 v1 = (__mmask8)(lanes >= 16 ? 0xFF : lanes > 8 ? (1u << (lanes - 8)) - 1 : 0);
    const __m512i dpl = _mm512_maskz_loadu_epi64(v0, dp), dph = _mm512_maskz_loadu_epi64(v1, dp + 8);
    const __m512i dql = _mm512_maskz_loadu_epi64(v0, dq), dqh = _mm512_maskz_loadu_epi64(v1, dq + 8);
    const __m512i lol = _mm512_maskz_loadu_epi64(v0, klo), loh = _mm512_maskz_loadu_epi64(v1, klo + 8);
    const __m512i hil = _mm512_maskz_loadu_epi64(v0, khi), hih = _mm512_maskz_loadu_epi64(v1, khi + 8);
    const __m512i skip = _mm512_set1_epi64(k0 - kfirst);
    __m512i pl = _mm512_add_epi64(_mm512_maskz_loadu_epi64(v0, pp), _mm512_mullo_epi64(skip, dpl));
    __m512i ph = _mm512_add_epi64(_mm512_maskz_loadu_epi64(v1, pp + 8), _mm512_mullo_epi64(skip, dph));
    __m512i ql = _mm512_add_epi64(_mm512_maskz_loadu_epi64(v0, qq), _mm512_mullo_epi64(skip, dql));
    __m512i qh = _mm512_add_epi64(_mm512_maskz_loadu_epi64(v1, qq + 8), _mm512_mullo_epi64(skip, dqh));
    __m512d al = _mm512_maskz_loadu_pd(v0, acc), ah = _mm512_maskz_loadu_pd(v1, acc + 8);
    /* the end lanes' coordinates, stepped in scalars: they bound all lanes' (ordered lanes) */
    int64_t pf = pp[0] + (k0 - kfirst) * dp[0], pz = pp[last] + (k0 - kfirst) * dp[last];
    int64_t qf = qq[0] + (k0 - kfirst) * dq[0], qz = qq[last] + (k0 - kfirst) * dq[last];
    const int64_t dpf = dp[0], dpz = dp[last], dqf = dq[0], dqz = dq[last];
    const __m512 inv = _mm512_set1_ps((float)INV_ONE);
    const __m512i one32 = _mm512_set1_epi32(1);
    const __m512i one64 = _mm512_set1_epi64(1);
    for (int64_t k = k0; k < k1; k++) {
        const __m512i kv = _mm512_set1_epi64(k);
        const __mmask8 m0 = _mm512_mask_cmple_epi64_mask(v0, lol, kv) & _mm512_cmplt_epi64_mask(kv, hil);
        const __mmask8 m1 = _mm512_mask_cmple_epi64_mask(v1, loh, kv) & _mm512_cmplt_epi64_mask(kv, hih);
        if (m0 | m1) {
            const int64_t imin = (pf < pz ? pf : pz) >> FRAC_BITS;
            const int64_t jf = qf >> FRAC_BITS, jz = qz >> FRAC_BITS;
            const int64_t jmin = jf < jz ? jf : jz;
            /* columns jmin .. jmin + 31 of the rows, masked outside [0, nc) */
            const int64_t from = jmin < 0 ? -jmin : 0, rem = nc - jmin;
            uint32_t bits = rem >= 32 ? 0xFFFFFFFFu : (rem > 0 ? ((1u << rem) - 1) : 0u);
            bits &= from >= 32 ? 0u : (0xFFFFFFFFu << from);
            const __mmask16 la = (__mmask16)(bits & 0xFFFF), lb = (__mmask16)(bits >> 16);
            const float *row = vb + k * sa + imin * sb + jmin;
            const __m512i base = _mm512_set1_epi64(jmin);
            const __m256i xl = _mm512_cvtepi64_epi32(_mm512_sub_epi64(_mm512_srai_epi64(ql, FRAC_BITS), base));
            const __m256i xh = _mm512_cvtepi64_epi32(_mm512_sub_epi64(_mm512_srai_epi64(qh, FRAC_BITS), base));
            const __m512i x0 = _mm512_inserti64x4(_mm512_castsi256_si512(xl), xh, 1);
            const __m512i x1 = _mm512_add_epi32(x0, one32);
            /* lanes one row further (slow index imin + 1), among the active ones */
            const __m512i ib = _mm512_set1_epi64(imin);
            const __mmask8 u0 = _mm512_mask_cmpeq_epi64_mask(m0, _mm512_sub_epi64(_mm512_srai_epi64(pl, FRAC_BITS), ib), one64);
            const __mmask8 u1 = _mm512_mask_cmpeq_epi64_mask(m1, _mm512_sub_epi64(_mm512_srai_epi64(ph, FRAC_BITS), ib), one64);
            const __mmask16 up = (__mmask16)((unsigned)u0 | ((unsigned)u1 << 8));
            /* row imin is below the grid only if every active lane is one row up: then skip it */
            const __mmask16 za = imin >= 0 ? la : 0, zb = imin >= 0 ? lb : 0;
            const __m512 r0a = _mm512_maskz_loadu_ps(za, row), r0b = _mm512_maskz_loadu_ps(zb, row + 16);
            const __m512 r1a = _mm512_maskz_loadu_ps(la, row + sb), r1b = _mm512_maskz_loadu_ps(lb, row + sb + 16);
            __m512 v00 = _mm512_permutex2var_ps(r0a, x0, r0b);
            __m512 v01 = _mm512_permutex2var_ps(r0a, x1, r0b);
            __m512 v10 = _mm512_permutex2var_ps(r1a, x0, r1b);
            __m512 v11 = _mm512_permutex2var_ps(r1a, x1, r1b);
            if (up) {
                const __m512 r2a = _mm512_maskz_loadu_ps(la, row + 2 * sb);
                const __m512 r2b = _mm512_maskz_loadu_ps(lb, row + 2 * sb + 16);
                v00 = _mm512_mask_mov_ps(v00, up, v10);
                v01 = _mm512_mask_mov_ps(v01, up, v11);
                v10 = _mm512_mask_mov_ps(v10, up, _mm512_permutex2var_ps(r2a, x0, r2b));
                v11 = _mm512_mask_mov_ps(v11, up, _mm512_permutex2var_ps(r2a, x1, r2b));
            }
            const __m512 fp = cvt_frac(pl, ph, inv), fq = cvt_frac(ql, qh, inv);
            const __m512 lo = _mm512_add_ps(v00, _mm512_mul_ps(fq, _mm512_sub_ps(v01, v00)));
            const __m512 hi = _mm512_add_ps(v10, _mm512_mul_ps(fq, _mm512_sub_ps(v11, v10)));
            const __m512 val = _mm512_add_ps(lo, _mm512_mul_ps(fp, _mm512_sub_ps(hi, lo)));
            al = _mm512_mask_add_pd(al, m0, al, _mm512_cvtps_pd(_mm512_castps512_ps256(val)));
            ah = _mm512_mask_add_pd(ah, m1, ah, _mm512_cvtps_pd(_mm512_extractf32x8_ps(val, 1)));
        }
        pf += dpf; pz += dpz; qf += dqf; qz += dqz;
        pl = _mm512_add_epi64(pl, dpl);
        ph = _mm512_add_epi64(ph, dph);
        ql = _mm512_add_epi64(ql, dql);
        qh = _mm512_add_epi64(qh, dqh);
    }
    _mm512_mask_storeu_pd(acc, v0, al);
    _mm512_mask_storeu_pd(acc + 8, v1, ah);
    return 1;
}

/* The sweep over n rays in groups of 16: the contiguous-load path where a group qualifies,
 * the portable sweep (gathers) for the others. pp/qq: positions at plane kfirst. */
static void sweep_f32(const float *restrict vb, int64_t *restrict pp, const int64_t *restrict dp,
                      int64_t *restrict qq, const int64_t *restrict dq, const int64_t *restrict klo,
                      const int64_t *restrict khi, double *restrict acc, int64_t n, int64_t kfirst,
                      int64_t klast, int64_t sa, int64_t sb, int64_t sc);

static int bundle_f32(const float *vb, int64_t *pp, const int64_t *dp, int64_t *qq, const int64_t *dq,
                      const int64_t *klo, const int64_t *khi, double *acc, int64_t n, int64_t kfirst,
                      int64_t klast, int64_t sa, int64_t sb, int64_t nc) {
    if (!have_avx512() || tp_bundle_off) return 0;
    for (int64_t t = 0; t < n; t += 16) {
        const int64_t lanes = n - t < 16 ? n - t : 16;
        if (bundle16_f32(vb, pp + t, dp + t, qq + t, dq + t, klo + t, khi + t, acc + t, lanes, kfirst, sa, sb, nc))
            __atomic_fetch_add(&tp_bundle_count, 1, __ATOMIC_RELAXED);
        else
            sweep_f32(vb, pp + t, dp + t, qq + t, dq + t, klo + t, khi + t, acc + t, lanes, kfirst, klast, sa, sb, 1);
    }
    return 1;
}
#endif

/* No contiguous-load path: the portable sweep runs (float64 everywhere, float32 without AVX-512). */
#define NO_BUNDLE(REAL, SFX)                                                                               \
    static int bundle_##SFX(const REAL *vb, int64_t *pp, const int64_t *dp, int64_t *qq, const int64_t *dq,  \
                            const int64_t *klo, const int64_t *khi, double *acc, int64_t n, int64_t kfirst,  \
                            int64_t klast, int64_t sa, int64_t sb, int64_t nc) {                            \
        (void)vb; (void)pp; (void)dp; (void)qq; (void)dq; (void)klo; (void)khi; (void)acc; (void)n;         \
        (void)kfirst; (void)klast; (void)sa; (void)sb; (void)nc;                                            \
        return 0;                                                                                          \
    }
#ifndef HAVE_BUNDLE
NO_BUNDLE(float, f32)
#endif
NO_BUNDLE(double, f64)

/* ----------------------------------------------------------------------------------------
 * One template per dtype: REAL is the volume's / projections' element type, SFX the suffix.
 * -------------------------------------------------------------------------------------- */
#define DEFINE_KERNELS(REAL, SFX)                                                                          \
                                                                                                           \
/* numba_backend._gather_edge */                                                                          \
static double gather_edge_##SFX(const REAL *vb, int64_t p, int64_t dp, int64_t q, int64_t dq, int64_t kb,   \
                                int64_t sa, int64_t sb, int64_t sc, int64_t nb, int64_t nc, int64_t m0,     \
                                int64_t m1) {                                                              \
    p += m0 * dp; q += m0 * dq; kb += m0 * sa;                                                             \
    double acc = 0.0;                                                                                      \
    for (int64_t m = m0; m < m1; m++) {                                                                    \
        int64_t i0, i1, j0, j1; double w0, w1, u0, u1;                                                     \
        edge_taps(p, nb, &i0, &w0, &i1, &w1);                                                              \
        edge_taps(q, nc, &j0, &u0, &j1, &u1);                                                              \
        acc += (w0 * (u0 * (double)vb[kb + i0 * sb + j0 * sc] + u1 * (double)vb[kb + i0 * sb + j1 * sc])  \
                + w1 * (u0 * (double)vb[kb + i1 * sb + j0 * sc] + u1 * (double)vb[kb + i1 * sb + j1 * sc])); \
        p += dp; q += dq; kb += sa;                                                                        \
    }                                                                                                      \
    return acc;                                                                                            \
}                                                                                                          \
                                                                                                           \
/* The inner samples (all taps inside) of n rays, planes kfirst <= k < klast, plane by plane:             \
 * acc[t] += bilinear sample of ray t at plane k, for klo[t] <= k < khi[t] (numba: _gather_inner).         \
 * Lanes outside their range read voxel 0 and add an exact zero (acc is never -0.0). */                   \
HOT_CLONES static void sweep_##SFX(const REAL *restrict vb, int64_t *restrict pp, const int64_t *restrict dp, \
                                  int64_t *restrict qq, const int64_t *restrict dq,                        \
                                  const int64_t *restrict klo, const int64_t *restrict khi,                \
                                  double *restrict acc, int64_t n, int64_t kfirst, int64_t klast,          \
                                  int64_t sa, int64_t sb, int64_t sc) {                                    \
    const REAL inv = (REAL)INV_ONE;                                                                        \
    for (int64_t k = kfirst; k < klast; k++) {                                                             \
        const int64_t kb = k * sa;                                                                         \
        SIMD_LOOP                                                                                          \
        for (int64_t t = 0; t < n; t++) {                                                                  \
            const int64_t p = pp[t], q = qq[t];                                                            \
            const int64_t in = (int64_t)(klo[t] <= k) & (int64_t)(k < khi[t]);                             \
            const REAL fp = (REAL)(p & FRAC_MASK) * inv;                                                   \
            const REAL fq = (REAL)(q & FRAC_MASK) * inv;                                                   \
            const int64_t idx = (kb + (p >> FRAC_BITS) * sb + (q >> FRAC_BITS) * sc) & -in;                \
            const REAL v00 = vb[idx], v10 = vb[idx + sb];                                                  \
            const REAL lo = v00 + fq * (vb[idx + sc] - v00);                                               \
            const REAL hi = v10 + fq * (vb[idx + sb + sc] - v10);                                          \
            acc[t] += (double)(lo + fp * (hi - lo)) * (double)in;                                          \
            pp[t] = p + dp[t];                                                                             \
            qq[t] = q + dq[t];                                                                             \
        }                                                                                                  \
    }                                                                                                      \
}                                                                                                          \
                                                                                                           \
/* numba_backend._forward_rays for the rays b0 <= ray < b1, all batch items */                            \
static void forward_block_##SFX(const REAL *vol, const REAL *volT, int64_t nbatch, int64_t nvox,           \
                                const int64_t *rp,                                                         \
                                const double *dl, const int64_t *nxyz, REAL *out, int64_t nrays,            \
                                int64_t b0, int64_t b1, Scratch *s) {                                      \
    for (int64_t ray = b0; ray < b1; ray++)                                                                \
        if (rp[ray * NCOL + C_K1] < rp[ray * NCOL + C_K0])                                                 \
            for (int64_t bi = 0; bi < nbatch; bi++) out[bi * nrays + ray] = (REAL)0.0;                     \
    for (int64_t a = 0; a < 3; a++) {                                                                      \
        int64_t n = 0, kfirst = INT64_MAX, klast = INT64_MIN;                                              \
        for (int64_t ray = b0; ray < b1; ray++) {                                                          \
            const int64_t *r = rp + ray * NCOL;                                                            \
            if (r[C_K1] >= r[C_K0] && r[C_AXIS] == a) {                                                    \
                s->ray[n] = ray;                                                                           \
                s->klo[n] = r[C_K0] + r[C_LO];                                                             \
                s->khi[n] = r[C_K0] + r[C_HI];                                                             \
                if (s->khi[n] > s->klo[n]) {                                                               \
                    if (s->klo[n] < kfirst) kfirst = s->klo[n];                                            \
                    if (s->khi[n] > klast) klast = s->khi[n];                                              \
                }                                                                                          \
                s->dp[n] = r[C_DP];                                                                        \
                s->dq[n] = r[C_DQ];                                                                        \
                n++;                                                                                       \
            }                                                                                              \
        }                                                                                                  \
        if (!n) continue;                                                                                  \
        int64_t sa, sb, sc, nb, nc;                                                                        \
        axis_layout(a, nxyz, &sa, &sb, &sc, &nb, &nc);                                                     \
        const REAL *src = vol;                                                                             \
        if (a == 0 && volT) { /* x-major rays read the copy with y fastest: lanes along y, contiguous */   \
            src = volT; sa = nxyz[1]; sc = 1;                                                              \
        }                                                                                                  \
        for (int64_t bi = 0; bi < nbatch; bi++) {                                                          \
            const REAL *vb = src + bi * nvox;                                                              \
            for (int64_t t = 0; t < n; t++) {                                                              \
                const int64_t *r = rp + s->ray[t] * NCOL;                                                  \
                s->acc[t] = 0.0;                                                                           \
                if (kfirst < klast) {                                                                      \
                    s->pp[t] = r[C_P] + (kfirst - r[C_K0]) * s->dp[t];                                     \
                    s->qq[t] = r[C_Q] + (kfirst - r[C_K0]) * s->dq[t];                                     \
                }                                                                                          \
            }                                                                                              \
            if (kfirst < klast && !(sc == 1 && bundle_##SFX(vb, s->pp, s->dp, s->qq, s->dq, s->klo, s->khi,\
                                                            s->acc, n, kfirst, klast, sa, sb, nc)))        \
                sweep_##SFX(vb, s->pp, s->dp, s->qq, s->dq, s->klo, s->khi, s->acc, n, kfirst, klast,      \
                            sa, sb, sc);                                                                   \
            for (int64_t t = 0; t < n; t++) {                                                              \
                const int64_t ray = s->ray[t];                                                             \
                const int64_t *r = rp + ray * NCOL;                                                        \
                const int64_t count = r[C_K1] - r[C_K0] + 1, kb = r[C_K0] * sa;                            \
                double sum = gather_edge_##SFX(vb, r[C_P], r[C_DP], r[C_Q], r[C_DQ], kb, sa, sb, sc, nb,   \
                                               nc, 0, r[C_LO]);                                            \
                sum += s->acc[t];                                                                          \
                sum += gather_edge_##SFX(vb, r[C_P], r[C_DP], r[C_Q], r[C_DQ], kb, sa, sb, sc, nb, nc,     \
                                         r[C_HI], count);                                                  \
                out[bi * nrays + ray] = (REAL)(sum * dl[ray]);                                             \
            }                                                                                              \
        }                                                                                                  \
    }                                                                                                      \
}                                                                                                          \
                                                                                                           \
typedef struct {                                                                                           \
    const REAL *vol, *volT; int64_t nbatch, nvox; const int64_t *rp; const double *dl; const int64_t *nxyz;\
    REAL *out; int64_t nrays, block, nblocks; int64_t next; int failed;                                    \
} ForwardJob_##SFX;                                                                                        \
                                                                                                           \
static void *forward_worker_##SFX(void *arg) {                                                             \
    ForwardJob_##SFX *job = (ForwardJob_##SFX *)arg;                                                       \
    Scratch s;                                                                                             \
    if (scratch_alloc(&s, job->block)) {                                                                   \
        __atomic_store_n(&job->failed, 1, __ATOMIC_SEQ_CST);                                               \
        return NULL;                                                                                       \
    }                                                                                                      \
    for (;;) {                                                                                             \
        int64_t blk = __atomic_fetch_add(&job->next, 1, __ATOMIC_RELAXED);                                 \
        if (blk >= job->nblocks) break;                                                                    \
        int64_t b0 = blk * job->block;                                                                     \
        int64_t b1 = b0 + job->block < job->nrays ? b0 + job->block : job->nrays;                          \
        forward_block_##SFX(job->vol, job->volT, job->nbatch, job->nvox, job->rp, job->dl, job->nxyz, job->out,\
                            job->nrays, b0, b1, &s);                                                       \
    }                                                                                                      \
    free(s.buffer);                                                                                        \
    return NULL;                                                                                           \
}                                                                                                          \
                                                                                                           \
typedef struct {                                                                                           \
    const REAL *src; REAL *dst; int64_t nx, ny, slices; int64_t next; int failed;                          \
} TransposeJob_##SFX;                                                                                      \
                                                                                                           \
/* dst[s, x, y] = src[s, y, x] for whole (y, x) slices handed out one at a time, in 32 x 32 tiles */       \
static void *transpose_worker_##SFX(void *arg) {                                                           \
    TransposeJob_##SFX *job = (TransposeJob_##SFX *)arg;                                                   \
    const int64_t nx = job->nx, ny = job->ny;                                                              \
    for (;;) {                                                                                             \
        const int64_t sl = __atomic_fetch_add(&job->next, 1, __ATOMIC_RELAXED);                            \
        if (sl >= job->slices) break;                                                                      \
        const REAL *src = job->src + sl * nx * ny;                                                         \
        REAL *dst = job->dst + sl * nx * ny;                                                               \
        for (int64_t y0 = 0; y0 < ny; y0 += 32)                                                            \
            for (int64_t x0 = 0; x0 < nx; x0 += 32) {                                                      \
                const int64_t y1 = y0 + 32 < ny ? y0 + 32 : ny, x1 = x0 + 32 < nx ? x0 + 32 : nx;          \
                for (int64_t x = x0; x < x1; x++)                                                          \
                    for (int64_t y = y0; y < y1; y++) dst[x * ny + y] = src[y * nx + x];                   \
            }                                                                                              \
    }                                                                                                      \
    return NULL;                                                                                           \
}                                                                                                          \
                                                                                                           \
/* out[b, ray] = dl[ray] * sum_k bilinear(vol[b], plane k, ray) for all rays. `volT`: NULL, or room for    \
 * a copy of `vol` laid out (z, x, y), filled here and read by the rays along x. Returns 0, or -1          \
 * if memory could not be had (then `out` is incomplete). */                                               \
int tp_joseph_forward_##SFX(const REAL *vol, REAL *volT, int64_t nbatch, int64_t nvox, const int64_t *rp,  \
                            int64_t nrays, const double *dl, const int64_t *nxyz, REAL *out, int64_t block,\
                            int64_t nthreads) {                                                            \
    if (block < 1) block = 1;                                                                              \
    if (volT) {                                                                                            \
        TransposeJob_##SFX tj = {vol, volT, nxyz[0], nxyz[1], nbatch * nxyz[2], 0, 0};                     \
        run_workers(transpose_worker_##SFX, &tj, nthreads, &tj.failed);                                    \
    }                                                                                                      \
    ForwardJob_##SFX job = {vol, volT, nbatch, nvox, rp, dl, nxyz, out, nrays, block,                      \
                            (nrays + block - 1) / block, 0, 0};                                            \
    return run_workers(forward_worker_##SFX, &job, nthreads, &job.failed);                                 \
}                                                                                                          \
                                                                                                           \
/* numba_backend._scatter_edge: one edge sample (float64 weights, `c` unrounded) */                       \
static inline void scatter_edge_one_##SFX(REAL *ob, double c, int64_t p, int64_t q, int64_t kb, int64_t sb,  \
                                          int64_t sc, int64_t nb, int64_t nc) {                            \
    int64_t i0, i1, j0, j1; double w0, w1, u0, u1;                                                         \
    edge_taps(p, nb, &i0, &w0, &i1, &w1);                                                                  \
    edge_taps(q, nc, &j0, &u0, &j1, &u1);                                                                  \
    ob[kb + i0 * sb + j0 * sc] = (REAL)((double)ob[kb + i0 * sb + j0 * sc] + c * (w0 * u0));                \
    ob[kb + i0 * sb + j1 * sc] = (REAL)((double)ob[kb + i0 * sb + j1 * sc] + c * (w0 * u1));                \
    ob[kb + i1 * sb + j0 * sc] = (REAL)((double)ob[kb + i1 * sb + j0 * sc] + c * (w1 * u0));                \
    ob[kb + i1 * sb + j1 * sc] = (REAL)((double)ob[kb + i1 * sb + j1 * sc] + c * (w1 * u1));                \
}                                                                                                          \
                                                                                                           \
/* numba_backend._scatter_inner: the samples m0 <= m < m1 of one ray (all taps inside) in SIMD lanes.   \
 * They lie in different planes, so their taps never coincide: the gathers and scatters of one tap are     \
 * free of conflicts, and every voxel still receives this ray's contribution exactly once, in ray order. */ \
HOT_CLONES static void scatter_inner_##SFX(REAL *restrict ob, REAL c, int64_t p, int64_t dp, int64_t q,    \
                                           int64_t dq, int64_t kb, int64_t sa, int64_t sb, int64_t sc,     \
                                           int64_t m0, int64_t m1) {                                       \
    const REAL inv = (REAL)INV_ONE, one = (REAL)1.0;                                                       \
    SIMD_LOOP                                                                                              \
    for (int64_t m = m0; m < m1; m++) {                                                                    \
        const int64_t pm = p + m * dp, qm = q + m * dq;                                                    \
        const REAL fp = (REAL)(pm & FRAC_MASK) * inv;                                                      \
        const REAL fq = (REAL)(qm & FRAC_MASK) * inv;                                                      \
        const int64_t j = kb + m * sa + (pm >> FRAC_BITS) * sb + (qm >> FRAC_BITS) * sc;                   \
        const REAL cf = c * fp, cp = c - cf, gq = one - fq;                                                \
        ob[j] += cp * gq;                                                                                  \
        ob[j + sc] += cp * fq;                                                                             \
        ob[j + sb] += cf * gq;                                                                             \
        ob[j + sb + sc] += cf * fq;                                                                        \
    }                                                                                                      \
}                                                                                                          \
                                                                                                           \
typedef struct {                                                                                           \
    const REAL *proj; int64_t nbatch, nrays_total; const int64_t *rays; int64_t nr, axis;                  \
    const int64_t *rp; const double *dl; const int64_t *nxyz; const int64_t *bounds; int64_t nparts;       \
    REAL *out; int64_t nvox; int64_t next; int failed;                                                     \
} AdjointJob_##SFX;                                                                                        \
                                                                                                           \
/* numba_backend._adjoint_planes for the planes ka <= k < kz: ray by ray, as there (a voxel's             \
 * contributions in the order of `rays`); the inner samples' taps computed `chunk` at a time in SIMD       \
 * lanes, then scattered. */                                                                               \
static void adjoint_item_##SFX(AdjointJob_##SFX *job, int64_t ka, int64_t kz) {                            \
    int64_t sa, sb, sc, nb, nc;                                                                            \
    axis_layout(job->axis, job->nxyz, &sa, &sb, &sc, &nb, &nc);                                            \
    for (int64_t i = 0; i < job->nr; i++) {                                                                \
        const int64_t ray = job->rays[i];                                                                  \
        const int64_t *r = job->rp + ray * NCOL;                                                           \
        const int64_t k0 = r[C_K0], count = r[C_K1] - k0 + 1;                                              \
        const int64_t m0 = ka - k0 > 0 ? ka - k0 : 0;                                                      \
        const int64_t m1 = kz - k0 < count ? kz - k0 : count;                                              \
        if (m0 >= m1) continue;                                                                            \
        const int64_t p = r[C_P], dp = r[C_DP], q = r[C_Q], dq = r[C_DQ], kb = k0 * sa;                    \
        int64_t lo = r[C_LO] > m0 ? r[C_LO] : m0;                                                          \
        lo = lo < m1 ? lo : m1;                                                                            \
        int64_t hi = r[C_HI] > lo ? r[C_HI] : lo;                                                          \
        hi = hi < m1 ? hi : m1;                                                                            \
        for (int64_t bi = 0; bi < job->nbatch; bi++) {                                                     \
            const double c = (double)job->proj[bi * job->nrays_total + ray] * job->dl[ray];                \
            if (c == 0.0) continue;                                                                        \
            REAL *ob = job->out + bi * job->nvox;                                                          \
            for (int64_t m = m0; m < lo; m++)                                                              \
                scatter_edge_one_##SFX(ob, c, p + m * dp, q + m * dq, kb + m * sa, sb, sc, nb, nc);        \
            scatter_inner_##SFX(ob, (REAL)c, p, dp, q, dq, kb, sa, sb, sc, lo, hi);                      \
            for (int64_t m = hi; m < m1; m++)                                                              \
                scatter_edge_one_##SFX(ob, c, p + m * dp, q + m * dq, kb + m * sa, sb, sc, nb, nc);        \
        }                                                                                                  \
    }                                                                                                      \
}                                                                                                          \
                                                                                                           \
static void *adjoint_worker_##SFX(void *arg) {                                                             \
    AdjointJob_##SFX *job = (AdjointJob_##SFX *)arg;                                                       \
    for (;;) {                                                                                             \
        int64_t item = __atomic_fetch_add(&job->next, 1, __ATOMIC_RELAXED);                                \
        if (item >= job->nparts) break;                                                                    \
        if (job->bounds[item] < job->bounds[item + 1])                                                     \
            adjoint_item_##SFX(job, job->bounds[item], job->bounds[item + 1]);                             \
    }                                                                                                      \
    return NULL;                                                                                           \
}                                                                                                          \
                                                                                                           \
/* out[b] += the back-projection of proj[b] along the rays `rays` (all of dominant axis `axis`), work      \
 * items the plane ranges [bounds[w], bounds[w+1]); returns 0, or -1 (out incomplete) without memory. */  \
int tp_joseph_adjoint_##SFX(const REAL *proj, int64_t nbatch, int64_t nrays_total, const int64_t *rays,    \
                            int64_t nr, int64_t axis, const int64_t *rp, const double *dl,                 \
                            const int64_t *nxyz, const int64_t *bounds, int64_t nparts, REAL *out,         \
                            int64_t nvox, int64_t nthreads) {                                              \
    AdjointJob_##SFX job = {proj, nbatch, nrays_total, rays, nr, axis, rp, dl, nxyz, bounds, nparts, out,  \
                            nvox, 0, 0};                                                                   \
    return run_workers(adjoint_worker_##SFX, &job, nthreads < nparts ? nthreads : nparts, &job.failed);     \
}

/* Run `worker(job)` on `nthreads` threads (the calling thread is one of them). */
static int run_workers(void *(*worker)(void *), void *job, int64_t nthreads, int *failed) {
    if (nthreads < 1) nthreads = 1;
    if (nthreads > 256) nthreads = 256;
    pthread_t tid[256];
    int64_t started = 0;
    for (int64_t i = 1; i < nthreads; i++) {
        if (pthread_create(&tid[started], NULL, worker, job) != 0) break;  /* run with fewer */
        started++;
    }
    worker(job);
    for (int64_t i = 0; i < started; i++) pthread_join(tid[i], NULL);
    return __atomic_load_n(failed, __ATOMIC_SEQ_CST) ? -1 : 0;
}

DEFINE_KERNELS(float, f32)
DEFINE_KERNELS(double, f64)

static struct PyModuleDef joseph_module = {
    PyModuleDef_HEAD_INIT, "_joseph",
    "Compiled Joseph projector kernels, loaded with ctypes by tomoprior.projectors.numba_backend.", -1, NULL,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__joseph(void) { return PyModule_Create(&joseph_module); }
