//! The CPU backend: f32 compute on host memory, multi-threaded with rayon, GEMMs through the
//! `gemm` crate. Each op lives in its own module as a slice-level kernel (the executable
//! specification); this file only adapts them to the [`Backend`] trait.

pub mod activation;
pub mod attention;
pub mod matmul;
pub mod modulate;
pub mod norm;
pub mod optim;
pub mod patch;
pub mod rope;

use super::{AdamWHyper, AttnShape, Backend, ModSlot, PatchOrder, PatchShape};
use crate::tensor::{DType, Storage};

/// The CPU backend. Stateless: the rayon global pool provides the threads.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

/// A matrix weight `[rows, cols]` kept in its storage dtype.
#[derive(Clone, Debug)]
pub struct CpuWeight {
    pub data: Storage,
    pub rows: usize,
    pub cols: usize,
}

impl Backend for Cpu {
    type Buf = Vec<f32>;
    type Weight = CpuWeight;

    fn name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn zeros(&self, n: usize) -> Vec<f32> {
        vec![0.0; n]
    }
    fn upload(&self, data: &[f32]) -> Vec<f32> {
        data.to_vec()
    }
    fn download(&self, buf: &Vec<f32>) -> Vec<f32> {
        buf.clone()
    }
    fn len(&self, buf: &Vec<f32>) -> usize {
        buf.len()
    }
    fn fill_zero(&self, buf: &mut Vec<f32>) {
        buf.iter_mut().for_each(|x| *x = 0.0);
    }
    fn copy_range(
        &self,
        src: &Vec<f32>,
        src_off: usize,
        dst: &mut Vec<f32>,
        dst_off: usize,
        n: usize,
    ) {
        dst[dst_off..dst_off + n].copy_from_slice(&src[src_off..src_off + n]);
    }
    fn weight_from_host(&self, data: &Storage, rows: usize, cols: usize) -> CpuWeight {
        assert_eq!(
            data.len(),
            rows * cols,
            "weight data does not match [{rows}, {cols}]"
        );
        CpuWeight {
            data: data.clone(),
            rows,
            cols,
        }
    }
    fn weight_to_host(&self, w: &CpuWeight) -> Storage {
        w.data.clone()
    }
    fn weight_dtype(&self, w: &CpuWeight) -> DType {
        w.data.dtype()
    }
    fn weight_dims(&self, w: &CpuWeight) -> (usize, usize) {
        (w.rows, w.cols)
    }

    fn add_assign(&self, y: &mut Vec<f32>, x: &Vec<f32>) {
        activation::axpy(1.0, x, y);
    }
    fn axpy(&self, alpha: f32, x: &Vec<f32>, y: &mut Vec<f32>) {
        activation::axpy(alpha, x, y);
    }
    fn scale(&self, alpha: f32, x: &mut Vec<f32>) {
        activation::scale(alpha, x);
    }
    fn broadcast_add(
        &self,
        x: &Vec<f32>,
        table: &Vec<f32>,
        batch: usize,
        w: usize,
        k: usize,
        out: &mut Vec<f32>,
    ) {
        activation::broadcast_add(x, table, batch, w, k, out);
    }
    fn broadcast_add_backward(
        &self,
        dout: &Vec<f32>,
        batch: usize,
        w: usize,
        k: usize,
        dx: &mut Vec<f32>,
        dtable: &mut Vec<f32>,
    ) {
        activation::broadcast_add_backward(dout, batch, w, k, dx, dtable);
    }
    fn silu_forward(&self, x: &Vec<f32>, y: &mut Vec<f32>) {
        activation::silu_forward(x, y);
    }
    fn silu_backward(&self, x: &Vec<f32>, dy: &Vec<f32>, dx: &mut Vec<f32>) {
        activation::silu_backward(x, dy, dx);
    }
    fn gelu_tanh_forward(&self, x: &Vec<f32>, y: &mut Vec<f32>) {
        activation::gelu_tanh_forward(x, y);
    }
    fn gelu_tanh_backward(&self, x: &Vec<f32>, dy: &Vec<f32>, dx: &mut Vec<f32>) {
        activation::gelu_tanh_backward(x, dy, dx);
    }
    fn gelu_erf_forward(&self, x: &Vec<f32>, y: &mut Vec<f32>) {
        activation::gelu_erf_forward(x, y);
    }
    fn gelu_erf_backward(&self, x: &Vec<f32>, dy: &Vec<f32>, dx: &mut Vec<f32>) {
        activation::gelu_erf_backward(x, dy, dx);
    }

