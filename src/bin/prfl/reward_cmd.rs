//! `prfl train-reward`, `prfl eval-reward`, `prfl score`: the reward model from the command line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use prfl::backend::device::Device;
use prfl::backend::Backend;
use prfl::interop::reference_dataset::open_data;
use prfl::model::checkpoint::Checkpoint;
use prfl::model::wan::{Inputs, VideoShape};
use prfl::reward::dataset::SampleKind;
use prfl::reward::model::{RewardModel, RewardModelConfig};
use prfl::reward::train::{
    evaluate, EvalRow, RewardLoss, RewardTrainConfig, RewardTrainer, EVAL_TIMESTEPS,
};
use prfl::safetensors::{read_safetensors, write_safetensors};
use prfl::tensor::{DType, HostTensor};
use serde::Deserialize;

use crate::config_file::{err, read_toml, rel};
use crate::device_args::DeviceArgs;
use crate::progress::Progress;

/// `train-reward` configuration (TOML). Paths are relative to the config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainRewardConfig {
    /// The pre-trained generator the reward model is cut from.
    pub generator: PathBuf,
    /// Dataset directory (see `prfl::reward::dataset`).
    pub data: PathBuf,
    /// Output directory: `checkpoint.safetensors` (latest), `eval.json`.
    pub out: PathBuf,
    #[serde(default = "default_holdout")]
    pub holdout: f64,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    pub steps: u64,
    #[serde(default)]
    pub eval_every: Option<u64>,
    #[serde(default)]
    pub checkpoint_every: Option<u64>,
    #[serde(default)]
    pub eval_timesteps: Option<Vec<f32>>,
    /// Continue from `out/checkpoint.safetensors` if it exists.
    #[serde(default)]
    pub resume: bool,
    /// Storage dtype of the frozen matrix weights ("f32", "bf16", "f16"); default: as stored.
    #[serde(default)]
    pub weight_dtype: Option<String>,
    #[serde(default)]
    pub model: RewardModelConfig,
    #[serde(default)]
    pub train: RewardTrainConfig,
}

fn default_holdout() -> f64 {
    0.1
}
fn default_batch() -> usize {
    4
}

pub fn print_eval(rows: &[EvalRow]) {
    println!(
        "{:>9} {:>6} {:>9} {:>7} {:>6} {:>9}",
        "timestep", "clips", "accuracy", "auc", "pairs", "pair acc"
    );
    let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
    for r in rows {
        println!(
            "{:>9} {:>6} {:>9} {:>7} {:>6} {:>9}",
            r.timestep,
            r.clips,
            f(r.accuracy),
            f(r.auc),
            r.pairs,
            f(r.pair_accuracy)
        );
    }
}

pub fn train_reward(config: &Path, device: &DeviceArgs) -> Result<(), String> {
    let c: TrainRewardConfig = read_toml(config)?;
    let (gen_path, data, out) = (
        rel(config, &c.generator),
        rel(config, &c.data),
        rel(config, &c.out),
    );
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let dtype = c
        .weight_dtype
        .as_deref()
        .map(DType::parse)
        .transpose()
        .map_err(err)?;
    let be = device.open()?;
    let gen = Checkpoint::open(&gen_path).map_err(err)?;
    let model = RewardModel::from_generator(&be, &gen, c.model.clone(), dtype, c.train.seed)
        .map_err(err)?;
    println!(
        "reward model: {} of {} generator blocks (read {:.1} MiB of {:.1} MiB), loss {:?}",
        c.model.blocks,
        gen.config().num_layers,
        gen.bytes_read() as f64 / 1048576.0,
        gen.total_bytes() as f64 / 1048576.0,
        c.train.loss
    );
    let (train, held) = open_data(&data, gen.config().is_i2v(), c.train.seed)
        .map_err(err)?
        .split(c.holdout, c.train.seed);
    let want = match c.train.loss {
        RewardLoss::Ce => SampleKind::Clip,
        RewardLoss::Bt => SampleKind::Pair,
    };
    println!(
        "data: {} training samples, {} held out",
        train.len(),
        held.len()
    );
    let mut trainer = RewardTrainer::new(&be, model, c.train.clone()).map_err(err)?;
    let ckpt_path = out.join("checkpoint.safetensors");
    let mut iteration = 0;
    if c.resume && ckpt_path.exists() {
        iteration = trainer.resume(&be, &ckpt_path).map_err(err)?;
        println!("resumed from {} at step {iteration}", ckpt_path.display());
    }
    let batches_for = |epoch: u64| -> Vec<Vec<usize>> {
        train
            .batches(c.batch_size, c.train.seed, epoch)
            .into_iter()
            .filter(|b| train.sample(b[0]).kind() == want)
            .collect()
    };
    let per_epoch = batches_for(0).len() as u64;
    if per_epoch == 0 {
        return Err(format!(
            "the training split holds no samples for the `{:?}` loss",
            c.train.loss
        ));
    }
    let timesteps = c.eval_timesteps.clone().unwrap_or(EVAL_TIMESTEPS.to_vec());
    let mut progress = Progress::new("train-reward", c.steps);
    progress.set(iteration);
    let start = Instant::now();
    while iteration < c.steps {
        let (epoch, pos) = (iteration / per_epoch, (iteration % per_epoch) as usize);
        let batch = train.stack(&batches_for(epoch)[pos]).map_err(err)?;
        let s = trainer.micro_step(&be, &batch).map_err(err)?;
        iteration += 1;
        let skipped = s.update.as_ref().is_some_and(|u| u.skipped_nonfinite);
        progress.tick(&format!(
            "loss {:.4} acc {:.2} t {:.0} {:.2}s/step{}",
            s.loss,
            s.accuracy,
            s.mean_timestep,
            s.seconds,
            if skipped {
                " (non-finite: update skipped)"
            } else {
                ""
            }
        ));
        let boundary = trainer.pending_micro_batches() == 0;
        if boundary
            && (c.checkpoint_every.is_some_and(|k| iteration % k == 0) || iteration == c.steps)
        {
            trainer
                .save_checkpoint(&be, &ckpt_path, iteration)
                .map_err(err)?;
        }
        if c.eval_every.is_some_and(|k| iteration % k == 0) && !held.is_empty() {
            progress.clear();
            print_eval(
                &evaluate(
                    &be,
                    &trainer.model,
                    &held,
                    &timesteps,
                    c.batch_size,
                    c.train.seed,
                )
                .map_err(err)?,
            );
        }
    }
    progress.finish();
    println!(
        "{iteration} steps in {:.1} s; checkpoint {}",
        start.elapsed().as_secs_f64(),
        ckpt_path.display()
    );
    if !held.is_empty() {
        let rows = evaluate(
            &be,
            &trainer.model,
            &held,
            &timesteps,
            c.batch_size,
            c.train.seed,
        )
        .map_err(err)?;
        print_eval(&rows);
        let json = serde_json::to_string_pretty(&rows).map_err(err)?;
        std::fs::write(out.join("eval.json"), json)
            .map_err(|e| format!("{}: {e}", out.display()))?;
    }
    Ok(())
}

