//! The scorer layer: a policy that ranks entries gives, per KV head, one score per entry as a tensor
//! where it computed them (the cache's device, or the host), and the standard selection ranks them
//! there (kvpress's `ScorerPress`): scores computed on a GPU stay there and only the kept indices come
//! to the host.

use candle_core::{DType, Device, Tensor};

use crate::kv_policy::{KeepPlan, KvEvictionPolicy, KvLayerView, KvStepContext};
use crate::ops::top_k::keep_top_k_rows;
use crate::{Error, Result};

/// Per KV head, `[n_h]` f32 scores on the CPU: for policies that compute their scores on the host.
/// [`keep_best`] ranks them there, so with a cache on a GPU they make no round trip.
pub fn scores_from_host(scores: Vec<Vec<f32>>) -> Result<Vec<Tensor>> {
    scores
        .into_iter()
        .map(|s| {
            let n = s.len();
            Ok(Tensor::from_vec(s, n, &Device::Cpu)?)
        })
        .collect()
}

/// Per KV head, the scores on the host, for checks and for selections that weigh all heads at once.
pub fn scores_to_host(scores: &[Tensor]) -> Result<Vec<Vec<f32>>> {
    scores
        .iter()
        .map(|s| Ok(s.to_dtype(DType::F32)?.to_vec1::<f32>()?))
        .collect()
}

/// Checks that `scores` give one score per entry of each of the layer's heads; the error names
/// `policy`, whose `score` gave them.
pub fn check_scores(policy: &str, layer: &KvLayerView<'_>, scores: &[Tensor]) -> Result<()> {
    if scores.len() != layer.heads.len() {
        return Err(Error::invalid(
            policy,
            format!(
                "score gave scores for {} heads; the layer has {}",
                scores.len(),
                layer.heads.len()
            ),
        ));
    }
    for (h, (s, head)) in scores.iter().zip(&layer.heads).enumerate() {
        if s.dims() != [head.len()] {
            return Err(Error::invalid(
                policy,
                format!(
                    "score gave head {h} scores of shape {:?}; expected one per entry, [{}]",
                    s.dims(),
                    head.len()
                ),
            ));
        }
    }
    Ok(())
}

