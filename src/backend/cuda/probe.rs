//! Finding the CUDA driver and libraries, and listing the devices, without ever panicking.
//!
//! cudarc loads each library lazily by name (`libcuda.so`, `libnvrtc.so.13`, ...) and panics when
//! none of its candidate names loads, or when a symbol is missing. So, before any cudarc call:
//! 1. With a library folder ([`CudaOptions::lib_dir`]), the libraries found there are loaded by
//!    full path (`RTLD_NOW | RTLD_GLOBAL`) and kept loaded for the life of the process. When
//!    cudarc later asks the dynamic loader for `libnvrtc.so.13`, glibc finds the already-loaded
//!    object whose `SONAME` matches (Windows likewise matches an already-loaded module by name).
//! 2. Each library cudarc needs is checked with cudarc's own candidate list
//!    (`sys::is_culib_present`); a missing one is [`CudaError::LibraryMissing`].
//! 3. The file cudarc actually loaded for each library and the version it reports are checked
//!    ([`super::loaded`]): CUDA 13 throughout, cuBLAS and cuBLASLt of one release, and a
//!    library the folder provides must be the one in use (cudarc tries the bare `libcublas.so`
//!    first, which a toolkit's development symlink can answer). A mismatch is
//!    [`CudaError::LibraryVersion`] or [`CudaError::LibraryBypassed`].
//! 4. Only then the driver is initialised and queried; all of it inside `catch_unwind`, as a
//!    second line of defence.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cudarc::driver::result as dr;
use cudarc::driver::sys as ds;

use super::loaded::{self, Which};
use super::{no_panic, CudaError, CudaOptions, DeviceInfo};

/// A library the backend needs.
struct Lib {
    /// Shown to users.
    display: &'static str,
    /// The stem cudarc builds its candidate names from (`lib{stem}.so...`, `{stem}64_*.dll`).
    stem: &'static str,
    present: unsafe fn() -> bool,
    which: Which,
}

/// In load order: dependencies first (cuBLAS needs cuBLASLt).
const LIBS: [Lib; 4] = [
    Lib {
        display: "CUDA driver (libcuda)",
        stem: "cuda",
        present: cudarc::driver::sys::is_culib_present,
        which: Which::Driver,
    },
    Lib {
        display: "NVRTC (libnvrtc)",
        stem: "nvrtc",
        present: cudarc::nvrtc::sys::is_culib_present,
        which: Which::Nvrtc,
    },
    Lib {
        display: "cuBLASLt (libcublasLt)",
        stem: "cublasLt",
        present: cudarc::cublaslt::sys::is_culib_present,
        which: Which::CublasLt,
    },
    Lib {
        display: "cuBLAS (libcublas)",
        stem: "cublas",
        present: cudarc::cublas::sys::is_culib_present,
        which: Which::Cublas,
    },
];

/// Extra libraries preloaded from the folder when present (NVRTC loads its builtins itself at
/// compile time; preloading makes that independent of the folder's rpath).
const EXTRA_STEMS: [&str; 1] = ["nvrtc-builtins"];

/// Whether a library of the CUDA backend was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LibraryStatus {
    pub library: &'static str,
    /// Loaded from the library folder (full path), if it was.
    pub preloaded: Option<PathBuf>,
    /// Loadable (from the folder or the system's search path).
    pub found: bool,
    /// The file cudarc loaded it from (found by `dladdr`; `None` when not found, or where the
    /// platform cannot tell).
    pub loaded_from: Option<PathBuf>,
    /// The version it reports (`None` when not found, or when the query failed).
    pub version: Option<String>,
}

impl LibraryStatus {
    /// Whether the file in use is the library folder's copy; `None` when the folder has none or
    /// the file in use is unknown.
    pub fn uses_folder_copy(&self) -> Option<bool> {
        let (want, got) = (self.preloaded.as_ref()?, self.loaded_from.as_ref()?);
        Some(same_file(want, got))
    }
}

