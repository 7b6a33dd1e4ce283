//! The reward model learns the synthetic world's motion rule from noisy latents: >= 90% accuracy
//! at t = 400 and better than chance at t = 800 within a test-sized budget; Bradley-Terry pairs
//! train too; a non-finite loss skips the update and leaves every weight and moment unchanged.

use std::path::PathBuf;

use prfl::backend::cpu::Cpu;
use prfl::model::init::random_weights;
use prfl::model::{ModelType, WanConfig};
use prfl::optim::AdamWConfig;
use prfl::reward::dataset::{write_clip, Batch, BatchLatents, Conditioning, Dataset, TokenStates};
use prfl::reward::head::init_head_params;
use prfl::reward::model::{RewardModel, RewardModelConfig};
use prfl::reward::train::{evaluate, RewardLoss, RewardTrainConfig, RewardTrainer};
use prfl::schedule::rng::Rng;
use prfl::synthetic::{generate_dataset, WorldConfig};
use prfl::tensor::DType;
use prfl::testutil::tiny_wan;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("prfl-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn generator_cfg(world: &WorldConfig) -> WanConfig {
    tiny_wan(ModelType::T2V, 32, 2, 3, world.text_dim)
}

fn reward_model(world: &WorldConfig, seed: u64) -> RewardModel<Cpu> {
    let g = generator_cfg(world);
    let cfg = RewardModelConfig {
        blocks: 2,
        trainable_blocks: None,
        heads: 4,
        queries: 1,
        hidden: [64, 32],
    };
    let head = init_head_params(g.dim, cfg.heads, cfg.queries, cfg.hidden, seed);
    RewardModel::from_tensors(&Cpu, g.clone(), &random_weights(&g, seed), &head, cfg, None).unwrap()
}

fn train_cfg(loss: RewardLoss) -> RewardTrainConfig {
    RewardTrainConfig {
        loss,
        optim: AdamWConfig {
            lr: 3e-3,
            ..RewardTrainConfig::default().optim
        },
        head_lr: 3e-3,
        recompute: false,
        seed: 1,
        ..RewardTrainConfig::default()
    }
}

/// The test task: latents (noise plus a per-clip channel signature) whose signature either
/// oscillates in time (`+s, -s, +s, ...` over frames: the temporal pattern) or stays constant.
/// Both have the same energy per token, so only the frames' relation tells them apart.
fn pattern_clip(rng: &mut Rng, with_pattern: bool) -> Vec<f32> {
    let [c, f, h, w] = SHAPE;
    let mut x = vec![0.0f32; c * f * h * w];
    rng.fill_normal(&mut x);
    for ch in 0..c {
        let s = if rng.uniform_f32() < 0.5 { 1.0 } else { -1.0 };
        for fr in 0..f {
            let sign = if with_pattern && fr % 2 == 1 { -s } else { s };
            let base = (ch * f + fr) * h * w;
            x[base..base + h * w]
                .iter_mut()
                .for_each(|v| *v = 0.5 * *v + sign);
        }
    }
    x
}

const SHAPE: [usize; 4] = [16, 5, 8, 8];
const TEXT: (usize, usize) = (4, 32);

fn pattern_batch(rng: &mut Rng, n: usize) -> Batch {
    let (mut latents, mut labels) = (Vec::new(), Vec::new());
    for i in 0..n {
        let with = i % 2 == 0;
        latents.extend(pattern_clip(rng, with));
        labels.push(if with { 1.0 } else { 0.0 });
    }
    let mut text = vec![0.0f32; n * TEXT.0 * TEXT.1];
    Rng::seed_from_u64(5).fill_normal(&mut text[..TEXT.0 * TEXT.1]);
    for i in 1..n {
        text.copy_within(..TEXT.0 * TEXT.1, i * TEXT.0 * TEXT.1);
    }
    Batch {
        indices: (0..n).collect(),
        shape: SHAPE,
        latents: BatchLatents::Clips { latents, labels },
        text,
        text_len: TEXT.0,
        text_dim: TEXT.1,
        i2v: None,
    }
}

