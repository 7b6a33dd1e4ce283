//! One safetensors layer: a checkpoint opened from a file and the same file's bytes handed over
//! from memory go through the same index, layout detection and configuration inference, so every
//! bad input gives the same error kind and the same message from both (the message names the file
//! where the other names `<memory>`), and every good input the same checkpoint.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::Path;

use prfl::model::checkpoint::{save_checkpoint, Checkpoint, ConfigSource, WEIGHTS_NAME};
use prfl::model::names::{canonical_params, Layout, REPACK_PREFIX};
use prfl::model::{ModelType, WanConfig};
use prfl::safetensors::{write_safetensors, Safetensors, MEMORY_SOURCE};
use prfl::tensor::{DType, HostTensor, Storage};
use prfl::testutil::TempDir;
use prfl::{Error, Result};
use serde_json::Value;

/// Small, with 128-wide heads so that a bare file's configuration can be inferred too.
fn cfg(model_type: ModelType) -> WanConfig {
    let i2v = model_type == ModelType::I2V;
    WanConfig {
        model_type,
        in_dim: if i2v { 36 } else { 16 },
        out_dim: 16,
        dim: 256,
        ffn_dim: 64,
        freq_dim: 16,
        text_dim: 32,
        image_dim: i2v.then_some(48),
        num_heads: 2,
        num_layers: 1,
        eps: 1e-6,
        text_len: 512,
    }
}

fn weights(cfg: &WanConfig, dtype: DType) -> BTreeMap<String, HostTensor> {
    canonical_params(cfg)
        .into_iter()
        .enumerate()
        .map(|(k, p)| {
            let data: Vec<f32> = (0..p.numel())
                .map(|i| ((i * 7 + k * 13) % 97) as f32 / 32.0 - 1.5)
                .collect();
            (
                p.name,
                HostTensor::new(p.shape, Storage::from_f32(&data, dtype)).unwrap(),
            )
        })
        .collect()
}

/// The bytes of one safetensors file holding `tensors` under the names `rename` gives them.
fn file_bytes(tensors: &BTreeMap<String, HostTensor>, rename: impl Fn(&str) -> String) -> Vec<u8> {
    let dir = TempDir::new("bytes");
    let path = dir.path().join("x.safetensors");
    let named: Vec<(String, &HostTensor)> = tensors.iter().map(|(n, t)| (rename(n), t)).collect();
    write_safetensors(&path, named.iter().map(|(n, t)| (n.as_str(), *t)), None).unwrap();
    fs::read(path).unwrap()
}

/// Splits a file into its header (as JSON) and its data section.
fn split(bytes: &[u8]) -> (serde_json::Map<String, Value>, Vec<u8>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (header.as_object().unwrap().clone(), bytes[8 + n..].to_vec())
}

/// Joins a header and a data section into a file (the header padded to 8 bytes).
fn join(header: &serde_json::Map<String, Value>, data: &[u8]) -> Vec<u8> {
    let mut h = serde_json::to_vec(header).unwrap();
    h.resize(h.len().div_ceil(8) * 8, b' ');
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out
}

/// The tensor whose data comes last in a header.
fn last_tensor(header: &serde_json::Map<String, Value>) -> String {
    header
        .iter()
        .filter(|(k, _)| k.as_str() != "__metadata__")
        .max_by_key(|(_, v)| v["data_offsets"][1].as_u64().unwrap())
        .map(|(k, _)| k.clone())
        .unwrap()
}

/// One bad input: a file's bytes, the error kind both paths must give, and a word its message
/// must hold.
struct Case {
    what: &'static str,
    bytes: Vec<u8>,
    kind: fn(&Error) -> bool,
    word: &'static str,
    /// Whether the expected kind needs the configuration (without one, a parameter of a deeper
    /// model makes the inferred model deeper, and the error is the missing rest of its block).
    needs_config: bool,
}

