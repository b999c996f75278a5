//! Orthogonalization X ↦ ≈U·Vᵀ by a fixed Newton–Schulz schedule or by the converged msign: Muon's
//! update direction and the Stiefel projection.

use std::sync::OnceLock;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::checks::{frobenius_norm, matrix_dims};
use super::msign::msign;
use super::polynomial::{
    apply_odd_steps, max_on_unit_interval, OddStep, NS5_KELLER, NS5_LIPSCHITZ, NS6_JAX,
};
use crate::{Error, Result};

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

/// The precision of the Newton–Schulz products.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrthogonalizeDtype {
    /// The input's own precision: f32 for every spectra model (an f64 input stays f64).
    #[default]
    F32,
    /// bfloat16 products with f32 accumulation, as Keller Jordan's and modded-NanoGPT's Muon do: on
    /// tensor-core GPUs several times the f32 speed. The output's singular values move by up to
    /// [`BF16_SIGMA_SLACK`] relative (measured in the tests), which update bounds must include.
    Bf16,
}

impl OrthogonalizeDtype {
    pub fn is_f32(&self) -> bool {
        *self == OrthogonalizeDtype::F32
    }
}

/// A bound on how far bf16 products move the output's singular values, relative: the largest can
/// exceed the schedule's f32 maximum ([`Orthogonalizer::max_singular_value`]) by this fraction. Each
/// step's product is rounded to bf16 (relative 2⁻⁹ per entry), which perturbs a near-isometry's
/// singular values by a random-matrix amount of the same order; the later steps pull singular values
/// back towards their fixed points, so errors do not compound, and the perturbation's spectral norm does
/// not grow with the matrix size (entries ~1/√rows rounded independently). The tests measure ≤ 0.74%
/// over shapes from 16×64 to 512×128 and full-rank, ill-conditioned and rank-deficient spectra; this
/// leaves a margin of 4.
pub const BF16_SIGMA_SLACK: f64 = 0.03;

