//! Fine-tuning and sampling the generator: PRFL (method.md section 4) and latent sampling.

pub mod prfl;
pub mod sample;
