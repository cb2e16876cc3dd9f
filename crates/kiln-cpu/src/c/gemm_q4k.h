/* ---- Q4_K on the integer path (AVX-512 VNNI, AVX2): super-block panels, 18.5 bytes per 32 values
 *
 * AVX-512 with VNNI and AVX2 (KILN_QINT8_Q4_K, the prelude) give the same results bit for
 * bit: the AVX2 GEMV and micro-kernel (below) sum the same exact integers another way.
 * The activations are quantized per 32 values, as for every other type (gemm_quant.h's
 * blocks: sa_g = amax / 127, q = round-half-even(x * (1 / sa_g))). llama.cpp's
 * ggml_vec_dot_q4_K_q8_K quantizes them per 256 (one scale per super-block, q8_K), which puts
 * its logits' error on the GGUF fixtures ~1.5x kiln's per-32 error (rms; tests/gguf_fidelity.rs,
 * docs/benchmarks.md). A Q4_K value is d * sc_g * q - dmin * m_g (q 0..15, sc_g and m_g
 * 6-bit, d and dmin the super-block's f16), so per column and super-block
 *     T  = sum_g fmaf((float)(sc_g * dot_g), sa_g, T),  dot_g = sum_{k in g} q_k a_k
 *     Mi = sum_g m_g * A'_g
 * (sc_g * dot_g an exact integer, vpdpbusd then vpmulld, on AVX2 vpmaddubsw then vpmaddwd: |sc_g * dot_g| <= 63 * 32 * 15 * 127
 * < 2^22, Q5_K's < 2^23, so exact in f32; T in f32, in group order). A'_g is the group's
 * min sum A_g = sa_g * sum(a_g) (f32) as an integer in units of u = max_g |A_g| / 16383 (per
 * row and super-block, round-half-even: |A'_g| <= 16383, 14 bits, an error below 2^-15 of the
 * largest A_g, far under the activations' own rounding), so Mi is an exact integer
 * (|Mi| <= 8 * 63 * 16383 < 2^23), and
 *     y = fmaf((float)Mi, -dmin * u, y);  y = fmaf(T, d, y)
 * in super-block order on every path (micro-kernel, GEMV, scalar columns), so results do not
 * depend on the thread count and a decode row equals the same row of a prefill. Per group
 * that costs one conversion and FMA per 16 columns and row over the per-256 scheme (whose
 * integer S needed one add): the one-row GEMV still streams at the read (bench-qgemv).
 *
 * Mi by vpdpbusd: A'_g is split as 128 h_g + l_g with l_g in 0..127 and h_g in -128..127,
 * both signed bytes; a column's four m_g (u8) of groups 4j..4j+3 are one
 * 32-bit lane, so Mi = 128 sum_g m_g h_g + sum_g m_g l_g is four vpdpbusd per 16 columns.
 *
 * Panels (pack_quant.rs, integer layout), per super-block of NR columns (148 NR bytes):
 *   u16 d[NR] (f16) | u16 dmin[NR] (f16) | u8 m[2][NR][4] (m of group 4j + t at (j, c, t))
 *   | u8 sc[8][NR] | 8 groups x 8 quads x [NR/2][4] nibbles (as Q4_0's integer layout)
 * Activations (the worker's abuf): strips of SR rows, per 32-value group 40 SR bytes as
 * gemm_quant.h's (i32 [8][SR] quads, f32 [SR], 32-bit word [SR]); the f32 is the group's
 * scale sa_g, the word of group j of a super-block: j = 0 the bytes h_0..h_3, j = 1 l_0..l_3,
 * j = 2 h_4..h_7, j = 3 l_4..l_7, j = 4 the f32 u, j > 4 zero.
 *
 * Q5_K (gemm_q5k.h) runs on the same code (the `q5` argument, a constant after inlining): its
 * super-block is Q4_K's with 5-bit q (0..31), so its panel is Q4_K's with each
 * group's nibbles (16 NR bytes) followed by the group's fifth bits (4 NR bytes; 180 NR per
 * super-block, 22.5 bytes per 32 values, the file's 22): quad qd's at 16 NR + NR/2 qd of the
 * group, two 64-bit words (columns 0..15, 16..31), bit 4 j + t the fifth bit of byte (j, t) of
 * that vpdpbusd operand, so a masked byte add of 16 (vpaddb under the word as a k mask; on
 * AVX2 the word's bits spread to bytes by vpshufb and a compare) turns the nibble operand into
 * the 5-bit one (the AVX2 micro-kernel: once per k block and panel, kiln_q5k_unpack).
 * Interleaved per group, not a plane at the end of the super-block: the GEMV then streams one
 * sequential run (with the plane apart, two interleaved streams 4.6 KB apart, it ran at 0.43
 * of a streaming read instead of ~0.9, bench-qgemv). */
