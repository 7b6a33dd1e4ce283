//! Phase b: the PAVRM cut from the pre-trained generator (its first blocks and embeddings, a
//! fresh pooling head), trained in two stages on fresh clips of the world noised to random
//! training levels, then evaluated per timestep on held-out clips and pairs.
//!
//! 1. Bradley-Terry on preference pairs (method.md section 3, `bt`): the two clips of a pair are
//!    the same scene moving smoothly and not, noised with the same noise to the same level, so
//!    the only difference the model can learn from is the motion. (Plain BCE on independent
//!    labelled clips did not learn this world's rule in the demo's budget: its loss stayed at
//!    ln 2. Every nuisance of a clip, and its own noise, drowns the motion signal.)
//! 2. Calibration: BCE on labelled clips with the backbone frozen (head only). A Bradley-Terry
//!    logit is only defined up to a shift, and that shift drifts with the timestep; PRFL's loss
//!    `relu(2 - sigmoid(logit))` saturates where the shift is large, and "accuracy at 0.5" needs
//!    0.5 to mean undecided. A few hundred head-only steps fix the scale and offset.

use std::collections::BTreeMap;
use std::time::Instant;

use super::config::DemoConfig;
use super::generator::{text_cond, video_shape};
use super::observer::Observer;
use super::results::{smooth, AccuracyRow, RewardResults};
use super::stats::Proportion;
use crate::backend::Backend;
use crate::model::wan::WanModel;
use crate::optim::AdamWConfig;
use crate::reward::dataset::{Batch, BatchLatents};
use crate::reward::head::init_head_params;
use crate::reward::metrics::{roc_auc, THRESHOLD};
use crate::reward::model::{RewardModel, RewardModelConfig};
use crate::reward::train::{RewardLoss, RewardTrainConfig, RewardTrainer};
use crate::schedule::Rng;
use crate::synthetic::{clip_batch, pair_batch, WorldConfig};
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
    let train_cfg = RewardTrainConfig {
        loss: RewardLoss::Bt,
        shift: r.shift,
        optim: AdamWConfig {
            lr: r.backbone_lr,
            ..RewardTrainConfig::default().optim
        },
        head_lr: r.head_lr,
        recompute: false,
        seed: cfg.seed ^ 0x5C0E,
        ..RewardTrainConfig::default()
    };
    let mut data = Rng::seed_from_u64(cfg.seed ^ 0x1ABE);
    let mut trainer = RewardTrainer::new(be, model, train_cfg.clone())?;
    let mut losses = Vec::with_capacity(r.steps + r.calibration_steps);
    obs.phase("b. train reward model (PAVRM, pairs)", r.steps as u64);
    run_steps(be, &mut trainer, r.steps, &mut losses, obs, || {
        let batch = pair_batch(&world, &mut data, r.batch);
        let batch = with_faint_pairs(batch, r.faint, &mut data);
        with_random_gain(batch, r.gain, r.offset, &mut data)
    })?;
    obs.finish();

    let mut model = trainer.model;
    model.cfg.trainable_blocks = Some(Vec::new());
    let mut trainer = RewardTrainer::new(
        be,
        model,
        RewardTrainConfig {
            loss: RewardLoss::Ce,
            head_lr: r.calibration_lr,
            seed: cfg.seed ^ 0xCA1B,
            ..train_cfg
        },
    )?;
    obs.phase(
        "b. calibrate reward (head only)",
        r.calibration_steps as u64,
    );
    run_steps(
        be,
        &mut trainer,
        r.calibration_steps,
        &mut losses,
        obs,
        || {
            with_faint_clips(
                clip_batch(&world, &mut data, r.batch, 0.5),
                r.faint,
                &mut data,
            )
        },
    )?;
    obs.finish();
    let model = trainer.model;

    // Held-out clips (half good) and pairs, each from its own stream.
    let clips = clip_batch(
        &world,
        &mut Rng::seed_from_u64(cfg.seed ^ 0xE7A1),
        r.eval_clips,
        0.5,
    );
    let pairs = pair_batch(
        &world,
        &mut Rng::seed_from_u64(cfg.seed ^ 0xE7A2),
        r.eval_clips / 2,
    );
    let accuracy = r
        .eval_timesteps
        .iter()
        .map(|&t| accuracy_at(be, &model, &world, &clips, &pairs, t, cfg.seed ^ 0x0E7A))
        .collect::<Result<Vec<_>>>()?;
    Ok((
        model,
        RewardResults {
            steps: r.steps,
            calibration_steps: r.calibration_steps,
            clips_seen: (2 * r.steps + r.calibration_steps) * r.batch,
            loss: smooth(&losses, 0.05),
            accuracy,
            seconds: start.elapsed().as_secs_f64(),
        },
    ))
}

