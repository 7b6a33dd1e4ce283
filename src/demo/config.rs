//! The demo's settings: the world, the model sizes and every phase's budget. The defaults are
//! the full demo (about five minutes on two cores); [`DemoConfig::quick`] is the shortened run of
//! the test. Every field can be overridden from a TOML file (`prfl demo --config`), which is how
//! the numbers below were tuned.

use serde::{Deserialize, Serialize};

use crate::model::{ModelType, WanConfig};
use crate::schedule::SolverKind;
use crate::synthetic::WorldConfig;

/// The procedural world (see [`crate::synthetic`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WorldSettings {
    pub channels: usize,
    pub frames: usize,
    pub height: usize,
    pub width: usize,
    pub noise_std: f32,
    pub text_len: usize,
    pub text_dim: usize,
    /// Blob colours from a fixed palette of this many (see [`WorldConfig::palette`]).
    pub palette: Option<usize>,
    pub max_blobs: usize,
    pub background_std: f32,
    /// Relative weights of smooth (good), frozen and jittering (bad) clips in the generator's
    /// pre-training data (and PRFL's SFT data).
    pub mix: [f32; 3],
}

impl Default for WorldSettings {
    fn default() -> Self {
        let w = WorldConfig::default();
        WorldSettings {
            channels: w.channels,
            frames: w.frames,
            height: w.height,
            width: w.width,
            noise_std: w.noise_std,
            text_len: w.text_len,
            text_dim: w.text_dim,
            palette: w.palette,
            max_blobs: w.max_blobs,
            background_std: w.background_std,
            mix: [0.3, 0.35, 0.35],
        }
    }
}

impl WorldSettings {
    pub fn world(&self) -> WorldConfig {
        WorldConfig {
            channels: self.channels,
            frames: self.frames,
            height: self.height,
            width: self.width,
            text_len: self.text_len,
            text_dim: self.text_dim,
            noise_std: self.noise_std,
            palette: self.palette,
            max_blobs: self.max_blobs,
            background_std: self.background_std,
            ..WorldConfig::default()
        }
    }
}

/// The generator: a small model of the Wan2.1 architecture.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GeneratorSettings {
    pub dim: usize,
    pub ffn_dim: usize,
    pub heads: usize,
    pub layers: usize,
    pub freq_dim: usize,
    /// Start from Wan2.1's own initialisation (zero output projection; see [`super::init`])
    /// rather than [`crate::model::init::random_weights`]'s test initialisation.
    pub wan_init: bool,
}

impl Default for GeneratorSettings {
    fn default() -> Self {
        GeneratorSettings {
            dim: 64,
            ffn_dim: 128,
            heads: 4,
            layers: 4,
            freq_dim: 64,
            wan_init: true,
        }
    }
}

impl GeneratorSettings {
    pub fn wan(&self, world: &WorldSettings) -> WanConfig {
        WanConfig {
            model_type: ModelType::T2V,
            in_dim: world.channels,
            out_dim: world.channels,
            dim: self.dim,
            ffn_dim: self.ffn_dim,
            freq_dim: self.freq_dim,
            text_dim: world.text_dim,
            image_dim: None,
            num_heads: self.heads,
            num_layers: self.layers,
            eps: 1e-6,
            text_len: world.text_len,
        }
    }
}

/// Phase a: flow-matching pre-training of the generator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PretrainSettings {
    pub steps: usize,
    pub batch: usize,
    pub lr: f32,
    pub warmup: u64,
    /// Shift of the training levels.
    pub shift: f64,
}

impl Default for PretrainSettings {
    fn default() -> Self {
        PretrainSettings {
            steps: 600,
            batch: 8,
            lr: 2e-3,
            warmup: 50,
            shift: 3.0,
        }
    }
}

/// Phase b: the PAVRM cut from the pre-trained generator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RewardSettings {
    /// Generator blocks kept.
    pub blocks: usize,
    pub pool_heads: usize,
    pub hidden: [usize; 2],
    /// Bradley-Terry steps on preference pairs (`batch` pairs each).
    pub steps: usize,
    pub batch: usize,
    pub backbone_lr: f32,
    pub head_lr: f32,
    /// Head-only BCE steps on labelled clips that calibrate the score (see [`super::reward`]).
    pub calibration_steps: usize,
    pub calibration_lr: f32,
    /// Shift of the training levels the reward sees.
    pub shift: f64,
    /// Held-out clips of the accuracy table (half good).
    pub eval_clips: usize,
    pub eval_timesteps: Vec<f32>,
}

