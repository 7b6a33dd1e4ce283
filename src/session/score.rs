//! Scoring noisy latents with the reward model, and choosing the best candidates of a host's
//! own sampler (early rejection without the library's sampler).

use super::{no_reward, Runtime, Session};
use crate::backend::device::Device;
use crate::backend::Backend;
use crate::finetune::early_reject::best_first;
use crate::model::wan::{Inputs, VideoShape};
use crate::reward::model::RewardModel;
use crate::session::queue::check_finite;
use crate::{Error, Result};

/// A timestep must be finite and within the schedule's `[0, 1000]`.
fn check_timestep(t: f32, what: &str) -> Result<()> {
    if !t.is_finite() {
        return Err(Error::NonFinite(format!("{what} is {t}")));
    }
    if !(0.0..=1000.0).contains(&t) {
        return Err(Error::InvalidArgument(format!(
            "{what} is {t}, outside [0, 1000]"
        )));
    }
    Ok(())
}

impl Runtime {
    /// Reward scores of `timesteps.len()` noisy latents at their timesteps, in chunks of
    /// `batch_size`. Waits while a training step holds the models.
    fn score(
        &self,
        latents: &[f32],
        timesteps: &[f32],
        text: &[f32],
        out: &mut [f32],
    ) -> Result<()> {
        self.check_alive()?;
        let s = &self.cfg.sizes;
        let count = timesteps.len();
        if latents.len() != count * s.latent || text.len() != count * s.text || out.len() != count {
            return Err(Error::Shape(format!(
                "{count} timesteps need {} latent floats, {} text floats and {count} scores; \
                 got {}, {} and {}",
                count * s.latent,
                count * s.text,
                latents.len(),
                text.len(),
                out.len()
            )));
        }
        for (i, &t) in timesteps.iter().enumerate() {
            check_timestep(t, &format!("timesteps[{i}]"))?;
        }
        check_finite(latents, "latent")?;
        check_finite(text, "text")?;
        let models = self.models.read();
        let model = &models.reward.as_ref().ok_or_else(no_reward)?.trainer.model;
        self.on_device("scoring", || {
            self.score_chunks(model, latents, timesteps, text, out)
        })
    }

    fn score_chunks(
        &self,
        model: &RewardModel<Device>,
        latents: &[f32],
        timesteps: &[f32],
        text: &[f32],
        out: &mut [f32],
    ) -> Result<()> {
        let s = &self.cfg.sizes;
        let count = timesteps.len();
        let chunk = self.cfg.batch_size;
        for first in (0..count).step_by(chunk) {
            let n = chunk.min(count - first);
            let x = self
                .be
                .upload(&latents[first * s.latent..(first + n) * s.latent]);
            let ctx = self.be.upload(&text[first * s.text..(first + n) * s.text]);
            let inputs = Inputs {
                shape: VideoShape {
                    batch: n,
                    frames: s.latent_shape[1],
                    height: s.latent_shape[2],
                    width: s.latent_shape[3],
                },
                x: &x,
                t: &timesteps[first..first + n],
                context: &ctx,
                text_len: s.text_len,
                y: None,
                clip: None,
                image_len: 0,
            };
            let scores = model.score(&self.be, &inputs)?;
            out[first..first + n].copy_from_slice(&scores);
        }
        Ok(())
    }
}

impl Session {
    /// Reward scores (probabilities in (0, 1)) of `timesteps.len()` noisy latents
    /// (`count x latent` floats) at their own timesteps (raw values in [0, 1000]; 0 = clean)
    /// under their text states (`count x text`), written to `out` (`count` values). Runs in
    /// chunks of `batch_size`, concurrently with other scoring, and waits while a training step
    /// holds the model (up to one step).
    /// Errors: [`Error::NotLoaded`], [`Error::Shape`], [`Error::NonFinite`],
    /// [`Error::InvalidArgument`] (a timestep outside [0, 1000]).
    pub fn score_into(
        &self,
        latents: &[f32],
        timesteps: &[f32],
        text: &[f32],
        out: &mut [f32],
    ) -> Result<()> {
        self.rt().score(latents, timesteps, text, out)
    }

    /// [`Session::score_into`], returning the scores.
    pub fn score(&self, latents: &[f32], timesteps: &[f32], text: &[f32]) -> Result<Vec<f32>> {
        let mut out = vec![0.0; timesteps.len()];
        self.score_into(latents, timesteps, text, &mut out)?;
        Ok(out)
    }

    /// Early rejection for a host that runs its own sampler: scores `scores.len()` candidates'
    /// noisy latents all at one `timestep` into `scores` (candidate order) and writes the indices
    /// of the `out_kept.len()` best to `out_kept`, best first (ties: the lower index first).
    pub fn select_into(
        &self,
        latents: &[f32],
        timestep: f32,
        text: &[f32],
        out_kept: &mut [u32],
        scores: &mut [f32],
    ) -> Result<()> {
        check_timestep(timestep, "timestep")?;
        if out_kept.len() > scores.len() {
            return Err(Error::InvalidArgument(format!(
                "`keep` is {}: between 1 and count ({})",
                out_kept.len(),
                scores.len()
            )));
        }
        let timesteps = vec![timestep; scores.len()];
        self.score_into(latents, &timesteps, text, scores)?;
        let best = best_first(scores, out_kept.len());
        for (o, i) in out_kept.iter_mut().zip(best) {
            *o = i as u32;
        }
        Ok(())
    }

    /// [`Session::select_into`] for `count` candidates keeping `keep`: the kept indices (best
    /// first) and every candidate's score.
    pub fn select(
        &self,
        latents: &[f32],
        count: usize,
        timestep: f32,
        text: &[f32],
        keep: usize,
    ) -> Result<(Vec<usize>, Vec<f32>)> {
        let mut kept = vec![0u32; keep];
        let mut scores = vec![0.0; count];
        self.select_into(latents, timestep, text, &mut kept, &mut scores)?;
        Ok((kept.into_iter().map(|k| k as usize).collect(), scores))
    }
}
