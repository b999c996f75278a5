//! `SpectralHardCap`: caps every singular value at w_max, by Cesista's quintic or by an exact
//! msign-based clip (docs/lipschitz.md §2.5).

use candle_core::Var;
use serde::{Deserialize, Serialize};
use spectra_core::linalg::polynomial::{HARD_CAP, HARD_CAP_SAFE_SIGMA};
use spectra_core::linalg::{apply_odd_steps, clip_singular_values};
use spectra_core::{ConstraintContext, ConstraintReport, Result, WeightConstraint};

use super::top_direction::at_most;
use super::{is_linear_map, positive, store, CheckedMatrix};

/// How the cap is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HardCapMode {
    /// The reference's four quintic steps: σ ↦ ≈min(σ, 1) in units of w_max, with values up to 1.011
    /// (at σ ≈ 1.185) and a soft knee (f(1) = 0.966). Cost 4·(4mn² + 2n³).
    Quintic,
    /// Exactly min(σ, 1) up to f32 rounding: ½[N + O − (O − N)·msign(O − N)ᵀ·O] with O = msign(N).
    /// Two converged msigns, about ten times the quintic's cost.
    ExactClip,
}

/// On N = W/(scale·w_max), caps singular values at 1.
///
/// The quintic diverges for σ ≳ 3.6 (f(3.8) = −1.01, f(5) ≈ 6e126). When ‖N‖_F exceeds
/// [`PRESCALE_TO`], 16 power iterations estimate σ_max and, if it is above [`PRESCALE_TO`], N is first
/// scaled so that it equals [`PRESCALE_TO`]: the cap then acts like spectral normalization to
/// 2·w_max followed by the quintic, shrinking the smaller singular values by the same factor. This
/// only happens to weights more than twice their bound. An estimate low enough to miss the divergence
/// (true σ_max > 3.5 while the estimate is ≤ 2, i.e. 1.75× low) needs a start vector within ~10⁻⁷ of
/// orthogonal to the top singular directions. The exact clip needs no guard.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpectralHardCap {
    pub w_max: f64,
    #[serde(default = "quintic")]
    pub mode: HardCapMode,
}

/// The σ_max (units of w_max) a matrix is scaled down to before the quintic, well inside its safe
/// range [0, 3.5] (see [`HARD_CAP_SAFE_SIGMA`]).
pub const PRESCALE_TO: f64 = 2.0;
const _: () = assert!(PRESCALE_TO < HARD_CAP_SAFE_SIGMA);

fn quintic() -> HardCapMode {
    HardCapMode::Quintic
}

impl Default for SpectralHardCap {
    fn default() -> Self {
        SpectralHardCap {
            w_max: 1.0,
            mode: quintic(),
        }
    }
}

#[typetag::serde]
impl WeightConstraint for SpectralHardCap {
    fn validate(&self) -> std::result::Result<(), String> {
        positive("w_max", self.w_max)
    }

    fn accepts(&self, role: spectra_core::ParamRole) -> bool {
        is_linear_map(role)
    }

    fn apply(&self, weight: &Var, ctx: &mut ConstraintContext<'_>) -> Result<ConstraintReport> {
        let m = CheckedMatrix::load(self, weight, ctx)?;
        let unit = m.scale * self.w_max;
        let n = m.w.affine(1.0 / unit, 0.0)?;
        let capped = match self.mode {
            HardCapMode::Quintic => apply_odd_steps(&at_most(n, PRESCALE_TO, ctx.rng)?, &HARD_CAP)?,
            HardCapMode::ExactClip => clip_singular_values(&n)?,
        };
        store(weight, &capped.affine(unit, 0.0)?, ctx.name)?;
        Ok(ConstraintReport::default())
    }
}

spectra_core::register_plugin!(
    WeightConstraint,
    SpectralHardCap,
    "Caps singular values at w_max: the reference quintic (guarded) or an exact msign clip."
);
