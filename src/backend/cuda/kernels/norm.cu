// LayerNorm and RMSNorm over rows of width d, forward and backward (src/backend/cpu/norm.rs).
// One warp per row (blockDim.x a multiple of 32, rows = blockIdx.x * warps + warp); row
// statistics are summed per lane in f32 and combined by a butterfly warp reduction. LayerNorm uses
// two passes (mean, then the centred sum of squares). The parameter gradients (sums over rows)
// are computed by colsum_partial + colsum_finalize in reduce.cu.

// Sum over one row of f(a[j]) by one warp; every lane returns the total.
template <class F>
__device__ __forceinline__ float row_sum1(const float *__restrict__ a, int d, bool vec, F f) {
    const int lane = threadIdx.x & 31;
    float s = 0.0f;
    if (vec) {
#pragma unroll 4
        for (int j = lane * 4; j < d; j += 128) {
            const float4 v = ld4(a + j);
            s += (f(v.x) + f(v.y)) + (f(v.z) + f(v.w));
        }
    } else {
        for (int j = lane; j < d; j += 32) s += f(a[j]);
    }
    return warp_sum(s);
}

__device__ __forceinline__ i64 warp_row() {
    return (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
}

// ------------------------------------------------------------------ LayerNorm

// x, y: [rows, d]; weight, bias: [d] (used only when has_weight / has_bias; otherwise any valid
// pointer); mean, rstd: [rows] (overwritten). y = (x - mean) * rstd (* weight) (+ bias) with
// rstd = 1 / sqrt(biased var + eps).
extern "C" __global__ void layernorm_forward(const float *__restrict__ x,
                                             const float *__restrict__ weight,
                                             const float *__restrict__ bias, int has_weight,
                                             int has_bias, float eps, float *__restrict__ y,
                                             float *__restrict__ mean, float *__restrict__ rstd,
                                             int rows, int d) {
    const i64 row = warp_row();
    if (row >= rows) return;
    const int lane = threadIdx.x & 31;
    const float *xr = x + row * d;
    float *yr = y + row * d;
    const bool vec = (d & 3) == 0 && aligned16(x) && aligned16(y) && aligned16(weight) &&
                     aligned16(bias);
    const float mu = row_sum1(xr, d, vec, [](float v) { return v; }) / (float)d;
    const float var =
        row_sum1(xr, d, vec, [mu](float v) { return (v - mu) * (v - mu); }) / (float)d;
    const float rs = 1.0f / sqrtf(var + eps);
    if (vec) {
        for (int j = lane * 4; j < d; j += 128) {
            const float4 v = ld4(xr + j);
            float4 o = make_float4((v.x - mu) * rs, (v.y - mu) * rs, (v.z - mu) * rs,
                                   (v.w - mu) * rs);
            if (has_weight) {
                const float4 w = ld4(weight + j);
                o.x = __fmul_rn(o.x, w.x);
                o.y = __fmul_rn(o.y, w.y);
                o.z = __fmul_rn(o.z, w.z);
                o.w = __fmul_rn(o.w, w.w);
            }
            if (has_bias) {
                const float4 b = ld4(bias + j);
                o.x += b.x;
                o.y += b.y;
                o.z += b.z;
                o.w += b.w;
            }
            st4(yr + j, o);
        }
    } else {
        for (int j = lane; j < d; j += 32) {
            float o = (xr[j] - mu) * rs;
            if (has_weight) o = __fmul_rn(o, weight[j]);
            if (has_bias) o += bias[j];
            yr[j] = o;
        }
    }
    if (lane == 0) {
        mean[row] = mu;
        rstd[row] = rs;
    }
}

// Overwrites dx: with xhat = (x - mean) rstd and g = dy * weight (or dy),
// dx = rstd (g - mean(g) - xhat mean(g xhat)).
extern "C" __global__ void layernorm_backward_dx(const float *__restrict__ dy,
                                                 const float *__restrict__ x,
                                                 const float *__restrict__ weight, int has_weight,
                                                 const float *__restrict__ mean,
                                                 const float *__restrict__ rstd,
                                                 float *__restrict__ dx, int rows, int d) {
    const i64 row = warp_row();
    if (row >= rows) return;
    const int lane = threadIdx.x & 31;
    const float *dyr = dy + row * d;
    const float *xr = x + row * d;
    float *dxr = dx + row * d;
    const float mu = mean[row], rs = rstd[row];
    const bool vec = (d & 3) == 0 && aligned16(dy) && aligned16(x) && aligned16(dx) &&
                     aligned16(weight);
    float sg = 0.0f, sgx = 0.0f;
    if (vec) {
#pragma unroll 2
        for (int j = lane * 4; j < d; j += 128) {
            float4 g = ld4(dyr + j);
            const float4 v = ld4(xr + j);
            if (has_weight) {
                const float4 w = ld4(weight + j);
                g.x *= w.x;
                g.y *= w.y;
                g.z *= w.z;
                g.w *= w.w;
            }
            sg += (g.x + g.y) + (g.z + g.w);
            sgx += (g.x * ((v.x - mu) * rs) + g.y * ((v.y - mu) * rs)) +
                   (g.z * ((v.z - mu) * rs) + g.w * ((v.w - mu) * rs));
        }
    } else {
        for (int j = lane; j < d; j += 32) {
            const float g = has_weight ? dyr[j] * weight[j] : dyr[j];
            sg += g;
            sgx += g * ((xr[j] - mu) * rs);
        }
    }
    const float mg = warp_sum(sg) / (float)d;
    const float mgx = warp_sum(sgx) / (float)d;
    if (vec) {
        for (int j = lane * 4; j < d; j += 128) {
            float4 g = ld4(dyr + j);
            const float4 v = ld4(xr + j);
            if (has_weight) {
                const float4 w = ld4(weight + j);
                g.x *= w.x;
                g.y *= w.y;
                g.z *= w.z;
                g.w *= w.w;
            }
            float4 o;
            o.x = rs * (g.x - mg - ((v.x - mu) * rs) * mgx);
            o.y = rs * (g.y - mg - ((v.y - mu) * rs) * mgx);
            o.z = rs * (g.z - mg - ((v.z - mu) * rs) * mgx);
            o.w = rs * (g.w - mg - ((v.w - mu) * rs) * mgx);
            st4(dxr + j, o);
        }
    } else {
        for (int j = lane; j < d; j += 32) {
            const float g = has_weight ? dyr[j] * weight[j] : dyr[j];
            dxr[j] = rs * (g - mg - ((xr[j] - mu) * rs) * mgx);
        }
    }
}

// ------------------------------------------------------------------ RMSNorm

// y = (x * rstd) * weight with rstd = 1 / sqrt(mean(x^2) + eps) (overwritten, per row).
extern "C" __global__ void rmsnorm_forward(const float *__restrict__ x,
                                           const float *__restrict__ weight, float eps,
                                           float *__restrict__ y, float *__restrict__ rstd,
                                           int rows, int d) {
    const i64 row = warp_row();
    if (row >= rows) return;
    const int lane = threadIdx.x & 31;
    const float *xr = x + row * d;
    float *yr = y + row * d;
    const bool vec = (d & 3) == 0 && aligned16(x) && aligned16(y) && aligned16(weight);
    const float ms = row_sum1(xr, d, vec, [](float v) { return v * v; }) / (float)d;
    const float r = 1.0f / sqrtf(ms + eps);
    if (vec) {
        for (int j = lane * 4; j < d; j += 128) {
            const float4 v = ld4(xr + j);
            const float4 w = ld4(weight + j);
            st4(yr + j, make_float4(__fmul_rn(v.x, r) * w.x, __fmul_rn(v.y, r) * w.y,
                                    __fmul_rn(v.z, r) * w.z, __fmul_rn(v.w, r) * w.w));
        }
    } else {
        for (int j = lane; j < d; j += 32) yr[j] = __fmul_rn(xr[j], r) * weight[j];
    }
    if (lane == 0) rstd[row] = r;
}

// Overwrites dx: with g = dy * weight, dx = rstd (g - x rstd^2 mean(g x)).
extern "C" __global__ void rmsnorm_backward_dx(const float *__restrict__ dy,
                                               const float *__restrict__ x,
                                               const float *__restrict__ weight,
                                               const float *__restrict__ rstd,
                                               float *__restrict__ dx, int rows, int d) {
    const i64 row = warp_row();
    if (row >= rows) return;
    const int lane = threadIdx.x & 31;
    const float *dyr = dy + row * d;
    const float *xr = x + row * d;
    float *dxr = dx + row * d;
    const float rs = rstd[row];
    const bool vec =
        (d & 3) == 0 && aligned16(dy) && aligned16(x) && aligned16(dx) && aligned16(weight);
    float s = 0.0f;
    if (vec) {
#pragma unroll 2
        for (int j = lane * 4; j < d; j += 128) {
            const float4 g = ld4(dyr + j);
            const float4 v = ld4(xr + j);
            const float4 w = ld4(weight + j);
            s += ((g.x * w.x) * v.x + (g.y * w.y) * v.y) + ((g.z * w.z) * v.z + (g.w * w.w) * v.w);
        }
    } else {
        for (int j = lane; j < d; j += 32) s += (dyr[j] * weight[j]) * xr[j];
    }
    const float k = rs * rs * (warp_sum(s) / (float)d);
    if (vec) {
        for (int j = lane * 4; j < d; j += 128) {
            const float4 g = ld4(dyr + j);
            const float4 v = ld4(xr + j);
            const float4 w = ld4(weight + j);
            st4(dxr + j, make_float4(rs * (g.x * w.x - v.x * k), rs * (g.y * w.y - v.y * k),
                                     rs * (g.z * w.z - v.z * k), rs * (g.w * w.w - v.w * k)));
        }
    } else {
        for (int j = lane; j < d; j += 32) dxr[j] = rs * (dyr[j] * weight[j] - xr[j] * k);
    }
}
