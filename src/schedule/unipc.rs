//! The UniPC flow solver's coefficients: pure scalar math on a sigma grid.
//!
//! This is diffusers' `UniPCMultistepScheduler` (and Wan2.1's `FlowUniPCMultistepScheduler`, the
//! same algorithm) in the configuration Wan samples with: `solver_order = 2`, `solver_type = bh2`,
//! `predict_x0 = True`, `prediction_type = flow_prediction`, `lower_order_final = True`, no
//! disabled correctors. With `alpha = 1 - sigma`, `lambda = ln(alpha) - ln(sigma)` and the x0
//! prediction `m_i = x_i - sigma_i * v_i`, step `i` is
//!
//! 1. (i >= 1) the UniC corrector: rebuild the previous predictor's target from the corrected
//!    sample `x^c_{i-1}` with the new `m_i` added to the history,
//!    `x^c_i = c.last_sample * x^c_{i-1} + c.cur * m_i + c.prev * m_{i-1} + c.prev2 * m_{i-2}`;
//!    at `i = 0`, `x^c_0 = x_0`;
//! 2. the UniP predictor: `x_{i+1} = p.sample * x^c_i + p.cur * m_i + p.prev * m_{i-1}`.
//!
//! The predictor runs at order `min(2, i + 1, n - i)`: order 1 on the first step (no history
//! yet) and on the last (diffusers' `lower_order_final`); the corrector of step `i` runs at the
//! order of predictor `i - 1`. `m_i` is formed from the *uncorrected* `x_i`, as in diffusers.
//!
//! Every update is linear in the model output, and the coefficients depend only on the grid,
//! which is what lets PRFL backpropagate through one step with a single scalar
//! ([`output_coefficient`]). Coefficients are computed in f64 from the grid's f32 sigmas (the
//! references do this arithmetic in float32; the difference is below 1e-6 relative).

/// Coefficients of the UniC corrector at step `i >= 1` (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CorrectorCoefficients {
    /// On the previous corrected sample `x^c_{i-1}`.
    pub last_sample: f64,
    /// On the current x0 prediction `m_i`.
    pub cur: f64,
    /// On `m_{i-1}`.
    pub prev: f64,
    /// On `m_{i-2}` (0 when the corrector runs at order 1).
    pub prev2: f64,
}

/// Coefficients of the UniP predictor at step `i` (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PredictorCoefficients {
    /// On the corrected sample `x^c_i`.
    pub sample: f64,
    /// On the current x0 prediction `m_i`.
    pub cur: f64,
    /// On `m_{i-1}` (0 when the predictor runs at order 1).
    pub prev: f64,
}

/// Everything step `i` does, as coefficients.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepCoefficients {
    /// `None` on step 0, which has no previous step to correct.
    pub corrector: Option<CorrectorCoefficients>,
    pub predictor: PredictorCoefficients,
}

/// Half-log-SNR of a flow level: `ln(1 - sigma) - ln(sigma)` (+inf at sigma = 0).
fn lambda(sigma: f32) -> f64 {
    let s = sigma as f64;
    (1.0 - s).ln() - s.ln()
}

/// Order of the predictor at step `i` of `n`: 1 on the first step (warm-up) and on the last
/// (`lower_order_final`), 2 otherwise.
pub fn predictor_order(i: usize, n: usize) -> usize {
    assert!(i < n, "step {i} out of range for {n} steps");
    2.min(i + 1).min(n - i)
}

/// The bh2 step quantities between `sigma_s` and `sigma_t`: `(h, h_phi_1, B_h)` with
/// `h = lambda_t - lambda_s`, `h_phi_1 = expm1(-h)` and, for bh2, `B_h = expm1(-h)` as well.
fn bh2(sigma_s: f32, sigma_t: f32) -> (f64, f64, f64) {
    let h = lambda(sigma_t) - lambda(sigma_s);
    let h_phi_1 = (-h).exp_m1();
    (h, h_phi_1, h_phi_1)
}

