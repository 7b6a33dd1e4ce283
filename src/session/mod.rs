//! The safe session core: a streaming training runtime for Wan2.1 reward models and PRFL,
//! usable from Rust directly and wrapped by the C ABI ([`crate::ffi`]).
//!
//! A [`Session`] owns a bounded sample queue, the generator checkpoint, the reward trainer and
//! the PRFL trainer, and the rules of who may touch them when. Producer threads copy samples
//! into the queue ([`Session::submit`], never blocking on training); a step, on the calling
//! thread ([`Session::step`]) or on the background trainer ([`Session::start_background`]),
//! takes a batch from it and updates a model; scoring and sampling read the models meanwhile.
//!
//! Files, one concern each:
//! - [`config`]: [`SessionConfig`], [`SampleSizes`], [`Backpressure`];
//! - [`stats`]: [`StepMode`] and the statistics the calls return;
//! - `queue`: the lock-free queue of preallocated slots; `batch`: its samples as trainer batches;
//! - `models`: loading the generator, building the reward model and the PRFL trainer;
//! - `train`: submitting samples and training steps; `worker`: the background trainer;
//! - `score`: scoring and candidate selection; [`sample`]: sampling with early rejection;
//! - `persist`: saving and loading the trainers as one atomic set;
//!
//! Locks, in acquisition order:
//! - `control` (the background trainer's handle): held by every operation the background trainer
//!   excludes (steps, save, load, model loads), for their whole duration, so that they can
//!   answer [`Error::Busy`] while it runs and cannot race start/stop.
//! - `models` (a reader-writer lock): training steps and model changes write, scoring reads. A
//!   score therefore waits for a step in progress (up to one step), and steps wait for scores.
//! - The queue takes no lock on the submission path (see `queue`).
//!
//! A panic while the models are write-locked may leave a half-applied update behind: the
//! session is then marked lost ([`Error::DeviceLost`]) rather than trusted again.

#![warn(missing_docs)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock, RwLockWriteGuard};

pub mod config;
pub mod sample;
pub mod stats;

mod batch;
mod models;
mod persist;
mod queue;
mod score;
mod train;
mod worker;

pub use config::{queue_memory_limit, Backpressure, SampleSizes, SessionConfig};
pub use persist::MANIFEST;
pub use queue::SampleRef;
pub use sample::{SampleConfig, SampleSetup, MAX_SAMPLE_STEPS};
pub use stats::{QueueStats, SampleStats, StepMode, StepStats};

pub use crate::reward::dataset::SampleKind;
pub use crate::schedule::SolverKind;

use crate::backend::device::Device;
use crate::backend::Backend;
use crate::finetune::prfl::PrflTrainer;
use crate::model::checkpoint::Checkpoint;
use crate::model::wan::WanModel;
use crate::reward::train::RewardTrainer;
use crate::{Error, Result};
use queue::SampleQueue;
use worker::Control;

/// The reward trainer a session holds.
pub(crate) struct RewardState {
    pub trainer: RewardTrainer<Device>,
    /// Successful reward steps (the iteration saved in checkpoints).
    pub steps: u64,
    /// [`Models::revision`] when this model last changed.
    pub revision: u64,
}

/// The PRFL trainer a session holds.
pub(crate) struct PrflState {
    pub trainer: PrflTrainer<Device>,
    pub steps: u64,
    /// The reward revision the trainer's frozen copy holds.
    pub revision: u64,
}

/// Everything behind the models lock.
#[derive(Default)]
pub(crate) struct Models {
    pub generator: Option<Checkpoint>,
    pub reward: Option<RewardState>,
    pub prfl: Option<PrflState>,
    /// Bumped whenever the reward model's weights change (an update, a load), so that the PRFL
    /// trainer's frozen copy is refreshed before its next step.
    pub revision: u64,
    /// The whole generator for inference, built from `generator` by the first sampling call
    /// while no PRFL trainer exists (which then samples with its own, fine-tuned generator
    /// instead). Behind a mutex so that sampling builds it under the models' read lock; cleared
    /// when another generator is loaded or the PRFL trainer takes over.
    pub sampling_generator: Mutex<Option<Arc<WanModel<Device>>>>,
}

impl Models {
    pub fn set_reward(&mut self, mut state: RewardState) {
        self.revision += 1;
        state.revision = self.revision;
        self.reward = Some(state);
    }
}

/// The shared state every [`Session`] handle and the background trainer point to.
pub(crate) struct Runtime {
    cfg: SessionConfig,
    /// The device every model of this session lives on (chosen at creation).
    be: Device,
    queue: SampleQueue,
    models: RwLock<Models>,
    control: Mutex<Control>,
    lost: AtomicBool,
    lost_reason: Mutex<String>,
    /// Test hook: panic inside the next training step, models write-locked.
    #[cfg(feature = "test-hooks")]
    inject_step_panic: AtomicBool,
}

/// Write access to the models that marks the session lost if a panic unwinds while it is held.
pub(crate) struct ModelsGuard<'a> {
    rt: &'a Runtime,
    guard: RwLockWriteGuard<'a, Models>,
}

