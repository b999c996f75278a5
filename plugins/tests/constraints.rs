//! Weight constraints against references: the scalar test vectors of docs/lipschitz.md §5 pushed
//! through the matrix path (matrices with known singular values), exact SVDs of random matrices,
//! and bad input.

use candle_core::{DType, Device, Tensor, Var};
use proptest::prelude::*;
use rand::SeedableRng;
use spectra_core::linalg::polynomial::{composite, NS6_JAX};
use spectra_core::linalg::svd::{singular_values, with_singular_values};
use spectra_core::linalg::{rms_scale, soft_cap_alpha, soft_cap_steps, Orthogonalizer};
use spectra_core::{
    ConstraintContext, ConstraintReport, ConstraintState, Optimizer, OptimizerStep, Param,
    ParamRole, SpectraRng, WeightConstraint,
};
use spectra_plugins::{
    EmbeddingColumnCap, HardCapMode, Muon, SpectralHammer, SpectralHardCap, SpectralNormalize,
    SpectralSoftCap, SpectralWeightDecay, Stiefel, SvdClip, WeightDecay,
};

/// Shapes (fan_out, fan_in): square, tall (up-projection, scale 2), wide (down-projection, scale ½).
const SHAPES: [(usize, usize); 3] = [(24, 24), (48, 12), (12, 48)];

/// A weight whose RMS→RMS singular values (those of W/scale) are exactly `sigmas`, in f32.
fn weight(rows: usize, cols: usize, sigmas: &[f64], seed: u64) -> Tensor {
    let mut rng = SpectraRng::seed_from_u64(seed);
    let scaled: Vec<f64> = sigmas.iter().map(|s| s * rms_scale(rows, cols)).collect();
    with_singular_values(rows, cols, &scaled, &mut rng, DType::F32, &Device::Cpu).unwrap()
}

/// The RMS→RMS singular values of a weight, descending, exact (faer, f64).
fn rms_sigmas(w: &Tensor) -> Vec<f64> {
    let (rows, cols) = w.dims2().unwrap();
    singular_values(w)
        .unwrap()
        .into_iter()
        .map(|s| s / rms_scale(rows, cols))
        .collect()
}

struct Step {
    role: ParamRole,
    lr: f64,
    target_norm: f64,
    bound: Option<f64>,
    seed: u64,
}

impl Default for Step {
    fn default() -> Self {
        Step {
            role: ParamRole::Hidden,
            lr: 0.01,
            target_norm: 1.0,
            bound: Some(0.1),
            seed: 1,
        }
    }
}

fn apply_in(
    c: &dyn WeightConstraint,
    var: &Var,
    step: &Step,
    state: &mut ConstraintState,
) -> spectra_core::Result<ConstraintReport> {
    let mut rng = SpectraRng::seed_from_u64(step.seed);
    let mut ctx = ConstraintContext {
        step: 0,
        lr: step.lr,
        target_norm: step.target_norm,
        update_norm_bound: step.bound,
        role: step.role,
        name: "layer.weight",
        rng: &mut rng,
        state,
    };
    c.apply(var, &mut ctx)
}

/// Applies `c` once to a copy of `w`; returns the new weight and the report.
fn apply(
    c: &dyn WeightConstraint,
    w: &Tensor,
    step: &Step,
) -> spectra_core::Result<(Tensor, ConstraintReport)> {
    let var = Var::from_tensor(w).unwrap();
    let report = apply_in(c, &var, step, &mut ConstraintState::new())?;
    Ok((var.as_tensor().clone(), report))
}

fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: {got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g - w).abs() <= tol,
            "{what}: got {got:?}, want {want:?} (±{tol})"
        );
    }
}

fn descending(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| b.total_cmp(a));
    v
}

/// f32 matrix products on entries of order 1: a few 1e-6 relative per product, a handful of products.
const F32_TOL: f64 = 2e-5;

