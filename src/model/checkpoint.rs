//! Wan2.1 DiT checkpoints: opening them (a released directory, one `.safetensors` file, a
//! sharded `*.index.json`, or a whole file's bytes handed over by a host), in either naming
//! layout, reading the configuration off them, and writing them back atomically.
//!
//! Files are parsed by [`crate::safetensors`]: memory-mapped, with only their headers read on
//! open, so opening a 57 GB 14B checkpoint is instant and loading a subset (say the first K
//! blocks for a reward model) touches only those tensors' pages. Bytes from memory take the same
//! road from the parsed header on ([`Checkpoint::from_bytes`]): the same tensor index, layout
//! detection and configuration inference, and so the same errors. Everything the engine sees is
//! in canonical (original Wan2.1) naming; the layout of the files only matters here and in error
//! messages, which name a tensor the way the checkpoint does and, where that differs, the
//! canonical way too.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{json, Value};

use super::config::{ModelType, WanConfig, RELEASED_HEAD_DIM};
use super::names::{
    block_index, canonical_params, check_exact, check_shapes, from_diffusers, is_ignored_buffer,
    original_to_diffusers, strip_repack_prefix, Layout, REPACK_PREFIX,
};
use crate::safetensors::{
    atomic_write, sync_dir, write_safetensors, Safetensors, TensorEntry, MEMORY_SOURCE,
};
use crate::tensor::{DType, HostTensor};
use crate::{Error, Result};

/// File names of the released checkpoints (both layouts use diffusers' weight names).
pub const WEIGHTS_NAME: &str = "diffusion_pytorch_model.safetensors";
/// The index of a sharded checkpoint.
pub const INDEX_NAME: &str = "diffusion_pytorch_model.safetensors.index.json";
/// The configuration beside the weights.
pub const CONFIG_NAME: &str = "config.json";

/// Where the configuration of an opened checkpoint came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    /// A `config.json` (either format), with text/image widths taken from the tensors.
    Json(PathBuf),
    /// A `config.json` text handed over with the bytes ([`Checkpoint::from_bytes`]), reconciled
    /// with the tensors the same way.
    Given,
    /// Inferred from tensor shapes (a bare weights file), with 128-wide heads.
    Inferred,
}

/// The configuration a checkpoint is opened with, before it is reconciled with the tensors.
enum ConfigInput<'a> {
    /// A `config.json` file beside the weights.
    File(PathBuf),
    /// A `config.json` text, named `config_json` in messages (the C ABI's argument).
    Text(&'a str),
    /// None: inferred from the shapes.
    Infer,
}

/// A checkpoint tensor: where it is stored and what it is called canonically.
struct Entry {
    /// Canonical name, or `None` when the name is not a Wan2.1 parameter of the layout.
    canonical: Option<String>,
    /// Index into the checkpoint's files, and into that file's tensors.
    file: usize,
    tensor: usize,
    /// The stored dtype (one the engine holds: others are refused on open).
    dtype: DType,
}

/// An opened Wan2.1 DiT checkpoint. Tensors stay in the files (memory-mapped) or in the bytes
/// handed over until read.
pub struct Checkpoint {
    /// The path opened, or [`MEMORY_SOURCE`].
    path: PathBuf,
    config: WanConfig,
    config_source: ConfigSource,
    layout: Layout,
    /// Whether the names carry the community-repack prefix `model.diffusion_model.`.
    prefixed: bool,
    files: Vec<Safetensors>,
    /// Every tensor except ignored buffers, in file order.
    entries: Vec<Entry>,
    /// Canonical name -> index into `entries`.
    by_canonical: BTreeMap<String, usize>,
    /// Non-parameter buffers that were skipped (RoPE tables and the like).
    ignored: usize,
    bytes_read: AtomicU64,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("path", &self.path)
            .field("layout", &self.layout)
            .field("config", &self.config)
            .field("files", &self.files.len())
            .field("tensors", &self.entries.len())
            .finish()
    }
}

/// What a path given to [`Checkpoint::open`] resolves to.
enum Source {
    Single(PathBuf),
    Index(PathBuf),
}

