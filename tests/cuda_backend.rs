//! The CUDA backend against the CPU backend (its executable specification): every `Backend` op,
//! a whole tiny Wan model forward + backward, a PAVRM training step and a PRFL step.
//!
//! The device:
//! - `PRFL_CUDA_EMULATE=1` (or `plain`, `asan`, `tsan`) runs every test on the *emulated* CUDA
//!   device of `tests/cuda_emu/`: the real kernel sources compiled for the CPU and stand-in
//!   libcuda/libnvrtc/libcublas/libcublasLt loaded through the backend's normal library-folder
//!   path (`CudaOptions::lib_dir`). The emulation is built first (`tests/common/cuda_emu.rs`);
//!   a build failure or a device that does not open is a test failure, never a skip.
//! - Otherwise, without a usable CUDA device (no driver, no GPU, a missing library) every GPU
//!   test prints `skipping: <reason>` and passes, unless `PRFL_CUDA_REQUIRE=1`, which turns the
//!   skip into a failure (the GPU machine's script, `tools/gpu/run_all.sh`, sets it).
//!   `PRFL_CUDA_LIB_DIR` names a folder of CUDA libraries (`CudaOptions::lib_dir`),
//!   `PRFL_CUDA_DEVICE` the ordinal (default 0).
//!
//! How each check works:
//! - inputs are fresh random data (never zeros: zeros hide unwritten outputs and wrong indexing);
//! - every output an op *overwrites* is filled with NaN before the call on both backends, so an
//!   element the GPU forgets to write fails the check (NaN never passes);
//! - outputs an op *accumulates* into (`+=`: parameter gradients, `dmods`, `dtable`, ...) start
//!   from the same random values on both backends, and what is compared is the increment
//!   `after - before`, so overwriting instead of accumulating fails too;
//! - sizes are ragged (not multiples of any tile: 1, 33, 37, 77, 70001, head_dim 24, lq != lk);
//! - the error is `‖gpu − cpu‖ / ‖cpu‖` over the whole output (f64), against:
//!   - [`TOL_F32`] = 1e-5 for f32 element-wise, norm, modulation, RoPE and optimiser kernels (the
//!     same f32 arithmetic, only the order of reductions and `exp`/`tanh` implementations differ);
//!   - [`TOL_BF16`] = 2e-2 for GEMMs and attention: the GPU feeds the tensor cores bf16 operands
//!     (8 significant bits: a relative rounding of up to 2^-9 ≈ 2e-3 per operand) with f32
//!     accumulation, while the CPU computes in f32 from the same stored weights; 2e-2 leaves an
//!     order of magnitude over the expected ~2e-3 and still catches any indexing or scaling bug
//!     (those give errors of order 1);
//!   - [`TOL_SUMSQ`] = 1e-6 (relative) for `sum_squares` (f64 accumulation on both);
//!   - exact (0) for data movement: uploads, copies, (un)patchify, weight round trips;
//!   - whole-model and trainer checks chain dozens of bf16 GEMMs and attention calls, so their
//!     errors compound: [`TOL_MODEL_OUT`] = 2e-2 for model outputs and losses, [`TOL_MODEL_GRAD`]
//!     = 5e-2 per gradient tensor and [`TOL_MODEL_GRAD_ALL`] = 3e-2 over all gradients together.
//!
//! Every check prints its error; a test fails after printing all of its checks, listing the
//! failures. `harness_self_check_cpu_vs_cpu` runs every check with the CPU backend on both sides
//! (always, also in CI): it proves the harness itself runs, that the specification never reads a
//! poisoned output, and that the errors are then exactly zero.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use prfl::backend::cpu::Cpu;
use prfl::backend::cuda::{probe, Cuda, CudaOptions};
use prfl::backend::{
    AdamWHyper, AttnShape, Backend, BroadcastShape, GatedAddGrads, LayerNormGrads, LayerNormStats,
    LinearShape, ModShape, ModSlot, ModulateGrads, NormAffine, PatchOrder, PatchShape, Qkv,
    RmsNormGrads, RopeShape, RowShape, ShiftScale,
};
use prfl::finetune::prfl::{PrflTrainConfig, PrflTrainer};
use prfl::finetune::sample::Cond;
use prfl::model::init::random_weights;
use prfl::model::lora::{init_lora, LoraConfig};
use prfl::model::params::Grads;
use prfl::model::wan::{Inputs, Mode, VideoShape, WanModel};
use prfl::model::{ModelType, WanConfig};
use prfl::optim::AdamWConfig;
use prfl::reward::dataset::{Batch, BatchLatents};
use prfl::reward::head::init_head_params;
use prfl::reward::model::{RewardModel, RewardModelConfig};
use prfl::reward::train::{RewardLoss, RewardTrainConfig, RewardTrainer};
use prfl::schedule::SolverKind;
use prfl::tensor::{DType, HostTensor, Storage};
use prfl::testutil::{tiny_wan, TestRng};

// ------------------------------------------------------------------------------------ tolerances

/// f32 element-wise kernels (see the module documentation).
const TOL_F32: f64 = 1e-5;
/// bf16 tensor-core GEMMs and attention against the CPU's f32.
const TOL_BF16: f64 = 2e-2;
/// `sum_squares`, relative.
const TOL_SUMSQ: f64 = 1e-6;
/// Data movement.
const EXACT: f64 = 0.0;
/// Whole tiny model: outputs and losses.
const TOL_MODEL_OUT: f64 = 2e-2;
/// Whole tiny model: one parameter's gradient (or one weight's update).
const TOL_MODEL_GRAD: f64 = 5e-2;
/// Whole tiny model: all gradients (or updates) concatenated.
const TOL_MODEL_GRAD_ALL: f64 = 3e-2;

// ------------------------------------------------------------------------------------ the device

#[path = "common/cuda_emu.rs"]
pub(crate) mod cuda_emu;

/// Whether a missing device fails the test instead of skipping it: always on the emulated
/// device.
fn require() -> bool {
    std::env::var("PRFL_CUDA_REQUIRE").is_ok_and(|v| v == "1")
        || cuda_emu::Variant::from_env().is_some()
}

/// The library folder: the emulation's (built here) with `PRFL_CUDA_EMULATE`, else
/// `PRFL_CUDA_LIB_DIR`.
fn options() -> Result<CudaOptions, String> {
    match cuda_emu::Variant::from_env() {
        Some(variant) => {
            let emu = cuda_emu::build(variant?)?;
            // Emulated kernel images must not land in (or come from) the real kernel cache. A
            // mutant (PRFL_EMU_MUTATE) is applied inside the stand-in NVRTC, invisible to the
            // cache key: it must never be served an unmutated cached image.
            if std::env::var_os("PRFL_EMU_MUTATE").is_some() {
                std::env::set_var("PRFL_KERNEL_CACHE", "off");
            } else if std::env::var_os("PRFL_KERNEL_CACHE").is_none() {
                std::env::set_var("PRFL_KERNEL_CACHE", &emu.kernel_cache);
            }
            println!(
                "emulated CUDA device ({}): {}",
                emu.variant.name(),
                emu.lib_dir.display()
            );
            Ok(CudaOptions {
                lib_dir: Some(emu.lib_dir),
            })
        }
        None => Ok(CudaOptions {
            lib_dir: std::env::var_os("PRFL_CUDA_LIB_DIR").map(PathBuf::from),
        }),
    }
}

/// The device all tests share (opening one compiles the kernels), behind a lock: the tests of
/// this file run on parallel threads, one at a time on the GPU.
static GPU: OnceLock<Result<Mutex<Cuda>, String>> = OnceLock::new();

fn open_gpu() -> Result<Mutex<Cuda>, String> {
    let opts = options()?;
    let devices = probe(&opts).map_err(|e| e.to_string())?;
    if devices.is_empty() {
        return Err("no CUDA device found".into());
    }
    let index = match std::env::var("PRFL_CUDA_DEVICE") {
        Ok(s) => s
            .parse::<usize>()
            .map_err(|_| format!("PRFL_CUDA_DEVICE={s} is not an ordinal"))?,
        Err(_) => 0,
    };
    for d in &devices {
        println!("found {d}");
    }
    let cuda = Cuda::open(index, &opts).map_err(|e| format!("cuda:{index} did not open: {e}"))?;
    println!("testing on {}", cuda.name());
    Ok(Mutex::new(cuda))
}

