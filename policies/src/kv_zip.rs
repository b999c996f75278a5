//! `KvZip` (Kim et al., 2025, "KVzip: Query-Agnostic KV Cache Compression with Context Reconstruction";
//! kvpress `KVzipPress`): after the prompt, the model is asked to repeat it and reads it again; an
//! entry's score is the most attention it receives from one query of that re-read, over the heads of
//! its group. The re-read is the model's (the session runs it and passes the scores as side
//! information); this policy ranks by them, keeping the first entries as sinks as KVzip does.
//!
//! kvpress's KVzip ranks the heads of a layer (and the layers) together; `AdaKv(policy: KvZip,
//! alpha_safeguard: 0.0)` is its per-layer form, the heads sharing the layer's budget. The re-read's
//! softmax always includes KVzip's four first entries; `sinks` sets which entries are kept whatever
//! they score.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use spectra_core::{
    Budget, Error, GqaAggregation, KvEvictionPolicy, KvLayerView, KvSideInfo, KvStepContext,
    PolicyContract, Result, SideInfoNeeds, TriggerSchedule,
};

use crate::selection::{given_scores, validate_protected};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KvZip {
    /// The first entries, always kept (KVzip's `n_sink`).
    pub sinks: usize,
}

impl Default for KvZip {
    fn default() -> Self {
        KvZip { sinks: 4 }
    }
}

#[typetag::serde]
impl KvEvictionPolicy for KvZip {
    fn contract(&self) -> PolicyContract {
        PolicyContract {
            sinks: self.sinks,
            gqa: GqaAggregation::Max,
            // Only a whole prompt can be re-read: the scores exist right after it.
            ..PolicyContract::ranking(TriggerSchedule::PrefillOnly)
        }
    }

    fn needs(&self) -> SideInfoNeeds {
        SideInfoNeeds {
            context_reconstruction: true,
            ..SideInfoNeeds::default()
        }
    }

    fn validate(&self, budget: &Budget) -> std::result::Result<(), String> {
        validate_protected(budget, self.sinks, 0)
    }

    fn score(
        &self,
        layer: &KvLayerView<'_>,
        side: &KvSideInfo<'_>,
        _ctx: &KvStepContext,
    ) -> Result<Option<Vec<Tensor>>> {
        let scores = side.reconstruction.ok_or_else(|| {
            Error::invalid(
                "KvZip",
                "scores entries by the attention they receive while the model re-reads its prompt, \
                 and no re-read was given: compress right after a whole prompt, in a session given \
                 the request to repeat it (`Session::with_reread`)",
            )
        })?;
        let given = "the re-read of the whole prompt (compress right after it, before anything \
                     else evicts)";
        Ok(Some(given_scores("KvZip", layer, scores, given)?))
    }
}

spectra_core::register_plugin!(
    KvEvictionPolicy,
    KvZip,
    "Keeps the entries the model attends to most when it re-reads its prompt to repeat it (KVzip)."
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{ctx, Layer};

    #[test]
    fn keeps_the_sinks_and_the_most_attended_entries() {
        let layer = Layer::from_keys(&vec![vec![1.0, 0.0]; 6], 1);
        let received = vec![vec![0.0, 0.9, 0.1, 0.7, 0.2, 0.3]];
        let side = KvSideInfo {
            reconstruction: Some(&received),
            ..KvSideInfo::default()
        };
        let policy = KvZip { sinks: 1 };
        let plan = policy.select(&layer.view(), &side, &ctx(3, 6)).unwrap();
        assert_eq!(plan.per_head[0], vec![0, 1, 3]);
    }

    #[test]
    fn without_a_re_read_it_says_what_is_missing() {
        let layer = Layer::from_keys(&vec![vec![1.0, 0.0]; 6], 1);
        let err = KvZip::default()
            .select(&layer.view(), &KvSideInfo::default(), &ctx(3, 6))
            .unwrap_err()
            .to_string();
        assert!(err.contains("with_reread"), "{err}");
    }
}
