//! Interop with the reference implementation (HY-Video-PRFL) and with diffusers / ComfyUI
//! (issue 18): torch state-dict files read without executing anything, the reference's reward
//! model imported and scored as torch scores it (committed oracle fixture), exported back, its
//! datasets opened, and LoRA exports whose key names and scale diffusers and ComfyUI read.
//!
//! The checks that need Python (the reference's own `load_state_dict` on an export, diffusers
//! loading a LoRA) run where `PRFL_ORACLE_PYTHON` names the oracle venv's python (or `.venv/` of
//! the repository exists: `tools/oracle/setup_venv.sh`), and are skipped with a note otherwise.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use prfl::backend::cpu::Cpu;
use prfl::interop::reference_dataset::{is_reference_data, open_data};
use prfl::interop::reference_reward::{import_reference, save_reward_checkpoint};
use prfl::interop::torch_file::{read_host_state_dict, read_state_dict, read_state_dict_from};
use prfl::model::checkpoint::{save_checkpoint, Checkpoint};
use prfl::model::init::random_weights;
use prfl::model::lora::{init_lora, load_peft, merge_lora, save_peft, LoraConfig, LoraKeyNames};
use prfl::model::names::Layout;
use prfl::model::wan::{Inputs, VideoShape};
use prfl::model::ModelType;
use prfl::reward::dataset::Sample;
use prfl::reward::model::RewardModel;
use prfl::safetensors::{read_safetensors, read_safetensors_metadata, write_safetensors};
use prfl::tensor::HostTensor;
use prfl::testutil::TempDir;
use prfl::testutil::{tiny_wan, TestRng};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture() -> PathBuf {
    root().join("tests/fixtures/interop/reference_reward")
}

/// The oracle venv's python, where there is one.
fn oracle_python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PRFL_ORACLE_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let venv = root().join(".venv/bin/python");
    venv.exists().then_some(venv)
}

