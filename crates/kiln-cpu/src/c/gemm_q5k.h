/* ---- Q5_K weight panels: Q4_K's plus a plane of fifth bits ------------------------------------
 *
 * Q5_K (ggml): Q4_K's super-block (f16 d, dmin, 6-bit scale and min per 32 values) with 5-bit
 * q (0..31): value = (d * sc) * q - dmin * m, as Q4_K. Both layouts are Q4_K's plus the fifth
 * bits as a bit plane.
 *
 * f32 path (gemm_quant.h's tile and GEMV macros: dequantize, then gemm.h's f32 chains; bit for
 * bit the interpreter's values), per 32-value group: Q4_K's group (the f32 d * sc and dmin * m
 * of each column, the low 4 bits as nibbles), then the fifth bits, 28 bytes per 32 values and
 * column (GGUF 22; Q4_K's f32 group 24):
 *   f32 s[NR] (d * sc) | f32 m[NR] (dmin * m) | low nibbles [32][NR/2] as Q4_K's
 *   | fifth bits [32][NR/8]: row r's NR bits, column c at bit c % 8 of byte c / 8   (28 NR bytes)
 * A row's fifth bits are one word: with AVX-512 two lane masks (a masked add of 16), with AVX2
 * broadcast and shifted per lane (vpsrlvd) to each column.
 *
 * Integer path (AVX-512 VNNI, AVX2): gemm_q4k.h's super-block kernels, 22.5 bytes per 32 values (the
 * end of this file). */
#define KILN_GB_Q5_K (28 * KILN_NR)

static const int32_t kiln_q5_lane[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};

/* Row r (< 32) of group g, columns 0..VL-1 into *lo and VL..NR-1 into *hi. */
static inline __attribute__((always_inline)) void kiln_deq_q5_k(const uint8_t *restrict g, int64_t r, kiln_vf *lo, kiln_vf *hi) {
    const kiln_vi w = kiln_ld_i8(g + 8 * KILN_NR + r * (KILN_NR / 2), 1);
    uint32_t bits = 0;
    memcpy(&bits, g + 24 * KILN_NR + r * (KILN_NR / 8), KILN_NR / 8);
#if defined(KILN_AVX512)
    /* the row's 32 bits are two lane masks: a masked add of 16 per vector (vpaddd {k}) */
    typedef int kiln_q5_v16si __attribute__((vector_size(64)));
    const kiln_q5_v16si lo4 = (kiln_q5_v16si)(w & 15), hi4 = (kiln_q5_v16si)(w >> 4);
    const kiln_q5_v16si sixteen = (kiln_q5_v16si){0} + 16;
    const kiln_vi q0 = (kiln_vi)__builtin_ia32_paddd512_mask(lo4, sixteen, lo4, (unsigned short)bits);
    const kiln_vi q1 = (kiln_vi)__builtin_ia32_paddd512_mask(hi4, sixteen, hi4, (unsigned short)(bits >> 16));
#else
    /* each lane shifts the broadcast bits by its column (vpsrlvd) */
    kiln_vu lane; memcpy(&lane, kiln_q5_lane, sizeof lane);
    const kiln_vu b = (kiln_vu){0} + bits;
    const kiln_vi q0 = (w & 15) | (kiln_vi)(((b >> lane) & 1u) << 4);
    const kiln_vi q1 = (w >> 4) | (kiln_vi)(((b >> (lane + KILN_VL)) & 1u) << 4);
#endif
    const float *s = (const float *)(const void *)g, *m = s + KILN_NR;
    kiln_vf pl = kiln_ldv(s) * __builtin_convertvector(q0, kiln_vf);
    kiln_vf ph = kiln_ldv(s + KILN_VL) * __builtin_convertvector(q1, kiln_vf);
    KILN_IN_REG(pl); KILN_IN_REG(ph); /* no FMA with the subtraction: ggml rounds the product */
    *lo = pl - kiln_ldv(m);
    *hi = ph - kiln_ldv(m + KILN_VL);
}

/* Value (n, k) of the weight, scalar (product columns off a panel boundary). */
static inline float kiln_qat_q5_k(const uint8_t *wp, int64_t K, int64_t n, int64_t k) {
    const uint8_t *g = wp + ((n / KILN_NR) * (K / 32) + k / 32) * KILN_GB_Q5_K;
    const int64_t c = n % KILN_NR, r = k % 32;
    float s, m; memcpy(&s, g + 4 * c, 4); memcpy(&m, g + 4 * KILN_NR + 4 * c, 4);
    const int32_t fifth = (g[24 * KILN_NR + r * (KILN_NR / 8) + c / 8] >> (c % 8)) & 1;
    float p = s * (float)(kiln_qnib(g + 8 * KILN_NR, r, c) | fifth << 4);
    KILN_QKEEP(p);
    return p - m;
}

KILN_QGEMV_PASS(kiln_qgemv_pass_q5_k, KILN_GB_Q5_K, kiln_deq_q5_k)
#if !defined(KILN_QINT8_Q5_K)
KILN_QPACKED_TILE(kiln_packed_tile_q5_k, KILN_GB_Q5_K, kiln_deq_q5_k, kiln_qat_q5_k, kiln_qgemv_pass_q5_k)
#endif

/* ---- Q5_K on the integer path (AVX-512 VNNI, AVX2): gemm_q4k.h's super-block kernels -------
 *
 * Q5_K is Q4_K's super-block with 5-bit q, so it takes Q4_K's integer path unchanged but for
 * the weight operand: activations quantized per 32 values, each group's scaled dot summed in
 * f32, the min sums as one integer per super-block, the same order on every path (a decode row equals the
 * same row of a prefill). Panels: Q4_K's super-block with each group's fifth bits after its
 * nibbles (4 NR bytes a group; 180 NR, 22.5 bytes per 32 values); gemm_q4k.h describes both.
 * The product tile is gemm_quant.h's KILN_QI_TILE over Q4_K's kernels with q5 bound (and on
 * AVX2 kiln_q5k_unpack as its PANEL: the micro-kernel's operands unpacked once per k block). */
#if defined(KILN_QINT8_Q5_K)
#define kiln_column_q5_k(...) kiln_q4k_column(1, __VA_ARGS__)
#define kiln_qi_gemv_q5_k(...) kiln_qi_gemv_q4k(1, __VA_ARGS__)
#define kiln_qi_ukr_q5_k(...) kiln_qi_ukr_q4k(1, __VA_ARGS__)
#if KILN_VL == 8 /* AVX2: the micro-kernel reads the k block's operands unpacked (gemm_q4k.h) */
#define kiln_qi_panel_q5_k kiln_q5k_unpack
#else
#define kiln_qi_panel_q5_k KILN_QI_PANEL_AS_IS
#endif
KILN_QI_TILE(kiln_packed_tile_q5_k, 256, KILN_SBI_Q5_K, KILN_QB32, kiln_quantize_a_q4k, kiln_column_q5_k,
             kiln_qi_gemv_q5_k, kiln_qi_ukr_q5_k, kiln_qi_panel_q5_k)
#endif
