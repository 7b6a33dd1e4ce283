//! The demo's phases in order: a. pre-train the generator; b. cut and train the PAVRM; d. sample
//! the fixed set before fine-tuning (and compare early rejection on it); c. PRFL; d. sample the
//! same set after; then the control (the same fine-tuning without the reward) and its samples.
//! Deterministic in the seed: every random stream is derived from it.

use std::time::Instant;

use super::config::DemoConfig;
use super::finetune::{copy_model, finetune};
use super::generator::{plan, pretrain, sample_set};
use super::observer::Observer;
use super::rejection::{compare, Models};
use super::results::{ControlResults, DemoResults, SampleResults};
use super::reward::{score_all, train_reward};
use super::stats::two_proportion_z;
use super::world::{measure, prompt_text, SampleSet};
use crate::backend::Backend;
use crate::finetune::sample::SamplingPlan;
use crate::model::wan::WanModel;
use crate::reward::model::RewardModel;
use crate::{Error, Result};

/// Runs the whole demo on `be`.
pub fn run<B: Backend>(be: &B, cfg: &DemoConfig, obs: &mut dyn Observer) -> Result<DemoResults> {
    validate(cfg)?;
    let start = Instant::now();
    let world = cfg.world.world();
    let plan = plan(cfg)?;
    let set = SampleSet::grouped(
        &world,
        cfg.early_reject.groups,
        cfg.early_reject.candidates,
        cfg.seed ^ 0x5A3E,
    );

    let (generator, pretrain) = pretrain(be, cfg, obs)?;
    obs.note(&format!(
        "a. generator pre-trained: {} steps, {} clips, flow-matching loss {:.4} ({:.0} s)",
        pretrain.steps, pretrain.clips_seen, pretrain.final_loss, pretrain.seconds
    ));

    let (reward, reward_res) = train_reward(be, cfg, &generator, obs)?;
    let table: Vec<String> = reward_res
        .accuracy
        .iter()
        .map(|r| {
            format!(
                "t={:.0}: {:.2} (pairs {:.2})",
                r.timestep, r.accuracy.value, r.pair_accuracy.value
            )
        })
        .collect();
    obs.note(&format!(
        "b. reward model trained: {} + {} steps; held-out accuracy {} ({:.0} s)",
        reward_res.steps,
        reward_res.calibration_steps,
        table.join(", "),
        reward_res.seconds
    ));

    obs.phase("d. sample before fine-tuning", batches(cfg, set.len()));
    let (before, finished) = sample_and_measure(be, cfg, &generator, &reward, &plan, &set, obs)?;
    obs.finish();
    obs.note(&format!(
        "d. before: fraction good {}, mean reward {:.3}",
        before.quality.good.display(),
        before.mean_reward
    ));

    let models = Models {
        generator: &generator,
        reward: &reward,
    };
    let rejection = compare(be, cfg, models, &plan, &set, &finished, obs)?;
    obs.note(&format!(
        "   early rejection: kept {} of {} at step {} (t={:.0}): good {} vs {} for all, {:.0}% of \
         the compute saved",
        rejection.keep,
        rejection.candidates,
        rejection.at_step,
        rejection.timestep,
        rejection.early.display(),
        rejection.all.display(),
        100.0 * rejection.saved
    ));

    let control_copy = if cfg.prfl.control {
        Some(copy_model(be, &generator)?)
    } else {
        None
    };
    let (generator, reward, prfl) = finetune(
        be,
        cfg,
        generator,
        reward,
        cfg.prfl.reward_scale,
        "c. fine-tune generator (PRFL)",
        obs,
    )?;
    obs.note(&format!(
        "c. PRFL: {} steps, reward of rollouts {:.3} -> {:.3} ({:.0} s)",
        prfl.steps,
        prfl.reward.first().map_or(f64::NAN, |p| p.value),
        prfl.reward.last().map_or(f64::NAN, |p| p.value),
        prfl.seconds
    ));

    obs.phase("d. sample after fine-tuning", batches(cfg, set.len()));
    let (after, _) = sample_and_measure(be, cfg, &generator, &reward, &plan, &set, obs)?;
    obs.finish();
    obs.note(&format!(
        "d. after: fraction good {}, mean reward {:.3}",
        after.quality.good.display(),
        after.mean_reward
    ));

    let mut reward = reward;
    let control = match control_copy {
        None => None,
        Some(copy) => {
            let (tuned, r, prfl) = finetune(
                be,
                cfg,
                copy,
                reward,
                0.0,
                "   control: same fine-tuning, reward weight 0",
                obs,
            )?;
            reward = r;
            obs.phase("   control: sample", batches(cfg, set.len()));
            let (c_after, _) = sample_and_measure(be, cfg, &tuned, &reward, &plan, &set, obs)?;
            obs.finish();
            obs.note(&format!(
                "   control (SFT alone): fraction good {}",
                c_after.quality.good.display()
            ));
            Some(ControlResults {
                prfl_vs_control_z: two_proportion_z(&c_after.quality.good, &after.quality.good),
                prfl,
                after: c_after,
            })
        }
    };

    let improvement_z = two_proportion_z(&before.quality.good, &after.quality.good);
    Ok(DemoResults {
        seed: cfg.seed,
        generator_params: count_params(&generator),
        reward_params: count_params(&reward.backbone),
        pretrain,
        reward: reward_res,
        before,
        rejection,
        prfl,
        after,
        improvement_z,
        control,
        total_seconds: start.elapsed().as_secs_f64(),
    })
}

