//! The reward model: the first K blocks of a pre-trained generator (its embeddings frozen, its
//! head dropped) followed by a learned-query attention pooling and an MLP (method.md section 3).
//!
//! Backbone and head parameters share one [`ParamStore`] (the head's under `pool.*` and `mlp.*`),
//! so one optimiser clips one global gradient norm and one checkpoint holds everything.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::head::{init_head_params, HeadActs, RewardHead, RewardHeadConfig};
use super::loss::sigmoid;
use crate::backend::Backend;
use crate::model::checkpoint::Checkpoint;
use crate::model::names::{block_index, blocks_below};
use crate::model::wan::{InputGrads, Inputs, Mode, Tape, WanModel};
use crate::model::WanConfig;
use crate::tensor::{DType, HostTensor};
use crate::{Error, Result};

/// How the reward model is cut from the generator and what it trains.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RewardModelConfig {
    /// Generator blocks kept (the first K).
    pub blocks: usize,
    /// Which kept blocks train; `None` = all of them.
    pub trainable_blocks: Option<Vec<usize>>,
    pub heads: usize,
    pub queries: usize,
    pub hidden: [usize; 2],
}

impl Default for RewardModelConfig {
    fn default() -> Self {
        RewardModelConfig {
            blocks: 8,
            trainable_blocks: None,
            heads: 8,
            queries: 1,
            hidden: [1024, 512],
        }
    }
}

impl RewardModelConfig {
    pub fn head(&self) -> RewardHeadConfig {
        RewardHeadConfig {
            heads: self.heads,
            queries: self.queries,
            hidden: self.hidden,
        }
    }

    /// Whether the parameter called `name` trains: the head always, a block if listed, the
    /// embeddings never.
    pub fn is_trainable(&self, name: &str) -> bool {
        if name.starts_with("pool.") || name.starts_with("mlp.") {
            return true;
        }
        match block_index(name) {
            Some(i) => self
                .trainable_blocks
                .as_ref()
                .map_or(i < self.blocks, |list| list.contains(&i)),
            None => false,
        }
    }
}

pub struct RewardModel<B: Backend> {
    /// The truncated generator; its store also holds the head's parameters.
    pub backbone: WanModel<B>,
    pub head: RewardHead,
    pub cfg: RewardModelConfig,
}

/// What [`RewardModel::backward`] needs from a forward pass.
pub struct RewardTape<B: Backend> {
    backbone: Tape<B>,
    head: HeadActs<B>,
}

impl<B: Backend> RewardTape<B> {
    /// Bytes of saved activations (backbone blocks and head).
    pub fn bytes(&self, be: &B) -> usize {
        self.backbone.saved_block_bytes(be) + self.head.bytes(be)
    }
}

/// The generator parameters the reward model keeps: the embeddings and blocks `0..k`, no head.
pub fn backbone_filter(k: usize) -> impl Fn(&str) -> bool {
    let below = blocks_below(k);
    move |name: &str| below(name) && !name.starts_with("head.")
}

impl<B: Backend> RewardModel<B> {
    /// Cuts a reward model from a generator checkpoint, reading only the kept tensors, with a
    /// freshly initialised head.
    pub fn from_generator(
        be: &B,
        ckpt: &Checkpoint,
        cfg: RewardModelConfig,
        matrix_dtype: Option<DType>,
        seed: u64,
    ) -> Result<Self> {
        let wan = ckpt.config().clone();
        if cfg.blocks == 0 || cfg.blocks > wan.num_layers {
            return Err(Error::Config(format!(
                "the reward model keeps {} blocks; the generator has {}",
                cfg.blocks, wan.num_layers
            )));
        }
        let backbone = ckpt.load(backbone_filter(cfg.blocks))?;
        let head = init_head_params(wan.dim, cfg.heads, cfg.queries, cfg.hidden, seed);
        Self::from_tensors(be, wan, &backbone, &head, cfg, matrix_dtype)
    }

