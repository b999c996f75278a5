//! `StreamingLlm` (Xiao et al. 2023): the first `sinks` entries plus the most recent ones
//! (docs/kv-policies.md §2.2). Positions stay the original ones (no re-rotation), as in kvpress.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use spectra_core::{
    scores_from_host, Budget, KvEvictionPolicy, KvLayerView, KvSideInfo, KvStepContext,
    PolicyContract, Result, TriggerSchedule,
};

use crate::selection::validate_protected;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamingLlm {
    /// Attention sinks kept at the start (the reference's `start_size`).
    pub sinks: usize,
}

impl Default for StreamingLlm {
    fn default() -> Self {
        StreamingLlm { sinks: 4 }
    }
}

#[typetag::serde]
impl KvEvictionPolicy for StreamingLlm {
    fn contract(&self) -> PolicyContract {
        PolicyContract {
            sinks: self.sinks,
            ..PolicyContract::ranking(TriggerSchedule::EveryStep)
        }
    }

    fn validate(&self, budget: &Budget) -> std::result::Result<(), String> {
        validate_protected(budget, self.sinks, 0)?;
        match budget.min_tokens() {
            Some(b) if self.sinks >= b => Err(format!(
                "{} sinks leave no room for recent tokens in a budget of {b}; use fewer sinks",
                self.sinks
            )),
            _ => Ok(()),
        }
    }

    /// Recency: the entry's index, so the newest rank highest.
    fn score(
        &self,
        layer: &KvLayerView<'_>,
        _side: &KvSideInfo<'_>,
        _ctx: &KvStepContext,
    ) -> Result<Option<Vec<Tensor>>> {
        let recency = layer
            .heads
            .iter()
            .map(|h| (0..h.len()).map(|i| i as f32).collect())
            .collect();
        Ok(Some(scores_from_host(recency)?))
    }
}

spectra_core::register_plugin!(
    KvEvictionPolicy,
    StreamingLlm,
    "Keeps the attention sinks and the most recent entries."
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{ctx, Layer};

    #[test]
    fn keeps_exactly_the_sinks_and_the_newest() {
        for (n, budget) in [(20usize, 10usize), (10, 10), (5, 10), (11, 5)] {
            let layer = Layer::random(n, 8, 2, 1, 3);
            let plan = StreamingLlm::default()
                .select(&layer.view(), &KvSideInfo::default(), &ctx(budget, n))
                .unwrap();
            let want: Vec<u32> = if n <= budget {
                (0..n as u32).collect()
            } else {
                (0..4).chain((n - (budget - 4)) as u32..n as u32).collect()
            };
            assert_eq!(plan.per_head, vec![want.clone(), want]);
        }
        assert!(StreamingLlm::default()
            .validate(&Budget::Tokens(4))
            .unwrap_err()
            .contains("no room"));
    }
}
