//! Odd matrix polynomials `X ← aX + bX(XᵀX) + cX(XᵀX)²`, the engine behind Newton–Schulz
//! orthogonalization, the spectral soft cap, the spectral hard cap and msign.
//!
//! Such a step maps every singular value σ of X to `aσ + bσ³ + cσ⁵` and keeps the singular vectors, so
//! a composite of steps acts on the spectrum as the scalar composite of the polynomials. The Gram
//! matrix is always formed on the smaller side (`XᵀX` for a tall X, `XXᵀ` for a wide one), so a step on
//! an m×n matrix with m ≥ n costs `4mn² + 2n³` flops (`4mn²` for a cubic step).

use candle_core::{DType, Tensor};

use crate::Result;

pub use super::odd_step::OddStep;

/// Keller Jordan's Muon: five steps of (3.4445, −4.7750, 2.0315) (docs/lipschitz.md §4.2).
pub const NS5_KELLER: [OddStep; 5] = [OddStep::new(3.4445, -4.7750, 2.0315); 5];

/// The six steps of the Lipschitz paper's JAX Muon, coefficients ×1/1024 (docs/lipschitz.md §4.2).
pub const NS6_JAX: [OddStep; 6] = [
    OddStep::new(3955.0 / 1024.0, -8306.0 / 1024.0, 5008.0 / 1024.0),
    OddStep::new(3735.0 / 1024.0, -6681.0 / 1024.0, 3463.0 / 1024.0),
    OddStep::new(3799.0 / 1024.0, -6499.0 / 1024.0, 3211.0 / 1024.0),
    OddStep::new(4019.0 / 1024.0, -6385.0 / 1024.0, 2906.0 / 1024.0),
    OddStep::new(2677.0 / 1024.0, -3029.0 / 1024.0, 1162.0 / 1024.0),
    OddStep::new(2172.0 / 1024.0, -1833.0 / 1024.0, 682.0 / 1024.0),
];

/// The five steps of the NanoGPT-Lipschitz script's `orthogonalize_torch` (docs/lipschitz.md §4.2).
pub const NS5_LIPSCHITZ: [OddStep; 5] = [
    OddStep::new(4.0848, -6.8946, 2.9270),
    OddStep::new(3.9505, -6.3029, 2.6377),
    OddStep::new(3.7418, -5.5913, 2.3037),
    OddStep::new(2.8769, -3.1427, 1.2046),
    OddStep::new(2.8366, -3.0525, 1.2012),
];

/// Cesista's four-step approximation of min(1, σ) used by the spectral hard cap
/// (docs/lipschitz.md §4.3, §2.5). It diverges for σ ≳ 3.6: see [`HARD_CAP_SAFE_SIGMA`].
pub const HARD_CAP: [OddStep; 4] = [
    OddStep::new(0.805032, 0.206361, -0.019763),
    OddStep::new(0.649867, 0.162935, -0.011150),
    OddStep::new(1.810259, -0.200265, 0.008251),
    OddStep::new(1.004384, -0.183490, 0.014413),
];

/// The hard-cap composite never exceeds 1.0109 on [0, 3.5] and stays within [0.966, 1.011] on [1, 3.5],
/// but collapses just above (f(3.6) = 0.657, f(3.8) = −1.01, f(5) ≈ 6e126). Inputs whose σ_max may
/// exceed this are scaled down first.
pub const HARD_CAP_SAFE_SIGMA: f64 = 3.5;

/// The classical convergent quintic Newton–Schulz step (15σ − 10σ³ + 3σ⁵)/8: σ → 1 with third-order
/// convergence for σ in (0, 1.6], used to finish msign to full precision.
pub const NS_CONVERGENT: OddStep = OddStep::new(15.0 / 8.0, -10.0 / 8.0, 3.0 / 8.0);

/// The scalar composite `steps[k−1](… steps[0](σ))`.
pub fn composite(steps: &[OddStep], sigma: f64) -> f64 {
    steps.iter().fold(sigma, |s, step| step.eval(s))
}

/// max of the composite over (0, 1], the interval a Frobenius-normalized matrix's singular values lie
/// in. A grid of 2¹⁶ points finds the best cell, golden-section search refines inside its two
/// neighbouring cells (the composites here are smooth and unimodal at that resolution).
pub fn max_on_unit_interval(steps: &[OddStep]) -> f64 {
    const GRID: usize = 1 << 16;
    let h = 1.0 / GRID as f64;
    let (best_i, mut best) = (1..=GRID)
        .map(|i| (i, composite(steps, i as f64 * h)))
        .fold(
            (1, f64::NEG_INFINITY),
            |acc, x| if x.1 > acc.1 { x } else { acc },
        );
    let (mut lo, mut hi) = (
        ((best_i - 1) as f64) * h,
        ((best_i + 1) as f64 * h).min(1.0),
    );
    let ratio = (5f64.sqrt() - 1.0) / 2.0;
    for _ in 0..60 {
        let x1 = hi - ratio * (hi - lo);
        let x2 = lo + ratio * (hi - lo);
        if composite(steps, x1) < composite(steps, x2) {
            lo = x1;
        } else {
            hi = x2;
        }
    }
    best = best.max(composite(steps, 0.5 * (lo + hi)));
    best
}

