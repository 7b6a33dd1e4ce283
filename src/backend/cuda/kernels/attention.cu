// Flash attention (forward and backward) for the prfl CUDA backend.
//
// Semantics are the CPU backend's (src/backend/cpu/attention.rs):
//   q, out, dq, dout : [batch, lq, heads, d]  (f32, token-major, heads interleaved)
//   k, v, dk, dv     : [batch, lk, heads, d]
//   lse, delta       : [batch, heads, lq]     lse = ln sum_j exp(scale q.k_j), natural log
//   scale = 1/sqrt(d), no mask; the backward overwrites dq, dk, dv.
// Every element of every output row below lq (lk) is written; nothing else is touched.
//
// Self-contained CUDA C for NVRTC: no #include, bf16 handled as 16-bit patterns (packed in
// pairs by cvt.rn.bf16x2.f32, which rounds to nearest even and keeps NaN), tensor cores through
// inline PTX (mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32, ldmatrix). sm_80 and newer.
//
// ------------------------------------------------------------------------------------------
// Tensor-core path (FlashAttention-2 structure), instantiated for d in {16, 32, 64, 128}:
//
//   flash_fwd_d{D}        block = 128 threads = 4 warps, owns BM = 64 query rows of one
//                         (batch, head); each warp owns 16 rows. Streams over key tiles of
//                         BN = 64: K, V are read as f32, rounded to bf16 and stored in shared
//                         memory (row stride d + 8 halves: conflict-free 32-bit fragment loads
//                         and ldmatrix rows). S = Q K^T by mma (Q fragments held in registers),
//                         online softmax in f32 registers with exp2 (scores pre-multiplied by
//                         scale * log2 e), P re-packed from the accumulator registers straight
//                         into A fragments, O += P V with V's B fragments from ldmatrix.trans.
//                         lse = ln2 * (m + log2 l). Never forms an lq x lk matrix.
//   flash_bwd_delta       delta[b, h, i] = sum_c dout * out (one warp per row).
//   flash_bwd_dkdv_d{D}   block owns 64 keys (16 per warp), keeps dK, dV in f32 registers, streams
//                         over query tiles of BMB (32 for d = 128, else 64): S^T = K Q^T,
//                         P^T = exp2(S^T scale log2e - lse log2e), dV += P^T dO,
//                         dP^T = V dO^T, dS^T = P^T (dP^T - delta), dK += dS^T Q; dK scaled once.
//   flash_bwd_dq_d{D}     block owns 64 query rows (16 per warp), keeps dQ in registers, streams
//                         over key tiles of 64: S = Q K^T, P, dP = dO V^T, dS, dQ += dS K.
//
// Why a separate dQ pass instead of FA2's atomicAdd into an f32 dQ accumulator: each kernel owns
// its output rows, so no atomics, no zeroed scratch, no smem round trip of dS in the other
// layout, and bitwise-reproducible results (like the CPU backend, which makes the same choice).
// The price is recomputing S and dP: 7 tile GEMMs instead of 5 (1.4x the backward flops).
//
// Precision: operands rounded to bf16, products accumulated in f32, softmax statistics in f32.
// Against an f64 reference (lane-level emulation of these kernels, |q|, |k| <= 2, d 16..128):
// relative L2 error 3e-3 (out), 1e-4 (lse), 4e-3..5e-3 (dq, dk, dv). It grows with the score
// magnitude (bf16 rounding of q and k shifts a score by ~|s| 2^-9: 3e-2 at scores ~ +-50), and
// where the exact result is 0 (a single key: dq = dk = 0) the output is bf16 rounding noise of
// size ~1e-3 |dout| |v|, not 0.
//
// FLOPs (multiply-add = 2) per call, N = batch * heads:
//   forward   4 N lq lk d
//   backward  dkdv 8 N lq lk d + dq 6 N lq lk d = 14 N lq lk d
// Wan2.1-1.3B self-attention (lq = lk = 32760, 12 heads, d = 128) per sample: forward 6.6e12,
// backward 2.3e13.
//
// Resources, d = 128 (ptxas 13.0, registers sm_80 / sm_89 / sm_90; no spills, no stack anywhere):
//   fwd   168 / 166 / 165 regs (O 64 + S 32 + Q fragments 32 + addressing; __launch_bounds__
//         (128, 3) keeps it <= 168 so that 3 blocks = 12 warps fit an SM's registers);
//         smem 2 x 64 x 136 x 2 = 34816 B (Q is staged through the K buffer).
//   dkdv  222 / 222 / 248 regs (dK 64 + dV 64 + S^T 16 + dP^T 16 + hoisted fragments): 2 blocks
//         per SM; smem (K, V 64 rows + Q, dO 32 rows) x 272 B + 256 B = 52480 B (> 48 KB opt-in).
//   dq    237 / 237 / 244 regs (dQ 64 + S 32 + dP 32 + hoisted fragments): 2 blocks per SM on
//         sm_80 / sm_90, 1 on sm_89 (99 KB of shared memory per SM); smem 4 x 64 x 272 B = 69632 B.
// Per key tile and warp the d = 128 forward issues 128 HMMA.16816 (64 for S, 64 for P V) and 32
// LDSM.MT88.4; the dkdv step (32 queries) 128 HMMA, the dq step (64 keys) 192 HMMA.
// The tile loads are register staged (the f32 -> bf16 rounding needs the registers anyway, so
// no cp.async) and not double buffered: the other resident blocks hide their latency.
// Grids are 1-D: blockIdx.x = tile + n_tiles * (b * heads + h), so blocks of one head run
// together and share K/V in L2. The tensor-core kernels read and write rows with 16-byte
// (float4) loads and 8-byte stores: buffers must start 16-byte aligned (every cudarc allocation
// does) and d is a multiple of 16.
//
// Ragged tails: rows of a tile past lq / lk are zero-filled in shared memory, scores of keys past
// lk are masked (-inf / P = 0), query rows past lq get lse = +inf in the dK/dV pass (P = 0), and
// only rows below lq / lk are stored. Warps whose 16 rows all lie past the end skip the math
// (they still take part in the loads and barriers).
//
// Simple path (any d <= 256, also a second reference): f32 throughout, one warp per row (lane
// owns columns lane + 32 u), one key / query at a time with warp-shuffle dot products.
//   attn_fwd_simple, attn_bwd_dq_simple, attn_bwd_dkdv_simple (+ flash_bwd_delta).
// ------------------------------------------------------------------------------------------

