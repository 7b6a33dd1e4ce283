//! The reference implementation's preprocessed datasets, opened as a prfl
//! [`Dataset`](crate::reward::dataset::Dataset).
//!
//! # Format (HY-Video-PRFL)
//!
//! A `.list` file holds one meta-JSON path per line (blank lines ignored). Each JSON names NumPy
//! `.npy` arrays and carries the annotations:
//!
//! | key | array | prfl |
//! |---|---|---|
//! | `video_vae_latent_path`, else `vae_latent_path`, else `latents_path` | `[1, C, F, H, W]` | the clean latent |
//! | `textshort_path` + `textlong_path` (long with probability 0.7, as the reference draws), else `textshort_path`, else `text_en_path` | `[1, L, text_dim]` | the text states |
//! | `imgclip_path` (I2V) | `[N, 257, image_dim]`, flattened to `[N*257, image_dim]` | `image` |
//! | `latents_condition_path`, else `f1_black_path` (I2V) | `[1, Cy, F, H, W]`; with `Cy = 16` the reference's 4-channel first-frame mask is prepended | `y` |
//! | `physics_quality`, `human_quality` | `"good"` / `"poor"` / 1 / 0 / null / absent (= 0) | label 1 when both are good (the reference's `motion_quality` task) |
//!
//! Bradley-Terry pairs come from a win list and a lose list (the reference's `meta_file_list` and
//! `meta_file_lose_list`), given as `WIN.list,LOSE.list`: each win clip is paired with a lose
//! clip drawn uniformly (seeded; the reference draws one per access) and the pair takes the win
//! clip's conditioning. A `.npy` array may also be 4-D (`[C, F, H, W]`, `[L, text_dim]` 2-D) without
//! the leading batch axis; dtypes f32, f16 and f64 are read (as f32), C order only.
//!
//! Relative paths (in the list and in the JSON files) are tried against the directory of the file
//! that names them first and the working directory second (the reference resolves them against
//! its working directory). The 70/30 text choice is drawn once per clip when the dataset is opened
//! (prfl holds samples in memory), from the seed.
//!
//! Every error names the file and the key: a missing file, a wrong shape, a non-finite value.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::reward::dataset::{below, Conditioning, Dataset, I2vConditioning, Sample, TokenStates};
use crate::schedule::rng::Rng;
use crate::{Error, Result};

/// Channels of the I2V first-frame mask the reference prepends to a 16-channel condition latent.
const MASK_CHANNELS: usize = 4;
/// The probability of the long caption when both are present.
const LONG_CAPTION_PROBABILITY: f32 = 0.7;

/// Whether `path` names reference data (`X.list` or `WIN.list,LOSE.list`) rather than a prfl
/// dataset directory.
pub fn is_reference_data(path: &Path) -> bool {
    let s = path.to_string_lossy();
    s.ends_with(".list")
}

/// Opens `data` as the CLI's `data` setting: reference data when [`is_reference_data`], else a
/// prfl dataset directory ([`Dataset::open`]). `i2v` says whether the model needs the image
/// conditioning (the reference's JSON files name the image arrays for T2V data too).
pub fn open_data(data: &Path, i2v: bool, seed: u64) -> Result<Dataset> {
    if !is_reference_data(data) {
        return Dataset::open(data);
    }
    let s = data.to_string_lossy();
    match s.split_once(".list,") {
        Some((win, lose)) => {
            let win = PathBuf::from(format!("{win}.list"));
            let lose = resolve(Path::new(lose), win.parent());
            open_pairs(&win, &lose, i2v, seed)
        }
        None => open_clips(data, i2v, seed),
    }
}

/// One clip of the reference's format, read.
struct Clip {
    json: PathBuf,
    latent: Vec<f32>,
    shape: [usize; 4],
    label: f32,
    cond: Conditioning,
}

/// Labelled clips from a `.list` file.
pub fn open_clips(list: &Path, i2v: bool, seed: u64) -> Result<Dataset> {
    let mut rng = Rng::seed_from_u64(seed);
    let clips = read_list(list)?
        .iter()
        .map(|j| read_clip(j, i2v, &mut rng))
        .collect::<Result<Vec<_>>>()?;
    let paths = clips.iter().map(|c| c.json.clone()).collect();
    let samples = clips
        .into_iter()
        .map(|c| Sample::Clip {
            latent: c.latent,
            shape: c.shape,
            label: c.label,
            cond: c.cond,
        })
        .collect();
    Dataset::from_samples(samples, paths)
}

