//! Builds and runs the C, C++, Unreal-core and Unity samples (`samples/run.sh`) against the
//! `libprfl.a` / `libprfl.so` that this very `cargo test` built: cargo compiles the library with
//! all its crate types (rlib, cdylib, staticlib) into the test binary's `deps` directory, so no
//! second build (and no nested cargo fighting over the target-directory lock) is needed.
//!
//! gcc and g++ are required. The Mono part and the valgrind run are skipped with a message when
//! `mcs`/`mono` or `valgrind` are missing, unless `PRFL_SAMPLES_REQUIRE` names them (CI sets
//! `PRFL_SAMPLES_REQUIRE=mono,valgrind` after installing them), in which case their absence fails.
//!
//! With `PRFL_CUDA_EMULATE` set (CI sets it), the shared C sample also runs with
//! `device = cuda` on the emulated device (`tests/cuda_emu/`, built here; always its plain
//! build, since the sample's process has no sanitizer runtime preloaded): the whole C ABI path,
//! submission queue, background trainer, scoring, save and reload, on the CUDA backend.

use std::path::{Path, PathBuf};
use std::process::Command;

// Shared with tests/cuda_backend.rs (the module allows the parts this file does not use).
#[path = "common/cuda_emu.rs"]
mod cuda_emu;

fn found(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// `target/<profile>/deps`, where cargo put this test binary and the library's C artefacts.
fn deps_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test binary");
    exe.parent()
        .expect("the test binary lives in a directory")
        .to_path_buf()
}

#[test]
#[cfg_attr(
    not(target_os = "linux"),
    ignore = "samples/run.sh is written for Linux"
)]
fn samples_build_and_run() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for tool in ["bash", "gcc", "g++", "readelf", "timeout"] {
        assert!(
            found(tool),
            "`{tool}` is needed to build and run the samples"
        );
    }
    let lib_dir = deps_dir();
    for lib in ["libprfl.a", "libprfl.so"] {
        assert!(
            lib_dir.join(lib).is_file(),
            "{} is missing: cargo should have built the library's staticlib and cdylib next to \
             the test binary",
            lib_dir.join(lib).display()
        );
    }
    for (tools, part) in [
        (&["mcs", "mono"][..], "the Unity (Mono) smoke test"),
        (&["valgrind"][..], "the valgrind run"),
    ] {
        if !tools.iter().all(|t| found(t)) {
            eprintln!(
                "samples: {} not found: {part} will be skipped unless PRFL_SAMPLES_REQUIRE asks \
                 for it (see samples/README.md)",
                tools.join("/")
            );
        }
    }

    let mut run = Command::new("bash");
    run.arg(root.join("samples/run.sh"))
        .current_dir(root)
        .env("PRFL_LIB_DIR", &lib_dir);
    if let Some(emu) = cuda_emu::plain_build_if_requested() {
        run.env("PRFL_SAMPLES_CUDA_LIB_DIR", &emu.lib_dir)
            .env("PRFL_KERNEL_CACHE", &emu.kernel_cache);
    }
    let out = run.output().expect("run samples/run.sh");
    // Printed through the harness: shown on failure or with --nocapture.
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "samples/run.sh failed ({}); its output is above",
        out.status
    );
}
