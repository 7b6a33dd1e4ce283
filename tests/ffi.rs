//! The C ABI, called from Rust exactly as C would call it (raw pointers, status codes): four
//! producers and the background trainer consuming every sample exactly once; a table of bad
//! inputs covering every function; the two backpressure policies' counters; no allocation on
//! the submission path; save/load continuing bit-for-bit; panics caught at the boundary; the
//! log callback; a generator loaded from memory.
//!
//! Models are tiny (width 16, two blocks, 2 x 2 x 4 latents) so the whole file runs in seconds.

use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::cell::Cell;
use std::ffi::{c_char, c_void, CStr, CString};
use std::ptr::{null, null_mut};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prfl::ffi::api::*;
use prfl::ffi::status::PrflStatus::{self, *};
use prfl::ffi::testing;
use prfl::ffi::{
    PrflBackpressure, PrflConfig, PrflDevice, PrflQueueStats, PrflRewardLoss, PrflRuntime,
    PrflSampleConfig, PrflSampleStats, PrflSolver, PrflStepMode, PrflStepStats,
};
use prfl::model::init::random_weights;

// ------------------------------------------------------------------ allocation counting

/// Counts allocations made by the current thread (the submission path must make none).
struct CountingAlloc;

thread_local! {
    static THREAD_ALLOCS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: AllocLayout) -> *mut u8 {
        let _ = THREAD_ALLOCS.try_with(|c| c.set(c.get() + 1));
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: AllocLayout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn alloc_zeroed(&self, layout: AllocLayout) -> *mut u8 {
        let _ = THREAD_ALLOCS.try_with(|c| c.set(c.get() + 1));
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: AllocLayout, new_size: usize) -> *mut u8 {
        let _ = THREAD_ALLOCS.try_with(|c| c.set(c.get() + 1));
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn thread_allocs() -> u64 {
    THREAD_ALLOCS.with(Cell::get)
}

// ------------------------------------------------------------------ fixtures

#[path = "common/ffi_host.rs"]
mod ffi_host;
use ffi_host::*;

fn submit_pair(rt: &Rt, index: usize) -> PrflStatus {
    let (w, l, t) = (latent(index), latent(index + 1000), text(index));
    // SAFETY: arrays of the stated lengths.
    unsafe {
        prfl_submit_pair(
            rt.0,
            w.as_ptr(),
            l.as_ptr(),
            LATENT,
            t.as_ptr(),
            TEXT,
            null(),
            0,
        )
    }
}

fn queue_stats(rt: &Rt) -> PrflQueueStats {
    let mut s = PrflQueueStats {
        struct_size: std::mem::size_of::<PrflQueueStats>() as u32,
        ..Default::default()
    };
    // SAFETY: valid pointers.
    ok(unsafe { prfl_queue_stats(rt.0, &mut s) });
    s
}

fn step(rt: &Rt, mode: PrflStepMode) -> (PrflStatus, PrflStepStats) {
    let mut s = PrflStepStats::empty(mode);
    s.struct_size = std::mem::size_of::<PrflStepStats>() as u32;
    // SAFETY: valid pointers.
    let status = unsafe { prfl_step(rt.0, mode as i32, &mut s) };
    (status, s)
}

fn score(rt: &Rt, index: usize, t: f32) -> f32 {
    let (l, x) = (latent(index), text(index));
    let mut out = f32::NAN;
    // SAFETY: valid pointers.
    ok(unsafe { prfl_score(rt.0, l.as_ptr(), LATENT, t, x.as_ptr(), TEXT, &mut out) });
    out
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
}

// ------------------------------------------------------------------ tests

#[test]
fn four_producers_and_the_background_trainer_consume_every_sample_exactly_once() {
    const PER_PRODUCER: usize = 40;
    let c = PrflConfig {
        queue_capacity: 6,
        ..config()
    };
    let rt = ready(&c);
    // SAFETY: a live handle.
    unsafe { testing::record_consumed(rt.0, true) };
    ok(unsafe { prfl_start(rt.0, PrflStepMode::PRFL_STEP_REWARD as i32) });
    std::thread::scope(|scope| {
        for p in 0..4 {
            let rt = &rt;
            scope.spawn(move || {
                for k in 0..PER_PRODUCER {
                    let index = p * PER_PRODUCER + k;
                    // A full queue is refused, not lost: retry until taken.
                    loop {
                        match submit_labeled(rt, index, (index % 2) as f32) {
                            PRFL_OK => break,
                            PRFL_ERR_QUEUE_FULL => std::thread::yield_now(),
                            s => panic!("{s:?}: {}", last_error()),
                        }
                    }
                }
            });
        }
    });
    let total = 4 * PER_PRODUCER as u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while queue_stats(&rt).consumed < total {
        assert!(Instant::now() < deadline, "{:?}", queue_stats(&rt));
        std::thread::sleep(Duration::from_millis(5));
    }
    ok(unsafe { prfl_stop(rt.0) });
    let s = queue_stats(&rt);
    check_invariants(&s);
    assert_eq!((s.accepted, s.consumed, s.queued), (total, total, 0));
    assert_eq!((s.dropped_oldest, s.rejected_invalid), (0, 0));
    // SAFETY: a live handle.
    let mut seen = unsafe { testing::take_consumed(rt.0) };
    seen.sort_by(f32::total_cmp);
    let want: Vec<f32> = (0..total).map(|i| i as f32).collect();
    assert_eq!(seen, want, "every sample consumed exactly once");
    // The trainer really trained: 80 optimiser steps of batch 2.
    let (st, stats) = step(&rt, PrflStepMode::PRFL_STEP_REWARD);
    assert_eq!(st, PRFL_ERR_NOT_ENOUGH_SAMPLES);
    assert!(stats.step == 0, "untouched on failure");
}

#[test]
fn backpressure_policies_count_what_they_do() {
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
        // SAFETY: a live handle.
        unsafe { testing::record_consumed(rt.0, true) };
        let statuses: Vec<PrflStatus> = (0..10).map(|i| submit_labeled(&rt, i, 1.0)).collect();
        // A sample with NaN never displaces a queued one: DROP_OLDEST checks before evicting,
        // REJECT_NEWEST refuses a full queue without reading the data.
        let mut bad = latent(99);
        bad[5] = f32::NAN;
        let t = text(0);
        let s = unsafe {
            prfl_submit_labeled(rt.0, bad.as_ptr(), LATENT, t.as_ptr(), TEXT, null(), 0, 1.0)
        };
        let q = queue_stats(&rt);
        check_invariants(&q);
        assert_eq!((q.submitted, q.queued), (11, 4));
        match policy {
            PrflBackpressure::PRFL_BACKPRESSURE_REJECT_NEWEST => {
                assert_eq!(
                    (s, q.rejected_full, q.rejected_invalid),
                    (PRFL_ERR_QUEUE_FULL, 7, 0)
                )
            }
            PrflBackpressure::PRFL_BACKPRESSURE_DROP_OLDEST => {
                assert_eq!(
                    (s, q.rejected_full, q.rejected_invalid),
                    (PRFL_ERR_NON_FINITE, 0, 1)
                )
            }
        }
        ok(step(&rt, PrflStepMode::PRFL_STEP_REWARD).0);
        ok(step(&rt, PrflStepMode::PRFL_STEP_REWARD).0);
        let consumed = unsafe { testing::take_consumed(rt.0) };
        match policy {
            PrflBackpressure::PRFL_BACKPRESSURE_REJECT_NEWEST => {
                assert_eq!(&statuses[4..], &[PRFL_ERR_QUEUE_FULL; 6]);
                assert_eq!((q.accepted, q.dropped_oldest), (4, 0));
                assert_eq!(consumed, [0.0, 1.0, 2.0, 3.0], "the oldest were kept");
            }
            PrflBackpressure::PRFL_BACKPRESSURE_DROP_OLDEST => {
                assert!(statuses.iter().all(|&s| s == PRFL_OK));
                assert_eq!((q.accepted, q.dropped_oldest), (10, 6));
                assert_eq!(consumed, [6.0, 7.0, 8.0, 9.0], "the newest were kept");
            }
        }
        let q = queue_stats(&rt);
        check_invariants(&q);
        assert_eq!((q.consumed, q.queued), (4, 0));
    }
}

#[test]
fn steps_take_their_kind_and_consume_nothing_when_short() {
    let rt = ready(&config());
    ok(submit_pair(&rt, 0));
    ok(submit_labeled(&rt, 1, 1.0));
    // CE needs two labelled clips: the pair stays queued, nothing is consumed.
    let (s, _) = step(&rt, PrflStepMode::PRFL_STEP_REWARD);
    assert_eq!(s, PRFL_ERR_NOT_ENOUGH_SAMPLES);
    assert!(
        last_error().contains("1 labelled clips"),
        "{}",
        last_error()
    );
    assert_eq!((queue_stats(&rt).queued, queue_stats(&rt).consumed), (2, 0));
    // PRFL takes either kind.
    let (s, stats) = step(&rt, PrflStepMode::PRFL_STEP_PRFL);
    assert_eq!(s, PRFL_OK, "{}", last_error());
    assert_eq!(stats.mode, PrflStepMode::PRFL_STEP_PRFL as i32);
    assert_eq!(stats.samples, 2);
    assert!(stats.loss.is_finite() && stats.reward > 0.0 && stats.reward < 1.0);
    assert!(stats.mid_step <= 1 && stats.peak_bytes > 0 && stats.accuracy.is_nan());
    assert_eq!(queue_stats(&rt).consumed, 2);
    // Reward steps on labelled clips report accuracy and a gradient norm.
    for i in 0..2 {
        ok(submit_labeled(&rt, 10 + i, i as f32));
    }
    let (s, stats) = step(&rt, PrflStepMode::PRFL_STEP_REWARD);
    assert_eq!(s, PRFL_OK, "{}", last_error());
    assert_eq!(
        (stats.step, stats.samples, stats.skipped_nonfinite),
        (1, 2, 0)
    );
    assert!(stats.loss > 0.0 && stats.grad_norm > 0.0 && stats.reward.is_nan());
}

#[test]
fn bt_pairs_and_lora_prfl_in_the_background() {
    let c = PrflConfig {
        reward_loss: PrflRewardLoss::PRFL_LOSS_BT as i32,
        lora_rank: 2,
        lora_alpha: 2.0,
        ..config()
    };
    let rt = ready(&c);
    for i in 0..2 {
        ok(submit_pair(&rt, i));
    }
    let (s, stats) = step(&rt, PrflStepMode::PRFL_STEP_REWARD);
    assert_eq!(s, PRFL_OK, "{}", last_error());
    assert_eq!(stats.samples, 2);
    ok(unsafe { prfl_start(rt.0, PrflStepMode::PRFL_STEP_PRFL as i32) });
    for i in 0..4 {
        ok(submit_labeled(&rt, i, 1.0));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while queue_stats(&rt).consumed < 6 {
        assert!(Instant::now() < deadline, "{:?}", queue_stats(&rt));
        std::thread::sleep(Duration::from_millis(5));
    }
    ok(unsafe { prfl_stop(rt.0) });
    check_invariants(&queue_stats(&rt));
}

#[test]
fn the_submission_path_does_not_allocate() {
    for policy in [
        PrflBackpressure::PRFL_BACKPRESSURE_REJECT_NEWEST,
        PrflBackpressure::PRFL_BACKPRESSURE_DROP_OLDEST,
    ] {
        let c = PrflConfig {
            queue_capacity: 4,
            backpressure: policy as i32,
            ..config()
        };
        let rt = create(&c);
        let (l, t) = (latent(1), text(1));
        let submit = || unsafe {
            prfl_submit_labeled(rt.0, l.as_ptr(), LATENT, t.as_ptr(), TEXT, null(), 0, 1.0)
        };
        ok(submit()); // warm-up
        let before = thread_allocs();
        let n = match policy {
            PrflBackpressure::PRFL_BACKPRESSURE_REJECT_NEWEST => 3,
            PrflBackpressure::PRFL_BACKPRESSURE_DROP_OLDEST => 20, // most of them evict
        };
        for _ in 0..n {
            ok(submit());
        }
        assert_eq!(
            thread_allocs() - before,
            0,
            "{policy:?}: allocations while submitting"
        );
    }
}

#[test]
fn save_and_load_continue_bit_for_bit() {
    let c = config();
    let a = ready(&c);
    let dir = temp_dir("save");
    let dir_c = cstr(&dir);
    for round in 0..2 {
        for i in 0..2 {
            ok(submit_labeled(&a, round * 2 + i, i as f32));
        }
        ok(step(&a, PrflStepMode::PRFL_STEP_REWARD).0);
    }
    ok(submit_pair(&a, 5));
    ok(submit_pair(&a, 6));
    ok(step(&a, PrflStepMode::PRFL_STEP_PRFL).0);
    ok(unsafe { prfl_save(a.0, dir_c.as_ptr()) });
    ok(unsafe { prfl_save(a.0, dir_c.as_ptr()) }); // a second generation replaces the first
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "prfl-2.safetensors",
            "prfl-runtime.safetensors",
            "reward-2.safetensors"
        ]
    );

    // A second runtime restored from the save continues exactly like the first.
    let b = create(&c);
    let gen = cstr(generator_dir());
    ok(unsafe { prfl_load_generator(b.0, gen.as_ptr()) });
    ok(unsafe { prfl_load(b.0, dir_c.as_ptr()) });
    let saved_score = score(&a, 3, 400.0).to_bits();
    let mut results = Vec::new();
    for rt in [&a, &b] {
        assert_eq!(score(rt, 3, 400.0).to_bits(), saved_score);
        for i in 0..2 {
            ok(submit_labeled(rt, 20 + i, i as f32));
        }
        let (s, reward) = step(rt, PrflStepMode::PRFL_STEP_REWARD);
        ok(s);
        for i in 0..2 {
            ok(submit_pair(rt, 30 + i));
        }
        let (s, prfl) = step(rt, PrflStepMode::PRFL_STEP_PRFL);
        ok(s);
        results.push((
            reward.step,
            reward.loss.to_bits(),
            reward.grad_norm.to_bits(),
            prfl.step,
            prfl.loss.to_bits(),
            prfl.reward.to_bits(),
            prfl.mid_step,
            score(rt, 3, 600.0).to_bits(),
        ));
    }
    assert_eq!(results[0], results[1]);
    assert_eq!(results[0].0, 3);

    // The reward file alone loads too (as prfl_load_reward's input).
    let reward_file = cstr(&dir.join("reward-2.safetensors"));
    let r = create(&c);
    ok(unsafe { prfl_load_generator(r.0, gen.as_ptr()) });
    ok(unsafe { prfl_load_reward(r.0, reward_file.as_ptr()) });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_generator_from_memory_equals_the_one_from_disk() {
    let c = config();
    let disk = ready(&c);
    let bytes = std::fs::read(generator_dir().join("diffusion_pytorch_model.safetensors")).unwrap();
    let json = CString::new(std::fs::read_to_string(generator_dir().join("config.json")).unwrap())
        .unwrap();
    let mem = create(&c);
    ok(unsafe {
        prfl_load_generator_from_memory(mem.0, bytes.as_ptr(), bytes.len(), json.as_ptr())
    });
    drop(bytes); // copied
    ok(unsafe { prfl_init_reward(mem.0) });
    for t in [0.0, 500.0, 1000.0] {
        assert_eq!(score(&disk, 4, t).to_bits(), score(&mem, 4, t).to_bits());
    }
    // Batch scoring agrees with single scoring.
    let latents: Vec<f32> = (0..3).flat_map(latent).collect();
    let texts: Vec<f32> = (0..3).flat_map(text).collect();
    let ts = [100.0f32, 200.0, 300.0];
    let mut out = [0.0f32; 3];
    ok(unsafe {
        prfl_score_batch(
            mem.0,
            latents.as_ptr(),
            3,
            LATENT,
            ts.as_ptr(),
            texts.as_ptr(),
            TEXT,
            out.as_mut_ptr(),
        )
    });
    for i in 0..3 {
        assert!((out[i] - score(&mem, i, ts[i])).abs() < 1e-6);
    }
}

#[test]
fn panics_are_caught_at_the_boundary() {
    let rt = ready(&config());
    // At the entry: the call fails with the panic's message, the runtime stays usable.
    testing::panic_at_next_entry();
    let mut s = PrflQueueStats {
        struct_size: std::mem::size_of::<PrflQueueStats>() as u32,
        ..Default::default()
    };
    assert_eq!(unsafe { prfl_queue_stats(rt.0, &mut s) }, PRFL_ERR_PANIC);
    let msg = last_error();
    assert!(
        msg.contains("prfl_queue_stats") && msg.contains("injected test panic"),
        "{msg}"
    );
    testing::panic_at_next_entry();
    assert!(!prfl_version().is_null()); // value-returning entry points survive too
    testing::panic_at_next_entry();
    unsafe { prfl_config_default(null_mut()) };
    assert_eq!(queue_stats(&rt).submitted, 0);

    // Inside a step, with the models half-updated: the runtime is lost for good.
    ok(submit_labeled(&rt, 0, 1.0));
    ok(submit_labeled(&rt, 1, 0.0));
    unsafe { testing::panic_in_next_step(rt.0) };
    assert_eq!(step(&rt, PrflStepMode::PRFL_STEP_REWARD).0, PRFL_ERR_PANIC);
    assert_eq!(submit_labeled(&rt, 2, 1.0), PRFL_ERR_DEVICE_LOST);
    assert!(last_error().contains("panic"), "{}", last_error());

    // The same inside the background trainer: prfl_stop reports it.
    let rt = ready(&config());
    unsafe { testing::panic_in_next_step(rt.0) };
    ok(unsafe { prfl_start(rt.0, PrflStepMode::PRFL_STEP_REWARD as i32) });
    ok(submit_labeled(&rt, 0, 1.0));
    ok(submit_labeled(&rt, 1, 0.0));
    let deadline = Instant::now() + Duration::from_secs(30);
    while submit_labeled(&rt, 3, 1.0) != PRFL_ERR_DEVICE_LOST {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(unsafe { prfl_stop(rt.0) }, PRFL_ERR_DEVICE_LOST);
}

static LOG: Mutex<Vec<(usize, i32, String)>> = Mutex::new(Vec::new());

/// Records what it receives (no assertions here: a panic cannot leave an `extern "C"` function).
unsafe extern "C" fn collect(user: *mut c_void, level: i32, message: *const c_char) {
    let m = unsafe { CStr::from_ptr(message) }
        .to_string_lossy()
        .into_owned();
    if let Ok(mut log) = LOG.lock() {
        log.push((user as usize, level, m));
    }
}

#[test]
fn log_records_reach_the_callback() {
    assert_eq!(
        unsafe { prfl_set_log_callback(Some(collect), null_mut(), 9) },
        PRFL_ERR_INVALID_ARGUMENT
    );
    ok(unsafe { prfl_set_log_callback(Some(collect), 42 as *mut c_void, 3) });
    let rt = create(&config());
    let gen = cstr(generator_dir());
    ok(unsafe { prfl_load_generator(rt.0, gen.as_ptr()) });
    ok(unsafe { prfl_set_log_callback(None, null_mut(), 0) });
    let log = LOG.lock().unwrap();
    assert!(
        log.iter()
            .any(|(_, l, m)| *l == 3 && m.contains("generator loaded")),
        "{log:?}"
    );
    assert!(
        log.iter().all(|(u, l, _)| *u == 42 && (1..=3).contains(l)),
        "{log:?}"
    );
}

/// One row of the bad-input table: a call, the status it must return and words its message
/// must contain.
struct Case {
    what: &'static str,
    call: Box<dyn Fn() -> PrflStatus>,
    status: PrflStatus,
    words: &'static [&'static str],
}

fn case(
    what: &'static str,
    status: PrflStatus,
    words: &'static [&'static str],
    call: impl Fn() -> PrflStatus + 'static,
) -> Case {
    Case {
        what,
        call: Box::new(call),
        status,
        words,
    }
}

