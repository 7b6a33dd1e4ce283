//! The Wan2.1 DiT assembled from its parts: patch embedding, conditioning embeddings, the blocks
//! and the head, with a forward pass that records a [`Tape`] and a backward pass that consumes it.
//!
//! The same type serves the full generator and the truncated backbone of the reward model: it
//! runs whatever blocks were loaded (`blocks.0 .. blocks.{K-1}`) and the head only if present.

use std::collections::BTreeMap;

use super::block::{Block, BlockActs, BlockDims, Context, Rope};
use super::config::{ModelType, WanConfig};
use super::embed::{ImageActs, ImageEmbedding, TextActs, TextEmbedding, TimeActs, TimeEmbedding};
use super::layers::{LayerNorm, Linear, NormStats};
use super::params::{Backprop, Grads, ParamStore};
use super::rope::rope_table;
use crate::backend::{
    Backend, BroadcastShape, ModShape, ModSlot, ModulateGrads, PatchOrder, PatchShape, ShiftScale,
};
use crate::tensor::{DType, HostTensor};
use crate::{Error, Result};

/// Batch and latent grid of one call: latents are `[batch, C, frames, height, width]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VideoShape {
    pub batch: usize,
    pub frames: usize,
    pub height: usize,
    pub width: usize,
}

impl VideoShape {
    /// Tokens per sample after (1, 2, 2) patching.
    pub fn tokens(&self) -> usize {
        self.frames * (self.height / 2) * (self.width / 2)
    }
    pub fn voxels(&self) -> usize {
        self.frames * self.height * self.width
    }
}

/// One forward call's inputs (device buffers).
pub struct Inputs<'a, B: Backend> {
    pub shape: VideoShape,
    /// Noisy latent `[B, out_dim, F, H, W]`.
    pub x: &'a B::Buf,
    /// Timestep per sample, raw value in [0, 1000].
    pub t: &'a [f32],
    /// Text encoder states `[B, text_len, text_dim]`.
    pub context: &'a B::Buf,
    pub text_len: usize,
    /// I2V conditioning latent `[B, in_dim - out_dim, F, H, W]` (mask + first-frame latent).
    pub y: Option<&'a B::Buf>,
    /// I2V CLIP features `[B, image_len, image_dim]`.
    pub clip: Option<&'a B::Buf>,
    pub image_len: usize,
}

/// What the forward pass keeps for the backward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// No tape: activations are freed block by block.
    Inference,
    /// Keep every activation.
    Train,
    /// Keep only each block's input and recompute the block during backward (gradient
    /// checkpointing): activation memory of one block instead of all of them.
    TrainRecompute,
}

enum SavedBlock<B: Backend> {
    Full(BlockActs<B>),
    Input(B::Buf),
}

struct HeadActs<B: Backend> {
    x: B::Buf,
    ln: B::Buf,
    ln_stats: NormStats<B>,
    mods: B::Buf,
    m: B::Buf,
}

/// Activations recorded by a training-mode forward pass.
pub struct Tape<B: Backend> {
    shape: VideoShape,
    text_len: usize,
    image_len: usize,
    t: Vec<f32>,
    tokens: B::Buf,
    has_y: bool,
    time: TimeActs<B>,
    context: B::Buf,
    text: TextActs<B>,
    clip: Option<B::Buf>,
    image: Option<ImageActs<B>>,
    rope: Rope<B>,
    blocks: Vec<SavedBlock<B>>,
    head: Option<HeadActs<B>>,
}

impl<B: Backend> Tape<B> {
    /// Bytes of saved activations (block activations plus embeddings).
    pub fn saved_block_bytes(&self, be: &B) -> usize {
        self.blocks
            .iter()
            .map(|s| match s {
                SavedBlock::Full(a) => a.bytes(be),
                SavedBlock::Input(x) => be.buf_bytes(x),
            })
            .sum()
    }
}

