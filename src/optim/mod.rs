//! Optimisers and training checkpoints.
