//! The `extern "C"` entry points. Each one runs inside [`guard`] (a panic becomes
//! `PRFL_ERR_PANIC`, never an unwind into C), turns its raw arguments into Rust values through
//! [`args`], and calls the safe [`Session`]. The doc comments are the header's documentation.

use std::ffi::{c_char, c_void};

use super::args;
use super::config::{validate, PrflConfig, PRFL_ABI_VERSION};
use super::handle::{session, PrflRuntime};
use super::log::PrflLogCallback;
use super::status::{guard, guard_value, last_error_ptr, FfiError, PrflStatus};
use super::types::{
    PrflQueueStats, PrflSampleConfig, PrflSampleStats, PrflStepMode, PrflStepStats,
    QUEUE_STATS_V1_SIZE, SAMPLE_CONFIG_V1_SIZE, SAMPLE_STATS_V1_SIZE, STEP_STATS_V1_SIZE,
};
use crate::session::{SampleConfig, SampleRef, SampleSizes, Session, StepMode};

fn latent_desc(s: &SampleSizes) -> String {
    format!("latent [C, F, H, W] = {:?}", s.latent_shape)
}

fn text_desc(s: &SampleSizes) -> String {
    format!("text [L, D] = [{}, {}] per sample", s.text_len, s.text_dim)
}

/// The optional image features: required with the configured size for I2V, absent for T2V.
///
/// # Safety
/// A non-null `image` points to `image_len` readable floats.
unsafe fn image_arg<'a>(
    image: *const f32,
    image_len: usize,
    s: &SampleSizes,
) -> Result<&'a [f32], FfiError> {
    if s.image == 0 {
        if image_len != 0 {
            return Err(FfiError::new(
                super::status::PRFL_ERR_SHAPE,
                format!("`image_len` is {image_len} floats, expected 0 (text-to-video: no image)"),
            ));
        }
        return Ok(&[]);
    }
    // SAFETY: forwarded contract.
    unsafe {
        args::required_floats(image, image_len, s.image, "image", || {
            format!("image [Li, Di] = [{}, {}]", s.image_len, s.image_dim)
        })
    }
}

/// Checks a batch call's per-sample length against the configuration.
fn per_sample(what: &str, got: usize, want: usize, desc: String) -> Result<(), FfiError> {
    if got != want {
        return Err(FfiError::new(
            super::status::PRFL_ERR_SHAPE,
            format!("`{what}` is {got} floats per sample, expected {want} ({desc})"),
        ));
    }
    Ok(())
}

/// Checks a candidate count and how many of them to keep: `1 <= keep <= count <= u32::MAX`
/// (indices are `uint32_t`).
fn candidate_count(count: usize, keep: Option<usize>) -> Result<(), FfiError> {
    if count == 0 {
        return Err(FfiError::invalid(
            "`count` is 0: pass at least one candidate",
        ));
    }
    if count > u32::MAX as usize {
        return Err(FfiError::invalid(format!(
            "`count` is {count}: at most {} candidates (indices are uint32_t)",
            u32::MAX
        )));
    }
    match keep {
        Some(k) if k == 0 || k > count => Err(FfiError::invalid(format!(
            "`keep` is {k}: between 1 and count ({count})"
        ))),
        _ => Ok(()),
    }
}

fn step_mode(mode: i32) -> Result<StepMode, FfiError> {
    PrflStepMode::from_i32(mode)
        .map(StepMode::from)
        .ok_or_else(|| {
            FfiError::unknown_enum("mode", mode, "PRFL_STEP_REWARD (0), PRFL_STEP_PRFL (1)")
        })
}

/// Passes a submission's argument check through, counting a refusal (null, length,
/// alignment) under `rejected_invalid` as the session counts its own.
fn count_refusal<T>(session: &Session, checked: Result<T, FfiError>) -> Result<T, FfiError> {
    if checked.is_err() {
        session.count_invalid_submission();
    }
    checked
}

/// The ABI version of the library (compare with `PRFL_ABI_VERSION` of the header compiled
/// against).
#[no_mangle]
pub extern "C" fn prfl_abi_version() -> u32 {
    guard_value("prfl_abi_version", PRFL_ABI_VERSION, || PRFL_ABI_VERSION)
}

/// The library's version, e.g. "0.1.0" (a static string; never free it).
#[no_mangle]
pub extern "C" fn prfl_version() -> *const c_char {
    const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
    guard_value("prfl_version", VERSION.as_ptr().cast(), || {
        VERSION.as_ptr().cast()
    })
}

