//! The training loop every trainer shares: gradient accumulation over windows of micro-batches,
//! the AdamW step that closes a window (global-norm clipping and warm-up live in [`AdamW`]),
//! skipping the step of a window that saw a non-finite loss, the trainer's random stream, and the
//! state a training checkpoint saves and restores.
//!
//! A trainer ([`crate::finetune::pretrain::PretrainTrainer`],
//! [`crate::reward::train::RewardTrainer`], [`crate::finetune::prfl::PrflTrainer`]) holds one
//! [`TrainLoop`] and adds only its objective: per micro-batch it draws from [`TrainLoop::rng_mut`],
//! accumulates its loss's gradient into [`TrainLoop::grads_mut`], and calls
//! [`TrainLoop::after_micro_step`], which closes the window once `accumulation` micro-batches
//! are in.

use std::path::Path;

use serde_json::Value;

use super::adamw::{AdamW, StepReport};
use super::checkpoint::{
    load_training_checkpoint, save_training_checkpoint, TrainingKind, TrainingMeta,
};
use crate::backend::Backend;
use crate::model::params::{Grads, ParamStore};
use crate::schedule::rng::Rng;
use crate::{Error, Result};

/// The optimiser, the gradients it reads, the random stream and the accumulation window of one
/// trainer. The parameters stay with the trainer's model and are passed in where a step needs
/// them.
pub struct TrainLoop<B: Backend> {
    opt: AdamW<B>,
    grads: Grads<B>,
    rng: Rng,
    /// Micro-batches per optimiser step.
    accumulation: usize,
    /// Micro-batches accumulated in the current window.
    micro: usize,
    /// A non-finite loss occurred in the current window: its step is skipped.
    poisoned: bool,
}

impl<B: Backend> TrainLoop<B> {
    /// A loop over `opt` (built for `grads`' trainable set) with windows of `accumulation`
    /// micro-batches; errors when `accumulation` is 0.
    pub fn new(opt: AdamW<B>, grads: Grads<B>, rng: Rng, accumulation: usize) -> Result<Self> {
        if accumulation == 0 {
            return Err(Error::Config("accumulation must be at least 1".into()));
        }
        Ok(TrainLoop {
            opt,
            grads,
            rng,
            accumulation,
            micro: 0,
            poisoned: false,
        })
    }

    /// The optimiser (step count, state size, configuration).
    pub fn optimizer(&self) -> &AdamW<B> {
        &self.opt
    }

    /// The optimiser, mutably (importing state into it directly).
    pub fn optimizer_mut(&mut self) -> &mut AdamW<B> {
        &mut self.opt
    }

    /// The gradients accumulated in the current window.
    pub fn grads(&self) -> &Grads<B> {
        &self.grads
    }

    /// The gradients, for an objective's backward pass to accumulate into.
    pub fn grads_mut(&mut self) -> &mut Grads<B> {
        &mut self.grads
    }

    /// The trainer's random stream (noise, levels, mid steps, pair order).
    pub fn rng(&self) -> &Rng {
        &self.rng
    }

    /// The random stream, for an objective's draws.
    pub fn rng_mut(&mut self) -> &mut Rng {
        &mut self.rng
    }

    /// Replaces the random stream (a resumed or reseeded run).
    pub fn set_rng(&mut self, rng: Rng) {
        self.rng = rng;
    }

    /// The gradients and the random stream at once, for an objective that draws while it
    /// accumulates (the flow-matching step).
    pub fn grads_and_rng(&mut self) -> (&mut Grads<B>, &mut Rng) {
        (&mut self.grads, &mut self.rng)
    }

    /// Micro-batches per optimiser step.
    pub fn accumulation(&self) -> usize {
        self.accumulation
    }

    /// Micro-batches accumulated towards the next optimiser step.
    pub fn pending_micro_batches(&self) -> usize {
        self.micro
    }

    /// Records a micro-batch's loss: a non-finite one poisons the window, whose step is then
    /// skipped.
    pub fn note_loss(&mut self, loss: f64) {
        if !loss.is_finite() {
            self.poisoned = true;
        }
    }

