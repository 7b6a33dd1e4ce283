//! Random initialisation of a Wan model, for benchmarks, tests and the built-in demo. Every
//! parameter gets non-trivial values (the released init zeroes biases and the head, which would
//! hide bugs and make a randomly initialised model output zeros).

use std::collections::BTreeMap;

use super::config::WanConfig;
use super::names::canonical_params;
use crate::schedule::rng::Rng;
use crate::tensor::HostTensor;

/// Gaussian weights with std `1/sqrt(fan_in)`, biases and modulation tables with std 0.02 and
/// 0.1, norm weights around 1.
pub fn random_weights(cfg: &WanConfig, seed: u64) -> BTreeMap<String, HostTensor> {
    let mut rng = Rng::seed_from_u64(seed);
    canonical_params(cfg)
        .into_iter()
        .map(|p| {
            let n = p.numel();
            let (base, std) = if p.name.contains("norm") && p.name.ends_with(".weight") {
                (1.0, 0.1)
            } else if p.name.ends_with("modulation") {
                (0.0, 0.1)
            } else if p.shape.len() >= 2 {
                (0.0, 1.0 / ((n / p.shape[0]) as f32).sqrt())
            } else {
                (0.0, 0.02)
            };
            let mut data = vec![0.0f32; n];
            rng.fill_normal(&mut data);
            data.iter_mut().for_each(|v| *v = base + *v * std);
            // `data` holds `n = p.numel()` values, the product of `p.shape`.
            let t = HostTensor::from_f32(p.shape, data).expect("shape matches data");
            (p.name, t)
        })
        .collect()
}