/// Fills `*out` with the defaults (Wan2.1 480p T2V, the paper's hyperparameters, device AUTO)
/// and sets `struct_size` and `abi_version`. Writes `sizeof(PrflConfig)` of ABI version 1.
/// NULL is a no-op.
///
/// # Safety
/// A non-null `out` points to a writable `PrflConfig`.
#[no_mangle]
pub unsafe extern "C" fn prfl_config_default(out: *mut PrflConfig) {
    guard_value("prfl_config_default", (), || {
        if !out.is_null() {
            // SAFETY: non-null and writable per the contract.
            let _ = unsafe { args::write(out, PrflConfig::default(), "out") };
        }
    })
}

/// Creates a runtime: validates `*config`, allocates the sample queue (every slot, up front).
/// On success `*out` is the new handle; on failure it is set to NULL.
/// Errors: `PRFL_ERR_VERSION` (struct_size, abi_version), `PRFL_ERR_UNKNOWN_ENUM`,
/// `PRFL_ERR_DEVICE` (the CUDA device cannot be used: libraries, driver, GPU, kernel
/// compilation; the message says which, and `cpu_fallback = 1` runs on the CPU instead),
/// `PRFL_ERR_INVALID_ARGUMENT` (a value out of range, queue memory unavailable).
///
/// # Safety
/// `config` points to a `PrflConfig` of at least `config->struct_size` bytes whose
/// `cuda_library_dir` is NULL or a NUL-terminated string; `out` to a writable `PrflRuntime *`.
#[no_mangle]
pub unsafe extern "C" fn prfl_create(
    config: *const PrflConfig,
    out: *mut *mut PrflRuntime,
) -> PrflStatus {
    guard("prfl_create", || {
        // SAFETY: non-null `out` is writable per the contract.
        unsafe { args::write(out, std::ptr::null_mut(), "out") }?;
        // SAFETY: sized `struct_size` per the contract (null and misalignment are refused).
        let c = unsafe { args::read_config(config) }?;
        // SAFETY: `cuda_library_dir` is NULL or a NUL-terminated string per the contract; it is
        // read here and not kept.
        let lib_dir = unsafe { args::string(c.cuda_library_dir, "cuda_library_dir") };
        let session = Session::new(validate(&c, lib_dir?)?)?;
        let handle = PrflRuntime::into_raw(session);
        // SAFETY: checked writable above.
        unsafe { out.write(handle) };
        Ok(())
    })
}

/// Destroys a runtime: stops the background trainer (waiting for its step in progress), then
/// frees everything. NULL is a no-op. No other call on this runtime may be in progress or follow.
///
/// # Safety
/// `rt` is NULL or a handle from `prfl_create` not destroyed yet.
#[no_mangle]
pub unsafe extern "C" fn prfl_destroy(rt: *mut PrflRuntime) {
    guard_value("prfl_destroy", (), || {
        if !rt.is_null() {
            // SAFETY: a live handle from Box::into_raw in prfl_create, destroyed once.
            drop(unsafe { Box::from_raw(rt) });
        }
    })
}

/// Loads the generator from a checkpoint: a directory as released (`config.json` plus
/// `diffusion_pytorch_model*.safetensors`, sharded or not), a single `.safetensors` file, or an
/// index json; original Wan2.1 or diffusers names; f32, bf16 or f16. Tensors are memory-mapped
/// and read when a model needs them. Its latent channels and text width must match the
/// configuration; text-to-video only in ABI version 1. Not once a reward model exists
/// (`PRFL_ERR_INVALID_ARGUMENT`: create a new runtime). A failed load changes nothing.
/// Errors: `PRFL_ERR_IO`, `PRFL_ERR_CORRUPT_FILE`, `PRFL_ERR_SHAPE`, `PRFL_ERR_BUSY`.
///
/// # Safety
/// `rt` is a live handle; `path` a NUL-terminated UTF-8 string.
#[no_mangle]
pub unsafe extern "C" fn prfl_load_generator(
    rt: *mut PrflRuntime,
    path: *const c_char,
) -> PrflStatus {
    guard("prfl_load_generator", || {
        // SAFETY: forwarded contracts.
        let session = unsafe { session(rt) }?;
        // SAFETY: forwarded contract.
        let path = unsafe { args::path(path, "path") }?;
        Ok(session.load_generator(&path)?)
    })
}

