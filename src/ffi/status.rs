//! Status codes, the thread-local message of the last failing call, the mapping from
//! [`crate::Error`], and the panic barrier every entry point runs in.

use std::any::Any;
use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::Error;

/// What a call did. The numeric values are the ABI: they are never renumbered, and new codes are
/// only ever appended. Every code other than `PRFL_OK` comes with a message naming the problem,
/// read with `prfl_last_error()` on the same thread.
#[repr(i32)]
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PrflStatus {
    /// Success.
    PRFL_OK = 0,
    /// A required pointer argument was null.
    PRFL_ERR_NULL_POINTER = 1,
    /// An argument or configuration value is out of range or inconsistent.
    PRFL_ERR_INVALID_ARGUMENT = 2,
    /// A `*_len` argument (in floats) differs from the configured sample size, or a tensor
    /// has the wrong shape; the message names expected and got.
    PRFL_ERR_SHAPE = 3,
    /// Submitted or scored data holds NaN or infinity, or a label is not 0 or 1.
    PRFL_ERR_NON_FINITE = 4,
    /// An enum argument or enum field holds a value this library does not know.
    PRFL_ERR_UNKNOWN_ENUM = 5,
    /// A file or directory could not be read or written (missing, permissions, disk full).
    PRFL_ERR_IO = 6,
    /// A file was read but its contents are not what they should be (truncated, corrupt,
    /// foreign format, missing or unexpected tensors, checksum mismatch).
    PRFL_ERR_CORRUPT_FILE = 7,
    /// The sample queue is full (policy `PRFL_BACKPRESSURE_REJECT_NEWEST`): the sample was not
    /// taken. Retry later or consume faster.
    PRFL_ERR_QUEUE_FULL = 8,
    /// `prfl_step` found fewer queued samples of the needed kind than one batch; nothing was
    /// consumed.
    PRFL_ERR_NOT_ENOUGH_SAMPLES = 9,
    /// The call needs a model that is not loaded yet (generator, reward model or trainer).
    PRFL_ERR_NOT_LOADED = 10,
    /// The requested device cannot be used: no CUDA driver or library, no such GPU, a GPU too old,
    /// or its kernels failed to compile (the message says which).
    PRFL_ERR_DEVICE = 11,
    /// The runtime's device failed earlier; every call on this runtime answers this until it is
    /// destroyed.
    PRFL_ERR_DEVICE_LOST = 12,
    /// The background trainer is running (`prfl_start`): stop it first (`prfl_stop`).
    PRFL_ERR_BUSY = 13,
    /// A bug: a Rust panic was caught at the ABI boundary (the message holds the panic's).
    PRFL_ERR_PANIC = 14,
    /// The caller was compiled against an incompatible ABI (`abi_version`), or a `struct_size`
    /// is smaller than the first ABI version's struct.
    PRFL_ERR_VERSION = 15,
    /// An unexpected internal failure.
    PRFL_ERR_INTERNAL = 16,
}

pub use PrflStatus::*;

/// A failed call: its status and the message `prfl_last_error()` will return.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FfiError {
    pub status: PrflStatus,
    pub message: String,
}

impl FfiError {
    pub fn new(status: PrflStatus, message: impl Into<String>) -> Self {
        FfiError {
            status,
            message: message.into(),
        }
    }
    pub fn null(what: &str) -> Self {
        Self::new(PRFL_ERR_NULL_POINTER, format!("`{what}` is null"))
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(PRFL_ERR_INVALID_ARGUMENT, message)
    }
    pub fn not_loaded(message: impl Into<String>) -> Self {
        Self::new(PRFL_ERR_NOT_LOADED, message)
    }
    pub fn unknown_enum(what: &str, value: i32, known: &str) -> Self {
        Self::new(
            PRFL_ERR_UNKNOWN_ENUM,
            format!("`{what}` is {value}, not one of {known}"),
        )
    }
}

impl std::fmt::Display for FfiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.status, self.message)
    }
}

