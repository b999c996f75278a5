//! `KvEvictionPolicy`: decides which cached keys and values of a layer to keep.
//!
//! A policy sees one layer's cache (keys as stored after RoPE, values, each entry's original absolute
//! position, per KV head), optional side information, the budget and the step, and returns a keep plan:
//! per KV head, sorted unique indices. It declares its contract as data so the conformance suite can
//! hold it to that contract.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::rope::RopeSpec;
use crate::{Error, Result};

/// When a policy compresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TriggerSchedule {
    /// Never evicts (the `Full` baseline).
    Never,
    /// Once, after prefill, when the prompt exceeds the budget; decoded tokens are appended uncompressed.
    PrefillOnly,
    /// After prefill and at every decode step at which the cache exceeds the budget (one eviction per step).
    EveryStep,
    /// After prefill; during decoding when the cache reaches `budget + slack`, back to `budget`.
    Slack { slack: usize },
    /// After prefill; during decoding when the cache exceeds the budget and the absolute position is a
    /// multiple of `every`.
    Interval { every: usize },
}

/// How scores of the query heads sharing one KV head are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GqaAggregation {
    /// The policy scores KV heads directly (keys only, or no scores at all).
    NotApplicable,
    Max,
    Mean,
}

/// What a policy promises; the conformance suite checks each promise it makes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyContract {
    /// The first `sinks` entries (by position) are always kept.
    pub sinks: usize,
    /// The newest `recent_window` entries are always kept.
    pub recent_window: usize,
    /// Entries from the prompt (position < prompt length) are never evicted.
    pub protects_prompt: bool,
    /// After compression every head holds exactly `min(budget, n)` entries (otherwise at most `budget`).
    pub fills_budget: bool,
    pub trigger: TriggerSchedule,
    pub gqa: GqaAggregation,
    /// One keep set per KV head is chosen from all layers together and applied to every layer.
    pub shares_across_layers: bool,
    /// Unprotected entries are chosen by `score` alone: every kept one scores at least as high as every
    /// evicted one (ties broken towards newer positions, NaN scored lowest).
    pub top_k_by_score: bool,
    /// The KV heads of a layer share `kv_heads × budget` entries (AdaKV): one head may keep more than
    /// the budget and another fewer. Then "everything fits" and "fills the budget" are about that
    /// total, the trigger sees the mean length per head, and heads are not independent.
    pub heads_share_budget: bool,
}

impl PolicyContract {
    /// The contract most policies make, adjusted with struct-update syntax where one differs: every
    /// entry ranked by the policy's score alone, the budget filled, nothing protected, each head of
    /// each layer on its own (keys scored per KV head), compressing as `trigger` says.
    pub fn ranking(trigger: TriggerSchedule) -> Self {
        PolicyContract {
            sinks: 0,
            recent_window: 0,
            protects_prompt: false,
            fills_budget: true,
            trigger,
            gqa: GqaAggregation::NotApplicable,
            shares_across_layers: false,
            top_k_by_score: true,
            heads_share_budget: false,
        }
    }

    /// The entries of one head (at `positions`) kept whatever they score, as `(prefix, window)`: the
    /// first `max(sinks, prompt entries)` (prompt entries where protected), then the newest
    /// `recent_window`, cut to the budget in that order.
    pub fn protected(&self, positions: &[u64], ctx: &KvStepContext) -> (usize, usize) {
        let n = positions.len();
        let prompt = if self.protects_prompt {
            positions.partition_point(|&p| p < ctx.prompt_len)
        } else {
            0
        };
        let prefix = self.sinks.max(prompt).min(n).min(ctx.budget);
        let window = self.recent_window.min(ctx.budget - prefix).min(n - prefix);
        (prefix, window)
    }

