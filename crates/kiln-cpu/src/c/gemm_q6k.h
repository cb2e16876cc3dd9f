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
#if !defined(KILN_QINT8_Q6_K)
KILN_QPACKED_TILE(kiln_packed_tile_q6_k, KILN_GB_Q6_K, kiln_deq_q6_k, kiln_qat_q6_k, kiln_qgemv_pass_q6_k)
#endif

/* ---- Q6_K on the integer path (AVX-512 VNNI, AVX2) -----------------------------------------
 *
 * Activations signed (kind 3: per 32 values, one f32 scale, and the sums of each 16-value
 * half, s0 and s1, in the block's word as two i16), weights the unsigned 6-bit q (0..63). A 32-value block has two
 * scales, so each column's block dot is two int32 dots, D0 (values 0..15, quads 0..3) and D1
 * (16..31, quads 4..7), of a (q - 32) — each started at -32 * s_h and fed q — combined
 * exactly in int32 with the i8 scales:
 *     dot = sc0 * D0 + sc1 * D1 = sum_j sc(j) (q_j - 32) a_j
 * (|dot| <= 32 * 128 * 32 * 127 < 2^24: exact in f32), and
 *     y = fmaf((float)dot, d[n] * sa[i][b], y)
 * in block order on every path (micro-kernel, GEMV, scalar columns with a per-value weight
 * sc * (q - 32), the same integer), as for the other types.
 * Panels (pack_quant.rs, integer layout), per super-block of 256 values (210 NR bytes, the
 * file's 26.25 per 32 values; d per group in f32 was 30):
 *   u16 d[NR] (the file's f16) | 8 groups of:
 *   i8 sc[2][NR] | 4 pairs p x 3 vectors X, Y, Z of [NR/2][4] bytes             (26 NR bytes)
 * Lane j, byte t of pair p's vectors hold value k = 4p + t of columns j (X, low 6 bits) and
 * j + NR/2 (Y), value 16 + 4p + t of column j (Z), and in their top 2 bits (X, Y, Z: bits 0-1,
 * 2-3, 4-5 of it) value 16 + 4p + t of column j + NR/2. So three of the four vpdpbusd operands
 * of a pair are one AND each (& 0x3F), the fourth is 4 q assembled from the three top bit pairs
 * in place (its dot is 4 D1, started at -128 * s1 and shifted right by 2: exact; on AVX2 q
 * itself, KILN_Q6_X4 below); the 6-bit
 * values cost 0.75 bytes, with no plane of high bits to unpack per quad (the former layout,
 * nibbles + high pairs, a bias and q - 32 as the signed operand: 34 NR bytes, 0.38 of the
 * read in scripts/bench-qgemv.sh).
 */
#if defined(KILN_QINT8_Q6_K)
#define KILN_SBI_Q6_K (210 * KILN_NR)
#define KILN_GBI_Q6_K (KILN_SBI_Q6_K / 8) /* bytes per group, on average (the harness's unit) */
/* Group g of the super-block at sb. */
#define KILN_Q6K_GROUP(sb, g) ((sb) + 2 * KILN_NR + (g) * 26 * KILN_NR)

/* A super-block's d in f32 (exact: f16 widened), columns 0..VL-1 and VL..NR-1. */
static inline __attribute__((always_inline)) void kiln_q6k_d(const uint8_t *restrict sb, kiln_vf *d0, kiln_vf *d1) {
#if KILN_VL == 16
    typedef short kiln_v16hi __attribute__((vector_size(32)));
    kiln_v16hi h0, h1;
    memcpy(&h0, sb, 32); memcpy(&h1, sb + 32, 32);
    *d0 = __builtin_ia32_vcvtph2ps512_mask(h0, (kiln_vf){0}, (unsigned short)-1, 4);
    *d1 = __builtin_ia32_vcvtph2ps512_mask(h1, (kiln_vf){0}, (unsigned short)-1, 4);
#else
    *d0 = kiln_ldhv(sb);
    *d1 = kiln_ldhv(sb + 2 * KILN_VL);
#endif
}

