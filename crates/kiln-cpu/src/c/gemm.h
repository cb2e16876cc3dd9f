/* ---- GEMM and GEMV over packed weight panels ----------------------------------------------
 *
 * y = x W^T with W a weight the CPU device packed once, when it was bound (see pack.rs):
 * W [N, K] becomes panels of KILN_NR columns, [ceil(N/NR)][K][NR], zero past N, in W's own
 * dtype (bf16 stays bf16). Element (n, k) is at wp[(n / NR) * K * NR + k * NR + n % NR] for
 * f32, at wp[(n / NR) * K * NR + k * NR + kiln_bf16_pos(n % NR)] for bf16 (the order in which
 * one unpack per vector widens a row: kiln_ldbf_panel_lo/hi in the prelude).
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
#if defined(KILN_AVX512)
/* GCC vector extensions and the compiler's FMA builtins instead of <immintrin.h>: parsing that
 * header costs ~0.6 s per translation unit, more than compiling most kernels. kiln_vf,
 * kiln_ldv and kiln_ldbf_panel_lo/hi come from the prelude; each builtin is one vfmadd231ps
 * (a * b + c, rounded once), what _mm512_fmadd_ps / _mm256_fmadd_ps expand to. */
#define KILN_MR 12
#define KILN_FMAV(a, b, c) __builtin_ia32_vfmaddps512_mask((a), (b), (c), (unsigned short)-1, 4)
#define KILN_SIMD 1
#elif defined(__AVX2__) && defined(__FMA__)
#define KILN_MR 6
#define KILN_FMAV(a, b, c) __builtin_ia32_vfmaddps256((a), (b), (c))
#define KILN_SIMD 1
#else
#define KILN_MR 4
#endif
#if defined(KILN_SIMD) && KILN_NR != 2 * KILN_VL
#error "kiln-cpu: a panel is two vectors wide"
#endif

/* Which A rows the worker holds packed in its abuf (rows m0.. of a). It lives in the first
 * bytes of the worker's scratch, which the device zeroes before every launch: the rows packed
 * by one call serve the worker's later calls of the same launch (a launch is split into more
 * chunks than threads, and packing the rows of A again for each was up to a fifth of a prefill
 * GEMM with a small N). */
typedef struct {
    const float *a_src;
    int64_t a_m0;
} kiln_gemm_state;
/* The worker's scratch. */
typedef struct {
    float *abuf;           /* [ceil(MC/MR)][K][MR] */
    float *bbuf;           /* [KC][NR] */
    kiln_gemm_state *st;
} kiln_gemm_ctx;

static inline float kiln_bf16f(uint16_t h) { return kiln_u2f((uint32_t)h << 16); }
#define KILN_F32F(x) (x)

/* Rows [0, tm) of a (row stride lda, k contiguous) into ap = [ceil(tm/MR)][K][MR], zero rows past tm.
 * Guarded, like the micro-kernel and the GEMV shapes below: where the name is a macro, a part of
 * kiln's runtime object compiles it and this translation unit calls that (kiln-cpu runtime.rs,
 * `RuntimeFn::calls`). */
#if !defined(kiln_pack_a_rows)
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
#endif

/* Rows [0, tm) of a (the launch's rows m0..) packed into the worker's abuf, unless it holds them
 * already (kiln_gemm_state). */
static inline __attribute__((always_inline)) void kiln_pack_a_once(kiln_gemm_ctx *ctx, const float *restrict a, int64_t lda, int64_t tm, int64_t K,
                                    int64_t m0) {
    if (ctx->st->a_src != a || ctx->st->a_m0 != m0) {
        kiln_pack_a_rows(a, lda, tm, K, ctx->abuf);
        ctx->st->a_src = a; ctx->st->a_m0 = m0;
    }
}

