//! spectra's CUDA kernels run on the CPU under emulation (HIP-CPU; see emulated_support), each
//! against its CPU path on the inputs the GPU tests use (kernel_cases_support), with the grids the
//! GPU path launches. This checks the kernels' indexing, reductions, warp operations and barriers
//! without a GPU, not their speed or the GPU's own arithmetic (`expf`, `sincos` here are the C
//! library's). Without HIP-CPU in data/hip-cpu (scripts/get-hip-cpu.sh) each test says so and
//! passes.

mod emulated_support;
mod kernel_cases_support;

use candle_core::{DType, Device, Tensor, WithDType};
use spectra::core::ops::grid::elementwise;
use spectra::core::ops::top_k::{keep_top_k_grid, keep_top_k_rows};
use spectra::core::ops::Float;
use spectra::plugins::optimizers::fused::adamw::adamw_update;
use spectra::plugins::optimizers::fused::muon_momentum::muon_momentum;
use spectra::policies::tri_attention::key_scores::key_scores;
use spectra::policies::tri_attention::normalize::{tie_noise, Finish};

use emulated_support::{buffer, value, zeros, Element, Module};
use kernel_cases_support::*;

fn values<T: WithDType>(t: &Tensor) -> Vec<T> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// f32 or f64 values as bits, so that equality is equality to the last bit (and -0 ≠ +0).
fn bits<T: WithDType>(values: &[T]) -> Vec<u64> {
    values.iter().map(|v| v.to_f64().to_bits()).collect()
}

/// A tensor's values as bits (f32 widened exactly).
fn tensor_bits(t: &Tensor) -> Vec<u64> {
    bits(&values::<f64>(&t.to_dtype(DType::F64).unwrap()))
}

/// The largest |a − b| over the scale, where both are finite.
fn max_error(a: &[f32], b: &[f32], scale: f32) -> f32 {
    a.iter()
        .zip(b)
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .map(|(x, y)| (x - y).abs() / scale)
        .fold(0.0, f32::max)
}

fn adamw_on<T: Float + Element>(module: &Module, operands: [&Tensor; 4]) -> [Vec<T>; 3] {
    let n = operands[0].elem_count();
    let mut args = vec![value(n as u64)];
    args.extend(operands.map(|t| buffer(&values::<T>(t))));
    args.extend([zeros::<T>(n), zeros::<T>(n), zeros::<T>(n)]);
    args.extend(adamw_scalars().kernel_scalars::<T>().map(value));
    let kernel = if T::DTYPE == DType::F32 {
        "adamw_f32"
    } else {
        "adamw_f64"
    };
    let out = module.launch(kernel, elementwise(n), &args);
    [out.buffer(5), out.buffer(6), out.buffer(7)]
}

/// Same correctly rounded operations in the same order: equal to the last bit.
#[test]
fn adamw_kernel_matches_the_cpu_path_bit_for_bit() {
    let Some(module) = Module::compile("adamw.cu", &["adamw_f32", "adamw_f64"]) else {
        return;
    };
    let mut checked = 0;
    for dtype in [DType::F32, DType::F64] {
        for dims in ADAMW_DIMS {
            let w = gaussian(&dims, 0.3, 1, dtype);
            let g = gaussian(&dims, 1.0, 2, dtype);
            let m = gaussian(&dims, 0.1, 3, dtype);
            let v = gaussian(&dims, 0.1, 4, dtype).sqr().unwrap();
            let cpu = adamw_update(&w, &g, &m, &v, &adamw_scalars()).unwrap();
            let expected = [&cpu.weight, &cpu.m, &cpu.v].map(tensor_bits);
            let operands = [&w, &g, &m, &v];
            let emulated = if dtype == DType::F32 {
                adamw_on::<f32>(&module, operands).map(|v| bits(&v))
            } else {
                adamw_on::<f64>(&module, operands).map(|v| bits(&v))
            };
            for (what, (e, c)) in ["weight", "m", "v"]
                .iter()
                .zip(emulated.iter().zip(&expected))
            {
                assert_eq!(e, c, "{what} {dtype:?} {dims:?}");
                checked += e.len();
            }
        }
    }
    eprintln!("emulated adamw: {checked} values bit-identical to the CPU path");
}

