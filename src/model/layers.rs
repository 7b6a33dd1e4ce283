//! Parameterised layers used by the DiT, each a pair of forward/backward functions over a
//! [`Backend`]. They hold parameter *indices* into a [`ParamStore`], so the same layer description
//! serves the f32 master weights, a bf16 copy and the gradient buffers.

use super::params::{Grads, ParamStore};
use crate::backend::Backend;
use crate::Result;

/// `y = x W^T + b` with `W: [out, in]`, optionally plus a low-rank adapter
/// `scale * (x A^T) B^T` (LoRA; `A: [r, in]`, `B: [out, r]`).
#[derive(Clone, Copy, Debug)]
pub struct Linear {
    pub w: usize,
    pub b: usize,
    pub n_in: usize,
    pub n_out: usize,
    pub lora: Option<LoraAdapter>,
}

/// Parameter indices and scale (`alpha / rank`) of a LoRA adapter on a [`Linear`].
#[derive(Clone, Copy, Debug)]
pub struct LoraAdapter {
    pub a: usize,
    pub b: usize,
    pub rank: usize,
    pub scale: f32,
}

impl Linear {
    /// Resolves `{prefix}.weight` and `{prefix}.bias`.
    pub fn resolve<B: Backend>(ps: &ParamStore<B>, prefix: &str) -> Result<Self> {
        let w = ps.id(&format!("{prefix}.weight"))?;
        let b = ps.id(&format!("{prefix}.bias"))?;
        let shape = ps.shape(w);
        let n_out = shape[0];
        let n_in = ps.numel(w) / n_out.max(1);
        Ok(Linear {
            w,
            b,
            n_in,
            n_out,
            lora: None,
        })
    }

    /// `x: [n, in]` -> `[n, out]`.
    pub fn forward<B: Backend>(&self, be: &B, ps: &ParamStore<B>, x: &B::Buf, n: usize) -> B::Buf {
        let mut y = be.zeros(n * self.n_out);
        be.linear_forward(x, n, ps.matrix(self.w), Some(ps.vector(self.b)), &mut y);
        if let Some(lo) = self.lora {
            let h = lora_hidden(be, ps, &lo, x, n);
            let mut up = be.zeros(n * self.n_out);
            be.linear_forward(&h, n, ps.matrix(lo.b), None, &mut up);
            be.axpy(lo.scale, &up, &mut y);
        }
        y
    }

    /// Accumulates the weight and bias gradients (when the layer is trainable) and returns the
    /// input gradient when `need_dx`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<B: Backend>(
        &self,
        be: &B,
        ps: &ParamStore<B>,
        grads: &mut Grads<B>,
        x: &B::Buf,
        dy: &B::Buf,
        n: usize,
        need_dx: bool,
    ) -> Option<B::Buf> {
        let (dw, db) = grads.pair_mut(self.w, self.b);
        if let Some(dw) = dw {
            be.linear_backward_weight(dy, x, n, self.n_in, self.n_out, dw, db);
        } else if let Some(db) = db {
            // A frozen weight with a trainable bias is unusual but legal: only the bias moves.
            let mut scratch = be.zeros(self.n_out * self.n_in);
            be.linear_backward_weight(dy, x, n, self.n_in, self.n_out, &mut scratch, Some(db));
        }
        let mut dx = need_dx.then(|| {
            let mut dx = be.zeros(n * self.n_in);
            be.linear_backward_input(dy, n, ps.matrix(self.w), &mut dx);
            dx
        });
        if let Some(lo) = self.lora {
            self.lora_backward(be, ps, grads, &lo, x, dy, n, dx.as_mut());
        }
        dx
    }

    /// The adapter's share of the backward pass: `dB += s dy^T h`, `dA += (s dy B)^T x` and
    /// `dx += (s dy B) A`, with `h = x A^T` recomputed (it is `n x r`, cheaper to redo than to keep).
    #[allow(clippy::too_many_arguments)]
    fn lora_backward<B: Backend>(
        &self,
        be: &B,
        ps: &ParamStore<B>,
        grads: &mut Grads<B>,
        lo: &LoraAdapter,
        x: &B::Buf,
        dy: &B::Buf,
        n: usize,
        dx: Option<&mut B::Buf>,
    ) {
        let mut dys = be.zeros(n * self.n_out);
        be.axpy(lo.scale, dy, &mut dys);
        if let Some(db) = grads.get_mut(lo.b) {
            let h = lora_hidden(be, ps, lo, x, n);
            be.linear_backward_weight(&dys, &h, n, lo.rank, self.n_out, db, None);
        }
        let mut dh = be.zeros(n * lo.rank);
        be.linear_backward_input(&dys, n, ps.matrix(lo.b), &mut dh);
        if let Some(da) = grads.get_mut(lo.a) {
            be.linear_backward_weight(&dh, x, n, self.n_in, lo.rank, da, None);
        }
        if let Some(dx) = dx {
            let mut dxl = be.zeros(n * self.n_in);
            be.linear_backward_input(&dh, n, ps.matrix(lo.a), &mut dxl);
            be.add_assign(dx, &dxl);
        }
    }
}

/// `h = x A^T`, `[n, r]`.
fn lora_hidden<B: Backend>(
    be: &B,
    ps: &ParamStore<B>,
    lo: &LoraAdapter,
    x: &B::Buf,
    n: usize,
) -> B::Buf {
    let mut h = be.zeros(n * lo.rank);
    be.linear_forward(x, n, ps.matrix(lo.a), None, &mut h);
    h
}