/* bf16 panel strip of kc rows -> f32 strip [kc][NR] in column order. */
static inline void kiln_widen_bf16(const uint16_t *restrict s, float *restrict d, int64_t kc) {
    for (int64_t r = 0; r < kc; ++r, s += KILN_NR, d += KILN_NR) {
#if defined(KILN_SIMD)
        kiln_stv(d, kiln_ldbf_panel_lo(s));
        kiln_stv(d + KILN_VL, kiln_ldbf_panel_hi(s));
#else
        for (int64_t j = 0; j < KILN_NR; ++j) d[j] = kiln_bf16f(s[kiln_bf16_pos(j)]);
#endif
    }
}
#define KILN_POS_F32(j) (j)
#define KILN_POS_BF16(j) kiln_bf16_pos(j)

/* Micro-kernel: C[MR x NR] (row stride ldc) (+)= A strip [kc][MR] x B strip [kc][NR]: MR
 * rows x two vectors of accumulators; per k two B loads (kept in registers), MR broadcasts
 * (each into a register both of its FMAs read), 2 MR FMAs. AVX-512 12 x 32: 24 zmm
 * accumulators + 2 B vectors + 1 broadcast = 27 of 32 registers. AVX2 6 x 16: 12 ymm
 * accumulators + 2 B vectors + 1 broadcast = 15 of 16. */
#if defined(KILN_SIMD)
#define KILN_SPLATV(x) kiln_splatv(x)
#if KILN_MR == 12
#define KILN_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
#else
#define KILN_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5)
#endif
#define KILN_UKR_DECL(i) kiln_vf c##i##0, c##i##1;
#define KILN_UKR_LOAD(i) c##i##0 = kiln_ldv(c + i * ldc); c##i##1 = kiln_ldv(c + i * ldc + KILN_VL);
#define KILN_UKR_ZERO(i) c##i##0 = c##i##1 = (kiln_vf){0};
#define KILN_UKR_STEP(i) { const kiln_vf x = KILN_SPLATV(a[i]); c##i##0 = KILN_FMAV(x, b0, c##i##0); c##i##1 = KILN_FMAV(x, b1, c##i##1); }
#define KILN_UKR_STORE(i) kiln_stv(c + i * ldc, c##i##0); kiln_stv(c + i * ldc + KILN_VL, c##i##1);
#if !defined(kiln_ukr)
static inline void kiln_ukr(int64_t kc, const float *restrict a, const float *restrict b,
                            float *restrict c, int64_t ldc, int load_c) {
    KILN_ROWS(KILN_UKR_DECL)
    if (load_c) {
        KILN_ROWS(KILN_UKR_LOAD)
    } else {
        KILN_ROWS(KILN_UKR_ZERO)
    }
#pragma GCC unroll 4
    for (int64_t k = 0; k < kc; ++k) {
        kiln_vf b0 = kiln_ldv(b), b1 = kiln_ldv(b + KILN_VL);
#if defined(KILN_AVX512)
        KILN_IN_REG(b0); KILN_IN_REG(b1);
#endif
        KILN_ROWS(KILN_UKR_STEP)
        a += KILN_MR; b += KILN_NR;
    }
    KILN_ROWS(KILN_UKR_STORE)
}
#endif
#else
/* Portable: the same chains with explicit fmaf (the compiler vectorises over j). */
#if !defined(kiln_ukr)
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
#endif

/* Rows up to which a product tile streams the weight panels once (GEMV passes, 4 rows at a
 * time over a panel that stays in cache) rather than packing A and running the micro-kernel: a
 * batched decode step of up to this many sequences (kiln serve --max-batch), or a step of
 * decodes and a small prefill chunk, reads each weight once and computes no padding rows. On
 * Zen 4 (bf16 weights, one thread, a qwen3-0.6b serve step) the GEMV passes beat the GEMM at
 * every size measured up to 48 rows (16: 271 against 445 ms; 32: 486 against 637; 48: 736
 * against 847): the GEMM's packing and widening pay off only on prefill-sized tiles. 32 keeps
 * a margin (docs/benchmarks.md, issue 26's adaptive prefill budget). */
