//! `prfl bench`: two benchmarks.
//!
//! - Without `--preset` (the default): forward and forward+backward of a small Wan configuration,
//!   with tokens/s and peak memory, and (optionally, in the same run) the same configuration in
//!   PyTorch eager through diffusers' `WanTransformer3DModel` for the ratio.
//! - With `--preset 480p|240p|tiny`: the training steps of the method with Wan2.1-1.3B shapes and
//!   random weights (issue 7): a PAVRM training step, a PRFL step and a score call, each with its
//!   median step time, peak device memory and MFU. `tools/bench/torch_gpu.py` times the same
//!   steps in PyTorch; `tools/gpu/run_all.sh` runs both and compares.
//!
//! `--device` (default `cpu`) picks the backend for both.
//!
//! # The step benchmarks
//!
//! Shapes (batch 1, text 512 tokens of width 4096 as the T5 encoder gives):
//! - `480p`: 480 x 832 x 81 frames -> latent 16 x 21 x 60 x 104 -> 32760 tokens;
//! - `240p`: 240 x 416 x 33 frames -> latent 16 x 9 x 30 x 52 -> 3510 tokens;
//! - `tiny`: a small configuration for checking the command on a CPU.
//!
//! Steps (method.md sections 3 and 4):
//! - `pavrm`: one reward-model training step: the first K = 8 generator blocks (embeddings
//!   frozen) + attention pooling + MLP, BCE on a labelled clip noised to a drawn level, backward
//!   with per-block recompute, AdamW (fp32 masters, bf16 matrices);
//! - `prfl`: one PRFL step with the mid step m = 0 (no rollout: the rollout is m no-gradient
//!   forwards, timed by `score`-like calls and excluded here): generator forward with gradients
//!   (recompute) + solver update + frozen reward forward + reward backward to its input +
//!   generator backward + AdamW over the full generator (method.md: full fine-tuning; `--lora`
//!   for the rank-128 q/k/v/o option). The interleaved SFT step is not included;
//! - `score`: one reward-model forward without gradients.
//!
//! Timing: `--warmup` untimed steps (kernel compilation, cuBLASLt algorithm choice, first-touch
//! allocation), then up to `--max-reps` timed steps within `--budget` seconds, each synchronised
//! on the device before the clock is read; the median is reported. Peak memory: the most bytes
//! allocated at once during the timed steps, the resident model and optimiser state included
//! (on CUDA the backend's allocator statistics; on the CPU the counting heap allocator).
//!
//! # MFU
//!
//! Model FLOPs per step / median time / the measured dense bf16 peak (`--peak-tflops`, measured
//! by `tools/gpu/run_all.sh` with an 8192^3 bf16 matrix product). A multiply-add counts 2 FLOPs.
//! With L video tokens, T text tokens, width D, FFN width F, one block's forward is
//!
//! ```text
//! block = 8 L D^2      self-attention q, k, v, o
//!       + 4 L^2 D      self-attention scores and weighted sum
//!       + 4 L D^2      cross-attention q, o
//!       + 4 T D^2      cross-attention k, v (text tokens)
//!       + 4 L T D      cross-attention scores and weighted sum
//!       + 4 L D F      feed-forward
//! embed = 2 L (4 C_in) D + 2 T (D_text D + D^2)     patch and text embeddings
//! head  = 2 L D (4 C_out)                           the generator's output head
//! pool  = 4 L D^2 + 4 L D                           reward pooling: keys, values, scores
//! ```
//!
//! Element-wise work, the time embedding and the reward MLP are left out (< 0.1%). Backward
//! costs twice the forward for trained layers (input and weight gradients) and once for frozen
//! layers the gradient passes through (input gradients only); the forward recomputation of
//! gradient checkpointing is not counted (model FLOPs, not hardware FLOPs). So:
//!
//! ```text
//! score = embed + K block + pool
//! pavrm = embed + 3 (K block + pool)                  embeddings frozen, blocks and head trained
//! prfl  = 3 (embed + N block + head) + 2 (embed + K block + pool)   full fine-tuning, frozen reward
//!         (with --lora: 2 (...) for the generator: its base weights get no gradient)
//! ```

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use prfl::backend::cpu::Cpu;
use prfl::backend::cuda::{Cuda, CudaOptions};
use prfl::backend::device::{Device, DeviceSpec};
use prfl::backend::Backend;
use prfl::finetune::prfl::{PrflTrainConfig, PrflTrainer};
use prfl::finetune::sample::Cond;
use prfl::model::init::random_weights;
use prfl::model::lora::{init_lora, LoraConfig};
use prfl::model::params::Grads;
use prfl::model::wan::{Inputs, Mode, VideoShape, WanModel};
use prfl::model::{ModelType, WanConfig};
use prfl::reward::dataset::{Batch, BatchLatents};
use prfl::reward::head::init_head_params;
use prfl::reward::model::{RewardModel, RewardModelConfig};
use prfl::reward::train::{RewardLoss, RewardTrainConfig, RewardTrainer};
use prfl::schedule::rng::Rng;
use prfl::tensor::DType;

