//! [`Cuda`]: the [`Backend`] on one NVIDIA GPU.
//!
//! Every op is enqueued on the backend's single stream and returns without waiting; only
//! `download`, `weight_to_host` and `sum_squares` (which return host values) wait. Element-wise,
//! norm, modulation, RoPE, patch, cast and optimiser ops are the NVRTC-compiled kernels of the
//! per-family launcher files ([`super::elementwise`], [`super::norm`], ... on the registry of
//! [`super::module`]), attention is [`super::attention`], and the dense products are
//! [`super::gemm`] (cuBLASLt). Each op here is one call of its launcher.
//!
//! Failures: the trait has no `Result`, so an error inside an op (a launch failure, running out
//! of device memory, an error left by an earlier asynchronous op) **panics** with a message
//! starting `CUDA:`. Such a failure usually leaves the device's state unknown: the C ABI catches
//! the panic, marks the runtime lost and answers `PRFL_ERR_DEVICE_LOST`; Rust callers may
//! `catch_unwind` likewise and must then drop the backend. Shape errors (a buffer too short)
//! also panic, as on the CPU backend.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};
use half::{bf16, f16};
use parking_lot::Mutex;

use super::context::DeviceContext;
use super::gemm::{Gemm, GemmKernels};
use super::module::Kernels;
use super::types::{CudaBuf, CudaWeight, WeightData};
use super::{no_panic, CudaError, CudaOptions, DeviceInfo, MemoryStats};
use crate::backend::{
    AdamWHyper, AttnShape, Backend, BroadcastShape, GatedAddGrads, LayerNormGrads, LayerNormStats,
    LinearShape, ModShape, ModSlot, ModulateGrads, NormAffine, PatchOrder, PatchShape, Qkv,
    RmsNormGrads, RopeShape, RowShape, ShiftScale,
};
use crate::tensor::{DType, Storage};

/// The CUDA backend on one device. See the module documentation for how failures surface.
pub struct Cuda {
    info: DeviceInfo,
    dev: DeviceContext,
    kernels: Kernels,
    gemm: Mutex<Gemm>,
}

/// Teardown, before the fields drop (in order: the context's staging buffers, the kernels, the
/// GEMM engine): binds the context to this thread, which may be one that never ran an op (a
/// host's `prfl_destroy`), so that freeing the page-locked staging memory and the device
/// buffers finds it; and waits for the stream, so that no copy out of a staging buffer (an
/// upload returns before its last chunk is copied) is still reading it when it is freed. On a
/// lost device both calls fail at once: that is logged, never a panic, and the fields still drop
/// (their frees record errors in the context instead of panicking).
impl Drop for Cuda {
    fn drop(&mut self) {
        if let Err(e) = self.dev.ctx.bind_to_thread() {
            ::log::warn!(
                "CUDA: teardown of {}: binding the context failed: {e}",
                self.info
            );
        }
        if let Err(e) = self.dev.stream.synchronize() {
            ::log::warn!(
                "CUDA: teardown of {}: waiting for the stream failed: {e}",
                self.info
            );
        }
    }
}

/// Panics with the CUDA error of an op (the trait has no `Result`; see the module docs).
#[track_caller]
fn ok<T, E: Into<CudaError>>(what: &str, r: Result<T, E>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("CUDA: {what} failed: {}", e.into()),
    }
}

/// The kernels the GEMMs use (bf16 activation copies, f16 weight widening, the bias gradient).
impl GemmKernels for Kernels {
    fn to_bf16(&self, src: &CudaBuf, dst: &mut CudaSlice<u16>) -> Result<(), CudaError> {
        Ok(self.cast_f32_to_bf16(src, dst)?)
    }
    fn weight_to_f32(&self, w: &CudaWeight, dst: &mut CudaBuf) -> Result<(), CudaError> {
        Ok(self.weight_to_buf(w, dst)?)
    }
    fn sum_rows_accumulate(
        &self,
        x: &CudaBuf,
        rows: usize,
        d: usize,
        out: &mut CudaBuf,
    ) -> Result<(), CudaError> {
        Ok(Kernels::sum_rows_accumulate(self, x, rows, d, out)?)
    }
}

