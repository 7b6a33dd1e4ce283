//! One device's context, the single stream every op of the backend is enqueued on, and the
//! memory accounting.
//!
//! One stream: ops run in the order they are issued, so no event tracking is needed (it is
//! turned off: cudarc would otherwise record two events per buffer use). Buffers are allocated
//! and freed stream-ordered (`cuMemAllocAsync` / `cuMemFreeAsync`) from the device's default
//! memory pool, which is told to keep freed memory cached (release threshold = max), as
//! PyTorch's caching allocator does: a training step reallocates the same sizes every time.
//!
//! Memory statistics come from that pool (`USED_MEM_CURRENT` / `USED_MEM_HIGH`): every byte
//! this backend allocates, buffers, weights, scratch and the cuBLASLt workspace. The pool is
//! the device's, so two backends on one device in one process see each other's allocations.
//! Without memory pools (rare: some Windows display drivers) the driver's used-memory figure is
//! sampled instead.
//!
//! Uploads of 256 KiB or more (latents and text from the submission queue, weights) go through
//! two page-locked, write-combined staging buffers of 8 MiB, used in turn: the host copies a
//! chunk into one while the device copies the previous chunk out of the other, and the upload
//! returns once the last chunk is queued, without waiting for the device. A copy from pageable
//! memory would instead be staged by the driver and block the calling thread. If page-locked
//! memory cannot be allocated, or `PRFL_CUDA_PINNED=0`, uploads stay pageable.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use cudarc::driver::result as dr;
use cudarc::driver::sys as ds;
use cudarc::driver::{
    CudaContext, CudaEvent, CudaSlice, CudaStream, DevicePtrMut, DeviceRepr, PinnedHostSlice,
};
use parking_lot::Mutex;

use super::{CudaError, MemoryStats};

struct Pool(ds::CUmemoryPool);
// SAFETY: a memory-pool handle may be used from any thread (the driver synchronises).
unsafe impl Send for Pool {}
unsafe impl Sync for Pool {}

impl Pool {
    fn get(&self, attr: ds::CUmemPool_attribute) -> Result<u64, CudaError> {
        let mut v = 0u64;
        // SAFETY: these attributes are cuuint64_t values.
        unsafe { ds::cuMemPoolGetAttribute(self.0, attr, (&mut v as *mut u64).cast()) }.result()?;
        Ok(v)
    }
    fn set(&self, attr: ds::CUmemPool_attribute, mut v: u64) -> Result<(), CudaError> {
        // SAFETY: as above.
        unsafe { ds::cuMemPoolSetAttribute(self.0, attr, (&mut v as *mut u64).cast()) }.result()?;
        Ok(())
    }
}

/// Uploads of at least this many bytes go through the page-locked staging buffers.
const PINNED_MIN_BYTES: usize = 256 << 10;
/// Size of each staging buffer.
const STAGE_BYTES: usize = 8 << 20;
/// Number of staging buffers (filled in turn, so the host fills one while the device drains
/// another).
const STAGES: usize = 2;

/// One page-locked staging buffer and the event that marks the end of the last device copy out
/// of it.
struct Stage {
    host: PinnedHostSlice<u8>,
    drained: CudaEvent,
}

/// The staging buffers: not yet allocated, allocated, or unavailable (pageable uploads).
enum Staging {
    Unallocated,
    Ready(Vec<Stage>),
    Disabled,
}

/// A device context with its stream.
pub struct DeviceContext {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pool: Option<Pool>,
    /// Without a pool: device memory in use when the backend opened, and the peak seen since.
    baseline: usize,
    peak: AtomicUsize,
    staging: Mutex<Staging>,
}

