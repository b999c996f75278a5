//! Choosing the next token from logits: greedy, or drawn after temperature, top-k, top-p (nucleus)
//! and min-p, as vLLM applies them (temperature first, then the three filters on the tempered
//! probabilities). A seed makes the draws repeatable.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use spectra_core::{Error, Result};

/// How the next token is chosen; the defaults are greedy decoding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingParams {
    /// 0 chooses the most likely token; above 0 the logits are divided by it before drawing.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the fewest most likely tokens whose probabilities sum to at least `top_p` (1: all).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one (0: none).
    pub min_p: f32,
    /// The draws' seed: the same seed, logits and settings give the same tokens.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: None,
        }
    }
}

impl SamplingParams {
    /// Every setting in its range; the error names the field and its range.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, value: f32, range: &str| {
            Err(Error::invalid(
                field,
                format!("is {value}; give a number {range}"),
            ))
        };
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad("temperature", self.temperature, "of 0 or more");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", self.top_p, "above 0 and at most 1");
        }
        if !(0.0..1.0).contains(&self.min_p) {
            return bad("min_p", self.min_p, "from 0 up to (not including) 1");
        }
        Ok(())
    }
}

/// A token chosen from logits, with what a caller comparing engines needs to tell a near-tie.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Choice {
    pub token: u32,
    /// The largest logit, and how far it lies above the second largest.
    pub top_logit: f32,
    pub lead: f32,
}

