/* ---- Q4_K on the integer path (AVX-512 VNNI): super-block panels, 18.5 bytes per 32 values ---
 *
 * As llama.cpp's ggml_vec_dot_q4_K_q8_K: the activations are quantized per 256 values (one
 * super-block: d = amax / 127, q = round-half-even(x * (1 / d)), as gemm_quant.h's blocks but
 * over 256), so a super-block's eight 32-value groups share one activation scale sa and the
 * group scales stay integers to the end. A Q4_K value is d * sc_g * q - dmin * m_g (q 0..15,
 * sc_g and m_g 6-bit, d and dmin the super-block's f16), so per column and super-block
 *     S  = sum_g sc_g * dot_g,   dot_g = sum_{k in g} q_k a_k   (vpdpbusd, then vpmulld)
 *     Mi = sum_g m_g * asum_g,   asum_g = sum_{k in g} a_k
 * are exact integers (|S| <= 8 * 63 * 32 * 15 * 127 < 2^25, |Mi| <= 8 * 63 * 32 * 127 < 2^21),
 * converted to f32 once per super-block, and
 *     y = fmaf((float)Mi, -dmin * sa, y);  y = fmaf((float)S, d * sa, y)
 * in super-block order on every path (micro-kernel, GEMV, scalar columns), so results do not
 * depend on the thread count and a decode row equals the same row of a prefill. The former
 * layout (f32 d*sc and -dmin*m per group, 24 bytes per 32 values and column) needed an f32
 * conversion, multiply and two FMAs per group and 30% more bytes.
 *
 * Mi by vpdpbusd too: asum_g (|asum_g| <= 4064) is split as 128 h_g + l_g with l_g in 0..127
 * and h_g in -32..31, both signed bytes; a column's four m_g (u8) of groups 4j..4j+3 are one
 * 32-bit lane, so Mi = 128 sum_g m_g h_g + sum_g m_g l_g is four vpdpbusd per 16 columns.
 *
 * Panels (pack_quant.rs, integer layout), per super-block of NR columns (148 NR bytes):
 *   u16 d[NR] (f16) | u16 dmin[NR] (f16) | u8 m[2][NR][4] (m of group 4j + t at (j, c, t))
 *   | u8 sc[8][NR] | 8 groups x 8 quads x [NR/2][4] nibbles (as Q4_0's integer layout)
 * Activations (the worker's abuf): strips of SR rows, per 32-value group 40 SR bytes as
 * gemm_quant.h's (i32 [8][SR] quads, f32 [SR], 32-bit word [SR]); the f32 is the super-block's
 * scale (the same in its eight groups), the word of group j of a super-block: j = 0 the bytes
 * h_0..h_3, j = 1 l_0..l_3, j = 2 h_4..h_7, j = 3 l_4..l_7, j >= 4 zero.
 *
 * Q5_K (gemm_q5k.h) runs on the same code (the `q5` argument, a constant after inlining): its
 * super-block is Q4_K's with 5-bit q (0..31, |S| < 2^26), so its panel is Q4_K's with each
 * group's nibbles (16 NR bytes) followed by the group's fifth bits (4 NR bytes; 180 NR per
 * super-block, 22.5 bytes per 32 values, the file's 22): quad qd's at 16 NR + NR/2 qd of the
 * group, two 64-bit words (columns 0..15, 16..31), bit 4 j + t the fifth bit of byte (j, t) of
 * that vpdpbusd operand, so a masked byte add of 16 (vpaddb under the word as a k mask) turns
 * the nibble operand into the 5-bit one. Interleaved per group, not a plane at the end of the
 * super-block: the GEMV then streams one sequential run (with the plane apart, two interleaved
 * streams 4.6 KB apart, it ran at 0.43 of a streaming read instead of ~0.9, bench-qgemv). */
