//! The flow-matching Euler solver: `x_{i+1} = x_i + (sigma_{i+1} - sigma_i) * v_i`.
//!
//! This is diffusers' `FlowMatchEulerDiscreteScheduler.step` (deterministic branch), and exactly
//! what order-1 UniPC reduces to on a flow grid. The step size is formed in f32 from the grid's
//! f32 sigmas, as diffusers forms `dt = sigma_next - sigma` from its float32 tensor.

/// `d x_{i+1} / d v_i = sigma_{i+1} - sigma_i` (the update is `x + dt * v`).
pub fn euler_dt(sigmas: &[f32], i: usize) -> f32 {
    sigmas[i + 1] - sigmas[i]
}