    /// The length of a layer with heads of `lens` entries that the trigger compares with the budget:
    /// the longest head, or the mean per head rounded up where the heads share the budget.
    pub fn cache_len(&self, lens: &[usize]) -> usize {
        if self.heads_share_budget {
            lens.iter().sum::<usize>().div_ceil(lens.len().max(1))
        } else {
            lens.iter().copied().max().unwrap_or(0)
        }
    }
}

/// Whether this is the compression right after the prompt or one during decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvPhase {
    Prefill,
    Decode,
}

/// The step at which a policy is asked to act.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KvStepContext {
    pub phase: KvPhase,
    /// Absolute position of the next token (= tokens processed so far).
    pub position: u64,
    /// Number of prompt tokens; entries with a smaller position belong to the prompt.
    pub prompt_len: u64,
    /// Entries to keep per KV head in this layer after compressing.
    pub budget: usize,
    /// Seed of the generation, for policies with seeded randomness (tie noise, `Random`).
    pub seed: u64,
}

/// One KV head of one layer's cache.
#[derive(Clone, Copy, Debug)]
pub struct KvHeadView<'a> {
    /// `[n, head_dim]`, as stored (after RoPE).
    pub keys: &'a Tensor,
    /// `[n, head_dim]`.
    pub values: &'a Tensor,
    /// Original absolute position of each entry, strictly increasing.
    pub positions: &'a [u64],
    /// Attention each entry has received so far, summed over queries and the GQA group (H2O), when the
    /// cache accumulates it: `[n]` f32, on the keys' device.
    pub accumulated_attention: Option<&'a Tensor>,
}

impl KvHeadView<'_> {
    pub fn len(&self) -> usize {
        self.positions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }
}

/// One layer's cache.
#[derive(Clone, Debug)]
pub struct KvLayerView<'a> {
    pub layer: usize,
    pub heads: Vec<KvHeadView<'a>>,
    /// Query heads per KV head (1 without grouped-query attention).
    pub group_size: usize,
}

/// Information a policy can ask the forward pass for (see `SideInfoNeeds`).
#[derive(Clone, Copy, Debug, Default)]
pub struct KvSideInfo<'a> {
    /// Post-RoPE queries of the last `w` positions, `[num_query_heads, w, head_dim]`.
    pub window_queries: Option<&'a Tensor>,
    /// The model's rotary embedding (frequencies, pairing, scaling).
    pub rope: Option<&'a RopeSpec>,
    /// Per KV head, per entry: the most attention the entry received from one query (of any head of
    /// its group) while the model re-read its context (KVzip's context reconstruction). Given only
    /// right after a whole prompt was read, while the entries are still those the re-read saw.
    pub reconstruction: Option<&'a [Vec<f32>]>,
    /// Per KV head, per entry: the score the policy gave the entry when it was written
    /// ([`KvEvictionPolicy::score_written`]), kept beside it through every compaction.
    pub written_scores: Option<&'a [Vec<f32>]>,
}

/// What a policy needs the forward pass to provide.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SideInfoNeeds {
    /// Keep the post-RoPE queries of this many most recent positions.
    pub window_queries: Option<usize>,
    /// Accumulate each entry's received attention in the cache.
    pub accumulated_attention: bool,
    /// The model's RoPE description.
    pub rope: bool,
    /// Have the model re-read the prompt after reading it, and record the most attention each entry
    /// receives (KVzip).
    pub context_reconstruction: bool,
    /// Show the policy each layer's input rows as entries are written, to score them then
    /// ([`KvEvictionPolicy::score_written`]).
    pub layer_inputs: bool,
}

impl SideInfoNeeds {
    /// What covers both `self` and `other` (the longer window; attention if either tracks it).
    pub fn union(self, other: SideInfoNeeds) -> SideInfoNeeds {
        SideInfoNeeds {
            window_queries: self.window_queries.max(other.window_queries),
            accumulated_attention: self.accumulated_attention || other.accumulated_attention,
            rope: self.rope || other.rope,
            context_reconstruction: self.context_reconstruction || other.context_reconstruction,
            layer_inputs: self.layer_inputs || other.layer_inputs,
        }
    }
}