/// Loads the generator from a whole `.safetensors` file held in memory (copied: the buffer may
/// be freed on return). `config_json` is the checkpoint's `config.json` text (either layout), or
/// NULL to infer the configuration from the shapes (head width 128, as in every release).
/// Otherwise as `prfl_load_generator`.
///
/// # Safety
/// `rt` is a live handle; `safetensors` points to `len` readable bytes; a non-null
/// `config_json` is a NUL-terminated UTF-8 string.
#[no_mangle]
pub unsafe extern "C" fn prfl_load_generator_from_memory(
    rt: *mut PrflRuntime,
    safetensors: *const u8,
    len: usize,
    config_json: *const c_char,
) -> PrflStatus {
    guard("prfl_load_generator_from_memory", || {
        // SAFETY: forwarded contracts.
        let session = unsafe { session(rt) }?;
        // SAFETY: forwarded contract.
        let bytes = unsafe { args::bytes(safetensors, len, "safetensors") }?;
        // SAFETY: forwarded contract.
        let json = unsafe { args::string(config_json, "config_json") }?;
        Ok(session.load_generator_from_memory(bytes, json)?)
    })
}

/// Creates a fresh reward model cut from the loaded generator: its first `reward_blocks` blocks
/// and embeddings (frozen embeddings, trainable blocks), a new attention-pooling and MLP head
/// (seeded by `seed`), and its AdamW trainer. Replaces any reward model.
/// Errors: `PRFL_ERR_NOT_LOADED` (no generator), `PRFL_ERR_INVALID_ARGUMENT` (more blocks than
/// the generator has), `PRFL_ERR_BUSY`.
///
/// # Safety
/// `rt` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn prfl_init_reward(rt: *mut PrflRuntime) -> PrflStatus {
    guard("prfl_init_reward", || {
        // SAFETY: forwarded contract.
        Ok(unsafe { session(rt) }?.init_reward()?)
    })
}

/// Loads a reward model and its trainer state from a reward training checkpoint (a
/// `reward-<g>.safetensors` of `prfl_save`, or `prfl train-reward`'s `checkpoint.safetensors`),
/// cut from the loaded generator. The model's structure (blocks kept) comes from the file, the
/// training hyperparameters from this runtime's configuration. Replaces any reward model; a
/// failed load changes nothing.
/// Errors: `PRFL_ERR_NOT_LOADED`, `PRFL_ERR_IO`, `PRFL_ERR_CORRUPT_FILE`, `PRFL_ERR_BUSY`.
///
/// # Safety
/// `rt` is a live handle; `path` a NUL-terminated UTF-8 string.
#[no_mangle]
pub unsafe extern "C" fn prfl_load_reward(rt: *mut PrflRuntime, path: *const c_char) -> PrflStatus {
    guard("prfl_load_reward", || {
        // SAFETY: forwarded contract.
        let session = unsafe { session(rt) }?;
        // SAFETY: forwarded contract.
        let path = unsafe { args::path(path, "path") }?;
        Ok(session.load_reward(&path)?)
    })
}

/// Queues a labelled clip: its clean latent `[C, F, H, W]`, its text states `[L, D]`, for I2V
/// its image features `[Li, Di]` (NULL and 0 for T2V), and `label` 1 (good) or 0 (bad). The
/// data is copied; the call never waits for training and never allocates. Thread-safe: any
/// number of producer threads may submit at once, also while the background trainer runs.
/// Errors: `PRFL_ERR_QUEUE_FULL` (policy REJECT_NEWEST), `PRFL_ERR_SHAPE` (a length differs from
/// the configuration), `PRFL_ERR_NON_FINITE` (NaN or infinity, a NaN label),
/// `PRFL_ERR_INVALID_ARGUMENT` (a label other than 0 or 1), `PRFL_ERR_NULL_POINTER`.
///
/// # Safety
/// `rt` is a live handle; each non-null array holds its `*_len` floats.
#[no_mangle]
pub unsafe extern "C" fn prfl_submit_labeled(
    rt: *mut PrflRuntime,
    latent: *const f32,
    latent_len: usize,
    text: *const f32,
    text_len: usize,
    image: *const f32,
    image_len: usize,
    label: f32,
) -> PrflStatus {
    guard("prfl_submit_labeled", || {
        // SAFETY: forwarded contract.
        let session = unsafe { session(rt) }?;
        // A lost session refuses first, uncounted.
        session.check_alive()?;
        let s = session.sizes();
        // SAFETY (all three): each non-null array holds its stated length, checked against the
        // configuration before it is read.
        let latent = unsafe {
            args::required_floats(latent, latent_len, s.latent, "latent", || latent_desc(s))
        };
        let latent = count_refusal(session, latent)?;
        // SAFETY: as above.
        let text =
            unsafe { args::required_floats(text, text_len, s.text, "text", || text_desc(s)) };
        let text = count_refusal(session, text)?;
        // SAFETY: as above.
        let image = count_refusal(session, unsafe { image_arg(image, image_len, s) })?;
        Ok(session.submit(&SampleRef::labelled(latent, text, image, label))?)
    })
}

