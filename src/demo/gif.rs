//! Animated GIF previews of latent clips, without a VAE: the three leading channel directions
//! of each clip become the red, green and blue of an upscaled image, so a blob (a channel
//! signature over a patch of cells) shows as a coloured spot on a grey background, and its
//! motion as the animation. Clips are laid out side by side; every frame of the GIF is one latent frame.

use std::path::Path;

use crate::{Error, Result};

/// Pixels per latent cell.
pub const SCALE: usize = 8;
/// Pixels between clips.
const GAP: usize = 4;
/// Levels per colour axis of the fixed palette (6^3 = 216 colours): a fixed palette keeps the
/// encoding deterministic and needs no quantiser.
const LEVELS: usize = 6;
/// Palette index of the gap colour (black, level 0 on every axis).
const GAP_INDEX: u8 = 0;

/// Writes `clips` (`[N, C, F, H, W]`, latent `shape = [C, F, H, W]`) to `path` as one animated
/// GIF, each latent frame shown for `delay_ms`.
pub fn write_gif(path: &Path, clips: &[f32], shape: [usize; 4], delay_ms: u16) -> Result<()> {
    let [c, f, h, w] = shape;
    let per = c * f * h * w;
    if per == 0 || clips.is_empty() || clips.len() % per != 0 {
        return Err(Error::InvalidInput(format!(
            "{} values are not whole clips of {shape:?}",
            clips.len()
        )));
    }
    let n = clips.len() / per;
    let (width, height) = (n * w * SCALE + (n - 1) * GAP, h * SCALE);
    let (gw, gh) = (
        u16::try_from(width).map_err(|_| too_big(width))?,
        u16::try_from(height).map_err(|_| too_big(height))?,
    );
    let colours: Vec<Vec<[f32; 3]>> = clips
        .chunks_exact(per)
        .map(|x| colourise(x, shape))
        .collect();
    let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let encode = |e: gif::EncodingError| Error::InvalidInput(format!("{}: {e}", path.display()));
    let mut enc =
        gif::Encoder::new(std::io::BufWriter::new(file), gw, gh, &palette()).map_err(encode)?;
    enc.set_repeat(gif::Repeat::Infinite).map_err(encode)?;
    for frame in 0..f {
        let mut pixels = vec![GAP_INDEX; width * height];
        for (k, clip) in colours.iter().enumerate() {
            let x0 = k * (w * SCALE + GAP);
            for row in 0..h {
                for col in 0..w {
                    let index = palette_index(clip[(frame * h + row) * w + col]);
                    for dy in 0..SCALE {
                        let start = (row * SCALE + dy) * width + x0 + col * SCALE;
                        pixels[start..start + SCALE].fill(index);
                    }
                }
            }
        }
        let mut fr = gif::Frame::from_indexed_pixels(gw, gh, pixels, None);
        fr.delay = delay_ms / 10;
        enc.write_frame(&fr).map_err(encode)?;
    }
    Ok(())
}

fn too_big(n: usize) -> Error {
    Error::InvalidInput(format!("a preview of {n} pixels does not fit a GIF"))
}

