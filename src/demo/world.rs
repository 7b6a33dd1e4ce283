//! The demo's view of the procedural world: conditioning for a list of prompts, fixed sampling
//! sets (noise and prompts) shared by the before and after measurements, and the rule-measured
//! quality of sampled latents.

use serde::Serialize;

use super::stats::Proportion;
use crate::schedule::Rng;
use crate::synthetic::{is_good, motion_quality, prompt_states, WorldConfig, PROMPTS};

/// Text states `[N, text_len, text_dim]` of the prompts, in order.
pub fn prompt_text(world: &WorldConfig, prompts: &[usize]) -> Vec<f32> {
    let table: Vec<Vec<f32>> = (0..PROMPTS.len())
        .map(|p| prompt_states(world, p))
        .collect();
    prompts
        .iter()
        .flat_map(|&p| table[p % PROMPTS.len()].iter().copied())
        .collect()
}

/// Starting noise and prompts of a fixed set of clips: sampling the same set before and after
/// fine-tuning compares the two generators on identical inputs.
#[derive(Clone, Debug)]
pub struct SampleSet {
    /// `[N, C, F, H, W]`.
    pub noise: Vec<f32>,
    pub prompts: Vec<usize>,
}

impl SampleSet {
    /// `groups` groups of `per_group` clips, every group under one prompt (cycling through the
    /// prompts), noise from `seed`.
    pub fn grouped(world: &WorldConfig, groups: usize, per_group: usize, seed: u64) -> Self {
        let n = groups * per_group;
        let per: usize = world.shape().iter().product();
        let mut noise = vec![0.0f32; n * per];
        Rng::seed_from_u64(seed).fill_normal(&mut noise);
        SampleSet {
            noise,
            prompts: (0..n).map(|i| (i / per_group) % PROMPTS.len()).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.prompts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.prompts.is_empty()
    }
}

/// Rule-measured quality of a set of latents.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Quality {
    /// Fraction good by [`is_good`], with its Wilson 95% interval.
    pub good: Proportion,
    /// Mean [`motion_quality`].
    pub mean_motion: f64,
    /// Per clip: [`motion_quality`].
    #[serde(skip)]
    pub per_clip: Vec<f32>,
}

/// Measures `[N, C, F, H, W]` latents with the world's rule (never with the reward model).
pub fn measure(world: &WorldConfig, latents: &[f32]) -> Quality {
    let shape = world.shape();
    let per: usize = shape.iter().product();
    let per_clip: Vec<f32> = latents
        .chunks_exact(per)
        .map(|x| motion_quality(x, shape))
        .collect();
    let good = latents
        .chunks_exact(per)
        .filter(|x| is_good(x, shape))
        .count();
    let mean_motion =
        per_clip.iter().map(|&q| q as f64).sum::<f64>() / per_clip.len().max(1) as f64;
    Quality {
        good: Proportion::new(good, per_clip.len()),
        mean_motion,
        per_clip,
    }
}
