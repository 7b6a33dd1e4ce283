//! Elementwise kernels: axpy, scale, the modulation-table broadcast add, SiLU and the two GELUs.
//!
//! Every kernel takes its length from `x` (the input) and touches only the first `x.len()`
//! elements of the outputs, so callers may pass larger scratch buffers. Large inputs are split
//! into fixed-size chunks over the rayon pool; since each element is independent the result does
//! not depend on the thread count.

use rayon::prelude::*;

use crate::backend::BroadcastShape;

/// Elements per rayon task: large enough to amortise scheduling, small enough to balance a
/// `32760 x 8960` FFN activation over many cores.
const CHUNK: usize = 1 << 14;

/// `y[i] = f(x[i])` for `i < x.len()`.
fn map_unary(x: &[f32], y: &mut [f32], f: impl Fn(f32) -> f32 + Sync) {
    let n = x.len();
    let y = &mut y[..n];
    let serial = |x: &[f32], y: &mut [f32]| {
        for (yi, &xi) in y.iter_mut().zip(x) {
            *yi = f(xi);
        }
    };
    if n <= CHUNK {
        serial(x, y);
    } else {
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(y, x)| serial(x, y));
    }
}

/// `out[i] = f(x[i], d[i])` for `i < x.len()` (the shape of every backward here).
fn map_binary(x: &[f32], d: &[f32], out: &mut [f32], f: impl Fn(f32, f32) -> f32 + Sync) {
    let n = x.len();
    let (d, out) = (&d[..n], &mut out[..n]);
    let serial = |x: &[f32], d: &[f32], out: &mut [f32]| {
        for ((oi, &xi), &di) in out.iter_mut().zip(x).zip(d) {
            *oi = f(xi, di);
        }
    };
    if n <= CHUNK {
        serial(x, d, out);
    } else {
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .zip(d.par_chunks(CHUNK))
            .for_each(|((out, x), d)| serial(x, d, out));
    }
}

/// `y += alpha * x`.
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    // `y` is both input and output, so this cannot reuse `map_binary`'s borrow pattern.
    let n = x.len();
    let y = &mut y[..n];
    let serial = |x: &[f32], y: &mut [f32]| {
        for (yi, &xi) in y.iter_mut().zip(x) {
            *yi += alpha * xi;
        }
    };
    if n <= CHUNK {
        serial(x, y);
    } else {
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(y, x)| serial(x, y));
    }
}

/// `x *= alpha`.
pub fn scale(alpha: f32, x: &mut [f32]) {
    if x.len() <= CHUNK {
        x.iter_mut().for_each(|v| *v *= alpha);
    } else {
        x.par_chunks_mut(CHUNK)
            .for_each(|c| c.iter_mut().for_each(|v| *v *= alpha));
    }
}

/// `out[b, k*w + j] = x[b, j] + table[k*w + j]` for `x: [batch, w]`, `table: [k*w]`.
///
/// This is the modulation-table add (`head.modulation[2, D] + e`), a few thousand elements per
/// sample, so it stays serial.
pub fn broadcast_add(x: &[f32], table: &[f32], shape: BroadcastShape, out: &mut [f32]) {
    let BroadcastShape { batch, w, k } = shape;
    let row = k * w;
    let table = &table[..row];
    for (o, xb) in out[..batch * row]
        .chunks_exact_mut(row)
        .zip(x[..batch * w].chunks_exact(w))
    {
        for (ok, tk) in o.chunks_exact_mut(w).zip(table.chunks_exact(w)) {
            for ((oj, &xj), &tj) in ok.iter_mut().zip(xb).zip(tk) {
                *oj = xj + tj;
            }
        }
    }
}

/// `dx[b, j] += sum_k dout[b, k*w + j]`, `dtable += sum_b dout[b, :]` (both accumulate).
pub fn broadcast_add_backward(
    dout: &[f32],
    shape: BroadcastShape,
    dx: &mut [f32],
    dtable: &mut [f32],
) {
    let BroadcastShape { batch, w, k } = shape;
    let row = k * w;
    let dtable = &mut dtable[..row];
    for (db, dxb) in dout[..batch * row]
        .chunks_exact(row)
        .zip(dx[..batch * w].chunks_exact_mut(w))
    {
        for dk in db.chunks_exact(w) {
            for (a, &g) in dxb.iter_mut().zip(dk) {
                *a += g;
            }
        }
        for (a, &g) in dtable.iter_mut().zip(db) {
            *a += g;
        }
    }
}

