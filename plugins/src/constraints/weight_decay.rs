//! `WeightDecay`: decoupled weight decay W ← W·(1 − wd·lr_t·t) (docs/lipschitz.md §2.1).

use candle_core::Var;
use serde::{Deserialize, Serialize};
use spectra_core::linalg::ensure_finite;
use spectra_core::{
    ConstraintContext, ConstraintReport, Error, ParamRole, Result, WeightConstraint,
};

use super::{nonnegative, store};

/// Multiplies the weight by `1 − wd·lr_t·t`, with lr_t the scheduled learning rate and t the
/// parameter's target norm, as the reference's `decay_step_project` does.
///
/// The reference decays *before* subtracting the update (W(1 − wd·η) − lr·d); as a constraint this
/// runs after it ((W − lr·d)(1 − wd·η)). The two differ by wd·η·lr·d, a term of order lr².
/// Elementwise, so it accepts every role, 1-D gains included.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightDecay {
    pub wd: f64,
}

impl Default for WeightDecay {
    fn default() -> Self {
        WeightDecay { wd: 0.1 }
    }
}

#[typetag::serde]
impl WeightConstraint for WeightDecay {
    fn validate(&self) -> std::result::Result<(), String> {
        nonnegative("wd", self.wd)
    }

    fn accepts(&self, _role: ParamRole) -> bool {
        true
    }

    fn apply(&self, weight: &Var, ctx: &mut ConstraintContext<'_>) -> Result<ConstraintReport> {
        let w = weight.as_tensor();
        ensure_finite(w, ctx.name, "weights")?;
        let shrink = self.wd * ctx.lr * ctx.target_norm;
        if !(0.0..=1.0).contains(&shrink) {
            return Err(Error::invalid(
                ctx.name,
                format!(
                    "wd·lr·target_norm = {}·{}·{} = {shrink} is outside [0, 1]: the decay would flip or grow \
                     the weights; lower wd or the learning rate",
                    self.wd, ctx.lr, ctx.target_norm
                ),
            ));
        }
        store(weight, &w.affine(1.0 - shrink, 0.0)?, ctx.name)?;
        Ok(ConstraintReport::default())
    }
}

spectra_core::register_plugin!(
    WeightConstraint,
    WeightDecay,
    "Decoupled weight decay W(1 - wd·lr·t)."
);