typedef unsigned int u32;
typedef unsigned short u16;
typedef long long i64;

#define ATTN_LOG2E 1.4426950408889634f
#define ATTN_LN2 0.6931471805599453f

// The block's dynamic shared memory (sized by the launch). The CPU emulation (tests/cuda_emu)
// hands out a heap block of exactly that size instead.
#ifdef PRFL_CUDA_CPU_EMU
#define DYN_SMEM(name) unsigned char* const name = prfl_emu_dynamic_smem()
#else
#define DYN_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#endif

__device__ __forceinline__ float attn_inf() { return __int_as_float(0x7f800000); }

// 2^x (MUFU.EX2; ex2(-inf) = +0, relative error ~2^-22).
__device__ __forceinline__ float fast_exp2(float x) {
    float y;
#ifdef PRFL_CUDA_CPU_EMU
    y = prfl_emu_ex2_approx_ftz_f32(x);
#else
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
#endif
    return y;
}

// Two f32 -> one register of two bf16 (round to nearest even): `lo` in bits 0..15.
__device__ __forceinline__ u32 pack_bf16x2(float lo, float hi) {
    u32 r;
#ifdef PRFL_CUDA_CPU_EMU
    r = prfl_emu_cvt_rn_bf16x2_f32(hi, lo);
#else
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
#endif
    return r;
}

__device__ __forceinline__ u32 smem_addr(const void* p) {
    return (u32)__cvta_generic_to_shared(p);
}

__device__ __forceinline__ u32 lds32(const u16* p) { return *reinterpret_cast<const u32*>(p); }

// D (16x8, f32) += A (16x16, bf16, row) * B (16x8, bf16, col).
// Fragments (g = lane / 4, t = lane % 4):
//   a0 = A[g][2t..2t+1]   a1 = A[g+8][2t..]   a2 = A[g][2t+8..]   a3 = A[g+8][2t+8..]
//   b0 = B[2t..2t+1][g]   b1 = B[2t+8..2t+9][g]
//   c0, c1 = C[g][2t], C[g][2t+1]      c2, c3 = C[g+8][2t], C[g+8][2t+1]
__device__ __forceinline__ void mma_bf16(float* c, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0,
                                         u32 b1) {
#ifdef PRFL_CUDA_CPU_EMU
    prfl_emu_mma_m16n8k16_bf16(c, a0, a1, a2, a3, b0, b1);
#else
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#endif
}

// Four transposed 8x8 bf16 matrices; lane l gives the shared address of row l % 8 of matrix l / 8
// and receives, of matrix i, the elements [2 (l % 4)][l / 4] and [2 (l % 4) + 1][l / 4] in r[i].
// For a row-major [k][n] tile this is exactly the mma B fragment of B[k][n].
__device__ __forceinline__ void ldsm_x4_trans(u32 addr, u32& r0, u32& r1, u32& r2, u32& r3) {
#ifdef PRFL_CUDA_CPU_EMU
    prfl_emu_ldmatrix_x4_trans(addr, r0, r1, r2, r3);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr)
                 : "memory");
#endif
}

// Rows r0 .. r0 + ROWS - 1 of one head of a [batch, len, heads, D] f32 tensor (row r at
// g + base + r * rs) -> bf16 rows of stride D + 8 in shared memory; rows >= len are zeros.
// Threads walk the tile in float4 steps along a row: a warp reads whole rows (coalesced).
template <int D, int ROWS, int NT>
__device__ __forceinline__ void load_tile_bf16(u16* s, const float* __restrict__ g, i64 base,
                                               i64 rs, int r0, int len) {
    constexpr int C4 = D / 4;
    constexpr int LDS = D + 8;
#pragma unroll 4
    for (int i = threadIdx.x; i < ROWS * C4; i += NT) {
        const int r = i / C4;
        const int c = i - r * C4;
        float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
        if (r0 + r < len) {
            x = *reinterpret_cast<const float4*>(g + base + (i64)(r0 + r) * rs + c * 4);
        }
        uint2 y;
        y.x = pack_bf16x2(x.x, x.y);
        y.y = pack_bf16x2(x.z, x.w);
        *reinterpret_cast<uint2*>(s + r * LDS + c * 4) = y;
    }
}

