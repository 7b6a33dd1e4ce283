//! Wan's 3-D rotary position table: the `head_dim / 2` rotation pairs of each head are split into
//! three frequency bands that encode a token's frame, row and column index.
//!
//! Matches the reference (`rope_params` in Wan2.1, `WanRotaryPosEmbed` in diffusers): angles are
//! formed and their cosines/sines taken in f64, then rounded to f32 once.

/// RoPE base.
const THETA: f64 = 10000.0;

/// Pairs per band `[frame, row, column]`: `[d/2 - 2*floor(d/6), floor(d/6), floor(d/6)]`
/// (22/21/21 for `head_dim` 128). The frame band takes the remainder.
pub fn rope_bands(head_dim: usize) -> [usize; 3] {
    assert!(head_dim % 2 == 0, "rope: head_dim must be even");
    let hw = head_dim / 6;
    [head_dim / 2 - 2 * hw, hw, hw]
}

/// Inverse frequencies of one band of `g` pairs: `theta^(-2j / n)` with `n = 2g`, i.e. each band
/// is normalised by its own width (not by `head_dim`). Written as `1 / theta^(2j/n)` as in the
/// reference, so the f64 values agree to the last bit.
fn band_freqs(g: usize) -> Vec<f64> {
    let n = (2 * g) as f64;
    (0..g)
        .map(|j| 1.0 / THETA.powf((2 * j) as f64 / n))
        .collect()
}

/// `(cos, sin)`, each `[frames * hp * wp, head_dim / 2]`, for tokens in (f, h, w) order
/// (`l = (f * hp + h) * wp + w`). Pair `i` of token `(f, h, w)` has angle
/// `pos * theta^(-2j/n)` where `pos` is `f`, `h` or `w` by the band `i` falls in and `j` is `i`'s
/// index inside that band.
pub fn rope_table(frames: usize, hp: usize, wp: usize, head_dim: usize) -> (Vec<f32>, Vec<f32>) {
    let half = head_dim / 2;
    let bands = rope_bands(head_dim);
    // Inverse frequency of every pair, tagged with the coordinate (0 = f, 1 = h, 2 = w) it uses.
    let pairs: Vec<(usize, f64)> = bands
        .iter()
        .enumerate()
        .flat_map(|(axis, &g)| band_freqs(g).into_iter().map(move |fr| (axis, fr)))
        .collect();
    debug_assert_eq!(pairs.len(), half);

    let l = frames * hp * wp;
    let mut cos = Vec::with_capacity(l * half);
    let mut sin = Vec::with_capacity(l * half);
    for f in 0..frames {
        for h in 0..hp {
            for w in 0..wp {
                let pos = [f as f64, h as f64, w as f64];
                for &(axis, fr) in &pairs {
                    let a = pos[axis] * fr;
                    cos.push(a.cos() as f32);
                    sin.push(a.sin() as f32);
                }
            }
        }
    }
    (cos, sin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn band_split() {
        assert_eq!(rope_bands(128), [22, 21, 21]);
        assert_eq!(rope_bands(16), [4, 2, 2]);
        assert_eq!(rope_bands(64), [12, 10, 10]);
        for d in (2..=256).step_by(2) {
            assert_eq!(rope_bands(d).iter().sum::<usize>(), d / 2);
        }
    }

    #[test]
    fn angles_follow_the_band_layout() {
        let (frames, hp, wp, d) = (3, 4, 5, 128);
        let half = d / 2;
        let (cos, sin) = rope_table(frames, hp, wp, d);
        assert_eq!(cos.len(), frames * hp * wp * half);
        let (f, h, w) = (2usize, 3usize, 4usize);
        let row = ((f * hp + h) * wp + w) * half;
        // (pair index, position, band width)
        let checks = [
            (0, f, 22),
            (5, f, 22),
            (21, f, 22),
            (22, h, 21),
            (22 + 7, h, 21),
            (43, w, 21),
            (43 + 20, w, 21),
        ];
        let starts = [0, 22, 43];
        for (i, pos, g) in checks {
            let j = i - starts.iter().rev().find(|&&s| s <= i).unwrap();
            let ang = pos as f64 * THETA.powf(-((2 * j) as f64) / (2 * g) as f64);
            assert!(
                (cos[row + i] as f64 - ang.cos()).abs() < 1e-7,
                "cos pair {i}"
            );
            assert!(
                (sin[row + i] as f64 - ang.sin()).abs() < 1e-7,
                "sin pair {i}"
            );
        }
        // Token (0, 0, 0) has angle 0 everywhere.
        assert!(cos[..half].iter().all(|&c| c == 1.0) && sin[..half].iter().all(|&s| s == 0.0));
    }

    /// Entries of diffusers' `WanRotaryPosEmbed` tables (freqs_cos[..., 0::2], freqs_sin[..., 1::2])
    /// for a (frames, hp, wp) = (3, 4, 5) grid, as f32 bit patterns: the f64 evaluation must
    /// round to exactly the same f32.
    #[test]
    fn matches_diffusers() {
        // (head_dim, token, pair, cos bits, sin bits)
        let cases: &[(usize, usize, usize, u32, u32)] = &[
            (16, 59, 0, 3201634611, 1063831479),
            (16, 59, 3, 1065353182, 990057065),
            (16, 59, 5, 1065345667, 1022736672),
            (16, 59, 7, 1065339796, 1025756123),
            (16, 37, 1, 1065269400, 1036809590),
            (16, 37, 6, 3201634611, 1063831479),
            (128, 59, 21, 1065353215, 966746061),
            (128, 59, 22, 3212668966, 1041269187),
            (128, 59, 42, 1065353214, 972283906),
            (128, 59, 43, 3207025968, 3208756687),
            (128, 59, 63, 1065353213, 975344983),
            (128, 38, 10, 1065351278, 1014563645),
            (128, 38, 30, 1065285604, 1035447714),
            (128, 38, 50, 1065190824, 1041113367),
        ];
        let t16 = rope_table(3, 4, 5, 16);
        let t128 = rope_table(3, 4, 5, 128);
        for &(d, tok, pair, c, s) in cases {
            let (cos, sin) = if d == 16 { &t16 } else { &t128 };
            let i = tok * d / 2 + pair;
            assert_eq!(
                cos[i],
                f32::from_bits(c),
                "d={d} token {tok} pair {pair} cos"
            );
            assert_eq!(
                sin[i],
                f32::from_bits(s),
                "d={d} token {tok} pair {pair} sin"
            );
        }
    }
}