fn prfl(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_prfl"))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "prfl {args:?} failed:\n{text}");
    text
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn expected_scores() -> Vec<f32> {
    read_safetensors(&fixture().join("expected.safetensors")).unwrap()["scores"].to_f32()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn imported_reference_reward_scores_as_torch_does() {
    let f = fixture();
    let model = import_reference(
        &f.join("checkpoint-100"),
        &f.join("query_attention_step_100.ckpt"),
        &f.join("mlp_step_100.ckpt"),
        4,
    )
    .unwrap();
    assert_eq!(model.config.blocks, 2);
    assert_eq!(model.config.hidden, [24, 16]);
    assert_eq!(model.step, 100);
    let dir = TempDir::new("import");
    let r = dir.path().join("reward.safetensors");
    save_reward_checkpoint(&model, &r).unwrap();

    let gen = Checkpoint::open(&f.join("generator")).unwrap();
    let reward = RewardModel::load(&Cpu, &gen, &r).unwrap();
    let inp = read_safetensors(&f.join("inputs.safetensors")).unwrap();
    let (latent, text) = (&inp["latent"], &inp["text"]);
    let b = latent.shape[0];
    let shape = VideoShape {
        batch: b,
        frames: latent.shape[2],
        height: latent.shape[3],
        width: latent.shape[4],
    };
    let x = latent.to_f32();
    let ctx = text.to_f32();
    let t = vec![400.0; b];
    let scores = reward
        .score(
            &Cpu,
            &Inputs::<Cpu> {
                shape,
                x: &x,
                t: &t,
                context: &ctx,
                text_len: text.shape[1],
                y: None,
                clip: None,
                image_len: 0,
            },
        )
        .unwrap();
    let err = max_abs_diff(&scores, &expected_scores());
    assert!(err <= 1e-5, "scores {scores:?} vs torch: {err:e}");

    // The safetensors conversions of the two torch files import to the same tensors.
    let mut converted = Vec::new();
    for name in ["query_attention_step_100", "mlp_step_100"] {
        let sd = read_host_state_dict(&f.join(format!("{name}.ckpt"))).unwrap();
        let p = dir.path().join(format!("{name}.safetensors"));
        write_safetensors(&p, sd.iter().map(|(k, v)| (k.as_str(), v)), None).unwrap();
        converted.push(p);
    }
    let again =
        import_reference(&f.join("checkpoint-100"), &converted[0], &converted[1], 4).unwrap();
    for (k, t) in &model.tensors {
        assert_eq!(t.to_f32(), again.tensors[k].to_f32(), "{k}");
    }
}

#[test]
fn cli_import_score_export_round_trip() {
    let f = fixture();
    let dir = TempDir::new("cli");
    let r = dir.path().join("R.safetensors");
    prfl(&[
        "import-reward",
        "--transformer",
        s(&f.join("checkpoint-100")),
        "--query-attention",
        s(&f.join("query_attention_step_100.ckpt")),
        "--mlp",
        s(&f.join("mlp_step_100.ckpt")),
        "--heads",
        "4",
        "--out",
        s(&r),
    ]);
    let scored = dir.path().join("scores.safetensors");
    prfl(&[
        "score",
        "--generator",
        s(&f.join("generator")),
        "--reward",
        s(&r),
        "--input",
        s(&f.join("inputs.safetensors")),
        "--timestep",
        "400",
        "--out",
        s(&scored),
        "--device",
        "cpu",
    ]);
    let got = read_safetensors(&scored).unwrap()["scores"].to_f32();
    let err = max_abs_diff(&got, &expected_scores());
    assert!(err <= 1e-5, "prfl score {got:?} vs torch: {err:e}");

    let out = dir.path().join("export");
    prfl(&[
        "export-reward",
        "--reward",
        s(&r),
        "--generator",
        s(&f.join("generator")),
        "--out",
        s(&out),
    ]);
    // Re-importing the export gives back exactly the imported tensors.
    let a = import_reference(
        &f.join("checkpoint-100"),
        &f.join("query_attention_step_100.ckpt"),
        &f.join("mlp_step_100.ckpt"),
        4,
    )
    .unwrap();
    let b = import_reference(
        &out.join("checkpoint-100"),
        &out.join("query_attention_step_100.ckpt"),
        &out.join("mlp_step_100.ckpt"),
        4,
    )
    .unwrap();
    assert_eq!(
        a.tensors.keys().collect::<Vec<_>>(),
        b.tensors.keys().collect::<Vec<_>>()
    );
    for (k, t) in &a.tensors {
        assert_eq!(t.to_f32(), b.tensors[k].to_f32(), "{k}");
    }
    // The export's embeddings are the generator's, in the original layout.
    let exported =
        read_safetensors(&out.join("checkpoint-100/diffusion_pytorch_model.safetensors")).unwrap();
    let gen = Checkpoint::open(&f.join("generator")).unwrap();
    assert_eq!(
        exported["text_embedding.0.weight"].to_f32(),
        gen.read("text_embedding.0.weight").unwrap().to_f32()
    );
    assert!(!exported.keys().any(|k| k.starts_with("head.")));

    match oracle_python() {
        Some(py) => {
            let o = Command::new(py)
                .arg(root().join("tools/oracle/make_reference_reward_fixture.py"))
                .args(["--check-export", s(&out)])
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "the reference's load_state_dict refused the export or scored differently:\n{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        None => eprintln!("note: no oracle venv (PRFL_ORACLE_PYTHON); the torch-side load of the export is skipped"),
    }
}

/// A zip archive laid out as torch.save lays one out, with `pkl` as its pickle.
fn torch_zip(pkl: &[u8], storages: &[(&str, &[u8])]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        let o = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        z.start_file("archive/data.pkl", o).unwrap();
        z.write_all(pkl).unwrap();
        for (k, b) in storages {
            z.start_file(format!("archive/data/{k}"), o).unwrap();
            z.write_all(b).unwrap();
        }
        z.start_file("archive/version", o).unwrap();
        z.write_all(b"3\n").unwrap();
        z.finish().unwrap();
    }
    buf.into_inner()
}

#[test]
fn torch_files_that_try_to_run_code_are_refused_without_running_it() {
    let dir = TempDir::new("evil");
    let marker = dir.path().join("pwned");
    // GLOBAL os.system, ("touch <marker>",), REDUCE: what a malicious checkpoint does.
    let cmd = format!("touch {}", marker.display());
    let mut pkl = b"\x80\x02cos\nsystem\nX".to_vec();
    pkl.extend_from_slice(&(cmd.len() as u32).to_le_bytes());
    pkl.extend_from_slice(cmd.as_bytes());
    pkl.extend_from_slice(b"\x85R.");
    let e = read_state_dict_from(std::io::Cursor::new(torch_zip(&pkl, &[])))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`os.system` is not allowed") && e.contains("nothing was executed"),
        "{e}"
    );
    assert!(!marker.exists());
    // The same hidden inside an otherwise valid state dict, after a tensor, via
    // subprocess.Popen, and via builtins.exec.
    for (module, name) in [
        ("subprocess", "Popen"),
        ("builtins", "exec"),
        ("posix", "system"),
    ] {
        let mut p = b"\x80\x02ccollections\nOrderedDict\n)R(X\x01\x00\x00\x00a".to_vec();
        p.extend_from_slice(format!("c{module}\n{name}\n").as_bytes());
        p.extend_from_slice(b"X\x01\x00\x00\x00xtRu.");
        let e = read_state_dict_from(std::io::Cursor::new(torch_zip(&p, &[])))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("`{module}.{name}` is not allowed")),
            "{e}"
        );
    }
}

