//! Checkpoint reading and writing: round trips in both layouts, sharding and dtypes, shape
//! inference for bare files, every error kind, partial loading, and the committed oracle fixtures.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::Path;

use prfl::model::checkpoint::{
    save_checkpoint, Checkpoint, ConfigSource, INDEX_NAME, WEIGHTS_NAME,
};
use prfl::model::names::{blocks_below, canonical_params, to_diffusers, Layout, REPACK_PREFIX};
use prfl::model::{ModelType, WanConfig};
use prfl::safetensors::{read_safetensors, write_safetensors};
use prfl::tensor::{DType, HostTensor, Storage};
use prfl::testutil::TempDir;
use prfl::Error;

fn tiny(model_type: ModelType, layers: usize) -> WanConfig {
    let i2v = model_type == ModelType::I2V;
    WanConfig {
        model_type,
        in_dim: if i2v { 36 } else { 16 },
        out_dim: 16,
        dim: 32,
        ffn_dim: 48,
        freq_dim: 16,
        text_dim: 24,
        image_dim: i2v.then_some(20),
        num_heads: 2,
        num_layers: layers,
        eps: 1e-6,
        text_len: 512,
    }
}

/// The head-dim-128 shape a bare file must have for inference (heads = dim / 128).
fn hd128(model_type: ModelType) -> WanConfig {
    WanConfig {
        dim: 256,
        ffn_dim: 64,
        text_dim: 32,
        freq_dim: 16,
        image_dim: (model_type == ModelType::I2V).then_some(48),
        ..tiny(model_type, 1)
    }
}

/// Deterministic, distinct values for every parameter, in the given storage dtype.
fn weights(cfg: &WanConfig, dtype: DType) -> BTreeMap<String, HostTensor> {
    canonical_params(cfg)
        .into_iter()
        .enumerate()
        .map(|(k, p)| {
            let data: Vec<f32> = (0..p.numel())
                .map(|i| ((i * 7 + k * 13) % 97) as f32 / 32.0 - 1.5)
                .collect();
            let t = HostTensor::new(p.shape, Storage::from_f32(&data, dtype)).unwrap();
            (p.name, t)
        })
        .collect()
}

/// Writes `tensors` under the given stored names into one safetensors file.
fn write_named(
    path: &Path,
    tensors: &BTreeMap<String, HostTensor>,
    rename: impl Fn(&str) -> String,
) {
    let renamed: Vec<(String, &HostTensor)> = tensors.iter().map(|(n, t)| (rename(n), t)).collect();
    write_safetensors(path, renamed.iter().map(|(n, t)| (n.as_str(), *t)), None).unwrap();
}

fn bytes_of(t: &HostTensor) -> u64 {
    (t.numel() * t.dtype().size_in_bytes()) as u64
}

#[test]
fn round_trips_in_both_layouts_single_and_sharded_all_dtypes() {
    for model_type in [ModelType::T2V, ModelType::I2V] {
        let cfg = tiny(model_type, 2);
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let w = weights(&cfg, dtype);
            let total: u64 = w.values().map(bytes_of).sum();
            for layout in [Layout::Original, Layout::Diffusers] {
                for shard in [None, Some(total / 3)] {
                    let dir = TempDir::new("rt");
                    save_checkpoint(&w, &cfg, layout, dir.path(), shard).unwrap();
                    let ck = Checkpoint::open(dir.path()).unwrap();
                    let what = format!("{model_type:?} {dtype:?} {layout} {shard:?}");
                    assert_eq!(ck.config(), &cfg, "{what}");
                    assert_eq!(ck.layout(), layout, "{what}");
                    assert_eq!(ck.dtypes(), vec![(dtype, w.len())], "{what}");
                    assert_eq!(ck.total_bytes(), total, "{what}");
                    assert_eq!(
                        ck.config_source(),
                        &ConfigSource::Json(dir.path().join("config.json"))
                    );
                    match shard {
                        None => assert_eq!(ck.files(), vec![dir.path().join(WEIGHTS_NAME)]),
                        Some(_) => {
                            assert!(ck.files().len() >= 3, "{what}: {:?}", ck.files());
                            assert!(dir.path().join(INDEX_NAME).is_file());
                        }
                    }
                    ck.verify().unwrap();
                    assert_eq!(ck.load_all().unwrap(), w, "{what}");
                    let n: usize = w.values().map(HostTensor::numel).sum();
                    assert_eq!(ck.parameter_count(), n);
                    // The index json and a single shard open too.
                    if shard.is_some() {
                        let by_index = Checkpoint::open(&dir.path().join(INDEX_NAME)).unwrap();
                        assert_eq!(by_index.load_all().unwrap(), w, "{what}");
                    } else {
                        let by_file = Checkpoint::open(&dir.path().join(WEIGHTS_NAME)).unwrap();
                        assert_eq!(by_file.config(), &cfg);
                    }
                }
            }
        }
    }
}