#define KILN_GEMV_ROWS 32

/* GEMV pass (decode, R <= 4 rows): S panels of w (each a pointer to its first k), R rows of x
 * (row stride ldx); t[r * ldt + s * NR + j]. R * S <= 4, two vector accumulators per row and
 * panel; 64-byte prefetches 1 KiB ahead on every panel stream. */
#if defined(KILN_SIMD)
#define KILN_LDV_F32(row) kiln_ldv(row), kiln_ldv((row) + KILN_VL)
#define KILN_LDV_BF16(row) kiln_ldbf_panel_lo(row), kiln_ldbf_panel_hi(row)
#define KILN_GEMV_PASS(NAME, BT, LB)                                                               \
static inline __attribute__((always_inline)) void NAME(const int R, const int S,                  \
        const float *restrict x, int64_t ldx, const BT *const *w, int64_t K, float *restrict t,   \
        int64_t ldt) {                                                                             \
    kiln_vf acc[4][4][2];                                                                          \
    _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r)                                            \
    _Pragma("GCC unroll 4") for (int s = 0; s < S; ++s) acc[r][s][0] = acc[r][s][1] = (kiln_vf){0}; \
    for (int64_t k = 0; k < K; ++k) {                                                              \
        if (((k * KILN_NR * (int64_t)sizeof(BT)) & 63) == 0)                                       \
            _Pragma("GCC unroll 4") for (int s = 0; s < S; ++s)                                    \
            _Pragma("GCC unroll 2") for (int l = 0; l < (int)(KILN_NR * sizeof(BT) + 63) / 64; ++l) \
                __builtin_prefetch((const char *)(w[s] + k * KILN_NR) + 1024 + 64 * l, 0, 3); \
        kiln_vf xv[4];                                                                             \
        _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) xv[r] = kiln_splatv(x[r * ldx + k]);   \
        _Pragma("GCC unroll 4") for (int s = 0; s < S; ++s) {                                      \
            const kiln_vf b[2] = {LB(w[s] + k * KILN_NR)}; /* columns 0..VL-1, VL..NR-1 */     \
            _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) {                                  \
                acc[r][s][0] = KILN_FMAV(xv[r], b[0], acc[r][s][0]);                               \
                acc[r][s][1] = KILN_FMAV(xv[r], b[1], acc[r][s][1]);                               \
            }                                                                                      \
        }                                                                                          \
    }                                                                                              \
    _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r)                                            \
    _Pragma("GCC unroll 4") for (int s = 0; s < S; ++s) {                                          \
        kiln_stv(t + r * ldt + s * KILN_NR, acc[r][s][0]);                                         \
        kiln_stv(t + r * ldt + s * KILN_NR + KILN_VL, acc[r][s][1]);                               \
    }                                                                                              \
}
#else
#define KILN_LD1_F32(row, j) (row)[j]
#define KILN_LD1_BF16(row, j) kiln_bf16f((row)[kiln_bf16_pos(j)])
#define KILN_GEMV_PASS(NAME, BT, LB)                                                               \
static inline void NAME(const int R, const int S, const float *restrict x, int64_t ldx,           \
        const BT *const *w, int64_t K, float *restrict t, int64_t ldt) {                           \
    float acc[4][4 * KILN_NR];                                                                     \
    for (int r = 0; r < R; ++r) for (int j = 0; j < S * KILN_NR; ++j) acc[r][j] = 0.0f;            \
    for (int64_t k = 0; k < K; ++k)                                                                \
        for (int r = 0; r < R; ++r) for (int s = 0; s < S; ++s) for (int j = 0; j < KILN_NR; ++j)  \
            acc[r][s * KILN_NR + j] = fmaf(x[r * ldx + k], LB(w[s] + k * KILN_NR, j), acc[r][s * KILN_NR + j]); \
    for (int r = 0; r < R; ++r) for (int j = 0; j < S * KILN_NR; ++j) t[r * ldt + j] = acc[r][j];  \
}
#define KILN_LDV_F32 KILN_LD1_F32
#define KILN_LDV_BF16 KILN_LD1_BF16
#endif
KILN_GEMV_PASS(kiln_gemv_pass_f32, float, KILN_LDV_F32)
KILN_GEMV_PASS(kiln_gemv_pass_bf16, uint16_t, KILN_LDV_BF16)
/* One function per shape (R rows, S panels) of a pass, which the tiles call: their 11 call
 * sites use 7 shapes, and inlining the pass at each compiled the same loops again (~30 ms of
 * the GEMV case's ~190 ms of gcc, issue 27). A call per pass of K steps costs nothing measurable
 * (a C harness, 1-12 rows, K = 1024 and 4096: the same per-thread CPU time). */
