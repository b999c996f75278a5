//! KV eviction: scoring plus selection per layer (8 KV heads, GQA 4, n ∈ {1K, 8K, 32K}, head dim 64 and
//! 128), the fused ops' CPU paths alone (TriAttention key scores, SnapKV vote + pooling, top-k against
//! the host `keep_top_k` it can replace), compaction, and TriAttention over all layers of SmolLM2-135M at
//! n = 8K against one decoding step of that model. Rooflines are measured in the same run: a plain f32
//! matmul (FMA throughput) and a plain copy (memory bandwidth). After criterion's own report a table of
//! ratios is printed.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use criterion::{BenchmarkGroup, Criterion, Throughput};
use spectra_core::ops::top_k::keep_top_k_rows;
use spectra_core::rope::{RopePairing, RopeScaling, RopeSpec};
use spectra_core::{
    keep_top_k, GqaAggregation, KeepPlan, KvEvictionPolicy, KvPhase, KvSideInfo, KvStepContext,
};
use spectra_kv::{KvCache, KvCacheShape};
use spectra_policies::snap_kv_votes::VotePool;
use spectra_policies::tri_attention::key_scores::{key_scores, KeyScoreInputs};
use spectra_policies::tri_attention::query_stats::{QueryBandStats, QueryStatsMeta};
use spectra_policies::tri_attention::{OffsetTable, ScoreOptions};
use spectra_policies::{H2o, KNorm, OffsetAggregation, Pooling, SnapKv, TriAttention};

const KV_HEADS: usize = 8;
const GROUP: usize = 4;
const OFFSETS: f64 = 17.0;

/// Median seconds per iteration of every benchmark, by name.
static TIMES: Mutex<BTreeMap<String, Vec<f64>>> = Mutex::new(BTreeMap::new());

fn timed(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    id: &str,
    mut f: impl FnMut(),
) {
    let full = id.to_string();
    group.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                f();
            }
            let elapsed = start.elapsed();
            TIMES
                .lock()
                .unwrap()
                .entry(full.clone())
                .or_default()
                .push(elapsed.as_secs_f64() / iters as f64);
            elapsed
        })
    });
}

