//! Whole-model checks that need no fixtures: the hand-written backward of the full DiT against
//! finite differences, and per-block recompute against keeping every activation.

use std::collections::BTreeMap;

use prfl::backend::cpu::Cpu;
use prfl::backend::Backend;
use prfl::model::names::canonical_params;
use prfl::model::params::Grads;
use prfl::model::wan::{Inputs, Mode, VideoShape, WanModel};
use prfl::model::{ModelType, WanConfig};
use prfl::tensor::HostTensor;
use prfl::testutil::{assert_grad_close, numeric_grad, tiny_wan, TestRng};

fn tiny(model_type: ModelType) -> WanConfig {
    tiny_wan(model_type, 16, 2, 2, 8)
}

/// Random parameters with every entry non-trivial (zeros hide bugs).
fn random_params(cfg: &WanConfig, seed: u64) -> BTreeMap<String, HostTensor> {
    let mut rng = TestRng::new(seed);
    canonical_params(cfg)
        .into_iter()
        .map(|p| {
            let n = p.numel();
            let fan_in = if p.shape.len() >= 2 {
                n / p.shape[0]
            } else {
                1
            };
            let scale = 1.0 / (fan_in as f32).sqrt();
            let base = if p.name.contains("norm") && p.name.ends_with(".weight") {
                1.0
            } else {
                0.0
            };
            let data = rng.vec(n).into_iter().map(|u| base + u * scale).collect();
            (p.name, HostTensor::from_f32(p.shape, data).unwrap())
        })
        .collect()
}

struct Case {
    cfg: WanConfig,
    shape: VideoShape,
    x: Vec<f32>,
    t: Vec<f32>,
    context: Vec<f32>,
    text_len: usize,
    y: Option<Vec<f32>>,
    clip: Option<Vec<f32>>,
    image_len: usize,
    cot: Vec<f32>,
}

fn case(model_type: ModelType) -> Case {
    let cfg = tiny(model_type);
    let mut rng = TestRng::new(7);
    let shape = VideoShape {
        batch: 2,
        frames: 3,
        height: 2,
        width: 4,
    };
    let vox = shape.voxels() * shape.batch;
    let text_len = 5;
    let image_len = 3;
    let i2v = model_type == ModelType::I2V;
    Case {
        x: rng.vec(vox * 16),
        t: vec![999.0, 421.0],
        context: rng.vec(2 * text_len * cfg.text_dim),
        y: i2v.then(|| rng.vec(vox * 20)),
        clip: i2v.then(|| rng.vec(2 * image_len * 6)),
        cot: rng.vec(vox * 16),
        cfg,
        shape,
        text_len,
        image_len,
    }
}

/// Runs forward (+ backward) with `x`, `context`, `y`, `clip` replaced by the given vectors.
fn run(
    be: &Cpu,
    model: &WanModel<Cpu>,
    c: &Case,
    x: &[f32],
    context: &[f32],
    y: Option<&[f32]>,
    clip: Option<&[f32]>,
) -> f64 {
    let (xv, cv) = (x.to_vec(), context.to_vec());
    let yv = y.map(|y| y.to_vec());
    let clipv = clip.map(|c| c.to_vec());
    let inp = Inputs::<Cpu> {
        shape: c.shape,
        x: &xv,
        t: &c.t,
        context: &cv,
        text_len: c.text_len,
        y: yv.as_ref(),
        clip: clipv.as_ref(),
        image_len: c.image_len,
    };
    let (v, _) = model.forward(be, &inp, Mode::Inference).unwrap();
    v.iter()
        .zip(&c.cot)
        .map(|(a, b)| *a as f64 * *b as f64)
        .sum()
}