/// Runs `f` on the shared GPU, or skips (passes with a message) where there is none.
fn with_gpu(test: &str, f: impl FnOnce(&Cuda)) {
    // tests/cuda_emu_sanitizers.rs compiles this file in as a module to re-run its tests in
    // sanitized child processes (which it marks); in that binary's own process they would only
    // repeat this file's run, so they stand aside there.
    if module_path!() != "cuda_backend" && std::env::var_os("PRFL_EMU_SANITIZER_CHILD").is_none() {
        println!("skipping {test} here: tests/cuda_backend.rs runs it (this copy is for sanitized child runs)");
        return;
    }
    match GPU.get_or_init(open_gpu) {
        Ok(m) => {
            let guard = m.lock().unwrap_or_else(|e| e.into_inner());
            // On the emulated device, the stand-in cuBLAS(Lt) counts what it refused: a refused
            // GEMM (or, unless the test forces the fallback, a refused cuBLASLt heuristic, which
            // prfl would silently route to cublasGemmEx) fails the test that caused it. The GPU
            // lock makes the difference this test's own. (`build` answers from its per-process
            // record: the folder the open device loaded, no rebuild.)
            let blas_dir = cuda_emu::Variant::from_env()
                .and_then(Result::ok)
                .and_then(|v| cuda_emu::build(v).ok())
                .map(|emu| emu.lib_dir);
            let before = blas_dir.as_deref().map(|d| blas_stats(test, d));
            f(&guard);
            if let (Some(dir), Some(before)) = (blas_dir.as_deref(), before) {
                let calls = blas_stats(test, dir).since(&before);
                let fallback_forced =
                    std::env::var("PRFL_EMU_CUBLASLT_NO_ALGO").is_ok_and(|v| v == "1");
                assert!(
                    calls.lt_matmul_refused + calls.gemm_ex_refused + calls.sger_refused == 0
                        && (fallback_forced || calls.lt_heuristic_refused == 0),
                    "{test}: the stand-in cuBLAS(Lt) refused calls (its reasons are on stderr): {calls:?}"
                );
            }
        }
        Err(reason) if require() => {
            panic!("{test}: PRFL_CUDA_REQUIRE=1 but no usable CUDA device: {reason}")
        }
        Err(reason) => {
            println!("skipping {test}: {reason}");
        }
    }
}

#[path = "common/cuda_emu_blas_stats.rs"]
mod cuda_emu_blas_stats;

fn blas_stats(test: &str, lib_dir: &std::path::Path) -> cuda_emu_blas_stats::BlasStats {
    cuda_emu_blas_stats::read(lib_dir)
        .unwrap_or_else(|e| panic!("{test}: the stand-in cuBLAS(Lt) counters: {e}"))
}

// ------------------------------------------------------------------------------------ reporting

/// `‖v‖` in f64.
fn l2(v: &[f32]) -> f64 {
    v.iter()
        .map(|&x| (x as f64) * (x as f64))
        .sum::<f64>()
        .sqrt()
}

/// `‖a − b‖ / max(‖b‖, floor)` in f64 (`‖a − b‖` when that is 0); NaN when `a` holds a
/// non-finite value or the lengths differ.
fn rel_l2(a: &[f32], b: &[f32], floor: f64) -> f64 {
    if a.len() != b.len() || a.iter().any(|v| !v.is_finite()) {
        return f64::NAN;
    }
    let diff = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let den = l2(b).max(floor);
    if den == 0.0 {
        diff
    } else {
        diff / den
    }
}

/// The checks of one test: printed as they come, asserted at the end.
struct Report {
    test: String,
    checks: usize,
    failures: Vec<String>,
    /// Every tolerance is 0 (the CPU-vs-CPU self-check).
    exact: bool,
}

impl Report {
    fn new(test: &str) -> Self {
        Report {
            test: test.to_string(),
            checks: 0,
            failures: Vec::new(),
            exact: false,
        }
    }

    fn record(&mut self, what: &str, err: f64, tol: f64, note: &str) {
        self.checks += 1;
        let tol = if self.exact { 0.0 } else { tol };
        let ok = err <= tol; // NaN fails
        println!(
            "  {:<4} {:<64} err {:>9.2e}  tol {:>7.0e}{note}",
            if ok { "ok" } else { "FAIL" },
            what,
            err,
            tol
        );
        if !ok {
            self.failures
                .push(format!("{what}: error {err:.3e} > {tol:.0e}{note}"));
        }
    }

    /// Relative L2 error of one output.
    fn check(&mut self, what: &str, gpu: &[f32], cpu: &[f32], tol: f64) {
        self.check_floor(what, gpu, cpu, 0.0, tol)
    }

    /// Relative L2 error against `max(‖cpu‖, floor)`: for outputs that can vanish exactly (the
    /// attention gradients dq, dk with a single key; a log-sum-exp near 0), where a relative
    /// measure would compare bf16 rounding with the CPU's f32 rounding of zero. `floor` is the
    /// norm of a comparable quantity that does not vanish.
    fn check_floor(&mut self, what: &str, gpu: &[f32], cpu: &[f32], floor: f64, tol: f64) {
        let note = if gpu.len() != cpu.len() {
            format!(" (length {} vs {})", gpu.len(), cpu.len())
        } else if let Some(i) = gpu.iter().position(|v| !v.is_finite()) {
            let bad = gpu.iter().filter(|v| !v.is_finite()).count();
            format!(" ({bad} non-finite, first at {i}: unwritten or NaN)")
        } else if floor > l2(cpu) {
            format!(" (against a floor of {floor:.2e})")
        } else {
            String::new()
        };
        self.record(what, rel_l2(gpu, cpu, floor), tol, &note);
    }

    /// Increments of an accumulated output: `after − before` on each side.
    fn check_delta(&mut self, what: &str, gpu: &[f32], cpu: &[f32], before: &[f32], tol: f64) {
        let d = |v: &[f32]| -> Vec<f32> {
            v.iter()
                .zip(before)
                .map(|(a, b)| a - b)
                .chain(v.iter().skip(before.len()).copied())
                .collect()
        };
        self.check(&format!("{what} (increment)"), &d(gpu), &d(cpu), tol);
    }

    /// `|gpu − cpu| / |cpu|` of a scalar (`|gpu − cpu|` when `cpu` is 0).
    fn scalar(&mut self, what: &str, gpu: f64, cpu: f64, tol: f64) {
        let err = if !gpu.is_finite() {
            f64::NAN
        } else if cpu == 0.0 {
            (gpu - cpu).abs()
        } else {
            ((gpu - cpu) / cpu).abs()
        };
        self.record(what, err, tol, &format!(" (gpu {gpu:.6e}, cpu {cpu:.6e})"));
    }

    fn truth(&mut self, what: &str, ok: bool) {
        self.record(what, if ok { 0.0 } else { f64::INFINITY }, 0.0, "");
    }

    fn finish(self) {
        println!(
            "{}: {} checks, {} failed",
            self.test,
            self.checks,
            self.failures.len()
        );
        assert!(
            self.failures.is_empty(),
            "{}: {} of {} checks failed:\n  {}",
            self.test,
            self.failures.len(),
            self.checks,
            self.failures.join("\n  ")
        );
    }
}

/// Runs the same block once with the CPU backend and once with `$g` (any backend) bound to
/// `$be`, returning `(gpu result, cpu result)`. The block is expanded twice, so it is generic
/// over the backend without a generic closure.
macro_rules! both {
    ($g:expr, |$be:ident| $body:block) => {{
        let cpu_result = {
            let $be = &Cpu;
            $body
        };
        let gpu_result = {
            let $be = $g;
            $body
        };
        (gpu_result, cpu_result)
    }};
}

fn nan(n: usize) -> Vec<f32> {
    vec![f32::NAN; n]
}

/// Uniform in `[-scale, scale)`, never exactly zero.
fn rand(rng: &mut TestRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u = rng.uniform();
            if u == 0.0 {
                0.5 * scale
            } else {
                u * scale
            }
        })
        .collect()
}

/// Element-wise sizes: a single element, less than a warp, not a multiple of a block, and large
/// enough to need many blocks (and a grid-stride loop or a multi-block reduction).
const SIZES: [usize; 5] = [1, 33, 1000, 4099, 70_001];

const DTYPES: [DType; 3] = [DType::F32, DType::BF16, DType::F16];

// ------------------------------------------------------------------------------------ ops

fn ops_memory<G: Backend>(g: &G, r: &mut Report) {
    let mut rng = TestRng::new(101);
    for &n in &SIZES {
        let x = rand(&mut rng, n, 3.0);
        let (go, co) = both!(g, |be| {
            let b = be.upload(&x);
            let z = be.zeros(n);
            let mut f = be.upload(&x);
            be.fill_zero(&mut f);
            let lens_ok = be.len(&b) == n && be.len(&z) == n && be.buf_bytes(&b) >= 4 * n;
            (be.download(&b), be.download(&z), be.download(&f), lens_ok)
        });
        r.check(&format!("upload/download n={n}"), &go.0, &x, EXACT);
        r.check(&format!("zeros n={n}"), &go.1, &co.1, EXACT);
        r.check(&format!("fill_zero n={n}"), &go.2, &co.2, EXACT);
        r.truth(&format!("len and buf_bytes n={n}"), go.3);
    }
    // Large uploads go through two 8 MiB page-locked staging buffers in turn: 5 chunks (the
    // last one partial), several uploads back to back so that each buffer is reused while the
    // device may still be draining it, and every upload checked after all were queued.
    let big = 10_000_003;
    let xs: Vec<Vec<f32>> = (0..3).map(|_| rand(&mut rng, big, 1.0)).collect();
    let bufs: Vec<_> = xs.iter().map(|x| g.upload(x)).collect();
    for (i, (x, b)) in xs.iter().zip(&bufs).enumerate() {
        r.check(
            &format!("staged upload {i} n={big}"),
            &g.download(b),
            x,
            EXACT,
        );
    }
    // copy_range: an interior range to an interior offset; the rest of `dst` is kept.
    let src = rand(&mut rng, 1000, 1.0);
    let dst = rand(&mut rng, 777, 1.0);
    for (so, d_o, n) in [(13, 101, 555), (0, 0, 777), (999, 776, 1), (3, 0, 0)] {
        let (go, co) = both!(g, |be| {
            let s = be.upload(&src);
            let mut d = be.upload(&dst);
            be.copy_range(&s, so, &mut d, d_o, n);
            be.download(&d)
        });
        r.check(
            &format!("copy_range src_off={so} dst_off={d_o} n={n}"),
            &go,
            &co,
            EXACT,
        );
    }
    // Weights: a round trip in each storage dtype, the f32 copy, dtype and dimensions.
    for dt in DTYPES {
        for (rows, cols) in [(1, 1), (37, 24), (130, 257)] {
            let host = Storage::from_f32(&rand(&mut rng, rows * cols, 2.0), dt);
            let (go, co) = both!(g, |be| {
                let w = be.weight_from_host(&host, rows, cols);
                let back = be.weight_to_host(&w);
                let meta_ok = be.weight_dtype(&w) == dt
                    && be.weight_dims(&w) == (rows, cols)
                    && back.dtype() == dt
                    && back.len() == rows * cols;
                (back.to_f32(), be.download(&be.weight_to_buf(&w)), meta_ok)
            });
            let name = format!("{} weight [{rows}, {cols}]", dt.name());
            r.check(&format!("{name} to_host"), &go.0, &host.to_f32(), EXACT);
            r.check(&format!("{name} to_buf"), &go.1, &co.1, EXACT);
            r.truth(&format!("{name} dtype and dims"), go.2);
        }
    }
}

