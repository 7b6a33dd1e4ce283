//! Submitting samples and training: the producer side ([`Session::submit`], copying into the
//! queue) and the consumer side (a reward or PRFL step taking a batch from it, on the calling
//! thread or on the background trainer).
//!
//! The route of a latent: `Session::submit` -> `SampleQueue::submit` (copied into a slot) ->
//! `reward_step` / `prfl_step` -> `queue.take` -> `batch.rs` (the trainers' batch layouts) ->
//! `RewardTrainer::micro_step` / `PrflTrainer::micro_step`.

use std::time::Instant;

use super::batch::{prfl_batch, reward_batch};
use super::models::assign_trained_from;
use super::queue::{SampleRef, Want};
use super::stats::{QueueStats, StepMode, StepStats};
use super::{no_generator, no_reward, worker, Models, Runtime, SampleSizes, Session};
use crate::backend::device::Device;
use crate::backend::Backend;
use crate::finetune::sample::Cond;
use crate::model::wan::VideoShape;
use crate::reward::dataset::SampleKind;
use crate::reward::train::RewardLoss;
use crate::{Error, Result};

fn kind_name(kind: SampleKind) -> &'static str {
    match kind {
        SampleKind::Clip => "labelled clips (prfl_submit_labeled)",
        SampleKind::Pair => "pairs (prfl_submit_pair)",
    }
}

/// Checks one array's length against the configured size (a message only on failure: the
/// submission path must not allocate).
fn check_len(what: &str, got: usize, want: usize, s: &SampleSizes) -> Result<()> {
    if got == want {
        return Ok(());
    }
    let desc = match what {
        "text" => format!("text [L, D] = [{}, {}] per sample", s.text_len, s.text_dim),
        "image" => format!("image [Li, Di] = [{}, {}]", s.image_len, s.image_dim),
        _ => format!("latent [C, F, H, W] = {:?}", s.latent_shape),
    };
    Err(Error::Shape(format!(
        "`{what}` is {got} floats, expected {want} ({desc})"
    )))
}

impl Runtime {
    /// Lengths against the configuration, then the label.
    fn check_sample(&self, s: &SampleRef<'_>) -> Result<()> {
        let z = &self.cfg.sizes;
        match s.kind {
            SampleKind::Clip => {
                check_len("latent", s.latent.len(), z.latent, z)?;
                check_len("lose", s.lose.len(), 0, z)?;
            }
            SampleKind::Pair => {
                check_len("win", s.latent.len(), z.latent, z)?;
                check_len("lose", s.lose.len(), z.latent, z)?;
            }
        }
        check_len("text", s.text.len(), z.text, z)?;
        check_len("image", s.image.len(), z.image, z)?;
        if s.kind == SampleKind::Clip && s.label != 0.0 && s.label != 1.0 {
            let message = format!("label is {}, not 0 (bad) or 1 (good)", s.label);
            return Err(if s.label.is_finite() {
                Error::InvalidArgument(message)
            } else {
                Error::NonFinite(message)
            });
        }
        Ok(())
    }

    fn submit(&self, s: &SampleRef<'_>) -> Result<()> {
        self.check_alive()?;
        match self.check_sample(s) {
            Ok(()) => self.queue.submit(s),
            Err(e) => {
                self.queue.count_refused(&e);
                Err(e)
            }
        }
    }

    /// One step with the models write-locked (foreground or background trainer).
    pub(crate) fn step_locked(&self, m: &mut Models, mode: StepMode) -> Result<StepStats> {
        self.on_device("a training step", || match mode {
            StepMode::Reward => self.reward_step(m),
            StepMode::Prfl => self.prfl_step(m),
        })
    }

    fn not_enough(&self, have: usize, what: &str) -> Error {
        Error::NotEnoughSamples(format!(
            "{have} {what} queued, a batch needs {}",
            self.cfg.batch_size
        ))
    }

