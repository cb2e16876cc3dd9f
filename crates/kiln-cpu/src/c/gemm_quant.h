/* ---- GEMM and GEMV over block-quantized weight panels (Q8_0, Q4_0, Q4_K) ------------------
 *
 * y = x W^T with W a GGML-quantized weight the CPU device repacked once, when it was bound
 * (pack_quant.rs): panels of KILN_NR columns, each K/32 groups of GB bytes; a group holds
 * the columns' f32 scales (Q4_K: then their f32 mins) and 32 rows of quantized values
 * (Q8_0: [32][NR] i8; Q4_0/Q4_K: [32][NR/2] bytes, column c in the low nibble of byte c and
 * column c + NR/2 in the high nibble).
 *
 * Every weight value is dequantized exactly as ggml does it (Q8_0 q * d; Q4_0 (q - 8) * d;
 * Q4_K d1 * q - m1, the product kept from contracting into an FMA), then the product chains
 * are gemm.h's: one sequential fmaf chain per product over k. So a quantized matmul gives,
 * bit for bit, what the f32 kernels give on the dequantized weight, on every path (GEMV,
 * GEMM, scalar columns), for any thread count.
 */
#define KILN_GB_Q8_0 (36 * KILN_NR)
#define KILN_GB_Q4_0 (20 * KILN_NR)
#define KILN_GB_Q4_K (24 * KILN_NR)
typedef int8_t kiln_vq8 __attribute__((vector_size(KILN_VL)));
typedef uint8_t kiln_vq4 __attribute__((vector_size(KILN_VL)));
/* KILN_VL bytes widened to i32 lanes, sign- or zero-extended: one vpmovsxbd / vpmovzxbd
 * through the builtins (GCC 12 turns the generic conversion of bytes into a scalar loop). */
typedef char kiln_v16qi __attribute__((vector_size(16)));
static inline kiln_vi kiln_ld_i8(const void *p, int zero_extend) {
#if defined(KILN_AVX512)
    typedef int kiln_v16si __attribute__((vector_size(64)));
    kiln_v16qi b; memcpy(&b, p, 16);
    return zero_extend ? (kiln_vi)__builtin_ia32_pmovzxbd512_mask(b, (kiln_v16si){0}, (unsigned short)-1)
                       : (kiln_vi)__builtin_ia32_pmovsxbd512_mask(b, (kiln_v16si){0}, (unsigned short)-1);
#elif defined(__AVX2__)
    typedef long long kiln_v2di __attribute__((vector_size(16)));
    long long q; memcpy(&q, p, 8);
    const kiln_v16qi b = (kiln_v16qi)(kiln_v2di){q, 0};
    return zero_extend ? (kiln_vi)__builtin_ia32_pmovzxbd256(b) : (kiln_vi)__builtin_ia32_pmovsxbd256(b);
#else
    if (zero_extend) { kiln_vq4 v; memcpy(&v, p, KILN_VL); return __builtin_convertvector(v, kiln_vi); }
    kiln_vq8 v; memcpy(&v, p, KILN_VL); return __builtin_convertvector(v, kiln_vi);
#endif
}
#if defined(KILN_SIMD)
#define KILN_QFMAV KILN_FMAV
#else
static inline kiln_vf kiln_qfmav(kiln_vf a, kiln_vf b, kiln_vf c) {
    for (int l = 0; l < KILN_VL; ++l) c[l] = fmaf(a[l], b[l], c[l]);
    return c;
}
#define KILN_QFMAV kiln_qfmav
#endif
/* Keeps a scalar product from being contracted with the subtraction after it. */
#if defined(__x86_64__)
#define KILN_QKEEP(x) __asm__("" : "+x"(x))
#else
#define KILN_QKEEP(x) ((void)0)
#endif

