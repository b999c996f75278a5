//! `Random` (kvpress `RandomPress`): keeps a uniformly random subset, seeded by the generation's seed,
//! the layer and the head, so that a run is reproducible.

use candle_core::Tensor;
use rand::Rng;
use serde::{Deserialize, Serialize};
use spectra_core::rng::derived_rng;
use spectra_core::{
    scores_from_host, Budget, KvEvictionPolicy, KvLayerView, KvSideInfo, KvStepContext,
    PolicyContract, Result, TriggerSchedule,
};

use crate::selection::validate_score_only;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Random {
    /// When to compress; kvpress applies it once after the prompt.
    pub trigger: TriggerSchedule,
}

impl Default for Random {
    fn default() -> Self {
        Random {
            trigger: TriggerSchedule::PrefillOnly,
        }
    }
}

/// The RNG stream of one (layer, head), so that heads draw independent numbers.
fn stream(layer: usize, head: usize) -> u64 {
    ((layer as u64) << 32) | head as u64
}

#[typetag::serde]
impl KvEvictionPolicy for Random {
    fn contract(&self) -> PolicyContract {
        PolicyContract::ranking(self.trigger)
    }

    fn validate(&self, budget: &Budget) -> std::result::Result<(), String> {
        validate_score_only(self.trigger, budget)
    }

    /// Uniform numbers in [0, 1) from a generator seeded by (seed, step position, layer, head).
    fn score(
        &self,
        layer: &KvLayerView<'_>,
        _side: &KvSideInfo<'_>,
        ctx: &KvStepContext,
    ) -> Result<Option<Vec<Tensor>>> {
        let scores = layer
            .heads
            .iter()
            .enumerate()
            .map(|(h, head)| {
                let mut rng = derived_rng(
                    ctx.seed ^ ctx.position.rotate_left(17),
                    stream(layer.layer, h),
                );
                (0..head.len()).map(|_| rng.random::<f32>()).collect()
            })
            .collect();
        Ok(Some(scores_from_host(scores)?))
    }
}

spectra_core::register_plugin!(
    KvEvictionPolicy,
    Random,
    "Keeps a seeded uniformly random subset."
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{ctx, Layer};

    #[test]
    fn is_seeded_and_differs_between_heads_and_seeds() {
        let layer = Layer::random(200, 4, 2, 1, 0);
        let policy = Random::default();
        let a = policy
            .select(&layer.view(), &KvSideInfo::default(), &ctx(20, 200))
            .unwrap();
        let b = policy
            .select(&layer.view(), &KvSideInfo::default(), &ctx(20, 200))
            .unwrap();
        assert_eq!(a, b);
        assert_ne!(a.per_head[0], a.per_head[1]);
        let other_seed = KvStepContext {
            seed: 7,
            ..ctx(20, 200)
        };
        assert_ne!(
            policy
                .select(&layer.view(), &KvSideInfo::default(), &other_seed)
                .unwrap(),
            a
        );
        // Each entry is kept with probability 20/200; over 400 entries the mean index is near 99.5.
        let mean: f64 = a.per_head.iter().flatten().map(|&i| i as f64).sum::<f64>() / 40.0;
        assert!((mean - 99.5).abs() < 30.0, "{mean}");
    }
}
