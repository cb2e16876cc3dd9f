/* The quantized decode GEMV (one activation row) against a streaming read of the same bytes,
 * in per-thread CPU time: a C harness around the kernels' own prelude (c/prelude.h, gemm.h,
 * gemm_quant.h), built and run by scripts/bench-qgemv.sh, which assembles the prelude as
 * kiln-cpu does (cc.rs: the blocking constants first, the shared helpers in place).
 *
 * For each weight shape (N product columns x K) and type (Q8_0, Q4_0, Q4_K, Q6_K, Q5_K, in the panel layout
 * the kernels were compiled for: the integer layout with AVX-512 VNNI, the f32-dequant one
 * otherwise), THREADS threads (1 or 2) each compute their half of the product tiles
 * (1 x KILN_NC, as a decode launch's work units) of one activation row, over enough copies of
 * the weight that their bytes exceed the caches (a decode token streams every layer once);
 * each copy is a "launch" (the worker's packing state cleared, so the row is quantized again).
 * The same threads then read a buffer of the same size with vector loads. GB/s = the bytes a
 * thread streams / its CPU time (CLOCK_THREAD_CPUTIME_ID), summed over the threads; best of
 * REPS rounds. Weight bytes are the panels' (what the kernel reads), GGUF bytes beside them.
 * ROWS=m (default 1) runs m activation rows instead (m > 4: the prefill micro-kernel; the
 * table then also gives GFLOP/s).
 * Values are random (scales small and finite): the timing does not depend on them.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <string.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include "prelude.h"

/* Each type in the layout its kernels read: the integer one where this ISA has its integer
 * kernels (KILN_QINT8_<TYPE>, the prelude), else the f32-dequant one. */
#if defined(KILN_QINT8_Q8_0)
#define GB_Q8_0 KILN_GBI_Q8_0
#else
#define GB_Q8_0 KILN_GB_Q8_0
#endif
#if defined(KILN_QINT8_Q4_0)
#define GB_Q4_0 KILN_GBI_Q4_0
#else
#define GB_Q4_0 KILN_GB_Q4_0
#endif
#if defined(KILN_QINT8_Q4_K)
#define GB_Q4_K KILN_GBI_Q4_K
#else
#define GB_Q4_K KILN_GB_Q4_K
#endif
#if defined(KILN_QINT8_Q6_K)
#define GB_Q6_K KILN_GBI_Q6_K
#else
#define GB_Q6_K KILN_GB_Q6_K
#endif
#if defined(KILN_QINT8_Q5_K)
#define GB_Q5_K KILN_GBI_Q5_K
#else
#define GB_Q5_K KILN_GB_Q5_K
#endif
#if defined(KILN_QINT8) && KILN_VL == 16
#define LAYOUT "integer where the type has it (VNNI)"
#elif defined(KILN_QINT8)
#define LAYOUT "integer where the type has it (AVX2)"
#else
#define LAYOUT "f32 dequant"
#endif

typedef void (*tile_fn)(kiln_gemm_ctx *, const float *, int64_t, const uint8_t *, int64_t, int64_t,
                        int64_t, int64_t, int64_t, float *, int64_t);
/* floats: the group's f32 scales (and mins), x KILN_NR; halves: its f16 scales, x KILN_NR. */
static const struct { const char *name; tile_fn f; int64_t gb; int floats, halves; double gguf; } TYPES[] = {
    {"q8_0", kiln_packed_tile_q8_0, GB_Q8_0, 0, 1, 34.0 / 32},
    {"q4_0", kiln_packed_tile_q4_0, GB_Q4_0, 0, 1, 18.0 / 32},
    {"q4_k", kiln_packed_tile_q4_k, GB_Q4_K, 2, 0, 144.0 / 256},
    {"q6_k", kiln_packed_tile_q6_k, GB_Q6_K, 2, 0, 210.0 / 256},
    {"q5_k", kiln_packed_tile_q5_k, GB_Q5_K, 2, 0, 176.0 / 256},
};

/* EXTRA=-DLAUNCH_BARRIER: the threads meet at a spin barrier before each copy, as a decode
 * launch's chunks end in a join, and the times are wall clock, not CPU time.
 * EXTRA=-DINTERLEAVED_CHUNKS=8: each copy in 8 chunks the threads take in turn (the CPU pool's
 * split before each thread owned a contiguous share) instead of one contiguous share each. */
#ifdef LAUNCH_BARRIER
static _Atomic long launch_arrivals;
#define KILN_BENCH_CLOCK CLOCK_MONOTONIC
#else
#define KILN_BENCH_CLOCK CLOCK_THREAD_CPUTIME_ID
#endif

