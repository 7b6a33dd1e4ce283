//! Element-wise, norm, modulation, RoPE, patch, cast and optimiser kernels.
//!
//! The CUDA C sources live in `kernels/*.cu` (each prefixed with the shared helpers of
//! `kernels/common.cuh`); [`sources`] lists them, with the attention source, for run-time
//! compilation ([`Kernels::load`]) and for the CI compile check (`tests/cuda_kernels.rs`).
//!
//! [`Kernels`] holds every loaded kernel and one typed launcher per op, named after the
//! [`crate::backend::Backend`] method it implements and with the CPU backend's semantics
//! (src/backend/cpu/): same layouts, the same overwrite-or-accumulate convention, and where the
//! CPU's arithmetic is a short fixed formula (axpy, modulation, gated residual, RoPE, AdamW,
//! casts, patchify) the same roundings, so those results match the CPU bit for bit. Reductions
//! (norm statistics, parameter gradients, the sum of squares) differ from the CPU only by
//! summation order; they are deterministic (a fixed split that depends on the shapes alone).
//!
//! Every launcher takes the stream first, checks the buffers' lengths against the shapes (a
//! mismatch is logged and returned as `CUDA_ERROR_INVALID_VALUE`, never an out-of-bounds
//! access), does nothing for empty shapes, and enqueues its kernels without synchronising
//! (except [`Kernels::sum_squares`], which returns a host value). Scratch space for two-stage
//! reductions is allocated on the stream (stream-ordered) and freed when the launcher returns.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{
    sys, CudaContext, CudaFunction, CudaSlice, CudaStream, DriverError, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use super::compile::{self, Target};
use super::types::{CudaWeight, KernelSource, WeightData};
use crate::backend::{AdamWHyper, ModSlot, PatchOrder, PatchShape};

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

/// Activations, axpy/scale/fill and the modulation-table broadcast add.
pub const ELEMENTWISE: KernelSource = KernelSource {
    name: "elementwise",
    code: cuda_source!("elementwise"),
    functions: &[
        "silu_forward",
        "silu_backward",
        "gelu_tanh_forward",
        "gelu_tanh_backward",
        "gelu_erf_forward",
        "gelu_erf_backward",
        "relu_forward",
        "relu_backward",
        "axpy",
        "scale",
        "fill",
        "broadcast_add",
        "broadcast_add_backward",
    ],
};

/// LayerNorm and RMSNorm (row statistics and input gradients).
pub const NORM: KernelSource = KernelSource {
    name: "norm",
    code: cuda_source!("norm"),
    functions: &[
        "layernorm_forward",
        "layernorm_backward_dx",
        "rmsnorm_forward",
        "rmsnorm_backward_dx",
    ],
};

/// Deterministic two-stage reductions: column sums over rows and the f64 sum of squares.
pub const REDUCE: KernelSource = KernelSource {
    name: "reduce",
    code: cuda_source!("reduce"),
    functions: &[
        "colsum_partial",
        "colsum_finalize",
        "sum_squares_partial",
        "sum_squares_finalize",
    ],
};

/// Adaptive modulation and gated residuals.
pub const MODULATE: KernelSource = KernelSource {
    name: "modulate",
    code: cuda_source!("modulate"),
    functions: &[
        "modulate_forward",
        "modulate_backward_dx",
        "gated_add_forward",
        "gated_add_backward_dy",
    ],
};

/// Rotary embedding and (un)patchify.
pub const LAYOUT: KernelSource = KernelSource {
    name: "layout",
    code: cuda_source!("layout"),
    functions: &["rope", "patchify", "unpatchify"],
};

/// AdamW and the f32 <-> bf16 / f16 casts.
pub const OPTIM: KernelSource = KernelSource {
    name: "optim",
    code: cuda_source!("optim"),
    functions: &[
        "adamw_update",
        "cast_f32_to_bf16",
        "cast_f32_to_f16",
        "cast_bf16_to_f32",
        "cast_f16_to_f32",
    ],
};

/// Every kernel source of the backend: this module's and attention's.
pub fn sources() -> Vec<KernelSource> {
    vec![
        ELEMENTWISE,
        NORM,
        REDUCE,
        MODULATE,
        LAYOUT,
        OPTIM,
        super::attention::SOURCE,
    ]
}

/// Threads per block of the one-dimensional kernels.
const BLOCK: u32 = 256;
/// Warps (rows) per block of the row kernels (norms).
const ROWS_PER_BLOCK: u32 = BLOCK / 32;
/// Blocks per multiprocessor for grid-stride kernels (enough to hide latency; more only adds
/// scheduling).
const BLOCKS_PER_SM: usize = 16;
/// colsum_partial's tile: 32 columns by 8 row lanes.
const CS_COLS: usize = 32;
const CS_ROWS: u32 = 8;
/// colsum_partial's target block count (the split over rows depends only on the shapes).
const CS_TARGET_BLOCKS: usize = 2048;
/// Rows per colsum chunk, at least.
const CS_MIN_CHUNK_ROWS: usize = 32;
/// sum_squares: elements per stage-1 block (at least) and the most stage-1 blocks.
const SS_ELEMS_PER_BLOCK: usize = 4096;
const SS_MAX_BLOCKS: usize = 1024;

// colsum_partial modes (see kernels/reduce.cu).
const CS_SUM: i32 = 0;
const CS_DOT: i32 = 1;
const CS_SUM_DOT: i32 = 2;
const CS_LN: i32 = 3;
const CS_RMS: i32 = 4;

/// `CUDA_ERROR_INVALID_VALUE`, after logging what was wrong.
fn invalid(op: &str, what: String) -> DriverError {
    log::error!("CUDA kernel {op}: {what}");
    DriverError(sys::CUresult::CUDA_ERROR_INVALID_VALUE)
}