impl Cuda {
    /// Opens device `index`: checks the libraries and the device ([`super::probe`]), creates the
    /// context and stream, compiles the kernels for the device's architecture with NVRTC, and
    /// creates the cuBLASLt handle and workspace. Never panics.
    pub fn open(index: usize, opts: &CudaOptions) -> Result<Cuda, CudaError> {
        let devices = super::probe(opts)?;
        let info = devices.get(index).cloned().ok_or(CudaError::BadIndex {
            index,
            count: devices.len(),
        })?;
        let (major, minor) = info.compute_capability;
        if major < 8 {
            return Err(CudaError::Unsupported {
                device: info.name.clone(),
                major,
                minor,
            });
        }
        no_panic("opening the CUDA device", || {
            let dev = DeviceContext::new(index)?;
            let kernels =
                Kernels::load(&dev.stream, info.compute_capability).map_err(CudaError::Compile)?;
            let gemm = Gemm::new(dev.stream.clone(), major)?;
            dev.synchronize()?;
            ::log::info!("CUDA backend on {info}");
            Ok(Cuda {
                info,
                dev,
                kernels,
                gemm: Mutex::new(gemm),
            })
        })
    }

    /// The device this backend runs on.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// Waits for every op enqueued so far; an asynchronous failure of one of them is reported
    /// here.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.dev.synchronize()
    }

    /// Device memory allocated through this backend: now, at peak, and held by the allocator.
    /// (The statistics of the device's memory pool: see [`super::context`].) Zeros if the driver
    /// cannot be asked.
    pub fn memory(&self) -> MemoryStats {
        self.dev.memory().unwrap_or_default()
    }

    /// Starts a new peak-memory measurement at the current allocation.
    pub fn reset_peak_memory(&self) -> Result<(), CudaError> {
        self.dev.reset_peak()
    }

    /// The compiled kernels (for tests and benchmarks that call a launcher directly).
    pub fn kernels(&self) -> &Kernels {
        &self.kernels
    }

    /// The stream every op is enqueued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.dev.stream
    }

    fn s(&self) -> &Arc<CudaStream> {
        &self.dev.stream
    }

    fn upload_u16(&self, bits: &[u16]) -> CudaSlice<u16> {
        ok("weight upload", self.dev.upload(bits))
    }
}

impl Backend for Cuda {
    type Buf = CudaBuf;
    type Weight = CudaWeight;

    fn name(&self) -> String {
        format!(
            "cuda:{} ({}, sm_{}{})",
            self.info.index,
            self.info.name,
            self.info.compute_capability.0,
            self.info.compute_capability.1
        )
    }

