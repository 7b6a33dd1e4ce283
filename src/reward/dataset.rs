//! The on-disk dataset of the latent reward model (method.md section 3): labelled clips for the
//! `ce` loss and preference pairs for the `bt` loss, already encoded to VAE latents and text
//! encoder states, so training never runs the VAE or the text encoder.
//!
//! # Format
//!
//! A dataset is a directory of `*.safetensors` files, one sample per file. The directory is read
//! non-recursively; files whose name starts with `.` (hidden files, and the temporaries of an
//! interrupted atomic write) and files with any other extension are ignored. Samples are ordered
//! by file name (byte order), so indices, splits and shuffles are the same on every machine.
//!
//! A file holds either a **labelled clip**:
//!
//! | tensor | shape | meaning |
//! |---|---|---|
//! | `latent` | `[C, F, H, W]` | clean VAE latent (Wan2.1: `C = 16`), normalised as the model expects |
//! | `text` | `[L, text_dim]` | text encoder states of the prompt (`L` tokens, unpadded or padded) |
//! | `label` | `[1]` (or a scalar `[]`) | `1` = good, `0` = bad |
//! | `image` | `[Li, image_dim]` | optional, I2V only: CLIP image features |
//! | `y` | `[Cy, F, H, W]` | optional, I2V only: conditioning latent (Wan2.1: `Cy = 20`, mask + first frame) |
//!
//! or a **preference pair** (the `win` clip is preferred to the `lose` clip under one prompt):
//!
//! | tensor | shape | meaning |
//! |---|---|---|
//! | `win` | `[C, F, H, W]` | clean latent of the preferred clip |
//! | `lose` | `[C, F, H, W]` | clean latent of the other clip, same shape as `win` |
//! | `text` | `[L, text_dim]` | text encoder states of the shared prompt |
//! | `image`, `y` | as above | optional, I2V only, shared by both clips |
//!
//! Rules, checked when the dataset is opened (each error names the file and the tensor):
//! - any of the dtypes F32, BF16, F16 (converted to f32 on load);
//! - exactly the keys above: a file with both `latent` and `win`, or with an unknown tensor (a
//!   misspelt `imgae` would otherwise silently turn an I2V sample into a T2V one), is rejected;
//! - `image` and `y` come together (Wan2.1 I2V needs both) or not at all;
//! - every dimension is non-zero, `H` and `W` are even (the DiT patch is 1 x 2 x 2), and `y`
//!   has the latent's `F, H, W`;
//! - the label is exactly 0 or 1, and no tensor holds NaN or infinity;
//! - all files agree on the latent channels `C`, on `text_dim`, on whether they are I2V, and on
//!   `image_dim` and `Cy`, which are properties of the model. `F`, `H`, `W`, `L` and `Li` may
//!   vary: [`Dataset::batches`] only groups samples that can be stacked into one forward.
//!
//! The file's `__metadata__` is not read; [`write_clip`] and [`write_pair`] record
//! `"format": "prfl.reward.sample.v1"` there for people inspecting files.
//!
//! Every sample is held in memory as f32 after [`Dataset::open`].

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::safetensors::{read_safetensors, write_safetensors};
use crate::schedule::Rng;
use crate::tensor::{DType, HostTensor, Storage};
use crate::{Error, Result};

/// The value written to `__metadata__["format"]` by [`write_clip`] and [`write_pair`].
pub const FORMAT_TAG: &str = "prfl.reward.sample.v1";

/// Token states `[len, dim]`, row-major: text encoder states or CLIP image features.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenStates {
    pub data: Vec<f32>,
    pub len: usize,
    pub dim: usize,
}

/// The image-to-video conditioning: both parts are required by a Wan2.1 I2V model, so they are
/// one optional value rather than two independent ones.
#[derive(Clone, Debug, PartialEq)]
pub struct I2vConditioning {
    /// CLIP image features `[Li, image_dim]`.
    pub image: TokenStates,
    /// Conditioning latent `[y_channels, F, H, W]` (the sample's `F, H, W`).
    pub y: Vec<f32>,
    pub y_channels: usize,
}

