//! The C ABI defects an outside adversarial test found (issue 15, point 6), each pinned by a
//! test: non-regular files where files are expected (FIFOs must not hang a load), a queue too
//! large for memory (refused before allocating), stale temporaries of killed saves (removed by
//! later saves), and queue statistics read while the trainer steps (always consistent).

use std::collections::HashMap;
use std::path::Path;
use std::ptr::null_mut;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use prfl::ffi::api::*;
use prfl::ffi::status::PrflStatus::{self, *};
use prfl::ffi::{PrflBackpressure, PrflConfig, PrflQueueStats, PrflStepMode};
use prfl::safetensors::write_safetensors;
use prfl::session::{SampleSizes, Session, SessionConfig, MANIFEST};
use prfl::tensor::HostTensor;

// ------------------------------------------------------------------ fixtures

#[path = "common/ffi_host.rs"]
mod ffi_host;
use ffi_host::*;

fn queue_stats(rt: &Rt) -> PrflQueueStats {
    let mut s = PrflQueueStats {
        struct_size: std::mem::size_of::<PrflQueueStats>() as u32,
        ..Default::default()
    };
    // SAFETY: valid pointers.
    ok(unsafe { prfl_queue_stats(rt.0, &mut s) });
    s
}

fn check_invariants(s: &PrflQueueStats) {
    assert_eq!(
        s.submitted,
        s.accepted + s.rejected_full + s.rejected_invalid,
        "{s:?}"
    );
    assert_eq!(
        s.accepted,
        s.consumed + s.dropped_oldest + s.queued as u64,
        "{s:?}"
    );
    assert!(s.queued as u64 <= s.capacity as u64, "{s:?}");
}

/// Runs `call` on its own thread and fails the test if it does not return within `limit`
/// (a regression then fails instead of hanging the suite). Returns the call's status and the
/// last error of that thread.
fn within(
    limit: Duration,
    call: impl FnOnce() -> PrflStatus + Send + 'static,
) -> (PrflStatus, String) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let status = call();
        let _ = tx.send((status, last_error()));
    });
    match rx.recv_timeout(limit) {
        Ok(r) => r,
        Err(_) => panic!("the call did not return within {limit:?} (it blocks)"),
    }
}

// ------------------------------------------------------------------ non-regular files

#[cfg(unix)]
fn mkfifo(path: &Path) {
    let c = cstr(path);
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o600) },
        0,
        "mkfifo {}",
        path.display()
    );
}

#[cfg(unix)]
fn assert_refused(what: &str, (status, msg): (PrflStatus, String), needle: &str) {
    assert_ne!(status, PRFL_OK, "{what}: a non-regular file was accepted");
    assert_ne!(status, PRFL_ERR_PANIC, "{what}: {msg}");
    assert!(msg.contains(needle), "{what}: {status:?} {msg}");
}

