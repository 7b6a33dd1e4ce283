//! Sampling with early rejection: start `N` candidates, score them with the latent reward model
//! part-way through the rollout, and finish only the best. The reference samples every candidate
//! to the end (and, in RGB, decodes it) before anything can judge it; a latent reward model reads
//! the noisy intermediate latent at its timestep, so the worst candidates can be dropped after a
//! few steps and their remaining generator evaluations are never spent.
//!
//! Each candidate keeps its own [`Sampler`] (UniPC carries a per-sample history), while the
//! generator still runs on batches of the candidates alive at a step, so rejection never changes
//! a survivor's trajectory: a kept candidate ends exactly where sampling it alone would (up to
//! the summation order of a differently sized batch).

use serde::Serialize;

use super::sample::SamplingPlan;
use crate::backend::Backend;
use crate::model::wan::{Inputs, Mode, VideoShape, WanModel};
use crate::reward::model::RewardModel;
use crate::schedule::Sampler;
use crate::{Error, Result};

/// After `at_step` solver steps, keep the `keep` best-scored candidates still alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RejectStage {
    /// Solver steps taken before the candidates are scored (`1 ..= steps - 1`): the reward reads
    /// `x_{at_step}` at timestep `t_{at_step}`, as PRFL scores `x_{m+1}` at `t_{m+1}`.
    pub at_step: usize,
    pub keep: usize,
}

/// What the candidates share: the latent grid, their text conditioning and the batch limit.
pub struct Candidates<'a> {
    /// Per-candidate grid (`batch` is ignored: the candidate count comes from `noise`).
    pub shape: VideoShape,
    /// Starting noise `[N, C, F, H, W]`.
    pub noise: &'a [f32],
    /// Text states `[N, text_len, text_dim]`.
    pub text: &'a [f32],
    pub text_len: usize,
    /// Most candidates per generator or reward call.
    pub max_batch: usize,
}

/// The scores of one rejection stage.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StageReport {
    pub at_step: usize,
    /// The timestep the reward read.
    pub timestep: f32,
    /// `(candidate, score)` of every candidate alive at the stage, in candidate order.
    pub scores: Vec<(usize, f32)>,
    /// The candidates kept, best first.
    pub kept: Vec<usize>,
}

/// The survivors and what they cost.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EarlyRejectOutcome {
    /// Surviving candidates, in candidate order.
    pub kept: Vec<usize>,
    /// Their clean latents `[K, C, F, H, W]`, in the order of `kept`.
    #[serde(skip)]
    pub latents: Vec<f32>,
    pub stages: Vec<StageReport>,
    /// Per-sample generator evaluations spent (one sample through the generator at one step).
    pub generator_evals: usize,
    /// Per-sample reward-model evaluations spent.
    pub reward_evals: usize,
    /// Per-sample generator evaluations of sampling every candidate to the end.
    pub full_generator_evals: usize,
}

impl EarlyRejectOutcome {
    /// Total cost in generator evaluations, counting a reward evaluation as `reward_cost` of one
    /// (about kept blocks / generator blocks: the reward runs the generator's first blocks).
    pub fn cost(&self, reward_cost: f64) -> f64 {
        self.generator_evals as f64 + reward_cost * self.reward_evals as f64
    }

    /// Fraction of the full sampling cost saved, with reward evaluations priced as in
    /// [`EarlyRejectOutcome::cost`].
    pub fn saved_fraction(&self, reward_cost: f64) -> f64 {
        1.0 - self.cost(reward_cost) / self.full_generator_evals as f64
    }
}

/// Samples the candidates with `plan`, rejecting at each stage (in increasing `at_step` order)
/// all but the `keep` best under `reward`; the survivors are sampled to the end. Ties keep the
/// lower candidate index, so the result is deterministic.
pub fn sample_with_early_rejection<B: Backend>(
    be: &B,
    generator: &WanModel<B>,
    reward: &RewardModel<B>,
    plan: &SamplingPlan,
    cand: &Candidates<'_>,
    stages: &[RejectStage],
) -> Result<EarlyRejectOutcome> {
    run(be, generator, Some(reward), plan, cand, stages)
}

