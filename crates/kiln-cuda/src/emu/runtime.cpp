/* kiln's CUDA emulator runtime: runs a grid of blocks on the calling OS thread. Threads of a
 * cooperative kernel are coroutines that switch at every barrier: __syncthreads waits
 * for the whole block, a warp shuffle for the 32 lanes of its warp only, so warps that diverge
 * (one warp doing more iterations of a loop with shuffles than another) run as on a GPU.
 * On x86-64 a switch saves and restores the callee-saved registers and the stack pointer
 * (`kiln_emu_switch` below); elsewhere it is ucontext's swapcontext, which also saves the
 * signal mask with a system call per switch (most of the emulator's time, measured). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#include "abi.h"

thread_local kiln_emu_where kiln_emu_cur;

namespace {

#if defined(__x86_64__)
/* A coroutine's saved stack pointer; below it on its stack: the MXCSR and x87 control words,
 * r15, r14, r13, r12, rbx, rbp (the System V ABI's callee-saved state), then where to return. */
struct Context { void *sp; };
} // namespace
/* Saves the callee-saved state on the current stack and its stack pointer in *from, then
 * restores the state saved at `to` and returns where that coroutine switched away. Hidden:
 * every compiled unit carries its own copy. */
extern "C" __attribute__((visibility("hidden"))) void kiln_emu_switch(void **from, void *to);
asm(".text\n"
    ".globl kiln_emu_switch\n"
    ".hidden kiln_emu_switch\n"
    ".type kiln_emu_switch, @function\n"
    "kiln_emu_switch:\n"
    "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
    "  subq $8, %rsp\n  stmxcsr (%rsp)\n  fnstcw 4(%rsp)\n"
    "  movq %rsp, (%rdi)\n"
    "  movq %rsi, %rsp\n"
    "  ldmxcsr (%rsp)\n  fldcw 4(%rsp)\n  addq $8, %rsp\n"
    "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n"
    "  ret\n"
    ".size kiln_emu_switch, .-kiln_emu_switch\n");
namespace {

/* A coroutine that starts in `fn` (which never returns) on the stack [stack, stack + size),
 * with the caller's floating-point control words. */
void ctx_make(Context &c, char *stack, size_t size, void (*fn)()) {
    /* `fn` starts as if called: its return address slot (a null one) 16-byte aligned + 8. */
    uintptr_t top = ((uintptr_t)stack + size) & ~(uintptr_t)15;
    void **slots = (void **)(top - 72);
    unsigned mxcsr = 0, x87 = 0;
    unsigned short x87_word = 0;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(x87_word));
    x87 = x87_word;
    __builtin_memcpy((char *)&slots[0], &mxcsr, 4);
    __builtin_memcpy((char *)&slots[0] + 4, &x87, 4);
    for (int r = 1; r <= 6; ++r) slots[r] = nullptr; /* r15 .. rbp */
    slots[7] = (void *)fn;
    slots[8] = nullptr;
    c.sp = slots;
}
void ctx_switch(Context &from, Context &to) { kiln_emu_switch(&from.sp, to.sp); }
#else
struct Context { ucontext_t uc; };
void ctx_make(Context &c, char *stack, size_t size, void (*fn)()) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = stack;
    c.uc.uc_stack.ss_size = size;
    c.uc.uc_link = nullptr; /* `fn` never returns */
    makecontext(&c.uc, fn, 0);
}
void ctx_switch(Context &from, Context &to) { swapcontext(&from.uc, &to.uc); }
#endif

enum State { READY, AT_BLOCK_BARRIER, AT_WARP_BARRIER, DONE };
const size_t STACK_BYTES = 64 * 1024;

struct Block {
    unsigned n = 0, cur = 0;
    Context scheduler;
    Context *threads = nullptr;
    char *stacks = nullptr;
    State *state = nullptr;
    /* Shuffles and __syncthreads each thread has passed (2 per thread): threads released
     * together must agree, or they are at different shuffles (or different __syncthreads),
     * undefined behaviour on a GPU. */
    unsigned *passed = nullptr;
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
    b->state[b->cur] = DONE;
    ctx_switch(b->threads[b->cur], b->scheduler); /* never resumed */
    abort();
}

/* Aborts unless the threads [from, to) waiting at `barrier` have passed as many barriers:
 * lanes of a warp as many shuffles and __syncthreads, threads of a block as many
 * __syncthreads (warps may run different numbers of shuffles between two of those). */
void check_lockstep(Block &b, unsigned from, unsigned to, State barrier, const char *what) {
    unsigned first = to;
    for (unsigned t = from; t < to; ++t) {
        if (b.state[t] != barrier) continue;
        if (first == to) { first = t; continue; }
        const unsigned *p = b.passed + 2 * t, *q = b.passed + 2 * first;
        if (p[1] != q[1] || (barrier == AT_WARP_BARRIER && p[0] != q[0])) {
            kiln_emu_dim3 blk = kiln_emu_cur.block_idx;
            fprintf(stderr,
                    "CUDA emulator: block (%u, %u, %u): threads %u and %u meet at different %s\n",
                    blk.x, blk.y, blk.z, first, t, what);
            abort();
        }
    }
}

