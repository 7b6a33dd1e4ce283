//! AdamW and training checkpoints: agreement with torch (`clip_grad_norm_` + `torch.optim.AdamW`)
//! and with a textbook f64 AdamW, accumulation averaging, clipping, non-finite skipping, fp32
//! masters under bf16 storage, bit-identical resume through a checkpoint file, and the file's
//! failure modes (validation, truncation, corruption, atomic replacement).

use std::collections::BTreeMap;
use std::fs;

use prfl::backend::cpu::Cpu;
use prfl::model::params::{Grads, ParamStore};
use prfl::optim::{
    load_training_checkpoint, save_training_checkpoint, AdamW, AdamWConfig, TrainingKind,
    TrainingMeta, FORMAT,
};
use prfl::safetensors::write_safetensors;
use prfl::schedule::rng::Rng;
use prfl::tensor::{DType, HostTensor, Storage};
use prfl::testutil::TempDir;
use prfl::testutil::TestRng;
use prfl::Error;
use serde_json::json;

fn t(shape: &[usize], data: &[f32]) -> HostTensor {
    HostTensor::from_f32(shape.to_vec(), data.to_vec()).unwrap()
}

/// Two matrices (`w.weight`, `h.weight`), a vector (`b.bias`) and a frozen matrix.
fn small_model() -> BTreeMap<String, HostTensor> {
    [
        ("w.weight", t(&[2, 3], &[0.5, -0.25, 1.0, 0.125, 2.0, -1.5])),
        ("b.bias", t(&[3], &[0.1, -0.2, 0.3])),
        ("h.weight", t(&[1, 3], &[1.5, -0.75, 0.25])),
        ("frozen.weight", t(&[2, 2], &[1.0, 2.0, 3.0, 4.0])),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn setup(
    host: &BTreeMap<String, HostTensor>,
    dtype: Option<DType>,
) -> (ParamStore<Cpu>, Grads<Cpu>) {
    let params = ParamStore::from_host(&Cpu, host, dtype);
    let grads = Grads::new(&Cpu, &params, |n| !n.starts_with("frozen"));
    (params, grads)
}

fn set_grad(params: &ParamStore<Cpu>, grads: &mut Grads<Cpu>, name: &str, g: &[f32]) {
    let buf = grads.get_mut(params.id(name).unwrap()).unwrap();
    buf.copy_from_slice(g);
}

fn values(params: &ParamStore<Cpu>, name: &str) -> Vec<f32> {
    params.to_host(&Cpu, params.id(name).unwrap()).to_f32()
}

fn assert_close(what: &str, got: &[f32], want: &[f32], rel: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= rel * w.abs() + 1e-30,
            "{what}[{i}]: got {g:e}, want {w:e}\ngot  {got:?}\nwant {want:?}"
        );
    }
}

fn f32s(t: &HostTensor) -> Vec<f32> {
    t.to_f32()
}

/// Gradients of `w.weight`, `b.bias` and `h.weight` for one step.
type StepGrads = ([f32; 6], [f32; 3], [f32; 3]);

/// Expected weights, first and second moments of one parameter.
type Expected<'a> = (&'a str, &'a [f32], &'a [f32], &'a [f32]);

/// Per step, the gradients summed over 2 micro-batches (shared with the torch script).
const TORCH_GRADS: [StepGrads; 3] = [
    (
        [3.0, -1.0, 2.0, 0.5, -4.0, 1.0],
        [1.0, -2.0, 0.5],
        [2.0, 1.0, -3.0],
    ),
    (
        [0.01, -0.02, 0.03, 0.04, 0.0, -0.05],
        [0.02, 0.01, -0.01],
        [0.0, 0.03, 0.01],
    ),
    (
        [-0.5, 0.25, 0.75, 1.0, -0.125, 0.0],
        [0.3, -0.6, 0.2],
        [-0.4, 0.2, 0.1],
    ),
];

