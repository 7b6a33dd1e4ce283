//! Launchers of `kernels/elementwise.cu` (CPU: `cpu/activation.rs`): the activations, axpy,
//! scale, fill, range copies and the modulation-table broadcast add.

use cudarc::driver::{CudaSlice, DriverError, PushKernelArg};

use super::module::{cuda_source, ensure, fits_i32, launch, refuse, Kernels};
use super::types::KernelSource;
use crate::backend::BroadcastShape;

/// Activations, axpy/scale/fill and the modulation-table broadcast add.
pub const ELEMENTWISE: KernelSource = KernelSource {
    name: "elementwise",
    code: cuda_source!("elementwise"),
    functions: &[
        "silu_forward",
        "silu_backward",
        "gelu_tanh_forward",
        "gelu_tanh_backward",
        "gelu_erf_forward",
        "gelu_erf_backward",
        "relu_forward",
        "relu_backward",
        "axpy",
        "scale",
        "fill",
        "broadcast_add",
        "broadcast_add_backward",
    ],
};

impl Kernels {
    /// `y[i] = f(x[i])` for `i < x.len()`; `y.len() >= x.len()`.
    fn unary(
        &self,
        name: &'static str,
        x: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        let n = x.len();
        ensure!(name, y.len() >= n, "output holds {} < {n} values", y.len());
        if n == 0 {
            return Ok(());
        }
        let n64 = n as i64;
        launch!(self, name, self.cfg_vec(n), [x, y, &n64])
    }

    /// `dx[i] = dy[i] * f'(x[i])` for `i < x.len()` (overwrites `dx`).
    fn binary(
        &self,
        name: &'static str,
        x: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        dx: &mut CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        let n = x.len();
        ensure!(
            name,
            dy.len() >= n && dx.len() >= n,
            "dy ({}) or dx ({}) shorter than x ({n})",
            dy.len(),
            dx.len()
        );
        if n == 0 {
            return Ok(());
        }
        let n64 = n as i64;
        launch!(self, name, self.cfg_vec(n), [x, dy, dx, &n64])
    }

    /// `y[i] += x[i]` for `i < x.len()`.
    pub fn add_assign(
        &self,
        y: &mut CudaSlice<f32>,
        x: &CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        self.axpy(1.0, x, y)
    }

    /// `y[i] += alpha * x[i]` for `i < x.len()` (product and sum rounded separately, as the CPU).
    pub fn axpy(
        &self,
        alpha: f32,
        x: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        let n = x.len();
        ensure!("axpy", y.len() >= n, "y holds {} < {n} values", y.len());
        if n == 0 {
            return Ok(());
        }
        let n64 = n as i64;
        launch!(self, "axpy", self.cfg_vec(n), [&alpha, x, y, &n64])
    }

    /// `x[i] *= alpha` for every element of `x`.
    pub fn scale(&self, alpha: f32, x: &mut CudaSlice<f32>) -> Result<(), DriverError> {
        let n = x.len();
        if n == 0 {
            return Ok(());
        }
        let n64 = n as i64;
        launch!(self, "scale", self.cfg_vec(n), [&alpha, x, &n64])
    }

    /// `x[i] = value` for every element of `x`.
    pub fn fill(&self, x: &mut CudaSlice<f32>, value: f32) -> Result<(), DriverError> {
        let n = x.len();
        if n == 0 {
            return Ok(());
        }
        let n64 = n as i64;
        launch!(self, "fill", self.cfg_vec(n), [x, &value, &n64])
    }

    /// `dst[dst_off .. dst_off + n] = src[src_off .. src_off + n]` (a device-to-device copy).
    pub fn copy_range(
        &self,
        src: &CudaSlice<f32>,
        src_off: usize,
        dst: &mut CudaSlice<f32>,
        dst_off: usize,
        n: usize,
    ) -> Result<(), DriverError> {
        ensure!(
            "copy_range",
            src_off + n <= src.len() && dst_off + n <= dst.len(),
            "range out of bounds (src {src_off}+{n} of {}, dst {dst_off}+{n} of {})",
            src.len(),
            dst.len()
        );
        if n == 0 {
            return Ok(());
        }
        self.stream().memcpy_dtod(
            &src.slice(src_off..src_off + n),
            &mut dst.slice_mut(dst_off..dst_off + n),
        )
    }

