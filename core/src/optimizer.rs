//! `Optimizer`: updates a group of parameters from their gradients.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::Tensor;

use crate::param::Param;
use crate::Result;

/// Where in the run a step is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OptimizerStep {
    /// 0-based step index.
    pub step: u64,
    /// The learning-rate schedule's factor at this step; the optimizer's rate is `lr × lr_factor`.
    pub lr_factor: f64,
}

/// An optimizer, configured from RON as `(type: "Muon", cfg: (lr: 0.1))`. It owns its state (moments,
/// momentum buffers), keyed by parameter name; the config fields are what serializes.
#[typetag::serde(tag = "type", content = "cfg", deny_unknown_fields)]
pub trait Optimizer: std::fmt::Debug + Send + Sync {
    /// Checks the configuration when it is read; the message says what to change.
    fn validate(&self) -> std::result::Result<(), String> {
        Ok(())
    }

    /// The scheduled learning rate at this step.
    fn lr(&self, at: &OptimizerStep) -> f64;

    /// Applies one update to every parameter of the group that has a gradient.
    fn step(&mut self, params: &[Param], grads: &GradStore, at: &OptimizerStep) -> Result<()>;

    /// A bound on the RMS→RMS norm of this step's update to `param`, when the optimizer has one.
    fn update_norm_bound(&self, _param: &Param, _at: &OptimizerStep) -> Option<f64> {
        None
    }

    /// Whether [`update_norm_bound`](Self::update_norm_bound) gives a bound for every matrix
    /// parameter, so that a constraint that needs one
    /// ([`WeightConstraint::needs_update_bound`](crate::WeightConstraint::needs_update_bound)) can be
    /// paired with this optimizer: a config pairing it with one that says no is refused when read.
    /// The conformance suite holds the two methods to agree.
    fn bounds_updates(&self) -> bool {
        false
    }

    /// The optimizer's state as named tensors (names start with the parameter's name), for checkpoints.
    fn state(&self) -> Vec<(String, Tensor)>;

    /// Restores what `state` returned; a missing or misshapen entry is an error naming it.
    fn load_state(&mut self, state: &HashMap<String, Tensor>, params: &[Param]) -> Result<()>;
}
