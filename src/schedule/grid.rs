//! Sampling grids: the noise levels `sigma_0 > ... > sigma_{n-1} > sigma_n = 0` a rollout visits
//! and the timesteps the model is fed at each of the `n` steps.
//!
//! Three constructions are reproduced bit for bit (see the module docs of [`crate::schedule`] for
//! how they differ). Every one of them builds its sigmas in float64 and then stores them as f32,
//! which is why [`SamplingGrid`] keeps f32 sigmas: the solvers read exactly the values the
//! reference reads, and compute their coefficients from them in f64.

use crate::{Error, Result};

/// `num_train_timesteps` of Wan2.1 and of the diffusers flow schedulers: timestep = 1000 * sigma.
pub const NUM_TRAIN_TIMESTEPS: usize = 1000;

/// Wan2.1's sampling `sigma_max`. The reference builds its scheduler with shift 1, so its training
/// sigmas are `1 - linspace(1, 1/1000, 1000)[::-1]` stored as float32, and `sigma_max` is the first
/// of them read back into a Python float: float32(0.999), not the decimal 0.999.
pub fn wan_sigma_max() -> f64 {
    (1.0f64 - 1.0 / NUM_TRAIN_TIMESTEPS as f64) as f32 as f64
}

/// The flow-matching time shift `s * sigma / (1 + (s - 1) * sigma)`, evaluated in the same order
/// as numpy does so that results match the references bit for bit.
pub fn shift_sigma(sigma: f64, shift: f64) -> f64 {
    shift * sigma / (1.0 + (shift - 1.0) * sigma)
}

/// Element `k` of `numpy.linspace(start, stop, num)`, bit for bit: numpy computes
/// `k * ((stop - start) / (num - 1)) + start` and pins the last element to `stop`.
pub fn linspace_at(start: f64, stop: f64, num: usize, k: usize) -> f64 {
    assert!(k < num, "linspace index {k} out of range for {num} points");
    if num == 1 {
        return start;
    }
    if k == num - 1 {
        return stop;
    }
    let step = (stop - start) / (num - 1) as f64;
    k as f64 * step + start
}

/// `numpy.linspace(start, stop, num)` (endpoint included), bit for bit.
pub fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    (0..num).map(|k| linspace_at(start, stop, num, k)).collect()
}

/// A sampling grid of `n` steps: `sigmas` has `n + 1` entries ending in 0, `timesteps` has `n`.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingGrid {
    sigmas: Vec<f32>,
    timesteps: Vec<f32>,
}

impl SamplingGrid {
    /// The Wan2.1 reference grid (`FlowUniPCMultistepScheduler.set_timesteps(n, shift=s)`):
    /// `linspace(sigma_max, 0, n + 1)[:-1]` with `sigma_max` = [`wan_sigma_max`], shifted in f64,
    /// timesteps `trunc(1000 * sigma)` taken from the f64 sigmas, then a final sigma of 0.
    pub fn wan(n: usize, shift: f64) -> Self {
        assert!(n >= 1, "a sampling grid needs at least one step");
        let sigmas: Vec<f64> = (0..n)
            .map(|k| shift_sigma(linspace_at(wan_sigma_max(), 0.0, n + 1, k), shift))
            .collect();
        Self::truncated(&sigmas)
    }

    /// What diffusers' `UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=s)` builds in
    /// `set_timesteps(n)`: `linspace(1, 1/1000, n + 1)[:-1]` shifted in f64, the first sigma
    /// lowered by 1e-6 when it is within 1e-6 of 1 (so that `ln(1 - sigma)` stays finite),
    /// timesteps `trunc(1000 * sigma)`, then a final sigma of 0.
    pub fn diffusers_unipc(n: usize, shift: f64) -> Self {
        assert!(n >= 1, "a sampling grid needs at least one step");
        let stop = 1.0 / NUM_TRAIN_TIMESTEPS as f64;
        let mut sigmas: Vec<f64> = (0..n)
            .map(|k| shift_sigma(linspace_at(1.0, stop, n + 1, k), shift))
            .collect();
        const EPS: f64 = 1e-6;
        if (sigmas[0] - 1.0).abs() < EPS {
            sigmas[0] -= EPS;
        }
        Self::truncated(&sigmas)
    }