/// Returns `Err(invalid(..))` from the launcher unless `cond` holds.
macro_rules! ensure {
    ($op:expr, $cond:expr, $($fmt:tt)+) => {
        if !($cond) {
            return Err(invalid($op, format!($($fmt)+)));
        }
    };
}

/// Enqueues kernel `$name` with the given arguments (in the order of its C signature).
macro_rules! launch {
    ($self:ident, $stream:ident, $name:expr, $cfg:expr, [$($arg:expr),* $(,)?]) => {{
        let mut builder = $stream.launch_builder($self.function($name));
        $( builder.arg($arg); )*
        // SAFETY: the arguments match the kernel's C signature in kernels/*.cu (same order and
        // types), and the launcher checked every buffer's length against the shapes it passes.
        unsafe { builder.launch($cfg) }.map(|_| ())
    }};
}

/// Whether `n` fits the 32-bit index arithmetic of the shape-indexed kernels.
fn fits_i32(n: usize) -> bool {
    n <= i32::MAX as usize
}

/// Last element (exclusive) a `ModSlot` of width `d` reaches over `batch` samples.
fn slot_end(s: ModSlot, batch: usize, d: usize) -> usize {
    (batch - 1) * s.stride + s.offset + d
}

/// A stage-1 column-sum result: `[groups, chunks, width]` partial sums.
struct Partials {
    buf: CudaSlice<f32>,
    groups: usize,
    chunks: usize,
    width: usize,
}

/// Every kernel of the backend, loaded into one context, and the typed launchers.
pub struct Kernels {
    functions: HashMap<&'static str, CudaFunction>,
    arch: (u32, u32),
    sm_count: usize,
}

