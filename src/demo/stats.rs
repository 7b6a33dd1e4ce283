//! Small statistics for the report: proportions with a Wilson score interval, and the
//! two-proportion z statistic the claims are checked with.

use serde::Serialize;

/// `successes` of `n` with its Wilson 95% score interval (it stays inside `[0, 1]` and behaves
/// at 0 and `n` successes, unlike the normal approximation).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Proportion {
    pub successes: usize,
    pub n: usize,
    pub value: f64,
    pub low: f64,
    pub high: f64,
}

/// The normal quantile of a two-sided 95% interval.
const Z95: f64 = 1.959_963_984_540_054;

impl Proportion {
    pub fn new(successes: usize, n: usize) -> Self {
        assert!(successes <= n, "{successes} successes of {n}");
        if n == 0 {
            return Proportion {
                successes,
                n,
                value: f64::NAN,
                low: 0.0,
                high: 1.0,
            };
        }
        let nf = n as f64;
        let p = successes as f64 / nf;
        let z2 = Z95 * Z95;
        let denom = 1.0 + z2 / nf;
        let centre = (p + z2 / (2.0 * nf)) / denom;
        let half = Z95 * (p * (1.0 - p) / nf + z2 / (4.0 * nf * nf)).sqrt() / denom;
        Proportion {
            successes,
            n,
            value: p,
            low: (centre - half).max(0.0),
            high: (centre + half).min(1.0),
        }
    }

    /// `"0.42 [0.34, 0.51] (54/128)"`.
    pub fn display(&self) -> String {
        format!(
            "{:.2} [{:.2}, {:.2}] ({}/{})",
            self.value, self.low, self.high, self.successes, self.n
        )
    }
}

/// The pooled two-proportion z statistic of `b` against `a` (positive when `b` is higher); about
/// 2 or more is a difference unlikely to be sampling noise.
pub fn two_proportion_z(a: &Proportion, b: &Proportion) -> f64 {
    let (na, nb) = (a.n as f64, b.n as f64);
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    let pooled = (a.successes + b.successes) as f64 / (na + nb);
    let se = (pooled * (1.0 - pooled) * (1.0 / na + 1.0 / nb)).sqrt();
    if se == 0.0 {
        return 0.0;
    }
    (b.value - a.value) / se
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_interval_matches_the_formula() {
        // 40 of 100: the textbook Wilson interval is [0.3094, 0.4980].
        let p = Proportion::new(40, 100);
        assert!(
            (p.low - 0.3094).abs() < 5e-4 && (p.high - 0.4980).abs() < 5e-4,
            "{p:?}"
        );
        let zero = Proportion::new(0, 20);
        assert_eq!(zero.low, 0.0);
        assert!(zero.high > 0.1 && zero.high < 0.2);
    }

    #[test]
    fn z_statistic_has_the_sign_of_the_difference() {
        let a = Proportion::new(30, 100);
        let b = Proportion::new(60, 100);
        assert!(two_proportion_z(&a, &b) > 4.0);
        assert!(two_proportion_z(&b, &a) < -4.0);
    }
}
