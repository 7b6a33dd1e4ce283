//! Parameterised layers used by the DiT, each a pair of forward/backward functions over a
//! [`Backend`]. They hold parameter *indices* into a [`ParamStore`], so the same layer description
//! serves the f32 master weights, a bf16 copy and the gradient buffers.

use super::params::{Backprop, ParamStore};
use crate::backend::{
    Backend, LayerNormGrads, LayerNormStats, LinearShape, NormAffine, RmsNormGrads, RowShape,
};
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

    /// The layer's product over `n` rows.
    pub fn shape(&self, n: usize) -> LinearShape {
        LinearShape {
            n,
            n_in: self.n_in,
            n_out: self.n_out,
        }
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
    /// input gradient `dx: [n, in]`.
    pub fn backward<B: Backend>(
        &self,
        bp: &mut Backprop<'_, B>,
        x: &B::Buf,
        dy: &B::Buf,
        n: usize,
    ) -> B::Buf {
        self.accumulate_weight_grads(bp, x, dy, n);
        let mut dx = bp.be.zeros(n * self.n_in);
        bp.be
            .linear_backward_input(dy, n, bp.ps.matrix(self.w), &mut dx);
        if let Some(lo) = self.lora {
            self.lora_backward(bp, &lo, x, dy, n, Some(&mut dx));
        }
        dx
    }

    /// The backward pass of a first layer, whose input needs no gradient (the timestep's
    /// sinusoid): accumulates the parameter gradients only, skipping the `dx` product.
    pub fn accumulate_param_grads<B: Backend>(
        &self,
        bp: &mut Backprop<'_, B>,
        x: &B::Buf,
        dy: &B::Buf,
        n: usize,
    ) {
        self.accumulate_weight_grads(bp, x, dy, n);
        if let Some(lo) = self.lora {
            self.lora_backward(bp, &lo, x, dy, n, None);
        }
    }

    /// `dW += dy^T x` and `db += sum dy` for whichever of the two are trainable.
    fn accumulate_weight_grads<B: Backend>(
        &self,
        bp: &mut Backprop<'_, B>,
        x: &B::Buf,
        dy: &B::Buf,
        n: usize,
    ) {
        let be = bp.be;
        let (dw, db) = bp.grads.pair_mut(self.w, self.b);
        if let Some(dw) = dw {
            be.linear_backward_weight(dy, x, self.shape(n), dw, db);
        } else if let Some(db) = db {
            // A frozen weight with a trainable bias is unusual but legal: only the bias moves.
            let mut scratch = be.zeros(self.n_out * self.n_in);
            be.linear_backward_weight(dy, x, self.shape(n), &mut scratch, Some(db));
        }
    }

    /// The adapter's share of the backward pass: `dB += s dy^T h`, `dA += (s dy B)^T x` and
    /// `dx += (s dy B) A`, with `h = x A^T` recomputed (it is `n x r`, cheaper to redo than to keep).
    fn lora_backward<B: Backend>(
        &self,
        bp: &mut Backprop<'_, B>,
        lo: &LoraAdapter,
        x: &B::Buf,
        dy: &B::Buf,
        n: usize,
        dx: Option<&mut B::Buf>,
    ) {
        let (be, ps) = (bp.be, bp.ps);
        let mut dys = be.zeros(n * self.n_out);
        be.axpy(lo.scale, dy, &mut dys);
        if let Some(db) = bp.grads.get_mut(lo.b) {
            let h = lora_hidden(be, ps, lo, x, n);
            let up = LinearShape {
                n,
                n_in: lo.rank,
                n_out: self.n_out,
            };
            be.linear_backward_weight(&dys, &h, up, db, None);
        }
        let mut dh = be.zeros(n * lo.rank);
        be.linear_backward_input(&dys, n, ps.matrix(lo.b), &mut dh);
        if let Some(da) = bp.grads.get_mut(lo.a) {
            let down = LinearShape {
                n,
                n_in: self.n_in,
                n_out: lo.rank,
            };
            be.linear_backward_weight(&dh, x, down, da, None);
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

/// Saved statistics of a LayerNorm call: the backend's [`LayerNormStats`] over this backend's buffers.
pub type NormStats<B> = LayerNormStats<<B as Backend>::Buf>;

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
        let mut stats = NormStats::<B> {
            mean: be.zeros(rows),
            rstd: be.zeros(rows),
        };
        let affine = match self.affine {
            Some((w, b)) => NormAffine {
                weight: Some(ps.vector(w)),
                bias: Some(ps.vector(b)),
            },
            None => NormAffine::none(),
        };
        let shape = RowShape { rows, d: self.d };
        be.layernorm_forward(x, shape, affine, self.eps, &mut y, stats.as_mut());
        (y, stats)
    }

    pub fn backward<B: Backend>(
        &self,
        bp: &mut Backprop<'_, B>,
        x: &B::Buf,
        stats: &NormStats<B>,
        dy: &B::Buf,
        rows: usize,
    ) -> B::Buf {
        let (be, ps) = (bp.be, bp.ps);
        let mut dx = be.zeros(rows * self.d);
        let shape = RowShape { rows, d: self.d };
        match self.affine {
            Some((w, b)) => {
                let (dweight, dbias) = bp.grads.pair_mut(w, b);
                let out = LayerNormGrads {
                    dx: &mut dx,
                    dweight,
                    dbias,
                };
                be.layernorm_backward(dy, x, shape, Some(ps.vector(w)), stats.as_ref(), out);
            }
            None => {
                let out = LayerNormGrads {
                    dx: &mut dx,
                    dweight: None,
                    dbias: None,
                };
                be.layernorm_backward(dy, x, shape, None, stats.as_ref(), out);
            }
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
        let shape = RowShape { rows, d: self.d };
        be.rmsnorm_forward(x, shape, ps.vector(self.w), self.eps, &mut y, &mut rstd);
        (y, rstd)
    }

    pub fn backward<B: Backend>(
        &self,
        bp: &mut Backprop<'_, B>,
        x: &B::Buf,
        rstd: &B::Buf,
        dy: &B::Buf,
        rows: usize,
    ) -> B::Buf {
        let (be, ps) = (bp.be, bp.ps);
        let mut dx = be.zeros(rows * self.d);
        let weight = ps.vector(self.w);
        let shape = RowShape { rows, d: self.d };
        let mut scratch;
        let dweight = match bp.grads.get_mut(self.w) {
            Some(dw) => dw,
            None => {
                scratch = be.zeros(self.d);
                &mut scratch
            }
        };
        let out = RmsNormGrads {
            dx: &mut dx,
            dweight,
        };
        be.rmsnorm_backward(dy, x, shape, weight, rstd, out);
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
