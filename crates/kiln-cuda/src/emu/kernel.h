/* Compiles kiln's generated CUDA C as C++ for the CPU emulator: the CUDA keywords, built-in
 * variables and intrinsics the kernels use, mapped onto the emulator runtime. Included before
 * the CUDA prelude; uses no system headers (the prelude defines the fixed-width types). */
#include "abi.h"

#define __global__
#define __device__
#define __forceinline__ inline
#define __noinline__
#define __restrict__ __restrict
/* Shared memory: one block runs at a time on each OS thread, all its threads on that thread. */
#define __shared__ static thread_local

#define threadIdx (kiln_emu_cur.thread_idx)
#define blockIdx (kiln_emu_cur.block_idx)
#define blockDim (kiln_emu_cur.block_dim)
#define gridDim (kiln_emu_cur.grid_dim)

#define __syncthreads() kiln_emu_sync()

/* CUDA's built-in 16-byte vector (NVRTC has it without headers). */
struct __attribute__((aligned(16))) uint4 { unsigned x, y, z, w; };

template <class T> static inline T kiln_emu_shfl_t(T v, unsigned arg, int xor_lanes) {
    static_assert(sizeof(T) <= 8, "shuffles move at most 64 bits");
    unsigned long long bits = 0;
    __builtin_memcpy(&bits, &v, sizeof v);
    bits = kiln_emu_shfl(bits, arg, xor_lanes);
    T out;
    __builtin_memcpy(&out, &bits, sizeof out);
    return out;
}
template <class T> static inline T __shfl_down_sync(unsigned, T v, unsigned delta) {
    return kiln_emu_shfl_t(v, delta, 0);
}
template <class T> static inline T __shfl_xor_sync(unsigned, T v, unsigned mask) {
    return kiln_emu_shfl_t(v, mask, 1);
}

static inline unsigned __float_as_uint(float f) { unsigned u; __builtin_memcpy(&u, &f, 4); return u; }
static inline float __uint_as_float(unsigned u) { float f; __builtin_memcpy(&f, &u, 4); return f; }
static inline float __int_as_float(int i) { float f; __builtin_memcpy(&f, &i, 4); return f; }

/* The device math the scalar printer emits, from the host's libm. */
extern "C" float exp2f(float);
extern "C" float log2f(float);
extern "C" float sinf(float);
extern "C" float sqrtf(float);
extern "C" float fmodf(float, float);
/* CUDA's fast division (within 2 ulp where kernels use it): the host's exact one here. */
static inline float __fdividef(float a, float b) { return a / b; }
/* CUDA's reciprocal square root (within 2 ulp): the host's exact 1 / sqrt here. */
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
