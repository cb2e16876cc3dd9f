/* ---- GEMM and GEMV over packed weight panels ----------------------------------------------
 *
 * y = x W^T with W a weight the CPU device packed once, when it was bound (see pack.rs):
 * W [N, K] becomes panels of KILN_NR columns, [ceil(N/NR)][K][NR], zero past N, in W's own
 * dtype (bf16 stays bf16). Element (n, k) is at wp[(n / NR) * K * NR + k * NR + n % NR].
 *
 * Arithmetic contract (what makes results independent of the thread count and the split into
 * work units): every product is ONE sequential fused multiply-add chain over k = 0..K-1 from 0,
 * c = fmaf(a[k], w[k], c), whatever path computes it (the register-blocked micro-kernel carries
 * its partial sums through the tile between k blocks; the GEMV keeps them in registers; the
 * scalar path calls fmaf). So a row computed at M = 1 (decode) equals the same row inside a
 * prefill GEMM, bit for bit.
 *
 * KILN_NR, KILN_MC, KILN_NC and KILN_KC are defined by kiln-cpu (codegen.rs) before this file.
 * A call computes product tiles of at most MC x NC (rows m0.., product columns c0..) into a
 * tile t (row stride ldt); the generated kernel applies its epilogue and stores. Scratch for
 * the packed A rows (MC x K) and a widened bf16 strip (KC x NR) is the worker's, handed to the
 * kernel by the device (no thread-local statics).
 */
#if defined(__AVX2__) && defined(__FMA__)
/* GCC vector extensions and the compiler's FMA builtin instead of <immintrin.h>: parsing that
 * header costs ~0.6 s per translation unit, more than compiling most kernels. kiln_v8,
 * kiln_ld8 and kiln_ldbf8 come from the prelude; the builtin is one vfmadd231ps (a * b + c,
 * rounded once), what the intrinsic _mm256_fmadd_ps expands to. */
#define KILN_MR 6
#define KILN_FMA8(a, b, c) __builtin_ia32_vfmaddps256((a), (b), (c))
#define KILN_SPLAT8(x) ((kiln_v8){(x), (x), (x), (x), (x), (x), (x), (x)})
static inline void kiln_st8(float *p, kiln_v8 v) { memcpy(p, &v, 32); }
#else
#define KILN_MR 4
#endif

/* The worker's scratch and which A rows it holds packed (rows m0.. of a, for this call). */
typedef struct {
    float *abuf;           /* [ceil(MC/MR)][K][MR] */
    float *bbuf;           /* [KC][NR] */
    const float *a_src;
    int64_t a_m0;
} kiln_gemm_ctx;

static inline float kiln_bf16f(uint16_t h) { return kiln_u2f((uint32_t)h << 16); }
#define KILN_F32F(x) (x)

/* Rows [0, tm) of a (row stride lda, k contiguous) into ap = [ceil(tm/MR)][K][MR], zero rows past tm. */
static void kiln_pack_a_rows(const float *restrict a, int64_t lda, int64_t tm, int64_t K, float *restrict ap) {
    for (int64_t i0 = 0; i0 < tm; i0 += KILN_MR) {
        float *restrict d = ap + i0 * K;
        for (int64_t k0 = 0; k0 < K; k0 += 256) {
            const int64_t kn = kiln_min(256, K - k0);
            for (int64_t i = 0; i < KILN_MR; ++i) {
                if (i0 + i < tm) {
                    const float *restrict r = a + (i0 + i) * lda + k0;
                    for (int64_t k = 0; k < kn; ++k) d[(k0 + k) * KILN_MR + i] = r[k];
                } else {
                    for (int64_t k = 0; k < kn; ++k) d[(k0 + k) * KILN_MR + i] = 0.0f;
                }
            }
        }
    }
}

/* bf16 panel strip -> f32 strip (n values). */
static inline void kiln_widen_bf16(const uint16_t *restrict s, float *restrict d, int64_t n) {
#if defined(__AVX2__) && defined(__FMA__)
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) kiln_st8(d + i, kiln_ldbf8(s + i));
    for (; i < n; ++i) d[i] = kiln_bf16f(s[i]);
#else
    for (int64_t i = 0; i < n; ++i) d[i] = kiln_bf16f(s[i]);
#endif
}

