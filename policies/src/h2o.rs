//! `H2o` (Zhang et al. 2023): keeps the recent window plus the "heavy hitters", the entries that
//! have received the most attention so far (docs/kv-policies.md §2.3). The model adds each step's
//! attention probabilities to the cache (`KvCache::add_attention`, summed over the step's queries
//! and the GQA group); the cache keeps the sums on its device and gathers them with the entries
//! when it compacts, and they are the scores as they stand.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use spectra_core::{
    Budget, Error, KvEvictionPolicy, KvLayerView, KvSideInfo, KvStepContext, PolicyContract,
    Result, SideInfoNeeds, TriggerSchedule,
};

use crate::selection::validate_protected;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct H2o {
    /// The newest entries always kept (the reference's `recent_size`); the rest of the budget holds the
    /// heavy hitters.
    pub recent_window: usize,
}

impl Default for H2o {
    fn default() -> Self {
        H2o { recent_window: 512 }
    }
}

#[typetag::serde]
impl KvEvictionPolicy for H2o {
    fn contract(&self) -> PolicyContract {
        PolicyContract {
            recent_window: self.recent_window,
            ..PolicyContract::ranking(TriggerSchedule::EveryStep)
        }
    }

    fn needs(&self) -> SideInfoNeeds {
        SideInfoNeeds {
            accumulated_attention: true,
            ..SideInfoNeeds::default()
        }
    }

    fn validate(&self, budget: &Budget) -> std::result::Result<(), String> {
        validate_protected(budget, 0, self.recent_window)
    }

    /// The accumulated attention of each entry.
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
                h.accumulated_attention.cloned().ok_or_else(|| {
                    Error::invalid(
                        "H2o",
                        "needs each entry's accumulated attention; create the KvCache with tracks_attention = true \
                         and add every step's attention with KvCache::add_attention",
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(scores))
    }
}

spectra_core::register_plugin!(
    KvEvictionPolicy,
    H2o,
    "Keeps the recent window and the entries with the most accumulated attention."
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::ctx;
    use candle_core::{DType, Device, Tensor};
    use rand::Rng;
    use spectra_kv::{KvCache, KvCacheShape};

    /// Decodes 60 steps with random queries under a budget of 12 (window 4): each step appends a key,
    /// adds that step's softmax attention to the cache, and evicts one entry. Checked against an f64
    /// bookkeeping of (position, accumulated attention) kept beside the cache.
    #[test]
    fn accumulates_attention_and_evicts_the_lightest_old_entry() {
        let (d, budget, window) = (4, 12, 4);
        let policy = H2o {
            recent_window: window,
        };
        let shape = KvCacheShape {
            layers: 1,
            kv_heads: 1,
            head_dim: d,
            group_size: 1,
        };
        let mut cache = KvCache::new(shape, DType::F32, &Device::Cpu, true).unwrap();
        let mut rng = spectra_core::rng::derived_rng(5, 0);
        let mut shadow: Vec<(u64, Vec<f32>, f64)> = Vec::new();
        for t in 0..60u64 {
            let key: Vec<f32> = (0..d).map(|_| rng.random_range(-2.0..2.0)).collect();
            let kt = Tensor::from_vec(key.clone(), (1, 1, d), &Device::Cpu).unwrap();
            cache.append(0, &kt, &kt, &[t]).unwrap();
            shadow.push((t, key, 0.0));
            // This step's query attends to every cached entry (itself included).
            let query: Vec<f32> = (0..d).map(|_| rng.random_range(-2.0..2.0)).collect();
            let logits: Vec<f64> = shadow
                .iter()
                .map(|(_, k, _)| {
                    k.iter()
                        .zip(&query)
                        .map(|(a, b)| (a * b) as f64)
                        .sum::<f64>()
                        / (d as f64).sqrt()
                })
                .collect();
            let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = logits.iter().map(|l| (l - max).exp()).sum();
            let probs: Vec<f64> = logits.iter().map(|l| (l - max).exp() / z).collect();
            let held = |cache: &KvCache| {
                let acc = cache.accumulated_attention(0, 0).unwrap().unwrap();
                acc.to_vec1::<f32>().unwrap()
            };
            let before = held(&cache);
            let received: Vec<f32> = probs.iter().map(|&p| p as f32).collect();
            let received = Tensor::new(received, &Device::Cpu).unwrap();
            cache.add_attention(0, 0, &received).unwrap();
            let after = held(&cache);
            // Accumulated attention never decreases.
            assert!(before.iter().zip(&after).all(|(b, a)| a >= b));
            shadow.iter_mut().zip(&probs).for_each(|(e, p)| e.2 += p);
            let c = ctx(budget, t as usize + 1);
            let view = cache.layer_view(0).unwrap();
            if !policy.should_compress(view.heads[0].len(), &c) {
                assert!(shadow.len() <= budget);
                continue;
            }
            let plan = policy.select(&view, &KvSideInfo::default(), &c).unwrap();
            drop(view);
            // One entry over budget: the evicted one is the argmin of accumulated attention outside the window.
            let candidates = shadow.len() - window;
            let argmin = (0..candidates)
                .min_by(|&a, &b| shadow[a].2.total_cmp(&shadow[b].2))
                .unwrap();
            let want: Vec<u32> = (0..shadow.len() as u32)
                .filter(|&i| i as usize != argmin)
                .collect();
            assert_eq!(plan.per_head[0], want, "step {t}");
            shadow.remove(argmin);
            cache.compact(0, &plan).unwrap();
            let kept: Vec<u64> = shadow.iter().map(|e| e.0).collect();
            assert_eq!(cache.positions(0, 0).unwrap(), &kept[..]);
            // f32 running sums against f64 ones over ≤ 60 additions of numbers ≤ 1: error ≤ 60 · 2^-24 · 60.
            for (a, e) in held(&cache).iter().zip(&shadow) {
                assert!((*a as f64 - e.2).abs() < 1e-4);
            }
        }
        assert_eq!(cache.lens(0).unwrap(), vec![budget]);
    }

    #[test]
    fn without_accumulated_attention_it_says_how_to_get_it() {
        let layer = crate::testing::Layer::random(10, 4, 1, 1, 0);
        let err = H2o::default()
            .select(&layer.view(), &KvSideInfo::default(), &ctx(5, 10))
            .unwrap_err();
        assert!(err.to_string().contains("tracks_attention"), "{err}");
        assert!(H2o::default()
            .validate(&Budget::Tokens(512))
            .unwrap_err()
            .contains("window"));
    }
}
