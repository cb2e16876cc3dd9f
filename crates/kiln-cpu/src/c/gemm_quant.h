/* ---- GEMM and GEMV over block-quantized weight panels (Q8_0, Q4_0, Q4_K) ------------------
 *
 * y = x W^T with W a GGML-quantized weight the CPU device repacked once, when it was bound
 * (pack_quant.rs): panels of KILN_NR columns, each K/32 groups of GB bytes; a group holds
 * the columns' scales (Q8_0/Q4_0: the blocks' own f16 d, 2 bytes, so a group is exactly as
 * large as the GGUF blocks it holds; Q4_K: f32 d * sc, then f32 mins) and 32 rows of
 * quantized values (Q8_0: [32][NR] i8; Q4_0/Q4_K: [32][NR/2] bytes, column c in the low
 * nibble of byte c and column c + NR/2 in the high nibble).
 *
 * Every weight value is dequantized exactly as ggml does it (Q8_0 q * d; Q4_0 (q - 8) * d;
 * Q4_K d1 * q - m1, the product kept from contracting into an FMA), then the product chains
 * are gemm.h's: one sequential fmaf chain per product over k. So a quantized matmul gives,
 * bit for bit, what the f32 kernels give on the dequantized weight, on every path (GEMV,
 * GEMM, scalar columns), for any thread count.
 */
