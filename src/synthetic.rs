//! A procedural world of latent videos whose quality is known by rule, so reward-model training
//! and PRFL fine-tuning can be tested (and demonstrated) without a VAE, a text encoder or real
//! video.
//!
//! A clip is a latent `[C, F, H, W]` showing one or two Gaussian blobs over background noise.
//! Each blob has a random size and a random channel signature (its "colour" across the latent
//! channels); a per-clip per-channel offset plays the role of a scene colour. The blobs of a clip
//! move together:
//! - **good** ([`Motion::Smooth`]): along a straight line at constant velocity, in the direction
//!   the prompt names (give or take 15 degrees);
//! - **bad**: either [`Motion::Frozen`] (no motion at all) or [`Motion::Jitter`] (random jumps
//!   from frame to frame around a fixed point).
//!
//! Every clip is normalised to zero mean and unit variance, like VAE latents after the model's
//! normalisation, so it mixes with unit Gaussian noise in flow matching as real latents do.
//!
//! The prompts are a fixed set of four ([`PROMPTS`], one per direction of motion) whose text
//! states `[text_len, text_dim]` are deterministic in [`WorldConfig::prompt_seed`].
//!
//! [`motion_quality`] measures from the latent alone how smooth the motion is, and [`is_good`]
//! thresholds it: it is the ground truth against which a trained reward model (or a fine-tuned
//! generator's samples) is judged.
//!
//! Sizes and speeds are relative to the frame (`min(H, W)`) and to the clip length (`F - 1`
//! steps), so the world looks the same at every resolution and length.

use std::path::Path;

use crate::reward::dataset::{
    below, write_clip, write_pair, Batch, BatchLatents, Conditioning, TokenStates,
};
use crate::schedule::Rng;
use crate::tensor::DType;
use crate::{Error, Result};

/// The prompts, one per direction of motion. `PROMPTS[i]` moves along [`prompt_direction`]`(i)`.
pub const PROMPTS: [&str; 4] = [
    "a blob drifting right",
    "a blob drifting left",
    "a blob drifting down",
    "a blob drifting up",
];

/// Unit direction `[d_row, d_col]` of prompt `prompt` (rows grow downwards).
pub fn prompt_direction(prompt: usize) -> [f32; 2] {
    match prompt % PROMPTS.len() {
        0 => [0.0, 1.0],
        1 => [0.0, -1.0],
        2 => [1.0, 0.0],
        _ => [-1.0, 0.0],
    }
}

/// [`motion_quality`] at or above this is good motion.
pub const GOOD_THRESHOLD: f32 = 0.5;

/// The world's sizes. `Default` is the small world of the tests.
#[derive(Clone, Debug, PartialEq)]
pub struct WorldConfig {
    /// Latent channels `C` (Wan2.1: 16).
    pub channels: usize,
    /// Latent frames `F`; at least 4, since with fewer a random jump can pass for smooth motion.
    pub frames: usize,
    /// Latent height `H`: even (the DiT patch is 2 x 2) and at least 8.
    pub height: usize,
    /// Latent width `W`: even and at least 8.
    pub width: usize,
    /// Tokens per prompt `L`.
    pub text_len: usize,
    /// Text feature size (the model's `text_dim`).
    pub text_dim: usize,
    /// Background noise, relative to a blob's peak amplitude of about 1 per channel. Up to the
    /// default 0.3 the rule ([`motion_quality`]) tells good from bad clips almost perfectly; at
    /// 0.6 it misses about a fifth of the smooth ones.
    pub noise_std: f32,
    /// Seed of the prompt embeddings (independent of the clips' seeds, so every dataset of one
    /// world shares its prompts).
    pub prompt_seed: u64,
    /// Where blob signatures come from: `None` (the default) draws a fresh random signature for
    /// every blob, so every clip has its own colours; `Some(k)` picks each blob's signature from
    /// a fixed palette of `k` (deterministic in `prompt_seed`). A palette is a lower-entropy
    /// world that a small generator learns in a few thousand steps (the built-in demo's).
    pub palette: Option<usize>,
    /// At most this many blobs per clip: 2 (the default: half the scenes have two) or 1.
    pub max_blobs: usize,
    /// Standard deviation of the per-channel scene offset (the "scene colour"); default 0.5.
    pub background_std: f32,
}

