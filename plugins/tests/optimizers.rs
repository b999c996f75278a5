//! Optimizers against hand-computed trajectories and exact spectral norms, state save/load and bad input.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use spectra_core::linalg::svd::sigma_max;
use spectra_core::linalg::{rms_scale, Orthogonalizer};
use spectra_core::{Optimizer, OptimizerStep, Param, ParamRole, Schedule};
use spectra_plugins::{AdamW, MomentumWarmup, Muon, Sgd, UpdateScale};

fn param(name: &str, values: Tensor, role: ParamRole) -> Param {
    Param::new(name, Var::from_tensor(&values).unwrap(), role)
}

fn grads_for(params: &[&Param], grads: &[Tensor]) -> GradStore {
    let mut store = GradStore::default();
    for (p, g) in params.iter().zip(grads) {
        store.insert(p.var.as_tensor(), g.clone());
    }
    store
}

fn at(step: u64) -> OptimizerStep {
    OptimizerStep {
        step,
        lr_factor: 1.0,
    }
}

fn scalar_param(value: f32) -> Param {
    param(
        "w",
        Tensor::new(&[value], &Device::Cpu).unwrap(),
        ParamRole::Vector,
    )
}

fn value(p: &Param) -> f64 {
    p.var
        .as_tensor()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()[0]
}

fn run_scalar(opt: &mut dyn Optimizer, p: &Param, grads: &[f32]) {
    for (i, g) in grads.iter().enumerate() {
        let g = Tensor::new(&[*g], &Device::Cpu).unwrap();
        opt.step(
            std::slice::from_ref(p),
            &grads_for(&[p], &[g]),
            &at(i as u64),
        )
        .unwrap();
    }
}

#[test]
fn adamw_matches_a_hand_computed_three_step_trajectory() {
    // g = 1, −2, 0.5; β = (0.9, 0.999); lr 0.01; W₀ = 0.5.
    // step 1: m = 0.1, v = 0.001; m̂ = 1, v̂ = 1; d = 1/(1 + 1e-8) = 0.99999999
    // step 2: m = 0.09 − 0.2 = −0.11, v = 0.000999 + 0.004 = 0.004999;
    //         m̂ = −0.11/0.19 = −0.5789474, v̂ = 0.004999/0.001999 = 2.5007504; d = −0.5789474/1.5813761 = −0.3661035
    // step 3: m = −0.099 + 0.05 = −0.049, v = 0.004994001 + 0.00025 = 0.005244001;
    //         m̂ = −0.049/0.271 = −0.1808118, v̂ = 0.005244001/0.002997001 = 1.7497495; d = −0.1808118/1.3227810 = −0.1366907
    // W₃ = 0.5 − 0.01·(0.99999999 − 0.3661035 − 0.1366907) = 0.4950279.
    let p = scalar_param(0.5);
    let mut adam = AdamW::new(0.01);
    run_scalar(&mut adam, &p, &[1.0, -2.0, 0.5]);
    // f32 arithmetic on values of order 1.
    assert!((value(&p) - 0.4950279).abs() < 1e-6, "{}", value(&p));
}

#[test]
fn adamw_jax_variant_matches_hand_computed_steps() {
    // Constant g = 1, β = (0.9, 0.95), no bias correction, eps 1e-12:
    // d₁ = 0.1/√0.05 = 0.4472136, d₂ = 0.19/√0.0975 = 0.6084870, d₃ = 0.271/√0.142625 = 0.7175819.
    // With wd 0.1, lr 0.01 and t 0.5 the decay factor is 1 − 0.1·0.01·0.5 = 0.9995 per step:
    // W₁ = 0.5·0.9995 − 0.004472136 = 0.495277864, W₂ = 0.495030225 − 0.006084870 = 0.488945355,
    // W₃ = 0.488700882 − 0.007175819 = 0.481525064.
    let p = scalar_param(0.5).with_target_norm(0.5);
    let mut adam = AdamW::jax(0.01, 0.1);
    run_scalar(&mut adam, &p, &[1.0, 1.0, 1.0]);
    assert!((value(&p) - 0.481525064).abs() < 1e-6, "{}", value(&p));
    let mut bad = AdamW::jax(0.01, 0.0);
    bad.eps = 1e-6;
    assert!(bad.validate().unwrap_err().contains("jax_variant fixes"));
}

