//! Dense products on the GPU: cuBLASLt with bf16 (or f16) inputs, f32 accumulation and f32
//! output, the bias fused as an epilogue; cuBLAS (`cublasGemmEx`, and a rank-1 update for the bias)
//! as the fallback when cuBLASLt's heuristic offers no algorithm for a shape.
//!
//! Row-major to column-major: cuBLAS is column-major, and a row-major `[r, c]` matrix is the
//! column-major `[c, r]` one with the same memory. So with `x: [n, in]`, `W: [out, in]`,
//! `y: [n, out]` (all row-major):
//! - forward `y = x W^T`: `Yc[out, n] = Wc^T Xc`, i.e. `m = out, n = n, k = in`, A = W with
//!   `transa = T` (`lda = in`), B = x (`ldb = in`), `ldc = out`; the bias is per row of `Yc`,
//!   which is what cuBLASLt's `BIAS` epilogue adds.
//! - `dx = dy W`: `dXc[in, n] = Wc dYc`: `m = in, n = n, k = out`, A = W (`lda = in`), B = dy
//!   (`ldb = out`), `ldc = in`.
//! - `dW += dy^T x`: `dWc[in, out] += Xc dYc^T`: `m = in, n = out, k = n`, A = x (`lda = in`),
//!   B = dy with `transb = T` (`ldb = out`), `ldc = in`, `beta = 1`.
//!
//! Precision: for bf16 weights the f32 activations are rounded to bf16 into a reused scratch
//! buffer; `dW` takes `x` and `dy` in bf16. f32 weights multiply f32 activations with TF32
//! tensor cores (set `PRFL_CUDA_TF32=0` for full-f32 products). f16 weights multiply like f32
//! ones: each product widens the weight (exactly) into an f32 scratch buffer. Activations are
//! never rounded to f16: its range ends at 65504, which DiT residual streams and FFN hidden
//! states exceed, and the CPU (the specification) multiplies in f32; bf16 has f32's range.
//! (The widening costs a pass over the weight per product; f16 checkpoints are rare, the Wan
//! release is bf16.) Everything accumulates in f32 and writes f32.
//!
//! Each distinct problem (shape, types, transposes, bias, pointer alignments) gets its matmul
//! descriptor, layouts and heuristic algorithm once; they are cached in a map. The workspace is
//! allocated once.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublas::{result as br, sys as bs};
use cudarc::cublaslt::{result as lr, sys as ls};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};

use super::types::{CudaBuf, CudaWeight, WeightData};
use super::CudaError;
use crate::backend::LinearShape;

/// The cuBLASLt workspace: NVIDIA recommends 32 MiB on Hopper, 4 MiB before.
fn workspace_bytes(major: u32) -> usize {
    if major >= 9 {
        32 << 20
    } else {
        4 << 20
    }
}

/// Element type of a GEMM operand.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Elem {
    F32,
    Bf16,
    F16,
}

impl Elem {
    fn lt(self) -> ls::cudaDataType {
        match self {
            Elem::F32 => ls::cudaDataType::CUDA_R_32F,
            Elem::Bf16 => ls::cudaDataType::CUDA_R_16BF,
            Elem::F16 => ls::cudaDataType::CUDA_R_16F,
        }
    }
    fn blas(self) -> bs::cudaDataType {
        match self {
            Elem::F32 => bs::cudaDataType::CUDA_R_32F,
            Elem::Bf16 => bs::cudaDataType::CUDA_R_16BF,
            Elem::F16 => bs::cudaDataType::CUDA_R_16F,
        }
    }
}

/// How the products accumulate.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Compute {
    /// f32 accumulation (the inputs' own precision: bf16/f16 tensor cores, or true f32).
    F32,
    /// f32 inputs through TF32 tensor cores, f32 accumulation.
    Tf32,
}

impl Compute {
    fn lt(self) -> ls::cublasComputeType_t {
        match self {
            Compute::F32 => ls::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            Compute::Tf32 => ls::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32,
        }
    }
    fn blas(self) -> bs::cublasComputeType_t {
        match self {
            Compute::F32 => bs::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            Compute::Tf32 => bs::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32,
        }
    }
}

