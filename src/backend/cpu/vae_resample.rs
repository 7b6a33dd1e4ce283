//! The Wan VAE's resampling data movement (the convolutions around it are [`super::conv3d`]):
//!
//! - [`upsample_nearest_2x`]: torch's `nearest-exact` interpolation by exactly 2 in height and
//!   width, `y[p, oy, ox] = x[p, oy / 2, ox / 2]` for every plane `p` (channel x frame);
//! - [`interleave_time_pairs`]: the temporal upsampler's reshuffle: its causal conv gives `2C`
//!   channels per frame, and `y[c, 2t + j] = x[j * C + c, t]` (j = 0, 1) doubles the frames;
//! - [`downsample_2x_pads`] is the padding of the spatial downsampler (one zero row below and
//!   one zero column right, then a 3x3 stride-2 convolution).
//!
//! Phase 1 of issue 14: CPU functions the VAE calls; the `Backend` trait methods and their CUDA
//! kernels are phase 2.

use rayon::prelude::*;

/// `(pad_top, pad_bottom, pad_left, pad_right)` of the spatial downsampler (`ZeroPad2d((0, 1, 0,
/// 1))` before its stride-2 3x3 convolution).
pub fn downsample_2x_pads() -> (usize, usize, usize, usize) {
    (0, 1, 0, 1)
}

/// `x` `[planes, h, w]` -> `y` `[planes, 2h, 2w]`, nearest neighbour (see the module doc).
pub fn upsample_nearest_2x(x: &[f32], planes: usize, h: usize, w: usize, y: &mut [f32]) {
    assert_eq!(x.len(), planes * h * w, "upsample: input length");
    assert_eq!(y.len(), planes * 4 * h * w, "upsample: output length");
    if x.is_empty() {
        return;
    }
    y.par_chunks_mut(4 * h * w)
        .zip(x.par_chunks(h * w))
        .for_each(|(out, inp)| {
            for oy in 0..2 * h {
                let src = &inp[(oy / 2) * w..][..w];
                let dst = &mut out[oy * 2 * w..][..2 * w];
                for (ox, v) in dst.iter_mut().enumerate() {
                    *v = src[ox / 2];
                }
            }
        });
}

/// `x` `[2c, t, plane]` -> `y` `[c, 2t, plane]` with `y[c, 2t + j] = x[j * c + c', t]`.
pub fn interleave_time_pairs(x: &[f32], c: usize, t: usize, plane: usize, y: &mut [f32]) {
    assert_eq!(x.len(), 2 * c * t * plane, "interleave: input length");
    assert_eq!(y.len(), x.len(), "interleave: output length");
    if x.is_empty() {
        return;
    }
    y.par_chunks_mut(2 * t * plane)
        .enumerate()
        .for_each(|(ch, out)| {
            for ti in 0..t {
                for j in 0..2 {
                    let src = &x[((j * c + ch) * t + ti) * plane..][..plane];
                    out[(2 * ti + j) * plane..][..plane].copy_from_slice(src);
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upsample_repeats_each_pixel_in_a_2x2_square() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]; // one plane, 2 x 3
        let mut y = vec![0.0; 24];
        upsample_nearest_2x(&x, 1, 2, 3, &mut y);
        assert_eq!(&y[..6], &[1.0, 1.0, 2.0, 2.0, 3.0, 3.0]);
        assert_eq!(&y[6..12], &[1.0, 1.0, 2.0, 2.0, 3.0, 3.0]);
        assert_eq!(&y[18..], &[4.0, 4.0, 5.0, 5.0, 6.0, 6.0]);
    }

    #[test]
    fn interleave_puts_the_two_channel_halves_on_even_and_odd_frames() {
        // c = 1, t = 2, plane = 1: x = [a0, a1 | b0, b1] -> y = [a0, b0, a1, b1].
        let x = [1.0, 2.0, 10.0, 20.0];
        let mut y = [0.0; 4];
        interleave_time_pairs(&x, 1, 2, 1, &mut y);
        assert_eq!(y, [1.0, 10.0, 2.0, 20.0]);
    }
}
