//! Training work on the GPU (feature `cuda`), each measured against a ceiling taken in the same run:
//! - Newton–Schulz (JaxNs6, f32 and bf16 products), SpectralSoftCap and SpectralHardCap at 4096×4096
//!   and 8192×2048, in nominal FLOP/s as a fraction of a plain matmul W·B (B n×n) of the same shape
//!   and dtype;
//! - the fused AdamW update and Muon momentum (and the whole AdamW optimizer step) at 4096×4096 f32,
//!   in GB/s of minimal traffic as a fraction of a plain device copy of the weight;
//! - one training step of the paper's Shakespeare GPT at batch 512 × 256 tokens (Muon + SpectralSoftCap
//!   as in `benches/train_step.rs`), in tokens/s.
//!
//! Every measurement is also printed as one Markdown table row (`| gpu_training | ... |`) for scripts
//! to collect. Short criterion runs keep the whole bench to a couple of minutes on an H200.

use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use criterion::{Criterion, SamplingMode};
use rand::{Rng, SeedableRng};
use spectra::core::linalg::{orthogonalize_normalized_by, OrthogonalizeDtype, Orthogonalizer};
use spectra::core::{
    ConstraintContext, ConstraintState, DeviceSpec, Optimizer, OptimizerStep, Param, ParamRole,
    SpectraRng, WeightConstraint,
};
use spectra::models::{LipschitzGpt, Model};
use spectra::plugins::optimizers::fused::adamw::{adamw_update, AdamWScalars};
use spectra::plugins::optimizers::fused::muon_momentum::muon_momentum;
use spectra::plugins::{AdamW, SpectralHardCap, SpectralSoftCap};
use spectra::train::groups::update;

mod shakespeare_gpt;

use shakespeare_gpt::{groups, shape, SEQ};

/// Matrix shapes (fan_out, fan_in), tall or square so that the Gram side is fan_in.
const SHAPES: [(usize, usize); 2] = [(4096, 4096), (8192, 2048)];
/// The elementwise benchmarks' matrix.
const ELEMENTWISE: (usize, usize) = (4096, 4096);
const BATCH: usize = 512;

/// Times routines on one device; a routine's time includes waiting for the GPU to finish its work.
struct Timer {
    criterion: Criterion,
    device: Device,
}

impl Timer {
    /// Median seconds per call of `routine` over criterion's samples.
    fn measure(&mut self, group: &str, id: &str, mut routine: impl FnMut()) -> f64 {
        let device = self.device.clone();
        // One call outside the measurement: NVRTC compiles, cuBLAS picks its kernels, buffers are
        // allocated.
        routine();
        device.synchronize().unwrap();
        let mut samples = Vec::new();
        let mut g = self.criterion.benchmark_group(group);
        g.sampling_mode(SamplingMode::Flat);
        g.bench_function(id, |b| {
            b.iter_custom(|iters| {
                device.synchronize().unwrap();
                let start = Instant::now();
                for _ in 0..iters {
                    routine();
                }
                device.synchronize().unwrap();
                let elapsed = start.elapsed();
                samples.push(elapsed.as_secs_f64() / iters as f64);
                elapsed
            })
        });
        g.finish();
        samples.sort_by(f64::total_cmp);
        samples[samples.len() / 2]
    }
}

/// One table row: `| gpu_training | shape | operation | time | speed | ceiling | fraction |`.
fn row(shape: &str, operation: &str, seconds: f64, speed: &str, ceiling: &str, fraction: &str) {
    println!(
        "| gpu_training | {shape} | {operation} | {:.3} ms | {speed} | {ceiling} | {fraction} |",
        seconds * 1e3
    );
}

fn flops_row(shape: &str, operation: &str, seconds: f64, flops: f64, matmul: (f64, f64)) {
    let (matmul_flops, matmul_seconds) = matmul;
    let (rate, ceiling) = (flops / seconds, matmul_flops / matmul_seconds);
    row(
        shape,
        operation,
        seconds,
        &format!("{:.1} TFLOP/s", rate / 1e12),
        &format!("matmul {:.1} TFLOP/s", ceiling / 1e12),
        &format!("{:.0}%", 100.0 * rate / ceiling),
    );
}