impl DeviceContext {
    /// Retains device `index`'s primary context and creates the stream. The libraries must have
    /// been checked ([`super::probe`]) first.
    pub fn new(index: usize) -> Result<DeviceContext, CudaError> {
        let ctx = CudaContext::new(index)?;
        // Waiting for the device (downloads, synchronize) sleeps on an interrupt instead of
        // spinning: the default spin burns a core on the trainer's thread for the whole of a
        // step, next to the host threads of the C ABI and the data loading. Costs a few
        // microseconds of wake-up per wait, once or twice a step. Not fatal if refused.
        if let Err(e) = ctx.set_blocking_synchronize() {
            ::log::warn!("CUDA: blocking synchronisation refused ({e}); waits spin");
        }
        // SAFETY: one stream, so nothing needs cross-stream synchronisation; no buffer exists
        // yet on this context from this backend.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream()?;
        let pool = if ctx.has_async_alloc() {
            // SAFETY: the device of a live context.
            let pool = Pool(unsafe { dr::device::get_default_mem_pool(ctx.cu_device()) }?);
            pool.set(
                ds::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                u64::MAX,
            )?;
            pool.set(ds::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH, 0)?;
            pool.set(
                ds::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH,
                0,
            )?;
            Some(pool)
        } else {
            None
        };
        let baseline = match pool {
            Some(_) => 0,
            None => {
                let (free, total) = ctx.mem_get_info()?;
                total - free
            }
        };
        Ok(DeviceContext {
            ctx,
            stream,
            pool,
            baseline,
            peak: AtomicUsize::new(0),
            staging: Mutex::new(
                if std::env::var("PRFL_CUDA_PINNED").is_ok_and(|v| v.trim() == "0") {
                    Staging::Disabled
                } else {
                    Staging::Unallocated
                },
            ),
        })
    }

    /// Bytes allocated now, at peak, and held by the allocator.
    pub fn memory(&self) -> Result<MemoryStats, CudaError> {
        use ds::CUmemPool_attribute as A;
        match &self.pool {
            Some(p) => Ok(MemoryStats {
                current: p.get(A::CU_MEMPOOL_ATTR_USED_MEM_CURRENT)? as usize,
                peak: p.get(A::CU_MEMPOOL_ATTR_USED_MEM_HIGH)? as usize,
                reserved: p.get(A::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT)? as usize,
            }),
            None => {
                let current = self.sample_used()?;
                Ok(MemoryStats {
                    current,
                    peak: self.peak.load(Ordering::Relaxed).max(current),
                    reserved: current,
                })
            }
        }
    }

    /// Starts a new peak measurement from the current allocation.
    pub fn reset_peak(&self) -> Result<(), CudaError> {
        match &self.pool {
            Some(p) => p.set(ds::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH, 0),
            None => {
                self.peak.store(self.sample_used()?, Ordering::Relaxed);
                Ok(())
            }
        }
    }

    /// Without a pool: the driver's used memory above the baseline, recorded into the peak.
    fn sample_used(&self) -> Result<usize, CudaError> {
        self.ctx.bind_to_thread()?;
        let (free, total) = dr::mem_get_info()?;
        let used = (total - free).saturating_sub(self.baseline);
        self.peak.fetch_max(used, Ordering::Relaxed);
        Ok(used)
    }

    /// An uninitialised buffer of `n` elements. `n = 0` gives an empty buffer backed by a
    /// one-element allocation (the driver refuses zero-byte allocations).
    ///
    /// # Safety
    /// The contents are undefined until written.
    pub unsafe fn alloc<T: DeviceRepr>(&self, n: usize) -> Result<CudaSlice<T>, CudaError> {
        let s = if n == 0 {
            // SAFETY: an allocation of one element, re-wrapped with length 0 (freed on drop).
            unsafe {
                let one = self.stream.alloc::<T>(1)?;
                let p = one.leak();
                self.stream.upgrade_device_ptr::<T>(p, 0)
            }
        } else {
            // SAFETY: per this function's contract.
            unsafe { self.stream.alloc::<T>(n) }?
        };
        if self.pool.is_none() {
            self.sample_used()?;
        }
        Ok(s)
    }