impl Default for RewardSettings {
    fn default() -> Self {
        RewardSettings {
            blocks: 2,
            pool_heads: 4,
            hidden: [64, 32],
            steps: 300,
            batch: 8,
            backbone_lr: 1e-3,
            head_lr: 1e-3,
            calibration_steps: 200,
            calibration_lr: 1e-3,
            shift: 3.0,
            eval_clips: 128,
            eval_timesteps: vec![0.0, 200.0, 400.0, 600.0, 800.0],
        }
    }
}

/// Sampling (the rollout of PRFL and the before/after evaluation).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingSettings {
    pub steps: usize,
    pub shift: f64,
    pub solver: SolverKind,
    /// Clips sampled before and after fine-tuning (the same noise and prompts both times).
    pub clips: usize,
    /// Clips per generator call.
    pub batch: usize,
}

impl Default for SamplingSettings {
    fn default() -> Self {
        SamplingSettings {
            steps: 10,
            shift: 3.0,
            solver: SolverKind::UniPc,
            clips: 128,
            batch: 16,
        }
    }
}

/// Phase c: PRFL fine-tuning.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PrflSettings {
    pub steps: usize,
    pub batch: usize,
    pub lr: f32,
    /// Interleave the supervised flow-matching step on the pre-training mix (the reference's
    /// SFT step). It holds the generator on the data, not on the good clips, so any gain in
    /// quality comes from the reward.
    pub sft: bool,
    /// Inclusive range of the mid step; `None`: the whole rollout.
    pub mid_range: Option<(usize, usize)>,
    /// Train LoRA adapters of this rank on the attention projections (base frozen) instead of
    /// every weight; `None`: full fine-tuning.
    pub lora_rank: Option<usize>,
    /// AdamW's epsilon.
    pub eps: f32,
    /// Add the flow-matching gradient of a batch of the pre-training mix to every PRFL update
    /// (one optimiser step for both), weighted against the reward by `reward_scale`.
    pub joint_sft: bool,
    /// PRFL's loss scale (`scale * relu(2 - score)`; the reference: 0.1).
    pub reward_scale: f32,
}

impl Default for PrflSettings {
    fn default() -> Self {
        PrflSettings {
            steps: 150,
            batch: 4,
            lr: 3e-4,
            sft: false,
            mid_range: None,
            lora_rank: None,
            eps: 1e-8,
            joint_sft: false,
            reward_scale: 0.1,
        }
    }
}

/// Early rejection while sampling.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EarlyRejectSettings {
    /// Candidates started per prompt group.
    pub candidates: usize,
    /// Candidates kept to the end.
    pub keep: usize,
    /// The solver step after which the candidates are scored.
    pub at_step: usize,
    /// Groups (each: `candidates` noises under one prompt).
    pub groups: usize,
}

impl Default for EarlyRejectSettings {
    fn default() -> Self {
        EarlyRejectSettings {
            candidates: 8,
            keep: 2,
            at_step: 3,
            groups: 16,
        }
    }
}

/// Every setting of a demo run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DemoConfig {
    pub seed: u64,
    pub world: WorldSettings,
    pub generator: GeneratorSettings,
    pub pretrain: PretrainSettings,
    pub reward: RewardSettings,
    pub sampling: SamplingSettings,
    pub prfl: PrflSettings,
    pub early_reject: EarlyRejectSettings,
    /// Clips per GIF preview (before and after).
    pub preview_clips: usize,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            seed: 0,
            world: WorldSettings::default(),
            generator: GeneratorSettings::default(),
            pretrain: PretrainSettings::default(),
            reward: RewardSettings::default(),
            sampling: SamplingSettings::default(),
            prfl: PrflSettings::default(),
            early_reject: EarlyRejectSettings::default(),
            preview_clips: 6,
        }
    }
}

impl DemoConfig {
    /// The shortened run of the test (`prfl demo --quick`): the same models and world, smaller
    /// budgets and sample counts.
    pub fn quick() -> Self {
        let d = DemoConfig::default();
        DemoConfig {
            pretrain: PretrainSettings {
                steps: d.pretrain.steps / 3,
                ..d.pretrain
            },
            reward: RewardSettings {
                steps: d.reward.steps / 3,
                eval_clips: 64,
                ..d.reward
            },
            sampling: SamplingSettings {
                clips: 64,
                ..d.sampling
            },
            prfl: PrflSettings {
                steps: d.prfl.steps / 3,
                ..d.prfl
            },
            early_reject: EarlyRejectSettings {
                groups: 8,
                ..d.early_reject
            },
            preview_clips: 4,
            ..d
        }
    }
}
