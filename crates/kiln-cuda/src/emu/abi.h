/* The interface between kiln's CUDA emulator runtime (runtime.cpp) and emulated kernels
 * (kernel.h). Plain types only: kernels are compiled without system headers, like NVRTC. */
struct kiln_emu_dim3 { unsigned x, y, z; };

/* Where the running (emulated) CUDA thread is; the scheduler sets it before every switch. */
struct kiln_emu_where { kiln_emu_dim3 thread_idx, block_idx, block_dim, grid_dim; };
extern thread_local kiln_emu_where kiln_emu_cur;

extern "C" {
/* __syncthreads(): every live thread of the block reaches it before any goes on. */
void kiln_emu_sync(void);
/* Warp shuffles on 64 raw bits: the value of lane + arg (down) or of lane ^ arg (xor) of the
 * same warp, else our own. Every lane of the warp must take part (mask 0xffffffff). */
unsigned long long kiln_emu_shfl(unsigned long long bits, unsigned arg, int xor_lanes);
/* Runs `body(args)` once per thread of a grid of blocks. `cooperative` kernels (barriers,
 * shuffles) run each block's threads as coroutines; others run them one after another.
 * Returns 0, or -1 when memory for the coroutines could not be had. */
int kiln_emu_launch(void (*body)(void **), void **args, const unsigned grid[3],
                    const unsigned block[3], int cooperative);
}
