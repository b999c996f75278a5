//! `Muon`: momentum, then orthogonalization, scaled so that every update has a known RMS→RMS norm
//! (spec §3.1, §3.4, §3.5).

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use spectra_core::linalg::{column_rms, matrix_dims, orthogonalize, rms_scale, Orthogonalizer};
use spectra_core::{Error, Optimizer, OptimizerStep, Param, ParamRole, Result};

use super::state::{zeros_like, Layout, OptimizerState, ParamState};
use super::{apply_updates, decay_rate, positive};

/// How the orthogonalized direction O is scaled before the learning rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpdateScale {
    /// sqrt(fan_out/fan_in): the update's RMS→RMS norm is ‖O‖₂·lr·t for every shape (the Lipschitz
    /// paper's choice).
    SqrtFanRatio,
    /// max(1, fan_out/fan_in)^½ (Keller Jordan's Muon): the same for tall matrices, larger for wide ones.
    MaxOneRatio,
}

impl UpdateScale {
    fn factor(self, rows: usize, cols: usize) -> f64 {
        match self {
            UpdateScale::SqrtFanRatio => rms_scale(rows, cols),
            UpdateScale::MaxOneRatio => (rows as f64 / cols as f64).max(1.0).sqrt(),
        }
    }
}

/// Momentum rising linearly from `from` to the configured momentum over `steps` steps (NanoGPT: 0.85
/// to 0.95 over 300).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MomentumWarmup {
    pub from: f64,
    pub steps: u64,
}

/// For each matrix: b ← μb + (1−μ)g (EMA), direction b or, with `nesterov`, (1−μ)g + μb; then
/// - hidden and head matrices: O = orthogonalize(direction) and W ← W − lr_t·t·s·O, with t the
///   parameter's target norm and s the [`UpdateScale`];
/// - embeddings (shape (d_embed, vocab)): each column divided by max(rms(col), 1/max_inflation), so a
///   column's update has RMS exactly lr_t·t unless its gradient is tiny, which is amplified at most
///   `max_inflation`× (spec §2.9). No orthogonalization.
///
/// 1-D parameters are an error: give them their own group with AdamW or Sgd.
///
/// Update bound reported to constraints (RMS→RMS units): lr_t·t·m·s/sqrt(fan_out/fan_in), with m the
/// largest singular value the orthogonalizer can output (the maximum of its polynomial composite on
/// (0, 1]: 0.99934 for JaxNs6, 1.14502 for LipschitzNs5, 1.20237 for KellerNs5, 1 for Msign). For
/// embeddings it is lr_t·t, a bound on each column's RMS instead.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Muon {
    pub lr: f64,
    #[serde(default = "momentum")]
    pub momentum: f64,
    #[serde(default)]
    pub nesterov: bool,
    #[serde(default)]
    pub momentum_warmup: Option<MomentumWarmup>,
    #[serde(default = "jax_ns6")]
    pub orthogonalizer: Orthogonalizer,
    #[serde(default = "sqrt_fan_ratio")]
    pub update_scale: UpdateScale,
    /// Added to ‖b‖_F before dividing (1e-12 in the JAX code, 1e-7 in the PyTorch ones).
    #[serde(default = "eps")]
    pub eps: f64,
    /// The embedding dualize's largest amplification of a small gradient column.
    #[serde(default = "max_inflation")]
    pub max_inflation: f64,
    #[serde(skip)]
    state: OptimizerState,
}

fn momentum() -> f64 {
    0.9
}
fn jax_ns6() -> Orthogonalizer {
    Orthogonalizer::JaxNs6
}
fn sqrt_fan_ratio() -> UpdateScale {
    UpdateScale::SqrtFanRatio
}
fn eps() -> f64 {
    1e-12
}
fn max_inflation() -> f64 {
    16.0
}

const LAYOUT: Layout = Layout {
    count: "muon_steps",
    tensors: &["muon_momentum"],
};

impl Default for Muon {
    fn default() -> Self {
        Muon::new(0.1)
    }
}

impl Muon {
    /// The JAX code's Muon: EMA momentum 0.9, no Nesterov, six steps, sqrt(fan_out/fan_in).
    pub fn new(lr: f64) -> Self {
        Muon {
            lr,
            momentum: momentum(),
            nesterov: false,
            momentum_warmup: None,
            orthogonalizer: jax_ns6(),
            update_scale: sqrt_fan_ratio(),
            eps: eps(),
            max_inflation: max_inflation(),
            state: OptimizerState::default(),
        }
    }

    /// The NanoGPT-Lipschitz script's Muon: Nesterov 0.95 warmed up from 0.85 over 300 steps, its five
    /// steps, eps 1e-7.
    pub fn nanogpt_lipschitz(lr: f64) -> Self {
        Muon {
            momentum: 0.95,
            nesterov: true,
            momentum_warmup: Some(MomentumWarmup {
                from: 0.85,
                steps: 300,
            }),
            orthogonalizer: Orthogonalizer::LipschitzNs5,
            eps: 1e-7,
            ..Muon::new(lr)
        }
    }

