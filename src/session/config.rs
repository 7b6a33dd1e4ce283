//! The session's configuration: the sample sizes every submission must match, the queue's
//! backpressure policy, the device, and the trainers' hyperparameters. The C ABI builds one from
//! its `PrflConfig` (`ffi::config::validate`); a Rust host builds one with
//! [`SessionConfig::new`] and changes fields.

use crate::backend::cuda::CudaOptions;
use crate::backend::device::DeviceSpec;
use crate::model::lora::LoraConfig;
use crate::reward::train::RewardLoss;
use crate::{Error, Result};

/// What a submission does when every queue slot is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backpressure {
    /// Refuse the new sample ([`Error::QueueFull`]) without reading its data.
    RejectNewest,
    /// Drop the oldest queued sample of the same kind (of the other kind if none is queued) and
    /// take the new one; refuse when no slot can be reclaimed.
    DropOldest,
}

/// Element counts of one sample, as every submitted array must hold them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SampleSizes {
    /// `[C, F, H, W]`.
    pub latent_shape: [usize; 4],
    /// `C * F * H * W`.
    pub latent: usize,
    /// Text tokens L.
    pub text_len: usize,
    /// Text width D.
    pub text_dim: usize,
    /// `L * D`.
    pub text: usize,
    /// I2V CLIP image tokens (0 for T2V).
    pub image_len: usize,
    /// I2V CLIP feature width (0 for T2V).
    pub image_dim: usize,
    /// `image_len * image_dim`.
    pub image: usize,
}

impl SampleSizes {
    /// Sizes of latents `[C, F, H, W]`, text states `[L, D]` and image features `[Li, Di]`
    /// (`[0, 0]` for text-to-video). Every latent and text extent is positive, H and W are even
    /// (the DiT patch is 1 x 2 x 2), and the products fit in memory.
    pub fn new(latent_shape: [usize; 4], text: [usize; 2], image: [usize; 2]) -> Result<Self> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if latent_shape.contains(&0) || text.contains(&0) {
            return bad(format!(
                "latent {latent_shape:?} and text {text:?}: every extent must be positive"
            ));
        }
        if latent_shape[2] % 2 != 0 || latent_shape[3] % 2 != 0 {
            return bad(format!(
                "latent_height {} and latent_width {} must be even (the DiT patch is 1 x 2 x 2)",
                latent_shape[2], latent_shape[3]
            ));
        }
        if (image[0] == 0) != (image[1] == 0) {
            return bad(format!(
                "image_len {} and image_dim {}: both 0 (text-to-video) or both positive \
                 (image-to-video)",
                image[0], image[1]
            ));
        }
        let product = |v: &[usize], what: &str| {
            v.iter()
                .try_fold(1usize, |a, &b| a.checked_mul(b))
                .ok_or_else(|| Error::InvalidArgument(format!("{what} is too large")))
        };
        Ok(SampleSizes {
            latent_shape,
            latent: product(&latent_shape, "the latent shape")?,
            text_len: text[0],
            text_dim: text[1],
            text: product(&text, "text_len x text_dim")?,
            image_len: image[0],
            image_dim: image[1],
            image: product(&image, "image_len x image_dim")?,
        })
    }

    /// Bytes one queue slot holds: two latents (a pair's), the text states and the image
    /// features, as f32; `None` if that overflows.
    pub fn slot_bytes(&self) -> Option<u64> {
        let floats = self
            .latent
            .checked_mul(2)?
            .checked_add(self.text)?
            .checked_add(self.image)?;
        u64::try_from(floats).ok()?.checked_mul(4)
    }
}

/// Used as the bound on queue memory where the machine's physical memory cannot be queried.
pub const QUEUE_MEMORY_FALLBACK_LIMIT: u64 = 1 << 40;

/// The most memory a session's queue may take, all slots together: the machine's physical
/// memory (Linux, Android, macOS), else [`QUEUE_MEMORY_FALLBACK_LIMIT`]. A queue above it
/// could never be resident, so it is refused before anything is allocated (instead of
/// allocating slot after slot until memory runs out); one below it may still fail to
/// allocate, which is an error too.
pub fn queue_memory_limit() -> u64 {
    physical_memory().unwrap_or(QUEUE_MEMORY_FALLBACK_LIMIT)
}

#[cfg(any(target_os = "linux", target_os = "android", target_os = "macos"))]
fn physical_memory() -> Option<u64> {
    // SAFETY: sysconf has no preconditions.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let (pages, page) = (u64::try_from(pages).ok()?, u64::try_from(page).ok()?);
    pages.checked_mul(page).filter(|&b| b > 0)
}

#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "macos")))]
fn physical_memory() -> Option<u64> {
    None
}