#[test]
fn diffusers_files_use_diffusers_names_and_config() {
    let cfg = tiny(ModelType::I2V, 1);
    let dir = TempDir::new("dnames");
    save_checkpoint(
        &weights(&cfg, DType::F32),
        &cfg,
        Layout::Diffusers,
        dir.path(),
        None,
    )
    .unwrap();
    let raw = read_safetensors(&dir.path().join(WEIGHTS_NAME)).unwrap();
    assert!(raw.contains_key("blocks.0.attn2.add_k_proj.weight"));
    assert!(raw.contains_key("blocks.0.norm2.weight"));
    assert!(raw.contains_key("scale_shift_table"));
    assert!(!raw
        .keys()
        .any(|k| k.contains("self_attn") || k.contains("norm3")));
    let config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(config["_class_name"], "WanTransformer3DModel");
    assert_eq!(config["added_kv_proj_dim"], 32);
    // Loading gives canonical names.
    let ck = Checkpoint::open(dir.path()).unwrap();
    assert!(ck.names().any(|n| n == "blocks.0.cross_attn.k_img.weight"));
    assert_eq!(
        ck.stored_name("blocks.0.norm3.bias"),
        Some("blocks.0.norm2.bias")
    );
    assert_eq!(
        ck.tensor_info("head.modulation"),
        Some((DType::F32, &[1, 2, 32][..]))
    );
}

#[test]
fn resaving_replaces_a_sharded_checkpoint_with_a_single_file() {
    let cfg = tiny(ModelType::T2V, 2);
    let w = weights(&cfg, DType::BF16);
    let dir = TempDir::new("resave");
    save_checkpoint(&w, &cfg, Layout::Original, dir.path(), Some(4096)).unwrap();
    save_checkpoint(&w, &cfg, Layout::Diffusers, dir.path(), None).unwrap();
    let mut names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, vec!["config.json", WEIGHTS_NAME]);
    let ck = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(ck.layout(), Layout::Diffusers);
    assert_eq!(ck.load_all().unwrap(), w);
}

#[test]
fn bare_files_infer_their_config_from_shapes() {
    for model_type in [ModelType::T2V, ModelType::I2V] {
        let cfg = hd128(model_type);
        let w = weights(&cfg, DType::BF16);
        for layout in [Layout::Original, Layout::Diffusers] {
            let dir = TempDir::new("bare");
            let file = dir.path().join("wan_custom.safetensors");
            write_named(&file, &w, |n| layout.from_canonical(n));
            for path in [file.as_path(), dir.path()] {
                let ck = Checkpoint::open(path).unwrap();
                assert_eq!(ck.config(), &cfg, "{model_type:?} {layout}");
                assert_eq!(ck.config().num_heads, 2);
                assert_eq!(ck.config_source(), &ConfigSource::Inferred);
                assert_eq!(ck.layout(), layout);
                assert_eq!(ck.load_all().unwrap(), w);
            }
        }
    }
}

#[test]
fn repack_prefix_is_stripped() {
    let cfg = hd128(ModelType::T2V);
    let w = weights(&cfg, DType::F16);
    let dir = TempDir::new("prefix");
    let file = dir.path().join("wan2.1_repack_fp16.safetensors");
    write_named(&file, &w, |n| format!("{REPACK_PREFIX}{n}"));
    let ck = Checkpoint::open(&file).unwrap();
    assert_eq!(ck.config(), &cfg);
    assert_eq!(
        ck.stored_name("blocks.0.modulation"),
        Some("model.diffusion_model.blocks.0.modulation")
    );
    assert_eq!(ck.load_all().unwrap(), w);
    assert!(ck.summary().contains("model.diffusion_model."));
}