    /// Counts a finished micro-batch (its loss already noted) and, when it completes the window,
    /// closes it: the optimiser's step report, or `None` while the window is still open.
    pub fn end_micro_batch(&mut self, be: &B, params: &mut ParamStore<B>) -> Option<StepReport> {
        self.micro += 1;
        if self.micro < self.accumulation {
            return None;
        }
        let micro = std::mem::take(&mut self.micro);
        Some(self.step_now(be, params, micro))
    }

    /// [`TrainLoop::note_loss`] then [`TrainLoop::end_micro_batch`]: the usual end of a
    /// micro-step.
    pub fn after_micro_step(
        &mut self,
        be: &B,
        params: &mut ParamStore<B>,
        loss: f64,
    ) -> Option<StepReport> {
        self.note_loss(loss);
        self.end_micro_batch(be, params)
    }

    /// Closes a window of `micro_batches` now, whatever the count: an AdamW step over the
    /// accumulated gradients, or a skipped step when the window is poisoned; the gradients are
    /// zeroed either way. The window's micro-batch count is left alone (PRFL's interleaved SFT
    /// step updates on its own between PRFL micro-steps).
    pub fn step_now(
        &mut self,
        be: &B,
        params: &mut ParamStore<B>,
        micro_batches: usize,
    ) -> StepReport {
        let poisoned = std::mem::take(&mut self.poisoned);
        self.opt
            .close_window(be, params, &mut self.grads, micro_batches, poisoned)
    }

    /// Writes a training checkpoint (one atomic file): the trainable weights, the AdamW moments
    /// and step, the random stream, the trainer's `iteration` and its `config` (stored
    /// verbatim). Only between windows, so that a resumed run continues exactly.
    pub fn save_checkpoint(
        &self,
        be: &B,
        params: &ParamStore<B>,
        path: &Path,
        kind: TrainingKind,
        iteration: u64,
        config: Value,
    ) -> Result<()> {
        if self.micro != 0 {
            return Err(Error::InvalidInput(format!(
                "cannot checkpoint in the middle of an accumulation window ({} of {} micro-batches)",
                self.micro, self.accumulation
            )));
        }
        let tensors = self.opt.export_state(be, params);
        let meta = TrainingMeta {
            step: iteration,
            rng: self.rng.state(),
            kind,
            config,
        };
        save_training_checkpoint(path, &tensors, &meta.to_json())
    }

