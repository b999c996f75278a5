//! The top singular direction of a weight, by power iteration from a fresh seeded vector (the
//! reference) or from the vector the previous step ended with, kept in the constraint's state.

use candle_core::Tensor;
use spectra_core::linalg::{
    all_finite, frobenius_norm, iterate_len, power_iterate, StartVector, TopSingular,
};
use spectra_core::{ConstraintContext, Result, SpectraRng};

/// The state key of the persistent vector; it is saved in checkpoints with the parameter's state.
pub(crate) const POWER_VECTOR: &str = "power_vector";

/// Power iteration on `w`. With `persistent`, it starts from the stored vector when one of the right
/// length is there (a fresh vector otherwise, e.g. on the first step or after a shape change) and
/// stores the new iterate.
pub(crate) fn top_singular(
    w: &Tensor,
    iters: usize,
    persistent: bool,
    ctx: &mut ConstraintContext<'_>,
) -> Result<TopSingular> {
    let (rows, cols) = w.dims2()?;
    let stored = match ctx.state.get(POWER_VECTOR) {
        Some(v) if persistent && usable(v, iterate_len(rows, cols))? => Some(v.clone()),
        _ => None,
    };
    let top = match &stored {
        Some(v) => power_iterate(w, StartVector::Given(v), iters)?,
        None => power_iterate(w, StartVector::Random(ctx.rng), iters)?,
    };
    if persistent {
        ctx.state
            .insert(POWER_VECTOR.to_string(), top.iterate.clone());
    }
    Ok(top)
}

/// Power iterations behind [`at_most`]: components 1.75× below σ_max decay by 1.75⁻⁶⁴ ≈ 3·10⁻¹⁶, so
/// an estimate more than 1.75× low needs a start vector within ~10⁻⁷ of orthogonal to the top
/// singular directions.
const GUARD_ITERS: usize = 16;

/// `n` scaled down so that its estimated σ_max is at most `limit`, for polynomial maps that only
/// behave on a bounded interval. ‖n‖_F ≤ limit proves σ_max ≤ limit without an estimate.
pub(crate) fn at_most(n: Tensor, limit: f64, rng: &mut SpectraRng) -> Result<Tensor> {
    if frobenius_norm(&n)? <= limit {
        return Ok(n);
    }
    let sigma = power_iterate(&n, StartVector::Random(rng), GUARD_ITERS)?.sigma;
    Ok(if sigma > limit {
        n.affine(limit / sigma, 0.0)?
    } else {
        n
    })
}

fn usable(v: &Tensor, len: usize) -> Result<bool> {
    Ok(v.elem_count() == len && all_finite(v)? && frobenius_norm(v)? > 0.0)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};
    use rand::SeedableRng;
    use spectra_core::linalg::svd::{sigma_max, with_singular_values};

    use super::*;

    #[test]
    fn at_most_scales_down_only_above_the_limit() {
        let mut rng = SpectraRng::seed_from_u64(1);
        let small =
            with_singular_values(8, 6, &[0.5, 0.2], &mut rng, DType::F32, &Device::Cpu).unwrap();
        let same = at_most(small.clone(), 1.0, &mut rng).unwrap();
        assert_eq!(
            same.to_vec2::<f32>().unwrap(),
            small.to_vec2::<f32>().unwrap(),
            "‖N‖_F ≤ limit: untouched"
        );
        // ‖N‖_F = √(0.9² + 0.8²·5) > 1 but σ_max = 0.9: untouched after the estimate.
        let wide = with_singular_values(
            8,
            6,
            &[0.9, 0.8, 0.8, 0.8, 0.8, 0.8],
            &mut rng,
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(
            at_most(wide.clone(), 1.0, &mut rng)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap(),
            wide.to_vec2::<f32>().unwrap()
        );
        // σ_max = 4 with a gap to 1: scaled to 2 (16 iterations converge to f32 precision).
        let big =
            with_singular_values(8, 6, &[4.0, 1.0], &mut rng, DType::F32, &Device::Cpu).unwrap();
        let scaled = sigma_max(&at_most(big, 2.0, &mut rng).unwrap()).unwrap();
        assert!((scaled - 2.0).abs() < 1e-5, "{scaled}");
    }
}