fn bad_inputs(cfg: &WanConfig) -> Vec<Case> {
    let good = weights(cfg, DType::F32);
    let plain = |t: &BTreeMap<String, HostTensor>| file_bytes(t, str::to_string);
    let with = |name: &str, shape: Vec<usize>| {
        let mut w = good.clone();
        let n = shape.iter().product();
        w.insert(
            name.into(),
            HostTensor::from_f32(shape, vec![0.5; n]).unwrap(),
        );
        w
    };
    let bytes = plain(&good);
    let (header, data) = split(&bytes);

    // The header claims more data for the last tensor than the file holds.
    let mut past_end = header.clone();
    let last = last_tensor(&header);
    let t = past_end.get_mut(&last).unwrap();
    let shape: Vec<u64> = serde_json::from_value(t["shape"].clone()).unwrap();
    let end = t["data_offsets"][1].as_u64().unwrap();
    let start = t["data_offsets"][0].as_u64().unwrap();
    let mut longer = shape.clone();
    longer[0] *= 2;
    t["shape"] = serde_json::json!(longer);
    t["data_offsets"][1] = serde_json::json!(start + 2 * (end - start));

    // A dtype the format does not know, and one it knows but the engine cannot hold.
    let mut unknown_dtype = header.clone();
    unknown_dtype.get_mut(&last).unwrap()["dtype"] = serde_json::json!("Q32");
    let mut i32_dtype = header.clone();
    i32_dtype.get_mut(&last).unwrap()["dtype"] = serde_json::json!("I32");

    let mut garbage = bytes.clone();
    garbage[8..40].copy_from_slice(&[b'#'; 32]);
    let mut missing = good.clone();
    missing.remove("blocks.0.self_attn.q.weight");
    let mut twice: Vec<(String, HostTensor)> = good.clone().into_iter().collect();
    twice.push((
        format!("{REPACK_PREFIX}head.head.bias"),
        good["head.head.bias"].clone(),
    ));
    let twice: BTreeMap<String, HostTensor> = twice.into_iter().collect();
    let mixed = {
        let mut w = good.clone();
        let t = w.remove("head.head.weight").unwrap();
        w.insert("proj_out.weight".into(), t);
        w
    };

    let is_checkpoint = |e: &Error| matches!(e, Error::Checkpoint { .. });
    vec![
        Case {
            what: "unknown tensor name",
            bytes: plain(&with("blocks.0.mystery.weight", vec![4])),
            kind: |e| matches!(e, Error::UnexpectedTensor(_)),
            word: "blocks.0.mystery.weight",
            needs_config: false,
        },
        Case {
            what: "a parameter of another configuration",
            bytes: plain(&with("blocks.1.modulation", vec![1, 6, 256])),
            kind: |e| matches!(e, Error::UnexpectedTensor(_)),
            word: "blocks.1.modulation",
            needs_config: true,
        },
        Case {
            what: "wrong shape",
            bytes: plain(&with("blocks.0.ffn.2.weight", vec![256, 40])),
            kind: |e| matches!(e, Error::ShapeMismatch { .. }),
            word: "blocks.0.ffn.2.weight",
            needs_config: false,
        },
        Case {
            what: "missing tensor",
            bytes: plain(&missing),
            kind: |e| matches!(e, Error::MissingTensor(_)),
            word: "blocks.0.self_attn.q.weight",
            needs_config: false,
        },
        Case {
            what: "truncated file",
            bytes: bytes[..bytes.len() - 10].to_vec(),
            kind: is_checkpoint,
            word: "truncated",
            needs_config: false,
        },
        Case {
            what: "shorter than a header",
            bytes: bytes[..5].to_vec(),
            kind: is_checkpoint,
            word: "truncated",
            needs_config: false,
        },
        Case {
            what: "header cut off",
            bytes: bytes[..40].to_vec(),
            kind: is_checkpoint,
            word: "truncated",
            needs_config: false,
        },
        Case {
            what: "corrupt header",
            bytes: garbage,
            kind: is_checkpoint,
            word: "corrupt",
            needs_config: false,
        },
        Case {
            what: "data offsets past the end",
            bytes: join(&past_end, &data),
            kind: is_checkpoint,
            word: "past the end",
            needs_config: false,
        },
        Case {
            what: "bytes after the data",
            bytes: [bytes.as_slice(), &[0; 8]].concat(),
            kind: is_checkpoint,
            word: "8 bytes follow",
            needs_config: false,
        },
        Case {
            what: "unknown dtype",
            bytes: join(&unknown_dtype, &data),
            kind: is_checkpoint,
            word: "Q32",
            needs_config: false,
        },
        Case {
            what: "unsupported dtype",
            bytes: join(&i32_dtype, &data),
            kind: |e| matches!(e, Error::UnsupportedDtype(_)),
            word: "I32",
            needs_config: false,
        },
        Case {
            what: "stored twice",
            bytes: plain(&twice),
            kind: is_checkpoint,
            word: "stored twice",
            needs_config: false,
        },
        Case {
            what: "mixed layouts",
            bytes: plain(&mixed),
            kind: is_checkpoint,
            word: "mixes",
            needs_config: false,
        },
    ]
}

/// Opening plus the completeness check, the way a host loads a generator.
fn open_and_verify(r: Result<Checkpoint>) -> Result<Checkpoint> {
    let ck = r?;
    ck.verify()?;
    Ok(ck)
}

/// The error's kind and its message with the source named `<memory>` (the file's path is the
/// one place where the two paths may differ).
fn normalised(e: &Error, file: &Path) -> (std::mem::Discriminant<Error>, String) {
    let text = e
        .to_string()
        .replace(&file.display().to_string(), MEMORY_SOURCE);
    (std::mem::discriminant(e), text)
}

