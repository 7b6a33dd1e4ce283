//! Multi-head softmax attention on the CPU, FlashAttention-2 style.
//!
//! Layout: `q: [batch, lq, heads, d]`, `k, v: [batch, lk, heads, d]` (token-major with the heads
//! interleaved, the natural output of a linear layer), `out` like `q`, `lse: [batch, heads, lq]`,
//! scale `1/sqrt(d)`, no mask.
//!
//! Nothing of size `lq x lk` is ever formed: every rayon work item owns one (batch, head, tile) and
//! a few tile-sized scratch buffers, so memory grows linearly with the token count (the real model
//! runs 32760 tokens per sample). A head's rows are strided in memory (`heads * d` apart), so each
//! tile is first gathered into a contiguous buffer; all tile products then go through a
//! single-threaded GEMM (the parallelism is across tiles, not inside them).
//!
//! Forward: for a query tile, stream over key tiles with an online softmax (running row max `m`
//! and running sum `l`, rescaling the output accumulator whenever the max grows), then normalise
//! and store `lse = m + ln l`.
//!
//! Backward (FlashAttention-2): with `delta_i = sum_c dout_ic out_ic`, the probabilities are
//! recomputed tile by tile as `P = exp(S - lse)`, and
//! `dV = P^T dO`, `dP = dO V^T`, `dS = P * (dP - delta)`, `dQ = scale dS K`, `dK = scale dS^T Q`.
//! Two lock-free parallel passes: one over (batch, head, key tile) owning `dK, dV` rows, one over
//! (batch, head, query tile) owning `dQ` rows. Recomputing `S` and `dP` in the second pass costs
//! about 40% more flops than a fused pass, but needs neither atomics nor a per-thread `dQ` copy.
//!
//! The exponentials use a vectorisable polynomial (`exp_approx`, relative error ~2e-7) with an
//! AVX2 copy picked at run time. Each work item runs in a fixed order with a serial GEMM, so the
//! results are bitwise independent of the rayon pool size.

use std::marker::PhantomData;

use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use super::matmul::Strided;
use crate::backend::{AttnShape, Qkv};

// Tile sizes, from measurements at heads 12, d 128 (gemm's AVX2 kernel, 2 cores). The tile a work
// item owns is the larger one: the other operand is re-gathered from the strided input for every
// inner step, so a bigger owned tile means fewer passes over that operand (and the gathers were
// the second-largest cost after the GEMMs); the inner tile stays small so that the score tiles
// live in L1/L2.
/// Forward: queries per work item, keys per inner step.
const FWD_BQ: usize = 256;
const FWD_BK: usize = 64;
/// Backward dK/dV pass: keys per work item, queries per inner step.
const DKV_BK: usize = 256;
const DKV_BQ: usize = 64;
/// Backward dQ pass: queries per work item, keys per inner step.
const DQ_BQ: usize = 256;
const DQ_BK: usize = 64;

