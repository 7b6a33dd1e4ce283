//! Windows: the library cross-built for `x86_64-pc-windows-gnu` (`prfl.dll`), the C and C++
//! samples built against it with mingw-w64, and both run under Wine.
//!
//! - `prfl.dll` comes from a nested `cargo build --lib --target x86_64-pc-windows-gnu` into
//!   `target/windows/` (its own target directory: no lock shared with the outer `cargo test`),
//!   with the dev profile; the time it took is printed.
//! - The C sample links an import library made from `packaging/prfl.def` by `dlltool` (what an
//!   MSVC-built host does with `lib /def:`), so a `.def` that misses or misnames an export fails
//!   here; the C++ sample links cargo's own `libprfl.dll.a`. Both link mingw's runtime statically,
//!   so the folder holds the executables, `prfl.dll` and the stand-in below, nothing else.
//! - Rust's standard library imports `ProcessPrng` from `bcryptprimitives.dll`, which Wine 8
//!   lacks: the test-only stand-in `tests/windows/bcryptprimitives.c` is built next to the
//!   executables and preferred through `WINEDLLOVERRIDES`.
//! - `samples/unreal/stage_plugin.sh` stages that DLL with an MSVC-style `prfl.dll.lib` made
//!   from the `.def`.
//! - Wine has no CUDA driver (`nvcuda.dll`): the C sample runs with `device = auto` (the CUDA
//!   probe finds none and the CPU runs), and with `device = cuda` it must stop with prfl's
//!   "CUDA library ... not found" error, exit status 1, not a crash.
//!
//! Tools: the rustup target, `x86_64-w64-mingw32-gcc`/`g++` (Debian's `gcc-mingw-w64-x86-64`,
//! `g++-mingw-w64-x86-64`; the `-posix` variants when installed, for `std::thread`), its
//! `dlltool`, and Wine (`wine64`, or `PRFL_WINE`). When one is missing the test is skipped with a
//! message, unless `PRFL_WINDOWS_REQUIRE=1` (CI sets it after installing them).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

#[path = "common/hosts.rs"]
mod hosts;

use hosts::{found, root, run_ok, scratch, target_dir};

const TARGET: &str = "x86_64-pc-windows-gnu";

/// The first of `names` found on the PATH.
fn first_found(names: &[&str]) -> Option<String> {
    names.iter().find(|n| found(n)).map(|n| n.to_string())
}

/// The 64-bit Wine loader: `PRFL_WINE`, `wine64` on the PATH, Debian's
/// `/usr/lib/wine/wine64`, or `wine`.
fn wine_loader() -> Option<PathBuf> {
    if let Ok(w) = std::env::var("PRFL_WINE") {
        return Some(PathBuf::from(w));
    }
    if found("wine64") {
        return Some(PathBuf::from("wine64"));
    }
    let debian = Path::new("/usr/lib/wine/wine64");
    if debian.is_file() {
        return Some(debian.to_path_buf());
    }
    found("wine").then(|| PathBuf::from("wine"))
}

/// Whether rustup installed the standard library for `TARGET`.
fn rust_target_installed() -> bool {
    let Ok(out) = Command::new("rustc").args(["--print", "sysroot"]).output() else {
        return false;
    };
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Path::new(&sysroot)
        .join("lib/rustlib")
        .join(TARGET)
        .is_dir()
}

/// A Unix path as the Windows program sees it (Wine maps `/` to drive `Z:`).
fn win_path(p: &Path) -> String {
    format!("Z:{}", p.display()).replace('/', "\\")
}

struct Toolchain {
    gcc: String,
    gxx: String,
    dlltool: String,
    wine: PathBuf,
}

