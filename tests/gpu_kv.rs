//! KV eviction on a GPU against the CPU: every registered policy (built from its default
//! configuration, plus the non-default scoring paths) on identical caches on both devices, and each
//! fused KV kernel's CUDA output against its CPU output on the same inputs. Needs `--features cuda`
//! and a GPU; without one it says why and passes.
#![cfg(feature = "cuda")]

use candle_core::{DType, Device, Tensor};
use rand::Rng;
use spectra_core::ops::top_k::keep_top_k_rows;
use spectra_core::registry::{plugins, Family};
use spectra_core::rng::{derived_rng, SpectraRng};
use spectra_core::rope::{RopePairing, RopeSpec};
use spectra_core::{
    GqaAggregation, KeepPlan, KvEvictionPolicy, KvPhase, KvSideInfo, KvStepContext,
};
use spectra_kv::{KvCache, KvCacheShape};
use spectra_policies::tri_attention::key_scores::key_scores;
use spectra_policies::tri_attention::normalize::{tie_noise, Finish};
use spectra_policies::tri_attention::query_stats::QueryBandStats;
use spectra_policies::{OffsetAggregation, Pooling, SnapKv, TriAttention, TriAttentionMode};
use third_party_plugin as _;

mod kernel_cases_support;
use kernel_cases_support::{
    band_stats, check_key_scores, close, finish_cases, for_each_key_score_case, top_k_cases,
    yarn_rope, FinishCase, TopKCase, FINISH_TOLERANCE,
};

/// The first GPU, or `None` after saying why there is none.
fn gpu() -> Option<Device> {
    match std::panic::catch_unwind(|| Device::new_cuda(0)) {
        Ok(Ok(device)) => Some(device),
        Ok(Err(e)) => {
            eprintln!("gpu_kv: skipped, CUDA device 0 is not available: {e}");
            None
        }
        Err(_) => {
            eprintln!("gpu_kv: skipped, the NVIDIA driver could not be loaded");
            None
        }
    }
}

/// What the numbers of a random cache look like.
#[derive(Clone, Copy, Debug)]
enum Values {
    Random,
    /// Keys drawn from four vectors: exact ties everywhere, at the cut too.
    FewDistinct,
    /// Random, with NaN and ±inf in some keys.
    NonFinite,
}

/// One random case: a cache of `layers × kv_heads` heads of the given lengths (per head, different).
#[derive(Clone, Debug)]
struct Case {
    layers: usize,
    kv_heads: usize,
    group: usize,
    head_dim: usize,
    lens: Vec<usize>,
    budget: usize,
    pairing: RopePairing,
    values: Values,
    phase: KvPhase,
    seed: u64,
}

/// The same cache, window queries and step on one device.
struct Built {
    cache: KvCache,
    window_queries: Vec<Option<Tensor>>,
}

impl Case {
    fn rope(&self) -> RopeSpec {
        yarn_rope(self.head_dim, self.pairing)
    }

    fn universe(&self) -> usize {
        self.lens.iter().copied().max().unwrap_or(0)
    }

    /// Positions with gaps (a cache compacted before) and the step after them.
    fn positions_and_ctx(&self) -> (Vec<u64>, KvStepContext) {
        let mut rng = derived_rng(self.seed, 0);
        let mut next = rng.random_range(0..3u64);
        let positions: Vec<u64> = (0..self.universe())
            .map(|_| {
                let p = next;
                next += rng.random_range(1..=3);
                p
            })
            .collect();
        let prompt_len = match self.phase {
            KvPhase::Prefill => next,
            KvPhase::Decode => next / 3,
        };
        let ctx = KvStepContext {
            phase: self.phase,
            position: next,
            prompt_len,
            budget: self.budget,
            seed: self.seed,
        };
        (positions, ctx)
    }

    fn numbers(&self, rng: &mut SpectraRng, rows: usize) -> Vec<f32> {
        let d = self.head_dim;
        match self.values {
            Values::Random => (0..rows * d).map(|_| rng.random_range(-1.0..1.0)).collect(),
            Values::FewDistinct => {
                let four: Vec<Vec<f32>> = (0..4)
                    .map(|_| (0..d).map(|_| rng.random_range(-1.0..1.0)).collect())
                    .collect();
                (0..rows)
                    .flat_map(|_| four[rng.random_range(0..4)].clone())
                    .collect()
            }
            Values::NonFinite => {
                let mut v: Vec<f32> = (0..rows * d).map(|_| rng.random_range(-1.0..1.0)).collect();
                for row in 0..rows {
                    let at = row * d + rng.random_range(0..d);
                    match rng.random_range(0..8) {
                        0 => v[at] = f32::NAN,
                        1 => v[at] = f32::INFINITY,
                        2 => v[at] = f32::NEG_INFINITY,
                        _ => {}
                    }
                }
                v
            }
        }
    }