// A fragment (16 rows from `row0`, columns kc .. kc + 15) of a bf16 tile with row stride LDS.
template <int LDS>
__device__ __forceinline__ void load_a(const u16* s, int row0, int kc, int g, int t, u32* a) {
    const u16* p = s + (row0 + g) * LDS + kc + 2 * t;
    a[0] = lds32(p);
    a[1] = lds32(p + 8 * LDS);
    a[2] = lds32(p + 8);
    a[3] = lds32(p + 8 * LDS + 8);
}

// B fragment of B[k][n] = T[n][k] (T row-major, rows n0 .. n0 + 7, columns kc .. kc + 15).
template <int LDS>
__device__ __forceinline__ void load_b_nk(const u16* s, int n0, int kc, int g, int t, u32& b0,
                                          u32& b1) {
    const u16* p = s + (n0 + g) * LDS + kc + 2 * t;
    b0 = lds32(p);
    b1 = lds32(p + 8);
}

// acc[16 x D] += A (16 x 16 k-block in registers) * T[k0 .. k0 + 15][0 .. D - 1] (T row-major in
// shared memory, B fragments by ldmatrix.trans: two n-tiles of 8 per instruction).
template <int D>
__device__ __forceinline__ void mma_a_times_rows(float (*acc)[4], const u32* a, u32 s_base,
                                                 int k0, int lane) {
    constexpr int LDS = D + 8;
    const int row = k0 + (lane & 7) + ((lane >> 3) & 1) * 8;
    const int col = (lane >> 4) * 8;
    const u32 addr = s_base + (u32)((row * LDS + col) * 2);
#pragma unroll
    for (int np = 0; np < D / 16; ++np) {
        u32 b0, b1, b2, b3;
        ldsm_x4_trans(addr + np * 32, b0, b1, b2, b3);
        mma_bf16(acc[2 * np], a[0], a[1], a[2], a[3], b0, b1);
        mma_bf16(acc[2 * np + 1], a[0], a[1], a[2], a[3], b2, b3);
    }
}

// The accumulator tiles 2 kk and 2 kk + 1 (16 x 16 of f32) as one bf16 A fragment.
__device__ __forceinline__ void acc_to_a(const float* c0, const float* c1, u32* a) {
    a[0] = pack_bf16x2(c0[0], c0[1]);
    a[1] = pack_bf16x2(c0[2], c0[3]);
    a[2] = pack_bf16x2(c1[0], c1[1]);
    a[3] = pack_bf16x2(c1[2], c1[3]);
}

// ------------------------------------------------------------------------------------------
// Forward.

