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
use crate::optim::flat_keys::{self, OptimKeys};
use crate::optim::train_loop::TrainLoop;
use crate::schedule::levels::{LevelDistribution, TrainingLevels};
use crate::schedule::rng::Rng;
use crate::{Error, Result};

/// Pre-training settings. As TOML/JSON the AdamW keys (`lr`, `betas`, ...) sit at this level.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PretrainConfig {
    /// Shift of the training noise levels (Wan2.1: 5; small latents need less).
    pub shift: f64,
    /// `None`: uniform level draws; `Some((mean, std))`: logit-normal.
    pub logit_normal: Option<(f64, f64)>,
    /// AdamW over every generator parameter (default learning rate 1e-4).
    #[serde(
        flatten,
        serialize_with = "flat_keys::serialize::<PretrainConfig, _>",
        deserialize_with = "flat_keys::deserialize::<PretrainConfig, _>"
    )]
    pub optim: AdamWConfig,
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
            optim: AdamWConfig {
                lr: 1e-4,
                ..AdamWConfig::default()
            },
            accumulation: 1,
            recompute: false,
            seed: 0,
        }
    }
}

impl OptimKeys for PretrainConfig {
    fn optim_defaults() -> AdamWConfig {
        PretrainConfig::default().optim
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
    train: TrainLoop<B>,
    levels: TrainingLevels,
}

impl<B: Backend> PretrainTrainer<B> {
    /// A trainer over the full `generator` (every block and the head).
    pub fn new(be: &B, generator: WanModel<B>, cfg: PretrainConfig) -> Result<Self> {
        if !generator.has_head() || generator.num_blocks() != generator.cfg.num_layers {
            return Err(Error::Config(
                "pre-training needs the full generator (every block and the head)".into(),
            ));
        }
        let grads = Grads::new(be, &generator.params, |_| true);
        let opt = AdamW::new(be, &generator.params, &grads, cfg.optim)?;
        let rng = Rng::seed_from_u64(cfg.seed);
        let train = TrainLoop::new(opt, grads, rng, cfg.accumulation)?;
        let levels = TrainingLevels::new(cfg.shift);
        let levels = match cfg.logit_normal {
            Some((mean, std)) => {
                levels.with_distribution(LevelDistribution::LogitNormal { mean, std })
            }
            None => levels,
        };
        Ok(PretrainTrainer {
            train,
            levels,
            generator,
            cfg,
        })
    }

    /// The optimiser (step count, state size).
    pub fn optimizer(&self) -> &AdamW<B> {
        self.train.optimizer()
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
        let (grads, rng) = self.train.grads_and_rng();
        let loss = flow_matching_micro(
            be,
            &self.generator,
            grads,
            &self.levels,
            rng,
            CleanBatch { shape, cond, x0 },
            mode,
        )?;
        let update = self
            .train
            .after_micro_step(be, &mut self.generator.params, loss);
        Ok(PretrainStepStats {
            step: self.train.optimizer().step_count(),
            loss,
            update,
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// The trained generator (the optimiser state is dropped).
    pub fn into_generator(self) -> WanModel<B> {
        self.generator
    }
}
