//! Flow-matching noise levels and samplers (method.md section 2).
//!
//! - [`levels`]: training levels (`sigma = linspace(1, 0, 1001)` shifted, truncated timesteps)
//!   and how a level index is drawn.
//! - [`flow`]: training noise on backend buffers (`x_t`, the velocity target, the x0 estimate).
//! - [`grid`]: sampling grids (Wan2.1 reference, diffusers UniPC, diffusers Euler).
//! - [`euler`], [`unipc`]: the solvers' coefficients, pure scalar math on a grid.
//! - [`sampler`]: the rollout state machine on backend buffers, with
//!   [`Sampler::output_coefficient`] for PRFL's one-step backward.
//! - [`rng`]: the crate's seeded random source.
//!
//! # Sampling grids: Wan2.1 reference vs diffusers
//!
//! All grids shift with `s * sigma / (1 + (s - 1) * sigma)` and append a final sigma of 0; they
//! differ in where the unshifted points come from:
//!
//! | grid | unshifted points (f64) | first sigma | last nonzero sigma | timesteps |
//! |---|---|---|---|---|
//! | [`SamplingGrid::wan`] | `linspace(0.999, 0, n+1)[:-1]` | shift(0.999) (0.99980 at s = 5) | shift(0.999/n) | `trunc(1000 sigma)` |
//! | [`SamplingGrid::diffusers_unipc`] | `linspace(1, 1/1000, n+1)[:-1]` | `1 - 1e-6` | shift(1/1000 + (1 - 1/1000)/n) | `trunc(1000 sigma)` |
//! | [`SamplingGrid::diffusers_euler`] | `linspace(1, shift(1/1000), n)` | 1 | shift(shift(1/1000)) | `1000 sigma`, not truncated |
//!
//! - The Wan reference starts at `sigma_max = 0.999` (precisely float32(0.999), see
//!   [`grid::wan_sigma_max`]) and spaces its `n` points down towards 0; diffusers' UniPC starts at
//!   1 (lowered by 1e-6 to keep `ln(1 - sigma)` finite) and spaces them towards 1/1000, so the
//!   diffusers grid sits slightly higher everywhere. For n = 40, s = 5 every sigma differs and 25
//!   of the 40 timesteps do (Wan 999, 994, 989, 983, ..., 208, 113; diffusers 999, 994, 989,
//!   984, ..., 211, 117): a rollout on one grid does not reproduce the other. The solver is the
//!   same algorithm on both.
//! - diffusers' Euler scheduler shifts twice: its endpoints are already-shifted training sigmas
//!   and the interpolated points are shifted again, so its last nonzero sigma is about 0.024 at
//!   s = 5 (Wan's is about 0.12 at n = 40). It starts at exactly 1, which UniPC cannot use.
//!
//! PRFL uses the Wan grid with UniPC, 40 steps, shift 5 (method.md section 4).

pub(crate) mod bufops;
pub mod euler;
pub mod flow;
pub mod grid;
pub mod levels;
pub mod rng;
pub mod sampler;
pub mod unipc;

pub use flow::{add_noise, velocity_target, x0_estimate};
pub use grid::SamplingGrid;
pub use levels::{LevelDistribution, NoiseLevel, TrainingLevels};
pub use rng::Rng;
pub use sampler::{Sampler, SolverKind};
