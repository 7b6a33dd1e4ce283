//! The shapes of the ops, one struct per op family, and the buffer groups that some ops take.
//!
//! Buffers do not carry their shapes (as in llm.c), so every op is told them. Each shape struct
//! has one `check_buffers` that says whether the buffers an op was handed fit the shape; every
//! backend calls it before touching memory, so the backends refuse exactly the same calls: the
//! CPU panics with the message (the trait has no `Result`), the CUDA launchers log it and return
//! `CUDA_ERROR_INVALID_VALUE`. Limits that belong to one device only (CUDA's 32-bit index
//! arithmetic) are checked by that backend on top.
//!
//! The buffer groups ([`Qkv`], [`NormAffine`], [`LayerNormStats`], [`LayerNormGrads`],
//! [`RmsNormGrads`], [`ModulateGrads`], [`GatedAddGrads`]) are generic over what they hold, so
//! that the same struct carries `&B::Buf` inputs, `&mut B::Buf` outputs or plain slices, and
//! `map` turns one into another (the [`super::device::Device`] dispatch and the CPU adapters).

use std::fmt;

/// Why an op refused its buffers: one is too short for the shape, or the shape itself is not
/// one the op accepts.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ShapeError(String);

/// `Err` unless buffer `name` (of `len` floats) holds the `need` floats that `shape` addresses.
fn holds(name: &str, len: usize, need: usize, shape: &dyn fmt::Debug) -> Result<(), ShapeError> {
    if len >= need {
        Ok(())
    } else {
        Err(ShapeError(format!(
            "{name} holds {len} values, {shape:?} needs {need}"
        )))
    }
}

/// [`holds`] for each `(name, len)` of `bufs`.
fn all_hold(bufs: &[(&str, usize)], need: usize, shape: &dyn fmt::Debug) -> Result<(), ShapeError> {
    bufs.iter()
        .try_for_each(|&(name, len)| holds(name, len, need, shape))
}

/// Where a per-sample modulation vector of width `d` lives: element `j` of sample `b` is
/// `buf[b * stride + offset + j]`.
#[derive(Clone, Copy, Debug)]
pub struct ModSlot {
    pub stride: usize,
    pub offset: usize,
}

impl ModSlot {
    /// One past the last element this slot reaches over `batch` samples of width `d` (0 when
    /// there are no samples).
    pub fn end(&self, batch: usize, d: usize) -> usize {
        if batch == 0 {
            0
        } else {
            (batch - 1) * self.stride + self.offset + d
        }
    }
}

/// The shift and scale slots of a modulation (`x * (1 + scale) + shift`).
#[derive(Clone, Copy, Debug)]
pub struct ShiftScale {
    pub shift: ModSlot,
    pub scale: ModSlot,
}

/// Rows of width `d` (the norms): activations `[rows, d]`, per-row statistics `[rows]`,
/// per-column parameters `[d]`.
#[derive(Clone, Copy, Debug)]
pub struct RowShape {
    pub rows: usize,
    pub d: usize,
}

impl RowShape {
    /// Checks the `[rows, d]` activations, the `[rows]` statistics and the `[d]` parameters
    /// (each a `(name, length)`), and that rows are not empty when there are any. The op
    /// checks below are this one with their buffers named.
    pub fn check_buffers(
        &self,
        activations: &[(&str, usize)],
        statistics: &[(&str, usize)],
        parameters: &[(&str, Option<usize>)],
    ) -> Result<(), ShapeError> {
        if self.d == 0 && self.rows > 0 {
            return Err(ShapeError(format!("{self:?}: rows of width 0")));
        }
        all_hold(activations, self.rows * self.d, self)?;
        all_hold(statistics, self.rows, self)?;
        parameters.iter().try_for_each(|&(name, len)| match len {
            Some(len) => holds(name, len, self.d, self),
            None => Ok(()),
        })
    }

    /// [`RowShape::check_buffers`] for a LayerNorm forward (buffer lengths in floats).
    pub fn check_layernorm_forward(
        &self,
        x: usize,
        affine: NormAffine<usize>,
        y: usize,
        stats: LayerNormStats<usize>,
    ) -> Result<(), ShapeError> {
        self.check_buffers(
            &[("x", x), ("y", y)],
            &[("mean", stats.mean), ("rstd", stats.rstd)],
            &[("weight", affine.weight), ("bias", affine.bias)],
        )
    }

