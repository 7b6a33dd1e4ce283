//! `prfl::schedule` against diffusers (fixtures from tools/oracle/make_scheduler_fixtures.py) and
//! against its own algebra.
//!
//! Tests named `coefficients_*` replay the published solver coefficients on host vectors, so they
//! check the math independently of the backend; tests named `sampler_*` run [`Sampler`] on the
//! CPU backend.

use prfl::backend::cpu::Cpu;
use prfl::backend::Backend;
use prfl::schedule::grid::{linspace, wan_sigma_max};
use prfl::schedule::{
    add_noise, euler, unipc, velocity_target, x0_estimate, LevelDistribution, Rng, Sampler,
    SamplingGrid, SolverKind, TrainingLevels,
};
use prfl::testutil::max_rel_err;
use safetensors::{Dtype, SafeTensors};

/// (steps, shift) pairs with diffusers fixtures.
const CASES: [(usize, u32); 3] = [(10, 5), (40, 5), (8, 3)];
/// Sample parity with diffusers' float32 loop (max |diff| / max |ref|).
const TOL: f32 = 1e-5;

struct Fixture {
    bytes: Vec<u8>,
}

impl Fixture {
    fn load(name: &str) -> Fixture {
        let path = format!(
            "{}/tests/fixtures/schedulers/{name}.safetensors",
            env!("CARGO_MANIFEST_DIR")
        );
        let bytes = std::fs::read(&path).unwrap_or_else(|e| {
            panic!("{path}: {e} (run tools/oracle/make_scheduler_fixtures.py)")
        });
        Fixture { bytes }
    }

    fn f64s(&self, name: &str) -> Vec<f64> {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st
            .tensor(name)
            .unwrap_or_else(|_| panic!("no tensor {name}"));
        match t.dtype() {
            Dtype::F32 => t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            Dtype::F64 => t
                .data()
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            other => panic!("{name}: unexpected dtype {other:?}"),
        }
    }

    fn f32s(&self, name: &str) -> Vec<f32> {
        self.f64s(name).into_iter().map(|v| v as f32).collect()
    }
}

fn grid_for(solver: &str, n: usize, shift: u32) -> SamplingGrid {
    match solver {
        "euler" => SamplingGrid::diffusers_euler(n, shift as f64),
        "unipc" => SamplingGrid::diffusers_unipc(n, shift as f64),
        _ => unreachable!(),
    }
}

fn kind_for(solver: &str) -> SolverKind {
    match solver {
        "euler" => SolverKind::Euler,
        _ => SolverKind::UniPc,
    }
}

fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    let err = max_rel_err(got, want);
    assert!(
        err <= tol,
        "{what}: relative error {err:e} > {tol:e}\n got  {:?}\n want {:?}",
        &got[..4],
        &want[..4]
    );
}

// ------------------------------------------------------------------------------------- grids

#[test]
fn grids_match_diffusers_exactly() {
    for solver in ["euler", "unipc"] {
        for (n, s) in CASES {
            let fx = Fixture::load(&format!("{solver}_n{n}_s{s}"));
            let grid = grid_for(solver, n, s);
            assert_eq!(grid.steps(), n);
            assert_eq!(
                grid.sigmas(),
                fx.f32s("sigmas").as_slice(),
                "{solver} n={n} s={s} sigmas"
            );
            assert_eq!(
                grid.timesteps(),
                fx.f32s("timesteps").as_slice(),
                "{solver} n={n} s={s} timesteps"
            );
        }
    }
}

#[test]
fn wan_grid_matches_method_md_and_reference() {
    let expected = [
        999, 994, 989, 983, 978, 972, 965, 959, 952, 944, 937, 929, 920, 911, 902, 892, 882, 870,
        859, 846, 833, 818, 803, 786, 768, 749, 728, 706, 681, 654, 624, 591, 555, 514, 468, 416,
        356, 288, 208, 113,
    ];
    let grid = SamplingGrid::wan(40, 5.0);
    let got: Vec<i64> = grid.timesteps().iter().map(|&t| t as i64).collect();
    assert_eq!(got, expected);
    let fx = Fixture::load("unipc_wan_n40_s5");
    assert_eq!(grid.sigmas(), fx.f32s("sigmas").as_slice());
    assert_eq!(grid.timesteps(), fx.f32s("timesteps").as_slice());
    // sigma_max is float32(0.999), as the reference reads it back from a float32 tensor.
    assert_eq!(wan_sigma_max(), 0.999f32 as f64);
    assert_eq!(grid.sigma(40), 0.0);
}

