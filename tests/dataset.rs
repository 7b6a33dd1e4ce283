//! The reward dataset on disk: reading a generated synthetic dataset, batching and splitting
//! invariants, storage dtypes, I2V conditioning, and the validation errors of bad files.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use prfl::reward::dataset::{
    write_clip, write_pair, BatchLatents, Conditioning, Dataset, I2vConditioning, Sample,
    SampleKind, TokenStates,
};
use prfl::safetensors::write_safetensors;
use prfl::synthetic::{self, WorldConfig};
use prfl::tensor::{DType, HostTensor};
use prfl::testutil::TempDir;

fn text(len: usize, dim: usize) -> Conditioning {
    Conditioning {
        text: TokenStates {
            data: (0..len * dim).map(|i| i as f32 * 0.01).collect(),
            len,
            dim,
        },
        i2v: None,
    }
}

fn ramp(n: usize) -> Vec<f32> {
    (0..n).map(|i| (i as f32 * 0.37).sin()).collect()
}

/// The synthetic world's dataset plus clips and pairs of other shapes and text lengths, so
/// batching has several groups to keep apart.
fn mixed_dataset(dir: &Path) -> Dataset {
    let cfg = WorldConfig::default();
    synthetic::generate_dataset(dir, &cfg, 10, 5, 1).unwrap();
    let tall = [16, 5, 10, 8];
    let short = [16, 3, 8, 8];
    for i in 0..3 {
        let path = dir.join(format!("extra-tall-{i}.safetensors"));
        write_clip(
            &path,
            tall,
            &ramp(16 * 5 * 10 * 8),
            (i % 2) as f32,
            &text(8, 32),
            DType::F32,
        )
        .unwrap();
        let path = dir.join(format!("extra-short-text-{i}.safetensors"));
        write_clip(
            &path,
            short,
            &ramp(16 * 3 * 64),
            1.0,
            &text(5, 32),
            DType::F32,
        )
        .unwrap();
    }
    let path = dir.join("extra-pair.safetensors");
    let n = 16 * 3 * 64;
    write_pair(
        &path,
        short,
        &ramp(n),
        &vec![0.5; n],
        &text(5, 32),
        DType::F32,
    )
    .unwrap();
    Dataset::open(dir).unwrap()
}

#[test]
fn opens_a_generated_synthetic_dataset() {
    let dir = TempDir::new("synthetic");
    let cfg = WorldConfig::default();
    synthetic::generate_dataset(dir.path(), &cfg, 8, 3, 42).unwrap();
    let d = Dataset::open(dir.path()).unwrap();
    assert_eq!((d.len(), d.clips(), d.pairs()), (11, 8, 3));
    assert_eq!(d.latent_channels(), Some(16));
    assert_eq!(d.text_dim(), Some(32));
    assert!(!d.is_i2v());
    // Files are ordered by name: clips before pairs.
    assert!(d.path(0).ends_with("clip-00000.safetensors"));
    assert!(d.path(10).ends_with("pair-00002.safetensors"));
    let mut good = 0;
    for s in d.samples() {
        match s {
            Sample::Clip {
                latent,
                shape,
                label,
                ..
            } => {
                assert_eq!(*shape, cfg.shape());
                good += (*label == 1.0) as usize;
                // The labels are the world's ground truth, which the rule recovers.
                assert_eq!(synthetic::is_good(latent, *shape), *label == 1.0);
            }
            Sample::Pair {
                win, lose, shape, ..
            } => {
                assert!(synthetic::is_good(win, *shape));
                assert!(!synthetic::is_good(lose, *shape));
            }
        }
    }
    assert_eq!(good, 4);
    // The same seed writes the same data.
    let again = TempDir::new("synthetic-again");
    synthetic::generate_dataset(again.path(), &cfg, 8, 3, 42).unwrap();
    assert_eq!(Dataset::open(again.path()).unwrap().samples(), d.samples());
}