impl std::ops::Deref for ModelsGuard<'_> {
    type Target = Models;
    fn deref(&self) -> &Models {
        &self.guard
    }
}

impl std::ops::DerefMut for ModelsGuard<'_> {
    fn deref_mut(&mut self) -> &mut Models {
        &mut self.guard
    }
}

impl Drop for ModelsGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.rt.mark_lost(
                "a panic while the models were being changed left them in an unknown state",
            );
        }
    }
}

pub(crate) fn no_generator() -> Error {
    Error::NotLoaded(
        "no generator loaded: call prfl_load_generator or prfl_load_generator_from_memory".into(),
    )
}

pub(crate) fn no_reward() -> Error {
    Error::NotLoaded("no reward model: call prfl_init_reward or prfl_load_reward".into())
}

impl Runtime {
    fn new(cfg: SessionConfig) -> Result<Runtime> {
        // The device first: it is the likeliest thing to be unavailable.
        let be =
            Device::open(cfg.device, &cfg.cuda, cfg.cpu_fallback).map_err(|e| Error::Device {
                device: cfg.device.to_string(),
                source: Box::new(e),
            })?;
        let queue = SampleQueue::new(cfg.queue_capacity, &cfg.sizes, cfg.backpressure)?;
        let s = &cfg.sizes;
        ::log::info!(
            "prfl runtime on {}: queue of {} slots ({} floats each), latent {:?}, text [{}, {}]",
            be.name(),
            cfg.queue_capacity,
            2 * s.latent + s.text + s.image,
            s.latent_shape,
            s.text_len,
            s.text_dim
        );
        Ok(Runtime {
            cfg,
            be,
            queue,
            models: RwLock::new(Models::default()),
            control: Mutex::new(Control::default()),
            lost: AtomicBool::new(false),
            lost_reason: Mutex::new(String::new()),
            #[cfg(feature = "test-hooks")]
            inject_step_panic: AtomicBool::new(false),
        })
    }

    /// [`Error::DeviceLost`] once the device failed; every call checks this first.
    fn check_alive(&self) -> Result<()> {
        if self.lost.load(Ordering::Acquire) {
            return Err(Error::DeviceLost(format!(
                "the runtime's device failed earlier ({}); destroy it and create a new one",
                self.lost_reason.lock()
            )));
        }
        Ok(())
    }

    /// Marks the device failed (the first reason is kept).
    fn mark_lost(&self, reason: &str) {
        let mut r = self.lost_reason.lock();
        if !self.lost.load(Ordering::Acquire) {
            *r = reason.to_string();
            self.lost.store(true, Ordering::Release);
            ::log::error!("prfl runtime lost: {reason}");
        }
    }

    /// Runs device work. The [`crate::backend::Backend`] trait has no `Result`: a GPU failure
    /// inside an op (a launch error, out of memory, a sticky device error) panics. On a GPU such
    /// a panic marks the session lost and answers [`Error::DeviceLost`] with the panic's
    /// message; on the CPU a panic is a bug and keeps unwinding.
    fn on_device<T>(&self, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        if !self.be.is_cuda() {
            return f();
        }
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            Ok(r) => r,
            Err(payload) => {
                let text = crate::backend::cuda::panic_message(&*payload);
                let reason = format!("{what} failed on {}: {text}", self.be.name());
                self.mark_lost(&reason);
                Err(Error::DeviceLost(reason))
            }
        }
    }

    /// Write access to the models (see [`ModelsGuard`]).
    fn write_models(&self) -> ModelsGuard<'_> {
        ModelsGuard {
            rt: self,
            guard: self.models.write(),
        }
    }

    /// Runs `f` on the models unless the background trainer is running ([`Error::Busy`]).
    fn exclusive<T>(&self, what: &str, f: impl FnOnce(&mut Models) -> Result<T>) -> Result<T> {
        self.check_alive()?;
        let control = self.control.lock();
        if control.is_running() {
            return Err(Error::Busy(format!(
                "cannot {what} while the background trainer runs: call prfl_stop first"
            )));
        }
        let mut models = self.write_models();
        let result = self.on_device(what, || f(&mut models));
        drop(models);
        drop(control);
        result
    }
}

/// A training session: the queue, the models and the trainers, behind a cheap handle.
///
/// Clones share one session and may be used from any number of threads (producers submitting
/// while the background trainer steps and another thread scores). Dropping the last clone stops
/// the background trainer (waiting for its step in progress) and frees everything.
///
/// ```no_run
/// use prfl::session::{SampleSizes, Session, SessionConfig, StepMode};
/// # fn main() -> prfl::Result<()> {
/// let sizes = SampleSizes::new([16, 21, 60, 104], [512, 4096], [0, 0])?;
/// let session = Session::new(SessionConfig::new(sizes))?;
/// session.load_generator("Wan2.1-T2V-1.3B")?;
/// session.init_reward()?;
/// session.start_background(StepMode::Reward)?;
/// // producers: session.submit_labelled(&latent, &text, &[], 1.0)?;
/// session.stop_background()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Session {
    handle: Arc<Handle>,
}

