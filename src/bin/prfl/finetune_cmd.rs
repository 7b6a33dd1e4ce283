//! `prfl finetune` (PRFL with a trained reward model; full or LoRA) and `prfl sample`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use prfl::backend::device::Device;
use prfl::backend::Backend;
use prfl::finetune::prfl::{PrflTrainConfig, PrflTrainer};
use prfl::finetune::sample::{sample, Cond, Guidance, SamplingPlan};
use prfl::interop::reference_dataset::open_data;
use prfl::model::checkpoint::{save_checkpoint, Checkpoint};
use prfl::model::lora::{init_lora, load_peft, merge_lora, save_peft};
use prfl::model::names::Layout;
use prfl::model::wan::{VideoShape, WanModel};
use prfl::reward::dataset::{BatchLatents, SampleKind};
use prfl::reward::model::RewardModel;
use prfl::safetensors::{read_safetensors, write_safetensors};
use prfl::schedule::rng::Rng;
use prfl::schedule::SolverKind;
use prfl::tensor::{DType, HostTensor};
use serde::Deserialize;

use crate::config_file::{err, read_toml, rel};
use crate::device_args::DeviceArgs;
use crate::progress::Progress;

/// `finetune` configuration (TOML). Paths are relative to the config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneConfig {
    /// The generator to fine-tune.
    pub generator: PathBuf,
    /// A reward training checkpoint (`prfl train-reward`'s `checkpoint.safetensors`).
    pub reward: PathBuf,
    /// The generator the reward model was cut from (default: `generator`).
    #[serde(default)]
    pub reward_generator: Option<PathBuf>,
    /// Dataset directory: prompts, and clean latents for the interleaved flow-matching step
    /// (labelled-good clips and pair winners).
    pub data: PathBuf,
    /// Output: `checkpoint.safetensors`, and at the end `lora.safetensors` + `merged/` (LoRA) or
    /// `generator/` (full fine-tuning), in the original Wan2.1 layout.
    pub out: PathBuf,
    #[serde(default = "one")]
    pub batch_size: usize,
    pub steps: u64,
    #[serde(default)]
    pub checkpoint_every: Option<u64>,
    #[serde(default)]
    pub resume: bool,
    /// Storage dtype of frozen matrix weights ("bf16" keeps a LoRA base in bf16).
    #[serde(default)]
    pub weight_dtype: Option<String>,
    #[serde(default)]
    pub prfl: PrflTrainConfig,
}

fn one() -> usize {
    1
}

