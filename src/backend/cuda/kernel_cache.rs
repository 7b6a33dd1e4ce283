//! A disk cache of compiled kernel images, so that only the first `Cuda::open` (or
//! `prfl_create`) on a machine pays for NVRTC; the flash-attention source alone instantiates
//! four head dimensions' forward and backward kernels.
//!
//! An entry is named by a stable 64-bit FNV-1a hash of everything that determines the image:
//! the source text, its name, the NVRTC options (architecture and target included), NVRTC's
//! version, and the size and modification time of the NVRTC library file in use (so that a
//! patch-level NVRTC update, which keeps `major.minor`, recompiles too). Its content is the image followed by the FNV-1a hash of the image, so a truncated or
//! corrupted file is detected and recompiled rather than handed to the driver. Entries are
//! written to a temporary file and renamed, so concurrent processes never read half a file.
//! Every cache failure (no folder, read-only disk) only logs and compiles as if there were no
//! cache.
//!
//! The folder: `PRFL_KERNEL_CACHE` (a path; `0` or `off` disables the cache), else
//! `$XDG_CACHE_HOME/prfl/kernels`, else `$HOME/.cache/prfl/kernels`.

use std::path::{Path, PathBuf};

use super::compile::{self, CompileError, Target};
use super::types::KernelSource;

/// FNV-1a, 64 bits: stable across Rust versions and platforms (unlike `DefaultHasher`).
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn bytes(mut self, data: &[u8]) -> Self {
        for &b in data {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        // A separator, so that ("ab", "c") and ("a", "bc") hash differently.
        self.0 ^= 0xff;
        self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        self
    }
}

/// The cache folder, or `None` when the cache is disabled or no folder is known.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(v) = std::env::var_os("PRFL_KERNEL_CACHE") {
        let s = v.to_string_lossy();
        if s.trim().is_empty() || s == "0" || s.eq_ignore_ascii_case("off") {
            return None;
        }
        return Some(PathBuf::from(v));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))?;
    Some(base.join("prfl").join("kernels"))
}

/// The entry's file name for `src` compiled with `options` by NVRTC `version`, whose library
/// file is identified by `library` (see [`nvrtc_library_stamp`]).
pub fn entry_name(
    src: &KernelSource,
    options: &[String],
    version: (u32, u32),
    library: &str,
) -> String {
    let mut h = Fnv::new()
        .bytes(src.name.as_bytes())
        .bytes(src.code.as_bytes())
        .bytes(format!("nvrtc {}.{}", version.0, version.1).as_bytes())
        .bytes(library.as_bytes());
    for o in options {
        h = h.bytes(o.as_bytes());
    }
    format!("{}-{:016x}.bin", src.name, h.0)
}

/// `image` followed by its checksum.
pub fn encode(image: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(image.len() + 8);
    out.extend_from_slice(image);
    out.extend_from_slice(&Fnv::new().bytes(image).0.to_le_bytes());
    out
}

/// The image of an entry, or `None` when the checksum does not match.
pub fn decode(entry: &[u8]) -> Option<&[u8]> {
    let split = entry.len().checked_sub(8)?;
    let (image, sum) = entry.split_at(split);
    let sum = u64::from_le_bytes(sum.try_into().ok()?);
    (Fnv::new().bytes(image).0 == sum && !image.is_empty()).then_some(image)
}

/// The size and modification time of the NVRTC library file cudarc loaded (`size:mtime_ns`),
/// or an empty string where that cannot be told (the key then rests on the version alone).
/// NVRTC must be loaded (it is once its version has been asked).
pub fn nvrtc_library_stamp() -> String {
    let file = std::panic::catch_unwind(|| {
        // SAFETY: NVRTC is loaded (this function's contract); the panic is caught besides.
        unsafe { super::loaded::file(super::loaded::Which::Nvrtc) }
    })
    .ok()
    .flatten();
    let Some(meta) = file.and_then(|f| std::fs::metadata(f).ok()) else {
        return String::new();
    };
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("{}:{mtime}", meta.len())
}

/// Whether an image came from the cache or from NVRTC (for logs and tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Cache,
    Compiled,
}

/// [`compile::compile_with_log`] through the cache in `dir` (`None`: no cache).
pub fn compile_cached(
    src: &KernelSource,
    arch: (u32, u32),
    target: Target,
    dir: Option<&Path>,
) -> Result<(Vec<u8>, Origin), CompileError> {
    let Some(dir) = dir else {
        return compile::compile_with_log(src, arch, target).map(|(i, _)| (i, Origin::Compiled));
    };
    let version = compile::nvrtc_version()?;
    let stamp = nvrtc_library_stamp();
    let path = dir.join(entry_name(
        src,
        &compile::options(arch, target),
        version,
        &stamp,
    ));
    match std::fs::read(&path) {
        Ok(bytes) => match decode(&bytes) {
            Some(image) => return Ok((image.to_vec(), Origin::Cache)),
            None => ::log::warn!(
                "kernel cache: {} is corrupt; recompiling it",
                path.display()
            ),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => ::log::warn!("kernel cache: reading {}: {e}", path.display()),
    }
    let (image, _log) = compile::compile_with_log(src, arch, target)?;
    if let Err(e) = store(&path, &encode(&image)) {
        ::log::warn!("kernel cache: writing {}: {e}", path.display());
    }
    Ok((image, Origin::Compiled))
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename.
fn store(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: KernelSource = KernelSource {
        name: "t",
        code: "extern \"C\" __global__ void k() {}",
        functions: &["k"],
    };

    #[test]
    fn entries_round_trip_and_corruption_is_detected() {
        let image = b"\x7fELF some cubin bytes".to_vec();
        let entry = encode(&image);
        assert_eq!(decode(&entry), Some(&image[..]));
        for i in [0, 5, entry.len() - 1] {
            let mut bad = entry.clone();
            bad[i] ^= 1;
            assert_eq!(decode(&bad), None, "flipped byte {i}");
        }
        assert_eq!(decode(&entry[..entry.len() - 3]), None, "truncated");
        assert_eq!(decode(&[]), None);
        assert_eq!(decode(&encode(&[])), None, "an empty image is never valid");
    }

    #[test]
    fn names_change_with_everything_that_changes_the_image() {
        let o90 = compile::options((9, 0), Target::Cubin);
        let base = entry_name(&SRC, &o90, (13, 0), "");
        assert_eq!(base, entry_name(&SRC, &o90, (13, 0), ""), "stable");
        assert!(base.starts_with("t-") && base.ends_with(".bin"));
        let other_code = KernelSource {
            code: "extern \"C\" __global__ void k() { }",
            ..SRC
        };
        for other in [
            entry_name(&other_code, &o90, (13, 0), ""),
            entry_name(&SRC, &compile::options((8, 0), Target::Cubin), (13, 0), ""),
            entry_name(&SRC, &compile::options((9, 0), Target::Ptx), (13, 0), ""),
            entry_name(&SRC, &o90, (13, 1), ""),
            entry_name(&SRC, &o90, (13, 0), "123456:1700000000000000000"),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn stores_atomically_into_a_new_folder() {
        let dir = std::env::temp_dir().join(format!("prfl-kcache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("a").join("x.bin");
        store(&path, b"abc").unwrap();
        store(&path, b"abcd").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"abcd");
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 1, "no temporary file left: {left:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
