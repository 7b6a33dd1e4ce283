//! The PAVRM training losses (method.md section 3) on host-side logits: one scalar per sample, so
//! the trainer downloads the `[B]` logits, calls these, and uploads the `[B]` logit gradients for
//! [`super::head::RewardHead::backward`].
//!
//! Both losses use the mean over the batch (torch's default reduction) and are evaluated in f64 so
//! that the reported loss and its gradient do not depend on the summation order.

/// The logistic function, `1 / (1 + e^-x)`, without overflow for large `|x|`.
pub fn sigmoid(x: f32) -> f32 {
    sigmoid_f64(x as f64) as f32
}

fn sigmoid_f64(x: f64) -> f64 {
    // Only ever exponentiate a non-positive number, so that nothing overflows.
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// Per-sample binary cross-entropy of `sigmoid(z)` against `y` and its derivative in `z`, in the
/// log-sum-exp form torch's `BCEWithLogitsLoss` uses:
/// `max(z, 0) - z y + log(1 + e^-|z|)`, finite for any finite `z` (the naive
/// `-y log s - (1 - y) log(1 - s)` hits `log 0` once `s` rounds to 0 or 1).
fn bce_term(z: f64, y: f64) -> (f64, f64) {
    let loss = z.max(0.0) - z * y + (-z.abs()).exp().ln_1p();
    (loss, sigmoid_f64(z) - y)
}

/// Mean binary cross-entropy of `sigmoid(logits)` against `labels` (0/1, or soft labels in
/// [0, 1]) and the gradient with respect to each logit (already divided by the batch size).
///
/// Panics if the slices differ in length or are empty.
pub fn bce_with_logits(logits: &[f32], labels: &[f32]) -> (f64, Vec<f32>) {
    assert_eq!(logits.len(), labels.len(), "one label per logit");
    assert!(!logits.is_empty(), "empty batch");
    let n = logits.len() as f64;
    let mut total = 0.0;
    let grad = logits
        .iter()
        .zip(labels)
        .map(|(&z, &y)| {
            let (l, dz) = bce_term(z as f64, y as f64);
            total += l;
            (dz / n) as f32
        })
        .collect();
    (total / n, grad)
}

/// Bradley-Terry preference loss over pairs: BCE of `p = sigmoid(r_a - r_b)` against label 1
/// where `a` is the winner and 0 where `b` is (the trainer presents each pair in random order
/// and flips the label accordingly). Returns the mean loss and the gradients with respect to the
/// `a` and `b` logits (`d_b = -d_a`).
///
/// Panics if the slices differ in length or are empty.
pub fn bradley_terry(
    logit_a: &[f32],
    logit_b: &[f32],
    a_wins: &[bool],
) -> (f64, Vec<f32>, Vec<f32>) {
    assert_eq!(logit_a.len(), logit_b.len(), "one b logit per a logit");
    assert_eq!(logit_a.len(), a_wins.len(), "one outcome per pair");
    assert!(!logit_a.is_empty(), "no pairs");
    let n = logit_a.len() as f64;
    let mut total = 0.0;
    let (d_a, d_b) = logit_a
        .iter()
        .zip(logit_b)
        .zip(a_wins)
        .map(|((&a, &b), &wins)| {
            // The difference in f64: no cancellation error on top of the logits' own rounding.
            let (l, dz) = bce_term(a as f64 - b as f64, if wins { 1.0 } else { 0.0 });
            total += l;
            let g = dz / n;
            (g as f32, -g as f32)
        })
        .unzip();
    (total / n, d_a, d_b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigmoid_is_stable_and_symmetric() {
        assert_eq!(sigmoid(0.0), 0.5);
        assert_eq!(sigmoid(1000.0), 1.0);
        assert_eq!(sigmoid(-1000.0), 0.0);
        for x in [-7.5f32, -1.0, 0.3, 4.0] {
            assert!((sigmoid(x) + sigmoid(-x) - 1.0).abs() < 1e-7);
        }
    }

    #[test]
    fn bce_matches_the_naive_formula_and_stays_finite() {
        let logits = [-2.0f32, -0.1, 0.0, 0.7, 3.0];
        let labels = [0.0f32, 1.0, 1.0, 0.0, 0.25];
        let (loss, grad) = bce_with_logits(&logits, &labels);
        let n = logits.len() as f64;
        let naive: f64 = logits
            .iter()
            .zip(&labels)
            .map(|(&z, &y)| {
                let s = 1.0 / (1.0 + (-(z as f64)).exp());
                -(y as f64) * s.ln() - (1.0 - y as f64) * (1.0 - s).ln()
            })
            .sum::<f64>()
            / n;
        assert!((loss - naive).abs() < 1e-12);
        for ((&z, &y), &g) in logits.iter().zip(&labels).zip(&grad) {
            let want = (1.0 / (1.0 + (-(z as f64)).exp()) - y as f64) / n;
            assert!((g as f64 - want).abs() < 1e-7);
        }

        // Saturated logits: the naive form gives inf/NaN, the stable one the exact |z|.
        let (loss, grad) = bce_with_logits(&[200.0, -200.0], &[0.0, 1.0]);
        assert!((loss - 200.0).abs() < 1e-9);
        assert_eq!(grad, vec![0.5, -0.5]);
        let (loss, _) = bce_with_logits(&[200.0, -200.0], &[1.0, 0.0]);
        assert!(loss.abs() < 1e-80);
    }

    #[test]
    fn bradley_terry_is_bce_on_the_difference_and_order_invariant() {
        let a = [0.5f32, -1.0, 2.0];
        let b = [0.1f32, 0.4, 2.5];
        let wins = [true, false, true];
        let (loss, d_a, d_b) = bradley_terry(&a, &b, &wins);
        let diff: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x - y).collect();
        let labels: Vec<f32> = wins.iter().map(|&w| w as u8 as f32).collect();
        let (want, dz) = bce_with_logits(&diff, &labels);
        assert!((loss - want).abs() < 1e-7);
        for i in 0..3 {
            assert!((d_a[i] - dz[i]).abs() < 1e-7);
            assert_eq!(d_b[i], -d_a[i]);
        }
        // Presenting each pair the other way round with the label flipped changes nothing.
        let flipped: Vec<bool> = wins.iter().map(|w| !w).collect();
        let (loss2, d_b2, d_a2) = bradley_terry(&b, &a, &flipped);
        assert!((loss - loss2).abs() < 1e-12);
        for i in 0..3 {
            assert!((d_a[i] - d_a2[i]).abs() < 1e-7);
            assert!((d_b[i] - d_b2[i]).abs() < 1e-7);
        }
    }
}
