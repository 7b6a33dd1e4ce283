//! Choosing the device at run time: [`DeviceSpec`] (`cpu`, `cuda`, `cuda:N`, `auto`) and
//! [`Device`], a [`Backend`] that is either the CPU or a CUDA backend and dispatches every op.
//!
//! Buffers and weights carry their device ([`DeviceBuf`], [`DeviceWeight`]); handing a buffer of
//! one device to the other is a bug and panics with a message saying so.

use std::fmt;
use std::str::FromStr;

use super::cpu::{Cpu, CpuWeight};
use super::cuda::types::{CudaBuf, CudaWeight};
use super::cuda::{Cuda, CudaError, CudaOptions};
use super::{
    AdamWHyper, AttnShape, Backend, BroadcastShape, GatedAddGrads, LayerNormGrads, LayerNormStats,
    LinearShape, ModShape, ModSlot, ModulateGrads, NormAffine, PatchOrder, PatchShape, Qkv,
    RmsNormGrads, RopeShape, RowShape, ShiftScale,
};
use crate::tensor::{DType, Storage};

/// Which device to compute on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    /// CUDA device `N` (`cuda:N`; `cuda` alone is `cuda:0`).
    Cuda(usize),
    /// The first CUDA device when one is usable, else the CPU.
    #[default]
    Auto,
}

impl FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "auto" => Ok(DeviceSpec::Auto),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            _ => {
                let idx = t
                    .strip_prefix("cuda:")
                    .or_else(|| t.strip_prefix("gpu:"))
                    .ok_or_else(|| {
                        format!("unknown device {s:?}: expected cpu, cuda, cuda:N or auto")
                    })?;
                idx.parse::<usize>().map(DeviceSpec::Cuda).map_err(|_| {
                    format!("unknown device {s:?}: the index in cuda:N must be a number")
                })
            }
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
            DeviceSpec::Auto => f.write_str("auto"),
        }
    }
}

/// The backend chosen at run time.
pub enum Device {
    Cpu(Cpu),
    Cuda(Box<Cuda>),
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu(_) => f.write_str("Device::Cpu"),
            Device::Cuda(c) => write!(f, "Device::Cuda({})", c.info()),
        }
    }
}