use crate::alloc;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Model width (head_dim is 128 as in every released Wan2.1).
    #[arg(long, default_value_t = 512)]
    dim: usize,
    #[arg(long, default_value_t = 2)]
    layers: usize,
    #[arg(long, default_value_t = 1536)]
    ffn: usize,
    #[arg(long, default_value_t = 256)]
    text_dim: usize,
    #[arg(long, default_value_t = 64)]
    text_len: usize,
    /// Latent frames, height, width (tokens = F * H/2 * W/2).
    #[arg(long, default_value_t = 4)]
    frames: usize,
    #[arg(long, default_value_t = 32)]
    height: usize,
    #[arg(long, default_value_t = 32)]
    width: usize,
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Timed repetitions per measurement (after one warm-up).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Python with torch + diffusers for the side-by-side PyTorch eager run (e.g. .venv/bin/python).
    #[arg(long)]
    torch: Option<PathBuf>,

    /// Where to compute: `cpu`, `cuda` (= `cuda:0`), `cuda:N` or `auto`.
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// A folder holding the CUDA libraries (libcuda, libnvrtc, libcublas, libcublasLt).
    #[arg(long)]
    cuda_lib_dir: Option<PathBuf>,

    /// The step benchmarks with Wan2.1-1.3B shapes: `480p` (32760 tokens), `240p` (3510 tokens),
    /// or `tiny` (a small model, for a CPU). The flags above are then ignored.
    #[arg(long)]
    preset: Option<Preset>,
    /// Which steps (with --preset).
    #[arg(long, value_delimiter = ',', default_value = "score,pavrm,prfl")]
    steps: Vec<StepKind>,
    /// Reward-model blocks K (method.md: the first 8).
    #[arg(long, default_value_t = 8)]
    reward_blocks: usize,
    /// PRFL trains LoRA adapters (rank 128 on q, k, v, o) instead of every weight.
    #[arg(long)]
    lora: bool,
    /// Untimed steps before timing (with --preset).
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// At most this many timed steps per measurement (with --preset).
    #[arg(long, default_value_t = 5)]
    max_reps: usize,
    /// Seconds of timed steps per measurement, at least one step (with --preset).
    #[arg(long, default_value_t = 30.0)]
    budget: f64,
    /// The measured dense bf16 peak of the device in TFLOP/s, for MFU (with --preset).
    #[arg(long)]
    peak_tflops: Option<f64>,
    /// Writes the step results as JSON here (with --preset).
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    #[value(name = "480p")]
    P480,
    #[value(name = "240p")]
    P240,
    Tiny,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StepKind {
    Score,
    Pavrm,
    Prfl,
}

impl StepKind {
    fn name(self) -> &'static str {
        match self {
            StepKind::Score => "score",
            StepKind::Pavrm => "pavrm",
            StepKind::Prfl => "prfl",
        }
    }
}

/// Synchronisation and memory statistics of the device a benchmark runs on.
trait Meter {
    /// Waits for queued device work.
    fn sync(&self) -> Result<(), String>;
    /// Starts a new peak window; returns the bytes allocated now.
    fn reset_peak(&self) -> usize;
    /// The most bytes allocated at once since [`Meter::reset_peak`].
    fn peak(&self) -> usize;
    /// What the memory figures count.
    fn memory_kind(&self) -> &'static str;
}

struct HostMeter;

impl Meter for HostMeter {
    fn sync(&self) -> Result<(), String> {
        Ok(())
    }
    fn reset_peak(&self) -> usize {
        alloc::reset_peak()
    }
    fn peak(&self) -> usize {
        alloc::peak()
    }
    fn memory_kind(&self) -> &'static str {
        "live heap bytes (counting allocator)"
    }
}

