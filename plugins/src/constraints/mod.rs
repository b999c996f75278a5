//! Weight constraints, one per file, and the plumbing they share: checked access to the weight in
//! RMS→RMS units and the power iteration with its optional persistent vector.

mod embedding_column_cap;
mod spectral_hammer;
mod spectral_hard_cap;
mod spectral_normalize;
mod spectral_soft_cap;
mod spectral_weight_decay;
mod stiefel;
mod svd_clip;
mod top_direction;
mod weight_decay;

use candle_core::{Tensor, Var};
use spectra_core::linalg::{ensure_finite, matrix_dims, rms_scale};
use spectra_core::{ConstraintContext, Error, ParamRole, Result, WeightConstraint};

pub use embedding_column_cap::EmbeddingColumnCap;
pub use spectral_hammer::SpectralHammer;
pub use spectral_hard_cap::{HardCapMode, SpectralHardCap};
pub use spectral_normalize::SpectralNormalize;
pub use spectral_soft_cap::SpectralSoftCap;
pub use spectral_weight_decay::SpectralWeightDecay;
pub use stiefel::Stiefel;
pub use svd_clip::SvdClip;
pub use weight_decay::WeightDecay;

use crate::field_checks::{in_range, nonnegative, positive};

/// The roles spectral constraints apply to: hidden matrices and the output layer. Embeddings are
/// column-normalised instead (docs/lipschitz.md §2.9) and 1-D gains have no spectrum.
fn is_linear_map(role: ParamRole) -> bool {
    matches!(role, ParamRole::Hidden | ParamRole::Head)
}

/// A weight matrix, checked (2-D, float, finite, role accepted), with its RMS→RMS scale.
struct CheckedMatrix {
    w: Tensor,
    scale: f64,
}

impl CheckedMatrix {
    fn load(
        constraint: &dyn WeightConstraint,
        weight: &Var,
        ctx: &ConstraintContext<'_>,
    ) -> Result<Self> {
        if !constraint.accepts(ctx.role) {
            return Err(Error::invalid(
                ctx.name,
                format!(
                    "{} does not apply to {} parameters; move this parameter to a group without it",
                    constraint.typetag_name(),
                    ctx.role
                ),
            ));
        }
        let w = weight.as_tensor().clone();
        let (rows, cols) = matrix_dims(&w, ctx.name)?;
        ensure_finite(&w, ctx.name, "weights")?;
        Ok(CheckedMatrix {
            w,
            scale: rms_scale(rows, cols),
        })
    }
}

/// Writes the constrained weights, refusing non-finite results so that nothing invalid is ever stored.
fn store(weight: &Var, new: &Tensor, name: &str) -> Result<()> {
    ensure_finite(
        new,
        name,
        "the constrained weights (an overflow; the weight is left unchanged)",
    )?;
    Ok(weight.set(new)?)
}

/// `Ok` for at least one power iteration.
fn some_iterations(iters: usize) -> std::result::Result<(), String> {
    if iters == 0 {
        Err("iters must be at least 1 (the reference uses 16)".into())
    } else {
        Ok(())
    }
}