#[cfg(unix)]
#[test]
fn fifos_where_files_are_expected_are_refused_at_once() {
    const LIMIT: Duration = Duration::from_secs(20);
    let dir = temp_dir("fifo");
    let rt = std::sync::Arc::new(ready(&config()));

    // The generator: a FIFO named directly, as the weights of a directory, and as config.json.
    let fresh = std::sync::Arc::new(create(&config()));
    let fifo = dir.join("generator.safetensors");
    mkfifo(&fifo);
    let (r, p) = (fresh.clone(), cstr(&fifo));
    // SAFETY: a live handle and a valid string (kept alive by the closure).
    let res = within(LIMIT, move || unsafe {
        prfl_load_generator(r.0, p.as_ptr())
    });
    assert_refused("generator FIFO", res, "FIFO");

    let gdir = dir.join("gen-dir");
    std::fs::create_dir(&gdir).unwrap();
    mkfifo(&gdir.join("diffusion_pytorch_model.safetensors"));
    let (r, p) = (fresh.clone(), cstr(&gdir));
    // SAFETY: as above.
    let res = within(LIMIT, move || unsafe {
        prfl_load_generator(r.0, p.as_ptr())
    });
    assert_refused("generator directory with FIFO weights", res, "FIFO");

    let cdir = dir.join("config-dir");
    std::fs::create_dir(&cdir).unwrap();
    let weights = "diffusion_pytorch_model.safetensors";
    std::fs::copy(generator_dir().join(weights), cdir.join(weights)).unwrap();
    mkfifo(&cdir.join("config.json"));
    let (r, p) = (fresh.clone(), cstr(&cdir));
    // SAFETY: as above.
    let res = within(LIMIT, move || unsafe {
        prfl_load_generator(r.0, p.as_ptr())
    });
    assert_refused("config.json FIFO", res, "FIFO");

    // A reward checkpoint.
    let reward = dir.join("reward.safetensors");
    mkfifo(&reward);
    let (r, p) = (rt.clone(), cstr(&reward));
    // SAFETY: as above.
    let res = within(LIMIT, move || unsafe { prfl_load_reward(r.0, p.as_ptr()) });
    assert_refused("reward FIFO", res, "FIFO");

    // A save directory whose manifest is a FIFO.
    let save = dir.join("save-manifest");
    std::fs::create_dir(&save).unwrap();
    mkfifo(&save.join(MANIFEST));
    let (r, p) = (rt.clone(), cstr(&save));
    // SAFETY: as above.
    let res = within(LIMIT, move || unsafe { prfl_load(r.0, p.as_ptr()) });
    assert_refused("manifest FIFO", res, "FIFO");

    // A hostile manifest naming a FIFO (and a directory) inside the save directory.
    for (tag, make) in [
        ("fifo", mkfifo as fn(&Path)),
        ("dir", |p: &Path| std::fs::create_dir(p).unwrap()),
    ] {
        let save = dir.join(format!("save-names-{tag}"));
        std::fs::create_dir(&save).unwrap();
        make(&save.join("reward-1.safetensors"));
        let meta = HashMap::from([
            ("format".to_string(), "prfl-runtime/1".to_string()),
            ("generation".to_string(), "1".to_string()),
            ("reward".to_string(), "reward-1.safetensors".to_string()),
        ]);
        write_safetensors(
            &save.join(MANIFEST),
            std::iter::empty::<(&str, &HostTensor)>(),
            Some(&meta),
        )
        .unwrap();
        let (r, p) = (rt.clone(), cstr(&save));
        // SAFETY: as above.
        let res = within(LIMIT, move || unsafe { prfl_load(r.0, p.as_ptr()) });
        let needle = if tag == "fifo" { "FIFO" } else { "a directory" };
        assert_refused(&format!("manifest naming a {tag}"), res, needle);
    }

    // The runtime is still usable.
    ok(submit_labeled(&rt, 0, 1.0));
    std::fs::remove_dir_all(&dir).unwrap();
}

// ------------------------------------------------------------------ queue memory

