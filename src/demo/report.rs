//! The report folder: the summary table (returned for printing and written as `summary.md`),
//! `summary.json` (settings and every measurement), the SVG plots and the GIF previews.
//!
//! Every claim of the table is stated with its direction and checked ([`claims`]); the test
//! asserts the same list, so what the demo prints is what is tested.

use std::fmt::Write;
use std::path::Path;

use serde::Serialize;

use super::config::DemoConfig;
use super::gif::write_gif;
use super::results::{CurvePoint, DemoResults};
use super::svg::{Bar, BarChart, LineChart, Series, PALETTE};
use crate::{Error, Result};

/// One claim the demo makes and whether this run supports it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Claim {
    pub statement: String,
    pub holds: bool,
}

/// The two-proportion z a "clear" improvement of the fraction of good clips needs (about a 2.3%
/// one-sided chance of a difference this large between two equal generators).
pub const CLEARLY_Z: f64 = 2.0;

/// The demo's claims, each with its direction, from the run's measurements.
pub fn claims(r: &DemoResults) -> Vec<Claim> {
    let mut out = Vec::new();
    let mut claim = |statement: String, holds: bool| out.push(Claim { statement, holds });
    claim(
        format!(
            "pre-training lowers the flow-matching loss ({:.3} -> {:.3})",
            r.pretrain.loss.first().map_or(f64::NAN, |p| p.value),
            r.pretrain.final_loss
        ),
        r.pretrain.final_loss < r.pretrain.loss.first().map_or(f64::NAN, |p| p.value),
    );
    for row in &r.reward.accuracy {
        claim(
            format!(
                "reward accuracy at t={:.0} is above chance: clips {:.2} [{:.2}, {:.2}], pairs \
                 {:.2} [{:.2}, {:.2}]",
                row.timestep,
                row.accuracy.value,
                row.accuracy.low,
                row.accuracy.high,
                row.pair_accuracy.value,
                row.pair_accuracy.low,
                row.pair_accuracy.high
            ),
            row.accuracy.value > 0.5 && row.pair_accuracy.value > 0.5,
        );
    }
    claim(
        format!(
            "PRFL raises the reward of fresh samples ({:.3} -> {:.3})",
            r.before.mean_reward, r.after.mean_reward
        ),
        r.after.mean_reward > r.before.mean_reward,
    );
    claim(
        format!(
            "PRFL clearly raises the rule-measured fraction of good clips ({:.2} -> {:.2}, \
             two-proportion z = {:.1} >= {CLEARLY_Z})",
            r.before.quality.good.value, r.after.quality.good.value, r.improvement_z
        ),
        r.after.quality.good.value > r.before.quality.good.value && r.improvement_z >= CLEARLY_Z,
    );
    if let Some(c) = &r.control {
        claim(
            format!(
                "the gain is the reward's: PRFL beats the same fine-tuning without it ({:.2} vs \
                 {:.2}, z = {:.1})",
                r.after.quality.good.value, c.after.quality.good.value, c.prfl_vs_control_z
            ),
            r.after.quality.good.value > c.after.quality.good.value,
        );
    }
    let e = &r.rejection;
    claim(
        format!(
            "early rejection saves generator evaluations ({:.0}% of {:.0})",
            100.0 * e.saved,
            e.cost_all
        ),
        e.saved > 0.0,
    );
    claim(
        format!(
            "early rejection keeps better clips than sampling all ({:.2} vs {:.2})",
            e.early.value, e.all.value
        ),
        e.early.value > e.all.value,
    );
    out
}

/// Writes the report into `dir` (created if needed) and returns the summary table.
pub fn write_report(dir: &Path, cfg: &DemoConfig, r: &DemoResults) -> Result<String> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let table = summary_table(r);
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| Error::io(&path, e))
    };
    let json = serde_json::json!({ "config": cfg, "results": r, "claims": claims(r) });
    let summary = serde_json::to_string_pretty(&json)
        .map_err(|e| Error::InvalidInput(format!("summary.json: {e}")))?;
    write("summary.json", &summary)?;
    write("summary.md", &table)?;
    write("accuracy.svg", &accuracy_chart(r))?;
    write("training.svg", &training_chart(r))?;
    write("reward.svg", &reward_chart(r))?;
    write("quality.svg", &quality_chart(r))?;
    let shape = cfg.world.world().shape();
    for (name, clips) in [
        ("before.gif", &r.before.preview),
        ("after.gif", &r.after.preview),
    ] {
        if !clips.is_empty() {
            write_gif(&dir.join(name), clips, shape, 250)?;
        }
    }
    Ok(table)
}