    fn relu_forward(&self, x: &Vec<f32>, y: &mut Vec<f32>) {
        activation::relu_forward(x, y);
    }
    fn relu_backward(&self, x: &Vec<f32>, dy: &Vec<f32>, dx: &mut Vec<f32>) {
        activation::relu_backward(x, dy, dx);
    }
    fn sum_squares(&self, x: &Vec<f32>) -> f64 {
        optim::sum_squares(x)
    }
    fn adamw_update(
        &self,
        param: &mut Vec<f32>,
        grad: &Vec<f32>,
        m: &mut Vec<f32>,
        v: &mut Vec<f32>,
        h: &AdamWHyper,
    ) {
        optim::adamw_update(param, grad, m, v, h);
    }
    fn weight_assign(&self, w: &mut CpuWeight, master: &Vec<f32>) {
        assert_eq!(
            master.len(),
            w.rows * w.cols,
            "master copy does not match the weight"
        );
        w.data = Storage::from_f32(master, w.data.dtype());
    }
    fn weight_to_buf(&self, w: &CpuWeight) -> Vec<f32> {
        w.data.to_f32()
    }

    fn linear_forward(
        &self,
        x: &Vec<f32>,
        n: usize,
        w: &CpuWeight,
        b: Option<&Vec<f32>>,
        y: &mut Vec<f32>,
    ) {
        matmul::linear_forward(x, n, w, b.map(|b| b.as_slice()), y);
    }
    fn linear_backward_input(&self, dy: &Vec<f32>, n: usize, w: &CpuWeight, dx: &mut Vec<f32>) {
        matmul::linear_backward_input(dy, n, w, dx);
    }
    fn linear_backward_weight(
        &self,
        dy: &Vec<f32>,
        x: &Vec<f32>,
        n: usize,
        n_in: usize,
        n_out: usize,
        dw: &mut Vec<f32>,
        db: Option<&mut Vec<f32>>,
    ) {
        matmul::linear_backward_weight(dy, x, n, n_in, n_out, dw, db.map(|b| b.as_mut_slice()));
    }

    fn layernorm_forward(
        &self,
        x: &Vec<f32>,
        rows: usize,
        d: usize,
        weight: Option<&Vec<f32>>,
        bias: Option<&Vec<f32>>,
        eps: f32,
        y: &mut Vec<f32>,
        mean: &mut Vec<f32>,
        rstd: &mut Vec<f32>,
    ) {
        norm::layernorm_forward(
            &x[..rows * d],
            d,
            weight.map(|w| w.as_slice()),
            bias.map(|b| b.as_slice()),
            eps,
            &mut y[..rows * d],
            &mut mean[..rows],
            &mut rstd[..rows],
        );
    }
    fn layernorm_backward(
        &self,
        dy: &Vec<f32>,
        x: &Vec<f32>,
        rows: usize,
        d: usize,
        weight: Option<&Vec<f32>>,
        mean: &Vec<f32>,
        rstd: &Vec<f32>,
        dx: &mut Vec<f32>,
        dweight: Option<&mut Vec<f32>>,
        dbias: Option<&mut Vec<f32>>,
    ) {
        norm::layernorm_backward(
            &dy[..rows * d],
            &x[..rows * d],
            d,
            weight.map(|w| w.as_slice()),
            &mean[..rows],
            &rstd[..rows],
            &mut dx[..rows * d],
            dweight.map(|w| w.as_mut_slice()),
            dbias.map(|b| b.as_mut_slice()),
        );
    }
    fn rmsnorm_forward(
        &self,
        x: &Vec<f32>,
        rows: usize,
        d: usize,
        weight: &Vec<f32>,
        eps: f32,
        y: &mut Vec<f32>,
        rstd: &mut Vec<f32>,
    ) {
        norm::rmsnorm_forward(
            &x[..rows * d],
            d,
            weight,
            eps,
            &mut y[..rows * d],
            &mut rstd[..rows],
        );
    }
    fn rmsnorm_backward(
        &self,
        dy: &Vec<f32>,
        x: &Vec<f32>,
        rows: usize,
        d: usize,
        weight: &Vec<f32>,
        rstd: &Vec<f32>,
        dx: &mut Vec<f32>,
        dweight: &mut Vec<f32>,
    ) {
        norm::rmsnorm_backward(
            &dy[..rows * d],
            &x[..rows * d],
            d,
            weight,
            &rstd[..rows],
            &mut dx[..rows * d],
            dweight,
        );
    }

