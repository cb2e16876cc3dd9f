/* kiln CPU kernel prelude: included once at the top of every translation unit. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define KILN_FN static inline
static inline uint32_t kiln_f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float kiln_u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
/* KILN_CSTYLE_HELPERS */

/* ---- matmul building blocks (f32) ------------------------------------------------------- */
typedef float kiln_v8 __attribute__((vector_size(32)));
static inline kiln_v8 kiln_ld8(const float *p) { kiln_v8 v; memcpy(&v, p, 32); return v; }
static inline float kiln_hsum8(kiln_v8 v) { return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7])); }
/* Keeps a loaded vector in a register: GCC otherwise folds the load into every FMA that uses
 * it, and a micro-kernel whose loads are each used twice becomes bound by its loads. */
#if defined(__x86_64__) && defined(__AVX__) /* "x" holds a 32-byte vector only with AVX */
#define KILN_IN_REG(v) __asm__("" : "+x"(v))
#else
#define KILN_IN_REG(v) ((void)0)
#endif

/* c[m, n] = sum_k a[m*lda + k] * b[n*ldb + k]: both operands contiguous along k ("NT"),
 * the layout of x @ W^T. 2x4 register blocks of 8-wide accumulators. */
typedef uint16_t kiln_u16x8 __attribute__((vector_size(16)));
typedef uint32_t kiln_u32x8 __attribute__((vector_size(32)));
/* 8 bf16 values widened to f32: zero-extend to 32 bits, shift into the high half. */
static inline kiln_v8 kiln_ldbf8(const uint16_t *p) {
    kiln_u16x8 h; memcpy(&h, p, 16);
    kiln_u32x8 w = __builtin_convertvector(h, kiln_u32x8) << 16;
    kiln_v8 f; memcpy(&f, &w, 32); return f;
}
#define KILN_ID(x) (x)
#define KILN_MM_NT(NAME, BT, LDB8, LDB1) \
static void NAME(const float *restrict a, int64_t lda, const BT *restrict b, int64_t ldb, \
                       float *restrict c, int64_t ldc, int64_t M, int64_t N, int64_t K) { \
    const int64_t K8 = K & ~(int64_t)7; \
    int64_t n = 0; \
    for (; n + 4 <= N; n += 4) { \
        const BT *b0 = b + n * ldb, *b1 = b0 + ldb, *b2 = b1 + ldb, *b3 = b2 + ldb; \
        int64_t m = 0; \
        for (; m + 2 <= M; m += 2) { \
            const float *a0 = a + m * lda, *a1 = a0 + lda; \
            kiln_v8 c00 = {0}, c01 = {0}, c02 = {0}, c03 = {0}, c10 = {0}, c11 = {0}, c12 = {0}, c13 = {0}; \
            for (int64_t k = 0; k < K8; k += 8) { \
                kiln_v8 x0 = kiln_ld8(a0 + k), x1 = kiln_ld8(a1 + k), y; \
                KILN_IN_REG(x0); KILN_IN_REG(x1); \
                y = LDB8(b0 + k); KILN_IN_REG(y); c00 += x0 * y; c10 += x1 * y; \
                y = LDB8(b1 + k); KILN_IN_REG(y); c01 += x0 * y; c11 += x1 * y; \
                y = LDB8(b2 + k); KILN_IN_REG(y); c02 += x0 * y; c12 += x1 * y; \
                y = LDB8(b3 + k); KILN_IN_REG(y); c03 += x0 * y; c13 += x1 * y; \
            } \
            float s[2][4] = {{kiln_hsum8(c00), kiln_hsum8(c01), kiln_hsum8(c02), kiln_hsum8(c03)}, \
                             {kiln_hsum8(c10), kiln_hsum8(c11), kiln_hsum8(c12), kiln_hsum8(c13)}}; \
            for (int64_t k = K8; k < K; ++k) { \
                s[0][0] += a0[k] * LDB1(b0[k]); s[0][1] += a0[k] * LDB1(b1[k]); s[0][2] += a0[k] * LDB1(b2[k]); s[0][3] += a0[k] * LDB1(b3[k]); \
                s[1][0] += a1[k] * LDB1(b0[k]); s[1][1] += a1[k] * LDB1(b1[k]); s[1][2] += a1[k] * LDB1(b2[k]); s[1][3] += a1[k] * LDB1(b3[k]); \
            } \
            for (int j = 0; j < 4; ++j) { c[m * ldc + n + j] = s[0][j]; c[(m + 1) * ldc + n + j] = s[1][j]; } \
        } \
        for (; m < M; ++m) { \
            const float *a0 = a + m * lda; \
            kiln_v8 c0 = {0}, c1 = {0}, c2 = {0}, c3 = {0}; \
            for (int64_t k = 0; k < K8; k += 8) { \
                kiln_v8 x0 = kiln_ld8(a0 + k); \
                c0 += x0 * LDB8(b0 + k); c1 += x0 * LDB8(b1 + k); \
                c2 += x0 * LDB8(b2 + k); c3 += x0 * LDB8(b3 + k); \
            } \
            float s[4] = {kiln_hsum8(c0), kiln_hsum8(c1), kiln_hsum8(c2), kiln_hsum8(c3)}; \
            for (int64_t k = K8; k < K; ++k) { s[0] += a0[k] * LDB1(b0[k]); s[1] += a0[k] * LDB1(b1[k]); s[2] += a0[k] * LDB1(b2[k]); s[3] += a0[k] * LDB1(b3[k]); } \
            for (int j = 0; j < 4; ++j) c[m * ldc + n + j] = s[j]; \
        } \
    } \
    for (; n < N; ++n) { \
        const BT *b0 = b + n * ldb; \
        for (int64_t m = 0; m < M; ++m) { \
            const float *a0 = a + m * lda; \
            kiln_v8 c0 = {0}; \
            for (int64_t k = 0; k < K8; k += 8) c0 += kiln_ld8(a0 + k) * LDB8(b0 + k); \
            float s = kiln_hsum8(c0); \
            for (int64_t k = K8; k < K; ++k) s += a0[k] * LDB1(b0[k]); \
            c[m * ldc + n] = s; \
        } \
    } \
}
/* f32 weights, and bf16 weights widened in registers (half the bytes read per token). */
KILN_MM_NT(kiln_mm_nt, float, kiln_ld8, KILN_ID)
KILN_MM_NT(kiln_mm_nt_bf16, uint16_t, kiln_ldbf8, kiln_bf16_to_f32)