#[test]
fn soft_cap_reproduces_the_spec_vectors_through_the_matrix_path() {
    // docs/lipschitz.md §5: w_max 1, η 0.1 → α = 0.158864; f(1.1) = 1, f(1.0) = 0.935678,
    // f(0.5) = 0.497727.
    let cap = SpectralSoftCap::default();
    for (rows, cols) in SHAPES {
        let w = weight(rows, cols, &[1.1, 1.0, 0.5], 3);
        let (out, _) = apply(
            &cap,
            &w,
            &Step {
                bound: Some(0.1),
                ..Step::default()
            },
        )
        .unwrap();
        let mut want = vec![1.0, 0.935678, 0.497727];
        want.resize(rows.min(cols), 0.0);
        // The spec prints 6 decimals.
        assert_close(
            &rms_sigmas(&out),
            &want,
            1e-5,
            &format!("soft cap on {rows}×{cols}"),
        );
    }
}

#[test]
fn soft_cap_reference_coupling_changes_what_the_docs_say() {
    // σ_max = k = 1.1 (an update of η = 0.1 on top of w_max = 1). The correct coupling brings it back to
    // exactly 1; the reference's η/scale assumes half the update on an up-projection (scale 2) and
    // leaves σ_max above 1, and twice the update on a down-projection, capping below 1.
    let quirk = SpectralSoftCap {
        reference_coupling: true,
        ..SpectralSoftCap::default()
    };
    let step = Step {
        bound: Some(0.1),
        ..Step::default()
    };
    for ((rows, cols), expect_above) in [((48, 12), true), ((12, 48), false)] {
        let w = weight(rows, cols, &[1.1, 0.5], 4);
        let top = rms_sigmas(&apply(&quirk, &w, &step).unwrap().0)[0];
        let scale = rms_scale(rows, cols);
        let alpha = soft_cap_alpha(1.0, 0.0, 0.1 / scale);
        let expected = composite(&soft_cap_steps(alpha), 1.1);
        assert!(
            (top - expected).abs() < F32_TOL,
            "{rows}×{cols}: {top} vs {expected}"
        );
        assert_eq!(top > 1.0 + 1e-3, expect_above, "{rows}×{cols}: σ_max {top}");
        let correct = rms_sigmas(&apply(&SpectralSoftCap::default(), &w, &step).unwrap().0)[0];
        assert!((correct - 1.0).abs() < F32_TOL, "{rows}×{cols}: {correct}");
    }
}