pub fn finetune(config: &Path, device: &DeviceArgs) -> Result<(), String> {
    let c: FinetuneConfig = read_toml(config)?;
    let out = rel(config, &c.out);
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let dtype = c
        .weight_dtype
        .as_deref()
        .map(DType::parse)
        .transpose()
        .map_err(err)?;
    let be = device.open()?;
    let gen_ckpt = Checkpoint::open(&rel(config, &c.generator)).map_err(err)?;
    let base = gen_ckpt.load_all().map_err(err)?;
    let mut generator = WanModel::new(&be, gen_ckpt.config().clone(), &base, dtype).map_err(err)?;
    if let Some(lora) = &c.prfl.lora {
        let adapters = init_lora(gen_ckpt.config(), lora, c.prfl.seed).map_err(err)?;
        generator.attach_lora(&be, lora, &adapters).map_err(err)?;
    }
    let reward_gen = Checkpoint::open(&rel(
        config,
        c.reward_generator.as_ref().unwrap_or(&c.generator),
    ))
    .map_err(err)?;
    let reward = RewardModel::load(&be, &reward_gen, &rel(config, &c.reward)).map_err(err)?;
    let mut trainer = PrflTrainer::new(&be, generator, reward, c.prfl.clone()).map_err(err)?;
    let ckpt_path = out.join("checkpoint.safetensors");
    let mut iteration = 0;
    if c.resume && ckpt_path.exists() {
        iteration = trainer.resume(&be, &ckpt_path).map_err(err)?;
        println!("resumed from {} at step {iteration}", ckpt_path.display());
    }
    let ds = open_data(
        &rel(config, &c.data),
        gen_ckpt.config().is_i2v(),
        c.prfl.seed,
    )
    .map_err(err)?;
    let per_epoch = ds.batches(c.batch_size, c.prfl.seed, 0).len() as u64;
    if per_epoch == 0 {
        return Err("the dataset is empty".into());
    }
    println!(
        "PRFL: {} mode, {} steps of {:?} on a {}-step grid, reward blocks {}",
        if c.prfl.lora.is_some() {
            "LoRA"
        } else {
            "full fine-tuning"
        },
        c.steps,
        c.prfl.solver,
        c.prfl.steps,
        trainer.reward.cfg.blocks
    );
    let mut progress = Progress::new("finetune", c.steps);
    progress.set(iteration);
    let start = Instant::now();
    while iteration < c.steps {
        let (epoch, pos) = (iteration / per_epoch, (iteration % per_epoch) as usize);
        let batch = ds
            .stack(&ds.batches(c.batch_size, c.prfl.seed, epoch)[pos])
            .map_err(err)?;
        // Clean latents for the SFT step: labelled-good clips and pair winners.
        let x0: Option<Vec<f32>> = match (&batch.latents, batch.kind()) {
            (BatchLatents::Clips { latents, labels }, SampleKind::Clip)
                if labels.iter().all(|&l| l == 1.0) =>
            {
                Some(latents.clone())
            }
            (BatchLatents::Pairs { win, .. }, SampleKind::Pair) => Some(win.clone()),
            _ => None,
        };
        let [_, f, h, w] = batch.shape;
        let shape = VideoShape {
            batch: batch.size(),
            frames: f,
            height: h,
            width: w,
        };
        let y = batch.i2v.as_ref().map(|i| be.upload(&i.y));
        let clip = batch.i2v.as_ref().map(|i| be.upload(&i.image));
        let text = be.upload(&batch.text);
        let cond = Cond::<Device> {
            text: &text,
            text_len: batch.text_len,
            y: y.as_ref(),
            clip: clip.as_ref(),
            image_len: batch.i2v.as_ref().map_or(0, |i| i.image_len),
        };
        let s = trainer
            .micro_step(&be, shape, &cond, x0.as_deref())
            .map_err(err)?;
        iteration += 1;
        progress.tick(&format!(
            "reward {:.3} loss {:.4}{} m {} {:.2}s/step",
            s.reward,
            s.prfl_loss,
            s.sft_loss.map_or(String::new(), |l| format!(" sft {l:.4}")),
            s.mid_step,
            s.seconds
        ));
        if c.checkpoint_every.is_some_and(|k| iteration % k == 0) || iteration == c.steps {
            trainer
                .save_checkpoint(&be, &ckpt_path, iteration)
                .map_err(err)?;
        }
    }
    progress.finish();
    println!(
        "{iteration} steps in {:.1} s",
        start.elapsed().as_secs_f64()
    );

    // Export.
    let trained = trainer.trainable_tensors(&be);
    match &c.prfl.lora {
        Some(lora) => {
            save_peft(&out.join("lora.safetensors"), &trained, lora).map_err(err)?;
            let merged = merge_lora(&base, &trained, lora).map_err(err)?;
            save_checkpoint(
                &merged,
                gen_ckpt.config(),
                Layout::Original,
                &out.join("merged"),
                None,
            )
            .map_err(err)?;
            println!(
                "wrote {} and {}",
                out.join("lora.safetensors").display(),
                out.join("merged").display()
            );
        }
        None => {
            let mut full: BTreeMap<String, HostTensor> = base;
            full.extend(trained);
            save_checkpoint(
                &full,
                gen_ckpt.config(),
                Layout::Original,
                &out.join("generator"),
                None,
            )
            .map_err(err)?;
            println!("wrote {}", out.join("generator").display());
        }
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct SampleArgs {
    /// Generator checkpoint.
    #[arg(long)]
    generator: PathBuf,
    /// A LoRA file written by `prfl finetune` (peft names, rank/alpha in its metadata).
    #[arg(long)]
    lora: Option<PathBuf>,
    /// Safetensors with `text` `[L, text_dim]` (the prompt's encoder states).
    #[arg(long)]
    text: PathBuf,
    /// Safetensors with `text` for the negative prompt (classifier-free guidance).
    #[arg(long)]
    negative: Option<PathBuf>,
    #[arg(long, default_value_t = 5.0)]
    guidance: f32,
    #[arg(long, default_value_t = 21)]
    frames: usize,
    #[arg(long, default_value_t = 60)]
    height: usize,
    #[arg(long, default_value_t = 104)]
    width: usize,
    /// Clips to sample (one batch).
    #[arg(long, default_value_t = 1)]
    count: usize,
    #[arg(long, default_value_t = 40)]
    steps: usize,
    #[arg(long, default_value_t = 5.0)]
    shift: f64,
    #[arg(long, value_enum, default_value = "unipc")]
    solver: Solver,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output safetensors: `latent` `[count, 16, F, H, W]`.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Solver {
    Unipc,
    Euler,
}

fn text_states(path: &Path, count: usize) -> Result<(Vec<f32>, usize), String> {
    let t = read_safetensors(path).map_err(err)?;
    let text = t
        .get("text")
        .ok_or_else(|| format!("{}: no `text` tensor", path.display()))?;
    if text.shape.len() != 2 {
        return Err(format!(
            "{}: `text` has shape {:?}; expected [L, text_dim]",
            path.display(),
            text.shape
        ));
    }
    let one = text.to_f32();
    Ok((one.repeat(count), text.shape[0]))
}

pub fn sample_cmd(a: &SampleArgs) -> Result<(), String> {
    let be = a.device.open()?;
    let ckpt = Checkpoint::open(&a.generator).map_err(err)?;
    let mut gen = WanModel::new(
        &be,
        ckpt.config().clone(),
        &ckpt.load_all().map_err(err)?,
        None,
    )
    .map_err(err)?;
    if gen.y_channels() != 0 {
        return Err(
            "sampling an I2V model needs image conditioning, which `prfl sample` does not take yet"
                .into(),
        );
    }
    if let Some(path) = &a.lora {
        let (lora, adapters) = load_peft(path).map_err(err)?;
        gen.attach_lora(&be, &lora, &adapters).map_err(err)?;
    }
    let shape = VideoShape {
        batch: a.count,
        frames: a.frames,
        height: a.height,
        width: a.width,
    };
    let (text, text_len) = text_states(&a.text, a.count)?;
    let text = be.upload(&text);
    let cond = Cond::<Device> {
        text: &text,
        text_len,
        y: None,
        clip: None,
        image_len: 0,
    };
    let neg = a
        .negative
        .as_ref()
        .map(|p| text_states(p, a.count).map(|(t, l)| (be.upload(&t), l)))
        .transpose()?;
    let guidance = neg.as_ref().map(|(t, l)| Guidance {
        negative: Cond {
            text: t,
            text_len: *l,
            y: None,
            clip: None,
            image_len: 0,
        },
        scale: a.guidance,
    });
    let kind = match a.solver {
        Solver::Unipc => SolverKind::UniPc,
        Solver::Euler => SolverKind::Euler,
    };
    let plan = SamplingPlan::wan(a.steps, a.shift, kind).map_err(err)?;
    let mut noise = vec![0.0f32; a.count * gen.cfg.out_dim * shape.voxels()];
    Rng::seed_from_u64(a.seed).fill_normal(&mut noise);
    let start = Instant::now();
    let x = sample(
        &be,
        &gen,
        shape,
        &cond,
        guidance.as_ref(),
        &plan,
        be.upload(&noise),
    )
    .map_err(err)?;
    let x = be.download(&x);
    let t = HostTensor::from_f32(
        vec![a.count, gen.cfg.out_dim, a.frames, a.height, a.width],
        x,
    )
    .map_err(err)?;
    write_safetensors(&a.out, [("latent", &t)], None).map_err(err)?;
    println!(
        "sampled {} clip(s) in {:.1} s -> {}",
        a.count,
        start.elapsed().as_secs_f64(),
        a.out.display()
    );
    Ok(())
}
