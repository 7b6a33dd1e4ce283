//! The `#[repr(C)]` types the calls fill in, the step mode and the solver, and their
//! conversions from and to the session's Rust types ([`crate::session::stats`]).
//!
//! Output structs carry a `struct_size` the caller sets to `sizeof` of the struct it compiled
//! (at least ABI version 1's); the library writes that many bytes at most, so fields appended in
//! later versions never overrun an older caller's struct.

use std::mem::size_of;

use super::status::FfiError;
use crate::schedule::SolverKind;
use crate::session::{QueueStats, SampleConfig, SampleStats, StepMode, StepStats};

/// The most sampling steps `prfl_sample_early_reject` takes (the grid's timesteps are whole
/// numbers in [0, 1000), so more steps would only repeat them).
pub const PRFL_MAX_SAMPLE_STEPS: usize = 1000;

/// Which trainer `prfl_step` / `prfl_start` drive.
#[repr(i32)]
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrflStepMode {
    /// Train the reward model (PAVRM) on queued samples of the configured loss's kind: labelled
    /// clips for `PRFL_LOSS_CE`, pairs for `PRFL_LOSS_BT`. Samples of the other kind stay queued.
    PRFL_STEP_REWARD = 0,
    /// Fine-tune the generator with PRFL against a frozen copy of the reward model, on the text
    /// of queued samples of either kind (see `prfl_step`).
    PRFL_STEP_PRFL = 1,
}

impl PrflStepMode {
    /// The mode of an `int32_t` argument, if it is one.
    pub fn from_i32(v: i32) -> Option<Self> {
        match v {
            0 => Some(PrflStepMode::PRFL_STEP_REWARD),
            1 => Some(PrflStepMode::PRFL_STEP_PRFL),
            _ => None,
        }
    }
}

/// What one `prfl_step` did. Fields that do not apply to the step's mode are NaN (floats) or 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PrflStepStats {
    /// Set by the caller to `sizeof(PrflStepStats)` before the call.
    pub struct_size: u32,
    /// The `PrflStepMode` of the step.
    pub mode: i32,
    /// Optimiser steps taken so far by this mode's trainer.
    pub step: u64,
    /// Samples consumed (clips or pairs).
    pub samples: u32,
    /// Reward: the BCE / Bradley-Terry loss. PRFL: the reward loss `scale * relu(margin - score)`.
    pub loss: f32,
    /// Reward: fraction of the batch scored on the right side. PRFL: NaN.
    pub accuracy: f32,
    /// PRFL: mean reward score of the rollout's `x_{m+1}` before the update. Reward: NaN.
    pub reward: f32,
    /// Global gradient norm before clipping (NaN when the update was skipped).
    pub grad_norm: f32,
    /// 1 when a non-finite loss or gradient made the optimiser skip this update.
    pub skipped_nonfinite: u32,
    /// PRFL: the rollout's mid step m. Reward: 0.
    pub mid_step: u32,
    /// Wall time of the step (batch assembly included).
    pub seconds: f64,
    /// PRFL: bytes of activations alive at the backward (generator plus reward tapes).
    /// Reward: 0 (not measured).
    pub peak_bytes: u64,
}

/// Size of ABI version 1's `PrflStepStats`.
pub const STEP_STATS_V1_SIZE: usize = size_of::<PrflStepStats>();

impl PrflStepStats {
    /// Every field "not applicable", for a mode to fill in.
    pub fn empty(mode: PrflStepMode) -> Self {
        PrflStepStats {
            struct_size: STEP_STATS_V1_SIZE as u32,
            mode: mode as i32,
            step: 0,
            samples: 0,
            loss: f32::NAN,
            accuracy: f32::NAN,
            reward: f32::NAN,
            grad_norm: f32::NAN,
            skipped_nonfinite: 0,
            mid_step: 0,
            seconds: 0.0,
            peak_bytes: 0,
        }
    }
}