/// Queues a preference pair: the preferred clip's latent `win` and the other's `lose` (each
/// `latent_len` floats, `[C, F, H, W]`) under one prompt `text` (and image for I2V).
/// As `prfl_submit_labeled` otherwise.
///
/// # Safety
/// `rt` is a live handle; each non-null array holds its stated number of floats.
#[no_mangle]
pub unsafe extern "C" fn prfl_submit_pair(
    rt: *mut PrflRuntime,
    win: *const f32,
    lose: *const f32,
    latent_len: usize,
    text: *const f32,
    text_len: usize,
    image: *const f32,
    image_len: usize,
) -> PrflStatus {
    guard("prfl_submit_pair", || {
        // SAFETY: forwarded contract.
        let session = unsafe { session(rt) }?;
        // A lost session refuses first, uncounted.
        session.check_alive()?;
        let s = session.sizes();
        // SAFETY (all four): each non-null array holds its stated length, checked against the
        // configuration before it is read.
        let win =
            unsafe { args::required_floats(win, latent_len, s.latent, "win", || latent_desc(s)) };
        let win = count_refusal(session, win)?;
        // SAFETY: as above.
        let lose =
            unsafe { args::required_floats(lose, latent_len, s.latent, "lose", || latent_desc(s)) };
        let lose = count_refusal(session, lose)?;
        // SAFETY: as above.
        let text =
            unsafe { args::required_floats(text, text_len, s.text, "text", || text_desc(s)) };
        let text = count_refusal(session, text)?;
        // SAFETY: as above.
        let image = count_refusal(session, unsafe { image_arg(image, image_len, s) })?;
        Ok(session.submit(&SampleRef::pair(win, lose, text, image))?)
    })
}

/// Runs one training step on the calling thread and, if `out` is not NULL, fills `*out`
/// (set `out->struct_size` first).
/// - `PRFL_STEP_REWARD`: takes `batch_size` samples of the loss's kind (labelled clips for CE,
///   pairs for BT; samples of the other kind stay queued, for the other loss or for PRFL),
///   noises them to random levels and takes one reward-model optimiser step.
/// - `PRFL_STEP_PRFL`: takes `batch_size` samples of either kind (pairs first, oldest first);
///   their text conditions a rollout of the generator, which is trained to raise the frozen
///   reward copy's score mid-rollout; the clean latents (pair winners, clips labelled 1) feed the
///   interleaved flow-matching step, which is skipped for a batch holding a clip labelled 0. The
///   PRFL trainer is built on the first PRFL step (the whole generator is loaded then) with a
///   frozen copy of the current reward model; when the reward model has changed since (reward
///   steps, a load), the copy is refreshed before the next PRFL step, so interleaving
///   REWARD and PRFL steps fine-tunes against the latest reward.
///
/// Samples taken by a step are consumed even if the step then fails.
/// Errors: `PRFL_ERR_NOT_ENOUGH_SAMPLES` (nothing consumed), `PRFL_ERR_NOT_LOADED`,
/// `PRFL_ERR_UNKNOWN_ENUM`, `PRFL_ERR_BUSY` (the background trainer runs), `PRFL_ERR_VERSION`
/// (`out->struct_size`).
///
/// # Safety
/// `rt` is a live handle; a non-null `out` points to a writable `PrflStepStats` of
/// `out->struct_size` bytes.
#[no_mangle]
pub unsafe extern "C" fn prfl_step(
    rt: *mut PrflRuntime,
    mode: i32,
    out: *mut PrflStepStats,
) -> PrflStatus {
    guard("prfl_step", || {
        // SAFETY: forwarded contract.
        let rt = unsafe { session(rt) }?;
        let mode = step_mode(mode)?;
        // Checked before the step, so that a bad struct never costs a batch.
        let n = if out.is_null() {
            None
        } else {
            // SAFETY: forwarded contract.
            Some(unsafe { args::out_size(out, "out", STEP_STATS_V1_SIZE) }?)
        };
        let stats = PrflStepStats::from(rt.step(mode)?);
        if let Some(n) = n {
            // SAFETY: `out` is valid for `n` bytes (`out_size`).
            unsafe { args::write_sized(out, stats, n) };
        }
        Ok(())
    })
}