impl Default for WorldConfig {
    fn default() -> Self {
        WorldConfig {
            channels: 16,
            frames: 5,
            height: 8,
            width: 8,
            text_len: 8,
            text_dim: 32,
            noise_std: 0.3,
            prompt_seed: 0x5EED,
            palette: None,
            max_blobs: 2,
            background_std: 0.5,
        }
    }
}

impl WorldConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Config(format!("synthetic world: {msg}")));
        if self.channels == 0 || self.text_len == 0 || self.text_dim == 0 {
            return bad("channels, text_len and text_dim must be positive".into());
        }
        if self.frames < 4 {
            return bad(format!(
                "frames = {} (at least 4 are needed to tell smooth motion from jumps reliably)",
                self.frames
            ));
        }
        if self.height < 8 || self.width < 8 || self.height % 2 != 0 || self.width % 2 != 0 {
            return bad(format!(
                "height x width = {} x {} (both must be even and at least 8)",
                self.height, self.width
            ));
        }
        if self.palette == Some(0) || !(1..=2).contains(&self.max_blobs) {
            return bad(format!(
                "palette {:?} and max_blobs {} (a palette needs a colour; 1 or 2 blobs)",
                self.palette, self.max_blobs
            ));
        }
        if !(self.background_std.is_finite() && self.background_std >= 0.0) {
            return bad(format!("background_std = {}", self.background_std));
        }
        if !(self.noise_std.is_finite() && self.noise_std >= 0.0) {
            return bad(format!("noise_std = {}", self.noise_std));
        }
        Ok(())
    }

    /// The latent shape `[C, F, H, W]` of every clip.
    pub fn shape(&self) -> [usize; 4] {
        [self.channels, self.frames, self.height, self.width]
    }

    fn extent(&self) -> f32 {
        self.height.min(self.width) as f32
    }
}

/// How the blobs of a clip move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Motion {
    /// Straight line, constant velocity (good).
    Smooth,
    /// No motion (bad).
    Frozen,
    /// Random jumps frame to frame (bad).
    Jitter,
}

impl Motion {
    pub fn is_good(self) -> bool {
        self == Motion::Smooth
    }
}

/// The text states `[text_len, text_dim]` of prompt `prompt` (unit normal entries).
pub fn prompt_states(cfg: &WorldConfig, prompt: usize) -> Vec<f32> {
    let stream = (prompt as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut rng = Rng::seed_from_u64(cfg.prompt_seed ^ stream);
    let mut states = vec![0.0; cfg.text_len * cfg.text_dim];
    rng.fill_normal(&mut states);
    states
}

/// The conditioning of prompt `prompt`, ready for [`write_clip`] / [`write_pair`].
pub fn prompt_conditioning(cfg: &WorldConfig, prompt: usize) -> Conditioning {
    text_conditioning(cfg, prompt_states(cfg, prompt))
}

fn text_conditioning(cfg: &WorldConfig, states: Vec<f32>) -> Conditioning {
    Conditioning {
        text: TokenStates {
            data: states,
            len: cfg.text_len,
            dim: cfg.text_dim,
        },
        i2v: None,
    }
}

/// A random clip: good (smooth) or bad (frozen or jittering, equally often) under a random
/// prompt. Returns `(latent [C, F, H, W], text [text_len, text_dim])`.
///
/// # Panics
/// If `cfg` is invalid (see [`WorldConfig::validate`]).
pub fn generate_clip(cfg: &WorldConfig, rng: &mut Rng, good: bool) -> (Vec<f32>, Vec<f32>) {
    let prompt = below(rng, PROMPTS.len());
    let motion = if good {
        Motion::Smooth
    } else {
        bad_motion(rng)
    };
    (
        generate_clip_with(cfg, rng, motion, prompt),
        prompt_states(cfg, prompt),
    )
}

/// A clip with the given motion under prompt `prompt`: the latent `[C, F, H, W]`.
///
/// # Panics
/// If `cfg` is invalid (see [`WorldConfig::validate`]).
pub fn generate_clip_with(
    cfg: &WorldConfig,
    rng: &mut Rng,
    motion: Motion,
    prompt: usize,
) -> Vec<f32> {
    let (scene, tracks) = draw_scene_and_tracks(cfg, rng, &[motion], prompt_direction(prompt));
    render(cfg, rng, &scene, &tracks[0])
}

/// A preference pair under a random prompt: the same blobs moving smoothly (`win`) and frozen or
/// jittering (`lose`), so the pair differs only in its motion. Returns `(win, lose, text)`.
///
/// # Panics
/// If `cfg` is invalid (see [`WorldConfig::validate`]).
pub fn generate_pair(cfg: &WorldConfig, rng: &mut Rng) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let prompt = below(rng, PROMPTS.len());
    let bad = bad_motion(rng);
    let (scene, tracks) =
        draw_scene_and_tracks(cfg, rng, &[Motion::Smooth, bad], prompt_direction(prompt));
    let win = render(cfg, rng, &scene, &tracks[0]);
    let lose = render(cfg, rng, &scene, &tracks[1]);
    (win, lose, prompt_states(cfg, prompt))
}

