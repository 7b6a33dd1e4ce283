//! The reference implementation's reward model (HY-Video-PRFL's PAVRM), imported into a prfl
//! reward checkpoint and exported back.
//!
//! The reference saves a trained reward model as three files:
//! - the **transformer**: the generator cut to its kept blocks (renumbered `blocks.0..K-1`), head
//!   deleted, as a directory `checkpoint-<step>/` of `diffusion_pytorch_model*.safetensors` in the
//!   original Wan2.1 layout (plus a `config.json` that still describes the whole generator);
//! - `query_attention_step_<step>.ckpt`: `torch.save` of its `QueryAttention` state dict:
//!   `queries` `[Q, D]` and an `nn.MultiheadAttention` as `multihead_attn.in_proj_weight`
//!   `[3D, D]`, `multihead_attn.in_proj_bias` `[3D]`, `multihead_attn.out_proj.{weight,bias}`;
//! - `mlp_step_<step>.ckpt`: its `MLP` state dict, `fc1`, `fc2`, `fc3` (`.weight`, `.bias`),
//!   `D -> 1024 -> ReLU -> 512 -> ReLU -> 1`.
//!
//! prfl's reward model is the same function (method.md section 3): `pool.query` is `queries`, the
//! q/k/v projections are the three row blocks of `in_proj_*`, `mlp.{0,2,4}` are `fc{1,2,3}`. The
//! `.ckpt` files are read with the restricted pickle reader ([`super::torch_file`]); their
//! safetensors conversions (same tensor names) are accepted too.
//!
//! What the import does not carry: the transformer file's embeddings (patch, text, time), which the
//! reference freezes, so they are the generator's own; prfl takes them from `--generator` when the
//! reward model is loaded. Options of `QueryAttention` that change the function but leave no
//! tensor (`layer_norm=True`) cannot be detected; `product_text` (a `text_proj` tensor) and
//! `num_queries > 1` (whose residual add broadcasts over the batch in the reference) are refused.
//! The reference's `MLP` has fixed widths 1024 and 512; prfl's are read from the shapes, and an
//! export with other widths is written but will not load into that class.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::torch_file::{read_host_state_dict, write_state_dict};
use crate::model::checkpoint::Checkpoint;
use crate::model::names::{block_index, from_diffusers, is_ignored_buffer, strip_repack_prefix};
use crate::optim::checkpoint::{
    load_training_checkpoint, save_training_checkpoint, TrainingKind, TrainingMeta,
};
use crate::optim::state::PARAM_PREFIX;
use crate::reward::model::{backbone_filter, RewardModelConfig};
use crate::safetensors::{read_safetensors, write_safetensors};
use crate::schedule::rng::Rng;
use crate::tensor::{HostTensor, Storage};
use crate::{Error, Result};

/// The pooling heads of the reference's default `QueryAttention` (`num_heads` is a constructor
/// argument; the state dict does not record it).
pub const REFERENCE_HEADS: usize = 8;
/// The reference MLP's hidden widths (fixed in its class).
pub const REFERENCE_HIDDEN: [usize; 2] = [1024, 512];

/// A reward model in prfl's terms, as read from the reference's files: the configuration and the
/// trained tensors under canonical names (`blocks.N.*`, `pool.*`, `mlp.*`), all float32.
#[derive(Clone, Debug)]
pub struct ImportedReward {
    pub config: RewardModelConfig,
    /// The training step, when the file names carry one (`..._step_100.ckpt`), else 0.
    pub step: u64,
    pub tensors: BTreeMap<String, HostTensor>,
}

/// The three files [`export_reference`] writes.
#[derive(Clone, Debug, PartialEq)]
pub struct ReferenceFiles {
    /// `checkpoint-<step>/` with `diffusion_pytorch_model.safetensors` and `config.json`.
    pub transformer: PathBuf,
    pub query_attention: PathBuf,
    pub mlp: PathBuf,
}

