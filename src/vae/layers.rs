//! The VAE's layers over [`Video`] chunks, with the reference's convolution feature cache
//! (`feat_cache` in diffusers): each causal convolution keeps the last `CACHE_T = 2` frames of
//! its input, so that a chunk sees the frames before it exactly as if the whole video were
//! processed at once, while memory holds one chunk.
//!
//! The compute is in [`crate::backend::cpu`] (`conv3d`, `vae_norm`, `vae_resample`,
//! `vae_attention`); this module is the wiring and the cache bookkeeping.

use super::video::Video;
use super::weights::WeightSet;
use crate::backend::cpu::conv3d::{conv3d_forward, Conv3dShape};
use crate::backend::cpu::vae_attention::vae_attention;
use crate::backend::cpu::vae_norm::vae_rms_norm;
use crate::backend::cpu::vae_resample::{
    downsample_2x_pads, interleave_time_pairs, upsample_nearest_2x,
};
use crate::Result;

/// Frames a causal convolution keeps from one chunk for the next (the reference's `CACHE_T`).
pub const CACHE_T: usize = 2;

/// One layer's cache entry, as the reference's `feat_cache[idx]`.
#[derive(Clone, Debug, Default)]
pub enum Slot {
    /// Nothing seen yet (`None`).
    #[default]
    Empty,
    /// The temporal upsampler saw its first chunk and passed it through (`"Rep"`).
    Rep,
    /// The last frames of the layer's input.
    Frames(Video),
}

/// The caches of every causal layer of an encoder or decoder, visited in a fixed order per chunk
/// (the reference's `feat_cache` list and `feat_idx` counter).
#[derive(Debug, Default)]
pub struct FeatCache {
    slots: Vec<Slot>,
    next: usize,
}

impl FeatCache {
    /// Rewinds to the first layer (before each chunk).
    pub fn start_chunk(&mut self) {
        self.next = 0;
    }

    /// The next layer's slot.
    pub fn next_slot(&mut self) -> &mut Slot {
        if self.next == self.slots.len() {
            self.slots.push(Slot::Empty);
        }
        self.next += 1;
        &mut self.slots[self.next - 1]
    }
}

/// A convolution's geometry: `kernel`/`stride` in (t, h, w); `causal_t` zero frames before
/// the input (none after); spatial zero padding (top, bottom, left, right). `conv2d` says the
/// weight is torch's 4-D `[Co, Ci, kh, kw]` (`kernel[0]` is then 1).
#[derive(Clone, Copy, Debug)]
pub struct ConvGeometry {
    pub kernel: [usize; 3],
    pub stride: [usize; 3],
    pub causal_t: usize,
    pub pads: (usize, usize, usize, usize),
    pub conv2d: bool,
}

impl ConvGeometry {
    /// diffusers' `WanCausalConv3d(k, padding=p)` with a cubic kernel: `2p` causal frames, `p`
    /// on each side spatially.
    pub fn causal(k: usize, p: usize) -> ConvGeometry {
        ConvGeometry {
            kernel: [k, k, k],
            stride: [1, 1, 1],
            causal_t: 2 * p,
            pads: (p, p, p, p),
            conv2d: false,
        }
    }
    /// `nn.Conv2d(k, padding=p)` applied to every frame.
    pub fn conv2d(k: usize, p: usize) -> ConvGeometry {
        ConvGeometry {
            kernel: [1, k, k],
            stride: [1, 1, 1],
            causal_t: 0,
            pads: (p, p, p, p),
            conv2d: true,
        }
    }
}