/* Row r (< 32) of group g, columns 0..VL-1 into *lo and VL..NR-1 into *hi. */
static inline __attribute__((always_inline)) void kiln_deq_q8_0(const uint8_t *restrict g, int64_t r, kiln_vf *lo, kiln_vf *hi) {
    const kiln_vi a = kiln_ld_i8(g + 4 * KILN_NR + r * KILN_NR, 0);
    const kiln_vi b = kiln_ld_i8(g + 4 * KILN_NR + r * KILN_NR + KILN_VL, 0);
    const float *s = (const float *)(const void *)g;
    *lo = __builtin_convertvector(a, kiln_vf) * kiln_ldv(s);
    *hi = __builtin_convertvector(b, kiln_vf) * kiln_ldv(s + KILN_VL);
}
static inline __attribute__((always_inline)) void kiln_deq_q4_0(const uint8_t *restrict g, int64_t r, kiln_vf *lo, kiln_vf *hi) {
    const kiln_vi w = kiln_ld_i8(g + 4 * KILN_NR + r * (KILN_NR / 2), 1);
    const float *s = (const float *)(const void *)g;
    *lo = __builtin_convertvector((w & 15) - 8, kiln_vf) * kiln_ldv(s);
    *hi = __builtin_convertvector((w >> 4) - 8, kiln_vf) * kiln_ldv(s + KILN_VL);
}
static inline __attribute__((always_inline)) void kiln_deq_q4_k(const uint8_t *restrict g, int64_t r, kiln_vf *lo, kiln_vf *hi) {
    const kiln_vi w = kiln_ld_i8(g + 8 * KILN_NR + r * (KILN_NR / 2), 1);
    const float *s = (const float *)(const void *)g, *m = s + KILN_NR;
    kiln_vf pl = kiln_ldv(s) * __builtin_convertvector(w & 15, kiln_vf);
    kiln_vf ph = kiln_ldv(s + KILN_VL) * __builtin_convertvector(w >> 4, kiln_vf);
    KILN_IN_REG(pl); KILN_IN_REG(ph);
    *lo = pl - kiln_ldv(m);
    *hi = ph - kiln_ldv(m + KILN_VL);
}

/* Value (n, k) of the weight, scalar (product columns off a panel boundary). */
static inline float kiln_qat_q8_0(const uint8_t *wp, int64_t K, int64_t n, int64_t k) {
    const uint8_t *g = wp + ((n / KILN_NR) * (K / 32) + k / 32) * KILN_GB_Q8_0;
    const int64_t c = n % KILN_NR;
    float s; memcpy(&s, g + 4 * c, 4);
    return (float)(int8_t)g[4 * KILN_NR + (k % 32) * KILN_NR + c] * s;
}
static inline uint8_t kiln_qnib(const uint8_t *q, int64_t r, int64_t c) {
    const uint8_t b = q[r * (KILN_NR / 2) + c % (KILN_NR / 2)];
    return c < KILN_NR / 2 ? (b & 15) : (b >> 4);
}
static inline float kiln_qat_q4_0(const uint8_t *wp, int64_t K, int64_t n, int64_t k) {
    const uint8_t *g = wp + ((n / KILN_NR) * (K / 32) + k / 32) * KILN_GB_Q4_0;
    const int64_t c = n % KILN_NR;
    float s; memcpy(&s, g + 4 * c, 4);
    return (float)((int)kiln_qnib(g + 4 * KILN_NR, k % 32, c) - 8) * s;
}
static inline float kiln_qat_q4_k(const uint8_t *wp, int64_t K, int64_t n, int64_t k) {
    const uint8_t *g = wp + ((n / KILN_NR) * (K / 32) + k / 32) * KILN_GB_Q4_K;
    const int64_t c = n % KILN_NR;
    float s, m; memcpy(&s, g + 4 * c, 4); memcpy(&m, g + 4 * KILN_NR + 4 * c, 4);
    float p = s * (float)kiln_qnib(g + 8 * KILN_NR, k % 32, c);
    KILN_QKEEP(p);
    return p - m;
}