/// What a sample is conditioned on.
#[derive(Clone, Debug, PartialEq)]
pub struct Conditioning {
    pub text: TokenStates,
    pub i2v: Option<I2vConditioning>,
}

/// Whether a sample trains the `ce` loss (a labelled clip) or the `bt` loss (a preference pair).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SampleKind {
    Clip,
    Pair,
}

/// One sample, with f32 host data. `shape` is the latent shape `[C, F, H, W]`.
#[derive(Clone, Debug, PartialEq)]
pub enum Sample {
    Clip {
        latent: Vec<f32>,
        shape: [usize; 4],
        /// 0.0 (bad) or 1.0 (good).
        label: f32,
        cond: Conditioning,
    },
    Pair {
        win: Vec<f32>,
        lose: Vec<f32>,
        shape: [usize; 4],
        cond: Conditioning,
    },
}

impl Sample {
    pub fn kind(&self) -> SampleKind {
        match self {
            Sample::Clip { .. } => SampleKind::Clip,
            Sample::Pair { .. } => SampleKind::Pair,
        }
    }

    /// The latent shape `[C, F, H, W]` (of each clip, for a pair).
    pub fn shape(&self) -> [usize; 4] {
        match self {
            Sample::Clip { shape, .. } | Sample::Pair { shape, .. } => *shape,
        }
    }

    pub fn cond(&self) -> &Conditioning {
        match self {
            Sample::Clip { cond, .. } | Sample::Pair { cond, .. } => cond,
        }
    }

    /// Samples with equal keys can be stacked into one batch: same kind, latent shape, text
    /// length and image-token count (the channel and feature sizes are equal dataset-wide).
    fn batch_key(&self) -> BatchKey {
        let cond = self.cond();
        BatchKey {
            kind: self.kind(),
            shape: self.shape(),
            text_len: cond.text.len,
            image_len: cond.i2v.as_ref().map(|c| c.image.len),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct BatchKey {
    kind: SampleKind,
    shape: [usize; 4],
    text_len: usize,
    image_len: Option<usize>,
}

/// A set of samples and the files they came from.
#[derive(Clone, Debug, Default)]
pub struct Dataset {
    samples: Vec<Sample>,
    /// `paths[i]` is the file of `samples[i]`, for messages that point at the data.
    paths: Vec<PathBuf>,
}

impl Dataset {
    /// Reads and validates every sample file of `dir` (see the module docs for the format).
    pub fn open(dir: &Path) -> Result<Dataset> {
        let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(dir, e))?;
            let path = entry.path();
            let name = entry.file_name();
            let visible = !name.to_string_lossy().starts_with('.');
            let is_sample = path.extension().is_some_and(|e| e == "safetensors");
            // `metadata` follows symbolic links, so a linked sample file counts as a file.
            if visible && is_sample && std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
                files.push(path);
            }
        }
        if files.is_empty() {
            return Err(Error::InvalidInput(format!(
                "dataset directory {} holds no *.safetensors sample files",
                dir.display()
            )));
        }
        files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
        let mut samples = Vec::with_capacity(files.len());
        for path in &files {
            let tensors = read_safetensors(path)?;
            let sample = parse_sample(&tensors).map_err(|msg| file_error(path, msg))?;
            if let Some(first) = samples.first() {
                check_consistent(first, &files[0], &sample).map_err(|msg| file_error(path, msg))?;
            }
            samples.push(sample);
        }
        Ok(Dataset {
            samples,
            paths: files,
        })
    }

