//! From raw per-query-head scores to one score per entry of a KV head: z-normalisation over the
//! candidates, the GQA reduction, and seeded tie noise.

use std::ops::Range;

use rand::Rng;
use spectra_core::rng::derived_rng;
use spectra_core::GqaAggregation;

/// Standard deviations below this are clamped, as in the reference (`std.clamp(min=1e-6)`), so that
/// constant scores do not divide by zero.
const MIN_STD: f64 = 1e-6;

/// Upper end of the uniform tie-breaking noise, as in the reference: far below any real score gap of
/// z-scores, enough to order exact ties reproducibly.
const TIE_NOISE: f32 = 1e-6;

/// z-normalises each row over `candidates` (finite values only; NaN and ±inf do not poison the
/// statistics), reduces over rows, adds noise from a generator seeded by (seed, layer, KV head).
pub fn finish(
    raw: &[Vec<f32>],
    candidates: Range<usize>,
    normalize: bool,
    reduce: GqaAggregation,
    seed: u64,
    layer: usize,
    kv_head: usize,
) -> Vec<f32> {
    let n = raw.first().map_or(0, Vec::len);
    let z: Vec<Vec<f32>> = raw
        .iter()
        .map(|row| {
            if !normalize {
                return row.clone();
            }
            let finite: Vec<f64> = row[candidates.clone()]
                .iter()
                .filter(|x| x.is_finite())
                .map(|&x| x as f64)
                .collect();
            if finite.is_empty() {
                return row.clone();
            }
            let mean = finite.iter().sum::<f64>() / finite.len() as f64;
            let var =
                finite.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / finite.len() as f64;
            let std = var.sqrt().max(MIN_STD);
            row.iter()
                .map(|&x| ((x as f64 - mean) / std) as f32)
                .collect()
        })
        .collect();
    let mut rng = derived_rng(seed, ((layer as u64) << 32) | kv_head as u64);
    (0..n)
        .map(|j| {
            let reduced = match reduce {
                GqaAggregation::Mean => z.iter().map(|r| r[j]).sum::<f32>() / z.len() as f32,
                GqaAggregation::Max | GqaAggregation::NotApplicable => {
                    z.iter().map(|r| r[j]).fold(f32::NEG_INFINITY, f32::max)
                }
            };
            reduced + rng.random_range(0.0..TIE_NOISE)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn z_scores_are_affine_invariant_and_robust() {
        let raw = vec![vec![1.0, 2.0, 3.0, 10.0]];
        let scaled = vec![raw[0].iter().map(|x| 3.0 * x - 7.0).collect::<Vec<f32>>()];
        let a = finish(&raw, 0..4, true, GqaAggregation::Max, 1, 0, 0);
        let b = finish(&scaled, 0..4, true, GqaAggregation::Max, 1, 0, 0);
        // Same noise, z-scores equal up to f32 rounding of 3x − 7.
        assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-5));
        let constant = finish(&[vec![5.0; 4]], 0..4, true, GqaAggregation::Max, 1, 0, 0);
        assert!(constant.iter().all(|x| x.is_finite() && x.abs() < 1e-5));
        let with_nan = finish(
            &[vec![1.0, f32::NAN, 3.0, f32::INFINITY]],
            0..4,
            true,
            GqaAggregation::Max,
            1,
            0,
            0,
        );
        assert!(with_nan[0].is_finite() && with_nan[2].is_finite());
        // A NaN score stays unusable (NaN, or -inf after the max): never ranked above a real one.
        assert!(with_nan[1].is_nan() || with_nan[1] == f32::NEG_INFINITY);
        // Max takes the dominant member, mean averages.
        let group = vec![vec![0.0, 0.0], vec![1.0, -1.0]];
        let max = finish(&group, 0..2, false, GqaAggregation::Max, 0, 0, 0);
        let mean = finish(&group, 0..2, false, GqaAggregation::Mean, 0, 0, 0);
        assert!((max[0] - 1.0).abs() < 2e-6 && (max[1] - 0.0).abs() < 2e-6);
        assert!((mean[0] - 0.5).abs() < 2e-6 && (mean[1] + 0.5).abs() < 2e-6);
    }
}
