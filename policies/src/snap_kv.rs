//! `SnapKv` (Li et al. 2024): the last `window` queries vote for the keys they attend to; votes are
//! pooled over neighbours and the best-voted prefix entries are kept with the window
//! (docs/kv-policies.md §2.4). Runs once, after the prompt.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use spectra_core::{
    Budget, GqaAggregation, KvEvictionPolicy, KvLayerView, KvSideInfo, KvStepContext,
    PolicyContract, Result, SideInfoNeeds, TriggerSchedule,
};

use crate::selection::{validate_gqa, validate_protected};
use crate::snap_kv_votes::VotePool;
use crate::window_attention::{group_logits, validate_kernel, window_queries, Pooling};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapKv {
    /// Observation window: the last `window` queries vote, and the last `window` entries are kept.
    pub window: usize,
    /// Pooling kernel (odd).
    pub kernel: usize,
    pub pooling: Pooling,
    /// How the votes of the query heads sharing a KV head are combined (kvpress: mean).
    pub gqa: GqaAggregation,
}

impl Default for SnapKv {
    /// The reference implementation's defaults (`window_size=32, kernel_size=5, pooling='avgpool'`),
    /// with kvpress's mean over the GQA group.
    fn default() -> Self {
        SnapKv {
            window: 32,
            kernel: 5,
            pooling: Pooling::Avg,
            gqa: GqaAggregation::Mean,
        }
    }
}

impl SnapKv {
    /// Per KV head, on the keys' device: the pooled votes of the prefix entries, `+inf` for the window
    /// entries (never evicted).
    fn votes(
        &self,
        layer: &KvLayerView<'_>,
        side: &KvSideInfo<'_>,
        ctx: &KvStepContext,
    ) -> Result<Vec<Tensor>> {
        let queries = window_queries(side, layer, "SnapKv")?;
        let given = queries.dim(1)?;
        let window = given.min(self.window);
        let queries = queries.narrow(1, given - window, window)?;
        // The window queries sit at the last `window` positions before `position`.
        let first_query = ctx.position.saturating_sub(window as u64);
        layer
            .heads
            .iter()
            .enumerate()
            .map(|(g, head)| {
                let n = head.len();
                if n == 0 {
                    return Ok(Tensor::zeros(0, DType::F32, head.keys.device())?);
                }
                // Causal mask: a query sees the entries at or before its own position.
                let visible = (0..window as u64)
                    .map(|i| head.positions.partition_point(|&p| p <= first_query + i))
                    .collect();
                let vote = VotePool {
                    group: layer.group_size,
                    visible,
                    prefix: n - n.min(self.window),
                    kernel: self.kernel,
                    pooling: self.pooling,
                    reduce: self.gqa,
                };
                vote.apply(&group_logits(&queries, g, layer.group_size, head.keys)?)
            })
            .collect()
    }
}

#[typetag::serde]
impl KvEvictionPolicy for SnapKv {
    fn contract(&self) -> PolicyContract {
        PolicyContract {
            recent_window: self.window,
            gqa: self.gqa,
            ..PolicyContract::ranking(TriggerSchedule::PrefillOnly)
        }
    }

    fn needs(&self) -> SideInfoNeeds {
        SideInfoNeeds {
            window_queries: Some(self.window),
            ..SideInfoNeeds::default()
        }
    }

    fn validate(&self, budget: &Budget) -> std::result::Result<(), String> {
        validate_kernel(self.kernel)?;
        validate_gqa(self.gqa)?;
        if self.window == 0 {
            return Err("window 0 leaves no queries to vote; use at least 1".into());
        }
        validate_protected(budget, 0, self.window)
    }

    fn score(
        &self,
        layer: &KvLayerView<'_>,
        side: &KvSideInfo<'_>,
        ctx: &KvStepContext,
    ) -> Result<Option<Vec<Tensor>>> {
        self.votes(layer, side, ctx).map(Some)
    }
}

