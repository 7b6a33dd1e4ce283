//! Training and evaluating the reward model (method.md section 3): clean latents are noised to a
//! level drawn from the flow-matching training schedule and scored at that timestep; `ce` trains
//! on 0/1 labels with BCE, `bt` on win/lose pairs (same noise and level for both, order
//! randomised) with Bradley-Terry. AdamW with separate backbone and head learning rates, global
//! grad-norm clipping and gradient accumulation; a non-finite loss or gradient skips the update.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::dataset::{Batch, BatchLatents, Dataset, SampleKind};
use super::loss::{bce_with_logits, bradley_terry, sigmoid};
use super::metrics::{accuracy, pairwise_accuracy, roc_auc};
use super::model::{RewardModel, RewardModelConfig};
use crate::backend::Backend;
use crate::model::params::Grads;
use crate::model::wan::{Inputs, Mode, VideoShape};
use crate::optim::adamw::{AdamW, AdamWConfig, StepReport};
use crate::optim::checkpoint::{TrainingKind, TrainingMeta};
use crate::optim::flat_keys::{self, OptimKeys};
use crate::optim::train_loop::TrainLoop;
use crate::schedule::levels::{LevelDistribution, TrainingLevels};
use crate::schedule::rng::Rng;
use crate::{Error, Result};

/// The reward objective.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RewardLoss {
    /// Binary cross-entropy on 0/1 labels.
    Ce,
    /// Bradley-Terry on win/lose pairs.
    Bt,
}

/// Reward-model training settings. As TOML/JSON (the CLI's `[train]` table) the AdamW keys sit
/// at this level, the backbone's learning rate under `backbone_lr`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RewardTrainConfig {
    pub loss: RewardLoss,
    /// Shift of the training noise schedule (5 for Wan2.1).
    pub shift: f64,
    /// `None`: uniform level draws; `Some((mean, std))`: logit-normal.
    pub logit_normal: Option<(f64, f64)>,
    /// AdamW; `optim.lr` (key `backbone_lr`) is the backbone's learning rate.
    #[serde(
        flatten,
        serialize_with = "flat_keys::serialize::<RewardTrainConfig, _>",
        deserialize_with = "flat_keys::deserialize::<RewardTrainConfig, _>"
    )]
    pub optim: AdamWConfig,
    /// The head's (`pool.*`, `mlp.*`) learning rate.
    pub head_lr: f32,
    /// Micro-batches per optimiser step.
    pub accumulation: usize,
    /// Per-block activation recompute.
    pub recompute: bool,
    pub seed: u64,
}

impl Default for RewardTrainConfig {
    fn default() -> Self {
        RewardTrainConfig {
            loss: RewardLoss::Ce,
            shift: 5.0,
            logit_normal: None,
            optim: AdamWConfig {
                lr: 1e-6,
                ..AdamWConfig::default()
            },
            head_lr: 1e-4,
            accumulation: 1,
            recompute: true,
            seed: 0,
        }
    }
}

impl OptimKeys for RewardTrainConfig {
    const LR_KEY: &'static str = "backbone_lr";

    fn optim_defaults() -> AdamWConfig {
        RewardTrainConfig::default().optim
    }
}

impl RewardTrainConfig {
    /// The noise levels training draws from.
    pub fn levels(&self) -> TrainingLevels {
        let levels = TrainingLevels::new(self.shift);
        match self.logit_normal {
            Some((mean, std)) => {
                levels.with_distribution(LevelDistribution::LogitNormal { mean, std })
            }
            None => levels,
        }
    }

    /// The backbone's learning rate (`optim.lr`).
    pub fn backbone_lr(&self) -> f32 {
        self.optim.lr
    }
}

/// What one micro-step did.
#[derive(Clone, Debug, PartialEq)]
pub struct RewardStepStats {
    /// Optimiser steps taken so far (after this micro-step).
    pub step: u64,
    pub loss: f64,
    /// Fraction of the micro-batch scored on the right side (labels, or pair order).
    pub accuracy: f64,
    pub mean_timestep: f64,
    /// Set when this micro-step completed an accumulation window.
    pub update: Option<StepReport>,
    /// The loss was not finite: backward was skipped and the window's update will be skipped.
    pub nonfinite_loss: bool,
    pub seconds: f64,
}

/// Trains a [`RewardModel`]'s trainable parameters on labelled clips (`ce`) or pairs (`bt`).
pub struct RewardTrainer<B: Backend> {
    pub model: RewardModel<B>,
    pub cfg: RewardTrainConfig,
    train: TrainLoop<B>,
    levels: TrainingLevels,
}

