/* Scalar helpers shared by kiln's C-family backends (C for the CPU, CUDA C). Each backend's
 * prelude defines KILN_FN (the function qualifiers) and the bit casts kiln_f2u / kiln_u2f
 * first, then includes this text. Semantics match the reference interpreter exactly. */
KILN_FN int64_t kiln_min(int64_t a, int64_t b) { return a < b ? a : b; }
KILN_FN int64_t kiln_max(int64_t a, int64_t b) { return a > b ? a : b; }
KILN_FN int64_t kiln_clamp(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

/* IEEE max that propagates NaN, like the reference interpreter. */
KILN_FN float kiln_fmax(float a, float b) { return (a != a || b != b) ? NAN : (a > b ? a : b); }
KILN_FN int32_t kiln_imax(int32_t a, int32_t b) { return a > b ? a : b; }
/* Wrapping i32 arithmetic (C signed overflow is undefined). */
KILN_FN int32_t kiln_iadd(int32_t a, int32_t b) { return (int32_t)((uint32_t)a + (uint32_t)b); }
KILN_FN int32_t kiln_imul(int32_t a, int32_t b) { return (int32_t)((uint32_t)a * (uint32_t)b); }
KILN_FN int32_t kiln_ineg(int32_t a) { return (int32_t)(0u - (uint32_t)a); }
KILN_FN int32_t kiln_imod(int32_t a, int32_t b) { return (b == 0 || b == -1) ? 0 : a % b; }
/* float -> i32 as Rust's `v as i64 as i32`: truncate, saturate to i64, wrap to i32; NaN -> 0. */
KILN_FN int32_t kiln_f2i(float v) {
    if (v != v) return 0;
    if (v >= 9.2233720368547758e18f) return (int32_t)(uint32_t)INT64_MAX;
    if (v <= -9.2233720368547758e18f) return (int32_t)(uint32_t)(uint64_t)INT64_MIN;
    return (int32_t)(uint32_t)(uint64_t)(int64_t)v;
}

/* bf16 and f16 conversions, round to nearest even (the same algorithms as Rust's `half`). */
KILN_FN float kiln_bf16_to_f32(uint16_t h) { return kiln_u2f((uint32_t)h << 16); }
KILN_FN uint16_t kiln_f32_to_bf16(float f) {
    uint32_t x = kiln_f2u(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x0040u);
    const uint32_t r = 0x8000u;
    return (uint16_t)((x >> 16) + (((x & r) != 0 && (x & (3u * r - 1u)) != 0) ? 1u : 0u));
}
KILN_FN float kiln_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, u;
    if (exp == 0) { float v = (float)man * 5.9604644775390625e-8f; return sign ? -v : v; }
    if (exp == 0x1f) u = sign | 0x7f800000u | (man ? (0x400000u | (man << 13)) : 0u);
    else u = sign | ((exp + 112u) << 23) | (man << 13);
    return kiln_u2f(u);
}
KILN_FN uint16_t kiln_f32_to_f16(float f) {
    uint32_t x = kiln_f2u(f);
    uint32_t sign = x & 0x80000000u, exp = x & 0x7f800000u, man = x & 0x007fffffu;
    if (exp == 0x7f800000u) return (uint16_t)((sign >> 16) | 0x7c00u | (man ? 0x0200u : 0u) | (man >> 13));
    uint32_t hsign = sign >> 16;
    int32_t hexp = (int32_t)(exp >> 23) - 127 + 15;
    if (hexp >= 0x1f) return (uint16_t)(hsign | 0x7c00u);
    if (hexp <= 0) {
        if (14 - hexp > 24) return (uint16_t)hsign;
        uint32_t m = man | 0x00800000u;
        uint32_t hman = m >> (14 - hexp);
        uint32_t r = 1u << (13 - hexp);
        if ((m & r) != 0 && (m & (3u * r - 1u)) != 0) hman += 1;
        return (uint16_t)(hsign | hman);
    }
    uint32_t h = hsign | ((uint32_t)hexp << 10) | (man >> 13);
    const uint32_t r = 0x1000u;
    if ((man & r) != 0 && (man & (3u * r - 1u)) != 0) h += 1;
    return (uint16_t)h;
}
KILN_FN float kiln_round_f16(float v) { return kiln_f16_to_f32(kiln_f32_to_f16(v)); }
KILN_FN float kiln_round_bf16(float v) { return kiln_bf16_to_f32(kiln_f32_to_bf16(v)); }