fn median(id: &str) -> f64 {
    let mut v = TIMES.lock().unwrap().get(id).cloned().unwrap_or_default();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn uniform(n: usize) -> Vec<f32> {
    Tensor::rand(-1f32, 1f32, n, &Device::Cpu)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// A one-layer cache of `n` entries per head with random keys, tracking attention for H2O.
fn cache(layers: usize, kv_heads: usize, group: usize, n: usize, d: usize) -> KvCache {
    let shape = KvCacheShape {
        layers,
        kv_heads,
        head_dim: d,
        group_size: group,
    };
    let mut cache = KvCache::new(shape, DType::F32, &Device::Cpu, true).unwrap();
    let positions: Vec<u64> = (0..n as u64).collect();
    for layer in 0..layers {
        let k = Tensor::rand(-1f32, 1f32, (kv_heads, n, d), &Device::Cpu).unwrap();
        cache.append(layer, &k, &k, &positions).unwrap();
        for h in 0..kv_heads {
            let received: Vec<f32> = uniform(n).iter().map(|x| x.abs()).collect();
            let received = Tensor::new(received, &Device::Cpu).unwrap();
            cache.add_attention(layer, h, &received).unwrap();
        }
    }
    cache
}

fn stats(rope: &RopeSpec, layers: usize, heads: usize) -> QueryBandStats {
    let n = layers * heads * rope.bands();
    let (re, im) = (uniform(n), uniform(n));
    let abs = re
        .iter()
        .zip(&im)
        .zip(uniform(n))
        .map(|((a, b), e)| a.hypot(*b) + 0.25 * e.abs())
        .collect();
    QueryBandStats::new(QueryStatsMeta::for_rope(rope, layers, heads), re, im, abs).unwrap()
}

fn ctx(n: usize, budget: usize) -> KvStepContext {
    KvStepContext {
        phase: KvPhase::Decode,
        position: n as u64,
        prompt_len: 0,
        budget,
        seed: 0,
    }
}

fn rooflines(c: &mut Criterion) {
    let mut group = c.benchmark_group("roofline");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let m = 1024;
    let a = Tensor::rand(-1f32, 1f32, (m, m), &Device::Cpu).unwrap();
    group.throughput(Throughput::Elements((2 * m * m * m) as u64));
    timed(&mut group, "matmul_f32_1024", || {
        std::hint::black_box(a.matmul(&a).unwrap());
    });
    let len = 1 << 24;
    let src = vec![1f32; len];
    let mut dst = vec![0f32; len];
    group.throughput(Throughput::Bytes((8 * len) as u64));
    timed(&mut group, "copy_64MiB", || {
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
    });
    group.finish();
}

fn policies(c: &mut Criterion) {
    let mut group = c.benchmark_group("score_select_layer");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    for d in [64, 128] {
        let rope = RopeSpec::new(d, 10000.0, RopePairing::Half, RopeScaling::None);
        let tri = TriAttention::default().with_stats(stats(&rope, 1, KV_HEADS * GROUP));
        let queries = Tensor::rand(-1f32, 1f32, (KV_HEADS * GROUP, 32, d), &Device::Cpu).unwrap();
        for n in [1 << 10, 1 << 13, 1 << 15] {
            let cache = cache(1, KV_HEADS, GROUP, n, d);
            let view = cache.layer_view(0).unwrap();
            let budget = n / 4;
            let step = ctx(n, budget);
            group.throughput(Throughput::Elements((n * KV_HEADS) as u64));
            let runs: [(&str, &dyn KvEvictionPolicy, KvSideInfo<'_>); 4] = [
                (
                    "TriAttention",
                    &tri,
                    KvSideInfo {
                        window_queries: None,
                        rope: Some(&rope),
                        ..KvSideInfo::default()
                    },
                ),
                (
                    "SnapKv",
                    &SnapKv::default(),
                    KvSideInfo {
                        window_queries: Some(&queries),
                        rope: None,
                        ..KvSideInfo::default()
                    },
                ),
                ("H2o", &H2o { recent_window: 32 }, KvSideInfo::default()),
                ("KNorm", &KNorm::default(), KvSideInfo::default()),
            ];
            for (name, policy, side) in runs {
                timed(&mut group, &format!("{name}/d{d}/n{n}"), || {
                    std::hint::black_box(policy.select(&view, &side, &step).unwrap());
                });
            }
        }
    }
    group.finish();
}

/// The fused ops' CPU paths alone, for one layer (8 KV heads) at n = 32K, d = 128.
const OPS_N: usize = 1 << 15;
const SNAP_WINDOW: usize = 32;

fn fused_ops(c: &mut Criterion) {
    let mut group = c.benchmark_group("fused_ops");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    let (d, n) = (128, OPS_N);
    group.throughput(Throughput::Elements((n * KV_HEADS) as u64));
    let rope = RopeSpec::new(d, 10000.0, RopePairing::Half, RopeScaling::None);
    let stats = stats(&rope, 1, KV_HEADS * GROUP);
    let cache = cache(1, KV_HEADS, GROUP, n, d);
    let view = cache.layer_view(0).unwrap();
    let table = OffsetTable::new(&rope, n as u64, 1 << 16);
    let centers: Vec<Vec<_>> = (0..KV_HEADS)
        .map(|g| {
            (0..GROUP)
                .map(|i| stats.head(0, g * GROUP + i).unwrap())
                .collect()
        })
        .collect();
    for (label, aggregation) in [
        ("mean", OffsetAggregation::Mean),
        ("max", OffsetAggregation::Max),
    ] {
        let options = ScoreOptions {
            max_offset: 1 << 16,
            aggregation,
            disable_mlr: false,
            disable_trig: false,
        };
        timed(&mut group, &format!("tri_key_scores_{label}"), || {
            for (head, c) in view.heads.iter().zip(&centers) {
                let inputs = KeyScoreInputs {
                    centers: c,
                    rope: &rope,
                    table: &table,
                    options: &options,
                };
                std::hint::black_box(key_scores(head.keys, &inputs).unwrap());
            }
        });
    }
    // The vote over precomputed window logits of each head.
    let logits = Tensor::rand(-4f32, 4f32, (GROUP * SNAP_WINDOW, n), &Device::Cpu).unwrap();
    let vote = VotePool {
        group: GROUP,
        visible: (0..SNAP_WINDOW).map(|i| n - SNAP_WINDOW + i + 1).collect(),
        prefix: n - SNAP_WINDOW,
        kernel: 5,
        pooling: Pooling::Avg,
        reduce: GqaAggregation::Mean,
    };
    timed(&mut group, "snap_vote_pool", || {
        for _ in 0..KV_HEADS {
            std::hint::black_box(vote.apply(&logits).unwrap());
        }
    });
    let scores = Tensor::randn(0f32, 1f32, (KV_HEADS, n), &Device::Cpu).unwrap();
    let rows: Vec<Vec<f32>> = scores.to_vec2().unwrap();
    timed(&mut group, "top_k_op", || {
        std::hint::black_box(keep_top_k_rows(&scores, 4, 128, n / 4).unwrap());
    });
    timed(&mut group, "top_k_host", || {
        for row in &rows {
            std::hint::black_box(keep_top_k(row, 4, 128, n / 4));
        }
    });
    group.finish();
}

fn compaction(c: &mut Criterion) {
    let mut group = c.benchmark_group("compact");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    for n in [1 << 13, 1 << 15] {
        let d = 128;
        let full = cache(1, KV_HEADS, GROUP, n, d);
        // Every fourth entry: a budget of n/4.
        let plan = KeepPlan {
            per_head: vec![(0..n as u32).step_by(4).collect(); KV_HEADS],
        };
        group.throughput(Throughput::Elements((n * KV_HEADS) as u64));
        group.bench_function(format!("8heads/d{d}/n{n}"), |b| {
            b.iter_batched(
                || {
                    let mut copy = cache(1, KV_HEADS, GROUP, 0, d);
                    let positions: Vec<u64> = (0..n as u64).collect();
                    let k = Tensor::stack(
                        &(0..KV_HEADS)
                            .map(|h| full.keys(0, h).unwrap().clone())
                            .collect::<Vec<_>>(),
                        0,
                    )
                    .unwrap();
                    copy.append(0, &k, &k, &positions).unwrap();
                    copy
                },
                |mut cache| {
                    let start = Instant::now();
                    cache.compact(0, &plan).unwrap();
                    TIMES
                        .lock()
                        .unwrap()
                        .entry(format!("compact/n{n}"))
                        .or_default()
                        .push(start.elapsed().as_secs_f64());
                    cache
                },
                criterion::BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

/// SmolLM2-135M: 30 layers, 3 KV heads of 64, 9 query heads (GQA 3), RoPE base 100000.
fn smollm(c: &mut Criterion) {
    let mut group = c.benchmark_group("smollm2_135m");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    let (layers, kv_heads, group_size, d, n) = (30, 3, 3, 64, 1 << 13);
    let rope = RopeSpec::new(d, 100000.0, RopePairing::Half, RopeScaling::None);
    let tri = TriAttention::default().with_stats(stats(&rope, layers, kv_heads * group_size));
    let cache = cache(layers, kv_heads, group_size, n, d);
    let views: Vec<_> = (0..layers).map(|l| cache.layer_view(l).unwrap()).collect();
    let sides = vec![
        KvSideInfo {
            window_queries: None,
            rope: Some(&rope),
            ..KvSideInfo::default()
        };
        layers
    ];
    let ctxs = vec![ctx(n, 2048); layers];
    group.throughput(Throughput::Elements((n * kv_heads * layers) as u64));
    timed(&mut group, "tri_attention_all_layers_n8192", || {
        std::hint::black_box(tri.select_layers(&views, &sides, &ctxs).unwrap());
    });
    group.finish();
}

fn report() {
    let matmul = 2.0 * 1024f64.powi(3) / median("matmul_f32_1024");
    let bandwidth = 8.0 * (1u64 << 24) as f64 / median("copy_64MiB");
    println!("\n## Rooflines (this run)\nf32 matmul 1024³: {:.1} GFLOP/s; copy: {:.2} GB/s (read + write)\n", matmul / 1e9, bandwidth / 1e9);
    println!("| policy | d | n | ms / layer | Mkeys/s | TriAttention: % of FMA roofline (F·17 FMAs/key/query head) | % of bandwidth (keys read once) |");
    println!("|---|---|---|---|---|---|---|");
    for d in [64usize, 128] {
        for n in [1usize << 10, 1 << 13, 1 << 15] {
            for name in ["TriAttention", "SnapKv", "H2o", "KNorm"] {
                let t = median(&format!("{name}/d{d}/n{n}"));
                let keys = (n * KV_HEADS) as f64;
                let extra = if name == "TriAttention" {
                    // F·17 FMAs = 2·F·17 flops per key and query head; keys f32 read once.
                    let flops = keys * GROUP as f64 * (d as f64 / 2.0) * OFFSETS * 2.0;
                    let bytes = keys * d as f64 * 4.0;
                    format!(
                        "{:.1}% | {:.1}%",
                        100.0 * flops / t / matmul,
                        100.0 * bytes / t / bandwidth
                    )
                } else {
                    "| ".into()
                };
                println!(
                    "| {name} | {d} | {n} | {:.3} | {:.1} | {extra} |",
                    t * 1e3,
                    keys / t / 1e6
                );
            }
        }
    }
    let (d, n) = (128.0, OPS_N as f64);
    let keys = n * KV_HEADS as f64;
    println!("\n## Fused ops, CPU paths: one layer, 8 KV heads × d128, GQA 4, n = {OPS_N}\n");
    println!("| op | ms / layer | Mkeys/s | % of FMA roofline | % of bandwidth |");
    println!("|---|---|---|---|---|");
    for (label, forms) in [("mean", 1.0), ("max", OFFSETS)] {
        let t = median(&format!("tri_key_scores_{label}"));
        // Per key and query head: 2 FMAs per band and form (Re, Im) plus 1 for the norm term.
        let flops = keys * GROUP as f64 * (d / 2.0) * (2.0 * forms + 1.0) * 2.0;
        let bytes = keys * d * 4.0 + keys * GROUP as f64 * 4.0;
        println!(
            "| TriAttention key scores ({label}) | {:.3} | {:.1} | {:.1}% | {:.1}% |",
            t * 1e3,
            keys / t / 1e6,
            100.0 * flops / t / matmul,
            100.0 * bytes / t / bandwidth
        );
    }
    let t = median("snap_vote_pool");
    let bytes = keys * (GROUP * SNAP_WINDOW) as f64 * 4.0;
    println!(
        "| SnapKV vote + pooling (window {SNAP_WINDOW}, logits given) | {:.3} | {:.1} | | {:.1}% |",
        t * 1e3,
        keys / t / 1e6,
        100.0 * bytes / t / bandwidth
    );
    let (op, host) = (median("top_k_op"), median("top_k_host"));
    println!(
        "| top-k op (budget n/4) | {:.3} | {:.1} | | {:.1}% |",
        op * 1e3,
        keys / op / 1e6,
        100.0 * keys * 4.0 / op / bandwidth
    );
    println!(
        "| keep_top_k on the host, same scores | {:.3} | {:.1} | | {:.1}% |\n\ntop-k op / host keep_top_k time: {:.2}",
        host * 1e3,
        keys / host / 1e6,
        100.0 * keys * 4.0 / host / bandwidth,
        op / host
    );
    for n in [1usize << 13, 1 << 15] {
        let t = median(&format!("compact/n{n}"));
        let bytes = (n * KV_HEADS * 128 * 4 * 2) as f64 / 4.0;
        println!(
            "\ncompaction 8 heads × d128 × n{n} → n/4: {:.3} ms ({:.1}% of copy bandwidth for the kept K+V)",
            t * 1e3,
            100.0 * 2.0 * bytes / t / bandwidth
        );
    }
    // One decoding step of SmolLM2-135M at context 8192, batch 1.
    let (layers, hidden, heads, kv, hd, mlp, vocab, ctx) =
        (30.0, 576.0, 9.0, 3.0, 64.0, 1536.0, 49152.0, 8192.0);
    let weights = layers
        * (2.0 * hidden * heads * hd + 2.0 * hidden * kv * hd + 3.0 * hidden * mlp)
        + hidden * vocab;
    let attention = layers * heads * ctx * hd * 4.0;
    let flops = 2.0 * weights + attention;
    let step_flops = flops / matmul;
    let step_bytes = (4.0 * weights + layers * kv * ctx * hd * 2.0 * 4.0) / bandwidth;
    let tri = median("tri_attention_all_layers_n8192");
    println!(
        "\nSmolLM2-135M decode step at n = 8192: {:.0} MFLOP ({:.1} M weight params) → {:.2} ms at the measured matmul \
         rate; f32 weights + KV read once → {:.2} ms at the measured bandwidth.",
        flops / 1e6,
        weights / 1e6,
        step_flops * 1e3,
        step_bytes * 1e3
    );
    println!(
        "TriAttention scoring + selection over all 30 layers (3 KV heads, GQA 3) at n = 8192: {:.2} ms = {:.1}% of the \
         FLOP-rate step, {:.1}% of the bandwidth-bound step; it runs once per 128 generated tokens (slack), so \
         amortised {:.3}% / {:.3}% per step.",
        tri * 1e3,
        100.0 * tri / step_flops,
        100.0 * tri / step_bytes,
        100.0 * tri / step_flops / 128.0,
        100.0 * tri / step_bytes / 128.0
    );
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    rooflines(&mut c);
    policies(&mut c);
    fused_ops(&mut c);
    compaction(&mut c);
    smollm(&mut c);
    c.final_summary();
    report();
}