/* c[m, n] = sum_k a[m*lda + k*sak] * b[k*ldb + n] for N <= KILN_NC: b contiguous along n ("NN", e.g. P @ V). */
static void kiln_mm_nn(const float *restrict a, int64_t lda, int64_t sak, const float *restrict b, int64_t ldb,
                       float *restrict c, int64_t ldc, int64_t M, int64_t N, int64_t K) {
    for (int64_t m = 0; m < M; ++m) {
        float acc[KILN_NC] = {0}; /* N <= NC: one work unit's columns */
        for (int64_t k = 0; k < K; ++k) {
            const float x = a[m * lda + k * sak];
            const float *restrict brow = b + k * ldb;
            for (int64_t n = 0; n < N; ++n) acc[n] += x * brow[n];
        }
        for (int64_t n = 0; n < N; ++n) c[m * ldc + n] = acc[n];
    }
}

/* ---- attention building blocks ---------------------------------------------------------- */
typedef int32_t kiln_i8 __attribute__((vector_size(32)));
static inline kiln_v8 kiln_splat8(float x) { kiln_v8 v = {x, x, x, x, x, x, x, x}; return v; }
/* Lane by lane, `mask ? a : b` (a mask lane is all ones or zero, as comparisons give). */
static inline kiln_v8 kiln_sel8(kiln_i8 mask, kiln_v8 a, kiln_v8 b) {
    return (kiln_v8)((mask & (kiln_i8)a) | (~mask & (kiln_i8)b));
}
/* 2^x for x <= 0 (Cephes' exp2f polynomial on [-0.5, 0.5]; worst relative error 7.9e-8 over
 * [-126, 0]), 8 at a time; below -126 it gives 2^-126 instead of a subnormal or 0; NaN stays NaN. */
static inline kiln_v8 kiln_exp2_v8(kiln_v8 x) {
    const kiln_i8 nan = x != x;
    const kiln_v8 x0 = x;
    x = kiln_sel8(nan, kiln_splat8(0.0f), x); /* no NaN reaches the int conversion */
    x = kiln_sel8(x < -126.0f, kiln_splat8(-126.0f), x);
    const kiln_i8 n = __builtin_convertvector(x - 0.5f, kiln_i8); /* round, x <= 0 */
    const kiln_v8 f = x - __builtin_convertvector(n, kiln_v8);
    kiln_v8 p = 1.535336188319500e-4f * f + 1.339887440266574e-3f;
    p = p * f + 9.618437357674640e-3f;
    p = p * f + 5.550332471162809e-2f;
    p = p * f + 2.402264791363012e-1f;
    p = p * f + 6.931472028550421e-1f;
    p = p * f + 1.0f;
    kiln_i8 bits; memcpy(&bits, &p, 32);
    bits += n << 23;
    memcpy(&p, &bits, 32);
    return kiln_sel8(nan, x0, p);
}
/* The online softmax's weights of one key block, in place: s[j] = 2^((s[j] - m) log2 e), 0
 * for a masked key (-inf), NaN stays NaN; returns their sum (in a fixed order). A partial
 * last group of 8 is padded with masked keys, so every key takes the same arithmetic. */