    /// [`RowShape::check_buffers`] for a LayerNorm backward.
    pub fn check_layernorm_backward(
        &self,
        dy: usize,
        x: usize,
        weight: Option<usize>,
        stats: LayerNormStats<usize>,
        grads: LayerNormGrads<usize>,
    ) -> Result<(), ShapeError> {
        self.check_buffers(
            &[("dy", dy), ("x", x), ("dx", grads.dx)],
            &[("mean", stats.mean), ("rstd", stats.rstd)],
            &[
                ("weight", weight),
                ("dweight", grads.dweight),
                ("dbias", grads.dbias),
            ],
        )
    }

    /// [`RowShape::check_buffers`] for an RMSNorm forward.
    pub fn check_rmsnorm_forward(
        &self,
        x: usize,
        weight: usize,
        y: usize,
        rstd: usize,
    ) -> Result<(), ShapeError> {
        self.check_buffers(
            &[("x", x), ("y", y)],
            &[("rstd", rstd)],
            &[("weight", Some(weight))],
        )
    }

    /// [`RowShape::check_buffers`] for an RMSNorm backward.
    pub fn check_rmsnorm_backward(
        &self,
        dy: usize,
        x: usize,
        weight: usize,
        rstd: usize,
        grads: RmsNormGrads<usize>,
    ) -> Result<(), ShapeError> {
        self.check_buffers(
            &[("dy", dy), ("x", x), ("dx", grads.dx)],
            &[("rstd", rstd)],
            &[("weight", Some(weight)), ("dweight", Some(grads.dweight))],
        )
    }
}

/// A LayerNorm's optional affine parameters, `[d]` each (or, in the backward, their
/// gradients).
#[derive(Clone, Copy, Debug)]
pub struct NormAffine<T> {
    pub weight: Option<T>,
    pub bias: Option<T>,
}

impl<T> NormAffine<T> {
    /// No affine parameters.
    pub fn none() -> Self {
        NormAffine {
            weight: None,
            bias: None,
        }
    }
    pub fn map<U>(self, mut f: impl FnMut(T) -> U) -> NormAffine<U> {
        NormAffine {
            weight: self.weight.map(&mut f),
            bias: self.bias.map(f),
        }
    }
    /// The lengths of the buffers held, by `len`.
    pub fn lens(&self, len: impl Fn(&T) -> usize) -> NormAffine<usize> {
        NormAffine {
            weight: self.weight.as_ref().map(&len),
            bias: self.bias.as_ref().map(&len),
        }
    }
}

/// The per-row statistics a LayerNorm forward saves for its backward: `mean` and
/// `rstd = 1/sqrt(var + eps)`, `[rows]` each.
#[derive(Clone, Copy, Debug)]
pub struct LayerNormStats<T> {
    pub mean: T,
    pub rstd: T,
}

impl<T> LayerNormStats<T> {
    pub fn map<U>(self, mut f: impl FnMut(T) -> U) -> LayerNormStats<U> {
        LayerNormStats {
            mean: f(self.mean),
            rstd: f(self.rstd),
        }
    }
    pub fn as_ref(&self) -> LayerNormStats<&T> {
        LayerNormStats {
            mean: &self.mean,
            rstd: &self.rstd,
        }
    }
    pub fn as_mut(&mut self) -> LayerNormStats<&mut T> {
        LayerNormStats {
            mean: &mut self.mean,
            rstd: &mut self.rstd,
        }
    }
    /// The lengths of the buffers held, by `len`.
    pub fn lens(&self, len: impl Fn(&T) -> usize) -> LayerNormStats<usize> {
        LayerNormStats {
            mean: len(&self.mean),
            rstd: len(&self.rstd),
        }
    }
}

/// What a LayerNorm backward writes: `dx` (overwritten) and, when given, the parameter
/// gradients (accumulated).
#[derive(Debug)]
pub struct LayerNormGrads<T> {
    pub dx: T,
    pub dweight: Option<T>,
    pub dbias: Option<T>,
}

impl<T> LayerNormGrads<T> {
    pub fn map<U>(self, mut f: impl FnMut(T) -> U) -> LayerNormGrads<U> {
        LayerNormGrads {
            dx: f(self.dx),
            dweight: self.dweight.map(&mut f),
            dbias: self.dbias.map(f),
        }
    }
    /// The lengths of the buffers held, by `len`.
    pub fn lens(&self, len: impl Fn(&T) -> usize) -> LayerNormGrads<usize> {
        LayerNormGrads {
            dx: len(&self.dx),
            dweight: self.dweight.as_ref().map(&len),
            dbias: self.dbias.as_ref().map(&len),
        }
    }
}