/// Scores one noisy latent `[C, F, H, W]` at `timestep` (raw value in [0, 1000]; 0 = clean)
/// under text states `[L, D]`: `*out_score` is the reward probability in (0, 1). Thread-safe;
/// runs concurrently with other scoring calls and waits while a training step (foreground or
/// background) holds the model, i.e. up to one step.
/// Errors: `PRFL_ERR_NOT_LOADED`, `PRFL_ERR_SHAPE`, `PRFL_ERR_NON_FINITE`,
/// `PRFL_ERR_INVALID_ARGUMENT` (timestep outside [0, 1000]).
///
/// # Safety
/// `rt` is a live handle; the arrays hold their stated lengths; `out_score` is writable.
#[no_mangle]
pub unsafe extern "C" fn prfl_score(
    rt: *mut PrflRuntime,
    latent: *const f32,
    latent_len: usize,
    timestep: f32,
    text: *const f32,
    text_len: usize,
    out_score: *mut f32,
) -> PrflStatus {
    guard("prfl_score", || {
        // SAFETY: forwarded contract.
        let rt = unsafe { session(rt) }?;
        let s = rt.sizes();
        // SAFETY: forwarded contract (length checked before reading).
        let latent = unsafe {
            args::required_floats(latent, latent_len, s.latent, "latent", || latent_desc(s))
        }?;
        // SAFETY: as above.
        let text =
            unsafe { args::required_floats(text, text_len, s.text, "text", || text_desc(s)) }?;
        // SAFETY: forwarded contract.
        let out = unsafe { args::floats_mut(out_score, 1, "out_score") }?;
        Ok(rt.score_into(latent, &[timestep], text, out)?)
    })
}

/// Scores `count` noisy latents at their own timesteps, e.g. the candidates of a sampling batch
/// at some step, to reject bad ones early. `latents` holds `count x latent_len` floats,
/// `timesteps` `count`, `text` `count x text_len` (`latent_len` and `text_len` are per sample),
/// `out_scores` receives `count` probabilities. Runs in chunks of `batch_size`. `count` 0 is a
/// no-op. Otherwise as `prfl_score`.
///
/// # Safety
/// `rt` is a live handle; the arrays hold the stated numbers of floats.
#[no_mangle]
pub unsafe extern "C" fn prfl_score_batch(
    rt: *mut PrflRuntime,
    latents: *const f32,
    count: usize,
    latent_len: usize,
    timesteps: *const f32,
    text: *const f32,
    text_len: usize,
    out_scores: *mut f32,
) -> PrflStatus {
    guard("prfl_score_batch", || {
        // SAFETY: forwarded contract.
        let rt = unsafe { session(rt) }?;
        let s = rt.sizes();
        for (p, what) in [
            (latents, "latents"),
            (timesteps, "timesteps"),
            (text, "text"),
            (out_scores.cast_const(), "out_scores"),
        ] {
            if p.is_null() {
                return Err(FfiError::null(what));
            }
        }
        per_sample("latent_len", latent_len, s.latent, latent_desc(s))?;
        per_sample("text_len", text_len, s.text, text_desc(s))?;
        if count == 0 {
            return Ok(());
        }
        // SAFETY (all four): non-null, and the caller guarantees the stated sizes.
        let latents = unsafe { args::float_rows(latents, count, s.latent, "latents") }?;
        // SAFETY: as above.
        let timesteps = unsafe { args::float_rows(timesteps, count, 1, "timesteps") }?;
        // SAFETY: as above.
        let text = unsafe { args::float_rows(text, count, s.text, "text") }?;
        // SAFETY: as above; the output does not alias the inputs per the contract.
        let out = unsafe { args::floats_mut(out_scores, count, "out_scores") }?;
        Ok(rt.score_into(latents, timesteps, text, out)?)
    })
}