/// Writes a dataset in the format of [`crate::reward::dataset`] into `dir` (created if needed;
/// same-named files are replaced): `n_clips` labelled clips `clip-NNNNN.safetensors`, even
/// indices good and odd ones bad (so exactly half good, rounding up), and `n_pairs` good-vs-bad
/// pairs `pair-NNNNN.safetensors` sharing a prompt. Deterministic in `seed`; stored as f32.
pub fn generate_dataset(
    dir: &Path,
    cfg: &WorldConfig,
    n_clips: usize,
    n_pairs: usize,
    seed: u64,
) -> Result<()> {
    cfg.validate()?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let shape = cfg.shape();
    let mut rng = Rng::seed_from_u64(seed);
    for i in 0..n_clips {
        let good = i % 2 == 0;
        let (latent, states) = generate_clip(cfg, &mut rng, good);
        let label = if good { 1.0 } else { 0.0 };
        let path = dir.join(format!("clip-{i:05}.safetensors"));
        write_clip(
            &path,
            shape,
            &latent,
            label,
            &text_conditioning(cfg, states),
            DType::F32,
        )?;
    }
    for i in 0..n_pairs {
        let (win, lose, states) = generate_pair(cfg, &mut rng);
        let path = dir.join(format!("pair-{i:05}.safetensors"));
        write_pair(
            &path,
            shape,
            &win,
            &lose,
            &text_conditioning(cfg, states),
            DType::F32,
        )?;
    }
    Ok(())
}

/// How smooth the motion of a clip is, from the latent alone: about 0.55 to 0.8 for steady
/// motion along a line, mostly below 0.35 for frozen or jittering clips (see [`GOOD_THRESHOLD`]).
///
/// The blobs are located without knowing their channel signatures. Across the clip they dominate
/// the channel covariance, so the energy of each pixel within its two leading eigenvectors (after
/// removing the per-channel median, the background level) shows the blobs and only two of the
/// `C` dimensions of the background noise. Per frame the median energy (the noise floor) is
/// subtracted and the remainder squared, which keeps the blob cores; the weighted centroid of that
/// is the frame's position.
///
/// A least-squares line `p(t) = mean + v t` through the centroid track gives the speed `|v|`
/// (cells per frame) and the RMS residual `e` (cells), and
/// `quality = |v| / (|v| + e + tau)`: high when the track moves steadily, low when it stands still
/// (`|v|` ~ 0) or jumps around (`e` large). `tau` (3 % of `min(H, W)` per four frames) is the
/// motion a clip must show to count as moving.
///
/// Returns 0 for fewer than 3 frames (smoothness is undefined) and for a frame without energy.
/// With exactly 3 frames the line has a single residual degree of freedom and jitter is hard to
/// tell from motion, which is why [`WorldConfig`] asks for at least 4.
///
/// # Panics
/// If `latent.len()` is not the product of `shape`.
pub fn motion_quality(latent: &[f32], shape: [usize; 4]) -> f32 {
    let [c, f, h, w] = shape;
    assert_eq!(
        latent.len(),
        c * f * h * w,
        "latent does not match {shape:?}"
    );
    if f < 3 {
        return 0.0;
    }
    let Some(track) = centroid_track(latent, shape) else {
        return 0.0;
    };
    // Least-squares line through the track, p(t) = mean + v t with t centred on the middle
    // frame. A fit (rather than frame-to-frame steps) averages the centroid noise over all
    // frames instead of doubling it by differencing.
    let mid = (f - 1) as f64 / 2.0;
    let t = |i: usize| i as f64 - mid;
    let tt: f64 = (0..f).map(|i| t(i) * t(i)).sum();
    let mut mean = [0.0; 2];
    let mut velocity = [0.0; 2];
    for axis in 0..2 {
        mean[axis] = track.iter().map(|p| p[axis]).sum::<f64>() / f as f64;
        velocity[axis] = track
            .iter()
            .enumerate()
            .map(|(i, p)| t(i) * p[axis])
            .sum::<f64>()
            / tt;
    }
    let residual = (track
        .iter()
        .enumerate()
        .map(|(i, p)| {
            (0..2)
                .map(|axis| (p[axis] - mean[axis] - velocity[axis] * t(i)).powi(2))
                .sum::<f64>()
        })
        .sum::<f64>()
        / f as f64)
        .sqrt();
    let speed = velocity[0].hypot(velocity[1]);
    let tau = 0.12 * h.min(w) as f64 / (f - 1) as f64;
    (speed / (speed + residual + tau)) as f32
}