/// What an RMSNorm backward writes: `dx` (overwritten) and `dweight` (accumulated).
#[derive(Debug)]
pub struct RmsNormGrads<T> {
    pub dx: T,
    pub dweight: T,
}

impl<T> RmsNormGrads<T> {
    pub fn map<U>(self, mut f: impl FnMut(T) -> U) -> RmsNormGrads<U> {
        RmsNormGrads {
            dx: f(self.dx),
            dweight: f(self.dweight),
        }
    }
    /// The lengths of the buffers held, by `len`.
    pub fn lens(&self, len: impl Fn(&T) -> usize) -> RmsNormGrads<usize> {
        RmsNormGrads {
            dx: len(&self.dx),
            dweight: len(&self.dweight),
        }
    }
}

/// Per-sample modulation of `[batch, rows, d]` activations by `d`-wide vectors read from a
/// `[batch, stride]` modulation table at [`ModSlot`]s.
#[derive(Clone, Copy, Debug)]
pub struct ModShape {
    pub batch: usize,
    pub rows: usize,
    pub d: usize,
}

impl ModShape {
    /// Values per sample, `rows * d`.
    pub fn per_sample(&self) -> usize {
        self.rows * self.d
    }
    /// Values of the activations, `batch * rows * d`.
    pub fn total(&self) -> usize {
        self.batch * self.per_sample()
    }

    /// Checks the `[batch, rows, d]` activations and that every slot of width `d` stays inside
    /// the modulation table (`table` is its `(name, length)`).
    pub fn check_buffers(
        &self,
        activations: &[(&str, usize)],
        table: (&str, usize),
        slots: &[ModSlot],
    ) -> Result<(), ShapeError> {
        all_hold(activations, self.total(), self)?;
        slots.iter().try_for_each(|s| {
            let end = s.end(self.batch, self.d);
            if end <= table.1 {
                Ok(())
            } else {
                Err(ShapeError(format!(
                    "slot {s:?} of width {} reaches {end}, past the {} values of {}",
                    self.d, table.1, table.0
                )))
            }
        })
    }
}

impl ModShape {
    /// [`ModShape::check_buffers`] for a modulation forward.
    pub fn check_modulate_forward(
        &self,
        x: usize,
        mods: usize,
        slots: ShiftScale,
        y: usize,
    ) -> Result<(), ShapeError> {
        self.check_buffers(
            &[("x", x), ("y", y)],
            ("mods", mods),
            &[slots.shift, slots.scale],
        )
    }

    /// [`ModShape::check_buffers`] for a modulation backward (`dmods` is laid out like `mods`).
    pub fn check_modulate_backward(
        &self,
        dy: usize,
        x: usize,
        mods: usize,
        slots: ShiftScale,
        grads: ModulateGrads<usize>,
    ) -> Result<(), ShapeError> {
        let slots = [slots.shift, slots.scale];
        self.check_buffers(
            &[("dy", dy), ("x", x), ("dx", grads.dx)],
            ("mods", mods),
            &slots,
        )?;
        self.check_buffers(&[], ("dmods", grads.dmods), &slots)
    }

    /// [`ModShape::check_buffers`] for a gated residual.
    pub fn check_gated_add_forward(
        &self,
        x: usize,
        y: usize,
        mods: usize,
        gate: ModSlot,
    ) -> Result<(), ShapeError> {
        self.check_buffers(&[("x", x), ("y", y)], ("mods", mods), &[gate])
    }

    /// [`ModShape::check_buffers`] for a gated-residual backward.
    pub fn check_gated_add_backward(
        &self,
        dx: usize,
        y: usize,
        mods: usize,
        gate: ModSlot,
        grads: GatedAddGrads<usize>,
    ) -> Result<(), ShapeError> {
        self.check_buffers(
            &[("dx", dx), ("y", y), ("dy", grads.dy)],
            ("mods", mods),
            &[gate],
        )?;
        self.check_buffers(&[], ("dmods", grads.dmods), &[gate])
    }
}

/// What a modulation backward writes: `dx` (overwritten) and the shift and scale gradients
/// (accumulated into `dmods` at their slots).
#[derive(Debug)]
pub struct ModulateGrads<T> {
    pub dx: T,
    pub dmods: T,
}

