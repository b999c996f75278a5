//! `WeightConstraint`: a rule applied to one weight matrix after each optimizer step.

use std::collections::BTreeMap;

use candle_core::{Tensor, Var};

use crate::param::ParamRole;
use crate::rng::SpectraRng;
use crate::Result;

/// Per-parameter state a constraint keeps between steps (e.g. a persistent power-iteration vector),
/// saved in checkpoints under the parameter's name.
pub type ConstraintState = BTreeMap<String, Tensor>;

/// Everything a constraint may need to know about the step it follows.
pub struct ConstraintContext<'a> {
    /// 0-based index of the optimizer step just taken.
    pub step: u64,
    /// The scheduled learning rate the optimizer used on this parameter in that step.
    pub lr: f64,
    /// The parameter's target norm (modular mass bookkeeping); weight decay is multiplied by it.
    pub target_norm: f64,
    /// The optimizer's bound on the RMS→RMS norm of this step's update, when it has one (Muon does:
    /// `lr × target × max of its polynomial`). The spectral soft cap couples its strength to it.
    pub update_norm_bound: Option<f64>,
    pub role: ParamRole,
    /// The parameter's name, for error messages and state keys.
    pub name: &'a str,
    /// Seeded; e.g. the start vector of a power iteration.
    pub rng: &'a mut SpectraRng,
    /// This parameter's persistent state for this constraint.
    pub state: &'a mut ConstraintState,
}

/// What a constraint did, for logs: estimated RMS→RMS norms (σ_max of W/scale) before and after.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConstraintReport {
    pub norm_before: Option<f64>,
    pub norm_after: Option<f64>,
}

/// A weight constraint, configured from RON as `(type: "SpectralSoftCap", cfg: (w_max: 2.0))`.
///
/// Implementations modify `weight` in place with `Var::set`, never write NaN into it (non-finite input
/// is an error), and keep all work on the weight's device.
#[typetag::serde(tag = "type", content = "cfg", deny_unknown_fields)]
pub trait WeightConstraint: std::fmt::Debug + Send + Sync {
    /// Checks the configuration when it is read (e.g. `w_max > 0`); the message says what to change.
    fn validate(&self) -> std::result::Result<(), String> {
        Ok(())
    }

    /// Whether the constraint accepts parameters of this role (a matrix constraint on a 1-D gain is a
    /// config error, found before training starts).
    fn accepts(&self, role: ParamRole) -> bool {
        role != ParamRole::Vector
    }

    /// Whether the constraint needs the optimizer's bound on each update
    /// ([`ConstraintContext::update_norm_bound`]); only optimizers that say they give one
    /// ([`Optimizer::bounds_updates`](crate::Optimizer::bounds_updates)) are paired with it, and the
    /// conformance suite applies a constraint that says no without a bound.
    fn needs_update_bound(&self) -> bool {
        false
    }

    fn apply(&self, weight: &Var, ctx: &mut ConstraintContext<'_>) -> Result<ConstraintReport>;
}
