//! The safe runtime behind a `PrflRuntime*`: the queue, the generator, the reward trainer, the
//! PRFL trainer, and the rules of who may touch them when.
//!
//! Locks, in acquisition order:
//! - `control` (the background trainer's handle): held by every operation the background trainer
//!   excludes (`step`, `save`, `load`, model loads), for their whole duration, so that they can
//!   answer `PRFL_ERR_BUSY` while it runs and cannot race `start`/`stop`.
//! - `models` (a reader-writer lock): training steps and model changes write, scoring reads. A
//!   score therefore waits for a step in progress (up to one step), and steps wait for scores.
//! - The queue takes no lock on the submission path (see [`super::queue`]).
//!
//! A panic while the models are write-locked may leave a half-applied update behind: the
//! runtime is then marked lost (`PRFL_ERR_DEVICE_LOST`) rather than trusted again.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Mutex, RwLock, RwLockWriteGuard};

use super::batch::{prfl_batch, reward_batch};
use super::config::RuntimeConfig;
use super::generator::GeneratorSource;
use super::queue::{check_finite, SampleQueue, SampleRef, Want};
use super::status::{
    FfiError, PRFL_ERR_BUSY, PRFL_ERR_CORRUPT_FILE, PRFL_ERR_DEVICE, PRFL_ERR_DEVICE_LOST,
    PRFL_ERR_NON_FINITE, PRFL_ERR_NOT_ENOUGH_SAMPLES,
};
use super::types::{
    PrflQueueStats, PrflSampleConfig, PrflSampleStats, PrflSolver, PrflStepMode, PrflStepStats,
};
use super::worker::Control;
use crate::backend::device::Device;
use crate::backend::Backend;
use crate::finetune::early_reject::{
    best_first, sample_candidates, sample_with_early_rejection, Candidates, RejectStage,
};
use crate::finetune::prfl::{PrflTrainConfig as FinetuneConfig, PrflTrainer};
use crate::finetune::sample::{Cond, SamplingPlan};
use crate::model::lora::init_lora;
use crate::model::wan::{Inputs, VideoShape, WanModel};
use crate::optim::checkpoint::{TrainingKind, TrainingMeta};
use crate::optim::state::PARAM_PREFIX;
use crate::reward::dataset::SampleKind;
use crate::reward::head::init_head_params;
use crate::reward::model::{backbone_filter, RewardModel, RewardModelConfig};
use crate::reward::train::{RewardLoss, RewardTrainConfig, RewardTrainer};
use crate::schedule::SolverKind;

/// The opaque handle C holds. Dropping it (`prfl_destroy`) stops the background trainer first.
pub struct PrflRuntime {
    pub(crate) inner: Arc<Runtime>,
}

impl Drop for PrflRuntime {
    fn drop(&mut self) {
        if let Err(e) = super::worker::stop(&self.inner) {
            ::log::warn!("prfl_destroy: the background trainer had stopped with: {e}");
        }
    }
}

pub struct RewardState {
    pub trainer: RewardTrainer<Device>,
    /// Successful reward steps (the iteration saved in checkpoints).
    pub steps: u64,
    /// [`Models::revision`] when this model last changed.
    pub revision: u64,
}

pub struct PrflState {
    pub trainer: PrflTrainer<Device>,
    pub steps: u64,
    /// The reward revision the trainer's frozen copy holds.
    pub revision: u64,
}

#[derive(Default)]
pub struct Models {
    pub generator: Option<GeneratorSource>,
    pub reward: Option<RewardState>,
    pub prfl: Option<PrflState>,
    /// Bumped whenever the reward model's weights change (an update, a load), so that the PRFL
    /// trainer's frozen copy is refreshed before its next step.
    pub revision: u64,
    /// The whole generator for inference, built from `generator` by the first
    /// `prfl_sample_early_reject` while no PRFL trainer exists (which then samples with its own,
    /// fine-tuned generator instead). Behind a mutex so that sampling builds it under the models'
    /// read lock; cleared when another generator is loaded or the PRFL trainer takes over.
    pub sampling_generator: Mutex<Option<Arc<WanModel<Device>>>>,
}

impl Models {
    pub fn set_reward(&mut self, mut state: RewardState) {
        self.revision += 1;
        state.revision = self.revision;
        self.reward = Some(state);
    }
}

