//! Flash attention on the GPU (forward and backward).
//!
//! Same semantics as the CPU backend's [`crate::backend::cpu`] attention (the executable
//! specification): `q: [batch, lq, heads, d]`, `k, v: [batch, lk, heads, d]`, `out` like `q`,
//! `lse: [batch, heads, lq]` (natural log of the row sums of `exp(scale q.k)`), scale
//! `1/sqrt(d)`, no mask; the backward overwrites `dq, dk, dv`.
//!
//! Two implementations of the same function live in `kernels/attention.cu` (whose header gives
//! the tile sizes, the resource use and the flop counts):
//! - the tensor-core path (FlashAttention-2 structure, bf16 operands with f32 accumulation and
//!   f32 softmax statistics), instantiated for `d` in [`TENSOR_CORE_HEAD_DIMS`];
//! - a simple f32 path for any `d <= MAX_HEAD_DIM` (one warp per row), used for the other head
//!   dims and as a second reference on the device.
//!
//! [`AttnPath::Auto`] (what [`Kernels::attention_forward`] and [`Kernels::attention_backward`] use) picks the
//! tensor cores whenever the head dim allows; the `_with` variants force one path.
//!
//! The backward runs three kernels: `delta = rowsum(dout * out)` into a scratch buffer, then a
//! pass over key tiles that owns `dK, dV` and a pass over query tiles that owns `dQ` (no atomics,
//! so the results are bitwise reproducible; see the `.cu` header for the cost).

use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::{
    CudaFunction, CudaStream, DevicePtr, DriverError, LaunchConfig, PushKernelArg,
};

use super::module::Kernels;
use super::types::{CudaBuf, KernelSource};
use crate::backend::{AttnShape, Qkv};

/// The attention kernels' CUDA C source.
pub const SOURCE: KernelSource = KernelSource {
    name: "attention",
    code: include_str!("kernels/attention.cu"),
    functions: &[
        "flash_fwd_d16",
        "flash_fwd_d32",
        "flash_fwd_d64",
        "flash_fwd_d128",
        "flash_bwd_delta",
        "flash_bwd_dkdv_d16",
        "flash_bwd_dkdv_d32",
        "flash_bwd_dkdv_d64",
        "flash_bwd_dkdv_d128",
        "flash_bwd_dq_d16",
        "flash_bwd_dq_d32",
        "flash_bwd_dq_d64",
        "flash_bwd_dq_d128",
        "attn_fwd_simple",
        "attn_bwd_dq_simple",
        "attn_bwd_dkdv_simple",
    ],
};

/// Head dims with a tensor-core instantiation.
pub const TENSOR_CORE_HEAD_DIMS: [usize; 4] = [16, 32, 64, 128];

/// The largest head dim the simple path supports (each lane of a warp holds `d / 32` columns).
pub const MAX_HEAD_DIM: usize = 256;

/// Which attention kernels to run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttnPath {
    /// The tensor cores when the head dim has an instantiation, else the simple kernels.
    #[default]
    Auto,
    /// The tensor-core kernels (panics for a head dim outside [`TENSOR_CORE_HEAD_DIMS`]).
    TensorCore,
    /// The simple f32 kernels.
    Simple,
}

impl AttnPath {
    /// The path actually taken for head dim `d`.
    ///
    /// # Panics
    /// If `d` is 0 or above [`MAX_HEAD_DIM`], or `TensorCore` is asked for a head dim it has no
    /// instantiation for.
    pub fn resolve(self, d: usize) -> AttnPath {
        assert!(
            (1..=MAX_HEAD_DIM).contains(&d),
            "attention (CUDA): head_dim {d} not supported (1..={MAX_HEAD_DIM})"
        );
        let tc = TENSOR_CORE_HEAD_DIMS.contains(&d);
        match self {
            AttnPath::Auto if tc => AttnPath::TensorCore,
            AttnPath::Auto => AttnPath::Simple,
            AttnPath::TensorCore => {
                assert!(
                    tc,
                    "attention (CUDA): no tensor-core kernel for head_dim {d} (have {TENSOR_CORE_HEAD_DIMS:?})"
                );
                AttnPath::TensorCore
            }
            AttnPath::Simple => AttnPath::Simple,
        }
    }
}