fn as_f32(t: &HostTensor) -> Result<HostTensor> {
    HostTensor::new(t.shape.clone(), Storage::F32(t.to_f32()))
}

/// A state dict from a `torch.save` file, or from its safetensors conversion.
fn read_state_dict_any(path: &Path) -> Result<BTreeMap<String, HostTensor>> {
    if path.extension().is_some_and(|e| e == "safetensors") {
        read_safetensors(path)
    } else {
        read_host_state_dict(path)
    }
}

/// The transformer's block tensors under canonical names. Accepts a directory (every
/// `*.safetensors` in it, as the reference's `load_state_dict(model_dir=...)` reads it) or one
/// file, in the original layout (optionally with the repack or FSDP / checkpoint-wrapper prefixes)
/// or the diffusers layout.
fn read_transformer_blocks(path: &Path) -> Result<BTreeMap<String, HostTensor>> {
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| Error::io(path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        v.sort();
        v
    } else {
        vec![path.to_path_buf()]
    };
    if files.is_empty() {
        return Err(Error::checkpoint(
            path,
            "no *.safetensors file in the directory",
        ));
    }
    let mut out = BTreeMap::new();
    for f in &files {
        for (name, t) in read_safetensors(f)? {
            if name.contains(".lora_") || name.contains(".base_layer.") {
                return Err(Error::checkpoint(
                    f,
                    format!(
                        "tensor `{name}`: a reward transformer trained with LoRA (peft names) is \
                         not supported; merge the adapter into the weights first"
                    ),
                ));
            }
            let bare = unwrap_name(&name);
            if is_ignored_buffer(&bare) || block_index(&bare).is_none() {
                continue; // embeddings (the generator's, frozen), a head, buffers
            }
            let canonical = if bare.contains(".attn1.")
                || bare.contains(".attn2.")
                || bare.contains(".ffn.net.")
                || bare.ends_with(".scale_shift_table")
            {
                from_diffusers(&bare).ok_or_else(|| {
                    Error::checkpoint(
                        f,
                        format!("tensor `{name}` is not a Wan2.1 block parameter"),
                    )
                })?
            } else {
                bare
            };
            if out.insert(canonical.clone(), as_f32(&t)?).is_some() {
                return Err(Error::checkpoint(
                    f,
                    format!("tensor `{canonical}` given twice"),
                ));
            }
        }
    }
    Ok(out)
}

/// A parameter name without the wrappers training may leave in it: FSDP's and activation
/// checkpointing's module wrappers anywhere in the path, DDP's leading `module.`, the repack prefix.
fn unwrap_name(name: &str) -> String {
    let mut bare = name
        .replace("_fsdp_wrapped_module.", "")
        .replace("_checkpoint_wrapped_module.", "");
    while let Some(rest) = bare.strip_prefix("module.") {
        bare = rest.to_string();
    }
    strip_repack_prefix(&bare).to_string()
}

/// The step number in a reference file name (`mlp_step_100.ckpt` -> 100).
fn step_in_name(path: &Path) -> Option<u64> {
    let stem = path.file_stem()?.to_str()?;
    stem.rsplit('_').next()?.parse().ok()
}

fn take(
    sd: &mut BTreeMap<String, HostTensor>,
    path: &Path,
    key: &str,
    shape: Option<&[usize]>,
) -> Result<HostTensor> {
    let t = sd
        .remove(key)
        .ok_or_else(|| Error::checkpoint(path, format!("missing tensor `{key}`")))?;
    if let Some(s) = shape {
        if t.shape != s {
            return Err(Error::checkpoint(
                path,
                format!("tensor `{key}` has shape {:?}, expected {s:?}", t.shape),
            ));
        }
    }
    if let Some(i) = t.to_f32().iter().position(|v| !v.is_finite()) {
        return Err(Error::checkpoint(
            path,
            format!("tensor `{key}` holds a non-finite value at element {i}"),
        ));
    }
    as_f32(&t)
}

