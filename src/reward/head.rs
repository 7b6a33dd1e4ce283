//! The PAVRM reward head (method.md section 3): attention pooling of the backbone's features
//! followed by an MLP `D -> h0 -> ReLU -> h1 -> ReLU -> 1` that gives one logit per sample
//! (`score = sigmoid(logit)`; the losses in [`super::loss`] take the logits).
//!
//! Parameter names (one namespace next to the backbone's `blocks.*`): the pooling's `pool.*` (see
//! [`super::pool`]) and `mlp.{0,2,4}.{weight,bias}`, the indices of the layers inside torch's
//! `nn.Sequential(Linear, ReLU, Linear, ReLU, Linear)`.

use std::collections::BTreeMap;

use super::pool::{check_shape, AttnPool, PoolActs};
use crate::backend::Backend;
use crate::model::layers::{activate, activate_backward, Linear};
use crate::model::params::{Backprop, Grads, ParamStore};
use crate::schedule::rng::Rng;
use crate::tensor::HostTensor;
use crate::{Error, Result};

/// Prefix of the pooling parameters.
pub const POOL_PREFIX: &str = "pool";
/// Names of the three MLP layers.
pub const MLP_LAYERS: [&str; 3] = ["mlp.0", "mlp.2", "mlp.4"];

/// Hyper-parameters of the head that the parameter shapes alone do not fix (`heads`) or that
/// [`init_head_params`] needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RewardHeadConfig {
    /// Attention heads of the pooling (`dim` must be divisible by it).
    pub heads: usize,
    /// Learned queries; with more than one the pooled vectors are averaged.
    pub queries: usize,
    /// Widths of the two hidden MLP layers.
    pub hidden: [usize; 2],
}

impl Default for RewardHeadConfig {
    /// The method's head: 8 heads, 1 query, MLP 1024 -> 512.
    fn default() -> Self {
        RewardHeadConfig {
            heads: 8,
            queries: 1,
            hidden: [1024, 512],
        }
    }
}

/// A resolved reward head (parameter indices into a [`ParamStore`]).
#[derive(Clone, Copy, Debug)]
pub struct RewardHead {
    pub pool: AttnPool,
    pub fc0: Linear,
    pub fc1: Linear,
    pub fc2: Linear,
}

/// What [`RewardHead::backward`] reads, produced by [`RewardHead::forward`].
pub struct HeadActs<B: Backend> {
    pool: PoolActs<B>,
    pooled: B::Buf,
    /// Pre-activations (for the ReLU backward) and activations (the next layer's input).
    h0: B::Buf,
    a0: B::Buf,
    h1: B::Buf,
    a1: B::Buf,
}

impl<B: Backend> HeadActs<B> {
    /// Bytes held by the saved activations.
    pub fn bytes(&self, be: &B) -> usize {
        self.pool.bytes(be)
            + [&self.pooled, &self.h0, &self.a0, &self.h1, &self.a1]
                .into_iter()
                .map(|b| be.buf_bytes(b))
                .sum::<usize>()
    }
}

impl RewardHead {
    /// Resolves `pool.*` and `mlp.{0,2,4}.*` and checks every shape against `cfg`.
    pub fn resolve<B: Backend>(ps: &ParamStore<B>, cfg: &RewardHeadConfig) -> Result<Self> {
        let pool = AttnPool::resolve(ps, POOL_PREFIX, cfg.heads)?;
        if pool.queries != cfg.queries {
            return Err(Error::ShapeMismatch {
                name: ps.name(pool.query).to_string(),
                got: ps.shape(pool.query).to_vec(),
                expected: vec![cfg.queries, pool.dim],
            });
        }
        let widths = [pool.dim, cfg.hidden[0], cfg.hidden[1], 1];
        let layer = |i: usize| -> Result<Linear> {
            let l = Linear::resolve(ps, MLP_LAYERS[i])?;
            check_shape(ps, l.w, &[widths[i + 1], widths[i]])?;
            check_shape(ps, l.b, &[widths[i + 1]])?;
            Ok(l)
        };
        let (fc0, fc1, fc2) = (layer(0)?, layer(1)?, layer(2)?);
        Ok(RewardHead {
            pool,
            fc0,
            fc1,
            fc2,
        })
    }

    /// Feature width `D`.
    pub fn dim(&self) -> usize {
        self.pool.dim
    }

