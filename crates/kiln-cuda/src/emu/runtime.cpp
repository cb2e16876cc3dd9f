/* kiln's CUDA emulator runtime: runs a grid of blocks on the calling OS thread. Threads of a
 * cooperative kernel are ucontext coroutines; __syncthreads and warp shuffles switch between
 * them, so barriers and shuffles mean what they mean on a GPU, for kernels whose warps are
 * converged (kiln's are). */
#include <stdlib.h>
#include <ucontext.h>

#include "abi.h"

thread_local kiln_emu_where kiln_emu_cur;

namespace {

enum State { READY, WAITING, DONE };
const size_t STACK_BYTES = 64 * 1024;

struct Block {
    unsigned n = 0, cur = 0;
    ucontext_t scheduler;
    ucontext_t *threads = nullptr;
    char *stacks = nullptr;
    State *state = nullptr;
    unsigned long long *slots = nullptr;
    void (*body)(void **) = nullptr;
    void **args = nullptr;
};

thread_local Block *running = nullptr;

kiln_emu_dim3 thread_index(const unsigned block[3], unsigned t) {
    return {t % block[0], (t / block[0]) % block[1], t / (block[0] * block[1])};
}

void entry() {
    Block *b = running;
    b->body(b->args);
    b->state[b->cur] = DONE; /* returning resumes the scheduler (uc_link) */
}

/* Runs every thread of the current block until all have finished, in rounds: each round runs
 * every READY thread up to its next barrier. */
void run_block(Block &b, const unsigned block[3]) {
    for (unsigned t = 0; t < b.n; ++t) {
        getcontext(&b.threads[t]);
        b.threads[t].uc_stack.ss_sp = b.stacks + (size_t)t * STACK_BYTES;
        b.threads[t].uc_stack.ss_size = STACK_BYTES;
        b.threads[t].uc_link = &b.scheduler;
        makecontext(&b.threads[t], entry, 0);
        b.state[t] = READY;
    }
    for (;;) {
        for (unsigned t = 0; t < b.n; ++t) {
            if (b.state[t] != READY) continue;
            b.cur = t;
            kiln_emu_cur.thread_idx = thread_index(block, t);
            swapcontext(&b.scheduler, &b.threads[t]);
        }
        bool waiting = false;
        for (unsigned t = 0; t < b.n; ++t)
            if (b.state[t] == WAITING) { b.state[t] = READY; waiting = true; }
        if (!waiting) return;
    }
}

} // namespace

extern "C" void kiln_emu_sync(void) {
    Block *b = running;
    if (b == nullptr) abort(); /* a barrier in a kernel launched as non-cooperative */
    unsigned t = b->cur;
    b->state[t] = WAITING;
    swapcontext(&b->threads[t], &b->scheduler);
}

extern "C" unsigned long long kiln_emu_shfl_down(unsigned long long bits, unsigned delta) {
    Block *b = running;
    if (b == nullptr) abort();
    unsigned t = b->cur;
    b->slots[t] = bits;
    kiln_emu_sync();
    unsigned long long r = ((t & 31) + delta < 32 && t + delta < b->n) ? b->slots[t + delta] : bits;
    kiln_emu_sync(); /* nobody overwrites a slot before every lane has read it */
    return r;
}

extern "C" int kiln_emu_launch(void (*body)(void **), void **args, const unsigned grid[3],
                               const unsigned block[3], int cooperative) {
    Block b;
    b.n = block[0] * block[1] * block[2];
    b.body = body;
    b.args = args;
    if (cooperative) {
        b.threads = (ucontext_t *)calloc(b.n, sizeof(ucontext_t));
        b.stacks = (char *)malloc((size_t)b.n * STACK_BYTES);
        b.state = (State *)calloc(b.n, sizeof(State));
        b.slots = (unsigned long long *)calloc(b.n, sizeof(unsigned long long));
        if (!b.threads || !b.stacks || !b.state || !b.slots) {
            free(b.threads); free(b.stacks); free(b.state); free(b.slots);
            return -1;
        }
    }
    kiln_emu_cur.block_dim = {block[0], block[1], block[2]};
    kiln_emu_cur.grid_dim = {grid[0], grid[1], grid[2]};
    for (unsigned z = 0; z < grid[2]; ++z)
        for (unsigned y = 0; y < grid[1]; ++y)
            for (unsigned x = 0; x < grid[0]; ++x) {
                kiln_emu_cur.block_idx = {x, y, z};
                if (cooperative) {
                    running = &b;
                    run_block(b, block);
                    running = nullptr;
                } else {
                    for (unsigned t = 0; t < b.n; ++t) {
                        kiln_emu_cur.thread_idx = thread_index(block, t);
                        body(args);
                    }
                }
            }
    free(b.threads); free(b.stacks); free(b.state); free(b.slots);
    return 0;
}