template <int D>
__device__ __forceinline__ void flash_fwd(const float* __restrict__ q, const float* __restrict__ k,
                                          const float* __restrict__ v, float* __restrict__ out,
                                          float* __restrict__ lse, int batch, int lq, int lk,
                                          int heads, float scale_log2) {
    constexpr int BM = 64, BN = 64, NT = 128, LDS = D + 8;
    DYN_SMEM(attn_smem);
    u16* sK = reinterpret_cast<u16*>(attn_smem);
    u16* sV = sK + BN * LDS;

    const int n_qt = (lq + BM - 1) / BM;
    const int tile = blockIdx.x % n_qt;
    const int bh = blockIdx.x / n_qt;
    if (bh >= batch * heads) return;
    const int b = bh / heads, h = bh - b * heads;
    const int q0 = tile * BM;
    const i64 rs = (i64)heads * D;
    const i64 qbase = ((i64)b * lq * heads + h) * D;
    const i64 kbase = ((i64)b * lk * heads + h) * D;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int wrow = warp * 16;
    const bool active = q0 + wrow < lq;

    // Q tile through the K buffer into registers.
    load_tile_bf16<D, BM, NT>(sK, q, qbase, rs, q0, lq);
    __syncthreads();
    u32 qf[D / 16][4];
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) load_a<LDS>(sK, wrow, kk * 16, g, t, qf[kk]);
    __syncthreads();

    float o[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    // Running max (log2 units of the scaled scores) and this thread's share of the running sum
    // for its two rows g and g + 8.
    float m0 = -attn_inf(), m1 = -attn_inf(), l0 = 0.f, l1 = 0.f;
    const u32 sV_addr = smem_addr(sV);

    for (int k0 = 0; k0 < lk; k0 += BN) {
        load_tile_bf16<D, BN, NT>(sK, k, kbase, rs, k0, lk);
        load_tile_bf16<D, BN, NT>(sV, v, kbase, rs, k0, lk);
        __syncthreads();
        if (active) {
            float s[BN / 8][4];
#pragma unroll
            for (int j = 0; j < BN / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
                for (int j = 0; j < BN / 8; ++j) {
                    u32 b0, b1;
                    load_b_nk<LDS>(sK, 8 * j, kk * 16, g, t, b0, b1);
                    mma_bf16(s[j], qf[kk][0], qf[kk][1], qf[kk][2], qf[kk][3], b0, b1);
                }
            }
            // Scale into log2 units, mask keys past lk, new row maxima. Key k0 < lk is always
            // valid, so the maxima are finite and exp2(m_old - m_new) never sees inf - inf.
            float mx0 = m0, mx1 = m1;
#pragma unroll
            for (int j = 0; j < BN / 8; ++j) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int col = k0 + 8 * j + 2 * t + (e & 1);
                    s[j][e] = col < lk ? s[j][e] * scale_log2 : -attn_inf();
                }
                mx0 = fmaxf(mx0, fmaxf(s[j][0], s[j][1]));
                mx1 = fmaxf(mx1, fmaxf(s[j][2], s[j][3]));
            }
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
            const float c0 = fast_exp2(m0 - mx0), c1 = fast_exp2(m1 - mx1);
            m0 = mx0;
            m1 = mx1;
            float ps0 = 0.f, ps1 = 0.f;
#pragma unroll
            for (int j = 0; j < BN / 8; ++j) {
                s[j][0] = fast_exp2(s[j][0] - m0);
                s[j][1] = fast_exp2(s[j][1] - m0);
                s[j][2] = fast_exp2(s[j][2] - m1);
                s[j][3] = fast_exp2(s[j][3] - m1);
                ps0 += s[j][0] + s[j][1];
                ps1 += s[j][2] + s[j][3];
            }
            l0 = l0 * c0 + ps0;
            l1 = l1 * c1 + ps1;
#pragma unroll
            for (int n = 0; n < D / 8; ++n) {
                o[n][0] *= c0;
                o[n][1] *= c0;
                o[n][2] *= c1;
                o[n][3] *= c1;
            }
            // O += P V.
#pragma unroll
            for (int kk = 0; kk < BN / 16; ++kk) {
                u32 a[4];
                acc_to_a(s[2 * kk], s[2 * kk + 1], a);
                mma_a_times_rows<D>(o, a, sV_addr, kk * 16, lane);
            }
        }
        __syncthreads();
    }

    if (!active) return;
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const int r0 = q0 + wrow + g, r1 = r0 + 8;
    const float inv0 = 1.f / l0, inv1 = 1.f / l1;
    if (r0 < lq) {
        float* p = out + qbase + (i64)r0 * rs + 2 * t;
#pragma unroll
        for (int n = 0; n < D / 8; ++n)
            *reinterpret_cast<float2*>(p + 8 * n) = make_float2(o[n][0] * inv0, o[n][1] * inv0);
        if (t == 0) lse[(i64)bh * lq + r0] = (m0 + log2f(l0)) * ATTN_LN2;
    }
    if (r1 < lq) {
        float* p = out + qbase + (i64)r1 * rs + 2 * t;
#pragma unroll
        for (int n = 0; n < D / 8; ++n)
            *reinterpret_cast<float2*>(p + 8 * n) = make_float2(o[n][2] * inv1, o[n][3] * inv1);
        if (t == 0) lse[(i64)bh * lq + r1] = (m1 + log2f(l1)) * ATTN_LN2;
    }
}

// ------------------------------------------------------------------------------------------
// Backward: delta = rowsum(dout * out), one warp per (batch, query, head) row.

extern "C" __global__ void __launch_bounds__(256)
    flash_bwd_delta(const float* __restrict__ out, const float* __restrict__ dout,
                    float* __restrict__ delta, int batch, int lq, int heads, int d) {
    const i64 row = (i64)blockIdx.x * 8 + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    const i64 rows = (i64)batch * lq * heads;
    if (row >= rows) return;
    const float* o = out + row * d;
    const float* g = dout + row * d;
    float acc = 0.f;
    for (int c = lane; c < d; c += 32) acc += o[c] * g[c];
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    if (lane == 0) {
        // row = (b * lq + i) * heads + h  ->  delta[(b * heads + h) * lq + i]
        const int h = (int)(row % heads);
        const i64 bi = row / heads;
        const i64 b = bi / lq, i = bi - b * lq;
        delta[(b * heads + h) * lq + i] = acc;
    }
}