    /// The configuration these parameters realise.
    pub fn config(&self) -> RewardHeadConfig {
        RewardHeadConfig {
            heads: self.pool.heads,
            queries: self.pool.queries,
            hidden: [self.fc0.n_out, self.fc1.n_out],
        }
    }

    /// Scores `x: [batch * tokens, dim]` (sample-major backbone features): returns the logits
    /// `[batch]` and the saved activations.
    pub fn forward<B: Backend>(
        &self,
        be: &B,
        ps: &ParamStore<B>,
        x: B::Buf,
        batch: usize,
        tokens: usize,
    ) -> (B::Buf, HeadActs<B>) {
        let (pooled, pool) = self.pool.forward(be, ps, x, batch, tokens);
        let h0 = self.fc0.forward(be, ps, &pooled, batch);
        let a0 = activate(be, &h0, B::relu_forward);
        let h1 = self.fc1.forward(be, ps, &a0, batch);
        let a1 = activate(be, &h1, B::relu_forward);
        // `[batch, 1]` is laid out exactly as `[batch]`.
        let logits = self.fc2.forward(be, ps, &a1, batch);
        let acts = HeadActs {
            pool,
            pooled,
            h0,
            a0,
            h1,
            a1,
        };
        (logits, acts)
    }

    /// Backward of [`RewardHead::forward`] from `dlogits: [batch]`: accumulates the gradients of
    /// the trainable head parameters and returns `dx: [batch * tokens, dim]`.
    pub fn backward<B: Backend>(
        &self,
        be: &B,
        ps: &ParamStore<B>,
        grads: &mut Grads<B>,
        acts: &HeadActs<B>,
        dlogits: &B::Buf,
    ) -> B::Buf {
        let batch = acts.pool.batch();
        assert_eq!(be.len(dlogits), batch, "dlogits is not [batch]");
        let mut bp = Backprop { be, ps, grads };
        let da1 = self.fc2.backward(&mut bp, &acts.a1, dlogits, batch);
        let dh1 = activate_backward(be, &acts.h1, &da1, B::relu_backward);
        let da0 = self.fc1.backward(&mut bp, &acts.a0, &dh1, batch);
        let dh0 = activate_backward(be, &acts.h0, &da0, B::relu_backward);
        let dpooled = self.fc0.backward(&mut bp, &acts.pooled, &dh0, batch);
        self.pool.backward(be, ps, bp.grads, &acts.pool, &dpooled)
    }
}

/// `n` draws from `U(-bound, bound)`.
fn uniform(rng: &mut Rng, n: usize, bound: f32) -> Vec<f32> {
    (0..n)
        .map(|_| (2.0 * rng.uniform_f32() - 1.0) * bound)
        .collect()
}

/// torch's `xavier_uniform_` bound for a `[fan_out, fan_in]` matrix.
fn xavier_bound(fan_in: usize, fan_out: usize) -> f32 {
    (6.0 / (fan_in + fan_out) as f32).sqrt()
}