/// The tools, or why the test cannot run.
fn toolchain() -> Result<Toolchain, String> {
    let mut missing = Vec::new();
    if !rust_target_installed() {
        missing.push(format!("the Rust target (rustup target add {TARGET})"));
    }
    let gcc = first_found(&["x86_64-w64-mingw32-gcc-posix", "x86_64-w64-mingw32-gcc"]);
    let gxx = first_found(&["x86_64-w64-mingw32-g++-posix", "x86_64-w64-mingw32-g++"]);
    let dlltool = first_found(&["x86_64-w64-mingw32-dlltool"]);
    if gcc.is_none() || dlltool.is_none() {
        missing.push("mingw-w64 (apt-get install gcc-mingw-w64-x86-64)".into());
    }
    if gxx.is_none() {
        missing.push("mingw-w64 g++ (apt-get install g++-mingw-w64-x86-64)".into());
    }
    let wine = wine_loader();
    if wine.is_none() {
        missing.push("Wine (apt-get install wine wine64)".into());
    }
    match (gcc, gxx, dlltool, wine) {
        (Some(gcc), Some(gxx), Some(dlltool), Some(wine)) if missing.is_empty() => Ok(Toolchain {
            gcc,
            gxx,
            dlltool,
            wine,
        }),
        _ => Err(missing.join(", ")),
    }
}

/// Cross-builds `prfl.dll` (dev profile) and returns the folder holding it and `libprfl.dll.a`.
fn build_dll() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = target_dir().join("windows");
    let start = Instant::now();
    run_ok(
        Command::new(cargo)
            .args(["build", "--lib", "--target", TARGET, "--target-dir"])
            .arg(&target_dir)
            .current_dir(root()),
        "cargo build --lib --target x86_64-pc-windows-gnu",
    );
    println!(
        "windows: cargo build --lib --target {TARGET} took {:.1}s",
        start.elapsed().as_secs_f64()
    );
    let dir = target_dir.join(TARGET).join("debug");
    for f in ["prfl.dll", "libprfl.dll.a"] {
        assert!(
            dir.join(f).is_file(),
            "the cross-build did not produce {}",
            dir.join(f).display()
        );
    }
    dir
}

