//! `EmbeddingColumnCap`: caps the RMS of every embedding column (docs/lipschitz.md §2.9).

use candle_core::Var;
use serde::{Deserialize, Serialize};
use spectra_core::linalg::{column_rms, scalar_f64};
use spectra_core::{ConstraintContext, ConstraintReport, ParamRole, Result, WeightConstraint};

use super::{positive, store, CheckedMatrix};

/// For an embedding table of shape (d_embed, vocab), one column per token: every column with RMS above
/// `max_rms` is scaled down to it, the others are untouched (col ← col / max(1, rms(col)/max_rms)).
/// The table's norm is the largest column RMS (ℓ1→RMS for one-hot inputs). Applies to
/// `ParamRole::Embedding` only; a table stored as (vocab, d_embed) must be transposed by the model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingColumnCap {
    pub max_rms: f64,
}

impl Default for EmbeddingColumnCap {
    fn default() -> Self {
        EmbeddingColumnCap { max_rms: 1.0 }
    }
}

#[typetag::serde]
impl WeightConstraint for EmbeddingColumnCap {
    fn validate(&self) -> std::result::Result<(), String> {
        positive("max_rms", self.max_rms)
    }

    fn accepts(&self, role: ParamRole) -> bool {
        role == ParamRole::Embedding
    }

    fn apply(&self, weight: &Var, ctx: &mut ConstraintContext<'_>) -> Result<ConstraintReport> {
        let m = CheckedMatrix::load(self, weight, ctx)?;
        let rms = column_rms(&m.w)?;
        let before = scalar_f64(&rms.max_all()?)?;
        if before > self.max_rms {
            let shrink = rms.affine(1.0 / self.max_rms, 0.0)?.maximum(1.0)?;
            store(weight, &m.w.broadcast_div(&shrink)?, ctx.name)?;
        }
        Ok(ConstraintReport {
            norm_before: Some(before),
            norm_after: Some(before.min(self.max_rms)),
        })
    }
}

spectra_core::register_plugin!(
    WeightConstraint,
    EmbeddingColumnCap,
    "Caps every embedding column's RMS at max_rms (columns = tokens)."
);