struct CudaMeter<'a>(&'a Cuda);

impl Meter for CudaMeter<'_> {
    fn sync(&self) -> Result<(), String> {
        self.0.synchronize().map_err(|e| e.to_string())
    }
    fn reset_peak(&self) -> usize {
        let _ = self.0.synchronize();
        let _ = self.0.reset_peak_memory();
        self.0.memory().current
    }
    fn peak(&self) -> usize {
        let _ = self.0.synchronize();
        self.0.memory().peak
    }
    fn memory_kind(&self) -> &'static str {
        "device bytes allocated (CUDA memory pool)"
    }
}

pub fn run(a: &BenchArgs) -> Result<(), String> {
    let opts = CudaOptions {
        lib_dir: a.cuda_lib_dir.clone(),
    };
    let device =
        Device::open(a.device, &opts, false).map_err(|e| format!("--device {}: {e}", a.device))?;
    match device.cuda() {
        Some(cuda) => run_on(cuda, &CudaMeter(cuda), a),
        None => run_on(&Cpu, &HostMeter, a),
    }
}

fn run_on<B: Backend>(be: &B, meter: &dyn Meter, a: &BenchArgs) -> Result<(), String> {
    match a.preset {
        Some(p) => steps::run(be, meter, a, p),
        None => model_bench(be, meter, a),
    }
}

// ------------------------------------------------------------------------------------ forward/backward

struct Measure {
    name: &'static str,
    seconds: f64,
    peak_bytes: usize,
}

fn time_it(meter: &dyn Meter, reps: usize, mut f: impl FnMut()) -> Result<(f64, usize), String> {
    f(); // warm-up: first-touch page faults and thread-pool start-up are not the engine
    meter.sync()?;
    let base = meter.reset_peak();
    let start = Instant::now();
    for _ in 0..reps {
        f();
    }
    meter.sync()?;
    let secs = start.elapsed().as_secs_f64() / reps as f64;
    Ok((secs, meter.peak().saturating_sub(base)))
}

