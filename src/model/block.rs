//! One Wan2.1 DiT block (method.md section 1, step 5), forward and hand-written backward.
//!
//! ```text
//! x1 = x  + SelfAttn(LN(x) * (1 + s1) + s0) * s2
//! x2 = x1 + CrossAttn(LNaffine(x1), context[, image])
//! x3 = x2 + FFN(LN(x2) * (1 + s4) + s3) * s5
//! ```
//! with `(s0..s5) = modulation[6, D] + e0[b]`. The forward returns every activation the backward
//! needs ([`BlockActs`]); with per-block recompute the caller drops them and calls
//! [`Block::forward`] again from the saved block input during the backward pass.

use super::layers::{activate, activate_backward, LayerNorm, Linear, NormStats, RmsNorm};
use super::params::{Backprop, ParamStore};
use crate::backend::{
    AttnShape, Backend, BroadcastShape, GatedAddGrads, ModShape, ModSlot, ModulateGrads, Qkv,
    RopeShape, ShiftScale,
};
use crate::Result;

/// Sizes of one forward call.
#[derive(Clone, Copy, Debug)]
pub struct BlockDims {
    pub batch: usize,
    /// Video tokens per sample.
    pub tokens: usize,
    /// Text tokens per sample.
    pub text_len: usize,
    /// Image tokens per sample (I2V), else 0.
    pub image_len: usize,
    pub dim: usize,
    pub heads: usize,
    pub ffn: usize,
}

impl BlockDims {
    fn rows(&self) -> usize {
        self.batch * self.tokens
    }
    fn attn(&self, lk: usize) -> AttnShape {
        AttnShape {
            batch: self.batch,
            lq: self.tokens,
            lk,
            heads: self.heads,
            head_dim: self.dim / self.heads,
        }
    }
    /// The stream `[batch, tokens, dim]` as modulation sees it.
    fn modulated(&self) -> ModShape {
        ModShape {
            batch: self.batch,
            rows: self.tokens,
            d: self.dim,
        }
    }
    /// The self-attention queries and keys as the rotary embedding sees them.
    fn rope(&self) -> RopeShape {
        RopeShape {
            batch: self.batch,
            tokens: self.tokens,
            heads: self.heads,
            head_dim: self.dim / self.heads,
        }
    }
    /// Each sample's `e0: [6 * dim]` added to the block's one-row modulation table.
    fn mod_table(&self) -> BroadcastShape {
        BroadcastShape {
            batch: self.batch,
            w: 6 * self.dim,
            k: 1,
        }
    }
}

/// Context tensors shared by every block: embedded text `[B*Lc, D]` and image `[B*Li, D]`.
pub struct Context<'a, B: Backend> {
    pub text: &'a B::Buf,
    pub image: Option<&'a B::Buf>,
    /// The self-attention's rotary angles for the stream's tokens.
    pub rope: &'a Rope<B>,
}

/// Per-token RoPE angles `[tokens, head_dim / 2]`.
pub struct Rope<B: Backend> {
    pub cos: B::Buf,
    pub sin: B::Buf,
}

/// The attention projections of one attention layer.
#[derive(Clone, Copy, Debug)]
pub struct AttnParams {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub norm_q: RmsNorm,
    pub norm_k: RmsNorm,
}

impl AttnParams {
    fn resolve<B: Backend>(ps: &ParamStore<B>, prefix: &str, eps: f32) -> Result<Self> {
        Ok(AttnParams {
            q: Linear::resolve(ps, &format!("{prefix}.q"))?,
            k: Linear::resolve(ps, &format!("{prefix}.k"))?,
            v: Linear::resolve(ps, &format!("{prefix}.v"))?,
            o: Linear::resolve(ps, &format!("{prefix}.o"))?,
            norm_q: RmsNorm::resolve(ps, &format!("{prefix}.norm_q"), eps)?,
            norm_k: RmsNorm::resolve(ps, &format!("{prefix}.norm_k"), eps)?,
        })
    }
}