#define KILN_GEMV_AT(NAME, BT, R, S)                                                               \
static __attribute__((noinline)) void NAME##_##R##x##S(const float *restrict x, int64_t ldx,      \
        const BT *const *w, int64_t K, float *restrict t, int64_t ldt) {                           \
    NAME(R, S, x, ldx, w, K, t, ldt);                                                              \
}
#define KILN_GEMV_SHAPES(NAME, BT) KILN_GEMV_AT(NAME, BT, 1, 4) KILN_GEMV_AT(NAME, BT, 1, 2)       \
    KILN_GEMV_AT(NAME, BT, 2, 2) KILN_GEMV_AT(NAME, BT, 1, 1) KILN_GEMV_AT(NAME, BT, 2, 1)         \
    KILN_GEMV_AT(NAME, BT, 3, 1) KILN_GEMV_AT(NAME, BT, 4, 1)
#if !defined(kiln_gemv_pass_f32_1x1)
KILN_GEMV_SHAPES(kiln_gemv_pass_f32, float)
#endif
#if !defined(kiln_gemv_pass_bf16_1x1)
KILN_GEMV_SHAPES(kiln_gemv_pass_bf16, uint16_t)
#endif

/* The product tile of a packed weight: t[i * ldt + j] = sum_k a[i * lda + k] * W[c0 + j, k]
 * for i < tm <= MC, j < tn <= NC. The tile has room for MC rows and NC + NR columns' worth of
 * whole panels: garbage beyond (tm, tn) is the caller's to ignore. `a` points at row m0 of A;
 * ctx->st says which rows the worker has packed in this launch. */