/// Replaces a fraction `faint` of the pairs by fidelity pairs: a clip (the pair's winner or
/// loser) against the same clip at a random amplitude in [0.2, 0.8], the full one preferred.
fn with_faint_pairs(mut batch: Batch, faint: f32, rng: &mut Rng) -> Batch {
    let per: usize = batch.shape.iter().product();
    let BatchLatents::Pairs { win, lose } = &mut batch.latents else {
        unreachable!("pair_batch makes pairs")
    };
    for i in 0..win.len() / per {
        if rng.uniform_f32() >= faint {
            continue;
        }
        let r = i * per..(i + 1) * per;
        if rng.uniform_f32() < 0.5 {
            win[r.clone()].copy_from_slice(&lose[r.clone()]);
        }
        let a = 0.2 + 0.6 * rng.uniform_f32();
        for (l, &w) in lose[r.clone()].iter_mut().zip(&win[r]) {
            *l = a * w;
        }
    }
    batch
}

/// Multiplies every sample (both clips of a pair alike) by a random gain in `gain` and adds a
/// random per-channel offset of standard deviation `offset`: neither changes the motion, so the
/// reward learns to ignore them (otherwise PRFL inflates or shifts its samples to fool it).
fn with_random_gain(mut batch: Batch, gain: (f32, f32), offset: f32, rng: &mut Rng) -> Batch {
    let [c, f, h, w] = batch.shape;
    let plane = f * h * w;
    let transform = |rng: &mut Rng| {
        let a = gain.0 + (gain.1 - gain.0) * rng.uniform_f32();
        let b: Vec<f32> = (0..c).map(|_| offset * rng.normal_f32()).collect();
        (a, b)
    };
    let apply = |x: &mut [f32], (a, b): &(f32, Vec<f32>)| {
        for (chan, &bc) in x.chunks_exact_mut(plane).zip(b) {
            chan.iter_mut().for_each(|v| *v = a * *v + bc);
        }
    };
    let per = c * plane;
    match &mut batch.latents {
        BatchLatents::Pairs { win, lose } => {
            for (xw, xl) in win.chunks_exact_mut(per).zip(lose.chunks_exact_mut(per)) {
                let t = transform(rng);
                apply(xw, &t);
                apply(xl, &t);
            }
        }
        BatchLatents::Clips { latents, .. } => {
            for x in latents.chunks_exact_mut(per) {
                let t = transform(rng);
                apply(x, &t);
            }
        }
    }
    batch
}

/// Turns a fraction `faint` of the clips into bad ones by scaling them to a random amplitude in
/// [0.2, 0.8].
fn with_faint_clips(mut batch: Batch, faint: f32, rng: &mut Rng) -> Batch {
    let per: usize = batch.shape.iter().product();
    let BatchLatents::Clips { latents, labels } = &mut batch.latents else {
        unreachable!("clip_batch makes clips")
    };
    for (x, label) in latents.chunks_exact_mut(per).zip(labels.iter_mut()) {
        if rng.uniform_f32() < faint {
            let a = 0.2 + 0.6 * rng.uniform_f32();
            x.iter_mut().for_each(|v| *v *= a);
            *label = 0.0;
        }
    }
    batch
}

