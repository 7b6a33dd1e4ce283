//! Phase a (flow-matching pre-training of the generator from random weights) and the batched
//! sampling every later phase measures with.

use std::time::Instant;

use super::config::DemoConfig;
use super::init::wan_init;
use super::observer::Observer;
use super::results::{smooth, PretrainResults};
use super::world::{prompt_text, SampleSet};
use crate::backend::Backend;
use crate::finetune::pretrain::{PretrainConfig, PretrainTrainer};
use crate::finetune::sample::{sample, Cond, SamplingPlan};
use crate::model::init::random_weights;
use crate::model::wan::{VideoShape, WanModel};
use crate::optim::AdamWConfig;
use crate::reward::dataset::BatchLatents;
use crate::schedule::Rng;
use crate::synthetic::{mixed_clip_batch, WorldConfig};
use crate::Result;

/// Per-clip grid of the world with a batch size.
pub fn video_shape(world: &WorldConfig, batch: usize) -> VideoShape {
    VideoShape {
        batch,
        frames: world.frames,
        height: world.height,
        width: world.width,
    }
}

/// Conditioning of text states `[B, text_len, text_dim]` already on the device.
pub fn text_cond<'a, B: Backend>(text: &'a B::Buf, text_len: usize) -> Cond<'a, B> {
    Cond {
        text,
        text_len,
        y: None,
        clip: None,
        image_len: 0,
    }
}

/// Builds a generator from random weights and trains it with flow matching on fresh clips of
/// the world (a mix of good and bad clips in the proportions of `cfg.world.mix`): every step draws a new
/// batch, so the model sees the world's distribution rather than a finite dataset.
pub fn pretrain<B: Backend>(
    be: &B,
    cfg: &DemoConfig,
    obs: &mut dyn Observer,
) -> Result<(WanModel<B>, PretrainResults)> {
    let start = Instant::now();
    let world = cfg.world.world();
    let wan = cfg.generator.wan(&cfg.world);
    let weights = if cfg.generator.wan_init {
        wan_init(&wan, cfg.seed)
    } else {
        random_weights(&wan, cfg.seed)
    };
    let generator = WanModel::new(be, wan, &weights, None)?;
    let p = &cfg.pretrain;
    let mut trainer = PretrainTrainer::new(
        be,
        generator,
        PretrainConfig {
            shift: p.shift,
            optim: AdamWConfig {
                lr: p.lr,
                warmup_steps: p.warmup,
                ..PretrainConfig::default().optim
            },
            seed: cfg.seed ^ 0x9E37,
            ..PretrainConfig::default()
        },
    )?;
    let mut data = Rng::seed_from_u64(cfg.seed ^ 0xDA7A);
    let shape = video_shape(&world, p.batch);
    let mut losses = Vec::with_capacity(p.steps);
    obs.phase("a. pre-train generator (flow matching)", p.steps as u64);
    for step in 0..p.steps {
        let batch = mixed_clip_batch(&world, &mut data, p.batch, cfg.world.mix);
        let BatchLatents::Clips { latents, .. } = &batch.latents else {
            unreachable!("clip_batch makes clips")
        };
        let text = be.upload(&batch.text);
        let stats = trainer.micro_step(be, shape, &text_cond(&text, world.text_len), latents)?;
        losses.push(stats.loss);
        let recent = &losses[losses.len().saturating_sub(20)..];
        let mean = recent.iter().sum::<f64>() / recent.len() as f64;
        obs.tick(&format!("step {} loss {mean:.4}", step + 1));
    }
    obs.finish();
    let curve = smooth(&losses, 0.05);
    let final_loss = curve.last().map_or(f64::NAN, |c| c.value);
    Ok((
        trainer.into_generator(),
        PretrainResults {
            steps: p.steps,
            clips_seen: p.steps * p.batch,
            loss: curve,
            final_loss,
            seconds: start.elapsed().as_secs_f64(),
        },
    ))
}

/// The sampling plan of the demo (the Wan grid, few steps).
pub fn plan(cfg: &DemoConfig) -> Result<SamplingPlan> {
    let s = &cfg.sampling;
    SamplingPlan::wan(s.steps, s.shift, s.solver)
}

/// Samples every clip of `set` to the end in batches of `batch`; returns `[N, C, F, H, W]`.
pub fn sample_set<B: Backend>(
    be: &B,
    generator: &WanModel<B>,
    world: &WorldConfig,
    plan: &SamplingPlan,
    set: &SampleSet,
    batch: usize,
    obs: &mut dyn Observer,
) -> Result<Vec<f32>> {
    let per: usize = world.shape().iter().product();
    let mut out = Vec::with_capacity(set.noise.len());
    for (k, prompts) in set.prompts.chunks(batch.max(1)).enumerate() {
        let first = k * batch.max(1);
        let noise = &set.noise[first * per..(first + prompts.len()) * per];
        let text = be.upload(&prompt_text(world, prompts));
        let x = sample(
            be,
            generator,
            video_shape(world, prompts.len()),
            &text_cond(&text, world.text_len),
            None,
            plan,
            be.upload(noise),
        )?;
        out.extend(be.download(&x));
        obs.tick(&format!("{} of {} clips", first + prompts.len(), set.len()));
    }
    Ok(out)
}