#if defined(KILN_QINT8_Q4_K) || defined(KILN_QINT8_Q5_K) /* Q5_K takes these kernels too */
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
#if KILN_VL == 16
typedef char kiln_v64qi __attribute__((vector_size(64)));
#endif
_Static_assert(KILN_KC % 256 == 0, "Q4_K's k blocks are whole super-blocks");

/* Rows [0, tm) of a into quantized strips of sr rows at qa (the layout above; rows past tm up
 * to the strip's end: zeros): each 32-value group as gemm_quant.h's blocks (its own scale
 * sa_g), then per super-block the min sums A_g = sa_g * sum(a_g) as integers in units of
 * u = max_g |A_g| / 16383 (round-half-even) split into the words, u in group 4's word. */
static void kiln_quantize_a_q4k(const float *restrict a, int64_t lda, int64_t tm, int64_t K,
                                int64_t sr, uint8_t *restrict qa) {
    const int64_t G = K / 32, rows = (tm + sr - 1) / sr * sr, qb = 40 * sr;
    for (int64_t i = 0; i < rows; ++i) {
        uint8_t *strip = qa + (i / sr) * G * qb;
        const int64_t s = i % sr;
        for (int64_t b = 0; b < G / 8; ++b) {
            float A[8], amax = 0.0f;
            for (int64_t j = 0; j < 8; ++j) {
                uint8_t *blk = strip + (b * 8 + j) * qb;
                int8_t q[32] = {0};
                float d = 0.0f;
                int32_t sum0 = 0, sum1 = 0;
                if (i < tm) d = kiln_quantize_block(a + i * lda + b * 256 + 32 * j, q, &sum0, &sum1);
                for (int qd = 0; qd < 8; ++qd) memcpy(blk + (qd * sr + s) * 4, q + 4 * qd, 4);
                memcpy(blk + 32 * sr + 4 * s, &d, 4);
                A[j] = d * (float)(sum0 + sum1);
                const float fa = __builtin_fabsf(A[j]);
                amax = fa > amax ? fa : amax;
            }
            const float u = amax / 16383.0f, iu = u != 0.0f ? 1.0f / u : 0.0f;
            uint8_t h[8], l[8];
            for (int64_t j = 0; j < 8; ++j) {
                const int32_t ai = (int32_t)__builtin_rintf(A[j] * iu); /* |ai| <= 16383; to nearest even */
                h[j] = (uint8_t)(int8_t)(ai >> 7); /* arithmetic shift: floor(ai / 128) */
                l[j] = (uint8_t)(ai & 127);
            }
            for (int64_t j = 0; j < 8; ++j) {
                const uint8_t *src = j == 0 ? h : j == 1 ? l : j == 2 ? h + 4 : l + 4;
                uint8_t word[4] = {0, 0, 0, 0};
                if (j < 4) memcpy(word, src, 4);
                if (j == 4) memcpy(word, &u, 4);
                memcpy(strip + (b * 8 + j) * qb + 36 * sr + 4 * s, word, 4);
            }
        }
    }
}

