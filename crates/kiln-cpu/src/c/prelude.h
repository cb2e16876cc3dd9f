/* kiln CPU kernel prelude: included once at the top of every translation unit. */
#include <stdint.h>
/* The C library functions kernels call, declared here instead of including <math.h> and
 * <string.h>: parsing those two was a sixth of a small unit's compile (issue 27: every compile
 * unit parses the prelude). GCC knows each by name (the same builtins, the same code); the
 * macros are glibc's own. Declare here any other the kernels or headers come to call. */
void *memcpy(void *__restrict, const void *__restrict, __SIZE_TYPE__);
void *memset(void *, int, __SIZE_TYPE__);
float fmaf(float, float, float);
float exp2f(float);
float log2f(float);
float sinf(float);
float sqrtf(float);
float fmodf(float, float);
#define INFINITY (__builtin_inff ())
#define NAN (__builtin_nanf (""))

#define KILN_FN static inline
static inline uint32_t kiln_f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float kiln_u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
/* KILN_CSTYLE_HELPERS */

/* ---- the vector ISA ----------------------------------------------------------------------
 * AVX-512 (F, BW, DQ, VL: every AVX-512 CPU since Skylake-SP and Zen 4) gives 16-lane vectors
 * and 32-column weight panels; anything else 8-lane vectors (AVX2 registers, or what GCC
 * makes of them elsewhere) and 16-column panels. kiln-cpu (cc.rs) picks the panel width
 * KILN_NR from the same choice (KILN_CPU_ISA=avx2 adds -mno-avx512f), and packs weights to
 * it; a mismatch would read panels with the wrong stride, so it stops the compile. */
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
#define KILN_AVX512 1
#define KILN_VL 16
#else
#define KILN_VL 8
#endif
#if defined(KILN_AVX512) != (KILN_NR == 32)
#error "kiln-cpu: KILN_NR does not match the vector ISA the compiler targets (32-column panels go with AVX-512)"
#endif
/* What the device packs weights to for this module's kernels (read by name, device.rs). */
const int kiln_panel_columns = KILN_NR;
/* Quantized weights on the integer path (gemm_quant.h: activations quantized to int8, exact
 * integer dots): KILN_QINT8 where its primitives exist (kiln_dpbusd and the activation
 * quantizers: AVX-512 with VNNI, vpdpbusd; or AVX2, vpmaddubsw + vpmaddwd), and
 * KILN_QINT8_<TYPE> for each type whose integer kernels this ISA has; the others dequantize to
 * f32. kiln-cpu forces the f32-dequantizing kernels with KILN_CPU_QUANT=dequant (which adds
 * -DKILN_QUANT_DEQUANT). The Rust side (isa.rs, Int8Types) holds the same table. */
#if !defined(KILN_QUANT_DEQUANT) && defined(KILN_AVX512) && defined(__AVX512VNNI__)
#define KILN_QINT8 1
#define KILN_QINT8_Q8_0 1
#define KILN_QINT8_Q4_0 1
#define KILN_QINT8_Q4_K 1
#define KILN_QINT8_Q5_K 1
#define KILN_QINT8_Q6_K 1
#elif !defined(KILN_QUANT_DEQUANT) && !defined(KILN_AVX512) && defined(__AVX2__)
#define KILN_QINT8 1
#define KILN_QINT8_Q4_0 1 /* the AVX2 kernels of gemm_quant.h (Q4_0), gemm_q4k.h (Q4_K, Q5_K), gemm_q6k.h */
#define KILN_QINT8_Q4_K 1
#define KILN_QINT8_Q5_K 1
#define KILN_QINT8_Q6_K 1
#endif
/* The types on the integer path as a bit mask (bit 0 Q8_0, 1 Q4_0, 2 Q4_K, 3 Q5_K, 4 Q6_K):
 * the device packs those weights in the integer layout (read by name, device.rs). */
#if defined(KILN_QINT8_Q8_0)
#define KILN_QBIT_Q8_0 1
#else
#define KILN_QBIT_Q8_0 0
#endif
#if defined(KILN_QINT8_Q4_0)
#define KILN_QBIT_Q4_0 2
#else
#define KILN_QBIT_Q4_0 0
#endif
#if defined(KILN_QINT8_Q4_K)
#define KILN_QBIT_Q4_K 4
#else
#define KILN_QBIT_Q4_K 0
#endif
#if defined(KILN_QINT8_Q5_K)
#define KILN_QBIT_Q5_K 8
#else
#define KILN_QBIT_Q5_K 0
#endif
#if defined(KILN_QINT8_Q6_K)
#define KILN_QBIT_Q6_K 16
#else
#define KILN_QBIT_Q6_K 0
#endif
const int kiln_quant_int8 = KILN_QBIT_Q8_0 | KILN_QBIT_Q4_0 | KILN_QBIT_Q4_K | KILN_QBIT_Q5_K | KILN_QBIT_Q6_K;

/* ---- matmul building blocks (f32) ------------------------------------------------------- */
typedef float kiln_v8 __attribute__((vector_size(32)));
static inline kiln_v8 kiln_ld8(const float *p) { kiln_v8 v; memcpy(&v, p, 32); return v; }
static inline float kiln_hsum8(kiln_v8 v) { return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7])); }
/* Keeps a loaded vector in a register: GCC otherwise folds the load into every FMA that uses
 * it, and a micro-kernel whose loads are each used twice becomes bound by its loads. "v" is
 * any of the 32 vector registers with AVX-512 (up to 64 bytes); "x" holds a 32-byte vector
 * only with AVX. */
#if defined(__x86_64__) && defined(KILN_AVX512)
#define KILN_IN_REG(v) __asm__("" : "+v"(v))
#elif defined(__x86_64__) && defined(__AVX__)
#define KILN_IN_REG(v) __asm__("" : "+x"(v))
#else
#define KILN_IN_REG(v) ((void)0)
#endif

