//! The VAE's weights from either layout, under diffusers' names:
//!
//! - the diffusers layout: `<dir>/config.json` + `<dir>/diffusion_pytorch_model.safetensors`,
//!   read through [`crate::safetensors::Safetensors`];
//! - the original release file `Wan2.1_VAE.pth` (a torch zip pickle, read by
//!   [`crate::interop::torch_file`], which executes nothing), whose names
//!   ([`diffusers_name`]) follow the original `WanVAE` modules: flat `encoder.downsamples.N` /
//!   `decoder.upsamples.N` lists, `residual.{0,2,3,6}` inside residual blocks, `middle.{0,1,2}`,
//!   `head.{0,2}`, `conv1` / `conv2` for the quant convs.
//!
//! Layers take their tensors by name with the shape they expect ([`WeightSet::take`]); a tensor
//! left over at the end is an error too, so that a file of another architecture never loads
//! half-way. Every error names the file and the tensor.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::config::VaeConfig;
use crate::tensor::HostTensor;
use crate::{Error, Result};

/// The weights file inside a diffusers VAE directory.
pub const DIFFUSERS_WEIGHTS: &str = "diffusion_pytorch_model.safetensors";

/// Named tensors from one file, consumed as the model is built.
pub struct WeightSet {
    source: PathBuf,
    tensors: BTreeMap<String, HostTensor>,
}

impl WeightSet {
    /// Tensors under diffusers' names, read from `source` (named in errors).
    pub fn new(source: &Path, tensors: BTreeMap<String, HostTensor>) -> WeightSet {
        WeightSet {
            source: source.to_path_buf(),
            tensors,
        }
    }

    /// The file the tensors came from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Removes tensor `name`, checking its shape, as f32.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let t = self
            .tensors
            .remove(name)
            .ok_or_else(|| Error::checkpoint(&self.source, format!("missing tensor `{name}`")))?;
        if t.shape != shape {
            return Err(Error::checkpoint(
                &self.source,
                format!(
                    "tensor `{name}` has shape {:?}, expected {shape:?}",
                    t.shape
                ),
            ));
        }
        let v = t.to_f32();
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(Error::checkpoint(
                &self.source,
                format!("tensor `{name}` holds a non-finite value at element {i}"),
            ));
        }
        Ok(v)
    }

    /// Fails if any tensor was not taken.
    pub fn finish(self) -> Result<()> {
        match self.tensors.keys().next() {
            None => Ok(()),
            Some(name) => Err(Error::checkpoint(
                &self.source,
                format!(
                    "unexpected tensor `{name}` ({} left unused): not a Wan2.1 VAE of this configuration",
                    self.tensors.len()
                ),
            )),
        }
    }
}

/// Reads a diffusers VAE directory: its configuration and its weights.
pub fn read_diffusers_dir(dir: &Path) -> Result<(VaeConfig, WeightSet)> {
    let config = VaeConfig::from_file(&dir.join("config.json"))?;
    let path = dir.join(DIFFUSERS_WEIGHTS);
    let tensors = crate::safetensors::Safetensors::map(&path)?
        .read_all()
        .map_err(|e| name_file(&path, e))?;
    Ok((config, WeightSet::new(&path, tensors)))
}

/// Reads an original-layout `.pth` state dict and renames its tensors to diffusers' names.
pub fn read_original_pth(path: &Path, config: &VaeConfig) -> Result<WeightSet> {
    let raw = crate::interop::torch_file::read_host_state_dict(path)?;
    let mut tensors = BTreeMap::new();
    for (name, t) in raw {
        let new = diffusers_name(&name, config).ok_or_else(|| {
            Error::checkpoint(
                path,
                format!("tensor `{name}` is not a parameter of the original Wan2.1 VAE"),
            )
        })?;
        if tensors.insert(new.clone(), t).is_some() {
            return Err(Error::checkpoint(
                path,
                format!("two tensors map to `{new}`"),
            ));
        }
    }
    Ok(WeightSet::new(path, tensors))
}

/// Errors without a file name get this one.
fn name_file(path: &Path, e: Error) -> Error {
    match e {
        Error::Checkpoint { .. } | Error::Io { .. } => e,
        other => Error::checkpoint(path, other.to_string()),
    }
}

/// The diffusers name of a residual block's parameter (`tail` after the block's prefix).
fn residual_tail(tail: &str) -> Option<&'static str> {
    Some(match tail {
        "residual.0.gamma" => "norm1.gamma",
        "residual.2.weight" => "conv1.weight",
        "residual.2.bias" => "conv1.bias",
        "residual.3.gamma" => "norm2.gamma",
        "residual.6.weight" => "conv2.weight",
        "residual.6.bias" => "conv2.bias",
        "shortcut.weight" => "conv_shortcut.weight",
        "shortcut.bias" => "conv_shortcut.bias",
        _ => return None,
    })
}

