//! Fine-tuning and sampling the generator: PRFL (method.md section 4) and latent sampling.

pub mod early_reject;
pub mod flow_step;
pub mod pretrain;
pub mod prfl;
pub mod sample;
