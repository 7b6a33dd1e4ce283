//! The C ABI (declared in `include/prfl.h`, generated from this module by cbindgen).
//!
//! Layered like rustls-ffi and wasmtime's C API: a thin `extern "C"` surface over the safe
//! [`crate::session`]. Imports only point down: `api` -> `args`, `config`, `types`, `handle`,
//! `status`, `log` -> `session` / `crate::Error`; nothing in the session knows this module.
//!
//! - [`api`]: the `extern "C"` functions. Each one checks its raw arguments (null, alignment,
//!   lengths) through [`args`], converts them, then calls the [`crate::session::Session`] inside
//!   the panic barrier of [`status::guard`]. No logic lives there.
//! - [`handle`]: the opaque `PrflRuntime` (a Box the host owns, holding the Session).
//! - [`status`]: status codes, the thread-local last-error message, the one mapping from
//!   [`crate::Error`] ([`status::map_error`]), and the panic barrier.
//! - [`config`]: the `#[repr(C)]` configuration and its validation into a
//!   [`crate::session::SessionConfig`].
//! - [`types`]: the other `#[repr(C)]` types (step and queue statistics, step mode, sampling
//!   configuration and statistics, solver) and their conversions from the session's types.
//! - [`args`]: turning C arguments (pointers, lengths, strings, sized structs) into Rust
//!   values; most of the layer's `unsafe` is here.
//! - [`log`]: routing the `log` crate to the host's callback.
//! - `testing`: hooks for the crate's own tests (the `test-hooks` feature only; not part of the
//!   C ABI).

// Every unsafe operation gets its own block and SAFETY comment, even inside `unsafe fn`.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod api;
pub mod args;
pub mod config;
pub mod handle;
pub mod log;
pub mod status;
#[cfg(feature = "test-hooks")]
#[doc(hidden)]
pub mod testing;
pub mod types;

pub use config::{PrflBackpressure, PrflConfig, PrflDevice, PrflRewardLoss, PRFL_ABI_VERSION};
pub use handle::PrflRuntime;
pub use log::PrflLogCallback;
pub use status::PrflStatus;
pub use types::{
    PrflQueueStats, PrflSampleConfig, PrflSampleStats, PrflSolver, PrflStepMode, PrflStepStats,
    PRFL_MAX_SAMPLE_STEPS,
};