fn run_table(cases: Vec<Case>) {
    for c in cases {
        let got = (c.call)();
        let msg = last_error();
        assert_eq!(got, c.status, "{}: {msg}", c.what);
        for w in c.words {
            assert!(msg.contains(w), "{}: message `{msg}` lacks `{w}`", c.what);
        }
    }
}

fn create_with(edit: impl Fn(&mut PrflConfig)) -> PrflStatus {
    let mut c = config();
    edit(&mut c);
    let mut rt = 1 as *mut PrflRuntime;
    let s = unsafe { prfl_create(&c, &mut rt) };
    if s == PRFL_OK {
        unsafe { prfl_destroy(rt) };
    } else {
        assert!(rt.is_null(), "a failed create leaves *out NULL");
    }
    s
}

#[test]
fn bad_inputs_get_distinct_statuses_and_messages() {
    // ---- creation
    run_table(vec![
        case(
            "create: null config",
            PRFL_ERR_NULL_POINTER,
            &["config"],
            || {
                let mut rt = null_mut();
                unsafe { prfl_create(null(), &mut rt) }
            },
        ),
        case(
            "create: null out",
            PRFL_ERR_NULL_POINTER,
            &["out"],
            || unsafe { prfl_create(&config(), null_mut()) },
        ),
        case(
            "create: old struct_size",
            PRFL_ERR_VERSION,
            &["struct_size"],
            || create_with(|c| c.struct_size = 16),
        ),
        case(
            "create: abi version",
            PRFL_ERR_VERSION,
            &["abi_version"],
            || create_with(|c| c.abi_version = 2),
        ),
        case(
            "create: device enum",
            PRFL_ERR_UNKNOWN_ENUM,
            &["device", "7"],
            || create_with(|c| c.device = 7),
        ),
        // No machine has a thousand GPUs: an error on every machine, with or without CUDA.
        case("create: CUDA", PRFL_ERR_DEVICE, &["CUDA"], || {
            create_with(|c| {
                c.device = PrflDevice::PRFL_DEVICE_CUDA as i32;
                c.device_index = 1000;
            })
        }),
        case(
            "create: backpressure",
            PRFL_ERR_UNKNOWN_ENUM,
            &["backpressure"],
            || create_with(|c| c.backpressure = -1),
        ),
        case(
            "create: loss",
            PRFL_ERR_UNKNOWN_ENUM,
            &["reward_loss"],
            || create_with(|c| c.reward_loss = 2),
        ),
        case(
            "create: odd height",
            PRFL_ERR_INVALID_ARGUMENT,
            &["even"],
            || create_with(|c| c.latent_height = 3),
        ),
        case(
            "create: batch > capacity",
            PRFL_ERR_INVALID_ARGUMENT,
            &["queue_capacity"],
            || create_with(|c| c.batch_size = 9),
        ),
        case(
            "create: half an image",
            PRFL_ERR_INVALID_ARGUMENT,
            &["image_len"],
            || create_with(|c| c.image_len = 4),
        ),
        case(
            "create: 1 step",
            PRFL_ERR_INVALID_ARGUMENT,
            &["prfl_steps"],
            || create_with(|c| c.prfl_steps = 1),
        ),
        case(
            "create: NaN lr",
            PRFL_ERR_INVALID_ARGUMENT,
            &["prfl_lr"],
            || create_with(|c| c.prfl_lr = f32::NAN),
        ),
        case(
            "create: recompute 2",
            PRFL_ERR_INVALID_ARGUMENT,
            &["recompute"],
            || create_with(|c| c.recompute = 2),
        ),
        case("create: AUTO is the CPU", PRFL_OK, &[], || {
            create_with(|c| c.device = PrflDevice::PRFL_DEVICE_AUTO as i32)
        }),
        case("create: newer caller", PRFL_OK, &[], || {
            create_with(|c| c.struct_size += 64)
        }),
    ]);
    // Null handles are no-ops where nothing is returned.
    unsafe {
        prfl_destroy(null_mut());
        prfl_config_default(null_mut());
    }
    assert_eq!(prfl_abi_version(), prfl::ffi::PRFL_ABI_VERSION);
    let v = unsafe { CStr::from_ptr(prfl_version()) };
    assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));

    // ---- loading
    let dir = temp_dir("bad");
    let corrupt = dir.join("corrupt.safetensors");
    std::fs::write(
        &corrupt,
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all",
    )
    .unwrap();
    let corrupt_c = cstr(&corrupt);
    let missing_c = cstr(&dir.join("missing"));
    let gen_c = cstr(generator_dir());
    let gen_file_c = cstr(&generator_dir().join("diffusion_pytorch_model.safetensors"));
    let fresh = create(&config());
    let rt = fresh.0 as usize; // captured by the closures below
    let p = move || rt as *mut PrflRuntime;
    run_table(vec![
        case("load: null rt", PRFL_ERR_NULL_POINTER, &["rt"], {
            let g = gen_c.clone();
            move || unsafe { prfl_load_generator(null_mut(), g.as_ptr()) }
        }),
        case(
            "load: null path",
            PRFL_ERR_NULL_POINTER,
            &["path"],
            move || unsafe { prfl_load_generator(p(), null()) },
        ),
        case(
            "load: missing",
            PRFL_ERR_IO,
            &["prfl_load_generator", "missing"],
            {
                let m = missing_c.clone();
                move || unsafe { prfl_load_generator(p(), m.as_ptr()) }
            },
        ),
        case(
            "load: corrupt",
            PRFL_ERR_CORRUPT_FILE,
            &["corrupt.safetensors"],
            {
                let m = corrupt_c.clone();
                move || unsafe { prfl_load_generator(p(), m.as_ptr()) }
            },
        ),
        // Use after a failed load: nothing is loaded.
        case(
            "init after failed load",
            PRFL_ERR_NOT_LOADED,
            &["generator"],
            move || unsafe { prfl_init_reward(p()) },
        ),
        case(
            "memory: null",
            PRFL_ERR_NULL_POINTER,
            &["safetensors"],
            move || unsafe { prfl_load_generator_from_memory(p(), null(), 10, null()) },
        ),
        case(
            "memory: garbage",
            PRFL_ERR_CORRUPT_FILE,
            &["safetensors"],
            move || unsafe { prfl_load_generator_from_memory(p(), b"garbage".as_ptr(), 7, null()) },
        ),
        case(
            "memory: bad json",
            PRFL_ERR_INVALID_ARGUMENT,
            &["config_json"],
            {
                let bytes =
                    std::fs::read(generator_dir().join("diffusion_pytorch_model.safetensors"))
                        .unwrap();
                move || unsafe {
                    prfl_load_generator_from_memory(p(), bytes.as_ptr(), bytes.len(), c"{".as_ptr())
                }
            },
        ),
        case(
            "reward: no generator",
            PRFL_ERR_NOT_LOADED,
            &["generator"],
            {
                let g = gen_file_c.clone();
                move || unsafe { prfl_load_reward(p(), g.as_ptr()) }
            },
        ),
        case(
            "score: no reward",
            PRFL_ERR_NOT_LOADED,
            &["reward model"],
            move || {
                let (l, t) = (latent(0), text(0));
                let mut out = 0.0;
                unsafe { prfl_score(p(), l.as_ptr(), LATENT, 0.0, t.as_ptr(), TEXT, &mut out) }
            },
        ),
        case(
            "step: no reward",
            PRFL_ERR_NOT_LOADED,
            &["reward model"],
            move || unsafe { prfl_step(p(), 0, null_mut()) },
        ),
        case(
            "start: no generator",
            PRFL_ERR_NOT_LOADED,
            &["generator"],
            move || unsafe { prfl_start(p(), 1) },
        ),
        case(
            "save: nothing",
            PRFL_ERR_NOT_LOADED,
            &["nothing to save"],
            {
                let m = missing_c.clone();
                move || unsafe { prfl_save(p(), m.as_ptr()) }
            },
        ),
    ]);
    drop(fresh);

    // A generator that does not fit the configured text width.
    let wide = create(&PrflConfig {
        text_dim: 9,
        ..config()
    });
    assert_eq!(
        unsafe { prfl_load_generator(wide.0, gen_c.as_ptr()) },
        PRFL_ERR_SHAPE
    );
    assert!(last_error().contains("text_dim"), "{}", last_error());
    let deep = create(&PrflConfig {
        reward_blocks: 3,
        ..config()
    });
    ok(unsafe { prfl_load_generator(deep.0, gen_c.as_ptr()) });
    assert_eq!(
        unsafe { prfl_init_reward(deep.0) },
        PRFL_ERR_INVALID_ARGUMENT
    );
    assert!(last_error().contains("3 blocks"), "{}", last_error());

    // ---- a ready runtime: submissions, steps, scoring, persistence
    let ready_rt = ready(&config());
    let rt = ready_rt.0 as usize;
    let p = move || rt as *mut PrflRuntime;
    let sub = move |l: &[f32], ll: usize, t: &[f32], tl: usize, label: f32| unsafe {
        prfl_submit_labeled(p(), l.as_ptr(), ll, t.as_ptr(), tl, null(), 0, label)
    };
    let with = |i: usize, v: f32| {
        let mut l = latent(0);
        l[i] = v;
        l
    };
    let not_a_dir = cstr(&corrupt.join("sub"));
    run_table(vec![
        case(
            "submit: null latent",
            PRFL_ERR_NULL_POINTER,
            &["latent"],
            move || {
                let t = text(0);
                unsafe {
                    prfl_submit_labeled(p(), null(), LATENT, t.as_ptr(), TEXT, null(), 0, 1.0)
                }
            },
        ),
        case(
            "submit: wrong length",
            PRFL_ERR_SHAPE,
            &["latent_len", "255", "256"],
            move || sub(&latent(0), LATENT - 1, &text(0), TEXT, 1.0),
        ),
        case(
            "submit: bytes not floats",
            PRFL_ERR_SHAPE,
            &["text_len", "64"],
            move || sub(&latent(0), LATENT, &text(0), TEXT * 4, 1.0),
        ),
        case(
            "submit: NaN latent",
            PRFL_ERR_NON_FINITE,
            &["latent[7]", "NaN"],
            move || sub(&with(7, f32::NAN), LATENT, &text(0), TEXT, 1.0),
        ),
        case(
            "submit: inf text",
            PRFL_ERR_NON_FINITE,
            &["text[3]", "inf"],
            move || {
                let mut t = text(0);
                t[3] = f32::INFINITY;
                sub(&latent(0), LATENT, &t, TEXT, 1.0)
            },
        ),
        case(
            "submit: label 0.5",
            PRFL_ERR_INVALID_ARGUMENT,
            &["label", "0.5"],
            move || sub(&latent(0), LATENT, &text(0), TEXT, 0.5),
        ),
        case(
            "submit: NaN label",
            PRFL_ERR_NON_FINITE,
            &["label"],
            move || sub(&latent(0), LATENT, &text(0), TEXT, f32::NAN),
        ),
        case(
            "submit: image for T2V",
            PRFL_ERR_SHAPE,
            &["image_len"],
            move || {
                let (l, t) = (latent(0), text(0));
                unsafe {
                    prfl_submit_labeled(
                        p(),
                        l.as_ptr(),
                        LATENT,
                        t.as_ptr(),
                        TEXT,
                        t.as_ptr(),
                        3,
                        1.0,
                    )
                }
            },
        ),
        case(
            "submit: misaligned",
            PRFL_ERR_INVALID_ARGUMENT,
            &["aligned"],
            move || {
                let l = latent(0);
                let t = text(0);
                let raw = l.as_ptr().cast::<u8>().wrapping_add(1).cast::<f32>();
                // Misaligned: refused before anything is read.
                unsafe { prfl_submit_labeled(p(), raw, LATENT, t.as_ptr(), TEXT, null(), 0, 1.0) }
            },
        ),
        case(
            "pair: null lose",
            PRFL_ERR_NULL_POINTER,
            &["lose"],
            move || {
                let (l, t) = (latent(0), text(0));
                unsafe {
                    prfl_submit_pair(p(), l.as_ptr(), null(), LATENT, t.as_ptr(), TEXT, null(), 0)
                }
            },
        ),
        case(
            "pair: NaN lose",
            PRFL_ERR_NON_FINITE,
            &["lose[2]"],
            move || {
                let (l, t) = (latent(0), text(0));
                let bad = with(2, f32::NEG_INFINITY);
                unsafe {
                    prfl_submit_pair(
                        p(),
                        l.as_ptr(),
                        bad.as_ptr(),
                        LATENT,
                        t.as_ptr(),
                        TEXT,
                        null(),
                        0,
                    )
                }
            },
        ),
        case(
            "step: mode 7",
            PRFL_ERR_UNKNOWN_ENUM,
            &["mode", "7"],
            move || unsafe { prfl_step(p(), 7, null_mut()) },
        ),
        case(
            "step: struct_size",
            PRFL_ERR_VERSION,
            &["struct_size"],
            move || {
                let mut s = PrflStepStats::empty(PrflStepMode::PRFL_STEP_REWARD);
                s.struct_size = 4;
                unsafe { prfl_step(p(), 0, &mut s) }
            },
        ),
        case(
            "step: empty queue",
            PRFL_ERR_NOT_ENOUGH_SAMPLES,
            &["0 labelled clips"],
            move || unsafe { prfl_step(p(), 0, null_mut()) },
        ),
        case(
            "score: null out",
            PRFL_ERR_NULL_POINTER,
            &["out_score"],
            move || {
                let (l, t) = (latent(0), text(0));
                unsafe { prfl_score(p(), l.as_ptr(), LATENT, 0.0, t.as_ptr(), TEXT, null_mut()) }
            },
        ),
        case(
            "score: timestep",
            PRFL_ERR_INVALID_ARGUMENT,
            &["1001"],
            move || {
                let (l, t) = (latent(0), text(0));
                let mut o = 0.0;
                unsafe { prfl_score(p(), l.as_ptr(), LATENT, 1001.0, t.as_ptr(), TEXT, &mut o) }
            },
        ),
        case(
            "score: NaN timestep",
            PRFL_ERR_NON_FINITE,
            &["timesteps[0]"],
            move || {
                let (l, t) = (latent(0), text(0));
                let mut o = 0.0;
                unsafe { prfl_score(p(), l.as_ptr(), LATENT, f32::NAN, t.as_ptr(), TEXT, &mut o) }
            },
        ),
        case(
            "score: NaN latent",
            PRFL_ERR_NON_FINITE,
            &["latent[1]"],
            move || {
                let (l, t) = (with(1, f32::NAN), text(0));
                let mut o = 0.0;
                unsafe { prfl_score(p(), l.as_ptr(), LATENT, 0.0, t.as_ptr(), TEXT, &mut o) }
            },
        ),
        case(
            "score: text length",
            PRFL_ERR_SHAPE,
            &["text_len"],
            move || {
                let (l, t) = (latent(0), text(0));
                let mut o = 0.0;
                unsafe { prfl_score(p(), l.as_ptr(), LATENT, 0.0, t.as_ptr(), 3, &mut o) }
            },
        ),
        case(
            "batch: null timesteps",
            PRFL_ERR_NULL_POINTER,
            &["timesteps"],
            move || {
                let (l, t) = (latent(0), text(0));
                let mut o = [0.0];
                unsafe {
                    prfl_score_batch(
                        p(),
                        l.as_ptr(),
                        1,
                        LATENT,
                        null(),
                        t.as_ptr(),
                        TEXT,
                        o.as_mut_ptr(),
                    )
                }
            },
        ),
        case(
            "batch: total text length",
            PRFL_ERR_SHAPE,
            &["per sample"],
            move || {
                let (l, t) = (latent(0), text(0));
                let (ts, mut o) = ([0.0f32; 2], [0.0; 2]);
                unsafe {
                    prfl_score_batch(
                        p(),
                        l.as_ptr(),
                        2,
                        LATENT,
                        ts.as_ptr(),
                        t.as_ptr(),
                        2 * TEXT,
                        o.as_mut_ptr(),
                    )
                }
            },
        ),
        case("batch: count 0", PRFL_OK, &[], move || {
            let (l, t) = (latent(0), text(0));
            let (ts, mut o) = ([0.0f32; 1], [0.0; 1]);
            unsafe {
                prfl_score_batch(
                    p(),
                    l.as_ptr(),
                    0,
                    LATENT,
                    ts.as_ptr(),
                    t.as_ptr(),
                    TEXT,
                    o.as_mut_ptr(),
                )
            }
        }),
        case(
            "start: mode",
            PRFL_ERR_UNKNOWN_ENUM,
            &["mode"],
            move || unsafe { prfl_start(p(), -3) },
        ),
        case("stop: null", PRFL_ERR_NULL_POINTER, &["rt"], || unsafe {
            prfl_stop(null_mut())
        }),
        case("stop: not running", PRFL_OK, &[], move || unsafe {
            prfl_stop(p())
        }),
        case(
            "save: null path",
            PRFL_ERR_NULL_POINTER,
            &["path"],
            move || unsafe { prfl_save(p(), null()) },
        ),
        case(
            "save: under a file",
            PRFL_ERR_IO,
            &["corrupt.safetensors"],
            {
                let d = not_a_dir.clone();
                move || unsafe { prfl_save(p(), d.as_ptr()) }
            },
        ),
        case(
            "load: no set there",
            PRFL_ERR_IO,
            &["prfl-runtime.safetensors"],
            {
                let m = missing_c.clone();
                move || unsafe { prfl_load(p(), m.as_ptr()) }
            },
        ),
        case(
            "load_reward: a generator file",
            PRFL_ERR_CORRUPT_FILE,
            &["training checkpoint"],
            {
                let g = gen_file_c.clone();
                move || unsafe { prfl_load_reward(p(), g.as_ptr()) }
            },
        ),
        case(
            "load_reward: corrupt",
            PRFL_ERR_CORRUPT_FILE,
            &["corrupt"],
            {
                let m = corrupt_c.clone();
                move || unsafe { prfl_load_reward(p(), m.as_ptr()) }
            },
        ),
        case(
            "load_generator: replacing",
            PRFL_ERR_INVALID_ARGUMENT,
            &["new runtime"],
            {
                let g = gen_c.clone();
                move || unsafe { prfl_load_generator(p(), g.as_ptr()) }
            },
        ),
        case(
            "queue_stats: null",
            PRFL_ERR_NULL_POINTER,
            &["out"],
            move || unsafe { prfl_queue_stats(p(), null_mut()) },
        ),
        case(
            "queue_stats: struct_size 0",
            PRFL_ERR_VERSION,
            &["struct_size"],
            move || {
                let mut s = PrflQueueStats::default();
                unsafe { prfl_queue_stats(p(), &mut s) }
            },
        ),
        case(
            "log: level",
            PRFL_ERR_INVALID_ARGUMENT,
            &["max_level"],
            || unsafe { prfl_set_log_callback(None, null_mut(), -1) },
        ),
    ]);
    let q = queue_stats(&ready_rt);
    check_invariants(&q);
    assert_eq!((q.accepted, q.rejected_invalid), (0, 11));

    // A corrupt manifest is a corrupt file.
    let set = temp_dir("set");
    std::fs::write(set.join("prfl-runtime.safetensors"), b"nope").unwrap();
    let set_c = cstr(&set);
    assert_eq!(
        unsafe { prfl_load(ready_rt.0, set_c.as_ptr()) },
        PRFL_ERR_CORRUPT_FILE
    );

    // ---- busy while started: what the background trainer excludes, and what keeps working
    ok(unsafe { prfl_start(ready_rt.0, 0) });
    run_table(vec![
        case(
            "busy: start",
            PRFL_ERR_BUSY,
            &["already runs"],
            move || unsafe { prfl_start(p(), 0) },
        ),
        case(
            "busy: step",
            PRFL_ERR_BUSY,
            &["prfl_stop"],
            move || unsafe { prfl_step(p(), 0, null_mut()) },
        ),
        case("busy: save", PRFL_ERR_BUSY, &["prfl_stop"], {
            let d = set_c.clone();
            move || unsafe { prfl_save(p(), d.as_ptr()) }
        }),
        case("busy: load", PRFL_ERR_BUSY, &["prfl_stop"], {
            let d = set_c.clone();
            move || unsafe { prfl_load(p(), d.as_ptr()) }
        }),
        case(
            "busy: init",
            PRFL_ERR_BUSY,
            &["prfl_stop"],
            move || unsafe { prfl_init_reward(p()) },
        ),
        case("busy: load_reward", PRFL_ERR_BUSY, &["prfl_stop"], {
            let g = gen_file_c.clone();
            move || unsafe { prfl_load_reward(p(), g.as_ptr()) }
        }),
        case("busy: load_generator", PRFL_ERR_BUSY, &["prfl_stop"], {
            let g = gen_c.clone();
            move || unsafe { prfl_load_generator(p(), g.as_ptr()) }
        }),
        case("started: submit works", PRFL_OK, &[], move || {
            sub(&latent(0), LATENT, &text(0), TEXT, 1.0)
        }),
        case("started: score works", PRFL_OK, &[], move || {
            let (l, t) = (latent(0), text(0));
            let mut o = 0.0;
            unsafe { prfl_score(p(), l.as_ptr(), LATENT, 10.0, t.as_ptr(), TEXT, &mut o) }
        }),
    ]);
    ok(unsafe { prfl_stop(ready_rt.0) });

    // ---- a lost device answers DEVICE_LOST to everything until destroyed
    unsafe { testing::fail_device(ready_rt.0, "simulated device failure") };
    run_table(vec![
        case(
            "lost: submit",
            PRFL_ERR_DEVICE_LOST,
            &["simulated device failure"],
            move || sub(&latent(0), LATENT, &text(0), TEXT, 1.0),
        ),
        case(
            "lost: step",
            PRFL_ERR_DEVICE_LOST,
            &["destroy"],
            move || unsafe { prfl_step(p(), 0, null_mut()) },
        ),
        case("lost: score", PRFL_ERR_DEVICE_LOST, &[], move || {
            let (l, t) = (latent(0), text(0));
            let mut o = 0.0;
            unsafe { prfl_score(p(), l.as_ptr(), LATENT, 0.0, t.as_ptr(), TEXT, &mut o) }
        }),
        case("lost: start", PRFL_ERR_DEVICE_LOST, &[], move || unsafe {
            prfl_start(p(), 0)
        }),
        case("lost: stop", PRFL_ERR_DEVICE_LOST, &[], move || unsafe {
            prfl_stop(p())
        }),
        case("lost: save", PRFL_ERR_DEVICE_LOST, &[], {
            let d = set_c.clone();
            move || unsafe { prfl_save(p(), d.as_ptr()) }
        }),
        case("lost: stats", PRFL_ERR_DEVICE_LOST, &[], move || {
            let mut s = PrflQueueStats {
                struct_size: std::mem::size_of::<PrflQueueStats>() as u32,
                ..Default::default()
            };
            unsafe { prfl_queue_stats(p(), &mut s) }
        }),
        case("lost: init", PRFL_ERR_DEVICE_LOST, &[], move || unsafe {
            prfl_init_reward(p())
        }),
    ]);
    drop(ready_rt);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&set);
}