/* The widest vector: KILN_VL f32 lanes (kiln_vf), the same number of i32 lanes (kiln_vi). */
typedef float kiln_vf __attribute__((vector_size(KILN_VL * 4)));
typedef int32_t kiln_vi __attribute__((vector_size(KILN_VL * 4)));
typedef uint16_t kiln_vh __attribute__((vector_size(KILN_VL * 2)));
typedef uint32_t kiln_vu __attribute__((vector_size(KILN_VL * 4)));
static inline kiln_vf kiln_ldv(const float *p) { kiln_vf v; memcpy(&v, p, sizeof v); return v; }
static inline void kiln_stv(float *p, kiln_vf v) { memcpy(p, &v, sizeof v); }
/* Every lane x (one vbroadcastss; `(kiln_vf){0} + x` would add first: 0 + -0 is +0). */
static inline kiln_vf kiln_splatv(float x) {
#if KILN_VL == 16
    return (kiln_vf){x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x};
#else
    return (kiln_vf){x, x, x, x, x, x, x, x};
#endif
}
/* a * b + c rounded once, lane by lane (kiln_fmav) and for one float (kiln_fma1), written out
 * for the sums that must come out the same on every path (the attention's Q K^T and P V):
 * left to -ffp-contract, GCC fuses `c += a * b` or not depending on how it vectorizes the loop
 * around it (the AVX2 NT product's last keys, vectorized across rows, had the product and
 * the sum split by shuffles and so rounded twice: a decode row got other bits than the same
 * row of a prompt). Without an FMA instruction nothing is fused, so plain a * b + c is exact. */
