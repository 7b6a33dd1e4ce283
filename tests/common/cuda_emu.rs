//! The emulated CUDA device for the GPU tests: builds the stand-in driver libraries of
//! `tests/cuda_emu/` (libcuda, libnvrtc, libcublas, libcublasLt) with the host C++ compiler into
//! `target/cuda-emu/<variant>/lib-<hash>/`, a folder that `CudaOptions::lib_dir` then points at,
//! so the real prfl CUDA backend loads them through its normal library-folder path.
//!
//! `PRFL_CUDA_EMULATE` selects the variant: `1` or `plain`, `asan` (AddressSanitizer + UBSan) or
//! `tsan` (ThreadSanitizer). The sanitizer variants instrument the stand-ins and every kernel
//! module; the test process must then have the sanitizer runtime preloaded (`LD_PRELOAD`), see
//! `tests/cuda_emu/README.md`.
//!
//! The folder's name is a hash of the sources and flags, so a build is redone exactly when one
//! of them changed, and concurrent test processes never see a half-built folder: each builds in
//! a private temporary folder and renames it into place (the loser of a race uses the winner's).
//! Kernel images compiled by the stand-in NVRTC are cached per folder too (`PRFL_KERNEL_CACHE`,
//! unless already set, e.g. to `off` for mutation runs): the cache key does not cover the
//! emulation header, and emulated images must never mix with real CUBINs.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Which build of the emulation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Plain,
    Asan,
    Tsan,
}

impl Variant {
    /// The variant `PRFL_CUDA_EMULATE` asks for: `None` when unset (or empty / `0`), an error
    /// for a value that names none.
    pub fn from_env() -> Option<Result<Variant, String>> {
        let v = std::env::var("PRFL_CUDA_EMULATE").ok()?;
        match v.trim() {
            "" | "0" => None,
            "1" | "plain" => Some(Ok(Variant::Plain)),
            "asan" => Some(Ok(Variant::Asan)),
            "tsan" => Some(Ok(Variant::Tsan)),
            other => Some(Err(format!(
                "PRFL_CUDA_EMULATE={other}: expected 1, plain, asan or tsan"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Variant::Plain => "plain",
            Variant::Asan => "asan",
            Variant::Tsan => "tsan",
        }
    }

    /// Compiler flags of the variant, for the stand-ins and the kernel modules alike.
    pub fn sanitizer_flags(self) -> &'static [&'static str] {
        match self {
            Variant::Plain => &[],
            Variant::Asan => &[
                "-fsanitize=address,undefined",
                "-fno-sanitize-recover=undefined",
                "-fno-omit-frame-pointer",
            ],
            Variant::Tsan => &["-fsanitize=thread"],
        }
    }

    /// The sanitizer runtime a test process must preload for this variant (`None` for plain).
    pub fn runtime_library(self) -> Option<&'static str> {
        match self {
            Variant::Plain => None,
            Variant::Asan => Some("libasan.so"),
            Variant::Tsan => Some("libtsan.so"),
        }
    }
}

/// A built emulation.
#[derive(Clone, Debug)]
pub struct Emulation {
    pub variant: Variant,
    /// The folder holding libcuda.so, libnvrtc.so, libcublas.so, libcublasLt.so.
    pub lib_dir: PathBuf,
    /// The kernel-image cache of this build.
    pub kernel_cache: PathBuf,
}

/// The stand-ins: (library stem, source file in tests/cuda_emu/).
const LIBRARIES: [(&str, &str); 4] = [
    ("cuda", "libcuda.cpp"),
    ("nvrtc", "libnvrtc.cpp"),
    ("cublas", "libcublas.cpp"),
    ("cublasLt", "libcublasLt.cpp"),
];
const HEADER: &str = "cuda_cpu.h";

fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("cuda_emu")
}

/// `<target>/cuda-emu`: beside the test executable's profile folder
/// (`<target>/<profile>/deps/<test>`), else `<crate>/target`.
fn emu_root() -> PathBuf {
    let from_exe = std::env::current_exe().ok().and_then(|exe| {
        exe.parent()
            .and_then(|deps| deps.parent())
            .and_then(|profile| profile.parent())
            .map(Path::to_path_buf)
    });
    from_exe
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("cuda-emu")
}

fn compiler() -> String {
    std::env::var("PRFL_EMU_CXX").unwrap_or_else(|_| "g++".to_string())
}

/// FNV-1a, 64 bits (stable across toolchains, unlike `DefaultHasher`).
fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in p.iter().chain(std::iter::once(&0xffu8)) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The flags every stand-in is built with, then the variant's.
fn library_flags(variant: Variant) -> Vec<String> {
    let mut f: Vec<String> = ["-std=c++17", "-O2", "-g", "-fPIC", "-shared", "-Wall"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    f.extend(variant.sanitizer_flags().iter().map(|s| s.to_string()));
    f
}

fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: cannot run {:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}):\n{:?}\n{}{}",
            out.status,
            cmd,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Builds the stand-ins of `variant` into `dir` (which exists and is empty); the stand-in NVRTC