/* The fourth operand of a pair is KILN_Q6_X4 q: 4 q with VNNI (the top bit pairs in place, a
 * dot of 4 D1 started at -128 s1 and shifted right by 2 after); q itself on AVX2, whose
 * vpmaddubsw sums two u8 x s8 products in i16 (2 * 252 * 127 would saturate; 2 * 63 * 127
 * does not). The same integer D1 either way. */
#if KILN_VL == 16
#define KILN_Q6_X4 4
#define KILN_Q6_X4_SHIFT 2
#else
#define KILN_Q6_X4 1
#define KILN_Q6_X4_SHIFT 0
#endif

/* Pair p (quads p and p + 4) of a group's weights: the vpdpbusd operands of columns 0..VL-1
 * and VL..NR-1 at quad p (*w00, *w10), columns 0..VL-1 at quad p + 4 (*w01), and KILN_Q6_X4 q
 * of columns VL..NR-1 at quad p + 4 (*w11x4). */
static inline __attribute__((always_inline)) void kiln_qiw_q6_k(const uint8_t *restrict g, int p, kiln_vi *w00,
        kiln_vi *w10, kiln_vi *w01, kiln_vi *w11x4) {
    const uint8_t *v = g + 2 * KILN_NR + p * 6 * KILN_NR;
    const kiln_vu x = (kiln_vu)kiln_ldvi(v), y = (kiln_vu)kiln_ldvi(v + 2 * KILN_NR);
    const kiln_vu z = (kiln_vu)kiln_ldvi(v + 4 * KILN_NR);
    *w00 = (kiln_vi)(x & 0x3F3F3F3Fu);
    *w10 = (kiln_vi)(y & 0x3F3F3F3Fu);
    *w01 = (kiln_vi)(z & 0x3F3F3F3Fu);
#if KILN_VL == 16
    *w11x4 = (kiln_vi)(((x >> 4) & 0x0C0C0C0Cu) | ((y >> 2) & 0x30303030u) | (z & 0xC0C0C0C0u));
#else
    *w11x4 = (kiln_vi)(((x >> 6) & 0x03030303u) | ((y >> 4) & 0x0C0C0C0Cu) | ((z >> 2) & 0x30303030u));
#endif
}

/* The i32 scales of half `hf` of a group, columns 0..15 and 16..31. */
static inline __attribute__((always_inline)) void kiln_q6_scales(const uint8_t *restrict g, int hf, kiln_vi *s0, kiln_vi *s1) {
    *s0 = kiln_ld_i8(g + hf * KILN_NR, 0);
    *s1 = kiln_ld_i8(g + hf * KILN_NR + KILN_VL, 0);
}

/* A row's dot starts: -32 * s_h of half h (the block's word: s0 in the low i16, s1 the high). */
static inline int32_t kiln_q6_start(int32_t word, int hf) {
    return -32 * (hf ? (int32_t)(int16_t)(word >> 16) : (int32_t)(int16_t)(word & 0xFFFF));
}

#if KILN_VL == 8
/* A block's integer dots of the QMR rows of a strip (aq) at column half ch of group wg, into
 * dot[i] (the micro-kernel's). AVX2: as the VNNI one below (the same integer dot), but the
 * products summed in i16 runs of two quads (vpmaddubsw's i16 lanes hold two q x a products,
 * |2 * 2 * 63 * 127| = 32004 < 2^15: exact; four quads could overflow), each run then scaled
 * by vpmaddwd against the column's sc in both i16 halves of its lane (sc * run summed, exact in
 * i32); the dot starts at -32 (sc0 s0 + sc1 s1), one vpmaddwd of the row's word (s0 | s1 << 16)
 * by (-32 sc0) | (-32 sc1) << 16. Per quad and row a vpmaddubsw and (every other quad) a
 * vpaddw, where kiln_dpbusd is three instructions; a pass holds QMR sums, dots and runs, the
 * weight operand and a product (the kiln_dpbusd kernel's two dots per row spilled). */