#[test]
fn linspace_matches_numpy_endpoints() {
    let v = linspace(1.0, 0.0, 1001);
    assert_eq!(v.len(), 1001);
    assert_eq!((v[0], v[1000]), (1.0, 0.0));
    assert_eq!(v[750], 0.25);
    assert_eq!(linspace(3.0, 7.0, 1), vec![3.0]);
}

#[test]
fn custom_grids_are_validated() {
    assert!(SamplingGrid::from_parts(vec![0.9, 0.5, 0.0], vec![900.0, 500.0]).is_ok());
    assert!(SamplingGrid::from_parts(vec![0.9, 0.5], vec![900.0, 500.0]).is_err());
    assert!(SamplingGrid::from_parts(vec![0.9, 0.95, 0.0], vec![900.0, 950.0]).is_err());
    assert!(SamplingGrid::from_parts(vec![0.9, 0.5, 0.1], vec![900.0, 500.0]).is_err());
    // UniPC cannot start at sigma = 1 (diffusers' Euler grid does).
    let euler = SamplingGrid::diffusers_euler(10, 5.0);
    assert!(Sampler::<Cpu>::new(euler.clone(), SolverKind::UniPc).is_err());
    assert!(Sampler::<Cpu>::new(euler, SolverKind::Euler).is_ok());
}

// ----------------------------------------------------------------------------- training levels

#[test]
fn training_levels_hand_checked() {
    let levels = TrainingLevels::default();
    assert_eq!(levels.shift, 5.0);
    let l0 = levels.level(0);
    assert_eq!((l0.sigma, l0.timestep), (1.0, 1000.0));
    // Level 1: sigma 0.999 -> 4.995 / 4.996 = 0.99979984: timestep 999 (truncated, not rounded).
    let l1 = levels.level(1);
    assert!((l1.sigma as f64 - 4.995 / 4.996).abs() < 1e-7);
    assert_eq!(l1.timestep, 999.0);
    // Level 750: sigma 0.25 -> 1.25 / 2 = 0.625 exactly: timestep 625 (not 624).
    let l750 = levels.level(750);
    assert_eq!((l750.sigma, l750.timestep), (0.625, 625.0));
    // Level 999: sigma 0.001 -> 0.005 / 1.004 = 0.00498008: timestep 4.
    let l999 = levels.level(999);
    assert!((l999.sigma as f64 - 0.005 / 1.004).abs() < 1e-9);
    assert_eq!(l999.timestep, 4.0);
}

#[test]
fn training_levels_match_numpy() {
    let fx = Fixture::load("training_levels_s5");
    let (sigmas, timesteps) = (fx.f64s("sigmas"), fx.f64s("timesteps"));
    let levels = TrainingLevels::new(5.0);
    for k in 0..TrainingLevels::COUNT {
        let l = levels.level(k);
        assert_eq!(l.index, k);
        assert_eq!(l.sigma, sigmas[k] as f32, "level {k}");
        assert_eq!(l.timestep as f64, timesteps[k], "level {k}");
    }
}

#[test]
fn level_index_is_floor_1000u_clamped() {
    assert_eq!(TrainingLevels::index_for(0.0), 0);
    assert_eq!(TrainingLevels::index_for(0.0009999), 0);
    assert_eq!(TrainingLevels::index_for(0.001), 1);
    assert_eq!(TrainingLevels::index_for(0.5), 500);
    assert_eq!(TrainingLevels::index_for(0.99999), 999);
    assert_eq!(TrainingLevels::index_for(1.0), 999);
    assert_eq!(TrainingLevels::index_for(-0.1), 0);
    assert_eq!(TrainingLevels::new(5.0).level_for(0.75).timestep, 625.0);
}

