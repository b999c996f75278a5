//! What the models' fused CPU ops (the scaled GELU, causal attention) share.

use crate::storage::contiguous_cpu;
use candle_core::{Result, Storage, Tensor};

/// Calls `f` with the elements of an f32 CPU tensor, read in place (copied only when `t` is not
/// contiguous); `op` names the op in the error.
pub fn with_f32<R>(t: &Tensor, op: &str, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(s) => Ok(f(contiguous_cpu(s, layout, op)?)),
        _ => candle_core::bail!("{op}: expects a CPU tensor"),
    }
}

/// Runs `f` compiled for AVX2 and FMA where the CPU has them: the `#[inline(always)]` loops it calls
/// (such as [`exp_nonpositive`]) become 8-wide vector code; elsewhere the same code runs as compiled
/// for the baseline.
#[inline(always)]
pub fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::has_avx2_fma() {
            // SAFETY: the CPU supports AVX2 and FMA.
            return unsafe { with_avx2(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// `x ← eˣ` for `x ≤ 0` (softmax rows after the maximum is subtracted, GELU's `e^{−2|u|}`), branch-free
/// so that inside [`vectorized`] it is vector code: libm's `expf` is a call per element, and was most
/// of the fused ops' time. Relative error below 2⁻²² above −87 (tested against f64); 0 below, where eˣ
/// < 1.7·10⁻³⁸ would be subnormal; NaN stays NaN.
///
/// Cody–Waite reduction `x = n·ln 2 + r`, |r| ≤ ln 2 / 2, and Cephes' degree-6 polynomial for eʳ.
#[inline(always)]
pub fn exp_nonpositive(xs: &mut [f32]) {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 in two parts; n·LN2_HI is exact for |n| < 2⁹.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5·2²³ rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    for x in xs.iter_mut() {
        let v = *x;
        // Below −87 the result is 0 (set at the end); clamped, n stays ≥ −126. NaN passes through.
        let clamped = if v < -87.0 { -87.0 } else { v };
        let shifted = clamped * LOG2E + ROUND;
        let n = shifted - ROUND;
        let r = (clamped - n * LN2_HI) - n * LN2_LO;
        let p = ((((1.987_569_2e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
            + 0.166_666_65)
            * r
            + 0.5;
        let e = p * r * r + r + 1.0;
        // 2ⁿ from its exponent bits. `shifted` is 1.5·2²³ + n exactly, so its bits are those of
        // 1.5·2²³ plus n: integer arithmetic, which vectorizes where a float-to-int cast (saturating
        // in Rust) does not.
        let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
        let scale = f32::from_bits(n_bits.wrapping_add(127) << 23);
        let y = e * scale;
        *x = if v < -87.0 { 0.0 } else { y };
    }
}

/// `x ← softmax(x)`, in place: the maximum subtracted, [`exp_nonpositive`], the sum divided out.
#[inline(always)]
pub fn softmax_in_place(x: &mut [f32]) {
    let top = maximum(x);
    for v in x.iter_mut() {
        *v -= top;
    }
    exp_nonpositive(x);
    let inverse = 1.0 / sum(x);
    for v in x.iter_mut() {
        *v *= inverse;
    }
}

/// Lanes of the reductions below: one AVX register of f32. Independent partial results are what let
/// the compiler make vector code of a sum, which it may not reorder otherwise.
const LANES: usize = 8;

/// The largest element, as `>` finds it.
#[inline(always)]
pub fn maximum(xs: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (m, &x) in lanes.iter_mut().zip(chunk) {
            *m = if x > *m { x } else { *m };
        }
    }
    lanes
        .into_iter()
        .chain(tail.iter().copied())
        .fold(f32::NEG_INFINITY, |m, x| if x > m { x } else { m })
}

/// `Σ a_j·b_j` in eight lanes.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            lanes[l] += x[l] * y[l];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `Σ x_j` in eight lanes.
#[inline(always)]
pub fn sum(xs: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (s, &x) in lanes.iter_mut().zip(chunk) {
            *s += x;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_to_the_minus_22_of_f64_on_its_domain() {
        let mut xs: Vec<f32> = (0..=2_000_000).map(|i| -87.0 * i as f32 / 2e6).collect();
        xs.extend([0.0, -0.0, -1e-30, -f32::MIN_POSITIVE]);
        let mut ys = xs.clone();
        vectorized(|| exp_nonpositive(&mut ys));
        for (&x, &y) in xs.iter().zip(&ys) {
            let exact = (x as f64).exp();
            assert!(
                (y as f64 - exact).abs() <= exact / (1u64 << 22) as f64,
                "exp({x}) = {y}, exact {exact}"
            );
        }
        let mut edge = [-87.5f32, -1000.0, f32::NEG_INFINITY, f32::NAN];
        exp_nonpositive(&mut edge);
        assert_eq!(&edge[..3], &[0.0, 0.0, 0.0]);
        assert!(edge[3].is_nan());
    }

    #[test]
    fn lane_reductions_match_f64_sums_and_a_plain_maximum() {
        for len in [0, 1, 7, 8, 9, 64, 250] {
            let a: Vec<f32> = (0..len)
                .map(|i| ((i * 37 % 11) as f32 - 5.0) / 7.0)
                .collect();
            let b: Vec<f32> = (0..len)
                .map(|i| ((i * 13 % 17) as f32 - 8.0) / 9.0)
                .collect();
            let exact_dot: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            let exact_sum: f64 = a.iter().map(|x| *x as f64).sum();
            // At most 250 terms below 1 in magnitude: f32 rounding stays far below 1e-4.
            assert!((dot(&a, &b) as f64 - exact_dot).abs() < 1e-4, "dot, {len}");
            assert!((sum(&a) as f64 - exact_sum).abs() < 1e-4, "sum, {len}");
            let plain = a.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(maximum(&a), plain, "max, {len}");
        }
    }
}
