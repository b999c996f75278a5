//! `KNorm` (kvpress `KnormPress`): keeps the entries whose keys have the smallest L2 norm, score −‖k‖.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use spectra_core::{
    Budget, KvEvictionPolicy, KvLayerView, KvSideInfo, KvStepContext, PolicyContract, Result,
    TriggerSchedule,
};

use crate::selection::validate_score_only;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KNorm {
    /// When to compress; kvpress applies it once after the prompt.
    pub trigger: TriggerSchedule,
}

impl Default for KNorm {
    fn default() -> Self {
        KNorm {
            trigger: TriggerSchedule::PrefillOnly,
        }
    }
}

#[typetag::serde]
impl KvEvictionPolicy for KNorm {
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
                    return Ok(Tensor::zeros(0, DType::F32, h.keys.device())?);
                }
                Ok(h.keys.to_dtype(DType::F32)?.sqr()?.sum(1)?.sqrt()?.neg()?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(scores))
    }
}

spectra_core::register_plugin!(
    KvEvictionPolicy,
    KNorm,
    "Keeps the entries with the smallest key norm (score −‖k‖)."
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::HostScores;
    use crate::testing::{ctx, Layer};

    #[test]
    fn keeps_the_smallest_keys() {
        let layer = Layer::from_keys(
            &[
                vec![3.0, 4.0],
                vec![0.0, 1.0],
                vec![6.0, 8.0],
                vec![1.0, 1.0],
            ],
            1,
        );
        let policy = KNorm::default();
        let scores = policy.host_scores(&layer.view(), &KvSideInfo::default(), &ctx(2, 4));
        assert_eq!(scores[0], vec![-5.0, -1.0, -10.0, -(2f32.sqrt())]);
        let plan = policy
            .select(&layer.view(), &KvSideInfo::default(), &ctx(2, 4))
            .unwrap();
        assert_eq!(plan.per_head[0], vec![1, 3]);
    }
}
