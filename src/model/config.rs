//! The Wan2.1 DiT configuration (method.md section 1).

use serde::{Deserialize, Serialize};

/// Text-to-video or image-to-video.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModelType {
    T2V,
    I2V,
}

/// Every size the model code needs. Patch size is always (1, 2, 2) and qk-norm and the
/// cross-attention norm are always on, as in every released Wan2.1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WanConfig {
    pub model_type: ModelType,
    /// Input channels: 16 (T2V) or 36 (I2V: 16 noisy + 4 mask + 16 first-frame latent).
    pub in_dim: usize,
    /// Output (latent) channels, 16.
    pub out_dim: usize,
    /// Model width D.
    pub dim: usize,
    pub ffn_dim: usize,
    /// Width of the timestep sinusoid, 256.
    pub freq_dim: usize,
    /// Width of the text encoder states, 4096 (umT5-XXL).
    pub text_dim: usize,
    /// Width of the CLIP image features for I2V, 1280; `None` for T2V.
    pub image_dim: Option<usize>,
    pub num_heads: usize,
    pub num_layers: usize,
    /// Epsilon of the block norms and q/k RMSNorms (1e-6).
    pub eps: f32,
    /// Text tokens the released models are trained with (512); informational.
    pub text_len: usize,
}

impl WanConfig {
    pub fn head_dim(&self) -> usize {
        self.dim / self.num_heads
    }

    fn released(model_type: ModelType, dim: usize, ffn_dim: usize, heads: usize, layers: usize) -> Self {
        WanConfig {
            model_type,
            in_dim: if model_type == ModelType::I2V { 36 } else { 16 },
            out_dim: 16,
            dim,
            ffn_dim,
            freq_dim: 256,
            text_dim: 4096,
            image_dim: (model_type == ModelType::I2V).then_some(1280),
            num_heads: heads,
            num_layers: layers,
            eps: 1e-6,
            text_len: 512,
        }
    }

    /// Wan2.1 T2V-1.3B.
    pub fn t2v_1_3b() -> Self {
        Self::released(ModelType::T2V, 1536, 8960, 12, 30)
    }

    /// Wan2.1 T2V-14B.
    pub fn t2v_14b() -> Self {
        Self::released(ModelType::T2V, 5120, 13824, 40, 40)
    }

    /// Wan2.1 I2V-14B (480p and 720p share the architecture).
    pub fn i2v_14b() -> Self {
        Self::released(ModelType::I2V, 5120, 13824, 40, 40)
    }
}
