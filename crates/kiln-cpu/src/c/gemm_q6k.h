/* ---- Q6_K weight panels: the fourth kept type, on gemm_quant.h's shared kernels ----------
 *
 * Q6_K (ggml): per 256 values, 6-bit q (0..63) and one i8 scale per 16 values against the
 * super-block's f16 d; value = (d * sc) * (q - 32). The packer (pack_quant.rs) splits each
 * 32-value group into the two 16-value halves' scales and the 6-bit values, kept as a nibble
 * plane (as Q4_0/Q4_K) plus a plane of high bit pairs, so the panel costs 1 byte per value
 * (GGUF: 0.82) where i8 values would cost 1.25.
 *
 * f32 path (dequantize, then gemm.h's f32 chains; bit for bit the interpreter's values):
 *   f32 s0[NR] (d * sc of rows 0..15) | f32 s1[NR] (rows 16..31)
 *   | low nibbles [32][NR/2] (column c low nibble of byte c % (NR/2), c + NR/2 the high one)
 *   | high bits [16][NR/2]: byte (r, j) holds, two bits each from bit 0 up, columns j and
 *     j + NR/2 of row r, then columns j and j + NR/2 of row r + 16          (32 NR bytes). */
#define KILN_GB_Q6_K (32 * KILN_NR)

/* Row r (< 32) of group g, columns 0..VL-1 into *lo and VL..NR-1 into *hi. */
static inline __attribute__((always_inline)) void kiln_deq_q6_k(const uint8_t *restrict g, int64_t r, kiln_vf *lo, kiln_vf *hi) {
    const kiln_vi w = kiln_ld_i8(g + 8 * KILN_NR + r * (KILN_NR / 2), 1);
    const kiln_vi h = kiln_ld_i8(g + 24 * KILN_NR + (r % 16) * (KILN_NR / 2), 1) >> (r < 16 ? 0 : 4);
    const float *s = (const float *)(const void *)g + (r < 16 ? 0 : KILN_NR);
    const kiln_vi ql = ((w & 15) | ((h & 3) << 4)) - 32;
    const kiln_vi qh = ((w >> 4) | ((h & 12) << 2)) - 32;
    *lo = kiln_ldv(s) * __builtin_convertvector(ql, kiln_vf);
    *hi = kiln_ldv(s + KILN_VL) * __builtin_convertvector(qh, kiln_vf);
}

/* The 6-bit value (0..63) of column c, row r of a group's planes (both layouts' helpers). */
static inline int32_t kiln_q6_bits(const uint8_t *nib, const uint8_t *high, int64_t r, int64_t c) {
    const int64_t half = c >= KILN_NR / 2;
    const int32_t low = kiln_qnib(nib, r, c);
    return low | ((high[(r % 16) * (KILN_NR / 2) + c % (KILN_NR / 2)] >> (2 * half + 4 * (r >= 16)) & 3) << 4);
}

/* Value (n, k) of the weight, scalar (product columns off a panel boundary). */
static inline float kiln_qat_q6_k(const uint8_t *wp, int64_t K, int64_t n, int64_t k) {
    const uint8_t *g = wp + ((n / KILN_NR) * (K / 32) + k / 32) * KILN_GB_Q6_K;
    const int64_t c = n % KILN_NR, r = k % 32;
    float s; memcpy(&s, g + 4 * c + (r < 16 ? 0 : 4 * KILN_NR), 4);
    return s * (float)(kiln_q6_bits(g + 8 * KILN_NR, g + 24 * KILN_NR, r, c) - 32);
}

KILN_QGEMV_PASS(kiln_qgemv_pass_q6_k, KILN_GB_Q6_K, kiln_deq_q6_k)
#if !defined(KILN_QINT8)
KILN_QPACKED_TILE(kiln_packed_tile_q6_k, KILN_GB_Q6_K, kiln_deq_q6_k, kiln_qat_q6_k, kiln_qgemv_pass_q6_k)
#endif

/* ---- Q6_K on the integer path (AVX-512 VNNI) ----------------------------------------------
 *
 * Activations as for Q8_0 (kind 0: stored a + 128, unsigned), weights q - 32 as the signed
 * operand. A 32-value block has two scales, so each column's block dot is two int32 dots D0
 * (values 0..15, quads 0..3) and D1 (16..31, quads 4..7) of (a + 128) (q - 32), combined
 * exactly in int32 with the i8 scales and a bias the packer stores:
 *     dot = sc0 * D0 + sc1 * D1 + bias,   bias = -128 * (sc0 * sum0(q - 32) + sc1 * sum1(q - 32))
 * so dot = sum_j sc(j) (q_j - 32) a_j (|dot| <= 32 * 128 * 32 * 127 < 2^24: exact in f32), and
 *     y = fmaf((float)dot, d[n] * sa[i][b], y)
 * in block order on every path (micro-kernel, GEMV, scalar columns: KILN_QI_TILE with kind 0
 * and a per-value weight sc * (q - 32), the same integer), as for the other types.
 * Panels, per 32-value group (pack_quant.rs, integer layout):
 *   f32 d[NR] | i32 bias[NR] | i8 sc[2][NR] | nibbles as Q4_0's integer layout (8 quads x
 *   [NR/2][4]) | high bits [4][NR/2][4]: byte (c, j) of vector v holds, two bits each from
 *   bit 0 up, value j of quad v for columns c and c + NR/2, then of quad v + 4   (34 NR bytes).
 */