/// The I2V image branch of the cross-attention.
#[derive(Clone, Copy, Debug)]
pub struct ImageAttnParams {
    pub k: Linear,
    pub v: Linear,
    pub norm_k: RmsNorm,
}

#[derive(Clone, Copy, Debug)]
pub struct Block {
    pub modulation: usize,
    pub norm1: LayerNorm,
    pub self_attn: AttnParams,
    pub norm3: LayerNorm,
    pub cross_attn: AttnParams,
    pub image_attn: Option<ImageAttnParams>,
    pub norm2: LayerNorm,
    pub ffn0: Linear,
    pub ffn2: Linear,
}

/// Where each modulation vector sits inside the `[B, 6D]` table.
fn slot(d: usize, k: usize) -> ModSlot {
    ModSlot {
        stride: 6 * d,
        offset: k * d,
    }
}

/// Shift `k` and scale `k + 1` of the `[B, 6, D]` table.
fn shift_scale(d: usize, k: usize) -> ShiftScale {
    ShiftScale {
        shift: slot(d, k),
        scale: slot(d, k + 1),
    }
}

/// Everything the backward pass reads.
pub struct BlockActs<B: Backend> {
    /// `modulation + e0`, `[B, 6D]`.
    mods: B::Buf,
    x: B::Buf,
    ln1: B::Buf,
    ln1_stats: NormStats<B>,
    m1: B::Buf,
    q_pre: B::Buf,
    q_rstd: B::Buf,
    k_pre: B::Buf,
    k_rstd: B::Buf,
    q: B::Buf,
    k: B::Buf,
    v: B::Buf,
    sa_out: B::Buf,
    sa_lse: B::Buf,
    y1: B::Buf,
    x1: B::Buf,
    ln3: B::Buf,
    ln3_stats: NormStats<B>,
    cq_pre: B::Buf,
    cq_rstd: B::Buf,
    cq: B::Buf,
    ck_pre: B::Buf,
    ck_rstd: B::Buf,
    ck: B::Buf,
    cv: B::Buf,
    ca_out: B::Buf,
    ca_lse: B::Buf,
    image: Option<ImageActs<B>>,
    x2: B::Buf,
    ln2: B::Buf,
    ln2_stats: NormStats<B>,
    m2: B::Buf,
    f1: B::Buf,
    f1g: B::Buf,
    y3: B::Buf,
}

struct ImageActs<B: Backend> {
    k_pre: B::Buf,
    k_rstd: B::Buf,
    k: B::Buf,
    v: B::Buf,
    out: B::Buf,
    lse: B::Buf,
}

/// Gradients flowing out of a block besides its input: into `e0` (`[B, 6D]`) and the contexts.
pub struct BlockContextGrads<B: Backend> {
    pub de0: B::Buf,
    pub dtext: B::Buf,
    pub dimage: Option<B::Buf>,
}

impl<B: Backend> BlockActs<B> {
    /// Bytes held by the saved activations.
    pub fn bytes(&self, be: &B) -> usize {
        let mut bufs: Vec<&B::Buf> = vec![
            &self.mods,
            &self.x,
            &self.ln1,
            &self.ln1_stats.mean,
            &self.ln1_stats.rstd,
            &self.m1,
            &self.q_pre,
            &self.q_rstd,
            &self.k_pre,
            &self.k_rstd,
            &self.q,
            &self.k,
            &self.v,
            &self.sa_out,
            &self.sa_lse,
            &self.y1,
            &self.x1,
            &self.ln3,
            &self.ln3_stats.mean,
            &self.ln3_stats.rstd,
            &self.cq_pre,
            &self.cq_rstd,
            &self.cq,
            &self.ck_pre,
            &self.ck_rstd,
            &self.ck,
            &self.cv,
            &self.ca_out,
            &self.ca_lse,
            &self.x2,
            &self.ln2,
            &self.ln2_stats.mean,
            &self.ln2_stats.rstd,
            &self.m2,
            &self.f1,
            &self.f1g,
            &self.y3,
        ];
        if let Some(i) = &self.image {
            bufs.extend([&i.k_pre, &i.k_rstd, &i.k, &i.v, &i.out, &i.lse]);
        }
        bufs.into_iter().map(|b| be.buf_bytes(b)).sum()
    }
}

