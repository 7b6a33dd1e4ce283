//! LoRA adapters on the DiT's linear layers: configuration, initialisation, attaching them to a
//! loaded model, exporting them under the names diffusers/peft use for Wan, and merging them into
//! the base weights.
//!
//! Internally an adapter on `blocks.3.self_attn.q` is two parameters,
//! `blocks.3.self_attn.q.lora_A.weight` `[r, in]` and `blocks.3.self_attn.q.lora_B.weight`
//! `[out, r]`, and the layer computes `x W^T + b + (alpha / r) (x A^T) B^T`. As in peft, `A` starts
//! random and `B` at zero, so an attached adapter does not change the model until trained.
//!
//! # Exported files
//!
//! [`save_peft`] writes one of two key layouts ([`LoraKeyNames`]):
//! - **diffusers / peft** (default): `transformer.blocks.3.attn1.to_q.lora_A.weight`, with the
//!   scale carried as diffusers (>= 0.35, checked against 0.42.1's `lora_base.py` and
//!   `peft.py`) reads it: the safetensors metadata key `lora_adapter_metadata` holds a JSON object
//!   of `LoraConfig` arguments prefixed with the component, `{"transformer.r": 4,
//!   "transformer.lora_alpha": 8.0, "transformer.target_modules": [...]}`.
//!   `WanTransformer3DModel.load_lora_adapter` and `WanPipeline.load_lora_weights` strip the
//!   prefix and build peft's `LoraConfig` from it, so the adapter runs at `alpha / r`. (Without
//!   that key diffusers infers `lora_alpha = r`, i.e. strength 1.)
//! - **ComfyUI** (`key_names = "comfyui"`): the original Wan names under `diffusion_model.`,
//!   `diffusion_model.blocks.3.self_attn.q.lora_A.weight` / `.lora_B.weight`, and the scale as a
//!   scalar `diffusion_model.blocks.3.self_attn.q.alpha` tensor per layer (ComfyUI's LoRA loader
//!   applies `alpha / rank` from it; diffusers' Wan converter reads the same layout and folds the
//!   alpha into the weights). No `lora_adapter_metadata` there: diffusers would apply the scale
//!   twice.
//!
//! Both carry prfl's own `rank`, `alpha` and `targets` metadata, so [`load_peft`] reads either.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::config::WanConfig;
use super::layers::LoraAdapter;
use super::names::to_diffusers;
use super::wan::WanModel;
use crate::backend::cpu::matmul::{gemm_strided, Strided};
use crate::backend::Backend;
use crate::schedule::rng::Rng;
use crate::tensor::{HostTensor, Storage};
use crate::{Error, Result};

/// Which layers get adapters, and their rank and scale.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f32,
    /// Per-block layer names: `self_attn.{q,k,v,o}`, `cross_attn.{q,k,v,o,k_img,v_img}`,
    /// `ffn.{0,2}`.
    pub targets: Vec<String>,
    /// The key layout of the exported `lora.safetensors` (see the module docs).
    pub key_names: LoraKeyNames,
}

/// The tensor names [`save_peft`] writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoraKeyNames {
    /// diffusers / peft names with `lora_adapter_metadata` (what diffusers loads).
    #[default]
    Diffusers,
    /// ComfyUI's Wan LoRA names: `diffusion_model.<original name>` with `.alpha` tensors.
    ComfyUi,
}

impl Default for LoraConfig {
    /// Rank 128 on q, k, v, o of self- and cross-attention (the reference's LoRA option).
    fn default() -> Self {
        LoraConfig {
            rank: 128,
            alpha: 128.0,
            targets: [
                "self_attn.q",
                "self_attn.k",
                "self_attn.v",
                "self_attn.o",
                "cross_attn.q",
                "cross_attn.k",
                "cross_attn.v",
                "cross_attn.o",
            ]
            .map(String::from)
            .to_vec(),
            key_names: LoraKeyNames::Diffusers,
        }
    }
}

impl LoraConfig {
    pub fn scale(&self) -> f32 {
        self.alpha / self.rank as f32
    }
}