/* A super-block's d and -dmin in f32 (exact: f16 widened), columns 0..VL-1 and VL..NR-1. */
static inline __attribute__((always_inline)) void kiln_q4k_dmin(const uint8_t *restrict sb, kiln_vf *d0,
        kiln_vf *d1, kiln_vf *n0, kiln_vf *n1) {
    const kiln_vu sign = (kiln_vu){0} + 0x80000000u;
    *d0 = kiln_ldhv(sb);
    *d1 = kiln_ldhv(sb + 2 * KILN_VL);
    *n0 = (kiln_vf)((kiln_vu)kiln_ldhv(sb + 4 * KILN_VL) ^ sign);
    *n1 = (kiln_vf)((kiln_vu)kiln_ldhv(sb + 6 * KILN_VL) ^ sign);
}

/* Mi of one row (its super-block's four words hA, lA, hB, lB, `stride` int32 apart) for
 * columns 0..VL-1 and VL..NR-1 of super-block sb. */
static inline __attribute__((always_inline)) void kiln_q4k_mins(const uint8_t *restrict sb, const int32_t *words,
        int64_t stride, kiln_vi *mi0, kiln_vi *mi1) {
    const kiln_vi m00 = kiln_ldvi(sb + KILN_Q4K_M), m01 = kiln_ldvi(sb + KILN_Q4K_M + 4 * KILN_VL);
    const kiln_vi m10 = kiln_ldvi(sb + KILN_Q4K_M + 4 * KILN_NR), m11 = kiln_ldvi(sb + KILN_Q4K_M + 4 * KILN_NR + 4 * KILN_VL);
    const kiln_vi hA = kiln_splati(words[0]), lA = kiln_splati(words[stride]);
    const kiln_vi hB = kiln_splati(words[2 * stride]), lB = kiln_splati(words[3 * stride]);
    const kiln_vi z = (kiln_vi){0};
    *mi0 = kiln_dpbusd(kiln_dpbusd(z, m00, hA), m10, hB) * 128 + kiln_dpbusd(kiln_dpbusd(z, m00, lA), m10, lB);
    *mi1 = kiln_dpbusd(kiln_dpbusd(z, m01, hA), m11, hB) * 128 + kiln_dpbusd(kiln_dpbusd(z, m01, lA), m11, lB);
}

#if KILN_VL == 8
/* AVX2: the 32 bytes of a vpdpbusd-shaped operand (8 columns x 4 values) plus 16 where bit i
 * of `bits` is set (byte i): the word broadcast, each byte's bit picked (vpshufb, then a
 * compare against its bit), 16 where set. */
static inline __attribute__((always_inline)) kiln_vi kiln_q5_fifth(kiln_vi v, uint32_t bits) {
    const kiln_v32qi pick = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                             2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3};
    const kiln_v32qi bit = {1, 2, 4, 8, 16, 32, 64, -128, 1, 2, 4, 8, 16, 32, 64, -128,
                            1, 2, 4, 8, 16, 32, 64, -128, 1, 2, 4, 8, 16, 32, 64, -128};
    const kiln_v32qi b = __builtin_ia32_pshufb256((kiln_v32qi)kiln_splati((int32_t)bits), pick) & bit;
    return v | (kiln_vi)((kiln_v32qi)(b == bit) & 16);
}
#endif

/* Quad qd of group g's q (Q4_K's nibbles; q5: plus the fifth bits): columns 0..VL-1 into *w0,
 * VL..NR-1 into *w1. */
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
#if KILN_VL == 16
    unsigned long long m0, m1;
    memcpy(&m0, qg + 16 * KILN_NR + qd * (KILN_NR / 2), 8);
    memcpy(&m1, qg + 16 * KILN_NR + qd * (KILN_NR / 2) + 8, 8);
    const kiln_v64qi sixteen = (kiln_v64qi){0} + 16;
    const kiln_v64qi lo = (kiln_v64qi)(v & 0x0F0F0F0Fu), hi = (kiln_v64qi)((v >> 4) & 0x0F0F0F0Fu);
    *w0 = (kiln_vi)__builtin_ia32_paddb512_mask(lo, sixteen, lo, m0);
    *w1 = (kiln_vi)__builtin_ia32_paddb512_mask(hi, sixteen, hi, m1);