impl Block {
    /// Resolves block `i`'s parameters (canonical names).
    pub fn resolve<B: Backend>(
        ps: &ParamStore<B>,
        i: usize,
        dim: usize,
        eps: f32,
        i2v: bool,
    ) -> Result<Self> {
        let p = format!("blocks.{i}");
        let image_attn = if i2v {
            Some(ImageAttnParams {
                k: Linear::resolve(ps, &format!("{p}.cross_attn.k_img"))?,
                v: Linear::resolve(ps, &format!("{p}.cross_attn.v_img"))?,
                norm_k: RmsNorm::resolve(ps, &format!("{p}.cross_attn.norm_k_img"), eps)?,
            })
        } else {
            None
        };
        Ok(Block {
            modulation: ps.id(&format!("{p}.modulation"))?,
            norm1: LayerNorm::plain(dim, eps),
            self_attn: AttnParams::resolve(ps, &format!("{p}.self_attn"), eps)?,
            norm3: LayerNorm::resolve(ps, &format!("{p}.norm3"), eps)?,
            cross_attn: AttnParams::resolve(ps, &format!("{p}.cross_attn"), eps)?,
            image_attn,
            norm2: LayerNorm::plain(dim, eps),
            ffn0: Linear::resolve(ps, &format!("{p}.ffn.0"))?,
            ffn2: Linear::resolve(ps, &format!("{p}.ffn.2"))?,
        })
    }

    /// The linear layer a LoRA target names (`self_attn.q`, `cross_attn.o`, `ffn.0`,
    /// `cross_attn.k_img`, ...).
    pub fn linear_mut(&mut self, target: &str) -> Option<&mut Linear> {
        let (module, proj) = target.split_once('.')?;
        let attn = match module {
            "self_attn" => &mut self.self_attn,
            "cross_attn" => match (proj, self.image_attn.as_mut()) {
                ("k_img", Some(ia)) => return Some(&mut ia.k),
                ("v_img", Some(ia)) => return Some(&mut ia.v),
                _ => &mut self.cross_attn,
            },
            "ffn" => {
                return match proj {
                    "0" => Some(&mut self.ffn0),
                    "2" => Some(&mut self.ffn2),
                    _ => None,
                }
            }
            _ => return None,
        };
        match proj {
            "q" => Some(&mut attn.q),
            "k" => Some(&mut attn.k),
            "v" => Some(&mut attn.v),
            "o" => Some(&mut attn.o),
            _ => None,
        }
    }