impl Checkpoint {
    /// Opens a checkpoint: a directory as released (`config.json` plus
    /// `diffusion_pytorch_model.safetensors` or a sharded `*.safetensors.index.json`; a diffusers
    /// pipeline root is followed into `transformer/`), a single `.safetensors` file (configured
    /// by a `config.json` beside it if there is one, else inferred from the shapes), or an
    /// `*.index.json` file. Only headers are read; every tensor's shape is checked against the
    /// configuration here, completeness when loading (see [`Checkpoint::verify`]).
    pub fn open(path: &Path) -> Result<Checkpoint> {
        let meta = fs::metadata(path).map_err(|e| Error::io(path, e))?;
        let source = if meta.is_dir() {
            resolve_dir(path)?
        } else if path.to_string_lossy().ends_with(".json") {
            Source::Index(path.to_path_buf())
        } else {
            Source::Single(path.to_path_buf())
        };
        let (files, weights) = match &source {
            Source::Single(p) => (vec![Safetensors::map(p)?], p),
            Source::Index(p) => (open_index(p)?, p),
        };
        let config_path = weights.parent().unwrap_or(Path::new(".")).join(CONFIG_NAME);
        let config = if config_path.exists() {
            ConfigInput::File(config_path)
        } else {
            ConfigInput::Infer
        };
        Self::from_files(path.to_path_buf(), files, config)
    }

    /// Opens a checkpoint from the bytes of one whole `.safetensors` file (assets packed in a
    /// game's archive, platforms without a writable temp directory). `config_json` is a
    /// `config.json` in either layout; without it the configuration is inferred from the shapes
    /// (128-wide heads, as every released Wan2.1). The bytes go through the same tensor index,
    /// layout detection and configuration inference as [`Checkpoint::open`], so the same bad
    /// input gives the same error; messages name the source [`MEMORY_SOURCE`] where a file's
    /// would name its path, and the configuration text `config_json`. As with `open`, shapes are
    /// checked here and completeness by [`Checkpoint::verify`] or when loading.
    pub fn from_bytes(bytes: Vec<u8>, config_json: Option<&str>) -> Result<Checkpoint> {
        let file = Safetensors::from_bytes(bytes)?;
        let config = config_json.map_or(ConfigInput::Infer, ConfigInput::Text);
        Self::from_files(PathBuf::from(MEMORY_SOURCE), vec![file], config)
    }

    /// The common road of [`Checkpoint::open`] and [`Checkpoint::from_bytes`] once the headers
    /// are parsed: index the tensors, detect the layout, resolve the configuration, check shapes.
    fn from_files(path: PathBuf, files: Vec<Safetensors>, config: ConfigInput) -> Result<Self> {
        let TensorIndex {
            layout,
            prefixed,
            entries,
            by_canonical,
            ignored,
        } = index_tensors(&path, &files)?;
        let shapes: BTreeMap<String, Vec<usize>> = by_canonical
            .iter()
            .map(|(c, &i)| {
                let e = &entries[i];
                (c.clone(), files[e.file].tensors()[e.tensor].shape.clone())
            })
            .collect();
        let (config, config_source) = resolve_config(config, &shapes)?;
        let ckpt = Checkpoint {
            path,
            config,
            config_source,
            layout,
            prefixed,
            files,
            entries,
            by_canonical,
            ignored,
            bytes_read: AtomicU64::new(0),
        };
        check_shapes(&ckpt.config, &ckpt.shapes(), |c| ckpt.describe(c))?;
        Ok(ckpt)
    }

    /// The path this checkpoint was opened from ([`MEMORY_SOURCE`] for one from bytes).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The configuration (from `config.json` or inferred; see [`Checkpoint::config_source`]).
    pub fn config(&self) -> &WanConfig {
        &self.config
    }

    /// Where the configuration came from.
    pub fn config_source(&self) -> &ConfigSource {
        &self.config_source
    }

    /// The naming layout of the stored tensors.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The safetensors files, in shard order (none for a checkpoint from bytes).
    pub fn files(&self) -> Vec<&Path> {
        self.files.iter().filter_map(Safetensors::path).collect()
    }