    /// `out[b, k*w + j] = x[b, j] + table[k*w + j]` for `x: [batch, w]`, `table: [k*w]`,
    /// `out: [batch, k*w]` (overwritten).
    pub fn broadcast_add(
        &self,
        x: &CudaSlice<f32>,
        table: &CudaSlice<f32>,
        shape: BroadcastShape,
        out: &mut CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        let op = "broadcast_add";
        let total = shape.total();
        ensure!(op, fits_i32(total), "{total} elements exceed 2^31");
        shape
            .check_buffers(x.len(), table.len(), out.len())
            .map_err(|e| refuse(op, e))?;
        if total == 0 {
            return Ok(());
        }
        let BroadcastShape { w, k, .. } = shape;
        let (w32, kw, t32) = (w as u32, (k * w) as u32, total as u32);
        launch!(
            self,
            op,
            self.cfg_1d(total),
            [x, table, out, &w32, &kw, &t32]
        )
    }

    /// Backward of [`Kernels::broadcast_add`]: `dx[b, j] += sum_k dout[b, k*w + j]` and
    /// `dtable[t] += sum_b dout[b, t]` (both accumulate, in the CPU's order: bit-exact).
    pub fn broadcast_add_backward(
        &self,
        dout: &CudaSlice<f32>,
        shape: BroadcastShape,
        dx: &mut CudaSlice<f32>,
        dtable: &mut CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        let op = "broadcast_add_backward";
        let total = shape.total();
        ensure!(op, fits_i32(total), "{total} elements exceed 2^31");
        shape
            .check_buffers(dx.len(), dtable.len(), dout.len())
            .map_err(|e| refuse(op, e))?;
        let BroadcastShape { batch, w, k } = shape;
        if w == 0 || (batch == 0 && k == 0) {
            return Ok(());
        }
        let (b32, w32, k32) = (batch as u32, w as u32, k as u32);
        let cfg = self.cfg_1d(batch * w + k * w);
        launch!(self, op, cfg, [dout, dx, dtable, &b32, &w32, &k32])
    }

    /// `y = x * sigmoid(x)` over `x.len()` elements (overwrites `y`).
    pub fn silu_forward(
        &self,
        x: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        self.unary("silu_forward", x, y)
    }

    /// `dx = dy * s (1 + x (1 - s))`, `s = sigmoid(x)` (overwrites `dx`).
    pub fn silu_backward(
        &self,
        x: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        dx: &mut CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        self.binary("silu_backward", x, dy, dx)
    }

    /// GELU, tanh approximation (overwrites `y`).
    pub fn gelu_tanh_forward(
        &self,
        x: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        self.unary("gelu_tanh_forward", x, y)
    }

    /// Backward of the tanh GELU (overwrites `dx`).
    pub fn gelu_tanh_backward(
        &self,
        x: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        dx: &mut CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        self.binary("gelu_tanh_backward", x, dy, dx)
    }

    /// Exact (erf) GELU, evaluated in f64 (overwrites `y`).
    pub fn gelu_erf_forward(
        &self,
        x: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        self.unary("gelu_erf_forward", x, y)
    }

    /// Backward of the exact GELU, in f64 (overwrites `dx`).
    pub fn gelu_erf_backward(
        &self,
        x: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        dx: &mut CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        self.binary("gelu_erf_backward", x, dy, dx)
    }

    /// `y = max(x, 0)` (NaN gives 0, as the CPU) (overwrites `y`).
    pub fn relu_forward(
        &self,
        x: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        self.unary("relu_forward", x, y)
    }

    /// `dx = dy` where `x > 0`, else 0 (overwrites `dx`).
    pub fn relu_backward(
        &self,
        x: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        dx: &mut CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        self.binary("relu_backward", x, dy, dx)
    }
}
