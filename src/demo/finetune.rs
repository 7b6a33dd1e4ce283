//! Phase c: PRFL fine-tuning of the pre-trained generator against the frozen PAVRM, in latent
//! space only. Each iteration draws a batch of the pre-training mix (its prompts, and its clips
//! for the SFT term), rolls out from fresh noise to a random mid step, takes the gradient of the
//! reward of the next latent through one generator call, adds the flow-matching gradient of the
//! clips, and takes one AdamW step on every generator weight.
//!
//! The control run is the same loop with the reward's weight at zero: whatever it gains comes
//! from the SFT term (more training on the data), not from the reward.

use std::collections::BTreeMap;
use std::time::Instant;

use super::config::DemoConfig;
use super::generator::{text_cond, video_shape};
use super::observer::Observer;
use super::results::{smooth, PrflResults};
use crate::backend::Backend;
use crate::finetune::prfl::{PrflTrainConfig, PrflTrainer};
use crate::finetune::sample::GridKind;
use crate::model::wan::WanModel;
use crate::optim::AdamWConfig;
use crate::reward::dataset::BatchLatents;
use crate::reward::model::RewardModel;
use crate::schedule::Rng;
use crate::synthetic::mixed_clip_batch;
use crate::Result;

/// Fine-tunes `generator` with PRFL, the reward weighted by `reward_scale` (0 for the control);
/// returns it and the reward model (unchanged).
pub fn finetune<B: Backend>(
    be: &B,
    cfg: &DemoConfig,
    generator: WanModel<B>,
    reward: RewardModel<B>,
    reward_scale: f32,
    phase: &str,
    obs: &mut dyn Observer,
) -> Result<(WanModel<B>, RewardModel<B>, PrflResults)> {
    let start = Instant::now();
    let world = cfg.world.world();
    let p = &cfg.prfl;
    let s = &cfg.sampling;
    let mut trainer = PrflTrainer::new(
        be,
        generator,
        reward,
        PrflTrainConfig {
            steps: s.steps,
            shift: s.shift,
            solver: s.solver,
            grid: GridKind::Wan,
            mid_range: p.mid_range,
            scale: reward_scale,
            // The SFT term is added below, inside the same optimiser step.
            sft: false,
            optim: AdamWConfig {
                lr: p.lr,
                ..PrflTrainConfig::default().optim
            },
            recompute: false,
            seed: cfg.seed ^ 0x9F1,
            ..PrflTrainConfig::default()
        },
    )?;
    // The same data stream for the run and its control.
    let mut data = Rng::seed_from_u64(cfg.seed ^ 0xF17E);
    let shape = video_shape(&world, p.batch);
    let (mut rewards, mut losses, mut sft) = (Vec::new(), Vec::new(), Vec::new());
    obs.phase(phase, p.steps as u64);
    for step in 0..p.steps {
        let batch = mixed_clip_batch(&world, &mut data, p.batch, cfg.world.mix);
        let BatchLatents::Clips { latents, .. } = &batch.latents else {
            unreachable!("mixed_clip_batch makes clips")
        };
        let text = be.upload(&batch.text);
        let cond = text_cond(&text, world.text_len);
        if p.sft {
            // Accumulated into the trainer's gradients; the PRFL micro-step below adds its own
            // and takes the optimiser step.
            sft.push(trainer.sft_micro(be, shape, &cond, latents)?);
        }
        let stats = trainer.micro_step(be, shape, &cond, None)?;
        rewards.push(stats.reward);
        losses.push(stats.prfl_loss);
        let n = rewards.len().min(20);
        let mean = rewards[rewards.len() - n..].iter().sum::<f64>() / n as f64;
        obs.tick(&format!(
            "step {} rollout reward {mean:.3} (m = {})",
            step + 1,
            stats.mid_step
        ));
    }
    obs.finish();
    Ok((
        trainer.generator,
        trainer.reward,
        PrflResults {
            steps: p.steps,
            reward_scale,
            reward: smooth(&rewards, 0.05),
            loss: smooth(&losses, 0.05),
            sft_loss: smooth(&sft, 0.05),
            seconds: start.elapsed().as_secs_f64(),
        },
    ))
}

/// A copy of `model` (the control run fine-tunes its own).
pub fn copy_model<B: Backend>(be: &B, model: &WanModel<B>) -> Result<WanModel<B>> {
    let ps = &model.params;
    let tensors: BTreeMap<_, _> = (0..ps.len())
        .map(|i| (ps.name(i).to_string(), ps.to_host(be, i)))
        .collect();
    WanModel::new(be, model.cfg.clone(), &tensors, None)
}