/// `e^x` for `x` in about [-87, 88] (clamped outside), within 2 ulp of the exact value.
///
/// `f32::exp` is a libm call the compiler cannot vectorise, and SiLU/GELU over the FFN
/// activations (`32760 x 8960` per layer) spend most of their time in it. This is the Cephes
/// `expf` scheme written branch-free so the elementwise loops vectorise: `x = n ln2 + r` with
/// `n` rounded by the 1.5 * 2^23 trick (its low bits are then `n` itself), `e^r` by a degree-7
/// polynomial on |r| <= ln2/2, and `2^n` assembled in the exponent field.
#[inline]
fn exp_approx(x: f32) -> f32 {
    // 1.5 * 2^23: adding it rounds to an integer and leaves that integer in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    // The clamp keeps `n` in [-126, 127] so that 2^n is a normal float.
    let x = x.clamp(-87.0, 88.3);
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let ni = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    // ln 2 split in two so that `n * 0.693_359_4` is exact (Cody-Waite reduction).
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_2e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 0.166_666_65;
    let p = p * r + 0.5;
    let er = p * (r * r) + r + 1.0;
    er * f32::from_bits((ni.wrapping_add(127) as u32) << 23)
}

/// Logistic sigmoid. Below -88.3 the clamped exponential would leave a spurious denormal
/// instead of the (underflowed) true value, so that tail is selected explicitly (a select, not a
/// branch, so the loops still vectorise).
#[inline]
fn sigmoid(x: f32) -> f32 {
    let s = 1.0 / (1.0 + exp_approx(-x));
    if x < -88.3 {
        0.0
    } else {
        s
    }
}

/// `y = x * sigmoid(x)`.
pub fn silu_forward(x: &[f32], y: &mut [f32]) {
    map_unary(x, y, |x| x * sigmoid(x));
}

/// `dx = dy * s * (1 + x * (1 - s))` with `s = sigmoid(x)`. Overwrites `dx`.
pub fn silu_backward(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    map_binary(x, dy, dx, |x, g| {
        let s = sigmoid(x);
        g * (s * (1.0 + x * (1.0 - s)))
    });
}

/// sqrt(2 / pi).
const GELU_K: f32 = 0.797_884_6;
const GELU_C: f32 = 0.044_715;

/// `0.5 * (1 + tanh(u)) == sigmoid(2u)` exactly; the sigmoid form needs one `exp` instead of a
/// `tanh` and keeps full relative precision for large negative inputs, where `1 + tanh(u)` cancels.
/// Returns `(sigmoid(2u), du/dx)`.
#[inline]
fn gelu_tanh_parts(x: f32) -> (f32, f32) {
    let x2 = x * x;
    let u = GELU_K * (x + GELU_C * x2 * x);
    let du = GELU_K * (1.0 + 3.0 * GELU_C * x2);
    (sigmoid(2.0 * u), du)
}

/// `y = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))` (torch `approximate="tanh"`).
pub fn gelu_tanh_forward(x: &[f32], y: &mut [f32]) {
    map_unary(x, y, |x| x * gelu_tanh_parts(x).0);
}

/// With `s = 0.5 (1 + tanh u)`: `d/dx = s + x * 0.5 (1 - tanh^2 u) u' = s + 2 x s (1 - s) u'`.
/// Overwrites `dx`.
pub fn gelu_tanh_backward(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    map_binary(x, dy, dx, |x, g| {
        let (s, du) = gelu_tanh_parts(x);
        g * (s + 2.0 * x * s * (1.0 - s) * du)
    });
}

