//! Training checkpoints: everything needed to resume a run, in ONE safetensors file, so that a
//! single atomic rename publishes it (a crash while saving leaves the previous checkpoint at that
//! path whole; see [`write_safetensors`]).
//!
//! The tensors are whatever the trainer hands over (typically [`super::AdamW::export_state`] plus
//! its own extras). The header's `__metadata__` (string to string, by the safetensors format)
//! holds:
//! - `format`: `prfl-train/1`, so that a model checkpoint or a foreign file is refused by name;
//! - `prfl`: the JSON metadata object `{"format", "step", "rng", "kind", "config"}` (see
//!   [`TrainingMeta`]); rng words are decimal strings because JSON readers outside Rust often
//!   parse numbers as doubles and would round a u64;
//! - `checksum`: 16 hex digits of a 64-bit hash over the metadata text and every tensor's name,
//!   dtype, shape and bytes. The header format catches truncation; the checksum catches
//!   corrupted tensor bytes, which would otherwise load as silently wrong weights or moments.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde_json::{json, Value};

use crate::safetensors::{write_safetensors, Safetensors};
use crate::tensor::HostTensor;
use crate::{Error, Result};

/// The format tag of this layout; bump it on any incompatible change.
pub const FORMAT: &str = "prfl-train/1";
const META_KEY: &str = "prfl";
const CHECKSUM_KEY: &str = "checksum";

/// Which trainer wrote a checkpoint (resuming one with the other is refused by the trainers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrainingKind {
    /// PAVRM reward-model training (method.md section 3).
    Reward,
    /// PRFL fine-tuning of the generator (section 4).
    Prfl,
}

impl TrainingKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TrainingKind::Reward => "reward",
            TrainingKind::Prfl => "prfl",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "reward" => Some(TrainingKind::Reward),
            "prfl" => Some(TrainingKind::Prfl),
            _ => None,
        }
    }
}

/// The typed view of a checkpoint's metadata object.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainingMeta {
    /// The trainer's iteration count (may exceed the optimiser's after skipped steps).
    pub step: u64,
    /// The trainer's random stream ([`crate::schedule::rng::Rng::state`]).
    pub rng: Vec<u64>,
    pub kind: TrainingKind,
    /// The trainer's own configuration, stored verbatim.
    pub config: Value,
}

impl TrainingMeta {
    pub fn to_json(&self) -> Value {
        let rng: Vec<String> = self.rng.iter().map(u64::to_string).collect();
        json!({
            "format": FORMAT,
            "step": self.step,
            "rng": rng,
            "kind": self.kind.as_str(),
            "config": self.config,
        })
    }

    /// Parses and checks a metadata object (format tag included); `config` may be absent (null).
    pub fn from_json(v: &Value) -> Result<Self> {
        let bad = |why: String| Err(Error::InvalidInput(format!("training metadata: {why}")));
        let Some(obj) = v.as_object() else {
            return bad("not a JSON object".into());
        };
        match obj.get("format") {
            Some(Value::String(f)) if f == FORMAT => {}
            Some(f) => return bad(format!("format tag {f}, expected \"{FORMAT}\"")),
            None => return bad(format!("no format tag (expected \"{FORMAT}\")")),
        }
        let Some(step) = obj.get("step").and_then(Value::as_u64) else {
            return bad("`step` missing or not a non-negative integer".into());
        };
        let Some(words) = obj.get("rng").and_then(Value::as_array) else {
            return bad("`rng` missing or not an array".into());
        };
        let mut rng = Vec::with_capacity(words.len());
        for w in words {
            match w.as_str().map(str::parse::<u64>) {
                Some(Ok(x)) => rng.push(x),
                _ => return bad(format!("rng word {w} is not a decimal u64 string")),
            }
        }
        let kind = match obj.get("kind").and_then(Value::as_str) {
            Some(k) => match TrainingKind::parse(k) {
                Some(kind) => kind,
                None => return bad(format!("kind \"{k}\", expected \"reward\" or \"prfl\"")),
            },
            None => return bad("`kind` missing or not a string".into()),
        };
        let config = obj.get("config").cloned().unwrap_or(Value::Null);
        Ok(TrainingMeta {
            step,
            rng,
            kind,
            config,
        })
    }
}

/// Writes a training checkpoint atomically. `meta` is the metadata object; its `format` tag may
/// be left out (it is filled in) but not be another one, and it must parse as [`TrainingMeta`]
/// (checked here so that a bad checkpoint is refused when written, not when a resume needs it).
pub fn save_training_checkpoint(
    path: &Path,
    tensors: &BTreeMap<String, HostTensor>,
    meta: &Value,
) -> Result<()> {
    let mut meta = meta.clone();
    if let Some(obj) = meta.as_object_mut() {
        obj.entry("format").or_insert_with(|| json!(FORMAT));
    }
    TrainingMeta::from_json(&meta)
        .map_err(|e| Error::InvalidInput(format!("{}: {e}", path.display())))?;
    let text = meta.to_string();
    let header: HashMap<String, String> = [
        ("format".to_string(), FORMAT.to_string()),
        (CHECKSUM_KEY.to_string(), hex(checksum(&text, tensors))),
        (META_KEY.to_string(), text),
    ]
    .into();
    write_safetensors(path, tensors, Some(&header))
}

