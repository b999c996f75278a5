//! `Sgd`: stochastic gradient descent with (Nesterov) momentum, the simplest baseline.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use spectra_core::{Optimizer, OptimizerStep, Param, Result};

use super::state::{zeros_like, Layout, OptimizerState, ParamState};
use super::{decay_rate, nonnegative, positive};

/// b ← μb + g; d = b, or g + μb with `nesterov`; W ← W(1 − wd·lr_t) − lr_t·d (PyTorch's momentum
/// convention, with the decay decoupled from the gradient). Every role is accepted.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sgd {
    pub lr: f64,
    #[serde(default)]
    pub momentum: f64,
    #[serde(default)]
    pub nesterov: bool,
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(skip)]
    state: OptimizerState,
}

const LAYOUT: Layout = Layout {
    count: "sgd_steps",
    tensors: &["sgd_momentum"],
};

impl Default for Sgd {
    fn default() -> Self {
        Sgd::new(0.01, 0.9)
    }
}

impl Sgd {
    pub fn new(lr: f64, momentum: f64) -> Self {
        Sgd {
            lr,
            momentum,
            nesterov: false,
            weight_decay: 0.0,
            state: OptimizerState::default(),
        }
    }

    fn update(&self, p: &Param, g: &Tensor, at: &OptimizerStep) -> Result<(Tensor, ParamState)> {
        let lr = self.lr(at);
        let (count, buf) = match self.state.get(&p.name) {
            Some(s) => (s.count, s.tensors[0].clone()),
            None => (0, zeros_like(p)?),
        };
        let buf = ((buf * self.momentum)? + g)?;
        let d = if self.nesterov {
            (g + (&buf * self.momentum)?)?
        } else {
            buf.clone()
        };
        let w = (p
            .var
            .as_tensor()
            .affine(1.0 - self.weight_decay * lr, 0.0)?
            - d.affine(lr, 0.0)?)?;
        Ok((
            w,
            ParamState {
                count: count + 1,
                tensors: vec![buf],
            },
        ))
    }
}

#[typetag::serde]
impl Optimizer for Sgd {
    fn validate(&self) -> std::result::Result<(), String> {
        positive("lr", self.lr)?;
        decay_rate("momentum", self.momentum)?;
        nonnegative("weight_decay", self.weight_decay)
    }

    super::per_parameter_optimizer_methods!();
}

spectra_core::register_plugin!(
    Optimizer,
    Sgd,
    "SGD with (Nesterov) momentum and decoupled weight decay."
);
