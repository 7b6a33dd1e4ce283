//! Process reward feedback learning (method.md section 4): fine-tune the generator against the
//! frozen latent reward model, entirely in latent space.
//!
//! One PRFL micro-step: draw a mid step `m`; roll out from noise for `m` solver steps without
//! gradients (no activations kept); run the generator at step `m` with a tape and apply the solver
//! update to get `x_{m+1}`; score it with the frozen reward model at `t_{m+1}` (with a tape, for
//! the gradient with respect to its input); loss `scale * relu(margin - score)`; backpropagate
//! through the reward model's input, the solver update (a scalar: every update is linear in the
//! model output) and the generator. Interleaved with the supervised flow-matching step on real
//! latents. Full fine-tuning or LoRA (base frozen).

use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::flow_step::{flow_matching_micro, CleanBatch};
use super::sample::{Cond, GridKind, SamplingPlan};
use crate::backend::Backend;
use crate::model::lora::LoraConfig;
use crate::model::params::Grads;
use crate::model::wan::{Mode, VideoShape, WanModel};
use crate::optim::adamw::{AdamW, AdamWConfig, StepReport};
use crate::optim::checkpoint::TrainingKind;
use crate::optim::flat_keys::{self, OptimKeys};
use crate::optim::train_loop::TrainLoop;
use crate::reward::loss::sigmoid;
use crate::reward::model::RewardModel;
use crate::schedule::levels::TrainingLevels;
use crate::schedule::rng::Rng;
use crate::schedule::SolverKind;
use crate::tensor::HostTensor;
use crate::{Error, Result};

/// PRFL fine-tuning settings (the CLI's `[prfl]` table; the AdamW keys `lr`, `betas`, ... sit at
/// this level).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PrflTrainConfig {
    /// Sampling steps N of the rollout grid (Wan reference grid, sigma_max 0.999).
    pub steps: usize,
    pub shift: f64,
    pub solver: SolverKind,
    pub grid: GridKind,
    /// Inclusive range the mid step m is drawn from; default `[0, N-2]`.
    pub mid_range: Option<(usize, usize)>,
    /// Loss `scale * relu(margin - score)`.
    pub margin: f32,
    pub scale: f32,
    /// Run the supervised flow-matching step before each PRFL step (as the reference does).
    pub sft: bool,
    /// AdamW over the trainable generator parameters (default learning rate 5e-6).
    #[serde(
        flatten,
        serialize_with = "flat_keys::serialize::<PrflTrainConfig, _>",
        deserialize_with = "flat_keys::deserialize::<PrflTrainConfig, _>"
    )]
    pub optim: AdamWConfig,
    /// Micro-steps per optimiser step.
    pub accumulation: usize,
    pub recompute: bool,
    /// Train LoRA adapters (base frozen) instead of every weight.
    pub lora: Option<LoraConfig>,
    pub seed: u64,
}

impl Default for PrflTrainConfig {
    fn default() -> Self {
        PrflTrainConfig {
            steps: 40,
            shift: 5.0,
            solver: SolverKind::UniPc,
            grid: GridKind::Wan,
            mid_range: None,
            margin: 2.0,
            scale: 0.1,
            sft: true,
            optim: AdamWConfig {
                lr: 5e-6,
                ..AdamWConfig::default()
            },
            accumulation: 1,
            recompute: true,
            lora: None,
            seed: 0,
        }
    }
}

impl OptimKeys for PrflTrainConfig {
    fn optim_defaults() -> AdamWConfig {
        PrflTrainConfig::default().optim
    }
}

/// What one PRFL micro-step did.
#[derive(Clone, Debug, PartialEq)]
pub struct PrflStepStats {
    pub step: u64,
    /// The mid step m and the timestep the reward read.
    pub mid_step: usize,
    pub reward_timestep: f32,
    /// Mean reward score of `x_{m+1}` (before the update).
    pub reward: f64,
    pub prfl_loss: f64,
    /// Flow-matching loss of the interleaved SFT step, when it ran.
    pub sft_loss: Option<f64>,
    pub update: Option<StepReport>,
    pub seconds: f64,
    /// Bytes of activations alive at the PRFL backward: the generator's tape plus the reward's.
    pub tape_bytes: usize,
}

/// Fine-tunes a generator against a frozen reward model (full or LoRA), interleaved with the
/// supervised flow-matching step.
pub struct PrflTrainer<B: Backend> {
    pub generator: WanModel<B>,
    pub reward: RewardModel<B>,
    pub cfg: PrflTrainConfig,
    plan: SamplingPlan,
    train: TrainLoop<B>,
    /// The reward model is frozen: no parameter gradients, only its input gradient.
    reward_grads: Grads<B>,
    levels: TrainingLevels,
}