// ------------------------------------------------------------------ early rejection

/// `count` candidates' starting noise (standard normal) and texts (one per candidate).
fn candidates(count: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut noise = vec![0.0f32; count * LATENT];
    prfl::schedule::Rng::seed_from_u64(seed).fill_normal(&mut noise);
    let texts: Vec<f32> = (0..count).flat_map(text).collect();
    (noise, texts)
}

fn sample_config(steps: u32, at: u32, keep: u32, solver: PrflSolver) -> PrflSampleConfig {
    let mut c = PrflSampleConfig::default();
    // SAFETY: a valid out pointer.
    unsafe { prfl_sample_config_default(&mut c) };
    assert_eq!(
        c.struct_size as usize,
        std::mem::size_of::<PrflSampleConfig>()
    );
    c.steps = steps;
    c.reject_at_step = at;
    c.keep = keep;
    c.solver = solver as i32;
    c
}

fn empty_sample_stats() -> PrflSampleStats {
    PrflSampleStats {
        struct_size: std::mem::size_of::<PrflSampleStats>() as u32,
        ..Default::default()
    }
}

/// Runs `prfl_sample_early_reject`: (status, survivors' latents, their indices, stats).
fn sample_er(
    rt: &Rt,
    noise: &[f32],
    texts: &[f32],
    cfg: &PrflSampleConfig,
    keep: usize,
) -> (PrflStatus, Vec<f32>, Vec<u32>, PrflSampleStats) {
    let count = noise.len() / LATENT;
    let mut latents = vec![f32::NAN; keep * LATENT];
    let mut kept = vec![u32::MAX; keep];
    let mut stats = empty_sample_stats();
    // SAFETY: arrays of the stated lengths.
    let s = unsafe {
        prfl_sample_early_reject(
            rt.0,
            noise.as_ptr(),
            count,
            LATENT,
            texts.as_ptr(),
            TEXT,
            cfg,
            latents.as_mut_ptr(),
            kept.as_mut_ptr(),
            &mut stats,
        )
    };
    (s, latents, kept, stats)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
}

