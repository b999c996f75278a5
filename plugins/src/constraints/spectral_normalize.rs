//! `SpectralNormalize`: scales the weight down to w_max when power iteration finds it above
//! (docs/lipschitz.md §2.3).

use candle_core::Var;
use serde::{Deserialize, Serialize};
use spectra_core::{ConstraintContext, ConstraintReport, Result, WeightConstraint};

use super::spectral_weight_decay::sixteen;
use super::top_direction::top_singular;
use super::{is_linear_map, positive, some_iterations, store, CheckedMatrix};

/// W ← W / max(1, σ̂/w_max) with σ̂ the power-iteration estimate of ‖W‖_RMS→RMS. Only ever scales down
/// (not Miyato's always-divide). σ̂ is a lower bound, so σ_max may stay above w_max by the estimate's
/// error; more iterations or `persistent_vector` shrink it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpectralNormalize {
    pub w_max: f64,
    #[serde(default = "sixteen")]
    pub iters: usize,
    /// Start each power iteration from the previous step's vector (kept in the checkpointed state). Over
    /// a training run the top direction moves slowly, so a few iterations then match many fresh ones.
    #[serde(default)]
    pub persistent_vector: bool,
}

impl Default for SpectralNormalize {
    fn default() -> Self {
        SpectralNormalize {
            w_max: 1.0,
            iters: sixteen(),
            persistent_vector: false,
        }
    }
}

#[typetag::serde]
impl WeightConstraint for SpectralNormalize {
    fn validate(&self) -> std::result::Result<(), String> {
        positive("w_max", self.w_max)?;
        some_iterations(self.iters)
    }

    fn accepts(&self, role: spectra_core::ParamRole) -> bool {
        is_linear_map(role)
    }

    fn apply(&self, weight: &Var, ctx: &mut ConstraintContext<'_>) -> Result<ConstraintReport> {
        let m = CheckedMatrix::load(self, weight, ctx)?;
        let norm = top_singular(&m.w, self.iters, self.persistent_vector, ctx)?.sigma / m.scale;
        if norm > self.w_max {
            store(weight, &m.w.affine(self.w_max / norm, 0.0)?, ctx.name)?;
        }
        Ok(ConstraintReport {
            norm_before: Some(norm),
            norm_after: Some(norm.min(self.w_max)),
        })
    }
}

spectra_core::register_plugin!(
    WeightConstraint,
    SpectralNormalize,
    "Scales the weight down to w_max when power iteration finds its norm above."
);