/// The summary as a Markdown table (it reads as plain text on a terminal too).
pub fn summary_table(r: &DemoResults) -> String {
    let mut s = String::new();
    let e = &r.rejection;
    let _ = writeln!(s, "## prfl demo summary (seed {})\n", r.seed);
    let _ = writeln!(s, "| measurement | value |");
    let _ = writeln!(s, "|---|---|");
    let mut row = |k: &str, v: String| {
        let _ = writeln!(s, "| {k} | {v} |");
    };
    row(
        "generator / reward parameters",
        format!("{} / {}", r.generator_params, r.reward_params),
    );
    row(
        "a. pre-training",
        format!(
            "{} steps, {} clips, flow-matching loss {:.3}, {:.0} s",
            r.pretrain.steps, r.pretrain.clips_seen, r.pretrain.final_loss, r.pretrain.seconds
        ),
    );
    row(
        "b. reward model",
        format!(
            "{} pair steps + {} calibration steps, {} clips, {:.0} s",
            r.reward.steps, r.reward.calibration_steps, r.reward.clips_seen, r.reward.seconds
        ),
    );
    for a in &r.reward.accuracy {
        row(
            &format!("   held-out accuracy at t={:.0}", a.timestep),
            format!(
                "clips {}, AUC {}; pairs {}",
                a.accuracy.display(),
                a.auc.map_or("-".into(), |v| format!("{v:.2}")),
                a.pair_accuracy.display()
            ),
        );
    }
    row(
        "c. PRFL",
        format!(
            "{} steps, rollout reward {:.3} -> {:.3}, {:.0} s",
            r.prfl.steps,
            r.prfl.reward.first().map_or(f64::NAN, |p| p.value),
            r.prfl.reward.last().map_or(f64::NAN, |p| p.value),
            r.prfl.seconds
        ),
    );
    row(
        "d. fraction good before (rule, Wilson 95%)",
        r.before.quality.good.display(),
    );
    row(
        "d. fraction good after (rule, Wilson 95%)",
        r.after.quality.good.display(),
    );
    row(
        "   mean motion quality before -> after",
        format!(
            "{:.3} -> {:.3}",
            r.before.quality.mean_motion, r.after.quality.mean_motion
        ),
    );
    row(
        "   mean reward (t=0) before -> after",
        format!("{:.3} -> {:.3}", r.before.mean_reward, r.after.mean_reward),
    );
    row(
        "   two-proportion z (after vs before)",
        format!("{:.2}", r.improvement_z),
    );
    if let Some(c) = &r.control {
        row(
            "control: same fine-tuning, reward weight 0",
            format!(
                "fraction good {}, {:.0} s",
                c.after.quality.good.display(),
                c.prfl.seconds
            ),
        );
        row(
            "   two-proportion z (PRFL vs control)",
            format!("{:.2}", c.prfl_vs_control_z),
        );
    }
    row(
        &format!(
            "early rejection: keep {} of {} at step {}/{} (t={:.0})",
            e.keep, e.candidates, e.at_step, e.steps, e.timestep
        ),
        format!("{} groups", e.groups),
    );
    row(
        "   all candidates to the end",
        format!("good {}, cost {:.0}", e.all.display(), e.cost_all),
    );
    row(
        "   early rejection",
        format!(
            "good {}, cost {:.0} ({:.0}% saved)",
            e.early.display(),
            e.cost_early,
            100.0 * e.saved
        ),
    );
    row(
        "   best of N by reward at the end",
        format!(
            "good {}, cost {:.0}",
            e.best_at_end.display(),
            e.cost_best_at_end
        ),
    );
    row("total time", format!("{:.0} s", r.total_seconds));
    let _ = writeln!(s, "\nCosts are generator evaluations of one clip (a reward evaluation counts {:.2}: its share of the generator's blocks).", e.reward_cost);
    let _ = writeln!(s, "\nClaims:");
    for c in claims(r) {
        let _ = writeln!(s, "- [{}] {}", if c.holds { "x" } else { " " }, c.statement);
    }
    s
}

