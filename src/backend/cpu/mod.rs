//! The CPU backend: f32 compute on host memory, multi-threaded with rayon, GEMMs through the
//! `gemm` crate. Each op lives in its own module as a slice-level kernel (the executable
//! specification); this file adapts them to the [`Backend`] trait, checking each call's buffers
//! against its shape struct first (the same checks the CUDA launchers make, see
//! [`super::shape`]).

pub mod activation;
pub mod attention;
pub mod conv3d;
pub mod matmul;
pub mod modulate;
pub mod norm;
pub mod optim;
pub mod patch;
pub mod rope;
pub mod vae_attention;
pub mod vae_norm;
pub mod vae_resample;

use super::{
    AdamWHyper, AttnShape, Backend, BroadcastShape, GatedAddGrads, LayerNormGrads, LayerNormStats,
    LinearShape, ModShape, ModSlot, ModulateGrads, NormAffine, PatchOrder, PatchShape, Qkv,
    RmsNormGrads, RopeShape, RowShape, ShapeError, ShiftScale,
};
use crate::tensor::{DType, Storage};

/// The CPU's answer to buffers that do not fit an op's shape: a panic naming the op (the trait
/// has no `Result`; the CUDA backend refuses the same calls through the same checks).
#[track_caller]
fn fits(op: &str, check: Result<(), ShapeError>) {
    if let Err(e) = check {
        panic!("{op} (cpu): {e}");
    }
}

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
        shape: BroadcastShape,
        out: &mut Vec<f32>,
    ) {
        fits(
            "broadcast_add",
            shape.check_buffers(x.len(), table.len(), out.len()),
        );
        activation::broadcast_add(x, table, shape, out);
    }
    fn broadcast_add_backward(
        &self,
        dout: &Vec<f32>,
        shape: BroadcastShape,
        dx: &mut Vec<f32>,
        dtable: &mut Vec<f32>,
    ) {
        fits(
            "broadcast_add_backward",
            shape.check_buffers(dx.len(), dtable.len(), dout.len()),
        );
        activation::broadcast_add_backward(dout, shape, dx, dtable);
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
        shape: LinearShape,
        dw: &mut Vec<f32>,
        db: Option<&mut Vec<f32>>,
    ) {
        fits(
            "linear_backward_weight",
            shape.check_buffers(dy.len(), x.len(), dw.len(), db.as_ref().map(|b| b.len())),
        );
        matmul::linear_backward_weight(dy, x, shape, dw, db.map(|b| b.as_mut_slice()));
    }

    fn layernorm_forward(
        &self,
        x: &Vec<f32>,
        shape: RowShape,
        affine: NormAffine<&Vec<f32>>,
        eps: f32,
        y: &mut Vec<f32>,
        stats: LayerNormStats<&mut Vec<f32>>,
    ) {
        fits(
            "layernorm_forward",
            shape.check_layernorm_forward(
                x.len(),
                affine.lens(|p| p.len()),
                y.len(),
                stats.lens(|s| s.len()),
            ),
        );
        let RowShape { rows, d } = shape;
        norm::layernorm_forward(
            &x[..rows * d],
            d,
            affine.map(|p| p.as_slice()),
            eps,
            &mut y[..rows * d],
            stats.map(|s| &mut s[..rows]),
        );
    }
    fn layernorm_backward(
        &self,
        dy: &Vec<f32>,
        x: &Vec<f32>,
        shape: RowShape,
        weight: Option<&Vec<f32>>,
        stats: LayerNormStats<&Vec<f32>>,
        grads: LayerNormGrads<&mut Vec<f32>>,
    ) {
        fits(
            "layernorm_backward",
            shape.check_layernorm_backward(
                dy.len(),
                x.len(),
                weight.map(|w| w.len()),
                stats.lens(|s| s.len()),
                grads.lens(|g| g.len()),
            ),
        );
        let RowShape { rows, d } = shape;
        let LayerNormGrads { dx, dweight, dbias } = grads;
        norm::layernorm_backward(
            &dy[..rows * d],
            &x[..rows * d],
            d,
            weight.map(|w| w.as_slice()),
            stats.map(|s| &s[..rows]),
            LayerNormGrads {
                dx: &mut dx[..rows * d],
                dweight: dweight.map(|w| w.as_mut_slice()),
                dbias: dbias.map(|b| b.as_mut_slice()),
            },
        );
    }
    fn rmsnorm_forward(
        &self,
        x: &Vec<f32>,
        shape: RowShape,
        weight: &Vec<f32>,
        eps: f32,
        y: &mut Vec<f32>,
        rstd: &mut Vec<f32>,
    ) {
        fits(
            "rmsnorm_forward",
            shape.check_rmsnorm_forward(x.len(), weight.len(), y.len(), rstd.len()),
        );
        let RowShape { rows, d } = shape;
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
        shape: RowShape,
        weight: &Vec<f32>,
        rstd: &Vec<f32>,
        grads: RmsNormGrads<&mut Vec<f32>>,
    ) {
        fits(
            "rmsnorm_backward",
            shape.check_rmsnorm_backward(
                dy.len(),
                x.len(),
                weight.len(),
                rstd.len(),
                grads.lens(|g| g.len()),
            ),
        );
        let RowShape { rows, d } = shape;
        norm::rmsnorm_backward(
            &dy[..rows * d],
            &x[..rows * d],
            d,
            weight,
            &rstd[..rows],
            &mut grads.dx[..rows * d],
            grads.dweight,
        );
    }

    fn modulate_forward(
        &self,
        x: &Vec<f32>,
        shape: ModShape,
        mods: &Vec<f32>,
        slots: ShiftScale,
        y: &mut Vec<f32>,
    ) {
        fits(
            "modulate_forward",
            shape.check_modulate_forward(x.len(), mods.len(), slots, y.len()),
        );
        modulate::modulate_forward(x, shape, mods, slots, y);
    }
    fn modulate_backward(
        &self,
        dy: &Vec<f32>,
        x: &Vec<f32>,
        shape: ModShape,
        mods: &Vec<f32>,
        slots: ShiftScale,
        grads: ModulateGrads<&mut Vec<f32>>,
    ) {
        fits(
            "modulate_backward",
            shape.check_modulate_backward(
                dy.len(),
                x.len(),
                mods.len(),
                slots,
                grads.lens(|g| g.len()),
            ),
        );
        modulate::modulate_backward(dy, x, shape, mods, slots, grads.map(|g| g.as_mut_slice()));
    }
    fn gated_add_forward(
        &self,
        x: &mut Vec<f32>,
        y: &Vec<f32>,
        shape: ModShape,
        mods: &Vec<f32>,
        gate: ModSlot,
    ) {
        fits(
            "gated_add_forward",
            shape.check_gated_add_forward(x.len(), y.len(), mods.len(), gate),
        );
        modulate::gated_add_forward(x, y, shape, mods, gate);
    }
    fn gated_add_backward(
        &self,
        dx: &Vec<f32>,
        y: &Vec<f32>,
        shape: ModShape,
        mods: &Vec<f32>,
        gate: ModSlot,
        grads: GatedAddGrads<&mut Vec<f32>>,
    ) {
        fits(
            "gated_add_backward",
            shape.check_gated_add_backward(
                dx.len(),
                y.len(),
                mods.len(),
                gate,
                grads.lens(|g| g.len()),
            ),
        );
        modulate::gated_add_backward(dx, y, shape, mods, gate, grads.map(|g| g.as_mut_slice()));
    }

    fn rope(
        &self,
        x: &mut Vec<f32>,
        shape: RopeShape,
        cos: &Vec<f32>,
        sin: &Vec<f32>,
        inverse: bool,
    ) {
        fits("rope", shape.check_buffers(x.len(), cos.len(), sin.len()));
        rope::rope_rotate(x, shape, cos, sin, inverse);
    }

    fn attention_forward(
        &self,
        qkv: Qkv<&Vec<f32>>,
        shape: AttnShape,
        out: &mut Vec<f32>,
        lse: &mut Vec<f32>,
    ) {
        attention::attention_forward(qkv.q, qkv.k, qkv.v, shape, out, lse);
    }
    fn attention_backward(
        &self,
        qkv: Qkv<&Vec<f32>>,
        out: &Vec<f32>,
        lse: &Vec<f32>,
        dout: &Vec<f32>,
        shape: AttnShape,
        dqkv: Qkv<&mut Vec<f32>>,
    ) {
        attention::attention_backward(
            qkv.map(|b| b.as_slice()),
            out,
            lse,
            dout,
            shape,
            dqkv.map(|b| b.as_mut_slice()),
        );
    }

    fn patchify(&self, x: &Vec<f32>, shape: PatchShape, order: PatchOrder, tokens: &mut Vec<f32>) {
        fits("patchify", shape.check_buffers(x.len(), tokens.len()));
        patch::patchify(x, shape, order, tokens);
    }
    fn unpatchify(
        &self,
        tokens: &Vec<f32>,
        shape: PatchShape,
        order: PatchOrder,
        x: &mut Vec<f32>,
    ) {
        fits("unpatchify", shape.check_buffers(x.len(), tokens.len()));
        patch::unpatchify(tokens, shape, order, x);
    }
}
