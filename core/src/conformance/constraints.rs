//! Conformance of weight constraints: the contract of [`WeightConstraint`], checked on random matrices.

use std::panic::{catch_unwind, AssertUnwindSafe};

use candle_core::{Tensor, Var};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use rand::SeedableRng;

pub use super::optimizers::check_optimizer;
use super::tensors::{bits, check_finite, gaussian, run_cases, with_entry};
use crate::{
    ConstraintContext, ConstraintReport, ConstraintState, ParamRole, SpectraRng, WeightConstraint,
};

/// The context every check applies the constraint in: a Muon-like step at lr 0.01, target norm 1.
const LR: f64 = 0.01;
const NAME: &str = "conformance.weight";

/// Entry scales from tiny to σ_max ≫ 1.
const SCALES: [f64; 4] = [1e-3, 0.3, 1.0, 30.0];

/// Holds a weight constraint to its contract; panics naming the violated property. Checked:
/// - the config round-trips through RON and validates;
/// - on random matrices of several shapes and scales (and 1-D tensors if it accepts gains), applied
///   twice with its state: it succeeds, keeps shape and dtype, writes only finite values, keeps its
///   state finite, and is deterministic given the seed;
/// - a zero matrix is never turned into NaN;
/// - it works without an optimizer's update bound unless `needs_update_bound()` says it needs one;
/// - NaN or Inf in the weight is an error and leaves the weight unchanged;
/// - for matrix constraints, a 1-D or 3-D tensor is an error (weight unchanged) or a finite no-op,
///   never a panic.
pub fn check_weight_constraint(constraint: &dyn WeightConstraint) {
    let name = constraint.typetag_name();
    check_round_trip(constraint);
    let Some(role) = [
        ParamRole::Hidden,
        ParamRole::Head,
        ParamRole::Embedding,
        ParamRole::Vector,
    ]
    .into_iter()
    .find(|r| constraint.accepts(*r)) else {
        panic!("`{name}` accepts no parameter role at all");
    };
    let matrix = role != ParamRole::Vector;
    let shape = (1usize..=12, 1usize..=12)
        .prop_map(move |(r, c)| if matrix { vec![r, c] } else { vec![r * c] });
    run_cases(
        name,
        24,
        (shape, 0..SCALES.len(), any::<u64>()),
        |(dims, scale, seed)| {
            valid_input_is_constrained(constraint, role, &dims, SCALES[scale], seed)
        },
    );
    let dims: &[usize] = if matrix { &[5, 3] } else { &[7] };
    run_cases(name, 1, Just(()), |()| {
        zero_stays_finite(constraint, role, dims)
    });
    run_cases(
        name,
        8,
        (0usize..15, any::<u64>(), 0..3usize),
        |(index, seed, kind)| {
            let bad = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][kind];
            non_finite_is_refused(constraint, role, dims, index, bad, seed)
        },
    );
    if matrix {
        for dims in [vec![6], vec![2, 3, 4]] {
            run_cases(name, 1, Just(()), |()| {
                not_a_matrix_is_handled(constraint, role, &dims)
            });
        }
    }
}

fn check_round_trip(constraint: &dyn WeightConstraint) {
    let name = constraint.typetag_name();
    let text = crate::registry::to_ron(&constraint);
    let back: Box<dyn WeightConstraint> = crate::config::ron_options()
        .from_str(&text)
        .unwrap_or_else(|e| {
            panic!("`{name}`: its config `{text}` does not parse back from RON: {e}")
        });
    let again = crate::registry::to_ron(&back);
    assert_eq!(
        text, again,
        "`{name}`: the config changes in a RON round trip"
    );
    if let Err(e) = constraint.validate() {
        panic!("`{name}`: the config under test does not validate: {e}");
    }
}

/// Applies the constraint at `step` with the given state and a generator seeded by `seed`.
fn apply(
    constraint: &dyn WeightConstraint,
    role: ParamRole,
    weight: &Var,
    step: u64,
    seed: u64,
    state: &mut ConstraintState,
) -> crate::Result<ConstraintReport> {
    let mut rng = SpectraRng::seed_from_u64(seed);
    let mut ctx = ConstraintContext {
        step,
        lr: LR,
        target_norm: 1.0,
        // As an optimizer without a bound (AdamW) gives it, unless the constraint asks for one.
        update_norm_bound: constraint.needs_update_bound().then_some(LR),
        role,
        name: NAME,
        rng: &mut rng,
        state,
    };
    constraint.apply(weight, &mut ctx)
}

