//! Launchers of `kernels/modulate.cu` (CPU: `cpu/modulate.rs`): adaptive modulation and gated
//! residuals; the modulation-table gradients are [`super::reduce`] column sums.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DriverError, PushKernelArg};

use super::module::{cuda_source, ensure, fits_i32, launch, Kernels};
use super::reduce::{CS_DOT, CS_SUM_DOT};
use super::types::KernelSource;
use crate::backend::ModSlot;

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

/// Last element (exclusive) a `ModSlot` of width `d` reaches over `batch` samples.
fn slot_end(s: ModSlot, batch: usize, d: usize) -> usize {
    (batch - 1) * s.stride + s.offset + d
}

impl Kernels {
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
}
