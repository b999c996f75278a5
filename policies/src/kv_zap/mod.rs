//! `KvZap` (NVIDIA, 2026, arXiv 2601.07891; kvpress `KVzapPress`): KVzip's scores without KVzip's
//! re-read. A small surrogate,
//! fitted on the model's own KVzip scores over plain text (`spectra fit-kvzap`), predicts from each
//! layer's normalized input row the log of the score KVzip would give the entry written from it. An
//! entry is scored once, when it is written, so the policy compresses after prefill and, if asked,
//! while decoding; kvpress's `DMSPress` keeps the newest 128 entries, as the default here does.
//!
//! The surrogate is linear, fitted by ridge regression as kvpress's linear KVzap is; its target is
//! spectra's KVzip score (the most attention an entry receives from one query of the re-read, over
//! its group), not the paper's KVzip+ (which also weighs by ‖W_o v‖ / ‖h‖).

pub mod ridge;
pub mod surrogate;

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use spectra_core::{
    Budget, Error, KvEvictionPolicy, KvLayerView, KvSideInfo, KvStepContext, PolicyContract,
    Result, SideInfoNeeds, TriggerSchedule,
};

use crate::loaded::Loaded;
use crate::selection::{given_scores, validate_protected};
pub use surrogate::Surrogate;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvZap {
    /// The surrogate `spectra fit-kvzap` wrote for the model; a config must name it.
    pub surrogate: PathBuf,
    /// The first entries, always kept.
    #[serde(default)]
    pub sinks: usize,
    /// The newest entries, always kept (kvpress's sliding window).
    #[serde(default = "sliding_window")]
    pub recent_window: usize,
    /// When to compress: after the prompt, or also while decoding.
    #[serde(default = "after_the_prompt")]
    pub trigger: TriggerSchedule,
    /// Runtime state: the surrogate once loaded (or given with [`KvZap::with_surrogate`]).
    #[serde(skip)]
    pub loaded: Loaded<Surrogate>,
}

fn sliding_window() -> usize {
    128
}

fn after_the_prompt() -> TriggerSchedule {
    TriggerSchedule::PrefillOnly
}

impl Default for KvZap {
    /// kvpress's settings, with no surrogate: `spectra list` shows it, and a config must name one.
    fn default() -> Self {
        KvZap {
            surrogate: PathBuf::new(),
            sinks: 0,
            recent_window: sliding_window(),
            trigger: after_the_prompt(),
            loaded: Loaded::default(),
        }
    }
}

impl KvZap {
    /// This configuration scoring with `surrogate` (instead of its file).
    pub fn with_surrogate(self, surrogate: Surrogate) -> Self {
        KvZap {
            loaded: Loaded::with(surrogate),
            ..self
        }
    }

    /// The surrogate, read from its file the first time.
    fn surrogate(&self) -> Result<Arc<Surrogate>> {
        self.loaded.get_or_load(|| {
            if self.surrogate.as_os_str().is_empty() {
                return Err(Error::invalid("KvZap", NO_SURROGATE));
            }
            Surrogate::load(&self.surrogate)
        })
    }
}

const NO_SURROGATE: &str = "needs `surrogate: \"<file>\"`, the surrogate `spectra fit-kvzap` \
                            fitted for the model";

#[typetag::serde]
impl KvEvictionPolicy for KvZap {
    fn contract(&self) -> PolicyContract {
        PolicyContract {
            sinks: self.sinks,
            recent_window: self.recent_window,
            ..PolicyContract::ranking(self.trigger)
        }
    }

    fn needs(&self) -> SideInfoNeeds {
        SideInfoNeeds {
            layer_inputs: true,
            ..SideInfoNeeds::default()
        }
    }

    fn files(&self) -> Vec<PathBuf> {
        (!self.surrogate.as_os_str().is_empty())
            .then(|| self.surrogate.clone())
            .into_iter()
            .collect()
    }

    /// Also reads the surrogate a config names, so that a missing or damaged file stops a run before
    /// it starts. (Without one, as in the default, scoring says to name one.)
    fn validate(&self, budget: &Budget) -> std::result::Result<(), String> {
        validate_protected(budget, self.sinks, self.recent_window)?;
        if self.surrogate.as_os_str().is_empty() {
            return Ok(());
        }
        self.surrogate().map(|_| ()).map_err(|e| e.to_string())
    }

    fn score_written(&self, layer: usize, inputs: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(self.surrogate()?.predict(layer, inputs)?))
    }

    fn score(
        &self,
        layer: &KvLayerView<'_>,
        side: &KvSideInfo<'_>,
        _ctx: &KvStepContext,
    ) -> Result<Option<Vec<Tensor>>> {
        let scores = side.written_scores.ok_or_else(|| {
            Error::invalid(
                "KvZap",
                "scores entries as they are written, and no scores were given; run it in a \
                 session (its forward passes record each layer's input)",
            )
        })?;
        Ok(Some(given_scores(
            "KvZap",
            layer,
            scores,
            "the entries' writing (every forward pass's inputs go to Compression::write)",
        )?))
    }
}

spectra_core::register_plugin!(
    KvEvictionPolicy,
    KvZap,
    "Keeps the entries a surrogate fitted on KVzip's scores predicts KVzip would keep, scoring each \
     from the layer's input as it is written (KVzap)."
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{ctx, Layer};
    use candle_core::Device;

    #[test]
    fn keeps_the_window_and_the_best_predicted_entries() {
        let layer = Layer::from_keys(&vec![vec![1.0, 0.0]; 6], 1);
        let written = vec![vec![-1.0, 4.0, -3.0, 2.0, -5.0, -9.0]];
        let side = KvSideInfo {
            written_scores: Some(&written),
            ..KvSideInfo::default()
        };
        let policy = KvZap {
            recent_window: 1,
            ..KvZap::default()
        };
        let plan = policy.select(&layer.view(), &side, &ctx(3, 6)).unwrap();
        assert_eq!(plan.per_head[0], vec![1, 3, 5]);
    }

    #[test]
    fn scores_written_entries_with_its_surrogate() {
        let surrogate = Surrogate::new(1, 2, vec![vec![1.0, -1.0]], vec![vec![0.5]]).unwrap();
        let policy = KvZap::default().with_surrogate(surrogate);
        let inputs = Tensor::new(&[[3f32, 1.0], [0.0, 2.0]], &Device::Cpu).unwrap();
        let scores = policy.score_written(0, &inputs).unwrap().unwrap();
        assert_eq!(
            scores.to_vec2::<f32>().unwrap(),
            vec![vec![2.5], vec![-1.5]]
        );
        assert!(policy.validate(&Budget::Tokens(200)).is_ok());
    }

    #[test]
    fn a_missing_surrogate_says_how_to_fit_one() {
        let inputs = Tensor::zeros((1, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        let err = KvZap::default()
            .score_written(0, &inputs)
            .unwrap_err()
            .to_string();
        assert!(err.contains("fit-kvzap"), "{err}");
        let unnamed = spectra_core::config::parse_ron::<Box<dyn KvEvictionPolicy>>(
            r#"(type: "KvZap", cfg: (recent_window: 4))"#,
            std::path::Path::new("kv.ron"),
        )
        .unwrap_err()
        .to_string();
        assert!(unnamed.contains("surrogate"), "{unnamed}");
        let policy = KvZap {
            surrogate: "no/such/surrogate.safetensors".into(),
            ..KvZap::default()
        };
        let err = policy.validate(&Budget::Tokens(200)).unwrap_err();
        assert!(err.contains("spectra fit-kvzap --model"), "{err}");
    }
}