/// One product `C[m, n] = alpha op(A) op(B) + beta C (+ bias[m] per row)`, column-major, C f32.
#[derive(Clone, Copy, Debug)]
pub struct GemmCall {
    pub transa: bool,
    pub transb: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: u64,
    pub a_type: Elem,
    pub lda: usize,
    pub b: u64,
    pub b_type: Elem,
    pub ldb: usize,
    pub c: u64,
    pub ldc: usize,
    pub alpha: f32,
    pub beta: f32,
    /// An f32 vector of `m` added to every column (cuBLASLt `BIAS` epilogue).
    pub bias: Option<u64>,
    pub compute: Compute,
}

/// Cache key: everything a descriptor, the layouts and the heuristic's choice depend on.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct Key {
    transa: bool,
    transb: bool,
    m: usize,
    n: usize,
    k: usize,
    lda: usize,
    ldb: usize,
    ldc: usize,
    a_type: Elem,
    b_type: Elem,
    bias: bool,
    compute: Compute,
    /// Alignment (bytes, capped at 256) of A, B, C and the bias pointer.
    align: [u16; 4],
}

fn alignment(ptr: u64) -> u16 {
    if ptr == 0 {
        return 256;
    }
    (1u64 << ptr.trailing_zeros().min(8)) as u16
}

struct Layout(ls::cublasLtMatrixLayout_t);
impl Drop for Layout {
    fn drop(&mut self) {
        // SAFETY: created by cublasLtMatrixLayoutCreate, destroyed once. Errors are ignored: a
        // destructor must not panic.
        let _ = unsafe { lr::destroy_matrix_layout(self.0) };
    }
}

struct Desc(ls::cublasLtMatmulDesc_t);
impl Drop for Desc {
    fn drop(&mut self) {
        // SAFETY: as for Layout.
        let _ = unsafe { lr::destroy_matmul_desc(self.0) };
    }
}

struct Pref(ls::cublasLtMatmulPreference_t);
impl Drop for Pref {
    fn drop(&mut self) {
        // SAFETY: as for Layout.
        let _ = unsafe { lr::destroy_matmul_pref(self.0) };
    }
}

/// A cached cuBLASLt problem.
struct LtPlan {
    desc: Desc,
    a: Layout,
    b: Layout,
    c: Layout,
    algo: ls::cublasLtMatmulAlgo_t,
}

enum Plan {
    Lt(Box<LtPlan>),
    /// cuBLASLt had no algorithm: `cublasGemmEx` (bias added by a rank-1 update).
    GemmEx,
}

struct LtHandle(ls::cublasLtHandle_t);
impl Drop for LtHandle {
    fn drop(&mut self) {
        // SAFETY: created by cublasLtCreate, destroyed once.
        if let Err(e) = unsafe { lr::destroy_handle(self.0) } {
            ::log::warn!("CUDA: destroying the cuBLASLt handle failed ({e:?}); ignored");
        }
    }
}

/// The cuBLAS handle (the fallback GEMM and its bias update), on the backend's stream. Held raw,
/// not as cudarc's `CudaBlas`, whose drop unwraps the destroy status: after a sticky device
/// error that panics inside `prfl_destroy`, and a second panic while the C ABI's barrier is
/// already unwinding from the first aborts the host process. This one logs the failure.
struct BlasHandle(bs::cublasHandle_t);

impl BlasHandle {
    /// A handle whose work goes to `stream` (whose context must be bound to this thread).
    fn new(stream: &CudaStream) -> Result<BlasHandle, CudaError> {
        let handle = BlasHandle(br::create_handle()?);
        // SAFETY: a live handle and the backend's live stream (the handle is destroyed on
        // failure by its drop).
        unsafe { br::set_stream(handle.0, stream.cu_stream() as bs::cudaStream_t) }?;
        Ok(handle)
    }
}

