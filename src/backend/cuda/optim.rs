//! Launchers of `kernels/optim.cu` (CPU: `cpu/optim.rs`): the AdamW update, the f32 <-> bf16 /
//! f16 casts and the weight <-> master-copy transfers built on them.

use cudarc::driver::{CudaSlice, DriverError, PushKernelArg};

use super::module::{cuda_source, ensure, launch, Kernels};
use super::types::{CudaWeight, KernelSource, WeightData};
use crate::backend::AdamWHyper;

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

impl Kernels {
    /// One AdamW step on `param` (f32 master) with `grad`, `m`, `v` (all `param.len()` long),
    /// with the CPU's formula and roundings (bit-exact).
    pub fn adamw_update(
        &self,
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
        src: &CudaSlice<f32>,
        dst: &mut CudaSlice<u16>,
    ) -> Result<(), DriverError> {
        self.narrow("cast_f32_to_bf16", src, dst)
    }

    /// `dst[i] = f16(src[i])` (round to nearest even, overflow to infinity, as `half`).
    pub fn cast_f32_to_f16(
        &self,
        src: &CudaSlice<f32>,
        dst: &mut CudaSlice<u16>,
    ) -> Result<(), DriverError> {
        self.narrow("cast_f32_to_f16", src, dst)
    }

    /// `dst[i] = f32(src[i])` for bf16 bit patterns, `i < src.len()`.
    pub fn cast_bf16_to_f32(
        &self,
        src: &CudaSlice<u16>,
        dst: &mut CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        self.widen("cast_bf16_to_f32", src, dst)
    }

    /// `dst[i] = f32(src[i])` for f16 bit patterns, `i < src.len()`.
    pub fn cast_f16_to_f32(
        &self,
        src: &CudaSlice<u16>,
        dst: &mut CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        self.widen("cast_f16_to_f32", src, dst)
    }

    fn narrow(
        &self,
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
        launch!(self, op, self.cfg_vec(n), [src, dst, &n64])
    }

    fn widen(
        &self,
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
        launch!(self, op, self.cfg_vec(n), [src, dst, &n64])
    }

    /// Overwrites a matrix weight `[rows, cols]` with the storage-dtype rounding of the f32
    /// master copy `master: [rows * cols]` (exactly that length, as the CPU asserts).
    pub fn weight_assign(
        &self,
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
                self.stream()
                    .memcpy_dtod(&master.slice(0..n), &mut d.slice_mut(0..n))
            }
            WeightData::Bf16(d) => self.cast_f32_to_bf16(master, d),
            WeightData::F16(d) => self.cast_f32_to_f16(master, d),
        }
    }

    /// Writes an f32 copy of a matrix weight into `out[.. rows * cols]`.
    pub fn weight_to_buf(
        &self,
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
                self.stream()
                    .memcpy_dtod(&d.slice(0..n), &mut out.slice_mut(0..n))
            }
            WeightData::Bf16(d) => {
                ensure!("weight_to_buf", d.len() >= n, "weight storage too short");
                self.widen_n("cast_bf16_to_f32", d, n, out)
            }
            WeightData::F16(d) => {
                ensure!("weight_to_buf", d.len() >= n, "weight storage too short");
                self.widen_n("cast_f16_to_f32", d, n, out)
            }
        }
    }

    /// [`Kernels::widen`] over the first `n` elements only.
    fn widen_n(
        &self,
        op: &'static str,
        src: &CudaSlice<u16>,
        n: usize,
        dst: &mut CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        let n64 = n as i64;
        launch!(self, op, self.cfg_vec(n), [src, dst, &n64])
    }
}
