// AdamW on f32 master weights (src/backend/cpu/optim.rs) and the f32 <-> bf16 / f16 casts used to
// store matrix weights (bit-exact ports of the `half` crate's conversions, which the CPU backend
// uses: round to nearest even, NaN kept quiet). Lengths use 64-bit indices.

// One element of the CPU's AdamW, every operation rounded separately (no FMA contraction), so the
// result matches the CPU bit for bit. The scalars are precomputed on the host exactly as the CPU
// computes them: omb1 = 1 - beta1, omb2 = 1 - beta2, step_size = lr / bias_correction1,
// bc2_sqrt = sqrt(bias_correction2), decay = 1 - lr * weight_decay.
struct AdamW {
    float beta1, omb1, beta2, omb2, eps, grad_scale, step_size, bc2_sqrt, decay;
    __device__ __forceinline__ void step(float &p, float g, float &m, float &v) const {
        const float gi = __fmul_rn(g, grad_scale);
        m = __fadd_rn(__fmul_rn(beta1, m), __fmul_rn(omb1, gi));
        v = __fadd_rn(__fmul_rn(beta2, v), __fmul_rn(__fmul_rn(omb2, gi), gi));
        const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), bc2_sqrt), eps);
        p = __fsub_rn(__fmul_rn(p, decay), __fdiv_rn(__fmul_rn(step_size, m), denom));
    }
};

// param, m, v updated in place from grad, for i < n.
extern "C" __global__ void adamw_update(float *__restrict__ param, const float *__restrict__ grad,
                                        float *__restrict__ m, float *__restrict__ v, i64 n,
                                        float beta1, float omb1, float beta2, float omb2,
                                        float eps, float grad_scale, float step_size,
                                        float bc2_sqrt, float decay) {
    const AdamW h = {beta1, omb1, beta2, omb2, eps, grad_scale, step_size, bc2_sqrt, decay};
    if (aligned16(param) && aligned16(grad) && aligned16(m) && aligned16(v)) {
        const i64 n4 = n >> 2;
        GRID_STRIDE(i, n4) {
            float4 p = ld4_rw(param + 4 * i);
            const float4 g = ld4(grad + 4 * i);
            float4 mm = ld4_rw(m + 4 * i);
            float4 vv = ld4_rw(v + 4 * i);
            h.step(p.x, g.x, mm.x, vv.x);
            h.step(p.y, g.y, mm.y, vv.y);
            h.step(p.z, g.z, mm.z, vv.z);
            h.step(p.w, g.w, mm.w, vv.w);
            st4(param + 4 * i, p);
            st4(m + 4 * i, mm);
            st4(v + 4 * i, vv);
        }
        GRID_STRIDE(i, n - 4 * n4) {
            const i64 k = 4 * n4 + i;
            h.step(param[k], grad[k], m[k], v[k]);
        }
    } else {
        GRID_STRIDE(i, n) { h.step(param[i], grad[i], m[i], v[i]); }
    }
}

// ------------------------------------------------------------------ casts