// Tile sizes; they must match kernels/attention.cu.
/// Threads per block of every attention kernel except `flash_bwd_delta`.
const THREADS: u32 = 128;
/// Query rows per block of `flash_fwd_*` and `flash_bwd_dq_*`.
const TC_BM: usize = 64;
/// Keys per block of `flash_bwd_dkdv_*` (and keys per inner step of the others).
const TC_BN: usize = 64;
/// Rows per block of the simple kernels (one warp per row) and of `flash_bwd_delta`.
const SIMPLE_ROWS: usize = 4;
const DELTA_ROWS: usize = 8;
/// Shared memory a block gets without opting in.
const DEFAULT_SMEM: usize = 48 * 1024;

/// Shared-memory row stride, in bf16 elements, of a `d`-wide tile.
fn lds(d: usize) -> usize {
    d + 8
}

/// Query rows per inner step of `flash_bwd_dkdv_d{d}` (the `BMB` of `ATTN_INSTANTIATE`).
fn dkdv_bmb(d: usize) -> usize {
    if d == 128 {
        32
    } else {
        64
    }
}

/// Dynamic shared memory of `flash_fwd_d{d}`: K and V tiles of bf16 (Q is staged through K).
fn fwd_smem(d: usize) -> usize {
    2 * TC_BN * lds(d) * 2
}

/// Dynamic shared memory of `flash_bwd_dkdv_d{d}`: K, V (64 rows), Q, dO (`BMB` rows) in bf16,
/// and `BMB` f32 each of lse and delta.
fn dkdv_smem(d: usize) -> usize {
    let bmb = dkdv_bmb(d);
    (2 * TC_BN + 2 * bmb) * lds(d) * 2 + 2 * bmb * 4
}

/// Dynamic shared memory of `flash_bwd_dq_d{d}`: Q, dO, K, V tiles of 64 rows in bf16.
fn dq_smem(d: usize) -> usize {
    2 * (TC_BM + TC_BN) * lds(d) * 2
}

fn to_i32(x: usize, what: &str) -> i32 {
    i32::try_from(x).unwrap_or_else(|_| panic!("attention (CUDA): {what} = {x} exceeds i32"))
}

/// A 1-D grid of `blocks` blocks.
fn grid(blocks: usize, threads: u32, smem: usize) -> LaunchConfig {
    assert!(
        blocks <= i32::MAX as usize,
        "attention (CUDA): grid of {blocks} blocks too large"
    );
    LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: smem as u32,
    }
}

/// Raises the function's dynamic shared-memory limit when it needs more than the default.
/// Binds the stream's context first: cudarc's `set_attribute` does not, and on a host thread
/// that has run nothing else yet no context would be current.
fn opt_in_smem(s: &CudaStream, f: &CudaFunction, smem: usize) -> Result<(), DriverError> {
    if smem > DEFAULT_SMEM {
        s.context().bind_to_thread()?;
        f.set_attribute(
            CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            smem as i32,
        )?;
    }
    Ok(())
}

/// The tensor-core kernels load and store rows of q, k, v, out, dq, dk, dv as 16-byte vectors:
/// every buffer must start 16-byte aligned. Whole allocations always do (the pool aligns to at
/// least 256 bytes); a view into one (not used today) might not.
fn debug_assert_aligned(s: &CudaStream, bufs: &[&CudaBuf]) {
    if cfg!(debug_assertions) {
        for (i, b) in bufs.iter().enumerate() {
            let (p, _guard) = b.device_ptr(s);
            debug_assert!(
                p % 16 == 0,
                "attention (CUDA): buffer {i} at {p:#x} is not 16-byte aligned"
            );
        }
    }
}

/// The shape as kernel arguments, after the same checks as the CPU backend's.
struct Dims {
    batch: i32,
    lq: i32,
    lk: i32,
    heads: i32,
    d: i32,
    /// `batch * heads`.
    bh: usize,
    /// `1/sqrt(d)` and `log2(e)/sqrt(d)`.
    scale: f32,
    scale_log2: f32,
}

impl Dims {
    fn new(shape: &AttnShape, q: usize, k: usize, v: usize) -> Self {
        let AttnShape {
            batch,
            lq,
            lk,
            heads,
            head_dim: d,
        } = *shape;
        if let Err(e) = shape.check_buffers(q, k, v) {
            panic!("attention (CUDA): {e}");
        }
        let scale = 1.0 / (d as f32).sqrt();
        Dims {
            batch: to_i32(batch, "batch"),
            lq: to_i32(lq, "lq"),
            lk: to_i32(lk, "lk"),
            heads: to_i32(heads, "heads"),
            d: to_i32(d, "head_dim"),
            bh: batch * heads,
            scale,
            scale_log2: scale * std::f32::consts::LOG2_E,
        }
    }
}

