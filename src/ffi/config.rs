//! The runtime configuration as C sees it (`PrflConfig`), and its validation into the
//! session's [`SessionConfig`] (the struct itself is read, struct-size aware, by
//! [`super::args::read_config`]).
//!
//! Versioning: fields are only ever appended. A caller states `struct_size = sizeof(PrflConfig)`
//! as it was compiled; a newer caller's larger struct is read up to the fields this library
//! knows, an older caller's smaller struct (once there are newer fields) gets defaults for the
//! rest. Smaller than ABI version 1's struct is refused: that is not a `PrflConfig`.
//! Enumerations are `int32_t` fields so that an unknown value is an error, not undefined
//! behaviour.

use std::ffi::c_char;
use std::mem::size_of;

use super::status::FfiError;
use crate::backend::cuda::CudaOptions;
use crate::backend::device::DeviceSpec;
use crate::model::lora::LoraConfig;
use crate::session::{Backpressure, SampleSizes, SessionConfig};

/// The ABI version of this header. Bumped only on incompatible changes; appending fields to the
/// structs is not one (`struct_size` handles it).
pub const PRFL_ABI_VERSION: u32 = 1;

/// Where the runtime computes.
#[repr(i32)]
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrflDevice {
    /// Host CPU (all cores, through a thread pool).
    PRFL_DEVICE_CPU = 0,
    /// An NVIDIA GPU (`device_index` picks which), compute capability 8.0 or newer, with the
    /// CUDA driver, NVRTC, cuBLAS and cuBLASLt loadable (from `cuda_library_dir` or the system's
    /// search path). When it cannot be used, `prfl_create` answers `PRFL_ERR_DEVICE` with the
    /// reason, or with `cpu_fallback = 1` runs on the CPU instead.
    PRFL_DEVICE_CUDA = 1,
    /// The first CUDA GPU when one is usable, else the CPU.
    PRFL_DEVICE_AUTO = 2,
}

/// What a submission does when every queue slot is taken.
#[repr(i32)]
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrflBackpressure {
    /// Refuse the new sample with `PRFL_ERR_QUEUE_FULL` (counted in `rejected_full`), without
    /// reading its data, so that a producer retrying on a full queue costs little.
    PRFL_BACKPRESSURE_REJECT_NEWEST = 0,
    /// Drop the oldest queued sample of the same kind (labelled clip or pair; of the other kind if
    /// none is queued), counted in `dropped_oldest`, and take the new one. When no slot at all
    /// can be reclaimed (all being written by other producers or read by a step), the new
    /// sample is refused with `PRFL_ERR_QUEUE_FULL` as under `REJECT_NEWEST`.
    PRFL_BACKPRESSURE_DROP_OLDEST = 1,
}

/// The reward model's training objective.
#[repr(i32)]
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrflRewardLoss {
    /// Binary cross-entropy on labelled clips (`prfl_submit_labeled`, label 0 or 1).
    PRFL_LOSS_CE = 0,
    /// Bradley-Terry on preference pairs (`prfl_submit_pair`).
    PRFL_LOSS_BT = 1,
}