    /// Builds the model from backbone tensors (canonical names, blocks `0..K`) and head tensors
    /// (`pool.*`, `mlp.*`).
    pub fn from_tensors(
        be: &B,
        wan: WanConfig,
        backbone: &BTreeMap<String, HostTensor>,
        head: &BTreeMap<String, HostTensor>,
        cfg: RewardModelConfig,
        matrix_dtype: Option<DType>,
    ) -> Result<Self> {
        if wan.dim % cfg.heads != 0 {
            return Err(Error::Config(format!(
                "pooling heads {} do not divide the model width {}",
                cfg.heads, wan.dim
            )));
        }
        let kept: BTreeMap<String, HostTensor> = backbone
            .iter()
            .filter(|(k, _)| backbone_filter(cfg.blocks)(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut model = WanModel::new(be, wan, &kept, matrix_dtype)?;
        if model.num_blocks() != cfg.blocks {
            return Err(Error::MissingTensor(format!(
                "blocks.{}.* (the reward model keeps {} blocks)",
                model.num_blocks(),
                cfg.blocks
            )));
        }
        for (name, t) in head {
            model.params.insert(be, name, t)?;
        }
        let head = RewardHead::resolve(&model.params, &cfg.head())?;
        Ok(RewardModel {
            backbone: model,
            head,
            cfg,
        })
    }

    /// Logits `[B]` of the inputs (latents at their timesteps), with a tape in training modes.
    pub fn forward(
        &self,
        be: &B,
        inp: &Inputs<'_, B>,
        mode: Mode,
    ) -> Result<(B::Buf, Option<RewardTape<B>>)> {
        let (feats, tape) = self
            .backbone
            .forward_features(be, inp, self.cfg.blocks, mode)?;
        let (logits, head) = self.head.forward(
            be,
            &self.backbone.params,
            feats,
            inp.shape.batch,
            inp.shape.tokens(),
        );
        Ok((logits, tape.map(|backbone| RewardTape { backbone, head })))
    }

    /// Probabilities `sigmoid(logit)` per sample (no tape).
    pub fn score(&self, be: &B, inp: &Inputs<'_, B>) -> Result<Vec<f32>> {
        let (logits, _) = self.forward(be, inp, Mode::Inference)?;
        Ok(be.download(&logits).iter().map(|&l| sigmoid(l)).collect())
    }

    /// Backward from `dlogits [B]`: accumulates gradients of the trainable parameters in `grads`
    /// and returns the gradients with respect to the inputs (PRFL reads `x`).
    pub fn backward(
        &self,
        be: &B,
        tape: &RewardTape<B>,
        dlogits: &B::Buf,
        grads: &mut crate::model::params::Grads<B>,
    ) -> Result<InputGrads<B>> {
        let dfeats = self
            .head
            .backward(be, &self.backbone.params, grads, &tape.head, dlogits);
        self.backbone
            .backward_features(be, &tape.backbone, dfeats, grads)
    }

    /// Loads a trained reward model: the frozen parts from the generator checkpoint it was cut
    /// from, the trained parts (`param.<name>`) and the configuration from a reward training
    /// checkpoint.
    pub fn load(be: &B, generator: &Checkpoint, reward_ckpt: &std::path::Path) -> Result<Self> {
        let (tensors, meta) = crate::optim::checkpoint::load_training_checkpoint(reward_ckpt)?;
        let cfg: RewardModelConfig = serde_json::from_value(meta["config"]["model"].clone())
            .map_err(|e| {
                Error::checkpoint(
                    reward_ckpt,
                    format!("not a reward-model checkpoint (config.model: {e})"),
                )
            })?;
        let mut model = Self::from_generator(be, generator, cfg, None, 0)?;
        model.assign_trained(be, &tensors, reward_ckpt)?;
        Ok(model)
    }

    /// Overwrites every trainable parameter from `param.<name>` tensors; all must be present.
    pub fn assign_trained(
        &mut self,
        be: &B,
        tensors: &BTreeMap<String, HostTensor>,
        source: &std::path::Path,
    ) -> Result<()> {
        let ps = &mut self.backbone.params;
        for id in 0..ps.len() {
            let name = ps.name(id).to_string();
            if !self.cfg.is_trainable(&name) {
                continue;
            }
            let key = format!("{}{name}", crate::optim::state::PARAM_PREFIX);
            let t = tensors
                .get(&key)
                .ok_or_else(|| Error::checkpoint(source, format!("missing tensor `{key}`")))?;
            ps.assign(be, id, t)?;
        }
        Ok(())
    }

    /// Trainable parameters as host tensors (the reward checkpoint's payload).
    pub fn trainable_tensors(&self, be: &B) -> BTreeMap<String, HostTensor> {
        let ps = &self.backbone.params;
        (0..ps.len())
            .filter(|&i| self.cfg.is_trainable(ps.name(i)))
            .map(|i| (ps.name(i).to_string(), ps.to_host(be, i)))
            .collect()
    }
}
