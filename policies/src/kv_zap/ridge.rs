//! Ridge regression with an unpenalized intercept (scikit-learn's `Ridge`, which KVzap's linear
//! surrogate is fitted with), from sums accumulated in f64 a batch of rows at a time, so that the
//! rows themselves need not be kept.

use faer::prelude::*;
use faer::{Mat, Side};

/// The sums of `d` features and `k` targets over the rows seen so far.
#[derive(Clone, Debug)]
pub struct RidgeFit {
    rows: usize,
    sum_x: Vec<f64>,
    sum_y: Vec<f64>,
    /// `Σ x xᵀ`, `d × d`.
    xtx: Mat<f64>,
    /// `Σ x yᵀ`, `d × k`.
    xty: Mat<f64>,
}

impl RidgeFit {
    pub fn new(d: usize, k: usize) -> Self {
        RidgeFit {
            rows: 0,
            sum_x: vec![0.0; d],
            sum_y: vec![0.0; k],
            xtx: Mat::zeros(d, d),
            xty: Mat::zeros(d, k),
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Adds rows: `x` holds `n × d` features, `y` `n × k` targets, both row-major.
    pub fn add(&mut self, x: &[f32], y: &[f32]) -> std::result::Result<(), String> {
        let (d, k) = (self.sum_x.len(), self.sum_y.len());
        let n = x.len() / d.max(1);
        if x.len() != n * d || y.len() != n * k {
            return Err(format!(
                "{} features and {} targets do not make rows of {d} and {k}",
                x.len(),
                y.len()
            ));
        }
        if !x.iter().chain(y).all(|v| v.is_finite()) {
            return Err("a feature or target is not finite".into());
        }
        let xs = Mat::from_fn(n, d, |i, j| f64::from(x[i * d + j]));
        let ys = Mat::from_fn(n, k, |i, j| f64::from(y[i * k + j]));
        self.xtx += xs.transpose() * &xs;
        self.xty += xs.transpose() * &ys;
        for i in 0..n {
            for (s, v) in self.sum_x.iter_mut().zip(&x[i * d..(i + 1) * d]) {
                *s += f64::from(*v);
            }
            for (s, v) in self.sum_y.iter_mut().zip(&y[i * k..(i + 1) * k]) {
                *s += f64::from(*v);
            }
        }
        self.rows += n;
        Ok(())
    }

    /// The weights (`k × d`, row-major) and intercepts (`k`) minimizing
    /// `Σ ‖y − W x − b‖² + alpha·‖W‖²`: the centred normal equations `(C + alpha·I) Wᵀ = R`, with
    /// `C = Σ (x − x̄)(x − x̄)ᵀ`, `R = Σ (x − x̄)(y − ȳ)ᵀ`, then `b = ȳ − W x̄`.
    pub fn solve(&self, alpha: f64) -> std::result::Result<(Vec<f32>, Vec<f32>), String> {
        let (d, k) = (self.sum_x.len(), self.sum_y.len());
        if self.rows == 0 {
            return Err("no rows to fit".into());
        }
        if !(alpha > 0.0 && alpha.is_finite()) {
            return Err(format!(
                "the ridge penalty must be positive and finite, got {alpha}"
            ));
        }
        let n = self.rows as f64;
        let mean_x: Vec<f64> = self.sum_x.iter().map(|s| s / n).collect();
        let mean_y: Vec<f64> = self.sum_y.iter().map(|s| s / n).collect();
        let centred = Mat::from_fn(d, d, |i, j| {
            self.xtx[(i, j)] - n * mean_x[i] * mean_x[j] + if i == j { alpha } else { 0.0 }
        });
        let rhs = Mat::from_fn(d, k, |i, j| self.xty[(i, j)] - n * mean_x[i] * mean_y[j]);
        let solved = centred
            .llt(Side::Lower)
            .map_err(|e| format!("the normal equations are not positive definite ({e:?})"))?
            .solve(&rhs);
        let mut weights = Vec::with_capacity(k * d);
        let mut biases = Vec::with_capacity(k);
        for (j, &mean) in mean_y.iter().enumerate() {
            let column: Vec<f64> = (0..d).map(|i| solved[(i, j)]).collect();
            let shift: f64 = column.iter().zip(&mean_x).map(|(w, m)| w * m).sum();
            weights.extend(column.iter().map(|&w| w as f32));
            biases.push((mean - shift) as f32);
        }
        Ok((weights, biases))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_an_exact_affine_map() {
        // y₀ = 2x₀ − x₁ + 3, y₁ = 0.5x₁ − 1 on points that span the plane.
        let points = [
            [0.0f32, 0.0],
            [1.0, 0.0],
            [0.0, 1.0],
            [2.0, 3.0],
            [-1.0, 4.0],
        ];
        let mut fit = RidgeFit::new(2, 2);
        for p in points {
            let y = [2.0 * p[0] - p[1] + 3.0, 0.5 * p[1] - 1.0];
            fit.add(&p, &y).unwrap();
        }
        let (w, b) = fit.solve(1e-12).unwrap();
        for (got, want) in w.iter().chain(&b).zip([2.0, -1.0, 0.0, 0.5, 3.0, -1.0]) {
            // f64 normal equations of a well-conditioned 2 × 2 system, rounded to f32.
            assert!((got - want).abs() < 1e-5, "{w:?} {b:?}");
        }
    }

    #[test]
    fn shrinks_as_the_one_feature_formula_says() {
        // One feature: w = Σ(x − x̄)(y − ȳ) / (Σ(x − x̄)² + α), b = ȳ − w x̄. With x = 1, 2, 3 and
        // y = 1, 3, 2: x̄ = 2, ȳ = 2, Σ(x − x̄)(y − ȳ) = 1, Σ(x − x̄)² = 2, so at α = 2, w = 1/4.
        let mut fit = RidgeFit::new(1, 1);
        fit.add(&[1.0, 2.0], &[1.0, 3.0]).unwrap();
        fit.add(&[3.0], &[2.0]).unwrap();
        assert_eq!(fit.rows(), 3);
        let (w, b) = fit.solve(2.0).unwrap();
        assert!(
            (w[0] - 0.25).abs() < 1e-7 && (b[0] - 1.5).abs() < 1e-7,
            "{w:?} {b:?}"
        );
    }

    #[test]
    fn bad_rows_and_penalties_are_refused() {
        let mut fit = RidgeFit::new(2, 1);
        assert!(fit.solve(1.0).unwrap_err().contains("no rows"));
        assert!(fit.add(&[1.0, 2.0, 3.0], &[1.0]).is_err());
        assert!(fit
            .add(&[1.0, f32::NAN], &[1.0])
            .unwrap_err()
            .contains("finite"));
        fit.add(&[1.0, 2.0], &[1.0]).unwrap();
        assert!(fit.solve(0.0).unwrap_err().contains("positive"));
    }
}
