//! The bounded, lock-free sample queue between the host's producer threads and the trainer.
//!
//! Slots are allocated (and their pages touched) once, at creation; afterwards a submission
//! never allocates and never waits for a training step. Ownership of a slot travels with its
//! index through three crossbeam `ArrayQueue`s: the free list, and one FIFO of ready samples per
//! kind (labelled clips, pairs), so that a step can take the kind its loss needs while the other
//! kind stays queued. Whoever popped an index owns that slot exclusively until pushing it
//! somewhere else; the queues' release/acquire ordering publishes the slot's contents.
//!
//! Removals from the ready queues (a step's batch, a `DROP_OLDEST` eviction) take a short lock so
//! that "at least B queued" checked by a step stays true while it pops them. Under
//! `REJECT_NEWEST` producers never take it, and under `DROP_OLDEST` only when the queue is full.

use std::cell::UnsafeCell;
#[cfg(feature = "test-hooks")]
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed, Ordering::SeqCst};

use crossbeam::queue::ArrayQueue;
use parking_lot::Mutex;

use super::config::{Backpressure, SampleSizes};
use super::stats::QueueStats;
use crate::reward::dataset::SampleKind;
use crate::{Error, Result};

/// One queued sample. The buffers have the configured sizes for the runtime's life.
pub struct SlotData {
    pub kind: SampleKind,
    /// 0 or 1 for a clip; unused for a pair.
    pub label: f32,
    /// The clip's latent, or the pair's preferred ("win") latent.
    pub latent: Vec<f32>,
    /// The pair's other latent (unused for a clip).
    pub lose: Vec<f32>,
    pub text: Vec<f32>,
    /// I2V CLIP features (empty for T2V).
    pub image: Vec<f32>,
}

/// A sample as a host submits it: borrowed memory, copied into a queue slot by
/// [`super::Session::submit`] (which checks every length against the session's sizes). `lose` is
/// empty for a clip, `image` for text-to-video.
#[derive(Clone, Copy, Debug)]
pub struct SampleRef<'a> {
    /// A labelled clip or a preference pair.
    pub kind: SampleKind,
    /// The clip's clean latent `[C, F, H, W]`, or the pair's preferred ("win") one.
    pub latent: &'a [f32],
    /// The pair's other latent (empty for a clip).
    pub lose: &'a [f32],
    /// Text encoder states `[L, D]`.
    pub text: &'a [f32],
    /// I2V CLIP image features `[Li, Di]` (empty for text-to-video).
    pub image: &'a [f32],
    /// 1 (good) or 0 (bad) for a clip; ignored for a pair.
    pub label: f32,
}

impl<'a> SampleRef<'a> {
    /// A labelled clip: `label` 1 (good) or 0 (bad).
    pub fn labelled(latent: &'a [f32], text: &'a [f32], image: &'a [f32], label: f32) -> Self {
        SampleRef {
            kind: SampleKind::Clip,
            latent,
            lose: &[],
            text,
            image,
            label,
        }
    }

    /// A preference pair: `win` preferred over `lose` under one prompt.
    pub fn pair(win: &'a [f32], lose: &'a [f32], text: &'a [f32], image: &'a [f32]) -> Self {
        SampleRef {
            kind: SampleKind::Pair,
            latent: win,
            lose,
            text,
            image,
            label: 1.0,
        }
    }
}

struct Slot(UnsafeCell<SlotData>);

// SAFETY: a slot is only accessed by the thread that popped its index from one of the queues
// (see the module docs), so there is never concurrent access; `ArrayQueue` push (release) and
// pop (acquire) order the accesses of successive owners.
unsafe impl Sync for Slot {}

/// Which samples a step takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// Only this kind.
    Kind(SampleKind),
    /// Either kind: pairs first, then clips.
    Any,
}