#define KILN_GB_Q8_0 (34 * KILN_NR)
#define KILN_GB_Q4_0 (18 * KILN_NR)
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
    const kiln_vi a = kiln_ld_i8(g + 2 * KILN_NR + r * KILN_NR, 0);
    const kiln_vi b = kiln_ld_i8(g + 2 * KILN_NR + r * KILN_NR + KILN_VL, 0);
    *lo = __builtin_convertvector(a, kiln_vf) * kiln_ldhv(g);
    *hi = __builtin_convertvector(b, kiln_vf) * kiln_ldhv(g + 2 * KILN_VL);
}
static inline __attribute__((always_inline)) void kiln_deq_q4_0(const uint8_t *restrict g, int64_t r, kiln_vf *lo, kiln_vf *hi) {
    const kiln_vi w = kiln_ld_i8(g + 2 * KILN_NR + r * (KILN_NR / 2), 1);
    *lo = __builtin_convertvector((w & 15) - 8, kiln_vf) * kiln_ldhv(g);
    *hi = __builtin_convertvector((w >> 4) - 8, kiln_vf) * kiln_ldhv(g + 2 * KILN_VL);
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
    return (float)(int8_t)g[2 * KILN_NR + (k % 32) * KILN_NR + c] * kiln_f16_at(g + 2 * c);
}
static inline uint8_t kiln_qnib(const uint8_t *q, int64_t r, int64_t c) {
    const uint8_t b = q[r * (KILN_NR / 2) + c % (KILN_NR / 2)];
    return c < KILN_NR / 2 ? (b & 15) : (b >> 4);
}
static inline float kiln_qat_q4_0(const uint8_t *wp, int64_t K, int64_t n, int64_t k) {
    const uint8_t *g = wp + ((n / KILN_NR) * (K / 32) + k / 32) * KILN_GB_Q4_0;
    const int64_t c = n % KILN_NR;
    return (float)((int)kiln_qnib(g + 2 * KILN_NR, k % 32, c) - 8) * kiln_f16_at(g + 2 * c);
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
    kiln_pack_a_once(ctx, a, lda, tm, K, m0);                                                      \
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
/* Each type whose integer kernels this ISA has (KILN_QINT8_<TYPE>, the prelude) takes the
 * integer path instead (below; Q4_K: gemm_q4k.h). */
#if !defined(KILN_QINT8_Q8_0)
KILN_QPACKED_TILE(kiln_packed_tile_q8_0, KILN_GB_Q8_0, kiln_deq_q8_0, kiln_qat_q8_0, kiln_qgemv_pass_q8_0)
#endif
#if !defined(KILN_QINT8_Q4_0)
KILN_QPACKED_TILE(kiln_packed_tile_q4_0, KILN_GB_Q4_0, kiln_deq_q4_0, kiln_qat_q4_0, kiln_qgemv_pass_q4_0)
#endif
#if !defined(KILN_QINT8_Q4_K)
KILN_QPACKED_TILE(kiln_packed_tile_q4_k, KILN_GB_Q4_K, kiln_deq_q4_k, kiln_qat_q4_k, kiln_qgemv_pass_q4_k)
#endif

/* ---- Integer path: Q8_0 and Q4_0 weights (KILN_QINT8_Q8_0, KILN_QINT8_Q4_0, the prelude) ----
 *
 * On AVX-512 with VNNI (vpdpbusd), and on AVX2 for the types whose AVX2 integer kernels exist
 * (kiln_dpbusd there is vpmaddubsw + vpmaddwd: the same exact sums, see below); the same
 * results bit for bit on both.
 *
 * As llama.cpp does on these CPUs, but with activation scales twice as fine: the activation
 * rows are quantized per 16 values to int8 with an f32 scale (ggml's quantize_row_q8_0 on
 * each half block: d = amax / 127, q = round(x / d), rounded to nearest even as its x86 code
 * does; d kept in f32, where ggml rounds it to f16; llama.cpp's q8_0 is per 32). Each 16-value
 * half of a 32-value block of a product is one exact int32 dot product (vpdpbusd: u8 x s8,
 * four products per i32 lane), and the halves are summed in f32:
 *     y[i][n] = 0;  for each block b in order:
 *         h = (float)dot_b0 * sa[i][b][0];  h = fmaf((float)dot_b1, sa[i][b][1], h);
 *         y = fmaf(h, sw[n][b], y)
 * — the same sequence on every path (GEMM micro-kernel, GEMV, scalar columns), so results do
 * not depend on the thread count and a decode row equals the same row of a prefill. Per 16
 * rather than 32: the logits' error on the GGUF fixtures drops by ~20% (rms and max,
 * tests/gguf_fidelity.rs; per 32 it was llama.cpp's own size, 0.95-1.18x of its max), for a
 * second conversion and FMA per block (the decode GEMV streams at the read either way:
 * docs/benchmarks.md).
 * vpdpbusd multiplies unsigned weights by signed activations: Q4_0's nibbles q (0..15) are
 * the unsigned operand and the dot starts at -8 * sum(a) (sum_j (q_j - 8) a_j); Q8_0's values
 * are stored offset to q + 128 (0..255) and the dot starts at -128 * sum(a) — both per row
 * and half block, with the activations' quantization, so the panel holds no per-column term.
 * Neither overflows: vpdpbusd sums its four u8 x s8 products in 32 bits without saturating
 * (|255 * 127| * 16 < 2^20), and the result is exactly sum(q * a). On AVX2, kiln_dpbusd's
 * vpmaddubsw adds two u8 x s8 products into a saturating i16: exact while the unsigned byte is
 * <= 128 (2 * 128 * 127 < 2^15), so Q4_0's nibbles take it and Q8_0's q + 128 do not.
 * Panels (pack_quant.rs, "integer layout"), per 32-value group:
 *   Q8_0: f16 d[NR] | 8 quads x [NR][4] bytes q + 128                  (34 NR bytes: GGUF's)
 *   Q4_0: f16 d[NR] | 8 quads x [NR/2][4] bytes, column c in the low nibble and column
 *         c + NR/2 in the high nibble of byte (c, j)                   (18 NR bytes: GGUF's)
 * where quad q holds values k = 4q..4q+3 of the group: one vector load (4 KILN_VL bytes) is
 * KILN_VL columns x 4 k, the layout of a vpdpbusd operand. The quantized activations of a launch's rows (the
 * worker's abuf) are strips of SR rows (KILN_QMR for the micro-kernel, tm <= 4 for the
 * GEMV), per block: i32 [8][SR] (row i's values 4q..4q+3), then for Q8_0 and Q4_0
 * (KILN_QB16 = 48 SR bytes) f32 scale[2][SR] (the halves') and i32 start[2][SR] (each half's
 * initial dot: Q4_0 -8 * sum, Q8_0 -128 * sum); for Q6_K (40 SR bytes, gemm_q6k.h) f32
 * scale[SR] and per row the sums of the block's two 16-value halves (two i16). */
#if defined(KILN_QINT8)
/* Rows of the micro-kernels' activation strips: 6 with AVX-512's 32 vector registers; AVX2 has
 * 16 (a pass's accumulators, half sums and dots are 3 QMR of them). */
#if KILN_VL == 16
#define KILN_QMR 6
#elif !defined(KILN_QMR) /* (scripts/bench-qgemv.sh EXTRA=-DKILN_QMR=n: other AVX2 strips) */
#define KILN_QMR 4
#endif
#define KILN_GBI_Q8_0 (34 * KILN_NR)
#define KILN_GBI_Q4_0 (18 * KILN_NR)
#define KILN_QA_BLOCK (40 * KILN_QMR)
#define KILN_QB16 48 /* Q8_0's and Q4_0's bytes per row and block (per-16 scales) */
#define KILN_QB32 40 /* Q4_K's, Q5_K's and Q6_K's (one scale per 32 values) */
#define KILN_QA_BLOCK16 (KILN_QB16 * KILN_QMR)
#if KILN_VL == 16
typedef int kiln_v16si __attribute__((vector_size(64)));
static inline kiln_vi kiln_dpbusd(kiln_vi acc, kiln_vi u8, kiln_vi s8) {
    return (kiln_vi)__builtin_ia32_vpdpbusd_v16si((kiln_v16si)acc, (kiln_v16si)u8, (kiln_v16si)s8);
}
static inline kiln_vi kiln_splati(int32_t x) {
    return (kiln_vi){x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x};
}
static inline kiln_vf kiln_vmax(kiln_vf a, kiln_vf b) {
    return __builtin_ia32_maxps512_mask(a, b, a, (unsigned short)-1, 4);
}
/* vcvtps2dq: round to nearest even (the MXCSR default) */
static inline kiln_vi kiln_cvtrv(kiln_vf x) {
    return (kiln_vi)__builtin_ia32_cvtps2dq512_mask(x, (kiln_v16si){0}, (unsigned short)-1, 4);
}
/* The low bytes of KILN_VL i32 lanes (values in -127..127) to q[0..VL). */
static inline void kiln_sti8(int8_t *q, kiln_vi v) {
    const kiln_v16qi b = __builtin_ia32_pmovdb512_mask((kiln_v16si)v, (kiln_v16qi){0}, (unsigned short)-1);
    memcpy(q, &b, 16);
}
#else
/* AVX2 has no vpdpbusd: vpmaddubsw multiplies the unsigned bytes by the signed ones and adds
 * adjacent pairs into i16 lanes (saturating), vpmaddwd by ones adds those pairs into i32. The
 * same sum as vpdpbusd's while no pair saturates: every unsigned byte <= 128 (2 * 128 * 127 <
 * 32767): Q4_0's, Q4_K's, Q5_K's and Q6_K's weights, Q4_K's mins, NOT Q8_0's q + 128. */
typedef char kiln_v32qi __attribute__((vector_size(32)));
typedef short kiln_v16hi __attribute__((vector_size(32)));
typedef int kiln_v8si __attribute__((vector_size(32)));
/* The two steps, apart for the AVX2 kernels that sum several quads' products in i16 first
 * (their "runs": Q4_0 here, Q4_K, Q5_K, Q6_K): vpmaddubsw, i16 lanes added, vpmaddwd. */
static inline kiln_vi kiln_maddubs(kiln_vi u8, kiln_vi s8) {
    return (kiln_vi)__builtin_ia32_pmaddubsw256((kiln_v32qi)u8, (kiln_v32qi)s8);
}
static inline kiln_vi kiln_add16(kiln_vi a, kiln_vi b) { return (kiln_vi)((kiln_v16hi)a + (kiln_v16hi)b); }
/* Each i32 lane: the product of the lane's two i16 halves of p and of s, summed. */
static inline kiln_vi kiln_madd16(kiln_vi p, kiln_vi s) {
    return (kiln_vi)__builtin_ia32_pmaddwd256((kiln_v16hi)p, (kiln_v16hi)s);
}
/* acc plus the i16 lanes of s added in pairs into i32 (vpmaddwd by ones). */
static inline kiln_vi kiln_madd1(kiln_vi acc, kiln_vi s) {
    return acc + kiln_madd16(s, (kiln_vi)(kiln_v16hi){1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1});
}
/* Product m of a quad into a row's run p, which m starts when `first`. */
#define KILN_RUN16(p, first, m) ((p) = (first) ? (m) : kiln_add16((p), (m)))
static inline kiln_vi kiln_dpbusd(kiln_vi acc, kiln_vi u8, kiln_vi s8) { return kiln_madd1(acc, kiln_maddubs(u8, s8)); }
static inline kiln_vi kiln_splati(int32_t x) { return (kiln_vi){x, x, x, x, x, x, x, x}; }
static inline kiln_vf kiln_vmax(kiln_vf a, kiln_vf b) { return __builtin_ia32_maxps256(a, b); }
/* vcvtps2dq: round to nearest even (the MXCSR default) */
static inline kiln_vi kiln_cvtrv(kiln_vf x) { return (kiln_vi)__builtin_ia32_cvtps2dq256(x); }
static inline void kiln_sti8(int8_t *q, kiln_vi v) {
    typedef int8_t kiln_v8qi __attribute__((vector_size(8)));
    const kiln_v8qi b = __builtin_convertvector(v, kiln_v8qi);
    memcpy(q, &b, 8);
}
#endif
static inline kiln_vi kiln_ldvi(const void *p) { kiln_vi v; memcpy(&v, p, sizeof v); return v; }
/* The largest lane of m in every lane (max is exact: any order gives the same). */
static inline kiln_vf kiln_vmax_lanes(kiln_vf m) {
#if KILN_VL == 16
    m = kiln_vmax(m, __builtin_shuffle(m, (kiln_vi){8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7}));
    m = kiln_vmax(m, __builtin_shuffle(m, (kiln_vi){4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11}));
    m = kiln_vmax(m, __builtin_shuffle(m, (kiln_vi){2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13}));
    m = kiln_vmax(m, __builtin_shuffle(m, (kiln_vi){1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14}));
#else
    m = kiln_vmax(m, __builtin_shuffle(m, (kiln_vi){4, 5, 6, 7, 0, 1, 2, 3}));
    m = kiln_vmax(m, __builtin_shuffle(m, (kiln_vi){2, 3, 0, 1, 6, 7, 4, 5}));
    m = kiln_vmax(m, __builtin_shuffle(m, (kiln_vi){1, 0, 3, 2, 5, 4, 7, 6}));
#endif
    return m;
}
/* The sum of an i32 vector's lanes (integers: any order gives the same). */
static inline int32_t kiln_hsumi(kiln_vi v) {
#if KILN_VL == 16
    v += __builtin_shuffle(v, (kiln_vi){8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7});
    v += __builtin_shuffle(v, (kiln_vi){4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11});
    v += __builtin_shuffle(v, (kiln_vi){2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13});
    v += __builtin_shuffle(v, (kiln_vi){1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14});
#else
    v += __builtin_shuffle(v, (kiln_vi){4, 5, 6, 7, 0, 1, 2, 3});
    v += __builtin_shuffle(v, (kiln_vi){2, 3, 0, 1, 6, 7, 4, 5});
    v += __builtin_shuffle(v, (kiln_vi){1, 0, 3, 2, 5, 4, 7, 6});
#endif
    return v[0];
}

/* One 32-value block r of activations to int8 (ggml's quantize_row_q8_0: d = amax / 127,
 * q = round-half-even(x * (1 / d)), d kept in f32): q, the sums of its two 16-value halves,
 * and d returned. */
static inline float kiln_quantize_block(const float *restrict r, int8_t q[32], int32_t *sum0, int32_t *sum1) {
#if KILN_VL == 16
    const kiln_vf x0 = kiln_ldv(r), x1 = kiln_ldv(r + 16);
    const kiln_vu abs_mask = (kiln_vu){0} + 0x7fffffffu;
    kiln_vf m = kiln_vmax((kiln_vf)((kiln_vu)x0 & abs_mask), (kiln_vf)((kiln_vu)x1 & abs_mask));
    /* the lanes' maximum by halving (max is exact: any order gives the same) */
    m = kiln_vmax(m, __builtin_shuffle(m, (kiln_vi){8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7}));
    m = kiln_vmax(m, __builtin_shuffle(m, (kiln_vi){4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11}));
    m = kiln_vmax(m, __builtin_shuffle(m, (kiln_vi){2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13}));
    m = kiln_vmax(m, __builtin_shuffle(m, (kiln_vi){1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14}));
    const float d = m[0] / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const kiln_vf sid = kiln_splatv(id);
    /* vcvtps2dq: round to nearest even (the MXCSR default) */
    const kiln_vi q0 = (kiln_vi)__builtin_ia32_cvtps2dq512_mask(x0 * sid, (kiln_v16si){0}, (unsigned short)-1, 4);
    const kiln_vi q1 = (kiln_vi)__builtin_ia32_cvtps2dq512_mask(x1 * sid, (kiln_v16si){0}, (unsigned short)-1, 4);
    const kiln_v16qi b0 = __builtin_ia32_pmovdb512_mask((kiln_v16si)q0, (kiln_v16qi){0}, (unsigned short)-1);
    const kiln_v16qi b1 = __builtin_ia32_pmovdb512_mask((kiln_v16si)q1, (kiln_v16qi){0}, (unsigned short)-1);
    memcpy(q, &b0, 16); memcpy(q + 16, &b1, 16);
    /* the sums of the two 16-value halves side by side: lanes 0-7 of the first step hold
     * half 0's partial sums, 8-15 half 1's */
    kiln_vi qs = __builtin_shuffle(q0, q1, (kiln_vi){0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23})
               + __builtin_shuffle(q0, q1, (kiln_vi){8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31});
    qs += __builtin_shuffle(qs, (kiln_vi){4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11});
    qs += __builtin_shuffle(qs, (kiln_vi){2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13});
    qs += __builtin_shuffle(qs, (kiln_vi){1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14});
    *sum0 = qs[0];
    *sum1 = qs[8];
    return d;
#else
    kiln_vf x[4];
    const kiln_vu abs_mask = (kiln_vu){0} + 0x7fffffffu;
    for (int v = 0; v < 4; ++v) x[v] = kiln_ldv(r + 8 * v);
    kiln_vf m = kiln_vmax(kiln_vmax((kiln_vf)((kiln_vu)x[0] & abs_mask), (kiln_vf)((kiln_vu)x[1] & abs_mask)),
                          kiln_vmax((kiln_vf)((kiln_vu)x[2] & abs_mask), (kiln_vf)((kiln_vu)x[3] & abs_mask)));
    m = kiln_vmax_lanes(m);
    const float d = m[0] / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const kiln_vf sid = kiln_splatv(id);
    kiln_vi qv[4];
    for (int v = 0; v < 4; ++v) { qv[v] = kiln_cvtrv(x[v] * sid); kiln_sti8(q + 8 * v, qv[v]); }
    *sum0 = kiln_hsumi(qv[0] + qv[1]);
    *sum1 = kiln_hsumi(qv[2] + qv[3]);
    return d;
#endif
}

/* 16 activations r[0..15] to int8 as kiln_quantize_block's halves (d = amax / 127 over the
 * 16): q, their sum, and d returned. */
static inline float kiln_quantize_half(const float *restrict r, int8_t q[16], int32_t *sum) {
#if KILN_VL == 16
    const kiln_vf x = kiln_ldv(r);
    kiln_vf m = (kiln_vf)((kiln_vu)x & ((kiln_vu){0} + 0x7fffffffu));
    m = kiln_vmax(m, __builtin_shuffle(m, (kiln_vi){8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7}));
    m = kiln_vmax(m, __builtin_shuffle(m, (kiln_vi){4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11}));
    m = kiln_vmax(m, __builtin_shuffle(m, (kiln_vi){2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13}));
    m = kiln_vmax(m, __builtin_shuffle(m, (kiln_vi){1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14}));
    const float d = m[0] / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    /* vcvtps2dq: round to nearest even (the MXCSR default) */
    const kiln_vi qi = (kiln_vi)__builtin_ia32_cvtps2dq512_mask(x * kiln_splatv(id), (kiln_v16si){0}, (unsigned short)-1, 4);
    const kiln_v16qi qb = __builtin_ia32_pmovdb512_mask((kiln_v16si)qi, (kiln_v16qi){0}, (unsigned short)-1);
    memcpy(q, &qb, 16);
    kiln_vi qs = qi + __builtin_shuffle(qi, (kiln_vi){8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7});
    qs += __builtin_shuffle(qs, (kiln_vi){4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11});
    qs += __builtin_shuffle(qs, (kiln_vi){2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13});
    qs += __builtin_shuffle(qs, (kiln_vi){1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14});
    *sum = qs[0];
    return d;
#else
    const kiln_vu abs_mask = (kiln_vu){0} + 0x7fffffffu;
    const kiln_vf x0 = kiln_ldv(r), x1 = kiln_ldv(r + 8);
    const kiln_vf m = kiln_vmax_lanes(kiln_vmax((kiln_vf)((kiln_vu)x0 & abs_mask), (kiln_vf)((kiln_vu)x1 & abs_mask)));
    const float d = m[0] / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const kiln_vf sid = kiln_splatv(id);
    const kiln_vi q0 = kiln_cvtrv(x0 * sid), q1 = kiln_cvtrv(x1 * sid);
    kiln_sti8(q, q0); kiln_sti8(q + 8, q1);
    *sum = kiln_hsumi(q0 + q1);
    return d;
#endif
}

/* Rows [0, tm) of a into quantized strips of sr rows at qa (rows past tm up to the strip's
 * end: zeros), for weights of `kind`: 0 Q8_0 and 1 Q4_0 per 16 values (blocks of KILN_QB16
 * bytes per row: quads, f32 d of each half, each half's bias), 3 Q6_K per 32 (40 bytes:
 * quads, f32 d, the halves' sums as two i16; gemm_q6k.h); Q4_K's are its own (gemm_q4k.h).
 * The micro-kernel reads strips of KILN_QMR rows; the GEMV (tm <= 4) one strip of tm rows,
 * so a decode row's block is contiguous (a 6-row strip spreads it over several lines). */
static __attribute__((unused)) void kiln_quantize_a_rows(const float *restrict a, int64_t lda, int64_t tm, int64_t K,
                                 int kind, int64_t sr, uint8_t *restrict qa) {
    const int64_t G = K / 32, rows = (tm + sr - 1) / sr * sr, qb = (kind == 3 ? 40 : KILN_QB16) * sr;
    for (int64_t i = 0; i < rows; ++i) {
        uint8_t *strip = qa + (i / sr) * G * qb;
        const int64_t s = i % sr;
        for (int64_t g = 0; g < G; ++g) {
            uint8_t *blk = strip + g * qb;
            const float *r = a + i * lda + g * 32;
            int8_t q[32] = {0};
            int32_t sum[2] = {0, 0};
            if (kind == 3) { /* Q6_K: the halves' sums (|s| <= 16 * 128) as two i16 */
                const float d = i < tm ? kiln_quantize_block(r, q, &sum[0], &sum[1]) : 0.0f;
                const int32_t word = (int32_t)((uint32_t)(uint16_t)sum[0] | (uint32_t)sum[1] << 16);
                memcpy(blk + 32 * sr + 4 * s, &d, 4);
                memcpy(blk + 36 * sr + 4 * s, &word, 4);
            } else {
                float d[2] = {0.0f, 0.0f};
                if (i < tm)
                    for (int hf = 0; hf < 2; ++hf) d[hf] = kiln_quantize_half(r + 16 * hf, q + 16 * hf, &sum[hf]);
                const int32_t bias[2] = {(kind == 0 ? -128 : -8) * sum[0], (kind == 0 ? -128 : -8) * sum[1]};
                for (int hf = 0; hf < 2; ++hf) {
                    memcpy(blk + (32 + 4 * hf) * sr + 4 * s, &d[hf], 4);
                    memcpy(blk + (40 + 4 * hf) * sr + 4 * s, &bias[hf], 4);
                }
            }
            for (int qd = 0; qd < 8; ++qd) memcpy(blk + (qd * sr + s) * 4, q + 4 * qd, 4);
        }
    }
}

/* Quad qd of a group's weights: columns 0..15 into *w0, 16..31 into *w1, as vpdpbusd operands. */
static inline __attribute__((always_inline)) void kiln_qiw_q8_0(const uint8_t *restrict g, int qd, kiln_vi *w0, kiln_vi *w1) {
    *w0 = kiln_ldvi(g + 2 * KILN_NR + qd * 4 * KILN_NR);
    *w1 = kiln_ldvi(g + 2 * KILN_NR + qd * 4 * KILN_NR + 4 * KILN_VL);
}
/* The nibble plane `nib` (Q4_0's and Q4_K's): quad qd, both column halves. */
static inline __attribute__((always_inline)) void kiln_qiw_nib(const uint8_t *restrict nib, int qd, kiln_vi *w0, kiln_vi *w1) {
    kiln_vu v = (kiln_vu)kiln_ldvi(nib + qd * 2 * KILN_NR);
    KILN_IN_REG(v); /* one load for both nibbles (GCC would fold it into the and and the shift) */
    *w0 = (kiln_vi)(v & 0x0F0F0F0Fu);
    *w1 = (kiln_vi)((v >> 4) & 0x0F0F0F0Fu);
}
static inline __attribute__((always_inline)) void kiln_qiw_q4_0(const uint8_t *restrict g, int qd, kiln_vi *w0, kiln_vi *w1) {
    kiln_qiw_nib(g + 2 * KILN_NR, qd, w0, w1);
}
/* The f32 scales of a group's columns 0..VL-1 (*s0) and VL..NR-1 (*s1): Q8_0's and Q4_0's
 * (kind 0, 1) widened from the f16 d. */
static inline __attribute__((always_inline)) void kiln_qi_scales(const uint8_t *restrict g, kiln_vf *s0, kiln_vf *s1) {
    *s0 = kiln_ldhv(g); *s1 = kiln_ldhv(g + 2 * KILN_VL);
}
/* One quad of row x (4 activation bytes, broadcast) into a row's two int accumulators. */
#define KILN_QI_DOT(ia, x, w0, w1)                                                                 \
    do { ia[0] = kiln_dpbusd(ia[0], w0, x); ia[1] = kiln_dpbusd(ia[1], w1, x); } while (0)

/* Column half ch of a block for the R rows of a strip of R (aq: its quads, then the halves'
 * starts; sa: the halves' scales): each 16-value half's dot (quads 0..3, 4..7; started at its
 * bias) into hs[r] = D0 * sa0, then + D1 * sa1 (the micro-kernel's and the Q8_0 GEMV's). */
#define KILN_QI_HALVES(R, ch, wg, aq, sa, hs, LOADW)                                               \
    _Pragma("GCC unroll 2") for (int hf = 0; hf < 2; ++hf) {                                       \
        kiln_vi ia_[8];                                                                            \
        _Pragma("GCC unroll 6") for (int i = 0; i < (R); ++i)                                      \
            ia_[i] = kiln_splati((aq)[(10 + hf) * (R) + i]);                                       \
        _Pragma("GCC unroll 4") for (int qd = 4 * hf; qd < 4 * hf + 4; ++qd) {                     \
            kiln_vi w0_, w1_;                                                                      \
            LOADW(wg, qd, &w0_, &w1_);                                                             \
            kiln_vi w_ = (ch) ? w1_ : w0_;                                                         \
            KILN_IN_REG(w_);                                                                       \
            _Pragma("GCC unroll 6") for (int i = 0; i < (R); ++i)                                  \
                ia_[i] = kiln_dpbusd(ia_[i], w_, kiln_splati((aq)[qd * (R) + i]));                 \
        }                                                                                          \
        _Pragma("GCC unroll 6") for (int i = 0; i < (R); ++i) {                                    \
            const kiln_vf sc_ = kiln_splatv((sa)[hf * (R) + i]);                                   \
            (hs)[i] = hf == 0 ? __builtin_convertvector(ia_[i], kiln_vf) * sc_                     \
                              : KILN_FMAV(__builtin_convertvector(ia_[i], kiln_vf), sc_, (hs)[i]); \
        }                                                                                          \
    }

/* Micro-kernel: rows of one activation strip (QMR) x one panel (NR columns), blocks 0..nb-1
 * from qa and wg (both at their first block), into c (row stride ldc), (+)= as load_c says.
 * Per block and row, each 16-value half's dot (quads 0..3, 4..7; started at its bias), the
 * halves' scaled sum hs and one FMA with the weight's d. The panel's two 16-column halves are
 * separate passes over the blocks: one pass's accumulators, hs and dots are 18 registers (both
 * at once, 36, spilled: 0.8 of this kernel's speed). */
#define KILN_QI_UKR(NAME, GB, LOADW)                                                               \
static inline __attribute__((always_inline)) void NAME(int64_t nb, const uint8_t *restrict qa0,    \
        const uint8_t *restrict wg0, float *restrict c, int64_t ldc, int load_c) {                 \
    _Pragma("GCC unroll 2") for (int ch = 0; ch < 2; ++ch) {                                       \
        kiln_vf acc[KILN_QMR];                                                                     \
        _Pragma("GCC unroll 6") for (int i = 0; i < KILN_QMR; ++i)                                 \
            acc[i] = load_c ? kiln_ldv(c + i * ldc + ch * KILN_VL) : (kiln_vf){0};                 \
        const uint8_t *qa = qa0, *wg = wg0;                                                        \
        for (int64_t b = 0; b < nb; ++b, qa += KILN_QA_BLOCK16, wg += (GB)) {                      \
            const int32_t *aq = (const int32_t *)(const void *)qa;                                 \
            const float *sa = (const float *)(const void *)(qa + 32 * KILN_QMR);                   \
            kiln_vf hs[KILN_QMR];                                                                  \
            KILN_QI_HALVES(KILN_QMR, ch, wg, aq, sa, hs, LOADW);                                   \
            kiln_vf s0, s1;                                                                        \
            kiln_qi_scales(wg, &s0, &s1);                                                          \
            _Pragma("GCC unroll 6") for (int i = 0; i < KILN_QMR; ++i)                             \
                acc[i] = KILN_FMAV(hs[i], ch ? s1 : s0, acc[i]);                                   \
        }                                                                                          \
        _Pragma("GCC unroll 6") for (int i = 0; i < KILN_QMR; ++i) kiln_stv(c + i * ldc + ch * KILN_VL, acc[i]); \
    }                                                                                              \
}
KILN_QI_UKR(kiln_qi_ukr_q8_0, KILN_GBI_Q8_0, kiln_qiw_q8_0)
KILN_QI_UKR(kiln_qi_ukr_q4_0, KILN_GBI_Q4_0, kiln_qiw_q4_0)

/* GEMV pass (decode, R <= 4 rows, quantized as one strip of R rows): one panel w (at its
 * first group) into t[r * ldt + j]. One panel at a time, so the weights are ONE sequential
 * stream (the hardware prefetcher follows it; two panels side by side, or software prefetches
 * on top, halved the one-row Q4_0 stream on Zen 4; from 3 rows on, with more work per byte,
 * prefetches 4 groups ahead pay again). Each 16-value half's dot is one or two integer chains
 * (quads 4 hf + {0, 2} and 4 hf + {1, 3}, added at the end: integers, so the dot is the same)
 * to shorten the vpdpbusd latency chain; the f32 sum over blocks and halves is the
 * micro-kernel's, in the same order. */
#define KILN_QI_GEMV(NAME, GB, KIND, LOADW)                                                        \
static inline __attribute__((always_inline)) void NAME(const int R, const uint8_t *restrict qa,   \
        const uint8_t *restrict w, int64_t G, float *restrict t, int64_t ldt) {                    \
    /* integer chains per half: two for Q4_0's single row; one for Q8_0's, whose weights      \
     * (unsigned, so no memory operand of vpdpbusd) take a load each: fewer instructions per   \
     * line keep more of the stream in flight (0.86-0.93 of the read with 4, 0.95-1.0 with 1) */ \
    const int CH = R == 1 && (KIND) == 1 ? 2 : 1;                                                  \
    kiln_vf acc[4][2];                                                                             \
    _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = (kiln_vf){0};      \
    for (int64_t g = 0; g < G; ++g) {                                                              \
        const uint8_t *blk = qa + g * KILN_QB16 * R, *wg = w + g * (GB);                           \
        if (R >= 3) /* 24-byte Q4_K groups, 4 rows: 30-32 GB/s without, 44-46 with */            \
            _Pragma("GCC unroll 20") for (int l = 0; l < (GB) / 64; ++l)                           \
                __builtin_prefetch(wg + 4 * (GB) + 64 * l, 0, 3);                                  \
        const int32_t *aq = (const int32_t *)(const void *)blk;                                    \
        const float *sa = (const float *)(const void *)(blk + 32 * R);                             \
        /* the group's scales loaded first, in register: the group's lines are then asked for   \
         * in address order (loaded where used, at the group's end, the former 24-byte Q4_K     \
         * groups streamed at 0.66-0.74 of the read in scripts/bench-qgemv.sh, 0.87-1.03 so) */ \
        kiln_vf s0, s1;                                                                            \
        kiln_qi_scales(wg, &s0, &s1);                                                              \
        KILN_IN_REG(s0); KILN_IN_REG(s1);                                                          \
        if ((KIND) == 0 && R >= 3) { /* Q8_0: as the micro-kernel, column-half passes (half the \
            * live registers; 4 rows: 0.62-0.70 of the read, one pass 0.54-0.63; Q4_0 loses here, \
            * its nibbles loaded and split twice: 0.45-0.54, one pass 0.63-0.78) */               \
            _Pragma("GCC unroll 2") for (int ch = 0; ch < 2; ++ch) {                               \
                kiln_vf hs[4];                                                                     \
                KILN_QI_HALVES(R, ch, wg, aq, sa, hs, LOADW);                                      \
                _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r)                                \
                    acc[r][ch] = KILN_FMAV(hs[r], ch ? s1 : s0, acc[r][ch]);                       \
            }                                                                                      \
            continue;                                                                              \
        }                                                                                          \
        /* the dots' chains: half 0 in ia (and ib), half 1 in ic (and id), each started at its \
         * bias */                                                                                 \
        kiln_vi ia[4][2], ib[4][2], ic[4][2], id[4][2];                                            \
        _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) {                                      \
            ia[r][0] = ia[r][1] = kiln_splati(aq[10 * R + r]);                                     \
            ic[r][0] = ic[r][1] = kiln_splati(aq[11 * R + r]);                                     \
            ib[r][0] = ib[r][1] = id[r][0] = id[r][1] = (kiln_vi){0};                              \
        }                                                                                          \
        _Pragma("GCC unroll 8") for (int qd = 0; qd < 8; ++qd) {                                   \
            kiln_vi w0, w1;                                                                        \
            LOADW(wg, qd, &w0, &w1);                                                               \
            _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) {                                  \
                const kiln_vi x = kiln_splati(aq[qd * R + r]);                                    \
                const int second = CH == 2 && qd % 2 == 1;                                         \
                if (qd < 4 && !second) KILN_QI_DOT(ia[r], x, w0, w1);                              \
                else if (qd < 4) KILN_QI_DOT(ib[r], x, w0, w1);                                    \
                else if (!second) KILN_QI_DOT(ic[r], x, w0, w1);                                   \
                else KILN_QI_DOT(id[r], x, w0, w1);                                                \
            }                                                                                      \
        }                                                                                          \
        _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) {                                      \
            const kiln_vf sc0 = kiln_splatv(sa[r]), sc1 = kiln_splatv(sa[R + r]);                  \
            const kiln_vf h0 = KILN_FMAV(__builtin_convertvector(ic[r][0] + id[r][0], kiln_vf), sc1, \
                                         __builtin_convertvector(ia[r][0] + ib[r][0], kiln_vf) * sc0); \
            const kiln_vf h1 = KILN_FMAV(__builtin_convertvector(ic[r][1] + id[r][1], kiln_vf), sc1, \
                                         __builtin_convertvector(ia[r][1] + ib[r][1], kiln_vf) * sc0); \
            acc[r][0] = KILN_FMAV(h0, s0, acc[r][0]);                                              \
            acc[r][1] = KILN_FMAV(h1, s1, acc[r][1]);                                              \
        }                                                                                          \
    }                                                                                              \
    _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) {                                          \
        kiln_stv(t + r * ldt, acc[r][0]);                                                          \
        kiln_stv(t + r * ldt + KILN_VL, acc[r][1]);                                                \
    }                                                                                              \
}
KILN_QI_GEMV(kiln_qi_gemv_q8_0, KILN_GBI_Q8_0, 0, kiln_qiw_q8_0)
KILN_QI_GEMV(kiln_qi_gemv_q4_0, KILN_GBI_Q4_0, 1, kiln_qiw_q4_0)