/// Early rejection for a host that runs its own sampler: scores `count` candidates' noisy
/// latents, all at the sampler's current `timestep` (raw value in [0, 1000], as `prfl_score`),
/// and writes the indices (0-based, into the candidates) of the best `keep` to `out_kept`,
/// BEST FIRST; equal scores keep the lower index first, as `prfl_sample_early_reject` does. The
/// host then finishes only those. `latents` holds `count x latent_len` floats, `text`
/// `count x text_len` (one text per candidate, as `prfl_score_batch`; `latent_len` and
/// `text_len` are per candidate), `out_kept` `keep` indices; `out_scores`, when not NULL,
/// receives all `count` scores in candidate order. `keep` is in `1 ..= count`.
/// Concurrency as `prfl_score`.
/// Errors: `PRFL_ERR_NULL_POINTER`, `PRFL_ERR_SHAPE`, `PRFL_ERR_NON_FINITE`,
/// `PRFL_ERR_INVALID_ARGUMENT` (count 0, keep outside 1..=count, timestep outside [0, 1000]),
/// `PRFL_ERR_NOT_LOADED` (no reward model).
///
/// # Safety
/// `rt` is a live handle; the arrays hold the stated numbers of elements; the outputs do not
/// overlap the inputs.
#[no_mangle]
pub unsafe extern "C" fn prfl_select_candidates(
    rt: *mut PrflRuntime,
    latents: *const f32,
    count: usize,
    latent_len: usize,
    timestep: f32,
    text: *const f32,
    text_len: usize,
    keep: usize,
    out_kept: *mut u32,
    out_scores: *mut f32,
) -> PrflStatus {
    guard("prfl_select_candidates", || {
        // SAFETY: forwarded contract.
        let rt = unsafe { session(rt) }?;
        let s = rt.sizes();
        for (p, what) in [(latents, "latents"), (text, "text")] {
            if p.is_null() {
                return Err(FfiError::null(what));
            }
        }
        if out_kept.is_null() {
            return Err(FfiError::null("out_kept"));
        }
        per_sample("latent_len", latent_len, s.latent, latent_desc(s))?;
        per_sample("text_len", text_len, s.text, text_desc(s))?;
        candidate_count(count, Some(keep))?;
        // SAFETY (all): non-null, and the caller guarantees the stated sizes.
        let latents = unsafe { args::float_rows(latents, count, s.latent, "latents") }?;
        // SAFETY: as above.
        let text = unsafe { args::float_rows(text, count, s.text, "text") }?;
        // SAFETY: as above; the outputs do not alias the inputs per the contract.
        let kept = unsafe { args::u32s_mut(out_kept, keep, "out_kept") }?;
        let mut own = Vec::new();
        let scores = if out_scores.is_null() {
            own.resize(count, 0.0f32);
            &mut own[..]
        } else {
            // SAFETY: as above.
            unsafe { args::floats_mut(out_scores, count, "out_scores") }?
        };
        Ok(rt.select_into(latents, timestep, text, kept, scores)?)
    })
}

/// Fills `*out` with the sampling defaults: every field 0 (= its default, see
/// `PrflSampleConfig`) and `struct_size = sizeof(PrflSampleConfig)`. NULL is a no-op.
///
/// # Safety
/// A non-null `out` points to a writable `PrflSampleConfig`.
#[no_mangle]
pub unsafe extern "C" fn prfl_sample_config_default(out: *mut PrflSampleConfig) {
    guard_value("prfl_sample_config_default", (), || {
        if !out.is_null() {
            let c = PrflSampleConfig {
                struct_size: SAMPLE_CONFIG_V1_SIZE as u32,
                ..PrflSampleConfig::default()
            };
            // SAFETY: non-null and writable per the contract.
            let _ = unsafe { args::write(out, c, "out") };
        }
    })
}

