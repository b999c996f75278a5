//! `SpectralSoftCap`: the paper's co-designed constraint, two odd cubic steps whose strength is coupled
//! to w_max, the weight decay and the optimizer's update bound (docs/lipschitz.md §2.4).

use candle_core::Var;
use serde::{Deserialize, Serialize};
use spectra_core::linalg::{apply_odd_steps, soft_cap_alpha, soft_cap_steps};
use spectra_core::{ConstraintContext, ConstraintReport, Error, Result, WeightConstraint};

use super::top_direction::at_most;
use super::{is_linear_map, nonnegative, positive, store, CheckedMatrix};

/// On N = W/scale: N ← N(I − αNᵀN), then N ← N(I + αNᵀN) (Gram on the smaller side), mapping each
/// singular value by f(σ) = σ − 3α²σ⁵ + 3α³σ⁷ − α⁴σ⁹. α solves f(k) = w_max for
/// k = w_max·(1 − wd') + η, where η is the optimizer's bound on this step's update (RMS→RMS units) and
/// wd' = decay·lr_t·t the decay applied in the same step.
///
/// Guarantee (inductive, not a projection): if σ_max ≤ w_max before the step and the update's norm is
/// at most η, then σ_max ≤ w_max after, as long as β = αk² ≤ 1/3, i.e. η ≤ 0.3065·w_max without decay
/// (f is increasing on [0, k] exactly then). Larger η weakens the cap; singular values above k are not
/// capped by the reference's map (which sends them above w_max, then towards zero and, past 1/√α, to
/// huge values of flipped sign).
///
/// Guard (not in the reference): when power iteration estimates σ_max(N) above k, N is first scaled
/// down to σ_max = k, so even a weight far outside its bound comes out at w_max instead of blowing up.
/// While the guarantee's premise holds, σ_max ≤ k and the guard never fires; the only cost is a
/// Frobenius norm, plus 16 power iterations (≈64mn flops against the cap's 8mn²) when ‖N‖_F > k. With `reference_coupling` the guard only fires above 1/√(3α), where the map stops
/// increasing, so that the reference's map is reproduced wherever it does not blow up.
///
/// Needs an optimizer that reports its update bound (Muon does; AdamW does not).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpectralSoftCap {
    pub w_max: f64,
    /// The decoupled decay applied in the same step (the `wd` of a `WeightDecay` constraint or of the
    /// optimizer), so that the coupling accounts for it: wd' = decay·lr_t·t. 0 in the paper's runs.
    #[serde(default)]
    pub decay: f64,
    /// Multiplies the optimizer's update bound. The NanoGPT script uses 1.05 with its bf16 weights; the
    /// JAX code couples to lr_t·t itself, 1/0.99934 = 1.00067 times the bound Muon's six steps report.
    #[serde(default = "one")]
    pub bound_margin: f64,
    /// Reproduce the JAX code's coupling exactly: it passes η/scale instead of η
    /// (docs/lipschitz.md §2.4). Square matrices are unaffected; for an up-projection
    /// (fan_out = 4·fan_in, scale 2) the coupling then assumes an update half as large as it can
    /// be, so σ_max can exceed w_max after the step; for a down-projection (scale ½) it assumes one
    /// twice as large and caps harder than needed.
    #[serde(default)]
    pub reference_coupling: bool,
}

fn one() -> f64 {
    1.0
}

impl Default for SpectralSoftCap {
    fn default() -> Self {
        SpectralSoftCap {
            w_max: 1.0,
            decay: 0.0,
            bound_margin: one(),
            reference_coupling: false,
        }
    }
}

impl SpectralSoftCap {
    /// The α this step uses and the k it is solved for (the largest singular value the update can
    /// produce), from the update bound η (RMS→RMS) and the context's lr and target norm.
    pub fn coupling(&self, eta: f64, scale: f64, lr: f64, target_norm: f64) -> (f64, f64) {
        let eta = self.bound_margin * eta / if self.reference_coupling { scale } else { 1.0 };
        let wd = self.decay * lr * target_norm;
        (
            soft_cap_alpha(self.w_max, wd, eta),
            self.w_max * (1.0 - wd) + eta,
        )
    }
}

