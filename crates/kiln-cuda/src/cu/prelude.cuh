/* kiln CUDA kernel prelude: NVRTC compiles without system headers, so the few types and
 * helpers kernels use are defined here, with the same semantics as the CPU prelude. */
typedef long long int64_t;
typedef int int32_t;
typedef unsigned int uint32_t;
typedef unsigned long long uint64_t;
typedef unsigned short uint16_t;
typedef unsigned char uint8_t;
#define INFINITY __int_as_float(0x7f800000)
#define NAN __int_as_float(0x7fffffff)
#define INT64_MAX 9223372036854775807LL
#define INT64_MIN (-INT64_MAX - 1LL)

#define KILN_FN static __device__ __forceinline__
KILN_FN uint32_t kiln_f2u(float f) { return __float_as_uint(f); }
KILN_FN float kiln_u2f(uint32_t u) { return __uint_as_float(u); }
/* KILN_CSTYLE_HELPERS */