#[test]
fn select_candidates_returns_the_top_k_of_score_batch() {
    let rt = ready(&config());
    let n = 7;
    // Candidate 5 repeats candidate 1 (same latent, same text, same chunk position): a tie.
    let mut idx: Vec<usize> = (0..n).collect();
    idx[5] = 1;
    let latents: Vec<f32> = idx.iter().flat_map(|&i| latent(i)).collect();
    let texts: Vec<f32> = idx.iter().flat_map(|&i| text(i)).collect();
    let t = 600.0f32;
    let mut batch = vec![0.0f32; n];
    ok(unsafe {
        prfl_score_batch(
            rt.0,
            latents.as_ptr(),
            n,
            LATENT,
            vec![t; n].as_ptr(),
            texts.as_ptr(),
            TEXT,
            batch.as_mut_ptr(),
        )
    });
    assert_eq!(batch[1].to_bits(), batch[5].to_bits(), "{batch:?}");
    let mut want: Vec<usize> = (0..n).collect();
    want.sort_by(|&a, &b| batch[b].partial_cmp(&batch[a]).unwrap().then(a.cmp(&b)));
    for keep in 1..=n {
        let mut kept = vec![u32::MAX; keep];
        let mut scores = vec![f32::NAN; n];
        ok(unsafe {
            prfl_select_candidates(
                rt.0,
                latents.as_ptr(),
                n,
                LATENT,
                t,
                texts.as_ptr(),
                TEXT,
                keep,
                kept.as_mut_ptr(),
                scores.as_mut_ptr(),
            )
        });
        let got: Vec<usize> = kept.iter().map(|&k| k as usize).collect();
        assert_eq!(got, want[..keep], "keep {keep}: scores {batch:?}");
        assert_eq!(scores, batch);
        // Scores are optional.
        let mut again = vec![u32::MAX; keep];
        ok(unsafe {
            prfl_select_candidates(
                rt.0,
                latents.as_ptr(),
                n,
                LATENT,
                t,
                texts.as_ptr(),
                TEXT,
                keep,
                again.as_mut_ptr(),
                null_mut(),
            )
        });
        assert_eq!(again, kept);
    }
    // The tie keeps the lower index first.
    let p1 = want.iter().position(|&i| i == 1).unwrap();
    let p5 = want.iter().position(|&i| i == 5).unwrap();
    assert!(p1 < p5);
}