    /// Canonical names of the Wan2.1 parameters present.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_canonical.keys().map(String::as_str)
    }

    /// The header entry of a checkpoint tensor.
    fn tensor(&self, e: &Entry) -> &TensorEntry {
        &self.files[e.file].tensors()[e.tensor]
    }

    /// The name a canonical parameter has in the files (prefix included), if present.
    pub fn stored_name(&self, canonical: &str) -> Option<&str> {
        self.by_canonical
            .get(canonical)
            .map(|&i| self.tensor(&self.entries[i]).name.as_str())
    }

    /// Stored dtype and shape of a canonical parameter.
    pub fn tensor_info(&self, canonical: &str) -> Option<(DType, &[usize])> {
        self.by_canonical.get(canonical).map(|&i| {
            let e = &self.entries[i];
            (e.dtype, self.tensor(e).shape.as_slice())
        })
    }

    /// Reads one parameter (canonical name) in its stored dtype.
    pub fn read(&self, canonical: &str) -> Result<HostTensor> {
        let &i = self
            .by_canonical
            .get(canonical)
            .ok_or_else(|| Error::MissingTensor(self.describe(canonical)))?;
        let e = &self.entries[i];
        let t = self.files[e.file].read_entry(self.tensor(e))?;
        self.bytes_read
            .fetch_add(self.tensor(e).range.len() as u64, Ordering::Relaxed);
        Ok(t)
    }

    /// Loads every parameter of the configuration whose canonical name passes `filter`, keyed by
    /// canonical name. Fails on a tensor that is not a parameter of this configuration (checked
    /// over the whole checkpoint), on a wanted parameter that is absent, and on a wrong shape.
    pub fn load(&self, filter: impl Fn(&str) -> bool) -> Result<BTreeMap<String, HostTensor>> {
        self.check_params(&filter)?;
        let mut out = BTreeMap::new();
        for spec in canonical_params(&self.config) {
            if filter(&spec.name) {
                let t = self.read(&spec.name)?;
                out.insert(spec.name, t);
            }
        }
        Ok(out)
    }

    /// Loads every parameter.
    pub fn load_all(&self) -> Result<BTreeMap<String, HostTensor>> {
        self.load(|_| true)
    }

    /// Checks, from the headers alone, that the checkpoint holds exactly the parameters of its
    /// configuration with the right shapes.
    pub fn verify(&self) -> Result<()> {
        self.check_params(|_| true)
    }

    /// Tensor bytes read so far through [`Checkpoint::read`] / [`Checkpoint::load`].
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    /// Number of stored elements (ignored buffers excluded).
    pub fn parameter_count(&self) -> usize {
        self.entries.iter().map(|e| self.tensor(e).numel()).sum()
    }

    /// Number of tensors per stored dtype (dtypes that do not occur are left out).
    pub fn dtypes(&self) -> Vec<(DType, usize)> {
        [DType::F32, DType::BF16, DType::F16]
            .into_iter()
            .map(|d| (d, self.entries.iter().filter(|e| e.dtype == d).count()))
            .filter(|&(_, n)| n > 0)
            .collect()
    }

    /// Bytes of tensor data (ignored buffers excluded).
    pub fn total_bytes(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| self.tensor(e).range.len() as u64)
            .sum()
    }

    /// A human-readable description for `prfl inspect`.
    pub fn summary(&self) -> String {
        let c = &self.config;
        let mut s = String::new();
        let mut line = |k: &str, v: String| s.push_str(&format!("{k:<16}{v}\n"));
        line("checkpoint", self.path.display().to_string());
        let prefix = if self.prefixed {
            format!(" (names prefixed `{REPACK_PREFIX}`)")
        } else {
            String::new()
        };
        line("layout", format!("{}{prefix}", self.layout));
        line("variant", c.variant_name().to_string());
        line(
            "config",
            match &self.config_source {
                ConfigSource::Json(p) => format!("from {}", p.display()),
                ConfigSource::Given => "given with the bytes (config_json)".to_string(),
                ConfigSource::Inferred => format!(
                    "inferred from tensor shapes (head dim {})",
                    RELEASED_HEAD_DIM
                ),
            },
        );
        line("  model_type", format!("{:?}", c.model_type).to_lowercase());
        line("  dim", c.dim.to_string());
        line("  ffn_dim", c.ffn_dim.to_string());
        line(
            "  num_heads",
            format!("{} (head dim {})", c.num_heads, c.head_dim()),
        );
        line("  num_layers", c.num_layers.to_string());
        line("  in_dim", c.in_dim.to_string());
        line("  out_dim", c.out_dim.to_string());
        line("  freq_dim", c.freq_dim.to_string());
        line("  text_dim", c.text_dim.to_string());
        line(
            "  image_dim",
            c.image_dim.map_or("none".into(), |d| d.to_string()),
        );
        line("  eps", format!("{:e}", c.eps));
        line("  text_len", c.text_len.to_string());
        let n = self.parameter_count();
        line(
            "parameters",
            format!("{n} ({})", human(n as f64, 1000.0, &["", " K", " M", " B"])),
        );
        line("tensors", {
            let by: Vec<String> = self
                .dtypes()
                .iter()
                .map(|(d, k)| format!("{}: {k}", d.name()))
                .collect();
            let ign = if self.ignored > 0 {
                format!("; {} buffers ignored", self.ignored)
            } else {
                String::new()
            };
            format!("{} ({}{ign})", self.entries.len(), by.join(", "))
        });
        let b = self.total_bytes();
        line(
            "bytes",
            format!(
                "{b} ({})",
                human(b as f64, 1024.0, &[" B", " KiB", " MiB", " GiB"])
            ),
        );
        line("files", self.files.len().to_string());
        s
    }

    /// A tensor's name for messages: as the checkpoint names it, plus the canonical name when
    /// they differ.
    fn describe(&self, canonical: &str) -> String {
        let stored = match self.stored_name(canonical) {
            Some(s) => s.to_string(),
            None => {
                let p = if self.prefixed { REPACK_PREFIX } else { "" };
                format!("{p}{}", self.layout.from_canonical(canonical))
            }
        };
        if stored == canonical {
            stored
        } else {
            format!("{stored} (canonical {canonical})")
        }
    }

    /// The shapes of the parameters present, by canonical name.
    fn shapes(&self) -> BTreeMap<&str, &[usize]> {
        self.by_canonical
            .iter()
            .map(|(c, &i)| (c.as_str(), self.tensor(&self.entries[i]).shape.as_slice()))
            .collect()
    }

    /// Every tensor must be a parameter of the configuration, every parameter that `required`
    /// selects present, every present one of its shape.
    fn check_params(&self, required: impl Fn(&str) -> bool) -> Result<()> {
        // A name that is no Wan2.1 parameter of the layout has no canonical name to check.
        if let Some(e) = self.entries.iter().find(|e| e.canonical.is_none()) {
            return Err(Error::UnexpectedTensor(self.tensor(e).name.clone()));
        }
        check_exact(&self.config, &self.shapes(), required, |c| self.describe(c))
    }
}

