//! The Wan2.1 VAE (`prfl::vae`) against diffusers' `AutoencoderKLWan` on tiny random
//! configurations (fixtures from `tools/oracle/make_vae_fixtures.py`): the encoder's posterior
//! mean and the decoder, for 1, 5 and 9 frames with H != W, in both weight layouts (diffusers
//! safetensors and the original `.pth`), plus loading errors.
//!
//! Relative error is `max_i |rust_i - torch_i| / max_i |torch_i|` over a whole tensor (the
//! largest absolute difference, scaled by the reference's largest magnitude); the bound is 1e-5.

use std::path::{Path, PathBuf};

use prfl::safetensors::read_safetensors;
use prfl::tensor::HostTensor;
use prfl::vae::{VaeConfig, Video, WanVae};

const TOL: f32 = 1e-5;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/vae")
        .join(name)
}

fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let diff = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    let scale = want.iter().map(|b| b.abs()).fold(0.0f32, f32::max);
    diff / scale.max(f32::MIN_POSITIVE)
}

/// `[T, H, W, 3]` -> `[3, T, H, W]`.
fn frames_video(t: &HostTensor) -> Video {
    let [tt, h, w, c] = t.shape[..] else {
        panic!("frames shape {:?}", t.shape)
    };
    let src = t.to_f32();
    let mut v = Video::zeros(c, tt, h, w);
    for f in 0..tt {
        for p in 0..h * w {
            for ch in 0..c {
                v.data[(ch * tt + f) * h * w + p] = src[(f * h * w + p) * c + ch];
            }
        }
    }
    v
}

fn video4(t: &HostTensor) -> Video {
    let [c, f, h, w] = t.shape[..] else {
        panic!("shape {:?}", t.shape)
    };
    Video::new(c, f, h, w, t.to_f32()).unwrap()
}

/// Every case of a fixture against one loaded VAE; returns the outputs for layout comparisons.
fn check_cases(vae: &WanVae, name: &str, what: &str) -> Vec<Video> {
    let cases = read_safetensors(&fixture(name).join("cases.safetensors")).unwrap();
    let mut outs = Vec::new();
    let case_names: Vec<String> = cases
        .keys()
        .filter_map(|k| k.strip_suffix(".frames").map(str::to_string))
        .collect();
    assert!(!case_names.is_empty());
    for case in case_names {
        let frames = frames_video(&cases[&format!("{case}.frames")]);
        let want_mean = video4(&cases[&format!("{case}.mean")]);
        let mean = vae.encode_mean(&frames).unwrap();
        assert_eq!(mean.shape(), want_mean.shape(), "{name}/{case} mean shape");
        let e = rel_err(&mean.data, &want_mean.data);
        eprintln!("{name}/{case} ({what}): encode mean rel err {e:e}");
        assert!(
            e <= TOL,
            "{name}/{case} ({what}): encode mean rel err {e:e}"
        );

        let latent = video4(&cases[&format!("{case}.latent")]);
        let want = video4(&cases[&format!("{case}.decoded")]);
        let decoded = vae.decode_raw(&latent).unwrap();
        assert_eq!(decoded.shape(), want.shape(), "{name}/{case} decoded shape");
        let e = rel_err(&decoded.data, &want.data);
        eprintln!("{name}/{case} ({what}): decode rel err {e:e}");
        assert!(e <= TOL, "{name}/{case} ({what}): decode rel err {e:e}");
        assert_eq!(decoded.t, frames.t, "1 + 4 (F - 1) frames come back");
        outs.push(mean);
        outs.push(decoded);
    }
    outs
}

#[test]
fn encoder_mean_and_decoder_match_diffusers_in_the_diffusers_layout() {
    for name in ["tiny_z4", "tiny_z16"] {
        let vae = WanVae::load(&fixture(name)).unwrap();
        check_cases(&vae, name, "safetensors");
    }
}

#[test]
fn the_original_pth_loads_to_the_same_model_as_the_diffusers_layout() {
    for name in ["tiny_z4", "tiny_z16"] {
        let from_st = WanVae::load(&fixture(name)).unwrap();
        let from_pth = WanVae::load(&fixture(name).join("Wan2.1_VAE.pth")).unwrap();
        assert_eq!(from_st.config(), from_pth.config());
        let a = check_cases(&from_pth, name, "pth");
        let cases = read_safetensors(&fixture(name).join("cases.safetensors")).unwrap();
        // Same weights, same arithmetic: bit-identical outputs.
        let latent = video4(
            cases
                .iter()
                .find(|(k, _)| k.ends_with(".latent"))
                .unwrap()
                .1,
        );
        assert_eq!(
            from_st.decode_raw(&latent).unwrap(),
            from_pth.decode_raw(&latent).unwrap()
        );
        assert!(!a.is_empty());
    }
}

