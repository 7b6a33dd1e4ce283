//! Link settings of the C library (`libprfl.so`) on Linux:
//!
//! - its `SONAME` carries the ABI major version (`libprfl.so.1`), read from `PRFL_ABI_VERSION` in
//!   `src/ffi/config.rs`, so that a host linked against ABI 1 never loads a library of ABI 2;
//! - the version script `packaging/libprfl.map` exports `prfl_*` and nothing else. rustc passes
//!   its own script for a cdylib too (the crate's `#[no_mangle]` functions global, everything
//!   else local); GNU ld applies both, and a name rustc lists exactly wins over our pattern, so
//!   the library's own list decides in the end: `tests/packaging.rs` checks with `readelf` and
//!   `nm` that every exported symbol is a `prfl_` one.
//!
//! Only the cdylib gets these arguments (`rustc-cdylib-link-arg`): the CLI, the tests and the
//! staticlib link as before. Other targets (Windows `prfl.dll`, macOS) are left as cargo makes them.

use std::path::Path;

fn main() {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    let root = Path::new(&manifest_dir);
    let config = root.join("src/ffi/config.rs");
    let map = root.join("packaging/libprfl.map");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={}", config.display());
    println!("cargo:rerun-if-changed={}", map.display());

    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return;
    }
    let abi = match abi_major(&config) {
        Ok(v) => v,
        Err(why) => panic!("build.rs: {why}"),
    };
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libprfl.so.{abi}");
    println!(
        "cargo:rustc-cdylib-link-arg=-Wl,--version-script={}",
        map.display()
    );
}

/// The value of `pub const PRFL_ABI_VERSION: u32 = N;` in `src/ffi/config.rs`.
fn abi_major(config: &Path) -> Result<u32, String> {
    let text = std::fs::read_to_string(config)
        .map_err(|e| format!("cannot read {}: {e}", config.display()))?;
    text.lines()
        .filter_map(|line| {
            line.trim()
                .strip_prefix("pub const PRFL_ABI_VERSION: u32 =")
        })
        .map(|rest| rest.trim().trim_end_matches(';').trim().parse::<u32>())
        .next()
        .ok_or_else(|| {
            format!(
                "{} defines no `pub const PRFL_ABI_VERSION: u32`",
                config.display()
            )
        })?
        .map_err(|e| {
            format!(
                "PRFL_ABI_VERSION in {} is not a number: {e}",
                config.display()
            )
        })
}
