//! Interleaved-pair rotary embedding: pair `i` of a head is `(x[2i], x[2i+1])`, rotated by the
//! token's angle for pair `i` (Wan and diffusers rotate adjacent elements, not split halves).
//!
//! A rotation is orthogonal, so its backward is the rotation by the negative angle: the same
//! kernel with `inverse = true`.

use rayon::prelude::*;

use crate::backend::RopeShape;

/// Token rows per rayon task (a row is `heads * head_dim` values, 1536 or 5120 for Wan).
const TOKENS_PER_TASK: usize = 32;

/// Rotates the `heads` interleaved-pair vectors of one token row in place.
#[inline]
fn rotate_row(row: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32], sign: f32) {
    for head in row.chunks_exact_mut(head_dim) {
        for ((p, &c), &s) in head.chunks_exact_mut(2).zip(cos).zip(sin) {
            let (a, b) = (p[0], p[1]);
            let s = sign * s;
            p[0] = a * c - b * s;
            p[1] = a * s + b * c;
        }
    }
}

/// `x: [batch, tokens, heads, head_dim]` rotated in place with `cos, sin: [tokens, head_dim/2]`:
/// `out[2i] = a cos - b sin`, `out[2i+1] = a sin + b cos`; `inverse` negates the angle.
pub fn rope_rotate(x: &mut [f32], shape: RopeShape, cos: &[f32], sin: &[f32], inverse: bool) {
    let RopeShape {
        batch,
        tokens,
        heads,
        head_dim,
    } = shape;
    assert!(head_dim % 2 == 0, "rope: head_dim must be even");
    let half = head_dim / 2;
    let row = heads * head_dim;
    assert!(
        cos.len() >= tokens * half && sin.len() >= tokens * half,
        "rope: angle table too short"
    );
    let x = &mut x[..batch * tokens * row];
    let sign = if inverse { -1.0 } else { 1.0 };
    // `r` is a row index over batch * tokens; the angle table is shared by every sample.
    let rotate = |r: usize, xr: &mut [f32]| {
        let t = r % tokens;
        rotate_row(
            xr,
            head_dim,
            &cos[t * half..(t + 1) * half],
            &sin[t * half..(t + 1) * half],
            sign,
        );
    };
    if batch * tokens <= TOKENS_PER_TASK {
        x.chunks_exact_mut(row)
            .enumerate()
            .for_each(|(r, xr)| rotate(r, xr));
    } else {
        x.par_chunks_mut(TOKENS_PER_TASK * row)
            .enumerate()
            .for_each(|(blk, xs)| {
                for (i, xr) in xs.chunks_exact_mut(row).enumerate() {
                    rotate(blk * TOKENS_PER_TASK + i, xr);
                }
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_grad_close, max_rel_err, numeric_grad, TestRng};

    const B: usize = 2;
    const T: usize = 3;
    const H: usize = 2;
    const HD: usize = 6;

    fn shape(tokens: usize) -> RopeShape {
        RopeShape {
            batch: B,
            tokens,
            heads: H,
            head_dim: HD,
        }
    }

    fn tables(rng: &mut TestRng) -> (Vec<f32>, Vec<f32>) {
        let ang: Vec<f32> = rng.vec(T * HD / 2).iter().map(|v| 3.0 * v).collect();
        (
            ang.iter().map(|a| a.cos()).collect(),
            ang.iter().map(|a| a.sin()).collect(),
        )
    }

    #[test]
    fn forward_matches_formula() {
        let mut rng = TestRng::new(1);
        let (cos, sin) = tables(&mut rng);
        let x = rng.vec(B * T * H * HD);
        let mut y = x.clone();
        rope_rotate(&mut y, shape(T), &cos, &sin, false);
        for b in 0..B {
            for t in 0..T {
                for h in 0..H {
                    for i in 0..HD / 2 {
                        let base = ((b * T + t) * H + h) * HD + 2 * i;
                        let (a, bb) = (x[base], x[base + 1]);
                        let (c, s) = (cos[t * HD / 2 + i], sin[t * HD / 2 + i]);
                        assert_eq!(y[base], a * c - bb * s);
                        assert_eq!(y[base + 1], a * s + bb * c);
                    }
                }
            }
        }
    }

    #[test]
    fn inverse_undoes_forward() {
        let mut rng = TestRng::new(2);
        let (cos, sin) = tables(&mut rng);
        // Enough tokens for the parallel path.
        let tokens = 3 * TOKENS_PER_TASK + 1;
        let cos = cos.repeat(tokens);
        let sin = sin.repeat(tokens);
        let x = rng.vec(B * tokens * H * HD);
        let mut y = x.clone();
        rope_rotate(&mut y, shape(tokens), &cos, &sin, false);
        assert!(max_rel_err(&y, &x) > 0.1);
        rope_rotate(&mut y, shape(tokens), &cos, &sin, true);
        assert!(max_rel_err(&y, &x) < 1e-6);
    }

    #[test]
    fn inverse_is_the_backward() {
        let mut rng = TestRng::new(3);
        let (cos, sin) = tables(&mut rng);
        let x = rng.vec(B * T * H * HD);
        let c = rng.vec(x.len());
        let mut dx = c.clone();
        rope_rotate(&mut dx, shape(T), &cos, &sin, true);
        let num = numeric_grad(&x, 1e-2, |xp| {
            let mut y = xp.to_vec();
            rope_rotate(&mut y, shape(T), &cos, &sin, false);
            y.iter().zip(&c).map(|(&a, &b)| a as f64 * b as f64).sum()
        });
        assert_grad_close("rope dx", &dx, &num, 1e-2);
    }
}