impl Drop for BlasHandle {
    fn drop(&mut self) {
        // SAFETY: created by cublasCreate, destroyed once.
        if let Err(e) = unsafe { br::destroy_handle(self.0) } {
            ::log::warn!("CUDA: destroying the cuBLAS handle failed ({e:?}); ignored");
        }
    }
}

/// The GEMM engine of one device: handles, workspace, plan cache and scratch buffers. Lives
/// behind the backend's mutex: calls are enqueued on the backend's single stream, so reusing
/// the scratch buffers between calls is ordered by the stream.
pub struct Gemm {
    stream: Arc<CudaStream>,
    lt: LtHandle,
    blas: BlasHandle,
    workspace: CudaSlice<u8>,
    plans: HashMap<Key, Plan>,
    /// 16-bit copies of activations (`x`, `dy`).
    scratch: [Option<CudaSlice<u16>>; 2],
    /// The f32 widening of an f16 weight (see the module documentation).
    wide: Option<CudaSlice<f32>>,
    /// A vector of ones (bias gradient and the fallback's bias add), grown as needed.
    ones: Option<CudaSlice<f32>>,
    /// TF32 for f32 weights (default on; `PRFL_CUDA_TF32=0` turns it off).
    tf32: bool,
}

// SAFETY: the raw cuBLASLt handles are only used behind the backend's mutex (one thread at a
// time), with the context bound to the calling thread first.
unsafe impl Send for Gemm {}

/// The kernels a GEMM needs around cuBLAS, given by the backend (the kernels' launchers) so
/// that this module stays independent of them.
pub trait GemmKernels {
    /// Rounds all of `src` to bf16 bit patterns into `dst[.. src.len()]`.
    fn to_bf16(&self, src: &CudaBuf, dst: &mut CudaSlice<u16>) -> Result<(), CudaError>;
    /// Widens the weight `w` (any storage type) to f32 into `dst[.. rows * cols]`.
    fn weight_to_f32(&self, w: &CudaWeight, dst: &mut CudaBuf) -> Result<(), CudaError>;
    /// `out[j] += sum_r x[r, j]` for `x: [rows, d]`.
    fn sum_rows_accumulate(
        &self,
        x: &CudaBuf,
        rows: usize,
        d: usize,
        out: &mut CudaBuf,
    ) -> Result<(), CudaError>;
}

fn ptr<T>(s: &CudaSlice<T>, stream: &CudaStream) -> u64 {
    // Event tracking is off on the backend's context (one stream), so the guard records nothing.
    let (p, _guard) = s.device_ptr(stream);
    p
}

fn ptr_mut<T>(s: &mut CudaSlice<T>, stream: &CudaStream) -> u64 {
    let (p, _guard) = s.device_ptr_mut(stream);
    p
}

fn weight_parts(w: &CudaWeight, stream: &CudaStream) -> (u64, Elem) {
    match &w.data {
        WeightData::F32(s) => (ptr(s, stream), Elem::F32),
        WeightData::Bf16(s) => (ptr(s, stream), Elem::Bf16),
        WeightData::F16(s) => (ptr(s, stream), Elem::F16),
    }
}

fn check_len(what: &str, have: usize, need: usize) -> Result<(), CudaError> {
    if have < need {
        return Err(CudaError::Driver(format!(
            "{what} holds {have} values, the product needs {need}"
        )));
    }
    Ok(())
}

impl Gemm {
    /// Creates the handles and the workspace on `stream` (whose context must be bound to this
    /// thread). `major` is the compute capability's major number.
    pub fn new(stream: Arc<CudaStream>, major: u32) -> Result<Gemm, CudaError> {
        stream.context().bind_to_thread()?;
        let lt = LtHandle(lr::create_handle()?);
        let blas = BlasHandle::new(&stream)?;
        // SAFETY: only ever used as cuBLASLt scratch.
        let workspace = unsafe { stream.alloc::<u8>(workspace_bytes(major)) }?;
        let tf32 = std::env::var("PRFL_CUDA_TF32").map_or(true, |v| v != "0");
        Ok(Gemm {
            stream,
            lt,
            blas,
            workspace,
            plans: HashMap::new(),
            scratch: [None, None],
            wide: None,
            ones: None,
            tf32,
        })
    }

