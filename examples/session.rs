//! A Rust host of the safe session API (no C involved): it builds a tiny random Wan2.1
//! generator in a temporary folder, streams labelled latents from two producer threads while the
//! reward model trains in the background, scores a few probes, saves the trainers, reloads them
//! into a new session and checks that the scores match. Exits non-zero if they do not.
//!
//! Run with `cargo run --example session` (a few seconds in a debug build).

use std::path::PathBuf;
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use prfl::backend::device::DeviceSpec;
use prfl::model::checkpoint::save_checkpoint;
use prfl::model::init::random_weights;
use prfl::model::names::Layout;
use prfl::model::ModelType;
use prfl::schedule::rng::Rng;
use prfl::session::{SampleSizes, Session, SessionConfig, StepMode};
use prfl::testutil::tiny_wan;
use prfl::{Error, Result};

/// Latent `[C, F, H, W]` and text `[L, D]` of the tiny model.
const LATENT: [usize; 4] = [16, 2, 2, 4];
const TEXT: [usize; 2] = [2, 8];
/// Clips each producer thread submits.
const PER_PRODUCER: usize = 24;

fn config(sizes: SampleSizes) -> SessionConfig {
    SessionConfig {
        device: DeviceSpec::Cpu,
        queue_capacity: 8,
        batch_size: 2,
        reward_blocks: 1,
        reward_head_lr: 1e-3,
        prfl_steps: 3,
        recompute: false,
        seed: 7,
        ..SessionConfig::new(sizes)
    }
}

/// A session on the tiny generator saved in `generator`.
fn open(generator: &PathBuf) -> Result<Session> {
    let sizes = SampleSizes::new(LATENT, TEXT, [0, 0])?;
    let session = Session::new(config(sizes))?;
    session.load_generator(generator)?;
    Ok(session)
}

/// One producer: labelled clips whose label is the sign of their mean ("good" clips are
/// brighter), retried while the queue is full.
fn produce(session: &Session, seed: u64) -> Result<usize> {
    let s = *session.sizes();
    let mut rng = Rng::seed_from_u64(seed);
    let mut latent = vec![0.0f32; s.latent];
    let mut text = vec![0.0f32; s.text];
    let mut retries = 0;
    for i in 0..PER_PRODUCER {
        rng.fill_normal(&mut latent);
        rng.fill_normal(&mut text);
        let label = (i % 2) as f32;
        let offset = if label == 1.0 { 0.5 } else { -0.5 };
        latent.iter_mut().for_each(|v| *v += offset);
        loop {
            match session.submit_labelled(&latent, &text, &[], label) {
                Ok(()) => break,
                Err(Error::QueueFull(_)) => {
                    retries += 1;
                    thread::sleep(Duration::from_millis(1));
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(retries)
}

fn run() -> Result<bool> {
    let tmp = std::env::temp_dir().join(format!("prfl-example-session-{}", std::process::id()));
    let generator = tmp.join("generator");
    let saved = tmp.join("trainers");
    let wan = tiny_wan(ModelType::T2V, 16, 2, 2, TEXT[1]);
    save_checkpoint(
        &random_weights(&wan, 1),
        &wan,
        Layout::Original,
        &generator,
        None,
    )?;

    let session = open(&generator)?;
    println!("session on {}", session.device_name());
    session.init_reward()?;
    session.start_background(StepMode::Reward)?;

    // Two producers stream while the background trainer consumes.
    let start = Instant::now();
    let retries = thread::scope(|scope| {
        let producers: Vec<_> = (0..2)
            .map(|p| {
                let session = session.clone();
                scope.spawn(move || produce(&session, 100 + p))
            })
            .collect();
        producers
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Panic("a producer".into())))
            })
            .sum::<Result<usize>>()
    })?;
    // Let the trainer drain what is left of full batches.
    while session.queue_stats()?.queued >= session.config().batch_size {
        thread::sleep(Duration::from_millis(5));
    }
    session.stop_background()?;
    let q = session.queue_stats()?;
    println!(
        "streamed {} clips from 2 threads in {:.2} s ({retries} retries on a full queue); the \
         background trainer consumed {}",
        q.accepted,
        start.elapsed().as_secs_f64(),
        q.consumed
    );

    // Probes: two bright, two dark latents, scored at a mid timestep.
    let s = *session.sizes();
    let mut rng = Rng::seed_from_u64(9);
    let mut probes = vec![0.0f32; 4 * s.latent];
    rng.fill_normal(&mut probes);
    for (i, v) in probes.iter_mut().enumerate() {
        *v += if i / s.latent < 2 { 0.5 } else { -0.5 };
    }
    let mut text = vec![0.0f32; 4 * s.text];
    rng.fill_normal(&mut text);
    let timesteps = [500.0f32; 4];
    let before = session.score(&probes, &timesteps, &text)?;
    println!("scores: {before:?}");

    session.save(&saved)?;
    drop(session);

    let reloaded = open(&generator)?;
    reloaded.load(&saved)?;
    let after = reloaded.score(&probes, &timesteps, &text)?;
    println!("scores after reloading: {after:?}");
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(before == after)
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => {
            println!("the reloaded session scores the same");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            eprintln!("the reloaded session's scores differ");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