#[test]
fn soft_cap_needs_an_update_bound_and_survives_weights_far_above_it() {
    let w = weight(16, 16, &[1.0], 5);
    let err = apply(
        &SpectralSoftCap::default(),
        &w,
        &Step {
            bound: None,
            ..Step::default()
        },
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("SpectralSoftCap needs an optimizer that bounds its update norm"),
        "{err}"
    );
    // σ = 40 would reach ~1e13 through the bare map; the guard scales to k first, so σ_max ends at w_max.
    let far = weight(16, 16, &[40.0, 20.0, 1.0], 6);
    let (out, _) = apply(&SpectralSoftCap::default(), &far, &Step::default()).unwrap();
    let s = rms_sigmas(&out);
    assert!((s[0] - 1.0).abs() < 1e-4, "{s:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    /// The soft cap's inductive guarantee: σ_max ≤ w_max before, a Muon step whose update is within
    /// the bound Muon reports, then the cap: σ_max ≤ w_max after.
    #[test]
    fn muon_then_soft_cap_keeps_sigma_max_below_w_max(
        rows in 2usize..24,
        cols in 2usize..24,
        w_max in 0.5f64..4.0,
        lr in 0.001f64..0.3,
        fill in 0.0f64..1.0,
        method in 0usize..3,
        seed in any::<u64>(),
    ) {
        let k = rows.min(cols);
        // Singular values in [0, w_max], the largest exactly w_max: the hardest start.
        let mut sigmas: Vec<f64> = (0..k).map(|i| w_max * (1.0 - fill * i as f64 / k as f64)).collect();
        sigmas[0] = w_max;
        let w = weight(rows, cols, &sigmas, seed);
        let var = Var::from_tensor(&w).unwrap();
        let param = Param::new("layer.weight", var.clone(), ParamRole::Hidden);
        let orthogonalizer = [Orthogonalizer::JaxNs6, Orthogonalizer::LipschitzNs5, Orthogonalizer::KellerNs5][method];
        // lr·1.2 ≤ 0.3065·w_max keeps η inside the guarantee's range (β ≤ 1/3).
        let lr = lr.min(0.3 * w_max / 1.21);
        let mut muon = Muon::new(lr);
        muon.orthogonalizer = orthogonalizer;
        let at = OptimizerStep { step: 0, lr_factor: 1.0 };
        let grad = Tensor::randn(0f32, 1.0, (rows, cols), &Device::Cpu).unwrap();
        let mut grads = candle_core::backprop::GradStore::default();
        grads.insert(var.as_tensor(), grad);
        let bound = muon.update_norm_bound(&param, &at).unwrap();
        muon.step(std::slice::from_ref(&param), &grads, &at).unwrap();
        let update = rms_sigmas(&(var.as_tensor() - &w).unwrap())[0];
        // f32 Newton–Schulz on an f32 buffer: a few 1e-6 relative.
        prop_assert!(update <= bound * (1.0 + 1e-4), "update {} > bound {}", update, bound);
        let cap = SpectralSoftCap { w_max, ..SpectralSoftCap::default() };
        apply_in(&cap, &var, &Step { bound: Some(bound), lr, ..Step::default() }, &mut ConstraintState::new()).unwrap();
        let after = rms_sigmas(var.as_tensor())[0];
        // f32 rounding of the two cubic steps, relative to w_max.
        prop_assert!(after <= w_max * (1.0 + 1e-4), "σ_max {} > w_max {}", after, w_max);
    }
}

#[test]
fn hard_cap_quintic_reproduces_the_spec_vectors() {
    // docs/lipschitz.md §5 (4 decimals): f(0.1) = 0.0953, f(0.5) = 0.4979, f(0.8) = 0.8127,
    // f(1.0) = 0.9661, f(1.2) = 1.0107, f(1.5) = 1.0013, f(2.0) = 1.0020; in units of w_max = 2.
    let cap = SpectralHardCap {
        w_max: 2.0,
        mode: HardCapMode::Quintic,
    };
    let input = [0.1, 0.5, 0.8, 1.0, 1.2, 1.5, 2.0];
    let want = [0.0953, 0.4979, 0.8127, 0.9661, 1.0107, 1.0013, 1.0020];
    for (rows, cols) in SHAPES {
        let w = weight(rows, cols, &input.map(|s| 2.0 * s), 7);
        let (out, _) = apply(&cap, &w, &Step::default()).unwrap();
        let mut expected: Vec<f64> = want.iter().map(|f| 2.0 * f).collect();
        expected.resize(rows.min(cols), 0.0);
        assert_close(
            &rms_sigmas(&out),
            &descending(expected),
            2.0 * 5e-5 + 1e-4,
            &format!("hard cap {rows}×{cols}"),
        );
    }
}

#[test]
fn hard_cap_quintic_is_guarded_above_its_divergence() {
    // σ = 10, 5, 0.5 in units of w_max: the bare quintic sends 5 to ~6e126. The guard scales the matrix
    // so that σ_max = 2 first: 2, 1, 0.1 → f = 1.0020, 0.9661, 0.0953 (docs/lipschitz.md §5).
    let cap = SpectralHardCap::default();
    let w = weight(20, 10, &[10.0, 5.0, 0.5], 8);
    let (out, _) = apply(&cap, &w, &Step::default()).unwrap();
    let s = rms_sigmas(&out);
    assert_close(&s[..3], &[1.0020, 0.9661, 0.0953], 1e-4, "guarded hard cap");
}

#[test]
fn hard_cap_exact_clip_matches_svd() {
    let cap = SpectralHardCap {
        w_max: 1.5,
        mode: HardCapMode::ExactClip,
    };
    for (rows, cols) in SHAPES {
        let w = weight(rows, cols, &[300.0, 4.0, 1.6, 1.5, 1.2, 0.3, 0.01], 9);
        let before = rms_sigmas(&w);
        let (out, _) = apply(&cap, &w, &Step::default()).unwrap();
        let want: Vec<f64> = before.iter().map(|s| s.min(1.5)).collect();
        // Two msigns in f32 on a matrix with entries up to 300: absolute error ~1e-5·300.
        assert_close(
            &rms_sigmas(&out),
            &want,
            5e-3,
            &format!("exact clip {rows}×{cols}"),
        );
    }
}

#[test]
fn stiefel_maps_singular_values_by_the_ns6_composite() {
    let w_max = 2.0;
    let cap = Stiefel {
        w_max,
        ..Stiefel::default()
    };
    for (rows, cols) in SHAPES {
        let input = [3.0, 1.0, 0.2, 0.05];
        let w = weight(rows, cols, &input, 10);
        let (out, _) = apply(&cap, &w, &Step::default()).unwrap();
        // N = W/(scale·w_max), divided by ‖N‖_F, then the six steps; scaled back by w_max.
        let fro = input
            .iter()
            .map(|s| (s / w_max).powi(2))
            .sum::<f64>()
            .sqrt();
        let mut want: Vec<f64> = input
            .iter()
            .map(|s| w_max * composite(&NS6_JAX, s / w_max / fro))
            .collect();
        want.resize(rows.min(cols), 0.0);
        let got = rms_sigmas(&out);
        assert_close(
            &got,
            &descending(want),
            1e-4,
            &format!("Stiefel {rows}×{cols}"),
        );
        assert!(
            got[..4]
                .iter()
                .all(|s| (0.866 * w_max..=0.99934 * w_max).contains(s)),
            "{got:?}"
        );
    }
    let exact = Stiefel {
        w_max,
        method: Orthogonalizer::Msign,
    };
    let w = weight(30, 20, &[50.0, 1.0, 0.01], 11);
    let got = rms_sigmas(&apply(&exact, &w, &Step::default()).unwrap().0);
    assert_close(&got[..3], &[w_max; 3], 1e-4, "Stiefel by msign");
}

/// Random matrices of every kind the constraints must handle.
fn random_cases() -> Vec<(String, Tensor)> {
    let mut out = Vec::new();
    for (rows, cols) in SHAPES {
        out.push((
            format!("gaussian {rows}×{cols}"),
            Tensor::randn(0f32, 1.0, (rows, cols), &Device::Cpu).unwrap(),
        ));
        out.push((
            format!("σ_max ≫ 1 {rows}×{cols}"),
            weight(rows, cols, &[80.0, 30.0, 2.0, 0.5], 12),
        ));
        out.push((
            format!("rank 2 {rows}×{cols}"),
            weight(rows, cols, &[3.0, 0.7], 13),
        ));
    }
    out
}

#[test]
fn svd_clip_gives_min_sigma_w_max() {
    let w_max = 1.3;
    for (what, w) in random_cases() {
        let before = rms_sigmas(&w);
        let (out, report) = apply(&SvdClip { w_max }, &w, &Step::default()).unwrap();
        let want: Vec<f64> = before.iter().map(|s| s.min(w_max)).collect();
        // f64 SVD, rounded to f32 once.
        assert_close(&rms_sigmas(&out), &want, 1e-5 * before[0].max(1.0), &what);
        assert!((report.norm_before.unwrap() - before[0]).abs() < 1e-9 * before[0]);
    }
}

#[test]
fn spectral_normalize_only_scales_down_to_its_estimate() {
    let w_max = 1.0;
    for (what, w) in random_cases() {
        let before = rms_sigmas(&w);
        let (out, report) = apply(
            &SpectralNormalize {
                w_max,
                ..SpectralNormalize::default()
            },
            &w,
            &Step::default(),
        )
        .unwrap();
        let after = rms_sigmas(&out);
        let estimate = report.norm_before.unwrap();
        // Power iteration is a lower bound (up to f32 rounding).
        assert!(
            estimate <= before[0] * (1.0 + 1e-5),
            "{what}: estimate {estimate} > exact {}",
            before[0]
        );
        for (a, b) in after.iter().zip(&before) {
            assert!(
                *a <= b * (1.0 + 1e-5) + 1e-6,
                "{what}: a singular value grew: {a} > {b}"
            );
        }
        if estimate > w_max {
            // σ_max lands at w_max times exact/estimate: within the estimate's error of w_max.
            let expected = w_max * before[0] / estimate;
            assert!(
                (after[0] - expected).abs() < 1e-4 * expected,
                "{what}: {} vs {expected}",
                after[0]
            );
            assert!(after[0] >= w_max * (1.0 - 1e-5), "{what}");
        } else {
            assert_close(&after, &before, 1e-6, &what);
        }
    }
}

#[test]
fn spectral_hammer_sets_the_top_singular_value() {
    // A gap of 1/2 between the top two: 16 iterations reach (1/2)^64, far below f32 rounding.
    for (rows, cols) in SHAPES {
        for (sigmas, w_max, want) in [
            ([3.0, 1.5, 0.5], 2.0, [2.0, 1.5, 0.5]),
            ([0.8, 0.4, 0.1], 2.0, [2.0, 0.4, 0.1]),
            ([3.0, 1.5, 0.5], 1.0, [1.5, 1.0, 0.5]),
        ] {
            let w = weight(rows, cols, &sigmas, 14);
            let (out, report) = apply(
                &SpectralHammer {
                    w_max,
                    ..SpectralHammer::default()
                },
                &w,
                &Step::default(),
            )
            .unwrap();
            assert_close(
                &rms_sigmas(&out)[..3],
                &want,
                1e-4,
                &format!("hammer {rows}×{cols} {sigmas:?}"),
            );
            assert!((report.norm_before.unwrap() - sigmas[0]).abs() < 1e-4);
        }
    }
}

#[test]
fn spectral_weight_decay_shrinks_only_the_top_singular_value() {
    let decay = SpectralWeightDecay {
        spectral_wd: 0.1,
        ..SpectralWeightDecay::default()
    };
    for (rows, cols) in SHAPES {
        let w = weight(rows, cols, &[3.0, 1.0, 0.5], 15);
        let (out, _) = apply(&decay, &w, &Step::default()).unwrap();
        assert_close(
            &rms_sigmas(&out)[..3],
            &[2.7, 1.0, 0.5],
            1e-4,
            &format!("spectral wd {rows}×{cols}"),
        );
    }
}

#[test]
fn weight_decay_is_the_decoupled_factor() {
    let w = Tensor::new(&[[1.0f32, -2.0], [0.5, 4.0]], &Device::Cpu).unwrap();
    // 1 − wd·lr·t = 1 − 0.5·0.1·0.4 = 0.98.
    let step = Step {
        lr: 0.1,
        target_norm: 0.4,
        ..Step::default()
    };
    let (out, _) = apply(&WeightDecay { wd: 0.5 }, &w, &step).unwrap();
    let got = out.to_vec2::<f32>().unwrap();
    assert_eq!(got, vec![vec![0.98f32, -1.96], vec![0.49, 3.92]]);
    let gain = Tensor::new(&[2.0f32, 3.0], &Device::Cpu).unwrap();
    let (out, _) = apply(
        &WeightDecay { wd: 0.5 },
        &gain,
        &Step {
            role: ParamRole::Vector,
            ..step
        },
    )
    .unwrap();
    assert_eq!(out.to_vec1::<f32>().unwrap(), vec![1.96f32, 2.94]);
    let err = apply(
        &WeightDecay { wd: 20.0 },
        &w,
        &Step {
            lr: 0.1,
            ..Step::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("lower wd"), "{err}");
}

#[test]
fn embedding_column_cap_caps_each_column_rms() {
    // Columns (tokens) with RMS 0.5, 2 and 10 over d_embed = 2.
    let w = Tensor::new(&[[0.5f32, 2.0, -10.0], [-0.5, 2.0, 10.0]], &Device::Cpu).unwrap();
    let step = Step {
        role: ParamRole::Embedding,
        ..Step::default()
    };
    let (out, report) = apply(&EmbeddingColumnCap::default(), &w, &step).unwrap();
    assert_eq!(
        out.to_vec2::<f32>().unwrap(),
        vec![vec![0.5f32, 1.0, -1.0], vec![-0.5, 1.0, 1.0]]
    );
    assert_eq!(report.norm_before, Some(10.0));
    let err = apply(&EmbeddingColumnCap::default(), &w, &Step::default()).unwrap_err();
    assert!(
        err.to_string().contains("does not apply to Hidden"),
        "{err}"
    );
}

fn all_matrix_constraints() -> Vec<Box<dyn WeightConstraint>> {
    vec![
        Box::new(SpectralWeightDecay::default()),
        Box::new(SpectralNormalize::default()),
        Box::new(SpectralSoftCap::default()),
        Box::new(SpectralHammer::default()),
        Box::new(SpectralHardCap::default()),
        Box::new(SpectralHardCap {
            mode: HardCapMode::ExactClip,
            ..SpectralHardCap::default()
        }),
        Box::new(Stiefel::default()),
        Box::new(SvdClip::default()),
    ]
}

#[test]
fn bad_input_is_a_clear_error_and_writes_nothing() {
    for c in all_matrix_constraints() {
        let name = c.typetag_name();
        for dims in [vec![8], vec![2, 3, 4]] {
            let t = Tensor::ones(dims.clone(), DType::F32, &Device::Cpu).unwrap();
            let err = apply(&*c, &t, &Step::default()).unwrap_err().to_string();
            assert!(
                err.contains("2-D") && err.contains("layer.weight"),
                "{name} on {dims:?}: {err}"
            );
        }
        for bad in [f32::NAN, f32::INFINITY] {
            let mut data = vec![0.5f32; 12];
            data[5] = bad;
            let t = Tensor::from_vec(data, (3, 4), &Device::Cpu).unwrap();
            let var = Var::from_tensor(&t).unwrap();
            let err = apply_in(&*c, &var, &Step::default(), &mut ConstraintState::new())
                .unwrap_err()
                .to_string();
            assert!(err.contains("NaN or Inf"), "{name}: {err}");
            assert_eq!(
                var.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()[5]
                    .to_bits(),
                bad.to_bits()
            );
        }
        let embedding = Step {
            role: ParamRole::Embedding,
            ..Step::default()
        };
        let err = apply(
            &*c,
            &Tensor::ones((3, 4), DType::F32, &Device::Cpu).unwrap(),
            &embedding,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("does not apply to Embedding"),
            "{name}: {err}"
        );
    }
}

#[test]
fn a_zero_matrix_is_left_zero() {
    for c in all_matrix_constraints() {
        for (rows, cols) in SHAPES {
            let zero = Tensor::zeros((rows, cols), DType::F32, &Device::Cpu).unwrap();
            let (out, _) = apply(&*c, &zero, &Step::default()).unwrap();
            let total = out
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert_eq!(total, 0.0, "{} changed a zero matrix", c.typetag_name());
        }
    }
}

#[test]
fn nonpositive_w_max_and_bad_settings_fail_validation() {
    let bad: Vec<Box<dyn WeightConstraint>> = vec![
        Box::new(SpectralNormalize {
            w_max: 0.0,
            ..SpectralNormalize::default()
        }),
        Box::new(SpectralSoftCap {
            w_max: -1.0,
            ..SpectralSoftCap::default()
        }),
        Box::new(SpectralHammer {
            w_max: f64::NAN,
            ..SpectralHammer::default()
        }),
        Box::new(SpectralHardCap {
            w_max: 0.0,
            ..SpectralHardCap::default()
        }),
        Box::new(Stiefel {
            w_max: -2.0,
            ..Stiefel::default()
        }),
        Box::new(SvdClip { w_max: 0.0 }),
        Box::new(EmbeddingColumnCap { max_rms: 0.0 }),
    ];
    for c in bad {
        let err = c.validate().unwrap_err();
        assert!(
            err.contains("must be a positive number"),
            "{}: {err}",
            c.typetag_name()
        );
    }
    assert!(SpectralNormalize {
        iters: 0,
        ..SpectralNormalize::default()
    }
    .validate()
    .is_err());
    assert!(SpectralWeightDecay {
        spectral_wd: 1.5,
        ..SpectralWeightDecay::default()
    }
    .validate()
    .is_err());
    assert!(WeightDecay { wd: -0.1 }.validate().is_err());
}

#[test]
fn configs_read_from_ron_with_defaults_and_reject_unknown_fields() {
    let c: Box<dyn WeightConstraint> =
        ron::from_str(r#"(type: "SpectralSoftCap", cfg: (w_max: 2.0))"#).unwrap();
    assert_eq!(
        spectra_core::registry::to_ron(&c),
        spectra_core::registry::to_ron(
            &(Box::new(SpectralSoftCap {
                w_max: 2.0,
                ..SpectralSoftCap::default()
            }) as Box<dyn WeightConstraint>)
        )
    );
    let c: Box<dyn WeightConstraint> =
        ron::from_str(r#"(type: "SpectralHardCap", cfg: (w_max: 1.0, mode: ExactClip))"#).unwrap();
    assert!(format!("{c:?}").contains("ExactClip"));
    let err = ron::from_str::<Box<dyn WeightConstraint>>(
        r#"(type: "SpectralSoftCap", cfg: (wmax: 2.0))"#,
    )
    .unwrap_err();
    assert!(err.to_string().contains("wmax"), "{err}");
}

#[test]
fn persistent_power_vector_is_kept_in_state_and_converges_across_steps() {
    // σ₁ = 1, σ₂ = 0.97: two fresh iterations are far off; two per step from the kept vector converge.
    let w = weight(40, 30, &[1.0, 0.97, 0.9, 0.5], 16);
    let exact = rms_sigmas(&w)[0];
    let persistent = SpectralNormalize {
        w_max: 10.0,
        iters: 2,
        persistent_vector: true,
    };
    let fresh = SpectralNormalize {
        persistent_vector: false,
        ..persistent.clone()
    };
    let var = Var::from_tensor(&w).unwrap();
    let mut state = ConstraintState::new();
    let mut estimate = 0.0;
    for seed in 0..40 {
        estimate = apply_in(
            &persistent,
            &var,
            &Step {
                seed,
                ..Step::default()
            },
            &mut state,
        )
        .unwrap()
        .norm_before
        .unwrap();
    }
    assert_eq!(state.get("power_vector").unwrap().dims(), &[30]);
    let fresh_estimate = apply(&fresh, &w, &Step::default())
        .unwrap()
        .1
        .norm_before
        .unwrap();
    // 80 accumulated iterations: (0.97)^160 ≈ 0.8% of the second direction's weight left.
    assert!(
        (exact - estimate) / exact < 1e-3,
        "persistent: {estimate} vs {exact}"
    );
    assert!(
        (exact - fresh_estimate) / exact > (exact - estimate) / exact,
        "fresh {fresh_estimate} vs persistent {estimate}"
    );
}
