// Rotary embedding (src/backend/cpu/rope.rs) and (un)patchify (src/backend/cpu/patch.rs).
// Index counts are < 2^31 (checked by the launchers).

// Rotates interleaved pairs of x: [batch, tokens, heads, 2 * half] in place by the per-token
// angles cos, sin: [tokens, half]: out[2i] = a c - b s, out[2i+1] = a s + b c with s negated
// when sign < 0 (the inverse rotation, which is also the backward). Products are rounded
// separately, as on the CPU. npairs = batch * tokens * heads * half.
extern "C" __global__ void rope(float *__restrict__ x, const float *__restrict__ cos_t,
                                const float *__restrict__ sin_t, float sign, u32 tokens,
                                u32 heads, u32 half, u32 npairs) {
    const u32 head_pairs = heads * half;
    if ((half & 1) == 0 && aligned16(x) && aligned16(cos_t) && aligned16(sin_t)) {
        // Two pairs per thread: pairs 2q and 2q + 1 share a head and a token.
        GRID_STRIDE32(q, npairs >> 1) {
            const u32 p = 2 * q;
            const u32 i = p % half;
            const u32 t = (p / head_pairs) % tokens;
            float4 v = ld4_rw(x + 2 * p);
            const float2 c = *(const float2 *)(cos_t + t * half + i);
            float2 s = *(const float2 *)(sin_t + t * half + i);
            s.x *= sign;
            s.y *= sign;
            const float a0 = v.x, b0 = v.y, a1 = v.z, b1 = v.w;
            v.x = __fsub_rn(__fmul_rn(a0, c.x), __fmul_rn(b0, s.x));
            v.y = __fadd_rn(__fmul_rn(a0, s.x), __fmul_rn(b0, c.x));
            v.z = __fsub_rn(__fmul_rn(a1, c.y), __fmul_rn(b1, s.y));
            v.w = __fadd_rn(__fmul_rn(a1, s.y), __fmul_rn(b1, c.y));
            st4(x + 2 * p, v);
        }
    } else {
        GRID_STRIDE32(p, npairs) {
            const u32 i = p % half;
            const u32 t = (p / head_pairs) % tokens;
            const float c = cos_t[t * half + i];
            const float s = sign * sin_t[t * half + i];
            const float a = x[2 * p], b = x[2 * p + 1];
            x[2 * p] = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
            x[2 * p + 1] = __fadd_rn(__fmul_rn(a, s), __fmul_rn(b, c));
        }
    }
}

// Offset inside one sample's token block [L, 4C] of video element (c, f, h, w) of a
// [C, F, H, W] sample: token (f * H/2 + h/2) * W/2 + w/2; inside a patch, channel-major order
// (order 0) stores (c, ph, pw) and channel-minor order (order 1) stores (ph, pw, c).
__device__ __forceinline__ u32 patch_offset(u32 vid, u32 channels, u32 frames, u32 height,
                                            u32 width, int order) {
    const u32 w = vid % width;
    const u32 h = (vid / width) % height;
    const u32 f = (vid / (width * height)) % frames;
    const u32 c = vid / (width * height * frames);
    const u32 tok = (f * (height / 2) + h / 2) * (width / 2) + w / 2;
    const u32 ph = h & 1, pw = w & 1;
    const u32 inner = order == 0 ? c * 4 + ph * 2 + pw : (ph * 2 + pw) * channels + c;
    return tok * (channels * 4) + inner;
}

// tokens[b, patch_offset(v)] = x[b, v] for x: [batch, C, F, H, W] (H, W even); total =
// batch * C * F * H * W, per = C * F * H * W.
extern "C" __global__ void patchify(const float *__restrict__ x, float *__restrict__ tokens,
                                    u32 channels, u32 frames, u32 height, u32 width, int order,
                                    u32 per, u32 total) {
    GRID_STRIDE32(i, total) {
        const u32 b = i / per;
        const u32 v = i - b * per;
        tokens[b * per + patch_offset(v, channels, frames, height, width, order)] = x[i];
    }
}

// x[b, v] = tokens[b, patch_offset(v)] (the inverse of patchify, and its backward).
extern "C" __global__ void unpatchify(const float *__restrict__ tokens, float *__restrict__ x,
                                      u32 channels, u32 frames, u32 height, u32 width, int order,
                                      u32 per, u32 total) {
    GRID_STRIDE32(i, total) {
        const u32 b = i / per;
        const u32 v = i - b * per;
        x[i] = tokens[b * per + patch_offset(v, channels, frames, height, width, order)];
    }
}