#[typetag::serde]
impl WeightConstraint for SpectralSoftCap {
    fn validate(&self) -> std::result::Result<(), String> {
        positive("w_max", self.w_max)?;
        nonnegative("decay", self.decay)?;
        positive("bound_margin", self.bound_margin)
    }

    fn accepts(&self, role: spectra_core::ParamRole) -> bool {
        is_linear_map(role)
    }

    fn needs_update_bound(&self) -> bool {
        true
    }

    fn apply(&self, weight: &Var, ctx: &mut ConstraintContext<'_>) -> Result<ConstraintReport> {
        let m = CheckedMatrix::load(self, weight, ctx)?;
        let eta = match ctx.update_norm_bound {
            Some(eta) if eta >= 0.0 && eta.is_finite() => eta,
            Some(eta) => {
                return Err(Error::invalid(ctx.name, format!("the optimizer reported an update bound of {eta}")))
            }
            None => {
                return Err(Error::invalid(
                    ctx.name,
                    "SpectralSoftCap needs an optimizer that bounds its update norm, e.g. Muon; for AdamW use \
                     SpectralNormalize or SpectralHammer",
                ))
            }
        };
        let (alpha, k) = self.coupling(eta, m.scale, ctx.lr, ctx.target_norm);
        if k <= 0.0 {
            return Err(Error::invalid(
                ctx.name,
                format!(
                    "decay·lr·t = {}·{}·{} ≥ 1 leaves no room below w_max; lower decay",
                    self.decay, ctx.lr, ctx.target_norm
                ),
            ));
        }
        // The map increases up to 1/√(3α) (x = ασ² = 1/3), then falls, turns negative past 1/√α and
        // grows like α⁴σ⁹.
        let increasing_up_to = if alpha > 0.0 {
            (3.0 * alpha).sqrt().recip()
        } else {
            f64::INFINITY
        };
        let limit = if self.reference_coupling {
            increasing_up_to
        } else {
            k.min(increasing_up_to)
        };
        let n = at_most(m.w.affine(1.0 / m.scale, 0.0)?, limit, ctx.rng)?;
        let capped = apply_odd_steps(&n, &soft_cap_steps(alpha))?.affine(m.scale, 0.0)?;
        store(weight, &capped, ctx.name)?;
        Ok(ConstraintReport::default())
    }
}

spectra_core::register_plugin!(
    WeightConstraint,
    SpectralSoftCap,
    "Two odd cubic steps coupled to w_max and the optimizer's update bound (needs Muon)."
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coupling_uses_eta_margin_decay_and_optionally_the_reference_quirk() {
        let cap = SpectralSoftCap::default();
        // docs/lipschitz.md §5: w_max 1, η 0.1 → α = 0.158864, k = 1.1.
        let (alpha, k) = cap.coupling(0.1, 2.0, 0.01, 1.0);
        assert!((alpha - 0.158864).abs() < 1e-6 && (k - 1.1).abs() < 1e-15);
        // The quirk divides η by the scale: η/2 = 0.05 → α = 0.122439 (docs/lipschitz.md §5).
        let quirk = SpectralSoftCap {
            reference_coupling: true,
            ..cap.clone()
        };
        assert!((quirk.coupling(0.1, 2.0, 0.01, 1.0).0 - 0.122439).abs() < 1e-6);
        // NanoGPT: η = 0.05·1.14502 with margin 1.05 → α = 0.131992 (docs/lipschitz.md §5).
        let nanogpt = SpectralSoftCap {
            bound_margin: 1.05,
            ..cap.clone()
        };
        assert!((nanogpt.coupling(0.05 * 1.14502, 1.0, 0.05, 1.0).0 - 0.131992).abs() < 1e-6);
        // decay 0.5 at lr 0.1, t 0.4 → wd' = 0.02, k = 1·0.98 + 0.1.
        let decayed = SpectralSoftCap { decay: 0.5, ..cap };
        assert!((decayed.coupling(0.1, 1.0, 0.1, 0.4).1 - 1.08).abs() < 1e-15);
    }
}