fn model_bench<B: Backend>(be: &B, meter: &dyn Meter, a: &BenchArgs) -> Result<(), String> {
    let cfg = WanConfig {
        model_type: ModelType::T2V,
        in_dim: 16,
        out_dim: 16,
        dim: a.dim,
        ffn_dim: a.ffn,
        freq_dim: 256,
        text_dim: a.text_dim,
        image_dim: None,
        num_heads: a.dim / 128,
        num_layers: a.layers,
        eps: 1e-6,
        text_len: 512,
    };
    if a.dim % 128 != 0 {
        return Err("--dim must be a multiple of 128 (head_dim 128)".into());
    }
    let model = WanModel::new(be, cfg.clone(), &random_weights(&cfg, 0), None)
        .map_err(|e| e.to_string())?;
    let shape = VideoShape {
        batch: a.batch,
        frames: a.frames,
        height: a.height,
        width: a.width,
    };
    let mut rng = Rng::seed_from_u64(1);
    let mut x = vec![0.0f32; a.batch * 16 * shape.voxels()];
    rng.fill_normal(&mut x);
    let mut context = vec![0.0f32; a.batch * a.text_len * a.text_dim];
    rng.fill_normal(&mut context);
    let mut cot = vec![0.0f32; x.len()];
    rng.fill_normal(&mut cot);
    let t: Vec<f32> = (0..a.batch).map(|i| 500.0 + i as f32).collect();
    let (xb, cb, cotb) = (be.upload(&x), be.upload(&context), be.upload(&cot));
    let inp = Inputs::<B> {
        shape,
        x: &xb,
        t: &t,
        context: &cb,
        text_len: a.text_len,
        y: None,
        clip: None,
        image_len: 0,
    };
    let tokens = a.batch * shape.tokens();
    println!(
        "prfl bench: {} | D={} heads={} ffn={} layers={} text {}x{} | batch {} x {} tokens ({}x{}x{} latent)",
        be.name(),
        cfg.dim,
        cfg.num_heads,
        cfg.ffn_dim,
        cfg.num_layers,
        a.text_len,
        a.text_dim,
        a.batch,
        shape.tokens(),
        a.frames,
        a.height,
        a.width
    );

    let mut results = Vec::new();
    let (s, p) = time_it(meter, a.reps, || {
        let _ = model.forward(be, &inp, Mode::Inference).unwrap();
    })?;
    results.push(Measure {
        name: "forward",
        seconds: s,
        peak_bytes: p,
    });
    for (name, mode) in [
        ("forward+backward", Mode::Train),
        ("forward+backward (recompute)", Mode::TrainRecompute),
    ] {
        let mut grads = Grads::new(be, &model.params, |_| true);
        let (s, p) = time_it(meter, a.reps, || {
            let (_, tape) = model.forward(be, &inp, mode).unwrap();
            let _ = model
                .backward(be, &tape.unwrap(), &cotb, &mut grads)
                .unwrap();
        })?;
        results.push(Measure {
            name,
            seconds: s,
            peak_bytes: p,
        });
    }

    let torch = match &a.torch {
        Some(py) => Some(run_torch(py, a)?),
        None => None,
    };

    println!();
    println!(
        "{:<30} {:>10} {:>12} {:>12} | {:>10} {:>12} {:>9} {:>9}",
        "measurement", "ms", "tokens/s", "peak MiB", "torch ms", "torch MiB", "time x", "mem x"
    );
    for m in &results {
        let key = match m.name {
            "forward" => "forward",
            "forward+backward" => "forward_backward",
            _ => "forward_backward_ckpt",
        };
        let tv = torch.as_ref().and_then(|j| j.get(key));
        let (tms, tmib) = match tv {
            Some(v) => (
                v["seconds"].as_f64().unwrap_or(f64::NAN) * 1e3,
                v["peak_bytes"].as_f64().unwrap_or(f64::NAN) / 1048576.0,
            ),
            None => (f64::NAN, f64::NAN),
        };
        let ms = m.seconds * 1e3;
        let mib = m.peak_bytes as f64 / 1048576.0;
        println!(
            "{:<30} {:>10.1} {:>12.0} {:>12.1} | {:>10.1} {:>12.1} {:>9.2} {:>9.2}",
            m.name,
            ms,
            tokens as f64 / m.seconds,
            mib,
            tms,
            tmib,
            ms / tms,
            mib / tmib
        );
    }
    println!(
        "\n(peak: {} above the level before the measurement; time x and mem x: prfl / PyTorch; < 1 means prfl is faster / smaller)",
        meter.memory_kind()
    );
    Ok(())
}

/// A script of `tools/bench`: where the source tree was built, else relative to the working
/// directory (a binary carried to another machine).
fn bench_script(name: &str) -> PathBuf {
    let built = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tools/bench")).join(name);
    if built.exists() {
        built
    } else {
        PathBuf::from("tools/bench").join(name)
    }
}