/// Two steps from a fresh state; returns the weight after each and the final state.
fn two_steps(
    constraint: &dyn WeightConstraint,
    role: ParamRole,
    w0: &Tensor,
    seed: u64,
) -> Result<(Vec<Tensor>, ConstraintState), TestCaseError> {
    let var = Var::from_tensor(w0).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut state = ConstraintState::new();
    let mut after = Vec::new();
    for step in 0..2 {
        apply(
            constraint,
            role,
            &var,
            step,
            seed.wrapping_add(step),
            &mut state,
        )
        .map_err(|e| {
            let without = if constraint.needs_update_bound() {
                ""
            } else {
                " (applied without an optimizer's update bound, as after AdamW: a constraint that \
                 needs one says so in needs_update_bound)"
            };
            TestCaseError::fail(format!(
                "step {step} on a valid {:?} matrix failed{without}: {e}",
                w0.dims()
            ))
        })?;
        after.push(
            var.as_tensor()
                .copy()
                .map_err(|e| TestCaseError::fail(e.to_string()))?,
        );
    }
    Ok((after, state))
}

fn valid_input_is_constrained(
    constraint: &dyn WeightConstraint,
    role: ParamRole,
    dims: &[usize],
    scale: f64,
    seed: u64,
) -> Result<(), TestCaseError> {
    let w0 = gaussian(dims, scale, seed);
    let (after, state) = two_steps(constraint, role, &w0, seed)?;
    for w in &after {
        prop_assert_eq!(w.dims(), dims, "the constraint changed the weight's shape");
        prop_assert_eq!(
            w.dtype(),
            w0.dtype(),
            "the constraint changed the weight's dtype"
        );
        check_finite(w, "the constrained weight")?;
    }
    for (key, t) in &state {
        check_finite(t, &format!("state entry `{key}`"))?;
    }
    let (again, _) = two_steps(constraint, role, &w0, seed)?;
    for (a, b) in after.iter().zip(&again) {
        prop_assert!(
            bits(a) == bits(b),
            "not deterministic: the same seed and input gave different weights"
        );
    }
    Ok(())
}

fn zero_stays_finite(
    constraint: &dyn WeightConstraint,
    role: ParamRole,
    dims: &[usize],
) -> Result<(), TestCaseError> {
    let zero = gaussian(dims, 0.0, 0);
    let var = Var::from_tensor(&zero).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let result = apply(constraint, role, &var, 0, 1, &mut ConstraintState::new());
    check_finite(var.as_tensor(), "the constrained zero matrix")?;
    if result.is_err() {
        prop_assert!(
            bits(var.as_tensor()) == bits(&zero),
            "an error on a zero matrix changed the weight"
        );
    }
    Ok(())
}

fn non_finite_is_refused(
    constraint: &dyn WeightConstraint,
    role: ParamRole,
    dims: &[usize],
    index: usize,
    bad: f32,
    seed: u64,
) -> Result<(), TestCaseError> {
    let w0 = with_entry(&gaussian(dims, 1.0, seed), index, bad);
    let var = Var::from_tensor(&w0).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let result = apply(constraint, role, &var, 0, seed, &mut ConstraintState::new());
    prop_assert!(
        result.is_err(),
        "a weight containing {} was accepted instead of refused",
        bad
    );
    prop_assert!(
        bits(var.as_tensor()) == bits(&w0),
        "refusing a weight containing {} changed it",
        bad
    );
    Ok(())
}

fn not_a_matrix_is_handled(
    constraint: &dyn WeightConstraint,
    role: ParamRole,
    dims: &[usize],
) -> Result<(), TestCaseError> {
    let w0 = gaussian(dims, 1.0, 3);
    let var = Var::from_tensor(&w0).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        apply(constraint, role, &var, 0, 3, &mut ConstraintState::new())
    }));
    match outcome {
        Err(_) => Err(TestCaseError::fail(format!(
            "panicked on a tensor of shape {dims:?} instead of an error"
        ))),
        Ok(Err(_)) => {
            prop_assert!(
                bits(var.as_tensor()) == bits(&w0),
                "an error on a {:?} tensor changed it",
                dims
            );
            Ok(())
        }
        Ok(Ok(_)) => {
            prop_assert_eq!(
                var.as_tensor().dims(),
                dims,
                "changed the shape of a {:?} tensor",
                dims
            );
            check_finite(var.as_tensor(), "the constrained non-matrix tensor")
        }
    }
}
