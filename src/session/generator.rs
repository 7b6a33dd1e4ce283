//! The generator checkpoint a session holds: opened from disk (memory-mapped, tensors read on
//! demand, so a reward model of the first K blocks reads only those), or parsed from bytes the
//! host hands over (assets packed in a game's archive, on platforms without a writable temp
//! directory), in either naming layout.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use safetensors::tensor::{Dtype as StDtype, SafeTensors};

use crate::model::checkpoint::Checkpoint;
use crate::model::names::{canonical_params, is_ignored_buffer, strip_repack_prefix, Layout};
use crate::model::WanConfig;
use crate::tensor::{DType, HostTensor, Storage};
use crate::{Error, Result};

/// Where the generator's weights come from.
pub enum GeneratorSource {
    /// A checkpoint on disk (memory-mapped; tensors read on demand).
    File(Checkpoint),
    /// Parsed from memory: every tensor owned, canonical names.
    Memory {
        /// The configuration (from `config.json` or inferred from the shapes).
        config: WanConfig,
        /// Every parameter, by canonical name.
        tensors: BTreeMap<String, HostTensor>,
    },
}

impl GeneratorSource {
    /// Opens a checkpoint directory, single file or index json, and checks from the headers that
    /// it is complete.
    pub fn open(path: &Path) -> Result<Self> {
        let ckpt = Checkpoint::open(path)?;
        ckpt.verify()?;
        Ok(GeneratorSource::File(ckpt))
    }

    /// Parses a whole safetensors file held in memory (copied: the host may free it afterwards).
    /// `config_json` is a `config.json` in either layout; without it the configuration is
    /// inferred from the shapes (128-wide heads, as every released Wan2.1).
    pub fn from_memory(bytes: &[u8], config_json: Option<&str>) -> Result<Self> {
        let corrupt = Error::Corrupt;
        let st = SafeTensors::deserialize(bytes).map_err(|e| {
            corrupt(format!(
                "the {} bytes are not a safetensors file: {e:?}",
                bytes.len()
            ))
        })?;
        let mut stored = BTreeMap::new();
        for (name, view) in st.tensors() {
            if is_ignored_buffer(&name) {
                continue;
            }
            let bare = strip_repack_prefix(&name).to_string();
            if stored.insert(bare.clone(), view).is_some() {
                return Err(corrupt(format!(
                    "tensor `{bare}` is stored twice (with and without the repack prefix)"
                )));
            }
        }
        let layout = detect_layout(stored.keys().map(String::as_str))?;
        let mut tensors = BTreeMap::new();
        for (bare, view) in &stored {
            let canonical = layout.to_canonical(bare).ok_or_else(|| {
                Error::UnexpectedTensor(format!("{bare} (not a Wan2.1 parameter)"))
            })?;
            let dtype = match view.dtype() {
                StDtype::F32 => DType::F32,
                StDtype::BF16 => DType::BF16,
                StDtype::F16 => DType::F16,
                other => {
                    return Err(corrupt(format!(
                        "tensor `{bare}` has dtype {other:?} (expected F32, BF16 or F16)"
                    )))
                }
            };
            let data = Storage::from_le_bytes(view.data(), dtype);
            tensors.insert(canonical, HostTensor::new(view.shape().to_vec(), data)?);
        }
        let shapes: BTreeMap<String, Vec<usize>> = tensors
            .iter()
            .map(|(k, t)| (k.clone(), t.shape.clone()))
            .collect();
        let config = match config_json {
            Some(text) => {
                let v: serde_json::Value = serde_json::from_str(text)
                    .map_err(|e| Error::InvalidArgument(format!("config_json is not JSON: {e}")))?;
                let mut cfg = WanConfig::from_json(&v)?;
                cfg.reconcile_with_shapes(&shapes)?;
                cfg
            }
            None => WanConfig::infer_from_shapes(&shapes)?,
        };
        // Exactly the configuration's parameters, with its shapes (as Checkpoint::verify).
        let specs = canonical_params(&config);
        let wanted: BTreeSet<&str> = specs.iter().map(|p| p.name.as_str()).collect();
        if let Some(extra) = tensors.keys().find(|k| !wanted.contains(k.as_str())) {
            return Err(Error::UnexpectedTensor(extra.clone()));
        }
        for spec in &specs {
            let t = tensors
                .get(&spec.name)
                .ok_or_else(|| Error::MissingTensor(spec.name.clone()))?;
            if t.shape != spec.shape {
                return Err(Error::ShapeMismatch {
                    name: spec.name.clone(),
                    got: t.shape.clone(),
                    expected: spec.shape.clone(),
                });
            }
        }
        Ok(GeneratorSource::Memory { config, tensors })
    }

    /// The generator's configuration.
    pub fn config(&self) -> &WanConfig {
        match self {
            GeneratorSource::File(c) => c.config(),
            GeneratorSource::Memory { config, .. } => config,
        }
    }

    /// The parameters whose canonical names pass `filter`.
    pub fn load(&self, filter: impl Fn(&str) -> bool) -> Result<BTreeMap<String, HostTensor>> {
        match self {
            GeneratorSource::File(c) => Ok(c.load(filter)?),
            GeneratorSource::Memory { tensors, .. } => Ok(tensors
                .iter()
                .filter(|(k, _)| filter(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()),
        }
    }
}

/// The layout in which every name is a Wan2.1 parameter (original when both fit, as for a
/// checkpoint holding only names common to both).
fn detect_layout<'a>(names: impl Iterator<Item = &'a str> + Clone) -> Result<Layout> {
    let mut best = None;
    for layout in [Layout::Original, Layout::Diffusers] {
        match names.clone().find(|n| layout.to_canonical(n).is_none()) {
            None => return Ok(layout),
            Some(bad) => {
                best.get_or_insert((layout, bad));
            }
        }
    }
    let bad = best.map_or("", |(_, bad)| bad);
    Err(Error::UnexpectedTensor(format!(
        "{bad} (not a Wan2.1 parameter in the original or the diffusers layout)"
    )))
}