impl<B: Backend> PrflTrainer<B> {
    /// Wraps a generator (with adapters already attached when `cfg.lora` is set) and a trained
    /// reward model.
    pub fn new(
        be: &B,
        generator: WanModel<B>,
        reward: RewardModel<B>,
        cfg: PrflTrainConfig,
    ) -> Result<Self> {
        if reward.backbone.cfg.dim != generator.cfg.dim
            || reward.backbone.cfg.in_dim != generator.cfg.in_dim
        {
            return Err(Error::Config(
                "the reward model was not cut from a generator of this architecture".into(),
            ));
        }
        let plan = SamplingPlan::new(cfg.grid, cfg.steps, cfg.shift, cfg.solver)?;
        let last_mid = cfg.steps.checked_sub(2).ok_or_else(|| {
            Error::Config(format!("a rollout of {} steps has no mid step", cfg.steps))
        })?;
        let lo_hi = cfg.mid_range.unwrap_or((0, last_mid));
        if lo_hi.0 > lo_hi.1 || lo_hi.1 > last_mid {
            return Err(Error::Config(format!(
                "mid_range {lo_hi:?} must lie within [0, {last_mid}]"
            )));
        }
        let lora = cfg.lora.is_some();
        let grads = Grads::new(be, &generator.params, |n| !lora || n.contains(".lora_"));
        if lora && grads.bufs.iter().all(|g| g.is_none()) {
            return Err(Error::Config(
                "LoRA training asked for, but the generator has no adapters attached".into(),
            ));
        }
        let reward_grads = Grads::new(be, &reward.backbone.params, |_| false);
        let opt = AdamW::new(be, &generator.params, &grads, cfg.optim)?;
        let rng = Rng::seed_from_u64(cfg.seed);
        Ok(PrflTrainer {
            levels: TrainingLevels::new(cfg.shift),
            train: TrainLoop::new(opt, grads, rng, cfg.accumulation)?,
            plan,
            reward_grads,
            generator,
            reward,
            cfg,
        })
    }

    pub fn plan(&self) -> &SamplingPlan {
        &self.plan
    }

    /// The optimiser (step count, state size).
    pub fn optimizer(&self) -> &AdamW<B> {
        self.train.optimizer()
    }

    /// The optimiser, mutably.
    pub fn optimizer_mut(&mut self) -> &mut AdamW<B> {
        self.train.optimizer_mut()
    }

    /// The random stream (mid steps, rollout noise, SFT levels).
    pub fn rng(&self) -> &Rng {
        self.train.rng()
    }

    /// Replaces the random stream.
    pub fn set_rng(&mut self, rng: Rng) {
        self.train.set_rng(rng);
    }

    /// The generator gradients accumulated in the current window.
    pub fn grads(&self) -> &Grads<B> {
        self.train.grads()
    }

    fn mode(&self) -> Mode {
        if self.cfg.recompute {
            Mode::TrainRecompute
        } else {
            Mode::Train
        }
    }

    /// Draws the mid step m.
    pub fn draw_mid_step(&mut self) -> usize {
        // `new` checked that the range lies within `[0, steps - 2]`.
        let (lo, hi) = self
            .cfg
            .mid_range
            .unwrap_or((0, self.cfg.steps.saturating_sub(2)));
        let u = self.train.rng_mut().uniform_f64();
        lo + ((u * (hi - lo + 1) as f64) as usize).min(hi - lo)
    }

    /// Rolls out from `noise` for `m` solver steps without gradients; returns `x_m` and the
    /// sampler positioned at step m.
    pub fn rollout(
        &self,
        be: &B,
        shape: VideoShape,
        cond: &Cond<'_, B>,
        noise: B::Buf,
        m: usize,
    ) -> Result<(B::Buf, crate::schedule::Sampler<B>)> {
        let mut sampler = self.plan.sampler::<B>()?;
        let x = sampler.run_to(be, noise, m, |x, t, _| {
            super::sample::velocity(be, &self.generator, shape, cond, None, x, t)
        })?;
        Ok((x, sampler))
    }