    /// A zero-filled buffer of `n` elements.
    pub fn zeros<T: DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        &self,
        n: usize,
    ) -> Result<CudaSlice<T>, CudaError> {
        // SAFETY: zero-filled right below.
        let mut s = unsafe { self.alloc::<T>(n) }?;
        if n > 0 {
            self.stream.memset_zeros(&mut s)?;
        }
        Ok(s)
    }

    /// A buffer holding `data` (large uploads through the staging buffers; see the module doc).
    pub fn upload<T: DeviceRepr>(&self, data: &[T]) -> Result<CudaSlice<T>, CudaError> {
        // SAFETY: fully written right below.
        let mut s = unsafe { self.alloc::<T>(data.len()) }?;
        if data.is_empty() {
            return Ok(s);
        }
        let bytes = std::mem::size_of_val(data);
        if bytes >= PINNED_MIN_BYTES {
            // SAFETY: device-representable types are plain data, so their memory is initialised
            // bytes; the view lives no longer than `data`.
            let raw = unsafe { std::slice::from_raw_parts(data.as_ptr().cast::<u8>(), bytes) };
            if self.upload_staged(raw, &mut s)? {
                return Ok(s);
            }
        }
        self.stream.memcpy_htod(data, &mut s)?;
        Ok(s)
    }

    /// Copies `raw` into `dst` chunk by chunk through the staging buffers; `false` when they
    /// are unavailable (the caller copies from pageable memory instead).
    fn upload_staged<T: DeviceRepr>(
        &self,
        raw: &[u8],
        dst: &mut CudaSlice<T>,
    ) -> Result<bool, CudaError> {
        let mut staging = self.staging.lock();
        if let Staging::Unallocated = *staging {
            *staging = self.allocate_staging();
        }
        let Staging::Ready(stages) = &mut *staging else {
            return Ok(false);
        };
        self.ctx.bind_to_thread()?;
        let (base, _record) = dst.device_ptr_mut(&self.stream);
        for (i, chunk) in raw.chunks(STAGE_BYTES).enumerate() {
            let stage = &mut stages[i % STAGES];
            // The device copy that last read this buffer must finish before it is overwritten
            // (an event never recorded counts as finished).
            stage.drained.synchronize()?;
            let host = stage.host.as_mut_slice()?;
            host[..chunk.len()].copy_from_slice(chunk);
            // SAFETY: `dst` holds `raw.len()` bytes from `base`, so this chunk's range is inside
            // it; the staging memory stays untouched until `drained` says the copy is done.
            unsafe {
                dr::memcpy_htod_async(
                    base + (i * STAGE_BYTES) as u64,
                    &host[..chunk.len()],
                    self.stream.cu_stream(),
                )
            }?;
            stage.drained.record(&self.stream)?;
        }
        Ok(true)
    }

    fn allocate_staging(&self) -> Staging {
        let stage = || -> Result<Stage, CudaError> {
            Ok(Stage {
                // SAFETY: page-locked host memory, written before every device read.
                host: unsafe { self.ctx.alloc_pinned::<u8>(STAGE_BYTES) }?,
                drained: self.ctx.new_event(None)?,
            })
        };
        match (0..STAGES).map(|_| stage()).collect::<Result<Vec<_>, _>>() {
            Ok(stages) => Staging::Ready(stages),
            Err(e) => {
                ::log::warn!("CUDA: no page-locked staging memory ({e}); uploads stay pageable");
                Staging::Disabled
            }
        }
    }

    /// The contents of `src` (waits for the stream).
    pub fn download<T: DeviceRepr + Default + Clone>(
        &self,
        src: &CudaSlice<T>,
    ) -> Result<Vec<T>, CudaError> {
        if src.is_empty() {
            return Ok(Vec::new());
        }
        let mut out = vec![T::default(); src.len()];
        self.stream.memcpy_dtoh(src, &mut out)?;
        self.stream.synchronize()?;
        Ok(out)
    }

    /// Waits for everything enqueued so far; reports an error recorded by an earlier op.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.ctx.bind_to_thread()?;
        self.stream.synchronize()?;
        self.ctx.check_err()?;
        Ok(())
    }
}
