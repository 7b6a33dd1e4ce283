//! The emulated device's stand-in cuBLASLt and cuBLAS (`tests/cuda_emu/libcublasLt.cpp`,
//! `tests/cuda_emu/libcublas.cpp`) against their self-test (`tests/cuda_emu/gemm_selftest.cpp`):
//! every transpose combination, non-tight leading dimensions, alpha/beta (beta = 0 with a
//! NaN-filled C), the bias epilogue, bf16/f16/f32 inputs, in-place C = D, the documented error
//! statuses, `cublasSger_v2`, and concurrent use, each compared with a reference written from the
//! mathematics.
//!
//! Each test builds the two libraries exactly as the emulation harness does (each file alone, as
//! a shared library with its unversioned SONAME), warnings as errors, plus the self-test, with
//! g++ into `<target>/cuda-emu/gemm-selftest/<variant>-<hash>/`, and runs the self-test on them:
//! uninstrumented, under AddressSanitizer + UBSan, and under ThreadSanitizer. The folder is named
//! by a hash of the sources and flags, so a build is redone only when one changed; it is built in
//! a private folder and renamed into place, so concurrent runs never see half a build.
//!
//! Without g++ the tests skip with a message; any other failure (a compile error, a warning, a
//! failed check, a sanitizer report) fails them.
//!
//! A last test checks `tests/common/cuda_emu_blas_stats.rs`, the reader of the stand-ins' call
//! counters that tests on the emulated device use to see which GEMM path prfl took.

use std::collections::hash_map::DefaultHasher;
use std::ffi::{c_int, c_void};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::ptr::null_mut;

#[path = "common/cuda_emu_blas_stats.rs"]
mod cuda_emu_blas_stats;

/// The sources, relative to the crate root.
const LT_SOURCE: &str = "tests/cuda_emu/libcublasLt.cpp";
const BLAS_SOURCE: &str = "tests/cuda_emu/libcublas.cpp";
const SELFTEST_SOURCE: &str = "tests/cuda_emu/gemm_selftest.cpp";

/// Flags every build uses: the harness's library flags, and warnings as errors (the stand-ins
/// must stay warning-free under `-Wall -Wextra`).
const COMMON_FLAGS: &[&str] = &["-std=c++17", "-g", "-Wall", "-Wextra", "-Werror"];

// The variants (their names and sanitizer flags) are the emulation harness's own.
#[path = "common/cuda_emu.rs"]
mod cuda_emu;
use cuda_emu::Variant;

/// Sanitizer settings for the self-test's run: stop at the first report, with an exit status of
/// its own (leaks count here: the self-test owns every allocation it makes).
fn run_env(variant: Variant) -> &'static [(&'static str, &'static str)] {
    match variant {
        Variant::Plain => &[],
        Variant::Asan => &[
            (
                "ASAN_OPTIONS",
                "detect_leaks=1:abort_on_error=0:exitcode=66",
            ),
            (
                "UBSAN_OPTIONS",
                "print_stacktrace=1:halt_on_error=1:exitcode=66",
            ),
        ],
        Variant::Tsan => &[("TSAN_OPTIONS", "halt_on_error=1:exitcode=66")],
    }
}

fn crate_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `<target>`: the folder above the one cargo gives integration tests for temporary files.
fn target_dir() -> PathBuf {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().map_or(tmp.clone(), Path::to_path_buf)
}

fn have_gxx() -> bool {
    Command::new("g++").arg("--version").output().is_ok()
}

