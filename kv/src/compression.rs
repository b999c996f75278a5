//! The compression loop: when a policy's trigger fires for which layers, what the policy is shown, and
//! the compaction of its keep plans. A decoder calls [`Compression::compress`] after every forward
//! pass that should be able to evict (each prefill chunk, or the whole prompt, and each decode step)
//! with the cache and the side information it recorded; it needs to know nothing about the policy.

use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Tensor;
use spectra_core::rope::RopeSpec;
use spectra_core::{
    Budget, Error, KvEvictionPolicy, KvPhase, KvSideInfo, KvStepContext, Result, SideInfoNeeds,
    TriggerSchedule,
};

use crate::KvCache;

/// What compression cost and saved.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CompressionStats {
    pub compressions: usize,
    /// Time spent choosing and compacting (scoring, selection, gathering).
    pub eviction_time: Duration,
    /// The largest KV allocation seen, in bytes.
    pub peak_kv_bytes: usize,
}

/// A policy at a budget, applied to one sequence's cache.
#[derive(Clone, Debug)]
pub struct Compression {
    policy: Option<Arc<dyn KvEvictionPolicy>>,
    budget: Budget,
    seed: u64,
    /// Entries at smaller positions belong to the prompt, which policies may protect or score.
    prompt_len: u64,
    /// The scores of a re-read of the prompt (KVzip), `[layer][kv_head][entry]`, until the cache is
    /// first compacted (they name entries by index).
    reconstruction: Option<Vec<Vec<Vec<f32>>>>,
    pub stats: CompressionStats,
}

impl Compression {
    /// Evicts with `policy` at `budget`, or never (`None`); `seed` reaches policies with seeded
    /// randomness.
    pub fn new(policy: Option<Arc<dyn KvEvictionPolicy>>, budget: Budget, seed: u64) -> Self {
        Compression {
            policy,
            budget,
            seed,
            prompt_len: 0,
            reconstruction: None,
            stats: CompressionStats::default(),
        }
    }

    /// Never evicts.
    pub fn never() -> Self {
        Compression::new(None, Budget::Tokens(usize::MAX), 0)
    }