/// Gradients with respect to the inputs.
pub struct InputGrads<B: Backend> {
    pub x: B::Buf,
    pub context: B::Buf,
    pub y: Option<B::Buf>,
    pub clip: Option<B::Buf>,
}

#[derive(Clone, Copy, Debug)]
struct Head {
    modulation: usize,
    norm: LayerNorm,
    lin: Linear,
}

pub struct WanModel<B: Backend> {
    pub cfg: WanConfig,
    pub params: ParamStore<B>,
    patch: Linear,
    time: TimeEmbedding,
    text: TextEmbedding,
    image: Option<ImageEmbedding>,
    blocks: Vec<Block>,
    head: Option<Head>,
}

impl<B: Backend> WanModel<B> {
    /// Builds the model from canonical (original-layout) tensors. Loads as many blocks as are
    /// present (contiguous from 0) and the head if present. `matrix_dtype` sets the storage dtype
    /// of the matrix weights (`None` keeps the checkpoint's).
    pub fn new(
        be: &B,
        cfg: WanConfig,
        tensors: &BTreeMap<String, HostTensor>,
        matrix_dtype: Option<DType>,
    ) -> Result<Self> {
        let params = ParamStore::from_host(be, tensors, matrix_dtype);
        let n_blocks = (0..cfg.num_layers)
            .take_while(|i| tensors.contains_key(&format!("blocks.{i}.modulation")))
            .count();
        let i2v = cfg.model_type == ModelType::I2V;
        let blocks = (0..n_blocks)
            .map(|i| Block::resolve(&params, i, cfg.dim, cfg.eps, i2v))
            .collect::<Result<Vec<_>>>()?;
        let head = if tensors.contains_key("head.head.weight") {
            Some(Head {
                modulation: params.id("head.modulation")?,
                norm: LayerNorm::plain(cfg.dim, cfg.eps),
                lin: Linear::resolve(&params, "head.head")?,
            })
        } else {
            None
        };
        let image = if i2v {
            Some(ImageEmbedding::resolve(&params)?)
        } else {
            None
        };
        Ok(WanModel {
            patch: Linear::resolve(&params, "patch_embedding")?,
            time: TimeEmbedding::resolve(&params)?,
            text: TextEmbedding::resolve(&params)?,
            image,
            blocks,
            head,
            cfg,
            params,
        })
    }

    pub(crate) fn blocks_mut(&mut self) -> &mut [Block] {
        &mut self.blocks
    }

    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    pub fn has_head(&self) -> bool {
        self.head.is_some()
    }

    /// Channels of the conditioning latent `y` (I2V: 20), 0 for T2V.
    pub fn y_channels(&self) -> usize {
        self.cfg.in_dim - self.cfg.out_dim
    }

    fn block_dims(&self, inp_shape: VideoShape, text_len: usize, image_len: usize) -> BlockDims {
        BlockDims {
            batch: inp_shape.batch,
            tokens: inp_shape.tokens(),
            text_len,
            image_len,
            dim: self.cfg.dim,
            heads: self.cfg.num_heads,
            ffn: self.cfg.ffn_dim,
        }
    }