/// Numbers from torch 2.15 (CPU, f32): `p.grad = G / 2`, `clip_grad_norm_(params, 1.0)`,
/// `AdamW([{w, b}: lr 1e-2, {h}: lr 5e-2], betas (0.9, 0.999), eps 1e-8, weight_decay 0.01,
/// foreach=False)` with `LambdaLR(min(1, (s + 1) / 2))`, three steps; every hyper-parameter
/// given as its f32 value. To regenerate (with `w, b, h` the `small_model` tensors):
///
/// ```python
/// f = lambda x: float(np.float32(x))
/// opt = torch.optim.AdamW([{"params": [w, b], "lr": f(1e-2)}, {"params": [h], "lr": f(5e-2)}],
///     betas=(f(0.9), f(0.999)), eps=f(1e-8), weight_decay=f(0.01), foreach=False)
/// sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 2))
/// for g in TORCH_GRADS:  # per step: p.grad = G / 2; clip; step; sched.step()
///     ...; torch.nn.utils.clip_grad_norm_([w, b, h], 1.0, foreach=False); opt.step(); sched.step()
/// ```
#[test]
fn matches_torch_adamw_with_clipping_groups_and_warmup() {
    let host = small_model();
    let (mut params, mut grads) = setup(&host, None);
    let cfg = AdamWConfig {
        lr: 1e-2,
        warmup_steps: 2,
        ..AdamWConfig::default()
    };
    let mut opt = AdamW::with_lr(&Cpu, &params, &grads, cfg, |n| {
        if n.starts_with("h.") {
            5e-2
        } else {
            1e-2
        }
    })
    .unwrap();
    let want_norms = [3.553_167_6, 0.042_130_746, 0.804_770_95];
    let want_coefs = [0.281_438_95, 1.0, 1.0];
    let want_lrs = [5e-3, 1e-2, 1e-2];
    for (k, (gw, gb, gh)) in TORCH_GRADS.iter().enumerate() {
        set_grad(&params, &mut grads, "w.weight", gw);
        set_grad(&params, &mut grads, "b.bias", gb);
        set_grad(&params, &mut grads, "h.weight", gh);
        let r = opt.step(&Cpu, &mut params, &grads, 2);
        grads.zero(&Cpu);
        assert!(!r.skipped_nonfinite);
        assert_eq!(r.step, k as u64 + 1);
        assert!(
            (r.grad_norm as f32 - want_norms[k]).abs() <= 1e-6 * want_norms[k],
            "step {k}: norm {} vs {}",
            r.grad_norm,
            want_norms[k]
        );
        assert!(
            (r.clip_coef - want_coefs[k]).abs() <= 2.0 * f32::EPSILON,
            "step {k}: coef {} vs {}",
            r.clip_coef,
            want_coefs[k]
        );
        assert_eq!(r.lr, want_lrs[k]);
    }
    let state = opt.export_state(&Cpu, &params);
    #[rustfmt::skip]
    let want: [Expected; 3] = [
        ("w.weight",
         &[0.486_831_75, -0.237_796_19, 0.979_266_5, 0.104_220_99, 2.017_052_4, -1.514_011_3],
         &[0.009_644_833, 0.000_201_723_5, 0.061_646_57, 0.057_499_15, -0.051_843_118, 0.009_148_279],
         &[0.000_240_383_35, 3.548_683e-5, 0.000_219_896_5, 0.000_255_336_9, 0.000_320_100_3, 2.038_649_8e-5]),
        ("b.bias",
         &[0.079_292_62, -0.180_251_9, 0.280_807_73],
         &[0.027_298_283, -0.052_346_57, 0.015_249_142],
         &[4.236_174_2e-5, 0.000_169_072_34, 1.496_538e-5]),
        ("h.weight",
         &[1.437_075_6, -0.853_237_87, 0.329_323_1],
         &[0.002_796_552_6, 0.022_748_282, -0.028_744_84],
         &[0.000_119_048_02, 2.998_677_5e-5, 0.000_180_384_12]),
    ];
    for (name, p, m, v) in want {
        // Within an ulp or two (measured: weights <= 1.4 ulp, moments <= 2.5 ulp): torch rounds
        // in a slightly different order (lerp for the first moment, `1 - lr wd` in f64).
        let ulps = |n: f32| n * f32::EPSILON;
        assert_close(name, &values(&params, name), p, ulps(2.0));
        assert_close(name, &f32s(&state[&format!("param.{name}")]), p, ulps(2.0));
        assert_close(name, &f32s(&state[&format!("adam.m.{name}")]), m, ulps(4.0));
        assert_close(name, &f32s(&state[&format!("adam.v.{name}")]), v, ulps(4.0));
    }
    assert_eq!(values(&params, "frozen.weight"), [1.0, 2.0, 3.0, 4.0]);
    assert!(!state.contains_key("param.frozen.weight"));
}