#[test]
fn sgd_momentum_matches_hand_computed_steps() {
    // g = 1 each step, μ = 0.9, lr 0.1: buffers 1, 1.9, 2.71 → W₀ − 0.1·5.61 = 1 − 0.561.
    // Nesterov steps g + μ·b: 1.9, 2.71, 3.439 → W₀ − 0.1·8.049.
    let p = scalar_param(1.0);
    run_scalar(&mut Sgd::new(0.1, 0.9), &p, &[1.0; 3]);
    assert!((value(&p) - 0.439).abs() < 1e-6, "{}", value(&p));
    let p = scalar_param(1.0);
    let mut nesterov = Sgd::new(0.1, 0.9);
    nesterov.nesterov = true;
    run_scalar(&mut nesterov, &p, &[1.0; 3]);
    assert!((value(&p) - (1.0 - 0.8049)).abs() < 1e-6, "{}", value(&p));
}

/// Exact RMS→RMS norm of W_new − W_old.
fn update_norm(before: &Tensor, after: &Tensor) -> f64 {
    let (r, c) = before.dims2().unwrap();
    sigma_max(&(after - before).unwrap()).unwrap() / rms_scale(r, c)
}

#[test]
fn muon_updates_stay_within_the_reported_bound() {
    let schedule = Schedule::Linear;
    for method in [
        Orthogonalizer::JaxNs6,
        Orthogonalizer::LipschitzNs5,
        Orthogonalizer::KellerNs5,
        Orthogonalizer::Msign,
    ] {
        for scale in [UpdateScale::SqrtFanRatio, UpdateScale::MaxOneRatio] {
            for (rows, cols) in [(32, 32), (64, 16), (16, 64)] {
                let mut muon = Muon::new(0.2);
                muon.orthogonalizer = method;
                muon.update_scale = scale;
                let p = param(
                    "w",
                    Tensor::randn(0f32, 0.1, (rows, cols), &Device::Cpu).unwrap(),
                    ParamRole::Hidden,
                )
                .with_target_norm(0.75);
                for step in 0..3 {
                    let at = OptimizerStep {
                        step,
                        lr_factor: schedule.factor(step, 10),
                    };
                    let bound = muon.update_norm_bound(&p, &at).unwrap();
                    let before = p.var.as_tensor().copy().unwrap();
                    let g = Tensor::randn(0f32, 1.0, (rows, cols), &Device::Cpu).unwrap();
                    muon.step(std::slice::from_ref(&p), &grads_for(&[&p], &[g]), &at)
                        .unwrap();
                    let norm = update_norm(&before, p.var.as_tensor());
                    let what = format!("{method:?} {scale:?} {rows}×{cols} step {step}");
                    // f32 Newton–Schulz: a few 1e-6 relative.
                    assert!(norm <= bound * (1.0 + 1e-4), "{what}: {norm} > {bound}");
                    // The top singular value of a Frobenius-normalized Gaussian matrix is ≥ 1/√n ≥ 1/8, which every
                    // schedule maps above 0.68 of its maximum: the bound is not loose by more than that.
                    assert!(
                        norm >= 0.68 * bound / method.max_singular_value(),
                        "{what}: {norm} ≪ {bound}"
                    );
                    let ratio = if scale == UpdateScale::MaxOneRatio && rows < cols {
                        (cols as f64 / rows as f64).sqrt()
                    } else {
                        1.0
                    };
                    let expected = 0.2 * at.lr_factor * 0.75 * method.max_singular_value() * ratio;
                    assert!(
                        (bound - expected).abs() < 1e-12,
                        "{what}: bound {bound} vs {expected}"
                    );
                }
            }
        }
    }
}