    /// Checks every size of the inputs before any work is done.
    pub fn check_inputs(&self, be: &B, inp: &Inputs<'_, B>) -> Result<()> {
        let s = inp.shape;
        let c = &self.cfg;
        let bad = |m: String| Err(Error::InvalidInput(m));
        if s.batch == 0 || s.frames == 0 || s.height == 0 || s.width == 0 {
            return bad(format!("empty latent shape {s:?}"));
        }
        if s.height % 2 != 0 || s.width % 2 != 0 {
            return bad(format!(
                "latent height {} and width {} must be even (patch size 2)",
                s.height, s.width
            ));
        }
        if be.len(inp.x) != s.batch * c.out_dim * s.voxels() {
            return bad(format!(
                "x holds {} values, expected [{}, {}, {}, {}, {}]",
                be.len(inp.x),
                s.batch,
                c.out_dim,
                s.frames,
                s.height,
                s.width
            ));
        }
        if inp.t.len() != s.batch {
            return bad(format!(
                "t has {} values for a batch of {}",
                inp.t.len(),
                s.batch
            ));
        }
        if let Some(t) = inp.t.iter().find(|t| !t.is_finite()) {
            return bad(format!("timestep {t} is not finite"));
        }
        if inp.text_len == 0 || be.len(inp.context) != s.batch * inp.text_len * c.text_dim {
            return bad(format!(
                "context holds {} values, expected [{}, {}, {}]",
                be.len(inp.context),
                s.batch,
                inp.text_len,
                c.text_dim
            ));
        }
        match (self.y_channels(), inp.y) {
            (0, None) => {}
            (0, Some(_)) => return bad("y given to a T2V model".into()),
            (_, None) => return bad("I2V model needs y (mask + first-frame latent)".into()),
            (yc, Some(y)) => {
                if be.len(y) != s.batch * yc * s.voxels() {
                    return bad(format!(
                        "y holds {} values, expected [{}, {yc}, {}, {}, {}]",
                        be.len(y),
                        s.batch,
                        s.frames,
                        s.height,
                        s.width
                    ));
                }
            }
        }
        match (c.image_dim, inp.clip) {
            (None, None) => {}
            (None, Some(_)) => return bad("clip features given to a T2V model".into()),
            (Some(_), None) => return bad("I2V model needs clip features".into()),
            (Some(di), Some(clip)) => {
                if inp.image_len == 0 || be.len(clip) != s.batch * inp.image_len * di {
                    return bad(format!(
                        "clip_fea holds {} values, expected [{}, {}, {di}]",
                        be.len(clip),
                        s.batch,
                        inp.image_len
                    ));
                }
            }
        }
        Ok(())
    }

    /// The full model: returns the predicted velocity `[B, out_dim, F, H, W]` and, in a training
    /// mode, the tape for [`WanModel::backward`].
    pub fn forward(
        &self,
        be: &B,
        inp: &Inputs<'_, B>,
        mode: Mode,
    ) -> Result<(B::Buf, Option<Tape<B>>)> {
        if self.head.is_none() || self.blocks.len() != self.cfg.num_layers {
            return Err(Error::Config(format!(
                "the full forward needs all {} blocks and the head; this model holds {} blocks{}",
                self.cfg.num_layers,
                self.blocks.len(),
                if self.head.is_some() {
                    ""
                } else {
                    " and no head"
                }
            )));
        }
        let (out, tape) = self.run(be, inp, mode, self.blocks.len(), self.head.as_ref())?;
        Ok((out, tape))
    }

    /// The hidden tokens `[B * L, D]` after the first `k` blocks (the reward model's features).
    pub fn forward_features(
        &self,
        be: &B,
        inp: &Inputs<'_, B>,
        k: usize,
        mode: Mode,
    ) -> Result<(B::Buf, Option<Tape<B>>)> {
        if k > self.blocks.len() {
            return Err(Error::Config(format!(
                "asked for features after {k} blocks; this model holds {}",
                self.blocks.len()
            )));
        }
        self.run(be, inp, mode, k, None)
    }