/// A cache budget as configured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Budget {
    /// Entries kept per KV head.
    Tokens(usize),
    /// A fraction of the context length at compression time, in (0, 1].
    Ratio(f64),
    /// Entries kept per KV head, one number per layer.
    PerLayer(Vec<usize>),
}

impl Budget {
    /// The budget in entries for `layer` when the context holds `context_len` tokens.
    pub fn tokens(&self, layer: usize, context_len: usize) -> usize {
        match self {
            Budget::Tokens(b) => *b,
            Budget::Ratio(r) => ((context_len as f64) * r).ceil() as usize,
            Budget::PerLayer(v) => v.get(layer).or(v.last()).copied().unwrap_or(0),
        }
    }

    /// The smallest token budget this configuration can produce, if it is known when the config is read.
    pub fn min_tokens(&self) -> Option<usize> {
        match self {
            Budget::Tokens(b) => Some(*b),
            Budget::Ratio(_) => None,
            Budget::PerLayer(v) => v.iter().copied().min(),
        }
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        match self {
            Budget::Tokens(0) => Err("budget 0 keeps nothing; use at least 1 token".into()),
            Budget::Ratio(r) if !(*r > 0.0 && *r <= 1.0) => {
                Err(format!("budget ratio must be in (0, 1], got {r}"))
            }
            Budget::PerLayer(v) if v.is_empty() => Err("per-layer budget list is empty".into()),
            Budget::PerLayer(v) if v.contains(&0) => {
                Err("a per-layer budget is 0; every layer needs at least 1 token".into())
            }
            _ => Ok(()),
        }
    }
}

/// Per KV head: indices into that head's entries to keep, sorted ascending and unique.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeepPlan {
    pub per_head: Vec<Vec<u32>>,
}

impl KeepPlan {
    /// Keeps everything.
    pub fn all(lens: &[usize]) -> Self {
        KeepPlan {
            per_head: lens.iter().map(|&n| (0..n as u32).collect()).collect(),
        }
    }

