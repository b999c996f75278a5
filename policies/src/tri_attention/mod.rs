//! `TriAttention` (Mao et al. 2026, docs/kv-policies.md §4): pre-RoPE queries of a head cluster
//! around a fixed centre per frequency band, so the logit a future query will give a cached key is
//! a trigonometric series in their distance. Keys are scored by that series averaged over future
//! offsets 2^0..2^16, plus a norm term for bands whose queries are spread out; scores are
//! z-normalised per query head, reduced over the GQA group, and the best are kept. By default (the
//! paper's Hugging Face path) prompt entries are protected, one keep set per KV head is chosen from
//! all layers together, and the cache is compressed back to the budget whenever it reaches
//! budget + 128.

pub mod key_score_launch;
pub mod key_scores;
pub mod normalize;
pub mod query_stats;
#[cfg(test)]
mod reference;
pub mod scoring;
mod window_centers;

#[cfg(test)]
mod golden_tests;
#[cfg(test)]
mod unfused;

use std::path::PathBuf;
use std::sync::Arc;

use crate::tri_attention::query_stats::QueryBandStats;
use candle_core::{DType, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use spectra_core::rope::RopeSpec;
use spectra_core::{
    keep_best, Budget, Error, GqaAggregation, KeepPlan, KvEvictionPolicy, KvHeadView, KvLayerView,
    KvSideInfo, KvStepContext, PolicyContract, Result, SideInfoNeeds, TriggerSchedule,
};

use key_scores::{key_scores, KeyScoreInputs};
use normalize::{tie_noise, Finish};
pub use scoring::{OffsetAggregation, OffsetTable, ScoreOptions};

use crate::loaded::Loaded;
use crate::selection::{validate_gqa, validate_protected};

/// Where the query centres come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum StatsSource {
    /// A calibration file written by `spectra calibrate` (safetensors), loaded once.
    File(PathBuf),
    /// Estimated at each compression from the last `n` queries (RoPE inverted at their positions).
    /// Needs no calibration, at the price of centres from few, recent queries.
    ObservationWindow(usize),
}

/// Which entries one selection covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TriAttentionMode {
    /// One keep set per KV head, chosen by the mean over layers of the group-reduced scores and applied
    /// to every layer (the paper's default, `per_head_pruning`).
    PerKvHead,
    /// Each (layer, KV head) chooses on its own.
    PerLayer,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TriAttention {
    pub stats: StatsSource,
    /// Future offsets are the powers of two up to this.
    pub max_offset: u64,
    pub aggregation: OffsetAggregation,
    pub mode: TriAttentionMode,
    /// Reduction of the z-scores of the query heads sharing a KV head.
    pub gqa: GqaAggregation,
    /// Never evict prompt entries (if the prompt alone exceeds the budget, its first `budget` entries
    /// are kept, as in the reference).
    pub protect_prompt: bool,
    /// The newest entries always kept.
    pub recent_window: usize,
    /// Compress when the cache reaches budget + slack.
    pub slack: usize,
    /// z-normalise each query head's scores over the candidates before the GQA reduction.
    pub normalize: bool,
    /// Ablation: weight the norm term by `m_f` instead of `m_f − |q̄_f|`.
    pub disable_mlr: bool,
    /// Ablation: score by the norm term alone.
    pub disable_trig: bool,
    /// Runtime state: the statistics once loaded (or given with [`TriAttention::with_stats`]).
    #[serde(skip)]
    pub calibrated: Loaded<QueryBandStats>,
}

impl Default for TriAttention {
    /// The paper's Hugging Face path: offsets 2^0..2^16 averaged, MLR-weighted norm term, z-scores,
    /// max over the group, per-KV-head selection shared across layers, prompt protected, no window,
    /// slack 128. Without a calibration file the centres come from the last 128 queries.
    fn default() -> Self {
        TriAttention {
            stats: StatsSource::ObservationWindow(128),
            max_offset: 1 << 16,
            aggregation: OffsetAggregation::Mean,
            mode: TriAttentionMode::PerKvHead,
            gqa: GqaAggregation::Max,
            protect_prompt: true,
            recent_window: 0,
            slack: 128,
            normalize: true,
            disable_mlr: false,
            disable_trig: false,
            calibrated: Loaded::default(),
        }
    }
}

impl TriAttention {
    /// This configuration scoring with `stats` (instead of its `stats` source).
    pub fn with_stats(self, stats: QueryBandStats) -> Self {
        TriAttention {
            calibrated: Loaded::with(stats),
            ..self
        }
    }

    fn options(&self) -> ScoreOptions {
        ScoreOptions {
            max_offset: self.max_offset,
            aggregation: self.aggregation,
            disable_mlr: self.disable_mlr,
            disable_trig: self.disable_trig,
        }
    }

