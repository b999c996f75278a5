//! `PyramidKv` (Cai et al. 2024, kvpress `PyramidKVPress`): the cache spread over the layers as a
//! pyramid, lower layers keeping more, the total unchanged; within each layer another policy (SnapKV,
//! as in the paper) chooses what to keep.
//!
//! With `B` the mean budget per layer, `n` the context length and `w` the inner policy's recent window,
//! the first layer keeps `2B − B/β` and the last `B/β`, linearly in between, the first capped at
//! `n − w`; where that pyramid would keep less than the window in a layer, every layer keeps `B`
//! (kvpress falls back to SnapKV there too). The split is rounded so that the budgets sum to `L·B`.

use serde::{Deserialize, Serialize};
use spectra_core::{
    Budget, KeepPlan, KvEvictionPolicy, KvLayerView, KvSideInfo, KvStepContext, PolicyContract,
    Result,
};

use crate::window_attention::Pooling;
use crate::SnapKv;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PyramidKv {
    /// Chooses the entries within each layer's budget.
    pub policy: Box<dyn KvEvictionPolicy>,
    /// Steepness: the last layer keeps `B/β` (kvpress: 20).
    pub beta: f64,
}

impl Default for PyramidKv {
    /// kvpress's defaults: SnapKV with a window of 64 and kernel 5, β = 20.
    fn default() -> Self {
        PyramidKv {
            policy: Box::new(SnapKv {
                window: 64,
                kernel: 5,
                pooling: Pooling::Avg,
                ..SnapKv::default()
            }),
            beta: 20.0,
        }
    }
}

/// The pyramid's real-valued budgets for `layers` layers, or `None` where it falls back to uniform.
fn pyramid(mean: f64, context: f64, window: f64, beta: f64, layers: usize) -> Option<Vec<f64>> {
    if layers < 2 {
        return None;
    }
    let mut low = mean / beta;
    let mut high = 2.0 * mean - low;
    if high >= context - window {
        high = context - window;
        low = 2.0 * mean - high;
    }
    if !(context >= high && high >= low && low >= window) {
        return None;
    }
    let step = (high - low) / (layers - 1) as f64;
    Some((0..layers).map(|l| high - l as f64 * step).collect())
}

/// Whole numbers within one of `real`, summing to the rounded sum of `real`: each is the difference of
/// consecutive rounded prefix sums.
fn round_keeping_the_sum(real: &[f64]) -> Vec<usize> {
    let mut total = 0.0;
    let mut previous = 0usize;
    real.iter()
        .map(|x| {
            total += x;
            let now = total.round().max(0.0) as usize;
            let this = now - previous;
            previous = now;
            this
        })
        .collect()
}

#[typetag::serde]
impl KvEvictionPolicy for PyramidKv {
    fn inner(&self) -> Option<&dyn KvEvictionPolicy> {
        Some(self.policy.as_ref())
    }

    fn contract(&self) -> PolicyContract {
        self.policy.contract()
    }

    fn validate(&self, budget: &Budget) -> std::result::Result<(), String> {
        if !(self.beta >= 1.0 && self.beta.is_finite()) {
            return Err(format!(
                "beta {} must be a finite number ≥ 1 (kvpress: 20)",
                self.beta
            ));
        }
        if let Budget::PerLayer(_) = budget {
            return Err(
                "PyramidKv sets the per-layer budgets itself; give one budget (Tokens or Ratio) for the mean"
                    .into(),
            );
        }
        self.policy.validate(budget)
    }

    fn layer_budgets(&self, budgets: Vec<usize>, context_len: usize) -> Vec<usize> {
        let Some(&mean) = budgets.first() else {
            return budgets;
        };
        if budgets.iter().any(|&b| b != mean) {
            return budgets;
        }
        let window = self.policy.contract().recent_window as f64;
        match pyramid(
            mean as f64,
            context_len as f64,
            window,
            self.beta,
            budgets.len(),
        ) {
            Some(real) => round_keeping_the_sum(&real),
            None => budgets,
        }
    }

    /// The inner policy's own selection, per layer and across layers.
    fn select(
        &self,
        layer: &KvLayerView<'_>,
        side: &KvSideInfo<'_>,
        ctx: &KvStepContext,
    ) -> Result<KeepPlan> {
        self.policy.select(layer, side, ctx)
    }

    fn select_layers(
        &self,
        layers: &[KvLayerView<'_>],
        side: &[KvSideInfo<'_>],
        ctx: &[KvStepContext],
    ) -> Result<Vec<KeepPlan>> {
        self.policy.select_layers(layers, side, ctx)
    }
}

spectra_core::register_plugin!(
    KvEvictionPolicy,
    PyramidKv,
    "Spreads the budget over the layers as a pyramid (lower layers keep more) around another policy, SnapKV by default."
);

#[cfg(test)]
mod tests {
    use super::*;

    /// kvpress's example shape worked by hand: 4 layers, mean budget 400 of a 1000-token context,
    /// window 64, β = 20. The last layer keeps 400/20 = 20, which is below the window: uniform. With
    /// β = 4 the last keeps 100, the first 800 − 100 = 700, steps of 200: 700, 500, 300, 100.
    #[test]
    fn the_pyramid_of_kvpress_worked_by_hand() {
        let policy = |beta| PyramidKv {
            beta,
            ..PyramidKv::default()
        };
        assert_eq!(policy(20.0).layer_budgets(vec![400; 4], 1000), vec![400; 4]);
        assert_eq!(
            policy(4.0).layer_budgets(vec![400; 4], 1000),
            vec![700, 500, 300, 100]
        );
        // The first layer capped at n − w = 436: the last then keeps 800 − 436 = 364, and the
        // total is kept.
        let capped = policy(4.0).layer_budgets(vec![400; 4], 500);
        assert_eq!(capped, vec![436, 412, 388, 364]);
        // β = 3 around 300: 500 down to 100 in steps of 400/3, that is 500, 366.7, 233.3, 100,
        // rounded so that the sum stays 1200.
        assert_eq!(
            policy(3.0).layer_budgets(vec![300; 4], 1000),
            vec![500, 367, 233, 100]
        );
    }

    #[test]
    fn bad_configs_are_refused() {
        let bad_beta = PyramidKv {
            beta: 0.5,
            ..PyramidKv::default()
        };
        assert!(bad_beta
            .validate(&Budget::Tokens(512))
            .unwrap_err()
            .contains("beta"));
        assert!(PyramidKv::default()
            .validate(&Budget::PerLayer(vec![512, 256]))
            .unwrap_err()
            .contains("sets the per-layer budgets itself"));
        // The inner policy's own checks still apply: SnapKV's window of 64 must fit the budget.
        assert!(PyramidKv::default().validate(&Budget::Tokens(32)).is_err());
    }
}
