//! `prfl import-reward` and `prfl export-reward`: the reference implementation's (HY-Video-PRFL)
//! three reward-model files to a prfl reward checkpoint and back (see `prfl::interop`).

use std::path::PathBuf;

use clap::Args;
use prfl::interop::reference_reward::{
    export_reference, fits_reference_mlp, import_reference, save_reward_checkpoint, REFERENCE_HEADS,
};
use prfl::model::checkpoint::Checkpoint;

use crate::config_file::err;

/// `prfl import-reward`.
#[derive(Args)]
pub struct ImportArgs {
    /// The reference's transformer: its `checkpoint-<step>/` directory or one safetensors file.
    #[arg(long)]
    transformer: PathBuf,
    /// `query_attention_step_<step>.ckpt` (torch.save) or its safetensors conversion.
    #[arg(long)]
    query_attention: PathBuf,
    /// `mlp_step_<step>.ckpt` (torch.save) or its safetensors conversion.
    #[arg(long)]
    mlp: PathBuf,
    /// Attention heads of the pooling (the reference's `num_heads`; not stored in its files).
    #[arg(long, default_value_t = REFERENCE_HEADS)]
    heads: usize,
    /// The prfl reward checkpoint to write (use it with `prfl score --reward`).
    #[arg(long)]
    out: PathBuf,
}

/// `prfl export-reward`.
#[derive(Args)]
pub struct ExportArgs {
    /// A prfl reward checkpoint (`prfl train-reward`'s or `prfl import-reward`'s).
    #[arg(long)]
    reward: PathBuf,
    /// The generator the reward model was cut from.
    #[arg(long)]
    generator: PathBuf,
    /// Output directory for the reference's three files.
    #[arg(long)]
    out: PathBuf,
}

pub fn import_reward(a: &ImportArgs) -> Result<(), String> {
    let model =
        import_reference(&a.transformer, &a.query_attention, &a.mlp, a.heads).map_err(err)?;
    save_reward_checkpoint(&model, &a.out).map_err(err)?;
    println!(
        "imported a reward model of {} blocks, {} pooling heads, MLP {:?} (step {}) into {}",
        model.config.blocks,
        model.config.heads,
        model.config.hidden,
        model.step,
        a.out.display()
    );
    Ok(())
}

pub fn export_reward(a: &ExportArgs) -> Result<(), String> {
    let gen = Checkpoint::open(&a.generator).map_err(err)?;
    std::fs::create_dir_all(&a.out).map_err(|e| format!("{}: {e}", a.out.display()))?;
    let files = export_reference(&gen, &a.reward, &a.out).map_err(err)?;
    println!(
        "wrote {}, {} and {}",
        files.transformer.display(),
        files.query_attention.display(),
        files.mlp.display()
    );
    let (_, meta) = prfl::optim::checkpoint::load_training_checkpoint(&a.reward).map_err(err)?;
    if let Ok(cfg) = serde_json::from_value(meta["config"]["model"].clone()) {
        if !fits_reference_mlp(&cfg) {
            eprintln!(
                "note: the MLP's hidden widths {:?} are not the reference MLP class's [1024, 512]; \
                 its load_state_dict will refuse them unless the class is built with these widths",
                cfg.hidden
            );
        }
    }
    Ok(())
}
