//! The Wan2.1 VAE (diffusers' `AutoencoderKLWan`, inference): the encoder and decoder stacks and
//! the reference's chunked processing: the encoder sees the first frame alone, then chunks of 4
//! frames; the decoder one latent frame at a time; the causal convolutions carry their last
//! frames across chunks ([`FeatCache`]), so memory grows with one chunk, not with the video.

use std::path::Path;

use super::config::VaeConfig;
use super::layers::{
    AttentionBlock, Conv, ConvGeometry, FeatCache, MidBlock, Resample, ResampleMode, ResidualBlock,
    RmsNorm,
};
use super::video::Video;
use super::weights::{read_diffusers_dir, read_original_pth, WeightSet};
use crate::{Error, Result};

/// One layer of the encoder's flat `down_blocks` list.
#[derive(Debug)]
enum DownLayer {
    Residual(ResidualBlock),
    Attention(AttentionBlock),
    Resample(Resample),
}

/// `WanEncoder3d`.
#[derive(Debug)]
struct Encoder {
    conv_in: Conv,
    down: Vec<DownLayer>,
    mid: MidBlock,
    norm_out: RmsNorm,
    conv_out: Conv,
}

impl Encoder {
    fn load(ws: &mut WeightSet, cfg: &VaeConfig) -> Result<Encoder> {
        let dims: Vec<usize> = std::iter::once(1)
            .chain(cfg.dim_mult.iter().copied())
            .map(|u| cfg.base_dim * u)
            .collect();
        let conv3 = ConvGeometry::causal(3, 1);
        let conv_in = Conv::load(ws, "encoder.conv_in", cfg.in_channels, dims[0], conv3)?;
        let mut down = Vec::new();
        let mut scale = 1.0f64;
        let levels = cfg.dim_mult.len();
        for i in 0..levels {
            let (mut c_in, c_out) = (dims[i], dims[i + 1]);
            for _ in 0..cfg.num_res_blocks {
                let prefix = format!("encoder.down_blocks.{}", down.len());
                down.push(DownLayer::Residual(ResidualBlock::load(
                    ws, &prefix, c_in, c_out,
                )?));
                if cfg.attn_scales.contains(&scale) {
                    let prefix = format!("encoder.down_blocks.{}", down.len());
                    down.push(DownLayer::Attention(AttentionBlock::load(
                        ws, &prefix, c_out,
                    )?));
                }
                c_in = c_out;
            }
            if i != levels - 1 {
                let mode = if cfg.temperal_downsample[i] {
                    ResampleMode::Downsample3d
                } else {
                    ResampleMode::Downsample2d
                };
                let prefix = format!("encoder.down_blocks.{}", down.len());
                down.push(DownLayer::Resample(Resample::load(
                    ws, &prefix, c_out, mode,
                )?));
                scale /= 2.0;
            }
        }
        let top = dims[levels];
        Ok(Encoder {
            conv_in,
            down,
            mid: MidBlock::load(ws, "encoder.mid_block", top)?,
            norm_out: RmsNorm::load(ws, "encoder.norm_out", top, false)?,
            conv_out: Conv::load(ws, "encoder.conv_out", top, 2 * cfg.z_dim, conv3)?,
        })
    }

    /// One chunk through the encoder, advancing the caches.
    fn forward(&self, x: &Video, cache: &mut FeatCache) -> Video {
        cache.start_chunk();
        let mut x = self.conv_in.forward_cached(x, cache.next_slot());
        for layer in &self.down {
            x = match layer {
                DownLayer::Residual(b) => b.forward(&x, cache),
                DownLayer::Attention(a) => a.forward(&x),
                DownLayer::Resample(r) => r.forward(&x, cache),
            };
        }
        let mut x = self.mid.forward(&x, cache);
        self.norm_out.apply(&mut x, true);
        self.conv_out.forward_cached(&x, cache.next_slot())
    }
}

/// One level of the decoder (`WanUpBlock`).
#[derive(Debug)]
struct UpBlock {
    resnets: Vec<ResidualBlock>,
    upsampler: Option<Resample>,
}

/// `WanDecoder3d`.
#[derive(Debug)]
struct Decoder {
    conv_in: Conv,
    mid: MidBlock,
    up: Vec<UpBlock>,
    norm_out: RmsNorm,
    conv_out: Conv,
}