#[test]
fn level_draws_follow_the_distribution() {
    let mut rng = Rng::seed_from_u64(3);
    let uniform = TrainingLevels::new(5.0);
    let n = 20_000;
    let mean = (0..n)
        .map(|_| uniform.draw(&mut rng).index as f64)
        .sum::<f64>()
        / n as f64;
    assert!((mean - 499.5).abs() < 10.0, "uniform mean index {mean}");
    // Logit-normal(0, 1): u concentrates around 0.5; a quarter of the draws fall within
    // |logit u| < 0.32, i.e. levels 420..580.
    let ln = uniform.with_distribution(LevelDistribution::LogitNormal {
        mean: 0.0,
        std: 1.0,
    });
    let mid = (0..n)
        .filter(|_| (420..580).contains(&ln.draw(&mut rng).index))
        .count() as f64
        / n as f64;
    assert!(
        (mid - 0.25).abs() < 0.02,
        "logit-normal mass in the middle {mid}"
    );
    let shifted = uniform.with_distribution(LevelDistribution::LogitNormal {
        mean: 2.0,
        std: 0.1,
    });
    // sigmoid(2) = 0.881 -> index 880 or so.
    let idx = shifted.draw(&mut rng).index;
    assert!((840..920).contains(&idx), "{idx}");
}

// --------------------------------------------------------------------- coefficient-level checks

/// Replays diffusers' loop with the published coefficients on host vectors.
fn replay_unipc(sigmas: &[f32], x0: &[f32], outs: &[f32]) -> Vec<Vec<f64>> {
    let n = sigmas.len() - 1;
    let d = x0.len();
    let mut x: Vec<f64> = x0.iter().map(|&v| v as f64).collect();
    let (mut last, mut m1, mut m2) = (vec![0.0; d], vec![0.0; d], vec![0.0; d]);
    let mut samples = Vec::new();
    for i in 0..n {
        let v = &outs[i * d..(i + 1) * d];
        let m: Vec<f64> = (0..d)
            .map(|j| x[j] - sigmas[i] as f64 * v[j] as f64)
            .collect();
        let c = unipc::step_coefficients(sigmas, i);
        let xc: Vec<f64> = match c.corrector {
            None => x.clone(),
            Some(k) => (0..d)
                .map(|j| k.last_sample * last[j] + k.cur * m[j] + k.prev * m1[j] + k.prev2 * m2[j])
                .collect(),
        };
        let p = c.predictor;
        x = (0..d)
            .map(|j| p.sample * xc[j] + p.cur * m[j] + p.prev * m1[j])
            .collect();
        samples.push(x.clone());
        last = xc;
        m2 = std::mem::replace(&mut m1, m);
    }
    samples
}

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

#[test]
fn coefficients_reproduce_diffusers_unipc() {
    let mut names: Vec<String> = CASES
        .iter()
        .map(|(n, s)| format!("unipc_n{n}_s{s}"))
        .collect();
    names.push("unipc_wan_n40_s5".into());
    for name in names {
        let fx = Fixture::load(&name);
        let sigmas = fx.f32s("sigmas");
        let (x, outs, want) = (fx.f32s("x"), fx.f32s("model_outputs"), fx.f32s("samples"));
        let d = x.len();
        let samples = replay_unipc(&sigmas, &x, &outs);
        for (i, s) in samples.iter().enumerate() {
            let want_i = &want[i * d..(i + 1) * d];
            assert_close(
                &format!("{name} step {i} (f32 loop)"),
                &to_f32(s),
                want_i,
                TOL,
            );
        }
        if name != "unipc_wan_n40_s5" {
            // diffusers run in float64 on the same sigmas: only the float32 rounding of the
            // inputs separates it from this f64 replay.
            let want64 = fx.f32s("samples_f64");
            for (i, s) in samples.iter().enumerate() {
                let want_i = &want64[i * d..(i + 1) * d];
                assert_close(
                    &format!("{name} step {i} (f64 loop)"),
                    &to_f32(s),
                    want_i,
                    1e-6,
                );
            }
        }
    }
}

