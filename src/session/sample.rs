//! Sampling from the generator with early rejection: candidates start from host noise, the
//! reward model scores them part-way and only the best are sampled to the end.

use std::sync::Arc;
use std::time::Instant;

use super::stats::SampleStats;
use super::{no_generator, no_reward, Models, Runtime, Session};
use crate::backend::device::Device;
use crate::finetune::early_reject::{
    sample_candidates, sample_with_early_rejection, Candidates, RejectStage,
};
use crate::finetune::sample::SamplingPlan;
use crate::model::checkpoint::Checkpoint;
use crate::model::wan::{VideoShape, WanModel};
use crate::schedule::SolverKind;
use crate::session::queue::check_finite;
use crate::{Error, Result};

/// The most sampling steps a sampling call takes (the grid's timesteps are whole numbers in
/// [0, 1000), so more steps would only repeat them).
pub const MAX_SAMPLE_STEPS: usize = 1000;

/// How [`Session::sample`] samples; `None` fields take their defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleConfig {
    /// Sampling steps N (2 ..= [`MAX_SAMPLE_STEPS`]) on the Wan2.1 grid; `None` = the
    /// session's `prfl_steps`.
    pub steps: Option<usize>,
    /// Flow-matching shift of the grid (finite, positive); `None` = the session's `shift`.
    pub shift: Option<f32>,
    /// The solver.
    pub solver: SolverKind,
    /// Solver steps taken before the candidates are scored, in `1 ..= steps - 1`; `None` =
    /// `2 * steps / 5` (at least 1).
    pub reject_at_step: Option<usize>,
    /// Candidates finished, in `1 ..= count` (`count` = no rejection, no reward model needed);
    /// `None` = `count / 4` (at least 1).
    pub keep: Option<usize>,
}

impl Default for SampleConfig {
    /// Every default, solver UniPC.
    fn default() -> Self {
        SampleConfig {
            steps: None,
            shift: None,
            solver: SolverKind::UniPc,
            reject_at_step: None,
            keep: None,
        }
    }
}

/// A [`SampleConfig`] resolved for a number of candidates: defaults filled in, ranges checked.
#[derive(Clone, Debug)]
pub struct SampleSetup {
    /// The timestep grid and solver.
    pub plan: SamplingPlan,
    /// Sampling steps.
    pub steps: usize,
    /// `None` when every candidate is kept (plain sampling).
    pub stage: Option<RejectStage>,
    /// Candidates finished.
    pub keep: usize,
}

/// What [`Session::sample`] returns.
#[derive(Clone, Debug)]
pub struct Sampled {
    /// The survivors' clean latents, `keep x latent` floats, in candidate order.
    pub latents: Vec<f32>,
    /// The survivors' candidate indices, in candidate order (row k of `latents` is candidate
    /// `kept[k]`).
    pub kept: Vec<usize>,
    /// What the call cost.
    pub stats: SampleStats,
}

impl Runtime {
    /// The generator sampling runs: the cached inference generator, built now on first use.
    fn sampling_generator(&self, m: &Models, source: &Checkpoint) -> Result<Arc<WanModel<Device>>> {
        let mut cache = m.sampling_generator.lock();
        if let Some(g) = cache.as_ref() {
            return Ok(Arc::clone(g));
        }
        let tensors = source.load(|_| true)?;
        let g = Arc::new(WanModel::new(
            &self.be,
            source.config().clone(),
            &tensors,
            None,
        )?);
        ::log::info!("inference generator built for sampling");
        *cache = Some(Arc::clone(&g));
        Ok(g)
    }
}

