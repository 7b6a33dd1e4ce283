// Element-wise kernels: axpy, scale, fill, the modulation-table broadcast add and its backward,
// SiLU, the two GELUs and ReLU (forward and backward). Semantics are those of
// src/backend/cpu/activation.rs: outputs of the activations are overwritten, the broadcast-add
// backward accumulates. Lengths are element counts; the vectorised paths use 16-byte accesses
// when every pointer is 16-byte aligned (always so for whole cudarc allocations).

// ------------------------------------------------------------------ generic maps

template <class Op>
static __device__ __forceinline__ void map_unary(const float *__restrict__ x, float *__restrict__ y,
                                                 i64 n) {
    if (aligned16(x) && aligned16(y)) {
        const i64 n4 = n >> 2;
        GRID_STRIDE(i, n4) {
            float4 v = ld4(x + 4 * i);
            v.x = Op::f(v.x);
            v.y = Op::f(v.y);
            v.z = Op::f(v.z);
            v.w = Op::f(v.w);
            st4(y + 4 * i, v);
        }
        GRID_STRIDE(i, n - 4 * n4) {
            const i64 k = 4 * n4 + i;
            y[k] = Op::f(x[k]);
        }
    } else {
        GRID_STRIDE(i, n) { y[i] = Op::f(x[i]); }
    }
}

template <class Op>
static __device__ __forceinline__ void map_binary(const float *__restrict__ x,
                                                  const float *__restrict__ d,
                                                  float *__restrict__ out, i64 n) {
    if (aligned16(x) && aligned16(d) && aligned16(out)) {
        const i64 n4 = n >> 2;
        GRID_STRIDE(i, n4) {
            const float4 a = ld4(x + 4 * i);
            const float4 g = ld4(d + 4 * i);
            float4 o;
            o.x = Op::f(a.x, g.x);
            o.y = Op::f(a.y, g.y);
            o.z = Op::f(a.z, g.z);
            o.w = Op::f(a.w, g.w);
            st4(out + 4 * i, o);
        }
        GRID_STRIDE(i, n - 4 * n4) {
            const i64 k = 4 * n4 + i;
            out[k] = Op::f(x[k], d[k]);
        }
    } else {
        GRID_STRIDE(i, n) { out[i] = Op::f(x[i], d[i]); }
    }
}

// ------------------------------------------------------------------ activations

// Logistic sigmoid; below -88.3 the CPU selects 0 explicitly (the true value underflows).
static __device__ __forceinline__ float sigmoid_f(float x) {
    const float s = 1.0f / (1.0f + expf(-x));
    return x < -88.3f ? 0.0f : s;
}

struct SiluFwd {
    static __device__ __forceinline__ float f(float x) { return x * sigmoid_f(x); }
};
struct SiluBwd {
    static __device__ __forceinline__ float f(float x, float g) {
        const float s = sigmoid_f(x);
        return g * (s * (1.0f + x * (1.0f - s)));
    }
};

#define GELU_K 0.7978846f
#define GELU_C 0.044715f

// (sigmoid(2u), du/dx) with u = sqrt(2/pi) (x + 0.044715 x^3); 0.5 (1 + tanh u) == sigmoid(2u).
static __device__ __forceinline__ float2 gelu_tanh_parts(float x) {
    const float x2 = x * x;
    const float u = GELU_K * (x + GELU_C * x2 * x);
    const float du = GELU_K * (1.0f + (3.0f * GELU_C) * x2);
    return make_float2(sigmoid_f(2.0f * u), du);
}

struct GeluTanhFwd {
    static __device__ __forceinline__ float f(float x) { return x * gelu_tanh_parts(x).x; }
};
struct GeluTanhBwd {
    static __device__ __forceinline__ float f(float x, float g) {
        const float2 p = gelu_tanh_parts(x);
        const float s = p.x;
        return g * (s + 2.0f * x * s * (1.0f - s) * p.y);
    }
};

// Standard normal CDF in f64, accurate in both tails (as the CPU's normal_cdf).
static __device__ __forceinline__ double normal_cdf(double x) {
    const double z = x * 0.70710678118654752440;
    return z < 0.0 ? 0.5 * erfc(-z) : 1.0 - 0.5 * erfc(z);
}

struct GeluErfFwd {
    static __device__ __forceinline__ float f(float xf) {
        const double x = (double)xf;
        return (float)(x * normal_cdf(x));
    }
};
struct GeluErfBwd {
    static __device__ __forceinline__ float f(float xf, float g) {
        const double x = (double)xf;
        const double d = normal_cdf(x) + x * 0.3989422804014327 * exp(-0.5 * x * x);
        return (float)((double)g * d);
    }
};

struct ReluFwd {
    // fmaxf returns 0 for NaN input, as Rust's f32::max.
    static __device__ __forceinline__ float f(float x) { return fmaxf(x, 0.0f); }
};
struct ReluBwd {
    static __device__ __forceinline__ float f(float x, float g) { return x > 0.0f ? g : 0.0f; }
};

