//! Assembling the samples a step took from the queue into the trainers' batch layouts.

use super::config::SampleSizes;
use super::queue::Taken;
use crate::reward::dataset::{Batch, BatchLatents, SampleKind};

/// A reward batch (`[B, ...]` arrays) from samples of one kind.
pub fn reward_batch(taken: &Taken<'_>, kind: SampleKind, sizes: &SampleSizes) -> Batch {
    let b = taken.len();
    let mut text = Vec::with_capacity(b * sizes.text);
    let latents = match kind {
        SampleKind::Clip => {
            let mut latents = Vec::with_capacity(b * sizes.latent);
            let mut labels = Vec::with_capacity(b);
            for s in taken.iter() {
                debug_assert_eq!(s.kind, kind);
                latents.extend_from_slice(&s.latent);
                labels.push(s.label);
                text.extend_from_slice(&s.text);
            }
            BatchLatents::Clips { latents, labels }
        }
        SampleKind::Pair => {
            let mut win = Vec::with_capacity(b * sizes.latent);
            let mut lose = Vec::with_capacity(b * sizes.latent);
            for s in taken.iter() {
                debug_assert_eq!(s.kind, kind);
                win.extend_from_slice(&s.latent);
                lose.extend_from_slice(&s.lose);
                text.extend_from_slice(&s.text);
            }
            BatchLatents::Pairs { win, lose }
        }
    };
    Batch {
        indices: (0..b).collect(),
        shape: sizes.latent_shape,
        latents,
        text,
        text_len: sizes.text_len,
        text_dim: sizes.text_dim,
        i2v: None,
    }
}

/// What a PRFL step needs from its samples.
pub struct PrflBatch {
    /// Text states `[B, L, D]`: the prompts the rollout is conditioned on.
    pub text: Vec<f32>,
    /// Clean latents `[B, C, F, H, W]` for the interleaved flow-matching (SFT) step: pair
    /// winners and clips labelled good. `None` when any sample is a clip labelled bad, as
    /// `prfl finetune` does: the SFT step must not pull the generator towards bad clips.
    pub x0: Option<Vec<f32>>,
}

pub fn prfl_batch(taken: &Taken<'_>, sizes: &SampleSizes) -> PrflBatch {
    let b = taken.len();
    let mut text = Vec::with_capacity(b * sizes.text);
    let mut x0 = Some(Vec::with_capacity(b * sizes.latent));
    for s in taken.iter() {
        text.extend_from_slice(&s.text);
        let good = s.kind == SampleKind::Pair || s.label == 1.0;
        match (&mut x0, good) {
            (Some(x), true) => x.extend_from_slice(&s.latent),
            _ => x0 = None,
        }
    }
    PrflBatch { text, x0 }
}
