//! LayerNorm and RMSNorm, forward and backward. (STUB: to be implemented.)

/// Rows of width `d`; `y = (x - mean) * rstd (* weight + bias)`; saves mean, rstd per row.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward(x: &[f32], d: usize, weight: Option<&[f32]>, bias: Option<&[f32]>, eps: f32, y: &mut [f32], mean: &mut [f32], rstd: &mut [f32]) {
    todo!()
}
/// Overwrites dx; accumulates dweight, dbias.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(dy: &[f32], x: &[f32], d: usize, weight: Option<&[f32]>, mean: &[f32], rstd: &[f32], dx: &mut [f32], dweight: Option<&mut [f32]>, dbias: Option<&mut [f32]>) {
    todo!()
}
/// `y = x * rstd * weight`, `rstd = 1/sqrt(mean(x^2) + eps)`.
pub fn rmsnorm_forward(x: &[f32], d: usize, weight: &[f32], eps: f32, y: &mut [f32], rstd: &mut [f32]) {
    todo!()
}
/// Overwrites dx; accumulates dweight.
pub fn rmsnorm_backward(dy: &[f32], x: &[f32], d: usize, weight: &[f32], rstd: &[f32], dx: &mut [f32], dweight: &mut [f32]) {
    todo!()
}