    /// μ at this step.
    pub fn momentum_at(&self, step: u64) -> f64 {
        match &self.momentum_warmup {
            Some(w) => {
                let f = (step as f64 / w.steps as f64).min(1.0);
                (1.0 - f) * w.from + f * self.momentum
            }
            None => self.momentum,
        }
    }

    fn update(&self, p: &Param, g: &Tensor, lr: f64, mu: f64) -> Result<(Tensor, ParamState)> {
        if p.role == ParamRole::Vector {
            return Err(Error::invalid(
                &p.name,
                "Muon updates matrices; this is a 1-D parameter (role Vector): put it in a group with AdamW or Sgd",
            ));
        }
        let (rows, cols) = matrix_dims(p.var.as_tensor(), &p.name)?;
        let (count, buf) = match self.state.get(&p.name) {
            Some(s) => (s.count, s.tensors[0].clone()),
            None => (0, zeros_like(p)?),
        };
        let buf = ((buf * mu)? + (g * (1.0 - mu))?)?;
        let direction = if self.nesterov {
            ((g * (1.0 - mu))? + (&buf * mu)?)?
        } else {
            buf.clone()
        };
        let step = if p.role == ParamRole::Embedding {
            let rms = column_rms(&direction)?.maximum(1.0 / self.max_inflation)?;
            direction
                .broadcast_div(&rms)?
                .affine(lr * p.target_norm, 0.0)?
        } else {
            let o = orthogonalize(&direction, self.orthogonalizer, self.eps)?;
            o.affine(
                lr * p.target_norm * self.update_scale.factor(rows, cols),
                0.0,
            )?
        };
        let w = (p.var.as_tensor() - step)?;
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
impl Optimizer for Muon {
    fn validate(&self) -> std::result::Result<(), String> {
        positive("lr", self.lr)?;
        decay_rate("momentum", self.momentum)?;
        if let Some(w) = &self.momentum_warmup {
            decay_rate("momentum_warmup.from", w.from)?;
            if w.steps == 0 {
                return Err("momentum_warmup.steps must be at least 1".into());
            }
        }
        positive("eps", self.eps)?;
        if !(self.max_inflation >= 1.0 && self.max_inflation.is_finite()) {
            return Err(format!(
                "max_inflation must be a finite number ≥ 1, got {}",
                self.max_inflation
            ));
        }
        Ok(())
    }

    fn lr(&self, at: &OptimizerStep) -> f64 {
        self.lr * at.lr_factor
    }

    fn step(&mut self, params: &[Param], grads: &GradStore, at: &OptimizerStep) -> Result<()> {
        let (lr, mu) = (self.lr(at), self.momentum_at(at.step));
        let updated = apply_updates(params, grads, |p, g| self.update(p, g, lr, mu))?;
        self.state.commit(updated);
        Ok(())
    }

    fn update_norm_bound(&self, param: &Param, at: &OptimizerStep) -> Option<f64> {
        let lr_t = self.lr(at) * param.target_norm;
        match param.role {
            ParamRole::Vector => None,
            ParamRole::Embedding => Some(lr_t),
            ParamRole::Hidden | ParamRole::Head => {
                let (rows, cols) = param.var.dims2().ok()?;
                let relative = self.update_scale.factor(rows, cols) / rms_scale(rows, cols);
                Some(lr_t * self.orthogonalizer.max_singular_value() * relative)
            }
        }
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        self.state.export(&LAYOUT)
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>, params: &[Param]) -> Result<()> {
        self.state = OptimizerState::import(state, params, &LAYOUT)?;
        Ok(())
    }
}

spectra_core::register_plugin!(
    Optimizer,
    Muon,
    "Momentum + Newton-Schulz orthogonalization; reports its update bound to the soft cap."
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_scales_differ_only_for_wide_matrices() {
        assert_eq!(UpdateScale::SqrtFanRatio.factor(16, 4), 2.0);
        assert_eq!(UpdateScale::MaxOneRatio.factor(16, 4), 2.0);
        assert_eq!(UpdateScale::SqrtFanRatio.factor(4, 16), 0.5);
        assert_eq!(UpdateScale::MaxOneRatio.factor(4, 16), 1.0);
    }

    #[test]
    fn momentum_warms_up_linearly() {
        let mut muon = Muon::new(0.1);
        assert_eq!(muon.momentum_at(0), 0.9);
        muon.momentum = 0.95;
        muon.momentum_warmup = Some(MomentumWarmup {
            from: 0.85,
            steps: 100,
        });
        assert!((muon.momentum_at(25) - 0.875).abs() < 1e-15);
        assert_eq!(muon.momentum_at(100), 0.95);
    }
}