/// What the attention forward saved for the backward: its output and log-sum-exp.
pub struct AttnSaved<'a> {
    pub out: &'a CudaBuf,
    pub lse: &'a CudaBuf,
}

impl Kernels {
    /// Softmax attention; writes `out: [batch, lq, heads, head_dim]` and
    /// `lse: [batch, heads, lq]`. Enqueued on the kernels' stream (asynchronous).
    ///
    /// # Panics
    /// On buffers too short for `shape`, `lk == 0` with queries present, or an unsupported head dim
    /// (like the CPU backend).
    pub fn attention_forward(
        &self,
        qkv: Qkv<&CudaBuf>,
        shape: AttnShape,
        out: &mut CudaBuf,
        lse: &mut CudaBuf,
    ) -> Result<(), DriverError> {
        self.attention_forward_with(AttnPath::Auto, qkv, shape, out, lse)
    }

    /// [`Kernels::attention_forward`] on the given path.
    pub fn attention_forward_with(
        &self,
        path: AttnPath,
        qkv: Qkv<&CudaBuf>,
        shape: AttnShape,
        out: &mut CudaBuf,
        lse: &mut CudaBuf,
    ) -> Result<(), DriverError> {
        let Qkv { q, k, v } = qkv;
        let s = self.stream();
        let dims = Dims::new(&shape, q.len(), k.len(), v.len());
        let AttnShape {
            batch,
            lq,
            heads,
            head_dim: d,
            ..
        } = shape;
        assert!(
            out.len() >= batch * lq * heads * d,
            "attention (CUDA): out too short for {shape:?}"
        );
        assert!(
            lse.len() >= batch * heads * lq,
            "attention (CUDA): lse too short for {shape:?}"
        );
        if batch * lq * heads * d == 0 {
            return Ok(());
        }
        let Dims {
            batch: b32,
            lq: lq32,
            lk: lk32,
            heads: h32,
            d: d32,
            ..
        } = dims;
        match path.resolve(d) {
            AttnPath::TensorCore => {
                debug_assert_aligned(s, &[q, k, v, &*out]);
                let f = self.function(&format!("flash_fwd_d{d}"));
                let smem = fwd_smem(d);
                opt_in_smem(s, f, smem)?;
                let cfg = grid(lq.div_ceil(TC_BM) * dims.bh, THREADS, smem);
                let mut b = s.launch_builder(f);
                b.arg(q).arg(k).arg(v).arg(out).arg(lse);
                b.arg(&b32)
                    .arg(&lq32)
                    .arg(&lk32)
                    .arg(&h32)
                    .arg(&dims.scale_log2);
                // SAFETY: the arguments match flash_fwd_d{d}'s signature; the buffers hold at least
                // the elements the shape addresses (checked above), and the kernel bounds every
                // access by lq / lk.
                unsafe { b.launch(cfg) }?;
            }
            _ => {
                let f = self.function("attn_fwd_simple");
                let cfg = grid((batch * lq * heads).div_ceil(SIMPLE_ROWS), THREADS, 0);
                let mut b = s.launch_builder(f);
                b.arg(q).arg(k).arg(v).arg(out).arg(lse);
                b.arg(&b32)
                    .arg(&lq32)
                    .arg(&lk32)
                    .arg(&h32)
                    .arg(&d32)
                    .arg(&dims.scale);
                // SAFETY: as above, for attn_fwd_simple (d <= MAX_HEAD_DIM checked by resolve).
                unsafe { b.launch(cfg) }?;
            }
        }
        Ok(())
    }

    /// Backward of [`Kernels::attention_forward`]: overwrites `dq, dk, dv`. Allocates a
    /// `[batch, heads, lq]` scratch buffer on the kernels' stream, where it is enqueued (asynchronous).
    ///
    /// # Panics
    /// As [`Kernels::attention_forward`], and on `out, dout, lse, dq, dk, dv` too short.
    pub fn attention_backward(
        &self,
        qkv: Qkv<&CudaBuf>,
        out: &CudaBuf,
        lse: &CudaBuf,
        dout: &CudaBuf,
        shape: AttnShape,
        dqkv: Qkv<&mut CudaBuf>,
    ) -> Result<(), DriverError> {
        let saved = AttnSaved { out, lse };
        self.attention_backward_with(AttnPath::Auto, qkv, saved, dout, shape, dqkv)
    }