    /// Restores [`TrainLoop::save_checkpoint`]'s file: refuses another trainer's `kind`, lets
    /// `check` refuse the saved metadata (a trainer's configuration test), then restores the
    /// weights, moments, step and random stream and opens a fresh window. Returns the saved
    /// iteration. On error nothing has changed.
    pub fn resume(
        &mut self,
        be: &B,
        params: &mut ParamStore<B>,
        path: &Path,
        kind: TrainingKind,
        check: impl FnOnce(&TrainingMeta) -> Result<()>,
    ) -> Result<u64> {
        let (tensors, meta) = load_training_checkpoint(path)?;
        let meta = TrainingMeta::from_json(&meta)?;
        if meta.kind != kind {
            let what = match kind {
                TrainingKind::Reward => "reward-model",
                TrainingKind::Prfl => "PRFL",
            };
            return Err(Error::checkpoint(
                path,
                format!("not a {what} training checkpoint"),
            ));
        }
        check(&meta)?;
        let rng = Rng::from_state(&meta.rng)?;
        self.opt.import_state(be, params, &tensors)?;
        self.rng = rng;
        self.micro = 0;
        self.poisoned = false;
        self.grads.zero(be);
        Ok(meta.step)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::backend::cpu::Cpu;
    use crate::optim::AdamWConfig;
    use crate::tensor::HostTensor;

    fn store() -> ParamStore<Cpu> {
        let host: BTreeMap<String, HostTensor> = [(
            "p.bias".to_string(),
            HostTensor::from_f32(vec![2], vec![1.0, -1.0]).unwrap(),
        )]
        .into();
        ParamStore::from_host(&Cpu, &host, None)
    }

    fn train_loop(params: &ParamStore<Cpu>, accumulation: usize) -> Result<TrainLoop<Cpu>> {
        let grads = Grads::new(&Cpu, params, |_| true);
        let cfg = AdamWConfig {
            lr: 0.1,
            ..AdamWConfig::default()
        };
        let opt = AdamW::new(&Cpu, params, &grads, cfg)?;
        TrainLoop::new(opt, grads, Rng::seed_from_u64(4), accumulation)
    }

    fn add_grad(tl: &mut TrainLoop<Cpu>) {
        let g = tl.grads_mut().get_mut(0).unwrap();
        g.iter_mut().for_each(|v| *v += 0.5);
    }

    #[test]
    fn windows_close_after_accumulation_and_poisoned_ones_are_skipped() {
        let mut params = store();
        assert!(train_loop(&params, 0).is_err());
        let mut tl = train_loop(&params, 2).unwrap();
        add_grad(&mut tl);
        assert!(tl.after_micro_step(&Cpu, &mut params, 0.5).is_none());
        assert_eq!(tl.pending_micro_batches(), 1);
        add_grad(&mut tl);
        let r = tl.after_micro_step(&Cpu, &mut params, 0.25).unwrap();
        assert!(!r.skipped_nonfinite && r.step == 1);
        assert_eq!(tl.pending_micro_batches(), 0);
        assert_eq!(tl.grads().get(0).unwrap(), &vec![0.0; 2]);
        let after_one = params.to_host(&Cpu, 0).to_f32();
        assert_ne!(after_one, vec![1.0, -1.0]);

        // A non-finite loss anywhere in the window skips its step and changes nothing.
        add_grad(&mut tl);
        assert!(tl.after_micro_step(&Cpu, &mut params, f64::NAN).is_none());
        add_grad(&mut tl);
        let r = tl.after_micro_step(&Cpu, &mut params, 1.0).unwrap();
        assert!(r.skipped_nonfinite && r.step == 1);
        assert_eq!(params.to_host(&Cpu, 0).to_f32(), after_one);
        assert_eq!(tl.grads().get(0).unwrap(), &vec![0.0; 2]);

        // `step_now` closes a window early without moving the micro-batch count.
        add_grad(&mut tl);
        assert!(tl.after_micro_step(&Cpu, &mut params, 1.0).is_none());
        let r = tl.step_now(&Cpu, &mut params, 1);
        assert!(!r.skipped_nonfinite && r.step == 2);
        assert_eq!(tl.pending_micro_batches(), 1);
    }

    #[test]
    fn checkpoints_restore_the_loop_between_windows_only() {
        let dir = std::env::temp_dir().join(format!("prfl-train-loop-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ckpt.safetensors");
        let mut params = store();
        let mut a = train_loop(&params, 2).unwrap();
        add_grad(&mut a);
        a.after_micro_step(&Cpu, &mut params, 1.0);
        let config = serde_json::json!({});
        let mid = a.save_checkpoint(&Cpu, &params, &path, TrainingKind::Prfl, 3, config.clone());
        assert!(mid
            .unwrap_err()
            .to_string()
            .contains("1 of 2 micro-batches"));
        add_grad(&mut a);
        a.after_micro_step(&Cpu, &mut params, 1.0).unwrap();
        a.rng_mut().uniform_f64();
        a.save_checkpoint(&Cpu, &params, &path, TrainingKind::Prfl, 3, config)
            .unwrap();

        let mut fresh = store();
        let mut b = train_loop(&fresh, 2).unwrap();
        let e = b
            .resume(&Cpu, &mut fresh, &path, TrainingKind::Reward, |_| Ok(()))
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("not a reward-model training checkpoint"),
            "{e}"
        );
        let refused = b.resume(&Cpu, &mut fresh, &path, TrainingKind::Prfl, |_| {
            Err(Error::Config("no".into()))
        });
        assert!(refused.is_err() && b.optimizer().step_count() == 0);
        let it = b
            .resume(&Cpu, &mut fresh, &path, TrainingKind::Prfl, |_| Ok(()))
            .unwrap();
        assert_eq!((it, b.optimizer().step_count()), (3, 1));
        assert_eq!(b.rng().state(), a.rng().state());
        assert_eq!(
            fresh.to_host(&Cpu, 0).to_f32(),
            params.to_host(&Cpu, 0).to_f32()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
