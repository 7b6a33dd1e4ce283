//! The Wan2.1 DiT configuration (method.md section 1).

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::{Error, Result};

/// Text-to-video or image-to-video.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModelType {
    T2V,
    I2V,
}

/// Every size the model code needs. Patch size is always (1, 2, 2) and qk-norm and the
/// cross-attention norm are always on, as in every released Wan2.1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WanConfig {
    pub model_type: ModelType,
    /// Input channels: 16 (T2V) or 36 (I2V: 16 noisy + 4 mask + 16 first-frame latent).
    pub in_dim: usize,
    /// Output (latent) channels, 16.
    pub out_dim: usize,
    /// Model width D.
    pub dim: usize,
    pub ffn_dim: usize,
    /// Width of the timestep sinusoid, 256.
    pub freq_dim: usize,
    /// Width of the text encoder states, 4096 (umT5-XXL).
    pub text_dim: usize,
    /// Width of the CLIP image features for I2V, 1280; `None` for T2V.
    pub image_dim: Option<usize>,
    pub num_heads: usize,
    pub num_layers: usize,
    /// Epsilon of the block norms and q/k RMSNorms (1e-6).
    pub eps: f32,
    /// Text tokens the released models are trained with (512); informational.
    pub text_len: usize,
}

impl WanConfig {
    pub fn head_dim(&self) -> usize {
        self.dim / self.num_heads
    }

    /// Whether the model takes CLIP image features (I2V).
    pub fn is_i2v(&self) -> bool {
        self.model_type == ModelType::I2V
    }

    fn released(
        model_type: ModelType,
        dim: usize,
        ffn_dim: usize,
        heads: usize,
        layers: usize,
    ) -> Self {
        WanConfig {
            model_type,
            in_dim: if model_type == ModelType::I2V { 36 } else { 16 },
            out_dim: 16,
            dim,
            ffn_dim,
            freq_dim: 256,
            text_dim: 4096,
            image_dim: (model_type == ModelType::I2V).then_some(1280),
            num_heads: heads,
            num_layers: layers,
            eps: 1e-6,
            text_len: 512,
        }
    }

    /// Wan2.1 T2V-1.3B.
    pub fn t2v_1_3b() -> Self {
        Self::released(ModelType::T2V, 1536, 8960, 12, 30)
    }

    /// Wan2.1 T2V-14B.
    pub fn t2v_14b() -> Self {
        Self::released(ModelType::T2V, 5120, 13824, 40, 40)
    }

    /// Wan2.1 I2V-14B (480p and 720p share the architecture).
    pub fn i2v_14b() -> Self {
        Self::released(ModelType::I2V, 5120, 13824, 40, 40)
    }
}

/// Head width of every released Wan2.1 model; used to infer the head count from a bare weights
/// file, which carries no config (attention weights are [D, D] whatever the head count).
pub const RELEASED_HEAD_DIM: usize = 128;

/// The diffusers name of the only q/k norm Wan2.1 uses (RMSNorm over all heads together).
const DIFFUSERS_QK_NORM: &str = "rms_norm_across_heads";

impl WanConfig {
    /// Parses a `config.json` in either format: diffusers' (`WanTransformer3DModel`, recognised by
    /// `num_attention_heads`) or the original release's (`WanModel`).
    pub fn from_json(v: &Value) -> Result<Self> {
        let obj = as_object(v)?;
        let diffusers = obj.contains_key("num_attention_heads")
            || obj.get("_class_name").and_then(Value::as_str) == Some("WanTransformer3DModel");
        if diffusers {
            Self::from_diffusers_json(v)
        } else {
            Self::from_original_json(v)
        }
    }

