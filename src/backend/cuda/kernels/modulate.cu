// Adaptive modulation and gated residuals with per-sample vectors read from the modulation table
// at a ModSlot (src/backend/cpu/modulate.rs): element j of sample b's vector is
// mods[b * stride + offset + j]. Activations are [batch, rows, d]; `per` = rows * d and `total` =
// batch * rows * d (< 2^31, checked by the launchers). The sums over rows that the backward ops
// accumulate into dmods are colsum_partial + colsum_finalize (reduce.cu).
//
// Products and sums are rounded separately (no FMA contraction), matching the CPU bit for bit.

// True when every 4-element group starting at a multiple of 4 stays inside one row and its slot
// values are 16-byte aligned.
__device__ __forceinline__ bool slot_vec_ok(u32 d, u32 stride, u32 offset, const float *mods) {
    return (d & 3) == 0 && (stride & 3) == 0 && (offset & 3) == 0 && aligned16(mods);
}

// y = x * (1 + scale_b) + shift_b (overwrites y; `1 + scale` rounded first, as torch).
extern "C" __global__ void modulate_forward(const float *__restrict__ x,
                                            const float *__restrict__ mods,
                                            float *__restrict__ y, u32 per, u32 d, u32 total,
                                            u32 sh_stride, u32 sh_off, u32 sc_stride,
                                            u32 sc_off) {
    const bool vec = slot_vec_ok(d, sh_stride, sh_off, mods) &&
                     slot_vec_ok(d, sc_stride, sc_off, mods) && aligned16(x) && aligned16(y) &&
                     (total & 3) == 0;
    if (vec) {
        GRID_STRIDE32(i, total >> 2) {
            const u32 e = 4 * i;
            const u32 b = e / per;
            const u32 j = (e - b * per) % d;
            const float4 v = ld4(x + e);
            const float4 sh = ld4(mods + b * sh_stride + sh_off + j);
            const float4 sc = ld4(mods + b * sc_stride + sc_off + j);
            float4 o;
            o.x = mul_add_rn(v.x, 1.0f + sc.x, sh.x);
            o.y = mul_add_rn(v.y, 1.0f + sc.y, sh.y);
            o.z = mul_add_rn(v.z, 1.0f + sc.z, sh.z);
            o.w = mul_add_rn(v.w, 1.0f + sc.w, sh.w);
            st4(y + e, o);
        }
    } else {
        GRID_STRIDE32(i, total) {
            const u32 b = i / per;
            const u32 j = (i - b * per) % d;
            const float sh = mods[b * sh_stride + sh_off + j];
            const float sc = mods[b * sc_stride + sc_off + j];
            y[i] = mul_add_rn(x[i], 1.0f + sc, sh);
        }
    }
}

// dx = dy * (1 + scale_b) (overwrites dx). The shift and scale gradients are column sums
// (colsum_partial mode CS_SUM_DOT with a = dy, b = x).
extern "C" __global__ void modulate_backward_dx(const float *__restrict__ dy,
                                                const float *__restrict__ mods,
                                                float *__restrict__ dx, u32 per, u32 d, u32 total,
                                                u32 sc_stride, u32 sc_off) {
    const bool vec = slot_vec_ok(d, sc_stride, sc_off, mods) && aligned16(dy) && aligned16(dx) &&
                     (total & 3) == 0;
    if (vec) {
        GRID_STRIDE32(i, total >> 2) {
            const u32 e = 4 * i;
            const u32 b = e / per;
            const u32 j = (e - b * per) % d;
            const float4 g = ld4(dy + e);
            const float4 sc = ld4(mods + b * sc_stride + sc_off + j);
            st4(dx + e, make_float4(g.x * (1.0f + sc.x), g.y * (1.0f + sc.y), g.z * (1.0f + sc.z),
                                    g.w * (1.0f + sc.w)));
        }
    } else {
        GRID_STRIDE32(i, total) {
            const u32 b = i / per;
            const u32 j = (i - b * per) % d;
            dx[i] = dy[i] * (1.0f + mods[b * sc_stride + sc_off + j]);
        }
    }
}

// x += y * gate_b (the gated residual; x is updated in place).
extern "C" __global__ void gated_add_forward(float *__restrict__ x, const float *__restrict__ y,
                                             const float *__restrict__ mods, u32 per, u32 d,
                                             u32 total, u32 g_stride, u32 g_off) {
    const bool vec = slot_vec_ok(d, g_stride, g_off, mods) && aligned16(x) && aligned16(y) &&
                     (total & 3) == 0;
    if (vec) {
        GRID_STRIDE32(i, total >> 2) {
            const u32 e = 4 * i;
            const u32 b = e / per;
            const u32 j = (e - b * per) % d;
            float4 v = ld4_rw(x + e);
            const float4 u = ld4(y + e);
            const float4 g = ld4(mods + b * g_stride + g_off + j);
            v.x = mul_add_rn(u.x, g.x, v.x);
            v.y = mul_add_rn(u.y, g.y, v.y);
            v.z = mul_add_rn(u.z, g.z, v.z);
            v.w = mul_add_rn(u.w, g.w, v.w);
            st4(x + e, v);
        }
    } else {
        GRID_STRIDE32(i, total) {
            const u32 b = i / per;
            const u32 j = (i - b * per) % d;
            x[i] = mul_add_rn(y[i], mods[b * g_stride + g_off + j], x[i]);
        }
    }
}

// dy = dx * gate_b (overwrites dy). The gate gradient is a column sum (colsum_partial mode
// CS_DOT with a = dx, b = y).
extern "C" __global__ void gated_add_backward_dy(const float *__restrict__ dx,
                                                 const float *__restrict__ mods,
                                                 float *__restrict__ dy, u32 per, u32 d, u32 total,
                                                 u32 g_stride, u32 g_off) {
    const bool vec = slot_vec_ok(d, g_stride, g_off, mods) && aligned16(dx) && aligned16(dy) &&
                     (total & 3) == 0;
    if (vec) {
        GRID_STRIDE32(i, total >> 2) {
            const u32 e = 4 * i;
            const u32 b = e / per;
            const u32 j = (e - b * per) % d;
            const float4 a = ld4(dx + e);
            const float4 g = ld4(mods + b * g_stride + g_off + j);
            st4(dy + e, make_float4(a.x * g.x, a.y * g.y, a.z * g.z, a.w * g.w));
        }
    } else {
        GRID_STRIDE32(i, total) {
            const u32 b = i / per;
            const u32 j = (i - b * per) % d;
            dy[i] = dx[i] * mods[b * g_stride + g_off + j];
        }
    }
}