    /// Runs the block. `x: [B*L, D]`, `e0: [B, 6D]`. Returns the output and the saved activations.
    pub fn forward<B: Backend>(
        &self,
        be: &B,
        ps: &ParamStore<B>,
        x: B::Buf,
        e0: &B::Buf,
        ctx: &Context<'_, B>,
        dims: BlockDims,
    ) -> (B::Buf, BlockActs<B>) {
        let rope = ctx.rope;
        let (bsz, l, d) = (dims.batch, dims.tokens, dims.dim);
        let n = dims.rows();

        let mut mods = be.zeros(bsz * 6 * d);
        be.broadcast_add(e0, ps.vector(self.modulation), dims.mod_table(), &mut mods);

        // Self-attention on the modulated, normalised stream.
        let (ln1, ln1_stats) = self.norm1.forward(be, ps, &x, n);
        let mut m1 = be.zeros(n * d);
        be.modulate_forward(&ln1, dims.modulated(), &mods, shift_scale(d, 0), &mut m1);
        let sa = &self.self_attn;
        let q_pre = sa.q.forward(be, ps, &m1, n);
        let k_pre = sa.k.forward(be, ps, &m1, n);
        let v = sa.v.forward(be, ps, &m1, n);
        let (mut q, q_rstd) = sa.norm_q.forward(be, ps, &q_pre, n);
        let (mut k, k_rstd) = sa.norm_k.forward(be, ps, &k_pre, n);
        be.rope(&mut q, dims.rope(), &rope.cos, &rope.sin, false);
        be.rope(&mut k, dims.rope(), &rope.cos, &rope.sin, false);
        let mut sa_out = be.zeros(n * d);
        let mut sa_lse = be.zeros(bsz * dims.heads * l);
        let qkv = Qkv {
            q: &q,
            k: &k,
            v: &v,
        };
        be.attention_forward(qkv, dims.attn(l), &mut sa_out, &mut sa_lse);
        let y1 = sa.o.forward(be, ps, &sa_out, n);
        let mut x1 = be.zeros(n * d);
        be.copy_range(&x, 0, &mut x1, 0, n * d);
        be.gated_add_forward(&mut x1, &y1, dims.modulated(), &mods, slot(d, 2));

        // Cross-attention: queries from the stream, keys/values from the text (and image).
        let (ln3, ln3_stats) = self.norm3.forward(be, ps, &x1, n);
        let ca = &self.cross_attn;
        let cq_pre = ca.q.forward(be, ps, &ln3, n);
        let (cq, cq_rstd) = ca.norm_q.forward(be, ps, &cq_pre, n);
        let nt = bsz * dims.text_len;
        let ck_pre = ca.k.forward(be, ps, ctx.text, nt);
        let (ck, ck_rstd) = ca.norm_k.forward(be, ps, &ck_pre, nt);
        let cv = ca.v.forward(be, ps, ctx.text, nt);
        let mut ca_out = be.zeros(n * d);
        let mut ca_lse = be.zeros(bsz * dims.heads * l);
        let text_qkv = Qkv {
            q: &cq,
            k: &ck,
            v: &cv,
        };
        be.attention_forward(text_qkv, dims.attn(dims.text_len), &mut ca_out, &mut ca_lse);
        let mut attn_sum = be.zeros(n * d);
        be.copy_range(&ca_out, 0, &mut attn_sum, 0, n * d);
        let image = match (self.image_attn, ctx.image) {
            (Some(ia), Some(img)) => {
                let ni = bsz * dims.image_len;
                let k_pre = ia.k.forward(be, ps, img, ni);
                let (k, k_rstd) = ia.norm_k.forward(be, ps, &k_pre, ni);
                let v = ia.v.forward(be, ps, img, ni);
                let mut out = be.zeros(n * d);
                let mut lse = be.zeros(bsz * dims.heads * l);
                let image_qkv = Qkv {
                    q: &cq,
                    k: &k,
                    v: &v,
                };
                be.attention_forward(image_qkv, dims.attn(dims.image_len), &mut out, &mut lse);
                be.add_assign(&mut attn_sum, &out);
                Some(ImageActs {
                    k_pre,
                    k_rstd,
                    k,
                    v,
                    out,
                    lse,
                })
            }
            _ => None,
        };
        let y2 = ca.o.forward(be, ps, &attn_sum, n);
        drop(attn_sum);
        let mut x2 = y2;
        be.add_assign(&mut x2, &x1);

        // Feed-forward on the modulated stream, gated.
        let (ln2, ln2_stats) = self.norm2.forward(be, ps, &x2, n);
        let mut m2 = be.zeros(n * d);
        be.modulate_forward(&ln2, dims.modulated(), &mods, shift_scale(d, 3), &mut m2);
        let f1 = self.ffn0.forward(be, ps, &m2, n);
        let f1g = activate(be, &f1, B::gelu_tanh_forward);
        let y3 = self.ffn2.forward(be, ps, &f1g, n);
        let mut x3 = be.zeros(n * d);
        be.copy_range(&x2, 0, &mut x3, 0, n * d);
        be.gated_add_forward(&mut x3, &y3, dims.modulated(), &mods, slot(d, 5));

        let acts = BlockActs {
            mods,
            x,
            ln1,
            ln1_stats,
            m1,
            q_pre,
            q_rstd,
            k_pre,
            k_rstd,
            q,
            k,
            v,
            sa_out,
            sa_lse,
            y1,
            x1,
            ln3,
            ln3_stats,
            cq_pre,
            cq_rstd,
            cq,
            ck_pre,
            ck_rstd,
            ck,
            cv,
            ca_out,
            ca_lse,
            image,
            x2,
            ln2,
            ln2_stats,
            m2,
            f1,
            f1g,
            y3,
        };
        (x3, acts)
    }