#[test]
fn a_queue_larger_than_memory_is_refused_before_allocating() {
    // 2^20 slots of 2^20-channel latents: 2^20 x 32 MiB = 32 TiB.
    let mut c = config();
    c.queue_capacity = 1 << 20;
    c.latent_channels = 1 << 20;
    c.latent_frames = 1;
    let started = Instant::now();
    let mut rt = null_mut();
    // SAFETY: valid pointers.
    let s = unsafe { prfl_create(&c, &mut rt) };
    let msg = last_error();
    assert_eq!(s, PRFL_ERR_INVALID_ARGUMENT, "{msg}");
    assert!(rt.is_null());
    assert!(
        msg.contains("queue") && msg.contains("physical memory"),
        "{msg}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // The Rust API: the same check, including sizes whose product overflows u64.
    let sizes = SampleSizes::new([1 << 20, 1, 2, 2], [TEXT_LEN, TEXT_DIM], [0, 0]).unwrap();
    let mut cfg = SessionConfig::new(sizes);
    cfg.device = "cpu".parse().unwrap();
    cfg.queue_capacity = 1 << 20;
    assert!(cfg.queue_bytes().unwrap() > prfl::session::queue_memory_limit());
    let started = Instant::now();
    let e = Session::new(cfg.clone())
        .err()
        .expect("a 32 TiB queue was accepted");
    assert!(matches!(e, prfl::Error::InvalidArgument(_)), "{e}");
    assert!(e.to_string().contains("physical memory"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(2));

    cfg.sizes = SampleSizes::new([1 << 30, 1 << 10, 1 << 10, 1 << 10], [1, 1], [0, 0]).unwrap();
    cfg.queue_capacity = u32::MAX as usize;
    assert_eq!(cfg.queue_bytes(), None);
    let e = Session::new(cfg)
        .err()
        .expect("an overflowing queue was accepted");
    assert!(e.to_string().contains("(overflow)"), "{e}");

    // A queue that fits is still created.
    drop(create(&config()));
}

// ------------------------------------------------------------------ stale temporaries

#[test]
fn saves_remove_stale_temporaries_of_their_own_naming_only() {
    let rt = ready(&config());
    let dir = temp_dir("stale");
    let c = cstr(&dir);
    // SAFETY: valid pointers.
    ok(unsafe { prfl_save(rt.0, c.as_ptr()) });
    // What saves killed midway leave (writers that no longer run: no process has these ids),
    // then files that are not ours or not stale.
    let stale = [
        ".prfl-runtime.safetensors.tmp-999999999-0",
        ".reward-2.safetensors.tmp-4000000000-17",
        ".prfl-7.safetensors.tmp-999999999-3",
    ];
    let kept = [
        "notes.txt",
        ".notes.txt.tmp-999999999-0", // not one of our file names
        ".reward-2.safetensors.tmp-999999999", // not our exact pattern
        "reward-2.safetensors.tmp-999999999-1", // no leading dot
        ".reward-2.safetensors.tmp-999999999-x1", // not our exact pattern
    ];
    for name in stale.iter().chain(&kept) {
        std::fs::write(dir.join(name), b"partial").unwrap();
    }
    // A temporary of a process that still runs (this one) may be a write in progress.
    let live = format!(".reward-9.safetensors.tmp-{}-123456", std::process::id());
    std::fs::write(dir.join(&live), b"in progress").unwrap();
    // SAFETY: valid pointers.
    ok(unsafe { prfl_save(rt.0, c.as_ptr()) });
    for name in stale {
        assert!(!dir.join(name).exists(), "{name} was left behind");
    }
    for name in kept.iter().chain([&live.as_str()]) {
        assert!(dir.join(name).exists(), "{name} was removed");
    }
    assert_eq!(std::fs::read(dir.join("notes.txt")).unwrap(), b"partial");
    // The set itself still loads.
    // SAFETY: valid pointers.
    ok(unsafe { prfl_load(rt.0, c.as_ptr()) });
    std::fs::remove_dir_all(&dir).unwrap();
}

// ------------------------------------------------------------------ queue statistics

/// Reads the statistics from one thread as fast as it can while four producers submit (some
/// of them invalid samples) and the background trainer consumes, under both policies: every
/// snapshot satisfies the invariants.
#[test]
fn queue_stats_are_consistent_while_producers_and_the_trainer_run() {
    for policy in [
        PrflBackpressure::PRFL_BACKPRESSURE_REJECT_NEWEST,
        PrflBackpressure::PRFL_BACKPRESSURE_DROP_OLDEST,
    ] {
        let c = PrflConfig {
            queue_capacity: 4,
            backpressure: policy as i32,
            ..config()
        };
        let rt = ready(&c);
        ok(unsafe { prfl_start(rt.0, PrflStepMode::PRFL_STEP_REWARD as i32) });
        let done = AtomicBool::new(false);
        let snapshots = std::thread::scope(|scope| {
            let reader = scope.spawn(|| {
                let mut n = 0u64;
                let mut last = queue_stats(&rt);
                while !done.load(Ordering::Relaxed) {
                    let s = queue_stats(&rt);
                    check_invariants(&s);
                    // Counters only grow.
                    assert!(
                        s.accepted >= last.accepted && s.consumed >= last.consumed,
                        "{s:?}"
                    );
                    assert!(s.dropped_oldest >= last.dropped_oldest, "{s:?}");
                    last = s;
                    n += 1;
                }
                n
            });
            let producers: Vec<_> = (0..4)
                .map(|p| {
                    let rt = &rt;
                    scope.spawn(move || {
                        for k in 0..2000 {
                            let index = p * 1000 + k;
                            // Every seventh an invalid label, refused and counted.
                            let label = if k % 7 == 0 { 0.5 } else { (k % 2) as f32 };
                            match submit_labeled(rt, index, label) {
                                PRFL_OK | PRFL_ERR_QUEUE_FULL | PRFL_ERR_INVALID_ARGUMENT => {}
                                s => panic!("{s:?}: {}", last_error()),
                            }
                        }
                    })
                })
                .collect();
            for p in producers {
                p.join().unwrap();
            }
            done.store(true, Ordering::Relaxed);
            reader.join().unwrap()
        });
        ok(unsafe { prfl_stop(rt.0) });
        let s = queue_stats(&rt);
        check_invariants(&s);
        assert_eq!(s.submitted, 8000, "{s:?}");
        assert!(s.rejected_invalid > 0 && s.consumed > 0, "{s:?}");
        assert!(snapshots > 100, "only {snapshots} snapshots read");
    }
}