#[test]
fn non_parameter_buffers_are_ignored() {
    let cfg = hd128(ModelType::T2V);
    let mut w = weights(&cfg, DType::F32);
    let dir = TempDir::new("buffers");
    let file = dir.path().join("m.safetensors");
    w.insert(
        "freqs".into(),
        HostTensor::from_f32(vec![2], vec![0.0, 1.0]).unwrap(),
    );
    write_named(&file, &w, |n| n.to_string());
    let ck = Checkpoint::open(&file).unwrap();
    w.remove("freqs");
    assert_eq!(ck.load_all().unwrap(), w);
}

#[test]
fn loading_some_blocks_reads_only_their_bytes() {
    let cfg = tiny(ModelType::T2V, 3);
    let w = weights(&cfg, DType::F32);
    let dir = TempDir::new("filter");
    save_checkpoint(&w, &cfg, Layout::Diffusers, dir.path(), Some(8192)).unwrap();
    let ck = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(ck.bytes_read(), 0, "opening reads headers only");
    let got = ck.load(blocks_below(1)).unwrap();
    assert!(got
        .keys()
        .all(|k| !k.starts_with("blocks.1.") && !k.starts_with("blocks.2.")));
    assert!(
        got.contains_key("blocks.0.ffn.2.weight") && got.contains_key("patch_embedding.weight")
    );
    assert!(got.contains_key("head.head.weight"));
    let expected: u64 = w
        .iter()
        .filter(|(k, _)| blocks_below(1)(k))
        .map(|(_, t)| bytes_of(t))
        .sum();
    assert_eq!(ck.bytes_read(), expected);
    assert_eq!(
        got.len(),
        w.iter().filter(|(k, _)| blocks_below(1)(k)).count()
    );
    for (k, t) in &got {
        assert_eq!(t, &w[k]);
    }
}

/// Writes a checkpoint directory by hand: `config.json` in the layout's format and one file.
fn handmade(dir: &Path, cfg: &WanConfig, layout: Layout, tensors: &BTreeMap<String, HostTensor>) {
    let config = match layout {
        Layout::Original => cfg.to_original_json(),
        Layout::Diffusers => cfg.to_diffusers_json(),
    };
    fs::write(dir.join("config.json"), config.to_string()).unwrap();
    write_named(&dir.join(WEIGHTS_NAME), tensors, |n| {
        layout.from_canonical(n)
    });
}

#[test]
fn missing_tensor_is_named_in_both_namings() {
    let cfg = tiny(ModelType::T2V, 2);
    let mut w = weights(&cfg, DType::F32);
    w.remove("blocks.1.self_attn.q.weight");
    for layout in [Layout::Original, Layout::Diffusers] {
        let dir = TempDir::new("missing");
        handmade(dir.path(), &cfg, layout, &w);
        let ck = Checkpoint::open(dir.path()).unwrap();
        for e in [ck.load_all().unwrap_err(), ck.verify().unwrap_err()] {
            let Error::MissingTensor(name) = &e else {
                panic!("{e}")
            };
            assert!(name.contains("blocks.1.self_attn.q.weight"), "{e}");
            if layout == Layout::Diffusers {
                assert!(name.contains("blocks.1.attn1.to_q.weight"), "{e}");
            }
        }
        // The blocks that are present still load.
        assert!(ck.load(blocks_below(1)).is_ok());
        assert!(matches!(
            ck.read("blocks.1.self_attn.q.weight"),
            Err(Error::MissingTensor(_))
        ));
    }
}

#[test]
fn unexpected_tensors_are_named() {
    let cfg = tiny(ModelType::I2V, 1);
    // A name that is no Wan2.1 parameter, and a real parameter name this config does not have.
    for extra in [
        "blocks.0.mystery.weight",
        "blocks.1.modulation",
        "img_emb.emb_pos",
    ] {
        let mut w = weights(&cfg, DType::F32);
        let shape = if extra == "img_emb.emb_pos" {
            vec![1, 4, 20]
        } else {
            vec![1, 6, 32]
        };
        let n = shape.iter().product();
        w.insert(
            extra.to_string(),
            HostTensor::from_f32(shape, vec![0.5; n]).unwrap(),
        );
        for layout in [Layout::Original, Layout::Diffusers] {
            let dir = TempDir::new("unexpected");
            handmade(dir.path(), &cfg, layout, &w);
            let ck = Checkpoint::open(dir.path()).unwrap();
            let e = ck.load_all().unwrap_err();
            let Error::UnexpectedTensor(name) = &e else {
                panic!("{extra}: {e}")
            };
            assert!(
                name.contains(extra) || name.contains(&to_diffusers(extra)),
                "{e}"
            );
            assert!(matches!(ck.verify(), Err(Error::UnexpectedTensor(_))));
        }
    }
}