static double now_cpu(void) {
    struct timespec ts;
    clock_gettime(KILN_BENCH_CLOCK, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static size_t huge_size(size_t n) { return (n + (2u << 20) - 1) & ~(size_t)((2u << 20) - 1); }
static void *huge_alloc(size_t n) {
    n = huge_size(n);
    void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { perror("mmap"); exit(1); }
    /* EXTRA=-DSMALL_PAGES: 4 KiB pages, as a packed weight below HUGE_MIN had before the
     * CPU device's huge-page arena (kiln-runtime host.rs) */
#ifdef SMALL_PAGES
    madvise(p, n, MADV_NOHUGEPAGE);
#else
    madvise(p, n, MADV_HUGEPAGE);
#endif
    return p;
}

static uint64_t rng = 88172645463325252ull;
static uint32_t next_u32(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return (uint32_t)rng; }

typedef struct {
    int id, threads, copies, type, rows;
    int64_t N, K, bytes; /* bytes of one copy's panels */
    uint8_t **w;
    const float *x;
    const uint8_t *stream; /* copies * bytes */
    double gemv_s, read_s;
    float sink;
} job;

static void *run(void *arg) {
    job *j = arg;
    const int64_t units = (j->N + KILN_NC - 1) / KILN_NC;
    const int64_t u0 = units * j->id / j->threads, u1 = units * (j->id + 1) / j->threads;
    const int64_t G = j->K / 32;
    char *scratch = aligned_alloc(64, 64 + (size_t)(KILN_MC * KILN_NC * 4 + 64) +
                                          (size_t)KILN_MC * G * 40 * 4 + KILN_KC * KILN_NR * 4 + 256);
    kiln_gemm_state *st = (kiln_gemm_state *)scratch;
    float *t = (float *)(scratch + 64);
    char *rest = (char *)t + KILN_MC * KILN_NC * 4 + 64;
    kiln_gemm_ctx ctx = {(float *)rest, (float *)(rest + ((j->K * KILN_MC * 4 + 63) / 64) * 64), st};
    float sink = 0;
    double t0 = now_cpu();
    for (int c = 0; c < j->copies; ++c) {
        memset(st, 0, sizeof *st); /* a new launch */
#ifdef LAUNCH_BARRIER
        launch_arrivals++;
        while (launch_arrivals < (long)(c + 1) * j->threads) __builtin_ia32_pause();
#endif
#ifdef INTERLEAVED_CHUNKS
        /* the CPU pool before it gave each thread a contiguous share: a launch in
         * INTERLEAVED_CHUNKS chunks that the threads claim in turn (thread i: i, i + threads, ..) */
        for (int64_t ch = j->id; ch < INTERLEAVED_CHUNKS; ch += j->threads) {
            const int64_t per = (units + INTERLEAVED_CHUNKS - 1) / INTERLEAVED_CHUNKS;
            const int64_t c0 = ch * per, c1 = kiln_min((ch + 1) * per, units);
#elif defined(SLOTS)
        /* an epilogue matmul's launch (SiLU(gate) * up: a unit is NC columns of each of SLOTS
         * column ranges N / SLOTS apart), the thread's share in the pool's 4 chunks; the units
         * of a chunk slot by slot with -DSLOT_MAJOR (one run per range), else unit by unit
         * (the ranges alternate every NC columns) */
        const int64_t su = (j->N / SLOTS + KILN_NC - 1) / KILN_NC;
        const int64_t s0 = su * j->id / j->threads, s1 = su * (j->id + 1) / j->threads;
        for (int ch = 0; ch < 4; ++ch) {
            const int64_t c0 = s0 + (s1 - s0) * ch / 4, c1 = s0 + (s1 - s0) * (ch + 1) / 4;
#ifdef SLOT_MAJOR
            for (int sl = 0; sl < SLOTS; ++sl)
                for (int64_t u = c0; u < c1; ++u) {
#else
            for (int64_t u = c0; u < c1; ++u)
                for (int sl = 0; sl < SLOTS; ++sl) {
#endif
                    const int64_t n0 = u * KILN_NC + sl * (j->N / SLOTS);
                    TYPES[j->type].f(&ctx, j->x, j->K, j->w[c], j->K, 0, j->rows, n0, kiln_min(KILN_NC, j->N - n0), t, KILN_NC);
                    sink += t[0];
                }
        }
#else
        {
            const int64_t c0 = u0, c1 = u1;
#endif
#ifndef SLOTS
            for (int64_t u = c0; u < c1; ++u) {
                const int64_t n0 = u * KILN_NC;
                TYPES[j->type].f(&ctx, j->x, j->K, j->w[c], j->K, 0, j->rows, n0, kiln_min(KILN_NC, j->N - n0), t, KILN_NC);
                sink += t[0];
            }
        }
#endif
    }
    j->gemv_s = now_cpu() - t0;
    /* the same bytes, read once with vector loads (this thread's share of each copy) */
    const int64_t lo = j->bytes * j->id / j->threads / 256 * 256, hi = j->bytes * (j->id + 1) / j->threads / 256 * 256;
    t0 = now_cpu();
    kiln_vf s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
    for (int c = 0; c < j->copies; ++c) {
        const uint8_t *p = j->stream + (size_t)c * j->bytes;
        for (int64_t b = lo; b < hi; b += 256) {
            s0 += kiln_ldv((const float *)(p + b)); s1 += kiln_ldv((const float *)(p + b + 64));
            s2 += kiln_ldv((const float *)(p + b + 128)); s3 += kiln_ldv((const float *)(p + b + 192));
        }
    }
    j->read_s = now_cpu() - t0;
    const kiln_vf s = s0 + s1 + s2 + s3;
    j->sink = sink + s[0];
    free(scratch);
    return NULL;
}

int main(int argc, char **argv) {
    const int threads = getenv("THREADS") ? atoi(getenv("THREADS")) : 2;
    const int reps = getenv("REPS") ? atoi(getenv("REPS")) : 5;
    const int rows = getenv("ROWS") ? atoi(getenv("ROWS")) : 1;
    if (rows < 1 || rows > KILN_MC) { fprintf(stderr, "ROWS=%d: 1..%d\n", rows, KILN_MC); return 1; }
    /* copies of the weight up to MIN_MB (default 320: past any cache; 1 gives the in-cache speed) */
    const double min_bytes = (getenv("MIN_MB") ? atof(getenv("MIN_MB")) : 320) * 1e6;
    #ifdef SLOTS
    static const int64_t SHAPES[][2] = {{6144, 1024}, {3072, 1024}, {2048, 3072}}; /* gate/up */
#else
    static const int64_t SHAPES[][2] = {{3072, 1024}, {1024, 3072}, {151936, 1024}};
#endif
    const char *only = argc > 1 ? argv[1] : NULL;
    printf("layout %s, KILN_NR %d, %d row(s), %d thread(s), best of %d; GB/s of panel bytes per CPU second\n",
           LAYOUT, KILN_NR, rows, threads, reps);
    printf("| type | N x K | panel MB | GGUF MB | copies | GEMV GB/s | read GB/s | GEMV / read | GGUF GB/s | GFLOP/s |\n");
    printf("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for (int ty = 0; ty < (int)(sizeof TYPES / sizeof TYPES[0]); ++ty) {
        if (only && !strstr(only, TYPES[ty].name)) continue;
        for (int sh = 0; sh < 3; ++sh) {
            const int64_t N = SHAPES[sh][0], K = SHAPES[sh][1], G = K / 32, gb = TYPES[ty].gb;
            const int64_t panels = (N + KILN_NR - 1) / KILN_NR, bytes = panels * G * gb;
            const int copies = (int)((min_bytes + bytes - 1) / bytes);
            uint8_t **w = malloc(sizeof *w * copies);
            uint8_t *all = huge_alloc((size_t)bytes * copies);
            for (int c = 0; c < copies; ++c) {
                w[c] = all + (size_t)c * bytes;
                uint32_t *u = (uint32_t *)w[c];
                for (int64_t i = 0; i < bytes / 4; ++i) u[i] = next_u32();
                for (int64_t g = 0; g < panels * G; ++g) { /* the scales (and mins): small, finite */
                    float *s = (float *)(w[c] + g * gb);
                    for (int i = 0; i < TYPES[ty].floats * KILN_NR; ++i) s[i] = (float)(next_u32() % 1000 + 1) * 1e-5f;
                    uint16_t *h = (uint16_t *)(w[c] + g * gb); /* f16 2^-10 .. 2^-9 */
                    for (int i = 0; i < TYPES[ty].halves * KILN_NR; ++i) h[i] = (uint16_t)(0x1400 + next_u32() % 0x400);
                }
            }
            uint8_t *stream = huge_alloc((size_t)bytes * copies);
            memset(stream, 1, (size_t)bytes * copies);
            float *x = malloc(sizeof(float) * K * rows);
            for (int64_t k = 0; k < K * rows; ++k) x[k] = (float)((int)(next_u32() % 2001) - 1000) * 1e-3f;
            double best_g = 1e30, best_r = 1e30;
            for (int r = 0; r < reps; ++r) {
                job jobs[2];
                pthread_t tid[2];
#ifdef LAUNCH_BARRIER
                launch_arrivals = 0;
#endif
                for (int i = 0; i < threads; ++i) {
                    jobs[i] = (job){i, threads, copies, ty, rows, N, K, bytes, w, x, stream, 0, 0, 0};
                    pthread_create(&tid[i], NULL, run, &jobs[i]);
                }
                double g = 0, rd = 0; /* the threads' mean CPU time */
                for (int i = 0; i < threads; ++i) {
                    pthread_join(tid[i], NULL);
                    g += jobs[i].gemv_s / threads; rd += jobs[i].read_s / threads;
                }
                if (g < best_g) best_g = g;
                if (rd < best_r) best_r = rd;
            }
            const double total = (double)bytes * copies;
            printf("| %s | %lld x %lld | %.1f | %.1f | %d | %.1f | %.1f | %.2f | %.1f | %.1f |\n", TYPES[ty].name,
                   (long long)N, (long long)K, bytes / 1e6, N * K * TYPES[ty].gguf / 1e6, copies,
                   total / best_g / 1e9, total / best_r / 1e9, best_r / best_g,
                   N * K * TYPES[ty].gguf * copies / best_g / 1e9, 2.0 * rows * N * K * copies / best_g / 1e9);
            fflush(stdout);
            munmap(all, huge_size((size_t)bytes * copies));
            munmap(stream, huge_size((size_t)bytes * copies));
            free(w); free(x);
        }
    }
    return 0;
}