#[test]
fn coefficients_order1_unipc_predictor_is_euler() {
    // With m = x - sigma v, order-1 UniP is x' = (p.sample + p.cur) x - sigma p.cur v, which must
    // be x + (sigma' - sigma) v on every step of every grid.
    for grid in [
        SamplingGrid::wan(40, 5.0),
        SamplingGrid::diffusers_unipc(10, 3.0),
    ] {
        let s = grid.sigmas();
        for i in 0..grid.steps() {
            let p = unipc::predictor(s, i, 1);
            let on_x = p.sample + p.cur;
            let on_v = -(s[i] as f64) * p.cur;
            assert!((on_x - 1.0).abs() < 1e-12, "step {i}: x coefficient {on_x}");
            let dt = euler::euler_dt(s, i) as f64;
            assert!(
                (on_v - dt).abs() < 1e-7,
                "step {i}: v coefficient {on_v} vs {dt}"
            );
        }
    }
}

#[test]
fn coefficients_solver_orders() {
    let n = 6;
    let orders: Vec<usize> = (0..n).map(|i| unipc::predictor_order(i, n)).collect();
    assert_eq!(orders, [1, 2, 2, 2, 2, 1]);
    assert_eq!(unipc::predictor_order(0, 1), 1);
    let grid = SamplingGrid::wan(n, 5.0);
    let c = unipc::step_coefficients(grid.sigmas(), 0);
    assert!(c.corrector.is_none());
    assert_eq!(c.predictor.prev, 0.0);
    // Step 1 corrects at order 1 (predictor 0 was order 1): no m_{i-2} term.
    let c1 = unipc::step_coefficients(grid.sigmas(), 1)
        .corrector
        .unwrap();
    assert_eq!(c1.prev2, 0.0);
    assert_ne!(
        unipc::step_coefficients(grid.sigmas(), 2)
            .corrector
            .unwrap()
            .prev2,
        0.0
    );
    // The last step lands on the x0 prediction: x_n = m_{n-1}.
    let last = unipc::step_coefficients(grid.sigmas(), n - 1).predictor;
    assert_eq!((last.sample, last.cur, last.prev), (0.0, 1.0, 0.0));
    // Consistency: each update preserves constants (coefficients sum to 1 on x and m terms
    // whenever every input equals the same clean sample, since then x0 is a fixed point).
    for i in 0..n {
        let c = unipc::step_coefficients(grid.sigmas(), i);
        let p = c.predictor;
        assert!(
            (p.sample + p.cur + p.prev - 1.0).abs() < 1e-12,
            "predictor {i}"
        );
        if let Some(k) = c.corrector {
            let sum = k.last_sample + k.cur + k.prev + k.prev2;
            assert!((sum - 1.0).abs() < 1e-12, "corrector {i}");
        }
    }
}

// -------------------------------------------------------------------------- sampler (backend)

#[test]
fn sampler_matches_diffusers_rollouts() {
    let cpu = Cpu;
    let mut runs: Vec<(String, SamplingGrid, SolverKind)> = Vec::new();
    for solver in ["euler", "unipc"] {
        for (n, s) in CASES {
            runs.push((
                format!("{solver}_n{n}_s{s}"),
                grid_for(solver, n, s),
                kind_for(solver),
            ));
        }
    }
    runs.push((
        "unipc_wan_n40_s5".into(),
        SamplingGrid::wan(40, 5.0),
        SolverKind::UniPc,
    ));
    for (name, grid, kind) in runs {
        let fx = Fixture::load(&name);
        let (x, outs, want) = (fx.f32s("x"), fx.f32s("model_outputs"), fx.f32s("samples"));
        let d = x.len();
        let mut sampler = Sampler::<Cpu>::new(grid, kind).unwrap();
        // Twice, to check that reset() really starts a new rollout.
        for _ in 0..2 {
            sampler.reset();
            let mut sample = cpu.upload(&x);
            for i in 0..sampler.steps() {
                let v = cpu.upload(&outs[i * d..(i + 1) * d]);
                sample = sampler.step(&cpu, &v, &sample);
                let want_i = &want[i * d..(i + 1) * d];
                assert_close(
                    &format!("{name} step {i}"),
                    &cpu.download(&sample),
                    want_i,
                    TOL,
                );
            }
            assert_eq!(sampler.index(), sampler.steps());
        }
    }
}