#[test]
fn truncated_and_corrupt_torch_files_are_errors_naming_the_file() {
    let dir = TempDir::new("corrupt");
    let good = std::fs::read(fixture().join("mlp_step_100.ckpt")).unwrap();
    assert_eq!(
        read_state_dict(&fixture().join("mlp_step_100.ckpt"))
            .unwrap()
            .len(),
        6
    );
    for cut in [10, good.len() / 2, good.len() - 10] {
        let p = dir.path().join(format!("cut{cut}.ckpt"));
        std::fs::write(&p, &good[..cut]).unwrap();
        let e = read_state_dict(&p).unwrap_err().to_string();
        assert!(e.contains(&format!("cut{cut}.ckpt")), "{e}");
    }
    // A zip whose pickle is garbage, and one whose storage record is short.
    let e = read_state_dict_from(std::io::Cursor::new(torch_zip(b"\x80\x02\xfe\xfe", &[])))
        .unwrap_err()
        .to_string();
    assert!(e.contains("pickle") && e.contains("0xfe"), "{e}");
    let mut pkl = b"\x80\x02ccollections\nOrderedDict\n)R(X\x01\x00\x00\x00w".to_vec();
    pkl.extend_from_slice(
        b"ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04tQK\x00K\x04\x85K\x01\x85\x89ccollections\nOrderedDict\n)RtRu.",
    );
    let e = read_state_dict_from(std::io::Cursor::new(torch_zip(&pkl, &[("0", &[0u8; 8])])))
        .unwrap_err()
        .to_string();
    assert!(e.contains("holds 8 bytes") && e.contains("needs 16"), "{e}");
    let ok =
        read_state_dict_from(std::io::Cursor::new(torch_zip(&pkl, &[("0", &[0u8; 16])]))).unwrap();
    assert_eq!(ok["w"].shape, vec![4]);
}

// ------------------------------------------------------------------------------------------
// Reference datasets
// ------------------------------------------------------------------------------------------

/// A float32 C-order .npy file.
fn write_npy(path: &Path, shape: &[usize], data: &[f32]) {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_txt = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_txt}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, out).unwrap();
}

struct RefData {
    dir: TempDir,
}

const TEXT_DIM: usize = 16;