    /// Parses the original release's `config.json` (keys of `WanModel.__init__`). Keys the
    /// release leaves out (`text_dim`, `out_dim`, `freq_dim`, `eps`, `text_len`) take the
    /// constructor's defaults; the image width is not configurable there (always 1280), so
    /// `image_dim` is read only if a non-standard writer put it in. Both are overridden by tensor
    /// shapes when a checkpoint is opened.
    pub fn from_original_json(v: &Value) -> Result<Self> {
        let obj = as_object(v)?;
        let model_type = match obj.get("model_type") {
            None => ModelType::T2V,
            Some(Value::String(s)) => match s.as_str() {
                "t2v" => ModelType::T2V,
                // FLF2V shares the I2V architecture plus an image position embedding
                // (`img_emb.emb_pos`), which loading rejects as an unexpected tensor.
                "i2v" | "flf2v" => ModelType::I2V,
                other => {
                    return Err(Error::Config(format!(
                        "model_type `{other}` is not a Wan2.1 DiT (expected t2v, i2v or flf2v)"
                    )))
                }
            },
            Some(other) => {
                return Err(Error::Config(format!(
                    "model_type must be a string, got {other}"
                )))
            }
        };
        check_patch_size(obj, "patch_size")?;
        check_flag(obj, "qk_norm", |v| v.as_bool() == Some(true), "true")?;
        check_flag(
            obj,
            "cross_attn_norm",
            |v| v.as_bool() == Some(true),
            "true",
        )?;
        if let Some(w) = obj.get("window_size") {
            if w != &json!([-1, -1]) {
                return Err(Error::Config(format!(
                    "window_size {w} (local attention) is not supported; only global attention [-1, -1]"
                )));
            }
        }
        let i2v = model_type == ModelType::I2V;
        let cfg = WanConfig {
            model_type,
            in_dim: req_usize(obj, "in_dim")?,
            out_dim: opt_usize(obj, "out_dim")?.unwrap_or(16),
            dim: req_usize(obj, "dim")?,
            ffn_dim: req_usize(obj, "ffn_dim")?,
            freq_dim: opt_usize(obj, "freq_dim")?.unwrap_or(256),
            text_dim: opt_usize(obj, "text_dim")?.unwrap_or(4096),
            image_dim: if i2v {
                Some(opt_usize(obj, "image_dim")?.unwrap_or(1280))
            } else {
                None
            },
            num_heads: req_usize(obj, "num_heads")?,
            num_layers: req_usize(obj, "num_layers")?,
            eps: opt_eps(obj)?,
            text_len: opt_usize(obj, "text_len")?.unwrap_or(512),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses a diffusers `transformer/config.json` (keys of `WanTransformer3DModel.__init__`;
    /// absent keys take that constructor's defaults, except the sizes, which are required).
    pub fn from_diffusers_json(v: &Value) -> Result<Self> {
        let obj = as_object(v)?;
        check_patch_size(obj, "patch_size")?;
        check_flag(
            obj,
            "qk_norm",
            |v| v.as_str() == Some(DIFFUSERS_QK_NORM),
            DIFFUSERS_QK_NORM,
        )?;
        check_flag(
            obj,
            "cross_attn_norm",
            |v| v.as_bool() == Some(true),
            "true",
        )?;
        if opt_usize(obj, "pos_embed_seq_len")?.is_some() {
            return Err(Error::Config(
                "pos_embed_seq_len is set (FLF2V image position embedding), which is not supported"
                    .into(),
            ));
        }
        let heads = req_usize(obj, "num_attention_heads")?;
        let head_dim = req_usize(obj, "attention_head_dim")?;
        let dim = heads.checked_mul(head_dim).ok_or_else(|| {
            Error::Config("num_attention_heads * attention_head_dim overflows".into())
        })?;
        let in_dim = req_usize(obj, "in_channels")?;
        let image_dim = opt_usize(obj, "image_dim")?;
        let added_kv = opt_usize(obj, "added_kv_proj_dim")?;
        // In Wan2.1 I2V both are set together: the image embedder maps image_dim -> D and the
        // added k/v projections read those D-wide tokens.
        match (image_dim, added_kv) {
            (None, None) => {}
            (Some(_), Some(a)) if a == dim => {}
            (Some(_), Some(a)) => {
                return Err(Error::Config(format!(
                    "added_kv_proj_dim {a} must equal the model width {dim} (Wan2.1 I2V)"
                )))
            }
            (Some(_), None) | (None, Some(_)) => {
                return Err(Error::Config(
                    "image_dim and added_kv_proj_dim must be both set (I2V) or both null (T2V)"
                        .into(),
                ))
            }
        }
        let cfg = WanConfig {
            model_type: if image_dim.is_some() {
                ModelType::I2V
            } else {
                ModelType::T2V
            },
            in_dim,
            // diffusers: `out_channels = out_channels or in_channels`.
            out_dim: opt_usize(obj, "out_channels")?
                .filter(|&c| c != 0)
                .unwrap_or(in_dim),
            dim,
            ffn_dim: req_usize(obj, "ffn_dim")?,
            freq_dim: opt_usize(obj, "freq_dim")?.unwrap_or(256),
            text_dim: opt_usize(obj, "text_dim")?.unwrap_or(4096),
            image_dim,
            num_heads: heads,
            num_layers: req_usize(obj, "num_layers")?,
            eps: opt_eps(obj)?,
            text_len: opt_usize(obj, "text_len")?.unwrap_or(512),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The original release's `config.json` for this model (what `WanModel.from_pretrained`
    /// reads). `text_dim` is a constructor argument there; `image_dim` is written only when it is
    /// not the hard-wired 1280, for this crate's own reader.
    pub fn to_original_json(&self) -> Value {
        let mut v = json!({
            "_class_name": "WanModel",
            "_diffusers_version": "0.30.0",
            "model_type": if self.is_i2v() { "i2v" } else { "t2v" },
            "patch_size": [1, 2, 2],
            "text_len": self.text_len,
            "in_dim": self.in_dim,
            "dim": self.dim,
            "ffn_dim": self.ffn_dim,
            "freq_dim": self.freq_dim,
            "text_dim": self.text_dim,
            "out_dim": self.out_dim,
            "num_heads": self.num_heads,
            "num_layers": self.num_layers,
            "window_size": [-1, -1],
            "qk_norm": true,
            "cross_attn_norm": true,
            "eps": eps_to_json(self.eps),
        });
        if let (Some(img), Some(obj)) = (self.image_dim, v.as_object_mut()) {
            if img != 1280 {
                obj.insert("image_dim".into(), json!(img));
            }
        }
        v
    }

    /// diffusers' `transformer/config.json` for this model.
    pub fn to_diffusers_json(&self) -> Value {
        json!({
            "_class_name": "WanTransformer3DModel",
            "_diffusers_version": "0.33.0",
            "patch_size": [1, 2, 2],
            "num_attention_heads": self.num_heads,
            "attention_head_dim": self.head_dim(),
            "in_channels": self.in_dim,
            "out_channels": self.out_dim,
            "text_dim": self.text_dim,
            "freq_dim": self.freq_dim,
            "ffn_dim": self.ffn_dim,
            "num_layers": self.num_layers,
            "cross_attn_norm": true,
            "qk_norm": DIFFUSERS_QK_NORM,
            "eps": eps_to_json(self.eps),
            "image_dim": self.image_dim,
            "added_kv_proj_dim": self.image_dim.map(|_| self.dim),
            "rope_max_seq_len": 1024,
            "pos_embed_seq_len": null,
        })
    }

    /// Rejects configurations the engine cannot run, naming the problem. (Patch size, qk-norm and
    /// the cross-attention norm are not fields: the JSON readers reject other values.)
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Config(msg));
        for (name, v) in [
            ("dim", self.dim),
            ("ffn_dim", self.ffn_dim),
            ("in_dim", self.in_dim),
            ("out_dim", self.out_dim),
            ("freq_dim", self.freq_dim),
            ("text_dim", self.text_dim),
            ("num_heads", self.num_heads),
            ("num_layers", self.num_layers),
        ] {
            if v == 0 {
                return bad(format!("{name} must be positive"));
            }
        }
        if self.dim % self.num_heads != 0 {
            return bad(format!(
                "dim {} is not divisible by num_heads {}",
                self.dim, self.num_heads
            ));
        }
        let d = self.head_dim();
        // RoPE rotates pairs and splits them into three bands of which the row and column bands
        // have floor(d/6) pairs each: d must be even and at least 6.
        if d % 2 != 0 || d < 6 {
            return bad(format!(
                "head dim {d} (dim {} / {} heads) must be even and at least 6 for the 3-D RoPE",
                self.dim, self.num_heads
            ));
        }
        if self.freq_dim % 2 != 0 {
            return bad(format!(
                "freq_dim {} must be even (cos and sin halves)",
                self.freq_dim
            ));
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return bad(format!("eps {} must be positive and finite", self.eps));
        }
        match (self.model_type, self.image_dim) {
            (ModelType::I2V, None) => bad("an i2v model needs image_dim".into()),
            (ModelType::I2V, Some(0)) => bad("image_dim must be positive".into()),
            (ModelType::T2V, Some(i)) => bad(format!("a t2v model has no image_dim (got {i})")),
            _ => Ok(()),
        }
    }

    /// The released model this configuration is, or `"custom"`. `text_len` is informational and
    /// does not take part.
    pub fn variant_name(&self) -> &'static str {
        let mut probe = self.clone();
        probe.text_len = 512;
        [
            ("Wan2.1-T2V-1.3B", Self::t2v_1_3b()),
            ("Wan2.1-T2V-14B", Self::t2v_14b()),
            ("Wan2.1-I2V-14B", Self::i2v_14b()),
        ]
        .into_iter()
        .find(|(_, preset)| *preset == probe)
        .map_or("custom", |(name, _)| name)
    }
}

fn as_object(v: &Value) -> Result<&Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| Error::Config("config.json must be a JSON object".into()))
}