/* Each i32 lane: lo's low 16 bits in its low i16, hi's in its high one (a vpmaddwd operand). */
static inline kiln_vi kiln_i16_pair(kiln_vi lo, kiln_vi hi) {
    return (kiln_vi)(((kiln_vu)lo & ((kiln_vu){0} + 0xFFFFu)) | (kiln_vu)hi << 16);
}
static inline __attribute__((always_inline)) void kiln_q6k_dots(int ch, const uint8_t *restrict wg,
        const int32_t *restrict aq, kiln_vi dot[KILN_QMR]) {
    kiln_vi s00, s01, s10, s11; /* half 0's and half 1's scales, columns 0..7 and 8..15 */
    kiln_q6_scales(wg, 0, &s00, &s01);
    kiln_q6_scales(wg, 1, &s10, &s11);
    const kiln_vi sc0 = ch ? s01 : s00, sc1 = ch ? s11 : s10;
    const kiln_vi st = kiln_i16_pair(sc0 * -32, sc1 * -32);
    _Pragma("GCC unroll 6") for (int i = 0; i < KILN_QMR; ++i)
        dot[i] = kiln_madd16(kiln_splati(aq[9 * KILN_QMR + i]), st);
    _Pragma("GCC unroll 2") for (int hf = 0; hf < 2; ++hf) {
        const kiln_vi sc = hf ? sc1 : sc0, sc16 = kiln_i16_pair(sc, sc);
        _Pragma("GCC unroll 2") for (int run = 0; run < 2; ++run) {
            kiln_vi p[KILN_QMR];
            _Pragma("GCC unroll 2") for (int pp = 2 * run; pp < 2 * run + 2; ++pp) {
                kiln_vi w00, w10, w01, w11;
                kiln_qiw_q6_k(wg, pp, &w00, &w10, &w01, &w11);
                kiln_vi wv = ch ? (hf ? w11 : w10) : (hf ? w01 : w00);
                KILN_IN_REG(wv);
                _Pragma("GCC unroll 6") for (int i = 0; i < KILN_QMR; ++i) {
                    KILN_RUN16(p[i], pp == 2 * run, kiln_maddubs(wv, kiln_splati(aq[(4 * hf + pp) * KILN_QMR + i])));
                    KILN_IN_REG(p[i]);
                }
            }
            _Pragma("GCC unroll 6") for (int i = 0; i < KILN_QMR; ++i) {
                dot[i] += kiln_madd16(p[i], sc16);
                KILN_IN_REG(dot[i]); /* summed as it goes (GCC's tree of the runs spills) */
            }
        }
    }
}
#else
/* VNNI: per half a vpdpbusd chain started at -32 s_h (the fourth operand's: KILN_Q6_X4 D1),
 * times the half's scales. */
static inline __attribute__((always_inline)) void kiln_q6k_dots(int ch, const uint8_t *restrict wg,
        const int32_t *restrict aq, kiln_vi dot[KILN_QMR]) {
    _Pragma("GCC unroll 6") for (int i = 0; i < KILN_QMR; ++i) dot[i] = (kiln_vi){0};
    _Pragma("GCC unroll 2") for (int hf = 0; hf < 2; ++hf) {
        const int x4 = ch == 1 && hf == 1; /* this dot is KILN_Q6_X4 D1 */
        kiln_vi ia[KILN_QMR];
        _Pragma("GCC unroll 6") for (int i = 0; i < KILN_QMR; ++i)
            ia[i] = kiln_splati(kiln_q6_start(aq[9 * KILN_QMR + i], hf) * (x4 ? KILN_Q6_X4 : 1));
        _Pragma("GCC unroll 4") for (int p = 0; p < 4; ++p) {
            kiln_vi w00, w10, w01, w11;
            kiln_qiw_q6_k(wg, p, &w00, &w10, &w01, &w11);
            kiln_vi w = ch ? (hf ? w11 : w10) : (hf ? w01 : w00);
            KILN_IN_REG(w);
            _Pragma("GCC unroll 6") for (int i = 0; i < KILN_QMR; ++i)
                ia[i] = kiln_dpbusd(ia[i], w, kiln_splati(aq[(4 * hf + p) * KILN_QMR + i]));
        }
        kiln_vi s0, s1;
        kiln_q6_scales(wg, hf, &s0, &s1);
        const kiln_vi sc = ch ? s1 : s0;
        _Pragma("GCC unroll 6") for (int i = 0; i < KILN_QMR; ++i)
            dot[i] += sc * (x4 ? ia[i] >> KILN_Q6_X4_SHIFT : ia[i]);
    }
}
#endif

