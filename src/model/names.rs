//! Parameter names of the Wan2.1 DiT and their translation between the two checkpoint layouts.
//!
//! The engine's canonical names are those of the ORIGINAL Wan2.1 release (`wan/modules/model.py`):
//! `blocks.0.self_attn.q.weight`, `blocks.0.modulation`, `head.head.weight`, ... The diffusers
//! conversion (`WanTransformer3DModel`) renames modules but keeps every shape; the mapping below is
//! the one of diffusers' `convert_wan_to_diffusers.py` / `convert_wan_transformer_to_diffusers`,
//! written as an exact table rather than the script's chain of substring replacements (the script
//! relies on replacement order, e.g. swapping `norm2`/`norm3` through a placeholder; a table cannot
//! get that wrong, and it rejects names it does not know instead of passing them through mangled).

use std::collections::{BTreeMap, BTreeSet};

use super::config::{ModelType, WanConfig};
use crate::{Error, Result};

/// How the tensors of a checkpoint are named.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layout {
    /// The original Wan2.1 release (the engine's canonical names).
    Original,
    /// diffusers' `WanTransformer3DModel`.
    Diffusers,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::Original => "original",
            Layout::Diffusers => "diffusers",
        }
    }

    /// The canonical (original) name of a tensor named `stored` in this layout, or `None` when it
    /// is not a Wan2.1 parameter name of this layout.
    pub fn to_canonical(self, stored: &str) -> Option<String> {
        match self {
            Layout::Original => original_to_diffusers(stored).map(|_| stored.to_string()),
            Layout::Diffusers => from_diffusers(stored),
        }
    }

    /// The name a canonical parameter has in this layout (unknown names pass through unchanged).
    pub fn from_canonical(self, canonical: &str) -> String {
        match self {
            Layout::Original => canonical.to_string(),
            Layout::Diffusers => to_diffusers(canonical),
        }
    }
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One parameter: canonical name and shape exactly as stored in official checkpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