/* GEMV pass (decode, R <= 4 rows): S panels of w (each a pointer to its first group), R rows
 * of x; t[r * ldt + s * NR + j]. Each panel is one stream of K/32 groups, prefetched a group
 * ahead; a row of a group is dequantized once and used by every row of x. */
#define KILN_QGEMV_PASS(NAME, GB, DEQ)                                                             \
static inline __attribute__((always_inline)) void NAME(const int R, const int S,                  \
        const float *restrict x, int64_t ldx, const uint8_t *const *w, int64_t K,                 \
        float *restrict t, int64_t ldt) {                                                          \
    kiln_vf acc[4][4][2];                                                                          \
    _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r)                                            \
    _Pragma("GCC unroll 4") for (int s = 0; s < S; ++s) acc[r][s][0] = acc[r][s][1] = (kiln_vf){0}; \
    for (int64_t g = 0; g < K / 32; ++g) {                                                         \
        for (int64_t kk = 0; kk < 32; ++kk) {                                                      \
            if (kk * 64 < (GB))                                                                    \
                _Pragma("GCC unroll 4") for (int s = 0; s < S; ++s)                                \
                    __builtin_prefetch(w[s] + (g + 2) * (GB) + kk * 64, 0, 3);                     \
            const int64_t k = g * 32 + kk;                                                         \
            kiln_vf xv[4];                                                                         \
            _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) xv[r] = kiln_splatv(x[r * ldx + k]); \
            _Pragma("GCC unroll 4") for (int s = 0; s < S; ++s) {                                  \
                kiln_vf b0, b1;                                                                    \
                DEQ(w[s] + g * (GB), kk, &b0, &b1);                                                \
                _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) {                              \
                    acc[r][s][0] = KILN_QFMAV(xv[r], b0, acc[r][s][0]);                            \
                    acc[r][s][1] = KILN_QFMAV(xv[r], b1, acc[r][s][1]);                            \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
    }                                                                                              \
    _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r)                                            \
    _Pragma("GCC unroll 4") for (int s = 0; s < S; ++s) {                                          \
        kiln_stv(t + r * ldt + s * KILN_NR, acc[r][s][0]);                                         \
        kiln_stv(t + r * ldt + s * KILN_NR + KILN_VL, acc[r][s][1]);                               \
    }                                                                                              \
}
KILN_QGEMV_PASS(kiln_qgemv_pass_q8_0, KILN_GB_Q8_0, kiln_deq_q8_0)
KILN_QGEMV_PASS(kiln_qgemv_pass_q4_0, KILN_GB_Q4_0, kiln_deq_q4_0)
KILN_QGEMV_PASS(kiln_qgemv_pass_q4_k, KILN_GB_Q4_K, kiln_deq_q4_k)

/* The product tile of a quantized packed weight, as kiln_packed_tile_* (gemm.h): the GEMV for
 * up to 4 rows; otherwise each KC x NR strip of a panel is dequantized into the worker's f32
 * strip (ctx->bbuf, as bf16 strips are widened) and the f32 micro-kernel runs on it. */