    /// The calibrated statistics, loading the file the first time.
    fn calibrated(&self) -> Result<Option<Arc<QueryBandStats>>> {
        if let Some(stats) = self.calibrated.get() {
            return Ok(Some(stats));
        }
        match &self.stats {
            StatsSource::File(path) => Ok(Some(
                self.calibrated.get_or_load(|| QueryBandStats::load(path))?,
            )),
            StatsSource::ObservationWindow(_) => Ok(None),
        }
    }

    fn rope<'a>(side: &KvSideInfo<'a>) -> Result<&'a RopeSpec> {
        side.rope.ok_or_else(|| {
            Error::invalid(
                "TriAttention",
                "needs the model's RoPE description (SideInfoNeeds::rope), none was given",
            )
        })
    }

    /// Entries of a head that are never candidates at the front: the prompt, when protected.
    fn protected_prefix(&self, positions: &[u64], ctx: &KvStepContext) -> usize {
        if self.protect_prompt {
            positions.partition_point(|&p| p < ctx.prompt_len)
        } else {
            0
        }
    }

    /// Final per-KV-head scores of one layer, `[n]` on the keys' device: group-reduced z-scores plus
    /// tie noise.
    fn layer_scores(
        &self,
        layer: &KvLayerView<'_>,
        side: &KvSideInfo<'_>,
        ctx: &KvStepContext,
        table: &OffsetTable,
    ) -> Result<Vec<Tensor>> {
        let rope = Self::rope(side)?;
        let query_heads = layer.heads.len() * layer.group_size;
        let (stats, stats_layer) = match self.calibrated()? {
            Some(stats) => {
                stats.check_rope(rope)?;
                if stats.meta().num_query_heads != query_heads {
                    return Err(Error::invalid(
                        "TriAttention stats",
                        format!(
                            "calibrated for {} query heads, the layer has {query_heads}; run `spectra calibrate` on this model",
                            stats.meta().num_query_heads
                        ),
                    ));
                }
                (stats, layer.layer)
            }
            None => (
                Arc::new(window_centers::estimate(side, layer, rope, ctx.position)?),
                0,
            ),
        };
        let options = self.options();
        per_head(layer, |g, head| {
            let centers = (0..layer.group_size)
                .map(|i| stats.head(stats_layer, g * layer.group_size + i))
                .collect::<Result<Vec<_>>>()?;
            let inputs = KeyScoreInputs {
                centers: &centers,
                rope,
                table,
                options: &options,
            };
            let raw = key_scores(head.keys, &inputs)?;
            let n = head.len();
            let first = self.protected_prefix(head.positions, ctx).min(n);
            let last = n.saturating_sub(self.recent_window).max(first);
            let finish = Finish {
                candidates: first..last,
                normalize: self.normalize,
                reduce: self.gqa,
            };
            finish.apply(
                &raw,
                &tie_noise(ctx.seed, layer.layer, g, n, head.keys.device())?,
            )
        })
    }

    /// One keep set per KV head from the mean over layers of the layers' scores, applied to every layer.
    fn select_shared(
        &self,
        layers: &[KvLayerView<'_>],
        side: &[KvSideInfo<'_>],
        ctx: &[KvStepContext],
    ) -> Result<Vec<KeepPlan>> {
        let (Some(first), Some(step)) = (layers.first(), ctx.first()) else {
            return Ok(Vec::new());
        };
        if side.len() != layers.len() || ctx.len() != layers.len() {
            return Err(Error::invalid(
                "TriAttention",
                "one side-info and one step context per layer are needed",
            ));
        }
        for (layer, c) in layers.iter().zip(ctx) {
            let same_heads = layer.heads.len() == first.heads.len()
                && layer
                    .heads
                    .iter()
                    .zip(&first.heads)
                    .all(|(a, b)| a.positions == b.positions);
            if !same_heads || c != step {
                return Err(Error::invalid(
                    "TriAttention",
                    format!(
                        "mode PerKvHead applies one keep set per KV head to every layer, but layer {} holds other \
                         positions or has another budget/step than layer {}; use mode PerLayer",
                        layer.layer, first.layer
                    ),
                ));
            }
        }
        let table = OffsetTable::new(Self::rope(&side[0])?, step.position, self.max_offset);
        let mut mean = first
            .heads
            .iter()
            .map(|h| Tensor::zeros(h.len(), DType::F32, h.keys.device()))
            .collect::<candle_core::Result<Vec<_>>>()?;
        for (layer, s) in layers.iter().zip(side) {
            for (acc, scores) in mean
                .iter_mut()
                .zip(self.layer_scores(layer, s, step, &table)?)
            {
                // x / L exactly (an elementwise division, not a multiplication by 1/L), then added.
                let count = Tensor::new(layers.len() as f32, scores.device())?;
                *acc = acc.add(&scores.broadcast_div(&count)?)?;
            }
        }
        let plan = keep_best(self, first, &mean, step)?;
        Ok(vec![plan; layers.len()])
    }
}

#[typetag::serde]
impl KvEvictionPolicy for TriAttention {
    fn contract(&self) -> PolicyContract {
        PolicyContract {
            recent_window: self.recent_window,
            protects_prompt: self.protect_prompt,
            gqa: self.gqa,
            shares_across_layers: self.mode == TriAttentionMode::PerKvHead,
            ..PolicyContract::ranking(TriggerSchedule::Slack { slack: self.slack })
        }
    }

    fn needs(&self) -> SideInfoNeeds {
        let window_queries = match (&self.stats, self.calibrated.get()) {
            (StatsSource::ObservationWindow(n), None) => Some(*n),
            _ => None,
        };
        SideInfoNeeds {
            window_queries,
            rope: true,
            ..SideInfoNeeds::default()
        }
    }

    fn files(&self) -> Vec<PathBuf> {
        match &self.stats {
            StatsSource::File(path) => vec![path.clone()],
            StatsSource::ObservationWindow(_) => Vec::new(),
        }
    }

    fn validate(&self, budget: &Budget) -> std::result::Result<(), String> {
        validate_protected(budget, 0, self.recent_window)?;
        validate_gqa(self.gqa)?;
        if self.slack == 0 {
            return Err(
                "slack 0 would compress at every step; use at least 1 (the paper: 128)".into(),
            );
        }
        if self.max_offset == 0 {
            return Err("max_offset 0 leaves no future offsets; the paper uses 65536".into());
        }
        if self.stats == StatsSource::ObservationWindow(0) {
            return Err(
                "ObservationWindow(0) has no queries to estimate centres from; use e.g. 128".into(),
            );
        }
        if self.mode == TriAttentionMode::PerKvHead && matches!(budget, Budget::PerLayer(_)) {
            return Err(
                "per-layer budgets need mode: PerLayer (PerKvHead keeps one set for all layers)"
                    .into(),
            );
        }
        self.calibrated().map(|_| ()).map_err(|e| e.to_string())
    }

    fn score(
        &self,
        layer: &KvLayerView<'_>,
        side: &KvSideInfo<'_>,
        ctx: &KvStepContext,
    ) -> Result<Option<Vec<Tensor>>> {
        let table = OffsetTable::new(Self::rope(side)?, ctx.position, self.max_offset);
        self.layer_scores(layer, side, ctx, &table).map(Some)
    }

    fn select(
        &self,
        layer: &KvLayerView<'_>,
        side: &KvSideInfo<'_>,
        ctx: &KvStepContext,
    ) -> Result<KeepPlan> {
        if self.mode == TriAttentionMode::PerKvHead {
            let mut plans = self.select_shared(
                std::slice::from_ref(layer),
                std::slice::from_ref(side),
                std::slice::from_ref(ctx),
            )?;
            return Ok(plans.remove(0));
        }
        let table = OffsetTable::new(Self::rope(side)?, ctx.position, self.max_offset);
        let scores = self.layer_scores(layer, side, ctx, &table)?;
        keep_best(self, layer, &scores, ctx)
    }

    fn select_layers(
        &self,
        layers: &[KvLayerView<'_>],
        side: &[KvSideInfo<'_>],
        ctx: &[KvStepContext],
    ) -> Result<Vec<KeepPlan>> {
        match self.mode {
            TriAttentionMode::PerKvHead => self.select_shared(layers, side, ctx),
            TriAttentionMode::PerLayer => layers
                .iter()
                .zip(side)
                .zip(ctx)
                .map(|((layer, side), ctx)| self.select(layer, side, ctx))
                .collect(),
        }
    }
}

/// `f` of every KV head of the layer: in parallel on the host (heads are independent, so results do
/// not change), in order on a GPU, whose kernels queue on one stream anyway.
fn per_head<T: Send>(
    layer: &KvLayerView<'_>,
    f: impl Fn(usize, &KvHeadView<'_>) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    let on_host = layer.heads.iter().all(|h| h.keys.device().is_cpu());
    if on_host {
        layer
            .heads
            .par_iter()
            .enumerate()
            .map(|(g, h)| f(g, h))
            .collect()
    } else {
        layer
            .heads
            .iter()
            .enumerate()
            .map(|(g, h)| f(g, h))
            .collect()
    }
}

spectra_core::register_plugin!(
    KvEvictionPolicy,
    TriAttention,
    "Scores keys by the logit calibrated pre-RoPE query centres will give them at future distances."
);
