//! The rotary position embedding as eviction policies and models need to know it.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Which coordinates form a rotating pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RopePairing {
    /// Band f is `(x[f], x[f + d/2])`: Hugging Face "rotate half".
    Half,
    /// Band f is `(x[2f], x[2f + 1])`: GGUF / llama.cpp (its converter permutes Q/K rows).
    Interleaved,
}

impl RopePairing {
    /// The (re, im) coordinate indices of band `f` in a `head_dim` vector.
    pub fn coordinates(self, head_dim: usize, f: usize) -> (usize, usize) {
        match self {
            RopePairing::Half => (f, f + head_dim / 2),
            RopePairing::Interleaved => (2 * f, 2 * f + 1),
        }
    }
}

/// How the base frequencies are rescaled for long contexts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear {
        factor: f64,
    },
    /// Llama 3's piecewise rescaling of low frequencies.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position: f64,
    },
    /// YaRN: ramped interpolation between frequencies plus an attention temperature.
    Yarn {
        factor: f64,
        original_max_position: f64,
        beta_fast: f64,
        beta_slow: f64,
    },
}

/// A model's rotary embedding: per band its angular frequency ω_f, the pairing, and the amplitude `a`
/// that some scalings (YaRN) multiply rotated vectors by.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RopeSpec {
    pub head_dim: usize,
    pub base: f64,
    pub pairing: RopePairing,
    pub scaling: RopeScaling,
    /// ω_f for f in 0..head_dim/2, scaling applied.
    pub inv_freq: Vec<f64>,
    pub attention_scaling: f64,
}

impl RopeSpec {
    pub fn new(head_dim: usize, base: f64, pairing: RopePairing, scaling: RopeScaling) -> Self {
        let bands = head_dim / 2;
        let plain: Vec<f64> = (0..bands)
            .map(|f| 1.0 / base.powf(2.0 * f as f64 / head_dim as f64))
            .collect();
        let (inv_freq, attention_scaling) = match scaling {
            RopeScaling::None => (plain, 1.0),
            RopeScaling::Linear { factor } => (plain.iter().map(|w| w / factor).collect(), 1.0),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position,
            } => {
                let low_wavelen = original_max_position / low_freq_factor;
                let high_wavelen = original_max_position / high_freq_factor;
                let freqs = plain
                    .iter()
                    .map(|&w| {
                        let wavelen = 2.0 * std::f64::consts::PI / w;
                        if wavelen < high_wavelen {
                            w
                        } else if wavelen > low_wavelen {
                            w / factor
                        } else {
                            let smooth = (original_max_position / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * w / factor + smooth * w
                        }
                    })
                    .collect();
                (freqs, 1.0)
            }
            RopeScaling::Yarn {
                factor,
                original_max_position,
                beta_fast,
                beta_slow,
            } => {
                // Band index at which a frequency completes `rotations` turns over the original context.
                let band_of = |rotations: f64| {
                    head_dim as f64
                        * (original_max_position / (rotations * 2.0 * std::f64::consts::PI)).ln()
                        / (2.0 * base.ln())
                };
                let low = band_of(beta_fast).floor().max(0.0);
                let high = band_of(beta_slow).ceil().min(bands as f64 - 1.0);
                let freqs = plain
                    .iter()
                    .enumerate()
                    .map(|(f, &w)| {
                        let ramp = if high > low {
                            ((f as f64 - low) / (high - low)).clamp(0.0, 1.0)
                        } else {
                            0.0
                        };
                        let extrapolation = 1.0 - ramp;
                        w / factor * (1.0 - extrapolation) + w * extrapolation
                    })
                    .collect();
                let mscale = if factor <= 1.0 {
                    1.0
                } else {
                    0.1 * factor.ln() + 1.0
                };
                (freqs, mscale)
            }
        };
        RopeSpec {
            head_dim,
            base,
            pairing,
            scaling,
            inv_freq,
            attention_scaling,
        }
    }

    /// The (re, im) coordinate indices of band `f`.
    pub fn pair(&self, f: usize) -> (usize, usize) {
        self.pairing.coordinates(self.head_dim, f)
    }

    /// Number of frequency bands, `head_dim / 2`.
    pub fn bands(&self) -> usize {
        self.head_dim / 2
    }

    /// The rotation angle `ω_f · position` of band `f`, reduced to `[0, 2π)`. Computed in f64: with
    /// ω_0 = 1 and positions near 1e5 an f32 angle is off by ~1e-2 rad, the f64 one by ~1e-11.
    pub fn phase(&self, f: usize, position: f64) -> f64 {
        (self.inv_freq[f] * position).rem_euclid(std::f64::consts::TAU)
    }