impl Device {
    /// Opens the device `spec` names.
    ///
    /// - `cpu`: always succeeds.
    /// - `cuda:N`: the CUDA backend on device `N`; when CUDA cannot be used (libraries, driver,
    ///   device, kernel compilation), the error, or with `cpu_fallback` the CPU (logged at warn
    ///   level with the reason).
    /// - `auto`: the first CUDA device of compute capability 8.0 or newer when
    ///   [`super::cuda::probe`] finds one, else the CPU (logged at info level). A device that
    ///   probes fine but then fails to open (driver error, kernel compilation) is reported as an
    ///   error unless `cpu_fallback`: a broken installation should not silently run 100x slower.
    ///
    /// Never panics.
    pub fn open(
        spec: DeviceSpec,
        opts: &CudaOptions,
        cpu_fallback: bool,
    ) -> Result<Device, CudaError> {
        match spec {
            DeviceSpec::Cpu => Ok(Device::Cpu(Cpu)),
            DeviceSpec::Cuda(index) => match Cuda::open(index, opts) {
                Ok(c) => Ok(Device::Cuda(Box::new(c))),
                Err(e) if cpu_fallback => {
                    ::log::warn!("cuda:{index} unavailable ({e}); computing on the CPU instead");
                    Ok(Device::Cpu(Cpu))
                }
                Err(e) => Err(e),
            },
            DeviceSpec::Auto => match super::cuda::probe(opts) {
                Ok(devices) => match devices.iter().find(|d| d.compute_capability.0 >= 8) {
                    Some(d) => Device::open(DeviceSpec::Cuda(d.index), opts, cpu_fallback),
                    None => {
                        ::log::info!(
                            "device auto: no CUDA device of compute capability 8.0 or newer \
                             ({}); computing on the CPU",
                            devices
                                .iter()
                                .map(|d| d.to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        );
                        Ok(Device::Cpu(Cpu))
                    }
                },
                Err(e) => {
                    ::log::info!("device auto: no usable CUDA ({e}); computing on the CPU");
                    Ok(Device::Cpu(Cpu))
                }
            },
        }
    }

    pub fn is_cuda(&self) -> bool {
        matches!(self, Device::Cuda(_))
    }

    /// The CUDA backend, if that is what this is.
    pub fn cuda(&self) -> Option<&Cuda> {
        match self {
            Device::Cuda(c) => Some(c),
            Device::Cpu(_) => None,
        }
    }

    /// The spec that reopens this device (`cpu` or `cuda:N`).
    pub fn spec(&self) -> DeviceSpec {
        match self {
            Device::Cpu(_) => DeviceSpec::Cpu,
            Device::Cuda(c) => DeviceSpec::Cuda(c.info().index),
        }
    }

    /// Waits for the device's queued work (nothing to wait for on the CPU).
    pub fn synchronize(&self) -> Result<(), CudaError> {
        match self {
            Device::Cpu(_) => Ok(()),
            Device::Cuda(c) => c.synchronize(),
        }
    }
}

/// A buffer of a [`Device`].
pub enum DeviceBuf {
    Cpu(Vec<f32>),
    Cuda(CudaBuf),
}

/// cudarc frees device memory on drop without making the buffer's context current first. A
/// buffer or weight may be dropped on a thread that never ran an op (a host destroying the
/// runtime from another thread): bind the context before the inner drop runs, so that the free
/// is not issued against a thread with no (or another) current context.
fn bind_for_drop(ctx: &std::sync::Arc<cudarc::driver::CudaContext>) {
    if let Err(e) = ctx.bind_to_thread() {
        ::log::warn!("CUDA: could not bind the context to free a buffer: {e}");
    }
}

impl Drop for DeviceBuf {
    fn drop(&mut self) {
        if let DeviceBuf::Cuda(b) = self {
            bind_for_drop(b.context());
        }
    }
}

impl Drop for DeviceWeight {
    fn drop(&mut self) {
        if let DeviceWeight::Cuda(w) = self {
            use super::cuda::types::WeightData;
            match &w.data {
                WeightData::F32(d) => bind_for_drop(d.context()),
                WeightData::Bf16(d) | WeightData::F16(d) => bind_for_drop(d.context()),
            }
        }
    }
}

/// A matrix weight of a [`Device`].
pub enum DeviceWeight {
    Cpu(CpuWeight),
    Cuda(CudaWeight),
}

#[cold]
#[inline(never)]
fn mismatch(expect: &str) -> ! {
    panic!("a buffer of the other device was passed to the {expect} backend (a bug in the caller)")
}

/// An argument of a [`Device`] op as the CPU or the CUDA backend takes it: a buffer or weight is
/// unwrapped to that device's own type (one of the other device panics, naming the bug), an
/// argument group is unwrapped field by field, and everything else passes through unchanged.
/// This is what lets `dispatch!` forward any op in one line.
trait DeviceArg {
    type Cpu;
    type Cuda;
    fn cpu(self) -> Self::Cpu;
    fn cuda(self) -> Self::Cuda;
}

/// A reference to a [`DeviceBuf`] or [`DeviceWeight`] (shared or `mut`): the device's own
/// variant inside, or the mismatch panic.
macro_rules! own_variant {
    ($enum:ident $(, $m:tt)?: $cpu:ty, $cuda:ty) => {
        impl<'a> DeviceArg for &'a $($m)? $enum {
            type Cpu = &'a $($m)? $cpu;
            type Cuda = &'a $($m)? $cuda;
            fn cpu(self) -> Self::Cpu {
                match self {
                    $enum::Cpu(v) => v,
                    $enum::Cuda(_) => mismatch("CPU"),
                }
            }
            fn cuda(self) -> Self::Cuda {
                match self {
                    $enum::Cuda(v) => v,
                    $enum::Cpu(_) => mismatch("CUDA"),
                }
            }
        }
    };
}
own_variant!(DeviceBuf: Vec<f32>, CudaBuf);
own_variant!(DeviceBuf, mut: Vec<f32>, CudaBuf);
own_variant!(DeviceWeight: CpuWeight, CudaWeight);
own_variant!(DeviceWeight, mut: CpuWeight, CudaWeight);

impl<T: DeviceArg> DeviceArg for Option<T> {
    type Cpu = Option<T::Cpu>;
    type Cuda = Option<T::Cuda>;
    fn cpu(self) -> Self::Cpu {
        self.map(T::cpu)
    }
    fn cuda(self) -> Self::Cuda {
        self.map(T::cuda)
    }
}

/// Arguments that hold no buffer: the same value for either backend.
macro_rules! same_on_both {
    ($($t:ty),* $(,)?) => {
        $(impl DeviceArg for $t {
            type Cpu = $t;
            type Cuda = $t;
            fn cpu(self) -> $t {
                self
            }
            fn cuda(self) -> $t {
                self
            }
        })*
    };
}
same_on_both!(
    usize,
    f32,
    bool,
    ModSlot,
    ShiftScale,
    PatchOrder,
    AttnShape,
    BroadcastShape,
    LinearShape,
    ModShape,
    PatchShape,
    RopeShape,
    RowShape,
);

/// Buffer groups: each field unwrapped (their `map`).
macro_rules! field_by_field {
    ($($group:ident),* $(,)?) => {
        $(impl<T: DeviceArg> DeviceArg for $group<T> {
            type Cpu = $group<T::Cpu>;
            type Cuda = $group<T::Cuda>;
            fn cpu(self) -> Self::Cpu {
                self.map(T::cpu)
            }
            fn cuda(self) -> Self::Cuda {
                self.map(T::cuda)
            }
        })*
    };
}
field_by_field!(
    Qkv,
    NormAffine,
    LayerNormStats,
    LayerNormGrads,
    RmsNormGrads,
    ModulateGrads,
    GatedAddGrads,
);

/// Borrowed arguments that hold no buffer, likewise.
macro_rules! same_on_both_borrowed {
    ($($t:ty),* $(,)?) => {
        $(impl<'a> DeviceArg for &'a $t {
            type Cpu = &'a $t;
            type Cuda = &'a $t;
            fn cpu(self) -> Self::Cpu {
                self
            }
            fn cuda(self) -> Self::Cuda {
                self
            }
        })*
    };
}
same_on_both_borrowed!(AdamWHyper);

/// `self.op(args…)` on whichever backend this device is, each argument unwrapped by
/// [`DeviceArg`]. (Both arms name the same arguments; only one runs, so moving a `&mut` into
/// each is fine.)
macro_rules! dispatch {
    ($self:ident . $op:ident ( $($arg:expr),* $(,)? )) => {
        match $self {
            Device::Cpu(b) => b.$op($(DeviceArg::cpu($arg)),*),
            Device::Cuda(b) => b.$op($(DeviceArg::cuda($arg)),*),
        }
    };
}

impl Backend for Device {
    type Buf = DeviceBuf;
    type Weight = DeviceWeight;

