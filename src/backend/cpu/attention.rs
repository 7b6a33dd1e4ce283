//! Tiled attention with an online softmax. (STUB: to be implemented.)
use crate::backend::AttnShape;

pub fn attention_forward(q: &[f32], k: &[f32], v: &[f32], shape: AttnShape, out: &mut [f32], lse: &mut [f32]) {
    todo!()
}
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(q: &[f32], k: &[f32], v: &[f32], out: &[f32], lse: &[f32], dout: &[f32], shape: AttnShape, dq: &mut [f32], dk: &mut [f32], dv: &mut [f32]) {
    todo!()
}
