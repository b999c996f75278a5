//! Learning-rate schedules: a factor in [0, 1] multiplying each optimizer's base learning rate.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Schedule {
    /// Factor 1 throughout.
    Constant,
    /// `(steps − step)/steps`, the Lipschitz paper's JAX schedule (docs/lipschitz.md §3.7): step 0
    /// gets the full rate.
    Linear,
    /// `½(1 + cos(π·step/steps))`.
    Cosine,
    /// Linear warm-up over `warmup` steps, constant, then linear cooldown over the last
    /// `cooldown_frac` of the run to `final_factor` (the NanoGPT schedule uses 0.4 and 0.1,
    /// docs/lipschitz.md §3.4).
    WarmupCooldown {
        warmup: u64,
        cooldown_frac: f64,
        final_factor: f64,
    },
}

impl Schedule {
    /// The factor at `step` (0-based) of a run of `steps` steps.
    pub fn factor(&self, step: u64, steps: u64) -> f64 {
        let steps = steps.max(1) as f64;
        let s = step as f64;
        match *self {
            Schedule::Constant => 1.0,
            Schedule::Linear => ((steps - s) / steps).max(0.0),
            Schedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * (s / steps).min(1.0)).cos()),
            Schedule::WarmupCooldown {
                warmup,
                cooldown_frac,
                final_factor,
            } => {
                if step < warmup {
                    return (s + 1.0) / warmup as f64;
                }
                let x = s / steps;
                if x < 1.0 - cooldown_frac {
                    1.0
                } else {
                    let w = ((1.0 - x) / cooldown_frac).clamp(0.0, 1.0);
                    w + (1.0 - w) * final_factor
                }
            }
        }
    }

    /// Rejects parameters that cannot describe a schedule.
    pub fn validate(&self) -> Result<(), String> {
        if let Schedule::WarmupCooldown {
            cooldown_frac,
            final_factor,
            ..
        } = *self
        {
            if !(0.0..=1.0).contains(&cooldown_frac) {
                return Err(format!(
                    "cooldown_frac must be in [0, 1], got {cooldown_frac}"
                ));
            }
            if !(0.0..=1.0).contains(&final_factor) {
                return Err(format!(
                    "final_factor must be in [0, 1], got {final_factor}"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_matches_the_reference_formula() {
        assert_eq!(Schedule::Linear.factor(0, 2000), 1.0);
        assert_eq!(Schedule::Linear.factor(1000, 2000), 0.5);
        assert_eq!(Schedule::Linear.factor(1999, 2000), 1.0 / 2000.0);
    }

    #[test]
    fn cosine_ends_at_zero() {
        assert!((Schedule::Cosine.factor(500, 1000) - 0.5).abs() < 1e-12);
        assert!(Schedule::Cosine.factor(1000, 1000).abs() < 1e-12);
    }

    #[test]
    fn nanogpt_cooldown_matches_its_formula() {
        // x = step/steps; constant until 0.6, then w + (1 − w)·0.1 with w = (1 − x)/0.4
        // (docs/lipschitz.md §3.4).
        let s = Schedule::WarmupCooldown {
            warmup: 0,
            cooldown_frac: 0.4,
            final_factor: 0.1,
        };
        assert_eq!(s.factor(599, 1000), 1.0);
        let w = (1.0 - 0.8) / 0.4;
        assert!((s.factor(800, 1000) - (w + (1.0 - w) * 0.1)).abs() < 1e-12);
        assert!((s.factor(1000, 1000) - 0.1).abs() < 1e-12);
        let warm = Schedule::WarmupCooldown {
            warmup: 10,
            cooldown_frac: 0.0,
            final_factor: 1.0,
        };
        assert!((warm.factor(4, 100) - 0.5).abs() < 1e-12);
    }
}