/// Early rejection with the library's sampler: starts `count` candidates from `noise`
/// (`count x latent_len` floats, standard normal) under `text` (`count x text_len`, one text per
/// candidate), takes `config->reject_at_step` solver steps, scores them with the reward model
/// there, and samples only the best `config->keep` to the end (ties keep the lower index).
/// Writes the survivors' clean latents to `out_latents` (`keep x latent_len` floats) and their
/// candidate indices to `out_kept` (`keep` values), both IN CANDIDATE ORDER (row k of
/// `out_latents` is candidate `out_kept[k]`); `*out_stats` (NULL = not wanted; set its
/// `struct_size` first) gets the cost. `keep == count` samples every candidate with no
/// rejection (no reward model needed). A survivor ends where sampling it alone would (up to the
/// summation order of a different batch size). `config` NULL = every default.
///
/// The generator is the PRFL trainer's (fine-tuned, LoRA included) once a PRFL step has built
/// it; before that, a whole inference copy of the loaded generator, built on the first call and
/// kept (memory: the generator's weights on the device) until another generator is loaded or
/// the PRFL trainer exists. Candidates run through the models in chunks of `batch_size`.
/// Concurrency as `prfl_score`: runs beside scoring and beside the background trainer, waits
/// while a training step holds the models, and a step waits for the whole sampling call.
/// Errors: `PRFL_ERR_NULL_POINTER`, `PRFL_ERR_SHAPE`, `PRFL_ERR_NON_FINITE` (noise, text),
/// `PRFL_ERR_INVALID_ARGUMENT` (count 0, keep outside 1..=count, steps outside 2..=1000,
/// reject_at_step outside 1..steps, shift not positive), `PRFL_ERR_UNKNOWN_ENUM` (solver),
/// `PRFL_ERR_VERSION` (a `struct_size`), `PRFL_ERR_NOT_LOADED` (no generator; no reward model
/// when rejecting).
///
/// # Safety
/// `rt` is a live handle; the arrays hold the stated numbers of elements; a non-null `config`
/// points to `config->struct_size` readable bytes; a non-null `out_stats` to a writable
/// `PrflSampleStats` of `out_stats->struct_size` bytes; the outputs do not overlap the inputs.
#[no_mangle]
pub unsafe extern "C" fn prfl_sample_early_reject(
    rt: *mut PrflRuntime,
    noise: *const f32,
    count: usize,
    latent_len: usize,
    text: *const f32,
    text_len: usize,
    config: *const PrflSampleConfig,
    out_latents: *mut f32,
    out_kept: *mut u32,
    out_stats: *mut PrflSampleStats,
) -> PrflStatus {
    guard("prfl_sample_early_reject", || {
        // SAFETY: forwarded contract.
        let rt = unsafe { session(rt) }?;
        let s = rt.sizes();
        for (p, what) in [
            (noise, "noise"),
            (text, "text"),
            (out_latents.cast_const(), "out_latents"),
        ] {
            if p.is_null() {
                return Err(FfiError::null(what));
            }
        }
        if out_kept.is_null() {
            return Err(FfiError::null("out_kept"));
        }
        let cfg = if config.is_null() {
            PrflSampleConfig::default()
        } else {
            // SAFETY: forwarded contract.
            unsafe { args::read_sized(config, "config", SAMPLE_CONFIG_V1_SIZE) }?
        };
        // Checked before the work, so that a bad struct never costs a rollout.
        let n_stats = if out_stats.is_null() {
            None
        } else {
            // SAFETY: forwarded contract.
            Some(unsafe { args::out_size(out_stats, "out_stats", SAMPLE_STATS_V1_SIZE) }?)
        };
        per_sample("latent_len", latent_len, s.latent, latent_desc(s))?;
        per_sample("text_len", text_len, s.text, text_desc(s))?;
        candidate_count(count, None)?;
        let setup = rt.sample_setup(&SampleConfig::try_from(&cfg)?, count)?;
        // SAFETY (all): non-null, and the caller guarantees the stated sizes.
        let noise = unsafe { args::float_rows(noise, count, s.latent, "noise") }?;
        // SAFETY: as above.
        let text = unsafe { args::float_rows(text, count, s.text, "text") }?;
        // SAFETY: as above; the outputs do not alias the inputs per the contract.
        let latents_out =
            unsafe { args::floats_mut(out_latents, setup.keep * s.latent, "out_latents") }?;
        // SAFETY: as above.
        let kept = unsafe { args::u32s_mut(out_kept, setup.keep, "out_kept") }?;
        let stats =
            PrflSampleStats::from(rt.sample_into(noise, text, &setup, latents_out, kept)?);
        if let Some(n) = n_stats {
            // SAFETY: `out_stats` is valid for `n` bytes (`out_size`).
            unsafe { args::write_sized(out_stats, stats, n) };
        }
        Ok(())
    })
}

/// Starts the background trainer: a thread that runs a step of `mode` whenever a full batch is
/// queued and otherwise sleeps about a millisecond. While it runs, `prfl_step`, `prfl_save`,
/// `prfl_load`, `prfl_init_reward`, `prfl_load_reward` and the generator loads answer
/// `PRFL_ERR_BUSY`; submissions, scoring, `prfl_queue_stats` and `prfl_stop` work. If a step
/// fails, the thread stops, logs the error, and `prfl_stop` returns it.
/// Errors: `PRFL_ERR_BUSY` (already running), `PRFL_ERR_NOT_LOADED`, `PRFL_ERR_UNKNOWN_ENUM`.
///
/// # Safety
/// `rt` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn prfl_start(rt: *mut PrflRuntime, mode: i32) -> PrflStatus {
    guard("prfl_start", || {
        // SAFETY: forwarded contract.
        let rt = unsafe { session(rt) }?;
        Ok(rt.start_background(step_mode(mode)?)?)
    })
}