    /// A dataset of samples read elsewhere (e.g. [`crate::interop::reference_dataset`]), checked
    /// for consistency as [`Dataset::open`] checks files; `paths[i]` names sample `i` in errors.
    pub fn from_samples(samples: Vec<Sample>, paths: Vec<PathBuf>) -> Result<Dataset> {
        for (s, path) in samples.iter().zip(&paths).skip(1) {
            check_consistent(&samples[0], &paths[0], s).map_err(|msg| file_error(path, msg))?;
        }
        Ok(Dataset { samples, paths })
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Number of labelled clips.
    pub fn clips(&self) -> usize {
        self.count(SampleKind::Clip)
    }

    /// Number of preference pairs.
    pub fn pairs(&self) -> usize {
        self.count(SampleKind::Pair)
    }

    fn count(&self, kind: SampleKind) -> usize {
        self.samples.iter().filter(|s| s.kind() == kind).count()
    }

    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    pub fn sample(&self, index: usize) -> &Sample {
        &self.samples[index]
    }

    /// The file sample `index` was read from.
    pub fn path(&self, index: usize) -> &Path {
        &self.paths[index]
    }

    /// Latent channels `C` (equal for every sample); `None` for an empty dataset.
    pub fn latent_channels(&self) -> Option<usize> {
        self.samples.first().map(|s| s.shape()[0])
    }

    /// Text feature size (equal for every sample); `None` for an empty dataset.
    pub fn text_dim(&self) -> Option<usize> {
        self.samples.first().map(|s| s.cond().text.dim)
    }

    /// Whether the samples carry I2V conditioning (all do or none do).
    pub fn is_i2v(&self) -> bool {
        self.samples.first().is_some_and(|s| s.cond().i2v.is_some())
    }

    /// Splits into `(train, holdout)`, deterministically for a given `seed`.
    ///
    /// Stratified: within each stratum (clips labelled 1, clips labelled 0, pairs) the samples
    /// are shuffled and `round(holdout_fraction * stratum size)` of them are held out, so a
    /// held-out set keeps both classes and the AUC stays defined. Both parts keep file order.
    ///
    /// # Panics
    /// If `holdout_fraction` is not in `[0, 1]`.
    pub fn split(self, holdout_fraction: f64, seed: u64) -> (Dataset, Dataset) {
        assert!(
            (0.0..=1.0).contains(&holdout_fraction),
            "holdout fraction {holdout_fraction} is not in [0, 1]"
        );
        let mut strata: BTreeMap<(SampleKind, u8), Vec<usize>> = BTreeMap::new();
        for (i, s) in self.samples.iter().enumerate() {
            let class = match s {
                Sample::Clip { label, .. } => *label as u8,
                Sample::Pair { .. } => 0,
            };
            strata.entry((s.kind(), class)).or_default().push(i);
        }
        let mut rng = Rng::seed_from_u64(seed);
        let mut held = vec![false; self.samples.len()];
        // BTreeMap iteration is ordered, so the random stream is consumed deterministically.
        for members in strata.values_mut() {
            shuffle(members, &mut rng);
            let k = (holdout_fraction * members.len() as f64).round() as usize;
            members[..k].iter().for_each(|&i| held[i] = true);
        }
        let (mut train, mut holdout) = (Dataset::default(), Dataset::default());
        for ((sample, path), held) in self.samples.into_iter().zip(self.paths).zip(held) {
            let part = if held { &mut holdout } else { &mut train };
            part.samples.push(sample);
            part.paths.push(path);
        }
        (train, holdout)
    }

    /// The batches of one epoch: every sample index exactly once, in batches of at most
    /// `batch_size` that hold one kind, one latent shape, one text length and one image-token
    /// count each, so every batch stacks into a single forward (see [`Dataset::stack`]).
    ///
    /// Deterministic in `(seed, epoch)`: indices are shuffled, grouped by stackability keeping the
    /// shuffled order, cut into batches (each group's last batch may be short; nothing is
    /// dropped, so small groups still train), and the batch order is shuffled again so kinds and
    /// shapes interleave.
    ///
    /// # Panics
    /// If `batch_size` is 0.
    pub fn batches(&self, batch_size: usize, seed: u64, epoch: u64) -> Vec<Vec<usize>> {
        assert!(batch_size > 0, "batch size must be positive");
        // SplitMix64 inside `seed_from_u64` decorrelates neighbouring (seed, epoch) values.
        let mut rng = Rng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut order: Vec<usize> = (0..self.samples.len()).collect();
        shuffle(&mut order, &mut rng);
        let mut groups: Vec<(BatchKey, Vec<usize>)> = Vec::new();
        let mut group_of: HashMap<BatchKey, usize> = HashMap::new();
        for i in order {
            let key = self.samples[i].batch_key();
            let g = *group_of.entry(key).or_insert_with(|| {
                groups.push((key, Vec::new()));
                groups.len() - 1
            });
            groups[g].1.push(i);
        }
        let mut batches: Vec<Vec<usize>> = groups
            .iter()
            .flat_map(|(_, members)| members.chunks(batch_size).map(<[usize]>::to_vec))
            .collect();
        shuffle(&mut batches, &mut rng);
        batches
    }

    /// Stacks the samples `indices` into contiguous `[B, ...]` arrays for one forward.
    ///
    /// Errors if `indices` is empty, out of range, or mixes samples that [`Dataset::batches`]
    /// would not put together.
    pub fn stack(&self, indices: &[usize]) -> Result<Batch> {
        let &first = indices
            .first()
            .ok_or_else(|| Error::InvalidInput("cannot stack an empty batch".into()))?;
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.samples.len()) {
            return Err(Error::InvalidInput(format!(
                "sample index {bad} out of range for a dataset of {}",
                self.samples.len()
            )));
        }
        let key = self.samples[first].batch_key();
        if let Some(&other) = indices
            .iter()
            .find(|&&i| self.samples[i].batch_key() != key)
        {
            return Err(Error::InvalidInput(format!(
                "samples {} and {} cannot share a batch (kind, latent shape, text length or \
                 image tokens differ)",
                self.paths[first].display(),
                self.paths[other].display()
            )));
        }
        let b = indices.len();
        let sample_numel: usize = key.shape.iter().product();
        let first_cond = self.samples[first].cond();
        let mut text = Vec::with_capacity(b * first_cond.text.data.len());
        let mut i2v = first_cond.i2v.as_ref().map(|c| StackedI2v {
            image: Vec::with_capacity(b * c.image.data.len()),
            image_len: c.image.len,
            image_dim: c.image.dim,
            y: Vec::with_capacity(b * c.y.len()),
            y_channels: c.y_channels,
        });
        let mut latents = match key.kind {
            SampleKind::Clip => BatchLatents::Clips {
                latents: Vec::with_capacity(b * sample_numel),
                labels: Vec::with_capacity(b),
            },
            SampleKind::Pair => BatchLatents::Pairs {
                win: Vec::with_capacity(b * sample_numel),
                lose: Vec::with_capacity(b * sample_numel),
            },
        };
        for &i in indices {
            let sample = &self.samples[i];
            match (sample, &mut latents) {
                (Sample::Clip { latent, label, .. }, BatchLatents::Clips { latents, labels }) => {
                    latents.extend_from_slice(latent);
                    labels.push(*label);
                }
                (Sample::Pair { win, lose, .. }, BatchLatents::Pairs { win: w, lose: l }) => {
                    w.extend_from_slice(win);
                    l.extend_from_slice(lose);
                }
                _ => unreachable!("the batch key fixes the kind"),
            }
            let cond = sample.cond();
            text.extend_from_slice(&cond.text.data);
            if let (Some(dst), Some(src)) = (i2v.as_mut(), cond.i2v.as_ref()) {
                dst.image.extend_from_slice(&src.image.data);
                dst.y.extend_from_slice(&src.y);
            }
        }
        Ok(Batch {
            indices: indices.to_vec(),
            shape: key.shape,
            latents,
            text,
            text_len: first_cond.text.len,
            text_dim: first_cond.text.dim,
            i2v,
        })
    }
}

