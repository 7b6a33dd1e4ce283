//! The optimiser's state as named host tensors, for training checkpoints: the trainable weights
//! (f32 masters, not the possibly half-precision store copies, so a resumed run continues from
//! exactly the values it had), both moments, and the step count.
//!
//! Names: `param.<name>`, `adam.m.<name>`, `adam.v.<name>` and `adam.step`. The step is a u64 but
//! safetensors here carries float tensors only, so `adam.step` is four f32 values holding its
//! 16-bit limbs, least significant first (each limb is an integer below 2^16, exact in f32). It
//! is stored with the moments rather than in the trainer's metadata because the two counts differ
//! once a non-finite step has been skipped, and bias correction needs the optimiser's.

use std::collections::BTreeMap;

use super::adamw::AdamW;
use crate::backend::Backend;
use crate::model::params::{ParamData, ParamStore};
use crate::tensor::{HostTensor, Storage};
use crate::{Error, Result};

pub const PARAM_PREFIX: &str = "param.";
pub const M_PREFIX: &str = "adam.m.";
pub const V_PREFIX: &str = "adam.v.";
pub const STEP_NAME: &str = "adam.step";

const LIMBS: usize = 4;

fn encode_step(step: u64) -> HostTensor {
    let limbs: Vec<f32> = (0..LIMBS)
        .map(|i| ((step >> (16 * i)) & 0xFFFF) as f32)
        .collect();
    HostTensor {
        shape: vec![LIMBS],
        data: Storage::F32(limbs),
    }
}

fn decode_step(t: &HostTensor) -> Result<u64> {
    let bad = |why: String| Err(Error::InvalidInput(format!("tensor `{STEP_NAME}`: {why}")));
    let Storage::F32(limbs) = &t.data else {
        return bad(format!("dtype {}, expected f32", t.dtype().name()));
    };
    if t.shape != [LIMBS] || limbs.len() != LIMBS {
        return bad(format!("shape {:?}, expected [{LIMBS}]", t.shape));
    }
    let mut step = 0u64;
    for (i, &x) in limbs.iter().enumerate() {
        if !(x.fract() == 0.0 && (0.0..65536.0).contains(&x)) {
            return bad(format!("limb {i} is {x}, not an integer in [0, 65536)"));
        }
        step |= (x as u64) << (16 * i);
    }
    Ok(step)
}

/// A tensor `import_state` will copy from: present, f32 and of the parameter's shape.
fn expect_f32<'a>(
    tensors: &'a BTreeMap<String, HostTensor>,
    key: &str,
    shape: &[usize],
) -> Result<&'a [f32]> {
    let t = tensors
        .get(key)
        .ok_or_else(|| Error::MissingTensor(key.to_string()))?;
    if t.shape != shape {
        return Err(Error::ShapeMismatch {
            name: key.to_string(),
            got: t.shape.clone(),
            expected: shape.to_vec(),
        });
    }
    match &t.data {
        // A half-precision moment or master would make the resumed run diverge from the
        // uninterrupted one, so it can only be a foreign or damaged file.
        Storage::F32(v) if v.len() == t.numel() => Ok(v),
        Storage::F32(_) => Err(Error::InvalidInput(format!(
            "tensor `{key}`: data length does not match shape {shape:?}"
        ))),
        other => Err(Error::InvalidInput(format!(
            "tensor `{key}` is {}, expected f32",
            other.dtype().name()
        ))),
    }
}

