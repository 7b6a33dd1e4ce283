//! What the session's calls report: which trainer a step drives, and the statistics of steps,
//! the queue and sampling. The C ABI converts these into its `#[repr(C)]` structs.

/// Which trainer a step (foreground or background) drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StepMode {
    /// Train the reward model on queued samples of the configured loss's kind: labelled clips
    /// for cross-entropy, pairs for Bradley-Terry. Samples of the other kind stay queued.
    Reward,
    /// Fine-tune the generator with PRFL against a frozen copy of the reward model, on the text
    /// of queued samples of either kind.
    Prfl,
}

/// What one training step did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    /// The step's mode.
    pub mode: StepMode,
    /// Optimiser steps taken so far by this mode's trainer.
    pub step: u64,
    /// Samples consumed (clips or pairs).
    pub samples: usize,
    /// Reward: the BCE / Bradley-Terry loss. PRFL: the reward loss.
    pub loss: f32,
    /// Reward: fraction of the batch scored on the right side (`None` for PRFL).
    pub accuracy: Option<f32>,
    /// PRFL: mean reward score of the rollout's `x_{m+1}` before the update (`None` for reward).
    pub reward: Option<f32>,
    /// Global gradient norm before clipping, when an optimiser update ran.
    pub grad_norm: Option<f32>,
    /// A non-finite loss or gradient made the optimiser skip this update.
    pub skipped_nonfinite: bool,
    /// PRFL: the rollout's mid step m.
    pub mid_step: Option<usize>,
    /// Wall time of the step (batch assembly included), in seconds.
    pub seconds: f64,
    /// PRFL: bytes of activations alive at the backward (generator plus reward tapes).
    pub peak_bytes: Option<u64>,
}

/// The queue's counters. Every snapshot, also one taken while producers submit and steps
/// consume, satisfies `submitted = accepted + rejected_full + rejected_invalid`,
/// `accepted = consumed + dropped_oldest + queued` and `queued <= capacity`: `queued` counts the
/// accepted samples not yet taken by a step or dropped (a sample being copied in counts from
/// the moment its copy is complete). Each counter is a value it held during the call; with no
/// call in flight they are exact.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Slots.
    pub capacity: usize,
    /// Samples waiting (both kinds).
    pub queued: usize,
    /// Submissions (except those refused because the device was lost).
    pub submitted: u64,
    /// Samples taken into the queue.
    pub accepted: u64,
    /// Samples refused because the queue was full.
    pub rejected_full: u64,
    /// Submissions refused for their arguments (null, length, non-finite, label).
    pub rejected_invalid: u64,
    /// Queued samples dropped to make room ([`super::Backpressure::DropOldest`]).
    pub dropped_oldest: u64,
    /// Samples taken by steps (a step that fails after taking its batch still consumed it).
    pub consumed: u64,
}

/// What one sampling call cost. Costs count per-sample model evaluations.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SampleStats {
    /// The timestep (in [0, 1000]) the reward model scored the candidates at; `None` without
    /// rejection.
    pub reject_timestep: Option<f32>,
    /// Generator evaluations spent.
    pub generator_evals: u64,
    /// Reward-model evaluations spent.
    pub reward_evals: u64,
    /// Generator evaluations of sampling every candidate to the end.
    pub full_generator_evals: u64,
    /// One reward evaluation's price in generator evaluations (0 without rejection).
    pub reward_cost: f64,
    /// The fraction of full sampling's compute saved (0 without rejection).
    pub saved_fraction: f64,
    /// Wall time of the call, in seconds.
    pub seconds: f64,
}