#else
    uint32_t m0, m1;
    memcpy(&m0, qg + 16 * KILN_NR + qd * (KILN_NR / 2), 4);
    memcpy(&m1, qg + 16 * KILN_NR + qd * (KILN_NR / 2) + 4, 4);
    *w0 = kiln_q5_fifth((kiln_vi)(v & 0x0F0F0F0Fu), m0);
    *w1 = kiln_q5_fifth((kiln_vi)((v >> 4) & 0x0F0F0F0Fu), m1);
#endif
}

/* The GEMVs' (both ISAs') super-block steps for R rows of a strip of R rows (super-block sb,
 * the rows' at ab), on the sums acc[row][column half]: first the min term
 * fmaf((float)Mi, -dmin * u, acc), after the groups fmaf(T, d, acc). */
static inline __attribute__((always_inline)) void kiln_q4k_gemv_mins(const int R, const uint8_t *restrict sb,
        const uint8_t *restrict ab, kiln_vf acc[4][2]) {
    const float *u = (const float *)(const void *)(ab + 4 * 40 * R + 36 * R);
    kiln_vf d0, d1, n0, n1;
    kiln_q4k_dmin(sb, &d0, &d1, &n0, &n1);
    _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) {
        kiln_vi mi0, mi1;
        kiln_q4k_mins(sb, (const int32_t *)(const void *)(ab + 36 * R) + r, 10 * R, &mi0, &mi1);
        const kiln_vf sc = kiln_splatv(u[r]);
        acc[r][0] = KILN_FMAV(__builtin_convertvector(mi0, kiln_vf), n0 * sc, acc[r][0]);
        acc[r][1] = KILN_FMAV(__builtin_convertvector(mi1, kiln_vf), n1 * sc, acc[r][1]);
    }
}
static inline __attribute__((always_inline)) void kiln_q4k_gemv_d(const int R, const uint8_t *restrict sb,
        kiln_vf T[4][2], kiln_vf acc[4][2]) {
    kiln_vf d0, d1, n0, n1;
    kiln_q4k_dmin(sb, &d0, &d1, &n0, &n1);
    _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) {
        acc[r][0] = KILN_FMAV(T[r][0], d0, acc[r][0]);
        acc[r][1] = KILN_FMAV(T[r][1], d1, acc[r][1]);
    }
}

#if KILN_VL == 8
/* ---- AVX2 (KILN_VL 8, 16-column panels): the same integers, summed as i16 ----------------
 * vpmaddubsw multiplies the unsigned q (0..15, Q5_K 0..31) by the signed activation bytes
 * (-127..127) and sums adjacent pairs into i16 lanes, exactly (|2 * 31 * 127| < 2^15); a
 * column's i32 lane holds two of them. Q4_K sums a group's 8 quads in those i16 lanes
 * (|8 * 2 * 15 * 127| = 30480 < 2^15: exact), Q5_K its two runs of 4 quads (31496); then
 * vpmaddwd against the column's scale sc_g in both i16 halves gives sc_g * dot_g in i32 —
 * the same exact integer the VNNI path's vpdpbusd and vpmulld give, so the f32 sequence and
 * the results are the same bit for bit, with one vpmaddubsw and one vpaddw per quad and row
 * where the shared kiln_dpbusd (vpmaddubsw, vpmaddwd, vpaddd) takes three (the steps:
 * gemm_quant.h's kiln_maddubs, kiln_add16, kiln_madd16). */
/* A group's 6-bit scales of KILN_VL columns, each in both i16 halves of its lane. */
static inline kiln_vi kiln_q4k_sc16(const uint8_t *p) {
    const kiln_vi s = kiln_ld_i8(p, 1);
    return s | s << 16;
}
/* One quad's products of row x into a row's i16 runs p[0] (Q5_K: p[1] from quad 4 on). */
#define KILN_Q4K_RUN(q5, qd, p, m)                                                                \
    do {                                                                                           \
        const int run_ = (q5) && (qd) >= 4;                                                        \
        KILN_RUN16((p)[run_], (qd) == 4 * run_, (m));                                              \
        KILN_IN_REG((p)[run_]); /* summed as it goes (GCC's tree of all 8 products spills) */      \
    } while (0)