#if defined(KILN_QINT8)
#define KILN_GBI_Q6_K (34 * KILN_NR)
typedef uint8_t kiln_vq6 __attribute__((vector_size(64)));

/* Quad qd of a group's weights (q - 32, signed bytes): columns 0..15 into *w0, 16..31 *w1. */
static inline __attribute__((always_inline)) void kiln_qiw_q6_k(const uint8_t *restrict g, int qd, kiln_vi *w0, kiln_vi *w1) {
    const kiln_vu v = (kiln_vu)kiln_ldvi(g + 10 * KILN_NR + qd * 2 * KILN_NR);
    const kiln_vu h = (kiln_vu)kiln_ldvi(g + 26 * KILN_NR + (qd % 4) * 2 * KILN_NR) >> (qd < 4 ? 0 : 4);
    const kiln_vu lo = (v & 0x0F0F0F0Fu) | ((h << 4) & 0x30303030u);
    const kiln_vu hi = ((v >> 4) & 0x0F0F0F0Fu) | ((h << 2) & 0x30303030u);
    *w0 = (kiln_vi)((kiln_vq6)lo - 32);
    *w1 = (kiln_vi)((kiln_vq6)hi - 32);
}

/* The i32 scales of half `hf` of a group, columns 0..15 and 16..31. */
static inline __attribute__((always_inline)) void kiln_q6_scales(const uint8_t *restrict g, int hf, kiln_vi *s0, kiln_vi *s1) {
    *s0 = kiln_ld_i8(g + 8 * KILN_NR + hf * KILN_NR, 0);
    *s1 = kiln_ld_i8(g + 8 * KILN_NR + hf * KILN_NR + KILN_VL, 0);
}

/* Micro-kernel (as KILN_QI_UKR): rows of one activation strip (QMR) x one panel, blocks
 * 0..nb-1. Two dots per row, half and column half need more registers than the other types'
 * kernels have, so the panel's two 16-column halves are separate passes over the blocks. */
static inline __attribute__((always_inline)) void kiln_qi_ukr_q6_k(int64_t nb, const uint8_t *restrict qa0,
        const uint8_t *restrict wg0, float *restrict c, int64_t ldc, int load_c) {
    _Pragma("GCC unroll 2") for (int ch = 0; ch < 2; ++ch) {
        kiln_vf acc[KILN_QMR];
        _Pragma("GCC unroll 6") for (int i = 0; i < KILN_QMR; ++i)
            acc[i] = load_c ? kiln_ldv(c + i * ldc + ch * KILN_VL) : (kiln_vf){0};
        const uint8_t *qa = qa0, *wg = wg0;
        for (int64_t b = 0; b < nb; ++b, qa += KILN_QA_BLOCK, wg += KILN_GBI_Q6_K) {
            const int32_t *aq = (const int32_t *)(const void *)qa;
            kiln_vi dot[KILN_QMR];
            _Pragma("GCC unroll 6") for (int i = 0; i < KILN_QMR; ++i)
                dot[i] = kiln_ldvi(wg + 4 * KILN_NR + ch * 64);
            _Pragma("GCC unroll 2") for (int hf = 0; hf < 2; ++hf) {
                kiln_vi ia[KILN_QMR];
                _Pragma("GCC unroll 6") for (int i = 0; i < KILN_QMR; ++i) ia[i] = (kiln_vi){0};
                _Pragma("GCC unroll 4") for (int q = 0; q < 4; ++q) {
                    const int qd = 4 * hf + q;
                    kiln_vi w0, w1;
                    kiln_qiw_q6_k(wg, qd, &w0, &w1);
                    kiln_vi w = ch ? w1 : w0;
                    KILN_IN_REG(w);
                    _Pragma("GCC unroll 6") for (int i = 0; i < KILN_QMR; ++i)
                        ia[i] = kiln_dpbusd(ia[i], kiln_splati(aq[qd * KILN_QMR + i]), w);
                }
                kiln_vi s0, s1;
                kiln_q6_scales(wg, hf, &s0, &s1);
                const kiln_vi sc = ch ? s1 : s0;
                _Pragma("GCC unroll 6") for (int i = 0; i < KILN_QMR; ++i) dot[i] += sc * ia[i];
            }
            const kiln_vf d = kiln_ldv((const float *)(const void *)wg + ch * KILN_VL);
            const float *sa = (const float *)(const void *)(qa + 32 * KILN_QMR);
            _Pragma("GCC unroll 6") for (int i = 0; i < KILN_QMR; ++i)
                acc[i] = KILN_FMAV(__builtin_convertvector(dot[i], kiln_vf), d * kiln_splatv(sa[i]), acc[i]);
        }
        _Pragma("GCC unroll 6") for (int i = 0; i < KILN_QMR; ++i) kiln_stv(c + i * ldc + ch * KILN_VL, acc[i]);
    }
}