/// A convolution with its weights.
#[derive(Debug)]
pub struct Conv {
    c_in: usize,
    c_out: usize,
    geo: ConvGeometry,
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl Conv {
    /// Takes `<prefix>.weight` and `<prefix>.bias`.
    pub fn load(
        ws: &mut WeightSet,
        prefix: &str,
        c_in: usize,
        c_out: usize,
        geo: ConvGeometry,
    ) -> Result<Conv> {
        let [kt, kh, kw] = geo.kernel;
        let shape: Vec<usize> = if geo.conv2d {
            vec![c_out, c_in, kh, kw]
        } else {
            vec![c_out, c_in, kt, kh, kw]
        };
        Ok(Conv {
            c_in,
            c_out,
            geo,
            weight: ws.take(&format!("{prefix}.weight"), &shape)?,
            bias: ws.take(&format!("{prefix}.bias"), &[c_out])?,
        })
    }

    /// The convolution of `history` (cached frames, used only by a causally padded kernel, as
    /// the reference's `cache_x`) followed by `x`.
    pub fn forward(&self, x: &Video, history: Option<&Video>) -> Video {
        let joined;
        let (input, pad_front) = match history {
            Some(h) if self.geo.causal_t > 0 && h.t > 0 => {
                joined = Video::concat_time(&[h, x]).unwrap_or_else(|_| x.clone());
                (&joined, self.geo.causal_t.saturating_sub(h.t))
            }
            _ => (x, self.geo.causal_t),
        };
        let (pt, pb, pl, pr) = self.geo.pads;
        let s = Conv3dShape {
            c_in: self.c_in,
            c_out: self.c_out,
            t: input.t,
            h: input.h,
            w: input.w,
            kt: self.geo.kernel[0],
            kh: self.geo.kernel[1],
            kw: self.geo.kernel[2],
            st: self.geo.stride[0],
            sh: self.geo.stride[1],
            sw: self.geo.stride[2],
            pad_front,
            pad_top: pt,
            pad_bottom: pb,
            pad_left: pl,
            pad_right: pr,
        };
        let (t, h, w) = s.out_dims();
        let mut y = Video::zeros(self.c_out, t, h, w);
        conv3d_forward(&input.data, &s, &self.weight, &self.bias, &mut y.data);
        y
    }

    /// The reference's cached call (`cache_x = x[:, :, -CACHE_T:]`, topped up with the previous
    /// cache's last frame when the chunk has a single frame; then `conv(x, feat_cache[idx])`).
    pub fn forward_cached(&self, x: &Video, slot: &mut Slot) -> Video {
        let old = std::mem::take(slot);
        let mut cache = x.last_frames(CACHE_T);
        let history = match &old {
            Slot::Frames(prev) => {
                if cache.t < CACHE_T {
                    let last = prev.last_frames(1);
                    cache = Video::concat_time(&[&last, &cache]).unwrap_or(cache);
                }
                Some(prev)
            }
            _ => None,
        };
        let y = self.forward(x, history);
        *slot = Slot::Frames(cache);
        y
    }
}

/// `WanRMS_norm` over channels (see `vae_norm`), with or without the SiLU that follows it.
#[derive(Debug)]
pub struct RmsNorm {
    gamma: Vec<f32>,
}

impl RmsNorm {
    /// Takes `<prefix>.gamma` (`[C, 1, 1, 1]` for videos, `[C, 1, 1]` for the attention's
    /// per-frame images).
    pub fn load(ws: &mut WeightSet, prefix: &str, c: usize, images: bool) -> Result<RmsNorm> {
        let shape: &[usize] = if images { &[c, 1, 1] } else { &[c, 1, 1, 1] };
        Ok(RmsNorm {
            gamma: ws.take(&format!("{prefix}.gamma"), shape)?,
        })
    }

    /// In place; `silu` applies SiLU after the norm.
    pub fn apply(&self, x: &mut Video, silu: bool) {
        let m = x.t * x.plane();
        vae_rms_norm(&mut x.data, x.c, m, &self.gamma, silu);
    }
}

/// `WanResidualBlock`: `shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))))))`.
#[derive(Debug)]
pub struct ResidualBlock {
    norm1: RmsNorm,
    conv1: Conv,
    norm2: RmsNorm,
    conv2: Conv,
    shortcut: Option<Conv>,
}

impl ResidualBlock {
    pub fn load(ws: &mut WeightSet, prefix: &str, c_in: usize, c_out: usize) -> Result<Self> {
        Ok(ResidualBlock {
            norm1: RmsNorm::load(ws, &format!("{prefix}.norm1"), c_in, false)?,
            conv1: Conv::load(
                ws,
                &format!("{prefix}.conv1"),
                c_in,
                c_out,
                ConvGeometry::causal(3, 1),
            )?,
            norm2: RmsNorm::load(ws, &format!("{prefix}.norm2"), c_out, false)?,
            conv2: Conv::load(
                ws,
                &format!("{prefix}.conv2"),
                c_out,
                c_out,
                ConvGeometry::causal(3, 1),
            )?,
            shortcut: if c_in != c_out {
                Some(Conv::load(
                    ws,
                    &format!("{prefix}.conv_shortcut"),
                    c_in,
                    c_out,
                    ConvGeometry::causal(1, 0),
                )?)
            } else {
                None
            },
        })
    }