#[test]
fn latents_are_normalised_with_the_config_mean_and_std() {
    let vae = WanVae::load(&fixture("tiny_z4")).unwrap();
    let cases = read_safetensors(&fixture("tiny_z4").join("cases.safetensors")).unwrap();
    let frames = frames_video(&cases["t5.frames"]);
    let mean = vae.encode_mean(&frames).unwrap();
    let z = vae.encode(&frames).unwrap();
    let cfg = vae.config();
    let n = z.t * z.plane();
    for c in 0..z.c {
        for i in 0..n {
            let want = (mean.data[c * n + i] - cfg.latents_mean[c]) / cfg.latents_std[c];
            assert!((z.data[c * n + i] - want).abs() <= 1e-6 * (1.0 + want.abs()));
        }
    }
    // decode(normalised) == decode_raw(z * std + mean).
    let a = vae.decode(&z).unwrap();
    let mut raw = z.clone();
    prfl::vae::latent::denormalise(&mut raw, cfg);
    assert!(rel_err(&raw.data, &mean.data) <= 1e-6);
    assert_eq!(a, vae.decode_raw(&raw).unwrap());
    assert!(a.data.iter().all(|v| (-1.0..=1.0).contains(v)));
}

#[test]
fn bad_inputs_are_refused_with_a_message() {
    let vae = WanVae::load(&fixture("tiny_z4")).unwrap();
    let msg = vae
        .encode_mean(&Video::zeros(3, 4, 16, 24))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("1 + 4k"), "{msg}");
    let msg = vae
        .encode_mean(&Video::zeros(3, 1, 12, 24))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("multiple of 8"), "{msg}");
    let msg = vae
        .decode(&Video::zeros(5, 1, 2, 3))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("[4, F, h, w]"), "{msg}");
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("prfl-vae-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn truncated_corrupt_and_mismatched_files_fail_naming_the_file_and_tensor() {
    let src = fixture("tiny_z4");
    // A truncated safetensors file.
    let dir = temp_dir("trunc");
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let st = std::fs::read(src.join("diffusion_pytorch_model.safetensors")).unwrap();
    let weights = dir.join("diffusion_pytorch_model.safetensors");
    std::fs::write(&weights, &st[..st.len() / 2]).unwrap();
    let msg = WanVae::load(&dir).unwrap_err().to_string();
    assert!(msg.contains("diffusion_pytorch_model.safetensors"), "{msg}");

    // A tensor missing: rewrite the file without one.
    let mut all = read_safetensors(&src.join("diffusion_pytorch_model.safetensors")).unwrap();
    all.remove("decoder.mid_block.attentions.0.proj.bias")
        .unwrap();
    prfl::safetensors::write_safetensors(&weights, all.iter(), None).unwrap();
    let msg = WanVae::load(&dir).unwrap_err().to_string();
    assert!(
        msg.contains("decoder.mid_block.attentions.0.proj.bias"),
        "{msg}"
    );
    assert!(msg.contains("diffusion_pytorch_model.safetensors"), "{msg}");

    // A tensor of the wrong shape.
    let mut all = read_safetensors(&src.join("diffusion_pytorch_model.safetensors")).unwrap();
    all.insert(
        "encoder.conv_in.bias".into(),
        HostTensor::from_f32(vec![3], vec![0.0; 3]).unwrap(),
    );
    prfl::safetensors::write_safetensors(&weights, all.iter(), None).unwrap();
    let msg = WanVae::load(&dir).unwrap_err().to_string();
    assert!(
        msg.contains("encoder.conv_in.bias") && msg.contains("shape"),
        "{msg}"
    );

    // A configuration that does not fit the weights (another z_dim).
    std::fs::write(&weights, &st).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg["z_dim"] = 16.into();
    cfg["latents_mean"] = serde_json::json!(vec![0.0; 16]);
    cfg["latents_std"] = serde_json::json!(vec![1.0; 16]);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let msg = WanVae::load(&dir).unwrap_err().to_string();
    assert!(msg.contains("shape"), "{msg}");

    // A truncated and a corrupt .pth.
    let pth = std::fs::read(src.join("Wan2.1_VAE.pth")).unwrap();
    let bad = dir.join("cut.pth");
    std::fs::write(&bad, &pth[..pth.len() / 3]).unwrap();
    let cfg = VaeConfig::from_file(&src.join("config.json")).unwrap();
    let msg = WanVae::load_pth(&bad, cfg.clone()).unwrap_err().to_string();
    assert!(msg.contains("cut.pth"), "{msg}");
    let mut corrupt = pth.clone();
    for b in corrupt.iter_mut().take(64) {
        *b ^= 0x5a;
    }
    std::fs::write(&bad, &corrupt).unwrap();
    let msg = WanVae::load_pth(&bad, cfg.clone()).unwrap_err().to_string();
    assert!(msg.contains("cut.pth"), "{msg}");
    // A .pth of the wrong configuration names the tensor.
    let small = VaeConfig {
        num_res_blocks: 2,
        ..cfg
    };
    let msg = WanVae::load_pth(&src.join("Wan2.1_VAE.pth"), small)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("Wan2.1_VAE.pth") && msg.contains('`'), "{msg}");
    let _ = std::fs::remove_dir_all(&dir);
}
