//! Early rejection against sampling everything to the end. The candidate set is the "before"
//! sample set (groups of candidates sharing a prompt), already sampled to the end by phase d, so
//! the plain sampler's quality and every candidate's finished clip come for free; early
//! rejection then re-samples each group with [`sample_with_early_rejection`] and is compared on
//! quality and on generator evaluations.

use std::time::Instant;

use super::config::DemoConfig;
use super::generator::{text_cond, video_shape};
use super::observer::Observer;
use super::results::RejectionResults;
use super::stats::Proportion;
use super::world::{prompt_text, SampleSet};
use crate::backend::Backend;
use crate::finetune::early_reject::{
    best_first, sample_with_early_rejection, Candidates, RejectStage,
};
use crate::finetune::sample::SamplingPlan;
use crate::model::wan::WanModel;
use crate::reward::model::RewardModel;
use crate::synthetic::is_good;
use crate::Result;

/// The two models early rejection runs: the generator that samples and the reward model that
/// ranks the partial samples.
#[derive(Clone, Copy)]
pub struct Models<'a, B: Backend> {
    pub generator: &'a WanModel<B>,
    pub reward: &'a RewardModel<B>,
}

/// `set` holds `groups x candidates` clips, group by group; `finished` is every one of them
/// sampled to the end (`[N, C, F, H, W]`).
pub fn compare<B: Backend>(
    be: &B,
    cfg: &DemoConfig,
    models: Models<'_, B>,
    plan: &SamplingPlan,
    set: &SampleSet,
    finished: &[f32],
    obs: &mut dyn Observer,
) -> Result<RejectionResults> {
    let Models { generator, reward } = models;
    let start = Instant::now();
    let world = cfg.world.world();
    let e = &cfg.early_reject;
    let shape = world.shape();
    let per: usize = shape.iter().product();
    let steps = plan.grid.steps();
    let reward_cost = reward.backbone.num_blocks() as f64 / generator.num_blocks() as f64;
    let stage = RejectStage {
        at_step: e.at_step,
        keep: e.keep,
    };
    let (mut early_good, mut best_good, mut all_good) = (0, 0, 0);
    let (mut cost_early, mut deviation) = (0.0, 0.0f32);
    let mut outcomes = Vec::with_capacity(e.groups);
    let mut timestep = 0.0;
    obs.phase("   early rejection (before fine-tuning)", e.groups as u64);
    for g in 0..e.groups {
        let members = g * e.candidates..(g + 1) * e.candidates;
        let prompts = &set.prompts[members.clone()];
        let text = prompt_text(&world, prompts);
        let cand = Candidates {
            shape: video_shape(&world, e.candidates),
            noise: &set.noise[members.start * per..members.end * per],
            text: &text,
            text_len: world.text_len,
            max_batch: cfg.sampling.batch,
        };
        let out = sample_with_early_rejection(be, generator, reward, plan, &cand, &[stage])?;
        timestep = out.stages[0].timestep;
        cost_early += out.cost(reward_cost);
        for (k, &c) in out.kept.iter().enumerate() {
            let mine = &out.latents[k * per..(k + 1) * per];
            let full = &finished[(members.start + c) * per..][..per];
            early_good += is_good(mine, shape) as usize;
            let d = mine
                .iter()
                .zip(full)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            deviation = deviation.max(d);
        }
        let group = &finished[members.start * per..members.end * per];
        all_good += group
            .chunks_exact(per)
            .filter(|x| is_good(x, shape))
            .count();
        // Best-of-N the expensive way: finish every candidate, score the clean clips.
        let xb = be.upload(group);
        let tb = be.upload(&text);
        let zeros = vec![0.0f32; e.candidates];
        let cond = text_cond(&tb, world.text_len);
        let scores = reward.score(
            be,
            &cond.inputs(video_shape(&world, e.candidates), &xb, &zeros),
        )?;
        best_good += best_first(&scores, e.keep)
            .iter()
            .filter(|&&c| is_good(&group[c * per..(c + 1) * per], shape))
            .count();
        outcomes.push(out);
        obs.tick(&format!("group {} of {}", g + 1, e.groups));
    }
    obs.finish();
    let full = (e.groups * e.candidates * steps) as f64;
    let kept = e.groups * e.keep;
    Ok(RejectionResults {
        groups: e.groups,
        candidates: e.candidates,
        keep: e.keep,
        at_step: e.at_step,
        timestep,
        steps,
        reward_cost,
        all: Proportion::new(all_good, e.groups * e.candidates),
        early: Proportion::new(early_good, kept),
        best_at_end: Proportion::new(best_good, kept),
        cost_all: full,
        cost_early,
        cost_best_at_end: full + reward_cost * (e.groups * e.candidates) as f64,
        saved: 1.0 - cost_early / full,
        max_survivor_deviation: deviation,
        outcomes,
        seconds: start.elapsed().as_secs_f64(),
    })
}