/// Model inputs for `[B]` latents that share text/image conditioning layout.
struct Prepared<B: Backend> {
    shape: VideoShape,
    x: B::Buf,
    t: Vec<f32>,
    text: B::Buf,
    text_len: usize,
    y: Option<B::Buf>,
    clip: Option<B::Buf>,
    image_len: usize,
}

impl<B: Backend> Prepared<B> {
    fn inputs(&self) -> Inputs<'_, B> {
        Inputs {
            shape: self.shape,
            x: &self.x,
            t: &self.t,
            context: &self.text,
            text_len: self.text_len,
            y: self.y.as_ref(),
            clip: self.clip.as_ref(),
            image_len: self.image_len,
        }
    }
}

/// `x_t = (1 - sigma) x0 + sigma eps` for one sample (host side; latents are small next to the
/// model).
fn noise_into(x0: &[f32], eps: &[f32], sigma: f32, out: &mut [f32]) {
    for ((o, &a), &e) in out.iter_mut().zip(x0).zip(eps) {
        *o = (1.0 - sigma) * a + sigma * e;
    }
}

/// Conditioning tensors repeated `times` along the batch (a pair batch scores `[a; b]`).
fn repeat(v: &[f32], times: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(v.len() * times);
    for _ in 0..times {
        out.extend_from_slice(v);
    }
    out
}

fn prepare<B: Backend>(
    be: &B,
    batch: &Batch,
    x: &[f32],
    t: Vec<f32>,
    repeats: usize,
) -> Prepared<B> {
    let [_, f, h, w] = batch.shape;
    Prepared {
        shape: VideoShape {
            batch: batch.size() * repeats,
            frames: f,
            height: h,
            width: w,
        },
        x: be.upload(x),
        t,
        text: be.upload(&repeat(&batch.text, repeats)),
        text_len: batch.text_len,
        y: batch
            .i2v
            .as_ref()
            .map(|i| be.upload(&repeat(&i.y, repeats))),
        clip: batch
            .i2v
            .as_ref()
            .map(|i| be.upload(&repeat(&i.image, repeats))),
        image_len: batch.i2v.as_ref().map_or(0, |i| i.image_len),
    }
}

impl<B: Backend> RewardTrainer<B> {
    /// A trainer over `model`'s trainable parameters: the head at `cfg.head_lr`, the backbone
    /// at `cfg.optim.lr`.
    pub fn new(be: &B, model: RewardModel<B>, cfg: RewardTrainConfig) -> Result<Self> {
        let grads = Grads::new(be, &model.backbone.params, |n| model.cfg.is_trainable(n));
        let (head_lr, backbone_lr) = (cfg.head_lr, cfg.optim.lr);
        let opt = AdamW::with_lr(be, &model.backbone.params, &grads, cfg.optim, |n| {
            if n.starts_with("pool.") || n.starts_with("mlp.") {
                head_lr
            } else {
                backbone_lr
            }
        })?;
        let rng = Rng::seed_from_u64(cfg.seed);
        Ok(RewardTrainer {
            train: TrainLoop::new(opt, grads, rng, cfg.accumulation)?,
            levels: cfg.levels(),
            model,
            cfg,
        })
    }

    /// The optimiser (step count, state size).
    pub fn optimizer(&self) -> &AdamW<B> {
        self.train.optimizer()
    }

    /// The optimiser, mutably.
    pub fn optimizer_mut(&mut self) -> &mut AdamW<B> {
        self.train.optimizer_mut()
    }

    /// The random stream (noise, levels, pair order).
    pub fn rng(&self) -> &Rng {
        self.train.rng()
    }

    /// Replaces the random stream.
    pub fn set_rng(&mut self, rng: Rng) {
        self.train.set_rng(rng);
    }

    /// Writes a training checkpoint (one atomic file): trainable weights, AdamW moments, the step,
    /// the random stream and the configurations. Only between optimiser steps, so that a resumed
    /// run continues exactly.
    pub fn save_checkpoint(&self, be: &B, path: &std::path::Path, iteration: u64) -> Result<()> {
        let config = serde_json::json!({
            "model": self.model.cfg,
            "train": self.cfg,
            "wan": self.model.backbone.cfg,
        });
        self.train.save_checkpoint(
            be,
            &self.model.backbone.params,
            path,
            TrainingKind::Reward,
            iteration,
            config,
        )
    }

