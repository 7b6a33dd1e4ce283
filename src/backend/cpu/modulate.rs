//! Adaptive modulation (`x * (1 + scale) + shift`) and gated residuals (`x += y * gate`), with
//! per-sample vectors read from the modulation table at a [`ModSlot`].
//!
//! Activations are `[batch, rows, d]`. Each sample's rows are split into fixed-size blocks over
//! the rayon pool; the per-sample gradient sums over rows are reduced per block and then added in
//! block order, so results do not depend on the thread count.

use rayon::prelude::*;

use crate::backend::{GatedAddGrads, ModShape, ModSlot, ModulateGrads, ShiftScale};

/// Elements per rayon task (rounded to whole rows).
const BLOCK_ELEMS: usize = 1 << 16;

fn block_len(d: usize) -> usize {
    (BLOCK_ELEMS / d.max(1)).max(1) * d
}

/// The `d`-wide vector of sample `b` at `slot`.
#[inline]
fn slot(mods: &[f32], s: ModSlot, b: usize, d: usize) -> &[f32] {
    let start = b * s.stride + s.offset;
    &mods[start..start + d]
}

#[inline]
fn slot_mut(mods: &mut [f32], s: ModSlot, b: usize, d: usize) -> &mut [f32] {
    let start = b * s.stride + s.offset;
    &mut mods[start..start + d]
}

/// Splits one sample's `[rows, d]` slabs into row blocks, runs `f` on each (in parallel when
/// there are several) and returns the per-block results in order.
fn blocks<T: Send>(
    out: &mut [f32],
    a: &[f32],
    b: &[f32],
    d: usize,
    f: impl Fn(&mut [f32], &[f32], &[f32]) -> T + Sync,
) -> Vec<T> {
    let bl = block_len(d);
    if out.len() <= bl {
        vec![f(out, a, b)]
    } else {
        out.par_chunks_mut(bl)
            .zip(a.par_chunks(bl))
            .zip(b.par_chunks(bl))
            .map(|((o, a), b)| f(o, a, b))
            .collect()
    }
}

fn add_to(acc: &mut [f32], v: &[f32]) {
    acc.iter_mut().zip(v).for_each(|(a, &x)| *a += x);
}

/// `acc += p` for each partial in order.
fn add_partials(partials: &[Vec<f32>], acc: &mut [f32]) {
    for p in partials {
        add_to(acc, p);
    }
}

/// `y[b, l, :] = x[b, l, :] * (1 + scale_b) + shift_b`.
pub fn modulate_forward(
    x: &[f32],
    shape: ModShape,
    mods: &[f32],
    slots: ShiftScale,
    y: &mut [f32],
) {
    let ModShape { batch, d, .. } = shape;
    let ShiftScale { shift, scale } = slots;
    let n = shape.per_sample();
    for b in 0..batch {
        let (sh, sc) = (slot(mods, shift, b, d), slot(mods, scale, b, d));
        // `1 + scale` is rounded once, as torch forms it before the multiply.
        let one_sc: Vec<f32> = sc.iter().map(|&s| 1.0 + s).collect();
        let xs = &x[b * n..(b + 1) * n];
        blocks(&mut y[b * n..(b + 1) * n], xs, xs, d, |y, x, _| {
            for (yr, xr) in y.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                for (((yv, &xv), &s), &h) in yr.iter_mut().zip(xr).zip(&one_sc).zip(sh) {
                    *yv = xv * s + h;
                }
            }
        });
    }
}

/// Overwrites `dx = dy * (1 + scale)`; accumulates `dshift += sum_l dy` and
/// `dscale += sum_l dy * x` into `dmods` at the shift and scale slots.
pub fn modulate_backward(
    dy: &[f32],
    x: &[f32],
    shape: ModShape,
    mods: &[f32],
    slots: ShiftScale,
    grads: ModulateGrads<&mut [f32]>,
) {
    let ModShape { batch, d, .. } = shape;
    let ShiftScale { shift, scale } = slots;
    let ModulateGrads { dx, dmods } = grads;
    let n = shape.per_sample();
    for b in 0..batch {
        let one_sc: Vec<f32> = slot(mods, scale, b, d).iter().map(|&s| 1.0 + s).collect();
        let (dys, xs) = (&dy[b * n..(b + 1) * n], &x[b * n..(b + 1) * n]);
        // Each block returns its partial [dshift | dscale].
        let partials = blocks(&mut dx[b * n..(b + 1) * n], dys, xs, d, |dx, dy, x| {
            let mut part = vec![0.0f32; 2 * d];
            let (psh, psc) = part.split_at_mut(d);
            for ((dxr, dyr), xr) in dx
                .chunks_exact_mut(d)
                .zip(dy.chunks_exact(d))
                .zip(x.chunks_exact(d))
            {
                for ((o, &g), &s) in dxr.iter_mut().zip(dyr).zip(&one_sc) {
                    *o = g * s;
                }
                for (((ph, pc), &g), &xv) in psh.iter_mut().zip(psc.iter_mut()).zip(dyr).zip(xr) {
                    *ph += g;
                    *pc += g * xv;
                }
            }
            part
        });
        let mut sums = vec![0.0f32; 2 * d];
        add_partials(&partials, &mut sums);
        let (dsh, dsc) = sums.split_at(d);
        add_to(slot_mut(dmods, shift, b, d), dsh);
        add_to(slot_mut(dmods, scale, b, d), dsc);
    }
}

