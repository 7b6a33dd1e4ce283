//! Flow-matching pre-training of a generator from scratch (method.md section 2): the objective a
//! Wan2.1 model was trained with, so that a model built here (the built-in demo's) is a real
//! generator before a reward model is cut from it or PRFL fine-tunes it.
//!
//! One micro-step draws a training level per sample, noises the clean latents
//! (`x_t = (1 - sigma) x0 + sigma eps`), regresses the velocity `eps - x0` with the mean squared
//! error and accumulates the gradient; every `accumulation` micro-steps AdamW updates every
//! generator parameter. This is [`super::prfl::PrflTrainer::sft_micro`]'s loss without a reward
//! model attached, kept separate so that PRFL's trainer stays about PRFL.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::flow_step::{flow_matching_micro, CleanBatch};
use super::sample::Cond;
use crate::backend::Backend;
use crate::model::params::Grads;
use crate::model::wan::{Mode, VideoShape, WanModel};
use crate::optim::adamw::{AdamW, AdamWConfig, StepReport};
use crate::schedule::levels::{LevelDistribution, TrainingLevels};
use crate::schedule::rng::Rng;
use crate::{Error, Result};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PretrainConfig {
    /// Shift of the training noise levels (Wan2.1: 5; small latents need less).
    pub shift: f64,
    /// `None`: uniform level draws; `Some((mean, std))`: logit-normal.
    pub logit_normal: Option<(f64, f64)>,
    pub lr: f32,
    pub betas: (f32, f32),
    pub weight_decay: f32,
    pub eps: f32,
    pub max_grad_norm: Option<f32>,
    pub warmup_steps: u64,
    /// Micro-batches per optimiser step.
    pub accumulation: usize,
    /// Per-block activation recompute (gradient checkpointing).
    pub recompute: bool,
    pub seed: u64,
}

impl Default for PretrainConfig {
    fn default() -> Self {
        PretrainConfig {
            shift: 5.0,
            logit_normal: None,
            lr: 1e-4,
            betas: (0.9, 0.999),
            weight_decay: 0.01,
            eps: 1e-8,
            max_grad_norm: Some(1.0),
            warmup_steps: 0,
            accumulation: 1,
            recompute: false,
            seed: 0,
        }
    }
}

/// What one micro-step did.
#[derive(Clone, Debug, PartialEq)]
pub struct PretrainStepStats {
    /// Optimiser steps taken so far (after this micro-step).
    pub step: u64,
    /// Mean squared velocity error of the micro-batch.
    pub loss: f64,
    /// Set when this micro-step closed an accumulation window.
    pub update: Option<StepReport>,
    pub seconds: f64,
}

/// AdamW over every generator parameter, trained with the flow-matching loss.
pub struct PretrainTrainer<B: Backend> {
    pub generator: WanModel<B>,
    pub cfg: PretrainConfig,
    opt: AdamW<B>,
    grads: Grads<B>,
    levels: TrainingLevels,
    rng: Rng,
    micro: usize,
    /// A non-finite loss occurred in the current accumulation window: its update is skipped.
    poisoned: bool,
}

impl<B: Backend> PretrainTrainer<B> {
    pub fn new(be: &B, generator: WanModel<B>, cfg: PretrainConfig) -> Result<Self> {
        if cfg.accumulation == 0 {
            return Err(Error::Config("accumulation must be at least 1".into()));
        }
        if !generator.has_head() || generator.num_blocks() != generator.cfg.num_layers {
            return Err(Error::Config(
                "pre-training needs the full generator (every block and the head)".into(),
            ));
        }
        let grads = Grads::new(be, &generator.params, |_| true);
        let opt = AdamW::new(
            be,
            &generator.params,
            &grads,
            AdamWConfig {
                lr: cfg.lr,
                betas: cfg.betas,
                eps: cfg.eps,
                weight_decay: cfg.weight_decay,
                max_grad_norm: cfg.max_grad_norm,
                warmup_steps: cfg.warmup_steps,
            },
        )?;
        let levels = TrainingLevels::new(cfg.shift);
        let levels = match cfg.logit_normal {
            Some((mean, std)) => {
                levels.with_distribution(LevelDistribution::LogitNormal { mean, std })
            }
            None => levels,
        };
        Ok(PretrainTrainer {
            rng: Rng::seed_from_u64(cfg.seed),
            levels,
            opt,
            grads,
            generator,
            cfg,
            micro: 0,
            poisoned: false,
        })
    }

    pub fn optimizer(&self) -> &AdamW<B> {
        &self.opt
    }

    /// One micro-batch of clean latents `x0` (host data, `[B, C, F, H, W]`): noise, forward,
    /// loss, backward; an optimiser step once `accumulation` micro-batches are in.
    pub fn micro_step(
        &mut self,
        be: &B,
        shape: VideoShape,
        cond: &Cond<'_, B>,
        x0: &[f32],
    ) -> Result<PretrainStepStats> {
        let start = Instant::now();
        let mode = if self.cfg.recompute {
            Mode::TrainRecompute
        } else {
            Mode::Train
        };
        let loss = flow_matching_micro(
            be,
            &self.generator,
            &mut self.grads,
            &self.levels,
            &mut self.rng,
            CleanBatch { shape, cond, x0 },
            mode,
        )?;
        if !loss.is_finite() {
            self.poisoned = true;
        }
        self.micro += 1;
        let update = (self.micro == self.cfg.accumulation).then(|| self.apply(be));
        Ok(PretrainStepStats {
            step: self.opt.step_count(),
            loss,
            update,
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// Closes the accumulation window: an AdamW step unless something was non-finite.
    fn apply(&mut self, be: &B) -> StepReport {
        let micro = std::mem::take(&mut self.micro);
        let report = if std::mem::take(&mut self.poisoned) {
            StepReport {
                grad_norm: f64::NAN,
                clip_coef: 0.0,
                skipped_nonfinite: true,
                step: self.opt.step_count(),
                lr: 0.0,
            }
        } else {
            self.opt
                .step(be, &mut self.generator.params, &self.grads, micro)
        };
        self.grads.zero(be);
        report
    }

    /// The trained generator (the optimiser state is dropped).
    pub fn into_generator(self) -> WanModel<B> {
        self.generator
    }
}
