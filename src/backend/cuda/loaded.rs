//! Which library files cudarc actually loaded, and whether their versions are the ones the
//! bindings were generated for.
//!
//! cudarc opens each library by the first of its candidate names that loads, and that list
//! starts with the unversioned `libcublas.so` and goes on to `libcublas.so.12`, `.11`, ... So a
//! folder's preloaded `libcublas.so.13` can be bypassed by a toolkit's development symlink (and
//! that toolkit's `libcublas.so` may then pull in the folder's cuBLASLt: two releases in one
//! process), and a CUDA-12 machine passes a mere "is it loadable" check. Hence, after the
//! libraries are found, [`check`] asks each one for its version and refuses anything but what
//! the `cuda-13000` bindings expect:
//! - the driver supports CUDA 13.0 or newer (`cuDriverGetVersion >= 13000`);
//! - NVRTC is 13.x (`nvrtcVersion`);
//! - cuBLASLt and cuBLAS are 13.x and the same release (`cublasLtGetVersion`,
//!   `cublasGetProperty`: one wheel ships both, and cuBLAS calls into its own cuBLASLt).
//!
//! The file each library was loaded from is found with `dladdr` on one of its symbols, through
//! cudarc's own library handle, so it is the file cudarc calls into, whatever name it was opened
//! by. (Windows: not determined, shown as unknown.)

use std::ffi::c_void;
use std::path::PathBuf;

use super::CudaError;

/// The CUDA major version the bindings (cudarc's `cuda-13000` feature) were generated for.
pub const CUDA_MAJOR: i32 = 13;

/// The versions the loaded libraries report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LibraryVersions {
    /// `cuDriverGetVersion`: `1000 * major + 10 * minor` (13000 is CUDA 13.0).
    pub driver: i32,
    /// `nvrtcVersion`: `(major, minor)`.
    pub nvrtc: (i32, i32),
    /// `cublasLtGetVersion`: `10000 * major + 100 * minor + patch`.
    pub cublaslt: usize,
    /// cuBLAS's major, minor and patch level (`cublasGetProperty`), encoded like `cublaslt`.
    pub cublas: usize,
}

/// `13.0` from `cuDriverGetVersion`'s 13000.
pub fn driver_text(v: i32) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

/// `13.0.2` from cuBLAS's 130002.
pub fn blas_text(v: usize) -> String {
    format!("{}.{}.{}", v / 10000, (v / 100) % 100, v % 100)
}

/// The four libraries the backend needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    Driver,
    Nvrtc,
    CublasLt,
    Cublas,
}

/// A version rule broken: which library, the version it reports, and what is needed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub which: Which,
    pub found: String,
    pub need: String,
}

/// The first version rule `v` breaks (see the module documentation), if any.
pub fn mismatch(v: &LibraryVersions) -> Option<Mismatch> {
    let bad = |which, found: String, need: String| Some(Mismatch { which, found, need });
    if v.driver < CUDA_MAJOR * 1000 {
        return bad(
            Which::Driver,
            format!("CUDA {}", driver_text(v.driver)),
            format!("a driver for CUDA {CUDA_MAJOR}.0 or newer"),
        );
    }
    if v.nvrtc.0 != CUDA_MAJOR {
        return bad(
            Which::Nvrtc,
            format!("{}.{}", v.nvrtc.0, v.nvrtc.1),
            format!("NVRTC {CUDA_MAJOR}.x"),
        );
    }
    let major = |b: usize| (b / 10000) as i32;
    if major(v.cublaslt) != CUDA_MAJOR {
        return bad(
            Which::CublasLt,
            blas_text(v.cublaslt),
            format!("cuBLASLt {CUDA_MAJOR}.x"),
        );
    }
    if major(v.cublas) != CUDA_MAJOR {
        return bad(
            Which::Cublas,
            blas_text(v.cublas),
            format!("cuBLAS {CUDA_MAJOR}.x"),
        );
    }
    if v.cublas != v.cublaslt {
        return bad(
            Which::Cublas,
            blas_text(v.cublas),
            format!(
                "the release of the loaded cuBLASLt ({}): both come from one package",
                blas_text(v.cublaslt)
            ),
        );
    }
    None
}

/// The address of `symbol` in the library handle `lib` (cudarc's; a macro because cudarc's
/// `libloading` is another major version than the one this crate uses).
macro_rules! symbol_address {
    ($lib:expr, $symbol:literal) => {
        $lib.get::<*const c_void>($symbol.as_bytes())
            .ok()
            .map(|s| *s)
    };
}

#[cfg(unix)]
fn file_of_address(addr: *const c_void) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: dladdr only reads the loader's tables; on success `dli_fname` is a NUL-terminated
    // string owned by the loader, valid while the object stays loaded (cudarc never unloads).
    unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        if libc::dladdr(addr, &mut info) == 0 || info.dli_fname.is_null() {
            return None;
        }
        let name = std::ffi::CStr::from_ptr(info.dli_fname);
        Some(PathBuf::from(std::ffi::OsStr::from_bytes(name.to_bytes())))
    }
}

#[cfg(not(unix))]
fn file_of_address(_addr: *const c_void) -> Option<PathBuf> {
    None
}

