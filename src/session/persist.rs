//! Saving and loading the session's trainers as one set ([`super::Session::save`] /
//! [`super::Session::load`]; `prfl_save` / `prfl_load` in C).
//!
//! A save directory holds, for generation `g`:
//! - `reward-<g>.safetensors`: the reward trainer's training checkpoint (weights, AdamW moments,
//!   random stream, iteration), the same file `prfl train-reward` writes;
//! - `prfl-<g>.safetensors`: the PRFL trainer's (the generator's trainable weights: every weight,
//!   or the LoRA adapters);
//! - `prfl-runtime.safetensors`: the manifest, a safetensors file with no tensors whose metadata
//!   names the generation's files (reusing the crate's atomic safetensors writer).
//!
//! Every file is written to a temporary, fsynced and renamed into place, and the manifest last:
//! its rename is the commit point. A crash at any moment leaves a manifest naming a complete
//! set (the previous one until the commit). Files of other generations are removed after it,
//! and each save first removes the temporaries that saves killed midway left (see
//! [`crate::safetensors::remove_stale_temporaries`]: only files of that exact naming, for these
//! file names, whose writing process has ended).
//! The queue's contents are not saved; the generator itself is not either (load the same one).

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use super::Runtime;
use crate::safetensors::{read_safetensors_metadata, remove_stale_temporaries, write_safetensors};
use crate::tensor::HostTensor;
use crate::{Error, Result};

/// The manifest's file name inside a save directory.
pub const MANIFEST: &str = "prfl-runtime.safetensors";
const FORMAT: &str = "prfl-runtime/1";

struct Manifest {
    generation: u64,
    reward: Option<String>,
    prfl: Option<String>,
}

fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST);
    let meta = read_safetensors_metadata(&path)?;
    let corrupt = |m: String| Error::Corrupt(format!("{}: {m}", path.display()));
    match meta.get("format") {
        Some(f) if f == FORMAT => {}
        other => {
            return Err(corrupt(format!(
                "format {other:?}, expected \"{FORMAT}\" (not a prfl_save directory)"
            )))
        }
    }
    let generation = meta
        .get("generation")
        .and_then(|g| g.parse().ok())
        .ok_or_else(|| corrupt("no valid `generation`".into()))?;
    let file = |key: &str| -> Result<Option<String>> {
        match meta.get(key) {
            None => Ok(None),
            // Files live in the directory itself; a path would escape it.
            Some(name) if !name.is_empty() && !name.contains(['/', '\\']) && name != ".." => {
                Ok(Some(name.clone()))
            }
            Some(name) => Err(corrupt(format!("`{key}` names an invalid file `{name}`"))),
        }
    };
    Ok(Manifest {
        generation,
        reward: file("reward")?,
        prfl: file("prfl")?,
    })
}

/// Writes the current trainers into `dir` (created if needed) as one atomic set.
pub(crate) fn save(rt: &Runtime, dir: &Path) -> Result<()> {
    rt.exclusive("run prfl_save", |m| {
        if m.reward.is_none() && m.prfl.is_none() {
            return Err(Error::NotLoaded(
                "nothing to save: no reward model and no PRFL trainer yet".into(),
            ));
        }
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        // Saves killed midway leave their temporaries behind; only ours, of our file names.
        remove_stale_temporaries(dir, |target| target == MANIFEST || is_trainer_file(target));
        let generation = read_manifest(dir).map_or(1, |m| m.generation + 1);
        let mut meta: HashMap<String, String> = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("generation".to_string(), generation.to_string()),
        ]);
        if let Some(r) = &m.reward {
            let name = format!("reward-{generation}.safetensors");
            r.trainer
                .save_checkpoint(&rt.be, &dir.join(&name), r.steps)?;
            meta.insert("reward".into(), name);
        }
        if let Some(p) = &m.prfl {
            let name = format!("prfl-{generation}.safetensors");
            p.trainer
                .save_checkpoint(&rt.be, &dir.join(&name), p.steps)?;
            meta.insert("prfl".into(), name);
        }
        write_safetensors(
            &dir.join(MANIFEST),
            std::iter::empty::<(&str, &HostTensor)>(),
            Some(&meta),
        )?;
        remove_stale(dir, &meta);
        ::log::info!("saved {} (generation {generation})", dir.display());
        Ok(())
    })
}