#if KILN_VL == 8
/* AVX2's Q4_0 kernels: as KILN_QI_UKR and KILN_QI_GEMV (the same integer dots, the same f32
 * sequence, so the same bits), but each 16-value half's four quads are summed in i16 lanes
 * before one vpmaddwd: kiln_maddubs gives two nibble x activation products per i16 lane
 * (|.| <= 2 * 15 * 127), four quads' of them add up to at most 15240 < 2^15, exact. Per quad
 * and row a vpmaddubsw and a vpaddw, where kiln_dpbusd is three instructions. */
static inline __attribute__((always_inline)) void kiln_qi_ukr16_q4_0(int64_t nb, const uint8_t *restrict qa0,
        const uint8_t *restrict wg0, float *restrict c, int64_t ldc, int load_c) {
    _Pragma("GCC unroll 2") for (int ch = 0; ch < 2; ++ch) {
        kiln_vf acc[KILN_QMR];
        _Pragma("GCC unroll 6") for (int i = 0; i < KILN_QMR; ++i)
            acc[i] = load_c ? kiln_ldv(c + i * ldc + ch * KILN_VL) : (kiln_vf){0};
        const uint8_t *qa = qa0, *wg = wg0;
        for (int64_t b = 0; b < nb; ++b, qa += KILN_QA_BLOCK16, wg += KILN_GBI_Q4_0) {
            const int32_t *aq = (const int32_t *)(const void *)qa;
            const float *sa = (const float *)(const void *)(qa + 32 * KILN_QMR);
            kiln_vf hs[KILN_QMR]; /* D0 * sa0, then + D1 * sa1 */
            _Pragma("GCC unroll 2") for (int hf = 0; hf < 2; ++hf) {
                kiln_vi p[KILN_QMR]; /* the half's products, in i16 */
                _Pragma("GCC unroll 4") for (int qd = 4 * hf; qd < 4 * hf + 4; ++qd) {
                    kiln_vi w0, w1;
                    kiln_qiw_q4_0(wg, qd, &w0, &w1);
                    kiln_vi w = ch ? w1 : w0;
                    KILN_IN_REG(w);
                    _Pragma("GCC unroll 6") for (int i = 0; i < KILN_QMR; ++i) {
                        const kiln_vi m = kiln_maddubs(w, kiln_splati(aq[qd * KILN_QMR + i]));
                        KILN_RUN16(p[i], qd == 4 * hf, m);
                    }
                }
                _Pragma("GCC unroll 6") for (int i = 0; i < KILN_QMR; ++i) {
                    const kiln_vi ia = kiln_madd1(kiln_splati(aq[(10 + hf) * KILN_QMR + i]), p[i]);
                    const kiln_vf sc = kiln_splatv(sa[hf * KILN_QMR + i]);
                    hs[i] = hf == 0 ? __builtin_convertvector(ia, kiln_vf) * sc
                                    : KILN_FMAV(__builtin_convertvector(ia, kiln_vf), sc, hs[i]);
                }
            }
            kiln_vf s0, s1;
            kiln_qi_scales(wg, &s0, &s1);
            _Pragma("GCC unroll 6") for (int i = 0; i < KILN_QMR; ++i)
                acc[i] = KILN_FMAV(hs[i], ch ? s1 : s0, acc[i]);
        }
        _Pragma("GCC unroll 6") for (int i = 0; i < KILN_QMR; ++i) kiln_stv(c + i * ldc + ch * KILN_VL, acc[i]);
    }
}
static inline __attribute__((always_inline)) void kiln_qi_gemv16_q4_0(const int R, const uint8_t *restrict qa,
        const uint8_t *restrict w, int64_t G, float *restrict t, int64_t ldt) {
    kiln_vf acc[4][2];
    _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = (kiln_vf){0};
    for (int64_t g = 0; g < G; ++g) {
        const uint8_t *blk = qa + g * KILN_QB16 * R, *wg = w + g * KILN_GBI_Q4_0;
        if (R >= 3)
            _Pragma("GCC unroll 20") for (int l = 0; l < KILN_GBI_Q4_0 / 64; ++l)
                __builtin_prefetch(wg + 4 * KILN_GBI_Q4_0 + 64 * l, 0, 3);
        const int32_t *aq = (const int32_t *)(const void *)blk;
        const float *sa = (const float *)(const void *)(blk + 32 * R);
        kiln_vf s0, s1;
        kiln_qi_scales(wg, &s0, &s1);
        KILN_IN_REG(s0); KILN_IN_REG(s1);
        kiln_vi ia[4][2][2]; /* [row][half][column half] */
        _Pragma("GCC unroll 2") for (int hf = 0; hf < 2; ++hf) {
            kiln_vi p[4][2];
            _Pragma("GCC unroll 4") for (int qd = 4 * hf; qd < 4 * hf + 4; ++qd) {
                kiln_vi w0, w1;
                kiln_qiw_q4_0(wg, qd, &w0, &w1);
                _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) {
                    const kiln_vi x = kiln_splati(aq[qd * R + r]);
                    const kiln_vi m0 = kiln_maddubs(w0, x), m1 = kiln_maddubs(w1, x);
                    KILN_RUN16(p[r][0], qd == 4 * hf, m0);
                    KILN_RUN16(p[r][1], qd == 4 * hf, m1);
                }
            }
            _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) {
                const kiln_vi bias = kiln_splati(aq[(10 + hf) * R + r]);
                ia[r][hf][0] = kiln_madd1(bias, p[r][0]);
                ia[r][hf][1] = kiln_madd1(bias, p[r][1]);
            }
        }
        _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) {
            const kiln_vf sc0 = kiln_splatv(sa[r]), sc1 = kiln_splatv(sa[R + r]);
            const kiln_vf h0 = KILN_FMAV(__builtin_convertvector(ia[r][1][0], kiln_vf), sc1,
                                         __builtin_convertvector(ia[r][0][0], kiln_vf) * sc0);
            const kiln_vf h1 = KILN_FMAV(__builtin_convertvector(ia[r][1][1], kiln_vf), sc1,
                                         __builtin_convertvector(ia[r][0][1], kiln_vf) * sc0);
            acc[r][0] = KILN_FMAV(h0, s0, acc[r][0]);
            acc[r][1] = KILN_FMAV(h1, s1, acc[r][1]);
        }
    }
    _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) {
        kiln_stv(t + r * ldt, acc[r][0]);
        kiln_stv(t + r * ldt + KILN_VL, acc[r][1]);
    }
}
#endif