// dK, dV: block owns 64 keys of one (batch, head), streams over query tiles of BMB rows.
template <int D, int BMB>
__device__ __forceinline__ void flash_bwd_dkdv(
    const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
    const float* __restrict__ dout, const float* __restrict__ lse,
    const float* __restrict__ delta, float* __restrict__ dk, float* __restrict__ dv, int batch,
    int lq, int lk, int heads, float scale, float scale_log2) {
    constexpr int BN = 64, NT = 128, LDS = D + 8;
    DYN_SMEM(attn_smem);
    u16* sK = reinterpret_cast<u16*>(attn_smem);
    u16* sV = sK + BN * LDS;
    u16* sQ = sV + BN * LDS;
    u16* sdO = sQ + BMB * LDS;
    float* sL = reinterpret_cast<float*>(sdO + BMB * LDS);
    float* sDel = sL + BMB;

    const int n_kt = (lk + BN - 1) / BN;
    const int tile = blockIdx.x % n_kt;
    const int bh = blockIdx.x / n_kt;
    if (bh >= batch * heads) return;
    const int b = bh / heads, h = bh - b * heads;
    const int k0 = tile * BN;
    const i64 rs = (i64)heads * D;
    const i64 qbase = ((i64)b * lq * heads + h) * D;
    const i64 kbase = ((i64)b * lk * heads + h) * D;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int wrow = warp * 16;
    const bool active = k0 + wrow < lk;

    load_tile_bf16<D, BN, NT>(sK, k, kbase, rs, k0, lk);
    load_tile_bf16<D, BN, NT>(sV, v, kbase, rs, k0, lk);
    const u32 sQ_addr = smem_addr(sQ), sdO_addr = smem_addr(sdO);

    float dkacc[D / 8][4], dvacc[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
        dkacc[n][0] = dkacc[n][1] = dkacc[n][2] = dkacc[n][3] = 0.f;
        dvacc[n][0] = dvacc[n][1] = dvacc[n][2] = dvacc[n][3] = 0.f;
    }

    for (int q0 = 0; q0 < lq; q0 += BMB) {
        // (The first iteration's barrier also publishes sK, sV.)
        __syncthreads();
        load_tile_bf16<D, BMB, NT>(sQ, q, qbase, rs, q0, lq);
        load_tile_bf16<D, BMB, NT>(sdO, dout, qbase, rs, q0, lq);
        for (int i = threadIdx.x; i < BMB; i += NT) {
            const bool ok = q0 + i < lq;
            sL[i] = ok ? lse[(i64)bh * lq + q0 + i] * ATTN_LOG2E : attn_inf();
            sDel[i] = ok ? delta[(i64)bh * lq + q0 + i] : 0.f;
        }
        __syncthreads();
        if (!active) continue;

        // S^T = K Q^T (16 keys x BMB queries per warp), then P^T.
        float st[BMB / 8][4];
#pragma unroll
        for (int j = 0; j < BMB / 8; ++j) st[j][0] = st[j][1] = st[j][2] = st[j][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            u32 a[4];
            load_a<LDS>(sK, wrow, kk * 16, g, t, a);
#pragma unroll
            for (int j = 0; j < BMB / 8; ++j) {
                u32 b0, b1;
                load_b_nk<LDS>(sQ, 8 * j, kk * 16, g, t, b0, b1);
                mma_bf16(st[j], a[0], a[1], a[2], a[3], b0, b1);
            }
        }
        // Keys past lk (zero rows) get some P here, but their dK / dV rows are never stored;
        // queries past lq have lse = +inf, so P = 0.
#pragma unroll
        for (int j = 0; j < BMB / 8; ++j) {
            const float L0 = sL[8 * j + 2 * t], L1 = sL[8 * j + 2 * t + 1];
            st[j][0] = fast_exp2(st[j][0] * scale_log2 - L0);
            st[j][1] = fast_exp2(st[j][1] * scale_log2 - L1);
            st[j][2] = fast_exp2(st[j][2] * scale_log2 - L0);
            st[j][3] = fast_exp2(st[j][3] * scale_log2 - L1);
        }
        // dV += P^T dO.
#pragma unroll
        for (int kk = 0; kk < BMB / 16; ++kk) {
            u32 a[4];
            acc_to_a(st[2 * kk], st[2 * kk + 1], a);
            mma_a_times_rows<D>(dvacc, a, sdO_addr, kk * 16, lane);
        }
        // dP^T = V dO^T.
        float dpt[BMB / 8][4];
#pragma unroll
        for (int j = 0; j < BMB / 8; ++j) dpt[j][0] = dpt[j][1] = dpt[j][2] = dpt[j][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            u32 a[4];
            load_a<LDS>(sV, wrow, kk * 16, g, t, a);
#pragma unroll
            for (int j = 0; j < BMB / 8; ++j) {
                u32 b0, b1;
                load_b_nk<LDS>(sdO, 8 * j, kk * 16, g, t, b0, b1);
                mma_bf16(dpt[j], a[0], a[1], a[2], a[3], b0, b1);
            }
        }
        // dS^T = P^T (dP^T - delta).
#pragma unroll
        for (int j = 0; j < BMB / 8; ++j) {
            const float d0 = sDel[8 * j + 2 * t], d1 = sDel[8 * j + 2 * t + 1];
            st[j][0] *= dpt[j][0] - d0;
            st[j][1] *= dpt[j][1] - d1;
            st[j][2] *= dpt[j][2] - d0;
            st[j][3] *= dpt[j][3] - d1;
        }
        // dK += dS^T Q (times scale at the end).
#pragma unroll
        for (int kk = 0; kk < BMB / 16; ++kk) {
            u32 a[4];
            acc_to_a(st[2 * kk], st[2 * kk + 1], a);
            mma_a_times_rows<D>(dkacc, a, sQ_addr, kk * 16, lane);
        }
    }

    if (!active) return;
    const int r0 = k0 + wrow + g, r1 = r0 + 8;
    if (r0 < lk) {
        const i64 o = kbase + (i64)r0 * rs + 2 * t;
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
            *reinterpret_cast<float2*>(dk + o + 8 * n) =
                make_float2(dkacc[n][0] * scale, dkacc[n][1] * scale);
            *reinterpret_cast<float2*>(dv + o + 8 * n) = make_float2(dvacc[n][0], dvacc[n][1]);
        }
    }
    if (r1 < lk) {
        const i64 o = kbase + (i64)r1 * rs + 2 * t;
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
            *reinterpret_cast<float2*>(dk + o + 8 * n) =
                make_float2(dkacc[n][2] * scale, dkacc[n][3] * scale);
            *reinterpret_cast<float2*>(dv + o + 8 * n) = make_float2(dvacc[n][2], dvacc[n][3]);
        }
    }
}