/// `steps` micro-steps on batches from `next`, losses appended to `losses`.
fn run_steps<B: Backend>(
    be: &B,
    trainer: &mut RewardTrainer<B>,
    steps: usize,
    losses: &mut Vec<f64>,
    obs: &mut dyn Observer,
    mut next: impl FnMut() -> Batch,
) -> Result<()> {
    let mut accs = Vec::with_capacity(steps);
    for step in 0..steps {
        let stats = trainer.micro_step(be, &next())?;
        losses.push(stats.loss);
        accs.push(stats.accuracy);
        let n = accs.len().min(20);
        let acc = accs[accs.len() - n..].iter().sum::<f64>() / n as f64;
        obs.tick(&format!(
            "step {} loss {:.3} train acc {acc:.2}",
            step + 1,
            stats.loss
        ));
    }
    Ok(())
}

/// At timestep `t` (`sigma = t / 1000`): accuracy (threshold 0.5) and AUC on the labelled
/// `clips`, and the fraction of `pairs` ranked right (both clips noised alike, as in training).
/// Noise from `seed`, the same at every timestep, so the rows differ only in the level.
pub fn accuracy_at<B: Backend>(
    be: &B,
    model: &RewardModel<B>,
    world: &WorldConfig,
    clips: &Batch,
    pairs: &Batch,
    t: f32,
    seed: u64,
) -> Result<AccuracyRow> {
    let (BatchLatents::Clips { latents, labels }, BatchLatents::Pairs { win, lose }) =
        (&clips.latents, &pairs.latents)
    else {
        unreachable!("clip_batch makes clips, pair_batch pairs")
    };
    let sigma = t / 1000.0;
    let mut rng = Rng::seed_from_u64(seed);
    let mut noised = |x0: &[f32], eps: Option<&[f32]>| -> (Vec<f32>, Vec<f32>) {
        let eps = eps.map_or_else(
            || {
                let mut e = vec![0.0f32; x0.len()];
                rng.fill_normal(&mut e);
                e
            },
            <[f32]>::to_vec,
        );
        let x = x0
            .iter()
            .zip(&eps)
            .map(|(&a, &e)| (1.0 - sigma) * a + sigma * e)
            .collect();
        (x, eps)
    };
    let (x, _) = noised(latents, None);
    let scores = score_all(be, model, world, &x, &clips.text, t)?;
    let (xw, eps) = noised(win, None);
    let (xl, _) = noised(lose, Some(&eps));
    let sw = score_all(be, model, world, &xw, &pairs.text, t)?;
    let sl = score_all(be, model, world, &xl, &pairs.text, t)?;
    let correct = scores
        .iter()
        .zip(labels)
        .filter(|(&s, &l)| (s >= THRESHOLD) == (l >= 0.5))
        .count();
    let ranked = sw.iter().zip(&sl).filter(|(w, l)| w > l).count();
    Ok(AccuracyRow {
        timestep: t,
        accuracy: Proportion::new(correct, labels.len()),
        auc: roc_auc(&scores, labels),
        pair_accuracy: Proportion::new(ranked, sw.len()),
    })
}

/// Reward scores of latents `[N, C, F, H, W]` with their text, in chunks, at timestep `t`.
pub fn score_all<B: Backend>(
    be: &B,
    model: &RewardModel<B>,
    world: &WorldConfig,
    x: &[f32],
    text: &[f32],
    t: f32,
) -> Result<Vec<f32>> {
    const CHUNK: usize = 16;
    let per: usize = world.shape().iter().product();
    let per_text = world.text_len * world.text_dim;
    let mut scores = Vec::with_capacity(x.len() / per);
    for (k, xs) in x.chunks(CHUNK * per).enumerate() {
        let n = xs.len() / per;
        let tb = be.upload(&text[k * CHUNK * per_text..][..n * per_text]);
        let xb = be.upload(xs);
        let ts = vec![t; n];
        let cond = text_cond(&tb, world.text_len);
        scores.extend(model.score(be, &cond.inputs(video_shape(world, n), &xb, &ts))?);
    }
    Ok(scores)
}