#if defined(KILN_AVX512)
static inline kiln_vf kiln_fmav(kiln_vf a, kiln_vf b, kiln_vf c) { return __builtin_ia32_vfmaddps512_mask(a, b, c, (unsigned short)-1, 4); }
#elif defined(__AVX__) && defined(__FMA__)
static inline kiln_vf kiln_fmav(kiln_vf a, kiln_vf b, kiln_vf c) { return __builtin_ia32_vfmaddps256(a, b, c); }
#elif defined(__FMA__)
static inline kiln_vf kiln_fmav(kiln_vf a, kiln_vf b, kiln_vf c) {
    for (int l = 0; l < KILN_VL; ++l) c[l] = __builtin_fmaf(a[l], b[l], c[l]);
    return c;
}
#else
static inline kiln_vf kiln_fmav(kiln_vf a, kiln_vf b, kiln_vf c) { return a * b + c; }
#endif
#if defined(__FMA__)
static inline float kiln_fma1(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
#else
static inline float kiln_fma1(float a, float b, float c) { return a * b + c; }
#endif
/* The lanes' sum in a fixed order: the halves added lane by lane, then kiln_hsum8. */
static inline float kiln_hsumv(kiln_vf v) {
#if KILN_VL == 16
    kiln_v8 lo, hi;
    memcpy(&lo, &v, 32); memcpy(&hi, (const char *)&v + 32, 32);
    return kiln_hsum8(lo + hi);
#else
    return kiln_hsum8(v);
#endif
}
/* kiln_hsumv of four vectors at once, each summed in exactly kiln_hsumv's order (the
 * shuffles move lanes, the additions are the same pairs): out[i] = kiln_hsumv(v_i). */
typedef int32_t kiln_i8 __attribute__((vector_size(32)));
static inline void kiln_hsum4v(kiln_vf a, kiln_vf b, kiln_vf c, kiln_vf d, float *out) {
    kiln_v8 a8, b8, c8, d8;
#if KILN_VL == 16
    kiln_v8 h;
    memcpy(&a8, &a, 32); memcpy(&h, (const char *)&a + 32, 32); a8 += h;
    memcpy(&b8, &b, 32); memcpy(&h, (const char *)&b + 32, 32); b8 += h;
    memcpy(&c8, &c, 32); memcpy(&h, (const char *)&c + 32, 32); c8 += h;
    memcpy(&d8, &d, 32); memcpy(&h, (const char *)&d + 32, 32); d8 += h;
#else
    a8 = a; b8 = b; c8 = c; d8 = d;
#endif
    /* Lanes i and i + 4 of each, two vectors per register: (v0+v4, v1+v5, v2+v6, v3+v7). */
    const kiln_i8 lo = {0, 1, 2, 3, 8, 9, 10, 11}, hi = {4, 5, 6, 7, 12, 13, 14, 15};
    const kiln_v8 ab = __builtin_shuffle(a8, b8, lo) + __builtin_shuffle(a8, b8, hi);
    const kiln_v8 cd = __builtin_shuffle(c8, d8, lo) + __builtin_shuffle(c8, d8, hi);
    /* (s0+s1) and (s2+s3), then their sum: kiln_hsum8's tree. */
    const kiln_i8 ev = {0, 2, 8, 10, 4, 6, 12, 14}, od = {1, 3, 9, 11, 5, 7, 13, 15};
    const kiln_v8 h1 = __builtin_shuffle(ab, cd, ev) + __builtin_shuffle(ab, cd, od);
    const kiln_v8 h2 = __builtin_shuffle(h1, h1, ev) + __builtin_shuffle(h1, h1, od);
    out[0] = h2[0]; out[1] = h2[4]; out[2] = h2[1]; out[3] = h2[5];
}
/* kiln_hsumv of KILN_VL vectors at once, each summed in exactly kiln_hsumv's tree (lanes l
 * and l + 8, then l and l + 4, then the adjacent pairs, then the pairs of pairs; the shuffles
 * move lanes, the additions are the same pairs), for a KILN_MMT_ROWS x KILN_MMT_KEYS tile of
 * the NT product: v[n * ROWS + r] is the products' vector of (row r, key n); returns the sums
 * with (r, n) at lane r * KEYS + n, each row's keys side by side. A tile of sums costs
 * 2 VL - 1 additions and twice as many shuffles, where kiln_hsum4v takes about 5 per sum. */
#if KILN_VL == 16
#define KILN_MMT_ROWS 4
typedef int32_t kiln_vperm __attribute__((vector_size(64)));
static inline kiln_vf kiln_hsum_tile(const kiln_vf *v) {
    const kiln_vperm h0 = {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23},
                     h1 = {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31},
                     q0 = {0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27},
                     q1 = {4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31},
                     ev = {0, 2, 16, 18, 4, 6, 20, 22, 8, 10, 24, 26, 12, 14, 28, 30},
                     od = {1, 3, 17, 19, 5, 7, 21, 23, 9, 11, 25, 27, 13, 15, 29, 31};
    kiln_vf b[8], c[4], d[2];
    /* b[p]: v[2p] then v[2p+1], each folded to 8 lanes (l + l+8). */
    for (int p = 0; p < 8; ++p) b[p] = __builtin_shuffle(v[2 * p], v[2 * p + 1], h0) + __builtin_shuffle(v[2 * p], v[2 * p + 1], h1);
    /* c[p]: quarters v[4p] .. v[4p+3], each folded to 4 lanes (l + l+4). */
    for (int p = 0; p < 4; ++p) c[p] = __builtin_shuffle(b[2 * p], b[2 * p + 1], q0) + __builtin_shuffle(b[2 * p], b[2 * p + 1], q1);
    /* d[p], quarter q: (w0+w1, w2+w3) of v[8p+q], then of v[8p+4+q]. */
    for (int p = 0; p < 2; ++p) d[p] = __builtin_shuffle(c[2 * p], c[2 * p + 1], ev) + __builtin_shuffle(c[2 * p], c[2 * p + 1], od);
    /* quarter q, lane j: the sum of v[4j + q] = (row q, key j). */
    return __builtin_shuffle(d[0], d[1], ev) + __builtin_shuffle(d[0], d[1], od);
}
#else
#define KILN_MMT_ROWS 2
typedef int32_t kiln_vperm __attribute__((vector_size(32)));
static inline kiln_vf kiln_hsum_tile(const kiln_vf *v) {
    const kiln_vperm h0 = {0, 1, 2, 3, 8, 9, 10, 11}, h1 = {4, 5, 6, 7, 12, 13, 14, 15},
                     ev = {0, 2, 8, 10, 4, 6, 12, 14}, od = {1, 3, 9, 11, 5, 7, 13, 15};
    kiln_vf b[4], c[2];
    /* b[p]: v[2p] then v[2p+1], each folded to 4 lanes (l + l+4). */
    for (int p = 0; p < 4; ++p) b[p] = __builtin_shuffle(v[2 * p], v[2 * p + 1], h0) + __builtin_shuffle(v[2 * p], v[2 * p + 1], h1);
    /* c[p], half h: (w0+w1, w2+w3) of v[4p+h], then of v[4p+2+h]. */
    for (int p = 0; p < 2; ++p) c[p] = __builtin_shuffle(b[2 * p], b[2 * p + 1], ev) + __builtin_shuffle(b[2 * p], b[2 * p + 1], od);
    /* half h, lane j: the sum of v[2j + h] = (row h, key j). */
    return __builtin_shuffle(c[0], c[1], ev) + __builtin_shuffle(c[0], c[1], od);
}
#endif
#define KILN_MMT_KEYS (KILN_VL / KILN_MMT_ROWS)
/* KILN_VL bf16 values widened to f32: zero-extend to 32 bits, shift into the high half.
 * With AVX-512 and AVX2 through the builtin of one vpmovzxwd: GCC 12 lowers the generic
 * conversion of a whole register into two half-width ones and an insert. */
static inline kiln_vf kiln_ldbfv(const uint16_t *p) {
    kiln_vh h; memcpy(&h, p, sizeof h);
#if defined(KILN_AVX512)
    typedef short kiln_v16hi __attribute__((vector_size(32)));
    typedef int kiln_v16si __attribute__((vector_size(64)));
    kiln_vu w = (kiln_vu)__builtin_ia32_pmovzxwd512_mask((kiln_v16hi)h, (kiln_v16si){0}, (unsigned short)-1) << 16;
#elif defined(__AVX2__)
    typedef short kiln_v8hi __attribute__((vector_size(16)));
    kiln_vu w = (kiln_vu)__builtin_ia32_pmovzxwd256((kiln_v8hi)h) << 16;
#else
    kiln_vu w = __builtin_convertvector(h, kiln_vu) << 16;
#endif
    kiln_vf f; memcpy(&f, &w, sizeof f); return f;
}
/* KILN_VL f16 values widened to f32, exactly (vcvtph2ps: AVX-512F, or F16C with AVX2): the
 * quantized blocks' scales, and an f16 KV cache's keys and values (kiln_mm_nt_f16,
 * kiln_att_pv_f16). */
static inline kiln_vf kiln_ldhv(const void *p) {
    kiln_vh h; memcpy(&h, p, sizeof h);
#if defined(KILN_AVX512)
    typedef short kiln_v16hi __attribute__((vector_size(32)));
    return __builtin_ia32_vcvtph2ps512_mask((kiln_v16hi)h, (kiln_vf){0}, (unsigned short)-1, 4);
#elif defined(__F16C__) && KILN_VL == 8
    typedef short kiln_v8hi __attribute__((vector_size(16)));
    return __builtin_ia32_vcvtph2ps256((kiln_v8hi)h);
#else
    kiln_vf f;
    for (int l = 0; l < KILN_VL; ++l) f[l] = kiln_f16_to_f32(h[l]);
    return f;
#endif
}
/* A row of a bf16 weight panel (KILN_NR = 2 KILN_VL values, packed in the order of
 * kiln_bf16_pos, pack.rs) widened to f32: columns 0..VL-1 and VL..2VL-1. Each is one
 * vpunpcklwd / vpunpckhwd against zero (bf16 in the high half of a zero f32 is its f32
 * value), which works within 128-bit lanes: the packing put column 4L + i of each half at
 * position 8L + i (low half) and 8L + 4 + i (high half). One in-lane shuffle per vector,
 * where vpmovzxwd + vpslld are two, one of them across lanes: the bf16 GEMV streams ~6%
 * faster (two cores of a Zen 4, 300 MB). */
#if KILN_VL == 16
typedef short kiln_vpanel __attribute__((vector_size(64)));
#define KILN_UNPACK_LO {0, 32, 1, 33, 2, 34, 3, 35, 8, 40, 9, 41, 10, 42, 11, 43, 16, 48, 17, 49, 18, 50, 19, 51, 24, 56, 25, 57, 26, 58, 27, 59}
#define KILN_UNPACK_HI {4, 36, 5, 37, 6, 38, 7, 39, 12, 44, 13, 45, 14, 46, 15, 47, 20, 52, 21, 53, 22, 54, 23, 55, 28, 60, 29, 61, 30, 62, 31, 63}
#else
typedef short kiln_vpanel __attribute__((vector_size(32)));
#define KILN_UNPACK_LO {0, 16, 1, 17, 2, 18, 3, 19, 8, 24, 9, 25, 10, 26, 11, 27}
#define KILN_UNPACK_HI {4, 20, 5, 21, 6, 22, 7, 23, 12, 28, 13, 29, 14, 30, 15, 31}
#endif
static inline kiln_vf kiln_ldbf_panel_lo(const uint16_t *row) {
    kiln_vpanel h; memcpy(&h, row, sizeof h);
    const kiln_vpanel w = __builtin_shuffle((kiln_vpanel){0}, h, (kiln_vpanel)KILN_UNPACK_LO);
    kiln_vf f; memcpy(&f, &w, sizeof f); return f;
}
static inline kiln_vf kiln_ldbf_panel_hi(const uint16_t *row) {
    kiln_vpanel h; memcpy(&h, row, sizeof h);
    const kiln_vpanel w = __builtin_shuffle((kiln_vpanel){0}, h, (kiln_vpanel)KILN_UNPACK_HI);
    kiln_vf f; memcpy(&f, &w, sizeof f); return f;
}
/* Where column j (< KILN_NR) of a bf16 panel row is stored (pack.rs: bf16_position). */
static inline int64_t kiln_bf16_pos(int64_t j) {
    const int64_t half = KILN_NR / 2, h = j >= half, c = j - h * half;
    return (c / 4) * 8 + h * 4 + c % 4;
}

/* c[m, n] = sum_k a[m*lda + k] * b[n*ldb + k]: both operands contiguous along k ("NT"),
 * the layout of Q K^T. 2x4 register blocks of KILN_VL-wide accumulators; at most two rows
 * (decode attention), one row of B at a time: B then streams from memory in address order,
 * where the blocks' four interleaved rows read at less than half the speed (a KV cache of
 * 1536 keys on a Zen 4 core: 0.62 -> 0.28 ms per layer). Each (m, n) is summed in the same
 * order on every path: one KILN_VL-wide FMA chain over k, kiln_hsumv, then the scalar tail's
 * FMAs, explicit (kiln_fmav and kiln_fma1): left to contraction, `s += a * b` became an FMA or
 * not depending on whether GCC's loop vectoriser ran and how it shuffled lanes (runtime.rs
 * compiles these without the vectoriser: it spent ~0.1 s on the tails). */
#define KILN_ID(x) (x)
#define KILN_MM_NT_TILES(NAME, BT, LDBV, LDB1) \
/* Rows 0..M-1 (M a multiple of KILN_MMT_ROWS) by keys 0..N-1 (N a multiple of 4): tiles of rows x 4 keys, \
 * their sums over k < KV (the K tail and the keys left: KILN_MM_NT's own loops). */ \
static void NAME##_tiles(const float *restrict a, int64_t lda, const BT *restrict b, int64_t ldb, \
                       float *restrict c, int64_t ldc, int64_t M, int64_t N, int64_t K) { \
    const int64_t KV = K - K % KILN_VL; \
    int64_t n = 0; \
    for (; n + 4 <= N; n += 4) { \
        const BT *b0 = b + n * ldb, *b1 = b0 + ldb, *b2 = b1 + ldb, *b3 = b2 + ldb; \
        int64_t m = 0; \
        for (; m + KILN_MMT_ROWS <= M; m += KILN_MMT_ROWS) { /* a tile: rows x 4 keys */ \
            kiln_vf acc[KILN_VL] = {0}; \
            for (int64_t k = 0; k < KV; k += KILN_VL) { \
                kiln_vf x[KILN_MMT_ROWS], y[KILN_MMT_KEYS]; \
                _Pragma("GCC unroll 4") \
                for (int r = 0; r < KILN_MMT_ROWS; ++r) { x[r] = kiln_ldv(a + (m + r) * lda + k); KILN_IN_REG(x[r]); } \
                y[0] = LDBV(b0 + k); y[1] = LDBV(b1 + k); y[2] = LDBV(b2 + k); y[3] = LDBV(b3 + k); \
                _Pragma("GCC unroll 4") \
                for (int j = 0; j < KILN_MMT_KEYS; ++j) { \
                    KILN_IN_REG(y[j]); \
                    _Pragma("GCC unroll 4") \
                    for (int r = 0; r < KILN_MMT_ROWS; ++r) acc[j * KILN_MMT_ROWS + r] = kiln_fmav(x[r], y[j], acc[j * KILN_MMT_ROWS + r]); \
                } \
            } \
            float s[KILN_VL]; \
            kiln_stv(s, kiln_hsum_tile(acc)); \
            for (int r = 0; r < KILN_MMT_ROWS; ++r) memcpy(c + (m + r) * ldc + n, s + r * 4, 4 * sizeof(float)); \
        } \
    } \
}
#define KILN_MM_NT_ROWS(NAME, BT, LDBV, LDB1) \
/* Rows 0..M-1 two at a time, then one, by keys 0..N-1 (N a multiple of 4) four at a time: their \
 * sums over k < KV (the K tail and the keys left: KILN_MM_NT's own loops). */ \
