//! The suite catches broken policies: each policy here breaks one declared promise.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::check_kv_policy;
use spectra_core::kv_policy::{
    keep_top_k, KeepPlan, KvEvictionPolicy, KvLayerView, KvSideInfo, KvStepContext, PolicyContract,
    TriggerSchedule,
};
use spectra_core::Result;

/// How a test policy misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
enum Flaw {
    /// Keeps everything although it declares that it fills the budget.
    KeepsAll,
    /// Declares a recent window of 2 but does not protect it.
    DropsWindow,
    /// Declares selection by `score` (recency) but keeps the oldest entries.
    IgnoresScore,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Broken {
    flaw: Flaw,
}

#[typetag::serde]
impl KvEvictionPolicy for Broken {
    fn contract(&self) -> PolicyContract {
        PolicyContract {
            recent_window: if self.flaw == Flaw::DropsWindow { 2 } else { 0 },
            ..PolicyContract::ranking(TriggerSchedule::EveryStep)
        }
    }

    fn validate(&self, budget: &spectra_core::Budget) -> std::result::Result<(), String> {
        budget.validate()?;
        match budget.min_tokens() {
            Some(b) if b <= self.contract().recent_window => Err("window too large".into()),
            _ => Ok(()),
        }
    }

    fn score(
        &self,
        layer: &KvLayerView<'_>,
        _: &KvSideInfo<'_>,
        _: &KvStepContext,
    ) -> Result<Option<Vec<Tensor>>> {
        let recency = layer
            .heads
            .iter()
            .map(|h| (0..h.len()).map(|i| i as f32).collect())
            .collect();
        Ok(Some(spectra_core::scores_from_host(recency)?))
    }

    fn select(
        &self,
        layer: &KvLayerView<'_>,
        _: &KvSideInfo<'_>,
        ctx: &KvStepContext,
    ) -> Result<KeepPlan> {
        let per_head = layer
            .heads
            .iter()
            .map(|h| {
                let n = h.len();
                match self.flaw {
                    Flaw::KeepsAll => (0..n as u32).collect(),
                    // Oldest first: scores falling with the index.
                    Flaw::DropsWindow | Flaw::IgnoresScore => {
                        let oldest: Vec<f32> = (0..n).map(|i| -(i as f32)).collect();
                        keep_top_k(&oldest, 0, 0, ctx.budget)
                    }
                }
            })
            .collect();
        Ok(KeepPlan { per_head })
    }
}

fn violation(flaw: Flaw) -> String {
    let result = std::panic::catch_unwind(|| check_kv_policy(&Broken { flaw }));
    let payload = result.expect_err("the suite must reject a broken policy");
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

#[test]
fn suite_names_the_broken_promise() {
    assert!(
        violation(Flaw::KeepsAll).contains("A3"),
        "{}",
        violation(Flaw::KeepsAll)
    );
    assert!(
        violation(Flaw::DropsWindow).contains("C8"),
        "{}",
        violation(Flaw::DropsWindow)
    );
    assert!(
        violation(Flaw::IgnoresScore).contains("D12"),
        "{}",
        violation(Flaw::IgnoresScore)
    );
}
