//! [`AdamWConfig`] as flat keys of a trainer's configuration table: `lr`, `betas`, `eps`,
//! `weight_decay`, `max_grad_norm` and `warmup_steps` sit next to the trainer's own keys (the
//! `[train]` and `[prfl]` tables of the CLI's TOML files), while the Rust type holds them in one
//! `optim: AdamWConfig` field (`#[serde(flatten, serialize_with = .., deserialize_with = ..)]`).
//!
//! A derived `Deserialize` on the flattened field would not do: serde fills the keys a table leaves
//! out from the *field type's* defaults, never from the container's `#[serde(default)]`, and the
//! trainers' defaults differ (PRFL's learning rate is 5e-6, pre-training's 1e-4). The reward
//! trainer also names its base rate `backbone_lr`. So each configuration states its defaults and
//! its rate key through [`OptimKeys`], and the two functions here read and write the keys over
//! those defaults.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserializer, Serializer};

use super::adamw::AdamWConfig;

/// How a trainer configuration names and defaults the AdamW keys it embeds.
pub trait OptimKeys {
    /// The key of the base learning rate ([`AdamWConfig::lr`]).
    const LR_KEY: &'static str = "lr";
    /// Every key read, for formats that ask for a struct's field names (serde's flatten
    /// machinery takes exactly these out of the table).
    const FIELDS: &'static [&'static str] = &[
        Self::LR_KEY,
        "betas",
        "eps",
        "weight_decay",
        "max_grad_norm",
        "warmup_steps",
    ];
    /// The values of the keys a table leaves out.
    fn optim_defaults() -> AdamWConfig;
}

/// Writes `cfg` as the six flat keys (for `#[serde(serialize_with)]`).
pub fn serialize<K: OptimKeys, S: Serializer>(cfg: &AdamWConfig, s: S) -> Result<S::Ok, S::Error> {
    let mut map = s.serialize_map(Some(K::FIELDS.len()))?;
    map.serialize_entry(K::LR_KEY, &cfg.lr)?;
    map.serialize_entry("betas", &cfg.betas)?;
    map.serialize_entry("eps", &cfg.eps)?;
    map.serialize_entry("weight_decay", &cfg.weight_decay)?;
    map.serialize_entry("max_grad_norm", &cfg.max_grad_norm)?;
    map.serialize_entry("warmup_steps", &cfg.warmup_steps)?;
    map.end()
}

/// Reads the flat keys present over [`OptimKeys::optim_defaults`] (for
/// `#[serde(deserialize_with)]`). Other keys are left to the containing configuration.
pub fn deserialize<'de, K: OptimKeys, D: Deserializer<'de>>(d: D) -> Result<AdamWConfig, D::Error> {
    d.deserialize_struct(
        "AdamWConfig",
        K::FIELDS,
        OverDefaults::<K>(K::optim_defaults(), PhantomData),
    )
}

/// Starts from the defaults and overwrites each key the table has.
struct OverDefaults<K>(AdamWConfig, PhantomData<K>);

impl<'de, K: OptimKeys> Visitor<'de> for OverDefaults<K> {
    type Value = AdamWConfig;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdamW hyper-parameters")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AdamWConfig, A::Error> {
        let mut cfg = self.0;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                k if k == K::LR_KEY => cfg.lr = map.next_value()?,
                "betas" => cfg.betas = map.next_value()?,
                "eps" => cfg.eps = map.next_value()?,
                "weight_decay" => cfg.weight_decay = map.next_value()?,
                // `null` (JSON) disables clipping; TOML, having no null, can only set a value.
                "max_grad_norm" => cfg.max_grad_norm = map.next_value()?,
                "warmup_steps" => cfg.warmup_steps = map.next_value()?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use crate::finetune::pretrain::PretrainConfig;
    use crate::finetune::prfl::PrflTrainConfig;
    use crate::optim::AdamWConfig;
    use crate::reward::train::{RewardLoss, RewardTrainConfig};