    /// Restores a checkpoint written by [`RewardTrainer::save_checkpoint`] into this trainer
    /// (built with the same configuration); returns the saved iteration count.
    pub fn resume(&mut self, be: &B, path: &std::path::Path) -> Result<u64> {
        let ours = &self.model.cfg;
        let check = |meta: &TrainingMeta| {
            let saved: RewardModelConfig = serde_json::from_value(meta.config["model"].clone())
                .map_err(|e| Error::checkpoint(path, format!("config.model: {e}")))?;
            if saved != *ours {
                return Err(Error::checkpoint(
                    path,
                    format!("written for reward model {saved:?}, this trainer has {ours:?}"),
                ));
            }
            Ok(())
        };
        self.train.resume(
            be,
            &mut self.model.backbone.params,
            path,
            TrainingKind::Reward,
            check,
        )
    }

    /// Micro-batches accumulated towards the next optimiser step.
    pub fn pending_micro_batches(&self) -> usize {
        self.train.pending_micro_batches()
    }

    /// One micro-batch: noise, forward, loss, backward; an optimiser step once `accumulation`
    /// micro-batches are in.
    pub fn micro_step(&mut self, be: &B, batch: &Batch) -> Result<RewardStepStats> {
        let start = Instant::now();
        let mode = if self.cfg.recompute {
            Mode::TrainRecompute
        } else {
            Mode::Train
        };
        let per = batch.shape.iter().product::<usize>();
        let n = batch.size();
        let (prep, kind_data) = match (&batch.latents, self.cfg.loss) {
            (BatchLatents::Clips { latents, labels }, RewardLoss::Ce) => {
                let mut x = vec![0.0f32; latents.len()];
                let mut t = Vec::with_capacity(n);
                let mut eps = vec![0.0f32; per];
                let rng = self.train.rng_mut();
                for b in 0..n {
                    let level = self.levels.draw(rng);
                    rng.fill_normal(&mut eps);
                    noise_into(&latents[b * per..(b + 1) * per], &eps, level.sigma, &mut x[b * per..(b + 1) * per]);
                    t.push(level.timestep);
                }
                (prepare(be, batch, &x, t, 1), Objective::Labels(labels.clone()))
            }
            (BatchLatents::Pairs { win, lose }, RewardLoss::Bt) => {
                // Both members of a pair share eps and sigma; which comes first is random.
                let mut x = vec![0.0f32; 2 * win.len()];
                let mut t = vec![0.0f32; 2 * n];
                let mut a_wins = Vec::with_capacity(n);
                let mut eps = vec![0.0f32; per];
                let half = n * per;
                let rng = self.train.rng_mut();
                for b in 0..n {
                    let level = self.levels.draw(rng);
                    rng.fill_normal(&mut eps);
                    let first_is_win = rng.uniform_f64() < 0.5;
                    let (fst, snd) = if first_is_win { (win, lose) } else { (lose, win) };
                    let r = b * per..(b + 1) * per;
                    noise_into(&fst[r.clone()], &eps, level.sigma, &mut x[r.clone()]);
                    noise_into(&snd[r.clone()], &eps, level.sigma, &mut x[half + b * per..half + (b + 1) * per]);
                    t[b] = level.timestep;
                    t[n + b] = level.timestep;
                    a_wins.push(first_is_win);
                }
                (prepare(be, batch, &x, t, 2), Objective::Pairs(a_wins))
            }
            (_, loss) => {
                return Err(Error::InvalidInput(format!(
                    "a {:?} batch cannot train the `{loss:?}` objective (ce needs labelled clips, bt needs pairs)",
                    batch.kind()
                )))
            }
        };
        let inputs = prep.inputs();
        let (logits, tape) = self.model.forward(be, &inputs, mode)?;
        let logits_h = be.download(&logits);
        let (loss, dlogits, acc) = match &kind_data {
            Objective::Labels(labels) => {
                let (loss, d) = bce_with_logits(&logits_h, labels);
                let scores: Vec<f32> = logits_h.iter().map(|&l| sigmoid(l)).collect();
                (loss, d, accuracy(&scores, labels))
            }
            Objective::Pairs(a_wins) => {
                let (la, lb) = logits_h.split_at(n);
                let (loss, da, db) = bradley_terry(la, lb, a_wins);
                let correct = la
                    .iter()
                    .zip(lb)
                    .zip(a_wins)
                    .filter(|((a, b), &w)| (a > b) == w)
                    .count();
                let mut d = da;
                d.extend(db);
                (loss, d, correct as f64 / n as f64)
            }
        };
        let nonfinite_loss = !loss.is_finite();
        if !nonfinite_loss {
            // Only a training-mode forward (every mode here) returns a tape.
            let tape = tape.ok_or_else(|| {
                Error::InvalidInput("the reward model's forward kept no tape".into())
            })?;
            let dl = be.upload(&dlogits);
            self.model
                .backward(be, &tape, &dl, self.train.grads_mut())?;
        }
        let mean_timestep = inputs.t.iter().map(|&t| t as f64).sum::<f64>() / inputs.t.len() as f64;
        let update = self
            .train
            .after_micro_step(be, &mut self.model.backbone.params, loss);
        Ok(RewardStepStats {
            step: self.train.optimizer().step_count(),
            loss,
            accuracy: acc,
            mean_timestep,
            update,
            nonfinite_loss,
            seconds: start.elapsed().as_secs_f64(),
        })
    }
}