impl OrthogonalizeDtype {
    /// The largest singular value the output can have, `method`'s f32 maximum widened by the bf16
    /// rounding allowance where it applies.
    pub fn max_singular_value(self, method: Orthogonalizer) -> f64 {
        match (self, method) {
            (_, Orthogonalizer::Msign) | (OrthogonalizeDtype::F32, _) => {
                method.max_singular_value()
            }
            (OrthogonalizeDtype::Bf16, _) => method.max_singular_value() * (1.0 + BF16_SIGMA_SLACK),
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

/// [`orthogonalize`] with ‖X‖_F² already known — `sum_sq`, a one-element tensor on `x`'s device,
/// such as the fused Muon momentum's — so that the normalization needs neither a reduction pass nor
/// a host round trip; the schedule's products run in `dtype`, the result is in `x`'s dtype. `Msign`
/// iterates to convergence in `x`'s own dtype (bf16 could not resolve its stopping test) and
/// computes its own norm.
pub fn orthogonalize_normalized_by(
    x: &Tensor,
    sum_sq: &Tensor,
    method: Orthogonalizer,
    dtype: OrthogonalizeDtype,
    eps: f64,
) -> Result<Tensor> {
    matrix_dims(x, "orthogonalize")?;
    if method == Orthogonalizer::Msign {
        return msign(x);
    }
    if sum_sq.elem_count() != 1 {
        return Err(Error::invalid(
            "orthogonalize",
            format!(
                "the squared Frobenius norm must be one number, got shape {:?}",
                sum_sq.dims()
            ),
        ));
    }
    let scale = sum_sq
        .flatten_all()?
        .sqrt()?
        .affine(1.0, eps)?
        .recip()?
        .to_dtype(x.dtype())?;
    let work_dtype = match dtype {
        OrthogonalizeDtype::F32 => x.dtype(),
        OrthogonalizeDtype::Bf16 => DType::BF16,
    };
    let normalized = x.broadcast_mul(&scale)?.to_dtype(work_dtype)?;
    Ok(apply_odd_steps(&normalized, method.steps())?.to_dtype(x.dtype())?)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};
    use rand::SeedableRng;

    use super::*;
    use crate::linalg::frobenius_norm;
    use crate::linalg::polynomial::composite;
    use crate::linalg::svd::{singular_values, with_singular_values};
    use crate::rng::SpectraRng;

    #[test]
    fn matrix_path_reproduces_the_scalar_test_vectors() {
        // Singular values chosen so that after Frobenius normalization they are exactly the σ
        // values of the table in docs/lipschitz.md §5: scale them so that ‖X‖_F = 1.
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

    /// One measured comparison of bf16 against f32 products.
    struct Bf16Deviation {
        /// ‖O_bf16 − O_f32‖_F / ‖O_f32‖_F.
        relative_frobenius: f64,
        /// max_i |σ_i(O_bf16) − f(σ_i(X)/‖X‖_F)|, f the schedule's exact scalar composite.
        sigma_error: f64,
        /// σ_max(O_bf16) / the f32 schedule's maximum.
        sigma_max_ratio: f64,
    }

    fn bf16_deviation(x: &Tensor, sigmas: &[f64], method: Orthogonalizer) -> Bf16Deviation {
        let sum_sq = x
            .to_dtype(DType::F64)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap();
        let fro = sum_sq.to_scalar::<f64>().unwrap().sqrt();
        let run = |dtype| orthogonalize_normalized_by(x, &sum_sq, method, dtype, 1e-12).unwrap();
        let (o32, o16) = (run(OrthogonalizeDtype::F32), run(OrthogonalizeDtype::Bf16));
        assert_eq!(
            o16.dtype(),
            DType::F32,
            "the result comes back in the input's dtype"
        );
        let s16 = singular_values(&o16).unwrap();
        let mut want: Vec<f64> = sigmas
            .iter()
            .map(|s| composite(method.steps(), s / fro))
            .collect();
        want.resize(s16.len(), 0.0);
        want.sort_by(|a, b| b.total_cmp(a));
        Bf16Deviation {
            relative_frobenius: frobenius_norm(&(&o16 - &o32).unwrap()).unwrap()
                / frobenius_norm(&o32).unwrap(),
            sigma_error: s16
                .iter()
                .zip(&want)
                .map(|(g, w)| (g - w).abs())
                .fold(0.0, f64::max),
            sigma_max_ratio: s16[0] / method.max_singular_value(),
        }
    }

    #[test]
    fn bf16_products_move_the_result_by_a_bounded_amount() {
        let mut rng = SpectraRng::seed_from_u64(5);
        for (rows, cols) in [(64, 16), (16, 64), (128, 128), (256, 256), (512, 128)] {
            let k = rows.min(cols);
            // Full-rank spectra like a momentum buffer's: flat, and decaying as 1/i; then condition
            // number 10³ (log-uniform), then rank k/2 (exact zeros).
            let spectra: [(&str, Vec<f64>); 4] = [
                ("flat", vec![1.0; k]),
                ("1/i", (0..k).map(|i| 1.0 / (i + 1) as f64).collect()),
                (
                    "log-uniform",
                    (0..k)
                        .map(|i| 10f64.powf(-3.0 * i as f64 / (k - 1) as f64))
                        .collect(),
                ),
                (
                    "rank k/2",
                    (0..k / 2).map(|i| 1.0 + i as f64 / k as f64).collect(),
                ),
            ];
            for (kind, sigmas) in spectra {
                let x =
                    with_singular_values(rows, cols, &sigmas, &mut rng, DType::F32, &Device::Cpu)
                        .unwrap();
                for method in [
                    Orthogonalizer::JaxNs6,
                    Orthogonalizer::LipschitzNs5,
                    Orthogonalizer::KellerNs5,
                ] {
                    let dev = bf16_deviation(&x, &sigmas, method);
                    let what = format!(
                        "{method:?} {rows}×{cols} {kind}: ‖ΔO‖/‖O‖ {:.4}, σ error {:.4}, σ_max/f32 max {:.4}",
                        dev.relative_frobenius, dev.sigma_error, dev.sigma_max_ratio
                    );
                    // The bound Muon reports for bf16 holds (measured σ_max ≤ 1.0074× the f32 maximum).
                    assert!(dev.sigma_max_ratio <= 1.0 + BF16_SIGMA_SLACK, "{what}");
                    // bf16 rounds each step's product to 2⁻⁹ ≈ 0.002 relative; a singular value's error
                    // is that, times the slopes of the later steps' polynomials at it. Bounds about twice
                    // the worst measured here:
                    let (frobenius, sigma) = match kind {
                        // Full rank: the singular values sit where the slopes are small. Measured ≤ 2.1%
                        // Frobenius and ≤ 0.030 per singular value.
                        "flat" | "1/i" => (0.05, 0.06),
                        // Singular values down to 10⁻³·σ_max/‖X‖_F sit on the steep first slopes (×3.9 per
                        // step), which amplify their rounding: measured ≤ 12% Frobenius, ≤ 0.035 per
                        // singular value.
                        "log-uniform" => (0.25, 0.07),
                        // Exact null directions: f32 leaves them at rounding level (≤ 4e-5), bf16's rounding
                        // noise is lifted like any small singular value, up to 0.66 (measured; 49%
                        // Frobenius). Only the σ_max bound above holds there.
                        _ => (0.8, 0.9),
                    };
                    assert!(
                        dev.relative_frobenius < frobenius && dev.sigma_error < sigma,
                        "{what}"
                    );
                }
            }
        }
    }

    #[test]
    fn normalizing_by_a_given_norm_matches_computing_it() {
        let mut rng = SpectraRng::seed_from_u64(6);
        let x = with_singular_values(20, 12, &[3.0, 1.0, 0.2], &mut rng, DType::F32, &Device::Cpu)
            .unwrap();
        let sum_sq = x
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        for method in [Orthogonalizer::JaxNs6, Orthogonalizer::Msign] {
            let given =
                orthogonalize_normalized_by(&x, &sum_sq, method, OrthogonalizeDtype::F32, 1e-12)
                    .unwrap();
            let computed = orthogonalize(&x, method, 1e-12).unwrap();
            let diff = frobenius_norm(&(given - computed).unwrap()).unwrap();
            // The two normalizations differ only in how ‖X‖_F is rounded (f32 either way): a few
            // f32 ulps, carried through six steps.
            assert!(diff < 1e-5, "{method:?}: {diff}");
        }
        let err = orthogonalize_normalized_by(
            &x,
            &Tensor::zeros(2, DType::F64, &Device::Cpu).unwrap(),
            Orthogonalizer::JaxNs6,
            OrthogonalizeDtype::F32,
            1e-12,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("one number") && err.contains("[2]"), "{err}");
    }

    #[test]
    fn the_bf16_bound_widens_only_polynomial_schedules() {
        let jax = Orthogonalizer::JaxNs6;
        assert_eq!(
            OrthogonalizeDtype::F32.max_singular_value(jax),
            jax.max_singular_value()
        );
        assert_eq!(
            OrthogonalizeDtype::Bf16.max_singular_value(jax),
            jax.max_singular_value() * (1.0 + BF16_SIGMA_SLACK)
        );
        assert_eq!(
            OrthogonalizeDtype::Bf16.max_singular_value(Orthogonalizer::Msign),
            1.0
        );
    }
}
