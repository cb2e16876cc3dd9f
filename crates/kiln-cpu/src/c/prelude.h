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
                y = LDB8(b0 + k); c00 += x0 * y; c10 += x1 * y; \
                y = LDB8(b1 + k); c01 += x0 * y; c11 += x1 * y; \
                y = LDB8(b2 + k); c02 += x0 * y; c12 += x1 * y; \
                y = LDB8(b3 + k); c03 += x0 * y; c13 += x1 * y; \
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
/* a . b over n contiguous floats: 16 lanes of partial sums, then the tail. */
static inline float kiln_dot(const float *restrict a, const float *restrict b, int64_t n) {
    kiln_v8 s0 = {0}, s1 = {0};
    int64_t k = 0;
    for (; k + 16 <= n; k += 16) {
        s0 += kiln_ld8(a + k) * kiln_ld8(b + k);
        s1 += kiln_ld8(a + k + 8) * kiln_ld8(b + k + 8);
    }
    for (; k + 8 <= n; k += 8) s0 += kiln_ld8(a + k) * kiln_ld8(b + k);
    float s = kiln_hsum8(s0 + s1);
    for (; k < n; ++k) s += a[k] * b[k];
    return s;
}
/* y[0..n) = y * c + p * x: the online softmax's rescale and one value row. */
static inline void kiln_scale_axpy(float *restrict y, float c, float p, const float *restrict x, int64_t n) {
    for (int64_t k = 0; k < n; ++k) y[k] = y[k] * c + p * x[k];
}

/* KILN_GEMM */
