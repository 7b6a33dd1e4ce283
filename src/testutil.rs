//! Helpers shared by the unit tests: a deterministic random source and a finite-difference
//! gradient checker. Public (but hidden) so that integration tests can use them too.

/// A small deterministic generator (PCG-style LCG) for test data; no external crate needed.
pub struct TestRng(u64);

impl TestRng {
    pub fn new(seed: u64) -> Self {
        TestRng(
            seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(0x2545_F491_4F6C_DD1D),
        )
    }

    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.uniform()).collect()
    }
}

/// Central finite difference of the scalar function `f` with respect to every element of `x`,
/// evaluated in f64 around the f32 point (step `h`).
pub fn numeric_grad(x: &[f32], h: f32, mut f: impl FnMut(&[f32]) -> f64) -> Vec<f32> {
    let mut xp = x.to_vec();
    (0..x.len())
        .map(|i| {
            let orig = xp[i];
            xp[i] = orig + h;
            let fp = f(&xp);
            xp[i] = orig - h;
            let fm = f(&xp);
            xp[i] = orig;
            ((fp - fm) / (2.0 * h as f64)) as f32
        })
        .collect()
}

/// Largest `|a - b|` divided by the largest `|b|` (a relative error that is stable when some
/// entries are near zero).
pub fn max_rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let scale = b.iter().fold(0.0f32, |m, x| m.max(x.abs())).max(1e-12);
    a.iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// Asserts that the analytic gradient matches the numeric one within `tol` (relative, as
/// [`max_rel_err`]).
pub fn assert_grad_close(what: &str, analytic: &[f32], numeric: &[f32], tol: f32) {
    let err = max_rel_err(analytic, numeric);
    assert!(
        err <= tol,
        "{what}: analytic vs finite-difference gradient relative error {err:e} > {tol:e}\nanalytic {:?}\nnumeric  {:?}",
        &analytic[..analytic.len().min(8)],
        &numeric[..numeric.len().min(8)]
    );
}

/// A tiny Wan configuration for tests: `freq_dim` and `ffn_dim` scale with `dim`; I2V gets
/// 36 input channels and `image_dim` 6.
pub fn tiny_wan(
    model_type: crate::model::ModelType,
    dim: usize,
    heads: usize,
    layers: usize,
    text_dim: usize,
) -> crate::model::WanConfig {
    let i2v = model_type == crate::model::ModelType::I2V;
    crate::model::WanConfig {
        model_type,
        in_dim: if i2v { 36 } else { 16 },
        out_dim: 16,
        dim,
        ffn_dim: dim * 3 / 2,
        freq_dim: dim,
        text_dim,
        image_dim: i2v.then_some(6),
        num_heads: heads,
        num_layers: layers,
        eps: 1e-6,
        text_len: 512,
    }
}

/// A fresh directory under the system temp dir, removed (with its contents) when dropped. Named
/// by `tag`, the process id and a per-process counter, so parallel tests never share one.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    /// Creates `prfl-<tag>-<pid>-<n>` under [`std::env::temp_dir`], emptied if it existed.
    /// Panics if it cannot be created (a test helper: the test cannot run without it).
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "prfl-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            panic!("cannot create the test directory {}: {e}", dir.display());
        }
        TempDir(dir)
    }

    /// The directory.
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
