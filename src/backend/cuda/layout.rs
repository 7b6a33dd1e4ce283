//! Launchers of `kernels/layout.cu` (CPU: `cpu/rope.rs`, `cpu/patch.rs`): the rotary embedding
//! and (un)patchify.

use cudarc::driver::{CudaSlice, DriverError, PushKernelArg};

use super::module::{cuda_source, ensure, fits_i32, launch, refuse, Kernels};
use super::types::KernelSource;
use crate::backend::{PatchOrder, PatchShape, RopeShape};

/// Rotary embedding and (un)patchify.
pub const LAYOUT: KernelSource = KernelSource {
    name: "layout",
    code: cuda_source!("layout"),
    functions: &["rope", "patchify", "unpatchify"],
};

impl Kernels {
    /// Rotates the interleaved pairs of `x: [batch, tokens, heads, head_dim]` in place by the
    /// angles `cos, sin: [tokens, head_dim / 2]`; `inverse` rotates by the negative angle (the
    /// backward). Bit-exact with the CPU.
    pub fn rope(
        &self,
        x: &mut CudaSlice<f32>,
        shape: RopeShape,
        cos: &CudaSlice<f32>,
        sin: &CudaSlice<f32>,
        inverse: bool,
    ) -> Result<(), DriverError> {
        let op = "rope";
        let n = shape.total();
        ensure!(op, fits_i32(n), "{n} elements exceed 2^31");
        shape
            .check_buffers(x.len(), cos.len(), sin.len())
            .map_err(|e| refuse(op, e))?;
        if n == 0 {
            return Ok(());
        }
        let RopeShape {
            tokens,
            heads,
            head_dim,
            ..
        } = shape;
        let half = head_dim / 2;
        let sign: f32 = if inverse { -1.0 } else { 1.0 };
        let (t32, h32, half32, np) = (tokens as u32, heads as u32, half as u32, (n / 2) as u32);
        launch!(
            self,
            op,
            self.cfg_1d(n.div_ceil(4)),
            [x, cos, sin, &sign, &t32, &h32, &half32, &np]
        )
    }

    /// `x: [batch, C, F, H, W]` -> `tokens: [batch, L, 4C]` in the given patch order
    /// (overwrites `tokens`).
    pub fn patchify(
        &self,
        x: &CudaSlice<f32>,
        shape: PatchShape,
        order: PatchOrder,
        tokens: &mut CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        let op = "patchify";
        shape
            .check_buffers(x.len(), tokens.len())
            .map_err(|e| refuse(op, e))?;
        self.patch(op, x, shape, order, tokens)
    }

    /// `tokens: [batch, L, 4C]` -> `x: [batch, C, F, H, W]` (overwrites `x`).
    pub fn unpatchify(
        &self,
        tokens: &CudaSlice<f32>,
        shape: PatchShape,
        order: PatchOrder,
        x: &mut CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        let op = "unpatchify";
        shape
            .check_buffers(x.len(), tokens.len())
            .map_err(|e| refuse(op, e))?;
        self.patch(op, tokens, shape, order, x)
    }

    /// The reordering both directions share (`src`, `dst` already checked against `s`).
    fn patch(
        &self,
        op: &'static str,
        src: &CudaSlice<f32>,
        s: PatchShape,
        order: PatchOrder,
        dst: &mut CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        let total = s.total();
        ensure!(op, fits_i32(total), "{total} elements exceed 2^31");
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
            op,
            self.cfg_1d(total),
            [src, dst, &c, &f, &h, &w, &ord, &per, &t32]
        )
    }
}