pub struct Runtime {
    pub cfg: RuntimeConfig,
    /// The device every model of this runtime lives on (chosen at creation).
    pub be: Device,
    pub queue: SampleQueue,
    models: RwLock<Models>,
    pub(crate) control: Mutex<Control>,
    lost: AtomicBool,
    lost_reason: Mutex<String>,
    /// Test hook: panic inside the next training step, models write-locked.
    pub(crate) inject_step_panic: AtomicBool,
}

/// A `PrflSampleConfig` resolved for a number of candidates: defaults filled in, ranges checked.
#[derive(Clone, Debug)]
pub struct SampleSetup {
    pub plan: SamplingPlan,
    pub steps: usize,
    /// `None` when every candidate is kept (plain sampling).
    pub stage: Option<RejectStage>,
    pub keep: usize,
}

/// The most sampling steps `prfl_sample_early_reject` takes (the grid's timesteps are whole
/// numbers in [0, 1000), so more steps would only repeat them).
pub const PRFL_MAX_SAMPLE_STEPS: usize = 1000;

/// Write access to the models that marks the runtime lost if a panic unwinds while it is held.
pub struct ModelsGuard<'a> {
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

fn no_generator() -> FfiError {
    FfiError::not_loaded(
        "no generator loaded: call prfl_load_generator or prfl_load_generator_from_memory",
    )
}

fn no_reward() -> FfiError {
    FfiError::not_loaded("no reward model: call prfl_init_reward or prfl_load_reward")
}

fn kind_name(kind: SampleKind) -> &'static str {
    match kind {
        SampleKind::Clip => "labelled clips (prfl_submit_labeled)",
        SampleKind::Pair => "pairs (prfl_submit_pair)",
    }
}

/// Copies the trainable weights of `src` into `dst` (same structure).
fn assign_trained_from(
    be: &Device,
    dst: &mut RewardModel<Device>,
    src: &RewardModel<Device>,
) -> Result<(), FfiError> {
    let tensors: BTreeMap<_, _> = src
        .trainable_tensors(be)
        .into_iter()
        .map(|(k, v)| (format!("{PARAM_PREFIX}{k}"), v))
        .collect();
    dst.assign_trained(be, &tensors, Path::new("(the runtime's reward model)"))?;
    Ok(())
}

/// The metadata of a training checkpoint, from its header alone (the tensors are read once, by
/// the trainer's `resume`). The `prfl` key holds it (see [`crate::optim::checkpoint`]).
pub fn read_training_meta(path: &Path) -> Result<TrainingMeta, FfiError> {
    let corrupt =
        |m: String| FfiError::new(PRFL_ERR_CORRUPT_FILE, format!("{}: {m}", path.display()));
    let header = crate::model::checkpoint::read_safetensors_metadata(path)?;
    let text = header
        .get("prfl")
        .ok_or_else(|| corrupt("not a prfl training checkpoint (no `prfl` metadata)".into()))?;
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| corrupt(format!("metadata is not JSON: {e}")))?;
    TrainingMeta::from_json(&v).map_err(|e| corrupt(e.to_string()))
}

impl Runtime {
    pub fn new(cfg: RuntimeConfig) -> Result<Arc<Runtime>, FfiError> {
        // The device first: it is the likeliest thing to be unavailable.
        let be = Device::open(cfg.device, &cfg.cuda, cfg.cpu_fallback).map_err(|e| {
            FfiError::new(
                PRFL_ERR_DEVICE,
                format!("device {} cannot be used: {e}", cfg.device),
            )
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
        Ok(Arc::new(Runtime {
            cfg,
            be,
            queue,
            models: RwLock::new(Models::default()),
            control: Mutex::new(Control::default()),
            lost: AtomicBool::new(false),
            lost_reason: Mutex::new(String::new()),
            inject_step_panic: AtomicBool::new(false),
        }))
    }

    /// `PRFL_ERR_DEVICE_LOST` once the device failed; every entry point checks this first.
    pub fn check_alive(&self) -> Result<(), FfiError> {
        if self.lost.load(Ordering::Acquire) {
            return Err(FfiError::new(
                PRFL_ERR_DEVICE_LOST,
                format!(
                    "the runtime's device failed earlier ({}); destroy it and create a new one",
                    self.lost_reason.lock()
                ),
            ));
        }
        Ok(())
    }

    /// Marks the device failed (the first reason is kept).
    pub fn mark_lost(&self, reason: &str) {
        let mut r = self.lost_reason.lock();
        if !self.lost.load(Ordering::Acquire) {
            *r = reason.to_string();
            self.lost.store(true, Ordering::Release);
            ::log::error!("prfl runtime lost: {reason}");
        }
    }

    /// Runs device work. The [`Backend`] trait has no `Result`: a GPU failure inside an op (a
    /// launch error, out of memory, a sticky device error) panics. On a GPU such a panic marks
    /// the runtime lost and answers `PRFL_ERR_DEVICE_LOST` with the panic's message; on the CPU
    /// a panic is a bug and keeps unwinding (the entry point answers `PRFL_ERR_PANIC`).
    fn on_device<T>(
        &self,
        what: &str,
        f: impl FnOnce() -> Result<T, FfiError>,
    ) -> Result<T, FfiError> {
        if !self.be.is_cuda() {
            return f();
        }
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            Ok(r) => r,
            Err(payload) => {
                let text = crate::backend::cuda::panic_message(&*payload);
                let reason = format!("{what} failed on {}: {text}", self.be.name());
                self.mark_lost(&reason);
                Err(FfiError::new(PRFL_ERR_DEVICE_LOST, reason))
            }
        }
    }

    /// Write access to the models (see [`ModelsGuard`]).
    pub fn write_models(&self) -> ModelsGuard<'_> {
        ModelsGuard {
            rt: self,
            guard: self.models.write(),
        }
    }

