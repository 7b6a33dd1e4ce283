//! The Wan2.1 video VAE (diffusers' `AutoencoderKLWan`) for inference on the CPU: frames in,
//! latents out for the DiT, and latents back to frames for previews. prfl itself works in latent
//! space; the VAE is the way in and the way out (issue 14).
//!
//! - [`config`]: `config.json` (the release's values as defaults) and its validation;
//! - [`weights`]: loading the diffusers layout and the original `Wan2.1_VAE.pth` (with the
//!   original -> diffusers name mapping); errors name the file and the tensor;
//! - [`layers`]: causal convolutions with the feature cache, RMS norm, residual blocks,
//!   resampling, the middle attention;
//! - [`model`]: the encoder and decoder and their chunked processing ([`WanVae`]);
//! - [`latent`]: the per-channel latent normalisation the DiT expects;
//! - [`video`]: the channel-first `[C, T, H, W]` tensor the layers pass around.
//!
//! The ops are CPU functions in [`crate::backend::cpu`] (`conv3d`, `vae_norm`, `vae_resample`,
//! `vae_attention`), multi-threaded with rayon. Phase 2 of the issue puts them on the `Backend`
//! trait with CUDA kernels; until then the VAE runs on the CPU whatever the session's device.

pub mod config;
pub mod latent;
pub mod layers;
pub mod model;
pub mod video;
pub mod weights;

pub use config::VaeConfig;
pub use model::WanVae;
pub use video::Video;
