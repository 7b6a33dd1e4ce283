//! `prfl demo`: the end-to-end run on the built-in world, with progress bars on stderr, the
//! summary table on stdout and the report folder on disk.

use std::path::PathBuf;

use clap::Args;
use prfl::demo::report::write_report;
use prfl::demo::{run, DemoConfig, Observer};

use crate::device_args::DeviceArgs;
use crate::progress::Progress;

#[derive(Args)]
pub struct DemoArgs {
    /// Report folder (plots, previews, summary.json, summary.md).
    #[arg(long, default_value = "out/demo")]
    out: PathBuf,
    /// Seed of every random stream (weights, data, noise): a run is deterministic in it.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The shortened run (the test's settings): a fraction of the budgets and samples.
    #[arg(long)]
    quick: bool,
    /// TOML file overriding settings (any field of the demo configuration, e.g.
    /// `[prfl]\nsteps = 300`), applied over the full or quick defaults.
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArgs,
}

/// Progress bars for the phases, result lines between them.
struct Bars {
    bar: Option<Progress>,
}

impl Observer for Bars {
    fn phase(&mut self, name: &str, total: u64) {
        self.bar = Some(Progress::new(name, total));
    }
    fn tick(&mut self, msg: &str) {
        if let Some(b) = &mut self.bar {
            b.tick(msg);
        }
    }
    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish();
        }
    }
    fn note(&mut self, line: &str) {
        if let Some(b) = &self.bar {
            b.clear();
        }
        eprintln!("{line}");
    }
}

/// The settings: full or quick defaults, then the TOML overrides, then the seed.
fn settings(args: &DemoArgs) -> Result<DemoConfig, String> {
    let base = if args.quick {
        DemoConfig::quick()
    } else {
        DemoConfig::default()
    };
    let mut cfg = match &args.config {
        None => base,
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let overrides: toml::Value =
                toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            let mut merged = toml::Value::try_from(&base).map_err(|e| e.to_string())?;
            merge(&mut merged, overrides);
            merged
                .try_into()
                .map_err(|e| format!("{}: {e}", path.display()))?
        }
    };
    cfg.seed = args.seed;
    Ok(cfg)
}

/// Overlays `top` on `base`, table by table.
fn merge(base: &mut toml::Value, top: toml::Value) {
    match (base, top) {
        (toml::Value::Table(b), toml::Value::Table(t)) => {
            for (k, v) in t {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

pub fn demo(args: &DemoArgs) -> Result<(), String> {
    let cfg = settings(args)?;
    let be = args.device.open()?;
    eprintln!(
        "prfl demo ({}, seed {}) on {}: report in {}",
        if args.quick { "quick" } else { "full" },
        cfg.seed,
        prfl::backend::Backend::name(&be),
        args.out.display()
    );
    let results = run(&be, &cfg, &mut Bars { bar: None }).map_err(|e| e.to_string())?;
    let table = write_report(&args.out, &cfg, &results).map_err(|e| e.to_string())?;
    println!("{table}");
    Ok(())
}