/* Micro-kernel (as KILN_QI_UKR): rows of one activation strip (QMR) x one panel, super-blocks
 * 0..nsb-1. Two dots per row, half and column half need more registers than the other types'
 * kernels have, so the panel's two 16-column halves are separate passes over the blocks. */
static inline __attribute__((always_inline)) void kiln_qi_ukr_q6_k(int64_t nsb, const uint8_t *restrict qa0,
        const uint8_t *restrict w, float *restrict c, int64_t ldc, int load_c) {
    _Pragma("GCC unroll 2") for (int ch = 0; ch < 2; ++ch) {
        kiln_vf acc[KILN_QMR];
        _Pragma("GCC unroll 6") for (int i = 0; i < KILN_QMR; ++i)
            acc[i] = load_c ? kiln_ldv(c + i * ldc + ch * KILN_VL) : (kiln_vf){0};
        const uint8_t *qa = qa0;
        for (int64_t b = 0; b < 8 * nsb; ++b, qa += KILN_QA_BLOCK) {
            const uint8_t *sb = w + (b / 8) * KILN_SBI_Q6_K, *wg = KILN_Q6K_GROUP(sb, b % 8);
            kiln_vi dot[KILN_QMR];
            kiln_q6k_dots(ch, wg, (const int32_t *)(const void *)qa, dot);
            kiln_vf d0, d1;
            kiln_q6k_d(sb, &d0, &d1);
            const kiln_vf d = ch ? d1 : d0;
            const float *sa = (const float *)(const void *)(qa + 32 * KILN_QMR);
            _Pragma("GCC unroll 6") for (int i = 0; i < KILN_QMR; ++i)
                acc[i] = KILN_FMAV(__builtin_convertvector(dot[i], kiln_vf), d * kiln_splatv(sa[i]), acc[i]);
        }
        _Pragma("GCC unroll 6") for (int i = 0; i < KILN_QMR; ++i) kiln_stv(c + i * ldc + ch * KILN_VL, acc[i]);
    }
}

/* GEMV pass (as KILN_QI_GEMV: R <= 4 rows of one activation strip of R rows, one panel; no
 * software prefetch below 3 rows: the panel is one sequential stream the hardware follows).
 * Per row four dot chains: (column half, value half). */
static inline __attribute__((always_inline)) void kiln_qi_gemv_q6_k(const int R, const uint8_t *restrict qa,
        const uint8_t *restrict w, int64_t G, float *restrict t, int64_t ldt) {
    kiln_vf acc[4][2];
    _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = (kiln_vf){0};
    kiln_vf dv0, dv1;
    for (int64_t g = 0; g < G; ++g) {
        const uint8_t *blk = qa + g * 40 * R, *sb = w + (g / 8) * KILN_SBI_Q6_K;
        const uint8_t *wg = KILN_Q6K_GROUP(sb, g % 8);
        if (R >= 3)
            _Pragma("GCC unroll 20") for (int l = 0; l < (KILN_GBI_Q6_K + 63) / 64; ++l)
                __builtin_prefetch(wg + 4 * KILN_GBI_Q6_K + 64 * l, 0, 3);
        if (g % 8 == 0) kiln_q6k_d(sb, &dv0, &dv1); /* the super-block's d: its first line */
        const int32_t *aq = (const int32_t *)(const void *)blk;
        const float *sa = (const float *)(const void *)(blk + 32 * R);
        /* the group's d and scales first, in register (the lines asked for in address order,
         * as KILN_QI_GEMV does) */
        kiln_vi s00, s01, s10, s11; /* s<half><column half> */
        kiln_q6_scales(wg, 0, &s00, &s01);
        kiln_q6_scales(wg, 1, &s10, &s11);
        KILN_IN_REG(dv0); KILN_IN_REG(dv1);
        KILN_IN_REG(s00); KILN_IN_REG(s01); KILN_IN_REG(s10); KILN_IN_REG(s11);
        kiln_vi d00[4], d10[4], d01[4], d11[4]; /* [column half][value half], d11 = KILN_Q6_X4 D1 */
        _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) {
            const int32_t s0 = kiln_q6_start(aq[9 * R + r], 0), s1 = kiln_q6_start(aq[9 * R + r], 1);
            d00[r] = d10[r] = kiln_splati(s0);
            d01[r] = kiln_splati(s1);
            d11[r] = kiln_splati(KILN_Q6_X4 * s1);
        }
        _Pragma("GCC unroll 4") for (int p = 0; p < 4; ++p) {
            kiln_vi w00, w10, w01, w11;
            kiln_qiw_q6_k(wg, p, &w00, &w10, &w01, &w11);
            _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) {
                const kiln_vi xa = kiln_splati(aq[p * R + r]), xb = kiln_splati(aq[(p + 4) * R + r]);
                d00[r] = kiln_dpbusd(d00[r], w00, xa);
                d10[r] = kiln_dpbusd(d10[r], w10, xa);
                d01[r] = kiln_dpbusd(d01[r], w01, xb);
                d11[r] = kiln_dpbusd(d11[r], w11, xb);
            }
        }
        _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) {
            const kiln_vf sc = kiln_splatv(sa[r]);
            const kiln_vi dot0 = s00 * d00[r] + s10 * d01[r], dot1 = s01 * d10[r] + s11 * (d11[r] >> KILN_Q6_X4_SHIFT);
            acc[r][0] = KILN_FMAV(__builtin_convertvector(dot0, kiln_vf), dv0 * sc, acc[r][0]);
            acc[r][1] = KILN_FMAV(__builtin_convertvector(dot1, kiln_vf), dv1 * sc, acc[r][1]);
        }
    }
    _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) {
        kiln_stv(t + r * ldt, acc[r][0]);
        kiln_stv(t + r * ldt + KILN_VL, acc[r][1]);
    }
}