/// The part of a session only [`Session`] clones hold (the background trainer holds the
/// [`Runtime`] alone), so that dropping the last clone can stop the trainer.
struct Handle {
    rt: Arc<Runtime>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        if let Err(e) = worker::stop(&self.rt) {
            ::log::warn!("session dropped: the background trainer had stopped with: {e}");
        }
    }
}

impl Session {
    /// Opens the configured device (or falls back to the CPU when `cpu_fallback`) and allocates
    /// every queue slot up front.
    /// Errors: [`Error::Device`] (the device cannot be used), [`Error::InvalidArgument`] (a
    /// configuration value out of range, queue memory unavailable).
    pub fn new(cfg: SessionConfig) -> Result<Session> {
        cfg.check()?;
        Ok(Session {
            handle: Arc::new(Handle {
                rt: Arc::new(Runtime::new(cfg)?),
            }),
        })
    }

    fn rt(&self) -> &Runtime {
        &self.handle.rt
    }

    /// The configuration the session was created with.
    pub fn config(&self) -> &SessionConfig {
        &self.rt().cfg
    }

    /// The sizes every submitted sample must have.
    pub fn sizes(&self) -> &SampleSizes {
        &self.rt().cfg.sizes
    }

    /// The device the session computes on, e.g. `cpu` or the GPU's name.
    pub fn device_name(&self) -> String {
        self.rt().be.name()
    }

    /// Whether the session computes on a CUDA GPU.
    pub fn is_cuda(&self) -> bool {
        self.rt().be.is_cuda()
    }

    /// [`Error::DeviceLost`] once the session's device failed (every call then answers it).
    pub fn check_alive(&self) -> Result<()> {
        self.rt().check_alive()
    }
}

/// Hooks for the crate's own tests (the `test-hooks` feature; not in the shipped library).
#[cfg(feature = "test-hooks")]
#[doc(hidden)]
impl Session {
    /// Makes the next training step (foreground or background) panic while it holds the
    /// models, which marks the session lost.
    pub fn panic_in_next_step(&self) {
        self.rt().inject_step_panic.store(true, Ordering::Relaxed);
    }

    /// Simulates a device failure: every later call answers [`Error::DeviceLost`].
    pub fn fail_device(&self, reason: &str) {
        self.rt().mark_lost(reason);
    }

    /// Starts (or stops) recording the first latent value of every sample a step consumes.
    pub fn record_consumed(&self, on: bool) {
        self.rt().queue.record_consumed(on);
    }

    /// The first latent values recorded since the last call.
    pub fn take_consumed(&self) -> Vec<f32> {
        self.rt().queue.take_recorded()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::device::DeviceSpec;

    fn small(device: DeviceSpec, cpu_fallback: bool) -> SessionConfig {
        let sizes = SampleSizes::new([16, 1, 2, 2], [2, 4], [0, 0]).unwrap();
        SessionConfig {
            device,
            cpu_fallback,
            queue_capacity: 1,
            ..SessionConfig::new(sizes)
        }
    }

    #[test]
    fn the_device_is_opened_at_creation_with_the_configured_fallback() {
        let have_gpu = crate::backend::cuda::probe(&Default::default()).is_ok();
        let s = Session::new(small(DeviceSpec::Cpu, false)).unwrap();
        assert!(!s.is_cuda());
        let s = Session::new(small(DeviceSpec::Auto, false)).unwrap();
        assert_eq!(s.is_cuda(), have_gpu);
        let s = Session::new(small(DeviceSpec::Cuda(0), true)).unwrap();
        assert_eq!(s.is_cuda(), have_gpu);
        match Session::new(small(DeviceSpec::Cuda(0), false)) {
            Ok(s) => assert!(have_gpu && s.is_cuda()),
            Err(e) => {
                assert!(!have_gpu);
                assert!(matches!(e, Error::Device { .. }), "{e}");
                assert!(e.to_string().contains("cuda:0"), "{e}");
            }
        }
    }

    #[test]
    fn dropping_the_last_handle_stops_the_background_trainer() {
        use crate::model::{checkpoint::save_checkpoint, init::random_weights, names::Layout};
        let dir = std::env::temp_dir().join(format!("prfl-session-drop-{}", std::process::id()));
        let wan = crate::testutil::tiny_wan(crate::model::ModelType::T2V, 16, 2, 2, 4);
        save_checkpoint(&random_weights(&wan, 1), &wan, Layout::Original, &dir, None).unwrap();
        let s = Session::new(SessionConfig {
            reward_blocks: 1,
            ..small(DeviceSpec::Cpu, false)
        })
        .unwrap();
        s.load_generator(&dir).unwrap();
        s.init_reward().unwrap();
        s.start_background(StepMode::Reward).unwrap();
        let runtime = Arc::downgrade(&s.handle.rt);
        let other = s.clone();
        drop(s);
        // A clone keeps the session, and its trainer, alive.
        assert!(matches!(other.step(StepMode::Reward), Err(Error::Busy(_))));
        drop(other);
        // The trainer thread held the runtime: joined, it let go of it.
        assert!(runtime.upgrade().is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sessions_are_send_and_sync_handles() {
        fn shared<T: Send + Sync + Clone>() {}
        shared::<Session>();
    }
}