    fn run(
        &self,
        be: &B,
        inp: &Inputs<'_, B>,
        mode: Mode,
        n_blocks: usize,
        head: Option<&Head>,
    ) -> Result<(B::Buf, Option<Tape<B>>)> {
        self.check_inputs(be, inp)?;
        let s = inp.shape;
        let c = &self.cfg;
        let l = s.tokens();
        let n = s.batch * l;

        // Patch embedding over concat([x, y], channels).
        let pshape = PatchShape {
            batch: s.batch,
            channels: c.in_dim,
            frames: s.frames,
            height: s.height,
            width: s.width,
        };
        let xin = self.concat_channels(be, inp);
        let mut tokens = be.zeros(n * c.in_dim * 4);
        be.patchify(&xin, pshape, PatchOrder::ChannelMajor, &mut tokens);
        drop(xin);
        let mut h = self.patch.forward(be, &self.params, &tokens, n);

        let time = self.time.forward(be, &self.params, inp.t);
        let text = self
            .text
            .forward(be, &self.params, inp.context, s.batch * inp.text_len);
        let image = match (&self.image, inp.clip) {
            (Some(im), Some(clip)) => {
                Some(im.forward(be, &self.params, clip, s.batch * inp.image_len))
            }
            _ => None,
        };
        let (cos, sin) = rope_table(s.frames, s.height / 2, s.width / 2, c.head_dim());
        let rope = Rope {
            cos: be.upload(&cos),
            sin: be.upload(&sin),
        };
        let dims = self.block_dims(s, inp.text_len, inp.image_len);

        let mut saved = Vec::new();
        {
            let ctx = Context {
                text: &text.out,
                image: image.as_ref().map(|i| &i.out),
                rope: &rope,
            };
            for block in &self.blocks[..n_blocks] {
                let input_copy = (mode == Mode::TrainRecompute).then(|| {
                    let mut cp = be.zeros(n * c.dim);
                    be.copy_range(&h, 0, &mut cp, 0, n * c.dim);
                    cp
                });
                let (out, acts) = block.forward(be, &self.params, h, &time.e0, &ctx, dims);
                h = out;
                match (mode, input_copy) {
                    (Mode::Train, _) => saved.push(SavedBlock::Full(acts)),
                    (Mode::TrainRecompute, Some(input)) => saved.push(SavedBlock::Input(input)),
                    // Inference keeps nothing (and the copy exists only under recompute).
                    _ => drop(acts),
                }
            }
        }

        let (out, head_acts) = if let Some(head) = head {
            let d = c.dim;
            let mut mods = be.zeros(s.batch * 2 * d);
            be.broadcast_add(
                &time.e,
                self.params.vector(head.modulation),
                head_table(s.batch, d),
                &mut mods,
            );
            let (ln, ln_stats) = head.norm.forward(be, &self.params, &h, n);
            let mut m = be.zeros(n * d);
            let shape = ModShape {
                batch: s.batch,
                rows: l,
                d,
            };
            be.modulate_forward(&ln, shape, &mods, head_shift_scale(d), &mut m);
            let o = head.lin.forward(be, &self.params, &m, n);
            let oshape = PatchShape {
                channels: c.out_dim,
                ..pshape
            };
            let mut v = be.zeros(s.batch * c.out_dim * s.voxels());
            be.unpatchify(&o, oshape, PatchOrder::ChannelMinor, &mut v);
            (
                v,
                Some(HeadActs {
                    x: h,
                    ln,
                    ln_stats,
                    mods,
                    m,
                }),
            )
        } else {
            (h, None)
        };

        if mode == Mode::Inference {
            return Ok((out, None));
        }
        let clip = inp.clip.map(|c| {
            let mut cp = be.zeros(be.len(c));
            be.copy_range(c, 0, &mut cp, 0, be.len(c));
            cp
        });
        let mut context = be.zeros(be.len(inp.context));
        be.copy_range(inp.context, 0, &mut context, 0, be.len(inp.context));
        let tape = Tape {
            shape: s,
            text_len: inp.text_len,
            image_len: inp.image_len,
            t: inp.t.to_vec(),
            tokens,
            has_y: inp.y.is_some(),
            time,
            context,
            text,
            clip,
            image,
            rope,
            blocks: saved,
            head: head_acts,
        };
        Ok((out, Some(tape)))
    }

    /// `[B, out_dim + y_channels, F, H, W]`: the noisy latent first, then the I2V conditioning.
    fn concat_channels(&self, be: &B, inp: &Inputs<'_, B>) -> B::Buf {
        let s = inp.shape;
        let vox = s.voxels();
        let (cx, cy) = (self.cfg.out_dim, self.y_channels());
        let mut xin = be.zeros(s.batch * (cx + cy) * vox);
        for b in 0..s.batch {
            let base = b * (cx + cy) * vox;
            be.copy_range(inp.x, b * cx * vox, &mut xin, base, cx * vox);
            if let Some(y) = inp.y {
                be.copy_range(y, b * cy * vox, &mut xin, base + cx * vox, cy * vox);
            }
        }
        xin
    }

