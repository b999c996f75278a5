//! The config checks the policies share, and the check of scores given to them.

use candle_core::Tensor;
use spectra_core::{
    scores_from_host, Budget, Error, GqaAggregation, KvLayerView, Result, TriggerSchedule,
};

/// Scores the policy was given per head and entry (a re-read's, or those written with the entries),
/// as the tensors `score` returns, once they are checked to name `layer`'s entries; `given` says
/// where they came from in the error otherwise.
pub fn given_scores(
    policy: &str,
    layer: &KvLayerView<'_>,
    scores: &[Vec<f32>],
    given: &str,
) -> Result<Vec<Tensor>> {
    let lens: Vec<usize> = scores.iter().map(Vec::len).collect();
    let held: Vec<usize> = layer.heads.iter().map(|h| h.len()).collect();
    if lens != held {
        return Err(Error::invalid(
            policy,
            format!(
                "layer {} holds {held:?} entries per head, and {given} scored {lens:?}",
                layer.layer
            ),
        ));
    }
    scores_from_host(scores.to_vec())
}

/// The config checks of such a policy: a trigger that can fire and a budget that keeps something.
pub fn validate_score_only(
    trigger: TriggerSchedule,
    budget: &Budget,
) -> std::result::Result<(), String> {
    validate_trigger(trigger)?;
    validate_protected(budget, 0, 0)
}

/// A configurable trigger must be able to fire: an interval of 0 never matches a position.
pub fn validate_trigger(trigger: TriggerSchedule) -> std::result::Result<(), String> {
    match trigger {
        TriggerSchedule::Interval { every: 0 } => {
            Err("Interval { every: 0 } never fires; use every ≥ 1".into())
        }
        _ => Ok(()),
    }
}

/// The checks every policy with sinks and a recent window makes when its config is read: a budget that
/// keeps something, a window smaller than the budget, and sinks plus window within it. Ratio budgets are
/// only known at run time; there the selection keeps sinks first, then the newest entries.
pub fn validate_protected(budget: &Budget, sinks: usize, window: usize) -> Result<(), String> {
    budget.validate()?;
    let Some(b) = budget.min_tokens() else {
        return Ok(());
    };
    if window > 0 && window >= b {
        return Err(format!(
            "the recent window ({window}) is not smaller than the budget ({b}), so nothing is ever chosen; \
             use a window below {b} or a larger budget"
        ));
    }
    if sinks + window > b {
        return Err(format!(
            "{sinks} sinks + a window of {window} exceed the budget of {b}; lower them or raise the budget"
        ));
    }
    Ok(())
}

/// The GQA reduction of a config must be Max or Mean.
pub fn validate_gqa(gqa: GqaAggregation) -> std::result::Result<(), String> {
    if gqa == GqaAggregation::NotApplicable {
        return Err("gqa must be Max or Mean: this policy scores with queries".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protected_sets_must_fit_the_budget() {
        assert!(validate_protected(&Budget::Tokens(0), 0, 0)
            .unwrap_err()
            .contains("budget 0"));
        assert!(validate_protected(&Budget::Tokens(8), 0, 8)
            .unwrap_err()
            .contains("not smaller"));
        assert!(validate_protected(&Budget::Tokens(8), 4, 5)
            .unwrap_err()
            .contains("exceed"));
        assert!(validate_protected(&Budget::Tokens(9), 4, 5).is_ok());
        assert!(validate_protected(&Budget::PerLayer(vec![16, 6]), 0, 6).is_err());
        assert!(validate_protected(&Budget::Ratio(0.1), 4, 500).is_ok());
        assert!(validate_trigger(TriggerSchedule::Interval { every: 0 }).is_err());
    }
}
