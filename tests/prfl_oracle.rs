//! One complete PRFL step against the PyTorch oracle (`tools/oracle/make_prfl_fixture.py`): a tiny
//! random diffusers Wan generator rolled out with diffusers' `UniPCMultistepScheduler` (flow
//! sigmas, shift 5, order 2, bh2) for `m` steps without gradients, one step with gradients, the
//! result scored by a separate K-block Wan backbone + `nn.MultiheadAttention` pooling + MLP at
//! `t_{m+1}`, loss `mean 0.1 * relu(2 - score)`, backward into every generator parameter.
//!
//! Compared: the diffusers grid (bit for bit), the rollout `x_m` and `x_{m+1}`, the per-sample
//! scores and the loss (relative error <= 1e-5) and every generator gradient (max|a - b| / max|b|
//! per tensor <= 1e-4).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use prfl::backend::cpu::Cpu;
use prfl::backend::Backend;
use prfl::finetune::prfl::{PrflTrainConfig, PrflTrainer};
use prfl::finetune::sample::{velocity, Cond, GridKind};
use prfl::model::checkpoint::Checkpoint;
use prfl::model::wan::{VideoShape, WanModel};
use prfl::reward::model::{RewardModel, RewardModelConfig};
use prfl::safetensors::read_safetensors;
use prfl::schedule::SolverKind;
use prfl::tensor::HostTensor;
use prfl::testutil::max_rel_err;

const FWD_TOL: f32 = 1e-5;
const GRAD_TOL: f32 = 1e-4;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/prfl")
}

struct Fixture {
    meta: serde_json::Value,
    case: BTreeMap<String, HostTensor>,
    shape: VideoShape,
    context_len: usize,
}

fn load_fixture() -> Fixture {
    let d = dir();
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(d.join("case.json"))
            .expect("tests/fixtures/prfl/case.json (run tools/oracle/make_prfl_fixture.py)"),
    )
    .unwrap();
    let case = read_safetensors(&d.join("case.safetensors")).unwrap();
    let s = &meta["shape"];
    let u = |v: &serde_json::Value| v.as_u64().unwrap() as usize;
    let shape = VideoShape {
        batch: u(&s["batch"]),
        frames: u(&s["frames"]),
        height: u(&s["height"]),
        width: u(&s["width"]),
    };
    Fixture {
        context_len: u(&s["context_len"]),
        meta,
        case,
        shape,
    }
}

fn trainer(be: &Cpu, fx: &Fixture, m: usize, recompute: bool) -> PrflTrainer<Cpu> {
    let d = dir();
    let ckpt = Checkpoint::open(&d.join("generator")).unwrap();
    let wan = ckpt.config().clone();
    let generator = WanModel::new(be, wan.clone(), &ckpt.load_all().unwrap(), None).unwrap();
    assert_eq!(generator.num_blocks(), wan.num_layers);
    assert!(generator.has_head());

    let r = &fx.meta["reward"];
    let u = |v: &serde_json::Value| v.as_u64().unwrap() as usize;
    let rcfg = RewardModelConfig {
        blocks: u(&r["blocks"]),
        trainable_blocks: None,
        heads: u(&r["heads"]),
        queries: u(&r["queries"]),
        hidden: [u(&r["hidden"][0]), u(&r["hidden"][1])],
    };
    assert!(
        rcfg.blocks < wan.num_layers,
        "the fixture's reward model should be a cut"
    );
    let backbone = read_safetensors(&d.join("reward_backbone.safetensors")).unwrap();
    let head = read_safetensors(&d.join("reward_head.safetensors")).unwrap();
    let reward = RewardModel::from_tensors(be, wan, &backbone, &head, rcfg, None).unwrap();

    let cfg = PrflTrainConfig {
        steps: u(&fx.meta["steps"]),
        shift: fx.meta["shift"].as_f64().unwrap(),
        solver: SolverKind::UniPc,
        grid: GridKind::Diffusers,
        sft: false,
        recompute,
        mid_range: Some((m, m)),
        margin: fx.meta["margin"].as_f64().unwrap() as f32,
        scale: fx.meta["scale"].as_f64().unwrap() as f32,
        ..Default::default()
    };
    PrflTrainer::new(be, generator, reward, cfg).unwrap()
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs()
}