/// The latents of a stacked batch, each `[B, C, F, H, W]`.
#[derive(Clone, Debug, PartialEq)]
pub enum BatchLatents {
    Clips { latents: Vec<f32>, labels: Vec<f32> },
    Pairs { win: Vec<f32>, lose: Vec<f32> },
}

/// Stacked I2V conditioning: `image` `[B, image_len, image_dim]`, `y` `[B, y_channels, F, H, W]`.
#[derive(Clone, Debug, PartialEq)]
pub struct StackedI2v {
    pub image: Vec<f32>,
    pub image_len: usize,
    pub image_dim: usize,
    pub y: Vec<f32>,
    pub y_channels: usize,
}

/// Samples stacked along a leading batch axis (see [`Dataset::stack`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// The dataset indices, in stacking order.
    pub indices: Vec<usize>,
    /// Per-sample latent shape `[C, F, H, W]`.
    pub shape: [usize; 4],
    pub latents: BatchLatents,
    /// `[B, text_len, text_dim]`.
    pub text: Vec<f32>,
    pub text_len: usize,
    pub text_dim: usize,
    pub i2v: Option<StackedI2v>,
}

impl Batch {
    pub fn size(&self) -> usize {
        self.indices.len()
    }

    pub fn kind(&self) -> SampleKind {
        match self.latents {
            BatchLatents::Clips { .. } => SampleKind::Clip,
            BatchLatents::Pairs { .. } => SampleKind::Pair,
        }
    }
}