/* Weight value (n, k) and activation (i, k) as integers, for the scalar columns. */
static inline int32_t kiln_qiw_at_q8_0(const uint8_t *g, int64_t c, int64_t kk) {
    return (int32_t)g[2 * KILN_NR + (kk / 4) * 4 * KILN_NR + c * 4 + kk % 4] - 128;
}
/* The nibble (0..15) of column c, value kk of a nibble plane (Q4_0's, Q4_K's). */
static inline int32_t kiln_qiw_at_nib(const uint8_t *nib, int64_t c, int64_t kk) {
    const uint8_t b = nib[(kk / 4) * 2 * KILN_NR + (c % (KILN_NR / 2)) * 4 + kk % 4];
    return c < KILN_NR / 2 ? (b & 15) : (b >> 4);
}
static inline int32_t kiln_qiw_at_q4_0(const uint8_t *g, int64_t c, int64_t kk) {
    return kiln_qiw_at_nib(g + 2 * KILN_NR, c, kk) - 8;
}

/* The product tile of every integer-path type (as kiln_packed_tile_*): the rows quantized once
 * per launch and worker, then the GEMV (up to 4 rows), the micro-kernel, or scalar chains off a
 * panel boundary. The panel is in weight blocks of BV values (32, or a K kind's 256-value
 * super-block) of WB bytes; a strip's activations take QBYTES per row and 32 values. Each type
 * brings its block arithmetic:
 *   QUANTIZE(a, lda, tm, K, sr, qa)     rows [0, tm) into strips of sr rows at qa
 *   COLUMN(wb, c, ab, sr, s, acc)       column c of weight block wb against row s of a strip of
 *                                       sr rows (its block at ab): acc plus the block's FMAs,
 *                                       in the kernels' order
 *   GEMV(R, qa, w, G, t, ldt)           R <= 4 rows of one strip of R rows x one panel
 *   UKR(nb, qa, w, c, ldc, load_c)      rows of one strip of QMR x one panel, nb weight blocks
 *   PANEL(ctx, w, nb)                   the panel's nb weight blocks from w as UKR reads them,
 *                                       once per k block and panel for all its strips: w itself
 *                                       (KILN_QI_PANEL_AS_IS), or a copy the type unpacks into
 *                                       the worker's ctx->bbuf (AVX2 Q5_K, gemm_q4k.h)
 * (Q4_K and Q5_K: gemm_q4k.h, gemm_q5k.h; Q6_K: gemm_q6k.h.) */
