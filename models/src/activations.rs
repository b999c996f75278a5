//! Activations with the derivatives the Lipschitz paper's JAX code has.

use candle_core::{Result, Tensor};

/// GELU's largest slope (tanh form, 1.12899; exact form 1.12890; the paper divides by 1.1289, §8.4).
pub const GELU_MAX_SLOPE: f64 = 1.1289;

/// `max(x, 0)` whose derivative at 0 is ½, as JAX's `jnp.maximum` has it (§8.3). candle's `relu` has
/// derivative 0 there, and its `abs` derivative 1, so `(x + |x|)/2` would give 1; `maximum` splits a
/// tie's gradient evenly between its two arguments. A zero-initialised input layer makes every
/// pre-activation exactly 0 at the first step: with derivative 0 no gradient would ever reach it.
pub fn relu_half_at_zero(x: &Tensor) -> Result<Tensor> {
    x.maximum(0f32)
}

/// `gelu_tanh(x) / 1.1289`: 1-Lipschitz, and `|gelu(x)|/1.1289 ≤ |x|`.
pub fn scaled_gelu(x: &Tensor) -> Result<Tensor> {
    x.gelu()? / GELU_MAX_SLOPE
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