/* Micro-kernel: C[MR x NR] (row stride ldc) (+)= A strip [kc][MR] x B strip [kc][NR]. */
#if defined(__AVX2__) && defined(__FMA__)
/* 6 x 16: 12 ymm accumulators + 2 B vectors + 1 broadcast = 15 of 16 registers; per k 2 B
 * loads, 6 broadcasts, 12 FMAs. */
static inline void kiln_ukr(int64_t kc, const float *restrict a, const float *restrict b,
                            float *restrict c, int64_t ldc, int load_c) {
    kiln_v8 c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51;
    if (load_c) {
        c00 = kiln_ld8(c + 0 * ldc); c01 = kiln_ld8(c + 0 * ldc + 8);
        c10 = kiln_ld8(c + 1 * ldc); c11 = kiln_ld8(c + 1 * ldc + 8);
        c20 = kiln_ld8(c + 2 * ldc); c21 = kiln_ld8(c + 2 * ldc + 8);
        c30 = kiln_ld8(c + 3 * ldc); c31 = kiln_ld8(c + 3 * ldc + 8);
        c40 = kiln_ld8(c + 4 * ldc); c41 = kiln_ld8(c + 4 * ldc + 8);
        c50 = kiln_ld8(c + 5 * ldc); c51 = kiln_ld8(c + 5 * ldc + 8);
    } else {
        c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = c40 = c41 = c50 = c51 = (kiln_v8){0};
    }
#pragma GCC unroll 4
    for (int64_t k = 0; k < kc; ++k) {
        const kiln_v8 b0 = kiln_ld8(b), b1 = kiln_ld8(b + 8);
        kiln_v8 x;
        x = KILN_SPLAT8(a[0]); c00 = KILN_FMA8(x, b0, c00); c01 = KILN_FMA8(x, b1, c01);
        x = KILN_SPLAT8(a[1]); c10 = KILN_FMA8(x, b0, c10); c11 = KILN_FMA8(x, b1, c11);
        x = KILN_SPLAT8(a[2]); c20 = KILN_FMA8(x, b0, c20); c21 = KILN_FMA8(x, b1, c21);
        x = KILN_SPLAT8(a[3]); c30 = KILN_FMA8(x, b0, c30); c31 = KILN_FMA8(x, b1, c31);
        x = KILN_SPLAT8(a[4]); c40 = KILN_FMA8(x, b0, c40); c41 = KILN_FMA8(x, b1, c41);
        x = KILN_SPLAT8(a[5]); c50 = KILN_FMA8(x, b0, c50); c51 = KILN_FMA8(x, b1, c51);
        a += KILN_MR; b += KILN_NR;
    }
    kiln_st8(c + 0 * ldc, c00); kiln_st8(c + 0 * ldc + 8, c01);
    kiln_st8(c + 1 * ldc, c10); kiln_st8(c + 1 * ldc + 8, c11);
    kiln_st8(c + 2 * ldc, c20); kiln_st8(c + 2 * ldc + 8, c21);
    kiln_st8(c + 3 * ldc, c30); kiln_st8(c + 3 * ldc + 8, c31);
    kiln_st8(c + 4 * ldc, c40); kiln_st8(c + 4 * ldc + 8, c41);
    kiln_st8(c + 5 * ldc, c50); kiln_st8(c + 5 * ldc + 8, c51);
}
#else
/* Portable: the same chains with explicit fmaf (the compiler vectorises over j). */
static inline void kiln_ukr(int64_t kc, const float *restrict a, const float *restrict b,
                            float *restrict c, int64_t ldc, int load_c) {
    float acc[KILN_MR][KILN_NR];
    for (int i = 0; i < KILN_MR; ++i)
        for (int j = 0; j < KILN_NR; ++j) acc[i][j] = load_c ? c[i * ldc + j] : 0.0f;
    for (int64_t k = 0; k < kc; ++k)
        for (int i = 0; i < KILN_MR; ++i)
            for (int j = 0; j < KILN_NR; ++j) acc[i][j] = fmaf(a[k * KILN_MR + i], b[k * KILN_NR + j], acc[i][j]);
    for (int i = 0; i < KILN_MR; ++i)
        for (int j = 0; j < KILN_NR; ++j) c[i * ldc + j] = acc[i][j];
}
#endif

/* GEMV pass (decode, R <= 4 rows): S panels of w (each a pointer to its first k), R rows of x
 * (row stride ldx); t[r * ldt + s * NR + j]. R * S * 2 <= 8 accumulators; 64-byte prefetch
 * 1 KiB ahead on every panel stream. */
