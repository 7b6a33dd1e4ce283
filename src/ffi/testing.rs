//! Hooks for the crate's own tests and benchmarks (Rust only; not part of the C ABI or the
//! header). They inject the failures the C API must survive and expose what the queue consumed.

use std::cell::Cell;
use std::sync::atomic::Ordering;

use super::runtime::PrflRuntime;

thread_local! {
    // Const-initialised and without a destructor: checking it costs a load, never an allocation.
    static PANIC_AT_ENTRY: Cell<bool> = const { Cell::new(false) };
}

/// Makes the next entry point called on this thread panic inside its panic barrier.
pub fn panic_at_next_entry() {
    PANIC_AT_ENTRY.with(|p| p.set(true));
}

pub(crate) fn maybe_panic_at_entry() {
    if PANIC_AT_ENTRY.with(|p| p.replace(false)) {
        panic!("injected test panic at an entry point");
    }
}

fn runtime<'a>(rt: *const PrflRuntime) -> &'a PrflRuntime {
    // SAFETY: the callers' contract (below) is a live handle.
    unsafe { rt.as_ref() }.expect("a runtime handle")
}

/// Makes the next training step of `rt` (foreground or background) panic while it holds the
/// models, which marks the runtime lost.
///
/// # Safety
/// `rt` is a live handle from `prfl_create`.
pub unsafe fn panic_in_next_step(rt: *const PrflRuntime) {
    runtime(rt)
        .inner
        .inject_step_panic
        .store(true, Ordering::Relaxed);
}

/// Simulates a device failure: every later call on `rt` answers `PRFL_ERR_DEVICE_LOST`.
///
/// # Safety
/// `rt` is a live handle from `prfl_create`.
pub unsafe fn fail_device(rt: *const PrflRuntime, reason: &str) {
    runtime(rt).inner.mark_lost(reason);
}

/// Starts (or stops) recording the first latent value of every sample a step consumes.
///
/// # Safety
/// `rt` is a live handle from `prfl_create`.
pub unsafe fn record_consumed(rt: *const PrflRuntime, on: bool) {
    runtime(rt).inner.queue.record_consumed(on);
}

/// The first latent values recorded since the last call.
///
/// # Safety
/// `rt` is a live handle from `prfl_create`.
pub unsafe fn take_consumed(rt: *const PrflRuntime) -> Vec<f32> {
    runtime(rt).inner.queue.take_recorded()
}
