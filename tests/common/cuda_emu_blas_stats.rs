//! The call counters of the emulated device's stand-in cuBLASLt and cuBLAS
//! (`tests/cuda_emu/libcublasLt.cpp`, `libcublas.cpp`), read from the copies this process has
//! loaded. A test can then assert which GEMM path prfl took. prfl turns a refused cuBLASLt
//! heuristic into its `cublasGemmEx` fallback without an error, so a refusal would otherwise go
//! unseen: the fallback computes the same product.
//!
//! Use: `#[path = "common/cuda_emu_blas_stats.rs"] mod cuda_emu_blas_stats;`, then
//! `cuda_emu_blas_stats::read(&lib_dir)` before and after the work, and compare the two.

#![allow(dead_code)]

use std::ffi::c_int;
use std::path::Path;

/// Counts since the libraries were loaded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlasStats {
    /// `cublasLtMatmulAlgoGetHeuristic` calls answered with an algorithm.
    pub lt_heuristic_ok: u64,
    /// `cublasLtMatmulAlgoGetHeuristic` calls refused (no algorithm, or an error status).
    pub lt_heuristic_refused: u64,
    /// `cublasLtMatmul` calls done.
    pub lt_matmul_ok: u64,
    /// `cublasLtMatmul` calls refused.
    pub lt_matmul_refused: u64,
    /// `cublasGemmEx` calls done.
    pub gemm_ex_ok: u64,
    /// `cublasGemmEx` calls refused.
    pub gemm_ex_refused: u64,
    /// `cublasSger_v2` calls done.
    pub sger_ok: u64,
    /// `cublasSger_v2` calls refused.
    pub sger_refused: u64,
}

impl BlasStats {
    /// What happened between `before` and `self`.
    pub fn since(&self, before: &BlasStats) -> BlasStats {
        BlasStats {
            lt_heuristic_ok: self.lt_heuristic_ok - before.lt_heuristic_ok,
            lt_heuristic_refused: self.lt_heuristic_refused - before.lt_heuristic_refused,
            lt_matmul_ok: self.lt_matmul_ok - before.lt_matmul_ok,
            lt_matmul_refused: self.lt_matmul_refused - before.lt_matmul_refused,
            gemm_ex_ok: self.gemm_ex_ok - before.gemm_ex_ok,
            gemm_ex_refused: self.gemm_ex_refused - before.gemm_ex_refused,
            sger_ok: self.sger_ok - before.sger_ok,
            sger_refused: self.sger_refused - before.sger_refused,
        }
    }

    /// Whether any call was refused.
    pub fn any_refused(&self) -> bool {
        self.lt_heuristic_refused
            + self.lt_matmul_refused
            + self.gemm_ex_refused
            + self.sger_refused
            > 0
    }
}

type StatsFn = unsafe extern "C" fn(*mut u64, usize) -> c_int;

/// Reads one library's four counters, from the copy already loaded from `path` (never loading
/// a fresh one, whose counters would all be zero).
fn counters(path: &Path, symbol: &[u8]) -> Result<[u64; 4], String> {
    // SAFETY: RTLD_NOLOAD only finds an object this process already loaded (the stand-in,
    // whose initialisers have run); nothing new is loaded.
    let lib = unsafe {
        libloading::os::unix::Library::open(Some(path), libc::RTLD_NOW | libc::RTLD_NOLOAD)
    }
    .map_err(|e| format!("{} is not loaded in this process: {e}", path.display()))?;
    // SAFETY: the stand-ins define this symbol with exactly this signature.
    let f: libloading::os::unix::Symbol<StatsFn> = unsafe { lib.get(symbol) }
        .map_err(|e| format!("{} has no counters (not a stand-in?): {e}", path.display()))?;
    let mut out = [0u64; 4];
    // SAFETY: `out` holds the 4 values the call writes at most.
    unsafe { f(out.as_mut_ptr(), out.len()) };
    Ok(out)
}

/// The counters of `lib_dir/libcublasLt.so` and `lib_dir/libcublas.so`, as loaded by this
/// process (an error if either is not loaded from there).
pub fn read(lib_dir: &Path) -> Result<BlasStats, String> {
    let lt = counters(
        &lib_dir.join("libcublasLt.so"),
        b"prfl_emu_cublaslt_stats\0",
    )?;
    let blas = counters(&lib_dir.join("libcublas.so"), b"prfl_emu_cublas_stats\0")?;
    Ok(BlasStats {
        lt_heuristic_ok: lt[0],
        lt_heuristic_refused: lt[1],
        lt_matmul_ok: lt[2],
        lt_matmul_refused: lt[3],
        gemm_ex_ok: blas[0],
        gemm_ex_refused: blas[1],
        sger_ok: blas[2],
        sger_refused: blas[3],
    })
}
