//! The session's models: loading the generator, creating or loading the reward model (cut from
//! the generator's first blocks), and building the PRFL trainer (the whole generator plus a
//! frozen copy of the reward model).

use std::collections::BTreeMap;
use std::path::Path;

use super::config::SampleSizes;
use super::{no_generator, no_reward, Models, PrflState, RewardState, Runtime, Session};
use crate::backend::device::Device;
// The trainer's config is renamed `PrflTrainConfig` on another branch; the alias keeps that
// merge to this one line.
use crate::finetune::prfl::{PrflTrainConfig, PrflTrainer};
use crate::model::checkpoint::Checkpoint;
use crate::model::lora::init_lora;
use crate::model::wan::WanModel;
use crate::model::WanConfig;
use crate::optim::checkpoint::{TrainingKind, TrainingMeta};
use crate::optim::state::PARAM_PREFIX;
use crate::reward::model::{RewardModel, RewardModelConfig};
use crate::reward::train::{RewardTrainConfig, RewardTrainer};
use crate::{Error, Result};

/// Copies the trainable weights of `src` into `dst` (same structure).
pub(crate) fn assign_trained_from(
    be: &Device,
    dst: &mut RewardModel<Device>,
    src: &RewardModel<Device>,
) -> Result<()> {
    let tensors: BTreeMap<_, _> = src
        .trainable_tensors(be)
        .into_iter()
        .map(|(k, v)| (format!("{PARAM_PREFIX}{k}"), v))
        .collect();
    dst.assign_trained(be, &tensors, Path::new("(the runtime's reward model)"))?;
    Ok(())
}

/// The metadata of a training checkpoint, from its header alone (the tensors are read once, by
/// the trainer's `resume`). The `prfl` key holds it (see [`crate::optim::checkpoint`]).
fn read_training_meta(path: &Path) -> Result<TrainingMeta> {
    let corrupt = |m: String| Error::Corrupt(format!("{}: {m}", path.display()));
    let header = crate::safetensors::read_safetensors_metadata(path)?;
    let text = header
        .get("prfl")
        .ok_or_else(|| corrupt("not a prfl training checkpoint (no `prfl` metadata)".into()))?;
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| corrupt(format!("metadata is not JSON: {e}")))?;
    TrainingMeta::from_json(&v).map_err(|e| corrupt(e.to_string()))
}

/// A generator checkpoint after [`Checkpoint::verify`]: every parameter present, with its shape.
fn verified(ckpt: Checkpoint) -> Result<Checkpoint> {
    ckpt.verify()?;
    Ok(ckpt)
}

/// Checks that the session's sample shapes fit a generator of configuration `c`.
fn check_fits(c: &WanConfig, sizes: &SampleSizes) -> Result<()> {
    if c.is_i2v() {
        return Err(Error::InvalidArgument(
            "image-to-video generators need the conditioning latent `y` (mask and first \
             frame), which ABI version 1 does not carry: only text-to-video generators are \
             supported"
                .into(),
        ));
    }
    if sizes.image != 0 {
        return Err(Error::Shape(format!(
            "image_len {} x image_dim {} configured, but the generator is text-to-video \
             (set both to 0)",
            sizes.image_len, sizes.image_dim
        )));
    }
    if sizes.latent_shape[0] != c.out_dim || c.in_dim != c.out_dim {
        return Err(Error::Shape(format!(
            "latent_channels is {}, the generator's latents have {} channels",
            sizes.latent_shape[0], c.out_dim
        )));
    }
    if sizes.text_dim != c.text_dim {
        return Err(Error::Shape(format!(
            "text_dim is {}, the generator's text embedding takes {}",
            sizes.text_dim, c.text_dim
        )));
    }
    Ok(())
}

impl Runtime {
    fn load_generator(&self, open: impl FnOnce() -> Result<Checkpoint>) -> Result<()> {
        self.exclusive("load a generator", |m| {
            if m.reward.is_some() || m.prfl.is_some() {
                return Err(Error::InvalidArgument(
                    "a reward model or PRFL trainer was built from the loaded generator; create a \
                     new runtime to use another generator"
                        .into(),
                ));
            }
            // Opened only now, so that a failed load leaves the session as it was.
            let source = open()?;
            check_fits(source.config(), &self.cfg.sizes)?;
            let c = source.config();
            ::log::info!(
                "generator loaded: {} (dim {}, {} blocks)",
                c.variant_name(),
                c.dim,
                c.num_layers
            );
            m.generator = Some(source);
            // The cached inference generator was built from the previous one.
            *m.sampling_generator.get_mut() = None;
            Ok(())
        })
    }