impl<T> ModulateGrads<T> {
    pub fn map<U>(self, mut f: impl FnMut(T) -> U) -> ModulateGrads<U> {
        ModulateGrads {
            dx: f(self.dx),
            dmods: f(self.dmods),
        }
    }
    /// The lengths of the buffers held, by `len`.
    pub fn lens(&self, len: impl Fn(&T) -> usize) -> ModulateGrads<usize> {
        ModulateGrads {
            dx: len(&self.dx),
            dmods: len(&self.dmods),
        }
    }
}

/// What a gated-residual backward writes: `dy`, the gradient of the gated branch (overwritten),
/// and the gate gradient (accumulated into `dmods` at the gate slot).
#[derive(Debug)]
pub struct GatedAddGrads<T> {
    pub dy: T,
    pub dmods: T,
}

impl<T> GatedAddGrads<T> {
    pub fn map<U>(self, mut f: impl FnMut(T) -> U) -> GatedAddGrads<U> {
        GatedAddGrads {
            dy: f(self.dy),
            dmods: f(self.dmods),
        }
    }
    /// The lengths of the buffers held, by `len`.
    pub fn lens(&self, len: impl Fn(&T) -> usize) -> GatedAddGrads<usize> {
        GatedAddGrads {
            dy: len(&self.dy),
            dmods: len(&self.dmods),
        }
    }
}

/// Heads of interleaved pairs rotated by a per-token angle: `x: [batch, tokens, heads,
/// head_dim]`, angle tables `cos, sin: [tokens, head_dim / 2]`.
#[derive(Clone, Copy, Debug)]
pub struct RopeShape {
    pub batch: usize,
    pub tokens: usize,
    pub heads: usize,
    pub head_dim: usize,
}

impl RopeShape {
    /// Values of `x`.
    pub fn total(&self) -> usize {
        self.batch * self.tokens * self.heads * self.head_dim
    }

    /// Checks that `head_dim` is even (it holds pairs) and the lengths of `x` and the tables.
    pub fn check_buffers(&self, x: usize, cos: usize, sin: usize) -> Result<(), ShapeError> {
        if self.head_dim % 2 != 0 {
            return Err(ShapeError(format!("{self:?}: head_dim is odd")));
        }
        holds("x", x, self.total(), self)?;
        let table = self.tokens * (self.head_dim / 2);
        holds("cos", cos, table, self)?;
        holds("sin", sin, table, self)
    }
}

/// A dense layer's product over `n` rows: `x: [n, n_in]`, `dy: [n, n_out]`, weight (and its
/// gradient) `[n_out, n_in]`, bias `[n_out]`.
#[derive(Clone, Copy, Debug)]
pub struct LinearShape {
    pub n: usize,
    pub n_in: usize,
    pub n_out: usize,
}

impl LinearShape {
    /// Checks the buffers of the weight-gradient product (`db` when there is a bias gradient).
    pub fn check_buffers(
        &self,
        dy: usize,
        x: usize,
        dw: usize,
        db: Option<usize>,
    ) -> Result<(), ShapeError> {
        holds("dy", dy, self.n * self.n_out, self)?;
        holds("x", x, self.n * self.n_in, self)?;
        holds("dw", dw, self.n_out * self.n_in, self)?;
        db.map_or(Ok(()), |db| holds("db", db, self.n_out, self))
    }
}

/// A `[batch, w]` input broadcast against a `[k * w]` table into a `[batch, k * w]` output
/// (each sample's vector added to each of the `k` table rows).
#[derive(Clone, Copy, Debug)]
pub struct BroadcastShape {
    pub batch: usize,
    pub w: usize,
    pub k: usize,
}

impl BroadcastShape {
    /// Values of the output.
    pub fn total(&self) -> usize {
        self.batch * self.k * self.w
    }

    /// Checks the input (or its gradient), the table (or its gradient) and the output (or its
    /// gradient).
    pub fn check_buffers(&self, x: usize, table: usize, out: usize) -> Result<(), ShapeError> {
        holds("x", x, self.batch * self.w, self)?;
        holds("table", table, self.k * self.w, self)?;
        holds("out", out, self.total(), self)
    }
}

/// Shape of a multi-head attention call for a batch: queries `[batch, lq, heads, head_dim]`,
/// keys and values `[batch, lk, heads, head_dim]`, scale `1/sqrt(head_dim)`.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub batch: usize,
    pub lq: usize,
    pub lk: usize,
    pub heads: usize,
    pub head_dim: usize,
}

