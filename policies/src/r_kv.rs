//! `RKv` (Cai et al. 2025): scores entries by the attention of the last `window` queries minus
//! their redundancy with the other keys, so that repeated content in long reasoning traces is
//! dropped first (docs/kv-policies.md §2.5, reference `rkv/compression/r1_kv.py`, `rkv/utils.py`).

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use spectra_core::{
    scores_from_host, Budget, GqaAggregation, KvEvictionPolicy, KvLayerView, KvSideInfo,
    KvStepContext, PolicyContract, Result, SideInfoNeeds, TriggerSchedule,
};

use crate::selection::{validate_gqa, validate_protected};
use crate::window_attention::{
    pool1d, softmax_in_place, validate_kernel, window_queries, GroupLogits, Pooling,
};

/// Rows of the cosine-similarity matrix computed at once; bounds the memory to `BLOCK × n` floats.
const BLOCK: usize = 256;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RKv {
    /// Observation window: queries that vote, and entries always kept.
    pub window: usize,
    /// Max-pooling kernel over the attention (odd).
    pub kernel: usize,
    /// Weight of attention against redundancy (`mix_lambda`).
    pub lambda: f32,
    /// Cosine similarity above which two keys count as duplicates.
    pub similarity_threshold: f32,
    /// How the logits of the query heads sharing a KV head are combined, before the softmax.
    pub gqa: GqaAggregation,
    /// Compress when the cache exceeds the budget at positions that are multiples of this.
    pub every: usize,
}

impl Default for RKv {
    /// The reference `R1KV` defaults: window 8, kernel 7, λ = 0.07, threshold 0.5, max over the group,
    /// every 128 tokens.
    fn default() -> Self {
        RKv {
            window: 8,
            kernel: 7,
            lambda: 0.07,
            similarity_threshold: 0.5,
            gqa: GqaAggregation::Max,
            every: 128,
        }
    }
}

impl RKv {
    fn scores(&self, layer: &KvLayerView<'_>, side: &KvSideInfo<'_>) -> Result<Vec<Vec<f32>>> {
        let queries = window_queries(side, layer, "RKv")?;
        let given = queries.dim(1)?;
        let queries = queries.narrow(1, given - given.min(self.window), given.min(self.window))?;
        layer
            .heads
            .iter()
            .enumerate()
            .map(|(g, head)| {
                let n = head.len();
                let prefix = n - n.min(self.window);
                if prefix == 0 {
                    return Ok(vec![f32::INFINITY; n]);
                }
                let logits = GroupLogits::new(&queries, g, layer.group_size, head.keys)?;
                let attention = self.attention(&logits, prefix);
                let redundancy = redundancy(head.keys, self.similarity_threshold)?;
                let mut scores: Vec<f32> = attention
                    .iter()
                    .zip(&redundancy[..prefix])
                    .map(|(a, r)| self.lambda * a - (1.0 - self.lambda) * r)
                    .collect();
                scores.resize(n, f32::INFINITY);
                Ok(scores)
            })
            .collect()
    }

    /// Mean over the window queries of the softmax over the prefix of the group-reduced logits,
    /// max-pooled.
    fn attention(&self, logits: &GroupLogits, prefix: usize) -> Vec<f32> {
        let mut mean = vec![0f32; prefix];
        for i in 0..logits.window {
            let members: Vec<Vec<f32>> = (0..logits.group)
                .map(|h| logits.row(h, i)[..prefix].to_vec())
                .collect();
            let mut row = crate::window_attention::reduce_group(&members, self.gqa);
            softmax_in_place(&mut row);
            mean.iter_mut()
                .zip(&row)
                .for_each(|(m, a)| *m += a / logits.window as f32);
        }
        pool1d(&mean, self.kernel, Pooling::Max)
    }
}

/// Per entry: softmax over entries of the mean cosine similarity of its key to the others. Each row's
/// newest duplicate (the last column above `threshold`) is not counted, so of a group of duplicates the
/// newest looks least redundant. (The reference zeroes column 0 of rows without any duplicate, a
/// side effect of its index trick; here such rows are left alone.)
pub fn redundancy(keys: &Tensor, threshold: f32) -> Result<Vec<f32>> {
    let n = keys.dim(0)?;
    let k = keys.to_dtype(DType::F32)?;
    let unit = k.broadcast_div(&(k.sqr()?.sum_keepdim(1)?.sqrt()? + 1e-8)?)?;
    let mut column_sums = vec![0f32; n];
    for start in (0..n).step_by(BLOCK) {
        let rows = BLOCK.min(n - start);
        let block = unit
            .narrow(0, start, rows)?
            .matmul(&unit.t()?)?
            .to_vec2::<f32>()?;
        for (r, mut row) in block.into_iter().enumerate() {
            row[start + r] = 0.0;
            if let Some(last) = row.iter().rposition(|&c| c > threshold) {
                row[last] = 0.0;
            }
            column_sums.iter_mut().zip(&row).for_each(|(s, c)| *s += c);
        }
    }
    let mut mean: Vec<f32> = column_sums.iter().map(|s| s / n as f32).collect();
    softmax_in_place(&mut mean);
    Ok(mean)
}

