//! `SvdClip`: the exact clip min(σ, w_max) by a full SVD, the reference the fast methods are measured
//! against (docs/lipschitz.md §2.8).

use candle_core::Var;
use serde::{Deserialize, Serialize};
use spectra_core::linalg::svd::{compose, from_faer, thin_svd};
use spectra_core::{ConstraintContext, ConstraintReport, Result, WeightConstraint};

use super::{is_linear_map, positive, store, CheckedMatrix};

/// U·min(Σ, w_max)·Vᵀ on N = W/scale, computed by faer in f64 on the CPU (the weight is copied there
/// and back). O(mn·min(m, n)) with an SVD's large constant: a reference, not for large models.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SvdClip {
    pub w_max: f64,
}

impl Default for SvdClip {
    fn default() -> Self {
        SvdClip { w_max: 1.0 }
    }
}

#[typetag::serde]
impl WeightConstraint for SvdClip {
    fn validate(&self) -> std::result::Result<(), String> {
        positive("w_max", self.w_max)
    }

    fn accepts(&self, role: spectra_core::ParamRole) -> bool {
        is_linear_map(role)
    }

    fn apply(&self, weight: &Var, ctx: &mut ConstraintContext<'_>) -> Result<ConstraintReport> {
        let m = CheckedMatrix::load(self, weight, ctx)?;
        let svd = thin_svd(&m.w)?;
        // In W's units the cap is w_max·scale.
        let cap = self.w_max * m.scale;
        let before = svd.s.first().copied().unwrap_or(0.0);
        if before > cap {
            let clipped: Vec<f64> = svd.s.iter().map(|s| s.min(cap)).collect();
            let w = from_faer(
                compose(svd.u.as_ref(), &clipped, svd.v.as_ref()).as_ref(),
                m.w.dtype(),
                m.w.device(),
            )?;
            store(weight, &w, ctx.name)?;
        }
        Ok(ConstraintReport {
            norm_before: Some(before / m.scale),
            norm_after: Some(before.min(cap) / m.scale),
        })
    }
}

spectra_core::register_plugin!(
    WeightConstraint,
    SvdClip,
    "Exact clip min(sigma, w_max) by a full SVD (faer, CPU): the reference."
);