    pub fn forward(&self, x: &Video, cache: &mut FeatCache) -> Video {
        let h = match &self.shortcut {
            Some(conv) => conv.forward(x, None),
            None => x.clone(),
        };
        let mut y = x.clone();
        self.norm1.apply(&mut y, true);
        let mut y = self.conv1.forward_cached(&y, cache.next_slot());
        self.norm2.apply(&mut y, true);
        let mut y = self.conv2.forward_cached(&y, cache.next_slot());
        y.add_assign(&h);
        y
    }
}

/// `WanAttentionBlock`: per frame, `x + proj(attention(to_qkv(norm(x))))` with one head over
/// the frame's positions (no state across frames or chunks).
#[derive(Debug)]
pub struct AttentionBlock {
    c: usize,
    norm: RmsNorm,
    to_qkv: Conv,
    proj: Conv,
}

impl AttentionBlock {
    pub fn load(ws: &mut WeightSet, prefix: &str, c: usize) -> Result<Self> {
        Ok(AttentionBlock {
            c,
            norm: RmsNorm::load(ws, &format!("{prefix}.norm"), c, true)?,
            to_qkv: Conv::load(
                ws,
                &format!("{prefix}.to_qkv"),
                c,
                3 * c,
                ConvGeometry::conv2d(1, 0),
            )?,
            proj: Conv::load(
                ws,
                &format!("{prefix}.proj"),
                c,
                c,
                ConvGeometry::conv2d(1, 0),
            )?,
        })
    }

    pub fn forward(&self, x: &Video) -> Video {
        let mut frames = Vec::with_capacity(x.t);
        for t in 0..x.t {
            let identity = x.frames(t, t + 1);
            let mut y = identity.clone();
            self.norm.apply(&mut y, false);
            let qkv = self.to_qkv.forward(&y, None);
            let mut att = Video::zeros(self.c, 1, x.h, x.w);
            vae_attention(&qkv.data, self.c, x.plane(), &mut att.data);
            let mut out = self.proj.forward(&att, None);
            out.add_assign(&identity);
            frames.push(out);
        }
        let refs: Vec<&Video> = frames.iter().collect();
        Video::concat_time(&refs).unwrap_or_else(|_| x.clone())
    }
}

/// `WanMidBlock` with one attention layer: residual, attention, residual.
#[derive(Debug)]
pub struct MidBlock {
    res0: ResidualBlock,
    attn: AttentionBlock,
    res1: ResidualBlock,
}

impl MidBlock {
    pub fn load(ws: &mut WeightSet, prefix: &str, c: usize) -> Result<Self> {
        Ok(MidBlock {
            res0: ResidualBlock::load(ws, &format!("{prefix}.resnets.0"), c, c)?,
            attn: AttentionBlock::load(ws, &format!("{prefix}.attentions.0"), c)?,
            res1: ResidualBlock::load(ws, &format!("{prefix}.resnets.1"), c, c)?,
        })
    }

    pub fn forward(&self, x: &Video, cache: &mut FeatCache) -> Video {
        let x = self.res0.forward(x, cache);
        let x = self.attn.forward(&x);
        self.res1.forward(&x, cache)
    }
}

/// `WanResample`'s modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResampleMode {
    Upsample2d,
    Upsample3d,
    Downsample2d,
    Downsample3d,
}

/// `WanResample`: spatial 2x (nearest up + 3x3 conv, or zero pad + stride-2 3x3 conv), and in the
/// 3-D modes a causal temporal conv that doubles (up) or halves (down) the frames.
#[derive(Debug)]
pub struct Resample {
    mode: ResampleMode,
    spatial: Conv,
    time_conv: Option<Conv>,
}

