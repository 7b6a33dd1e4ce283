//! The background trainer (`prfl_start` / `prfl_stop`): one thread that steps whenever a full
//! batch is queued and otherwise parks briefly. It runs the same step as `prfl_step`, so the
//! two are mutually exclusive (`PRFL_ERR_BUSY`); submissions and scoring carry on meanwhile.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::runtime::Runtime;
use super::status::{
    panic_error, FfiError, PRFL_ERR_BUSY, PRFL_ERR_INTERNAL, PRFL_ERR_NOT_ENOUGH_SAMPLES,
};
use super::types::PrflStepMode;

/// How long the trainer sleeps when no full batch is queued. Short next to any step, long next
/// to a submission, so polling costs nothing measurable.
const IDLE_PARK: Duration = Duration::from_millis(1);

struct Worker {
    handle: JoinHandle<Result<(), FfiError>>,
    stop: Arc<AtomicBool>,
    mode: PrflStepMode,
}

/// The background trainer's handle, under the runtime's `control` lock.
#[derive(Default)]
pub struct Control {
    worker: Option<Worker>,
}

impl Control {
    pub fn is_running(&self) -> bool {
        self.worker.is_some()
    }
}

/// Starts the background trainer in `mode`. The models it needs must be there already.
pub fn start(rt: &Arc<Runtime>, mode: PrflStepMode) -> Result<(), FfiError> {
    rt.check_alive()?;
    let mut control = rt.control.lock();
    if let Some(w) = &control.worker {
        return Err(FfiError::new(
            PRFL_ERR_BUSY,
            format!("the background trainer already runs ({:?})", w.mode),
        ));
    }
    rt.check_can_step(mode)?;
    let stop = Arc::new(AtomicBool::new(false));
    let (rt2, stop2) = (Arc::clone(rt), Arc::clone(&stop));
    let handle = std::thread::Builder::new()
        .name("prfl-trainer".into())
        .spawn(move || run(&rt2, mode, &stop2))
        .map_err(|e| {
            FfiError::new(
                PRFL_ERR_INTERNAL,
                format!("cannot start the trainer thread: {e}"),
            )
        })?;
    control.worker = Some(Worker { handle, stop, mode });
    ::log::info!("background trainer started ({mode:?})");
    Ok(())
}

/// Stops the background trainer (waiting for the step in progress) and reports why it had
/// stopped on its own, if it had. A no-op when none runs.
pub fn stop(rt: &Runtime) -> Result<(), FfiError> {
    let mut control = rt.control.lock();
    let Some(w) = control.worker.take() else {
        return Ok(());
    };
    w.stop.store(true, Ordering::Release);
    w.handle.thread().unpark();
    let result = match w.handle.join() {
        Ok(r) => r.map_err(|e| {
            FfiError::new(
                e.status,
                format!("the background trainer had stopped: {}", e.message),
            )
        }),
        Err(payload) => Err(panic_error(payload)),
    };
    ::log::info!("background trainer stopped ({:?})", w.mode);
    result
}

fn run(rt: &Runtime, mode: PrflStepMode, stop: &AtomicBool) -> Result<(), FfiError> {
    while !stop.load(Ordering::Acquire) {
        rt.check_alive()?;
        // Look before locking, so an idle trainer never holds up scoring.
        if !rt.has_batch(mode) {
            std::thread::park_timeout(IDLE_PARK);
            continue;
        }
        let step = catch_unwind(AssertUnwindSafe(|| {
            let mut models = rt.write_models();
            rt.step_locked(&mut models, mode)
        }));
        match step {
            Ok(Ok(s)) => ::log::debug!(
                "background {mode:?} step {}: loss {:.4}, {} samples, {:.3} s",
                s.step,
                s.loss,
                s.samples,
                s.seconds
            ),
            // A drop-oldest eviction can take the batch between the look and the lock.
            Ok(Err(e)) if e.status == PRFL_ERR_NOT_ENOUGH_SAMPLES => {}
            Ok(Err(e)) => {
                ::log::error!("background trainer stopped: {}", e.message);
                return Err(e);
            }
            Err(payload) => {
                let e = panic_error(payload);
                ::log::error!("background trainer stopped: {}", e.message);
                return Err(e);
            }
        }
    }
    Ok(())
}