/// Everything a [`super::Session`] is created with.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionConfig {
    /// The device to open (`cpu`, `cuda:N`, `auto`).
    pub device: DeviceSpec,
    /// Where the CUDA libraries are looked for first.
    pub cuda: CudaOptions,
    /// Run on the CPU when the CUDA device cannot be used.
    pub cpu_fallback: bool,
    /// Queue slots, each preallocated for one sample of `sizes`.
    pub queue_capacity: usize,
    /// What a submission does when every slot is taken.
    pub backpressure: Backpressure,
    /// The shapes of one sample.
    pub sizes: SampleSizes,
    /// Samples (clips or pairs) one step consumes; also the scoring chunk.
    pub batch_size: usize,
    /// The reward model's objective (CE on labelled clips, BT on pairs).
    pub reward_loss: RewardLoss,
    /// Generator blocks the reward model keeps.
    pub reward_blocks: usize,
    /// AdamW learning rate of the reward model's backbone blocks.
    pub reward_backbone_lr: f32,
    /// AdamW learning rate of the reward model's pooling and head.
    pub reward_head_lr: f32,
    /// AdamW learning rate of PRFL fine-tuning.
    pub prfl_lr: f32,
    /// Sampling steps of the PRFL rollout (and the default of sampling).
    pub prfl_steps: usize,
    /// Flow-matching schedule shift.
    pub shift: f32,
    /// LoRA adapters for PRFL; `None` = full fine-tuning.
    pub lora: Option<LoraConfig>,
    /// Recompute each block's activations in backward (less memory).
    pub recompute: bool,
    /// Seed of every random draw.
    pub seed: u64,
}

impl SessionConfig {
    /// The C ABI's defaults (the paper's hyperparameters, device `auto`, 8 queue slots, batch 1)
    /// for samples of `sizes`.
    pub fn new(sizes: SampleSizes) -> Self {
        SessionConfig {
            device: DeviceSpec::Auto,
            cuda: CudaOptions::default(),
            cpu_fallback: false,
            queue_capacity: 8,
            backpressure: Backpressure::RejectNewest,
            sizes,
            batch_size: 1,
            reward_loss: RewardLoss::Ce,
            reward_blocks: 8,
            reward_backbone_lr: 1e-6,
            reward_head_lr: 1e-4,
            prfl_lr: 5e-6,
            prfl_steps: 40,
            shift: 5.0,
            lora: None,
            recompute: true,
            seed: 0,
        }
    }

    /// Checks the rules a session relies on (the C ABI checks the same ones, field by field,
    /// before building this).
    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if self.batch_size == 0 || self.reward_blocks == 0 {
            return bad("batch_size and reward_blocks must be positive".into());
        }
        if self.queue_capacity < self.batch_size || self.queue_capacity > u32::MAX as usize {
            return bad(format!(
                "queue_capacity {} is smaller than batch_size {} (a step could never find a full \
                 batch) or too large",
                self.queue_capacity, self.batch_size
            ));
        }
        self.check_queue_memory()?;
        for (name, v) in [
            ("reward_backbone_lr", self.reward_backbone_lr),
            ("reward_head_lr", self.reward_head_lr),
            ("prfl_lr", self.prfl_lr),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(format!(
                    "{name} is {v}: a learning rate must be finite and not negative"
                ));
            }
        }
        if self.prfl_steps < 2 {
            return bad(format!(
                "prfl_steps is {}: the rollout needs at least 2 sampling steps",
                self.prfl_steps
            ));
        }
        if !(self.shift.is_finite() && self.shift > 0.0) {
            return bad(format!(
                "shift is {}: it must be finite and positive",
                self.shift
            ));
        }
        if let Some(l) = &self.lora {
            if l.rank == 0 || !(l.alpha.is_finite() && l.alpha > 0.0) {
                return bad(format!(
                    "lora rank {} and alpha {}: both must be positive",
                    l.rank, l.alpha
                ));
            }
        }
        let s = &self.sizes;
        if SampleSizes::new(
            s.latent_shape,
            [s.text_len, s.text_dim],
            [s.image_len, s.image_dim],
        )? != *s
        {
            return bad(format!("the sample sizes {s:?} are inconsistent"));
        }
        Ok(())
    }

    /// Bytes of every queue slot together (`queue_capacity` x [`SampleSizes::slot_bytes`]);
    /// `None` if that overflows.
    pub fn queue_bytes(&self) -> Option<u64> {
        self.sizes
            .slot_bytes()?
            .checked_mul(u64::try_from(self.queue_capacity).ok()?)
    }

    /// Refuses a queue larger than [`queue_memory_limit`], before anything is allocated.
    fn check_queue_memory(&self) -> Result<()> {
        let limit = queue_memory_limit();
        match self.queue_bytes() {
            Some(bytes) if bytes <= limit => Ok(()),
            bytes => Err(Error::InvalidArgument(format!(
                "the queue would take {} slots x {} bytes = {} bytes, more than the {limit} bytes \
                 of this machine's physical memory: lower queue_capacity or the sample sizes",
                self.queue_capacity,
                self.sizes
                    .slot_bytes()
                    .map_or("(overflow)".to_string(), |b| b.to_string()),
                bytes.map_or("(overflow)".to_string(), |b| b.to_string()),
            ))),
        }
    }
}
