//! TriAttention against independent references (docs/kv-policies.md §5.2, property H26).

use crate::testing::HostScores;
use crate::tri_attention::query_stats::{HeadBandStats, QueryBandStats, QueryStatsMeta};
use candle_core::{Device, Tensor};
use rand::Rng;
use spectra_core::rng::{derived_rng, SpectraRng};
use spectra_core::rope::{RopePairing, RopeScaling, RopeSpec};
use spectra_core::{Budget, KvEvictionPolicy, KvPhase, KvSideInfo, KvStepContext};

use super::key_scores::{key_scores, KeyScoreInputs};
use super::reference::inverted_key_scores;
use super::scoring::{GroupForms, OffsetAggregation, OffsetTable, ScoreOptions};
use super::unfused::unfused_scores;
use super::{StatsSource, TriAttention, TriAttentionMode};
use crate::testing::Layer;

fn yarn(d: usize, pairing: RopePairing) -> RopeSpec {
    // YaRN makes the attention scaling a ≠ 1, so the a-factors of §1.4 are exercised.
    let scaling = RopeScaling::Yarn {
        factor: 4.0,
        original_max_position: 4096.0,
        beta_fast: 32.0,
        beta_slow: 1.0,
    };
    RopeSpec::new(d, 10000.0, pairing, scaling)
}

