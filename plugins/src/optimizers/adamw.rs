//! `AdamW`: Adam with decoupled weight decay; a switch selects the Lipschitz paper's JAX variant
//! (docs/lipschitz.md §3.3).

use super::fused::adamw::{adamw_update, AdamWScalars};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use spectra_core::{Optimizer, OptimizerStep, Param, Result};

use super::state::{zeros_like, Layout, OptimizerState, ParamState};
use super::{decay_rate, for_param, nonnegative, positive};

/// m ← β₁m + (1−β₁)g, v ← β₂v + (1−β₂)g², d = m̂/(√v̂ + eps), W ← W(1 − wd·lr_t·c) − lr_t·d, with
/// m̂, v̂ bias-corrected by the parameter's own update count (c = 1).
///
/// `jax_variant` reproduces the paper's JAX Adam: no bias correction, eps = 1e-12, β₂ = 0.95, and the
/// decay multiplied by the parameter's target norm (c = t). It fixes those three values, so
/// `beta2`, `eps` and `bias_correction` must then stay at their defaults.
///
/// Every role is accepted, 1-D gains included. No update bound is reported (Adam's update has no
/// fixed spectral norm), so `SpectralSoftCap` cannot follow it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamW {
    pub lr: f64,
    #[serde(default = "beta1")]
    pub beta1: f64,
    #[serde(default = "beta2")]
    pub beta2: f64,
    #[serde(default = "eps")]
    pub eps: f64,
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default = "yes")]
    pub bias_correction: bool,
    #[serde(default)]
    pub jax_variant: bool,
    #[serde(skip)]
    state: OptimizerState,
}

fn beta1() -> f64 {
    0.9
}
fn beta2() -> f64 {
    0.999
}
fn eps() -> f64 {
    1e-8
}
fn yes() -> bool {
    true
}

const LAYOUT: Layout = Layout {
    count: "adam_steps",
    tensors: &["adam_m", "adam_v"],
};
const JAX_BETA2: f64 = 0.95;
const JAX_EPS: f64 = 1e-12;

impl Default for AdamW {
    fn default() -> Self {
        AdamW::new(1e-3)
    }
}

impl AdamW {
    pub fn new(lr: f64) -> Self {
        AdamW {
            lr,
            beta1: beta1(),
            beta2: beta2(),
            eps: eps(),
            weight_decay: 0.0,
            bias_correction: yes(),
            jax_variant: false,
            state: OptimizerState::default(),
        }
    }

    /// The paper's JAX Adam (β = (0.9, 0.95), eps 1e-12, no bias correction, decay × target norm).
    pub fn jax(lr: f64, weight_decay: f64) -> Self {
        AdamW {
            weight_decay,
            jax_variant: true,
            ..AdamW::new(lr)
        }
    }

    /// (β₂, eps, bias correction) in effect.
    fn effective(&self) -> (f64, f64, bool) {
        if self.jax_variant {
            (JAX_BETA2, JAX_EPS, false)
        } else {
            (self.beta2, self.eps, self.bias_correction)
        }
    }

    /// One fused pass over the weight, gradient and both moments (`fused::adamw`).
    fn update(&self, p: &Param, g: &Tensor, at: &OptimizerStep) -> Result<(Tensor, ParamState)> {
        let lr = self.lr(at);
        let (beta2, eps, bias_correction) = self.effective();
        let (count, m, v) = match self.state.get(&p.name) {
            Some(s) => (s.count, s.tensors[0].clone(), s.tensors[1].clone()),
            None => (0, zeros_like(p)?, zeros_like(p)?),
        };
        let count = count + 1;
        let (m_correction, v_correction) =
            AdamWScalars::corrections(self.beta1, beta2, count, bias_correction);
        let decay = self.weight_decay * lr * if self.jax_variant { p.target_norm } else { 1.0 };
        let scalars = AdamWScalars {
            beta1: self.beta1,
            beta2,
            m_correction,
            v_correction,
            eps,
            lr,
            weight_scale: 1.0 - decay,
        };
        let out =
            adamw_update(p.var.as_tensor(), g, &m, &v, &scalars).map_err(for_param(p, "AdamW"))?;
        Ok((
            out.weight,
            ParamState {
                count,
                tensors: vec![out.m, out.v],
            },
        ))
    }
}

#[typetag::serde]
impl Optimizer for AdamW {
    fn validate(&self) -> std::result::Result<(), String> {
        positive("lr", self.lr)?;
        decay_rate("beta1", self.beta1)?;
        decay_rate("beta2", self.beta2)?;
        positive("eps", self.eps)?;
        nonnegative("weight_decay", self.weight_decay)?;
        if self.jax_variant && (self.beta2 != beta2() || self.eps != eps() || !self.bias_correction)
        {
            return Err(format!(
                "jax_variant fixes beta2 = {JAX_BETA2}, eps = {JAX_EPS} and no bias correction; remove beta2, eps \
                 and bias_correction from the config, or turn jax_variant off"
            ));
        }
        Ok(())
    }

    super::per_parameter_optimizer_methods!();
}

spectra_core::register_plugin!(
    Optimizer,
    AdamW,
    "Adam with decoupled weight decay (jax_variant: the paper's JAX Adam)."
);