/// Bradley-Terry pairs from a win list and a lose list (see the module docs).
pub fn open_pairs(win_list: &Path, lose_list: &Path, i2v: bool, seed: u64) -> Result<Dataset> {
    let mut rng = Rng::seed_from_u64(seed);
    let wins = read_list(win_list)?;
    let loses = read_list(lose_list)?;
    let mut samples = Vec::with_capacity(wins.len());
    let mut paths = Vec::with_capacity(wins.len());
    for w in &wins {
        let win = read_clip(w, i2v, &mut rng)?;
        let lose = read_clip(&loses[below(&mut rng, loses.len())], i2v, &mut rng)?;
        if lose.shape != win.shape {
            return Err(Error::InvalidInput(format!(
                "{}: latent {:?} cannot pair with {:?} of {}",
                lose.json.display(),
                lose.shape,
                win.shape,
                win.json.display()
            )));
        }
        paths.push(win.json);
        samples.push(Sample::Pair {
            win: win.latent,
            lose: lose.latent,
            shape: win.shape,
            cond: win.cond,
        });
    }
    Dataset::from_samples(samples, paths)
}

fn resolve(p: &Path, base: Option<&Path>) -> PathBuf {
    if p.is_absolute() {
        return p.to_path_buf();
    }
    match base {
        Some(b) if b.join(p).exists() => b.join(p),
        _ => p.to_path_buf(),
    }
}

fn read_list(list: &Path) -> Result<Vec<PathBuf>> {
    let text = crate::fs::read_regular_to_string(list)?;
    let out: Vec<PathBuf> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| resolve(Path::new(l), list.parent()))
        .collect();
    if out.is_empty() {
        return Err(Error::InvalidInput(format!(
            "{}: the list names no meta-JSON file",
            list.display()
        )));
    }
    Ok(out)
}

fn json_err(json: &Path, key: &str, msg: impl std::fmt::Display) -> Error {
    Error::InvalidInput(format!("{}: `{key}`: {msg}", json.display()))
}

/// The first of `keys` present in the JSON object, with its path string.
fn first_key<'a>(obj: &'a Value, keys: &[&'a str]) -> Option<(&'a str, &'a str)> {
    keys.iter()
        .find_map(|&k| obj.get(k).and_then(Value::as_str).map(|v| (k, v)))
}