/// Writes a labelled clip file (atomically), after the same validation [`Dataset::open`] applies.
/// `latent` is `[C, F, H, W]` = `shape`; tensors are stored as `dtype`, the label as f32.
pub fn write_clip(
    path: &Path,
    shape: [usize; 4],
    latent: &[f32],
    label: f32,
    cond: &Conditioning,
    dtype: DType,
) -> Result<()> {
    let mut tensors = BTreeMap::new();
    tensors.insert("latent", tensor(path, "latent", &shape, latent, dtype)?);
    tensors.insert("label", tensor(path, "label", &[1], &[label], DType::F32)?);
    write_sample(path, tensors, cond, dtype)
}

/// Writes a preference-pair file (atomically), after the same validation [`Dataset::open`]
/// applies. `win` and `lose` are both `[C, F, H, W]` = `shape`.
pub fn write_pair(
    path: &Path,
    shape: [usize; 4],
    win: &[f32],
    lose: &[f32],
    cond: &Conditioning,
    dtype: DType,
) -> Result<()> {
    let mut tensors = BTreeMap::new();
    tensors.insert("win", tensor(path, "win", &shape, win, dtype)?);
    tensors.insert("lose", tensor(path, "lose", &shape, lose, dtype)?);
    write_sample(path, tensors, cond, dtype)
}

fn write_sample(
    path: &Path,
    mut tensors: BTreeMap<&'static str, HostTensor>,
    cond: &Conditioning,
    dtype: DType,
) -> Result<()> {
    let text = &cond.text;
    tensors.insert(
        "text",
        tensor(path, "text", &[text.len, text.dim], &text.data, dtype)?,
    );
    if let Some(c) = &cond.i2v {
        let image = &c.image;
        let [_, f, h, w] = tensors
            .get("latent")
            .or_else(|| tensors.get("win"))
            .map(|t| [t.shape[0], t.shape[1], t.shape[2], t.shape[3]])
            .expect("a sample has `latent` or `win`");
        tensors.insert(
            "image",
            tensor(path, "image", &[image.len, image.dim], &image.data, dtype)?,
        );
        tensors.insert(
            "y",
            tensor(path, "y", &[c.y_channels, f, h, w], &c.y, dtype)?,
        );
    }
    // Validate what a reader would see (after the dtype round trip), so a writer can never
    // produce a file that `Dataset::open` rejects.
    let as_read: BTreeMap<String, HostTensor> = tensors
        .iter()
        .map(|(k, t)| (k.to_string(), t.clone()))
        .collect();
    parse_sample(&as_read).map_err(|msg| file_error(path, msg))?;
    let metadata = HashMap::from([("format".to_string(), FORMAT_TAG.to_string())]);
    write_safetensors(path, tensors.iter().map(|(k, t)| (*k, t)), Some(&metadata))
}

