//! The inputs every fused kernel is checked on against its CPU path, and the tolerances: on a GPU
//! (tests/gpu_training.rs, tests/gpu_kv.rs) and on the CPU under emulation
//! (tests/emulated_kernels.rs). Each list holds the edge shapes: one element or one row, sizes that
//! are no multiple of the block, grids that loop (grid-stride past the 1024-block cap), empty
//! candidate ranges, and values with heavy ties, NaN, ±inf and ±0.
#![allow(dead_code)] // each test binary uses the cases of its kernels

use std::ops::Range;

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use spectra::core::rng::{derived_rng, SpectraRng};
use spectra::core::rope::{RopePairing, RopeScaling, RopeSpec};
use spectra::core::GqaAggregation;
use spectra::plugins::optimizers::fused::adamw::AdamWScalars;
use spectra::policies::snap_kv_votes::VotePool;
use spectra::policies::tri_attention::key_scores::KeyScoreInputs;
use spectra::policies::tri_attention::query_stats::{QueryBandStats, QueryStatsMeta};
use spectra::policies::tri_attention::{OffsetTable, ScoreOptions};
use spectra::policies::{OffsetAggregation, Pooling};

/// Gaussian entries (Box–Muller on a seeded generator), made on the CPU.
pub fn gaussian(dims: &[usize], std: f64, seed: u64, dtype: DType) -> Tensor {
    let mut rng = SpectraRng::seed_from_u64(seed);
    let n: usize = dims.iter().product();
    let data: Vec<f64> = (0..n)
        .map(|_| {
            let (u1, u2): (f64, f64) = (1.0 - rng.random::<f64>(), rng.random());
            std * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        })
        .collect();
    Tensor::from_vec(data, dims, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// Adam's third update with decoupled decay.
pub fn adamw_scalars() -> AdamWScalars {
    let (cm, cv) = AdamWScalars::corrections(0.9, 0.999, 3, true);
    AdamWScalars {
        beta1: 0.9,
        beta2: 0.999,
        m_correction: cm,
        v_correction: cv,
        eps: 1e-8,
        lr: 0.01,
        weight_scale: 1.0 - 1e-3,
    }
}

/// One entry; a block and one more; 1000×1037 entries, several grid-stride rounds of the
/// 1024-block launch and a tail.
pub const ADAMW_DIMS: [[usize; 2]; 3] = [[1, 1], [1, 257], [1000, 1037]];

/// Muon's momentum on one short row, on less than a warp's worth of the last block, and on
/// 777×1025 entries (grid-stride rounds and a tail).
pub const MUON_DIMS: [[usize; 2]; 3] = [[1, 5], [1, 8_193], [777, 1025]];

/// Σd² of Muon's momentum adds the same f64 terms in different orders (8 lanes on the CPU, a tree
/// per block on the device): each within n·2⁻⁵³ ≈ 9e-11 relative of the exact sum for n = 8e5,
/// typically √n times less.
pub const MUON_SUM_TOLERANCE: f64 = 2e-10;

/// `a` and `b` agree within `tolerance · max(1, |a|)`, or are the same non-finite value class.
pub fn close(a: f32, b: f32, tolerance: f32) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    if a.is_infinite() || b.is_infinite() {
        return a == b;
    }
    (a - b).abs() <= tolerance * a.abs().max(1.0)
}

/// Scale of the scores in a row, for tolerances relative to it.
pub fn scale(v: &[f32]) -> f32 {
    v.iter()
        .filter(|x| x.is_finite())
        .fold(1.0f32, |m, x| m.max(x.abs()))
}

/// One top-k selection: `heads` rows of `n` scores.
pub struct TopKCase {
    pub heads: usize,
    pub n: usize,
    pub sinks: usize,
    pub window: usize,
    pub budget: usize,
    pub scores: Vec<f32>,
}

/// Concentrated z-score-like values that share their leading bits, seven distinct values (ties at
/// the cut), and NaN, ±inf, ±0 among random values; budgets from all but one to sinks + window
/// only; rows shorter than a block.
pub fn top_k_cases() -> Vec<TopKCase> {
    let mut rng = derived_rng(79, 0);
    [
        (8, 131_072, 4, 128, 4_096, 0),
        (8, 32_768, 0, 0, 1_024, 1),
        (3, 5_000, 16, 32, 48, 2),
        (2, 1_000, 0, 8, 999, 1),
        (1, 70_000, 100, 100, 50_000, 0),
        (4, 37, 2, 3, 5, 2),
    ]
    .into_iter()
    .map(|(heads, n, sinks, window, budget, kind)| TopKCase {
        heads,
        n,
        sinks,
        window,
        budget,
        scores: (0..heads * n)
            .map(|_| match kind {
                0 => 1.0 + rng.random_range(-1.0f32..1.0) * 1e-3,
                1 => rng.random_range(0..7) as f32 * 0.25,
                _ => match rng.random_range(0..8) {
                    0 => f32::NAN,
                    1 => f32::INFINITY,
                    2 => f32::NEG_INFINITY,
                    3 => -0.0,
                    4 => 0.0,
                    _ => rng.random_range(-1.0..1.0),
                },
            })
            .collect(),
    })
    .collect()
}

/// TriAttention's finishing step on `group` rows of `n` raw scores.
pub struct FinishCase {
    pub group: usize,
    pub n: usize,
    pub candidates: Range<usize>,
    pub reduce: GqaAggregation,
    /// NaN every 101 entries.
    pub raw: Vec<f32>,
}

/// A long row set, candidates inside the row, and no candidate at all.
pub fn finish_cases() -> Vec<FinishCase> {
    let mut rng = derived_rng(78, 0);
    [
        (4, 131_072, 0..131_072, GqaAggregation::Max),
        (3, 10_000, 100..9_000, GqaAggregation::Mean),
        (1, 50, 0..0, GqaAggregation::Max),
    ]
    .into_iter()
    .map(|(group, n, candidates, reduce)| {
        let mut raw: Vec<f32> = (0..group * n)
            .map(|_| rng.random_range(-5.0..5.0))
            .collect();
        for x in raw.iter_mut().step_by(101) {
            *x = f32::NAN;
        }
        FinishCase {
            group,
            n,
            candidates,
            reduce,
            raw,
        }
    })
    .collect()
}

/// The finishing kernel sums the f64 statistics in another order, which moves a z-score by ~1e-16
/// relative before rounding to f32: bit-identical but for rare roundings at an f32 boundary, one
/// ulp (≤ 1.2e-7 relative), twice that after the noise is added.
pub const FINISH_TOLERANCE: f32 = 2.5e-7;

/// The RoPE of the key-score and policy cases: YaRN-scaled, so that the attention scaling is not 1.
pub fn yarn_rope(head_dim: usize, pairing: RopePairing) -> RopeSpec {
    let scaling = RopeScaling::Yarn {
        factor: 4.0,
        original_max_position: 4096.0,
        beta_fast: 32.0,
        beta_slow: 1.0,
    };
    RopeSpec::new(head_dim, 10000.0, pairing, scaling)
}

/// Calibrated statistics for `layers` × `heads` query heads of `rope` (random centres with
/// m ≥ |q̄|).
pub fn band_stats(rope: &RopeSpec, layers: usize, heads: usize, seed: u64) -> QueryBandStats {
    let meta = QueryStatsMeta::for_rope(rope, layers, heads);
    QueryBandStats::random(meta, 0.5, &mut derived_rng(seed, 1 << 44)).unwrap()
}

/// Key-score shapes: (head_dim, pairing, group, keys). More keys than the blocks cover at once (so
/// that blocks loop), both pairings, head sizes up to the kernel's 256, a tail tile.
pub const KEY_SCORE_SHAPES: [(usize, RopePairing, usize, usize); 4] = [
    (128, RopePairing::Half, 4, 200_003),
    (64, RopePairing::Interleaved, 3, 5_000),
    (256, RopePairing::Half, 2, 3_001),
    (80, RopePairing::Interleaved, 8, 777),
];

/// Runs `check` on every key-score case (every shape, every mode of the kernel: mean over offsets,
/// max over offsets without MLR, norm only; keys in f32, bf16 and f16) with its inputs, its keys
/// `[n, head_dim]` on the CPU and a label.
pub fn for_each_key_score_case(mut check: impl FnMut(&KeyScoreInputs<'_>, &Tensor, &str)) {
    let mut rng = derived_rng(77, 0);
    for (d, pairing, group, n) in KEY_SCORE_SHAPES {
        let rope = yarn_rope(d, pairing);
        let stats = band_stats(&rope, 1, group, d as u64);
        let centers: Vec<_> = (0..group).map(|h| stats.head(0, h).unwrap()).collect();
        let keys: Vec<f32> = (0..n * d).map(|_| rng.random_range(-2.0..2.0)).collect();
        let keys = Tensor::from_vec(keys, (n, d), &Device::Cpu).unwrap();
        let table = OffsetTable::new(&rope, 131_072 + 7, 1 << 16);
        for (aggregation, disable_trig, disable_mlr) in [
            (OffsetAggregation::Mean, false, false),
            (OffsetAggregation::Max, false, true),
            (OffsetAggregation::Mean, true, false),
        ] {
            let options = ScoreOptions {
                max_offset: 1 << 16,
                aggregation,
                disable_mlr,
                disable_trig,
            };
            let inputs = KeyScoreInputs {
                centers: &centers,
                rope: &rope,
                table: &table,
                options: &options,
            };
            for dtype in [DType::F32, DType::BF16, DType::F16] {
                let what = format!("d {d} {pairing:?} {options:?} {dtype:?}");
                check(&inputs, &keys.to_dtype(dtype).unwrap(), &what);
            }
        }
    }
}

/// The key-score paths perform the same correctly rounded operations in the same order from the
/// same f64 weights; only a double `sincos` may differ between libraries in the last bit, which
/// reaches an f32 weight with probability ~2⁻²⁹. So nearly all scores (999 in 1000) must be
/// bit-identical, and any other within 1e-5 of the row's scale (one f32 ulp of a weight times at
/// most d key coordinates of size ≤ 2). Checks `other` against `cpu` (`[group, n]` each, row-major)
/// and returns (bit-identical, total, the largest difference over a row's scale).
pub fn check_key_scores(cpu: &[f32], other: &[f32], n: usize, what: &str) -> (usize, usize, f32) {
    let (mut same, mut worst) = (0, 0f32);
    for (c, o) in cpu.chunks(n).zip(other.chunks(n)) {
        let s = scale(c);
        for (a, b) in c.iter().zip(o) {
            if a.to_bits() == b.to_bits() {
                same += 1;
            } else {
                assert!(close(a / s, b / s, 1e-5), "{what}: CPU {a}, other {b}");
                worst = worst.max((a - b).abs() / s);
            }
        }
    }
    assert_eq!(cpu.len(), other.len(), "{what}: score counts");
    assert!(
        same * 1000 >= cpu.len() * 999,
        "{what}: only {same} of {} scores bit-identical",
        cpu.len()
    );
    (same, cpu.len(), worst)
}

/// One SnapKV vote: the op and the window's logits `[group · window, n]`.
pub struct VoteCase {
    pub op: VotePool,
    pub n: usize,
    pub logits: Vec<f32>,
}

/// Group reductions and poolings of both kinds; windows whose queries see growing prefixes (the
/// causal mask), a query that sees nothing, rows longer than a block; NaN and ±inf logits in one
/// case.
pub fn vote_cases() -> Vec<VoteCase> {
    let mut rng = derived_rng(80, 0);
    let cases = [
        (2, 1_000, vec![990, 995, 1_000], 990, 7, Pooling::Max, false),
        (4, 300, vec![0, 290, 300], 290, 5, Pooling::Avg, false),
        (1, 9, vec![4, 9], 4, 3, Pooling::Avg, true),
        (3, 2_049, vec![2_040; 8], 2_040, 1, Pooling::Max, true),
    ];
    cases
        .into_iter()
        .enumerate()
        .map(
            |(i, (group, n, visible, prefix, kernel, pooling, special))| {
                let rows = group * visible.len();
                let logits = (0..rows * n)
                    .map(|_| match rng.random_range(0..40) {
                        0 if special => f32::NAN,
                        1 if special => f32::INFINITY,
                        2 if special => f32::NEG_INFINITY,
                        _ => rng.random_range(-8.0..8.0),
                    })
                    .collect();
                let reduce = if i % 2 == 0 {
                    GqaAggregation::Mean
                } else {
                    GqaAggregation::Max
                };
                VoteCase {
                    op: VotePool {
                        group,
                        visible,
                        prefix,
                        kernel,
                        pooling,
                        reduce,
                    },
                    n,
                    logits,
                }
            },
        )
        .collect()
}

/// SnapKV's row sums add up to n softmax weights in another order (a tree per row against one
/// running sum): each within n·2⁻²⁴ relative of the exact sum, ≤ 1.2e-4 for n ≤ 2049; a vote adds
/// window such quotients, so this fraction of the scale of the votes holds it.
pub const VOTE_TOLERANCE: f32 = 2e-4;