/// compiles kernels with `header`.
fn build_into(dir: &Path, header: &Path, variant: Variant) -> Result<(), String> {
    let src = source_dir();
    let kernel_flags = variant.sanitizer_flags().join(" ");
    let results: Vec<Result<(), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = LIBRARIES
            .iter()
            .map(|&(stem, file)| {
                let (src, kernel_flags) = (&src, &kernel_flags);
                s.spawn(move || {
                    let soname = format!("lib{stem}.so");
                    let mut cmd = Command::new(compiler());
                    // (A sanitizer runtime preloaded into this process is not the compiler's.)
                    cmd.env_remove("LD_PRELOAD")
                        .args(library_flags(variant))
                        .arg(format!("-Wl,-soname,{soname}"));
                    if stem == "nvrtc" {
                        cmd.arg(format!("-DPRFL_EMU_HEADER=\"{}\"", header.display()))
                            .arg(format!("-DPRFL_EMU_FLAGS=\"{kernel_flags}\""));
                    }
                    cmd.arg(src.join(file))
                        .arg("-o")
                        .arg(dir.join(&soname))
                        .arg("-ldl")
                        .arg("-lpthread");
                    run(&mut cmd, &format!("building {soname}"))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a build thread panicked".into()))
            })
            .collect()
    });
    let errors: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}

/// Builds (or reuses) the emulation of `variant`. Errors carry the compiler's output. The first
/// answer per variant is kept for the life of the process: the libraries loaded from that
/// folder stay the process's even if a source changes meanwhile (a later call must not name a
/// rebuilt folder that nothing has loaded).
pub fn build(variant: Variant) -> Result<Emulation, String> {
    static BUILT: Mutex<Vec<(Variant, Result<Emulation, String>)>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, r)) = built.iter().find(|(v, _)| *v == variant) {
        return r.clone();
    }
    let r = build_uncached(variant);
    built.push((variant, r.clone()));
    r
}

/// For tests that use the emulated device from a process with no sanitizer runtime preloaded (a
/// sample, the CLI, a single-test binary): its plain build whenever `PRFL_CUDA_EMULATE` asks for
/// emulation (any variant), `None` when it does not. Panics with the reason when the setting is
/// not understood or the emulation does not build: asked for, it must not be skipped.
pub fn plain_build_if_requested() -> Option<Emulation> {
    if let Err(e) = Variant::from_env()? {
        panic!("{e}");
    }
    Some(build(Variant::Plain).unwrap_or_else(|e| {
        panic!("PRFL_CUDA_EMULATE is set but the emulation does not build: {e}")
    }))
}

fn build_uncached(variant: Variant) -> Result<Emulation, String> {
    let src = source_dir();
    let mut contents = Vec::new();
    for name in std::iter::once(HEADER).chain(LIBRARIES.iter().map(|&(_, f)| f)) {
        let path = src.join(name);
        let bytes = std::fs::read(&path)
            .map_err(|e| format!("the emulation source {} is missing: {e}", path.display()))?;
        contents.push(bytes);
    }
    let flags = library_flags(variant).join(" ");
    let cxx = compiler();
    let mut parts: Vec<&[u8]> = contents.iter().map(|c| c.as_slice()).collect();
    parts.push(flags.as_bytes());
    parts.push(cxx.as_bytes());
    let hash = fnv(&parts);

    let root = emu_root().join(variant.name());
    let lib_dir = root.join(format!("lib-{hash:016x}"));
    let kernel_cache = root.join(format!("kernels-{hash:016x}"));
    let done_marker = lib_dir.join("complete");
    if !done_marker.exists() {
        std::fs::create_dir_all(&root).map_err(|e| format!("creating {}: {e}", root.display()))?;
        let tmp = root.join(format!(
            "tmp-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| format!("creating {}: {e}", tmp.display()))?;
        // The header the stand-in NVRTC compiles kernels with: a snapshot named by the hash
        // (identical content for identical names, so a racing writer is harmless).
        let header = root.join(format!("cuda_cpu-{hash:016x}.h"));
        std::fs::write(tmp.join(HEADER), &contents[0])
            .and_then(|_| std::fs::rename(tmp.join(HEADER), &header))
            .map_err(|e| format!("writing {}: {e}", header.display()))?;
        if let Err(e) = build_into(&tmp, &header, variant) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(format!(
                "the CUDA emulation ({}) does not build:\n{e}",
                variant.name()
            ));
        }
        std::fs::write(tmp.join("complete"), b"")
            .map_err(|e| format!("writing {}: {e}", tmp.display()))?;
        match std::fs::rename(&tmp, &lib_dir) {
            Ok(()) => {}
            Err(_) if done_marker.exists() => {
                let _ = std::fs::remove_dir_all(&tmp);
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(format!("moving the build to {}: {e}", lib_dir.display()));
            }
        }
    }
    std::fs::create_dir_all(&kernel_cache)
        .map_err(|e| format!("creating {}: {e}", kernel_cache.display()))?;
    Ok(Emulation {
        variant,
        lib_dir,
        kernel_cache,
    })
}