/// The queue's counters. At any moment with no call in flight:
/// `submitted = accepted + rejected_full + rejected_invalid` and
/// `accepted = consumed + dropped_oldest + queued`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrflQueueStats {
    /// Set by the caller to `sizeof(PrflQueueStats)` before the call.
    pub struct_size: u32,
    /// Slots (`queue_capacity`).
    pub capacity: u32,
    /// Samples waiting (both kinds).
    pub queued: u32,
    /// `prfl_submit_*` calls on this runtime (except those refused with
    /// `PRFL_ERR_DEVICE_LOST`).
    pub submitted: u64,
    /// Samples taken into the queue.
    pub accepted: u64,
    /// Samples refused because the queue was full.
    pub rejected_full: u64,
    /// Submissions refused for their arguments (null, length, non-finite, label).
    pub rejected_invalid: u64,
    /// Queued samples dropped to make room (`PRFL_BACKPRESSURE_DROP_OLDEST`).
    pub dropped_oldest: u64,
    /// Samples taken by steps (a step that fails after taking its batch still consumed it).
    pub consumed: u64,
}

/// Size of ABI version 1's `PrflQueueStats`.
pub const QUEUE_STATS_V1_SIZE: usize = size_of::<PrflQueueStats>();

/// The solver `prfl_sample_early_reject` integrates with.
#[repr(i32)]
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrflSolver {
    /// UniPC, order 2 (bh2, predict-x0, UniC corrector): Wan2.1's sampler. The default.
    PRFL_SOLVER_UNIPC = 0,
    /// First-order Euler on the flow-matching ODE.
    PRFL_SOLVER_EULER = 1,
}

impl PrflSolver {
    /// The solver of an `int32_t` field, if it is one.
    pub fn from_i32(v: i32) -> Option<Self> {
        match v {
            0 => Some(PrflSolver::PRFL_SOLVER_UNIPC),
            1 => Some(PrflSolver::PRFL_SOLVER_EULER),
            _ => None,
        }
    }
}

/// How `prfl_sample_early_reject` samples. Fill it with `prfl_sample_config_default` (every
/// field 0 = its default), then change fields. Read up to `struct_size` bytes: fields appended
/// in later versions get their defaults for an older caller.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PrflSampleConfig {
    /// Set by the caller to `sizeof(PrflSampleConfig)` (`prfl_sample_config_default` does).
    pub struct_size: u32,
    /// Sampling steps N (at least 2) on the Wan2.1 reference grid; 0 = the runtime's
    /// `prfl_steps`.
    pub steps: u32,
    /// Flow-matching shift of the grid (finite, positive); 0 = the runtime's `shift`.
    pub shift: f32,
    /// A `PrflSolver`; 0 = `PRFL_SOLVER_UNIPC`.
    pub solver: i32,
    /// Solver steps taken before the candidates are scored, in `1 ..= steps - 1`: the reward model
    /// reads the latents `x_s` at the grid's timestep `t_s`. 0 = `2 * steps / 5` (at least 1),
    /// e.g. 4 of 10 steps.
    pub reject_at_step: u32,
    /// Candidates finished, in `1 ..= count`; `count` samples every candidate with no rejection
    /// (and needs no reward model). 0 = `count / 4` (at least 1).
    pub keep: u32,
}

/// Size of ABI version 1's `PrflSampleConfig`.
pub const SAMPLE_CONFIG_V1_SIZE: usize = size_of::<PrflSampleConfig>();

/// What one `prfl_sample_early_reject` call cost. Costs count per-sample model evaluations (one
/// latent through the model at one step).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PrflSampleStats {
    /// Set by the caller to `sizeof(PrflSampleStats)` before the call.
    pub struct_size: u32,
    /// The timestep (in [0, 1000]) the reward model scored the candidates at; NaN when
    /// `keep == count` (no rejection).
    pub reject_timestep: f32,
    /// Generator evaluations spent.
    pub generator_evals: u64,
    /// Reward-model evaluations spent (`count` when rejecting, else 0).
    pub reward_evals: u64,
    /// Generator evaluations of sampling every candidate to the end (`count * steps`).
    pub full_generator_evals: u64,
    /// The price of one reward evaluation in generator evaluations: the reward model's blocks
    /// over the generator's (it runs the generator's first blocks); 0 when `keep == count`.
    pub reward_cost: f64,
    /// `1 - (generator_evals + reward_cost * reward_evals) / full_generator_evals`: the fraction
    /// of full sampling's compute saved (0 when `keep == count`).
    pub saved_fraction: f64,
    /// Wall time of the call (building the sampling generator on first use included).
    pub seconds: f64,
}

