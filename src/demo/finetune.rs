//! Phase c: PRFL fine-tuning of the pre-trained generator against the frozen PAVRM, in latent
//! space only. Each step rolls out from fresh noise under a random prompt to a random mid step,
//! takes the gradient of the reward of the next latent through one generator call, and updates
//! every generator weight.

use std::time::Instant;

use super::config::DemoConfig;
use super::generator::{text_cond, video_shape};
use super::observer::Observer;
use super::results::{smooth, PrflResults};
use crate::backend::Backend;
use crate::finetune::prfl::{PrflConfig, PrflTrainer};
use crate::finetune::sample::GridKind;
use crate::model::lora::{init_lora, LoraConfig};
use crate::model::wan::WanModel;
use crate::reward::dataset::BatchLatents;
use crate::reward::model::RewardModel;
use crate::schedule::Rng;
use crate::synthetic::mixed_clip_batch;
use crate::Result;

/// Fine-tunes `generator` with PRFL; returns it (and the reward model, unchanged).
pub fn finetune<B: Backend>(
    be: &B,
    cfg: &DemoConfig,
    generator: WanModel<B>,
    reward: RewardModel<B>,
    obs: &mut dyn Observer,
) -> Result<(WanModel<B>, RewardModel<B>, PrflResults)> {
    let start = Instant::now();
    let world = cfg.world.world();
    let p = &cfg.prfl;
    let s = &cfg.sampling;
    let mut generator = generator;
    let lora = match p.lora_rank {
        None => None,
        Some(rank) => {
            let lora = LoraConfig {
                rank,
                alpha: rank as f32,
                targets: match std::env::var("LORA_T") {
                    Ok(t) => t.split(',').map(String::from).collect(),
                    Err(_) => LoraConfig::default().targets,
                },
            };
            let adapters = init_lora(&generator.cfg, &lora, cfg.seed ^ 0x10A)?;
            generator.attach_lora(be, &lora, &adapters)?;
            Some(lora)
        }
    };
    let mut trainer = PrflTrainer::new(
        be,
        generator,
        reward,
        PrflConfig {
            steps: s.steps,
            shift: s.shift,
            solver: s.solver,
            grid: GridKind::Wan,
            mid_range: p.mid_range,
            sft: p.sft,
            lr: p.lr,
            eps: p.eps,
            scale: p.reward_scale,
            recompute: false,
            lora,
            seed: cfg.seed ^ 0x9F1,
            ..PrflConfig::default()
        },
    )?;
    // The prompts (and, with SFT, the clean clips) of each step come from the pre-training mix.
    let mut data = Rng::seed_from_u64(cfg.seed ^ 0xF17E);
    let shape = video_shape(&world, p.batch);
    let (mut rewards, mut losses, mut sft) = (Vec::new(), Vec::new(), Vec::new());
    obs.phase("c. fine-tune generator (PRFL)", p.steps as u64);
    for step in 0..p.steps {
        let batch = mixed_clip_batch(&world, &mut data, p.batch, cfg.world.mix);
        let BatchLatents::Clips { latents, .. } = &batch.latents else {
            unreachable!("clip_batch makes clips")
        };
        let text = be.upload(&batch.text);
        let cond = text_cond(&text, world.text_len);
        if p.joint_sft {
            sft.push(trainer.sft_micro(be, shape, &cond, latents)?);
        }
        let stats = trainer.micro_step(be, shape, &cond, Some(latents))?;
        rewards.push(stats.reward);
        losses.push(stats.prfl_loss);
        if let Some(l) = stats.sft_loss {
            sft.push(l);
        }
        let n = rewards.len().min(20);
        let mean = rewards[rewards.len() - n..].iter().sum::<f64>() / n as f64;
        obs.tick(&format!(
            "step {} reward {mean:.3} (m = {})",
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
            reward: smooth(&rewards, 0.05),
            loss: smooth(&losses, 0.05),
            sft_loss: smooth(&sft, 0.05),
            seconds: start.elapsed().as_secs_f64(),
        },
    ))
}
