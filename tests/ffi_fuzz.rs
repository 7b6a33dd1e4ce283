//! A deterministic random-call driver over the whole C ABI (our own fuzzing target, run by CI
//! for a bounded time; no nightly toolchain or fuzzing dependency).
//!
//! Each call picks an entry point and arguments at random: null, short, long, misaligned and
//! huge arrays (never claiming more memory than is really there: that is the caller's side of
//! the contract), non-finite values, unknown enums, wrong struct sizes and versions, bad and
//! non-regular paths, and random call orders over tiny runtimes (background trainer running or
//! not, runtimes destroyed and created). It asserts that no panic escapes (`PRFL_ERR_PANIC`
//! never appears: none is injected), that every failure comes with a non-empty message, and
//! that every queue snapshot satisfies the queue's invariants.
//!
//! `PRFL_FUZZ_SEED` picks the seed (default fixed) and `PRFL_FUZZ_CALLS` the number of calls
//! (default 2500, a few seconds in the debug profile); a failure prints the seed and call
//! number to replay.

use std::ffi::{c_char, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicU64, Ordering};

use prfl::ffi::api::*;
use prfl::ffi::status::PrflStatus::{self, *};
use prfl::ffi::{
    PrflConfig, PrflDevice, PrflQueueStats, PrflRuntime, PrflSampleConfig, PrflSampleStats,
    PrflStepMode, PrflStepStats,
};
use prfl::model::checkpoint::save_checkpoint;
use prfl::model::init::random_weights;
use prfl::model::names::Layout;
use prfl::model::ModelType;
use prfl::testutil::tiny_wan;

const C: usize = 16;
const F: usize = 2;
const H: usize = 2;
const W: usize = 4;
const LATENT: usize = C * F * H * W;
const TEXT_LEN: usize = 2;
const TEXT_DIM: usize = 8;
const TEXT: usize = TEXT_LEN * TEXT_DIM;

/// splitmix64: small, deterministic, good enough to pick calls.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len())]
    }
    fn float(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }
}

/// A float array argument: the buffer really holds at least what the pointer claims.
struct Floats {
    storage: Vec<f32>,
    ptr: *const f32,
    len: usize,
}

impl Floats {
    fn mut_ptr(&mut self) -> *mut f32 {
        self.ptr as *mut f32
    }
}

/// An array of `want` floats, or (sometimes) null, one short, one long, empty, misaligned,
/// non-finite somewhere, or a huge claimed length behind a null pointer.
fn floats(rng: &mut Rng, want: usize) -> Floats {
    let len = match rng.below(20) {
        0 => want.saturating_sub(1),
        1 => want + 1,
        2 => 0,
        3 => usize::MAX / rng.pick(&[1, 2, 4, 64]),
        _ => want,
    };
    let null_ptr = len > 1 << 24 || rng.chance(5);
    let n = if null_ptr { 0 } else { len };
    let mut storage: Vec<f32> = (0..n + 1).map(|_| rng.float()).collect();
    if n > 0 && rng.chance(5) {
        let at = rng.below(n);
        storage[at] = rng.pick(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY]);
    }
    let ptr = if null_ptr {
        null()
    } else if rng.chance(4) {
        // Two bytes into the buffer: misaligned, and `n` floats from there are still inside.
        // SAFETY: within the allocation of `n + 1` floats.
        unsafe { storage.as_ptr().cast::<u8>().add(2).cast::<f32>() }
    } else {
        storage.as_ptr()
    };
    Floats { storage, ptr, len }
}

/// A count of candidates: small, zero, or absurd.
fn count(rng: &mut Rng) -> usize {
    match rng.below(12) {
        0 => 0,
        1 => usize::MAX,
        2 => usize::MAX / LATENT + 1,
        _ => 1 + rng.below(4),
    }
}

fn last_error() -> String {
    // SAFETY: prfl_last_error returns a valid NUL-terminated string.
    unsafe { CStr::from_ptr(prfl_last_error()) }
        .to_string_lossy()
        .into_owned()
}

