//! Optimizers, one per file, and what they share: checked gradients, per-parameter state that saves
//! and restores by name, and an all-or-nothing write of the new weights.

mod adamw;
mod muon;
mod sgd;
mod state;

use candle_core::backprop::GradStore;
use candle_core::Tensor;
use spectra_core::linalg::ensure_finite;
use spectra_core::{Error, Param, Result};

pub use adamw::AdamW;
pub use muon::{MomentumWarmup, Muon, UpdateScale};
pub use sgd::Sgd;
use state::ParamState;

/// The parameters that have a gradient, with it, each checked: same shape as the parameter, finite.
/// Any failure is an error naming the parameter before anything is computed or written.
fn gradients<'a>(params: &'a [Param], grads: &GradStore) -> Result<Vec<(&'a Param, Tensor)>> {
    let mut out = Vec::new();
    for p in params {
        let Some(g) = grads.get(p.var.as_tensor()) else {
            continue;
        };
        if g.dims() != p.var.dims() {
            return Err(Error::invalid(
                &p.name,
                format!(
                    "gradient has shape {:?} but the parameter has {:?}",
                    g.dims(),
                    p.var.dims()
                ),
            ));
        }
        ensure_finite(g, &p.name, "gradient")?;
        out.push((p, g.to_dtype(p.var.dtype())?));
    }
    Ok(out)
}

/// One optimizer step over a group: `update` maps each parameter with a gradient to its new weight and
/// state. All of them are computed, then checked finite, then written, so that a bad gradient or an
/// overflow anywhere leaves every weight unchanged; the caller commits the returned states only after.
fn apply_updates<'a>(
    params: &'a [Param],
    grads: &GradStore,
    mut update: impl FnMut(&Param, &Tensor) -> Result<(Tensor, ParamState)>,
) -> Result<Vec<(&'a str, ParamState)>> {
    let mut weights = Vec::new();
    let mut states = Vec::new();
    for (p, g) in gradients(params, grads)? {
        let (w, s) = update(p, &g)?;
        weights.push((p, w));
        states.push((p.name.as_str(), s));
    }
    for (p, w) in &weights {
        ensure_finite(
            w,
            &p.name,
            "the updated weights (an overflow; nothing was written)",
        )?;
    }
    for (p, w) in &weights {
        p.var.set(w)?;
    }
    Ok(states)
}

/// `Ok` for a finite number > 0, else a message naming the field.
fn positive(field: &str, value: f64) -> std::result::Result<(), String> {
    if value > 0.0 && value.is_finite() {
        Ok(())
    } else {
        Err(format!("{field} must be a positive number, got {value}"))
    }
}

/// `Ok` for a number in [0, 1), the range of momentum and moment decay rates.
fn decay_rate(field: &str, value: f64) -> std::result::Result<(), String> {
    if (0.0..1.0).contains(&value) {
        Ok(())
    } else {
        Err(format!("{field} must be in [0, 1), got {value}"))
    }
}

/// `Ok` for a finite number ≥ 0.
fn nonnegative(field: &str, value: f64) -> std::result::Result<(), String> {
    if value >= 0.0 && value.is_finite() {
        Ok(())
    } else {
        Err(format!("{field} must be a finite number ≥ 0, got {value}"))
    }
}