fn curve(points: &[CurvePoint]) -> Vec<(f64, f64)> {
    points.iter().map(|p| (p.step as f64, p.value)).collect()
}

fn accuracy_chart(r: &DemoResults) -> String {
    let rows = &r.reward.accuracy;
    LineChart {
        title: "Reward model accuracy vs timestep (held-out clips)".into(),
        x_label: "timestep t (noise level 1000 sigma)".into(),
        y_label: "accuracy".into(),
        series: vec![
            Series {
                name: "accuracy".into(),
                points: rows
                    .iter()
                    .map(|a| (a.timestep as f64, a.accuracy.value))
                    .collect(),
                markers: true,
            },
            Series {
                name: "pair accuracy".into(),
                points: rows
                    .iter()
                    .map(|a| (a.timestep as f64, a.pair_accuracy.value))
                    .collect(),
                markers: true,
            },
            Series {
                name: "ROC AUC".into(),
                points: rows
                    .iter()
                    .map(|a| (a.timestep as f64, a.auc.unwrap_or(f64::NAN)))
                    .collect(),
                markers: true,
            },
        ],
        y_range: Some((0.4, 1.0)),
        reference: Some((0.5, "chance".into())),
    }
    .render()
}

fn training_chart(r: &DemoResults) -> String {
    let mut series = vec![
        Series {
            name: "a. generator flow-matching loss".into(),
            points: curve(&r.pretrain.loss),
            markers: false,
        },
        Series {
            name: "b. reward loss (pairs, then calibration)".into(),
            points: curve(&r.reward.loss),
            markers: false,
        },
    ];
    if !r.prfl.sft_loss.is_empty() {
        series.push(Series {
            name: "c. PRFL's SFT loss".into(),
            points: curve(&r.prfl.sft_loss),
            markers: false,
        });
    }
    LineChart {
        title: "Training losses (smoothed)".into(),
        x_label: "step".into(),
        y_label: "loss".into(),
        series,
        y_range: None,
        reference: None,
    }
    .render()
}

fn reward_chart(r: &DemoResults) -> String {
    LineChart {
        title: "PRFL: reward of the rolled-out latents".into(),
        x_label: "PRFL step".into(),
        y_label: "reward score (smoothed)".into(),
        series: vec![Series {
            name: "reward of x_{m+1} at t_{m+1}".into(),
            points: curve(&r.prfl.reward),
            markers: false,
        }],
        y_range: None,
        reference: None,
    }
    .render()
}

fn quality_chart(r: &DemoResults) -> String {
    let e = &r.rejection;
    let bar = |label: String, p: &super::stats::Proportion, colour| Bar {
        label,
        value: p.value,
        interval: Some((p.low, p.high)),
        colour,
    };
    let mut bars = vec![
        bar(
            format!("before\nn={}", r.before.quality.good.n),
            &r.before.quality.good,
            PALETTE[0],
        ),
        bar(
            format!("after PRFL\nn={}", r.after.quality.good.n),
            &r.after.quality.good,
            PALETTE[1],
        ),
    ];
    if let Some(c) = &r.control {
        bars.push(bar(
            "control\n(no reward)".into(),
            &c.after.quality.good,
            PALETTE[4],
        ));
    }
    bars.extend([
        bar(
            format!("early reject\n{:.0}% cost", 100.0 * (1.0 - e.saved)),
            &e.early,
            PALETTE[2],
        ),
        bar(
            format!(
                "best-of-N\n{:.0}% cost",
                100.0 * e.cost_best_at_end / e.cost_all
            ),
            &e.best_at_end,
            PALETTE[3],
        ),
    ]);
    BarChart {
        title: "Fraction of good clips (rule-measured, Wilson 95%)".into(),
        y_label: "fraction good".into(),
        bars,
        y_range: (0.0, 1.0),
    }
    .render()
}