/// AdamW with clipping and accumulation averaging in f64, straight from the formulas.
struct TextbookAdamW {
    p: Vec<f64>,
    m: Vec<f64>,
    v: Vec<f64>,
    t: i32,
}

impl TextbookAdamW {
    fn step(&mut self, sum_grads: &[f32], micro: usize, cfg: &AdamWConfig) {
        let g: Vec<f64> = sum_grads.iter().map(|&x| x as f64 / micro as f64).collect();
        let norm = g.iter().map(|x| x * x).sum::<f64>().sqrt();
        let coef = cfg
            .max_grad_norm
            .map_or(1.0, |c| (c as f64 / (norm + 1e-6)).min(1.0));
        let (b1, b2) = (cfg.betas.0 as f64, cfg.betas.1 as f64);
        let lr = cfg.lr as f64;
        self.t += 1;
        let moments = self.m.iter_mut().zip(self.v.iter_mut());
        for ((p, (m, v)), g) in self.p.iter_mut().zip(moments).zip(&g) {
            let gi = g * coef;
            *m = b1 * *m + (1.0 - b1) * gi;
            *v = b2 * *v + (1.0 - b2) * gi * gi;
            let mhat = *m / (1.0 - b1.powi(self.t));
            let vhat = *v / (1.0 - b2.powi(self.t));
            *p = *p * (1.0 - lr * cfg.weight_decay as f64)
                - lr * mhat / (vhat.sqrt() + cfg.eps as f64);
        }
    }
}

#[test]
fn matches_a_textbook_f64_adamw_over_many_steps() {
    // One parameter, so that the global norm is the textbook's norm; several steps with the
    // gradient norm above and below the clip threshold, accumulated over 3 micro-batches.
    let n = 40;
    let mut rng = TestRng::new(11);
    let init = rng.vec(n);
    let host: BTreeMap<String, HostTensor> = [("p.bias".to_string(), t(&[n], &init))].into();
    let (mut params, mut grads) = setup(&host, None);
    let cfg = AdamWConfig {
        lr: 1e-3,
        max_grad_norm: Some(2.0),
        ..AdamWConfig::default()
    };
    let mut opt = AdamW::new(&Cpu, &params, &grads, cfg).unwrap();
    let mut reference = TextbookAdamW {
        p: init.iter().map(|&x| x as f64).collect(),
        m: vec![0.0; n],
        v: vec![0.0; n],
        t: 0,
    };
    let mut clipped = 0;
    for k in 0..12 {
        // Alternating large and small gradients exercise both sides of the threshold.
        let scale = if k % 2 == 0 { 3.0 } else { 0.05 };
        let g: Vec<f32> = rng.vec(n).iter().map(|x| x * scale).collect();
        grads.get_mut(0).unwrap().copy_from_slice(&g);
        let r = opt.step(&Cpu, &mut params, &grads, 3);
        clipped += usize::from(r.clip_coef < 1.0);
        reference.step(&g, 3, &cfg);
    }
    assert_eq!(clipped, 6);
    let want: Vec<f32> = reference.p.iter().map(|&x| x as f32).collect();
    // Measured: within 5 f32 ulps after 12 steps.
    assert_close("p", &values(&params, "p.bias"), &want, 1e-6);
}

