//! The PAVRM reward head (`prfl::reward`) against the PyTorch oracle
//! (`tools/oracle/make_reward_fixtures.py`: `nn.MultiheadAttention` pooling + MLP, BCE and
//! Bradley-Terry losses): logits within 1e-5 and every gradient (features and each parameter)
//! within 1e-4, as max|a - b| / max|b| per tensor. Plus finite-difference checks of the pooling
//! and head backward passes and the frozen-parameter contract.

use std::collections::BTreeMap;
use std::path::PathBuf;

use prfl::backend::cpu::Cpu;
use prfl::backend::Backend;
use prfl::model::params::{Grads, ParamStore};
use prfl::reward::head::{init_head_params, RewardHead, RewardHeadConfig};
use prfl::reward::loss::{bce_with_logits, bradley_terry};
use prfl::reward::pool::AttnPool;
use prfl::safetensors::read_safetensors;
use prfl::tensor::HostTensor;
use prfl::testutil::{assert_grad_close, max_rel_err, numeric_grad, TestRng};

type Tensors = BTreeMap<String, HostTensor>;

const FWD_TOL: f32 = 1e-5;
const GRAD_TOL: f32 = 1e-4;
/// Gradients that vanish in exact arithmetic (see the oracle script): the key bias shifts every
/// score of a query equally, and Bradley-Terry pairs add `+g` and `-g` to the last bias. They are
/// compared in absolute terms, against the loss's largest gradient entry.
const ZERO_GRADS: [&str; 3] = [
    "bce.grad.pool.k_proj.bias",
    "bt.grad.pool.k_proj.bias",
    "bt.grad.mlp.4.bias",
];

struct Fixture {
    name: &'static str,
    t: Tensors,
    cfg: RewardHeadConfig,
    batch: usize,
    tokens: usize,
}

