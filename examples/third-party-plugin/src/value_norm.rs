//! `ValueNorm`: keeps the attention sinks and the entries whose values have the largest L2 norm.
//! Entries with large values move the attention output most when they are attended to.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use spectra_core::kv_policy::TriggerSchedule;
use spectra_core::{
    Budget, KvEvictionPolicy, KvLayerView, KvSideInfo, KvStepContext, PolicyContract,
};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueNorm {
    pub sinks: usize,
}

impl Default for ValueNorm {
    fn default() -> Self {
        ValueNorm { sinks: 4 }
    }
}

#[typetag::serde]
impl KvEvictionPolicy for ValueNorm {
    fn contract(&self) -> PolicyContract {
        PolicyContract {
            sinks: self.sinks,
            ..PolicyContract::ranking(TriggerSchedule::PrefillOnly)
        }
    }

    fn validate(&self, budget: &Budget) -> Result<(), String> {
        budget.validate()?;
        match budget.min_tokens() {
            Some(b) if self.sinks >= b => Err(format!(
                "{} sinks leave no room in a budget of {b}; use fewer sinks",
                self.sinks
            )),
            _ => Ok(()),
        }
    }

    fn score(
        &self,
        layer: &KvLayerView<'_>,
        _side: &KvSideInfo<'_>,
        _ctx: &KvStepContext,
    ) -> spectra_core::Result<Option<Vec<Tensor>>> {
        let norms = layer
            .heads
            .iter()
            .map(|h| h.values.to_dtype(DType::F32)?.sqr()?.sum(1)?.sqrt())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(norms))
    }
}

spectra_core::register_plugin!(
    KvEvictionPolicy,
    ValueNorm,
    "Keeps the sinks and the entries with the largest value norm."
);