impl RefData {
    /// Three clips (labels 1, 0, 0) with latents [1,16,2,2,4], short and long captions,
    /// CLIP features and condition latents.
    fn new(name: &str) -> RefData {
        let dir = TempDir::new(name);
        let d = dir.path();
        let mut rng = TestRng::new(11);
        for i in 0..3 {
            write_npy(
                &d.join(format!("lat{i}.npy")),
                &[1, 16, 2, 2, 4],
                &rng.vec(256),
            );
            write_npy(
                &d.join(format!("cond{i}.npy")),
                &[1, 16, 2, 2, 4],
                &rng.vec(256),
            );
        }
        write_npy(
            &d.join("short.npy"),
            &[1, 3, TEXT_DIM],
            &rng.vec(3 * TEXT_DIM),
        );
        write_npy(
            &d.join("long.npy"),
            &[1, 5, TEXT_DIM],
            &rng.vec(5 * TEXT_DIM),
        );
        write_npy(&d.join("en.npy"), &[1, 4, TEXT_DIM], &rng.vec(4 * TEXT_DIM));
        write_npy(&d.join("clip.npy"), &[1, 257, 6], &rng.vec(257 * 6));
        let labels = [
            (r#""good""#, r#""good""#),
            (r#""good""#, r#""poor""#),
            ("1", "null"),
        ];
        for (i, (p, h)) in labels.iter().enumerate() {
            let text = if i == 0 {
                r#""textshort_path": "short.npy", "textlong_path": "long.npy""#.to_string()
            } else {
                r#""text_en_path": "en.npy""#.to_string()
            };
            let json = format!(
                r#"{{"vae_latent_path": "lat{i}.npy", {text}, "imgclip_path": "clip.npy",
                    "latents_condition_path": "cond{i}.npy", "physics_quality": {p}, "human_quality": {h}}}"#
            );
            std::fs::write(d.join(format!("m{i}.json")), json).unwrap();
        }
        std::fs::write(d.join("all.list"), "m0.json\nm1.json\n\nm2.json\n").unwrap();
        std::fs::write(d.join("win.list"), "m0.json\n").unwrap();
        std::fs::write(d.join("lose.list"), "m1.json\nm2.json\n").unwrap();
        RefData { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

#[test]
fn reference_lists_open_as_labelled_clips_and_pairs() {
    let r = RefData::new("clips");
    assert!(is_reference_data(&r.path("all.list")));
    let ds = open_data(&r.path("all.list"), false, 0).unwrap();
    assert_eq!(ds.len(), 3);
    let labels: Vec<f32> = ds
        .samples()
        .iter()
        .map(|s| match s {
            Sample::Clip { label, shape, .. } => {
                assert_eq!(*shape, [16, 2, 2, 4]);
                *label
            }
            Sample::Pair { .. } => panic!("a pair"),
        })
        .collect();
    assert_eq!(labels, vec![1.0, 0.0, 0.0]);
    assert!(ds.samples().iter().all(|s| s.cond().i2v.is_none()));
    assert_eq!(ds.sample(1).cond().text.len, 4);
    assert!(ds.path(0).ends_with("m0.json"));

    // I2V: the image tokens, and the 16-channel condition behind the reference's 4-channel mask.
    let ds = open_data(&r.path("all.list"), true, 0).unwrap();
    let i2v = ds.sample(0).cond().i2v.as_ref().unwrap();
    assert_eq!((i2v.image.len, i2v.image.dim, i2v.y_channels), (257, 6, 20));
    let plane = 2 * 4;
    let frames = 2;
    assert!(i2v.y[..plane].iter().all(|&v| v == 1.0));
    assert!(i2v.y[plane..frames * plane].iter().all(|&v| v == 0.0));

    // Pairs: every win clip with a lose clip.
    let ds = open_data(&r.path("win.list,lose.list"), false, 3).unwrap();
    assert_eq!((ds.len(), ds.pairs()), (1, 1));
}

#[test]
fn the_long_caption_is_drawn_seven_times_in_ten() {
    let r = RefData::new("captions");
    let list: String = (0..400).map(|_| "m0.json\n").collect();
    std::fs::write(r.path("many.list"), list).unwrap();
    let ds = open_data(&r.path("many.list"), false, 9).unwrap();
    let long = ds
        .samples()
        .iter()
        .filter(|s| s.cond().text.len == 5)
        .count();
    let frac = long as f64 / 400.0;
    assert!(
        (0.63..=0.77).contains(&frac),
        "long caption fraction {frac}"
    );
    // Deterministic for a seed.
    let again = open_data(&r.path("many.list"), false, 9).unwrap();
    assert_eq!(again.samples(), ds.samples());
}

#[test]
fn reference_data_errors_name_the_file_and_the_key() {
    let r = RefData::new("errors");
    let err = |json: &str| {
        std::fs::write(r.path("bad.json"), json).unwrap();
        std::fs::write(r.path("bad.list"), "bad.json\n").unwrap();
        open_data(&r.path("bad.list"), false, 0)
            .unwrap_err()
            .to_string()
    };
    let e = err(r#"{"vae_latent_path": "missing.npy", "text_en_path": "en.npy"}"#);
    assert!(
        e.contains("bad.json") && e.contains("`vae_latent_path`") && e.contains("missing.npy"),
        "{e}"
    );
    write_npy(&r.path("flat.npy"), &[16], &[0.0; 16]);
    let e = err(r#"{"vae_latent_path": "lat0.npy", "text_en_path": "flat.npy"}"#);
    assert!(
        e.contains("bad.json") && e.contains("`text_en_path`") && e.contains("[16]"),
        "{e}"
    );
    let mut nan = vec![0.0; 256];
    nan[17] = f32::NAN;
    write_npy(&r.path("nan.npy"), &[1, 16, 2, 2, 4], &nan);
    let e = err(r#"{"latents_path": "nan.npy", "text_en_path": "en.npy"}"#);
    assert!(
        e.contains("`latents_path`") && e.contains("non-finite value at element 17"),
        "{e}"
    );
    let e =
        err(r#"{"vae_latent_path": "lat0.npy", "text_en_path": "en.npy", "human_quality": "meh"}"#);
    assert!(e.contains("`human_quality`") && e.contains("meh"), "{e}");
    let e = err(r#"{"vae_latent_path": "lat0.npy"}"#);
    assert!(e.contains("`text_en_path`"), "{e}");
    let e = open_data(&r.path("all.list"), true, 0)
        .map(|_| ())
        .and_then(|()| {
            std::fs::write(
                r.path("noclip.json"),
                r#"{"vae_latent_path": "lat0.npy", "text_en_path": "en.npy"}"#,
            )
            .unwrap();
            std::fs::write(r.path("noclip.list"), "noclip.json").unwrap();
            open_data(&r.path("noclip.list"), true, 0).map(|_| ())
        });
    assert!(e.unwrap_err().to_string().contains("`imgclip_path`"));
}

#[test]
fn cli_eval_reward_reads_a_reference_list() {
    let f = fixture();
    let r = RefData::new("cli-eval");
    let dir = TempDir::new("cli-eval-r");
    let model = import_reference(
        &f.join("checkpoint-100"),
        &f.join("query_attention_step_100.ckpt"),
        &f.join("mlp_step_100.ckpt"),
        4,
    )
    .unwrap();
    let rpath = dir.path().join("R.safetensors");
    save_reward_checkpoint(&model, &rpath).unwrap();
    let out = prfl(&[
        "eval-reward",
        "--generator",
        s(&f.join("generator")),
        "--reward",
        s(&rpath),
        "--data",
        s(&r.path("all.list")),
        "--timesteps",
        "400",
        "--device",
        "cpu",
    ]);
    assert!(out.contains("400"), "{out}");
}

#[test]
fn cli_train_reward_accepts_a_reference_list_as_data() {
    let r = RefData::new("cli-train");
    let toml = format!(
        "generator = \"{}\"\ndata = \"all.list\"\nout = \"run\"\nsteps = 2\nbatch_size = 1\nholdout = 0.0\n\
         [model]\nblocks = 2\nheads = 4\nhidden = [8, 8]\n[train]\nloss = \"ce\"\n",
        fixture().join("generator").display()
    );
    std::fs::write(r.path("reward.toml"), toml).unwrap();
    let out = prfl(&["train-reward", s(&r.path("reward.toml")), "--device", "cpu"]);
    assert!(out.contains("3 training samples"), "{out}");
    assert!(r.path("run/checkpoint.safetensors").exists());
}

// ------------------------------------------------------------------------------------------
// LoRA files for diffusers and ComfyUI
// ------------------------------------------------------------------------------------------

fn key_fixture() -> serde_json::Value {
    let text =
        std::fs::read_to_string(root().join("tests/fixtures/interop/lora_keys.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn names(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn lora_exports_carry_the_names_and_the_scale_diffusers_and_comfyui_read() {
    let fx = key_fixture();
    let cfg = tiny_wan(
        ModelType::T2V,
        16,
        2,
        fx["num_layers"].as_u64().unwrap() as usize,
        8,
    );
    let mut lora = LoraConfig {
        rank: 2,
        alpha: 4.0,
        targets: names(&fx["targets"]),
        ..LoraConfig::default()
    };
    let adapters = init_lora(&cfg, &lora, 3).unwrap();
    let dir = TempDir::new("lora");

    let p = dir.path().join("diffusers.safetensors");
    save_peft(&p, &adapters, &lora).unwrap();
    let keys: Vec<String> = read_safetensors(&p).unwrap().into_keys().collect();
    assert_eq!(keys, names(&fx["diffusers"]));
    let meta = read_safetensors_metadata(&p).unwrap();
    let adapter: serde_json::Value = serde_json::from_str(&meta["lora_adapter_metadata"]).unwrap();
    assert_eq!(adapter["transformer.r"], 2);
    assert_eq!(adapter["transformer.lora_alpha"], 4.0);
    assert_eq!(
        adapter["transformer.target_modules"]
            .as_array()
            .unwrap()
            .len(),
        keys.len() / 2
    );
    let (back, tensors) = load_peft(&p).unwrap();
    assert_eq!(back, lora);
    assert_eq!(
        tensors.keys().collect::<Vec<_>>(),
        adapters.keys().collect::<Vec<_>>()
    );

    lora.key_names = LoraKeyNames::ComfyUi;
    let p = dir.path().join("comfyui.safetensors");
    save_peft(&p, &adapters, &lora).unwrap();
    let file = read_safetensors(&p).unwrap();
    assert_eq!(
        file.keys().cloned().collect::<Vec<_>>(),
        names(&fx["comfyui"])
    );
    let alpha = &file["diffusion_model.blocks.1.ffn.2.alpha"];
    assert_eq!((alpha.shape.clone(), alpha.to_f32()), (vec![], vec![4.0]));
    assert!(!read_safetensors_metadata(&p)
        .unwrap()
        .contains_key("lora_adapter_metadata"));
    let (back, tensors) = load_peft(&p).unwrap();
    assert_eq!(back, lora);
    for (k, t) in &adapters {
        assert_eq!(tensors[k].to_f32(), t.to_f32(), "{k}");
    }
}

#[test]
fn diffusers_applies_the_lora_at_its_trained_strength() {
    let Some(py) = oracle_python() else {
        eprintln!("note: no oracle venv (PRFL_ORACLE_PYTHON); the diffusers LoRA check is skipped");
        return;
    };
    // Rank 4, alpha 8: strength 2, where diffusers without the metadata would apply 1.
    let cfg = tiny_wan(ModelType::T2V, 32, 2, 2, 8);
    let dir = TempDir::new("lora-diffusers");
    let base = random_weights(&cfg, 5);
    let g = dir.path().join("generator");
    save_checkpoint(&base, &cfg, Layout::Original, &g, None).unwrap();
    let mut rng = TestRng::new(8);
    let mut lora = LoraConfig {
        rank: 4,
        alpha: 8.0,
        ..LoraConfig::default()
    };
    let adapters: BTreeMap<String, HostTensor> = init_lora(&cfg, &lora, 2)
        .unwrap()
        .into_iter()
        .map(|(k, t)| {
            let data = if k.ends_with("lora_B.weight") {
                rng.vec(t.numel()).iter().map(|v| v * 0.2).collect()
            } else {
                t.to_f32()
            };
            (k, HostTensor::from_f32(t.shape.clone(), data).unwrap())
        })
        .collect();
    let m = dir.path().join("merged");
    save_checkpoint(
        &merge_lora(&base, &adapters, &lora).unwrap(),
        &cfg,
        Layout::Original,
        &m,
        None,
    )
    .unwrap();
    for layout in [LoraKeyNames::Diffusers, LoraKeyNames::ComfyUi] {
        lora.key_names = layout;
        let l = dir.path().join(format!("lora-{layout:?}.safetensors"));
        save_peft(&l, &adapters, &lora).unwrap();
        let o = Command::new(&py)
            .arg(root().join("tools/oracle/check_lora_diffusers.py"))
            .args(["--generator", s(&g), "--lora", s(&l), "--merged", s(&m)])
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            o.status.success(),
            "{layout:?}: diffusers output differs from prfl's merged model:\n{text}"
        );
        eprintln!("{layout:?}: {}", text.lines().last().unwrap_or(""));
    }
}
