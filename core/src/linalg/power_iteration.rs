//! Power iteration for the top singular triple (σ_max, u, v), iterating on the smaller Gram side.

use candle_core::Tensor;
use rand_distr::{Distribution, StandardNormal};

use super::checks::{frobenius_norm, matrix_dims};
use crate::rng::SpectraRng;
use crate::{Error, Result};

/// Where the iteration starts.
pub enum StartVector<'a> {
    /// A fresh Gaussian vector drawn from the generator (the reference code's behaviour,
    /// docs/lipschitz.md §4.5).
    Random(&'a mut SpectraRng),
    /// A given vector of length [`iterate_len`], e.g. the previous step's [`TopSingular::iterate`].
    Given(&'a Tensor),
}

/// The estimated top singular triple: `A·v ≈ σ·u`, u and v unit vectors as columns. For a zero matrix
/// σ = 0 and u, v are zero (it has no top direction).
#[derive(Clone, Debug)]
pub struct TopSingular {
    pub sigma: f64,
    /// rows×1.
    pub u: Tensor,
    /// cols×1.
    pub v: Tensor,
    /// The last unit iterate on the smaller side (1-D, length [`iterate_len`]): v for a tall or square
    /// matrix, u for a wide one. Starting the next call from it makes a slowly changing matrix converge
    /// in a few iterations.
    pub iterate: Tensor,
}

/// The length of the vector the iteration runs on: min(rows, cols).
pub fn iterate_len(rows: usize, cols: usize) -> usize {
    rows.min(cols)
}

/// `iters` rounds of x ← normalize(AᵀA·x) (tall) or x ← normalize(AAᵀ·x) (wide), then σ = ‖A·x‖ (or
/// ‖Aᵀx‖). Each round is two matrix–vector products, 4·m·n flops. σ never exceeds σ_max (up to
/// rounding): it is a lower bound that converges like (σ₂/σ₁)^(2·iters).
///
/// Both half-steps are rescaled by their largest entry (no squares), so the vectors stay within a
/// factor σ_max of unit size: matrices with tiny or huge entries neither underflow nor overflow in f32.
pub fn power_iterate(a: &Tensor, start: StartVector<'_>, iters: usize) -> Result<TopSingular> {
    let (rows, cols) = matrix_dims(a, "power iteration")?;
    let tall = rows >= cols;
    let len = iterate_len(rows, cols);
    let (dtype, device) = (a.dtype(), a.device());
    let x0 = match start {
        StartVector::Random(rng) => {
            let data: Vec<f64> = (0..len).map(|_| StandardNormal.sample(rng)).collect();
            Tensor::from_vec(data, (len, 1), device)?.to_dtype(dtype)?
        }
        StartVector::Given(x) => {
            if x.elem_count() != len {
                return Err(Error::invalid(
                    "power iteration",
                    format!(
                        "start vector has {} entries, the {rows}×{cols} matrix needs {len}",
                        x.elem_count()
                    ),
                ));
            }
            x.reshape((len, 1))?.to_dtype(dtype)?.to_device(device)?
        }
    };
    let x0_norm = frobenius_norm(&x0)?;
    if !(x0_norm > 0.0 && x0_norm.is_finite()) {
        return Err(Error::invalid(
            "power iteration",
            format!("start vector has norm {x0_norm}; it must be finite and nonzero"),
        ));
    }
    let x0 = x0.affine(1.0 / x0_norm, 0.0)?;
    // Kept on the device, no host round trip per iteration. Any positive divisor keeps the direction;
    // the offset (above f32's smallest normal number) only turns 0/0 into 0 (a vector orthogonal to
    // A's row space, or A = 0).
    let normalize = |y: Tensor| -> Result<Tensor> {
        let largest = y.abs()?.max_all()?.affine(1.0, 1e-37)?;
        Ok(y.broadcast_div(&largest)?)
    };
    // A·x for a column x; Aᵀ·y as (yᵀA)ᵀ so that A is read row-major either way.
    let apply = |x: &Tensor| -> Result<Tensor> { Ok(a.matmul(x)?) };
    let apply_t = |y: &Tensor| -> Result<Tensor> { Ok(y.t()?.matmul(a)?.reshape((cols, 1))?) };
    let mut x = x0.clone();
    for _ in 0..iters {
        x = if tall {
            normalize(apply_t(&normalize(apply(&x)?)?)?)?
        } else {
            normalize(apply(&normalize(apply_t(&x)?)?)?)?
        };
    }
    let x_norm = frobenius_norm(&x)?;
    if x_norm == 0.0 {
        return Ok(TopSingular {
            sigma: 0.0,
            u: Tensor::zeros((rows, 1), dtype, device)?,
            v: Tensor::zeros((cols, 1), dtype, device)?,
            iterate: x0.reshape(len)?,
        });
    }
    let x = x.affine(1.0 / x_norm, 0.0)?;
    let w = if tall { apply(&x)? } else { apply_t(&x)? };
    let sigma = frobenius_norm(&w)?;
    let w_unit = if sigma > 0.0 {
        w.affine(1.0 / sigma, 0.0)?
    } else {
        w
    };
    let (u, v) = if tall {
        (w_unit, x.clone())
    } else {
        (x.clone(), w_unit)
    };
    Ok(TopSingular {
        sigma,
        u,
        v,
        iterate: x.reshape(len)?,
    })
}

#[cfg(test)]
mod tests {
    use candle_core::Device;
    use rand::SeedableRng;

    use candle_core::DType;

    use super::*;
    use crate::linalg::svd::{sigma_max, with_singular_values};

    #[test]
    fn converges_to_the_exact_top_singular_value_on_both_sides() {
        let mut rng = SpectraRng::seed_from_u64(3);
        for (rows, cols) in [(20, 8), (8, 20), (12, 12)] {
            let a = with_singular_values(
                rows,
                cols,
                &[3.0, 1.5, 1.0, 0.5],
                &mut rng,
                DType::F64,
                &Device::Cpu,
            )
            .unwrap();
            let top = power_iterate(&a, StartVector::Random(&mut rng), 30).unwrap();
            // Gap 1.5/3: error ~ (1/2)^(2·30), far below f64 rounding of the 3.0.
            assert!(
                (top.sigma - 3.0).abs() < 1e-10,
                "{rows}×{cols}: {}",
                top.sigma
            );
            let av = a.matmul(&top.v).unwrap();
            let residual = (av - top.u.affine(top.sigma, 0.0).unwrap())
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap();
            assert!(
                residual.to_scalar::<f64>().unwrap().sqrt() < 1e-9,
                "A·v = σ·u"
            );
            assert_eq!(top.iterate.dims(), &[rows.min(cols)]);
        }
    }

    #[test]
    fn a_lower_bound_of_the_exact_value_and_resumable() {
        let mut rng = SpectraRng::seed_from_u64(4);
        // From the seeded generator: `Tensor::randn` draws a new matrix every run, and one whose two
        // largest singular values lie close together converges too slowly for 200 steps.
        let data: Vec<f32> = (0..40 * 30)
            .map(|_| StandardNormal.sample(&mut rng))
            .collect();
        let a = Tensor::from_vec(data, (40, 30), &Device::Cpu).unwrap();
        let exact = sigma_max(&a).unwrap();
        let first = power_iterate(&a, StartVector::Random(&mut rng), 2).unwrap();
        // f32 matvecs: relative rounding ~1e-6 of σ.
        assert!(
            first.sigma <= exact * (1.0 + 1e-5),
            "{} > exact {exact}",
            first.sigma
        );
        let resumed = power_iterate(&a, StartVector::Given(&first.iterate), 200).unwrap();
        assert!(
            (resumed.sigma - exact).abs() < 1e-4 * exact,
            "{} vs {exact}",
            resumed.sigma
        );
    }

    #[test]
    fn zero_matrix_and_bad_start_vectors() {
        let mut rng = SpectraRng::seed_from_u64(5);
        let zero = Tensor::zeros((4, 6), DType::F32, &Device::Cpu).unwrap();
        let top = power_iterate(&zero, StartVector::Random(&mut rng), 16).unwrap();
        assert_eq!(top.sigma, 0.0);
        assert_eq!(
            top.u
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
        let a = Tensor::ones((4, 6), DType::F32, &Device::Cpu).unwrap();
        let wrong = Tensor::ones(6, DType::F32, &Device::Cpu).unwrap();
        assert!(power_iterate(&a, StartVector::Given(&wrong), 4)
            .unwrap_err()
            .to_string()
            .contains("needs 4"));
        let zero_start = Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
        assert!(power_iterate(&a, StartVector::Given(&zero_start), 4).is_err());
    }

    #[test]
    fn tiny_and_huge_entries_do_not_underflow_or_overflow() {
        let mut rng = SpectraRng::seed_from_u64(6);
        for scale in [1e-25, 1e25] {
            let a = with_singular_values(16, 10, &[2.0, 1.0], &mut rng, DType::F64, &Device::Cpu)
                .unwrap()
                .affine(scale, 0.0)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            let top = power_iterate(&a, StartVector::Random(&mut rng), 30).unwrap();
            // f32 arithmetic on entries of any magnitude: relative error at f32 rounding level.
            assert!(
                (top.sigma / (2.0 * scale) - 1.0).abs() < 1e-4,
                "scale {scale}: {}",
                top.sigma
            );
        }
    }
}
