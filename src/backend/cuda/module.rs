//! The kernel registry: every `.cu` family compiled by NVRTC and loaded into one context
//! ([`Kernels::load`]), the function table, the launch configurations shared by the launchers,
//! and the `ensure!` / `launch!` macros they are written with.
//!
//! The typed launchers are `impl Kernels` blocks, one file per kernel family, each beside its
//! `kernels/<family>.cu` and the CPU's `cpu/<family>.rs`: [`super::elementwise`],
//! [`super::reduce`], [`super::norm`], [`super::modulate`], [`super::layout`], [`super::optim`]
//! and [`super::attention`]. Each launcher is named after the [`crate::backend::Backend`] method
//! it implements and has the CPU backend's semantics (src/backend/cpu/): same layouts, the same
//! overwrite-or-accumulate convention, and where the CPU's arithmetic is a short fixed formula
//! (axpy, modulation, gated residual, RoPE, AdamW, casts, patchify) the same roundings, so those
//! results match the CPU bit for bit. Reductions (norm statistics, parameter gradients, the sum
//! of squares) differ from the CPU only by summation order; they are deterministic (a fixed
//! split that depends on the shapes alone).
//!
//! Every launcher enqueues on the backend's one stream (held here), checks the buffers against
//! the op's shape struct with the same `check_buffers` the CPU backend calls (a mismatch is
//! logged and returned as `CUDA_ERROR_INVALID_VALUE`, never an out-of-bounds access), adds the
//! checks of CUDA's own limits (32-bit index arithmetic), does nothing for empty shapes, and
//! enqueues its kernels without synchronising (except [`Kernels::sum_squares`], which returns a
//! host value). Scratch space for two-stage reductions is allocated on the stream
//! (stream-ordered) and freed when the launcher returns.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{sys, CudaFunction, CudaStream, DriverError, LaunchConfig};
use cudarc::nvrtc::Ptx;

use super::compile::{self, Target};
use crate::backend::ShapeError;

/// The shared helpers followed by one `.cu` file, with `#line` markers so that compiler
/// messages name the right file and line.
macro_rules! cuda_source {
    ($name:literal) => {
        concat!(
            "#line 1 \"common.cuh\"\n",
            include_str!("kernels/common.cuh"),
            "\n#line 1 \"",
            $name,
            ".cu\"\n",
            include_str!(concat!("kernels/", $name, ".cu"))
        )
    };
}
pub(super) use cuda_source;

/// Threads per block of the one-dimensional kernels.
pub(super) const BLOCK: u32 = 256;
/// Warps (rows) per block of the row kernels (norms).
pub(super) const ROWS_PER_BLOCK: u32 = BLOCK / 32;
/// Blocks per multiprocessor for grid-stride kernels (enough to hide latency; more only adds
/// scheduling).
const BLOCKS_PER_SM: usize = 16;

/// `CUDA_ERROR_INVALID_VALUE`, after logging what was wrong.
pub(super) fn invalid(op: &str, what: String) -> DriverError {
    log::error!("CUDA kernel {op}: {what}");
    DriverError(sys::CUresult::CUDA_ERROR_INVALID_VALUE)
}

/// Returns `Err(invalid(..))` from the launcher unless `cond` holds.
macro_rules! ensure {
    ($op:expr, $cond:expr, $($fmt:tt)+) => {
        if !($cond) {
            return Err($crate::backend::cuda::module::invalid($op, format!($($fmt)+)));
        }
    };
}
pub(super) use ensure;

/// A failed shape check (shared with the CPU backend) as the launcher's error.
pub(super) fn refuse(op: &str, e: ShapeError) -> DriverError {
    invalid(op, e.to_string())
}

/// Enqueues kernel `$name` with the given arguments (in the order of its C signature).
macro_rules! launch {
    ($self:ident, $name:expr, $cfg:expr, [$($arg:expr),* $(,)?]) => {{
        let mut builder = $self.stream().launch_builder($self.function($name));
        $( builder.arg($arg); )*
        // SAFETY: the arguments match the kernel's C signature in kernels/*.cu (same order and
        // types), and the launcher checked every buffer's length against the shapes it passes.
        unsafe { builder.launch($cfg) }.map(|_| ())
    }};
}
pub(super) use launch;

/// Whether `n` fits the 32-bit index arithmetic of the shape-indexed kernels.
pub(super) fn fits_i32(n: usize) -> bool {
    n <= i32::MAX as usize
}

