//! Element-wise, norm, modulation, RoPE, patch, cast and optimiser kernels.
