//! KV eviction kernels on a GPU (feature `cuda`): TriAttention scoring, the SnapKV vote and top-k
//! selection for one layer of 8 KV heads × 128 dims (GQA 4) at n = 32K and 128K keys per head, as keys
//! per second and as a fraction of the device's copy bandwidth, measured in the same run (a plain
//! device-to-device copy of 1 GiB, read + write). One Markdown table row per measurement on stdout.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use spectra_core::ops::top_k::keep_top_k_rows;
use spectra_core::rng::derived_rng;
use spectra_core::rope::{RopePairing, RopeScaling, RopeSpec};
use spectra_core::{KvEvictionPolicy, KvPhase, KvSideInfo, KvStepContext};
use spectra_kv::{KvCache, KvCacheShape};
use spectra_policies::tri_attention::key_scores::{key_scores, KeyScoreInputs};
use spectra_policies::tri_attention::query_stats::{QueryBandStats, QueryStatsMeta};
use spectra_policies::tri_attention::{OffsetTable, ScoreOptions};
use spectra_policies::{OffsetAggregation, SnapKv, TriAttention};

const KV_HEADS: usize = 8;
const GROUP: usize = 4;
const HEAD_DIM: usize = 128;
const WINDOW: usize = 32;
/// Timed repetitions stop after this many seconds (after at least 3), so the whole run stays short.
const BUDGET_SECONDS: f64 = 0.4;

