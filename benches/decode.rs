//! Decoding's matrix-vector products: spectra's block kernels on SmolLM2-135M's shapes (Q4_1 layers,
//! the Q8_0 output head) and Qwen2.5-Coder-0.5B's (Q5_0, Q4_K and Q6_K layers, the Q8_0 head), the f32 product of the same matrices expanded, and the rate at which both
//! cores can read memory, all measured in this run. Decoding one token reads every weight once, so
//! the kernels are judged by the weight bytes they get through per second against that read rate.

use std::time::Instant;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Module, Tensor};
use rayon::prelude::*;
use spectra::kernels::quantized_matmul::QuantizedMatrix;

/// Median seconds of `f` over `rounds` timings of `reps` calls each.
fn median_seconds(rounds: usize, reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..reps {
                f();
            }
            start.elapsed().as_secs_f64() / reps as f64
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[rounds / 2]
}

fn main() {
    // As the `spectra` command runs: on a pool thread, so that products do not wake the pool from outside.
    rayon::scope(|_| run());
}

fn run() {
    // 256 MiB, far beyond L3: the rate every core together reads memory at.
    let big = vec![1u64; 1 << 25];
    let read = median_seconds(7, 3, || {
        let s: u64 = big.par_chunks(1 << 16).map(|c| c.iter().sum::<u64>()).sum();
        std::hint::black_box(s);
    });
    let bandwidth = (big.len() * 8) as f64 / read;
    println!("memory read, both cores: {:.2} GB/s\n", bandwidth / 1e9);
    println!("| matrix | format | weight MB | spectra GB/s | of read rate | f32 expanded GB/s (its bytes) | time vs f32 |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    let shapes = [
        ("layer: gate/up, 1536 × 576", 1536, 576, GgmlDType::Q4_1),
        ("layer: down, 576 × 1536", 576, 1536, GgmlDType::Q4_1),
        ("layer: q/o, 576 × 576", 576, 576, GgmlDType::Q4_1),
        ("head, 49152 × 576", 49152, 576, GgmlDType::Q8_0),
        (
            "Qwen layer: gate/up, 4864 × 896",
            4864,
            896,
            GgmlDType::Q5_0,
        ),
        ("Qwen layer: down, 896 × 4864", 896, 4864, GgmlDType::Q4K),
        ("Qwen layer: down, 896 × 4864", 896, 4864, GgmlDType::Q6K),
        ("Qwen head, 151936 × 896", 151936, 896, GgmlDType::Q8_0),
    ];
    for (name, rows, cols, dtype) in shapes {
        let w = Tensor::randn(0f32, 0.05, (rows, cols), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, dtype).unwrap();
        let m = QuantizedMatrix::from_qtensor(&q).unwrap().unwrap();
        let x = Tensor::randn(0f32, 1.0, (1, cols), &Device::Cpu).unwrap();
        // Copies filling 64 MiB, twice L3, so that every call reads its weights from memory as
        // decoding does.
        let copies: Vec<QuantizedMatrix> = (0..(64 << 20) / m.bytes() + 1)
            .map(|_| QuantizedMatrix::from_qtensor(&q).unwrap().unwrap())
            .collect();
        let ours = median_seconds(7, 1, || {
            for m in &copies {
                std::hint::black_box(m.forward(&x).unwrap());
            }
        }) / copies.len() as f64;
        let dense: Vec<Tensor> = (0..(256 << 20) / (rows * cols * 4) + 1)
            .map(|_| w.copy().unwrap())
            .collect();
        let f32_time = median_seconds(7, 1, || {
            for w in &dense {
                std::hint::black_box(
                    candle_core::quantized::QMatMul::Tensor(w.clone())
                        .forward(&x)
                        .unwrap(),
                );
            }
        }) / dense.len() as f64;
        let mb = m.bytes() as f64;
        println!(
            "| {name} | {dtype:?} | {:.2} ({:.1} µs, {:.2} ns/block) | {:.2} | {:.0}% | {:.2} | {:.2}× faster |",
            mb / 1e6,
            ours * 1e6,
            ours * 1e9 / (rows * cols / 32) as f64,
            mb / ours / 1e9,
            100.0 * mb / ours / bandwidth,
            (rows * cols * 4) as f64 / f32_time / 1e9,
            f32_time / ours
        );
    }
}