#[test]
fn batches_cover_every_sample_once_and_stack() {
    let dir = TempDir::new("batches");
    let d = mixed_dataset(dir.path());
    assert_eq!((d.len(), d.clips(), d.pairs()), (22, 16, 6));
    for epoch in 0..3 {
        let batches = d.batches(4, 7, epoch);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..d.len()).collect::<Vec<_>>(), "epoch {epoch}");
        for batch in &batches {
            assert!(!batch.is_empty() && batch.len() <= 4);
            let first = d.sample(batch[0]);
            for &i in batch {
                let s = d.sample(i);
                assert_eq!(s.kind(), first.kind());
                assert_eq!(s.shape(), first.shape());
                assert_eq!(s.cond().text.len, first.cond().text.len);
            }
            let stacked = d.stack(batch).unwrap();
            let b = batch.len();
            let numel: usize = first.shape().iter().product();
            assert_eq!(stacked.size(), b);
            assert_eq!(stacked.kind(), first.kind());
            assert_eq!(stacked.text.len(), b * stacked.text_len * stacked.text_dim);
            match &stacked.latents {
                BatchLatents::Clips { latents, labels } => {
                    assert_eq!(latents.len(), b * numel);
                    assert_eq!(labels.len(), b);
                    // Stacking keeps each sample's data in its slot.
                    let Sample::Clip { latent, label, .. } = d.sample(batch[b - 1]) else {
                        panic!("a clip batch holds clips");
                    };
                    assert_eq!(&latents[(b - 1) * numel..], &latent[..]);
                    assert_eq!(labels[b - 1], *label);
                }
                BatchLatents::Pairs { win, lose } => {
                    assert_eq!((win.len(), lose.len()), (b * numel, b * numel));
                }
            }
        }
    }
    // Deterministic in (seed, epoch), and each of them changes the order.
    assert_eq!(d.batches(4, 7, 1), d.batches(4, 7, 1));
    assert_ne!(d.batches(4, 7, 1), d.batches(4, 7, 2));
    assert_ne!(d.batches(4, 7, 1), d.batches(4, 8, 1));
    // Samples that cannot share a forward are refused by `stack`.
    let clip = (0..d.len())
        .find(|&i| d.sample(i).kind() == SampleKind::Clip)
        .unwrap();
    let pair = (0..d.len())
        .find(|&i| d.sample(i).kind() == SampleKind::Pair)
        .unwrap();
    let err = d.stack(&[clip, pair]).unwrap_err().to_string();
    assert!(err.contains("cannot share a batch"), "{err}");
}

#[test]
fn split_is_deterministic_stratified_and_disjoint() {
    let dir = TempDir::new("split");
    let names =
        |d: &Dataset| -> Vec<PathBuf> { (0..d.len()).map(|i| d.path(i).to_path_buf()).collect() };
    let d = mixed_dataset(dir.path());
    let all: HashSet<PathBuf> = names(&d).into_iter().collect();
    let (train, holdout) = d.clone().split(0.25, 3);
    let (train2, holdout2) = d.clone().split(0.25, 3);
    assert_eq!(names(&train), names(&train2));
    assert_eq!(names(&holdout), names(&holdout2));
    let (_, other) = d.clone().split(0.25, 4);
    assert_ne!(names(&holdout), names(&other));
    // Disjoint and complete.
    let mut union: Vec<PathBuf> = names(&train);
    union.extend(names(&holdout));
    assert_eq!(union.len(), all.len());
    assert_eq!(union.into_iter().collect::<HashSet<_>>(), all);
    // Stratified: 9 good clips, 7 bad clips and 6 pairs give round(2.25), round(1.75) and
    // round(1.5), 2 each.
    let count = |d: &Dataset, label: f32| {
        d.samples()
            .iter()
            .filter(|s| matches!(s, Sample::Clip { label: l, .. } if *l == label))
            .count()
    };
    assert_eq!((count(&holdout, 1.0), count(&holdout, 0.0)), (2, 2));
    assert_eq!(holdout.pairs(), 2);
    // Both parts keep file order.
    let h = names(&holdout);
    assert!(h.windows(2).all(|w| w[0].file_name() < w[1].file_name()));
    // The extremes.
    let (all_train, none) = d.clone().split(0.0, 1);
    assert_eq!((all_train.len(), none.len()), (22, 0));
    let (none, all_held) = d.split(1.0, 1);
    assert_eq!((none.len(), all_held.len()), (0, 22));
}

#[test]
fn reduced_precision_files_and_i2v_conditioning_load() {
    let dir = TempDir::new("dtypes");
    let shape = [4, 2, 4, 6];
    let n = 4 * 2 * 4 * 6;
    let latent = ramp(n);
    let cond = Conditioning {
        text: TokenStates {
            data: ramp(3 * 8),
            len: 3,
            dim: 8,
        },
        i2v: Some(I2vConditioning {
            image: TokenStates {
                data: ramp(2 * 5),
                len: 2,
                dim: 5,
            },
            y: ramp(6 * 2 * 4 * 6),
            y_channels: 6,
        }),
    };
    let bf16 = dir.path().join("a.safetensors");
    write_clip(&bf16, shape, &latent, 1.0, &cond, DType::BF16).unwrap();
    let f16 = dir.path().join("b.safetensors");
    write_pair(&f16, shape, &latent, &latent, &cond, DType::F16).unwrap();
    // Ignored: a hidden file and another extension.
    std::fs::write(dir.path().join(".c.safetensors"), b"junk").unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"junk").unwrap();
    let d = Dataset::open(dir.path()).unwrap();
    assert_eq!((d.clips(), d.pairs()), (1, 1));
    assert!(d.is_i2v());
    let Sample::Clip { latent: got, .. } = d.sample(0) else {
        panic!("a.safetensors is a clip");
    };
    for (a, b) in latent.iter().zip(got) {
        assert!((a - b).abs() <= 4e-3, "{a} vs {b} through bf16");
    }
    let batch = d.stack(&[0]).unwrap();
    let i2v = batch.i2v.unwrap();
    assert_eq!((i2v.image_len, i2v.image_dim, i2v.y_channels), (2, 5, 6));
    assert_eq!(i2v.y.len(), 6 * 2 * 4 * 6);
    // A T2V sample cannot join an I2V dataset.
    let t2v = dir.path().join("c.safetensors");
    write_clip(&t2v, shape, &latent, 0.0, &text(3, 8), DType::F32).unwrap();
    let err = Dataset::open(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("c.safetensors") && err.contains("I2V"),
        "{err}"
    );
}