impl Session {
    /// Resolves a [`SampleConfig`] for `count` (at least 1) candidates.
    pub fn sample_setup(&self, c: &SampleConfig, count: usize) -> Result<SampleSetup> {
        let cfg = &self.rt().cfg;
        let bad = |m: String| Err(Error::InvalidArgument(m));
        let steps = c.steps.unwrap_or(cfg.prfl_steps);
        if !(2..=MAX_SAMPLE_STEPS).contains(&steps) {
            return bad(format!(
                "config->steps is {steps}: sampling takes 2 to {MAX_SAMPLE_STEPS} steps"
            ));
        }
        let shift = c.shift.unwrap_or(cfg.shift);
        if !(shift.is_finite() && shift > 0.0) {
            return bad(format!(
                "config->shift is {shift}: it must be finite and positive (0 = the runtime's)"
            ));
        }
        let keep = c.keep.unwrap_or((count / 4).max(1));
        if keep == 0 || keep > count {
            return bad(format!(
                "config->keep is {keep}: between 1 and count ({count})"
            ));
        }
        let at_step = c.reject_at_step.unwrap_or((2 * steps / 5).max(1));
        if at_step == 0 || at_step >= steps {
            return bad(format!(
                "config->reject_at_step is {at_step}: between 1 and steps - 1 ({})",
                steps - 1
            ));
        }
        Ok(SampleSetup {
            plan: SamplingPlan::wan(steps, shift as f64, c.solver)?,
            steps,
            stage: (keep < count).then_some(RejectStage { at_step, keep }),
            keep,
        })
    }

