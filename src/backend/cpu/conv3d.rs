//! 3-D convolution on the CPU (the Wan VAE's causal conv3d, and its 2-D and 1x1 convolutions as
//! the `kt = 1` case): `y[co, to, oy, ox] = b[co] + sum_{ci, dt, dy, dx} w[co, ci, dt, dy, dx] *
//! x[ci, to*st + dt - pad_front, oy*sh + dy - pad_top, ox*sw + dx - pad_left]`, reading zeros
//! outside `x`. Tensors are channel-first `[C, T, H, W]`, weights torch's `[Co, Ci, kt, kh, kw]`.
//!
//! Causality is the caller's: it prepends the cached frames (or asks for `pad_front` zero frames)
//! and never pads at the end. The work is im2col + GEMM (`gemm` crate) over blocks of output rows,
//! so that the column buffer stays small (a few MiB) whatever the frame size; the blocks run in
//! parallel on rayon, each writing its own disjoint rows of `y`.
//!
//! Phase 1 of issue 14: a CPU function the VAE calls; the `Backend` trait method and its CUDA
//! kernel are phase 2.

use gemm::{gemm, Parallelism};
use rayon::prelude::*;

/// The geometry of one convolution call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv3dShape {
    pub c_in: usize,
    pub c_out: usize,
    /// Input frames, height, width (before padding).
    pub t: usize,
    pub h: usize,
    pub w: usize,
    /// Kernel extent in time, height, width.
    pub kt: usize,
    pub kh: usize,
    pub kw: usize,
    /// Strides in time, height, width.
    pub st: usize,
    pub sh: usize,
    pub sw: usize,
    /// Zero frames before the first input frame (causal padding; none after the last).
    pub pad_front: usize,
    /// Zero rows above / below, zero columns left / right.
    pub pad_top: usize,
    pub pad_bottom: usize,
    pub pad_left: usize,
    pub pad_right: usize,
}

impl Conv3dShape {
    /// Output frames, height and width (zero where the kernel does not fit).
    pub fn out_dims(&self) -> (usize, usize, usize) {
        let out = |n: usize, k: usize, s: usize| if n >= k { (n - k) / s + 1 } else { 0 };
        (
            out(self.t + self.pad_front, self.kt, self.st),
            out(self.h + self.pad_top + self.pad_bottom, self.kh, self.sh),
            out(self.w + self.pad_left + self.pad_right, self.kw, self.sw),
        )
    }
    /// Elements of `x`, of the weight, and of `y`.
    pub fn lens(&self) -> (usize, usize, usize) {
        let (to, ho, wo) = self.out_dims();
        (
            self.c_in * self.t * self.h * self.w,
            self.c_out * self.c_in * self.kt * self.kh * self.kw,
            self.c_out * to * ho * wo,
        )
    }
}

/// The column buffer's budget in floats (im2col rows x block columns).
const COL_BUDGET: usize = 1 << 20;