    /// The PRFL loss at a given `x_m` (the rollout held fixed) and, with `backward`, its gradient
    /// accumulated into the generator's gradients. Returns `(loss, mean score, tape bytes)`.
    pub fn prfl_loss_at(
        &mut self,
        be: &B,
        shape: VideoShape,
        cond: &Cond<'_, B>,
        x_m: &B::Buf,
        mut sampler: crate::schedule::Sampler<B>,
        backward: bool,
    ) -> Result<(f64, f64, usize)> {
        let m = sampler.index();
        let t_m = vec![sampler.timestep(m); shape.batch];
        let mode = if backward {
            self.mode()
        } else {
            Mode::Inference
        };
        let (v, tape) = self
            .generator
            .forward(be, &cond.inputs(shape, x_m, &t_m), mode)?;
        let coef = sampler.output_coefficient(m);
        let x_next = sampler.step(be, &v, x_m);
        drop(v);
        let t_next = vec![sampler.timestep(m + 1); shape.batch];
        let rmode = if backward {
            Mode::Train
        } else {
            Mode::Inference
        };
        let (logits, rtape) =
            self.reward
                .forward(be, &cond.inputs(shape, &x_next, &t_next), rmode)?;
        let logits = be.download(&logits);
        let n = shape.batch as f64;
        let (margin, scale) = (self.cfg.margin, self.cfg.scale);
        let scores: Vec<f32> = logits.iter().map(|&l| sigmoid(l)).collect();
        let loss = scores
            .iter()
            .map(|&s| (scale * (margin - s).max(0.0)) as f64)
            .sum::<f64>()
            / n;
        let mean = scores.iter().map(|&s| s as f64).sum::<f64>() / n;
        let mut tape_bytes = 0;
        if let (true, Some(tape), Some(rtape)) = (backward, tape, rtape) {
            tape_bytes = tape.saved_block_bytes(be) + rtape.bytes(be);
            // d loss / d logit = -scale/B * s (1 - s) where the hinge is active.
            let dlogits: Vec<f32> = scores
                .iter()
                .map(|&s| {
                    if margin - s > 0.0 {
                        -scale / n as f32 * s * (1.0 - s)
                    } else {
                        0.0
                    }
                })
                .collect();
            let g =
                self.reward
                    .backward(be, &rtape, &be.upload(&dlogits), &mut self.reward_grads)?;
            drop(rtape);
            let mut dv = g.x;
            be.scale(coef, &mut dv);
            self.generator
                .backward(be, &tape, &dv, self.train.grads_mut())?;
        }
        Ok((loss, mean, tape_bytes))
    }

    /// The supervised flow-matching loss on clean latents `x0` (host data, `[B, C, F, H, W]`),
    /// gradient accumulated. Returns the loss.
    pub fn sft_micro(
        &mut self,
        be: &B,
        shape: VideoShape,
        cond: &Cond<'_, B>,
        x0: &[f32],
    ) -> Result<f64> {
        let mode = self.mode();
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
        self.train.note_loss(loss);
        Ok(loss)
    }

    /// One training iteration on a batch: the SFT update on `x0` (when enabled and given), then
    /// the PRFL micro-step (optimiser step once `accumulation` micro-steps are in).
    pub fn micro_step(
        &mut self,
        be: &B,
        shape: VideoShape,
        cond: &Cond<'_, B>,
        x0: Option<&[f32]>,
    ) -> Result<PrflStepStats> {
        let start = Instant::now();
        let sft_loss = match (self.cfg.sft, x0) {
            (true, Some(x0)) => {
                let l = self.sft_micro(be, shape, cond, x0)?;
                self.train.step_now(be, &mut self.generator.params, 1);
                Some(l)
            }
            _ => None,
        };
        let m = self.draw_mid_step();
        let mut noise = vec![0.0f32; shape.batch * self.generator.cfg.out_dim * shape.voxels()];
        self.train.rng_mut().fill_normal(&mut noise);
        let (x_m, sampler) = self.rollout(be, shape, cond, be.upload(&noise), m)?;
        let reward_timestep = sampler.timestep(m + 1);
        let (loss, reward, tape_bytes) = self.prfl_loss_at(be, shape, cond, &x_m, sampler, true)?;
        let update = self
            .train
            .after_micro_step(be, &mut self.generator.params, loss);
        Ok(PrflStepStats {
            step: self.train.optimizer().step_count(),
            mid_step: m,
            reward_timestep,
            reward,
            prfl_loss: loss,
            sft_loss,
            update,
            seconds: start.elapsed().as_secs_f64(),
            tape_bytes,
        })
    }

    /// Writes a training checkpoint (one atomic file): trainable weights (adapters under LoRA),
    /// AdamW moments, the iteration, the random stream and the configuration.
    pub fn save_checkpoint(&self, be: &B, path: &std::path::Path, iteration: u64) -> Result<()> {
        let config = serde_json::json!({ "prfl": self.cfg, "wan": self.generator.cfg });
        self.train.save_checkpoint(
            be,
            &self.generator.params,
            path,
            TrainingKind::Prfl,
            iteration,
            config,
        )
    }

    /// Restores [`PrflTrainer::save_checkpoint`]'s file into this trainer (same configuration);
    /// returns the saved iteration.
    pub fn resume(&mut self, be: &B, path: &std::path::Path) -> Result<u64> {
        self.train.resume(
            be,
            &mut self.generator.params,
            path,
            TrainingKind::Prfl,
            |_| Ok(()),
        )
    }

    /// The trainable generator parameters (adapters under LoRA) as host tensors.
    pub fn trainable_tensors(&self, be: &B) -> BTreeMap<String, HostTensor> {
        let ps = &self.generator.params;
        (0..ps.len())
            .filter(|&i| self.train.grads().get(i).is_some())
            .map(|i| (ps.name(i).to_string(), ps.to_host(be, i)))
            .collect()
    }
}