/// Writes raw tensors (bypassing the validating writers) and returns the error of opening.
fn open_error(tensors: &[(&str, Vec<usize>, Vec<f32>)]) -> String {
    let dir = TempDir::new("invalid");
    // A valid neighbour, so the error must come from the bad file, not the directory.
    let good = dir.path().join("a-good.safetensors");
    write_clip(&good, [2, 1, 2, 2], &[0.0; 8], 1.0, &text(1, 3), DType::F32).unwrap();
    let map: BTreeMap<String, HostTensor> = tensors
        .iter()
        .map(|(k, s, v)| {
            (
                k.to_string(),
                HostTensor::from_f32(s.clone(), v.clone()).unwrap(),
            )
        })
        .collect();
    write_safetensors(&dir.path().join("b-bad.safetensors"), &map, None).unwrap();
    let err = Dataset::open(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("b-bad.safetensors"),
        "the error names the file: {err}"
    );
    err
}

fn clip_tensors(shape: Vec<usize>, label: f32) -> Vec<(&'static str, Vec<usize>, Vec<f32>)> {
    let n = shape.iter().product();
    vec![
        ("latent", shape, vec![0.0; n]),
        ("text", vec![1, 3], vec![0.0; 3]),
        ("label", vec![1], vec![label]),
    ]
}

#[test]
fn validation_errors_name_the_file_and_the_problem() {
    let mut missing_label = clip_tensors(vec![2, 1, 2, 2], 1.0);
    missing_label.retain(|(k, _, _)| *k != "label");
    let err = open_error(&missing_label);
    assert!(err.contains("missing tensor `label`"), "{err}");

    let err = open_error(&clip_tensors(vec![2, 1, 2, 2], 0.5));
    assert!(err.contains("`label` must be 0 or 1, got 0.5"), "{err}");

    let mut nan = clip_tensors(vec![2, 1, 2, 2], 1.0);
    nan[0].2[5] = f32::NAN;
    let err = open_error(&nan);
    assert!(
        err.contains("`latent` holds a non-finite value (NaN) at element 5"),
        "{err}"
    );

    let err = open_error(&clip_tensors(vec![2, 1, 3, 2], 1.0));
    assert!(err.contains("`latent` has odd height or width"), "{err}");

    let err = open_error(&clip_tensors(vec![2, 2, 2], 1.0));
    assert!(err.contains("`latent` must have rank 4"), "{err}");

    let err = open_error(&[
        ("win", vec![2, 1, 2, 2], vec![0.0; 8]),
        ("lose", vec![2, 2, 2, 2], vec![0.0; 16]),
        ("text", vec![1, 3], vec![0.0; 3]),
    ]);
    assert!(
        err.contains("`win` [2, 1, 2, 2] and `lose` [2, 2, 2, 2] differ"),
        "{err}"
    );

    let err = open_error(&[
        ("win", vec![2, 1, 2, 2], vec![0.0; 8]),
        ("text", vec![1, 3], vec![0.0; 3]),
    ]);
    assert!(err.contains("missing tensor `lose`"), "{err}");

    // Model-level sizes must agree with the first file.
    let mut wide_text = clip_tensors(vec![2, 1, 2, 2], 1.0);
    wide_text[1] = ("text", vec![1, 4], vec![0.0; 4]);
    let err = open_error(&wide_text);
    assert!(err.contains("text_dim is 4 but 3"), "{err}");
}

#[test]
fn writers_refuse_what_the_reader_would_reject() {
    let dir = TempDir::new("writers");
    let path = dir.path().join("x.safetensors");
    let err = write_clip(&path, [2, 1, 2, 2], &[0.0; 8], 0.5, &text(1, 3), DType::F32)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("x.safetensors") && err.contains("0 or 1"),
        "{err}"
    );
    let err = write_clip(&path, [2, 1, 2, 2], &[0.0; 7], 1.0, &text(1, 3), DType::F32)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`latent`"), "{err}");
    assert!(!path.exists());
    let err = Dataset::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("holds no *.safetensors"), "{err}");
}
