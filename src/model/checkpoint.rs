//! Wan2.1 DiT checkpoints on disk: opening (a released directory, one `.safetensors` file, or a
//! sharded `*.index.json`), in either naming layout, and writing them back atomically.
//!
//! Files are memory-mapped and only their headers are parsed on open, so opening a 57 GB 14B
//! checkpoint is instant and loading a subset (say the first K blocks for a reward model) touches
//! only those tensors' pages. Everything the engine sees is in canonical (original Wan2.1) naming;
//! the layout of the files only matters here and in error messages, which name a tensor the way
//! the checkpoint does and, where that differs, the canonical way too.
//!
//! The plain safetensors helpers at the bottom ([`read_safetensors`], [`write_safetensors`]) serve
//! the CLI's input and output files, which hold arbitrary names.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::Mmap;
use safetensors::tensor::{Dtype as StDtype, SafeTensors};
use serde_json::{json, Value};

use super::config::WanConfig;
use super::names::{
    canonical_params, from_diffusers, is_ignored_buffer, original_to_diffusers,
    strip_repack_prefix, Layout, REPACK_PREFIX,
};
use crate::tensor::{DType, HostTensor, Storage};
use crate::{Error, Result};

/// File names of the released checkpoints (both layouts use diffusers' weight names).
pub const WEIGHTS_NAME: &str = "diffusion_pytorch_model.safetensors";
pub const INDEX_NAME: &str = "diffusion_pytorch_model.safetensors.index.json";
pub const CONFIG_NAME: &str = "config.json";

/// Where the configuration of an opened checkpoint came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    /// A `config.json` (either format), with text/image widths taken from the tensors.
    Json(PathBuf),
    /// Inferred from tensor shapes (a bare weights file), with 128-wide heads.
    Inferred,
}

/// One memory-mapped safetensors file.
struct MappedFile {
    path: PathBuf,
    mmap: Mmap,
}

/// A tensor as found in a file header; offsets are absolute positions in the file.
struct RawTensor {
    name: String,
    dtype: StDtype,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// A checkpoint tensor.
struct Entry {
    /// Name in the file (prefix included).
    stored: String,
    /// Canonical name, or `None` when the name is not a Wan2.1 parameter of the layout.
    canonical: Option<String>,
    file: usize,
    dtype: DType,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

impl Entry {
    fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// An opened Wan2.1 DiT checkpoint. Tensors stay on disk (memory-mapped) until read.
pub struct Checkpoint {
    path: PathBuf,
    config: WanConfig,
    config_source: ConfigSource,
    layout: Layout,
    /// Whether the names carry the community-repack prefix `model.diffusion_model.`.
    prefixed: bool,
    files: Vec<MappedFile>,
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
        let (files, raw) = match &source {
            Source::Single(p) => {
                let (file, tensors, _) = map_safetensors(p)?;
                (vec![file], vec![tensors])
            }
            Source::Index(p) => open_index(p)?,
        };
        let weights_dir = match &source {
            Source::Single(p) | Source::Index(p) => {
                p.parent().unwrap_or(Path::new(".")).to_path_buf()
            }
        };

        let names = index_tensors(path, &files, raw)?;
        let shapes: BTreeMap<String, Vec<usize>> = names
            .by_canonical
            .iter()
            .map(|(c, &i)| (c.clone(), names.entries[i].shape.clone()))
            .collect();
        let (config, config_source) = resolve_config(&weights_dir, &shapes)?;
        let TensorIndex {
            layout,
            prefixed,
            entries,
            by_canonical,
            ignored,
        } = names;
        let ckpt = Checkpoint {
            path: path.to_path_buf(),
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
        ckpt.check_shapes()?;
        Ok(ckpt)
    }

    /// The path this checkpoint was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn config(&self) -> &WanConfig {
        &self.config
    }