fn no_leftovers(sd: &BTreeMap<String, HostTensor>, path: &Path, what: &str) -> Result<()> {
    match sd.keys().next() {
        None => Ok(()),
        Some(k) if k.starts_with("text_proj.") => Err(Error::checkpoint(
            path,
            format!("tensor `{k}`: a {what} with product_text is not supported"),
        )),
        Some(k) => Err(Error::checkpoint(
            path,
            format!("unexpected tensor `{k}` in a {what} state dict"),
        )),
    }
}

/// Reads the reference's three files into prfl's reward-model tensors. `heads` is the pooling's
/// head count (the reference's default is [`REFERENCE_HEADS`]).
pub fn import_reference(
    transformer: &Path,
    query_attention: &Path,
    mlp: &Path,
    heads: usize,
) -> Result<ImportedReward> {
    let mut tensors = read_transformer_blocks(transformer)?;
    let mut blocks: Vec<usize> = tensors.keys().filter_map(|k| block_index(k)).collect();
    blocks.sort_unstable();
    blocks.dedup();
    if blocks.is_empty() {
        return Err(Error::checkpoint(transformer, "no `blocks.N.*` tensors"));
    }
    if blocks.iter().enumerate().any(|(i, &b)| i != b) {
        return Err(Error::checkpoint(
            transformer,
            format!("blocks {blocks:?} are not numbered 0..K-1"),
        ));
    }
    let q0 = "blocks.0.self_attn.q.weight";
    let dim = tensors
        .get(q0)
        .map(|t| t.shape[0])
        .ok_or_else(|| Error::checkpoint(transformer, format!("missing tensor `{q0}`")))?;

    // QueryAttention.
    let mut qa = read_state_dict_any(query_attention)?;
    let queries = take(&mut qa, query_attention, "queries", None)?;
    if queries.shape.len() != 2 || queries.shape[1] != dim {
        return Err(Error::checkpoint(
            query_attention,
            format!(
                "tensor `queries` has shape {:?}, expected [Q, {dim}] (the transformer's width)",
                queries.shape
            ),
        ));
    }
    if queries.shape[0] != 1 {
        return Err(Error::checkpoint(
            query_attention,
            format!(
                "{} queries: only num_queries = 1 is supported (with more, the reference's \
                 residual add broadcasts the query over the batch)",
                queries.shape[0]
            ),
        ));
    }
    if heads == 0 || dim % heads != 0 {
        return Err(Error::Config(format!(
            "{heads} pooling heads do not divide the width {dim}"
        )));
    }
    let w = take(
        &mut qa,
        query_attention,
        "multihead_attn.in_proj_weight",
        Some(&[3 * dim, dim]),
    )?;
    let b = take(
        &mut qa,
        query_attention,
        "multihead_attn.in_proj_bias",
        Some(&[3 * dim]),
    )?;
    let ow = take(
        &mut qa,
        query_attention,
        "multihead_attn.out_proj.weight",
        Some(&[dim, dim]),
    )?;
    let ob = take(
        &mut qa,
        query_attention,
        "multihead_attn.out_proj.bias",
        Some(&[dim]),
    )?;
    no_leftovers(&qa, query_attention, "QueryAttention")?;
    let (wf, bf) = (w.to_f32(), b.to_f32());
    for (i, proj) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
        tensors.insert(
            format!("pool.{proj}.weight"),
            HostTensor::from_f32(
                vec![dim, dim],
                wf[i * dim * dim..(i + 1) * dim * dim].to_vec(),
            )?,
        );
        tensors.insert(
            format!("pool.{proj}.bias"),
            HostTensor::from_f32(vec![dim], bf[i * dim..(i + 1) * dim].to_vec())?,
        );
    }
    tensors.insert("pool.out_proj.weight".into(), ow);
    tensors.insert("pool.out_proj.bias".into(), ob);
    tensors.insert("pool.query".into(), queries);

    // MLP: widths from the shapes.
    let mut m = read_state_dict_any(mlp)?;
    let h0 = m.get("fc1.weight").map(|t| t.shape[0]).unwrap_or(0);
    let h1 = m.get("fc2.weight").map(|t| t.shape[0]).unwrap_or(0);
    let widths = [dim, h0, h1, 1];
    for (i, (fc, ours)) in [("fc1", "mlp.0"), ("fc2", "mlp.2"), ("fc3", "mlp.4")]
        .iter()
        .enumerate()
    {
        let w = take(
            &mut m,
            mlp,
            &format!("{fc}.weight"),
            Some(&[widths[i + 1], widths[i]]),
        )?;
        let b = take(&mut m, mlp, &format!("{fc}.bias"), Some(&[widths[i + 1]]))?;
        tensors.insert(format!("{ours}.weight"), w);
        tensors.insert(format!("{ours}.bias"), b);
    }
    no_leftovers(&m, mlp, "MLP")?;

    let step = step_in_name(mlp)
        .or_else(|| step_in_name(query_attention))
        .unwrap_or(0);
    Ok(ImportedReward {
        config: RewardModelConfig {
            blocks: blocks.len(),
            trainable_blocks: None,
            heads,
            queries: 1,
            hidden: [h0, h1],
        },
        step,
        tensors,
    })
}