fn opt_usize(obj: &Map<String, Value>, key: &str) -> Result<Option<usize>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| {
                Error::Config(format!("`{key}` must be a non-negative integer, got {v}"))
            }),
    }
}

fn req_usize(obj: &Map<String, Value>, key: &str) -> Result<usize> {
    opt_usize(obj, key)?.ok_or_else(|| Error::Config(format!("`{key}` is missing")))
}

fn opt_eps(obj: &Map<String, Value>) -> Result<f32> {
    match obj.get("eps") {
        None | Some(Value::Null) => Ok(1e-6),
        Some(v) => v
            .as_f64()
            .map(|e| e as f32)
            .ok_or_else(|| Error::Config(format!("`eps` must be a number, got {v}"))),
    }
}

/// Writes an f32 epsilon through its shortest decimal form, so 1e-6 is written as 1e-6 and not as
/// the f64 widening 9.999999974752427e-7.
fn eps_to_json(eps: f32) -> Value {
    let shortest: f64 = eps.to_string().parse().unwrap_or(eps as f64);
    json!(shortest)
}

fn check_patch_size(obj: &Map<String, Value>, key: &str) -> Result<()> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(()),
        Some(v) if *v == json!([1, 2, 2]) => Ok(()),
        Some(v) => Err(Error::Config(format!(
            "{key} {v} is not supported; only [1, 2, 2]"
        ))),
    }
}