/// The standard selection: per head, `policy`'s protected entries (the sinks or the prompt, then the
/// recent window; [`PolicyContract::protected`](crate::PolicyContract::protected)) and the best-scored rest up to the budget, ranked on
/// the scores' device by [`keep_top_k_rows`]. Heads of one length with the same protected entries
/// are ranked together, in one call.
pub fn keep_best<P: KvEvictionPolicy + ?Sized>(
    policy: &P,
    layer: &KvLayerView<'_>,
    scores: &[Tensor],
    ctx: &KvStepContext,
) -> Result<KeepPlan> {
    check_scores(policy.typetag_name(), layer, scores)?;
    let contract = policy.contract();
    let ranked = scores
        .iter()
        .zip(&layer.heads)
        .map(|(s, head)| {
            Ok((
                s.to_dtype(DType::F32)?,
                contract.protected(head.positions, ctx),
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let together = ranked
        .windows(2)
        .all(|w| w[0].0.dims() == w[1].0.dims() && w[0].1 == w[1].1);
    if together && !ranked.is_empty() && ranked[0].0.dim(0)? > 0 {
        let (prefix, window) = ranked[0].1;
        let rows: Vec<&Tensor> = ranked.iter().map(|(s, _)| s).collect();
        let kept = keep_top_k_rows(&Tensor::stack(&rows, 0)?, prefix, window, ctx.budget)?;
        return Ok(KeepPlan {
            per_head: kept.to_vec2::<u32>()?,
        });
    }
    let per_head = ranked
        .iter()
        .map(|(s, (prefix, window))| {
            if s.dim(0)? == 0 {
                return Ok(Vec::new());
            }
            let kept = keep_top_k_rows(&s.unsqueeze(0)?, *prefix, *window, ctx.budget)?;
            Ok(kept.squeeze(0)?.to_vec1::<u32>()?)
        })
        .collect::<Result<_>>()?;
    Ok(KeepPlan { per_head })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv_policy::{
        keep_top_k, GqaAggregation, KvHeadView, KvPhase, PolicyContract, TriggerSchedule,
    };
    use proptest::prelude::*;
    use serde::{Deserialize, Serialize};

    /// A policy that only declares a contract.
    #[derive(Debug, Serialize, Deserialize)]
    struct Declares(PolicyContract);

    #[typetag::serde]
    impl KvEvictionPolicy for Declares {
        fn contract(&self) -> PolicyContract {
            self.0.clone()
        }
    }

    fn contract(sinks: usize, recent_window: usize, protects_prompt: bool) -> PolicyContract {
        PolicyContract {
            sinks,
            recent_window,
            protects_prompt,
            fills_budget: true,
            trigger: TriggerSchedule::PrefillOnly,
            gqa: GqaAggregation::NotApplicable,
            shares_across_layers: false,
            top_k_by_score: true,
            heads_share_budget: false,
        }
    }

    /// Scores drawn from few values (ties), with NaN and ±inf among them.
    fn score() -> impl Strategy<Value = f32> {
        prop_oneof![
            8 => (0..6u8).prop_map(|v| v as f32 * 0.5),
            1 => Just(f32::NAN),
            1 => Just(f32::INFINITY),
            1 => Just(f32::NEG_INFINITY),
        ]
    }

    proptest! {
        /// On the device each head keeps what the host rule [`keep_top_k`] keeps with the contract's
        /// protected entries, whether the heads are ranked together (equal lengths, equal
        /// protection) or one by one.
        #[test]
        fn ranks_as_the_host_rule(
            heads in prop::collection::vec(prop::collection::vec(score(), 0..40), 1..5),
            same_length in any::<bool>(),
            sinks in 0..4usize,
            window in 0..6usize,
            protects_prompt in any::<bool>(),
            prompt_len in 0..30u64,
            budget in 1..30usize,
        ) {
            let heads: Vec<Vec<f32>> = if same_length {
                vec![heads[0].clone(); heads.len()]
            } else {
                heads
            };
            let keys: Vec<Tensor> = heads
                .iter()
                .map(|s| Tensor::zeros((s.len(), 2), DType::F32, &Device::Cpu).unwrap())
                .collect();
            let positions: Vec<Vec<u64>> = heads
                .iter()
                .map(|s| (0..s.len() as u64).map(|p| 2 * p).collect())
                .collect();
            let layer = KvLayerView {
                layer: 0,
                heads: keys
                    .iter()
                    .zip(&positions)
                    .map(|(k, p)| KvHeadView {
                        keys: k,
                        values: k,
                        positions: p,
                        accumulated_attention: None,
                    })
                    .collect(),
                group_size: 1,
            };
            let ctx = KvStepContext {
                phase: KvPhase::Prefill,
                position: 80,
                prompt_len,
                budget,
                seed: 0,
            };
            let contract = contract(sinks, window, protects_prompt);
            let scores = scores_from_host(heads.clone()).unwrap();
            let plan = keep_best(&Declares(contract.clone()), &layer, &scores, &ctx).unwrap();
            for (h, s) in heads.iter().enumerate() {
                let (prefix, window) = contract.protected(&positions[h], &ctx);
                prop_assert_eq!(&plan.per_head[h], &keep_top_k(s, prefix, window, budget), "head {}", h);
            }
        }
    }

    #[test]
    fn scores_of_the_wrong_shape_are_refused() {
        let keys = Tensor::zeros((3, 2), DType::F32, &Device::Cpu).unwrap();
        let positions = [0, 1, 2];
        let head = KvHeadView {
            keys: &keys,
            values: &keys,
            positions: &positions,
            accumulated_attention: None,
        };
        let layer = KvLayerView {
            layer: 0,
            heads: vec![head, head],
            group_size: 1,
        };
        let ctx = KvStepContext {
            phase: KvPhase::Prefill,
            position: 3,
            prompt_len: 0,
            budget: 2,
            seed: 0,
        };
        let policy = Declares(contract(0, 0, false));
        let one = scores_from_host(vec![vec![0.0; 3]]).unwrap();
        let err = keep_best(&policy, &layer, &one, &ctx).unwrap_err();
        assert!(err.to_string().contains("Declares"), "{err}");
        assert!(
            err.to_string().contains("1 heads; the layer has 2"),
            "{err}"
        );
        let short = scores_from_host(vec![vec![0.0; 3], vec![0.0; 2]]).unwrap();
        let err = keep_best(&policy, &layer, &short, &ctx).unwrap_err();
        assert!(err.to_string().contains("head 1"), "{err}");
    }
}