    fn reward_train_config(&self) -> RewardTrainConfig {
        RewardTrainConfig {
            loss: self.cfg.reward_loss,
            shift: self.cfg.shift as f64,
            optim: crate::optim::AdamWConfig {
                lr: self.cfg.reward_backbone_lr,
                ..RewardTrainConfig::default().optim
            },
            head_lr: self.cfg.reward_head_lr,
            recompute: self.cfg.recompute,
            seed: self.cfg.seed,
            ..RewardTrainConfig::default()
        }
    }

    fn prfl_train_config(&self) -> PrflTrainConfig {
        PrflTrainConfig {
            steps: self.cfg.prfl_steps,
            shift: self.cfg.shift as f64,
            optim: crate::optim::AdamWConfig {
                lr: self.cfg.prfl_lr,
                ..PrflTrainConfig::default().optim
            },
            recompute: self.cfg.recompute,
            lora: self.cfg.lora.clone(),
            seed: self.cfg.seed,
            ..PrflTrainConfig::default()
        }
    }

    /// A reward model cut from the generator (blocks `0..cfg.blocks`), head initialised.
    fn cut_reward_model(
        &self,
        generator: &Checkpoint,
        cfg: RewardModelConfig,
        seed: u64,
    ) -> Result<RewardModel<Device>> {
        RewardModel::from_generator(&self.be, generator, cfg, None, seed)
    }

    /// Refuses a reward model whose structure differs from the PRFL trainer's frozen copy (the
    /// copy is refreshed in place, which needs the same parameters).
    fn check_prfl_compatible(m: &Models, cfg: &RewardModelConfig) -> Result<()> {
        match &m.prfl {
            Some(p) if p.trainer.reward.cfg != *cfg => Err(Error::InvalidArgument(format!(
                "the PRFL trainer was built with reward model {:?}; this one is {cfg:?}",
                p.trainer.reward.cfg
            ))),
            _ => Ok(()),
        }
    }

    fn init_reward(&self) -> Result<()> {
        self.exclusive("initialise the reward model", |m| {
            let generator = m.generator.as_ref().ok_or_else(no_generator)?;
            let cfg = RewardModelConfig {
                blocks: self.cfg.reward_blocks,
                ..RewardModelConfig::default()
            };
            Self::check_prfl_compatible(m, &cfg)?;
            let model = self.cut_reward_model(generator, cfg, self.cfg.seed)?;
            let trainer = RewardTrainer::new(&self.be, model, self.reward_train_config())?;
            m.set_reward(RewardState {
                trainer,
                steps: 0,
                revision: 0,
            });
            Ok(())
        })
    }

    /// A reward trainer restored from a training checkpoint (weights, AdamW moments, random
    /// stream, iteration). Its structure comes from the file; the training hyperparameters from
    /// this session's configuration.
    pub(crate) fn reward_from_checkpoint(
        &self,
        generator: &Checkpoint,
        path: &Path,
    ) -> Result<RewardState> {
        let meta = read_training_meta(path)?;
        if meta.kind != TrainingKind::Reward {
            return Err(Error::Corrupt(format!(
                "{}: a {} checkpoint, not a reward-model one",
                path.display(),
                meta.kind.as_str()
            )));
        }
        let cfg: RewardModelConfig = serde_json::from_value(meta.config["model"].clone())
            .map_err(|e| Error::Corrupt(format!("{}: config.model: {e}", path.display())))?;
        let model = self.cut_reward_model(generator, cfg, 0)?;
        let mut trainer = RewardTrainer::new(&self.be, model, self.reward_train_config())?;
        let steps = trainer.resume(&self.be, path)?;
        Ok(RewardState {
            trainer,
            steps,
            revision: 0,
        })
    }

    fn load_reward(&self, path: &Path) -> Result<()> {
        self.exclusive("load a reward model", |m| {
            let generator = m.generator.as_ref().ok_or_else(no_generator)?;
            let state = self.reward_from_checkpoint(generator, path)?;
            Self::check_prfl_compatible(m, &state.trainer.model.cfg)?;
            m.set_reward(state);
            Ok(())
        })
    }