fn config(rng: &mut Rng) -> PrflConfig {
    let mut c = PrflConfig::default();
    // SAFETY: a valid out pointer.
    unsafe { prfl_config_default(&mut c) };
    c.device = PrflDevice::PRFL_DEVICE_CPU as i32;
    c.queue_capacity = rng.pick(&[2, 3, 4, 8]);
    c.latent_channels = C as u32;
    c.latent_frames = F as u32;
    c.latent_height = H as u32;
    c.latent_width = W as u32;
    c.text_len = TEXT_LEN as u32;
    c.text_dim = TEXT_DIM as u32;
    c.batch_size = rng.pick(&[1, 2]);
    c.reward_blocks = 1;
    c.reward_head_lr = 1e-3;
    c.prfl_steps = 2;
    c.recompute = 0;
    c.backpressure = rng.pick(&[0, 1]);
    c.reward_loss = rng.pick(&[0, 1]);
    c.seed = rng.next();
    // Sometimes one field made wrong.
    match rng.below(14) {
        0 => c.queue_capacity = rng.pick(&[0, u32::MAX]),
        1 => c.latent_height = 3,
        2 => c.backpressure = rng.pick(&[-1, 2, 77]),
        3 => c.device = rng.pick(&[-5, 99]),
        4 => c.reward_head_lr = rng.pick(&[f32::NAN, -1.0, f32::INFINITY]),
        5 => c.abi_version = rng.pick(&[0, 2, u32::MAX]),
        6 => c.batch_size = 0,
        7 => c.latent_channels = 1 << 20,
        _ => {}
    }
    c
}

/// A config in a buffer larger than itself, so a larger `struct_size` is still readable.
#[repr(C)]
struct Padded<T> {
    value: T,
    pad: [u8; 64],
}

fn struct_size<T>(rng: &mut Rng) -> u32 {
    let size = std::mem::size_of::<T>() as u32;
    match rng.below(12) {
        0 => 0,
        1 => 4,
        2 => size - 4,
        3 => size + 8,
        _ => size,
    }
}

struct Paths {
    generator: PathBuf,
    weights: PathBuf,
    bytes: Vec<u8>,
    save: PathBuf,
    garbage: PathBuf,
    truncated: PathBuf,
    fifo: PathBuf,
}

/// A reward checkpoint the last successful save left, if any.
fn saved_reward(save: &Path) -> Option<PathBuf> {
    std::fs::read_dir(save)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let name = p
                .file_name()
                .map_or(String::new(), |n| n.to_string_lossy().into_owned());
            name.starts_with("reward-") && name.ends_with(".safetensors")
        })
}

fn path_arg(rng: &mut Rng, p: &Paths) -> Option<CString> {
    let reward;
    let path: &Path = match rng.below(12) {
        9 => {
            reward = saved_reward(&p.save).unwrap_or_else(|| p.save.clone());
            &reward
        }
        0 => return None,
        1 => Path::new(""),
        2 => Path::new("/nonexistent/prfl/fuzz"),
        3 => Path::new("/dev/null"),
        4 => &p.garbage,
        5 => &p.truncated,
        6 => &p.fifo,
        7 => &p.weights,
        8 => &p.generator,
        _ => &p.save,
    };
    Some(CString::new(path.to_str().unwrap()).unwrap())
}

fn opt_ptr(s: &Option<CString>) -> *const c_char {
    s.as_ref().map_or(null(), |s| s.as_ptr())
}

static LOGGED: AtomicU64 = AtomicU64::new(0);

unsafe extern "C" fn on_log(_user: *mut c_void, _level: i32, message: *const c_char) {
    assert!(!message.is_null());
    LOGGED.fetch_add(1, Ordering::Relaxed);
}