/// Draws tokens for one sequence.
#[derive(Clone, Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    /// Reused between draws: (token, probability) of the candidates.
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        let rng = match params.seed {
            Some(seed) => ChaCha8Rng::seed_from_u64(seed),
            None => ChaCha8Rng::from_rng(&mut rand::rng()),
        };
        Ok(Sampler {
            params,
            rng,
            candidates: Vec::new(),
        })
    }

    /// Greedy decoding.
    pub fn greedy() -> Self {
        Sampler {
            params: SamplingParams::default(),
            rng: ChaCha8Rng::seed_from_u64(0),
            candidates: Vec::new(),
        }
    }

    /// The next token from one row of logits. Logits that are NaN are an error (a model that
    /// produces them is broken, and no choice among them means anything).
    pub fn sample(&mut self, logits: &[f32]) -> Result<Choice> {
        let (mut first, mut second, mut best) = (f32::NEG_INFINITY, f32::NEG_INFINITY, 0usize);
        for (i, &x) in logits.iter().enumerate() {
            if x.is_nan() {
                return Err(Error::NonFinite {
                    name: "logits".into(),
                    what: format!("token {i}'s logit"),
                });
            }
            if x > first {
                (second, first, best) = (first, x, i);
            } else if x > second {
                second = x;
            }
        }
        if logits.is_empty() || first == f32::NEG_INFINITY {
            return Err(Error::invalid(
                "logits",
                "no token has a finite logit to choose",
            ));
        }
        let lead = first - second;
        let token = if self.params.temperature == 0.0 {
            best as u32
        } else {
            self.draw(logits, first)
        };
        Ok(Choice {
            token,
            top_logit: first,
            lead,
        })
    }

    fn draw(&mut self, logits: &[f32], max: f32) -> u32 {
        let p = &self.params;
        let inverse_t = 1.0 / p.temperature;
        let c = &mut self.candidates;
        c.clear();
        c.extend(
            logits
                .iter()
                .enumerate()
                .map(|(i, &x)| (i as u32, ((x - max) * inverse_t).exp())),
        );
        // Most likely first; among equals the lower token id, so that draws do not depend on the
        // sort's stability.
        let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && p.top_k < c.len() {
            c.select_nth_unstable_by(p.top_k - 1, order);
            c.truncate(p.top_k);
        }
        c.sort_unstable_by(order);
        let total: f32 = c.iter().map(|&(_, w)| w).sum();
        if p.top_p < 1.0 {
            let mut mass = 0.0;
            let keep = c
                .iter()
                .position(|&(_, w)| {
                    mass += w / total;
                    mass >= p.top_p
                })
                .map_or(c.len(), |i| i + 1);
            c.truncate(keep);
        }
        if p.min_p > 0.0 {
            // The most likely token's weight is e⁰ = 1 after the shift by the maximum.
            let floor = p.min_p * c[0].1;
            c.retain(|&(_, w)| w >= floor);
        }
        let kept: f32 = c.iter().map(|&(_, w)| w).sum();
        let mut r = self.rng.random::<f32>() * kept;
        for &(token, w) in c.iter() {
            if r < w {
                return token;
            }
            r -= w;
        }
        // Rounding left `r` a hair above the last weight.
        c.last().map_or(0, |&(token, _)| token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(temperature: f32, top_k: usize, top_p: f32, min_p: f32) -> Sampler {
        Sampler::new(SamplingParams {
            temperature,
            top_k,
            top_p,
            min_p,
            seed: Some(7),
        })
        .unwrap()
    }

    /// How often each token is drawn in `n` draws.
    fn histogram(s: &mut Sampler, logits: &[f32], n: usize) -> Vec<f64> {
        let mut counts = vec![0f64; logits.len()];
        for _ in 0..n {
            counts[s.sample(logits).unwrap().token as usize] += 1.0;
        }
        counts.iter().map(|c| c / n as f64).collect()
    }

    #[test]
    fn greedy_takes_the_largest_logit_and_reports_its_lead() {
        let choice = Sampler::greedy().sample(&[1.0, 4.0, 2.5, 3.0]).unwrap();
        assert_eq!(choice.token, 1);
        assert_eq!((choice.top_logit, choice.lead), (4.0, 1.0));
    }

    /// Draws follow softmax(logits / T): with 20,000 draws each frequency is within 4 standard
    /// deviations (√(p(1−p)/n) ≤ 0.0036) of its probability, computed here in f64.
    #[test]
    fn draws_follow_the_tempered_softmax() {
        let logits = [0.0f32, 1.0, 2.0, -1.0];
        for t in [0.5f32, 1.0, 2.0] {
            let weights: Vec<f64> = logits
                .iter()
                .map(|&x| (f64::from(x) / f64::from(t)).exp())
                .collect();
            let total: f64 = weights.iter().sum();
            let got = histogram(&mut sampler(t, 0, 1.0, 0.0), &logits, 20_000);
            for (g, w) in got.iter().zip(&weights) {
                assert!((g - w / total).abs() < 4.0 * 0.0036, "T = {t}: {got:?}");
            }
        }
    }

    #[test]
    fn filters_keep_what_they_promise() {
        let logits = [3.0f32, 2.9, 1.0, 0.5, -2.0];
        // top-k 2: only the two largest.
        let got = histogram(&mut sampler(1.0, 2, 1.0, 0.0), &logits, 4000);
        assert!(got[2..].iter().all(|&f| f == 0.0), "{got:?}");
        // top-p: probabilities 0.45, 0.41, 0.06, ...; 0.8 needs the first two.
        let got = histogram(&mut sampler(1.0, 0, 0.8, 0.0), &logits, 4000);
        assert!(got[0] > 0.0 && got[1] > 0.0 && got[2..].iter().all(|&f| f == 0.0));
        // min-p 0.2: e^{1−3} = 0.135 of the top is dropped, e^{−0.1} = 0.90 kept.
        let got = histogram(&mut sampler(1.0, 0, 1.0, 0.2), &logits, 4000);
        assert!(got[1] > 0.0 && got[2..].iter().all(|&f| f == 0.0));
    }

    #[test]
    fn a_seed_repeats_its_draws() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let draw = |seed| {
            let mut s = Sampler::new(SamplingParams {
                temperature: 1.0,
                seed: Some(seed),
                ..SamplingParams::default()
            })
            .unwrap();
            (0..30)
                .map(|_| s.sample(&logits).unwrap().token)
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
    }

    #[test]
    fn bad_settings_and_logits_are_errors_naming_them() {
        for (params, field) in [
            (
                SamplingParams {
                    temperature: -1.0,
                    ..Default::default()
                },
                "temperature",
            ),
            (
                SamplingParams {
                    temperature: f32::NAN,
                    ..Default::default()
                },
                "temperature",
            ),
            (
                SamplingParams {
                    top_p: 0.0,
                    ..Default::default()
                },
                "top_p",
            ),
            (
                SamplingParams {
                    min_p: 1.0,
                    ..Default::default()
                },
                "min_p",
            ),
        ] {
            let e = Sampler::new(params).unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
        let e = Sampler::greedy()
            .sample(&[0.0, f32::NAN])
            .unwrap_err()
            .to_string();
        assert!(e.contains("logit"), "{e}");
        assert!(Sampler::greedy().sample(&[f32::NEG_INFINITY; 3]).is_err());
        assert!(Sampler::greedy().sample(&[]).is_err());
    }
}