/// The tensors of a checkpoint, named canonically.
struct TensorIndex {
    layout: Layout,
    prefixed: bool,
    entries: Vec<Entry>,
    by_canonical: BTreeMap<String, usize>,
    ignored: usize,
}

/// Strips the repack prefix, skips buffers, detects the layout and translates every name; a name
/// stored twice is ambiguous, and a dtype the engine cannot hold is rejected here, naming it.
fn index_tensors(path: &Path, files: &[Safetensors]) -> Result<TensorIndex> {
    let mut kept = Vec::new();
    let mut seen = BTreeSet::new();
    let mut ignored = 0;
    let mut prefixed = false;
    for (file, st) in files.iter().enumerate() {
        for (tensor, t) in st.tensors().iter().enumerate() {
            if is_ignored_buffer(&t.name) {
                ignored += 1;
                continue;
            }
            let bare = strip_repack_prefix(&t.name).to_string();
            prefixed |= bare.len() != t.name.len();
            if !seen.insert(bare.clone()) {
                return Err(Error::checkpoint(
                    path,
                    format!("tensor `{bare}` is stored twice (with and without the `{REPACK_PREFIX}` prefix, or in two shards)"),
                ));
            }
            kept.push((file, tensor, bare));
        }
    }
    let layout = detect_layout(path, kept.iter().map(|(_, _, bare)| bare.as_str()))?;

    let mut entries = Vec::with_capacity(kept.len());
    let mut by_canonical = BTreeMap::new();
    for (file, tensor, bare) in kept {
        let dtype = files[file].dtype(&files[file].tensors()[tensor])?;
        let canonical = layout.to_canonical(&bare);
        if let Some(c) = &canonical {
            by_canonical.insert(c.clone(), entries.len());
        }
        entries.push(Entry {
            canonical,
            file,
            tensor,
            dtype,
        });
    }
    Ok(TensorIndex {
        layout,
        prefixed,
        entries,
        by_canonical,
        ignored,
    })
}

/// The configuration from a `config.json` (a file beside the weights, or a text handed over),
/// reconciled with the tensor shapes, or inferred from the shapes when there is none.
fn resolve_config(
    input: ConfigInput,
    shapes: &BTreeMap<String, Vec<usize>>,
) -> Result<(WanConfig, ConfigSource)> {
    match input {
        ConfigInput::File(path) => {
            let label = path.display().to_string();
            let text = crate::fs::read_regular_to_string(&path)?;
            let cfg = parse_config(&text, &label, shapes)?;
            Ok((cfg, ConfigSource::Json(path)))
        }
        ConfigInput::Text(text) => Ok((
            parse_config(text, "config_json", shapes)?,
            ConfigSource::Given,
        )),
        ConfigInput::Infer => Ok((
            WanConfig::infer_from_shapes(shapes)?,
            ConfigSource::Inferred,
        )),
    }
}