#if defined(KILN_QINT8)
#define KILN_SBI_Q4_K (148 * KILN_NR)
#define KILN_GBI_Q4_K (KILN_SBI_Q4_K / 8) /* bytes per group, on average (the harness's unit) */
#define KILN_Q4K_M (4 * KILN_NR)
#define KILN_Q4K_SC (12 * KILN_NR)
#define KILN_Q4K_Q (20 * KILN_NR)
#define KILN_SBI_Q5_K (180 * KILN_NR)
#define KILN_GBI_Q5_K (KILN_SBI_Q5_K / 8)
/* group g's q: its nibbles at KILN_Q4K_Q + g * KILN_QG(q5); Q5_K's fifth bits right after */
#define KILN_QG(q5) ((q5) ? 20 * KILN_NR : 16 * KILN_NR)
#define KILN_SBI_K(q5) ((q5) ? KILN_SBI_Q5_K : KILN_SBI_Q4_K)
typedef char kiln_v64qi __attribute__((vector_size(64)));
_Static_assert(KILN_KC % 256 == 0, "Q4_K's k blocks are whole super-blocks");

/* Rows [0, tm) of a into quantized strips of sr rows at qa (the layout above; rows past tm up
 * to the strip's end: zeros). */
static void kiln_quantize_a_q4k(const float *restrict a, int64_t lda, int64_t tm, int64_t K,
                                int64_t sr, uint8_t *restrict qa) {
    const int64_t G = K / 32, rows = (tm + sr - 1) / sr * sr, qb = 40 * sr;
    const kiln_vu abs_mask = (kiln_vu){0} + 0x7fffffffu;
    for (int64_t i = 0; i < rows; ++i) {
        uint8_t *strip = qa + (i / sr) * G * qb;
        const int64_t s = i % sr;
        for (int64_t b = 0; b < G / 8; ++b) {
            const float *restrict r = a + i * lda + b * 256;
            float d = 0.0f;
            if (i < tm) {
                kiln_vf m = (kiln_vf){0};
                for (int v = 0; v < 16; ++v) m = kiln_vmax(m, (kiln_vf)((kiln_vu)kiln_ldv(r + 16 * v) & abs_mask));
                m = kiln_vmax(m, __builtin_shuffle(m, (kiln_vi){8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7}));
                m = kiln_vmax(m, __builtin_shuffle(m, (kiln_vi){4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11}));
                m = kiln_vmax(m, __builtin_shuffle(m, (kiln_vi){2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13}));
                m = kiln_vmax(m, __builtin_shuffle(m, (kiln_vi){1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14}));
                d = m[0] / 127.0f;
            }
            const float id = d != 0.0f ? 1.0f / d : 0.0f;
            const kiln_vf sid = kiln_splatv(id);
            uint8_t h[8], l[8];
            for (int64_t j = 0; j < 8; ++j) {
                uint8_t *blk = strip + (b * 8 + j) * qb;
                int8_t q[32] = {0};
                int32_t sum = 0;
                if (i < tm) {
                    /* vcvtps2dq: round to nearest even (the MXCSR default) */
                    const kiln_vi q0 = (kiln_vi)__builtin_ia32_cvtps2dq512_mask(kiln_ldv(r + 32 * j) * sid, (kiln_v16si){0}, (unsigned short)-1, 4);
                    const kiln_vi q1 = (kiln_vi)__builtin_ia32_cvtps2dq512_mask(kiln_ldv(r + 32 * j + 16) * sid, (kiln_v16si){0}, (unsigned short)-1, 4);
                    const kiln_v16qi b0 = __builtin_ia32_pmovdb512_mask((kiln_v16si)q0, (kiln_v16qi){0}, (unsigned short)-1);
                    const kiln_v16qi b1 = __builtin_ia32_pmovdb512_mask((kiln_v16si)q1, (kiln_v16qi){0}, (unsigned short)-1);
                    memcpy(q, &b0, 16); memcpy(q + 16, &b1, 16);
                    for (int k = 0; k < 32; ++k) sum += q[k];
                }
                h[j] = (uint8_t)(int8_t)(sum >> 7); /* arithmetic shift: floor(sum / 128) */
                l[j] = (uint8_t)(sum & 127);
                for (int qd = 0; qd < 8; ++qd) memcpy(blk + (qd * sr + s) * 4, q + 4 * qd, 4);
                memcpy(blk + 32 * sr + 4 * s, &d, 4);
            }
            for (int64_t j = 0; j < 8; ++j) {
                const uint8_t *src = j == 0 ? h : j == 1 ? l : j == 2 ? h + 4 : l + 4;
                uint8_t word[4] = {0, 0, 0, 0};
                if (j < 4) memcpy(word, src, 4);
                memcpy(strip + (b * 8 + j) * qb + 36 * sr + 4 * s, word, 4);
            }
        }
    }
}

