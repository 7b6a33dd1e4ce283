//! Interleaved-pair rotary embedding. (STUB: to be implemented.)

#[allow(clippy::too_many_arguments)]
pub fn rope_rotate(x: &mut [f32], batch: usize, tokens: usize, heads: usize, head_dim: usize, cos: &[f32], sin: &[f32], inverse: bool) {
    todo!()
}