/// The queue's counters. Each only grows, and all are updated `SeqCst` (on x86 as cheap as
/// relaxed read-modify-writes), so that [`SampleQueue::stats`] can reason about one order of
/// every update. `submitted` and `queued` are not counted: [`SampleQueue::stats`] derives them,
/// so its invariants hold in every snapshot.
#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    rejected_full: AtomicU64,
    rejected_invalid: AtomicU64,
    dropped_oldest: AtomicU64,
    consumed: AtomicU64,
}

pub struct SampleQueue {
    slots: Box<[Slot]>,
    free: ArrayQueue<u32>,
    /// Ready samples, indexed by [`kind_index`].
    ready: [ArrayQueue<u32>; 2],
    removal: Mutex<()>,
    policy: Backpressure,
    counters: Counters,
    /// Test hook: the first latent value of every consumed sample, when enabled.
    #[cfg(feature = "test-hooks")]
    recording: AtomicBool,
    #[cfg(feature = "test-hooks")]
    recorded: Mutex<Vec<f32>>,
}

fn kind_index(kind: SampleKind) -> usize {
    match kind {
        SampleKind::Clip => 0,
        SampleKind::Pair => 1,
    }
}

/// A preallocated buffer whose pages are all resident. A non-zero fill is written element by
/// element (a zero fill may become a lazily-mapped `calloc`), so the first submission into the
/// slot does not page-fault through it. Allocation failure is an error, not an abort.
fn buffer(n: usize) -> Result<Vec<f32>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| {
        Error::InvalidArgument(format!(
            "cannot allocate a queue slot buffer of {n} floats: lower queue_capacity or the \
             sample sizes"
        ))
    })?;
    v.resize(n, 1.0);
    Ok(v)
}

/// Reads of the removal counters [`SampleQueue::stats`] tries before it takes what it has.
const STATS_RETRIES: u32 = 1000;

const EXPONENT: u32 = 0x7f80_0000;

/// Below this many floats a copy stays in the cache (the streaming path's set-up is not worth it).
#[cfg(target_arch = "x86_64")]
const STREAMING_MIN: usize = 16 * 1024;

/// Copies `src` into `dst` (equal lengths) and reports whether any value was NaN or infinite,
/// in one pass over the data.
fn copy_finite(dst: &mut [f32], src: &[f32]) -> bool {
    debug_assert_eq!(dst.len(), src.len());
    #[cfg(target_arch = "x86_64")]
    if dst.len() >= STREAMING_MIN {
        return copy_finite_streaming(dst, src);
    }
    copy_finite_cached(dst, src)
}

/// The portable copy: chunks are copied, then their bits tested while still in L1, with a
/// branch-free fold the compiler vectorises.
fn copy_finite_cached(dst: &mut [f32], src: &[f32]) -> bool {
    let mut bad = false;
    for (d, s) in dst.chunks_mut(2048).zip(src.chunks(2048)) {
        d.copy_from_slice(s);
        bad |= d
            .iter()
            .fold(false, |b, x| b | (x.to_bits() & EXPONENT == EXPONENT));
    }
    bad
}

/// x86-64: the stores bypass the cache. The slot is read later, by the trainer's thread, so a
/// 1 MiB latent then costs one read and one write of memory instead of also reading the
/// destination in (about 40% faster on the machines measured), and the host thread's working set
/// is not evicted. SSE2 is part of the x86-64 baseline, so no run-time detection is needed.
#[cfg(target_arch = "x86_64")]
fn copy_finite_streaming(dst: &mut [f32], src: &[f32]) -> bool {
    use std::arch::x86_64::{
        _mm_and_si128, _mm_castps_si128, _mm_cmpeq_epi32, _mm_loadu_ps, _mm_movemask_epi8,
        _mm_or_si128, _mm_set1_epi32, _mm_setzero_si128, _mm_sfence, _mm_stream_ps,
    };
    let n = dst.len().min(src.len());
    // Scalar head until the destination is 16-byte aligned, as streaming stores require.
    let head = dst.as_ptr().align_offset(16).min(n);
    let body = (n - head) / 16 * 16;
    let mut bad = copy_finite_cached(&mut dst[..head], &src[..head]);
    // SAFETY: SSE2 is always available on x86-64. Every access is within
    // `head .. head + body <= n` of both slices; `dst + head` is 16-byte aligned, so every
    // streaming store (at multiples of 4 floats from it) is aligned. The fence orders the
    // weakly-ordered streaming stores before the release push that publishes the slot.
    unsafe {
        let exponent = _mm_set1_epi32(EXPONENT as i32);
        let mut any = _mm_setzero_si128();
        let (s, d) = (src.as_ptr().add(head), dst.as_mut_ptr().add(head));
        let mut i = 0;
        while i < body {
            for k in [0, 4, 8, 12] {
                let v = _mm_loadu_ps(s.add(i + k));
                _mm_stream_ps(d.add(i + k), v);
                let e = _mm_and_si128(_mm_castps_si128(v), exponent);
                any = _mm_or_si128(any, _mm_cmpeq_epi32(e, exponent));
            }
            i += 16;
        }
        _mm_sfence();
        bad |= _mm_movemask_epi8(any) != 0;
    }
    let tail = head + body;
    bad | copy_finite_cached(&mut dst[tail..n], &src[tail..n])
}