    fn name(&self) -> String {
        dispatch!(self.name())
    }

    // ---------------------------------------------------------------- memory
    fn zeros(&self, n: usize) -> DeviceBuf {
        match self {
            Device::Cpu(b) => DeviceBuf::Cpu(b.zeros(n)),
            Device::Cuda(b) => DeviceBuf::Cuda(b.zeros(n)),
        }
    }
    fn upload(&self, data: &[f32]) -> DeviceBuf {
        match self {
            Device::Cpu(b) => DeviceBuf::Cpu(b.upload(data)),
            Device::Cuda(b) => DeviceBuf::Cuda(b.upload(data)),
        }
    }
    fn download(&self, buf: &DeviceBuf) -> Vec<f32> {
        dispatch!(self.download(buf))
    }
    fn len(&self, buf: &DeviceBuf) -> usize {
        match buf {
            DeviceBuf::Cpu(v) => v.len(),
            DeviceBuf::Cuda(v) => v.len(),
        }
    }
    fn fill_zero(&self, buf: &mut DeviceBuf) {
        dispatch!(self.fill_zero(buf))
    }
    fn copy_range(
        &self,
        src: &DeviceBuf,
        src_off: usize,
        dst: &mut DeviceBuf,
        dst_off: usize,
        n: usize,
    ) {
        dispatch!(self.copy_range(src, src_off, dst, dst_off, n))
    }
    fn weight_from_host(&self, data: &Storage, rows: usize, cols: usize) -> DeviceWeight {
        match self {
            Device::Cpu(b) => DeviceWeight::Cpu(b.weight_from_host(data, rows, cols)),
            Device::Cuda(b) => DeviceWeight::Cuda(b.weight_from_host(data, rows, cols)),
        }
    }
    fn weight_to_host(&self, w: &DeviceWeight) -> Storage {
        dispatch!(self.weight_to_host(w))
    }
    fn weight_dtype(&self, w: &DeviceWeight) -> DType {
        dispatch!(self.weight_dtype(w))
    }
    fn weight_dims(&self, w: &DeviceWeight) -> (usize, usize) {
        dispatch!(self.weight_dims(w))
    }
    fn buf_bytes(&self, buf: &DeviceBuf) -> usize {
        dispatch!(self.buf_bytes(buf))
    }