static void NAME##_rows(const float *restrict a, int64_t lda, const BT *restrict b, int64_t ldb, \
                       float *restrict c, int64_t ldc, int64_t M, int64_t N, int64_t K) { \
    const int64_t KV = K - K % KILN_VL; \
    int64_t n = 0; \
    for (; n + 4 <= N; n += 4) { \
        const BT *b0 = b + n * ldb, *b1 = b0 + ldb, *b2 = b1 + ldb, *b3 = b2 + ldb; \
        int64_t m = 0; \
        for (; m + 2 <= M; m += 2) { \
            const float *a0 = a + m * lda, *a1 = a0 + lda; \
            kiln_vf c00 = {0}, c01 = {0}, c02 = {0}, c03 = {0}, c10 = {0}, c11 = {0}, c12 = {0}, c13 = {0}; \
            for (int64_t k = 0; k < KV; k += KILN_VL) { \
                kiln_vf x0 = kiln_ldv(a0 + k), x1 = kiln_ldv(a1 + k), y; \
                KILN_IN_REG(x0); KILN_IN_REG(x1); \
                y = LDBV(b0 + k); KILN_IN_REG(y); c00 = kiln_fmav(x0, y, c00); c10 = kiln_fmav(x1, y, c10); \
                y = LDBV(b1 + k); KILN_IN_REG(y); c01 = kiln_fmav(x0, y, c01); c11 = kiln_fmav(x1, y, c11); \
                y = LDBV(b2 + k); KILN_IN_REG(y); c02 = kiln_fmav(x0, y, c02); c12 = kiln_fmav(x1, y, c12); \
                y = LDBV(b3 + k); KILN_IN_REG(y); c03 = kiln_fmav(x0, y, c03); c13 = kiln_fmav(x1, y, c13); \
            } \
            float s[2][4]; \
            kiln_hsum4v(c00, c01, c02, c03, s[0]); kiln_hsum4v(c10, c11, c12, c13, s[1]); \
            for (int j = 0; j < 4; ++j) { c[m * ldc + n + j] = s[0][j]; c[(m + 1) * ldc + n + j] = s[1][j]; } \
        } \
        for (; m < M; ++m) { \
            const float *a0 = a + m * lda; \
            kiln_vf c0 = {0}, c1 = {0}, c2 = {0}, c3 = {0}; \
            for (int64_t k = 0; k < KV; k += KILN_VL) { \
                kiln_vf x0 = kiln_ldv(a0 + k); \
                c0 = kiln_fmav(x0, LDBV(b0 + k), c0); c1 = kiln_fmav(x0, LDBV(b1 + k), c1); \
                c2 = kiln_fmav(x0, LDBV(b2 + k), c2); c3 = kiln_fmav(x0, LDBV(b3 + k), c3); \
            } \
            float s[4]; \
            kiln_hsum4v(c0, c1, c2, c3, s); \
            for (int j = 0; j < 4; ++j) c[m * ldc + n + j] = s[j]; \
        } \
    } \
}
#define KILN_MM_NT(NAME, BT, LDBV, LDB1) \
static void NAME(const float *restrict a, int64_t lda, const BT *restrict b, int64_t ldb, \
                       float *restrict c, int64_t ldc, int64_t M, int64_t N, int64_t K) { \
    const int64_t KV = K - K % KILN_VL; \
    if (M <= 2) { /* a row of B at a time, in address order: B streams from memory */ \
        const float *a0 = a, *a1 = M == 2 ? a + lda : a; \
        for (int64_t n = 0; n < N; ++n) { \
            const BT *b0 = b + n * ldb; \
            kiln_vf c0 = {0}, c1 = {0}; \
            for (int64_t k = 0; k < KV; k += KILN_VL) { \
                const kiln_vf y = LDBV(b0 + k); \
                c0 = kiln_fmav(kiln_ldv(a0 + k), y, c0); c1 = kiln_fmav(kiln_ldv(a1 + k), y, c1); \
            } \
            float s0 = kiln_hsumv(c0), s1 = kiln_hsumv(c1); \
            for (int64_t k = KV; k < K; ++k) { s0 = kiln_fma1(a0[k], LDB1(b0[k]), s0); s1 = kiln_fma1(a1[k], LDB1(b0[k]), s1); } \
            c[n] = s0; \
            if (M == 2) c[ldc + n] = s1; \
        } \
        return; \
    } \
    const int64_t MT = M - M % KILN_MMT_ROWS, N4 = N - N % 4; \
    if (MT > 0 && N4 > 0) NAME##_tiles(a, lda, b, ldb, c, ldc, MT, N4, K); \
    if (M > MT && N4 > 0) NAME##_rows(a + MT * lda, lda, b, ldb, c + MT * ldc, ldc, M - MT, N4, K); \
    /* The K tail of the halves' sums: each chain goes on from the sum they stored, the same \
     * FMAs in the same order as on the other paths. Here, not in each half, so that it is \
     * compiled once (issue 27: ~7 and ~14 ms of the halves' gcc). */ \
    if (KV < K) \
        for (int64_t m = 0; m < M; ++m) { \
            const float *a0 = a + m * lda; \
            for (int64_t n = 0; n < N4; ++n) { \
                const BT *b0 = b + n * ldb; \
                float s = c[m * ldc + n]; \
                for (int64_t k = KV; k < K; ++k) s = kiln_fma1(a0[k], LDB1(b0[k]), s); \
                c[m * ldc + n] = s; \
            } \
        } \
    /* The keys left, one at a time (once here, where each half compiled its own copy). */ \
    for (int64_t n = N4; n < N; ++n) { \
        const BT *b0 = b + n * ldb; \
        for (int64_t m = 0; m < M; ++m) { \
            const float *a0 = a + m * lda; \
            kiln_vf c0 = {0}; \
            for (int64_t k = 0; k < KV; k += KILN_VL) c0 = kiln_fmav(kiln_ldv(a0 + k), LDBV(b0 + k), c0); \
            float s = kiln_hsumv(c0); \
            for (int64_t k = KV; k < K; ++k) s = kiln_fma1(a0[k], LDB1(b0[k]), s); \
            c[m * ldc + n] = s; \
        } \
    } \
}
/* f32 weights, and bf16 and f16 ones (and a 16-bit KV cache's keys) widened in registers. The
 * blocks' two halves are functions of their own, guarded (where the name is a macro, a part of
 * kiln's runtime object compiles it and this translation unit calls that: kiln-cpu runtime.rs,
 * `RuntimeFn::calls`). */