    /// Number of cached problems (for tests and diagnostics).
    pub fn cached_plans(&self) -> usize {
        self.plans.len()
    }

    /// Scratch buffer `i` with room for `n` 16-bit values (grown, never shrunk).
    fn scratch(&mut self, i: usize, n: usize) -> Result<CudaSlice<u16>, CudaError> {
        match self.scratch[i].take() {
            Some(s) if s.len() >= n => Ok(s),
            _ => {
                // SAFETY: written by the cast before any read.
                Ok(unsafe { self.stream.alloc::<u16>(n.max(1)) }?)
            }
        }
    }

    /// A device vector of at least `n` ones.
    fn ones(&mut self, n: usize) -> Result<u64, CudaError> {
        if self.ones.as_ref().map_or(true, |o| o.len() < n) {
            let host = vec![1.0f32; n.max(1024)];
            self.ones = Some(self.stream.clone_htod(&host)?);
        }
        Ok(ptr(self.ones.as_ref().expect("set above"), &self.stream))
    }

    fn plan(&mut self, key: Key) -> Result<&Plan, CudaError> {
        if !self.plans.contains_key(&key) {
            let plan = match self.lt_plan(&key) {
                Ok(p) => Plan::Lt(Box::new(p)),
                Err(e) => {
                    ::log::debug!("cuBLASLt has no algorithm for {key:?} ({e:?}): cublasGemmEx");
                    Plan::GemmEx
                }
            };
            self.plans.insert(key, plan);
        }
        Ok(&self.plans[&key])
    }

    fn lt_plan(&self, key: &Key) -> Result<LtPlan, lr::CublasError> {
        use ls::cublasLtMatmulDescAttributes_t as D;
        use ls::cublasLtMatmulPreferenceAttributes_t as P;
        let desc = Desc(lr::create_matmul_desc(
            key.compute.lt(),
            ls::cudaDataType::CUDA_R_32F,
        )?);
        // SAFETY (this block): every attribute gets a value of the type and size cuBLASLt
        // documents for it (int32 for the transposes and data types, uint32 for the epilogue
        // and alignments, uint64 for the workspace size).
        unsafe {
            let set = |attr: D, v: *const c_void, size: usize| {
                lr::set_matmul_desc_attribute(desc.0, attr, v, size)
            };
            let ta: i32 = key.transa as i32; // CUBLAS_OP_N = 0, CUBLAS_OP_T = 1
            let tb: i32 = key.transb as i32;
            set(
                D::CUBLASLT_MATMUL_DESC_TRANSA,
                (&ta as *const i32).cast(),
                4,
            )?;
            set(
                D::CUBLASLT_MATMUL_DESC_TRANSB,
                (&tb as *const i32).cast(),
                4,
            )?;
            if key.bias {
                let epi = ls::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS as u32;
                set(
                    D::CUBLASLT_MATMUL_DESC_EPILOGUE,
                    (&epi as *const u32).cast(),
                    4,
                )?;
                let bt = ls::cudaDataType::CUDA_R_32F as i32;
                set(
                    D::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                    (&bt as *const i32).cast(),
                    4,
                )?;
            }
        }
        let (ar, ac) = if key.transa {
            (key.k, key.m)
        } else {
            (key.m, key.k)
        };
        let (br_, bc) = if key.transb {
            (key.n, key.k)
        } else {
            (key.k, key.n)
        };
        let a = Layout(lr::create_matrix_layout(
            key.a_type.lt(),
            ar as u64,
            ac as u64,
            key.lda as i64,
        )?);
        let b = Layout(lr::create_matrix_layout(
            key.b_type.lt(),
            br_ as u64,
            bc as u64,
            key.ldb as i64,
        )?);
        let c = Layout(lr::create_matrix_layout(
            ls::cudaDataType::CUDA_R_32F,
            key.m as u64,
            key.n as u64,
            key.ldc as i64,
        )?);
        let pref = Pref(lr::create_matmul_pref()?);
        let ws = self.workspace.len() as u64;
        // SAFETY: as above.
        let heuristic = unsafe {
            let set = |attr: P, v: *const c_void, size: usize| {
                lr::set_matmul_pref_attribute(pref.0, attr, v, size)
            };
            set(
                P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                (&ws as *const u64).cast(),
                8,
            )?;
            let [aa, ab, ac_, _] = key.align.map(u32::from);
            set(
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                (&aa as *const u32).cast(),
                4,
            )?;
            set(
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                (&ab as *const u32).cast(),
                4,
            )?;
            set(
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                (&ac_ as *const u32).cast(),
                4,
            )?;
            set(
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                (&ac_ as *const u32).cast(),
                4,
            )?;
            lr::get_matmul_algo_heuristic(self.lt.0, desc.0, a.0, b.0, c.0, c.0, pref.0)?
        };
        if heuristic.workspaceSize > self.workspace.len() {
            return Err(lr::CublasError(
                ls::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED,
            ));
        }
        Ok(LtPlan {
            desc,
            a,
            b,
            c,
            algo: heuristic.algo,
        })
    }