#[test]
fn sample_early_reject_equals_plain_sampling_for_its_survivors() {
    use prfl::backend::cpu::Cpu;
    use prfl::finetune::sample::{sample, Cond, SamplingPlan};
    use prfl::model::wan::{VideoShape, WanModel};
    use prfl::schedule::SolverKind;

    let rt = ready(&config());
    let (n, steps) = (5usize, 4u32);
    let (noise, texts) = candidates(n, 11);

    // keep == count: plain sampling, equal to the library's sampler run on each candidate alone.
    let all_cfg = sample_config(steps, 2, n as u32, PrflSolver::PRFL_SOLVER_UNIPC);
    let (s, all, kept, stats) = sample_er(&rt, &noise, &texts, &all_cfg, n);
    ok(s);
    assert_eq!(kept, (0..n as u32).collect::<Vec<_>>());
    assert_eq!(
        stats.struct_size as usize,
        std::mem::size_of::<PrflSampleStats>()
    );
    assert_eq!(stats.generator_evals, (n * steps as usize) as u64);
    assert_eq!(stats.full_generator_evals, stats.generator_evals);
    assert_eq!(stats.reward_evals, 0);
    assert_eq!(stats.saved_fraction, 0.0);
    assert!(stats.reject_timestep.is_nan());
    assert!(stats.seconds > 0.0);

    let cfg = wan();
    let generator = WanModel::new(&Cpu, cfg.clone(), &random_weights(&cfg, 1), None).unwrap();
    let plan = SamplingPlan::wan(steps as usize, 5.0, SolverKind::UniPc).unwrap();
    let shape = VideoShape {
        batch: 1,
        frames: F,
        height: H,
        width: W,
    };
    for c in 0..n {
        let t = texts[c * TEXT..(c + 1) * TEXT].to_vec();
        let cond = Cond::<Cpu> {
            text: &t,
            text_len: TEXT_LEN,
            y: None,
            clip: None,
            image_len: 0,
        };
        let alone = sample(
            &Cpu,
            &generator,
            shape,
            &cond,
            None,
            &plan,
            noise[c * LATENT..(c + 1) * LATENT].to_vec(),
        )
        .unwrap();
        let d = max_diff(&alone, &all[c * LATENT..(c + 1) * LATENT]);
        assert!(
            d < 1e-5,
            "candidate {c} differs from sampling it alone by {d}"
        );
    }

    // A second plain call repeats the first bit for bit (the cached generator).
    let (s, again, _, _) = sample_er(&rt, &noise, &texts, &all_cfg, n);
    ok(s);
    assert_eq!(
        again.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        all.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );

    // keep < count: the survivors are the best scored at the rejection step and end where
    // sampling every candidate ends them.
    for solver in [PrflSolver::PRFL_SOLVER_UNIPC, PrflSolver::PRFL_SOLVER_EULER] {
        let keep = 2;
        let cfg_er = sample_config(steps, 2, keep as u32, solver);
        let (s, survivors, kept, stats) = sample_er(&rt, &noise, &texts, &cfg_er, keep);
        ok(s);
        assert!(
            kept.windows(2).all(|w| w[0] < w[1]),
            "candidate order: {kept:?}"
        );
        let reference = if solver == PrflSolver::PRFL_SOLVER_UNIPC {
            all.clone()
        } else {
            let plain = sample_config(steps, 2, n as u32, solver);
            let (s, plain, _, _) = sample_er(&rt, &noise, &texts, &plain, n);
            ok(s);
            plain
        };
        for (k, &c) in kept.iter().enumerate() {
            let c = c as usize;
            let d = max_diff(
                &survivors[k * LATENT..(k + 1) * LATENT],
                &reference[c * LATENT..(c + 1) * LATENT],
            );
            assert!(d < 1e-5, "{solver:?}: survivor {c} differs by {d}");
        }
        // Costs: n candidates for 2 steps, then `keep` for the other 2; n reward evaluations.
        let steps = steps as u64;
        assert_eq!(
            stats.generator_evals,
            n as u64 * 2 + keep as u64 * (steps - 2)
        );
        assert_eq!(stats.reward_evals, n as u64);
        assert_eq!(stats.full_generator_evals, n as u64 * steps);
        // One of the tiny generator's two blocks.
        assert_eq!(stats.reward_cost, 0.5);
        let want = 1.0
            - (stats.generator_evals as f64 + 0.5 * stats.reward_evals as f64)
                / stats.full_generator_evals as f64;
        assert!((stats.saved_fraction - want).abs() < 1e-12);
        assert!(stats.saved_fraction > 0.0, "{stats:?}");
        assert!((0.0..=1000.0).contains(&stats.reject_timestep));
    }
}

