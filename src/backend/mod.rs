//! The device abstraction.
//!
//! Model and trainer code is written once against [`Backend`]; a backend owns its buffers and
//! implements every op of the Wan2.1 DiT, forward and backward. The CPU backend ([`cpu`]) is both
//! the fallback and the executable specification that the CUDA backend is tested against.
//!
//! Conventions shared by every op:
//! - Activations are f32 buffers ([`Backend::Buf`]) laid out row-major; shapes are passed
//!   explicitly (the buffers do not carry them), as in llm.c.
//! - Matrix weights ([`Backend::Weight`]) keep their storage dtype (f32, bf16, f16) and are widened
//!   to f32 inside the GEMM; their gradients are f32 buffers.
//! - Backward ops *overwrite* the input gradient (`dx`) and *accumulate* (`+=`) parameter
//!   gradients, so that gradient accumulation over micro-batches needs no extra pass.
//! - "Modulation" vectors are read from a `[batch, stride]` buffer at a column offset
//!   ([`ModSlot`]), which is how Wan's `[B, 6, D]` shift/scale/gate table is consumed without
//!   copies.
//! - Each op family takes one shape struct ([`shape`]: [`RowShape`], [`ModShape`],
//!   [`RopeShape`], [`LinearShape`], [`BroadcastShape`], [`AttnShape`], [`PatchShape`]) whose
//!   `check_buffers` every backend calls, so that they refuse the same calls; ops with many
//!   buffers group them ([`Qkv`], [`LayerNormStats`], the `*Grads` structs).

pub mod cpu;
pub mod cuda;
pub mod device;
pub mod shape;

pub use shape::{
    AttnShape, BroadcastShape, GatedAddGrads, LayerNormGrads, LayerNormStats, LinearShape,
    ModShape, ModSlot, ModulateGrads, NormAffine, PatchShape, Qkv, RmsNormGrads, RopeShape,
    RowShape, ShapeError, ShiftScale,
};

use crate::tensor::{DType, Storage};

/// Order of the values inside one patch vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchOrder {
    /// (c, ph, pw): the patch-embedding Conv3d weight `[D, C, 1, 2, 2]` flattened.
    ChannelMajor,
    /// (ph, pw, c): the head's output channels, c fastest.
    ChannelMinor,
}

/// The scalars of one AdamW step (method.md sections 3 and 4).
#[derive(Clone, Copy, Debug)]
pub struct AdamWHyper {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Multiplies the gradient first (grad-norm clipping and accumulation averaging).
    pub grad_scale: f32,
    /// `1 - beta1^step` and `1 - beta2^step`.
    pub bias_correction1: f32,
    pub bias_correction2: f32,
}