#[test]
fn bad_inputs_give_the_same_error_from_a_file_and_from_bytes() {
    for with_config in [true, false] {
        let cfg = cfg(ModelType::T2V);
        let config_text = cfg.to_original_json().to_string();
        for case in bad_inputs(&cfg) {
            let dir = TempDir::new("bad");
            let file = dir.path().join("weights.safetensors");
            fs::write(&file, &case.bytes).unwrap();
            if with_config {
                fs::write(dir.path().join("config.json"), &config_text).unwrap();
            }
            let what = format!("{} (config.json: {with_config})", case.what);
            let from_file = open_and_verify(Checkpoint::open(&file)).unwrap_err();
            let json = with_config.then_some(config_text.as_str());
            let from_bytes =
                open_and_verify(Checkpoint::from_bytes(case.bytes.clone(), json)).unwrap_err();
            eprintln!("{what}: {from_bytes}");
            if with_config || !case.needs_config {
                assert!((case.kind)(&from_file), "{what}: {from_file}");
                assert!(
                    from_file.to_string().contains(case.word),
                    "{what}: {from_file}"
                );
            }
            assert_eq!(
                normalised(&from_file, &file),
                normalised(&from_bytes, &file),
                "{what}"
            );
            if let Error::Checkpoint { path, .. } = &from_bytes {
                assert_eq!(path, Path::new(MEMORY_SOURCE), "{what}");
            }
            // The plain reader gives the header errors the same words.
            if let Err(e) = Safetensors::map(&file) {
                assert_eq!(e.to_string(), from_file.to_string(), "{what}");
            }
        }
    }
}

#[test]
fn good_inputs_give_the_same_checkpoint_from_a_file_and_from_bytes() {
    for model_type in [ModelType::T2V, ModelType::I2V] {
        let cfg = cfg(model_type);
        for layout in [Layout::Original, Layout::Diffusers] {
            for dtype in [DType::BF16, DType::F16] {
                let w = weights(&cfg, dtype);
                let dir = TempDir::new("good");
                save_checkpoint(&w, &cfg, layout, dir.path(), None).unwrap();
                let file = dir.path().join(WEIGHTS_NAME);
                let bytes = fs::read(&file).unwrap();
                let config_text = fs::read_to_string(dir.path().join("config.json")).unwrap();
                let what = format!("{model_type:?} {layout} {dtype:?}");

                let disk = Checkpoint::open(&file).unwrap();
                let given = Checkpoint::from_bytes(bytes.clone(), Some(&config_text)).unwrap();
                let inferred = Checkpoint::from_bytes(bytes, None).unwrap();
                assert_eq!(given.config_source(), &ConfigSource::Given, "{what}");
                assert_eq!(inferred.config_source(), &ConfigSource::Inferred, "{what}");
                assert_eq!(given.path(), Path::new(MEMORY_SOURCE));
                assert!(given.files().is_empty());
                for mem in [&given, &inferred] {
                    assert_eq!(mem.config(), disk.config(), "{what}");
                    assert_eq!(mem.config().is_i2v(), model_type == ModelType::I2V);
                    assert_eq!(mem.layout(), layout, "{what}");
                    assert_eq!(mem.dtypes(), disk.dtypes(), "{what}");
                    assert_eq!(
                        mem.summary().lines().count(),
                        disk.summary().lines().count()
                    );
                    mem.verify().unwrap();
                    assert_eq!(mem.load_all().unwrap(), w, "{what}");
                    assert_eq!(mem.bytes_read(), disk.total_bytes(), "{what}");
                }
                // Tensors are read from the owned bytes on demand, like pages of a mapped file.
                let some = given.load(|n| n.starts_with("head.")).unwrap();
                assert_eq!(some.len(), 3, "{what}");
            }
        }
    }
}

#[test]
fn a_config_text_is_named_config_json_in_errors() {
    let cfg = cfg(ModelType::T2V);
    let bytes = file_bytes(&weights(&cfg, DType::F32), str::to_string);
    let e = Checkpoint::from_bytes(bytes.clone(), Some("{")).unwrap_err();
    assert!(
        matches!(&e, Error::Config(m) if m.starts_with("config_json: not valid JSON")),
        "{e}"
    );
    let mut wrong = cfg.to_original_json();
    wrong["num_heads"] = serde_json::json!(7);
    let e = Checkpoint::from_bytes(bytes.clone(), Some(&wrong.to_string())).unwrap_err();
    assert!(
        matches!(&e, Error::Config(m) if m.starts_with("config_json: ")),
        "{e}"
    );
    // A narrower config is fine to parse but contradicts the shapes.
    let narrow = WanConfig {
        dim: 64,
        ..cfg.clone()
    };
    let e =
        Checkpoint::from_bytes(bytes, Some(&narrow.to_original_json().to_string())).unwrap_err();
    assert!(
        matches!(&e, Error::ShapeMismatch { name, .. } if name == "patch_embedding.weight"),
        "{e}"
    );
}

#[test]
fn metadata_and_entries_are_the_same_over_both_sources() {
    let dir = TempDir::new("meta");
    let path = dir.path().join("m.safetensors");
    let t = HostTensor::from_f32(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    write_safetensors(&path, [("t", &t)], Some(&meta)).unwrap();
    let mapped = Safetensors::map(&path).unwrap();
    let owned = Safetensors::from_bytes(fs::read(&path).unwrap()).unwrap();
    assert_eq!(mapped.metadata(), owned.metadata());
    assert_eq!(mapped.metadata()["format"], "pt");
    assert_eq!(mapped.tensors(), owned.tensors());
    assert_eq!(mapped.read("t").unwrap(), t);
    assert_eq!(owned.read_all().unwrap()["t"], t);
}