/// `(layer prefix, in, out)` of every adapted layer of a model with `blocks` blocks.
fn adapted_layers(
    cfg: &WanConfig,
    lora: &LoraConfig,
    blocks: usize,
) -> Result<Vec<(String, usize, usize)>> {
    let d = cfg.dim;
    let mut out = Vec::new();
    for i in 0..blocks {
        for t in &lora.targets {
            let (n_in, n_out) = match t.as_str() {
                "self_attn.q" | "self_attn.k" | "self_attn.v" | "self_attn.o" | "cross_attn.q"
                | "cross_attn.k" | "cross_attn.v" | "cross_attn.o" => (d, d),
                "cross_attn.k_img" | "cross_attn.v_img" if cfg.image_dim.is_some() => (d, d),
                "ffn.0" => (d, cfg.ffn_dim),
                "ffn.2" => (cfg.ffn_dim, d),
                other => return Err(Error::Config(format!("unknown LoRA target `{other}`"))),
            };
            out.push((format!("blocks.{i}.{t}"), n_in, n_out));
        }
    }
    Ok(out)
}

/// Fresh adapters: `A` uniform in `+-1/sqrt(in)` (peft's kaiming-uniform with a = sqrt(5)), `B` zero.
pub fn init_lora(
    cfg: &WanConfig,
    lora: &LoraConfig,
    seed: u64,
) -> Result<BTreeMap<String, HostTensor>> {
    let mut rng = Rng::seed_from_u64(seed);
    let mut out = BTreeMap::new();
    for (prefix, n_in, n_out) in adapted_layers(cfg, lora, cfg.num_layers)? {
        let bound = 1.0 / (n_in as f32).sqrt();
        let a: Vec<f32> = (0..lora.rank * n_in)
            .map(|_| (rng.uniform_f32() * 2.0 - 1.0) * bound)
            .collect();
        out.insert(
            format!("{prefix}.lora_A.weight"),
            HostTensor::from_f32(vec![lora.rank, n_in], a)?,
        );
        out.insert(
            format!("{prefix}.lora_B.weight"),
            HostTensor::from_f32(vec![n_out, lora.rank], vec![0.0; n_out * lora.rank])?,
        );
    }
    Ok(out)
}

impl<B: Backend> WanModel<B> {
    /// Adds adapters (named as [`init_lora`] names them) to the loaded blocks. Adapter weights are
    /// kept in f32 whatever the base's storage dtype.
    pub fn attach_lora(
        &mut self,
        be: &B,
        lora: &LoraConfig,
        tensors: &BTreeMap<String, HostTensor>,
    ) -> Result<()> {
        let layers = adapted_layers(&self.cfg, lora, self.num_blocks())?;
        for (prefix, n_in, n_out) in &layers {
            let get = |suffix: &str, shape: [usize; 2]| -> Result<HostTensor> {
                let name = format!("{prefix}.{suffix}");
                let t = tensors
                    .get(&name)
                    .ok_or_else(|| Error::MissingTensor(name.clone()))?;
                if t.shape != shape {
                    return Err(Error::ShapeMismatch {
                        name,
                        got: t.shape.clone(),
                        expected: shape.to_vec(),
                    });
                }
                HostTensor::new(t.shape.clone(), Storage::F32(t.to_f32()))
            };
            let a = get("lora_A.weight", [lora.rank, *n_in])?;
            let b = get("lora_B.weight", [*n_out, lora.rank])?;
            let ia = self
                .params
                .insert(be, &format!("{prefix}.lora_A.weight"), &a)?;
            let ib = self
                .params
                .insert(be, &format!("{prefix}.lora_B.weight"), &b)?;
            let (block, target) = split_block(prefix);
            let lin = self.blocks_mut()[block]
                .linear_mut(target)
                .ok_or_else(|| Error::Config(format!("no layer `{prefix}` to adapt")))?;
            lin.lora = Some(LoraAdapter {
                a: ia,
                b: ib,
                rank: lora.rank,
                scale: lora.scale(),
            });
        }
        Ok(())
    }
}

/// `blocks.3.self_attn.q` -> `(3, "self_attn.q")`.
fn split_block(prefix: &str) -> (usize, &str) {
    let rest = prefix
        .strip_prefix("blocks.")
        .expect("adapter prefixes start with blocks.");
    let (i, target) = rest.split_once('.').expect("blocks.N.target");
    (i.parse().expect("block index"), target)
}