fn ops_elementwise<G: Backend>(g: &G, r: &mut Report) {
    let mut rng = TestRng::new(202);
    for &n in &SIZES {
        let x = rand(&mut rng, n, 4.0);
        let y0 = rand(&mut rng, n, 1.0);
        let dy = rand(&mut rng, n, 1.0);
        let (go, co) = both!(g, |be| {
            let xb = be.upload(&x);
            let mut a = be.upload(&y0);
            be.add_assign(&mut a, &xb);
            let mut b = be.upload(&y0);
            be.axpy(-0.37, &xb, &mut b);
            let mut c = be.upload(&x);
            be.scale(1.7, &mut c);
            [be.download(&a), be.download(&b), be.download(&c)]
        });
        for (i, op) in ["add_assign", "axpy", "scale"].iter().enumerate() {
            r.check(&format!("{op} n={n}"), &go[i], &co[i], TOL_F32);
        }
        for act in ["silu", "gelu_tanh", "gelu_erf", "relu"] {
            let (go, co) = both!(g, |be| {
                let xb = be.upload(&x);
                let dyb = be.upload(&dy);
                let mut y = be.upload(&nan(n));
                let mut dx = be.upload(&nan(n));
                match act {
                    "silu" => {
                        be.silu_forward(&xb, &mut y);
                        be.silu_backward(&xb, &dyb, &mut dx);
                    }
                    "gelu_tanh" => {
                        be.gelu_tanh_forward(&xb, &mut y);
                        be.gelu_tanh_backward(&xb, &dyb, &mut dx);
                    }
                    "gelu_erf" => {
                        be.gelu_erf_forward(&xb, &mut y);
                        be.gelu_erf_backward(&xb, &dyb, &mut dx);
                    }
                    _ => {
                        be.relu_forward(&xb, &mut y);
                        be.relu_backward(&xb, &dyb, &mut dx);
                    }
                }
                (be.download(&y), be.download(&dx))
            });
            r.check(&format!("{act}_forward n={n}"), &go.0, &co.0, TOL_F32);
            r.check(&format!("{act}_backward n={n}"), &go.1, &co.1, TOL_F32);
        }
    }
    // broadcast_add and its backward (dx and dtable accumulate).
    for (batch, w, k) in [(1, 1, 1), (3, 37, 6), (2, 1536, 2), (5, 100, 1)] {
        let x = rand(&mut rng, batch * w, 1.0);
        let table = rand(&mut rng, k * w, 1.0);
        let dout = rand(&mut rng, batch * k * w, 1.0);
        let dx0 = rand(&mut rng, batch * w, 1.0);
        let dt0 = rand(&mut rng, k * w, 1.0);
        let (go, co) = both!(g, |be| {
            let mut out = be.upload(&nan(batch * k * w));
            let shape = BroadcastShape { batch, w, k };
            be.broadcast_add(&be.upload(&x), &be.upload(&table), shape, &mut out);
            let mut dx = be.upload(&dx0);
            let mut dt = be.upload(&dt0);
            be.broadcast_add_backward(&be.upload(&dout), shape, &mut dx, &mut dt);
            (be.download(&out), be.download(&dx), be.download(&dt))
        });
        let s = format!("batch={batch} w={w} k={k}");
        r.check(&format!("broadcast_add {s}"), &go.0, &co.0, TOL_F32);
        r.check_delta(
            &format!("broadcast_add_backward dx {s}"),
            &go.1,
            &co.1,
            &dx0,
            TOL_F32,
        );
        r.check_delta(
            &format!("broadcast_add_backward dtable {s}"),
            &go.2,
            &co.2,
            &dt0,
            TOL_F32,
        );
    }
}

fn ops_reduce_optim<G: Backend>(g: &G, r: &mut Report) {
    let mut rng = TestRng::new(303);
    for &n in &SIZES {
        let x = rand(&mut rng, n, 3.0);
        let (go, co) = both!(g, |be| { be.sum_squares(&be.upload(&x)) });
        r.scalar(&format!("sum_squares n={n}"), go, co, TOL_SUMSQ);
    }
    // Many buffers at once (the optimiser's gradient norm), an empty one among them.
    let xs: Vec<Vec<f32>> = [0, 1, 4099, 70_001]
        .iter()
        .map(|&n| rand(&mut rng, n, 2.0))
        .collect();
    let (go, co) = both!(g, |be| {
        let bufs: Vec<_> = xs.iter().map(|x| be.upload(x)).collect();
        be.sum_squares_each(&bufs.iter().collect::<Vec<_>>())
    });
    r.truth(
        &format!("sum_squares_each gives one sum per buffer ({})", go.len()),
        go.len() == xs.len(),
    );
    for (i, (a, b)) in go.iter().zip(&co).enumerate() {
        r.scalar(
            &format!("sum_squares_each [{i}] n={}", xs[i].len()),
            *a,
            *b,
            TOL_SUMSQ,
        );
    }
    // A single non-finite entry anywhere makes the sum non-finite (the optimiser's skip test).
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        for at in [0, 4098, 70_000] {
            let mut x = rand(&mut rng, 70_001, 1.0);
            x[at] = bad;
            let go = g.sum_squares(&g.upload(&x));
            r.truth(
                &format!("sum_squares flags {bad} at {at} (got {go})"),
                !go.is_finite(),
            );
        }
    }
    // AdamW on f32 masters.
    let h = AdamWHyper {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
        grad_scale: 0.5,
        bias_correction1: 1.0 - 0.9f32.powi(3),
        bias_correction2: 1.0 - 0.999f32.powi(3),
    };
    for &n in &SIZES {
        let p0 = rand(&mut rng, n, 1.0);
        let grad = rand(&mut rng, n, 1.0);
        let m0 = rand(&mut rng, n, 0.1);
        let v0: Vec<f32> = rand(&mut rng, n, 0.01).iter().map(|v| v.abs()).collect();
        let (go, co) = both!(g, |be| {
            let mut p = be.upload(&p0);
            let mut m = be.upload(&m0);
            let mut v = be.upload(&v0);
            be.adamw_update(&mut p, &be.upload(&grad), &mut m, &mut v, &h);
            (be.download(&p), be.download(&m), be.download(&v))
        });
        r.check_delta(&format!("adamw param n={n}"), &go.0, &co.0, &p0, TOL_F32);
        r.check(&format!("adamw m n={n}"), &go.1, &co.1, TOL_F32);
        r.check(&format!("adamw v n={n}"), &go.2, &co.2, TOL_F32);
    }
    // weight_assign: the storage-dtype rounding of a master copy (round to nearest even).
    for dt in DTYPES {
        for (rows, cols) in [(1, 3), (37, 24), (130, 257)] {
            let init = Storage::from_f32(&rand(&mut rng, rows * cols, 1.0), dt);
            let master = rand(&mut rng, rows * cols, 3.0);
            let (go, co) = both!(g, |be| {
                let mut w = be.weight_from_host(&init, rows, cols);
                be.weight_assign(&mut w, &be.upload(&master));
                (be.weight_to_host(&w).to_f32(), be.weight_dtype(&w) == dt)
            });
            let name = format!("weight_assign {} [{rows}, {cols}]", dt.name());
            r.check(&name, &go.0, &co.0, TOL_F32);
            r.truth(&format!("{name} keeps its dtype"), go.1);
        }
    }
}

