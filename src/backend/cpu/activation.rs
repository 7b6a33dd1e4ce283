//! Elementwise kernels: SiLU, GELU (tanh and erf), axpy, broadcast add. (STUB: to be implemented.)

pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    todo!()
}
/// `x *= alpha`.
pub fn scale(alpha: f32, x: &mut [f32]) {
    todo!()
}
/// `out[b, k*w + j] = x[b, j] + table[k*w + j]` for `x: [batch, w]`, `table: [k*w]`.
pub fn broadcast_add(x: &[f32], table: &[f32], batch: usize, w: usize, k: usize, out: &mut [f32]) {
    todo!()
}
/// `dx[b, j] += sum_k dout[b, k*w + j]`, `dtable += sum_b dout[b, :]` (both accumulate).
pub fn broadcast_add_backward(dout: &[f32], batch: usize, w: usize, k: usize, dx: &mut [f32], dtable: &mut [f32]) {
    todo!()
}
pub fn silu_forward(x: &[f32], y: &mut [f32]) {
    todo!()
}
/// Overwrites dx.
pub fn silu_backward(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    todo!()
}
pub fn gelu_tanh_forward(x: &[f32], y: &mut [f32]) {
    todo!()
}
pub fn gelu_tanh_backward(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    todo!()
}
pub fn gelu_erf_forward(x: &[f32], y: &mut [f32]) {
    todo!()
}
pub fn gelu_erf_backward(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    todo!()
}