/// Samples every candidate to the end with no rejection: the same batching and per-candidate
/// samplers as [`sample_with_early_rejection`] (so its survivors equal these rows), and no reward
/// model needed.
pub fn sample_candidates<B: Backend>(
    be: &B,
    generator: &WanModel<B>,
    plan: &SamplingPlan,
    cand: &Candidates<'_>,
) -> Result<EarlyRejectOutcome> {
    run(be, generator, None, plan, cand, &[])
}

/// The indices of the `keep` highest `scores`, best first; ties keep the lower index (the order
/// every rejection stage uses). `keep` is clamped to `scores.len()`.
pub fn best_first(scores: &[f32], keep: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    // Best first; the stable sort keeps the lower index on ties.
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    order.truncate(keep);
    order
}

fn run<B: Backend>(
    be: &B,
    generator: &WanModel<B>,
    reward: Option<&RewardModel<B>>,
    plan: &SamplingPlan,
    cand: &Candidates<'_>,
    stages: &[RejectStage],
) -> Result<EarlyRejectOutcome> {
    let per = generator.cfg.out_dim * cand.shape.voxels();
    let per_text = cand.text_len * generator.cfg.text_dim;
    let bad = |m: String| Err(Error::InvalidInput(m));
    if per == 0 || cand.noise.len() % per != 0 || cand.noise.is_empty() {
        return bad(format!(
            "noise holds {} values, not a positive multiple of {per}",
            cand.noise.len()
        ));
    }
    let n = cand.noise.len() / per;
    if cand.text.len() != n * per_text {
        return bad(format!(
            "text holds {} values, expected {n} x {per_text}",
            cand.text.len()
        ));
    }
    if cand.max_batch == 0 {
        return bad("max_batch must be at least 1".into());
    }
    let steps = plan.grid.steps();
    let mut prev = (0, n);
    for s in stages {
        if s.at_step <= prev.0 || s.at_step >= steps || s.keep == 0 || s.keep > prev.1 {
            return bad(format!(
                "rejection stage {s:?} must come after step {} and before step {steps}, keeping \
                 between 1 and {} candidates",
                prev.0, prev.1
            ));
        }
        prev = (s.at_step, s.keep);
    }

    let mut alive: Vec<usize> = (0..n).collect();
    let mut xs: Vec<B::Buf> = (0..n)
        .map(|i| be.upload(&cand.noise[i * per..(i + 1) * per]))
        .collect();
    let mut samplers: Vec<Sampler<B>> =
        (0..n).map(|_| plan.sampler::<B>()).collect::<Result<_>>()?;
    let mut reports = Vec::new();
    let mut stage_iter = stages.iter().peekable();
    let (mut generator_evals, mut reward_evals) = (0, 0);
    for step in 0..steps {
        if let Some(stage) = stage_iter.next_if(|s| s.at_step == step) {
            let reward = reward.ok_or_else(|| {
                Error::InvalidInput("rejection stages need a reward model".into())
            })?;
            let t = samplers[alive[0]].timestep(step);
            let scores = score_alive(be, reward, cand, &alive, &xs, t)?;
            reward_evals += alive.len();
            let kept: Vec<usize> = best_first(&scores, stage.keep)
                .into_iter()
                .map(|k| alive[k])
                .collect();
            reports.push(StageReport {
                at_step: step,
                timestep: t,
                scores: alive.iter().copied().zip(scores).collect(),
                kept: kept.clone(),
            });
            alive.retain(|c| kept.contains(c));
        }
        let t = samplers[alive[0]].timestep(step);
        for chunk in alive.chunks(cand.max_batch) {
            let shape = VideoShape {
                batch: chunk.len(),
                ..cand.shape
            };
            let x = gather(be, chunk.iter().map(|&c| &xs[c]), per);
            let text = be.upload(&gather_host(cand.text, chunk, per_text));
            let ts = vec![t; chunk.len()];
            let inputs = Inputs {
                shape,
                x: &x,
                t: &ts,
                context: &text,
                text_len: cand.text_len,
                y: None,
                clip: None,
                image_len: 0,
            };
            let (v, _) = generator.forward(be, &inputs, Mode::Inference)?;
            generator_evals += chunk.len();
            for (k, &c) in chunk.iter().enumerate() {
                let mut vc = be.zeros(per);
                be.copy_range(&v, k * per, &mut vc, 0, per);
                xs[c] = samplers[c].step(be, &vc, &xs[c]);
            }
        }
    }
    let mut latents = Vec::with_capacity(alive.len() * per);
    for &c in &alive {
        latents.extend(be.download(&xs[c]));
    }
    Ok(EarlyRejectOutcome {
        kept: alive,
        latents,
        stages: reports,
        generator_evals,
        reward_evals,
        full_generator_evals: n * steps,
    })
}

