/* The machine's FMA peak: 12 independent fused multiply-add chains per thread at the widest
 * vector width the compiling CPU has (12 >= latency x pipes on current cores), registers only.
 * kiln_fma_peak(iters) runs iters x 12 FMAs of kiln_fma_lanes() lanes and returns a value
 * that depends on every chain (so nothing is optimised away). */
#if defined(__AVX512F__)
#include <immintrin.h>
#define KV __m512
#define KSET _mm512_set1_ps
#define KFMA _mm512_fmadd_ps
#define KLANES 16
static float kiln_peak_sum(KV v) { return _mm512_reduce_add_ps(v); }
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define KV __m256
#define KSET _mm256_set1_ps
#define KFMA _mm256_fmadd_ps
#define KLANES 8
static float kiln_peak_sum(KV v) { float t[8]; _mm256_storeu_ps(t, v); return t[0] + t[7]; }
#else
#define KV float
#define KSET(x) (x)
#define KFMA(a, b, c) fmaf(a, b, c)
#define KLANES 1
static float kiln_peak_sum(KV v) { return v; }
#endif

int kiln_fma_lanes(void) { return KLANES; }

float kiln_fma_peak(int64_t iters) {
    KV a0 = KSET(1.0f), a1 = KSET(1.1f), a2 = KSET(1.2f), a3 = KSET(1.3f), a4 = KSET(1.4f), a5 = KSET(1.5f);
    KV a6 = KSET(1.6f), a7 = KSET(1.7f), a8 = KSET(1.8f), a9 = KSET(1.9f), a10 = KSET(2.0f), a11 = KSET(2.1f);
    const KV b = KSET(0.9999999f), c = KSET(1e-7f);
    for (int64_t i = 0; i < iters; ++i) {
        a0 = KFMA(a0, b, c); a1 = KFMA(a1, b, c); a2 = KFMA(a2, b, c); a3 = KFMA(a3, b, c);
        a4 = KFMA(a4, b, c); a5 = KFMA(a5, b, c); a6 = KFMA(a6, b, c); a7 = KFMA(a7, b, c);
        a8 = KFMA(a8, b, c); a9 = KFMA(a9, b, c); a10 = KFMA(a10, b, c); a11 = KFMA(a11, b, c);
    }
    return kiln_peak_sum(a0) + kiln_peak_sum(a1) + kiln_peak_sum(a2) + kiln_peak_sum(a3)
         + kiln_peak_sum(a4) + kiln_peak_sum(a5) + kiln_peak_sum(a6) + kiln_peak_sum(a7)
         + kiln_peak_sum(a8) + kiln_peak_sum(a9) + kiln_peak_sum(a10) + kiln_peak_sum(a11);
}