    /// Backward of [`WanModel::forward`] from the gradient of the output `dv`
    /// (`[B, out_dim, F, H, W]`).
    pub fn backward(
        &self,
        be: &B,
        tape: &Tape<B>,
        dv: &B::Buf,
        grads: &mut Grads<B>,
    ) -> Result<InputGrads<B>> {
        let head = self
            .head
            .as_ref()
            .ok_or_else(|| Error::Config("backward through the head needs the head".into()))?;
        let ha = tape
            .head
            .as_ref()
            .ok_or_else(|| Error::Config("this tape was recorded without the head".into()))?;
        let s = tape.shape;
        let (l, d) = (s.tokens(), self.cfg.dim);
        let n = s.batch * l;
        if be.len(dv) != s.batch * self.cfg.out_dim * s.voxels() {
            return Err(Error::InvalidInput(format!(
                "output gradient holds {} values, expected {}",
                be.len(dv),
                s.batch * self.cfg.out_dim * s.voxels()
            )));
        }
        let oshape = PatchShape {
            batch: s.batch,
            channels: self.cfg.out_dim,
            frames: s.frames,
            height: s.height,
            width: s.width,
        };
        let mut dout = be.zeros(n * self.cfg.out_dim * 4);
        be.patchify(dv, oshape, PatchOrder::ChannelMinor, &mut dout);
        let mut bp = Backprop {
            be,
            ps: &self.params,
            grads,
        };
        let dm = head.lin.backward(&mut bp, &ha.m, &dout, n);
        let mut dln = be.zeros(n * d);
        let mut dmods = be.zeros(s.batch * 2 * d);
        let shape = ModShape {
            batch: s.batch,
            rows: l,
            d,
        };
        let out = ModulateGrads {
            dx: &mut dln,
            dmods: &mut dmods,
        };
        be.modulate_backward(&dm, &ha.ln, shape, &ha.mods, head_shift_scale(d), out);
        let dh = head.norm.backward(&mut bp, &ha.x, &ha.ln_stats, &dln, n);
        let mut de = be.zeros(s.batch * d);
        match bp.grads.get_mut(head.modulation) {
            Some(dt) => be.broadcast_add_backward(&dmods, head_table(s.batch, d), &mut de, dt),
            None => {
                let mut scratch = be.zeros(2 * d);
                let table = head_table(s.batch, d);
                be.broadcast_add_backward(&dmods, table, &mut de, &mut scratch);
            }
        }
        self.backward_from(be, tape, dh, de, bp.grads)
    }

    /// Backward of [`WanModel::forward_features`] from the gradient of the hidden tokens.
    pub fn backward_features(
        &self,
        be: &B,
        tape: &Tape<B>,
        dh: B::Buf,
        grads: &mut Grads<B>,
    ) -> Result<InputGrads<B>> {
        let s = tape.shape;
        if be.len(&dh) != s.batch * s.tokens() * self.cfg.dim {
            return Err(Error::InvalidInput(format!(
                "feature gradient holds {} values, expected {}",
                be.len(&dh),
                s.batch * s.tokens() * self.cfg.dim
            )));
        }
        let de = be.zeros(s.batch * self.cfg.dim);
        self.backward_from(be, tape, dh, de, grads)
    }