fn bytes_row(shape: &str, operation: &str, seconds: f64, bytes: f64, copy: (f64, f64)) {
    let (copy_bytes, copy_seconds) = copy;
    let (rate, ceiling) = (bytes / seconds, copy_bytes / copy_seconds);
    row(
        shape,
        operation,
        seconds,
        &format!("{:.0} GB/s", rate / 1e9),
        &format!("copy {:.0} GB/s", ceiling / 1e9),
        &format!("{:.0}%", 100.0 * rate / ceiling),
    );
}

/// Applies `constraint` once to `weight` as after a Muon step of lr 0.01 (target norm 1).
fn constrain_once(constraint: &dyn WeightConstraint, weight: &Var, rng: &mut SpectraRng) {
    let mut state = ConstraintState::new();
    let mut ctx = ConstraintContext {
        step: 0,
        lr: 0.01,
        target_norm: 1.0,
        update_norm_bound: Some(0.01),
        role: ParamRole::Hidden,
        name: "bench.weight",
        rng,
        state: &mut state,
    };
    constraint.apply(weight, &mut ctx).unwrap();
}

fn matrix_routines(timer: &mut Timer, (m, n): (usize, usize)) {
    let device = timer.device.clone();
    let shape = format!("{m}×{n}");
    let group = format!("gpu_training/{m}x{n}");
    let (mf, nf) = (m as f64, n as f64);
    let matmul_flops = 2.0 * mf * nf * nf;
    let quintic_step = 4.0 * mf * nf * nf + 2.0 * nf * nf * nf;
    let mut rng = SpectraRng::seed_from_u64(0);

    let mut matmul = |dtype: DType| {
        let w = Tensor::randn(0f32, 1.0, (m, n), &device)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let b = Tensor::randn(0f32, 1.0, (n, n), &device)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let id = format!("plain matmul W·B {dtype:?}");
        let t = timer.measure(&group, &id, || drop(w.matmul(&b).unwrap()));
        flops_row(&shape, &id, t, matmul_flops, (matmul_flops, t));
        (matmul_flops, t)
    };
    let matmul_f32 = matmul(DType::F32);
    let matmul_bf16 = matmul(DType::BF16);

    // A momentum-like direction: Gaussian, and its squared norm as the fused momentum hands it over.
    let direction = Tensor::randn(0f32, 1.0, (m, n), &device).unwrap();
    let sum_sq = direction
        .to_dtype(DType::F64)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap();
    for (dtype, ceiling) in [
        (OrthogonalizeDtype::F32, matmul_f32),
        (OrthogonalizeDtype::Bf16, matmul_bf16),
    ] {
        let id = format!("Newton–Schulz JaxNs6, {dtype:?} products");
        let t = timer.measure(&group, &id, || {
            drop(
                orthogonalize_normalized_by(
                    &direction,
                    &sum_sq,
                    Orthogonalizer::JaxNs6,
                    dtype,
                    1e-12,
                )
                .unwrap(),
            )
        });
        flops_row(&shape, &id, t, 6.0 * quintic_step, ceiling);
    }

    // Weights with σ_max ≈ 1.5 w_max (in RMS→RMS units), so that both caps act.
    let std = 1.5 * (mf / nf).sqrt() / (mf.sqrt() + nf.sqrt());
    let caps: [(&str, Box<dyn WeightConstraint>, f64); 2] = [
        (
            "SpectralSoftCap (2 cubic steps)",
            Box::new(SpectralSoftCap::default()),
            2.0 * 4.0 * mf * nf * nf,
        ),
        (
            "SpectralHardCap (4 quintic steps)",
            Box::new(SpectralHardCap::default()),
            4.0 * quintic_step,
        ),
    ];
    for (id, constraint, flops) in caps {
        let w0 = Tensor::randn(0f32, std as f32, (m, n), &device).unwrap();
        let weight = Var::from_tensor(&w0).unwrap();
        let t = timer.measure(&group, id, || {
            constrain_once(constraint.as_ref(), &weight, &mut rng)
        });
        flops_row(&shape, id, t, flops, matmul_f32);
    }
}