/// An error naming the first non-finite value of `v`, if any. The common all-finite case is a
/// branch-free, vectorised pass; the position is only searched for on failure.
pub fn check_finite(v: &[f32], what: &str) -> Result<()> {
    let bad = v
        .iter()
        .fold(false, |b, x| b | (x.to_bits() & EXPONENT == EXPONENT));
    if !bad {
        return Ok(());
    }
    match v.iter().position(|x| !x.is_finite()) {
        None => Ok(()),
        Some(i) => Err(Error::NonFinite(format!("`{what}[{i}]` is {}", v[i]))),
    }
}

fn parts<'a>(s: &SampleRef<'a>) -> [(&'a [f32], &'static str); 4] {
    let first = match s.kind {
        SampleKind::Clip => "latent",
        SampleKind::Pair => "win",
    };
    [
        (s.latent, first),
        (s.lose, "lose"),
        (s.text, "text"),
        (s.image, "image"),
    ]
}

/// A slot index owned by a submission in progress: returned to the free list unless committed,
/// also when a panic unwinds through the submission.
struct Held<'q> {
    queue: &'q SampleQueue,
    index: Option<u32>,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Some(i) = self.index.take() {
            let pushed = self.queue.free.push(i);
            debug_assert!(pushed.is_ok(), "the free list holds every index");
        }
    }
}

/// Samples taken by a step. Their slots return to the free list when this is dropped, so drop
/// it as soon as the batch is assembled.
pub struct Taken<'q> {
    queue: &'q SampleQueue,
    indices: Vec<u32>,
}

impl Taken<'_> {
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &SlotData> + '_ {
        self.indices.iter().map(|&i| {
            // SAFETY: these indices were popped from the ready queues by `take` and are owned by
            // this value until its drop; only shared references are made.
            unsafe { &*self.queue.slots[i as usize].0.get() }
        })
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        for &i in &self.indices {
            let pushed = self.queue.free.push(i);
            debug_assert!(pushed.is_ok(), "the free list holds every index");
        }
    }
}

