//! `Tova` (Oren et al. 2024, "Transformers are Multi-State RNNs"; kvpress `TOVAPress`): the newest
//! query's attention, averaged over every query head of the layer, scores each cached position; the
//! lowest-scored position is dropped from every head. Applied at every decode step once the cache is
//! full, as the paper does, so the cache holds exactly the budget.

use std::collections::BTreeMap;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use spectra_core::{
    scores_from_host, Budget, GqaAggregation, KvEvictionPolicy, KvLayerView, KvSideInfo,
    KvStepContext, PolicyContract, Result, SideInfoNeeds, TriggerSchedule,
};

use crate::selection::{validate_protected, validate_trigger};
use crate::window_attention::{softmax_in_place, window_queries, GroupLogits};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tova {
    /// When to compress; the paper evicts at every decode step.
    pub trigger: TriggerSchedule,
}

impl Default for Tova {
    fn default() -> Self {
        Tova {
            trigger: TriggerSchedule::EveryStep,
        }
    }
}

#[typetag::serde]
impl KvEvictionPolicy for Tova {
    /// The newest entry is kept: the query that scores is its own, and kvpress gives it the top score.
    fn contract(&self) -> PolicyContract {
        PolicyContract {
            recent_window: 1,
            gqa: GqaAggregation::Mean,
            ..PolicyContract::ranking(self.trigger)
        }
    }

    fn needs(&self) -> SideInfoNeeds {
        SideInfoNeeds {
            window_queries: Some(1),
            ..SideInfoNeeds::default()
        }
    }

    fn validate(&self, budget: &Budget) -> std::result::Result<(), String> {
        validate_trigger(self.trigger)?;
        validate_protected(budget, 0, 1)
    }

    /// Per position, the mean over the query heads whose KV head holds it of the newest query's
    /// softmax weight; every head's entry at that position gets that score. A query head whose
    /// weights are not finite (a NaN or infinite key in its cache) is left out of the mean, and a
    /// position no head scores finitely gets NaN.
    fn score(
        &self,
        layer: &KvLayerView<'_>,
        side: &KvSideInfo<'_>,
        ctx: &KvStepContext,
    ) -> Result<Option<Vec<Tensor>>> {
        let queries = window_queries(side, layer, "Tova")?;
        let newest = queries.narrow(1, queries.dim(1)? - 1, 1)?;
        let query_position = ctx.position.saturating_sub(1);
        let mut by_position: BTreeMap<u64, (f64, usize)> = BTreeMap::new();
        for (g, head) in layer.heads.iter().enumerate() {
            if head.is_empty() {
                continue;
            }
            let logits = GroupLogits::new(&newest, g, layer.group_size, head.keys)?;
            // Causal: the query sees the entries at or before its own position.
            let visible = head.positions.partition_point(|&p| p <= query_position);
            for member in 0..layer.group_size {
                let mut row = logits.row(member, 0).to_vec();
                row[visible..].fill(f32::NEG_INFINITY);
                softmax_in_place(&mut row);
                if row.iter().any(|w| !w.is_finite()) {
                    continue;
                }
                for (&p, &w) in head.positions.iter().zip(&row) {
                    let (sum, count) = by_position.entry(p).or_default();
                    *sum += f64::from(w);
                    *count += 1;
                }
            }
        }
        let scores = layer
            .heads
            .iter()
            .map(|head| {
                head.positions
                    .iter()
                    .map(|p| match by_position.get(p) {
                        Some(&(sum, count)) => (sum / count as f64) as f32,
                        None => f32::NAN,
                    })
                    .collect()
            })
            .collect();
        Ok(Some(scores_from_host(scores)?))
    }
}

spectra_core::register_plugin!(
    KvEvictionPolicy,
    Tova,
    "Drops the positions the newest query, averaged over the layer's heads, attends to least."
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::HostScores;
    use crate::testing::{ctx, Layer};
    use candle_core::{Device, Tensor};

    /// One KV head of head_dim 1 holding keys 0, 1, 2, and two query heads, ln 2 and 0: the first
    /// weighs the keys 1 : 2 : 4 (of 7), the second 1 : 1 : 1 (of 3), so the mean over the heads is
    /// (1/7 + 1/3)/2, (2/7 + 1/3)/2, (4/7 + 1/3)/2.
    #[test]
    fn averages_the_newest_querys_attention_over_the_heads() {
        let layer = Layer::from_keys(&[vec![0.0], vec![1.0], vec![2.0]], 2);
        let q = Tensor::from_vec(vec![2f32.ln(), 0.0], (2, 1, 1), &Device::Cpu).unwrap();
        let side = KvSideInfo {
            window_queries: Some(&q),
            rope: None,
            ..KvSideInfo::default()
        };
        let got = Tova::default().host_scores(&layer.view(), &side, &ctx(2, 3));
        let want = [1.0, 2.0, 4.0].map(|c: f64| (c / 7.0 + 1.0 / 3.0) / 2.0);
        // exp(ln 2 · k) in f32 and a sum of three: well within 1e-6 of weights near 0.3.
        for (g, w) in got[0].iter().zip(want) {
            assert!((f64::from(*g) - w).abs() < 1e-6, "{g} vs {w}");
        }
        // Budget 2: the newest (protected) and the best of the rest, key 1.
        let plan = Tova::default()
            .select(&layer.view(), &side, &ctx(2, 3))
            .unwrap();
        assert_eq!(plan.per_head[0], vec![1, 2]);
    }

    /// Two KV heads holding the same positions get the same scores, from all four query heads,
    /// so they keep the same positions, which a per-head score would not: head 0 alone prefers
    /// position 0, head 1 alone position 1, and together position 1 wins.
    #[test]
    fn every_head_keeps_the_same_positions() {
        let keys = vec![
            vec![vec![1.0], vec![0.0], vec![0.0]],
            vec![vec![0.0], vec![3.0], vec![0.0]],
        ];
        let layer = Layer::from_head_keys(&keys, &[0, 1, 2], 2, false);
        let q = Tensor::ones((4, 1, 1), candle_core::DType::F32, &Device::Cpu).unwrap();
        let side = KvSideInfo {
            window_queries: Some(&q),
            rope: None,
            ..KvSideInfo::default()
        };
        let policy = Tova::default();
        let scores = policy.host_scores(&layer.view(), &side, &ctx(2, 3));
        assert_eq!(scores[0], scores[1]);
        let plan = policy.select(&layer.view(), &side, &ctx(2, 3)).unwrap();
        assert_eq!(plan.per_head, vec![vec![1, 2], vec![1, 2]]);
    }
}
