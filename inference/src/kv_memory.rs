//! The most KV memory a sequence can hold, known before it starts: what the scheduler reserves when it
//! admits a sequence, so that the sequences running together never hold more than the KV memory
//! budget. The bound follows the cache's own rules ([`headroom`], exact reservations) and the
//! policy's trigger; `KvCache::bytes` never exceeds it (tested against real caches).

use spectra_core::{Budget, KvEvictionPolicy, TriggerSchedule};
use spectra_kv::{headroom, KvCacheShape};

use crate::session::PrefillCompression;

/// What a sequence will do, as far as its KV memory goes.
#[derive(Clone, Copy, Debug)]
pub struct SequencePlan<'a> {
    pub policy: Option<&'a dyn KvEvictionPolicy>,
    pub budget: &'a Budget,
    pub prompt: usize,
    pub max_tokens: usize,
    /// The longest prompt chunk it is fed at once.
    pub chunk: usize,
    pub prefill: PrefillCompression,
}

/// Storage a head grows or is compacted to for `n` entries.
fn grown(n: usize) -> usize {
    n.saturating_add(headroom(n))
}

/// The most bytes of keys and values the sequence's cache allocates at once: rows per head summed
/// over layers and heads, times a row's bytes (`2 × head_dim × element size`), as `KvCache::bytes`
/// counts them.
pub fn peak_kv_bytes(shape: KvCacheShape, element_bytes: usize, plan: &SequencePlan<'_>) -> usize {
    let row = 2 * shape.head_dim * element_bytes;
    peak_rows(shape, plan).saturating_mul(row)
}

/// [`peak_kv_bytes`] in rows.
fn peak_rows(shape: KvCacheShape, plan: &SequencePlan<'_>) -> usize {
    let heads = shape.kv_heads;
    let longest = plan.prompt.saturating_add(plan.max_tokens);
    // A head never holds more than every token, and its storage never exceeds what growing to its
    // longest gives; a cache that never evicts is reserved exactly that long at once.
    let whole = heads * grown(longest);
    let Some(policy) = plan.policy else {
        return shape.layers * heads * longest;
    };
    let contract = policy.contract();
    // Entries a head may gain after a compression before the next one.
    let gained = match contract.trigger {
        TriggerSchedule::Never => return shape.layers * heads * longest,
        TriggerSchedule::PrefillOnly => plan.max_tokens,
        TriggerSchedule::EveryStep => 1,
        TriggerSchedule::Slack { slack } => slack,
        TriggerSchedule::Interval { every } => every.max(1),
    }
    .min(plan.max_tokens);
    let budgets = layer_budgets(policy, plan.budget, shape.layers, plan, longest);
    budgets
        .iter()
        .map(|&b| {
            let kept = b.min(longest);
            let bound = if contract.heads_share_budget {
                // One head may keep more than `kept` and another fewer: bound the layer's heads
                // together, with `headroom(n) ≤ n/8 + 16`.
                let total = heads * kept;
                let prefill = match plan.prefill {
                    PrefillCompression::EveryChunk => total + total / 8 + heads * (plan.chunk + 16),
                    PrefillCompression::AtEnd => heads * plan.prompt,
                };
                let decode = (total + heads * gained) * 9 / 8 + heads * 16;
                prefill.max(decode)
            } else {
                let prefill = match plan.prefill {
                    PrefillCompression::EveryChunk => (kept + plan.chunk).max(grown(kept)),
                    PrefillCompression::AtEnd => plan.prompt,
                };
                heads * prefill.max(grown(kept + gained))
            };
            bound.min(whole)
        })
        .sum()
}

/// Each layer's largest budget over the sequence's life: a ratio grows with the context, and a
/// policy that spreads the budget over layers may shift it as the context grows.
fn layer_budgets(
    policy: &dyn KvEvictionPolicy,
    budget: &Budget,
    layers: usize,
    plan: &SequencePlan<'_>,
    longest: usize,
) -> Vec<usize> {
    let mut largest = vec![0usize; layers];
    let step = plan.chunk.max(1);
    let contexts = (step..longest).step_by(step).chain([plan.prompt, longest]);
    for context in contexts {
        let per_layer = (0..layers).map(|l| budget.tokens(l, context)).collect();
        for (max, b) in largest
            .iter_mut()
            .zip(policy.layer_budgets(per_layer, context))
        {
            *max = (*max).max(b);
        }
    }
    largest
}

#[cfg(test)]
mod tests {
    use super::*;
    use spectra_policies::{StreamingLlm, TriAttention};

    /// SmolLM2-135M's cache: 30 layers of 3 KV heads of 64.
    const SHAPE: KvCacheShape = KvCacheShape {
        layers: 30,
        kv_heads: 3,
        head_dim: 64,
        group_size: 3,
    };

    fn plan<'a>(policy: Option<&'a dyn KvEvictionPolicy>, budget: &'a Budget) -> SequencePlan<'a> {
        SequencePlan {
            policy,
            budget,
            prompt: 8064,
            max_tokens: 64,
            chunk: 256,
            prefill: PrefillCompression::EveryChunk,
        }
    }

    #[test]
    fn a_cache_that_never_evicts_holds_the_prompt_and_the_tokens_exactly() {
        let budget = Budget::Tokens(usize::MAX);
        // 8128 rows of 2 × 64 f16 per head: 30 × 3 × 8128 × 256 bytes.
        assert_eq!(
            peak_kv_bytes(SHAPE, 2, &plan(None, &budget)),
            30 * 3 * 8128 * 256
        );
    }

    /// TriAttention compresses when 128 tokens past the budget: a head holds at most the budget and one
    /// 256-token prefill chunk (1280 rows), or the budget and 128 decoded tokens with their headroom
    /// (1152 + 144 = 1296) when as many are decoded.
    #[test]
    fn a_compressed_cache_holds_its_budget_and_a_chunk_or_its_slack() {
        let budget = Budget::Tokens(1024);
        let tri = TriAttention::default();
        assert_eq!(
            peak_kv_bytes(SHAPE, 4, &plan(Some(&tri), &budget)),
            30 * 3 * 1280 * 512
        );
        let longer = SequencePlan {
            max_tokens: 512,
            ..plan(Some(&tri), &budget)
        };
        assert_eq!(peak_kv_bytes(SHAPE, 4, &longer), 30 * 3 * 1296 * 512);
        // Evicting at every step: the budget and a chunk.
        let streaming = StreamingLlm::default();
        assert_eq!(
            peak_kv_bytes(SHAPE, 4, &plan(Some(&streaming), &budget)),
            30 * 3 * 1280 * 512
        );
        // A budget above the whole sequence is the whole sequence, grown.
        let huge = Budget::Tokens(100_000);
        assert_eq!(
            peak_kv_bytes(SHAPE, 4, &plan(Some(&tri), &huge)),
            30 * 3 * (8128 + 8128 / 8) * 512
        );
    }
}