    /// What diffusers' `FlowMatchEulerDiscreteScheduler(shift=s)` builds in `set_timesteps(n)`.
    ///
    /// Its quirks, reproduced on purpose: the endpoints come from the *shifted* float32 training
    /// sigmas (`sigma_max` = 1, `sigma_min` = shift(1/1000) in f32 arithmetic), the `n` points are
    /// `linspace(1000 * sigma_max, 1000 * sigma_min, n) / 1000` (no extra point dropped) and are
    /// shifted a *second* time in f64, so the last nonzero sigma is shift(shift(1/1000)); the
    /// timesteps are `1000 * sigma` in float32 arithmetic and are not truncated.
    pub fn diffusers_euler(n: usize, shift: f64) -> Self {
        assert!(n >= 1, "a sampling grid needs at least one step");
        let train = NUM_TRAIN_TIMESTEPS as f32;
        // torch float32 arithmetic: a Python scalar operand is rounded to f32 first.
        let shift_f32 = |x: f32| (shift as f32 * x) / (1.0 + (shift - 1.0) as f32 * x);
        // Training sigmas are linspace(1, 1000, 1000)[::-1] / 1000 in f32: 1 down to 1/1000.
        let sigma_max = shift_f32(1.0) as f64;
        let sigma_min = shift_f32(1.0 / train) as f64;
        let t_train = NUM_TRAIN_TIMESTEPS as f64;
        let mut sigmas: Vec<f32> = (0..n)
            .map(|k| {
                let t = linspace_at(sigma_max * t_train, sigma_min * t_train, n, k);
                shift_sigma(t / t_train, shift) as f32
            })
            .collect();
        let timesteps = sigmas.iter().map(|&s| s * train).collect();
        sigmas.push(0.0);
        SamplingGrid { sigmas, timesteps }
    }

    /// A custom grid; `sigmas` must be finite, strictly decreasing, in `[0, 1]`, end in 0 and be
    /// one longer than `timesteps`.
    pub fn from_parts(sigmas: Vec<f32>, timesteps: Vec<f32>) -> Result<Self> {
        let bad = |msg: String| Err(Error::InvalidInput(format!("sampling grid: {msg}")));
        if timesteps.is_empty() || sigmas.len() != timesteps.len() + 1 {
            return bad(format!(
                "{} sigmas for {} timesteps (need n + 1 sigmas for n >= 1 steps)",
                sigmas.len(),
                timesteps.len()
            ));
        }
        if sigmas.iter().chain(&timesteps).any(|v| !v.is_finite()) {
            return bad("non-finite value".into());
        }
        if sigmas[0] > 1.0 || sigmas.last() != Some(&0.0) {
            return bad(format!(
                "sigmas must start <= 1 and end at 0, got {sigmas:?}"
            ));
        }
        if sigmas.windows(2).any(|w| w[1] >= w[0]) {
            return bad(format!(
                "sigmas must be strictly decreasing, got {sigmas:?}"
            ));
        }
        Ok(SamplingGrid { sigmas, timesteps })
    }

    /// f64 sigmas -> f32 storage, timesteps truncated from the f64 values (torch's `.to(int64)`).
    fn truncated(sigmas: &[f64]) -> Self {
        let timesteps = sigmas
            .iter()
            .map(|&s| (s * NUM_TRAIN_TIMESTEPS as f64).trunc() as f32)
            .collect();
        let mut stored: Vec<f32> = sigmas.iter().map(|&s| s as f32).collect();
        stored.push(0.0);
        SamplingGrid {
            sigmas: stored,
            timesteps,
        }
    }

    /// Number of solver steps `n`.
    pub fn steps(&self) -> usize {
        self.timesteps.len()
    }
    /// All `n + 1` sigmas, the last one 0.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }
    /// The `n` model timesteps.
    pub fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }
    /// `sigma_i` for `i` in `0..=n`.
    pub fn sigma(&self, i: usize) -> f32 {
        self.sigmas[i]
    }
    /// The timestep fed to the model at step `i` in `0..n`.
    pub fn timestep(&self, i: usize) -> f32 {
        self.timesteps[i]
    }
}