/// Reads a training checkpoint: its tensors and its metadata object (format tag included; see
/// [`TrainingMeta::from_json`] for a typed view). Every error names the file.
pub fn load_training_checkpoint(path: &Path) -> Result<(BTreeMap<String, HostTensor>, Value)> {
    let fail = |msg: String| Error::checkpoint(path, msg);
    // Truncation and a damaged header are refused by the one safetensors layer, naming the file.
    let file = Safetensors::map(path)?;
    let get = |k: &str| file.metadata().get(k);
    match get("format") {
        Some(f) if f == FORMAT => {}
        Some(f) => {
            return Err(fail(format!(
                "format tag \"{f}\", expected \"{FORMAT}\" (not a training checkpoint)"
            )))
        }
        None => {
            return Err(fail(format!(
                "no \"{FORMAT}\" format tag (not a training checkpoint)"
            )))
        }
    }
    let text = get(META_KEY).ok_or_else(|| fail(format!("no `{META_KEY}` metadata")))?;
    let meta: Value = serde_json::from_str(text)
        .map_err(|e| fail(format!("`{META_KEY}` metadata is not JSON: {e}")))?;
    TrainingMeta::from_json(&meta).map_err(|e| fail(e.to_string()))?;

    let mut tensors = BTreeMap::new();
    for entry in file.tensors() {
        // An unsupported dtype's error names the tensor and the file.
        tensors.insert(entry.name.clone(), file.read_entry(entry)?);
    }
    let stored = get(CHECKSUM_KEY).ok_or_else(|| fail("no checksum".into()))?;
    let actual = hex(checksum(text, &tensors));
    if *stored != actual {
        return Err(fail(format!(
            "checksum mismatch (stored {stored}, computed {actual}): the file is corrupt"
        )));
    }
    Ok((tensors, meta))
}

fn hex(x: u64) -> String {
    format!("{x:016x}")
}

/// FNV-1a over little-endian 64-bit words (one multiply per 8 bytes, so hashing runs near memory
/// speed). Each step is a bijection of the running value, so any change confined to one word
/// always changes the result. Not cryptographic: it detects damage, not tampering.
struct WordHash(u64);

impl WordHash {
    fn word(&mut self, w: u64) {
        self.0 = (self.0 ^ w).wrapping_mul(0x0000_0100_0000_01B3);
    }

    /// Length-prefixed, so that field boundaries are unambiguous; the tail is zero-padded.
    fn bytes(&mut self, b: &[u8]) {
        self.word(b.len() as u64);
        let mut words = b.chunks_exact(8);
        for w in &mut words {
            self.word(u64::from_le_bytes(w.try_into().expect("8-byte chunk")));
        }
        let tail = words.remainder();
        if !tail.is_empty() {
            let mut last = [0u8; 8];
            last[..tail.len()].copy_from_slice(tail);
            self.word(u64::from_le_bytes(last));
        }
    }
}

fn checksum(meta_text: &str, tensors: &BTreeMap<String, HostTensor>) -> u64 {
    let mut h = WordHash(0xCBF2_9CE4_8422_2325);
    h.bytes(meta_text.as_bytes());
    for (name, t) in tensors {
        h.bytes(name.as_bytes());
        h.bytes(t.dtype().name().as_bytes());
        h.word(t.shape.len() as u64);
        t.shape.iter().for_each(|&d| h.word(d as u64));
        h.bytes(&t.data.le_bytes());
    }
    h.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trip_and_validation() {
        let m = TrainingMeta {
            step: 7,
            rng: vec![u64::MAX, 1, 2, 3],
            kind: TrainingKind::Prfl,
            config: json!({"lr": 5e-6}),
        };
        let v = m.to_json();
        assert_eq!(v["rng"][0], json!(u64::MAX.to_string()));
        assert_eq!(TrainingMeta::from_json(&v).unwrap(), m);
        for (key, val) in [
            ("format", json!("pt")),
            ("step", json!(-1)),
            ("rng", json!([1, 2, 3, 4])),
            ("kind", json!("sft")),
        ] {
            let mut w = v.clone();
            w[key] = val;
            let e = TrainingMeta::from_json(&w).unwrap_err().to_string();
            assert!(e.contains("training metadata"), "{e}");
        }
        let mut w = v.clone();
        w.as_object_mut().unwrap().remove("config");
        assert_eq!(TrainingMeta::from_json(&w).unwrap().config, Value::Null);
    }

    #[test]
    fn hash_sees_single_word_changes_and_field_boundaries() {
        let base = |x: f32| -> BTreeMap<String, HostTensor> {
            [(
                "a".to_string(),
                HostTensor::from_f32(vec![2], vec![1.0, x]).unwrap(),
            )]
            .into()
        };
        assert_eq!(checksum("m", &base(2.0)), checksum("m", &base(2.0)));
        assert_ne!(checksum("m", &base(2.0)), checksum("m", &base(2.000_000_2)));
        assert_ne!(checksum("m", &base(2.0)), checksum("n", &base(2.0)));
        let mut h1 = WordHash(0);
        h1.bytes(b"ab");
        h1.bytes(b"c");
        let mut h2 = WordHash(0);
        h2.bytes(b"a");
        h2.bytes(b"bc");
        assert_ne!(h1.0, h2.0);
    }
}