impl<B: Backend> AdamW<B> {
    /// The state to checkpoint, keyed as described in the module documentation. Only trainable
    /// parameters are exported: frozen ones come back from the model checkpoint.
    pub fn export_state(&self, be: &B, params: &ParamStore<B>) -> BTreeMap<String, HostTensor> {
        let mut out = BTreeMap::new();
        let host = |id: usize, data: Vec<f32>| HostTensor {
            shape: params.shape(id).to_vec(),
            data: Storage::F32(data),
        };
        for slot in &self.slots {
            let name = params.name(slot.id);
            let values = match (&slot.master, params.data(slot.id)) {
                (Some(master), _) => be.download(master),
                (None, ParamData::Vector(p)) => be.download(p),
                (None, ParamData::Matrix(_)) => {
                    panic!("AdamW: matrix parameter `{name}` has no master copy")
                }
            };
            out.insert(format!("{PARAM_PREFIX}{name}"), host(slot.id, values));
            out.insert(
                format!("{M_PREFIX}{name}"),
                host(slot.id, be.download(&slot.m)),
            );
            out.insert(
                format!("{V_PREFIX}{name}"),
                host(slot.id, be.download(&slot.v)),
            );
        }
        out.insert(STEP_NAME.to_string(), encode_step(self.step));
        out
    }

    /// Restores [`AdamW::export_state`]'s output: the trainable weights (masters, and the store
    /// re-rounded from them), the moments and the step count. Every tensor is checked before
    /// anything is written, so on error neither the optimiser nor the store has changed.
    ///
    /// Tensors outside this module's names (a trainer's own extras) are ignored, but a `param.`,
    /// `adam.m.` or `adam.v.` tensor for a parameter this optimiser does not train is an error:
    /// it means the checkpoint was made with a different trainable set.
    pub fn import_state(
        &mut self,
        be: &B,
        params: &mut ParamStore<B>,
        tensors: &BTreeMap<String, HostTensor>,
    ) -> Result<()> {
        let trained: std::collections::BTreeSet<&str> =
            self.slots.iter().map(|s| params.name(s.id)).collect();
        for key in tensors.keys() {
            let name = [PARAM_PREFIX, M_PREFIX, V_PREFIX]
                .iter()
                .find_map(|p| key.strip_prefix(p));
            if name.is_some_and(|n| !trained.contains(n)) {
                return Err(Error::UnexpectedTensor(key.clone()));
            }
        }
        let step = decode_step(
            tensors
                .get(STEP_NAME)
                .ok_or_else(|| Error::MissingTensor(STEP_NAME.to_string()))?,
        )?;
        // Validate everything first (borrowing), then write.
        let mut staged = Vec::with_capacity(self.slots.len());
        for slot in &self.slots {
            let (name, shape) = (params.name(slot.id), params.shape(slot.id));
            staged.push([
                expect_f32(tensors, &format!("{PARAM_PREFIX}{name}"), shape)?,
                expect_f32(tensors, &format!("{M_PREFIX}{name}"), shape)?,
                expect_f32(tensors, &format!("{V_PREFIX}{name}"), shape)?,
            ]);
        }
        for (slot, [p, m, v]) in self.slots.iter_mut().zip(staged) {
            match (params.data_mut(slot.id), slot.master.as_mut()) {
                (ParamData::Matrix(w), Some(master)) => {
                    *master = be.upload(p);
                    be.weight_assign(w, master);
                }
                (ParamData::Vector(buf), None) => *buf = be.upload(p),
                _ => unreachable!("a slot has a master exactly when its parameter is a matrix"),
            }
            slot.m = be.upload(m);
            slot.v = be.upload(v);
        }
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::DType;

    #[test]
    fn step_limbs_round_trip() {
        for step in [0, 1, 65535, 65536, 123_456_789_012, u64::MAX] {
            assert_eq!(decode_step(&encode_step(step)).unwrap(), step);
        }
        let t = |v: Vec<f32>| HostTensor {
            shape: vec![v.len()],
            data: Storage::F32(v),
        };
        assert!(decode_step(&t(vec![0.5, 0.0, 0.0, 0.0])).is_err());
        assert!(decode_step(&t(vec![65536.0, 0.0, 0.0, 0.0])).is_err());
        assert!(decode_step(&t(vec![f32::NAN, 0.0, 0.0, 0.0])).is_err());
        assert!(decode_step(&t(vec![1.0, 0.0, 0.0])).is_err());
        let half = HostTensor {
            shape: vec![4],
            data: Storage::from_f32(&[1.0; 4], DType::BF16),
        };
        assert!(decode_step(&half).is_err());
    }
}