#[test]
fn sample_early_reject_keeps_what_select_candidates_would_keep() {
    // A host driving select_candidates at the rejection step chooses the same survivors as the
    // library: emulate it with the trace of the library's rollout, scored through the C ABI.
    use prfl::backend::cpu::Cpu;
    use prfl::finetune::sample::SamplingPlan;
    use prfl::model::wan::{Inputs, Mode, VideoShape, WanModel};
    use prfl::schedule::SolverKind;

    let rt = ready(&config());
    let (n, steps, at, keep) = (6usize, 5usize, 2usize, 3usize);
    let (noise, texts) = candidates(n, 23);
    let cfg_er = sample_config(
        steps as u32,
        at as u32,
        keep as u32,
        PrflSolver::PRFL_SOLVER_EULER,
    );
    let (s, _, kept, stats) = sample_er(&rt, &noise, &texts, &cfg_er, keep);
    ok(s);

    // The host's own sampler: Euler, each candidate alone, `at` steps.
    let cfg = wan();
    let generator = WanModel::new(&Cpu, cfg.clone(), &random_weights(&cfg, 1), None).unwrap();
    let plan = SamplingPlan::wan(steps, 5.0, SolverKind::Euler).unwrap();
    let shape = VideoShape {
        batch: 1,
        frames: F,
        height: H,
        width: W,
    };
    let mut xs = Vec::new();
    let mut t_at = 0.0;
    for c in 0..n {
        let mut sampler = plan.sampler::<Cpu>().unwrap();
        let mut x = noise[c * LATENT..(c + 1) * LATENT].to_vec();
        let text_c = texts[c * TEXT..(c + 1) * TEXT].to_vec();
        for i in 0..at {
            let t = [sampler.timestep(i)];
            let inputs = Inputs {
                shape,
                x: &x,
                t: &t,
                context: &text_c,
                text_len: TEXT_LEN,
                y: None,
                clip: None,
                image_len: 0,
            };
            let (v, _) = generator.forward(&Cpu, &inputs, Mode::Inference).unwrap();
            x = sampler.step(&Cpu, &v, &x);
        }
        t_at = sampler.timestep(at);
        xs.extend(x);
    }
    assert_eq!(t_at, stats.reject_timestep);
    let mut chosen = vec![0u32; keep];
    ok(unsafe {
        prfl_select_candidates(
            rt.0,
            xs.as_ptr(),
            n,
            LATENT,
            t_at,
            texts.as_ptr(),
            TEXT,
            keep,
            chosen.as_mut_ptr(),
            null_mut(),
        )
    });
    chosen.sort_unstable();
    assert_eq!(chosen, kept);
}

