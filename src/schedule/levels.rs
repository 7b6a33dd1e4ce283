//! Training noise levels (method.md section 2): level `k` in `0..1000` has
//! `sigma = linspace(1, 0, 1001)[k]`, shifted to `sigma' = s sigma / (1 + (s - 1) sigma)`; the
//! model is fed `trunc(1000 sigma')` while the noise uses `sigma'` itself. The level index is
//! `floor(1000 u)` with `u` uniform, or logit-normal (`u = sigmoid(mean + std z)`).
//!
//! All of it is evaluated in f64 (numpy's arithmetic, bit for bit) before `sigma'` is rounded to
//! f32, so truncation happens on the exact value: level 750 gives `sigma' = 0.625` and timestep
//! 625, not 624.

use super::grid::{linspace_at, shift_sigma, NUM_TRAIN_TIMESTEPS};
use super::rng::Rng;

/// How the uniform variate behind a level index is drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LevelDistribution {
    /// `u ~ U[0, 1)`: every level equally likely (the reference default).
    Uniform,
    /// `u = sigmoid(mean + std * z)`, `z ~ N(0, 1)`: concentrates training on mid levels.
    LogitNormal { mean: f64, std: f64 },
}

/// One training noise level.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NoiseLevel {
    /// Level index `k` in `0..1000`; 0 is pure noise.
    pub index: usize,
    /// The exact shifted `sigma'` that mixes data and noise.
    pub sigma: f32,
    /// `trunc(1000 * sigma')`, the timestep the model sees.
    pub timestep: f32,
}

/// The training level schedule: a shift and a distribution over level indices.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrainingLevels {
    pub shift: f64,
    pub distribution: LevelDistribution,
}

impl Default for TrainingLevels {
    /// Shift 5, uniform levels: the reference's setting.
    fn default() -> Self {
        TrainingLevels::new(5.0)
    }
}

impl TrainingLevels {
    /// Number of training levels.
    pub const COUNT: usize = NUM_TRAIN_TIMESTEPS;

    /// Uniform levels with the given shift.
    pub fn new(shift: f64) -> Self {
        TrainingLevels {
            shift,
            distribution: LevelDistribution::Uniform,
        }
    }

    /// The same shift with another level distribution.
    pub fn with_distribution(self, distribution: LevelDistribution) -> Self {
        TrainingLevels {
            distribution,
            ..self
        }
    }

    /// Level `index` (`< 1000`).
    pub fn level(&self, index: usize) -> NoiseLevel {
        assert!(
            index < Self::COUNT,
            "training level {index} out of range 0..{}",
            Self::COUNT
        );
        let base = linspace_at(1.0, 0.0, Self::COUNT + 1, index);
        let sigma = shift_sigma(base, self.shift);
        NoiseLevel {
            index,
            sigma: sigma as f32,
            timestep: (sigma * NUM_TRAIN_TIMESTEPS as f64).trunc() as f32,
        }
    }

    /// `floor(1000 u)` clamped to `0..=999` (u = 1, or rounding just below it, stays in range).
    pub fn index_for(u: f64) -> usize {
        ((u * Self::COUNT as f64).floor().max(0.0) as usize).min(Self::COUNT - 1)
    }

    /// The level for a given variate `u` in `[0, 1]` (callers with their own random source).
    pub fn level_for(&self, u: f64) -> NoiseLevel {
        self.level(Self::index_for(u))
    }

    /// Draws a level from `rng` according to [`Self::distribution`].
    pub fn draw(&self, rng: &mut Rng) -> NoiseLevel {
        let u = match self.distribution {
            LevelDistribution::Uniform => rng.uniform_f64(),
            LevelDistribution::LogitNormal { mean, std } => {
                let z = mean + std * rng.normal_f64();
                1.0 / (1.0 + (-z).exp())
            }
        };
        self.level_for(u)
    }
}