#define KILN_QI_PANEL_AS_IS(ctx, w, nb) (w)
#define KILN_QI_TILE(NAME, BV, WB, QBYTES, QUANTIZE, COLUMN, GEMV, UKR, PANEL)                     \
static void NAME(kiln_gemm_ctx *ctx, const float *restrict a, int64_t lda,                         \
                 const uint8_t *restrict wp, int64_t K, int64_t m0, int64_t tm, int64_t c0,        \
                 int64_t tn, float *restrict t, int64_t ldt) {                                     \
    /* rows per activation strip: the GEMV's tm, the micro-kernel's QMR */                        \
    const int64_t SR = tm <= 4 ? tm : KILN_QMR, QB = (QBYTES) * SR;                                \
    const int64_t G = K / 32, NB = K / (BV), PB = NB * (WB), SB = G * QB;                          \
    const int64_t AB = (BV) / 32 * (QBYTES); /* a weight block's activation bytes per row */       \
    uint8_t *qa = (uint8_t *)ctx->abuf;                                                            \
    if (ctx->st->a_src != a || ctx->st->a_m0 != m0) {                                              \
        QUANTIZE(a, lda, tm, K, SR, qa);                                                           \
        ctx->st->a_src = a; ctx->st->a_m0 = m0;                                                    \
    }                                                                                              \
    if (c0 % KILN_NR != 0) {                                                                       \
        for (int64_t i = 0; i < tm; ++i)                                                           \
            for (int64_t j = 0; j < tn; ++j) {                                                     \
                const int64_t n = c0 + j;                                                          \
                const uint8_t *pw = wp + (n / KILN_NR) * PB, *pa = qa + (i / SR) * SB;             \
                float acc = 0.0f;                                                                  \
                for (int64_t b = 0; b < NB; ++b)                                                   \
                    acc = COLUMN(pw + b * (WB), n % KILN_NR, pa + b * AB * SR, SR, i % SR, acc);   \
                t[i * ldt + j] = acc;                                                              \
            }                                                                                      \
        return;                                                                                    \
    }                                                                                              \
    const int64_t p0 = c0 / KILN_NR, np = (tn + KILN_NR - 1) / KILN_NR;                            \
    if (tm <= 4) {                                                                                 \
        for (int64_t s = 0; s < np; ++s) {                                                         \
            const uint8_t *w = wp + (p0 + s) * PB;                                                 \
            float *ts = t + s * KILN_NR;                                                           \
            if (tm == 1) GEMV(1, qa, w, G, ts, ldt);                                               \
            else if (tm == 2) GEMV(2, qa, w, G, ts, ldt);                                          \
            else if (tm == 3) GEMV(3, qa, w, G, ts, ldt);                                          \
            else GEMV(4, qa, w, G, ts, ldt);                                                       \
        }                                                                                          \
        return;                                                                                    \
    }                                                                                              \
    const int64_t BC = KILN_KC / (BV); /* weight blocks per k block */                             \
    for (int64_t b0 = 0; b0 < NB; b0 += BC) {                                                      \
        const int64_t nb = kiln_min(BC, NB - b0);                                                  \
        for (int64_t s = 0; s < np; ++s) {                                                         \
            const uint8_t *panel = PANEL(ctx, wp + (p0 + s) * PB + b0 * (WB), nb);                 \
            for (int64_t i0 = 0; i0 < tm; i0 += KILN_QMR)                                          \
                UKR(nb, qa + (i0 / KILN_QMR) * SB + b0 * AB * KILN_QMR, panel,                     \
                    t + i0 * ldt + s * KILN_NR, ldt, b0 > 0);                                      \
        }                                                                                          \
    }                                                                                              \
}