fn ops_linear<G: Backend>(g: &G, r: &mut Report) {
    let mut rng = TestRng::new(404);
    // (rows n, in, out): a single row, a one-output head (the reward MLP's last layer), odd
    // widths, and sizes that are not multiples of any tile.
    let cases = [
        (1, 16, 8),
        (5, 37, 1),
        (77, 96, 40),
        (300, 200, 136),
        (515, 256, 384),
        (33, 1536, 64),
    ];
    for dt in DTYPES {
        for (ci, &(n, n_in, n_out)) in cases.iter().enumerate() {
            let with_bias = ci % 2 == 0;
            let wdata = Storage::from_f32(
                &rand(&mut rng, n_out * n_in, 1.0 / (n_in as f32).sqrt()),
                dt,
            );
            let x = rand(&mut rng, n * n_in, 1.0);
            let bias = rand(&mut rng, n_out, 0.5);
            let dy = rand(&mut rng, n * n_out, 1.0);
            let dw0 = rand(&mut rng, n_out * n_in, 1.0);
            let db0 = rand(&mut rng, n_out, 1.0);
            let (go, co) = both!(g, |be| {
                let w = be.weight_from_host(&wdata, n_out, n_in);
                let xb = be.upload(&x);
                let bb = be.upload(&bias);
                let mut y = be.upload(&nan(n * n_out));
                be.linear_forward(&xb, n, &w, with_bias.then_some(&bb), &mut y);
                let dyb = be.upload(&dy);
                let mut dx = be.upload(&nan(n * n_in));
                be.linear_backward_input(&dyb, n, &w, &mut dx);
                let mut dw = be.upload(&dw0);
                let mut db = be.upload(&db0);
                let shape = LinearShape { n, n_in, n_out };
                be.linear_backward_weight(&dyb, &xb, shape, &mut dw, with_bias.then_some(&mut db));
                (
                    be.download(&y),
                    be.download(&dx),
                    be.download(&dw),
                    be.download(&db),
                )
            });
            let s = format!(
                "{} n={n} in={n_in} out={n_out}{}",
                dt.name(),
                if with_bias { " +bias" } else { "" }
            );
            r.check(&format!("linear_forward {s}"), &go.0, &co.0, TOL_BF16);
            r.check(
                &format!("linear_backward_input {s}"),
                &go.1,
                &co.1,
                TOL_BF16,
            );
            r.check_delta(
                &format!("linear_backward_weight dw {s}"),
                &go.2,
                &co.2,
                &dw0,
                TOL_BF16,
            );
            if with_bias {
                r.check_delta(
                    &format!("linear_backward_weight db {s}"),
                    &go.3,
                    &co.3,
                    &db0,
                    TOL_BF16,
                );
            } else {
                r.check(
                    &format!("linear_backward_weight db untouched {s}"),
                    &go.3,
                    &db0,
                    EXACT,
                );
            }
        }
    }
}

/// Linear layers whose activations exceed f16's range (|x| up to 3e5 > 65504, as DiT residual
/// streams and FFN hidden states reach), with weights of every dtype: the CPU multiplies in f32,
/// so its result is finite, and the GPU's must be too (it once rounded the activations to f16
/// for f16 weights: inf, then NaN).
fn ops_linear_beyond_f16<G: Backend>(g: &G, r: &mut Report) {
    let mut rng = TestRng::new(405);
    for dt in DTYPES {
        let (n, n_in, n_out) = (37, 96, 40);
        let wdata = Storage::from_f32(
            &rand(&mut rng, n_out * n_in, 1.0 / (n_in as f32).sqrt()),
            dt,
        );
        let x = rand(&mut rng, n * n_in, 3e5);
        let dy = rand(&mut rng, n * n_out, 3e5);
        let bias = rand(&mut rng, n_out, 0.5);
        let (go, co) = both!(g, |be| {
            let w = be.weight_from_host(&wdata, n_out, n_in);
            let mut y = be.upload(&nan(n * n_out));
            be.linear_forward(&be.upload(&x), n, &w, Some(&be.upload(&bias)), &mut y);
            let mut dx = be.upload(&nan(n * n_in));
            be.linear_backward_input(&be.upload(&dy), n, &w, &mut dx);
            (be.download(&y), be.download(&dx))
        });
        let beyond_f16 = x.iter().filter(|v| v.abs() > 65504.0).count();
        let cpu_finite = co.0.iter().chain(&co.1).all(|v| v.is_finite());
        r.truth(
            &format!(
                "linear {} |x| > 65504: inputs beyond f16 ({beyond_f16}), CPU finite",
                dt.name()
            ),
            beyond_f16 > 0 && cpu_finite,
        );
        let s = format!("{} n={n} in={n_in} out={n_out} |x| up to 3e5", dt.name());
        r.check(&format!("linear_forward {s}"), &go.0, &co.0, TOL_BF16);
        r.check(
            &format!("linear_backward_input {s}"),
            &go.1,
            &co.1,
            TOL_BF16,
        );
    }
}

/// k = 0 products: a layer with no inputs (`in = 0`: y is the bias, or 0) and the input gradient
/// of a layer with no outputs (`out = 0`: dx = 0), each written over NaN (cuBLAS once refused
/// them: a leading dimension of 0).
fn ops_linear_k0<G: Backend>(g: &G, r: &mut Report) {
    let mut rng = TestRng::new(406);
    for dt in DTYPES {
        let n = 5;
        for (n_in, n_out) in [(0, 24), (24, 0)] {
            let wdata = Storage::from_f32(&rand(&mut rng, n_out * n_in, 1.0), dt);
            let x = rand(&mut rng, n * n_in, 1.0);
            let dy = rand(&mut rng, n * n_out, 1.0);
            let bias = rand(&mut rng, n_out, 0.5);
            let (go, co) = both!(g, |be| {
                let w = be.weight_from_host(&wdata, n_out, n_in);
                let (xb, bb) = (be.upload(&x), be.upload(&bias));
                let mut y = be.upload(&nan(n * n_out));
                be.linear_forward(&xb, n, &w, None, &mut y);
                // (A bias needs outputs: the CPU specification has none for out = 0.)
                let mut yb = be.upload(&nan(n * n_out));
                if n_out > 0 {
                    be.linear_forward(&xb, n, &w, Some(&bb), &mut yb);
                }
                let mut dx = be.upload(&nan(n * n_in));
                be.linear_backward_input(&be.upload(&dy), n, &w, &mut dx);
                (be.download(&y), be.download(&yb), be.download(&dx))
            });
            let s = format!("{} k = 0: n={n} in={n_in} out={n_out}", dt.name());
            r.check(&format!("linear_forward {s}"), &go.0, &co.0, EXACT);
            r.check(&format!("linear_forward +bias {s}"), &go.1, &co.1, EXACT);
            r.check(&format!("linear_backward_input {s}"), &go.2, &co.2, EXACT);
        }
    }
}

fn ops_norm<G: Backend>(g: &G, r: &mut Report) {
    let mut rng = TestRng::new(505);
    for (rows, d) in [(1, 16), (37, 96), (5, 1536), (300, 200), (3, 5120)] {
        // A non-zero mean and a spread, so that centring matters.
        let x: Vec<f32> = rand(&mut rng, rows * d, 2.0)
            .iter()
            .map(|v| v + 0.7)
            .collect();
        let w = rand(&mut rng, d, 1.0)
            .iter()
            .map(|v| 1.0 + 0.5 * v)
            .collect::<Vec<_>>();
        let b = rand(&mut rng, d, 0.3);
        let dy = rand(&mut rng, rows * d, 1.0);
        let dw0 = rand(&mut rng, d, 1.0);
        let db0 = rand(&mut rng, d, 1.0);
        let eps = 1e-6;
        for affine in [false, true] {
            let (go, co) = both!(g, |be| {
                let xb = be.upload(&x);
                let wb = be.upload(&w);
                let bb = be.upload(&b);
                let (wo, bo) = if affine {
                    (Some(&wb), Some(&bb))
                } else {
                    (None, None)
                };
                let mut y = be.upload(&nan(rows * d));
                let mut mean = be.upload(&nan(rows));
                let mut rstd = be.upload(&nan(rows));
                let shape = RowShape { rows, d };
                let params = NormAffine {
                    weight: wo,
                    bias: bo,
                };
                let stats = LayerNormStats {
                    mean: &mut mean,
                    rstd: &mut rstd,
                };
                be.layernorm_forward(&xb, shape, params, eps, &mut y, stats);
                let mut dx = be.upload(&nan(rows * d));
                let mut dw = be.upload(&dw0);
                let mut db = be.upload(&db0);
                let (dwo, dbo) = if affine {
                    (Some(&mut dw), Some(&mut db))
                } else {
                    (None, None)
                };
                let stats = LayerNormStats {
                    mean: &mean,
                    rstd: &rstd,
                };
                let grads = LayerNormGrads {
                    dx: &mut dx,
                    dweight: dwo,
                    dbias: dbo,
                };
                be.layernorm_backward(&be.upload(&dy), &xb, shape, wo, stats, grads);
                [
                    be.download(&y),
                    be.download(&mean),
                    be.download(&rstd),
                    be.download(&dx),
                    be.download(&dw),
                    be.download(&db),
                ]
            });
            let s = format!("rows={rows} d={d}{}", if affine { " affine" } else { "" });
            r.check(&format!("layernorm_forward y {s}"), &go[0], &co[0], TOL_F32);
            r.check(
                &format!("layernorm_forward mean {s}"),
                &go[1],
                &co[1],
                TOL_F32,
            );
            r.check(
                &format!("layernorm_forward rstd {s}"),
                &go[2],
                &co[2],
                TOL_F32,
            );
            r.check(
                &format!("layernorm_backward dx {s}"),
                &go[3],
                &co[3],
                TOL_F32,
            );
            if affine {
                r.check_delta(
                    &format!("layernorm_backward dweight {s}"),
                    &go[4],
                    &co[4],
                    &dw0,
                    TOL_F32,
                );
                r.check_delta(
                    &format!("layernorm_backward dbias {s}"),
                    &go[5],
                    &co[5],
                    &db0,
                    TOL_F32,
                );
            }
        }
        let (go, co) = both!(g, |be| {
            let xb = be.upload(&x);
            let wb = be.upload(&w);
            let mut y = be.upload(&nan(rows * d));
            let mut rstd = be.upload(&nan(rows));
            let shape = RowShape { rows, d };
            be.rmsnorm_forward(&xb, shape, &wb, eps, &mut y, &mut rstd);
            let mut dx = be.upload(&nan(rows * d));
            let mut dw = be.upload(&dw0);
            let grads = RmsNormGrads {
                dx: &mut dx,
                dweight: &mut dw,
            };
            be.rmsnorm_backward(&be.upload(&dy), &xb, shape, &wb, &rstd, grads);
            [
                be.download(&y),
                be.download(&rstd),
                be.download(&dx),
                be.download(&dw),
            ]
        });
        let s = format!("rows={rows} d={d}");
        r.check(&format!("rmsnorm_forward y {s}"), &go[0], &co[0], TOL_F32);
        r.check(
            &format!("rmsnorm_forward rstd {s}"),
            &go[1],
            &co[1],
            TOL_F32,
        );
        r.check(&format!("rmsnorm_backward dx {s}"), &go[2], &co[2], TOL_F32);
        r.check_delta(
            &format!("rmsnorm_backward dweight {s}"),
            &go[3],
            &co[3],
            &dw0,
            TOL_F32,
        );
    }
}