/// Fresh head parameters (method.md section 3), drawn in a fixed order from `seed`:
/// - `pool.query [queries, dim]`: xavier_uniform over the `[queries, dim]` matrix;
/// - `pool.{q,k,v}_proj.weight`: as torch's `MultiheadAttention`, which applies xavier_uniform to
///   the packed `[3 dim, dim]` in-projection (so the bound is `sqrt(6 / (4 dim))`, not that of a
///   square matrix); `pool.out_proj.weight`: torch's `nn.Linear` default that the MHA keeps,
///   `U(-1/sqrt(dim), 1/sqrt(dim))`; all four biases zero;
/// - `mlp.{0,2,4}`: xavier_uniform weights, zero biases.
///
/// Panics if `dim` is not divisible by `heads` or a size is zero (a programming error: the
/// configuration is fixed by the caller).
pub fn init_head_params(
    dim: usize,
    heads: usize,
    queries: usize,
    hidden: [usize; 2],
    seed: u64,
) -> BTreeMap<String, HostTensor> {
    assert!(
        heads > 0 && dim % heads == 0,
        "dim {dim} not divisible by {heads} heads"
    );
    assert!(
        queries > 0 && hidden.iter().all(|&h| h > 0),
        "zero-sized head"
    );
    let mut rng = Rng::seed_from_u64(seed);
    let mut out = BTreeMap::new();
    let mut put = |name: String, shape: Vec<usize>, data: Vec<f32>| {
        out.insert(
            name,
            HostTensor::from_f32(shape, data).expect("shape matches data"),
        );
    };

    let p = POOL_PREFIX;
    put(
        format!("{p}.query"),
        vec![queries, dim],
        uniform(&mut rng, queries * dim, xavier_bound(dim, queries)),
    );
    let in_bound = xavier_bound(dim, 3 * dim);
    for name in ["q_proj", "k_proj", "v_proj"] {
        put(
            format!("{p}.{name}.weight"),
            vec![dim, dim],
            uniform(&mut rng, dim * dim, in_bound),
        );
    }
    put(
        format!("{p}.out_proj.weight"),
        vec![dim, dim],
        uniform(&mut rng, dim * dim, 1.0 / (dim as f32).sqrt()),
    );
    for name in ["q_proj", "k_proj", "v_proj", "out_proj"] {
        put(format!("{p}.{name}.bias"), vec![dim], vec![0.0; dim]);
    }

    let widths = [dim, hidden[0], hidden[1], 1];
    for (i, name) in MLP_LAYERS.iter().enumerate() {
        let (n_in, n_out) = (widths[i], widths[i + 1]);
        put(
            format!("{name}.weight"),
            vec![n_out, n_in],
            uniform(&mut rng, n_out * n_in, xavier_bound(n_in, n_out)),
        );
        put(format!("{name}.bias"), vec![n_out], vec![0.0; n_out]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;

    fn max_abs(t: &HostTensor) -> f32 {
        t.to_f32().iter().fold(0.0f32, |m, v| m.max(v.abs()))
    }

    #[test]
    fn init_has_the_documented_shapes_bounds_and_zero_biases() {
        let (dim, queries, hidden) = (16, 2, [12, 8]);
        let p = init_head_params(dim, 4, queries, hidden, 3);
        assert_eq!(p.len(), 1 + 8 + 6);
        assert_eq!(p["pool.query"].shape, vec![queries, dim]);
        assert_eq!(p["mlp.0.weight"].shape, vec![12, dim]);
        assert_eq!(p["mlp.2.weight"].shape, vec![8, 12]);
        assert_eq!(p["mlp.4.weight"].shape, vec![1, 8]);
        for (name, t) in &p {
            if name.ends_with(".bias") {
                assert_eq!(max_abs(t), 0.0, "{name}");
            } else {
                assert!(max_abs(t) > 0.0, "{name}");
            }
        }
        let within = |name: &str, bound: f32| {
            let m = max_abs(&p[name]);
            // Below the bound, and not drawn from a much narrower range either.
            assert!(
                m <= bound && m > 0.8 * bound,
                "{name}: max {m}, bound {bound}"
            );
        };
        within("pool.query", (6.0 / (dim + queries) as f32).sqrt());
        within("pool.k_proj.weight", (6.0 / (4 * dim) as f32).sqrt());
        within("pool.out_proj.weight", 1.0 / (dim as f32).sqrt());
        within("mlp.0.weight", (6.0 / (dim + 12) as f32).sqrt());

        // Deterministic in the seed.
        let again = init_head_params(dim, 4, queries, hidden, 3);
        let other = init_head_params(dim, 4, queries, hidden, 4);
        assert_eq!(p["mlp.2.weight"].to_f32(), again["mlp.2.weight"].to_f32());
        assert_ne!(p["mlp.2.weight"].to_f32(), other["mlp.2.weight"].to_f32());
    }

    #[test]
    fn resolve_checks_the_configuration() {
        let be = Cpu;
        let cfg = RewardHeadConfig {
            heads: 4,
            queries: 2,
            hidden: [12, 8],
        };
        let ps = ParamStore::from_host(&be, &init_head_params(16, 4, 2, [12, 8], 0), None);
        let head = RewardHead::resolve(&ps, &cfg).unwrap();
        assert_eq!(head.config(), cfg);
        assert_eq!(head.dim(), 16);

        let bad = [
            RewardHeadConfig { heads: 3, ..cfg },
            RewardHeadConfig { queries: 1, ..cfg },
            RewardHeadConfig {
                hidden: [12, 9],
                ..cfg
            },
        ];
        for c in bad {
            assert!(RewardHead::resolve(&ps, &c).is_err(), "{c:?} accepted");
        }
        assert_eq!(RewardHeadConfig::default().hidden, [1024, 512]);
    }
}