/// Reward scores of the alive candidates' current latents at timestep `t`.
fn score_alive<B: Backend>(
    be: &B,
    reward: &RewardModel<B>,
    cand: &Candidates<'_>,
    alive: &[usize],
    xs: &[B::Buf],
    t: f32,
) -> Result<Vec<f32>> {
    let per = be.len(&xs[alive[0]]);
    let per_text = cand.text.len() / xs.len();
    let mut scores = Vec::with_capacity(alive.len());
    for chunk in alive.chunks(cand.max_batch) {
        let x = gather(be, chunk.iter().map(|&c| &xs[c]), per);
        let text = be.upload(&gather_host(cand.text, chunk, per_text));
        let ts = vec![t; chunk.len()];
        let inputs = Inputs {
            shape: VideoShape {
                batch: chunk.len(),
                ..cand.shape
            },
            x: &x,
            t: &ts,
            context: &text,
            text_len: cand.text_len,
            y: None,
            clip: None,
            image_len: 0,
        };
        scores.extend(reward.score(be, &inputs)?);
    }
    Ok(scores)
}

/// Concatenates device buffers of `per` values each into one batch buffer.
fn gather<'a, B: Backend + 'a>(
    be: &B,
    parts: impl ExactSizeIterator<Item = &'a B::Buf>,
    per: usize,
) -> B::Buf {
    let mut out = be.zeros(parts.len() * per);
    for (k, p) in parts.enumerate() {
        be.copy_range(p, 0, &mut out, k * per, per);
    }
    out
}