impl Decoder {
    fn load(ws: &mut WeightSet, cfg: &VaeConfig) -> Result<Decoder> {
        let base = cfg.decoder_dim();
        let levels = cfg.dim_mult.len();
        let dims: Vec<usize> = std::iter::once(cfg.dim_mult[levels - 1])
            .chain(cfg.dim_mult.iter().rev().copied())
            .map(|u| base * u)
            .collect();
        let temporal = cfg.temperal_upsample();
        let conv3 = ConvGeometry::causal(3, 1);
        let conv_in = Conv::load(ws, "decoder.conv_in", cfg.z_dim, dims[0], conv3)?;
        let mid = MidBlock::load(ws, "decoder.mid_block", dims[0])?;
        let mut up = Vec::new();
        let mut c_out = dims[0];
        for i in 0..levels {
            // Wan2.1: every level after the first gets the previous upsampler's halved width.
            let mut c_in = if i > 0 { dims[i] / 2 } else { dims[i] };
            c_out = dims[i + 1];
            let mut resnets = Vec::new();
            for j in 0..=cfg.num_res_blocks {
                let prefix = format!("decoder.up_blocks.{i}.resnets.{j}");
                resnets.push(ResidualBlock::load(ws, &prefix, c_in, c_out)?);
                c_in = c_out;
            }
            let upsampler = if i != levels - 1 {
                let mode = if temporal[i] {
                    ResampleMode::Upsample3d
                } else {
                    ResampleMode::Upsample2d
                };
                let prefix = format!("decoder.up_blocks.{i}.upsamplers.0");
                Some(Resample::load(ws, &prefix, c_out, mode)?)
            } else {
                None
            };
            up.push(UpBlock { resnets, upsampler });
        }
        Ok(Decoder {
            conv_in,
            mid,
            up,
            norm_out: RmsNorm::load(ws, "decoder.norm_out", c_out, false)?,
            conv_out: Conv::load(ws, "decoder.conv_out", c_out, cfg.out_channels, conv3)?,
        })
    }

    /// One latent chunk through the decoder, advancing the caches.
    fn forward(&self, z: &Video, cache: &mut FeatCache) -> Video {
        cache.start_chunk();
        let x = self.conv_in.forward_cached(z, cache.next_slot());
        let mut x = self.mid.forward(&x, cache);
        for level in &self.up {
            for r in &level.resnets {
                x = r.forward(&x, cache);
            }
            if let Some(u) = &level.upsampler {
                x = u.forward(&x, cache);
            }
        }
        self.norm_out.apply(&mut x, true);
        self.conv_out.forward_cached(&x, cache.next_slot())
    }
}

/// The Wan2.1 video VAE, loaded for inference on the CPU.
pub struct WanVae {
    config: VaeConfig,
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Conv,
    post_quant_conv: Conv,
}

impl std::fmt::Debug for WanVae {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WanVae")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl WanVae {
    /// Loads a VAE: a diffusers directory (`config.json` + `diffusion_pytorch_model.safetensors`)
    /// or an original-layout `.pth` file (its configuration is a `config.json` beside it when
    /// there is one, else the Wan2.1 release's).
    pub fn load(path: &Path) -> Result<WanVae> {
        if path.is_dir() {
            let (config, ws) = read_diffusers_dir(path)?;
            return WanVae::from_weights(config, ws);
        }
        let beside = path.parent().map(|d| d.join("config.json"));
        let config = match beside {
            Some(c) if c.is_file() => VaeConfig::from_file(&c)?,
            _ => VaeConfig::default(),
        };
        WanVae::load_pth(path, config)
    }

    /// Loads an original-layout `.pth` state dict with the given configuration.
    pub fn load_pth(path: &Path, config: VaeConfig) -> Result<WanVae> {
        config.validate().map_err(Error::Config)?;
        let ws = read_original_pth(path, &config)?;
        WanVae::from_weights(config, ws)
    }