/// Everything a runtime is created with. Fill it with `prfl_config_default`, then change fields.
/// Sizes are in elements; `*_len` call arguments must equal the products below.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PrflConfig {
    /// `sizeof(PrflConfig)` as the caller compiled it (set by `prfl_config_default`).
    pub struct_size: u32,
    /// `PRFL_ABI_VERSION` the caller compiled against (set by `prfl_config_default`).
    pub abi_version: u32,
    /// A `PrflDevice`.
    pub device: i32,
    /// Which device of that kind: the CUDA ordinal for `PRFL_DEVICE_CUDA`; 0 for the CPU and
    /// `PRFL_DEVICE_AUTO`.
    pub device_index: i32,
    /// A folder holding CUDA libraries (the driver `libcuda`, `libnvrtc`, `libcublas`,
    /// `libcublasLt`), loaded from there in preference to the system's; NULL = the system's
    /// search path only. Read during `prfl_create` only (a NUL-terminated UTF-8 string).
    pub cuda_library_dir: *const c_char,
    /// Queue slots, each preallocated at `prfl_create` for one sample of the shapes below (two
    /// latents, the text and the image features): memory = capacity x slot size.
    pub queue_capacity: u32,
    /// A `PrflBackpressure`.
    pub backpressure: i32,
    /// Latent channels C of a sample `[C, F, H, W]` (the generator's, 16 for Wan2.1).
    pub latent_channels: u32,
    /// Latent frames F.
    pub latent_frames: u32,
    /// Latent height H (even: the DiT patch is 1 x 2 x 2).
    pub latent_height: u32,
    /// Latent width W (even).
    pub latent_width: u32,
    /// Text tokens L of the text encoder states `[L, D]` (512 for Wan2.1's umT5, zero-padded).
    pub text_len: u32,
    /// Text width D (the generator's, 4096 for umT5-XXL).
    pub text_dim: u32,
    /// I2V CLIP image tokens; 0 for text-to-video.
    pub image_len: u32,
    /// I2V CLIP feature width; 0 for text-to-video.
    pub image_dim: u32,
    /// Samples (reward: clips or pairs) consumed by one step.
    pub batch_size: u32,
    /// A `PrflRewardLoss`.
    pub reward_loss: i32,
    /// Generator blocks K the reward model keeps (the paper: 8).
    pub reward_blocks: u32,
    /// AdamW learning rate of the reward model's backbone blocks.
    pub reward_backbone_lr: f32,
    /// AdamW learning rate of the reward model's pooling and MLP head.
    pub reward_head_lr: f32,
    /// AdamW learning rate of PRFL fine-tuning.
    pub prfl_lr: f32,
    /// Sampling steps N of the PRFL rollout (at least 2).
    pub prfl_steps: u32,
    /// Flow-matching schedule shift (5 for Wan2.1).
    pub shift: f32,
    /// LoRA rank for PRFL; 0 = full fine-tuning.
    pub lora_rank: u32,
    /// LoRA alpha (scale alpha / rank).
    pub lora_alpha: f32,
    /// 1 = recompute each block's activations in backward (less memory), 0 = keep them.
    pub recompute: u32,
    /// Seed of every random draw (head initialisation, noise levels, rollouts).
    pub seed: u64,
    /// 1 = when `PRFL_DEVICE_CUDA` cannot be used, run on the CPU (logged as a warning) instead
    /// of failing `prfl_create`; 0 = fail. Also applies when `PRFL_DEVICE_AUTO` finds a GPU that
    /// then fails to start. Appended after ABI version 1's fields: a caller compiled against the
    /// older, smaller struct gets the default (0).
    pub cpu_fallback: i32,
}

/// Size of ABI version 1's `PrflConfig`: the smallest `struct_size` accepted. This stays the
/// version-1 size when fields are appended (it ends where the first appended field starts).
pub const CONFIG_V1_SIZE: usize = std::mem::offset_of!(PrflConfig, cpu_fallback);

impl Default for PrflConfig {
    /// A Wan2.1 480p, 81-frame T2V setup with the paper's hyperparameters; a small queue
    /// (8 slots of about 25 MB each at this shape).
    fn default() -> Self {
        PrflConfig {
            struct_size: size_of::<PrflConfig>() as u32,
            abi_version: PRFL_ABI_VERSION,
            device: PrflDevice::PRFL_DEVICE_AUTO as i32,
            device_index: 0,
            cuda_library_dir: std::ptr::null(),
            queue_capacity: 8,
            backpressure: PrflBackpressure::PRFL_BACKPRESSURE_REJECT_NEWEST as i32,
            latent_channels: 16,
            latent_frames: 21,
            latent_height: 60,
            latent_width: 104,
            text_len: 512,
            text_dim: 4096,
            image_len: 0,
            image_dim: 0,
            batch_size: 1,
            reward_loss: PrflRewardLoss::PRFL_LOSS_CE as i32,
            reward_blocks: 8,
            reward_backbone_lr: 1e-6,
            reward_head_lr: 1e-4,
            prfl_lr: 5e-6,
            prfl_steps: 40,
            shift: 5.0,
            lora_rank: 0,
            lora_alpha: 128.0,
            recompute: 1,
            seed: 0,
            cpu_fallback: 0,
        }
    }
}

