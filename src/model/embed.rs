//! The conditioning embeddings of the DiT (method.md section 1, steps 1-4), forward and backward:
//! timestep (sinusoid -> MLP -> 6-way projection), text MLP, the I2V image MLP, and the patch
//! embedding (a Conv3d with kernel = stride = (1, 2, 2), i.e. a linear map over patch vectors).

use super::layers::{activate, activate_backward, LayerNorm, Linear, NormStats};
use super::params::{Backprop, ParamStore};
use crate::backend::Backend;
use crate::Result;

/// `[cos(t w_i) ; sin(t w_i)]`, `w_i = 10000^(-i / half)`, computed in f64 as the reference does
/// (parity trap 1: cos first) and rounded to f32 once.
pub fn timestep_sinusoid(t: &[f32], freq_dim: usize) -> Vec<f32> {
    let half = freq_dim / 2;
    let mut out = vec![0.0f32; t.len() * freq_dim];
    for (b, &tb) in t.iter().enumerate() {
        for i in 0..half {
            let w = 10000f64.powf(-(i as f64) / half as f64);
            let a = tb as f64 * w;
            out[b * freq_dim + i] = a.cos() as f32;
            out[b * freq_dim + half + i] = a.sin() as f32;
        }
    }
    out
}

/// `e = W2 SiLU(W0 sinusoid(t))`, `e0 = Wp SiLU(e)` viewed as `[B, 6, D]`.
#[derive(Clone, Copy, Debug)]
pub struct TimeEmbedding {
    pub lin0: Linear,
    pub lin2: Linear,
    pub proj: Linear,
    pub freq_dim: usize,
}

pub struct TimeActs<B: Backend> {
    sinusoid: B::Buf,
    h0: B::Buf,
    h0_act: B::Buf,
    pub e: B::Buf,
    e_act: B::Buf,
    pub e0: B::Buf,
}

impl TimeEmbedding {
    pub fn resolve<B: Backend>(ps: &ParamStore<B>) -> Result<Self> {
        let lin0 = Linear::resolve(ps, "time_embedding.0")?;
        Ok(TimeEmbedding {
            freq_dim: lin0.n_in,
            lin0,
            lin2: Linear::resolve(ps, "time_embedding.2")?,
            proj: Linear::resolve(ps, "time_projection.1")?,
        })
    }

    pub fn forward<B: Backend>(&self, be: &B, ps: &ParamStore<B>, t: &[f32]) -> TimeActs<B> {
        let n = t.len();
        let sinusoid = be.upload(&timestep_sinusoid(t, self.freq_dim));
        let h0 = self.lin0.forward(be, ps, &sinusoid, n);
        let h0_act = activate(be, &h0, B::silu_forward);
        let e = self.lin2.forward(be, ps, &h0_act, n);
        let e_act = activate(be, &e, B::silu_forward);
        let e0 = self.proj.forward(be, ps, &e_act, n);
        TimeActs {
            sinusoid,
            h0,
            h0_act,
            e,
            e_act,
            e0,
        }
    }

    /// `de` is the gradient reaching `e` directly (from the head), `de0` the one reaching `e0`
    /// (from the blocks). The timestep itself gets no gradient.
    pub fn backward<B: Backend>(
        &self,
        bp: &mut Backprop<'_, B>,
        a: &TimeActs<B>,
        mut de: B::Buf,
        de0: &B::Buf,
        n: usize,
    ) {
        let be = bp.be;
        let de_act = self.proj.backward(bp, &a.e_act, de0, n);
        let de_silu = activate_backward(be, &a.e, &de_act, B::silu_backward);
        be.add_assign(&mut de, &de_silu);
        let dh0_act = self.lin2.backward(bp, &a.h0_act, &de, n);
        let dh0 = activate_backward(be, &a.h0, &dh0_act, B::silu_backward);
        self.lin0.accumulate_param_grads(bp, &a.sinusoid, &dh0, n);
    }
}

/// `Linear -> GELU(tanh) -> Linear` over the text encoder states.
#[derive(Clone, Copy, Debug)]
pub struct TextEmbedding {
    pub lin0: Linear,
    pub lin2: Linear,
}