spectra_core::register_plugin!(
    KvEvictionPolicy,
    SnapKv,
    "Keeps the window and the prefix entries the window's queries attend to most."
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::HostScores;
    use crate::testing::{ctx, Layer};
    use crate::window_attention::reduce_group;
    use candle_core::{Device, Tensor};

    const D: usize = 64;

    /// Keys whose logit against the query `8·e0` is exactly `ln c` (√64 = 8 cancels the 8).
    fn layer_with_weights(c: &[f32]) -> Layer {
        let keys: Vec<Vec<f32>> = c
            .iter()
            .map(|&w| {
                let mut k = vec![0.0; D];
                k[0] = w.ln();
                k
            })
            .collect();
        Layer::from_keys(&keys, 1)
    }

    fn queries(rows: usize) -> Tensor {
        let mut q = vec![0f32; rows * D];
        (0..rows).for_each(|i| q[i * D] = 8.0);
        Tensor::from_vec(q, (1, rows, D), &Device::Cpu).unwrap()
    }

    /// 5 window queries × 8 prefix keys. Prefix weights c = [1, 4, 2, 8, 1, 1, 6, 1] (sum 24), the 5
    /// window keys weigh 4 each. Query i (position 8 + i) sees the prefix and window keys 0..=i, so its
    /// softmax denominator is 24 + 4(i + 1) = 28, 32, 36, 40, 44, and prefix key j gets
    /// vote_j = c_j · (1/28 + 1/32 + 1/36 + 1/40 + 1/44) = c_j · s.
    /// Avg pooling, kernel 3, zero padding: (c_{j-1} + c_j + c_{j+1}) · s / 3 =
    /// [5, 7, 14, 11, 10, 8, 8, 7] · s/3. Budget 8 = window 5 + 3: keep prefix 2, 3, 4 and the window.
    /// Max pooling, kernel 3: [4, 4, 8, 8, 8, 6, 6, 6] · s: keep 2, 3, 4 (8s), then the window.
    /// Kernel 1 is the raw vote: c = 8, 6, 4 at 3, 6, 1.
    #[test]
    fn hand_worked_five_by_eight_example() {
        let c = [
            1.0, 4.0, 2.0, 8.0, 1.0, 1.0, 6.0, 1.0, 4.0, 4.0, 4.0, 4.0, 4.0,
        ];
        let layer = layer_with_weights(&c);
        let q = queries(5);
        let side = KvSideInfo {
            window_queries: Some(&q),
            rope: None,
            ..KvSideInfo::default()
        };
        let step = ctx(8, 13);
        let s: f32 = 1.0 / 28.0 + 1.0 / 32.0 + 1.0 / 36.0 + 1.0 / 40.0 + 1.0 / 44.0;
        let avg = SnapKv {
            window: 5,
            kernel: 3,
            pooling: Pooling::Avg,
            gqa: GqaAggregation::Mean,
        };
        let scores = avg.host_scores(&layer.view(), &side, &step);
        let want = [5.0, 7.0, 14.0, 11.0, 10.0, 8.0, 8.0, 7.0].map(|x: f32| x * s / 3.0);
        // Softmax of logits ln c in f32: relative error ~1e-6 per weight.
        for (got, want) in scores[0].iter().zip(want) {
            assert!((got - want).abs() < 1e-5 * want, "{got} vs {want}");
        }
        assert!(scores[0][8..].iter().all(|x| x.is_infinite()));
        let keep = avg.select(&layer.view(), &side, &step).unwrap().per_head[0].clone();
        assert_eq!(keep, vec![2, 3, 4, 8, 9, 10, 11, 12]);
        let max = SnapKv {
            pooling: Pooling::Max,
            ..avg.clone()
        };
        assert_eq!(
            max.select(&layer.view(), &side, &step).unwrap().per_head[0],
            vec![2, 3, 4, 8, 9, 10, 11, 12]
        );
        let raw = SnapKv { kernel: 1, ..avg };
        assert_eq!(
            raw.select(&layer.view(), &side, &step).unwrap().per_head[0],
            vec![1, 3, 6, 8, 9, 10, 11, 12]
        );
    }

    /// Kernel 1 ranks prefix entries by their raw summed attention, computed here independently in f64.
    #[test]
    fn kernel_one_is_the_raw_vote_top_k() {
        let (n, w, budget) = (40, 6, 16);
        let layer = Layer::random(n, D, 1, 1, 11);
        let qt = Layer::random(w, D, 1, 1, 12)
            .cache
            .keys(0, 0)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let side = KvSideInfo {
            window_queries: Some(&qt),
            rope: None,
            ..KvSideInfo::default()
        };
        let policy = SnapKv {
            window: w,
            kernel: 1,
            pooling: Pooling::Avg,
            gqa: GqaAggregation::Mean,
        };
        let plan = policy
            .select(&layer.view(), &side, &ctx(budget, n))
            .unwrap();
        let keys = layer.cache.keys(0, 0).unwrap().to_vec2::<f32>().unwrap();
        let q = qt.squeeze(0).unwrap().to_vec2::<f32>().unwrap();
        let mut votes = vec![0f64; n];
        for (i, qi) in q.iter().enumerate() {
            let visible = n - w + i + 1;
            let logits: Vec<f64> = keys[..visible]
                .iter()
                .map(|k| k.iter().zip(qi).map(|(a, b)| (a * b) as f64).sum::<f64>() / 8.0)
                .collect();
            let z: f64 = logits.iter().map(|l| l.exp()).sum();
            logits
                .iter()
                .enumerate()
                .for_each(|(j, l)| votes[j] += l.exp() / z);
        }
        let mut order: Vec<usize> = (0..n - w).collect();
        order.sort_by(|&a, &b| votes[b].total_cmp(&votes[a]));
        let mut want: Vec<u32> = order[..budget - w]
            .iter()
            .map(|&j| j as u32)
            .chain((n - w) as u32..n as u32)
            .collect();
        want.sort_unstable();
        assert_eq!(plan.per_head[0], want);
    }

    /// The selection on the votes' device keeps what the standard selection keeps from the same votes
    /// (window protected, best votes, ties to the newer entry), with GQA, causal counts that cut the
    /// window and several heads of different lengths.
    #[test]
    fn device_selection_equals_the_standard_selection_of_the_votes() {
        let (w, group) = (6, 2);
        let mut rng = spectra_core::rng::derived_rng(13, 0);
        let keys: Vec<Vec<Vec<f32>>> = (0..2)
            .map(|_| {
                (0..50)
                    .map(|_| {
                        (0..D)
                            .map(|_| rand::Rng::random_range(&mut rng, -1.0..1.0))
                            .collect()
                    })
                    .collect()
            })
            .collect();
        let positions: Vec<u64> = (0..50).map(|j| 2 * j).collect();
        let layer = Layer::from_head_keys(&keys, &positions, group, false);
        let mut layer_view = layer.view();
        // The second head holds fewer entries.
        let short = layer_view.heads[1].keys.narrow(0, 0, 31).unwrap();
        layer_view.heads[1].keys = &short;
        layer_view.heads[1].values = &short;
        layer_view.heads[1].positions = &positions[..31];
        let q = Layer::random(w, D, 2 * group, 1, 14).cache;
        let q = Tensor::stack(
            &(0..2 * group)
                .map(|h| q.keys(0, h).unwrap().clone())
                .collect::<Vec<_>>(),
            0,
        )
        .unwrap();
        let side = KvSideInfo {
            window_queries: Some(&q),
            rope: None,
            ..KvSideInfo::default()
        };
        for (pooling, gqa) in [
            (Pooling::Avg, GqaAggregation::Mean),
            (Pooling::Max, GqaAggregation::Max),
        ] {
            let policy = SnapKv {
                window: w,
                kernel: 3,
                pooling,
                gqa,
            };
            let step = ctx(20, 100);
            let scores = policy.host_scores(&layer_view, &side, &step);
            let host: Vec<Vec<u32>> = scores
                .iter()
                .map(|s| spectra_core::keep_top_k(s, 0, w, 20))
                .collect();
            assert_eq!(
                policy.select(&layer_view, &side, &step).unwrap().per_head,
                host
            );
        }
    }

    /// Max takes each entry's best group member, mean their average; configs that cannot work are refused.
    #[test]
    fn group_reduction_follows_the_declared_rule() {
        let rows = vec![vec![0.0, 1.0, 0.2], vec![0.6, 0.0, 0.2]];
        assert_eq!(
            reduce_group(&rows, GqaAggregation::Max),
            vec![0.6, 1.0, 0.2]
        );
        assert_eq!(
            reduce_group(&rows, GqaAggregation::Mean),
            vec![0.3, 0.5, 0.2]
        );
        assert!(SnapKv::default().validate(&Budget::Tokens(32)).is_err());
        assert!(SnapKv {
            kernel: 4,
            ..SnapKv::default()
        }
        .validate(&Budget::Tokens(64))
        .unwrap_err()
        .contains("odd"));
    }
}
