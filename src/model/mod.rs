//! The Wan2.1 video DiT: configuration, checkpoint names and loading, forward and backward.

pub mod block;
pub mod checkpoint;
pub mod config;
pub mod embed;
pub mod host;
pub mod init;
pub mod layers;
pub mod lora;
pub mod names;
pub mod params;
pub mod rope;
pub mod wan;

pub use config::{ModelType, WanConfig};