#[test]
fn ce_training_learns_a_temporal_pattern_across_timesteps() {
    let world = WorldConfig::default();
    assert_eq!(world.text_dim, TEXT.1);
    // A held-out set on disk, in the dataset format.
    let dir = temp_dir("reward-ce");
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = Rng::seed_from_u64(1234);
    let held_batch = pattern_batch(&mut rng, 64);
    let BatchLatents::Clips { latents, labels } = &held_batch.latents else {
        unreachable!()
    };
    let per: usize = SHAPE.iter().product();
    for (i, label) in labels.iter().enumerate() {
        let cond = Conditioning {
            text: TokenStates {
                data: held_batch.text[..TEXT.0 * TEXT.1].to_vec(),
                len: TEXT.0,
                dim: TEXT.1,
            },
            i2v: None,
        };
        write_clip(
            &dir.join(format!("clip-{i:03}.safetensors")),
            SHAPE,
            &latents[i * per..(i + 1) * per],
            *label,
            &cond,
            DType::BF16,
        )
        .unwrap();
    }
    let held = Dataset::open(&dir).unwrap();
    std::fs::remove_dir_all(&dir).ok();

    let mut trainer =
        RewardTrainer::new(&Cpu, reward_model(&world, 11), train_cfg(RewardLoss::Ce)).unwrap();
    // Fresh clips every step: the model must learn the pattern, it cannot memorise clips.
    let mut rng = Rng::seed_from_u64(99);
    let steps = 450;
    for step in 0..steps {
        let s = trainer
            .micro_step(&Cpu, &pattern_batch(&mut rng, 8))
            .unwrap();
        assert!(s.loss.is_finite() && s.update.is_some());
        if step % 25 == 24 {
            eprintln!(
                "step {step}: loss {:.3} acc {:.3} t {:.0}",
                s.loss, s.accuracy, s.mean_timestep
            );
        }
    }
    let rows = evaluate(&Cpu, &trainer.model, &held, &[400.0, 800.0], 16, 9).unwrap();
    let (a400, a800) = (rows[0].accuracy.unwrap(), rows[1].accuracy.unwrap());
    eprintln!("after {steps} steps: accuracy {a400:.3} at t=400 (auc {:?}), {a800:.3} at t=800 (auc {:?})", rows[0].auc, rows[1].auc);
    assert_eq!(rows[0].clips, 64);
    assert!(a400 >= 0.9, "accuracy at t=400 is {a400}");
    assert!(
        a800 > 0.6,
        "accuracy at t=800 is {a800}: not better than chance"
    );
}

#[test]
fn bt_pairs_train_and_nonfinite_losses_skip_the_update() {
    let world = WorldConfig::default();
    let dir = temp_dir("reward-bt");
    generate_dataset(&dir, &world, 0, 24, 8).unwrap();
    let ds = Dataset::open(&dir).unwrap();
    let mut trainer =
        RewardTrainer::new(&Cpu, reward_model(&world, 12), train_cfg(RewardLoss::Bt)).unwrap();
    let mut first = None;
    let mut last = 0.0;
    for epoch in 0..6 {
        for idx in ds.batches(8, 1, epoch) {
            let s = trainer.micro_step(&Cpu, &ds.stack(&idx).unwrap()).unwrap();
            first.get_or_insert(s.loss);
            last = s.loss;
            assert!(s.update.is_some_and(|u| !u.skipped_nonfinite));
        }
    }
    assert!(
        last < first.unwrap(),
        "BT loss did not fall: {first:?} -> {last}"
    );

    // Poison a batch: the step is reported as skipped and nothing moves.
    let mut batch = ds.stack(&[0, 1]).unwrap();
    if let BatchLatents::Pairs { win, .. } = &mut batch.latents {
        win[3] = f32::NAN;
    }
    let before = trainer.model.trainable_tensors(&Cpu);
    let opt_before = trainer.optimizer().step_count();
    let s = trainer.micro_step(&Cpu, &batch).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        s.nonfinite_loss || s.update.as_ref().unwrap().skipped_nonfinite,
        "{s:?}"
    );
    assert!(s.update.unwrap().skipped_nonfinite);
    assert_eq!(trainer.optimizer().step_count(), opt_before);
    assert_eq!(
        trainer.model.trainable_tensors(&Cpu),
        before,
        "weights moved on a non-finite step"
    );
}

