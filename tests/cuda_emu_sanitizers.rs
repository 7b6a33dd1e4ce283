//! The CUDA kernels under ThreadSanitizer and AddressSanitizer + UBSan on the emulated device
//! (`tests/cuda_emu/`), and mutation tests proving that those runs catch what they claim to.
//!
//! Each test re-runs op tests of `tests/cuda_backend.rs` in a child process: that file is
//! compiled into this binary as a module, so the child is this very executable
//! (`current_exe`), filtered to `cuda_backend::<test>`, with `PRFL_CUDA_EMULATE=tsan|asan` and
//! the sanitizer runtime preloaded (the Rust test process itself is not instrumented; the
//! stand-in libraries and every kernel module are).
//!
//! - clean runs: the op tests (and, under ASan, the model and trainer steps) must pass with no
//!   sanitizer report;
//! - mutants (`PRFL_EMU_MUTATE`, the kernel cache off): a dropped `__syncthreads` must be a TSan
//!   data race, a dynamic shared-memory layout shifted past the end of the allocation and a row
//!   guard off by one must be ASan heap-buffer-overflows, and a mutant whose text does not
//!   occur in the source must fail to compile (a mutant can never silently be a no-op).
//!
//! Slow (minutes): run only with `PRFL_CUDA_SANITIZERS=1`, e.g.
//! `PRFL_CUDA_SANITIZERS=1 cargo test --test cuda_emu_sanitizers -- sanitizer_`
//! (the `cuda_backend::*` tests compiled in here run only in the children, which carry
//! `PRFL_EMU_SANITIZER_CHILD=1`; tests/cuda_backend.rs itself runs them once).

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Instant;

#[path = "cuda_backend.rs"]
mod cuda_backend;

use cuda_backend::cuda_emu::{self, Variant};

fn enabled(test: &str) -> bool {
    let on = std::env::var("PRFL_CUDA_SANITIZERS").is_ok_and(|v| v == "1");
    if !on {
        println!("skipping {test}: set PRFL_CUDA_SANITIZERS=1 to run the sanitizer tests");
    }
    on
}

/// The sanitizer runtime's full path, as the compiler that built the instrumented code knows it.
fn runtime(variant: Variant) -> PathBuf {
    let lib = variant.runtime_library().expect("a sanitizer variant");
    let cxx = std::env::var("PRFL_EMU_CXX").unwrap_or_else(|_| "g++".to_string());
    let out = Command::new(&cxx)
        .arg(format!("-print-file-name={lib}"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cxx}: {e}"));
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        path.is_absolute() && path.exists(),
        "{cxx} does not know {lib} (got {})",
        path.display()
    );
    path
}

/// What a child run printed and how it ended.
struct Run {
    out: Output,
    text: String,
}

impl Run {
    fn passed(&self) -> bool {
        self.out.status.success()
    }
    fn has(&self, needle: &str) -> bool {
        self.text.contains(needle)
    }
    /// The first sanitizer report (or the tail), for assertion messages.
    fn excerpt(&self) -> String {
        let start = [
            "WARNING: ThreadSanitizer",
            "ERROR: AddressSanitizer",
            "runtime error:",
        ]
        .iter()
        .filter_map(|m| self.text.find(m))
        .min()
        .unwrap_or(self.text.len().saturating_sub(4000));
        let end = (start + 4000).min(self.text.len());
        format!("status {}:\n{}", self.out.status, &self.text[start..end])
    }
}

/// Runs the `cuda_backend` tests `tests` of this executable on the emulated device `variant`,
/// with `mutate` as PRFL_EMU_MUTATE.
fn run(variant: Variant, tests: &[&str], mutate: Option<&str>) -> Run {
    // Build the variant here first (uninstrumented), so that a build error is reported as such.
    cuda_emu::build(variant).unwrap_or_else(|e| panic!("{e}"));
    let exe = std::env::current_exe().expect("the test executable");
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", "--test-threads", "1", "--nocapture"])
        .args(tests.iter().map(|t| format!("cuda_backend::{t}")))
        .env("PRFL_CUDA_EMULATE", variant.name())
        .env("PRFL_EMU_SANITIZER_CHILD", "1")
        .env("LD_PRELOAD", runtime(variant))
        .env(
            "TSAN_OPTIONS",
            // The Rust test harness is not instrumented: its libc calls through TSan's
            // interceptors would be false races.
            "halt_on_error=1 exitcode=66 report_signal_unsafe=0 ignore_noninstrumented_modules=1",
        )
        .env(
            "ASAN_OPTIONS",
            "detect_leaks=0:abort_on_error=0:exitcode=67",
        )
        .env(
            "UBSAN_OPTIONS",
            "halt_on_error=1:print_stacktrace=1:exitcode=68",
        )
        .env("RUST_BACKTRACE", "0")
        .env_remove("PRFL_KERNEL_CACHE")
        .env_remove("PRFL_EMU_MUTATE")
        .env_remove("PRFL_CUDA_SANITIZERS");
    if let Some(m) = mutate {
        cmd.env("PRFL_EMU_MUTATE", m)
            .env("PRFL_KERNEL_CACHE", "off");
    }
    let t0 = Instant::now();
    let out = cmd.output().expect("the child test process");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "{} {:?}{}: {} in {:.0} s",
        variant.name(),
        tests,
        if mutate.is_some() { " (mutant)" } else { "" },
        out.status,
        t0.elapsed().as_secs_f64()
    );
    Run { out, text }
}

const SANITIZER_REPORTS: [&str; 4] = [
    "WARNING: ThreadSanitizer",
    "ERROR: AddressSanitizer",
    "runtime error:",
    "launch failed",
];