fn tensor(
    path: &Path,
    name: &str,
    shape: &[usize],
    data: &[f32],
    dtype: DType,
) -> Result<HostTensor> {
    HostTensor::new(shape.to_vec(), Storage::from_f32(data, dtype))
        .map_err(|e| file_error(path, format!("tensor `{name}`: {e}")))
}

fn file_error(path: &Path, msg: String) -> Error {
    Error::InvalidInput(format!("dataset file {}: {msg}", path.display()))
}

const CLIP_KEYS: [&str; 5] = ["latent", "text", "label", "image", "y"];
const PAIR_KEYS: [&str; 5] = ["win", "lose", "text", "image", "y"];

/// Validates one file's tensors and converts them to a [`Sample`]. Errors are messages without
/// the file name, which the caller adds.
fn parse_sample(tensors: &BTreeMap<String, HostTensor>) -> std::result::Result<Sample, String> {
    let is_clip = tensors.contains_key("latent");
    let is_pair = tensors.contains_key("win") || tensors.contains_key("lose");
    if is_clip && is_pair {
        return Err("holds both `latent` (a clip) and `win`/`lose` (a pair)".into());
    }
    if !is_clip && !is_pair {
        return Err(
            "missing tensor `latent` (a labelled clip) or `win` + `lose` \
                    (a preference pair)"
                .into(),
        );
    }
    let allowed: &[&str] = if is_clip { &CLIP_KEYS } else { &PAIR_KEYS };
    if let Some(extra) = tensors.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(format!(
            "unexpected tensor `{extra}` (a {} holds only {})",
            if is_clip { "clip" } else { "pair" },
            allowed
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let get = |name: &str| -> std::result::Result<&HostTensor, String> {
        tensors.get(name).ok_or_else(|| match name {
            "label" => "missing tensor `label` (a clip needs a 0/1 label)".to_string(),
            "text" => "missing tensor `text` (text encoder states [L, text_dim])".to_string(),
            _ => format!("missing tensor `{name}`"),
        })
    };

    let (first_name, first) = if is_clip {
        ("latent", get("latent")?)
    } else {
        ("win", get("win")?)
    };
    let shape = latent_shape(first_name, first)?;
    let text = token_states("text", get("text")?)?;
    let i2v = match (tensors.get("image"), tensors.get("y")) {
        (None, None) => None,
        (Some(_), None) => return Err("`image` given without `y` (I2V needs both)".into()),
        (None, Some(_)) => return Err("`y` given without `image` (I2V needs both)".into()),
        (Some(image), Some(y)) => {
            let image = token_states("image", image)?;
            if y.shape.len() != 4 || y.shape[1..] != shape[1..] || y.shape[0] == 0 {
                return Err(format!(
                    "tensor `y` has shape {:?}, expected [Cy, {}, {}, {}] (the latent's F, H, W)",
                    y.shape, shape[1], shape[2], shape[3]
                ));
            }
            Some(I2vConditioning {
                image,
                y_channels: y.shape[0],
                y: finite_f32("y", y)?,
            })
        }
    };
    let cond = Conditioning { text, i2v };

    if is_clip {
        let label_t = get("label")?;
        if label_t.shape.len() > 1 || label_t.numel() != 1 {
            return Err(format!(
                "tensor `label` has shape {:?}, expected [1]",
                label_t.shape
            ));
        }
        let label = label_t.to_f32()[0];
        if label != 0.0 && label != 1.0 {
            return Err(format!("tensor `label` must be 0 or 1, got {label}"));
        }
        Ok(Sample::Clip {
            latent: finite_f32("latent", first)?,
            shape,
            label,
            cond,
        })
    } else {
        let lose = get("lose")?;
        if lose.shape != first.shape {
            return Err(format!(
                "tensors `win` {:?} and `lose` {:?} differ in shape (a pair compares two clips \
                 of one shape)",
                first.shape, lose.shape
            ));
        }
        Ok(Sample::Pair {
            win: finite_f32("win", first)?,
            lose: finite_f32("lose", lose)?,
            shape,
            cond,
        })
    }
}

fn latent_shape(name: &str, t: &HostTensor) -> std::result::Result<[usize; 4], String> {
    let s = &t.shape;
    if s.len() != 4 {
        return Err(format!(
            "tensor `{name}` must have rank 4 [C, F, H, W], got shape {s:?}"
        ));
    }
    if s.contains(&0) {
        return Err(format!("tensor `{name}` has an empty dimension: {s:?}"));
    }
    // The DiT patchifies 1 x 2 x 2, so an odd height or width cannot be tokenised.
    if s[2] % 2 != 0 || s[3] % 2 != 0 {
        return Err(format!(
            "tensor `{name}` has odd height or width {s:?} (H and W must be even: the patch \
             is 1 x 2 x 2)"
        ));
    }
    Ok([s[0], s[1], s[2], s[3]])
}

fn token_states(name: &str, t: &HostTensor) -> std::result::Result<TokenStates, String> {
    if t.shape.len() != 2 || t.shape.contains(&0) {
        return Err(format!(
            "tensor `{name}` must have rank 2 [tokens, features] with non-zero sizes, got \
             shape {:?}",
            t.shape
        ));
    }
    Ok(TokenStates {
        data: finite_f32(name, t)?,
        len: t.shape[0],
        dim: t.shape[1],
    })
}

/// Widens to f32 and rejects NaN and infinity, which would poison a whole batch's loss.
fn finite_f32(name: &str, t: &HostTensor) -> std::result::Result<Vec<f32>, String> {
    let data = t.to_f32();
    if let Some((i, x)) = data.iter().enumerate().find(|(_, x)| !x.is_finite()) {
        return Err(format!(
            "tensor `{name}` holds a non-finite value ({x}) at element {i}"
        ));
    }
    Ok(data)
}

/// Model-level sizes must agree across files: one model consumes the whole dataset.
fn check_consistent(
    first: &Sample,
    first_path: &Path,
    sample: &Sample,
) -> std::result::Result<(), String> {
    let differ = |what: &str, got: String, want: String| {
        Err(format!(
            "{what} is {got} but {want} in the first file {}",
            first_path.display()
        ))
    };
    if sample.shape()[0] != first.shape()[0] {
        return differ(
            "latent channels C",
            sample.shape()[0].to_string(),
            first.shape()[0].to_string(),
        );
    }
    let (a, b) = (sample.cond(), first.cond());
    if a.text.dim != b.text.dim {
        return differ("text_dim", a.text.dim.to_string(), b.text.dim.to_string());
    }
    match (&a.i2v, &b.i2v) {
        (None, None) => Ok(()),
        (Some(x), Some(y)) if x.image.dim != y.image.dim => differ(
            "image_dim",
            x.image.dim.to_string(),
            y.image.dim.to_string(),
        ),
        (Some(x), Some(y)) if x.y_channels != y.y_channels => differ(
            "`y` channels",
            x.y_channels.to_string(),
            y.y_channels.to_string(),
        ),
        (Some(_), Some(_)) => Ok(()),
        (x, y) => differ(
            "I2V conditioning (`image` + `y`)",
            if x.is_some() { "present" } else { "absent" }.into(),
            if y.is_some() { "present" } else { "absent" }.into(),
        ),
    }
}

/// Fisher-Yates with the crate's seeded generator (so shuffles never change under a dependency
/// update).
pub(crate) fn shuffle<T>(items: &mut [T], rng: &mut Rng) {
    for i in (1..items.len()).rev() {
        items.swap(i, below(rng, i + 1));
    }
}

/// A uniform index in `0..n` (multiply-high; the bias, at most n / 2^64, is irrelevant here).
pub(crate) fn below(rng: &mut Rng, n: usize) -> usize {
    ((rng.next_u64() as u128 * n as u128) >> 64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(len: usize) -> Conditioning {
        Conditioning {
            text: TokenStates {
                data: vec![0.5; len * 3],
                len,
                dim: 3,
            },
            i2v: None,
        }
    }

    fn clip_map(label: f32) -> BTreeMap<String, HostTensor> {
        let mut m = BTreeMap::new();
        let latent = HostTensor::from_f32(vec![2, 1, 2, 2], vec![0.0; 8]).unwrap();
        m.insert("latent".to_string(), latent);
        m.insert(
            "text".to_string(),
            HostTensor::from_f32(vec![1, 3], vec![0.0; 3]).unwrap(),
        );
        m.insert(
            "label".to_string(),
            HostTensor::from_f32(vec![1], vec![label]).unwrap(),
        );
        m
    }

    #[test]
    fn parses_a_clip_and_accepts_a_scalar_label() {
        let s = parse_sample(&clip_map(1.0)).unwrap();
        assert_eq!(s.kind(), SampleKind::Clip);
        assert_eq!(s.shape(), [2, 1, 2, 2]);
        let mut m = clip_map(0.0);
        m.insert(
            "label".into(),
            HostTensor::from_f32(vec![], vec![0.0]).unwrap(),
        );
        assert!(matches!(
            parse_sample(&m).unwrap(),
            Sample::Clip { label, .. } if label == 0.0
        ));
    }

    #[test]
    fn rejects_unknown_keys_and_half_i2v() {
        let mut m = clip_map(1.0);
        m.insert(
            "imgae".into(),
            HostTensor::from_f32(vec![1], vec![0.0]).unwrap(),
        );
        let err = parse_sample(&m).unwrap_err();
        assert!(err.contains("unexpected tensor `imgae`"), "{err}");
        let mut m = clip_map(1.0);
        m.insert(
            "image".into(),
            HostTensor::from_f32(vec![1, 2], vec![0.0; 2]).unwrap(),
        );
        let err = parse_sample(&m).unwrap_err();
        assert!(err.contains("without `y`"), "{err}");
    }

    #[test]
    fn rejects_y_of_another_shape() {
        let mut m = clip_map(1.0);
        m.insert(
            "image".into(),
            HostTensor::from_f32(vec![1, 2], vec![0.0; 2]).unwrap(),
        );
        m.insert(
            "y".into(),
            HostTensor::from_f32(vec![3, 1, 2, 4], vec![0.0; 24]).unwrap(),
        );
        let err = parse_sample(&m).unwrap_err();
        assert!(err.contains("tensor `y` has shape"), "{err}");
    }

    #[test]
    fn stack_rejects_mixed_batches() {
        let d = Dataset {
            samples: vec![
                Sample::Clip {
                    latent: vec![0.0; 8],
                    shape: [2, 1, 2, 2],
                    label: 1.0,
                    cond: text(1),
                },
                Sample::Clip {
                    latent: vec![1.0; 8],
                    shape: [2, 1, 2, 2],
                    label: 0.0,
                    cond: text(2),
                },
            ],
            paths: vec!["a".into(), "b".into()],
        };
        assert!(d.stack(&[0, 1]).is_err());
        assert!(d.stack(&[]).is_err());
        assert!(d.stack(&[2]).is_err());
        let b = d.stack(&[1]).unwrap();
        assert_eq!(b.text_len, 2);
        assert_eq!(
            b.latents,
            BatchLatents::Clips {
                latents: vec![1.0; 8],
                labels: vec![0.0]
            }
        );
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut rng = Rng::seed_from_u64(3);
        let mut v: Vec<usize> = (0..50).collect();
        shuffle(&mut v, &mut rng);
        assert_ne!(v, (0..50).collect::<Vec<_>>());
        v.sort_unstable();
        assert_eq!(v, (0..50).collect::<Vec<_>>());
    }
}