#define KILN_PACKED_TILE(NAME, BT, CVT, POS, GEMV)                                                 \
static void NAME(kiln_gemm_ctx *ctx, const float *restrict a, int64_t lda, const BT *restrict wp,  \
                 int64_t K, int64_t m0, int64_t tm, int64_t c0, int64_t tn, float *restrict t,     \
                 int64_t ldt) {                                                                    \
    if (c0 % KILN_NR != 0) { /* product columns not on a panel boundary: scalar chains */         \
        for (int64_t i = 0; i < tm; ++i)                                                           \
            for (int64_t j = 0; j < tn; ++j) {                                                     \
                const int64_t n = c0 + j;                                                          \
                const BT *w = wp + (n / KILN_NR) * K * KILN_NR + POS(n % KILN_NR);                 \
                float acc = 0.0f;                                                                  \
                for (int64_t k = 0; k < K; ++k) acc = fmaf(a[i * lda + k], CVT(w[k * KILN_NR]), acc); \
                t[i * ldt + j] = acc;                                                              \
            }                                                                                      \
        return;                                                                                    \
    }                                                                                              \
    const int64_t p0 = c0 / KILN_NR, np = (tn + KILN_NR - 1) / KILN_NR;                            \
    if (tm <= 4) { /* decode: stream the panels once, rows in registers */                         \
        const int R = (int)tm;                                                                     \
        for (int64_t s = 0; s < np;) { /* as many panels per pass as R * S <= 4 allows */       \
            const int S = R == 1 && s + 4 <= np ? 4 : R <= 2 && s + 2 <= np ? 2 : 1;               \
            const BT *w[4];                                                                        \
            for (int q = 0; q < 4; ++q) w[q] = wp + (p0 + s + (q < S ? q : 0)) * K * KILN_NR;      \
            if (S == 4) GEMV##_1x4(a, lda, w, K, t + s * KILN_NR, ldt);                            \
            else if (S == 2 && R == 1) GEMV##_1x2(a, lda, w, K, t + s * KILN_NR, ldt);             \
            else if (S == 2) GEMV##_2x2(a, lda, w, K, t + s * KILN_NR, ldt);                       \
            else if (R == 1) GEMV##_1x1(a, lda, w, K, t + s * KILN_NR, ldt);                       \
            else if (R == 2) GEMV##_2x1(a, lda, w, K, t + s * KILN_NR, ldt);                       \
            else if (R == 3) GEMV##_3x1(a, lda, w, K, t + s * KILN_NR, ldt);                       \
            else GEMV##_4x1(a, lda, w, K, t + s * KILN_NR, ldt);                                   \
            s += S;                                                                                \
        }                                                                                          \
        return;                                                                                    \
    }                                                                                              \
    if (tm <= KILN_GEMV_ROWS) { /* a few decodes at once: each panel streamed from memory once, */ \
        for (int64_t s = 0; s < np; ++s) { /* its rows 4 at a time (the panel stays in cache) */ \
            const BT *w[4];                                                                        \
            for (int q = 0; q < 4; ++q) w[q] = wp + (p0 + s) * K * KILN_NR;                        \
            for (int64_t r0 = 0; r0 < tm; r0 += 4) {                                               \
                const float *ar = a + r0 * lda;                                                    \
                float *tr = t + r0 * ldt + s * KILN_NR;                                            \
                const int64_t R = kiln_min(4, tm - r0);                                            \
                if (R == 4) GEMV##_4x1(ar, lda, w, K, tr, ldt);                                    \
                else if (R == 3) GEMV##_3x1(ar, lda, w, K, tr, ldt);                               \
                else if (R == 2) GEMV##_2x1(ar, lda, w, K, tr, ldt);                               \
                else GEMV##_1x1(ar, lda, w, K, tr, ldt);                                           \
            }                                                                                      \
        }                                                                                          \
        return;                                                                                    \
    }                                                                                              \
    if (K == 0) { /* empty products: zeros, as the other paths give */                            \
        for (int64_t i = 0; i < tm; ++i) for (int64_t j = 0; j < np * KILN_NR; ++j) t[i * ldt + j] = 0.0f; \
        return;                                                                                    \
    }                                                                                              \
    kiln_pack_a_once(ctx, a, lda, tm, K, m0);                                                      \
    for (int64_t k0 = 0; k0 < K; k0 += KILN_KC) {                                                  \
        const int64_t kc = kiln_min(KILN_KC, K - k0);                                              \
        for (int64_t s = 0; s < np; ++s) {                                                         \
            const BT *panel = wp + (p0 + s) * K * KILN_NR + k0 * KILN_NR;                          \
            const float *bs;                                                                       \
            if (sizeof(BT) == 4) bs = (const float *)(const void *)panel;                          \
            else { kiln_widen_bf16((const uint16_t *)(const void *)panel, ctx->bbuf, kc); bs = ctx->bbuf; } \
            for (int64_t i0 = 0; i0 < tm; i0 += KILN_MR)                                           \
                kiln_ukr(kc, ctx->abuf + i0 * K + k0 * KILN_MR, bs, t + i0 * ldt + s * KILN_NR, ldt, k0 > 0); \
        }                                                                                          \
    }                                                                                              \
}
KILN_PACKED_TILE(kiln_packed_tile_f32, float, KILN_F32F, KILN_POS_F32, kiln_gemv_pass_f32)
KILN_PACKED_TILE(kiln_packed_tile_bf16, uint16_t, kiln_bf16f, KILN_POS_BF16, kiln_gemv_pass_bf16)
