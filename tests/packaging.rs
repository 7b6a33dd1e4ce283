//! Packaging for C and C++ hosts (Linux), checked on the `libprfl.so` / `libprfl.a` this very
//! `cargo test` built (see `tests/samples.rs`):
//!
//! - the shared library's `SONAME` is `libprfl.so.<PRFL_ABI_VERSION>` (`build.rs`) and it
//!   exports exactly the functions `include/prfl.h` declares (`nm -D --defined-only`);
//! - `packaging/prfl.def`, the export list of `prfl.dll` for import libraries, is the header's
//!   functions (`PRFL_UPDATE_DEF=1 cargo test --test packaging` rewrites it);
//! - `tools/install.sh` installs into a temporary prefix; `pkg-config` reads `prfl.pc`, and the
//!   C++ sample (`samples/cpp/CMakeLists.txt`) configures with `find_package(prfl)`, builds
//!   against `prfl::prfl` and runs, finding `libprfl.so.1` in the prefix with no
//!   `LD_LIBRARY_PATH`. Without `cmake` that part is skipped with a message, unless
//!   `PRFL_PACKAGING_REQUIRE` names `cmake` (CI sets it), in which case it fails.

use std::path::Path;
use std::process::Command;

#[path = "common/hosts.rs"]
mod hosts;

use hosts::{deps_dir, found, header_functions, root, run_ok, scratch, stdout_of};

/// The `SONAME` of an ELF shared library, from `readelf -d`.
fn soname(lib: &Path) -> Option<String> {
    stdout_of(Command::new("readelf").arg("-d").arg(lib), "readelf -d")
        .lines()
        .find(|l| l.contains("(SONAME)"))
        .and_then(|l| Some(l[l.find('[')? + 1..l.rfind(']')?].to_string()))
}

/// The `NEEDED` entries of an ELF file.
fn needed(file: &Path) -> Vec<String> {
    stdout_of(Command::new("readelf").arg("-d").arg(file), "readelf -d")
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| Some(l[l.find('[')? + 1..l.rfind(']')?].to_string()))
        .collect()
}

fn expected_soname() -> String {
    format!("libprfl.so.{}", prfl::ffi::PRFL_ABI_VERSION)
}

#[test]
#[cfg_attr(
    not(target_os = "linux"),
    ignore = "the SONAME and version script are Linux's"
)]
fn shared_library_soname_is_the_abi_major_version() {
    let lib = deps_dir().join("libprfl.so");
    assert_eq!(
        soname(&lib).as_deref(),
        Some(expected_soname().as_str()),
        "{}: SONAME (build.rs sets it from PRFL_ABI_VERSION)",
        lib.display()
    );
}

#[test]
#[cfg_attr(not(target_os = "linux"), ignore = "nm -D reads ELF libraries")]
fn shared_library_exports_only_the_c_abi() {
    let lib = deps_dir().join("libprfl.so");
    let symbols = stdout_of(
        Command::new("nm").args(["-D", "--defined-only"]).arg(&lib),
        "nm -D --defined-only",
    );
    let mut exported = Vec::new();
    for line in symbols.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (kind, name) = match fields.as_slice() {
            [_, kind, name] | [kind, name] => (*kind, *name),
            _ => panic!("unexpected nm line `{line}`"),
        };
        // A version node of a version script shows up as an absolute symbol.
        if kind == "A" && !name.starts_with("prfl_") {
            continue;
        }
        assert!(
            name.starts_with("prfl_"),
            "{} exports `{name}` ({kind}): only prfl_* may be exported (packaging/libprfl.map)",
            lib.display()
        );
        exported.push(name.to_string());
    }
    exported.sort();
    let mut declared = header_functions();
    declared.sort();
    assert!(
        declared.len() >= 20,
        "too few functions found in include/prfl.h: {declared:?}"
    );
    assert_eq!(
        exported, declared,
        "the exported functions must be exactly those include/prfl.h declares"
    );
}

/// `packaging/prfl.def` as it must read: `prfl.dll`'s exports, the header's functions in order.
fn render_def() -> String {
    let mut def = String::from(
        "; prfl.dll's exports: every function of include/prfl.h (the C ABI), in header order.\n\
         ; Generated and checked by tests/packaging.rs (PRFL_UPDATE_DEF=1 cargo test --test packaging).\n\
         ; An MSVC import library for a prfl.dll built with mingw (x86_64-pc-windows-gnu):\n\
         ;   lib /def:prfl.def /machine:x64 /out:prfl.dll.lib\n\
         ; or with binutils / LLVM:  x86_64-w64-mingw32-dlltool -d prfl.def -D prfl.dll -l prfl.dll.lib\n\
         LIBRARY prfl.dll\n\
         EXPORTS\n",
    );
    for f in header_functions() {
        def.push_str("    ");
        def.push_str(&f);
        def.push('\n');
    }
    def
}

