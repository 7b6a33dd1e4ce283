//! AdamW over the trainable parameters of a [`ParamStore`], as the reference trains (method.md
//! sections 3 and 4): global grad-norm clipping exactly like torch's `clip_grad_norm_`, then
//! `torch.optim.AdamW` (decoupled weight decay, bias correction), with fp32 master weights for
//! half-precision matrices, gradient-accumulation averaging, per-parameter learning rates (the
//! reward model's backbone and head train at different rates), linear warm-up, and a step that
//! is skipped outright when the gradients are not finite.
//!
//! Numerics: the betas are used as the f32 values the config holds, both in the moment updates
//! (the backend kernel) and in the bias corrections (computed here in f64 from those same f32
//! values), so the optimiser is an exact AdamW for those betas; torch given the same f32-valued
//! hyper-parameters agrees to a few ulps (the order of the f32 roundings differs slightly).

use crate::backend::{AdamWHyper, Backend};
use crate::model::params::{Grads, ParamData, ParamStore};
use crate::{Error, Result};

/// Hyper-parameters. The defaults are the PAVRM backbone settings (method.md section 3); PRFL
/// uses `lr: 5e-6` (section 4).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    /// Base learning rate (parameters may override it, see [`AdamW::with_lr`]).
    pub lr: f32,
    pub betas: (f32, f32),
    pub eps: f32,
    /// Decoupled: `p *= 1 - lr * weight_decay` before the Adam step, as torch's AdamW.
    pub weight_decay: f32,
    /// Clip the global L2 norm of the (averaged) gradients to this value; `None` disables it.
    pub max_grad_norm: Option<f32>,
    /// Linear warm-up: step `k` (counting from 0) uses `lr * min(1, (k + 1) / warmup_steps)`;
    /// 0 means a constant learning rate from the first step.
    pub warmup_steps: u64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-6,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.01,
            max_grad_norm: Some(1.0),
            warmup_steps: 0,
        }
    }
}

impl AdamWConfig {
    fn validate(&self) -> Result<()> {
        let (b1, b2) = self.betas;
        let bad = |what: &str| Err(Error::Config(format!("AdamW: {what}")));
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return bad(&format!("lr {} must be finite and >= 0", self.lr));
        }
        if !((0.0..1.0).contains(&b1) && (0.0..1.0).contains(&b2)) {
            return bad(&format!("betas ({b1}, {b2}) must lie in [0, 1)"));
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return bad(&format!("eps {} must be finite and > 0", self.eps));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(&format!(
                "weight_decay {} must be finite and >= 0",
                self.weight_decay
            ));
        }
        if let Some(m) = self.max_grad_norm {
            if !(m.is_finite() && m > 0.0) {
                return bad(&format!("max_grad_norm {m} must be finite and > 0"));
            }
        }
        Ok(())
    }
}

/// What one [`AdamW::step`] did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepReport {
    /// Global L2 norm of the averaged gradients before clipping (what `clip_grad_norm_` returns).
    pub grad_norm: f64,
    /// Factor the averaged gradients were multiplied by (1 when not clipped; 0 when skipped).
    pub clip_coef: f32,
    /// The gradients held a NaN or an infinity: nothing was updated.
    pub skipped_nonfinite: bool,
    /// Optimiser steps taken so far, this one included (unchanged when skipped).
    pub step: u64,
    /// The base learning rate of this step after warm-up (the one it would have used if skipped).
    pub lr: f32,
}

/// Optimiser state of one trainable parameter.
pub(super) struct Slot<B: Backend> {
    /// Index into the [`ParamStore`].
    pub(super) id: usize,
    /// This parameter's learning rate before warm-up.
    pub(super) lr: f32,
    /// f32 master copy of a matrix weight (whose storage may be bf16/f16: updates far below its
    /// rounding step would otherwise vanish). `None` for vector parameters, which are f32 already
    /// and are updated in place.
    pub(super) master: Option<B::Buf>,
    /// First and second moments.
    pub(super) m: B::Buf,
    pub(super) v: B::Buf,
}

/// AdamW over the parameters that have a gradient buffer (`Some` in [`Grads`]).
///
/// The optimiser owns the trainable values: it keeps f32 masters of matrix weights and rewrites
/// the store from them after every update, so changing a trainable weight in the store behind its
/// back is undone by the next step (load weights through [`AdamW::import_state`] instead).
pub struct AdamW<B: Backend> {
    pub(super) cfg: AdamWConfig,
    pub(super) slots: Vec<Slot<B>>,
    /// Updates applied so far (drives bias correction and warm-up).
    pub(super) step: u64,
}

