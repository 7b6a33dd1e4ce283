//! The `prfl` command-line tool: inspect checkpoints, run the model on files, benchmark.

mod alloc;
mod bench;
mod config_file;
mod demo_cmd;
mod device_args;
mod finetune_cmd;
mod interop_cmd;
mod progress;
mod queue_bench;
mod reward_cmd;
mod vae_cmd;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use device_args::DeviceArgs;
use prfl::model::checkpoint::Checkpoint;
use prfl::model::host::{run_forward, RunOptions};
use prfl::safetensors::{read_safetensors, write_safetensors};

#[global_allocator]
static GLOBAL: alloc::Counting = alloc::Counting;

#[derive(Parser)]
#[command(
    name = "prfl",
    version,
    about = "Latent reward models and PRFL for Wan2.1 video DiTs"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Layout, configuration, parameter count and dtypes of a checkpoint (a directory as
    /// released, a single safetensors file, or a sharded index json). Without a path, a built-in
    /// tiny model is written to a temporary directory and inspected.
    Inspect { checkpoint: Option<PathBuf> },
    /// Runs the model on a safetensors file of inputs and writes the output (and gradients).
    Forward {
        /// Checkpoint: directory (config.json + safetensors, sharded or not), or one safetensors file.
        #[arg(long)]
        weights: PathBuf,
        /// Safetensors with `x`, `t`, `context` (I2V: `y`, `clip_fea`; with --grad: `cotangent`).
        #[arg(long)]
        inputs: PathBuf,
        /// Output safetensors: `v`, and with --grad `grad.x`, `grad.context`, `grad.<param>`.
        #[arg(long)]
        out: PathBuf,
        /// Also compute the gradients of sum(v * cotangent).
        #[arg(long)]
        grad: bool,
        /// Recompute each block's activations during backward instead of keeping them.
        #[arg(long)]
        recompute: bool,
        #[command(flatten)]
        device: DeviceArgs,
    },
    /// Forward and forward+backward throughput and peak memory of a small configuration.
    Bench(bench::BenchArgs),
    /// Latency of submitting 1 MiB latents through the C ABI while the background trainer runs.
    BenchQueue(queue_bench::BenchQueueArgs),
    /// Trains a reward model (PAVRM) from a TOML configuration.
    TrainReward {
        config: PathBuf,
        #[command(flatten)]
        device: DeviceArgs,
    },
    /// Accuracy and ROC-AUC of a trained reward model per timestep on a dataset.
    EvalReward {
        #[arg(long)]
        generator: PathBuf,
        #[arg(long)]
        reward: PathBuf,
        #[arg(long)]
        data: PathBuf,
        #[arg(long, value_delimiter = ',', default_value = "201,400,600,800,1000")]
        timesteps: Vec<f32>,
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
        #[command(flatten)]
        device: DeviceArgs,
    },
    /// Scores latents (a safetensors file with `latent` and `text`) at a timestep.
    Score {
        #[arg(long)]
        generator: PathBuf,
        #[arg(long)]
        reward: PathBuf,
        #[arg(long)]
        input: PathBuf,
        #[arg(long, default_value_t = 0.0)]
        timestep: f32,
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        device: DeviceArgs,
    },
    /// Fine-tunes a generator with PRFL from a TOML configuration.
    Finetune {
        config: PathBuf,
        #[command(flatten)]
        device: DeviceArgs,
    },
    /// Samples latents from a generator (+ LoRA) with UniPC or Euler.
    Sample(finetune_cmd::SampleArgs),
    /// The whole method end to end on a built-in procedural world (no downloads): pre-train
    /// a small generator, train the latent reward model, fine-tune with PRFL, measure before and
    /// after, and compare early rejection; writes a report folder.
    Demo(demo_cmd::DemoArgs),
    /// The compute devices: the CPU, the CUDA libraries found, and every CUDA GPU.
    Devices(device_args::DevicesArgs),
    /// Imports a reward model saved by the reference implementation (HY-Video-PRFL): its
    /// transformer, QueryAttention and MLP files, into a prfl reward checkpoint.
    ImportReward(interop_cmd::ImportArgs),
    /// Exports a prfl reward model as the reference implementation's three files.
    ExportReward(interop_cmd::ExportArgs),
    /// Encodes frames (safetensors, a PNG folder or a GIF) into normalised Wan2.1 VAE latents.
    Encode(vae_cmd::EncodeArgs),
    /// Decodes VAE latents into frames (safetensors, a GIF or a PNG folder, by extension).
    Decode(vae_cmd::DecodeArgs),
}

