//! Sampling latents from a generator with Euler or UniPC, optionally with classifier-free
//! guidance, and the no-gradient partial rollout PRFL starts from.

use crate::backend::Backend;
use crate::model::wan::{Inputs, Mode, VideoShape, WanModel};
use crate::schedule::{Sampler, SamplingGrid, SolverKind};
use crate::{Error, Result};

/// Conditioning of a batch of latents (device buffers), shared by sampling and training.
pub struct Cond<'a, B: Backend> {
    /// Text encoder states `[B, text_len, text_dim]`.
    pub text: &'a B::Buf,
    pub text_len: usize,
    /// I2V conditioning latent `[B, 20, F, H, W]`.
    pub y: Option<&'a B::Buf>,
    /// I2V CLIP features `[B, image_len, image_dim]`.
    pub clip: Option<&'a B::Buf>,
    pub image_len: usize,
}

impl<'a, B: Backend> Cond<'a, B> {
    /// The model inputs for latents `x` of `shape` at timestep `t` (one value for the batch).
    pub fn inputs<'b>(&'b self, shape: VideoShape, x: &'b B::Buf, t: &'b [f32]) -> Inputs<'b, B> {
        Inputs {
            shape,
            x,
            t,
            context: self.text,
            text_len: self.text_len,
            y: self.y,
            clip: self.clip,
            image_len: self.image_len,
        }
    }
}

/// Classifier-free guidance: `v = v_neg + scale (v_pos - v_neg)`.
pub struct Guidance<'a, B: Backend> {
    pub negative: Cond<'a, B>,
    pub scale: f32,
}

/// The generator's velocity at `x`, timestep `t`, with guidance if given.
pub fn velocity<B: Backend>(
    be: &B,
    gen: &WanModel<B>,
    shape: VideoShape,
    cond: &Cond<'_, B>,
    guidance: Option<&Guidance<'_, B>>,
    x: &B::Buf,
    t: f32,
) -> Result<B::Buf> {
    let ts = vec![t; shape.batch];
    let (v_pos, _) = gen.forward(be, &cond.inputs(shape, x, &ts), Mode::Inference)?;
    match guidance {
        None => Ok(v_pos),
        Some(g) => {
            let (v_neg, _) = gen.forward(be, &g.negative.inputs(shape, x, &ts), Mode::Inference)?;
            // v_neg + s (v_pos - v_neg) = s v_pos + (1 - s) v_neg
            let mut v = v_neg;
            be.scale(1.0 - g.scale, &mut v);
            be.axpy(g.scale, &v_pos, &mut v);
            Ok(v)
        }
    }
}

/// Which sigma grid a rollout uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GridKind {
    /// The Wan2.1 reference grid (sigma_max 0.999), as the reference PRFL code samples.
    #[default]
    Wan,
    /// diffusers' grid for the chosen solver (UniPC: from 1 - 1e-6; Euler: diffusers' Euler grid).
    Diffusers,
}

/// What to sample with.
#[derive(Clone, Debug)]
pub struct SamplingPlan {
    pub grid: SamplingGrid,
    pub kind: SolverKind,
}

impl SamplingPlan {
    /// `steps` steps of `kind` on the `grid` family with `shift`.
    pub fn new(grid: GridKind, steps: usize, shift: f64, kind: SolverKind) -> Result<Self> {
        if steps < 2 {
            return Err(Error::Config(format!(
                "sampling needs at least 2 steps, got {steps}"
            )));
        }
        let grid = match (grid, kind) {
            (GridKind::Wan, _) => SamplingGrid::wan(steps, shift),
            (GridKind::Diffusers, SolverKind::UniPc) => SamplingGrid::diffusers_unipc(steps, shift),
            (GridKind::Diffusers, SolverKind::Euler) => SamplingGrid::diffusers_euler(steps, shift),
        };
        Ok(SamplingPlan { grid, kind })
    }

    /// The Wan2.1 reference grid (sigma_max 0.999) with `steps` steps and `shift`.
    pub fn wan(steps: usize, shift: f64, kind: SolverKind) -> Result<Self> {
        Self::new(GridKind::Wan, steps, shift, kind)
    }

    pub fn sampler<B: Backend>(&self) -> Result<Sampler<B>> {
        Sampler::new(self.grid.clone(), self.kind)
    }
}

/// Runs the sampler from `noise` for all of the plan's steps and returns the clean latents.
pub fn sample<B: Backend>(
    be: &B,
    gen: &WanModel<B>,
    shape: VideoShape,
    cond: &Cond<'_, B>,
    guidance: Option<&Guidance<'_, B>>,
    plan: &SamplingPlan,
    noise: B::Buf,
) -> Result<B::Buf> {
    let mut sampler = plan.sampler::<B>()?;
    let steps = sampler.steps();
    sampler.run_to(be, noise, steps, |x, t, _| {
        velocity(be, gen, shape, cond, guidance, x, t)
    })
}