/// Row-major `c[m, n] (dense) = (accumulate ? c : 0) + a[m, k] b[k, n]`, single-threaded, with
/// `a` and `b` given by row and column strides so that transposes cost nothing.
///
/// `matmul::gemm_strided` would spread every small tile product over the rayon pool from inside
/// an already-parallel work item; here the tiles themselves are the parallel units.
fn gemm_serial(
    m: usize,
    n: usize,
    k: usize,
    a: Strided<'_>,
    b: Strided<'_>,
    c: &mut [f32],
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    // The tile products below only ever pass non-negative strides.
    let (a, a_rs, a_cs) = (a.data, a.row_stride as usize, a.col_stride as usize);
    let (b, b_rs, b_cs) = (b.data, b.row_stride as usize, b.col_stride as usize);
    // The GEMM touches exactly the indices `i * rs + j * cs` for `i < rows`, `j < cols`.
    assert!(k > 0, "gemm_serial: empty inner dimension");
    assert!(
        (m - 1) * a_rs + (k - 1) * a_cs < a.len(),
        "gemm_serial: lhs too short"
    );
    assert!(
        (k - 1) * b_rs + (n - 1) * b_cs < b.len(),
        "gemm_serial: rhs too short"
    );
    assert!(m * n <= c.len(), "gemm_serial: dst too short");
    // SAFETY: bounds checked above; `c` is exclusively borrowed, so it aliases neither `a` nor `b`.
    unsafe {
        gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

// The three tile products of attention, on dense row-major tiles (`[rows, cols]`, row stride
// `cols`).

/// `c[m, n] = a[m, k] b[n, k]^T` (scores `Q K^T`, `dO V^T`).
fn mul_abt(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    gemm_serial(
        m,
        n,
        k,
        Strided::rows(a, k),
        Strided::transposed(b, k),
        c,
        false,
    );
}

/// `c[m, n] += a[m, k] b[k, n]` (`P V`, `dS K`).
fn mul_ab_acc(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    gemm_serial(m, n, k, Strided::rows(a, k), Strided::rows(b, n), c, true);
}

/// `c[m, n] += a[k, m]^T b[k, n]` (`P^T dO`, `dS^T Q`).
fn mul_atb_acc(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    gemm_serial(
        m,
        n,
        k,
        Strided::transposed(a, m),
        Strided::rows(b, n),
        c,
        true,
    );
}

/// Rows `l0 .. l0 + n` of head `h` in sample `b`: the tile one work item reads or writes.
#[derive(Clone, Copy)]
struct HeadTile {
    b: usize,
    h: usize,
    l0: usize,
    n: usize,
}

/// Where the rows of one head live in a `[batch, len, heads, d]` buffer.
#[derive(Clone, Copy)]
struct HeadRows {
    len: usize,
    heads: usize,
    d: usize,
}

impl HeadRows {
    /// Offset of element 0 of token `l` of head `h` in sample `b`.
    fn offset(&self, b: usize, h: usize, l: usize) -> usize {
        ((b * self.len + l) * self.heads + h) * self.d
    }

    /// `dst[r, :] = scale * src[b, l0 + r, h, :]` for `r < n` (a contiguous `[n, d]` tile).
    fn gather(&self, src: &[f32], tile: HeadTile, scale: f32, dst: &mut [f32]) {
        let HeadTile { b, h, l0, n } = tile;
        let d = self.d;
        for (r, row) in dst[..n * d].chunks_exact_mut(d).enumerate() {
            let o = self.offset(b, h, l0 + r);
            let s = &src[o..o + d];
            if scale == 1.0 {
                row.copy_from_slice(s);
            } else {
                row.iter_mut().zip(s).for_each(|(x, y)| *x = y * scale);
            }
        }
    }
}

/// A buffer that parallel work items write through, each into rows nobody else touches.
///
/// The outputs are `[batch, len, heads, d]`, so the rows owned by one (batch, head, tile) item
/// are strided and interleaved with other items' rows: no safe split of the slice expresses that.
/// The lifetime keeps the buffer mutably borrowed for as long as the `Scatter` exists.
#[derive(Clone, Copy)]
struct Scatter<'a> {
    ptr: *mut f32,
    len: usize,
    _buf: PhantomData<&'a mut [f32]>,
}

// SAFETY: `Scatter` is a pointer into a buffer it borrows mutably; the callers of `write_rows`
// guarantee that concurrent writes go to disjoint rows.
unsafe impl Send for Scatter<'_> {}
unsafe impl Sync for Scatter<'_> {}

impl<'a> Scatter<'a> {
    fn new(buf: &'a mut [f32]) -> Self {
        Scatter {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
            _buf: PhantomData,
        }
    }

    /// `dst[b, l0 + r, h, :] = scale * tile[r, :]` for `r < n`.
    ///
    /// # Safety
    /// No other thread may access these rows of the buffer while this runs.
    unsafe fn write_rows(&self, rows: HeadRows, at: HeadTile, scale: f32, tile: &[f32]) {
        let HeadTile { b, h, l0, n } = at;
        let d = rows.d;
        for (r, src) in tile[..n * d].chunks_exact(d).enumerate() {
            let o = rows.offset(b, h, l0 + r);
            assert!(o + d <= self.len, "attention: output row out of bounds");
            let dst = std::slice::from_raw_parts_mut(self.ptr.add(o), d);
            dst.iter_mut().zip(src).for_each(|(x, y)| *x = y * scale);
        }
    }
}

/// `exp(x)` for `x <= 88`, branch-free so that loops over it vectorise (libm's `expf` is a call
/// per element and was a sizeable share of the forward time). Cephes' single-precision scheme:
/// `x = n ln2 + r` with `|r| <= ln2 / 2`, a degree-7 polynomial for `exp(r)`, and `2^n` built in
/// the exponent bits; relative error about 2e-7. Inputs below -87 give `exp(-87) ~ 1.6e-38`
/// instead of flushing to zero, which is invisible next to a softmax row's maximum term of 1.
#[inline(always)]
fn exp_approx(x: f32) -> f32 {
    let x = if x < -87.0 { -87.0 } else { x };
    // Adding 1.5 * 2^23 rounds x / ln2 to the nearest integer n and leaves n in the low mantissa
    // bits (no float-to-int conversion, which is slow to vectorise before AVX-512).
    let t = x * std::f32::consts::LOG2_E + 12_582_912.0;
    let n = t - 12_582_912.0;
    // ln2 split in a part exact in f32 and a correction, so that r keeps full precision.
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let mut p = 1.987_569_2e-4;
    p = p * r + 1.398_2e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    // t's bits are 0x4B40_0000 + n; adding the bias and shifting drops the 0x4B4 prefix out of the
    // word and leaves (n + 127) << 23, i.e. 2^n (n is in [-126, 127] after the clamp).
    let pow2n = f32::from_bits(t.to_bits().wrapping_add(127) << 23);
    er * pow2n
}

/// `row[j] = exp(row[j] - m)`, returning the sum; eight partial sums so that the loop vectorises
/// (float addition is not reassociated by the compiler).
#[inline(always)]
fn exp_sub_sum_body(row: &mut [f32], m: f32) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut chunks = row.chunks_exact_mut(8);
    for c in &mut chunks {
        for (x, a) in c.iter_mut().zip(acc.iter_mut()) {
            *x = exp_approx(*x - m);
            *a += *x;
        }
    }
    let mut sum = 0.0;
    for x in chunks.into_remainder() {
        *x = exp_approx(*x - m);
        sum += *x;
    }
    sum + acc.iter().sum::<f32>()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_sub_sum_avx2(row: &mut [f32], m: f32) -> f32 {
    exp_sub_sum_body(row, m)
}

/// `row[j] = exp(row[j] - m)`; returns the sum. `m` is at least the row max in the forward pass
/// and the row's log-sum-exp in the backward, so nothing overflows.
///
/// The crate is built for baseline x86-64 (SSE2); the AVX2 copy of the same code is picked at run
/// time and doubles the vector width.
fn exp_sub_sum(row: &mut [f32], m: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { exp_sub_sum_avx2(row, m) };
    }
    exp_sub_sum_body(row, m)
}

