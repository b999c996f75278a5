//! Activations with the derivatives the Lipschitz paper's JAX code has.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu_op::{exp_nonpositive, vectorized};
use crate::storage::contiguous_cpu;

/// The paper's GELU divisor (docs/lipschitz.md §9.4): the exact GELU's largest slope, 1.12890. The
/// tanh form, which the model uses, is steeper (1.12899), so the scaled activation is not quite
/// 1-Lipschitz.
pub const GELU_DIVISOR: f64 = 1.1289;

/// `max(x, 0)` whose derivative at 0 is ½, as JAX's `jnp.maximum` has it (docs/lipschitz.md §9.3).
/// candle's `relu` has derivative 0 there, and its `abs` derivative 1, so `(x + |x|)/2` would give
/// 1; `maximum` splits a tie's gradient evenly between its two arguments. A zero-initialised input
/// layer makes every pre-activation exactly 0 at the first step: with derivative 0 no gradient
/// would ever reach it.
pub fn relu_half_at_zero(x: &Tensor) -> Result<Tensor> {
    x.maximum(0f32)
}

/// `gelu_tanh(x) / 1.1289`: its slope is at most 1.1289931/1.1289
/// (the certificate's `SCALED_GELU_LIPSCHITZ`), and `|gelu(x)|/1.1289 ≤ |x|/1.1289`.
///
/// On the CPU (f32) one pass forward and one backward: candle's chain makes two passes forward and
/// about a dozen backward (its GELU derivative is a graph of `powf`, `tanh` and arithmetic ops), and
/// the MLP's hidden activations are the largest tensors of a training step. Both passes evaluate
/// `½(1 + tanh u) = σ(2u)` from one vectorized `e^{−2|u|}`, a fifth of the time of libm's `tanhf` per
/// element. Elsewhere candle's own kernels run.
pub fn scaled_gelu(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        x.contiguous()?.apply_op1(ScaledGelu)
    } else {
        x.gelu()? / GELU_DIVISOR
    }
}

/// 1/1.1289 as candle's `Tensor / f64` applies it (an f32 factor).
fn inverse_slope() -> f32 {
    (1.0 / GELU_DIVISOR) as f32
}

/// sqrt(2/π), GELU's tanh-form constant, and its cubic coefficient.
const SQRT_TWO_OVER_PI: f32 = 0.797_884_6;
const CUBIC: f32 = 0.044715;

/// Elements per block of the passes below: the block's `e^{−2|u|}` are computed together, in vector
/// registers, from a buffer on the stack.
const BLOCK: usize = 256;

/// Calls `f(x, σ(2u), 1 − σ(2u))` for every element of `xs` (u = √(2/π)·x·(1 + 0.044715x²)), in
/// blocks. σ and 1 − σ come from z = e^{−2|u|} ≤ 1, each with a few ulps of relative error and no
/// overflow, and 1 ± tanh never suffer the cancellation they would if formed from tanh.
#[inline(always)]
fn for_each_sigmoid(xs: &[f32], mut f: impl FnMut(usize, f32, f32, f32)) {
    let mut z = [0f32; BLOCK];
    for (b, block) in xs.chunks(BLOCK).enumerate() {
        let z = &mut z[..block.len()];
        for (z, &x) in z.iter_mut().zip(block) {
            *z = -2.0 * (SQRT_TWO_OVER_PI * x * (1.0 + CUBIC * x * x)).abs();
        }
        exp_nonpositive(z);
        for (i, (&x, &z)) in block.iter().zip(z.iter()).enumerate() {
            let positive = x >= 0.0;
            let (sigma, one_minus_sigma) = if positive {
                (1.0 / (1.0 + z), z / (1.0 + z))
            } else {
                (z / (1.0 + z), 1.0 / (1.0 + z))
            };
            f(b * BLOCK + i, x, sigma, one_minus_sigma);
        }
    }
}

/// `gelu(x)/1.1289 = x·σ(2u)/1.1289` for every element.
#[inline(always)]
fn scaled_gelu_values(xs: &[f32], ys: &mut [f32]) {
    let inv = inverse_slope();
    for_each_sigmoid(xs, |i, x, sigma, _| ys[i] = x * sigma * inv + 0.0);
}

/// `d/dx[gelu(x)/1.1289]`: with t = tanh(u) = 2σ − 1,
/// ½(1 + t) + ½x(1 − t²)·u′ = σ + 2xσ(1 − σ)·u′, divided by 1.1289.
#[inline(always)]
fn scaled_gelu_slope(x: f32, sigma: f32, one_minus_sigma: f32) -> f32 {
    let du = SQRT_TWO_OVER_PI * (1.0 + 3.0 * CUBIC * x * x);
    (sigma + 2.0 * x * sigma * one_minus_sigma * du) * inverse_slope()
}

/// `grad · d/dx[gelu(x)/1.1289]` for every element.
#[inline(always)]
fn scaled_gelu_grads(xs: &[f32], grads: &[f32], dx: &mut [f32]) {
    for_each_sigmoid(xs, |i, x, sigma, one_minus_sigma| {
        dx[i] = grads[i] * scaled_gelu_slope(x, sigma, one_minus_sigma);
    });
}

/// Elements per rayon task: large enough that scheduling costs nothing next to an `exp` each.
const PAR_CHUNK: usize = 1 << 14;

/// `ys = scaled_gelu(xs)` on every thread.
pub(crate) fn scaled_gelu_cpu(xs: &[f32], ys: &mut [f32]) {
    ys.par_chunks_mut(PAR_CHUNK)
        .zip(xs.par_chunks(PAR_CHUNK))
        .for_each(|(y, x)| vectorized(|| scaled_gelu_values(x, y)));
}

