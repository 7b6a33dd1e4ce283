//! Launchers of `kernels/layout.cu` (CPU: `cpu/rope.rs`, `cpu/patch.rs`): the rotary embedding
//! and (un)patchify.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DriverError, PushKernelArg};

use super::module::{cuda_source, ensure, fits_i32, launch, Kernels};
use super::types::KernelSource;
use crate::backend::{PatchOrder, PatchShape};

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
}
