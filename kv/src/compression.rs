//! The compression loop: when a policy's trigger fires for which layers, what the policy is shown, and
//! the compaction of its keep plans. A decoder calls [`Compression::compress`] after every forward
//! pass that should be able to evict (each prefill chunk, or the whole prompt, and each decode step)
//! with the cache and the side information it recorded; it needs to know nothing about the policy.

use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Tensor;
use spectra_core::rope::RopeSpec;
use spectra_core::{
    Budget, Error, KeepPlan, KvEvictionPolicy, KvPhase, KvSideInfo, KvStepContext, Result,
    SideInfoNeeds, TriggerSchedule,
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
    /// The scores the policy gave entries as they were written, `[layer][kv_head][entry]`, compacted
    /// with the cache.
    written: Option<Vec<Vec<Vec<f32>>>>,
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
            written: None,
            stats: CompressionStats::default(),
        }
    }

    /// Never evicts.
    pub fn never() -> Self {
        Compression::new(None, Budget::Tokens(usize::MAX), 0)
    }

    /// The same sequence's state (prompt, re-read scores) continued with another policy; its stats
    /// start empty. Scores given as entries were written belong to this policy, so the fork has none
    /// until it is given the inputs that wrote them ([`write`](Self::write)).
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

    /// Has the policy score the entries the last forward pass appended to `cache`, where it scores
    /// entries as they are written: `inputs[l]` `[t, d_model]` holds layer `l`'s input rows for them.
    pub fn write(&mut self, cache: &KvCache, inputs: &[Option<Tensor>]) -> Result<()> {
        let Some(policy) = self.policy.as_deref() else {
            return Ok(());
        };
        if !policy.needs().layer_inputs {
            return Ok(());
        }
        let shape = cache.shape();
        let name = policy.typetag_name();
        let written = self
            .written
            .get_or_insert_with(|| vec![vec![Vec::new(); shape.kv_heads]; shape.layers]);
        for (l, layer) in written.iter_mut().enumerate() {
            let input = inputs.get(l).and_then(Option::as_ref).ok_or_else(|| {
                Error::invalid(
                    name,
                    format!(
                        "scores entries as they are written, and layer {l}'s input was not \
                         recorded; set Taps::record_layer_inputs"
                    ),
                )
            })?;
            let t = input.dim(0)?;
            let scores = policy.score_written(l, input)?.ok_or_else(|| {
                Error::invalid(
                    name,
                    "asks for the layer inputs (SideInfoNeeds::layer_inputs) but scores nothing \
                     with them; implement score_written",
                )
            })?;
            if scores.dims() != [t, shape.kv_heads] {
                return Err(Error::invalid(
                    name,
                    format!(
                        "score_written gave scores of shape {:?} for {t} entries of layer {l}; \
                         give [{t}, {}], one per entry and KV head",
                        scores.dims(),
                        shape.kv_heads
                    ),
                ));
            }
            let per_head = scores
                .to_dtype(candle_core::DType::F32)?
                .t()?
                .to_vec2::<f32>()?;
            for (head, new) in layer.iter_mut().zip(per_head) {
                head.extend(new);
            }
        }
        Ok(())
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
        if let Some(written) = &self.written {
            for &l in &chosen {
                let lens: Vec<usize> = written[l].iter().map(Vec::len).collect();
                if lens != cache.lens(l)? {
                    return Err(Error::invalid(
                        policy.typetag_name(),
                        format!(
                            "layer {l} holds {:?} entries per head but {lens:?} were scored as \
                             they were written; give every forward pass's inputs to write()",
                            cache.lens(l)?
                        ),
                    ));
                }
            }
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
                written_scores: self.written.as_ref().map(|w| w[l].as_slice()),
            })
            .collect();
        let ctx: Vec<KvStepContext> = chosen.iter().map(|&l| contexts[l]).collect();
        let plans = policy.select_layers(&views, &side, &ctx)?;
        drop(views);
        for (&l, plan) in chosen.iter().zip(&plans) {
            cache.compact(l, plan)?;
            if let Some(written) = &mut self.written {
                keep_scores(&mut written[l], plan);
            }
        }
        self.reconstruction = None;
        self.stats.compressions += 1;
        self.stats.eviction_time += started.elapsed();
        Ok(())
    }
}

/// Keeps, per head, the scores of the entries `plan` keeps (a plan [`KvCache::compact`] accepted).
pub(crate) fn keep_scores(per_head: &mut [Vec<f32>], plan: &KeepPlan) {
    for (scores, keep) in per_head.iter_mut().zip(&plan.per_head) {
        *scores = keep.iter().map(|&i| scores[i as usize]).collect();
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

    /// Scores each entry as it is written by its input's first number, and keeps the best.
    #[derive(Debug, Serialize, Deserialize)]
    struct FirstInput;

    #[typetag::serde]
    impl KvEvictionPolicy for FirstInput {
        fn contract(&self) -> PolicyContract {
            PolicyContract::ranking(TriggerSchedule::EveryStep)
        }

        fn needs(&self) -> SideInfoNeeds {
            SideInfoNeeds {
                layer_inputs: true,
                ..SideInfoNeeds::default()
            }
        }

        fn score_written(&self, _layer: usize, inputs: &Tensor) -> Result<Option<Tensor>> {
            Ok(Some(inputs.narrow(1, 0, 1)?))
        }

        fn score(
            &self,
            _layer: &KvLayerView<'_>,
            side: &KvSideInfo<'_>,
            _ctx: &KvStepContext,
        ) -> Result<Option<Vec<Tensor>>> {
            Ok(Some(scores_from_host(
                side.written_scores.unwrap().to_vec(),
            )?))
        }
    }

    /// The written scores follow their entries through compactions, and a pass whose inputs were not
    /// given leaves them out of step with the cache, which is an error, not a wrong ranking.
    #[test]
    fn written_scores_follow_their_entries() {
        let mut compression = Compression::new(Some(Arc::new(FirstInput)), Budget::Tokens(2), 0);
        let inputs = |firsts: &[f32]| {
            let rows: Vec<f32> = firsts.iter().flat_map(|&f| [f, 0.0]).collect();
            let t = Tensor::from_vec(rows, (firsts.len(), 2), &Device::Cpu).unwrap();
            vec![Some(t.clone()), Some(t)]
        };
        let mut cache = cache(4, 4);
        compression
            .write(&cache, &inputs(&[3.0, 1.0, 4.0, 2.0]))
            .unwrap();
        compression
            .compress(&mut cache, KvPhase::Prefill, 4, &[], None)
            .unwrap();
        assert_eq!(cache.positions(0, 0).unwrap(), [0, 2]);
        // A new entry scoring 3.5 evicts the one at position 0 (3.0), not the one at 2 (4.0).
        let k = Tensor::zeros((1, 1, 2), DType::F32, &Device::Cpu).unwrap();
        for layer in 0..2 {
            cache.append(layer, &k, &k, &[4]).unwrap();
        }
        compression.write(&cache, &inputs(&[3.5])).unwrap();
        compression
            .compress(&mut cache, KvPhase::Decode, 5, &[], None)
            .unwrap();
        assert_eq!(cache.positions(1, 0).unwrap(), [2, 4]);
        for layer in 0..2 {
            cache.append(layer, &k, &k, &[5]).unwrap();
        }
        let err = compression
            .compress(&mut cache, KvPhase::Decode, 6, &[], None)
            .unwrap_err();
        assert!(
            err.to_string().contains("give every forward pass's inputs"),
            "{err}"
        );
    }
}