fn assert_clean(variant: Variant, tests: &[&str]) {
    let r = run(variant, tests, None);
    for m in SANITIZER_REPORTS {
        assert!(!r.has(m), "{}: {m}\n{}", variant.name(), r.excerpt());
    }
    assert!(
        r.passed() && r.has(&format!("test result: ok. {} passed", tests.len())),
        "{} run failed:\n{}",
        variant.name(),
        r.excerpt()
    );
}

/// The op tests the sanitizer runs cover: every kernel source (the GEMMs have their own
/// sanitizer self-test, tests/cuda_emu_gemm.rs).
const OP_TESTS: [&str; 6] = [
    "attention",
    "norms",
    "modulation",
    "reductions_and_optimiser",
    "elementwise",
    "rope_and_patches",
];

#[test]
fn sanitizer_tsan_kernels_have_no_data_race() {
    if enabled("sanitizer_tsan_kernels_have_no_data_race") {
        assert_clean(Variant::Tsan, &OP_TESTS);
    }
}

#[test]
fn sanitizer_asan_ubsan_kernels_stay_in_bounds() {
    if enabled("sanitizer_asan_ubsan_kernels_stay_in_bounds") {
        assert_clean(Variant::Asan, &OP_TESTS);
    }
}

/// The whole model (T2V and I2V, with recompute) and both trainers under ASan + UBSan: every
/// kernel and GEMM of a real step (100 s here; too slow under TSan for CI).
#[test]
fn sanitizer_asan_ubsan_model_and_trainers_stay_in_bounds() {
    if enabled("sanitizer_asan_ubsan_model_and_trainers_stay_in_bounds") {
        assert_clean(
            Variant::Asan,
            &[
                "whole_model_forward_backward",
                "pavrm_training_step",
                "prfl_training_step",
            ],
        );
    }
}

/// Asserts that the mutant was applied and that the run failed with `signature` in a report
/// naming `site`.
fn assert_caught(r: &Run, stem: &str, signature: &str, site: &str) {
    assert!(
        r.has(&format!("prfl-emu nvrtc: mutant of {stem}.cu applied")),
        "the mutant of {stem}.cu was not applied:\n{}",
        r.excerpt()
    );
    assert!(!r.passed(), "the mutant survived:\n{}", r.excerpt());
    assert!(
        r.has(signature) && r.has(site),
        "expected {signature} at {site}:\n{}",
        r.excerpt()
    );
}

#[test]
fn sanitizer_mutant_dropped_barrier_is_a_data_race() {
    if !enabled("sanitizer_mutant_dropped_barrier_is_a_data_race") {
        return;
    }
    // The barrier between staging the Q tile in shared memory and reading it back as mma
    // fragments (flash_fwd).
    let r = run(
        Variant::Tsan,
        &["attention"],
        Some(
            r"attention::load_tile_bf16<D, BM, NT>(sK, q, qbase, rs, q0, lq)\;\n    __syncthreads()\;::load_tile_bf16<D, BM, NT>(sK, q, qbase, rs, q0, lq)\;",
        ),
    );
    assert_caught(
        &r,
        "attention",
        "WARNING: ThreadSanitizer: data race",
        "flash_fwd",
    );
}

#[test]
fn sanitizer_mutant_shared_memory_overrun_is_a_heap_overflow() {
    if !enabled("sanitizer_mutant_shared_memory_overrun_is_a_heap_overflow") {
        return;
    }
    // dK/dV's row statistics placed 16 bytes further than the launch's shared memory allows.
    let r = run(
        Variant::Asan,
        &["attention"],
        Some(
            r"attention::float* sL = reinterpret_cast<float*>(sdO + BMB * LDS)\;::float* sL = reinterpret_cast<float*>(sdO + BMB * LDS + 8)\;",
        ),
    );
    assert_caught(
        &r,
        "attention",
        "ERROR: AddressSanitizer: heap-buffer-overflow",
        "flash_bwd_dkdv",
    );
}

#[test]
fn sanitizer_mutant_row_guard_off_by_one_is_a_heap_overflow() {
    if !enabled("sanitizer_mutant_row_guard_off_by_one_is_a_heap_overflow") {
        return;
    }
    // rmsnorm_forward lets the warp of row `rows` (one past the last) through.
    let r = run(
        Variant::Asan,
        &["norms"],
        Some(
            r"norm::if (row >= rows) return\;\n    const int lane = threadIdx.x & 31\;\n    const float *xr = x + row * d\;\n    float *yr = y + row * d\;\n    const bool vec = (d & 3) == 0 && aligned16(x) && aligned16(y) && aligned16(weight)\;::if (row > rows) return\;\n    const int lane = threadIdx.x & 31\;\n    const float *xr = x + row * d\;\n    float *yr = y + row * d\;\n    const bool vec = (d & 3) == 0 && aligned16(x) && aligned16(y) && aligned16(weight)\;",
        ),
    );
    assert_caught(
        &r,
        "norm",
        "ERROR: AddressSanitizer: heap-buffer-overflow",
        "rmsnorm_forward",
    );
}

#[test]
fn sanitizer_mutant_that_matches_nothing_does_not_compile() {
    if !enabled("sanitizer_mutant_that_matches_nothing_does_not_compile") {
        return;
    }
    let r = run(
        Variant::Asan,
        &["norms"],
        Some(r"norm::this text is in no kernel::whatever"),
    );
    assert!(!r.passed(), "a no-op mutant passed:\n{}", r.excerpt());
    assert!(
        r.has("mutant of norm.cu rejected: the text occurs 0 times")
            && r.has("NVRTC_ERROR_COMPILATION"),
        "{}",
        r.excerpt()
    );
}
