//! The command line end to end on a tiny model and the synthetic world: inspect, forward,
//! train-reward (with resume), eval-reward, score, finetune (LoRA) and sample with the result.

use std::path::{Path, PathBuf};
use std::process::Command;

use prfl::model::checkpoint::save_checkpoint;
use prfl::model::init::random_weights;
use prfl::model::names::Layout;
use prfl::model::ModelType;
use prfl::safetensors::{read_safetensors, write_safetensors};
use prfl::synthetic::{generate_dataset, prompt_states, WorldConfig};
use prfl::tensor::HostTensor;
use prfl::testutil::tiny_wan;

// The emulated CUDA device's build (shared with tests/cuda_backend.rs).
#[path = "common/cuda_emu.rs"]
mod cuda_emu;

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

fn tmp() -> PathBuf {
    let d = std::env::temp_dir().join(format!("prfl-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn reward_and_prfl_pipeline_from_the_command_line() {
    let dir = tmp();
    let world = WorldConfig::default();
    let cfg = tiny_wan(ModelType::T2V, 32, 2, 3, world.text_dim);
    let gen = dir.join("gen");
    save_checkpoint(
        &random_weights(&cfg, 1),
        &cfg,
        Layout::Diffusers,
        &gen,
        None,
    )
    .unwrap();
    let data = dir.join("data");
    generate_dataset(&data, &world, 12, 4, 3).unwrap();

    let out = prfl(&["inspect", s(&gen)]);
    assert!(
        out.contains("diffusers") && out.contains("num_layers    3"),
        "{out}"
    );

    std::fs::write(
        dir.join("reward.toml"),
        "generator = \"gen\"\ndata = \"data\"\nout = \"reward\"\nsteps = 6\nbatch_size = 2\nholdout = 0.25\ncheckpoint_every = 2\neval_timesteps = [400.0, 800.0]\nresume = true\n[model]\nblocks = 2\nheads = 2\nhidden = [16, 8]\n[train]\nloss = \"ce\"\nhead_lr = 1e-3\n",
    )
    .unwrap();
    let out = prfl(&["train-reward", s(&dir.join("reward.toml"))]);
    assert!(
        out.contains("reward model: 2 of 3 generator blocks") && out.contains("6 steps"),
        "{out}"
    );
    // Asking for more steps resumes from the checkpoint instead of starting over.
    let cfg_text = std::fs::read_to_string(dir.join("reward.toml"))
        .unwrap()
        .replace("steps = 6", "steps = 8");
    std::fs::write(dir.join("reward.toml"), cfg_text).unwrap();
    let out = prfl(&["train-reward", s(&dir.join("reward.toml"))]);
    assert!(
        out.contains("resumed from") && out.contains("at step 6"),
        "{out}"
    );
    let ckpt = dir.join("reward/checkpoint.safetensors");

    let out = prfl(&[
        "eval-reward",
        "--generator",
        s(&gen),
        "--reward",
        s(&ckpt),
        "--data",
        s(&data),
        "--timesteps",
        "201,800",
    ]);
    assert!(
        out.contains("201") && out.contains("800") && out.contains("auc"),
        "{out}"
    );

    // Score one clip at two noise levels.
    let clip = read_safetensors(&data.join("clip-00000.safetensors")).unwrap();
    let input = dir.join("score_in.safetensors");
    write_safetensors(
        &input,
        [("latent", &clip["latent"]), ("text", &clip["text"])],
        None,
    )
    .unwrap();
    let out = prfl(&[
        "score",
        "--generator",
        s(&gen),
        "--reward",
        s(&ckpt),
        "--input",
        s(&input),
        "--timestep",
        "400",
    ]);
    assert!(out.contains("\"scores\""), "{out}");

    std::fs::write(
        dir.join("prfl.toml"),
        "generator = \"gen\"\nreward = \"reward/checkpoint.safetensors\"\ndata = \"data\"\nout = \"prfl\"\nsteps = 2\n[prfl]\nsteps = 4\nlr = 1e-3\n[prfl.lora]\nrank = 2\nalpha = 2.0\ntargets = [\"self_attn.q\", \"self_attn.v\"]\n",
    )
    .unwrap();
    let out = prfl(&["finetune", s(&dir.join("prfl.toml"))]);
    assert!(out.contains("LoRA mode") && out.contains("merged"), "{out}");
    let out = prfl(&["inspect", s(&dir.join("prfl/merged"))]);
    assert!(out.contains("original"), "{out}");

    let text = HostTensor::from_f32(
        vec![world.text_len, world.text_dim],
        prompt_states(&world, 0),
    )
    .unwrap();
    let prompt = dir.join("prompt.safetensors");
    write_safetensors(&prompt, [("text", &text)], None).unwrap();
    let sampled = dir.join("sampled.safetensors");
    let lora = dir.join("prfl/lora.safetensors");
    prfl(&[
        "sample",
        "--generator",
        s(&gen),
        "--lora",
        s(&lora),
        "--text",
        s(&prompt),
        "--negative",
        s(&prompt),
        "--frames",
        "3",
        "--height",
        "4",
        "--width",
        "4",
        "--count",
        "2",
        "--steps",
        "3",
        "--out",
        s(&sampled),
    ]);
    let x = read_safetensors(&sampled).unwrap();
    assert_eq!(x["latent"].shape, vec![2, 16, 3, 4, 4]);
    assert!(x["latent"].to_f32().iter().all(|v| v.is_finite()));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_paths_and_inputs_fail_with_a_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_prfl"))
        .args(["inspect", "/nonexistent/ckpt"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/ckpt"), "{err}");
}

/// `prfl devices` never fails, and shows every CUDA library: NOT FOUND where it is absent, else
/// its version and the file in use. With `PRFL_CUDA_LIB_DIR` (a folder of CUDA 13 libraries), or
/// the emulated device's folder with `PRFL_CUDA_EMULATE`, each must be that folder's copy, at
/// version 13, and a GPU is listed.
#[test]
fn devices_lists_each_cuda_library_with_its_file_and_version() {
    let dir = match cuda_emu::plain_build_if_requested() {
        Some(emu) => {
            let dir = emu.lib_dir.to_string_lossy().into_owned();
            let out = prfl(&["devices", "--cuda-lib-dir", &dir]);
            assert!(
                out.lines()
                    .any(|l| l.starts_with("device") && l.contains("cuda:0")),
                "the emulated GPU is not listed:\n{out}"
            );
            Some(dir)
        }
        None => std::env::var("PRFL_CUDA_LIB_DIR").ok(),
    };
    let mut args = vec!["devices"];
    if let Some(d) = &dir {
        args.extend(["--cuda-lib-dir", d.as_str()]);
    }
    let out = prfl(&args);
    for lib in [
        "CUDA driver (libcuda)",
        "NVRTC (libnvrtc)",
        "cuBLASLt (libcublasLt)",
        "cuBLAS (libcublas)",
    ] {
        let line = out
            .lines()
            .find(|l| l.starts_with("library") && l.contains(lib))
            .unwrap_or_else(|| panic!("no line for {lib}:\n{out}"));
        if dir.is_some() {
            assert!(
                line.contains("13.") && line.contains("(the library folder's)"),
                "{line}"
            );
        } else {
            // Absent, or a version and the file it was loaded from.
            assert!(line.contains("NOT FOUND") || line.contains(", /"), "{line}");
        }
    }
}

/// `prfl encode` / `prfl decode` on the tiny VAE fixture (tests/fixtures/vae/tiny_z4): frames
/// from safetensors (f32 and u8), a GIF and a PNG folder; latents normalised as the library's
/// `WanVae::encode` gives them; decoded frames to safetensors, a GIF and PNGs.
#[test]
fn vae_encode_and_decode_from_the_command_line() {
    use prfl::vae::{Video, WanVae};
    let dir = std::env::temp_dir().join(format!("prfl-cli-vae-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let vae_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vae/tiny_z4");
    let cases = read_safetensors(&vae_dir.join("cases.safetensors")).unwrap();
    let frames = &cases["t5.frames"]; // [5, 16, 24, 3] in [-1, 1]
    let input = dir.join("frames.safetensors");
    write_safetensors(&input, [("frames", frames)], None).unwrap();

    let latent = dir.join("latent.safetensors");
    prfl(&[
        "encode",
        "--vae",
        s(&vae_dir),
        "--input",
        s(&input),
        "--out",
        s(&latent),
    ]);
    let z = read_safetensors(&latent).unwrap().remove("latent").unwrap();
    assert_eq!(z.shape, vec![4, 2, 2, 3]);
    // The library's normalised encoding of the same frames.
    let vae = WanVae::load(&vae_dir).unwrap();
    let src = frames.to_f32();
    let mut v = Video::zeros(3, 5, 16, 24);
    for (i, px) in src.chunks(3).enumerate() {
        for (c, val) in px.iter().enumerate() {
            v.data[c * 5 * 384 + i] = *val;
        }
    }
    assert_eq!(z.to_f32(), vae.encode(&v).unwrap().data);

    // The original .pth gives the same latents.
    let latent_pth = dir.join("latent_pth.safetensors");
    let pth = vae_dir.join("Wan2.1_VAE.pth");
    prfl(&[
        "encode",
        "--vae",
        s(&pth),
        "--input",
        s(&input),
        "--out",
        s(&latent_pth),
    ]);
    assert_eq!(read_safetensors(&latent_pth).unwrap()["latent"], z);

    // Decode to each output kind.
    let out_st = dir.join("decoded.safetensors");
    prfl(&[
        "decode",
        "--vae",
        s(&vae_dir),
        "--input",
        s(&latent),
        "--out",
        s(&out_st),
    ]);
    let decoded = read_safetensors(&out_st).unwrap().remove("frames").unwrap();
    assert_eq!(decoded.shape, vec![5, 16, 24, 3]);
    assert!(decoded.to_f32().iter().all(|x| (-1.0..=1.0).contains(x)));
    let gif = dir.join("decoded.gif");
    prfl(&[
        "decode",
        "--vae",
        s(&vae_dir),
        "--input",
        s(&latent),
        "--out",
        s(&gif),
    ]);
    let pngs = dir.join("pngs");
    prfl(&[
        "decode",
        "--vae",
        s(&vae_dir),
        "--input",
        s(&latent),
        "--out",
        s(&pngs),
    ]);
    let n = std::fs::read_dir(&pngs).unwrap().count();
    assert_eq!(n, 5);

    // Frames back in from the GIF and the PNG folder.
    for source in [&gif, &pngs] {
        let again = dir.join("again.safetensors");
        prfl(&[
            "encode",
            "--vae",
            s(&vae_dir),
            "--input",
            s(source),
            "--out",
            s(&again),
        ]);
        let z2 = read_safetensors(&again).unwrap().remove("latent").unwrap();
        assert_eq!(z2.shape, z.shape, "{}", source.display());
    }
    // PNG frames are the decoded frames quantised to 8 bits: the same latents as their u8
    // safetensors form.
    let bytes: Vec<u8> = decoded
        .to_f32()
        .iter()
        .map(|x| ((x + 1.0) * 127.5).round() as u8)
        .collect();
    let u8_file = dir.join("frames_u8.safetensors");
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::U8, vec![5, 16, 24, 3], &bytes)
            .unwrap();
    safetensors::serialize_to_file([("frames", view)], &None, &u8_file).unwrap();
    let from_u8 = dir.join("from_u8.safetensors");
    prfl(&[
        "encode",
        "--vae",
        s(&vae_dir),
        "--input",
        s(&u8_file),
        "--out",
        s(&from_u8),
    ]);
    let from_png = dir.join("from_png.safetensors");
    prfl(&[
        "encode",
        "--vae",
        s(&vae_dir),
        "--input",
        s(&pngs),
        "--out",
        s(&from_png),
    ]);
    assert_eq!(
        read_safetensors(&from_u8).unwrap()["latent"],
        read_safetensors(&from_png).unwrap()["latent"]
    );

    // A frame count the VAE cannot chunk fails with a message.
    let four = HostTensor::from_f32(vec![4, 16, 24, 3], vec![0.0; 4 * 16 * 24 * 3]).unwrap();
    write_safetensors(&input, [("frames", &four)], None).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_prfl"))
        .args([
            "encode",
            "--vae",
            s(&vae_dir),
            "--input",
            s(&input),
            "--out",
            s(&latent),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("1 + 4k"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