impl<B: Backend> AdamW<B> {
    /// One learning rate (`cfg.lr`) for every trainable parameter.
    pub fn new(be: &B, params: &ParamStore<B>, grads: &Grads<B>, cfg: AdamWConfig) -> Result<Self> {
        let lr = cfg.lr;
        Self::with_lr(be, params, grads, cfg, |_| lr)
    }

    /// Per-parameter learning rates: `lr_for(name)` is the rate (before warm-up) of each
    /// trainable parameter, like torch's parameter groups; `cfg.lr` is then only the rate that
    /// [`StepReport::lr`] reports.
    pub fn with_lr(
        be: &B,
        params: &ParamStore<B>,
        grads: &Grads<B>,
        cfg: AdamWConfig,
        lr_for: impl Fn(&str) -> f32,
    ) -> Result<Self> {
        cfg.validate()?;
        if grads.bufs.len() != params.len() {
            return Err(Error::InvalidInput(format!(
                "AdamW: {} gradient slots for {} parameters",
                grads.bufs.len(),
                params.len()
            )));
        }
        let mut slots = Vec::new();
        for id in (0..params.len()).filter(|&id| grads.get(id).is_some()) {
            let name = params.name(id);
            let lr = lr_for(name);
            if !(lr.is_finite() && lr >= 0.0) {
                return Err(Error::Config(format!(
                    "AdamW: learning rate {lr} for `{name}` must be finite and >= 0"
                )));
            }
            let numel = params.numel(id);
            let master = match params.data(id) {
                ParamData::Matrix(w) => Some(be.weight_to_buf(w)),
                ParamData::Vector(_) => None,
            };
            slots.push(Slot {
                id,
                lr,
                master,
                m: be.zeros(numel),
                v: be.zeros(numel),
            });
        }
        Ok(AdamW {
            cfg,
            slots,
            step: 0,
        })
    }

    /// Ends an accumulation window of `micro_batches`: an AdamW step, or, when the window saw a
    /// non-finite loss (`poisoned`), a skipped step that changes nothing. Either way the
    /// gradients are zeroed for the next window.
    pub fn close_window(
        &mut self,
        be: &B,
        params: &mut ParamStore<B>,
        grads: &mut Grads<B>,
        micro_batches: usize,
        poisoned: bool,
    ) -> StepReport {
        let report = if poisoned {
            StepReport {
                grad_norm: f64::NAN,
                clip_coef: 0.0,
                skipped_nonfinite: true,
                step: self.step,
                lr: 0.0,
            }
        } else {
            self.step(be, params, grads, micro_batches)
        };
        grads.zero(be);
        report
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }

    /// Updates applied so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Store indices of the parameters this optimiser trains, in store order.
    pub fn trainable(&self) -> impl Iterator<Item = usize> + '_ {
        self.slots.iter().map(|s| s.id)
    }

    /// Device bytes of the optimiser state (masters and moments).
    pub fn state_bytes(&self, be: &B) -> usize {
        self.slots
            .iter()
            .map(|s| {
                be.buf_bytes(&s.m)
                    + be.buf_bytes(&s.v)
                    + s.master.as_ref().map_or(0, |b| be.buf_bytes(b))
            })
            .sum()
    }

    /// The warm-up multiplier of the next update.
    fn warmup_factor(&self) -> f64 {
        let w = self.cfg.warmup_steps;
        if w == 0 || self.step >= w {
            1.0
        } else {
            (self.step + 1) as f64 / w as f64
        }
    }

    /// One optimiser step from gradients accumulated (summed, as the backward ops do) over
    /// `micro_batches` micro-batches: the update uses their mean, clipped to `max_grad_norm`.
    ///
    /// When the gradient norm is not finite (a NaN or infinity anywhere, or a norm beyond f32
    /// range) nothing changes, not the weights, the moments, the step count or the warm-up
    /// position, and the report says `skipped_nonfinite`.
    ///
    /// The gradients are read, never modified: the caller zeroes them ([`Grads::zero`]) before
    /// accumulating the next step, skipped or not.
    ///
    /// Panics when `grads` does not have exactly the trainable set this optimiser was built
    /// with, or `micro_batches` is 0 (programming errors, not data errors).
    pub fn step(
        &mut self,
        be: &B,
        params: &mut ParamStore<B>,
        grads: &Grads<B>,
        micro_batches: usize,
    ) -> StepReport {
        assert!(micro_batches > 0, "AdamW::step needs micro_batches >= 1");
        self.check_trainable_set(params, grads);

        let lr_factor = self.warmup_factor();
        let base_lr = (self.cfg.lr as f64 * lr_factor) as f32;
        // The norm of the mean gradient; sums of squares in f64 in a fixed order (store order),
        // so the result, and hence clipping, is reproducible bit for bit on resume.
        let each: Vec<&B::Buf> = self.slots.iter().map(|s| grad_of(grads, s.id)).collect();
        let sum_sq: f64 = be.sum_squares_each(&each).into_iter().sum();
        let grad_norm = sum_sq.sqrt() / micro_batches as f64;
        // torch computes the norm in f32; one that overflows f32 would zero every gradient there.
        let norm32 = grad_norm as f32;
        if !norm32.is_finite() {
            return StepReport {
                grad_norm,
                clip_coef: 0.0,
                skipped_nonfinite: true,
                step: self.step,
                lr: base_lr,
            };
        }
        // `clip_grad_norm_`: coef = max_norm / (total_norm + 1e-6), clamped to 1, in f32.
        let clip_coef = match self.cfg.max_grad_norm {
            Some(max) => (max / (norm32 + 1e-6)).min(1.0),
            None => 1.0,
        };
        // Averaging and clipping fold into one scale applied inside the kernel, so the
        // accumulated gradients need no extra pass and stay untouched.
        let grad_scale = clip_coef / micro_batches as f32;

        let t = (self.step + 1) as f64;
        let (b1, b2) = self.cfg.betas;
        let bias_correction1 = (1.0 - (b1 as f64).powf(t)) as f32;
        let bias_correction2 = (1.0 - (b2 as f64).powf(t)) as f32;
        for slot in &mut self.slots {
            let h = AdamWHyper {
                lr: (slot.lr as f64 * lr_factor) as f32,
                beta1: b1,
                beta2: b2,
                eps: self.cfg.eps,
                weight_decay: self.cfg.weight_decay,
                grad_scale,
                bias_correction1,
                bias_correction2,
            };
            let g = grad_of(grads, slot.id);
            match (params.data_mut(slot.id), slot.master.as_mut()) {
                (ParamData::Matrix(w), Some(master)) => {
                    be.adamw_update(master, g, &mut slot.m, &mut slot.v, &h);
                    be.weight_assign(w, master);
                }
                (ParamData::Vector(p), None) => {
                    be.adamw_update(p, g, &mut slot.m, &mut slot.v, &h);
                }
                _ => panic!(
                    "AdamW: parameter `{}` changed between matrix and vector",
                    params.name(slot.id)
                ),
            }
        }
        self.step += 1;
        StepReport {
            grad_norm,
            clip_coef,
            skipped_nonfinite: false,
            step: self.step,
            lr: base_lr,
        }
    }

    /// The gradients must cover exactly the parameters this optimiser trains: a parameter that
    /// gained a gradient later would silently never be updated, one that lost it cannot be.
    fn check_trainable_set(&self, params: &ParamStore<B>, grads: &Grads<B>) {
        assert_eq!(
            grads.bufs.len(),
            params.len(),
            "AdamW: gradients and parameters differ in count"
        );
        let mut slots = self.slots.iter().map(|s| s.id).peekable();
        for id in 0..params.len() {
            let ours = slots.next_if_eq(&id).is_some();
            assert_eq!(
                ours,
                grads.get(id).is_some(),
                "AdamW: `{}` is {} the optimiser but {} a gradient",
                params.name(id),
                if ours { "trained by" } else { "not trained by" },
                if ours { "has no" } else { "has" },
            );
        }
        assert!(
            slots.next().is_none(),
            "AdamW: the parameter store has fewer parameters than the optimiser trains"
        );
    }
}

/// The gradient of a slot's parameter. Both callers run after `check_trainable_set`, which
/// asserts that every slot's parameter has one.
fn grad_of<B: Backend>(grads: &Grads<B>, id: usize) -> &B::Buf {
    grads.get(id).expect("checked by check_trainable_set")
}