/// The one place a [`crate::Error`] becomes a status (rustls-ffi's `map_error`): files that
/// cannot be opened are I/O errors; files whose contents are wrong are corrupt; tensors and
/// arrays of the wrong shape are shape errors; the session's refusals have a status each; the
/// remaining configuration and input errors are invalid arguments. An error that stopped the
/// background trainer keeps the status of its cause.
pub fn map_error(e: &Error) -> PrflStatus {
    match e {
        Error::Io { .. } => PRFL_ERR_IO,
        Error::Checkpoint { .. }
        | Error::MissingTensor(_)
        | Error::UnexpectedTensor(_)
        | Error::UnsupportedDtype(_)
        | Error::Corrupt(_) => PRFL_ERR_CORRUPT_FILE,
        Error::ShapeMismatch { .. } | Error::Shape(_) => PRFL_ERR_SHAPE,
        Error::Config(_) | Error::InvalidInput(_) | Error::InvalidArgument(_) => {
            PRFL_ERR_INVALID_ARGUMENT
        }
        Error::NonFinite(_) => PRFL_ERR_NON_FINITE,
        Error::QueueFull(_) => PRFL_ERR_QUEUE_FULL,
        Error::NotEnoughSamples(_) => PRFL_ERR_NOT_ENOUGH_SAMPLES,
        Error::NotLoaded(_) => PRFL_ERR_NOT_LOADED,
        Error::Busy(_) => PRFL_ERR_BUSY,
        Error::Device { .. } => PRFL_ERR_DEVICE,
        Error::DeviceLost(_) => PRFL_ERR_DEVICE_LOST,
        Error::TrainerStopped(cause) => map_error(cause),
        Error::Panic(_) => PRFL_ERR_PANIC,
        Error::Internal(_) => PRFL_ERR_INTERNAL,
    }
}

impl From<Error> for FfiError {
    /// The status of [`map_error`] with the error's message.
    fn from(e: Error) -> Self {
        FfiError::new(map_error(&e), e.to_string())
    }
}

thread_local! {
    // Replaced only by a failing call, so a pointer from `prfl_last_error` stays valid until this
    // thread's next failing call (the header promises "until the next call").
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Records `message` as this thread's last error (interior NULs would truncate it in C, so they
/// are replaced).
pub fn set_last_error(message: &str) {
    let c = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// This thread's last error message (empty if no call failed on this thread).
pub fn last_error_ptr() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// This thread's last error message as a Rust string (for the crate's own tests and tools).
pub fn last_error() -> String {
    LAST_ERROR.with(|e| e.borrow().to_string_lossy().into_owned())
}

/// Drops a panic payload without letting a panicking destructor escape.
fn drop_payload(payload: Box<dyn Any + Send>) {
    let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
}

/// Turns a caught panic into `PRFL_ERR_PANIC` with the panic's message.
pub fn panic_error(payload: Box<dyn Any + Send>) -> FfiError {
    let text = crate::error::panic_message(&*payload);
    drop_payload(payload);
    FfiError::new(PRFL_ERR_PANIC, format!("panic (a bug in prfl): {text}"))
}

#[cfg(feature = "test-hooks")]
thread_local! {
    // Const-initialised and without a destructor: checking it costs a load, never an allocation.
    static PANIC_AT_ENTRY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Test hook (set by `ffi::testing`): makes the next entry point called on this thread panic
/// inside its panic barrier.
#[cfg(feature = "test-hooks")]
pub(crate) fn panic_at_next_entry() {
    PANIC_AT_ENTRY.with(|p| p.set(true));
}

fn maybe_panic_at_entry() {
    #[cfg(feature = "test-hooks")]
    if PANIC_AT_ENTRY.with(|p| p.replace(false)) {
        panic!("injected test panic at an entry point");
    }
}

/// Runs the body of the entry point `name`: a panic becomes `PRFL_ERR_PANIC` (unwinding into C
/// is undefined behaviour), an error becomes its status, and either leaves its message,
/// prefixed with `name`, as this thread's last error.
pub fn guard(name: &str, body: impl FnOnce() -> Result<(), FfiError>) -> PrflStatus {
    let result = catch_unwind(AssertUnwindSafe(|| {
        maybe_panic_at_entry();
        body()
    }));
    let err = match result {
        Ok(Ok(())) => return PRFL_OK,
        Ok(Err(e)) => e,
        Err(payload) => panic_error(payload),
    };
    let message = format!("{name}: {}", err.message);
    if err.status == PRFL_ERR_PANIC {
        ::log::error!("{message}");
    } else {
        ::log::debug!("{message}");
    }
    set_last_error(&message);
    err.status
}

/// [`guard`] for the entry points that return a value instead of a status: a panic yields
/// `fallback` (and a last-error message).
pub fn guard_value<T>(name: &str, fallback: T, body: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(|| {
        maybe_panic_at_entry();
        body()
    })) {
        Ok(v) => v,
        Err(payload) => {
            let message = format!("{name}: {}", panic_error(payload).message);
            ::log::error!("{message}");
            set_last_error(&message);
            fallback
        }
    }
}
