//! The supervised flow-matching micro-step on clean latents (method.md section 2), shared by
//! generator pre-training and the SFT half of a PRFL iteration.

use super::sample::Cond;
use crate::backend::Backend;
use crate::model::params::Grads;
use crate::model::wan::{Mode, VideoShape, WanModel};
use crate::schedule::levels::TrainingLevels;
use crate::schedule::rng::Rng;
use crate::{Error, Result};

/// One micro-batch of clean latents: `x0` (host data, `[B, C, F, H, W]` of `shape`) and its
/// conditioning.
pub struct CleanBatch<'a, B: Backend> {
    pub shape: VideoShape,
    pub cond: &'a Cond<'a, B>,
    pub x0: &'a [f32],
}

/// Noises the batch's `x0` to levels drawn from `levels`, predicts the velocity, and accumulates
/// the gradient of `mean (v - (eps - x0))^2` into `grads`. Returns the loss; a non-finite loss
/// is returned without a backward pass (the caller skips the update).
pub fn flow_matching_micro<B: Backend>(
    be: &B,
    generator: &WanModel<B>,
    grads: &mut Grads<B>,
    levels: &TrainingLevels,
    rng: &mut Rng,
    batch: CleanBatch<'_, B>,
    mode: Mode,
) -> Result<f64> {
    let CleanBatch { shape, cond, x0 } = batch;
    let per = generator.cfg.out_dim * shape.voxels();
    if x0.len() != shape.batch * per {
        return Err(Error::InvalidInput(format!(
            "x0 holds {} values, expected {} x {per}",
            x0.len(),
            shape.batch
        )));
    }
    let mut x = vec![0.0f32; x0.len()];
    let mut target = vec![0.0f32; x0.len()];
    let mut t = Vec::with_capacity(shape.batch);
    let mut eps = vec![0.0f32; per];
    for b in 0..shape.batch {
        let level = levels.draw(rng);
        rng.fill_normal(&mut eps);
        let r = b * per..(b + 1) * per;
        for ((xi, ti), (&a, &e)) in x[r.clone()]
            .iter_mut()
            .zip(&mut target[r.clone()])
            .zip(x0[r].iter().zip(&eps))
        {
            *xi = (1.0 - level.sigma) * a + level.sigma * e;
            *ti = e - a;
        }
        t.push(level.timestep);
    }
    let xb = be.upload(&x);
    let (v, tape) = generator.forward(be, &cond.inputs(shape, &xb, &t), mode)?;
    let vh = be.download(&v);
    let count = vh.len() as f64;
    let loss = vh
        .iter()
        .zip(&target)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum::<f64>()
        / count;
    if loss.is_finite() {
        let dv: Vec<f32> = vh
            .iter()
            .zip(&target)
            .map(|(a, b)| (2.0 * (a - b) as f64 / count) as f32)
            .collect();
        let tape =
            tape.ok_or_else(|| Error::InvalidInput("flow matching needs a training mode".into()))?;
        generator.backward(be, &tape, &be.upload(&dv), grads)?;
    }
    Ok(loss)
}
