//! The Wan VAE's RMS norm over channels, optionally followed by SiLU: for every position `m` of a
//! channel-first `[C, M]` tensor, `y[c, m] = x[c, m] / max(||x[:, m]||_2, 1e-12) * sqrt(C) *
//! gamma[c]` (torch's `F.normalize(x, dim=1) * C**0.5 * gamma`, in that order of operations),
//! then `y = y / (1 + exp(-y))` when `silu` is set (the VAE's norm is always followed by SiLU
//! except before attention). Positions are processed in blocks, in parallel; within a block the
//! channel rows are read contiguously.
//!
//! Phase 1 of issue 14: a CPU function the VAE calls; the `Backend` trait method and its CUDA
//! kernel are phase 2.

use rayon::prelude::*;

/// Positions per parallel block.
const BLOCK: usize = 512;

/// `F.normalize`'s epsilon: the norm is clamped from below by it.
const NORM_EPS: f32 = 1e-12;

/// SiLU as torch computes it in f32: `x * sigmoid(x)`, with an exact exponential.
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// In place on `x` `[c, m]` (see the module doc). Panics if the lengths disagree.
pub fn vae_rms_norm(x: &mut [f32], c: usize, m: usize, gamma: &[f32], silu_after: bool) {
    assert_eq!(x.len(), c * m, "vae_rms_norm: input length");
    assert_eq!(gamma.len(), c, "vae_rms_norm: gamma length");
    if m == 0 {
        return;
    }
    let scale = (c as f32).sqrt();
    let blocks = m.div_ceil(BLOCK);
    let ptr = SharedMut(x.as_mut_ptr());
    (0..blocks).into_par_iter().for_each(|b| {
        let m0 = b * BLOCK;
        let n = BLOCK.min(m - m0);
        // SAFETY: block b touches only the columns m0..m0+n of every row: disjoint from the other
        // blocks' columns, inside `x` (length checked above), which outlives the loop.
        let row =
            |ch: usize| unsafe { std::slice::from_raw_parts_mut(ptr.get().add(ch * m + m0), n) };
        let mut sumsq = [0.0f32; BLOCK];
        for ch in 0..c {
            for (s, v) in sumsq.iter_mut().zip(row(ch).iter()) {
                *s += v * v;
            }
        }
        let inv: Vec<f32> = sumsq[..n]
            .iter()
            .map(|s| 1.0 / s.sqrt().max(NORM_EPS))
            .collect();
        for (ch, g) in gamma.iter().enumerate() {
            for (v, d) in row(ch).iter_mut().zip(&inv) {
                let y = *v * d * scale * g;
                *v = if silu_after { silu(y) } else { y };
            }
        }
    });
}

#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: the parallel blocks write disjoint columns (see `vae_rms_norm`).
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The pointer (a method, so that closures capture the whole `Send` wrapper).
    fn get(self) -> *mut f32 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_position_gets_unit_rms_times_gamma() {
        let (c, m) = (3, 1000);
        let mut x: Vec<f32> = (0..c * m).map(|i| (i as f32 * 0.37).sin()).collect();
        let orig = x.clone();
        let gamma = [1.0, 2.0, -0.5];
        vae_rms_norm(&mut x, c, m, &gamma, false);
        for p in [0, 511, 512, 999] {
            let norm: f32 = (0..c)
                .map(|ch| orig[ch * m + p].powi(2))
                .sum::<f32>()
                .sqrt();
            for ch in 0..c {
                let want = orig[ch * m + p] / norm * (c as f32).sqrt() * gamma[ch];
                assert!((x[ch * m + p] - want).abs() < 1e-5);
            }
        }
        let mut zeros = vec![0.0; c * 2];
        vae_rms_norm(&mut zeros, c, 2, &gamma, true);
        assert!(zeros.iter().all(|v| *v == 0.0));
    }
}