impl ParamSpec {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Every parameter of a model with this configuration, in module order (embeddings, blocks, head,
/// image MLP), canonical names. Non-parameter buffers (the RoPE tables) are not included: both
/// implementations recompute them and neither stores them in checkpoints.
pub fn canonical_params(cfg: &WanConfig) -> Vec<ParamSpec> {
    let d = cfg.dim;
    let mut out = Vec::new();
    let mut push = |name: String, shape: Vec<usize>| out.push(ParamSpec { name, shape });
    let linear =
        |push: &mut dyn FnMut(String, Vec<usize>), prefix: &str, out_f: usize, in_f: usize| {
            push(format!("{prefix}.weight"), vec![out_f, in_f]);
            push(format!("{prefix}.bias"), vec![out_f]);
        };

    // Conv3d weight [out, in, kt, kh, kw]; the patch is always (1, 2, 2).
    push(
        "patch_embedding.weight".into(),
        vec![d, cfg.in_dim, 1, 2, 2],
    );
    push("patch_embedding.bias".into(), vec![d]);
    linear(&mut push, "text_embedding.0", d, cfg.text_dim);
    linear(&mut push, "text_embedding.2", d, d);
    linear(&mut push, "time_embedding.0", d, cfg.freq_dim);
    linear(&mut push, "time_embedding.2", d, d);
    linear(&mut push, "time_projection.1", 6 * d, d);

    let i2v = cfg.model_type == ModelType::I2V;
    for i in 0..cfg.num_layers {
        let b = format!("blocks.{i}");
        push(format!("{b}.modulation"), vec![1, 6, d]);
        for p in ["q", "k", "v", "o"] {
            linear(&mut push, &format!("{b}.self_attn.{p}"), d, d);
        }
        push(format!("{b}.self_attn.norm_q.weight"), vec![d]);
        push(format!("{b}.self_attn.norm_k.weight"), vec![d]);
        // norm3 is the affine cross-attention pre-norm; norm1/norm2 have no parameters.
        push(format!("{b}.norm3.weight"), vec![d]);
        push(format!("{b}.norm3.bias"), vec![d]);
        for p in ["q", "k", "v", "o"] {
            linear(&mut push, &format!("{b}.cross_attn.{p}"), d, d);
        }
        push(format!("{b}.cross_attn.norm_q.weight"), vec![d]);
        push(format!("{b}.cross_attn.norm_k.weight"), vec![d]);
        if i2v {
            // The image tokens are already projected to D by img_emb, hence D -> D.
            linear(&mut push, &format!("{b}.cross_attn.k_img"), d, d);
            linear(&mut push, &format!("{b}.cross_attn.v_img"), d, d);
            push(format!("{b}.cross_attn.norm_k_img.weight"), vec![d]);
        }
        linear(&mut push, &format!("{b}.ffn.0"), cfg.ffn_dim, d);
        linear(&mut push, &format!("{b}.ffn.2"), d, cfg.ffn_dim);
    }

    push("head.modulation".into(), vec![1, 2, d]);
    linear(&mut push, "head.head", cfg.out_dim * 4, d);

    if i2v {
        // A model type without image_dim is rejected by validate(); 1280 keeps this total.
        let img = cfg.image_dim.unwrap_or(1280);
        // proj.0 and proj.4 are LayerNorms, proj.2 is the (parameterless) GELU.
        push("img_emb.proj.0.weight".into(), vec![img]);
        push("img_emb.proj.0.bias".into(), vec![img]);
        linear(&mut push, "img_emb.proj.1", img, img);
        linear(&mut push, "img_emb.proj.3", d, img);
        push("img_emb.proj.4.weight".into(), vec![d]);
        push("img_emb.proj.4.bias".into(), vec![d]);
    }
    out
}

/// Checks a set of tensors (canonical name -> shape) against the parameters of `cfg`: every
/// tensor must be one of them, every parameter that `required` selects must be present, and every
/// present one must have its shape. The one check behind checkpoint verification and loading
/// (from a file or from bytes) and checkpoint saving; `describe` names a tensor in the error (a
/// checkpoint adds the name it is stored under). Parameters are checked in module order.
pub fn check_exact(
    cfg: &WanConfig,
    present: &BTreeMap<&str, &[usize]>,
    required: impl Fn(&str) -> bool,
    describe: impl Fn(&str) -> String,
) -> Result<()> {
    let specs = canonical_params(cfg);
    let known: BTreeSet<&str> = specs.iter().map(|p| p.name.as_str()).collect();
    if let Some(extra) = present.keys().find(|n| !known.contains(*n)) {
        return Err(Error::UnexpectedTensor(describe(extra)));
    }
    for spec in &specs {
        if !present.contains_key(spec.name.as_str()) && required(&spec.name) {
            return Err(Error::MissingTensor(describe(&spec.name)));
        }
    }
    check_shapes(cfg, present, describe)
}

/// Checks only that every present parameter of `cfg` has its shape: what opening a checkpoint
/// can check before it is known which parameters will be loaded.
pub fn check_shapes(
    cfg: &WanConfig,
    present: &BTreeMap<&str, &[usize]>,
    describe: impl Fn(&str) -> String,
) -> Result<()> {
    for spec in canonical_params(cfg) {
        match present.get(spec.name.as_str()) {
            Some(&shape) if shape != spec.shape.as_slice() => {
                return Err(Error::ShapeMismatch {
                    name: describe(&spec.name),
                    got: shape.to_vec(),
                    expected: spec.shape,
                })
            }
            _ => {}
        }
    }
    Ok(())
}

/// Prefix that community repacks (ComfyUI and others) put in front of every name.
pub const REPACK_PREFIX: &str = "model.diffusion_model.";

/// Removes the repack prefix, if any.
pub fn strip_repack_prefix(name: &str) -> &str {
    name.strip_prefix(REPACK_PREFIX).unwrap_or(name)
}

/// Tensors some exporters store that are not parameters of the model; loaders skip them. `freqs`
/// and `rope.*` are RoPE tables (recomputed from the config); `norm_added_q` is a parameter some
/// conversions carry that no Wan2.1 model uses (diffusers ignores it on load, too).
pub fn is_ignored_buffer(name: &str) -> bool {
    let name = strip_repack_prefix(name);
    name == "freqs" || name.starts_with("rope.") || name.ends_with(".norm_added_q.weight")
}

/// The block index of a canonical (or diffusers) name `blocks.N.*`.
pub fn block_index(name: &str) -> Option<usize> {
    split_block(name).map(|(i, _)| i)
}

/// A name filter for [`crate::model::checkpoint::Checkpoint::load`]: every parameter outside the
/// blocks (embeddings, head, image MLP) and the blocks with index below `k`.
pub fn blocks_below(k: usize) -> impl Fn(&str) -> bool {
    move |name| block_index(name).map_or(true, |i| i < k)
}

/// The diffusers name of an original-layout parameter name. Names that are not Wan2.1 parameters
/// pass through unchanged (use [`Layout::to_canonical`] to test membership).
pub fn to_diffusers(name: &str) -> String {
    original_to_diffusers(name).unwrap_or_else(|| name.to_string())
}

/// The original (canonical) name of a diffusers parameter name, or `None` when the name is not a
/// Wan2.1 parameter in the diffusers layout.
pub fn from_diffusers(name: &str) -> Option<String> {
    translate(name, Dir::FromDiffusers)
}

/// The diffusers name of an original-layout name, or `None` when the name is not a Wan2.1
/// parameter in the original layout.
pub(crate) fn original_to_diffusers(name: &str) -> Option<String> {
    translate(name, Dir::ToDiffusers)
}

/// Whole parameters (no `.weight`/`.bias` leaf) outside the blocks: (original, diffusers).
const TOP_PARAMS: &[(&str, &str)] = &[
    ("head.modulation", "scale_shift_table"),
    // FLF2V's image position embedding: mapped so errors can name it in both layouts, but it is
    // not in canonical_params (the engine does not implement FLF2V), so loading rejects it.
    (
        "img_emb.emb_pos",
        "condition_embedder.image_embedder.pos_embed",
    ),
];

/// Modules with `.weight` (and possibly `.bias`) outside the blocks: (original, diffusers).
const TOP_MODULES: &[(&str, &str)] = &[
    ("patch_embedding", "patch_embedding"),
    (
        "text_embedding.0",
        "condition_embedder.text_embedder.linear_1",
    ),
    (
        "text_embedding.2",
        "condition_embedder.text_embedder.linear_2",
    ),
    (
        "time_embedding.0",
        "condition_embedder.time_embedder.linear_1",
    ),
    (
        "time_embedding.2",
        "condition_embedder.time_embedder.linear_2",
    ),
    ("time_projection.1", "condition_embedder.time_proj"),
    ("head.head", "proj_out"),
    ("img_emb.proj.0", "condition_embedder.image_embedder.norm1"),
    (
        "img_emb.proj.1",
        "condition_embedder.image_embedder.ff.net.0.proj",
    ),
    (
        "img_emb.proj.3",
        "condition_embedder.image_embedder.ff.net.2",
    ),
    ("img_emb.proj.4", "condition_embedder.image_embedder.norm2"),
];

/// Whole parameters inside a block (after `blocks.N.`).
const BLOCK_PARAMS: &[(&str, &str)] = &[("modulation", "scale_shift_table")];

/// Modules inside a block (after `blocks.N.`): (original, diffusers).
const BLOCK_MODULES: &[(&str, &str)] = &[
    ("self_attn.q", "attn1.to_q"),
    ("self_attn.k", "attn1.to_k"),
    ("self_attn.v", "attn1.to_v"),
    ("self_attn.o", "attn1.to_out.0"),
    ("self_attn.norm_q", "attn1.norm_q"),
    ("self_attn.norm_k", "attn1.norm_k"),
    // Parity trap 3: the affine cross-attention norm is norm3 in the original, norm2 in diffusers.
    ("norm3", "norm2"),
    ("cross_attn.q", "attn2.to_q"),
    ("cross_attn.k", "attn2.to_k"),
    ("cross_attn.v", "attn2.to_v"),
    ("cross_attn.o", "attn2.to_out.0"),
    ("cross_attn.norm_q", "attn2.norm_q"),
    ("cross_attn.norm_k", "attn2.norm_k"),
    ("cross_attn.k_img", "attn2.add_k_proj"),
    ("cross_attn.v_img", "attn2.add_v_proj"),
    ("cross_attn.norm_k_img", "attn2.norm_added_k"),
    ("ffn.0", "ffn.net.0.proj"),
    ("ffn.2", "ffn.net.2"),
];

#[derive(Clone, Copy)]
enum Dir {
    ToDiffusers,
    FromDiffusers,
}

/// Looks `key` up on the source side of a (original, diffusers) table.
fn lookup(table: &[(&'static str, &'static str)], key: &str, dir: Dir) -> Option<&'static str> {
    table.iter().find_map(|&(orig, diff)| match dir {
        Dir::ToDiffusers if orig == key => Some(diff),
        Dir::FromDiffusers if diff == key => Some(orig),
        _ => None,
    })
}

/// Splits `blocks.N.rest` into (N, rest). N must be a plain decimal (no sign, no leading `+`).
fn split_block(name: &str) -> Option<(usize, &str)> {
    let rest = name.strip_prefix("blocks.")?;
    let (idx, rest) = rest.split_once('.')?;
    if idx.is_empty() || !idx.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((idx.parse().ok()?, rest))
}

/// Translates within one naming scope: a whole parameter, or `module.weight` / `module.bias`.
fn translate_local(
    local: &str,
    params: &[(&'static str, &'static str)],
    modules: &[(&'static str, &'static str)],
    dir: Dir,
) -> Option<String> {
    if let Some(p) = lookup(params, local, dir) {
        return Some(p.to_string());
    }
    let (module, leaf) = local.rsplit_once('.')?;
    if leaf != "weight" && leaf != "bias" {
        return None;
    }
    lookup(modules, module, dir).map(|m| format!("{m}.{leaf}"))
}

fn translate(name: &str, dir: Dir) -> Option<String> {
    match split_block(name) {
        Some((i, local)) => translate_local(local, BLOCK_PARAMS, BLOCK_MODULES, dir)
            .map(|l| format!("blocks.{i}.{l}")),
        None => translate_local(name, TOP_PARAMS, TOP_MODULES, dir),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_i2v() -> WanConfig {
        WanConfig {
            model_type: ModelType::I2V,
            in_dim: 36,
            out_dim: 16,
            dim: 32,
            ffn_dim: 40,
            freq_dim: 8,
            text_dim: 24,
            image_dim: Some(20),
            num_heads: 2,
            num_layers: 1,
            eps: 1e-6,
            text_len: 512,
        }
    }

    /// `state_dict()` of diffusers 0.42.1's `WanTransformer3DModel(num_attention_heads=2,
    /// attention_head_dim=16, in_channels=36, out_channels=16, text_dim=24, freq_dim=8, ffn_dim=40,
    /// num_layers=1, image_dim=20, added_kv_proj_dim=32)`, printed from Python.
    const DIFFUSERS_I2V_STATE_DICT: &[(&str, &[usize])] = &[
        ("scale_shift_table", &[1, 2, 32]),
        ("patch_embedding.weight", &[32, 36, 1, 2, 2]),
        ("patch_embedding.bias", &[32]),
        ("condition_embedder.time_embedder.linear_1.weight", &[32, 8]),
        ("condition_embedder.time_embedder.linear_1.bias", &[32]),
        (
            "condition_embedder.time_embedder.linear_2.weight",
            &[32, 32],
        ),
        ("condition_embedder.time_embedder.linear_2.bias", &[32]),
        ("condition_embedder.time_proj.weight", &[192, 32]),
        ("condition_embedder.time_proj.bias", &[192]),
        (
            "condition_embedder.text_embedder.linear_1.weight",
            &[32, 24],
        ),
        ("condition_embedder.text_embedder.linear_1.bias", &[32]),
        (
            "condition_embedder.text_embedder.linear_2.weight",
            &[32, 32],
        ),
        ("condition_embedder.text_embedder.linear_2.bias", &[32]),
        ("condition_embedder.image_embedder.norm1.weight", &[20]),
        ("condition_embedder.image_embedder.norm1.bias", &[20]),
        (
            "condition_embedder.image_embedder.ff.net.0.proj.weight",
            &[20, 20],
        ),
        (
            "condition_embedder.image_embedder.ff.net.0.proj.bias",
            &[20],
        ),
        (
            "condition_embedder.image_embedder.ff.net.2.weight",
            &[32, 20],
        ),
        ("condition_embedder.image_embedder.ff.net.2.bias", &[32]),
        ("condition_embedder.image_embedder.norm2.weight", &[32]),
        ("condition_embedder.image_embedder.norm2.bias", &[32]),
        ("blocks.0.scale_shift_table", &[1, 6, 32]),
        ("blocks.0.attn1.to_q.weight", &[32, 32]),
        ("blocks.0.attn1.to_q.bias", &[32]),
        ("blocks.0.attn1.to_k.weight", &[32, 32]),
        ("blocks.0.attn1.to_k.bias", &[32]),
        ("blocks.0.attn1.to_v.weight", &[32, 32]),
        ("blocks.0.attn1.to_v.bias", &[32]),
        ("blocks.0.attn1.to_out.0.weight", &[32, 32]),
        ("blocks.0.attn1.to_out.0.bias", &[32]),
        ("blocks.0.attn1.norm_q.weight", &[32]),
        ("blocks.0.attn1.norm_k.weight", &[32]),
        ("blocks.0.attn2.to_q.weight", &[32, 32]),
        ("blocks.0.attn2.to_q.bias", &[32]),
        ("blocks.0.attn2.to_k.weight", &[32, 32]),
        ("blocks.0.attn2.to_k.bias", &[32]),
        ("blocks.0.attn2.to_v.weight", &[32, 32]),
        ("blocks.0.attn2.to_v.bias", &[32]),
        ("blocks.0.attn2.to_out.0.weight", &[32, 32]),
        ("blocks.0.attn2.to_out.0.bias", &[32]),
        ("blocks.0.attn2.norm_q.weight", &[32]),
        ("blocks.0.attn2.norm_k.weight", &[32]),
        ("blocks.0.attn2.add_k_proj.weight", &[32, 32]),
        ("blocks.0.attn2.add_k_proj.bias", &[32]),
        ("blocks.0.attn2.add_v_proj.weight", &[32, 32]),
        ("blocks.0.attn2.add_v_proj.bias", &[32]),
        ("blocks.0.attn2.norm_added_k.weight", &[32]),
        ("blocks.0.norm2.weight", &[32]),
        ("blocks.0.norm2.bias", &[32]),
        ("blocks.0.ffn.net.0.proj.weight", &[40, 32]),
        ("blocks.0.ffn.net.0.proj.bias", &[40]),
        ("blocks.0.ffn.net.2.weight", &[32, 40]),
        ("blocks.0.ffn.net.2.bias", &[32]),
        ("proj_out.weight", &[64, 32]),
        ("proj_out.bias", &[64]),
    ];

    #[test]
    fn canonical_params_match_the_diffusers_state_dict() {
        let mut ours: Vec<(String, Vec<usize>)> = canonical_params(&tiny_i2v())
            .into_iter()
            .map(|p| (to_diffusers(&p.name), p.shape))
            .collect();
        let mut theirs: Vec<(String, Vec<usize>)> = DIFFUSERS_I2V_STATE_DICT
            .iter()
            .map(|(n, s)| (n.to_string(), s.to_vec()))
            .collect();
        ours.sort();
        theirs.sort();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn every_name_round_trips_in_both_directions() {
        let mut cfg = tiny_i2v();
        cfg.num_layers = 3;
        for p in canonical_params(&cfg) {
            let d = original_to_diffusers(&p.name).expect(&p.name);
            assert_eq!(from_diffusers(&d).as_deref(), Some(p.name.as_str()));
            assert_eq!(
                Layout::Diffusers.to_canonical(&d).as_deref(),
                Some(p.name.as_str())
            );
            assert_eq!(
                Layout::Original.to_canonical(&p.name).as_deref(),
                Some(p.name.as_str())
            );
        }
    }

    #[test]
    fn norm2_and_norm3_swap() {
        assert_eq!(
            to_diffusers("blocks.7.norm3.weight"),
            "blocks.7.norm2.weight"
        );
        assert_eq!(
            from_diffusers("blocks.7.norm2.bias").unwrap(),
            "blocks.7.norm3.bias"
        );
        // Neither layout stores the parameterless norms.
        assert_eq!(original_to_diffusers("blocks.0.norm2.weight"), None);
        assert_eq!(from_diffusers("blocks.0.norm3.weight"), None);
    }

    #[test]
    fn unknown_names_are_rejected() {
        for n in [
            "blocks.x.modulation",
            "blocks..modulation",
            "blocks.+1.modulation",
            "blocks.0.self_attn.q.scale",
            "head.norm.weight",
            "model.diffusion_model.head.head.weight",
            "",
        ] {
            assert_eq!(original_to_diffusers(n), None, "{n}");
            assert_eq!(from_diffusers(n), None, "{n}");
        }
        assert_eq!(to_diffusers("something.else"), "something.else");
    }

    #[test]
    fn t2v_has_no_image_parameters_and_the_released_counts_are_right() {
        let t2v = canonical_params(&WanConfig::t2v_1_3b());
        assert!(t2v.iter().all(|p| !p.name.contains("img")));
        // 1.3B: 12 embedding + 30 * 27 block + 3 head tensors (825, as in the release).
        assert_eq!(t2v.len(), 12 + 30 * 27 + 3);
        let n: usize = t2v.iter().map(ParamSpec::numel).sum();
        assert_eq!(n, 1_418_996_800);
        let i2v = canonical_params(&WanConfig::i2v_14b());
        assert_eq!(i2v.len(), 12 + 40 * 32 + 3 + 8);
    }

    #[test]
    fn prefix_filters_and_buffers() {
        assert_eq!(
            strip_repack_prefix("model.diffusion_model.blocks.0.modulation"),
            "blocks.0.modulation"
        );
        assert_eq!(
            strip_repack_prefix("blocks.0.modulation"),
            "blocks.0.modulation"
        );
        assert!(is_ignored_buffer("freqs"));
        assert!(is_ignored_buffer("rope.freqs_cos"));
        assert!(is_ignored_buffer("blocks.3.attn2.norm_added_q.weight"));
        assert!(!is_ignored_buffer("blocks.3.attn2.norm_added_k.weight"));
        let f = blocks_below(2);
        assert!(f("patch_embedding.weight") && f("head.head.bias") && f("blocks.1.ffn.0.weight"));
        assert!(!f("blocks.2.ffn.0.weight") && !f("blocks.10.modulation"));
        assert_eq!(block_index("blocks.12.attn1.to_q.weight"), Some(12));
    }
}