    pub fn config_source(&self) -> &ConfigSource {
        &self.config_source
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The safetensors files, in shard order.
    pub fn files(&self) -> Vec<&Path> {
        self.files.iter().map(|f| f.path.as_path()).collect()
    }

    /// Canonical names of the Wan2.1 parameters present.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_canonical.keys().map(String::as_str)
    }

    /// The name a canonical parameter has in the files (prefix included), if present.
    pub fn stored_name(&self, canonical: &str) -> Option<&str> {
        self.by_canonical
            .get(canonical)
            .map(|&i| self.entries[i].stored.as_str())
    }

    /// Stored dtype and shape of a canonical parameter.
    pub fn tensor_info(&self, canonical: &str) -> Option<(DType, &[usize])> {
        self.by_canonical.get(canonical).map(|&i| {
            let e = &self.entries[i];
            (e.dtype, e.shape.as_slice())
        })
    }

    /// Reads one parameter (canonical name) in its stored dtype.
    pub fn read(&self, canonical: &str) -> Result<HostTensor> {
        let &i = self
            .by_canonical
            .get(canonical)
            .ok_or_else(|| Error::MissingTensor(self.describe(canonical)))?;
        let e = &self.entries[i];
        let bytes = self.files[e.file].mmap.get(e.start..e.end).ok_or_else(|| {
            Error::checkpoint(
                &self.files[e.file].path,
                format!("tensor `{}` lies outside the file", e.stored),
            )
        })?;
        self.bytes_read
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        HostTensor::new(e.shape.clone(), Storage::from_le_bytes(bytes, e.dtype))
    }