    // ---------------------------------------------------------------- elementwise
    fn add_assign(&self, y: &mut DeviceBuf, x: &DeviceBuf) {
        dispatch!(self.add_assign(y, x))
    }
    fn axpy(&self, alpha: f32, x: &DeviceBuf, y: &mut DeviceBuf) {
        dispatch!(self.axpy(alpha, x, y))
    }
    fn scale(&self, alpha: f32, x: &mut DeviceBuf) {
        dispatch!(self.scale(alpha, x))
    }
    fn broadcast_add(
        &self,
        x: &DeviceBuf,
        table: &DeviceBuf,
        shape: BroadcastShape,
        out: &mut DeviceBuf,
    ) {
        dispatch!(self.broadcast_add(x, table, shape, out))
    }
    fn broadcast_add_backward(
        &self,
        dout: &DeviceBuf,
        shape: BroadcastShape,
        dx: &mut DeviceBuf,
        dtable: &mut DeviceBuf,
    ) {
        dispatch!(self.broadcast_add_backward(dout, shape, dx, dtable))
    }
    fn silu_forward(&self, x: &DeviceBuf, y: &mut DeviceBuf) {
        dispatch!(self.silu_forward(x, y))
    }
    fn silu_backward(&self, x: &DeviceBuf, dy: &DeviceBuf, dx: &mut DeviceBuf) {
        dispatch!(self.silu_backward(x, dy, dx))
    }
    fn gelu_tanh_forward(&self, x: &DeviceBuf, y: &mut DeviceBuf) {
        dispatch!(self.gelu_tanh_forward(x, y))
    }
    fn gelu_tanh_backward(&self, x: &DeviceBuf, dy: &DeviceBuf, dx: &mut DeviceBuf) {
        dispatch!(self.gelu_tanh_backward(x, dy, dx))
    }
    fn gelu_erf_forward(&self, x: &DeviceBuf, y: &mut DeviceBuf) {
        dispatch!(self.gelu_erf_forward(x, y))
    }
    fn gelu_erf_backward(&self, x: &DeviceBuf, dy: &DeviceBuf, dx: &mut DeviceBuf) {
        dispatch!(self.gelu_erf_backward(x, dy, dx))
    }
    fn relu_forward(&self, x: &DeviceBuf, y: &mut DeviceBuf) {
        dispatch!(self.relu_forward(x, y))
    }
    fn relu_backward(&self, x: &DeviceBuf, dy: &DeviceBuf, dx: &mut DeviceBuf) {
        dispatch!(self.relu_backward(x, dy, dx))
    }

    // ---------------------------------------------------------------- reductions
    fn sum_squares(&self, x: &DeviceBuf) -> f64 {
        dispatch!(self.sum_squares(x))
    }
    fn sum_squares_each(&self, xs: &[&DeviceBuf]) -> Vec<f64> {
        match self {
            Device::Cpu(b) => b.sum_squares_each(&xs.iter().map(|x| x.cpu()).collect::<Vec<_>>()),
            Device::Cuda(b) => b.sum_squares_each(&xs.iter().map(|x| x.cuda()).collect::<Vec<_>>()),
        }
    }

    // ---------------------------------------------------------------- optimiser
    fn adamw_update(
        &self,
        param: &mut DeviceBuf,
        grad: &DeviceBuf,
        m: &mut DeviceBuf,
        v: &mut DeviceBuf,
        h: &AdamWHyper,
    ) {
        dispatch!(self.adamw_update(param, grad, m, v, h))
    }
    fn weight_assign(&self, w: &mut DeviceWeight, master: &DeviceBuf) {
        dispatch!(self.weight_assign(w, master))
    }
    fn weight_to_buf(&self, w: &DeviceWeight) -> DeviceBuf {
        match self {
            Device::Cpu(b) => DeviceBuf::Cpu(b.weight_to_buf(w.cpu())),
            Device::Cuda(b) => DeviceBuf::Cuda(b.weight_to_buf(w.cuda())),
        }
    }

