//! The report folder: summary table (printed and `summary.md`), `summary.json`.

use std::path::Path;

use super::config::DemoConfig;
use super::gif::write_gif;
use super::results::DemoResults;
use crate::{Error, Result};

/// Writes the report into `dir` and returns the summary table.
pub fn write_report(dir: &Path, cfg: &DemoConfig, r: &DemoResults) -> Result<String> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let table = summary_table(r);
    let json = serde_json::json!({ "config": cfg, "results": r });
    let path = dir.join("summary.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&json).expect("serialisable"),
    )
    .map_err(|e| Error::io(&path, e))?;
    let shape = cfg.world.world().shape();
    for (name, clips) in [("before.gif", &r.before.preview), ("after.gif", &r.after.preview)] {
        if !clips.is_empty() {
            write_gif(&dir.join(name), clips, shape, 250)?;
        }
    }
    let path = dir.join("summary.md");
    std::fs::write(&path, &table).map_err(|e| Error::io(&path, e))?;
    Ok(table)
}

pub fn summary_table(r: &DemoResults) -> String {
    format!(
        "before {} after {} z {:.2}\nreject all {} early {} best {} saved {:.2}\n",
        r.before.quality.good.display(),
        r.after.quality.good.display(),
        r.improvement_z,
        r.rejection.all.display(),
        r.rejection.early.display(),
        r.rejection.best_at_end.display(),
        r.rejection.saved
    )
}