/// From pre-activations `xs` and the gradient `grads` of the activations, in one pass on every
/// thread: `ys = scaled_gelu(xs)` (the forward's values again, bit for bit) and, in place of
/// `grads`, the gradient of `xs`.
pub(crate) fn scaled_gelu_backward_cpu(xs: &[f32], grads: &mut [f32], ys: &mut [f32]) {
    ys.par_chunks_mut(PAR_CHUNK)
        .zip(
            xs.par_chunks(PAR_CHUNK)
                .zip(grads.par_chunks_mut(PAR_CHUNK)),
        )
        .for_each(|(y, (x, g))| {
            vectorized(|| {
                let inv = inverse_slope();
                for_each_sigmoid(x, |i, x, sigma, one_minus_sigma| {
                    y[i] = x * sigma * inv + 0.0;
                    g[i] *= scaled_gelu_slope(x, sigma, one_minus_sigma);
                })
            })
        });
}

/// The scaled GELU as one CPU pass; backward is [`ScaledGeluGrad`].
struct ScaledGelu;

impl CustomOp1 for ScaledGelu {
    fn name(&self) -> &'static str {
        "scaled-gelu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_cpu::<f32>(storage, layout, self.name())?;
        let mut y = vec![0f32; x.len()];
        scaled_gelu_cpu(x, &mut y);
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            x.apply_op2_no_bwd(&grad.contiguous()?, &ScaledGeluGrad)?,
        ))
    }
}

/// `grad · scaled_gelu′(x)` in one pass.
struct ScaledGeluGrad;

impl CustomOp2 for ScaledGeluGrad {
    fn name(&self) -> &'static str {
        "scaled-gelu-grad"
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        grad_storage: &CpuStorage,
        grad_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_cpu::<f32>(x_storage, x_layout, self.name())?;
        let grad = contiguous_cpu::<f32>(grad_storage, grad_layout, self.name())?;
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(PAR_CHUNK)
            .zip(x.par_chunks(PAR_CHUNK).zip(grad.par_chunks(PAR_CHUNK)))
            .for_each(|(dx, (x, g))| vectorized(|| scaled_gelu_grads(x, g, dx)));
        Ok((CpuStorage::F32(dx), x_layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn relu_derivative_is_half_at_zero_one_above_and_zero_below() {
        let x = Var::new(&[-1f32, 0.0, 2.0], &Device::Cpu).unwrap();
        let y = relu_half_at_zero(x.as_tensor()).unwrap();
        assert_eq!(y.to_vec1::<f32>().unwrap(), vec![0.0, 0.0, 2.0]);
        let grads = y.sum_all().unwrap().backward().unwrap();
        let g = grads.get(&x).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(g, vec![0.0, 0.5, 1.0]);
    }

    #[test]
    fn fused_scaled_gelu_is_the_exact_function_forward_and_derivative_backward() {
        let xs: Vec<f32> = (0..20001).map(|i| -10.0 + i as f32 * 1e-3).collect();
        let x = Var::new(xs.as_slice(), &Device::Cpu).unwrap();
        let fused = scaled_gelu(x.as_tensor()).unwrap();
        let chain = (x.as_tensor().gelu().unwrap() / GELU_DIVISOR).unwrap();
        let c = (2.0 / std::f64::consts::PI).sqrt();
        let values = fused.to_vec1::<f32>().unwrap();
        for ((&x, &y), &candle) in xs.iter().zip(&values).zip(&chain.to_vec1::<f32>().unwrap()) {
            let x = x as f64;
            let exact = 0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh()) / GELU_DIVISOR;
            // x·σ(2u) with σ from a 2⁻²²-accurate exp: a few f32 ulps of |x|. candle's own
            // ½x(1 + tanh u) loses more for negative x, where 1 + tanh u cancels.
            assert!(
                (y as f64 - exact).abs() <= 4e-7 * x.abs().max(1e-3),
                "x {x}: {y} vs {exact}"
            );
            assert!(
                (y - candle).abs() <= 1e-6 * (x.abs() as f32).max(1.0),
                "x {x}"
            );
        }
        // Backward of Σ 3·y: 3·y′(x), against the derivative evaluated in f64.
        let grads = (fused * 3.0)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g = grads.get(&x).unwrap().to_vec1::<f32>().unwrap();
        for (&x, &g) in xs.iter().zip(&g) {
            let x = x as f64;
            let t = (c * (x + 0.044715 * x * x * x)).tanh();
            let slope =
                0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3.0 * 0.044715 * x * x);
            let expected = 3.0 * slope / GELU_DIVISOR;
            // Two terms, each within a few f32 ulps relative; they cancel for negative x, so the
            // error is measured against the larger term's size (≤ 1.2).
            assert!(
                (g as f64 - expected).abs() < 1e-6,
                "x {x}: {g} vs {expected}"
            );
        }
    }

    #[test]
    fn scaled_gelu_slope_stays_below_one() {
        // Finite differences on a fine grid around the tanh-GELU's steepest point (x ≈ 0.75).
        let xs: Vec<f32> = (0..4000).map(|i| -4.0 + i as f32 * 0.002).collect();
        let y = scaled_gelu(&Tensor::new(xs.as_slice(), &Device::Cpu).unwrap())
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let steepest = y
            .windows(2)
            .map(|w| (w[1] - w[0]) / 0.002)
            .fold(f32::MIN, f32::max);
        // 1.12899/1.1289 = 1.00008 is the true maximum slope; f32 differences add ~1e-3 noise.
        assert!(steepest < 1.002, "{steepest}");
        assert!(steepest > 0.99, "{steepest}");
    }
}