/// The rows `which` (of `per` values each) of a host array, concatenated.
fn gather_host(data: &[f32], which: &[usize], per: usize) -> Vec<f32> {
    which
        .iter()
        .flat_map(|&i| data[i * per..(i + 1) * per].iter().copied())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;
    use crate::finetune::sample::{sample, Cond};
    use crate::model::init::random_weights;
    use crate::model::{ModelType, WanConfig};
    use crate::reward::head::init_head_params;
    use crate::reward::model::RewardModelConfig;
    use crate::schedule::{Rng, SolverKind};

    fn wan() -> WanConfig {
        WanConfig {
            model_type: ModelType::T2V,
            in_dim: 4,
            out_dim: 4,
            dim: 16,
            ffn_dim: 24,
            freq_dim: 16,
            text_dim: 8,
            image_dim: None,
            num_heads: 2,
            num_layers: 2,
            eps: 1e-6,
            text_len: 3,
        }
    }

    const SHAPE: VideoShape = VideoShape {
        batch: 1,
        frames: 2,
        height: 4,
        width: 4,
    };

    #[test]
    fn survivors_are_the_best_scored_and_finish_as_full_sampling_would() {
        let cfg = wan();
        let weights = random_weights(&cfg, 1);
        let generator = WanModel::new(&Cpu, cfg.clone(), &weights, None).unwrap();
        let rcfg = RewardModelConfig {
            blocks: 1,
            trainable_blocks: None,
            heads: 2,
            queries: 1,
            hidden: [8, 4],
        };
        let head = init_head_params(cfg.dim, 2, 1, [8, 4], 2);
        let reward =
            RewardModel::from_tensors(&Cpu, cfg.clone(), &weights, &head, rcfg, None).unwrap();
        let (n, per, steps) = (6, 4 * SHAPE.voxels(), 5);
        let mut noise = vec![0.0f32; n * per];
        Rng::seed_from_u64(3).fill_normal(&mut noise);
        let mut text = vec![0.0f32; n * 3 * 8];
        Rng::seed_from_u64(4).fill_normal(&mut text);
        let plan = SamplingPlan::wan(steps, 3.0, SolverKind::UniPc).unwrap();
        let cand = Candidates {
            shape: SHAPE,
            noise: &noise,
            text: &text,
            text_len: 3,
            max_batch: 4,
        };
        let stages = [
            RejectStage {
                at_step: 2,
                keep: 3,
            },
            RejectStage {
                at_step: 3,
                keep: 2,
            },
        ];
        let out =
            sample_with_early_rejection(&Cpu, &generator, &reward, &plan, &cand, &stages).unwrap();
        assert_eq!(out.kept.len(), 2);
        assert_eq!(out.generator_evals, 6 * 2 + 3 + 2 * 2);
        assert_eq!(out.reward_evals, 6 + 3);
        assert_eq!(out.full_generator_evals, 6 * 5);
        assert!(out.saved_fraction(0.5) > 0.0);
        // Each stage keeps its best-scored candidates.
        for st in &out.stages {
            let best = st.scores.iter().map(|s| s.1).fold(f32::MIN, f32::max);
            let top = st.scores.iter().find(|s| s.0 == st.kept[0]).unwrap().1;
            assert_eq!(top, best);
        }
        // A survivor ends where sampling it alone ends.
        for (k, &c) in out.kept.iter().enumerate() {
            let tb = text[c * 24..(c + 1) * 24].to_vec();
            let cond = Cond {
                text: &tb,
                text_len: 3,
                y: None,
                clip: None,
                image_len: 0,
            };
            let alone = sample(
                &Cpu,
                &generator,
                SHAPE,
                &cond,
                None,
                &plan,
                noise[c * per..(c + 1) * per].to_vec(),
            )
            .unwrap();
            let mine = &out.latents[k * per..(k + 1) * per];
            let diff = alone
                .iter()
                .zip(mine)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(diff < 1e-4, "candidate {c}: differs by {diff}");
        }
    }

    #[test]
    fn invalid_stages_are_rejected() {
        let cfg = wan();
        let weights = random_weights(&cfg, 1);
        let generator = WanModel::new(&Cpu, cfg.clone(), &weights, None).unwrap();
        let rcfg = RewardModelConfig {
            blocks: 1,
            trainable_blocks: None,
            heads: 2,
            queries: 1,
            hidden: [8, 4],
        };
        let head = init_head_params(cfg.dim, 2, 1, [8, 4], 2);
        let reward = RewardModel::from_tensors(&Cpu, cfg, &weights, &head, rcfg, None).unwrap();
        let per = 4 * SHAPE.voxels();
        let noise = vec![0.1f32; 4 * per];
        let text = vec![0.0f32; 4 * 24];
        let plan = SamplingPlan::wan(4, 3.0, SolverKind::Euler).unwrap();
        let cand = Candidates {
            shape: SHAPE,
            noise: &noise,
            text: &text,
            text_len: 3,
            max_batch: 4,
        };
        for stages in [
            vec![RejectStage {
                at_step: 0,
                keep: 2,
            }],
            vec![RejectStage {
                at_step: 4,
                keep: 2,
            }],
            vec![RejectStage {
                at_step: 2,
                keep: 5,
            }],
            vec![
                RejectStage {
                    at_step: 2,
                    keep: 2,
                },
                RejectStage {
                    at_step: 1,
                    keep: 1,
                },
            ],
        ] {
            assert!(
                sample_with_early_rejection(&Cpu, &generator, &reward, &plan, &cand, &stages)
                    .is_err(),
                "{stages:?}"
            );
        }
    }
}