/// Saved statistics of a LayerNorm call.
pub struct NormStats<B: Backend> {
    pub mean: B::Buf,
    pub rstd: B::Buf,
}

/// LayerNorm over the last dimension, optionally affine.
#[derive(Clone, Copy, Debug)]
pub struct LayerNorm {
    pub affine: Option<(usize, usize)>,
    pub d: usize,
    pub eps: f32,
}

impl LayerNorm {
    pub fn plain(d: usize, eps: f32) -> Self {
        LayerNorm {
            affine: None,
            d,
            eps,
        }
    }

    pub fn resolve<B: Backend>(ps: &ParamStore<B>, prefix: &str, eps: f32) -> Result<Self> {
        let w = ps.id(&format!("{prefix}.weight"))?;
        let b = ps.id(&format!("{prefix}.bias"))?;
        Ok(LayerNorm {
            affine: Some((w, b)),
            d: ps.numel(w),
            eps,
        })
    }

    pub fn forward<B: Backend>(
        &self,
        be: &B,
        ps: &ParamStore<B>,
        x: &B::Buf,
        rows: usize,
    ) -> (B::Buf, NormStats<B>) {
        let mut y = be.zeros(rows * self.d);
        let mut mean = be.zeros(rows);
        let mut rstd = be.zeros(rows);
        let (w, b) = match self.affine {
            Some((w, b)) => (Some(ps.vector(w)), Some(ps.vector(b))),
            None => (None, None),
        };
        be.layernorm_forward(
            x, rows, self.d, w, b, self.eps, &mut y, &mut mean, &mut rstd,
        );
        (y, NormStats { mean, rstd })
    }

    #[allow(clippy::too_many_arguments)]
    pub fn backward<B: Backend>(
        &self,
        be: &B,
        ps: &ParamStore<B>,
        grads: &mut Grads<B>,
        x: &B::Buf,
        stats: &NormStats<B>,
        dy: &B::Buf,
        rows: usize,
    ) -> B::Buf {
        let mut dx = be.zeros(rows * self.d);
        match self.affine {
            Some((w, b)) => {
                let (dw, db) = grads.pair_mut(w, b);
                be.layernorm_backward(
                    dy,
                    x,
                    rows,
                    self.d,
                    Some(ps.vector(w)),
                    &stats.mean,
                    &stats.rstd,
                    &mut dx,
                    dw,
                    db,
                );
            }
            None => be.layernorm_backward(
                dy,
                x,
                rows,
                self.d,
                None,
                &stats.mean,
                &stats.rstd,
                &mut dx,
                None,
                None,
            ),
        }
        dx
    }
}

/// RMSNorm with a learned weight (the q/k norms; they span all heads, width D).
#[derive(Clone, Copy, Debug)]
pub struct RmsNorm {
    pub w: usize,
    pub d: usize,
    pub eps: f32,
}

impl RmsNorm {
    pub fn resolve<B: Backend>(ps: &ParamStore<B>, name: &str, eps: f32) -> Result<Self> {
        let w = ps.id(&format!("{name}.weight"))?;
        Ok(RmsNorm {
            w,
            d: ps.numel(w),
            eps,
        })
    }

    /// Returns the output and the per-row 1/rms.
    pub fn forward<B: Backend>(
        &self,
        be: &B,
        ps: &ParamStore<B>,
        x: &B::Buf,
        rows: usize,
    ) -> (B::Buf, B::Buf) {
        let mut y = be.zeros(rows * self.d);
        let mut rstd = be.zeros(rows);
        be.rmsnorm_forward(
            x,
            rows,
            self.d,
            ps.vector(self.w),
            self.eps,
            &mut y,
            &mut rstd,
        );
        (y, rstd)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn backward<B: Backend>(
        &self,
        be: &B,
        ps: &ParamStore<B>,
        grads: &mut Grads<B>,
        x: &B::Buf,
        rstd: &B::Buf,
        dy: &B::Buf,
        rows: usize,
    ) -> B::Buf {
        let mut dx = be.zeros(rows * self.d);
        let weight = ps.vector(self.w);
        match grads.get_mut(self.w) {
            Some(dw) => be.rmsnorm_backward(dy, x, rows, self.d, weight, rstd, &mut dx, dw),
            None => {
                let mut scratch = be.zeros(self.d);
                be.rmsnorm_backward(dy, x, rows, self.d, weight, rstd, &mut dx, &mut scratch);
            }
        }
        dx
    }
}

/// Elementwise activation forward into a new buffer.
pub fn activate<B: Backend>(be: &B, x: &B::Buf, f: impl Fn(&B, &B::Buf, &mut B::Buf)) -> B::Buf {
    let mut y = be.zeros(be.len(x));
    f(be, x, &mut y);
    y
}

/// Elementwise activation backward into a new buffer.
pub fn activate_backward<B: Backend>(
    be: &B,
    x: &B::Buf,
    dy: &B::Buf,
    f: impl Fn(&B, &B::Buf, &B::Buf, &mut B::Buf),
) -> B::Buf {
    let mut dx = be.zeros(be.len(x));
    f(be, x, dy, &mut dx);
    dx
}