impl AttnShape {
    /// Checks that `q`, `k` and `v` (lengths in floats) hold this shape, and that there are keys
    /// when there are queries (the softmax would be empty). Every backend's attention checks its
    /// arguments here, so they refuse exactly the same calls.
    pub fn check_buffers(&self, q: usize, k: usize, v: usize) -> Result<(), ShapeError> {
        let AttnShape {
            batch,
            lq,
            lk,
            heads,
            head_dim: d,
        } = *self;
        holds("q", q, batch * lq * heads * d, self)?;
        holds("k", k, batch * lk * heads * d, self)?;
        holds("v", v, batch * lk * heads * d, self)?;
        if lk == 0 && batch * lq * heads * d > 0 {
            return Err(ShapeError(format!("{self:?}: no keys to attend to")));
        }
        Ok(())
    }
}

/// The query, key and value buffers of an attention call, or their gradients.
#[derive(Debug)]
pub struct Qkv<T> {
    pub q: T,
    pub k: T,
    pub v: T,
}

impl<T> Qkv<T> {
    pub fn map<U>(self, mut f: impl FnMut(T) -> U) -> Qkv<U> {
        Qkv {
            q: f(self.q),
            k: f(self.k),
            v: f(self.v),
        }
    }
}

/// Shape of a latent video batch `[batch, channels, frames, height, width]` cut into (1, 2, 2)
/// patches; tokens are ordered (f, h, w).
#[derive(Clone, Copy, Debug)]
pub struct PatchShape {
    pub batch: usize,
    pub channels: usize,
    pub frames: usize,
    pub height: usize,
    pub width: usize,
}

impl PatchShape {
    pub fn tokens(&self) -> usize {
        self.frames * (self.height / 2) * (self.width / 2)
    }
    pub fn patch_len(&self) -> usize {
        self.channels * 4
    }
    /// Values of the video, and of its patches (the same values, reordered).
    pub fn total(&self) -> usize {
        self.batch * self.channels * self.frames * self.height * self.width
    }