    /// Runs `f` on the models unless the background trainer is running (`PRFL_ERR_BUSY`).
    pub fn exclusive<T>(
        &self,
        what: &str,
        f: impl FnOnce(&mut Models) -> Result<T, FfiError>,
    ) -> Result<T, FfiError> {
        self.check_alive()?;
        let control = self.control.lock();
        if control.is_running() {
            return Err(FfiError::new(
                PRFL_ERR_BUSY,
                format!("cannot {what} while the background trainer runs: call prfl_stop first"),
            ));
        }
        let mut models = self.write_models();
        let result = self.on_device(what, || f(&mut models));
        drop(models);
        drop(control);
        result
    }

    // ------------------------------------------------------------------ models

    pub fn load_generator(
        &self,
        open: impl FnOnce() -> Result<GeneratorSource, FfiError>,
    ) -> Result<(), FfiError> {
        self.exclusive("load a generator", |m| {
            if m.reward.is_some() || m.prfl.is_some() {
                return Err(FfiError::invalid(
                    "a reward model or PRFL trainer was built from the loaded generator; create a \
                     new runtime to use another generator",
                ));
            }
            // Opened only now, so that a failed load leaves the runtime as it was.
            let source = open()?;
            source.check_fits(&self.cfg.sizes)?;
            let c = source.config();
            ::log::info!(
                "generator loaded: {} (dim {}, {} blocks)",
                c.variant_name(),
                c.dim,
                c.num_layers
            );
            m.generator = Some(source);
            // The cached inference generator was built from the previous one.
            *m.sampling_generator.get_mut() = None;
            Ok(())
        })
    }

    fn reward_train_config(&self) -> RewardTrainConfig {
        RewardTrainConfig {
            loss: self.cfg.reward_loss,
            shift: self.cfg.shift as f64,
            optim: crate::optim::AdamWConfig {
                lr: self.cfg.reward_backbone_lr,
                ..RewardTrainConfig::default().optim
            },
            head_lr: self.cfg.reward_head_lr,
            recompute: self.cfg.recompute,
            seed: self.cfg.seed,
            ..RewardTrainConfig::default()
        }
    }

    fn finetune_config(&self) -> FinetuneConfig {
        FinetuneConfig {
            steps: self.cfg.prfl_steps,
            shift: self.cfg.shift as f64,
            optim: crate::optim::AdamWConfig {
                lr: self.cfg.prfl_lr,
                ..FinetuneConfig::default().optim
            },
            recompute: self.cfg.recompute,
            lora: self.cfg.lora.clone(),
            seed: self.cfg.seed,
            ..FinetuneConfig::default()
        }
    }

    /// A reward model cut from the generator (blocks `0..cfg.blocks`), head initialised.
    fn cut_reward_model(
        &self,
        generator: &GeneratorSource,
        cfg: RewardModelConfig,
        seed: u64,
    ) -> Result<RewardModel<Device>, FfiError> {
        let wan = generator.config().clone();
        if cfg.blocks == 0 || cfg.blocks > wan.num_layers {
            return Err(FfiError::invalid(format!(
                "the reward model keeps {} blocks; the generator has {}",
                cfg.blocks, wan.num_layers
            )));
        }
        let backbone = generator.load(backbone_filter(cfg.blocks))?;
        let head = init_head_params(wan.dim, cfg.heads, cfg.queries, cfg.hidden, seed);
        Ok(RewardModel::from_tensors(
            &self.be, wan, &backbone, &head, cfg, None,
        )?)
    }