/// `erfc(z)` for `z >= 0` in f64 (relative error below 1e-15, 1e-13 just under `z = 2`).
///
/// Below 2 the everywhere-convergent series
/// `erf z = 2/sqrt(pi) exp(-z^2) sum_n 2^n z^(2n+1) / (1*3*...*(2n+1))` has only positive terms
/// (no cancellation) and `erfc = 1 - erf` loses at most two digits (erfc(2) = 4.7e-3). From 2 on,
/// the Laplace continued fraction `erfc z = exp(-z^2)/sqrt(pi) / (z + (1/2)/(z + 1/(z + (3/2)/(z
/// + ...))))` converges quickly and keeps the tail's relative precision, which the exact GELU of
/// negative inputs (`x * erfc(|x|/sqrt 2) / 2`) relies on.
fn erfc_nonneg(z: f64) -> f64 {
    const FRAC_2_SQRT_PI: f64 = std::f64::consts::FRAC_2_SQRT_PI;
    debug_assert!(z >= 0.0 || z.is_nan());
    if z < 2.0 {
        let z2 = z * z;
        let mut term = z;
        let mut sum = z;
        let mut n = 0.0f64;
        // Terms decay once 2n+1 > 2z^2 (< 8); at most ~31 terms reach 1e-17 of the sum.
        while term > 1e-17 * sum {
            n += 1.0;
            term *= 2.0 * z2 / (2.0 * n + 1.0);
            sum += term;
        }
        1.0 - FRAC_2_SQRT_PI * (-z2).exp() * sum
    } else if z >= 27.0 {
        // exp(-z^2) underflows f64 here; erfc is 0 to every precision we keep.
        0.0
    } else {
        // Backward evaluation of the continued fraction with a fixed depth: at z >= 2, 60 levels
        // converge to f64 precision. NaN lands here and propagates.
        let mut f = z;
        for k in (1..=60).rev() {
            f = z + (k as f64 * 0.5) / f;
        }
        (-z * z).exp() / (f * std::f64::consts::PI.sqrt())
    }
}

/// Standard normal CDF `Phi(x) = 0.5 erfc(-x / sqrt 2)` in f64, accurate in both tails.
fn normal_cdf(x: f64) -> f64 {
    let z = x * std::f64::consts::FRAC_1_SQRT_2;
    if z < 0.0 {
        0.5 * erfc_nonneg(-z)
    } else {
        1.0 - 0.5 * erfc_nonneg(z)
    }
}

/// `erf(x)` in f32, correctly rounded from an f64 evaluation except in rare ties. Exposed for the
/// tests and for code that needs an erf consistent with [`gelu_erf_forward`].
pub fn erf(x: f32) -> f32 {
    let z = x as f64;
    let r = if z < 0.0 {
        erfc_nonneg(-z) - 1.0
    } else {
        1.0 - erfc_nonneg(z)
    };
    r as f32
}

/// `y = x Phi(x) = 0.5 x (1 + erf(x / sqrt 2))` (torch's default, exact GELU), evaluated in f64.
/// Only the I2V image MLP uses it (257 tokens), so accuracy is preferred over speed here.
pub fn gelu_erf_forward(x: &[f32], y: &mut [f32]) {
    map_unary(x, y, |x| {
        let x = x as f64;
        (x * normal_cdf(x)) as f32
    });
}

/// `d/dx = Phi(x) + x phi(x)`, `phi(x) = exp(-x^2/2) / sqrt(2 pi)`. Overwrites `dx`.
pub fn gelu_erf_backward(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7;
    map_binary(x, dy, dx, |x, g| {
        let x = x as f64;
        let d = normal_cdf(x) + x * INV_SQRT_2PI * (-0.5 * x * x).exp();
        (g as f64 * d) as f32
    });
}

/// `y = max(x, 0)` (the reward model's MLP).
pub fn relu_forward(x: &[f32], y: &mut [f32]) {
    y[..x.len()]
        .iter_mut()
        .zip(x)
        .for_each(|(y, &x)| *y = x.max(0.0));
}

