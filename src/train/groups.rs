//! Parameter groups: the config's optimizer and constraints with the model parameters routed to them.

use std::time::Instant;

use candle_core::backprop::GradStore;
use spectra_core::{
    ConstraintContext, ConstraintState, Optimizer, OptimizerStep, Param, Result, SpectraRng,
    WeightConstraint,
};

use super::config::ParamGroupConfig;
use super::routing::RoutedParam;

pub struct Group {
    pub name: String,
    pub params: Vec<Param>,
    pub optimizer: Box<dyn Optimizer>,
    pub constraints: Vec<Box<dyn WeightConstraint>>,
    /// `[constraint][param]`: each constraint's persistent state for each of the group's parameters.
    pub states: Vec<Vec<ConstraintState>>,
}

/// The groups, each with the parameters `routed` (from [`route`](super::routing::route)) gives it
/// and fresh constraint states.
pub fn assemble(
    params: &[Param],
    configs: Vec<ParamGroupConfig>,
    routed: &[RoutedParam],
) -> Vec<Group> {
    let mut groups: Vec<Group> = configs
        .into_iter()
        .map(|g| Group {
            name: g.name,
            params: Vec::new(),
            optimizer: g.optimizer,
            constraints: g.constraints,
            states: Vec::new(),
        })
        .collect();
    for (p, r) in params.iter().zip(routed) {
        groups[r.group].params.push(p.clone());
    }
    for g in &mut groups {
        g.states = g
            .constraints
            .iter()
            .map(|_| vec![ConstraintState::new(); g.params.len()])
            .collect();
    }
    groups
}

/// One training update after the backward pass: each group's optimizer step, then each group's
/// constraints on each of its parameters. Returns the seconds spent in the constraints.
pub fn update(
    groups: &mut [Group],
    grads: &GradStore,
    at: &OptimizerStep,
    rng: &mut SpectraRng,
) -> Result<f64> {
    for g in groups.iter_mut() {
        g.optimizer.step(&g.params, grads, at)?;
    }
    let t0 = Instant::now();
    constrain(groups, at, rng)?;
    Ok(t0.elapsed().as_secs_f64())
}

/// Every group's constraints on each of its parameters, with the step's learning rate and the
/// optimizer's update bound.
pub fn constrain(groups: &mut [Group], at: &OptimizerStep, rng: &mut SpectraRng) -> Result<()> {
    for g in groups.iter_mut() {
        let lr = g.optimizer.lr(at);
        for (c, states) in g.constraints.iter().zip(g.states.iter_mut()) {
            for (p, state) in g.params.iter().zip(states.iter_mut()) {
                let mut ctx = ConstraintContext {
                    step: at.step,
                    lr,
                    target_norm: p.target_norm,
                    update_norm_bound: g.optimizer.update_norm_bound(p, at),
                    role: p.role,
                    name: &p.name,
                    rng,
                    state,
                };
                c.apply(&p.var, &mut ctx)?;
            }
        }
    }
    Ok(())
}
