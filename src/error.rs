//! One error type for the whole crate. Every variant names what went wrong precisely enough that a
//! host application can show it to a user; the C ABI maps each variant to a status code in one
//! place (`ffi::status::map_error`).
//!
//! The variants below `InvalidInput` are the session's ([`crate::session`]): their messages are
//! shown as they are (no prefix), because the C ABI hands the same text to its hosts.

use std::path::PathBuf;

/// What went wrong, for every fallible call of the crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be read or written.
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint file was read but its contents are wrong.
    #[error("checkpoint {path}: {msg}")]
    Checkpoint { path: PathBuf, msg: String },
    /// A checkpoint lacks a tensor the configuration needs.
    #[error("missing tensor `{0}` in checkpoint")]
    MissingTensor(String),
    /// A checkpoint holds a tensor the configuration does not have.
    #[error("unexpected tensor `{0}` in checkpoint")]
    UnexpectedTensor(String),
    /// A tensor has the wrong shape.
    #[error("tensor `{name}` has shape {got:?}, expected {expected:?}")]
    ShapeMismatch {
        name: String,
        got: Vec<usize>,
        expected: Vec<usize>,
    },
    /// A tensor's element type is not f32, bf16 or f16.
    #[error("unsupported dtype {0}")]
    UnsupportedDtype(String),
    /// A configuration value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Input data is not acceptable.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// An argument (or the session's state) does not allow the call; the message names which.
    #[error("{0}")]
    InvalidArgument(String),
    /// An array has the wrong number of elements for the session's sample sizes.
    #[error("{0}")]
    Shape(String),
    /// Data holds NaN or infinity (or a label is NaN).
    #[error("{0}")]
    NonFinite(String),
    /// A file was read but is not what it should be (foreign format, bad metadata).
    #[error("{0}")]
    Corrupt(String),
    /// The sample queue is full and the policy refuses new samples.
    #[error("{0}")]
    QueueFull(String),
    /// A step found fewer queued samples of the kind it needs than one batch.
    #[error("{0}")]
    NotEnoughSamples(String),
    /// The call needs a model that is not loaded yet.
    #[error("{0}")]
    NotLoaded(String),
    /// The background trainer runs: stop it first.
    #[error("{0}")]
    Busy(String),
    /// The device cannot be used (no driver or library, no such GPU, kernels failed to build).
    #[error("device {device} cannot be used: {source}")]
    Device {
        /// The device asked for (`cpu`, `cuda:N`, `auto`).
        device: String,
        /// Why (a CUDA backend error).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The session's device failed earlier (or a panic left its models in an unknown state):
    /// every later call answers this.
    #[error("{0}")]
    DeviceLost(String),
    /// The background trainer had stopped on its own with this error.
    #[error("the background trainer had stopped: {0}")]
    TrainerStopped(Box<Error>),
    /// A bug: a panic was caught (its message).
    #[error("panic (a bug in prfl): {0}")]
    Panic(String),
    /// An unexpected failure of the environment (a thread could not be started).
    #[error("{0}")]
    Internal(String),
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An [`Error::Io`] on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    /// An [`Error::Checkpoint`] on `path`.
    pub fn checkpoint(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Checkpoint {
            path: path.into(),
            msg: msg.into(),
        }
    }

    /// The error itself, or for [`Error::TrainerStopped`] the one that stopped the trainer.
    pub fn root(&self) -> &Error {
        match self {
            Error::TrainerStopped(inner) => inner.root(),
            e => e,
        }
    }
}

/// The text of a caught panic's payload (`panic!` with a literal gives `&str`, with arguments
/// `String`). Shared by every place that catches panics: the C ABI, the CUDA probe and NVRTC.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic payload that is not a string)".to_string()
    }
}