/* A super-block's d and -dmin in f32 (exact: f16 widened), columns 0..15 and 16..31. */
static inline __attribute__((always_inline)) void kiln_q4k_dmin(const uint8_t *restrict sb, kiln_vf *d0,
        kiln_vf *d1, kiln_vf *n0, kiln_vf *n1) {
    typedef short kiln_v16hi __attribute__((vector_size(32)));
    kiln_v16hi h0, h1, h2, h3;
    memcpy(&h0, sb, 32); memcpy(&h1, sb + 32, 32); memcpy(&h2, sb + 64, 32); memcpy(&h3, sb + 96, 32);
    const kiln_vu sign = (kiln_vu){0} + 0x80000000u;
    *d0 = __builtin_ia32_vcvtph2ps512_mask(h0, (kiln_vf){0}, (unsigned short)-1, 4);
    *d1 = __builtin_ia32_vcvtph2ps512_mask(h1, (kiln_vf){0}, (unsigned short)-1, 4);
    *n0 = (kiln_vf)((kiln_vu)__builtin_ia32_vcvtph2ps512_mask(h2, (kiln_vf){0}, (unsigned short)-1, 4) ^ sign);
    *n1 = (kiln_vf)((kiln_vu)__builtin_ia32_vcvtph2ps512_mask(h3, (kiln_vf){0}, (unsigned short)-1, 4) ^ sign);
}

/* Mi of one row (its super-block's four words hA, lA, hB, lB, `stride` int32 apart) for
 * columns 0..15 and 16..31 of super-block sb. */
static inline __attribute__((always_inline)) void kiln_q4k_mins(const uint8_t *restrict sb, const int32_t *words,
        int64_t stride, kiln_vi *mi0, kiln_vi *mi1) {
    const kiln_vi m00 = kiln_ldvi(sb + KILN_Q4K_M), m01 = kiln_ldvi(sb + KILN_Q4K_M + 64);
    const kiln_vi m10 = kiln_ldvi(sb + KILN_Q4K_M + 4 * KILN_NR), m11 = kiln_ldvi(sb + KILN_Q4K_M + 4 * KILN_NR + 64);
    const kiln_vi hA = kiln_splati(words[0]), lA = kiln_splati(words[stride]);
    const kiln_vi hB = kiln_splati(words[2 * stride]), lB = kiln_splati(words[3 * stride]);
    const kiln_vi z = (kiln_vi){0};
    *mi0 = kiln_dpbusd(kiln_dpbusd(z, m00, hA), m10, hB) * 128 + kiln_dpbusd(kiln_dpbusd(z, m00, lA), m10, lB);
    *mi1 = kiln_dpbusd(kiln_dpbusd(z, m01, hA), m11, hB) * 128 + kiln_dpbusd(kiln_dpbusd(z, m01, lA), m11, lB);
}

/* Quad qd of group g's q (Q4_K's nibbles; q5: plus the fifth bits): columns 0..15 into *w0,
 * 16..31 into *w1. */