    fn maybe_injected_panic(&self) {
        #[cfg(feature = "test-hooks")]
        if self
            .inject_step_panic
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
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
    pub(crate) fn has_batch(&self, mode: StepMode) -> bool {
        let want = match mode {
            StepMode::Reward => Want::Kind(self.reward_kind()),
            StepMode::Prfl => Want::Any,
        };
        self.queue.queued(want) >= self.cfg.batch_size
    }

    /// Whether the models a step of `mode` needs are loaded.
    pub(crate) fn check_can_step(&self, mode: StepMode) -> Result<()> {
        let m = self.models.read();
        if mode == StepMode::Prfl && m.generator.is_none() {
            return Err(no_generator());
        }
        if m.reward.is_none() {
            return Err(no_reward());
        }
        Ok(())
    }

    fn reward_step(&self, m: &mut Models) -> Result<StepStats> {
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
        let skipped = s.update.as_ref().is_some_and(|u| u.skipped_nonfinite);
        Ok(StepStats {
            mode: StepMode::Reward,
            step: s.step,
            samples: batch.size(),
            loss: s.loss as f32,
            accuracy: Some(s.accuracy as f32),
            reward: None,
            grad_norm: s.update.as_ref().map(|u| u.grad_norm as f32),
            skipped_nonfinite: skipped || s.nonfinite_loss,
            mid_step: None,
            seconds: start.elapsed().as_secs_f64(),
            peak_bytes: None,
        })
    }

    fn prfl_step(&self, m: &mut Models) -> Result<StepStats> {
        let start = Instant::now();
        let generator = m.generator.as_ref().ok_or_else(no_generator)?;
        let reward = m.reward.as_ref().ok_or_else(no_reward)?;
        let b = self.cfg.batch_size;
        let have = self.queue.queued(Want::Any);
        if have < b {
            // Checked before the (one-time, expensive) trainer build; nothing consumed.
            return Err(self.not_enough(have, "samples of either kind"));
        }
        let prfl = match &mut m.prfl {
            Some(p) => p,
            built => built.insert(self.build_prfl(generator, reward)?),
        };
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
        let skipped = r.update.as_ref().is_some_and(|u| u.skipped_nonfinite);
        Ok(StepStats {
            mode: StepMode::Prfl,
            step: r.step,
            samples: b,
            loss: r.prfl_loss as f32,
            accuracy: None,
            reward: Some(r.reward as f32),
            grad_norm: r.update.as_ref().map(|u| u.grad_norm as f32),
            skipped_nonfinite: skipped || !r.prfl_loss.is_finite(),
            mid_step: Some(r.mid_step),
            seconds: start.elapsed().as_secs_f64(),
            peak_bytes: Some(r.tape_bytes as u64),
        })
    }
}

impl Session {
    /// Queues one sample (copied; the call never waits for training and never allocates).
    /// Thread-safe: any number of producer threads may submit at once, also while the
    /// background trainer runs. Every outcome is counted in [`Session::queue_stats`].
    /// Errors: [`Error::QueueFull`] (policy `RejectNewest`), [`Error::Shape`] (a length differs
    /// from the configuration), [`Error::NonFinite`] (NaN or infinity, a NaN label),
    /// [`Error::InvalidArgument`] (a clip's label other than 0 or 1), [`Error::DeviceLost`].
    pub fn submit(&self, sample: &SampleRef<'_>) -> Result<()> {
        self.rt().submit(sample)
    }

    /// Queues a labelled clip: its clean latent `[C, F, H, W]`, its text states `[L, D]`, for I2V
    /// its image features (`&[]` for T2V) and `label` 1 (good) or 0 (bad). See
    /// [`Session::submit`].
    pub fn submit_labelled(
        &self,
        latent: &[f32],
        text: &[f32],
        image: &[f32],
        label: f32,
    ) -> Result<()> {
        self.submit(&SampleRef::labelled(latent, text, image, label))
    }

    /// Queues a preference pair: the preferred clip's latent `win` and the other's `lose` under
    /// one prompt. See [`Session::submit`].
    pub fn submit_pair(
        &self,
        win: &[f32],
        lose: &[f32],
        text: &[f32],
        image: &[f32],
    ) -> Result<()> {
        self.submit(&SampleRef::pair(win, lose, text, image))
    }

    /// Counts a submission refused for its arguments before it reached [`Session::submit`]
    /// (the C ABI's pointer and length checks), under `rejected_invalid`.
    pub fn count_invalid_submission(&self) {
        self.rt()
            .queue
            .count_refused(&Error::InvalidArgument(String::new()));
    }

    /// The queue's counters (lock-free).
    pub fn queue_stats(&self) -> Result<QueueStats> {
        self.rt().check_alive()?;
        Ok(self.rt().queue.stats())
    }

