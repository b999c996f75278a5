//! Per-parameter optimizer state, keyed by parameter name, exported as `<param>.<slot>` tensors.

use std::collections::{BTreeMap, HashMap};

use candle_core::{Device, Tensor};
use spectra_core::linalg::scalar_f64;
use spectra_core::{Error, Param, Result};

/// The names of one optimizer's state entries: a step counter and the tensors shaped like the
/// parameter. The counter makes every non-empty state at least two entries, so a lost entry is always
/// noticed on load.
pub(crate) struct Layout {
    pub count: &'static str,
    pub tensors: &'static [&'static str],
}

/// One parameter's state: how many updates it has received and its buffers (in `Layout` order).
#[derive(Clone, Debug)]
pub(crate) struct ParamState {
    pub count: u64,
    pub tensors: Vec<Tensor>,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct OptimizerState {
    per_param: BTreeMap<String, ParamState>,
}

fn key(param: &str, slot: &str) -> String {
    format!("{param}.{slot}")
}

impl OptimizerState {
    pub fn get(&self, param: &str) -> Option<&ParamState> {
        self.per_param.get(param)
    }

    /// Stores the states a step produced.
    pub fn commit(&mut self, updated: Vec<(&str, ParamState)>) {
        for (param, state) in updated {
            self.per_param.insert(param.to_string(), state);
        }
    }

    pub fn export(&self, layout: &Layout) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (name, s) in &self.per_param {
            // Exact in f64 up to 2⁵³ steps.
            let count =
                Tensor::new(&[s.count as f64], &Device::Cpu).expect("a one-element CPU tensor");
            out.push((key(name, layout.count), count));
            for (slot, t) in layout.tensors.iter().zip(&s.tensors) {
                out.push((key(name, slot), t.clone()));
            }
        }
        out
    }

    /// Reads the entries of `params` from `state`. A parameter with none of its entries starts fresh
    /// (it had no gradient yet); one with some but not all is an error naming the missing entry, as is
    /// an entry of the wrong shape. Entries of other parameters are ignored.
    pub fn import(
        state: &HashMap<String, Tensor>,
        params: &[Param],
        layout: &Layout,
    ) -> Result<Self> {
        let mut per_param = BTreeMap::new();
        for p in params {
            let slots: Vec<&str> = std::iter::once(layout.count)
                .chain(layout.tensors.iter().copied())
                .collect();
            let found: Vec<Option<&Tensor>> =
                slots.iter().map(|s| state.get(&key(&p.name, s))).collect();
            if found.iter().all(Option::is_none) {
                continue;
            }
            if let Some(i) = found.iter().position(Option::is_none) {
                return Err(Error::invalid(
                    key(&p.name, slots[i]),
                    "optimizer state entry missing while the parameter's other entries are present; the \
                     checkpoint is incomplete",
                ));
            }
            let count = found[0].expect("checked present");
            if count.elem_count() != 1 {
                return Err(misshapen(&key(&p.name, layout.count), count.dims(), &[1]));
            }
            let count = scalar_f64(count)?;
            if !(count >= 0.0 && count.fract() == 0.0) {
                return Err(Error::invalid(
                    key(&p.name, layout.count),
                    format!("step count {count} is not a count"),
                ));
            }
            let mut tensors = Vec::new();
            for (slot, t) in layout.tensors.iter().zip(&found[1..]) {
                let t = t.expect("checked present");
                if t.dims() != p.var.dims() {
                    return Err(misshapen(&key(&p.name, slot), t.dims(), p.var.dims()));
                }
                tensors.push(t.to_device(p.var.device())?.to_dtype(p.var.dtype())?);
            }
            per_param.insert(
                p.name.clone(),
                ParamState {
                    count: count as u64,
                    tensors,
                },
            );
        }
        Ok(OptimizerState { per_param })
    }
}

fn misshapen(key: &str, got: &[usize], want: &[usize]) -> Error {
    Error::invalid(
        key,
        format!("optimizer state entry has shape {got:?}, expected {want:?}"),
    )
}

/// A zero buffer shaped like the parameter, for its first update.
pub(crate) fn zeros_like(p: &Param) -> Result<Tensor> {
    Ok(Tensor::zeros(p.var.dims(), p.var.dtype(), p.var.device())?)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Var};

    use super::*;
    use spectra_core::ParamRole;

    const LAYOUT: Layout = Layout {
        count: "t_steps",
        tensors: &["t_a", "t_b"],
    };

    fn param(name: &str) -> Param {
        Param::new(
            name,
            Var::zeros((2, 3), DType::F32, &Device::Cpu).unwrap(),
            ParamRole::Hidden,
        )
    }

    fn saved() -> HashMap<String, Tensor> {
        let mut state = OptimizerState::default();
        let ones = Tensor::ones((2, 3), DType::F32, &Device::Cpu).unwrap();
        state.commit(vec![(
            "p",
            ParamState {
                count: 7,
                tensors: vec![ones.clone(), ones.affine(2.0, 0.0).unwrap()],
            },
        )]);
        state.export(&LAYOUT).into_iter().collect()
    }

    #[test]
    fn export_then_import_restores_count_and_buffers() {
        let saved = saved();
        let mut keys: Vec<_> = saved.keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["p.t_a", "p.t_b", "p.t_steps"]);
        let state = OptimizerState::import(&saved, &[param("p"), param("q")], &LAYOUT).unwrap();
        let p = state.get("p").unwrap();
        assert_eq!(p.count, 7);
        assert_eq!(
            p.tensors[1].sum_all().unwrap().to_scalar::<f32>().unwrap(),
            12.0
        );
        assert!(
            state.get("q").is_none(),
            "a parameter without entries starts fresh"
        );
    }

    #[test]
    fn partial_misshapen_and_non_count_entries_are_named() {
        let mut partial = saved();
        partial.remove("p.t_b");
        let err = OptimizerState::import(&partial, &[param("p")], &LAYOUT)
            .unwrap_err()
            .to_string();
        assert!(err.contains("p.t_b") && err.contains("missing"), "{err}");

        let mut misshapen = saved();
        misshapen.insert(
            "p.t_a".into(),
            Tensor::zeros((3, 2), DType::F32, &Device::Cpu).unwrap(),
        );
        let err = OptimizerState::import(&misshapen, &[param("p")], &LAYOUT)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("p.t_a") && err.contains("[3, 2]") && err.contains("[2, 3]"),
            "{err}"
        );

        let mut fractional = saved();
        fractional.insert(
            "p.t_steps".into(),
            Tensor::new(&[2.5f64], &Device::Cpu).unwrap(),
        );
        let err = OptimizerState::import(&fractional, &[param("p")], &LAYOUT)
            .unwrap_err()
            .to_string();
        assert!(err.contains("p.t_steps"), "{err}");
    }
}