#[test]
fn accumulation_divides_by_micro_batches() {
    // Summed gradients over 4 micro-batches must act exactly like their mean given as one
    // micro-batch (dividing by 4 is exact, so the two runs agree bit for bit).
    let host = small_model();
    let run = |micro: usize, divide: f32| {
        let (mut params, mut grads) = setup(&host, None);
        let mut opt = AdamW::new(&Cpu, &params, &grads, AdamWConfig::default()).unwrap();
        let mut reports = Vec::new();
        for (gw, gb, gh) in &TORCH_GRADS {
            let d = |g: &[f32]| g.iter().map(|x| x / divide).collect::<Vec<_>>();
            set_grad(&params, &mut grads, "w.weight", &d(gw));
            set_grad(&params, &mut grads, "b.bias", &d(gb));
            set_grad(&params, &mut grads, "h.weight", &d(gh));
            reports.push(opt.step(&Cpu, &mut params, &grads, micro));
        }
        (opt.export_state(&Cpu, &params), reports)
    };
    let (summed, r_summed) = run(4, 1.0);
    let (mean, r_mean) = run(1, 4.0);
    assert_eq!(summed, mean);
    assert_eq!(r_summed, r_mean);
    // And the mean is what is clipped: 4x the gradients at micro_batches = 1 is clipped harder.
    let (_, r_big) = run(1, 1.0);
    assert!((r_big[0].grad_norm - 4.0 * r_mean[0].grad_norm).abs() < 1e-9);
    assert!(r_big[0].clip_coef < r_mean[0].clip_coef);
}

#[test]
fn clipping_scales_the_gradient_like_clip_grad_norm() {
    let host: BTreeMap<String, HostTensor> = [("p.bias".to_string(), t(&[2], &[0.0, 0.0]))].into();
    let one_step = |cfg: AdamWConfig, g: [f32; 2]| {
        let (mut params, mut grads) = setup(&host, None);
        let mut opt = AdamW::new(&Cpu, &params, &grads, cfg).unwrap();
        grads.get_mut(0).unwrap().copy_from_slice(&g);
        let r = opt.step(&Cpu, &mut params, &grads, 1);
        (r, opt.export_state(&Cpu, &params))
    };
    let clip = AdamWConfig {
        max_grad_norm: Some(1.0),
        ..AdamWConfig::default()
    };
    // Norm 10: coef = 1 / (10 + 1e-6) in f32, and the moments see the clipped gradient.
    let (r, s) = one_step(clip, [6.0, 8.0]);
    assert_eq!(r.grad_norm, 10.0);
    assert_eq!(r.clip_coef, 1.0f32 / (10.0f32 + 1e-6));
    let m = f32s(&s["adam.m.p.bias"]);
    assert_close("m", &m, &[0.1 * 0.6, 0.1 * 0.8], 1e-6);
    // Below the threshold nothing is scaled; without a threshold nothing ever is.
    let (r, _) = one_step(clip, [0.3, 0.4]);
    assert_eq!(r.clip_coef, 1.0);
    let no_clip = AdamWConfig {
        max_grad_norm: None,
        ..AdamWConfig::default()
    };
    let (r, s) = one_step(no_clip, [6.0, 8.0]);
    assert_eq!((r.grad_norm, r.clip_coef), (10.0, 1.0));
    assert_close("m", &f32s(&s["adam.m.p.bias"]), &[0.6, 0.8], 1e-6);
}