/// Per cell `[F * H * W]`, the colour in `[0, 1]^3`: the latent (centred per channel on its
/// median over the clip, the background level) projected on the clip's three leading channel
/// directions. Raw channels would show mostly noise: a blob's signature is spread over every
/// channel, and the leading directions of the channel covariance are where the blobs are.
/// Each component is scaled by its largest deviation, so grey is background.
fn colourise(x: &[f32], shape: [usize; 4]) -> Vec<[f32; 3]> {
    let [c, f, h, w] = shape;
    let plane = f * h * w;
    let centred: Vec<Vec<f64>> = x
        .chunks_exact(plane)
        .map(|ch| {
            let mut sorted = ch.to_vec();
            sorted.sort_by(f32::total_cmp);
            let median = sorted[plane / 2];
            ch.iter().map(|&v| (v - median) as f64).collect()
        })
        .collect();
    let mut cov = vec![0.0f64; c * c];
    for a in 0..c {
        for b in a..c {
            let s: f64 = centred[a].iter().zip(&centred[b]).map(|(p, q)| p * q).sum();
            cov[a * c + b] = s;
            cov[b * c + a] = s;
        }
    }
    let axes = leading_axes(&mut cov, c, 3);
    let comps: Vec<Vec<f32>> = axes
        .iter()
        .map(|axis| {
            let p: Vec<f64> = (0..plane)
                .map(|i| (0..c).map(|ch| axis[ch] * centred[ch][i]).sum())
                .collect();
            // The sign of an eigenvector is arbitrary: orient it so the strongest cell is bright.
            let peak = p
                .iter()
                .fold(0.0f64, |m, &v| if v.abs() > m.abs() { v } else { m });
            let scale = if peak == 0.0 { 1.0 } else { peak };
            p.iter().map(|&v| (0.5 + 0.5 * v / scale) as f32).collect()
        })
        .collect();
    (0..plane)
        .map(|i| {
            let get = |k: usize| comps.get(k).map_or(0.5, |c| c[i]);
            [get(0), get(1), get(2)]
        })
        .collect()
}

/// The `k` leading eigenvectors (at most `n`) of the symmetric `n x n` matrix `m`, by power
/// iteration with deflation (`m` is deflated in place); deterministic start vectors.
fn leading_axes(m: &mut [f64], n: usize, k: usize) -> Vec<Vec<f64>> {
    let mut out = Vec::new();
    for _ in 0..k.min(n) {
        let mut v: Vec<f64> = (0..n).map(|i| 1.0 + 0.1 * i as f64).collect();
        let mut lambda = 0.0;
        for _ in 0..100 {
            let mv: Vec<f64> = (0..n)
                .map(|r| (0..n).map(|j| m[r * n + j] * v[j]).sum())
                .collect();
            let norm = mv.iter().map(|x| x * x).sum::<f64>().sqrt();
            if norm == 0.0 {
                break;
            }
            lambda = norm;
            v = mv.into_iter().map(|x| x / norm).collect();
        }
        for r in 0..n {
            for j in 0..n {
                m[r * n + j] -= lambda * v[r] * v[j];
            }
        }
        out.push(v);
    }
    out
}

/// The fixed colour cube, padded to 256 entries.
fn palette() -> Vec<u8> {
    let mut p = Vec::with_capacity(256 * 3);
    for r in 0..LEVELS {
        for g in 0..LEVELS {
            for b in 0..LEVELS {
                for v in [r, g, b] {
                    p.push((v * 255 / (LEVELS - 1)) as u8);
                }
            }
        }
    }
    p.resize(256 * 3, 0);
    p
}

fn palette_index(rgb: [f32; 3]) -> u8 {
    let level = |v: f32| (v.clamp(0.0, 1.0) * (LEVELS - 1) as f32).round() as usize;
    (level(rgb[0]) * LEVELS * LEVELS + level(rgb[1]) * LEVELS + level(rgb[2])) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_one_gif_frame_per_latent_frame() {
        let shape = [4, 3, 8, 8];
        let per: usize = shape.iter().product();
        let clips: Vec<f32> = (0..2 * per).map(|i| ((i * 37) % 11) as f32).collect();
        let path = std::env::temp_dir().join(format!("prfl-gif-{}.gif", std::process::id()));
        write_gif(&path, &clips, shape, 200).unwrap();
        let mut dec = gif::DecodeOptions::new();
        dec.set_color_output(gif::ColorOutput::Indexed);
        let mut d = dec.read_info(std::fs::File::open(&path).unwrap()).unwrap();
        assert_eq!(
            (d.width() as usize, d.height() as usize),
            (2 * 8 * SCALE + GAP, 8 * SCALE)
        );
        let mut frames = 0;
        while d.read_next_frame().unwrap().is_some() {
            frames += 1;
        }
        assert_eq!(frames, 3);
        std::fs::remove_file(&path).unwrap();
    }
}
