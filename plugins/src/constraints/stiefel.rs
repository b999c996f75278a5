//! `Stiefel`: projects the weight onto the Stiefel manifold scaled to w_max
//! (docs/lipschitz.md §2.7).

use candle_core::Var;
use serde::{Deserialize, Serialize};
use spectra_core::linalg::{orthogonalize, Orthogonalizer};
use spectra_core::{ConstraintContext, ConstraintReport, Result, WeightConstraint};

use super::{is_linear_map, positive, store, CheckedMatrix};

/// N ← orthogonalize(N) on N = W/(scale·w_max). With the reference's six JAX steps every singular value
/// at least 10⁻³·‖N‖_F lands in [0.866, 0.99934]·w_max, and zero singular values (rank-deficient
/// weights) stay near zero; with `Msign` every singular value becomes w_max, a rank-deficient weight
/// being completed to a point of the manifold. A zero matrix is unchanged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stiefel {
    pub w_max: f64,
    #[serde(default = "jax_ns6")]
    pub method: Orthogonalizer,
}

/// The reference normalizes by ‖N‖_F + 1e-12.
const FROBENIUS_EPS: f64 = 1e-12;

fn jax_ns6() -> Orthogonalizer {
    Orthogonalizer::JaxNs6
}

impl Default for Stiefel {
    fn default() -> Self {
        Stiefel {
            w_max: 1.0,
            method: jax_ns6(),
        }
    }
}

#[typetag::serde]
impl WeightConstraint for Stiefel {
    fn validate(&self) -> std::result::Result<(), String> {
        positive("w_max", self.w_max)
    }

    fn accepts(&self, role: spectra_core::ParamRole) -> bool {
        is_linear_map(role)
    }

    fn apply(&self, weight: &Var, ctx: &mut ConstraintContext<'_>) -> Result<ConstraintReport> {
        let m = CheckedMatrix::load(self, weight, ctx)?;
        let unit = m.scale * self.w_max;
        let o = orthogonalize(&m.w.affine(1.0 / unit, 0.0)?, self.method, FROBENIUS_EPS)?;
        store(weight, &o.affine(unit, 0.0)?, ctx.name)?;
        Ok(ConstraintReport::default())
    }
}

spectra_core::register_plugin!(
    WeightConstraint,
    Stiefel,
    "Projects onto the Stiefel manifold at w_max (Newton-Schulz or msign)."
);