    /// Loads every parameter of the configuration whose canonical name passes `filter`, keyed by
    /// canonical name. Fails on a tensor that is not a parameter of this configuration (checked
    /// over the whole checkpoint), on a wanted parameter that is absent, and on a wrong shape.
    pub fn load(&self, filter: impl Fn(&str) -> bool) -> Result<BTreeMap<String, HostTensor>> {
        self.check_unexpected()?;
        let mut out = BTreeMap::new();
        for spec in canonical_params(&self.config) {
            if !filter(&spec.name) {
                continue;
            }
            let t = self.read(&spec.name)?;
            if t.shape != spec.shape {
                return Err(Error::ShapeMismatch {
                    name: self.describe(&spec.name),
                    got: t.shape,
                    expected: spec.shape,
                });
            }
            out.insert(spec.name, t);
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
        self.check_unexpected()?;
        for spec in canonical_params(&self.config) {
            if !self.by_canonical.contains_key(&spec.name) {
                return Err(Error::MissingTensor(self.describe(&spec.name)));
            }
        }
        self.check_shapes()
    }

    /// Tensor bytes read so far through [`Checkpoint::read`] / [`Checkpoint::load`].
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    /// Number of stored elements (ignored buffers excluded).
    pub fn parameter_count(&self) -> usize {
        self.entries.iter().map(Entry::numel).sum()
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
        self.entries.iter().map(|e| (e.end - e.start) as u64).sum()
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
                ConfigSource::Inferred => format!(
                    "inferred from tensor shapes (head dim {})",
                    super::config::RELEASED_HEAD_DIM
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

    /// Every tensor must be a parameter of the configuration.
    fn check_unexpected(&self) -> Result<()> {
        let wanted: BTreeSet<String> = canonical_params(&self.config)
            .into_iter()
            .map(|p| p.name)
            .collect();
        for e in &self.entries {
            match &e.canonical {
                Some(c) if wanted.contains(c) => {}
                Some(c) => return Err(Error::UnexpectedTensor(self.describe(c))),
                None => return Err(Error::UnexpectedTensor(e.stored.clone())),
            }
        }
        Ok(())
    }

    /// Every present parameter must have the configuration's shape.
    fn check_shapes(&self) -> Result<()> {
        for spec in canonical_params(&self.config) {
            if let Some((_, shape)) = self.tensor_info(&spec.name) {
                if shape != spec.shape.as_slice() {
                    return Err(Error::ShapeMismatch {
                        name: self.describe(&spec.name),
                        got: shape.to_vec(),
                        expected: spec.shape,
                    });
                }
            }
        }
        Ok(())
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
fn index_tensors(
    path: &Path,
    files: &[MappedFile],
    raw: Vec<Vec<RawTensor>>,
) -> Result<TensorIndex> {
    let mut kept = Vec::new();
    let mut seen = BTreeSet::new();
    let mut ignored = 0;
    let mut prefixed = false;
    for (file, tensors) in raw.into_iter().enumerate() {
        for t in tensors {
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
            kept.push((file, bare, t));
        }
    }
    let layout = detect_layout(path, kept.iter().map(|(_, bare, _)| bare.as_str()))?;

    let mut entries = Vec::with_capacity(kept.len());
    let mut by_canonical = BTreeMap::new();
    for (file, bare, t) in kept {
        let dtype = supported_dtype(t.dtype).ok_or_else(|| {
            Error::UnsupportedDtype(format!(
                "{:?} of tensor `{}` in {} (expected F32, BF16 or F16)",
                t.dtype,
                t.name,
                files[file].path.display()
            ))
        })?;
        let canonical = layout.to_canonical(&bare);
        if let Some(c) = &canonical {
            by_canonical.insert(c.clone(), entries.len());
        }
        entries.push(Entry {
            stored: t.name,
            canonical,
            file,
            dtype,
            shape: t.shape,
            start: t.start,
            end: t.end,
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

/// The configuration from `config.json` beside the weights (reconciled with the tensor shapes),
/// or inferred from the shapes when there is none.
fn resolve_config(
    weights_dir: &Path,
    shapes: &BTreeMap<String, Vec<usize>>,
) -> Result<(WanConfig, ConfigSource)> {
    let config_path = weights_dir.join(CONFIG_NAME);
    if config_path.is_file() {
        let mut cfg = read_config_json(&config_path)?;
        cfg.reconcile_with_shapes(shapes)
            .map_err(|e| in_file(e, &config_path))?;
        Ok((cfg, ConfigSource::Json(config_path)))
    } else {
        Ok((
            WanConfig::infer_from_shapes(shapes)?,
            ConfigSource::Inferred,
        ))
    }
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
#[allow(clippy::type_complexity)]
fn open_index(index: &Path) -> Result<(Vec<MappedFile>, Vec<Vec<RawTensor>>)> {
    let text = fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
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
    let mut raw = Vec::new();
    let mut contents: HashMap<&str, BTreeSet<String>> = HashMap::new();
    for name in shard_names {
        let (file, tensors, _) = map_safetensors(&dir.join(name))?;
        contents.insert(name, tensors.iter().map(|t| t.name.clone()).collect());
        files.push(file);
        raw.push(tensors);
    }
    for (tensor, file) in placed {
        if !contents
            .get(file)
            .is_some_and(|names| names.contains(tensor))
        {
            return Err(Error::checkpoint(
                index,
                format!("weight_map places tensor `{tensor}` in {file}, which does not contain it"),
            ));
        }
    }
    Ok((files, raw))
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

fn read_config_json(path: &Path) -> Result<WanConfig> {
    let text = fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| Error::Config(format!("{}: not valid JSON: {e}", path.display())))?;
    WanConfig::from_json(&v).map_err(|e| in_file(e, path))
}

/// Adds the file to a configuration error (other errors already name their subject).
fn in_file(e: Error, path: &Path) -> Error {
    match e {
        Error::Config(m) => Error::Config(format!("{}: {m}", path.display())),
        e => e,
    }
}

fn supported_dtype(d: StDtype) -> Option<DType> {
    match d {
        StDtype::F32 => Some(DType::F32),
        StDtype::BF16 => Some(DType::BF16),
        StDtype::F16 => Some(DType::F16),
        _ => None,
    }
}

fn safetensors_dtype(d: DType) -> StDtype {
    match d {
        DType::F32 => StDtype::F32,
        DType::BF16 => StDtype::BF16,
        DType::F16 => StDtype::F16,
    }
}

/// Maps a safetensors file and parses (and validates) its header; tensor bytes are not touched.
fn map_safetensors(path: &Path) -> Result<(MappedFile, Vec<RawTensor>, HashMap<String, String>)> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if len < 8 {
        return Err(Error::checkpoint(
            path,
            format!("truncated: {len} bytes, shorter than a safetensors header"),
        ));
    }
    // SAFETY: the map is read-only; the file must not be modified while open, the usual contract
    // of memory-mapped checkpoints (writers here replace files by rename, never in place).
    let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let (header_len, meta) = SafeTensors::read_metadata(&mmap).map_err(|e| {
        use safetensors::SafeTensorError as E;
        let why = match e {
            E::InvalidHeaderLength | E::MetadataIncompleteBuffer => {
                "truncated or corrupt: the header and the tensor data do not cover the file exactly"
                    .to_string()
            }
            E::InvalidHeader
            | E::InvalidHeaderStart
            | E::InvalidHeaderDeserialization
            | E::HeaderTooLarge => {
                "corrupt or not a safetensors file: unreadable header".to_string()
            }
            other => format!("corrupt safetensors header: {other:?}"),
        };
        Error::checkpoint(path, why)
    })?;
    let data_start = 8 + header_len;
    let mut tensors: Vec<RawTensor> = meta
        .tensors()
        .into_iter()
        .map(|(name, info)| RawTensor {
            name,
            dtype: info.dtype,
            shape: info.shape.clone(),
            start: data_start + info.data_offsets.0,
            end: data_start + info.data_offsets.1,
        })
        .collect();
    tensors.sort_by_key(|t| t.start);
    let user_meta = meta.metadata().clone().unwrap_or_default();
    Ok((
        MappedFile {
            path: path.to_path_buf(),
            mmap,
        },
        tensors,
        user_meta,
    ))
}

/// The `__metadata__` string map of a safetensors file (empty when it has none).
pub fn read_safetensors_metadata(path: &Path) -> Result<HashMap<String, String>> {
    Ok(map_safetensors(path)?.2)
}

/// Reads every tensor of a safetensors file (any names; F32, BF16 or F16).
pub fn read_safetensors(path: &Path) -> Result<BTreeMap<String, HostTensor>> {
    let (file, tensors, _) = map_safetensors(path)?;
    let mut out = BTreeMap::new();
    for t in tensors {
        let dtype = supported_dtype(t.dtype).ok_or_else(|| {
            Error::UnsupportedDtype(format!(
                "{:?} of tensor `{}` in {} (expected F32, BF16 or F16)",
                t.dtype,
                t.name,
                path.display()
            ))
        })?;
        let data = Storage::from_le_bytes(&file.mmap[t.start..t.end], dtype);
        out.insert(t.name, HostTensor::new(t.shape, data)?);
    }
    Ok(out)
}

/// Writes tensors to a safetensors file atomically (a crash leaves the old file or none, never a
/// partial one). `metadata` goes to the header's `__metadata__`.
pub fn write_safetensors<'a, K: AsRef<str>>(
    path: &Path,
    tensors: impl IntoIterator<Item = (K, &'a HostTensor)>,
    metadata: Option<&HashMap<String, String>>,
) -> Result<()> {
    let mut list: Vec<(String, &HostTensor)> = tensors
        .into_iter()
        .map(|(k, t)| (k.as_ref().to_string(), t))
        .collect();
    // Descending element size, then name, as the reference writer does: every tensor then starts
    // at an offset aligned to its element size.
    list.sort_by(|(a, x), (b, y)| {
        y.dtype()
            .size_in_bytes()
            .cmp(&x.dtype().size_in_bytes())
            .then_with(|| a.cmp(b))
    });
    if let Some(w) = list.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(Error::InvalidInput(format!(
            "tensor `{}` given twice",
            w[0].0
        )));
    }
    let mut header = serde_json::Map::new();
    if let Some(m) = metadata {
        header.insert("__metadata__".into(), json!(m));
    }
    let mut offset = 0usize;
    for (name, t) in &list {
        if name == "__metadata__" {
            return Err(Error::InvalidInput(
                "`__metadata__` is reserved in safetensors".into(),
            ));
        }
        if t.numel() != t.data.len() {
            return Err(Error::InvalidInput(format!(
                "tensor `{name}`: shape {:?} does not match its {} elements",
                t.shape,
                t.data.len()
            )));
        }
        let n = t.data.len() * t.dtype().size_in_bytes();
        header.insert(
            name.clone(),
            json!({
                "dtype": safetensors_dtype(t.dtype()),
                "shape": t.shape,
                "data_offsets": [offset, offset + n],
            }),
        );
        offset += n;
    }
    let mut header = serde_json::to_vec(&Value::Object(header))
        .map_err(|e| Error::InvalidInput(format!("safetensors header: {e}")))?;
    // The data must start 8-byte aligned; the format pads the header with spaces.
    header.resize(header.len().div_ceil(8) * 8, b' ');
    atomic_write(path, |w| {
        w.write_all(&(header.len() as u64).to_le_bytes())?;
        w.write_all(&header)?;
        for (_, t) in &list {
            w.write_all(&le_bytes(&t.data))?;
        }
        Ok(())
    })
}

/// Little-endian bytes of a storage, without a copy on little-endian machines.
fn le_bytes(s: &Storage) -> Cow<'_, [u8]> {
    if cfg!(target_endian = "little") {
        match s {
            Storage::F32(v) => Cow::Borrowed(bytemuck::cast_slice(v)),
            Storage::BF16(v) => Cow::Borrowed(bytemuck::cast_slice(v)),
            Storage::F16(v) => Cow::Borrowed(bytemuck::cast_slice(v)),
        }
    } else {
        Cow::Owned(s.to_le_bytes())
    }
}

/// Writes a file through a temporary in the same directory, fsyncs it, renames it over `path`,
/// and fsyncs the directory, so the file is either entirely old or entirely new after a crash.
fn atomic_write(
    path: &Path,
    body: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::InvalidInput(format!("{} is not a file path", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        file_name.to_string_lossy(),
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| -> std::io::Result<()> {
        let f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        body(&mut w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Makes a rename durable (a no-op where directories cannot be opened, e.g. Windows).
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
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
    let specs = canonical_params(cfg);
    let wanted: BTreeSet<&str> = specs.iter().map(|p| p.name.as_str()).collect();
    if let Some(extra) = tensors.keys().find(|k| !wanted.contains(k.as_str())) {
        return Err(Error::UnexpectedTensor(extra.clone()));
    }
    let mut ordered = Vec::with_capacity(specs.len());
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
        ordered.push((layout.from_canonical(&spec.name), t));
    }

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

    #[test]
    fn safetensors_round_trip_and_alignment() {
        let dir = std::env::temp_dir().join(format!("prfl-st-unit-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.safetensors");
        let a = HostTensor::new(vec![3], Storage::from_f32(&[1.0, 2.0, 3.0], DType::BF16)).unwrap();
        let b = HostTensor::from_f32(vec![2, 1], vec![4.0, 5.0]).unwrap();
        let m: HashMap<String, String> = [("k".to_string(), "v".to_string())].into();
        write_safetensors(&path, [("a", &a), ("b", &b)], Some(&m)).unwrap();
        let back = read_safetensors(&path).unwrap();
        assert_eq!(back["a"], a);
        assert_eq!(back["b"], b);
        // The reference parser accepts the file, metadata included.
        let bytes = fs::read(&path).unwrap();
        let (n, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(n % 8, 0);
        assert_eq!(meta.metadata().as_ref().unwrap()["k"], "v");
        // No temp files are left behind.
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(write_safetensors(&path, [("a", &a), ("a", &b)], None).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
