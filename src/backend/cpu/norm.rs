//! LayerNorm and RMSNorm over rows of width `d`, forward and backward.
//!
//! Row statistics are sums over 8 independent f32 lanes (which the compiler vectorises and which
//! keeps the rounding error near `sqrt(d / 8)` ulps); LayerNorm uses two passes (mean, then the
//! centred sum of squares) so that a large common offset does not cancel the variance. Rows are
//! processed in fixed-size blocks over the rayon pool; the parameter gradients are reduced per
//! block and then summed in block order, so results are identical for any thread count.

use rayon::prelude::*;

use crate::backend::{LayerNormGrads, LayerNormStats, NormAffine};

/// Elements per rayon task (rounded to whole rows).
const BLOCK_ELEMS: usize = 1 << 16;

fn rows_per_block(d: usize) -> usize {
    (BLOCK_ELEMS / d.max(1)).max(1)
}

/// `sum_i f(a[i], b[i])` over 8 independent f32 accumulators.
#[inline]
fn lane_sum(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b[..a.len()].chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(&x, &y)| f(x, y))
        .sum();
    for (ca, cb) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] += f(ca[l], cb[l]);
        }
    }
    // Pairwise combination of the lanes.
    let a4 = [
        acc[0] + acc[4],
        acc[1] + acc[5],
        acc[2] + acc[6],
        acc[3] + acc[7],
    ];
    (a4[0] + a4[2]) + (a4[1] + a4[3]) + tail
}

/// Runs `f(x_block, y_block, stats_block)` over blocks of whole rows (`stats` holds `per_row`
/// values per row), in parallel when there is more than one block.
fn for_row_blocks(
    x: &[f32],
    y: &mut [f32],
    d: usize,
    stats: &mut [f32],
    per_row: usize,
    f: impl Fn(&[f32], &mut [f32], &mut [f32]) + Sync,
) {
    let rb = rows_per_block(d);
    if x.len() <= rb * d {
        f(x, y, stats);
    } else {
        y.par_chunks_mut(rb * d)
            .zip(x.par_chunks(rb * d))
            .zip(stats.par_chunks_mut(rb * per_row))
            .for_each(|((y, x), s)| f(x, y, s));
    }
}

/// Runs `f(first_row, dy_block, x_block, dx_block)` over blocks of whole rows and returns the
/// per-block partial parameter gradients in block order.
fn backward_row_blocks(
    dy: &[f32],
    x: &[f32],
    dx: &mut [f32],
    d: usize,
    f: impl Fn(usize, &[f32], &[f32], &mut [f32]) -> Vec<f32> + Sync,
) -> Vec<Vec<f32>> {
    let rb = rows_per_block(d);
    if x.len() <= rb * d {
        vec![f(0, dy, x, dx)]
    } else {
        dx.par_chunks_mut(rb * d)
            .zip(dy.par_chunks(rb * d))
            .zip(x.par_chunks(rb * d))
            .enumerate()
            .map(|(bi, ((dx, dy), x))| f(bi * rb, dy, x, dx))
            .collect()
    }
}

/// `out += partial[offset .. offset + out.len()]` for each partial, in block order
/// (deterministic).
fn sum_partials(partials: &[Vec<f32>], offset: usize, out: &mut [f32]) {
    for p in partials {
        for (o, &v) in out.iter_mut().zip(&p[offset..]) {
            *o += v;
        }
    }
}