/// (buffer, direction, Σd²) of the kernel.
fn muon_on<T: Float + Element>(
    module: &Module,
    b: &Tensor,
    g: &Tensor,
    nesterov: bool,
) -> (Vec<T>, Vec<T>, f64) {
    let n = b.elem_count();
    let grid = elementwise(n);
    let momentum = 0.95;
    let args = [
        value(n as u64),
        buffer(&values::<T>(b)),
        buffer(&values::<T>(g)),
        zeros::<T>(n),
        zeros::<T>(if nesterov { n } else { 1 }),
        zeros::<f64>(grid.blocks as usize),
        value(T::from_f64(momentum)),
        value(T::from_f64(1.0 - momentum)),
        value(i32::from(nesterov)),
    ];
    let kernel = if T::DTYPE == DType::F32 {
        "muon_momentum_f32"
    } else {
        "muon_momentum_f64"
    };
    let out = module.launch(kernel, grid, &args);
    let buffer_out: Vec<T> = out.buffer(3);
    let direction = if nesterov {
        out.buffer(4)
    } else {
        buffer_out.clone()
    };
    let sum = out.buffer::<f64>(5).iter().sum();
    (buffer_out, direction, sum)
}

/// The buffer and direction to the last bit; the block sums of squares (a 32-thread warp shuffle
/// tree) against the CPU's 8-lane sum, within the reordering bound.
#[test]
fn muon_momentum_kernel_matches_the_cpu_path() {
    let kernels = ["muon_momentum_f32", "muon_momentum_f64"];
    let Some(module) = Module::compile("muon_momentum.cu", &kernels) else {
        return;
    };
    let mut worst = 0f64;
    for dtype in [DType::F32, DType::F64] {
        for nesterov in [false, true] {
            for dims in MUON_DIMS {
                let b = gaussian(&dims, 0.5, 5, dtype);
                let g = gaussian(&dims, 1.0, 6, dtype);
                let cpu = muon_momentum(&b, &g, 0.95, nesterov).unwrap();
                let (buffer_out, direction, sum) = if dtype == DType::F32 {
                    let (b, d, s) = muon_on::<f32>(&module, &b, &g, nesterov);
                    (bits(&b), bits(&d), s)
                } else {
                    let (b, d, s) = muon_on::<f64>(&module, &b, &g, nesterov);
                    (bits(&b), bits(&d), s)
                };
                let what = format!("{dtype:?} nesterov {nesterov} {dims:?}");
                assert_eq!(buffer_out, tensor_bits(&cpu.buffer), "{what}");
                assert_eq!(direction, tensor_bits(&cpu.direction), "{what}");
                let c = cpu.direction_sum_sq.to_scalar::<f64>().unwrap();
                let error = (sum - c).abs() / c;
                assert!(error <= MUON_SUM_TOLERANCE, "{what}: Σd² {sum} vs {c}");
                worst = worst.max(error);
            }
        }
    }
    eprintln!("emulated muon_momentum: buffers bit-identical, Σd² within {worst:.1e} relative");
}