#[test]
fn sampler_run_to_then_step_equals_stepping() {
    let cpu = Cpu;
    let fx = Fixture::load("unipc_wan_n40_s5");
    let (x, outs, want) = (fx.f32s("x"), fx.f32s("model_outputs"), fx.f32s("samples"));
    let d = x.len();
    let mut sampler = Sampler::<Cpu>::new(SamplingGrid::wan(40, 5.0), SolverKind::UniPc).unwrap();
    let m = 17;
    let mut seen = Vec::new();
    let x_m = sampler
        .run_to(&cpu, cpu.upload(&x), m, |_, t, i| {
            seen.push((i, t));
            Ok(cpu.upload(&outs[i * d..(i + 1) * d]))
        })
        .unwrap();
    assert_eq!(sampler.index(), m);
    assert_eq!(seen.len(), m);
    assert_eq!(seen[3], (3, 983.0));
    assert_close("x_m", &cpu.download(&x_m), &want[(m - 1) * d..m * d], TOL);
    let v = cpu.upload(&outs[m * d..(m + 1) * d]);
    let x_next = sampler.step(&cpu, &v, &x_m);
    assert_close(
        "x_{m+1}",
        &cpu.download(&x_next),
        &want[m * d..(m + 1) * d],
        TOL,
    );
}

/// `x_{i+1}` after replaying steps `0..i` with `outs` and taking step `i` with `v_i`.
fn step_i(sampler: &mut Sampler<Cpu>, x: &[f32], outs: &[f32], i: usize, v_i: &[f32]) -> Vec<f32> {
    let cpu = Cpu;
    let d = x.len();
    sampler.reset();
    let x_i = sampler
        .run_to(&cpu, cpu.upload(x), i, |_, _, k| {
            Ok(cpu.upload(&outs[k * d..(k + 1) * d]))
        })
        .unwrap();
    cpu.download(&sampler.step(&cpu, &cpu.upload(v_i), &x_i))
}

#[test]
fn sampler_output_coefficient_matches_finite_difference() {
    let grids = [
        (SamplingGrid::wan(40, 5.0), "unipc_wan_n40_s5"),
        (SamplingGrid::diffusers_unipc(8, 3.0), "unipc_n8_s3"),
        (SamplingGrid::diffusers_euler(10, 5.0), "euler_n10_s5"),
    ];
    let mut rng = Rng::seed_from_u64(11);
    for (grid, name) in grids {
        let fx = Fixture::load(name);
        let (x, outs) = (fx.f32s("x"), fx.f32s("model_outputs"));
        let d = x.len();
        let kinds: &[SolverKind] = if grid.sigma(0) < 1.0 {
            &[SolverKind::Euler, SolverKind::UniPc]
        } else {
            &[SolverKind::Euler]
        };
        for &kind in kinds {
            let mut sampler = Sampler::<Cpu>::new(grid.clone(), kind).unwrap();
            for i in 0..grid.steps() {
                // The update is exactly linear in v_i, so a unit perturbation has no truncation
                // error: (x(v + u) - x(v)) / 1 = coefficient * u up to f32 rounding.
                let v = outs[i * d..(i + 1) * d].to_vec();
                let mut u = vec![0.0f32; d];
                rng.fill_normal(&mut u);
                let vp: Vec<f32> = v.iter().zip(&u).map(|(a, b)| a + b).collect();
                let base = step_i(&mut sampler, &x, &outs, i, &v);
                let pert = step_i(&mut sampler, &x, &outs, i, &vp);
                let fd: Vec<f32> = pert.iter().zip(&base).map(|(p, b)| p - b).collect();
                let c = sampler.output_coefficient(i);
                let predicted: Vec<f32> = u.iter().map(|&e| c * e).collect();
                let err = max_rel_err(&fd, &predicted);
                assert!(
                    err < 1e-3,
                    "{name} {kind:?} step {i}: coefficient {c}, rel err {err:e}"
                );
            }
        }
    }
}