/// Predictor coefficients of step `i` at the given order (1 or 2) on `sigmas` (`n + 1` entries).
pub fn predictor(sigmas: &[f32], i: usize, order: usize) -> PredictorCoefficients {
    assert!(
        order == 1 || (order == 2 && i >= 1),
        "predictor order {order} at step {i}"
    );
    let (s0, t) = (sigmas[i], sigmas[i + 1]);
    if t == 0.0 {
        // lambda_t = +inf, h_phi_1 = -1, alpha_t = 1: the step lands on the x0 prediction. Only
        // order 1 is well defined here (order 2 would divide inf by inf), and lower_order_final
        // guarantees it on a grid ending in 0.
        assert_eq!(order, 1, "a step to sigma = 0 must be order 1");
        return PredictorCoefficients {
            sample: 0.0,
            cur: 1.0,
            prev: 0.0,
        };
    }
    let alpha_t = 1.0 - t as f64;
    let (h, h_phi_1, b_h) = bh2(s0, t);
    let mut c = PredictorCoefficients {
        sample: t as f64 / s0 as f64,
        cur: -alpha_t * h_phi_1,
        prev: 0.0,
    };
    if order == 2 {
        // D1 = (m_{i-1} - m_i) / r1 with r1 = (lambda_{i-1} - lambda_i) / h, weighted by
        // rho_p = 0.5 (diffusers' "simplified" order-2 predictor).
        let r1 = (lambda(sigmas[i - 1]) - lambda(s0)) / h;
        let w = -alpha_t * b_h * 0.5 / r1;
        c.prev += w;
        c.cur -= w;
    }
    c
}

/// Corrector coefficients of step `i >= 1` at the given order (1 or 2), the order predictor
/// `i - 1` ran at.
pub fn corrector(sigmas: &[f32], i: usize, order: usize) -> CorrectorCoefficients {
    assert!(i >= 1, "step 0 has no corrector");
    assert!(
        order == 1 || (order == 2 && i >= 2),
        "corrector order {order} at step {i}"
    );
    let (s0, t) = (sigmas[i - 1], sigmas[i]);
    let alpha_t = 1.0 - t as f64;
    let (h, h_phi_1, b_h) = bh2(s0, t);
    let hh = -h;
    // b_k = h_phi_k * k! / B_h with h_phi_1 / hh - 1 and then h_phi_{k+1} = h_phi_k / hh - 1/(k+1)!.
    let h_phi_k1 = h_phi_1 / hh - 1.0;
    let b1 = h_phi_k1 / b_h;
    let (rho_prev, rho_cur, r1) = if order == 1 {
        (0.0, 0.5, 1.0)
    } else {
        let h_phi_k2 = h_phi_k1 / hh - 0.5;
        let b2 = h_phi_k2 * 2.0 / b_h;
        // Solve [[1, 1], [r1, 1]] (rho_prev, rho_cur) = (b1, b2) (diffusers' linalg.solve).
        let r1 = (lambda(sigmas[i - 2]) - lambda(s0)) / h;
        let rho_prev = (b1 - b2) / (1.0 - r1);
        (rho_prev, b1 - rho_prev, r1)
    };
    // x^c = (t/s0) x^c_{i-1} - alpha_t h_phi_1 m_{i-1}
    //       - alpha_t B_h (rho_prev (m_{i-2} - m_{i-1}) / r1 + rho_cur (m_i - m_{i-1}))
    let d1_weight = -alpha_t * b_h * rho_prev / r1;
    let cur = -alpha_t * b_h * rho_cur;
    CorrectorCoefficients {
        last_sample: t as f64 / s0 as f64,
        cur,
        prev: -alpha_t * h_phi_1 - cur - d1_weight,
        prev2: d1_weight,
    }
}

/// All coefficients of step `i` on a grid of `n = sigmas.len() - 1` steps.
pub fn step_coefficients(sigmas: &[f32], i: usize) -> StepCoefficients {
    let n = sigmas.len() - 1;
    StepCoefficients {
        corrector: (i >= 1).then(|| corrector(sigmas, i, predictor_order(i - 1, n))),
        predictor: predictor(sigmas, i, predictor_order(i, n)),
    }
}

/// `d x_{i+1} / d v_i` with `x_i` and the history held fixed: `v_i` enters through
/// `m_i = x_i - sigma_i v_i`, once in the predictor and once through the corrected sample.
pub fn output_coefficient(sigmas: &[f32], i: usize) -> f64 {
    let c = step_coefficients(sigmas, i);
    let via_corrector = c.corrector.map_or(0.0, |k| c.predictor.sample * k.cur);
    -(sigmas[i] as f64) * (c.predictor.cur + via_corrector)
}