#[test]
fn sampling_follows_the_generator_the_runtime_holds() {
    let c = config();
    let (n, keep) = (4usize, 4usize);
    let (noise, texts) = candidates(n, 5);
    let cfg = sample_config(3, 0, 0, PrflSolver::PRFL_SOLVER_UNIPC);
    let plain = sample_config(3, 0, keep as u32, PrflSolver::PRFL_SOLVER_UNIPC);

    // Plain sampling needs no reward model; rejection does.
    let rt = create(&c);
    let path = cstr(generator_dir());
    assert_eq!(
        sample_er(&rt, &noise, &texts, &plain, keep).0,
        PRFL_ERR_NOT_LOADED
    );
    assert!(last_error().contains("generator"), "{}", last_error());
    ok(unsafe { prfl_load_generator(rt.0, path.as_ptr()) });
    let (s, before, _, _) = sample_er(&rt, &noise, &texts, &plain, keep);
    ok(s);
    // Defaults: keep count / 4 = 1 at step 2 * 3 / 5 = 1; that needs the reward model.
    assert_eq!(
        sample_er(&rt, &noise, &texts, &cfg, 1).0,
        PRFL_ERR_NOT_LOADED
    );
    assert!(last_error().contains("reward"), "{}", last_error());
    // Loading a generator again drops the cached copy (same weights here: same result).
    ok(unsafe { prfl_load_generator(rt.0, path.as_ptr()) });
    ok(unsafe { prfl_init_reward(rt.0) });
    let (s, again, _, _) = sample_er(&rt, &noise, &texts, &plain, keep);
    ok(s);
    assert_eq!(before, again);
    let (s, _, kept, stats) = sample_er(&rt, &noise, &texts, &cfg, 1);
    ok(s);
    assert_eq!(kept.len(), 1);
    assert_eq!(stats.reward_evals, n as u64);

    // Beside the background trainer (which only waits for samples here): sampling works.
    ok(unsafe { prfl_start(rt.0, PrflStepMode::PRFL_STEP_REWARD as i32) });
    let (s, beside, _, _) = sample_er(&rt, &noise, &texts, &plain, keep);
    ok(s);
    assert_eq!(before, beside);
    ok(unsafe { prfl_stop(rt.0) });

    // After a PRFL step, sampling uses the fine-tuned generator.
    for i in 0..2 {
        assert_eq!(submit_labeled(&rt, i, 1.0), PRFL_OK);
    }
    let (s, st) = step(&rt, PrflStepMode::PRFL_STEP_PRFL);
    assert_eq!(s, PRFL_OK, "{}", last_error());
    assert!(st.grad_norm.is_finite() && st.grad_norm > 0.0, "{st:?}");
    let (s, after, _, _) = sample_er(&rt, &noise, &texts, &plain, keep);
    ok(s);
    assert_ne!(before, after, "sampling ignored the fine-tuned generator");
    assert!(after.iter().all(|v| v.is_finite()));
}