fn ops_modulate<G: Backend>(g: &G, r: &mut Report) {
    let mut rng = TestRng::new(606);
    // (batch, rows, d, table width per sample): a block's [6, D] table with an odd extra
    // stride, and the head's [2, D].
    for (batch, rows, d, k) in [
        (1, 1, 16, 6),
        (2, 37, 96, 6),
        (3, 77, 200, 2),
        (1, 300, 1536, 6),
    ] {
        let stride = k * d + 5;
        let shift = ModSlot { stride, offset: 0 };
        let scale = ModSlot { stride, offset: d };
        let gate = ModSlot {
            stride,
            offset: (k - 1) * d + 3,
        };
        let n = batch * rows * d;
        let x = rand(&mut rng, n, 2.0);
        let yv = rand(&mut rng, n, 1.0);
        let mods = rand(&mut rng, batch * stride, 0.5);
        let dy = rand(&mut rng, n, 1.0);
        let dmods0 = rand(&mut rng, batch * stride, 1.0);
        let (go, co) = both!(g, |be| {
            let xb = be.upload(&x);
            let mb = be.upload(&mods);
            let mut y = be.upload(&nan(n));
            let shape = ModShape { batch, rows, d };
            let slots = ShiftScale { shift, scale };
            be.modulate_forward(&xb, shape, &mb, slots, &mut y);
            let mut dx = be.upload(&nan(n));
            let mut dm = be.upload(&dmods0);
            let grads = ModulateGrads {
                dx: &mut dx,
                dmods: &mut dm,
            };
            be.modulate_backward(&be.upload(&dy), &xb, shape, &mb, slots, grads);
            let mut res = be.upload(&x);
            let yb = be.upload(&yv);
            be.gated_add_forward(&mut res, &yb, shape, &mb, gate);
            let mut dyg = be.upload(&nan(n));
            let mut dm2 = be.upload(&dmods0);
            let grads = GatedAddGrads {
                dy: &mut dyg,
                dmods: &mut dm2,
            };
            be.gated_add_backward(&be.upload(&dy), &yb, shape, &mb, gate, grads);
            [
                be.download(&y),
                be.download(&dx),
                be.download(&dm),
                be.download(&res),
                be.download(&dyg),
                be.download(&dm2),
            ]
        });
        let s = format!("batch={batch} rows={rows} d={d} stride={stride}");
        r.check(&format!("modulate_forward {s}"), &go[0], &co[0], TOL_F32);
        r.check(
            &format!("modulate_backward dx {s}"),
            &go[1],
            &co[1],
            TOL_F32,
        );
        r.check_delta(
            &format!("modulate_backward dmods {s}"),
            &go[2],
            &co[2],
            &dmods0,
            TOL_F32,
        );
        r.check_delta(
            &format!("gated_add_forward {s}"),
            &go[3],
            &co[3],
            &x,
            TOL_F32,
        );
        r.check(
            &format!("gated_add_backward dy {s}"),
            &go[4],
            &co[4],
            TOL_F32,
        );
        r.check_delta(
            &format!("gated_add_backward dmods {s}"),
            &go[5],
            &co[5],
            &dmods0,
            TOL_F32,
        );
    }
}

fn ops_rope_patch<G: Backend>(g: &G, r: &mut Report) {
    let mut rng = TestRng::new(707);
    for (batch, tokens, heads, hd) in [
        (1, 1, 1, 16),
        (2, 37, 3, 24),
        (1, 77, 2, 128),
        (2, 45, 12, 64),
    ] {
        let n = batch * tokens * heads * hd;
        let x = rand(&mut rng, n, 1.0);
        let angles = rand(&mut rng, tokens * hd / 2, 3.0);
        let cos: Vec<f32> = angles.iter().map(|a| a.cos()).collect();
        let sin: Vec<f32> = angles.iter().map(|a| a.sin()).collect();
        for inverse in [false, true] {
            let (go, co) = both!(g, |be| {
                let mut xb = be.upload(&x);
                let shape = RopeShape {
                    batch,
                    tokens,
                    heads,
                    head_dim: hd,
                };
                be.rope(&mut xb, shape, &be.upload(&cos), &be.upload(&sin), inverse);
                be.download(&xb)
            });
            r.check(
                &format!("rope batch={batch} tokens={tokens} heads={heads} head_dim={hd} inverse={inverse}"),
                &go,
                &co,
                TOL_F32,
            );
        }
    }
    for shape in [
        PatchShape {
            batch: 1,
            channels: 16,
            frames: 1,
            height: 2,
            width: 2,
        },
        PatchShape {
            batch: 2,
            channels: 5,
            frames: 3,
            height: 6,
            width: 10,
        },
        PatchShape {
            batch: 1,
            channels: 36,
            frames: 2,
            height: 14,
            width: 8,
        },
    ] {
        let n = shape.batch * shape.channels * shape.frames * shape.height * shape.width;
        let x = rand(&mut rng, n, 1.0);
        let t = rand(&mut rng, n, 1.0);
        for order in [PatchOrder::ChannelMajor, PatchOrder::ChannelMinor] {
            let (go, co) = both!(g, |be| {
                let mut tokens = be.upload(&nan(n));
                be.patchify(&be.upload(&x), shape, order, &mut tokens);
                let mut back = be.upload(&nan(n));
                be.unpatchify(&be.upload(&t), shape, order, &mut back);
                (be.download(&tokens), be.download(&back))
            });
            let s = format!(
                "{order:?} [{}, {}, {}, {}, {}]",
                shape.batch, shape.channels, shape.frames, shape.height, shape.width
            );
            r.check(&format!("patchify {s}"), &go.0, &co.0, EXACT);
            r.check(&format!("unpatchify {s}"), &go.1, &co.1, EXACT);
        }
    }
}