    // ---------------------------------------------------------------- memory
    fn zeros(&self, n: usize) -> CudaBuf {
        ok("zeros", self.dev.zeros::<f32>(n))
    }
    fn upload(&self, data: &[f32]) -> CudaBuf {
        ok("upload", self.dev.upload(data))
    }
    fn download(&self, buf: &CudaBuf) -> Vec<f32> {
        ok("download", self.dev.download(buf))
    }
    fn len(&self, buf: &CudaBuf) -> usize {
        buf.len()
    }
    fn fill_zero(&self, buf: &mut CudaBuf) {
        if !buf.is_empty() {
            ok("fill_zero", self.s().memset_zeros(buf));
        }
    }
    fn copy_range(
        &self,
        src: &CudaBuf,
        src_off: usize,
        dst: &mut CudaBuf,
        dst_off: usize,
        n: usize,
    ) {
        ok(
            "copy_range",
            self.kernels.copy_range(src, src_off, dst, dst_off, n),
        );
    }
    fn weight_from_host(&self, data: &Storage, rows: usize, cols: usize) -> CudaWeight {
        assert_eq!(
            data.len(),
            rows * cols,
            "weight data does not match [{rows}, {cols}]"
        );
        let data = match data {
            Storage::F32(v) => WeightData::F32(self.upload(v)),
            // The 16-bit types are their bit patterns (`half` is `repr(transparent)` over u16).
            Storage::BF16(v) => WeightData::Bf16(self.upload_u16(bytemuck::cast_slice(v))),
            Storage::F16(v) => WeightData::F16(self.upload_u16(bytemuck::cast_slice(v))),
        };
        CudaWeight { data, rows, cols }
    }
    fn weight_to_host(&self, w: &CudaWeight) -> Storage {
        match &w.data {
            WeightData::F32(s) => Storage::F32(self.download(s)),
            WeightData::Bf16(s) => Storage::BF16(
                ok("weight download", self.dev.download(s))
                    .into_iter()
                    .map(bf16::from_bits)
                    .collect(),
            ),
            WeightData::F16(s) => Storage::F16(
                ok("weight download", self.dev.download(s))
                    .into_iter()
                    .map(f16::from_bits)
                    .collect(),
            ),
        }
    }
    fn weight_dtype(&self, w: &CudaWeight) -> DType {
        match w.data {
            WeightData::F32(_) => DType::F32,
            WeightData::Bf16(_) => DType::BF16,
            WeightData::F16(_) => DType::F16,
        }
    }
    fn weight_dims(&self, w: &CudaWeight) -> (usize, usize) {
        (w.rows, w.cols)
    }

    // ---------------------------------------------------------------- elementwise
    fn add_assign(&self, y: &mut CudaBuf, x: &CudaBuf) {
        self.axpy(1.0, x, y);
    }
    fn axpy(&self, alpha: f32, x: &CudaBuf, y: &mut CudaBuf) {
        ok("axpy", self.kernels.axpy(alpha, x, y));
    }
    fn scale(&self, alpha: f32, x: &mut CudaBuf) {
        ok("scale", self.kernels.scale(alpha, x));
    }
    fn broadcast_add(
        &self,
        x: &CudaBuf,
        table: &CudaBuf,
        shape: BroadcastShape,
        out: &mut CudaBuf,
    ) {
        ok(
            "broadcast_add",
            self.kernels.broadcast_add(x, table, shape, out),
        );
    }
    fn broadcast_add_backward(
        &self,
        dout: &CudaBuf,
        shape: BroadcastShape,
        dx: &mut CudaBuf,
        dtable: &mut CudaBuf,
    ) {
        ok(
            "broadcast_add_backward",
            self.kernels.broadcast_add_backward(dout, shape, dx, dtable),
        );
    }
    fn silu_forward(&self, x: &CudaBuf, y: &mut CudaBuf) {
        ok("silu_forward", self.kernels.silu_forward(x, y));
    }
    fn silu_backward(&self, x: &CudaBuf, dy: &CudaBuf, dx: &mut CudaBuf) {
        ok("silu_backward", self.kernels.silu_backward(x, dy, dx));
    }
    fn gelu_tanh_forward(&self, x: &CudaBuf, y: &mut CudaBuf) {
        ok("gelu_tanh_forward", self.kernels.gelu_tanh_forward(x, y));
    }
    fn gelu_tanh_backward(&self, x: &CudaBuf, dy: &CudaBuf, dx: &mut CudaBuf) {
        ok(
            "gelu_tanh_backward",
            self.kernels.gelu_tanh_backward(x, dy, dx),
        );
    }
    fn gelu_erf_forward(&self, x: &CudaBuf, y: &mut CudaBuf) {
        ok("gelu_erf_forward", self.kernels.gelu_erf_forward(x, y));
    }
    fn gelu_erf_backward(&self, x: &CudaBuf, dy: &CudaBuf, dx: &mut CudaBuf) {
        ok(
            "gelu_erf_backward",
            self.kernels.gelu_erf_backward(x, dy, dx),
        );
    }
    fn relu_forward(&self, x: &CudaBuf, y: &mut CudaBuf) {
        ok("relu_forward", self.kernels.relu_forward(x, y));
    }
    fn relu_backward(&self, x: &CudaBuf, dy: &CudaBuf, dx: &mut CudaBuf) {
        ok("relu_backward", self.kernels.relu_backward(x, dy, dx));
    }