/* A row's sc_g * dot_g from its runs. */
#define KILN_Q4K_DOT(q5, p, sc16) \
    ((q5) ? kiln_madd16((p)[0], sc16) + kiln_madd16((p)[1], sc16) : kiln_madd16((p)[0], sc16))

/* Q5_K's micro-kernel panels: a k block of the panel with each quad's 5-bit operand
 * (kiln_qiw_q4k's: nibbles plus the fifth bits, 32 bytes a column half) unpacked once into
 * the worker's ctx->bbuf (KILN_QI_TILE's PANEL), so its QMR-row strips (up to KILN_MC / QMR of
 * them) load the operand where each would otherwise merge the fifth bits again (vpshufb,
 * vpand, vpcmpeqb, vpand, vpor per quad and column half: 1.4x Q4_K's micro-kernel time; the
 * integers, so the results, are the same). Per super-block (276 NR bytes):
 *   the panel's d, dmin, m, sc as they are (KILN_Q4K_Q bytes) | operands [half][g][quad][32] */
#define KILN_SBX_Q5_K (KILN_Q4K_Q + 256 * KILN_NR)
#define KILN_Q5X_OP(ch, g, qd) (KILN_Q4K_Q + (((ch) * 8 + (g)) * 8 + (qd)) * (int)sizeof(kiln_vi))
_Static_assert(KILN_KC / 256 * KILN_SBX_Q5_K <= KILN_KC * KILN_NR * (int)sizeof(float), "a k block fits ctx->bbuf");
static inline const uint8_t *kiln_q5k_unpack(kiln_gemm_ctx *ctx, const uint8_t *restrict w, int64_t nsb) {
    uint8_t *x = (uint8_t *)ctx->bbuf;
    for (int64_t b = 0; b < nsb; ++b, w += KILN_SBI_Q5_K) {
        uint8_t *xb = x + b * KILN_SBX_Q5_K;
        memcpy(xb, w, KILN_Q4K_Q);
        for (int g = 0; g < 8; ++g)
            _Pragma("GCC unroll 8") for (int qd = 0; qd < 8; ++qd) {
                kiln_vi w0, w1;
                kiln_qiw_q4k(1, w, g, qd, &w0, &w1);
                memcpy(xb + KILN_Q5X_OP(0, g, qd), &w0, sizeof w0);
                memcpy(xb + KILN_Q5X_OP(1, g, qd), &w1, sizeof w1);
            }
    }
    return x;
}

/* Micro-kernel (as the AVX-512 one below): rows of one activation strip (QMR) x one panel,
 * super-blocks 0..nsb-1, running sums in c; Q5_K's panel as kiln_q5k_unpack leaves it. The
 * panel's two 8-column halves are separate passes (AVX2's 16 registers: a pass holds QMR sums
 * T, QMR i16 runs (Q5_K 2 QMR), the weight operand, the broadcast row and the product). */