/// Parses a `config.json` text (either layout) and reconciles it with the shapes; configuration
/// errors name the text by `label` (other errors already name their subject).
fn parse_config(
    text: &str,
    label: &str,
    shapes: &BTreeMap<String, Vec<usize>>,
) -> Result<WanConfig> {
    let in_label = |e: Error| match e {
        Error::Config(m) => Error::Config(format!("{label}: {m}")),
        e => e,
    };
    let v: Value = serde_json::from_str(text)
        .map_err(|e| Error::Config(format!("{label}: not valid JSON: {e}")))?;
    let mut cfg = WanConfig::from_json(&v).map_err(in_label)?;
    cfg.reconcile_with_shapes(shapes).map_err(in_label)?;
    Ok(cfg)
}

/// Reading a configuration off a checkpoint's tensor shapes is a checkpoint concern, so it lives
/// here rather than beside the JSON readers in [`super::config`].
impl WanConfig {
    /// Infers the configuration of a bare weights file from its tensor shapes (canonical names).
    /// Widths come from the weights; the head count cannot (q/k/v are [D, D] for any head count)
    /// and is taken as D / 128, the head width of every released Wan2.1; eps and text_len take the
    /// released values.
    pub fn infer_from_shapes(shapes: &BTreeMap<String, Vec<usize>>) -> Result<Self> {
        let get = |name: &str, rank: usize| -> Result<&[usize]> {
            let s = shapes
                .get(name)
                .ok_or_else(|| Error::MissingTensor(name.to_string()))?;
            if s.len() != rank {
                return Err(Error::Config(format!(
                    "cannot infer the configuration: tensor `{name}` has rank {} (shape {s:?}), expected {rank}",
                    s.len()
                )));
            }
            Ok(s)
        };
        let patch = get("patch_embedding.weight", 5)?;
        if patch[2..] != [1, 2, 2] {
            return Err(Error::Config(format!(
                "tensor `patch_embedding.weight` has shape {patch:?}: patch size {:?} is not (1, 2, 2)",
                &patch[2..]
            )));
        }
        let (dim, in_dim) = (patch[0], patch[1]);
        if dim == 0 || dim % RELEASED_HEAD_DIM != 0 {
            return Err(Error::Config(format!(
                "cannot infer the head count: width {dim} (tensor `patch_embedding.weight`) is not a \
                 multiple of {RELEASED_HEAD_DIM}; put a config.json beside the weights"
            )));
        }
        let head = get("head.head.weight", 2)?;
        if head[0] % 4 != 0 {
            return Err(Error::Config(format!(
                "tensor `head.head.weight` has {} outputs, not a multiple of the 4 patch positions",
                head[0]
            )));
        }
        let num_layers = shapes
            .keys()
            .filter_map(|n| block_index(n))
            .max()
            .map_or(0, |i| i + 1);
        // Any block's FFN gives the hidden width; report block 0's if none has one.
        let ffn_name = (0..num_layers)
            .map(|i| format!("blocks.{i}.ffn.0.weight"))
            .find(|n| shapes.contains_key(n))
            .unwrap_or_else(|| "blocks.0.ffn.0.weight".to_string());
        let ffn_dim = get(&ffn_name, 2)?[0];
        let i2v = shapes.keys().any(|n| is_image_param(n));
        let image_dim = if i2v {
            Some(get("img_emb.proj.0.weight", 1)?[0])
        } else {
            None
        };
        let cfg = WanConfig {
            model_type: if i2v { ModelType::I2V } else { ModelType::T2V },
            in_dim,
            out_dim: head[0] / 4,
            dim,
            ffn_dim,
            freq_dim: get("time_embedding.0.weight", 2)?[1],
            text_dim: get("text_embedding.0.weight", 2)?[1],
            image_dim,
            num_heads: dim / RELEASED_HEAD_DIM,
            num_layers,
            eps: 1e-6,
            text_len: 512,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Makes a parsed config agree with a checkpoint's tensor shapes (canonical names): the text
    /// and image widths are taken from the weights (the official config.json does not state them),
    /// and a model type the tensors contradict is an error naming the tensor. The remaining sizes
    /// are checked tensor by tensor against `canonical_params` by the checkpoint reader.
    pub fn reconcile_with_shapes(&mut self, shapes: &BTreeMap<String, Vec<usize>>) -> Result<()> {
        if let Some(s) = shapes.get("text_embedding.0.weight") {
            if s.len() == 2 {
                self.text_dim = s[1];
            }
        }
        if let Some(name) = shapes.keys().find(|n| is_image_param(n)) {
            if !self.is_i2v() {
                return Err(Error::Config(format!(
                    "the config says t2v but the checkpoint has the image-conditioning tensor `{name}`"
                )));
            }
        }
        if self.is_i2v() {
            if let Some(s) = shapes.get("img_emb.proj.0.weight") {
                if s.len() == 1 {
                    self.image_dim = Some(s[0]);
                }
            }
        }
        self.validate()
    }
}

/// Tensors that only an image-conditioned (I2V) model has, in canonical naming.
fn is_image_param(name: &str) -> bool {
    name.starts_with("img_emb.")
        || name.contains(".cross_attn.k_img.")
        || name.contains(".cross_attn.v_img.")
        || name.contains(".cross_attn.norm_k_img.")
}

/// `x` scaled to the largest unit not above it, e.g. 1.42 B or 5.29 GiB.
fn human(x: f64, base: f64, units: &[&str]) -> String {
    let mut x = x;
    let mut u = 0;
    while x >= base && u + 1 < units.len() {
        x /= base;
        u += 1;
    }
    if u == 0 {
        format!("{x}{}", units[0])
    } else {
        format!("{x:.2}{}", units[u])
    }
}

/// Picks the weights of a directory: an index json, the released single file, or the only
/// `.safetensors` there; a diffusers pipeline root is followed into `transformer/`.
fn resolve_dir(dir: &Path) -> Result<Source> {
    let mut indexes = Vec::new();
    let mut singles = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue; // our own temp files, editor droppings
        }
        if name.ends_with(".safetensors.index.json") {
            indexes.push(name);
        } else if name.ends_with(".safetensors") {
            singles.push(name);
        }
    }
    indexes.sort();
    singles.sort();
    if indexes.iter().any(|n| n == INDEX_NAME) {
        return Ok(Source::Index(dir.join(INDEX_NAME)));
    }
    match indexes.len() {
        1 => return Ok(Source::Index(dir.join(&indexes[0]))),
        0 => {}
        _ => {
            return Err(Error::checkpoint(
                dir,
                format!(
                    "several index files ({}); open one of them directly",
                    indexes.join(", ")
                ),
            ))
        }
    }
    if singles.iter().any(|n| n == WEIGHTS_NAME) {
        return Ok(Source::Single(dir.join(WEIGHTS_NAME)));
    }
    match singles.len() {
        1 => Ok(Source::Single(dir.join(&singles[0]))),
        0 if dir.join("transformer").is_dir() => resolve_dir(&dir.join("transformer")),
        0 => Err(Error::checkpoint(
            dir,
            "no .safetensors weights in this directory",
        )),
        _ => Err(Error::checkpoint(
            dir,
            format!(
                "several .safetensors files and no index json ({}); open one of them directly",
                singles.join(", ")
            ),
        )),
    }
}

