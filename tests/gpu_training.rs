//! The GPU against the CPU on the same inputs: every registered weight constraint and optimizer, the
//! fused training ops' CUDA kernels, and Muon's bf16 orthogonalization. Needs `--features cuda`; on a
//! machine without a usable GPU every test says why and returns.
#![cfg(feature = "cuda")]

mod kernel_cases_support;

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use rand::SeedableRng;
use spectra::core::config::parse_ron;
use spectra::core::linalg::svd::sigma_max;
use spectra::core::linalg::{frobenius_norm, rms_scale, OrthogonalizeDtype};
use spectra::core::ops::nvrtc::{cuda_function, KernelModule};
use spectra::core::registry::{self, Family};
use spectra::core::{
    ConstraintContext, ConstraintState, DeviceSpec, Optimizer, OptimizerStep, Param, ParamRole,
    SpectraRng, WeightConstraint,
};
use spectra::plugins::optimizers::fused::adamw::adamw_update;
use spectra::plugins::optimizers::fused::muon_momentum::muon_momentum;
use spectra::plugins::Muon;

use kernel_cases_support::{adamw_scalars, gaussian, ADAMW_DIMS, MUON_DIMS, MUON_SUM_TOLERANCE};
// Linked so that its plugins are registered and checked too.
use third_party_plugin as _;

/// The GPU, or `None` after saying why there is none.
fn gpu() -> Option<Device> {
    match DeviceSpec::Cuda(0).resolve() {
        Ok(device) => Some(device),
        Err(e) => {
            eprintln!("no GPU, test skipped: {e}");
            None
        }
    }
}

/// Largest relative Frobenius distance ‖gpu − cpu‖/‖cpu‖ allowed between the two devices' results of
/// one plugin. Both run the same candle ops and differ only in rounding: cuBLAS and gemm sum products
/// in different orders, and candle's CUDA kernels may contract a·b + c into an FMA, so every operation
/// may round differently by about one unit roundoff u. Measured on the CPU, perturbing a plugin's input
/// (weight or gradients) by u relative moves its result by at most 21 u (SvdClip; Stiefel's msign 8 u,
/// the others ≤ 5 u), so tens of operations each rounding differently stay within a few hundred u.
/// Allowed: ~1700 u of the dtype (u = 6e-8 in f32, 1.1e-16 in f64); a real defect (a wrong kernel, a
/// lost step) moves results by orders of magnitude more.
fn device_tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => 2e-13,
        _ => 1e-4,
    }
}

/// ‖a − b‖_F / ‖b‖_F, computed in f64 on the CPU (0 when both are zero).
fn relative_distance(a: &Tensor, b: &Tensor) -> f64 {
    let host = |t: &Tensor| {
        t.to_device(&Device::Cpu)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
    };
    let (a, b) = (host(a), host(b));
    let diff = frobenius_norm(&(&a - &b).unwrap()).unwrap();
    let scale = frobenius_norm(&b).unwrap();
    if scale == 0.0 {
        diff
    } else {
        diff / scale
    }
}