    /// Refuses a reward model whose structure differs from the PRFL trainer's frozen copy (the
    /// copy is refreshed in place, which needs the same parameters).
    fn check_prfl_compatible(m: &Models, cfg: &RewardModelConfig) -> Result<(), FfiError> {
        match &m.prfl {
            Some(p) if p.trainer.reward.cfg != *cfg => Err(FfiError::invalid(format!(
                "the PRFL trainer was built with reward model {:?}; this one is {cfg:?}",
                p.trainer.reward.cfg
            ))),
            _ => Ok(()),
        }
    }

    pub fn init_reward(&self) -> Result<(), FfiError> {
        self.exclusive("initialise the reward model", |m| {
            let generator = m.generator.as_ref().ok_or_else(no_generator)?;
            let cfg = RewardModelConfig {
                blocks: self.cfg.reward_blocks,
                ..RewardModelConfig::default()
            };
            Self::check_prfl_compatible(m, &cfg)?;
            let model = self.cut_reward_model(generator, cfg, self.cfg.seed)?;
            let trainer = RewardTrainer::new(&self.be, model, self.reward_train_config())?;
            m.set_reward(RewardState {
                trainer,
                steps: 0,
                revision: 0,
            });
            Ok(())
        })
    }

    /// A reward trainer restored from a training checkpoint (weights, AdamW moments, random
    /// stream, iteration). Its structure comes from the file; the training hyperparameters from
    /// this runtime's configuration.
    pub fn reward_from_checkpoint(
        &self,
        generator: &GeneratorSource,
        path: &Path,
    ) -> Result<RewardState, FfiError> {
        let meta = read_training_meta(path)?;
        if meta.kind != TrainingKind::Reward {
            return Err(FfiError::new(
                PRFL_ERR_CORRUPT_FILE,
                format!(
                    "{}: a {} checkpoint, not a reward-model one",
                    path.display(),
                    meta.kind.as_str()
                ),
            ));
        }
        let cfg: RewardModelConfig =
            serde_json::from_value(meta.config["model"].clone()).map_err(|e| {
                FfiError::new(
                    PRFL_ERR_CORRUPT_FILE,
                    format!("{}: config.model: {e}", path.display()),
                )
            })?;
        let model = self.cut_reward_model(generator, cfg, 0)?;
        let mut trainer = RewardTrainer::new(&self.be, model, self.reward_train_config())?;
        let steps = trainer.resume(&self.be, path)?;
        Ok(RewardState {
            trainer,
            steps,
            revision: 0,
        })
    }

    pub fn load_reward(&self, path: &Path) -> Result<(), FfiError> {
        self.exclusive("load a reward model", |m| {
            let generator = m.generator.as_ref().ok_or_else(no_generator)?;
            let state = self.reward_from_checkpoint(generator, path)?;
            Self::check_prfl_compatible(m, &state.trainer.model.cfg)?;
            m.set_reward(state);
            Ok(())
        })
    }

    /// The PRFL trainer: the whole generator (LoRA adapters attached when configured) and a
    /// frozen copy of `reward`.
    pub fn build_prfl(
        &self,
        generator: &GeneratorSource,
        reward: &RewardState,
    ) -> Result<PrflState, FfiError> {
        let wan = generator.config().clone();
        let tensors = generator.load(|_| true)?;
        let mut gen = WanModel::new(&self.be, wan.clone(), &tensors, None)?;
        drop(tensors);
        if let Some(lora) = &self.cfg.lora {
            let adapters = init_lora(&wan, lora, self.cfg.seed)?;
            gen.attach_lora(&self.be, lora, &adapters)?;
        }
        let src = &reward.trainer.model;
        let mut copy = self.cut_reward_model(generator, src.cfg.clone(), 0)?;
        assign_trained_from(&self.be, &mut copy, src)?;
        let trainer = PrflTrainer::new(&self.be, gen, copy, self.finetune_config())?;
        ::log::info!(
            "PRFL trainer built ({})",
            match &self.cfg.lora {
                Some(l) => format!("LoRA rank {}", l.rank),
                None => "full fine-tuning".into(),
            }
        );
        Ok(PrflState {
            trainer,
            steps: 0,
            revision: reward.revision,
        })
    }

    // ------------------------------------------------------------------ samples

