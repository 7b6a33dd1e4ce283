//! Dense linear layers on the CPU through the `gemm` crate (`y = x W^T + b` and its two
//! backward products). Weights stored in bf16/f16 are widened to f32 once per call.

use std::borrow::Cow;

use gemm::{gemm, Parallelism};

use super::CpuWeight;
use crate::backend::LinearShape;
use crate::tensor::Storage;

fn parallelism() -> Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// The weight as f32, borrowed when it is already f32.
fn weight_f32(w: &CpuWeight) -> Cow<'_, [f32]> {
    match &w.data {
        Storage::F32(v) => Cow::Borrowed(v.as_slice()),
        other => Cow::Owned(other.to_f32()),
    }
}

/// A read-only matrix operand given by its strides: element `(i, j)` is
/// `data[i * row_stride + j * col_stride]`, so that a transpose is a swap of the strides.
#[derive(Clone, Copy, Debug)]
pub struct Strided<'a> {
    pub data: &'a [f32],
    pub row_stride: isize,
    pub col_stride: isize,
}

impl<'a> Strided<'a> {
    /// A dense row-major matrix with `cols` columns.
    pub fn rows(data: &'a [f32], cols: usize) -> Self {
        Strided {
            data,
            row_stride: cols as isize,
            col_stride: 1,
        }
    }
    /// The transpose of a dense row-major matrix with `cols` columns.
    pub fn transposed(data: &'a [f32], cols: usize) -> Self {
        Strided {
            data,
            row_stride: 1,
            col_stride: cols as isize,
        }
    }
}

/// Row-major `c[m, n] = beta_keep * c + a[m, k] b[k, n]`, with each operand given by its strides so
/// that transposes cost nothing. `accumulate` keeps the old contents of `c`.
pub fn gemm_strided(
    m: usize,
    n: usize,
    k: usize,
    a: Strided<'_>,
    b: Strided<'_>,
    c: &mut [f32],
    accumulate: bool,
) {
    let Strided {
        data: a,
        row_stride: a_rs,
        col_stride: a_cs,
    } = a;
    let Strided {
        data: b,
        row_stride: b_rs,
        col_stride: b_cs,
    } = b;
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].iter_mut().for_each(|x| *x = 0.0);
        }
        return;
    }
    // Every index touched below is inside the slices: the callers pass shapes that the asserts
    // check, and the strides describe dense row-major or transposed-dense matrices.
    let max_a = (m - 1) as isize * a_rs + (k - 1) as isize * a_cs;
    let max_b = (k - 1) as isize * b_rs + (n - 1) as isize * b_cs;
    assert!(
        max_a >= 0 && (max_a as usize) < a.len(),
        "gemm: lhs too short"
    );
    assert!(
        max_b >= 0 && (max_b as usize) < b.len(),
        "gemm: rhs too short"
    );
    assert!(c.len() >= m * n, "gemm: dst too short");
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
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism(),
        );
    }
}

/// `y[n, out] = x[n, in] W^T + b`.
pub fn linear_forward(x: &[f32], n: usize, w: &CpuWeight, b: Option<&[f32]>, y: &mut [f32]) {
    let (out, inp) = (w.rows, w.cols);
    assert!(x.len() >= n * inp && y.len() >= n * out);
    let wf = weight_f32(w);
    // b[k = in, n = out] = W^T: element (i, o) at o * in + i.
    gemm_strided(
        n,
        out,
        inp,
        Strided::rows(x, inp),
        Strided::transposed(&wf, inp),
        y,
        false,
    );
    if let Some(b) = b {
        use rayon::prelude::*;
        y[..n * out]
            .par_chunks_mut(out)
            .for_each(|row| row.iter_mut().zip(b).for_each(|(v, bi)| *v += bi));
    }
}

/// `dx[n, in] = dy[n, out] W` (overwrites `dx`).
pub fn linear_backward_input(dy: &[f32], n: usize, w: &CpuWeight, dx: &mut [f32]) {
    let (out, inp) = (w.rows, w.cols);
    let wf = weight_f32(w);
    gemm_strided(
        n,
        inp,
        out,
        Strided::rows(dy, out),
        Strided::rows(&wf, inp),
        dx,
        false,
    );
}

/// `dw[out, in] += dy^T x`, `db[out] += sum_rows dy`.
pub fn linear_backward_weight(
    dy: &[f32],
    x: &[f32],
    shape: LinearShape,
    dw: &mut [f32],
    db: Option<&mut [f32]>,
) {
    let LinearShape { n, n_in, n_out } = shape;
    // a = dy^T [out, n]: element (o, r) at r * out + o.
    gemm_strided(
        n_out,
        n_in,
        n,
        Strided::transposed(dy, n_out),
        Strided::rows(x, n_in),
        dw,
        true,
    );
    if let Some(db) = db {
        for row in dy[..n * n_out].chunks(n_out) {
            db.iter_mut().zip(row).for_each(|(d, g)| *d += g);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f32], n: usize, w: &[f32], out: usize, inp: usize) -> Vec<f32> {
        let mut y = vec![0.0; n * out];
        for r in 0..n {
            for o in 0..out {
                y[r * out + o] = (0..inp).map(|i| x[r * inp + i] * w[o * inp + i]).sum();
            }
        }
        y
    }

    fn rand(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn linear_matches_naive_products() {
        let (n, inp, out) = (7, 5, 3);
        let x = rand(n * inp, 1);
        let wv = rand(out * inp, 2);
        let b = rand(out, 3);
        let w = CpuWeight {
            data: Storage::F32(wv.clone()),
            rows: out,
            cols: inp,
        };
        let mut y = vec![0.0; n * out];
        linear_forward(&x, n, &w, Some(&b), &mut y);
        let yn = naive(&x, n, &wv, out, inp);
        for r in 0..n {
            for o in 0..out {
                assert!((y[r * out + o] - yn[r * out + o] - b[o]).abs() < 1e-5);
            }
        }
        // dx = dy W ; dW = dy^T x
        let dy = rand(n * out, 4);
        let mut dx = vec![9.0; n * inp];
        linear_backward_input(&dy, n, &w, &mut dx);
        for r in 0..n {
            for i in 0..inp {
                let e: f32 = (0..out).map(|o| dy[r * out + o] * wv[o * inp + i]).sum();
                assert!((dx[r * inp + i] - e).abs() < 1e-5);
            }
        }
        let mut dw = vec![1.0; out * inp];
        let mut db = vec![1.0; out];
        let shape = LinearShape {
            n,
            n_in: inp,
            n_out: out,
        };
        linear_backward_weight(&dy, &x, shape, &mut dw, Some(&mut db));
        for o in 0..out {
            for i in 0..inp {
                let e: f32 = 1.0
                    + (0..n)
                        .map(|r| dy[r * out + o] * x[r * inp + i])
                        .sum::<f32>();
                assert!((dw[o * inp + i] - e).abs() < 1e-5);
            }
            let e: f32 = 1.0 + (0..n).map(|r| dy[r * out + o]).sum::<f32>();
            assert!((db[o] - e).abs() < 1e-5);
        }
        // bf16 storage gives the product of the rounded weights.
        let wb = CpuWeight {
            data: Storage::from_f32(&wv, crate::tensor::DType::BF16),
            rows: out,
            cols: inp,
        };
        let mut yb = vec![0.0; n * out];
        linear_forward(&x, n, &wb, None, &mut yb);
        let yr = naive(&x, n, &wb.data.to_f32(), out, inp);
        for (a, b) in yb.iter().zip(&yr) {
            assert!((a - b).abs() < 1e-5);
        }
    }
}