// y[i] = act(x[i]) for i < n (overwrites y).
extern "C" __global__ void silu_forward(const float *__restrict__ x, float *__restrict__ y, i64 n) {
    map_unary<SiluFwd>(x, y, n);
}
// dx[i] = dy[i] * act'(x[i]) for i < n (overwrites dx).
extern "C" __global__ void silu_backward(const float *__restrict__ x, const float *__restrict__ dy,
                                         float *__restrict__ dx, i64 n) {
    map_binary<SiluBwd>(x, dy, dx, n);
}
extern "C" __global__ void gelu_tanh_forward(const float *__restrict__ x, float *__restrict__ y,
                                             i64 n) {
    map_unary<GeluTanhFwd>(x, y, n);
}
extern "C" __global__ void gelu_tanh_backward(const float *__restrict__ x,
                                              const float *__restrict__ dy,
                                              float *__restrict__ dx, i64 n) {
    map_binary<GeluTanhBwd>(x, dy, dx, n);
}
extern "C" __global__ void gelu_erf_forward(const float *__restrict__ x, float *__restrict__ y,
                                            i64 n) {
    map_unary<GeluErfFwd>(x, y, n);
}
extern "C" __global__ void gelu_erf_backward(const float *__restrict__ x,
                                             const float *__restrict__ dy,
                                             float *__restrict__ dx, i64 n) {
    map_binary<GeluErfBwd>(x, dy, dx, n);
}
extern "C" __global__ void relu_forward(const float *__restrict__ x, float *__restrict__ y, i64 n) {
    map_unary<ReluFwd>(x, y, n);
}
extern "C" __global__ void relu_backward(const float *__restrict__ x, const float *__restrict__ dy,
                                         float *__restrict__ dx, i64 n) {
    map_binary<ReluBwd>(x, dy, dx, n);
}

// ------------------------------------------------------------------ axpy, scale, fill

// y[i] += alpha * x[i] for i < n (multiply and add rounded separately, as the CPU).
extern "C" __global__ void axpy(float alpha, const float *__restrict__ x, float *__restrict__ y,
                                i64 n) {
    if (aligned16(x) && aligned16(y)) {
        const i64 n4 = n >> 2;
        GRID_STRIDE(i, n4) {
            const float4 a = ld4(x + 4 * i);
            float4 b = ld4_rw(y + 4 * i);
            b.x = mul_add_rn(alpha, a.x, b.x);
            b.y = mul_add_rn(alpha, a.y, b.y);
            b.z = mul_add_rn(alpha, a.z, b.z);
            b.w = mul_add_rn(alpha, a.w, b.w);
            st4(y + 4 * i, b);
        }
        GRID_STRIDE(i, n - 4 * n4) {
            const i64 k = 4 * n4 + i;
            y[k] = mul_add_rn(alpha, x[k], y[k]);
        }
    } else {
        GRID_STRIDE(i, n) { y[i] = mul_add_rn(alpha, x[i], y[i]); }
    }
}

// x[i] *= alpha for i < n.
extern "C" __global__ void scale(float alpha, float *__restrict__ x, i64 n) {
    if (aligned16(x)) {
        const i64 n4 = n >> 2;
        GRID_STRIDE(i, n4) {
            float4 v = ld4_rw(x + 4 * i);
            v.x *= alpha;
            v.y *= alpha;
            v.z *= alpha;
            v.w *= alpha;
            st4(x + 4 * i, v);
        }
        GRID_STRIDE(i, n - 4 * n4) { x[4 * n4 + i] *= alpha; }
    } else {
        GRID_STRIDE(i, n) { x[i] *= alpha; }
    }
}

// x[i] = value for i < n.
extern "C" __global__ void fill(float *__restrict__ x, float value, i64 n) {
    if (aligned16(x)) {
        const i64 n4 = n >> 2;
        const float4 v = make_float4(value, value, value, value);
        GRID_STRIDE(i, n4) { st4(x + 4 * i, v); }
        GRID_STRIDE(i, n - 4 * n4) { x[4 * n4 + i] = value; }
    } else {
        GRID_STRIDE(i, n) { x[i] = value; }
    }
}

// ------------------------------------------------------------------ modulation-table broadcast

// out[b, k*w + j] = x[b, j] + table[k*w + j] for x: [batch, w], table: [k*w]; `total` =
// batch * k * w (< 2^31).
extern "C" __global__ void broadcast_add(const float *__restrict__ x,
                                         const float *__restrict__ table,
                                         float *__restrict__ out, u32 w, u32 kw, u32 total) {
    GRID_STRIDE32(i, total) {
        const u32 b = i / kw;
        const u32 t = i - b * kw;
        const u32 j = t % w;
        out[i] = x[b * w + j] + table[t];
    }
}

// Backward of broadcast_add; both outputs accumulate, in the CPU's order:
// dx[b, j] += dout[b, 0*w + j], then += dout[b, 1*w + j], ...; dtable[t] += dout[0, t], then
// += dout[1, t], ... Threads [0, batch*w) own dx, threads [batch*w, batch*w + k*w) own dtable.
extern "C" __global__ void broadcast_add_backward(const float *__restrict__ dout,
                                                  float *__restrict__ dx,
                                                  float *__restrict__ dtable, u32 batch, u32 w,
                                                  u32 k) {
    const u32 kw = k * w;
    const u32 ndx = batch * w;
    GRID_STRIDE32(i, ndx + kw) {
        if (i < ndx) {
            const u32 b = i / w;
            const u32 j = i - b * w;
            const float *row = dout + (u64)b * kw + j;
            float acc = dx[i];
            for (u32 kk = 0; kk < k; ++kk) acc += row[(u64)kk * w];
            dx[i] = acc;
        } else {
            const u32 t = i - ndx;
            float acc = dtable[t];
            for (u32 b = 0; b < batch; ++b) acc += dout[(u64)b * kw + t];
            dtable[t] = acc;
        }
    }
}
