//! One training step of the paper's Shakespeare GPT (vocab 65, d 256, 3 blocks, 4 heads, MLP 1024) at
//! batch 64 × 256 tokens on the CPU: Muon on every matrix with the spectral soft cap, the embedding with
//! Muon's column dualize and a column cap, exactly as `experiments/shakespeare_softcap.ron` trains.
//!
//! Measured in the same run: the full step, its forward+backward alone, the constraints alone, and a
//! roofline (one plain matmul on spectra's own product, the step's matmul FLOPs at that rate). Printed
//! afterwards: tokens/s, the constraints' and the optimizer's shares of the step (the constraints'
//! target ≤ 10%), and the step's time against the roofline.
//! `SPECTRA_BENCH_BATCH` changes the batch (default 64).

use std::cell::RefCell;
use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use rand::{Rng, SeedableRng};
use spectra::models::{GptShape, LipschitzGpt, Model};
use spectra::train::groups::{constrain, update};
use spectra_core::{OptimizerStep, SpectraRng};
use spectra_kernels::sgemm::{matmul, Operand};

mod shakespeare_gpt;

use shakespeare_gpt::{groups, shape, SEQ};

/// Matmul FLOPs of one step: forward 2·tokens·(matrix params) plus attention's two T×T products per
/// head, backward twice the forward.
fn step_flops(s: &GptShape, batch: usize) -> f64 {
    let tokens = (batch * SEQ) as f64;
    let d = s.d_model as f64;
    let per_block = 4.0 * d * d + 2.0 * d * d * s.mlp_ratio as f64;
    let matrices = s.blocks as f64 * per_block + d * s.vocab as f64;
    let attention = s.blocks as f64 * 2.0 * 2.0 * batch as f64 * (SEQ * SEQ) as f64 * d;
    3.0 * (2.0 * tokens * matrices + attention)
}

/// Total seconds and iterations over all of criterion's samples of one measurement.
#[derive(Default)]
struct Mean {
    seconds: f64,
    iterations: u64,
}

impl Mean {
    fn add(&mut self, elapsed: Duration, iterations: u64) {
        self.seconds += elapsed.as_secs_f64();
        self.iterations += iterations;
    }

    fn get(&self) -> f64 {
        self.seconds / self.iterations.max(1) as f64
    }
}

#[derive(Default)]
struct Timings {
    step: Mean,
    forward_backward: Mean,
    constraints: Mean,
    matmul: Mean,
}