/// Median seconds of `f`, synchronising the device around each call.
fn time(device: &Device, mut f: impl FnMut()) -> f64 {
    for _ in 0..2 {
        f();
    }
    device.synchronize().unwrap();
    let started = Instant::now();
    let mut samples = Vec::new();
    while samples.len() < 3
        || (started.elapsed().as_secs_f64() < BUDGET_SECONDS && samples.len() < 50)
    {
        let t = Instant::now();
        f();
        device.synchronize().unwrap();
        samples.push(t.elapsed().as_secs_f64());
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn stats(rope: &RopeSpec) -> QueryBandStats {
    let meta = QueryStatsMeta::for_rope(rope, 1, KV_HEADS * GROUP);
    QueryBandStats::random(meta, 0.25, &mut derived_rng(1, 0)).unwrap()
}

struct Row<'a> {
    what: &'a str,
    n: usize,
    seconds: f64,
    /// Bytes the operation must move at least (read + write).
    bytes: f64,
}

fn print(row: &Row<'_>, bandwidth: f64) {
    let keys = (KV_HEADS * row.n) as f64;
    println!(
        "| {} | {} | {:.3} | {:.2} | {:.1}% |",
        row.what,
        row.n,
        row.seconds * 1e3,
        keys / row.seconds / 1e9,
        100.0 * row.bytes / row.seconds / bandwidth
    );
}

fn main() {
    let gpu = match std::panic::catch_unwind(|| Device::new_cuda(0)) {
        Ok(Ok(device)) => device,
        Ok(Err(e)) => {
            println!("gpu_kv bench skipped: CUDA device 0 is not available: {e}");
            return;
        }
        Err(_) => {
            println!("gpu_kv bench skipped: the NVIDIA driver could not be loaded");
            return;
        }
    };
    let big = Tensor::zeros(1 << 28, DType::F32, &gpu).unwrap();
    let copy = time(&gpu, || {
        std::hint::black_box(big.copy().unwrap());
    });
    let bandwidth = 2.0 * (4u64 << 28) as f64 / copy;
    drop(big);
    println!("\n## KV kernels on the GPU: 8 KV heads × 128 dims, GQA 4, f32 keys\n");
    println!(
        "Copy bandwidth (1 GiB device-to-device, read + write): {:.0} GB/s\n",
        bandwidth / 1e9
    );
    println!("| operation (one layer, all 8 KV heads) | keys per head | ms | G keys/s | % of copy bandwidth |");
    println!("|---|---|---|---|---|");

    let rope = RopeSpec::new(HEAD_DIM, 500000.0, RopePairing::Half, RopeScaling::None);
    let stats = stats(&rope);
    for n in [1usize << 15, 1 << 17] {
        let shape = KvCacheShape {
            layers: 1,
            kv_heads: KV_HEADS,
            head_dim: HEAD_DIM,
            group_size: GROUP,
        };
        let mut cache = KvCache::new(shape, DType::F32, &gpu, false).unwrap();
        let keys = Tensor::randn(0f32, 1f32, (KV_HEADS, n, HEAD_DIM), &gpu).unwrap();
        let positions: Vec<u64> = (0..n as u64).collect();
        cache.append(0, &keys, &keys, &positions).unwrap();
        drop(keys);
        let view = cache.layer_view(0).unwrap();
        let key_bytes = (KV_HEADS * n * HEAD_DIM * 4) as f64;
        let position = n as u64;
        let table = OffsetTable::new(&rope, position, 1 << 16);

        // The fused key score alone: reads the keys once, writes GQA scores per key.
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
            let centers: Vec<Vec<_>> = (0..KV_HEADS)
                .map(|g| {
                    (0..GROUP)
                        .map(|i| stats.head(0, g * GROUP + i).unwrap())
                        .collect()
                })
                .collect();
            let seconds = time(&gpu, || {
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
            let what = format!("TriAttention key scores ({label} over 17 offsets)");
            let bytes = key_bytes + (KV_HEADS * GROUP * n * 4) as f64;
            print(
                &Row {
                    what: &what,
                    n,
                    seconds,
                    bytes,
                },
                bandwidth,
            );
        }

        // The whole policy: scores, z-scores, GQA max, noise upload, top-k, indices to the host.
        let tri = TriAttention::default().with_stats(stats.clone());
        let side = KvSideInfo {
            window_queries: None,
            rope: Some(&rope),
            ..KvSideInfo::default()
        };
        let ctx = KvStepContext {
            phase: KvPhase::Decode,
            position,
            prompt_len: 0,
            budget: n / 4,
            seed: 0,
        };
        let seconds = time(&gpu, || {
            std::hint::black_box(tri.select(&view, &side, &ctx).unwrap());
        });
        print(
            &Row {
                what: "TriAttention select (score + finish + top-k, budget n/4)",
                n,
                seconds,
                bytes: key_bytes,
            },
            bandwidth,
        );

        // SnapKV: window logits (cuBLAS) + the fused vote and pooling + top-k.
        let queries =
            Tensor::randn(0f32, 1f32, (KV_HEADS * GROUP, WINDOW, HEAD_DIM), &gpu).unwrap();
        let snap = SnapKv {
            window: WINDOW,
            ..SnapKv::default()
        };
        let side = KvSideInfo {
            window_queries: Some(&queries),
            rope: None,
            ..KvSideInfo::default()
        };
        let seconds = time(&gpu, || {
            std::hint::black_box(snap.select(&view, &side, &ctx).unwrap());
        });
        // Keys read once by the logits matmul; logits written once and read twice (statistics, votes).
        let logits_bytes = (KV_HEADS * GROUP * WINDOW * n * 4) as f64;
        print(
            &Row {
                what: "SnapKV select (logits + vote/pool + top-k, window 32)",
                n,
                seconds,
                bytes: key_bytes + 3.0 * logits_bytes,
            },
            bandwidth,
        );

        // Top-k alone over all heads' scores.
        let scores = Tensor::randn(0f32, 1f32, (KV_HEADS, n), &gpu).unwrap();
        for budget in [1024, n / 4] {
            let seconds = time(&gpu, || {
                std::hint::black_box(keep_top_k_rows(&scores, 4, 128, budget).unwrap());
            });
            let what = format!("top-k per head (budget {budget})");
            let bytes = (KV_HEADS * (n + budget) * 4) as f64;
            print(
                &Row {
                    what: &what,
                    n,
                    seconds,
                    bytes,
                },
                bandwidth,
            );
        }
    }
}