pub trait Backend: Send + Sync + 'static {
    /// An f32 device buffer.
    type Buf: Send + Sync;
    /// A matrix weight `[rows = out, cols = in]` in its storage dtype.
    type Weight: Send + Sync;

    fn name(&self) -> String;

    // ---------------------------------------------------------------- memory
    fn zeros(&self, n: usize) -> Self::Buf;
    fn upload(&self, data: &[f32]) -> Self::Buf;
    fn download(&self, buf: &Self::Buf) -> Vec<f32>;
    fn len(&self, buf: &Self::Buf) -> usize;
    fn fill_zero(&self, buf: &mut Self::Buf);
    /// `dst[dst_off .. dst_off + n] = src[src_off .. src_off + n]`.
    fn copy_range(
        &self,
        src: &Self::Buf,
        src_off: usize,
        dst: &mut Self::Buf,
        dst_off: usize,
        n: usize,
    );
    fn weight_from_host(&self, data: &Storage, rows: usize, cols: usize) -> Self::Weight;
    fn weight_to_host(&self, w: &Self::Weight) -> Storage;
    fn weight_dtype(&self, w: &Self::Weight) -> DType;
    /// `(rows, cols)` = `(out, in)`.
    fn weight_dims(&self, w: &Self::Weight) -> (usize, usize);
    /// Bytes held by this buffer or weight on the device.
    fn buf_bytes(&self, buf: &Self::Buf) -> usize {
        self.len(buf) * 4
    }

    // ---------------------------------------------------------------- elementwise
    /// `y += x`.
    fn add_assign(&self, y: &mut Self::Buf, x: &Self::Buf);
    /// `y += alpha * x`.
    fn axpy(&self, alpha: f32, x: &Self::Buf, y: &mut Self::Buf);
    /// `x *= alpha`.
    fn scale(&self, alpha: f32, x: &mut Self::Buf);
    /// `out[b, k*w + j] = x[b, j] + table[k*w + j]` for `x: [batch, w]`, `table: [k*w]`.
    fn broadcast_add(
        &self,
        x: &Self::Buf,
        table: &Self::Buf,
        shape: BroadcastShape,
        out: &mut Self::Buf,
    );
    /// Backward of [`Backend::broadcast_add`]: `dx[b, j] += sum_k dout[b, k*w + j]`,
    /// `dtable += sum_b dout[b, :]`.
    fn broadcast_add_backward(
        &self,
        dout: &Self::Buf,
        shape: BroadcastShape,
        dx: &mut Self::Buf,
        dtable: &mut Self::Buf,
    );
    fn silu_forward(&self, x: &Self::Buf, y: &mut Self::Buf);
    fn silu_backward(&self, x: &Self::Buf, dy: &Self::Buf, dx: &mut Self::Buf);
    /// GELU with the tanh approximation (Wan's FFN and text MLP).
    fn gelu_tanh_forward(&self, x: &Self::Buf, y: &mut Self::Buf);
    fn gelu_tanh_backward(&self, x: &Self::Buf, dy: &Self::Buf, dx: &mut Self::Buf);
    /// Exact (erf) GELU (the I2V image MLP).
    fn gelu_erf_forward(&self, x: &Self::Buf, y: &mut Self::Buf);
    fn gelu_erf_backward(&self, x: &Self::Buf, dy: &Self::Buf, dx: &mut Self::Buf);

    fn relu_forward(&self, x: &Self::Buf, y: &mut Self::Buf);
    fn relu_backward(&self, x: &Self::Buf, dy: &Self::Buf, dx: &mut Self::Buf);

    // ---------------------------------------------------------------- reductions
    /// `sum x^2` accumulated in f64 (gradient norms; a non-finite result flags a non-finite
    /// entry).
    fn sum_squares(&self, x: &Self::Buf) -> f64;
    /// [`Backend::sum_squares`] of each buffer, in order. A device backend enqueues them all and
    /// reads the results back once, so a global gradient norm costs one host synchronisation per
    /// step rather than one per tensor.
    fn sum_squares_each(&self, xs: &[&Self::Buf]) -> Vec<f64> {
        xs.iter().map(|x| self.sum_squares(x)).collect()
    }

    // ---------------------------------------------------------------- optimiser
    /// One AdamW update of an f32 master parameter (decoupled weight decay, bias-corrected).
    fn adamw_update(
        &self,
        param: &mut Self::Buf,
        grad: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        h: &AdamWHyper,
    );
    /// Overwrites a matrix weight with (the storage-dtype rounding of) an f32 master copy.
    fn weight_assign(&self, w: &mut Self::Weight, master: &Self::Buf);
    /// An f32 copy of a matrix weight (the optimiser's master weights).
    fn weight_to_buf(&self, w: &Self::Weight) -> Self::Buf;

    // ---------------------------------------------------------------- linear algebra
    /// `y[n, out] = x[n, in] W^T (+ b)`.
    fn linear_forward(
        &self,
        x: &Self::Buf,
        n: usize,
        w: &Self::Weight,
        b: Option<&Self::Buf>,
        y: &mut Self::Buf,
    );
    /// `dx[n, in] = dy[n, out] W` (overwrites `dx`).
    fn linear_backward_input(&self, dy: &Self::Buf, n: usize, w: &Self::Weight, dx: &mut Self::Buf);
    /// `dw[out, in] += dy^T x`, `db[out] += sum_rows dy`.
    fn linear_backward_weight(
        &self,
        dy: &Self::Buf,
        x: &Self::Buf,
        shape: LinearShape,
        dw: &mut Self::Buf,
        db: Option<&mut Self::Buf>,
    );

    // ---------------------------------------------------------------- normalisation
    /// LayerNorm over rows of width `d` with optional affine; saves per-row mean and 1/std.
    fn layernorm_forward(
        &self,
        x: &Self::Buf,
        shape: RowShape,
        affine: NormAffine<&Self::Buf>,
        eps: f32,
        y: &mut Self::Buf,
        stats: LayerNormStats<&mut Self::Buf>,
    );
    /// Overwrites `dx`; accumulates the affine gradients that are given.
    fn layernorm_backward(
        &self,
        dy: &Self::Buf,
        x: &Self::Buf,
        shape: RowShape,
        weight: Option<&Self::Buf>,
        stats: LayerNormStats<&Self::Buf>,
        grads: LayerNormGrads<&mut Self::Buf>,
    );
    /// RMSNorm over rows of width `d` with a learned weight; saves per-row 1/rms.
    fn rmsnorm_forward(
        &self,
        x: &Self::Buf,
        shape: RowShape,
        weight: &Self::Buf,
        eps: f32,
        y: &mut Self::Buf,
        rstd: &mut Self::Buf,
    );
    /// Overwrites `dx`; accumulates `dweight`.
    fn rmsnorm_backward(
        &self,
        dy: &Self::Buf,
        x: &Self::Buf,
        shape: RowShape,
        weight: &Self::Buf,
        rstd: &Self::Buf,
        grads: RmsNormGrads<&mut Self::Buf>,
    );

    // ---------------------------------------------------------------- adaptive modulation
    /// `y[b, l, :] = x[b, l, :] * (1 + scale_b) + shift_b` for `x: [batch, rows, d]`.
    fn modulate_forward(
        &self,
        x: &Self::Buf,
        shape: ModShape,
        mods: &Self::Buf,
        slots: ShiftScale,
        y: &mut Self::Buf,
    );
    /// Overwrites `dx`; accumulates the shift and scale gradients into `dmods` at their slots.
    fn modulate_backward(
        &self,
        dy: &Self::Buf,
        x: &Self::Buf,
        shape: ModShape,
        mods: &Self::Buf,
        slots: ShiftScale,
        grads: ModulateGrads<&mut Self::Buf>,
    );
    /// `x[b, l, :] += y[b, l, :] * gate_b` (the gated residual).
    fn gated_add_forward(
        &self,
        x: &mut Self::Buf,
        y: &Self::Buf,
        shape: ModShape,
        mods: &Self::Buf,
        gate: ModSlot,
    );
    /// Given `dx` (gradient of the residual stream), overwrites `dy = dx * gate` and accumulates
    /// `dgate += sum_l dx * y` into `dmods`.
    fn gated_add_backward(
        &self,
        dx: &Self::Buf,
        y: &Self::Buf,
        shape: ModShape,
        mods: &Self::Buf,
        gate: ModSlot,
        grads: GatedAddGrads<&mut Self::Buf>,
    );

    // ---------------------------------------------------------------- rotary embedding
    /// Rotates interleaved pairs of `x: [batch, tokens, heads, head_dim]` in place with the
    /// per-token angle table `cos, sin: [tokens, head_dim / 2]`; `inverse` rotates by the negative
    /// angle, which is the backward of the forward rotation.
    fn rope(
        &self,
        x: &mut Self::Buf,
        shape: RopeShape,
        cos: &Self::Buf,
        sin: &Self::Buf,
        inverse: bool,
    );

    // ---------------------------------------------------------------- attention
    /// Softmax attention, tile by tile with an online softmax (never an `lq x lk` matrix).
    /// Writes `out: [batch, lq, heads, head_dim]` and the log-sum-exp `lse: [batch, heads, lq]`.
    fn attention_forward(
        &self,
        qkv: Qkv<&Self::Buf>,
        shape: AttnShape,
        out: &mut Self::Buf,
        lse: &mut Self::Buf,
    );
    /// Overwrites the gradients `dqkv` of `qkv`, given the forward's `out` and `lse` and the
    /// output gradient `dout`.
    fn attention_backward(
        &self,
        qkv: Qkv<&Self::Buf>,
        out: &Self::Buf,
        lse: &Self::Buf,
        dout: &Self::Buf,
        shape: AttnShape,
        dqkv: Qkv<&mut Self::Buf>,
    );

    // ---------------------------------------------------------------- (un)patchify
    /// `x: [batch, C, F, H, W]` -> `tokens: [batch, L, C*4]` in the given patch order.
    fn patchify(&self, x: &Self::Buf, shape: PatchShape, order: PatchOrder, tokens: &mut Self::Buf);
    /// Inverse of [`Backend::patchify`] (and therefore its backward, and vice versa).
    fn unpatchify(
        &self,
        tokens: &Self::Buf,
        shape: PatchShape,
        order: PatchOrder,
        x: &mut Self::Buf,
    );
}