/// Checks every field, naming the first bad one, and builds the session's configuration. The
/// device comes first: asking for a device that cannot be used is the most important thing to
/// report. Whether the device can actually be opened is checked later, by
/// [`crate::session::Session::new`]. `cuda_library_dir` is the struct's string, already read
/// by [`super::args::string`] (the struct's pointer is not followed here).
pub fn validate(c: &PrflConfig, cuda_library_dir: Option<&str>) -> Result<SessionConfig, FfiError> {
    let device = match c.device {
        d if d == PrflDevice::PRFL_DEVICE_CPU as i32 => DeviceSpec::Cpu,
        d if d == PrflDevice::PRFL_DEVICE_AUTO as i32 => DeviceSpec::Auto,
        d if d == PrflDevice::PRFL_DEVICE_CUDA as i32 => {
            if c.device_index < 0 {
                return Err(FfiError::invalid(format!(
                    "device_index is {}: a CUDA device index is 0 or more",
                    c.device_index
                )));
            }
            DeviceSpec::Cuda(c.device_index as usize)
        }
        d => {
            return Err(FfiError::unknown_enum(
                "device",
                d,
                "PRFL_DEVICE_CPU (0), PRFL_DEVICE_CUDA (1), PRFL_DEVICE_AUTO (2)",
            ))
        }
    };
    if !matches!(device, DeviceSpec::Cuda(_)) && c.device_index != 0 {
        return Err(FfiError::invalid(format!(
            "device_index is {}: it selects a GPU with PRFL_DEVICE_CUDA; PRFL_DEVICE_CPU and \
             PRFL_DEVICE_AUTO take 0",
            c.device_index
        )));
    }
    let cpu_fallback = match c.cpu_fallback {
        0 => false,
        1 => true,
        v => {
            return Err(FfiError::invalid(format!(
                "cpu_fallback is {v}, not 0 or 1"
            )))
        }
    };
    let lib_dir = cuda_library_dir
        .filter(|s| !s.is_empty())
        .map(std::path::PathBuf::from);
    let backpressure = match c.backpressure {
        0 => Backpressure::RejectNewest,
        1 => Backpressure::DropOldest,
        v => {
            return Err(FfiError::unknown_enum(
                "backpressure",
                v,
                "PRFL_BACKPRESSURE_REJECT_NEWEST (0), PRFL_BACKPRESSURE_DROP_OLDEST (1)",
            ))
        }
    };
    let reward_loss = match c.reward_loss {
        0 => crate::reward::train::RewardLoss::Ce,
        1 => crate::reward::train::RewardLoss::Bt,
        v => {
            return Err(FfiError::unknown_enum(
                "reward_loss",
                v,
                "PRFL_LOSS_CE (0), PRFL_LOSS_BT (1)",
            ))
        }
    };
    let positive = |name: &str, v: u32| {
        if v == 0 {
            Err(FfiError::invalid(format!("{name} must be positive")))
        } else {
            Ok(v as usize)
        }
    };
    let latent_shape = [
        positive("latent_channels", c.latent_channels)?,
        positive("latent_frames", c.latent_frames)?,
        positive("latent_height", c.latent_height)?,
        positive("latent_width", c.latent_width)?,
    ];
    if latent_shape[2] % 2 != 0 || latent_shape[3] % 2 != 0 {
        return Err(FfiError::invalid(format!(
            "latent_height {} and latent_width {} must be even (the DiT patch is 1 x 2 x 2)",
            latent_shape[2], latent_shape[3]
        )));
    }
    let text_len = positive("text_len", c.text_len)?;
    let text_dim = positive("text_dim", c.text_dim)?;
    let (image_len, image_dim) = (c.image_len as usize, c.image_dim as usize);
    if (image_len == 0) != (image_dim == 0) {
        return Err(FfiError::invalid(format!(
            "image_len {image_len} and image_dim {image_dim}: both 0 (text-to-video) or both \
             positive (image-to-video)"
        )));
    }
    let too_big = |what: &str| FfiError::invalid(format!("{what} is too large"));
    let latent = latent_shape
        .iter()
        .try_fold(1usize, |a, &b| a.checked_mul(b))
        .ok_or_else(|| too_big("the latent shape"))?;
    let text = text_len
        .checked_mul(text_dim)
        .ok_or_else(|| too_big("text_len x text_dim"))?;
    let image = image_len
        .checked_mul(image_dim)
        .ok_or_else(|| too_big("image_len x image_dim"))?;
    let batch_size = positive("batch_size", c.batch_size)?;
    let queue_capacity = positive("queue_capacity", c.queue_capacity)?;
    if queue_capacity < batch_size {
        return Err(FfiError::invalid(format!(
            "queue_capacity {queue_capacity} is smaller than batch_size {batch_size}: a step \
             could never find a full batch"
        )));
    }
    let reward_blocks = positive("reward_blocks", c.reward_blocks)?;
    for (name, v) in [
        ("reward_backbone_lr", c.reward_backbone_lr),
        ("reward_head_lr", c.reward_head_lr),
        ("prfl_lr", c.prfl_lr),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            return Err(FfiError::invalid(format!(
                "{name} is {v}: a learning rate must be finite and not negative"
            )));
        }
    }
    if c.prfl_steps < 2 {
        return Err(FfiError::invalid(format!(
            "prfl_steps is {}: the rollout needs at least 2 sampling steps",
            c.prfl_steps
        )));
    }
    if !(c.shift.is_finite() && c.shift > 0.0) {
        return Err(FfiError::invalid(format!(
            "shift is {}: it must be finite and positive",
            c.shift
        )));
    }
    let lora = match c.lora_rank {
        0 => None,
        rank => {
            if !(c.lora_alpha.is_finite() && c.lora_alpha > 0.0) {
                return Err(FfiError::invalid(format!(
                    "lora_alpha is {}: it must be finite and positive",
                    c.lora_alpha
                )));
            }
            Some(LoraConfig {
                rank: rank as usize,
                alpha: c.lora_alpha,
                ..LoraConfig::default()
            })
        }
    };
    let recompute = match c.recompute {
        0 => false,
        1 => true,
        v => return Err(FfiError::invalid(format!("recompute is {v}, not 0 or 1"))),
    };
    Ok(SessionConfig {
        device,
        cuda: CudaOptions { lib_dir },
        cpu_fallback,
        queue_capacity,
        backpressure,
        sizes: SampleSizes {
            latent_shape,
            latent,
            text_len,
            text_dim,
            text,
            image_len,
            image_dim,
            image,
        },
        batch_size,
        reward_loss,
        reward_blocks,
        reward_backbone_lr: c.reward_backbone_lr,
        reward_head_lr: c.reward_head_lr,
        prfl_lr: c.prfl_lr,
        prfl_steps: c.prfl_steps as usize,
        shift: c.shift,
        lora,
        recompute,
        seed: c.seed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::SampleSizes;

    /// The C default and the Rust default are written in two places (a `#[repr(C)]` literal and
    /// `SessionConfig::new`); this keeps them one configuration: a C host that changes nothing
    /// gets exactly what a Rust host gets at the same sample shape.
    #[test]
    fn the_c_default_is_the_session_default() {
        let c = PrflConfig::default();
        let from_c = validate(&c, None).map_err(|e| e.message).unwrap();
        let sizes = SampleSizes::new([16, 21, 60, 104], [512, 4096], [0, 0]).unwrap();
        assert_eq!(from_c, SessionConfig::new(sizes));
    }
}
