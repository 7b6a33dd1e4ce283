//! Phase b: the PAVRM cut from the pre-trained generator (its first blocks and embeddings, a
//! fresh pooling head), trained with BCE on fresh labelled clips noised to random training
//! levels, then evaluated per timestep on held-out clips.

use std::collections::BTreeMap;
use std::time::Instant;

use super::config::DemoConfig;
use super::generator::{text_cond, video_shape};
use super::observer::Observer;
use super::results::{smooth, AccuracyRow, RewardResults};
use super::stats::Proportion;
use crate::backend::Backend;
use crate::model::wan::WanModel;
use crate::reward::dataset::{Batch, BatchLatents};
use crate::reward::head::init_head_params;
use crate::reward::metrics::{roc_auc, THRESHOLD};
use crate::reward::model::{RewardModel, RewardModelConfig};
use crate::reward::train::{RewardLoss, RewardTrainConfig, RewardTrainer};
use crate::schedule::Rng;
use crate::synthetic::{clip_batch, WorldConfig};
use crate::Result;

/// Cuts the reward model from `generator` (which stays untouched) and trains it.
pub fn train_reward<B: Backend>(
    be: &B,
    cfg: &DemoConfig,
    generator: &WanModel<B>,
    obs: &mut dyn Observer,
) -> Result<(RewardModel<B>, RewardResults)> {
    let start = Instant::now();
    let world = cfg.world.world();
    let r = &cfg.reward;
    let ps = &generator.params;
    let tensors: BTreeMap<_, _> = (0..ps.len())
        .map(|i| (ps.name(i).to_string(), ps.to_host(be, i)))
        .collect();
    let model_cfg = RewardModelConfig {
        blocks: r.blocks,
        trainable_blocks: None,
        heads: r.pool_heads,
        queries: 1,
        hidden: r.hidden,
    };
    let head = init_head_params(
        generator.cfg.dim,
        r.pool_heads,
        1,
        r.hidden,
        cfg.seed ^ 0x4EAD,
    );
    let model =
        RewardModel::from_tensors(be, generator.cfg.clone(), &tensors, &head, model_cfg, None)?;
    let mut trainer = RewardTrainer::new(
        be,
        model,
        RewardTrainConfig {
            loss: RewardLoss::Ce,
            shift: r.shift,
            backbone_lr: r.backbone_lr,
            head_lr: r.head_lr,
            recompute: false,
            seed: cfg.seed ^ 0x5C0E,
            ..RewardTrainConfig::default()
        },
    )?;
    let mut data = Rng::seed_from_u64(cfg.seed ^ 0x1ABE);
    let mut losses = Vec::with_capacity(r.steps);
    let mut accs = Vec::with_capacity(r.steps);
    obs.phase("b. train reward model (PAVRM)", r.steps as u64);
    for step in 0..r.steps {
        let batch = clip_batch(&world, &mut data, r.batch, 0.5);
        let stats = trainer.micro_step(be, &batch)?;
        losses.push(stats.loss);
        accs.push(stats.accuracy);
        let n = accs.len().min(20);
        let acc = accs[accs.len() - n..].iter().sum::<f64>() / n as f64;
        obs.tick(&format!(
            "step {} bce {:.3} train acc {acc:.2}",
            step + 1,
            stats.loss
        ));
    }
    obs.finish();
    let model = trainer.model;
    // A held-out set from its own stream, half good.
    let held_out = clip_batch(
        &world,
        &mut Rng::seed_from_u64(cfg.seed ^ 0xE7A1),
        r.eval_clips,
        0.5,
    );
    let accuracy = r
        .eval_timesteps
        .iter()
        .map(|&t| accuracy_at(be, &model, &world, &held_out, t, cfg.seed ^ 0x0E7A))
        .collect::<Result<Vec<_>>>()?;
    Ok((
        model,
        RewardResults {
            steps: r.steps,
            clips_seen: r.steps * r.batch,
            loss: smooth(&losses, 0.05),
            accuracy,
            seconds: start.elapsed().as_secs_f64(),
        },
    ))
}

/// Accuracy and AUC on `batch` noised to timestep `t` (`sigma = t / 1000`), with noise from
/// `seed` (the same at every timestep, so the rows differ only in the level).
pub fn accuracy_at<B: Backend>(
    be: &B,
    model: &RewardModel<B>,
    world: &WorldConfig,
    batch: &Batch,
    t: f32,
    seed: u64,
) -> Result<AccuracyRow> {
    let BatchLatents::Clips { latents, labels } = &batch.latents else {
        unreachable!("clip_batch makes clips")
    };
    let sigma = t / 1000.0;
    let mut eps = vec![0.0f32; latents.len()];
    Rng::seed_from_u64(seed).fill_normal(&mut eps);
    let x: Vec<f32> = latents
        .iter()
        .zip(&eps)
        .map(|(&a, &e)| (1.0 - sigma) * a + sigma * e)
        .collect();
    let per: usize = world.shape().iter().product();
    let per_text = world.text_len * world.text_dim;
    let mut scores = Vec::with_capacity(labels.len());
    const CHUNK: usize = 16;
    for (k, xs) in x.chunks(CHUNK * per).enumerate() {
        let n = xs.len() / per;
        let text = be.upload(&batch.text[k * CHUNK * per_text..(k * CHUNK + n) * per_text]);
        let xb = be.upload(xs);
        let ts = vec![t; n];
        let cond = text_cond(&text, world.text_len);
        scores.extend(model.score(be, &cond.inputs(video_shape(world, n), &xb, &ts))?);
    }
    let correct = scores
        .iter()
        .zip(labels)
        .filter(|(&s, &l)| (s >= THRESHOLD) == (l >= 0.5))
        .count();
    Ok(AccuracyRow {
        timestep: t,
        accuracy: Proportion::new(correct, labels.len()),
        auc: roc_auc(&scores, labels),
    })
}
