# Lane-level emulation of the tensor-core kernels of src/backend/cuda/kernels/attention.cu,
# transcribed line by line, with the PTX ISA semantics of mma.m16n8k16 (bf16), ldmatrix.x4.trans
# and cvt.rn.bf16x2.f32. A "u32 register" across a warp is an array [32, 2] (lo, hi).
#
# Why: the sessions that wrote the kernels had no GPU; this checks their indexing, fragment
# layouts and online softmax on a CPU (to bf16 accuracy against float64). It is a transcription,
# not generated from the source: re-transcribe the part you change when editing attention.cu.
# Run: python3 tools/cuda/emulate_attention_cases.py
import sys
import numpy as np

LANES = np.arange(32)
G = LANES >> 2
T = LANES & 3
LOG2E = np.float32(1.4426950408889634)
LN2 = np.float32(0.6931471805599453)


def bf16(x):
    x = np.asarray(x, dtype=np.float32)
    u = x.view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16 << 16
    return u.astype(np.uint32).view(np.float32)


def pack(lo, hi):  # cvt.rn.bf16x2.f32 d, hi, lo
    return np.stack([bf16(lo), bf16(hi)], axis=1)


def lds32(s, off):  # off: [32] element offsets
    return np.stack([s[off], s[off + 1]], axis=1)


def mma(c, a, b0, b1):
    """c: [32, 4] f32, a: list of 4 [32, 2], b0, b1: [32, 2]. Returns new c."""
    A = np.zeros((16, 16), np.float32)
    for e in range(2):
        A[G, 2 * T + e] = a[0][:, e]
        A[G + 8, 2 * T + e] = a[1][:, e]
        A[G, 2 * T + 8 + e] = a[2][:, e]
        A[G + 8, 2 * T + 8 + e] = a[3][:, e]
    B = np.zeros((16, 8), np.float32)
    for e in range(2):
        B[2 * T + e, G] = b0[:, e]
        B[2 * T + 8 + e, G] = b1[:, e]
    C = np.zeros((16, 8), np.float32)
    for e in range(2):
        C[G, 2 * T + e] = c[:, e]
        C[G + 8, 2 * T + e] = c[:, 2 + e]
    Dm = (A.astype(np.float64) @ B.astype(np.float64) + C).astype(np.float32)
    out = np.zeros((32, 4), np.float32)
    for e in range(2):
        out[:, e] = Dm[G, 2 * T + e]
        out[:, 2 + e] = Dm[G + 8, 2 * T + e]
    return out


def ldsm_x4_trans(s, addr):
    """addr: [32] element offsets of row starts. Returns 4 regs [32, 2]."""
    regs = []
    for i in range(4):
        M = np.stack([s[addr[8 * i + r] : addr[8 * i + r] + 8] for r in range(8)])  # [8, 8]
        regs.append(np.stack([M[2 * T, G], M[2 * T + 1, G]], axis=1))
    return regs


def load_tile(s, soff, g, base, rs, r0, length, D, ROWS):
    LDS = D + 8
    for r in range(ROWS):
        if r0 + r < length:
            x = g[base + (r0 + r) * rs : base + (r0 + r) * rs + D]
        else:
            x = np.zeros(D, np.float32)
        s[soff + r * LDS : soff + r * LDS + D] = bf16(x)


def load_a(s, soff, LDS, row0, kc):
    p = soff + (row0 + G) * LDS + kc + 2 * T
    return [lds32(s, p), lds32(s, p + 8 * LDS), lds32(s, p + 8), lds32(s, p + 8 * LDS + 8)]


def load_b_nk(s, soff, LDS, n0, kc):
    p = soff + (n0 + G) * LDS + kc + 2 * T
    return lds32(s, p), lds32(s, p + 8)