/// Per-worker scratch of the forward pass (allocated once per rayon job, not per tile).
struct FwdScratch {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    s: Vec<f32>,
    o: Vec<f32>,
    m: Vec<f32>,
    l: Vec<f32>,
}

impl FwdScratch {
    fn new(d: usize) -> Self {
        FwdScratch {
            q: vec![0.0; FWD_BQ * d],
            k: vec![0.0; FWD_BK * d],
            v: vec![0.0; FWD_BK * d],
            s: vec![0.0; FWD_BQ * FWD_BK],
            o: vec![0.0; FWD_BQ * d],
            m: vec![0.0; FWD_BQ],
            l: vec![0.0; FWD_BQ],
        }
    }

    /// Folds the score tile `s[nq, nk]` into the running row max `m` and sum `l`: `s` becomes
    /// `exp(s - m_new)` (unnormalised probabilities) and the output rows accumulated so far are
    /// rescaled by `exp(m_old - m_new)` so that they stay relative to the new max.
    fn online_softmax(&mut self, nq: usize, nk: usize, d: usize) {
        let rows = self.s[..nq * nk]
            .chunks_exact_mut(nk)
            .zip(self.o.chunks_exact_mut(d));
        for ((s, o), (m, l)) in rows.zip(self.m.iter_mut().zip(self.l.iter_mut())) {
            let m_new = s.iter().fold(*m, |a, &x| a.max(x));
            let sum = exp_sub_sum(s, m_new);
            // exp(-inf) = 0 on the first tile, where there is nothing to rescale yet.
            let corr = (*m - m_new).exp();
            if corr != 1.0 {
                o.iter_mut().for_each(|x| *x *= corr);
            }
            *l = *l * corr + sum;
            *m = m_new;
        }
    }

    /// Normalises the output rows and writes `lse = m + ln l` for the `nq` rows of the tile.
    fn finish(&mut self, nq: usize, d: usize, lse: &mut [f32]) {
        let rows = self.o[..nq * d].chunks_exact_mut(d).zip(lse);
        for ((o, lse), (m, l)) in rows.zip(self.m.iter().zip(&self.l)) {
            // l >= 1: the row max contributes exp(0).
            let inv = 1.0 / l;
            o.iter_mut().for_each(|x| *x *= inv);
            *lse = m + l.ln();
        }
    }
}

