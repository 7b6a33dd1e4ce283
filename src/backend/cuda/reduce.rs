//! Launchers of `kernels/reduce.cu`: deterministic two-stage reductions (column sums over rows,
//! shared by the bias, norm-parameter and modulation gradients, and the f64 sum of squares of the
//! gradient norm).

use std::ops::Range;

use cudarc::driver::{CudaSlice, DriverError, LaunchConfig, PushKernelArg};

use super::module::{cuda_source, ensure, fits_i32, launch, Kernels, BLOCK};
use super::types::KernelSource;
use crate::backend::{ModSlot, RowShape};

/// Deterministic two-stage reductions: column sums over rows and the f64 sum of squares.
pub const REDUCE: KernelSource = KernelSource {
    name: "reduce",
    code: cuda_source!("reduce"),
    functions: &[
        "colsum_partial",
        "colsum_finalize",
        "sum_squares_partial",
        "sum_squares_finalize",
    ],
};

/// colsum_partial's tile: 32 columns by 8 row lanes.
const CS_COLS: usize = 32;
const CS_ROWS: u32 = 8;
/// colsum_partial's target block count (the split over rows depends only on the shapes).
const CS_TARGET_BLOCKS: usize = 2048;
/// Rows per colsum chunk, at least.
const CS_MIN_CHUNK_ROWS: usize = 32;
/// sum_squares: elements per stage-1 block (at least) and the most stage-1 blocks.
const SS_ELEMS_PER_BLOCK: usize = 4096;
const SS_MAX_BLOCKS: usize = 1024;

// colsum_partial modes (see kernels/reduce.cu).
pub(super) const CS_SUM: i32 = 0;
pub(super) const CS_DOT: i32 = 1;
pub(super) const CS_SUM_DOT: i32 = 2;
pub(super) const CS_LN: i32 = 3;
pub(super) const CS_RMS: i32 = 4;

/// A stage-1 column-sum result: `[groups, chunks, width]` partial sums.
pub(super) struct Partials {
    buf: CudaSlice<f32>,
    groups: usize,
    chunks: usize,
    width: usize,
}

/// What a stage-1 column sum reads: the `mode` (above) and its operands `a`, `b`
/// (`[groups, rows, d]`) and `mean`, `rstd` (`[groups * rows]`). An operand the mode does not
/// read may be any buffer (the callers repeat one they pass anyway).
pub(super) struct ColsumOperands<'a> {
    pub mode: i32,
    pub a: &'a CudaSlice<f32>,
    pub b: &'a CudaSlice<f32>,
    pub mean: &'a CudaSlice<f32>,
    pub rstd: &'a CudaSlice<f32>,
}

/// Where a single group's sums go: `out[j]` from element 0 (the stride is never used).
pub(super) const FROM_START: ModSlot = ModSlot {
    stride: 0,
    offset: 0,
};

impl Kernels {
    /// Stage 1 of a column sum over `groups` groups of `shape.rows` rows of width `shape.d`.
    pub(super) fn colsum_partials(
        &self,
        operands: ColsumOperands<'_>,
        groups: usize,
        shape: RowShape,
    ) -> Result<Partials, DriverError> {
        let ColsumOperands {
            mode,
            a,
            b,
            mean,
            rstd,
        } = operands;
        let RowShape { rows, d } = shape;
        let col_tiles = d.div_ceil(CS_COLS);
        let want = (CS_TARGET_BLOCKS / (col_tiles * groups).max(1)).max(1);
        let chunk_rows = rows.div_ceil(want).max(CS_MIN_CHUNK_ROWS);
        let chunks = rows.div_ceil(chunk_rows).max(1);
        let width = if mode == CS_SUM_DOT || mode == CS_LN {
            2 * d
        } else {
            d
        };
        // SAFETY: every element is written by colsum_partial before it is read.
        let mut buf = unsafe { self.stream().alloc::<f32>(groups * chunks * width) }?;
        let cfg = LaunchConfig {
            grid_dim: (col_tiles as u32, chunks as u32, groups as u32),
            block_dim: (CS_COLS as u32, CS_ROWS, 1),
            shared_mem_bytes: 0,
        };
        let (rows32, d32, chunk32) = (rows as i32, d as i32, chunk_rows as i32);
        launch!(
            self,
            "colsum_partial",
            cfg,
            [&mode, a, b, mean, rstd, &mut buf, &rows32, &d32, &chunk32]
        )?;
        Ok(Partials {
            buf,
            groups,
            chunks,
            width,
        })
    }