__device__ __forceinline__ u16 f32_to_bf16_bits(float f) {
    const u32 x = __float_as_uint(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (u16)((x >> 16) | 0x0040u);
    const u32 round_bit = 0x00008000u;
    if ((x & round_bit) != 0 && (x & (3 * round_bit - 1)) != 0) return (u16)((x >> 16) + 1);
    return (u16)(x >> 16);
}

__device__ __forceinline__ float bf16_bits_to_f32(u16 h) {
    const u32 i = h;
    if ((i & 0x7fffu) > 0x7f80u) return __uint_as_float((i | 0x0040u) << 16);
    return __uint_as_float(i << 16);
}

__device__ __forceinline__ u16 f32_to_f16_bits(float f) {
    const u32 x = __float_as_uint(f);
    const u32 sign = x & 0x80000000u;
    const u32 exp = x & 0x7f800000u;
    const u32 man = x & 0x007fffffu;
    if (exp == 0x7f800000u) {
        const u32 nan_bit = man == 0 ? 0u : 0x0200u;
        return (u16)((sign >> 16) | 0x7c00u | nan_bit | (man >> 13));
    }
    const u32 half_sign = sign >> 16;
    const int half_exp = (int)(exp >> 23) - 127 + 15;
    if (half_exp >= 0x1f) return (u16)(half_sign | 0x7c00u);
    if (half_exp <= 0) {
        if (14 - half_exp > 24) return (u16)half_sign;
        const u32 m = man | 0x00800000u;
        u32 half_man = m >> (14 - half_exp);
        const u32 round_bit = 1u << (13 - half_exp);
        if ((m & round_bit) != 0 && (m & (3 * round_bit - 1)) != 0) half_man += 1;
        return (u16)(half_sign | half_man);
    }
    const u32 he = (u32)half_exp << 10;
    const u32 half_man = man >> 13;
    const u32 round_bit = 0x00001000u;
    if ((man & round_bit) != 0 && (man & (3 * round_bit - 1)) != 0)
        return (u16)((half_sign | he | half_man) + 1);
    return (u16)(half_sign | he | half_man);
}

__device__ __forceinline__ float f16_bits_to_f32(u16 hb) {
    const u32 i = hb;
    if ((i & 0x7fffu) == 0) return __uint_as_float(i << 16);
    const u32 half_sign = i & 0x8000u;
    const u32 half_exp = i & 0x7c00u;
    const u32 half_man = i & 0x03ffu;
    if (half_exp == 0x7c00u) {
        if (half_man == 0) return __uint_as_float((half_sign << 16) | 0x7f800000u);
        return __uint_as_float((half_sign << 16) | 0x7fc00000u | (half_man << 13));
    }
    const u32 sign = half_sign << 16;
    const int unbiased_exp = (int)(half_exp >> 10) - 15;
    if (half_exp == 0) {
        // Subnormal: normalise (leading zeros of the 16-bit mantissa, minus the 6 above it).
        const int e = (__clz(half_man) - 16) - 6;
        const u32 ex = (u32)(127 - 15 - e) << 23;
        const u32 m = (half_man << (14 + e)) & 0x7fffffu;
        return __uint_as_float(sign | ex | m);
    }
    const u32 ex = (u32)(unbiased_exp + 127) << 23;
    const u32 m = (half_man & 0x03ffu) << 13;
    return __uint_as_float(sign | ex | m);
}

struct ToBf16 {
    static __device__ __forceinline__ u16 f(float x) { return f32_to_bf16_bits(x); }
};
struct ToF16 {
    static __device__ __forceinline__ u16 f(float x) { return f32_to_f16_bits(x); }
};
struct FromBf16 {
    static __device__ __forceinline__ float f(u16 x) { return bf16_bits_to_f32(x); }
};
struct FromF16 {
    static __device__ __forceinline__ float f(u16 x) { return f16_bits_to_f32(x); }
};

// 16-bit values travel as uint2 (4 per 8 bytes) in the vectorised paths.
__device__ __forceinline__ bool aligned8(const void *p) { return ((u64)p & 7ull) == 0; }

template <class Op>
__device__ __forceinline__ void narrow(const float *__restrict__ src, u16 *__restrict__ dst,
                                       i64 n) {
    if (aligned16(src) && aligned8(dst)) {
        const i64 n4 = n >> 2;
        GRID_STRIDE(i, n4) {
            const float4 v = ld4(src + 4 * i);
            uint2 o;
            o.x = (u32)Op::f(v.x) | ((u32)Op::f(v.y) << 16);
            o.y = (u32)Op::f(v.z) | ((u32)Op::f(v.w) << 16);
            *(uint2 *)(dst + 4 * i) = o;
        }
        GRID_STRIDE(i, n - 4 * n4) {
            const i64 k = 4 * n4 + i;
            dst[k] = Op::f(src[k]);
        }
    } else {
        GRID_STRIDE(i, n) { dst[i] = Op::f(src[i]); }
    }
}

template <class Op>
__device__ __forceinline__ void widen(const u16 *__restrict__ src, float *__restrict__ dst, i64 n) {
    if (aligned8(src) && aligned16(dst)) {
        const i64 n4 = n >> 2;
        GRID_STRIDE(i, n4) {
            const uint2 v = __ldg((const uint2 *)(src + 4 * i));
            st4(dst + 4 * i,
                make_float4(Op::f((u16)(v.x & 0xffffu)), Op::f((u16)(v.x >> 16)),
                            Op::f((u16)(v.y & 0xffffu)), Op::f((u16)(v.y >> 16))));
        }
        GRID_STRIDE(i, n - 4 * n4) {
            const i64 k = 4 * n4 + i;
            dst[k] = Op::f(src[k]);
        }
    } else {
        GRID_STRIDE(i, n) { dst[i] = Op::f(src[i]); }
    }
}

// dst[i] = bf16(src[i]) (round to nearest even) for i < n.
extern "C" __global__ void cast_f32_to_bf16(const float *__restrict__ src, u16 *__restrict__ dst,
                                            i64 n) {
    narrow<ToBf16>(src, dst, n);
}
// dst[i] = f16(src[i]) (round to nearest even, overflow to infinity) for i < n.
extern "C" __global__ void cast_f32_to_f16(const float *__restrict__ src, u16 *__restrict__ dst,
                                           i64 n) {
    narrow<ToF16>(src, dst, n);
}
// dst[i] = f32(src[i]) for i < n.
extern "C" __global__ void cast_bf16_to_f32(const u16 *__restrict__ src, float *__restrict__ dst,
                                            i64 n) {
    widen<FromBf16>(src, dst, n);
}
extern "C" __global__ void cast_f16_to_f32(const u16 *__restrict__ src, float *__restrict__ dst,
                                           i64 n) {
    widen<FromF16>(src, dst, n);
}