#[typetag::serde]
impl KvEvictionPolicy for RKv {
    fn contract(&self) -> PolicyContract {
        PolicyContract {
            recent_window: self.window,
            gqa: self.gqa,
            ..PolicyContract::ranking(TriggerSchedule::Interval { every: self.every })
        }
    }

    fn needs(&self) -> SideInfoNeeds {
        SideInfoNeeds {
            window_queries: Some(self.window),
            ..SideInfoNeeds::default()
        }
    }

    fn validate(&self, budget: &Budget) -> std::result::Result<(), String> {
        validate_kernel(self.kernel)?;
        validate_gqa(self.gqa)?;
        if self.window == 0 || self.every == 0 {
            return Err("window and every must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.lambda) {
            return Err(format!("lambda {} must be in [0, 1]", self.lambda));
        }
        if !(-1.0..=1.0).contains(&self.similarity_threshold) {
            return Err(format!(
                "similarity_threshold {} is a cosine, it must be in [-1, 1]",
                self.similarity_threshold
            ));
        }
        validate_protected(budget, 0, self.window)
    }

    fn score(
        &self,
        layer: &KvLayerView<'_>,
        side: &KvSideInfo<'_>,
        _ctx: &KvStepContext,
    ) -> Result<Option<Vec<Tensor>>> {
        Ok(Some(scores_from_host(self.scores(layer, side)?)?))
    }
}

spectra_core::register_plugin!(
    KvEvictionPolicy,
    RKv,
    "Keeps the window and the entries with high attention and low key redundancy."
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::HostScores;
    use crate::testing::{ctx, Layer};
    use candle_core::Device;

    /// Keys e0, e0, e1, -e0 (d = 2). Cosines: rows 0 and 1 are duplicates (1.0); key 3 is opposite.
    /// Row 0: [0, 1, 0, -1] → its last duplicate (col 1) is zeroed → [0, 0, 0, -1].
    /// Row 1: [1, 0, 0, -1] → col 0 zeroed → [0, 0, 0, -1]. Row 2: [0, 0, 0, 0]. Row 3: [-1, -1, 0, 0].
    /// Column means: [-1/4, -1/4, 0, -2/4]; softmax ∝ [e^-0.25, e^-0.25, 1, e^-0.5].
    #[test]
    fn redundancy_matches_the_hand_computation() {
        let keys = Tensor::new(
            &[[1f32, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]],
            &Device::Cpu,
        )
        .unwrap();
        let got = redundancy(&keys, 0.5).unwrap();
        let e = [(-0.25f32).exp(), (-0.25f32).exp(), 1.0, (-0.5f32).exp()];
        let z: f32 = e.iter().sum();
        // f32 cosines of unit vectors (the 1e-8 in the norm shifts them by 1e-8) and an f32 softmax.
        for (g, w) in got.iter().zip(e.iter().map(|x| x / z)) {
            assert!((g - w).abs() < 1e-6, "{got:?}");
        }
    }

    /// With λ = 1 the score is the max-pooled window attention; with λ = 0 it is minus the redundancy.
    #[test]
    fn lambda_mixes_attention_and_redundancy() {
        let (n, w) = (30, 4);
        let layer = Layer::random(n, 8, 1, 2, 3);
        let q = Layer::random(w, 8, 2, 1, 4);
        let queries = Tensor::stack(
            &[q.cache.keys(0, 0).unwrap(), q.cache.keys(0, 1).unwrap()],
            0,
        )
        .unwrap();
        let side = KvSideInfo {
            window_queries: Some(&queries),
            rope: None,
            ..KvSideInfo::default()
        };
        let only_redundancy = RKv {
            window: w,
            lambda: 0.0,
            ..RKv::default()
        };
        let s = only_redundancy.host_scores(&layer.view(), &side, &ctx(10, n));
        let red = redundancy(layer.cache.keys(0, 0).unwrap(), 0.5).unwrap();
        assert!(s[0][..n - w].iter().zip(&red).all(|(a, b)| *a == -b));
        let only_attention = RKv {
            window: w,
            lambda: 1.0,
            ..RKv::default()
        };
        let a = only_attention.host_scores(&layer.view(), &side, &ctx(10, n));
        // Max-pooled means of softmax rows: each is in (0, 1], and the pooled values of a row of
        // probabilities summing to 1 per query stay below 1.
        assert!(a[0][..n - w].iter().all(|&x| x > 0.0 && x <= 1.0));
        assert!(a[0][n - w..].iter().all(|x| x.is_infinite()));
        assert!(RKv {
            lambda: 1.5,
            ..RKv::default()
        }
        .validate(&Budget::Tokens(64))
        .is_err());
    }
}
