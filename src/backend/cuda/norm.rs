//! Launchers of `kernels/norm.cu` (CPU: `cpu/norm.rs`): LayerNorm and RMSNorm, forward and
//! backward; the parameter gradients are [`super::reduce`] column sums.

use cudarc::driver::{CudaSlice, DriverError, PushKernelArg};

use super::module::{cuda_source, ensure, fits_i32, launch, refuse, Kernels, ROWS_PER_BLOCK};
use super::reduce::{ColsumOperands, CS_LN, CS_RMS, FROM_START};
use super::types::KernelSource;
use crate::backend::{LayerNormGrads, LayerNormStats, NormAffine, RmsNormGrads, RowShape};

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

impl Kernels {
    /// CUDA's own limit on top of the shared check: the row kernels index in 32 bits.
    fn check_rows(op: &str, shape: RowShape) -> Result<(), DriverError> {
        let RowShape { rows, d } = shape;
        ensure!(
            op,
            fits_i32(rows) && fits_i32(d) && fits_i32(rows.div_ceil(ROWS_PER_BLOCK as usize)),
            "[{rows}, {d}] too large"
        );
        Ok(())
    }

    /// LayerNorm over rows: `x, y: [rows, d]`, optional `weight, bias: [d]`; writes `y` and the
    /// per-row `mean, rstd: [rows]` (`rstd = 1/sqrt(biased var + eps)`).
    pub fn layernorm_forward(
        &self,
        x: &CudaSlice<f32>,
        shape: RowShape,
        affine: NormAffine<&CudaSlice<f32>>,
        eps: f32,
        y: &mut CudaSlice<f32>,
        stats: LayerNormStats<&mut CudaSlice<f32>>,
    ) -> Result<(), DriverError> {
        let op = "layernorm_forward";
        Self::check_rows(op, shape)?;
        shape
            .check_layernorm_forward(
                x.len(),
                affine.lens(|p| p.len()),
                y.len(),
                stats.lens(|s| s.len()),
            )
            .map_err(|e| refuse(op, e))?;
        let RowShape { rows, d } = shape;
        if rows * d == 0 {
            return Ok(());
        }
        let NormAffine { weight, bias } = affine;
        let LayerNormStats { mean, rstd } = stats;
        let (has_w, has_b) = (weight.is_some() as i32, bias.is_some() as i32);
        let (w, b) = (weight.unwrap_or(x), bias.unwrap_or(x));
        let (rows32, d32) = (rows as i32, d as i32);
        launch!(
            self,
            op,
            Self::cfg_rows(rows),
            [x, w, b, &has_w, &has_b, &eps, y, mean, rstd, &rows32, &d32]
        )
    }

    /// LayerNorm backward: overwrites `dx: [rows, d]`; accumulates `dweight += sum_rows dy xhat`
    /// and `dbias += sum_rows dy` (`[d]` each) when given.
    pub fn layernorm_backward(
        &self,
        dy: &CudaSlice<f32>,
        x: &CudaSlice<f32>,
        shape: RowShape,
        weight: Option<&CudaSlice<f32>>,
        stats: LayerNormStats<&CudaSlice<f32>>,
        grads: LayerNormGrads<&mut CudaSlice<f32>>,
    ) -> Result<(), DriverError> {
        let op = "layernorm_backward";
        Self::check_rows(op, shape)?;
        shape
            .check_layernorm_backward(
                dy.len(),
                x.len(),
                weight.map(|w| w.len()),
                stats.lens(|s| s.len()),
                grads.lens(|g| g.len()),
            )
            .map_err(|e| refuse(op, e))?;
        let RowShape { rows, d } = shape;
        if rows * d == 0 {
            return Ok(());
        }
        let LayerNormStats { mean, rstd } = stats;
        let LayerNormGrads { dx, dweight, dbias } = grads;
        let has_w = weight.is_some() as i32;
        let w = weight.unwrap_or(x);
        let (rows32, d32) = (rows as i32, d as i32);
        launch!(
            self,
            "layernorm_backward_dx",
            Self::cfg_rows(rows),
            [dy, x, w, &has_w, mean, rstd, dx, &rows32, &d32]
        )?;
        if dweight.is_none() && dbias.is_none() {
            return Ok(());
        }
        let dy_xhat = ColsumOperands {
            mode: CS_LN,
            a: dy,
            b: x,
            mean,
            rstd,
        };
        let p = self.colsum_partials(dy_xhat, 1, shape)?;
        if let Some(dw) = dweight {
            self.colsum_finalize(&p, 0..d, dw, FROM_START)?;
        }
        if let Some(db) = dbias {
            self.colsum_finalize(&p, d..2 * d, db, FROM_START)?;
        }
        Ok(())
    }

    /// RMSNorm over rows: `y = (x * rstd) * weight`, `x, y: [rows, d]`, `weight: [d]`; writes
    /// `rstd: [rows]` (`1/sqrt(mean(x^2) + eps)`).
    pub fn rmsnorm_forward(
        &self,
        x: &CudaSlice<f32>,
        shape: RowShape,
        weight: &CudaSlice<f32>,
        eps: f32,
        y: &mut CudaSlice<f32>,
        rstd: &mut CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        let op = "rmsnorm_forward";
        Self::check_rows(op, shape)?;
        shape
            .check_rmsnorm_forward(x.len(), weight.len(), y.len(), rstd.len())
            .map_err(|e| refuse(op, e))?;
        let RowShape { rows, d } = shape;
        if rows * d == 0 {
            return Ok(());
        }
        let (rows32, d32) = (rows as i32, d as i32);
        launch!(
            self,
            op,
            Self::cfg_rows(rows),
            [x, weight, &eps, y, rstd, &rows32, &d32]
        )
    }

    /// RMSNorm backward: overwrites `dx: [rows, d]`; accumulates
    /// `dweight += sum_rows dy (x rstd)` (`[d]`).
    pub fn rmsnorm_backward(
        &self,
        dy: &CudaSlice<f32>,
        x: &CudaSlice<f32>,
        shape: RowShape,
        weight: &CudaSlice<f32>,
        rstd: &CudaSlice<f32>,
        grads: RmsNormGrads<&mut CudaSlice<f32>>,
    ) -> Result<(), DriverError> {
        let op = "rmsnorm_backward";
        Self::check_rows(op, shape)?;
        shape
            .check_rmsnorm_backward(
                dy.len(),
                x.len(),
                weight.len(),
                rstd.len(),
                grads.lens(|g| g.len()),
            )
            .map_err(|e| refuse(op, e))?;
        let RowShape { rows, d } = shape;
        if rows * d == 0 {
            return Ok(());
        }
        let RmsNormGrads { dx, dweight } = grads;
        let (rows32, d32) = (rows as i32, d as i32);
        launch!(
            self,
            "rmsnorm_backward_dx",
            Self::cfg_rows(rows),
            [dy, x, weight, rstd, dx, &rows32, &d32]
        )?;
        // `mean` is unused in this mode.
        let dy_xhat = ColsumOperands {
            mode: CS_RMS,
            a: dy,
            b: x,
            mean: rstd,
            rstd,
        };
        let p = self.colsum_partials(dy_xhat, 1, shape)?;
        self.colsum_finalize(&p, 0..d, dweight, FROM_START)
    }
}