/// Applies the steps to the matrix `x` (2-D), forming each Gram matrix on the smaller side.
///
/// The products run in `x`'s dtype (f32 on the CPU on spectra's own product, the same steps over
/// plain buffers). For bf16/f16, whose 8 or 11 significant bits cannot hold the
/// coefficients (3955/1024 would round by 0.1%), the small n×n polynomial is formed in f32 and rounded
/// once before each product, as PyTorch's reduced-precision arithmetic does with float coefficients.
pub fn apply_odd_steps(x: &Tensor, steps: &[OddStep]) -> Result<Tensor> {
    let (rows, cols) = x.dims2()?;
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        return super::polynomial_cpu::apply_odd_steps_f32(x, steps);
    }
    let tall = rows >= cols;
    let n = rows.min(cols);
    let dtype = x.dtype();
    let exact = match dtype {
        DType::BF16 | DType::F16 => DType::F32,
        other => other,
    };
    let eye = Tensor::eye(n, exact, x.device())?;
    let mut x = x.clone();
    for step in steps {
        let gram = if tall {
            x.t()?.matmul(&x)?
        } else {
            x.matmul(&x.t()?)?
        };
        // P = aI + bA + cA² as A(cA + bI) + aI: one n×n product, then a single m×n product with X.
        let gram_exact = gram.to_dtype(exact)?;
        let inner = if step.c == 0.0 {
            gram_exact.affine(step.b, 0.0)?
        } else {
            let factor = (gram_exact.affine(step.c, 0.0)? + eye.affine(step.b, 0.0)?)?;
            gram.matmul(&factor.to_dtype(dtype)?)?.to_dtype(exact)?
        };
        let poly = (inner + eye.affine(step.a, 0.0)?)?.to_dtype(dtype)?;
        x = if tall {
            x.matmul(&poly)?
        } else {
            poly.matmul(&x)?
        };
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values of docs/lipschitz.md §5 are printed to 6 decimals.
    const SPEC_DIGITS: f64 = 5e-6;

    #[test]
    fn composites_match_the_spec_test_vectors() {
        // docs/lipschitz.md §5: σ, NS6 (JAX), NS5 (NanoGPT-Lipschitz), NS5 Keller.
        let table = [
            (0.001, 0.866304, 0.474982, 0.470544),
            (0.01, 0.998782, 1.018025, 0.698917),
            (0.1, 0.996136, 1.019050, 0.712120),
            (0.3, 0.995601, 0.996224, 1.079592),
            (0.5, 0.996171, 0.985869, 0.765439),
            (0.8, 0.996848, 1.005632, 1.119204),
            (1.0, 0.998412, 0.978346, 0.696436),
        ];
        for (s, ns6, ns5l, keller) in table {
            assert!(
                (composite(&NS6_JAX, s) - ns6).abs() < SPEC_DIGITS,
                "NS6 at {s}"
            );
            assert!(
                (composite(&NS5_LIPSCHITZ, s) - ns5l).abs() < SPEC_DIGITS,
                "NS5-Lipschitz at {s}"
            );
            assert!(
                (composite(&NS5_KELLER, s) - keller).abs() < SPEC_DIGITS,
                "Keller at {s}"
            );
        }
    }

    #[test]
    fn maxima_on_the_unit_interval_match_the_spec() {
        assert!((max_on_unit_interval(&NS6_JAX) - 0.999335).abs() < SPEC_DIGITS);
        assert!((max_on_unit_interval(&NS5_LIPSCHITZ) - 1.145020).abs() < SPEC_DIGITS);
        assert!((max_on_unit_interval(&NS5_KELLER) - 1.202369).abs() < SPEC_DIGITS);
    }

    #[test]
    fn hard_cap_composite_matches_the_spec() {
        // docs/lipschitz.md §5 prints these to 4 decimals.
        let table = [
            (0.1, 0.0953),
            (0.5, 0.4979),
            (0.8, 0.8127),
            (1.0, 0.9661),
            (1.2, 1.0107),
            (1.5, 1.0013),
            (2.0, 1.0020),
            (3.0, 1.0009),
            (4.0, -0.9984),
        ];
        for (s, f) in table {
            assert!(
                (composite(&HARD_CAP, s) - f).abs() < 5e-5,
                "hard cap at {s}"
            );
        }
        let safe = (0..=3500).map(|i| i as f64 / 1000.0);
        assert!(
            safe.clone().all(|s| composite(&HARD_CAP, s) <= 1.0109),
            "the bound claimed in the docs"
        );
        let capped = safe.filter(|&s| s >= 1.0).map(|s| composite(&HARD_CAP, s));
        assert!(
            capped.into_iter().all(|f| (0.966..=1.011).contains(&f)),
            "the range claimed in the docs"
        );
    }

    #[test]
    fn the_convergent_step_fixes_one_and_converges_from_below_and_above() {
        assert!((NS_CONVERGENT.eval(1.0) - 1.0).abs() < 1e-15);
        for start in [0.05, 0.5, 1.5] {
            let s = (0..12).fold(start, |s, _| NS_CONVERGENT.eval(s));
            assert!((s - 1.0).abs() < 1e-12, "from {start}: {s}");
        }
    }
}