    /// Builds the model from tensors under diffusers' names (all of them must be used).
    pub fn from_weights(config: VaeConfig, mut ws: WeightSet) -> Result<WanVae> {
        config.validate().map_err(Error::Config)?;
        let z = config.z_dim;
        let one = ConvGeometry::causal(1, 0);
        let vae = WanVae {
            encoder: Encoder::load(&mut ws, &config)?,
            decoder: Decoder::load(&mut ws, &config)?,
            quant_conv: Conv::load(&mut ws, "quant_conv", 2 * z, 2 * z, one)?,
            post_quant_conv: Conv::load(&mut ws, "post_quant_conv", z, z, one)?,
            config,
        };
        ws.finish()?;
        Ok(vae)
    }

    /// The configuration.
    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    /// The posterior mean `[z, 1 + (T - 1) / 4, H / 8, W / 8]` of frames `[C, T, H, W]` in
    /// [-1, 1] (T = 1 + 4k; H and W multiples of 8), before the latent normalisation.
    pub fn encode_mean(&self, frames: &Video) -> Result<Video> {
        let f = self.config.spatial_factor();
        if frames.c != self.config.in_channels {
            return Err(Error::InvalidInput(format!(
                "the VAE takes {} channels, the frames have {}",
                self.config.in_channels, frames.c
            )));
        }
        if frames.t == 0 || (frames.t - 1) % 4 != 0 {
            return Err(Error::InvalidInput(format!(
                "the VAE encodes 1 + 4k frames (1, 5, 9, ..., 81), got {}",
                frames.t
            )));
        }
        if frames.h == 0 || frames.w == 0 || frames.h % f != 0 || frames.w % f != 0 {
            return Err(Error::InvalidInput(format!(
                "frame size {}x{} (H x W) is not a positive multiple of {f}",
                frames.h, frames.w
            )));
        }
        let z = self.config.z_dim;
        let mut cache = FeatCache::default();
        let mut means = Vec::with_capacity(1 + frames.t / 4);
        let mut t0 = 0;
        while t0 < frames.t {
            let t1 = if t0 == 0 { 1 } else { t0 + 4 };
            let out = self.encoder.forward(&frames.frames(t0, t1), &mut cache);
            let moments = self.quant_conv.forward(&out, None);
            means.push(moments.channels(0, z));
            t0 = t1;
        }
        let refs: Vec<&Video> = means.iter().collect();
        Video::concat_time(&refs)
    }

    /// [`WanVae::encode_mean`], normalised as the DiT expects its inputs:
    /// `(mean - latents_mean[c]) / latents_std[c]`.
    pub fn encode(&self, frames: &Video) -> Result<Video> {
        let mut z = self.encode_mean(frames)?;
        super::latent::normalise(&mut z, &self.config);
        Ok(z)
    }

    /// Frames `[C, 1 + 4 (F - 1), 8h, 8w]` in [-1, 1] (clamped, as the reference) from a raw
    /// latent `[z, F, h, w]` (the scale the encoder's mean has).
    pub fn decode_raw(&self, z: &Video) -> Result<Video> {
        self.check_latent(z)?;
        let mut cache = FeatCache::default();
        let mut chunks = Vec::with_capacity(z.t);
        for t in 0..z.t {
            let x = self.post_quant_conv.forward(&z.frames(t, t + 1), None);
            let mut out = self.decoder.forward(&x, &mut cache);
            out.data.iter_mut().for_each(|v| *v = v.clamp(-1.0, 1.0));
            chunks.push(out);
        }
        let refs: Vec<&Video> = chunks.iter().collect();
        Video::concat_time(&refs)
    }

    /// A latent's shape and values fit this VAE.
    fn check_latent(&self, z: &Video) -> Result<()> {
        if z.c != self.config.z_dim || z.t == 0 || z.h == 0 || z.w == 0 {
            return Err(Error::InvalidInput(format!(
                "a latent for this VAE is [{}, F, h, w] with F, h, w > 0, got {:?}",
                self.config.z_dim,
                z.shape()
            )));
        }
        if let Some(i) = z.data.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite(format!(
                "the latent holds a non-finite value at element {i}"
            )));
        }
        Ok(())
    }

    /// Decodes a normalised latent (the DiT's scale): `z * latents_std[c] + latents_mean[c]`,
    /// then [`WanVae::decode_raw`].
    pub fn decode(&self, latent: &Video) -> Result<Video> {
        self.check_latent(latent)?;
        let mut z = latent.clone();
        super::latent::denormalise(&mut z, &self.config);
        self.decode_raw(&z)
    }
}