    /// Enqueues one product (see [`GemmCall`]).
    ///
    /// # Safety
    /// Every pointer must be a live device allocation of the backend's context large enough for
    /// the shape and leading dimensions given.
    pub unsafe fn run(&mut self, g: &GemmCall) -> Result<(), CudaError> {
        if g.m == 0 || g.n == 0 {
            return Ok(());
        }
        self.stream.context().bind_to_thread()?;
        let key = Key {
            transa: g.transa,
            transb: g.transb,
            m: g.m,
            n: g.n,
            k: g.k,
            lda: g.lda,
            ldb: g.ldb,
            ldc: g.ldc,
            a_type: g.a_type,
            b_type: g.b_type,
            bias: g.bias.is_some(),
            compute: g.compute,
            align: [
                alignment(g.a),
                alignment(g.b),
                alignment(g.c),
                alignment(g.bias.unwrap_or(0)),
            ],
        };
        let lt = self.lt.0;
        let ws = ptr(&self.workspace, &self.stream);
        let ws_len = self.workspace.len();
        let cu_stream = self.stream.cu_stream();
        let blas = self.blas.0;
        // cuBLASLt wants k > 0; cublasGemmEx follows BLAS (k = 0 gives C = beta C).
        let plan = if g.k == 0 {
            &Plan::GemmEx
        } else {
            self.plan(key)?
        };
        let use_lt = match plan {
            Plan::Lt(p) => {
                if let Some(bias) = g.bias {
                    // SAFETY: a device pointer attribute, as documented.
                    unsafe {
                        lr::set_matmul_desc_attribute(
                            p.desc.0,
                            ls::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                            (&bias as *const u64).cast(),
                            8,
                        )
                    }?;
                }
                // SAFETY: pointers per contract; descriptor and layouts built for this shape.
                unsafe {
                    lr::matmul(
                        lt,
                        p.desc.0,
                        (&g.alpha as *const f32).cast(),
                        (&g.beta as *const f32).cast(),
                        g.a as *const c_void,
                        p.a.0,
                        g.b as *const c_void,
                        p.b.0,
                        g.c as *const c_void,
                        p.c.0,
                        g.c as *mut c_void,
                        p.c.0,
                        &p.algo,
                        ws as *mut c_void,
                        ws_len,
                        cu_stream as ls::cudaStream_t,
                    )
                }?;
                true
            }
            Plan::GemmEx => false,
        };
        if !use_lt {
            let op = |t: bool| {
                if t {
                    bs::cublasOperation_t::CUBLAS_OP_T
                } else {
                    bs::cublasOperation_t::CUBLAS_OP_N
                }
            };
            // With k = 0 (a layer with no inputs, or the input gradient of one with no
            // outputs) an operand has no rows and its ld is 0, but cuBLAS requires
            // ld >= max(1, rows) and refuses 0 (CUBLAS_STATUS_INVALID_VALUE). Any ld >= 1 is
            // right then: nothing is read, and C = beta C (+ the bias below).
            let (lda, ldb) = (g.lda.max(1), g.ldb.max(1));
            // SAFETY: pointers per contract.
            unsafe {
                br::gemm_ex(
                    blas,
                    op(g.transa),
                    op(g.transb),
                    g.m as i32,
                    g.n as i32,
                    g.k as i32,
                    (&g.alpha as *const f32).cast(),
                    g.a as *const c_void,
                    g.a_type.blas(),
                    lda as i32,
                    g.b as *const c_void,
                    g.b_type.blas(),
                    ldb as i32,
                    (&g.beta as *const f32).cast(),
                    g.c as *mut c_void,
                    bs::cudaDataType::CUDA_R_32F,
                    g.ldc as i32,
                    g.compute.blas(),
                    bs::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
            }?;
            if let Some(bias) = g.bias {
                // SAFETY: per contract.
                unsafe { self.add_bias_rank1(g, bias) }?;
            }
        }
        Ok(())
    }

    /// `C[m, n] += bias[m] 1^T` (the fallback's bias), a rank-1 update in f32.
    unsafe fn add_bias_rank1(&mut self, g: &GemmCall, bias: u64) -> Result<(), CudaError> {
        let ones = self.ones(g.n)?;
        let one = 1.0f32;
        // SAFETY: per the caller's contract; `ones` holds at least `n` values.
        unsafe {
            bs::cublasSger_v2(
                self.blas.0,
                g.m as i32,
                g.n as i32,
                &one,
                bias as *const f32,
                1,
                ones as *const f32,
                1,
                g.c as *mut f32,
                g.ldc as i32,
            )
        }
        .result()?;
        Ok(())
    }

    /// The weight operand of a product: the weight's own storage (f32, bf16), or for f16 its
    /// f32 widening in the `wide` scratch buffer (see the module documentation).
    fn weight_operand(
        &mut self,
        cast: &dyn GemmKernels,
        w: &CudaWeight,
    ) -> Result<(u64, Elem), CudaError> {
        let (p, t) = weight_parts(w, &self.stream);
        if t != Elem::F16 {
            return Ok((p, t));
        }
        let n = w.rows * w.cols;
        let mut wide = match self.wide.take() {
            Some(s) if s.len() >= n => s,
            // SAFETY: written by the widening before any read.
            _ => unsafe { self.stream.alloc::<f32>(n.max(1)) }?,
        };
        let r = cast.weight_to_f32(w, &mut wide);
        let p = ptr(&wide, &self.stream);
        self.wide = Some(wide);
        r.map(|()| (p, Elem::F32))
    }

    /// The activation operand for a weight operand of type `to`: the f32 buffer itself (f32) or
    /// its bf16 rounding in scratch buffer `slot` (the whole buffer is rounded: it may be
    /// longer than the product reads). Never f16 (see the module documentation).
    fn activation(
        &mut self,
        cast: &dyn GemmKernels,
        slot: usize,
        x: &CudaBuf,
        to: Elem,
    ) -> Result<u64, CudaError> {
        match to {
            Elem::F32 => Ok(ptr(x, &self.stream)),
            Elem::Bf16 => {
                let mut s = self.scratch(slot, x.len())?;
                let r = cast.to_bf16(x, &mut s);
                let p = ptr(&s, &self.stream);
                self.scratch[slot] = Some(s);
                r.map(|()| p)
            }
            Elem::F16 => Err(CudaError::Driver(
                "internal: activations are never rounded to f16 (the weight is widened)".into(),
            )),
        }
    }

    fn compute_for(&self, t: Elem) -> Compute {
        if t == Elem::F32 && self.tf32 {
            Compute::Tf32
        } else {
            Compute::F32
        }
    }

    /// `y[n, out] = x[n, in] W^T (+ b)`.
    pub fn linear_forward(
        &mut self,
        cast: &dyn GemmKernels,
        x: &CudaBuf,
        n: usize,
        w: &CudaWeight,
        b: Option<&CudaBuf>,
        y: &mut CudaBuf,
    ) -> Result<(), CudaError> {
        let (out, inp) = (w.rows, w.cols);
        check_len("linear_forward: x", x.len(), n * inp)?;
        check_len("linear_forward: y", y.len(), n * out)?;
        if let Some(b) = b {
            check_len("linear_forward: bias", b.len(), out)?;
        }
        let stream = self.stream.clone();
        let (wp, wt) = self.weight_operand(cast, w)?;
        let xp = self.activation(cast, 0, x, wt)?;
        let call = GemmCall {
            transa: true,
            transb: false,
            m: out,
            n,
            k: inp,
            a: wp,
            a_type: wt,
            lda: inp,
            b: xp,
            b_type: wt,
            ldb: inp,
            c: ptr_mut(y, &stream),
            ldc: out,
            alpha: 1.0,
            beta: 0.0,
            bias: b.map(|b| ptr(b, &stream)),
            compute: self.compute_for(wt),
        };
        // SAFETY: lengths checked above; all buffers belong to the backend's context.
        unsafe { self.run(&call) }
    }

    /// `dx[n, in] = dy[n, out] W` (overwrites `dx`).
    pub fn linear_backward_input(
        &mut self,
        cast: &dyn GemmKernels,
        dy: &CudaBuf,
        n: usize,
        w: &CudaWeight,
        dx: &mut CudaBuf,
    ) -> Result<(), CudaError> {
        let (out, inp) = (w.rows, w.cols);
        check_len("linear_backward_input: dy", dy.len(), n * out)?;
        check_len("linear_backward_input: dx", dx.len(), n * inp)?;
        let stream = self.stream.clone();
        let (wp, wt) = self.weight_operand(cast, w)?;
        let dyp = self.activation(cast, 0, dy, wt)?;
        let call = GemmCall {
            transa: false,
            transb: false,
            m: inp,
            n,
            k: out,
            a: wp,
            a_type: wt,
            lda: inp,
            b: dyp,
            b_type: wt,
            ldb: out,
            c: ptr_mut(dx, &stream),
            ldc: inp,
            alpha: 1.0,
            beta: 0.0,
            bias: None,
            compute: self.compute_for(wt),
        };
        // SAFETY: as above.
        unsafe { self.run(&call) }
    }

    /// `dw[out, in] += dy^T x`, `db[out] += sum_rows dy` (bf16 products, f32 accumulation into
    /// the f32 gradients; the bias gradient in f32 by the kernels' column sum).
    pub fn linear_backward_weight(
        &mut self,
        cast: &dyn GemmKernels,
        dy: &CudaBuf,
        x: &CudaBuf,
        shape: LinearShape,
        dw: &mut CudaBuf,
        db: Option<&mut CudaBuf>,
    ) -> Result<(), CudaError> {
        shape
            .check_buffers(dy.len(), x.len(), dw.len(), db.as_ref().map(|b| b.len()))
            .map_err(|e| CudaError::Driver(format!("linear_backward_weight: {e}")))?;
        let LinearShape { n, n_in, n_out } = shape;
        let stream = self.stream.clone();
        if n > 0 {
            let xp = self.activation(cast, 0, x, Elem::Bf16)?;
            let dyp = self.activation(cast, 1, dy, Elem::Bf16)?;
            let call = GemmCall {
                transa: false,
                transb: true,
                m: n_in,
                n: n_out,
                k: n,
                a: xp,
                a_type: Elem::Bf16,
                lda: n_in,
                b: dyp,
                b_type: Elem::Bf16,
                ldb: n_out,
                c: ptr_mut(dw, &stream),
                ldc: n_in,
                alpha: 1.0,
                beta: 1.0,
                bias: None,
                compute: Compute::F32,
            };
            // SAFETY: as above.
            unsafe { self.run(&call) }?;
        }
        if let Some(db) = db {
            cast.sum_rows_accumulate(dy, n, n_out, db)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_is_capped_at_256_bytes() {
        assert_eq!(alignment(0x7f00_0000_0000), 256);
        assert_eq!(alignment(0x7f00_0000_0010), 16);
        assert_eq!(alignment(0x7f00_0000_0002), 2);
        assert_eq!(alignment(0), 256);
    }
}
