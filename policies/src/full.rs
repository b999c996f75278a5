//! `Full`: never evicts; the reference every other policy is compared with.

use serde::{Deserialize, Serialize};
use spectra_core::{
    KeepPlan, KvEvictionPolicy, KvLayerView, KvSideInfo, KvStepContext, PolicyContract, Result,
    TriggerSchedule,
};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Full {}

#[typetag::serde]
impl KvEvictionPolicy for Full {
    fn contract(&self) -> PolicyContract {
        PolicyContract {
            protects_prompt: true,
            fills_budget: false,
            top_k_by_score: false,
            ..PolicyContract::ranking(TriggerSchedule::Never)
        }
    }

    fn validate(&self, _budget: &spectra_core::Budget) -> std::result::Result<(), String> {
        // The budget is never used.
        Ok(())
    }

    fn select(
        &self,
        layer: &KvLayerView<'_>,
        _side: &KvSideInfo<'_>,
        _ctx: &KvStepContext,
    ) -> Result<KeepPlan> {
        let lens: Vec<usize> = layer.heads.iter().map(|h| h.len()).collect();
        Ok(KeepPlan::all(&lens))
    }
}

spectra_core::register_plugin!(
    KvEvictionPolicy,
    Full,
    "Never evicts: the full cache, the reference for the others."
);