/// The diffusers `AutoencoderKLWan` name of an original Wan2.1 VAE parameter (diffusers'
/// `convert_wan_vae_to_diffusers`, written for any depth and number of residual blocks), or
/// `None` for a name the original model does not have.
pub fn diffusers_name(original: &str, config: &VaeConfig) -> Option<String> {
    if let Some(p) = original.strip_prefix("conv1.") {
        return Some(format!("quant_conv.{p}"));
    }
    if let Some(p) = original.strip_prefix("conv2.") {
        return Some(format!("post_quant_conv.{p}"));
    }
    let (side, rest) = original.split_once('.')?;
    if side != "encoder" && side != "decoder" {
        return None;
    }
    if let Some(p) = rest.strip_prefix("conv1.") {
        return Some(format!("{side}.conv_in.{p}"));
    }
    if rest == "head.0.gamma" {
        return Some(format!("{side}.norm_out.gamma"));
    }
    if let Some(p) = rest.strip_prefix("head.2.") {
        return Some(format!("{side}.conv_out.{p}"));
    }
    if let Some(p) = rest.strip_prefix("middle.1.") {
        return Some(format!("{side}.mid_block.attentions.0.{p}"));
    }
    if let Some(p) = rest.strip_prefix("middle.") {
        let (i, tail) = p.split_once('.')?;
        let i: usize = i.parse().ok()?;
        if i % 2 != 0 {
            return None;
        }
        return Some(format!(
            "{side}.mid_block.resnets.{}.{}",
            i / 2,
            residual_tail(tail)?
        ));
    }
    if let Some(p) = rest.strip_prefix("downsamples.") {
        if side != "encoder" {
            return None;
        }
        let (i, tail) = p.split_once('.')?;
        let i: usize = i.parse().ok()?;
        let tail = residual_tail(tail).unwrap_or(tail);
        return Some(format!("encoder.down_blocks.{i}.{tail}"));
    }
    if let Some(p) = rest.strip_prefix("upsamples.") {
        if side != "decoder" {
            return None;
        }
        let (i, tail) = p.split_once('.')?;
        let i: usize = i.parse().ok()?;
        // Each level: num_res_blocks + 1 residual blocks, then its resample.
        let per_level = config.num_res_blocks + 2;
        let (level, j) = (i / per_level, i % per_level);
        return Some(if j <= config.num_res_blocks {
            format!(
                "decoder.up_blocks.{level}.resnets.{j}.{}",
                residual_tail(tail)?
            )
        } else {
            format!("decoder.up_blocks.{level}.upsamplers.0.{tail}")
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_names_map_as_diffusers_converter_does_for_the_release() {
        let c = VaeConfig::default();
        let cases = [
            ("conv1.weight", "quant_conv.weight"),
            ("conv2.bias", "post_quant_conv.bias"),
            ("encoder.conv1.weight", "encoder.conv_in.weight"),
            ("encoder.head.0.gamma", "encoder.norm_out.gamma"),
            ("decoder.head.2.bias", "decoder.conv_out.bias"),
            (
                "encoder.middle.1.to_qkv.weight",
                "encoder.mid_block.attentions.0.to_qkv.weight",
            ),
            (
                "decoder.middle.2.residual.3.gamma",
                "decoder.mid_block.resnets.1.norm2.gamma",
            ),
            (
                "encoder.downsamples.3.resample.1.weight",
                "encoder.down_blocks.3.resample.1.weight",
            ),
            (
                "encoder.downsamples.4.shortcut.bias",
                "encoder.down_blocks.4.conv_shortcut.bias",
            ),
            (
                "decoder.upsamples.4.shortcut.weight",
                "decoder.up_blocks.1.resnets.0.conv_shortcut.weight",
            ),
            (
                "decoder.upsamples.6.residual.6.weight",
                "decoder.up_blocks.1.resnets.2.conv2.weight",
            ),
            (
                "decoder.upsamples.7.time_conv.bias",
                "decoder.up_blocks.1.upsamplers.0.time_conv.bias",
            ),
            (
                "decoder.upsamples.14.residual.0.gamma",
                "decoder.up_blocks.3.resnets.2.norm1.gamma",
            ),
        ];
        for (orig, want) in cases {
            assert_eq!(diffusers_name(orig, &c).as_deref(), Some(want), "{orig}");
        }
        assert_eq!(diffusers_name("model.weight", &c), None);
        assert_eq!(diffusers_name("decoder.middle.1x", &c), None);
    }
}
