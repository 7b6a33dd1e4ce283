//! A CUDA device lost in the middle of training, through the C ABI, on the emulated device
//! (`tests/cuda_emu/`): the stand-in driver's `prfl_emu_lose_device` hook makes every later call
//! that needs the context fail as a real context does after a sticky error (an illegal address,
//! a GPU fallen off the bus), frees and stream synchronisation included.
//!
//! What must hold (the review's teardown finding): the runtime answers `PRFL_ERR_DEVICE_LOST`
//! with a message from then on, and `prfl_destroy` returns: no panic escapes and none aborts the
//! host while the backend's buffers, weights, staging buffers, modules and cuBLAS handle are
//! released against the dead context. Runs with `PRFL_CUDA_EMULATE` (its plain build: this
//! process has no sanitizer runtime); skips with a message otherwise. A separate test binary
//! because losing the device is process-wide.

use std::ffi::{CStr, CString};
use std::path::Path;
use std::ptr::{null, null_mut};

use prfl::ffi::api::*;
use prfl::ffi::status::PrflStatus::{self, *};
use prfl::ffi::{PrflConfig, PrflDevice, PrflRuntime, PrflStepMode, PrflStepStats};

#[path = "common/cuda_emu.rs"]
mod cuda_emu;

// The committed tiny T2V fixture's inputs (as in samples/c/main.c): latent [16, 3, 4, 4], text
// [7, 24].
const LATENT: usize = 16 * 3 * 4 * 4;
const TEXT_TOKENS: usize = 7;
const TEXT_DIM: usize = 24;
const TEXT: usize = TEXT_TOKENS * TEXT_DIM;
const BATCH: usize = 2;

fn last_error() -> String {
    // SAFETY: prfl_last_error returns a valid NUL-terminated string.
    unsafe { CStr::from_ptr(prfl_last_error()) }
        .to_string_lossy()
        .into_owned()
}

fn ok(what: &str, s: PrflStatus) {
    assert_eq!(s, PRFL_OK, "{what}: {}", last_error());
}

fn latent(i: usize) -> Vec<f32> {
    (0..LATENT)
        .map(|j| ((j * 7 + i * 13) % 17) as f32 / 17.0 - 0.5)
        .collect()
}

fn text(i: usize) -> Vec<f32> {
    (0..TEXT)
        .map(|j| ((j * 5 + i * 3) % 11) as f32 / 11.0 - 0.5)
        .collect()
}

fn submit(rt: *mut PrflRuntime, i: usize) -> PrflStatus {
    let (l, t) = (latent(i), text(i));
    // SAFETY: a live handle and arrays of the stated lengths.
    unsafe {
        prfl_submit_labeled(
            rt,
            l.as_ptr(),
            LATENT,
            t.as_ptr(),
            TEXT,
            null(),
            0,
            (i % 2) as f32,
        )
    }
}

fn reward_step(rt: *mut PrflRuntime) -> PrflStatus {
    let mut s = PrflStepStats::empty(PrflStepMode::PRFL_STEP_REWARD);
    s.struct_size = std::mem::size_of::<PrflStepStats>() as u32;
    // SAFETY: a live handle and a valid out pointer.
    unsafe { prfl_step(rt, PrflStepMode::PRFL_STEP_REWARD as i32, &mut s) }
}

fn score(rt: *mut PrflRuntime) -> (PrflStatus, f32) {
    let (l, t) = (latent(99), text(99));
    let mut out = f32::NAN;
    // SAFETY: a live handle, arrays of the stated lengths, a valid out pointer.
    let s = unsafe { prfl_score(rt, l.as_ptr(), LATENT, 500.0, t.as_ptr(), TEXT, &mut out) };
    (s, out)
}

/// Calls the stand-in driver's test hook in the already-loaded `libcuda.so` of `lib_dir`.
fn lose_device(lib_dir: &Path) {
    let path = lib_dir.join("libcuda.so");
    // SAFETY: the stand-in is already loaded (this reopens the same object); the hook takes no
    // arguments and only sets a flag.
    unsafe {
        let lib = libloading::Library::new(&path)
            .unwrap_or_else(|e| panic!("reopening {}: {e}", path.display()));
        let hook: libloading::Symbol<unsafe extern "C" fn() -> i32> = lib
            .get(b"prfl_emu_lose_device\0")
            .expect("the stand-in driver exports prfl_emu_lose_device");
        assert_eq!(hook(), 0);
        // Kept loaded for the rest of the process, as the backend keeps it.
        std::mem::forget(lib);
    }
}

