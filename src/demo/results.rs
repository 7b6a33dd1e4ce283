//! What a demo run measured: the input of the report (tables, plots, previews, summary files)
//! and of the test's assertions.

use serde::Serialize;

use super::stats::Proportion;
use super::world::Quality;
use crate::finetune::early_reject::EarlyRejectOutcome;

/// One point of a training curve.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct CurvePoint {
    pub step: usize,
    pub value: f64,
}

/// The reward model's accuracy at one timestep on held-out clips.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AccuracyRow {
    pub timestep: f32,
    /// Fraction of labelled clips on the right side of 0.5, with its Wilson interval.
    pub accuracy: Proportion,
    /// ROC AUC over the labelled clips.
    pub auc: Option<f64>,
    /// Fraction of preference pairs scored in the right order.
    pub pair_accuracy: Proportion,
}

/// Phase a.
#[derive(Clone, Debug, Serialize)]
pub struct PretrainResults {
    pub steps: usize,
    pub clips_seen: usize,
    /// Flow-matching loss per step (smoothed).
    pub loss: Vec<CurvePoint>,
    pub final_loss: f64,
    pub seconds: f64,
}

/// Phase b.
#[derive(Clone, Debug, Serialize)]
pub struct RewardResults {
    /// Bradley-Terry steps on pairs.
    pub steps: usize,
    /// Head-only calibration steps on labelled clips.
    pub calibration_steps: usize,
    pub clips_seen: usize,
    /// Loss per step, pairs then calibration (smoothed).
    pub loss: Vec<CurvePoint>,
    pub accuracy: Vec<AccuracyRow>,
    pub seconds: f64,
}

/// Phase c.
#[derive(Clone, Debug, Serialize)]
pub struct PrflResults {
    pub steps: usize,
    /// The reward's weight (0 in the control run).
    pub reward_scale: f32,
    /// Mean reward of the rolled-out `x_{m+1}` per step (smoothed).
    pub reward: Vec<CurvePoint>,
    /// PRFL loss per step (smoothed).
    pub loss: Vec<CurvePoint>,
    /// Flow-matching loss of the interleaved SFT step, when enabled (smoothed).
    pub sft_loss: Vec<CurvePoint>,
    pub seconds: f64,
}

/// Phase d: one generator's fresh samples.
#[derive(Clone, Debug, Serialize)]
pub struct SampleResults {
    pub quality: Quality,
    /// Mean reward-model score of the clean samples (t = 0): what PRFL optimised, reported
    /// next to the rule, which it never saw.
    pub mean_reward: f64,
    /// The first clips `[n, C, F, H, W]`, for the previews.
    #[serde(skip)]
    pub preview: Vec<f32>,
    pub seconds: f64,
}

/// Early rejection against sampling every candidate to the end.
#[derive(Clone, Debug, Serialize)]
pub struct RejectionResults {
    pub groups: usize,
    pub candidates: usize,
    pub keep: usize,
    pub at_step: usize,
    pub timestep: f32,
    pub steps: usize,
    /// A reward evaluation priced in generator evaluations (kept blocks / generator blocks).
    pub reward_cost: f64,
    /// All candidates sampled to the end (the plain sampler).
    pub all: Proportion,
    /// The survivors of early rejection.
    pub early: Proportion,
    /// The best `keep` of every group by the reward of the finished clips (t = 0): best-of-N
    /// at full cost.
    pub best_at_end: Proportion,
    /// Generator-equivalent evaluations of each strategy.
    pub cost_all: f64,
    pub cost_early: f64,
    pub cost_best_at_end: f64,
    /// `1 - cost_early / cost_all`.
    pub saved: f64,
    /// Largest difference between a survivor's final latent and the same candidate sampled in
    /// the full batch: rejection must not change a survivor's trajectory.
    pub max_survivor_deviation: f32,
    #[serde(skip)]
    pub outcomes: Vec<EarlyRejectOutcome>,
    pub seconds: f64,
}

/// The control run and how PRFL compares with it.
#[derive(Clone, Debug, Serialize)]
pub struct ControlResults {
    pub prfl: PrflResults,
    pub after: SampleResults,
    /// Two-proportion z of PRFL's after against the control's after.
    pub prfl_vs_control_z: f64,
}

/// Everything a run measured.
#[derive(Clone, Debug, Serialize)]
pub struct DemoResults {
    pub seed: u64,
    pub generator_params: usize,
    pub reward_params: usize,
    pub pretrain: PretrainResults,
    pub reward: RewardResults,
    pub before: SampleResults,
    pub rejection: RejectionResults,
    pub prfl: PrflResults,
    pub after: SampleResults,
    /// Two-proportion z of after against before.
    pub improvement_z: f64,
    /// The control: the same fine-tuning with the reward's weight at zero (SFT alone).
    pub control: Option<ControlResults>,
    pub total_seconds: f64,
}

/// An exponential moving average (the curves are per-step and noisy); `alpha` per step.
pub fn smooth(values: &[f64], alpha: f64) -> Vec<CurvePoint> {
    let mut ema = None;
    values
        .iter()
        .enumerate()
        .map(|(step, &v)| {
            let e = match ema {
                None => v,
                Some(prev) => prev + alpha * (v - prev),
            };
            ema = Some(e);
            CurvePoint { step, value: e }
        })
        .collect()
}
