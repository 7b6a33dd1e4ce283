//! The built-in demo: the shortened run (`prfl demo --quick`) supports every claim it prints and
//! writes a complete report folder; a tiny run is deterministic in its seed.

use std::path::PathBuf;

use prfl::backend::cpu::Cpu;
use prfl::demo::report::{claims, write_report, CLEARLY_Z};
use prfl::demo::{run, DemoConfig, Silent};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("prfl-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn quick_demo_supports_every_claim_it_prints() {
    let cfg = DemoConfig::quick();
    let r = run(&Cpu, &cfg, &mut Silent).unwrap();
    let dir = temp_dir("demo-quick");
    let table = write_report(&dir, &cfg, &r).unwrap();
    eprintln!("{table}");

    // The claims the table prints, each with its direction...
    let listed = claims(&r);
    assert!(listed.len() >= 8, "{listed:?}");
    for c in &listed {
        assert!(c.holds, "claim does not hold: {}\n\n{table}", c.statement);
    }
    // ...and the same directions spelled out, so a change to `claims` cannot weaken the test.
    let (before, after) = (&r.before.quality.good, &r.after.quality.good);
    assert!(
        after.value > before.value && r.improvement_z >= CLEARLY_Z,
        "quality {before:?} -> {after:?}, z = {}",
        r.improvement_z
    );
    assert!(r.after.mean_reward > r.before.mean_reward);
    for row in &r.reward.accuracy {
        assert!(
            row.pair_accuracy.value > 0.5 && row.accuracy.value > 0.5,
            "t = {}: {row:?}",
            row.timestep
        );
    }
    let e = &r.rejection;
    assert!(e.saved > 0.0 && e.cost_early < e.cost_all, "{e:?}");
    assert!(e.early.value > e.all.value, "{:?} vs {:?}", e.early, e.all);
    // Rejection stops the worst candidates; it must not change the survivors' trajectories.
    assert!(
        e.max_survivor_deviation < 1e-3,
        "{}",
        e.max_survivor_deviation
    );
    assert_eq!(
        before.n,
        cfg.early_reject.groups * cfg.early_reject.candidates
    );

    for name in [
        "summary.json",
        "summary.md",
        "accuracy.svg",
        "training.svg",
        "reward.svg",
        "quality.svg",
        "before.gif",
        "after.gif",
    ] {
        let path = dir.join(name);
        let len = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .len();
        assert!(len > 0, "{name} is empty");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(
        json["claims"].as_array().map(Vec::len),
        Some(listed.len()),
        "summary.json lists the claims"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A few steps of every phase: enough to exercise the whole pipeline twice in seconds.
fn tiny() -> DemoConfig {
    let mut cfg = DemoConfig::quick();
    cfg.pretrain.steps = 30;
    cfg.reward.steps = 10;
    cfg.reward.calibration_steps = 5;
    cfg.reward.eval_clips = 16;
    cfg.prfl.steps = 4;
    cfg.prfl.control = true;
    cfg.early_reject.groups = 2;
    cfg.preview_clips = 2;
    cfg
}

#[test]
fn a_run_is_deterministic_in_its_seed() {
    let summary = |seed: u64| {
        let cfg = DemoConfig { seed, ..tiny() };
        let r = run(&Cpu, &cfg, &mut Silent).unwrap();
        let mut v = serde_json::to_value(&r).unwrap();
        // Timings are the only thing allowed to differ.
        strip_seconds(&mut v);
        (v, r.after.preview)
    };
    let (a, pa) = summary(5);
    let (b, pb) = summary(5);
    assert_eq!(a, b);
    assert_eq!(pa, pb);
    let (c, _) = summary(6);
    assert_ne!(a, c, "another seed should give another run");
}

fn strip_seconds(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            map.retain(|k, _| !k.contains("seconds"));
            map.values_mut().for_each(strip_seconds);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_seconds),
        _ => {}
    }
}