impl SampleQueue {
    /// Allocates `capacity` slots for samples of `sizes`.
    pub fn new(capacity: usize, sizes: &SampleSizes, policy: Backpressure) -> Result<Self> {
        if capacity == 0 || capacity > u32::MAX as usize {
            return Err(Error::InvalidArgument(format!(
                "queue capacity {capacity} is out of range"
            )));
        }
        let mut slots = Vec::new();
        slots
            .try_reserve_exact(capacity)
            .map_err(|_| Error::InvalidArgument("cannot allocate the queue".into()))?;
        let free = ArrayQueue::new(capacity);
        for i in 0..capacity {
            slots.push(Slot(UnsafeCell::new(SlotData {
                kind: SampleKind::Clip,
                label: 0.0,
                latent: buffer(sizes.latent)?,
                lose: buffer(sizes.latent)?,
                text: buffer(sizes.text)?,
                image: buffer(sizes.image)?,
            })));
            let pushed = free.push(i as u32);
            debug_assert!(pushed.is_ok());
        }
        Ok(SampleQueue {
            slots: slots.into_boxed_slice(),
            free,
            ready: [ArrayQueue::new(capacity), ArrayQueue::new(capacity)],
            removal: Mutex::new(()),
            policy,
            counters: Counters::default(),
            #[cfg(feature = "test-hooks")]
            recording: AtomicBool::new(false),
            #[cfg(feature = "test-hooks")]
            recorded: Mutex::new(Vec::new()),
        })
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Copies a sample into a slot and queues it (validated lengths; values checked here).
    /// Never blocks on a step and never allocates; counts the outcome.
    pub fn submit(&self, s: &SampleRef<'_>) -> Result<()> {
        let result = self.submit_uncounted(s);
        if let Err(e) = &result {
            self.count_refused(e);
        }
        result
    }

    /// Counts a refused submission (also one refused before it reached
    /// [`SampleQueue::submit`]): a full queue under `rejected_full`, anything else under
    /// `rejected_invalid`.
    pub fn count_refused(&self, e: &Error) {
        let c = &self.counters;
        let refusals = match e {
            Error::QueueFull(_) => &c.rejected_full,
            _ => &c.rejected_invalid,
        };
        refusals.fetch_add(1, SeqCst);
    }

    fn submit_uncounted(&self, s: &SampleRef<'_>) -> Result<()> {
        let (index, prevalidated) = self.acquire(s)?;
        let mut held = Held {
            queue: self,
            index: Some(index),
        };
        // SAFETY: `index` was popped from the free list or a ready queue, so this thread owns
        // the slot exclusively until it pushes the index on (module docs).
        let slot = unsafe { &mut *self.slots[index as usize].0.get() };
        for ((src, what), dst) in parts(s).into_iter().zip([
            &mut slot.latent,
            &mut slot.lose,
            &mut slot.text,
            &mut slot.image,
        ]) {
            if src.is_empty() {
                continue;
            }
            debug_assert_eq!(src.len(), dst.len(), "{what}");
            if copy_finite(dst, src) && !prevalidated {
                return check_finite(src, what); // names the value; `held` frees the slot
            }
        }
        slot.kind = s.kind;
        slot.label = s.label;
        held.index = None;
        // Counted before it becomes visible, so `consumed` never runs ahead of `accepted`.
        self.counters.accepted.fetch_add(1, SeqCst);
        let pushed = self.ready[kind_index(s.kind)].push(index);
        debug_assert!(pushed.is_ok(), "a ready queue holds every index");
        Ok(())
    }

    /// A slot for a new sample: a free one, else (under `DROP_OLDEST`) the oldest queued
    /// sample's. Returns whether the sample was already checked for non-finite values: an
    /// eviction checks first, so that a refused sample never displaces a queued one. (Under
    /// `REJECT_NEWEST` a full queue refuses without reading the data: refusal stays cheap for
    /// producers that retry.)
    fn acquire(&self, s: &SampleRef<'_>) -> Result<(u32, bool)> {
        if let Some(i) = self.free.pop() {
            return Ok((i, false));
        }
        let full = || {
            Error::QueueFull(format!(
                "all {} queue slots are taken (queued or in use by a step)",
                self.capacity()
            ))
        };
        if self.policy == Backpressure::RejectNewest {
            return Err(full());
        }
        for (v, what) in parts(s) {
            check_finite(v, what)?;
        }
        let k = kind_index(s.kind);
        let victim = {
            let _removal = self.removal.lock();
            let victim = self.ready[k].pop().or_else(|| self.ready[1 - k].pop());
            if victim.is_some() {
                // Counted under the lock, with the removal (see `stats`).
                self.counters.dropped_oldest.fetch_add(1, SeqCst);
            }
            victim
        };
        match victim {
            Some(i) => Ok((i, true)),
            // Every slot is being written or read right now; one may have been freed since.
            None => self.free.pop().map(|i| (i, true)).ok_or_else(full),
        }
    }

    /// Samples waiting that a step asking for `want` could take.
    pub fn queued(&self, want: Want) -> usize {
        match want {
            Want::Kind(k) => self.ready[kind_index(k)].len(),
            Want::Any => self.ready[0].len() + self.ready[1].len(),
        }
    }

    /// Takes exactly `n` samples (oldest first), or nothing and the number available.
    pub fn take(&self, want: Want, n: usize) -> std::result::Result<Taken<'_>, usize> {
        let single;
        let order: &[usize] = match want {
            Want::Kind(k) => {
                single = [kind_index(k)];
                &single
            }
            Want::Any => &[1, 0],
        };
        let mut indices = Vec::with_capacity(n);
        {
            let _removal = self.removal.lock();
            let available = self.queued(want);
            if available < n {
                return Err(available);
            }
            for &k in order {
                while indices.len() < n {
                    match self.ready[k].pop() {
                        Some(i) => indices.push(i),
                        None => break,
                    }
                }
            }
            // Counted under the lock, with the removal (see `stats`).
            self.counters
                .consumed
                .fetch_add(indices.len() as u64, SeqCst);
        }
        // Only lock holders remove from the ready queues, so the count checked above was there.
        debug_assert_eq!(indices.len(), n);
        let taken = Taken {
            queue: self,
            indices,
        };
        #[cfg(feature = "test-hooks")]
        if self.recording.load(Relaxed) {
            self.recorded.lock().extend(
                taken
                    .iter()
                    .map(|s| s.latent.first().copied().unwrap_or(f32::NAN)),
            );
        }
        Ok(taken)
    }