/// Adapter tensors renamed as diffusers' Wan LoRA loader expects them (peft convention):
/// `transformer.blocks.3.attn1.to_q.lora_A.weight`.
pub fn to_peft_names(adapters: &BTreeMap<String, HostTensor>) -> BTreeMap<String, HostTensor> {
    adapters
        .iter()
        .map(|(name, t)| {
            let (layer, which) = name
                .rsplit_once(".lora_")
                .expect("adapter names end in .lora_X.weight");
            let diff_layer = to_diffusers(&format!("{layer}.weight"));
            let diff_layer = diff_layer.strip_suffix(".weight").unwrap_or(&diff_layer);
            (format!("transformer.{diff_layer}.lora_{which}"), t.clone())
        })
        .collect()
}

/// The base weights with every adapter folded in: `W + (alpha / r) B A`, in the base's dtype.
pub fn merge_lora(
    base: &BTreeMap<String, HostTensor>,
    adapters: &BTreeMap<String, HostTensor>,
    lora: &LoraConfig,
) -> Result<BTreeMap<String, HostTensor>> {
    let mut out = base.clone();
    for (name, a) in adapters {
        let Some(layer) = name.strip_suffix(".lora_A.weight") else {
            continue;
        };
        let b = adapters
            .get(&format!("{layer}.lora_B.weight"))
            .ok_or_else(|| Error::MissingTensor(format!("{layer}.lora_B.weight")))?;
        let wname = format!("{layer}.weight");
        let w = base
            .get(&wname)
            .ok_or_else(|| Error::MissingTensor(wname.clone()))?;
        let (r, n_in) = (a.shape[0], a.shape[1]);
        let n_out = b.shape[0];
        if w.shape != [n_out, n_in] || b.shape != [n_out, r] {
            return Err(Error::ShapeMismatch {
                name: wname,
                got: w.shape.clone(),
                expected: vec![n_out, n_in],
            });
        }
        let af = a.to_f32();
        let bf: Vec<f32> = b.to_f32().iter().map(|v| v * lora.scale()).collect();
        let mut wf = w.to_f32();
        // wf += (s B) A, a [out, r] x [r, in] product accumulated into the base weight.
        gemm_strided(
            n_out,
            n_in,
            r,
            Strided::rows(&bf, r),
            Strided::rows(&af, n_in),
            &mut wf,
            true,
        );
        out.insert(
            wname,
            HostTensor::new(w.shape.clone(), Storage::from_f32(&wf, w.dtype()))?,
        );
    }
    Ok(out)
}

/// Adapter tensors under ComfyUI's Wan LoRA names, with one scalar `.alpha` tensor per layer:
/// `diffusion_model.blocks.3.self_attn.q.lora_A.weight`, `diffusion_model.blocks.3.self_attn.q.alpha`.
pub fn to_comfyui_names(
    adapters: &BTreeMap<String, HostTensor>,
    lora: &LoraConfig,
) -> Result<BTreeMap<String, HostTensor>> {
    let mut out = BTreeMap::new();
    for (name, t) in adapters {
        out.insert(format!("{COMFYUI_PREFIX}{name}"), t.clone());
        if let Some(layer) = name.strip_suffix(".lora_A.weight") {
            out.insert(
                format!("{COMFYUI_PREFIX}{layer}.alpha"),
                HostTensor::from_f32(vec![], vec![lora.alpha])?,
            );
        }
    }
    Ok(out)
}

/// The prefix of ComfyUI's (and the original repacks') diffusion-model tensor names.
pub const COMFYUI_PREFIX: &str = "diffusion_model.";

/// The `lora_adapter_metadata` JSON that diffusers turns into peft's `LoraConfig` for the
/// `transformer` component: rank, alpha and the adapted modules under diffusers names.
pub fn diffusers_adapter_metadata(
    adapters: &BTreeMap<String, HostTensor>,
    lora: &LoraConfig,
) -> String {
    let modules: std::collections::BTreeSet<String> = to_peft_names(adapters)
        .keys()
        .filter_map(|k| k.rsplit_once(".lora_").map(|(m, _)| m.to_string()))
        .map(|m| m.strip_prefix("transformer.").unwrap_or(&m).to_string())
        .collect();
    serde_json::json!({
        "transformer.r": lora.rank,
        "transformer.lora_alpha": lora.alpha,
        "transformer.target_modules": modules,
        "transformer.use_dora": false,
    })
    .to_string()
}