/* Releases the warps whose live lanes all wait at a shuffle; true if any was released. */
bool release_warps(Block &b) {
    bool released = false;
    for (unsigned w = 0; w < b.n; w += 32) {
        unsigned end = w + 32 < b.n ? w + 32 : b.n, live = 0, at_warp = 0;
        for (unsigned t = w; t < end; ++t) {
            live += b.state[t] != DONE;
            at_warp += b.state[t] == AT_WARP_BARRIER;
        }
        if (live == 0 || at_warp != live) continue;
        check_lockstep(b, w, end, AT_WARP_BARRIER, "warp shuffles");
        for (unsigned t = w; t < end; ++t)
            if (b.state[t] == AT_WARP_BARRIER) b.state[t] = READY;
        released = true;
    }
    return released;
}

/* Runs every thread of the current block until all have finished, in rounds: each round runs
 * every READY thread up to its next barrier, then releases what can go on: whole warps at a
 * shuffle first, else the block at __syncthreads once every live thread is there. */
void run_block(Block &b, const unsigned block[3]) {
    for (unsigned t = 0; t < b.n; ++t) {
        ctx_make(b.threads[t], b.stacks + (size_t)t * STACK_BYTES, STACK_BYTES, entry);
        b.state[t] = READY;
        b.passed[2 * t] = b.passed[2 * t + 1] = 0;
    }
    for (;;) {
        for (unsigned t = 0; t < b.n; ++t) {
            if (b.state[t] != READY) continue;
            b.cur = t;
            kiln_emu_cur.thread_idx = thread_index(block, t);
            ctx_switch(b.scheduler, b.threads[t]);
        }
        if (release_warps(b)) continue;
        unsigned live = 0, at_block = 0;
        for (unsigned t = 0; t < b.n; ++t) {
            live += b.state[t] != DONE;
            at_block += b.state[t] == AT_BLOCK_BARRIER;
        }
        if (live == 0) return;
        if (at_block != live) {
            kiln_emu_dim3 blk = kiln_emu_cur.block_idx;
            fprintf(stderr,
                    "CUDA emulator: block (%u, %u, %u) deadlocks: %u of its %u live threads wait at "
                    "__syncthreads, the others at a warp shuffle their warp does not reach\n",
                    blk.x, blk.y, blk.z, at_block, live);
            abort();
        }
        check_lockstep(b, 0, b.n, AT_BLOCK_BARRIER, "__syncthreads");
        for (unsigned t = 0; t < b.n; ++t)
            if (b.state[t] == AT_BLOCK_BARRIER) b.state[t] = READY;
    }
}

void wait_at(State barrier) {
    Block *b = running;
    if (b == nullptr) abort(); /* a barrier in a kernel launched as non-cooperative */
    unsigned t = b->cur;
    b->state[t] = barrier;
    b->passed[2 * t + (barrier == AT_BLOCK_BARRIER)]++;
    ctx_switch(b->threads[t], b->scheduler);
}

} // namespace

extern "C" void kiln_emu_sync(void) { wait_at(AT_BLOCK_BARRIER); }

extern "C" unsigned long long kiln_emu_shfl(unsigned long long bits, unsigned arg, int xor_lanes) {
    Block *b = running;
    if (b == nullptr) abort();
    unsigned t = b->cur, warp = t & ~31u, lane = t & 31;
    b->slots[t] = bits;
    wait_at(AT_WARP_BARRIER);
    /* A lane that returned before a full-mask shuffle is undefined behaviour on a GPU. */
    for (unsigned l = warp; l < warp + 32 && l < b->n; ++l)
        if (b->state[l] == DONE) {
            fprintf(stderr, "CUDA emulator: thread %u shuffles while thread %u of its warp has returned\n", t, l);
            abort();
        }
    unsigned src = xor_lanes ? (lane ^ arg) : lane + arg;
    unsigned long long r = (src < 32 && warp + src < b->n) ? b->slots[warp + src] : bits;
    wait_at(AT_WARP_BARRIER); /* nobody overwrites a slot before every lane has read it */
    return r;
}

extern "C" int kiln_emu_launch(void (*body)(void **), void **args, const unsigned grid[3],
                               const unsigned block[3], int cooperative) {
    Block b;
    b.n = block[0] * block[1] * block[2];
    b.body = body;
    b.args = args;
    if (cooperative) {
        b.threads = (Context *)calloc(b.n, sizeof(Context));
        b.stacks = (char *)malloc((size_t)b.n * STACK_BYTES);
        b.state = (State *)calloc(b.n, sizeof(State));
        b.slots = (unsigned long long *)calloc(b.n, sizeof(unsigned long long));
        b.passed = (unsigned *)calloc(2 * (size_t)b.n, sizeof(unsigned));
        if (!b.threads || !b.stacks || !b.state || !b.slots || !b.passed) {
            free(b.threads); free(b.stacks); free(b.state); free(b.slots); free(b.passed);
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
    free(b.threads); free(b.stacks); free(b.state); free(b.slots); free(b.passed);
    return 0;
}