static inline __attribute__((always_inline)) void kiln_qi_ukr_q4k(const int q5, int64_t nsb, const uint8_t *restrict qa0,
        const uint8_t *restrict w0, float *restrict c0, int64_t ldc, int load_c) {
    _Pragma("GCC unroll 2") for (int ch = 0; ch < 2; ++ch) {
        float *c = c0 + ch * KILN_VL;
        if (!load_c)
            _Pragma("GCC unroll 8") for (int i = 0; i < KILN_QMR; ++i) kiln_stv(c + i * ldc, (kiln_vf){0});
        const uint8_t *qa = qa0, *w = w0;
        for (int64_t b = 0; b < nsb; ++b, qa += 8 * KILN_QA_BLOCK, w += q5 ? KILN_SBX_Q5_K : KILN_SBI_Q4_K) {
            const float *u = (const float *)(const void *)(qa + 4 * KILN_QA_BLOCK + 36 * KILN_QMR);
            {
                kiln_vf d0, d1, n0, n1;
                kiln_q4k_dmin(w, &d0, &d1, &n0, &n1);
                const kiln_vf n = ch ? n1 : n0;
                _Pragma("GCC unroll 8") for (int i = 0; i < KILN_QMR; ++i) {
                    kiln_vi mi0, mi1;
                    kiln_q4k_mins(w, (const int32_t *)(const void *)(qa + 36 * KILN_QMR) + i, KILN_QA_BLOCK / 4, &mi0, &mi1);
                    const kiln_vf sc = kiln_splatv(u[i]);
                    kiln_stv(c + i * ldc, KILN_FMAV(__builtin_convertvector(ch ? mi1 : mi0, kiln_vf), n * sc, kiln_ldv(c + i * ldc)));
                }
            }
            kiln_vf T[KILN_QMR];
            _Pragma("GCC unroll 8") for (int i = 0; i < KILN_QMR; ++i) T[i] = (kiln_vf){0};
            for (int g = 0; g < 8; ++g) {
                const int32_t *aq = (const int32_t *)(const void *)(qa + g * KILN_QA_BLOCK);
                const float *sa = (const float *)(const void *)(qa + g * KILN_QA_BLOCK + 32 * KILN_QMR);
                kiln_vi p[KILN_QMR][2];
                _Pragma("GCC unroll 8") for (int qd = 0; qd < 8; ++qd) {
                    kiln_vi wa, wb;
                    if (q5) wa = wb = kiln_ldvi(w + KILN_Q5X_OP(ch, g, qd));
                    else kiln_qiw_q4k(0, w, g, qd, &wa, &wb);
                    kiln_vi wv = ch ? wb : wa;
                    KILN_IN_REG(wv);
                    _Pragma("GCC unroll 8") for (int i = 0; i < KILN_QMR; ++i)
                        KILN_Q4K_RUN(q5, qd, p[i], kiln_maddubs(wv, kiln_splati(aq[qd * KILN_QMR + i])));
                }
                const kiln_vi s = kiln_q4k_sc16(w + KILN_Q4K_SC + g * KILN_NR + ch * KILN_VL);
                _Pragma("GCC unroll 8") for (int i = 0; i < KILN_QMR; ++i) {
                    T[i] = KILN_FMAV(__builtin_convertvector(KILN_Q4K_DOT(q5, p[i], s), kiln_vf), kiln_splatv(sa[i]), T[i]);
                    KILN_IN_REG(T[i]);
                }
            }
            kiln_vf d0, d1, n0, n1;
            kiln_q4k_dmin(w, &d0, &d1, &n0, &n1);
            _Pragma("GCC unroll 8") for (int i = 0; i < KILN_QMR; ++i)
                kiln_stv(c + i * ldc, KILN_FMAV(T[i], ch ? d1 : d0, kiln_ldv(c + i * ldc)));
        }
    }
}

/* GEMV pass (as the AVX-512 one below: R <= 4 rows of one strip of R rows, one panel, one
 * sequential stream, no software prefetch), both column halves at once, each row's group dot
 * in i16 runs. */