    /// Stage 2: `out[g * at.stride + at.offset + j] += sum_c partial[g, c, cols.start + j]` for
    /// `j < cols.len()`.
    pub(super) fn colsum_finalize(
        &self,
        p: &Partials,
        cols: Range<usize>,
        out: &mut CudaSlice<f32>,
        at: ModSlot,
    ) -> Result<(), DriverError> {
        let ncols = cols.len();
        let (chunks, width, c0, nc, groups) = (
            p.chunks as i32,
            p.width as i32,
            cols.start as i32,
            ncols as i32,
            p.groups as i32,
        );
        let (stride, off) = (at.stride as i64, at.offset as i64);
        let cfg = self.cfg_1d(p.groups * ncols);
        launch!(
            self,
            "colsum_finalize",
            cfg,
            [&p.buf, &chunks, &width, &c0, &nc, &groups, out, &stride, &off]
        )
    }

    /// `out[j] += sum_r x[r, j]` for `x: [rows, d]`, `out: [d]` (e.g. a bias gradient).
    pub fn sum_rows_accumulate(
        &self,
        x: &CudaSlice<f32>,
        rows: usize,
        d: usize,
        out: &mut CudaSlice<f32>,
    ) -> Result<(), DriverError> {
        let op = "sum_rows_accumulate";
        ensure!(op, fits_i32(rows) && fits_i32(d), "shape too large");
        ensure!(
            op,
            x.len() >= rows * d && out.len() >= d,
            "buffers too short for [{rows}, {d}]"
        );
        if rows == 0 || d == 0 {
            return Ok(());
        }
        let sum = ColsumOperands {
            mode: CS_SUM,
            a: x,
            b: x,
            mean: x,
            rstd: x,
        };
        let p = self.colsum_partials(sum, 1, RowShape { rows, d })?;
        self.colsum_finalize(&p, 0..d, out, FROM_START)
    }

    /// Enqueues `out[slot] = sum x^2` over all of `x`, accumulated in f64 (deterministic: the
    /// split depends on `x.len()` only). No host synchronisation; `out: [>= slot + 1]`.
    pub fn sum_squares_into(
        &self,
        x: &CudaSlice<f32>,
        out: &mut CudaSlice<f64>,
        slot: usize,
    ) -> Result<(), DriverError> {
        let op = "sum_squares";
        ensure!(
            op,
            slot < out.len() && fits_i32(slot),
            "slot {slot} outside out ({})",
            out.len()
        );
        let n = x.len();
        let blocks = n.div_ceil(SS_ELEMS_PER_BLOCK).clamp(1, SS_MAX_BLOCKS);
        // SAFETY: every element is written by sum_squares_partial before it is read.
        let mut partial = unsafe { self.stream().alloc::<f64>(blocks) }?;
        let n64 = n as i64;
        let cfg = LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        launch!(self, "sum_squares_partial", cfg, [x, &n64, &mut partial])?;
        let (count, slot32) = (blocks as i32, slot as i32);
        let cfg = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        launch!(
            self,
            "sum_squares_finalize",
            cfg,
            [&partial, &count, out, &slot32]
        )
    }

    /// `sum x^2` over all of `x` in f64 (a non-finite result flags a non-finite entry).
    /// Synchronises the stream to return the value.
    pub fn sum_squares(&self, x: &CudaSlice<f32>) -> Result<f64, DriverError> {
        if x.is_empty() {
            return Ok(0.0);
        }
        let mut out = self.stream().alloc_zeros::<f64>(1)?;
        self.sum_squares_into(x, &mut out, 0)?;
        Ok(self.stream().clone_dtoh(&out)?[0])
    }
}