fn ops_attention<G: Backend>(g: &G, r: &mut Report) {
    let mut rng = TestRng::new(808);
    // (batch, lq, lk, heads, head_dim): square and ragged self-attention, cross-attention over a
    // short text (lk < lq) and a long one (lk > lq), every head_dim the kernels support plus an
    // odd one (24), and single-row edge cases.
    let cases = [
        (1, 1, 1, 1, 16),
        (2, 77, 77, 2, 16),
        (1, 100, 37, 3, 32),
        (2, 130, 200, 2, 64),
        (1, 257, 129, 2, 128),
        (2, 65, 33, 3, 24),
        (1, 70, 512, 2, 128),
        (1, 1, 300, 2, 64),
        (1, 300, 1, 1, 32),
        (1, 1040, 1040, 2, 128),
    ];
    for (batch, lq, lk, heads, head_dim) in cases {
        let shape = AttnShape {
            batch,
            lq,
            lk,
            heads,
            head_dim,
        };
        let nq = batch * lq * heads * head_dim;
        let nk = batch * lk * heads * head_dim;
        // Scaled so that the softmax is neither flat nor one-hot.
        let q = rand(&mut rng, nq, 2.0);
        let k = rand(&mut rng, nk, 2.0);
        let v = rand(&mut rng, nk, 1.0);
        let dout = rand(&mut rng, nq, 1.0);
        // The backward of both sides reads the CPU's forward results, so each is tested alone.
        let mut out_ref = vec![0.0; nq];
        let mut lse_ref = vec![0.0; batch * heads * lq];
        let qkv = Qkv {
            q: &q,
            k: &k,
            v: &v,
        };
        Cpu.attention_forward(qkv, shape, &mut out_ref, &mut lse_ref);
        let (go, co) = both!(g, |be| {
            let (qb, kb, vb) = (be.upload(&q), be.upload(&k), be.upload(&v));
            let mut out = be.upload(&nan(nq));
            let mut lse = be.upload(&nan(batch * heads * lq));
            let qkv = Qkv {
                q: &qb,
                k: &kb,
                v: &vb,
            };
            be.attention_forward(qkv, shape, &mut out, &mut lse);
            let mut dq = be.upload(&nan(nq));
            let mut dk = be.upload(&nan(nk));
            let mut dv = be.upload(&nan(nk));
            let qkv = Qkv {
                q: &qb,
                k: &kb,
                v: &vb,
            };
            let dqkv = Qkv {
                q: &mut dq,
                k: &mut dk,
                v: &mut dv,
            };
            be.attention_backward(
                qkv,
                &be.upload(&out_ref),
                &be.upload(&lse_ref),
                &be.upload(&dout),
                shape,
                dqkv,
            );
            [
                be.download(&out),
                be.download(&lse),
                be.download(&dq),
                be.download(&dk),
                be.download(&dv),
            ]
        });
        let s = format!("batch={batch} lq={lq} lk={lk} heads={heads} head_dim={head_dim}");
        // dq and dk vanish with a single key (the softmax is constant): only then are they
        // measured against a floor (dv's norm, which has the same units as them) instead of
        // their own, possibly zero, norm; elsewhere the floor would loosen the tolerance (dq is
        // about 0.6 dv). An lse entry can be near 0 in any case: one unit per entry.
        let grad_floor = if lk == 1 { l2(&co[4]) } else { 0.0 };
        let lse_floor = (co[1].len() as f64).sqrt();
        for (i, what) in ["out", "lse", "dq", "dk", "dv"].iter().enumerate() {
            let floor = match i {
                1 => lse_floor,
                2 | 3 => grad_floor,
                _ => 0.0,
            };
            r.check_floor(
                &format!("attention {what} {s}"),
                &go[i],
                &co[i],
                floor,
                TOL_BF16,
            );
        }
    }
}

// ------------------------------------------------------------------------------------ whole model

fn tiny_model_cfg(model_type: ModelType, layers: usize) -> WanConfig {
    // dim 64 with 2 heads: head_dim 32; text width 24.
    tiny_wan(model_type, 64, 2, layers, 24)
}

/// A latent that is not a multiple of any tile: 3 x 6 x 10 -> 45 tokens per sample.
const SHAPE: VideoShape = VideoShape {
    batch: 2,
    frames: 3,
    height: 6,
    width: 10,
};
const TEXT_LEN: usize = 7;

struct ModelRun {
    v: Vec<f32>,
    inputs: Vec<(&'static str, Vec<f32>)>,
    params: Vec<(String, Vec<f32>)>,
}

fn model_forward_backward<G: Backend>(g: &G, r: &mut Report) {
    for model_type in [ModelType::T2V, ModelType::I2V] {
        let cfg = tiny_model_cfg(model_type, 2);
        let tensors = random_weights(&cfg, 5);
        let mut rng = TestRng::new(909);
        let vox = SHAPE.batch * SHAPE.voxels();
        let i2v = model_type == ModelType::I2V;
        let image_len = if i2v { 3 } else { 0 };
        let x = rand(&mut rng, vox * 16, 1.0);
        let context = rand(&mut rng, SHAPE.batch * TEXT_LEN * cfg.text_dim, 1.0);
        let y = i2v.then(|| rand(&mut rng, vox * (cfg.in_dim - 16), 1.0));
        let clip = i2v.then(|| rand(&mut rng, SHAPE.batch * image_len * 6, 1.0));
        let cot = rand(&mut rng, vox * 16, 1.0);
        let t = [999.0f32, 421.0];
        for mode in [Mode::Train, Mode::TrainRecompute] {
            let (go, co) = both!(g, |be| {
                let model = WanModel::new(be, cfg.clone(), &tensors, Some(DType::BF16)).unwrap();
                let xb = be.upload(&x);
                let cb = be.upload(&context);
                let yb = y.as_ref().map(|y| be.upload(y));
                let clb = clip.as_ref().map(|c| be.upload(c));
                let inp = Inputs {
                    shape: SHAPE,
                    x: &xb,
                    t: &t,
                    context: &cb,
                    text_len: TEXT_LEN,
                    y: yb.as_ref(),
                    clip: clb.as_ref(),
                    image_len,
                };
                let (v, tape) = model.forward(be, &inp, mode).unwrap();
                let (v_inf, _) = model.forward(be, &inp, Mode::Inference).unwrap();
                let mut grads = Grads::new(be, &model.params, |_| true);
                let ig = model
                    .backward(be, &tape.unwrap(), &be.upload(&cot), &mut grads)
                    .unwrap();
                let mut inputs = vec![
                    ("v (inference)", be.download(&v_inf)),
                    ("dx", be.download(&ig.x)),
                    ("dcontext", be.download(&ig.context)),
                ];
                if let Some(dy) = &ig.y {
                    inputs.push(("dy", be.download(dy)));
                }
                if let Some(dc) = &ig.clip {
                    inputs.push(("dclip", be.download(dc)));
                }
                let params = (0..model.params.len())
                    .filter_map(|id| {
                        grads
                            .get(id)
                            .map(|gb| (model.params.name(id).to_string(), be.download(gb)))
                    })
                    .collect::<Vec<_>>();
                ModelRun {
                    v: be.download(&v),
                    inputs,
                    params,
                }
            });
            let s = format!("{model_type:?} {mode:?}");
            r.check(&format!("model {s}: v"), &go.v, &co.v, TOL_MODEL_OUT);
            for ((name, gv), (_, cv)) in go.inputs.iter().zip(&co.inputs) {
                let tol = if *name == "v (inference)" {
                    TOL_MODEL_OUT
                } else {
                    TOL_MODEL_GRAD
                };
                r.check(&format!("model {s}: {name}"), gv, cv, tol);
            }
            compare_tensors(r, &format!("model {s}: grad"), &go.params, &co.params);
        }
    }
}

/// Per-tensor and all-together checks of matching named tensors (gradients or updates).
fn compare_tensors(
    r: &mut Report,
    what: &str,
    gpu: &[(String, Vec<f32>)],
    cpu: &[(String, Vec<f32>)],
) {
    r.truth(
        &format!("{what}: same tensors ({} vs {})", gpu.len(), cpu.len()),
        gpu.len() == cpu.len() && gpu.iter().zip(cpu).all(|(a, b)| a.0 == b.0),
    );
    let (mut all_g, mut all_c) = (Vec::new(), Vec::new());
    for ((name, gv), (_, cv)) in gpu.iter().zip(cpu) {
        match cancellation_floor(name, cpu) {
            Some(floor) => r.check_floor(&format!("{what} {name}"), gv, cv, floor, TOL_MODEL_GRAD),
            None => r.check(&format!("{what} {name}"), gv, cv, TOL_MODEL_GRAD),
        }
        all_g.extend_from_slice(gv);
        all_c.extend_from_slice(cv);
    }
    r.check(
        &format!("{what} (all together)"),
        &all_g,
        &all_c,
        TOL_MODEL_GRAD_ALL,
    );
}

/// The floor for a gradient that is (nearly) zero by construction, so that both backends hold
/// mostly rounding noise there and its own norm is no scale to measure against. Attention is
/// invariant to a shift shared by every key, so `sum_j dK_j = 0` for each query; the tensor-core
/// backward computes `dS = P (dP - delta)` from bf16 `P`, `V` and a `delta` taken from the bf16
/// forward's output, so that sum is only zero to bf16 accuracy (FlashAttention-2's property).
/// Two gradients are a sum over keys of dK and so inherit that noise undiminished:
/// - the reward pool's key-projection bias: its keys are not normalised, so its exact gradient
///   is 0 (measured: 2e-11 on the CPU, 2e-7 through bf16 attention);
/// - the I2V image keys (`k_img`, `norm_k_img`): every image token leaves `img_emb` through a
///   LayerNorm, so the key Jacobians are nearly alike and their gradients nearly cancel
///   (measured on the emulated device: 0.2-0.3 relative through the tensor-core kernels, 4e-3
///   to 1e-2 through the f32 kernels, whose sum is exact to f32).
///
/// They are measured against the matching tensor whose gradient does not cancel (same units,
/// and what an indexing bug would be compared with): the pool's key weight, and the text keys'
/// tensors of the same cross-attention.
fn cancellation_floor(name: &str, tensors: &[(String, Vec<f32>)]) -> Option<f64> {
    let reference = if let Some(prefix) = name.strip_suffix("k_proj.bias") {
        format!("{prefix}k_proj.weight")
    } else if name.contains("cross_attn.k_img.") || name.contains("cross_attn.norm_k_img.") {
        name.replace("k_img.", "k.")
    } else {
        return None;
    };
    tensors
        .iter()
        .find(|(n, _)| *n == reference)
        .map(|(_, w)| l2(w))
}

/// `param.*` (masters) and `adam.m.*` of an optimiser export, as named host vectors.
fn state_vectors(state: &BTreeMap<String, HostTensor>, prefix: &str) -> Vec<(String, Vec<f32>)> {
    state
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix(prefix)
                .map(|name| (name.to_string(), v.to_f32()))
        })
        .collect()
}