#if defined(__AVX2__) && defined(__FMA__)
#define KILN_LD8_F32(p) kiln_ld8(p)
#define KILN_LD8_BF16(p) kiln_ldbf8(p)
#define KILN_GEMV_PASS(NAME, BT, LB)                                                               \
static inline __attribute__((always_inline)) void NAME(const int R, const int S,                  \
        const float *restrict x, int64_t ldx, const BT *const *w, int64_t K, float *restrict t,   \
        int64_t ldt) {                                                                             \
    kiln_v8 acc[4][4][2];                                                                          \
    _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r)                                            \
    _Pragma("GCC unroll 4") for (int s = 0; s < S; ++s) acc[r][s][0] = acc[r][s][1] = (kiln_v8){0}; \
    for (int64_t k = 0; k < K; ++k) {                                                              \
        if (((k * KILN_NR * (int64_t)sizeof(BT)) & 63) == 0)                                       \
            _Pragma("GCC unroll 4") for (int s = 0; s < S; ++s)                                    \
                __builtin_prefetch((const char *)(w[s] + k * KILN_NR) + 1024, 0, 3);            \
        kiln_v8 xv[4];                                                                             \
        _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) xv[r] = KILN_SPLAT8(x[r * ldx + k]); \
        _Pragma("GCC unroll 4") for (int s = 0; s < S; ++s) {                                      \
            const kiln_v8 b0 = LB(w[s] + k * KILN_NR), b1 = LB(w[s] + k * KILN_NR + 8);             \
            _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) {                                  \
                acc[r][s][0] = KILN_FMA8(xv[r], b0, acc[r][s][0]);                              \
                acc[r][s][1] = KILN_FMA8(xv[r], b1, acc[r][s][1]);                              \
            }                                                                                      \
        }                                                                                          \
    }                                                                                              \
    _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r)                                            \
    _Pragma("GCC unroll 4") for (int s = 0; s < S; ++s) {                                          \
        kiln_st8(t + r * ldt + s * KILN_NR, acc[r][s][0]);                                        \
        kiln_st8(t + r * ldt + s * KILN_NR + 8, acc[r][s][1]);                                     \
    }                                                                                              \
}
#else
#define KILN_LD1_F32(p) (*(p))
#define KILN_LD1_BF16(p) kiln_bf16f(*(p))
#define KILN_GEMV_PASS(NAME, BT, LB)                                                               \
static inline void NAME(const int R, const int S, const float *restrict x, int64_t ldx,           \
        const BT *const *w, int64_t K, float *restrict t, int64_t ldt) {                           \
    float acc[4][4 * KILN_NR];                                                                     \
    for (int r = 0; r < R; ++r) for (int j = 0; j < S * KILN_NR; ++j) acc[r][j] = 0.0f;            \
    for (int64_t k = 0; k < K; ++k)                                                                \
        for (int r = 0; r < R; ++r) for (int s = 0; s < S; ++s) for (int j = 0; j < KILN_NR; ++j)  \
            acc[r][s * KILN_NR + j] = fmaf(x[r * ldx + k], LB(w[s] + k * KILN_NR + j), acc[r][s * KILN_NR + j]); \
    for (int r = 0; r < R; ++r) for (int j = 0; j < S * KILN_NR; ++j) t[r * ldt + j] = acc[r][j];  \
}
#define KILN_LD8_F32 KILN_LD1_F32
#define KILN_LD8_BF16 KILN_LD1_BF16
#endif
KILN_GEMV_PASS(kiln_gemv_pass_f32, float, KILN_LD8_F32)
KILN_GEMV_PASS(kiln_gemv_pass_bf16, uint16_t, KILN_LD8_BF16)

/* The product tile of a packed weight: t[i * ldt + j] = sum_k a[i * lda + k] * W[c0 + j, k]
 * for i < tm <= MC, j < tn <= NC. The tile has room for MC rows and NC + NR columns' worth of
 * whole panels: garbage beyond (tm, tn) is the caller's to ignore. `a` points at row m0 of A;
 * ctx caches the packed rows across the calls of one kernel invocation. */