/// Runs g++ with `args`; the error carries the full command and its output.
fn gxx(args: &[String]) -> Result<(), String> {
    let out = Command::new("g++")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run g++: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "g++ {} failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

fn s(v: &str) -> String {
    v.to_string()
}

/// Builds (if needed) the variant's two libraries and self-test; returns their folder.
fn build(variant: Variant) -> Result<PathBuf, String> {
    let root = crate_root();
    let mut hasher = DefaultHasher::new();
    for src in [LT_SOURCE, BLAS_SOURCE, SELFTEST_SOURCE] {
        let text = std::fs::read(root.join(src)).map_err(|e| format!("read {src}: {e}"))?;
        text.hash(&mut hasher);
    }
    COMMON_FLAGS.hash(&mut hasher);
    variant.sanitizer_flags().hash(&mut hasher);
    let base = target_dir().join("cuda-emu").join("gemm-selftest");
    let dir = base.join(format!("{}-{:016x}", variant.name(), hasher.finish()));
    if dir.join("gemm_selftest").is_file() {
        return Ok(dir);
    }
    let tmp = base.join(format!(".{}-{}-tmp", variant.name(), std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| format!("create {}: {e}", tmp.display()))?;
    let flags: Vec<String> = COMMON_FLAGS
        .iter()
        .chain(variant.sanitizer_flags())
        .map(|f| s(f))
        .collect();
    for (src, lib) in [(LT_SOURCE, "libcublasLt.so"), (BLAS_SOURCE, "libcublas.so")] {
        let mut args = flags.clone();
        args.extend([
            s("-O2"),
            s("-fPIC"),
            s("-shared"),
            format!("-Wl,-soname,{lib}"),
            root.join(src).display().to_string(),
            s("-o"),
            tmp.join(lib).display().to_string(),
        ]);
        gxx(&args)?;
    }
    let mut args = flags;
    args.extend([
        s("-O1"),
        s("-pthread"),
        root.join(SELFTEST_SOURCE).display().to_string(),
        s("-o"),
        tmp.join("gemm_selftest").display().to_string(),
        s("-ldl"),
    ]);
    gxx(&args)?;
    // Another process may have won the race: its folder is as good as ours.
    if std::fs::rename(&tmp, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
        if !dir.join("gemm_selftest").is_file() {
            return Err(format!("could not move the build into {}", dir.display()));
        }
    }
    Ok(dir)
}

fn selftest(variant: Variant) {
    if !have_gxx() {
        eprintln!(
            "skipping the stand-in cuBLAS self-test ({}): g++ not found",
            variant.name()
        );
        return;
    }
    let dir = build(variant).unwrap_or_else(|e| panic!("{e}"));
    let mut cmd = Command::new(dir.join("gemm_selftest"));
    cmd.arg(dir.join("libcublasLt.so"))
        .arg(dir.join("libcublas.so"));
    for (k, v) in run_env(variant) {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run gemm_selftest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "gemm_selftest ({}) failed with {}:\n{stdout}\n{stderr}",
        variant.name(),
        out.status
    );
    // A sanitizer that reported without failing the run would still be a finding.
    for marker in [
        "ERROR: AddressSanitizer",
        "runtime error:",
        "WARNING: ThreadSanitizer",
    ] {
        assert!(
            !stderr.contains(marker),
            "gemm_selftest ({}) printed a sanitizer report:\n{stderr}",
            variant.name()
        );
    }
    assert!(
        stdout.contains(", 0 failed"),
        "gemm_selftest ({}) did not report its checks:\n{stdout}",
        variant.name()
    );
}

#[test]
fn stand_in_cublas_matches_the_documented_semantics() {
    selftest(Variant::Plain);
}

#[test]
fn stand_in_cublas_is_clean_under_address_and_ub_sanitizers() {
    selftest(Variant::Asan);
}

#[test]
fn stand_in_cublas_is_clean_under_thread_sanitizer() {
    selftest(Variant::Tsan);
}

/// `cublasLtMatmulAlgoGetHeuristic`'s C signature (the handle, descriptor and layouts as
/// pointers; the result array untyped: this call never reaches it).
type HeuristicFn = unsafe extern "C" fn(
    *mut c_void,
    *mut c_void,
    *mut c_void,
    *mut c_void,
    *mut c_void,
    *mut c_void,
    *mut c_void,
    c_int,
    *mut c_void,
    *mut c_int,
) -> c_int;

/// `cublasSger_v2`'s C signature.
type SgerFn = unsafe extern "C" fn(
    *mut c_void,
    c_int,
    c_int,
    *const f32,
    *const f32,
    c_int,
    *const f32,
    c_int,
    *mut f32,
    c_int,
) -> c_int;

#[test]
fn blas_stats_reader_counts_the_loaded_stand_ins_calls() {
    if !have_gxx() {
        eprintln!("skipping the counter reader check: g++ not found");
        return;
    }
    let dir = build(Variant::Plain).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        cuda_emu_blas_stats::read(&dir).is_err(),
        "the reader must not load a fresh copy of a library this process has not loaded"
    );
    // SAFETY: the stand-ins run no code at load time but their static initialisers.
    let (lt, blas) = unsafe {
        (
            libloading::Library::new(dir.join("libcublasLt.so")).expect("load libcublasLt.so"),
            libloading::Library::new(dir.join("libcublas.so")).expect("load libcublas.so"),
        )
    };
    let before = cuda_emu_blas_stats::read(&dir).expect("counters of the loaded stand-ins");
    // SAFETY: the symbols have these signatures; a NULL handle is refused before any other
    // argument is read (that refusal is what is counted). The Sger call is a complete, valid
    // rank-1 update of a 2 x 2 matrix.
    unsafe {
        let heuristic: libloading::Symbol<HeuristicFn> =
            lt.get(b"cublasLtMatmulAlgoGetHeuristic\0").unwrap();
        let status = heuristic(
            null_mut(),
            null_mut(),
            null_mut(),
            null_mut(),
            null_mut(),
            null_mut(),
            null_mut(),
            1,
            null_mut(),
            null_mut(),
        );
        assert_eq!(status, 1, "a NULL handle is CUBLAS_STATUS_NOT_INITIALIZED");
        let create: libloading::Symbol<unsafe extern "C" fn(*mut *mut c_void) -> c_int> =
            blas.get(b"cublasCreate_v2\0").unwrap();
        let destroy: libloading::Symbol<unsafe extern "C" fn(*mut c_void) -> c_int> =
            blas.get(b"cublasDestroy_v2\0").unwrap();
        let sger: libloading::Symbol<SgerFn> = blas.get(b"cublasSger_v2\0").unwrap();
        let mut handle = null_mut();
        assert_eq!(create(&mut handle), 0);
        let (x, y, mut a) = ([1.0f32, 2.0], [3.0f32, 4.0], [0.0f32; 4]);
        let status = sger(
            handle,
            2,
            2,
            &0.5,
            x.as_ptr(),
            1,
            y.as_ptr(),
            1,
            a.as_mut_ptr(),
            2,
        );
        assert_eq!(status, 0);
        // Column-major A += 0.5 x y^T.
        assert_eq!(a, [1.5, 3.0, 2.0, 4.0]);
        assert_eq!(destroy(handle), 0);
    }
    let after = cuda_emu_blas_stats::read(&dir).expect("counters after the calls");
    let d = after.since(&before);
    assert_eq!(
        d,
        cuda_emu_blas_stats::BlasStats {
            lt_heuristic_refused: 1,
            sger_ok: 1,
            ..Default::default()
        },
        "counted calls"
    );
    assert!(d.any_refused());
}
