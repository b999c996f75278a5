//! Random caches for the KV policy conformance suite. proptest draws the sizes, the kind of values and a
//! seed (so that shrinking makes caches smaller); the key, value and query numbers come from that seed.

use candle_core::{DType, Device, Tensor};
use proptest::prelude::*;
use rand::Rng;

use crate::cache::{KvCache, KvCacheShape};
use spectra_core::kv_policy::{
    KeepPlan, KvEvictionPolicy, KvLayerView, KvPhase, KvSideInfo, KvStepContext,
};
use spectra_core::rng::{derived_rng, SpectraRng};
use spectra_core::rope::{RopePairing, RopeScaling, RopeSpec};

/// The shape of the model a random cache belongs to, for policies whose configuration depends on it.
#[derive(Clone, Debug)]
pub struct KvModelShape {
    pub layers: usize,
    pub kv_heads: usize,
    /// Query heads per KV head.
    pub group_size: usize,
    pub head_dim: usize,
    pub rope: RopeSpec,
}

/// What the numbers in a random cache look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Values {
    /// Independent uniform numbers in [-1, 1).
    Random,
    /// Every key (and value, and accumulated attention) of a head identical: all scores tie.
    AllEqual,
    /// Keys drawn from four distinct vectors: many ties, some at the cut-off.
    FewDistinct,
    /// Random, with some keys containing NaN or ±inf.
    NonFinite,
}

/// How many entries a head holds, relative to the budget `B`.
#[derive(Clone, Copy, Debug)]
pub enum Length {
    Zero,
    One,
    /// `B + offset`, offset in -1..=1.
    NearBudget(i8),
    /// `B · permille / 1000`, up to 4B.
    Scaled(u16),
}

/// One random test case, before its numbers are drawn.
#[derive(Clone, Debug)]
pub struct CaseSpec {
    pub layers: usize,
    pub kv_heads: usize,
    pub group_size: usize,
    pub head_dim: usize,
    /// Added to the smallest budget the policy accepts.
    pub budget_extra: usize,
    pub lengths: Vec<Length>,
    /// Fraction (‰) of the positions that belong to the prompt.
    pub prompt_permille: u16,
    pub phase: KvPhase,
    pub pairing: RopePairing,
    pub scaling: u8,
    pub values: Values,
    pub seed: u64,
}

fn length() -> impl Strategy<Value = Length> {
    prop_oneof![
        Just(Length::Zero),
        Just(Length::One),
        (-1i8..=1).prop_map(Length::NearBudget),
        (0u16..=4000).prop_map(Length::Scaled),
    ]
}

pub fn case_spec(values: Values) -> impl Strategy<Value = CaseSpec> {
    (
        1usize..=2,
        1usize..=2,
        prop::sample::select(vec![1usize, 2, 4, 8]),
        prop::sample::select(vec![64usize, 128]),
        0usize..16,
        prop::collection::vec(length(), 2),
        0u16..=1000,
        prop_oneof![Just(KvPhase::Decode), Just(KvPhase::Prefill)],
        prop_oneof![Just(RopePairing::Half), Just(RopePairing::Interleaved)],
        0u8..3,
        any::<u64>(),
    )
        .prop_map(
            move |(
                layers,
                kv_heads,
                group_size,
                head_dim,
                budget_extra,
                lengths,
                prompt,
                phase,
                pairing,
                scaling,
                seed,
            )| {
                CaseSpec {
                    layers,
                    kv_heads,
                    group_size,
                    head_dim,
                    budget_extra,
                    lengths,
                    prompt_permille: prompt,
                    phase,
                    pairing,
                    scaling,
                    values,
                    seed,
                }
            },
        )
}

impl CaseSpec {
    pub fn rope(&self) -> RopeSpec {
        let scaling = match self.scaling {
            0 => RopeScaling::None,
            1 => RopeScaling::Linear { factor: 2.0 },
            _ => RopeScaling::Yarn {
                factor: 4.0,
                original_max_position: 4096.0,
                beta_fast: 32.0,
                beta_slow: 1.0,
            },
        };
        RopeSpec::new(self.head_dim, 10000.0, self.pairing, scaling)
    }

    pub fn model(&self) -> KvModelShape {
        KvModelShape {
            layers: self.layers,
            kv_heads: self.kv_heads,
            group_size: self.group_size,
            head_dim: self.head_dim,
            rope: self.rope(),
        }
    }

