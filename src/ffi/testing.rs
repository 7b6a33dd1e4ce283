//! Hooks for the crate's own tests and benchmarks (Rust only; not part of the C ABI or the
//! header, and compiled only with the `test-hooks` feature). They inject the failures the C API
//! must survive and expose what the queue consumed; each forwards to the layer that owns the
//! state (the panic barrier's flag in [`super::status`], the session's hooks).

use super::handle::PrflRuntime;
use crate::session::Session;

/// Makes the next entry point called on this thread panic inside its panic barrier.
pub fn panic_at_next_entry() {
    super::status::panic_at_next_entry();
}

/// # Safety
/// `rt` is a live handle from `prfl_create`.
unsafe fn session<'a>(rt: *const PrflRuntime) -> &'a Session {
    // SAFETY: the callers' contract is a live handle.
    match unsafe { super::handle::session(rt) } {
        Ok(s) => s,
        Err(e) => panic!("a test hook got {e}"),
    }
}

/// Makes the next training step of `rt` (foreground or background) panic while it holds the
/// models, which marks the runtime lost.
///
/// # Safety
/// `rt` is a live handle from `prfl_create`.
pub unsafe fn panic_in_next_step(rt: *const PrflRuntime) {
    // SAFETY: forwarded contract.
    unsafe { session(rt) }.panic_in_next_step();
}

/// Simulates a device failure: every later call on `rt` answers `PRFL_ERR_DEVICE_LOST`.
///
/// # Safety
/// `rt` is a live handle from `prfl_create`.
pub unsafe fn fail_device(rt: *const PrflRuntime, reason: &str) {
    // SAFETY: forwarded contract.
    unsafe { session(rt) }.fail_device(reason);
}

/// Starts (or stops) recording the first latent value of every sample a step consumes.
///
/// # Safety
/// `rt` is a live handle from `prfl_create`.
pub unsafe fn record_consumed(rt: *const PrflRuntime, on: bool) {
    // SAFETY: forwarded contract.
    unsafe { session(rt) }.record_consumed(on);
}

/// The first latent values recorded since the last call.
///
/// # Safety
/// `rt` is a live handle from `prfl_create`.
pub unsafe fn take_consumed(rt: *const PrflRuntime) -> Vec<f32> {
    // SAFETY: forwarded contract.
    unsafe { session(rt) }.take_consumed()
}
