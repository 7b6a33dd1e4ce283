//! PRFL: the gradient of one seeded PRFL step against finite differences (rollout held fixed, as
//! the method stops gradients there), LoRA-only training touching only adapters, and on a
//! synthetic task the mean reward of freshly sampled latents rising over a short run.

use prfl::backend::cpu::Cpu;
use prfl::backend::Backend;
use prfl::finetune::prfl::{PrflTrainConfig, PrflTrainer};
use prfl::finetune::sample::{sample, Cond, SamplingPlan};
use prfl::model::init::random_weights;
use prfl::model::lora::{init_lora, LoraConfig};
use prfl::model::params::ParamData;
use prfl::model::wan::{VideoShape, WanModel};
use prfl::model::{ModelType, WanConfig};
use prfl::optim::AdamWConfig;
use prfl::reward::head::init_head_params;
use prfl::reward::model::{RewardModel, RewardModelConfig};
use prfl::schedule::rng::Rng;
use prfl::schedule::SolverKind;
use prfl::tensor::Storage;
use prfl::testutil::tiny_wan;

fn gen_cfg() -> WanConfig {
    tiny_wan(ModelType::T2V, 16, 2, 2, 8)
}

fn reward(seed: u64) -> RewardModel<Cpu> {
    let g = gen_cfg();
    let cfg = RewardModelConfig {
        blocks: 1,
        trainable_blocks: None,
        heads: 2,
        queries: 1,
        hidden: [16, 8],
    };
    let head = init_head_params(g.dim, cfg.heads, cfg.queries, cfg.hidden, seed);
    RewardModel::from_tensors(&Cpu, g.clone(), &random_weights(&g, seed), &head, cfg, None).unwrap()
}

const SHAPE: VideoShape = VideoShape {
    batch: 2,
    frames: 3,
    height: 2,
    width: 4,
};
const TEXT_LEN: usize = 3;

fn text() -> Vec<f32> {
    let mut t = vec![0.0; SHAPE.batch * TEXT_LEN * 8];
    Rng::seed_from_u64(3).fill_normal(&mut t);
    t
}

fn cond(text: &Vec<f32>) -> Cond<'_, Cpu> {
    Cond {
        text,
        text_len: TEXT_LEN,
        y: None,
        clip: None,
        image_len: 0,
    }
}

fn noise(seed: u64) -> Vec<f32> {
    let mut n = vec![0.0; SHAPE.batch * 16 * SHAPE.voxels()];
    Rng::seed_from_u64(seed).fill_normal(&mut n);
    n
}

fn cfg(solver: SolverKind) -> PrflTrainConfig {
    PrflTrainConfig {
        steps: 6,
        solver,
        sft: false,
        recompute: false,
        // A margin above every reachable score keeps the hinge active, so the loss is smooth.
        margin: 2.0,
        optim: AdamWConfig {
            lr: 1e-3,
            ..PrflTrainConfig::default().optim
        },
        ..PrflTrainConfig::default()
    }
}

fn perturb(trainer: &mut PrflTrainer<Cpu>, id: usize, i: usize, delta: f32) {
    match trainer.generator.params.data_mut(id) {
        ParamData::Vector(v) => v[i] += delta,
        ParamData::Matrix(w) => {
            let Storage::F32(d) = &mut w.data else {
                panic!("f32 weights expected")
            };
            d[i] += delta;
        }
    }
}

#[test]
fn prfl_step_gradient_matches_finite_differences() {
    for (solver, m) in [
        (SolverKind::UniPc, 3),
        (SolverKind::Euler, 2),
        (SolverKind::UniPc, 0),
    ] {
        let g = gen_cfg();
        let generator = WanModel::new(&Cpu, g.clone(), &random_weights(&g, 1), None).unwrap();
        let mut tr = PrflTrainer::new(&Cpu, generator, reward(2), cfg(solver)).unwrap();
        let t = text();
        let c = cond(&t);
        let (x_m, sampler) = tr
            .rollout(&Cpu, SHAPE, &c, Cpu.upload(&noise(4)), m)
            .unwrap();
        let (loss, _, tape_bytes) = tr
            .prfl_loss_at(&Cpu, SHAPE, &c, &x_m, sampler, true)
            .unwrap();
        assert!(loss > 0.0 && tape_bytes > 0);
        let h = 1e-2f32;
        for name in [
            "blocks.1.self_attn.q.weight",
            "blocks.0.ffn.2.bias",
            "head.head.weight",
            "time_projection.1.weight",
            "blocks.0.modulation",
        ] {
            let id = tr.generator.params.id(name).unwrap();
            let analytic = Cpu.download(tr.grads().get(id).unwrap());
            let scale = analytic.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            assert!(scale > 0.0, "{name}: zero gradient");
            for i in [0, analytic.len() / 3, analytic.len() - 1] {
                // The rollout runs with the unperturbed weights (the method stops gradients
                // there); only the step at m sees the perturbation.
                let at = |delta: f32, tr: &mut PrflTrainer<Cpu>| {
                    let (x_m, sampler) = tr
                        .rollout(&Cpu, SHAPE, &c, Cpu.upload(&noise(4)), m)
                        .unwrap();
                    perturb(tr, id, i, delta);
                    let l = x_m_loss(tr, &c, x_m, sampler);
                    perturb(tr, id, i, -delta);
                    l
                };
                let num = ((at(h, &mut tr) - at(-h, &mut tr)) / (2.0 * h as f64)) as f32;
                assert!(
                    (num - analytic[i]).abs() <= 3e-2 * scale + 1e-6,
                    "{solver:?} m={m} {name}[{i}]: analytic {} vs numeric {num} (scale {scale})",
                    analytic[i]
                );
            }
        }
    }
}

