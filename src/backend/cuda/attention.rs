//! Flash attention on the GPU (forward and backward).