fn check(m: usize, recompute: bool) {
    let be = Cpu;
    let fx = load_fixture();
    assert!(
        fx.meta["mid_steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v.as_u64() == Some(m as u64)),
        "the fixture has no case m = {m}"
    );
    let mut tr = trainer(&be, &fx, m, recompute);
    let tag = format!("m={m}{}", if recompute { " (recompute)" } else { "" });
    let want = |k: &str| -> Vec<f32> {
        fx.case
            .get(&format!("m{m}.{k}"))
            .unwrap_or_else(|| panic!("fixture lacks m{m}.{k}"))
            .to_f32()
    };

    // The sampling grid is diffusers' exactly: sigmas bit for bit, timesteps trunc(1000 sigma).
    assert_eq!(
        tr.plan().grid.sigmas(),
        &fx.case["sigmas"].to_f32()[..],
        "{tag}: sigmas"
    );
    assert_eq!(
        tr.plan().grid.timesteps(),
        &fx.case["timesteps"].to_f32()[..],
        "{tag}: timesteps"
    );
    assert_eq!(tr.draw_mid_step(), m);

    let shape = fx.shape;
    let ctx = be.upload(&fx.case["context"].to_f32());
    let cond = Cond {
        text: &ctx,
        text_len: fx.context_len,
        y: None,
        clip: None,
        image_len: 0,
    };
    let noise = fx.case["noise"].to_f32();

    // Forward pieces: x_m, x_{m+1} and the per-sample scores.
    let (x_m, mut sampler) = tr.rollout(&be, shape, &cond, be.upload(&noise), m).unwrap();
    assert_eq!(sampler.index(), m);
    let e_xm = max_rel_err(&be.download(&x_m), &want("x_m"));
    let v = velocity(
        &be,
        &tr.generator,
        shape,
        &cond,
        None,
        &x_m,
        sampler.timestep(m),
    )
    .unwrap();
    let x_next = sampler.step(&be, &v, &x_m);
    let e_xnext = max_rel_err(&be.download(&x_next), &want("x_next"));
    let t_next = vec![sampler.timestep(m + 1); shape.batch];
    assert_eq!(
        t_next[0] as u64,
        fx.meta["reward_timesteps"][format!("m{m}")]
            .as_u64()
            .unwrap(),
        "{tag}: reward timestep"
    );
    let scores = tr
        .reward
        .score(&be, &cond.inputs(shape, &x_next, &t_next))
        .unwrap();
    let e_scores = max_rel_err(&scores, &want("score"));
    assert!(e_xm <= FWD_TOL, "{tag}: x_m relative error {e_xm:e}");
    assert!(
        e_xnext <= FWD_TOL,
        "{tag}: x_next relative error {e_xnext:e}"
    );
    assert!(
        e_scores <= FWD_TOL,
        "{tag}: scores {scores:?} vs {:?} ({e_scores:e})",
        want("score")
    );

    // The PRFL step itself, with the backward into the generator.
    let (x_m, sampler) = tr.rollout(&be, shape, &cond, be.upload(&noise), m).unwrap();
    let (loss, mean_score, tape_bytes) = tr
        .prfl_loss_at(&be, shape, &cond, &x_m, sampler, true)
        .unwrap();
    let want_loss = want("loss")[0] as f64;
    let want_mean = want("score").iter().map(|&s| s as f64).sum::<f64>() / shape.batch as f64;
    let (e_loss, e_mean) = (rel(loss, want_loss), rel(mean_score, want_mean));
    assert!(
        e_loss <= FWD_TOL as f64,
        "{tag}: loss {loss} vs {want_loss} ({e_loss:e})"
    );
    assert!(
        e_mean <= FWD_TOL as f64,
        "{tag}: mean score {mean_score} vs {want_mean} ({e_mean:e})"
    );
    assert!(tape_bytes > 0);

    let ps = &tr.generator.params;
    let grads = tr.grads();
    let mut worst = (0.0f32, String::new());
    for i in 0..ps.len() {
        let name = ps.name(i);
        let g = grads
            .get(i)
            .unwrap_or_else(|| panic!("{tag}: no gradient buffer for `{name}`"));
        let key = format!("m{m}.grad.{name}");
        let w = fx
            .case
            .get(&key)
            .unwrap_or_else(|| panic!("{tag}: fixture lacks `{key}`"));
        assert_eq!(w.numel(), ps.numel(i), "{tag}: size of `{name}`");
        let err = max_rel_err(&be.download(g), &w.to_f32());
        if err > worst.0 || worst.1.is_empty() {
            worst = (err, name.to_string());
        }
        assert!(
            err <= GRAD_TOL,
            "{tag}: gradient of `{name}` relative error {err:e} > {GRAD_TOL:e}"
        );
    }
    let n_fixture = fx
        .case
        .keys()
        .filter(|k| k.starts_with(&format!("m{m}.grad.")))
        .count();
    assert_eq!(
        ps.len(),
        n_fixture,
        "{tag}: parameter count differs from the oracle's"
    );
    assert_eq!(
        n_fixture,
        fx.meta["generator"]["params"].as_u64().unwrap() as usize
    );
    eprintln!(
        "{tag}: x_m {e_xm:.2e}, x_next {e_xnext:.2e}, scores {e_scores:.2e}, loss {e_loss:.2e}, \
         mean score {e_mean:.2e}, worst of {} gradients {:.2e} ({})",
        ps.len(),
        worst.0,
        worst.1
    );
}

/// m = 0: the first step (order-1 predictor, no corrector, no history).
#[test]
fn prfl_step_m0_matches_pytorch() {
    check(0, false);
}

/// m = 3: a rollout of three steps, then an order-2 corrector and order-2 predictor whose
/// `output_coefficient` includes the corrector's path.
#[test]
fn prfl_step_m3_matches_pytorch() {
    check(3, false);
}

/// The same with per-block activation recompute in the generator's backward.
#[test]
fn prfl_step_m3_recompute_matches_pytorch() {
    check(3, true);
}