    fn len(&self, head: usize, budget: usize) -> usize {
        match self.lengths[head % self.lengths.len()] {
            Length::Zero => 0,
            Length::One => 1,
            Length::NearBudget(o) => (budget as i64 + o as i64).max(0) as usize,
            Length::Scaled(permille) => budget * permille as usize / 1000,
        }
    }
}

/// The smallest token budget `policy` accepts (its sinks and window must fit), at most 4096.
pub fn smallest_budget(policy: &dyn KvEvictionPolicy) -> usize {
    (1..=4096)
        .find(|&b| policy.validate(&spectra_core::Budget::Tokens(b)).is_ok())
        .unwrap_or_else(|| {
            panic!(
                "{}: accepts no token budget up to 4096",
                policy.typetag_name()
            )
        })
}

/// A drawn case: the cache and everything a policy is given with it.
pub struct Fixture {
    pub cache: KvCache,
    pub rope: RopeSpec,
    /// Per layer, when the policy asks for window queries.
    pub window_queries: Vec<Option<Tensor>>,
    /// Per layer, per head, when the policy asks for a re-read's scores.
    pub reconstruction: Vec<Option<Vec<Vec<f32>>>>,
    /// Per layer, per head, when the policy scores entries as they are written.
    pub written: Vec<Option<Vec<Vec<f32>>>>,
    pub ctx: KvStepContext,
}

/// Draws the numbers of `spec` for `policy`'s needs, with the given budget. `perturbed_head` redraws that
/// head's keys and values from another seed (for the per-head independence property).
pub fn build(
    spec: &CaseSpec,
    policy: &dyn KvEvictionPolicy,
    budget: usize,
    perturbed_head: Option<usize>,
) -> Fixture {
    let needs = policy.needs();
    let (heads, d) = (spec.kv_heads, spec.head_dim);
    let lens: Vec<usize> = (0..heads).map(|h| spec.len(h, budget)).collect();
    let universe = lens.iter().copied().max().unwrap_or(0);
    // Positions with gaps of 1-3: the cache has been compacted before.
    let mut rng = derived_rng(spec.seed, 0);
    let mut positions = Vec::with_capacity(universe);
    let mut next = rng.random_range(0..3u64);
    for _ in 0..universe {
        positions.push(next);
        next += rng.random_range(1..=3);
    }
    let position = next;
    let prompt_len = match spec.phase {
        KvPhase::Prefill => position,
        KvPhase::Decode => position * spec.prompt_permille as u64 / 1000,
    };
    let shape = KvCacheShape {
        layers: spec.layers,
        kv_heads: heads,
        head_dim: d,
        group_size: spec.group_size,
    };
    let mut cache =
        KvCache::new(shape, DType::F32, &Device::Cpu, needs.accumulated_attention).expect("cache");
    let mut window_queries = Vec::new();
    let mut reconstruction = Vec::new();
    let mut written = Vec::new();
    for layer in 0..spec.layers {
        let mut keys = Vec::with_capacity(heads * universe * d);
        for h in 0..heads {
            let stream = if perturbed_head == Some(h) {
                1 << 40
            } else {
                0
            };
            let mut rng = derived_rng(spec.seed, stream + 1 + (layer * heads + h) as u64);
            keys.extend(head_numbers(&mut rng, spec.values, universe, d));
        }
        let keys = Tensor::from_vec(keys, (heads, universe, d), &Device::Cpu).expect("keys");
        let values = (keys.clone() * 0.5).expect("values");
        cache
            .append(layer, &keys, &values, &positions)
            .expect("append");
        // Each head keeps its own random subset of the positions, of its own length.
        let per_head = lens
            .iter()
            .enumerate()
            .map(|(h, &n)| {
                let mut rng = derived_rng(spec.seed, 1 << 41 | h as u64);
                let mut idx: Vec<u32> = (0..universe as u32).collect();
                for i in (1..idx.len()).rev() {
                    idx.swap(i, rng.random_range(0..=i));
                }
                idx.truncate(n);
                idx.sort_unstable();
                idx
            })
            .collect();
        cache
            .compact(layer, &KeepPlan { per_head })
            .expect("compact");
        if needs.accumulated_attention {
            for (h, &n) in lens.iter().enumerate() {
                let mut rng = derived_rng(spec.seed, 1 << 42 | (layer * heads + h) as u64);
                let received: Vec<f32> = match spec.values {
                    Values::AllEqual => vec![1.0; n],
                    Values::FewDistinct => {
                        (0..n).map(|_| rng.random_range(0..4u8) as f32).collect()
                    }
                    _ => (0..n).map(|_| rng.random_range(0.0..10.0)).collect(),
                };
                let received = Tensor::new(received, &Device::Cpu).expect("attention");
                cache.add_attention(layer, h, &received).expect("attention");
            }
        }
        reconstruction.push(
            needs
                .context_reconstruction
                .then(|| entry_scores(spec, &lens, layer, 1 << 45)),
        );
        written.push(
            needs
                .layer_inputs
                .then(|| entry_scores(spec, &lens, layer, 1 << 46)),
        );
        window_queries.push(needs.window_queries.map(|w| {
            let mut rng = derived_rng(spec.seed, 1 << 43 | layer as u64);
            let q: Vec<f32> = (0..heads * spec.group_size * w * d)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            Tensor::from_vec(q, (heads * spec.group_size, w, d), &Device::Cpu).expect("queries")
        }));
    }
    let ctx = KvStepContext {
        phase: spec.phase,
        position,
        prompt_len,
        budget,
        seed: spec.seed,
    };
    Fixture {
        cache,
        rope: spec.rope(),
        window_queries,
        reconstruction,
        written,
        ctx,
    }
}

