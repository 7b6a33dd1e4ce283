//! Helpers of the tests that build C and C++ hosts against the library cargo built for them
//! (`tests/packaging.rs`, `tests/windows.rs`): the C ABI's function names as `include/prfl.h`
//! declares them, the folder of the library artefacts, tool look-ups and scratch folders.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `target/<profile>/deps`, where cargo put this test binary and the library's C artefacts
/// (`libprfl.so`, `libprfl.a`).
pub fn deps_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test binary");
    exe.parent()
        .expect("the test binary lives in a directory")
        .to_path_buf()
}

/// The target directory (`target/`, or `CARGO_TARGET_DIR`): two levels above `deps`.
pub fn target_dir() -> PathBuf {
    deps_dir()
        .parent()
        .and_then(Path::parent)
        .expect("deps lives in target/<profile>/")
        .to_path_buf()
}

/// Whether `tool` is on the PATH.
pub fn found(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Whether the comma-separated list in environment variable `var` names `part`.
pub fn required(var: &str, part: &str) -> bool {
    std::env::var(var)
        .map(|v| v.split(',').any(|p| p.trim() == part))
        .unwrap_or(false)
}

/// A fresh, empty scratch folder under cargo's per-test temporary directory.
pub fn scratch(name: &str) -> PathBuf {
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the scratch folder");
    dir
}

/// Runs `cmd`, printing its output through the harness; panics with `what` when it fails.
pub fn run_ok(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start {:?}: {e}", cmd.get_program()));
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "{what} failed ({}); its output is above",
        out.status
    );
    out
}

/// Runs `cmd` and returns its standard output; panics with `what` and the output when it fails.
pub fn stdout_of(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start {:?}: {e}", cmd.get_program()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The functions `include/prfl.h` declares (every `prfl_*` name followed by `(` outside
/// comments), in header order: the C ABI the library must export, no more and no less.
pub fn header_functions() -> Vec<String> {
    let header = std::fs::read_to_string(root().join("include/prfl.h")).expect("include/prfl.h");
    let code = strip_comments(&header);
    let bytes = code.as_bytes();
    let mut names = Vec::new();
    let mut i = 0;
    while let Some(at) = code[i..].find("prfl_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let word_start =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let rest = code[end..].trim_start();
        if word_start && rest.starts_with('(') {
            let name = code[start..end].to_string();
            if !names.contains(&name) {
                names.push(name);
            }
        }
        i = end;
    }
    names
}

/// C source without `/* */` and `//` comments (the header's doc comments mention calls).
fn strip_comments(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    loop {
        let block = rest.find("/*");
        let line = rest.find("//");
        // Whichever comment opens first: a `//` inside a block comment is part of it.
        let block_first = match (block, line) {
            (Some(b), Some(l)) => b < l,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if let (true, Some(b)) = (block_first, block) {
            out.push_str(&rest[..b]);
            rest = rest[b + 2..]
                .find("*/")
                .map_or("", |e| &rest[b + 2 + e + 2..]);
        } else if let Some(l) = line {
            out.push_str(&rest[..l]);
            rest = rest[l..].find('\n').map_or("", |e| &rest[l + e..]);
        } else {
            out.push_str(rest);
            return out;
        }
    }
}