static inline __attribute__((always_inline)) void kiln_qi_gemv_q4k(const int q5, const int R, const uint8_t *restrict qa,
        const uint8_t *restrict w, int64_t G, float *restrict t, int64_t ldt) {
    kiln_vf acc[4][2];
    _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = (kiln_vf){0};
    for (int64_t b = 0; b < G / 8; ++b) {
        const uint8_t *sb = w + b * KILN_SBI_K(q5), *ab = qa + b * 8 * 40 * R;
        kiln_q4k_gemv_mins(R, sb, ab, acc);
        kiln_vf T[4][2];
        _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) T[r][0] = T[r][1] = (kiln_vf){0};
        _Pragma("GCC unroll 8") for (int g = 0; g < 8; ++g) {
            const int32_t *aq = (const int32_t *)(const void *)(ab + g * 40 * R);
            const float *sa = (const float *)(const void *)(ab + g * 40 * R + 32 * R);
            kiln_vi p[4][2][2]; /* [row][column half][run] */
            _Pragma("GCC unroll 8") for (int qd = 0; qd < 8; ++qd) {
                kiln_vi w0, w1;
                kiln_qiw_q4k(q5, sb, g, qd, &w0, &w1);
                _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) {
                    const kiln_vi x = kiln_splati(aq[qd * R + r]);
                    KILN_Q4K_RUN(q5, qd, p[r][0], kiln_maddubs(w0, x));
                    KILN_Q4K_RUN(q5, qd, p[r][1], kiln_maddubs(w1, x));
                }
            }
            const kiln_vi s0 = kiln_q4k_sc16(sb + KILN_Q4K_SC + g * KILN_NR);
            const kiln_vi s1 = kiln_q4k_sc16(sb + KILN_Q4K_SC + g * KILN_NR + KILN_VL);
            _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) {
                const kiln_vf sc = kiln_splatv(sa[r]);
                T[r][0] = KILN_FMAV(__builtin_convertvector(KILN_Q4K_DOT(q5, p[r][0], s0), kiln_vf), sc, T[r][0]);
                T[r][1] = KILN_FMAV(__builtin_convertvector(KILN_Q4K_DOT(q5, p[r][1], s1), kiln_vf), sc, T[r][1]);
                KILN_IN_REG(T[r][0]); KILN_IN_REG(T[r][1]);
            }
        }
        kiln_q4k_gemv_d(R, sb, T, acc);
    }
    _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) {
        kiln_stv(t + r * ldt, acc[r][0]);
        kiln_stv(t + r * ldt + KILN_VL, acc[r][1]);
    }
}
#else
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
        const float *u = (const float *)(const void *)(qa + 4 * KILN_QA_BLOCK + 36 * KILN_QMR);
        {
            kiln_vf d0, d1, n0, n1;
            kiln_q4k_dmin(w, &d0, &d1, &n0, &n1);
            _Pragma("GCC unroll 6") for (int i = 0; i < KILN_QMR; ++i) {
                kiln_vi mi0, mi1;
                kiln_q4k_mins(w, (const int32_t *)(const void *)(qa + 36 * KILN_QMR) + i, KILN_QA_BLOCK / 4, &mi0, &mi1);
                const kiln_vf sc = kiln_splatv(u[i]);
                kiln_stv(c + i * ldc, KILN_FMAV(__builtin_convertvector(mi0, kiln_vf), n0 * sc, kiln_ldv(c + i * ldc)));
                kiln_stv(c + i * ldc + KILN_VL, KILN_FMAV(__builtin_convertvector(mi1, kiln_vf), n1 * sc, kiln_ldv(c + i * ldc + KILN_VL)));
            }
        }
        kiln_vf T[KILN_QMR][2];
        _Pragma("GCC unroll 6") for (int i = 0; i < KILN_QMR; ++i) T[i][0] = T[i][1] = (kiln_vf){0};
        for (int g = 0; g < 8; ++g) {
            const int32_t *aq = (const int32_t *)(const void *)(qa + g * KILN_QA_BLOCK);
            const float *sa = (const float *)(const void *)(qa + g * KILN_QA_BLOCK + 32 * KILN_QMR);
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
                const kiln_vf sc = kiln_splatv(sa[i]);
                T[i][0] = KILN_FMAV(__builtin_convertvector(s0 * ia[i][0], kiln_vf), sc, T[i][0]);
                T[i][1] = KILN_FMAV(__builtin_convertvector(s1 * ia[i][1], kiln_vf), sc, T[i][1]);
                KILN_IN_REG(T[i][0]); KILN_IN_REG(T[i][1]);
            }
        }
        kiln_vf d0, d1, n0, n1;
        kiln_q4k_dmin(w, &d0, &d1, &n0, &n1);
        _Pragma("GCC unroll 6") for (int i = 0; i < KILN_QMR; ++i) {
            kiln_stv(c + i * ldc, KILN_FMAV(T[i][0], d0, kiln_ldv(c + i * ldc)));
            kiln_stv(c + i * ldc + KILN_VL, KILN_FMAV(T[i][1], d1, kiln_ldv(c + i * ldc + KILN_VL)));
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
        kiln_q4k_gemv_mins(R, sb, ab, acc);
        kiln_vf T[4][2];
        _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) T[r][0] = T[r][1] = (kiln_vf){0};
        _Pragma("GCC unroll 8") for (int g = 0; g < 8; ++g) {
            const int32_t *aq = (const int32_t *)(const void *)(ab + g * 40 * R);
            const float *sa = (const float *)(const void *)(ab + g * 40 * R + 32 * R);
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
                const kiln_vf sc = kiln_splatv(sa[r]);
                T[r][0] = KILN_FMAV(__builtin_convertvector(s0 * ((ia[r][0] + ib[r][0]) + (ic[r][0] + id[r][0])), kiln_vf), sc, T[r][0]);
                T[r][1] = KILN_FMAV(__builtin_convertvector(s1 * ((ia[r][1] + ib[r][1]) + (ic[r][1] + id[r][1])), kiln_vf), sc, T[r][1]);
                KILN_IN_REG(T[r][0]); KILN_IN_REG(T[r][1]); /* summed here, not all at the end */
            }
        }
        kiln_q4k_gemv_d(R, sb, T, acc);
    }
    _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) {
        kiln_stv(t + r * ldt, acc[r][0]);
        kiln_stv(t + r * ldt + KILN_VL, acc[r][1]);
    }
}