/// Every kernel of the backend, loaded into one context, the stream they are enqueued on, and
/// the typed launchers.
pub struct Kernels {
    stream: Arc<CudaStream>,
    functions: HashMap<&'static str, CudaFunction>,
    arch: (u32, u32),
    sm_count: usize,
}

impl Kernels {
    /// Compiles every source of [`super::sources`] for the device's architecture `arch` (in parallel,
    /// one thread per source), loads the modules into the stream's context and looks up every listed
    /// function. A CUBIN is built when NVRTC knows `arch`; for a newer GPU, PTX for the newest
    /// architecture NVRTC knows is loaded instead (and JIT-compiled by the driver). Every
    /// launcher enqueues on `stream`.
    pub fn load(stream: &Arc<CudaStream>, arch: (u32, u32)) -> Result<Kernels, String> {
        let ctx = stream.context();
        let supported = compile::supported_archs().map_err(|e| e.to_string())?;
        let (build_arch, target) = if supported.contains(&arch) {
            (arch, Target::Cubin)
        } else {
            match supported.iter().rev().find(|&&a| a <= arch) {
                Some(&a) => (a, Target::Ptx),
                None => {
                    return Err(format!(
                        "NVRTC cannot compile for sm_{}{} (it supports {:?})",
                        arch.0, arch.1, supported
                    ))
                }
            }
        };
        let srcs = super::sources();
        let cache = super::kernel_cache::cache_dir();
        let images: Vec<Result<Vec<u8>, String>> = std::thread::scope(|s| {
            let handles: Vec<_> = srcs
                .iter()
                .map(|src| {
                    let cache = cache.as_deref();
                    s.spawn(move || {
                        super::kernel_cache::compile_cached(src, build_arch, target, cache)
                            .map(|(image, origin)| {
                                ::log::debug!("kernels {}: {origin:?}", src.name);
                                image
                            })
                            .map_err(|e| e.to_string())
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err("a compile thread panicked".to_string()))
                })
                .collect()
        });
        let mut functions = HashMap::new();
        for (src, image) in srcs.iter().zip(images) {
            let image = image?;
            let ptx = match target {
                Target::Cubin => Ptx::from_binary(image),
                Target::Ptx => Ptx::from_src(String::from_utf8_lossy(&image).into_owned()),
            };
            let module = ctx
                .load_module(ptx)
                .map_err(|e| format!("loading the {} kernels: {e:?}", src.name))?;
            for &name in src.functions {
                let f = module
                    .load_function(name)
                    .map_err(|e| format!("kernel {name} of {}: {e:?}", src.name))?;
                if functions.insert(name, f).is_some() {
                    return Err(format!("kernel {name} is defined by two sources"));
                }
            }
        }
        let sm_count = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| format!("reading the multiprocessor count: {e:?}"))?
            .max(1) as usize;
        Ok(Kernels {
            stream: stream.clone(),
            functions,
            arch,
            sm_count,
        })
    }

    /// A loaded kernel by its `extern "C"` name (any function listed by a [`super::sources`] entry).
    ///
    /// # Panics
    /// If `name` is not listed by any source (a programming error: every listed function is
    /// checked to exist when the kernels are loaded).
    pub fn function(&self, name: &str) -> &CudaFunction {
        self.functions
            .get(name)
            .unwrap_or_else(|| panic!("CUDA: kernel {name} is not loaded"))
    }

    /// The stream every launcher enqueues on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The device architecture the kernels were loaded for.
    pub fn arch(&self) -> (u32, u32) {
        self.arch
    }

    /// The device's multiprocessor count.
    pub fn sm_count(&self) -> usize {
        self.sm_count
    }

    /// One-dimensional launch with `work` threads' worth of work, capped for grid-stride loops.
    pub(super) fn cfg_1d(&self, work: usize) -> LaunchConfig {
        let blocks = work
            .div_ceil(BLOCK as usize)
            .clamp(1, self.sm_count * BLOCKS_PER_SM);
        LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// Launch for the vectorised element-wise kernels (four elements per thread).
    pub(super) fn cfg_vec(&self, n: usize) -> LaunchConfig {
        self.cfg_1d(n.div_ceil(4))
    }

    /// One warp per row.
    pub(super) fn cfg_rows(rows: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (rows.div_ceil(ROWS_PER_BLOCK as usize) as u32, 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        }
    }
}