    /// The case's cache on `device`: every head receives all positions, then keeps its own random
    /// subset of its own length (the same subsets on every device).
    fn build(&self, policy: &dyn KvEvictionPolicy, device: &Device) -> Built {
        let needs = policy.needs();
        let (positions, _) = self.positions_and_ctx();
        let (heads, d, universe) = (self.kv_heads, self.head_dim, self.universe());
        let shape = KvCacheShape {
            layers: self.layers,
            kv_heads: heads,
            head_dim: d,
            group_size: self.group,
        };
        let mut cache =
            KvCache::new(shape, DType::F32, device, needs.accumulated_attention).unwrap();
        let mut window_queries = Vec::new();
        for layer in 0..self.layers {
            let mut rng = derived_rng(self.seed, 1 + layer as u64);
            let keys = Tensor::from_vec(
                self.numbers(&mut rng, heads * universe),
                (heads, universe, d),
                device,
            )
            .unwrap();
            let values = (&keys * 0.5).unwrap();
            cache.append(layer, &keys, &values, &positions).unwrap();
            let per_head = (0..heads)
                .map(|h| {
                    let mut rng = derived_rng(self.seed, 1 << 40 | h as u64);
                    let mut idx: Vec<u32> = (0..universe as u32).collect();
                    for i in (1..idx.len()).rev() {
                        idx.swap(i, rng.random_range(0..=i));
                    }
                    idx.truncate(self.lens[h]);
                    idx.sort_unstable();
                    idx
                })
                .collect();
            cache.compact(layer, &KeepPlan { per_head }).unwrap();
            if needs.accumulated_attention {
                for h in 0..heads {
                    let received: Vec<f32> = (0..self.lens[h])
                        .map(|_| rng.random_range(0.0..10.0))
                        .collect();
                    let received = Tensor::new(received, device).unwrap();
                    cache.add_attention(layer, h, &received).unwrap();
                }
            }
            window_queries.push(needs.window_queries.map(|w| {
                let q = self.numbers(&mut rng, heads * self.group * w);
                let q: Vec<f32> = q
                    .into_iter()
                    .map(|x| if x.is_finite() { x } else { 0.5 })
                    .collect();
                Tensor::from_vec(q, (heads * self.group, w, d), device).unwrap()
            }));
        }
        Built {
            cache,
            window_queries,
        }
    }
}

/// Calibrated statistics for the case's model shape.
fn stats(case: &Case) -> QueryBandStats {
    band_stats(
        &case.rope(),
        case.layers,
        case.kv_heads * case.group,
        case.seed,
    )
}

/// Selections and scores of one policy on one device.
struct Run {
    plans: Vec<KeepPlan>,
    /// Per layer, per head (for score-based policies).
    scores: Vec<Option<Vec<Vec<f32>>>>,
}

fn run(policy: &dyn KvEvictionPolicy, case: &Case, device: &Device) -> Run {
    let built = case.build(policy, device);
    let rope = case.rope();
    let (_, ctx) = case.positions_and_ctx();
    let views: Vec<_> = (0..case.layers)
        .map(|l| built.cache.layer_view(l).unwrap())
        .collect();
    let sides: Vec<_> = built
        .window_queries
        .iter()
        .map(|q| KvSideInfo {
            window_queries: q.as_ref(),
            rope: Some(&rope),
            ..KvSideInfo::default()
        })
        .collect();
    let ctxs = vec![ctx; case.layers];
    let name = policy.typetag_name();
    let plans = policy
        .select_layers(&views, &sides, &ctxs)
        .unwrap_or_else(|e| panic!("{name} on {device:?}: {e}"));
    let scores = views
        .iter()
        .zip(&sides)
        .map(|(v, s)| {
            let scores = policy.score(v, s, &ctx).unwrap();
            scores.map(|s| spectra_core::scores_to_host(&s).unwrap())
        })
        .collect();
    Run { plans, scores }
}

/// Relative tolerance between the devices' scores. TriAttention's are bit-identical but for a
/// double-precision `sincos` ulp that survives rounding a weight to f32 (rare), then z-scores whose
/// f64 statistics are summed in another order (≤ 1e-7 of a z-score). SnapKV's and R-KV's softmax
/// weights use CUDA's expf (2 ulp) and sums in another order over n ≤ 1000 terms of at most 1: a few
/// 1e-6 at worst. Norm-based scores (KNorm, ValueNorm) are sums of d squares in another order. 1e-4
/// leaves an order of magnitude over all of them while catching any real difference in the
/// arithmetic (a wrong band, offset or mask moves scores by their own order).
const SCORE_TOLERANCE: f32 = 1e-4;