pub struct TextActs<B: Backend> {
    h0: B::Buf,
    h0_act: B::Buf,
    pub out: B::Buf,
}

impl TextEmbedding {
    pub fn resolve<B: Backend>(ps: &ParamStore<B>) -> Result<Self> {
        Ok(TextEmbedding {
            lin0: Linear::resolve(ps, "text_embedding.0")?,
            lin2: Linear::resolve(ps, "text_embedding.2")?,
        })
    }

    pub fn forward<B: Backend>(
        &self,
        be: &B,
        ps: &ParamStore<B>,
        context: &B::Buf,
        rows: usize,
    ) -> TextActs<B> {
        let h0 = self.lin0.forward(be, ps, context, rows);
        let h0_act = activate(be, &h0, B::gelu_tanh_forward);
        let out = self.lin2.forward(be, ps, &h0_act, rows);
        TextActs { h0, h0_act, out }
    }

    /// Returns the gradient with respect to the text encoder states.
    pub fn backward<B: Backend>(
        &self,
        bp: &mut Backprop<'_, B>,
        a: &TextActs<B>,
        context: &B::Buf,
        dout: &B::Buf,
        rows: usize,
    ) -> B::Buf {
        let be = bp.be;
        let dh0_act = self.lin2.backward(bp, &a.h0_act, dout, rows);
        let dh0 = activate_backward(be, &a.h0, &dh0_act, B::gelu_tanh_backward);
        self.lin0.backward(bp, context, &dh0, rows)
    }
}

/// I2V: `LayerNorm -> Linear -> GELU(erf) -> Linear -> LayerNorm` over CLIP features (eps 1e-5,
/// parity trap 7).
#[derive(Clone, Copy, Debug)]
pub struct ImageEmbedding {
    pub norm0: LayerNorm,
    pub lin1: Linear,
    pub lin3: Linear,
    pub norm4: LayerNorm,
}

pub struct ImageActs<B: Backend> {
    n0: B::Buf,
    n0_stats: NormStats<B>,
    h1: B::Buf,
    h1_act: B::Buf,
    h3: B::Buf,
    n4_stats: NormStats<B>,
    pub out: B::Buf,
}

impl ImageEmbedding {
    pub fn resolve<B: Backend>(ps: &ParamStore<B>) -> Result<Self> {
        Ok(ImageEmbedding {
            norm0: LayerNorm::resolve(ps, "img_emb.proj.0", 1e-5)?,
            lin1: Linear::resolve(ps, "img_emb.proj.1")?,
            lin3: Linear::resolve(ps, "img_emb.proj.3")?,
            norm4: LayerNorm::resolve(ps, "img_emb.proj.4", 1e-5)?,
        })
    }

    pub fn forward<B: Backend>(
        &self,
        be: &B,
        ps: &ParamStore<B>,
        clip: &B::Buf,
        rows: usize,
    ) -> ImageActs<B> {
        let (n0, n0_stats) = self.norm0.forward(be, ps, clip, rows);
        let h1 = self.lin1.forward(be, ps, &n0, rows);
        let h1_act = activate(be, &h1, B::gelu_erf_forward);
        let h3 = self.lin3.forward(be, ps, &h1_act, rows);
        let (out, n4_stats) = self.norm4.forward(be, ps, &h3, rows);
        ImageActs {
            n0,
            n0_stats,
            h1,
            h1_act,
            h3,
            n4_stats,
            out,
        }
    }

    /// Returns the gradient with respect to the CLIP features.
    pub fn backward<B: Backend>(
        &self,
        bp: &mut Backprop<'_, B>,
        a: &ImageActs<B>,
        clip: &B::Buf,
        dout: &B::Buf,
        rows: usize,
    ) -> B::Buf {
        let be = bp.be;
        let dh3 = self.norm4.backward(bp, &a.h3, &a.n4_stats, dout, rows);
        let dh1_act = self.lin3.backward(bp, &a.h1_act, &dh3, rows);
        let dh1 = activate_backward(be, &a.h1, &dh1_act, B::gelu_erf_backward);
        let dn0 = self.lin1.backward(bp, &a.n0, &dh1, rows);
        self.norm0.backward(bp, clip, &a.n0_stats, &dn0, rows)
    }
}