/// Updates `after − before` of matching named tensors.
fn updates(after: &[(String, Vec<f32>)], before: &[(String, Vec<f32>)]) -> Vec<(String, Vec<f32>)> {
    after
        .iter()
        .zip(before)
        .map(|((n, a), (_, b))| (n.clone(), a.iter().zip(b).map(|(x, y)| x - y).collect()))
        .collect()
}

/// What a trainer run leaves behind, per step.
struct TrainRun {
    /// Loss-like scalars per step (name, value).
    scalars: Vec<(String, f64)>,
    /// The first moment after the first step: (1 − beta1) times the clipped gradient.
    m1: Vec<(String, Vec<f32>)>,
    /// Master-weight updates after each step, from the initial weights.
    updates: Vec<Vec<(String, Vec<f32>)>>,
}

fn compare_runs(r: &mut Report, what: &str, go: &TrainRun, co: &TrainRun) {
    for ((name, gv), (_, cv)) in go.scalars.iter().zip(&co.scalars) {
        r.scalar(&format!("{what}: {name}"), *gv, *cv, TOL_MODEL_OUT);
    }
    compare_tensors(
        r,
        &format!("{what}: step 1 gradient (adam m)"),
        &go.m1,
        &co.m1,
    );
    for (i, (gu, cu)) in go.updates.iter().zip(&co.updates).enumerate() {
        compare_tensors(
            r,
            &format!("{what}: weights after step {} minus initial", i + 1),
            gu,
            cu,
        );
    }
}

/// Training tolerances compare updates, which AdamW normalises element by element
/// (`m / (sqrt(v) + eps)`): at the first step an update is `lr * sign(g)` wherever `|g| >> eps`,
/// and the bf16 noise of near-zero gradients would flip signs. So the trainers here use a large
/// `eps` (1e-2, above the per-element gradient scale after clipping to norm 1) and a large `lr`
/// (1e-2): the update is then close to linear in the gradient, and comparable within bf16
/// tolerance; it is still large enough to move f32 masters well above rounding.
const TRAIN_LR: f32 = 1e-2;
const TRAIN_EPS: f32 = 1e-2;

fn pavrm_step<G: Backend>(g: &G, r: &mut Report) {
    let gen = tiny_model_cfg(ModelType::T2V, 3);
    let rcfg = RewardModelConfig {
        blocks: 2,
        trainable_blocks: None,
        heads: 4,
        queries: 1,
        hidden: [32, 16],
    };
    let backbone = random_weights(&gen, 11);
    let head = init_head_params(gen.dim, rcfg.heads, rcfg.queries, rcfg.hidden, 12);
    let tcfg = RewardTrainConfig {
        loss: RewardLoss::Ce,
        optim: AdamWConfig {
            lr: TRAIN_LR,
            eps: TRAIN_EPS,
            max_grad_norm: Some(1.0),
            ..RewardTrainConfig::default().optim
        },
        head_lr: TRAIN_LR,
        recompute: true,
        seed: 3,
        ..RewardTrainConfig::default()
    };
    let mut rng = TestRng::new(1010);
    let shape = [16, SHAPE.frames, SHAPE.height, SHAPE.width];
    let per: usize = shape.iter().product();
    let n = 4;
    let batches: Vec<Batch> = (0..2)
        .map(|_| Batch {
            indices: (0..n).collect(),
            shape,
            latents: BatchLatents::Clips {
                latents: rand(&mut rng, n * per, 1.0),
                labels: (0..n).map(|i| (i % 2) as f32).collect(),
            },
            text: rand(&mut rng, n * TEXT_LEN * gen.text_dim, 1.0),
            text_len: TEXT_LEN,
            text_dim: gen.text_dim,
            i2v: None,
        })
        .collect();
    let (go, co) = both!(g, |be| {
        let model = RewardModel::from_tensors(
            be,
            gen.clone(),
            &backbone,
            &head,
            rcfg.clone(),
            Some(DType::BF16),
        )
        .unwrap();
        let mut tr = RewardTrainer::new(be, model, tcfg.clone()).unwrap();
        let params = |tr: &RewardTrainer<_>| {
            state_vectors(
                &tr.optimizer().export_state(be, &tr.model.backbone.params),
                "param.",
            )
        };
        let p0 = params(&tr);
        let mut run = TrainRun {
            scalars: Vec::new(),
            m1: Vec::new(),
            updates: Vec::new(),
        };
        for (i, batch) in batches.iter().enumerate() {
            let s = tr.micro_step(be, batch).unwrap();
            let u = s.update.expect("accumulation 1: every micro-step updates");
            run.scalars.push((format!("step {} loss", i + 1), s.loss));
            run.scalars
                .push((format!("step {} grad norm", i + 1), u.grad_norm));
            if i == 0 {
                run.m1 = state_vectors(
                    &tr.optimizer().export_state(be, &tr.model.backbone.params),
                    "adam.m.",
                );
            }
            run.updates.push(updates(&params(&tr), &p0));
        }
        run
    });
    compare_runs(r, "PAVRM", &go, &co);
}

fn prfl_step<G: Backend>(g: &G, r: &mut Report) {
    let gen = tiny_model_cfg(ModelType::T2V, 2);
    let gen_w = random_weights(&gen, 21);
    let rcfg = RewardModelConfig {
        blocks: 1,
        trainable_blocks: None,
        heads: 2,
        queries: 1,
        hidden: [16, 8],
    };
    let reward_w = random_weights(&gen, 22);
    let head = init_head_params(gen.dim, rcfg.heads, rcfg.queries, rcfg.hidden, 23);
    let mut rng = TestRng::new(1111);
    let text = rand(&mut rng, SHAPE.batch * TEXT_LEN * gen.text_dim, 1.0);
    let x0 = rand(&mut rng, SHAPE.batch * 16 * SHAPE.voxels(), 1.0);
    let lora = LoraConfig {
        rank: 4,
        alpha: 4.0,
        ..LoraConfig::default()
    };
    let adapters = init_lora(&gen, &lora, 24).unwrap();
    for with_lora in [false, true] {
        let pcfg = PrflTrainConfig {
            steps: 6,
            solver: SolverKind::UniPc,
            // m = 2: a two-step rollout without gradients, then the step with them.
            mid_range: Some((2, 2)),
            // A margin above every reachable score keeps the hinge active.
            margin: 2.0,
            sft: true,
            recompute: true,
            optim: AdamWConfig {
                lr: TRAIN_LR,
                eps: TRAIN_EPS,
                max_grad_norm: Some(1.0),
                ..PrflTrainConfig::default().optim
            },
            lora: with_lora.then(|| lora.clone()),
            seed: 5,
            ..PrflTrainConfig::default()
        };
        let (go, co) = both!(g, |be| {
            let mut generator = WanModel::new(be, gen.clone(), &gen_w, Some(DType::BF16)).unwrap();
            if with_lora {
                generator.attach_lora(be, &lora, &adapters).unwrap();
            }
            let reward = RewardModel::from_tensors(
                be,
                gen.clone(),
                &reward_w,
                &head,
                rcfg.clone(),
                Some(DType::BF16),
            )
            .unwrap();
            let mut tr = PrflTrainer::new(be, generator, reward, pcfg.clone()).unwrap();
            let params = |tr: &PrflTrainer<_>| {
                state_vectors(
                    &tr.optimizer().export_state(be, &tr.generator.params),
                    "param.",
                )
            };
            let p0 = params(&tr);
            let tb = be.upload(&text);
            let cond = Cond {
                text: &tb,
                text_len: TEXT_LEN,
                y: None,
                clip: None,
                image_len: 0,
            };
            let mut run = TrainRun {
                scalars: Vec::new(),
                m1: Vec::new(),
                updates: Vec::new(),
            };
            for i in 0..2 {
                // The SFT update runs first (an optimiser step of its own), then PRFL's.
                let s = tr.micro_step(be, SHAPE, &cond, Some(&x0)).unwrap();
                let step = i + 1;
                run.scalars.push((
                    format!("step {step} sft loss"),
                    s.sft_loss.unwrap_or(f64::NAN),
                ));
                run.scalars
                    .push((format!("step {step} prfl loss"), s.prfl_loss));
                run.scalars.push((format!("step {step} reward"), s.reward));
                if let Some(u) = s.update {
                    run.scalars
                        .push((format!("step {step} grad norm"), u.grad_norm));
                }
                if i == 0 {
                    run.m1 = state_vectors(
                        &tr.optimizer().export_state(be, &tr.generator.params),
                        "adam.m.",
                    );
                }
                run.updates.push(updates(&params(&tr), &p0));
            }
            run
        });
        compare_runs(
            r,
            if with_lora {
                "PRFL (LoRA)"
            } else {
                "PRFL (full)"
            },
            &go,
            &co,
        );
    }
}

