//! `ExpectedAttention` (Devoto et al. 2025, kvpress `ExpectedAttentionPress`): scores each entry by the
//! attention that future queries are expected to pay it. Queries are modelled as Gaussian,
//! `q ~ N(μ, Σ)` before RoPE; rotated by the mean rotation `R̄` of the next `future_positions`
//! positions, `E[exp(qᵀk/√d)] = exp(μ'ᵀk/√d + kᵀΣ'k/(2d))` with `μ' = R̄μ` and `Σ' = R̄ΣR̄ᵀ`. The
//! softmax of that over the non-sink entries, averaged over the GQA group and scaled by `‖v‖`, is the
//! score; the sinks are kept.
//!
//! kvpress estimates μ and Σ from every prompt query but the sinks' (it projects the hidden states
//! itself); here they come from the last `window` queries the forward pass keeps, unrotated to their
//! pre-RoPE values, which estimates the same distribution from fewer samples.

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use spectra_core::rope::RopeSpec;
use spectra_core::{
    scores_from_host, Budget, Error, GqaAggregation, KvEvictionPolicy, KvLayerView, KvSideInfo,
    KvStepContext, PolicyContract, Result, SideInfoNeeds, TriggerSchedule,
};

use crate::selection::{validate_protected, validate_trigger};
use crate::window_attention::window_queries;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExpectedAttention {
    /// Recent queries whose mean and covariance model the future ones.
    pub window: usize,
    /// Future positions whose rotations are averaged (kvpress: 512).
    pub future_positions: usize,
    /// First entries kept and left out of the statistics and the softmax (kvpress `n_sink`: 4).
    pub sinks: usize,
    /// Include the covariance term `kᵀΣ'k/(2d)`; without it only the mean query is used.
    pub use_covariance: bool,
    /// Scale the expected attention by the value's norm, `(a + epsilon)·‖v‖`.
    pub use_value_norm: bool,
    pub epsilon: f32,
    /// When to compress; kvpress compresses the context once, before the question.
    pub trigger: TriggerSchedule,
}

impl Default for ExpectedAttention {
    /// kvpress's defaults, with a window of 256 queries for the statistics.
    fn default() -> Self {
        ExpectedAttention {
            window: 256,
            future_positions: 512,
            sinks: 4,
            use_covariance: true,
            use_value_norm: true,
            epsilon: 0.0,
            trigger: TriggerSchedule::PrefillOnly,
        }
    }
}

/// The mean and covariance of one layer's future queries, per query head, after the mean rotation.
struct FutureQueries {
    /// `[heads, d]`.
    mean: Tensor,
    /// `[heads, d, d]`.
    covariance: Tensor,
}

impl ExpectedAttention {
    fn future_queries(
        &self,
        queries: &Tensor,
        rope: &RopeSpec,
        ctx: &KvStepContext,
        device: &Device,
    ) -> Result<FutureQueries> {
        let (heads, given, d) = queries.dims3()?;
        if rope.head_dim != d {
            return Err(Error::invalid(
                "ExpectedAttention",
                format!(
                    "the RoPE description is for head_dim {} but the queries have {d}",
                    rope.head_dim
                ),
            ));
        }
        let w = given.min(self.window);
        let q = queries
            .narrow(1, given - w, w)?
            .to_dtype(DType::F64)?
            .to_vec3::<f64>()?;
        // The window's queries sit at the last `w` positions before `position`; the sinks' are left out
        // of the statistics unless nothing else is left.
        let first = ctx.position.saturating_sub(w as u64);
        let skip = (self.sinks as u64).saturating_sub(first).min(w as u64) as usize;
        let skip = if skip == w { 0 } else { skip };
        let rotation = mean_rotation(rope, ctx.position, self.future_positions);
        let mut means = Vec::with_capacity(heads * d);
        let mut covariances = Vec::with_capacity(heads * d * d);
        for head in &q {
            let pre_rope = head[skip..]
                .iter()
                .enumerate()
                .map(|(i, x)| rope.invert(x, (first + (skip + i) as u64) as f64))
                .collect::<Result<Vec<_>>>()?;
            let (mean, covariance) = moments(&pre_rope, d);
            means.extend(rotation.apply(&mean));
            covariances.extend(rotation.conjugate(&covariance, d));
        }
        let to_f32 = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
        Ok(FutureQueries {
            mean: Tensor::from_vec(to_f32(means), (heads, d), device)?,
            covariance: Tensor::from_vec(to_f32(covariances), (heads, d, d), device)?,
        })
    }