/// Rows of width `d`; `y = (x - mean) * rstd (* weight + bias)`; saves mean, rstd per row.
///
/// `rstd = 1 / sqrt(var + eps)` with the biased variance, as torch. The number of rows is
/// `x.len() / d`.
pub fn layernorm_forward(
    x: &[f32],
    d: usize,
    affine: NormAffine<&[f32]>,
    eps: f32,
    y: &mut [f32],
    stats: LayerNormStats<&mut [f32]>,
) {
    let NormAffine { weight, bias } = affine;
    let LayerNormStats { mean, rstd } = stats;
    assert!(
        d > 0 && x.len() % d == 0,
        "layernorm: length not a multiple of d"
    );
    let rows = x.len() / d;
    let weight = weight.map(|w| &w[..d]);
    let bias = bias.map(|b| &b[..d]);
    // (mean, rstd) interleaved per row so that one parallel split covers both outputs.
    let mut stats = vec![0.0f32; 2 * rows];
    for_row_blocks(x, &mut y[..rows * d], d, &mut stats, 2, |x, y, st| {
        for ((xr, yr), st) in x
            .chunks_exact(d)
            .zip(y.chunks_exact_mut(d))
            .zip(st.chunks_exact_mut(2))
        {
            let mu = lane_sum(xr, xr, |a, _| a) / d as f32;
            let var = lane_sum(xr, xr, |a, _| (a - mu) * (a - mu)) / d as f32;
            let rs = 1.0 / (var + eps).sqrt();
            for (yv, &xv) in yr.iter_mut().zip(xr) {
                *yv = (xv - mu) * rs;
            }
            if let Some(w) = weight {
                yr.iter_mut().zip(w).for_each(|(yv, &wv)| *yv *= wv);
            }
            if let Some(b) = bias {
                yr.iter_mut().zip(b).for_each(|(yv, &bv)| *yv += bv);
            }
            st[0] = mu;
            st[1] = rs;
        }
    });
    for ((m, r), st) in mean[..rows]
        .iter_mut()
        .zip(&mut rstd[..rows])
        .zip(stats.chunks_exact(2))
    {
        *m = st[0];
        *r = st[1];
    }
}

/// Overwrites dx; accumulates dweight, dbias.
///
/// With `xhat = (x - mean) rstd` and `g = dy * weight` (or `dy`):
/// `dx = rstd (g - mean(g) - xhat mean(g xhat))`, `dweight += sum_rows dy xhat`,
/// `dbias += sum_rows dy`.
pub fn layernorm_backward(
    dy: &[f32],
    x: &[f32],
    d: usize,
    weight: Option<&[f32]>,
    stats: LayerNormStats<&[f32]>,
    grads: LayerNormGrads<&mut [f32]>,
) {
    let LayerNormStats { mean, rstd } = stats;
    let LayerNormGrads { dx, dweight, dbias } = grads;
    assert!(
        d > 0 && x.len() % d == 0,
        "layernorm: length not a multiple of d"
    );
    let rows = x.len() / d;
    let weight = weight.map(|w| &w[..d]);
    let want_params = dweight.is_some() || dbias.is_some();
    // Each block returns its partial [dweight | dbias] (empty when neither is wanted).
    let partials = backward_row_blocks(
        &dy[..rows * d],
        x,
        &mut dx[..rows * d],
        d,
        |row0, dy, x, dx| {
            let mut part = vec![0.0f32; if want_params { 2 * d } else { 0 }];
            let mut g = vec![0.0f32; d];
            let mut xhat = vec![0.0f32; d];
            let rows = dy
                .chunks_exact(d)
                .zip(x.chunks_exact(d))
                .zip(dx.chunks_exact_mut(d));
            for (r, ((dyr, xr), dxr)) in rows.enumerate() {
                let (mu, rs) = (mean[row0 + r], rstd[row0 + r]);
                xhat.iter_mut()
                    .zip(xr)
                    .for_each(|(h, &v)| *h = (v - mu) * rs);
                match weight {
                    Some(w) => g
                        .iter_mut()
                        .zip(dyr)
                        .zip(w)
                        .for_each(|((gv, &a), &b)| *gv = a * b),
                    None => g.copy_from_slice(dyr),
                }
                let mg = lane_sum(&g, &g, |a, _| a) / d as f32;
                let mgx = lane_sum(&g, &xhat, |a, b| a * b) / d as f32;
                for ((o, &gv), &h) in dxr.iter_mut().zip(&g).zip(&xhat) {
                    *o = rs * (gv - mg - h * mgx);
                }
                if want_params {
                    let (pw, pb) = part.split_at_mut(d);
                    for (((pw, pb), &a), &h) in pw.iter_mut().zip(pb).zip(dyr).zip(&xhat) {
                        *pw += a * h;
                        *pb += a;
                    }
                }
            }
            part
        },
    );
    if let Some(dw) = dweight {
        sum_partials(&partials, 0, &mut dw[..d]);
    }
    if let Some(db) = dbias {
        sum_partials(&partials, d, &mut db[..d]);
    }
}

