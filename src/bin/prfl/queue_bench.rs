//! `prfl bench-queue`: how long `prfl_submit_labeled` takes a game thread, measured through the
//! C ABI exactly as a host calls it. A producer thread submits 1 MiB latents (262144 floats) at
//! a steady rate while the background trainer (`prfl_start`) trains a tiny reward model on
//! them, so the copies compete with training for cores and memory bandwidth. The latent is
//! `[256, 4, 16, 16]` for a tiny generator with 256 latent channels: the queue's cost depends on
//! the bytes only, and 256 tokens per sample let the trainer keep pace with the producer (a
//! Wan-shaped `[16, 4, 64, 64]` has 4096 tokens and a step of seconds on a CPU).
//!
//! Reported per backpressure policy: latency percentiles of accepted submissions (each copies
//! 1 MiB into a preallocated slot; under `drop_oldest` with a full queue after checking the data
//! and evicting the oldest sample) and of refused ones, and what the trainer got through; and
//! the same copies with the trainer stopped, for the uncontended floor.

use std::ffi::CString;
use std::ptr::{null, null_mut};
use std::time::{Duration, Instant};

use prfl::ffi::api::{
    prfl_config_default, prfl_create, prfl_destroy, prfl_init_reward, prfl_last_error,
    prfl_load_generator, prfl_queue_stats, prfl_start, prfl_stop, prfl_submit_labeled,
};
use prfl::ffi::status::PrflStatus::{self, PRFL_ERR_QUEUE_FULL, PRFL_OK};
use prfl::ffi::{
    PrflBackpressure, PrflConfig, PrflDevice, PrflQueueStats, PrflRuntime, PrflStepMode,
};
use prfl::model::checkpoint::save_checkpoint;
use prfl::model::init::random_weights;
use prfl::model::names::Layout;
use prfl::model::{ModelType, WanConfig};
use prfl::schedule::rng::Rng;

#[derive(clap::Args, Debug)]
pub struct BenchQueueArgs {
    /// Submissions per policy.
    #[arg(long, default_value_t = 3000)]
    samples: usize,
    /// Microseconds between submissions (0 = as fast as possible).
    #[arg(long, default_value_t = 1000)]
    interval_us: u64,
    /// Queue slots.
    #[arg(long, default_value_t = 16)]
    capacity: u32,
    /// Samples per training step.
    #[arg(long, default_value_t = 2)]
    batch: u32,
    /// Distinct source buffers cycled through, so that most copies read memory, not cache.
    #[arg(long, default_value_t = 16)]
    buffers: usize,
}

const SHAPE: [u32; 4] = [256, 4, 16, 16]; // 262144 floats = 1 MiB
const TEXT_LEN: u32 = 8;
const TEXT_DIM: u32 = 32;

fn tiny() -> WanConfig {
    WanConfig {
        model_type: ModelType::T2V,
        in_dim: SHAPE[0] as usize,
        out_dim: SHAPE[0] as usize,
        dim: 16,
        ffn_dim: 24,
        freq_dim: 16,
        text_dim: TEXT_DIM as usize,
        image_dim: None,
        num_heads: 2,
        num_layers: 2,
        eps: 1e-6,
        text_len: 512,
    }
}

fn error(what: &str, s: PrflStatus) -> String {
    // SAFETY: prfl_last_error returns a valid NUL-terminated string.
    let msg = unsafe { std::ffi::CStr::from_ptr(prfl_last_error()) };
    format!("{what}: {s:?}: {}", msg.to_string_lossy())
}

fn check(what: &str, s: PrflStatus) -> Result<(), String> {
    if s == PRFL_OK {
        Ok(())
    } else {
        Err(error(what, s))
    }
}

/// A runtime handle usable from the producer thread (the C API is thread-safe).
struct Handle(*mut PrflRuntime);
unsafe impl Send for Handle {}
unsafe impl Sync for Handle {}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: a live handle, destroyed once.
        unsafe { prfl_destroy(self.0) };
    }
}

/// Nearest-rank percentile of sorted microsecond values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

struct Row {
    policy: String,
    accepted: Vec<f64>,
    refused: Vec<f64>,
    stats: PrflQueueStats,
    seconds: f64,
}