/// Whether [`motion_quality`] reaches [`GOOD_THRESHOLD`].
pub fn is_good(latent: &[f32], shape: [usize; 4]) -> bool {
    motion_quality(latent, shape) >= GOOD_THRESHOLD
}

/// The blobs' position `[row, col]` per frame (see [`motion_quality`]); `None` when a frame
/// holds no energy above its floor (an empty or constant clip).
fn centroid_track(latent: &[f32], shape: [usize; 4]) -> Option<Vec<[f64; 2]>> {
    let [c, f, h, w] = shape;
    if c == 0 || f == 0 || h == 0 || w == 0 {
        return None;
    }
    let energy = blob_energy(latent, c, f * h * w);
    energy
        .chunks_exact(h * w)
        .map(|frame| {
            let floor = median(frame.to_vec());
            let (mut total, mut row, mut col) = (0.0f64, 0.0f64, 0.0f64);
            for (i, &e) in frame.iter().enumerate() {
                let weight = ((e - floor).max(0.0) as f64).powi(2);
                total += weight;
                row += weight * (i / w) as f64;
                col += weight * (i % w) as f64;
            }
            (total > 0.0 && total.is_finite()).then(|| [row / total, col / total])
        })
        .collect()
}

/// Blob channel signatures, as many as a clip may hold: the energy is measured in their span.
const SIGNATURES: usize = 2;

/// Per pixel `[F, H, W]`, the energy of the latent within the span of the dominant channel
/// directions. The blobs' signatures are unknown, but across the clip they dominate the
/// channel covariance, so its top eigenvectors recover their span; projecting on it keeps the
/// blobs whole while the isotropic background noise keeps only `SIGNATURES` of its `C`
/// dimensions.
fn blob_energy(latent: &[f32], c: usize, plane: usize) -> Vec<f32> {
    // The per-channel median is the background level (blobs cover a minority of pixels).
    let centres: Vec<f32> = latent
        .chunks_exact(plane)
        .map(|ch| median(ch.to_vec()))
        .collect();
    let centred = |ch: usize, i: usize| (latent[ch * plane + i] - centres[ch]) as f64;
    let mut cov = vec![0.0f64; c * c];
    for i in 0..plane {
        for a in 0..c {
            let xa = centred(a, i);
            for b in a..c {
                cov[a * c + b] += xa * centred(b, i);
            }
        }
    }
    for a in 0..c {
        for b in 0..a {
            cov[a * c + b] = cov[b * c + a];
        }
    }
    let axes = top_eigenvectors(&mut cov, c, SIGNATURES.min(c));
    (0..plane)
        .map(|i| {
            axes.iter()
                .map(|axis| {
                    let p: f64 = axis
                        .iter()
                        .enumerate()
                        .map(|(ch, v)| v * centred(ch, i))
                        .sum();
                    p * p
                })
                .sum::<f64>() as f32
        })
        .collect()
}