    /// Scores of one KV head's entries: `+inf` for the sinks, the expected attention of the rest.
    fn head_scores(
        &self,
        future: &FutureQueries,
        kv_head: usize,
        group: usize,
        keys: &Tensor,
        values: &Tensor,
    ) -> Result<Vec<f32>> {
        let n = keys.dim(0)?;
        let sinks = self.sinks.min(n);
        let mut scores = vec![f32::INFINITY; sinks];
        if sinks == n {
            return Ok(scores);
        }
        let d = keys.dim(1)?;
        let k = keys.narrow(0, sinks, n - sinks)?.to_dtype(DType::F32)?;
        let mean = future.mean.narrow(0, kv_head * group, group)?;
        // [group, n − sinks]
        let mut logits = (mean.matmul(&k.t()?)? / (d as f64).sqrt())?;
        if self.use_covariance {
            let covariance = future.covariance.narrow(0, kv_head * group, group)?;
            let spread = k
                .unsqueeze(0)?
                .broadcast_as((group, n - sinks, d))?
                .contiguous()?
                .matmul(&covariance)?
                .broadcast_mul(&k.unsqueeze(0)?)?
                .sum(2)?;
            logits = (logits + (spread / (2 * d) as f64)?)?;
        }
        let shifted = logits.broadcast_sub(&logits.max_keepdim(1)?)?.exp()?;
        let attention = shifted.broadcast_div(&shifted.sum_keepdim(1)?)?.mean(0)?;
        let attention = if self.use_value_norm {
            let norms = values
                .narrow(0, sinks, n - sinks)?
                .to_dtype(DType::F32)?
                .sqr()?
                .sum(1)?
                .sqrt()?;
            ((attention + f64::from(self.epsilon))? * norms)?
        } else {
            attention
        };
        scores.extend(attention.to_vec1::<f32>()?);
        Ok(scores)
    }
}

/// The sample mean and the (biased, `1/n`) covariance of `samples`, each `d` long.
fn moments(samples: &[Vec<f64>], d: usize) -> (Vec<f64>, Vec<f64>) {
    let n = samples.len().max(1) as f64;
    let mut mean = vec![0.0; d];
    for x in samples {
        mean.iter_mut().zip(x).for_each(|(m, v)| *m += v / n);
    }
    let mut covariance = vec![0.0; d * d];
    for x in samples {
        let centred: Vec<f64> = x.iter().zip(&mean).map(|(v, m)| v - m).collect();
        for (i, ci) in centred.iter().enumerate() {
            for (j, cj) in centred.iter().enumerate() {
                covariance[i * d + j] += ci * cj / n;
            }
        }
    }
    (mean, covariance)
}

/// The mean over future positions of RoPE's rotation: block-diagonal, band `f` being
/// `a·[[c̄, −s̄], [s̄, c̄]]` with `c̄`, `s̄` the mean cosine and sine of its angles.
struct MeanRotation {
    /// `(re, im, a·c̄, a·s̄)` per band.
    bands: Vec<(usize, usize, f64, f64)>,
}

fn mean_rotation(rope: &RopeSpec, from: u64, count: usize) -> MeanRotation {
    let count = count.max(1);
    let bands = (0..rope.bands())
        .map(|f| {
            let (re, im) = rope.pair(f);
            let (mut sin, mut cos) = (0.0, 0.0);
            for t in 0..count {
                let (s, c) = rope.phase(f, (from + t as u64) as f64).sin_cos();
                sin += s;
                cos += c;
            }
            let a = rope.attention_scaling / count as f64;
            (re, im, a * cos, a * sin)
        })
        .collect();
    MeanRotation { bands }
}

impl MeanRotation {
    /// `R̄x`.
    fn apply(&self, x: &[f64]) -> Vec<f64> {
        let mut out = vec![0.0; x.len()];
        for &(re, im, c, s) in &self.bands {
            out[re] = c * x[re] - s * x[im];
            out[im] = s * x[re] + c * x[im];
        }
        out
    }

    /// `R̄ Σ R̄ᵀ` of a row-major `d × d` matrix: `R̄` applied to every column, then to every row.
    fn conjugate(&self, sigma: &[f64], d: usize) -> Vec<f64> {
        let mut columns = vec![0.0; d * d];
        for j in 0..d {
            let column: Vec<f64> = (0..d).map(|i| sigma[i * d + j]).collect();
            for (i, v) in self.apply(&column).into_iter().enumerate() {
                columns[i * d + j] = v;
            }
        }
        columns.chunks(d).flat_map(|row| self.apply(row)).collect()
    }
}

#[typetag::serde]
impl KvEvictionPolicy for ExpectedAttention {
    fn contract(&self) -> PolicyContract {
        PolicyContract {
            sinks: self.sinks,
            gqa: GqaAggregation::Mean,
            ..PolicyContract::ranking(self.trigger)
        }
    }

    fn needs(&self) -> SideInfoNeeds {
        SideInfoNeeds {
            window_queries: Some(self.window),
            rope: true,
            ..SideInfoNeeds::default()
        }
    }