impl Kernels {
    /// Compiles every source of [`sources`] for the device's architecture `arch` (in parallel,
    /// one thread per source), loads the modules into `ctx` and looks up every listed
    /// function. A CUBIN is built when NVRTC knows `arch`; for a newer GPU, PTX for the newest
    /// architecture NVRTC knows is loaded instead (and JIT-compiled by the driver).
    pub fn load(ctx: &Arc<CudaContext>, arch: (u32, u32)) -> Result<Kernels, String> {
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
        let srcs = sources();
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
            functions,
            arch,
            sm_count,
        })
    }

    /// A loaded kernel by its `extern "C"` name (any function listed by a [`sources`] entry).
    ///
    /// # Panics
    /// If `name` is not listed by any source (a programming error: every listed function is
    /// checked to exist when the kernels are loaded).
    pub fn function(&self, name: &str) -> &CudaFunction {
        self.functions
            .get(name)
            .unwrap_or_else(|| panic!("CUDA: kernel {name} is not loaded"))
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
    fn cfg_1d(&self, work: usize) -> LaunchConfig {
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
    fn cfg_vec(&self, n: usize) -> LaunchConfig {
        self.cfg_1d(n.div_ceil(4))
    }

    /// One warp per row.
    fn cfg_rows(rows: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (rows.div_ceil(ROWS_PER_BLOCK as usize) as u32, 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    // ------------------------------------------------------------ element-wise

    /// `y[i] = f(x[i])` for `i < x.len()`; `y.len() >= x.len()`.
    fn unary(
        &self,
        stream: &Arc<CudaStream>,
        name: &'static str,
        x: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        let n = x.len();
        ensure!(name, y.len() >= n, "output holds {} < {n} values", y.len());
        if n == 0 {
            return Ok(());
        }
        let n64 = n as i64;
        launch!(self, stream, name, self.cfg_vec(n), [x, y, &n64])
    }

    /// `dx[i] = dy[i] * f'(x[i])` for `i < x.len()` (overwrites `dx`).
    fn binary(
        &self,
        stream: &Arc<CudaStream>,
        name: &'static str,
        x: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        dx: &mut CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        let n = x.len();
        ensure!(
            name,
            dy.len() >= n && dx.len() >= n,
            "dy ({}) or dx ({}) shorter than x ({n})",
            dy.len(),
            dx.len()
        );
        if n == 0 {
            return Ok(());
        }
        let n64 = n as i64;
        launch!(self, stream, name, self.cfg_vec(n), [x, dy, dx, &n64])
    }

    /// `y[i] += x[i]` for `i < x.len()`.
    pub fn add_assign(
        &self,
        stream: &Arc<CudaStream>,
        y: &mut CudaSlice<f32>,
        x: &CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        self.axpy(stream, 1.0, x, y)
    }

    /// `y[i] += alpha * x[i]` for `i < x.len()` (product and sum rounded separately, as the CPU).
    pub fn axpy(
        &self,
        stream: &Arc<CudaStream>,
        alpha: f32,
        x: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        let n = x.len();
        ensure!("axpy", y.len() >= n, "y holds {} < {n} values", y.len());
        if n == 0 {
            return Ok(());
        }
        let n64 = n as i64;
        launch!(self, stream, "axpy", self.cfg_vec(n), [&alpha, x, y, &n64])
    }

    /// `x[i] *= alpha` for every element of `x`.
    pub fn scale(
        &self,
        stream: &Arc<CudaStream>,
        alpha: f32,
        x: &mut CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        let n = x.len();
        if n == 0 {
            return Ok(());
        }
        let n64 = n as i64;
        launch!(self, stream, "scale", self.cfg_vec(n), [&alpha, x, &n64])
    }

    /// `x[i] = value` for every element of `x`.
    pub fn fill(
        &self,
        stream: &Arc<CudaStream>,
        x: &mut CudaSlice<f32>,
        value: f32,
    ) -> Result<(), DriverError> {
        let n = x.len();
        if n == 0 {
            return Ok(());
        }
        let n64 = n as i64;
        launch!(self, stream, "fill", self.cfg_vec(n), [x, &value, &n64])
    }

    /// `dst[dst_off .. dst_off + n] = src[src_off .. src_off + n]` (a device-to-device copy).
    pub fn copy_range(
        &self,
        stream: &Arc<CudaStream>,
        src: &CudaSlice<f32>,
        src_off: usize,
        dst: &mut CudaSlice<f32>,
        dst_off: usize,
        n: usize,
    ) -> Result<(), DriverError> {
        ensure!(
            "copy_range",
            src_off + n <= src.len() && dst_off + n <= dst.len(),
            "range out of bounds (src {src_off}+{n} of {}, dst {dst_off}+{n} of {})",
            src.len(),
            dst.len()
        );
        if n == 0 {
            return Ok(());
        }
        stream.memcpy_dtod(
            &src.slice(src_off..src_off + n),
            &mut dst.slice_mut(dst_off..dst_off + n),
        )
    }

    /// `out[b, k*w + j] = x[b, j] + table[k*w + j]` for `x: [batch, w]`, `table: [k*w]`,
    /// `out: [batch, k*w]` (overwritten).
    #[allow(clippy::too_many_arguments)]
    pub fn broadcast_add(
        &self,
        stream: &Arc<CudaStream>,
        x: &CudaSlice<f32>,
        table: &CudaSlice<f32>,
        batch: usize,
        w: usize,
        k: usize,
        out: &mut CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        let op = "broadcast_add";
        let total = batch * k * w;
        ensure!(op, fits_i32(total), "{total} elements exceed 2^31");
        ensure!(
            op,
            x.len() >= batch * w && table.len() >= k * w && out.len() >= total,
            "buffers too short for batch {batch}, w {w}, k {k}"
        );
        if total == 0 {
            return Ok(());
        }
        let (w32, kw, t32) = (w as u32, (k * w) as u32, total as u32);
        launch!(
            self,
            stream,
            op,
            self.cfg_1d(total),
            [x, table, out, &w32, &kw, &t32]
        )
    }

    /// Backward of [`Kernels::broadcast_add`]: `dx[b, j] += sum_k dout[b, k*w + j]` and
    /// `dtable[t] += sum_b dout[b, t]` (both accumulate, in the CPU's order: bit-exact).
    #[allow(clippy::too_many_arguments)]
    pub fn broadcast_add_backward(
        &self,
        stream: &Arc<CudaStream>,
        dout: &CudaSlice<f32>,
        batch: usize,
        w: usize,
        k: usize,
        dx: &mut CudaSlice<f32>,
        dtable: &mut CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        let op = "broadcast_add_backward";
        let total = batch * k * w;
        ensure!(op, fits_i32(total), "{total} elements exceed 2^31");
        ensure!(
            op,
            dout.len() >= total && dx.len() >= batch * w && dtable.len() >= k * w,
            "buffers too short for batch {batch}, w {w}, k {k}"
        );
        if w == 0 || (batch == 0 && k == 0) {
            return Ok(());
        }
        let (b32, w32, k32) = (batch as u32, w as u32, k as u32);
        let cfg = self.cfg_1d(batch * w + k * w);
        launch!(self, stream, op, cfg, [dout, dx, dtable, &b32, &w32, &k32])
    }

    /// `y = x * sigmoid(x)` over `x.len()` elements (overwrites `y`).
    pub fn silu_forward(
        &self,
        stream: &Arc<CudaStream>,
        x: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        self.unary(stream, "silu_forward", x, y)
    }

    /// `dx = dy * s (1 + x (1 - s))`, `s = sigmoid(x)` (overwrites `dx`).
    pub fn silu_backward(
        &self,
        stream: &Arc<CudaStream>,
        x: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        dx: &mut CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        self.binary(stream, "silu_backward", x, dy, dx)
    }

    /// GELU, tanh approximation (overwrites `y`).
    pub fn gelu_tanh_forward(
        &self,
        stream: &Arc<CudaStream>,
        x: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        self.unary(stream, "gelu_tanh_forward", x, y)
    }

    /// Backward of the tanh GELU (overwrites `dx`).
    pub fn gelu_tanh_backward(
        &self,
        stream: &Arc<CudaStream>,
        x: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        dx: &mut CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        self.binary(stream, "gelu_tanh_backward", x, dy, dx)
    }

    /// Exact (erf) GELU, evaluated in f64 (overwrites `y`).
    pub fn gelu_erf_forward(
        &self,
        stream: &Arc<CudaStream>,
        x: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        self.unary(stream, "gelu_erf_forward", x, y)
    }

    /// Backward of the exact GELU, in f64 (overwrites `dx`).
    pub fn gelu_erf_backward(
        &self,
        stream: &Arc<CudaStream>,
        x: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        dx: &mut CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        self.binary(stream, "gelu_erf_backward", x, dy, dx)
    }

    /// `y = max(x, 0)` (NaN gives 0, as the CPU) (overwrites `y`).
    pub fn relu_forward(
        &self,
        stream: &Arc<CudaStream>,
        x: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        self.unary(stream, "relu_forward", x, y)
    }

    /// `dx = dy` where `x > 0`, else 0 (overwrites `dx`).
    pub fn relu_backward(
        &self,
        stream: &Arc<CudaStream>,
        x: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        dx: &mut CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        self.binary(stream, "relu_backward", x, dy, dx)
    }

    // ------------------------------------------------------------ column sums

    /// Stage 1 of a column sum over `rows` rows of width `d` in each of `groups` groups
    /// (`a`, `b`: `[groups, rows, d]`; `mean`, `rstd`: `[groups * rows]` where the mode uses
    /// them; otherwise pass any buffer).
    #[allow(clippy::too_many_arguments)]
    fn colsum_partials(
        &self,
        stream: &Arc<CudaStream>,
        mode: i32,
        a: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        mean: &CudaSlice<f32>,
        rstd: &CudaSlice<f32>,
        groups: usize,
        rows: usize,
        d: usize,
    ) -> Result<Partials, DriverError> {
        let col_tiles = d.div_ceil(CS_COLS);
        let want = (CS_TARGET_BLOCKS / (col_tiles * groups).max(1)).max(1);
        let chunk_rows = rows.div_ceil(want).max(CS_MIN_CHUNK_ROWS);
        let chunks = rows.div_ceil(chunk_rows).max(1);
        let width = if mode == CS_SUM_DOT || mode == CS_LN {
            2 * d
        } else {
            d
        };
        // SAFETY: every element is written by colsum_partial before it is read.
        let mut buf = unsafe { stream.alloc::<f32>(groups * chunks * width) }?;
        let cfg = LaunchConfig {
            grid_dim: (col_tiles as u32, chunks as u32, groups as u32),
            block_dim: (CS_COLS as u32, CS_ROWS, 1),
            shared_mem_bytes: 0,
        };
        let (rows32, d32, chunk32) = (rows as i32, d as i32, chunk_rows as i32);
        launch!(
            self,
            stream,
            "colsum_partial",
            cfg,
            [&mode, a, b, mean, rstd, &mut buf, &rows32, &d32, &chunk32]
        )?;
        Ok(Partials {
            buf,
            groups,
            chunks,
            width,
        })
    }

    /// Stage 2: `out[g * out_stride + out_off + j] += sum_c partial[g, c, col0 + j]` for
    /// `j < ncols`.
    #[allow(clippy::too_many_arguments)]
    fn colsum_finalize(
        &self,
        stream: &Arc<CudaStream>,
        p: &Partials,
        col0: usize,
        ncols: usize,
        out: &mut CudaSlice<f32>,
        out_stride: usize,
        out_off: usize,
    ) -> Result<(), DriverError> {
        let (chunks, width, c0, nc, groups) = (
            p.chunks as i32,
            p.width as i32,
            col0 as i32,
            ncols as i32,
            p.groups as i32,
        );
        let (stride, off) = (out_stride as i64, out_off as i64);
        let cfg = self.cfg_1d(p.groups * ncols);
        launch!(
            self,
            stream,
            "colsum_finalize",
            cfg,
            [&p.buf, &chunks, &width, &c0, &nc, &groups, out, &stride, &off]
        )
    }

    /// `out[j] += sum_r x[r, j]` for `x: [rows, d]`, `out: [d]` (e.g. a bias gradient).
    pub fn sum_rows_accumulate(
        &self,
        stream: &Arc<CudaStream>,
        x: &CudaSlice<f32>,
        rows: usize,
        d: usize,
        out: &mut CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        let op = "sum_rows_accumulate";
        ensure!(op, fits_i32(rows) && fits_i32(d), "shape too large");
        ensure!(
            op,
            x.len() >= rows * d && out.len() >= d,
            "buffers too short for [{rows}, {d}]"
        );
        if rows == 0 || d == 0 {
            return Ok(());
        }
        let p = self.colsum_partials(stream, CS_SUM, x, x, x, x, 1, rows, d)?;
        self.colsum_finalize(stream, &p, 0, d, out, 0, 0)
    }

    // ------------------------------------------------------------ norms

    fn check_rows(op: &str, rows: usize, d: usize) -> Result<(), DriverError> {
        ensure!(
            op,
            fits_i32(rows) && fits_i32(d) && fits_i32(rows.div_ceil(ROWS_PER_BLOCK as usize)),
            "[{rows}, {d}] too large"
        );
        Ok(())
    }

    /// LayerNorm over rows: `x, y: [rows, d]`, optional `weight, bias: [d]`; writes `y` and the
    /// per-row `mean, rstd: [rows]` (`rstd = 1/sqrt(biased var + eps)`).
    #[allow(clippy::too_many_arguments)]
    pub fn layernorm_forward(
        &self,
        stream: &Arc<CudaStream>,
        x: &CudaSlice<f32>,
        rows: usize,
        d: usize,
        weight: Option<&CudaSlice<f32>>,
        bias: Option<&CudaSlice<f32>>,
        eps: f32,
        y: &mut CudaSlice<f32>,
        mean: &mut CudaSlice<f32>,
        rstd: &mut CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        let op = "layernorm_forward";
        Self::check_rows(op, rows, d)?;
        let n = rows * d;
        ensure!(
            op,
            x.len() >= n
                && y.len() >= n
                && mean.len() >= rows
                && rstd.len() >= rows
                && weight.map_or(true, |w| w.len() >= d)
                && bias.map_or(true, |b| b.len() >= d),
            "buffers too short for [{rows}, {d}]"
        );
        if n == 0 {
            return Ok(());
        }
        let (has_w, has_b) = (weight.is_some() as i32, bias.is_some() as i32);
        let (w, b) = (weight.unwrap_or(x), bias.unwrap_or(x));
        let (rows32, d32) = (rows as i32, d as i32);
        launch!(
            self,
            stream,
            op,
            Self::cfg_rows(rows),
            [x, w, b, &has_w, &has_b, &eps, y, mean, rstd, &rows32, &d32]
        )
    }

    /// LayerNorm backward: overwrites `dx: [rows, d]`; accumulates `dweight += sum_rows dy xhat`
    /// and `dbias += sum_rows dy` (`[d]` each) when given.
    #[allow(clippy::too_many_arguments)]
    pub fn layernorm_backward(
        &self,
        stream: &Arc<CudaStream>,
        dy: &CudaSlice<f32>,
        x: &CudaSlice<f32>,
        rows: usize,
        d: usize,
        weight: Option<&CudaSlice<f32>>,
        mean: &CudaSlice<f32>,
        rstd: &CudaSlice<f32>,
        dx: &mut CudaSlice<f32>,
        dweight: Option<&mut CudaSlice<f32>>,
        dbias: Option<&mut CudaSlice<f32>>,
    ) -> Result<(), DriverError> {
        let op = "layernorm_backward";
        Self::check_rows(op, rows, d)?;
        let n = rows * d;
        ensure!(
            op,
            dy.len() >= n
                && x.len() >= n
                && dx.len() >= n
                && mean.len() >= rows
                && rstd.len() >= rows
                && weight.map_or(true, |w| w.len() >= d)
                && dweight.as_ref().map_or(true, |w| w.len() >= d)
                && dbias.as_ref().map_or(true, |b| b.len() >= d),
            "buffers too short for [{rows}, {d}]"
        );
        if n == 0 {
            return Ok(());
        }
        let has_w = weight.is_some() as i32;
        let w = weight.unwrap_or(x);
        let (rows32, d32) = (rows as i32, d as i32);
        launch!(
            self,
            stream,
            "layernorm_backward_dx",
            Self::cfg_rows(rows),
            [dy, x, w, &has_w, mean, rstd, dx, &rows32, &d32]
        )?;
        if dweight.is_none() && dbias.is_none() {
            return Ok(());
        }
        let p = self.colsum_partials(stream, CS_LN, dy, x, mean, rstd, 1, rows, d)?;
        if let Some(dw) = dweight {
            self.colsum_finalize(stream, &p, 0, d, dw, 0, 0)?;
        }
        if let Some(db) = dbias {
            self.colsum_finalize(stream, &p, d, d, db, 0, 0)?;
        }
        Ok(())
    }

    /// RMSNorm over rows: `y = (x * rstd) * weight`, `x, y: [rows, d]`, `weight: [d]`; writes
    /// `rstd: [rows]` (`1/sqrt(mean(x^2) + eps)`).
    #[allow(clippy::too_many_arguments)]
    pub fn rmsnorm_forward(
        &self,
        stream: &Arc<CudaStream>,
        x: &CudaSlice<f32>,
        rows: usize,
        d: usize,
        weight: &CudaSlice<f32>,
        eps: f32,
        y: &mut CudaSlice<f32>,
        rstd: &mut CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        let op = "rmsnorm_forward";
        Self::check_rows(op, rows, d)?;
        let n = rows * d;
        ensure!(
            op,
            x.len() >= n && y.len() >= n && rstd.len() >= rows && weight.len() >= d,
            "buffers too short for [{rows}, {d}]"
        );
        if n == 0 {
            return Ok(());
        }
        let (rows32, d32) = (rows as i32, d as i32);
        launch!(
            self,
            stream,
            op,
            Self::cfg_rows(rows),
            [x, weight, &eps, y, rstd, &rows32, &d32]
        )
    }

    /// RMSNorm backward: overwrites `dx: [rows, d]`; accumulates
    /// `dweight += sum_rows dy (x rstd)` (`[d]`).
    #[allow(clippy::too_many_arguments)]
    pub fn rmsnorm_backward(
        &self,
        stream: &Arc<CudaStream>,
        dy: &CudaSlice<f32>,
        x: &CudaSlice<f32>,
        rows: usize,
        d: usize,
        weight: &CudaSlice<f32>,
        rstd: &CudaSlice<f32>,
        dx: &mut CudaSlice<f32>,
        dweight: &mut CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        let op = "rmsnorm_backward";
        Self::check_rows(op, rows, d)?;
        let n = rows * d;
        ensure!(
            op,
            dy.len() >= n
                && x.len() >= n
                && dx.len() >= n
                && rstd.len() >= rows
                && weight.len() >= d
                && dweight.len() >= d,
            "buffers too short for [{rows}, {d}]"
        );
        if n == 0 {
            return Ok(());
        }
        let (rows32, d32) = (rows as i32, d as i32);
        launch!(
            self,
            stream,
            "rmsnorm_backward_dx",
            Self::cfg_rows(rows),
            [dy, x, weight, rstd, dx, &rows32, &d32]
        )?;
        let p = self.colsum_partials(stream, CS_RMS, dy, x, rstd, rstd, 1, rows, d)?;
        self.colsum_finalize(stream, &p, 0, d, dweight, 0, 0)
    }

    // ------------------------------------------------------------ modulation

    /// Checks `[batch, rows, d]` activations and the slots; returns `(per, total)`.
    fn check_mod(
        op: &str,
        batch: usize,
        rows: usize,
        d: usize,
        mods_len: usize,
        slots: &[ModSlot],
    ) -> Result<(usize, usize), DriverError> {
        let per = rows * d;
        let total = batch * per;
        ensure!(op, fits_i32(total), "{total} elements exceed 2^31");
        for s in slots {
            ensure!(
                op,
                batch == 0 || (fits_i32(s.stride) && fits_i32(slot_end(*s, batch, d))),
                "slot {s:?} too large"
            );
            ensure!(
                op,
                batch == 0 || slot_end(*s, batch, d) <= mods_len,
                "slot {s:?} of width {d} reaches past the modulation table ({mods_len})"
            );
        }
        Ok((per, total))
    }

    /// `y[b, l, :] = x[b, l, :] * (1 + scale_b) + shift_b` for `x, y: [batch, rows, d]` and the
    /// shift/scale vectors at their slots of `mods` (overwrites `y`; bit-exact with the CPU).
    #[allow(clippy::too_many_arguments)]
    pub fn modulate_forward(
        &self,
        stream: &Arc<CudaStream>,
        x: &CudaSlice<f32>,
        batch: usize,
        rows: usize,
        d: usize,
        mods: &CudaSlice<f32>,
        shift: ModSlot,
        scale: ModSlot,
        y: &mut CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        let op = "modulate_forward";
        let (per, total) = Self::check_mod(op, batch, rows, d, mods.len(), &[shift, scale])?;
        ensure!(
            op,
            x.len() >= total && y.len() >= total,
            "x ({}) or y ({}) shorter than [{batch}, {rows}, {d}]",
            x.len(),
            y.len()
        );
        if total == 0 {
            return Ok(());
        }
        let (per, d32, t32) = (per as u32, d as u32, total as u32);
        let (shs, sho, scs, sco) = (
            shift.stride as u32,
            shift.offset as u32,
            scale.stride as u32,
            scale.offset as u32,
        );
        launch!(
            self,
            stream,
            op,
            self.cfg_vec(total),
            [x, mods, y, &per, &d32, &t32, &shs, &sho, &scs, &sco]
        )
    }

    /// Modulation backward: overwrites `dx = dy * (1 + scale_b)`; accumulates
    /// `sum_l dy` into the shift slot and `sum_l dy * x` into the scale slot of `dmods`
    /// (`[batch, stride]`, like `mods`).
    #[allow(clippy::too_many_arguments)]
    pub fn modulate_backward(
        &self,
        stream: &Arc<CudaStream>,
        dy: &CudaSlice<f32>,
        x: &CudaSlice<f32>,
        batch: usize,
        rows: usize,
        d: usize,
        mods: &CudaSlice<f32>,
        shift: ModSlot,
        scale: ModSlot,
        dx: &mut CudaSlice<f32>,
        dmods: &mut CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        let op = "modulate_backward";
        let (per, total) = Self::check_mod(op, batch, rows, d, mods.len(), &[shift, scale])?;
        Self::check_mod(op, batch, rows, d, dmods.len(), &[shift, scale])?;
        ensure!(
            op,
            dy.len() >= total && x.len() >= total && dx.len() >= total,
            "dy, x or dx shorter than [{batch}, {rows}, {d}]"
        );
        if total == 0 {
            return Ok(());
        }
        let (per32, d32, t32) = (per as u32, d as u32, total as u32);
        let (scs, sco) = (scale.stride as u32, scale.offset as u32);
        launch!(
            self,
            stream,
            "modulate_backward_dx",
            self.cfg_vec(total),
            [dy, mods, dx, &per32, &d32, &t32, &scs, &sco]
        )?;
        let p = self.colsum_partials(stream, CS_SUM_DOT, dy, x, x, x, batch, rows, d)?;
        self.colsum_finalize(stream, &p, 0, d, dmods, shift.stride, shift.offset)?;
        self.colsum_finalize(stream, &p, d, d, dmods, scale.stride, scale.offset)
    }

    /// `x[b, l, :] += y[b, l, :] * gate_b` for `x, y: [batch, rows, d]` (bit-exact with the CPU).
    #[allow(clippy::too_many_arguments)]
    pub fn gated_add_forward(
        &self,
        stream: &Arc<CudaStream>,
        x: &mut CudaSlice<f32>,
        y: &CudaSlice<f32>,
        batch: usize,
        rows: usize,
        d: usize,
        mods: &CudaSlice<f32>,
        gate: ModSlot,
    ) -> Result<(), DriverError> {
        let op = "gated_add_forward";
        let (per, total) = Self::check_mod(op, batch, rows, d, mods.len(), &[gate])?;
        ensure!(
            op,
            x.len() >= total && y.len() >= total,
            "x ({}) or y ({}) shorter than [{batch}, {rows}, {d}]",
            x.len(),
            y.len()
        );
        if total == 0 {
            return Ok(());
        }
        let (per32, d32, t32) = (per as u32, d as u32, total as u32);
        let (gs, go) = (gate.stride as u32, gate.offset as u32);
        launch!(
            self,
            stream,
            op,
            self.cfg_vec(total),
            [x, y, mods, &per32, &d32, &t32, &gs, &go]
        )
    }

    /// Gated-residual backward: given `dx` (the residual stream's gradient), overwrites
    /// `dy = dx * gate_b` and accumulates `sum_l dx * y` into the gate slot of `dmods`.
    #[allow(clippy::too_many_arguments)]
    pub fn gated_add_backward(
        &self,
        stream: &Arc<CudaStream>,
        dx: &CudaSlice<f32>,
        y: &CudaSlice<f32>,
        batch: usize,
        rows: usize,
        d: usize,
        mods: &CudaSlice<f32>,
        gate: ModSlot,
        dy: &mut CudaSlice<f32>,
        dmods: &mut CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        let op = "gated_add_backward";
        let (per, total) = Self::check_mod(op, batch, rows, d, mods.len(), &[gate])?;
        Self::check_mod(op, batch, rows, d, dmods.len(), &[gate])?;
        ensure!(
            op,
            dx.len() >= total && y.len() >= total && dy.len() >= total,
            "dx, y or dy shorter than [{batch}, {rows}, {d}]"
        );
        if total == 0 {
            return Ok(());
        }
        let (per32, d32, t32) = (per as u32, d as u32, total as u32);
        let (gs, go) = (gate.stride as u32, gate.offset as u32);
        launch!(
            self,
            stream,
            "gated_add_backward_dy",
            self.cfg_vec(total),
            [dx, mods, dy, &per32, &d32, &t32, &gs, &go]
        )?;
        let p = self.colsum_partials(stream, CS_DOT, dx, y, y, y, batch, rows, d)?;
        self.colsum_finalize(stream, &p, 0, d, dmods, gate.stride, gate.offset)
    }

    // ------------------------------------------------------------ RoPE, patches

    /// Rotates the interleaved pairs of `x: [batch, tokens, heads, head_dim]` in place by the
    /// angles `cos, sin: [tokens, head_dim / 2]`; `inverse` rotates by the negative angle (the
    /// backward). Bit-exact with the CPU.
    #[allow(clippy::too_many_arguments)]
    pub fn rope(
        &self,
        stream: &Arc<CudaStream>,
        x: &mut CudaSlice<f32>,
        batch: usize,
        tokens: usize,
        heads: usize,
        head_dim: usize,
        cos: &CudaSlice<f32>,
        sin: &CudaSlice<f32>,
        inverse: bool,
    ) -> Result<(), DriverError> {
        let op = "rope";
        ensure!(op, head_dim % 2 == 0, "head_dim {head_dim} is odd");
        let half = head_dim / 2;
        let n = batch * tokens * heads * head_dim;
        ensure!(op, fits_i32(n), "{n} elements exceed 2^31");
        ensure!(
            op,
            x.len() >= n && cos.len() >= tokens * half && sin.len() >= tokens * half,
            "buffers too short for [{batch}, {tokens}, {heads}, {head_dim}]"
        );
        if n == 0 {
            return Ok(());
        }
        let sign: f32 = if inverse { -1.0 } else { 1.0 };
        let (t32, h32, half32, np) = (tokens as u32, heads as u32, half as u32, (n / 2) as u32);
        launch!(
            self,
            stream,
            op,
            self.cfg_1d(n.div_ceil(4)),
            [x, cos, sin, &sign, &t32, &h32, &half32, &np]
        )
    }

    fn check_patch(
        op: &str,
        s: &PatchShape,
        a_len: usize,
        b_len: usize,
    ) -> Result<usize, DriverError> {
        ensure!(
            op,
            s.height % 2 == 0 && s.width % 2 == 0,
            "latent height {} and width {} must be even",
            s.height,
            s.width
        );
        let total = s.batch * s.channels * s.frames * s.height * s.width;
        ensure!(op, fits_i32(total), "{total} elements exceed 2^31");
        ensure!(
            op,
            a_len >= total && b_len >= total,
            "buffers too short for {s:?}"
        );
        Ok(total)
    }

    /// `x: [batch, C, F, H, W]` -> `tokens: [batch, L, 4C]` in the given patch order
    /// (overwrites `tokens`).
    pub fn patchify(
        &self,
        stream: &Arc<CudaStream>,
        x: &CudaSlice<f32>,
        shape: PatchShape,
        order: PatchOrder,
        tokens: &mut CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        self.patch(stream, "patchify", x, shape, order, tokens)
    }

    /// `tokens: [batch, L, 4C]` -> `x: [batch, C, F, H, W]` (overwrites `x`).
    pub fn unpatchify(
        &self,
        stream: &Arc<CudaStream>,
        tokens: &CudaSlice<f32>,
        shape: PatchShape,
        order: PatchOrder,
        x: &mut CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        self.patch(stream, "unpatchify", tokens, shape, order, x)
    }

    fn patch(
        &self,
        stream: &Arc<CudaStream>,
        op: &'static str,
        src: &CudaSlice<f32>,
        s: PatchShape,
        order: PatchOrder,
        dst: &mut CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        let total = Self::check_patch(op, &s, src.len(), dst.len())?;
        if total == 0 {
            return Ok(());
        }
        let per = (s.channels * s.frames * s.height * s.width) as u32;
        let (c, f, h, w) = (
            s.channels as u32,
            s.frames as u32,
            s.height as u32,
            s.width as u32,
        );
        let ord: i32 = match order {
            PatchOrder::ChannelMajor => 0,
            PatchOrder::ChannelMinor => 1,
        };
        let t32 = total as u32;
        launch!(
            self,
            stream,
            op,
            self.cfg_1d(total),
            [src, dst, &c, &f, &h, &w, &ord, &per, &t32]
        )
    }

    // ------------------------------------------------------------ reductions, optimiser

    /// Enqueues `out[slot] = sum x^2` over all of `x`, accumulated in f64 (deterministic: the
    /// split depends on `x.len()` only). No host synchronisation; `out: [>= slot + 1]`.
    pub fn sum_squares_into(
        &self,
        stream: &Arc<CudaStream>,
        x: &CudaSlice<f32>,
        out: &mut CudaSlice<f64>,
        slot: usize,
    ) -> Result<(), DriverError> {
        let op = "sum_squares";
        ensure!(
            op,
            slot < out.len() && fits_i32(slot),
            "slot {slot} outside out ({})",
            out.len()
        );
        let n = x.len();
        let blocks = n.div_ceil(SS_ELEMS_PER_BLOCK).clamp(1, SS_MAX_BLOCKS);
        // SAFETY: every element is written by sum_squares_partial before it is read.
        let mut partial = unsafe { stream.alloc::<f64>(blocks) }?;
        let n64 = n as i64;
        let cfg = LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        launch!(
            self,
            stream,
            "sum_squares_partial",
            cfg,
            [x, &n64, &mut partial]
        )?;
        let (count, slot32) = (blocks as i32, slot as i32);
        let cfg = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        launch!(
            self,
            stream,
            "sum_squares_finalize",
            cfg,
            [&partial, &count, out, &slot32]
        )
    }

    /// `sum x^2` over all of `x` in f64 (a non-finite result flags a non-finite entry).
    /// Synchronises the stream to return the value.
    pub fn sum_squares(
        &self,
        stream: &Arc<CudaStream>,
        x: &CudaSlice<f32>,
    ) -> Result<f64, DriverError> {
        if x.is_empty() {
            return Ok(0.0);
        }
        let mut out = stream.alloc_zeros::<f64>(1)?;
        self.sum_squares_into(stream, x, &mut out, 0)?;
        Ok(stream.clone_dtoh(&out)?[0])
    }

    /// One AdamW step on `param` (f32 master) with `grad`, `m`, `v` (all `param.len()` long),
    /// with the CPU's formula and roundings (bit-exact).
    pub fn adamw_update(
        &self,
        stream: &Arc<CudaStream>,
        param: &mut CudaSlice<f32>,
        grad: &CudaSlice<f32>,
        m: &mut CudaSlice<f32>,
        v: &mut CudaSlice<f32>,
        h: &AdamWHyper,
    ) -> Result<(), DriverError> {
        let n = param.len();
        ensure!(
            "adamw_update",
            grad.len() >= n && m.len() >= n && v.len() >= n,
            "grad ({}), m ({}) or v ({}) shorter than param ({n})",
            grad.len(),
            m.len(),
            v.len()
        );
        if n == 0 {
            return Ok(());
        }
        // The scalars exactly as src/backend/cpu/optim.rs forms them (f32).
        let step_size = h.lr / h.bias_correction1;
        let bc2_sqrt = h.bias_correction2.sqrt();
        let decay = 1.0 - h.lr * h.weight_decay;
        let omb1 = 1.0 - h.beta1;
        let omb2 = 1.0 - h.beta2;
        let n64 = n as i64;
        launch!(
            self,
            stream,
            "adamw_update",
            self.cfg_vec(n),
            [
                param,
                grad,
                m,
                v,
                &n64,
                &h.beta1,
                &omb1,
                &h.beta2,
                &omb2,
                &h.eps,
                &h.grad_scale,
                &step_size,
                &bc2_sqrt,
                &decay
            ]
        )
    }

    /// `dst[i] = bf16(src[i])` (round to nearest even, as `half`) for `i < src.len()`.
    pub fn cast_f32_to_bf16(
        &self,
        stream: &Arc<CudaStream>,
        src: &CudaSlice<f32>,
        dst: &mut CudaSlice<u16>,
    ) -> Result<(), DriverError> {
        self.narrow(stream, "cast_f32_to_bf16", src, dst)
    }

    /// `dst[i] = f16(src[i])` (round to nearest even, overflow to infinity, as `half`).
    pub fn cast_f32_to_f16(
        &self,
        stream: &Arc<CudaStream>,
        src: &CudaSlice<f32>,
        dst: &mut CudaSlice<u16>,
    ) -> Result<(), DriverError> {
        self.narrow(stream, "cast_f32_to_f16", src, dst)
    }

    /// `dst[i] = f32(src[i])` for bf16 bit patterns, `i < src.len()`.
    pub fn cast_bf16_to_f32(
        &self,
        stream: &Arc<CudaStream>,
        src: &CudaSlice<u16>,
        dst: &mut CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        self.widen(stream, "cast_bf16_to_f32", src, dst)
    }

    /// `dst[i] = f32(src[i])` for f16 bit patterns, `i < src.len()`.
    pub fn cast_f16_to_f32(
        &self,
        stream: &Arc<CudaStream>,
        src: &CudaSlice<u16>,
        dst: &mut CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        self.widen(stream, "cast_f16_to_f32", src, dst)
    }

    fn narrow(
        &self,
        stream: &Arc<CudaStream>,
        op: &'static str,
        src: &CudaSlice<f32>,
        dst: &mut CudaSlice<u16>,
    ) -> Result<(), DriverError> {
        let n = src.len();
        ensure!(op, dst.len() >= n, "dst holds {} < {n} values", dst.len());
        if n == 0 {
            return Ok(());
        }
        let n64 = n as i64;
        launch!(self, stream, op, self.cfg_vec(n), [src, dst, &n64])
    }

    fn widen(
        &self,
        stream: &Arc<CudaStream>,
        op: &'static str,
        src: &CudaSlice<u16>,
        dst: &mut CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        let n = src.len();
        ensure!(op, dst.len() >= n, "dst holds {} < {n} values", dst.len());
        if n == 0 {
            return Ok(());
        }
        let n64 = n as i64;
        launch!(self, stream, op, self.cfg_vec(n), [src, dst, &n64])
    }

    /// Overwrites a matrix weight `[rows, cols]` with the storage-dtype rounding of the f32
    /// master copy `master: [rows * cols]` (exactly that length, as the CPU asserts).
    pub fn weight_assign(
        &self,
        stream: &Arc<CudaStream>,
        w: &mut CudaWeight,
        master: &CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        let n = w.rows * w.cols;
        ensure!(
            "weight_assign",
            master.len() == n,
            "master copy ({}) does not match the weight [{}, {}]",
            master.len(),
            w.rows,
            w.cols
        );
        match &mut w.data {
            WeightData::F32(d) => {
                ensure!("weight_assign", d.len() >= n, "weight storage too short");
                if n == 0 {
                    return Ok(());
                }
                stream.memcpy_dtod(&master.slice(0..n), &mut d.slice_mut(0..n))
            }
            WeightData::Bf16(d) => self.cast_f32_to_bf16(stream, master, d),
            WeightData::F16(d) => self.cast_f32_to_f16(stream, master, d),
        }
    }

    /// Writes an f32 copy of a matrix weight into `out[.. rows * cols]`.
    pub fn weight_to_buf(
        &self,
        stream: &Arc<CudaStream>,
        w: &CudaWeight,
        out: &mut CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        let n = w.rows * w.cols;
        ensure!(
            "weight_to_buf",
            out.len() >= n,
            "out ({}) shorter than the weight [{}, {}]",
            out.len(),
            w.rows,
            w.cols
        );
        if n == 0 {
            return Ok(());
        }
        match &w.data {
            WeightData::F32(d) => {
                ensure!("weight_to_buf", d.len() >= n, "weight storage too short");
                stream.memcpy_dtod(&d.slice(0..n), &mut out.slice_mut(0..n))
            }
            WeightData::Bf16(d) => {
                ensure!("weight_to_buf", d.len() >= n, "weight storage too short");
                self.widen_n(stream, "cast_bf16_to_f32", d, n, out)
            }
            WeightData::F16(d) => {
                ensure!("weight_to_buf", d.len() >= n, "weight storage too short");
                self.widen_n(stream, "cast_f16_to_f32", d, n, out)
            }
        }
    }

    /// [`Kernels::widen`] over the first `n` elements only.
    fn widen_n(
        &self,
        stream: &Arc<CudaStream>,
        op: &'static str,
        src: &CudaSlice<u16>,
        n: usize,
        dst: &mut CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        let n64 = n as i64;
        launch!(self, stream, op, self.cfg_vec(n), [src, dst, &n64])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_list_unique_kernels() {
        let mut seen = std::collections::HashSet::new();
        for s in [ELEMENTWISE, NORM, REDUCE, MODULATE, LAYOUT, OPTIM] {
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