static inline __attribute__((always_inline)) void kiln_qiw_q4k(const int q5, const uint8_t *restrict sb, int g,
        int qd, kiln_vi *w0, kiln_vi *w1) {
    const uint8_t *qg = sb + KILN_Q4K_Q + g * KILN_QG(q5);
    kiln_vu v = (kiln_vu)kiln_ldvi(qg + qd * 2 * KILN_NR);
    KILN_IN_REG(v);
    if (!q5) {
        *w0 = (kiln_vi)(v & 0x0F0F0F0Fu);
        *w1 = (kiln_vi)((v >> 4) & 0x0F0F0F0Fu);
        return;
    }
    unsigned long long m0, m1;
    memcpy(&m0, qg + 16 * KILN_NR + qd * (KILN_NR / 2), 8);
    memcpy(&m1, qg + 16 * KILN_NR + qd * (KILN_NR / 2) + 8, 8);
    const kiln_v64qi sixteen = (kiln_v64qi){0} + 16;
    const kiln_v64qi lo = (kiln_v64qi)(v & 0x0F0F0F0Fu), hi = (kiln_v64qi)((v >> 4) & 0x0F0F0F0Fu);
    *w0 = (kiln_vi)__builtin_ia32_paddb512_mask(lo, sixteen, lo, m0);
    *w1 = (kiln_vi)__builtin_ia32_paddb512_mask(hi, sixteen, hi, m1);
}

/* Micro-kernel: rows of one activation strip (QMR) x one panel, super-blocks 0..nsb-1 from qa
 * and w (both at their first super-block), into c (row stride ldc), (+)= as load_c says. The
 * running sums live in c (an L1-resident tile): each super-block needs S and the group's dots
 * of every row in registers. */
static inline __attribute__((always_inline)) void kiln_qi_ukr_q4k(const int q5, int64_t nsb, const uint8_t *restrict qa,
        const uint8_t *restrict w, float *restrict c, int64_t ldc, int load_c) {
    if (!load_c)
        _Pragma("GCC unroll 6") for (int i = 0; i < KILN_QMR; ++i) {
            kiln_stv(c + i * ldc, (kiln_vf){0});
            kiln_stv(c + i * ldc + KILN_VL, (kiln_vf){0});
        }
    for (int64_t b = 0; b < nsb; ++b, qa += 8 * KILN_QA_BLOCK, w += KILN_SBI_K(q5)) {
        const float *sa = (const float *)(const void *)(qa + 32 * KILN_QMR);
        {
            kiln_vf d0, d1, n0, n1;
            kiln_q4k_dmin(w, &d0, &d1, &n0, &n1);
            _Pragma("GCC unroll 6") for (int i = 0; i < KILN_QMR; ++i) {
                kiln_vi mi0, mi1;
                kiln_q4k_mins(w, (const int32_t *)(const void *)(qa + 36 * KILN_QMR) + i, KILN_QA_BLOCK / 4, &mi0, &mi1);
                const kiln_vf sc = kiln_splatv(sa[i]);
                kiln_stv(c + i * ldc, KILN_FMAV(__builtin_convertvector(mi0, kiln_vf), n0 * sc, kiln_ldv(c + i * ldc)));
                kiln_stv(c + i * ldc + KILN_VL, KILN_FMAV(__builtin_convertvector(mi1, kiln_vf), n1 * sc, kiln_ldv(c + i * ldc + KILN_VL)));
            }
        }
        kiln_vi S[KILN_QMR][2];
        _Pragma("GCC unroll 6") for (int i = 0; i < KILN_QMR; ++i) S[i][0] = S[i][1] = (kiln_vi){0};
        for (int g = 0; g < 8; ++g) {
            const int32_t *aq = (const int32_t *)(const void *)(qa + g * KILN_QA_BLOCK);
            kiln_vi ia[KILN_QMR][2];
            _Pragma("GCC unroll 6") for (int i = 0; i < KILN_QMR; ++i) ia[i][0] = ia[i][1] = (kiln_vi){0};
            _Pragma("GCC unroll 8") for (int qd = 0; qd < 8; ++qd) {
                kiln_vi w0, w1;
                kiln_qiw_q4k(q5, w, g, qd, &w0, &w1);
                KILN_IN_REG(w0); KILN_IN_REG(w1);
                _Pragma("GCC unroll 6") for (int i = 0; i < KILN_QMR; ++i) {
                    const kiln_vi x = kiln_splati(aq[qd * KILN_QMR + i]);
                    ia[i][0] = kiln_dpbusd(ia[i][0], w0, x);
                    ia[i][1] = kiln_dpbusd(ia[i][1], w1, x);
                }
            }
            const kiln_vi s0 = kiln_ld_i8(w + KILN_Q4K_SC + g * KILN_NR, 1);
            const kiln_vi s1 = kiln_ld_i8(w + KILN_Q4K_SC + g * KILN_NR + KILN_VL, 1);
            _Pragma("GCC unroll 6") for (int i = 0; i < KILN_QMR; ++i) {
                S[i][0] += s0 * ia[i][0];
                S[i][1] += s1 * ia[i][1];
                KILN_IN_REG(S[i][0]); KILN_IN_REG(S[i][1]);
            }
        }
        kiln_vf d0, d1, n0, n1;
        kiln_q4k_dmin(w, &d0, &d1, &n0, &n1);
        _Pragma("GCC unroll 6") for (int i = 0; i < KILN_QMR; ++i) {
            const kiln_vf sc = kiln_splatv(sa[i]);
            kiln_stv(c + i * ldc, KILN_FMAV(__builtin_convertvector(S[i][0], kiln_vf), d0 * sc, kiln_ldv(c + i * ldc)));
            kiln_stv(c + i * ldc + KILN_VL, KILN_FMAV(__builtin_convertvector(S[i][1], kiln_vf), d1 * sc, kiln_ldv(c + i * ldc + KILN_VL)));
        }
    }
}