/// Per head of `layer`, one score in [0, 1) per entry (of the requested kind), from `stream`.
fn entry_scores(spec: &CaseSpec, lens: &[usize], layer: usize, stream: u64) -> Vec<Vec<f32>> {
    lens.iter()
        .enumerate()
        .map(|(h, &n)| {
            let mut rng = derived_rng(spec.seed, stream | (layer * lens.len() + h) as u64);
            match spec.values {
                Values::AllEqual => vec![0.5; n],
                Values::FewDistinct => (0..n)
                    .map(|_| f32::from(rng.random_range(0..4u8)) / 4.0)
                    .collect(),
                _ => (0..n).map(|_| rng.random_range(0.0..1.0)).collect(),
            }
        })
        .collect()
}

/// `n` rows of `d` numbers of the requested kind.
fn head_numbers(rng: &mut SpectraRng, values: Values, n: usize, d: usize) -> Vec<f32> {
    match values {
        Values::Random => (0..n * d).map(|_| rng.random_range(-1.0..1.0)).collect(),
        Values::AllEqual => {
            let row: Vec<f32> = (0..d).map(|_| rng.random_range(-1.0..1.0)).collect();
            (0..n).flat_map(|_| row.iter().copied()).collect()
        }
        Values::FewDistinct => {
            let rows: Vec<Vec<f32>> = (0..4)
                .map(|_| (0..d).map(|_| rng.random_range(-1.0..1.0)).collect())
                .collect();
            (0..n)
                .flat_map(|_| rows[rng.random_range(0..4)].clone())
                .collect()
        }
        Values::NonFinite => {
            let mut v: Vec<f32> = (0..n * d).map(|_| rng.random_range(-1.0..1.0)).collect();
            for row in 0..n {
                match rng.random_range(0..6) {
                    0 => v[row * d + rng.random_range(0..d)] = f32::NAN,
                    1 => v[row * d + rng.random_range(0..d)] = f32::INFINITY,
                    2 => v[row * d + rng.random_range(0..d)] = f32::NEG_INFINITY,
                    _ => {}
                }
            }
            v
        }
    }
}

impl Fixture {
    pub fn views(&self) -> Vec<KvLayerView<'_>> {
        (0..self.cache.shape().layers)
            .map(|l| self.cache.layer_view(l).expect("view"))
            .collect()
    }

    pub fn sides(&self, needs_rope: bool) -> Vec<KvSideInfo<'_>> {
        self.window_queries
            .iter()
            .zip(&self.reconstruction)
            .zip(&self.written)
            .map(|((q, r), w)| KvSideInfo {
                window_queries: q.as_ref(),
                rope: needs_rope.then_some(&self.rope),
                reconstruction: r.as_deref(),
                written_scores: w.as_deref(),
            })
            .collect()
    }

    pub fn ctxs(&self) -> Vec<KvStepContext> {
        vec![self.ctx; self.cache.shape().layers]
    }
}
