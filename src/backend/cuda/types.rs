//! Types shared by the CUDA backend's modules: device buffers, weights and kernel sources.

use cudarc::driver::CudaSlice;

/// An f32 activation buffer on the device (the backend's `Buf`).
pub type CudaBuf = CudaSlice<f32>;

/// A matrix weight's storage on the device, in its storage dtype (bf16 and f16 kept as raw
/// 16-bit patterns so that kernels need no CUDA headers).
pub enum WeightData {
    F32(CudaSlice<f32>),
    Bf16(CudaSlice<u16>),
    F16(CudaSlice<u16>),
}

/// A matrix weight `[rows = out, cols = in]` on the device (the backend's `Weight`).
pub struct CudaWeight {
    pub data: WeightData,
    pub rows: usize,
    pub cols: usize,
}

/// One CUDA C source file of kernels, compiled by NVRTC at run time (and compile-checked in CI
/// for every target architecture). Sources are self-contained: no `#include` of CUDA headers
/// (bf16/f16 are handled as bit patterns, tensor-core MMA through inline PTX), so run-time
/// compilation needs no include path.
#[derive(Clone, Copy, Debug)]
pub struct KernelSource {
    /// A short name (the file's stem), used in error messages and the compile report.
    pub name: &'static str,
    /// The CUDA C source.
    pub code: &'static str,
    /// The `extern "C"` kernels the source defines, loaded by name.
    pub functions: &'static [&'static str],
}