#[test]
fn wrong_shapes_are_named() {
    let cfg = tiny(ModelType::T2V, 2);
    let mut w = weights(&cfg, DType::F32);
    w.insert(
        "blocks.1.ffn.0.weight".into(),
        HostTensor::from_f32(vec![40, 32], vec![0.0; 1280]).unwrap(),
    );
    for layout in [Layout::Original, Layout::Diffusers] {
        let dir = TempDir::new("shape");
        handmade(dir.path(), &cfg, layout, &w);
        let e = Checkpoint::open(dir.path()).unwrap_err();
        let Error::ShapeMismatch {
            name,
            got,
            expected,
        } = &e
        else {
            panic!("{e}")
        };
        assert!(name.contains("blocks.1.ffn.0.weight"), "{e}");
        if layout == Layout::Diffusers {
            assert!(name.contains("blocks.1.ffn.net.0.proj.weight"), "{e}");
        }
        assert_eq!(
            (got.as_slice(), expected.as_slice()),
            (&[40, 32][..], &[48, 32][..])
        );
    }
}

#[test]
fn a_config_that_contradicts_the_tensors_is_an_error_naming_the_tensor() {
    let cfg = tiny(ModelType::T2V, 1);
    let w = weights(&cfg, DType::F32);
    let dir = TempDir::new("contradict");
    let wide = WanConfig {
        dim: 64,
        ..cfg.clone()
    };
    handmade(dir.path(), &wide, Layout::Original, &w);
    let e = Checkpoint::open(dir.path()).unwrap_err();
    assert!(
        matches!(&e, Error::ShapeMismatch { name, .. } if name == "patch_embedding.weight"),
        "{e}"
    );
    // An i2v checkpoint under a t2v config.
    let i2v = tiny(ModelType::I2V, 1);
    let dir = TempDir::new("contradict2");
    handmade(
        dir.path(),
        &cfg,
        Layout::Diffusers,
        &weights(&i2v, DType::F32),
    );
    let e = Checkpoint::open(dir.path()).unwrap_err();
    assert!(
        e.to_string().contains("add_k_proj")
            || e.to_string().contains("k_img")
            || e.to_string().contains("img"),
        "{e}"
    );
    // text_dim and image_dim are taken from the tensors (the official config.json has neither).
    let dir = TempDir::new("override");
    let mut claimed = i2v.clone();
    claimed.text_dim = 4096;
    claimed.image_dim = Some(1280);
    handmade(
        dir.path(),
        &claimed,
        Layout::Original,
        &weights(&i2v, DType::F32),
    );
    assert_eq!(Checkpoint::open(dir.path()).unwrap().config(), &i2v);
}

#[test]
fn unsupported_dtypes_are_named() {
    use safetensors::tensor::{Dtype, TensorView};
    let cfg = hd128(ModelType::T2V);
    let w = weights(&cfg, DType::F32);
    let dir = TempDir::new("dtype");
    let file = dir.path().join("m.safetensors");
    let bytes: Vec<Vec<u8>> = w.values().map(|t| t.data.to_le_bytes()).collect();
    let mut views: Vec<(String, TensorView)> = w
        .iter()
        .zip(&bytes)
        .map(|((n, t), b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, t.shape.clone(), b).unwrap(),
            )
        })
        .collect();
    // The head bias as int64: same byte count per element pair would not matter, only the dtype.
    let i64_bytes: Vec<u8> = (0..64i64).flat_map(|v| v.to_le_bytes()).collect();
    views.retain(|(n, _)| n != "head.head.bias");
    views.push((
        "head.head.bias".into(),
        TensorView::new(Dtype::I64, vec![64], &i64_bytes).unwrap(),
    ));
    safetensors::serialize_to_file(views, &None, &file).unwrap();
    let e = Checkpoint::open(&file).unwrap_err();
    assert!(
        matches!(&e, Error::UnsupportedDtype(m) if m.contains("head.head.bias") && m.contains("I64")),
        "{e}"
    );
    let e = read_safetensors(&file).unwrap_err();
    assert!(
        matches!(&e, Error::UnsupportedDtype(m) if m.contains("head.head.bias")),
        "{e}"
    );
}