#[test]
fn def_file_lists_the_header_functions() {
    let path = root().join("packaging/prfl.def");
    let fresh = render_def();
    if std::env::var_os("PRFL_UPDATE_DEF").is_some() {
        std::fs::write(&path, &fresh).expect("write packaging/prfl.def");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "packaging/prfl.def is stale: include/prfl.h declares other functions. Regenerate it with\n    \
         PRFL_UPDATE_DEF=1 cargo test --test packaging\nand commit the result. Expected:\n{fresh}"
    );
}

#[test]
#[cfg_attr(
    not(target_os = "linux"),
    ignore = "tools/install.sh installs the Linux library"
)]
fn install_then_build_the_cpp_sample_with_cmake() {
    let have_cmake = found("cmake");
    if !have_cmake && !hosts::required("PRFL_PACKAGING_REQUIRE", "cmake") {
        eprintln!(
            "packaging: cmake not found: the install + find_package(prfl) test is skipped \
             (apt-get install -y cmake; PRFL_PACKAGING_REQUIRE=cmake makes this a failure)"
        );
        return;
    }
    assert!(
        have_cmake,
        "cmake is needed (PRFL_PACKAGING_REQUIRE includes cmake)"
    );
    for tool in ["bash", "readelf", "g++", "pkg-config"] {
        assert!(found(tool), "`{tool}` is needed for the install test");
    }
    let scratch = scratch("packaging-install");
    let prefix = scratch.join("prefix");

    // 1. Install from the debug build cargo made for this test.
    run_ok(
        Command::new("bash")
            .arg(root().join("tools/install.sh"))
            .arg("--lib-dir")
            .arg(deps_dir())
            .arg(&prefix),
        "tools/install.sh",
    );
    let lib = prefix.join("lib");
    let soname = expected_soname();
    for f in [
        "include/prfl.h",
        "include/prfl.hpp",
        "lib/libprfl.a",
        "lib/pkgconfig/prfl.pc",
        "lib/cmake/prfl/prflConfig.cmake",
        "lib/cmake/prfl/prflConfigVersion.cmake",
    ] {
        assert!(prefix.join(f).is_file(), "install did not produce {f}");
    }
    assert!(
        lib.join(&soname).is_file(),
        "install did not produce lib/{soname}"
    );
    assert_eq!(
        std::fs::read_link(lib.join("libprfl.so")).expect("lib/libprfl.so is a symlink"),
        Path::new(&soname),
        "lib/libprfl.so must point at the SONAME file"
    );

    // 2. pkg-config.
    let pc = run_ok(
        Command::new("pkg-config")
            .args(["--cflags", "--libs", "prfl"])
            .env("PKG_CONFIG_PATH", lib.join("pkgconfig")),
        "pkg-config --cflags --libs prfl",
    );
    let flags = String::from_utf8_lossy(&pc.stdout).into_owned();
    for want in [
        format!("-I{}", prefix.join("include").display()),
        format!("-L{}", lib.display()),
        "-lprfl".to_string(),
    ] {
        assert!(
            flags.contains(&want),
            "pkg-config prints `{}`, missing `{want}`",
            flags.trim()
        );
    }
    let static_pc = run_ok(
        Command::new("pkg-config")
            .args(["--libs", "--static", "prfl"])
            .env("PKG_CONFIG_PATH", lib.join("pkgconfig")),
        "pkg-config --libs --static prfl",
    );
    assert!(
        String::from_utf8_lossy(&static_pc.stdout).contains("-lpthread"),
        "pkg-config --static must add the system libraries libprfl.a needs"
    );

    // 3. The C++ sample through find_package(prfl) and prfl::prfl.
    let build = scratch.join("cpp-build");
    run_ok(
        Command::new("cmake")
            .arg("-S")
            .arg(root().join("samples/cpp"))
            .arg("-B")
            .arg(&build)
            .arg(format!("-DCMAKE_PREFIX_PATH={}", prefix.display()))
            .arg("-DCMAKE_BUILD_TYPE=RelWithDebInfo"),
        "cmake configure of samples/cpp with find_package(prfl)",
    );
    run_ok(
        Command::new("cmake").arg("--build").arg(&build),
        "cmake --build of samples/cpp",
    );
    let exe = build.join("prfl_sample_cpp");
    assert!(
        needed(&exe).contains(&soname),
        "the CMake-built sample must load {soname}: NEEDED is {:?}",
        needed(&exe)
    );
    let work = scratch.join("work");
    std::fs::create_dir_all(&work).expect("create the sample's work folder");
    let fixture = root().join("tests/fixtures/wan/t2v_small");
    // No LD_LIBRARY_PATH: CMake's build RPATH points into the prefix, where the SONAME file is.
    run_ok(
        Command::new("timeout")
            .args(["--kill-after=10", "900"])
            .arg(&exe)
            .arg(fixture.join("original"))
            .arg(&work)
            .arg(fixture.join("diffusers/diffusion_pytorch_model.safetensors"))
            .arg(fixture.join("diffusers/config.json"))
            .env_remove("LD_LIBRARY_PATH"),
        "the C++ sample built through the CMake package",
    );
    let _ = std::fs::remove_dir_all(&scratch);
}