/// Reads an index json and maps its shards. Tensors are taken from the shard headers; the index
/// must agree with them (a tensor it places in a shard must be there).
fn open_index(index: &Path) -> Result<Vec<Safetensors>> {
    let text = crate::fs::read_regular_to_string(index)?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| Error::checkpoint(index, format!("not valid JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::checkpoint(index, "no `weight_map` object"))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut placed = Vec::with_capacity(map.len());
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| {
            Error::checkpoint(
                index,
                format!("weight_map entry of `{tensor}` is not a file name"),
            )
        })?;
        // Shards live beside the index; refuse paths that would leave the directory.
        if !Path::new(file)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        {
            return Err(Error::checkpoint(
                index,
                format!("weight_map names an invalid file `{file}` for `{tensor}`"),
            ));
        }
        placed.push((tensor.as_str(), file));
    }
    let shard_names: BTreeSet<&str> = placed.iter().map(|&(_, f)| f).collect();
    if shard_names.is_empty() {
        return Err(Error::checkpoint(index, "weight_map is empty"));
    }
    let mut files = Vec::new();
    let mut shard_of: HashMap<&str, usize> = HashMap::new();
    for name in shard_names {
        shard_of.insert(name, files.len());
        files.push(Safetensors::map(&dir.join(name))?);
    }
    for (tensor, file) in placed {
        let holds = shard_of
            .get(file)
            .is_some_and(|&i| files[i].get(tensor).is_some());
        if !holds {
            return Err(Error::checkpoint(
                index,
                format!("weight_map places tensor `{tensor}` in {file}, which does not contain it"),
            ));
        }
    }
    Ok(files)
}

