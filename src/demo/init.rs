//! The initialisation Wan2.1 trains from (its `init_weights`), for the demo's generator.
//!
//! [`crate::model::init::random_weights`] deliberately gives every parameter non-trivial values
//! (what parity tests need), but a model trained from it starts with a random output of about
//! twice the target's scale and random residual gates, and learns several times slower. Wan2.1
//! initialises linear layers xavier-uniform with zero biases, the text and time embeddings
//! normal(0, 0.02), the modulation tables `randn / sqrt(dim)`, norms at one, and the output
//! projection at **zero**, so a fresh model predicts zero velocity and every block starts as a
//! small residual correction.

use std::collections::BTreeMap;

use crate::model::names::canonical_params;
use crate::model::WanConfig;
use crate::schedule::Rng;
use crate::tensor::HostTensor;

/// Parameters of a Wan model as Wan2.1's `init_weights` leaves them (deterministic in `seed`).
pub fn wan_init(cfg: &WanConfig, seed: u64) -> BTreeMap<String, HostTensor> {
    let mut rng = Rng::seed_from_u64(seed);
    canonical_params(cfg)
        .into_iter()
        .map(|p| {
            let n = p.numel();
            let name = p.name.as_str();
            let mut data = vec![0.0f32; n];
            let embedding =
                name.starts_with("text_embedding.") || name.starts_with("time_embedding.");
            if name.ends_with("modulation") {
                rng.fill_normal(&mut data);
                let s = 1.0 / (cfg.dim as f32).sqrt();
                data.iter_mut().for_each(|v| *v *= s);
            } else if name.contains("norm") {
                // RMSNorm and LayerNorm weights one, LayerNorm biases zero.
                if name.ends_with(".weight") {
                    data.fill(1.0);
                }
            } else if name == "head.head.weight" || name.ends_with(".bias") {
                // Zero output projection and zero biases.
            } else if embedding {
                rng.fill_normal(&mut data);
                data.iter_mut().for_each(|v| *v *= 0.02);
            } else {
                // Linear (and the patch embedding flattened to [out, in]): xavier uniform.
                let fan_out = p.shape[0];
                let fan_in = n / fan_out;
                let bound = (6.0 / (fan_in + fan_out) as f32).sqrt();
                data.iter_mut()
                    .for_each(|v| *v = bound * (2.0 * rng.uniform_f32() - 1.0));
            }
            // `data` holds `n = p.numel()` values, the product of `p.shape`.
            let t = HostTensor::from_f32(p.shape, data).expect("shape matches data");
            (p.name, t)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelType;

    #[test]
    fn the_head_starts_at_zero_and_linears_are_bounded() {
        let cfg = WanConfig {
            model_type: ModelType::T2V,
            in_dim: 4,
            out_dim: 4,
            dim: 16,
            ffn_dim: 32,
            freq_dim: 16,
            text_dim: 8,
            image_dim: None,
            num_heads: 2,
            num_layers: 1,
            eps: 1e-6,
            text_len: 4,
        };
        let p = wan_init(&cfg, 3);
        let f32s = |name: &str| p[name].to_f32();
        assert!(f32s("head.head.weight").iter().all(|&v| v == 0.0));
        assert!(f32s("blocks.0.norm3.weight").iter().all(|&v| v == 1.0));
        let bound = (6.0f32 / 32.0).sqrt();
        let q = f32s("blocks.0.self_attn.q.weight");
        assert!(q.iter().all(|v| v.abs() <= bound) && q.iter().any(|&v| v != 0.0));
        assert_eq!(p.len(), canonical_params(&cfg).len());
    }
}
