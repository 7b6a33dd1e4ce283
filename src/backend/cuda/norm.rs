//! Launchers of `kernels/norm.cu` (CPU: `cpu/norm.rs`): LayerNorm and RMSNorm, forward and
//! backward; the parameter gradients are [`super::reduce`] column sums.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DriverError, PushKernelArg};

use super::module::{cuda_source, ensure, fits_i32, launch, Kernels, ROWS_PER_BLOCK};
use super::reduce::{CS_LN, CS_RMS};
use super::types::KernelSource;

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
}