/// `dx = dy` where `x > 0`, else 0 (overwrites `dx`).
pub fn relu_backward(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    dx[..x.len()]
        .iter_mut()
        .zip(x.iter().zip(dy))
        .for_each(|(d, (&x, &g))| *d = if x > 0.0 { g } else { 0.0 });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_grad_close, max_rel_err, numeric_grad, TestRng};

    /// `sum(f(x) * c)` in f64: the scalar loss whose gradient is `backward(x, c)`.
    fn loss(f: fn(&[f32], &mut [f32]), x: &[f32], c: &[f32]) -> f64 {
        let mut y = vec![0.0; x.len()];
        f(x, &mut y);
        y.iter().zip(c).map(|(&a, &b)| a as f64 * b as f64).sum()
    }

    /// Checks `backward` against central differences of `forward` at inputs spread over [-4, 4].
    fn check_backward(
        name: &str,
        forward: fn(&[f32], &mut [f32]),
        backward: fn(&[f32], &[f32], &mut [f32]),
    ) {
        let mut rng = TestRng::new(7);
        let x: Vec<f32> = rng.vec(64).iter().map(|v| 4.0 * v).collect();
        let c = rng.vec(64);
        // Poison dx to prove it is overwritten, not accumulated.
        let mut dx = vec![f32::NAN; 64];
        backward(&x, &c, &mut dx);
        let num = numeric_grad(&x, 1e-2, |xp| loss(forward, xp, &c));
        assert_grad_close(name, &dx, &num, 1e-2);
    }

    #[test]
    fn silu_backward_matches_fd() {
        check_backward("silu", silu_forward, silu_backward);
    }

    #[test]
    fn gelu_tanh_backward_matches_fd() {
        check_backward("gelu_tanh", gelu_tanh_forward, gelu_tanh_backward);
    }

    #[test]
    fn gelu_erf_backward_matches_fd() {
        check_backward("gelu_erf", gelu_erf_forward, gelu_erf_backward);
    }

    #[test]
    fn exp_approx_within_two_ulp() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x <= 88.3 {
            let want = (x as f64).exp();
            let got = exp_approx(x) as f64;
            // One f32 ulp of `want` is at most want * 2^-23.
            worst = worst.max(((got - want) / want).abs() * (1u32 << 23) as f64);
            x += 1.0e-3;
        }
        assert!(worst <= 2.0, "exp_approx: {worst} ulp");
        assert_eq!(exp_approx(0.0), 1.0);
        assert!(exp_approx(-1000.0) > 0.0 && exp_approx(1000.0).is_finite());
    }

    #[test]
    fn erf_matches_reference_values() {
        // (x, erf x) from high-precision tables.
        let cases: [(f64, f64); 8] = [
            (0.0, 0.0),
            (1e-4, 1.128_379_163_334_248_5e-4),
            (0.5, 0.520_499_877_813_046_5),
            (1.0, 0.842_700_792_949_714_9),
            (1.999, 0.995_301_556_651_370_5),
            (2.0, 0.995_322_265_018_952_7),
            (3.0, 0.999_977_909_503_001_4),
            (-1.5, -0.966_105_146_475_310_7),
        ];
        for (x, want) in cases {
            let got = erf(x as f32) as f64;
            // The f32 argument differs from x by up to half an ulp; erf' <= 1.13 bounds its effect.
            let tol = 1.2e-7 * want.abs().max(1e-30) + 1.13 * (x.abs() * 6e-8);
            assert!((got - want).abs() <= tol, "erf({x}) = {got}, want {want}");
        }
        // The erfc tail keeps relative precision (this is what the GELU of x << 0 uses).
        let tail = [
            (3.0, 2.209_049_699_858_544e-5),
            (5.0, 1.537_459_794_428_035e-12),
        ];
        for (z, want) in tail {
            let got = erfc_nonneg(z);
            assert!(
                ((got - want) / want).abs() < 1e-13,
                "erfc({z}) = {got}, want {want}"
            );
        }
        assert_eq!(erfc_nonneg(30.0), 0.0);
        assert!(erf(f32::NAN).is_nan());
    }

    #[test]
    fn gelu_forward_known_values() {
        let x = [1.0f32, -1.0, 0.0, 3.0, -3.0, -10.0];
        // torch.nn.functional.gelu in f64 (erf and tanh variants).
        let erf_want = [
            0.841_344_746_068_542_9,
            -0.158_655_253_931_457_05,
            0.0,
            2.995_950_305_905_11,
            -0.004_049_694_094_890_284,
            -7.619_853_024_160_526e-23,
        ];
        let tanh_want = [
            0.841_191_990_608_276_7,
            -0.158_808_009_391_723_3,
            0.0,
            2.996_362_607_918_227,
            -0.003_637_392_081_773_019,
            // torch (f32 and f64) returns -0.0 here: 1 + tanh(u) cancels; the sigmoid form does not.
            -1.204_092_348_209_806e-37,
        ];
        let mut y = [0.0f32; 6];
        gelu_erf_forward(&x, &mut y);
        for ((&g, &w), &xi) in y.iter().zip(&erf_want).zip(&x) {
            assert!(
                (g as f64 - w).abs() <= 1e-7 * w.abs().max(1e-30),
                "gelu_erf({xi}) = {g}, want {w}"
            );
        }
        gelu_tanh_forward(&x, &mut y);
        for ((&g, &w), &xi) in y.iter().zip(&tanh_want).zip(&x) {
            assert!(
                (g as f64 - w).abs() <= 1e-6 * w.abs(),
                "gelu_tanh({xi}) = {g}, want {w}"
            );
        }
    }

    #[test]
    fn silu_forward_matches_formula_and_tails() {
        let mut rng = TestRng::new(3);
        let x: Vec<f32> = rng.vec(100).iter().map(|v| 8.0 * v).collect();
        let mut y = vec![0.0; 100];
        silu_forward(&x, &mut y);
        let want: Vec<f32> = x
            .iter()
            .map(|&v| (v as f64 / (1.0 + (-v as f64).exp())) as f32)
            .collect();
        assert!(max_rel_err(&y, &want) < 1e-6);
        let mut t = [0.0f32; 2];
        silu_forward(&[-200.0, 200.0], &mut t);
        assert_eq!(t, [-0.0, 200.0]);
        gelu_tanh_forward(&[-200.0, 200.0], &mut t);
        assert_eq!(t, [-0.0, 200.0]);
    }

    #[test]
    fn large_inputs_take_the_parallel_path() {
        let n = 3 * CHUNK + 17;
        let mut rng = TestRng::new(11);
        let x = rng.vec(n);
        let mut y = vec![0.0; n];
        gelu_tanh_forward(&x, &mut y);
        for i in [0, CHUNK - 1, CHUNK, n - 1] {
            let mut one = [0.0f32];
            gelu_tanh_forward(&x[i..i + 1], &mut one);
            assert_eq!(y[i], one[0]);
        }
        let mut z = x.clone();
        axpy(2.0, &x, &mut z);
        scale(0.5, &mut z);
        assert!(z.iter().zip(&x).all(|(a, b)| (a - 1.5 * b).abs() <= 1e-6));
    }

    #[test]
    fn broadcast_add_and_backward() {
        let (batch, w, k) = (2, 3, 4);
        let shape = BroadcastShape { batch, w, k };
        let mut rng = TestRng::new(5);
        let x = rng.vec(batch * w);
        let table = rng.vec(k * w);
        let mut out = vec![0.0; batch * k * w];
        broadcast_add(&x, &table, shape, &mut out);
        for b in 0..batch {
            for kk in 0..k {
                for j in 0..w {
                    assert_eq!(
                        out[b * k * w + kk * w + j],
                        x[b * w + j] + table[kk * w + j]
                    );
                }
            }
        }
        let c = rng.vec(batch * k * w);
        let f = |x: &[f32], t: &[f32]| {
            let mut o = vec![0.0; batch * k * w];
            broadcast_add(x, t, shape, &mut o);
            o.iter()
                .zip(&c)
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum::<f64>()
        };
        // Start from non-zero gradients: both outputs accumulate.
        let mut dx = vec![1.0; batch * w];
        let mut dt = vec![1.0; k * w];
        broadcast_add_backward(&c, shape, &mut dx, &mut dt);
        let nx: Vec<f32> = numeric_grad(&x, 1e-2, |xp| f(xp, &table))
            .iter()
            .map(|g| g + 1.0)
            .collect();
        let nt: Vec<f32> = numeric_grad(&table, 1e-2, |tp| f(&x, tp))
            .iter()
            .map(|g| g + 1.0)
            .collect();
        assert_grad_close("broadcast_add dx", &dx, &nx, 1e-3);
        assert_grad_close("broadcast_add dtable", &dt, &nt, 1e-3);
    }
}
