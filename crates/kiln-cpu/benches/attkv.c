/* The blocked attention's per-key-block products over a 16-bit KV cache, in per-thread CPU
 * time: a C harness around the kernels' own prelude (c/prelude.h), built and run by
 * scripts/bench-att-kv.sh, which assembles the prelude as kiln-cpu does (cc.rs).
 *
 * One worker's query block (ROWS rows: 16 as a prompt's work unit, 2 as a decode step's two
 * query heads per KV head) against T keys of depth KD = DV = 128 (qwen3's head), key block by
 * key block (ATT_KEYS = 64, codegen.rs): the block's Q K^T (kiln_mm_nt*) and O += P V
 * (kiln_att_pv*), the softmax left out (the same on every path). Paths:
 *   f32          the f32 cache (kiln_mm_nt, kiln_att_pv)
 *   f16-scratch  an f16 cache widened a key block at a time into scratch first, then the f32
 *                kernels (what codegen.rs emitted before the 16-bit loads: `kiln_widen_rows`)
 *   f16-regs     f16 keys and values widened in registers (kiln_mm_nt_f16, kiln_att_pv_f16)
 *   bf16-kregs   bf16 keys in registers, values through scratch (the former bf16 path)
 *   bf16-regs    bf16 keys and values in registers (kiln_mm_nt_bf16, kiln_att_pv_bf16)
 *   bf16-scratch bf16 keys and values through scratch
 * Each path QB times (query blocks), best of REPS rounds; the outputs of the f16 paths are
 * checked bit for bit against f32 over the same widened values (and bf16's likewise).
 *
 *   usage: attkv [ROWS [T [QB [REPS]]]]
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "prelude.h"

enum { KD = 128, KEYS = 64 };

static void widen(float *restrict dst, const uint16_t *restrict src, int64_t rows, int bf) {
    for (int64_t i = 0; i < rows * KD; i += KILN_VL) kiln_stv(dst + i, bf ? kiln_ldbfv(src + i) : kiln_ldhv(src + i));
}
static double cpu_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

int main(int argc, char **argv) {
    const int64_t M = argc > 1 ? atoi(argv[1]) : 16, T = argc > 2 ? atoi(argv[2]) : 1536;
    const int QB = argc > 3 ? atoi(argv[3]) : 20, REPS = argc > 4 ? atoi(argv[4]) : 9;
    if (M < 1 || M > 16 || T < 1 || QB < 1 || REPS < 1) { fprintf(stderr, "usage: attkv [ROWS<=16 [T [QB [REPS]]]]\n"); return 2; }
    float *q = malloc(sizeof(float) * 16 * KD), *o = malloc(sizeof(float) * 16 * KD), *s = malloc(sizeof(float) * 16 * KEYS);
    float *kf = malloc(sizeof(float) * T * KD), *vf = malloc(sizeof(float) * T * KD);
    float *kbf = malloc(sizeof(float) * T * KD), *vbf = malloc(sizeof(float) * T * KD);
    float *kw = malloc(sizeof(float) * KEYS * KD), *vw = malloc(sizeof(float) * KEYS * KD);
    uint16_t *kh = malloc(2 * T * KD), *vh = malloc(2 * T * KD), *kb = malloc(2 * T * KD), *vb = malloc(2 * T * KD);
    srand(1);
    for (int64_t i = 0; i < 16 * KD; ++i) q[i] = (float)(rand() % 2001 - 1000) / 1000.0f;
    for (int64_t i = 0; i < 16 * KEYS; ++i) s[i] = (float)(rand() % 1000) / 1000.0f;
    for (int64_t i = 0; i < T * KD; ++i) {
        const float k = (float)(rand() % 2001 - 1000) / 500.0f, v = (float)(rand() % 2001 - 1000) / 500.0f;
        kh[i] = kiln_f32_to_f16(k); vh[i] = kiln_f32_to_f16(v);
        kb[i] = kiln_f32_to_bf16(k); vb[i] = kiln_f32_to_bf16(v);
        kf[i] = kiln_f16_to_f32(kh[i]); vf[i] = kiln_f16_to_f32(vh[i]);
        kbf[i] = kiln_bf16_to_f32(kb[i]); vbf[i] = kiln_bf16_to_f32(vb[i]);
    }
    static const char *names[] = {"f32", "f16-scratch", "f16-regs", "bf16-kregs", "bf16-regs", "bf16-scratch"};
    double best[6];
    uint32_t digest[6];
    for (int p = 0; p < 6; ++p) best[p] = 1e30;
    for (int rep = 0; rep < REPS; ++rep)
        for (int p = 0; p < 6; ++p) { /* paths interleaved within each round */
            memset(o, 0, sizeof(float) * 16 * KD);
            const double t0 = cpu_s();
            for (int qb = 0; qb < QB; ++qb)
                for (int64_t j0 = 0; j0 < T; j0 += KEYS) {
                    const int64_t bj = T - j0 < KEYS ? T - j0 : KEYS, at = j0 * KD;
                    switch (p) {
                    case 0: kiln_mm_nt(q, KD, kf + at, KD, s, KEYS, M, bj, KD);
                            kiln_att_pv(o, KD, s, KEYS, vf + at, KD, M, bj, KD); break;
                    case 1: widen(kw, kh + at, bj, 0); kiln_mm_nt(q, KD, kw, KD, s, KEYS, M, bj, KD);
                            widen(vw, vh + at, bj, 0); kiln_att_pv(o, KD, s, KEYS, vw, KD, M, bj, KD); break;
                    case 2: kiln_mm_nt_f16(q, KD, kh + at, KD, s, KEYS, M, bj, KD);
                            kiln_att_pv_f16(o, KD, s, KEYS, vh + at, KD, M, bj, KD); break;
                    case 3: kiln_mm_nt_bf16(q, KD, kb + at, KD, s, KEYS, M, bj, KD);
                            widen(vw, vb + at, bj, 1); kiln_att_pv(o, KD, s, KEYS, vw, KD, M, bj, KD); break;
                    case 4: kiln_mm_nt_bf16(q, KD, kb + at, KD, s, KEYS, M, bj, KD);
                            kiln_att_pv_bf16(o, KD, s, KEYS, vb + at, KD, M, bj, KD); break;
                    case 5: widen(kw, kb + at, bj, 1); kiln_mm_nt(q, KD, kw, KD, s, KEYS, M, bj, KD);
                            widen(vw, vb + at, bj, 1); kiln_att_pv(o, KD, s, KEYS, vw, KD, M, bj, KD); break;
                    }
                }
            const double t = cpu_s() - t0;
            if (t < best[p]) best[p] = t;
            uint32_t h = 2166136261u;
            for (int64_t i = 0; i < M * KD; ++i) h = (h ^ kiln_f2u(o[i])) * 16777619u;
            digest[p] = h;
        }
    /* f32 over the f16 values vs the f16 paths; the bf16 paths among themselves */
    const int f16_same = digest[1] == digest[0] && digest[2] == digest[0];
    const int bf16_same = digest[4] == digest[3] && digest[5] == digest[3];
    printf("KILN_VL %d, %ld rows x %ld keys, KD = DV = %d, %d query blocks, best of %d (per-thread CPU ms)\n",
           KILN_VL, (long)M, (long)T, KD, QB, REPS);
    for (int p = 0; p < 6; ++p)
        printf("  %-13s %8.3f ms  %.2fx f32\n", names[p], best[p] * 1e3, best[p] / best[0]);
    printf("  outputs bit-equal: f16 paths vs f32 %s, bf16 paths %s\n", f16_same ? "yes" : "NO", bf16_same ? "yes" : "NO");
    return f16_same && bf16_same ? 0 : 1;
}