    /// [`Kernels::attention_backward`] on the given path.
    pub fn attention_backward_with(
        &self,
        path: AttnPath,
        qkv: Qkv<&CudaBuf>,
        saved: AttnSaved<'_>,
        dout: &CudaBuf,
        shape: AttnShape,
        dqkv: Qkv<&mut CudaBuf>,
    ) -> Result<(), DriverError> {
        let Qkv { q, k, v } = qkv;
        let AttnSaved { out, lse } = saved;
        let Qkv {
            q: dq,
            k: dk,
            v: dv,
        } = dqkv;
        let s = self.stream();
        let dims = Dims::new(&shape, q.len(), k.len(), v.len());
        let AttnShape {
            batch,
            lq,
            lk,
            heads,
            head_dim: d,
        } = shape;
        let nq_all = batch * lq * heads * d;
        let nk_all = batch * lk * heads * d;
        assert!(
            out.len() >= nq_all && dout.len() >= nq_all,
            "attention (CUDA): out/dout too short for {shape:?}"
        );
        assert!(
            lse.len() >= batch * heads * lq,
            "attention (CUDA): lse too short for {shape:?}"
        );
        assert!(
            dq.len() >= nq_all,
            "attention (CUDA): dq too short for {shape:?}"
        );
        assert!(
            dk.len() >= nk_all && dv.len() >= nk_all,
            "attention (CUDA): dk/dv too short for {shape:?}"
        );
        if nq_all == 0 {
            // No queries: nothing flows back to the keys either.
            if nk_all > 0 {
                s.memset_zeros(&mut dk.slice_mut(..nk_all))?;
                s.memset_zeros(&mut dv.slice_mut(..nk_all))?;
            }
            return Ok(());
        }
        let Dims {
            batch: b32,
            lq: lq32,
            lk: lk32,
            heads: h32,
            d: d32,
            ..
        } = dims;

        // delta[b, h, i] = dout_i . out_i.
        let mut delta = s.alloc_zeros::<f32>(batch * heads * lq)?;
        {
            let f = self.function("flash_bwd_delta");
            let cfg = grid((batch * lq * heads).div_ceil(DELTA_ROWS), 256, 0);
            let mut b = s.launch_builder(f);
            b.arg(out).arg(dout).arg(&mut delta);
            b.arg(&b32).arg(&lq32).arg(&h32).arg(&d32);
            // SAFETY: matches flash_bwd_delta's signature; out/dout hold batch*lq*heads rows of d
            // and delta batch*heads*lq elements.
            unsafe { b.launch(cfg) }?;
        }

        match path.resolve(d) {
            AttnPath::TensorCore => {
                debug_assert_aligned(s, &[q, k, v, dout, &*dq, &*dk, &*dv]);
                let f = self.function(&format!("flash_bwd_dkdv_d{d}"));
                let smem = dkdv_smem(d);
                opt_in_smem(s, f, smem)?;
                let cfg = grid(lk.div_ceil(TC_BN) * dims.bh, THREADS, smem);
                let mut b = s.launch_builder(f);
                b.arg(q)
                    .arg(k)
                    .arg(v)
                    .arg(dout)
                    .arg(lse)
                    .arg(&delta)
                    .arg(dk)
                    .arg(dv);
                b.arg(&b32).arg(&lq32).arg(&lk32).arg(&h32);
                b.arg(&dims.scale).arg(&dims.scale_log2);
                // SAFETY: matches flash_bwd_dkdv_d{d}'s signature; sizes checked above.
                unsafe { b.launch(cfg) }?;

                let f = self.function(&format!("flash_bwd_dq_d{d}"));
                let smem = dq_smem(d);
                opt_in_smem(s, f, smem)?;
                let cfg = grid(lq.div_ceil(TC_BM) * dims.bh, THREADS, smem);
                let mut b = s.launch_builder(f);
                b.arg(q)
                    .arg(k)
                    .arg(v)
                    .arg(dout)
                    .arg(lse)
                    .arg(&delta)
                    .arg(dq);
                b.arg(&b32).arg(&lq32).arg(&lk32).arg(&h32);
                b.arg(&dims.scale).arg(&dims.scale_log2);
                // SAFETY: matches flash_bwd_dq_d{d}'s signature; sizes checked above.
                unsafe { b.launch(cfg) }?;
            }
            _ => {
                let f = self.function("attn_bwd_dkdv_simple");
                let cfg = grid((batch * lk * heads).div_ceil(SIMPLE_ROWS), THREADS, 0);
                let mut b = s.launch_builder(f);
                b.arg(q)
                    .arg(k)
                    .arg(v)
                    .arg(dout)
                    .arg(lse)
                    .arg(&delta)
                    .arg(dk)
                    .arg(dv);
                b.arg(&b32)
                    .arg(&lq32)
                    .arg(&lk32)
                    .arg(&h32)
                    .arg(&d32)
                    .arg(&dims.scale);
                // SAFETY: matches attn_bwd_dkdv_simple's signature; sizes checked above.
                unsafe { b.launch(cfg) }?;

                let f = self.function("attn_bwd_dq_simple");
                let cfg = grid((batch * lq * heads).div_ceil(SIMPLE_ROWS), THREADS, 0);
                let mut b = s.launch_builder(f);
                b.arg(q)
                    .arg(k)
                    .arg(v)
                    .arg(dout)
                    .arg(lse)
                    .arg(&delta)
                    .arg(dq);
                b.arg(&b32)
                    .arg(&lq32)
                    .arg(&lk32)
                    .arg(&h32)
                    .arg(&d32)
                    .arg(&dims.scale);
                // SAFETY: matches attn_bwd_dq_simple's signature; sizes checked above.
                unsafe { b.launch(cfg) }?;
            }
        }
        // `delta` is freed when dropped; cudarc's event tracking (or the stream order of
        // cuMemFreeAsync) keeps it alive until the kernels that read it have run.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_lists_every_kernel() {
        // Every extern "C" kernel of the source is listed, and nothing else.
        let defined: Vec<&str> = SOURCE
            .code
            .split("extern \"C\" __global__ void")
            .skip(1)
            .filter_map(|rest| {
                let rest = rest.trim_start();
                // Skip `__launch_bounds__(..)`.
                let rest = match rest.strip_prefix("__launch_bounds__") {
                    Some(r) => &r[r.find(')')? + 1..],
                    None => rest,
                };
                rest[..rest.find('(')?].split_whitespace().last()
            })
            .filter(|n| !n.contains("##"))
            .collect();
        for name in &defined {
            assert!(SOURCE.functions.contains(name), "{name} not listed");
        }
        // The macro-generated ones: three per tensor-core head dim.
        for d in TENSOR_CORE_HEAD_DIMS {
            for stem in ["flash_fwd_d", "flash_bwd_dkdv_d", "flash_bwd_dq_d"] {
                let name = format!("{stem}{d}");
                assert!(SOURCE.functions.contains(&name.as_str()), "{name}");
                assert!(
                    SOURCE.code.contains(&format!("ATTN_INSTANTIATE({d},")),
                    "{name} not instantiated"
                );
            }
        }
        assert_eq!(
            SOURCE.functions.len(),
            defined.len() + 3 * TENSOR_CORE_HEAD_DIMS.len()
        );
    }