/// `y = x * rstd * weight`, `rstd = 1/sqrt(mean(x^2) + eps)`.
pub fn rmsnorm_forward(
    x: &[f32],
    d: usize,
    weight: &[f32],
    eps: f32,
    y: &mut [f32],
    rstd: &mut [f32],
) {
    assert!(
        d > 0 && x.len() % d == 0,
        "rmsnorm: length not a multiple of d"
    );
    let rows = x.len() / d;
    let w = &weight[..d];
    for_row_blocks(
        x,
        &mut y[..rows * d],
        d,
        &mut rstd[..rows],
        1,
        |x, y, rstd| {
            for ((xr, yr), rs) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)).zip(rstd) {
                let ms = lane_sum(xr, xr, |a, _| a * a) / d as f32;
                let r = 1.0 / (ms + eps).sqrt();
                *rs = r;
                // WanRMSNorm rounds x * rstd before applying the weight; keep that order.
                for ((yv, &xv), &wv) in yr.iter_mut().zip(xr).zip(w) {
                    *yv = (xv * r) * wv;
                }
            }
        },
    );
}

/// Overwrites dx; accumulates dweight.
///
/// With `g = dy * weight`: `dx = rstd (g - x rstd^2 mean(g x))`, `dweight += sum_rows dy x rstd`.
pub fn rmsnorm_backward(
    dy: &[f32],
    x: &[f32],
    d: usize,
    weight: &[f32],
    rstd: &[f32],
    dx: &mut [f32],
    dweight: &mut [f32],
) {
    assert!(
        d > 0 && x.len() % d == 0,
        "rmsnorm: length not a multiple of d"
    );
    let rows = x.len() / d;
    let w = &weight[..d];
    let partials = backward_row_blocks(
        &dy[..rows * d],
        x,
        &mut dx[..rows * d],
        d,
        |row0, dy, x, dx| {
            let mut pw = vec![0.0f32; d];
            let mut g = vec![0.0f32; d];
            let rows = dy
                .chunks_exact(d)
                .zip(x.chunks_exact(d))
                .zip(dx.chunks_exact_mut(d));
            for (r, ((dyr, xr), dxr)) in rows.enumerate() {
                let rs = rstd[row0 + r];
                g.iter_mut()
                    .zip(dyr)
                    .zip(w)
                    .for_each(|((gv, &a), &b)| *gv = a * b);
                let k = rs * rs * (lane_sum(&g, xr, |a, b| a * b) / d as f32);
                for ((o, &gv), &xv) in dxr.iter_mut().zip(&g).zip(xr) {
                    *o = rs * (gv - xv * k);
                }
                for ((p, &a), &xv) in pw.iter_mut().zip(dyr).zip(xr) {
                    *p += a * (xv * rs);
                }
            }
            pw
        },
    );
    sum_partials(&partials, 0, &mut dweight[..d]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_grad_close, max_rel_err, numeric_grad, TestRng};

    fn dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
    }

    /// Textbook f64 LayerNorm.
    fn layernorm_ref(
        x: &[f32],
        d: usize,
        w: Option<&[f32]>,
        b: Option<&[f32]>,
        eps: f64,
    ) -> Vec<f32> {
        let mut out = Vec::with_capacity(x.len());
        for row in x.chunks(d) {
            let mu = row.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
            let var = row.iter().map(|&v| (v as f64 - mu).powi(2)).sum::<f64>() / d as f64;
            for (i, &v) in row.iter().enumerate() {
                let mut y = (v as f64 - mu) / (var + eps).sqrt();
                if let Some(w) = w {
                    y *= w[i] as f64;
                }
                if let Some(b) = b {
                    y += b[i] as f64;
                }
                out.push(y as f32);
            }
        }
        out
    }

    #[test]
    fn layernorm_forward_matches_f64_reference() {
        let (rows, d) = (5, 24);
        let mut rng = TestRng::new(1);
        // A large common offset: a one-pass E[x^2] - E[x]^2 would lose most digits here.
        let x: Vec<f32> = rng.vec(rows * d).iter().map(|v| 100.0 + v).collect();
        let w = rng.vec(d);
        let b = rng.vec(d);
        let (mut y, mut mean, mut rstd) = (vec![0.0; rows * d], vec![0.0; rows], vec![0.0; rows]);
        let both = NormAffine {
            weight: Some(w.as_slice()),
            bias: Some(b.as_slice()),
        };
        let stats = LayerNormStats {
            mean: mean.as_mut_slice(),
            rstd: rstd.as_mut_slice(),
        };
        layernorm_forward(&x, d, both, 1e-6, &mut y, stats);
        let want = layernorm_ref(&x, d, Some(&w), Some(&b), 1e-6);
        assert!(max_rel_err(&y, &want) < 1e-4, "{}", max_rel_err(&y, &want));
        let stats = LayerNormStats {
            mean: mean.as_mut_slice(),
            rstd: rstd.as_mut_slice(),
        };
        layernorm_forward(&x, d, NormAffine::none(), 1e-6, &mut y, stats);
        let want = layernorm_ref(&x, d, None, None, 1e-6);
        assert!(max_rel_err(&y, &want) < 1e-4, "{}", max_rel_err(&y, &want));
        let mu0 = x[..d].iter().map(|&v| v as f64).sum::<f64>() / d as f64;
        assert!((mean[0] as f64 - mu0).abs() < 1e-5);
    }

    #[test]
    fn layernorm_backward_matches_fd() {
        let (rows, d) = (3, 16);
        let mut rng = TestRng::new(2);
        let x = rng.vec(rows * d);
        let w = rng.vec(d);
        let b = rng.vec(d);
        let c = rng.vec(rows * d);
        for affine in [false, true] {
            let (wo, bo) = if affine {
                (Some(w.as_slice()), Some(b.as_slice()))
            } else {
                (None, None)
            };
            let fwd = |x: &[f32], w: Option<&[f32]>, b: Option<&[f32]>| {
                let (mut y, mut m, mut r) = (vec![0.0; rows * d], vec![0.0; rows], vec![0.0; rows]);
                let stats = LayerNormStats {
                    mean: m.as_mut_slice(),
                    rstd: r.as_mut_slice(),
                };
                let affine = NormAffine { weight: w, bias: b };
                layernorm_forward(x, d, affine, 1e-5, &mut y, stats);
                (y, m, r)
            };
            let (_, m, r) = fwd(&x, wo, bo);
            let mut dx = vec![f32::NAN; rows * d];
            let mut dw = vec![0.5; d];
            let mut db = vec![0.5; d];
            let stats = LayerNormStats {
                mean: m.as_slice(),
                rstd: r.as_slice(),
            };
            let grads = LayerNormGrads {
                dx: dx.as_mut_slice(),
                dweight: affine.then_some(dw.as_mut_slice()),
                dbias: affine.then_some(db.as_mut_slice()),
            };
            layernorm_backward(&c, &x, d, wo, stats, grads);
            let nx = numeric_grad(&x, 1e-2, |xp| dot(&fwd(xp, wo, bo).0, &c));
            assert_grad_close("layernorm dx", &dx, &nx, 1e-2);
            if affine {
                let nw: Vec<f32> = numeric_grad(&w, 1e-2, |wp| dot(&fwd(&x, Some(wp), bo).0, &c))
                    .iter()
                    .map(|g| g + 0.5)
                    .collect();
                let nb: Vec<f32> = numeric_grad(&b, 1e-2, |bp| dot(&fwd(&x, wo, Some(bp)).0, &c))
                    .iter()
                    .map(|g| g + 0.5)
                    .collect();
                assert_grad_close("layernorm dweight", &dw, &nw, 1e-2);
                assert_grad_close("layernorm dbias", &db, &nb, 1e-2);
            }
        }
    }

    #[test]
    fn rmsnorm_forward_matches_f64_reference() {
        let (rows, d) = (4, 20);
        let mut rng = TestRng::new(3);
        let x = rng.vec(rows * d);
        let w = rng.vec(d);
        let (mut y, mut rstd) = (vec![0.0; rows * d], vec![0.0; rows]);
        rmsnorm_forward(&x, d, &w, 1e-6, &mut y, &mut rstd);
        let mut want = Vec::new();
        for row in x.chunks(d) {
            let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / d as f64;
            let r = 1.0 / (ms + 1e-6).sqrt();
            want.extend(
                row.iter()
                    .zip(&w)
                    .map(|(&v, &wi)| (v as f64 * r * wi as f64) as f32),
            );
        }
        assert!(max_rel_err(&y, &want) < 1e-5);
    }

    #[test]
    fn rmsnorm_backward_matches_fd() {
        let (rows, d) = (3, 16);
        let mut rng = TestRng::new(4);
        let x = rng.vec(rows * d);
        let w = rng.vec(d);
        let c = rng.vec(rows * d);
        let fwd = |x: &[f32], w: &[f32]| {
            let (mut y, mut r) = (vec![0.0; rows * d], vec![0.0; rows]);
            rmsnorm_forward(x, d, w, 1e-6, &mut y, &mut r);
            (y, r)
        };
        let (_, r) = fwd(&x, &w);
        let mut dx = vec![f32::NAN; rows * d];
        let mut dw = vec![0.5; d];
        rmsnorm_backward(&c, &x, d, &w, &r, &mut dx, &mut dw);
        let nx = numeric_grad(&x, 1e-2, |xp| dot(&fwd(xp, &w).0, &c));
        let nw: Vec<f32> = numeric_grad(&w, 1e-2, |wp| dot(&fwd(&x, wp).0, &c))
            .iter()
            .map(|g| g + 0.5)
            .collect();
        assert_grad_close("rmsnorm dx", &dx, &nx, 1e-2);
        assert_grad_close("rmsnorm dweight", &dw, &nw, 1e-2);
    }

    /// Many rows (several rayon blocks) must give exactly the per-row results and the same
    /// parameter gradients as one serial block.
    #[test]
    fn blocked_paths_match_serial() {
        let d = 8;
        let rows = 3 * rows_per_block(d) + 5;
        let mut rng = TestRng::new(5);
        let x = rng.vec(rows * d);
        let dy = rng.vec(rows * d);
        let w = rng.vec(d);
        let (mut y, mut m, mut r) = (vec![0.0; rows * d], vec![0.0; rows], vec![0.0; rows]);
        let weight_only = NormAffine {
            weight: Some(w.as_slice()),
            bias: None,
        };
        let stats = LayerNormStats {
            mean: m.as_mut_slice(),
            rstd: r.as_mut_slice(),
        };
        layernorm_forward(&x, d, weight_only, 1e-6, &mut y, stats);
        let mut dx = vec![0.0; rows * d];
        let mut dw = vec![0.0; d];
        let stats = LayerNormStats {
            mean: m.as_slice(),
            rstd: r.as_slice(),
        };
        let grads = LayerNormGrads {
            dx: dx.as_mut_slice(),
            dweight: Some(dw.as_mut_slice()),
            dbias: None,
        };
        layernorm_backward(&dy, &x, d, Some(&w), stats, grads);
        let mut dw_serial = vec![0.0f64; d];
        for row in [0, rows_per_block(d), rows - 1] {
            let sl = row * d..(row + 1) * d;
            let (mut y1, mut m1, mut r1) = (vec![0.0; d], [0.0], [0.0]);
            let stats = LayerNormStats {
                mean: m1.as_mut_slice(),
                rstd: r1.as_mut_slice(),
            };
            layernorm_forward(&x[sl.clone()], d, weight_only, 1e-6, &mut y1, stats);
            assert_eq!(&y[sl.clone()], y1.as_slice());
            let mut dx1 = vec![0.0; d];
            let stats = LayerNormStats {
                mean: m1.as_slice(),
                rstd: r1.as_slice(),
            };
            let grads = LayerNormGrads {
                dx: dx1.as_mut_slice(),
                dweight: None,
                dbias: None,
            };
            layernorm_backward(&dy[sl.clone()], &x[sl.clone()], d, Some(&w), stats, grads);
            assert_eq!(&dx[sl], dx1.as_slice());
        }
        for row in 0..rows {
            for i in 0..d {
                let xh = (x[row * d + i] - m[row]) * r[row];
                dw_serial[i] += (dy[row * d + i] * xh) as f64;
            }
        }
        let dw_serial: Vec<f32> = dw_serial.iter().map(|&v| v as f32).collect();
        assert!(max_rel_err(&dw, &dw_serial) < 1e-4);

        let mut yr = vec![0.0; rows * d];
        rmsnorm_forward(&x, d, &w, 1e-6, &mut yr, &mut r);
        let (mut y1, mut r1) = (vec![0.0; d], [0.0]);
        let last = (rows - 1) * d..rows * d;
        rmsnorm_forward(&x[last.clone()], d, &w, 1e-6, &mut y1, &mut r1);
        assert_eq!(&yr[last], y1.as_slice());
        let mut dxr = vec![0.0; rows * d];
        let mut dwr = vec![0.0; d];
        rmsnorm_backward(&dy, &x, d, &w, &r, &mut dxr, &mut dwr);
        assert!(dxr.iter().chain(&dwr).all(|v| v.is_finite()));
    }
}
