//! The per-channel latent normalisation between the VAE and the DiT: diffusers' Wan pipelines
//! feed the DiT `(mean - latents_mean) / latents_std` and decode `z * latents_std +
//! latents_mean`, with the two lists from the VAE's `config.json`.

use super::config::VaeConfig;
use super::video::Video;

/// In place: `z[c] = (z[c] - latents_mean[c]) / latents_std[c]`.
pub fn normalise(z: &mut Video, cfg: &VaeConfig) {
    let n = z.t * z.plane();
    for (c, chunk) in z.data.chunks_mut(n.max(1)).enumerate().take(z.c) {
        let (m, s) = (cfg.latents_mean[c], cfg.latents_std[c]);
        chunk.iter_mut().for_each(|v| *v = (*v - m) / s);
    }
}

/// In place: `z[c] = z[c] * latents_std[c] + latents_mean[c]`.
pub fn denormalise(z: &mut Video, cfg: &VaeConfig) {
    let n = z.t * z.plane();
    for (c, chunk) in z.data.chunks_mut(n.max(1)).enumerate().take(z.c) {
        let (m, s) = (cfg.latents_mean[c], cfg.latents_std[c]);
        chunk.iter_mut().for_each(|v| *v = *v * s + m);
    }
}
