//! `SpectralWeightDecay`: shrinks the top singular value by a fixed fraction per step
//! (docs/lipschitz.md §2.2).

use candle_core::Var;
use serde::{Deserialize, Serialize};
use spectra_core::{ConstraintContext, ConstraintReport, Result, WeightConstraint};

use super::top_direction::top_singular;
use super::{in_range, is_linear_map, some_iterations, store, CheckedMatrix};

/// N ← N − spectral_wd·σ·u·vᵀ with (σ, u, v) from power iteration: the top singular value is multiplied
/// by (1 − spectral_wd) every step, independently of the learning rate, as in the reference.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpectralWeightDecay {
    pub spectral_wd: f64,
    #[serde(default = "sixteen")]
    pub iters: usize,
    /// Start each power iteration from the previous step's vector (kept in the checkpointed state)
    /// instead of a fresh random one.
    #[serde(default)]
    pub persistent_vector: bool,
}

pub(crate) fn sixteen() -> usize {
    16
}

impl Default for SpectralWeightDecay {
    fn default() -> Self {
        SpectralWeightDecay {
            spectral_wd: 0.1,
            iters: sixteen(),
            persistent_vector: false,
        }
    }
}

#[typetag::serde]
impl WeightConstraint for SpectralWeightDecay {
    fn validate(&self) -> std::result::Result<(), String> {
        in_range("spectral_wd", self.spectral_wd, 0.0, 1.0)?;
        some_iterations(self.iters)
    }

    fn accepts(&self, role: spectra_core::ParamRole) -> bool {
        is_linear_map(role)
    }

    fn apply(&self, weight: &Var, ctx: &mut ConstraintContext<'_>) -> Result<ConstraintReport> {
        let m = CheckedMatrix::load(self, weight, ctx)?;
        // The rank-1 correction is the same on W and on N = W/scale; only σ's units differ.
        let top = top_singular(&m.w, self.iters, self.persistent_vector, ctx)?;
        let rank_one = top
            .u
            .matmul(&top.v.t()?)?
            .affine(self.spectral_wd * top.sigma, 0.0)?;
        store(weight, &(&m.w - rank_one)?, ctx.name)?;
        Ok(ConstraintReport {
            norm_before: Some(top.sigma / m.scale),
            norm_after: None,
        })
    }
}

spectra_core::register_plugin!(
    WeightConstraint,
    SpectralWeightDecay,
    "Multiplies the top singular value by (1 - spectral_wd) each step (power iteration)."
);