#[test]
fn truncated_corrupt_and_missing_files_are_reported() {
    let cfg = tiny(ModelType::T2V, 1);
    let w = weights(&cfg, DType::BF16);
    let dir = TempDir::new("corrupt");
    save_checkpoint(&w, &cfg, Layout::Original, dir.path(), None).unwrap();
    let file = dir.path().join(WEIGHTS_NAME);
    let bytes = fs::read(&file).unwrap();

    fs::write(&file, &bytes[..bytes.len() - 10]).unwrap();
    let e = Checkpoint::open(dir.path()).unwrap_err();
    assert!(
        matches!(&e, Error::Checkpoint { path, msg } if path == &file && msg.contains("truncated")),
        "{e}"
    );
    assert!(matches!(
        read_safetensors(&file),
        Err(Error::Checkpoint { .. })
    ));

    fs::write(&file, &bytes[..5]).unwrap();
    assert!(matches!(
        Checkpoint::open(dir.path()),
        Err(Error::Checkpoint { .. })
    ));

    let mut garbage = bytes.clone();
    garbage[8..40].copy_from_slice(&[b'#'; 32]);
    fs::write(&file, &garbage).unwrap();
    let e = Checkpoint::open(dir.path()).unwrap_err();
    assert!(
        matches!(&e, Error::Checkpoint { msg, .. } if msg.contains("corrupt")),
        "{e}"
    );

    let nowhere = dir.path().join("no/such/checkpoint");
    let e = Checkpoint::open(&nowhere).unwrap_err();
    assert!(
        matches!(&e, Error::Io { path, .. } if path == &nowhere),
        "{e}"
    );
    assert!(matches!(read_safetensors(&nowhere), Err(Error::Io { .. })));

    let empty = TempDir::new("empty");
    assert!(matches!(
        Checkpoint::open(empty.path()),
        Err(Error::Checkpoint { .. })
    ));

    fs::write(dir.path().join("config.json"), "{ not json").unwrap();
    fs::write(&file, &bytes).unwrap();
    assert!(matches!(
        Checkpoint::open(dir.path()),
        Err(Error::Config(_))
    ));
}

#[test]
fn inconsistent_index_is_reported() {
    let cfg = tiny(ModelType::T2V, 2);
    let w = weights(&cfg, DType::F32);
    let dir = TempDir::new("index");
    save_checkpoint(&w, &cfg, Layout::Original, dir.path(), Some(8192)).unwrap();
    let index_path = dir.path().join(INDEX_NAME);
    let mut index: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&index_path).unwrap()).unwrap();
    let shard = index["weight_map"]["patch_embedding.weight"].clone();
    index["weight_map"]["blocks.9.modulation"] = shard;
    fs::write(&index_path, index.to_string()).unwrap();
    let e = Checkpoint::open(dir.path()).unwrap_err();
    assert!(
        matches!(&e, Error::Checkpoint { msg, .. } if msg.contains("blocks.9.modulation")),
        "{e}"
    );
    index["weight_map"]["blocks.9.modulation"] = serde_json::json!("../escape.safetensors");
    fs::write(&index_path, index.to_string()).unwrap();
    assert!(matches!(
        Checkpoint::open(dir.path()),
        Err(Error::Checkpoint { .. })
    ));
}

#[test]
fn saving_checks_names_and_shapes() {
    let cfg = tiny(ModelType::T2V, 1);
    let dir = TempDir::new("save");
    let mut w = weights(&cfg, DType::F32);
    w.remove("head.head.bias");
    assert!(
        matches!(save_checkpoint(&w, &cfg, Layout::Original, dir.path(), None), Err(Error::MissingTensor(n)) if n == "head.head.bias")
    );
    let mut w = weights(&cfg, DType::F32);
    w.insert(
        "head.extra".into(),
        HostTensor::from_f32(vec![1], vec![0.0]).unwrap(),
    );
    assert!(
        matches!(save_checkpoint(&w, &cfg, Layout::Original, dir.path(), None), Err(Error::UnexpectedTensor(n)) if n == "head.extra")
    );
    let mut w = weights(&cfg, DType::F32);
    w.insert(
        "head.head.bias".into(),
        HostTensor::from_f32(vec![3], vec![0.0; 3]).unwrap(),
    );
    assert!(
        matches!(save_checkpoint(&w, &cfg, Layout::Original, dir.path(), None), Err(Error::ShapeMismatch { name, .. }) if name == "head.head.bias")
    );
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing written on error"
    );
}