/// A pointer to `y` that the parallel blocks share; each block writes only its own rows.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: the blocks write disjoint index sets of one live buffer (see `conv3d_forward`).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer (a method, so that closures capture the whole `Send` wrapper).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `y = conv3d(x, weight) + bias` (see the module doc). Panics if a buffer's length disagrees with
/// `s` (the VAE layers check shapes when they load their weights).
pub fn conv3d_forward(x: &[f32], s: &Conv3dShape, weight: &[f32], bias: &[f32], y: &mut [f32]) {
    let (nx, nw, ny) = s.lens();
    assert_eq!(x.len(), nx, "conv3d: input length");
    assert_eq!(weight.len(), nw, "conv3d: weight length");
    assert_eq!(bias.len(), s.c_out, "conv3d: bias length");
    assert_eq!(y.len(), ny, "conv3d: output length");
    let (to_n, ho, wo) = s.out_dims();
    if ny == 0 {
        return;
    }
    let k = s.c_in * s.kt * s.kh * s.kw;
    let rows_per_block = (COL_BUDGET / (k * wo).max(1)).clamp(1, ho);
    let blocks_per_frame = ho.div_ceil(rows_per_block);
    let plane = to_n * ho * wo; // the stride between output channels
    let out = OutPtr(y.as_mut_ptr());
    (0..to_n * blocks_per_frame).into_par_iter().for_each(|b| {
        let to = b / blocks_per_frame;
        let r0 = (b % blocks_per_frame) * rows_per_block;
        let r1 = (r0 + rows_per_block).min(ho);
        let n = (r1 - r0) * wo;
        let mut col = vec![0.0f32; k * n];
        im2col(x, s, to, r0, r1, wo, &mut col);
        // SAFETY: this block owns the elements `co * plane + (to * ho + r) * wo + ox` for its
        // rows r in r0..r1, every co and ox: disjoint from every other block's, inside `y`
        // (checked above), and `y` outlives the parallel loop.
        unsafe {
            let dst = out.get().add((to * ho + r0) * wo);
            for (co, b) in bias.iter().enumerate() {
                let row = dst.add(co * plane);
                for i in 0..n {
                    *row.add(i) = *b;
                }
            }
            gemm(
                s.c_out,
                n,
                k,
                dst,
                1,
                plane as isize,
                true,
                weight.as_ptr(),
                1,
                k as isize,
                col.as_ptr(),
                1,
                n as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
    });
}

/// The im2col matrix `[c_in * kt * kh * kw, (r1 - r0) * wo]` of output frame `to`, rows r0..r1.
fn im2col(x: &[f32], s: &Conv3dShape, to: usize, r0: usize, r1: usize, wo: usize, col: &mut [f32]) {
    let n = (r1 - r0) * wo;
    let (h, w) = (s.h as isize, s.w as isize);
    let mut kidx = 0;
    for ci in 0..s.c_in {
        for dt in 0..s.kt {
            let ti = (to * s.st + dt) as isize - s.pad_front as isize;
            for dy in 0..s.kh {
                for dx in 0..s.kw {
                    let dst = &mut col[kidx * n..(kidx + 1) * n];
                    kidx += 1;
                    if ti < 0 || ti >= s.t as isize {
                        dst.iter_mut().for_each(|v| *v = 0.0);
                        continue;
                    }
                    let frame = &x[(ci * s.t + ti as usize) * s.h * s.w..][..s.h * s.w];
                    for (ri, r) in (r0..r1).enumerate() {
                        let iy = (r * s.sh + dy) as isize - s.pad_top as isize;
                        let out_row = &mut dst[ri * wo..(ri + 1) * wo];
                        if iy < 0 || iy >= h {
                            out_row.iter_mut().for_each(|v| *v = 0.0);
                            continue;
                        }
                        let in_row = &frame[iy as usize * s.w..][..s.w];
                        for (ox, v) in out_row.iter_mut().enumerate() {
                            let ix = (ox * s.sw + dx) as isize - s.pad_left as isize;
                            *v = if ix < 0 || ix >= w {
                                0.0
                            } else {
                                in_row[ix as usize]
                            };
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, summed literally.
    fn naive(x: &[f32], s: &Conv3dShape, weight: &[f32], bias: &[f32]) -> Vec<f32> {
        let (to_n, ho, wo) = s.out_dims();
        let mut y = vec![0.0f32; s.c_out * to_n * ho * wo];
        for co in 0..s.c_out {
            for to in 0..to_n {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let mut acc = bias[co] as f64;
                        for ci in 0..s.c_in {
                            for dt in 0..s.kt {
                                for dy in 0..s.kh {
                                    for dx in 0..s.kw {
                                        let ti = (to * s.st + dt) as isize - s.pad_front as isize;
                                        let iy = (oy * s.sh + dy) as isize - s.pad_top as isize;
                                        let ix = (ox * s.sw + dx) as isize - s.pad_left as isize;
                                        if ti < 0
                                            || iy < 0
                                            || ix < 0
                                            || ti >= s.t as isize
                                            || iy >= s.h as isize
                                            || ix >= s.w as isize
                                        {
                                            continue;
                                        }
                                        let xi = ((ci * s.t + ti as usize) * s.h + iy as usize)
                                            * s.w
                                            + ix as usize;
                                        let wi = (((co * s.c_in + ci) * s.kt + dt) * s.kh + dy)
                                            * s.kw
                                            + dx;
                                        acc += (x[xi] * weight[wi]) as f64;
                                    }
                                }
                            }
                        }
                        y[((co * to_n + to) * ho + oy) * wo + ox] = acc as f32;
                    }
                }
            }
        }
        y
    }

    fn check(s: Conv3dShape) {
        let (nx, nw, ny) = s.lens();
        let x: Vec<f32> = (0..nx)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
            .collect();
        let w: Vec<f32> = (0..nw)
            .map(|i| ((i * 13 % 29) as f32 - 14.0) / 30.0)
            .collect();
        let b: Vec<f32> = (0..s.c_out).map(|i| i as f32 * 0.1 - 0.2).collect();
        let mut y = vec![f32::NAN; ny];
        conv3d_forward(&x, &s, &w, &b, &mut y);
        let want = naive(&x, &s, &w, &b);
        for (a, b) in y.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }

    #[test]
    fn conv3d_matches_the_definition_with_causal_padding_strides_and_asymmetric_pads() {
        let base = Conv3dShape {
            c_in: 3,
            c_out: 4,
            t: 3,
            h: 5,
            w: 7,
            kt: 3,
            kh: 3,
            kw: 3,
            st: 1,
            sh: 1,
            sw: 1,
            pad_front: 2,
            pad_top: 1,
            pad_bottom: 1,
            pad_left: 1,
            pad_right: 1,
        };
        check(base);
        // The VAE's spatial downsampling: pad right/bottom by one, stride 2, no time extent.
        check(Conv3dShape {
            kt: 1,
            pad_front: 0,
            sh: 2,
            sw: 2,
            pad_top: 0,
            pad_left: 0,
            ..base
        });
        // Its temporal downsampling: kt = 3, stride 2 in time, no padding.
        check(Conv3dShape {
            t: 5,
            kh: 1,
            kw: 1,
            st: 2,
            pad_front: 0,
            pad_top: 0,
            pad_bottom: 0,
            pad_left: 0,
            pad_right: 0,
            ..base
        });
    }
}