#if !defined(kiln_mm_nt_tiles)
KILN_MM_NT_TILES(kiln_mm_nt, float, kiln_ldv, KILN_ID)
#endif
#if !defined(kiln_mm_nt_rows)
KILN_MM_NT_ROWS(kiln_mm_nt, float, kiln_ldv, KILN_ID)
#endif
KILN_MM_NT(kiln_mm_nt, float, kiln_ldv, KILN_ID)
#if !defined(kiln_mm_nt_bf16_tiles)
KILN_MM_NT_TILES(kiln_mm_nt_bf16, uint16_t, kiln_ldbfv, kiln_bf16_to_f32)
#endif
#if !defined(kiln_mm_nt_bf16_rows)
KILN_MM_NT_ROWS(kiln_mm_nt_bf16, uint16_t, kiln_ldbfv, kiln_bf16_to_f32)
#endif
KILN_MM_NT(kiln_mm_nt_bf16, uint16_t, kiln_ldbfv, kiln_bf16_to_f32)
#if !defined(kiln_mm_nt_f16_tiles)
KILN_MM_NT_TILES(kiln_mm_nt_f16, uint16_t, kiln_ldhv, kiln_f16_to_f32)
#endif
#if !defined(kiln_mm_nt_f16_rows)
KILN_MM_NT_ROWS(kiln_mm_nt_f16, uint16_t, kiln_ldhv, kiln_f16_to_f32)
#endif
KILN_MM_NT(kiln_mm_nt_f16, uint16_t, kiln_ldhv, kiln_f16_to_f32)

