//! The CUDA backend (compile-checked; not yet run on a GPU, see issue 7). Built on every machine through cudarc's
//! dynamic loading: nothing here links CUDA, and [`probe`] checks for the driver and libraries
//! before cudarc is touched (cudarc panics when one is missing).
//!
//! Layout:
//! - [`types`]: device buffers, weights, kernel sources.
//! - [`module`]: the kernel registry ([`module::Kernels`]: compile, load, look up, launch
//!   configurations) that every launcher file extends.
//! - One launcher file per kernel family, each beside its `kernels/<family>.cu` and the CPU's
//!   `cpu/<family>.rs`: [`elementwise`], [`reduce`], [`norm`], [`modulate`], [`layout`] (RoPE,
//!   patches), [`optim`] (AdamW, casts) and [`attention`] (flash attention forward and backward,
//!   tensor cores, online softmax). [`sources`] lists their CUDA C sources.
//! - [`compile`]: NVRTC compilation of a source for an architecture; [`kernel_cache`]: the disk
//!   cache of compiled images, so only the first start on a machine runs NVRTC.
//!
//! The device side:
//! - [`probe`]: finds the driver and libraries (optionally preloading them from a folder) and
//!   lists the devices, without ever panicking; [`loaded`]: which files were actually loaded and
//!   whether their versions are CUDA 13's.
//! - [`context`]: one device's context, its single stream and the memory-pool statistics.
//! - [`gemm`]: the dense products through cuBLASLt (bf16 inputs, f32 accumulation and output),
//!   with descriptors and algorithms cached per shape.
//! - [`backend_impl`]: [`Cuda`], the [`crate::backend::Backend`] implementation.
//!
//! Errors: everything that can fail before the backend exists (libraries, driver, device,
//! kernel compilation) is a [`CudaError`]. The [`crate::backend::Backend`] trait has no
//! `Result`, so a failure *inside* an op (a launch error, out of memory, a sticky device error)
//! panics with a message starting `CUDA:`; the C ABI's panic barrier turns it into a status
//! and marks the runtime lost.

pub mod compile;
pub mod kernel_cache;
pub mod module;
pub mod types;

pub mod attention;
pub mod elementwise;
pub mod layout;
pub mod modulate;
pub mod norm;
pub mod optim;
pub mod reduce;

pub mod backend_impl;
pub mod context;
pub mod gemm;
pub mod loaded;
pub mod probe;

use std::path::PathBuf;

pub use backend_impl::Cuda;
pub use probe::{library_report, probe, LibraryStatus};

use types::KernelSource;

/// Every kernel source of the backend, one per family: what [`module::Kernels::load`] compiles
/// at run time and the CI compile check (`tests/cuda_kernels.rs`) compiles ahead of time.
pub fn sources() -> Vec<KernelSource> {
    vec![
        elementwise::ELEMENTWISE,
        norm::NORM,
        reduce::REDUCE,
        modulate::MODULATE,
        layout::LAYOUT,
        optim::OPTIM,
        attention::SOURCE,
    ]
}

/// How the CUDA backend finds its libraries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CudaOptions {
    /// A folder holding the CUDA libraries (`libcuda`, `libnvrtc`, `libcublas`, `libcublasLt`,
    /// e.g. the `lib` folders of the NVIDIA PyPI wheels gathered in one place). Those found
    /// there are loaded first, by full path, so that they win over the system's; the rest come
    /// from the system's search path. `None`: the system's search path only.
    pub lib_dir: Option<PathBuf>,
}

/// One CUDA device as [`probe`] sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The CUDA ordinal (`cuda:N`).
    pub index: usize,
    pub name: String,
    /// `(major, minor)`, e.g. `(9, 0)` for an H100.
    pub compute_capability: (u32, u32),
    /// Total device memory in bytes.
    pub total_memory: usize,
}

impl DeviceInfo {
    /// The NVRTC target, e.g. `sm_90`.
    pub fn arch(&self) -> String {
        format!(
            "sm_{}{}",
            self.compute_capability.0, self.compute_capability.1
        )
    }
}

impl std::fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cuda:{} {} (compute capability {}.{}, {:.1} GiB)",
            self.index,
            self.name,
            self.compute_capability.0,
            self.compute_capability.1,
            self.total_memory as f64 / (1u64 << 30) as f64
        )
    }
}

/// Device memory allocated through a backend, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Bytes currently allocated (buffers, weights, scratch, workspaces).
    pub current: usize,
    /// The most bytes allocated at once since the backend was opened or the peak was last reset
    /// ([`Cuda::reset_peak_memory`]).
    pub peak: usize,
    /// Bytes the allocator holds from the driver (allocated plus cached for reuse).
    pub reserved: usize,
}