    /// The PRFL trainer: the whole generator (LoRA adapters attached when configured) and a
    /// frozen copy of `reward`.
    pub(crate) fn build_prfl(
        &self,
        generator: &Checkpoint,
        reward: &RewardState,
    ) -> Result<PrflState> {
        let wan = generator.config().clone();
        let tensors = generator.load(|_| true)?;
        let mut gen = WanModel::new(&self.be, wan.clone(), &tensors, None)?;
        drop(tensors);
        if let Some(lora) = &self.cfg.lora {
            let adapters = init_lora(&wan, lora, self.cfg.seed)?;
            gen.attach_lora(&self.be, lora, &adapters)?;
        }
        let src = &reward.trainer.model;
        let mut copy = self.cut_reward_model(generator, src.cfg.clone(), 0)?;
        assign_trained_from(&self.be, &mut copy, src)?;
        let trainer = PrflTrainer::new(&self.be, gen, copy, self.prfl_train_config())?;
        ::log::info!(
            "PRFL trainer built ({})",
            match &self.cfg.lora {
                Some(l) => format!("LoRA rank {}", l.rank),
                None => "full fine-tuning".into(),
            }
        );
        Ok(PrflState {
            trainer,
            steps: 0,
            revision: reward.revision,
        })
    }

    /// Builds the PRFL trainer now unless it exists (otherwise the first PRFL step does).
    fn ensure_prfl(&self) -> Result<()> {
        self.exclusive("build the PRFL trainer", |m| {
            if m.prfl.is_some() {
                return Ok(());
            }
            let generator = m.generator.as_ref().ok_or_else(no_generator)?;
            let reward = m.reward.as_ref().ok_or_else(no_reward)?;
            let p = self.build_prfl(generator, reward)?;
            m.prfl = Some(p);
            Ok(())
        })
    }
}

impl Session {
    /// Loads the generator from a checkpoint: a directory as released (`config.json` plus
    /// `diffusion_pytorch_model*.safetensors`, sharded or not), a single `.safetensors` file, or
    /// an index json; original Wan2.1 or diffusers names; f32, bf16 or f16. Tensors are
    /// memory-mapped and read when a model needs them. Its latent channels and text width must
    /// match the configuration; text-to-video only. Refused once a reward model exists (create a
    /// new session). A failed load changes nothing.
    pub fn load_generator(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        self.rt()
            .load_generator(|| Checkpoint::open(path).and_then(verified))
    }

    /// Loads the generator from a whole `.safetensors` file held in memory (copied).
    /// `config_json` is the checkpoint's `config.json` text (either layout), or `None` to infer
    /// the configuration from the shapes. Otherwise as [`Session::load_generator`].
    pub fn load_generator_from_memory(
        &self,
        safetensors: &[u8],
        config_json: Option<&str>,
    ) -> Result<()> {
        self.rt().load_generator(|| {
            Checkpoint::from_bytes(safetensors.to_vec(), config_json).and_then(verified)
        })
    }

    /// The loaded generator's configuration, if one is loaded.
    pub fn generator_config(&self) -> Option<WanConfig> {
        let m = self.rt().models.read();
        m.generator.as_ref().map(|g| g.config().clone())
    }

    /// Creates a fresh reward model cut from the loaded generator (its first `reward_blocks`
    /// blocks and embeddings, a new head seeded by `seed`) and its AdamW trainer. Replaces any
    /// reward model.
    pub fn init_reward(&self) -> Result<()> {
        self.rt().init_reward()
    }

    /// Loads a reward model and its trainer state from a reward training checkpoint (a
    /// `reward-<g>.safetensors` of [`Session::save`], or `prfl train-reward`'s checkpoint), cut
    /// from the loaded generator. Replaces any reward model; a failed load changes nothing.
    pub fn load_reward(&self, path: impl AsRef<Path>) -> Result<()> {
        self.rt().load_reward(path.as_ref())
    }

    /// Builds the PRFL trainer now (the whole generator plus a frozen copy of the reward model)
    /// unless it exists; otherwise the first PRFL step builds it.
    pub fn build_prfl(&self) -> Result<()> {
        self.rt().ensure_prfl()
    }
}