#[test]
fn nonfinite_gradients_skip_the_step_and_change_nothing() {
    let host = small_model();
    let fill = |params: &ParamStore<Cpu>, grads: &mut Grads<Cpu>, k: usize| {
        let (gw, gb, gh) = &TORCH_GRADS[k];
        set_grad(params, grads, "w.weight", gw);
        set_grad(params, grads, "b.bias", gb);
        set_grad(params, grads, "h.weight", gh);
    };
    let cfg = AdamWConfig {
        warmup_steps: 3,
        ..AdamWConfig::default()
    };
    // `a` meets a NaN and an infinity between its good steps; `b` never does.
    let (mut pa, mut ga) = setup(&host, Some(DType::BF16));
    let (mut pb, mut gb) = setup(&host, Some(DType::BF16));
    let mut a = AdamW::new(&Cpu, &pa, &ga, cfg).unwrap();
    let mut b = AdamW::new(&Cpu, &pb, &gb, cfg).unwrap();
    fill(&pa, &mut ga, 0);
    fill(&pb, &mut gb, 0);
    a.step(&Cpu, &mut pa, &ga, 2);
    b.step(&Cpu, &mut pb, &gb, 2);

    let before = a.export_state(&Cpu, &pa);
    let store_before: Vec<HostTensor> = (0..pa.len()).map(|i| pa.to_host(&Cpu, i)).collect();
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        fill(&pa, &mut ga, 1);
        ga.get_mut(pa.id("b.bias").unwrap()).unwrap()[1] = bad;
        let r = a.step(&Cpu, &mut pa, &ga, 2);
        assert!(r.skipped_nonfinite, "{bad}");
        assert!(!r.grad_norm.is_finite());
        assert_eq!((r.step, r.clip_coef), (1, 0.0));
        // The warm-up did not advance either: the would-be lr is still that of step 2.
        assert_eq!(r.lr, (1e-6f32 as f64 * 2.0 / 3.0) as f32);
        assert_eq!(a.step_count(), 1);
        assert_eq!(a.export_state(&Cpu, &pa), before);
        let store: Vec<HostTensor> = (0..pa.len()).map(|i| pa.to_host(&Cpu, i)).collect();
        assert_eq!(store, store_before);
    }
    // The next good step is the one an optimiser that never saw the bad gradients takes.
    for k in 1..3 {
        fill(&pa, &mut ga, k);
        fill(&pb, &mut gb, k);
        assert_eq!(a.step(&Cpu, &mut pa, &ga, 2), b.step(&Cpu, &mut pb, &gb, 2));
    }
    assert_eq!(a.export_state(&Cpu, &pa), b.export_state(&Cpu, &pb));
}

#[test]
fn bf16_weights_keep_an_f32_master() {
    // Adam moves each weight by about lr per step; 1e-4 is far below bf16's spacing at 1.0
    // (2^-7), so rounding every update into bf16 would leave the weight at 1.0 forever.
    let host: BTreeMap<String, HostTensor> =
        [("w.weight".to_string(), t(&[1, 2], &[1.0, -1.0]))].into();
    let (mut params, mut grads) = setup(&host, Some(DType::BF16));
    let cfg = AdamWConfig {
        lr: 1e-4,
        weight_decay: 0.0,
        max_grad_norm: None,
        ..AdamWConfig::default()
    };
    let mut opt = AdamW::new(&Cpu, &params, &grads, cfg).unwrap();
    let steps = 100;
    grads.get_mut(0).unwrap().copy_from_slice(&[1.0, -1.0]);
    for _ in 0..steps {
        opt.step(&Cpu, &mut params, &grads, 1);
    }
    let master = f32s(&opt.export_state(&Cpu, &params)["param.w.weight"]);
    let moved = 1e-4 * steps as f32;
    assert_close("master", &master, &[1.0 - moved, -1.0 + moved], 1e-5);
    // The store holds the bf16 rounding of the master, which has left 1.0.
    let stored = params.to_host(&Cpu, 0);
    assert_eq!(stored.dtype(), DType::BF16);
    assert_eq!(stored.data, Storage::from_f32(&master, DType::BF16));
    assert_ne!(stored.to_f32()[0], 1.0);
    // Without a master the same updates vanish.
    let mut naive = half::bf16::from_f32(1.0);
    for _ in 0..steps {
        naive = half::bf16::from_f32(naive.to_f32() - 1e-4);
    }
    assert_eq!(naive.to_f32(), 1.0);
}

