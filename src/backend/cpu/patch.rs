//! Cutting a latent video into (1, 2, 2) patches and putting it back together.
//!
//! Token `l = (f * (H/2) + hp) * (W/2) + wp`; inside a patch, [`PatchOrder::ChannelMajor`] stores
//! `(c, ph, pw)` (the Conv3d weight order) and [`PatchOrder::ChannelMinor`] stores `(ph, pw, c)`
//! (the head's output order). The two functions are exact inverses, so each is the other's backward.

use rayon::prelude::*;

use crate::backend::{PatchOrder, PatchShape};

#[inline]
fn inner_index(order: PatchOrder, channels: usize, c: usize, ph: usize, pw: usize) -> usize {
    match order {
        PatchOrder::ChannelMajor => c * 4 + ph * 2 + pw,
        PatchOrder::ChannelMinor => (ph * 2 + pw) * channels + c,
    }
}

/// Calls `f(token_index_in_batch, inner_index, video_index)` for every element of the batch.
fn for_each_sample<F>(s: PatchShape, order: PatchOrder, mut f: F)
where
    F: FnMut(usize, usize),
{
    let (hp, wp) = (s.height / 2, s.width / 2);
    let plen = s.patch_len();
    for c in 0..s.channels {
        for fr in 0..s.frames {
            for h in 0..s.height {
                for w in 0..s.width {
                    let tok = (fr * hp + h / 2) * wp + w / 2;
                    let inner = inner_index(order, s.channels, c, h % 2, w % 2);
                    let vid = ((c * s.frames + fr) * s.height + h) * s.width + w;
                    f(tok * plen + inner, vid);
                }
            }
        }
    }
}

/// `x: [batch, C, F, H, W]` -> `tokens: [batch, L, 4C]`.
pub fn patchify(x: &[f32], s: PatchShape, order: PatchOrder, tokens: &mut [f32]) {
    assert!(
        s.height % 2 == 0 && s.width % 2 == 0,
        "latent height and width must be even"
    );
    let per = s.channels * s.frames * s.height * s.width;
    tokens[..s.batch * per]
        .par_chunks_mut(per)
        .zip(x[..s.batch * per].par_chunks(per))
        .for_each(|(t, xs)| for_each_sample(s, order, |ti, vi| t[ti] = xs[vi]));
}

/// `tokens: [batch, L, 4C]` -> `x: [batch, C, F, H, W]`.
pub fn unpatchify(tokens: &[f32], s: PatchShape, order: PatchOrder, x: &mut [f32]) {
    assert!(
        s.height % 2 == 0 && s.width % 2 == 0,
        "latent height and width must be even"
    );
    let per = s.channels * s.frames * s.height * s.width;
    x[..s.batch * per]
        .par_chunks_mut(per)
        .zip(tokens[..s.batch * per].par_chunks(per))
        .for_each(|(xs, t)| for_each_sample(s, order, |ti, vi| xs[vi] = t[ti]));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patchify_round_trips_and_orders_patches() {
        let s = PatchShape {
            batch: 2,
            channels: 3,
            frames: 3,
            height: 4,
            width: 6,
        };
        let n = 2 * 3 * 3 * 4 * 6;
        let x: Vec<f32> = (0..n).map(|i| i as f32).collect();
        for order in [PatchOrder::ChannelMajor, PatchOrder::ChannelMinor] {
            let mut t = vec![0.0; n];
            patchify(&x, s, order, &mut t);
            let mut back = vec![0.0; n];
            unpatchify(&t, s, order, &mut back);
            assert_eq!(x, back);
        }
        // Token 0 of sample 0 in channel-major order: c=0: (0,0),(0,1),(1,0),(1,1), then c=1.
        let mut t = vec![0.0; n];
        patchify(&x, s, PatchOrder::ChannelMajor, &mut t);
        assert_eq!(&t[..5], &[0.0, 1.0, 6.0, 7.0, 72.0]);
        patchify(&x, s, PatchOrder::ChannelMinor, &mut t);
        assert_eq!(&t[..4], &[0.0, 72.0, 144.0, 1.0]);
    }
}
