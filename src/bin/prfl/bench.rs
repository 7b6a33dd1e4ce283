//! `prfl bench`: forward and forward+backward of a small Wan configuration on the CPU backend,
//! with tokens/s and peak heap memory, and (optionally, in the same run) the same configuration in
//! PyTorch eager through diffusers' `WanTransformer3DModel` for the ratio.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use prfl::backend::cpu::Cpu;
use prfl::backend::Backend;
use prfl::model::init::random_weights;
use prfl::model::params::Grads;
use prfl::model::wan::{Inputs, Mode, VideoShape, WanModel};
use prfl::model::{ModelType, WanConfig};
use prfl::schedule::rng::Rng;

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
}

struct Measure {
    name: &'static str,
    seconds: f64,
    peak_bytes: usize,
}

fn time_it(reps: usize, mut f: impl FnMut()) -> (f64, usize) {
    f(); // warm-up: first-touch page faults and thread-pool start-up are not the engine
    let base = alloc::reset_peak();
    let start = Instant::now();
    for _ in 0..reps {
        f();
    }
    let secs = start.elapsed().as_secs_f64() / reps as f64;
    (secs, alloc::peak() - base)
}

pub fn run(a: &BenchArgs) -> Result<(), String> {
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
    let be = Cpu;
    let model = WanModel::new(&be, cfg.clone(), &random_weights(&cfg, 0), None)
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
    let inp = Inputs::<Cpu> {
        shape,
        x: &x,
        t: &t,
        context: &context,
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
    let (s, p) = time_it(a.reps, || {
        let _ = model.forward(&be, &inp, Mode::Inference).unwrap();
    });
    results.push(Measure {
        name: "forward",
        seconds: s,
        peak_bytes: p,
    });
    for (name, mode) in [
        ("forward+backward", Mode::Train),
        ("forward+backward (recompute)", Mode::TrainRecompute),
    ] {
        let mut grads = Grads::new(&be, &model.params, |_| true);
        let (s, p) = time_it(a.reps, || {
            let (_, tape) = model.forward(&be, &inp, mode).unwrap();
            let _ = model
                .backward(&be, &tape.unwrap(), &cot, &mut grads)
                .unwrap();
        });
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
    println!("\n(time x and mem x: prfl / PyTorch; < 1 means prfl is faster / smaller)");
    Ok(())
}

/// Runs `tools/bench/torch_wan.py` with the same configuration and parses its JSON line.
fn run_torch(python: &PathBuf, a: &BenchArgs) -> Result<serde_json::Value, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/bench/torch_wan.py");
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
