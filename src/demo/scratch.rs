//! TEMPORARY experiments (removed before hand-off).
#![allow(dead_code, unused)]
use super::*;
use crate::backend::cpu::Cpu;
use crate::backend::Backend;
use crate::schedule::Rng;
use crate::synthetic::*;
use crate::reward::dataset::BatchLatents;

fn env<T: std::str::FromStr>(k: &str, d: T) -> T {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

#[test]
#[ignore]
fn scratch_real_gif() {
    let mut cfg = DemoConfig::default();
    cfg.world.noise_std = env("NOISE", cfg.world.noise_std);
    let world = cfg.world.world();
    let b = clip_batch(&world, &mut Rng::seed_from_u64(1), 6, 0.5);
    let BatchLatents::Clips { latents, labels } = &b.latents else { panic!() };
    println!("labels {labels:?}");
    gif::write_gif(std::path::Path::new("/tmp/demo/real.gif"), latents, world.shape(), 250).unwrap();
    let q = world::measure(&world, latents);
    println!("{:?}", q.per_clip);
}