fn read_clip(json: &Path, i2v: bool, rng: &mut Rng) -> Result<Clip> {
    let text = crate::fs::read_regular_to_string(json)?;
    let obj: Value = serde_json::from_str(&text)
        .map_err(|e| Error::InvalidInput(format!("{}: not JSON: {e}", json.display())))?;
    if !obj.is_object() {
        return Err(Error::InvalidInput(format!(
            "{}: not a JSON object",
            json.display()
        )));
    }
    let base = json.parent();
    let need = |keys: &[&'static str]| {
        first_key(&obj, keys).ok_or_else(|| {
            Error::InvalidInput(format!(
                "{}: none of {} is given",
                json.display(),
                keys.iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    };
    let load = |key: &str, path: &str| -> Result<(Vec<usize>, Vec<f32>)> {
        let p = resolve(Path::new(path), base);
        read_npy(&p).map_err(|msg| json_err(json, key, format!("{}: {msg}", p.display())))
    };

    let (lkey, lpath) = need(&["video_vae_latent_path", "vae_latent_path", "latents_path"])?;
    let (lshape, latent) = load(lkey, lpath)?;
    let shape = batch_one(&lshape, 4).ok_or_else(|| {
        json_err(
            json,
            lkey,
            format!("shape {lshape:?}, expected [1, C, F, H, W]"),
        )
    })?;
    let [_, _, h, w] = shape;
    if shape.contains(&0) || h % 2 != 0 || w % 2 != 0 {
        return Err(json_err(
            json,
            lkey,
            format!("latent shape {shape:?}: every size non-zero, H and W even"),
        ));
    }

    let (tkey, tpath) = match (
        first_key(&obj, &["textshort_path"]),
        first_key(&obj, &["textlong_path"]),
    ) {
        (Some(short), Some(long)) => {
            if rng.uniform_f32() < LONG_CAPTION_PROBABILITY {
                long
            } else {
                short
            }
        }
        (Some(short), None) => short,
        _ => need(&["text_en_path"])?,
    };
    let (tshape, tdata) = load(tkey, tpath)?;
    let [len, dim] = batch_one(&tshape, 2).ok_or_else(|| {
        json_err(
            json,
            tkey,
            format!("shape {tshape:?}, expected [1, L, text_dim]"),
        )
    })?;
    let text = TokenStates {
        data: tdata,
        len,
        dim,
    };

    let i2v = if i2v {
        let (ikey, ipath) = need(&["imgclip_path"])?;
        let (ishape, idata) = load(ikey, ipath)?;
        let image = match ishape.as_slice() {
            [n, s, d] => TokenStates {
                data: idata,
                len: n * s,
                dim: *d,
            },
            [s, d] => TokenStates {
                data: idata,
                len: *s,
                dim: *d,
            },
            _ => {
                return Err(json_err(
                    json,
                    ikey,
                    format!("shape {ishape:?}, expected [N, 257, image_dim]"),
                ))
            }
        };
        let (ckey, cpath) = need(&["latents_condition_path", "f1_black_path"])?;
        let (cshape, cdata) = load(ckey, cpath)?;
        let [cy, f, hh, ww] = batch_one(&cshape, 4).ok_or_else(|| {
            json_err(
                json,
                ckey,
                format!("shape {cshape:?}, expected [1, C, F, H, W]"),
            )
        })?;
        if [f, hh, ww] != shape[1..] {
            return Err(json_err(
                json,
                ckey,
                format!(
                    "condition [F, H, W] = {:?} differs from the latent's {:?}",
                    [f, hh, ww],
                    &shape[1..]
                ),
            ));
        }
        let (y, y_channels) = if cy == shape[0] {
            // The reference prepends a mask: ones on the first latent frame, zeros elsewhere.
            let plane = hh * ww;
            let mut y = vec![0.0; MASK_CHANNELS * f * plane];
            for c in 0..MASK_CHANNELS {
                y[c * f * plane..c * f * plane + plane].fill(1.0);
            }
            y.extend(cdata);
            (y, cy + MASK_CHANNELS)
        } else {
            (cdata, cy)
        };
        Some(I2vConditioning {
            image,
            y,
            y_channels,
        })
    } else {
        None
    };

    let good = |key: &str| -> Result<bool> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::String(s)) if s == "good" => Ok(true),
            Some(Value::String(s)) if s == "poor" => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(Value::Number(n)) if n.as_f64() == Some(1.0) => Ok(true),
            Some(Value::Number(n)) if n.as_f64() == Some(0.0) => Ok(false),
            Some(other) => Err(json_err(
                json,
                key,
                format!("{other}: expected \"good\", \"poor\", 1, 0 or null"),
            )),
        }
    };
    // Both are read (and checked) before they are combined.
    let (physics, human) = (good("physics_quality")?, good("human_quality")?);
    let label = if physics && human { 1.0 } else { 0.0 };
    Ok(Clip {
        json: json.to_path_buf(),
        latent,
        shape,
        label,
        cond: Conditioning { text, i2v },
    })
}

/// The shape without a leading batch axis of 1 (`[1, a, b, ..]` or `[a, b, ..]` of `rank` sizes).
fn batch_one<const N: usize>(shape: &[usize], rank: usize) -> Option<[usize; N]> {
    let s = match shape.len() {
        n if n == rank + 1 && shape[0] == 1 => &shape[1..],
        n if n == rank => shape,
        _ => return None,
    };
    s.try_into().ok()
}

/// A `.npy` array as f32 with its shape; every value finite.
fn read_npy(path: &Path) -> std::result::Result<(Vec<usize>, Vec<f32>), String> {
    let bytes = crate::fs::read_regular(path).map_err(|e| format!("cannot read: {e}"))?;
    let npy = npyz::NpyFile::new(&bytes[..]).map_err(|e| format!("not a .npy file: {e}"))?;
    if npy.order() == npyz::Order::Fortran {
        return Err("Fortran-order arrays are not supported (save with C order)".into());
    }
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let descr = npy.dtype().descr();
    let data: Vec<f32> = match descr.as_str() {
        "'<f4'" | "<f4" => npy.into_vec::<f32>().map_err(|e| e.to_string())?,
        "'<f2'" | "<f2" => npy
            .into_vec::<half::f16>()
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(half::f16::to_f32)
            .collect(),
        "'<f8'" | "<f8" => npy
            .into_vec::<f64>()
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|v| v as f32)
            .collect(),
        other => {
            return Err(format!(
                "dtype {other} (expected float32, float16 or float64)"
            ))
        }
    };
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        return Err(format!("non-finite value at element {i}"));
    }
    Ok((shape, data))
}