/// Accuracy and ROC-AUC of the reward model at one timestep.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EvalRow {
    pub timestep: f32,
    /// Labelled clips scored (accuracy at 0.5 and ROC-AUC over them).
    pub clips: usize,
    pub accuracy: Option<f64>,
    pub auc: Option<f64>,
    /// Pairs scored (fraction with the winner scored higher).
    pub pairs: usize,
    pub pair_accuracy: Option<f64>,
}

/// The paper's evaluation timesteps.
pub const EVAL_TIMESTEPS: [f32; 5] = [201.0, 400.0, 600.0, 800.0, 1000.0];

/// Scores every sample of `ds` noised to each timestep (`sigma = t / 1000`, the same seeded noise
/// for every timestep so rows differ only in the level) and reports accuracy and ROC-AUC.
pub fn evaluate<B: Backend>(
    be: &B,
    model: &RewardModel<B>,
    ds: &Dataset,
    timesteps: &[f32],
    batch_size: usize,
    seed: u64,
) -> Result<Vec<EvalRow>> {
    let mut rows = Vec::new();
    for &ts in timesteps {
        if !(0.0..=1000.0).contains(&ts) {
            return Err(Error::InvalidInput(format!(
                "evaluation timestep {ts} is outside [0, 1000]"
            )));
        }
        let sigma = ts / 1000.0;
        let mut rng = Rng::seed_from_u64(seed);
        let (mut scores, mut labels, mut win, mut lose) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for idx in ds.batches(batch_size.max(1), seed, 0) {
            let batch = ds.stack(&idx)?;
            let per = batch.shape.iter().product::<usize>();
            let noised = |x0: &[f32], rng: &mut Rng| {
                let mut eps = vec![0.0f32; x0.len()];
                rng.fill_normal(&mut eps);
                let mut x = vec![0.0f32; x0.len()];
                noise_into(x0, &eps, sigma, &mut x);
                x
            };
            match (&batch.latents, batch.kind()) {
                (BatchLatents::Clips { latents, labels: l }, SampleKind::Clip) => {
                    let x = noised(latents, &mut rng);
                    let prep = prepare(be, &batch, &x, vec![ts; batch.size()], 1);
                    scores.extend(model.score(be, &prep.inputs())?);
                    labels.extend_from_slice(l);
                }
                (BatchLatents::Pairs { win: w, lose: l }, _) => {
                    // The same noise on both members, as in training.
                    let mut eps = vec![0.0f32; w.len()];
                    rng.fill_normal(&mut eps);
                    let mut x = vec![0.0f32; 2 * w.len()];
                    noise_into(w, &eps, sigma, &mut x[..w.len()]);
                    noise_into(l, &eps, sigma, &mut x[w.len()..]);
                    let prep = prepare(be, &batch, &x, vec![ts; 2 * batch.size()], 2);
                    let s = model.score(be, &prep.inputs())?;
                    win.extend_from_slice(&s[..batch.size()]);
                    lose.extend_from_slice(&s[batch.size()..]);
                }
                _ => unreachable!("stack() pairs the latents with the kind"),
            }
            let _ = per;
        }
        rows.push(EvalRow {
            timestep: ts,
            clips: scores.len(),
            accuracy: (!scores.is_empty()).then(|| accuracy(&scores, &labels)),
            auc: roc_auc(&scores, &labels),
            pairs: win.len(),
            pair_accuracy: (!win.is_empty()).then(|| pairwise_accuracy(&win, &lose)),
        });
    }
    Ok(rows)
}

enum Objective {
    Labels(Vec<f32>),
    Pairs(Vec<bool>),
}
