//! Buffer helpers built from the [`Backend`] primitives (`zeros`, `copy_range`, `axpy`, `scale`),
//! so that the schedule code runs unchanged on every backend.

use crate::backend::Backend;

/// A fresh copy of `x`.
pub(crate) fn clone_buf<B: Backend>(backend: &B, x: &B::Buf) -> B::Buf {
    let n = backend.len(x);
    let mut out = backend.zeros(n);
    backend.copy_range(x, 0, &mut out, 0, n);
    out
}

/// `sum_k c_k * x_k` into a new buffer of `n` elements. Terms with a zero coefficient are skipped,
/// which is how absent history (a solver running at lower order) costs nothing.
pub(crate) fn lincomb<B: Backend>(backend: &B, n: usize, terms: &[(f64, &B::Buf)]) -> B::Buf {
    let mut out = backend.zeros(n);
    for &(c, x) in terms {
        assert_eq!(
            backend.len(x),
            n,
            "linear combination of buffers of different lengths"
        );
        if c != 0.0 {
            backend.axpy(c as f32, x, &mut out);
        }
    }
    out
}