/* Weight value (n, k) as the integer sc * (q - 32), for KILN_QI_TILE's scalar columns: with
 * kind 3's signed activations their block dot is the micro-kernel's `dot`, exactly. */
static inline int32_t kiln_qiw_at_q6_k(const uint8_t *g, int64_t c, int64_t kk) {
    const int64_t half = KILN_NR / 2, ch = c >= half, quad = kk / 4, hf = quad >= 4;
    const uint8_t *v = g + 2 * KILN_NR + (quad % 4) * 6 * KILN_NR + (c % half) * 4 + kk % 4;
    const uint8_t x = v[0], y = v[2 * KILN_NR], z = v[4 * KILN_NR];
    const int32_t q = !hf ? (ch ? y : x) & 63 : !ch ? z & 63 : (x >> 6) | (y >> 6) << 2 | (z >> 6) << 4;
    return (int32_t)(int8_t)g[hf * KILN_NR + c] * (q - 32);
}

/* One column c of a super-block sb against row s of a strip of sr rows (its super-block at
 * ab): per group the integer dot and one FMA, in the kernels' order. */
static inline float kiln_column_q6_k(const uint8_t *sb, int64_t c, const uint8_t *ab, int64_t sr, int64_t s,
                                     float acc) {
    for (int g = 0; g < 8; ++g) {
        const uint8_t *wg = KILN_Q6K_GROUP(sb, g), *blk = ab + g * 40 * sr;
        int32_t dot = 0;
        for (int64_t kk = 0; kk < 32; ++kk)
            dot += (int32_t)(int8_t)blk[((kk / 4) * sr + s) * 4 + kk % 4] * kiln_qiw_at_q6_k(wg, c, kk);
        uint16_t dh;
        float sa;
        memcpy(&dh, sb + 2 * c, 2);
        memcpy(&sa, blk + 32 * sr + 4 * s, 4);
        acc = fmaf((float)dot, kiln_f16_to_f32(dh) * sa, acc);
    }
    return acc;
}

/* The product tile (gemm_quant.h's KILN_QI_TILE), the activations as kind 3's blocks. */
#define kiln_quantize_a_q6_k(a, lda, tm, K, sr, qa) kiln_quantize_a_rows(a, lda, tm, K, 3, sr, qa)
KILN_QI_TILE(kiln_packed_tile_q6_k, 256, KILN_SBI_Q6_K, KILN_QB32, kiln_quantize_a_q6_k, kiln_column_q6_k,
             kiln_qi_gemv_q6_k, kiln_qi_ukr_q6_k, KILN_QI_PANEL_AS_IS)
#endif