    // ---------------------------------------------------------------- reductions
    fn sum_squares(&self, x: &CudaBuf) -> f64 {
        ok("sum_squares", self.kernels.sum_squares(x))
    }
    fn sum_squares_each(&self, xs: &[&CudaBuf]) -> Vec<f64> {
        let all = || -> Result<Vec<f64>, cudarc::driver::DriverError> {
            if xs.is_empty() {
                return Ok(Vec::new());
            }
            // Zero-filled: an empty buffer's slot stays 0 (its sum is never enqueued).
            let mut out = self.s().alloc_zeros::<f64>(xs.len())?;
            for (slot, x) in xs.iter().enumerate() {
                if !x.is_empty() {
                    self.kernels.sum_squares_into(x, &mut out, slot)?;
                }
            }
            self.s().clone_dtoh(&out)
        };
        ok("sum_squares_each", all())
    }

    // ---------------------------------------------------------------- optimiser
    fn adamw_update(
        &self,
        param: &mut CudaBuf,
        grad: &CudaBuf,
        m: &mut CudaBuf,
        v: &mut CudaBuf,
        h: &AdamWHyper,
    ) {
        ok(
            "adamw_update",
            self.kernels.adamw_update(param, grad, m, v, h),
        );
    }
    fn weight_assign(&self, w: &mut CudaWeight, master: &CudaBuf) {
        assert_eq!(
            master.len(),
            w.rows * w.cols,
            "master copy does not match the weight"
        );
        ok("weight_assign", self.kernels.weight_assign(w, master));
    }
    fn weight_to_buf(&self, w: &CudaWeight) -> CudaBuf {
        // SAFETY: fully overwritten by the copy or cast.
        let mut out = ok("weight_to_buf", unsafe {
            self.dev.alloc::<f32>(w.rows * w.cols)
        });
        ok("weight_to_buf", self.kernels.weight_to_buf(w, &mut out));
        out
    }

    // ---------------------------------------------------------------- linear algebra
    fn linear_forward(
        &self,
        x: &CudaBuf,
        n: usize,
        w: &CudaWeight,
        b: Option<&CudaBuf>,
        y: &mut CudaBuf,
    ) {
        ok(
            "linear_forward",
            self.gemm
                .lock()
                .linear_forward(&self.kernels, x, n, w, b, y),
        );
    }
    fn linear_backward_input(&self, dy: &CudaBuf, n: usize, w: &CudaWeight, dx: &mut CudaBuf) {
        ok(
            "linear_backward_input",
            self.gemm
                .lock()
                .linear_backward_input(&self.kernels, dy, n, w, dx),
        );
    }
    fn linear_backward_weight(
        &self,
        dy: &CudaBuf,
        x: &CudaBuf,
        shape: LinearShape,
        dw: &mut CudaBuf,
        db: Option<&mut CudaBuf>,
    ) {
        ok(
            "linear_backward_weight",
            self.gemm
                .lock()
                .linear_backward_weight(&self.kernels, dy, x, shape, dw, db),
        );
    }

    // ---------------------------------------------------------------- normalisation
    fn layernorm_forward(
        &self,
        x: &CudaBuf,
        shape: RowShape,
        affine: NormAffine<&CudaBuf>,
        eps: f32,
        y: &mut CudaBuf,
        stats: LayerNormStats<&mut CudaBuf>,
    ) {
        ok(
            "layernorm_forward",
            self.kernels
                .layernorm_forward(x, shape, affine, eps, y, stats),
        );
    }
    fn layernorm_backward(
        &self,
        dy: &CudaBuf,
        x: &CudaBuf,
        shape: RowShape,
        weight: Option<&CudaBuf>,
        stats: LayerNormStats<&CudaBuf>,
        grads: LayerNormGrads<&mut CudaBuf>,
    ) {
        ok(
            "layernorm_backward",
            self.kernels
                .layernorm_backward(dy, x, shape, weight, stats, grads),
        );
    }
    fn rmsnorm_forward(
        &self,
        x: &CudaBuf,
        shape: RowShape,
        weight: &CudaBuf,
        eps: f32,
        y: &mut CudaBuf,
        rstd: &mut CudaBuf,
    ) {
        ok(
            "rmsnorm_forward",
            self.kernels.rmsnorm_forward(x, shape, weight, eps, y, rstd),
        );
    }
    fn rmsnorm_backward(
        &self,
        dy: &CudaBuf,
        x: &CudaBuf,
        shape: RowShape,
        weight: &CudaBuf,
        rstd: &CudaBuf,
        grads: RmsNormGrads<&mut CudaBuf>,
    ) {
        ok(
            "rmsnorm_backward",
            self.kernels
                .rmsnorm_backward(dy, x, shape, weight, rstd, grads),
        );
    }