    /// The same sequence's state (prompt, re-read scores) continued with another policy; its stats
    /// start empty.
    pub fn fork(
        &self,
        policy: Option<Arc<dyn KvEvictionPolicy>>,
        budget: Budget,
        seed: u64,
    ) -> Self {
        Compression {
            prompt_len: self.prompt_len,
            reconstruction: self.reconstruction.clone(),
            ..Compression::new(policy, budget, seed)
        }
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// What the decoder must record for the policy.
    pub fn needs(&self) -> SideInfoNeeds {
        self.policy.as_ref().map(|p| p.needs()).unwrap_or_default()
    }

    /// The policy applied, if any.
    pub fn policy(&self) -> Option<&Arc<dyn KvEvictionPolicy>> {
        self.policy.as_ref()
    }

    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Whether a policy is applied at all.
    pub fn evicts(&self) -> bool {
        self.policy.is_some()
    }

    /// Whether the cache only ever grows: no policy, or one that never fires.
    pub fn never_evicts(&self) -> bool {
        self.policy
            .as_ref()
            .is_none_or(|p| p.contract().trigger == TriggerSchedule::Never)
    }

    /// Marks everything read so far, up to `position`, as the prompt.
    pub fn end_prompt(&mut self, position: u64) {
        self.prompt_len = position;
    }

    /// Gives the re-read's scores, `[layer][kv_head][entry]` over the entries the cache holds now.
    pub fn set_reconstruction(&mut self, scores: Vec<Vec<Vec<f32>>>) {
        self.reconstruction = Some(scores);
    }

    pub fn has_reconstruction(&self) -> bool {
        self.reconstruction.is_some()
    }

    /// Notes the cache's current allocation in [`CompressionStats::peak_kv_bytes`].
    pub fn record_peak(&mut self, cache: &KvCache) {
        self.stats.peak_kv_bytes = self.stats.peak_kv_bytes.max(cache.bytes());
    }

    /// Compresses the layers whose trigger fires at `position` (the next token's), all layers where
    /// the policy shares one selection across them. `window_queries[l]` are layer `l`'s recorded
    /// post-RoPE queries, where the policy asked for them; `rope` describes the model's RoPE.
    pub fn compress(
        &mut self,
        cache: &mut KvCache,
        phase: KvPhase,
        position: u64,
        window_queries: &[Option<Tensor>],
        rope: Option<&RopeSpec>,
    ) -> Result<()> {
        let Some(policy) = self.policy.as_deref() else {
            return Ok(());
        };
        let started = Instant::now();
        let layers = cache.shape().layers;
        let context_len = position as usize;
        let budgets = policy.layer_budgets(
            (0..layers)
                .map(|l| self.budget.tokens(l, context_len))
                .collect(),
            context_len,
        );
        if budgets.len() != layers {
            return Err(Error::invalid(
                policy.typetag_name(),
                format!(
                    "layer_budgets gave {} budgets for {layers} layers; give one per layer",
                    budgets.len()
                ),
            ));
        }
        let contexts: Vec<KvStepContext> = budgets
            .into_iter()
            .map(|budget| KvStepContext {
                phase,
                position,
                prompt_len: self.prompt_len,
                budget,
                seed: self.seed,
            })
            .collect();
        let contract = policy.contract();
        let mut chosen = Vec::new();
        for (l, ctx) in contexts.iter().enumerate() {
            if policy.should_compress(contract.cache_len(&cache.lens(l)?), ctx) {
                chosen.push(l);
            }
        }
        if chosen.is_empty() {
            return Ok(());
        }
        if contract.shares_across_layers {
            chosen = (0..layers).collect();
        }
        let views = chosen
            .iter()
            .map(|&l| cache.layer_view(l))
            .collect::<Result<Vec<_>>>()?;
        let side: Vec<KvSideInfo<'_>> = chosen
            .iter()
            .map(|&l| KvSideInfo {
                window_queries: window_queries.get(l).and_then(Option::as_ref),
                rope,
                reconstruction: self.reconstruction.as_ref().map(|r| r[l].as_slice()),
            })
            .collect();
        let ctx: Vec<KvStepContext> = chosen.iter().map(|&l| contexts[l]).collect();
        let plans = policy.select_layers(&views, &side, &ctx)?;
        drop(views);
        for (&l, plan) in chosen.iter().zip(&plans) {
            cache.compact(l, plan)?;
        }
        self.reconstruction = None;
        self.stats.compressions += 1;
        self.stats.eviction_time += started.elapsed();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KvCacheShape;
    use candle_core::{DType, Device};
    use serde::{Deserialize, Serialize};
    use spectra_core::{scores_from_host, KvLayerView, PolicyContract};

    /// Keeps the newest entries; fires when a layer is over budget; optionally one selection for all
    /// layers; optionally a wrong number of layer budgets.
    #[derive(Debug, Serialize, Deserialize)]
    struct Newest {
        shared: bool,
        budgets_short: bool,
    }

    #[typetag::serde]
    impl KvEvictionPolicy for Newest {
        fn contract(&self) -> PolicyContract {
            PolicyContract {
                shares_across_layers: self.shared,
                ..PolicyContract::ranking(TriggerSchedule::EveryStep)
            }
        }

        fn layer_budgets(&self, mut budgets: Vec<usize>, _context_len: usize) -> Vec<usize> {
            if self.budgets_short {
                budgets.pop();
            }
            budgets
        }

        fn score(
            &self,
            layer: &KvLayerView<'_>,
            _side: &KvSideInfo<'_>,
            _ctx: &KvStepContext,
        ) -> Result<Option<Vec<Tensor>>> {
            let newer = layer
                .heads
                .iter()
                .map(|h| h.positions.iter().map(|&p| p as f32).collect())
                .collect();
            Ok(Some(scores_from_host(newer)?))
        }
    }

    /// Two layers, one KV head, layer 0 holding `first` entries and layer 1 `second`.
    fn cache(first: usize, second: usize) -> KvCache {
        let shape = KvCacheShape {
            layers: 2,
            kv_heads: 1,
            head_dim: 2,
            group_size: 1,
        };
        let mut cache = KvCache::new(shape, DType::F32, &Device::Cpu, false).unwrap();
        for (layer, n) in [first, second].into_iter().enumerate() {
            let k = Tensor::zeros((1, n, 2), DType::F32, &Device::Cpu).unwrap();
            let positions: Vec<u64> = (0..n as u64).collect();
            cache.append(layer, &k, &k, &positions).unwrap();
        }
        cache
    }

    #[test]
    fn compresses_the_layers_over_budget_and_counts_it() {
        let policy = Arc::new(Newest {
            shared: false,
            budgets_short: false,
        });
        let mut compression = Compression::new(Some(policy), Budget::Tokens(4), 0);
        let mut cache = cache(6, 3);
        compression
            .compress(&mut cache, KvPhase::Prefill, 6, &[], None)
            .unwrap();
        assert_eq!(cache.lens(0).unwrap(), [4]);
        assert_eq!(cache.positions(0, 0).unwrap(), [2, 3, 4, 5]);
        assert_eq!(cache.lens(1).unwrap(), [3]);
        assert_eq!(compression.stats.compressions, 1);
        // Nothing over budget: nothing happens, nothing is counted.
        compression
            .compress(&mut cache, KvPhase::Decode, 7, &[], None)
            .unwrap();
        assert_eq!(compression.stats.compressions, 1);
    }

    #[test]
    fn a_shared_selection_compresses_every_layer_and_forgets_the_reread() {
        let policy = Arc::new(Newest {
            shared: true,
            budgets_short: false,
        });
        let mut compression = Compression::new(Some(policy), Budget::Tokens(2), 0);
        compression.set_reconstruction(vec![vec![vec![0.0; 6]], vec![vec![0.0; 6]]]);
        let mut cache = cache(6, 6);
        compression
            .compress(&mut cache, KvPhase::Prefill, 6, &[], None)
            .unwrap();
        assert_eq!(cache.lens(0).unwrap(), [2]);
        assert_eq!(cache.lens(1).unwrap(), [2]);
        // The scores named entries by their old indices.
        assert!(!compression.has_reconstruction());
    }

    #[test]
    fn a_policy_without_a_budget_per_layer_is_an_error() {
        let policy = Arc::new(Newest {
            shared: false,
            budgets_short: true,
        });
        let mut compression = Compression::new(Some(policy), Budget::Tokens(2), 0);
        let err = compression
            .compress(&mut cache(6, 6), KvPhase::Prefill, 6, &[], None)
            .unwrap_err();
        assert!(err.to_string().contains("1 budgets for 2 layers"), "{err}");
    }

    #[test]
    fn without_a_policy_nothing_is_evicted() {
        let mut compression = Compression::never();
        assert!(compression.never_evicts() && !compression.evicts());
        let mut cache = cache(6, 6);
        compression
            .compress(&mut cache, KvPhase::Prefill, 6, &[], None)
            .unwrap();
        assert_eq!(cache.entries(), 12);
        compression.record_peak(&cache);
        assert_eq!(compression.stats.peak_kv_bytes, cache.bytes());
    }
}
