//! The matrix sign msign(X) = U·Vᵀ (for X = U·Σ·Vᵀ) to full precision, and the exact spectral clip
//! built from it.

use candle_core::Tensor;

use super::checks::{frobenius_norm, matrix_dims};
use super::polynomial::{apply_odd_steps, NS5_KELLER, NS_CONVERGENT};
use crate::Result;

/// Keller's step maps any σ in (0, 1] into [0.68, 1.2] within five steps and multiplies smaller
/// values by 3.44 per step: eighteen steps bring every σ ≥ 2·10⁻¹⁰·‖X‖_F into the convergent step's
/// basin, which in f32 is every direction, rounding noise included.
const LIFT_STEPS: usize = 18;
/// The convergent step is third order: from 0.68 it reaches f32 precision in four steps. Directions
/// still small after the lift (f64 rounding noise) grow 1.875× per step until they converge too.
const MAX_CONVERGE_STEPS: usize = 30;
/// Relative change ‖Xₖ₊₁ − Xₖ‖_F / ‖Xₖ‖_F at which the iteration has converged (≈ 8 f32 ulps).
const CONVERGED: f64 = 1e-6;

/// msign(X) = U·Vᵀ: every singular value set to 1, singular vectors kept, iterated until converged
/// (typically 22 odd quintic steps in f32, at most 48). Directions whose singular values are at rounding
/// level are completed to an isometry like the others: numerically they cannot be told from noise, so
/// a rank-deficient X gets an arbitrary orthonormal completion. A zero matrix stays zero.
pub fn msign(x: &Tensor) -> Result<Tensor> {
    matrix_dims(x, "msign")?;
    let norm = frobenius_norm(x)?;
    if norm == 0.0 {
        return Ok(x.clone());
    }
    let mut y = apply_odd_steps(&x.affine(1.0 / norm, 0.0)?, &[NS5_KELLER[0]; LIFT_STEPS])?;
    for _ in 0..MAX_CONVERGE_STEPS {
        let next = apply_odd_steps(&y, &[NS_CONVERGENT])?;
        let change = frobenius_norm(&(&next - &y)?)? / frobenius_norm(&y)?;
        y = next;
        if change < CONVERGED {
            break;
        }
    }
    Ok(y)
}

/// The exact clip U·min(Σ, 1)·Vᵀ, from `min(σ, 1) = (σ + 1 − |1 − σ|)/2` lifted to matrices:
/// `clip(W) = ½[W + O − (O − W)·msign(O − W)ᵀ·O]` with O = msign(W) (docs/lipschitz.md §4.4).
/// Two msigns and two products.
pub fn clip_singular_values(w: &Tensor) -> Result<Tensor> {
    let o = msign(w)?;
    let d = (&o - w)?;
    let s = msign(&d)?;
    // (O − W)·Sᵀ·O, grouped so that the inner product is on the smaller side.
    let (rows, cols) = w.dims2()?;
    let correction = if rows >= cols {
        d.matmul(&s.t()?.matmul(&o)?)?
    } else {
        d.matmul(&s.t()?)?.matmul(&o)?
    };
    Ok(((w + &o)? - correction)?.affine(0.5, 0.0)?)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};
    use rand::SeedableRng;

    use super::*;
    use crate::linalg::svd::{singular_values, with_singular_values};
    use crate::rng::SpectraRng;

    #[test]
    fn msign_sets_every_singular_value_to_one() {
        let mut rng = SpectraRng::seed_from_u64(11);
        // Condition number 10⁴, then exact zeros: rounding turns those into tiny singular values, which
        // msign either completes like any other (f32 noise is lifted) or leaves at rounding level (f64
        // noise stays below the convergence test's resolution). Never in between.
        let sig = [3.0, 1.0, 0.1, 1e-3, 3e-4];
        for dtype in [DType::F64, DType::F32] {
            for (rows, cols) in [(12, 12), (16, 6), (6, 16)] {
                let x =
                    with_singular_values(rows, cols, &sig, &mut rng, dtype, &Device::Cpu).unwrap();
                let s = singular_values(&msign(&x).unwrap()).unwrap();
                // Converged to a relative change of 1e-6 per step; f32 rounding adds ~1e-6.
                assert!(
                    s[..sig.len()].iter().all(|s| (s - 1.0).abs() < 1e-4),
                    "{dtype:?} {rows}×{cols}: {s:?}"
                );
                assert!(
                    s.iter().all(|s| (s - 1.0).abs() < 1e-4 || *s < 1e-4),
                    "{dtype:?} {rows}×{cols}: {s:?}"
                );
            }
        }
    }

    #[test]
    fn clip_is_min_sigma_one() {
        let mut rng = SpectraRng::seed_from_u64(12);
        for (rows, cols) in [(10, 10), (14, 5), (5, 14)] {
            // Rank-deficient for the 10×10 case: its zero directions must stay zero.
            let sig = [40.0, 3.0, 1.2, 0.7, 1e-3];
            for dtype in [DType::F64, DType::F32] {
                let x =
                    with_singular_values(rows, cols, &sig, &mut rng, dtype, &Device::Cpu).unwrap();
                let s = singular_values(&clip_singular_values(&x).unwrap()).unwrap();
                for (i, got) in s.iter().enumerate() {
                    let want = sig.get(i).copied().unwrap_or(0.0).min(1.0);
                    // f32 products of entries up to 40: absolute error ~1e-5·40.
                    assert!(
                        (got - want).abs() < 2e-3,
                        "{dtype:?} {rows}×{cols}: σ_{i} = {got}, want {want}"
                    );
                }
            }
        }
    }
}