/// Decides the naming layout from the names that only one layout has (`patch_embedding.*` is
/// common to both). A checkpoint with no telling names is treated as original.
fn detect_layout<'a>(path: &Path, names: impl Iterator<Item = &'a str>) -> Result<Layout> {
    let (mut orig, mut diff) = (None, None);
    for n in names {
        let o = original_to_diffusers(n);
        let d = from_diffusers(n);
        match (o, d) {
            (Some(x), None) if x != n => orig = orig.or(Some(n)),
            (None, Some(x)) if x != n => diff = diff.or(Some(n)),
            _ => {}
        }
    }
    match (orig, diff) {
        (Some(o), Some(d)) => Err(Error::checkpoint(
            path,
            format!("mixes original (`{o}`) and diffusers (`{d}`) tensor names"),
        )),
        (None, Some(_)) => Ok(Layout::Diffusers),
        _ => Ok(Layout::Original),
    }
}

/// Writes a checkpoint (canonical names in `tensors`) into `dir` in the given layout: the
/// layout's `config.json`, and either `diffusion_pytorch_model.safetensors` or, when
/// `max_shard_bytes` is given and exceeded, numbered shards plus an index json (tensors kept in
/// module order; a tensor larger than the limit gets a shard of its own). The tensors must be
/// exactly the parameters of `cfg` with their shapes. Every file is written atomically; the index
/// (when sharded) is written after its shards, and weight files of an earlier checkpoint in the
/// directory that the new one does not use are removed last.
pub fn save_checkpoint(
    tensors: &BTreeMap<String, HostTensor>,
    cfg: &WanConfig,
    layout: Layout,
    dir: &Path,
    max_shard_bytes: Option<u64>,
) -> Result<()> {
    cfg.validate()?;
    let present: BTreeMap<&str, &[usize]> = tensors
        .iter()
        .map(|(k, t)| (k.as_str(), t.shape.as_slice()))
        .collect();
    check_exact(cfg, &present, |_| true, str::to_string)?;
    // Module order; every parameter is present (checked above).
    let ordered: Vec<(String, &HostTensor)> = canonical_params(cfg)
        .iter()
        .filter_map(|spec| {
            let t = tensors.get(&spec.name)?;
            Some((layout.from_canonical(&spec.name), t))
        })
        .collect();

    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let nbytes = |t: &HostTensor| (t.data.len() * t.dtype().size_in_bytes()) as u64;
    let total: u64 = ordered.iter().map(|(_, t)| nbytes(t)).sum();

    // Greedy sharding in module order keeps each block within one or two shards.
    let mut shards: Vec<Vec<(String, &HostTensor)>> = vec![Vec::new()];
    if let Some(max) = max_shard_bytes.filter(|&m| total > m) {
        let mut size = 0u64;
        for (name, t) in ordered {
            let last = shards.len() - 1;
            if !shards[last].is_empty() && size + nbytes(t) > max {
                shards.push(Vec::new());
                size = 0;
            }
            size += nbytes(t);
            if let Some(s) = shards.last_mut() {
                s.push((name, t));
            }
        }
    } else {
        shards[0] = ordered;
    }

    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let mut written = BTreeSet::new();
    if shards.len() == 1 {
        let shard = &shards[0];
        write_safetensors(
            &dir.join(WEIGHTS_NAME),
            shard.iter().map(|(n, t)| (n.as_str(), *t)),
            Some(&meta),
        )?;
        written.insert(WEIGHTS_NAME.to_string());
    } else {
        let n = shards.len();
        let mut weight_map = serde_json::Map::new();
        for (i, shard) in shards.iter().enumerate() {
            let file = format!(
                "diffusion_pytorch_model-{:05}-of-{:05}.safetensors",
                i + 1,
                n
            );
            write_safetensors(
                &dir.join(&file),
                shard.iter().map(|(n, t)| (n.as_str(), *t)),
                Some(&meta),
            )?;
            for (name, _) in shard {
                weight_map.insert(name.clone(), json!(file));
            }
            written.insert(file);
        }
        let index = json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
        write_json(&dir.join(INDEX_NAME), &index)?;
        written.insert(INDEX_NAME.to_string());
    }
    let config = match layout {
        Layout::Original => cfg.to_original_json(),
        Layout::Diffusers => cfg.to_diffusers_json(),
    };
    write_json(&dir.join(CONFIG_NAME), &config)?;

    // A stale index or shard set would shadow or mix with the new weights on the next open.
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = name.starts_with("diffusion_pytorch_model")
            && (name.ends_with(".safetensors") || name.ends_with(".safetensors.index.json"));
        if ours && !written.contains(&name) {
            fs::remove_file(entry.path()).map_err(|e| Error::io(entry.path(), e))?;
        }
    }
    sync_dir(dir).map_err(|e| Error::io(dir, e))
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let mut text = serde_json::to_vec_pretty(v)
        .map_err(|e| Error::InvalidInput(format!("{}: {e}", path.display())))?;
    text.push(b'\n');
    atomic_write(path, |w| w.write_all(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_detection() {
        let p = Path::new("x");
        let orig = ["patch_embedding.weight", "blocks.0.self_attn.q.weight"];
        assert_eq!(
            detect_layout(p, orig.into_iter()).unwrap(),
            Layout::Original
        );
        let diff = ["patch_embedding.weight", "blocks.0.attn1.to_q.weight"];
        assert_eq!(
            detect_layout(p, diff.into_iter()).unwrap(),
            Layout::Diffusers
        );
        assert_eq!(
            detect_layout(p, ["patch_embedding.bias"].into_iter()).unwrap(),
            Layout::Original
        );
        let mixed = ["head.head.weight", "proj_out.weight"];
        let e = detect_layout(p, mixed.into_iter()).unwrap_err().to_string();
        assert!(
            e.contains("head.head.weight") && e.contains("proj_out.weight"),
            "{e}"
        );
    }

    #[test]
    fn human_units() {
        let count = ["", " K", " M", " B"];
        assert_eq!(human(1_418_996_800.0, 1000.0, &count), "1.42 B");
        assert_eq!(human(60_800.0, 1000.0, &count), "60.80 K");
        assert_eq!(human(512.0, 1024.0, &[" B", " KiB"]), "512 B");
    }

    fn shapes_of(cfg: &WanConfig) -> BTreeMap<String, Vec<usize>> {
        canonical_params(cfg)
            .into_iter()
            .map(|p| (p.name, p.shape))
            .collect()
    }

    #[test]
    fn shapes_infer_the_config() {
        let cfg = WanConfig {
            model_type: ModelType::I2V,
            in_dim: 36,
            out_dim: 16,
            dim: 256,
            ffn_dim: 64,
            freq_dim: 16,
            text_dim: 32,
            image_dim: Some(48),
            num_heads: 2,
            num_layers: 3,
            eps: 1e-6,
            text_len: 512,
        };
        assert_eq!(WanConfig::infer_from_shapes(&shapes_of(&cfg)).unwrap(), cfg);
        for c in [WanConfig::t2v_1_3b(), WanConfig::i2v_14b()] {
            assert_eq!(WanConfig::infer_from_shapes(&shapes_of(&c)).unwrap(), c);
        }
        let mut narrow = cfg.clone();
        narrow.dim = 96;
        let e = WanConfig::infer_from_shapes(&shapes_of(&narrow)).unwrap_err();
        assert!(e.to_string().contains("multiple of 128"), "{e}");
        let mut partial = shapes_of(&cfg);
        partial.remove("head.head.weight");
        let e = WanConfig::infer_from_shapes(&partial).unwrap_err();
        assert!(
            matches!(&e, Error::MissingTensor(n) if n == "head.head.weight"),
            "{e}"
        );
    }

    #[test]
    fn shapes_override_and_contradict_the_config() {
        let mut cfg = WanConfig::i2v_14b();
        cfg.image_dim = Some(1280);
        let mut actual = cfg.clone();
        actual.text_dim = 24;
        actual.image_dim = Some(8);
        cfg.reconcile_with_shapes(&shapes_of(&actual)).unwrap();
        assert_eq!(cfg, actual);
        let mut t2v = WanConfig::t2v_14b();
        let e = t2v
            .reconcile_with_shapes(&shapes_of(&WanConfig::i2v_14b()))
            .unwrap_err();
        assert!(
            e.to_string().contains("k_img") || e.to_string().contains("img_emb"),
            "{e}"
        );
    }
}
