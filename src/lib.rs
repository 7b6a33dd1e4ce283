//! prfl: latent-space reward models (PAVRM) and process reward feedback learning (PRFL) for
//! Wan2.1 video diffusion transformers, with a safe Rust API ([`session`]) and a C ABI over it
//! ([`ffi`]).
//!
//! # Data flow
//!
//! ```text
//!  host threads (game, studio tool, C/C++/C#/Rust)
//!      |  Session::submit_labelled / submit_pair      (prfl_submit_* in C: ffi -> session)
//!      v
//!  session::queue  -- bounded, lock-free, preallocated slots; never blocks on training
//!      |  a step takes a batch (Session::step, or the background trainer thread)
//!      v
//!  session::train  -- reward step / PRFL step, batches assembled by session::batch
//!      |
//!      v
//!  models: reward::RewardTrainer (PAVRM cut from the generator's first blocks),
//!          finetune::PrflTrainer (the generator + a frozen reward copy), model::WanModel
//!      |  on backend::Device (CPU, or CUDA)
//!      v
//!  Session::score / select / sample (read the models meanwhile); save / load
//! ```
//!
//! # Modules (one concern each)
//! - [`tensor`]: host-side storage dtypes (f32 / bf16 / f16 through `half`).
//! - [`backend`]: the device abstraction; [`backend::cpu`] is the executable specification,
//!   [`backend::cuda`] the GPU backend.
//! - [`model`]: the Wan2.1 DiT (configuration, checkpoints, forward and backward, LoRA).
//! - [`safetensors`]: the one safetensors reader and writer (mapped files or owned bytes).
//! - [`schedule`]: flow-matching noise levels and the Euler / UniPC samplers.
//! - [`optim`]: AdamW, clipping, accumulation, training checkpoints.
//! - [`reward`]: the latent reward model, its trainer, datasets and metrics.
//! - [`finetune`]: the PRFL trainer, guided sampling, early rejection.
//! - [`interop`]: the reference implementation's files (torch pickles read without executing
//!   anything, its `.list`/`.npy` datasets, its reward models) and LoRA layouts for other tools.
//! - [`vae`]: the Wan2.1 video VAE (frames to latents and back), on the CPU.
//! - [`synthetic`]: a procedural world of latent videos with rule-known motion quality.
//! - [`session`]: the safe streaming runtime: queue, background trainer, steps, scoring,
//!   sampling, persistence. The API for Rust hosts.
//! - [`ffi`]: the C ABI (`include/prfl.h`), a thin layer over [`session`].
//! - [`demo`]: `prfl demo`, the end-to-end pipeline and its report.
//! - [`fs`]: opening the files a caller names (regular files only, never blocking).
//! - [`error`]: the crate's error type (the C ABI maps it to status codes).
//! - `testutil` (hidden): tiny model configurations for the tests and the examples.

pub mod backend;
pub mod demo;
pub mod error;
pub mod ffi;
pub mod finetune;
pub mod fs;
pub mod interop;
pub mod model;
pub mod optim;
pub mod reward;
pub mod safetensors;
pub mod schedule;
pub mod session;
pub mod synthetic;
pub mod tensor;
#[doc(hidden)]
pub mod testutil;
pub mod vae;

pub use error::{Error, Result};