#[test]
fn sampler_euler_equals_unipc_on_a_linear_problem() {
    // A point-mass data distribution: the exact velocity field is v(x, sigma) = (x - x0) / sigma,
    // so the x0 prediction is x0 at every step, UniPC's history differences vanish and every
    // update (Euler's too) moves exactly along the straight path (1 - sigma) x0 + sigma eps.
    let cpu = Cpu;
    let d = 32;
    let mut rng = Rng::seed_from_u64(5);
    let (mut x0, mut eps) = (vec![0.0f32; d], vec![0.0f32; d]);
    rng.fill_normal(&mut x0);
    rng.fill_normal(&mut eps);
    let grid = SamplingGrid::wan(12, 5.0);
    let x_start = cpu.download(&add_noise(
        &cpu,
        &cpu.upload(&x0),
        &cpu.upload(&eps),
        grid.sigma(0),
    ));
    let mut trajectories = Vec::new();
    for kind in [SolverKind::Euler, SolverKind::UniPc] {
        let mut sampler = Sampler::<Cpu>::new(grid.clone(), kind).unwrap();
        let mut x = cpu.upload(&x_start);
        let mut traj = Vec::new();
        for i in 0..grid.steps() {
            let s = grid.sigma(i);
            let v: Vec<f32> = cpu
                .download(&x)
                .iter()
                .zip(&x0)
                .map(|(xi, ai)| (xi - ai) / s)
                .collect();
            x = sampler.step(&cpu, &cpu.upload(&v), &x);
            let exact: Vec<f32> = x0
                .iter()
                .zip(&eps)
                .map(|(a, e)| (1.0 - grid.sigma(i + 1)) * a + grid.sigma(i + 1) * e)
                .collect();
            assert_close(
                &format!("{kind:?} step {i} vs exact path"),
                &cpu.download(&x),
                &exact,
                1e-5,
            );
            traj.push(cpu.download(&x));
        }
        trajectories.push(traj);
    }
    for (i, (e, u)) in trajectories[0].iter().zip(&trajectories[1]).enumerate() {
        assert_close(&format!("Euler vs UniPC step {i}"), e, u, 1e-5);
    }
}

// ---------------------------------------------------------------------------- training noise

#[test]
fn training_noise_identities() {
    let cpu = Cpu;
    let d = 48;
    let mut rng = Rng::seed_from_u64(9);
    let (mut x0, mut eps) = (vec![0.0f32; d], vec![0.0f32; d]);
    rng.fill_normal(&mut x0);
    rng.fill_normal(&mut eps);
    let level = TrainingLevels::default().level(300);
    let (bx0, beps) = (cpu.upload(&x0), cpu.upload(&eps));
    let x_t = add_noise(&cpu, &bx0, &beps, level.sigma);
    let s = level.sigma;
    let want: Vec<f32> = x0
        .iter()
        .zip(&eps)
        .map(|(a, e)| (1.0 - s) * a + s * e)
        .collect();
    assert_close("x_t", &cpu.download(&x_t), &want, 1e-6);
    let v = velocity_target(&cpu, &bx0, &beps);
    let want_v: Vec<f32> = x0.iter().zip(&eps).map(|(a, e)| e - a).collect();
    assert_close("v", &cpu.download(&v), &want_v, 1e-6);
    // The exact velocity recovers x0.
    let est = x0_estimate(&cpu, &x_t, &v, level.sigma);
    assert_close("x0 estimate", &cpu.download(&est), &x0, 1e-5);
}