#[test]
fn samples_run_under_wine() {
    let tools = match toolchain() {
        Ok(t) => t,
        Err(missing) => {
            assert!(
                std::env::var_os("PRFL_WINDOWS_REQUIRE").is_none(),
                "PRFL_WINDOWS_REQUIRE is set but these are missing: {missing}"
            );
            eprintln!("windows: skipped: missing {missing}");
            return;
        }
    };
    let dll_dir = build_dll();
    let scratch = scratch("windows");
    let bin = scratch.join("bin");
    std::fs::create_dir_all(&bin).expect("create the bin folder");
    std::fs::copy(dll_dir.join("prfl.dll"), bin.join("prfl.dll")).expect("copy prfl.dll");
    let include = root().join("include");

    // The stand-in bcryptprimitives.dll (ProcessPrng for Rust's std on Wine 8).
    run_ok(
        Command::new(&tools.gcc)
            .args(["-shared", "-O1", "-Wall", "-Wextra", "-Werror", "-o"])
            .arg(bin.join("bcryptprimitives.dll"))
            .arg(root().join("tests/windows/bcryptprimitives.c"))
            .arg("-ladvapi32"),
        "build the stand-in bcryptprimitives.dll",
    );
    // An import library from the committed .def, as a host without cargo's would make one.
    let def_implib = scratch.join("prfl_from_def.a");
    run_ok(
        Command::new(&tools.dlltool)
            .arg("-d")
            .arg(root().join("packaging/prfl.def"))
            .args(["-D", "prfl.dll", "-l"])
            .arg(&def_implib),
        "dlltool: import library from packaging/prfl.def",
    );
    let c_exe = bin.join("prfl_sample_c.exe");
    run_ok(
        Command::new(&tools.gcc)
            .args(["-std=c11", "-O1", "-Wall", "-Wextra", "-Werror", "-I"])
            .arg(&include)
            .arg(root().join("samples/c/main.c"))
            .arg(&def_implib)
            .args(["-static", "-o"])
            .arg(&c_exe),
        "mingw gcc: the C sample against the .def import library",
    );
    let cpp_exe = bin.join("prfl_sample_cpp.exe");
    run_ok(
        Command::new(&tools.gxx)
            .args([
                "-std=c++17",
                "-O1",
                "-Wall",
                "-Wextra",
                "-Wpedantic",
                "-Wshadow",
                "-Werror",
                "-I",
            ])
            .arg(&include)
            .arg("-I")
            .arg(root().join("bindings/cpp"))
            .arg(root().join("samples/cpp/main.cpp"))
            // By path: with -static, -lprfl would pick libprfl.a (the staticlib) instead.
            .arg(dll_dir.join("libprfl.dll.a"))
            .args(["-static", "-o"])
            .arg(&cpp_exe),
        "mingw g++: the C++ sample against libprfl.dll.a",
    );

    // The Unreal plugin staged with the mingw-built DLL gets the MSVC import library that its
    // PrflLibrary.Build.cs links, made from the .def.
    let plugins = scratch.join("UnrealProject/Plugins");
    run_ok(
        Command::new("bash")
            .arg(root().join("samples/unreal/stage_plugin.sh"))
            .arg(&plugins)
            .arg(&dll_dir),
        "samples/unreal/stage_plugin.sh with the Windows DLL",
    );
    let win64 = plugins.join("PrflPlugin/Source/ThirdParty/PrflLibrary/lib/Win64");
    for f in ["prfl.dll", "prfl.dll.lib"] {
        assert!(
            win64.join(f).is_file(),
            "stage_plugin.sh did not stage Win64/{f}"
        );
    }

    let fixture = root().join("tests/fixtures/wan/t2v_small");
    let generator = win_path(&fixture.join("original"));
    let wine = |exe: &Path, args: &[String], env: &[(&str, &str)]| {
        let mut cmd = Command::new("timeout");
        cmd.args(["--kill-after=10", "900"])
            .arg(&tools.wine)
            .arg(exe)
            .args(args)
            .current_dir(&bin)
            .env("WINEPREFIX", scratch.join("wineprefix"))
            .env("WINEARCH", "win64")
            .env("WINEDEBUG", "-all")
            // The stand-in before any builtin; no Mono / Gecko installers for a console test.
            .env("WINEDLLOVERRIDES", "bcryptprimitives=n,b;mscoree=;mshtml=")
            .env_remove("DISPLAY");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    };
    let work = |name: &str| {
        let w = scratch.join("work").join(name);
        std::fs::create_dir_all(&w).expect("create a work folder");
        win_path(&w)
    };

    // 1. The C sample, device = auto: the CUDA probe finds no driver, the CPU runs everything.
    let start = Instant::now();
    run_ok(
        &mut wine(
            &c_exe,
            &[generator.clone(), work("c")],
            &[("PRFL_SAMPLE_DEVICE", "auto")],
        ),
        "the C sample under Wine (device = auto)",
    );
    println!(
        "windows: C sample under Wine: {:.1}s",
        start.elapsed().as_secs_f64()
    );

    // 2. device = cuda: a clear error from prfl_create, a normal exit.
    let out = wine(
        &c_exe,
        &[generator.clone(), work("c-cuda")],
        &[("PRFL_SAMPLE_DEVICE", "cuda")],
    )
    .output()
    .expect("run the C sample under Wine");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    println!("windows: device = cuda under Wine: {}", stderr.trim());
    assert_eq!(
        out.status.code(),
        Some(1),
        "with device = cuda and no driver the C sample must fail its prfl_create check (exit 1), \
         not crash; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("prfl_create")
            && stderr.contains("CUDA library")
            && stderr.contains("not found")
            && stderr.contains("nvcuda.dll"),
        "prfl_create with device = cuda must name the missing CUDA library and the names searched \
         (the driver is nvcuda.dll on Windows); stderr:\n{stderr}"
    );

    // 3. The C++ sample (CPU).
    let start = Instant::now();
    run_ok(
        &mut wine(
            &cpp_exe,
            &[
                generator,
                work("cpp"),
                win_path(&fixture.join("diffusers/diffusion_pytorch_model.safetensors")),
                win_path(&fixture.join("diffusers/config.json")),
            ],
            &[],
        ),
        "the C++ sample under Wine",
    );
    println!(
        "windows: C++ sample under Wine: {:.1}s",
        start.elapsed().as_secs_f64()
    );

    // The prefix's wineserver would otherwise linger for a few seconds.
    let _ = Command::new(&tools.wine)
        .args(["wineboot", "--shutdown"])
        .env("WINEPREFIX", scratch.join("wineprefix"))
        .env("WINEDEBUG", "-all")
        .output();
    let _ = std::fs::remove_dir_all(&scratch);
}