/* GEMV pass (decode, R <= 4 rows of one strip of R rows): one panel w (at its first
 * super-block) into t[r * ldt + j], one sequential stream as KILN_QI_GEMV's. A super-block's
 * d, dmin and m are loaded first (the lines asked for in address order), each group's scales
 * where used; a group's dot split into CH integer chains (quads qd % CH) for latency. No
 * software prefetch at any row count: unlike the 24-byte groups, 4 groups ahead cost 3 and 4
 * rows 15-35% here (scripts/bench-qgemv.sh, ROWS=3: 31-36 GB/s with, 38-50 without). */
static inline __attribute__((always_inline)) void kiln_qi_gemv_q4k(const int q5, const int R, const uint8_t *restrict qa,
        const uint8_t *restrict w, int64_t G, float *restrict t, int64_t ldt) {
    const int CH = R == 1 ? 4 : R == 2 ? 2 : 1;
    kiln_vf acc[4][2];
    _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = (kiln_vf){0};
    for (int64_t b = 0; b < G / 8; ++b) {
        const uint8_t *sb = w + b * KILN_SBI_K(q5), *ab = qa + b * 8 * 40 * R;
        const float *sa = (const float *)(const void *)(ab + 32 * R);
        {
            kiln_vf d0, d1, n0, n1;
            kiln_q4k_dmin(sb, &d0, &d1, &n0, &n1);
            _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) {
                kiln_vi mi0, mi1;
                kiln_q4k_mins(sb, (const int32_t *)(const void *)(ab + 36 * R) + r, 10 * R, &mi0, &mi1);
                const kiln_vf sc = kiln_splatv(sa[r]);
                acc[r][0] = KILN_FMAV(__builtin_convertvector(mi0, kiln_vf), n0 * sc, acc[r][0]);
                acc[r][1] = KILN_FMAV(__builtin_convertvector(mi1, kiln_vf), n1 * sc, acc[r][1]);
            }
        }
        kiln_vi S[4][2];
        _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) S[r][0] = S[r][1] = (kiln_vi){0};
        _Pragma("GCC unroll 8") for (int g = 0; g < 8; ++g) {
            const int32_t *aq = (const int32_t *)(const void *)(ab + g * 40 * R);
            kiln_vi ia[4][2], ib[4][2], ic[4][2], id[4][2];
            _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r)
                ia[r][0] = ia[r][1] = ib[r][0] = ib[r][1] = ic[r][0] = ic[r][1] = id[r][0] = id[r][1] = (kiln_vi){0};
            _Pragma("GCC unroll 8") for (int qd = 0; qd < 8; ++qd) {
                kiln_vi w0, w1;
                kiln_qiw_q4k(q5, sb, g, qd, &w0, &w1);
                _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) {
                    const kiln_vi x = kiln_splati(aq[qd * R + r]);
                    if (qd % CH == 0) { ia[r][0] = kiln_dpbusd(ia[r][0], w0, x); ia[r][1] = kiln_dpbusd(ia[r][1], w1, x); }
                    else if (qd % CH == 1) { ib[r][0] = kiln_dpbusd(ib[r][0], w0, x); ib[r][1] = kiln_dpbusd(ib[r][1], w1, x); }
                    else if (qd % CH == 2) { ic[r][0] = kiln_dpbusd(ic[r][0], w0, x); ic[r][1] = kiln_dpbusd(ic[r][1], w1, x); }
                    else { id[r][0] = kiln_dpbusd(id[r][0], w0, x); id[r][1] = kiln_dpbusd(id[r][1], w1, x); }
                }
            }
            const kiln_vi s0 = kiln_ld_i8(sb + KILN_Q4K_SC + g * KILN_NR, 1);
            const kiln_vi s1 = kiln_ld_i8(sb + KILN_Q4K_SC + g * KILN_NR + KILN_VL, 1);
            _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) {
                S[r][0] += s0 * ((ia[r][0] + ib[r][0]) + (ic[r][0] + id[r][0]));
                S[r][1] += s1 * ((ia[r][1] + ib[r][1]) + (ic[r][1] + id[r][1]));
                KILN_IN_REG(S[r][0]); KILN_IN_REG(S[r][1]); /* summed here, not all at the end */
            }
        }
        kiln_vf d0, d1, n0, n1;
        kiln_q4k_dmin(sb, &d0, &d1, &n0, &n1);
        _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) {
            const kiln_vf sc = kiln_splatv(sa[r]);
            acc[r][0] = KILN_FMAV(__builtin_convertvector(S[r][0], kiln_vf), d0 * sc, acc[r][0]);
            acc[r][1] = KILN_FMAV(__builtin_convertvector(S[r][1], kiln_vf), d1 * sc, acc[r][1]);
        }
    }
    _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) {
        kiln_stv(t + r * ldt, acc[r][0]);
        kiln_stv(t + r * ldt + KILN_VL, acc[r][1]);
    }
}

