/* kiln CUDA kernel prelude: NVRTC compiles without system headers, so the few types and
 * helpers kernels use are defined here, with the same semantics as the CPU prelude. */
typedef long long int64_t;
typedef int int32_t;
typedef unsigned int uint32_t;
typedef unsigned long long uint64_t;
typedef unsigned short uint16_t;
typedef unsigned char uint8_t;
typedef signed char int8_t;
#define INFINITY __int_as_float(0x7f800000)
#define NAN __int_as_float(0x7fffffff)
#define INT64_MAX 9223372036854775807LL
#define INT64_MIN (-INT64_MAX - 1LL)

#define KILN_FN static __device__ __forceinline__
KILN_FN uint32_t kiln_f2u(float f) { return __float_as_uint(f); }
KILN_FN float kiln_u2f(uint32_t u) { return __uint_as_float(u); }
/* Element e of 16 bytes read at once (a uint4): 8 bf16 or 4 f32, as floats. */
KILN_FN float kiln_bf16x8_at(uint4 q, int e) {
    const uint32_t w = e < 2 ? q.x : e < 4 ? q.y : e < 6 ? q.z : q.w;
    return __uint_as_float((e & 1) ? (w & 0xffff0000u) : (w << 16));
}
KILN_FN float kiln_f32x4_at(uint4 q, int e) {
    return __uint_as_float(e == 0 ? q.x : e == 1 ? q.y : e == 2 ? q.z : q.w);
}
/* Index division and remainder (kiln-cuda's dialect.rs) in 32-bit unsigned arithmetic: exactly
 * int64_t's `/` and `%` while both operands lie in [0, 2^32), which every launch checks
 * (launch.rs). ptxas compiles each inlined 64-bit division by a run-time value anew, a large
 * part of the row kernels' compile time (issue 27). */
KILN_FN int64_t kiln_div(int64_t a, int64_t b) { return (int64_t)((uint32_t)a / (uint32_t)b); }
KILN_FN int64_t kiln_rem(int64_t a, int64_t b) { return (int64_t)((uint32_t)a % (uint32_t)b); }
/* sinf, called rather than inlined (the CUDA dialect prints every sine as kiln_sinf): CUDA's
 * precise sinf, with its slow path for large arguments, is ~80M instructions of NVRTC's work
 * inlined, and RoPE's two tables (sin, and cos as a shifted sin) batch into one program, where
 * the called function is compiled once. A call per table element costs the GPU little (issue 27). */
static __device__ __noinline__ float kiln_sinf(float x) { return sinf(x); }
/* KILN_CSTYLE_HELPERS */