#[test]
fn early_rejection_bad_inputs_get_statuses_and_leave_the_runtime_usable() {
    let rt_box = ready(&config());
    let rt = rt_box.0 as usize;
    let p = move || rt as *mut PrflRuntime;
    const N: usize = 4;
    // select_candidates with every argument overridable.
    #[allow(clippy::type_complexity)]
    let select = move |lat: Option<Vec<f32>>,
                       count: usize,
                       ll: usize,
                       t: f32,
                       tl: usize,
                       keep: usize,
                       null_out: bool| {
        let latents: Vec<f32> = lat.unwrap_or_else(|| (0..N).flat_map(latent).collect());
        let texts: Vec<f32> = (0..N).flat_map(text).collect();
        let mut kept = vec![0u32; N + 1];
        unsafe {
            prfl_select_candidates(
                p(),
                latents.as_ptr(),
                count,
                ll,
                t,
                texts.as_ptr(),
                tl,
                keep,
                if null_out {
                    null_mut()
                } else {
                    kept.as_mut_ptr()
                },
                null_mut(),
            )
        }
    };
    // sample_early_reject with a config edit and optional bad data.
    let sample = move |edit: &dyn Fn(&mut PrflSampleConfig),
                       noise_at: Option<(usize, f32)>,
                       text_at: Option<(usize, f32)>,
                       count: usize| {
        let (mut noise, mut texts) = candidates(N, 1);
        if let Some((i, v)) = noise_at {
            noise[i] = v;
        }
        if let Some((i, v)) = text_at {
            texts[i] = v;
        }
        let mut c = sample_config(3, 1, 2, PrflSolver::PRFL_SOLVER_UNIPC);
        edit(&mut c);
        let mut latents = vec![0.0f32; N * LATENT];
        let mut kept = vec![0u32; N];
        let mut stats = empty_sample_stats();
        unsafe {
            prfl_sample_early_reject(
                p(),
                noise.as_ptr(),
                count,
                LATENT,
                texts.as_ptr(),
                TEXT,
                &c,
                latents.as_mut_ptr(),
                kept.as_mut_ptr(),
                &mut stats,
            )
        }
    };
    let same = |_: &mut PrflSampleConfig| {};
    run_table(vec![
        case(
            "select: null rt",
            PRFL_ERR_NULL_POINTER,
            &["rt"],
            || unsafe {
                prfl_select_candidates(
                    null_mut(),
                    latent(0).as_ptr(),
                    1,
                    LATENT,
                    0.0,
                    text(0).as_ptr(),
                    TEXT,
                    1,
                    [0u32].as_mut_ptr(),
                    null_mut(),
                )
            },
        ),
        case(
            "select: null latents",
            PRFL_ERR_NULL_POINTER,
            &["prfl_select_candidates", "latents"],
            move || unsafe {
                let t = text(0);
                let mut k = [0u32];
                prfl_select_candidates(
                    p(),
                    null(),
                    1,
                    LATENT,
                    0.0,
                    t.as_ptr(),
                    TEXT,
                    1,
                    k.as_mut_ptr(),
                    null_mut(),
                )
            },
        ),
        case(
            "select: null text",
            PRFL_ERR_NULL_POINTER,
            &["text"],
            move || unsafe {
                let l = latent(0);
                let mut k = [0u32];
                prfl_select_candidates(
                    p(),
                    l.as_ptr(),
                    1,
                    LATENT,
                    0.0,
                    null(),
                    TEXT,
                    1,
                    k.as_mut_ptr(),
                    null_mut(),
                )
            },
        ),
        case(
            "select: null out_kept",
            PRFL_ERR_NULL_POINTER,
            &["out_kept"],
            move || select(None, N, LATENT, 0.0, TEXT, 1, true),
        ),
        case(
            "select: latent_len",
            PRFL_ERR_SHAPE,
            &["latent_len", "255", "256"],
            move || select(None, N, LATENT - 1, 0.0, TEXT, 1, false),
        ),
        case(
            "select: text_len",
            PRFL_ERR_SHAPE,
            &["text_len"],
            move || select(None, N, LATENT, 0.0, TEXT + 1, 1, false),
        ),
        case(
            "select: count 0",
            PRFL_ERR_INVALID_ARGUMENT,
            &["count"],
            move || select(None, 0, LATENT, 0.0, TEXT, 1, false),
        ),
        case(
            "select: keep 0",
            PRFL_ERR_INVALID_ARGUMENT,
            &["keep", "0"],
            move || select(None, N, LATENT, 0.0, TEXT, 0, false),
        ),
        case(
            "select: keep > count",
            PRFL_ERR_INVALID_ARGUMENT,
            &["keep", "5"],
            move || select(None, N, LATENT, 0.0, TEXT, N + 1, false),
        ),
        case(
            "select: NaN timestep",
            PRFL_ERR_NON_FINITE,
            &["timestep", "NaN"],
            move || select(None, N, LATENT, f32::NAN, TEXT, 1, false),
        ),
        case(
            "select: timestep 1001",
            PRFL_ERR_INVALID_ARGUMENT,
            &["timestep", "1001"],
            move || select(None, N, LATENT, 1001.0, TEXT, 1, false),
        ),
        case(
            "select: inf latent",
            PRFL_ERR_NON_FINITE,
            &["latent"],
            move || {
                let mut l: Vec<f32> = (0..N).flat_map(latent).collect();
                l[LATENT + 3] = f32::INFINITY;
                select(Some(l), N, LATENT, 0.0, TEXT, 1, false)
            },
        ),
        case(
            "sample: null rt",
            PRFL_ERR_NULL_POINTER,
            &["rt"],
            || unsafe {
                prfl_sample_early_reject(
                    null_mut(),
                    null(),
                    1,
                    LATENT,
                    null(),
                    TEXT,
                    null(),
                    null_mut(),
                    null_mut(),
                    null_mut(),
                )
            },
        ),
        case(
            "sample: null noise",
            PRFL_ERR_NULL_POINTER,
            &["prfl_sample_early_reject", "noise"],
            move || unsafe {
                let t = text(0);
                let mut out = vec![0.0f32; LATENT];
                let mut k = [0u32];
                prfl_sample_early_reject(
                    p(),
                    null(),
                    1,
                    LATENT,
                    t.as_ptr(),
                    TEXT,
                    null(),
                    out.as_mut_ptr(),
                    k.as_mut_ptr(),
                    null_mut(),
                )
            },
        ),
        case(
            "sample: null out_latents",
            PRFL_ERR_NULL_POINTER,
            &["out_latents"],
            move || unsafe {
                let (n, t) = candidates(1, 0);
                let mut k = [0u32];
                prfl_sample_early_reject(
                    p(),
                    n.as_ptr(),
                    1,
                    LATENT,
                    t.as_ptr(),
                    TEXT,
                    null(),
                    null_mut(),
                    k.as_mut_ptr(),
                    null_mut(),
                )
            },
        ),
        case(
            "sample: null out_kept",
            PRFL_ERR_NULL_POINTER,
            &["out_kept"],
            move || unsafe {
                let (n, t) = candidates(1, 0);
                let mut out = vec![0.0f32; LATENT];
                prfl_sample_early_reject(
                    p(),
                    n.as_ptr(),
                    1,
                    LATENT,
                    t.as_ptr(),
                    TEXT,
                    null(),
                    out.as_mut_ptr(),
                    null_mut(),
                    null_mut(),
                )
            },
        ),
        case(
            "sample: latent_len",
            PRFL_ERR_SHAPE,
            &["latent_len"],
            move || unsafe {
                let (n, t) = candidates(1, 0);
                let mut out = vec![0.0f32; LATENT];
                let mut k = [0u32];
                prfl_sample_early_reject(
                    p(),
                    n.as_ptr(),
                    1,
                    LATENT / 2,
                    t.as_ptr(),
                    TEXT,
                    null(),
                    out.as_mut_ptr(),
                    k.as_mut_ptr(),
                    null_mut(),
                )
            },
        ),
        case(
            "sample: count 0",
            PRFL_ERR_INVALID_ARGUMENT,
            &["count"],
            move || sample(&same, None, None, 0),
        ),
        case(
            "sample: keep > count",
            PRFL_ERR_INVALID_ARGUMENT,
            &["keep", "5"],
            move || sample(&|c| c.keep = 5, None, None, N),
        ),
        case(
            "sample: steps 1",
            PRFL_ERR_INVALID_ARGUMENT,
            &["steps", "1"],
            move || sample(&|c| c.steps = 1, None, None, N),
        ),
        case(
            "sample: steps 1001",
            PRFL_ERR_INVALID_ARGUMENT,
            &["steps", "1001"],
            move || sample(&|c| c.steps = 1001, None, None, N),
        ),
        case(
            "sample: reject at the last step",
            PRFL_ERR_INVALID_ARGUMENT,
            &["reject_at_step", "3"],
            move || sample(&|c| c.reject_at_step = 3, None, None, N),
        ),
        case(
            "sample: NaN shift",
            PRFL_ERR_INVALID_ARGUMENT,
            &["shift", "NaN"],
            move || sample(&|c| c.shift = f32::NAN, None, None, N),
        ),
        case(
            "sample: negative shift",
            PRFL_ERR_INVALID_ARGUMENT,
            &["shift", "-1"],
            move || sample(&|c| c.shift = -1.0, None, None, N),
        ),
        case(
            "sample: solver 7",
            PRFL_ERR_UNKNOWN_ENUM,
            &["solver", "7"],
            move || sample(&|c| c.solver = 7, None, None, N),
        ),
        case(
            "sample: config struct_size",
            PRFL_ERR_VERSION,
            &["config->struct_size"],
            move || sample(&|c| c.struct_size = 8, None, None, N),
        ),
        case(
            "sample: stats struct_size",
            PRFL_ERR_VERSION,
            &["out_stats->struct_size"],
            move || unsafe {
                let (n, t) = candidates(1, 0);
                let mut out = vec![0.0f32; LATENT];
                let mut k = [0u32];
                let mut st = PrflSampleStats {
                    struct_size: 4,
                    ..Default::default()
                };
                prfl_sample_early_reject(
                    p(),
                    n.as_ptr(),
                    1,
                    LATENT,
                    t.as_ptr(),
                    TEXT,
                    null(),
                    out.as_mut_ptr(),
                    k.as_mut_ptr(),
                    &mut st,
                )
            },
        ),
        case(
            "sample: NaN noise",
            PRFL_ERR_NON_FINITE,
            &["noise[9]", "NaN"],
            move || sample(&same, Some((9, f32::NAN)), None, N),
        ),
        case(
            "sample: inf text",
            PRFL_ERR_NON_FINITE,
            &["text[2]", "inf"],
            move || sample(&same, None, Some((2, f32::INFINITY)), N),
        ),
    ]);

    // The runtime is still usable, and NULL config and stats mean defaults and "not wanted".
    ok(select(None, N, LATENT, 300.0, TEXT, 2, false));
    ok(sample(&same, None, None, N));
    let (noise, texts) = candidates(N, 1);
    let mut out = vec![0.0f32; LATENT];
    let mut k = [u32::MAX];
    ok(unsafe {
        prfl_sample_early_reject(
            p(),
            noise.as_ptr(),
            N,
            LATENT,
            texts.as_ptr(),
            TEXT,
            null(),
            out.as_mut_ptr(),
            k.as_mut_ptr(),
            null_mut(),
        )
    });
    assert!((k[0] as usize) < N && out.iter().all(|v| v.is_finite()));
    // A NULL out pointer to prfl_sample_config_default is a no-op.
    unsafe { prfl_sample_config_default(null_mut()) };

    // Lost device: both answer PRFL_ERR_DEVICE_LOST.
    unsafe { testing::fail_device(p(), "simulated") };
    assert_eq!(
        select(None, N, LATENT, 0.0, TEXT, 1, false),
        PRFL_ERR_DEVICE_LOST
    );
    assert_eq!(sample(&same, None, None, N), PRFL_ERR_DEVICE_LOST);
}