fn vector(rng: &mut SpectraRng, d: usize) -> Vec<f64> {
    (0..d).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// Random centres with `m ≥ |q̄|`, for `heads` query heads of `layers` layers.
fn random_stats(
    rng: &mut SpectraRng,
    rope: &RopeSpec,
    layers: usize,
    heads: usize,
) -> QueryBandStats {
    QueryBandStats::random(QueryStatsMeta::for_rope(rope, layers, heads), 0.5, rng).unwrap()
}

/// Pre-RoPE keys rotated at their positions, rounded to f32 as a cache stores them.
fn cached_keys(
    rng: &mut SpectraRng,
    rope: &RopeSpec,
    positions: &[u64],
) -> (Vec<Vec<f64>>, Vec<Vec<f32>>) {
    let pre: Vec<Vec<f64>> = positions
        .iter()
        .map(|_| vector(rng, rope.head_dim))
        .collect();
    let post = pre
        .iter()
        .zip(positions)
        .map(|(k, &p)| {
            rope.rotate(k, p as f64)
                .unwrap()
                .into_iter()
                .map(|x| x as f32)
                .collect()
        })
        .collect();
    (pre, post)
}

fn hot_path(
    keys: &[Vec<f32>],
    center: HeadBandStats<'_>,
    rope: &RopeSpec,
    t: u64,
    options: &ScoreOptions,
) -> Vec<f32> {
    let table = OffsetTable::new(rope, t, options.max_offset);
    let flat: Vec<f32> = keys.iter().flatten().copied().collect();
    let k = Tensor::from_vec(flat, (keys.len(), rope.head_dim), &Device::Cpu).unwrap();
    let inputs = KeyScoreInputs {
        centers: &[center],
        rope,
        table: &table,
        options,
    };
    key_scores(&k, &inputs)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// The scale of a score: Σ_f a²(|q̄_f| + m_f)|k_f|, bounding every term of it.
fn scale(center: &HeadBandStats<'_>, pre_key: &[f64], rope: &RopeSpec) -> f64 {
    let a2 = rope.attention_scaling.powi(2);
    (0..rope.bands())
        .map(|f| {
            let (re, im) = rope.pair(f);
            let q = (center.mean_re[f] as f64).hypot(center.mean_im[f] as f64)
                + center.abs_mean[f] as f64;
            a2 * q * pre_key[re].hypot(pre_key[im])
        })
        .sum()
}

const DEFAULT_OPTIONS: ScoreOptions = ScoreOptions {
    max_offset: 1 << 16,
    aggregation: OffsetAggregation::Mean,
    disable_mlr: false,
    disable_trig: false,
};

#[test]
fn a_invert_undoes_rotate_for_both_pairings_at_large_positions() {
    let mut rng = derived_rng(1, 0);
    for pairing in [RopePairing::Half, RopePairing::Interleaved] {
        let rope = yarn(128, pairing);
        for p in [0.0, 1.0, 65_537.0, 1_000_003.0] {
            let x = vector(&mut rng, 128);
            let back = rope.invert(&rope.rotate(&x, p).unwrap(), p).unwrap();
            // Unit phasors applied and undone in f64, times a and 1/a: a few ulps.
            assert!(x.iter().zip(&back).all(|(a, b)| (a - b).abs() < 1e-12));
        }
    }
}

#[test]
fn b_post_rope_score_equals_the_inverted_key_score() {
    let mut rng = derived_rng(2, 0);
    for pairing in [RopePairing::Half, RopePairing::Interleaved] {
        for d in [64, 128] {
            let rope = yarn(d, pairing);
            let stats = random_stats(&mut rng, &rope, 1, 1);
            let center = stats.head(0, 0).unwrap();
            let t = 100_000;
            let positions: Vec<u64> = (0..24).map(|j| 7 + j * 4_001).collect();
            let (pre, post) = cached_keys(&mut rng, &rope, &positions);
            let post64: Vec<Vec<f64>> = post
                .iter()
                .map(|k| k.iter().map(|&x| x as f64).collect())
                .collect();
            for options in [
                DEFAULT_OPTIONS,
                ScoreOptions {
                    aggregation: OffsetAggregation::Max,
                    ..DEFAULT_OPTIONS
                },
                ScoreOptions {
                    disable_mlr: true,
                    ..DEFAULT_OPTIONS
                },
            ] {
                let fast = hot_path(&post, center, &rope, t, &options);
                let slow =
                    inverted_key_scores(&post64, &positions, t, &center, &rope, &options).unwrap();
                for ((f, s), k) in fast.iter().zip(&slow).zip(&pre) {
                    // f32 weights and an f32 matrix product over d terms: relative error ~1e-6 of the
                    // score's scale; 1e-4 leaves a wide margin while catching any wrong phase or sign.
                    assert!(
                        (*f as f64 - s).abs() < 1e-4 * scale(&center, k, &rope),
                        "{f} vs {s} ({options:?})"
                    );
                }
            }
        }
    }
}

#[test]
fn c_shifting_all_positions_and_t_together_changes_nothing() {
    let mut rng = derived_rng(3, 0);
    let rope = yarn(64, RopePairing::Half);
    let stats = random_stats(&mut rng, &rope, 1, 1);
    let center = stats.head(0, 0).unwrap();
    let positions: Vec<u64> = (0..32).map(|j| j * 37).collect();
    let pre: Vec<Vec<f64>> = positions.iter().map(|_| vector(&mut rng, 64)).collect();
    let at = |shift: u64| -> Vec<f32> {
        let keys: Vec<Vec<f32>> = pre
            .iter()
            .zip(&positions)
            .map(|(k, &p)| {
                rope.rotate(k, (p + shift) as f64)
                    .unwrap()
                    .into_iter()
                    .map(|x| x as f32)
                    .collect()
            })
            .collect();
        hot_path(&keys, center, &rope, 2_000 + shift, &DEFAULT_OPTIONS)
    };
    let (base, shifted) = (at(0), at(250_007));
    for ((a, b), k) in base.iter().zip(&shifted).zip(&pre) {
        // Both sides carry f32 rounding of the rotated keys and of the matrix product (see b).
        assert!(
            ((a - b) as f64).abs() < 1e-4 * scale(&center, k, &rope),
            "{a} vs {b}"
        );
    }
}

#[test]
fn d_norm_only_ablation_is_the_weighted_key_norm() {
    let mut rng = derived_rng(4, 0);
    let rope = yarn(64, RopePairing::Interleaved);
    let stats = random_stats(&mut rng, &rope, 1, 1);
    let center = stats.head(0, 0).unwrap();
    let positions: Vec<u64> = (0..16).map(|j| j * 1000).collect();
    let (pre, post) = cached_keys(&mut rng, &rope, &positions);
    let options = ScoreOptions {
        disable_trig: true,
        ..DEFAULT_OPTIONS
    };
    let got = hot_path(&post, center, &rope, 20_000, &options);
    let a2 = rope.attention_scaling.powi(2);
    for (g, k) in got.iter().zip(&pre) {
        let want: f64 = (0..rope.bands())
            .map(|f| {
                let (re, im) = rope.pair(f);
                let r = (center.mean_re[f] as f64).hypot(center.mean_im[f] as f64);
                a2 * (center.abs_mean[f] as f64 - r) * k[re].hypot(k[im])
            })
            .sum();
        // f32 norms and weights summed over 32 bands.
        assert!(
            (*g as f64 - want).abs() < 1e-5 * scale(&center, k, &rope),
            "{g} vs {want}"
        );
    }
    // Fully concentrated queries (m_f = |q̄_f|, R = 1) leave no norm term.
    let meta = QueryStatsMeta::for_rope(&rope, 1, 1);
    let m: Vec<f32> = center
        .mean_re
        .iter()
        .zip(center.mean_im)
        .map(|(a, b)| a.hypot(*b))
        .collect();
    let concentrated =
        QueryBandStats::new(meta, center.mean_re.to_vec(), center.mean_im.to_vec(), m).unwrap();
    let zero = hot_path(
        &post,
        concentrated.head(0, 0).unwrap(),
        &rope,
        20_000,
        &options,
    );
    // m − |q̄| is the f64 difference of an f32 hypot and an f64 hypot: ~1e-7 relative.
    assert!(zero
        .iter()
        .zip(&pre)
        .all(|(z, k)| (*z as f64).abs() < 1e-6 * scale(&center, k, &rope)));
}

/// A head whose queries all equal its calibrated centre q: the score must be the exact mean of the
/// logits RoPE(q, t + δ) · RoPE(k_j, p_j) over δ ∈ {2^0..2^16}, here computed by rotating the vectors.
#[test]
fn e_queries_at_the_centre_rank_keys_by_the_exact_mean_future_logit() {
    let mut rng = derived_rng(5, 0);
    for pairing in [RopePairing::Half, RopePairing::Interleaved] {
        let rope = yarn(64, pairing);
        let q = vector(&mut rng, 64);
        let meta = QueryStatsMeta::for_rope(&rope, 1, 1);
        let bands: Vec<(f32, f32)> = (0..32)
            .map(|f| (q[rope.pair(f).0] as f32, q[rope.pair(f).1] as f32))
            .collect();
        let stats = QueryBandStats::new(
            meta,
            bands.iter().map(|b| b.0).collect(),
            bands.iter().map(|b| b.1).collect(),
            bands.iter().map(|b| b.0.hypot(b.1)).collect(),
        )
        .unwrap();
        let q32: Vec<f64> = bands
            .iter()
            .map(|b| b.0 as f64)
            .chain(bands.iter().map(|b| b.1 as f64))
            .collect();
        // Rebuild q from the f32 centre so that the reference sees exactly the calibrated query.
        let mut q_exact = vec![0.0; 64];
        for f in 0..32 {
            let (re, im) = rope.pair(f);
            q_exact[re] = q32[f];
            q_exact[im] = q32[32 + f];
        }
        let t = 30_000u64;
        let positions: Vec<u64> = (0..48).map(|j| j * 600 + 11).collect();
        let (_, post) = cached_keys(&mut rng, &rope, &positions);
        let deltas: Vec<u64> = (0..17).map(|e| 1 << e).collect();
        let exact: Vec<f64> = post
            .iter()
            .map(|k| {
                deltas
                    .iter()
                    .map(|&d| {
                        let rq = rope.rotate(&q_exact, (t + d) as f64).unwrap();
                        rq.iter().zip(k).map(|(a, b)| a * *b as f64).sum::<f64>()
                    })
                    .sum::<f64>()
                    / deltas.len() as f64
            })
            .collect();
        let got = hot_path(&post, stats.head(0, 0).unwrap(), &rope, t, &DEFAULT_OPTIONS);
        let tolerance = 1e-4 * exact.iter().map(|x| x.abs()).fold(1.0, f64::max);
        for (g, e) in got.iter().zip(&exact) {
            assert!((*g as f64 - e).abs() < tolerance, "{g} vs {e}");
        }
        // The policy keeps the exact top 16 (the gap at the cut is far above the tolerance).
        let mut order: Vec<usize> = (0..48).collect();
        order.sort_by(|&a, &b| exact[b].total_cmp(&exact[a]));
        assert!(exact[order[15]] - exact[order[16]] > 4.0 * tolerance);
        let mut want: Vec<u32> = order[..16].iter().map(|&j| j as u32).collect();
        want.sort_unstable();
        let layer = Layer::from_head_keys(std::slice::from_ref(&post), &positions, 1, false);
        let policy = TriAttention {
            protect_prompt: false,
            ..TriAttention::default()
        }
        .with_stats(stats);
        let side = KvSideInfo {
            window_queries: None,
            rope: Some(&rope),
            ..KvSideInfo::default()
        };
        let ctx = KvStepContext {
            phase: KvPhase::Decode,
            position: t,
            prompt_len: 0,
            budget: 16,
            seed: 0,
        };
        assert_eq!(
            policy.select(&layer.view(), &side, &ctx).unwrap().per_head[0],
            want
        );
    }
}

#[test]
fn offsets_are_the_seventeen_powers_of_two() {
    assert_eq!(
        super::scoring::offsets(1 << 16),
        (0..17).map(|e| 1u64 << e).collect::<Vec<_>>()
    );
    assert_eq!(super::scoring::offsets(1000).len(), 10);
}

/// Stats travel through a file; a file for another RoPE is refused with the reason; prompt protection
/// keeps the first `budget` prompt entries when the prompt alone is too long.
#[test]
fn calibration_file_prompt_protection_and_mismatch() {
    let mut rng = derived_rng(6, 0);
    let rope = yarn(64, RopePairing::Half);
    let stats = random_stats(&mut rng, &rope, 2, 4);
    let dir = std::env::temp_dir().join(format!("spectra-tri-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("stats.safetensors");
    stats.save(&path).unwrap();
    let policy = TriAttention {
        stats: StatsSource::File(path.clone()),
        ..TriAttention::default()
    };
    policy.validate(&Budget::Tokens(64)).unwrap();
    let layer = Layer::random(100, 64, 2, 2, 9);
    let side = KvSideInfo {
        window_queries: None,
        rope: Some(&rope),
        ..KvSideInfo::default()
    };
    let decode = KvStepContext {
        phase: KvPhase::Decode,
        position: 100,
        prompt_len: 30,
        budget: 40,
        seed: 0,
    };
    let plan = policy.select(&layer.view(), &side, &decode).unwrap();
    for head in &plan.per_head {
        assert_eq!(head.len(), 40);
        assert!((0..30).all(|i| head.contains(&i)));
    }
    // Shared mode: the same set for every layer.
    let plans = policy
        .select_layers(
            &[layer.view(), layer.view()],
            &[side, side],
            &[decode, decode],
        )
        .unwrap();
    assert_eq!(plans[0], plans[1]);
    let long_prompt = KvStepContext {
        prompt_len: 100,
        ..decode
    };
    let plan = policy.select(&layer.view(), &side, &long_prompt).unwrap();
    assert_eq!(plan.per_head[0], (0..40).collect::<Vec<u32>>());
    let other = yarn(64, RopePairing::Interleaved);
    let side = KvSideInfo {
        window_queries: None,
        rope: Some(&other),
        ..KvSideInfo::default()
    };
    let err = policy
        .select(&layer.view(), &side, &decode)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("pairing") && err.contains("spectra calibrate"),
        "{err}"
    );
    let missing = TriAttention {
        stats: StatsSource::File(dir.join("none.safetensors")),
        ..TriAttention::default()
    };
    assert!(missing
        .validate(&Budget::Tokens(64))
        .unwrap_err()
        .contains("cannot read"));
    let per_layer = TriAttention {
        mode: TriAttentionMode::PerLayer,
        ..TriAttention::default()
    };
    assert!(per_layer.validate(&Budget::PerLayer(vec![8, 16])).is_ok());
    assert!(TriAttention::default()
        .validate(&Budget::PerLayer(vec![8, 16]))
        .unwrap_err()
        .contains("PerLayer"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Without a file the centres are the window queries' own: queries that are all one pre-RoPE vector
/// q give the stats of q exactly, hence the same scores as calibrated stats of q.
#[test]
fn window_estimate_recovers_a_constant_query() {
    let mut rng = derived_rng(7, 0);
    let rope = yarn(64, RopePairing::Interleaved);
    let q = vector(&mut rng, 64);
    let t = 5_000u64;
    let w = 8;
    let rows: Vec<f32> = (0..w)
        .flat_map(|i| {
            rope.rotate(&q, (t - w as u64 + i as u64) as f64)
                .unwrap()
                .into_iter()
                .map(|x| x as f32)
        })
        .collect();
    let queries = Tensor::from_vec(rows, (1, w, 64), &Device::Cpu).unwrap();
    let layer = Layer::random(50, 64, 1, 1, 8);
    let ctx = KvStepContext {
        phase: KvPhase::Decode,
        position: t,
        prompt_len: 0,
        budget: 20,
        seed: 3,
    };
    let estimated = TriAttention {
        stats: StatsSource::ObservationWindow(w),
        ..TriAttention::default()
    };
    let side = KvSideInfo {
        window_queries: Some(&queries),
        rope: Some(&rope),
        ..KvSideInfo::default()
    };
    let from_window = estimated.host_scores(&layer.view(), &side, &ctx);
    let meta = QueryStatsMeta::for_rope(&rope, 1, 1);
    let band = |f: usize| (q[rope.pair(f).0] as f32, q[rope.pair(f).1] as f32);
    let stats = QueryBandStats::new(
        meta,
        (0..32).map(|f| band(f).0).collect(),
        (0..32).map(|f| band(f).1).collect(),
        (0..32).map(|f| band(f).0.hypot(band(f).1)).collect(),
    )
    .unwrap();
    let calibrated = TriAttention::default().with_stats(stats);
    let side = KvSideInfo {
        window_queries: None,
        rope: Some(&rope),
        ..KvSideInfo::default()
    };
    let from_stats = calibrated.host_scores(&layer.view(), &side, &ctx);
    // z-scores of the same raw scores up to the f32 rounding of the rotated and inverted queries.
    assert!(from_window[0]
        .iter()
        .zip(&from_stats[0])
        .all(|(a, b)| (a - b).abs() < 1e-3));
}

/// Keys read through a strided layout (a transposed view, copied to contiguous first) and keys stored
/// contiguously go through the same arithmetic: identical scores.
#[test]
fn strided_and_contiguous_keys_score_identically() {
    let mut rng = derived_rng(8, 0);
    let rope = yarn(64, RopePairing::Half);
    let stats = random_stats(&mut rng, &rope, 1, 1);
    let table = OffsetTable::new(&rope, 900, 1 << 16);
    let inputs = KeyScoreInputs {
        centers: &[stats.head(0, 0).unwrap()],
        rope: &rope,
        table: &table,
        options: &DEFAULT_OPTIONS,
    };
    let columns: Vec<f32> = (0..64 * 40).map(|_| rng.random_range(-1.0..1.0)).collect();
    let transposed = Tensor::from_vec(columns, (64, 40), &Device::Cpu)
        .unwrap()
        .t()
        .unwrap();
    assert!(!transposed.is_contiguous());
    let contiguous = transposed.contiguous().unwrap();
    let scores = |k: &Tensor| key_scores(k, &inputs).unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(scores(&transposed), scores(&contiguous));
}

/// Every variant of the score (mean, max, norm only, m-weighted norm; both pairings; GQA groups; key
/// counts that are not multiples of the op's blocks) against the unfused path it replaced, which
/// sums in another order. Both are f32 sums of the same `d + F` products per form: they may differ
/// by a few ulps of the sum of the terms' magnitudes (bounded by `scale`), never by more than 1e-5
/// of it; a wrong weight, band or sign would be off by the order of the scale itself.
#[test]
fn fused_op_equals_the_unfused_path() {
    let mut rng = derived_rng(9, 0);
    for (pairing, d, group, n) in [
        (RopePairing::Half, 64, 1, 37),
        (RopePairing::Interleaved, 128, 3, 600),
        (RopePairing::Half, 128, 4, 1030),
        (RopePairing::Interleaved, 64, 2, 1),
    ] {
        let rope = yarn(d, pairing);
        let stats = random_stats(&mut rng, &rope, 1, group);
        let centers: Vec<_> = (0..group).map(|h| stats.head(0, h).unwrap()).collect();
        let positions: Vec<u64> = (0..n as u64).map(|j| 3 * j + 1).collect();
        let (pre, post) = cached_keys(&mut rng, &rope, &positions);
        let flat: Vec<f32> = post.iter().flatten().copied().collect();
        let keys = Tensor::from_vec(flat, (n, d), &Device::Cpu).unwrap();
        let table = OffsetTable::new(&rope, 3 * n as u64 + 5, 1 << 16);
        for options in [
            DEFAULT_OPTIONS,
            ScoreOptions {
                aggregation: OffsetAggregation::Max,
                ..DEFAULT_OPTIONS
            },
            ScoreOptions {
                disable_trig: true,
                ..DEFAULT_OPTIONS
            },
            ScoreOptions {
                disable_mlr: true,
                aggregation: OffsetAggregation::Max,
                ..DEFAULT_OPTIONS
            },
        ] {
            let inputs = KeyScoreInputs {
                centers: &centers,
                rope: &rope,
                table: &table,
                options: &options,
            };
            let fused = key_scores(&keys, &inputs)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let forms = GroupForms::new(&centers, &table, &rope, &options);
            let unfused = unfused_scores(&forms, &keys, pairing, options.aggregation);
            for (h, (a, b)) in fused.iter().zip(&unfused).enumerate() {
                for ((x, y), k) in a.iter().zip(b).zip(&pre) {
                    let tolerance = 1e-5 * scale(&centers[h], k, &rope);
                    assert!(
                        ((x - y) as f64).abs() < tolerance,
                        "{x} vs {y} ({pairing:?}, d {d}, {options:?})"
                    );
                }
            }
        }
    }
}

/// The mean form is built from the offsets' mean phasor; by linearity it equals the mean of the
/// per-offset forms (computed here in f64 from the same table), up to the f32 rounding of the forms.
#[test]
fn mean_form_is_the_mean_of_the_offsets_forms() {
    let mut rng = derived_rng(10, 0);
    let rope = yarn(64, RopePairing::Interleaved);
    let stats = random_stats(&mut rng, &rope, 1, 2);
    let centers = [stats.head(0, 0).unwrap(), stats.head(0, 1).unwrap()];
    let table = OffsetTable::new(&rope, 77_777, 1 << 16);
    let mean = GroupForms::new(&centers, &table, &rope, &DEFAULT_OPTIONS);
    let max_options = ScoreOptions {
        aggregation: OffsetAggregation::Max,
        ..DEFAULT_OPTIONS
    };
    let per_offset = GroupForms::new(&centers, &table, &rope, &max_options);
    assert_eq!((mean.forms, per_offset.forms), (1, 17));
    for h in 0..2 {
        let (u, v) = mean.form(h, 0);
        for f in 0..32 {
            let (mut su, mut sv) = (0.0f64, 0.0f64);
            for r in 0..17 {
                let (pu, pv) = per_offset.form(h, r);
                su += pu[f] as f64 / 17.0;
                sv += pv[f] as f64 / 17.0;
            }
            // Forms are below a·(|q̄re| + |q̄im|) < 3 in size; each f32 rounding moves one by < 2e-7.
            assert!((u[f] as f64 - su).abs() < 1e-6 && (v[f] as f64 - sv).abs() < 1e-6);
        }
    }
}

/// f16 and bf16 keys are read as they are: the same scores as their exact f32 conversion.
#[test]
fn half_precision_keys_score_as_their_f32_values() {
    let mut rng = derived_rng(11, 0);
    let rope = yarn(128, RopePairing::Half);
    let stats = random_stats(&mut rng, &rope, 1, 2);
    let centers = [stats.head(0, 0).unwrap(), stats.head(0, 1).unwrap()];
    let table = OffsetTable::new(&rope, 4_000, 1 << 16);
    let inputs = KeyScoreInputs {
        centers: &centers,
        rope: &rope,
        table: &table,
        options: &DEFAULT_OPTIONS,
    };
    let keys: Vec<f32> = (0..128 * 50).map(|_| rng.random_range(-2.0..2.0)).collect();
    let keys = Tensor::from_vec(keys, (50, 128), &Device::Cpu).unwrap();
    for dtype in [candle_core::DType::F16, candle_core::DType::BF16] {
        let half = keys.to_dtype(dtype).unwrap();
        let widened = half.to_dtype(candle_core::DType::F32).unwrap();
        assert_eq!(
            key_scores(&half, &inputs)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap(),
            key_scores(&widened, &inputs)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap(),
            "{dtype:?}"
        );
    }
}

/// Keys of another head size, keys that are not a matrix, and centres of another band count are
/// refused with the reason.
#[test]
fn key_scores_refuse_mismatched_input() {
    let mut rng = derived_rng(12, 0);
    let rope = yarn(128, RopePairing::Half);
    let stats = random_stats(&mut rng, &rope, 1, 1);
    let table = OffsetTable::new(&rope, 4_000, 1 << 16);
    let centers = [stats.head(0, 0).unwrap()];
    let inputs = KeyScoreInputs {
        centers: &centers,
        rope: &rope,
        table: &table,
        options: &DEFAULT_OPTIONS,
    };
    let error =
        |k: &Tensor, inputs: &KeyScoreInputs<'_>| key_scores(k, inputs).unwrap_err().to_string();
    let wrong = Tensor::zeros((5, 64), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(error(&wrong, &inputs).contains("head_dim 64"));
    let flat = Tensor::zeros(128, candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(error(&flat, &inputs).contains("[entries, head_dim]"));
    let small = random_stats(&mut rng, &yarn(64, RopePairing::Half), 1, 1);
    let other = [small.head(0, 0).unwrap()];
    let keys = Tensor::zeros((5, 128), candle_core::DType::F32, &Device::Cpu).unwrap();
    let mismatched = KeyScoreInputs {
        centers: &other,
        ..inputs
    };
    assert!(error(&keys, &mismatched).contains("64 bands"));
    let none = KeyScoreInputs {
        centers: &[],
        ..inputs
    };
    assert!(error(&keys, &none).contains("got 0 centres"));
}