/// The `k` leading eigenvectors of the symmetric `n x n` matrix `m` (power iteration with
/// deflation; `m` is deflated in place). Deterministic: every iteration starts from the same
/// vector.
fn top_eigenvectors(m: &mut [f64], n: usize, k: usize) -> Vec<Vec<f64>> {
    let mut out = Vec::with_capacity(k);
    for _ in 0..k {
        // A start with every component non-zero and distinct, so it is not orthogonal to the
        // leading eigenvector in any but contrived cases.
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

fn median(mut v: Vec<f32>) -> f32 {
    let mid = v.len() / 2;
    *v.select_nth_unstable_by(mid, f32::total_cmp).1
}

/// Signature `index` of the world's fixed palette: unit normal entries from a stream of
/// `prompt_seed`, rescaled to an RMS of 1 per channel (so no colour is nearly invisible).
fn palette_signature(cfg: &WorldConfig, index: usize) -> Vec<f32> {
    let stream = (index as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
    let mut rng = Rng::seed_from_u64(cfg.prompt_seed ^ stream);
    let mut signature = vec![0.0f32; cfg.channels];
    rng.fill_normal(&mut signature);
    let rms = (signature.iter().map(|v| v * v).sum::<f32>() / cfg.channels as f32).sqrt();
    signature.iter_mut().for_each(|v| *v /= rms.max(1e-6));
    signature
}

fn bad_motion(rng: &mut Rng) -> Motion {
    if rng.uniform_f32() < 0.5 {
        Motion::Frozen
    } else {
        Motion::Jitter
    }
}

/// What stays the same across a clip's frames (and across the two clips of a pair).
struct Scene {
    blobs: Vec<Blob>,
    /// Per-channel offset of the whole clip (its "scene colour").
    background: Vec<f32>,
}

struct Blob {
    /// Standard deviation in cells.
    sigma: f32,
    /// Per-channel amplitude: a random signature, about unit per channel.
    signature: Vec<f32>,
    /// Position relative to the group's centre, `[row, col]` in cells.
    offset: [f32; 2],
}

/// Draws a scene and, for each motion, a group-centre track `[row, col]` per frame that keeps
/// every blob at least one standard deviation inside the frame (a blob cut by the border would
/// bend its centroid track and blur the rule). Two-blob scenes that do not fit are redrawn, and
/// after a few tries a single blob is used, which always fits.
fn draw_scene_and_tracks(
    cfg: &WorldConfig,
    rng: &mut Rng,
    motions: &[Motion],
    direction: [f32; 2],
) -> (Scene, Vec<Vec<[f32; 2]>>) {
    cfg.validate().expect("invalid synthetic world");
    let ext = cfg.extent();
    for attempt in 0.. {
        let two = cfg.max_blobs >= 2 && attempt < 16 && rng.uniform_f32() < 0.5;
        let n_blobs = if two { 2 } else { 1 };
        let blobs: Vec<Blob> = (0..n_blobs)
            .map(|b| {
                let sigma = ext * uniform(rng, 0.10, 0.16);
                let signature = match cfg.palette {
                    None => {
                        let mut signature = vec![0.0; cfg.channels];
                        rng.fill_normal(&mut signature);
                        signature
                    }
                    Some(k) => palette_signature(cfg, below(rng, k)),
                };
                let offset = if b == 0 {
                    [0.0, 0.0]
                } else {
                    let angle = uniform(rng, 0.0, std::f32::consts::TAU);
                    let len = ext * uniform(rng, 0.2, 0.3);
                    [len * angle.sin(), len * angle.cos()]
                };
                Blob {
                    sigma,
                    signature,
                    offset,
                }
            })
            .collect();
        let margin = blobs.iter().map(|b| b.sigma).fold(0.0, f32::max);
        let bounds = [
            (margin, cfg.height as f32 - 1.0 - margin),
            (margin, cfg.width as f32 - 1.0 - margin),
        ];
        let tracks: Option<Vec<_>> = motions
            .iter()
            .map(|&m| {
                let relative = relative_track(cfg, rng, m, direction);
                place(rng, &relative, &blobs, bounds)
            })
            .collect();
        if let Some(tracks) = tracks {
            let mut background = vec![0.0; cfg.channels];
            rng.fill_normal(&mut background);
            background.iter_mut().for_each(|x| *x *= cfg.background_std);
            return (Scene { blobs, background }, tracks);
        }
    }
    unreachable!("a single blob always fits")
}

/// The group centre's displacement per frame, relative to its mean position.
fn relative_track(
    cfg: &WorldConfig,
    rng: &mut Rng,
    motion: Motion,
    direction: [f32; 2],
) -> Vec<[f32; 2]> {
    let ext = cfg.extent();
    let frames = cfg.frames;
    match motion {
        Motion::Frozen => vec![[0.0, 0.0]; frames],
        Motion::Smooth => {
            // A third to a half of the frame over the clip, within 15 degrees of the prompt.
            let travel = ext * uniform(rng, 0.3, 0.45);
            let turn = uniform(rng, -15.0, 15.0).to_radians();
            let (sin, cos) = turn.sin_cos();
            let dir = [
                direction[0] * cos - direction[1] * sin,
                direction[0] * sin + direction[1] * cos,
            ];
            let step = travel / (frames - 1) as f32;
            let mid = (frames - 1) as f32 / 2.0;
            (0..frames)
                .map(|f| {
                    let t = (f as f32 - mid) * step;
                    [dir[0] * t, dir[1] * t]
                })
                .collect()
        }
        Motion::Jitter => {
            // Independent points in a disc, each at least half the radius from the previous one,
            // so every frame visibly jumps.
            let radius = ext * uniform(rng, 0.1, 0.2);
            let mut track: Vec<[f32; 2]> = Vec::with_capacity(frames);
            while track.len() < frames {
                let r = radius * rng.uniform_f32().sqrt();
                let a = uniform(rng, 0.0, std::f32::consts::TAU);
                let p = [r * a.sin(), r * a.cos()];
                let far_enough = track
                    .last()
                    .map_or(true, |q| (p[0] - q[0]).hypot(p[1] - q[1]) >= 0.5 * radius);
                if far_enough {
                    track.push(p);
                }
            }
            track
        }
    }
}

/// Picks a mean position so every blob stays within `bounds` (per axis, inclusive) on every
/// frame; `None` if the motion and the blob layout do not fit.
fn place(
    rng: &mut Rng,
    relative: &[[f32; 2]],
    blobs: &[Blob],
    bounds: [(f32, f32); 2],
) -> Option<Vec<[f32; 2]>> {
    let mut centre = [0.0f32; 2];
    for axis in 0..2 {
        let coords = relative
            .iter()
            .flat_map(|p| blobs.iter().map(move |b| p[axis] + b.offset[axis]));
        let (lo, hi) = coords.fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), x| {
            (lo.min(x), hi.max(x))
        });
        let (min_c, max_c) = (bounds[axis].0 - lo, bounds[axis].1 - hi);
        if min_c > max_c {
            return None;
        }
        centre[axis] = uniform(rng, min_c, max_c);
    }
    Some(
        relative
            .iter()
            .map(|p| [centre[0] + p[0], centre[1] + p[1]])
            .collect(),
    )
}

/// Renders blobs at the track's positions over background and noise, then normalises the clip.
fn render(cfg: &WorldConfig, rng: &mut Rng, scene: &Scene, track: &[[f32; 2]]) -> Vec<f32> {
    let [c, f, h, w] = cfg.shape();
    let plane = h * w;
    // Blob profiles per frame: profile[(b * f + frame) * plane + pixel].
    let mut profile = vec![0.0f32; scene.blobs.len() * f * plane];
    for (b, blob) in scene.blobs.iter().enumerate() {
        let inv = 1.0 / (2.0 * blob.sigma * blob.sigma);
        for (frame, centre) in track.iter().enumerate() {
            let (row, col) = (centre[0] + blob.offset[0], centre[1] + blob.offset[1]);
            let out = &mut profile[(b * f + frame) * plane..][..plane];
            for (i, p) in out.iter_mut().enumerate() {
                let (dy, dx) = ((i / w) as f32 - row, (i % w) as f32 - col);
                *p = (-(dy * dy + dx * dx) * inv).exp();
            }
        }
    }
    let mut latent = vec![0.0f32; c * f * plane];
    rng.fill_normal(&mut latent);
    for (ch, chan) in latent.chunks_exact_mut(f * plane).enumerate() {
        for (frame, px) in chan.chunks_exact_mut(plane).enumerate() {
            for (i, x) in px.iter_mut().enumerate() {
                let blobs: f32 = scene
                    .blobs
                    .iter()
                    .enumerate()
                    .map(|(b, blob)| blob.signature[ch] * profile[(b * f + frame) * plane + i])
                    .sum();
                *x = scene.background[ch] + blobs + cfg.noise_std * *x;
            }
        }
    }
    normalise(&mut latent);
    latent
}

/// Zero mean, unit variance over the whole clip (a single affine map, so the motion is kept).
fn normalise(x: &mut [f32]) {
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    let inv_std = if var > 0.0 { 1.0 / var.sqrt() } else { 1.0 };
    x.iter_mut()
        .for_each(|v| *v = ((*v as f64 - mean) * inv_std) as f32);
}

fn uniform(rng: &mut Rng, lo: f32, hi: f32) -> f32 {
    lo + (hi - lo) * rng.uniform_f32()
}

/// An in-memory batch of `size` labelled clips (no files): each is good with probability
/// `good_fraction` (its label 1) and bad otherwise (frozen or jittering, label 0), under a random
/// prompt. Deterministic in `rng`'s state. Ready for [`crate::reward::train::RewardTrainer`]
/// (`ce`) or, through its latents and text, for flow-matching pre-training.
///
/// # Panics
/// If `cfg` is invalid (see [`WorldConfig::validate`]).
pub fn clip_batch(cfg: &WorldConfig, rng: &mut Rng, size: usize, good_fraction: f32) -> Batch {
    let bad = (1.0 - good_fraction) / 2.0;
    mixed_clip_batch(cfg, rng, size, [good_fraction, bad, bad])
}

/// An in-memory batch of `size` labelled clips whose motions are drawn with the relative
/// `weights` of `[Smooth, Frozen, Jitter]` (label 1 for smooth, 0 otherwise), each under a
/// random prompt. Deterministic in `rng`'s state.
///
/// # Panics
/// If `cfg` is invalid, or the weights are negative or all zero.
pub fn mixed_clip_batch(cfg: &WorldConfig, rng: &mut Rng, size: usize, weights: [f32; 3]) -> Batch {
    let total: f32 = weights.iter().sum();
    assert!(
        weights.iter().all(|&w| w >= 0.0) && total > 0.0,
        "motion weights {weights:?}"
    );
    let per = cfg.shape().iter().product::<usize>();
    let mut latents = Vec::with_capacity(size * per);
    let mut labels = Vec::with_capacity(size);
    let mut text = Vec::with_capacity(size * cfg.text_len * cfg.text_dim);
    for _ in 0..size {
        let u = rng.uniform_f32() * total;
        let motion = if u < weights[0] {
            Motion::Smooth
        } else if u < weights[0] + weights[1] {
            Motion::Frozen
        } else {
            Motion::Jitter
        };
        let prompt = below(rng, PROMPTS.len());
        latents.extend(generate_clip_with(cfg, rng, motion, prompt));
        labels.push(if motion.is_good() { 1.0 } else { 0.0 });
        text.extend(prompt_states(cfg, prompt));
    }
    Batch {
        indices: (0..size).collect(),
        shape: cfg.shape(),
        latents: BatchLatents::Clips { latents, labels },
        text,
        text_len: cfg.text_len,
        text_dim: cfg.text_dim,
        i2v: None,
    }
}

/// An in-memory batch of `size` preference pairs (see [`generate_pair`]): the same scene moving
/// smoothly (`win`) and frozen or jittering (`lose`) under a random prompt. Ready for
/// [`crate::reward::train::RewardTrainer`]'s Bradley-Terry (`bt`) objective.
///
/// # Panics
/// If `cfg` is invalid (see [`WorldConfig::validate`]).
pub fn pair_batch(cfg: &WorldConfig, rng: &mut Rng, size: usize) -> Batch {
    let per = cfg.shape().iter().product::<usize>();
    let mut win = Vec::with_capacity(size * per);
    let mut lose = Vec::with_capacity(size * per);
    let mut text = Vec::with_capacity(size * cfg.text_len * cfg.text_dim);
    for _ in 0..size {
        let (w, l, states) = generate_pair(cfg, rng);
        win.extend_from_slice(&w);
        lose.extend_from_slice(&l);
        text.extend_from_slice(&states);
    }
    Batch {
        indices: (0..size).collect(),
        shape: cfg.shape(),
        latents: BatchLatents::Pairs { win, lose },
        text,
        text_len: cfg.text_len,
        text_dim: cfg.text_dim,
        i2v: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_classifies_generated_clips() {
        let cfg = WorldConfig::default();
        let mut rng = Rng::seed_from_u64(11);
        let n = 400;
        let mut correct = 0;
        let mut per_motion = [(0, 0); 3];
        for i in 0..n {
            let motion = [Motion::Smooth, Motion::Frozen, Motion::Jitter][i % 3];
            let latent = generate_clip_with(&cfg, &mut rng, motion, i % PROMPTS.len());
            let ok = is_good(&latent, cfg.shape()) == motion.is_good();
            correct += ok as usize;
            per_motion[i % 3].0 += ok as usize;
            per_motion[i % 3].1 += 1;
        }
        let accuracy = correct as f64 / n as f64;
        assert!(
            accuracy >= 0.95,
            "rule accuracy {accuracy} (smooth, frozen, jitter: {per_motion:?})"
        );
    }

    #[test]
    fn the_rule_holds_on_a_larger_longer_world() {
        let cfg = WorldConfig {
            frames: 9,
            height: 16,
            width: 24,
            ..WorldConfig::default()
        };
        let mut rng = Rng::seed_from_u64(12);
        let n = 90;
        let correct = (0..n)
            .filter(|&i| {
                let good = i % 2 == 0;
                let (latent, _) = generate_clip(&cfg, &mut rng, good);
                is_good(&latent, cfg.shape()) == good
            })
            .count();
        assert!(correct as f64 / n as f64 >= 0.95, "{correct} of {n}");
    }

    #[test]
    fn clips_are_normalised_and_deterministic() {
        let cfg = WorldConfig::default();
        let (a, text) = generate_clip(&cfg, &mut Rng::seed_from_u64(5), true);
        let (b, _) = generate_clip(&cfg, &mut Rng::seed_from_u64(5), true);
        assert_eq!(a, b);
        assert_eq!(a.len(), cfg.shape().iter().product::<usize>());
        assert_eq!(text.len(), cfg.text_len * cfg.text_dim);
        let n = a.len() as f32;
        let mean = a.iter().sum::<f32>() / n;
        let var = a.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / n;
        assert!(
            mean.abs() < 1e-4 && (var - 1.0).abs() < 1e-3,
            "{mean} {var}"
        );
    }

    #[test]
    fn smooth_clips_move_in_the_prompted_direction() {
        let cfg = WorldConfig::default();
        let mut rng = Rng::seed_from_u64(6);
        for prompt in 0..PROMPTS.len() {
            let latent = generate_clip_with(&cfg, &mut rng, Motion::Smooth, prompt);
            let track = centroid_track(&latent, cfg.shape()).unwrap();
            let (first, last) = (track[0], track[cfg.frames - 1]);
            let dir = prompt_direction(prompt).map(f64::from);
            let along = (last[0] - first[0]) * dir[0] + (last[1] - first[1]) * dir[1];
            assert!(along > 1.0, "prompt {prompt}: moved {along} cells along it");
        }
    }

    #[test]
    fn pairs_share_the_blobs_and_differ_in_motion() {
        let cfg = WorldConfig::default();
        let mut rng = Rng::seed_from_u64(7);
        let mut good_wins = 0;
        for _ in 0..40 {
            let (win, lose, _) = generate_pair(&cfg, &mut rng);
            good_wins += (is_good(&win, cfg.shape()) && !is_good(&lose, cfg.shape())) as usize;
        }
        assert!(
            good_wins >= 36,
            "{good_wins} of 40 pairs ordered by the rule"
        );
    }

    #[test]
    fn prompts_are_fixed_by_the_seed() {
        let cfg = WorldConfig::default();
        assert_eq!(prompt_states(&cfg, 1), prompt_states(&cfg, 1));
        assert_ne!(prompt_states(&cfg, 0), prompt_states(&cfg, 1));
        let other = WorldConfig {
            prompt_seed: 1,
            ..cfg.clone()
        };
        assert_ne!(prompt_states(&cfg, 0), prompt_states(&other, 0));
    }

    #[test]
    fn invalid_worlds_are_rejected() {
        for cfg in [
            WorldConfig {
                frames: 3,
                ..WorldConfig::default()
            },
            WorldConfig {
                height: 9,
                ..WorldConfig::default()
            },
            WorldConfig {
                width: 6,
                ..WorldConfig::default()
            },
        ] {
            assert!(cfg.validate().is_err(), "{cfg:?}");
        }
        assert_eq!(motion_quality(&[0.0; 16 * 2 * 8 * 8], [16, 2, 8, 8]), 0.0);
    }
}