    fn backward_from(
        &self,
        be: &B,
        tape: &Tape<B>,
        mut dh: B::Buf,
        de: B::Buf,
        grads: &mut Grads<B>,
    ) -> Result<InputGrads<B>> {
        let s = tape.shape;
        let c = &self.cfg;
        let n = s.batch * s.tokens();
        let dims = self.block_dims(s, tape.text_len, tape.image_len);
        let ctx = Context {
            text: &tape.text.out,
            image: tape.image.as_ref().map(|i| &i.out),
            rope: &tape.rope,
        };
        let mut bp = Backprop {
            be,
            ps: &self.params,
            grads,
        };
        let mut de0 = be.zeros(s.batch * 6 * c.dim);
        let mut dtext = be.zeros(s.batch * tape.text_len * c.dim);
        let mut dimage = tape
            .image
            .as_ref()
            .map(|_| be.zeros(s.batch * tape.image_len * c.dim));

        for (i, saved) in tape.blocks.iter().enumerate().rev() {
            let block = &self.blocks[i];
            let recomputed;
            let acts = match saved {
                SavedBlock::Full(a) => a,
                SavedBlock::Input(x) => {
                    let mut cp = be.zeros(n * c.dim);
                    be.copy_range(x, 0, &mut cp, 0, n * c.dim);
                    recomputed = block
                        .forward(be, &self.params, cp, &tape.time.e0, &ctx, dims)
                        .1;
                    &recomputed
                }
            };
            let (dx, g) = block.backward(&mut bp, acts, &ctx, dims, dh);
            dh = dx;
            be.add_assign(&mut de0, &g.de0);
            be.add_assign(&mut dtext, &g.dtext);
            if let (Some(acc), Some(gi)) = (dimage.as_mut(), g.dimage.as_ref()) {
                be.add_assign(acc, gi);
            }
        }

        // Conditioning embeddings.
        self.time.backward(&mut bp, &tape.time, de, &de0, s.batch);
        let dcontext = self.text.backward(
            &mut bp,
            &tape.text,
            &tape.context,
            &dtext,
            s.batch * tape.text_len,
        );
        let dclip = match (&self.image, &tape.image, &tape.clip, &dimage) {
            (Some(im), Some(acts), Some(clip), Some(dimg)) => {
                Some(im.backward(&mut bp, acts, clip, dimg, s.batch * tape.image_len))
            }
            _ => None,
        };

        // Patch embedding back to the latent grid, then split x from y.
        let dtokens = self.patch.backward(&mut bp, &tape.tokens, &dh, n);
        let pshape = PatchShape {
            batch: s.batch,
            channels: c.in_dim,
            frames: s.frames,
            height: s.height,
            width: s.width,
        };
        let mut dxin = be.zeros(s.batch * c.in_dim * s.voxels());
        be.unpatchify(&dtokens, pshape, PatchOrder::ChannelMajor, &mut dxin);
        let vox = s.voxels();
        let (cx, cy) = (c.out_dim, self.y_channels());
        let mut dx = be.zeros(s.batch * cx * vox);
        let mut dy = tape.has_y.then(|| be.zeros(s.batch * cy * vox));
        for b in 0..s.batch {
            let base = b * (cx + cy) * vox;
            be.copy_range(&dxin, base, &mut dx, b * cx * vox, cx * vox);
            if let Some(dy) = dy.as_mut() {
                be.copy_range(&dxin, base + cx * vox, dy, b * cy * vox, cy * vox);
            }
        }
        let _ = &tape.t;
        Ok(InputGrads {
            x: dx,
            context: dcontext,
            y: dy,
            clip: dclip,
        })
    }
}

/// The head's `[B, 2D]` table: shift then scale (it is driven by `e`, not `e0`: parity trap 1).
fn head_slot(d: usize, k: usize) -> ModSlot {
    ModSlot {
        stride: 2 * d,
        offset: k * d,
    }
}

/// The head's shift (row 0) and scale (row 1) of its `[B, 2, D]` table.
fn head_shift_scale(d: usize) -> ShiftScale {
    ShiftScale {
        shift: head_slot(d, 0),
        scale: head_slot(d, 1),
    }
}

/// Each sample's `e: [D]` added to both rows of the head's `[2, D]` modulation table.
fn head_table(batch: usize, d: usize) -> BroadcastShape {
    BroadcastShape { batch, w: d, k: 2 }
}
