//! Adaptive modulation (shift/scale) and gated residuals. (STUB: to be implemented.)
use crate::backend::ModSlot;

#[allow(clippy::too_many_arguments)]
pub fn modulate_forward(x: &[f32], batch: usize, rows: usize, d: usize, mods: &[f32], shift: ModSlot, scale: ModSlot, y: &mut [f32]) {
    todo!()
}
#[allow(clippy::too_many_arguments)]
pub fn modulate_backward(dy: &[f32], x: &[f32], batch: usize, rows: usize, d: usize, mods: &[f32], shift: ModSlot, scale: ModSlot, dx: &mut [f32], dmods: &mut [f32]) {
    todo!()
}
#[allow(clippy::too_many_arguments)]
pub fn gated_add_forward(x: &mut [f32], y: &[f32], batch: usize, rows: usize, d: usize, mods: &[f32], gate: ModSlot) {
    todo!()
}
#[allow(clippy::too_many_arguments)]
pub fn gated_add_backward(dx: &[f32], y: &[f32], batch: usize, rows: usize, d: usize, mods: &[f32], gate: ModSlot, dy: &mut [f32], dmods: &mut [f32]) {
    todo!()
}