/// Softmax attention forward: writes `out: [batch, lq, heads, d]` and
/// `lse: [batch, heads, lq]` (natural log-sum-exp of the scaled scores of each query row).
pub fn attention_forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: AttnShape,
    out: &mut [f32],
    lse: &mut [f32],
) {
    let AttnShape {
        batch,
        lq,
        lk,
        heads,
        head_dim: d,
    } = shape;
    if let Err(e) = shape.check_buffers(q.len(), k.len(), v.len()) {
        panic!("attention (CPU): {e}");
    }
    assert!(
        out.len() >= batch * lq * heads * d,
        "attention: out too short for {shape:?}"
    );
    assert!(
        lse.len() >= batch * heads * lq,
        "attention: lse too short for {shape:?}"
    );
    if batch * lq * heads * d == 0 {
        return;
    }
    let scale = 1.0 / (d as f32).sqrt();
    let qrows = HeadRows { len: lq, heads, d };
    let krows = HeadRows { len: lk, heads, d };
    let n_qt = lq.div_ceil(FWD_BQ);
    let out_w = Scatter::new(out);

    // lse[b, h, :] is contiguous, so it splits safely by (batch, head) and then by query tile.
    lse[..batch * heads * lq]
        .par_chunks_mut(lq)
        .enumerate()
        .flat_map(|(bh, lse_bh)| {
            lse_bh
                .par_chunks_mut(FWD_BQ)
                .enumerate()
                .map(move |(t, lse_t)| (bh, t, lse_t))
        })
        .for_each_init(
            || FwdScratch::new(d),
            |ws, (bh, t, lse_t)| {
                let (b, h) = (bh / heads, bh % heads);
                let q0 = t * FWD_BQ;
                let nq = lse_t.len();
                let q_tile = HeadTile {
                    b,
                    h,
                    l0: q0,
                    n: nq,
                };
                debug_assert!(t < n_qt && q0 + nq <= lq);
                // Scaling q once here makes every score tile come out already scaled.
                qrows.gather(q, q_tile, scale, &mut ws.q);
                ws.m[..nq].fill(f32::NEG_INFINITY);
                ws.l[..nq].fill(0.0);
                ws.o[..nq * d].fill(0.0);
                for k0 in (0..lk).step_by(FWD_BK) {
                    let nk = FWD_BK.min(lk - k0);
                    let k_tile = HeadTile {
                        b,
                        h,
                        l0: k0,
                        n: nk,
                    };
                    krows.gather(k, k_tile, 1.0, &mut ws.k);
                    krows.gather(v, k_tile, 1.0, &mut ws.v);
                    // S[nq, nk] = Qs K^T.
                    mul_abt(nq, nk, d, &ws.q, &ws.k, &mut ws.s);
                    ws.online_softmax(nq, nk, d);
                    // O[nq, d] += P V.
                    mul_ab_acc(nq, d, nk, &ws.s, &ws.v, &mut ws.o);
                }
                ws.finish(nq, d, lse_t);
                // SAFETY: this item is the only one writing rows q0..q0+nq of head h in sample b.
                unsafe { out_w.write_rows(qrows, q_tile, 1.0, &ws.o) };
            },
        );
}

/// Per-worker scratch of the backward passes.
struct BwdScratch {
    /// Query tile, pre-scaled by `1/sqrt(d)`.
    q: Vec<f32>,
    dout: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Scores, then probabilities, then `dS`.
    p: Vec<f32>,
    dp: Vec<f32>,
    /// The owned gradient accumulators (`dK, dV` or `dQ`).
    acc0: Vec<f32>,
    acc1: Vec<f32>,
}

impl BwdScratch {
    /// Scratch for tiles of up to `bq` queries and `bk` keys, and accumulators of `acc0` and
    /// `acc1` rows.
    fn new(bq: usize, bk: usize, acc0: usize, acc1: usize, d: usize) -> Self {
        BwdScratch {
            q: vec![0.0; bq * d],
            dout: vec![0.0; bq * d],
            k: vec![0.0; bk * d],
            v: vec![0.0; bk * d],
            p: vec![0.0; bq * bk],
            dp: vec![0.0; bq * bk],
            acc0: vec![0.0; acc0 * d],
            acc1: vec![0.0; acc1 * d],
        }
    }

    /// `p = P = exp(Qs K^T - lse)` from the gathered (scaled) query tile and the key tile.
    fn probs(&mut self, nq: usize, nk: usize, d: usize, lse: &[f32]) {
        mul_abt(nq, nk, d, &self.q, &self.k, &mut self.p);
        for (row, &l) in self.p[..nq * nk].chunks_exact_mut(nk).zip(lse) {
            exp_sub_sum(row, l);
        }
    }

    /// `p = P * (dO V^T - delta)` (in place over `P`).
    fn ds(&mut self, nq: usize, nk: usize, d: usize, delta: &[f32]) {
        mul_abt(nq, nk, d, &self.dout, &self.v, &mut self.dp);
        let rows = self.p[..nq * nk]
            .chunks_exact_mut(nk)
            .zip(self.dp.chunks_exact(nk));
        for ((p, dp), &dl) in rows.zip(delta) {
            p.iter_mut().zip(dp).for_each(|(p, dp)| *p *= dp - dl);
        }
    }
}