static inline float kiln_softmax_weights(float *restrict s, int64_t n, float m) {
    const float l2e = 1.44269504088896340736f;
    kiln_v8 total = {0};
    for (int64_t j = 0; j < n; j += 8) {
        float *g = s + j, pad[8];
        const int64_t c = n - j < 8 ? n - j : 8;
        if (c < 8) { /* the partial last group, through a padded copy */
            for (int64_t i = 0; i < 8; ++i) pad[i] = i < c ? g[i] : -INFINITY;
            g = pad;
        }
        const kiln_v8 x = kiln_ld8(g);
        kiln_v8 w = kiln_exp2_v8((x - m) * l2e);
        w = kiln_sel8(x == -INFINITY, kiln_splat8(0.0f), w);
        w = kiln_sel8(x != x, x, w);
        memcpy(g, &w, 32);
        total += w;
        if (c < 8) for (int64_t i = 0; i < c; ++i) s[j + i] = pad[i];
    }
    return kiln_hsum8(total);
}
/* o[m, n] += sum_k p[m*ldp + k] * v[k*ldv + n]: the block's weights times its value rows,
 * value rows contiguous along n. 2 rows x 32 columns of accumulators per pass, so each value
 * load serves two rows. */
static void kiln_att_pv(float *restrict o, int64_t ldo, const float *restrict p, int64_t ldp,
                        const float *restrict v, int64_t ldv, int64_t M, int64_t K, int64_t N) {
    int64_t n = 0;
    for (; n + 32 <= N; n += 32) {
        int64_t m = 0;
        for (; m + 2 <= M; m += 2) {
            float *o0 = o + m * ldo + n, *o1 = o0 + ldo;
            const float *p0 = p + m * ldp, *p1 = p0 + ldp;
            kiln_v8 a00 = kiln_ld8(o0), a01 = kiln_ld8(o0 + 8), a02 = kiln_ld8(o0 + 16), a03 = kiln_ld8(o0 + 24);
            kiln_v8 a10 = kiln_ld8(o1), a11 = kiln_ld8(o1 + 8), a12 = kiln_ld8(o1 + 16), a13 = kiln_ld8(o1 + 24);
            for (int64_t k = 0; k < K; ++k) {
                const float *vr = v + k * ldv + n;
                const kiln_v8 x0 = kiln_splat8(p0[k]), x1 = kiln_splat8(p1[k]);
                kiln_v8 y0 = kiln_ld8(vr), y1 = kiln_ld8(vr + 8), y2 = kiln_ld8(vr + 16), y3 = kiln_ld8(vr + 24);
                KILN_IN_REG(y0); KILN_IN_REG(y1); KILN_IN_REG(y2); KILN_IN_REG(y3);
                a00 += x0 * y0; a10 += x1 * y0; a01 += x0 * y1; a11 += x1 * y1;
                a02 += x0 * y2; a12 += x1 * y2; a03 += x0 * y3; a13 += x1 * y3;
            }
            memcpy(o0, &a00, 32); memcpy(o0 + 8, &a01, 32); memcpy(o0 + 16, &a02, 32); memcpy(o0 + 24, &a03, 32);
            memcpy(o1, &a10, 32); memcpy(o1 + 8, &a11, 32); memcpy(o1 + 16, &a12, 32); memcpy(o1 + 24, &a13, 32);
        }
        for (; m < M; ++m) {
            float *o0 = o + m * ldo + n;
            const float *p0 = p + m * ldp;
            kiln_v8 a0 = kiln_ld8(o0), a1 = kiln_ld8(o0 + 8), a2 = kiln_ld8(o0 + 16), a3 = kiln_ld8(o0 + 24);
            for (int64_t k = 0; k < K; ++k) {
                const float *vr = v + k * ldv + n;
                const kiln_v8 x0 = kiln_splat8(p0[k]);
                a0 += x0 * kiln_ld8(vr); a1 += x0 * kiln_ld8(vr + 8);
                a2 += x0 * kiln_ld8(vr + 16); a3 += x0 * kiln_ld8(vr + 24);
            }
            memcpy(o0, &a0, 32); memcpy(o0 + 8, &a1, 32); memcpy(o0 + 16, &a2, 32); memcpy(o0 + 24, &a3, 32);
        }
    }
    for (; n < N; ++n)
        for (int64_t m = 0; m < M; ++m) {
            float acc = o[m * ldo + n];
            for (int64_t k = 0; k < K; ++k) acc += p[m * ldp + k] * v[k * ldv + n];
            o[m * ldo + n] = acc;
        }
}

/* KILN_GEMM */