pub fn eval_reward(
    generator: &Path,
    reward: &Path,
    data: &Path,
    timesteps: &[f32],
    batch_size: usize,
    device: &DeviceArgs,
) -> Result<(), String> {
    let be = device.open()?;
    let gen = Checkpoint::open(generator).map_err(err)?;
    let model = RewardModel::load(&be, &gen, reward).map_err(err)?;
    let ds = open_data(data, gen.config().is_i2v(), 0).map_err(err)?;
    let rows = evaluate(&be, &model, &ds, timesteps, batch_size, 0).map_err(err)?;
    print_eval(&rows);
    Ok(())
}

/// Scores the latents of a safetensors file: `latent` `[16,F,H,W]` or `[B,16,F,H,W]`, `text`
/// `[L,D]` or `[B,L,D]`, optional `image` and `y`; `--timestep` says how noisy they are.
pub fn score(
    generator: &Path,
    reward: &Path,
    input: &Path,
    timestep: f32,
    out: Option<&Path>,
    device: &DeviceArgs,
) -> Result<(), String> {
    let be = device.open()?;
    let gen = Checkpoint::open(generator).map_err(err)?;
    let model = RewardModel::load(&be, &gen, reward).map_err(err)?;
    let t = read_safetensors(input).map_err(err)?;
    let get = |k: &str| {
        t.get(k)
            .ok_or_else(|| format!("{}: no `{k}` tensor", input.display()))
    };
    let latent = get("latent")?;
    let text = get("text")?;
    let s = if latent.shape.len() == 4 {
        [&[1][..], &latent.shape[..]].concat()
    } else {
        latent.shape.clone()
    };
    if s.len() != 5 {
        return Err(format!(
            "`latent` has shape {:?}; expected [16,F,H,W] or [B,16,F,H,W]",
            latent.shape
        ));
    }
    let shape = VideoShape {
        batch: s[0],
        frames: s[2],
        height: s[3],
        width: s[4],
    };
    let text_len = text.shape[text.shape.len() - 2];
    let x = be.upload(&latent.to_f32());
    let ctx = be.upload(&text.to_f32());
    let y = t.get("y").map(|y| be.upload(&y.to_f32()));
    let clip = t.get("image").map(|c| be.upload(&c.to_f32()));
    let image_len = t.get("image").map_or(0, |c| c.shape[c.shape.len() - 2]);
    let ts = vec![timestep; shape.batch];
    let inp = Inputs::<Device> {
        shape,
        x: &x,
        t: &ts,
        context: &ctx,
        text_len,
        y: y.as_ref(),
        clip: clip.as_ref(),
        image_len,
    };
    let scores = model.score(&be, &inp).map_err(err)?;
    println!(
        "{}",
        serde_json::json!({ "timestep": timestep, "scores": scores })
    );
    if let Some(out) = out {
        let mut m = BTreeMap::new();
        m.insert(
            "scores".to_string(),
            HostTensor::from_f32(vec![scores.len()], scores).map_err(err)?,
        );
        write_safetensors(out, m.iter().map(|(k, v)| (k.as_str(), v)), None).map_err(err)?;
    }
    Ok(())
}