// dQ: block owns 64 query rows of one (batch, head), streams over key tiles of 64.
template <int D>
__device__ __forceinline__ void flash_bwd_dq(const float* __restrict__ q,
                                             const float* __restrict__ k,
                                             const float* __restrict__ v,
                                             const float* __restrict__ dout,
                                             const float* __restrict__ lse,
                                             const float* __restrict__ delta,
                                             float* __restrict__ dq, int batch, int lq, int lk,
                                             int heads, float scale, float scale_log2) {
    constexpr int BM = 64, BN = 64, NT = 128, LDS = D + 8;
    DYN_SMEM(attn_smem);
    u16* sQ = reinterpret_cast<u16*>(attn_smem);
    u16* sdO = sQ + BM * LDS;
    u16* sK = sdO + BM * LDS;
    u16* sV = sK + BN * LDS;

    const int n_qt = (lq + BM - 1) / BM;
    const int tile = blockIdx.x % n_qt;
    const int bh = blockIdx.x / n_qt;
    if (bh >= batch * heads) return;
    const int b = bh / heads, h = bh - b * heads;
    const int q0 = tile * BM;
    const i64 rs = (i64)heads * D;
    const i64 qbase = ((i64)b * lq * heads + h) * D;
    const i64 kbase = ((i64)b * lk * heads + h) * D;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int wrow = warp * 16;
    const bool active = q0 + wrow < lq;
    const int r0 = q0 + wrow + g, r1 = r0 + 8;
    // Rows past lq: lse = +inf gives P = 0 (nothing is stored for them anyway).
    const float L0 = r0 < lq ? lse[(i64)bh * lq + r0] * ATTN_LOG2E : attn_inf();
    const float L1 = r1 < lq ? lse[(i64)bh * lq + r1] * ATTN_LOG2E : attn_inf();
    const float D0 = r0 < lq ? delta[(i64)bh * lq + r0] : 0.f;
    const float D1 = r1 < lq ? delta[(i64)bh * lq + r1] : 0.f;

    load_tile_bf16<D, BM, NT>(sQ, q, qbase, rs, q0, lq);
    load_tile_bf16<D, BM, NT>(sdO, dout, qbase, rs, q0, lq);
    const u32 sK_addr = smem_addr(sK);

    float dqacc[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n) dqacc[n][0] = dqacc[n][1] = dqacc[n][2] = dqacc[n][3] = 0.f;

    for (int k0 = 0; k0 < lk; k0 += BN) {
        // (The first iteration's barrier also publishes sQ, sdO.)
        __syncthreads();
        load_tile_bf16<D, BN, NT>(sK, k, kbase, rs, k0, lk);
        load_tile_bf16<D, BN, NT>(sV, v, kbase, rs, k0, lk);
        __syncthreads();
        if (!active) continue;

        // S = Q K^T, P = exp2(S scale log2e - lse log2e), keys past lk masked to 0.
        float s[BN / 8][4];
#pragma unroll
        for (int j = 0; j < BN / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            u32 a[4];
            load_a<LDS>(sQ, wrow, kk * 16, g, t, a);
#pragma unroll
            for (int j = 0; j < BN / 8; ++j) {
                u32 b0, b1;
                load_b_nk<LDS>(sK, 8 * j, kk * 16, g, t, b0, b1);
                mma_bf16(s[j], a[0], a[1], a[2], a[3], b0, b1);
            }
        }
#pragma unroll
        for (int j = 0; j < BN / 8; ++j) {
            const int col = k0 + 8 * j + 2 * t;
            const bool ok0 = col < lk, ok1 = col + 1 < lk;
            s[j][0] = ok0 ? fast_exp2(s[j][0] * scale_log2 - L0) : 0.f;
            s[j][1] = ok1 ? fast_exp2(s[j][1] * scale_log2 - L0) : 0.f;
            s[j][2] = ok0 ? fast_exp2(s[j][2] * scale_log2 - L1) : 0.f;
            s[j][3] = ok1 ? fast_exp2(s[j][3] * scale_log2 - L1) : 0.f;
        }
        // dP = dO V^T.
        float dp[BN / 8][4];
#pragma unroll
        for (int j = 0; j < BN / 8; ++j) dp[j][0] = dp[j][1] = dp[j][2] = dp[j][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            u32 a[4];
            load_a<LDS>(sdO, wrow, kk * 16, g, t, a);
#pragma unroll
            for (int j = 0; j < BN / 8; ++j) {
                u32 b0, b1;
                load_b_nk<LDS>(sV, 8 * j, kk * 16, g, t, b0, b1);
                mma_bf16(dp[j], a[0], a[1], a[2], a[3], b0, b1);
            }
        }
        // dS = P (dP - delta).
#pragma unroll
        for (int j = 0; j < BN / 8; ++j) {
            s[j][0] *= dp[j][0] - D0;
            s[j][1] *= dp[j][1] - D0;
            s[j][2] *= dp[j][2] - D1;
            s[j][3] *= dp[j][3] - D1;
        }
        // dQ += dS K (times scale at the end).
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk) {
            u32 a[4];
            acc_to_a(s[2 * kk], s[2 * kk + 1], a);
            mma_a_times_rows<D>(dqacc, a, sK_addr, kk * 16, lane);
        }
    }

    if (!active) return;
    if (r0 < lq) {
        float* p = dq + qbase + (i64)r0 * rs + 2 * t;
#pragma unroll
        for (int n = 0; n < D / 8; ++n)
            *reinterpret_cast<float2*>(p + 8 * n) =
                make_float2(dqacc[n][0] * scale, dqacc[n][1] * scale);
    }
    if (r1 < lq) {
        float* p = dq + qbase + (i64)r1 * rs + 2 * t;
#pragma unroll
        for (int n = 0; n < D / 8; ++n)
            *reinterpret_cast<float2*>(p + 8 * n) =
                make_float2(dqacc[n][2] * scale, dqacc[n][3] * scale);
    }
}