#define KILN_QPACKED_TILE(NAME, GB, DEQ, QAT, GEMV)                                                \
static void NAME(kiln_gemm_ctx *ctx, const float *restrict a, int64_t lda,                         \
                 const uint8_t *restrict wp, int64_t K, int64_t m0, int64_t tm, int64_t c0,        \
                 int64_t tn, float *restrict t, int64_t ldt) {                                     \
    const int64_t G = K / 32, PB = G * (GB);                                                       \
    if (c0 % KILN_NR != 0) { /* product columns not on a panel boundary: scalar chains */         \
        for (int64_t i = 0; i < tm; ++i)                                                           \
            for (int64_t j = 0; j < tn; ++j) {                                                     \
                float acc = 0.0f;                                                                  \
                for (int64_t k = 0; k < K; ++k) acc = fmaf(a[i * lda + k], QAT(wp, K, c0 + j, k), acc); \
                t[i * ldt + j] = acc;                                                              \
            }                                                                                      \
        return;                                                                                    \
    }                                                                                              \
    const int64_t p0 = c0 / KILN_NR, np = (tn + KILN_NR - 1) / KILN_NR;                            \
    if (tm <= 4) { /* decode: stream the panels once, rows in registers */                         \
        const int R = (int)tm;                                                                     \
        for (int64_t s = 0; s < np;) {                                                             \
            const int S = R == 1 && s + 4 <= np ? 4 : R <= 2 && s + 2 <= np ? 2 : 1;               \
            const uint8_t *w[4];                                                                   \
            for (int q = 0; q < 4; ++q) w[q] = wp + (p0 + s + (q < S ? q : 0)) * PB;               \
            if (S == 4) GEMV(1, 4, a, lda, w, K, t + s * KILN_NR, ldt);                            \
            else if (S == 2 && R == 1) GEMV(1, 2, a, lda, w, K, t + s * KILN_NR, ldt);             \
            else if (S == 2) GEMV(2, 2, a, lda, w, K, t + s * KILN_NR, ldt);                       \
            else if (R == 1) GEMV(1, 1, a, lda, w, K, t + s * KILN_NR, ldt);                       \
            else if (R == 2) GEMV(2, 1, a, lda, w, K, t + s * KILN_NR, ldt);                       \
            else if (R == 3) GEMV(3, 1, a, lda, w, K, t + s * KILN_NR, ldt);                       \
            else GEMV(4, 1, a, lda, w, K, t + s * KILN_NR, ldt);                                   \
            s += S;                                                                                \
        }                                                                                          \
        return;                                                                                    \
    }                                                                                              \
    if (ctx->st->a_src != a || ctx->st->a_m0 != m0) {                                              \
        kiln_pack_a_rows(a, lda, tm, K, ctx->abuf);                                                \
        ctx->st->a_src = a; ctx->st->a_m0 = m0;                                                    \
    }                                                                                              \
    for (int64_t k0 = 0; k0 < K; k0 += KILN_KC) {                                                  \
        const int64_t kc = kiln_min(KILN_KC, K - k0);                                              \
        for (int64_t s = 0; s < np; ++s) {                                                         \
            const uint8_t *panel = wp + (p0 + s) * PB;                                             \
            for (int64_t k = 0; k < kc; ++k) {                                                     \
                kiln_vf lo, hi;                                                                    \
                DEQ(panel + ((k0 + k) / 32) * (GB), (k0 + k) % 32, &lo, &hi);                      \
                kiln_stv(ctx->bbuf + k * KILN_NR, lo);                                             \
                kiln_stv(ctx->bbuf + k * KILN_NR + KILN_VL, hi);                                   \
            }                                                                                      \
            for (int64_t i0 = 0; i0 < tm; i0 += KILN_MR)                                           \
                kiln_ukr(kc, ctx->abuf + i0 * K + k0 * KILN_MR, ctx->bbuf, t + i0 * ldt + s * KILN_NR, ldt, k0 > 0); \
        }                                                                                          \
    }                                                                                              \
}
KILN_QPACKED_TILE(kiln_packed_tile_q8_0, KILN_GB_Q8_0, kiln_deq_q8_0, kiln_qat_q8_0, kiln_qgemv_pass_q8_0)
KILN_QPACKED_TILE(kiln_packed_tile_q4_0, KILN_GB_Q4_0, kiln_deq_q4_0, kiln_qat_q4_0, kiln_qgemv_pass_q4_0)
KILN_QPACKED_TILE(kiln_packed_tile_q4_k, KILN_GB_Q4_K, kiln_deq_q4_k, kiln_qat_q4_k, kiln_qgemv_pass_q4_k)