/// Writes adapters as a LoRA file (atomically) in the layout `lora.key_names` selects (see the
/// module docs), with `rank`, `alpha` and the targets in the safetensors metadata so that
/// [`load_peft`] restores the configuration.
pub fn save_peft(
    path: &std::path::Path,
    adapters: &BTreeMap<String, HostTensor>,
    lora: &LoraConfig,
) -> Result<()> {
    let mut meta: std::collections::HashMap<String, String> = [
        ("format".to_string(), "pt".to_string()),
        ("prfl_format".to_string(), "prfl-lora/1".to_string()),
        ("rank".to_string(), lora.rank.to_string()),
        ("alpha".to_string(), lora.alpha.to_string()),
        ("targets".to_string(), lora.targets.join(",")),
    ]
    .into();
    let tensors = match lora.key_names {
        LoraKeyNames::Diffusers => {
            meta.insert(
                "lora_adapter_metadata".to_string(),
                diffusers_adapter_metadata(adapters, lora),
            );
            to_peft_names(adapters)
        }
        LoraKeyNames::ComfyUi => to_comfyui_names(adapters, lora)?,
    };
    crate::safetensors::write_safetensors(
        path,
        tensors.iter().map(|(k, v)| (k.as_str(), v)),
        Some(&meta),
    )
}

/// Reads a file written by [`save_peft`]: the configuration and the adapters under canonical
/// names (`blocks.3.self_attn.q.lora_A.weight`).
pub fn load_peft(path: &std::path::Path) -> Result<(LoraConfig, BTreeMap<String, HostTensor>)> {
    let file = crate::safetensors::Safetensors::map(path)?;
    let meta = file.metadata();
    let field = |k: &str| {
        meta.get(k).cloned().ok_or_else(|| {
            Error::checkpoint(path, format!("LoRA file lacks `{k}` in its metadata"))
        })
    };
    let rank: usize = field("rank")?
        .parse()
        .map_err(|_| Error::checkpoint(path, "bad LoRA rank"))?;
    let alpha: f32 = field("alpha")?
        .parse()
        .map_err(|_| Error::checkpoint(path, "bad LoRA alpha"))?;
    let targets = field("targets")?.split(',').map(String::from).collect();
    let mut adapters = BTreeMap::new();
    let mut key_names = LoraKeyNames::Diffusers;
    for (name, t) in file.read_all()? {
        if let Some(original) = name.strip_prefix(COMFYUI_PREFIX) {
            key_names = LoraKeyNames::ComfyUi;
            if !original.ends_with(".alpha") {
                // The same check as the diffusers names below: an adapter of a Wan2.1 layer.
                let known = original
                    .rsplit_once(".lora_")
                    .is_some_and(|(layer, which)| {
                        matches!(which, "A.weight" | "B.weight")
                            && super::names::Layout::Original
                                .to_canonical(&format!("{layer}.weight"))
                                .is_some()
                    });
                if !known {
                    return Err(Error::UnexpectedTensor(name.clone()));
                }
                adapters.insert(original.to_string(), t);
            }
            continue;
        }
        let bare = name.strip_prefix("transformer.").unwrap_or(&name);
        let (layer, which) = bare
            .rsplit_once(".lora_")
            .ok_or_else(|| Error::UnexpectedTensor(name.clone()))?;
        let canonical = super::names::from_diffusers(&format!("{layer}.weight"))
            .ok_or_else(|| Error::UnexpectedTensor(name.clone()))?;
        let layer = canonical.strip_suffix(".weight").unwrap_or(&canonical);
        adapters.insert(format!("{layer}.lora_{which}"), t);
    }
    Ok((
        LoraConfig {
            rank,
            alpha,
            targets,
            key_names,
        },
        adapters,
    ))
}
