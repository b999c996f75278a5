//! The constraint and optimizer suites catch broken plugins: each plugin here breaks one property.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use super::{check_optimizer, check_weight_constraint};
use crate::{
    ConstraintContext, ConstraintReport, Optimizer, OptimizerStep, Param, Result, WeightConstraint,
};

/// Halves the weight without looking at it: NaN in, NaN out.
#[derive(Debug, Serialize, Deserialize)]
struct HalvesBlindly;

#[typetag::serde]
impl WeightConstraint for HalvesBlindly {
    fn apply(&self, weight: &Var, _ctx: &mut ConstraintContext<'_>) -> Result<ConstraintReport> {
        weight.set(&weight.as_tensor().affine(0.5, 0.0)?)?;
        Ok(ConstraintReport::default())
    }
}

/// Scales the weight by the optimizer's update bound, without saying it needs one: after AdamW,
/// which has none, it fails at the first step.
#[derive(Debug, Serialize, Deserialize)]
struct NeedsABoundQuietly;

#[typetag::serde]
impl WeightConstraint for NeedsABoundQuietly {
    fn apply(&self, weight: &Var, ctx: &mut ConstraintContext<'_>) -> Result<ConstraintReport> {
        let eta = ctx
            .update_norm_bound
            .ok_or_else(|| crate::Error::invalid(ctx.name, "no update bound"))?;
        crate::linalg::ensure_finite(weight.as_tensor(), ctx.name, "weight")?;
        weight.set(&weight.as_tensor().affine(1.0 / (1.0 + eta), 0.0)?)?;
        Ok(ConstraintReport::default())
    }
}

/// Plain gradient descent that says it bounds its updates and reports no bound.
#[derive(Debug, Serialize, Deserialize)]
struct SaysItBounds;

/// Plain gradient descent that claims its update is bounded by lr, whatever the gradient.
#[derive(Debug, Serialize, Deserialize)]
struct Overclaims {
    lr: f64,
}

/// Momentum SGD that saves no state, so a resumed run restarts its momentum.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Forgetful {
    #[serde(skip)]
    buffers: HashMap<String, Tensor>,
}

fn descend(
    params: &[Param],
    grads: &GradStore,
    mut direction: impl FnMut(&Param, &Tensor) -> Result<Tensor>,
) -> Result<()> {
    for p in params {
        if let Some(g) = grads.get(p.var.as_tensor()) {
            crate::linalg::ensure_finite(g, &p.name, "gradient")?;
            let d = direction(p, g)?;
            p.var.set(&(p.var.as_tensor() - d.affine(0.1, 0.0)?)?)?;
        }
    }
    Ok(())
}

#[typetag::serde]
impl Optimizer for SaysItBounds {
    fn lr(&self, at: &OptimizerStep) -> f64 {
        0.1 * at.lr_factor
    }
    fn step(&mut self, params: &[Param], grads: &GradStore, _at: &OptimizerStep) -> Result<()> {
        descend(params, grads, |_, g| Ok(g.clone()))
    }
    fn bounds_updates(&self) -> bool {
        true
    }
    fn state(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }
    fn load_state(&mut self, _state: &HashMap<String, Tensor>, _params: &[Param]) -> Result<()> {
        Ok(())
    }
}

#[typetag::serde]
impl Optimizer for Overclaims {
    fn lr(&self, at: &OptimizerStep) -> f64 {
        self.lr * at.lr_factor
    }
    fn step(&mut self, params: &[Param], grads: &GradStore, _at: &OptimizerStep) -> Result<()> {
        descend(params, grads, |_, g| Ok(g.clone()))
    }
    fn update_norm_bound(&self, _param: &Param, at: &OptimizerStep) -> Option<f64> {
        Some(self.lr(at))
    }
    fn bounds_updates(&self) -> bool {
        true
    }
    fn state(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }
    fn load_state(&mut self, _state: &HashMap<String, Tensor>, _params: &[Param]) -> Result<()> {
        Ok(())
    }
}

#[typetag::serde]
impl Optimizer for Forgetful {
    fn lr(&self, at: &OptimizerStep) -> f64 {
        0.1 * at.lr_factor
    }
    fn step(&mut self, params: &[Param], grads: &GradStore, _at: &OptimizerStep) -> Result<()> {
        let buffers = &mut self.buffers;
        descend(params, grads, |p, g| {
            let b = match buffers.get(&p.name) {
                Some(b) => ((b * 0.9)? + g)?,
                None => g.clone(),
            };
            buffers.insert(p.name.clone(), b.clone());
            Ok(b)
        })
    }
    fn state(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }
    fn load_state(&mut self, _state: &HashMap<String, Tensor>, _params: &[Param]) -> Result<()> {
        Ok(())
    }
}

#[test]
#[should_panic(expected = "was accepted instead of refused")]
fn a_constraint_that_passes_nan_through_is_caught() {
    check_weight_constraint(&HalvesBlindly);
}

#[test]
#[should_panic(expected = "above the bound")]
fn an_optimizer_exceeding_its_reported_bound_is_caught() {
    check_optimizer(&|| Box::new(Overclaims { lr: 1e-3 }));
}

#[test]
#[should_panic(expected = "does not continue identically")]
fn an_optimizer_that_loses_its_momentum_on_resume_is_caught() {
    check_optimizer(&|| Box::new(Forgetful::default()));
}

#[test]
#[should_panic(expected = "applied without an optimizer's update bound")]
fn a_constraint_that_needs_an_update_bound_without_saying_so_is_caught() {
    check_weight_constraint(&NeedsABoundQuietly);
}

#[test]
#[should_panic(expected = "bounds_updates() is true but update_norm_bound")]
fn an_optimizer_that_says_it_bounds_updates_and_reports_none_is_caught() {
    check_optimizer(&|| Box::new(SaysItBounds));
}