// ------------------------------------------------------------------------------------ long attention

/// The tensor-core attention against the simple f32 kernels on the device at a long sequence
/// (`lq = lk = 8192`, `head_dim = 128`, Wan's head dim), forward and backward: no CPU
/// reference is needed (the CPU would take minutes), and the attention test's short cases cannot
/// show an error that grows with the length (the online softmax's rescaling over 128 key tiles,
/// large grids). The backward of both paths reads the simple path's forward. Only with
/// `PRFL_CUDA_LONG=1` (seconds on a GPU, far too slow on the emulated device); the GPU script
/// sets it. On the emulated device without it, the same comparison runs at a short ragged
/// length ([`EMULATED_LONG_L`]), so that the test itself is exercised on every CI run.
/// `PRFL_CUDA_LONG_L` overrides the length either way.
fn attention_long(gpu: &Cuda, r: &mut Report, default_l: usize) {
    use prfl::backend::cuda::attention::{AttnPath, AttnSaved};
    use prfl::backend::Qkv;
    let l = std::env::var("PRFL_CUDA_LONG_L")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(default_l);
    let (batch, heads, d) = (1, 2, 128);
    let shape = AttnShape {
        batch,
        lq: l,
        lk: l,
        heads,
        head_dim: d,
    };
    let mut rng = TestRng::new(809);
    let n = batch * l * heads * d;
    let q = gpu.upload(&rand(&mut rng, n, 2.0));
    let k = gpu.upload(&rand(&mut rng, n, 2.0));
    let v = gpu.upload(&rand(&mut rng, n, 1.0));
    let dout = gpu.upload(&rand(&mut rng, n, 1.0));
    let nl = batch * heads * l;
    let kern = gpu.kernels();
    let qkv = || Qkv {
        q: &q,
        k: &k,
        v: &v,
    };
    let timed = |what: &str, f: &mut dyn FnMut()| {
        let t = std::time::Instant::now();
        f();
        gpu.synchronize().expect("the device runs the kernels");
        println!("  {what}: {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    };
    let fwd = |path: AttnPath| {
        let mut out = gpu.upload(&nan(n));
        let mut lse = gpu.upload(&nan(nl));
        timed(&format!("forward {path:?}"), &mut || {
            kern.attention_forward_with(path, qkv(), shape, &mut out, &mut lse)
                .expect("forward launches")
        });
        (out, lse)
    };
    let (out_s, lse_s) = fwd(AttnPath::Simple);
    let (out_t, lse_t) = fwd(AttnPath::TensorCore);
    let bwd = |path: AttnPath| {
        let (mut dq, mut dk, mut dv) = (
            gpu.upload(&nan(n)),
            gpu.upload(&nan(n)),
            gpu.upload(&nan(n)),
        );
        timed(&format!("backward {path:?}"), &mut || {
            let saved = AttnSaved {
                out: &out_s,
                lse: &lse_s,
            };
            let dqkv = Qkv {
                q: &mut dq,
                k: &mut dk,
                v: &mut dv,
            };
            kern.attention_backward_with(path, qkv(), saved, &dout, shape, dqkv)
                .expect("backward launches")
        });
        [gpu.download(&dq), gpu.download(&dk), gpu.download(&dv)]
    };
    let simple = bwd(AttnPath::Simple);
    let tensor = bwd(AttnPath::TensorCore);
    let sh = format!("lq=lk={l} heads={heads} head_dim={d}");
    let simple_out = gpu.download(&out_s);
    r.check(
        &format!("attention out tensor cores vs simple {sh}"),
        &gpu.download(&out_t),
        &simple_out,
        TOL_BF16,
    );
    let lse_s = gpu.download(&lse_s);
    r.check_floor(
        &format!("attention lse tensor cores vs simple {sh}"),
        &gpu.download(&lse_t),
        &lse_s,
        (lse_s.len() as f64).sqrt(),
        TOL_BF16,
    );
    for (i, what) in ["dq", "dk", "dv"].iter().enumerate() {
        r.check(
            &format!("attention {what} tensor cores vs simple {sh}"),
            &tensor[i],
            &simple[i],
            TOL_BF16,
        );
    }
    r.truth(
        &format!("the simple path's outputs are finite {sh}"),
        simple_out
            .iter()
            .chain(simple.iter().flatten())
            .all(|x| x.is_finite()),
    );
}

/// The long comparison's length on the emulated device: several key and query tiles of every
/// kernel, with ragged tails.
const EMULATED_LONG_L: usize = 333;

#[test]
fn attention_long_tensor_cores_vs_simple() {
    let long = std::env::var("PRFL_CUDA_LONG").is_ok_and(|v| v == "1");
    let default_l = if long {
        8192
    } else if cuda_emu::Variant::from_env().is_some() {
        EMULATED_LONG_L
    } else {
        println!("skipping attention_long_tensor_cores_vs_simple: PRFL_CUDA_LONG=1 is not set");
        return;
    };
    with_gpu("attention_long_tensor_cores_vs_simple", |gpu| {
        let mut r = Report::new("attention_long_tensor_cores_vs_simple");
        attention_long(gpu, &mut r, default_l);
        r.finish();
    });
}

// ------------------------------------------------------------------------------------ teardown

/// Dropping a backend right after a large upload (which returns before the device has copied
/// the last chunks out of the page-locked staging buffers), once on the uploading thread and
/// once on a thread that never ran an op (nothing bound the context there, as in a host's
/// `prfl_destroy`): no panic, no error left in the context (a free that finds no context, or
/// of memory still in use, is recorded there), and the device stays usable.
fn teardown(gpu: &Cuda, r: &mut Report) {
    let mut rng = TestRng::new(1201);
    // 40 MiB: five chunks through the two 8 MiB staging buffers.
    let data = rand(&mut rng, 10 << 20, 1.0);
    for other_thread in [false, true] {
        // The shared device opened, so its options are known to be good.
        let opts = options().expect("the shared device's options");
        let be = match Cuda::open(gpu.info().index, &opts) {
            Ok(be) => be,
            Err(e) => {
                r.truth(&format!("a second backend opens ({e})"), false);
                return;
            }
        };
        // Kept past the backend's drop, to read the errors its teardown recorded.
        let ctx = be.stream().context().clone();
        let buf = be.upload(&data);
        // The buffer's free is ordered after the copy on the stream; the staging buffers are
        // what the teardown must wait for.
        drop(buf);
        let what = if other_thread {
            "on a thread that never ran an op"
        } else {
            "on the uploading thread"
        };
        let dropped = if other_thread {
            std::thread::spawn(move || drop(be)).join().is_ok()
        } else {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(be))).is_ok()
        };
        r.truth(
            &format!("drop right after a 40 MiB staged upload, {what}: no panic"),
            dropped,
        );
        let recorded = ctx.check_err();
        r.truth(
            &format!("drop {what}: no error recorded ({recorded:?})"),
            recorded.is_ok(),
        );
    }
    let x = rand(&mut rng, 4099, 1.0);
    r.check(
        "the shared backend after the teardowns: upload/download",
        &gpu.download(&gpu.upload(&x)),
        &x,
        EXACT,
    );
}

// ------------------------------------------------------------------------------------ tests

macro_rules! gpu_test {
    ($name:ident, $body:ident) => {
        #[test]
        fn $name() {
            with_gpu(stringify!($name), |gpu| {
                let mut r = Report::new(stringify!($name));
                $body(gpu, &mut r);
                r.finish();
            });
        }
    };
}

gpu_test!(memory_and_weights, ops_memory);
gpu_test!(elementwise, ops_elementwise);
gpu_test!(reductions_and_optimiser, ops_reduce_optim);
gpu_test!(linear, ops_linear);
gpu_test!(linear_beyond_f16, ops_linear_beyond_f16);
gpu_test!(linear_k0, ops_linear_k0);
gpu_test!(teardown_after_upload, teardown);
gpu_test!(norms, ops_norm);
gpu_test!(modulation, ops_modulate);
gpu_test!(rope_and_patches, ops_rope_patch);
gpu_test!(attention, ops_attention);
gpu_test!(whole_model_forward_backward, model_forward_backward);
gpu_test!(pavrm_training_step, pavrm_step);
gpu_test!(prfl_training_step, prfl_step);

/// Every check above with the CPU backend on both sides: the harness runs, the specification
/// never reads a poisoned output, and every error is zero. Runs everywhere (no GPU needed).
#[test]
fn harness_self_check_cpu_vs_cpu() {
    let mut r = Report::new("harness_self_check_cpu_vs_cpu");
    r.exact = true;
    ops_memory(&Cpu, &mut r);
    ops_elementwise(&Cpu, &mut r);
    ops_reduce_optim(&Cpu, &mut r);
    ops_linear(&Cpu, &mut r);
    ops_linear_beyond_f16(&Cpu, &mut r);
    ops_linear_k0(&Cpu, &mut r);
    ops_norm(&Cpu, &mut r);
    ops_modulate(&Cpu, &mut r);
    ops_rope_patch(&Cpu, &mut r);
    ops_attention(&Cpu, &mut r);
    model_forward_backward(&Cpu, &mut r);
    pavrm_step(&Cpu, &mut r);
    prfl_step(&Cpu, &mut r);
    r.finish();
}