impl Fixture {
    fn load(name: &'static str) -> Fixture {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join(format!("tests/fixtures/reward/{name}.safetensors"));
        let t = read_safetensors(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run tools/oracle/make_reward_fixtures.py)",
                path.display()
            )
        });
        // The dimensions the shapes do not carry (heads) are in the header's metadata.
        let bytes = std::fs::read(&path).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let case: serde_json::Value =
            serde_json::from_str(&meta.metadata().as_ref().unwrap()["case"]).unwrap();
        let get = |k: &str| case[k].as_u64().unwrap() as usize;
        let hidden = &case["hidden"];
        let cfg = RewardHeadConfig {
            heads: get("heads"),
            queries: get("queries"),
            hidden: [
                hidden[0].as_u64().unwrap() as usize,
                hidden[1].as_u64().unwrap() as usize,
            ],
        };
        Fixture {
            name,
            t,
            cfg,
            batch: get("batch"),
            tokens: get("tokens"),
        }
    }

    fn params(&self) -> Tensors {
        self.t
            .iter()
            .filter(|(k, _)| k.starts_with("pool.") || k.starts_with("mlp."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn f32s(&self, name: &str) -> Vec<f32> {
        self.t
            .get(name)
            .unwrap_or_else(|| panic!("{}: no tensor `{name}`", self.name))
            .to_f32()
    }

    /// The Bradley-Terry pairs: `(a index, b index, a wins)`.
    fn pairs(&self) -> Vec<(usize, usize, bool)> {
        let a = self.f32s("bt.a_idx");
        let b = self.f32s("bt.b_idx");
        let w = self.f32s("bt.a_wins");
        (0..a.len())
            .map(|i| (a[i] as usize, b[i] as usize, w[i] == 1.0))
            .collect()
    }
}

/// One forward and backward of the head on the CPU backend; `loss` maps the logits to the loss
/// and its logit gradients. Returns the logits, the loss, dX and the gradients by name.
struct Run {
    logits: Vec<f32>,
    loss: f64,
    dx: Vec<f32>,
    grads: BTreeMap<String, Option<Vec<f32>>>,
}

fn run(
    params: &Tensors,
    cfg: &RewardHeadConfig,
    x: &[f32],
    batch: usize,
    tokens: usize,
    trainable: impl Fn(&str) -> bool,
    loss: impl Fn(&[f32]) -> (f64, Vec<f32>),
) -> Run {
    let be = Cpu;
    let ps = ParamStore::from_host(&be, params, None);
    let head = RewardHead::resolve(&ps, cfg).unwrap();
    let mut grads = Grads::new(&be, &ps, trainable);
    let (logits, acts) = head.forward(&be, &ps, be.upload(x), batch, tokens);
    let logits = be.download(&logits);
    let (loss, dlogits) = loss(&logits);
    let dx = be.download(&head.backward(&be, &ps, &mut grads, &acts, &be.upload(&dlogits)));
    let grads = (0..ps.len())
        .map(|i| (ps.name(i).to_string(), grads.get(i).map(|g| be.download(g))))
        .collect();
    Run {
        logits,
        loss,
        dx,
        grads,
    }
}

fn bce_loss(labels: Vec<f32>) -> impl Fn(&[f32]) -> (f64, Vec<f32>) {
    move |logits| bce_with_logits(logits, &labels)
}

/// The Bradley-Terry loss over index pairs of the batch, with the pair gradients scattered back
/// onto the per-sample logits (a sample in several pairs sums its contributions).
fn bt_loss(pairs: Vec<(usize, usize, bool)>) -> impl Fn(&[f32]) -> (f64, Vec<f32>) {
    move |logits| {
        let a: Vec<f32> = pairs.iter().map(|p| logits[p.0]).collect();
        let b: Vec<f32> = pairs.iter().map(|p| logits[p.1]).collect();
        let wins: Vec<bool> = pairs.iter().map(|p| p.2).collect();
        let (loss, da, db) = bradley_terry(&a, &b, &wins);
        let mut d = vec![0.0; logits.len()];
        for (i, p) in pairs.iter().enumerate() {
            d[p.0] += da[i];
            d[p.1] += db[i];
        }
        (loss, d)
    }
}

/// Compares a run with the fixture's `{kind}.*` loss and gradients; returns the worst gradient
/// error.
fn check_against_fixture(f: &Fixture, kind: &str, r: &Run) -> f32 {
    let fwd = max_rel_err(&r.logits, &f.f32s("out.logits"));
    assert!(fwd <= FWD_TOL, "{}: logits relative error {fwd:e}", f.name);
    let want_loss = f.f32s(&format!("{kind}.loss"))[0] as f64;
    let loss_err = ((r.loss - want_loss) / want_loss).abs() as f32;
    assert!(
        loss_err <= FWD_TOL,
        "{}: {kind} loss {} vs {want_loss} ({loss_err:e})",
        f.name,
        r.loss
    );

    let prefix = format!("{kind}.grad.");
    let scale =
        f.t.iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .flat_map(|(_, v)| v.to_f32())
            .fold(0.0f32, |m, g| m.max(g.abs()));
    let mut worst = (0.0f32, String::new());
    let mut checked = 0;
    for (key, want) in f.t.iter().filter(|(k, _)| k.starts_with(&prefix)) {
        let name = &key[prefix.len()..];
        let have = if name == "x" {
            r.dx.clone()
        } else {
            r.grads[name]
                .clone()
                .unwrap_or_else(|| panic!("{}: no gradient for `{name}`", f.name))
        };
        let want = want.to_f32();
        let err = if ZERO_GRADS.contains(&key.as_str()) {
            have.iter().fold(0.0f32, |m, g| m.max(g.abs())) / scale
        } else {
            max_rel_err(&have, &want)
        };
        assert!(
            err <= GRAD_TOL,
            "{}: `{key}` relative error {err:e} > {GRAD_TOL:e}",
            f.name
        );
        if err > worst.0 {
            worst = (err, key.clone());
        }
        checked += 1;
    }
    assert_eq!(
        checked,
        r.grads.len() + 1,
        "{}: the fixture lacks some {kind} gradients",
        f.name
    );
    eprintln!(
        "{} {kind}: logits {fwd:.2e}, loss {loss_err:.2e}, worst gradient {:.2e} ({})",
        f.name, worst.0, worst.1
    );
    worst.0
}

/// Finite differences in f32 around f32 parameters: about 1e-3 of noise.
const FD_TOL: f32 = 1e-2;

const CASES: [&str; 2] = ["pool_mlp", "pool_mlp_q2"];

#[test]
fn oracle_bce_forward_and_gradients() {
    for name in CASES {
        let f = Fixture::load(name);
        let r = run(
            &f.params(),
            &f.cfg,
            &f.f32s("input.x"),
            f.batch,
            f.tokens,
            |_| true,
            bce_loss(f.f32s("input.labels")),
        );
        check_against_fixture(&f, "bce", &r);
    }
}

#[test]
fn oracle_bradley_terry_gradients() {
    for name in CASES {
        let f = Fixture::load(name);
        let r = run(
            &f.params(),
            &f.cfg,
            &f.f32s("input.x"),
            f.batch,
            f.tokens,
            |_| true,
            bt_loss(f.pairs()),
        );
        check_against_fixture(&f, "bt", &r);
    }
}

/// Frozen parameters have no gradient buffer and are skipped; the trainable ones and dX are
/// unchanged (against the oracle too, so a skipped branch cannot hide a wrong dX).
#[test]
fn frozen_parameters_get_no_gradient() {
    let f = Fixture::load("pool_mlp_q2");
    let x = f.f32s("input.x");
    let full = run(
        &f.params(),
        &f.cfg,
        &x,
        f.batch,
        f.tokens,
        |_| true,
        bce_loss(f.f32s("input.labels")),
    );
    // A mix that exercises every skip: the query itself, whole projections, a weight without its
    // bias, and an MLP layer in the middle.
    let frozen = |n: &str| {
        n == "pool.query"
            || n.starts_with("pool.k_proj")
            || n == "pool.v_proj.weight"
            || n.starts_with("mlp.2")
    };
    let trainable_mixes: [&dyn Fn(&str) -> bool; 3] =
        [&|n| !frozen(n), &|_| false, &|n| n == "pool.query"];
    for trainable in trainable_mixes {
        let part = run(
            &f.params(),
            &f.cfg,
            &x,
            f.batch,
            f.tokens,
            trainable,
            bce_loss(f.f32s("input.labels")),
        );
        assert_eq!(part.dx, full.dx, "dX changed when freezing parameters");
        let dx_err = max_rel_err(&part.dx, &f.f32s("bce.grad.x"));
        assert!(dx_err <= GRAD_TOL, "dX vs oracle {dx_err:e}");
        for (name, g) in &part.grads {
            match g {
                None => assert!(!trainable(name), "trainable `{name}` got no gradient"),
                Some(g) => {
                    assert!(trainable(name), "frozen `{name}` got a gradient");
                    assert_eq!(
                        g,
                        full.grads[name].as_ref().unwrap(),
                        "gradient of `{name}` changed"
                    );
                }
            }
        }
    }
}

/// Random non-zero parameters (the init zeroes biases, which would hide bugs).
fn random_head_params(
    dim: usize,
    heads: usize,
    queries: usize,
    hidden: [usize; 2],
    seed: u64,
) -> Tensors {
    let mut rng = TestRng::new(seed);
    init_head_params(dim, heads, queries, hidden, seed)
        .into_iter()
        .map(|(k, t)| {
            let fan_in = if t.shape.len() == 2 { t.shape[1] } else { 1 };
            let scale = if k.ends_with(".bias") {
                0.2
            } else {
                (3.0 / fan_in as f32).sqrt()
            };
            let data = rng.vec(t.numel()).into_iter().map(|u| u * scale).collect();
            (k, HostTensor::from_f32(t.shape.clone(), data).unwrap())
        })
        .collect()
}

/// Asserts the analytic gradient matches the numeric one and keeps the worst relative error.
fn fd_check(which: &str, analytic: &[f32], numeric: &[f32], worst: &mut (f32, String)) {
    assert_grad_close(which, analytic, numeric, FD_TOL);
    let err = max_rel_err(analytic, numeric);
    if err > worst.0 {
        *worst = (err, which.to_string());
    }
}

/// The current value of `which` (a parameter name or "x").
fn value_of(params: &Tensors, x: &[f32], which: &str) -> Vec<f32> {
    if which == "x" {
        x.to_vec()
    } else {
        params[which].to_f32()
    }
}

/// The parameters and features with `which` (a parameter name or "x") replaced by `v`.
fn with_value(params: &Tensors, x: &[f32], which: &str, v: &[f32]) -> (Tensors, Vec<f32>) {
    if which == "x" {
        return (params.clone(), v.to_vec());
    }
    let mut p = params.clone();
    let t = HostTensor::from_f32(params[which].shape.clone(), v.to_vec()).unwrap();
    p.insert(which.to_string(), t);
    (p, x.to_vec())
}

/// The pooling alone (Q = 2, so the mean over queries is covered) against central differences of
/// `sum(pooled * cot)` with respect to the features and every parameter.
#[test]
fn pool_backward_matches_finite_differences() {
    let (dim, heads, queries, batch, tokens) = (8, 2, 2, 2, 5);
    let params: Tensors = random_head_params(dim, heads, queries, [4, 4], 11)
        .into_iter()
        .filter(|(k, _)| k.starts_with("pool."))
        .collect();
    let mut rng = TestRng::new(12);
    let x = rng.vec(batch * tokens * dim);
    let cot = rng.vec(batch * dim);
    let be = Cpu;
    let value = |p: &Tensors, x: &[f32]| -> f64 {
        let ps = ParamStore::from_host(&be, p, None);
        let pool = AttnPool::resolve(&ps, "pool", heads).unwrap();
        let (pooled, _) = pool.forward(&be, &ps, be.upload(x), batch, tokens);
        be.download(&pooled)
            .iter()
            .zip(&cot)
            .map(|(a, b)| *a as f64 * *b as f64)
            .sum()
    };

    let ps = ParamStore::from_host(&be, &params, None);
    let pool = AttnPool::resolve(&ps, "pool", heads).unwrap();
    let mut grads = Grads::new(&be, &ps, |_| true);
    let (_, acts) = pool.forward(&be, &ps, be.upload(&x), batch, tokens);
    let dx = be.download(&pool.backward(&be, &ps, &mut grads, &acts, &be.upload(&cot)));

    let mut worst = (0.0f32, String::new());
    let names: Vec<String> = std::iter::once("x".to_string())
        .chain(params.keys().cloned())
        .collect();
    for which in &names {
        let analytic = if which == "x" {
            dx.clone()
        } else {
            be.download(grads.get(ps.id(which).unwrap()).unwrap())
        };
        let base = value_of(&params, &x, which);
        let numeric = numeric_grad(&base, 1e-2, |v| {
            let (p, xv) = with_value(&params, &x, which, v);
            value(&p, &xv)
        });
        if which == "pool.k_proj.bias" {
            // Identically zero (softmax shift invariance): both sides must be tiny.
            assert!(
                analytic.iter().all(|g| g.abs() < 1e-5),
                "{which}: {analytic:?}"
            );
            assert!(
                numeric.iter().all(|g| g.abs() < 1e-3),
                "{which}: {numeric:?}"
            );
            continue;
        }
        fd_check(which, &analytic, &numeric, &mut worst);
    }
    eprintln!(
        "finite differences: worst relative error {:.2e} ({})",
        worst.0, worst.1
    );
}

/// The whole head (pooling + MLP + BCE) against central differences of the BCE loss.
#[test]
fn head_backward_matches_finite_differences() {
    let (dim, heads, queries, hidden, batch, tokens) = (8, 2, 1, [6, 5], 3, 4);
    let cfg = RewardHeadConfig {
        heads,
        queries,
        hidden,
    };
    let params = random_head_params(dim, heads, queries, hidden, 21);
    let x = TestRng::new(22).vec(batch * tokens * dim);
    let labels = vec![1.0, 0.0, 1.0];
    let r = run(
        &params,
        &cfg,
        &x,
        batch,
        tokens,
        |_| true,
        bce_loss(labels.clone()),
    );

    let mut worst = (0.0f32, String::new());
    let names: Vec<String> = std::iter::once("x".to_string())
        .chain(params.keys().cloned())
        .collect();
    for which in &names {
        if which == "pool.k_proj.bias" {
            continue; // identically zero, checked in the pooling test
        }
        let analytic = if which == "x" {
            r.dx.clone()
        } else {
            r.grads[which].clone().unwrap()
        };
        let base = value_of(&params, &x, which);
        // Central differences are valid only if no ReLU pre-activation crosses zero within one
        // step; with this seed none does (a crossing would show as one entry far off).
        let numeric = numeric_grad(&base, 1e-2, |v| {
            let (p, xv) = with_value(&params, &x, which, v);
            run(
                &p,
                &cfg,
                &xv,
                batch,
                tokens,
                |_| false,
                bce_loss(labels.clone()),
            )
            .loss
        });
        fd_check(which, &analytic, &numeric, &mut worst);
    }
    eprintln!(
        "finite differences: worst relative error {:.2e} ({})",
        worst.0, worst.1
    );
}