/// The plans are identical, or every entry kept on one device and evicted on the other sits at the
/// selection's cut: its scores on the two devices agree within tolerance and all such entries score
/// within twice the tolerance of each other (a tie within rounding, ordered differently).
fn check_same_selection(policy: &dyn KvEvictionPolicy, case: &Case, cpu: &Run, gpu: &Run) {
    let name = policy.typetag_name();
    let shared = policy.contract().shares_across_layers;
    let what = format!("{name} on {case:?}");
    for (layer, (c, g)) in cpu.plans.iter().zip(&gpu.plans).enumerate() {
        assert_eq!(c.per_head.len(), g.per_head.len(), "{what}: heads");
        for (h, (kc, kg)) in c.per_head.iter().zip(&g.per_head).enumerate() {
            assert_eq!(
                kc.len(),
                kg.len(),
                "{what}: layer {layer} head {h} keeps another count"
            );
            if kc == kg {
                continue;
            }
            // The selection score of a policy sharing one set across layers is the layers' mean
            // (TriAttention's rule); otherwise the layer's own.
            let selection = |run: &Run| -> Vec<f32> {
                let per_layer: Vec<&Vec<f32>> = run
                    .scores
                    .iter()
                    .map(|s| {
                        &s.as_ref().unwrap_or_else(|| {
                            panic!("{what}: plans differ but the policy has no scores")
                        })[h]
                    })
                    .collect();
                if shared {
                    let n = per_layer[0].len();
                    (0..n)
                        .map(|j| {
                            per_layer
                                .iter()
                                .map(|s| s[j] / per_layer.len() as f32)
                                .sum::<f32>()
                        })
                        .collect()
                } else {
                    per_layer[layer].clone()
                }
            };
            let (sc, sg) = (selection(cpu), selection(gpu));
            let differing: Vec<u32> = kc
                .iter()
                .filter(|i| !kg.contains(i))
                .chain(kg.iter().filter(|i| !kc.contains(i)))
                .copied()
                .collect();
            let at: Vec<f32> = differing.iter().map(|&i| sc[i as usize]).collect();
            for &i in &differing {
                let (a, b) = (sc[i as usize], sg[i as usize]);
                assert!(
                    close(a, b, SCORE_TOLERANCE),
                    "{what}: head {h} entry {i}: {a} vs {b}"
                );
            }
            let lo = at.iter().copied().fold(f32::INFINITY, f32::min);
            let hi = at.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert!(
                hi - lo <= 2.0 * SCORE_TOLERANCE * hi.abs().max(1.0),
                "{what}: layer {layer} head {h}: plans differ at entries {differing:?} scoring {at:?}, not a tie"
            );
        }
    }
    for (c, g) in cpu.scores.iter().zip(&gpu.scores) {
        if let (Some(c), Some(g)) = (c, g) {
            for (rc, rg) in c.iter().zip(g) {
                assert_eq!(rc.len(), rg.len(), "{what}: score lengths");
                for (j, (a, b)) in rc.iter().zip(rg).enumerate() {
                    assert!(
                        close(*a, *b, SCORE_TOLERANCE),
                        "{what}: score {j}: CPU {a}, GPU {b}"
                    );
                }
            }
        }
    }
}

fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for (i, values) in [Values::Random, Values::FewDistinct, Values::NonFinite]
        .into_iter()
        .enumerate()
    {
        for (j, (layers, kv_heads, group, head_dim, pairing)) in [
            (1, 2, 4, 128, RopePairing::Half),
            (2, 3, 2, 64, RopePairing::Interleaved),
        ]
        .into_iter()
        .enumerate()
        {
            let seed = 10 * i as u64 + j as u64;
            cases.push(Case {
                layers,
                kv_heads,
                group,
                head_dim,
                lens: (0..kv_heads).map(|h| [700, 333, 64][h % 3]).collect(),
                budget: 160,
                pairing,
                values,
                phase: if j == 0 {
                    KvPhase::Decode
                } else {
                    KvPhase::Prefill
                },
                seed,
            });
        }
    }
    cases
}