/// Integer logic on the same f32 scores: exactly the CPU path's selection, and `keep_top_k`'s.
#[test]
fn top_k_kernel_matches_the_cpu_path() {
    let Some(module) = Module::compile("keep_top_k.cu", &["keep_top_k"]) else {
        return;
    };
    let mut rows = 0;
    for case in top_k_cases() {
        let TopKCase {
            heads,
            n,
            sinks,
            window,
            budget,
            ref scores,
        } = case;
        let args = [
            buffer(scores),
            zeros::<u32>(heads * budget),
            value(n as i32),
            value(sinks as i32),
            value(window as i32),
            value(budget as i32),
        ];
        let kept: Vec<u32> = module
            .launch("keep_top_k", keep_top_k_grid(heads), &args)
            .buffer(1);
        let t = Tensor::from_vec(scores.clone(), (heads, n), &Device::Cpu).unwrap();
        let cpu: Vec<u32> = values(&keep_top_k_rows(&t, sinks, window, budget).unwrap());
        let what = format!("heads {heads} n {n} sinks {sinks} window {window} budget {budget}");
        assert_eq!(kept, cpu, "{what}");
        for (row, kept) in scores.chunks(n).zip(kept.chunks(budget)) {
            assert_eq!(
                kept,
                spectra::core::keep_top_k(row, sinks, window, budget),
                "{what}"
            );
            rows += 1;
        }
    }
    eprintln!("emulated keep_top_k: {rows} rows select exactly what the CPU path selects");
}

/// Row statistics, votes and pooling in the GPU path's launch order, each kernel's output fed to
/// the next, against the op's CPU path.
#[test]
fn snap_kv_vote_kernels_match_the_cpu_path() {
    let kernels = ["snap_row_stats", "snap_votes", "snap_pool"];
    let Some(module) = Module::compile("snap_kv_votes.cu", &kernels) else {
        return;
    };
    let mut worst = 0f32;
    for case in vote_cases() {
        let VoteCase { op, n, logits } = &case;
        let (n, window) = (*n, op.visible.len());
        let [(row_stats, per_row), (votes, per_prefix_entry), (pool, per_entry)] =
            op.kernel_grids(n);
        let visible: Vec<i32> = op.visible.iter().map(|&c| c as i32).collect();
        let rows = op.group * window;
        let stats: Vec<f32> = module
            .launch(
                row_stats,
                per_row,
                &[
                    buffer(logits),
                    buffer(&visible),
                    zeros::<f32>(2 * rows),
                    value(n as i32),
                    value(window as i32),
                ],
            )
            .buffer(2);
        let mean = op.reduce == spectra::core::GqaAggregation::Mean;
        let voted: Vec<f32> = module
            .launch(
                votes,
                per_prefix_entry,
                &[
                    buffer(logits),
                    buffer(&visible),
                    buffer(&stats),
                    zeros::<f32>(op.prefix.max(1)),
                    value(n as i32),
                    value(window as i32),
                    value(op.group as i32),
                    value(op.prefix as i32),
                    value(i32::from(mean)),
                ],
            )
            .buffer(3);
        let avg = op.pooling == spectra::policies::Pooling::Avg;
        let scores: Vec<f32> = module
            .launch(
                pool,
                per_entry,
                &[
                    buffer(&voted),
                    zeros::<f32>(n),
                    value(n as i32),
                    value(op.prefix as i32),
                    value(op.kernel as i32),
                    value(i32::from(avg)),
                ],
            )
            .buffer(1);
        let t = Tensor::from_vec(logits.clone(), (rows, n), &Device::Cpu).unwrap();
        let cpu: Vec<f32> = values(&op.apply(&t).unwrap());
        let s = scale(&cpu);
        for (j, (c, e)) in cpu.iter().zip(&scores).enumerate() {
            assert!(
                close(c / s, e / s, VOTE_TOLERANCE),
                "{op:?} n {n}, entry {j}: CPU {c}, emulated {e}"
            );
        }
        worst = worst.max(max_error(&cpu, &scores, s));
    }
    eprintln!("emulated snap_kv_votes: within {worst:.1e} of the scale of the votes");
}

