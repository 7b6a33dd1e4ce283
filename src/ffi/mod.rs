//! The C ABI (declared in `include/prfl.h`, generated from this module by cbindgen).
//!
//! Layered like rustls-ffi and wasmtime's C API: a thin `extern "C"` surface over safe Rust.
//!
//! - [`api`]: the `extern "C"` functions. Each one checks its raw arguments (null, alignment,
//!   lengths) through [`args`], then calls the safe [`runtime`], inside the panic barrier of
//!   [`status::guard`]. No logic lives there.
//! - [`status`]: status codes, the thread-local last-error message, the mapping from
//!   [`crate::Error`], and the panic barrier.
//! - [`config`]: the `#[repr(C)]` configuration, read struct-size aware, and its validation.
//! - [`types`]: the other `#[repr(C)]` types (step and queue statistics, step mode, sampling
//!   configuration and statistics, solver).
//! - [`args`]: turning C arguments (pointers, lengths, strings, sized output structs) into Rust
//!   values; most of the layer's `unsafe` is here.
//! - [`queue`]: the bounded lock-free sample queue with preallocated slots.
//! - [`batch`]: assembling the samples a step takes into the trainers' batch layouts.
//! - [`generator`]: the generator checkpoint a runtime holds (a file, or bytes from memory).
//! - [`runtime`]: the safe runtime: models, trainers, steps, scoring.
//! - [`worker`]: the background trainer thread.
//! - [`persist`]: saving and loading the trainers' checkpoints as one atomic set.
//! - [`log`]: routing the `log` crate to the host's callback.
//! - [`testing`]: hooks for the crate's own tests (hidden; not part of the C ABI).

// Every unsafe operation gets its own block and SAFETY comment, even inside `unsafe fn`.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod api;
pub mod args;
pub mod batch;
pub mod config;
pub mod generator;
pub mod log;
pub mod persist;
pub mod queue;
pub mod runtime;
pub mod status;
#[doc(hidden)]
pub mod testing;
pub mod types;
pub mod worker;

pub use config::{PrflBackpressure, PrflConfig, PrflDevice, PrflRewardLoss, PRFL_ABI_VERSION};
pub use log::PrflLogCallback;
pub use runtime::PrflRuntime;
pub use status::PrflStatus;
pub use types::{
    PrflQueueStats, PrflSampleConfig, PrflSampleStats, PrflSolver, PrflStepMode, PrflStepStats,
};