/* c[m, n] = sum_k a[m*lda + k*sak] * b[k*ldb + n] for N <= KILN_NC: b contiguous along n ("NN", e.g. P @ V). */
static void kiln_mm_nn(const float *restrict a, int64_t lda, int64_t sak, const float *restrict b, int64_t ldb,
                       float *restrict c, int64_t ldc, int64_t M, int64_t N, int64_t K) {
    for (int64_t m = 0; m < M; ++m) {
        float acc[KILN_NC] = {0}; /* N <= NC: one work unit's columns */
        for (int64_t k = 0; k < K; ++k) {
            const float x = a[m * lda + k * sak];
            const float *restrict brow = b + k * ldb;
            for (int64_t n = 0; n < N; ++n) acc[n] += x * brow[n];
        }
        for (int64_t n = 0; n < N; ++n) c[m * ldc + n] = acc[n];
    }
}

/* ---- attention building blocks ---------------------------------------------------------- */
/* Lane by lane, `mask ? a : b` (a mask lane is all ones or zero, as comparisons give). */
static inline kiln_vf kiln_selv(kiln_vi mask, kiln_vf a, kiln_vf b) {
    return (kiln_vf)((mask & (kiln_vi)a) | (~mask & (kiln_vi)b));
}
/* 2^x for x <= 0 (Cephes' exp2f polynomial on [-0.5, 0.5]; worst relative error 7.9e-8 over
 * [-126, 0]), KILN_VL at a time; below -126 it gives 2^-126 instead of a subnormal or 0; NaN
 * stays NaN. */
static inline kiln_vf kiln_exp2v(kiln_vf x) {
    const kiln_vi nan = x != x;
    const kiln_vf x0 = x;
    x = kiln_selv(nan, kiln_splatv(0.0f), x); /* no NaN reaches the int conversion */
    x = kiln_selv(x < -126.0f, kiln_splatv(-126.0f), x);
    const kiln_vi n = __builtin_convertvector(x - 0.5f, kiln_vi); /* round, x <= 0 */
    const kiln_vf f = x - __builtin_convertvector(n, kiln_vf);
    kiln_vf p = 1.535336188319500e-4f * f + 1.339887440266574e-3f;
    p = p * f + 9.618437357674640e-3f;
    p = p * f + 5.550332471162809e-2f;
    p = p * f + 2.402264791363012e-1f;
    p = p * f + 6.931472028550421e-1f;
    p = p * f + 1.0f;
    kiln_vi bits; memcpy(&bits, &p, sizeof bits);
    bits += n << 23;
    memcpy(&p, &bits, sizeof p);
    return kiln_selv(nan, x0, p);
}
/* The largest of s[0..n) that is not NaN, -inf if there is none: what `if (x > m) m = x` over
 * the values in order gives, up to the sign of a zero (which no later step can tell apart:
 * x - +0 and x - -0 are equal, and 2^+-0 = 1). Each lane keeps the largest of its values,
 * then the lanes and the tail are taken in order. */
static inline float kiln_maxv(const float *restrict s, int64_t n) {
    kiln_vf m = kiln_splatv(-INFINITY);
    int64_t j = 0;
    for (; j + KILN_VL <= n; j += KILN_VL) {
        const kiln_vf x = kiln_ldv(s + j);
        m = kiln_selv(x > m, x, m);
    }
    float r = -INFINITY;
    for (int l = 0; l < KILN_VL; ++l) if (m[l] > r) r = m[l];
    for (; j < n; ++j) if (s[j] > r) r = s[j];
    return r;
}
/* The online softmax's weights of one key block, in place: s[j] = 2^((s[j] - m) log2 e), 0
 * for a masked key (-inf), NaN stays NaN; returns their sum (in a fixed order). A partial
 * last group of KILN_VL is padded with masked keys, so every key takes the same arithmetic. */
