//! Conformance of optimizers: the contract of [`Optimizer`], checked over short random runs.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use super::tensors::{bits, check_finite, gaussian, run_cases, with_entry};
use crate::linalg::rms_scale;
use crate::linalg::svd::sigma_max;
use crate::{Optimizer, OptimizerStep, Param, ParamRole};

/// The group every check runs on: matrices of several shapes and target norms, the last one never
/// given a gradient.
const SHAPES: [(usize, usize); 4] = [(6, 4), (3, 7), (5, 5), (4, 3)];
const WITHOUT_GRAD: usize = 3;
const STEPS: u64 = 5;
/// Steps taken before saving the state in the resume check.
const SAVE_AT: u64 = 3;
/// Slack on an optimizer's own update bound: f32 arithmetic in the update and in W_new − W_old, whose
/// spectral norm is then computed exactly in f64.
const BOUND_SLACK: f64 = 1e-3;

fn fail(e: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

fn params(seed: u64) -> Vec<Param> {
    SHAPES
        .iter()
        .enumerate()
        .map(|(i, &(r, c))| {
            let w = gaussian(
                &[r, c],
                1.0 / (c as f64).sqrt(),
                seed.wrapping_add(i as u64),
            );
            let role = if i == 2 {
                ParamRole::Head
            } else {
                ParamRole::Hidden
            };
            let var = Var::from_tensor(&w).expect("a CPU tensor");
            Param::new(format!("layer{i}.weight"), var, role).with_target_norm(if i == 1 {
                0.5
            } else {
                1.0
            })
        })
        .collect()
}

fn at(step: u64) -> OptimizerStep {
    OptimizerStep {
        step,
        lr_factor: 1.0 - step as f64 / 10.0,
    }
}

/// The gradients of step `step`: Gaussian, for every parameter but the last.
fn grads(params: &[Param], seed: u64, step: u64) -> GradStore {
    let mut store = GradStore::default();
    for (i, p) in params
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != WITHOUT_GRAD)
    {
        let g = gaussian(
            p.var.dims(),
            1.0,
            seed ^ (step << 32) ^ ((i as u64 + 1) * 0x9e37_79b9),
        );
        store.insert(p.var.as_tensor(), g);
    }
    store
}

fn weights(params: &[Param]) -> Vec<Vec<u64>> {
    params.iter().map(|p| bits(p.var.as_tensor())).collect()
}

/// Runs steps `from..to`, checking the per-step properties.
fn run(
    opt: &mut dyn Optimizer,
    params: &[Param],
    seed: u64,
    from: u64,
    to: u64,
) -> Result<(), TestCaseError> {
    for step in from..to {
        let before: Vec<Tensor> = params
            .iter()
            .map(|p| p.var.as_tensor().copy())
            .collect::<Result<_, _>>()
            .map_err(fail)?;
        let lr = opt.lr(&at(step));
        prop_assert!(lr.is_finite() && lr >= 0.0, "lr at step {} is {}", step, lr);
        let bounds: Vec<Option<f64>> = params
            .iter()
            .map(|p| opt.update_norm_bound(p, &at(step)))
            .collect();
        for (p, bound) in params.iter().zip(&bounds) {
            prop_assert!(
                bound.is_some() == opt.bounds_updates(),
                "bounds_updates() is {} but update_norm_bound for matrix {} is {:?}: configs pair \
                 constraints that need a bound (SpectralSoftCap) with optimizers by bounds_updates()",
                opt.bounds_updates(),
                p.name,
                bound
            );
        }
        opt.step(params, &grads(params, seed, step), &at(step))
            .map_err(|e| fail(format!("step {step} with finite gradients failed: {e}")))?;
        for ((p, w0), bound) in params.iter().zip(&before).zip(bounds) {
            let w = p.var.as_tensor();
            prop_assert_eq!(w.dims(), w0.dims(), "step changed the shape of {}", p.name);
            check_finite(w, &format!("{} after step {step}", p.name))?;
            let Some(bound) = bound else { continue };
            prop_assert!(
                bound.is_finite() && bound >= 0.0,
                "update bound {} for {}",
                bound,
                p.name
            );
            let (r, c) = w.dims2().map_err(fail)?;
            let norm = sigma_max(&(w - w0).map_err(fail)?).map_err(fail)? / rms_scale(r, c);
            prop_assert!(
                norm <= bound * (1.0 + BOUND_SLACK) + 1e-7,
                "the update of {} has RMS→RMS norm {} above the bound {} the optimizer reported",
                p.name,
                norm,
                bound
            );
        }
        prop_assert!(
            bits(params[WITHOUT_GRAD].var.as_tensor()) == bits(&before[WITHOUT_GRAD]),
            "step {} changed {}, which had no gradient",
            step,
            params[WITHOUT_GRAD].name
        );
    }
    for (key, t) in opt.state() {
        check_finite(&t, &format!("state entry `{key}`"))?;
        prop_assert!(
            params
                .iter()
                .any(|p| key.starts_with(&format!("{}.", p.name))),
            "state entry `{}` does not start with a parameter's name and a dot",
            key
        );
    }
    Ok(())
}

fn state_map(opt: &dyn Optimizer) -> HashMap<String, Tensor> {
    opt.state().into_iter().collect()
}