#endif

/* One column c of a super-block sb against row s of a strip of sr rows (its super-block at
 * ab): the two FMAs, in the kernels' order, with scalar integers. */
static inline float kiln_q4k_column(const int q5, const uint8_t *sb, int64_t c, const uint8_t *ab,
                                    int64_t sr, int64_t s, float acc) {
    int32_t Mi = 0;
    float T = 0.0f;
    for (int g = 0; g < 8; ++g) {
        const uint8_t *blk = ab + g * 40 * sr;
        int32_t dot = 0;
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
        }
        float sa;
        memcpy(&sa, blk + 32 * sr + 4 * s, 4);
        T = fmaf((float)(sb[KILN_Q4K_SC + g * KILN_NR + c] * dot), sa, T);
        /* the group's min sum A_g in units of u: 128 h + l, the bytes of the words */
        const int32_t *words = (const int32_t *)(const void *)(ab + 36 * sr) + s;
        const int64_t wj = (g / 4) * 2, byte = g % 4;
        const int32_t h = (int8_t)((const uint8_t *)(words + wj * 10 * sr))[byte];
        const int32_t l = ((const uint8_t *)(words + (wj + 1) * 10 * sr))[byte];
        Mi += sb[KILN_Q4K_M + (g / 4) * 4 * KILN_NR + 4 * c + g % 4] * (128 * h + l);
    }
    uint16_t dh, mh;
    memcpy(&dh, sb + 2 * c, 2);
    memcpy(&mh, sb + 2 * KILN_NR + 2 * c, 2);
    float u;
    memcpy(&u, ab + 4 * 40 * sr + 36 * sr + 4 * s, 4);
    acc = fmaf((float)Mi, -kiln_f16_to_f32(mh) * u, acc);
    return fmaf(T, kiln_f16_to_f32(dh), acc);
}

/* The product tiles (gemm_quant.h's KILN_QI_TILE) take each kernel with q5 bound: Q4_K's
 * here, Q5_K's in gemm_q5k.h. */
#define kiln_column_q4_k(...) kiln_q4k_column(0, __VA_ARGS__)
#define kiln_qi_gemv_q4_k(...) kiln_qi_gemv_q4k(0, __VA_ARGS__)
#define kiln_qi_ukr_q4_k(...) kiln_qi_ukr_q4k(0, __VA_ARGS__)
#if defined(KILN_QINT8_Q4_K)
KILN_QI_TILE(kiln_packed_tile_q4_k, 256, KILN_SBI_Q4_K, KILN_QB32, kiln_quantize_a_q4k, kiln_column_q4_k,
             kiln_qi_gemv_q4_k, kiln_qi_ukr_q4_k, KILN_QI_PANEL_AS_IS)
#endif
#endif