    /// Rotates `x` (one head's vector, `head_dim` long) as the model does at `position`:
    /// band by band `x̃_f = a · x_f · e^{i·position·ω_f}`, `a` = `attention_scaling`.
    pub fn rotate(&self, x: &[f64], position: f64) -> Result<Vec<f64>> {
        self.rotate_by(x, position, self.attention_scaling)
    }

    /// Undoes [`rotate`](Self::rotate): `x_f = x̃_f · e^{−i·position·ω_f} / a`.
    pub fn invert(&self, x: &[f64], position: f64) -> Result<Vec<f64>> {
        self.rotate_by(x, -position, 1.0 / self.attention_scaling)
    }

    fn rotate_by(&self, x: &[f64], position: f64, amplitude: f64) -> Result<Vec<f64>> {
        if x.len() != self.head_dim || self.inv_freq.len() != self.bands() {
            return Err(Error::invalid(
                "rope vector",
                format!(
                    "length {} does not match head_dim {} ({} frequencies); pass one head's vector",
                    x.len(),
                    self.head_dim,
                    self.inv_freq.len()
                ),
            ));
        }
        let mut out = vec![0.0; x.len()];
        for f in 0..self.bands() {
            let (re, im) = self.pair(f);
            let (sin, cos) = self.phase(f, position).sin_cos();
            out[re] = amplitude * (x[re] * cos - x[im] * sin);
            out[im] = amplitude * (x[re] * sin + x[im] * cos);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_frequencies_follow_the_base() {
        let r = RopeSpec::new(64, 10000.0, RopePairing::Half, RopeScaling::None);
        assert_eq!(r.inv_freq.len(), 32);
        assert_eq!(r.inv_freq[0], 1.0);
        assert!((r.inv_freq[16] - 0.01).abs() < 1e-15);
        assert_eq!(r.pair(3), (3, 35));
        let i = RopeSpec::new(64, 10000.0, RopePairing::Interleaved, RopeScaling::None);
        assert_eq!(i.pair(3), (6, 7));
    }

    #[test]
    fn rotation_matches_complex_multiplication_and_inverts() {
        let yarn = RopeScaling::Yarn {
            factor: 4.0,
            original_max_position: 4096.0,
            beta_fast: 32.0,
            beta_slow: 1.0,
        };
        for pairing in [RopePairing::Half, RopePairing::Interleaved] {
            let r = RopeSpec::new(8, 10000.0, pairing, yarn.clone());
            let x: Vec<f64> = (0..8).map(|i| (i as f64 * 0.7).sin() + 0.1).collect();
            let p = 70_001.0;
            let y = r.rotate(&x, p).unwrap();
            for f in 0..4 {
                let (re, im) = r.pair(f);
                // Independent check: a·(x_re + i·x_im)·(cos θ + i·sin θ) with θ = ω_f·p taken without reduction.
                let theta = r.inv_freq[f] * p;
                let a = r.attention_scaling;
                let want_re = a * (x[re] * theta.cos() - x[im] * theta.sin());
                let want_im = a * (x[re] * theta.sin() + x[im] * theta.cos());
                // Reducing θ mod 2π in f64 changes it by at most a few ulps of 7e4 (~1e-11 rad).
                assert!((y[re] - want_re).abs() < 1e-9 && (y[im] - want_im).abs() < 1e-9);
            }
            let back = r.invert(&y, p).unwrap();
            // Two rotations by unit phasors in f64: error of a few ulps.
            assert!(x.iter().zip(&back).all(|(a, b)| (a - b).abs() < 1e-12));
        }
        assert!(RopeSpec::new(8, 1e4, RopePairing::Half, RopeScaling::None)
            .rotate(&[0.0; 6], 1.0)
            .is_err());
    }

    #[test]
    fn llama3_keeps_high_and_divides_low_frequencies() {
        let scaling = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position: 8192.0,
        };
        let plain = RopeSpec::new(128, 500000.0, RopePairing::Half, RopeScaling::None);
        let scaled = RopeSpec::new(128, 500000.0, RopePairing::Half, scaling);
        assert_eq!(scaled.inv_freq[0], plain.inv_freq[0]);
        assert!((scaled.inv_freq[63] - plain.inv_freq[63] / 8.0).abs() < 1e-18);
    }
}
