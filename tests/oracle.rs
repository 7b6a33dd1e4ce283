//! The engine against the PyTorch oracle (`tools/oracle/make_fixtures.py`): for every fixture case
//! and both checkpoint layouts, the f32 forward within 1e-5 and every gradient (inputs and each
//! parameter) within 1e-4, as max|a - b| / max|b| per tensor.

use std::path::{Path, PathBuf};

use prfl::backend::cpu::Cpu;
use prfl::model::checkpoint::Checkpoint;
use prfl::model::host::{run_forward, RunOptions};
use prfl::model::names::Layout;
use prfl::safetensors::read_safetensors;
use prfl::testutil::max_rel_err;

fn fixture(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/wan")
        .join(case)
}

fn check(case: &str, layout: &str, recompute: bool) {
    let dir = fixture(case);
    let ckpt = Checkpoint::open(&dir.join(layout)).unwrap();
    let inputs = read_safetensors(&dir.join("inputs.safetensors")).unwrap();
    let expected = read_safetensors(&dir.join("expected.safetensors")).unwrap();
    let got = run_forward(
        &Cpu,
        &ckpt,
        &inputs,
        RunOptions {
            grad: true,
            recompute,
        },
    )
    .unwrap();

    let v_err = max_rel_err(&got["v"].to_f32(), &expected["v"].to_f32());
    assert!(
        v_err <= 1e-5,
        "{case}/{layout}: forward relative error {v_err:e} > 1e-5"
    );

    let mut checked = 0;
    let mut worst = (0.0f32, String::new());
    for (name, want) in &expected {
        let Some(canonical) = name.strip_prefix("grad.") else {
            continue;
        };
        // Input gradients keep their names; parameter gradients are named in the checkpoint's layout.
        let key = match canonical {
            "x" | "context" | "y" | "clip_fea" => name.clone(),
            p => format!("grad.{}", ckpt.layout().from_canonical(p)),
        };
        let have = got
            .get(&key)
            .unwrap_or_else(|| panic!("{case}/{layout}: output lacks `{key}`"));
        assert_eq!(have.shape, want.shape, "{case}/{layout}: shape of `{key}`");
        let err = max_rel_err(&have.to_f32(), &want.to_f32());
        if err > worst.0 {
            worst = (err, key.clone());
        }
        checked += 1;
    }
    assert!(
        worst.0 <= 1e-4,
        "{case}/{layout}: gradient `{}` relative error {:e} > 1e-4",
        worst.1,
        worst.0
    );
    let n_params = ckpt.parameter_count();
    assert!(checked > 10, "{case}: only {checked} gradients compared");
    assert_eq!(
        got.keys().filter(|k| k.starts_with("grad.")).count(),
        checked,
        "{case}/{layout}: the engine produced gradients the oracle has no counterpart for ({n_params} parameters)"
    );
    eprintln!(
        "{case}/{layout}: forward {v_err:.2e}, worst gradient {:.2e} ({})",
        worst.0, worst.1
    );
}

#[test]
fn t2v_small_original_sharded_f32() {
    check("t2v_small", "original", false);
}

#[test]
fn t2v_small_diffusers_f32_with_recompute() {
    check("t2v_small", "diffusers", true);
}

#[test]
fn i2v_small_original_f16() {
    check("i2v_small", "original", false);
}

#[test]
fn i2v_small_diffusers_f16() {
    check("i2v_small", "diffusers", true);
}

#[test]
fn t2v_head_dim_128_original_bf16() {
    check("t2v_hd128", "original", false);
}

#[test]
fn t2v_head_dim_128_diffusers_bf16() {
    check("t2v_hd128", "diffusers", false);
}

#[test]
fn both_layouts_hold_the_same_model() {
    assert_eq!(
        Layout::Original.from_canonical("blocks.0.norm3.weight"),
        "blocks.0.norm3.weight"
    );
    for case in ["t2v_small", "i2v_small", "t2v_hd128"] {
        let a = Checkpoint::open(&fixture(case).join("original")).unwrap();
        let b = Checkpoint::open(&fixture(case).join("diffusers")).unwrap();
        assert_eq!(
            a.config(),
            b.config(),
            "{case}: configurations differ between layouts"
        );
        assert_eq!(
            a.load_all().unwrap(),
            b.load_all().unwrap(),
            "{case}: tensors differ between layouts"
        );
    }
}
