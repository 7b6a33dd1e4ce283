//! LoRA adapters: a fresh adapter changes nothing, adapter gradients match finite differences with
//! the base frozen in bf16, and merging reproduces the adapted model in a checkpoint the loader
//! opens.

use std::collections::BTreeMap;

use prfl::backend::cpu::Cpu;
use prfl::backend::Backend;
use prfl::model::checkpoint::{save_checkpoint, Checkpoint};
use prfl::model::init::random_weights;
use prfl::model::lora::{init_lora, merge_lora, to_peft_names, LoraConfig};
use prfl::model::names::Layout;
use prfl::model::params::Grads;
use prfl::model::wan::{Inputs, Mode, VideoShape, WanModel};
use prfl::model::{ModelType, WanConfig};
use prfl::tensor::{DType, HostTensor};
use prfl::testutil::{max_rel_err, tiny_wan, TestRng};

fn cfg() -> WanConfig {
    tiny_wan(ModelType::T2V, 16, 2, 2, 8)
}

fn lora_cfg() -> LoraConfig {
    LoraConfig {
        rank: 3,
        alpha: 6.0,
        ..LoraConfig::default()
    }
}

struct Data {
    x: Vec<f32>,
    ctx: Vec<f32>,
    t: Vec<f32>,
    cot: Vec<f32>,
    shape: VideoShape,
}

fn data() -> Data {
    let mut rng = TestRng::new(3);
    let shape = VideoShape {
        batch: 1,
        frames: 2,
        height: 2,
        width: 4,
    };
    Data {
        x: rng.vec(16 * shape.voxels()),
        ctx: rng.vec(4 * 8),
        t: vec![640.0],
        cot: rng.vec(16 * shape.voxels()),
        shape,
    }
}

fn output(model: &WanModel<Cpu>, d: &Data) -> Vec<f32> {
    let inp = Inputs::<Cpu> {
        shape: d.shape,
        x: &d.x,
        t: &d.t,
        context: &d.ctx,
        text_len: 4,
        y: None,
        clip: None,
        image_len: 0,
    };
    model.forward(&Cpu, &inp, Mode::Inference).unwrap().0
}

/// Adapters with a non-zero B, as after some training.
fn trained_adapters(seed: u64) -> BTreeMap<String, HostTensor> {
    let mut rng = TestRng::new(seed);
    init_lora(&cfg(), &lora_cfg(), seed)
        .unwrap()
        .into_iter()
        .map(|(k, t)| {
            let data = if k.ends_with("lora_B.weight") {
                rng.vec(t.numel()).iter().map(|v| v * 0.3).collect()
            } else {
                t.to_f32()
            };
            (k, HostTensor::from_f32(t.shape.clone(), data).unwrap())
        })
        .collect()
}

#[test]
fn fresh_adapters_leave_the_model_unchanged() {
    let base = random_weights(&cfg(), 1);
    let d = data();
    let plain = WanModel::new(&Cpu, cfg(), &base, None).unwrap();
    let mut adapted = WanModel::new(&Cpu, cfg(), &base, None).unwrap();
    adapted
        .attach_lora(
            &Cpu,
            &lora_cfg(),
            &init_lora(&cfg(), &lora_cfg(), 9).unwrap(),
        )
        .unwrap();
    assert_eq!(output(&plain, &d), output(&adapted, &d));
}

#[test]
fn adapter_gradients_match_finite_differences_with_a_frozen_bf16_base() {
    let base = random_weights(&cfg(), 2);
    let adapters = trained_adapters(4);
    let d = data();
    let build = |ad: &BTreeMap<String, HostTensor>| {
        let mut m = WanModel::new(&Cpu, cfg(), &base, Some(DType::BF16)).unwrap();
        m.attach_lora(&Cpu, &lora_cfg(), ad).unwrap();
        m
    };
    let model = build(&adapters);
    let inp = Inputs::<Cpu> {
        shape: d.shape,
        x: &d.x,
        t: &d.t,
        context: &d.ctx,
        text_len: 4,
        y: None,
        clip: None,
        image_len: 0,
    };
    let (_, tape) = model.forward(&Cpu, &inp, Mode::Train).unwrap();
    let mut grads = Grads::new(&Cpu, &model.params, |n| n.contains(".lora_"));
    model
        .backward(&Cpu, &tape.unwrap(), &d.cot, &mut grads)
        .unwrap();
    // Only adapters are trainable.
    for id in 0..model.params.len() {
        assert_eq!(
            grads.get(id).is_some(),
            model.params.name(id).contains(".lora_")
        );
    }
    let loss = |m: &WanModel<Cpu>| -> f64 {
        output(m, &d)
            .iter()
            .zip(&d.cot)
            .map(|(a, b)| *a as f64 * *b as f64)
            .sum()
    };
    let h = 1e-2f32;
    for name in [
        "blocks.0.self_attn.q.lora_A.weight",
        "blocks.1.cross_attn.o.lora_B.weight",
        "blocks.1.self_attn.v.lora_B.weight",
    ] {
        let id = model.params.id(name).unwrap();
        let analytic = Cpu.download(grads.get(id).unwrap());
        let scale = analytic.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(scale > 0.0, "{name}: zero gradient");
        for i in [0, analytic.len() / 2, analytic.len() - 1] {
            let f = |delta: f32| {
                let mut ad = adapters.clone();
                let t = &adapters[name];
                let mut v = t.to_f32();
                v[i] += delta;
                ad.insert(
                    name.to_string(),
                    HostTensor::from_f32(t.shape.clone(), v).unwrap(),
                );
                loss(&build(&ad))
            };
            let num = ((f(h) - f(-h)) / (2.0 * h as f64)) as f32;
            assert!(
                (num - analytic[i]).abs() <= 2e-2 * scale + 1e-4,
                "{name}[{i}]: analytic {} vs numeric {num}",
                analytic[i]
            );
        }
    }
}

#[test]
fn merged_checkpoint_reproduces_the_adapted_model() {
    let base = random_weights(&cfg(), 5);
    let adapters = trained_adapters(6);
    let d = data();
    let mut adapted = WanModel::new(&Cpu, cfg(), &base, None).unwrap();
    adapted.attach_lora(&Cpu, &lora_cfg(), &adapters).unwrap();
    let merged = merge_lora(&base, &adapters, &lora_cfg()).unwrap();
    let dir = std::env::temp_dir().join(format!("prfl-lora-merge-{}", std::process::id()));
    save_checkpoint(&merged, &cfg(), Layout::Original, &dir, None).unwrap();
    let ckpt = Checkpoint::open(&dir).unwrap();
    let reloaded =
        WanModel::new(&Cpu, ckpt.config().clone(), &ckpt.load_all().unwrap(), None).unwrap();
    let err = max_rel_err(&output(&reloaded, &d), &output(&adapted, &d));
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        err < 1e-5,
        "merged model differs from the adapted one by {err:e}"
    );

    let peft = to_peft_names(&adapters);
    assert!(
        peft.contains_key("transformer.blocks.0.attn1.to_q.lora_A.weight"),
        "{:?}",
        peft.keys().next()
    );
    assert!(peft.contains_key("transformer.blocks.1.attn2.to_out.0.lora_B.weight"));
    assert_eq!(peft.len(), adapters.len());
}
