//! Optimiser kernels: the squared norm (for clipping and non-finite detection) and AdamW.

use rayon::prelude::*;

use crate::backend::AdamWHyper;

const CHUNK: usize = 1 << 14;

/// `sum x^2` in f64, summed chunk by chunk in a fixed order (the result does not depend on the
/// thread count, which keeps resumed training bit-for-bit reproducible).
pub fn sum_squares(x: &[f32]) -> f64 {
    let partial: Vec<f64> = x
        .par_chunks(CHUNK)
        .map(|c| c.iter().map(|&v| (v as f64) * (v as f64)).sum())
        .collect();
    partial.iter().sum()
}

/// AdamW as torch implements it: `p -= lr * wd * p`, then the bias-corrected Adam step.
pub fn adamw_update(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: &AdamWHyper) {
    let step_size = h.lr / h.bias_correction1;
    let bc2_sqrt = h.bias_correction2.sqrt();
    let decay = 1.0 - h.lr * h.weight_decay;
    p.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
        .for_each(|((p, g), (m, v))| {
            for i in 0..p.len() {
                let gi = g[i] * h.grad_scale;
                m[i] = h.beta1 * m[i] + (1.0 - h.beta1) * gi;
                v[i] = h.beta2 * v[i] + (1.0 - h.beta2) * gi * gi;
                let denom = v[i].sqrt() / bc2_sqrt + h.eps;
                p[i] = p[i] * decay - step_size * m[i] / denom;
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adamw_matches_the_textbook_update() {
        let h = AdamWHyper {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            grad_scale: 0.5,
            bias_correction1: 1.0 - 0.9,
            bias_correction2: 1.0 - 0.999,
        };
        let mut p = vec![1.0f32, -2.0];
        let g = vec![0.4f32, -1.0];
        let (mut m, mut v) = (vec![0.0; 2], vec![0.0; 2]);
        adamw_update(&mut p, &g, &mut m, &mut v, &h);
        for (i, &p0) in [1.0f64, -2.0].iter().enumerate() {
            let gi = g[i] as f64 * 0.5;
            let (mi, vi) = (0.1 * gi, 0.001 * gi * gi);
            let upd = (mi / 0.1) / ((vi / 0.001).sqrt() + 1e-8);
            let want = p0 * (1.0 - 0.1 * 0.01) - 0.1 * upd;
            assert!((p[i] as f64 - want).abs() < 1e-6, "{} vs {want}", p[i]);
        }
        assert_eq!(sum_squares(&[3.0, 4.0]), 25.0);
        assert!(sum_squares(&[f32::NAN]).is_nan());
    }
}
