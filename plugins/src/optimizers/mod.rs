//! Optimizers, one per file, and what they share: checked gradients, per-parameter state that saves
//! and restores by name, and an all-or-nothing write of the new weights.

mod adamw;
pub mod fused;
mod muon;
mod sgd;
mod state;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};
use spectra_core::linalg::{all_finite, scalar_f64};
use spectra_core::{Error, Param, Result};

pub use adamw::AdamW;
pub use muon::{MomentumWarmup, Muon, UpdateScale};
pub use sgd::Sgd;
use state::ParamState;

use crate::field_checks::{decay_rate, nonnegative, positive};

/// The parameters that have a gradient, with it, each checked: same shape as the parameter, finite.
/// Any failure is an error naming the parameter before anything is computed or written.
fn gradients<'a>(params: &'a [Param], grads: &GradStore) -> Result<Vec<(&'a Param, Tensor)>> {
    let mut checked = Vec::new();
    let mut misshapen = None;
    for p in params {
        let Some(g) = grads.get(p.var.as_tensor()) else {
            continue;
        };
        if g.dims() != p.var.dims() {
            misshapen = Some(Error::invalid(
                &p.name,
                format!(
                    "gradient has shape {:?} but the parameter has {:?}",
                    g.dims(),
                    p.var.dims()
                ),
            ));
            break;
        }
        checked.push((p, g));
    }
    // Parameters are checked in order: a non-finite gradient before the misshapen one is reported
    // first, as a check of each parameter in turn would.
    if let Some(i) = first_non_finite(checked.iter().map(|(_, g)| *g))? {
        return Err(non_finite(checked[i].0, "gradient"));
    }
    if let Some(e) = misshapen {
        return Err(e);
    }
    checked
        .into_iter()
        .map(|(p, g)| Ok((p, g.to_dtype(p.var.dtype())?)))
        .collect()
}

/// The index of the first tensor with a NaN or Inf entry. One device reduction per tensor and a single
/// host read for all of them, where checking each would wait on the device once per tensor: a finite
/// sum of the tensors' sums proves every entry finite (a NaN or Inf anywhere makes it non-finite);
/// only otherwise is each tensor checked exactly, in order.
fn first_non_finite<'a>(tensors: impl IntoIterator<Item = &'a Tensor>) -> Result<Option<usize>> {
    let tensors: Vec<&Tensor> = tensors.into_iter().collect();
    let Some(first) = tensors.first() else {
        return Ok(None);
    };
    let sums = tensors
        .iter()
        .map(|t| t.sum_all()?.to_dtype(DType::F64)?.to_device(first.device()))
        .collect::<candle_core::Result<Vec<_>>>()?;
    if scalar_f64(&Tensor::stack(&sums, 0)?.sum_all()?)?.is_finite() {
        return Ok(None);
    }
    for (i, t) in tensors.iter().enumerate() {
        if !all_finite(t)? {
            return Ok(Some(i));
        }
    }
    Ok(None)
}

fn non_finite(p: &Param, what: &str) -> Error {
    Error::NonFinite {
        name: p.name.clone(),
        what: what.to_string(),
    }
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
    if let Some(i) = first_non_finite(weights.iter().map(|(_, w)| w))? {
        return Err(non_finite(
            weights[i].0,
            "the updated weights (an overflow; nothing was written)",
        ));
    }
    for (p, w) in &weights {
        p.var.set(w)?;
    }
    Ok(states)
}

/// The [`Optimizer`](spectra_core::Optimizer) methods AdamW, Muon and Sgd share, written inside
/// their `impl Optimizer` blocks: the learning rate (`lr` times the schedule's factor), a step that
/// updates every parameter with a gradient from its state, all or nothing ([`apply_updates`] with
/// the type's `update(&self, param, gradient, at)`), and the state's export and import under the
/// file's `LAYOUT`. The type holds `lr: f64` and `state: OptimizerState`.
macro_rules! per_parameter_optimizer_methods {
    () => {
        fn lr(&self, at: &spectra_core::OptimizerStep) -> f64 {
            self.lr * at.lr_factor
        }

        fn step(
            &mut self,
            params: &[spectra_core::Param],
            grads: &candle_core::backprop::GradStore,
            at: &spectra_core::OptimizerStep,
        ) -> spectra_core::Result<()> {
            let updated = super::apply_updates(params, grads, |p, g| self.update(p, g, at))?;
            self.state.commit(updated);
            Ok(())
        }

        fn state(&self) -> Vec<(String, candle_core::Tensor)> {
            self.state.export(&LAYOUT)
        }

        fn load_state(
            &mut self,
            state: &std::collections::HashMap<String, candle_core::Tensor>,
            params: &[spectra_core::Param],
        ) -> spectra_core::Result<()> {
            self.state = super::state::OptimizerState::import(state, params, &LAYOUT)?;
            Ok(())
        }
    };
}
use per_parameter_optimizer_methods;

/// Maps a fused op's complaint about its operands (it knows them as "weight", "gradient", ...) to an
/// error naming the parameter and the optimizer.
fn for_param<'a>(p: &'a Param, optimizer: &'a str) -> impl Fn(Error) -> Error + 'a {
    move |e| match e {
        Error::InvalidInput { message, .. } => {
            Error::invalid(&p.name, format!("{optimizer}: {message}"))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};
    use spectra_core::ParamRole;

    use super::*;

    fn t(values: &[f32]) -> Tensor {
        Tensor::new(values, &Device::Cpu).unwrap()
    }

    #[test]
    fn the_first_non_finite_tensor_is_found_with_one_read_or_exactly() {
        let (ok, big) = (t(&[1.0, -2.0]), t(&[3.0e38, 3.0e38]));
        assert_eq!(first_non_finite([&ok, &ok]).unwrap(), None);
        assert_eq!(first_non_finite([] as [&Tensor; 0]).unwrap(), None);
        // Sums overflow in f32 (and each tensor's sum too): the exact check clears every tensor.
        assert_eq!(first_non_finite([&big, &ok, &big]).unwrap(), None);
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let with_bad = t(&[1.0, bad]);
            assert_eq!(
                first_non_finite([&ok, &with_bad, &ok, &with_bad]).unwrap(),
                Some(1),
                "{bad}"
            );
        }
        // +Inf in one tensor and −Inf in another: the total is NaN, still caught.
        let (pos, neg) = (t(&[f32::INFINITY]), t(&[f32::NEG_INFINITY]));
        assert_eq!(first_non_finite([&ok, &neg, &pos]).unwrap(), Some(1));
    }

    #[test]
    fn gradient_problems_are_reported_in_parameter_order() {
        let params: Vec<Param> = ["a", "b"]
            .iter()
            .map(|n| {
                Param::new(
                    *n,
                    Var::zeros(2, DType::F32, &Device::Cpu).unwrap(),
                    ParamRole::Vector,
                )
            })
            .collect();
        let (nan, misshapen) = (t(&[f32::NAN, 0.0]), t(&[0.0, 0.0, 0.0]));
        let mut store = GradStore::default();
        store.insert(params[0].var.as_tensor(), nan.clone());
        store.insert(params[1].var.as_tensor(), misshapen.clone());
        let err = gradients(&params, &store).unwrap_err().to_string();
        assert!(err.contains("`a`") && err.contains("NaN"), "{err}");
        let mut store = GradStore::default();
        store.insert(params[0].var.as_tensor(), misshapen);
        store.insert(params[1].var.as_tensor(), nan);
        let err = gradients(&params, &store).unwrap_err().to_string();
        assert!(err.contains("`a`") && err.contains("shape"), "{err}");
    }
}