/// The file cudarc loaded `which` from (loading it through cudarc if it has not yet).
///
/// # Safety
/// The library must be loadable by cudarc (checked by the probe first): cudarc panics
/// otherwise (the caller runs this under `catch_unwind` too).
pub unsafe fn file(which: Which) -> Option<PathBuf> {
    // SAFETY (each): cudarc's lazily loaded handle, loadable per this function's contract; the
    // symbol is only looked up and its address passed to dladdr, never called.
    let addr = unsafe {
        match which {
            Which::Driver => symbol_address!(cudarc::driver::sys::culib(), "cuDriverGetVersion"),
            Which::Nvrtc => symbol_address!(cudarc::nvrtc::sys::culib(), "nvrtcVersion"),
            Which::CublasLt => {
                symbol_address!(cudarc::cublaslt::sys::culib(), "cublasLtGetVersion")
            }
            Which::Cublas => symbol_address!(cudarc::cublas::sys::culib(), "cublasGetProperty"),
        }
    };
    file_of_address(addr?)
}

/// `cuDriverGetVersion`. Safety: as [`file`].
pub(super) unsafe fn driver_version() -> Result<i32, CudaError> {
    let mut v = 0i32;
    // SAFETY: a plain query into a local.
    unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) }.result()?;
    Ok(v)
}

/// `nvrtcVersion` (through the compiler module's guarded query). Safety: as [`file`].
unsafe fn nvrtc_version() -> Result<(i32, i32), CudaError> {
    let (major, minor) =
        super::compile::nvrtc_version().map_err(|e| CudaError::Compile(e.to_string()))?;
    Ok((major as i32, minor as i32))
}

/// `cublasLtGetVersion`. Safety: as [`file`].
unsafe fn cublaslt_version() -> usize {
    // SAFETY: a plain query.
    unsafe { cudarc::cublaslt::sys::cublasLtGetVersion() }
}

/// cuBLAS's major, minor and patch level, encoded like `cublasLtGetVersion` (no handle is
/// needed, unlike `cublasGetVersion_v2`). Safety: as [`file`].
unsafe fn cublas_version() -> Result<usize, CudaError> {
    use cudarc::cublas::sys::libraryPropertyType as P;
    let mut part = [0i32; 3];
    for (p, v) in [P::MAJOR_VERSION, P::MINOR_VERSION, P::PATCH_LEVEL]
        .into_iter()
        .zip(part.iter_mut())
    {
        // SAFETY: a plain query into a local.
        unsafe { cudarc::cublas::sys::cublasGetProperty(p, v) }.result()?;
    }
    let [major, minor, patch] = part.map(|p| p.max(0) as usize);
    Ok(major * 10000 + minor * 100 + patch)
}

/// The version `which` reports, for display.
///
/// # Safety
/// As [`file`].
pub unsafe fn version_text(which: Which) -> Result<String, CudaError> {
    // SAFETY: per this function's contract.
    unsafe {
        Ok(match which {
            Which::Driver => format!("CUDA {}", driver_text(driver_version()?)),
            Which::Nvrtc => {
                let (major, minor) = nvrtc_version()?;
                format!("{major}.{minor}")
            }
            Which::CublasLt => blas_text(cublaslt_version()),
            Which::Cublas => blas_text(cublas_version()?),
        })
    }
}

/// The versions all four libraries report.
///
/// # Safety
/// As [`file`], for every library.
pub unsafe fn versions() -> Result<LibraryVersions, CudaError> {
    // SAFETY: per this function's contract.
    unsafe {
        Ok(LibraryVersions {
            driver: driver_version()?,
            nvrtc: nvrtc_version()?,
            cublaslt: cublaslt_version(),
            cublas: cublas_version()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: LibraryVersions = LibraryVersions {
        driver: 13000,
        nvrtc: (13, 0),
        cublaslt: 130002,
        cublas: 130002,
    };

    #[test]
    fn cuda_13_libraries_of_one_release_pass() {
        assert_eq!(mismatch(&GOOD), None);
        // A newer driver and a newer NVRTC minor are fine: the driver is backward compatible,
        // and NVRTC's major version fixes the language and ABI the bindings expect.
        let newer = LibraryVersions {
            driver: 13020,
            nvrtc: (13, 2),
            cublaslt: 130201,
            cublas: 130201,
        };
        assert_eq!(mismatch(&newer), None);
    }

    #[test]
    fn a_cuda_12_driver_is_refused() {
        let m = mismatch(&LibraryVersions {
            driver: 12080,
            ..GOOD
        })
        .unwrap();
        assert_eq!(m.which, Which::Driver);
        assert_eq!(m.found, "CUDA 12.8");
    }

    #[test]
    fn cuda_12_libraries_are_refused() {
        let m = mismatch(&LibraryVersions {
            nvrtc: (12, 9),
            ..GOOD
        })
        .unwrap();
        assert_eq!((m.which, m.found.as_str()), (Which::Nvrtc, "12.9"));
        let m = mismatch(&LibraryVersions {
            cublaslt: 120901,
            cublas: 120901,
            ..GOOD
        })
        .unwrap();
        assert_eq!((m.which, m.found.as_str()), (Which::CublasLt, "12.9.1"));
        let m = mismatch(&LibraryVersions {
            cublas: 120901,
            ..GOOD
        })
        .unwrap();
        assert_eq!((m.which, m.found.as_str()), (Which::Cublas, "12.9.1"));
    }

    #[test]
    fn cublas_and_cublaslt_of_different_releases_are_refused() {
        let m = mismatch(&LibraryVersions {
            cublas: 130100,
            ..GOOD
        })
        .unwrap();
        assert_eq!(m.which, Which::Cublas);
        assert_eq!(m.found, "13.1.0");
        assert!(m.need.contains("13.0.2"), "{}", m.need);
    }

    #[test]
    fn version_numbers_read_as_documented() {
        assert_eq!(driver_text(13000), "13.0");
        assert_eq!(driver_text(12080), "12.8");
        assert_eq!(blas_text(130002), "13.0.2");
        assert_eq!(blas_text(120804), "12.8.4");
    }
}