/* Element e (a flat, row-major index; rows of whole blocks) of a tensor of GGML blocks, in the
 * file's byte layout, dequantized exactly as ggml does (kiln-ir's quant.rs): the f16 scale to
 * f32, then d * q, or (d * sc) * q - dmin * m for Q4_K and Q5_K, or (d * sc) * (q - 32) for Q6_K. The GPU matmul kernels read
 * block-quantized weights through these one element at a time, and every backend's gather
 * reads a quantized embedding table through them. Blocks: Q8_0 34 bytes (f16 d, 32 x i8),
 * Q4_0 18 bytes (f16 d, 16 bytes of nibbles: low nibbles values 0..16, high 16..32), Q4_K 144
 * bytes (f16 d, f16 dmin, 12 bytes of 6-bit scales and mins, 128 bytes of nibbles in 4 groups
 * of 64 values), Q5_K 176 bytes (Q4_K's 16 bytes of scales, 32 bytes of fifth bits: bit j of
 * byte l for value l of sub-block j, then Q4_K's 128 bytes of nibbles), Q6_K 210 bytes (128 bytes of low nibbles, 64 of high bit pairs, 16 x i8
 * scales of 16 values each, f16 d). signed char, not int8_t: NVRTC's headers lack it. */
KILN_FN float kiln_f16_at(const uint8_t *p) { return kiln_f16_to_f32((uint16_t)(p[0] | (p[1] << 8))); }
KILN_FN float kiln_q8_0_at(const uint8_t *w, int64_t e) {
    const uint8_t *b = w + (e >> 5) * 34;
    return (float)(signed char)b[2 + (e & 31)] * kiln_f16_at(b);
}
KILN_FN float kiln_q4_0_at(const uint8_t *w, int64_t e) {
    const uint8_t *b = w + (e >> 5) * 18;
    const int j = (int)(e & 31);
    const int q = j < 16 ? (b[2 + j] & 0x0F) : (b[2 + j - 16] >> 4);
    return (float)(q - 8) * kiln_f16_at(b);
}
KILN_FN float kiln_q4_k_at(const uint8_t *w, int64_t e) {
    const uint8_t *b = w + (e >> 8) * 144;
    const uint8_t *s = b + 4;
    const int i = (int)(e & 255), j = i >> 5, l = i & 63;
    /* ggml's get_scale_min_k4 for sub-block j. */
    const int sc = j < 4 ? (s[j] & 63) : ((s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4));
    const int m = j < 4 ? (s[j + 4] & 63) : ((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    const uint8_t byte = b[16 + 32 * (i >> 6) + (l & 31)];
    const int q = l < 32 ? (byte & 0x0F) : (byte >> 4);
    /* Both products rounded before the subtraction, as ggml computes them: no fused
     * multiply-add (the kernels are compiled with contraction allowed). */
    volatile float scaled = kiln_f16_at(b) * (float)sc * (float)q;
    volatile float shift = kiln_f16_at(b + 2) * (float)m;
    return scaled - shift;
}
KILN_FN float kiln_q5_k_at(const uint8_t *w, int64_t e) {
    const uint8_t *b = w + (e >> 8) * 176;
    const uint8_t *s = b + 4;
    const int i = (int)(e & 255), j = i >> 5, l = i & 63;
    const int sc = j < 4 ? (s[j] & 63) : ((s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4));
    const int m = j < 4 ? (s[j + 4] & 63) : ((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    const uint8_t byte = b[48 + 32 * (i >> 6) + (l & 31)];
    const int q = (l < 32 ? (byte & 0x0F) : (byte >> 4)) | (((b[16 + (i & 31)] >> j) & 1) << 4);
    /* As Q4_K: both products rounded before the subtraction. */
    volatile float scaled = kiln_f16_at(b) * (float)sc * (float)q;
    volatile float shift = kiln_f16_at(b + 2) * (float)m;
    return scaled - shift;
}
KILN_FN float kiln_q6_k_at(const uint8_t *w, int64_t e) {
    const uint8_t *b = w + (e >> 8) * 210;
    /* Half h of 128 values; within it, quarter k takes nibble k / 2 of ql[l + 32 (k % 2)] and
     * bit pair k of qh[l]; 16-value sub-block (l / 16) + 2 k of the half has the scale. */
    const int i = (int)(e & 255), h = i >> 7, k = (i >> 5) & 3, l = i & 31;
    const int low = (b[64 * h + l + 32 * (k & 1)] >> (4 * (k >> 1))) & 0x0F;
    const int high = (b[128 + 32 * h + l] >> (2 * k)) & 3;
    const int sc = (signed char)b[192 + 8 * h + (l >> 4) + 2 * k];
    return kiln_f16_at(b + 208) * (float)sc * (float)((low | (high << 4)) - 32);
}