fn meta(step: u64, rng: &Rng) -> serde_json::Value {
    TrainingMeta {
        step,
        rng: rng.state(),
        kind: TrainingKind::Reward,
        config: json!({"lr": 1e-6, "blocks": [0, 1]}),
    }
    .to_json()
}

#[test]
fn resume_from_a_checkpoint_is_bit_identical() {
    let dir = TempDir::new("resume");
    let path = dir.path().join("train.safetensors");
    let host = small_model();
    let cfg = AdamWConfig {
        lr: 1e-3,
        warmup_steps: 5,
        ..AdamWConfig::default()
    };
    // Gradients drawn from the trainer's stream, so the resumed stream is exercised too.
    let draw = |rng: &mut Rng, params: &ParamStore<Cpu>, grads: &mut Grads<Cpu>| {
        for name in ["w.weight", "b.bias", "h.weight"] {
            let g = grads.get_mut(params.id(name).unwrap()).unwrap();
            rng.fill_normal(g);
        }
    };
    let (mut p1, mut g1) = setup(&host, Some(DType::BF16));
    let mut opt1 = AdamW::new(&Cpu, &p1, &g1, cfg).unwrap();
    let mut rng1 = Rng::seed_from_u64(5);
    for _ in 0..3 {
        draw(&mut rng1, &p1, &mut g1);
        opt1.step(&Cpu, &mut p1, &g1, 1);
    }
    // An odd draw leaves a Box-Muller spare pending, which the checkpoint must carry.
    rng1.normal_f32();
    let mut tensors = opt1.export_state(&Cpu, &p1);
    tensors.insert("trainer.extra".into(), t(&[1], &[42.0]));
    save_training_checkpoint(&path, &tensors, &meta(3, &rng1)).unwrap();

    // A fresh process: model weights from the original checkpoint, state from the file.
    let (tensors2, meta2) = load_training_checkpoint(&path).unwrap();
    assert_eq!(tensors2, tensors);
    let m = TrainingMeta::from_json(&meta2).unwrap();
    assert_eq!((m.step, m.kind), (3, TrainingKind::Reward));
    assert_eq!(meta2["format"], FORMAT);
    assert_eq!(meta2["config"]["blocks"], json!([0, 1]));
    let (mut p2, mut g2) = setup(&host, Some(DType::BF16));
    let mut opt2 = AdamW::new(&Cpu, &p2, &g2, cfg).unwrap();
    opt2.import_state(&Cpu, &mut p2, &tensors2).unwrap();
    let mut rng2 = Rng::from_state(&m.rng).unwrap();
    assert_eq!(opt2.step_count(), 3);

    for _ in 0..3 {
        draw(&mut rng1, &p1, &mut g1);
        draw(&mut rng2, &p2, &mut g2);
        let (r1, r2) = (
            opt1.step(&Cpu, &mut p1, &g1, 1),
            opt2.step(&Cpu, &mut p2, &g2, 1),
        );
        assert_eq!(r1, r2);
    }
    assert_eq!(opt1.export_state(&Cpu, &p1), opt2.export_state(&Cpu, &p2));
    for i in 0..p1.len() {
        assert_eq!(p1.to_host(&Cpu, i), p2.to_host(&Cpu, i), "{}", p1.name(i));
    }
}

