// Deterministic reductions: column sums over rows (the parameter and modulation gradients of the
// norm and modulation ops, bias gradients) and the f64 sum of squares. Each is two stages with a
// fixed split that depends only on the shapes: stage 1 writes per-chunk partial sums, stage 2
// adds them in chunk order, so results are bit-for-bit reproducible run to run.

// colsum_partial modes (a, b: [groups, rows, d]; mean, rstd: [groups * rows]):
#define CS_SUM 0      // p[j] = sum_r a                                       (width d)
#define CS_DOT 1      // p[j] = sum_r a * b                                   (width d)
#define CS_SUM_DOT 2  // p[j] = sum_r a, p[d + j] = sum_r a * b               (width 2d)
#define CS_LN 3       // p[j] = sum_r a * ((b - mean) * rstd), p[d + j] = sum_r a (width 2d)
#define CS_RMS 4      // p[j] = sum_r a * (b * rstd)                          (width d)

#define CS_COLS 32
#define CS_ROWS 8

template <int MODE>
__device__ __forceinline__ void colsum_rows(const float *__restrict__ a, const float *__restrict__ b,
                                            const float *__restrict__ mean,
                                            const float *__restrict__ rstd, i64 row0, int r0,
                                            int r1, int d, int col, float &s0, float &s1) {
#pragma unroll 4
    for (int r = r0 + (int)threadIdx.y; r < r1; r += CS_ROWS) {
        const i64 row = row0 + r;
        const i64 idx = row * d + col;
        const float av = a[idx];
        if (MODE == CS_SUM) {
            s0 += av;
        } else if (MODE == CS_DOT) {
            s0 += av * b[idx];
        } else if (MODE == CS_SUM_DOT) {
            s0 += av;
            s1 += av * b[idx];
        } else if (MODE == CS_LN) {
            s0 += av * ((b[idx] - mean[row]) * rstd[row]);
            s1 += av;
        } else {
            s0 += av * (b[idx] * rstd[row]);
        }
    }
}

// Stage 1. grid = (ceil(d / 32), chunks, groups), block = (32, 8). Chunk c of group g covers rows
// [c * chunk_rows, min((c + 1) * chunk_rows, rows)); partial: [groups, chunks, width] with width
// d or 2d by mode (overwritten). b, mean, rstd may be any valid pointer where the mode ignores them.
extern "C" __global__ void colsum_partial(int mode, const float *__restrict__ a,
                                          const float *__restrict__ b,
                                          const float *__restrict__ mean,
                                          const float *__restrict__ rstd,
                                          float *__restrict__ partial, int rows, int d,
                                          int chunk_rows) {
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int col = blockIdx.x * CS_COLS + tx;
    const int chunk = blockIdx.y, chunks = gridDim.y;
    const int g = blockIdx.z;
    const i64 row0 = (i64)g * rows;
    const int r0 = chunk * chunk_rows;
    const int r1 = min(r0 + chunk_rows, rows);
    float s0 = 0.0f, s1 = 0.0f;
    if (col < d) {
        switch (mode) {
        case CS_SUM: colsum_rows<CS_SUM>(a, b, mean, rstd, row0, r0, r1, d, col, s0, s1); break;
        case CS_DOT: colsum_rows<CS_DOT>(a, b, mean, rstd, row0, r0, r1, d, col, s0, s1); break;
        case CS_SUM_DOT:
            colsum_rows<CS_SUM_DOT>(a, b, mean, rstd, row0, r0, r1, d, col, s0, s1);
            break;
        case CS_LN: colsum_rows<CS_LN>(a, b, mean, rstd, row0, r0, r1, d, col, s0, s1); break;
        default: colsum_rows<CS_RMS>(a, b, mean, rstd, row0, r0, r1, d, col, s0, s1); break;
        }
    }
    __shared__ float sh0[CS_ROWS][CS_COLS];
    __shared__ float sh1[CS_ROWS][CS_COLS];
    sh0[ty][tx] = s0;
    sh1[ty][tx] = s1;
    __syncthreads();
    if (ty == 0 && col < d) {
        float t0 = 0.0f, t1 = 0.0f;
#pragma unroll
        for (int k = 0; k < CS_ROWS; ++k) {
            t0 += sh0[k][tx];
            t1 += sh1[k][tx];
        }
        const bool two = mode == CS_SUM_DOT || mode == CS_LN;
        const int width = two ? 2 * d : d;
        float *p = partial + ((i64)g * chunks + chunk) * width;
        p[col] = t0;
        if (two) p[d + col] = t1;
    }
}

// Stage 2: out[g * out_stride + out_off + j] += sum_c partial[(g * chunks + c) * width + col0 + j]
// for g < groups, j < ncols (the sum over chunks is formed first, in chunk order, then added).
extern "C" __global__ void colsum_finalize(const float *__restrict__ partial, int chunks,
                                           int width, int col0, int ncols, int groups,
                                           float *__restrict__ out, i64 out_stride, i64 out_off) {
    GRID_STRIDE32(i, (u32)groups * (u32)ncols) {
        const u32 g = i / (u32)ncols;
        const u32 j = i - g * (u32)ncols;
        const float *p = partial + (i64)g * chunks * width + col0 + j;
        float acc = 0.0f;
        for (int c = 0; c < chunks; ++c) acc += p[(i64)c * width];
        out[(i64)g * out_stride + out_off + j] += acc;
    }
}

// ------------------------------------------------------------------ sum of squares

// Sum of a block's values in a fixed order; blockDim.x a multiple of 32, at most 1024. The result
// is valid in thread 0.
__device__ __forceinline__ double block_sum_f64(double v) {
    __shared__ double warps[32];
    v = warp_sum_f64(v);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) warps[warp] = v;
    __syncthreads();
    double t = 0.0;
    if (threadIdx.x == 0) {
        const int nw = blockDim.x >> 5;
        for (int w = 0; w < nw; ++w) t += warps[w];
    }
    return t;
}

// Stage 1: partial[blockIdx.x] = sum of x[i]^2 (in f64) over this block's grid-stride share of
// [0, n). The launcher fixes the grid from n alone, so the split does not depend on the device.
extern "C" __global__ void sum_squares_partial(const float *__restrict__ x, i64 n,
                                               double *__restrict__ partial) {
    double s = 0.0;
    if (aligned16(x)) {
        const i64 n4 = n >> 2;
        GRID_STRIDE(i, n4) {
            const float4 v = ld4(x + 4 * i);
            s += (double)v.x * (double)v.x;
            s += (double)v.y * (double)v.y;
            s += (double)v.z * (double)v.z;
            s += (double)v.w * (double)v.w;
        }
        GRID_STRIDE(i, n - 4 * n4) {
            const double v = (double)x[4 * n4 + i];
            s += v * v;
        }
    } else {
        GRID_STRIDE(i, n) {
            const double v = (double)x[i];
            s += v * v;
        }
    }
    const double t = block_sum_f64(s);
    if (threadIdx.x == 0) partial[blockIdx.x] = t;
}

// Stage 2 (one block): out[slot] = sum of partial[0 .. count) (overwritten).
extern "C" __global__ void sum_squares_finalize(const double *__restrict__ partial, int count,
                                                double *__restrict__ out, int slot) {
    double s = 0.0;
    for (int i = threadIdx.x; i < count; i += blockDim.x) s += partial[i];
    const double t = block_sum_f64(s);
    if (threadIdx.x == 0) out[slot] = t;
}