fn run_policy(
    a: &BenchQueueArgs,
    generator: &CString,
    policy: PrflBackpressure,
    name: &'static str,
    trainer: bool,
    sources: &[Vec<f32>],
    text: &[f32],
) -> Result<Row, String> {
    let mut c = PrflConfig::default();
    // SAFETY: valid pointers throughout; the handle outlives every call.
    unsafe { prfl_config_default(&mut c) };
    c.device = PrflDevice::PRFL_DEVICE_CPU as i32;
    c.queue_capacity = a.capacity;
    c.backpressure = policy as i32;
    [
        c.latent_channels,
        c.latent_frames,
        c.latent_height,
        c.latent_width,
    ] = SHAPE;
    c.text_len = TEXT_LEN;
    c.text_dim = TEXT_DIM;
    c.batch_size = a.batch;
    c.reward_blocks = 1;
    c.recompute = 0;
    let mut rt = null_mut();
    check("prfl_create", unsafe { prfl_create(&c, &mut rt) })?;
    let rt = Handle(rt);
    check("prfl_load_generator", unsafe {
        prfl_load_generator(rt.0, generator.as_ptr())
    })?;
    check("prfl_init_reward", unsafe { prfl_init_reward(rt.0) })?;
    if trainer {
        check("prfl_start", unsafe {
            prfl_start(rt.0, PrflStepMode::PRFL_STEP_REWARD as i32)
        })?;
    }

    let interval = Duration::from_micros(a.interval_us);
    let start = Instant::now();
    let (accepted, refused) = std::thread::scope(|scope| {
        let rt = &rt;
        scope
            .spawn(move || -> Result<(Vec<f64>, Vec<f64>), String> {
                let mut accepted = Vec::with_capacity(a.samples);
                let mut refused = Vec::with_capacity(a.samples);
                let mut next = Instant::now();
                for i in 0..a.samples {
                    let src = &sources[i % sources.len()];
                    let t0 = Instant::now();
                    // SAFETY: arrays of the stated lengths; a live handle.
                    let s = unsafe {
                        prfl_submit_labeled(
                            rt.0,
                            src.as_ptr(),
                            src.len(),
                            text.as_ptr(),
                            text.len(),
                            null(),
                            0,
                            (i % 2) as f32,
                        )
                    };
                    let us = t0.elapsed().as_secs_f64() * 1e6;
                    match s {
                        PRFL_OK => accepted.push(us),
                        PRFL_ERR_QUEUE_FULL => refused.push(us),
                        s => return Err(error("prfl_submit_labeled", s)),
                    }
                    next += interval;
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
                Ok((accepted, refused))
            })
            .join()
            .map_err(|_| "the producer thread panicked".to_string())?
    })?;
    let seconds = start.elapsed().as_secs_f64();
    check("prfl_stop", unsafe { prfl_stop(rt.0) })?;
    let mut stats = PrflQueueStats {
        struct_size: std::mem::size_of::<PrflQueueStats>() as u32,
        ..Default::default()
    };
    check("prfl_queue_stats", unsafe {
        prfl_queue_stats(rt.0, &mut stats)
    })?;
    Ok(Row {
        policy: if trainer {
            name.to_string()
        } else {
            format!("{name}, idle")
        },
        accepted,
        refused,
        stats,
        seconds,
    })
}

pub fn run(a: &BenchQueueArgs) -> Result<(), String> {
    if a.samples == 0 || a.buffers == 0 {
        return Err("--samples and --buffers must be positive".into());
    }
    let dir = std::env::temp_dir().join(format!("prfl-bench-queue-{}", std::process::id()));
    let cfg = tiny();
    save_checkpoint(&random_weights(&cfg, 0), &cfg, Layout::Original, &dir, None)
        .map_err(|e| e.to_string())?;
    let generator = CString::new(dir.to_string_lossy().as_bytes()).map_err(|e| e.to_string())?;
    let n: usize = SHAPE.iter().map(|&d| d as usize).product();
    let mut rng = Rng::seed_from_u64(1);
    let sources: Vec<Vec<f32>> = (0..a.buffers)
        .map(|_| {
            let mut v = vec![0.0f32; n];
            rng.fill_normal(&mut v);
            v
        })
        .collect();
    let mut text = vec![0.0f32; (TEXT_LEN * TEXT_DIM) as usize];
    rng.fill_normal(&mut text);

    println!(
        "bench-queue: {} submissions of a {:?} latent ({:.2} MiB) every {} us per policy, \
         queue of {} slots, background trainer on a tiny model (batch {}), {} threads",
        a.samples,
        SHAPE,
        (n * 4) as f64 / (1 << 20) as f64,
        a.interval_us,
        a.capacity,
        a.batch,
        std::thread::available_parallelism().map_or(1, |p| p.get())
    );
    let mut rows = Vec::new();
    let reject = PrflBackpressure::PRFL_BACKPRESSURE_REJECT_NEWEST;
    let drop = PrflBackpressure::PRFL_BACKPRESSURE_DROP_OLDEST;
    for (policy, name, trainer) in [
        (reject, "reject_newest", true),
        (drop, "drop_oldest", true),
        (drop, "drop_oldest", false),
    ] {
        rows.push(run_policy(
            a, &generator, policy, name, trainer, &sources, &text,
        )?);
    }
    let _ = std::fs::remove_dir_all(&dir);

    println!(
        "\n{:<20} {:>9} {:>9} {:>9} {:>9} {:>9} | {:>8} {:>9} {:>9} | {:>8} {:>8}",
        "policy",
        "accepted",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "max us",
        "refused",
        "p50 us",
        "p99 us",
        "dropped",
        "consumed"
    );
    for r in &mut rows {
        r.accepted.sort_by(f64::total_cmp);
        r.refused.sort_by(f64::total_cmp);
        let acc = &r.accepted;
        let rej = &r.refused;
        println!(
            "{:<20} {:>9} {:>9.1} {:>9.1} {:>9.1} {:>9.1} | {:>8} {:>9.1} {:>9.1} | {:>8} {:>8}",
            r.policy,
            acc.len(),
            percentile(acc, 50.0),
            percentile(acc, 99.0),
            percentile(acc, 99.9),
            acc.last().copied().unwrap_or(f64::NAN),
            rej.len(),
            percentile(rej, 50.0),
            percentile(rej, 99.0),
            r.stats.dropped_oldest,
            r.stats.consumed,
        );
    }
    for r in &rows {
        let gbs = r.accepted.len() as f64 * (n * 4) as f64 / r.seconds / 1e9;
        println!(
            "{}: {:.1} s, {:.2} GB/s copied into the queue, trainer consumed {} samples",
            r.policy, r.seconds, gbs, r.stats.consumed
        );
    }
    let worst = rows
        .iter()
        .filter(|r| !r.policy.ends_with("idle"))
        .map(|r| percentile(&r.accepted, 99.0))
        .fold(0.0f64, f64::max);
    println!(
        "\ngoal: p99 of an accepted 1 MiB submission < 50 us: {} (worst p99 {:.1} us)",
        if worst < 50.0 { "met" } else { "NOT met" },
        worst
    );
    Ok(())
}