#[test]
fn import_validates_everything_before_changing_anything() {
    let host = small_model();
    let (mut params, mut grads) = setup(&host, None);
    let mut opt = AdamW::new(&Cpu, &params, &grads, AdamWConfig::default()).unwrap();
    set_grad(&params, &mut grads, "b.bias", &[1.0, 1.0, 1.0]);
    opt.step(&Cpu, &mut params, &grads, 1);
    let good = opt.export_state(&Cpu, &params);

    // A fresh optimiser that must stay fresh through every failed import.
    let (mut p2, g2) = setup(&host, None);
    let mut fresh = AdamW::new(&Cpu, &p2, &g2, AdamWConfig::default()).unwrap();
    let pristine = fresh.export_state(&Cpu, &p2);
    let check = |tensors: BTreeMap<String, HostTensor>,
                 want: &str,
                 fresh: &mut AdamW<Cpu>,
                 p2: &mut ParamStore<Cpu>| {
        let e = fresh.import_state(&Cpu, p2, &tensors).unwrap_err();
        assert!(e.to_string().contains(want), "{e} (want {want})");
        assert_eq!(fresh.export_state(&Cpu, p2), pristine);
        assert_eq!(fresh.step_count(), 0);
    };
    let mut missing = good.clone();
    missing.remove("adam.v.h.weight");
    check(missing, "adam.v.h.weight", &mut fresh, &mut p2);
    let mut misshapen = good.clone();
    misshapen.insert("adam.m.w.weight".into(), t(&[3, 2], &[0.0; 6]));
    check(misshapen, "adam.m.w.weight", &mut fresh, &mut p2);
    let mut half = good.clone();
    half.insert(
        "param.b.bias".into(),
        HostTensor::new(vec![3], Storage::from_f32(&[0.0; 3], DType::BF16)).unwrap(),
    );
    check(half, "param.b.bias", &mut fresh, &mut p2);
    let mut extra = good.clone();
    extra.insert("param.frozen.weight".into(), t(&[2, 2], &[0.0; 4]));
    check(extra, "param.frozen.weight", &mut fresh, &mut p2);
    let mut no_step = good.clone();
    no_step.remove("adam.step");
    check(no_step, "adam.step", &mut fresh, &mut p2);
    assert!(matches!(
        fresh.import_state(&Cpu, &mut p2, &BTreeMap::new()),
        Err(Error::MissingTensor(_))
    ));

    fresh.import_state(&Cpu, &mut p2, &good).unwrap();
    assert_eq!(fresh.export_state(&Cpu, &p2), good);
    assert_eq!(values(&p2, "b.bias"), values(&params, "b.bias"));
}

#[test]
fn damaged_or_foreign_files_are_refused_by_name() {
    let dir = TempDir::new("damaged");
    let good = dir.path().join("good.safetensors");
    let tensors: BTreeMap<String, HostTensor> =
        [("param.x".to_string(), t(&[64], &[0.5; 64]))].into();
    let rng = Rng::seed_from_u64(1);
    save_training_checkpoint(&good, &tensors, &meta(1, &rng)).unwrap();
    let bytes = fs::read(&good).unwrap();
    let expect_err = |name: &str, content: &[u8], want: &str| {
        let p = dir.path().join(name);
        fs::write(&p, content).unwrap();
        let e = load_training_checkpoint(&p).unwrap_err().to_string();
        assert!(e.contains(name) && e.contains(want), "{name}: {e}");
    };
    expect_err(
        "truncated.safetensors",
        &bytes[..bytes.len() - 10],
        "truncated",
    );
    expect_err("stub.safetensors", &bytes[..5], "truncated");
    let mut flipped = bytes.clone();
    let last = flipped.len() - 3;
    flipped[last] ^= 0x10;
    expect_err("flipped.safetensors", &flipped, "checksum");
    expect_err(
        "text.safetensors",
        b"definitely not a checkpoint",
        "corrupt",
    );

    // A model checkpoint (format "pt") or a file with no metadata is not a training checkpoint.
    let model = dir.path().join("model.safetensors");
    let pt: std::collections::HashMap<String, String> = [("format".into(), "pt".into())].into();
    write_safetensors(&model, &tensors, Some(&pt)).unwrap();
    let e = load_training_checkpoint(&model).unwrap_err().to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("\"pt\""),
        "{e}"
    );
    write_safetensors(&model, &tensors, None).unwrap();
    let e = load_training_checkpoint(&model).unwrap_err().to_string();
    assert!(e.contains("model.safetensors") && e.contains(FORMAT), "{e}");
    let missing = dir.path().join("absent.safetensors");
    let e = load_training_checkpoint(&missing).unwrap_err().to_string();
    assert!(e.contains("absent.safetensors"), "{e}");

    // Metadata is checked on save too.
    let mut bad = meta(1, &rng);
    bad["format"] = json!("prfl-train/0");
    assert!(save_training_checkpoint(&dir.path().join("x"), &tensors, &bad).is_err());
    let mut untagged = meta(1, &rng);
    untagged.as_object_mut().unwrap().remove("format");
    let p = dir.path().join("untagged.safetensors");
    save_training_checkpoint(&p, &tensors, &untagged).unwrap();
    assert_eq!(load_training_checkpoint(&p).unwrap().1["format"], FORMAT);
}

