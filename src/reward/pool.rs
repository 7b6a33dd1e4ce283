//! Learned-query attention pooling (method.md section 3): `Q` learned queries attend over all `L`
//! feature tokens of a sample with a standard multi-head attention (biased q/k/v in-projections
//! and an out-projection, no dropout), and the query is added back ("return_type = query"):
//!
//! ```text
//! per_query[b, i] = out_proj(Attn(q_proj(query[i]), k_proj(X[b]), v_proj(X[b]))) + query[i]
//! pooled[b]       = mean_i per_query[b, i]          (i = 0..Q)
//! ```
//!
//! With the method's single query the mean is the identity. With `Q > 1` the `Q` pooled vectors
//! are *averaged*: the head after the pooling takes one `D`-vector per sample, averaging keeps its
//! scale independent of `Q` (a concatenation would change the MLP's input width), and it is the
//! choice the oracle (`tools/oracle/make_reward_fixtures.py`) implements.
//!
//! Parameters (torch's packed `in_proj_weight [3D, D]` split into its q/k/v chunks):
//! `{prefix}.query [Q, D]`, `{prefix}.{q,k,v,out}_proj.{weight [D, D], bias [D]}`.

use crate::backend::{AttnShape, Backend, BroadcastShape, Qkv};
use crate::model::layers::Linear;
use crate::model::params::{Backprop, Grads, ParamStore};
use crate::{Error, Result};

/// A resolved attention-pooling layer (parameter indices into a [`ParamStore`]).
#[derive(Clone, Copy, Debug)]
pub struct AttnPool {
    /// `{prefix}.query`, `[queries, dim]`.
    pub query: usize,
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub out_proj: Linear,
    pub dim: usize,
    pub heads: usize,
    pub queries: usize,
}

/// What [`AttnPool::backward`] reads, produced by [`AttnPool::forward`].
pub struct PoolActs<B: Backend> {
    batch: usize,
    tokens: usize,
    /// The features `[B*L, D]` (the k/v projections' input).
    x: B::Buf,
    /// Projected queries replicated per sample, `[B*Q, D]`.
    q: B::Buf,
    k: B::Buf,
    v: B::Buf,
    /// Attention output before the out-projection, `[B*Q, D]`.
    attn: B::Buf,
    lse: B::Buf,
}

impl<B: Backend> PoolActs<B> {
    pub fn batch(&self) -> usize {
        self.batch
    }

    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Bytes held by the saved activations.
    pub fn bytes(&self, be: &B) -> usize {
        [&self.x, &self.q, &self.k, &self.v, &self.attn, &self.lse]
            .into_iter()
            .map(|b| be.buf_bytes(b))
            .sum()
    }
}

/// Fails with [`Error::ShapeMismatch`] unless parameter `id` has shape `expected`.
pub(crate) fn check_shape<B: Backend>(
    ps: &ParamStore<B>,
    id: usize,
    expected: &[usize],
) -> Result<()> {
    if ps.shape(id) == expected {
        Ok(())
    } else {
        Err(Error::ShapeMismatch {
            name: ps.name(id).to_string(),
            got: ps.shape(id).to_vec(),
            expected: expected.to_vec(),
        })
    }
}

impl AttnPool {
    /// Resolves `{prefix}.query` and the four projections and checks their shapes; `dim` and the
    /// number of queries are read from `{prefix}.query`.
    pub fn resolve<B: Backend>(ps: &ParamStore<B>, prefix: &str, heads: usize) -> Result<Self> {
        let query = ps.id(&format!("{prefix}.query"))?;
        let qshape = ps.shape(query);
        if qshape.len() != 2 || qshape[0] == 0 || qshape[1] == 0 {
            return Err(Error::Config(format!(
                "`{prefix}.query` must be [queries, dim], got {qshape:?}"
            )));
        }
        let (queries, dim) = (qshape[0], qshape[1]);
        if heads == 0 || dim % heads != 0 {
            return Err(Error::Config(format!(
                "pooling width {dim} is not divisible by {heads} heads"
            )));
        }
        let proj = |name: &str| -> Result<Linear> {
            let l = Linear::resolve(ps, &format!("{prefix}.{name}"))?;
            check_shape(ps, l.w, &[dim, dim])?;
            check_shape(ps, l.b, &[dim])?;
            Ok(l)
        };
        Ok(AttnPool {
            query,
            q_proj: proj("q_proj")?,
            k_proj: proj("k_proj")?,
            v_proj: proj("v_proj")?,
            out_proj: proj("out_proj")?,
            dim,
            heads,
            queries,
        })
    }