    /// Checks the plan's shape against the cache it is for.
    pub fn check(&self, lens: &[usize]) -> std::result::Result<(), String> {
        if self.per_head.len() != lens.len() {
            return Err(format!(
                "plan has {} heads, cache has {}",
                self.per_head.len(),
                lens.len()
            ));
        }
        for (h, (idx, &n)) in self.per_head.iter().zip(lens).enumerate() {
            if idx.windows(2).any(|w| w[0] >= w[1]) {
                return Err(format!("head {h}: indices are not sorted and unique"));
            }
            if let Some(&last) = idx.last() {
                if last as usize >= n {
                    return Err(format!(
                        "head {h}: index {last} out of range for {n} entries"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The standard selection: keep the first `sinks` and the last `window` entries, then fill up to
/// `budget` with the best-scored rest. NaN scores lowest; equal scores prefer the newer entry (entries are
/// in position order). With `n ≤ budget` everything is kept. If sinks and window alone exceed the budget
/// (possible only with ratio budgets, since configs are checked), sinks come first, then the newest.
/// Returns sorted indices.
pub fn keep_top_k(scores: &[f32], sinks: usize, window: usize, budget: usize) -> Vec<u32> {
    let n = scores.len();
    if n <= budget {
        return (0..n as u32).collect();
    }
    let sinks = sinks.min(budget);
    let window = window.min(budget - sinks);
    let mut keep: Vec<u32> = (0..sinks as u32)
        .chain((n - window) as u32..n as u32)
        .collect();
    let mut rest: Vec<u32> = (sinks as u32..(n - window) as u32).collect();
    let key = |i: u32| {
        let s = scores[i as usize];
        if s.is_nan() {
            f32::NEG_INFINITY
        } else {
            s
        }
    };
    let fill = budget - keep.len();
    let by_rank = |a: &u32, b: &u32| key(*b).total_cmp(&key(*a)).then(b.cmp(a));
    if fill < rest.len() {
        rest.select_nth_unstable_by(fill, by_rank);
        rest.truncate(fill);
    }
    keep.extend(rest);
    keep.sort_unstable();
    keep
}

/// A KV eviction policy, configured from RON as `(type: "SnapKv", cfg: (window: 32))`.
#[typetag::serde(tag = "type", content = "cfg", deny_unknown_fields)]
pub trait KvEvictionPolicy: std::fmt::Debug + Send + Sync {
    fn contract(&self) -> PolicyContract;

    /// The policy this one wraps (AdaKV and PyramidKV wrap a scoring policy), if any. A wrapper gets
    /// by default its inner policy's needs, validation, layer budgets, compression trigger and
    /// scores, and overrides what it changes; it selects itself (the default [`select`](Self::select)
    /// ranks the scores under the wrapper's own contract). Reports name the inner policy beside it.
    fn inner(&self) -> Option<&dyn KvEvictionPolicy> {
        None
    }

    fn needs(&self) -> SideInfoNeeds {
        self.inner().map(|p| p.needs()).unwrap_or_default()
    }

    /// The files this configuration reads (a calibration, a surrogate). A server refuses a policy a
    /// request configures that names any: its files are the server's to choose, in its presets.
    fn files(&self) -> Vec<std::path::PathBuf> {
        self.inner().map(|p| p.files()).unwrap_or_default()
    }

    /// Checks the configuration against a budget when the config is read: a window that does not fit,
    /// sinks plus window over budget, and so on. The message says what to change.
    fn validate(&self, budget: &Budget) -> std::result::Result<(), String> {
        match self.inner() {
            Some(inner) => inner.validate(budget),
            None => budget.validate(),
        }
    }

    /// Every layer's budget for this compression, from the configured ones (`budgets[l]`, one per
    /// layer) and the context length. A policy that spreads the cache unevenly over the layers
    /// (PyramidKV) returns its own split of the same total; the default keeps the configured ones.
    fn layer_budgets(&self, budgets: Vec<usize>, context_len: usize) -> Vec<usize> {
        match self.inner() {
            Some(inner) => inner.layer_budgets(budgets, context_len),
            None => budgets,
        }
    }

    /// Whether to compress a layer holding `cache_len` entries (the longest head; with
    /// [`PolicyContract::heads_share_budget`] the mean per head, rounded up) now.
    fn should_compress(&self, cache_len: usize, ctx: &KvStepContext) -> bool {
        if let Some(inner) = self.inner() {
            return inner.should_compress(cache_len, ctx);
        }
        let over = cache_len > ctx.budget;
        match (self.contract().trigger, ctx.phase) {
            (TriggerSchedule::Never, _) => false,
            (_, KvPhase::Prefill) => over,
            (TriggerSchedule::PrefillOnly, KvPhase::Decode) => false,
            (TriggerSchedule::EveryStep, KvPhase::Decode) => over,
            (TriggerSchedule::Slack { slack }, KvPhase::Decode) => cache_len >= ctx.budget + slack,
            (TriggerSchedule::Interval { every }, KvPhase::Decode) => {
                over && ctx.position.is_multiple_of(every.max(1) as u64)
            }
        }
    }

    /// Scores the entries `layer` is about to hold from what the layer read to write them: `inputs`
    /// `[t, d_model]`, the normalized rows its attention projects into the `t` new keys and values.
    /// Returns `[t, kv_heads]` f32 (higher = keep), which reach [`score`](Self::score) as
    /// [`KvSideInfo::written_scores`]. Called after every forward pass for a policy whose needs ask for
    /// `layer_inputs` (KVzap's surrogate); the default scores nothing.
    fn score_written(&self, layer: usize, inputs: &Tensor) -> Result<Option<Tensor>> {
        match self.inner() {
            Some(inner) => inner.score_written(layer, inputs),
            None => Ok(None),
        }
    }

    /// Per KV head, one score per entry (higher = keep), as `[n_h]` f32 tensors where they were
    /// computed: on the cache's device, or on the host ([`scores_from_host`](crate::scores_from_host)).
    /// A policy that only ranks implements this alone: the default [`select`](Self::select) ranks the
    /// scores on their device. The conformance suite checks that selection keeps the best-scored entries.
    fn score(
        &self,
        layer: &KvLayerView<'_>,
        side: &KvSideInfo<'_>,
        ctx: &KvStepContext,
    ) -> Result<Option<Vec<Tensor>>> {
        match self.inner() {
            Some(inner) => inner.score(layer, side, ctx),
            None => Ok(None),
        }
    }

    /// The keep plan for one layer. The default keeps the contract's protected entries and fills the
    /// budget with the best by `score`, ranked on the scores' device ([`keep_best`](crate::keep_best)).
    fn select(
        &self,
        layer: &KvLayerView<'_>,
        side: &KvSideInfo<'_>,
        ctx: &KvStepContext,
    ) -> Result<KeepPlan> {
        let scores = self.score(layer, side, ctx)?.ok_or_else(|| {
            Error::invalid(
                self.typetag_name(),
                "the policy implements neither `select` nor `score`; implement one of them",
            )
        })?;
        crate::keep_best(self, layer, &scores, ctx)
    }

    /// Keep plans for all layers at once. Policies that share one selection across layers override it.
    fn select_layers(
        &self,
        layers: &[KvLayerView<'_>],
        side: &[KvSideInfo<'_>],
        ctx: &[KvStepContext],
    ) -> Result<Vec<KeepPlan>> {
        layers
            .iter()
            .zip(side)
            .zip(ctx)
            .map(|((layer, side), ctx)| self.select(layer, side, ctx))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_resolve_and_validate() {
        assert_eq!(Budget::Tokens(64).tokens(3, 1000), 64);
        assert_eq!(Budget::Ratio(0.25).tokens(0, 1001), 251);
        assert_eq!(Budget::PerLayer(vec![8, 16]).tokens(5, 100), 16);
        assert!(Budget::Tokens(0)
            .validate()
            .unwrap_err()
            .contains("budget 0"));
        assert!(Budget::Ratio(1.5).validate().is_err());
        assert!(Budget::PerLayer(vec![4, 0]).validate().is_err());
    }

    #[test]
    fn top_k_keeps_protected_entries_and_best_scores() {
        let scores = [0.0, 9.0, 1.0, 5.0, f32::NAN, 5.0, 3.0, 0.0];
        // sinks {0}, window {7}; best of the rest: 9.0 (1), then the tie 5.0 at 3 and 5 (newer, 5, first).
        assert_eq!(keep_top_k(&scores, 1, 1, 4), vec![0, 1, 5, 7]);
        assert_eq!(keep_top_k(&scores, 1, 1, 5), vec![0, 1, 3, 5, 7]);
        assert_eq!(keep_top_k(&scores, 0, 0, 8), (0..8).collect::<Vec<_>>());
        // NaN is never preferred over a real score.
        assert!(!keep_top_k(&scores, 0, 0, 7).contains(&4));
        // Over-subscribed protection: sinks first, then the newest.
        assert_eq!(keep_top_k(&scores, 2, 5, 3), vec![0, 1, 7]);
    }

    #[test]
    fn keep_plan_check_finds_bad_indices() {
        assert!(KeepPlan::all(&[3, 0]).check(&[3, 0]).is_ok());
        let unsorted = KeepPlan {
            per_head: vec![vec![2, 1]],
        };
        assert!(unsorted.check(&[3]).unwrap_err().contains("sorted"));
        let out_of_range = KeepPlan {
            per_head: vec![vec![0, 3]],
        };
        assert!(out_of_range
            .check(&[3])
            .unwrap_err()
            .contains("out of range"));
    }
}