    /// Samples the candidates of `noise` (`count x latent` floats, standard normal) under
    /// `text` (`count x text`), rejecting all but `setup.keep` at `setup.stage` under the reward
    /// model; writes the survivors' clean latents (`keep x latent`) and candidate indices
    /// (`keep`), both in candidate order. The generator is the PRFL trainer's once it exists,
    /// else a whole inference copy of the loaded generator built on first use and kept. Takes
    /// the models' read lock for the whole rollout, like scoring.
    pub fn sample_into(
        &self,
        noise: &[f32],
        text: &[f32],
        setup: &SampleSetup,
        out_latents: &mut [f32],
        out_kept: &mut [u32],
    ) -> Result<SampleStats> {
        let start = Instant::now();
        let rt = self.rt();
        rt.check_alive()?;
        let s = &rt.cfg.sizes;
        let count = noise.len() / s.latent;
        if noise.len() != count * s.latent
            || text.len() != count * s.text
            || out_latents.len() != setup.keep * s.latent
            || out_kept.len() != setup.keep
        {
            return Err(Error::Shape(format!(
                "{count} candidates keeping {}: noise {} floats, text {}, out_latents {}, \
                 out_kept {} do not match latent {} and text {} per candidate",
                setup.keep,
                noise.len(),
                text.len(),
                out_latents.len(),
                out_kept.len(),
                s.latent,
                s.text
            )));
        }
        check_finite(noise, "noise")?;
        check_finite(text, "text")?;
        let models = rt.models.read();
        let source = models.generator.as_ref().ok_or_else(no_generator)?;
        let reward = match setup.stage {
            Some(_) => Some(&models.reward.as_ref().ok_or_else(no_reward)?.trainer.model),
            None => None,
        };
        let cand = Candidates {
            shape: VideoShape {
                batch: 1,
                frames: s.latent_shape[1],
                height: s.latent_shape[2],
                width: s.latent_shape[3],
            },
            noise,
            text,
            text_len: s.text_len,
            max_batch: rt.cfg.batch_size,
        };
        let (outcome, reward_cost) = rt.on_device("sampling", || {
            let cached;
            let generator = match &models.prfl {
                Some(p) => {
                    // The fine-tuned generator supersedes the cached base one: free it.
                    *models.sampling_generator.lock() = None;
                    &p.trainer.generator
                }
                None => {
                    cached = rt.sampling_generator(&models, source)?;
                    &*cached
                }
            };
            Ok(match (setup.stage, reward) {
                (Some(stage), Some(r)) => (
                    sample_with_early_rejection(
                        &rt.be,
                        generator,
                        r,
                        &setup.plan,
                        &cand,
                        &[stage],
                    )?,
                    r.cfg.blocks as f64 / generator.cfg.num_layers as f64,
                ),
                _ => (
                    sample_candidates(&rt.be, generator, &setup.plan, &cand)?,
                    0.0,
                ),
            })
        })?;
        drop(models);
        if outcome.latents.len() != out_latents.len() || outcome.kept.len() != out_kept.len() {
            return Err(Error::Internal(format!(
                "sampling returned {} survivors for {} kept",
                outcome.kept.len(),
                out_kept.len()
            )));
        }
        out_latents.copy_from_slice(&outcome.latents);
        for (o, &k) in out_kept.iter_mut().zip(&outcome.kept) {
            *o = k as u32;
        }
        Ok(SampleStats {
            reject_timestep: outcome.stages.first().map(|st| st.timestep),
            generator_evals: outcome.generator_evals as u64,
            reward_evals: outcome.reward_evals as u64,
            full_generator_evals: outcome.full_generator_evals as u64,
            reward_cost,
            saved_fraction: outcome.saved_fraction(reward_cost),
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// Samples `noise.len() / latent` candidates under `config` (see [`Session::sample_into`]).
    pub fn sample(&self, noise: &[f32], text: &[f32], config: &SampleConfig) -> Result<Sampled> {
        let latent = self.rt().cfg.sizes.latent;
        let count = noise.len() / latent;
        if count == 0 || noise.len() % latent != 0 {
            return Err(Error::Shape(format!(
                "noise is {} floats: a positive multiple of the latent's {latent}",
                noise.len()
            )));
        }
        let setup = self.sample_setup(config, count)?;
        let mut latents = vec![0.0; setup.keep * latent];
        let mut kept = vec![0u32; setup.keep];
        let stats = self.sample_into(noise, text, &setup, &mut latents, &mut kept)?;
        Ok(Sampled {
            latents,
            kept: kept.into_iter().map(|k| k as usize).collect(),
            stats,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::device::DeviceSpec;
    use crate::session::{SampleSizes, SessionConfig};

    #[test]
    fn sample_configs_resolve_defaults_and_refuse_out_of_range_values() {
        let sizes = SampleSizes::new([1, 1, 2, 2], [1, 2], [0, 0]).unwrap();
        let s = Session::new(SessionConfig {
            device: DeviceSpec::Cpu,
            ..SessionConfig::new(sizes)
        })
        .unwrap();
        let d = s.sample_setup(&SampleConfig::default(), 8).unwrap();
        assert_eq!((d.steps, d.keep), (40, 2));
        assert_eq!(d.stage.map(|st| st.at_step), Some(16));
        let all = SampleConfig {
            keep: Some(8),
            ..SampleConfig::default()
        };
        assert!(s.sample_setup(&all, 8).unwrap().stage.is_none());
        for (bad, word) in [
            (
                SampleConfig {
                    keep: Some(0),
                    ..SampleConfig::default()
                },
                "keep",
            ),
            (
                SampleConfig {
                    keep: Some(9),
                    ..SampleConfig::default()
                },
                "keep",
            ),
            (
                SampleConfig {
                    steps: Some(1),
                    ..SampleConfig::default()
                },
                "steps",
            ),
            (
                SampleConfig {
                    shift: Some(-1.0),
                    ..SampleConfig::default()
                },
                "shift",
            ),
            (
                SampleConfig {
                    steps: Some(4),
                    reject_at_step: Some(4),
                    ..SampleConfig::default()
                },
                "reject_at_step",
            ),
            (
                SampleConfig {
                    reject_at_step: Some(0),
                    ..SampleConfig::default()
                },
                "reject_at_step",
            ),
        ] {
            let e = s.sample_setup(&bad, 8).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
            assert!(e.to_string().contains(word), "{e}");
        }
        let e = s
            .sample(&[0.0; 3], &[0.0; 2], &SampleConfig::default())
            .unwrap_err();
        assert!(matches!(e, Error::Shape(_)), "{e}");
        let e = s
            .sample(&[0.0; 4], &[0.0; 2], &SampleConfig::default())
            .unwrap_err();
        assert!(matches!(e, Error::NotLoaded(_)), "{e}");
    }
}