/// Whether two paths name the same file (after resolving links: the GPU script's folder holds
/// links).
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Whether `file` is a shared library named after `stem` (`libcublas.so`, `libcublas.so.13`,
/// `libcublas.so.13.0.0.19`; `cublas64_13.dll`, `cublas.dll`), and not after a longer stem
/// (`libcublasLt.so` is not `cublas`).
fn names_library(file: &str, stem: &str) -> bool {
    if cfg!(windows) {
        let lower = file.to_ascii_lowercase();
        let stem = stem.to_ascii_lowercase();
        let Some(rest) = lower.strip_prefix(&stem) else {
            return false;
        };
        rest == ".dll" || (rest.starts_with("64_") && rest.ends_with(".dll"))
    } else if cfg!(target_os = "macos") {
        file.strip_prefix("lib")
            .and_then(|r| r.strip_prefix(stem))
            .is_some_and(|r| r.starts_with('.') && r.ends_with(".dylib"))
    } else {
        file.strip_prefix("lib")
            .and_then(|r| r.strip_prefix(stem))
            .is_some_and(|r| r == ".so" || r.starts_with(".so."))
    }
}

/// The file to load for `stem` among a folder's entries: the shortest versioned name (the
/// `SONAME`-like `libcublas.so.13` over `libcublas.so.13.0.0.19`), else the bare `libcublas.so`.
fn pick(files: &[String], stem: &str) -> Option<String> {
    let mut c: Vec<&String> = files.iter().filter(|f| names_library(f, stem)).collect();
    // Versioned names first (the bare `.so` is often a development symlink that may be absent
    // or point elsewhere), shortest first.
    c.sort_by_key(|f| {
        let bare = f.ends_with(".so") || f.ends_with(".dll") || f.ends_with(".dylib");
        (bare, f.len(), (*f).clone())
    });
    c.first().map(|f| (*f).clone())
}

/// Libraries loaded from folders, kept loaded for the life of the process (unloading a library
/// cudarc holds function pointers into would be fatal), with the folder they came from.
static PRELOADED: Mutex<Vec<(PathBuf, &'static str, PathBuf)>> = Mutex::new(Vec::new());

fn open_global(path: &Path) -> Result<(), String> {
    #[cfg(unix)]
    {
        use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
        // SAFETY: loading a CUDA library runs its initialisers, which is what loading it is for.
        let lib = unsafe { Library::open(Some(path), RTLD_NOW | RTLD_GLOBAL) }
            .map_err(|e| e.to_string())?;
        std::mem::forget(lib);
        Ok(())
    }
    #[cfg(not(unix))]
    {
        // SAFETY: as above.
        let lib = unsafe { libloading::Library::new(path) }.map_err(|e| e.to_string())?;
        std::mem::forget(lib);
        Ok(())
    }
}

/// Loads the CUDA libraries found in `dir` (once per folder and library).
fn preload(dir: &Path) -> Result<(), CudaError> {
    let entries = std::fs::read_dir(dir).map_err(|e| CudaError::LibraryDir {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    let files: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    let mut done = PRELOADED.lock().unwrap_or_else(|p| p.into_inner());
    let stems = LIBS
        .iter()
        .map(|l| l.stem)
        .take(1)
        .chain(EXTRA_STEMS)
        .chain(LIBS.iter().skip(1).map(|l| l.stem));
    for stem in stems {
        if done.iter().any(|(d, s, _)| d == dir && *s == stem) {
            continue;
        }
        let Some(file) = pick(&files, stem) else {
            continue;
        };
        let path = dir.join(&file);
        open_global(&path).map_err(|reason| CudaError::LibraryLoad {
            path: path.clone(),
            reason,
        })?;
        ::log::info!("CUDA: loaded {}", path.display());
        done.push((dir.to_path_buf(), stem, path));
    }
    Ok(())
}

fn preloaded_path(dir: Option<&Path>, stem: &str) -> Option<PathBuf> {
    let done = PRELOADED.lock().unwrap_or_else(|p| p.into_inner());
    done.iter()
        .find(|(d, s, _)| Some(d.as_path()) == dir && *s == stem)
        .map(|(_, _, p)| p.clone())
}

/// Which libraries are found (after preloading from the folder), the file each was loaded from
/// and its version. Never panics; a folder that cannot be read or a library there that fails
/// to load is an error.
pub fn library_report(opts: &CudaOptions) -> Result<Vec<LibraryStatus>, CudaError> {
    no_panic("looking for the CUDA libraries", || {
        if let Some(dir) = &opts.lib_dir {
            preload(dir)?;
        }
        Ok(LIBS
            .iter()
            .map(|l| {
                // SAFETY: only tries to dlopen the candidate names (and closes them again).
                let found = unsafe { (l.present)() };
                let (loaded_from, version) = if found {
                    // SAFETY: found, so cudarc's own lookup loads it; inside no_panic besides.
                    unsafe { (loaded::file(l.which), loaded::version_text(l.which).ok()) }
                } else {
                    (None, None)
                };
                LibraryStatus {
                    library: l.display,
                    preloaded: preloaded_path(opts.lib_dir.as_deref(), l.stem),
                    found,
                    loaded_from,
                    version,
                }
            })
            .collect())
    })
}

/// The libraries in use are the ones asked for: each one the folder provides is the file cudarc
/// loaded, and the versions follow [`loaded::mismatch`]'s rules. Logs each file and version
/// (once per process: cudarc loads each library once). After [`check_libraries`].
fn check_loaded(opts: &CudaOptions, report: &[LibraryStatus]) -> Result<(), CudaError> {
    static LOGGED: std::sync::Once = std::sync::Once::new();
    LOGGED.call_once(|| {
        for s in report {
            ::log::info!(
                "CUDA: {} {} from {}",
                s.library,
                s.version.as_deref().unwrap_or("(version unknown)"),
                s.loaded_from
                    .as_ref()
                    .map_or("an unknown file".to_string(), |p| p.display().to_string())
            );
        }
    });
    let shown =
        |p: Option<&PathBuf>| p.map_or("an unknown file".to_string(), |p| p.display().to_string());
    for (s, lib) in report.iter().zip(LIBS.iter()) {
        if let (Some(false), Some(want), Some(got)) =
            (s.uses_folder_copy(), &s.preloaded, &s.loaded_from)
        {
            return Err(CudaError::LibraryBypassed {
                library: lib.display.to_string(),
                wanted: want.clone(),
                loaded: got.clone(),
                bare: format!("lib{}.so", lib.stem),
                folder: opts.lib_dir.clone().unwrap_or_default(),
            });
        }
    }
    no_panic("checking the CUDA library versions", || {
        // SAFETY: every library was found (check_libraries ran first).
        let versions = unsafe { loaded::versions() }?;
        match loaded::mismatch(&versions) {
            None => Ok(()),
            Some(m) => {
                let (status, lib) = report
                    .iter()
                    .zip(LIBS.iter())
                    .find(|(_, l)| l.which == m.which)
                    .expect("every Which is in LIBS");
                Err(CudaError::LibraryVersion {
                    library: lib.display.to_string(),
                    path: shown(status.loaded_from.as_ref()),
                    found: m.found,
                    need: m.need,
                })
            }
        }
    })
}

/// Every library is loadable (else the first missing one is [`CudaError::LibraryMissing`]), the
/// file in use is the folder's where the folder has one, and the versions match (see the module
/// documentation).
pub fn check_libraries(opts: &CudaOptions) -> Result<(), CudaError> {
    let report = library_report(opts)?;
    for (status, lib) in report.iter().zip(LIBS.iter()) {
        if !status.found {
            // cudarc tries the driver as `cuda` and as `nvcuda` (Windows' nvcuda.dll).
            let stems: &[&str] = if lib.which == Which::Driver {
                &["cuda", "nvcuda"]
            } else {
                std::slice::from_ref(&lib.stem)
            };
            let mut names: Vec<String> = stems
                .iter()
                .flat_map(|s| cudarc::get_lib_name_candidates(s))
                .collect();
            let mut seen = std::collections::HashSet::new();
            names.retain(|n| seen.insert(n.clone()));
            let folder = match &opts.lib_dir {
                Some(d) => format!("the folder {} and ", d.display()),
                None => String::new(),
            };
            return Err(CudaError::LibraryMissing {
                library: lib.display.to_string(),
                searched: format!(
                    "{folder}the system's library search path{} for {}",
                    if cfg!(unix) {
                        " (LD_LIBRARY_PATH, ld.so.cache)"
                    } else {
                        " (PATH)"
                    },
                    names.join(", ")
                ),
            });
        }
    }
    check_loaded(opts, &report)
}

/// The driver's CUDA version as `(major, minor)` (e.g. `(13, 0)`), after [`check_libraries`].
pub fn driver_version(opts: &CudaOptions) -> Result<(u32, u32), CudaError> {
    check_libraries(opts)?;
    no_panic("querying the CUDA driver version", || {
        // SAFETY: the libraries were checked just above.
        let v = unsafe { super::loaded::driver_version() }?;
        Ok(((v / 1000) as u32, ((v % 1000) / 10) as u32))
    })
}

fn init_driver() -> Result<(), CudaError> {
    match dr::init() {
        Ok(()) => Ok(()),
        Err(e) if e.0 == ds::CUresult::CUDA_ERROR_NO_DEVICE => Err(CudaError::NoDevice),
        Err(e) => Err(CudaError::Driver(format!(
            "cuInit failed: {}",
            super::driver_error_text(&e)
        ))),
    }
}

fn device_info(index: usize) -> Result<DeviceInfo, CudaError> {
    let dev = dr::device::get(index as i32)?;
    let attr = |a| -> Result<u32, CudaError> {
        // SAFETY: `dev` came from cuDeviceGet.
        Ok(unsafe { dr::device::get_attribute(dev, a) }?.max(0) as u32)
    };
    let major = attr(ds::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
    let minor = attr(ds::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
    Ok(DeviceInfo {
        index,
        name: dr::device::get_name(dev)?,
        compute_capability: (major, minor),
        // SAFETY: as above.
        total_memory: unsafe { dr::device::total_mem(dev) }?,
    })
}

/// The CUDA devices, after checking that the driver, NVRTC, cuBLAS and cuBLASLt all load.
/// Never panics. No device at all is [`CudaError::NoDevice`] (not an empty list). Creates no
/// context (cheap: no device memory is taken).
pub fn probe(opts: &CudaOptions) -> Result<Vec<DeviceInfo>, CudaError> {
    check_libraries(opts)?;
    no_panic("probing the CUDA devices", || {
        init_driver()?;
        let count = match dr::device::get_count() {
            Ok(n) => n.max(0) as usize,
            Err(e) if e.0 == ds::CUresult::CUDA_ERROR_NO_DEVICE => 0,
            Err(e) => return Err(e.into()),
        };
        if count == 0 {
            return Err(CudaError::NoDevice);
        }
        (0..count).map(device_info).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_file_names_are_matched_by_stem() {
        if cfg!(windows) || cfg!(target_os = "macos") {
            return;
        }
        assert!(names_library("libcublas.so.13", "cublas"));
        assert!(names_library("libcublas.so", "cublas"));
        assert!(!names_library("libcublasLt.so.13", "cublas"));
        assert!(names_library("libcublasLt.so.13", "cublasLt"));
        assert!(!names_library("libnvrtc-builtins.so.13.0", "nvrtc"));
        assert!(names_library("libnvrtc-builtins.so.13.0", "nvrtc-builtins"));
        assert!(!names_library("libcuda.so.13.a", "cudart"));
        let files: Vec<String> = [
            "libcublas.so",
            "libcublas.so.13.0.0.19",
            "libcublas.so.13",
            "libcublasLt.so.13",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(pick(&files, "cublas").as_deref(), Some("libcublas.so.13"));
        assert_eq!(
            pick(&files, "cublasLt").as_deref(),
            Some("libcublasLt.so.13")
        );
        assert_eq!(pick(&files, "nvrtc"), None);
    }

    #[test]
    fn the_folder_copy_is_recognised_through_links() {
        if !cfg!(unix) {
            return;
        }
        let dir = std::env::temp_dir().join(format!("prfl-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let real = dir.join("libcublas.so.13.0.0.19");
        let other = dir.join("libcublas.so");
        std::fs::write(&real, b"folder copy").unwrap();
        std::fs::write(&other, b"toolkit copy").unwrap();
        let link = dir.join("libcublas.so.13");
        let _ = std::fs::remove_file(&link);
        #[cfg(unix)]
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let status = |loaded: &Path| LibraryStatus {
            library: "cuBLAS (libcublas)",
            preloaded: Some(link.clone()),
            found: true,
            loaded_from: Some(loaded.to_path_buf()),
            version: Some("13.0.0".into()),
        };
        assert_eq!(status(&real).uses_folder_copy(), Some(true));
        assert_eq!(status(&link).uses_folder_copy(), Some(true));
        assert_eq!(status(&other).uses_folder_copy(), Some(false));
        let no_folder = LibraryStatus {
            preloaded: None,
            ..status(&other)
        };
        assert_eq!(no_folder.uses_folder_copy(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unreadable_library_folder_is_an_error_not_a_panic() {
        let opts = CudaOptions {
            lib_dir: Some(PathBuf::from("/nonexistent/prfl-cuda-libs")),
        };
        match probe(&opts) {
            Err(CudaError::LibraryDir { path, .. }) => {
                assert_eq!(path, PathBuf::from("/nonexistent/prfl-cuda-libs"))
            }
            other => panic!("expected LibraryDir, got {other:?}"),
        }
    }

    /// With `PRFL_NVRTC_LIB_DIR` (the NVRTC wheel's `lib` folder, see `tools/cuda/`), the folder
    /// preload makes NVRTC findable by name; skipped without it.
    #[test]
    fn a_library_folder_is_preloaded_and_found_by_name() {
        let Ok(dir) = std::env::var("PRFL_NVRTC_LIB_DIR") else {
            eprintln!("SKIPPED: PRFL_NVRTC_LIB_DIR is not set");
            return;
        };
        let opts = CudaOptions {
            lib_dir: Some(PathBuf::from(&dir)),
        };
        let report = library_report(&opts).unwrap();
        let nvrtc = report
            .iter()
            .find(|l| l.library.starts_with("NVRTC"))
            .unwrap();
        assert!(nvrtc.found, "{report:?}");
        let path = nvrtc.preloaded.as_ref().expect("preloaded from the folder");
        assert!(path.starts_with(&dir), "{}", path.display());
    }

    #[test]
    fn probe_never_panics() {
        // On a machine without CUDA this is LibraryMissing or NoDevice; with a GPU, a list.
        match probe(&CudaOptions::default()) {
            Ok(devices) => assert!(!devices.is_empty()),
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
}