fn check_model_gradients(model_type: ModelType) {
    let be = Cpu;
    let c = case(model_type);
    let tensors = random_params(&c.cfg, 3);
    let model = WanModel::new(&be, c.cfg.clone(), &tensors, None).unwrap();
    let inp = Inputs::<Cpu> {
        shape: c.shape,
        x: &c.x,
        t: &c.t,
        context: &c.context,
        text_len: c.text_len,
        y: c.y.as_ref(),
        clip: c.clip.as_ref(),
        image_len: c.image_len,
    };
    let (_, tape) = model.forward(&be, &inp, Mode::Train).unwrap();
    let mut grads = Grads::new(&be, &model.params, |_| true);
    let g = model
        .backward(&be, &tape.unwrap(), &c.cot, &mut grads)
        .unwrap();

    let h = 1e-2;
    let num_x = numeric_grad(&c.x, h, |x| {
        run(
            &be,
            &model,
            &c,
            x,
            &c.context,
            c.y.as_deref(),
            c.clip.as_deref(),
        )
    });
    assert_grad_close("d loss / d x", &g.x, &num_x, 2e-2);
    let num_ctx = numeric_grad(&c.context, h, |ctx| {
        run(
            &be,
            &model,
            &c,
            &c.x,
            ctx,
            c.y.as_deref(),
            c.clip.as_deref(),
        )
    });
    assert_grad_close("d loss / d context", &g.context, &num_ctx, 2e-2);
    if let (Some(y), Some(gy)) = (&c.y, &g.y) {
        let num = numeric_grad(y, h, |y| {
            run(
                &be,
                &model,
                &c,
                &c.x,
                &c.context,
                Some(y),
                c.clip.as_deref(),
            )
        });
        assert_grad_close("d loss / d y", gy, &num, 2e-2);
    }
    if let (Some(clip), Some(gc)) = (&c.clip, &g.clip) {
        let num = numeric_grad(clip, h, |cl| {
            run(&be, &model, &c, &c.x, &c.context, c.y.as_deref(), Some(cl))
        });
        assert_grad_close("d loss / d clip_fea", gc, &num, 2e-2);
    }

    // Every parameter: a few entries each, perturbed in a copy of the checkpoint.
    let mut rng = TestRng::new(11);
    for (name, t) in &tensors {
        let id = model.params.id(name).unwrap();
        let analytic = be.download(grads.get(id).unwrap());
        let n = t.numel();
        let picks: Vec<usize> = (0..3)
            .map(|_| ((rng.uniform() + 1.0) * 0.5 * n as f32) as usize % n)
            .collect();
        let base = t.to_f32();
        let mut num = Vec::new();
        let mut ana = Vec::new();
        for &i in &picks {
            let f = |delta: f32| {
                let mut p = tensors.clone();
                let mut data = base.clone();
                data[i] += delta;
                p.insert(
                    name.clone(),
                    HostTensor::from_f32(t.shape.clone(), data).unwrap(),
                );
                let m = WanModel::new(&be, c.cfg.clone(), &p, None).unwrap();
                run(
                    &be,
                    &m,
                    &c,
                    &c.x,
                    &c.context,
                    c.y.as_deref(),
                    c.clip.as_deref(),
                )
            };
            num.push(((f(h) - f(-h)) / (2.0 * h as f64)) as f32);
            ana.push(analytic[i]);
        }
        // Relative to the parameter's largest gradient entry, so tiny entries do not dominate.
        let scale = analytic
            .iter()
            .fold(0.0f32, |m, x| m.max(x.abs()))
            .max(1e-3);
        for (a, n) in ana.iter().zip(&num) {
            assert!(
                (a - n).abs() <= 2e-2 * scale + 1e-3,
                "{name}: analytic {a} vs finite difference {n} (gradient scale {scale})"
            );
        }
    }
}

#[test]
fn t2v_backward_matches_finite_differences() {
    check_model_gradients(ModelType::T2V);
}

#[test]
fn i2v_backward_matches_finite_differences() {
    check_model_gradients(ModelType::I2V);
}

#[test]
fn recompute_gives_the_same_gradients_and_saves_memory() {
    let be = Cpu;
    for mt in [ModelType::T2V, ModelType::I2V] {
        let c = case(mt);
        let tensors = random_params(&c.cfg, 5);
        let model = WanModel::new(&be, c.cfg.clone(), &tensors, None).unwrap();
        let inp = Inputs::<Cpu> {
            shape: c.shape,
            x: &c.x,
            t: &c.t,
            context: &c.context,
            text_len: c.text_len,
            y: c.y.as_ref(),
            clip: c.clip.as_ref(),
            image_len: c.image_len,
        };
        let mut results = Vec::new();
        for mode in [Mode::Train, Mode::TrainRecompute] {
            let (v, tape) = model.forward(&be, &inp, mode).unwrap();
            let tape = tape.unwrap();
            let saved = tape.saved_block_bytes(&be);
            let mut grads = Grads::new(&be, &model.params, |_| true);
            let g = model.backward(&be, &tape, &c.cot, &mut grads).unwrap();
            results.push((v, g.x, g.context, grads.bufs, saved));
        }
        let (full, rec) = (&results[0], &results[1]);
        assert_eq!(full.0, rec.0, "outputs differ");
        assert_eq!(full.1, rec.1, "dx differs");
        assert_eq!(full.2, rec.2, "dcontext differs");
        assert_eq!(full.3, rec.3, "parameter gradients differ");
        assert!(
            rec.4 * 10 < full.4,
            "recompute saved {} bytes vs {} in full mode",
            rec.4,
            full.4
        );
    }
}

#[test]
fn bad_inputs_are_rejected_with_a_message() {
    let be = Cpu;
    let c = case(ModelType::T2V);
    let model = WanModel::new(&be, c.cfg.clone(), &random_params(&c.cfg, 1), None).unwrap();
    let short = vec![0.0; 5];
    let mut inp = Inputs::<Cpu> {
        shape: c.shape,
        x: &short,
        t: &c.t,
        context: &c.context,
        text_len: c.text_len,
        y: None,
        clip: None,
        image_len: 0,
    };
    let err = model
        .forward(&be, &inp, Mode::Inference)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("x holds 5 values"), "{err}");
    inp.x = &c.x;
    inp.shape.width = 3;
    let err = model
        .forward(&be, &inp, Mode::Inference)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("must be even"), "{err}");
    inp.shape.width = 4;
    let nan_t = [f32::NAN, 1.0];
    inp.t = &nan_t;
    let err = model
        .forward(&be, &inp, Mode::Inference)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not finite"), "{err}");
}