    fn validate(&self, budget: &Budget) -> std::result::Result<(), String> {
        validate_trigger(self.trigger)?;
        if self.window == 0 {
            return Err(
                "window 0 leaves no queries to estimate the statistics; use at least 1".into(),
            );
        }
        if self.future_positions == 0 {
            return Err(
                "future_positions 0 averages no rotation; use at least 1 (kvpress: 512)".into(),
            );
        }
        if !self.epsilon.is_finite() || self.epsilon < 0.0 {
            return Err(format!("epsilon {} must be finite and ≥ 0", self.epsilon));
        }
        validate_protected(budget, self.sinks, 0)
    }

    fn score(
        &self,
        layer: &KvLayerView<'_>,
        side: &KvSideInfo<'_>,
        ctx: &KvStepContext,
    ) -> Result<Option<Vec<Tensor>>> {
        let queries = window_queries(side, layer, "ExpectedAttention")?;
        let rope = side.rope.ok_or_else(|| {
            Error::invalid(
                "ExpectedAttention",
                "needs the model's RoPE description (SideInfoNeeds::rope), none was given",
            )
        })?;
        let future = self.future_queries(queries, rope, ctx, queries.device())?;
        let scores = layer
            .heads
            .iter()
            .enumerate()
            .map(|(g, head)| {
                if head.is_empty() {
                    return Ok(Vec::new());
                }
                self.head_scores(&future, g, layer.group_size, head.keys, head.values)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(scores_from_host(scores)?))
    }
}

spectra_core::register_plugin!(
    KvEvictionPolicy,
    ExpectedAttention,
    "Keeps the entries that future queries, modelled as Gaussian under the coming rotations, are expected to attend to most."
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::HostScores;
    use crate::testing::{ctx, Layer};
    use rand::Rng;
    use spectra_core::rope::{RopePairing, RopeScaling};

    /// The scores recomputed in f64 the long way: every future position's rotation averaged into a
    /// dense matrix, the Gaussian log-moment of every key, softmax, group mean, value norms.
    fn reference(
        policy: &ExpectedAttention,
        queries: &[Vec<Vec<f64>>],
        keys: &[Vec<f64>],
        rope: &RopeSpec,
        position: u64,
    ) -> Vec<f64> {
        let d = rope.head_dim;
        let w = queries[0].len();
        let mut r = vec![vec![0.0; d]; d];
        for t in 0..policy.future_positions {
            for (j, column) in (0..d).map(|j| {
                let mut e = vec![0.0; d];
                e[j] = 1.0;
                (j, rope.rotate(&e, (position + t as u64) as f64).unwrap())
            }) {
                for i in 0..d {
                    r[i][j] += column[i] / policy.future_positions as f64;
                }
            }
        }
        let mut per_member = Vec::new();
        for head in queries {
            let pre: Vec<Vec<f64>> = head
                .iter()
                .enumerate()
                .skip(policy.sinks.saturating_sub((position as usize) - w))
                .map(|(i, q)| rope.invert(q, (position as usize - w + i) as f64).unwrap())
                .collect();
            let n = pre.len() as f64;
            let mu: Vec<f64> = (0..d)
                .map(|i| pre.iter().map(|q| q[i]).sum::<f64>() / n)
                .collect();
            let sigma: Vec<Vec<f64>> = (0..d)
                .map(|i| {
                    (0..d)
                        .map(|j| {
                            pre.iter()
                                .map(|q| (q[i] - mu[i]) * (q[j] - mu[j]))
                                .sum::<f64>()
                                / n
                        })
                        .collect()
                })
                .collect();
            let mu_r: Vec<f64> = (0..d)
                .map(|i| (0..d).map(|j| r[i][j] * mu[j]).sum())
                .collect();
            let sigma_r: Vec<Vec<f64>> = (0..d)
                .map(|i| {
                    (0..d)
                        .map(|j| {
                            (0..d)
                                .map(|k| {
                                    (0..d).map(|l| r[i][k] * sigma[k][l] * r[j][l]).sum::<f64>()
                                })
                                .sum()
                        })
                        .collect()
                })
                .collect();
            let logits: Vec<f64> = keys[policy.sinks..]
                .iter()
                .map(|k| {
                    let linear: f64 =
                        (0..d).map(|i| mu_r[i] * k[i]).sum::<f64>() / (d as f64).sqrt();
                    let quad: f64 = (0..d)
                        .map(|i| (0..d).map(|j| k[i] * sigma_r[i][j] * k[j]).sum::<f64>())
                        .sum();
                    linear + quad / (2.0 * d as f64)
                })
                .collect();
            let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = logits.iter().map(|l| (l - max).exp()).sum();
            per_member.push(
                logits
                    .iter()
                    .map(|l| (l - max).exp() / z)
                    .collect::<Vec<_>>(),
            );
        }
        (0..keys.len() - policy.sinks)
            .map(|j| {
                let a = per_member.iter().map(|m| m[j]).sum::<f64>() / per_member.len() as f64;
                let v = keys[policy.sinks + j]
                    .iter()
                    .map(|x| x * x)
                    .sum::<f64>()
                    .sqrt();
                a * v
            })
            .collect()
    }

    /// Random queries and keys, both RoPE pairings: the policy's scores against the f64 reference.
    #[test]
    fn matches_the_expected_attention_recomputed_in_f64() {
        let (d, group, n, w, position) = (8, 2, 12, 6, 40u64);
        for pairing in [RopePairing::Half, RopePairing::Interleaved] {
            let rope = RopeSpec::new(d, 10000.0, pairing, RopeScaling::None);
            let mut rng = spectra_core::rng::derived_rng(7, 0);
            let mut draw = |len: usize| -> Vec<f64> {
                (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
            };
            let keys: Vec<Vec<f64>> = (0..n).map(|_| draw(d)).collect();
            let queries: Vec<Vec<Vec<f64>>> = (0..group)
                .map(|_| (0..w).map(|_| draw(d)).collect())
                .collect();
            let policy = ExpectedAttention {
                window: w,
                future_positions: 16,
                sinks: 2,
                ..ExpectedAttention::default()
            };
            let keys_f32: Vec<Vec<f32>> = keys
                .iter()
                .map(|k| k.iter().map(|&x| x as f32).collect())
                .collect();
            let positions: Vec<u64> = (0..n as u64).map(|p| p * 3).collect();
            let layer = Layer::from_head_keys(&[keys_f32], &positions, group, false);
            let flat: Vec<f32> = queries
                .iter()
                .flatten()
                .flatten()
                .map(|&x| x as f32)
                .collect();
            let q = Tensor::from_vec(flat, (group, w, d), &Device::Cpu).unwrap();
            let side = KvSideInfo {
                window_queries: Some(&q),
                rope: Some(&rope),
                ..KvSideInfo::default()
            };
            let step = ctx(6, position as usize);
            let got = policy.host_scores(&layer.view(), &side, &step);
            assert!(got[0][..2].iter().all(|s| s.is_infinite()));
            let want = reference(&policy, &queries, &keys, &rope, position);
            // f32 inputs and matmuls against f64: relative error ~1e-6 on scores of order 0.1.
            for (g, w) in got[0][2..].iter().zip(&want) {
                assert!(
                    (f64::from(*g) - w).abs() < 1e-5 * w.abs().max(1e-3),
                    "{g} vs {w}"
                );
            }
        }
    }

    /// With one sample the covariance is zero and one future position means no averaging: the score
    /// is then the softmax of the query, rotated to the next position, against the keys, times ‖v‖.
    #[test]
    fn one_query_and_one_future_position_is_plain_attention() {
        let d = 4;
        let rope = RopeSpec::new(d, 100.0, RopePairing::Half, RopeScaling::None);
        let keys = [
            vec![1.0, 0.0, 0.0, 0.0],
            vec![0.0, 2.0, 0.0, 0.0],
            vec![0.5, 0.5, 0.5, 0.5],
        ];
        let layer = Layer::from_keys(&keys, 1);
        let q_pre = [2.0, -1.0, 0.5, 1.0];
        let q_now = rope.rotate(&q_pre, 9.0).unwrap();
        let q = Tensor::from_vec(
            q_now.iter().map(|&x| x as f32).collect::<Vec<_>>(),
            (1, 1, d),
            &Device::Cpu,
        )
        .unwrap();
        let side = KvSideInfo {
            window_queries: Some(&q),
            rope: Some(&rope),
            ..KvSideInfo::default()
        };
        let policy = ExpectedAttention {
            window: 1,
            future_positions: 1,
            sinks: 0,
            ..ExpectedAttention::default()
        };
        let got = policy.host_scores(&layer.view(), &side, &ctx(2, 10));
        let q_next = rope.rotate(&q_pre, 10.0).unwrap();
        let logits: Vec<f64> = keys
            .iter()
            .map(|k| {
                k.iter()
                    .zip(&q_next)
                    .map(|(a, b)| f64::from(*a) * b)
                    .sum::<f64>()
                    / 2.0
            })
            .collect();
        let z: f64 = logits.iter().map(|l| l.exp()).sum();
        for (j, k) in keys.iter().enumerate() {
            let norm = k.iter().map(|x| f64::from(x * x)).sum::<f64>().sqrt();
            let want = logits[j].exp() / z * norm;
            // f32 arithmetic on values of order 1.
            assert!(
                (f64::from(got[0][j]) - want).abs() < 1e-6,
                "{j}: {} vs {want}",
                got[0][j]
            );
        }
    }
}