// Entry points, one per head dim. Launch: block 128 threads, grid 1-D as described above,
// dynamic shared memory as computed by src/backend/cuda/attention.rs.
#define ATTN_INSTANTIATE(D, BMB, FWD_MIN_BLOCKS)                                               \
    extern "C" __global__ void __launch_bounds__(128, FWD_MIN_BLOCKS)                           \
        flash_fwd_d##D(const float* __restrict__ q, const float* __restrict__ k,                \
                       const float* __restrict__ v, float* __restrict__ out,                    \
                       float* __restrict__ lse, int batch, int lq, int lk, int heads,           \
                       float scale_log2) {                                                      \
        flash_fwd<D>(q, k, v, out, lse, batch, lq, lk, heads, scale_log2);                      \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(128) flash_bwd_dkdv_d##D(                      \
        const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,  \
        const float* __restrict__ dout, const float* __restrict__ lse,                          \
        const float* __restrict__ delta, float* __restrict__ dk, float* __restrict__ dv,        \
        int batch, int lq, int lk, int heads, float scale, float scale_log2) {                  \
        flash_bwd_dkdv<D, BMB>(q, k, v, dout, lse, delta, dk, dv, batch, lq, lk, heads, scale,  \
                               scale_log2);                                                     \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(128) flash_bwd_dq_d##D(                        \
        const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,  \
        const float* __restrict__ dout, const float* __restrict__ lse,                          \
        const float* __restrict__ delta, float* __restrict__ dq, int batch, int lq, int lk,     \
        int heads, float scale, float scale_log2) {                                             \
        flash_bwd_dq<D>(q, k, v, dout, lse, delta, dq, batch, lq, lk, heads, scale,             \
                        scale_log2);                                                            \
    }

ATTN_INSTANTIATE(16, 64, 1)
ATTN_INSTANTIATE(32, 64, 1)
ATTN_INSTANTIATE(64, 64, 1)
ATTN_INSTANTIATE(128, 32, 3)

// ------------------------------------------------------------------------------------------
// Simple f32 path: any d <= 256 (lane owns columns lane + 32 u, u < 8). One warp per row;
// block 128 threads = 4 rows; grid ceil(rows / 4). Rows are numbered in memory order
// (b, token, h).

#define ATTN_SIMPLE_U 8

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
    return x;
}

extern "C" __global__ void __launch_bounds__(128)
    attn_fwd_simple(const float* __restrict__ q, const float* __restrict__ k,
                    const float* __restrict__ v, float* __restrict__ out,
                    float* __restrict__ lse, int batch, int lq, int lk, int heads, int d,
                    float scale) {
    const i64 row = (i64)blockIdx.x * 4 + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= (i64)batch * lq * heads || d > 32 * ATTN_SIMPLE_U) return;
    const int h = (int)(row % heads);
    const i64 bi = row / heads;
    const i64 b = bi / lq, i = bi - b * lq;
    const i64 rs = (i64)heads * d;
    const float* qr = q + row * d;
    const float* kr = k + (b * lk * heads + h) * d;
    const float* vr = v + (b * lk * heads + h) * d;
    float qv[ATTN_SIMPLE_U], acc[ATTN_SIMPLE_U];
#pragma unroll
    for (int u = 0; u < ATTN_SIMPLE_U; ++u) {
        const int c = lane + 32 * u;
        qv[u] = c < d ? qr[c] : 0.f;
        acc[u] = 0.f;
    }
    float m = -attn_inf(), l = 0.f;
    for (int j = 0; j < lk; ++j) {
        const float* kj = kr + (i64)j * rs;
        const float* vj = vr + (i64)j * rs;
        float part = 0.f;
#pragma unroll
        for (int u = 0; u < ATTN_SIMPLE_U; ++u) {
            const int c = lane + 32 * u;
            if (c < d) part += qv[u] * kj[c];
        }
        const float sc = warp_sum(part) * scale;
        const float mn = fmaxf(m, sc);
        const float corr = expf(m - mn);
        const float p = expf(sc - mn);
        l = l * corr + p;
#pragma unroll
        for (int u = 0; u < ATTN_SIMPLE_U; ++u) {
            const int c = lane + 32 * u;
            acc[u] = acc[u] * corr + (c < d ? p * vj[c] : 0.f);
        }
        m = mn;
    }
    const float inv = 1.f / l;