    /// A consistent snapshot of the counters (see [`QueueStats`] for what it promises).
    ///
    /// `queued` is derived as `accepted - consumed - dropped_oldest` at the moment `accepted`
    /// is read, between two reads of `consumed` and `dropped_oldest` that agree, so it is
    /// exactly the number of accepted samples not yet taken or dropped at that moment: never
    /// negative (a sample is counted accepted before it is pushed, and taken or dropped after
    /// it is popped) and never above the capacity (each such sample holds a slot). Steps change
    /// `consumed` once per batch, so the lock-free reads rarely need a retry; after
    /// [`STATS_RETRIES`] disagreeing ones the snapshot is taken under the removal lock, which
    /// both removals count under. `submitted` is the sum of its three outcomes.
    pub fn stats(&self) -> QueueStats {
        let c = &self.counters;
        let removed = || (c.consumed.load(SeqCst), c.dropped_oldest.load(SeqCst));
        let mut before = removed();
        let mut tries = 0;
        let (accepted, (consumed, dropped_oldest)) = loop {
            let accepted = c.accepted.load(SeqCst);
            let after = removed();
            if after == before {
                break (accepted, before);
            }
            tries += 1;
            if tries >= STATS_RETRIES {
                // No removal can happen (or be counted) while this is held.
                let _removal = self.removal.lock();
                let frozen = removed();
                break (c.accepted.load(SeqCst), frozen);
            }
            before = after;
        };
        let rejected_full = c.rejected_full.load(SeqCst);
        let rejected_invalid = c.rejected_invalid.load(SeqCst);
        let queued = accepted.saturating_sub(consumed + dropped_oldest);
        QueueStats {
            capacity: self.capacity(),
            queued: usize::try_from(queued).unwrap_or(usize::MAX),
            submitted: accepted + rejected_full + rejected_invalid,
            accepted,
            rejected_full,
            rejected_invalid,
            dropped_oldest,
            consumed,
        }
    }

    /// Test hook: start recording the first latent value of each consumed sample.
    #[cfg(feature = "test-hooks")]
    pub fn record_consumed(&self, on: bool) {
        self.recording.store(on, Relaxed);
    }

