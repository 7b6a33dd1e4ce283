//! Running the model on named host tensors: the file format of `prfl forward` and of the oracle
//! fixtures. Inputs: `x` `[C, F, H, W]` or `[B, C, F, H, W]`, `t` `[1]`/`[B]` (or a scalar),
//! `context` `[L, text_dim]` or batched, and for I2V `y` `[20, F, H, W]` and `clip_fea`
//! `[257, 1280]` (or batched); with gradients also `cotangent` shaped like the output. Outputs:
//! `v` laid out like `x`, and with gradients `grad.x`, `grad.context`, `grad.y`, `grad.clip_fea`
//! and `grad.<parameter>` (named in the checkpoint's layout) of `sum(v * cotangent)`.

use std::collections::BTreeMap;

use super::checkpoint::Checkpoint;
use super::params::Grads;
use super::wan::{Inputs, Mode, VideoShape, WanModel};
use crate::backend::Backend;
use crate::tensor::HostTensor;
use crate::{Error, Result};

/// What a forward run should produce.
#[derive(Clone, Copy, Debug)]
pub struct RunOptions {
    /// Also compute the gradients of `sum(v * cotangent)`.
    pub grad: bool,
    /// Per-block activation recompute during the backward pass.
    pub recompute: bool,
}

fn input<'a>(inputs: &'a BTreeMap<String, HostTensor>, name: &str) -> Result<&'a HostTensor> {
    inputs
        .get(name)
        .ok_or_else(|| Error::InvalidInput(format!("input tensor `{name}` is missing")))
}

/// The shape with a leading batch dimension (1 when the tensor has `unbatched_rank` dimensions).
fn batched(t: &HostTensor, unbatched_rank: usize, name: &str) -> Result<Vec<usize>> {
    if t.shape.len() == unbatched_rank {
        let mut s = vec![1];
        s.extend(&t.shape);
        Ok(s)
    } else if t.shape.len() == unbatched_rank + 1 {
        Ok(t.shape.clone())
    } else {
        Err(Error::InvalidInput(format!(
            "`{name}` has shape {:?}; expected {unbatched_rank} dimensions or {} with a batch",
            t.shape,
            unbatched_rank + 1
        )))
    }
}

fn finite(t: &HostTensor, name: &str) -> Result<Vec<f32>> {
    let v = t.to_f32();
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(Error::InvalidInput(format!(
            "`{name}` holds a non-finite value ({}) at flat index {i}",
            v[i]
        )));
    }
    Ok(v)
}

/// Runs the checkpoint's model on `inputs` (see the module docs) on backend `be`.
pub fn run_forward<B: Backend>(
    be: &B,
    ckpt: &Checkpoint,
    inputs: &BTreeMap<String, HostTensor>,
    opts: RunOptions,
) -> Result<BTreeMap<String, HostTensor>> {
    let cfg = ckpt.config().clone();
    let x_t = input(inputs, "x")?;
    let xs = batched(x_t, 4, "x")?;
    if xs[1] != cfg.out_dim {
        return Err(Error::InvalidInput(format!(
            "`x` has {} channels; the model takes {} (I2V conditioning goes in `y`)",
            xs[1], cfg.out_dim
        )));
    }
    let shape = VideoShape {
        batch: xs[0],
        frames: xs[2],
        height: xs[3],
        width: xs[4],
    };
    let t_host = finite(input(inputs, "t")?, "t")?;
    let t: Vec<f32> = match t_host.len() {
        n if n == shape.batch => t_host,
        1 => vec![t_host[0]; shape.batch],
        n => {
            return Err(Error::InvalidInput(format!(
                "`t` holds {n} values for a batch of {}",
                shape.batch
            )))
        }
    };
    let ctx_t = input(inputs, "context")?;
    let cs = batched(ctx_t, 2, "context")?;
    if cs[0] != shape.batch || cs[2] != cfg.text_dim {
        return Err(Error::InvalidInput(format!(
            "`context` has shape {:?}; expected [{}, L, {}]",
            ctx_t.shape, shape.batch, cfg.text_dim
        )));
    }
    let y = match inputs.get("y") {
        Some(y) => {
            let ys = batched(y, 4, "y")?;
            if ys[0] != shape.batch || ys[2..] != xs[2..] {
                return Err(Error::InvalidInput(format!(
                    "`y` has shape {:?}, which does not match `x` {:?}",
                    y.shape, x_t.shape
                )));
            }
            Some(be.upload(&finite(y, "y")?))
        }
        None => None,
    };
    let (clip, image_len) = match inputs.get("clip_fea") {
        Some(c) => {
            let s = batched(c, 2, "clip_fea")?;
            if s[0] != shape.batch {
                return Err(Error::InvalidInput(format!(
                    "`clip_fea` has shape {:?} for a batch of {}",
                    c.shape, shape.batch
                )));
            }
            (Some(be.upload(&finite(c, "clip_fea")?)), s[1])
        }
        None => (None, 0),
    };
    let x = be.upload(&finite(x_t, "x")?);
    let context = be.upload(&finite(ctx_t, "context")?);

    let tensors = ckpt.load_all()?;
    let model = WanModel::new(be, cfg.clone(), &tensors, None)?;
    drop(tensors);
    let inp = Inputs::<B> {
        shape,
        x: &x,
        t: &t,
        context: &context,
        text_len: cs[1],
        y: y.as_ref(),
        clip: clip.as_ref(),
        image_len,
    };
    let mode = match (opts.grad, opts.recompute) {
        (false, _) => Mode::Inference,
        (true, false) => Mode::Train,
        (true, true) => Mode::TrainRecompute,
    };
    let (v, tape) = model.forward(be, &inp, mode)?;
    let mut out = BTreeMap::new();
    out.insert(
        "v".to_string(),
        HostTensor::from_f32(x_t.shape.clone(), be.download(&v))?,
    );
    if let Some(tape) = tape {
        let cot = input(inputs, "cotangent")?;
        if cot.numel() != x_t.numel() {
            return Err(Error::InvalidInput(format!(
                "`cotangent` has shape {:?}; it must be shaped like the output {:?}",
                cot.shape, x_t.shape
            )));
        }
        let dv = be.upload(&finite(cot, "cotangent")?);
        let mut grads = Grads::new(be, &model.params, |_| true);
        let g = model.backward(be, &tape, &dv, &mut grads)?;
        let like = |src: &HostTensor, data: Vec<f32>| HostTensor::from_f32(src.shape.clone(), data);
        out.insert("grad.x".into(), like(x_t, be.download(&g.x))?);
        out.insert("grad.context".into(), like(ctx_t, be.download(&g.context))?);
        if let (Some(gy), Some(y)) = (g.y, inputs.get("y")) {
            out.insert("grad.y".into(), like(y, be.download(&gy))?);
        }
        if let (Some(gc), Some(c)) = (g.clip, inputs.get("clip_fea")) {
            out.insert("grad.clip_fea".into(), like(c, be.download(&gc))?);
        }
        for id in 0..model.params.len() {
            let name = model.params.name(id);
            let stored = ckpt.stored_name(name).unwrap_or(name).to_string();
            let grad = grads
                .get(id)
                .ok_or_else(|| Error::InvalidInput(format!("no gradient was kept for `{name}`")))?;
            let data = be.download(grad);
            let shape = model.params.shape(id).to_vec();
            out.insert(format!("grad.{stored}"), HostTensor::from_f32(shape, data)?);
        }
    }
    Ok(out)
}
