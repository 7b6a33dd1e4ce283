// Helpers shared by the kernel sources (prepended to each .cu at build time by kernels.rs).
// Self-contained CUDA C++: no CUDA headers, so that NVRTC needs no include path. bf16 and f16 are
// handled as 16-bit patterns.

typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;

#define FULL_MASK 0xffffffffu

// Grid-stride loop over [0, n) with 64-bit indices.
#define GRID_STRIDE(i, n)                                                                    \
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (i64)(n);                   \
         i += (i64)blockDim.x * gridDim.x)

// Grid-stride loop over [0, n) with 32-bit indices (the host checks n < 2^31).
#define GRID_STRIDE32(i, n)                                                                  \
    for (u32 i = blockIdx.x * blockDim.x + threadIdx.x; i < (u32)(n); i += blockDim.x * gridDim.x)

__device__ __forceinline__ bool aligned16(const void *p) {
    return ((u64)p & 15ull) == 0;
}

// Butterfly warp sum: every lane ends with the same value, in a fixed order.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ double warp_sum_f64(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

// Read-only 16-byte load through the non-coherent (texture) path.
__device__ __forceinline__ float4 ld4(const float *p) { return __ldg((const float4 *)p); }
// A 16-byte load of memory the kernel also writes.
__device__ __forceinline__ float4 ld4_rw(const float *p) { return *(const float4 *)p; }
__device__ __forceinline__ void st4(float *p, float4 v) { *(float4 *)p = v; }

// Multiply-then-add with two roundings (no FMA contraction), matching the CPU backend's
// `a * b + c` bit for bit.
__device__ __forceinline__ float mul_add_rn(float a, float b, float c) {
    return __fadd_rn(__fmul_rn(a, b), c);
}
