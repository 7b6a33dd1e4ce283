//! Optimisers and training checkpoints.
//!
//! - [`adamw`]: AdamW with fp32 master weights, grad-norm clipping, accumulation averaging,
//!   per-parameter learning rates, warm-up and non-finite step skipping.
//! - [`state`]: the optimiser's state as named tensors (export / import for resuming).
//! - [`checkpoint`]: one atomic safetensors file holding that state plus the trainer's metadata.

pub mod adamw;
pub mod checkpoint;
pub mod state;

pub use adamw::{AdamW, AdamWConfig, StepReport};
pub use checkpoint::{
    load_training_checkpoint, save_training_checkpoint, TrainingKind, TrainingMeta, FORMAT,
};