/* One column c of a super-block sb against row s of a strip of sr rows (its super-block at
 * ab): the two FMAs, in the kernels' order, with scalar integers. */
static inline float kiln_q4k_column(const int q5, const uint8_t *sb, int64_t c, const uint8_t *ab,
                                    int64_t sr, int64_t s, float acc) {
    int32_t S = 0, Mi = 0;
    for (int g = 0; g < 8; ++g) {
        const uint8_t *blk = ab + g * 40 * sr;
        int32_t dot = 0, asum = 0;
        for (int kk = 0; kk < 32; ++kk) {
            const int32_t av = (int8_t)blk[((kk / 4) * sr + s) * 4 + kk % 4];
            const uint8_t q = sb[KILN_Q4K_Q + g * KILN_QG(q5) + (kk / 4) * 2 * KILN_NR + (c % (KILN_NR / 2)) * 4 + kk % 4];
            int32_t v = c < KILN_NR / 2 ? q & 15 : q >> 4;
            if (q5) {
                const int64_t bit = (c % (KILN_NR / 2)) * 4 + kk % 4;
                const uint8_t h = sb[KILN_Q4K_Q + g * KILN_QG(q5) + 16 * KILN_NR + (kk / 4) * (KILN_NR / 2) + (c / (KILN_NR / 2)) * (KILN_NR / 4) + bit / 8];
                v |= ((h >> (bit % 8)) & 1) << 4;
            }
            dot += av * v;
            asum += av;
        }
        S += sb[KILN_Q4K_SC + g * KILN_NR + c] * dot;
        Mi += sb[KILN_Q4K_M + (g / 4) * 4 * KILN_NR + 4 * c + g % 4] * asum;
    }
    uint16_t dh, mh;
    memcpy(&dh, sb + 2 * c, 2);
    memcpy(&mh, sb + 2 * KILN_NR + 2 * c, 2);
    float sa;
    memcpy(&sa, ab + 32 * sr + 4 * s, 4);
    acc = fmaf((float)Mi, -kiln_f16_to_f32(mh) * sa, acc);
    return fmaf((float)S, kiln_f16_to_f32(dh) * sa, acc);
}

