//! The CUDA backend (work in progress; see issue 7). Built on every machine through cudarc's
//! dynamic loading: nothing here links CUDA, and [`probe`] checks for the driver and libraries
//! before cudarc is touched (cudarc panics when one is missing).
//!
//! Layout:
//! - [`types`]: device buffers, weights, kernel sources.
//! - [`kernels`]: the CUDA C sources of the element-wise, norm, modulation, RoPE, patch, cast and
//!   optimiser kernels, and typed launchers.
//! - [`attention`]: flash-attention forward and backward (tensor cores, online softmax).

pub mod attention;
pub mod kernels;
pub mod types;
