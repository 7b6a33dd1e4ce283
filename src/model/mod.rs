//! The Wan2.1 video DiT: configuration, checkpoint names and loading, forward and backward.

pub mod config;

pub use config::{ModelType, WanConfig};