    #[test]
    fn paths_resolve_by_head_dim() {
        assert_eq!(AttnPath::Auto.resolve(128), AttnPath::TensorCore);
        assert_eq!(AttnPath::Auto.resolve(16), AttnPath::TensorCore);
        assert_eq!(AttnPath::Auto.resolve(8), AttnPath::Simple);
        assert_eq!(AttnPath::Auto.resolve(96), AttnPath::Simple);
        assert_eq!(AttnPath::Auto.resolve(256), AttnPath::Simple);
        assert_eq!(AttnPath::Simple.resolve(128), AttnPath::Simple);
        assert!(std::panic::catch_unwind(|| AttnPath::Auto.resolve(257)).is_err());
        assert!(std::panic::catch_unwind(|| AttnPath::TensorCore.resolve(8)).is_err());
    }

    #[test]
    fn shared_memory_fits_every_target() {
        // sm_89 allows the least dynamic shared memory per block (99 KiB).
        for d in TENSOR_CORE_HEAD_DIMS {
            for smem in [fwd_smem(d), dkdv_smem(d), dq_smem(d)] {
                assert!(smem <= 99 * 1024, "d {d}: {smem} bytes");
            }
        }
        assert_eq!(fwd_smem(128), 34816);
        assert_eq!(dkdv_smem(128), 52480);
        assert_eq!(dq_smem(128), 69632);
    }
}
