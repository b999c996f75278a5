//! `SpectralHammer`: sets the top singular value to exactly w_max (docs/lipschitz.md §2.6).

use candle_core::Var;
use serde::{Deserialize, Serialize};
use spectra_core::{ConstraintContext, ConstraintReport, Result, WeightConstraint};

use super::spectral_weight_decay::sixteen;
use super::top_direction::top_singular;
use super::{is_linear_map, positive, some_iterations, store, CheckedMatrix};

/// N ← N + (w_max − σ)·u·vᵀ with (σ, u, v) from power iteration: the top singular value becomes w_max,
/// raised if it was below. Only that direction is touched, so other singular values may exceed w_max
/// when an update pushes several at once. A zero matrix has no top direction and is left unchanged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpectralHammer {
    pub w_max: f64,
    #[serde(default = "sixteen")]
    pub iters: usize,
    /// Start each power iteration from the previous step's vector (kept in the checkpointed state).
    #[serde(default)]
    pub persistent_vector: bool,
}

impl Default for SpectralHammer {
    fn default() -> Self {
        SpectralHammer {
            w_max: 1.0,
            iters: sixteen(),
            persistent_vector: false,
        }
    }
}

#[typetag::serde]
impl WeightConstraint for SpectralHammer {
    fn validate(&self) -> std::result::Result<(), String> {
        positive("w_max", self.w_max)?;
        some_iterations(self.iters)
    }

    fn accepts(&self, role: spectra_core::ParamRole) -> bool {
        is_linear_map(role)
    }

    fn apply(&self, weight: &Var, ctx: &mut ConstraintContext<'_>) -> Result<ConstraintReport> {
        let m = CheckedMatrix::load(self, weight, ctx)?;
        let top = top_singular(&m.w, self.iters, self.persistent_vector, ctx)?;
        let before = top.sigma / m.scale;
        if top.sigma == 0.0 {
            return Ok(ConstraintReport {
                norm_before: Some(0.0),
                norm_after: Some(0.0),
            });
        }
        // In W's units the target singular value is w_max·scale.
        let shift = self.w_max * m.scale - top.sigma;
        let rank_one = top.u.matmul(&top.v.t()?)?.affine(shift, 0.0)?;
        store(weight, &(&m.w + rank_one)?, ctx.name)?;
        Ok(ConstraintReport {
            norm_before: Some(before),
            norm_after: None,
        })
    }
}

spectra_core::register_plugin!(
    WeightConstraint,
    SpectralHammer,
    "Sets the top singular value to w_max (power iteration + rank-1 update)."
);