    // ---------------------------------------------------------------- adaptive modulation
    fn modulate_forward(
        &self,
        x: &CudaBuf,
        shape: ModShape,
        mods: &CudaBuf,
        slots: ShiftScale,
        y: &mut CudaBuf,
    ) {
        ok(
            "modulate_forward",
            self.kernels.modulate_forward(x, shape, mods, slots, y),
        );
    }
    fn modulate_backward(
        &self,
        dy: &CudaBuf,
        x: &CudaBuf,
        shape: ModShape,
        mods: &CudaBuf,
        slots: ShiftScale,
        grads: ModulateGrads<&mut CudaBuf>,
    ) {
        ok(
            "modulate_backward",
            self.kernels
                .modulate_backward(dy, x, shape, mods, slots, grads),
        );
    }
    fn gated_add_forward(
        &self,
        x: &mut CudaBuf,
        y: &CudaBuf,
        shape: ModShape,
        mods: &CudaBuf,
        gate: ModSlot,
    ) {
        ok(
            "gated_add_forward",
            self.kernels.gated_add_forward(x, y, shape, mods, gate),
        );
    }
    fn gated_add_backward(
        &self,
        dx: &CudaBuf,
        y: &CudaBuf,
        shape: ModShape,
        mods: &CudaBuf,
        gate: ModSlot,
        grads: GatedAddGrads<&mut CudaBuf>,
    ) {
        ok(
            "gated_add_backward",
            self.kernels
                .gated_add_backward(dx, y, shape, mods, gate, grads),
        );
    }

    // ---------------------------------------------------------------- rotary embedding
    fn rope(&self, x: &mut CudaBuf, shape: RopeShape, cos: &CudaBuf, sin: &CudaBuf, inverse: bool) {
        ok("rope", self.kernels.rope(x, shape, cos, sin, inverse));
    }

    // ---------------------------------------------------------------- attention
    fn attention_forward(
        &self,
        qkv: Qkv<&CudaBuf>,
        shape: AttnShape,
        out: &mut CudaBuf,
        lse: &mut CudaBuf,
    ) {
        ok(
            "attention_forward",
            self.kernels.attention_forward(qkv, shape, out, lse),
        );
    }
    fn attention_backward(
        &self,
        qkv: Qkv<&CudaBuf>,
        out: &CudaBuf,
        lse: &CudaBuf,
        dout: &CudaBuf,
        shape: AttnShape,
        dqkv: Qkv<&mut CudaBuf>,
    ) {
        ok(
            "attention_backward",
            self.kernels
                .attention_backward(qkv, out, lse, dout, shape, dqkv),
        );
    }

    // ---------------------------------------------------------------- (un)patchify
    fn patchify(&self, x: &CudaBuf, shape: PatchShape, order: PatchOrder, tokens: &mut CudaBuf) {
        ok("patchify", self.kernels.patchify(x, shape, order, tokens));
    }
    fn unpatchify(&self, tokens: &CudaBuf, shape: PatchShape, order: PatchOrder, x: &mut CudaBuf) {
        ok(
            "unpatchify",
            self.kernels.unpatchify(tokens, shape, order, x),
        );
    }
}