fn x_m_loss(
    tr: &mut PrflTrainer<Cpu>,
    c: &Cond<'_, Cpu>,
    x_m: Vec<f32>,
    sampler: prfl::schedule::Sampler<Cpu>,
) -> f64 {
    tr.prfl_loss_at(&Cpu, SHAPE, c, &x_m, sampler, false)
        .unwrap()
        .0
}

#[test]
fn lora_prfl_trains_only_adapters() {
    let g = gen_cfg();
    let base = random_weights(&g, 1);
    let mut generator =
        WanModel::new(&Cpu, g.clone(), &base, Some(prfl::tensor::DType::BF16)).unwrap();
    let lora = LoraConfig {
        rank: 2,
        alpha: 4.0,
        ..LoraConfig::default()
    };
    generator
        .attach_lora(&Cpu, &lora, &init_lora(&g, &lora, 5).unwrap())
        .unwrap();
    let mut tr = PrflTrainer::new(
        &Cpu,
        generator,
        reward(2),
        PrflTrainConfig {
            lora: Some(lora),
            ..cfg(SolverKind::UniPc)
        },
    )
    .unwrap();
    let before: Vec<_> = (0..tr.generator.params.len())
        .map(|i| tr.generator.params.to_host(&Cpu, i))
        .collect();
    let t = text();
    for _ in 0..2 {
        let s = tr.micro_step(&Cpu, SHAPE, &cond(&t), None).unwrap();
        assert!(s.update.is_some_and(|u| !u.skipped_nonfinite));
    }
    for (i, b) in before.iter().enumerate() {
        let name = tr.generator.params.name(i).to_string();
        let after = tr.generator.params.to_host(&Cpu, i);
        if name.contains("lora_B") {
            assert_ne!(&after, b, "{name} did not train");
        } else if !name.contains("lora_") {
            assert_eq!(&after, b, "{name} moved under LoRA training");
        }
    }
    assert_eq!(tr.trainable_tensors(&Cpu).len(), 2 * 8 * g.num_layers);
}

#[test]
fn prfl_raises_the_reward_of_fresh_samples() {
    let g = gen_cfg();
    let generator = WanModel::new(&Cpu, g.clone(), &random_weights(&g, 7), None).unwrap();
    let mut tr = PrflTrainer::new(
        &Cpu,
        generator,
        reward(8),
        PrflTrainConfig {
            optim: AdamWConfig {
                lr: 2e-3,
                ..cfg(SolverKind::UniPc).optim
            },
            ..cfg(SolverKind::UniPc)
        },
    )
    .unwrap();
    let t = text();
    let plan = SamplingPlan::wan(6, 5.0, SolverKind::UniPc).unwrap();
    // Mean reward of fresh samples, scored clean (t = 0), over a fixed set of seeds.
    let mean_reward = |tr: &PrflTrainer<Cpu>| -> f64 {
        let mut total = 0.0;
        for seed in 100..104 {
            let x = sample(
                &Cpu,
                &tr.generator,
                SHAPE,
                &cond(&t),
                None,
                &plan,
                Cpu.upload(&noise(seed)),
            )
            .unwrap();
            let zeros = vec![0.0; SHAPE.batch];
            let s = tr
                .reward
                .score(&Cpu, &cond(&t).inputs(SHAPE, &x, &zeros))
                .unwrap();
            total += s.iter().map(|&v| v as f64).sum::<f64>() / s.len() as f64;
        }
        total / 4.0
    };
    let before = mean_reward(&tr);
    for _ in 0..30 {
        tr.micro_step(&Cpu, SHAPE, &cond(&t), None).unwrap();
    }
    let after = mean_reward(&tr);
    eprintln!("mean reward of fresh samples: {before:.4} -> {after:.4}");
    assert!(
        after > before + 0.05,
        "reward rose only from {before:.4} to {after:.4}"
    );
}
