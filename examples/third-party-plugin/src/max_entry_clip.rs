//! `MaxEntryClip`: clips every weight entry to [−limit, limit] (an ℓ∞ cap, as in max-norm regularisation).

use candle_core::Var;
use serde::{Deserialize, Serialize};
use spectra_core::{ConstraintContext, ConstraintReport, Error, WeightConstraint};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaxEntryClip {
    pub limit: f64,
}

impl Default for MaxEntryClip {
    fn default() -> Self {
        MaxEntryClip { limit: 1.0 }
    }
}

#[typetag::serde]
impl WeightConstraint for MaxEntryClip {
    fn validate(&self) -> Result<(), String> {
        if self.limit > 0.0 && self.limit.is_finite() {
            Ok(())
        } else {
            Err(format!(
                "limit must be a positive number, got {}",
                self.limit
            ))
        }
    }

    fn apply(
        &self,
        weight: &Var,
        ctx: &mut ConstraintContext<'_>,
    ) -> spectra_core::Result<ConstraintReport> {
        let w = weight.as_tensor();
        // A max skips NaN entries; a sum propagates both NaN and Inf.
        let finite = w
            .sum_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
        if !finite.is_finite() {
            return Err(Error::NonFinite {
                name: ctx.name.to_string(),
                what: "weights".into(),
            });
        }
        weight.set(&w.clamp(-self.limit, self.limit)?)?;
        Ok(ConstraintReport::default())
    }
}

spectra_core::register_plugin!(
    WeightConstraint,
    MaxEntryClip,
    "Clips every entry to [-limit, limit]."
);