    /// Backward of [`Block::forward`]: given `dx3` (gradient of the block output), accumulates
    /// parameter gradients and returns the input gradient plus the gradients for `e0` and the
    /// contexts.
    pub fn backward<B: Backend>(
        &self,
        bp: &mut Backprop<'_, B>,
        a: &BlockActs<B>,
        ctx: &Context<'_, B>,
        dims: BlockDims,
        dx3: B::Buf,
    ) -> (B::Buf, BlockContextGrads<B>) {
        let be = bp.be;
        let rope = ctx.rope;
        let (bsz, l, d) = (dims.batch, dims.tokens, dims.dim);
        let n = dims.rows();
        let mut dmods = be.zeros(bsz * 6 * d);

        // FFN branch: x3 = x2 + y3 * s5.
        let mut dy3 = be.zeros(n * d);
        let grads3 = GatedAddGrads {
            dy: &mut dy3,
            dmods: &mut dmods,
        };
        be.gated_add_backward(&dx3, &a.y3, dims.modulated(), &a.mods, slot(d, 5), grads3);
        let df1g = self.ffn2.backward(bp, &a.f1g, &dy3, n);
        drop(dy3);
        let df1 = activate_backward(be, &a.f1, &df1g, B::gelu_tanh_backward);
        drop(df1g);
        let dm2 = self.ffn0.backward(bp, &a.m2, &df1, n);
        drop(df1);
        let mut dln2 = be.zeros(n * d);
        let grads2 = ModulateGrads {
            dx: &mut dln2,
            dmods: &mut dmods,
        };
        let m2 = dims.modulated();
        be.modulate_backward(&dm2, &a.ln2, m2, &a.mods, shift_scale(d, 3), grads2);
        let mut dx2 = self.norm2.backward(bp, &a.x2, &a.ln2_stats, &dln2, n);
        be.add_assign(&mut dx2, &dx3);
        drop(dx3);

        // Cross-attention branch: x2 = x1 + o(attn_text + attn_image).
        let ca = &self.cross_attn;
        let mut attn_sum = be.zeros(n * d);
        be.copy_range(&a.ca_out, 0, &mut attn_sum, 0, n * d);
        if let Some(img) = &a.image {
            be.add_assign(&mut attn_sum, &img.out);
        }
        let dattn = ca.o.backward(bp, &attn_sum, &dx2, n);
        drop(attn_sum);
        let nt = bsz * dims.text_len;
        let mut dcq = be.zeros(n * d);
        let mut dck = be.zeros(nt * d);
        let mut dcv = be.zeros(nt * d);
        let text_qkv = Qkv {
            q: &a.cq,
            k: &a.ck,
            v: &a.cv,
        };
        let text_grads = Qkv {
            q: &mut dcq,
            k: &mut dck,
            v: &mut dcv,
        };
        be.attention_backward(
            text_qkv,
            &a.ca_out,
            &a.ca_lse,
            &dattn,
            dims.attn(dims.text_len),
            text_grads,
        );
        let dck_pre = ca.norm_k.backward(bp, &a.ck_pre, &a.ck_rstd, &dck, nt);
        let mut dtext = ca.k.backward(bp, ctx.text, &dck_pre, nt);
        let dtext_v = ca.v.backward(bp, ctx.text, &dcv, nt);
        be.add_assign(&mut dtext, &dtext_v);
        let dimage = match (&a.image, self.image_attn, ctx.image) {
            (Some(img), Some(ia), Some(image)) => {
                let ni = bsz * dims.image_len;
                let mut dq_img = be.zeros(n * d);
                let mut dk = be.zeros(ni * d);
                let mut dv = be.zeros(ni * d);
                let image_qkv = Qkv {
                    q: &a.cq,
                    k: &img.k,
                    v: &img.v,
                };
                let image_grads = Qkv {
                    q: &mut dq_img,
                    k: &mut dk,
                    v: &mut dv,
                };
                be.attention_backward(
                    image_qkv,
                    &img.out,
                    &img.lse,
                    &dattn,
                    dims.attn(dims.image_len),
                    image_grads,
                );
                be.add_assign(&mut dcq, &dq_img);
                let dk_pre = ia.norm_k.backward(bp, &img.k_pre, &img.k_rstd, &dk, ni);
                let mut dimg = ia.k.backward(bp, image, &dk_pre, ni);
                let dimg_v = ia.v.backward(bp, image, &dv, ni);
                be.add_assign(&mut dimg, &dimg_v);
                Some(dimg)
            }
            _ => None,
        };
        drop(dattn);
        let dcq_pre = ca.norm_q.backward(bp, &a.cq_pre, &a.cq_rstd, &dcq, n);
        let dln3 = ca.q.backward(bp, &a.ln3, &dcq_pre, n);
        let mut dx1 = self.norm3.backward(bp, &a.x1, &a.ln3_stats, &dln3, n);
        be.add_assign(&mut dx1, &dx2);
        drop(dx2);

        // Self-attention branch: x1 = x + o(attn(rope(norm(q)), rope(norm(k)), v)) * s2.
        let sa = &self.self_attn;
        let mut dy1 = be.zeros(n * d);
        let grads1 = GatedAddGrads {
            dy: &mut dy1,
            dmods: &mut dmods,
        };
        be.gated_add_backward(&dx1, &a.y1, dims.modulated(), &a.mods, slot(d, 2), grads1);
        let dsa = sa.o.backward(bp, &a.sa_out, &dy1, n);
        drop(dy1);
        let mut dq = be.zeros(n * d);
        let mut dk = be.zeros(n * d);
        let mut dv = be.zeros(n * d);
        let qkv = Qkv {
            q: &a.q,
            k: &a.k,
            v: &a.v,
        };
        let dqkv = Qkv {
            q: &mut dq,
            k: &mut dk,
            v: &mut dv,
        };
        be.attention_backward(qkv, &a.sa_out, &a.sa_lse, &dsa, dims.attn(l), dqkv);
        drop(dsa);
        // The rotation is orthogonal: its backward is the inverse rotation.
        be.rope(&mut dq, dims.rope(), &rope.cos, &rope.sin, true);
        be.rope(&mut dk, dims.rope(), &rope.cos, &rope.sin, true);
        let dq_pre = sa.norm_q.backward(bp, &a.q_pre, &a.q_rstd, &dq, n);
        let dk_pre = sa.norm_k.backward(bp, &a.k_pre, &a.k_rstd, &dk, n);
        let mut dm1 = sa.q.backward(bp, &a.m1, &dq_pre, n);
        let dm1_k = sa.k.backward(bp, &a.m1, &dk_pre, n);
        be.add_assign(&mut dm1, &dm1_k);
        let dm1_v = sa.v.backward(bp, &a.m1, &dv, n);
        be.add_assign(&mut dm1, &dm1_v);
        let mut dln1 = be.zeros(n * d);
        let grads1 = ModulateGrads {
            dx: &mut dln1,
            dmods: &mut dmods,
        };
        let m1 = dims.modulated();
        be.modulate_backward(&dm1, &a.ln1, m1, &a.mods, shift_scale(d, 0), grads1);
        let mut dx = self.norm1.backward(bp, &a.x, &a.ln1_stats, &dln1, n);
        be.add_assign(&mut dx, &dx1);

        // mods = modulation + e0: the table gets the batch sum, e0 the per-sample gradient.
        let mut de0 = be.zeros(bsz * 6 * d);
        match bp.grads.get_mut(self.modulation) {
            Some(dtable) => be.broadcast_add_backward(&dmods, dims.mod_table(), &mut de0, dtable),
            None => {
                let mut scratch = be.zeros(6 * d);
                be.broadcast_add_backward(&dmods, dims.mod_table(), &mut de0, &mut scratch);
            }
        }
        (dx, BlockContextGrads { de0, dtext, dimage })
    }
}