/// Size of ABI version 1's `PrflSampleStats`.
pub const SAMPLE_STATS_V1_SIZE: usize = size_of::<PrflSampleStats>();

impl From<PrflStepMode> for StepMode {
    fn from(m: PrflStepMode) -> Self {
        match m {
            PrflStepMode::PRFL_STEP_REWARD => StepMode::Reward,
            PrflStepMode::PRFL_STEP_PRFL => StepMode::Prfl,
        }
    }
}

impl From<StepMode> for PrflStepMode {
    fn from(m: StepMode) -> Self {
        match m {
            StepMode::Reward => PrflStepMode::PRFL_STEP_REWARD,
            StepMode::Prfl => PrflStepMode::PRFL_STEP_PRFL,
        }
    }
}

impl From<StepStats> for PrflStepStats {
    /// Fields that do not apply become NaN (floats) or 0.
    fn from(s: StepStats) -> Self {
        let mut out = PrflStepStats::empty(s.mode.into());
        out.step = s.step;
        out.samples = s.samples as u32;
        out.loss = s.loss;
        out.accuracy = s.accuracy.unwrap_or(f32::NAN);
        out.reward = s.reward.unwrap_or(f32::NAN);
        out.grad_norm = s.grad_norm.unwrap_or(f32::NAN);
        out.skipped_nonfinite = s.skipped_nonfinite as u32;
        out.mid_step = s.mid_step.unwrap_or(0) as u32;
        out.seconds = s.seconds;
        out.peak_bytes = s.peak_bytes.unwrap_or(0);
        out
    }
}

impl From<QueueStats> for PrflQueueStats {
    fn from(s: QueueStats) -> Self {
        PrflQueueStats {
            struct_size: QUEUE_STATS_V1_SIZE as u32,
            capacity: s.capacity as u32,
            queued: s.queued as u32,
            submitted: s.submitted,
            accepted: s.accepted,
            rejected_full: s.rejected_full,
            rejected_invalid: s.rejected_invalid,
            dropped_oldest: s.dropped_oldest,
            consumed: s.consumed,
        }
    }
}

impl From<SampleStats> for PrflSampleStats {
    /// No rejection gives a NaN `reject_timestep`.
    fn from(s: SampleStats) -> Self {
        PrflSampleStats {
            struct_size: SAMPLE_STATS_V1_SIZE as u32,
            reject_timestep: s.reject_timestep.unwrap_or(f32::NAN),
            generator_evals: s.generator_evals,
            reward_evals: s.reward_evals,
            full_generator_evals: s.full_generator_evals,
            reward_cost: s.reward_cost,
            saved_fraction: s.saved_fraction,
            seconds: s.seconds,
        }
    }
}

impl TryFrom<&PrflSampleConfig> for SampleConfig {
    type Error = FfiError;

    /// Every 0 field becomes its default (`None`); an unknown solver is
    /// `PRFL_ERR_UNKNOWN_ENUM`.
    fn try_from(c: &PrflSampleConfig) -> Result<Self, FfiError> {
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
        let nonzero = |v: u32| (v != 0).then_some(v as usize);
        Ok(SampleConfig {
            steps: nonzero(c.steps),
            shift: (c.shift != 0.0).then_some(c.shift),
            solver,
            reject_at_step: nonzero(c.reject_at_step),
            keep: nonzero(c.keep),
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_header_constant_is_the_sessions() {
        assert_eq!(
            super::PRFL_MAX_SAMPLE_STEPS,
            crate::session::MAX_SAMPLE_STEPS
        );
    }
}
