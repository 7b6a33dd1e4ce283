//! Optimisers and training checkpoints.
//!
//! - [`adamw`]: AdamW with fp32 master weights, grad-norm clipping, accumulation averaging,
//!   per-parameter learning rates, warm-up and non-finite step skipping.
//! - [`state`]: the optimiser's state as named tensors (export / import for resuming).
//! - [`checkpoint`]: one atomic safetensors file holding that state plus the trainer's metadata.
//! - [`train_loop`]: the loop every trainer shares (accumulation windows, non-finite skipping,
//!   the random stream, checkpoint save and resume); a trainer adds only its objective.
//! - [`flat_keys`]: the AdamW hyper-parameters as flat keys of a trainer's configuration table.

pub mod adamw;
pub mod checkpoint;
pub mod flat_keys;
pub mod state;
pub mod train_loop;

pub use adamw::{AdamW, AdamWConfig, StepReport};
pub use checkpoint::{
    load_training_checkpoint, save_training_checkpoint, TrainingKind, TrainingMeta, FORMAT,
};
pub use flat_keys::OptimKeys;
pub use train_loop::TrainLoop;