    /// Test hook: the values recorded so far (cleared).
    #[cfg(feature = "test-hooks")]
    pub fn take_recorded(&self) -> Vec<f32> {
        std::mem::take(&mut *self.recorded.lock())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes() -> SampleSizes {
        SampleSizes {
            latent_shape: [1, 1, 2, 2],
            latent: 4,
            text_len: 1,
            text_dim: 2,
            text: 2,
            image_len: 0,
            image_dim: 0,
            image: 0,
        }
    }

    fn clip(v: &[f32; 4], text: &[f32; 2]) -> SampleRef<'static> {
        let latent: &'static [f32] = Box::leak(Box::new(*v));
        let text: &'static [f32] = Box::leak(Box::new(*text));
        SampleRef {
            kind: SampleKind::Clip,
            latent,
            lose: &[],
            text,
            image: &[],
            label: 1.0,
        }
    }

    #[test]
    fn fifo_per_kind_and_counters() {
        let q = SampleQueue::new(3, &sizes(), Backpressure::RejectNewest).unwrap();
        for i in 0..3 {
            q.submit(&clip(&[i as f32; 4], &[0.0; 2])).unwrap();
        }
        let e = q.submit(&clip(&[9.0; 4], &[0.0; 2])).unwrap_err();
        assert!(matches!(e, Error::QueueFull(_)), "{e}");
        assert_eq!(q.take(Want::Kind(SampleKind::Pair), 1).err(), Some(0));
        assert_eq!(q.take(Want::Any, 4).err(), Some(3));
        let t = q.take(Want::Kind(SampleKind::Clip), 2).unwrap();
        let firsts: Vec<f32> = t.iter().map(|s| s.latent[0]).collect();
        assert_eq!(firsts, [0.0, 1.0]);
        drop(t);
        let s = q.stats();
        assert_eq!((s.submitted, s.accepted, s.rejected_full), (4, 3, 1));
        assert_eq!((s.consumed, s.queued), (2, 1));
    }

    #[test]
    fn drop_oldest_keeps_newest_and_refuses_nan_without_evicting() {
        let q = SampleQueue::new(2, &sizes(), Backpressure::DropOldest).unwrap();
        for i in 0..5 {
            q.submit(&clip(&[i as f32; 4], &[0.0; 2])).unwrap();
        }
        let e = q
            .submit(&clip(&[1.0, f32::NAN, 0.0, 0.0], &[0.0; 2]))
            .unwrap_err();
        assert!(matches!(e, Error::NonFinite(_)), "{e}");
        assert!(e.to_string().contains("latent[1]"), "{e}");
        let s = q.stats();
        assert_eq!(
            (s.accepted, s.dropped_oldest, s.rejected_invalid),
            (5, 3, 1)
        );
        let t = q.take(Want::Any, 2).unwrap();
        let firsts: Vec<f32> = t.iter().map(|s| s.latent[0]).collect();
        assert_eq!(firsts, [3.0, 4.0]);
    }

    #[test]
    fn streaming_copy_copies_and_finds_non_finite_anywhere() {
        let n = 16 * 1024 + 37; // above the streaming threshold on x86-64
        let src: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 3.0).collect();
        // Every destination alignment, so head, body and tail all run.
        let mut buf = vec![0.0f32; n + 4];
        for off in 0..4 {
            let dst = &mut buf[off..off + n];
            assert!(!copy_finite(dst, &src));
            assert_eq!(dst, &src[..]);
            for bad_at in [0, 1, 5, 4096, n - 1] {
                let mut s = src.clone();
                s[bad_at] = if bad_at % 2 == 0 {
                    f32::NAN
                } else {
                    f32::NEG_INFINITY
                };
                assert!(copy_finite(dst, &s), "offset {off}, bad at {bad_at}");
            }
        }
    }

    #[test]
    fn non_finite_in_a_free_slot_frees_it_again() {
        let q = SampleQueue::new(1, &sizes(), Backpressure::RejectNewest).unwrap();
        let e = q
            .submit(&clip(&[0.0; 4], &[f32::INFINITY, 0.0]))
            .unwrap_err();
        assert!(e.to_string().contains("text[0]"), "{e}");
        q.submit(&clip(&[0.0; 4], &[0.0; 2])).unwrap();
    }
}