/// Holds an optimizer to its contract; `make` builds a fresh instance. Panics naming the violated
/// property. Checked over short runs on a group of matrices (one without a gradient):
/// - the config round-trips through RON and validates;
/// - every step succeeds, writes only finite values, keeps shapes, leaves the parameter without a
///   gradient untouched, and keeps each update within the bound the optimizer reports, if any;
/// - it reports a bound for every matrix exactly when `bounds_updates()` says it does;
/// - runs are deterministic; saving the state mid-run and loading it into a fresh instance continues
///   bit for bit; state entries are finite and named `<param>.<...>`;
/// - a NaN or Inf gradient is an error naming the parameter, and changes neither weights nor state;
/// - loading a state with an entry missing or misshapen is an error naming the entry.
pub fn check_optimizer(make: &dyn Fn() -> Box<dyn Optimizer>) {
    let name = make().typetag_name();
    check_round_trip(&*make());
    run_cases(name, 8, any::<u64>(), |seed| {
        let reference = params(seed);
        let mut opt = make();
        run(&mut *opt, &reference, seed, 0, STEPS)?;

        let again = params(seed);
        run(&mut *make(), &again, seed, 0, STEPS)?;
        prop_assert!(
            weights(&again) == weights(&reference),
            "two runs with the same inputs differ"
        );

        let resumed = params(seed);
        let mut first = make();
        run(&mut *first, &resumed, seed, 0, SAVE_AT)?;
        let saved = state_map(&*first);
        let mut second = make();
        second
            .load_state(&saved, &resumed)
            .map_err(|e| fail(format!("load_state of its own state failed: {e}")))?;
        run(&mut *second, &resumed, seed, SAVE_AT, STEPS)?;
        prop_assert!(
            weights(&resumed) == weights(&reference),
            "saving the state after step {} and loading it into a fresh instance does not continue identically",
            SAVE_AT
        );
        bad_state_is_refused(&make, &saved, &resumed)
    });
    run_cases(
        name,
        6,
        (any::<u64>(), 0..3usize, 0usize..20),
        |(seed, kind, index)| {
            non_finite_gradient_is_refused(
                &make,
                seed,
                [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][kind],
                index,
            )
        },
    );
}

fn check_round_trip(opt: &dyn Optimizer) {
    let name = opt.typetag_name();
    let text = crate::registry::to_ron(&opt);
    let back: Box<dyn Optimizer> =
        crate::config::ron_options()
            .from_str(&text)
            .unwrap_or_else(|e| {
                panic!("`{name}`: its config `{text}` does not parse back from RON: {e}")
            });
    assert_eq!(
        text,
        crate::registry::to_ron(&back),
        "`{name}`: the config changes in a RON round trip"
    );
    if let Err(e) = opt.validate() {
        panic!("`{name}`: the config under test does not validate: {e}");
    }
}

fn bad_state_is_refused(
    make: &dyn Fn() -> Box<dyn Optimizer>,
    saved: &HashMap<String, Tensor>,
    params: &[Param],
) -> Result<(), TestCaseError> {
    let mut keys: Vec<&String> = saved.keys().collect();
    keys.sort();
    let Some(&key) = keys.first() else {
        return Ok(());
    };

    let mut missing = saved.clone();
    missing.remove(key);
    match make().load_state(&missing, params) {
        Ok(()) => {
            return Err(fail(format!(
                "load_state accepted a state without its entry `{key}`"
            )))
        }
        Err(e) => prop_assert!(
            e.to_string().contains(key.as_str()),
            "the missing-entry error does not name `{}`: {}",
            key,
            e
        ),
    }

    let mut misshapen = saved.clone();
    let t = &saved[key];
    let mut dims = t.dims().to_vec();
    dims.push(2);
    misshapen.insert(
        key.clone(),
        Tensor::zeros(dims, t.dtype(), t.device()).map_err(fail)?,
    );
    match make().load_state(&misshapen, params) {
        Ok(()) => Err(fail(format!(
            "load_state accepted entry `{key}` with shape {:?}",
            t.dims()
        ))),
        Err(e) => {
            prop_assert!(
                e.to_string().contains(key.as_str()),
                "the misshapen-entry error does not name `{}`: {}",
                key,
                e
            );
            Ok(())
        }
    }
}

fn non_finite_gradient_is_refused(
    make: &dyn Fn() -> Box<dyn Optimizer>,
    seed: u64,
    bad: f32,
    index: usize,
) -> Result<(), TestCaseError> {
    let reference = params(seed);
    let mut clean = make();
    run(&mut *clean, &reference, seed, 0, 2)?;

    let tested = params(seed);
    let mut opt = make();
    run(&mut *opt, &tested, seed, 0, 1)?;
    let before = weights(&tested);
    let mut poisoned = grads(&tested, seed, 1);
    let victim = &tested[1];
    let g = poisoned
        .get(victim.var.as_tensor())
        .expect("a gradient")
        .clone();
    poisoned.insert(victim.var.as_tensor(), with_entry(&g, index, bad));
    match opt.step(&tested, &poisoned, &at(1)) {
        Ok(()) => return Err(fail(format!("a gradient containing {bad} was accepted"))),
        Err(e) => prop_assert!(
            e.to_string().contains(&victim.name),
            "the error does not name `{}`: {}",
            victim.name,
            e
        ),
    }
    prop_assert!(
        weights(&tested) == before,
        "a refused step ({} in a gradient) changed weights",
        bad
    );
    run(&mut *opt, &tested, seed, 1, 2)?;
    prop_assert!(
        weights(&tested) == weights(&reference),
        "a refused step ({} in a gradient) changed the optimizer's state",
        bad
    );
    Ok(())
}
