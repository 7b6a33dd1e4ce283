//! The rollout state machine: a grid, a solver, the step index and the little history UniPC
//! needs (the last corrected sample and the two previous x0 predictions), on backend buffers.

use super::bufops::{clone_buf, lincomb};
use super::euler::euler_dt;
use super::grid::SamplingGrid;
use super::unipc;
use crate::backend::Backend;
use crate::{Error, Result};

/// Which solver turns model outputs (velocities) into the next sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SolverKind {
    /// `x <- x + (sigma_next - sigma) v`.
    Euler,
    /// UniPC, order 2, bh2, predict-x0 with the UniC corrector (Wan2.1's sampler).
    UniPc,
}

/// A sampler over one rollout. Call [`Sampler::step`] with the model output at
/// [`Sampler::timestep`]`(i)` for `i = 0, 1, ...`; [`Sampler::reset`] starts a new rollout.
///
/// Besides its inputs, a UniPC step reads the previous corrected sample and the x0 predictions of
/// the two previous steps, all held here (three latent-sized buffers); Euler holds nothing.
pub struct Sampler<B: Backend> {
    grid: SamplingGrid,
    kind: SolverKind,
    /// The next step to take.
    index: usize,
    /// UniPC: the corrected sample `x^c_{i-1}` of the previous step.
    last_sample: Option<B::Buf>,
    /// UniPC: `m_{i-1}` and `m_{i-2}`, most recent first.
    history: [Option<B::Buf>; 2],
}

impl<B: Backend> Sampler<B> {
    /// A sampler at step 0. UniPC needs `sigma_0 < 1` (its log-SNR is infinite at 1; diffusers
    /// lowers a first sigma of 1 by 1e-6 for that reason), so it rejects a diffusers Euler grid.
    pub fn new(grid: SamplingGrid, kind: SolverKind) -> Result<Self> {
        if kind == SolverKind::UniPc && grid.sigma(0) >= 1.0 {
            return Err(Error::InvalidInput(format!(
                "UniPC needs sigma_0 < 1, the grid starts at {}",
                grid.sigma(0)
            )));
        }
        Ok(Sampler {
            grid,
            kind,
            index: 0,
            last_sample: None,
            history: [None, None],
        })
    }

    pub fn grid(&self) -> &SamplingGrid {
        &self.grid
    }
    pub fn kind(&self) -> SolverKind {
        self.kind
    }
    /// Number of steps `n` of a full rollout.
    pub fn steps(&self) -> usize {
        self.grid.steps()
    }
    /// The step the next [`Sampler::step`] call takes (`n` once the rollout is complete).
    pub fn index(&self) -> usize {
        self.index
    }
    /// The timestep to feed the model at step `i` (`i < n`).
    pub fn timestep(&self, i: usize) -> f32 {
        self.grid.timestep(i)
    }
    /// The noise level of sample `x_i` (`i <= n`; `sigma(n) = 0`).
    pub fn sigma(&self, i: usize) -> f32 {
        self.grid.sigma(i)
    }

    /// Back to step 0 for a new rollout on the same grid (drops the history).
    pub fn reset(&mut self) {
        self.index = 0;
        self.last_sample = None;
        self.history = [None, None];
    }

    /// `d x_{i+1} / d v_i` with `x_i` and the history held fixed. Every update is linear in the
    /// model output with a grid-only coefficient, so the gradient PRFL sends into the model
    /// output of step `i` is this scalar times the gradient arriving at `x_{i+1}`. For UniPC it
    /// includes both paths of `v_i`: the predictor and the corrector that rebuilds `x^c_i`.
    pub fn output_coefficient(&self, i: usize) -> f32 {
        assert!(
            i < self.steps(),
            "step {i} out of range for {} steps",
            self.steps()
        );
        match self.kind {
            SolverKind::Euler => euler_dt(self.grid.sigmas(), i),
            SolverKind::UniPc => unipc::output_coefficient(self.grid.sigmas(), i) as f32,
        }
    }

    /// Takes step `i = self.index()`: from the sample `x = x_i` and the model output
    /// `v_i = model(x_i, timestep(i))`, returns `x_{i+1}`.
    pub fn step(&mut self, backend: &B, model_output: &B::Buf, x: &B::Buf) -> B::Buf {
        let i = self.index;
        assert!(
            i < self.steps(),
            "rollout already complete ({} steps)",
            self.steps()
        );
        let n = backend.len(x);
        assert_eq!(
            backend.len(model_output),
            n,
            "model output and sample lengths differ"
        );
        let out = match self.kind {
            SolverKind::Euler => {
                let mut out = clone_buf(backend, x);
                backend.axpy(euler_dt(self.grid.sigmas(), i), model_output, &mut out);
                out
            }
            SolverKind::UniPc => self.unipc_step(backend, model_output, x),
        };
        self.index += 1;
        out
    }

    fn unipc_step(&mut self, backend: &B, v: &B::Buf, x: &B::Buf) -> B::Buf {
        let i = self.index;
        let n = backend.len(x);
        let coeffs = unipc::step_coefficients(self.grid.sigmas(), i);
        // m_i = x_i - sigma_i v_i, from the uncorrected sample as diffusers does.
        let mut m = clone_buf(backend, x);
        backend.axpy(-self.grid.sigma(i), v, &mut m);
        let corrected = match coeffs.corrector {
            None => clone_buf(backend, x),
            Some(c) => {
                // The corrector runs only at steps i >= 1, and step i - 1 (below) set both the
                // last sample and m_{i-1}; `reset` clears them together with the index.
                let last = self
                    .last_sample
                    .as_ref()
                    .expect("UniPC corrector without a previous step");
                let prev = self.history[0]
                    .as_ref()
                    .expect("UniPC corrector without m_{i-1}");
                let mut terms = vec![(c.last_sample, last), (c.cur, &m), (c.prev, prev)];
                if let Some(prev2) = &self.history[1] {
                    terms.push((c.prev2, prev2));
                }
                lincomb(backend, n, &terms)
            }
        };
        let p = coeffs.predictor;
        let mut terms = vec![(p.sample, &corrected), (p.cur, &m)];
        if let Some(prev) = &self.history[0] {
            terms.push((p.prev, prev));
        }
        let next = lincomb(backend, n, &terms);
        // Shift the history: m_i becomes the previous prediction of step i + 1.
        self.history[1] = self.history[0].take();
        self.history[0] = Some(m);
        self.last_sample = Some(corrected);
        next
    }

    /// Runs steps `self.index() .. until` from `x = x_{self.index()}`, calling
    /// `model(x_i, timestep(i), i)` for each velocity, and returns `x_until`. Intermediate samples
    /// are dropped as soon as the next one exists: PRFL's gradient-free prefix keeps only what the
    /// solver itself needs.
    pub fn run_to<F>(
        &mut self,
        backend: &B,
        mut x: B::Buf,
        until: usize,
        mut model: F,
    ) -> Result<B::Buf>
    where
        F: FnMut(&B::Buf, f32, usize) -> Result<B::Buf>,
    {
        assert!(
            self.index <= until && until <= self.steps(),
            "cannot run from step {} to step {until} of {}",
            self.index,
            self.steps()
        );
        while self.index < until {
            let i = self.index;
            let v = model(&x, self.timestep(i), i)?;
            x = self.step(backend, &v, &x);
        }
        Ok(x)
    }
}