/* Q8_0's and Q4_0's column of a block (kind 0, 1: the weight value as kiln_qiw_at_*'s
 * integer): two half dots, D0 * sa0 rounded, then + D1 * sa1, then times the column's d. */
static inline float kiln_qi_column16(const int kind, const uint8_t *g, int64_t c, const uint8_t *blk,
                                     int64_t sr, int64_t s, float acc) {
    float h = 0.0f; /* D0 * sa0, then + D1 * sa1 */
    for (int64_t hf = 0; hf < 2; ++hf) {
        int32_t dot = 0;
        for (int64_t kk = 16 * hf; kk < 16 * hf + 16; ++kk) {
            const uint8_t av = blk[((kk / 4) * sr + s) * 4 + kk % 4];
            dot += (int32_t)(int8_t)av * (kind == 0 ? kiln_qiw_at_q8_0(g, c, kk) : kiln_qiw_at_q4_0(g, c, kk));
        }
        float sa;
        memcpy(&sa, blk + (32 + 4 * hf) * sr + 4 * s, 4);
        if (hf == 0) { h = (float)dot * sa; KILN_QKEEP(h); }
        else h = fmaf((float)dot, sa, h);
    }
    return fmaf(h, kiln_f16_at(g + 2 * c), acc);
}
#define kiln_column_q8_0(...) kiln_qi_column16(0, __VA_ARGS__)
#define kiln_column_q4_0(...) kiln_qi_column16(1, __VA_ARGS__)
#define kiln_quantize_a_q8_0(a, lda, tm, K, sr, qa) kiln_quantize_a_rows(a, lda, tm, K, 0, sr, qa)
#define kiln_quantize_a_q4_0(a, lda, tm, K, sr, qa) kiln_quantize_a_rows(a, lda, tm, K, 1, sr, qa)
#if defined(KILN_QINT8_Q8_0)
KILN_QI_TILE(kiln_packed_tile_q8_0, 32, KILN_GBI_Q8_0, KILN_QB16, kiln_quantize_a_q8_0, kiln_column_q8_0,
             kiln_qi_gemv_q8_0, kiln_qi_ukr_q8_0, KILN_QI_PANEL_AS_IS)
#endif
#if defined(KILN_QINT8_Q4_0) && KILN_VL == 8
KILN_QI_TILE(kiln_packed_tile_q4_0, 32, KILN_GBI_Q4_0, KILN_QB16, kiln_quantize_a_q4_0, kiln_column_q4_0,
             kiln_qi_gemv16_q4_0, kiln_qi_ukr16_q4_0, KILN_QI_PANEL_AS_IS)
#elif defined(KILN_QINT8_Q4_0)
KILN_QI_TILE(kiln_packed_tile_q4_0, 32, KILN_GBI_Q4_0, KILN_QB16, kiln_quantize_a_q4_0, kiln_column_q4_0,
             kiln_qi_gemv_q4_0, kiln_qi_ukr_q4_0, KILN_QI_PANEL_AS_IS)
#endif
#endif
