//! Flow-matching training noise (method.md section 2) on backend buffers:
//! `x_t = (1 - sigma) x0 + sigma eps`, target `v = eps - x0`, and the x0 estimate
//! `x0 = x_t - sigma v` (used for scoring and by the UniPC solver).
//!
//! `sigma` is the exact shifted level ([`super::NoiseLevel::sigma`]), never the truncated
//! timestep / 1000. All buffers hold the same number of elements; one `sigma` applies to the whole
//! buffer, so a batch whose samples sit at different levels is noised one sample at a time.

use super::bufops::clone_buf;
use crate::backend::Backend;

/// `x_t = (1 - sigma) * x0 + sigma * eps` into a new buffer.
pub fn add_noise<B: Backend>(backend: &B, x0: &B::Buf, eps: &B::Buf, sigma: f32) -> B::Buf {
    assert_eq!(
        backend.len(x0),
        backend.len(eps),
        "x0 and noise lengths differ"
    );
    let mut out = clone_buf(backend, x0);
    backend.scale(1.0 - sigma, &mut out);
    backend.axpy(sigma, eps, &mut out);
    out
}

/// The velocity the network is trained to predict: `v = eps - x0`.
pub fn velocity_target<B: Backend>(backend: &B, x0: &B::Buf, eps: &B::Buf) -> B::Buf {
    assert_eq!(
        backend.len(x0),
        backend.len(eps),
        "x0 and noise lengths differ"
    );
    let mut out = clone_buf(backend, eps);
    backend.axpy(-1.0, x0, &mut out);
    out
}

/// The clean-sample estimate from a velocity prediction: `x0 = x_t - sigma * v`.
pub fn x0_estimate<B: Backend>(backend: &B, x_t: &B::Buf, v: &B::Buf, sigma: f32) -> B::Buf {
    assert_eq!(
        backend.len(x_t),
        backend.len(v),
        "x_t and velocity lengths differ"
    );
    let mut out = clone_buf(backend, x_t);
    backend.axpy(-sigma, v, &mut out);
    out
}