impl Resample {
    /// `dim` channels in; the upsamplers give `dim / 2` out (`upsample_out_dim`'s default).
    pub fn load(ws: &mut WeightSet, prefix: &str, dim: usize, mode: ResampleMode) -> Result<Self> {
        let (out, geo) = match mode {
            ResampleMode::Upsample2d | ResampleMode::Upsample3d => {
                (dim / 2, ConvGeometry::conv2d(3, 1))
            }
            ResampleMode::Downsample2d | ResampleMode::Downsample3d => (
                dim,
                ConvGeometry {
                    stride: [1, 2, 2],
                    pads: downsample_2x_pads(),
                    ..ConvGeometry::conv2d(3, 0)
                },
            ),
        };
        let spatial = Conv::load(ws, &format!("{prefix}.resample.1"), dim, out, geo)?;
        let time_conv = match mode {
            ResampleMode::Upsample3d => Some(Conv::load(
                ws,
                &format!("{prefix}.time_conv"),
                dim,
                2 * dim,
                ConvGeometry {
                    kernel: [3, 1, 1],
                    stride: [1, 1, 1],
                    causal_t: 2,
                    pads: (0, 0, 0, 0),
                    conv2d: false,
                },
            )?),
            ResampleMode::Downsample3d => Some(Conv::load(
                ws,
                &format!("{prefix}.time_conv"),
                dim,
                dim,
                ConvGeometry {
                    kernel: [3, 1, 1],
                    stride: [2, 1, 1],
                    causal_t: 0,
                    pads: (0, 0, 0, 0),
                    conv2d: false,
                },
            )?),
            _ => None,
        };
        Ok(Resample {
            mode,
            spatial,
            time_conv,
        })
    }

    pub fn forward(&self, x: &Video, cache: &mut FeatCache) -> Video {
        let mut x = x.clone();
        if let (ResampleMode::Upsample3d, Some(tc)) = (self.mode, &self.time_conv) {
            let slot = cache.next_slot();
            match std::mem::take(slot) {
                // The first chunk passes through at its frame count (the reference's "Rep").
                Slot::Empty => *slot = Slot::Rep,
                old => {
                    let mut keep = x.last_frames(CACHE_T);
                    if keep.t < CACHE_T {
                        let before = match &old {
                            Slot::Frames(prev) => prev.last_frames(1),
                            _ => Video::zeros(keep.c, 1, keep.h, keep.w),
                        };
                        keep = Video::concat_time(&[&before, &keep]).unwrap_or(keep);
                    }
                    let y = match &old {
                        Slot::Frames(prev) => tc.forward(&x, Some(prev)),
                        _ => tc.forward(&x, None),
                    };
                    *slot = Slot::Frames(keep);
                    let mut doubled = Video::zeros(x.c, 2 * x.t, x.h, x.w);
                    interleave_time_pairs(&y.data, x.c, x.t, x.plane(), &mut doubled.data);
                    x = doubled;
                }
            }
        }
        x = match self.mode {
            ResampleMode::Upsample2d | ResampleMode::Upsample3d => {
                let mut up = Video::zeros(x.c, x.t, 2 * x.h, 2 * x.w);
                upsample_nearest_2x(&x.data, x.c * x.t, x.h, x.w, &mut up.data);
                self.spatial.forward(&up, None)
            }
            ResampleMode::Downsample2d | ResampleMode::Downsample3d => {
                self.spatial.forward(&x, None)
            }
        };
        if let (ResampleMode::Downsample3d, Some(tc)) = (self.mode, &self.time_conv) {
            let slot = cache.next_slot();
            match std::mem::take(slot) {
                // The first chunk (one frame) passes through; its last frame is kept.
                Slot::Frames(prev) => {
                    let keep = x.last_frames(1);
                    let last = prev.last_frames(1);
                    let joined = Video::concat_time(&[&last, &x]).unwrap_or_else(|_| x.clone());
                    x = tc.forward(&joined, None);
                    *slot = Slot::Frames(keep);
                }
                _ => *slot = Slot::Frames(x.last_frames(1)),
            }
        }
        x
    }
}