#pragma unroll
    for (int u = 0; u < ATTN_SIMPLE_U; ++u) {
        const int c = lane + 32 * u;
        if (c < d) out[row * d + c] = acc[u] * inv;
    }
    if (lane == 0) lse[(b * heads + h) * lq + i] = m + logf(l);
}

extern "C" __global__ void __launch_bounds__(128)
    attn_bwd_dq_simple(const float* __restrict__ q, const float* __restrict__ k,
                       const float* __restrict__ v, const float* __restrict__ dout,
                       const float* __restrict__ lse, const float* __restrict__ delta,
                       float* __restrict__ dq, int batch, int lq, int lk, int heads, int d,
                       float scale) {
    const i64 row = (i64)blockIdx.x * 4 + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= (i64)batch * lq * heads || d > 32 * ATTN_SIMPLE_U) return;
    const int h = (int)(row % heads);
    const i64 bi = row / heads;
    const i64 b = bi / lq, i = bi - b * lq;
    const i64 rs = (i64)heads * d;
    const float* kr = k + (b * lk * heads + h) * d;
    const float* vr = v + (b * lk * heads + h) * d;
    const float L = lse[(b * heads + h) * lq + i];
    const float dl = delta[(b * heads + h) * lq + i];
    float qv[ATTN_SIMPLE_U], gv[ATTN_SIMPLE_U], acc[ATTN_SIMPLE_U];
#pragma unroll
    for (int u = 0; u < ATTN_SIMPLE_U; ++u) {
        const int c = lane + 32 * u;
        qv[u] = c < d ? q[row * d + c] : 0.f;
        gv[u] = c < d ? dout[row * d + c] : 0.f;
        acc[u] = 0.f;
    }
    for (int j = 0; j < lk; ++j) {
        const float* kj = kr + (i64)j * rs;
        const float* vj = vr + (i64)j * rs;
        float ps = 0.f, pd = 0.f;
#pragma unroll
        for (int u = 0; u < ATTN_SIMPLE_U; ++u) {
            const int c = lane + 32 * u;
            if (c < d) {
                ps += qv[u] * kj[c];
                pd += gv[u] * vj[c];
            }
        }
        const float p = expf(warp_sum(ps) * scale - L);
        const float ds = p * (warp_sum(pd) - dl);
#pragma unroll
        for (int u = 0; u < ATTN_SIMPLE_U; ++u) {
            const int c = lane + 32 * u;
            if (c < d) acc[u] += ds * kj[c];
        }
    }
#pragma unroll
    for (int u = 0; u < ATTN_SIMPLE_U; ++u) {
        const int c = lane + 32 * u;
        if (c < d) dq[row * d + c] = acc[u] * scale;
    }
}

// One warp per key row (b, j, h) of k; streams over all queries of that (batch, head).
extern "C" __global__ void __launch_bounds__(128)
    attn_bwd_dkdv_simple(const float* __restrict__ q, const float* __restrict__ k,
                         const float* __restrict__ v, const float* __restrict__ dout,
                         const float* __restrict__ lse, const float* __restrict__ delta,
                         float* __restrict__ dk, float* __restrict__ dv, int batch, int lq,
                         int lk, int heads, int d, float scale) {
    const i64 row = (i64)blockIdx.x * 4 + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= (i64)batch * lk * heads || d > 32 * ATTN_SIMPLE_U) return;
    const int h = (int)(row % heads);
    const i64 b = row / heads / lk;
    const i64 rs = (i64)heads * d;
    const float* qr = q + (b * lq * heads + h) * d;
    const float* gr = dout + (b * lq * heads + h) * d;
    const float* Lr = lse + (b * heads + h) * lq;
    const float* Dr = delta + (b * heads + h) * lq;
    float kv[ATTN_SIMPLE_U], vv[ATTN_SIMPLE_U], ak[ATTN_SIMPLE_U], av[ATTN_SIMPLE_U];
#pragma unroll
    for (int u = 0; u < ATTN_SIMPLE_U; ++u) {
        const int c = lane + 32 * u;
        kv[u] = c < d ? k[row * d + c] : 0.f;
        vv[u] = c < d ? v[row * d + c] : 0.f;
        ak[u] = 0.f;
        av[u] = 0.f;
    }
    for (int i = 0; i < lq; ++i) {
        const float* qi = qr + (i64)i * rs;
        const float* gi = gr + (i64)i * rs;
        float ps = 0.f, pd = 0.f;
#pragma unroll
        for (int u = 0; u < ATTN_SIMPLE_U; ++u) {
            const int c = lane + 32 * u;
            if (c < d) {
                ps += kv[u] * qi[c];
                pd += vv[u] * gi[c];
            }
        }
        const float p = expf(warp_sum(ps) * scale - Lr[i]);
        const float ds = p * (warp_sum(pd) - Dr[i]);
#pragma unroll
        for (int u = 0; u < ATTN_SIMPLE_U; ++u) {
            const int c = lane + 32 * u;
            if (c < d) {
                av[u] += p * gi[c];
                ak[u] += ds * qi[c];
            }
        }
    }
#pragma unroll
    for (int u = 0; u < ATTN_SIMPLE_U; ++u) {
        const int c = lane + 32 * u;
        if (c < d) {
            dk[row * d + c] = ak[u] * scale;
            dv[row * d + c] = av[u];
        }
    }
}
