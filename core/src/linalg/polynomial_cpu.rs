//! [`apply_odd_steps`](super::apply_odd_steps) for an f32 matrix on the CPU, on spectra's own matrix
//! product over three reused buffers: the same products and the same polynomial, without a tensor
//! (and its allocation and graph bookkeeping) per product. Muon orthogonalizes every matrix of a
//! model at every step, and the soft cap caps each of them: through candle's matmul these small
//! products ran at a third of the machine's rate, the update most of a second per step of the
//! paper's GPT.

use candle_core::Tensor;
use spectra_kernels::sgemm::{sgemm, Operand, Threads};
use spectra_kernels::transpose::transpose;

use super::odd_step::OddStep;
use crate::Result;

/// The steps applied to the 2-D f32 CPU tensor `x`, the Gram matrix on its smaller side.
///
/// A wide X is worked on as its transpose T = Xᵀ (tall): XXᵀ = TᵀT, and X ← P·X is T ← T·Pᵀ. Every
/// Gram product then reads T row by row, as the product reads fastest.
pub(super) fn apply_odd_steps_f32(x: &Tensor, steps: &[OddStep]) -> Result<Tensor> {
    let (rows, cols) = x.dims2()?;
    let wide = rows < cols;
    let (m, n) = if wide { (cols, rows) } else { (rows, cols) };
    let mut t: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let mut next = vec![0f32; m * n];
    if wide {
        transpose((rows, cols), &t, cols, &mut next);
        std::mem::swap(&mut t, &mut next);
    }
    let mut gram = vec![0f32; n * n];
    let mut factor = vec![0f32; n * n];
    let mut poly = vec![0f32; n * n];
    for step in steps {
        let (a, b, c) = (step.a as f32, step.b as f32, step.c as f32);
        // SAFETY (all products): t and next are m × n, gram, factor and poly n × n, all row-major
        // and distinct buffers; the transposes are read through swapped strides.
        unsafe {
            multiply(
                (n, n, m),
                &mut gram,
                Operand::of(&t, n, true),
                Operand::of(&t, n, false),
            );
        }
        // P = aI + bA + cA² as A(cA + bI) + aI, as the tensor path forms it.
        if step.c == 0.0 {
            for (p, &g) in poly.iter_mut().zip(&gram) {
                *p = g * b;
            }
        } else {
            for (f, &g) in factor.iter_mut().zip(&gram) {
                *f = g * c;
            }
            add_to_diagonal(&mut factor, n, b);
            unsafe {
                multiply(
                    (n, n, n),
                    &mut poly,
                    Operand::of(&gram, n, false),
                    Operand::of(&factor, n, false),
                );
            }
        }
        add_to_diagonal(&mut poly, n, a);
        unsafe {
            multiply(
                (m, n, n),
                &mut next,
                Operand::of(&t, n, false),
                Operand::of(&poly, n, wide),
            );
        }
        std::mem::swap(&mut t, &mut next);
    }
    if wide {
        transpose((m, n), &t, n, &mut next);
        std::mem::swap(&mut t, &mut next);
    }
    Ok(Tensor::from_vec(t, (rows, cols), x.device())?)
}

/// `dst = a·b` for a row-major `dst: m × n`, on every thread.
///
/// # Safety
/// `a` and `b` must be the `m × k` and `k × n` matrices their operands describe, apart from `dst`.
unsafe fn multiply((m, n, k): (usize, usize, usize), dst: &mut [f32], a: Operand, b: Operand) {
    assert_eq!(dst.len(), m * n);
    sgemm(
        (m, n, k),
        dst.as_mut_ptr(),
        n,
        a,
        b,
        1.0,
        false,
        Threads::All,
    );
}

fn add_to_diagonal(matrix: &mut [f32], n: usize, value: f32) {
    for i in 0..n {
        matrix[i * n + i] += value;
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};
    use rand::SeedableRng;

    use super::*;
    use crate::linalg::polynomial::{apply_odd_steps, NS5_KELLER, NS6_JAX};
    use crate::linalg::soft_cap::soft_cap_steps;
    use crate::linalg::svd::with_singular_values;
    use crate::rng::SpectraRng;

    /// Against the tensor path in f64 from the same f32 input, for tall, wide and square matrices,
    /// quintic and cubic steps.
    #[test]
    fn matches_the_tensor_path_in_f64() {
        let mut rng = SpectraRng::seed_from_u64(5);
        let sig = [1.0, 0.7, 0.4, 0.2, 0.05, 0.01, 0.001];
        for (rows, cols) in [(1, 1), (9, 7), (7, 9), (40, 40), (300, 17), (17, 300)] {
            let k = rows.min(cols).min(sig.len());
            let x = with_singular_values(rows, cols, &sig[..k], &mut rng, DType::F64, &Device::Cpu)
                .unwrap();
            let x32 = x.to_dtype(DType::F32).unwrap();
            let x64 = x32.to_dtype(DType::F64).unwrap();
            for steps in [&NS6_JAX[..], &NS5_KELLER[..], &soft_cap_steps(0.15)[..]] {
                let fast = apply_odd_steps_f32(&x32, steps).unwrap();
                let exact = apply_odd_steps(&x64, steps).unwrap();
                assert_eq!(fast.dims(), &[rows, cols]);
                let diff = (fast.to_dtype(DType::F64).unwrap() - &exact)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap();
                // Entries of a near-isometry are below 1; six steps of f32 products over at most
                // 300 terms each stay within a few hundred ulps of 1.
                assert!(diff < 2e-5, "{rows}×{cols}, {} steps: {diff}", steps.len());
            }
        }
    }

    #[test]
    fn a_zero_matrix_stays_zero() {
        let x = Tensor::zeros((5, 3), DType::F32, &Device::Cpu).unwrap();
        let out = apply_odd_steps_f32(&x, &NS6_JAX).unwrap();
        let max = out.abs().unwrap().max_all().unwrap();
        assert_eq!(max.to_scalar::<f32>().unwrap(), 0.0);
    }
}
