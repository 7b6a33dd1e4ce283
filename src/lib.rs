//! prfl: latent-space reward models (PAVRM) and process reward feedback learning (PRFL) for
//! Wan2.1 video diffusion transformers.
//!
//! Layout (one concern per module):
//! - [`tensor`]: host-side storage dtypes (f32 / bf16 / f16 through `half`).
//! - [`backend`]: the device abstraction; [`backend::cpu`] is the executable specification.
//! - [`model`]: the Wan2.1 DiT (configuration, checkpoints, forward and backward).
//! - [`schedule`]: flow-matching noise levels and the Euler / UniPC samplers.
//! - [`synthetic`]: a procedural world of latent videos with rule-known motion quality.
//! - [`error`]: the crate's error type (the C ABI maps it to status codes).

pub mod backend;
pub mod demo;
pub mod error;
pub mod ffi;
pub mod finetune;
pub mod interop;
pub mod model;
pub mod optim;
pub mod reward;
pub mod schedule;
pub mod synthetic;
pub mod tensor;
#[doc(hidden)]
pub mod testutil;

pub use error::{Error, Result};