/// Stops the background trainer, waiting for the step in progress (up to one step). Returns
/// `PRFL_OK` if it was running fine or not running at all, else the error that had stopped it.
///
/// # Safety
/// `rt` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn prfl_stop(rt: *mut PrflRuntime) -> PrflStatus {
    guard("prfl_stop", || {
        // SAFETY: forwarded contract.
        let rt = unsafe { session(rt) }?;
        Ok(rt.stop_background()?)
    })
}

/// Saves the training state of the current trainers (reward and/or PRFL: weights, optimiser
/// moments, random streams, step counts) into the directory `path` (created if needed), as one
/// atomic set: after a crash the directory holds the previous set or the new one, never a mix.
/// The queue and the generator's base weights are not saved.
/// Errors: `PRFL_ERR_NOT_LOADED` (no trainer yet), `PRFL_ERR_IO`, `PRFL_ERR_BUSY`.
///
/// # Safety
/// `rt` is a live handle; `path` a NUL-terminated UTF-8 string.
#[no_mangle]
pub unsafe extern "C" fn prfl_save(rt: *mut PrflRuntime, path: *const c_char) -> PrflStatus {
    guard("prfl_save", || {
        // SAFETY: forwarded contract.
        let rt = unsafe { session(rt) }?;
        // SAFETY: forwarded contract.
        let path = unsafe { args::path(path, "path") }?;
        Ok(rt.save(&path)?)
    })
}

/// Restores what `prfl_save` wrote into `path`, replacing the runtime's trainers (a trainer the
/// set lacks is kept). Needs the same generator loaded. A failed load changes nothing; training
/// then continues exactly as it would have from the save.
/// Errors: `PRFL_ERR_IO` (no such set), `PRFL_ERR_CORRUPT_FILE`, `PRFL_ERR_NOT_LOADED`,
/// `PRFL_ERR_BUSY`.
///
/// # Safety
/// `rt` is a live handle; `path` a NUL-terminated UTF-8 string.
#[no_mangle]
pub unsafe extern "C" fn prfl_load(rt: *mut PrflRuntime, path: *const c_char) -> PrflStatus {
    guard("prfl_load", || {
        // SAFETY: forwarded contract.
        let rt = unsafe { session(rt) }?;
        // SAFETY: forwarded contract.
        let path = unsafe { args::path(path, "path") }?;
        Ok(rt.load(&path)?)
    })
}

/// Fills `*out` with the queue's counters (set `out->struct_size` first): one consistent
/// snapshot, also while producers submit and the trainer steps, in which
/// `submitted = accepted + rejected_full + rejected_invalid`,
/// `accepted = consumed + dropped_oldest + queued` and `queued <= capacity` always hold.
/// Does not wait for a training step; thread-safe.
///
/// # Safety
/// `rt` is a live handle; `out` points to a writable `PrflQueueStats` of `out->struct_size`
/// bytes.
#[no_mangle]
pub unsafe extern "C" fn prfl_queue_stats(
    rt: *const PrflRuntime,
    out: *mut PrflQueueStats,
) -> PrflStatus {
    guard("prfl_queue_stats", || {
        // SAFETY: forwarded contract.
        let rt = unsafe { session(rt) }?;
        // SAFETY: forwarded contract.
        let n = unsafe { args::out_size(out, "out", QUEUE_STATS_V1_SIZE) }?;
        let stats = PrflQueueStats::from(rt.queue_stats()?);
        // SAFETY: `out` is valid for `n` bytes (`out_size`).
        unsafe { args::write_sized(out, stats, n) };
        Ok(())
    })
}

/// Routes the library's log records to `cb` (process-wide, all runtimes): levels 1 (error) to
/// `max_level` (5 = trace; 0 = none). NULL `cb` turns logging off. When this returns, the previous
/// callback is no longer running and will not be called again, so its `user` may be freed.
/// Errors: `PRFL_ERR_INVALID_ARGUMENT` (max_level outside 0..5), `PRFL_ERR_INTERNAL` (another
/// Rust `log` logger owns the process).
///
/// # Safety
/// `cb` (if not NULL) must be callable from any thread with `user` until replaced.
#[no_mangle]
pub unsafe extern "C" fn prfl_set_log_callback(
    cb: PrflLogCallback,
    user: *mut c_void,
    max_level: i32,
) -> PrflStatus {
    guard("prfl_set_log_callback", || {
        super::log::set(cb, user, max_level)
    })
}

/// The message of this thread's last failing call ("" if none failed), naming the function and
/// the problem. Valid until the next failing call on this thread; never free it.
#[no_mangle]
pub extern "C" fn prfl_last_error() -> *const c_char {
    guard_value("prfl_last_error", c"".as_ptr(), last_error_ptr)
}
