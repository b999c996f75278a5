//! `AdaKv` (Feng et al. 2024, kvpress `AdaKVPress`): the KV heads of a layer share one budget,
//! `kv_heads × B` entries, chosen by another policy's scores across all heads at once, so that a head
//! whose attention is spread keeps more and a focused one fewer. A safeguard keeps at least
//! `⌊α·B⌋` entries in every head (the protected ones counted), its best-scored.
//!
//! The cache really holds different lengths per head, so the memory of the evicted entries is freed;
//! kvpress's AdaKV only masks them.

use serde::{Deserialize, Serialize};
use spectra_core::{
    check_scores, scores_to_host, Budget, Error, KeepPlan, KvEvictionPolicy, KvLayerView,
    KvSideInfo, KvStepContext, PolicyContract, Result,
};

use crate::SnapKv;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdaKv {
    /// Scores the entries; it must select by score (`top_k_by_score`), so that scores of different
    /// heads can be ranked together.
    pub policy: Box<dyn KvEvictionPolicy>,
    /// The fraction of the budget every head keeps at least (kvpress: 0.2).
    pub alpha_safeguard: f64,
}

impl Default for AdaKv {
    fn default() -> Self {
        AdaKv {
            policy: Box::new(SnapKv::default()),
            alpha_safeguard: 0.2,
        }
    }
}

/// An entry's rank key: its score (NaN lowest), its position, its head.
type Rank = (f32, u64, usize);

fn rank(score: f32, position: u64, head: usize) -> Rank {
    let score = if score.is_nan() {
        f32::NEG_INFINITY
    } else {
        score
    };
    (score, position, head)
}

/// Best first: the higher score, then the newer position, then the lower head.
fn by_rank(a: &Rank, b: &Rank) -> std::cmp::Ordering {
    b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2))
}

impl AdaKv {
    /// Per head, the entries kept whatever the others score: the inner policy's sinks (or the prompt,
    /// where it protects it) and recent window, then its best-scored up to the safeguard.
    fn protected(
        &self,
        scores: &[f32],
        positions: &[u64],
        ctx: &KvStepContext,
        head: usize,
    ) -> Vec<bool> {
        let n = scores.len();
        let (prefix, window) = self.policy.contract().protected(positions, ctx);
        let mut kept = vec![false; n];
        kept[..prefix].fill(true);
        kept[n - window..].fill(true);
        let safeguard = (self.alpha_safeguard * ctx.budget as f64).floor() as usize;
        let more = safeguard.saturating_sub(prefix + window);
        let mut rest: Vec<_> = (prefix..n - window)
            .map(|i| (rank(scores[i], positions[i], head), i))
            .collect();
        if more < rest.len() {
            rest.select_nth_unstable_by(more, |a, b| by_rank(&a.0, &b.0));
        }
        rest.iter().take(more).for_each(|&(_, i)| kept[i] = true);
        kept
    }
}

#[typetag::serde]
impl KvEvictionPolicy for AdaKv {
    fn inner(&self) -> Option<&dyn KvEvictionPolicy> {
        Some(self.policy.as_ref())
    }

    fn contract(&self) -> PolicyContract {
        PolicyContract {
            fills_budget: true,
            shares_across_layers: false,
            heads_share_budget: true,
            ..self.policy.contract()
        }
    }

    fn validate(&self, budget: &Budget) -> std::result::Result<(), String> {
        if !(0.0..=1.0).contains(&self.alpha_safeguard) {
            return Err(format!(
                "alpha_safeguard {} must be in [0, 1] (kvpress: 0.2)",
                self.alpha_safeguard
            ));
        }
        let inner = self.policy.contract();
        if !inner.top_k_by_score || inner.heads_share_budget {
            return Err(format!(
                "AdaKv ranks the entries of all heads by the inner policy's scores, but {} does not \
                 select by score alone; wrap a scoring policy such as SnapKv, KNorm or ExpectedAttention",
                self.policy.typetag_name()
            ));
        }
        self.policy.validate(budget)
    }