    // ---------------------------------------------------------------- linear algebra
    fn linear_forward(
        &self,
        x: &DeviceBuf,
        n: usize,
        w: &DeviceWeight,
        bias: Option<&DeviceBuf>,
        y: &mut DeviceBuf,
    ) {
        dispatch!(self.linear_forward(x, n, w, bias, y))
    }
    fn linear_backward_input(
        &self,
        dy: &DeviceBuf,
        n: usize,
        w: &DeviceWeight,
        dx: &mut DeviceBuf,
    ) {
        dispatch!(self.linear_backward_input(dy, n, w, dx))
    }
    fn linear_backward_weight(
        &self,
        dy: &DeviceBuf,
        x: &DeviceBuf,
        shape: LinearShape,
        dw: &mut DeviceBuf,
        db: Option<&mut DeviceBuf>,
    ) {
        dispatch!(self.linear_backward_weight(dy, x, shape, dw, db))
    }

    // ---------------------------------------------------------------- normalisation
    fn layernorm_forward(
        &self,
        x: &DeviceBuf,
        shape: RowShape,
        affine: NormAffine<&DeviceBuf>,
        eps: f32,
        y: &mut DeviceBuf,
        stats: LayerNormStats<&mut DeviceBuf>,
    ) {
        dispatch!(self.layernorm_forward(x, shape, affine, eps, y, stats))
    }
    fn layernorm_backward(
        &self,
        dy: &DeviceBuf,
        x: &DeviceBuf,
        shape: RowShape,
        weight: Option<&DeviceBuf>,
        stats: LayerNormStats<&DeviceBuf>,
        grads: LayerNormGrads<&mut DeviceBuf>,
    ) {
        dispatch!(self.layernorm_backward(dy, x, shape, weight, stats, grads))
    }
    fn rmsnorm_forward(
        &self,
        x: &DeviceBuf,
        shape: RowShape,
        weight: &DeviceBuf,
        eps: f32,
        y: &mut DeviceBuf,
        rstd: &mut DeviceBuf,
    ) {
        dispatch!(self.rmsnorm_forward(x, shape, weight, eps, y, rstd))
    }
    fn rmsnorm_backward(
        &self,
        dy: &DeviceBuf,
        x: &DeviceBuf,
        shape: RowShape,
        weight: &DeviceBuf,
        rstd: &DeviceBuf,
        grads: RmsNormGrads<&mut DeviceBuf>,
    ) {
        dispatch!(self.rmsnorm_backward(dy, x, shape, weight, rstd, grads))
    }

    // ---------------------------------------------------------------- adaptive modulation
    fn modulate_forward(
        &self,
        x: &DeviceBuf,
        shape: ModShape,
        mods: &DeviceBuf,
        slots: ShiftScale,
        y: &mut DeviceBuf,
    ) {
        dispatch!(self.modulate_forward(x, shape, mods, slots, y))
    }
    fn modulate_backward(
        &self,
        dy: &DeviceBuf,
        x: &DeviceBuf,
        shape: ModShape,
        mods: &DeviceBuf,
        slots: ShiftScale,
        grads: ModulateGrads<&mut DeviceBuf>,
    ) {
        dispatch!(self.modulate_backward(dy, x, shape, mods, slots, grads))
    }
    fn gated_add_forward(
        &self,
        x: &mut DeviceBuf,
        y: &DeviceBuf,
        shape: ModShape,
        mods: &DeviceBuf,
        gate: ModSlot,
    ) {
        dispatch!(self.gated_add_forward(x, y, shape, mods, gate))
    }
    fn gated_add_backward(
        &self,
        dx: &DeviceBuf,
        y: &DeviceBuf,
        shape: ModShape,
        mods: &DeviceBuf,
        gate: ModSlot,
        grads: GatedAddGrads<&mut DeviceBuf>,
    ) {
        dispatch!(self.gated_add_backward(dx, y, shape, mods, gate, grads))
    }

    // ---------------------------------------------------------------- rotary embedding
    fn rope(
        &self,
        x: &mut DeviceBuf,
        shape: RopeShape,
        cos: &DeviceBuf,
        sin: &DeviceBuf,
        inverse: bool,
    ) {
        dispatch!(self.rope(x, shape, cos, sin, inverse))
    }

    // ---------------------------------------------------------------- attention
    fn attention_forward(
        &self,
        qkv: Qkv<&DeviceBuf>,
        shape: AttnShape,
        out: &mut DeviceBuf,
        lse: &mut DeviceBuf,
    ) {
        dispatch!(self.attention_forward(qkv, shape, out, lse))
    }
    fn attention_backward(
        &self,
        qkv: Qkv<&DeviceBuf>,
        out: &DeviceBuf,
        lse: &DeviceBuf,
        dout: &DeviceBuf,
        shape: AttnShape,
        dqkv: Qkv<&mut DeviceBuf>,
    ) {
        dispatch!(self.attention_backward(qkv, out, lse, dout, shape, dqkv))
    }