/// `x[b, l, :] += y[b, l, :] * gate_b` (the gated residual).
pub fn gated_add_forward(x: &mut [f32], y: &[f32], shape: ModShape, mods: &[f32], gate: ModSlot) {
    let ModShape { batch, d, .. } = shape;
    let n = shape.per_sample();
    for b in 0..batch {
        let g = slot(mods, gate, b, d);
        let ys = &y[b * n..(b + 1) * n];
        blocks(&mut x[b * n..(b + 1) * n], ys, ys, d, |x, y, _| {
            for (xr, yr) in x.chunks_exact_mut(d).zip(y.chunks_exact(d)) {
                for ((xv, &yv), &gv) in xr.iter_mut().zip(yr).zip(g) {
                    *xv += yv * gv;
                }
            }
        });
    }
}

/// Given `dx` (gradient of the residual stream), overwrites `dy = dx * gate` and accumulates
/// `dgate += sum_l dx * y` into `dmods` at the gate slot.
pub fn gated_add_backward(
    dx: &[f32],
    y: &[f32],
    shape: ModShape,
    mods: &[f32],
    gate: ModSlot,
    grads: GatedAddGrads<&mut [f32]>,
) {
    let ModShape { batch, d, .. } = shape;
    let GatedAddGrads { dy, dmods } = grads;
    let n = shape.per_sample();
    for b in 0..batch {
        let g = slot(mods, gate, b, d);
        let (dxs, ys) = (&dx[b * n..(b + 1) * n], &y[b * n..(b + 1) * n]);
        let partials = blocks(&mut dy[b * n..(b + 1) * n], dxs, ys, d, |dy, dx, y| {
            let mut part = vec![0.0f32; d];
            for ((dyr, dxr), yr) in dy
                .chunks_exact_mut(d)
                .zip(dx.chunks_exact(d))
                .zip(y.chunks_exact(d))
            {
                for ((o, &a), &gv) in dyr.iter_mut().zip(dxr).zip(g) {
                    *o = a * gv;
                }
                for ((p, &a), &yv) in part.iter_mut().zip(dxr).zip(yr) {
                    *p += a * yv;
                }
            }
            part
        });
        add_partials(&partials, slot_mut(dmods, gate, b, d));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_grad_close, numeric_grad, TestRng};

    fn dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
    }

    // A [batch, 6, d] table like Wan's e0: slots (shift, scale, gate) = columns 0, 1, 2 of 6.
    const B: usize = 2;
    const ROWS: usize = 3;
    const D: usize = 5;
    const STRIDE: usize = 6 * D;
    const SHIFT: ModSlot = ModSlot {
        stride: STRIDE,
        offset: 0,
    };
    const SCALE: ModSlot = ModSlot {
        stride: STRIDE,
        offset: D,
    };
    const GATE: ModSlot = ModSlot {
        stride: STRIDE,
        offset: 2 * D,
    };
    const SHAPE: ModShape = ModShape {
        batch: B,
        rows: ROWS,
        d: D,
    };
    const SHIFT_SCALE: ShiftScale = ShiftScale {
        shift: SHIFT,
        scale: SCALE,
    };

    #[test]
    fn modulate_forward_matches_formula() {
        let mut rng = TestRng::new(1);
        let x = rng.vec(B * ROWS * D);
        let mods = rng.vec(B * STRIDE);
        let mut y = vec![0.0; B * ROWS * D];
        modulate_forward(&x, SHAPE, &mods, SHIFT_SCALE, &mut y);
        for b in 0..B {
            for l in 0..ROWS {
                for j in 0..D {
                    let i = (b * ROWS + l) * D + j;
                    let want = x[i] * (1.0 + mods[b * STRIDE + D + j]) + mods[b * STRIDE + j];
                    assert_eq!(y[i], want);
                }
            }
        }
    }

    #[test]
    fn modulate_backward_matches_fd() {
        let mut rng = TestRng::new(2);
        let x = rng.vec(B * ROWS * D);
        let mods = rng.vec(B * STRIDE);
        let c = rng.vec(B * ROWS * D);
        let f = |x: &[f32], m: &[f32]| {
            let mut y = vec![0.0; B * ROWS * D];
            modulate_forward(x, SHAPE, m, SHIFT_SCALE, &mut y);
            dot(&y, &c)
        };
        let mut dx = vec![f32::NAN; x.len()];
        // dmods accumulates: start from ones, expect ones + gradient (and ones outside the slots).
        let mut dm = vec![1.0; mods.len()];
        let grads = ModulateGrads {
            dx: dx.as_mut_slice(),
            dmods: dm.as_mut_slice(),
        };
        modulate_backward(&c, &x, SHAPE, &mods, SHIFT_SCALE, grads);
        let nx = numeric_grad(&x, 1e-2, |xp| f(xp, &mods));
        let nm: Vec<f32> = numeric_grad(&mods, 1e-2, |mp| f(&x, mp))
            .iter()
            .map(|g| g + 1.0)
            .collect();
        assert_grad_close("modulate dx", &dx, &nx, 1e-2);
        assert_grad_close("modulate dmods", &dm, &nm, 1e-2);
    }

    #[test]
    fn gated_add_forward_and_backward() {
        let mut rng = TestRng::new(3);
        let x0 = rng.vec(B * ROWS * D);
        let y = rng.vec(B * ROWS * D);
        let mods = rng.vec(B * STRIDE);
        let c = rng.vec(B * ROWS * D);
        let f = |y: &[f32], m: &[f32]| {
            let mut x = x0.clone();
            gated_add_forward(&mut x, y, SHAPE, m, GATE);
            x
        };
        let out = f(&y, &mods);
        let i = (ROWS + 1) * D + 3; // sample 1, row 1, column 3
        assert_eq!(out[i], x0[i] + y[i] * mods[STRIDE + 2 * D + 3]);

        let mut dy = vec![f32::NAN; y.len()];
        let mut dm = vec![1.0; mods.len()];
        let grads = GatedAddGrads {
            dy: dy.as_mut_slice(),
            dmods: dm.as_mut_slice(),
        };
        gated_add_backward(&c, &y, SHAPE, &mods, GATE, grads);
        let ny = numeric_grad(&y, 1e-2, |yp| dot(&f(yp, &mods), &c));
        let nm: Vec<f32> = numeric_grad(&mods, 1e-2, |mp| dot(&f(&y, mp), &c))
            .iter()
            .map(|g| g + 1.0)
            .collect();
        assert_grad_close("gated_add dy", &dy, &ny, 1e-2);
        assert_grad_close("gated_add dmods", &dm, &nm, 1e-2);
    }

    /// Enough rows for several rayon blocks per sample: the reductions must still see every row.
    #[test]
    fn blocked_reductions_cover_all_rows() {
        let d = 4;
        let rows = 3 * block_len(d) / d + 7;
        let s = ModSlot {
            stride: 3 * d,
            offset: 0,
        };
        let sc = ModSlot {
            stride: 3 * d,
            offset: d,
        };
        let g = ModSlot {
            stride: 3 * d,
            offset: 2 * d,
        };
        let mods = vec![0.5f32; 3 * d];
        let ones = vec![1.0f32; rows * d];
        let mut dx = vec![0.0; rows * d];
        let mut dm = vec![0.0; 3 * d];
        let shape = ModShape { batch: 1, rows, d };
        let slots = ShiftScale {
            shift: s,
            scale: sc,
        };
        let grads = ModulateGrads {
            dx: dx.as_mut_slice(),
            dmods: dm.as_mut_slice(),
        };
        modulate_backward(&ones, &ones, shape, &mods, slots, grads);
        assert!(dx.iter().all(|&v| v == 1.5));
        assert!(dm[..2 * d].iter().all(|&v| v == rows as f32));
        let mut dy = vec![0.0; rows * d];
        let grads = GatedAddGrads {
            dy: dy.as_mut_slice(),
            dmods: dm.as_mut_slice(),
        };
        gated_add_backward(&ones, &ones, shape, &mods, g, grads);
        assert!(dy.iter().all(|&v| v == 0.5));
        assert!(dm[2 * d..].iter().all(|&v| v == rows as f32));
    }
}