def mma_a_times_rows(acc, a, s, s_base, k0, D):
    LDS = D + 8
    row = k0 + (LANES & 7) + ((LANES >> 3) & 1) * 8
    col = (LANES >> 4) * 8
    addr = s_base + row * LDS + col
    for np_ in range(D // 16):
        b0, b1, b2, b3 = ldsm_x4_trans(s, addr + np_ * 16)
        acc[2 * np_] = mma(acc[2 * np_], a, b0, b1)
        acc[2 * np_ + 1] = mma(acc[2 * np_ + 1], a, b2, b3)


def acc_to_a(c0, c1):
    return [pack(c0[:, 0], c0[:, 1]), pack(c0[:, 2], c0[:, 3]), pack(c1[:, 0], c1[:, 1]),
            pack(c1[:, 2], c1[:, 3])]


def shfl_xor(x, m):
    return x[LANES ^ m]


def flash_fwd(D, q, k, v, out, lse, batch, lq, lk, heads, scale_log2):
    BM = BN = 64
    LDS = D + 8
    n_qt = (lq + BM - 1) // BM
    for blk in range(n_qt * batch * heads):
        smem = np.zeros(2 * BN * LDS, np.float32)
        sK, sV = 0, BN * LDS
        tile, bh = blk % n_qt, blk // n_qt
        b, h = bh // heads, bh % heads
        q0 = tile * BM
        rs = heads * D
        qbase = (b * lq * heads + h) * D
        kbase = (b * lk * heads + h) * D
        load_tile(smem, sK, q, qbase, rs, q0, lq, D, BM)
        W = {}
        for warp in range(4):
            wrow = warp * 16
            W[warp] = dict(
                active=q0 + wrow < lq,
                qf=[load_a(smem, sK, LDS, wrow, kk * 16) for kk in range(D // 16)],
                o=[np.zeros((32, 4), np.float32) for _ in range(D // 8)],
                m0=np.full(32, -np.inf, np.float32), m1=np.full(32, -np.inf, np.float32),
                l0=np.zeros(32, np.float32), l1=np.zeros(32, np.float32))
        for k0 in range(0, lk, BN):
            load_tile(smem, sK, k, kbase, rs, k0, lk, D, BN)
            load_tile(smem, sV, v, kbase, rs, k0, lk, D, BN)
            for warp in range(4):
                w = W[warp]
                if not w['active']:
                    continue
                s = [np.zeros((32, 4), np.float32) for _ in range(BN // 8)]
                for kk in range(D // 16):
                    for j in range(BN // 8):
                        b0, b1 = load_b_nk(smem, sK, LDS, 8 * j, kk * 16)
                        s[j] = mma(s[j], w['qf'][kk], b0, b1)
                mx0, mx1 = w['m0'].copy(), w['m1'].copy()
                for j in range(BN // 8):
                    for e in range(4):
                        col = k0 + 8 * j + 2 * T + (e & 1)
                        s[j][:, e] = np.where(col < lk, s[j][:, e] * scale_log2, -np.inf)
                    mx0 = np.maximum(mx0, np.maximum(s[j][:, 0], s[j][:, 1]))
                    mx1 = np.maximum(mx1, np.maximum(s[j][:, 2], s[j][:, 3]))
                for m in (1, 2):
                    mx0 = np.maximum(mx0, shfl_xor(mx0, m))
                    mx1 = np.maximum(mx1, shfl_xor(mx1, m))
                with np.errstate(invalid='ignore'):
                    c0 = np.exp2(w['m0'] - mx0).astype(np.float32)
                    c1 = np.exp2(w['m1'] - mx1).astype(np.float32)
                w['m0'], w['m1'] = mx0, mx1
                ps0 = np.zeros(32, np.float32)
                ps1 = np.zeros(32, np.float32)
                for j in range(BN // 8):
                    s[j][:, 0] = np.exp2(s[j][:, 0] - mx0)
                    s[j][:, 1] = np.exp2(s[j][:, 1] - mx0)
                    s[j][:, 2] = np.exp2(s[j][:, 2] - mx1)
                    s[j][:, 3] = np.exp2(s[j][:, 3] - mx1)
                    ps0 += s[j][:, 0] + s[j][:, 1]
                    ps1 += s[j][:, 2] + s[j][:, 3]
                w['l0'] = w['l0'] * c0 + ps0
                w['l1'] = w['l1'] * c1 + ps1
                for n in range(D // 8):
                    w['o'][n][:, 0:2] *= c0[:, None]
                    w['o'][n][:, 2:4] *= c1[:, None]
                for kk in range(BN // 16):
                    a = acc_to_a(s[2 * kk], s[2 * kk + 1])
                    mma_a_times_rows(w['o'], a, smem, sV, kk * 16, D)
        for warp in range(4):
            w = W[warp]
            if not w['active']:
                continue
            l0, l1 = w['l0'], w['l1']
            for m in (1, 2):
                l0 = l0 + shfl_xor(l0, m)
            for m in (1, 2):
                l1 = l1 + shfl_xor(l1, m)
            r0 = q0 + warp * 16 + G
            r1 = r0 + 8
            for lane in range(32):
                for (r, l, mm, e0) in ((r0[lane], l0[lane], w['m0'][lane], 0),
                                       (r1[lane], l1[lane], w['m1'][lane], 2)):
                    if r < lq:
                        p = qbase + r * rs + 2 * T[lane]
                        for n in range(D // 8):
                            out[p + 8 * n] = w['o'][n][lane, e0] / l
                            out[p + 8 * n + 1] = w['o'][n][lane, e0 + 1] / l
                        if T[lane] == 0:
                            lse[bh * lq + r] = (mm + np.log2(l)) * LN2


def bwd_delta(out, dout, delta, batch, lq, heads, d):
    for row in range(batch * lq * heads):
        acc = np.float32(np.dot(out[row * d:(row + 1) * d], dout[row * d:(row + 1) * d]))
        h = row % heads
        bi = row // heads
        b, i = bi // lq, bi % lq
        delta[(b * heads + h) * lq + i] = acc


def flash_bwd_dkdv(D, BMB, q, k, v, dout, lse, delta, dk, dv, batch, lq, lk, heads, scale,
                   scale_log2):
    BN = 64
    LDS = D + 8
    n_kt = (lk + BN - 1) // BN
    for blk in range(n_kt * batch * heads):
        smem = np.zeros((2 * BN + 2 * BMB) * LDS, np.float32)
        sK, sV, sQ, sdO = 0, BN * LDS, 2 * BN * LDS, 2 * BN * LDS + BMB * LDS
        sL = np.zeros(BMB, np.float32)
        sDel = np.zeros(BMB, np.float32)
        tile, bh = blk % n_kt, blk // n_kt
        b, h = bh // heads, bh % heads
        k0 = tile * BN
        rs = heads * D
        qbase = (b * lq * heads + h) * D
        kbase = (b * lk * heads + h) * D
        load_tile(smem, sK, k, kbase, rs, k0, lk, D, BN)
        load_tile(smem, sV, v, kbase, rs, k0, lk, D, BN)
        dka = {w: [np.zeros((32, 4), np.float32) for _ in range(D // 8)] for w in range(4)}
        dva = {w: [np.zeros((32, 4), np.float32) for _ in range(D // 8)] for w in range(4)}
        for q0 in range(0, lq, BMB):
            load_tile(smem, sQ, q, qbase, rs, q0, lq, D, BMB)
            load_tile(smem, sdO, dout, qbase, rs, q0, lq, D, BMB)
            for i in range(BMB):
                ok = q0 + i < lq
                sL[i] = lse[bh * lq + q0 + i] * LOG2E if ok else np.inf
                sDel[i] = delta[bh * lq + q0 + i] if ok else 0.0
            for warp in range(4):
                wrow = warp * 16
                if not (k0 + wrow < lk):
                    continue
                st = [np.zeros((32, 4), np.float32) for _ in range(BMB // 8)]
                for kk in range(D // 16):
                    a = load_a(smem, sK, LDS, wrow, kk * 16)
                    for j in range(BMB // 8):
                        b0, b1 = load_b_nk(smem, sQ, LDS, 8 * j, kk * 16)
                        st[j] = mma(st[j], a, b0, b1)
                for j in range(BMB // 8):
                    L0 = sL[8 * j + 2 * T]
                    L1 = sL[8 * j + 2 * T + 1]
                    st[j][:, 0] = np.exp2(st[j][:, 0] * scale_log2 - L0)
                    st[j][:, 1] = np.exp2(st[j][:, 1] * scale_log2 - L1)
                    st[j][:, 2] = np.exp2(st[j][:, 2] * scale_log2 - L0)
                    st[j][:, 3] = np.exp2(st[j][:, 3] * scale_log2 - L1)
                for kk in range(BMB // 16):
                    a = acc_to_a(st[2 * kk], st[2 * kk + 1])
                    mma_a_times_rows(dva[warp], a, smem, sdO, kk * 16, D)
                dpt = [np.zeros((32, 4), np.float32) for _ in range(BMB // 8)]
                for kk in range(D // 16):
                    a = load_a(smem, sV, LDS, wrow, kk * 16)
                    for j in range(BMB // 8):
                        b0, b1 = load_b_nk(smem, sdO, LDS, 8 * j, kk * 16)
                        dpt[j] = mma(dpt[j], a, b0, b1)
                for j in range(BMB // 8):
                    d0 = sDel[8 * j + 2 * T]
                    d1 = sDel[8 * j + 2 * T + 1]
                    st[j][:, 0] *= dpt[j][:, 0] - d0
                    st[j][:, 1] *= dpt[j][:, 1] - d1
                    st[j][:, 2] *= dpt[j][:, 2] - d0
                    st[j][:, 3] *= dpt[j][:, 3] - d1
                for kk in range(BMB // 16):
                    a = acc_to_a(st[2 * kk], st[2 * kk + 1])
                    mma_a_times_rows(dka[warp], a, smem, sQ, kk * 16, D)
        for warp in range(4):
            wrow = warp * 16
            if not (k0 + wrow < lk):
                continue
            for lane in range(32):
                for (r, e0) in ((k0 + wrow + G[lane], 0), (k0 + wrow + G[lane] + 8, 2)):
                    if r < lk:
                        o = kbase + r * rs + 2 * T[lane]
                        for n in range(D // 8):
                            dk[o + 8 * n: o + 8 * n + 2] = dka[warp][n][lane, e0:e0 + 2] * scale
                            dv[o + 8 * n: o + 8 * n + 2] = dva[warp][n][lane, e0:e0 + 2]


def flash_bwd_dq(D, q, k, v, dout, lse, delta, dq, batch, lq, lk, heads, scale, scale_log2):
    BM = BN = 64
    LDS = D + 8
    n_qt = (lq + BM - 1) // BM
    for blk in range(n_qt * batch * heads):
        smem = np.zeros(4 * 64 * LDS, np.float32)
        sQ, sdO, sK, sV = 0, BM * LDS, 2 * BM * LDS, 2 * BM * LDS + BN * LDS
        tile, bh = blk % n_qt, blk // n_qt
        b, h = bh // heads, bh % heads
        q0 = tile * BM
        rs = heads * D
        qbase = (b * lq * heads + h) * D
        kbase = (b * lk * heads + h) * D
        load_tile(smem, sQ, q, qbase, rs, q0, lq, D, BM)
        load_tile(smem, sdO, dout, qbase, rs, q0, lq, D, BM)
        W = {}
        for warp in range(4):
            wrow = warp * 16
            r0 = q0 + wrow + G
            r1 = r0 + 8
            get = lambda arr, r, dflt, mul=np.float32(1): np.array(
                [arr[bh * lq + x] * mul if x < lq else dflt for x in r], np.float32)
            W[warp] = dict(active=q0 + wrow < lq, r0=r0, r1=r1,
                           L0=get(lse, r0, np.inf, LOG2E), L1=get(lse, r1, np.inf, LOG2E),
                           D0=get(delta, r0, 0.0), D1=get(delta, r1, 0.0),
                           acc=[np.zeros((32, 4), np.float32) for _ in range(D // 8)])
        for k0 in range(0, lk, BN):
            load_tile(smem, sK, k, kbase, rs, k0, lk, D, BN)
            load_tile(smem, sV, v, kbase, rs, k0, lk, D, BN)
            for warp in range(4):
                w = W[warp]
                if not w['active']:
                    continue
                wrow = warp * 16
                s = [np.zeros((32, 4), np.float32) for _ in range(BN // 8)]
                for kk in range(D // 16):
                    a = load_a(smem, sQ, LDS, wrow, kk * 16)
                    for j in range(BN // 8):
                        b0, b1 = load_b_nk(smem, sK, LDS, 8 * j, kk * 16)
                        s[j] = mma(s[j], a, b0, b1)
                for j in range(BN // 8):
                    col = k0 + 8 * j + 2 * T
                    ok0, ok1 = col < lk, col + 1 < lk
                    s[j][:, 0] = np.where(ok0, np.exp2(s[j][:, 0] * scale_log2 - w['L0']), 0)
                    s[j][:, 1] = np.where(ok1, np.exp2(s[j][:, 1] * scale_log2 - w['L0']), 0)
                    s[j][:, 2] = np.where(ok0, np.exp2(s[j][:, 2] * scale_log2 - w['L1']), 0)
                    s[j][:, 3] = np.where(ok1, np.exp2(s[j][:, 3] * scale_log2 - w['L1']), 0)
                dp = [np.zeros((32, 4), np.float32) for _ in range(BN // 8)]
                for kk in range(D // 16):
                    a = load_a(smem, sdO, LDS, wrow, kk * 16)
                    for j in range(BN // 8):
                        b0, b1 = load_b_nk(smem, sV, LDS, 8 * j, kk * 16)
                        dp[j] = mma(dp[j], a, b0, b1)
                for j in range(BN // 8):
                    s[j][:, 0] *= dp[j][:, 0] - w['D0']
                    s[j][:, 1] *= dp[j][:, 1] - w['D0']
                    s[j][:, 2] *= dp[j][:, 2] - w['D1']
                    s[j][:, 3] *= dp[j][:, 3] - w['D1']
                for kk in range(BN // 16):
                    a = acc_to_a(s[2 * kk], s[2 * kk + 1])
                    mma_a_times_rows(w['acc'], a, smem, sK, kk * 16, D)
        for warp in range(4):
            w = W[warp]
            if not w['active']:
                continue
            for lane in range(32):
                for (r, e0) in ((w['r0'][lane], 0), (w['r1'][lane], 2)):
                    if r < lq:
                        p = qbase + r * rs + 2 * T[lane]
                        for n in range(D // 8):
                            dq[p + 8 * n: p + 8 * n + 2] = w['acc'][n][lane, e0:e0 + 2] * scale


def reference(q, k, v, dout, B, lq, lk, H, D):
    Q = q.reshape(B, lq, H, D).astype(np.float64)
    K = k.reshape(B, lk, H, D).astype(np.float64)
    V = v.reshape(B, lk, H, D).astype(np.float64)
    dO = dout.reshape(B, lq, H, D).astype(np.float64)
    sc = 1 / np.sqrt(D)
    S = np.einsum('bihd,bjhd->bhij', Q, K) * sc
    mx = S.max(-1, keepdims=True)
    lse = (mx + np.log(np.exp(S - mx).sum(-1, keepdims=True)))[..., 0]  # b h i
    P = np.exp(S - lse[..., None])
    O = np.einsum('bhij,bjhd->bihd', P, V)
    dV = np.einsum('bhij,bihd->bjhd', P, dO)
    dP = np.einsum('bihd,bjhd->bhij', dO, V)
    delta = (dO * O).sum(-1).transpose(0, 2, 1)  # b h i
    dS = P * (dP - delta[..., None])
    dQ = np.einsum('bhij,bjhd->bihd', dS, K) * sc
    dK = np.einsum('bhij,bihd->bjhd', dS, Q) * sc
    return O.ravel(), lse.ravel(), dQ.ravel(), dK.ravel(), dV.ravel()


def rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def run(B, lq, lk, H, D, seed, gain=1.0):
    rng = np.random.default_rng(seed)
    f = lambda n: rng.standard_normal(n).astype(np.float32)
    q = f(B * lq * H * D) * np.float32(gain)
    k, v = f(B * lk * H * D), f(B * lk * H * D)
    dout = f(B * lq * H * D)
    nan = lambda n: np.full(n, np.nan, np.float32)
    out, lse = nan(q.size), nan(B * H * lq)
    scale = np.float32(1 / np.sqrt(D))
    sl2 = np.float32(scale * LOG2E)
    flash_fwd(D, q, k, v, out, lse, B, lq, lk, H, sl2)
    delta = nan(B * H * lq)
    bwd_delta(out, dout, delta, B, lq, H, D)
    dq, dk, dv = nan(q.size), nan(k.size), nan(v.size)
    flash_bwd_dkdv(D, 32 if D == 128 else 64, q, k, v, dout, lse, delta, dk, dv, B, lq, lk, H,
                   scale, sl2)
    flash_bwd_dq(D, q, k, v, dout, lse, delta, dq, B, lq, lk, H, scale, sl2)
    ref = reference(q, k, v, dout, B, lq, lk, H, D)
    errs = [rel(x, r) for x, r in zip((out, lse, dq, dk, dv), ref)]
    nans = [int(np.isnan(x).sum()) for x in (out, lse, dq, dk, dv)]
    print(f"B={B} lq={lq} lk={lk} H={H} D={D} gain={gain}: rel err out {errs[0]:.2e} "
          f"lse {errs[1]:.2e} dq {errs[2]:.2e} dk {errs[3]:.2e} dv {errs[4]:.2e} nan {nans}")
    ok = all(e < 2e-2 for e in errs) and sum(nans) == 0
    return ok


if __name__ == '__main__':
    cases = [
        (1, 1, 1, 1, 16, 1),
        (2, 70, 130, 3, 16, 2),
        (1, 5, 200, 2, 32, 3),
        (1, 130, 67, 1, 64, 4),
        (1, 40, 70, 2, 128, 5),
        (1, 64, 128, 1, 32, 6),
    ]
    ok = True
    for c in cases:
        ok &= run(*c)
    ok &= run(1, 50, 90, 1, 16, 7, gain=20.0)
    print("ALL OK" if ok else "FAILURES")
    sys.exit(0 if ok else 1)
