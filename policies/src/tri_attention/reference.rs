//! TriAttention's key score in its defining form (docs/kv-policies.md §4.3): RoPE is inverted at
//! each key's position to get the pre-RoPE key, then amplitude, phase and the cosine series over
//! future distances are evaluated directly, in f64. Slow; the reference the post-RoPE form is
//! tested against.

use crate::tri_attention::query_stats::HeadBandStats;
use spectra_core::rope::RopeSpec;
use spectra_core::Result;

use super::scoring::{offsets, OffsetAggregation, ScoreOptions};

/// Raw score of each key (post-RoPE `keys[j]` at `positions[j]`) for one query head with centre
/// `center`, when the next token is at `position`.
pub fn inverted_key_scores(
    keys: &[Vec<f64>],
    positions: &[u64],
    position: u64,
    center: &HeadBandStats<'_>,
    rope: &RopeSpec,
    options: &ScoreOptions,
) -> Result<Vec<f64>> {
    let a2 = rope.attention_scaling * rope.attention_scaling;
    let deltas = offsets(options.max_offset);
    keys.iter()
        .zip(positions)
        .map(|(key, &p)| {
            let k = rope.invert(key, p as f64)?;
            let mut base = vec![0.0; deltas.len()];
            let mut extra = 0.0;
            for f in 0..rope.bands() {
                let (re, im) = rope.pair(f);
                let (kre, kim) = (k[re], k[im]);
                let (qre, qim, m) = (
                    center.mean_re[f] as f64,
                    center.mean_im[f] as f64,
                    center.abs_mean[f] as f64,
                );
                let amplitude = qre.hypot(qim) * kre.hypot(kim);
                // arg(q̄ · conj k)
                let phi = (qim * kre - qre * kim).atan2(qre * kre + qim * kim);
                for (b, &delta) in base.iter_mut().zip(&deltas) {
                    let distance = (position as f64 - p as f64) + delta as f64;
                    *b += a2 * amplitude * (rope.phase(f, distance) + phi).cos();
                }
                let weight = if options.disable_mlr {
                    m
                } else {
                    m - qre.hypot(qim)
                };
                extra += a2 * weight * kre.hypot(kim);
            }
            let trig = match options.aggregation {
                OffsetAggregation::Mean => base.iter().sum::<f64>() / base.len() as f64,
                OffsetAggregation::Max => base.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            };
            Ok(if options.disable_trig {
                extra
            } else {
                trig + extra
            })
        })
        .collect()
}