    fn modulate_forward(
        &self,
        x: &Vec<f32>,
        batch: usize,
        rows: usize,
        d: usize,
        mods: &Vec<f32>,
        shift: ModSlot,
        scale: ModSlot,
        y: &mut Vec<f32>,
    ) {
        modulate::modulate_forward(x, batch, rows, d, mods, shift, scale, y);
    }
    fn modulate_backward(
        &self,
        dy: &Vec<f32>,
        x: &Vec<f32>,
        batch: usize,
        rows: usize,
        d: usize,
        mods: &Vec<f32>,
        shift: ModSlot,
        scale: ModSlot,
        dx: &mut Vec<f32>,
        dmods: &mut Vec<f32>,
    ) {
        modulate::modulate_backward(dy, x, batch, rows, d, mods, shift, scale, dx, dmods);
    }
    fn gated_add_forward(
        &self,
        x: &mut Vec<f32>,
        y: &Vec<f32>,
        batch: usize,
        rows: usize,
        d: usize,
        mods: &Vec<f32>,
        gate: ModSlot,
    ) {
        modulate::gated_add_forward(x, y, batch, rows, d, mods, gate);
    }
    fn gated_add_backward(
        &self,
        dx: &Vec<f32>,
        y: &Vec<f32>,
        batch: usize,
        rows: usize,
        d: usize,
        mods: &Vec<f32>,
        gate: ModSlot,
        dy: &mut Vec<f32>,
        dmods: &mut Vec<f32>,
    ) {
        modulate::gated_add_backward(dx, y, batch, rows, d, mods, gate, dy, dmods);
    }

    fn rope(
        &self,
        x: &mut Vec<f32>,
        batch: usize,
        tokens: usize,
        heads: usize,
        head_dim: usize,
        cos: &Vec<f32>,
        sin: &Vec<f32>,
        inverse: bool,
    ) {
        rope::rope_rotate(x, batch, tokens, heads, head_dim, cos, sin, inverse);
    }

    fn attention_forward(
        &self,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        shape: AttnShape,
        out: &mut Vec<f32>,
        lse: &mut Vec<f32>,
    ) {
        attention::attention_forward(q, k, v, shape, out, lse);
    }
    fn attention_backward(
        &self,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        out: &Vec<f32>,
        lse: &Vec<f32>,
        dout: &Vec<f32>,
        shape: AttnShape,
        dq: &mut Vec<f32>,
        dk: &mut Vec<f32>,
        dv: &mut Vec<f32>,
    ) {
        attention::attention_backward(q, k, v, out, lse, dout, shape, dq, dk, dv);
    }

    fn patchify(&self, x: &Vec<f32>, shape: PatchShape, order: PatchOrder, tokens: &mut Vec<f32>) {
        patch::patchify(x, shape, order, tokens);
    }
    fn unpatchify(
        &self,
        tokens: &Vec<f32>,
        shape: PatchShape,
        order: PatchOrder,
        x: &mut Vec<f32>,
    ) {
        patch::unpatchify(tokens, shape, order, x);
    }
}