fn host_values(t: &Tensor) -> Vec<f64> {
    t.to_device(&Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// The shape and role a plugin is checked on: the first role it accepts.
const ROLES: [(ParamRole, &[usize]); 4] = [
    (ParamRole::Hidden, &[48, 32]),
    (ParamRole::Head, &[16, 48]),
    (ParamRole::Embedding, &[32, 64]),
    (ParamRole::Vector, &[48]),
];

/// The weight and state after two applications of `constraint` on `device`, starting from `w0`.
fn constrain_twice(
    constraint: &dyn WeightConstraint,
    role: ParamRole,
    w0: &Tensor,
    device: &Device,
) -> spectra::core::Result<(Tensor, ConstraintState)> {
    let var = Var::from_tensor(&w0.to_device(device)?)?;
    let mut state = ConstraintState::new();
    for step in 0..2 {
        // The same seed on both devices: start vectors are drawn on the host.
        let mut rng = SpectraRng::seed_from_u64(11 + step);
        let mut ctx = ConstraintContext {
            step,
            lr: 0.01,
            target_norm: 1.0,
            update_norm_bound: Some(0.01),
            role,
            name: "gpu.weight",
            rng: &mut rng,
            state: &mut state,
        };
        constraint.apply(&var, &mut ctx)?;
    }
    Ok((var.as_tensor().clone(), state))
}

fn compare_states(
    what: &str,
    cpu: &BTreeMap<String, Tensor>,
    gpu: &BTreeMap<String, Tensor>,
    tolerance: f64,
) {
    assert_eq!(
        cpu.keys().collect::<Vec<_>>(),
        gpu.keys().collect::<Vec<_>>(),
        "{what}: state entries differ"
    );
    for (key, c) in cpu {
        let d = relative_distance(&gpu[key], c);
        assert!(d <= tolerance, "{what}: state `{key}` differs by {d:e}");
    }
}

#[test]
fn every_weight_constraint_agrees_across_devices() {
    let Some(gpu) = gpu() else { return };
    let mut checked = 0;
    for plugin in registry::plugins()
        .into_iter()
        .filter(|p| p.family == Family::WeightConstraint)
    {
        let config = (plugin.default_config)();
        let constraint: Box<dyn WeightConstraint> =
            parse_ron(&config, Path::new("default.ron")).unwrap();
        let Some(&(role, dims)) = ROLES.iter().find(|(r, _)| constraint.accepts(*r)) else {
            panic!("{} accepts no role", plugin.name);
        };
        for dtype in [DType::F32, DType::F64] {
            // Entry scales with σ_max ≈ 0.6 and ≈ 4: below and above every default cap.
            for (seed, std) in [(1, 0.05), (2, 0.3)] {
                let what = format!("{} {dtype:?} std {std}", plugin.name);
                let w0 = gaussian(dims, std, seed, dtype);
                let on_cpu = constrain_twice(constraint.as_ref(), role, &w0, &Device::Cpu);
                let on_gpu = constrain_twice(constraint.as_ref(), role, &w0, &gpu);
                match (on_cpu, on_gpu) {
                    (Ok((w_cpu, s_cpu)), Ok((w_gpu, s_gpu))) => {
                        assert!(w_gpu.device().is_cuda(), "{what}: the weight left the GPU");
                        assert_eq!(w_gpu.dtype(), dtype, "{what}: dtype changed");
                        let tolerance = device_tolerance(dtype);
                        let d = relative_distance(&w_gpu, &w_cpu);
                        assert!(d <= tolerance, "{what}: weights differ by {d:e}");
                        compare_states(&what, &s_cpu, &s_gpu, tolerance);
                        checked += 1;
                    }
                    (Err(c), Err(g)) => eprintln!("{what}: refused on both devices ({c} / {g})"),
                    (c, g) => panic!(
                        "{what}: CPU {:?} but GPU {:?}",
                        c.map(|_| "ok"),
                        g.map(|_| "ok")
                    ),
                }
            }
        }
    }
    assert!(checked > 0, "no constraint was compared");
}

/// The weight and exported state after three steps of a fresh `config` optimizer on one parameter.
fn optimize_three_steps(
    config: &str,
    role: ParamRole,
    w0: &Tensor,
    grads: &[Tensor],
    device: &Device,
) -> spectra::core::Result<(Tensor, BTreeMap<String, Tensor>)> {
    let mut optimizer: Box<dyn Optimizer> = parse_ron(config, Path::new("default.ron"))?;
    let param =
        Param::new("p", Var::from_tensor(&w0.to_device(device)?)?, role).with_target_norm(0.75);
    for (step, g) in grads.iter().enumerate() {
        let mut store = GradStore::default();
        store.insert(param.var.as_tensor(), g.to_device(device)?);
        let at = OptimizerStep {
            step: step as u64,
            lr_factor: 1.0 - step as f64 / 10.0,
        };
        optimizer.step(std::slice::from_ref(&param), &store, &at)?;
    }
    let state = optimizer.state().into_iter().collect();
    Ok((param.var.as_tensor().clone(), state))
}

#[test]
fn every_optimizer_agrees_across_devices() {
    let Some(gpu) = gpu() else { return };
    let mut checked = 0;
    for plugin in registry::plugins()
        .into_iter()
        .filter(|p| p.family == Family::Optimizer)
    {
        let config = (plugin.default_config)();
        for (role, dims) in ROLES {
            for dtype in [DType::F32, DType::F64] {
                let what = format!("{} {role:?} {dtype:?}", plugin.name);
                let w0 = gaussian(dims, 0.2, 3, dtype);
                let grads: Vec<Tensor> =
                    (0..3).map(|s| gaussian(dims, 1.0, 20 + s, dtype)).collect();
                let on_cpu = optimize_three_steps(&config, role, &w0, &grads, &Device::Cpu);
                let on_gpu = optimize_three_steps(&config, role, &w0, &grads, &gpu);
                match (on_cpu, on_gpu) {
                    (Ok((w_cpu, s_cpu)), Ok((w_gpu, s_gpu))) => {
                        assert!(w_gpu.device().is_cuda(), "{what}: the weight left the GPU");
                        let tolerance = device_tolerance(dtype);
                        let d = relative_distance(&w_gpu, &w_cpu);
                        assert!(d <= tolerance, "{what}: weights differ by {d:e}");
                        compare_states(&what, &s_cpu, &s_gpu, tolerance);
                        checked += 1;
                    }
                    (Err(c), Err(g)) => eprintln!("{what}: refused on both devices ({c} / {g})"),
                    (c, g) => panic!(
                        "{what}: CPU {:?} but GPU {:?}",
                        c.map(|_| "ok"),
                        g.map(|_| "ok")
                    ),
                }
            }
        }
    }
    assert!(checked > 0, "no optimizer was compared");
}

#[test]
fn fused_adamw_kernel_matches_the_cpu_path_bit_for_bit() {
    let Some(gpu) = gpu() else { return };
    let scalars = adamw_scalars();
    for (dtype, dims) in [DType::F32, DType::F64]
        .into_iter()
        .flat_map(|dtype| ADAMW_DIMS.map(|dims| (dtype, dims)))
    {
        let w = gaussian(&dims, 0.3, 1, dtype);
        let g = gaussian(&dims, 1.0, 2, dtype);
        let m = gaussian(&dims, 0.1, 3, dtype);
        let v = gaussian(&dims, 0.1, 4, dtype).sqr().unwrap();
        let cpu = adamw_update(&w, &g, &m, &v, &scalars).unwrap();
        let on = |t: &Tensor| t.to_device(&gpu).unwrap();
        // The gradient transposed twice: a non-contiguous operand on the device.
        let g_strided = on(&g.t().unwrap().contiguous().unwrap()).t().unwrap();
        let out = adamw_update(&on(&w), &g_strided, &on(&m), &on(&v), &scalars).unwrap();
        // The kernel evaluates the CPU path's expression with the same correctly rounded operations
        // (never contracted into FMAs), and neither device flushes subnormals: equal to the last bit.
        for (c, g, what) in [
            (&cpu.weight, &out.weight, "weight"),
            (&cpu.m, &out.m, "m"),
            (&cpu.v, &out.v, "v"),
        ] {
            assert!(g.device().is_cuda());
            assert_eq!(host_values(g), host_values(c), "{what} {dtype:?}");
        }
    }
}

#[test]
fn fused_muon_momentum_kernel_matches_the_cpu_path() {
    let Some(gpu) = gpu() else { return };
    for dtype in [DType::F32, DType::F64] {
        for nesterov in [false, true] {
            for dims in MUON_DIMS {
                let b = gaussian(&dims, 0.5, 5, dtype);
                let g = gaussian(&dims, 1.0, 6, dtype);
                let cpu = muon_momentum(&b, &g, 0.95, nesterov).unwrap();
                let out = muon_momentum(
                    &b.to_device(&gpu).unwrap(),
                    &g.to_device(&gpu).unwrap(),
                    0.95,
                    nesterov,
                )
                .unwrap();
                let what = format!("{dtype:?} nesterov {nesterov} {dims:?}");
                // Same operations, same rounding: bit-equal (see the AdamW test).
                assert_eq!(host_values(&out.buffer), host_values(&cpu.buffer), "{what}");
                assert_eq!(
                    host_values(&out.direction),
                    host_values(&cpu.direction),
                    "{what}"
                );
                let (c, g) = (
                    cpu.direction_sum_sq.to_scalar::<f64>().unwrap(),
                    out.direction_sum_sq
                        .to_device(&Device::Cpu)
                        .unwrap()
                        .to_scalar::<f64>()
                        .unwrap(),
                );
                assert!(
                    (g - c).abs() <= MUON_SUM_TOLERANCE * c,
                    "{what}: Σd² {g} vs {c}"
                );
            }
        }
    }
}

#[test]
fn bf16_muon_on_the_gpu_stays_within_its_bound_and_near_f32() {
    let Some(gpu) = gpu() else { return };
    for (rows, cols) in [(512, 512), (1024, 256), (256, 1024)] {
        let w0 = gaussian(&[rows, cols], 0.02, 7, DType::F32);
        let g = gaussian(&[rows, cols], 1.0, 8, DType::F32);
        let mut updates = Vec::new();
        for (dtype, device) in [
            (OrthogonalizeDtype::F32, &gpu),
            (OrthogonalizeDtype::Bf16, &gpu),
            (OrthogonalizeDtype::Bf16, &Device::Cpu),
        ] {
            let mut muon = Muon::new(0.1);
            muon.orthogonalize_dtype = dtype;
            let param = Param::new(
                "w",
                Var::from_tensor(&w0.to_device(device).unwrap()).unwrap(),
                ParamRole::Hidden,
            );
            let at = OptimizerStep {
                step: 0,
                lr_factor: 1.0,
            };
            let bound = muon.update_norm_bound(&param, &at).unwrap();
            let mut store = GradStore::default();
            store.insert(param.var.as_tensor(), g.to_device(device).unwrap());
            muon.step(std::slice::from_ref(&param), &store, &at)
                .unwrap();
            let update = (param.var.as_tensor().to_device(&Device::Cpu).unwrap() - &w0).unwrap();
            let norm = sigma_max(&update).unwrap() / rms_scale(rows, cols);
            // The exact spectral norm of an f32 difference: rounding of 1e-6 relative at most.
            assert!(
                norm <= bound * (1.0 + 1e-5),
                "{dtype:?} on {device:?}, {rows}×{cols}: update norm {norm} > bound {bound}"
            );
            updates.push(update);
        }
        // bf16 moves a full-rank update by ≤ 2.1% in the CPU measurements (core's orthogonalize
        // tests); cuBLAS rounds the same products to bf16, in a different summation order.
        let moved = relative_distance(&updates[1], &updates[0]);
        assert!(moved < 0.05, "{rows}×{cols}: GPU bf16 vs GPU f32 {moved}");
        let across = relative_distance(&updates[1], &updates[2]);
        assert!(
            across < 0.05,
            "{rows}×{cols}: GPU bf16 vs CPU bf16 {across}"
        );
    }
}

#[test]
fn nvrtc_failures_name_the_module_and_say_what_failed() {
    let Some(Device::Cuda(gpu)) = gpu() else {
        return;
    };
    const BROKEN: KernelModule = KernelModule::new(
        "spectra_test_broken",
        r#"extern "C" __global__ void broken(float* x) { x[0] = undeclared; }"#,
    );
    let err = cuda_function(&gpu, &BROKEN, "broken")
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("spectra_test_broken") && err.contains("undeclared"),
        "the NVRTC log is in the message: {err}"
    );
    const VALID: KernelModule = KernelModule::new(
        "spectra_test_valid",
        r#"extern "C" __global__ void present(float* x) { x[0] = 1.0f; }"#,
    );
    assert!(cuda_function(&gpu, &VALID, "present").is_ok());
    let err = cuda_function(&gpu, &VALID, "absent")
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("absent") && err.contains("spectra_test_valid"),
        "{err}"
    );
}
