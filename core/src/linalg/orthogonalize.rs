//! Orthogonalization X ↦ ≈U·Vᵀ by a fixed Newton–Schulz schedule or by the converged msign: Muon's
//! update direction and the Stiefel projection.

use std::sync::OnceLock;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::checks::{frobenius_norm, matrix_dims};
use super::msign::msign;
use super::polynomial::{
    apply_odd_steps, max_on_unit_interval, OddStep, NS5_KELLER, NS5_LIPSCHITZ, NS6_JAX,
};
use crate::Result;

/// Which orthogonalization; every choice first divides by ‖X‖_F + eps so the spectrum lies in [0, 1].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Orthogonalizer {
    /// Keller Jordan's five steps of (3.4445, −4.7750, 2.0315): singular values land in ≈[0.68, 1.2].
    KellerNs5,
    /// The Lipschitz paper's six JAX steps: singular values ≥ 10⁻³·‖X‖_F land in [0.866, 0.99934].
    JaxNs6,
    /// The NanoGPT-Lipschitz five steps: singular values land in ≈[0.47, 1.145].
    LipschitzNs5,
    /// Converged msign: every singular value becomes 1, rank-deficient inputs completed to an isometry
    /// (≈22 steps in f32, several times the cost).
    Msign,
}

impl Orthogonalizer {
    /// The polynomial schedule; empty for `Msign`, which iterates to convergence.
    pub fn steps(self) -> &'static [OddStep] {
        match self {
            Orthogonalizer::KellerNs5 => &NS5_KELLER,
            Orthogonalizer::JaxNs6 => &NS6_JAX,
            Orthogonalizer::LipschitzNs5 => &NS5_LIPSCHITZ,
            Orthogonalizer::Msign => &[],
        }
    }

    /// The largest singular value the output can have: the composite's maximum on (0, 1] (1 for msign).
    /// Computed once per process.
    pub fn max_singular_value(self) -> f64 {
        static MAXIMA: OnceLock<[f64; 3]> = OnceLock::new();
        let maxima = MAXIMA.get_or_init(|| {
            [
                NS5_KELLER.as_slice(),
                NS6_JAX.as_slice(),
                NS5_LIPSCHITZ.as_slice(),
            ]
            .map(max_on_unit_interval)
        });
        match self {
            Orthogonalizer::KellerNs5 => maxima[0],
            Orthogonalizer::JaxNs6 => maxima[1],
            Orthogonalizer::LipschitzNs5 => maxima[2],
            Orthogonalizer::Msign => 1.0,
        }
    }
}

/// Orthogonalizes a 2-D `x`: X/(‖X‖_F + eps), then the schedule (Gram on the smaller side). A zero
/// matrix stays zero.
pub fn orthogonalize(x: &Tensor, method: Orthogonalizer, eps: f64) -> Result<Tensor> {
    matrix_dims(x, "orthogonalize")?;
    if method == Orthogonalizer::Msign {
        return msign(x);
    }
    let normalized = x.affine(1.0 / (frobenius_norm(x)? + eps), 0.0)?;
    apply_odd_steps(&normalized, method.steps())
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};
    use rand::SeedableRng;

    use super::*;
    use crate::linalg::polynomial::composite;
    use crate::linalg::svd::{singular_values, with_singular_values};
    use crate::rng::SpectraRng;

    #[test]
    fn matrix_path_reproduces_the_scalar_test_vectors() {
        // Singular values chosen so that after Frobenius normalization they are exactly the §9 table's σ
        // values: scale them so that ‖X‖_F = 1.
        let sig = [1.0, 0.8, 0.5, 0.3, 0.1, 0.01, 0.001];
        let fro = sig.iter().map(|s| s * s).sum::<f64>().sqrt();
        let mut rng = SpectraRng::seed_from_u64(21);
        for method in [
            Orthogonalizer::KellerNs5,
            Orthogonalizer::JaxNs6,
            Orthogonalizer::LipschitzNs5,
        ] {
            for (rows, cols) in [(9, 7), (7, 9)] {
                let x = with_singular_values(rows, cols, &sig, &mut rng, DType::F64, &Device::Cpu)
                    .unwrap();
                let out = singular_values(&orthogonalize(&x, method, 0.0).unwrap()).unwrap();
                let mut want: Vec<f64> = sig
                    .iter()
                    .map(|s| composite(method.steps(), s / fro))
                    .collect();
                want.sort_by(|a, b| b.total_cmp(a));
                for (g, w) in out.iter().zip(&want) {
                    // f64 all the way: agreement to rounding.
                    assert!((g - w).abs() < 1e-9, "{method:?} {rows}×{cols}: {g} vs {w}");
                }
            }
        }
    }

    #[test]
    fn maxima_are_cached_per_method() {
        assert!((Orthogonalizer::JaxNs6.max_singular_value() - 0.999335).abs() < 5e-6);
        assert!((Orthogonalizer::LipschitzNs5.max_singular_value() - 1.145020).abs() < 5e-6);
        assert!((Orthogonalizer::KellerNs5.max_singular_value() - 1.202369).abs() < 5e-6);
        assert_eq!(Orthogonalizer::Msign.max_singular_value(), 1.0);
    }

    #[test]
    fn zero_stays_zero() {
        let z = Tensor::zeros((3, 5), DType::F32, &Device::Cpu).unwrap();
        for m in [Orthogonalizer::JaxNs6, Orthogonalizer::Msign] {
            let out = orthogonalize(&z, m, 1e-12).unwrap();
            assert_eq!(
                out.abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap(),
                0.0
            );
        }
    }
}