fn validate(cfg: &DemoConfig) -> Result<()> {
    cfg.world.world().validate()?;
    let bad = |m: String| Err(Error::Config(format!("demo: {m}")));
    let e = &cfg.early_reject;
    if e.groups == 0 || e.candidates == 0 || e.keep == 0 || e.keep > e.candidates {
        return bad(format!(
            "early rejection keeps {} of {} candidates in {} groups",
            e.keep, e.candidates, e.groups
        ));
    }
    if e.at_step == 0 || e.at_step >= cfg.sampling.steps {
        return bad(format!(
            "early rejection at step {} of {}",
            e.at_step, cfg.sampling.steps
        ));
    }
    if let Some((lo, hi)) = cfg.prfl.mid_range {
        if lo > hi || hi + 2 > cfg.sampling.steps {
            return bad(format!(
                "PRFL mid steps {lo}..={hi} must lie within 0..={}",
                cfg.sampling.steps.saturating_sub(2)
            ));
        }
    }
    let mix = cfg.world.mix;
    let valid = mix.iter().all(|&w| w.is_finite() && w >= 0.0);
    if !valid || mix.iter().sum::<f32>() <= 0.0 {
        return bad(format!("world.mix {mix:?} must be non-negative weights"));
    }
    if cfg.reward.blocks == 0 || cfg.reward.blocks > cfg.generator.layers {
        return bad(format!(
            "the reward keeps {} of {} generator blocks",
            cfg.reward.blocks, cfg.generator.layers
        ));
    }
    for (what, n) in [
        ("pretrain.batch", cfg.pretrain.batch),
        ("reward.batch", cfg.reward.batch),
        ("prfl.batch", cfg.prfl.batch),
        ("sampling.batch", cfg.sampling.batch),
        ("reward.eval_clips", cfg.reward.eval_clips),
    ] {
        if n == 0 {
            return bad(format!("{what} must be at least 1"));
        }
    }
    Ok(())
}

fn batches(cfg: &DemoConfig, n: usize) -> u64 {
    n.div_ceil(cfg.sampling.batch) as u64
}

/// Samples the whole set, measures it by the rule and by the reward (clean, t = 0); returns the
/// results and every sampled latent.
fn sample_and_measure<B: Backend>(
    be: &B,
    cfg: &DemoConfig,
    generator: &WanModel<B>,
    reward: &RewardModel<B>,
    plan: &SamplingPlan,
    set: &SampleSet,
    obs: &mut dyn Observer,
) -> Result<(SampleResults, Vec<f32>)> {
    let start = Instant::now();
    let world = cfg.world.world();
    let latents = sample_set(be, generator, &world, plan, set, cfg.sampling.batch, obs)?;
    let quality = measure(&world, &latents);
    let per: usize = world.shape().iter().product();
    let text = prompt_text(&world, &set.prompts);
    let scores = score_all(be, reward, &world, &latents, &text, 0.0)?;
    let mean_reward = scores.iter().map(|&s| s as f64).sum::<f64>() / scores.len() as f64;
    // One clip from each of the first groups, so the preview shows different prompts.
    let stride = cfg.early_reject.candidates;
    let preview = (0..cfg.preview_clips.min(cfg.early_reject.groups))
        .flat_map(|g| latents[g * stride * per..][..per].iter().copied())
        .collect();
    Ok((
        SampleResults {
            quality,
            mean_reward,
            preview,
            seconds: start.elapsed().as_secs_f64(),
        },
        latents,
    ))
}

fn count_params<B: Backend>(model: &WanModel<B>) -> usize {
    (0..model.params.len()).map(|i| model.params.numel(i)).sum()
}