    fn attn_shape(&self, batch: usize, tokens: usize) -> AttnShape {
        AttnShape {
            batch,
            lq: self.queries,
            lk: tokens,
            heads: self.heads,
            head_dim: self.dim / self.heads,
        }
    }

    /// Pools `x: [batch * tokens, dim]` (sample-major) into `[batch, dim]`. Takes the features by
    /// value because the backward pass needs them (as [`crate::model::block::Block::forward`]).
    pub fn forward<B: Backend>(
        &self,
        be: &B,
        ps: &ParamStore<B>,
        x: B::Buf,
        batch: usize,
        tokens: usize,
    ) -> (B::Buf, PoolActs<B>) {
        let (d, nq) = (self.dim, self.queries);
        let n = batch * tokens;
        assert_eq!(
            be.len(&x),
            n * d,
            "pooling input is not [batch * tokens, dim]"
        );
        assert!(tokens > 0, "pooling over zero tokens");

        // The queries are shared by every sample: project them once, then lay them out per sample
        // because the attention kernel takes a batched query tensor.
        let qp = self.q_proj.forward(be, ps, ps.vector(self.query), nq);
        let mut q = be.zeros(batch * nq * d);
        for b in 0..batch {
            be.copy_range(&qp, 0, &mut q, b * nq * d, nq * d);
        }
        let k = self.k_proj.forward(be, ps, &x, n);
        let v = self.v_proj.forward(be, ps, &x, n);
        let mut attn = be.zeros(batch * nq * d);
        let mut lse = be.zeros(batch * self.heads * nq);
        let qkv = Qkv {
            q: &q,
            k: &k,
            v: &v,
        };
        be.attention_forward(qkv, self.attn_shape(batch, tokens), &mut attn, &mut lse);
        let o = self.out_proj.forward(be, ps, &attn, batch * nq);

        // Residual query add: per_query[b] = o[b] + query (the table broadcast over samples).
        let mut per_query = be.zeros(batch * nq * d);
        let per_sample = BroadcastShape {
            batch,
            w: nq * d,
            k: 1,
        };
        be.broadcast_add(&o, ps.vector(self.query), per_sample, &mut per_query);
        let pooled = mean_over_queries(be, per_query, batch, nq, d);

        let acts = PoolActs {
            batch,
            tokens,
            x,
            q,
            k,
            v,
            attn,
            lse,
        };
        (pooled, acts)
    }

