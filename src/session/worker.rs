//! The background trainer ([`super::Session::start_background`] / `stop_background`): one
//! thread that steps whenever a full batch is queued and otherwise parks briefly. It runs the
//! same step as a foreground step, so the two are mutually exclusive ([`Error::Busy`]);
//! submissions and scoring carry on meanwhile.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::stats::StepMode;
use super::Runtime;
use crate::error::panic_message;
use crate::{Error, Result};

/// How long the trainer sleeps when no full batch is queued. Short next to any step, long next
/// to a submission, so polling costs nothing measurable.
const IDLE_PARK: Duration = Duration::from_millis(1);

struct Worker {
    handle: JoinHandle<Result<()>>,
    stop: Arc<AtomicBool>,
    mode: StepMode,
}

/// The background trainer's handle, under the runtime's `control` lock.
#[derive(Default)]
pub(crate) struct Control {
    worker: Option<Worker>,
}

impl Control {
    /// Whether a background trainer thread exists (running, or stopped on an error not yet
    /// collected by [`stop`]).
    pub fn is_running(&self) -> bool {
        self.worker.is_some()
    }
}

/// Starts the background trainer in `mode`. The models it needs must be there already.
pub(crate) fn start(rt: &Arc<Runtime>, mode: StepMode) -> Result<()> {
    rt.check_alive()?;
    let mut control = rt.control.lock();
    if let Some(w) = &control.worker {
        return Err(Error::Busy(format!(
            "the background trainer already runs ({})",
            mode_name(w.mode)
        )));
    }
    rt.check_can_step(mode)?;
    let stop = Arc::new(AtomicBool::new(false));
    let (rt2, stop2) = (Arc::clone(rt), Arc::clone(&stop));
    let handle = std::thread::Builder::new()
        .name("prfl-trainer".into())
        .spawn(move || run(&rt2, mode, &stop2))
        .map_err(|e| Error::Internal(format!("cannot start the trainer thread: {e}")))?;
    control.worker = Some(Worker { handle, stop, mode });
    ::log::info!("background trainer started ({})", mode_name(mode));
    Ok(())
}

/// The C ABI's name of a mode, used in messages (hosts of both APIs read the same text).
pub(crate) fn mode_name(mode: StepMode) -> &'static str {
    match mode {
        StepMode::Reward => "PRFL_STEP_REWARD",
        StepMode::Prfl => "PRFL_STEP_PRFL",
    }
}

/// Stops the background trainer (waiting for the step in progress) and reports why it had
/// stopped on its own, if it had. A no-op when none runs.
pub(crate) fn stop(rt: &Runtime) -> Result<()> {
    let mut control = rt.control.lock();
    let Some(w) = control.worker.take() else {
        return Ok(());
    };
    w.stop.store(true, Ordering::Release);
    w.handle.thread().unpark();
    let result = match w.handle.join() {
        Ok(r) => r.map_err(|e| Error::TrainerStopped(Box::new(e))),
        Err(payload) => Err(Error::Panic(panic_message(&*payload))),
    };
    ::log::info!("background trainer stopped ({})", mode_name(w.mode));
    result
}

fn run(rt: &Runtime, mode: StepMode, stop: &AtomicBool) -> Result<()> {
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
                "background {} step {}: loss {:.4}, {} samples, {:.3} s",
                mode_name(mode),
                s.step,
                s.loss,
                s.samples,
                s.seconds
            ),
            // A drop-oldest eviction can take the batch between the look and the lock.
            Ok(Err(Error::NotEnoughSamples(_))) => {}
            Ok(Err(e)) => {
                ::log::error!("background trainer stopped: {e}");
                return Err(e);
            }
            Err(payload) => {
                let e = Error::Panic(panic_message(&*payload));
                ::log::error!("background trainer stopped: {e}");
                return Err(e);
            }
        }
    }
    Ok(())
}