#[test]
fn a_lost_device_answers_device_lost_and_destroy_returns() {
    let Some(emu) = cuda_emu::plain_build_if_requested() else {
        println!("skipping: PRFL_CUDA_EMULATE is not set (this test needs the emulated device)");
        return;
    };
    std::env::set_var("PRFL_KERNEL_CACHE", &emu.kernel_cache);

    let lib_dir = CString::new(emu.lib_dir.to_str().expect("a UTF-8 path")).unwrap();
    let mut cfg = PrflConfig::default();
    // SAFETY: a valid out pointer.
    unsafe { prfl_config_default(&mut cfg) };
    cfg.device = PrflDevice::PRFL_DEVICE_CUDA as i32;
    cfg.device_index = 0;
    cfg.cuda_library_dir = lib_dir.as_ptr();
    cfg.cpu_fallback = 0;
    cfg.queue_capacity = 8;
    cfg.latent_channels = 16;
    cfg.latent_frames = 3;
    cfg.latent_height = 4;
    cfg.latent_width = 4;
    cfg.text_len = TEXT_TOKENS as u32;
    cfg.text_dim = TEXT_DIM as u32;
    cfg.batch_size = BATCH as u32;
    cfg.reward_blocks = 1;
    cfg.reward_head_lr = 1e-3;
    cfg.seed = 3;

    let mut rt = null_mut();
    // SAFETY: valid pointers (the library folder string outlives the call).
    ok("create on the emulated cuda:0", unsafe {
        prfl_create(&cfg, &mut rt)
    });
    let generator =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wan/t2v_small/original");
    let generator = CString::new(generator.to_str().unwrap()).unwrap();
    // SAFETY: a live handle and a NUL-terminated path.
    ok("load generator", unsafe {
        prfl_load_generator(rt, generator.as_ptr())
    });
    // SAFETY: a live handle.
    ok("init reward", unsafe { prfl_init_reward(rt) });

    // Healthy first: a step and a score on the device.
    for i in 0..BATCH {
        ok("submit", submit(rt, i));
    }
    ok("reward step before the loss", reward_step(rt));
    let (s, before) = score(rt);
    ok("score before the loss", s);
    assert!(
        before.is_finite() && (0.0..=1.0).contains(&before),
        "{before}"
    );

    lose_device(&emu.lib_dir);

    // The next call that reaches the device fails; from then on everything says DEVICE_LOST.
    for i in 0..BATCH {
        ok("submit (host side only)", submit(rt, 10 + i));
    }
    let first = reward_step(rt);
    assert!(
        first == PRFL_ERR_DEVICE_LOST || first == PRFL_ERR_DEVICE,
        "the step after the loss: {first:?} ({})",
        last_error()
    );
    assert!(!last_error().is_empty());
    let (s, _) = score(rt);
    assert_eq!(
        s,
        PRFL_ERR_DEVICE_LOST,
        "score after the loss: {}",
        last_error()
    );
    assert_eq!(
        submit(rt, 20),
        PRFL_ERR_DEVICE_LOST,
        "submit after the loss: {}",
        last_error()
    );
    let msg = last_error();
    assert!(msg.contains("lost") || msg.contains("CUDA"), "{msg}");

    // The point of the test: this returns (no panic across the boundary, no abort).
    // SAFETY: the live handle, destroyed once.
    unsafe { prfl_destroy(rt) };

    // And a new runtime on the dead device is refused with an error, not a crash.
    let mut again = null_mut();
    // SAFETY: valid pointers.
    let s = unsafe { prfl_create(&cfg, &mut again) };
    if s == PRFL_OK {
        // Creating may not touch the device yet; loading a generator must then fail cleanly.
        // SAFETY: a live handle and a NUL-terminated path.
        let l = unsafe { prfl_load_generator(again, generator.as_ptr()) };
        assert_ne!(
            l, PRFL_OK,
            "loading a generator onto a lost device succeeded"
        );
        // SAFETY: the live handle, destroyed once.
        unsafe { prfl_destroy(again) };
    } else {
        assert!(!last_error().is_empty());
    }
}