    /// Checks that the latent's height and width are even (whole patches) and that the video
    /// and the patch tokens each hold [`PatchShape::total`] values.
    pub fn check_buffers(&self, video: usize, tokens: usize) -> Result<(), ShapeError> {
        if self.height % 2 != 0 || self.width % 2 != 0 {
            return Err(ShapeError(format!(
                "{self:?}: latent height and width must be even"
            )));
        }
        holds("video", video, self.total(), self)?;
        holds("tokens", tokens, self.total(), self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;
    use crate::backend::Backend;
    use crate::error::panic_message;

    fn refused(r: Result<(), ShapeError>) -> String {
        r.expect_err("the check should refuse").to_string()
    }

    #[test]
    fn row_shape_names_the_buffer_that_is_short() {
        let s = RowShape { rows: 3, d: 4 };
        let stats = LayerNormStats { mean: 3, rstd: 3 };
        let affine = NormAffine {
            weight: Some(4),
            bias: None,
        };
        assert!(s.check_layernorm_forward(12, affine, 12, stats).is_ok());
        // Longer buffers are fine (ops read only the shape's prefix).
        assert!(s.check_layernorm_forward(13, affine, 20, stats).is_ok());
        let e = refused(s.check_layernorm_forward(12, affine, 11, stats));
        assert!(
            e.starts_with("y holds 11 values") && e.ends_with("needs 12"),
            "{e}"
        );
        let short_rstd = LayerNormStats { mean: 3, rstd: 2 };
        let e = refused(s.check_layernorm_forward(12, affine, 12, short_rstd));
        assert!(e.starts_with("rstd holds 2"), "{e}");
        let short_bias = NormAffine {
            weight: Some(4),
            bias: Some(3),
        };
        let e = refused(s.check_layernorm_forward(12, short_bias, 12, stats));
        assert!(e.starts_with("bias holds 3"), "{e}");
        let grads = LayerNormGrads {
            dx: 12,
            dweight: None,
            dbias: Some(1),
        };
        let e = refused(s.check_layernorm_backward(12, 12, None, stats, grads));
        assert!(e.starts_with("dbias holds 1"), "{e}");
        let grads = RmsNormGrads { dx: 12, dweight: 4 };
        assert!(s.check_rmsnorm_backward(12, 12, 4, 3, grads).is_ok());
        // Rows of width 0 are refused (the CPU kernels could not split them), empty shapes not.
        assert!(RowShape { rows: 2, d: 0 }
            .check_rmsnorm_forward(0, 0, 0, 2)
            .is_err());
        assert!(RowShape { rows: 0, d: 0 }
            .check_rmsnorm_forward(0, 0, 0, 0)
            .is_ok());
    }

    #[test]
    fn mod_shape_checks_every_slot_against_its_table() {
        let s = ModShape {
            batch: 2,
            rows: 3,
            d: 4,
        };
        let slots = ShiftScale {
            shift: ModSlot {
                stride: 12,
                offset: 0,
            },
            scale: ModSlot {
                stride: 12,
                offset: 8,
            },
        };
        // The last sample's scale ends at 12 + 8 + 4 = 24.
        assert!(s.check_modulate_forward(24, 24, slots, 24).is_ok());
        let e = refused(s.check_modulate_forward(24, 23, slots, 24));
        assert!(e.contains("reaches 24, past the 23 values of mods"), "{e}");
        let grads = ModulateGrads { dx: 24, dmods: 20 };
        let e = refused(s.check_modulate_backward(24, 24, 24, slots, grads));
        assert!(e.contains("of dmods"), "{e}");
        let grads = GatedAddGrads { dy: 23, dmods: 24 };
        let e = refused(s.check_gated_add_backward(24, 24, 24, slots.shift, grads));
        assert!(e.starts_with("dy holds 23"), "{e}");
        // No samples: no slot reaches anything.
        let empty = ModShape { batch: 0, ..s };
        assert!(empty.check_modulate_forward(0, 0, slots, 0).is_ok());
    }

    #[test]
    fn the_other_shapes_refuse_what_their_kernels_cannot_do() {
        let rope = RopeShape {
            batch: 1,
            tokens: 2,
            heads: 3,
            head_dim: 4,
        };
        assert!(rope.check_buffers(24, 4, 4).is_ok());
        assert!(refused(rope.check_buffers(24, 4, 3)).starts_with("sin holds 3"));
        let odd = RopeShape {
            head_dim: 5,
            ..rope
        };
        assert!(refused(odd.check_buffers(30, 10, 10)).contains("head_dim is odd"));

        let lin = LinearShape {
            n: 2,
            n_in: 3,
            n_out: 4,
        };
        assert!(lin.check_buffers(8, 6, 12, Some(4)).is_ok());
        assert!(lin.check_buffers(8, 6, 12, None).is_ok());
        assert!(refused(lin.check_buffers(8, 6, 12, Some(3))).starts_with("db holds 3"));
        assert!(refused(lin.check_buffers(8, 6, 11, None)).starts_with("dw holds 11"));

        let bc = BroadcastShape {
            batch: 2,
            w: 3,
            k: 4,
        };
        assert!(bc.check_buffers(6, 12, 24).is_ok());
        assert!(refused(bc.check_buffers(6, 12, 23)).starts_with("out holds 23"));

        let attn = AttnShape {
            batch: 1,
            lq: 2,
            lk: 0,
            heads: 1,
            head_dim: 4,
        };
        assert!(refused(attn.check_buffers(8, 0, 0)).contains("no keys"));
        assert!(AttnShape { lq: 0, ..attn }.check_buffers(0, 0, 0).is_ok());

        let patch = PatchShape {
            batch: 1,
            channels: 2,
            frames: 1,
            height: 3,
            width: 4,
        };
        assert!(refused(patch.check_buffers(24, 24)).contains("must be even"));
        let even = PatchShape { height: 2, ..patch };
        assert!(even.check_buffers(16, 16).is_ok());
        assert!(refused(even.check_buffers(16, 15)).starts_with("tokens holds 15"));
    }

    /// The CPU backend refuses through the same check, naming the op.
    #[test]
    fn the_cpu_backend_panics_with_the_checks_message() {
        let shape = RowShape { rows: 2, d: 3 };
        let caught = std::panic::catch_unwind(|| {
            let (x, w) = (vec![1.0; 6], vec![1.0; 3]);
            let (mut y, mut rstd) = (vec![0.0; 6], vec![0.0; 1]);
            Cpu.rmsnorm_forward(&x, shape, &w, 1e-6, &mut y, &mut rstd);
        })
        .expect_err("a short rstd must be refused");
        let msg = panic_message(&*caught);
        assert!(
            msg.starts_with("rmsnorm_forward (cpu): rstd holds 1 values"),
            "{msg}"
        );
    }
}