    /// Queues one sample built (and length-checked) by `build`; counts every outcome.
    pub fn submit<'a>(
        &self,
        build: impl FnOnce(&super::config::SampleSizes) -> Result<SampleRef<'a>, FfiError>,
    ) -> Result<(), FfiError> {
        self.check_alive()?;
        let sample = build(&self.cfg.sizes).and_then(|s| {
            if s.kind == SampleKind::Clip && s.label != 0.0 && s.label != 1.0 {
                let status = if s.label.is_finite() {
                    super::status::PRFL_ERR_INVALID_ARGUMENT
                } else {
                    PRFL_ERR_NON_FINITE
                };
                return Err(FfiError::new(
                    status,
                    format!("label is {}, not 0 (bad) or 1 (good)", s.label),
                ));
            }
            Ok(s)
        });
        match sample {
            Ok(s) => self.queue.submit(&s),
            Err(e) => {
                self.queue.note_refused(&e);
                Err(e)
            }
        }
    }

    pub fn queue_stats(&self) -> Result<PrflQueueStats, FfiError> {
        self.check_alive()?;
        Ok(self.queue.stats())
    }

    // ------------------------------------------------------------------ steps

    /// One step in the foreground (`prfl_step`).
    pub fn step(&self, mode: PrflStepMode) -> Result<PrflStepStats, FfiError> {
        self.exclusive("run prfl_step", |m| self.step_locked(m, mode))
    }

    /// One step with the models write-locked (foreground or background trainer).
    pub fn step_locked(
        &self,
        m: &mut Models,
        mode: PrflStepMode,
    ) -> Result<PrflStepStats, FfiError> {
        self.on_device("a training step", || match mode {
            PrflStepMode::PRFL_STEP_REWARD => self.reward_step(m),
            PrflStepMode::PRFL_STEP_PRFL => self.prfl_step(m),
        })
    }

    fn not_enough(&self, have: usize, what: &str) -> FfiError {
        FfiError::new(
            PRFL_ERR_NOT_ENOUGH_SAMPLES,
            format!(
                "{have} {what} queued, a batch needs {}",
                self.cfg.batch_size
            ),
        )
    }

    fn maybe_injected_panic(&self) {
        if self.inject_step_panic.swap(false, Ordering::Relaxed) {
            panic!("injected test panic inside a training step");
        }
    }

    /// The sample kind reward training takes: labelled clips for `ce`, pairs for `bt`.
    fn reward_kind(&self) -> SampleKind {
        match self.cfg.reward_loss {
            RewardLoss::Ce => SampleKind::Clip,
            RewardLoss::Bt => SampleKind::Pair,
        }
    }

    /// Whether a full batch for a step of `mode` is queued.
    pub fn has_batch(&self, mode: PrflStepMode) -> bool {
        let want = match mode {
            PrflStepMode::PRFL_STEP_REWARD => Want::Kind(self.reward_kind()),
            PrflStepMode::PRFL_STEP_PRFL => Want::Any,
        };
        self.queue.queued(want) >= self.cfg.batch_size
    }

    /// Whether the models a step of `mode` needs are loaded.
    pub fn check_can_step(&self, mode: PrflStepMode) -> Result<(), FfiError> {
        let m = self.models.read();
        if mode == PrflStepMode::PRFL_STEP_PRFL && m.generator.is_none() {
            return Err(no_generator());
        }
        if m.reward.is_none() {
            return Err(no_reward());
        }
        Ok(())
    }

    fn reward_step(&self, m: &mut Models) -> Result<PrflStepStats, FfiError> {
        let start = Instant::now();
        let state = m.reward.as_mut().ok_or_else(no_reward)?;
        let kind = self.reward_kind();
        let taken = self
            .queue
            .take(Want::Kind(kind), self.cfg.batch_size)
            .map_err(|have| self.not_enough(have, kind_name(kind)))?;
        let batch = reward_batch(&taken, kind, &self.cfg.sizes);
        drop(taken); // the slots are free again before the long part
        self.maybe_injected_panic();
        let s = state.trainer.micro_step(&self.be, &batch)?;
        state.steps += 1;
        if s.update.as_ref().is_some_and(|u| !u.skipped_nonfinite) {
            m.revision += 1;
            state.revision = m.revision;
        }
        let mut out = PrflStepStats::empty(PrflStepMode::PRFL_STEP_REWARD);
        out.step = s.step;
        out.samples = batch.size() as u32;
        out.loss = s.loss as f32;
        out.accuracy = s.accuracy as f32;
        if let Some(u) = &s.update {
            out.grad_norm = u.grad_norm as f32;
            out.skipped_nonfinite = u.skipped_nonfinite as u32;
        }
        out.skipped_nonfinite |= s.nonfinite_loss as u32;
        out.seconds = start.elapsed().as_secs_f64();
        Ok(out)
    }

    fn prfl_step(&self, m: &mut Models) -> Result<PrflStepStats, FfiError> {
        let start = Instant::now();
        let generator = m.generator.as_ref().ok_or_else(no_generator)?;
        let reward = m.reward.as_ref().ok_or_else(no_reward)?;
        let b = self.cfg.batch_size;
        let have = self.queue.queued(Want::Any);
        if have < b {
            // Checked before the (one-time, expensive) trainer build; nothing consumed.
            return Err(self.not_enough(have, "samples of either kind"));
        }
        if m.prfl.is_none() {
            m.prfl = Some(self.build_prfl(generator, reward)?);
        }
        let prfl = m.prfl.as_mut().expect("built above");
        if prfl.revision != reward.revision {
            // The reward model trained (or was loaded) since the copy: refresh the copy.
            assign_trained_from(&self.be, &mut prfl.trainer.reward, &reward.trainer.model)?;
            prfl.revision = reward.revision;
        }
        let taken = self
            .queue
            .take(Want::Any, b)
            .map_err(|have| self.not_enough(have, "samples of either kind"))?;
        let batch = prfl_batch(&taken, &self.cfg.sizes);
        drop(taken);
        self.maybe_injected_panic();
        let s = &self.cfg.sizes;
        let shape = VideoShape {
            batch: b,
            frames: s.latent_shape[1],
            height: s.latent_shape[2],
            width: s.latent_shape[3],
        };
        let text = self.be.upload(&batch.text);
        let cond = Cond::<Device> {
            text: &text,
            text_len: s.text_len,
            y: None,
            clip: None,
            image_len: 0,
        };
        let r = prfl
            .trainer
            .micro_step(&self.be, shape, &cond, batch.x0.as_deref())?;
        prfl.steps += 1;
        let mut out = PrflStepStats::empty(PrflStepMode::PRFL_STEP_PRFL);
        out.step = r.step;
        out.samples = b as u32;
        out.loss = r.prfl_loss as f32;
        out.reward = r.reward as f32;
        if let Some(u) = &r.update {
            out.grad_norm = u.grad_norm as f32;
            out.skipped_nonfinite = u.skipped_nonfinite as u32;
        }
        out.skipped_nonfinite |= (!r.prfl_loss.is_finite()) as u32;
        out.mid_step = r.mid_step as u32;
        out.peak_bytes = r.tape_bytes as u64;
        out.seconds = start.elapsed().as_secs_f64();
        Ok(out)
    }

    // ------------------------------------------------------------------ scoring

    /// Reward scores (probabilities in (0, 1)) of `count` noisy latents at their timesteps,
    /// in chunks of `batch_size`. Waits while a training step holds the models.
    pub fn score(
        &self,
        latents: &[f32],
        timesteps: &[f32],
        text: &[f32],
        out: &mut [f32],
    ) -> Result<(), FfiError> {
        self.check_alive()?;
        let s = &self.cfg.sizes;
        let count = timesteps.len();
        debug_assert!(latents.len() == count * s.latent && text.len() == count * s.text);
        for (i, &t) in timesteps.iter().enumerate() {
            if !t.is_finite() {
                return Err(FfiError::new(
                    PRFL_ERR_NON_FINITE,
                    format!("timesteps[{i}] is {t}"),
                ));
            }
            if !(0.0..=1000.0).contains(&t) {
                return Err(FfiError::invalid(format!(
                    "timesteps[{i}] is {t}, outside [0, 1000]"
                )));
            }
        }
        check_finite(latents, "latent")?;
        check_finite(text, "text")?;
        let models = self.models.read();
        let model = &models.reward.as_ref().ok_or_else(no_reward)?.trainer.model;
        self.on_device("scoring", || {
            self.score_chunks(model, latents, timesteps, text, out)
        })
    }

    fn score_chunks(
        &self,
        model: &RewardModel<Device>,
        latents: &[f32],
        timesteps: &[f32],
        text: &[f32],
        out: &mut [f32],
    ) -> Result<(), FfiError> {
        let s = &self.cfg.sizes;
        let count = timesteps.len();
        let chunk = self.cfg.batch_size;
        for first in (0..count).step_by(chunk) {
            let n = chunk.min(count - first);
            let x = self
                .be
                .upload(&latents[first * s.latent..(first + n) * s.latent]);
            let ctx = self.be.upload(&text[first * s.text..(first + n) * s.text]);
            let inputs = Inputs {
                shape: VideoShape {
                    batch: n,
                    frames: s.latent_shape[1],
                    height: s.latent_shape[2],
                    width: s.latent_shape[3],
                },
                x: &x,
                t: &timesteps[first..first + n],
                context: &ctx,
                text_len: s.text_len,
                y: None,
                clip: None,
                image_len: 0,
            };
            let scores = model.score(&self.be, &inputs)?;
            out[first..first + n].copy_from_slice(&scores);
        }
        Ok(())
    }

    /// Scores `count` candidates at one `timestep` into `scores` and writes the indices of the
    /// `out_kept.len()` best, best first (ties: the lower index first).
    pub fn select(
        &self,
        latents: &[f32],
        timestep: f32,
        text: &[f32],
        out_kept: &mut [u32],
        scores: &mut [f32],
    ) -> Result<(), FfiError> {
        if !timestep.is_finite() {
            return Err(FfiError::new(
                PRFL_ERR_NON_FINITE,
                format!("timestep is {timestep}"),
            ));
        }
        if !(0.0..=1000.0).contains(&timestep) {
            return Err(FfiError::invalid(format!(
                "timestep is {timestep}, outside [0, 1000]"
            )));
        }
        let timesteps = vec![timestep; scores.len()];
        self.score(latents, &timesteps, text, scores)?;
        let best = best_first(scores, out_kept.len());
        for (o, i) in out_kept.iter_mut().zip(best) {
            *o = i as u32;
        }
        Ok(())
    }

    // ------------------------------------------------------------------ sampling

    /// Resolves a `PrflSampleConfig` for `count` (at least 1) candidates.
    pub fn sample_setup(
        &self,
        c: &PrflSampleConfig,
        count: usize,
    ) -> Result<SampleSetup, FfiError> {
        let solver = match PrflSolver::from_i32(c.solver) {
            Some(PrflSolver::PRFL_SOLVER_UNIPC) => SolverKind::UniPc,
            Some(PrflSolver::PRFL_SOLVER_EULER) => SolverKind::Euler,
            None => {
                return Err(FfiError::unknown_enum(
                    "config->solver",
                    c.solver,
                    "PRFL_SOLVER_UNIPC (0), PRFL_SOLVER_EULER (1)",
                ))
            }
        };
        let steps = match c.steps {
            0 => self.cfg.prfl_steps,
            n => n as usize,
        };
        if !(2..=PRFL_MAX_SAMPLE_STEPS).contains(&steps) {
            return Err(FfiError::invalid(format!(
                "config->steps is {steps}: sampling takes 2 to {PRFL_MAX_SAMPLE_STEPS} steps"
            )));
        }
        let shift = if c.shift == 0.0 {
            self.cfg.shift
        } else {
            c.shift
        };
        if !(shift.is_finite() && shift > 0.0) {
            return Err(FfiError::invalid(format!(
                "config->shift is {shift}: it must be finite and positive (0 = the runtime's)"
            )));
        }
        let keep = match c.keep {
            0 => (count / 4).max(1),
            n => n as usize,
        };
        if keep > count {
            return Err(FfiError::invalid(format!(
                "config->keep is {keep}: between 1 and count ({count})"
            )));
        }
        let at_step = match c.reject_at_step {
            0 => (2 * steps / 5).max(1),
            n => n as usize,
        };
        if at_step >= steps {
            return Err(FfiError::invalid(format!(
                "config->reject_at_step is {at_step}: between 1 and steps - 1 ({})",
                steps - 1
            )));
        }
        Ok(SampleSetup {
            plan: SamplingPlan::wan(steps, shift as f64, solver)?,
            steps,
            stage: (keep < count).then_some(RejectStage { at_step, keep }),
            keep,
        })
    }

    /// The generator sampling runs: the PRFL trainer's when it exists, else the cached inference
    /// generator (built now on first use).
    fn sampling_generator(
        &self,
        m: &Models,
        source: &GeneratorSource,
    ) -> Result<Arc<WanModel<Device>>, FfiError> {
        let mut cache = m.sampling_generator.lock();
        if let Some(g) = cache.as_ref() {
            return Ok(Arc::clone(g));
        }
        let tensors = source.load(|_| true)?;
        let g = Arc::new(WanModel::new(
            &self.be,
            source.config().clone(),
            &tensors,
            None,
        )?);
        ::log::info!("inference generator built for sampling");
        *cache = Some(Arc::clone(&g));
        Ok(g)
    }

    /// Samples `count` candidates from `noise` (`count x latent`) under `text` (`count x text`),
    /// rejecting all but `setup.keep` at `setup.stage` under the reward model; writes the
    /// survivors' clean latents and indices (in candidate order). Takes the models' read lock
    /// for the whole rollout, like scoring.
    pub fn sample(
        &self,
        noise: &[f32],
        text: &[f32],
        setup: &SampleSetup,
        out_latents: &mut [f32],
        out_kept: &mut [u32],
    ) -> Result<PrflSampleStats, FfiError> {
        let start = Instant::now();
        self.check_alive()?;
        check_finite(noise, "noise")?;
        check_finite(text, "text")?;
        let s = &self.cfg.sizes;
        let models = self.models.read();
        let source = models.generator.as_ref().ok_or_else(no_generator)?;
        let reward = match setup.stage {
            Some(_) => Some(&models.reward.as_ref().ok_or_else(no_reward)?.trainer.model),
            None => None,
        };
        let cand = Candidates {
            shape: VideoShape {
                batch: 1,
                frames: s.latent_shape[1],
                height: s.latent_shape[2],
                width: s.latent_shape[3],
            },
            noise,
            text,
            text_len: s.text_len,
            max_batch: self.cfg.batch_size,
        };
        let (outcome, reward_cost) = self.on_device("sampling", || {
            let cached;
            let generator = match &models.prfl {
                Some(p) => {
                    // The fine-tuned generator supersedes the cached base one: free it.
                    *models.sampling_generator.lock() = None;
                    &p.trainer.generator
                }
                None => {
                    cached = self.sampling_generator(&models, source)?;
                    &*cached
                }
            };
            Ok(match (setup.stage, reward) {
                (Some(stage), Some(r)) => (
                    sample_with_early_rejection(
                        &self.be,
                        generator,
                        r,
                        &setup.plan,
                        &cand,
                        &[stage],
                    )?,
                    r.cfg.blocks as f64 / generator.cfg.num_layers as f64,
                ),
                _ => (
                    sample_candidates(&self.be, generator, &setup.plan, &cand)?,
                    0.0,
                ),
            })
        })?;
        drop(models);
        debug_assert_eq!(outcome.kept.len(), out_kept.len());
        out_latents.copy_from_slice(&outcome.latents);
        for (o, &k) in out_kept.iter_mut().zip(&outcome.kept) {
            *o = k as u32;
        }
        Ok(PrflSampleStats {
            struct_size: 0,
            reject_timestep: outcome.stages.first().map_or(f32::NAN, |st| st.timestep),
            generator_evals: outcome.generator_evals as u64,
            reward_evals: outcome.reward_evals as u64,
            full_generator_evals: outcome.full_generator_evals as u64,
            reward_cost,
            saved_fraction: outcome.saved_fraction(reward_cost),
            seconds: start.elapsed().as_secs_f64(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::device::DeviceSpec;
    use crate::ffi::config::PrflConfig;

    fn small(device: DeviceSpec, cpu_fallback: bool) -> RuntimeConfig {
        let c = PrflConfig {
            latent_frames: 1,
            latent_height: 2,
            latent_width: 2,
            text_len: 2,
            text_dim: 4,
            queue_capacity: 1,
            ..PrflConfig::default()
        };
        // SAFETY: the library folder is NULL.
        let mut cfg = unsafe { RuntimeConfig::validate(&c) }.unwrap();
        cfg.device = device;
        cfg.cpu_fallback = cpu_fallback;
        cfg
    }

    #[test]
    fn the_device_is_opened_at_creation_with_the_configured_fallback() {
        let have_gpu = crate::backend::cuda::probe(&Default::default()).is_ok();
        let rt = Runtime::new(small(DeviceSpec::Cpu, false)).unwrap();
        assert!(!rt.be.is_cuda());
        let rt = Runtime::new(small(DeviceSpec::Auto, false)).unwrap();
        assert_eq!(rt.be.is_cuda(), have_gpu);
        let rt = Runtime::new(small(DeviceSpec::Cuda(0), true)).unwrap();
        assert_eq!(rt.be.is_cuda(), have_gpu);
        match Runtime::new(small(DeviceSpec::Cuda(0), false)) {
            Ok(rt) => assert!(have_gpu && rt.be.is_cuda()),
            Err(e) => {
                assert!(!have_gpu);
                assert_eq!(e.status, PRFL_ERR_DEVICE);
                assert!(e.message.contains("cuda:0"), "{}", e.message);
            }
        }
    }
}