    // ---------------------------------------------------------------- (un)patchify
    fn patchify(
        &self,
        x: &DeviceBuf,
        shape: PatchShape,
        order: PatchOrder,
        tokens: &mut DeviceBuf,
    ) {
        dispatch!(self.patchify(x, shape, order, tokens))
    }
    fn unpatchify(
        &self,
        tokens: &DeviceBuf,
        shape: PatchShape,
        order: PatchOrder,
        x: &mut DeviceBuf,
    ) {
        dispatch!(self.unpatchify(tokens, shape, order, x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print() {
        for (text, spec) in [
            ("cpu", DeviceSpec::Cpu),
            ("CPU", DeviceSpec::Cpu),
            ("auto", DeviceSpec::Auto),
            ("cuda", DeviceSpec::Cuda(0)),
            ("cuda:0", DeviceSpec::Cuda(0)),
            ("cuda:3", DeviceSpec::Cuda(3)),
            (" cuda:1 ", DeviceSpec::Cuda(1)),
        ] {
            assert_eq!(text.parse::<DeviceSpec>().unwrap(), spec, "{text}");
        }
        for spec in [DeviceSpec::Cpu, DeviceSpec::Auto, DeviceSpec::Cuda(2)] {
            assert_eq!(spec.to_string().parse::<DeviceSpec>().unwrap(), spec);
        }
        assert_eq!(DeviceSpec::Cuda(0).to_string(), "cuda:0");
        for bad in ["", "tpu", "cuda:", "cuda:x", "cuda:-1", "cuda0"] {
            let e = bad.parse::<DeviceSpec>().unwrap_err();
            assert!(
                e.contains("cpu, cuda, cuda:N or auto") || e.contains("number"),
                "{e}"
            );
        }
    }

    #[test]
    fn cpu_opens_and_computes() {
        let d = Device::open(DeviceSpec::Cpu, &CudaOptions::default(), false).unwrap();
        assert!(!d.is_cuda());
        assert_eq!(d.spec(), DeviceSpec::Cpu);
        let x = d.upload(&[1.0, 2.0, 3.0]);
        let mut y = d.zeros(3);
        d.axpy(2.0, &x, &mut y);
        assert_eq!(d.download(&y), vec![2.0, 4.0, 6.0]);
        let w = d.weight_from_host(&Storage::F32(vec![1.0, 0.0, 0.0, 1.0, 1.0, 1.0]), 2, 3);
        let mut out = d.zeros(2);
        d.linear_forward(&x, 1, &w, None, &mut out);
        assert_eq!(d.download(&out), vec![1.0, 6.0]);
        d.synchronize().unwrap();
    }

    /// Where CUDA is usable these open a GPU; elsewhere (the usual CI machine) they check the
    /// error paths. Neither may panic.
    #[test]
    fn cuda_without_a_gpu_is_an_error_or_a_fallback_never_a_panic() {
        let opts = CudaOptions::default();
        let have_gpu = super::super::cuda::probe(&opts).is_ok();
        match Device::open(DeviceSpec::Cuda(0), &opts, false) {
            Ok(d) => assert!(have_gpu && d.is_cuda()),
            Err(e) => {
                assert!(!have_gpu, "probe found a GPU but it failed to open: {e}");
                assert!(
                    matches!(e, CudaError::LibraryMissing { .. } | CudaError::NoDevice),
                    "{e:?}"
                );
                assert!(!e.to_string().is_empty());
            }
        }
        let d = Device::open(DeviceSpec::Cuda(0), &opts, true).unwrap();
        assert_eq!(d.is_cuda(), have_gpu);
        let d = Device::open(DeviceSpec::Auto, &opts, false).unwrap();
        assert_eq!(d.is_cuda(), have_gpu);
        // An index past the last device.
        match Device::open(DeviceSpec::Cuda(1000), &opts, false) {
            Err(CudaError::BadIndex { index: 1000, .. }) => assert!(have_gpu),
            Err(CudaError::LibraryMissing { .. } | CudaError::NoDevice) => assert!(!have_gpu),
            other => panic!("unexpected {other:?}"),
        }
    }
}