fn check_stats(rt: *mut PrflRuntime, where_: &str) {
    let mut s = PrflQueueStats {
        struct_size: std::mem::size_of::<PrflQueueStats>() as u32,
        ..Default::default()
    };
    // SAFETY: a live handle and a valid out struct.
    let status = unsafe { prfl_queue_stats(rt, &mut s) };
    if status != PRFL_OK {
        assert_ne!(status, PRFL_ERR_PANIC, "{where_}: {}", last_error());
        return; // e.g. a device marked lost
    }
    assert_eq!(
        s.submitted,
        s.accepted + s.rejected_full + s.rejected_invalid,
        "{where_}: {s:?}"
    );
    assert_eq!(
        s.accepted,
        s.consumed + s.dropped_oldest + s.queued as u64,
        "{where_}: {s:?}"
    );
    assert!(s.queued as u64 <= s.capacity as u64, "{where_}: {s:?}");
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn random_calls_over_the_c_abi_never_panic_and_always_explain_failures() {
    let seed = env_u64("PRFL_FUZZ_SEED", 0x5eed_f00d);
    let calls = env_u64("PRFL_FUZZ_CALLS", 2500);
    let mut rng = Rng(seed);

    let dir = std::env::temp_dir().join(format!("prfl-fuzz-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let generator = dir.join("generator");
    let cfg = tiny_wan(ModelType::T2V, 16, 2, 2, TEXT_DIM);
    save_checkpoint(
        &random_weights(&cfg, 1),
        &cfg,
        Layout::Original,
        &generator,
        None,
    )
    .unwrap();
    let weights = generator.join("diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"\xff\xff\xff\xff\xff\xff\xff\x7fnot a header").unwrap();
    let truncated = dir.join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let fifo = dir.join("fifo.safetensors");
    #[cfg(unix)]
    {
        let c = CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }
    let paths = Paths {
        generator,
        weights,
        bytes,
        save: dir.join("save"),
        garbage,
        truncated,
        fifo,
    };

    let mut runtimes: Vec<*mut PrflRuntime> = Vec::new();
    let mut failures = 0u64;
    let mut ok_by_op = [0u32; 24];
    for call in 0..calls {
        let rt = if runtimes.is_empty() || rng.chance(3) {
            null_mut()
        } else {
            runtimes[rng.below(runtimes.len())]
        };
        let op = rng.below(24);
        let where_ = format!("seed {seed:#x}, call {call}, op {op}");
        // SAFETY (every call below): pointers are null, or point to buffers that hold at least
        // what the call's length arguments claim; `rt` is null or live.
        let status: PrflStatus = unsafe {
            match op {
                0 if runtimes.len() < 3 => {
                    let mut p = Padded {
                        value: config(&mut rng),
                        pad: [0; 64],
                    };
                    p.value.struct_size = struct_size::<PrflConfig>(&mut rng);
                    let mut out = null_mut();
                    let cfg_ptr = if rng.chance(3) { null() } else { &p.value };
                    let s = prfl_create(cfg_ptr, &mut out);
                    if s == PRFL_OK {
                        assert!(!out.is_null());
                        runtimes.push(out);
                    } else {
                        assert!(out.is_null(), "{where_}");
                    }
                    s
                }
                1 if !rt.is_null() && rng.chance(30) => {
                    prfl_destroy(rt);
                    runtimes.retain(|&r| r != rt);
                    continue;
                }
                2 => {
                    let p = path_arg(&mut rng, &paths);
                    prfl_load_generator(rt, opt_ptr(&p))
                }
                3 => {
                    let n = rng.pick(&[0, 8, paths.bytes.len() / 2, paths.bytes.len()]);
                    let json = rng.pick(&[None, Some("{"), Some("{}"), Some("[1]")]);
                    let json = json.map(|j| CString::new(j).unwrap());
                    let buf = if rng.chance(5) {
                        null()
                    } else {
                        paths.bytes.as_ptr()
                    };
                    prfl_load_generator_from_memory(rt, buf, n, opt_ptr(&json))
                }
                4 | 5 => prfl_init_reward(rt),
                6 => {
                    let p = path_arg(&mut rng, &paths);
                    prfl_load_reward(rt, opt_ptr(&p))
                }
                7..=9 => {
                    let (l, t, i) = (
                        floats(&mut rng, LATENT),
                        floats(&mut rng, TEXT),
                        floats(&mut rng, 0),
                    );
                    let label = rng.pick(&[0.0, 1.0, 1.0, 0.0, 0.5, -1.0, f32::NAN, f32::INFINITY]);
                    prfl_submit_labeled(rt, l.ptr, l.len, t.ptr, t.len, i.ptr, i.len, label)
                }
                10 => {
                    let (w, l, t) = (
                        floats(&mut rng, LATENT),
                        floats(&mut rng, LATENT),
                        floats(&mut rng, TEXT),
                    );
                    let len = rng.pick(&[w.len, l.len]);
                    let len = len.min(w.storage.len()).min(l.storage.len());
                    let len = if w.ptr.is_null() || l.ptr.is_null() {
                        w.len
                    } else {
                        len
                    };
                    prfl_submit_pair(rt, w.ptr, l.ptr, len, t.ptr, t.len, null(), 0)
                }
                11 => {
                    let mode = rng.pick(&[0, 1, 1, -1, 2, 99]);
                    let mut out = Padded {
                        value: PrflStepStats::empty(PrflStepMode::PRFL_STEP_REWARD),
                        pad: [0; 64],
                    };
                    out.value.struct_size = struct_size::<PrflStepStats>(&mut rng);
                    let out_ptr = if rng.chance(5) {
                        null_mut()
                    } else {
                        &mut out.value
                    };
                    prfl_step(rt, mode, out_ptr)
                }
                12 => {
                    let (l, t) = (floats(&mut rng, LATENT), floats(&mut rng, TEXT));
                    let ts = rng.pick(&[0.0, 500.0, 999.0, 1000.0, -1.0, 1e9, f32::NAN]);
                    let mut score = 0.0f32;
                    let out = if rng.chance(5) {
                        null_mut()
                    } else {
                        &mut score
                    };
                    prfl_score(rt, l.ptr, l.len, ts, t.ptr, t.len, out)
                }
                13 => {
                    let n = count(&mut rng);
                    let per = if rng.chance(10) { LATENT + 1 } else { LATENT };
                    let small = n.min(4);
                    let mut lat = floats(&mut rng, small * per);
                    let mut ts = floats(&mut rng, small);
                    let t = floats(&mut rng, TEXT);
                    let mut out = floats(&mut rng, small);
                    // Every non-null buffer holds what the counts claim. A huge count keeps only
                    // the latents' pointer, whose `count x latent_len` overflows: the overflow
                    // check must refuse it before anything is read.
                    if n > 4 {
                        ts.ptr = null();
                        out.ptr = null();
                    } else {
                        if lat.len != n * per || lat.storage.len() <= n * per {
                            lat.ptr = null();
                        }
                        if ts.len != n || ts.storage.len() <= n {
                            ts.ptr = null();
                        }
                        if out.len != n || out.storage.len() <= n {
                            out.ptr = null();
                        }
                    }
                    prfl_score_batch(rt, lat.ptr, n, per, ts.ptr, t.ptr, t.len, out.mut_ptr())
                }
                14 => {
                    let n = 1 + rng.below(4);
                    let keep = rng.pick(&[0, 1, n, n + 1, usize::MAX]);
                    let lat = floats(&mut rng, n * LATENT);
                    let lat_ptr = if lat.len == n * LATENT {
                        lat.ptr
                    } else {
                        null()
                    };
                    let t = floats(&mut rng, TEXT);
                    let mut kept = vec![0u32; n + 1];
                    let mut scores = vec![0f32; n + 1];
                    let kp = if keep <= n {
                        kept.as_mut_ptr()
                    } else {
                        null_mut()
                    };
                    let sp = if keep <= n && rng.chance(80) {
                        scores.as_mut_ptr()
                    } else {
                        null_mut()
                    };
                    let ts = rng.pick(&[0.0, 400.0, f32::NAN, 2000.0]);
                    prfl_select_candidates(rt, lat_ptr, n, LATENT, ts, t.ptr, t.len, keep, kp, sp)
                }
                15 => {
                    let n = 1 + rng.below(3);
                    let noise = floats(&mut rng, n * LATENT);
                    let noise_ptr = if noise.len == n * LATENT {
                        noise.ptr
                    } else {
                        null()
                    };
                    let t = floats(&mut rng, TEXT);
                    let mut sc = Padded {
                        value: PrflSampleConfig::default(),
                        pad: [0; 64],
                    };
                    prfl_sample_config_default(&mut sc.value);
                    sc.value.struct_size = struct_size::<PrflSampleConfig>(&mut rng);
                    sc.value.steps = rng.pick(&[0, 1, 2, 3, 4, u32::MAX]);
                    sc.value.reject_at_step = rng.pick(&[0, 1, 2, 9]);
                    sc.value.keep = rng.pick(&[0, 1, n as u32, n as u32 + 1]);
                    sc.value.solver = rng.pick(&[0, 1, 7]);
                    sc.value.shift = rng.pick(&[0.0, 5.0, f32::NAN, -1.0]);
                    let mut out = vec![0f32; (n + 1) * LATENT];
                    let mut kept = vec![0u32; n + 1];
                    let mut stats = Padded {
                        value: PrflSampleStats::default(),
                        pad: [0; 64],
                    };
                    stats.value.struct_size = struct_size::<PrflSampleStats>(&mut rng);
                    let cfg_ptr = if rng.chance(5) { null() } else { &sc.value };
                    let stats_ptr = if rng.chance(5) {
                        null_mut()
                    } else {
                        &mut stats.value
                    };
                    prfl_sample_early_reject(
                        rt,
                        noise_ptr,
                        n,
                        LATENT,
                        t.ptr,
                        t.len,
                        cfg_ptr,
                        out.as_mut_ptr(),
                        kept.as_mut_ptr(),
                        stats_ptr,
                    )
                }
                16 => prfl_start(rt, rng.pick(&[0, 1, 1, 5, -3])),
                17 | 18 => prfl_stop(rt),
                19 => {
                    let p = if rng.chance(80) {
                        Some(CString::new(paths.save.to_str().unwrap()).unwrap())
                    } else {
                        path_arg(&mut rng, &paths)
                    };
                    prfl_save(rt, opt_ptr(&p))
                }
                20 => {
                    let p = if rng.chance(60) {
                        Some(CString::new(paths.save.to_str().unwrap()).unwrap())
                    } else {
                        path_arg(&mut rng, &paths)
                    };
                    prfl_load(rt, opt_ptr(&p))
                }
                21 => {
                    let mut p = Padded {
                        value: PrflQueueStats::default(),
                        pad: [0; 64],
                    };
                    p.value.struct_size = struct_size::<PrflQueueStats>(&mut rng);
                    let out = if rng.chance(5) {
                        null_mut()
                    } else {
                        &mut p.value
                    };
                    prfl_queue_stats(rt, out)
                }
                22 => {
                    let level = rng.pick(&[0, 1, 3, 5, 6, -1]);
                    let cb = if rng.chance(50) {
                        None
                    } else {
                        Some(on_log as _)
                    };
                    prfl_set_log_callback(cb, null_mut(), level)
                }
                _ => {
                    assert_eq!(prfl_abi_version(), prfl::ffi::PRFL_ABI_VERSION);
                    assert!(!CStr::from_ptr(prfl_version()).to_bytes().is_empty());
                    continue;
                }
            }
        };
        assert_ne!(status, PRFL_ERR_PANIC, "{where_}: {}", last_error());
        if status == PRFL_OK {
            ok_by_op[op] += 1;
        } else {
            failures += 1;
            assert!(
                !last_error().is_empty(),
                "{where_}: {status:?} without a message"
            );
        }
        if !rt.is_null() && runtimes.contains(&rt) {
            check_stats(rt, &where_);
        }
    }
    // SAFETY: turning logging off; destroying the live handles once each.
    unsafe {
        assert_eq!(prfl_set_log_callback(None, null_mut(), 0), PRFL_OK);
        for rt in runtimes {
            prfl_destroy(rt);
        }
        prfl_destroy(null_mut());
    }
    eprintln!(
        "{calls} calls, {failures} failed; successes by op: {ok_by_op:?}; {} log records",
        LOGGED.load(Ordering::Relaxed)
    );
    assert!(
        failures > 0 && failures < calls,
        "{failures} of {calls} calls failed"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