fn inspect(path: Option<&Path>) -> Result<(), String> {
    let owned;
    let path_is_temporary = path.is_none();
    let path = match path {
        Some(p) => p,
        None => {
            owned = builtin_tiny_checkpoint()?;
            println!(
                "(no checkpoint given: inspecting a built-in tiny model written to {})\n",
                owned.display()
            );
            &owned
        }
    };
    let result = Checkpoint::open(path).and_then(|ckpt| {
        ckpt.verify()?;
        println!("{}", ckpt.summary());
        Ok(())
    });
    if path_is_temporary {
        let _ = std::fs::remove_dir_all(path);
    }
    result.map_err(|e| e.to_string())
}

/// A random tiny Wan2.1-architecture model saved in the original layout, so that the main command
/// works on a fresh machine with no downloads.
fn builtin_tiny_checkpoint() -> Result<PathBuf, String> {
    use prfl::model::checkpoint::save_checkpoint;
    use prfl::model::init::random_weights;
    use prfl::model::names::Layout;
    use prfl::model::{ModelType, WanConfig};
    let cfg = WanConfig {
        model_type: ModelType::T2V,
        in_dim: 16,
        out_dim: 16,
        dim: 256,
        ffn_dim: 512,
        freq_dim: 256,
        text_dim: 64,
        image_dim: None,
        num_heads: 2,
        num_layers: 2,
        eps: 1e-6,
        text_len: 512,
    };
    let dir = std::env::temp_dir().join(format!("prfl-tiny-{}", std::process::id()));
    save_checkpoint(&random_weights(&cfg, 0), &cfg, Layout::Original, &dir, None)
        .map_err(|e| e.to_string())?;
    Ok(dir)
}

fn forward(
    weights: &Path,
    inputs: &Path,
    out: &Path,
    grad: bool,
    recompute: bool,
    device: &DeviceArgs,
) -> Result<(), String> {
    let be = device.open()?;
    let ckpt = Checkpoint::open(weights).map_err(|e| e.to_string())?;
    let inputs = read_safetensors(inputs).map_err(|e| e.to_string())?;
    let start = std::time::Instant::now();
    let outputs = run_forward(&be, &ckpt, &inputs, RunOptions { grad, recompute })
        .map_err(|e| e.to_string())?;
    let secs = start.elapsed().as_secs_f64();
    write_safetensors(out, outputs.iter().map(|(k, v)| (k.as_str(), v)), None)
        .map_err(|e| e.to_string())?;
    println!(
        "wrote {} tensors to {} ({:.3} s{})",
        outputs.len(),
        out.display(),
        secs,
        if grad { ", with gradients" } else { "" }
    );
    Ok(())
}

fn main() -> ExitCode {
    alloc::tune_malloc();
    env_logger_init();
    let cli = Cli::parse();
    let result = match &cli.cmd {
        Cmd::Inspect { checkpoint } => inspect(checkpoint.as_deref()),
        Cmd::Forward {
            weights,
            inputs,
            out,
            grad,
            recompute,
            device,
        } => forward(weights, inputs, out, *grad, *recompute, device),
        Cmd::Bench(a) => bench::run(a),
        Cmd::BenchQueue(a) => queue_bench::run(a),
        Cmd::TrainReward { config, device } => reward_cmd::train_reward(config, device),
        Cmd::EvalReward {
            generator,
            reward,
            data,
            timesteps,
            batch_size,
            device,
        } => reward_cmd::eval_reward(generator, reward, data, timesteps, *batch_size, device),
        Cmd::Score {
            generator,
            reward,
            input,
            timestep,
            out,
            device,
        } => reward_cmd::score(generator, reward, input, *timestep, out.as_deref(), device),
        Cmd::Finetune { config, device } => finetune_cmd::finetune(config, device),
        Cmd::Sample(a) => finetune_cmd::sample_cmd(a),
        Cmd::Demo(a) => demo_cmd::demo(a),
        Cmd::Devices(a) => device_args::devices(a),
        Cmd::ImportReward(a) => interop_cmd::import_reward(a),
        Cmd::ExportReward(a) => interop_cmd::export_reward(a),
        Cmd::Encode(a) => vae_cmd::encode(a),
        Cmd::Decode(a) => vae_cmd::decode(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Routes `log` records at warn level and above to stderr (no logger crate needed for this).
fn env_logger_init() {
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, m: &log::Metadata) -> bool {
            m.level() <= log::Level::Warn
        }
        fn log(&self, r: &log::Record) {
            if self.enabled(r.metadata()) {
                eprintln!("[{}] {}", r.level(), r.args());
            }
        }
        fn flush(&self) {}
    }
    static LOGGER: Stderr = Stderr;
    let _ = log::set_logger(&LOGGER).map(|()| log::set_max_level(log::LevelFilter::Warn));
}