/* The product tile (as KILN_QI_TILE): the rows quantized once per launch and worker, then the
 * GEMV (up to 4 rows), the micro-kernel, or scalar chains off a panel boundary. Q4_K's and
 * (q5) Q5_K's (kiln_packed_tile_q4_k below, kiln_packed_tile_q5_k in gemm_q5k.h). */
static inline __attribute__((always_inline)) void kiln_packed_tile_k(const int q5, kiln_gemm_ctx *ctx, const float *restrict a, int64_t lda,
                                  const uint8_t *restrict wp, int64_t K, int64_t m0, int64_t tm,
                                  int64_t c0, int64_t tn, float *restrict t, int64_t ldt) {
    const int64_t SR = tm <= 4 ? tm : KILN_QMR, QB = 40 * SR;
    const int64_t G = K / 32, NB = K / 256, PB = NB * KILN_SBI_K(q5), SB = G * QB;
    uint8_t *qa = (uint8_t *)ctx->abuf;
    if (ctx->st->a_src != a || ctx->st->a_m0 != m0) {
        kiln_quantize_a_q4k(a, lda, tm, K, SR, qa);
        ctx->st->a_src = a; ctx->st->a_m0 = m0;
    }
    if (c0 % KILN_NR != 0) {
        for (int64_t i = 0; i < tm; ++i)
            for (int64_t j = 0; j < tn; ++j) {
                const int64_t n = c0 + j;
                const uint8_t *pw = wp + (n / KILN_NR) * PB, *pa = qa + (i / SR) * SB;
                float acc = 0.0f;
                for (int64_t b = 0; b < NB; ++b)
                    acc = kiln_q4k_column(q5, pw + b * KILN_SBI_K(q5), n % KILN_NR, pa + b * 8 * QB, SR, i % SR, acc);
                t[i * ldt + j] = acc;
            }
        return;
    }
    const int64_t p0 = c0 / KILN_NR, np = (tn + KILN_NR - 1) / KILN_NR;
    if (tm <= 4) {
        for (int64_t s = 0; s < np; ++s) {
            const uint8_t *w = wp + (p0 + s) * PB;
            float *ts = t + s * KILN_NR;
            if (tm == 1) kiln_qi_gemv_q4k(q5, 1, qa, w, G, ts, ldt);
            else if (tm == 2) kiln_qi_gemv_q4k(q5, 2, qa, w, G, ts, ldt);
            else if (tm == 3) kiln_qi_gemv_q4k(q5, 3, qa, w, G, ts, ldt);
            else kiln_qi_gemv_q4k(q5, 4, qa, w, G, ts, ldt);
        }
        return;
    }
    const int64_t BC = KILN_KC / 256; /* super-blocks per k block */
    for (int64_t b0 = 0; b0 < NB; b0 += BC) {
        const int64_t nb = kiln_min(BC, NB - b0);
        for (int64_t s = 0; s < np; ++s) {
            const uint8_t *panel = wp + (p0 + s) * PB + b0 * KILN_SBI_K(q5);
            for (int64_t i0 = 0; i0 < tm; i0 += KILN_QMR)
                kiln_qi_ukr_q4k(q5, nb, qa + (i0 / KILN_QMR) * SB + b0 * 8 * KILN_QA_BLOCK, panel,
                                t + i0 * ldt + s * KILN_NR, ldt, b0 > 0);
        }
    }
}

static void kiln_packed_tile_q4_k(kiln_gemm_ctx *ctx, const float *restrict a, int64_t lda,
                                  const uint8_t *restrict wp, int64_t K, int64_t m0, int64_t tm,
                                  int64_t c0, int64_t tn, float *restrict t, int64_t ldt) {
    kiln_packed_tile_k(0, ctx, a, lda, wp, K, m0, tm, c0, tn, t, ldt);
}
#endif