fn elementwise_routines(timer: &mut Timer) {
    let device = timer.device.clone();
    let (m, n) = ELEMENTWISE;
    let shape = format!("{m}×{n}");
    let group = format!("gpu_training/{m}x{n}");
    let bytes = 4.0 * (m * n) as f64;
    let gaussian = |std: f32| Tensor::randn(0f32, std, (m, n), &device).unwrap();
    let (w, g, mom, v) = (
        gaussian(0.02),
        gaussian(1.0),
        gaussian(0.1),
        gaussian(0.1).sqr().unwrap(),
    );

    let copy = timer.measure(&group, "plain device copy of W", || drop(w.copy().unwrap()));
    let copy = (2.0 * bytes, copy);
    bytes_row(&shape, "plain device copy of W", copy.1, copy.0, copy);

    let (cm, cv) = AdamWScalars::corrections(0.9, 0.999, 10, true);
    let scalars = AdamWScalars {
        beta1: 0.9,
        beta2: 0.999,
        m_correction: cm,
        v_correction: cv,
        eps: 1e-8,
        lr: 1e-3,
        weight_scale: 1.0 - 1e-5,
    };
    // Reads W, g, m, v; writes W, m, v.
    let id = "fused AdamW update (op)";
    let t = timer.measure(&group, id, || {
        drop(adamw_update(&w, &g, &mom, &v, &scalars).unwrap())
    });
    bytes_row(&shape, id, t, 7.0 * bytes, copy);

    // Reads b, g; writes b' and the Nesterov direction (the Σd² partial sums are negligible).
    let id = "fused Muon momentum, Nesterov (op)";
    let t = timer.measure(&group, id, || {
        drop(muon_momentum(&mom, &g, 0.95, true).unwrap())
    });
    bytes_row(&shape, id, t, 4.0 * bytes, copy);

    // The optimizer as training runs it: the fused update, gradient and result finiteness checks,
    // and the write into the parameter.
    let param = Param::new("w", Var::from_tensor(&w).unwrap(), ParamRole::Hidden);
    let mut grads = GradStore::default();
    grads.insert(param.var.as_tensor(), g.clone());
    let mut adamw = AdamW::new(1e-3);
    let mut step = 0;
    let id = "AdamW optimizer step (fused update + checks + write)";
    let t = timer.measure(&group, id, || {
        let at = OptimizerStep {
            step,
            lr_factor: 1.0,
        };
        adamw
            .step(std::slice::from_ref(&param), &grads, &at)
            .unwrap();
        step += 1;
    });
    bytes_row(&shape, id, t, 7.0 * bytes, copy);
}

/// The paper's Shakespeare GPT (vocab 65, d 256, 3 blocks, 4 heads, MLP 1024), as in
/// `benches/train_step.rs`.
fn training_step(timer: &mut Timer) {
    let device = timer.device.clone();
    let model = LipschitzGpt::new(shape(), &device, &mut SpectraRng::seed_from_u64(0)).unwrap();
    let mut groups = groups(&model, Path::new("benches/gpu_training.rs"));
    let mut rng = SpectraRng::seed_from_u64(1);
    let ids: Vec<u32> = (0..BATCH * (SEQ + 1))
        .map(|_| rng.random_range(0..65))
        .collect();
    let all = Tensor::from_vec(ids, (BATCH, SEQ + 1), &device).unwrap();
    let inputs = all.narrow(1, 0, SEQ).unwrap().contiguous().unwrap();
    let targets = all.narrow(1, 1, SEQ).unwrap().flatten_all().unwrap();
    let mut step = 0;
    let id = format!("Shakespeare GPT training step, batch {BATCH}×{SEQ} (Muon + SpectralSoftCap)");
    let t = timer.measure("gpu_training/train_step", &id, || {
        let logits = model.logits(&inputs).unwrap();
        let loss = candle_nn::loss::cross_entropy(&logits, &targets).unwrap();
        let grads = loss.backward().unwrap();
        let at = OptimizerStep {
            step,
            lr_factor: 1.0,
        };
        update(&mut groups, &grads, &at, &mut rng).unwrap();
        step += 1;
    });
    let tokens = (BATCH * SEQ) as f64;
    row(
        &format!("batch {BATCH}×{SEQ}"),
        &id,
        t,
        &format!("{:.0} tokens/s", tokens / t),
        "–",
        "–",
    );
}

fn main() {
    let device = match DeviceSpec::Cuda(0).resolve() {
        Ok(device) => device,
        Err(e) => {
            eprintln!("gpu_training bench skipped: {e}");
            return;
        }
    };
    let criterion = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_millis(800))
        .without_plots()
        .configure_from_args();
    let mut timer = Timer { criterion, device };
    println!("| bench | shape | operation | time | speed | ceiling (same run) | fraction |");
    println!("|---|---|---|---|---|---|---|");
    for shape in SHAPES {
        matrix_routines(&mut timer, shape);
    }
    elementwise_routines(&mut timer);
    training_step(&mut timer);
    timer.criterion.final_summary();
}