#[test]
fn resuming_a_checkpoint_reproduces_the_next_step_bit_for_bit() {
    let world = WorldConfig::default();
    let cfg = RewardTrainConfig {
        accumulation: 2,
        ..train_cfg(RewardLoss::Ce)
    };
    let mut data_rng = Rng::seed_from_u64(5);
    let batches: Vec<Batch> = (0..8).map(|_| pattern_batch(&mut data_rng, 4)).collect();
    let path = temp_dir("reward-resume").with_extension("safetensors");

    let mut a = RewardTrainer::new(&Cpu, reward_model(&world, 21), cfg.clone()).unwrap();
    for b in &batches[..4] {
        a.micro_step(&Cpu, b).unwrap();
    }
    // Mid-window checkpoints are refused: they could not resume exactly.
    a.micro_step(&Cpu, &batches[4]).unwrap();
    assert!(a.save_checkpoint(&Cpu, &path, 5).is_err());
    a.micro_step(&Cpu, &batches[5]).unwrap();
    a.save_checkpoint(&Cpu, &path, 6).unwrap();
    for b in &batches[6..] {
        a.micro_step(&Cpu, b).unwrap();
    }

    let mut b = RewardTrainer::new(&Cpu, reward_model(&world, 21), cfg).unwrap();
    assert_eq!(b.resume(&Cpu, &path).unwrap(), 6);
    for batch in &batches[6..] {
        b.micro_step(&Cpu, batch).unwrap();
    }
    assert_eq!(
        a.model.trainable_tensors(&Cpu),
        b.model.trainable_tensors(&Cpu),
        "resumed run diverged"
    );
    assert_eq!(a.optimizer().step_count(), b.optimizer().step_count());

    // A different reward-model shape refuses the checkpoint instead of loading garbage.
    let mut other_cfg = RewardModelConfig {
        hidden: [32, 16],
        ..b.model.cfg.clone()
    };
    other_cfg.trainable_blocks = None;
    let g = generator_cfg(&world);
    let head = init_head_params(
        g.dim,
        other_cfg.heads,
        other_cfg.queries,
        other_cfg.hidden,
        1,
    );
    let other = RewardModel::from_tensors(
        &Cpu,
        g.clone(),
        &random_weights(&g, 21),
        &head,
        other_cfg,
        None,
    )
    .unwrap();
    let mut c = RewardTrainer::new(&Cpu, other, train_cfg(RewardLoss::Ce)).unwrap();
    let err = c.resume(&Cpu, &path).unwrap_err().to_string();
    std::fs::remove_file(&path).ok();
    assert!(err.contains("written for reward model"), "{err}");
}

#[test]
fn cutting_a_reward_model_reads_only_the_kept_blocks() {
    use prfl::model::checkpoint::{save_checkpoint, Checkpoint};
    use prfl::model::names::Layout;
    let world = WorldConfig::default();
    let g = tiny_wan(ModelType::T2V, 32, 2, 6, world.text_dim);
    let dir = temp_dir("reward-cut");
    save_checkpoint(&random_weights(&g, 1), &g, Layout::Original, &dir, None).unwrap();
    let ckpt = Checkpoint::open(&dir).unwrap();
    let cfg = RewardModelConfig {
        blocks: 2,
        heads: 2,
        hidden: [16, 8],
        ..RewardModelConfig::default()
    };
    let model = RewardModel::<Cpu>::from_generator(&Cpu, &ckpt, cfg, None, 0).unwrap();
    let (read, total) = (ckpt.bytes_read(), ckpt.total_bytes());
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(model.backbone.num_blocks(), 2);
    assert!(!model.backbone.has_head());
    // 2 of 6 blocks (plus the small embeddings) is well under half of the file.
    assert!(read * 2 < total, "read {read} of {total} bytes");
}
