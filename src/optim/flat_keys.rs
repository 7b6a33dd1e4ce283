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
