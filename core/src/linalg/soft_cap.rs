//! The spectral soft cap's two cubic steps and the coupling of their strength α to w_max, the weight
//! decay and the optimizer's update bound (docs/lipschitz.md §2.4).

use super::polynomial::OddStep;

/// The soft cap as odd steps: σ ↦ σ − ασ³, then q ↦ q + αq³. Composite
/// f(σ) = σ − 3α²σ⁵ + 3α³σ⁷ − α⁴σ⁹.
pub fn soft_cap_steps(alpha: f64) -> [OddStep; 2] {
    [
        OddStep::new(1.0, -alpha, 0.0),
        OddStep::new(1.0, alpha, 0.0),
    ]
}

/// f is increasing on [0, k] exactly when β = αk² ≤ 1/3 (f′(σ) = 1 − 15x² + 21x³ − 9x⁴ with x = ασ²
/// has its first positive root at x = 1/3), which holds when k ≤ w_max/(1 − 19/81) ≈ 1.3065·w_max,
/// i.e. for an update bound η ≤ 0.3065·w_max without decay. Beyond it the inductive guarantee
/// σ_max ≤ w_max no longer holds: the largest value f takes on [0, k] is (62/81)/√(3α) > w_max.
pub const SOFT_CAP_MONOTONE_BETA: f64 = 1.0 / 3.0;

/// The reference `soft_cap_coupling(w_max, wd, η)`: the α with f(k) = w_max for
/// k = w_max·(1 − wd) + η, the largest singular value a matrix with σ_max ≤ w_max can have after the
/// decay and one update of norm ≤ η.
///
/// With β = αk² the condition f(k) = w_max reads β²(β² − 3β + 3) = 1 − w_max/k, whose left side
/// increases strictly from 0 at β = 0 to 1 at β = 1 (its quadratic factor has no real roots), so
/// bisection on [0, 1] finds the unique root. Edge cases, as in the reference:
/// - k = w_max: α = 0 (nothing to cap);
/// - k < w_max (only when wd > η/w_max): the quartic has no nonnegative root and the reference returns
///   α = 1.0, which shrinks every singular value hard (f(1) = 0). Configure the decay below η/w_max.
pub fn soft_cap_alpha(w_max: f64, wd: f64, eta: f64) -> f64 {
    let k = w_max * (1.0 - wd) + eta;
    if k < w_max {
        return 1.0;
    }
    if k == w_max {
        return 0.0;
    }
    soft_cap_beta(1.0 - w_max / k) / (k * k)
}

/// The β in [0, 1] with β²(β² − 3β + 3) = target, for target in [0, 1].
fn soft_cap_beta(target: f64) -> f64 {
    let g = |b: f64| b * b * (b * b - 3.0 * b + 3.0);
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    // 64 halvings reach the spacing of f64 on [0, 1].
    for _ in 0..64 {
        let mid = 0.5 * (lo + hi);
        if g(mid) < target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::polynomial::composite;

    #[test]
    fn alpha_matches_the_spec_test_vectors() {
        // docs/lipschitz.md §5: (w_max, η, α), printed to 6 significant digits.
        let table = [
            (1.0, 0.1, 0.158864),
            (1.0, 0.05, 0.122439),
            (1.0, 0.01, 0.0580251),
            (2.0, 0.1, 0.0306098),
            (6.0, 0.0296, 0.00113604),
            (6.0, 0.0889, 0.00195185),
            (1.0, 0.05 * 1.14502 * 1.05, 0.131992),
        ];
        for (w_max, eta, alpha) in table {
            let got = soft_cap_alpha(w_max, 0.0, eta);
            assert!(
                (got / alpha - 1.0).abs() < 5e-6,
                "w_max {w_max}, η {eta}: {got} vs {alpha}"
            );
        }
        let beta = soft_cap_alpha(1.0, 0.0, 0.1) * 1.1 * 1.1;
        assert!((beta - 0.192226).abs() < 5e-7, "β for (1, 0.1): {beta}");
    }

    #[test]
    fn the_map_sends_k_to_w_max() {
        let alpha = soft_cap_alpha(1.0, 0.0, 0.1);
        let f = |s| composite(&soft_cap_steps(alpha), s);
        // f(k) = w_max is the defining equation: exact up to f64 rounding.
        assert!((f(1.1) - 1.0).abs() < 1e-12);
        assert!((f(1.0) - 0.935678).abs() < 5e-7 && (f(0.5) - 0.497727).abs() < 5e-7);
        // The fixed-α values of docs/lipschitz.md §5.
        assert!((composite(&soft_cap_steps(0.05), 1.0) - 0.992869).abs() < 5e-7);
        assert!((composite(&soft_cap_steps(0.05), 2.0) - 1.804800).abs() < 5e-7);
        assert!((composite(&soft_cap_steps(0.01), 1.0) - 0.999703).abs() < 5e-7);
        // With decay: k = 2·(1 − 0.01) + 0.1 = 2.08.
        let a = soft_cap_alpha(2.0, 0.01, 0.1);
        assert!((composite(&soft_cap_steps(a), 2.08) - 2.0).abs() < 1e-12);
    }

    #[test]
    fn edge_cases_follow_the_reference() {
        assert_eq!(soft_cap_alpha(1.0, 0.0, 0.0), 0.0);
        assert_eq!(
            soft_cap_alpha(1.0, 0.2, 0.1),
            1.0,
            "k < w_max: the reference's fallback"
        );
    }

    #[test]
    fn monotone_exactly_up_to_beta_one_third() {
        let fprime = |x: f64| 1.0 - 15.0 * x * x + 21.0 * x.powi(3) - 9.0 * x.powi(4);
        assert!(fprime(SOFT_CAP_MONOTONE_BETA).abs() < 1e-12);
        assert!(
            fprime(SOFT_CAP_MONOTONE_BETA - 1e-3) > 0.0
                && fprime(SOFT_CAP_MONOTONE_BETA + 1e-3) < 0.0
        );
        // The η at which β reaches 1/3 for w_max = 1: k = 81/62.
        let k = 81.0 / 62.0;
        assert!((soft_cap_alpha(1.0, 0.0, k - 1.0) * k * k - 1.0 / 3.0).abs() < 1e-12);
    }
}