#[test]
fn muon_embedding_updates_have_column_rms_lr_times_target() {
    // d_embed 8, vocab 5; column 4 gets a tiny gradient, amplified at most 16×.
    let p = param(
        "embed",
        Tensor::zeros((8, 5), DType::F32, &Device::Cpu).unwrap(),
        ParamRole::Embedding,
    )
    .with_target_norm(0.5);
    let mut g = Tensor::randn(0f32, 1.0, (8, 5), &Device::Cpu)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    for row in &mut g {
        row[4] = 1e-4;
    }
    let g = Tensor::new(g, &Device::Cpu).unwrap();
    let mut muon = Muon::new(0.1);
    muon.momentum = 0.0;
    let bound = muon.update_norm_bound(&p, &at(0)).unwrap();
    assert!((bound - 0.05).abs() < 1e-15);
    muon.step(std::slice::from_ref(&p), &grads_for(&[&p], &[g]), &at(0))
        .unwrap();
    let rms = p
        .var
        .as_tensor()
        .sqr()
        .unwrap()
        .mean_keepdim(0)
        .unwrap()
        .sqrt()
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    for (j, r) in rms[0].iter().enumerate() {
        // Column 4's RMS is 1e-4, amplified 16×, times lr·t.
        let want = if j == 4 { 1e-4 * 16.0 * 0.05 } else { 0.05 };
        assert!(
            (*r as f64 - want).abs() < 1e-6 * want.max(1e-3),
            "column {j}: {r} vs {want}"
        );
    }
}

#[test]
fn muon_refuses_vectors_and_warms_up_momentum() {
    let gain = param(
        "ln.gain",
        Tensor::ones(4, DType::F32, &Device::Cpu).unwrap(),
        ParamRole::Vector,
    );
    let mut muon = Muon::new(0.1);
    let g = Tensor::ones(4, DType::F32, &Device::Cpu).unwrap();
    let err = muon
        .step(
            std::slice::from_ref(&gain),
            &grads_for(&[&gain], &[g]),
            &at(0),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("ln.gain") && err.contains("AdamW"), "{err}");
    assert_eq!(muon.update_norm_bound(&gain, &at(0)), None);

    let nanogpt = Muon::nanogpt_lipschitz(0.05);
    assert_eq!(
        nanogpt.momentum_warmup,
        Some(MomentumWarmup {
            from: 0.85,
            steps: 300
        })
    );
    assert!((nanogpt.momentum_at(0) - 0.85).abs() < 1e-15);
    assert!((nanogpt.momentum_at(150) - 0.90).abs() < 1e-12);
    assert!((nanogpt.momentum_at(300) - 0.95).abs() < 1e-15);
    assert!((nanogpt.momentum_at(5000) - 0.95).abs() < 1e-15);
}

#[test]
fn muon_nesterov_and_ema_follow_their_formulas() {
    // One step from a zero buffer: EMA direction (1−μ)g; Nesterov (1−μ)g + μ(1−μ)g. Both orthogonalize
    // to the same O (positive multiples of g), so both updates equal lr·t·scale·O: check against O.
    let g = Tensor::randn(0f32, 1.0, (12, 6), &Device::Cpu).unwrap();
    let o = spectra_core::linalg::orthogonalize(&g, Orthogonalizer::JaxNs6, 1e-12).unwrap();
    for nesterov in [false, true] {
        let p = param(
            "w",
            Tensor::zeros((12, 6), DType::F32, &Device::Cpu).unwrap(),
            ParamRole::Hidden,
        );
        let mut muon = Muon::new(0.1);
        muon.nesterov = nesterov;
        muon.step(
            std::slice::from_ref(&p),
            &grads_for(&[&p], std::slice::from_ref(&g)),
            &at(0),
        )
        .unwrap();
        let want = o.affine(-0.1 * rms_scale(12, 6), 0.0).unwrap();
        let diff = (p.var.as_tensor() - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        // The Frobenius normalization removes the positive factor exactly up to f32 rounding.
        assert!(diff < 1e-5, "nesterov {nesterov}: {diff}");
    }
}

#[test]
fn state_round_trips_by_name_and_bad_entries_are_named() {
    let make = |name: &str| {
        param(
            name,
            Tensor::randn(0f32, 1.0, (6, 4), &Device::Cpu).unwrap(),
            ParamRole::Hidden,
        )
    };
    let (a, b) = (make("a"), make("b"));
    let grads = || {
        [&a, &b]
            .map(|p| Tensor::randn(0f32, 1.0, p.var.dims(), &Device::Cpu).unwrap())
            .to_vec()
    };
    let params = [a.clone(), b.clone()];
    let mut adam = AdamW::new(0.01);
    adam.step(&params, &grads_for(&[&a, &b], &grads()), &at(0))
        .unwrap();
    let state: HashMap<String, Tensor> = adam.state().into_iter().collect();
    let mut names: Vec<&str> = state.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "a.adam_m",
            "a.adam_steps",
            "a.adam_v",
            "b.adam_m",
            "b.adam_steps",
            "b.adam_v"
        ]
    );

    let mut missing = state.clone();
    missing.remove("b.adam_v");
    let err = AdamW::new(0.01)
        .load_state(&missing, &params)
        .unwrap_err()
        .to_string();
    assert!(err.contains("b.adam_v") && err.contains("missing"), "{err}");
    let mut misshapen = state.clone();
    misshapen.insert(
        "a.adam_m".into(),
        Tensor::zeros((4, 6), DType::F32, &Device::Cpu).unwrap(),
    );
    let err = AdamW::new(0.01)
        .load_state(&misshapen, &params)
        .unwrap_err()
        .to_string();
    assert!(err.contains("a.adam_m") && err.contains("[4, 6]"), "{err}");

    // Resuming continues identically (the conformance suite checks every optimizer the same way).
    let mut resumed = AdamW::new(0.01);
    resumed.load_state(&state, &params).unwrap();
    let g = grads();
    let copies: Vec<Param> = params
        .iter()
        .map(|p| {
            Param::new(
                p.name.clone(),
                Var::from_tensor(&p.var.as_tensor().copy().unwrap()).unwrap(),
                p.role,
            )
        })
        .collect();
    adam.step(&params, &grads_for(&[&params[0], &params[1]], &g), &at(1))
        .unwrap();
    resumed
        .step(&copies, &grads_for(&[&copies[0], &copies[1]], &g), &at(1))
        .unwrap();
    for (p, q) in params.iter().zip(&copies) {
        let same = p
            .var
            .as_tensor()
            .eq(q.var.as_tensor())
            .unwrap()
            .min_all()
            .unwrap()
            .to_scalar::<u8>()
            .unwrap();
        assert_eq!(same, 1, "{} differs after resuming", p.name);
    }
}