/// Why the CUDA backend cannot be used (or failed while being set up).
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum CudaError {
    #[error(
        "CUDA library {library} not found (searched: {searched}); install the NVIDIA driver and \
         the CUDA 13 runtime libraries, or point the CUDA library folder (`--cuda-lib-dir`, \
         `cuda_library_dir`) at a folder holding them"
    )]
    LibraryMissing { library: String, searched: String },
    #[error("cannot load the CUDA library {path}: {reason}")]
    LibraryLoad { path: PathBuf, reason: String },
    #[error(
        "CUDA library {library} ({path}) is version {found}; prfl needs {need} (install the CUDA \
         13 libraries, or point the CUDA library folder at them)"
    )]
    LibraryVersion {
        library: String,
        path: String,
        found: String,
        need: String,
    },
    #[error(
        "CUDA library {library}: the folder's {wanted} was loaded, but {loaded} is the one in \
         use (found first by cudarc's lookup of the bare name {bare}); put a link {bare} to \
         the folder's file into {folder} and put {folder} first in the library search path \
         (LD_LIBRARY_PATH), or remove the other copy from the search path",
        folder = .folder.display(), wanted = .wanted.display(), loaded = .loaded.display()
    )]
    LibraryBypassed {
        library: String,
        wanted: PathBuf,
        loaded: PathBuf,
        bare: String,
        folder: PathBuf,
    },
    #[error("the CUDA library folder {path} cannot be read: {reason}")]
    LibraryDir { path: PathBuf, reason: String },
    #[error("no CUDA device: the driver is installed but reports no usable GPU")]
    NoDevice,
    #[error("no CUDA device cuda:{index}: {count} device(s) found (cuda:0 .. cuda:{last})", last = .count.saturating_sub(1))]
    BadIndex { index: usize, count: usize },
    #[error("CUDA device {device} (compute capability {major}.{minor}) is not supported: prfl's kernels need compute capability 8.0 or newer (bf16 tensor cores)")]
    Unsupported {
        device: String,
        major: u32,
        minor: u32,
    },
    #[error("CUDA driver error: {0}")]
    Driver(String),
    #[error("CUDA kernel compilation failed: {0}")]
    Compile(String),
    #[error("cuBLAS error: {0}")]
    Blas(String),
    #[error("CUDA set-up failed unexpectedly: {0}")]
    Panic(String),
}

impl From<cudarc::driver::DriverError> for CudaError {
    fn from(e: cudarc::driver::DriverError) -> Self {
        CudaError::Driver(driver_error_text(&e))
    }
}

impl From<cudarc::cublaslt::result::CublasError> for CudaError {
    fn from(e: cudarc::cublaslt::result::CublasError) -> Self {
        CudaError::Blas(format!("{e:?}"))
    }
}

impl From<cudarc::cublas::result::CublasError> for CudaError {
    fn from(e: cudarc::cublas::result::CublasError) -> Self {
        CudaError::Blas(format!("{e:?}"))
    }
}

/// `CUDA_ERROR_OUT_OF_MEMORY (the driver's description)`.
pub fn driver_error_text(e: &cudarc::driver::DriverError) -> String {
    match e.error_string() {
        Ok(s) => format!("{:?} ({})", e.0, s.to_string_lossy()),
        Err(_) => format!("{:?}", e.0),
    }
}

pub use crate::error::panic_message;

/// Runs `f`, turning a panic (cudarc panics when a library or symbol is missing) into
/// [`CudaError::Panic`]. A second line of defence: [`probe`] checks the libraries first.
pub(crate) fn no_panic<T>(
    what: &str,
    f: impl FnOnce() -> Result<T, CudaError>,
) -> Result<T, CudaError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => Err(CudaError::Panic(format!(
            "{what}: {}",
            panic_message(&*payload)
        ))),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sources_list_unique_kernels() {
        let mut seen = std::collections::HashSet::new();
        for s in super::sources() {
            if s.name == "attention" {
                // Self-contained (no common.cuh prefix); tests/cuda_kernels.rs checks it.
                continue;
            }
            assert!(!s.code.contains("#include"), "{} includes a header", s.name);
            for f in s.functions {
                assert!(seen.insert(*f), "kernel {f} listed twice");
                assert!(
                    s.code.contains(&format!("__global__ void {f}(")),
                    "{} does not define {f}",
                    s.name
                );
            }
        }
    }
}