/// Whether `name` is a trainer checkpoint's name in a save directory (of any generation).
fn is_trainer_file(name: &str) -> bool {
    (name.starts_with("reward-") || name.starts_with("prfl-"))
        && name.ends_with(".safetensors")
        && name != MANIFEST
}

/// Removes trainer checkpoints of other generations (best effort: a leftover file is harmless,
/// the manifest decides what is loaded).
fn remove_stale(dir: &Path, meta: &HashMap<String, String>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_trainer_file(&name) && !meta.values().any(|v| *v == name) {
            if let Err(e) = fs::remove_file(entry.path()) {
                ::log::warn!("could not remove {}: {e}", entry.path().display());
            }
        }
    }
}

/// Restores the trainers saved in `dir`, replacing the runtime's; a trainer the set does not
/// hold is kept. Nothing changes unless everything loads.
pub(crate) fn load(rt: &Runtime, dir: &Path) -> Result<()> {
    rt.exclusive("run prfl_load", |m| {
        let manifest = read_manifest(dir)?;
        let generator = m.generator.as_ref().ok_or_else(|| {
            Error::NotLoaded(
                "no generator loaded: load the one the trainers were built from".into(),
            )
        })?;
        let reward = match &manifest.reward {
            Some(name) => Some(rt.reward_from_checkpoint(generator, &dir.join(name))?),
            None => None,
        };
        let prfl = match &manifest.prfl {
            Some(name) => {
                let source = reward.as_ref().or(m.reward.as_ref()).ok_or_else(|| {
                    Error::NotLoaded(
                        "the saved set has a PRFL trainer but no reward model, and none is loaded"
                            .into(),
                    )
                })?;
                let mut p = rt.build_prfl(generator, source)?;
                p.steps = p.trainer.resume(&rt.be, &dir.join(name))?;
                Some(p)
            }
            None => None,
        };
        if let (Some(r), None, Some(p)) = (&reward, &prfl, &m.prfl) {
            if p.trainer.reward.cfg != r.trainer.model.cfg {
                return Err(Error::InvalidArgument(
                    "the saved reward model's structure differs from the PRFL trainer's copy"
                        .into(),
                ));
            }
        }
        if let Some(r) = reward {
            m.set_reward(r);
        }
        if let Some(mut p) = prfl {
            // Built from exactly the reward model now in place.
            p.revision = m.reward.as_ref().map_or(0, |r| r.revision);
            m.prfl = Some(p);
        }
        ::log::info!(
            "loaded {} (generation {})",
            dir.display(),
            manifest.generation
        );
        Ok(())
    })
}

impl super::Session {
    /// Saves the training state of the current trainers (reward and/or PRFL: weights, optimiser
    /// moments, random streams, step counts) into the directory `dir` (created if needed), as
    /// one atomic set: after a crash the directory holds the previous set or the new one, never
    /// a mix. The queue and the generator's base weights are not saved.
    /// Errors: [`Error::NotLoaded`] (no trainer yet), [`Error::Io`], [`Error::Busy`].
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        save(self.rt(), dir.as_ref())
    }

    /// Restores what [`super::Session::save`] wrote into `dir`, replacing the session's trainers
    /// (a trainer the set lacks is kept). Needs the same generator loaded. A failed load changes
    /// nothing; training then continues exactly as it would have from the save.
    pub fn load(&self, dir: impl AsRef<Path>) -> Result<()> {
        load(self.rt(), dir.as_ref())
    }
}