static inline float kiln_softmax_weights(float *restrict s, int64_t n, float m) {
    const float l2e = 1.44269504088896340736f;
    kiln_vf total = {0};
    for (int64_t j = 0; j < n; j += KILN_VL) {
        float *g = s + j, pad[KILN_VL];
        const int64_t c = n - j < KILN_VL ? n - j : KILN_VL;
        if (c < KILN_VL) { /* the partial last group, through a padded copy */
            for (int64_t i = 0; i < KILN_VL; ++i) pad[i] = i < c ? g[i] : -INFINITY;
            g = pad;
        }
        const kiln_vf x = kiln_ldv(g);
        kiln_vf w = kiln_exp2v((x - m) * l2e);
        w = kiln_selv(x == -INFINITY, kiln_splatv(0.0f), w);
        w = kiln_selv(x != x, x, w);
        kiln_stv(g, w);
        total += w;
        if (c < KILN_VL) for (int64_t i = 0; i < c; ++i) s[j + i] = pad[i];
    }
    return kiln_hsumv(total);
}
/* The online softmax's start for rows 0..bi-1 of a query block: running max -inf, sum 0, each
 * row's dv output values 0. The empty asm keeps GCC's loop vectoriser off a loop of at most
 * ATT_ROWS iterations once per block of rows, whose vector and scalar epilogues were most of
 * this function's ~20 ms of gcc (issue 27); the outputs' zeros are one memset. */
static inline void kiln_att_start(float *restrict o, float *restrict mx, float *restrict sum, int64_t bi, int64_t dv) {
    for (int64_t i = 0; i < bi; ++i) { mx[i] = -INFINITY; sum[i] = 0.0f; __asm__("" ::: "memory"); }
    memset(o, 0, (__SIZE_TYPE__)(bi * dv) * sizeof(float));
}
/* o[0..n) *= c: a row of the unnormalised output rescaled to the row's new running max. */
static inline void kiln_att_rescale(float *restrict o, int64_t n, float c) {
    for (int64_t i = 0; i < n; ++i) o[i] *= c;
}
/* o[m, n] += sum_k p[m*ldp + k] * v[k*ldv + n]: the block's weights times its value rows,
 * value rows contiguous along n. Every element is one FMA chain over k in order (kiln_fmav,
 * kiln_fma1), whatever the pass that computes it. With AVX-512 the rows go in tiles of 4 over
 * 64 columns (a value load serves four rows: 8 loads per 16 FMAs); the rows left (all of a
 * decode step's) in passes of 2 rows x KILN_PV_NV vectors (128 columns with AVX-512's 32
 * registers, 32 with AVX2's 16), which read each value row whole and once: a decode step
 * streams the KV cache in address order (half-row passes read it 30% slower). */
#if KILN_VL == 16
#define KILN_PV_NV 8
#else
#define KILN_PV_NV 4
#endif
/* Tiles of R rows (from m, below MEND) x NV vectors of columns (from n) of o += P V, the
 * accumulators in registers; value rows of type VT, a vector loaded by LDVV (widened in
 * registers from a 16-bit cache: exact, so the FMA chains are the f32 path's on the same
 * values). */
#define KILN_PV_TILE(R, NV, MEND, VT, LDVV) \
    for (; m + (R) <= (MEND); m += (R)) { \
        kiln_vf a[R][NV]; \
        _Pragma("GCC unroll 8") for (int r = 0; r < (R); ++r) \
            _Pragma("GCC unroll 8") for (int j = 0; j < (NV); ++j) a[r][j] = kiln_ldv(o + (m + r) * ldo + n + j * KILN_VL); \
        for (int64_t k = 0; k < K; ++k) { \
            const VT *vr = v + k * ldv + n; \
            kiln_vf y[NV]; \
            _Pragma("GCC unroll 8") for (int j = 0; j < (NV); ++j) { y[j] = LDVV(vr + j * KILN_VL); KILN_IN_REG(y[j]); } \
            _Pragma("GCC unroll 8") for (int r = 0; r < (R); ++r) { \
                const kiln_vf x = kiln_splatv(p[(m + r) * ldp + k]); \
                _Pragma("GCC unroll 8") for (int j = 0; j < (NV); ++j) a[r][j] = kiln_fmav(x, y[j], a[r][j]); \
            } \
        } \
        _Pragma("GCC unroll 8") for (int r = 0; r < (R); ++r) \
            _Pragma("GCC unroll 8") for (int j = 0; j < (NV); ++j) kiln_stv(o + (m + r) * ldo + n + j * KILN_VL, a[r][j]); \
    }
/* The P V product's functions for value rows of type VT (f32, or a 16-bit cache's values
 * widened in registers: LDVV a vector, LDV1 one value), each written once as a macro. Its passes
 * are functions of their own, each instantiated under a guard (where the name is a macro, a
 * part of kiln's runtime object compiles it and this translation unit calls that: kiln-cpu
 * runtime.rs, `RuntimeFn::calls`), so that they compile in parallel; each takes the column
 * blocks of its tiles, NAME_cols the columns left (once, where each pass compiled its own
 * copy: issue 27). */
#define KILN_PV_PARAMS(VT) (float *restrict o, int64_t ldo, const float *restrict p, int64_t ldp, \
                            const VT *restrict v, int64_t ldv, int64_t M, int64_t K, int64_t N)
