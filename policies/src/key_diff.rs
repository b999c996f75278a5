//! `KeyDiff` (Park et al. 2025, kvpress `KeyDiffPress`): keeps the entries whose keys differ most
//! from the head's average key direction, score `−cos(k, ā)` with `ā` the mean of the normalised keys.
//! No queries are needed, so it is question-agnostic by construction.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use spectra_core::{
    scores_from_host, Budget, KvEvictionPolicy, KvLayerView, KvSideInfo, KvStepContext,
    PolicyContract, Result, TriggerSchedule,
};

use crate::selection::validate_score_only;

/// Below this norm a key or the anchor counts as zero (PyTorch's `normalize` eps is 1e-12 and
/// `cosine_similarity`'s 1e-8; the anchor is at most 1 long, so 1e-8 is the one that matters).
const EPS: f32 = 1e-8;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeyDiff {
    /// When to compress; kvpress applies it once after the prompt.
    pub trigger: TriggerSchedule,
}

impl Default for KeyDiff {
    fn default() -> Self {
        KeyDiff {
            trigger: TriggerSchedule::PrefillOnly,
        }
    }
}

/// `−cos(k_j, ā)` for every key of one head (`[n, d]`), with the anchor `ā` the mean of the finite
/// keys' unit vectors. A key with a NaN or infinite coordinate scores NaN (evicted first) and stays
/// out of the anchor, so that one bad entry does not make every score NaN.
fn scores(keys: &Tensor) -> Result<Vec<f32>> {
    let keys = keys.to_dtype(DType::F32)?;
    let norms = keys.sqr()?.sum_keepdim(1)?.sqrt()?;
    let unit = keys.broadcast_div(&norms.maximum(EPS)?)?;
    let rows = unit.to_vec2::<f32>()?;
    let finite: Vec<&Vec<f32>> = rows
        .iter()
        .filter(|r| r.iter().all(|x| x.is_finite()))
        .collect();
    let d = keys.dim(1)?;
    let mut anchor = vec![0f32; d];
    for r in &finite {
        anchor.iter_mut().zip(r.iter()).for_each(|(a, x)| *a += x);
    }
    let count = finite.len().max(1) as f32;
    anchor.iter_mut().for_each(|a| *a /= count);
    let anchor_norm = anchor.iter().map(|a| a * a).sum::<f32>().sqrt().max(EPS);
    Ok(rows
        .iter()
        .map(|r| {
            if r.iter().all(|x| x.is_finite()) {
                -r.iter().zip(&anchor).map(|(x, a)| x * a).sum::<f32>() / anchor_norm
            } else {
                f32::NAN
            }
        })
        .collect())
}

#[typetag::serde]
impl KvEvictionPolicy for KeyDiff {
    fn contract(&self) -> PolicyContract {
        PolicyContract::ranking(self.trigger)
    }

    fn validate(&self, budget: &Budget) -> std::result::Result<(), String> {
        validate_score_only(self.trigger, budget)
    }

    fn score(
        &self,
        layer: &KvLayerView<'_>,
        _side: &KvSideInfo<'_>,
        _ctx: &KvStepContext,
    ) -> Result<Option<Vec<Tensor>>> {
        let scores = layer
            .heads
            .iter()
            .map(|h| {
                if h.is_empty() {
                    Ok(Vec::new())
                } else {
                    scores(h.keys)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(scores_from_host(scores)?))
    }
}

spectra_core::register_plugin!(
    KvEvictionPolicy,
    KeyDiff,
    "Keeps the entries whose keys point furthest from the head's mean key direction (score −cos(k, ā))."
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::HostScores;
    use crate::testing::{ctx, Layer};

    /// Unit keys e0, e1, e0 and 2·e0: the anchor is (3e0 + e1)/4, of norm √10/4, so the cosines are
    /// 3/√10 for the three keys along e0 and 1/√10 for e1. Keeping 2: e1, then the newest of the
    /// tied rest (index 3).
    #[test]
    fn keeps_the_keys_least_like_the_mean_direction() {
        let layer = Layer::from_keys(
            &[
                vec![1.0, 0.0],
                vec![0.0, 1.0],
                vec![1.0, 0.0],
                vec![2.0, 0.0],
            ],
            1,
        );
        let policy = KeyDiff::default();
        let got = policy.host_scores(&layer.view(), &KvSideInfo::default(), &ctx(2, 4));
        let (near, far) = (-3.0 / 10f32.sqrt(), -1.0 / 10f32.sqrt());
        // One division and a sum of four terms in f32: a few ulps of values near 1.
        for (g, w) in got[0].iter().zip([near, far, near, near]) {
            assert!((g - w).abs() < 1e-6, "{g} vs {w}");
        }
        let plan = policy
            .select(&layer.view(), &KvSideInfo::default(), &ctx(2, 4))
            .unwrap();
        assert_eq!(plan.per_head[0], vec![1, 3]);
    }

    /// A NaN key is scored lowest and leaves the other scores as they were without it.
    #[test]
    fn a_non_finite_key_does_not_spoil_the_anchor() {
        let clean = [vec![1.0, 0.0], vec![0.0, 1.0], vec![1.0, 1.0]];
        let mut dirty = clean.to_vec();
        dirty.insert(1, vec![f32::NAN, 0.0]);
        let score = |keys: &[Vec<f32>]| {
            KeyDiff::default()
                .host_scores(
                    &Layer::from_keys(keys, 1).view(),
                    &KvSideInfo::default(),
                    &ctx(2, keys.len()),
                )
                .remove(0)
        };
        let (clean, dirty) = (score(&clean), score(&dirty));
        assert!(dirty[1].is_nan());
        assert_eq!(
            [dirty[0], dirty[2], dirty[3]],
            [clean[0], clean[1], clean[2]]
        );
    }
}