#[test]
fn a_failed_save_leaves_the_previous_checkpoint_intact() {
    let dir = TempDir::new("atomic");
    let path = dir.path().join("ckpt.safetensors");
    let rng = Rng::seed_from_u64(2);
    let v1: BTreeMap<String, HostTensor> = [("param.x".to_string(), t(&[4], &[1.0; 4]))].into();
    let v2: BTreeMap<String, HostTensor> = [("param.x".to_string(), t(&[4], &[2.0; 4]))].into();
    save_training_checkpoint(&path, &v1, &meta(1, &rng)).unwrap();

    // A save that fails (a tensor whose data does not fill its shape, bad metadata) touches
    // neither the file nor the directory.
    let broken: BTreeMap<String, HostTensor> = [(
        "param.x".to_string(),
        HostTensor {
            shape: vec![8],
            data: Storage::F32(vec![3.0; 4]),
        },
    )]
    .into();
    assert!(save_training_checkpoint(&path, &broken, &meta(2, &rng)).is_err());
    assert!(save_training_checkpoint(&path, &v2, &json!({"step": 2})).is_err());
    let (back, m) = load_training_checkpoint(&path).unwrap();
    assert_eq!((back, m["step"].clone()), (v1.clone(), json!(1)));
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);

    // A successful save replaces the file by rename, never in place: a reader that opened the
    // old checkpoint still sees all of it, and a crash mid-write would have left it untouched.
    let old = fs::read(&path).unwrap();
    let reader = fs::File::open(&path).unwrap();
    save_training_checkpoint(&path, &v2, &meta(2, &rng)).unwrap();
    let mut still = Vec::new();
    std::io::Read::read_to_end(&mut &reader, &mut still).unwrap();
    assert_eq!(still, old);
    assert_eq!(load_training_checkpoint(&path).unwrap().0, v2);
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
#[should_panic(expected = "not trained by")]
fn a_gradient_outside_the_trainable_set_is_a_programming_error() {
    let host = small_model();
    let (mut params, grads) = setup(&host, None);
    let mut opt = AdamW::new(&Cpu, &params, &grads, AdamWConfig::default()).unwrap();
    let all = Grads::new(&Cpu, &params, |_| true);
    opt.step(&Cpu, &mut params, &all, 1);
}

#[test]
fn invalid_configs_are_refused() {
    let host = small_model();
    let (params, grads) = setup(&host, None);
    for cfg in [
        AdamWConfig {
            betas: (1.0, 0.999),
            ..AdamWConfig::default()
        },
        AdamWConfig {
            eps: 0.0,
            ..AdamWConfig::default()
        },
        AdamWConfig {
            max_grad_norm: Some(0.0),
            ..AdamWConfig::default()
        },
        AdamWConfig {
            lr: f32::NAN,
            ..AdamWConfig::default()
        },
    ] {
        assert!(matches!(
            AdamW::new(&Cpu, &params, &grads, cfg),
            Err(Error::Config(_))
        ));
    }
    let e = AdamW::with_lr(&Cpu, &params, &grads, AdamWConfig::default(), |n| {
        if n == "h.weight" {
            -1.0
        } else {
            1e-6
        }
    });
    assert!(e.err().unwrap().to_string().contains("h.weight"));
}