/* Columns n0.. of rows 0..M-1 that no tile took: one vector, then one column at a time. */
#define KILN_ATT_PV_COLS(NAME, VT, LDVV, LDV1) \
static void NAME##_cols(float *restrict o, int64_t ldo, const float *restrict p, int64_t ldp, \
                        const VT *restrict v, int64_t ldv, int64_t M, int64_t K, int64_t n0, int64_t N) { \
    int64_t n = n0; \
    for (; n + KILN_VL <= N; n += KILN_VL) \
        for (int64_t m = 0; m < M; ++m) { \
            kiln_vf a0 = kiln_ldv(o + m * ldo + n); \
            for (int64_t k = 0; k < K; ++k) a0 = kiln_fmav(kiln_splatv(p[m * ldp + k]), LDVV(v + k * ldv + n), a0); \
            kiln_stv(o + m * ldo + n, a0); \
        } \
    for (; n < N; ++n) \
        for (int64_t m = 0; m < M; ++m) { \
            float acc = o[m * ldo + n]; \
            for (int64_t k = 0; k < K; ++k) acc = kiln_fma1(p[m * ldp + k], LDV1(v[k * ldv + n]), acc); \
            o[m * ldo + n] = acc; \
        } \
}
/* With AVX-512, rows 0..M-1 (M a multiple of 4) in tiles of 4 over blocks of 4 vectors (none
 * with AVX2: the function exists on both, for the runtime's table). */
#define KILN_PV_COLS4 (4 * KILN_VL)
#if KILN_VL == 16
#define KILN_ATT_PV_ROWS4(NAME, VT, LDVV) \
static void NAME##_rows4 KILN_PV_PARAMS(VT) { \
    for (int64_t n = 0; n + KILN_PV_COLS4 <= N; n += KILN_PV_COLS4) { \
        int64_t m = 0; \
        KILN_PV_TILE(4, 4, M, VT, LDVV) \
    } \
}
/* The tiles of 4 rows first, their columns left, then the rows left (below). */
#define KILN_ATT_PV_ROWS4_CALL(NAME) \
    const int64_t m4 = M - M % 4; \
    if (m4 > 0) { \
        NAME##_rows4(o, ldo, p, ldp, v, ldv, m4, K, N); \
        if (N % KILN_PV_COLS4 != 0) NAME##_cols(o, ldo, p, ldp, v, ldv, m4, K, N - N % KILN_PV_COLS4, N); \
        o += m4 * ldo; p += m4 * ldp; M -= m4; \
    }
#else
#define KILN_ATT_PV_ROWS4(NAME, VT, LDVV) \
static void NAME##_rows4 KILN_PV_PARAMS(VT) { \
    (void)o; (void)ldo; (void)p; (void)ldp; (void)v; (void)ldv; (void)M; (void)K; (void)N; \
}
#define KILN_ATT_PV_ROWS4_CALL(NAME)
#endif
/* Rows 0..M-1 in passes of 2 rows, then 1, over blocks of KILN_PV_NV vectors. */
#define KILN_PV_COLS (KILN_PV_NV * KILN_VL)
#define KILN_ATT_PV_ROWS2(NAME, VT, LDVV) \
static void NAME##_rows2 KILN_PV_PARAMS(VT) { \
    for (int64_t n = 0; n + KILN_PV_COLS <= N; n += KILN_PV_COLS) { \
        int64_t m = 0; \
        KILN_PV_TILE(2, KILN_PV_NV, M, VT, LDVV) \
        KILN_PV_TILE(1, KILN_PV_NV, M, VT, LDVV) \
    } \
}
/* Every element is computed by one pass (the same FMA chain whichever): the passes' order
 * does not change a bit. */
#define KILN_ATT_PV(NAME, VT) \
static void NAME KILN_PV_PARAMS(VT) { \
    KILN_ATT_PV_ROWS4_CALL(NAME) \
    NAME##_rows2(o, ldo, p, ldp, v, ldv, M, K, N); \
    if (M > 0 && N % KILN_PV_COLS != 0) NAME##_cols(o, ldo, p, ldp, v, ldv, M, K, N - N % KILN_PV_COLS, N); \
}
/* f32 values (kiln_att_pv), and a 16-bit cache's: f16 (kiln_att_pv_f16) and bf16
 * (kiln_att_pv_bf16). */
#if !defined(kiln_att_pv_cols)
KILN_ATT_PV_COLS(kiln_att_pv, float, kiln_ldv, KILN_ID)
#endif
#if !defined(kiln_att_pv_rows4)
KILN_ATT_PV_ROWS4(kiln_att_pv, float, kiln_ldv)
#endif
#if !defined(kiln_att_pv_rows2)
KILN_ATT_PV_ROWS2(kiln_att_pv, float, kiln_ldv)
#endif
KILN_ATT_PV(kiln_att_pv, float)
#if !defined(kiln_att_pv_f16_cols)
KILN_ATT_PV_COLS(kiln_att_pv_f16, uint16_t, kiln_ldhv, kiln_f16_to_f32)
#endif
#if !defined(kiln_att_pv_f16_rows4)
KILN_ATT_PV_ROWS4(kiln_att_pv_f16, uint16_t, kiln_ldhv)
#endif
#if !defined(kiln_att_pv_f16_rows2)
KILN_ATT_PV_ROWS2(kiln_att_pv_f16, uint16_t, kiln_ldhv)
#endif
KILN_ATT_PV(kiln_att_pv_f16, uint16_t)
#if !defined(kiln_att_pv_bf16_cols)
KILN_ATT_PV_COLS(kiln_att_pv_bf16, uint16_t, kiln_ldbfv, kiln_bf16_to_f32)
#endif
#if !defined(kiln_att_pv_bf16_rows4)
KILN_ATT_PV_ROWS4(kiln_att_pv_bf16, uint16_t, kiln_ldbfv)
#endif
#if !defined(kiln_att_pv_bf16_rows2)
KILN_ATT_PV_ROWS2(kiln_att_pv_bf16, uint16_t, kiln_ldbfv)
#endif
KILN_ATT_PV(kiln_att_pv_bf16, uint16_t)

/* KILN_GEMM */