/* GEMV pass (as KILN_QI_GEMV: R <= 4 rows of one activation strip of R rows, one panel; no
 * software prefetch below 3 rows: the panel is one sequential stream the hardware follows). */
static inline __attribute__((always_inline)) void kiln_qi_gemv_q6_k(const int R, const uint8_t *restrict qa,
        const uint8_t *restrict w, int64_t G, float *restrict t, int64_t ldt) {
    kiln_vf acc[4][2];
    _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = (kiln_vf){0};
    for (int64_t g = 0; g < G; ++g) {
        const uint8_t *blk = qa + g * 40 * R, *wg = w + g * KILN_GBI_Q6_K;
        if (R >= 3)
            _Pragma("GCC unroll 20") for (int l = 0; l < KILN_GBI_Q6_K / 64; ++l)
                __builtin_prefetch(wg + 4 * KILN_GBI_Q6_K + 64 * l, 0, 3);
        const int32_t *aq = (const int32_t *)(const void *)blk;
        const float *sa = (const float *)(const void *)(blk + 32 * R);
        kiln_vi dot[4][2];
        _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) {
            dot[r][0] = kiln_ldvi(wg + 4 * KILN_NR);
            dot[r][1] = kiln_ldvi(wg + 4 * KILN_NR + 64);
        }
        _Pragma("GCC unroll 2") for (int hf = 0; hf < 2; ++hf) {
            kiln_vi ia[4][2];
            _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) ia[r][0] = ia[r][1] = (kiln_vi){0};
            _Pragma("GCC unroll 4") for (int q = 0; q < 4; ++q) {
                const int qd = 4 * hf + q;
                kiln_vi w0, w1;
                kiln_qiw_q6_k(wg, qd, &w0, &w1);
                _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) {
                    const kiln_vi x = kiln_splati(aq[qd * R + r]);
                    KILN_QI_DOT(1, ia[r], x, w0, w1);
                }
            }
            kiln_vi s0, s1;
            kiln_q6_scales(wg, hf, &s0, &s1);
            _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) {
                dot[r][0] += s0 * ia[r][0];
                dot[r][1] += s1 * ia[r][1];
            }
        }
        const kiln_vf d0 = kiln_ldv((const float *)(const void *)wg);
        const kiln_vf d1 = kiln_ldv((const float *)(const void *)wg + KILN_VL);
        _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) {
            const kiln_vf sc = kiln_splatv(sa[r]);
            acc[r][0] = KILN_FMAV(__builtin_convertvector(dot[r][0], kiln_vf), d0 * sc, acc[r][0]);
            acc[r][1] = KILN_FMAV(__builtin_convertvector(dot[r][1], kiln_vf), d1 * sc, acc[r][1]);
        }
    }
    _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) {
        kiln_stv(t + r * ldt, acc[r][0]);
        kiln_stv(t + r * ldt + KILN_VL, acc[r][1]);
    }
}

/* Weight value (n, k) as the integer sc * (q - 32), for KILN_QI_TILE's scalar columns: with
 * kind 0's signed activations their block dot is the micro-kernel's `dot`, exactly. */
static inline int32_t kiln_qiw_at_q6_k(const uint8_t *g, int64_t c, int64_t kk) {
    const uint8_t b = g[10 * KILN_NR + (kk / 4) * 2 * KILN_NR + (c % (KILN_NR / 2)) * 4 + kk % 4];
    const int32_t low = c < KILN_NR / 2 ? (b & 15) : (b >> 4);
    const int64_t quad = kk / 4, hb = c >= KILN_NR / 2;
    const uint8_t h = g[26 * KILN_NR + (quad % 4) * 2 * KILN_NR + (c % (KILN_NR / 2)) * 4 + kk % 4];
    const int32_t high = (h >> (2 * hb + 4 * (quad >= 4))) & 3;
    return (int32_t)(int8_t)g[8 * KILN_NR + (kk / 16) * KILN_NR + c] * ((low | (high << 4)) - 32);
}

KILN_QI_TILE(kiln_packed_tile_q6_k, KILN_GBI_Q6_K, 0, kiln_qi_ukr_q6_k, kiln_qi_gemv_q6_k, kiln_qiw_at_q6_k)
#endif