#define KILN_PACKED_TILE(NAME, BT, CVT, GEMV)                                                      \
static void NAME(kiln_gemm_ctx *ctx, const float *restrict a, int64_t lda, const BT *restrict wp,  \
                 int64_t K, int64_t m0, int64_t tm, int64_t c0, int64_t tn, float *restrict t,     \
                 int64_t ldt) {                                                                    \
    if (c0 % KILN_NR != 0) { /* product columns not on a panel boundary: scalar chains */         \
        for (int64_t i = 0; i < tm; ++i)                                                           \
            for (int64_t j = 0; j < tn; ++j) {                                                     \
                const int64_t n = c0 + j;                                                          \
                const BT *w = wp + (n / KILN_NR) * K * KILN_NR + n % KILN_NR;                      \
                float acc = 0.0f;                                                                  \
                for (int64_t k = 0; k < K; ++k) acc = fmaf(a[i * lda + k], CVT(w[k * KILN_NR]), acc); \
                t[i * ldt + j] = acc;                                                              \
            }                                                                                      \
        return;                                                                                    \
    }                                                                                              \
    const int64_t p0 = c0 / KILN_NR, np = (tn + KILN_NR - 1) / KILN_NR;                            \
    if (tm <= 4) { /* decode: stream the panels once, rows in registers */                         \
        const int R = (int)tm;                                                                     \
        for (int64_t s = 0; s < np;) {                                                             \
            const int S = R == 1 ? 4 : R == 2 ? 2 : 1;                                             \
            const BT *w[4];                                                                        \
            if (s + S <= np) {                                                                     \
                for (int q = 0; q < 4; ++q) w[q] = wp + (p0 + s + (q < S ? q : 0)) * K * KILN_NR;  \
                if (R == 1) GEMV(1, 4, a, lda, w, K, t + s * KILN_NR, ldt);                        \
                else if (R == 2) GEMV(2, 2, a, lda, w, K, t + s * KILN_NR, ldt);                   \
                else if (R == 3) GEMV(3, 1, a, lda, w, K, t + s * KILN_NR, ldt);                   \
                else GEMV(4, 1, a, lda, w, K, t + s * KILN_NR, ldt);                               \
                s += S;                                                                            \
            } else {                                                                               \
                for (int q = 0; q < 4; ++q) w[q] = wp + (p0 + s) * K * KILN_NR;                    \
                if (R == 1) GEMV(1, 1, a, lda, w, K, t + s * KILN_NR, ldt);                        \
                else if (R == 2) GEMV(2, 1, a, lda, w, K, t + s * KILN_NR, ldt);                   \
                else if (R == 3) GEMV(3, 1, a, lda, w, K, t + s * KILN_NR, ldt);                   \
                else GEMV(4, 1, a, lda, w, K, t + s * KILN_NR, ldt);                               \
                s += 1;                                                                            \
            }                                                                                      \
        }                                                                                          \
        return;                                                                                    \
    }                                                                                              \
    if (K == 0) { /* empty products: zeros, as the other paths give */                            \
        for (int64_t i = 0; i < tm; ++i) for (int64_t j = 0; j < np * KILN_NR; ++j) t[i * ldt + j] = 0.0f; \
        return;                                                                                    \
    }                                                                                              \
    if (ctx->a_src != a || ctx->a_m0 != m0) {                                                      \
        kiln_pack_a_rows(a, lda, tm, K, ctx->abuf);                                                \
        ctx->a_src = a; ctx->a_m0 = m0;                                                            \
    }                                                                                              \
    for (int64_t k0 = 0; k0 < K; k0 += KILN_KC) {                                                  \
        const int64_t kc = kiln_min(KILN_KC, K - k0);                                              \
        for (int64_t s = 0; s < np; ++s) {                                                         \
            const BT *panel = wp + (p0 + s) * K * KILN_NR + k0 * KILN_NR;                          \
            const float *bs;                                                                       \
            if (sizeof(BT) == 4) bs = (const float *)(const void *)panel;                          \
            else { kiln_widen_bf16((const uint16_t *)(const void *)panel, ctx->bbuf, kc * KILN_NR); bs = ctx->bbuf; } \
            for (int64_t i0 = 0; i0 < tm; i0 += KILN_MR)                                           \
                kiln_ukr(kc, ctx->abuf + i0 * K + k0 * KILN_MR, bs, t + i0 * ldt + s * KILN_NR, ldt, k0 > 0); \
        }                                                                                          \
    }                                                                                              \
}
KILN_PACKED_TILE(kiln_packed_tile_f32, float, KILN_F32F, kiln_gemv_pass_f32)
KILN_PACKED_TILE(kiln_packed_tile_bf16, uint16_t, kiln_bf16f, kiln_gemv_pass_bf16)
