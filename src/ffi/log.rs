//! Routing the `log` crate's records (the whole library logs through it) to the host's callback.
//!
//! The `log` facade has one logger per process, so the callback is process-wide, not
//! per-runtime. It is installed on the first `prfl_set_log_callback`; if the process already has
//! another `log` logger (a Rust host that set one up), that call fails and records keep going
//! there.

use std::ffi::{c_char, c_void, CString};
use std::sync::OnceLock;

use parking_lot::RwLock;

use super::status::{FfiError, PRFL_ERR_INTERNAL};

/// Receives log records: `level` 1 = error, 2 = warn, 3 = info, 4 = debug, 5 = trace; `message`
/// is NUL-terminated UTF-8, valid only during the call. Called from any thread, the background
/// trainer's included; must not call `prfl_set_log_callback` (it waits for running callbacks)
/// nor `prfl_destroy` / `prfl_stop` (they wait for the background trainer, which may be the
/// caller), and must not unwind (throw) into the library.
pub type PrflLogCallback =
    Option<unsafe extern "C" fn(user: *mut c_void, level: i32, message: *const c_char)>;

struct Sink {
    callback: unsafe extern "C" fn(*mut c_void, i32, *const c_char),
    user: *mut c_void,
    max_level: i32,
}

// SAFETY: the header requires `user` to be usable from any thread while the callback is set;
// the library never dereferences it, only hands it back to the host's callback.
unsafe impl Send for Sink {}
// SAFETY: as above; the sink is read-only once published.
unsafe impl Sync for Sink {}

/// The current sink. Callbacks run under the read lock, so that once `prfl_set_log_callback`
/// returns, the previous callback is neither running nor called again and the host may free its
/// `user` data.
static SINK: RwLock<Option<Sink>> = RwLock::new(None);

struct Forwarder;

impl ::log::Log for Forwarder {
    fn enabled(&self, m: &::log::Metadata) -> bool {
        SINK.read_recursive()
            .as_ref()
            .is_some_and(|s| m.level() as i32 <= s.max_level)
    }

    fn log(&self, record: &::log::Record) {
        // Recursive read: a callback that (wrongly) makes a logging call on this thread must not
        // deadlock behind a writer waiting in `set`.
        let sink = SINK.read_recursive();
        let Some(s) = sink.as_ref() else { return };
        let level = record.level() as i32;
        if level > s.max_level {
            return;
        }
        let text = format!("{}", record.args()).replace('\0', "\\0");
        let Ok(c) = CString::new(text) else { return };
        // SAFETY: the host registered `callback` for exactly this signature; `c` outlives the
        // call; `user` is the host's, passed back untouched.
        unsafe { (s.callback)(s.user, level, c.as_ptr()) };
    }

    fn flush(&self) {}
}

static FORWARDER: Forwarder = Forwarder;

/// Installs the forwarder as the process's logger once; false if another logger was there.
fn installed() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| ::log::set_logger(&FORWARDER).is_ok())
}

/// Sets (or with `None`, removes) the callback and the most verbose level it receives.
pub fn set(callback: PrflLogCallback, user: *mut c_void, max_level: i32) -> Result<(), FfiError> {
    if !(0..=5).contains(&max_level) {
        return Err(FfiError::invalid(format!(
            "max_level is {max_level}: 0 (off), 1 (error) .. 5 (trace)"
        )));
    }
    if !installed() {
        return Err(FfiError::new(
            PRFL_ERR_INTERNAL,
            "another `log` logger is already installed in this process (a Rust host?); \
             prfl's records go to it",
        ));
    }
    let sink = callback.map(|callback| Sink {
        callback,
        user,
        max_level,
    });
    let filter = match sink.as_ref().map_or(0, |s| s.max_level) {
        0 => ::log::LevelFilter::Off,
        1 => ::log::LevelFilter::Error,
        2 => ::log::LevelFilter::Warn,
        3 => ::log::LevelFilter::Info,
        4 => ::log::LevelFilter::Debug,
        _ => ::log::LevelFilter::Trace,
    };
    *SINK.write() = sink;
    // The facade skips formatting records above this level, so a quiet host pays nothing.
    ::log::set_max_level(filter);
    Ok(())
}