/// Runs `tools/bench/torch_wan.py` with the same configuration and parses its JSON line.
fn run_torch(python: &PathBuf, a: &BenchArgs) -> Result<serde_json::Value, String> {
    let script = bench_script("torch_wan.py");
    let out = Command::new(python)
        .arg(script)
        .args(["--dim", &a.dim.to_string()])
        .args(["--layers", &a.layers.to_string()])
        .args(["--ffn", &a.ffn.to_string()])
        .args(["--text-dim", &a.text_dim.to_string()])
        .args(["--text-len", &a.text_len.to_string()])
        .args(["--frames", &a.frames.to_string()])
        .args(["--height", &a.height.to_string()])
        .args(["--width", &a.width.to_string()])
        .args(["--batch", &a.batch.to_string()])
        .args(["--reps", &a.reps.to_string()])
        .args(["--threads", &rayon::current_num_threads().to_string()])
        .output()
        .map_err(|e| format!("could not run {}: {e}", python.display()))?;
    if !out.status.success() {
        return Err(format!(
            "PyTorch benchmark failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or("PyTorch benchmark printed no JSON")?;
    serde_json::from_str(line).map_err(|e| format!("bad JSON from the PyTorch benchmark: {e}"))
}

// ------------------------------------------------------------------------------------ steps

mod steps {
    use super::*;

    /// A preset's model and latent.
    pub struct Setup {
        pub name: &'static str,
        pub cfg: WanConfig,
        pub shape: VideoShape,
        pub text_len: usize,
        pub reward_blocks: usize,
    }

    pub fn setup(p: Preset, reward_blocks: usize) -> Setup {
        let wan13 = WanConfig::t2v_1_3b();
        let (name, cfg, (frames, height, width), text_len) = match p {
            // 480 x 832, 81 frames; VAE stride 4 x 8 x 8.
            Preset::P480 => ("480p x 81f", wan13, (21, 60, 104), 512),
            // 240 x 416, 33 frames.
            Preset::P240 => ("240p x 33f", wan13, (9, 30, 52), 512),
            Preset::Tiny => (
                "tiny",
                WanConfig {
                    dim: 256,
                    ffn_dim: 512,
                    num_heads: 2,
                    num_layers: 4,
                    text_dim: 64,
                    ..wan13
                },
                (2, 8, 8),
                16,
            ),
        };
        let reward_blocks = reward_blocks.min(cfg.num_layers);
        Setup {
            name,
            cfg,
            shape: VideoShape {
                batch: 1,
                frames,
                height,
                width,
            },
            text_len,
            reward_blocks,
        }
    }

    /// Forward FLOPs of the pieces (see the module documentation).
    pub struct Flops {
        pub block: f64,
        pub embed: f64,
        pub head: f64,
        pub pool: f64,
    }

    pub fn flops(s: &Setup) -> Flops {
        let c = &s.cfg;
        let l = s.shape.tokens() as f64;
        let t = s.text_len as f64;
        let (d, f) = (c.dim as f64, c.ffn_dim as f64);
        Flops {
            block: 8.0 * l * d * d
                + 4.0 * l * l * d
                + 4.0 * l * d * d
                + 4.0 * t * d * d
                + 4.0 * l * t * d
                + 4.0 * l * d * f,
            embed: 2.0 * l * (4 * c.in_dim) as f64 * d + 2.0 * t * (c.text_dim as f64 * d + d * d),
            head: 2.0 * l * d * (4 * c.out_dim) as f64,
            pool: 4.0 * l * d * d + 4.0 * l * d,
        }
    }

    pub fn step_flops(s: &Setup, step: StepKind, lora: bool) -> f64 {
        let f = flops(s);
        let k = s.reward_blocks as f64;
        let n = s.cfg.num_layers as f64;
        let reward = f.embed + k * f.block + f.pool;
        match step {
            StepKind::Score => reward,
            StepKind::Pavrm => f.embed + 3.0 * (k * f.block + f.pool),
            StepKind::Prfl => {
                let gen = f.embed + n * f.block + f.head;
                (if lora { 2.0 } else { 3.0 }) * gen + 2.0 * reward
            }
        }
    }

    pub struct StepResult {
        pub step: StepKind,
        pub times: Vec<f64>,
        pub median: f64,
        pub peak_bytes: usize,
        pub flops: f64,
        pub setup_seconds: f64,
        pub note: String,
    }

    fn median(v: &[f64]) -> f64 {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        if n % 2 == 1 {
            s[n / 2]
        } else {
            0.5 * (s[n / 2 - 1] + s[n / 2])
        }
    }

    /// Warm-up, then timed steps within the budget; the peak covers the timed steps.
    fn time_steps(
        meter: &dyn Meter,
        a: &BenchArgs,
        mut step: impl FnMut() -> Result<(), String>,
    ) -> Result<(Vec<f64>, usize), String> {
        let mut last = 0.0f64;
        for _ in 0..a.warmup {
            let t0 = Instant::now();
            step()?;
            meter.sync()?;
            last = t0.elapsed().as_secs_f64();
        }
        meter.reset_peak();
        let mut times = Vec::new();
        let budget_start = Instant::now();
        while times.len() < a.max_reps.max(1) {
            if !times.is_empty() {
                // Stop when one more step would overrun the budget.
                let per = times.iter().sum::<f64>() / times.len() as f64;
                if budget_start.elapsed().as_secs_f64() + per > a.budget {
                    break;
                }
            } else if a.warmup > 0 && last > 2.0 * a.budget {
                // A very slow step: one timed repetition is all the budget allows.
                eprintln!("  (one step takes {last:.1} s: timing a single repetition)");
            }
            let t0 = Instant::now();
            step()?;
            meter.sync()?;
            times.push(t0.elapsed().as_secs_f64());
        }
        Ok((times, meter.peak()))
    }

    fn normal(rng: &mut Rng, n: usize) -> Vec<f32> {
        let mut v = vec![0.0f32; n];
        rng.fill_normal(&mut v);
        v
    }

    pub fn run<B: Backend>(
        be: &B,
        meter: &dyn Meter,
        a: &BenchArgs,
        preset: Preset,
    ) -> Result<(), String> {
        let s = setup(preset, a.reward_blocks);
        let cfg = &s.cfg;
        let tokens = s.shape.tokens();
        println!(
            "prfl bench --preset {}: {} | Wan D={} heads={} ffn={} layers={} | reward K={} | latent 16x{}x{}x{} = {} tokens, text {}x{} | PRFL {}",
            s.name,
            be.name(),
            cfg.dim,
            cfg.num_heads,
            cfg.ffn_dim,
            cfg.num_layers,
            s.reward_blocks,
            s.shape.frames,
            s.shape.height,
            s.shape.width,
            tokens,
            s.text_len,
            cfg.text_dim,
            if a.lora { "LoRA rank 128 (q, k, v, o)" } else { "full fine-tuning" }
        );
        let t0 = Instant::now();
        let weights = random_weights(cfg, 0);
        let head = {
            let r = RewardModelConfig::default();
            init_head_params(cfg.dim, r.heads, r.queries, r.hidden, 1)
        };
        let rcfg = RewardModelConfig {
            blocks: s.reward_blocks,
            ..RewardModelConfig::default()
        };
        println!("random weights: {:.1} s", t0.elapsed().as_secs_f64());
        let mut rng = Rng::seed_from_u64(7);
        let latent = normal(&mut rng, 16 * s.shape.voxels());
        let text = normal(&mut rng, s.text_len * cfg.text_dim);
        let reward_model = |be: &B| {
            RewardModel::from_tensors(
                be,
                cfg.clone(),
                &weights,
                &head,
                rcfg.clone(),
                Some(DType::BF16),
            )
            .map_err(|e| e.to_string())
        };

        let mut results = Vec::new();
        for &step in &a.steps {
            let setup_start = Instant::now();
            let mut note = String::new();
            let (times, peak) = match step {
                StepKind::Score => {
                    let model = reward_model(be)?;
                    let (xb, tb) = (be.upload(&latent), be.upload(&text));
                    let t = [500.0f32];
                    let inp = Inputs::<B> {
                        shape: s.shape,
                        x: &xb,
                        t: &t,
                        context: &tb,
                        text_len: s.text_len,
                        y: None,
                        clip: None,
                        image_len: 0,
                    };
                    meter.sync()?;
                    time_steps(meter, a, || {
                        model.score(be, &inp).map(|_| ()).map_err(|e| e.to_string())
                    })?
                }
                StepKind::Pavrm => {
                    let model = reward_model(be)?;
                    let tcfg = RewardTrainConfig {
                        loss: RewardLoss::Ce,
                        recompute: true,
                        ..RewardTrainConfig::default()
                    };
                    let mut tr = RewardTrainer::new(be, model, tcfg).map_err(|e| e.to_string())?;
                    let batch = Batch {
                        indices: vec![0],
                        shape: [16, s.shape.frames, s.shape.height, s.shape.width],
                        latents: BatchLatents::Clips {
                            latents: latent.clone(),
                            labels: vec![1.0],
                        },
                        text: text.clone(),
                        text_len: s.text_len,
                        text_dim: cfg.text_dim,
                        i2v: None,
                    };
                    meter.sync()?;
                    let r = time_steps(meter, a, || {
                        let st = tr.micro_step(be, &batch).map_err(|e| e.to_string())?;
                        if !st.loss.is_finite() {
                            return Err(format!("PAVRM step: loss {}", st.loss));
                        }
                        Ok(())
                    })?;
                    note = format!(
                        "optimiser state {:.2} GiB",
                        tr.optimizer().state_bytes(be) as f64 / GIB
                    );
                    r
                }
                StepKind::Prfl => {
                    let mut generator = WanModel::new(be, cfg.clone(), &weights, Some(DType::BF16))
                        .map_err(|e| e.to_string())?;
                    let lora = a.lora.then(LoraConfig::default);
                    if let Some(l) = &lora {
                        let adapters = init_lora(cfg, l, 3).map_err(|e| e.to_string())?;
                        generator
                            .attach_lora(be, l, &adapters)
                            .map_err(|e| e.to_string())?;
                    }
                    let pcfg = PrflTrainConfig {
                        mid_range: Some((0, 0)),
                        sft: false,
                        recompute: true,
                        lora,
                        ..PrflTrainConfig::default()
                    };
                    let mut tr = PrflTrainer::new(be, generator, reward_model(be)?, pcfg)
                        .map_err(|e| e.to_string())?;
                    let tb = be.upload(&text);
                    let cond = Cond {
                        text: &tb,
                        text_len: s.text_len,
                        y: None,
                        clip: None,
                        image_len: 0,
                    };
                    meter.sync()?;
                    let mut tape = 0;
                    let r = time_steps(meter, a, || {
                        let st = tr
                            .micro_step(be, s.shape, &cond, None)
                            .map_err(|e| e.to_string())?;
                        if !st.prfl_loss.is_finite() {
                            return Err(format!("PRFL step: loss {}", st.prfl_loss));
                        }
                        tape = st.tape_bytes;
                        Ok(())
                    })?;
                    note = format!(
                        "optimiser state {:.2} GiB, activations at backward {:.2} GiB",
                        tr.optimizer().state_bytes(be) as f64 / GIB,
                        tape as f64 / GIB
                    );
                    r
                }
            };
            let res = StepResult {
                step,
                median: median(&times),
                times,
                peak_bytes: peak,
                flops: step_flops(&s, step, a.lora),
                setup_seconds: setup_start.elapsed().as_secs_f64(),
                note,
            };
            println!(
                "  {:<6} median {:>9.3} s over {} step(s) ({}), peak {:>7.2} GiB{}",
                step.name(),
                res.median,
                res.times.len(),
                res.times
                    .iter()
                    .map(|t| format!("{t:.3}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                res.peak_bytes as f64 / GIB,
                if res.note.is_empty() {
                    String::new()
                } else {
                    format!(", {}", res.note)
                }
            );
            results.push(res);
            write_json(be, meter, a, &s, &results)?;
        }
        drop(weights);

        println!();
        println!(
            "{:<8} {:>10} {:>10} {:>10} {:>8}",
            "step", "median s", "peak GiB", "TFLOP", "MFU"
        );
        for r in &results {
            let mfu = a
                .peak_tflops
                .map(|p| r.flops / r.median / (p * 1e12))
                .unwrap_or(f64::NAN);
            println!(
                "{:<8} {:>10.3} {:>10.2} {:>10.1} {:>8}",
                r.step.name(),
                r.median,
                r.peak_bytes as f64 / GIB,
                r.flops / 1e12,
                if mfu.is_finite() {
                    format!("{:.1}%", 100.0 * mfu)
                } else {
                    "-".into()
                }
            );
        }
        println!(
            "(peak: {}, resident model and optimiser state included; MFU against {})",
            meter.memory_kind(),
            a.peak_tflops
                .map(|p| format!("a measured {p:.0} TFLOP/s bf16 peak"))
                .unwrap_or_else(|| "nothing: pass --peak-tflops".into())
        );
        Ok(())
    }

    /// Writes the results so far (after every step, so that a run stopped by a time limit keeps
    /// the steps it finished).
    fn write_json<B: Backend>(
        be: &B,
        meter: &dyn Meter,
        a: &BenchArgs,
        s: &Setup,
        results: &[StepResult],
    ) -> Result<(), String> {
        let Some(path) = &a.json else { return Ok(()) };
        let cfg = &s.cfg;
        let j = serde_json::json!({
            "engine": "prfl",
            "device": be.name(),
            "preset": s.name,
            "tokens": s.shape.tokens(),
            "text_len": s.text_len,
            "dim": cfg.dim,
            "layers": cfg.num_layers,
            "reward_blocks": s.reward_blocks,
            "lora": a.lora,
            "peak_tflops": a.peak_tflops,
            "memory": meter.memory_kind(),
            "steps": results.iter().map(|r| (r.step.name().to_string(), serde_json::json!({
                "median_s": r.median,
                "times_s": r.times,
                "peak_bytes": r.peak_bytes,
                "flops": r.flops,
                "mfu": a.peak_tflops.map(|p| r.flops / r.median / (p * 1e12)),
                "setup_and_run_s": r.setup_seconds,
                "note": r.note,
            }))).collect::<serde_json::Map<_, _>>(),
        });
        std::fs::write(path, serde_json::to_string_pretty(&j).unwrap() + "\n")
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }

    const GIB: f64 = (1u64 << 30) as f64;
}
