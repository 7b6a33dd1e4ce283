//! The VAE's configuration: diffusers' `AutoencoderKLWan` `config.json` (the Wan2.1 fields), with
//! the release's values as defaults, and the structure it implies (channel widths per level).

use std::path::Path;

use serde::Deserialize;

use crate::{Error, Result};

/// The fields of `vae/config.json` the Wan2.1 VAE uses (unknown fields are ignored; the Wan2.2
/// options `is_residual` and `patch_size` are refused by [`VaeConfig::validate`]).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default)]
pub struct VaeConfig {
    pub base_dim: usize,
    pub decoder_base_dim: Option<usize>,
    pub z_dim: usize,
    pub dim_mult: Vec<usize>,
    pub num_res_blocks: usize,
    pub attn_scales: Vec<f64>,
    pub temperal_downsample: Vec<bool>,
    pub latents_mean: Vec<f32>,
    pub latents_std: Vec<f32>,
    pub is_residual: bool,
    pub in_channels: usize,
    pub out_channels: usize,
    pub patch_size: Option<usize>,
}

impl Default for VaeConfig {
    /// The Wan2.1 release (`Wan2.1_VAE.pth`, `Wan-AI/Wan2.1-T2V-*-Diffusers/vae`).
    fn default() -> Self {
        VaeConfig {
            base_dim: 96,
            decoder_base_dim: None,
            z_dim: 16,
            dim_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
            attn_scales: vec![],
            temperal_downsample: vec![false, true, true],
            latents_mean: vec![
                -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134,
                -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
            ],
            latents_std: vec![
                2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526,
                2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
            ],
            is_residual: false,
            in_channels: 3,
            out_channels: 3,
            patch_size: None,
        }
    }
}

impl VaeConfig {
    /// Reads and validates a diffusers `config.json`.
    pub fn from_file(path: &Path) -> Result<VaeConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let cfg: VaeConfig = serde_json::from_str(&text)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        cfg.validate()
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        Ok(cfg)
    }

    /// Checks that the configuration is a Wan2.1 VAE this engine runs (the message says which
    /// field is wrong).
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.is_residual {
            return Err("is_residual = true (the Wan2.2 VAE) is not supported".into());
        }
        if self.patch_size.is_some_and(|p| p != 1) {
            return Err("patch_size (the Wan2.2 VAE) is not supported".into());
        }
        if self.dim_mult.len() < 2 {
            return Err("dim_mult needs at least two levels".into());
        }
        if self.temperal_downsample.len() + 1 != self.dim_mult.len() {
            return Err(format!(
                "temperal_downsample has {} entries, dim_mult {} (one fewer expected)",
                self.temperal_downsample.len(),
                self.dim_mult.len()
            ));
        }
        // The chunking (one frame, then 4) is the reference's for exactly two temporal halvings.
        if self.temperal_downsample.iter().filter(|t| **t).count() != 2 {
            return Err("temperal_downsample must halve time exactly twice (4x)".into());
        }
        if self.base_dim == 0 || self.z_dim == 0 || self.num_res_blocks == 0 {
            return Err("base_dim, z_dim and num_res_blocks must be positive".into());
        }
        if self.decoder_base_dim == Some(0) || self.in_channels == 0 || self.out_channels == 0 {
            return Err("decoder_base_dim, in_channels and out_channels must be positive".into());
        }
        if self.latents_mean.len() != self.z_dim || self.latents_std.len() != self.z_dim {
            return Err(format!(
                "latents_mean / latents_std have {} / {} entries, z_dim is {}",
                self.latents_mean.len(),
                self.latents_std.len(),
                self.z_dim
            ));
        }
        if self
            .latents_std
            .iter()
            .any(|s| !(s.is_finite() && *s > 0.0))
        {
            return Err("latents_std must be positive".into());
        }
        Ok(())
    }

    /// Spatial compression (2 per level but the last).
    pub fn spatial_factor(&self) -> usize {
        1 << (self.dim_mult.len() - 1)
    }

    /// The decoder's temporal upsampling per level (the encoder's list reversed).
    pub fn temperal_upsample(&self) -> Vec<bool> {
        self.temperal_downsample.iter().rev().copied().collect()
    }

    /// The decoder's base width.
    pub fn decoder_dim(&self) -> usize {
        self.decoder_base_dim.unwrap_or(self.base_dim)
    }
}