fn bench(c: &mut Criterion) {
    // As the `spectra` command trains.
    spectra::allocator::keep_freed_memory();
    let batch: usize = std::env::var("SPECTRA_BENCH_BATCH")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(64);
    let device = Device::Cpu;
    let s = shape();
    let model = LipschitzGpt::new(s.clone(), &device, &mut SpectraRng::seed_from_u64(0)).unwrap();
    let mut groups = groups(&model, Path::new("benches/train_step.rs"));
    let mut rng = SpectraRng::seed_from_u64(1);
    let ids: Vec<u32> = (0..batch * (SEQ + 1))
        .map(|_| rng.random_range(0..65))
        .collect();
    let all = Tensor::from_vec(ids, (batch, SEQ + 1), &device).unwrap();
    let inputs = all.narrow(1, 0, SEQ).unwrap().contiguous().unwrap();
    let targets = all.narrow(1, 1, SEQ).unwrap().flatten_all().unwrap();
    let timings = RefCell::new(Timings::default());
    let mut step = 0u64;

    let mut g = c.benchmark_group(format!("train_step/gpt-shakespeare/batch{batch}x{SEQ}"));
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(1));

    let (rows, depth, cols) = (batch * SEQ, s.d_model, s.d_model * s.mlp_ratio);
    let a = vec![1f32; rows * depth];
    let b = vec![1f32; depth * cols];
    g.bench_function("roofline: matmul [B·T, 256]×[256, 1024]", |bench| {
        bench.iter_custom(|iters| {
            let t0 = Instant::now();
            for _ in 0..iters {
                // SAFETY: a is rows × depth and b depth × cols, both row-major.
                drop(unsafe {
                    matmul(
                        (rows, cols, depth),
                        Operand::of(&a, depth, false),
                        Operand::of(&b, cols, false),
                    )
                });
            }
            let e = t0.elapsed();
            timings.borrow_mut().matmul.add(e, iters);
            e
        })
    });
    g.bench_function("forward+backward", |bench| {
        bench.iter_custom(|iters| {
            let t0 = Instant::now();
            for _ in 0..iters {
                let logits = model.logits(&inputs).unwrap();
                let loss = candle_nn::loss::cross_entropy(&logits, &targets).unwrap();
                drop(loss.backward().unwrap());
            }
            let e = t0.elapsed();
            timings.borrow_mut().forward_backward.add(e, iters);
            e
        })
    });
    g.bench_function("full step (Muon + SpectralSoftCap)", |bench| {
        bench.iter_custom(|iters| {
            let t0 = Instant::now();
            for _ in 0..iters {
                let logits = model.logits(&inputs).unwrap();
                let loss = candle_nn::loss::cross_entropy(&logits, &targets).unwrap();
                let grads = loss.backward().unwrap();
                let at = OptimizerStep {
                    step,
                    lr_factor: 1.0,
                };
                update(&mut groups, &grads, &at, &mut rng).unwrap();
                step += 1;
            }
            let e = t0.elapsed();
            timings.borrow_mut().step.add(e, iters);
            e
        })
    });
    g.bench_function("constraints alone", |bench| {
        bench.iter_custom(|iters| {
            let t0 = Instant::now();
            for _ in 0..iters {
                constrain(
                    &mut groups,
                    &OptimizerStep {
                        step,
                        lr_factor: 1.0,
                    },
                    &mut rng,
                )
                .unwrap();
            }
            let e = t0.elapsed();
            timings.borrow_mut().constraints.add(e, iters);
            e
        })
    });
    g.finish();

    let all = timings.borrow();
    let t = MeanSeconds {
        step: all.step.get(),
        forward_backward: all.forward_backward.get(),
        constraints: all.constraints.get(),
        matmul: all.matmul.get(),
    };
    let flops = step_flops(&s, batch);
    let matmul_rate =
        2.0 * (batch * SEQ) as f64 * (s.d_model * s.d_model * s.mlp_ratio) as f64 / t.matmul;
    let roofline = flops / matmul_rate;
    println!(
        "\nSummary (batch {batch} × {SEQ}, {} threads):",
        candle_core::utils::get_num_threads()
    );
    println!("| measure | value |\n|---|---:|");
    println!("| full step | {:.3} s |", t.step);
    println!("| tokens/s | {:.0} |", (batch * SEQ) as f64 / t.step);
    println!(
        "| forward+backward share of the step | {:.1}% |",
        100.0 * t.forward_backward / t.step
    );
    println!(
        "| constraints (SpectralSoftCap + column cap) | {:.4} s = {:.1}% of the step |",
        t.constraints,
        100.0 * t.constraints / t.step
    );
    let optimizer = t.step - t.forward_backward - t.constraints;
    println!(
        "| optimizer (Muon: momentum, Newton–Schulz), the rest of the step | {optimizer:.4} s = {:.1}% of the step |",
        100.0 * optimizer / t.step
    );
    println!(
        "| plain matmul rate (spectra's product, as the step's) | {:.1} GFLOP/s |",
        matmul_rate / 1e9
    );
    println!("| step matmul FLOPs at that rate (roofline) | {roofline:.3} s |");
    println!("| step / roofline | {:.2}× |", t.step / roofline);
}

/// Mean seconds per iteration.
struct MeanSeconds {
    step: f64,
    forward_backward: f64,
    constraints: f64,
    matmul: f64,
}

criterion_group!(benches, bench);
criterion_main!(benches);