/// Writes an imported model as a prfl reward checkpoint (what `prfl score --reward` and
/// [`crate::reward::model::RewardModel::load`] read, with the generator it was cut from).
pub fn save_reward_checkpoint(model: &ImportedReward, out: &Path) -> Result<()> {
    let tensors: BTreeMap<String, HostTensor> = model
        .tensors
        .iter()
        .map(|(k, v)| (format!("{PARAM_PREFIX}{k}"), v.clone()))
        .collect();
    let meta = TrainingMeta {
        step: model.step,
        rng: Rng::seed_from_u64(0).state(),
        kind: TrainingKind::Reward,
        config: json!({ "model": model.config, "source": "HY-Video-PRFL reward model (imported)" }),
    };
    save_training_checkpoint(out, &tensors, &meta.to_json())
}

/// Writes a prfl reward model (a reward checkpoint and the generator it was cut from) as the
/// reference's three files under `out_dir`: `checkpoint-<step>/` (embeddings and the K blocks in
/// the original layout, float32, with the generator's `config.json`), `query_attention_step_<step>.ckpt`
/// and `mlp_step_<step>.ckpt` (torch zip files that `torch.load` + `load_state_dict` accept).
pub fn export_reference(
    generator: &Checkpoint,
    reward: &Path,
    out_dir: &Path,
) -> Result<ReferenceFiles> {
    let (saved, meta) = load_training_checkpoint(reward)?;
    let cfg: RewardModelConfig =
        serde_json::from_value(meta["config"]["model"].clone()).map_err(|e| {
            Error::checkpoint(
                reward,
                format!("not a reward-model checkpoint (config.model: {e})"),
            )
        })?;
    let step = meta["step"].as_u64().unwrap_or(0);
    let trained = |name: &str| saved.get(&format!("{PARAM_PREFIX}{name}"));
    let need = |name: &str| {
        trained(name).ok_or_else(|| {
            Error::checkpoint(reward, format!("missing tensor `{PARAM_PREFIX}{name}`"))
        })
    };

    // The transformer: the generator's embeddings and kept blocks, trained blocks from the checkpoint.
    let mut backbone = generator.load(backbone_filter(cfg.blocks))?;
    for (name, t) in backbone.iter_mut() {
        if let Some(tr) = trained(name) {
            *t = tr.clone();
        }
    }
    let backbone: BTreeMap<String, HostTensor> = backbone
        .iter()
        .map(|(k, v)| Ok((k.clone(), as_f32(v)?)))
        .collect::<Result<_>>()?;
    let tdir = out_dir.join(format!("checkpoint-{step}"));
    std::fs::create_dir_all(&tdir).map_err(|e| Error::io(&tdir, e))?;
    let st_meta: std::collections::HashMap<String, String> =
        [("format".to_string(), "pt".to_string())].into();
    write_safetensors(
        &tdir.join("diffusion_pytorch_model.safetensors"),
        backbone.iter().map(|(k, v)| (k.as_str(), v)),
        Some(&st_meta),
    )?;
    let config_json = serde_json::to_string_pretty(&generator.config().to_original_json())
        .map_err(|e| Error::InvalidInput(format!("config.json: {e}")))?;
    let cpath = tdir.join("config.json");
    std::fs::write(&cpath, config_json).map_err(|e| Error::io(&cpath, e))?;

    // QueryAttention: the q/k/v blocks packed back into in_proj.
    let mut in_w = Vec::new();
    let mut in_b = Vec::new();
    for proj in ["q_proj", "k_proj", "v_proj"] {
        in_w.extend(need(&format!("pool.{proj}.weight"))?.to_f32());
        in_b.extend(need(&format!("pool.{proj}.bias"))?.to_f32());
    }
    let query = as_f32(need("pool.query")?)?;
    let dim = query.shape[1];
    let qa: Vec<(String, HostTensor)> = vec![
        ("queries".into(), query),
        (
            "multihead_attn.in_proj_weight".into(),
            HostTensor::from_f32(vec![3 * dim, dim], in_w)?,
        ),
        (
            "multihead_attn.in_proj_bias".into(),
            HostTensor::from_f32(vec![3 * dim], in_b)?,
        ),
        (
            "multihead_attn.out_proj.weight".into(),
            as_f32(need("pool.out_proj.weight")?)?,
        ),
        (
            "multihead_attn.out_proj.bias".into(),
            as_f32(need("pool.out_proj.bias")?)?,
        ),
    ];
    let qa_path = out_dir.join(format!("query_attention_step_{step}.ckpt"));
    write_state_dict(
        &qa_path,
        &format!("query_attention_step_{step}"),
        qa.iter().map(|(k, v)| (k.as_str(), v)),
    )?;

    let mut mlp = Vec::new();
    for (fc, ours) in [("fc1", "mlp.0"), ("fc2", "mlp.2"), ("fc3", "mlp.4")] {
        for p in ["weight", "bias"] {
            mlp.push((format!("{fc}.{p}"), as_f32(need(&format!("{ours}.{p}"))?)?));
        }
    }
    let mlp_path = out_dir.join(format!("mlp_step_{step}.ckpt"));
    write_state_dict(
        &mlp_path,
        &format!("mlp_step_{step}"),
        mlp.iter().map(|(k, v)| (k.as_str(), v)),
    )?;
    Ok(ReferenceFiles {
        transformer: tdir,
        query_attention: qa_path,
        mlp: mlp_path,
    })
}

/// Whether an exported model fits the reference's `MLP` class (fixed widths 1024 and 512).
pub fn fits_reference_mlp(cfg: &RewardModelConfig) -> bool {
    cfg.hidden == REFERENCE_HIDDEN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn training_wrappers_are_removed_from_names() {
        assert_eq!(
            unwrap_name(
                "_fsdp_wrapped_module.blocks.0._checkpoint_wrapped_module.self_attn.q.weight"
            ),
            "blocks.0.self_attn.q.weight"
        );
        assert_eq!(
            unwrap_name("module.model.diffusion_model.blocks.1.norm3.bias"),
            "blocks.1.norm3.bias"
        );
        assert_eq!(
            unwrap_name("blocks.2.ffn.0.weight"),
            "blocks.2.ffn.0.weight"
        );
    }

    #[test]
    fn the_step_comes_from_the_file_name() {
        assert_eq!(
            step_in_name(Path::new("out/mlp_step_1200.ckpt")),
            Some(1200)
        );
        assert_eq!(step_in_name(Path::new("mlp.safetensors")), None);
    }
}