    /// The README's `[train]` table.
    const README_TRAIN: &str = r#"
loss = "ce"                        # or "bt" (win/lose pairs)
backbone_lr = 1e-6
head_lr = 1e-4
accumulation = 1
max_grad_norm = 1.0
shift = 5.0
# logit_normal = [0.0, 1.0]        # level draws: uniform by default
recompute = true                   # per-block activation recompute
seed = 0
"#;

    /// The README's `[prfl]` table (its `[prfl.lora]` sub-table included).
    const README_PRFL: &str = r#"
steps = 40
margin = 2.0
scale = 0.1
sft = true
lr = 5e-6
accumulation = 5

[lora]
rank = 128
alpha = 128.0
targets = ["self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
           "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o"]
"#;

    #[test]
    fn readme_tables_parse_into_the_embedded_optimiser() {
        let t: RewardTrainConfig = toml::from_str(README_TRAIN).unwrap();
        assert_eq!(t, RewardTrainConfig::default());
        let p: PrflTrainConfig = toml::from_str(README_PRFL).unwrap();
        assert_eq!(p.optim, PrflTrainConfig::default().optim);
        assert_eq!((p.accumulation, p.lora.unwrap().rank), (5, 128));
    }

    #[test]
    fn missing_keys_take_each_trainers_defaults() {
        let p: PrflTrainConfig = toml::from_str("margin = 1.5").unwrap();
        assert_eq!(p.optim.lr, 5e-6);
        assert_eq!(p.margin, 1.5);
        let g: PretrainConfig = toml::from_str("seed = 3").unwrap();
        assert_eq!(g.optim.lr, 1e-4);
        let r: RewardTrainConfig = toml::from_str("head_lr = 1e-3").unwrap();
        assert_eq!((r.optim.lr, r.head_lr), (1e-6, 1e-3));
        // Only the learning rate's default differs between the trainers.
        for cfg in [p.optim, g.optim, r.optim] {
            let want = AdamWConfig {
                lr: cfg.lr,
                ..AdamWConfig::default()
            };
            assert_eq!(cfg, want);
        }
    }

    #[test]
    fn keys_are_read_and_written_flat() {
        let text = "loss = \"bt\"\nbackbone_lr = 2e-5\nhead_lr = 3e-4\nbetas = [0.8, 0.95]\n\
                    eps = 1e-6\nweight_decay = 0.0\nmax_grad_norm = 0.5\nwarmup_steps = 7\n";
        let r: RewardTrainConfig = toml::from_str(text).unwrap();
        assert_eq!(r.loss, RewardLoss::Bt);
        let want = AdamWConfig {
            lr: 2e-5,
            betas: (0.8, 0.95),
            eps: 1e-6,
            weight_decay: 0.0,
            max_grad_norm: Some(0.5),
            warmup_steps: 7,
        };
        assert_eq!((r.optim, r.head_lr), (want, 3e-4));
        // A training checkpoint stores the configuration as JSON: the same flat keys, and a
        // disabled clip (`null`) survives the round trip.
        let mut r = r;
        r.optim.max_grad_norm = None;
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["backbone_lr"], serde_json::json!(2e-5f32));
        assert!(json.get("lr").is_none() && json.get("optim").is_none());
        assert_eq!(json["max_grad_norm"], serde_json::Value::Null);
        let back: RewardTrainConfig = serde_json::from_value(json).unwrap();
        assert_eq!(back, r);
        let p = PrflTrainConfig::default();
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["lr"], serde_json::json!(5e-6f32));
        assert_eq!(serde_json::from_value::<PrflTrainConfig>(json).unwrap(), p);
    }

    #[test]
    fn a_bad_value_is_an_error() {
        let e = toml::from_str::<PrflTrainConfig>("lr = \"fast\"").unwrap_err();
        assert!(e.to_string().contains("fast"), "{e}");
    }
}