    /// Backward of [`AttnPool::forward`] from `dpooled: [batch, dim]`: accumulates the gradients
    /// of the trainable pooling parameters and returns `dx: [batch * tokens, dim]`.
    pub fn backward<B: Backend>(
        &self,
        be: &B,
        ps: &ParamStore<B>,
        grads: &mut Grads<B>,
        acts: &PoolActs<B>,
        dpooled: &B::Buf,
    ) -> B::Buf {
        let (d, nq) = (self.dim, self.queries);
        let (batch, tokens) = (acts.batch, acts.tokens);
        let n = batch * tokens;
        assert_eq!(be.len(dpooled), batch * d, "dpooled is not [batch, dim]");

        let dper_query = spread_over_queries(be, dpooled, batch, nq, d);
        let mut bp = Backprop { be, ps, grads };
        // The residual's query gradient; the projection path adds its share below.
        if let Some(dquery) = bp.grads.get_mut(self.query) {
            sum_over_batch(be, &dper_query, batch, nq * d, dquery);
        }
        let dattn = self
            .out_proj
            .backward(&mut bp, &acts.attn, &dper_query, batch * nq);
        drop(dper_query);

        let mut dq = be.zeros(batch * nq * d);
        let mut dk = be.zeros(n * d);
        let mut dv = be.zeros(n * d);
        let qkv = Qkv {
            q: &acts.q,
            k: &acts.k,
            v: &acts.v,
        };
        let dqkv = Qkv {
            q: &mut dq,
            k: &mut dk,
            v: &mut dv,
        };
        let shape = self.attn_shape(batch, tokens);
        be.attention_backward(qkv, &acts.attn, &acts.lse, &dattn, shape, dqkv);
        drop(dattn);

        let mut dx = self.k_proj.backward(&mut bp, &acts.x, &dk, n);
        drop(dk);
        let dx_v = self.v_proj.backward(&mut bp, &acts.x, &dv, n);
        be.add_assign(&mut dx, &dx_v);

        // The per-sample query copies all came from the one projected query table.
        let mut dqp = be.zeros(nq * d);
        sum_over_batch(be, &dq, batch, nq * d, &mut dqp);
        let query = ps.vector(self.query);
        if bp.grads.get(self.query).is_some() {
            let dquery_proj = self.q_proj.backward(&mut bp, query, &dqp, nq);
            if let Some(dquery) = bp.grads.get_mut(self.query) {
                be.add_assign(dquery, &dquery_proj);
            }
        } else {
            // A frozen query table: only the projection's own parameters take a gradient.
            self.q_proj.accumulate_param_grads(&mut bp, query, &dqp, nq);
        }
        dx
    }
}

/// `[batch, q, d]` -> `[batch, d]`, the mean over the `q` rows of each sample.
fn mean_over_queries<B: Backend>(
    be: &B,
    per_query: B::Buf,
    batch: usize,
    q: usize,
    d: usize,
) -> B::Buf {
    if q == 1 {
        return per_query;
    }
    // `broadcast_add_backward` with `k = q` sums the `q` rows of each sample into `dx`; its other
    // output (a sum over samples) is not wanted here and goes to a scratch buffer.
    let mut pooled = be.zeros(batch * d);
    let mut scratch = be.zeros(q * d);
    let queries = BroadcastShape { batch, w: d, k: q };
    be.broadcast_add_backward(&per_query, queries, &mut pooled, &mut scratch);
    be.scale(1.0 / q as f32, &mut pooled);
    pooled
}

/// Backward of [`mean_over_queries`]: `[batch, d]` -> `[batch, q, d]`, each row divided by `q`.
fn spread_over_queries<B: Backend>(
    be: &B,
    dpooled: &B::Buf,
    batch: usize,
    q: usize,
    d: usize,
) -> B::Buf {
    let mut out = be.zeros(batch * q * d);
    if q == 1 {
        be.copy_range(dpooled, 0, &mut out, 0, batch * d);
        return out;
    }
    // `broadcast_add` with `k = q` and a zero table repeats each sample's row `q` times.
    let zero_table = be.zeros(q * d);
    let queries = BroadcastShape { batch, w: d, k: q };
    be.broadcast_add(dpooled, &zero_table, queries, &mut out);
    be.scale(1.0 / q as f32, &mut out);
    out
}

/// `dst[j] += sum_b src[b, j]` for `src: [batch, row]`.
fn sum_over_batch<B: Backend>(be: &B, src: &B::Buf, batch: usize, row: usize, dst: &mut B::Buf) {
    // `broadcast_add_backward` with one sample of `batch` blocks: its `dx` is the sum over the
    // blocks; its `dtable` output is a copy of `src` and is discarded.
    let mut scratch = be.zeros(batch * row);
    let blocks = BroadcastShape {
        batch: 1,
        w: row,
        k: batch,
    };
    be.broadcast_add_backward(src, blocks, dst, &mut scratch);
}