    /// Runs one training step of `mode` on the calling thread.
    /// - [`StepMode::Reward`]: takes `batch_size` samples of the loss's kind, noises them to
    ///   random levels and takes one reward-model optimiser step.
    /// - [`StepMode::Prfl`]: takes `batch_size` samples of either kind (pairs first, oldest
    ///   first); their text conditions a rollout of the generator, trained to raise the frozen
    ///   reward copy's score mid-rollout. The PRFL trainer is built on the first PRFL step; the
    ///   frozen copy is refreshed whenever the reward model changed since.
    ///
    /// Samples taken are consumed even if the step then fails.
    /// Errors: [`Error::NotEnoughSamples`] (nothing consumed), [`Error::NotLoaded`],
    /// [`Error::Busy`] (the background trainer runs).
    pub fn step(&self, mode: StepMode) -> Result<StepStats> {
        let rt = self.rt();
        rt.exclusive("run prfl_step", |m| rt.step_locked(m, mode))
    }

    /// Starts the background trainer: a thread that runs a step of `mode` whenever a full batch
    /// is queued and otherwise sleeps about a millisecond. While it runs, steps, save, load and
    /// model loads answer [`Error::Busy`]; submissions, scoring and queue statistics work. If a
    /// step fails the thread stops, and [`Session::stop_background`] returns its error.
    pub fn start_background(&self, mode: StepMode) -> Result<()> {
        worker::start(&self.handle.rt, mode)
    }

    /// Stops the background trainer, waiting for the step in progress. `Ok` if it was running
    /// fine or not running at all, else the error that had stopped it
    /// ([`Error::TrainerStopped`]).
    pub fn stop_background(&self) -> Result<()> {
        let stopped = worker::stop(self.rt());
        self.rt().check_alive()?;
        stopped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::device::DeviceSpec;
    use crate::session::SessionConfig;

    fn session(capacity: usize) -> Session {
        let sizes = SampleSizes::new([1, 1, 2, 2], [1, 2], [0, 0]).unwrap();
        Session::new(SessionConfig {
            device: DeviceSpec::Cpu,
            queue_capacity: capacity,
            ..SessionConfig::new(sizes)
        })
        .unwrap()
    }

    #[test]
    fn rust_submissions_are_checked_and_every_outcome_counted() {
        let s = session(1);
        let e = s
            .submit_labelled(&[0.0; 3], &[0.0; 2], &[], 1.0)
            .unwrap_err();
        assert!(matches!(e, Error::Shape(_)), "{e}");
        assert!(
            e.to_string().contains("`latent` is 3 floats, expected 4"),
            "{e}"
        );
        let e = s
            .submit_labelled(&[0.0; 4], &[0.0; 2], &[], 0.5)
            .unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
        let e = s
            .submit_labelled(&[0.0; 4], &[0.0; 2], &[], f32::NAN)
            .unwrap_err();
        assert!(matches!(e, Error::NonFinite(_)), "{e}");
        let e = s
            .submit_pair(&[0.0; 4], &[0.0; 2], &[0.0; 2], &[])
            .unwrap_err();
        assert!(e.to_string().contains("`lose`"), "{e}");
        s.submit_labelled(&[0.0; 4], &[0.0; 2], &[], 1.0).unwrap();
        let e = s
            .submit_pair(&[0.0; 4], &[0.0; 4], &[0.0; 2], &[])
            .unwrap_err();
        assert!(matches!(e, Error::QueueFull(_)), "{e}");
        s.count_invalid_submission();
        let q = s.queue_stats().unwrap();
        assert_eq!((q.submitted, q.accepted), (7, 1));
        assert_eq!((q.rejected_full, q.rejected_invalid), (1, 5));
        assert_eq!(q.queued, 1);
    }

    #[test]
    fn steps_need_their_models() {
        let s = session(2);
        assert!(matches!(s.step(StepMode::Reward), Err(Error::NotLoaded(_))));
        assert!(matches!(
            s.start_background(StepMode::Prfl),
            Err(Error::NotLoaded(_))
        ));
        assert!(matches!(
            s.score(&[0.0; 4], &[1.0], &[0.0; 2]),
            Err(Error::NotLoaded(_))
        ));
        assert!(matches!(
            s.save("/nonexistent/prfl"),
            Err(Error::NotLoaded(_))
        ));
        s.stop_background().unwrap();
    }
}