#[test]
fn plain_safetensors_files_round_trip_with_metadata() {
    let dir = TempDir::new("plain");
    let path = dir.path().join("io.safetensors");
    let mut m = BTreeMap::new();
    m.insert(
        "latents".to_string(),
        HostTensor::from_f32(vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap(),
    );
    m.insert(
        "t".to_string(),
        HostTensor::new(vec![1], Storage::from_f32(&[999.0], DType::F16)).unwrap(),
    );
    let meta: HashMap<String, String> = [("prfl".to_string(), "test".to_string())].into();
    write_safetensors(&path, &m, Some(&meta)).unwrap();
    assert_eq!(read_safetensors(&path).unwrap(), m);
    // Overwriting is atomic and leaves no temp file.
    write_safetensors(&path, &m, None).unwrap();
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn a_diffusers_pipeline_root_is_followed_into_transformer() {
    let cfg = tiny(ModelType::T2V, 1);
    let root = TempDir::new("pipeline");
    fs::write(root.path().join("model_index.json"), "{}").unwrap();
    let w = weights(&cfg, DType::BF16);
    save_checkpoint(
        &w,
        &cfg,
        Layout::Diffusers,
        &root.path().join("transformer"),
        None,
    )
    .unwrap();
    let ck = Checkpoint::open(root.path()).unwrap();
    assert_eq!(ck.config(), &cfg);
    assert_eq!(ck.load_all().unwrap(), w);
}

#[test]
fn released_presets_are_recognised_and_summarised() {
    assert_eq!(WanConfig::t2v_1_3b().variant_name(), "Wan2.1-T2V-1.3B");
    assert_eq!(WanConfig::t2v_14b().variant_name(), "Wan2.1-T2V-14B");
    assert_eq!(WanConfig::i2v_14b().variant_name(), "Wan2.1-I2V-14B");
    assert_eq!(tiny(ModelType::T2V, 1).variant_name(), "custom");

    let cfg = tiny(ModelType::I2V, 2);
    let dir = TempDir::new("summary");
    save_checkpoint(
        &weights(&cfg, DType::BF16),
        &cfg,
        Layout::Diffusers,
        dir.path(),
        Some(20_000),
    )
    .unwrap();
    let ck = Checkpoint::open(dir.path()).unwrap();
    let s = ck.summary();
    for needle in [
        "diffusers",
        "custom",
        "i2v",
        "dim",
        "ffn_dim",
        "num_heads",
        "image_dim",
        "bf16",
        "files",
        "parameters",
    ] {
        assert!(s.contains(needle), "summary lacks {needle}:\n{s}");
    }
    assert!(s.contains(&ck.parameter_count().to_string()));
}

/// The oracle fixtures (written from diffusers and the original layout by
/// `tools/`): both layouts of each case must open to the same config and identical tensors.
#[test]
fn oracle_fixtures_agree_across_layouts() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wan");
    let Ok(cases) = fs::read_dir(&root) else {
        eprintln!("no fixtures at {}; skipping", root.display());
        return;
    };
    let mut checked = 0;
    for case in cases {
        let case = case.unwrap().path();
        let (orig, diff) = (case.join("original"), case.join("diffusers"));
        if !orig.is_dir() || !diff.is_dir() {
            continue;
        }
        let a = Checkpoint::open(&orig).unwrap_or_else(|e| panic!("{}: {e}", orig.display()));
        let b = Checkpoint::open(&diff).unwrap_or_else(|e| panic!("{}: {e}", diff.display()));
        assert_eq!(a.layout(), Layout::Original, "{}", orig.display());
        assert_eq!(b.layout(), Layout::Diffusers, "{}", diff.display());
        assert_eq!(a.config(), b.config(), "{}", case.display());
        a.verify().unwrap();
        b.verify().unwrap();
        assert_eq!(
            a.load_all().unwrap(),
            b.load_all().unwrap(),
            "{}",
            case.display()
        );
        checked += 1;
    }
    eprintln!("checked {checked} fixture cases");
}