/// The registered policies from their defaults, plus the scoring paths defaults do not take:
/// calibrated TriAttention (mean and max over offsets, norm-only, per layer) and SnapKV with max
/// pooling over a max-reduced group.
fn policies(case: &Case) -> Vec<Box<dyn KvEvictionPolicy>> {
    let mut all: Vec<Box<dyn KvEvictionPolicy>> = plugins()
        .into_iter()
        .filter(|p| p.family == Family::KvEvictionPolicy)
        .map(|p| {
            ron::from_str(&(p.default_config)())
                .unwrap_or_else(|e| panic!("{}: default config does not parse: {e}", p.name))
        })
        .collect();
    let calibrated = |config: TriAttention| Box::new(config.with_stats(stats(case)));
    all.push(calibrated(TriAttention::default()));
    all.push(calibrated(TriAttention {
        mode: TriAttentionMode::PerLayer,
        aggregation: OffsetAggregation::Max,
        gqa: GqaAggregation::Mean,
        recent_window: 16,
        protect_prompt: false,
        ..TriAttention::default()
    }));
    all.push(calibrated(TriAttention {
        disable_trig: true,
        disable_mlr: true,
        ..TriAttention::default()
    }));
    all.push(Box::new(SnapKv {
        window: 8,
        kernel: 7,
        pooling: Pooling::Max,
        gqa: GqaAggregation::Max,
    }));
    all
}

#[test]
fn every_policy_selects_the_same_on_gpu_and_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut checked = 0;
    for case in cases() {
        for policy in policies(&case) {
            let on_cpu = run(policy.as_ref(), &case, &Device::Cpu);
            let on_gpu = run(policy.as_ref(), &case, &gpu);
            check_same_selection(policy.as_ref(), &case, &on_cpu, &on_gpu);
            checked += 1;
        }
    }
    eprintln!("gpu_kv: {checked} (policy, case) pairs select the same on both devices");
}

/// The key score kernel against the CPU path, in every mode, both pairings, four head sizes and
/// three key dtypes (see `check_key_scores`).
#[test]
fn key_score_kernel_matches_the_cpu_path() {
    let Some(gpu) = gpu() else { return };
    for_each_key_score_case(|inputs, keys, what| {
        let cpu: Vec<f32> = key_scores(keys, inputs)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let on_gpu: Vec<f32> = key_scores(&keys.to_device(&gpu).unwrap(), inputs)
            .unwrap()
            .to_device(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        check_key_scores(&cpu, &on_gpu, keys.dims()[0], what);
    });
}

/// z-normalisation, group reduction and noise (see `FINISH_TOLERANCE`).
#[test]
fn finish_kernel_matches_the_cpu_path() {
    let Some(gpu) = gpu() else { return };
    for case in finish_cases() {
        let FinishCase {
            group,
            n,
            candidates,
            reduce,
            raw,
        } = case;
        let raw = Tensor::from_vec(raw, (group, n), &Device::Cpu).unwrap();
        for normalize in [true, false] {
            let finish = Finish {
                candidates: candidates.clone(),
                normalize,
                reduce,
            };
            let noise = tie_noise(3, 1, 2, n, &Device::Cpu).unwrap();
            let cpu: Vec<f32> = finish.apply(&raw, &noise).unwrap().to_vec1().unwrap();
            let on_gpu: Vec<f32> = finish
                .apply(
                    &raw.to_device(&gpu).unwrap(),
                    &noise.to_device(&gpu).unwrap(),
                )
                .unwrap()
                .to_device(&Device::Cpu)
                .unwrap()
                .to_vec1()
                .unwrap();
            for (j, (a, b)) in cpu.iter().zip(&on_gpu).enumerate() {
                assert!(
                    close(*a, *b, FINISH_TOLERANCE),
                    "group {group} n {n} entry {j}: CPU {a}, GPU {b}"
                );
            }
        }
    }
}

/// Top-k on the GPU keeps exactly what the CPU path (and `keep_top_k`) keeps: the selection is
/// integer logic on the same f32 scores, so no tolerance.
#[test]
fn top_k_kernel_matches_the_cpu_path() {
    let Some(gpu) = gpu() else { return };
    for case in top_k_cases() {
        let TopKCase {
            heads,
            n,
            sinks,
            window,
            budget,
            scores,
        } = case;
        let scores = Tensor::from_vec(scores, (heads, n), &Device::Cpu).unwrap();
        let cpu: Vec<Vec<u32>> = keep_top_k_rows(&scores, sinks, window, budget)
            .unwrap()
            .to_vec2()
            .unwrap();
        let on_gpu: Vec<Vec<u32>> =
            keep_top_k_rows(&scores.to_device(&gpu).unwrap(), sinks, window, budget)
                .unwrap()
                .to_device(&Device::Cpu)
                .unwrap()
                .to_vec2()
                .unwrap();
        assert_eq!(
            cpu, on_gpu,
            "heads {heads} n {n} sinks {sinks} window {window} budget {budget}"
        );
        let rows: Vec<Vec<f32>> = scores.to_vec2().unwrap();
        for (row, kept) in rows.iter().zip(&cpu) {
            assert_eq!(kept, &spectra_core::keep_top_k(row, sinks, window, budget));
        }
    }
}
