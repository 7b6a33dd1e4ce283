//! Launchers of `kernels/modulate.cu` (CPU: `cpu/modulate.rs`): adaptive modulation and gated
//! residuals; the modulation-table gradients are [`super::reduce`] column sums.

use cudarc::driver::{CudaSlice, DriverError, PushKernelArg};

use super::module::{cuda_source, ensure, fits_i32, launch, refuse, Kernels};
use super::reduce::{ColsumOperands, CS_DOT, CS_SUM_DOT};
use super::types::KernelSource;
use crate::backend::{GatedAddGrads, ModShape, ModSlot, ModulateGrads, RowShape, ShiftScale};

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

impl Kernels {
    /// CUDA's own limits on top of the shared check: the kernels index activations and the
    /// modulation table in 32 bits.
    fn check_mod_limits(op: &str, shape: ModShape, slots: &[ModSlot]) -> Result<(), DriverError> {
        let total = shape.total();
        ensure!(op, fits_i32(total), "{total} elements exceed 2^31");
        for s in slots {
            ensure!(
                op,
                fits_i32(s.stride) && fits_i32(s.end(shape.batch, shape.d)),
                "slot {s:?} too large"
            );
        }
        Ok(())
    }

    /// `y[b, l, :] = x[b, l, :] * (1 + scale_b) + shift_b` for `x, y: [batch, rows, d]` and the
    /// shift/scale vectors at their slots of `mods` (overwrites `y`; bit-exact with the CPU).
    pub fn modulate_forward(
        &self,
        x: &CudaSlice<f32>,
        shape: ModShape,
        mods: &CudaSlice<f32>,
        slots: ShiftScale,
        y: &mut CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        let op = "modulate_forward";
        Self::check_mod_limits(op, shape, &[slots.shift, slots.scale])?;
        shape
            .check_modulate_forward(x.len(), mods.len(), slots, y.len())
            .map_err(|e| refuse(op, e))?;
        let total = shape.total();
        if total == 0 {
            return Ok(());
        }
        let ShiftScale { shift, scale } = slots;
        let (per, d32, t32) = (shape.per_sample() as u32, shape.d as u32, total as u32);
        let (shs, sho, scs, sco) = (
            shift.stride as u32,
            shift.offset as u32,
            scale.stride as u32,
            scale.offset as u32,
        );
        launch!(
            self,
            op,
            self.cfg_vec(total),
            [x, mods, y, &per, &d32, &t32, &shs, &sho, &scs, &sco]
        )
    }

    /// Modulation backward: overwrites `dx = dy * (1 + scale_b)`; accumulates
    /// `sum_l dy` into the shift slot and `sum_l dy * x` into the scale slot of `dmods`
    /// (`[batch, stride]`, like `mods`).
    pub fn modulate_backward(
        &self,
        dy: &CudaSlice<f32>,
        x: &CudaSlice<f32>,
        shape: ModShape,
        mods: &CudaSlice<f32>,
        slots: ShiftScale,
        grads: ModulateGrads<&mut CudaSlice<f32>>,
    ) -> Result<(), DriverError> {
        let op = "modulate_backward";
        Self::check_mod_limits(op, shape, &[slots.shift, slots.scale])?;
        shape
            .check_modulate_backward(
                dy.len(),
                x.len(),
                mods.len(),
                slots,
                grads.lens(|g| g.len()),
            )
            .map_err(|e| refuse(op, e))?;
        let total = shape.total();
        if total == 0 {
            return Ok(());
        }
        let ShiftScale { shift, scale } = slots;
        let ModulateGrads { dx, dmods } = grads;
        let ModShape { batch, rows, d } = shape;
        let (per32, d32, t32) = (shape.per_sample() as u32, d as u32, total as u32);
        let (scs, sco) = (scale.stride as u32, scale.offset as u32);
        launch!(
            self,
            "modulate_backward_dx",
            self.cfg_vec(total),
            [dy, mods, dx, &per32, &d32, &t32, &scs, &sco]
        )?;
        // `mean` and `rstd` are unused in this mode.
        let dy_and_dy_x = ColsumOperands {
            mode: CS_SUM_DOT,
            a: dy,
            b: x,
            mean: x,
            rstd: x,
        };
        let p = self.colsum_partials(dy_and_dy_x, batch, RowShape { rows, d })?;
        self.colsum_finalize(&p, 0..d, dmods, shift)?;
        self.colsum_finalize(&p, d..2 * d, dmods, scale)
    }

    /// `x[b, l, :] += y[b, l, :] * gate_b` for `x, y: [batch, rows, d]` (bit-exact with the CPU).
    pub fn gated_add_forward(
        &self,
        x: &mut CudaSlice<f32>,
        y: &CudaSlice<f32>,
        shape: ModShape,
        mods: &CudaSlice<f32>,
        gate: ModSlot,
    ) -> Result<(), DriverError> {
        let op = "gated_add_forward";
        Self::check_mod_limits(op, shape, &[gate])?;
        shape
            .check_gated_add_forward(x.len(), y.len(), mods.len(), gate)
            .map_err(|e| refuse(op, e))?;
        let total = shape.total();
        if total == 0 {
            return Ok(());
        }
        let (per32, d32, t32) = (shape.per_sample() as u32, shape.d as u32, total as u32);
        let (gs, go) = (gate.stride as u32, gate.offset as u32);
        launch!(
            self,
            op,
            self.cfg_vec(total),
            [x, y, mods, &per32, &d32, &t32, &gs, &go]
        )
    }

    /// Gated-residual backward: given `dx` (the residual stream's gradient), overwrites
    /// `dy = dx * gate_b` and accumulates `sum_l dx * y` into the gate slot of `dmods`.
    pub fn gated_add_backward(
        &self,
        dx: &CudaSlice<f32>,
        y: &CudaSlice<f32>,
        shape: ModShape,
        mods: &CudaSlice<f32>,
        gate: ModSlot,
        grads: GatedAddGrads<&mut CudaSlice<f32>>,
    ) -> Result<(), DriverError> {
        let op = "gated_add_backward";
        Self::check_mod_limits(op, shape, &[gate])?;
        shape
            .check_gated_add_backward(dx.len(), y.len(), mods.len(), gate, grads.lens(|g| g.len()))
            .map_err(|e| refuse(op, e))?;
        let total = shape.total();
        if total == 0 {
            return Ok(());
        }
        let GatedAddGrads { dy, dmods } = grads;
        let ModShape { batch, rows, d } = shape;
        let (per32, d32, t32) = (shape.per_sample() as u32, d as u32, total as u32);
        let (gs, go) = (gate.stride as u32, gate.offset as u32);
        launch!(
            self,
            "gated_add_backward_dy",
            self.cfg_vec(total),
            [dx, mods, dy, &per32, &d32, &t32, &gs, &go]
        )?;
        // `mean` and `rstd` are unused in this mode.
        let dx_y = ColsumOperands {
            mode: CS_DOT,
            a: dx,
            b: y,
            mean: y,
            rstd: y,
        };
        let p = self.colsum_partials(dx_y, batch, RowShape { rows, d })?;
        self.colsum_finalize(&p, 0..d, dmods, gate)
    }
}