/// Backward of [`attention_forward`]; overwrites `dq, dk, dv`.
pub fn attention_backward(
    qkv: Qkv<&[f32]>,
    out: &[f32],
    lse: &[f32],
    dout: &[f32],
    shape: AttnShape,
    dqkv: Qkv<&mut [f32]>,
) {
    let Qkv { q, k, v } = qkv;
    let Qkv {
        q: dq,
        k: dk,
        v: dv,
    } = dqkv;
    let AttnShape {
        batch,
        lq,
        lk,
        heads,
        head_dim: d,
    } = shape;
    if let Err(e) = shape.check_buffers(q.len(), k.len(), v.len()) {
        panic!("attention (CPU): {e}");
    }
    let nq_all = batch * lq * heads * d;
    let nk_all = batch * lk * heads * d;
    assert!(
        out.len() >= nq_all && dout.len() >= nq_all,
        "attention: out/dout too short"
    );
    assert!(lse.len() >= batch * heads * lq, "attention: lse too short");
    assert!(dq.len() >= nq_all, "attention: dq too short");
    assert!(
        dk.len() >= nk_all && dv.len() >= nk_all,
        "attention: dk/dv too short"
    );
    if nq_all == 0 {
        // No queries: nothing flows back to the keys either.
        dq[..nq_all].fill(0.0);
        dk[..nk_all].fill(0.0);
        dv[..nk_all].fill(0.0);
        return;
    }
    let scale = 1.0 / (d as f32).sqrt();
    let qrows = HeadRows { len: lq, heads, d };
    let krows = HeadRows { len: lk, heads, d };

    // delta[b, h, i] = dout_i . out_i, the row term of the softmax backward; O(lq * heads).
    let mut delta = vec![0.0f32; batch * heads * lq];
    delta.par_chunks_mut(lq).enumerate().for_each(|(bh, dl)| {
        let (b, h) = (bh / heads, bh % heads);
        for (i, x) in dl.iter_mut().enumerate() {
            let o = qrows.offset(b, h, i);
            *x = out[o..o + d]
                .iter()
                .zip(&dout[o..o + d])
                .map(|(a, b)| a * b)
                .sum();
        }
    });
    let delta = &delta;

    // Pass 1: each (batch, head, key tile) streams over all queries and owns its dK, dV rows.
    let n_kt = lk.div_ceil(DKV_BK);
    let (dk_w, dv_w) = (Scatter::new(dk), Scatter::new(dv));
    (0..batch * heads * n_kt).into_par_iter().for_each_init(
        || BwdScratch::new(DKV_BQ, DKV_BK, DKV_BK, DKV_BK, d),
        |ws, item| {
            let (bh, t) = (item / n_kt, item % n_kt);
            let (b, h) = (bh / heads, bh % heads);
            let k0 = t * DKV_BK;
            let nk = DKV_BK.min(lk - k0);
            let k_tile = HeadTile {
                b,
                h,
                l0: k0,
                n: nk,
            };
            krows.gather(k, k_tile, 1.0, &mut ws.k);
            krows.gather(v, k_tile, 1.0, &mut ws.v);
            ws.acc0[..nk * d].fill(0.0); // dK
            ws.acc1[..nk * d].fill(0.0); // dV
            for q0 in (0..lq).step_by(DKV_BQ) {
                let nq = DKV_BQ.min(lq - q0);
                let q_tile = HeadTile {
                    b,
                    h,
                    l0: q0,
                    n: nq,
                };
                let rows = bh * lq + q0..bh * lq + q0 + nq;
                qrows.gather(q, q_tile, scale, &mut ws.q);
                qrows.gather(dout, q_tile, 1.0, &mut ws.dout);
                ws.probs(nq, nk, d, &lse[rows.clone()]);
                // dV[nk, d] += P^T dO.
                mul_atb_acc(nk, d, nq, &ws.p, &ws.dout, &mut ws.acc1);
                ws.ds(nq, nk, d, &delta[rows]);
                // dK[nk, d] += scale dS^T Q = dS^T Qs (the tile holds the scaled queries).
                mul_atb_acc(nk, d, nq, &ws.p, &ws.q, &mut ws.acc0);
            }
            // SAFETY: this item is the only writer of rows k0..k0+nk of head h in sample b.
            unsafe {
                dk_w.write_rows(krows, k_tile, 1.0, &ws.acc0);
                dv_w.write_rows(krows, k_tile, 1.0, &ws.acc1);
            }
        },
    );

    // Pass 2: each (batch, head, query tile) streams over all keys and owns its dQ rows.
    let n_qt = lq.div_ceil(DQ_BQ);
    let dq_w = Scatter::new(dq);
    (0..batch * heads * n_qt).into_par_iter().for_each_init(
        || BwdScratch::new(DQ_BQ, DQ_BK, DQ_BQ, 0, d),
        |ws, item| {
            let (bh, t) = (item / n_qt, item % n_qt);
            let (b, h) = (bh / heads, bh % heads);
            let q0 = t * DQ_BQ;
            let nq = DQ_BQ.min(lq - q0);
            let q_tile = HeadTile {
                b,
                h,
                l0: q0,
                n: nq,
            };
            let rows = bh * lq + q0..bh * lq + q0 + nq;
            qrows.gather(q, q_tile, scale, &mut ws.q);
            qrows.gather(dout, q_tile, 1.0, &mut ws.dout);
            ws.acc0[..nq * d].fill(0.0); // dQ / scale
            for k0 in (0..lk).step_by(DQ_BK) {
                let nk = DQ_BK.min(lk - k0);
                let k_tile = HeadTile {
                    b,
                    h,
                    l0: k0,
                    n: nk,
                };
                krows.gather(k, k_tile, 1.0, &mut ws.k);
                krows.gather(v, k_tile, 1.0, &mut ws.v);
                ws.probs(nq, nk, d, &lse[rows.clone()]);
                ws.ds(nq, nk, d, &delta[rows.clone()]);
                // dQ[nq, d] += dS K (scaled once at the end).
                mul_ab_acc(nq, d, nk, &ws.p, &ws.k, &mut ws.acc0);
            }
            // SAFETY: this item is the only writer of rows q0..q0+nq of head h in sample b.
            unsafe { dq_w.write_rows(qrows, q_tile, scale, &ws.acc0) };
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_grad_close, max_rel_err, numeric_grad, TestRng};

    fn shape(batch: usize, lq: usize, lk: usize, heads: usize, head_dim: usize) -> AttnShape {
        AttnShape {
            batch,
            lq,
            lk,
            heads,
            head_dim,
        }
    }

    /// Full-softmax attention in f64: `(out, lse)`.
    fn naive_forward(q: &[f32], k: &[f32], v: &[f32], s: AttnShape) -> (Vec<f64>, Vec<f64>) {
        let AttnShape {
            batch,
            lq,
            lk,
            heads,
            head_dim: d,
        } = s;
        // Element (b, l, h, c) of a [batch, len, heads, d] buffer, spelled out independently of
        // the kernel's HeadRows.
        let qr = |b: usize, h: usize, l: usize| ((b * lq + l) * heads + h) * d;
        let kr = |b: usize, h: usize, l: usize| ((b * lk + l) * heads + h) * d;
        let scale = 1.0 / (d as f64).sqrt();
        let mut out = vec![0.0; batch * lq * heads * d];
        let mut lse = vec![0.0; batch * heads * lq];
        for b in 0..batch {
            for h in 0..heads {
                for i in 0..lq {
                    let qo = qr(b, h, i);
                    let sc: Vec<f64> = (0..lk)
                        .map(|j| {
                            let ko = kr(b, h, j);
                            let dot: f64 =
                                (0..d).map(|c| q[qo + c] as f64 * k[ko + c] as f64).sum();
                            dot * scale
                        })
                        .collect();
                    let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let sum: f64 = sc.iter().map(|x| (x - mx).exp()).sum();
                    let l = mx + sum.ln();
                    lse[(b * heads + h) * lq + i] = l;
                    for (j, x) in sc.iter().enumerate() {
                        let p = (x - l).exp();
                        let vo = kr(b, h, j);
                        for c in 0..d {
                            out[qo + c] += p * v[vo + c] as f64;
                        }
                    }
                }
            }
        }
        (out, lse)
    }

    /// Analytic gradient of `sum(out * dout)` for the f64 reference: `(dq, dk, dv)`.
    fn naive_backward(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        dout: &[f32],
        s: AttnShape,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let AttnShape {
            batch,
            lq,
            lk,
            heads,
            head_dim: d,
        } = s;
        // Element (b, l, h, c) of a [batch, len, heads, d] buffer, spelled out independently of
        // the kernel's HeadRows.
        let qr = |b: usize, h: usize, l: usize| ((b * lq + l) * heads + h) * d;
        let kr = |b: usize, h: usize, l: usize| ((b * lk + l) * heads + h) * d;
        let scale = 1.0 / (d as f64).sqrt();
        let (_, lse) = naive_forward(q, k, v, s);
        let mut dq = vec![0.0; q.len()];
        let mut dk = vec![0.0; k.len()];
        let mut dv = vec![0.0; v.len()];
        let dot = |a: &[f32], ao: usize, b: &[f32], bo: usize| -> f64 {
            (0..d).map(|c| a[ao + c] as f64 * b[bo + c] as f64).sum()
        };
        for b in 0..batch {
            for h in 0..heads {
                for i in 0..lq {
                    let qo = qr(b, h, i);
                    let l = lse[(b * heads + h) * lq + i];
                    // p_j = softmax, dp_j = dO_i . v_j, ds_j = p_j (dp_j - sum_j' p_j' dp_j').
                    let p: Vec<f64> = (0..lk)
                        .map(|j| (dot(q, qo, k, kr(b, h, j)) * scale - l).exp())
                        .collect();
                    let dp: Vec<f64> = (0..lk).map(|j| dot(dout, qo, v, kr(b, h, j))).collect();
                    let delta: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
                    for j in 0..lk {
                        let ko = kr(b, h, j);
                        let ds = p[j] * (dp[j] - delta);
                        for c in 0..d {
                            dq[qo + c] += scale * ds * k[ko + c] as f64;
                            dk[ko + c] += scale * ds * q[qo + c] as f64;
                            dv[ko + c] += p[j] * dout[qo + c] as f64;
                        }
                    }
                }
            }
        }
        (dq, dk, dv)
    }

    fn f32s(x: &[f64]) -> Vec<f32> {
        x.iter().map(|&v| v as f32).collect()
    }

    struct Case {
        s: AttnShape,
        q: Vec<f32>,
        k: Vec<f32>,
        v: Vec<f32>,
        dout: Vec<f32>,
    }

    fn case(s: AttnShape, seed: u64, q_gain: f32) -> Case {
        let mut rng = TestRng::new(seed);
        let nq = s.batch * s.lq * s.heads * s.head_dim;
        let nk = s.batch * s.lk * s.heads * s.head_dim;
        Case {
            s,
            q: rng.vec(nq).iter().map(|x| x * q_gain).collect(),
            k: rng.vec(nk),
            v: rng.vec(nk),
            dout: rng.vec(nq),
        }
    }

    fn run_forward(c: &Case) -> (Vec<f32>, Vec<f32>) {
        // Garbage in the outputs: every element must be written.
        let mut out = vec![f32::NAN; c.q.len()];
        let mut lse = vec![f32::NAN; c.s.batch * c.s.heads * c.s.lq];
        attention_forward(&c.q, &c.k, &c.v, c.s, &mut out, &mut lse);
        (out, lse)
    }

    fn run_backward(c: &Case, out: &[f32], lse: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let mut dq = vec![f32::NAN; c.q.len()];
        let mut dk = vec![f32::NAN; c.k.len()];
        let mut dv = vec![f32::NAN; c.v.len()];
        let qkv = Qkv {
            q: c.q.as_slice(),
            k: c.k.as_slice(),
            v: c.v.as_slice(),
        };
        let dqkv = Qkv {
            q: dq.as_mut_slice(),
            k: dk.as_mut_slice(),
            v: dv.as_mut_slice(),
        };
        attention_backward(qkv, out, lse, &c.dout, c.s, dqkv);
        (dq, dk, dv)
    }

    /// Forward within 1e-5 and backward within 1e-4 (relative) of the f64 reference.
    fn check_against_reference(s: AttnShape, seed: u64, q_gain: f32) {
        let c = case(s, seed, q_gain);
        let (out, lse) = run_forward(&c);
        let (out_ref, lse_ref) = naive_forward(&c.q, &c.k, &c.v, s);
        assert!(lse.iter().all(|x| x.is_finite()), "{s:?}: non-finite lse");
        let e_out = max_rel_err(&out, &f32s(&out_ref));
        let e_lse = max_rel_err(&lse, &f32s(&lse_ref));
        assert!(e_out <= 1e-5, "{s:?}: out rel err {e_out:e}");
        assert!(e_lse <= 1e-5, "{s:?}: lse rel err {e_lse:e}");

        let (dq, dk, dv) = run_backward(&c, &out, &lse);
        let (dq_ref, dk_ref, dv_ref) = naive_backward(&c.q, &c.k, &c.v, &c.dout, s);
        for (name, got, want) in [
            ("dq", &dq, &dq_ref),
            ("dk", &dk, &dk_ref),
            ("dv", &dv, &dv_ref),
        ] {
            let e = max_rel_err(got, &f32s(want));
            assert!(e <= 1e-4, "{s:?}: {name} rel err {e:e}");
        }
    }

    #[test]
    fn exp_approx_is_accurate() {
        let mut worst = 0.0f64;
        for i in 0..=200_000 {
            let x = -87.0 + 175.0 * i as f32 / 200_000.0;
            let want = (x as f64).exp();
            worst = worst.max(((exp_approx(x) as f64) - want).abs() / want);
        }
        assert!(worst < 5e-7, "exp_approx relative error {worst:e}");
        // Both the dispatched (AVX2) and the baseline loop, with a ragged tail.
        let row: Vec<f32> = (0..37).map(|i| -0.37 * i as f32).collect();
        let want: f64 = row.iter().map(|&x| (x as f64 - 0.5).exp()).sum();
        for f in [exp_sub_sum, exp_sub_sum_body] {
            let mut r = row.clone();
            let sum = f(&mut r, 0.5);
            assert!((sum as f64 - want).abs() < 1e-6 * want);
            for (y, x) in r.iter().zip(&row) {
                assert!((*y as f64 - (*x as f64 - 0.5).exp()).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn matches_reference_on_ragged_shapes() {
        // Tiles are 256 (owned per work item) x 64 (inner step): these cover one and several
        // tiles on each side, ragged and exact.
        let shapes = [
            shape(1, 1, 1, 1, 8),
            shape(2, 5, 1, 3, 8),      // a single key: out = v, dq = dk = 0
            shape(1, 1, 300, 2, 16),   // a single query over several key tiles
            shape(2, 70, 130, 3, 16),  // lq != lk, both ragged
            shape(1, 300, 67, 2, 8),   // two query work items, the second ragged
            shape(1, 65, 257, 1, 128), // two key work items, the second a single key
            shape(2, 256, 128, 2, 16), // exact multiples of the tile sizes
        ];
        for (i, s) in shapes.into_iter().enumerate() {
            check_against_reference(s, 10 + i as u64, 1.0);
        }
    }

    #[test]
    fn matches_reference_on_many_tiles() {
        check_against_reference(shape(1, 700, 700, 2, 16), 3, 1.0);
    }

    #[test]
    fn large_scores_stay_finite() {
        // Scores of order +-100: exp would overflow without the running max.
        check_against_reference(shape(1, 150, 200, 2, 16), 4, 40.0);
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        // Every work item computes its rows in a fixed order with a serial GEMM, so the result is
        // bitwise the same whatever the pool size.
        let c = case(shape(2, 300, 270, 3, 16), 8, 1.0);
        let run = || {
            let (out, lse) = run_forward(&c);
            let grads = run_backward(&c, &out, &lse);
            (out, lse, grads)
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        assert!(pool.install(run) == run());
    }

    #[test]
    fn reference_gradient_matches_finite_differences() {
        // Validates the hand-derived gradient of the f64 reference itself.
        let s = shape(1, 3, 4, 2, 8);
        let c = case(s, 5, 1.0);
        let (dq, dk, dv) = naive_backward(&c.q, &c.k, &c.v, &c.dout, s);
        let loss = |q: &[f32], k: &[f32], v: &[f32]| -> f64 {
            let (out, _) = naive_forward(q, k, v, s);
            out.iter().zip(&c.dout).map(|(o, g)| o * *g as f64).sum()
        };
        let nq = numeric_grad(&c.q, 1e-3, |x| loss(x, &c.k, &c.v));
        let nk = numeric_grad(&c.k, 1e-3, |x| loss(&c.q, x, &c.v));
        let nv = numeric_grad(&c.v, 1e-3, |x| loss(&c.q, &c.k, x));
        assert_grad_close("ref dq", &f32s(&dq), &nq, 1e-4);
        assert_grad_close("ref dk", &f32s(&dk), &nk, 1e-4);
        assert_grad_close("ref dv", &f32s(&dv), &nv, 1e-4);
    }

    #[test]
    fn backward_matches_finite_differences() {
        // Differentiates the f32 kernel itself; the step trades truncation against f32 rounding.
        let s = shape(2, 5, 3, 2, 8);
        let c = case(s, 6, 1.0);
        let (out, lse) = run_forward(&c);
        let (dq, dk, dv) = run_backward(&c, &out, &lse);
        let loss = |q: &[f32], k: &[f32], v: &[f32]| -> f64 {
            let mut o = vec![0.0; q.len()];
            let mut l = vec![0.0; s.batch * s.heads * s.lq];
            attention_forward(q, k, v, s, &mut o, &mut l);
            o.iter()
                .zip(&c.dout)
                .map(|(o, g)| *o as f64 * *g as f64)
                .sum()
        };
        let h = 1e-2;
        assert_grad_close(
            "dq",
            &dq,
            &numeric_grad(&c.q, h, |x| loss(x, &c.k, &c.v)),
            2e-3,
        );
        assert_grad_close(
            "dk",
            &dk,
            &numeric_grad(&c.k, h, |x| loss(&c.q, x, &c.v)),
            2e-3,
        );
        assert_grad_close(
            "dv",
            &dv,
            &numeric_grad(&c.v, h, |x| loss(&c.q, &c.k, x)),
            2e-3,
        );
    }

    /// Throughput at a realistic per-sample size (best of `ATTN_REPS`, default 3); run with
    /// `cargo test --release --lib attention::tests::throughput -- --ignored --nocapture`
    /// (`ATTN_L` sets the token count, default 4096).
    #[test]
    #[ignore]
    fn throughput() {
        let env = |name: &str, default: usize| {
            std::env::var(name)
                .ok()
                .and_then(|x| x.parse().ok())
                .unwrap_or(default)
        };
        let (l, reps) = (env("ATTN_L", 4096), env("ATTN_REPS", 3));
        let s = shape(1, l, l, 12, 128);
        let c = case(s, 7, 1.0);
        let (mut out, mut lse) = run_forward(&c);
        let (mut dq, mut dk, mut dv) = (
            vec![0.0; c.q.len()],
            vec![0.0; c.k.len()],
            vec![0.0; c.v.len()],
        );
        let (mut tf, mut tb) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..reps {
            let t = std::time::Instant::now();
            attention_forward(&c.q, &c.k, &c.v, s, &mut out, &mut lse);
            tf = tf.min(t.elapsed().as_secs_f64());
            let t = std::time::Instant::now();
            let qkv = Qkv {
                q: c.q.as_slice(),
                k: c.k.as_slice(),
                v: c.v.as_slice(),
            };
            let dqkv = Qkv {
                q: dq.as_mut_slice(),
                k: dk.as_mut_slice(),
                v: dv.as_mut_slice(),
            };
            attention_backward(qkv, &out, &lse, &c.dout, s, dqkv);
            tb = tb.min(t.elapsed().as_secs_f64());
        }
        let flops = 4.0 * (l * l * 128 * 12) as f64;
        println!(
            "L={l} heads=12 d=128 threads={}: forward {tf:.3} s ({:.1} GFLOP/s), backward {tb:.3} s \
             ({:.1} GFLOP/s counting 2.5x the forward flops)",
            rayon::current_num_threads(),
            flops / tf * 1e-9,
            2.5 * flops / tb * 1e-9
        );
    }
}