/// Accepts an absent key (the constructors default to the supported value) or the supported value.
fn check_flag(
    obj: &Map<String, Value>,
    key: &str,
    ok: impl Fn(&Value) -> bool,
    expected: &str,
) -> Result<()> {
    match obj.get(key) {
        None => Ok(()),
        Some(v) if ok(v) => Ok(()),
        Some(v) => Err(Error::Config(format!(
            "{key} = {v} is not supported; every Wan2.1 uses {expected}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `config.json` of the Wan2.1-T2V-1.3B release.
    fn released_1_3b_json() -> Value {
        json!({
            "_class_name": "WanModel", "_diffusers_version": "0.30.0", "dim": 1536, "eps": 1e-06,
            "ffn_dim": 8960, "freq_dim": 256, "in_dim": 16, "model_type": "t2v", "num_heads": 12,
            "num_layers": 30, "out_dim": 16, "text_len": 512
        })
    }

    /// `transformer/config.json` of Wan2.1-I2V-14B-480P-Diffusers.
    fn released_i2v_diffusers_json() -> Value {
        json!({
            "_class_name": "WanTransformer3DModel", "_diffusers_version": "0.33.0.dev0",
            "added_kv_proj_dim": 5120, "attention_head_dim": 128, "cross_attn_norm": true,
            "eps": 1e-06, "ffn_dim": 13824, "freq_dim": 256, "image_dim": 1280, "in_channels": 36,
            "num_attention_heads": 40, "num_layers": 40, "out_channels": 16, "patch_size": [1, 2, 2],
            "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 1024, "text_dim": 4096
        })
    }

    #[test]
    fn released_configs_parse_to_the_presets() {
        let c = WanConfig::from_json(&released_1_3b_json()).unwrap();
        assert_eq!(c, WanConfig::t2v_1_3b());
        assert_eq!(c.variant_name(), "Wan2.1-T2V-1.3B");
        let c = WanConfig::from_json(&released_i2v_diffusers_json()).unwrap();
        assert_eq!(c, WanConfig::i2v_14b());
        assert_eq!(c.variant_name(), "Wan2.1-I2V-14B");
        assert_eq!(WanConfig::t2v_14b().variant_name(), "Wan2.1-T2V-14B");
        let mut custom = WanConfig::t2v_1_3b();
        custom.num_layers = 2;
        assert_eq!(custom.variant_name(), "custom");
        let mut flf = released_1_3b_json();
        flf["model_type"] = json!("flf2v");
        flf["in_dim"] = json!(36);
        assert_eq!(
            WanConfig::from_original_json(&flf).unwrap().model_type,
            ModelType::I2V
        );
    }

    #[test]
    fn both_writers_round_trip() {
        let mut odd = WanConfig::i2v_14b();
        odd.image_dim = Some(64);
        odd.text_dim = 24;
        odd.eps = 1e-5;
        for cfg in [WanConfig::t2v_1_3b(), WanConfig::i2v_14b(), odd] {
            assert_eq!(WanConfig::from_json(&cfg.to_original_json()).unwrap(), cfg);
            assert_eq!(WanConfig::from_json(&cfg.to_diffusers_json()).unwrap(), cfg);
        }
        // The epsilon is written as the decimal people read in config files.
        let text = serde_json::to_string(&WanConfig::t2v_1_3b().to_original_json()).unwrap();
        assert!(text.contains("\"eps\":1e-6"), "{text}");
    }

    #[test]
    fn unsupported_settings_are_rejected_by_name() {
        let reject = |v: Value, what: &str| {
            let e = WanConfig::from_json(&v).unwrap_err();
            assert!(
                matches!(e, Error::Config(_)) && e.to_string().contains(what),
                "{what}: {e}"
            );
        };
        let base = released_1_3b_json();
        let with = |k: &str, v: Value| {
            let mut j = base.clone();
            j[k] = v;
            j
        };
        reject(with("num_heads", json!(7)), "not divisible");
        reject(with("patch_size", json!([1, 4, 4])), "patch_size");
        reject(with("qk_norm", json!(false)), "qk_norm");
        reject(with("cross_attn_norm", json!(false)), "cross_attn_norm");
        reject(with("window_size", json!([8, 8])), "window_size");
        reject(with("model_type", json!("vace")), "vace");
        reject(with("dim", json!(-3)), "`dim`");
        reject(with("freq_dim", json!(255)), "freq_dim");
        let mut no_layers = base.clone();
        no_layers.as_object_mut().unwrap().remove("num_layers");
        reject(no_layers, "num_layers");
        // head dim 2 (too small for the three RoPE bands) and 5 (odd)
        reject(with("num_heads", json!(768)), "head dim 2");
        reject(with("num_heads", json!(512)), "head dim 3");
        let dj = released_i2v_diffusers_json();
        let dwith = |k: &str, v: Value| {
            let mut j = dj.clone();
            j[k] = v;
            j
        };
        reject(dwith("qk_norm", Value::Null), "qk_norm");
        reject(dwith("qk_norm", json!("rms_norm")), "qk_norm");
        reject(dwith("pos_embed_seq_len", json!(514)), "pos_embed_seq_len");
        reject(dwith("added_kv_proj_dim", Value::Null), "added_kv_proj_dim");
        reject(dwith("added_kv_proj_dim", json!(1280)), "added_kv_proj_dim");
        reject(json!([1, 2]), "object");
    }
}