    /// Everything when the layer fits `kv_heads × B`; otherwise each head's protected entries and
    /// then the best-ranked of all heads' other entries up to that total.
    fn select(
        &self,
        layer: &KvLayerView<'_>,
        side: &KvSideInfo<'_>,
        ctx: &KvStepContext,
    ) -> Result<KeepPlan> {
        let lens: Vec<usize> = layer.heads.iter().map(|h| h.len()).collect();
        let allowed = lens.len() * ctx.budget;
        if lens.iter().sum::<usize>() <= allowed {
            return Ok(KeepPlan::all(&lens));
        }
        let scores = self.policy.score(layer, side, ctx)?.ok_or_else(|| {
            Error::invalid(
                "AdaKv",
                format!(
                    "{} gives no scores; wrap a policy that implements `score`",
                    self.policy.typetag_name()
                ),
            )
        })?;
        check_scores(self.policy.typetag_name(), layer, &scores)?;
        // Ranking across heads of different lengths is done on the host.
        let scores = scores_to_host(&scores)?;
        let mut kept: Vec<Vec<bool>> = scores
            .iter()
            .zip(&layer.heads)
            .enumerate()
            .map(|(h, (s, head))| self.protected(s, head.positions, ctx, h))
            .collect();
        let fill = allowed - kept.iter().flatten().filter(|&&k| k).count();
        let mut rest: Vec<_> = scores
            .iter()
            .zip(&layer.heads)
            .enumerate()
            .flat_map(|(h, (s, head))| {
                let kept = &kept[h];
                s.iter()
                    .enumerate()
                    .filter(move |&(i, _)| !kept[i])
                    .map(move |(i, &x)| (rank(x, head.positions[i], h), h, i))
            })
            .collect();
        if fill < rest.len() {
            rest.select_nth_unstable_by(fill, |a, b| by_rank(&a.0, &b.0));
        }
        rest.iter()
            .take(fill)
            .for_each(|&(_, h, i)| kept[h][i] = true);
        let per_head = kept
            .iter()
            .map(|k| (0..k.len() as u32).filter(|&i| k[i as usize]).collect())
            .collect();
        Ok(KeepPlan { per_head })
    }
}

spectra_core::register_plugin!(
    KvEvictionPolicy,
    AdaKv,
    "Lets a layer's heads share the budget, ranked across heads by another policy's scores (SnapKV by default)."
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{ctx, Layer};
    use crate::KNorm;

    /// Two heads of budget 3 (6 in all) scored by KNorm (−‖k‖). Head 0's keys have norms 1–6, head
    /// 1's 10–60, so the best six are all in head 0; the safeguard ⌊0.5·3⌋ = 1 keeps head 1's best
    /// (norm 10) and head 0 keeps its best five (norms 1–5).
    #[test]
    fn the_heads_share_the_budget_with_a_safeguard() {
        let norms = |scale: f32| -> Vec<Vec<f32>> {
            (1..=6).map(|k| vec![k as f32 * scale, 0.0]).collect()
        };
        let layer =
            Layer::from_head_keys(&[norms(1.0), norms(10.0)], &[0, 1, 2, 3, 4, 5], 1, false);
        let policy = AdaKv {
            policy: Box::new(KNorm::default()),
            alpha_safeguard: 0.5,
        };
        let plan = policy
            .select(&layer.view(), &KvSideInfo::default(), &ctx(3, 6))
            .unwrap();
        assert_eq!(plan.per_head, vec![vec![0, 1, 2, 3, 4], vec![0]]);
        // Without the safeguard head 1 gives everything up.
        let unguarded = AdaKv {
            alpha_safeguard: 0.0,
            ..policy
        };
        let plan = unguarded
            .select(&layer.view(), &KvSideInfo::default(), &ctx(3, 6))
            .unwrap();
        assert_eq!(plan.per_head, vec![vec![0, 1, 2, 3, 4, 5], vec![]]);
    }

    /// A layer within `kv_heads × B` is kept whole, even a head longer than B.
    #[test]
    fn a_layer_that_fits_the_shared_budget_is_kept() {
        let layer = Layer::from_head_keys(
            &[vec![vec![1.0]; 5], vec![vec![1.0]; 5]],
            &[0, 1, 2, 3, 4],
            1,
            false,
        );
        let plan = AdaKv::default()
            .select(&layer.view(), &KvSideInfo::default(), &ctx(5, 5))
            .unwrap();
        assert_eq!(plan, KeepPlan::all(&[5, 5]));
    }

    #[test]
    fn bad_configs_are_refused() {
        for inner in [
            Box::new(crate::Full::default()) as Box<dyn KvEvictionPolicy>,
            Box::new(AdaKv::default()),
        ] {
            let wrapped = AdaKv {
                policy: inner,
                ..AdaKv::default()
            };
            assert!(wrapped
                .validate(&Budget::Tokens(64))
                .unwrap_err()
                .contains("does not select by score"));
        }
        let alpha = AdaKv {
            alpha_safeguard: 1.5,
            ..AdaKv::default()
        };
        assert!(alpha.validate(&Budget::Tokens(64)).is_err());
    }
}