#[test]
fn non_finite_gradients_are_refused_before_anything_is_written() {
    let a = param(
        "a",
        Tensor::ones((3, 3), DType::F32, &Device::Cpu).unwrap(),
        ParamRole::Hidden,
    );
    let b = param(
        "b",
        Tensor::ones((3, 3), DType::F32, &Device::Cpu).unwrap(),
        ParamRole::Hidden,
    );
    let good = Tensor::ones((3, 3), DType::F32, &Device::Cpu).unwrap();
    let bad = Tensor::new(&[[1.0f32, f32::NAN, 0.0], [0.0; 3], [0.0; 3]], &Device::Cpu).unwrap();
    let optimizers: Vec<Box<dyn Optimizer>> = vec![
        Box::new(Muon::new(0.1)),
        Box::new(AdamW::new(0.1)),
        Box::new(Sgd::new(0.1, 0.9)),
    ];
    for mut opt in optimizers {
        let err = opt
            .step(
                &[a.clone(), b.clone()],
                &grads_for(&[&a, &b], &[good.clone(), bad.clone()]),
                &at(0),
            )
            .unwrap_err();
        assert!(
            err.to_string().contains("`b`") && err.to_string().contains("gradient"),
            "{err}"
        );
        // `a` comes first and had a good gradient: still untouched.
        assert_eq!(
            a.var
                .as_tensor()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            9.0
        );
        assert!(
            opt.state().is_empty(),
            "{}: state written on a refused step",
            opt.typetag_name()
        );
    }
}

#[test]
fn invalid_configs_are_rejected_with_the_field_named() {
    let c: Box<dyn Optimizer> = ron::from_str(r#"(type: "Muon", cfg: (lr: 0.0))"#).unwrap();
    assert!(c.validate().unwrap_err().contains("lr"));
    let c: Box<dyn Optimizer> =
        ron::from_str(r#"(type: "AdamW", cfg: (lr: 0.01, beta1: 1.0))"#).unwrap();
    assert!(c.validate().unwrap_err().contains("beta1"));
    let c: Box<dyn Optimizer> =
        ron::from_str(r#"(type: "Muon", cfg: (lr: 0.05, orthogonalizer: LipschitzNs5, nesterov: true, momentum_warmup: Some((from: 0.85, steps: 300))))"#)
            .unwrap();
    assert!(c.validate().is_ok());
    let err =
        ron::from_str::<Box<dyn Optimizer>>(r#"(type: "Sgd", cfg: (lr: 0.1, momentun: 0.9))"#)
            .unwrap_err();
    assert!(err.to_string().contains("momentun"), "{err}");
}
