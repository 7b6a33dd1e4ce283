//! The tiny runtime the C ABI tests drive, shared by `tests/ffi.rs` and `tests/ffi_defects.rs`:
//! the sample sizes, a random generator checkpoint written once per process, the configuration,
//! an owning handle, and the calls every test needs, made exactly as C makes them (raw pointers,
//! status codes).
#![allow(dead_code)] // each test binary uses its own subset

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicUsize, Ordering};

use prfl::ffi::api::*;
use prfl::ffi::status::PrflStatus::{self, *};
use prfl::ffi::{PrflConfig, PrflDevice, PrflRuntime};
use prfl::model::checkpoint::save_checkpoint;
use prfl::model::init::random_weights;
use prfl::model::names::Layout;
use prfl::model::{ModelType, WanConfig};
use prfl::testutil::tiny_wan;

pub const C: usize = 16;
pub const F: usize = 2;
pub const H: usize = 2;
pub const W: usize = 4;
pub const LATENT: usize = C * F * H * W;
pub const TEXT_LEN: usize = 2;
pub const TEXT_DIM: usize = 8;
pub const TEXT: usize = TEXT_LEN * TEXT_DIM;

pub fn wan() -> WanConfig {
    tiny_wan(ModelType::T2V, 16, 2, 2, TEXT_DIM)
}

pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "prfl-ffi-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A tiny random generator checkpoint (original layout), written once per test process.
pub fn generator_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = temp_dir("generator");
        let cfg = wan();
        save_checkpoint(&random_weights(&cfg, 1), &cfg, Layout::Original, &dir, None).unwrap();
        dir
    })
}

pub fn cstr(p: &Path) -> CString {
    CString::new(p.to_str().unwrap()).unwrap()
}

pub fn config() -> PrflConfig {
    let mut c = PrflConfig::default();
    // SAFETY: a valid out pointer.
    unsafe { prfl_config_default(&mut c) };
    c.device = PrflDevice::PRFL_DEVICE_CPU as i32;
    c.queue_capacity = 8;
    c.latent_channels = C as u32;
    c.latent_frames = F as u32;
    c.latent_height = H as u32;
    c.latent_width = W as u32;
    c.text_len = TEXT_LEN as u32;
    c.text_dim = TEXT_DIM as u32;
    c.batch_size = 2;
    c.reward_blocks = 1;
    c.reward_head_lr = 1e-3;
    c.prfl_steps = 3;
    c.recompute = 0;
    c.seed = 7;
    c
}

/// A runtime handle, destroyed on drop; `Send`/`Sync` because the C API is thread-safe.
pub struct Rt(pub *mut PrflRuntime);
unsafe impl Send for Rt {}
unsafe impl Sync for Rt {}

impl Drop for Rt {
    fn drop(&mut self) {
        // SAFETY: a live handle, destroyed once.
        unsafe { prfl_destroy(self.0) };
    }
}

pub fn create(c: &PrflConfig) -> Rt {
    let mut rt = null_mut();
    // SAFETY: valid pointers.
    let s = unsafe { prfl_create(c, &mut rt) };
    assert_eq!(s, PRFL_OK, "{}", last_error());
    Rt(rt)
}

/// A runtime with the tiny generator and a fresh reward model.
pub fn ready(c: &PrflConfig) -> Rt {
    let rt = create(c);
    let path = cstr(generator_dir());
    // SAFETY: valid pointers.
    ok(unsafe { prfl_load_generator(rt.0, path.as_ptr()) });
    ok(unsafe { prfl_init_reward(rt.0) });
    rt
}

pub fn last_error() -> String {
    // SAFETY: prfl_last_error returns a valid NUL-terminated string.
    unsafe { CStr::from_ptr(prfl_last_error()) }
        .to_string_lossy()
        .into_owned()
}

pub fn ok(s: PrflStatus) {
    assert_eq!(s, PRFL_OK, "{}", last_error());
}

/// A latent whose first value is `index` (so consumption can be traced), the rest smooth.
pub fn latent(index: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..LATENT)
        .map(|i| ((i * 7 + index * 13) % 17) as f32 / 17.0 - 0.5)
        .collect();
    v[0] = index as f32;
    v
}

pub fn text(seed: usize) -> Vec<f32> {
    (0..TEXT)
        .map(|i| ((i * 5 + seed * 3) % 11) as f32 / 11.0 - 0.5)
        .collect()
}

pub fn submit_labeled(rt: &Rt, index: usize, label: f32) -> PrflStatus {
    let (l, t) = (latent(index), text(index));
    // SAFETY: arrays of the stated lengths.
    unsafe { prfl_submit_labeled(rt.0, l.as_ptr(), LATENT, t.as_ptr(), TEXT, null(), 0, label) }
}
