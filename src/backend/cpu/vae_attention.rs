//! The Wan VAE's middle attention, one frame at a time: single-head softmax attention over the
//! frame's `n = h * w` positions, from a packed `qkv` `[3c, n]` (the 1x1 projection's output,
//! channel-first): `out[:, i] = sum_j softmax_j(q[:, i] . k[:, j] / sqrt(c)) v[:, j]`, i.e. torch's
//! `scaled_dot_product_attention` with one head of width `c`. Query rows are processed in blocks
//! (in parallel), so the score matrix held at once is `block x n`, not `n x n`.
//!
//! Phase 1 of issue 14: a CPU function the VAE calls; the `Backend` trait method and its CUDA
//! kernel are phase 2.

use gemm::{gemm, Parallelism};
use rayon::prelude::*;

/// Query positions per parallel block.
const QUERY_BLOCK: usize = 256;

/// `qkv` `[3c, n]` -> `out` `[c, n]` (see the module doc).
pub fn vae_attention(qkv: &[f32], c: usize, n: usize, out: &mut [f32]) {
    assert_eq!(qkv.len(), 3 * c * n, "vae_attention: qkv length");
    assert_eq!(out.len(), c * n, "vae_attention: output length");
    if n == 0 || c == 0 {
        return;
    }
    let (q, rest) = qkv.split_at(c * n);
    let (k, v) = rest.split_at(c * n);
    let scale = 1.0 / (c as f32).sqrt();
    // Each block computes the transposed output rows [rows, c] and is scattered afterwards:
    // the output is small beside the scores.
    let blocks: Vec<(usize, Vec<f32>)> = (0..n.div_ceil(QUERY_BLOCK))
        .into_par_iter()
        .map(|b| {
            let i0 = b * QUERY_BLOCK;
            let rows = QUERY_BLOCK.min(n - i0);
            // scores[r, j] = sum_c q[c, i0 + r] k[c, j]
            let mut scores = vec![0.0f32; rows * n];
            // SAFETY: the operands' strides describe q (columns i0..i0+rows, read transposed),
            // k [c, n] and the dense scores [rows, n]; all inside their slices.
            unsafe {
                gemm(
                    rows,
                    n,
                    c,
                    scores.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    q.as_ptr().add(i0),
                    n as isize,
                    1,
                    k.as_ptr(),
                    1,
                    n as isize,
                    0.0,
                    scale,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
            for row in scores.chunks_mut(n) {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0f32;
                for s in row.iter_mut() {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                let inv = 1.0 / sum;
                row.iter_mut().for_each(|s| *s *= inv);
            }
            // o[r, c'] = sum_j p[r, j] v[c', j]
            let mut o = vec![0.0f32; rows * c];
            // SAFETY: p is dense [rows, n], v [c, n] read transposed, o dense [rows, c].
            unsafe {
                gemm(
                    rows,
                    c,
                    n,
                    o.as_mut_ptr(),
                    1,
                    c as isize,
                    false,
                    scores.as_ptr(),
                    1,
                    n as isize,
                    v.as_ptr(),
                    n as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
            (i0, o)
        })
        .collect();
    for (i0, o) in blocks {
        for (r, row) in o.chunks(c).enumerate() {
            for (ch, val) in row.iter().enumerate() {
                out[ch * n + i0 + r] = *val;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_matches_the_definition() {
        let (c, n) = (3, 300);
        let qkv: Vec<f32> = (0..3 * c * n)
            .map(|i| ((i * 7 % 23) as f32 - 11.0) / 9.0)
            .collect();
        let mut out = vec![0.0; c * n];
        vae_attention(&qkv, c, n, &mut out);
        let (q, k, v) = (&qkv[..c * n], &qkv[c * n..2 * c * n], &qkv[2 * c * n..]);
        for i in [0, 255, 256, 299] {
            let s: Vec<f64> = (0..n)
                .map(|j| {
                    (0..c)
                        .map(|ch| (q[ch * n + i] * k[ch * n + j]) as f64)
                        .sum::<f64>()
                        / (c as f64).sqrt()
                })
                .collect();
            let max = s.iter().copied().fold(f64::MIN, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
            let z: f64 = e.iter().sum();
            for ch in 0..c {
                let want: f64 = (0..n).map(|j| e[j] / z * v[ch * n + j] as f64).sum();
                assert!((out[ch * n + i] as f64 - want).abs() < 1e-5);
            }
        }
    }
}
