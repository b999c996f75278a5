//! Confidence intervals of a suite's scores by the percentile bootstrap: the samples of each task
//! are drawn again with replacement, and the statistic (a task's mean, or the mean of several tasks'
//! means) recomputed each time.

use rand::{Rng, SeedableRng};
use spectra_core::SpectraRng;

/// Resamples per interval: the 2.5th and 97.5th percentiles of 2,000 are stable to about a point
/// for scores in 0–100 over tens of samples.
const RESAMPLES: usize = 2000;

/// The 95% interval of the mean over tasks of each task's mean score; `None` when a task has no
/// scores or there is no task.
pub fn bootstrap(tasks: &[&[f64]], seed: u64) -> Option<[f64; 2]> {
    if tasks.is_empty() || tasks.iter().any(|t| t.is_empty()) {
        return None;
    }
    let mut rng = SpectraRng::seed_from_u64(seed);
    let mut means: Vec<f64> = (0..RESAMPLES)
        .map(|_| {
            tasks
                .iter()
                .map(|scores| {
                    let drawn: f64 = (0..scores.len())
                        .map(|_| scores[rng.random_range(0..scores.len())])
                        .sum();
                    drawn / scores.len() as f64
                })
                .sum::<f64>()
                / tasks.len() as f64
        })
        .collect();
    means.sort_by(f64::total_cmp);
    let at = |q: f64| means[((q * RESAMPLES as f64) as usize).min(RESAMPLES - 1)];
    Some([at(0.025), at(0.975)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_scores_have_no_width_and_the_interval_holds_the_mean() {
        assert_eq!(bootstrap(&[&[50.0; 10]], 1), Some([50.0, 50.0]));
        let scores: Vec<f64> = (0..100)
            .map(|i| if i % 2 == 0 { 100.0 } else { 0.0 })
            .collect();
        let [lo, hi] = bootstrap(&[&scores], 1).unwrap();
        assert!(lo < 50.0 && 50.0 < hi, "{lo} {hi}");
        // The normal approximation of a proportion of 0.5 over 100 samples: ±1.96·5 points.
        assert!((hi - lo - 19.6).abs() < 3.0, "{lo} {hi}");
        assert_eq!(bootstrap(&[&scores, &[]], 1), None);
    }

    #[test]
    fn averaging_tasks_narrows_the_interval() {
        let a: Vec<f64> = (0..30)
            .map(|i| if i % 3 == 0 { 100.0 } else { 0.0 })
            .collect();
        let one = bootstrap(&[&a], 2).unwrap();
        let four = bootstrap(&[&a, &a, &a, &a], 2).unwrap();
        assert!(four[1] - four[0] < one[1] - one[0]);
    }
}