/// Every mode, both pairings, head sizes up to 256 and three key dtypes: (nearly) bit-identical.
#[test]
fn key_score_kernel_matches_the_cpu_path() {
    let kernels = [
        "tri_key_scores_f32",
        "tri_key_scores_f16",
        "tri_key_scores_bf16",
    ];
    let Some(module) = Module::compile("tri_attention_key_scores.cu", &kernels) else {
        return;
    };
    let (mut same, mut total, mut worst) = (0usize, 0usize, 0f32);
    for_each_key_score_case(|inputs, keys, what| {
        let (n, group) = (keys.dims()[0], inputs.centers.len());
        let launch = inputs.kernel_launch(n).unwrap();
        let (kernel, key_buffer) = match keys.dtype() {
            DType::F32 => ("tri_key_scores_f32", buffer(&values::<f32>(keys))),
            DType::BF16 => {
                let v: Vec<half::bf16> = values(keys);
                let bits: Vec<u16> = v.iter().map(|x| x.to_bits()).collect();
                ("tri_key_scores_bf16", buffer(&bits))
            }
            _ => {
                let v: Vec<half::f16> = values(keys);
                let bits: Vec<u16> = v.iter().map(|x| x.to_bits()).collect();
                ("tri_key_scores_f16", buffer(&bits))
            }
        };
        let mut args = vec![key_buffer, buffer(&launch.params), zeros::<f32>(group * n)];
        args.extend(launch.ints.map(value));
        args.extend([value(launch.scaling), value(launch.position)]);
        let emulated: Vec<f32> = module.launch(kernel, launch.grid, &args).buffer(2);
        let cpu: Vec<f32> = values(&key_scores(keys, inputs).unwrap());
        let (s, t, w) = check_key_scores(&cpu, &emulated, n, what);
        (same, total, worst) = (same + s, total + t, worst.max(w));
    });
    eprintln!(
        "emulated tri_attention_key_scores: {same} of {total} scores bit-identical, all within {worst:.1e} of the row's scale"
    );
}

/// Row statistics then the reduction, against the op's CPU path.
#[test]
fn finish_kernels_match_the_cpu_path() {
    let Some(module) = Module::compile("tri_attention_finish.cu", &["tri_row_stats", "tri_finish"])
    else {
        return;
    };
    let (mut same, mut total, mut worst) = (0usize, 0usize, 0f32);
    for case in finish_cases() {
        let FinishCase {
            group,
            n,
            ref candidates,
            reduce,
            ref raw,
        } = case;
        let [(row_stats, per_row), (finish, per_entry)] = Finish::kernel_grids(group, n);
        let noise = tie_noise(3, 1, 2, n, &Device::Cpu).unwrap();
        let stats: Vec<f64> = module
            .launch(
                row_stats,
                per_row,
                &[
                    buffer(raw),
                    zeros::<f64>(3 * group),
                    value(n as i32),
                    value(candidates.start as i32),
                    value(candidates.end as i32),
                ],
            )
            .buffer(1);
        let raw_tensor = Tensor::from_vec(raw.clone(), (group, n), &Device::Cpu).unwrap();
        for normalize in [true, false] {
            let mean = reduce == spectra::core::GqaAggregation::Mean;
            let emulated: Vec<f32> = module
                .launch(
                    finish,
                    per_entry,
                    &[
                        buffer(raw),
                        buffer(&stats),
                        buffer(&values::<f32>(&noise)),
                        zeros::<f32>(n),
                        value(n as i32),
                        value(group as i32),
                        value(i32::from(normalize)),
                        value(i32::from(mean)),
                    ],
                )
                .buffer(3);
            let op = Finish {
                candidates: candidates.clone(),
                normalize,
                reduce,
            };
            let cpu: Vec<f32> = values(&op.apply(&raw_tensor, &noise).unwrap());
            for (j, (c, e)) in cpu.iter().zip(&emulated).enumerate() {
                assert!(
                    close(*c, *e, FINISH_TOLERANCE),
                    "group {group} n {n} entry {j}: CPU {c}, emulated {e}"
                );
                total += 1;
                same += usize::from(c.to_bits() == e.to_bits());
            }
            worst = worst.max(max_error(&cpu, &emulated, 1.0));
        }
    }
    eprintln!("emulated tri_attention_finish: {same} of {total} bit-identical, within {worst:.1e}");
}
